#!/usr/bin/env python3
"""Expert parallel (docs/mpi.md, "Expert parallel"): the bytes of one SignRound block step of a
DeepSeek-V3 MoE block on the CPU tuner, one process against N ranks that split the routed experts,
and the rows the ranks exchange per iteration. Arithmetic from the allocation sizes in the code, not a
measurement (no such block was run):
  - FP weights f32: ar_block_weights_alloc_layer / ar_model_load_block (libar/nn/model.c) widen every
    linear to f32; with --mem_budget they are dropped while SignRound runs and read one linear at a
    time (tune_chain.c drop_quantized_weights, reload_weight);
  - V, ŵ, dL/dŵ f32 per tuned parameter: layer_init (libar/tune/signround.c);
  - α, β f32 per group: layer_init; the outputs ŵ f32 + codes u8 + scale f32 + zp i32 per group:
    block_outputs (libar/tune/tune_block.c);
  - expert parallel: a rank allocates none of these for the other ranks' routed experts
    (tn_ep_other: not loaded, no output buffers, no tuner state; signround.c set_mine).
The MoE activations of one micro-batch (libar/nn/moe.c ar_moe_acts_init) are sized for every routed
row on every rank: [R·K, H] x4 (xg, eo, deo, dxg) and [R·K, I] x6.
    python3 tests/bench/ep_memory.py [N] [micro_batch_tokens]"""
import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 8
MB = int(sys.argv[2]) if len(sys.argv) > 2 else 2048

# DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3): hidden 7168, 128 heads, q_lora 1536,
# kv_lora 512, rope 64, nope 128, v 128, 256 routed experts of 2048, 1 shared of 2048, top-8
H, NH, QL, KL, RD, ND, VD, E, I, SI, K, G = 7168, 128, 1536, 512, 64, 128, 128, 256, 2048, 2048, 8, 128
attn = H * QL + QL * NH * (ND + RD) + H * (KL + RD) + KL * NH * (ND + VD) + NH * VD * H
shared = 3 * H * SI
routed = E * 3 * H * I
P = attn + shared + routed

def per_param(lean):
    """Bytes per tuned parameter at the peak (the SignRound phase): FP, V, ŵ, dŵ, α/β, outputs."""
    fp = 0 if lean else 4
    return fp + 4 + 4 + 4 + 8 / G + (4 + 1 + 8 / G)

GB = 1e9
print(f"DeepSeek-V3 MoE block: attention {attn/1e6:.1f} M, shared expert {shared/1e6:.1f} M, "
      f"routed experts {routed/1e6:,.1f} M: {P/1e9:.2f} G tuned parameters")
print("| bytes per tuned parameter (CPU tuner) | without --mem_budget | with --mem_budget |\n|---|---|---|")
for item, a, b in [("FP weight f32", 4, 0), ("V f32", 4, 4), ("ŵ f32 (forward operand)", 4, 4),
                   ("dL/dŵ f32", 4, 4), ("α, β f32 (per group of 128)", 8 / G, 8 / G),
                   ("outputs: ŵ f32 + codes u8 + scale, zp per group", 5 + 8 / G, 5 + 8 / G)]:
    print(f"| {item} | {a:.3f} | {b:.3f} |")
print(f"| **total** | **{per_param(0):.3f}** | **{per_param(1):.3f}** |")
R = MB
acts = (4 * R * K * H + 6 * R * K * I) * 4
print(f"\nMoE activations of one micro-batch of {R} tokens (every rank, every routed row): {acts/GB:.2f} GB")
print("\n| ranks | routed experts a rank | block state a rank, without / with --mem_budget | + activations |\n|---|---|---|---|")
for n in sorted({1, 2, 4, N}):
    mine = routed / n
    s0 = (attn + shared + mine) * per_param(0)
    s1 = (attn + shared + mine) * per_param(1)
    print(f"| {n} | {E // n if E % n == 0 else E / n} | {s0/GB:.1f} GB / {s1/GB:.1f} GB | {(s1+acts)/GB:.1f} GB |")

# Exchange per iteration: every rank receives the other ranks' routed rows, f32, forward (expert
# outputs) and backward (their input gradients): 2 (N-1)/N R K H 4 bytes for an even split.
B, T, BW = 8, 2048, 350e9
rows = B * T * K
x = 2 * (N - 1) / N * rows * H * 4
print(f"\nexchange per iteration, {N} ranks, batch {B} x {T} tokens, top-{K}: "
      f"2 x {N-1}/{N} x {rows} rows x {H} x 4 B = {x/GB:.2f} GB received a rank; "
      f"{1e3*x/BW:.1f} ms at {BW/1e9:.0f} GB/s (NCCL all-gather bus bandwidth in one NVLink node, assumed)")
