#!/usr/bin/env python3
"""Trains a small Qwen3 model on CPU: a second model family for the GGUF checks.

usage: build/venv/bin/python tests/bench/train_small_qwen3.py [--shared DIR]
           [--out DIR] [--steps N] [--batch B] [--seqlen T] [--lr X] [--seed S]
           [--bench K]

Why: the GGUF accuracy claims (issue #8) must hold on a model that is not in
shared/ and not a Llama. This one is a transformers Qwen3ForCausalLM (per-head
RMSNorm on q and k, GQA, untied lm_head), hidden 256, 4 layers, 4 heads of
64, 2 KV heads, intermediate 768: every matrix row is a multiple of 256, so
all k-quants apply. Vocabulary: tiny-llama's tokenizer.json (4096 byte-level
BPE, GPT-2 pre-tokenizer), copied into the output folder so llama.cpp's
converter recognizes it and both models read text the same way.

Data: shared/data/corpus/gutenberg_en_prose.txt.zst, up to the first byte of
tiny-llama's heldout.txt inside it (heldout.txt is the corpus' tail), so
heldout.txt stays unseen and serves as validation and evaluation text for both
models. Each step draws B random windows of T+1 tokens (seeded numpy
generator); AdamW, linear warm-up then cosine decay to a tenth, gradient
clipping at 1. One thread, float32: the same seed gives the same weights on
the same machine and torch build.

Writes model.safetensors (BF16), config.json, generation_config.json,
tokenizer.json and tokenizer_config.json to --out, and prints the final
train loss (mean of the last 20 steps) and the validation loss / perplexity
on the first 32 windows of 512 tokens of heldout.txt. --bench K times K steps
and exits (to size --steps for a time budget).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import time

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--shared", default=os.environ.get("AR_SHARED", os.path.join(here, "..", "..", "..", "shared")))
    p.add_argument("--out", default="/work/models/qwen3-gutenberg")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--bench", type=int, default=0)
    return p.parse_args()


def model_config():
    return Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                       rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def training_text(shared):
    """The corpus up to where tiny-llama's heldout.txt starts (its first long paragraph's last occurrence)."""
    corpus = subprocess.run(["zstd", "-dc", os.path.join(shared, "data/corpus/gutenberg_en_prose.txt.zst")],
                            check=True, capture_output=True).stdout
    heldout = open(os.path.join(shared, "models/tiny-llama/heldout.txt"), "rb").read()
    first = next(p for p in heldout.split(b"\n\n") if len(p) > 200)
    cut = corpus.rfind(first)
    if cut < 0:
        raise SystemExit("train_small_qwen3.py: heldout.txt's first paragraph is not in the corpus")
    return corpus[:cut].decode("utf-8", errors="replace"), heldout.decode("utf-8"), cut


def tokenize(tok, text):
    """Token ids of a long text, encoded paragraph by paragraph (the separators kept) to bound memory."""
    parts = text.split("\n\n")
    pieces = [p + "\n\n" for p in parts[:-1]] + [parts[-1]]
    ids = []
    for start in range(0, len(pieces), 4096):
        for enc in tok.encode_batch(pieces[start:start + 4096], add_special_tokens=False):
            ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


def lr_at(step, steps, peak):
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def val_loss(model, ids, seqlen, windows=32):
    """Mean next-token loss over the first non-overlapping windows of ids (positions 1..T-1 of each)."""
    model.eval()
    n = min(windows, len(ids) // seqlen)
    x = torch.from_numpy(ids[:n * seqlen].reshape(n, seqlen))
    total = 0.0
    for i in range(0, n, 8):
        total += model(input_ids=x[i:i + 8], labels=x[i:i + 8]).loss.item() * len(x[i:i + 8])
    model.train()
    return total / n


def save(model, out, tok_dir):
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))


def main():
    a = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    tok_dir = os.path.join(a.shared, "models/tiny-llama")
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))

    t0 = time.time()
    train_txt, heldout_txt, cut = training_text(a.shared)
    train_ids, val_ids = tokenize(tok, train_txt), tokenize(tok, heldout_txt)
    print(f"data: {cut} bytes -> {len(train_ids)} training tokens, {len(val_ids)} heldout tokens "
          f"({time.time() - t0:.0f} s)", flush=True)

    model = Qwen3ForCausalLM(model_config())
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    steps = a.bench or a.steps
    print(f"model: {n_params} parameters; {steps} steps of {a.batch} x {a.seqlen} tokens", flush=True)

    losses, t0 = [], time.time()
    for step in range(steps):
        starts = rng.integers(0, len(train_ids) - a.seqlen - 1, size=a.batch)
        x = torch.from_numpy(np.stack([train_ids[s:s + a.seqlen] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, a.lr)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} lr {lr_at(step, steps, a.lr):.2e} "
                  f"{time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0
    if a.bench:
        print(f"bench: {train_s / steps:.2f} s/step", flush=True)
        return

    train_loss = float(np.mean(losses[-20:]))
    vl = val_loss(model, val_ids, 512)
    save(model, a.out, tok_dir)
    summary = {"steps": steps, "batch": a.batch, "seqlen": a.seqlen, "tokens_seen": steps * a.batch * a.seqlen,
               "train_seconds": round(train_s), "final_train_loss": round(train_loss, 4),
               "val_loss_heldout_32x512": round(vl, 4), "val_ppl": round(math.exp(vl), 3), "seed": a.seed}
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"final train loss {train_loss:.4f}  val loss {vl:.4f} (ppl {math.exp(vl):.2f})  "
          f"train {train_s:.0f} s -> {a.out}", flush=True)


if __name__ == "__main__":
    main()
