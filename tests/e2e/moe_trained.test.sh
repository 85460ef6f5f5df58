#!/bin/sh
# The trained tiny MoE models (issue 17 (a)) against transformers on THIS
# machine: tests/fixtures/moe/make_tiny_moe.py trains each family into
# build/moe/FAMILY/ and, in the same run, records transformers' references
# for exactly those files in build/moe/FAMILY/reference.json (another CPU
# trains other weights, docs/moe.md section 1). For every family present:
#   - ar-eval's perplexity of build/moe/heldout.txt (every 256-token window,
#     the references' protocol) within 0.1% of transformers' (the tolerance of
#     eval.test.sh and moe.test.sh: both sides are f32 forwards of the same
#     BF16 weights; the difference seen is below 1e-6 relative);
#   - the safetensors' sha256 equal to the ones the reference names (else the
#     reference describes other weights and the check would mean nothing);
#   - the greedy ids of the reference prompt (32 new tokens) equal.
# Models are built by Python + torch and take minutes, so this test only
# checks what is there: with no trained model (a clean clone, no torch) it
# prints "skip" and passes; the checked-in random fixtures (moe.test.sh,
# ds_oss.test.sh) are the torch-free checks. To train and check:
#   build/venv/bin/python tests/fixtures/moe/make_tiny_moe.py --steps 150
#   AR_BIN=$PWD/bin AR_SHARED=../shared sh tests/e2e/moe_trained.test.sh
# AR_MOE_MODELS overrides the folder (default build/moe), AR_MOE_FAMILIES the
# families looked for (default all six).
set -eu
: "${AR_BIN:?}"
cd "$(dirname "$0")/../.."
M=${AR_MOE_MODELS:-build/moe}
fail=0 seen=0
within() { awk -v r="$1" -v g="$2" 'BEGIN { d = g / r - 1; if (d < 0) d = -d; exit !(d <= 0.001) }'; }
flat() { tr -d ' \n' < "$1"; }
for fam in ${AR_MOE_FAMILIES:-qwen3_moe qwen2_moe mixtral deepseek_v3 gpt_oss deepseek_v2}; do
  r=$M/$fam/reference.json
  [ -f "$r" ] || continue
  seen=$((seen + 1))
  want_sha=$(flat "$r" | sed -n 's/.*"files_sha256":{[^}]*"model.safetensors":"\([0-9a-f]*\)".*/\1/p')
  got_sha=$(sha256sum "$M/$fam/model.safetensors" | cut -d' ' -f1)
  if [ "$want_sha" != "$got_sha" ]; then
    echo "FAIL $fam: $M/$fam/model.safetensors is not the file $r describes (retrain with make_tiny_moe.py --only $fam)"
    fail=1; continue
  fi
  want=$(flat "$r" | sed -n 's/.*"perplexity":{[^}]*"ppl":\([0-9.e+-]*\)}.*/\1/p')
  got=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$M/$fam" --text "$M/heldout.txt" --seqlen 256 |
        sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  if [ -n "$want" ] && [ -n "$got" ] && within "$want" "$got"; then echo "ok   $fam: ppl $got (transformers $want)"
  else echo "FAIL $fam: ppl ${got:-none}, transformers ${want:-none}"; fail=1; fi
  prompt=$(sed -n 's/^ *"prompt": "\(.*\)",*$/\1/p' "$r" | head -1)
  want_ids=$(flat "$r" | sed -n 's/.*"greedy":{"prompt":"[^"]*","prompt_ids":\[[^]]*\],"ids":\[\([^]]*\)\].*/\1/p')
  n_new=32
  ids=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$M/$fam" --prompt "$prompt" -n $n_new |
        sed -n 's/.*"ids": \[\([^]]*\)\].*/\1/p' | tr -d ' ')
  if [ -n "$want_ids" ] && [ "$ids" = "$want_ids" ]; then echo "ok   $fam: greedy ids equal ($n_new new)"
  else echo "FAIL $fam greedy: $ids vs $want_ids"; fail=1; fi
done
[ "$seen" -gt 0 ] || echo "skip: no trained model under $M (make_tiny_moe.py writes them; needs torch)"
exit $fail
