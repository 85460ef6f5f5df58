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

Also Phi-3 (longrope, short and long factors, partial rotary), GLM-4
(interleaved partial rotary, post norms) and the dense yarn and dynamic RoPE.

Usage: build/venv/bin/python tools/gen_model_fixtures.py [OUTDIR [NAME,...]]
"""
import json
import os
import sys

import torch
import transformers
from transformers import (Glm4Config, Glm4ForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

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
    # Phi-3: fused qkv/gate_up, partial rotary (12 of 16 dims), longrope. T = 16
    # is within the original context 32 (short factors) for "phi3", beyond
    # the original context 8 (long factors) for "phi3_long"; both carry
    # longrope's attention factor (factor = max_position / original > 1).
    "phi3": (Phi3Config, Phi3ForCausalLM, torch.bfloat16,
             dict(intermediate_size=64, vocab_size=96, tie_word_embeddings=False, partial_rotary_factor=0.75,
                  original_max_position_embeddings=32, pad_token_id=0,
                  rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                   "short_factor": [1.0, 1.1, 1.3, 1.7, 2.3, 3.1],
                                   "long_factor": [1.0, 1.5, 2.5, 4.0, 6.5, 9.0]})),
    "phi3_long": (Phi3Config, Phi3ForCausalLM, torch.float32,
                  dict(intermediate_size=64, vocab_size=96, tie_word_embeddings=True, partial_rotary_factor=0.75,
                       original_max_position_embeddings=8, pad_token_id=0,
                       rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                        "short_factor": [1.0, 1.1, 1.3, 1.7, 2.3, 3.1],
                                        "long_factor": [1.0, 1.5, 2.5, 4.0, 6.5, 9.0]})),
    # GLM-4: q/k/v biases, half of each head rotated with interleaved pairs,
    # norms after attention and MLP.
    "glm4": (Glm4Config, Glm4ForCausalLM, torch.bfloat16,
             dict(intermediate_size=64, vocab_size=96, head_dim=16, tie_word_embeddings=False,
                  attention_bias=True, partial_rotary_factor=0.5, pad_token_id=0,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    # Dense yarn (Qwen3 configs use it) and dynamic NTK beyond max_position (8 < T).
    "qwen2_yarn": (Qwen2Config, Qwen2ForCausalLM, torch.float32,
                   dict(intermediate_size=64, vocab_size=96, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                         "original_max_position_embeddings": 8})),
    "llama_dynamic": (LlamaConfig, LlamaForCausalLM, torch.float32,
                      dict(intermediate_size=64, vocab_size=96, head_dim=16, tie_word_embeddings=False,
                           max_position_embeddings=8,
                           rope_parameters={"rope_type": "dynamic", "factor": 3.0, "rope_theta": 10000.0})),
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
    cfg = cfg_cls(**{**COMMON, **extra})
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
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(FIXTURES)
    for name in only:
        make(name, out_root)


if __name__ == "__main__":
    main()
