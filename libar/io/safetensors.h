/* safetensors.h — read-only access to Hugging Face safetensors checkpoints.
 *
 * A file is mapped with mmap and its JSON header is validated in full before
 * any tensor is handed out: header length within the file, known dtypes,
 * shapes whose element count times dtype size equals the span given by
 * data_offsets, spans inside the data area and not overlapping. A model
 * directory holds either one "model.safetensors" or several shards listed in
 * "model.safetensors.index.json" (weight_map: tensor name -> shard file); both
 * open as one set of tensors looked up by name. */
#ifndef AR_SAFETENSORS_H
#define AR_SAFETENSORS_H
#include "dtype.h"
#include <stddef.h>
#include <stdint.h>

/* Most dimensions a safetensors tensor may have here (more is rejected). */
#define AR_ST_MAX_DIMS 8

/* One tensor as the header describes it; data points into the mapping and
 * stays valid until ar_st_close. */
typedef struct {
    const char *name;
    ar_dtype    dtype;
    int         ndim;
    int64_t     shape[AR_ST_MAX_DIMS];
    int64_t     numel;              /* product of shape (1 for a scalar) */
    size_t      nbytes;             /* numel * dtype size */
    const void *data;
    const char *file;               /* path of the file (shard) holding it */
} ar_st_tensor;

/* An opened file or model directory (opaque). */
typedef struct ar_safetensors ar_safetensors;

/* Map and validate one .safetensors file. NULL with ar_error set, e.g.
 * "m.safetensors: header length 1000000 exceeds file size 4096". */
ar_safetensors *ar_st_open_file(const char *path);

/* Open a model directory: DIR/model.safetensors.index.json when present
 * (every shard it names is opened and every weight_map entry must be found in
 * its shard), else DIR/model.safetensors. */
ar_safetensors *ar_st_open_dir(const char *dir);

/* The tensor called name, or NULL (no error set) when there is none. */
const ar_st_tensor *ar_st_find(const ar_safetensors *st, const char *name);

/* The file or index path the checkpoint was opened from, for messages. */
const char *ar_st_label(const ar_safetensors *st);

/* Number of tensors, and the i-th in name order (for iteration), 0 <= i < count. */
size_t ar_st_count(const ar_safetensors *st);
const ar_st_tensor *ar_st_at(const ar_safetensors *st, size_t i);

/* Widen rows [row0, row0+nrows) of tensor name (rows along dimension 0; a 1-D
 * tensor has one element per row) from F32/F16/BF16, or from F8_E4M3 with its
 * scale after ar_st_set_fp8, into dst. -1 with ar_error when the tensor is
 * missing, the rows are out of range, or the dtype is not a float type. */
int ar_st_read_rows_f32(const ar_safetensors *st, const char *name, int64_t row0, int64_t nrows, float *dst);

/* Widen the whole tensor into dst, which holds n floats (n must equal numel). */
int ar_st_read_f32(const ar_safetensors *st, const char *name, float *dst, size_t n);

/* ---- FP8 checkpoints -------------------------------------------------------
 *
 * Checkpoints that ship their linear weights already quantized to FP8 E4M3
 * store each such weight NAME as F8_E4M3 [out, in] beside a float scale
 * (F32, BF16 or F16):
 *   - "fp8" (DeepSeek-V3, the Qwen3 FP8 releases; config.json
 *     quantization_config {"quant_method": "fp8", "fmt": "e4m3",
 *     "weight_block_size": [bh, bw]}): NAME_scale_inv [ceil(out/bh),
 *     ceil(in/bw)], one scale per bh x bw block, edge blocks partial;
 *     without weight_block_size one scale for the whole tensor;
 *   - compressed-tensors "float-quantized" (8-bit float weights):
 *     NAME_scale, [1] (strategy tensor), [out, 1] (channel) or the block grid
 *     of block_structure [bh, bw] (block); other strategies (group: MXFP8)
 *     are not widened here.
 * The weight is w[r][c] = e4m3(q[r][c]) * s[r / bh][c / bw], the product
 * taken in f32 and rounded to the checkpoint's dtype (bf16 unless config.json
 * says float16 or float32), as transformers' dequantizing load computes it.
 * Embeddings, norms, lm_head and any layer the producer left out stay in
 * their float dtype and read as usual. */

/* What a quantization_config says about FP8 weights. */
typedef struct {
    int      on;            /* 1: the checkpoint holds FP8 weights to widen */
    int      block[2];      /* rows, columns of a scale block; 0, 0: per tensor or per row, from the scale's shape */
    ar_dtype out;           /* the dtype the products are rounded to (AR_BF16, AR_F16 or AR_F32) */
    char     method[32];    /* quant_method: "fp8" or "compressed-tensors" */
    char     suffix[16];    /* "_scale_inv" or "_scale" */
} ar_st_fp8;

/* Read DIR/config.json's quantization_config into *f: f->on = 0 when there is
 * none or it describes no FP8 weights (other methods are left to their own
 * readers). -1 with ar_error for an FP8 config that cannot be honoured, e.g.
 * "m/config.json: fp8 weight_block_size must be two positive integers". */
int ar_st_fp8_config(const char *dir, ar_st_fp8 *f);

/* Widen st's F8_E4M3 tensors through their scales as f describes (f->on must
 * be 1). Every F8_E4M3 tensor is checked now: -1 with ar_error naming the file
 * and tensor when its scale is missing or has the wrong shape or dtype. */
int ar_st_set_fp8(ar_safetensors *st, const ar_st_fp8 *f);

/* ar_st_open_dir, then ar_st_set_fp8 when config.json describes FP8 weights:
 * the way to open a model folder whose weights are read as floats. */
ar_safetensors *ar_st_open_model(const char *dir);

/* The FP8 description st was opened with, or NULL for a plain checkpoint. */
const ar_st_fp8 *ar_st_fp8_of(const ar_safetensors *st);

/* 1 when tensor name is an FP8 weight st widens, 2 when it is the scale of
 * one (a reader copying tensors skips it), else 0. */
int ar_st_fp8_role(const ar_safetensors *st, const char *name);

/* Unmap everything and free st (NULL is fine). */
void ar_st_close(ar_safetensors *st);

#endif
