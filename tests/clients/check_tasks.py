#!/usr/bin/env python3
"""check_tasks.py — ar-eval --tasks against lm-eval-harness itself.

lm-eval runs its own task definitions (the installed lm_eval/tasks/*.yaml:
prompts, delimiters, preprocessing, few-shot sampler, metrics) with its
Hugging Face model (`--model hf`, float32, CPU) on the same local rows: for
each task a YAML in WORK/tasks includes lm-eval's own YAML and replaces only
the dataset (the `json` loader over DATA/<task>.jsonl and the few-shot file)
and the task name (ar_<task>). Then, per task:
  * every request's log-likelihood agrees within --ll-tol (1e-3),
  * the greedy flags agree (lambada_openai), and
  * acc, acc_norm and their stderr agree within 1e-6; perplexity and its
    bootstrap stderr within a relative 1e-4 (both follow from the
    log-likelihoods; the bootstrap replays lm-eval's random draws).
mmlu runs as lm-eval runs it, one task per subject (mmlu_<subject>); the
subject results are compared.

Prints "ok ..." / "FAIL ..." lines and "check_tasks: N passed, N failed";
exits 1 on any failure.

usage: check_tasks.py --model DIR --data DIR --bin BIN [--tasks a,b] [--limit N]
                      [--num_fewshot K] [--work DIR] [--batch B]
"""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--bin", required=True)
ap.add_argument("--tasks", default="piqa,hellaswag,lambada_openai,arc_easy,arc_challenge,winogrande,mmlu")
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--num_fewshot", type=int, default=0)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--work", default="build/tasks-check")
ap.add_argument("--ll-tol", type=float, default=1e-3)
args = ap.parse_args()

