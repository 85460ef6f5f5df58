#!/bin/sh
# Driving single tools for a research question: how much does SignRound gain
# over RTN, block by block, and what does that do to perplexity?
#
#   examples/research.sh [OUT_DIR]
#
# One calibration stream feeds three ar-tune runs (RTN, opt-RTN, SignRound).
# SignRound's iteration 0 is exactly RTN (rounding offsets 0, scales 1), so
# ar-tune's progress line for each block, "loss L0 -> L (iter i)", gives the
# block's output MSE under RTN (L0) and after tuning (L) on the same inputs.
# ar-dump shows what each stream holds; each is then packed and evaluated.
#
# Environment (defaults): MODEL [stories260K], DATA, EVAL_TEXT, SCHEME
# [W2A16G64: 2 bits is where rounding matters most], ITERS [100], NSAMPLES
# [32], SEQLEN [128], AR_BIN, AR_SHARED.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
AR_BIN=${AR_BIN:-$here/../bin}
AR_SHARED=${AR_SHARED:-$here/../../shared}
MODEL=${MODEL:-$AR_SHARED/models/stories260K}
DATA=${DATA:-$AR_SHARED/data/tinystories/TinyStories-validation-head.txt}
EVAL_TEXT=${EVAL_TEXT:-$DATA}
SCHEME=${SCHEME:-W2A16G64} ITERS=${ITERS:-100} NSAMPLES=${NSAMPLES:-32} SEQLEN=${SEQLEN:-128}
OUT=${1:-research-out}
mkdir -p "$OUT"

"$AR_BIN/ar-calib" --quiet --model "$MODEL" --dataset "$DATA" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" \
  -o "$OUT/calib.ars"
"$AR_BIN/ar-tune" --quiet -i "$OUT/calib.ars" --scheme "$SCHEME" --iters 0 --disable_opt_rtn -o "$OUT/rtn.ars"
"$AR_BIN/ar-tune" --quiet -i "$OUT/calib.ars" --scheme "$SCHEME" --iters 0 -o "$OUT/opt-rtn.ars"
"$AR_BIN/ar-tune" --progress -i "$OUT/calib.ars" --scheme "$SCHEME" --iters "$ITERS" -o "$OUT/signround.ars" \
  2> "$OUT/signround.log"

echo "== what the streams hold (ar-dump)"
for m in rtn opt-rtn signround; do
  "$AR_BIN/ar-dump" "$OUT/$m.ars" > "$OUT/$m.dump"
  awk -F'\t' -v m="$m" '
    $1 == "meta" { match($2, /"method":"[^"]*"/); meth = substr($2, RSTART + 10, RLENGTH - 11) }
    $1 == "tensor" && $2 ~ /\.qweight$/ { n++; bytes += $5 }
    END { printf "  %-10s method %-9s %d quantized layers, %d weights\n", m, meth, n, bytes }' "$OUT/$m.dump"
done

echo "== block output MSE: RTN rounding vs SignRound ($ITERS iterations)"
printf '  %-6s %-12s %-12s %s\n' block RTN SignRound "SignRound/RTN"
awk '/ar-tune: block / && / loss / {
       split($3, b, "/")
       for (i = 1; i <= NF; i++) if ($i == "loss") { l0 = $(i + 1); l = $(i + 3) }
       printf "  %-6s %-12s %-12s %.3f\n", b[1], l0, l, (l0 > 0 ? l / l0 : 1)
     }' "$OUT/signround.log"

echo "== perplexity on $(basename "$EVAL_TEXT") (40 windows of 256 tokens)"
ppl() { j=$("$AR_BIN/ar-eval" --quiet --json --model "$1" --text "$EVAL_TEXT" --seqlen 256 --windows 40) || exit 1
        printf '%s\n' "$j" | sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p'; }
p=$(ppl "$MODEL")
printf '  %-10s %s\n' original "$p"
for m in rtn opt-rtn signround; do
  rm -rf "$OUT/$m"
  "$AR_BIN/ar-pack" --quiet -i "$OUT/$m.ars" --format auto_round -o "$OUT/$m"
  p=$(ppl "$OUT/$m")
  printf '  %-10s %s\n' "$m" "$p"
done
