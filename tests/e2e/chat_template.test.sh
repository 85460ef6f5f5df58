#!/bin/sh
# Chat templates: the rows of a chat-format calibration file rendered by
# ar-calib (--dump-text, :apply_chat_template) byte for byte against
# transformers' apply_chat_template, for the real templates of
# tests/fixtures/chat_templates (ChatML/Qwen2.5, Llama 3.3, Gemma, Mixtral,
# Phi-3, DeepSeek-R1-distill), with AutoRound's conversation rules (default
# system prompt, retry without system messages). Skipped with a message when
# no Python with transformers is found (AR_PYTHON, build/venv, python3).
. "$(dirname "$0")/lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures/chat_templates" && pwd)
REF=$(cd "$(dirname "$0")" && pwd)/chat_template_ref.py
PY=""
for p in "${AR_PYTHON:-}" "$(dirname "$0")/../../build/venv/bin/python" python3; do
  if [ -n "$p" ] && "$p" -c 'import transformers, jinja2' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then echo "skip chat_template: no Python with transformers and jinja2"; exit 0; fi

# model_dir DIR TEMPLATE: tiny-llama's tokenizer with TEMPLATE as its chat
# template and BOS/EOS names of its own, so bos_token/eos_token show.
model_dir() {
  mkdir -p "$1"
  cp "$SHARED/models/tiny-llama/tokenizer.json" "$1/"
  "$PY" - "$SHARED/models/tiny-llama/tokenizer_config.json" "$2" "$1/tokenizer_config.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
d["chat_template"] = open(sys.argv[2], encoding="utf-8").read()
json.dump(d, open(sys.argv[3], "w"), ensure_ascii=False)
PYEOF
}

# same A B: the texts of two JSONL files equal, row by row
same() {
  "$PY" - "$1" "$2" <<'PYEOF'
import json, sys
a, b = ([json.loads(l)["text"] for l in open(p, encoding="utf-8")] for p in sys.argv[1:3])
bad = [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]
for i in bad[:1]:
    print("  row %d:\n   ours %r\n   ref  %r" % (i, a[i] if i < len(a) else None, b[i] if i < len(b) else None))
sys.exit(1 if bad or not a else 0)
PYEOF
}

fail=0
ROWS=$FIX/conversations.jsonl
for tpl in "$FIX"/*.jinja; do
  name=$(basename "$tpl" .jinja)
  D=$T/$name
  model_dir "$D" "$tpl"
  for sp in default empty; do
    if [ $sp = default ]; then spec=$ROWS:apply_chat_template; set --; else spec=$ROWS:system_prompt=; set -- ""; fi
    "$PY" "$REF" "$D" "$ROWS" "$@" > "$D/ref.$sp.jsonl" || { echo "FAIL $name ($sp system prompt): reference failed"; fail=1; continue; }
    "$BIN/ar-calib" --model "$D" --dataset "$spec" --dump-text -o "$D/ours.$sp.jsonl" 2>"$D/err" ||
      { echo "FAIL $name ($sp system prompt): ar-calib: $(cat "$D/err")"; fail=1; continue; }
    if same "$D/ours.$sp.jsonl" "$D/ref.$sp.jsonl"; then
      echo "ok   $name ($sp system prompt): $(wc -l < "$D/ref.$sp.jsonl") rows byte-identical to transformers"
    else
      echo "FAIL $name ($sp system prompt): differs from transformers"; fail=1
    fi
  done
done
exit $fail
