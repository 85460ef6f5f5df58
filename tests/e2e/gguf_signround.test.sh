#!/bin/sh
# SignRound for GGUF mixes on stories260K: ar-calib | ar-tune --scheme
# gguf:q4_k_m --iters 20 | ar-pack --format gguf:q4_k_m, read by ar-eval.
# stories260K's rows (64, 172) are not whole 256-element k-quant blocks, so
# its linears fall back to Q5_0/Q8_0 here: the same frozen-scale path as the
# k-quants (those are covered by test_quant_gguf on 256-multiple rows).
# Checks: every block's tuning loss goes down; the tuned file differs from the
# untuned one; its perplexity stays near the F32 model's; equal seeds give
# byte-identical streams; META says signround.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
M="$AR_SHARED/models/stories260K"
TXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
T=$(mktemp -d /tmp/ar-gguf-sr.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
ppl() {
  v=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --batch 4 --model "$1" --text "$TXT" --seqlen 256 --windows 40 |
      sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  [ -n "$v" ] || { echo "FAIL ar-eval --model $1 gave no perplexity" >&2; exit 1; }
  echo "$v"
}

"$AR_BIN/ar-calib" --quiet --model "$M" --dataset "$TXT" --nsamples 16 --seqlen 128 |
  "$AR_BIN/ar-tune" --progress --scheme gguf:q4_k_m --iters 20 2> "$T/log" |
  tee "$T/tuned.ars" | "$AR_BIN/ar-pack" --quiet --format gguf:q4_k_m -o "$T/tuned.gguf"
"$AR_BIN/ar-calib" --quiet --model "$M" --dataset "$TXT" --nsamples 16 --seqlen 128 -o "$T/calib.ars"
"$AR_BIN/ar-tune" --quiet -i "$T/calib.ars" --scheme gguf:q4_k_m --iters 20 -o "$T/again.ars"
"$AR_BIN/ar-tune" --quiet -i "$T/calib.ars" --scheme gguf:q4_k_m -o "$T/untuned.ars"
"$AR_BIN/ar-pack" --quiet -i "$T/untuned.ars" --format gguf:q4_k_m -o "$T/untuned.gguf"

# "block i/5 ... loss A -> B (iter k)": B < A for all five blocks
n=$(awk '/ar-tune: block [0-9]+\/[0-9]+ .*loss/ { for (i = 1; i < NF; i++) if ($i == "loss") { a = $(i+1); b = $(i+3) }
         if (b + 0 < a + 0) ok++ } END { print ok + 0 }' "$T/log")
if [ "$n" = 5 ]; then echo "ok   tuning loss went down in all 5 blocks"; else echo "FAIL loss went down in $n of 5 blocks"; cat "$T/log"; fail=1; fi

if cmp -s "$T/tuned.gguf" "$T/untuned.gguf"; then echo "FAIL tuning changed no code"; fail=1; else echo "ok   tuned file differs from the untuned one"; fi
# exact: two runs on the same machine, kernel and thread count
if cmp -s "$T/tuned.ars" "$T/again.ars"; then echo "ok   same seed, same stream"; else echo "FAIL two runs with the same seed differ"; fail=1; fi
if "$AR_BIN/ar-dump" "$T/tuned.ars" 2>/dev/null | grep -q '"method":"signround"'; then echo "ok   META method signround"
else echo "FAIL META does not record signround"; fail=1; fi

base=$(ppl "$M") || exit 1
p=$(ppl "$T/tuned.gguf") || exit 1
if awk -v g="$p" -v r="$base" 'BEGIN { exit !(g / r - 1 <= 0.05) }'; then echo "ok   tuned q4_k_m: ppl $p (F32 $base)"
else echo "FAIL tuned q4_k_m: ppl $p, F32 $base"; fail=1; fi
exit $fail
