/* gguf_ds_oss.h — DeepSeek-V2/V3 ("deepseek2") and gpt-oss ("gpt-oss") in
 * llama.cpp's GGUF files. Facts read in llama.cpp as vendored by
 * llama-cpp-python 0.3.36 (conversion/deepseek.py DeepseekV2Model,
 * conversion/gpt_oss.py GptOssModel, conversion/base.py set_gguf_parameters,
 * src/models/deepseek2.cpp, src/models/openai-moe.cpp, src/llama-context.cpp
 * (YaRN factors), src/llama-quant.cpp (type rules)); docs/moe.md §11.
 *
 * deepseek2: MLA as MQA with one KV head of kv_lora_rank + qk_rope_head_dim
 * (attention.key_length / value_length) and the MHA head sizes in
 * attention.key_length_mla / value_length_mla (which makes llama.cpp take
 * the split form below); q_a / q_b (or attn_q when q_lora_rank is 0),
 * attn_kv_a_mqa, attn_kv_a_norm, and kv_b_proj [NH·(DN+DV), KL] written as
 *   attn_k_b  ne {DN, KL, NH}: head h's k rows transposed ([KL, DN]),
 *   attn_v_b  ne {KL, DV, NH}: head h's v rows as they are.
 * Leading dense layers (leading_dense_block_count), shared experts
 * (ffn_*_shexp, expert_shared_count), the router's score-correction bias
 * (exp_probs_b.bias), expert_weights_scale / _norm, expert_gating_func
 * (1 softmax, 2 sigmoid), expert_group_count / _used_count, YaRN with
 * rope.scaling.yarn_log_multiplier = 0.1 · mscale_all_dim.
 *
 * gpt-oss: q/k/v/o with biases, attn_sinks.weight {NH}, post_attention_norm,
 * router ffn_gate_inp weight and bias, experts ffn_{gate,up,down}_exps with
 * biases ffn_{gate,up,down}_exps.bias {N, E}, the sliding window and its
 * 2-layer pattern (attention.sliding_window_pattern written only where the
 * model's differs from llama.cpp's default), YaRN. */
#ifndef AR_GGUF_DS_OSS_H
#define AR_GGUF_DS_OSS_H
#include "gguf.h"
#include <stddef.h>
#include <stdint.h>

/* 1 for the DeepSeek-V2/V3 and gpt-oss configs this file writes. */
int ar_gguf_ds_oss_arch(const ar_config *c);

/* 0 when llama.cpp's deepseek2 / gpt-oss computes what the model computes,
 * else -1 with one line naming model_dir and the difference (e.g. a YaRN
 * mscale other than mscale_all_dim, DeepSeek-V2's group_limited_greedy with
 * groups dropped, a SwiGLU clamp other than 1.702 / 7). */
int ar_gguf_ds_oss_check(const ar_config *c, const char *model_dir);

/* The architecture's keys (after the common ones, some of which it
 * replaces: deepseek2's head_count_kv / key_length / value_length). 0 or -1. */
int ar_gguf_ds_oss_set_metadata(ar_gguf_writer *w, const ar_config *c, const char *arch);

/* The reader: c's MLA / MoE / gpt-oss fields from a deepseek2 or gpt-oss
 * file (c's common fields read already). 0 or -1 with ar_error naming path. */
int ar_gguf_ds_oss_read_config(const ar_gguf *g, const char *arch, const char *path, ar_config *c);

/* ---- MLA's kv_b_proj ------------------------------------------------------------ */

/* Its shape: NH heads of DN k rows then DV v rows, each of KL columns. */
typedef struct { int NH, DN, DV, KL; } ar_gguf_kvb;
ar_gguf_kvb ar_gguf_kvb_of(const ar_config *c);

/* Split kv_b [NH·(DN+DV), KL] into k_b [NH][KL][DN] (transposed per head)
 * and v_b [NH][DV][KL]. */
void ar_gguf_kvb_split(const ar_gguf_kvb *s, const float *kvb, float *kb, float *vb);

/* ---- gpt-oss's expert biases ------------------------------------------------------ */

/* 1 when hf is "model.layers.L.mlp.experts.E.{gate,up,down}_proj.bias":
 * the stacked GGUF name "blk.L.ffn_{gate,up,down}_exps.bias" in gname and E
 * in *expert; else 0. */
int ar_gguf_expert_bias_name(const char *hf, char *gname, size_t cap, int *expert);

#endif
