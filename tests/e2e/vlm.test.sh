#!/bin/sh
# Vision-language checkpoints: only the text stack is quantized, everything
# else travels unchanged (libar/nn/multimodal.h, docs/multimodal.md).
# tests/fixtures/vlm/make_vlm_copy.py (Python standard library only) wraps
# stories260K's text stack in three classes and layouts: Mistral 3 as
# transformers 5 saves it (model.language_model.*, untied lm_head), Llava as
# transformers 4 did (language_model.model.*, tied), Qwen2-VL of
# transformers 4 (no text_config, "mrope" rope_scaling, model.* beside
# visual.*, zero q/k/v biases), each with a small vision tower and projector
# in BF16 / F16 / F32, some Linear-shaped under a numbered list.
#   1. ar-eval: perplexity and greedy ids are stories260K's exactly (the same
#      weights through the same forward; M-RoPE on text is plain RoPE). The
#      checked-in tests/fixtures/vlm/qwen2_vl (transformers-made, trained text
#      stack): perplexity within 0.1 % of transformers', greedy ids equal.
#   2. ar-tune (RTN and SignRound, one thread): the tuned tensor records are
#      byte-identical to stories260K's (the stream names text tensors as a
#      text-only model does).
#   3. ar-pack to auto_round, auto_gptq, llm_compressor and fake: every tensor
#      outside the text decoder's blocks is in the output with the same
#      dtype, shape and bytes; config.json keeps the class, auto_round's
#      block_name_to_quantize names the text blocks as transformers (>= 4.52)
#      names them in memory, "model.language_model.layers", in every layout; the processor files and
#      chat template are copied; the packed folder evaluates as the packed
#      stories260K. GGUF: the text stack only, the same file content as
#      stories260K's (the tied Llava copy), so the same perplexity.
#   4. Bad input: a multimodal config without text_config: one line naming
#      the file and the problem, exit 1, nothing written.
. "$(dirname "$0")/lib.sh"
command -v python3 > /dev/null || { echo "skip: needs python3"; exit 0; }
command -v zstd > /dev/null || { echo "skip: needs zstd"; exit 0; }
MK="$(dirname "$0")/../fixtures/vlm/make_vlm_copy.py"
python3 "$MK" make "$M" "$T/v" > /dev/null
TEXT=$STORIES_TEXT
THR="--threads 1"
CASES="mistral3 llava_legacy qwen2vl_legacy"
blocks() { case $1 in mistral3) echo model.language_model.layers;; llava_legacy) echo language_model.model.layers;;
           qwen2vl_legacy) echo model.layers;; esac; }
