#!/bin/sh
# Mixture-of-experts forward (issue 17) against transformers: the checked-in
# tiny models of tests/fixtures/moe/make_fixture_moe.py (Qwen3-MoE with a
# dense layer, Qwen2-MoE with a gated shared expert, Mixtral under the older
# block_sparse_moe.* tensor names), their perplexity within 0.1% of the
# recorded one (the tolerance of eval.test.sh, same argument: both sides are
# f32 forwards of the whole model) and their greedy ids equal (the recorded
# smallest top-1/top-2 gap along the way is >= 0.03, far above f32 rounding).
# Then the loader's error for a config naming more experts than the
# checkpoint holds, and the refusals (activation quantization, tuning).
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
cd "$(dirname "$0")/../.."
F=tests/fixtures/moe/tiny
TEXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
fail=0
within() { awk -v r="$1" -v g="$2" 'BEGIN { d = g / r - 1; if (d < 0) d = -d; exit !(d <= 0.001) }'; }
ref() { sed -n "s/^ *\"$2\": *\([0-9.e+-]*\),*$/\1/p" "$F/$1/reference.json"; }
ref_ids() { tr -d ' \n' < "$F/$1/reference.json" | sed -n 's/.*"greedy_ids":\[\([^]]*\)\].*/\1/p'; }

for n in qwen3_moe qwen2_moe mixtral_legacy; do
  want=$(ref $n ppl)
  out=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$F/$n" --text "$TEXT" --seqlen 64 --windows 8)
  got=$(echo "$out" | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  if [ -n "$want" ] && within "$want" "$got"; then echo "ok   $n: ppl $got (transformers $want)"
  else echo "FAIL $n: ppl $got, transformers $want"; fail=1; fi
  ids=$("$AR_BIN/ar-eval" --quiet --json --model "$F/$n" --prompt "Once upon a time" -n 16 |
        sed -n 's/.*"ids": \[\([^]]*\)\].*/\1/p' | tr -d ' ')
  if [ "$ids" = "$(ref_ids $n)" ]; then echo "ok   $n: greedy ids match transformers"
  else echo "FAIL $n greedy: $ids vs $(ref_ids $n)"; fail=1; fi
done

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# More experts in config.json than in the checkpoint: one line naming the tensor, no output.
mkdir "$tmp/m"; cp "$F/qwen2_moe/"* "$tmp/m/"
sed -i 's/"num_experts": 4/"num_experts": 8/' "$tmp/m/config.json"
if "$AR_BIN/ar-eval" --quiet --model "$tmp/m" --text "$TEXT" --seqlen 64 --windows 1 > "$tmp/out" 2> "$tmp/err"; then
  echo "FAIL missing experts accepted"; fail=1
elif grep -q "layer 0: missing mlp.experts.4.gate_proj.weight (8 experts in config.json)" "$tmp/err" && [ ! -s "$tmp/out" ]
then echo "ok   missing expert tensor: $(cat "$tmp/err")"
else echo "FAIL missing experts message: $(cat "$tmp/err")"; fail=1; fi

# Activation quantization of MoE models is refused (routed inputs are row subsets).
if "$AR_BIN/ar-eval" --quiet --model "$F/qwen3_moe" --text "$TEXT" --seqlen 64 --windows 1 --act_quant MXFP4 2> "$tmp/err"; then
  echo "FAIL act_quant accepted on MoE"; fail=1
elif grep -q "activation quantization of mixture-of-experts models is not supported" "$tmp/err"; then echo "ok   act_quant refused"
else echo "FAIL act_quant message: $(cat "$tmp/err")"; fail=1; fi
# Tune the old-named Mixtral (SignRound, 4 iterations), pack it as auto_round and auto_gptq: the
# experts keep mlp.experts.E.gate_proj (what transformers 5 loads), the routers are 16-bit FP
# extra_config entries, and ar-eval reads both folders back to the same perplexity (the same
# dequantized weights through the same forward: equal to the printed digits).
"$AR_BIN/ar-calib" --quiet --model "$F/mixtral_legacy" --dataset "$TEXT" --nsamples 4 --seqlen 32 -o "$tmp/c.ars"
"$AR_BIN/ar-tune" --quiet --model "$F/mixtral_legacy" -i "$tmp/c.ars" -o "$tmp/t.ars" --group_size 32 --iters 4 --batch_size 2
for f in auto_round auto_gptq; do
  "$AR_BIN/ar-pack" -i "$tmp/t.ars" --format $f -o "$tmp/$f" --model "$F/mixtral_legacy"
  eval "ppl_$f=\$(\"\$AR_BIN/ar-eval\" --quiet --json --threads 1 --model \"\$tmp/$f\" --text \"\$TEXT\" --seqlen 64 --windows 8 |
        sed -n 's/.*\"ppl\": *\\([0-9.e+-]*\\).*/\\1/p')"
done
if [ -n "$ppl_auto_round" ] && [ "$ppl_auto_round" = "$ppl_auto_gptq" ]; then echo "ok   tuned Mixtral read back: ppl $ppl_auto_round (auto_round = auto_gptq)"
else echo "FAIL tuned Mixtral read back: auto_round $ppl_auto_round, auto_gptq $ppl_auto_gptq"; fail=1; fi
if grep -q '"model.layers.0.block_sparse_moe.gate": {"bits": 16, "data_type": "fp"}' "$tmp/auto_round/config.json" ||
   tr -d ' \n' < "$tmp/auto_round/config.json" | grep -q '"model.layers.0.block_sparse_moe.gate":{"bits":16,"data_type":"fp"}'
