#!/bin/sh
# ar-tune --enable_alg_ext (SignRoundV2, spec §5.1) on stories260K, and the
# GGUF stream's tensors outside the blocks:
#  1. W2A16 (group 32): runs, records enable_alg_ext in META, tunes to a
#     stream other than V1's, packs to auto_round and evaluates;
#  2. refused for schemes it has no meaning for (FP8_STATIC), exit status 2;
#     MXFP4 (W4A4) runs with it;
#  3. GGUF: --enable_alg_ext alone means SignRound with AutoRound's 200
#     iterations (META), the stream carries the embedding blocks (stories260K
#     ties its head to them) and the file packs;
#  4. auto-round passes the flag to ar-tune (--dry_run prints the pipeline).
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
M="$AR_SHARED/models/stories260K"
TXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
T=$(mktemp -d /tmp/ar-alg-ext.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }

"$AR_BIN/ar-calib" --quiet --model "$M" --dataset "$TXT" --nsamples 8 --seqlen 64 -o "$T/calib.ars"
tune() { out=$1; shift; "$AR_BIN/ar-tune" --quiet --threads 1 -i "$T/calib.ars" --iters 8 --batch_size 4 -o "$T/$out" "$@"; }

# 1. W2A16G32 with and without alg_ext
tune v1.ars --scheme W2A16 --group_size 32
tune v2.ars --scheme W2A16 --group_size 32 --enable_alg_ext
if "$AR_BIN/ar-dump" "$T/v2.ars" | head -1 | grep -q '"enable_alg_ext":true'; then ok "META enable_alg_ext true"
else bad "META lacks enable_alg_ext"; fi
if "$AR_BIN/ar-dump" "$T/v1.ars" | head -1 | grep -q '"enable_alg_ext":false'; then ok "V1 META enable_alg_ext false"
else bad "V1 META lacks enable_alg_ext false"; fi
if cmp -s "$T/v1.ars" "$T/v2.ars"; then bad "alg_ext changed nothing"; else ok "alg_ext stream differs from V1's"; fi
"$AR_BIN/ar-pack" --quiet -i "$T/v2.ars" --format auto_round -o "$T/v2-ar"
p=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$T/v2-ar" --text "$TXT" --seqlen 64 --windows 8 |
    sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
if awk -v p="$p" 'BEGIN { exit !(p > 1 && p < 1000) }'; then ok "W2A16 alg_ext packs and evaluates (ppl $p)"
else bad "W2A16 alg_ext ppl '$p'"; fi

# 2. refused where undefined
set +e
"$AR_BIN/ar-tune" --quiet -i "$T/calib.ars" --scheme FP8_STATIC --enable_alg_ext --iters 2 -o "$T/fp8.ars" 2> "$T/err"
rc=$?
set -e
if [ "$rc" = 2 ] && grep -q "enable_alg_ext" "$T/err"; then ok "FP8_STATIC refused: $(head -1 "$T/err")"
else bad "FP8_STATIC with --enable_alg_ext: status $rc, $(cat "$T/err")"; fi
[ ! -e "$T/fp8.ars" ] || bad "FP8_STATIC refusal left an output"
if "$AR_BIN/ar-tune" --quiet -i "$T/calib.ars" --scheme MXFP4 --enable_alg_ext --iters 2 -o "$T/mx.ars" 2> "$T/err" &&
   [ -s "$T/mx.ars" ]; then ok "MXFP4 (W4A4) tunes with --enable_alg_ext"
else bad "MXFP4 with --enable_alg_ext: $(cat "$T/err")"; fi

# 3. GGUF
"$AR_BIN/ar-tune" --quiet --threads 1 -i "$T/calib.ars" --scheme gguf:q4_k_m --enable_alg_ext --batch_size 4 \
    -o "$T/g.ars"
"$AR_BIN/ar-dump" "$T/g.ars" > "$T/dump"
if head -1 "$T/dump" | grep -q '"iters":200' && head -1 "$T/dump" | grep -q '"method":"signround"'; then
    ok "GGUF --enable_alg_ext tunes 200 iterations"
else bad "GGUF alg_ext META: $(head -1 "$T/dump")"; fi
if grep -q 'model.embed_tokens.weight.gguf' "$T/dump"; then ok "stream carries the embedding blocks"
else bad "no embedding record"; fi
if grep -q 'lm_head.weight.gguf' "$T/dump"; then bad "tied model got a separate head record"; else ok "no head record for a tied model"; fi
"$AR_BIN/ar-pack" --quiet -i "$T/g.ars" --format gguf:q4_k_m -o "$T/g.gguf"
[ -s "$T/g.gguf" ] && ok "GGUF alg_ext stream packs" || bad "no GGUF file"

# 4. auto-round forwards the flag
if "$AR_BIN/auto-round" --model "$M" --dataset "$TXT" --scheme W2A16 --enable_alg_ext --dry_run --output_dir "$T/ar" 2>&1 |
   grep -q 'ar-tune.*--enable_alg_ext'; then ok "auto-round passes --enable_alg_ext"
else bad "auto-round does not pass --enable_alg_ext"; fi
exit $fail