ppl() { "$BIN/ar-eval" --quiet --json $THR --model "$1" --text "$TEXT" --seqlen 128 --windows 8 |
        sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p'; }
ids() { "$BIN/ar-eval" --json $THR --model "$1" --prompt "Once upon a time" -n 16 | sed -n 's/.*"ids": *\(\[[^]]*\]\).*/\1/p'; }
tensors() { zstd -dcq "$1" > "$T/raw"; n=$(od -An -tu4 -j13 -N4 "$T/raw" | tr -d ' '); tail -c +$((18 + n)) "$T/raw"; }

# ---- 1. the text stack evaluates as stories260K -----------------------------
p0=$(ppl "$M"); g0=$(ids "$M")
[ -n "$p0" ] && [ -n "$g0" ] || fail "stories260K: no ppl or ids"
for c in $CASES; do
  p=$(ppl "$T/v/$c"); g=$(ids "$T/v/$c")
  [ "$p" = "$p0" ] || fail "$c: ppl $p, stories260K $p0"
  [ "$g" = "$g0" ] || fail "$c: greedy ids $g, stories260K $g0"
done
echo "ok   $CASES: ppl $p0 and greedy ids of stories260K"

# the checked-in Qwen2-VL made by transformers (make_tiny_vlm.py, trained text
# stack): ar-eval within 0.1 % of transformers' perplexity (its two f32
# forwards differ by rounding only), greedy ids equal
Q=$(dirname "$0")/../fixtures/vlm/qwen2_vl
rp=$(sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p' "$Q/reference.json")
qp=$("$BIN/ar-eval" --quiet --json $THR --model "$Q" --text "$Q/heldout.txt" --seqlen 128 --windows 16 |
     sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
awk -v a="$qp" -v r="$rp" 'BEGIN { d = a / r - 1; if (d < 0) d = -d; exit !(d <= 0.001) }' ||
  fail "qwen2_vl fixture: ppl $qp, transformers $rp"
want=$(tr -d ' \n' < "$Q/reference.json" | sed 's/.*"prompt_ids":\[\([^]]*\)\].*"greedy_ids":\[\([^]]*\)\].*/[\1,\2]/')
got=$("$BIN/ar-eval" --json $THR --model "$Q" --prompt "Once upon a time" -n 24 | sed -n 's/.*"ids": *\(\[[^]]*\]\).*/\1/p' | tr -d ' ')
[ "$got" = "$want" ] || fail "qwen2_vl fixture: greedy ids $got, transformers $want"
echo "ok   Qwen2-VL fixture: ppl $qp (transformers $rp), greedy ids equal"

# ---- 2. tuned streams: the same tensors --------------------------------------
"$BIN/ar-tune" --quiet --model "$M" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn $THR -o "$T/st.rtn.ars"
stories_calib 4 64 -o "$T/st.calib.ars"
"$BIN/ar-tune" --quiet -i "$T/st.calib.ars" --scheme W4A16 --group_size 32 --iters 4 --batch_size 2 $THR -o "$T/st.sr.ars"
tensors "$T/st.rtn.ars" > "$T/st.rtn.bin"; tensors "$T/st.sr.ars" > "$T/st.sr.bin"
for c in $CASES; do
  "$BIN/ar-tune" --quiet --model "$T/v/$c" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn $THR -o "$T/$c.rtn.ars"
  "$BIN/ar-calib" --model "$T/v/$c" --dataset "$TEXT" --nsamples 4 --seqlen 64 -o "$T/$c.calib.ars"
  "$BIN/ar-tune" --quiet -i "$T/$c.calib.ars" --scheme W4A16 --group_size 32 --iters 4 --batch_size 2 $THR -o "$T/$c.sr.ars"
  tensors "$T/$c.rtn.ars" | cmp -s - "$T/st.rtn.bin" || fail "$c: RTN tensors differ from stories260K's"
  tensors "$T/$c.sr.ars" | cmp -s - "$T/st.sr.bin" || fail "$c: SignRound tensors differ from stories260K's"
done
# control: another scheme gives other bytes, so the comparison can fail
"$BIN/ar-tune" --quiet --model "$M" --scheme W2A16 --group_size 32 --iters 0 --disable_opt_rtn $THR -o "$T/st.w2.ars"
tensors "$T/st.w2.ars" | cmp -s - "$T/st.rtn.bin" && fail "control: W2 tensors equal W4's"
echo "ok   RTN and SignRound tensors of every copy = stories260K's"

# ---- 3. exports ------------------------------------------------------------------
"$BIN/ar-pack" --quiet -i "$T/st.sr.ars" --format auto_round -o "$T/st-ar"
pq0=$(ppl "$T/st-ar")
for c in $CASES; do
  for f in auto_round auto_gptq llm_compressor fake; do
    o="$T/$c-$f"
    "$BIN/ar-pack" --quiet -i "$T/$c.sr.ars" --format $f -o "$o"
    python3 "$MK" compare "$T/v/$c" "$o" "$(blocks $c)." > /dev/null || fail "$c $f: a tensor outside the text blocks changed"
    for s in preprocessor_config.json chat_template.jinja tokenizer.json; do
      cmp -s "$T/v/$c/$s" "$o/$s" || fail "$c $f: $s not copied"
    done
    arch=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["architectures"][0])' "$o/config.json")
    want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["architectures"][0])' "$T/v/$c/config.json")
    [ "$arch" = "$want" ] || fail "$c $f: architectures $arch, source $want"
  done
  b=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["quantization_config"]["block_name_to_quantize"])' \
      "$T/$c-auto_round/config.json")
  # in transformers' in-memory names, which loaders match, whatever the file's layout
  [ "$b" = model.language_model.layers ] || fail "$c: block_name_to_quantize $b"
  p=$(ppl "$T/$c-auto_round")
  [ "$p" = "$pq0" ] || fail "$c auto_round: ppl $p, stories260K packed the same way $pq0"
done
# control: the comparison sees a changed vision byte
python3 - "$T/mistral3-fake/model.safetensors" <<'EOF'
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); o = 8 + n + h["model.vision_tower.patch_conv.weight"]["data_offsets"][0]
b[o] ^= 1; open(p, "wb").write(b)
EOF
python3 "$MK" compare "$T/v/mistral3" "$T/mistral3-fake" model.language_model.layers. > /dev/null 2>&1 &&
  fail "control: a flipped vision byte went unseen"
