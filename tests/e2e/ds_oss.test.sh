#!/bin/sh
# DeepSeek-V3 and V2 (MLA + dense and MoE layers) and gpt-oss (sinks, sliding and
# full layers, fused experts in BF16 and in MXFP4) forwards against
# transformers: the checked-in tiny models of
# tests/fixtures/moe/make_fixture_ds_oss.py, perplexity within 0.1% of the
# recorded one (moe.test.sh's tolerance, same argument: both sides are f32
# forwards of the whole model) and greedy ids equal (the recorded smallest
# top-1/top-2 gap along the way is >= 0.017, far above f32 rounding).
# Then a released-style config with quantization_config quant_method mxfp4
# (read as the plain model), and the loader's error for a gpt-oss config
# naming more experts than the fused tensors hold.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
cd "$(dirname "$0")/../.."
F=tests/fixtures/moe/tiny
TEXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
fail=0
within() { awk -v r="$1" -v g="$2" 'BEGIN { d = g / r - 1; if (d < 0) d = -d; exit !(d <= 0.001) }'; }
ref() { sed -n "s/^ *\"$2\": *\([0-9.e+-]*\),*$/\1/p" "$F/$1/reference.json"; }
ref_ids() { tr -d ' \n' < "$F/$1/reference.json" | sed -n 's/.*"greedy_ids":\[\([^]]*\)\].*/\1/p'; }

