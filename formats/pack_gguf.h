/* pack_gguf.h — ar-pack's GGUF output: a llama.cpp model file assembled from
 * ar-tune's stream plus the original model folder.
 *
 * Tensors tuned by ar-tune arrive either as integer layers (ar_qlayer, from a
 * GGUF-compatible int scheme) or as raw GGML blocks (records "<hf name>.gguf"
 * from a GGUF scheme); every other tensor of the model (embeddings, norms,
 * output head, untuned layers) is quantized at finish with llama.cpp's type
 * policy for the requested mix. */
#ifndef AR_PACK_GGUF_H
#define AR_PACK_GGUF_H
#include "gguf_policy.h"
#include "packing.h"
#include <stddef.h>

typedef struct ar_pack_gguf ar_pack_gguf;

/* Start a GGUF output at out_path for the model folder model_dir; type is the
 * lower-case mix name after "gguf:" ("q4_k_m"), scheme the stream's scheme
 * name. NULL with ar_error for an unknown type or an unusable model. */
ar_pack_gguf *ar_pack_gguf_open(const char *model_dir, const char *out_path, const char *type, const char *scheme);

/* The same, writing into folder dir a file named as llama.cpp's converter
 * names its files (output_names.h: "tiny-llama-20M-Q4_K_M.gguf"), the name
 * being known once the file is complete. A dir that does not exist is
 * written as "DIR.tmp.PID" and renamed at finish, so it appears complete or
 * not at all; into an existing folder, the file is moved from that temporary
 * folder at finish. dir must not be an existing non-folder. */
ar_pack_gguf *ar_pack_gguf_open_dir(const char *model_dir, const char *dir, const char *type, const char *scheme);

/* An integer layer from ar-tune. Returns 0, or -1 with ar_error when its
 * scheme has no GGUF equivalent. */
int ar_pack_gguf_layer(ar_pack_gguf *p, const ar_qlayer *l);

/* Raw GGML blocks of HF tensor hf_name ("model.layers.0.mlp.up_proj.weight")
 * in type t, rows in HF order (the writer permutes Q/K rows where llama.cpp's
 * layout needs it). */
int ar_pack_gguf_raw(ar_pack_gguf *p, const char *hf_name, ar_ggml_type t, int64_t n_rows, int64_t n_cols,
                     const void *blocks, size_t nbytes);

/* Quantize and add everything not given, write metadata and tokenizer, rename
 * into place. Frees p on success; on failure p must still be aborted. */
int ar_pack_gguf_finish(ar_pack_gguf *p);

/* ar_pack_gguf_finish, also copying the path of the file written (for an
 * output opened with ar_pack_gguf_open_dir, DIR/<llama.cpp name>) into path
 * (cap bytes) when path is not NULL. */
int ar_pack_gguf_finish_path(ar_pack_gguf *p, char *path, size_t cap);

/* Remove temporary files and free p (NULL is fine). */
void ar_pack_gguf_abort(ar_pack_gguf *p);

#endif
