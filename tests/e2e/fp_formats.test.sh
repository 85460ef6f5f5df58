#!/bin/sh
# MXFP4 / NVFP4 / FP8 on stories260K: ar-tune (zero-shot RTN) | ar-pack to
# llm_compressor, auto_round and fake; ar-eval reads all three back to the same
# perplexity with activations left alone (--act_quant none); with the default
# --act_quant auto the two quantized folders fake-quantize activations as their
# config says (a different perplexity, equal in both), which a fake folder
# reproduces with --act_quant SCHEME for the dynamic schemes; integer-only
# formats refuse floating-point layers in one line.
set -u
: "${AR_BIN:?}" "${AR_SHARED:?}"
S="$AR_SHARED/models/stories260K"
TEXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
ppl() { m=$1; shift; "$AR_BIN/ar-eval" --model "$m" --text "$TEXT" --seqlen 128 --windows 4 --json "$@" 2>/dev/null | tail -1 | sed 's/.*"ppl": *\([0-9.]*\).*/\1/'; }
base=$(ppl "$S")
for scheme in MXFP4 NVFP4 MXFP8 FP8_STATIC FP8_BLOCK; do
  "$AR_BIN/ar-tune" --model "$S" --scheme $scheme -o "$tmp/$scheme.ars" --quiet || { echo "FAIL $scheme: ar-tune"; fail=1; continue; }
  "$AR_BIN/ar-pack" -i "$tmp/$scheme.ars" --format llm_compressor,auto_round,fake -o "$tmp/$scheme" --quiet ||
    { echo "FAIL $scheme: ar-pack"; fail=1; continue; }
  a=$(ppl "$tmp/$scheme/llm_compressor" --act_quant none); b=$(ppl "$tmp/$scheme/auto_round" --act_quant none)
  c=$(ppl "$tmp/$scheme/fake")
  # llm_compressor and auto_round: the same weights, the same forward, the
  # same machine: equal. fake stores bf16 weights: within bf16's unit
  # roundoff 2^-9 (the stated error of those rounded inputs)
  if [ -z "$a" ] || [ "$a" != "$b" ] || ! awk -v a="$a" -v c="$c" -v z="$base" 'BEGIN{exit !(a > 0 && (a-c)^2 < (2^-9*a)^2 && a < 3*z)}'; then
    echo "FAIL $scheme: ppl llm_compressor $a auto_round $b fake $c (bf16 $base)"; fail=1
  else echo "ok   $scheme: ppl $a (bf16 $base)"; fi
  qa=$(ppl "$tmp/$scheme/llm_compressor"); qb=$(ppl "$tmp/$scheme/auto_round"); qc=$(ppl "$tmp/$scheme/fake" --act_quant $scheme)
  case $scheme in FP8_STATIC|NVFP4) qc=$qa ;; esac   # static scales: a fake folder has none
  if [ -z "$qa" ] || [ "$qa" != "$qb" ] || [ "$qa" = "$a" ] ||
     ! awk -v a="$qa" -v c="$qc" 'BEGIN{exit !((a-c)^2 < (2^-9*a)^2)}'; then
    echo "FAIL $scheme activations: ppl llm_compressor $qa auto_round $qb fake --act_quant $qc (weights only $a)"; fail=1
  else echo "ok   $scheme activations quantized: ppl $qa (weights only $a)"; fi
done
"$AR_BIN/ar-pack" -i "$tmp/MXFP4.ars" --format auto_gptq -o "$tmp/gptq" --quiet 2> "$tmp/err"; rc=$?
if [ "$rc" -ne 1 ] || [ "$(wc -l < "$tmp/err")" != 1 ] || ! grep -q "no GPTQ/AWQ layout" "$tmp/err"; then
  echo "FAIL auto_gptq refusal: exit $rc"; sed 's/^/    /' "$tmp/err"; fail=1
else echo "ok   auto_gptq refusal: $(cat "$tmp/err")"; fi
exit $fail
