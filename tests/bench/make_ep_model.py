#!/usr/bin/env python3
"""A random Qwen3-MoE model for the expert-parallel bench (tests/bench/ep.bench.sh): 2 layers, both
MoE, hidden 256, EXPERTS experts of 512, top-4, stories260K's tokenizer (copied from the tiny
qwen3_moe fixture), BF16 storage, seed 1234. Big enough that a block's expert state dominates the
memory of a run (64 experts: 25.2 M routed parameters a block).
    build/venv/bin/python tests/bench/make_ep_model.py OUT [EXPERTS]"""
import os
import shutil
import sys

import torch
import transformers

out = sys.argv[1]
E = int(sys.argv[2]) if len(sys.argv) > 2 else 64
torch.manual_seed(1234)
torch.set_num_threads(1)
cfg = transformers.Qwen3MoeConfig(
    vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=E, num_experts_per_tok=4,
    norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=256,
    tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
model = transformers.Qwen3MoeForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "moe", "tiny", "qwen3_moe")
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(fix, f), out)
