/* gguf_moe.h — mixtures of experts in llama.cpp's GGUF files: Qwen3-MoE
 * ("qwen3moe"), Qwen2-MoE ("qwen2moe", with the gated shared expert) and
 * Mixtral ("llama" with experts).
 *
 * llama.cpp stores the E routed experts of one layer and projection as one
 * 3-D tensor, blk.N.ffn_{gate,up,down}_exps.weight, ne = [K, N, E] (each
 * expert's [N, K] HF matrix one after the other; ggml rows stay independent,
 * so expert e's row r is row e·N + r of any block type). The router
 * (mlp.gate) is blk.N.ffn_gate_inp.weight, never quantized; Qwen2-MoE's shared
 * expert is ffn_{gate,up,down}_shexp and its gate ffn_gate_inp_shexp, a 1-D
 * [hidden] tensor. Facts from llama.cpp (llama-cpp-python 0.3.36's vendor
 * copy): conversion/qwen.py Qwen2MoeModel.modify_tensors (stacking),
 * conversion/base.py set_gguf_parameters (expert_count / expert_used_count),
 * src/models/qwen3moe.cpp, qwen2moe.cpp, llama.cpp (tensor shapes, which
 * layers must have experts, the routers' normalisation: qwen3moe and llama
 * renormalise the top-k weights, qwen2moe does not). */
#ifndef AR_GGUF_MOE_H
#define AR_GGUF_MOE_H
#include "gguf.h"
#include <stddef.h>
#include <stdint.h>

/* The stacked name of one routed expert's tensor: ar_gguf_expert_name (gguf_policy.h). */

/* Mixtral's older checkpoint spelling of hf (mlp.experts.E.gate_proj ->
 * block_sparse_moe.experts.E.w1, mlp.gate -> block_sparse_moe.gate) into out:
 * 1, or 0 when hf has no other spelling. */
int ar_gguf_moe_legacy_name(const char *hf, char *out, size_t cap);

/* 0 when llama.cpp's architecture for c holds the model as it is, else -1
 * with one line naming model_dir and what llama.cpp cannot express (dense
 * layers between MoE layers, a top-k normalisation other than the
 * architecture's fixed one, families without a GGUF writer yet). Dense
 * configs: 0. */
int ar_gguf_moe_check(const ar_config *c, const char *model_dir);

/* The MoE metadata keys of c under arch (expert_count, expert_used_count,
 * expert_feed_forward_length, expert_shared_feed_forward_length). 0 for a
 * dense config. 0 or -1. */
int ar_gguf_moe_set_metadata(ar_gguf_writer *w, const ar_config *c, const char *arch);

/* The reader's side: c->moe and the per-layer flags from a qwen3moe /
 * qwen2moe / llama file's metadata and tensors (a layer is a mixture when it
 * has blk.L.ffn_gate_inp.weight), and the architecture (llama with experts is
 * Mixtral). c's dense fields must be read already. 0 or -1 with ar_error
 * naming path. */
int ar_gguf_moe_read_config(const ar_gguf *g, const char *arch, const char *path, ar_config *c);

/* ---- stacking the experts of one tensor --------------------------------------- */

/* Experts arrive one by one (tuned blocks from ar-pack, or quantized at
 * finish) and the 3-D tensor is written once all E of it are there. */
typedef struct ar_gguf_stacks ar_gguf_stacks;

ar_gguf_stacks *ar_gguf_stacks_new(int n_experts);
/* The bytes of expert e of stacked tensor gname (type t, rows × cols each),
 * to be filled by the caller; the stack is made on first use. NULL with
 * ar_error when e is out of range, given before, or t / rows / cols differ
 * from the stack's other experts. */
void *ar_gguf_stack_slot(ar_gguf_stacks *s, const char *gname, int e, ar_ggml_type t, int64_t rows, int64_t cols);
/* 1 when expert e of gname has been filled (or the tensor written), else 0. */
int ar_gguf_stack_has(const ar_gguf_stacks *s, const char *gname, int e);
/* Expert e of gname is filled: when it is the last one, the 3-D tensor is
 * appended to w and its buffer freed. 0 or -1. */
int ar_gguf_stack_filled(ar_gguf_stacks *s, ar_gguf_writer *w, const char *gname, int e);
/* -1 with ar_error naming the first tensor with missing experts, else 0. */
int ar_gguf_stacks_check_complete(const ar_gguf_stacks *s, const char *model_dir);
void ar_gguf_stacks_free(ar_gguf_stacks *s);

#endif