for n in deepseek_v3 deepseek_v2 gpt_oss gpt_oss_mxfp4; do
  want=$(ref $n ppl)
  out=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$F/$n" --text "$TEXT" --seqlen 64 --windows 8)
  got=$(echo "$out" | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  if [ -n "$want" ] && [ -n "$got" ] && within "$want" "$got"; then echo "ok   $n: ppl $got (transformers $want)"
  else echo "FAIL $n: ppl $got, transformers $want"; fail=1; fi
  ids=$("$AR_BIN/ar-eval" --quiet --json --model "$F/$n" --prompt "Once upon a time" -n 16 |
        sed -n 's/.*"ids": \[\([^]]*\)\].*/\1/p' | tr -d ' ')
  if [ -n "$ids" ] && [ "$ids" = "$(ref_ids $n)" ]; then echo "ok   $n: greedy ids match transformers"
  else echo "FAIL $n greedy: $ids vs $(ref_ids $n)"; fail=1; fi
done

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Released gpt-oss configs carry quantization_config {"quant_method": "mxfp4"}: read as the plain model.
mkdir "$tmp/q"; cp "$F/gpt_oss_mxfp4/"* "$tmp/q/"
sed -i 's/^{/{"quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]},/' "$tmp/q/config.json"
want=$(ref gpt_oss_mxfp4 ppl)
got=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$tmp/q" --text "$TEXT" --seqlen 64 --windows 8 |
      sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
if grep -q '"quant_method": "mxfp4"' "$tmp/q/config.json" && [ -n "$got" ] && within "$want" "$got"
then echo "ok   gpt_oss_mxfp4 with quant_method mxfp4: ppl $got"
else echo "FAIL gpt_oss_mxfp4 with quant_method mxfp4: ppl $got, transformers $want"; fail=1; fi

# gpt-oss export (docs/moe.md §10): the fused experts are written per expert as AutoRound 0.16.1
# writes them (gate_proj = gate_up_proj[e][:, 0::2]^T, up_proj = [:, 1::2]^T, down_proj =
# down_proj[e]^T, biases F16 beside them), router and sinks copied as they are, no extra_config
# (the router is no Linear). Plain RTN has one answer, so ar's auto_round export must hold exactly
# the tensors of AutoRound's own export of this model (digest recorded by
# tests/fixtures/moe/autoround_gpt_oss_rtn.py; st_digest.py ignores header layout only).
"$AR_BIN/ar-tune" --quiet --model "$F/gpt_oss" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn -o "$tmp/go.ars"
"$AR_BIN/ar-tune" --quiet --model "$F/gpt_oss" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn --asym -o "$tmp/goa.ars"
"$AR_BIN/ar-pack" --quiet -i "$tmp/go.ars" --format auto_round,auto_gptq -o "$tmp/go"
"$AR_BIN/ar-pack" --quiet -i "$tmp/goa.ars" --format auto_round,auto_awq -o "$tmp/goa"
want=$(sed -n 's/^ *"digest": "\([0-9a-f]*\)".*/\1/p' tests/fixtures/moe/gpt_oss_autoround_rtn.json)
got=$(python3 tests/fixtures/moe/st_digest.py "$tmp/go/auto_round/model.safetensors" | cut -d' ' -f1)
if [ -n "$want" ] && [ "$got" = "$want" ]; then echo "ok   gpt_oss auto_round RTN: the tensors of AutoRound 0.16.1's export ($got)"
else echo "FAIL gpt_oss auto_round RTN digest $got, AutoRound's $want"; fail=1; fi
hdr() { head -c 65536 "$1" | tr -d '\0'; }
if hdr "$tmp/go/auto_round/model.safetensors" | grep -q 'model.layers.1.mlp.experts.3.up_proj.qweight' &&
   hdr "$tmp/go/auto_round/model.safetensors" | grep -q '"model.layers.1.mlp.experts.3.up_proj.bias":{"dtype":"F16"' &&
   hdr "$tmp/go/auto_round/model.safetensors" | grep -q '"model.layers.1.mlp.router.weight":{"dtype":"BF16"' &&
   hdr "$tmp/go/auto_round/model.safetensors" | grep -q '"model.layers.1.self_attn.sinks":{"dtype":"BF16"' &&
   ! hdr "$tmp/go/auto_round/model.safetensors" | grep -q 'experts.gate_up_proj\|experts.down_proj' &&
   ! grep -q extra_config "$tmp/go/auto_round/config.json"
then echo "ok   gpt_oss auto_round: experts per expert with F16 biases, router and sinks BF16, no fused tensors, no extra_config"
else echo "FAIL gpt_oss auto_round layout"; fail=1; fi
# ar-eval reads every folder back: sym auto_round = auto_gptq, asym auto_round (AWQ layout) = auto_awq
# (the same dequantized weights through the same forward: equal to the printed digits).
ppl() { "$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$1" --text "$TEXT" --seqlen 64 --windows 8 |
        sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p'; }
for pair in go/auto_round:go/auto_gptq goa/auto_round:goa/auto_awq; do
  a=$(ppl "$tmp/${pair%%:*}"); b=$(ppl "$tmp/${pair#*:}")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "ok   gpt_oss ${pair%%:*} = ${pair#*:}: ar-eval ppl $a"
  else echo "FAIL gpt_oss read back: ${pair%%:*} $a, ${pair#*:} $b"; fail=1; fi
done
# The MXFP4 checkpoint exports the same way; its quantization_config (mxfp4) is replaced.
"$AR_BIN/ar-tune" --quiet --model "$tmp/q" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn -o "$tmp/gm.ars"
"$AR_BIN/ar-pack" --quiet -i "$tmp/gm.ars" --format auto_round -o "$tmp/gm"
if [ -n "$(ppl "$tmp/gm")" ] && grep -q '"quant_method": *"auto-round"' "$tmp/gm/config.json" && ! grep -q mxfp4 "$tmp/gm/config.json" &&
   ! hdr "$tmp/gm/model.safetensors" | grep -q '_blocks\|_scales"'
then echo "ok   gpt_oss_mxfp4 auto_round: per-expert, read back (ppl $(ppl "$tmp/gm"))"
else echo "FAIL gpt_oss_mxfp4 export"; fail=1; fi

# More experts in config.json than the fused tensors hold: one line naming the expert, no output.
mkdir "$tmp/m"; cp "$F/gpt_oss_mxfp4/"* "$tmp/m/"
sed -i 's/"num_local_experts": 4/"num_local_experts": 8/' "$tmp/m/config.json"
if "$AR_BIN/ar-eval" --quiet --model "$tmp/m" --text "$TEXT" --seqlen 64 --windows 1 > "$tmp/out" 2> "$tmp/err"; then
  echo "FAIL missing experts accepted"; fail=1
elif grep -q "layer 0: missing mlp.experts.4.gate_proj.weight (8 experts in config.json)" "$tmp/err" && [ ! -s "$tmp/out" ]
then echo "ok   missing expert: $(cat "$tmp/err")"
else echo "FAIL missing experts message: $(cat "$tmp/err")"; fail=1; fi
exit $fail
