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

refused() { # refused DIR MESSAGE
    if "$BIN/ar-tune" --quiet --model "$1" --scheme gguf:q8_0 --iters 0 -o "$T/r.ars" 2> "$T/err" &&
       "$BIN/ar-pack" -i "$T/r.ars" --format gguf:q8_0 -o "$T/r.gguf" 2> "$T/err"; then fail "$1: GGUF accepted"; fi
    [ ! -e "$T/r.gguf" ] || fail "$1: a refused GGUF left $T/r.gguf"
    [ "$(wc -l < "$T/err")" = 1 ] && grep -q "$2" "$T/err" || fail "$1: message $(cat "$T/err")"
    echo "refused: $(cat "$T/err")"
}
refused "$F/qwen3_moe" "layer 1 is dense (mlp_only_layers / decoder_sparse_step) and llama.cpp's qwen3moe has experts on every layer"
refused "$F/deepseek_v3" "GGUF export of DeepseekV3ForCausalLM is not supported yet"
refused "$F/gpt_oss" "GGUF export of GptOssForCausalLM is not supported yet"
