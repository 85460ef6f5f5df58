# Sourced by the family e2e tests (gemma, dense) after lib.sh: gguf_family
# MODEL_DIR NAME TEXT packs MODEL_DIR as llama.cpp GGUF (ar-tune --scheme
# gguf:MIX --iters 0 | ar-pack --format gguf:MIX, MIX = q8_0 and q4_k_m; and
# f32 from a stream with no quantized layer, --bits 16) and checks each file
# two ways, on 20 windows of 256 tokens of TEXT:
#  1. always: ar-eval reads the GGUF back (ar's own reader: names, metadata,
#     the norm and attention-scale conventions undone) and its perplexity is
#     the source's within the mix's weight error. F32 holds the BF16 weights
#     exactly but for the converter's changes (Gemma's norms as 1 + w, read
#     back as (1 + w) - 1; the query weights times the attention-scale factor):
#     one f32 rounding each (2^-24), which moves the perplexity by ~1e-6: 1e-4,
#     so that a convention written wrong shows (Gemma 2 without the
#     query_pre_attn_scalar fold measures 0.4% off, which the quantized mixes'
#     tolerances below would not see). Q8_0 rounds each weight to
#     1/254 of its block's largest magnitude (rms about 0.2% of a weight);
#     such noise moves log-perplexity at second order, well under 1% (the
#     tiny models measure 0.01-0.1%): 1%. Q4_K_M on these 128-wide rows falls
#     back to Q5_0/Q5_1/Q8_0 blocks (gguf_policy.c), 16x coarser steps: 5%.
#  2. when a Python with the llama_cpp binding is there (build/venv; CI's make
#     test has none: skipped with a line saying so): llama.cpp loads the file
#     and its perplexity (tests/clients/llama_ppl.py, ar-eval's protocol)
#     equals ar-eval's on the same file within 0.5%: both dequantize the same
#     blocks, llama.cpp rounds the activations of each product to Q8_0 (a
#     relative 1/254 of each block of 32) and ar-eval does not
#     (tests/clients/check_gguf.py's bound). F32 files: no activation
#     rounding, only llama.cpp's f16 KV cache (2^-11 relative on K and V): 0.1%,
#     tight enough to see a convention llama.cpp reads differently from ar.
# GF_WINDOWS (default 20) sets the number of windows: mixtures of experts
# (gguf_moe.test.sh) take 60, see there.
gguf_ppl() { # gguf_ppl MODEL TEXT: ar-eval's perplexity, GF_WINDOWS (20) windows of 256
    "$BIN/ar-eval" --model "$1" --text "$2" --seqlen 256 --windows "${GF_WINDOWS:-20}" --json |
        python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])"
}
gguf_within() { # gguf_within A B REL: |A/B - 1| <= REL
    python3 -c "import sys; a,b,r=map(float,sys.argv[1:]); sys.exit(abs(a/b-1) > r)" "$1" "$2" "$3"
}
gguf_family() {
    _gf_dir=$1 _gf_name=$2 _gf_text=$3
    _gf_py=""
    for _gf_p in "${AR_PYTHON:-}" "$(dirname "$0")/../../build/venv/bin/python"; do
        if [ -n "$_gf_p" ] && "$_gf_p" -c 'import llama_cpp, numpy' 2>/dev/null; then _gf_py=$_gf_p; break; fi
    done
    _gf_src=$(gguf_ppl "$_gf_dir" "$_gf_text")
    for _gf_mix in f32:0.0001 q8_0:0.01 q4_k_m:0.05; do
        _gf_m=${_gf_mix%%:*} _gf_tol=${_gf_mix#*:}
        if [ "$_gf_m" = f32 ]; then set -- --scheme W4A16 --bits 16; else set -- --scheme "gguf:$_gf_m"; fi
        "$BIN/ar-tune" --model "$_gf_dir" "$@" --iters 0 -o "$T/$_gf_name-$_gf_m.ars"
        "$BIN/ar-pack" -i "$T/$_gf_name-$_gf_m.ars" --format "gguf:$_gf_m" -o "$T/$_gf_name-$_gf_m.gguf"
        _gf_ours=$(gguf_ppl "$T/$_gf_name-$_gf_m.gguf" "$_gf_text")
        gguf_within "$_gf_ours" "$_gf_src" "$_gf_tol" ||
            fail "$_gf_name gguf:$_gf_m: ar-eval ppl $_gf_ours on the GGUF, $_gf_src on the source (over $_gf_tol apart)"
        echo "$_gf_name gguf:$_gf_m: ar-eval ppl $_gf_ours on the GGUF, $_gf_src on the source"
        if [ -z "$_gf_py" ]; then echo "skip llama.cpp on $_gf_name gguf:$_gf_m: no Python with llama_cpp"; continue; fi
        _gf_llama=$("$_gf_py" "$(dirname "$0")/../clients/llama_ppl.py" "$T/$_gf_name-$_gf_m.gguf" "$_gf_text" 256 "${GF_WINDOWS:-20}" 2> "$T/llama.err") ||
            fail "$_gf_name gguf:$_gf_m: llama.cpp cannot run the file: $(tail -3 "$T/llama.err")"
        _gf_ltol=0.005
        [ "$_gf_m" != f32 ] || _gf_ltol=0.001
        gguf_within "$_gf_llama" "$_gf_ours" "$_gf_ltol" ||
            fail "$_gf_name gguf:$_gf_m: llama.cpp ppl $_gf_llama, ar-eval $_gf_ours on the same file (over $_gf_ltol apart)"
        echo "$_gf_name gguf:$_gf_m: llama.cpp ppl $_gf_llama, ar-eval $_gf_ours on the same file"
    done
}
