#!/bin/sh
# Activation fake-quantization while tuning (spec §2.12) on stories260K:
# ar-calib | ar-tune (a few SignRound iterations) with MXFP4, INT8 (W8A8) and
# FP8_STATIC | ar-pack | ar-eval, which quantizes activations as the exported
# config says (or as --act_quant says for a fake folder).
set -u
: "${AR_BIN:?}" "${AR_SHARED:?}"
S="$AR_SHARED/models/stories260K"
TEXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }
eval_json() { m=$1; shift; "$AR_BIN/ar-eval" --model "$m" --text "$TEXT" --seqlen 128 --windows 3 --json "$@" 2>/dev/null | tail -1; }
field() { sed -n "s/.*\"$1\": *\\([0-9.]*\\).*/\\1/p"; }
# close A B: |A - B| < 2^-9 A. The fake folder stores bf16 weights, the
# exports the tuner's f32 ones: bf16's unit roundoff 2^-9 is the stated error
# of those rounded inputs, which a perplexity follows at most in proportion.
close() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a > 0 && (a-b)^2 < (2^-9*a)^2)}'; }
tune() { "$AR_BIN/ar-tune" -i "$tmp/calib.ars" --quiet "$@"; }

"$AR_BIN/ar-calib" --model "$S" --dataset "$TEXT" --nsamples 8 --seqlen 64 -o "$tmp/calib.ars" --quiet ||
  { echo "FAIL ar-calib"; exit 1; }

# MXFP4 (W4A4): SignRound (last iterate) differs from RTN; the exported
# folder evaluates with its 30 activation quantizers (down_proj's K = 172 is
# no multiple of 32), as a fake folder does with --act_quant MXFP4, and worse
# than with weights alone.
if tune --scheme MXFP4 --iters 4 --not_use_best_mse -o "$tmp/mx.ars" &&
   tune --scheme MXFP4 --iters 0 --disable_opt_rtn -o "$tmp/mx0.ars" &&
   "$AR_BIN/ar-pack" -i "$tmp/mx.ars" --format llm_compressor,fake -o "$tmp/mx" --quiet &&
   "$AR_BIN/ar-pack" -i "$tmp/mx0.ars" --format fake -o "$tmp/mx0" --quiet; then
  cmp -s "$tmp/mx/fake/model.safetensors" "$tmp/mx0/model.safetensors" && bad "MXFP4: SignRound gave the RTN weights" ||
    ok "MXFP4: SignRound differs from RTN"
  j=$(eval_json "$tmp/mx/llm_compressor"); n=$(echo "$j" | field act_quant_linears); p=$(echo "$j" | field ppl)
  pf=$(eval_json "$tmp/mx/fake" --act_quant MXFP4 | field ppl); pw=$(eval_json "$tmp/mx/fake" | field ppl)
  if [ "$n" = 30 ] && close "$p" "$pf" && awk -v a="$p" -v w="$pw" 'BEGIN{exit !(a > w)}'; then
    ok "MXFP4: W4A4 ppl $p (fake --act_quant $pf, weights only $pw)"
  else bad "MXFP4: $n linears, ppl $p, fake --act_quant $pf, weights only $pw"; fi
else bad "MXFP4: tune or pack"; fi

# INT8 (W8A8, per-token activations): the MLP (172-wide) stays 16-bit so the
# llm_compressor packing applies; the whole-model fake export evaluates too.
printf '{"mlp": {"bits": 16}}\n' > "$tmp/attn_only.json"
if tune --scheme INT8 --iters 4 --layer_config "$tmp/attn_only.json" -o "$tmp/i8.ars" &&
   "$AR_BIN/ar-pack" -i "$tmp/i8.ars" --format llm_compressor -o "$tmp/i8" --quiet &&
   tune --scheme INT8 --iters 4 -o "$tmp/i8all.ars" && "$AR_BIN/ar-pack" -i "$tmp/i8all.ars" --format fake -o "$tmp/i8all" --quiet; then
  n=$(eval_json "$tmp/i8" | field act_quant_linears); pa=$(eval_json "$tmp/i8all" --act_quant INT8)
  if [ "$n" = 20 ] && [ "$(echo "$pa" | field act_quant_linears)" = 35 ]; then
    ok "INT8: W8A8 ppl $(eval_json "$tmp/i8" | field ppl) (attention only), $(echo "$pa" | field ppl) (all)"
  else bad "INT8: $n linears in the llm_compressor folder; fake: $pa"; fi
else bad "INT8: tune or pack"; fi

# FP8_STATIC: a calibrated act_max per linear, written as input_scale and
# used by ar-eval (static: not the fake folder's per-call maximum). With one
# iteration the weights are RTN's either way, but the maxima of blocks after
# the first come from the quantized chain when SignRound feeds it, so
# --disable_quanted_input (the FP chain) gives other scales and perplexity.
if tune --scheme FP8_STATIC --iters 1 -o "$tmp/f8.ars" && tune --scheme FP8_STATIC --iters 1 --disable_quanted_input -o "$tmp/f8fp.ars" &&
   "$AR_BIN/ar-pack" -i "$tmp/f8.ars" --format llm_compressor,fake -o "$tmp/f8" --quiet &&
   "$AR_BIN/ar-pack" -i "$tmp/f8fp.ars" --format llm_compressor,fake -o "$tmp/f8fp" --quiet; then
  cnt=$("$AR_BIN/ar-dump" "$tmp/f8.ars" | grep -c 'act_max')
  ps=$(eval_json "$tmp/f8/llm_compressor" | field ppl); pd=$(eval_json "$tmp/f8/fake" --act_quant FP8_STATIC | field ppl)
  pfp=$(eval_json "$tmp/f8fp/llm_compressor" | field ppl)
  if [ "$cnt" = 35 ] && cmp -s "$tmp/f8/fake/model.safetensors" "$tmp/f8fp/fake/model.safetensors" &&
     [ -n "$ps" ] && [ "$ps" != "$pd" ] && [ "$ps" != "$pfp" ]; then
    ok "FP8_STATIC: $cnt act_max records, static ppl $ps (dynamic $pd, FP-chain maxima $pfp)"
  else bad "FP8_STATIC: $cnt act_max records, static ppl $ps, dynamic $pd, FP-chain maxima $pfp"; fi
else bad "FP8_STATIC: tune or pack"; fi

# An activation type with no quantizer is refused in one line naming the layer.
printf '{"self_attn.q_proj": {"act_bits": 4, "act_data_type": "mx_int"}}\n' > "$tmp/bad.json"
tune --scheme MXFP4 --iters 1 --layer_config "$tmp/bad.json" -o "$tmp/bad.ars" 2> "$tmp/err"; rc=$?
if [ "$rc" = 1 ] && [ "$(wc -l < "$tmp/err")" = 1 ] && grep -q 'q_proj.*mx_int' "$tmp/err"; then ok "refusal: $(cat "$tmp/err")"
else bad "refusal: exit $rc: $(cat "$tmp/err")"; fi
exit $fail
