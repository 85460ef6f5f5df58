#!/bin/sh
# The accuracy cost of --disable_quanted_input (AutoRound's flag: each block
# tuned on the FP model's inputs, which makes blocks independent and lets
# block ranges tune in parallel, docs/parallel.md) on tiny-llama: the same
# calibration windows, scheme, iterations and seed, tuned with and without
# the flag, packed as fake and scored by ar-eval on the same held-out windows.
#   AR_BIN=$PWD/bin AR_SHARED=../shared sh tests/bench/quanted_input_cost.sh
# Environment (defaults in brackets):
#   QIC_SCHEMES  [W4A16 W2A16G64]     QIC_ITERS    [50]
#   QIC_NSAMPLES [32]                 QIC_SEQLEN   [512]
#   QIC_WINDOWS  [200] windows of 512 tokens of heldout.txt
#   QIC_THREADS  [1]                  QIC_OUT      work folder [a temporary one]
# Prints one line per run: scheme, flag, tune seconds, heldout PPL.
: "${AR_BIN:?AR_BIN not set}"
SHARED=${AR_SHARED:-../shared}
M=$SHARED/models/tiny-llama
SCHEMES=${QIC_SCHEMES:-W4A16 W2A16G64}
ITERS=${QIC_ITERS:-50}; NS=${QIC_NSAMPLES:-32}; SL=${QIC_SEQLEN:-512}
WIN=${QIC_WINDOWS:-200}; TH=${QIC_THREADS:-1}
if [ -n "${QIC_OUT:-}" ]; then W=$QIC_OUT; mkdir -p "$W"
else W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; fi
now() { date +%s.%N; }
zstd -dc "$SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 3000000 > "$W/calib3m.txt"
"$AR_BIN/ar-calib" --model "$M" --dataset "$W/calib3m.txt" --nsamples "$NS" --seqlen "$SL" -o "$W/calib.ars" || exit 1
printf '%-10s %-24s %8s %10s\n' scheme input tune_s ppl
for s in $SCHEMES; do
  for flag in "" --disable_quanted_input; do
    t0=$(now)
    # shellcheck disable=SC2086
    "$AR_BIN/ar-tune" -i "$W/calib.ars" --scheme "$s" --iters "$ITERS" --threads "$TH" $flag -o "$W/t.ars" || exit 1
    t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    rm -rf "$W/fake"
    "$AR_BIN/ar-pack" -i "$W/t.ars" --format fake -o "$W/fake" || exit 1
    ppl=$("$AR_BIN/ar-eval" --model "$W/fake" --text "$M/heldout.txt" --seqlen 512 --windows "$WIN" --threads "$TH" |
          awk '/ppl/ { for (i = 1; i <= NF; i++) if ($i ~ /^ppl/) { v = $(i + 1) } } END { print v }')
    printf '%-10s %-24s %8s %10s\n' "$s" "${flag:-quantized (default)}" "$t" "$ppl"
  done
done
