/* safetensors_writer.h — write Hugging Face safetensors checkpoints, streamed.
 *
 * Tensors arrive one at a time, each announced with its name, dtype and shape
 * and then supplied in any number of byte pieces, so a caller never needs a
 * whole model (or even a whole tensor) in memory. A shard's header can only be
 * written once all its tensors are known, so each shard's data goes to a
 * scratch file first and is copied behind the header when the shard closes.
 *
 * Sharding follows transformers' save_pretrained: tensors are taken in the
 * order given; a new shard starts when the next tensor would push the current
 * one past max_shard_bytes (a tensor larger than the limit gets a shard of its
 * own). One shard is written as DIR/model.safetensors; several as
 * DIR/model-0000i-of-0000N.safetensors plus DIR/model.safetensors.index.json
 * ({"metadata": {"total_size": ...}, "weight_map": {name: file}}, keys sorted,
 * indent 2). Each header is the JSON object {"__metadata__":{"format":"pt"},
 * name: {"dtype","shape","data_offsets"}, ...} padded with spaces to a
 * multiple of 8 bytes.
 *
 * The writer writes straight into DIR; making DIR appear atomically is the
 * caller's business (see hf_folder.h). */
#ifndef AR_SAFETENSORS_WRITER_H
#define AR_SAFETENSORS_WRITER_H
#include "dtype.h"
#include <stddef.h>
#include <stdint.h>

/* transformers' default max_shard_size ("5GB" = 5e9 bytes). */
#define AR_STW_DEFAULT_SHARD ((uint64_t)5000000000ULL)

typedef struct ar_stw ar_stw;

/* Parse a size as transformers does: digits (optionally with a fraction)
 * followed by B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB
 * (powers of 1024), case-insensitive; a bare number is bytes. Returns 0 and
 * sets *bytes, or -1 with ar_error ("max shard size '5XB': unknown unit"). */
int ar_parse_size(const char *text, uint64_t *bytes);

/* Start writing into the existing directory dir; max_shard_bytes 0 means
 * AR_STW_DEFAULT_SHARD. NULL with ar_error on failure. */
ar_stw *ar_stw_open(const char *dir, uint64_t max_shard_bytes);

/* Announce the next tensor. Its numel*dtype-size bytes must then be supplied
 * with ar_stw_write before the next ar_stw_begin or ar_stw_close. Names must be
 * unique; ndim 0 is a scalar. Returns 0 or -1 with ar_error. */
int ar_stw_begin(ar_stw *w, const char *name, ar_dtype dtype, int ndim, const int64_t *shape);

/* Append n bytes of the current tensor (pieces may be any size, but not more
 * than the tensor has left). Returns 0 or -1 with ar_error. */
int ar_stw_write(ar_stw *w, const void *data, size_t n);

/* Convenience: begin + one write of the whole tensor. */
int ar_stw_put(ar_stw *w, const char *name, ar_dtype dtype, int ndim, const int64_t *shape, const void *data);

/* Finish the last shard, give the shards their final names, write the index
 * when there are several, free w. Returns 0 or -1 with ar_error (w is freed
 * either way). */
int ar_stw_close(ar_stw *w);

/* Give up: remove every file this writer created and free w (NULL is fine). */
void ar_stw_abort(ar_stw *w);

#endif
