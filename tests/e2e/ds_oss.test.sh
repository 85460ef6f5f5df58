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

# More experts in config.json than the fused tensors hold: one line naming the expert, no output.
mkdir "$tmp/m"; cp "$F/gpt_oss_mxfp4/"* "$tmp/m/"
sed -i 's/"num_local_experts": 4/"num_local_experts": 8/' "$tmp/m/config.json"
if "$AR_BIN/ar-eval" --quiet --model "$tmp/m" --text "$TEXT" --seqlen 64 --windows 1 > "$tmp/out" 2> "$tmp/err"; then
  echo "FAIL missing experts accepted"; fail=1
elif grep -q "layer 0: missing mlp.experts.4.gate_proj.weight (8 experts in config.json)" "$tmp/err" && [ ! -s "$tmp/out" ]
then echo "ok   missing expert: $(cat "$tmp/err")"
else echo "FAIL missing experts message: $(cat "$tmp/err")"; fail=1; fi
exit $fail
