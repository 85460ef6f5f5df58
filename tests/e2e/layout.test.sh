#!/bin/sh
# Output layout and names (man auto-round(1), OUTPUT LAYOUT; formats/output_names.h):
#  1. auto-round's default is AutoRound 0.16.1's layout: OUT/<model>-w4g128/,
#     a subfolder per format when there are several, GGUF files named as
#     llama.cpp's converter names them in OUT/<model>-gguf/; both outputs load
#     (ar-eval, and llama.cpp itself: llama-perplexity when built, else the
#     llama_cpp Python binding, else the gguf package's reader).
#  2. --layout plain gives ar's own paths, as before (OUT/<format>, GGUF
#     files named gguf-<type> without extension).
#  3. ar-pack: --layout autoround, a GGUF output into an existing folder or
#     DIR/, usage errors, no leftovers after a failure.
#  4. Where build/venv has AutoRound 0.16.1: the same runs by AutoRound itself
#     give the same folder and file names, and the same quantization_config
#     keys, values and key order for auto_round, auto_gptq, auto_awq and
#     (with compressed-tensors) llm_compressor (amp aside where AutoRound's device
#     has bf16); any difference fails.
. "$(dirname "$0")/lib.sh"
AR="$BIN/auto-round"
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }
# tree DIR: the files and folders under DIR, relative, sorted
tree() { (cd "$1" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//'); }
subdirs() { (cd "$1" && ls -d */* | tr '\n' ' ' | sed 's/ $//'); }
same() { [ "$2" = "$3" ] && ok "$1" || bad "$1: got [$2], want [$3]"; }
ppl_ok() { # NAME MODEL: ar-eval's perplexity on stories260K text is sane
  p=$("$BIN/ar-eval" --quiet --json --threads 1 --model "$2" --text "$STORIES_TEXT" --seqlen 128 --windows 4 |
      sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p')
  if awk -v p="$p" 'BEGIN { exit !(p > 1 && p < 20) }'; then ok "$1: ar-eval ppl $p"; else bad "$1: ar-eval ppl '$p'"; fi
}
PY=""
for p in "${AR_PYTHON:-}" "$(dirname "$0")/../../build/venv/bin/python" python3; do
  if [ -n "$p" ] && "$p" -c 'import gguf' 2>/dev/null; then PY=$p; break; fi
done
LLAMA_BIN=${LLAMA_BIN:-$(dirname "$0")/../../build/llama.cpp/bin}
HF_FILES="config.json generation_config.json model.safetensors quantization_config.json special_tokens_map.json tokenizer.json tokenizer_config.json"
hf_tree() { # PREFIX [FILE]: an HF folder under PREFIX and its files (less FILE)
  printf '%s' "$1"; for f in $HF_FILES; do [ "$f" = "${2:-}" ] || printf ' %s' "$1/$f"; done
}

# ---- 1. AutoRound's layout (the default) ----------------------------------------
"$AR" --model "$M" --iters 0 --disable_opt_rtn --format auto_round,gguf:q4_k_m --output_dir "$T/out" --quiet
same "auto_round,gguf:q4_k_m: AutoRound's names" "$(tree "$T/out")" \
  "stories260K-gguf stories260K-gguf/stories260K-260K-Q4_K_M.gguf $(hf_tree stories260K-w4g128)"
ppl_ok "auto_round folder" "$T/out/stories260K-w4g128"
set -- "$T"/out/*/*.gguf
[ $# = 1 ] && [ -f "$1" ] && ok "one out/*/*.gguf" || bad "out/*/*.gguf: $*"
GG=$1
ppl_ok "GGUF file" "$GG"
if [ -x "$LLAMA_BIN/llama-perplexity" ]; then
  head -c 20000 "$STORIES_TEXT" > "$T/text.txt"
  if "$LLAMA_BIN/llama-perplexity" -m "$GG" -f "$T/text.txt" -c 128 --chunks 4 -t 1 > "$T/lp.log" 2>&1 &&
     p=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$T/lp.log") && [ -n "$p" ]; then
    ok "llama-perplexity -m $(basename "$GG"): PPL $p"
  else bad "llama-perplexity on $GG: $(tail -3 "$T/lp.log")"; fi
elif [ -n "$PY" ] && "$PY" -c 'import llama_cpp' 2>/dev/null; then
  if r=$("$PY" - "$GG" "$STORIES_TEXT" <<'PYEOF'
import math, sys
import numpy as np
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=128, logits_all=True, verbose=False, n_threads=1)
toks = llm.tokenize(open(sys.argv[2], "rb").read()[:4000], add_bos=True)[:128]
llm.eval(toks)
lg = np.array(llm.scores[:len(toks)], dtype=np.float64)
lg -= lg.max(axis=1, keepdims=True)
lp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
ppl = math.exp(-np.mean([lp[i, toks[i + 1]] for i in range(len(toks) - 1)]))
print(f"{ppl:.3f}")
sys.exit(0 if 1 < ppl < 20 else 1)
PYEOF
  ); then ok "llama.cpp (llama_cpp binding) loads $(basename "$GG"): ppl $r over 127 tokens"
  else bad "llama.cpp (llama_cpp binding) on $GG: '$r'"; fi
elif [ -n "$PY" ]; then
  "$PY" -c 'import sys, gguf; r = gguf.GGUFReader(sys.argv[1]); print(len(r.tensors))' "$GG" > /dev/null &&
    ok "gguf package reads $(basename "$GG") (no llama.cpp here)" || bad "gguf package cannot read $GG"
else echo "skip llama.cpp load: neither llama-perplexity nor Python with llama_cpp or gguf"; fi

# several formats: a subfolder each, named after AutoRound's resolved backend
"$AR" --model "$M" --iters 0 --disable_opt_rtn --format auto_round,fake --output_dir "$T/multi" --quiet
same "auto_round,fake: subfolders" "$(tree "$T/multi")" \
  "stories260K-w4g128 $(hf_tree stories260K-w4g128/auto-round-auto-gptq) $(hf_tree stories260K-w4g128/fake quantization_config.json)"
ppl_ok "auto-round-auto-gptq subfolder" "$T/multi/stories260K-w4g128/auto-round-auto-gptq"
# a GGUF format with fake (a pair AutoRound accepts), model path with a trailing slash
"$AR" --model "$M/" --iters 0 --disable_opt_rtn --format gguf:q4_0,fake --output_dir "$T/gf" --quiet
same "gguf:q4_0,fake: one -gguf folder" "$(tree "$T/gf" | tr ' ' '\n' | grep -v '/fake/' | tr '\n' ' ' | sed 's/ $//')" \
  "stories260K-gguf stories260K-gguf/fake stories260K-gguf/gguf-q4-0 stories260K-gguf/gguf-q4-0/stories260K-260K-Q4_0.gguf"
# asymmetric 3-bit: auto_round keeps its own packing; W2A16G64 names the group
"$AR" --model "$M" --iters 0 --disable_opt_rtn --scheme W3A16 --asym --format auto_round,auto_gptq --output_dir "$T/a3" --quiet
same "W3A16 asym auto_round,auto_gptq" "$(subdirs "$T/a3")" "stories260K-w3g128/auto-gptq stories260K-w3g128/auto-round"
"$AR" --model "$M" --iters 0 --disable_opt_rtn --scheme W2A16G64 --output_dir "$T/w2" --quiet
same "W2A16G64" "$(cd "$T/w2" && ls)" "stories260K-w2g64"
"$AR" --model "$M" --iters 0 --disable_opt_rtn --scheme W4A16 --group_size -1 --output_dir "$T/pc" --quiet
same "per-channel W4A16" "$(cd "$T/pc" && ls)" "stories260K-w4a16"

# ---- 2. --layout plain: today's paths ---------------------------------------------
"$AR" --model "$M" --iters 0 --disable_opt_rtn --format auto_round,gguf:q4_k_m --output_dir "$T/plain" --quiet --layout plain
same "--layout plain, two formats" "$(tree "$T/plain")" \
  "$(hf_tree auto_round) gguf-q4_k_m"
[ -f "$T/plain/gguf-q4_k_m" ] && ok "--layout plain: gguf-q4_k_m is a file" || bad "--layout plain: gguf-q4_k_m"
cmp -s "$T/plain/gguf-q4_k_m" "$GG" && ok "both layouts: the same GGUF bytes" || bad "layouts wrote different GGUF files"
cmp -s "$T/plain/auto_round/model.safetensors" "$T/out/stories260K-w4g128/model.safetensors" &&
  ok "both layouts: the same weights" || bad "layouts wrote different weights"
"$AR" --model "$M" --iters 0 --disable_opt_rtn --output_dir "$T/plain1" --quiet --layout plain
[ -f "$T/plain1/config.json" ] && ok "--layout plain, one format: OUT itself" || bad "--layout plain one format: $(tree "$T/plain1")"

# ---- 3. ar-pack ---------------------------------------------------------------------
"$BIN/ar-tune" --quiet --model "$M" --scheme gguf:q4_0 -o "$T/q40.ars"
"$BIN/ar-tune" --quiet --model "$M" -o "$T/w4.ars"
"$BIN/ar-pack" --quiet -i "$T/w4.ars" --format auto_round,fake --layout autoround -o "$T/p1"
same "ar-pack --layout autoround" "$(subdirs "$T/p1")" "stories260K-w4g128/auto-round-auto-gptq stories260K-w4g128/fake"
"$BIN/ar-pack" --quiet -i "$T/w4.ars" --format auto_round --layout autoround --layout_formats auto_round,gguf:q8_0 -o "$T/p2"
same "ar-pack --layout_formats: GGUF beside auto_round is AutoRound's two runs" "$(cd "$T/p2" && ls)" "stories260K-w4g128"
mkdir "$T/existing"
"$BIN/ar-pack" --quiet -i "$T/q40.ars" --format gguf:q4_0 -o "$T/existing"
same "ar-pack -o EXISTING_DIR: llama.cpp's name inside" "$(tree "$T/existing")" "stories260K-260K-Q4_0.gguf"
"$BIN/ar-pack" --quiet -i "$T/q40.ars" --format gguf:q4_0 -o "$T/new/"
same "ar-pack -o NEW_DIR/: created, llama.cpp's name inside" "$(tree "$T/new")" "stories260K-260K-Q4_0.gguf"
"$BIN/ar-pack" --quiet -i "$T/q40.ars" --format gguf:q4_0 -o "$T/file.gguf"
[ -f "$T/file.gguf" ] && ok "ar-pack -o FILE.gguf: that file" || bad "ar-pack -o FILE.gguf"
cmp -s "$T/file.gguf" "$T/existing/stories260K-260K-Q4_0.gguf" && ok "same bytes whatever the name" || bad "named file differs"
expect() { # RC PATTERN WHAT CMD...
  rc=$1 pat=$2 what=$3; shift 3
  set +e; out=$("$@" 2>&1); got=$?; set -e
  if [ "$got" = "$rc" ] && printf '%s' "$out" | grep -q -- "$pat"; then ok "$what: $out"; else bad "$what: exit $got, $out"; fi
}
expect 2 "layout_formats needs --layout autoround" "--layout_formats alone" \
  "$BIN/ar-pack" -i "$T/w4.ars" --layout_formats auto_round -o "$T/x"
expect 2 "layout: 'tree' is not plain or autoround" "bad --layout" "$BIN/ar-pack" -i "$T/w4.ars" --layout tree -o "$T/x"
expect 1 "needs a stream tuned with --scheme gguf:q4_k_m" "k-quant from an int stream, into a folder" \
  "$BIN/ar-pack" -i "$T/w4.ars" --format gguf:q4_k_m -o "$T/fail/"
[ ! -e "$T/fail" ] && [ -z "$(ls -d "$T"/fail.tmp* 2>/dev/null)" ] && ok "nothing left after the failure" ||
  bad "left after a failure: $(ls -d "$T"/fail* 2>/dev/null)"
# interrupted (SIGTERM) while writing into a folder: neither the folder nor its temporary remains
"$BIN/ar-tune" --quiet --model "$SHARED/models/tiny-llama" --scheme gguf:q4_0 -o "$T/tl.ars"
for target in new-dir existing-dir; do
  rm -rf "$T/int"; mkdir "$T/int"; [ $target = existing-dir ] && mkdir "$T/int/g"
  "$BIN/ar-pack" --quiet -i "$T/tl.ars" --format gguf:q4_0 -o "$T/int/g/" & pid=$!
  sleep 0.5; kill -TERM $pid 2>/dev/null || true
  set +e; wait $pid; rc=$?; set -e
  left=$(tree "$T/int")
  want=""; [ $target = existing-dir ] && want="g"
  if [ $rc = 0 ]; then echo "skip interrupt into $target: ar-pack finished within 0.5 s"
  elif [ "$left" = "$want" ]; then ok "interrupted into $target (exit $rc): nothing left"
  else bad "interrupted into $target (exit $rc): left [$left]"; fi
done
: > "$T/notadir"
expect 1 "exists and is not a folder" "GGUF into a file path ending in /" \
  "$BIN/ar-pack" -i "$T/q40.ars" --format gguf:q4_0 -o "$T/notadir/"

# ---- 4. AutoRound 0.16.1 itself, where installed --------------------------------------
VPY="$(cd "$(dirname "$0")/../.." && pwd)/build/venv/bin/python"
if [ -x "$VPY" ] && "$VPY" -c 'import auto_round' 2>/dev/null; then
  aur() { # OUT ARGS: AutoRound's own CLI, plain RTN on the CPU
    o=$1; shift
    (cd "$T" && CUDA_VISIBLE_DEVICES= "$VPY" -m auto_round --model "$M" --iters 0 --disable_opt_rtn --device_map cpu \
      --output_dir "$o" "$@" > "$o.log" 2>&1)
  }
  qc_diff() { # AUTOROUND_JSON AR_JSON: the keys only one has and those that differ (amp aside where AutoRound omits it)
    "$VPY" - "$1" "$2" <<'PYEOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
if "amp" not in a:  # AutoRound omits amp where its device has bf16 (amp on); ar writes false (fp32 tuning)
    b.pop("amp", None)
if "modules_to_not_convert" in a:  # AutoRound's AWQ export lists them from a set: no fixed order
    a["modules_to_not_convert"] = b.get("modules_to_not_convert") if sorted(a["modules_to_not_convert"]) == sorted(b.get("modules_to_not_convert", [])) else a["modules_to_not_convert"]
out = ["only-autoround:" + k for k in sorted(set(a) - set(b))] + ["only-ar:" + k for k in sorted(set(b) - set(a))]
out += ["differs:" + k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
if not out and json.dumps(a) != json.dumps(b):  # equal, but in another order (nested keys included)
    out = ["key-order"]
print(" ".join(out))
PYEOF
  }
  if aur "$T/ar-multi" --scheme W4A16 --format auto_round,fake; then
    A="$T/ar-multi/stories260K-w4g128"
    same "AutoRound's own auto_round,fake: same folders" "$(subdirs "$T/ar-multi")" "$(subdirs "$T/multi")"
    # Files beside the weights: AutoRound writes special_tokens_map.json or not as its transformers
    # does (5.x: not); we copy the source's.
    for f in auto-round-auto-gptq fake; do
      same "AutoRound's own $f: same files" "$(cd "$A/$f" && ls | grep -v special_tokens_map.json | tr '\n' ' ')" \
        "$(cd "$T/multi/stories260K-w4g128/$f" && ls | grep -v special_tokens_map.json | tr '\n' ' ')"
    done
    same "auto_round quantization_config: the same keys and values as AutoRound's" \
      "$(qc_diff "$A/auto-round-auto-gptq/quantization_config.json" "$T/multi/stories260K-w4g128/auto-round-auto-gptq/quantization_config.json")" ""
  else bad "AutoRound run failed: $(tail -2 "$T/ar-multi.log")"; fi
  # auto_gptq: the same config; ar also writes quantize_config.json (AutoGPTQ's and GPTQModel's name)
  "$AR" --model "$M" --iters 0 --disable_opt_rtn --format auto_gptq --output_dir "$T/gq" --quiet
  if aur "$T/ar-gq" --scheme W4A16 --format auto_gptq; then
    A="$T/ar-gq/stories260K-w4g128"; B="$T/gq/stories260K-w4g128"
    same "AutoRound's own auto_gptq: same files (ar adds quantize_config.json)" \
      "$(cd "$A" && ls | grep -v special_tokens_map.json | tr '\n' ' ')" \
      "$(cd "$B" && ls | grep -v 'special_tokens_map.json\|quantize_config.json' | tr '\n' ' ')"
    same "auto_gptq quantization_config: the same keys and values as AutoRound's" \
      "$(qc_diff "$A/quantization_config.json" "$B/quantization_config.json")" ""
    cmp -s "$B/quantization_config.json" "$B/quantize_config.json" && ok "auto_gptq: quantize_config.json = quantization_config.json" ||
      bad "auto_gptq: quantize_config.json differs from quantization_config.json"
  else bad "AutoRound auto_gptq run failed: $(tail -2 "$T/ar-gq.log")"; fi
  # auto_awq (4-bit asym; G32 so that AWQ packs the 64-wide layers)
  "$AR" --model "$M" --iters 0 --disable_opt_rtn --scheme W4A16 --asym --group_size 32 --format auto_awq --output_dir "$T/aw" --quiet
  if aur "$T/ar-aw" --scheme W4A16 --asym --group_size 32 --format auto_awq; then
    same "auto_awq quantization_config: the same keys and values as AutoRound's" \
      "$(qc_diff "$T/ar-aw/stories260K-w4g32/quantization_config.json" "$T/aw/stories260K-w4g32/quantization_config.json")" ""
  else bad "AutoRound auto_awq run failed: $(tail -2 "$T/ar-aw.log")"; fi
  # llm_compressor: AutoRound needs compressed-tensors (and a group that divides 64: G32)
  if "$VPY" -c 'import compressed_tensors' 2>/dev/null; then
    "$AR" --model "$M" --iters 0 --disable_opt_rtn --group_size 32 --format llm_compressor --output_dir "$T/lc" --quiet
    if aur "$T/ar-lc" --scheme W4A16 --group_size 32 --format llm_compressor; then
      same "llm_compressor quantization_config: the same keys and values as AutoRound's" \
        "$(qc_diff "$T/ar-lc/stories260K-w4g32/quantization_config.json" "$T/lc/stories260K-w4g32/quantization_config.json")" ""
    else bad "AutoRound llm_compressor run failed: $(tail -2 "$T/ar-lc.log")"; fi
  else echo "skip AutoRound's own llm_compressor run: no compressed_tensors in build/venv"; fi
  if "$VPY" -c 'import sentencepiece' 2>/dev/null; then   # AutoRound's GGUF export of a SentencePiece vocabulary needs it
    if aur "$T/ar-gguf" --format gguf:q4_0; then
      same "AutoRound's own gguf:q4_0: same names" "$(tree "$T/ar-gguf")" "stories260K-gguf stories260K-gguf/stories260K-260K-Q4_0.gguf"
    else bad "AutoRound gguf run failed: $(tail -2 "$T/ar-gguf.log")"; fi
  else echo "skip AutoRound's own GGUF run: no sentencepiece in build/venv"; fi
else echo "skip AutoRound comparison: no auto_round in build/venv"; fi
exit $fail
