/* model.h — an opened decoder-only model: its config plus a source of
 * weights, and the full forward built from ar_block_forward.
 *
 * Weights are reached only through ar_tensor_source, a table of functions
 * that answers "what shape has tensor NAME" and "widen rows of NAME to f32".
 * The default source reads a safetensors model directory; other sources
 * (exported auto_round / GPTQ / AWQ folders, GGUF files) plug in by filling
 * the same table and dequantizing in read_rows. Names are Hugging Face's:
 * "model.embed_tokens.weight", "model.layers.3.self_attn.q_proj.weight", ...
 *
 * The forward streams block by block: one block's weights are widened, the
 * block runs on all B*T rows, and the next block reuses the same buffers.
 * With AR_MODEL_CACHE every widened weight is kept instead (fast for small
 * models; memory = 4 bytes per parameter). */
#ifndef AR_MODEL_H
#define AR_MODEL_H
#include "block.h"
#include "block_desc.h"
#include "config.h"
#include <stdint.h>

#define AR_SRC_MAX_DIMS 8

/* A provider of weights by Hugging Face tensor name. */
typedef struct ar_tensor_source {
    void *ctx;
    /* Shape of tensor name: returns 0 and fills *ndim, shape; 1 when the source
     * has no such tensor (no error set); -1 on failure (ar_error). */
    int (*shape)(void *ctx, const char *name, int *ndim, int64_t shape[AR_SRC_MAX_DIMS]);
    /* Widen rows [row0, row0+nrows) along dimension 0 (a 1-D tensor has one
     * element per row) into dst as f32. 0 or -1 (ar_error). */
    int (*read_rows)(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst);
    /* Release ctx (may be NULL). */
    void (*close)(void *ctx);
} ar_tensor_source;

/* Fill src with the safetensors source of model directory dir (single file
 * or sharded; FP8 weights of a quantized checkpoint widened through their
 * scales, see ar_st_open_model). 0, or -1 with ar_error naming the file and
 * the problem. */
int ar_source_safetensors(ar_tensor_source *src, const char *dir);

/* Keep every widened weight in memory between forwards. */
enum { AR_MODEL_CACHE = 1 };

typedef struct ar_model ar_model;

/* Open dir: config.json plus the safetensors source. flags: AR_MODEL_CACHE or 0.
 * NULL with ar_error set. */
ar_model *ar_model_open(const char *dir, int flags);

/* Open a model over any source; takes ownership of src (closed on failure
 * too). Tensor shapes are checked against c here, so a mismatched source fails
 * now rather than in the middle of a forward. */
ar_model *ar_model_open_source(const ar_config *c, const ar_tensor_source *src, int flags);

void ar_model_close(ar_model *m);

/* The model's config. */
const ar_config *ar_model_config(const ar_model *m);

/* The description of m's blocks (block_desc.h), valid while m is open. For
 * a mixture-of-experts model: that of its MoE layers (dense layers differ,
 * ar_model_layer_desc). */
const ar_block_desc *ar_model_block_desc(const ar_model *m);

/* The description of block layer of m. */
const ar_block_desc *ar_model_layer_desc(const ar_model *m, int layer);

/* Allocate f32 buffers for one block of config c, its pointer arrays sized
 * by the block description (NULL for tensors the architecture lacks), to be
 * filled by ar_model_load_block and reused. ar_block_weights_free frees the
 * tensors and the arrays (safe on a zeroed or failed w). */
int  ar_block_weights_alloc(ar_block_weights *w, const ar_config *c);
/* The same for block layer (mixtures of experts: MoE and dense layers differ). */
int  ar_block_weights_alloc_layer(ar_block_weights *w, const ar_config *c, int layer);
void ar_block_weights_free(ar_block_weights *w);

/* Widen block layer's weights into w (from ar_block_weights_alloc); a tensor
 * whose buffer the caller freed and set to NULL is not read (expert parallel:
 * other ranks' experts). */
int ar_model_load_block(ar_model *m, int layer, ar_block_weights *w);

/* Widen rows [row0, row0+nrows) of any tensor of m's source by its Hugging
 * Face name (e.g. "model.norm.weight", "lm_head.weight") into dst, as the
 * GPU forward copies weights. 0, or -1 with ar_error. */
int ar_model_read_tensor(ar_model *m, const char *name, int64_t row0, int64_t nrows, float *dst);

/* Embedding rows: out [n, C] = embed_tokens[ids[i]] (times c->embed_scale,
 * sqrt(hidden) for Gemma, in f32). Ids outside the vocab are an error. */
int ar_model_embed(ar_model *m, const int *ids, int n, float *out);

/* Final RMSNorm in place on x [rows, C] (Gemma's scales by 1 + w). */
int ar_model_final_norm(ar_model *m, float *x, int rows);

/* A new f32 copy of the output head [V, C] (lm_head, or embed_tokens when
 * tied; free() it), and in *norm_w the final RMSNorm's effective weight [C]
 * (1 + w for Gemma; owned by m). Gemma 2's final soft-cap is not applied by
 * callers of this one (ar_model_logits applies it).
 * NULL with ar_error. */
float *ar_model_read_head(ar_model *m, const float **norm_w);
/* logits [rows, V] = x [rows, C] . lm_head^T (embed_tokens when tied), one
 * sgemm per chunk of the vocabulary, then c->final_softcap's cap * tanh(l / cap)
 * when set (Gemma 2). x is the final-normed hidden state. */
int ar_model_logits(ar_model *m, const float *x, int rows, float *logits);

/* Fake-quantize the inputs of block layer's linears with aq (NULL, or one
 * entry per linear of ar_model_block_desc, NULL entries: not quantized) in every later CPU forward of m, as AutoRound keeps
 * the activation quantizers of a W4A4/W8A8 model it evaluates (spec §2.12).
 * 0, or -1 with ar_error for a layer out of range or out of memory. */
int ar_model_set_act_quant(ar_model *m, int layer, const ar_act_spec *const *aq);

/* 1 when some linear of m has an activation quantizer set. */
int ar_model_has_act_quant(const ar_model *m);

/* Fake-quantize block layer's K (after RoPE) and V to FP8 E4M3 with static
 * scales k_scale, v_scale (quant_kv.h; 0: that one off) in every later CPU
 * forward of m, as a static FP8 KV cache (AutoRound's static_kv_dtype, a
 * compressed-tensors kv_cache_scheme) would hold them. Off by default. 0, or
 * -1 with ar_error for a layer out of range, a negative or non-finite scale,
 * or out of memory. */
int ar_model_set_kv_quant(ar_model *m, int layer, float k_scale, float v_scale);

/* 1 when some layer of m has a KV-cache scale set. */
int ar_model_has_kv_quant(const ar_model *m);

/* Run embeddings and every block on B sequences of T tokens (ids [B*T]),
 * then the final norm: hidden [B*T, C]. */
int ar_model_hidden(ar_model *m, const int *ids, int B, int T, float *hidden);

/* Full forward: logits [B*T, V]. */
int ar_model_forward(ar_model *m, const int *ids, int B, int T, float *logits);

/* Per-position negative log-likelihood of the next token:
 * nll [B, T-1], nll[b*(T-1)+t] = -log p(ids[b,t+1] | ids[b,0..t]), computed in
 * double from chunks of logits (the full [B*T, V] array is never held). */
int ar_model_nll(ar_model *m, const int *ids, int B, int T, double *nll);

/* In place: each of rows rows of x [rows, n] becomes its log-softmax
 * (log-sum-exp in double). */
void ar_log_softmax_rows(float *x, int rows, int n);

#endif
