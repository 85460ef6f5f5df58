#!/usr/bin/env python3
"""Load one of our exported folders with a real client and print its perplexity.

usage: check_hf_quantized.py FOLDER TEXT [--seqlen 512] [--windows 200] [--device cpu]

Clients: transformers AutoModelForCausalLM. A folder whose config.json carries a
quantization_config (auto-round, gptq, awq) is loaded through auto-round's
AutoRoundConfig, which converts GPTQ and AWQ layouts to its own kernels and has
pure-torch backends that run on CPU; a plain folder (fake) loads as is.
Known on CPU with auto-round 0.16.1 and no gptqmodel/autoawq installed: AWQ
layouts (quant_method awq, packing_format auto_round:auto_awq) get auto-round's
"fake" backend, which fails in qdq_input (act_data_type None); they need a GPU
(or gptqmodel) kernel. GPTQ and auto_round:auto_gptq run on CPU (torch_zp).

Protocol (the one tiny-llama's README uses): tokenize the whole text with the
folder's tokenizer (special tokens only if the tokenizer adds them itself),
cut non-overlapping windows of --seqlen tokens from token 0, take the first
--windows, score positions 1..seqlen-1 of each window, print
{"ppl": exp(mean NLL), ...} as JSON on stdout.
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
    ap.add_argument("folder")
    ap.add_argument("text")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.folder)
    with open(a.text, encoding="utf-8") as f:
        ids = tok(f.read())["input_ids"]
    model, method = load_model(a.folder, a.device)
    ppl, n = perplexity(model, ids, a.seqlen, a.windows, a.device)
    print(json.dumps({"ppl": ppl, "windows": n, "seqlen": a.seqlen, "tokens": len(ids),
                      "quant_method": method, "folder": a.folder}))


if __name__ == "__main__":
    main()
