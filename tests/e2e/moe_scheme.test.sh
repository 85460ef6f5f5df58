#!/bin/sh
# ar-scheme (AutoScheme) on mixtures of experts (issue 17), the checked-in
# tiny models (tests/fixtures/moe/tiny): qwen3_moe (one dense layer),
# deepseek_v3 (MLA, shared expert) and gpt_oss (fused checkpoint experts).
# As AutoRound 0.16.1 (auto_scheme/utils.py build_expert_groups), all routed
# experts' linears of a block get one scheme; the shared expert and the
# attention are items of their own. Checked: every block's experts share
# one option; both options are used; META's average equals the bits
# recounted from the layers ar-tune writes (b*n + groups*(16 + b),
# AutoRound's rule for int schemes) and lies under the target; ar-tune
# (SignRound, 2 iterations) consumes the stream, ar-pack writes auto_round
# (not gpt-oss: its export is not done, docs/moe.md §7) and ar-eval reads it.
# Activation-quantizing options and the measured score refuse MoE in one line.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
F=tests/fixtures/moe/tiny

for m in qwen3_moe deepseek_v3 gpt_oss; do
  "$BIN/ar-calib" --model "$F/$m" --dataset "$STORIES_TEXT" --nsamples 8 --seqlen 64 --quiet -o "$T/$m.calib.ars"
  "$BIN/ar-scheme" -i "$T/$m.calib.ars" --avg_bits 3 --options W2A16G64,W4A16 --emit_config "$T/$m.lc.json" \
      --quiet -o "$T/$m.s.ars"
  # one option per block for the routed experts, and both options used somewhere
  for l in 0 1 2; do
    n=$(grep "layers\.$l\.mlp\.experts\.[0-9]*\." "$T/$m.lc.json" | sed 's/.*: "\([^"]*\)".*/\1/' | sort -u | wc -l)
    [ "$n" -le 1 ] || fail "$m block $l: experts got different options"
  done
  grep -q '"model.layers.[0-9]*.mlp.experts.3.down_proj"' "$T/$m.lc.json" || fail "$m: no expert in the config"
  { grep -q '"W4A16"' "$T/$m.lc.json" && grep -q '"W2A16G64"' "$T/$m.lc.json"; } ||
      fail "$m: a 3-bit target between W2A16G64 and W4A16 uses both"
  # the average: META vs the bits of ar-tune's layers (RTN here; scales f32 [N, G])
  "$BIN/ar-tune" -i "$T/$m.s.ars" --iters 0 --quiet -o "$T/$m.t.ars"
  "$BIN/ar-dump" "$T/$m.t.ars" | awk -F'\t' '
    $1 == "tensor" && $2 ~ /\.qweight$/ { split($4, s, /[][,]/); n = s[2] * s[3];
        match($6, /"bits":[0-9]+/); b = substr($6, RSTART + 7, RLENGTH - 7); params += n; bits += b * n; nb[$2] = b }
    $1 == "tensor" && $2 ~ /\.scale$/ { split($4, s, /[][,]/); q = $2; sub(/\.scale$/, ".qweight", q);
        bits += s[2] * s[3] * (16 + nb[q]) }
    END { printf "%.6f\n", bits / params }' > "$T/$m.recount"
  meta=$("$BIN/ar-dump" "$T/$m.s.ars" | tail -n 1 | grep -o '"avg_bits":[0-9.]*' | cut -d: -f2)
  awk -v a="$(cat "$T/$m.recount")" -v b="$meta" 'BEGIN { exit !(a - b <= 1e-6 && b - a <= 1e-6) }' ||
      fail "$m: META avg_bits $meta, recounted from ar-tune's layers $(cat "$T/$m.recount")"
  awk -v a="$meta" 'BEGIN { exit !(a <= 3 && a > 2.5) }' || fail "$m: avg bits $meta not under 3"
  "$BIN/ar-tune" -i "$T/$m.s.ars" --iters 2 --batch_size 4 --quiet -o "$T/$m.sr.ars"
  if [ "$m" = gpt_oss ]; then echo "ok   $m: avg bits $meta (recount $(cat "$T/$m.recount")), tuned"; continue; fi
  "$BIN/ar-pack" -i "$T/$m.sr.ars" --format auto_round -o "$T/$m.packed" --quiet
  grep -q '"bits": 2' "$T/$m.packed/config.json" || fail "$m: the packed model names no 2-bit layer"
  ppl=$("$BIN/ar-eval" --quiet --json --model "$T/$m.packed" --text "$STORIES_TEXT" --seqlen 64 --windows 2 |
        sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  awk -v p="$ppl" 'BEGIN { exit !(p > 1 && p < 1e6) }' || fail "$m: packed model ppl '$ppl'"
  echo "ok   $m: avg bits $meta (recount $(cat "$T/$m.recount")), tuned, packed, ppl $ppl"
done

# Refusals: one line each, non-zero exit, no output.
expect_refusal() { want=$1; shift
  if "$@" > "$T/out" 2> "$T/err"; then fail "accepted: $*"; fi
  { [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q "$want" "$T/err" && [ ! -s "$T/out" ]; } ||
      { cat "$T/err"; fail "refusal message for: $*"; }
}
expect_refusal "activation quantization of mixture-of-experts" \
  "$BIN/ar-scheme" -i "$T/qwen3_moe.calib.ars" --avg_bits 6 --options MXFP4,MXFP8 --quiet -o "$T/x.ars"
expect_refusal "llama family only" \
  "$BIN/ar-scheme" -i "$T/qwen3_moe.calib.ars" --avg_bits 3 --options W2A16G64,W4A16 --score measured --quiet -o "$T/x.ars"
echo "ok   refusals"
