/* gguf_mix.h — quantize a decoder block's linears for a llama.cpp GGUF mix
 * (Q4_K_M, ...) with importance matrices, as ar-tune's GGUF scheme does.
 *
 * Each linear gets the ggml type the caller chose for its tensor (llama.cpp's
 * policy for the mix, which the exporter knows: formats/gguf_policy.h) and is
 * quantized by the imatrix-weighted searches of ggml_blocks.h, with the importance of input column k being
 * Σ x_k² over the calibration tokens that reached it (the FP chain): the
 * searches only use relative values, so llama.cpp's per-token mean and this sum
 * give the same bytes. Rows stay in HF order (a GGUF writer permutes Q/K). */
#ifndef AR_GGUF_MIX_H
#define AR_GGUF_MIX_H
#include "block.h"
#include "block_desc.h"
#include "config.h"
#include "ggml_blocks.h"
#include "model.h"
#include <stddef.h>
#include <stdint.h>

/* One quantized linear: rows × cols in ggml blocks of type. */
typedef struct {
    ar_ggml_type type;
    int64_t      rows, cols;
    void        *blocks;     /* nbytes, malloc'd */
    size_t       nbytes;
} ar_gguf_qlinear;

/* Quantize the bd->nlinear linears of block `layer` described by bd
 * (weights w, HF layout; names and shapes from bd), linear i to ggml type
 * types[i]; imat (NULL, or bd->nlinear entries) has linear i's importance
 * per input column (K floats), a NULL one for llama.cpp's reference
 * quantizer (exactly llama-quantize without --imatrix).
 * out[i] (bd->nlinear entries) is filled for every linear (free with
 * ar_gguf_qlinears_free, also on failure). 0 or -1 with ar_error. */
int ar_gguf_quantize_block(const ar_ggml_type *types, const ar_block_desc *bd, int layer,
                           const ar_block_weights *w, float *const *imat, ar_gguf_qlinear *out);

/* Free the blocks of out[0..n) and zero them. */
void ar_gguf_qlinears_free(ar_gguf_qlinear *out, int n);

/* ---- Tensors outside the blocks ----------------------------------------------
 * llama-imatrix gives the output head no importance matrix (it never sees the
 * head's input), so llama-quantize quantizes output.weight by its plain
 * search; with calibration data we have that input (the final-normed hidden
 * states) and quantize the head as any other linear. The token embedding has
 * no matrix product and keeps the plain search; its quantized rows are what
 * block 0 reads in llama.cpp, so the tuner's quantized chain starts there. */

/* Importance of the token embedding's columns for its quantization search
 * (imp [C]). An error δ_k in column k of a token's row reaches block 0's
 * q/k/v projections through the RMSNorm as δ_k·rstd·g_k·W[:, k] (g: the
 * block's input_layernorm weight), of expected squared size proportional to
 * g_k²·Σ_{q,k,v} Σ_j W[j, k]² (q, k, v: bd's linears reading its first
 * input, "ln1"). Used as the imatrix of the embedding (which
 * llama-imatrix cannot have: the embedding is looked up, not multiplied). */
void ar_gguf_embedding_importance(const ar_block_desc *bd, const ar_config *c, const ar_block_weights *w0,
                                  float *imp);

/* Quantize model tensor hf_name ([rows, cols]; "model.embed_tokens.weight",
 * "lm_head.weight") to type t with importance imat (cols floats) or NULL,
 * reading it a slice of rows at a time (a 150k-row embedding is never widened
 * whole). out is filled (free out->blocks). 0 or -1 with ar_error. */
int ar_gguf_quantize_model_tensor(ar_model *m, const char *hf_name, int64_t rows, int64_t cols, ar_ggml_type t,
                                  const float *imat, ar_gguf_qlinear *out);

/* The rows of quantized embedding emb for token ids[0..n), dequantized as
 * llama.cpp's get_rows does and rounded to bf16: out [n, cols]. Ids outside
 * the embedding are an error. 0 or -1 with ar_error. */
int ar_gguf_embed_lookup(const ar_gguf_qlinear *emb, const int32_t *ids, size_t n, uint16_t *out);

#endif
