/* ggml_blocks.h — GGML block quantization types as numerical kernels (which
 * type each tensor of a llama.cpp mix gets is the exporter's policy:
 * formats/gguf_policy.h).
 *
 * No file I/O here: rows of f32 go in, block bytes come out (and back). The
 * reference quantizers (no importance matrix) produce the same bytes as
 * llama.cpp's `llama-quantize` without --imatrix; with an importance matrix
 * (one non-negative weight per input column, e.g. Σx² over calibration tokens)
 * the searches weight each element as llama.cpp's imatrix path does.
 *
 * Every quantized type is described by the same "grid" view, used by SignRound
 * tuning: a row is cut into groups of `group` elements; group g has a scale s_g
 * and a min m_g, codes are integers u in [0, qmax], and the weight they stand for
 * is  ŵ = s_g·(u − offset) − m_g.  Symmetric types (Q4_0, Q5_0, Q8_0, Q3_K, Q6_K)
 * have m_g = 0 and offset = 2^(b−1); asymmetric ones (Q4_1, Q5_1, Q2_K, Q4_K,
 * Q5_K) have offset 0. Given frozen (s, m), codes for rounding offsets V are
 *     u = clamp(round((w + m)/s + V) + offset, 0, qmax). */
#ifndef AR_GGML_BLOCKS_H
#define AR_GGML_BLOCKS_H
#include <stddef.h>
#include <stdint.h>

/* GGML tensor types; the values are ggml's, as stored in GGUF files. */
typedef enum {
    AR_GGML_F32 = 0, AR_GGML_F16 = 1, AR_GGML_Q4_0 = 2, AR_GGML_Q4_1 = 3,
    AR_GGML_Q5_0 = 6, AR_GGML_Q5_1 = 7, AR_GGML_Q8_0 = 8,
    AR_GGML_Q2_K = 10, AR_GGML_Q3_K = 11, AR_GGML_Q4_K = 12, AR_GGML_Q5_K = 13, AR_GGML_Q6_K = 14,
    AR_GGML_I8 = 24, AR_GGML_I16 = 25, AR_GGML_I32 = 26, AR_GGML_I64 = 27, AR_GGML_F64 = 28,
    AR_GGML_BF16 = 30,
    AR_GGML_TYPE_LIMIT = 64   /* values at or above this are never valid */
} ar_ggml_type;

/* Elements per block (1 for plain types, 32 for Q4_0..Q8_0, 256 for k-quants);
 * 0 for a type this library does not know. */
int ar_ggml_block_elems(ar_ggml_type t);
/* Bytes per block; 0 for an unknown type. */
size_t ar_ggml_block_bytes(ar_ggml_type t);
/* Bytes of a row of n elements, or 0 when n is not a multiple of the block size
 * or the type is unknown. */
size_t ar_ggml_row_bytes(ar_ggml_type t, int64_t n);
/* ggml's lower-case name: "f32", "q4_0", "q4_K", "bf16" ...; "?" if unknown. */
const char *ar_ggml_type_name(ar_ggml_type t);
/* Parse a type name, case-insensitive ("q4_k", "Q8_0", "f16"). -1 if unknown. */
int ar_ggml_type_parse(const char *name);
/* 1 for the block-quantized types (Q*), 0 for plain ones (F32, F16, BF16, ints). */
int ar_ggml_is_quantized(ar_ggml_type t);

/* Quantize nrows rows of n_per_row f32 values (row-major, contiguous) into dst,
 * which receives nrows·ar_ggml_row_bytes(t, n_per_row) bytes. imatrix: NULL, or
 * n_per_row importance weights shared by all rows (ignored by Q8_0 and the
 * plain types, as in llama.cpp). F32/F16/BF16 are converted (round to nearest
 * even). Rows are processed in parallel (OpenMP). Returns 0, or -1 with
 * ar_error set when the row length is not a multiple of the block size or the
 * type has no quantizer. */
int ar_ggml_quantize(ar_ggml_type t, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                     const float *imatrix);

/* Dequantize n elements (a multiple of the block size) of type t from src into
 * dst. Same arithmetic as ggml's dequantize_row_* (so values are bit-equal).
 * Returns 0 or -1 with ar_error set. */
int ar_ggml_dequantize(ar_ggml_type t, const void *src, float *dst, int64_t n);

/* ---- The grid view, for tuning rounding with frozen scales ------------------- */

/* Shape of a quantized type's grid (see the header comment). */
typedef struct {
    int group;    /* elements sharing one (scale, min): 32 for Q4_0..Q8_0 and Q4_K/Q5_K, 16 for Q2_K/Q3_K/Q6_K */
    int qmax;     /* largest stored code (codes are 0..qmax) */
    int offset;   /* subtracted from the stored code before scaling (0 for asymmetric types) */
    int asym;     /* 1 when groups carry a min */
} ar_ggml_grid;

/* Fill *g for a quantized type; -1 with ar_error for a plain or unknown type. */
int ar_ggml_grid_of(ar_ggml_type t, ar_ggml_grid *g);

/* Read the effective per-group scale s_g and min m_g (after the super-block
 * scales were coded, i.e. exactly what the dequantizer uses) from n elements'
 * worth of blocks. scale and min receive n/group floats each; min may be NULL.
 * Returns 0 or -1. */
int ar_ggml_frozen_params(ar_ggml_type t, const void *blocks, int64_t n, float *scale, float *min);

/* Fake-quantize n weights w with frozen per-group scale/min (from
 * ar_ggml_frozen_params) and rounding offsets v (NULL = all zero):
 * out = s·(clamp(round((w + m)/s + v) + offset, 0, qmax) − offset) − m, rounding
 * half to even. A group whose scale is 0 gives −m. Returns 0 or -1. */
int ar_ggml_fake_quant(ar_ggml_type t, const float *w, const float *v, const float *scale,
                       const float *min, int64_t n, float *out);

/* Recompute the codes stored in `blocks` (n elements, already holding the
 * frozen scales) from weights w and rounding offsets v (NULL = zero), keeping
 * every scale byte. Groups whose scale is 0 keep their codes. For the k-quants
 * with v = NULL this is llama.cpp's own final pass, so quantize followed by
 * requantize leaves the bytes unchanged. Returns 0 or -1. */
int ar_ggml_requantize_codes(ar_ggml_type t, const float *w, const float *v, void *blocks, int64_t n);

#endif
