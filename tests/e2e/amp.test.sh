#!/bin/sh
# AMP: SignRound's block GEMMs in bf16 (libar/nn/gemm.h, oneDNN) where the
# build has oneDNN and the CPU AVX512-BF16 or AMX, as AutoRound autocasts to
# bf16 on such CPUs; f32 elsewhere and with --disable_amp. On stories260K:
#  1. --disable_amp: META has no "amp" (f32, as before) and the packed
#     quantization_config says "amp": false;
#  2. where bf16 runs (default --amp): META records "amp": true, the packed
#     config omits amp (AutoRound writes only keys that differ from its
#     defaults, and amp defaults to true); elsewhere the default run is
#     byte-identical to the --disable_amp one;
#  3. accuracy: the bf16 tune's perplexity keeps at least 3/4 of the f32
#     tune's gain over RTN. The bound is argued, not tuned: bf16 moves each
#     GEMM output by at most ~2^-7 of Σ|a||b| (tests/unit/test_gemm.c), far
#     below the 2-bit weights' quantization error that SignRound reduces, so
#     it descends nearly the same loss; what remains is a different rounding
#     path of a stochastic sign descent, the size of a seed change;
#  4. auto-round passes --disable_amp on to ar-tune.
. "$(dirname "$0")/lib.sh"

stories_calib 16 64 --quiet -o "$T/calib.ars"
tune() { out=$1; shift; "$BIN/ar-tune" --quiet --threads 2 -i "$T/calib.ars" --iters 40 --batch_size 4 \
    --scheme W2A16G64 -o "$T/$out.ars" "$@"; }
ppl() { "$BIN/ar-pack" --quiet -i "$T/$1.ars" --format fake -o "$T/$1.fake"
        "$BIN/ar-eval" --quiet --model "$T/$1.fake" --text "$STORIES_TEXT" --seqlen 128 --windows 24 --json |
            sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p'; }

# 1.
tune f32 --disable_amp
if "$BIN/ar-dump" "$T/f32.ars" | head -1 | grep -q '"amp"'; then fail "an f32 tune's META names amp"; fi
"$BIN/ar-pack" --quiet -i "$T/f32.ars" --format auto_round -o "$T/f32.ar"
grep -q '"amp": *false' "$T/f32.ar/config.json" || fail "the f32 tune's config lacks amp false"

# 2.
tune amp
bf16=0
if "$BIN/ar-dump" "$T/amp.ars" | head -1 | grep -q '"amp":true'; then bf16=1; fi
have=0
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo && ldd "$BIN/ar-tune" | grep -q libdnnl; then have=1; fi
[ "$bf16" = "$have" ] || fail "bf16 ran: $bf16, but CPU and build support it: $have"
if [ "$bf16" = 0 ]; then
    echo "skip: no bf16 GEMMs here (CPU or build); checking the default equals --disable_amp"
    cmp -s "$T/amp.ars" "$T/f32.ars" || fail "without bf16 the default tune differs from --disable_amp"
else
    "$BIN/ar-pack" --quiet -i "$T/amp.ars" --format auto_round -o "$T/amp.ar"
    if grep -q '"amp"' "$T/amp.ar/config.json"; then fail "a bf16 tune's config names amp"; fi
    # 3.
    "$BIN/ar-tune" --quiet --threads 2 -i "$T/calib.ars" --iters 0 --disable_opt_rtn --scheme W2A16G64 -o "$T/rtn.ars"
    p32=$(ppl f32) p16=$(ppl amp) prtn=$(ppl rtn)
    echo "ppl: RTN $prtn, SignRound f32 $p32, SignRound bf16 $p16"
    awk -v r="$prtn" -v f="$p32" 'BEGIN { exit !(r > f) }' || fail "the f32 tune ($p32) does not beat RTN ($prtn)"
    awk -v r="$prtn" -v f="$p32" -v h="$p16" 'BEGIN { exit !(h <= f + 0.25 * (r - f)) }' ||
        fail "the bf16 tune ($p16) keeps less than 3/4 of the f32 tune's gain ($p32 vs RTN $prtn)"
fi

# 4.
"$BIN/auto-round" --model "$M" --dataset "$STORIES_TEXT" --disable_amp --output_dir "$T/out" --dry_run > "$T/cmds"
grep 'ar-tune' "$T/cmds" | grep -q -- '--disable_amp' || fail "auto-round did not pass --disable_amp"
echo "amp: ok"
