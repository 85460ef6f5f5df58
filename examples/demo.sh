#!/bin/sh
# make demo: quantize tiny-llama with RTN and SignRound at W4A16 and W2A16G64
# through auto-round, and print a perplexity table next to AutoRound's own
# figures for the same model (models/tiny-llama/README.md).
#
# Calibration follows that README: 128 random windows of 512 tokens from the
# first 3 MB of the training corpus, seed 42; perplexity: 200 windows of 512
# tokens of heldout.txt and of WikiText-2 test. It is slow on a CPU (SignRound
# tunes 6 blocks x 200 iterations on 128 x 512 tokens); quicker, rougher:
#   ITERS=50 NSAMPLES=32 make demo
# Environment: AR_BIN, AR_SHARED, OUT [demo-out], ITERS [200], NSAMPLES [128],
# SEQLEN [512], WINDOWS [200].
set -eu
here=$(cd "$(dirname "$0")" && pwd)
AR_BIN=${AR_BIN:-$here/../bin}
AR_SHARED=${AR_SHARED:-$here/../../shared}
OUT=${OUT:-demo-out}
ITERS=${ITERS:-200} NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-512} WINDOWS=${WINDOWS:-200}
M="$AR_SHARED/models/tiny-llama"
HELDOUT="$M/heldout.txt"
WIKI="$AR_SHARED/data/wikitext-2-raw/wiki.test.raw"
mkdir -p "$OUT"

if [ ! -s "$OUT/calib.txt" ]; then
  zstd -dc "$AR_SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 3000000 > "$OUT/calib.txt.tmp"
  mv "$OUT/calib.txt.tmp" "$OUT/calib.txt"
fi

ppl() { j=$("$AR_BIN/ar-eval" --quiet --json --model "$1" --text "$2" --seqlen 512 --windows "$WINDOWS") || exit 1
        printf '%s\n' "$j" | sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p'; }

# row NAME AUTOROUND_SECONDS AUTOROUND_HELDOUT AUTOROUND_WIKI -- AUTO-ROUND FLAGS
row() {
  name=$1 ar_s=$2 ar_h=$3 ar_w=$4; shift 5
  rm -rf "$OUT/$name"
  t0=$(date +%s.%N)
  "$AR_BIN/auto-round" --model "$M" --output_dir "$OUT/$name" --layout plain --seed 42 --quiet "$@"
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  h=$(ppl "$OUT/$name" "$HELDOUT")
  w=$(ppl "$OUT/$name" "$WIKI")
  printf '%-22s %8.1f %10s %10s   %8s %10s %10s\n' "$name" "$secs" "$h" "$w" "$ar_s" "$ar_h" "$ar_w"
}

tune="--dataset $OUT/calib.txt --nsamples $NSAMPLES --seqlen $SEQLEN --iters $ITERS"
printf '%-22s %8s %10s %10s   %8s %10s %10s\n' model seconds heldout wiki "AR s" "AR held" "AR wiki"
h=$(ppl "$M" "$HELDOUT")
w=$(ppl "$M" "$WIKI")
printf '%-22s %8s %10s %10s   %8s %10s %10s\n' BF16 - "$h" "$w" - 38.787 261.99
row W4A16-rtn 14.2 39.565 264.61 -- --scheme W4A16 --iters 0 --disable_opt_rtn
# shellcheck disable=SC2086
row W4A16-signround 42.2 38.998 263.22 -- --scheme W4A16 $tune
row W2A16G64-rtn 14.2 50.088 306.39 -- --scheme W2A16G64 --iters 0 --disable_opt_rtn
# shellcheck disable=SC2086
row W2A16G64-signround 39.8 42.705 292.31 -- --scheme W2A16G64 $tune
echo "AR: intel/auto-round 0.15.0 on one H200 (models/tiny-llama/README.md); seconds here: this machine, wall time."