echo "ok   auto_round, auto_gptq, llm_compressor, fake: vision and projector byte-identical, configs and processor files kept; packed ppl $pq0"

"$BIN/ar-pack" --quiet -i "$T/st.rtn.ars" --format gguf:q4_0 -o "$T/st.gguf"
"$BIN/ar-pack" --quiet -i "$T/llava_legacy.rtn.ars" --format gguf:q4_0 -o "$T/llava.gguf"
pg0=$(ppl "$T/st.gguf"); pg=$(ppl "$T/llava.gguf")
[ -n "$pg0" ] && [ "$pg" = "$pg0" ] || fail "GGUF of the Llava copy: ppl $pg, stories260K's $pg0"
echo "ok   GGUF: the text stack only, ppl $pg = stories260K's"

# ---- Gemma 3: Gemma3ForConditionalGeneration around the checked-in Gemma 3 text model
# (tests/fixtures/gemma/gemma3, whose ar-eval perplexity gemma.test.sh holds to transformers'):
# the same perplexity and greedy ids, RTN and SignRound tensors equal the text model's, the
# auto_round export keeps the vision bytes and evaluates as the text model packed the same way.
G3=$(dirname "$0")/../fixtures/gemma/gemma3
python3 "$MK" gemma3 "$G3" "$M" "$T/g3/vlm" > /dev/null
mkdir -p "$T/g3/txt" && cp "$G3"/* "$T/g3/txt/" && cp "$M/tokenizer.json" "$M/tokenizer_config.json" "$T/g3/txt/"
[ -n "$(ppl "$T/g3/txt")" ] && [ "$(ppl "$T/g3/vlm")" = "$(ppl "$T/g3/txt")" ] || fail "gemma3 VLM: ppl differs from the text model's"
[ "$(ids "$T/g3/vlm")" = "$(ids "$T/g3/txt")" ] || fail "gemma3 VLM: greedy ids differ from the text model's"
for d in txt vlm; do
  "$BIN/ar-tune" --quiet --model "$T/g3/$d" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn $THR -o "$T/g3/$d.rtn.ars"
  "$BIN/ar-calib" --model "$T/g3/$d" --dataset "$TEXT" --nsamples 4 --seqlen 64 -o "$T/g3/$d.calib.ars"
  "$BIN/ar-tune" --quiet -i "$T/g3/$d.calib.ars" --scheme W4A16 --group_size 32 --iters 4 --batch_size 2 $THR -o "$T/g3/$d.sr.ars"
  "$BIN/ar-pack" --quiet -i "$T/g3/$d.sr.ars" --format auto_round -o "$T/g3/$d-ar"
done
for k in rtn sr; do
  tensors "$T/g3/vlm.$k.ars" > "$T/g3/a.bin"; tensors "$T/g3/txt.$k.ars" | cmp -s - "$T/g3/a.bin" || fail "gemma3 VLM: $k tensors differ"
done
python3 "$MK" compare "$T/g3/vlm" "$T/g3/vlm-ar" model.language_model.layers. > /dev/null || fail "gemma3 VLM auto_round: vision bytes changed"
[ "$(ppl "$T/g3/vlm-ar")" = "$(ppl "$T/g3/txt-ar")" ] || fail "gemma3 VLM auto_round: ppl differs from the text model packed the same way"
echo "ok   Gemma3ForConditionalGeneration: ppl, greedy ids, RTN/SignRound tensors and the auto_round export as its text model's"

# ---- 4. bad input ------------------------------------------------------------------
for tool in ar-eval ar-tune ar-calib; do
  case $tool in
    ar-eval) set -- --model "$T/v/no_text_config" --text "$TEXT" --windows 1;;
    ar-tune) set -- --model "$T/v/no_text_config" --iters 0 -o "$T/bad.ars";;
    ar-calib) set -- --model "$T/v/no_text_config" --dataset "$TEXT" --nsamples 1 --seqlen 16 -o "$T/bad.ars";;
  esac
  rc=0; "$BIN/$tool" "$@" > /dev/null 2> "$T/err" || rc=$?
  [ "$rc" = 1 ] || fail "$tool without text_config: exit $rc"
  [ "$(wc -l < "$T/err")" = 1 ] && grep -q "no_text_config/config.json: Mistral3ForConditionalGeneration config has no text_config" "$T/err" ||
    fail "$tool: $(cat "$T/err")"
  [ ! -e "$T/bad.ars" ] || fail "$tool wrote output for a bad config"
done
echo "ok   no text_config: one line, exit 1, nothing written"
