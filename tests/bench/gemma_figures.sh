#!/bin/sh
# The README's Gemma figures: RTN and SignRound (200 iters, AutoRound's
# default) at W4A16 and W2A16G64 on the tiny Gemma 2 / Gemma 3 models of
# tests/fixtures/gemma/make_tiny_gemma.py (build/gemma/FAMILY), perplexity of
# the held-out TinyStories text (build/gemma/heldout.txt, all 155 windows of
# 256 tokens). Calibration: 128 random windows of 256 tokens of the training
# part of the text (the bytes before the held-out split), seed 42.
# usage: sh tests/bench/gemma_figures.sh [FAMILY...]   (from the checkout; prints one row per run)
set -eu
S=${AR_SHARED:-../shared}
G=build/gemma
OUT=${OUT:-build/gemma/figures}
mkdir -p "$OUT"
split=$(python3 -c "import json; print(json.load(open('tests/fixtures/gemma/gemma2.json'))['heldout']['split_byte'])")
head -c "$split" "$S/data/tinystories/TinyStories-validation-head.txt" > "$OUT/calib.txt"
ppl() { bin/ar-eval --model "$1" --text "$G/heldout.txt" --seqlen 256 --json | python3 -c "import json,sys; print('%.4f' % json.load(sys.stdin)['ppl'])"; }
for fam in ${*:-gemma2 gemma3}; do
    echo "$fam BF16 - $(ppl "$G/$fam")"
    for scheme in W4A16 W2A16G64; do
        case $scheme in W4A16) name=w4g128 ;; *) name=w2g64 ;; esac
        rm -rf "$OUT/rtn" "$OUT/sr"
        bin/auto-round --model "$G/$fam" --scheme $scheme --iters 0 --disable_opt_rtn --output_dir "$OUT/rtn" > /dev/null 2>&1
        echo "$fam $scheme RTN $(ppl "$OUT/rtn/$fam-$name")"
        t0=$(date +%s)
        bin/auto-round --model "$G/$fam" --scheme $scheme --dataset "$OUT/calib.txt" --nsamples 128 --seqlen 256 \
            --seed 42 --output_dir "$OUT/sr" > /dev/null 2>&1
        echo "$fam $scheme SignRound $(ppl "$OUT/sr/$fam-$name") ($(( $(date +%s) - t0 )) s)"
    done
done