then echo "ok   router in extra_config as 16-bit FP"; else echo "FAIL router not in extra_config"; fail=1; fi
if head -c 65536 "$tmp/auto_round/model.safetensors" | grep -a -q 'model.layers.1.mlp.experts.3.down_proj.qweight' &&
   ! head -c 65536 "$tmp/auto_round/model.safetensors" | grep -a -q 'experts.3.w2'
then echo "ok   experts packed as mlp.experts.E.*_proj"; else echo "FAIL expert names in the export"; fail=1; fi
# Fused 3-D experts (transformers 5's in-memory layout, save_pretrained(save_original_format=False):
# mlp.experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]), made from the per-expert fixtures by
# tests/fixtures/moe/make_fused.py (a byte copy): the same model, so ar-eval prints the same
# perplexity to the last digit; a fused Qwen3-MoE tunes and exports to the same file as the
# per-expert one (the export writes experts per expert, as AutoRound's loaders build them).
for n in qwen3_moe qwen2_moe mixtral_legacy deepseek_v3; do
  python3 tests/fixtures/moe/make_fused.py "$F/$n" "$tmp/fused_$n" > /dev/null
  a=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$F/$n" --text "$TEXT" --seqlen 64 --windows 8 | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  b=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$tmp/fused_$n" --text "$TEXT" --seqlen 64 --windows 8 | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  if [ -n "$a" ] && [ "$a" = "$b" ] && head -c 4096 "$tmp/fused_$n/model.safetensors" | grep -a -q 'mlp.experts.gate_up_proj'
  then echo "ok   $n fused experts: ppl $b = per-expert $a"
  else echo "FAIL $n fused experts: ppl $b, per-expert $a"; fail=1; fi
done
for m in "$F/qwen3_moe" "$tmp/fused_qwen3_moe"; do
  "$AR_BIN/ar-tune" --quiet --model "$m" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn -o "$tmp/r.ars"
  "$AR_BIN/ar-pack" --quiet -i "$tmp/r.ars" --format auto_round -o "$tmp/r_$(basename "$m")"
done
if cmp -s "$tmp/r_qwen3_moe/model.safetensors" "$tmp/r_fused_qwen3_moe/model.safetensors"
then echo "ok   fused Qwen3-MoE: RTN auto_round export identical to the per-expert model's"
else echo "FAIL fused Qwen3-MoE export differs from the per-expert one"; fail=1; fi
sed -i 's/"num_local_experts": 4/"num_local_experts": 8/' "$tmp/fused_qwen3_moe/config.json"
if "$AR_BIN/ar-eval" --quiet --model "$tmp/fused_qwen3_moe" --text "$TEXT" --seqlen 64 --windows 1 > "$tmp/out" 2> "$tmp/err"; then
  echo "FAIL fused: missing experts accepted"; fail=1
elif grep -q "layer 0: missing mlp.experts.4.gate_proj.weight (8 experts in config.json)" "$tmp/err" && [ ! -s "$tmp/out" ] &&
     [ "$(wc -l < "$tmp/err")" = 1 ]
then echo "ok   fused, more experts in config.json: $(cat "$tmp/err")"
else echo "FAIL fused missing experts message: $(cat "$tmp/err")"; fail=1; fi

# Formats besides auto_round (docs/moe.md §10): auto_gptq and auto_awq load in transformers +
# auto-round (tests/clients/check_moe.py) and ar-eval reads them back to the auto_round folder's
# perplexity; llm_compressor has no loader for MoE here and is refused with one line, no output.
"$AR_BIN/ar-tune" --quiet --model "$F/qwen2_moe" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn --asym -o "$tmp/a.ars"
"$AR_BIN/ar-pack" --quiet -i "$tmp/a.ars" --format auto_round,auto_awq,auto_gptq -o "$tmp/a"
a=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$tmp/a/auto_round" --text "$TEXT" --seqlen 64 --windows 8 | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
for f in auto_awq auto_gptq; do
  b=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$tmp/a/$f" --text "$TEXT" --seqlen 64 --windows 8 | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "ok   qwen2_moe asym $f read back: ppl $b (= auto_round)"
  else echo "FAIL qwen2_moe asym $f: ppl $b, auto_round $a"; fail=1; fi
done
for m in qwen3_moe gpt_oss; do
  "$AR_BIN/ar-tune" --quiet --model "$F/$m" --scheme W4A16 --group_size 32 --iters 0 -o "$tmp/l.ars"
  if "$AR_BIN/ar-pack" -i "$tmp/l.ars" --format auto_round,llm_compressor -o "$tmp/l_$m" 2> "$tmp/err"; then
    echo "FAIL llm_compressor of $m accepted"; fail=1
  elif grep -q "(mixture of experts) cannot be exported as llm_compressor" "$tmp/err" && [ "$(wc -l < "$tmp/err")" = 1 ] &&
       grep -q "ForCausalLM" "$tmp/err" && [ ! -e "$tmp/l_$m" ]
  then echo "ok   llm_compressor refused: $(sed "s|$PWD/||" "$tmp/err")"
  else echo "FAIL llm_compressor refusal of $m: $(cat "$tmp/err")"; fail=1; fi
done
exit $fail
