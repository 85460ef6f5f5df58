/* block_deepseek.h — the "deepseek" block family (DeepSeek-V2/V3, Kimi-K2):
 * multi-head latent attention (attn_mla.h) followed by a dense SwiGLU MLP
 * (layers below first_k_dense_replace) or the mixture of experts of moe.h
 * with DeepSeek's routers and shared experts:
 *
 *   h = x + MLA(rmsnorm1(x))
 *   y = h + mlp(rmsnorm2(h))        mlp: dense SwiGLU or moe.h
 *
 * transformers 5.25 models/deepseek_v3/modeling_deepseek_v3.py
 * (DeepseekV3DecoderLayer, DeepseekV3MoE, DeepseekV3MLP); docs/moe.md §3, §9.
 *
 * Linears of layer l (block_desc.c describes them), under model.layers.l.: the
 * MLA linears present, in attn_mla.h's order (self_attn.q_a_proj,
 * self_attn.q_b_proj — or self_attn.q_proj without q LoRA —,
 * self_attn.kv_a_proj_with_mqa, self_attn.kv_b_proj, self_attn.o_proj), then
 * mlp.gate_proj, mlp.up_proj, mlp.down_proj (dense), or per expert e
 * mlp.experts.E.{gate,up,down}_proj and mlp.shared_experts.{gate,up,down}_proj.
 * Norms: input_layernorm, post_attention_layernorm, self_attn.q_a_layernorm
 * (q LoRA only), self_attn.kv_a_layernorm; in ar_block_weights they are
 * attn_norm, mlp_norm, then q_norm / k_norm in that order (so without q LoRA
 * kv_a_layernorm is q_norm). The router mlp.gate.weight and
 * mlp.gate.e_score_correction_bias are full-precision tensors.
 *
 * The RoPE tables, MLA activations and MoE scratch live in ws->fam / a->fam
 * (allocated on first use). Activation quantization is refused. */
#ifndef AR_BLOCK_DEEPSEEK_H
#define AR_BLOCK_DEEPSEEK_H
#include "block.h"

int ar_block_deepseek_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                              ar_block_work *ws);
int ar_block_deepseek_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                                    int T, ar_block_work *ws, ar_block_acts *a);
/* dW of every linear (entries may be NULL), dx; dxin must be NULL or all NULL. */
int ar_block_deepseek_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                               const float *dy, float *const *dW, float *dx, float *const *dxin, ar_block_work *ws);
int ar_block_deepseek_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq);
/* NULL: the family keeps its linears' inputs in its own state. */
const float *ar_block_deepseek_acts_input(const ar_block_acts *a, int i);

#endif
