#!/usr/bin/env python3
"""Perplexity of exported mixture-of-experts folders as transformers +
auto-round load them, one JSON line per folder.

usage: check_moe.py FOLDER [FOLDER...] --text TEXT [--seqlen 64] [--windows 8] [--backend auto]

Each folder is loaded by transformers.AutoModelForCausalLM with
AutoRoundConfig(backend) (auto-round converts the auto_round, gptq and awq
layouts to its kernels and unfuses the MoE experts into per-expert linears
before the weights load), float32, eager attention, and scored with
ar-eval's protocol: TEXT tokenized by the folder's tokenizer.json (one BOS),
non-overlapping windows of SEQLEN from token 0, the first WINDOWS, positions
1..SEQLEN-1 scored (ar-eval --seqlen SEQLEN --windows WINDOWS).

gpt-oss: auto-round 0.16.1's loader unfuses GptOssExperts into per-expert
gate_proj / up_proj / down_proj linears (moe_experts_interface.py,
linear_loop_experts_forward), concatenates their outputs as [gate | up] and
hands that to transformers 5.25's GptOssExperts._apply_gate, which reads gate
and up interleaved (gate_up[..., ::2], gate_up[..., 1::2]: the fused
checkpoint's column order). Gate and up are thus mixed and the model is
another function (docs/moe.md §10 has the figures; AutoRound's own export of
the same model loads to the same wrong perplexity). The fix AutoRound's
tuning path itself uses (fused_moe/gpt_oss.py GPTOssExperts._apply_gate:
chunk(2)) is applied here before loading, and the folder is also scored
without it ("ppl_unpatched") so the loader's state stays visible.
"""
import argparse
import json
import math
import os
import sys


def halves_gate(self, gate_up):
    import torch

    gate, up = gate_up.chunk(2, dim=-1)
    gate = gate.clamp(max=self.limit)
    up = up.clamp(min=-self.limit, max=self.limit)
    return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))


def ppl(folder, ids, seqlen, windows, backend):
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map="cpu", attn_implementation="eager",
        quantization_config=transformers.AutoRoundConfig(backend=backend)).eval()
    x = torch.tensor(ids[:windows * seqlen]).reshape(windows, seqlen)
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, windows, 8):
            xb = x[i:i + 8]
            lp = torch.log_softmax(m(input_ids=xb).logits.double()[:, :-1], -1)
            tot -= lp.gather(-1, xb[:, 1:, None]).sum().item()
            n += xb.shape[0] * (seqlen - 1)
    return math.exp(tot / n), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--text", required=True)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--backend", default="auto")
    a = ap.parse_args()
    import torch
    from tokenizers import Tokenizer
    from transformers.models.gpt_oss import modeling_gpt_oss

    torch.set_num_threads(1)
    text = open(a.text, encoding="utf-8").read()
    interleaved = modeling_gpt_oss.GptOssExperts._apply_gate
    for folder in a.folders:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        ids = Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).encode(text).ids
        out = {"folder": folder, "model_type": cfg.get("model_type"),
               "quant_method": cfg.get("quantization_config", {}).get("quant_method")}
        try:
            if cfg.get("model_type") == "gpt_oss":
                modeling_gpt_oss.GptOssExperts._apply_gate = interleaved
                out["ppl_unpatched"] = ppl(folder, ids, a.seqlen, a.windows, a.backend)[0]
                modeling_gpt_oss.GptOssExperts._apply_gate = halves_gate
                out["gate_fix"] = True
            out["ppl"], out["scored"] = ppl(folder, ids, a.seqlen, a.windows, a.backend)
        except Exception as ex:   # the caller reports it as a failed load
            out["error"] = "%s: %s" % (type(ex).__name__, str(ex).splitlines()[0] if str(ex) else "")
        finally:
            modeling_gpt_oss.GptOssExperts._apply_gate = interleaved
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
