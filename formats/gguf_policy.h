/* gguf_policy.h — llama.cpp's quantization mixes (Q4_K_M, ...) as an
 * exporter sees them: the file types, the ggml type each tensor gets in a mix
 * (llama.cpp's per-tensor policy) and the HF <-> llama.cpp tensor names. The
 * block quantizers themselves are libar's (ggml_blocks.h); ar-tune gives the
 * library pipeline this policy's choice for each tensor (tune.h's gguf_type).
 */
#ifndef AR_GGUF_POLICY_H
#define AR_GGUF_POLICY_H
#include "config.h"
#include "ggml_blocks.h"
#include <stddef.h>
#include <stdint.h>

/* llama.cpp's file types ("general.file_type"); values are llama.h's. */
typedef enum {
    AR_FTYPE_ALL_F32 = 0, AR_FTYPE_F16 = 1, AR_FTYPE_Q4_0 = 2, AR_FTYPE_Q4_1 = 3,
    AR_FTYPE_Q8_0 = 7, AR_FTYPE_Q5_0 = 8, AR_FTYPE_Q5_1 = 9, AR_FTYPE_Q2_K = 10,
    AR_FTYPE_Q3_K_S = 11, AR_FTYPE_Q3_K_M = 12, AR_FTYPE_Q3_K_L = 13, AR_FTYPE_Q4_K_S = 14,
    AR_FTYPE_Q4_K_M = 15, AR_FTYPE_Q5_K_S = 16, AR_FTYPE_Q5_K_M = 17, AR_FTYPE_Q6_K = 18,
    AR_FTYPE_Q2_K_S = 21, AR_FTYPE_BF16 = 32
} ar_gguf_ftype;

/* Parse a mix name as llama-quantize spells it, case-insensitive: "Q4_K_M",
 * "q8_0", "f16", "bf16", "f32", "Q3_K" (= Q3_K_M), "Q4_K" (= Q4_K_M),
 * "Q5_K" (= Q5_K_M). -1 if unknown. */
int ar_gguf_ftype_parse(const char *name);
/* Canonical upper-case name ("Q4_K_M"); "?" if unknown. */
const char *ar_gguf_ftype_name(ar_gguf_ftype f);
/* The base tensor type of a mix (Q4_K for Q4_K_M, F16 for F16, ...). */
ar_ggml_type ar_gguf_ftype_base(ar_gguf_ftype f);

/* What the type policy needs to know about the model. */
typedef struct {
    int n_layers;      /* block_count */
    int n_gqa;         /* n_heads / n_kv_heads */
    int n_expert;      /* 0 or 1 for dense models */
    int has_output;    /* the file has its own output.weight (not tied to token_embd) */
    int has_imatrix;   /* an importance matrix is used */
    int falcon;        /* Falcon architecture (different ffn_down / attn_output rules) */
} ar_gguf_model_info;

/* Type of one tensor (GGUF name, e.g. "blk.3.ffn_down.weight") of n_dims
 * dimensions whose rows have ne0 elements, in file type f: llama.cpp's
 * llama_tensor_get_type plus the outer rules (1-D and *_norm tensors stay F32;
 * output.weight Q6_K/Q8_0; attn_v/ffn_down bumps by layer; a row length that
 * the block size does not divide falls back to Q5_0/Q5_1/Q8_0, then F16).
 * Deviation: llama.cpp falls back from Q2_K/Q3_K to IQ4_NL, which this library
 * does not implement; we use Q5_0 (as AutoRound does). */
ar_ggml_type ar_gguf_tensor_type(ar_gguf_ftype f, const ar_gguf_model_info *m, const char *name,
                                 int n_dims, int64_t ne0);

/* ---- Tensor names ------------------------------------------------------------ */

/* Map an HF tensor name to llama.cpp's ("model.layers.3.mlp.down_proj.weight" ->
 * "blk.3.ffn_down.weight"). Returns 1 and fills out, 0 for a tensor llama.cpp
 * does not store (rotary inv_freq), -1 with ar_error for an unknown name. The
 * type policy above speaks these names, hence the map lives here. */
int ar_gguf_map_name(const char *hf_name, char *out, size_t out_size);

/* 1 when hf names one routed expert's projection —
 * "model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight", or Mixtral's
 * older "model.layers.L.block_sparse_moe.experts.E.{w1,w3,w2}.weight" — with
 * the stacked GGUF name "blk.L.ffn_{gate,up,down}_exps.weight" in gname and
 * E in *expert; 0 for any other name. */
int ar_gguf_expert_name(const char *hf, char *gname, size_t cap, int *expert);

/* ar_gguf_map_name for a model of config c: Gemma's post_attention_layernorm
 * follows attention (llama.cpp's blk.N.post_attention_norm), where Llama's
 * precedes the MLP (blk.N.ffn_norm). */
int ar_gguf_map_name_for(const ar_config *c, const char *hf_name, char *out, size_t out_size);

/* The softmax scale llama.cpp's gemma2/gemma3 use whatever the model's
 * query_pre_attn_scalar: 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the
 * 27B models it recognises by their 46 / 62 layers (llama.cpp
 * src/models/gemma2.cpp, gemma3.cpp). */
double ar_gguf_gemma_attn_scale(const ar_config *c);

/* The inverse: llama.cpp's name to HF's. Returns 1 and fills out, or 0 for a
 * name with no HF counterpart (rope_freqs.weight, unknown tensors); no error set. */
int ar_gguf_unmap_name(const char *gguf_name, char *out, size_t out_size);

/* ---- The policy for an HF model ----------------------------------------------- */

/* The type policy's view of a model of config c; has_output: the model has its
 * own lm_head (not tied to the embeddings); has_imatrix: importance matrices
 * are used (changes a few choices of the legacy mixes). */
ar_gguf_model_info ar_gguf_info_for(const ar_config *c, int has_output, int has_imatrix);

/* The type mix f gives HF tensor hf_name ("model.layers.3.mlp.down_proj.weight",
 * "model.embed_tokens.weight", "lm_head.weight"; 2-D, rows of cols elements)
 * of a model of config c (its own lm_head unless the embeddings are tied),
 * with importance matrices when has_imatrix: ar_gguf_tensor_type under the
 * llama.cpp name. F32 for a name llama.cpp does not have. */
ar_ggml_type ar_gguf_hf_tensor_type(ar_gguf_ftype f, const ar_config *c, const char *hf_name, int64_t cols,
                                    int has_imatrix);

#endif
