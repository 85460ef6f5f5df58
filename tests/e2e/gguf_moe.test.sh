#!/bin/sh
# GGUF export of mixtures of experts (formats/gguf_moe.h) on the checked-in
# tiny models: Qwen2-MoE (qwen2moe, shared expert), Mixtral under the older
# block_sparse_moe names (llama with experts) and a Qwen3-MoE (qwen3moe) with
# experts on every layer (tests/e2e/qwen3_moe_all.py: the checked-in one's
# dense layer 1 has no qwen3moe form and is refused, checked below). Each is
# packed as F32, Q8_0 and Q4_K_M and checked as gguf_family.sh says (ar-eval
# on the GGUF vs the source: 1e-4 / 1% / 5%; llama.cpp vs ar-eval on the same
# file when the binding is there: 0.1% / 0.5%), over 60 windows instead of
# 20: a router picks discrete experts, and a token whose top-k scores nearly
# tie can switch experts under llama.cpp's Q8_0 activation rounding or f16 KV
# cache, which on these random ppl-1900 models moves a 20-window perplexity
# by up to 0.5% (a SignRound-tuned Mixtral Q4_K_M: 0.54% on 20 windows,
# 0.08% on 60). Then a SignRound-tuned GGUF stream of Mixtral (4 iterations)
# packs, reads back near the source and differs from the untuned file, and
# the refusals: one line, no file.
#
# DeepSeek-V2/V3 (deepseek2) and gpt-oss (formats/gguf_ds_oss.h) the same
# way, on copies of the checked-in fixtures changed where llama.cpp cannot
# compute the model as transformers does (refused below on the originals):
# V2 (q_proj without q_lora, tied embeddings, a leading dense layer) with
# topk_group = n_group (its group_limited_greedy drops groups by their best
# expert, llama.cpp's by their two best); V3 (q_lora, sigmoid router with
# e_score_correction_bias, noaux_tc groups, yarn) with mscale = mscale_all_dim
# (llama.cpp's deepseek2 computes no other); gpt-oss (sinks, biases, fused
# BF16 experts, sliding window, yarn) and its MXFP4 twin with yarn truncate
# true (llama.cpp always truncates the correction range; the real gpt-oss
# says false: that deviation, on the unchanged fixture, is printed below, not
# bounded). Then a SignRound-tuned V3 and gpt-oss stream (kv_b's v rows and
# the experts as tuned, attn_k_b from the checkpoint) packs and reads back.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/gguf_family.sh"
cd "$(dirname "$0")/../.."
F=tests/fixtures/moe/tiny
GF_WINDOWS=60
python3 tests/e2e/qwen3_moe_all.py "$F/qwen3_moe" "$T/qwen3_moe_all"
gguf_family "$T/qwen3_moe_all" qwen3moe "$STORIES_TEXT"
gguf_family "$F/qwen2_moe" qwen2moe "$STORIES_TEXT"
gguf_family "$F/mixtral_legacy" mixtral "$STORIES_TEXT"

# SignRound over the frozen GGUF scales of every expert (ar-tune --scheme gguf:q4_k_m)
"$BIN/ar-calib" --quiet --model "$F/mixtral_legacy" --dataset "$STORIES_TEXT" --nsamples 8 --seqlen 64 -o "$T/c.ars"
"$BIN/ar-tune" --quiet --model "$F/mixtral_legacy" -i "$T/c.ars" --scheme gguf:q4_k_m --iters 4 --batch_size 4 -o "$T/t.ars"
"$BIN/ar-pack" -i "$T/t.ars" --format gguf:q4_k_m -o "$T/t.gguf"
cmp -s "$T/t.gguf" "$T/mixtral-q4_k_m.gguf" && fail "tuned Mixtral q4_k_m equals the untuned file"
src=$(gguf_ppl "$F/mixtral_legacy" "$STORIES_TEXT")
tuned=$(gguf_ppl "$T/t.gguf" "$STORIES_TEXT")
gguf_within "$tuned" "$src" 0.05 || fail "tuned Mixtral q4_k_m: ppl $tuned, source $src"
echo "tuned Mixtral gguf:q4_k_m: ar-eval ppl $tuned, source $src"

