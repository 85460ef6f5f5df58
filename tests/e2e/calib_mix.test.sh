#!/bin/sh
# Dataset specs as AutoRound reads them: several files mixed
# ("a.txt:num=3,b.jsonl:num=2"), the share of files without num=, :concat and
# :apply_chat_template through to token ids. Mixes are checked against
# single-file runs (each file is sampled on its own with the same seed, so a
# mix must hold exactly those samples); concat and chat-template ids against
# transformers' tokenizer where a Python with it is found (else skipped with a
# message).
. "$(dirname "$0")/lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures/chat_templates" && pwd)
fail=0
ids() { "$BIN/ar-calib" --model "$M" --dump-ids "$@"; }
check() { if "$@"; then :; else fail=1; fi; }

# documents: TinyStories paragraphs of different lengths as JSONL rows
python3 - "$STORIES_TEXT" "$T/docs.jsonl" "$T/long.jsonl" <<'PYEOF'
import json, sys
paras = [p.strip() for p in open(sys.argv[1], encoding="utf-8").read(200000).split("\n\n") if p.strip()]
with open(sys.argv[2], "w") as f:
    for p in paras[:40]: f.write(json.dumps({"text": p}) + "\n")
with open(sys.argv[3], "w") as f:  # three long documents and many short ones
    for p in paras[:3]: f.write(json.dumps({"text": " ".join(paras[:8]) + p}) + "\n")
    for p in paras[3:30]: f.write(json.dumps({"text": p[:20]}) + "\n")
PYEOF

# same_set A B: the lines of A and B, sorted, are equal
same_set() { sort "$1" > "$1.s"; sort "$2" > "$2.s"; cmp -s "$1.s" "$2.s"; }

# 1. num= on both files: exactly the single-file samples, shuffled together
ids --dataset "$STORIES_TEXT" --nsamples 3 --seqlen 24 > "$T/a3"
ids --dataset "$T/docs.jsonl" --nsamples 2 --seqlen 24 > "$T/b2"
ids --dataset "$STORIES_TEXT:num=3,$T/docs.jsonl:num=2" --nsamples 5 --seqlen 24 > "$T/mix"
cat "$T/a3" "$T/b2" > "$T/union"
if same_set "$T/mix" "$T/union" && ! cmp -s "$T/mix" "$T/union"; then
  echo "ok   num=3 + num=2: the 5 single-file samples, shuffled"
else echo "FAIL num=3 + num=2: not the single-file samples (or not shuffled)"; fail=1; fi

# 2. no num=: files ordered by size, each takes an equal share of what is left
#    (long.jsonl gives 3 documents of 64 tokens: 3 of them, then 8-3=5 windows)
ids --dataset "$T/long.jsonl" --nsamples 8 --seqlen 64 > "$T/l"
ids --dataset "$STORIES_TEXT" --nsamples 5 --seqlen 64 > "$T/w5"
ids --dataset "$STORIES_TEXT,$T/long.jsonl" --nsamples 8 --seqlen 64 > "$T/mix2"
cat "$T/l" "$T/w5" > "$T/union2"
if [ "$(wc -l < "$T/l")" -eq 3 ] && same_set "$T/mix2" "$T/union2"; then
  echo "ok   no num=: 3 documents (all there are) + 5 windows make the 8 samples"
else echo "FAIL no num=: $(wc -l < "$T/l") documents, mix not 3 documents + 5 windows"; fail=1; fi

# 3. num= adding up past nsamples: all taken, shuffled, cut to nsamples
ids --dataset "$STORIES_TEXT:num=4,$T/docs.jsonl:num=4" --nsamples 5 --seqlen 24 > "$T/mix3"
ids --dataset "$STORIES_TEXT" --nsamples 4 --seqlen 24 > "$T/a4"
ids --dataset "$T/docs.jsonl" --nsamples 4 --seqlen 24 > "$T/b4"
cat "$T/a4" "$T/b4" | sort > "$T/union3"
if [ "$(wc -l < "$T/mix3")" -eq 5 ] && [ -z "$(sort "$T/mix3" | comm -23 - "$T/union3")" ]; then
  echo "ok   num=4 + num=4 with --nsamples 5: 5 of the 8"
else echo "FAIL num=4 + num=4 with --nsamples 5"; fail=1; fi

# 4. a plain file and the same file with num=N give the same samples
ids --dataset "$STORIES_TEXT:num=3" --nsamples 3 --seqlen 24 > "$T/a3n"
if cmp -s "$T/a3" "$T/a3n"; then echo "ok   FILE:num=3 = FILE with --nsamples 3"; else echo "FAIL FILE:num=3 differs"; fail=1; fi

# 5. num= beyond what a file has is an error naming it
if ids --dataset "$T/long.jsonl:num=5,$STORIES_TEXT" --nsamples 8 --seqlen 64 > /dev/null 2> "$T/err"; then
  echo "FAIL num=5 of 3 documents accepted"; fail=1
