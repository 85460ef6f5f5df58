#!/bin/sh
# ar-eval --tasks: the fixture rows of every task run on stories260K and give
# lm-eval's results object (acc in [0,1], stderr where lm-eval has one,
# n-samples honouring --limit, mmlu's limit per subject); the same rows with
# --batch 1 and 7 give the same JSON (batching changes nothing beyond
# rounding, and acc not at all on these rows); bad input exits 1 with one line
# naming the file and the problem, bad flags exit 2.
set -u
: "${AR_BIN:?}" "${AR_SHARED:?}"
S="$AR_SHARED/models/stories260K"
DATA=$(cd "$(dirname "$0")/../fixtures/tasks" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0

expect() { # NAME CODE PATTERN args...
  name=$1 code=$2 pat=$3; shift 3
  "$AR_BIN/ar-eval" "$@" > "$tmp/out" 2> "$tmp/err"; rc=$?
  lines=$(wc -l < "$tmp/err")
  if [ "$rc" -ne "$code" ] || ! head -1 "$tmp/err" | grep -q -- "$pat" || { [ "$code" = 1 ] && [ "$lines" != 1 ]; }; then
    echo "FAIL $name: exit $rc (want $code), stderr:"; sed 's/^/    /' "$tmp/err"; fail=1
  else echo "ok   $name: $(head -1 "$tmp/err")"; fi
}
check() { # NAME COMMAND...: the command succeeds
  name=$1; shift
  if "$@"; then echo "ok   $name"; else echo "FAIL $name"; fail=1; fi
}

ALL=lambada_openai,piqa,hellaswag,arc_easy,arc_challenge,winogrande,mmlu
"$AR_BIN/ar-eval" --quiet --json --model "$S" --tasks $ALL --task_data "$DATA" --limit 6 --num_fewshot 2 \
  --batch 7 --samples "$tmp/s7.jsonl" > "$tmp/b7.json" || { echo "FAIL ar-eval --tasks $ALL"; exit 1; }
"$AR_BIN/ar-eval" --quiet --json --model "$S" --tasks $ALL --task_data "$DATA" --limit 6 --num_fewshot 2 \
  --batch 1 > "$tmp/b1.json" || { echo "FAIL ar-eval --batch 1"; exit 1; }
check "results object has every task with lm-eval's keys" python3 - "$tmp/b7.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
res, ns = r["results"], r["n-samples"]
keys = {"lambada_openai": ["acc", "perplexity"], "piqa": ["acc", "acc_norm"], "hellaswag": ["acc", "acc_norm"],
        "arc_easy": ["acc", "acc_norm"], "arc_challenge": ["acc", "acc_norm"], "winogrande": ["acc"], "mmlu": ["acc"]}
for t, ms in keys.items():
    for m in ms:
        v, se = res[t][m + ",none"], res[t][m + "_stderr,none"]
        assert isinstance(v, float) or isinstance(v, int), (t, m, v)
        assert m == "perplexity" or 0 <= v <= 1, (t, m, v)
        assert se >= 0, (t, m, se)
    want = 12 if t == "mmlu" else 6  # mmlu: --limit per subject, two subjects
    assert ns[t]["effective"] == want, (t, ns[t])
assert res["mmlu_philosophy"]["acc,none"] is not None and ns["mmlu_philosophy"]["effective"] == 6
assert r["config"]["num_fewshot"] == 2 and r["config"]["limit"] == 6
PY
check "samples: one line per document, few-shot contexts carry 2 examples" python3 - "$tmp/s7.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 6 * 6 + 12, len(rows)
for r in rows:
    assert len(r["lls"]) == len(r["contexts"]) == len(r["continuations"])
    assert all(x < 0 for x in r["lls"])
    if r["task"] == "piqa":
        assert r["contexts"][0].count("\nAnswer:") == 3, r["contexts"][0]
    if r["task"] == "mmlu":
        assert r["contexts"][0].startswith("The following are multiple choice questions (with answers) about ")
PY
check "--batch 1 and --batch 7 agree" python3 - "$tmp/b1.json" "$tmp/b7.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["results"] for p in sys.argv[1:])
for t in a:
    for k, v in a[t].items():
        w = b[t][k]
        if isinstance(v, str): assert v == w, (t, k)
        elif k.startswith("perplexity"): assert abs(v - w) <= 1e-4 * abs(w), (t, k, v, w)
        else: assert v == w, (t, k, v, w)
PY

# bad input: one line naming the file and the problem
mkdir -p "$tmp/d"
expect unknown-task 1 "unknown task 'nosuch' (known: lambada_openai" --model "$S" --tasks piqa,nosuch --task_data "$DATA"
expect missing-file 1 "$tmp/d/piqa.jsonl: cannot open" --model "$S" --tasks piqa --task_data "$tmp/d"
printf '{"goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n{"goal": "a", "sol1": "b"\n' > "$tmp/d/piqa.jsonl"
expect malformed-json 1 "$tmp/d/piqa.jsonl:2: not valid JSON" --model "$S" --tasks piqa --task_data "$tmp/d"
printf '{"goal": "a", "sol1": "b", "label": 0}\n' > "$tmp/d/piqa.jsonl"
expect missing-field 1 "$tmp/d/piqa.jsonl:1: field 'sol2' is missing or not a string" --model "$S" --tasks piqa --task_data "$tmp/d"
printf '{"goal": "a", "sol1": "b", "sol2": "c", "label": 2}\n' > "$tmp/d/piqa.jsonl"
expect gold-out-of-range 1 "$tmp/d/piqa.jsonl:1: field 'label' gives answer 2, outside the 2 choices" --model "$S" --tasks piqa --task_data "$tmp/d"
printf '{"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}\n' > "$tmp/d/winogrande.jsonl"
expect wino-no-blank 1 "$tmp/d/winogrande.jsonl:1: field 'sentence' has no \"_\"" --model "$S" --tasks winogrande --task_data "$tmp/d"
printf '{"id": "x", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}\n' > "$tmp/d/arc_easy.jsonl"
expect arc-bad-key 1 "$tmp/d/arc_easy.jsonl:1: answerKey 'C' is not among choices.label" --model "$S" --tasks arc_easy --task_data "$tmp/d"
: > "$tmp/d/hellaswag.jsonl"
expect empty-file 1 "$tmp/d/hellaswag.jsonl: no rows" --model "$S" --tasks hellaswag --task_data "$tmp/d"
printf '{"goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n' > "$tmp/d/piqa.jsonl"
expect missing-fewshot-file 1 "$tmp/d/piqa.train.jsonl: cannot open" --model "$S" --tasks piqa --task_data "$tmp/d" --num_fewshot 1
cp "$DATA/piqa.jsonl" "$tmp/d/piqa.jsonl"; head -2 "$DATA/piqa.train.jsonl" > "$tmp/d/piqa.train.jsonl"
expect too-few-shots 1 "$tmp/d/piqa.train.jsonl: 2 rows, too few to draw 4" --model "$S" --tasks piqa --task_data "$tmp/d" --num_fewshot 3

# bad flags: exit 2
expect no-task-data 2 "--tasks needs --task_data" --model "$S" --tasks piqa
expect tasks-and-text 2 "exactly one of" --model "$S" --tasks piqa --task_data "$DATA" --text /dev/null
expect bad-limit 2 "limit" --model "$S" --tasks piqa --task_data "$DATA" --limit 0
expect bad-fewshot 2 "num_fewshot" --model "$S" --tasks piqa --task_data "$DATA" --num_fewshot -1
exit $fail