variant() { # variant SRC DST SED: a copy of fixture SRC with its config.json edited by SED
    mkdir -p "$2"
    for f in "$1"/*; do [ "${f##*/}" = config.json ] || ln -s "$(cd "$(dirname "$f")" && pwd)/${f##*/}" "$2/"; done
    sed "$3" "$1/config.json" > "$2/config.json"
    cmp -s "$1/config.json" "$2/config.json" && fail "variant $2: $3 changed nothing"
    return 0
}
variant "$F/deepseek_v2" "$T/ds2" 's/"topk_group": 1/"topk_group": 2/'
variant "$F/deepseek_v3" "$T/ds3" 's/"mscale": 0.707/"mscale": 1.0/'
variant "$F/gpt_oss" "$T/oss" 's/"truncate": false/"truncate": true/'
variant "$F/gpt_oss_mxfp4" "$T/oss4" 's/"truncate": false/"truncate": true/'
gguf_family "$T/ds2" deepseek_v2 "$STORIES_TEXT"
gguf_family "$T/ds3" deepseek_v3 "$STORIES_TEXT"
gguf_family "$T/oss" gpt_oss "$STORIES_TEXT"
gguf_family "$T/oss4" gpt_oss_mxfp4 "$STORIES_TEXT"
echo "gpt-oss yarn truncate false (the fixture as is): ar-eval ppl $(gguf_ppl "$F/gpt_oss" "$STORIES_TEXT"), its F32 GGUF (llama.cpp's truncating yarn) $(gguf_ppl "$T/gpt_oss-f32.gguf" "$STORIES_TEXT")"
for m in ds3 oss; do
    "$BIN/ar-calib" --quiet --model "$T/$m" --dataset "$STORIES_TEXT" --nsamples 8 --seqlen 64 -o "$T/c-$m.ars"
    "$BIN/ar-tune" --quiet --model "$T/$m" -i "$T/c-$m.ars" --scheme gguf:q4_k_m --iters 4 --batch_size 4 -o "$T/t-$m.ars"
    "$BIN/ar-pack" -i "$T/t-$m.ars" --format gguf:q4_k_m -o "$T/t-$m.gguf"
    src=$(gguf_ppl "$T/$m" "$STORIES_TEXT")
    tuned=$(gguf_ppl "$T/t-$m.gguf" "$STORIES_TEXT")
    gguf_within "$tuned" "$src" 0.05 || fail "tuned $m q4_k_m: ppl $tuned, source $src"
    echo "tuned $m gguf:q4_k_m: ar-eval ppl $tuned, source $src"
done
cmp -s "$T/t-ds3.gguf" "$T/deepseek_v3-q4_k_m.gguf" && fail "tuned DeepSeek-V3 q4_k_m equals the untuned file"
cmp -s "$T/t-oss.gguf" "$T/gpt_oss-q4_k_m.gguf" && fail "tuned gpt-oss q4_k_m equals the untuned file"

refused() { # refused DIR MESSAGE
    if "$BIN/ar-tune" --quiet --model "$1" --scheme gguf:q8_0 --iters 0 -o "$T/r.ars" 2> "$T/err" &&
       "$BIN/ar-pack" -i "$T/r.ars" --format gguf:q8_0 -o "$T/r.gguf" 2> "$T/err"; then fail "$1: GGUF accepted"; fi
    [ ! -e "$T/r.gguf" ] || fail "$1: a refused GGUF left $T/r.gguf"
    [ "$(wc -l < "$T/err")" = 1 ] && grep -q "$2" "$T/err" || fail "$1: message $(cat "$T/err")"
    echo "refused: $(cat "$T/err")"
}
refused "$F/qwen3_moe" "layer 1 is dense (mlp_only_layers / decoder_sparse_step) and llama.cpp's qwen3moe has experts on every layer"
refused "$F/deepseek_v3" "yarn mscale 0.707, mscale_all_dim 1: llama.cpp's deepseek2 computes mscale == mscale_all_dim"
refused "$F/deepseek_v2" "group_limited_greedy keeps the 1 of 2 groups with the best expert; llama.cpp ranks groups by their two best"
variant "$F/gpt_oss" "$T/oss_clamp" 's/"swiglu_limit": 7.0/"swiglu_limit": 6.0/'
refused "$T/oss_clamp" "swiglu_alpha 1.702 / swiglu_limit 6: llama.cpp's gpt-oss computes 1.702 / 7 only"
variant "$F/deepseek_v3" "$T/ds3_rot" 's/"rope_interleave": true/"rope_interleave": false/'
refused "$T/ds3_rot" "rope_interleave false: llama.cpp's deepseek2 rotates interleaved pairs"
