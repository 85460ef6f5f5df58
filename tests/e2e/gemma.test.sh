#!/bin/sh
# Gemma 2 and Gemma 3 text models (tests/fixtures/gemma: tiny models trained
# by make_tiny_gemma.py, with transformers' references): ar-eval's perplexity
# of the held-out TinyStories text within 0.1% of transformers' (float32 on
# the CPU), the greedy continuation's ids equal; RTN and a short SignRound at
# W4A16 export to auto_round folders that ar-eval reads back; bad Gemma
# configs are one-line errors; GGUF export (q8_0, q4_k_m) read back by ar-eval
# and, where the llama_cpp binding is installed, run by llama.cpp.
. "$(dirname "$0")/lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures/gemma" && pwd)
py_field() { # py_field JSON EXPR: a field of a reference, printed (python3 is in every CI image; no torch)
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"
}
for fam in gemma2 gemma3; do
    ref=$FIX/$fam.json
    mkdir -p "$T/$fam"
    cp "$FIX/$fam/config.json" "$FIX/$fam/model.safetensors" "$T/$fam/"
    for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do cp "$M/$f" "$T/$fam/"; done
    split=$(py_field "$ref" "r['heldout']['split_byte']")
    tail -c +$((split + 1)) "$STORIES_TEXT" > "$T/heldout.txt"
    want_sha=$(py_field "$ref" "r['heldout']['sha256']")
    [ "$(sha256sum "$T/heldout.txt" | cut -d' ' -f1)" = "$want_sha" ] || fail "$fam: held-out text differs from the reference's"
    want=$(py_field "$ref" "r['perplexity']['ppl']")
    got=$("$BIN/ar-eval" --model "$T/$fam" --text "$T/heldout.txt" --seqlen 256 --json |
          python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])")
    python3 -c "import sys; g,w=float(sys.argv[1]),float(sys.argv[2]); sys.exit(abs(g-w) > 1e-3*w)" "$got" "$want" ||
        fail "$fam: ar-eval ppl $got, transformers $want (more than 0.1% apart)"
    echo "$fam: ppl $got (transformers $want)"
    prompt=$(py_field "$ref" "r['greedy']['prompt']")
    want_ids=$(py_field "$ref" "r['greedy']['ids']")
    got_ids=$("$BIN/ar-eval" --model "$T/$fam" --prompt "$prompt" -n 32 --json |
              python3 -c "import json,sys; print(json.load(sys.stdin)['ids'])")
    [ "$got_ids" = "$want_ids" ] || fail "$fam: greedy ids $got_ids, transformers $want_ids"
    # quantized: RTN and SignRound W4A16 as auto_round folders, read back
    "$BIN/ar-tune" --model "$T/$fam" --scheme W4A16 --iters 0 --disable_opt_rtn -o "$T/$fam-rtn.ars"
    "$BIN/ar-pack" -i "$T/$fam-rtn.ars" --format auto_round -o "$T/$fam-rtn"
    head -c "$split" "$STORIES_TEXT" > "$T/train.txt"   # calibration from the training part only
    "$BIN/ar-calib" --model "$T/$fam" --dataset "$T/train.txt" --nsamples 8 --seqlen 128 -o "$T/$fam.calib"
    "$BIN/ar-tune" -i "$T/$fam.calib" --model "$T/$fam" --scheme W4A16 --iters 20 -o "$T/$fam-sr.ars"
    "$BIN/ar-pack" -i "$T/$fam-sr.ars" --format auto_round -o "$T/$fam-sr"
    for q in rtn sr; do
        p=$("$BIN/ar-eval" --model "$T/$fam-$q" --text "$T/heldout.txt" --seqlen 256 --windows 20 --json |
            python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])")
        b=$("$BIN/ar-eval" --model "$T/$fam" --text "$T/heldout.txt" --seqlen 256 --windows 20 --json |
            python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])")
        # 4-bit weights cost a little: within 25% of BF16, and not equal to it (the weights did change)
        python3 -c "import sys; p,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(not (b < p < 1.25*b))" "$p" "$b" ||
            fail "$fam $q W4A16: ppl $p against BF16 $b"
        echo "$fam $q W4A16: ppl $p (BF16 $b, 20 windows)"
    done
done
# bad configs: one line naming the file and the problem, exit 1
mkdir -p "$T/bad"
cp "$FIX/gemma2/model.safetensors" "$T/gemma2/tokenizer.json" "$T/gemma2/tokenizer_config.json" "$T/bad/"
sed 's/"attn_logit_softcapping": 8.0/"attn_logit_softcapping": -1/' "$FIX/gemma2/config.json" > "$T/bad/config.json"
if "$BIN/ar-eval" --model "$T/bad" --text "$T/heldout.txt" 2> "$T/err"; then fail "negative soft-cap accepted"; fi
[ "$(wc -l < "$T/err")" = 1 ] && grep -q "bad/config.json: attn_logit_softcapping must be a positive number" "$T/err" ||
    fail "soft-cap error: $(cat "$T/err")"
# GGUF (llama.cpp's gemma2 / gemma3): read back by ar-eval, run by llama.cpp (gguf_family.sh)
. "$(dirname "$0")/gguf_family.sh"
for fam in gemma2 gemma3; do gguf_family "$T/$fam" "$fam" "$T/heldout.txt"; done
# a W4A16 stream's groups of 128 are no GGUF block: refused, no file left behind
if "$BIN/ar-pack" -i "$T/gemma2-rtn.ars" --format gguf:q4_0 -o "$T/g.gguf" 2> "$T/err"; then fail "W4A16 stream packed as gguf:q4_0"; fi
grep -q "tune with --scheme gguf:q4_0" "$T/err" || fail "GGUF refusal: $(cat "$T/err")"
[ ! -e "$T/g.gguf" ] || fail "a partial GGUF file was left"
# llama.cpp always soft-caps Gemma 2's attention: a Gemma 2 without the cap has no GGUF form
mkdir -p "$T/nocap"
cp "$T/gemma2/model.safetensors" "$T/gemma2/tokenizer.json" "$T/gemma2/tokenizer_config.json" "$T/nocap/"
sed 's/"attn_logit_softcapping": 8.0/"attn_logit_softcapping": null/' "$FIX/gemma2/config.json" > "$T/nocap/config.json"
"$BIN/ar-tune" --model "$T/nocap" --scheme W4A16 --bits 16 --iters 0 -o "$T/nocap.ars"
if "$BIN/ar-pack" -i "$T/nocap.ars" --format gguf:f32 -o "$T/nocap.gguf" 2> "$T/err"; then fail "Gemma 2 without soft-cap packed as GGUF"; fi
[ "$(wc -l < "$T/err")" = 1 ] && grep -q "nocap: GGUF gemma2 needs attn_logit_softcapping" "$T/err" || fail "no-cap error: $(cat "$T/err")"
[ ! -e "$T/nocap.gguf" ] || fail "a partial GGUF file was left"
echo "gemma e2e ok"
