#!/usr/bin/env python3
"""Load one of our exported folders with a real client and print its perplexity.

usage: check_hf_quantized.py FOLDER [FOLDER...] --text TEXT [--seqlen 512] [--windows 200] [--device cpu]
       check_hf_quantized.py FOLDER TEXT [...]   (one folder, the original form)

Clients: transformers AutoModelForCausalLM. A folder whose config.json carries a
quantization_config (auto-round, gptq, awq) is loaded through auto-round's
AutoRoundConfig, which converts GPTQ and AWQ layouts to its own kernels and has
pure-torch backends that run on CPU; a plain folder (fake) loads as is.
On CPU, AWQ layouts (quant_method awq, packing_format auto_round:auto_awq)
need auto-round-lib (auto-round's "auto_round_kernel_awq" backend): without it,
auto-round 0.16.1 falls back to its "fake" backend, whose forward quantizes the
activations even for weight-only schemes and fails in qdq_input on
act_data_type None (AutoRound itself writes no act_* keys for W4A16, so this is
not a config key we lack). GPTQ and auto_round:auto_gptq layouts also run on
CPU without it (torch_zp).

Protocol (the one tiny-llama's README uses): tokenize the whole text with the
folder's tokenizer (special tokens only if the tokenizer adds them itself),
cut non-overlapping windows of --seqlen tokens from token 0, take the first
--windows, score positions 1..seqlen-1 of each window, print
{"ppl": exp(mean NLL), ...} as JSON on stdout, one line per folder (each
folder's own tokenizer; all folders in one process, which saves the imports'
start-up time).
"""
import argparse
import json
import math
import os
import sys


def load_model(folder, device):
    import torch
    from transformers import AutoModelForCausalLM

    with open(os.path.join(folder, "config.json")) as f:
        qcfg = json.load(f).get("quantization_config")
    kwargs = {"dtype": "auto", "device_map": device}
    if qcfg is not None:
        from transformers import AutoRoundConfig  # transformers hands the layers to auto-round

        kwargs["quantization_config"] = AutoRoundConfig(backend="auto")
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model.eval()
    return model, (qcfg or {}).get("quant_method", "none")


def perplexity(model, ids, seqlen, windows, device):
    import torch

    n = min(windows, len(ids) // seqlen)
    if n == 0:
        sys.exit(f"check_hf_quantized: text has {len(ids)} tokens, fewer than one window of {seqlen}")
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(n):
            x = torch.tensor([ids[w * seqlen:(w + 1) * seqlen]], device=device)
            logits = model(x).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll = -logp.gather(1, x[0, 1:, None]).squeeze(1)
            total += nll.double().sum().item()
            count += nll.numel()
    return math.exp(total / count), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", metavar="FOLDER")
    ap.add_argument("--text")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.text is None:  # original form: FOLDER TEXT
        if len(a.folders) != 2:
            ap.error("give --text TEXT, or exactly FOLDER TEXT")
        a.folders, a.text = a.folders[:1], a.folders[1]
    from transformers import AutoTokenizer

    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    for folder in a.folders:
        ids = AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
        model, method = load_model(folder, a.device)
        ppl, n = perplexity(model, ids, a.seqlen, a.windows, a.device)
        del model
        print(json.dumps({"ppl": ppl, "windows": n, "seqlen": a.seqlen, "tokens": len(ids),
                          "quant_method": method, "folder": folder}), flush=True)


if __name__ == "__main__":
    main()
