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

/* Number of tensors, and the i-th in name order (for iteration), 0 <= i < count. */
size_t ar_st_count(const ar_safetensors *st);
const ar_st_tensor *ar_st_at(const ar_safetensors *st, size_t i);

/* Widen rows [row0, row0+nrows) of tensor name (rows along dimension 0; a 1-D
 * tensor has one element per row) from F32/F16/BF16 into dst. -1 with
 * ar_error when the tensor is missing, the rows are out of range, or the dtype
 * is not a float type. */
int ar_st_read_rows_f32(const ar_safetensors *st, const char *name, int64_t row0, int64_t nrows, float *dst);

/* Widen the whole tensor into dst, which holds n floats (n must equal numel). */
int ar_st_read_f32(const ar_safetensors *st, const char *name, float *dst, size_t n);

/* Unmap everything and free st (NULL is fine). */
void ar_st_close(ar_safetensors *st);

#endif
