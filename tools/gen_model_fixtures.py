#!/usr/bin/env python3
"""Generate tiny random-weight Hugging Face models and reference logits.

Writes tests/fixtures/models/<name>/{config.json, model.safetensors, reference.json}
for the architectures ar's forward supports beyond plain Llama (Qwen2 with q/k/v
bias and linear RoPE, Qwen3 with QK-norm and head_dim != hidden/heads, Mistral
with a sliding window shorter than the sequence, Llama with llama3 RoPE and
attention/MLP biases, saved in three shards with an index). Weights are
random (fixed seed) but scaled so that every part of the block changes the
logits noticeably; norms and biases are randomized too. Reference logits come from transformers in float32 (eager
attention) for a fixed id sequence.

Usage: build/venv/bin/python tools/gen_model_fixtures.py [OUTDIR]
"""
import json
import os
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

SEED = 1234
T = 16

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              rms_norm_eps=1e-6, max_position_embeddings=128, attn_implementation="eager")

FIXTURES = {
    # BF16 storage, tied embeddings, linear RoPE scaling.
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, torch.bfloat16,
              dict(intermediate_size=128, vocab_size=128, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    # head_dim 32 with 4 heads: q is 128 wide while hidden is 64.
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, torch.bfloat16,
              dict(intermediate_size=96, vocab_size=96, head_dim=32, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    # Sliding window 5 < T, untied head.
    "mistral": (MistralConfig, MistralForCausalLM, torch.float32,
                dict(intermediate_size=64, vocab_size=96, head_dim=16, sliding_window=5,
                     tie_word_embeddings=False)),
    # llama3 RoPE with a short original context so all three frequency bands occur.
    "llama3": (LlamaConfig, LlamaForCausalLM, torch.float32,
               dict(intermediate_size=64, vocab_size=96, head_dim=16, tie_word_embeddings=True,
                    attention_bias=True, mlp_bias=True,
                    rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                                     "rope_theta": 10000.0})),
}


def randomize(model):
    """Weights large enough that attention is not uniform and logits spread."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 1.5)


def make(name, out_root):
    cfg_cls, model_cls, dtype, extra = FIXTURES[name]
    cfg = cfg_cls(**COMMON, **extra)
    torch.manual_seed(SEED)
    model = model_cls(cfg).eval()
    randomize(model)
    model = model.to(dtype)
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    # llama3 is written in shards, to test model.safetensors.index.json.
    shard = "100KB" if name == "llama3" else "1GB"
    model.save_pretrained(out, safe_serialization=True, max_shard_size=shard)
    for extra_file in ("generation_config.json",):
        path = os.path.join(out, extra_file)
        if os.path.exists(path):
            os.remove(path)
    ids = [(7 * i * i + 3 * i + 1) % cfg.vocab_size for i in range(T)]
    # Reference in float32 from the stored (possibly BF16) weights, loaded back
    # from disk as a user would: converting the in-memory model would also
    # round RoPE's inv_freq buffer to BF16.
    model32 = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model32(torch.tensor([ids])).logits[0]
    ref = {
        "provenance": f"tools/gen_model_fixtures.py: random weights (seed {SEED}), "
                      f"transformers {transformers.__version__}, torch {torch.__version__}, "
                      f"float32 forward of the saved checkpoint (from_pretrained), eager attention, stored dtype {str(dtype).replace('torch.', '')}",
        "ids": ids,
        "logits": [[round(float(v), 7) for v in row] for row in logits],
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=0)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    print(f"{name}: {size} bytes, logits range {logits.min():.2f}..{logits.max():.2f}")


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")
    for name in FIXTURES:
        make(name, out_root)


if __name__ == "__main__":
    main()
