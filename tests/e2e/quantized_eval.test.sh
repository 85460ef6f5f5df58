#!/bin/sh
# ar-eval reads every Hugging Face format ar-pack writes, and the same tuned
# weights give the same perplexity in each of them.
#
#  stories260K (f32) W4 G32 plain RTN: sym as auto_round / auto_gptq / fake,
#    asym as auto_round / auto_gptq / auto_awq / fake: identical perplexity
#    (fake holds the dequantized f32 weights, so the packed layouts must
#    unpack to exactly the same numbers), worse than the unquantized model.
#  tiny-llama (bf16) W4A16 G128 plain RTN on a few windows: sym auto_round ==
#    auto_gptq, asym auto_round (AWQ layout) == auto_awq; fake within 0.05%
#    (it stores s*(q-z) rounded to bf16, as AutoRound's fake format does); all
#    1-5% worse than the unquantized model (AutoRound's RTN: +2.0%).
#  AR_E2E_FULL=1 adds the full protocol (200 windows of heldout.txt, minutes):
#    sym auto_round within 0.3% of AutoRound's RTN figure 39.565
#    (tiny-llama/README.md).
#  Bad input: an unknown packing_format and a file that is no model fail with
#    one line naming the file.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
M="$AR_SHARED/models"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0

field() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p"; }
# within A B TOL: |A/B - 1| <= TOL
within() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a / b - 1; if (d < 0) d = -d; exit !(d <= t) }'; }
# ratio_in A B LO HI: LO < A/B < HI
ratio_in() { awk -v a="$1" -v b="$2" -v lo="$3" -v hi="$4" 'BEGIN { r = a / b; exit !(r > lo && r < hi) }'; }
ppl() { # MODEL TEXT SEQLEN WINDOWS
  "$AR_BIN/ar-eval" --quiet --json --threads 1 --batch 4 --model "$1" --text "$2" --seqlen "$3" --windows "$4" | field ppl
}
pack() { # MODEL NAME FORMATS TUNE-ARGS...
  model=$1 name=$2 formats=$3; shift 3
  "$AR_BIN/ar-tune" --quiet --model "$model" --iters 0 --disable_opt_rtn "$@" -o "$tmp/$name.ars"
  "$AR_BIN/ar-pack" --quiet -i "$tmp/$name.ars" --format "$formats" -o "$tmp/$name"
}
same() { # WHAT A B
  if [ -n "$2" ] && [ "$2" = "$3" ]; then echo "ok   $1: ppl $2 both"; else echo "FAIL $1: ppl $2 vs $3"; fail=1; fi
}
near() { # WHAT A B TOL
  if within "$2" "$3" "$4"; then echo "ok   $1: ppl $2 vs $3"; else echo "FAIL $1: ppl $2 vs $3 (tolerance $4)"; fail=1; fi
}
worse() { # WHAT QUANT BASE LO HI
  if ratio_in "$2" "$3" "$4" "$5"; then echo "ok   $1: ppl $2, unquantized $3"
  else echo "FAIL $1: ppl $2, unquantized $3 (ratio outside $4..$5)"; fail=1; fi
}

# ---- stories260K: exact agreement -----------------------------------------
S="$M/stories260K" ST="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
pack "$S" s auto_round,auto_gptq,fake --group_size 32
pack "$S" sa auto_round,auto_gptq,auto_awq,fake --group_size 32 --asym
base=$(ppl "$S" "$ST" 256 20)
fake=$(ppl "$tmp/s/fake" "$ST" 256 20)
same "stories260K sym auto_round = fake" "$(ppl "$tmp/s/auto_round" "$ST" 256 20)" "$fake"
same "stories260K sym auto_gptq = fake" "$(ppl "$tmp/s/auto_gptq" "$ST" 256 20)" "$fake"
worse "stories260K sym RTN" "$fake" "$base" 1.0001 1.2
afake=$(ppl "$tmp/sa/fake" "$ST" 256 20)
for f in auto_round auto_gptq auto_awq; do
  same "stories260K asym $f = fake" "$(ppl "$tmp/sa/$f" "$ST" 256 20)" "$afake"
done
worse "stories260K asym RTN" "$afake" "$base" 1.0001 1.2

# ---- tiny-llama: a few windows ----------------------------------------------
L="$M/tiny-llama" LT="$M/tiny-llama/heldout.txt"
pack "$L" l auto_round,auto_gptq,fake
pack "$L" la auto_round,auto_awq --asym
base=$(ppl "$L" "$LT" 512 4)
ar=$(ppl "$tmp/l/auto_round" "$LT" 512 4)
same "tiny-llama sym auto_gptq = auto_round" "$(ppl "$tmp/l/auto_gptq" "$LT" 512 4)" "$ar"
near "tiny-llama sym fake ~ auto_round" "$(ppl "$tmp/l/fake" "$LT" 512 4)" "$ar" 0.0005
worse "tiny-llama sym RTN" "$ar" "$base" 1.01 1.05
aar=$(ppl "$tmp/la/auto_round" "$LT" 512 4)
same "tiny-llama asym auto_awq = auto_round" "$(ppl "$tmp/la/auto_awq" "$LT" 512 4)" "$aar"
worse "tiny-llama asym RTN" "$aar" "$base" 1.01 1.05

if [ "${AR_E2E_FULL:-0}" = 1 ]; then
  full=$(ppl "$tmp/l/auto_round" "$LT" 512 200)
  near "tiny-llama W4A16 RTN auto_round, 200 windows, vs AutoRound's 39.565" "$full" 39.565 0.003
fi

# ---- bad input ---------------------------------------------------------------
mkdir "$tmp/bad"
cp "$tmp/l/auto_round/"* "$tmp/bad/"
sed 's/"packing_format": "auto_round:auto_gptq"/"packing_format": "foo"/' "$tmp/l/auto_round/config.json" > "$tmp/bad/config.json"
expect_error() { # WHAT PATTERN MODEL
  if "$AR_BIN/ar-eval" --quiet --model "$3" --text "$LT" --windows 1 > "$tmp/out" 2> "$tmp/err"; then
    echo "FAIL $1: accepted"; fail=1
  elif [ "$(wc -l < "$tmp/err")" = 1 ] && grep -q "$2" "$tmp/err"; then echo "ok   $1: $(cat "$tmp/err")"
  else echo "FAIL $1: $(cat "$tmp/err")"; fail=1; fi
}
expect_error "unknown packing_format" "$tmp/bad/config.json: unknown packing_format 'foo'" "$tmp/bad"
expect_error "not a model" "$LT: neither a model folder nor a GGUF file" "$LT"
exit $fail
