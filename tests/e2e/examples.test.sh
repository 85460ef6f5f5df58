#!/bin/sh
# Every example in examples/ runs on stories260K with quick settings:
# pipeline.sh, research.sh, and examples/Makefile, whose second run must do
# nothing and whose changed ITERS must redo only the SignRound steps.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
ex=$(cd "$(dirname "$0")/../../examples" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export AR_BIN AR_SHARED ITERS=3 NSAMPLES=8 SEQLEN=64
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }
num() { printf '%s' "$1" | grep -Eq '^[0-9]+\.[0-9]+$'; }

# pipeline.sh: two perplexities, both finite numbers.
if sh "$ex/pipeline.sh" "$tmp/p" > "$tmp/p.out" 2>&1; then
  base=$(awk '/original/ { print $2 }' "$tmp/p.out"); q=$(awk '/SignRound/ { print $3 }' "$tmp/p.out")
  if num "$base" && num "$q"; then ok "pipeline.sh: ppl $base -> $q"; else bad "pipeline.sh output: $(cat "$tmp/p.out")"; fi
else bad "pipeline.sh: $(tail -5 "$tmp/p.out")"; fi

# research.sh: one loss line per block of stories260K (5), and four perplexities.
if sh "$ex/research.sh" "$tmp/r" > "$tmp/r.out" 2>&1; then
  blocks=$(awk '/^== block/ { on = 1; next } /^==/ { on = 0 } on && $1 ~ /^[0-9]+$/' "$tmp/r.out" | wc -l)
  ppls=$(awk '/^== perplexity/ { on = 1; next } on && $2 ~ /^[0-9.]+$/' "$tmp/r.out" | wc -l)
  methods=$(grep -c "method \(rtn\|opt_rtn\|signround\) " "$tmp/r.out" || true)
  if [ "$blocks" = 5 ] && [ "$ppls" = 4 ] && [ "$methods" = 3 ]; then ok "research.sh: 5 blocks, 3 streams, 4 perplexities"
  else bad "research.sh output ($blocks blocks, $methods streams, $ppls ppl): $(cat "$tmp/r.out")"; fi
else bad "research.sh: $(tail -5 "$tmp/r.out")"; fi

# examples/Makefile: full run, then nothing, then only what ITERS changes.
mk() { make -C "$ex" OUT="$tmp/mk" SCHEMES=W4A16 EVAL_WINDOWS=8 "$@"; }
if mk -j2 > "$tmp/mk1.out" 2>&1; then
  rows=$(awk -F'\t' '$2 ~ /^[0-9.]+$/' "$tmp/mk/results.tsv" | wc -l)
  [ "$rows" = 3 ] && ok "Makefile: 3 results (original, rtn, signround)" || bad "results.tsv: $(cat "$tmp/mk/results.tsv")"
else bad "examples Makefile: $(tail -5 "$tmp/mk1.out")"; fi
mk > "$tmp/mk2.out" 2>&1
if grep -q "bin/ar-" "$tmp/mk2.out"; then bad "second make reran: $(grep "bin/ar-" "$tmp/mk2.out")"; else ok "second make does nothing"; fi
mk ITERS=4 > "$tmp/mk3.out" 2>&1
ran=$(grep -o "bin/ar-[a-z]* [^ ]* [^ ]*" "$tmp/mk3.out" | tr '\n' ';')
case "$ran" in
  *ar-calib*|*W4A16-rtn*) bad "ITERS change reran calibration or RTN: $ran";;
  *"ar-tune -i"*"ar-pack -i $tmp/mk/W4A16-signround"*"ar-eval --model $tmp/mk/W4A16-signround"*) ok "ITERS change redoes SignRound only";;
  *) bad "ITERS change ran: $ran";;
esac
exit $fail