work = Path(args.work).resolve()
data = Path(args.data).resolve()
(work / "tasks").mkdir(parents=True, exist_ok=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf-datasets"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

LMTASKS = Path(lm_eval.__file__).parent / "tasks"
# task -> (lm-eval's YAML, evaluated split, few-shot split or None)
DEFS = {
    "lambada_openai": ("lambada/lambada_openai.yaml", "test", None),
    "piqa": ("piqa/piqa.yaml", "validation", "train"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation", "train"),
    "arc_easy": ("arc/arc_easy.yaml", "test", "train"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test", "train"),
    "winogrande": ("winogrande/default.yaml", "validation", "train"),
}
passed = failed = 0


def ok(msg):
    global passed
    passed += 1
    print("ok   " + msg, flush=True)


def bad(msg):
    global failed
    failed += 1
    print("FAIL " + msg, flush=True)


def write_yaml(name, include, files, extra=""):
    split_keys = {"train": "training_split", "validation": "validation_split", "test": "test_split"}
    lines = [f"include: {include}", f"task: {name}", "dataset_path: json", "dataset_name: null",
             "dataset_kwargs:", "  data_files:"]
    lines += [f"    {split}: {path}" for split, path in files.items()]
    # the splits lm-eval's YAML names but our files lack are switched off
    for split, key in split_keys.items():
        if split not in files:
            lines.append(f"{key}: null")
    (work / "tasks" / f"{name}.yaml").write_text("\n".join(lines) + "\n" + extra)


tasks = args.tasks.split(",")
lm_tasks = {}  # lm-eval task name -> (our task, subject or None)
for t in tasks:
    if t == "mmlu":
        rows = [json.loads(l) for l in open(data / "mmlu.jsonl") if l.strip()]
        dev = [json.loads(l) for l in open(data / "mmlu.dev.jsonl") if l.strip()] if (data / "mmlu.dev.jsonl").exists() else []
        for subj in dict.fromkeys(r["subject"] for r in rows):
            files = {}
            for split, src in (("test", rows), ("dev", dev)):
                p = work / f"mmlu_{subj}.{split}.jsonl"
                p.write_text("".join(json.dumps(r) + "\n" for r in src if r["subject"] == subj))
                if split == "test" or any(r["subject"] == subj for r in src):
                    files[split] = p
            write_yaml(f"ar_mmlu_{subj}", LMTASKS / f"mmlu/default/mmlu_{subj}.yaml", files, "tag: []\n")
            lm_tasks[f"ar_mmlu_{subj}"] = ("mmlu", subj)
        continue
    yml, split, fs = DEFS[t]
    files = {split: data / f"{t}.jsonl"}
    if fs and (data / f"{t}.{fs}.jsonl").exists():
        files[fs] = data / f"{t}.{fs}.jsonl"
    write_yaml(f"ar_{t}", LMTASKS / yml, files, "tag: []\n")
    lm_tasks[f"ar_{t}"] = (t, None)

# ---- ar-eval ------------------------------------------------------------------
cmd = [str(Path(args.bin) / "ar-eval"), "--quiet", "--json", "--device", "cpu", "--model", args.model,
       "--tasks", ",".join(tasks), "--task_data", str(data), "--batch", str(args.batch),
       "--num_fewshot", str(args.num_fewshot), "--samples", str(work / "ar-samples.jsonl")]
if args.limit:
    cmd += ["--limit", str(args.limit)]
r = subprocess.run(cmd, capture_output=True, text=True)
if r.returncode:
    bad(f"ar-eval failed ({r.returncode}): {r.stderr.strip()}")
    print(f"check_tasks: {passed} passed, {failed} failed")
    sys.exit(1)
ours = json.loads(r.stdout)
our_samples = [json.loads(l) for l in open(work / "ar-samples.jsonl")]
(work / "ar-eval.json").write_text(r.stdout)

# ---- lm-eval ---------------------------------------------------------------------
res = lm_eval.simple_evaluate(
    model="hf", model_args=f"pretrained={args.model},dtype=float32", tasks=list(lm_tasks),
    task_manager=TaskManager(include_path=str(work / "tasks")), device="cpu", batch_size=args.batch,
    num_fewshot=args.num_fewshot, limit=args.limit, log_samples=True)
(work / "lm-eval-results.json").write_text(json.dumps(res["results"], indent=1, default=str))


def close(a, b, tol, rel=False):
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    d = abs(a - b)
    return d <= tol * (abs(b) if rel else 1.0)


for lm_name, (t, subj) in lm_tasks.items():
    ours_name = f"mmlu_{subj}" if subj else t
    theirs = res["results"][lm_name]
    mine = ours["results"].get(ours_name)
    if mine is None:
        bad(f"{ours_name}: no result from ar-eval")
        continue
    # per-request log-likelihoods, document by document
    mine_docs = [s for s in our_samples if s["task"] == t and (subj is None or s.get("subject") == subj)]
    their_docs = sorted(res["samples"][lm_name], key=lambda s: s["doc_id"])
    worst, nreq, greedy_bad, shape_bad, text_bad = 0.0, 0, 0, 0, 0
    if len(mine_docs) != len(their_docs):
        bad(f"{ours_name}: ar-eval scored {len(mine_docs)} documents, lm-eval {len(their_docs)}")
        continue
    for a, b in zip(mine_docs, their_docs):
        lls = [float(x[0][0]) if isinstance(x[0], (list, tuple)) else float(x[0]) for x in b["resps"]]
        gre = [bool(x[0][1]) if isinstance(x[0], (list, tuple)) else bool(x[1]) for x in b["resps"]]
        if len(lls) != len(a["lls"]):
            shape_bad += 1
            continue
        # the request strings themselves: (context, continuation) of each
        targs = b["arguments"]
        targs = list(targs.values()) if isinstance(targs, dict) else targs
        targs = [list(x.values())[:2] if isinstance(x, dict) else list(x)[:2] for x in targs]
        for k, (c, x) in enumerate(targs):
            if c != a["contexts"][k] or x != a["continuations"][k]:
                text_bad += 1
                if text_bad == 1:
                    print(f"     first difference, doc {b['doc_id']} request {k}:\n     lm-eval {c!r} + {x!r}\n"
                          f"     ar-eval {a['contexts'][k]!r} + {a['continuations'][k]!r}")
        for k, (x, y) in enumerate(zip(a["lls"], lls)):
            worst = max(worst, abs(x - y))
            nreq += 1
            if a["greedy"][k] is not None and a["greedy"][k] != gre[k]:
                greedy_bad += 1
    if shape_bad:
        bad(f"{ours_name}: {shape_bad} documents with a different number of requests")
    elif text_bad:
        bad(f"{ours_name}: {text_bad} requests whose context or continuation differ from lm-eval's")
    elif worst <= args.ll_tol and not greedy_bad:
        ok(f"{ours_name}: {nreq} requests with lm-eval's context and continuation, log-likelihoods agree with lm-eval's (max |diff| {worst:.2e})")
    else:
        bad(f"{ours_name}: log-likelihoods differ by up to {worst:.2e} (tolerance {args.ll_tol}), "
            f"{greedy_bad} greedy flags differ")
    for key, val in theirs.items():
        if "," not in key or key.startswith("alias"):
            continue
        mv = mine.get(key)
        rel = key.startswith("perplexity")
        tol = 1e-4 if rel else 1e-6
        if mv is None:
            bad(f"{ours_name} {key}: lm-eval {val}, ar-eval has none")
        elif close(mv, val, tol, rel):
            ok(f"{ours_name} {key}: ar-eval {mv:.6g}, lm-eval {val:.6g}" if not isinstance(val, str)
               else f"{ours_name} {key}: both {val}")
        else:
            bad(f"{ours_name} {key}: ar-eval {mv}, lm-eval {val}")

print(f"check_tasks: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
