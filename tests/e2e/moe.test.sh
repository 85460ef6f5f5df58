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
exit $fail