elif grep -q "long.jsonl: num=5 but only 3 samples reach 64 tokens" "$T/err"; then echo "ok   num=5 of 3 documents: $(cat "$T/err")"
else echo "FAIL num=5 of 3 documents: $(cat "$T/err")"; fail=1; fi

# 5b. a .json holding one list of rows reads as the same rows in a .jsonl
python3 -c 'import json, sys; json.dump([json.loads(l) for l in open(sys.argv[1])], open(sys.argv[2], "w"), indent=1)' \
  "$T/docs.jsonl" "$T/docs.json"
ids --dataset "$T/docs.json" --nsamples 2 --seqlen 24 > "$T/b2j"
if cmp -s "$T/b2" "$T/b2j"; then echo "ok   a .json list of rows = the same rows as .jsonl"; else echo "FAIL .json list differs from .jsonl"; fail=1; fi

# 6. the front end passes the spec and --apply_chat_template to ar-calib
"$BIN/auto-round" --model "$M" --dataset "$T/docs.jsonl:num=2,$STORIES_TEXT:num=2" --apply_chat_template \
  --dry_run --output_dir "$T/o" > "$T/plan"
if grep -q -- "ar-calib .*--dataset $T/docs.jsonl:num=2,$STORIES_TEXT:num=2 --apply_chat_template" "$T/plan"; then
  echo "ok   auto-round --dataset SPEC --apply_chat_template reaches ar-calib"
else echo "FAIL auto-round plan: $(head -1 "$T/plan")"; fail=1; fi

PY=""
for p in "${AR_PYTHON:-}" "$(dirname "$0")/../../build/venv/bin/python" python3; do
  if [ -n "$p" ] && "$p" -c 'import transformers' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then echo "skip concat/chat token checks: no Python with transformers"; exit $fail; fi

# 7. concat: documents cut to seqlen, stripped of BOS, joined and cut into
#    BOS + (seqlen-1) tokens; count and token multiset against transformers
ids --dataset "$T/docs.jsonl:concat" --nsamples 1000 --seqlen 150 > "$T/cc" 2>/dev/null
if "$PY" - "$M" "$T/docs.jsonl" "$T/cc" 150 <<'PYEOF'
import json, sys, collections
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
L = int(sys.argv[4])
bos = tok.bos_token_id
body = collections.Counter()
n = 0
for line in open(sys.argv[2]):
    ids = tok(json.loads(line)["text"], truncation=True, max_length=L)["input_ids"]
    if ids and ids[0] == bos: ids = ids[1:]
    body.update(ids); n += len(ids)
rows = [json.loads(l) for l in open(sys.argv[3])]
got = collections.Counter(t for r in rows for t in r[1:])
ok = len(rows) == n // (L - 1) and all(len(r) == L and r[0] == bos for r in rows) and not (got - body)
print(("ok  " if ok else "FAIL") + " concat: %d samples of BOS + %d tokens from %d document tokens (want %d samples)" % (len(rows), L - 1, n, n // (L - 1)))
sys.exit(0 if ok else 1)
PYEOF
then :; else fail=1; fi

# 8. apply_chat_template through to ids: each row rendered, tokenized with
#    special tokens and cut to seqlen, as AutoRound does (tiny-llama's
#    tokenizer, Qwen2.5's template)
D=$T/chatm; mkdir -p "$D"
for f in config.json model.safetensors tokenizer.json; do ln -s "$SHARED/models/tiny-llama/$f" "$D/$f"; done
"$PY" - "$SHARED/models/tiny-llama/tokenizer_config.json" "$FIX/Qwen-Qwen2.5-7B-Instruct.jinja" "$D/tokenizer_config.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1])); d["chat_template"] = open(sys.argv[2], encoding="utf-8").read()
json.dump(d, open(sys.argv[3], "w"))
PYEOF
"$BIN/ar-calib" --model "$D" --dump-ids --dataset "$FIX/conversations.jsonl" --apply_chat_template --nsamples 100 --seqlen 24 > "$T/chat_ids"
"$PY" "$(dirname "$0")/chat_template_ref.py" "$D" "$FIX/conversations.jsonl" > "$T/chat_ref.jsonl"
if "$PY" - "$D" "$T/chat_ref.jsonl" "$T/chat_ids" 24 <<'PYEOF'
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1]); L = int(sys.argv[4])
want = []
for line in open(sys.argv[2]):
    ids = tok(json.loads(line)["text"], truncation=True, max_length=L)["input_ids"]
    if len(ids) >= L and ids[:L].count(ids[L - 1]) <= L // 2: want.append(ids[:L])
got = [json.loads(l) for l in open(sys.argv[3])]
ok = sorted(got) == sorted(want) and len(got) > 0
print(("ok  " if ok else "FAIL") + " apply_chat_template: %d samples, transformers gives %d (same ids: %s)" % (len(got), len(want), sorted(got) == sorted(want)))
sys.exit(0 if ok else 1)
PYEOF
then :; else fail=1; fi
exit $fail
