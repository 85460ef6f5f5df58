#!/bin/sh
# Checkpoints whose linears ship as FP8 E4M3 with scales (safetensors.h):
# copies made by tests/fixtures/make_fp8_copy.py from tiny-llama (DeepSeek's
# layout, 128 x 128 blocks; tiny-llama's shapes 512, 128 and 1280 are all
# multiples of 128) and from stories260K (32 x 32 blocks over 172-row and
# 172-column linears: partial edge blocks), in the "fp8" and the
# compressed-tensors layouts, each beside the BF16 (stories260K: F32) copy
# dequantized by the script.
#   1. ar-eval: the FP8 copy's perplexity is the dequantized copy's, exactly
#      (the same weights, so the same forward); transformers' dequantizing
#      load of the FP8 folder gives bit-identical weights and a perplexity
#      within 1e-3 of ours (the two-f32-forwards bound of eval.test.sh).
#   2. ar-calib + ar-tune (SignRound, one thread): the tensor records of the
#      tuned stream are byte-identical to the dequantized copy's; META differs
#      only in "model" and tuning.source_quantization. Control: the original
#      BF16 model tunes to other bytes.
#   3. ar-pack: the same auto_round folder, config.json aside, where the
#      source's fp8 quantization_config is replaced and source_quantization
#      recorded; the same GGUF file.
#   4. Bad input: a weight without its scale, a scale of the wrong shape: each
#      tool fails with one line naming the file and the tensor, and writes
#      nothing.
. "$(dirname "$0")/lib.sh"
command -v zstd > /dev/null || { echo "skip: needs zstd"; exit 0; }
PY=""
for p in "${AR_PYTHON:-}" "$(dirname "$0")/../../build/venv/bin/python" python3; do
  if [ -n "$p" ] && "$p" -c 'import torch, safetensors' 2>/dev/null; then PY=$p; break; fi
done
[ -n "$PY" ] || { echo "skip: no Python with torch and safetensors to write the FP8 copies"; exit 0; }
MK="$(dirname "$0")/../fixtures/make_fp8_copy.py"
TL=$SHARED/models/tiny-llama
HELD=$TL/heldout.txt
THR="--threads 1"

