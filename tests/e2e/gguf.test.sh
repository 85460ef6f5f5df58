#!/bin/sh
# The GGUF path on stories260K: ar-tune --scheme gguf:<mix> (RTN, and with a
# small calibration stream: imatrix) | ar-pack gguf:<mix> | ar-eval --model
# FILE.gguf. Checks: the F32 model's perplexity is reproduced within a sane
# margin by each quantized file; the RTN Q8_0/Q4_0/Q4_K_M files score exactly
# what llama.cpp's own files (stories260K/gguf-reference) score, and, when a
# Python with the `gguf` package is at hand, their tensors are byte-identical;
# a W4A16 G32 stream packs exactly as Q4_0; mismatched streams are refused.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
M="$AR_SHARED/models/stories260K"
TXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
T=$(mktemp -d /tmp/ar-gguf-e2e.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
field() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p"; }
ppl() { # MODEL -> its perplexity on 40 windows of 256 tokens (exit on failure)
  v=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --batch 4 --model "$1" --text "$TXT" --seqlen 256 --windows 40 | field ppl)
  [ -n "$v" ] || { echo "FAIL ar-eval --model $1 gave no perplexity" >&2; exit 1; }
  echo "$v"
}
# ratio GOT REF MAX: GOT/REF - 1 <= MAX (and not below -0.002: quantization
# does not help much). Quality bounds of each GGUF type, not rounding
# tolerances: the perplexities differ by the quantization itself.
near() { awk -v g="$1" -v r="$2" -v m="$3" 'BEGIN { d = g / r - 1; exit !(d <= m && d >= -0.002) }'; }

base=$(ppl "$M") || exit 1
echo "F32 model: ppl $base"

# RTN streams (no calibration: llama-quantize without imatrix)
for mix in q8_0 q4_0 q4_k_m; do
  "$AR_BIN/ar-tune" --quiet --model "$M" --scheme "gguf:$mix" | "$AR_BIN/ar-pack" --quiet --format "gguf:$mix" -o "$T/$mix.gguf"
done
# imatrix stream from 16 calibration windows
"$AR_BIN/ar-calib" --quiet --model "$M" --dataset "$TXT" --nsamples 16 --seqlen 128 -o "$T/calib.ars"
"$AR_BIN/ar-tune" --quiet -i "$T/calib.ars" --scheme gguf:q4_k_m | "$AR_BIN/ar-pack" --quiet --format gguf:q4_k_m -o "$T/q4_k_m-imatrix.gguf"

for f in q8_0:0.005 q4_0:0.15 q4_k_m:0.05 q4_k_m-imatrix:0.05; do
  name=${f%%:*}; max=${f##*:}
  p=$(ppl "$T/$name.gguf") || exit 1
  if near "$p" "$base" "$max"; then echo "ok   $name: ppl $p (F32 $base)"; else echo "FAIL $name: ppl $p, F32 $base (max +$max)"; fail=1; fi
done

# llama.cpp's files, with the HF tokenizer beside them, score the same.
mkdir "$T/ref"
cp "$M/tokenizer.json" "$M/tokenizer_config.json" "$T/ref/"
for pair in q8_0:Q8_0 q4_0:Q4_0 q4_k_m:Q4_K_M; do
  ours=${pair%%:*}; ref=${pair##*:}
  cp "$M/gguf-reference/stories260K-$ref.gguf" "$T/ref/"
  a=$(ppl "$T/$ours.gguf") && b=$(ppl "$T/ref/stories260K-$ref.gguf") || exit 1
  if [ "$a" = "$b" ]; then echo "ok   $ours: same ppl as llama.cpp's $ref file ($a)"; else echo "FAIL $ours: ppl $a, llama.cpp's $ref file $b"; fail=1; fi
done

# Byte identity of every tensor, where the gguf Python package is available.
PY=""
for p in "${AR_PYTHON:-}" "$(dirname "$0")/../../build/venv/bin/python" python3; do
  if [ -n "$p" ] && "$p" -c 'import gguf' 2>/dev/null; then PY=$p; break; fi
done
if [ -n "$PY" ]; then
  for pair in q8_0:Q8_0 q4_0:Q4_0 q4_k_m:Q4_K_M; do
    ours=${pair%%:*}; ref=${pair##*:}
    if "$PY" - "$T/$ours.gguf" "$M/gguf-reference/stories260K-$ref.gguf" <<'PYEOF'
import sys, gguf
a, b = ({t.name: t for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:3])
bad = sorted(set(a) ^ set(b)) + [n for n in a if n in b and (a[n].tensor_type != b[n].tensor_type or a[n].data.tobytes() != b[n].data.tobytes())]
print(f"{len(a)} tensors, differing: {bad}")
sys.exit(1 if bad else 0)
PYEOF
    then echo "ok   $ours: tensors byte-identical to llama.cpp's $ref"; else echo "FAIL $ours: tensors differ from $ref"; fail=1; fi
  done
else
  echo "skip byte comparison: no Python with the gguf package"
fi

# An int stream that GGUF stores exactly: W4A16 with groups of 32 as Q4_0.
"$AR_BIN/ar-tune" --quiet --model "$M" --scheme W4A16 --group_size 32 -o "$T/w4g32.ars"
"$AR_BIN/ar-pack" --quiet -i "$T/w4g32.ars" --format gguf:q4_0 -o "$T/w4g32.gguf"
p=$(ppl "$T/w4g32.gguf") || exit 1
if near "$p" "$base" 0.15; then echo "ok   W4A16 G32 as Q4_0: ppl $p"; else echo "FAIL W4A16 G32 as Q4_0: ppl $p"; fail=1; fi

# Refusals: one line naming the problem, exit 1.
expect_fail() { # WHAT PATTERN CMD...
  what=$1; pat=$2; shift 2
  if "$@" > "$T/out" 2> "$T/err"; then echo "FAIL $what: succeeded"; fail=1
  elif grep -q "$pat" "$T/err"; then echo "ok   $what: $(cat "$T/err")"
  else echo "FAIL $what: $(cat "$T/err")"; fail=1; fi
}
"$AR_BIN/ar-tune" --quiet --model "$M" --scheme gguf:q4_k_m -o "$T/q4km.ars"
expect_fail "int stream as k-quant" "needs a stream tuned with --scheme gguf:q4_k_m" \
  "$AR_BIN/ar-pack" -i "$T/w4g32.ars" --format gguf:q4_k_m -o "$T/x.gguf"
expect_fail "GGUF stream as another mix" "needs a stream tuned with --scheme gguf:q6_k" \
  "$AR_BIN/ar-pack" -i "$T/q4km.ars" --format gguf:q6_k -o "$T/y.gguf"
expect_fail "GGUF stream as HF folder" "packs only as gguf" \
  "$AR_BIN/ar-pack" -i "$T/q4km.ars" --format auto_round -o "$T/z"
expect_fail "unknown mix" "unknown GGUF type" \
  "$AR_BIN/ar-pack" -i "$T/q4km.ars" --format gguf:q9_x -o "$T/w.gguf"
[ ! -e "$T/x.gguf" ] && [ ! -e "$T/y.gguf" ] || { echo "FAIL a refused output was left behind"; fail=1; }
exit $fail
