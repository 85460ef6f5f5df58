#!/bin/sh
# accuracy_fp.sh — MXFP4 / NVFP4 / MXFP8 / FP8 on tiny-llama: RTN, opt-RTN and
# SignRound (200 iters), exported as llm_compressor, perplexity on heldout.txt
# (the README protocol: 200 windows of 512 tokens). Long (~20 min per SignRound
# run on 2 cores): run on a bigger machine, never in `make test`.
#   AR_BIN=bin AR_SHARED=/work/shared sh tests/bench/accuracy_fp.sh [OUT]
set -eu
BIN=${AR_BIN:-bin}
SHARED=${AR_SHARED:-../shared}
M=$SHARED/models/tiny-llama
HELD=$M/heldout.txt
OUT=${1:-/tmp/accuracy_fp}
mkdir -p "$OUT"
CAL=$OUT/calib.ars
if [ ! -s "$CAL" ]; then
    zstd -dc "$SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 3000000 > "$OUT/calib3m.txt"
    "$BIN/ar-calib" --model "$M" --dataset "$OUT/calib3m.txt" --nsamples 128 --seqlen 512 -o "$CAL"
fi
ppl() { "$BIN/ar-eval" --model "$1" --text "$HELD" --windows 200 --json | tail -1; }
echo "bf16 $(ppl "$M")" | tee "$OUT/results.txt"
for scheme in MXFP4 NVFP4 MXFP8 FP8_STATIC FP8_BLOCK; do
    for mode in rtn opt_rtn signround; do
        case $mode in
            rtn) args="--iters 0 --disable_opt_rtn" ;;
            opt_rtn) args="--iters 0" ;;
            signround) args="--iters 200" ;;
        esac
        t0=$(date +%s)
        # shellcheck disable=SC2086
        "$BIN/ar-tune" -i "$CAL" --scheme $scheme $args -o "$OUT/$scheme.$mode.ars"
        t1=$(date +%s)
        rm -rf "$OUT/$scheme.$mode"
        "$BIN/ar-pack" -i "$OUT/$scheme.$mode.ars" --format llm_compressor -o "$OUT/$scheme.$mode"
        echo "$scheme $mode tune_s=$((t1 - t0)) $(ppl "$OUT/$scheme.$mode")" | tee -a "$OUT/results.txt"
    done
done
