#!/bin/sh
# The tiny Phi-3 (fused qkv/gate_up, partial rotary, longrope with the long
# factors at 256 tokens) and GLM-4 (q/k/v biases, interleaved half rotary,
# post norms) models of tests/fixtures/dense (make_tiny_dense.py, trained
# with transformers; references in FAMILY.json from transformers' float32
# forward of the same files):
#   1. ar-eval's perplexity of the held-out text (the bytes after the
#      recorded split of TinyStories-validation-head.txt) within 0.1% of
#      transformers' (two f32 forwards; they agree to ~1e-6 here), and the
#      greedy continuation of the recorded prompt: the same ids;
#   2. RTN W4A16 through ar-tune and ar-pack: the auto_round folder keeps the
#      fused tensors (qkv_proj, gate_up_proj) quantized as one each, and
#      ar-eval reads it back to a perplexity within 5% of the BF16 model's;
#   3. GGUF (llama.cpp's phi3 / glm4), q8_0 and q4_k_m: read back by ar-eval
#      and, where the llama_cpp binding is installed, run by llama.cpp
#      (gguf_family.sh).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/gguf_family.sh"
D="$(dirname "$0")/../fixtures/dense"
for fam in phi3 glm4; do
  REF="$D/$fam.json"
  cut=$(sed -n 's/.*"split_byte": \([0-9]*\).*/\1/p' "$REF")
  [ -n "$cut" ] || fail "$REF: no split_byte"
  tail -c +"$((cut + 1))" "$STORIES_TEXT" > "$T/heldout.txt"
  "$BIN/ar-eval" --model "$D/$fam" --text "$T/heldout.txt" --seqlen 256 --json > "$T/ppl.json"
  python3 - "$REF" "$T/ppl.json" <<'PY' || fail "$fam: perplexity"
import json, sys
ref = json.load(open(sys.argv[1]))["perplexity"]
got = json.load(open(sys.argv[2]))
assert got["windows"] == ref["windows"] and got["scored"] == ref["scored"], (got, ref)
rel = abs(got["ppl"] - ref["ppl"]) / ref["ppl"]
print(f"ppl ar-eval {got['ppl']:.6f} transformers {ref['ppl']:.6f} rel {rel:.2e}")
assert rel <= 1e-3, rel
PY
  prompt=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['greedy']['prompt'])" "$REF")
  "$BIN/ar-eval" --model "$D/$fam" --prompt "$prompt" -n 32 --json > "$T/gen.json"
  python3 - "$REF" "$T/gen.json" <<'PY' || fail "$fam: greedy ids"
import json, sys
want = json.load(open(sys.argv[1]))["greedy"]["ids"]
got = json.load(open(sys.argv[2]))["ids"]
assert got == want, (got, want)
print(f"greedy: {len(got)} ids equal")
PY
  "$BIN/ar-tune" --model "$D/$fam" --scheme W4A16 --iters 0 --disable_opt_rtn -o "$T/rtn.ars"
  "$BIN/ar-pack" -i "$T/rtn.ars" --format auto_round -o "$T/rtn"
  "$BIN/ar-dump" "$T/rtn.ars" > "$T/dump.txt"
  grep -q "mlp.gate_up_proj" "$T/dump.txt" || fail "$fam: no fused gate_up_proj record"
  if [ "$fam" = phi3 ]; then grep -q "self_attn.qkv_proj" "$T/dump.txt" || fail "phi3: no fused qkv_proj record"; fi
  "$BIN/ar-eval" --model "$T/rtn" --text "$T/heldout.txt" --seqlen 256 --json > "$T/q.json"
  python3 - "$T/ppl.json" "$T/q.json" <<'PY' || fail "$fam: quantized perplexity"
import json, sys
base, q = (json.load(open(p))["ppl"] for p in sys.argv[1:3])
print(f"W4A16 RTN ppl {q:.4f} (BF16 {base:.4f})")
assert base < q < 1.05 * base, (base, q)
PY
  rm -rf "$T/rtn" "$T/rtn.ars"
  # llama.cpp gives any model whose general.name (the folder's name) contains
  # "phi3" Phi-3's special-token attributes, which need Phi-3's own vocabulary
  # (<|endoftext|>; src/llama-vocab.cpp): the tiny model's copy is named otherwise
  mkdir -p "$T/gg"
  cp -r "$D/$fam" "$T/gg/tiny-$(echo "$fam" | tr -d i)"
  gguf_family "$T/gg/tiny-$(echo "$fam" | tr -d i)" "$fam" "$T/heldout.txt"
done
echo "dense: ok"
