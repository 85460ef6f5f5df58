"""Reference renderings for tests/e2e/chat_template.test.sh: the rows of a
calibration JSONL rendered by transformers' apply_chat_template, with the
conversation AutoRound 0.16.1 builds (auto_round/calib_dataset.py,
apply_chat_template_to_samples): the system prompt first (unless empty), then
the row's messages, or its text right-stripped as one user message;
add_generation_prompt=True; when the template raises, the same without any
system message. Writes JSONL {"text": ...} lines, the format of
ar-calib --dump-text.

usage: chat_template_ref.py MODEL_DIR ROWS.jsonl [SYSTEM_PROMPT]"""
import json
import sys

from transformers import AutoTokenizer

model, rows_path = sys.argv[1], sys.argv[2]
system_prompt = sys.argv[3] if len(sys.argv) > 3 else "You are a helpful assistant."
tok = AutoTokenizer.from_pretrained(model)
out = sys.stdout
for line in open(rows_path, encoding="utf-8"):
    if not line.strip():
        continue
    row = json.loads(line)
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        conv = row["messages"]
    else:
        if isinstance(row, dict):
            row = next(iter(row.values())) if len(row) == 1 else row["text"]
        conv = [{"role": "user", "content": row.rstrip()}]
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + conv
    try:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:
        msgs = [m for m in msgs if m["role"] != "system"]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
