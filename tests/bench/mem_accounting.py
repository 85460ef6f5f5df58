#!/usr/bin/env python3
"""The bytes of one SignRound block step on the CPU (docs/memory.md §1), from the allocation sizes
in the code: ar_block_acts_init / ar_block_work_init (libar/nn/block.c), layer_init and the tuner's
shared buffers (libar/tune/signround.c), ar_block_plan_outputs, tn_forward_all's buffers
(libar/tune/tune_chain.c). W4A16 group 128, every linear quantized, one mini-batch of B x T tokens.
"before": the tuner as it was at 1d72578; "after": with --mem_budget (lean state).
    python3 tests/bench/mem_accounting.py [B T]"""
import sys

def acct(name, C, F, NH, NKV, HD, B, T, G=128):
    QD, KD = NH*HD, NKV*HD
    lin = [QD*C, KD*C, KD*C, C*QD, F*C, F*C, C*F]
    P = sum(lin); big = max(lin); groups = sum(l//G for l in lin)
    BT = B*T
    f4 = 4
    rows = []
    def r(item, before, after): rows.append((item, before, after))
    r("FP weights f32 (ar_block_weights, all linears)", 4*P, 4*big)  # after: one reload scratch
    r("V (tunable rounding) f32", 4*P, 4*P)
    r("best V copy f32", 4*P, 0)
    r("dL/dV f32", 4*P, 4*big)
    r("fake-quantized weight ŵ f32 (forward operand)", 4*P, 4*P)
    r("dL/dŵ f32 (block backward output)", 4*P, 4*P)
    r("α, β f32 + best copies + gradients", 6*4*groups, 2*4*groups + 2*4*max(l//G for l in lin))
    r("outputs: ŵ f32 + codes u8 + scale f32 + zp i32", 5*P + 8*groups, 5*P + 8*groups)
    # activations (training mini-batch)
    acts = (4*BT*C + 2*BT + BT*QD*2 + 2*BT*KD + B*NH*T*T + 3*BT*F) * f4
    r("saved activations (ar_block_acts, incl. attention probs B·NH·T²)", acts, acts)
    tws = (T*HD + 2*BT*C + 2*BT*QD + 2*BT*KD + 2*BT*F + BT*NH + (min(T,128)*T + 2*B*NH*T*HD)
           + 3*BT*F + 2*BT*C + 3*BT*QD + 3*BT*KD) * f4
    r("training workspace (ar_block_work train)", tws, tws)
    r("mini-batch x, y_ref, pred, dy f32", 4*BT*C*f4, 4*BT*C*f4)
    iws = (T*HD + 2*BT*C + 2*BT*QD + 2*BT*KD + 2*BT*F + BT*NH + min(T,128)*T) * f4 + 2*BT*C*f4
    r("chain forward workspace + batch in/out (tn_forward_all; freed during SignRound)", iws, 0)
    print(f"## {name}: hidden {C}, intermediate {F}, heads {NH}/{NKV}, {P/1e6:.1f} M parameters a block, batch {B} x {T}")
    print("| item | before, MB | after (--mem_budget), MB |\n|---|---|---|")
    tb = ta = 0
    for it, b, a in rows:
        tb += b; ta += a
        print(f"| {it} | {b/1e6:,.0f} | {a/1e6:,.0f} |")
    print(f"| **total** | **{tb/1e6:,.0f}** ({tb/2**30:.2f} GiB) | **{ta/1e6:,.0f}** ({ta/2**30:.2f} GiB) |")
    return P
B, T = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (1, 2048)
if True:
    acct("8B", 4096, 14336, 32, 8, 128, B, T)
    acct("70B", 8192, 28672, 64, 8, 128, B, T)
