#!/bin/sh
# Chat templates: the rows of a chat-format calibration file rendered by
# ar-calib (--dump-text, :apply_chat_template) byte for byte against
# transformers' apply_chat_template, for the real templates of
# tests/fixtures/chat_templates (ChatML/Qwen2.5, Llama 3.2/3.3, Gemma 1/2/3,
# Mixtral, Mistral Nemo, Phi-3, DeepSeek), with AutoRound's conversation rules (default
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
# Content as a list of parts ({"type": "text"|"image", ...}), which Gemma 3's
# template walks (is string / is iterable); the other templates print such
# content as a Python list, so only Gemma 3 gets these rows.
G3=$T/google-gemma-3-it
PARTS=$FIX/conversations_parts.jsonl
"$PY" "$REF" "$G3" "$PARTS" > "$G3/ref.parts.jsonl" &&
  "$BIN/ar-calib" --model "$G3" --dataset "$PARTS:apply_chat_template" --dump-text -o "$G3/ours.parts.jsonl" 2>"$G3/err" &&
  grep -q '<start_of_image>' "$G3/ours.parts.jsonl" && same "$G3/ours.parts.jsonl" "$G3/ref.parts.jsonl" &&
  echo "ok   google-gemma-3-it, list content: $(wc -l < "$G3/ref.parts.jsonl") rows byte-identical to transformers" ||
  { echo "FAIL google-gemma-3-it, list content: $(cat "$G3/err")"; fail=1; }

# Llama 3.2 prints the date (strftime_now("%d %b %Y")): above, both sides
# read today's clock; here --chat_date pins ours and transformers gets the
# same date as date_string, a day that is not today, and the stream's META
# records the instant used.
L32=$T/meta-llama-Llama-3.2-3B-Instruct
if CT_DATE_STRING="05 Sep 2024" "$PY" "$REF" "$L32" "$ROWS" > "$L32/ref.pinned.jsonl" &&
   "$BIN/ar-calib" --model "$L32" --dataset "$ROWS:apply_chat_template" --chat_date 2024-09-05T23:59 --dump-text \
     -o "$L32/ours.pinned.jsonl" 2>"$L32/err" &&
   grep -q 'Today Date: 05 Sep 2024' "$L32/ours.pinned.jsonl" && same "$L32/ours.pinned.jsonl" "$L32/ref.pinned.jsonl"; then
  echo "ok   Llama 3.2 with --chat_date 2024-09-05T23:59: byte-identical to transformers with date_string"
else
  echo "FAIL Llama 3.2 with --chat_date: $(cat "$L32/err")"; fail=1
fi
if "$BIN/ar-calib" --model "$L32" --dataset x.jsonl --chat_date 2024-02-30 --dump-text 2>"$L32/err"; then
  echo "FAIL --chat_date 2024-02-30 accepted"; fail=1
elif grep -q "chat_date.*2024-02-30" "$L32/err"; then echo "ok   --chat_date 2024-02-30 refused"
else echo "FAIL --chat_date 2024-02-30: $(cat "$L32/err")"; fail=1; fi
# META: the instant strftime_now formatted, absent when the template prints no date
for f in config.json model.safetensors; do ln -sf "$SHARED/models/tiny-llama/$f" "$L32/$f"; done
G2=$T/google-gemma-2-2b-it
for f in config.json model.safetensors; do ln -sf "$SHARED/models/tiny-llama/$f" "$G2/$f"; done
if "$BIN/ar-calib" --model "$L32" --dataset "$ROWS:apply_chat_template" --chat_date "2024-09-05 07:08:09" \
     --nsamples 2 --seqlen 8 -o "$L32/s.ars" 2>"$L32/err" &&
   "$BIN/ar-dump" "$L32/s.ars" | head -1 | grep -q '"chat_date":"2024-09-05T07:08:09"' &&
   "$BIN/ar-calib" --model "$G2" --dataset "$ROWS:apply_chat_template" --chat_date 2024-09-05 \
     --nsamples 2 --seqlen 8 -o "$G2/s.ars" 2>"$G2/err" &&
   ! "$BIN/ar-dump" "$G2/s.ars" | head -1 | grep -q chat_date; then
  echo "ok   META chat_date recorded for Llama 3.2, absent for Gemma 2"
else
  echo "FAIL META chat_date: $(cat "$L32/err" "$G2/err")"; fail=1
fi
exit $fail
