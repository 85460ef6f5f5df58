/* block_gptoss.h — the "gpt_oss" block family (GptOssForCausalLM):
 * attention with q/k/v/o biases, yarn RoPE (rotate_half), a learned sink
 * logit per head and a sliding window on the layers config.json's
 * layer_types marks sliding_attention, then the mixture of experts of moe.h
 * with gpt-oss's router (top-k of the logits + bias, softmax over those k),
 * expert biases and the clamped SwiGLU:
 *
 *   h = x + o_proj(attn_sinks(rope(q_proj n1), rope(k_proj n1), v_proj n1)),  n1 = rmsnorm1(x)
 *   y = h + moe(rmsnorm2(h))
 *
 * transformers 5.25 models/gpt_oss/modeling_gpt_oss.py; docs/moe.md §3, §9.
 * Linears: self_attn.{q,k,v,o}_proj, then per expert e
 * mlp.experts.E.{gate,up,down}_proj (AutoRound's unfused names; the
 * checkpoint's fused gate_up_proj / down_proj are read through
 * fused_experts.h). Full precision: mlp.router.weight, mlp.router.bias,
 * self_attn.sinks (ar_block_weights.sinks). The window is c->sliding_window
 * as the caller sets it per layer (model.c: 0 for full_attention layers).
 * Activation quantization is refused. */
#ifndef AR_BLOCK_GPTOSS_H
#define AR_BLOCK_GPTOSS_H
#include "block.h"

int ar_block_gptoss_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                            ar_block_work *ws);
int ar_block_gptoss_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                                  int T, ar_block_work *ws, ar_block_acts *a);
/* dW of every linear (entries may be NULL), dx; dxin must be NULL or all NULL. */
int ar_block_gptoss_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                             const float *dy, float *const *dW, float *dx, float *const *dxin, ar_block_work *ws);
int ar_block_gptoss_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq);
const float *ar_block_gptoss_acts_input(const ar_block_acts *a, int i);

#endif
