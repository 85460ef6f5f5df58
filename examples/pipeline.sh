#!/bin/sh
# The ar tools as one shell pipeline: calibrate, tune with SignRound, pack an
# auto_round model, then compare its perplexity with the original model's.
#
#   examples/pipeline.sh [OUT_DIR]
#
# Settings come from the environment (defaults in brackets): MODEL
# [stories260K], DATA (calibration text) and EVAL_TEXT [TinyStories
# validation head], SCHEME [W4A16], ITERS [50], NSAMPLES [32], SEQLEN [128],
# AR_BIN [the bin/ next to this directory], AR_SHARED [../shared].
set -eu
here=$(cd "$(dirname "$0")" && pwd)
AR_BIN=${AR_BIN:-$here/../bin}
AR_SHARED=${AR_SHARED:-$here/../../shared}
MODEL=${MODEL:-$AR_SHARED/models/stories260K}
DATA=${DATA:-$AR_SHARED/data/tinystories/TinyStories-validation-head.txt}
EVAL_TEXT=${EVAL_TEXT:-$DATA}
SCHEME=${SCHEME:-W4A16} ITERS=${ITERS:-50} NSAMPLES=${NSAMPLES:-32} SEQLEN=${SEQLEN:-128}
OUT=${1:-pipeline-out}
mkdir -p "$OUT"
rm -rf "$OUT/model"

# The streams never touch the disk. If a stage fails, the next one sees a
# stream without its END record and fails too, so ar-pack never renames an
# incomplete model into place: checking its exit status is enough.
"$AR_BIN/ar-calib" --model "$MODEL" --dataset "$DATA" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" |
  "$AR_BIN/ar-tune" --scheme "$SCHEME" --iters "$ITERS" |
  "$AR_BIN/ar-pack" --format auto_round -o "$OUT/model"

ppl() { j=$("$AR_BIN/ar-eval" --quiet --json --model "$1" --text "$EVAL_TEXT" --seqlen 256 --windows 40) || exit 1
        printf '%s\n' "$j" | sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p'; }
base=$(ppl "$MODEL")
quant=$(ppl "$OUT/model")
echo "perplexity on $(basename "$EVAL_TEXT"), 40 windows of 256 tokens:"
echo "  original           $base"
echo "  $SCHEME SignRound  $quant"
