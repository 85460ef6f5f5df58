#!/bin/sh
# SignRound's options on mixtures of experts (issue 17), the checked-in tiny
# models (tests/fixtures/moe/tiny): --enable_alg_ext (SignRoundV2: each
# expert's scale search on its own routed rows; W2A16G64 also takes the
# outlier-suppressed loss) and --enable_lfq (the last block's loss through
# the head), as AutoRound 0.16.1 applies both to MoE models without a MoE
# rule. Each runs on qwen3_moe, deepseek_v3 and gpt_oss, records itself in
# META and tunes to other records than plain SignRound; qwen3_moe and
# deepseek_v3 pack to auto_round and evaluate. (Unrouted experts keep RTN
# under alg_ext and routed experts get plain RTN under opt-RTN:
# tests/unit/test_tune_moe.c.) Activation quantization stays refused (one
# line): a routed expert's input is a row subset and AutoRound's shared
# expert act_max is not reproduced (docs/moe.md §7).
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
F=tests/fixtures/moe/tiny

for m in qwen3_moe deepseek_v3 gpt_oss; do
  "$BIN/ar-calib" --model "$F/$m" --dataset "$STORIES_TEXT" --nsamples 8 --seqlen 64 --quiet -o "$T/$m.calib.ars"
  tune() { out=$1; shift
    "$BIN/ar-tune" -i "$T/$m.calib.ars" --scheme W2A16G64 --iters 8 --batch_size 4 --threads 1 --quiet \
        -o "$T/$m.$out.ars" "$@"; }
  tune v1
  tune v2 --enable_alg_ext
  tune lfq --enable_lfq
  "$BIN/ar-dump" "$T/$m.v2.ars" | head -n 1 | grep -q '"enable_alg_ext":true' || fail "$m: META lacks enable_alg_ext"
  "$BIN/ar-dump" "$T/$m.lfq.ars" | head -n 1 | grep -q '"enable_lfq":true' || fail "$m: META lacks enable_lfq"
  # the records differ from V1's (past the META record: "ARSTREAM", u32 version, 'M', u32 length, JSON)
  for v in v1 v2 lfq; do
    len=$(zstd -dc "$T/$m.$v.ars" | od -An -tu4 -j13 -N4 | tr -d ' ')
    zstd -dc "$T/$m.$v.ars" | tail -c +$((17 + len + 1)) | cksum > "$T/$m.$v.sum"
  done
  for v in v2 lfq; do cmp -s "$T/$m.v1.sum" "$T/$m.$v.sum" && fail "$m: --$v tuned the same records as V1"; done
  [ "$(cut -d' ' -f2 "$T/$m.v1.sum")" -gt 10000 ] || fail "$m: V1 records $(cat "$T/$m.v1.sum")"
  if [ "$m" = gpt_oss ]; then echo "ok   $m: alg_ext and lfq tune"; continue; fi
  for v in v2 lfq; do
    "$BIN/ar-pack" -i "$T/$m.$v.ars" --format auto_round -o "$T/$m.$v.packed" --quiet
    ppl=$("$BIN/ar-eval" --quiet --json --model "$T/$m.$v.packed" --text "$STORIES_TEXT" --seqlen 64 --windows 2 |
          sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
    awk -v p="$ppl" 'BEGIN { exit !(p > 1 && p < 1e6) }' || fail "$m $v: packed model ppl '$ppl'"
  done
  echo "ok   $m: alg_ext and lfq tune, pack and evaluate"
done

# Activation quantization: one line, non-zero exit, no output.
if "$BIN/ar-tune" -i "$T/qwen3_moe.calib.ars" --scheme MXFP4 --iters 2 --quiet -o "$T/x.ars" 2> "$T/err"; then
  fail "MXFP4 (W4A4) accepted on MoE"
fi
{ [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q "mixture-of-experts" "$T/err" && [ ! -s "$T/x.ars" ]; } ||
    { cat "$T/err"; fail "activation quantization refusal"; }
echo "ok   activation quantization refused: $(cat "$T/err")"
