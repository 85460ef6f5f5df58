/* block_fused.h — the decoder blocks of Phi-3 (Phi3ForCausalLM: Phi-3,
 * Phi-3.5, Phi-4) and GLM-4 (Glm4ForCausalLM, GLM-4-0414), block.h's
 * contracts with the linears of their block descriptions (block_desc.c):
 *
 *   Phi-3: 0 self_attn.qkv_proj [QD + 2 KD, C], 1 o_proj, 2 mlp.gate_up_proj
 *          [2F, C], 3 down_proj; no biases; partial rotary in halves.
 *   GLM-4: 0..2 q/k/v_proj (biases), 3 o_proj, 4 mlp.gate_up_proj, 5 down;
 *          half of each head rotated, pairs interleaved; RMSNorm after the
 *          attention and after the MLP, before each residual add.
 *
 * A fused linear is quantized as the one tensor it is (as AutoRound does):
 * its output is split (q | k | v rows; gate | up rows, gate first, as
 * transformers' chunk(2)) after the product and its gradient gathered back. */
#ifndef AR_BLOCK_FUSED_H
#define AR_BLOCK_FUSED_H
#include "block.h"

int ar_fused_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                     ar_block_work *ws);
int ar_fused_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                           ar_block_work *ws, ar_block_acts *a);
/* ar_block_backward_inputs' contract, dW / dxin indexed by the description. */
int ar_fused_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                      float *const *dW, float *dx, float *const *dxin, ar_block_work *ws);
/* Quantizers for Phi-3's 4 / GLM-4's 6 linears (aq may be NULL). */
int ar_fused_set_act_quant_phi3(ar_block_work *ws, const ar_act_spec *const *aq);
int ar_fused_set_act_quant_glm4(ar_block_work *ws, const ar_act_spec *const *aq);
const float *ar_fused_acts_input_phi3(const ar_block_acts *a, int i);
const float *ar_fused_acts_input_glm4(const ar_block_acts *a, int i);

#endif
