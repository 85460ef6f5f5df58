/* block_moe.h — the "moe" block family: the Llama-family attention half of
 * block.c (Qwen3 QK-norm, Qwen2 biases, Mistral) followed by the
 * mixture-of-experts MLP of moe.h, with block.h's contracts:
 *
 *   h = x + o_proj(attn(rmsnorm1(x)))
 *   y = h + moe(rmsnorm2(h))
 *
 * Linears in the order of ar_block_desc_init_layer (q, k, v, o, then 3 per
 * expert, then the shared expert's); the router and the shared gate are the
 * full-precision fields of ar_block_weights. The MoE scratch and saved
 * activations are allocated on first use in ws->moe / a->moe. The observer
 * (ws->observe) sees each expert linear's routed rows only. Activation
 * quantization is refused (ar_block_moe_set_act_quant): a routed expert's
 * input is a row subset, and AutoRound's per-expert act_max handling
 * (set_amax_for_all_moe_layers) is not reproduced yet. */
#ifndef AR_BLOCK_MOE_H
#define AR_BLOCK_MOE_H
#include "block.h"

int ar_block_moe_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                         ar_block_work *ws);
int ar_block_moe_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                               int T, ar_block_work *ws, ar_block_acts *a);
/* dW, dxin with the description's nlinear entries (dxin only for q/k/v/o). */
int ar_block_moe_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                          float *const *dW, float *dx, float *const *dxin, ar_block_work *ws);
/* 0 when aq is NULL or its attention entries (AR_Q..AR_O) are, else -1
 * with ar_error (callers refuse expert entries before, see block_moe.c). */
int ar_block_moe_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq);
/* The saved input of linear i for q/k/v/o; NULL for the experts (their rows
 * are a routed subset, in a->moe). */
const float *ar_block_moe_acts_input(const ar_block_acts *a, int i);

#endif