# tensors STREAM: the decompressed stream after its first (META) record.
tensors() { zstd -dcq "$1" > "$T/raw"; n=$(od -An -tu4 -j13 -N4 "$T/raw" | tr -d ' '); tail -c +$((18 + n)) "$T/raw"; }
# meta STREAM: the first META's JSON without "model" and source_quantization.
meta() { "$BIN/ar-dump" "$1" | sed -n '1s/^meta\t//p' | sed 's/"model":"[^"]*",//; s/,"source_quantization":{[^}]*}//'; }
ppl() { "$BIN/ar-eval" --quiet --json $THR --batch 4 --model "$1" --text "$2" --seqlen "$3" --windows "$4" |
        sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p'; }

# ---- 1. tiny-llama, DeepSeek layout ---------------------------------------
"$PY" "$MK" make "$TL" "$T/b128" > /dev/null
p8=$(ppl "$T/b128/fp8" "$HELD" 512 6); pd=$(ppl "$T/b128/deq" "$HELD" 512 6); po=$(ppl "$TL" "$HELD" 512 6)
[ -n "$p8" ] && [ "$p8" = "$pd" ] || fail "tiny-llama fp8 ppl $p8, dequantized copy $pd"
[ "$p8" != "$po" ] || fail "the FP8 copy evaluates like the original ($po): the comparison shows nothing"
echo "ok   tiny-llama fp8 (128x128): ppl $p8 = dequantized copy's (original $po)"
if "$PY" -c 'import transformers, accelerate' 2>/dev/null; then
  hf=$("$PY" "$MK" hf-ppl "$T/b128/fp8" "$HELD" 512 6 --compare "$T/b128/deq" 2> "$T/hf.err" | tail -1)
  case "$hf" in *'"equal_to_deq": true'*) ;; *) fail "transformers' dequantized weights differ: $hf $(tail -3 "$T/hf.err")";; esac
  ph=$(echo "$hf" | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
  awk -v r="$ph" -v g="$p8" 'BEGIN { d = g / r - 1; if (d < 0) d = -d; exit !(d <= 0.001) }' ||
    fail "ppl $p8, transformers' dequantized load $ph"
  echo "ok   transformers' dequantizing load: the same weights, ppl $ph"
else echo "skip transformers comparison: no transformers + accelerate"; fi

# ---- 2. tune: same tensors as the dequantized copy -------------------------
for d in fp8 deq; do
  "$BIN/ar-calib" --model "$T/b128/$d" --dataset "$HELD" --nsamples 4 --seqlen 64 -o "$T/$d.calib.ars"
  "$BIN/ar-tune" -i "$T/$d.calib.ars" --iters 4 --batch_size 2 $THR -o "$T/$d.tune.ars" 2> /dev/null
done
[ "$(tensors "$T/fp8.tune.ars" | sha256sum)" = "$(tensors "$T/deq.tune.ars" | sha256sum)" ] ||
  fail "ar-tune: the FP8 copy's tuned layers differ from the dequantized copy's"
[ "$(meta "$T/fp8.tune.ars")" = "$(meta "$T/deq.tune.ars")" ] || fail "META differs beyond model and source_quantization"
"$BIN/ar-dump" "$T/fp8.tune.ars" | head -1 | grep -q '"source_quantization":{"quant_method":"fp8","fmt":"e4m3","weight_block_size":\[128,128\],"dequantized_to":"bf16"}' ||
  fail "META lacks source_quantization: $("$BIN/ar-dump" "$T/fp8.tune.ars" | head -1)"
"$BIN/ar-dump" "$T/deq.tune.ars" | head -1 | grep -q source_quantization && fail "a BF16 model's META names a source quantization"
"$BIN/ar-calib" --model "$TL" --dataset "$HELD" --nsamples 4 --seqlen 64 -o "$T/orig.calib.ars"
"$BIN/ar-tune" -i "$T/orig.calib.ars" --iters 4 --batch_size 2 $THR -o "$T/orig.tune.ars" 2> /dev/null
[ "$(tensors "$T/orig.tune.ars" | sha256sum)" != "$(tensors "$T/deq.tune.ars" | sha256sum)" ] ||
  fail "the original model tunes like the FP8 copy: the comparison shows nothing"
echo "ok   ar-tune (SignRound): FP8 copy's layers byte-identical to the dequantized copy's; META records the source"

# ---- 3. ar-pack --------------------------------------------------------------
for d in fp8 deq; do "$BIN/ar-pack" -i "$T/$d.tune.ars" --model "$T/b128/$d" -o "$T/pack_$d"; done
cmp -s "$T/pack_fp8/model.safetensors" "$T/pack_deq/model.safetensors" || fail "ar-pack: different model.safetensors"
grep -q '"source_quantization"' "$T/pack_fp8/config.json" || fail "exported config lacks source_quantization"
grep -q '"activation_scheme"' "$T/pack_fp8/config.json" && fail "exported config keeps the source's fp8 quantization_config"
[ "$(grep -c '"quant_method"' "$T/pack_fp8/config.json")" = 2 ] || fail "exported config: not one quantization_config + its source"
grep -q '"quant_method": "auto-round"' "$T/pack_fp8/config.json" || fail "exported config is not auto-round"
echo "ok   ar-pack auto_round: same tensors; config records the FP8 source"

# ---- 4. partial blocks and compressed-tensors (stories260K, RTN) --------------
ST=$SHARED/models/stories260K
for f in "fp8 32 32" "ct-block 32 32" "ct-channel 1 1"; do
  set -- $f
  "$PY" "$MK" make "$ST" "$T/s_$1" --format "$1" --block "$2" "$3" > /dev/null
  for d in fp8 deq; do "$BIN/ar-tune" --model "$T/s_$1/$d" $THR -o "$T/s_$1_$d.ars" 2> /dev/null; done
  [ "$(tensors "$T/s_$1_fp8.ars" | sha256sum)" = "$(tensors "$T/s_$1_deq.ars" | sha256sum)" ] ||
    fail "stories260K $1: RTN layers differ from the dequantized copy's"
  echo "ok   stories260K $1 ($2x$3): RTN layers byte-identical to the dequantized copy's"
done
# GGUF from the partial-block copy: the same file as from the dequantized copy,
# which takes the FP8 copy's path for it (the file records the model's name
# and path).
gg() { "$BIN/ar-tune" --model "$T/s_fp8/fp8" --scheme gguf:q4_0 $THR -o "$T/g.ars" 2> /dev/null
       "$BIN/ar-pack" -i "$T/g.ars" --model "$T/s_fp8/fp8" --format gguf:q4_0 -o "$T/$1.gguf"; }
gg g8
mv "$T/s_fp8/fp8" "$T/s_fp8/x"; mv "$T/s_fp8/deq" "$T/s_fp8/fp8"
gg gd
mv "$T/s_fp8/fp8" "$T/s_fp8/deq"; mv "$T/s_fp8/x" "$T/s_fp8/fp8"
cmp -s "$T/g8.gguf" "$T/gd.gguf" || fail "gguf:q4_0 from the FP8 copy differs from the dequantized copy's"
echo "ok   stories260K fp8 32x32: the same gguf:q4_0 file as from the dequantized copy"
p8=$(ppl "$T/s_fp8/fp8" "$STORIES_TEXT" 256 20); pd=$(ppl "$T/s_fp8/deq" "$STORIES_TEXT" 256 20)
[ -n "$p8" ] && [ "$p8" = "$pd" ] || fail "stories260K fp8 32x32 ppl $p8, dequantized copy $pd"
echo "ok   stories260K fp8 32x32 (partial edge blocks): ppl $p8 = dequantized copy's"

# ---- 5. bad input -------------------------------------------------------------
"$PY" "$MK" make "$ST" "$T/bad1" --break missing-scale > /dev/null
"$PY" "$MK" make "$ST" "$T/bad2" --break scale-shape --block 32 32 > /dev/null
check_bad() { # DIR WANT
  for tool in eval calib tune; do
    case $tool in
      eval) "$BIN/ar-eval" --model "$1" --text "$STORIES_TEXT" --windows 1 --seqlen 32 > "$T/out" 2> "$T/err" && fail "ar-eval accepted $1" ;;
      calib) "$BIN/ar-calib" --model "$1" --dataset "$STORIES_TEXT" --nsamples 1 --seqlen 32 -o "$T/o.ars" 2> "$T/err" && fail "ar-calib accepted $1" ;;
      tune) "$BIN/ar-tune" --model "$1" -o "$T/o.ars" 2> "$T/err" && fail "ar-tune accepted $1" ;;
    esac
    [ "$(wc -l < "$T/err")" = 1 ] && grep -qF "$1/model.safetensors: $2" "$T/err" || fail "ar-$tool: $(cat "$T/err")"
    [ ! -e "$T/o.ars" ] || fail "ar-$tool left output behind"
  done
  echo "ok   $(head -c 150 "$T/err")..."
}
check_bad "$T/bad1/fp8" "FP8 tensor 'model.layers.0.self_attn.q_proj.weight' has no scale 'model.layers.0.self_attn.q_proj.weight_scale_inv'"
check_bad "$T/bad2/fp8" "scale 'model.layers.0.mlp.up_proj.weight_scale_inv' has shape [2, 6], expected [6, 2] for the 32 x 32 blocks of FP8 tensor 'model.layers.0.mlp.up_proj.weight' [172, 64]"
echo "fp8_source: all checks passed"
