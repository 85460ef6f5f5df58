#!/usr/bin/env python3
"""A tiny vision-language model (tests/fixtures/vlm/make_tiny_vlm.py) through ar
and back into transformers + auto-round.

usage: check_vlm.py MODEL [MODEL...] --bin BIN --work DIR [--iters 50] [--threads 1]

For each MODEL folder (with its reference.json and heldout.txt):
  1. ar-eval's text perplexity of the BF16 model is within 0.1 % of
     transformers' (reference.json, the same protocol) and its greedy ids
     are equal.
  2. W4A16 (G128, sym) plain RTN (ar-tune --iters 0 --disable_opt_rtn) and
     SignRound (ar-calib 16 x 128 tokens of heldout.txt's neighbour,
     ar-tune --iters N) packed as auto_round: transformers loads the folder
     as the original class (transformers.<class>.from_pretrained with
     auto-round's AutoRoundConfig), its text perplexity (float32
     activations) is within 0.5 % of ar-eval's on the same windows, and every
     tensor outside the text decoder's blocks is byte-identical to the
     source's (make_vlm_copy.py compare).
Prints one line per check and "N passed, N failed"; exits 1 on a failure.
"""
import argparse
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COMPARE = os.path.join(HERE, "..", "fixtures", "vlm", "make_vlm_copy.py")
CALIB = os.path.join(os.environ.get("AR_SHARED", os.path.join(HERE, "..", "..", "..", "shared")),
                     "data", "tinystories", "TinyStories-validation-head.txt")
results = {"pass": 0, "fail": 0}


def check(ok, what):
    results["pass" if ok else "fail"] += 1
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ar_ppl(binp, folder, text, seqlen, windows, threads):
    out = run(os.path.join(binp, "ar-eval"), "--quiet", "--json", "--threads", str(threads), "--model", folder,
              "--text", text, "--seqlen", str(seqlen), "--windows", str(windows))
    return json.loads(out)["ppl"]


def hf_ppl(folder, text, seqlen, windows):
    import torch
    import transformers
    from transformers import AutoRoundConfig, AutoTokenizer

    cfg = json.load(open(os.path.join(folder, "config.json")))
    cls = getattr(transformers, cfg["architectures"][0])
    model = cls.from_pretrained(folder, dtype=torch.float32, quantization_config=AutoRoundConfig(backend="auto")).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(open(text, encoding="utf-8").read())["input_ids"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * seqlen:(w + 1) * seqlen]])
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            nll -= logp[:-1].gather(1, x[0, 1:].unsqueeze(1)).sum().item()
            n += seqlen - 1
    return math.exp(nll / n), type(model).__name__


def text_blocks(folder):
    """The prefix of the text decoder's blocks in the checkpoint."""
    import safetensors

    names = []
    for fn in os.listdir(folder):
        if fn.endswith(".safetensors"):
            with safetensors.safe_open(os.path.join(folder, fn), "pt") as f:
                names += list(f.keys())
    for p in ("model.language_model.", "language_model.model.", "model."):
        if p + "embed_tokens.weight" in names:
            return p + "layers."
    raise SystemExit(folder + ": no text decoder")


def one(model, a):
    name = os.path.basename(os.path.normpath(model))
    ref = json.load(open(os.path.join(model, "reference.json")))
    held = os.path.join(model, ref["heldout"])
    seqlen, windows = ref["seqlen"], ref["windows"]
    p = ar_ppl(a.bin, model, held, seqlen, windows, a.threads)
    d = abs(p / ref["ppl"] - 1)
    check(d <= 1e-3, f"{name}: ar-eval ppl {p:.6f}, transformers {ref['ppl']:.6f} (rel. diff {d:.2e}, bound 1e-3)")
    g = json.loads(run(os.path.join(a.bin, "ar-eval"), "--json", "--threads", str(a.threads), "--model", model,
                       "--prompt", ref["prompt"], "-n", str(len(ref["greedy_ids"]))))["ids"]
    check(g == ref["prompt_ids"] + ref["greedy_ids"], f"{name}: greedy ids equal transformers' ({len(ref['greedy_ids'])} tokens)")
    work = os.path.join(a.work, name)
    os.makedirs(work, exist_ok=True)
    tune = os.path.join(a.bin, "ar-tune")
    rtn, sr, calib = (os.path.join(work, f) for f in ("rtn.ars", "sr.ars", "calib.ars"))
    run(tune, "--quiet", "--model", model, "--scheme", "W4A16", "--iters", "0", "--disable_opt_rtn",
        "--threads", str(a.threads), "-o", rtn)
    run(os.path.join(a.bin, "ar-calib"), "--model", model, "--dataset", CALIB, "--nsamples", "16", "--seqlen", "128",
        "-o", calib)
    run(tune, "--quiet", "-i", calib, "--scheme", "W4A16", "--iters", str(a.iters), "--threads", str(a.threads),
        "-o", sr)
    blocks = text_blocks(model)
    for method, stream in (("RTN", rtn), (f"SignRound {a.iters} iters", sr)):
        out = os.path.join(work, "rtn-ar" if method == "RTN" else "sr-ar")
        subprocess.run(["rm", "-rf", out], check=True)
        run(os.path.join(a.bin, "ar-pack"), "--quiet", "-i", stream, "--format", "auto_round", "-o", out)
        pa = ar_ppl(a.bin, out, held, seqlen, windows, a.threads)
        ph, cls = hf_ppl(out, held, seqlen, windows)
        d = abs(ph / pa - 1)
        check(cls == ref["class"], f"{name} {method}: transformers loads the auto_round folder as {cls}")
        check(d <= 5e-3, f"{name} {method}: transformers + auto-round ppl {ph:.6f}, ar-eval {pa:.6f} "
                         f"(rel. diff {d:.2e}, bound 5e-3; BF16 model {p:.6f})")
        cmp = subprocess.run([sys.executable, COMPARE, "compare", model, out, blocks], capture_output=True, text=True)
        check(cmp.returncode == 0, f"{name} {method}: tensors outside {blocks}* byte-identical "
                                   f"({(cmp.stdout or cmp.stderr).strip()})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--bin", default="bin")
    ap.add_argument("--work", default="build/vlm-check")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    for m in a.models:
        one(m, a)
    print(f"check-vlm: {results['pass']} passed, {results['fail']} failed")
    sys.exit(1 if results["fail"] else 0)


if __name__ == "__main__":
    main()
