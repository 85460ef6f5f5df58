/* gguf.h — GGUF v3 files (llama.cpp's model format): a validating reader, a
 * streaming writer, and the pieces that make a llama.cpp-loadable model from a
 * Hugging Face directory (tensor names, Q/K RoPE permutation, hyper-parameters,
 * embedded tokenizer).
 *
 * Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 KV count,
 * KV pairs (string key, u32 value type, value), tensor infos (string name, u32
 * n_dims, u64 ne[n_dims], u32 ggml type, u64 offset), padding to the alignment
 * (general.alignment, default 32), then the tensor data, each tensor starting
 * at an aligned offset. A string is a u64 length and that many bytes. */
#ifndef AR_FORMATS_GGUF_H
#define AR_FORMATS_GGUF_H
#include "config.h"
#include "gguf_policy.h"
#include <stddef.h>
#include <stdint.h>

#define AR_GGUF_MAX_DIMS 4
#define AR_GGUF_DEFAULT_ALIGNMENT 32

/* GGUF metadata value types (values as in the file). */
typedef enum {
    AR_GGUF_UINT8 = 0, AR_GGUF_INT8 = 1, AR_GGUF_UINT16 = 2, AR_GGUF_INT16 = 3, AR_GGUF_UINT32 = 4,
    AR_GGUF_INT32 = 5, AR_GGUF_FLOAT32 = 6, AR_GGUF_BOOL = 7, AR_GGUF_STRING = 8, AR_GGUF_ARRAY = 9,
    AR_GGUF_UINT64 = 10, AR_GGUF_INT64 = 11, AR_GGUF_FLOAT64 = 12, AR_GGUF_VTYPE_COUNT
} ar_gguf_vtype;

/* ---- reader ---------------------------------------------------------------- */

/* One metadata pair. Pointers stay valid until ar_gguf_close. */
typedef struct {
    const char    *key;        /* NUL-terminated copy */
    ar_gguf_vtype  type;       /* AR_GGUF_ARRAY for arrays */
    ar_gguf_vtype  elem_type;  /* arrays: element type; otherwise == type */
    uint64_t       n;          /* arrays: element count; 1 otherwise */
    const void    *data;       /* scalar or numeric array bytes in the mapping (may be unaligned) */
    const char    *str;        /* STRING: NUL-terminated copy of the value */
    const uint64_t *str_off;   /* string arrays: file offset of each element's length field */
} ar_gguf_kv;

/* One tensor. data points into the mapping. */
typedef struct {
    const char  *name;
    ar_ggml_type type;
    int          n_dims;
    int64_t      ne[AR_GGUF_MAX_DIMS];   /* ne[0] is the row length; unused dims are 1 */
    uint64_t     offset;                  /* relative to the data section */
    size_t       nbytes;
    const void  *data;
} ar_gguf_tensor;

typedef struct ar_gguf ar_gguf;

/* Map and validate a GGUF file: magic, version 2 or 3, counts and string
 * lengths bounded by the file size before anything is allocated, known value
 * and tensor types, no nested arrays, power-of-two alignment, tensor shapes
 * whose rows fit the type's block, aligned offsets with the data inside the
 * file, unique names. NULL with ar_error set ("PATH: tensor 'x' data at ...
 * runs past end of file (size N)"). */
ar_gguf *ar_gguf_open(const char *path);
/* Unmap and free (NULL is fine). */
void ar_gguf_close(ar_gguf *g);

/* Format version of the file (3 for files written here). */
uint32_t ar_gguf_version(const ar_gguf *g);
/* Number of KV pairs, and the i-th in file order. */
size_t ar_gguf_n_kv(const ar_gguf *g);
const ar_gguf_kv *ar_gguf_kv_at(const ar_gguf *g, size_t i);
/* The pair with this key, or NULL (no error set). */
const ar_gguf_kv *ar_gguf_find_kv(const ar_gguf *g, const char *key);
/* Scalar value of an integer or bool pair as int64 (0 for other types). */
int64_t ar_gguf_kv_int(const ar_gguf_kv *kv);
/* Scalar value of a float or integer pair as double. */
double ar_gguf_kv_float(const ar_gguf_kv *kv);
/* The pair "<arch>.<key>" (llama.cpp's name for a family's hyper-parameter),
 * or NULL; and its integer / float value, or def when absent. */
const ar_gguf_kv *ar_gguf_find_arch_kv(const ar_gguf *g, const char *arch, const char *key);
int64_t ar_gguf_arch_int(const ar_gguf *g, const char *arch, const char *key, int64_t def);
double ar_gguf_arch_float(const ar_gguf *g, const char *arch, const char *key, double def);
/* Element i of a numeric array as double / int64 (0 when out of range). */
double ar_gguf_kv_arr_float(const ar_gguf_kv *kv, uint64_t i);
int64_t ar_gguf_kv_arr_int(const ar_gguf_kv *kv, uint64_t i);
/* Element i of a string array: pointer into the mapping (not NUL-terminated)
 * and its length. Returns 0, or -1 when kv is not a string array or i is out of range. */
int ar_gguf_kv_arr_str(const ar_gguf *g, const ar_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len);

/* Number of tensors, the i-th in file order, and lookup by name (NULL if absent). */
size_t ar_gguf_n_tensors(const ar_gguf *g);
const ar_gguf_tensor *ar_gguf_tensor_at(const ar_gguf *g, size_t i);
const ar_gguf_tensor *ar_gguf_find_tensor(const ar_gguf *g, const char *name);
/* Dequantize/widen a whole tensor into dst (numel floats). 0 or -1. */
int ar_gguf_tensor_f32(const ar_gguf_tensor *t, float *dst);
/* Number of elements of a tensor. */
int64_t ar_gguf_tensor_numel(const ar_gguf_tensor *t);

/* ---- writer ---------------------------------------------------------------- */

typedef struct ar_gguf_writer ar_gguf_writer;

/* Start a file at path. Tensor data is spooled to "PATH.tmp.data" as tensors
 * arrive; ar_gguf_writer_finish writes "PATH.tmp" (header, metadata, tensor
 * infos, data) and renames it to path. NULL with ar_error set. */
ar_gguf_writer *ar_gguf_writer_open(const char *path);

/* Metadata setters: setting a key again replaces its value; order of first
 * setting is kept. Each returns 0 or -1 (out of memory). */
int ar_gguf_set_u32(ar_gguf_writer *w, const char *key, uint32_t v);
int ar_gguf_set_i32(ar_gguf_writer *w, const char *key, int32_t v);
int ar_gguf_set_u64(ar_gguf_writer *w, const char *key, uint64_t v);
int ar_gguf_set_f32(ar_gguf_writer *w, const char *key, float v);
int ar_gguf_set_bool(ar_gguf_writer *w, const char *key, int v);
/* The same for the key "<arch>.<key>". */
int ar_gguf_set_arch_u32(ar_gguf_writer *w, const char *arch, const char *key, uint32_t v);
int ar_gguf_set_arch_f32(ar_gguf_writer *w, const char *arch, const char *key, float v);
int ar_gguf_set_arch_bool(ar_gguf_writer *w, const char *arch, const char *key, int v);
int ar_gguf_set_str(ar_gguf_writer *w, const char *key, const char *v);
/* Arrays: n elements of elem_type (numeric types: raw little-endian values). */
int ar_gguf_set_arr(ar_gguf_writer *w, const char *key, ar_gguf_vtype elem_type, const void *v, uint64_t n);
/* Array of n strings (each NUL-terminated). */
int ar_gguf_set_arr_str(ar_gguf_writer *w, const char *key, const char *const *v, uint64_t n);

/* Append one tensor: name, type, n_dims (1..4) dims ne (ggml order: ne[0] is
 * the row length), data of nbytes (must equal the type's size for that shape).
 * The bytes are written out immediately. 0 or -1 (bad shape, duplicate name,
 * I/O error). */
int ar_gguf_writer_add_tensor(ar_gguf_writer *w, const char *name, ar_ggml_type type, int n_dims,
                              const int64_t *ne, const void *data, size_t nbytes);

/* Write the complete file and rename it into place; frees w in every case.
 * 0 or -1 (temporary files removed on failure). */
int ar_gguf_writer_finish(ar_gguf_writer *w);
/* Give up: remove temporary files and free w (NULL is fine). */
void ar_gguf_writer_abort(ar_gguf_writer *w);

/* ---- Hugging Face model -> llama.cpp GGUF ------------------------------------ */

/* llama.cpp architecture name for a config: "llama" (Llama, Mistral, Mixtral), "qwen2", "qwen3", "gemma2",
 * "gemma3", "phi3", "glm4", "qwen3moe", "qwen2moe" (gguf_moe.h), "deepseek2", "gpt-oss" (gguf_ds_oss.h). */
const char *ar_gguf_arch_name(const ar_config *c);

/* HF <-> llama.cpp tensor names: ar_gguf_map_name / ar_gguf_unmap_name (gguf_policy.h). */

/* Permute the rows of a Q or K projection (rows = n_head·head_dim, each row
 * `cols` long; cols = 1 for a bias) from HF's rotate-half layout to llama.cpp's
 * interleaved RoPE layout: within each head, row 2i+k comes from row k·d/2 + i.
 * Only for arch "llama" (qwen2/qwen3 use NEOX RoPE and keep HF order). */
int ar_gguf_permute_qk(float *w, int64_t rows, int64_t cols, int n_head);

/* Set the model's metadata as llama.cpp's converter does: general.* (name =
 * `name`), the architecture hyper-parameters, file_type, quantization_version,
 * and the tokenizer read from model_dir/tokenizer.json and tokenizer_config.json
 * ("llama" for SentencePiece-style BPE with byte fallback, "gpt2" for byte-level
 * BPE). 0 or -1 with ar_error naming the file. */
int ar_gguf_set_model_metadata(ar_gguf_writer *w, const ar_config *c, const char *model_dir, const char *name,
                               ar_gguf_ftype ftype);
/* Only the tokenizer part of the above. */
int ar_gguf_set_tokenizer(ar_gguf_writer *w, const char *model_dir);

/* Permute rows of any element size (row_bytes each: floats, or quantized rows,
 * which ggml stores independently) as ar_gguf_permute_qk does. */
int ar_gguf_permute_rows(void *rows_data, int64_t rows, size_t row_bytes, int n_head);

/* The GGUF row that holds HF row r of a permuted projection of n_head heads
 * of d rows each (the inverse map of ar_gguf_permute_rows). */
int64_t ar_gguf_permuted_row(int64_t r, int64_t d);

/* Multiply every value of nbytes of already-quantized blocks of type t by f
 * through their fp16 scales (every ggml value is d·(...) or d·(...) -
 * dmin·(...)): the codes stay, each scale rounds once more to fp16 (relative
 * 2^-11). F32 data is multiplied directly. Legacy and k-quant types; -1 with
 * ar_error naming `name` for others. (The Gemma query-scale fold of tuned
 * attn_q blocks.) */
int ar_gguf_scale_blocks(void *blocks, ar_ggml_type t, size_t nbytes, double f, const char *name);

/* Importance weights for a tensor (GGUF name, row length ne0): a pointer to
 * ne0 floats, or NULL for none. */
typedef const float *(*ar_gguf_imatrix_fn)(void *ctx, const char *gguf_name, int64_t ne0);

/* Convert an HF model directory (config.json, safetensors, tokenizer) to a GGUF
 * file of mix ftype with round-to-nearest quantization (llama-quantize's
 * choices of per-tensor type, optional imatrix per tensor). 0 or -1. */
int ar_gguf_convert_hf(const char *model_dir, const char *out_path, ar_gguf_ftype ftype,
                       ar_gguf_imatrix_fn imatrix, void *imatrix_ctx);

/* Fill *c from a GGUF file's metadata and tensor inventory (architectures
 * llama (with experts: Mixtral), qwen2, qwen3, gemma2, gemma3, phi3, glm4, qwen3moe, qwen2moe, deepseek2, gpt-oss); path names the file in messages. 0 or -1 with ar_error,
 * e.g. "m.gguf: architecture 'gpt2' is not supported". The tensor source over
 * a GGUF file is ar_source_gguf (model_open.h). */
int ar_gguf_read_config(const ar_gguf *g, const char *path, ar_config *c);

/* ---- The same conversion piece by piece (ar-pack's GGUF output) --------------- */

typedef struct ar_gguf_conv ar_gguf_conv;

/* Start converting model_dir into out_path with mix ftype: reads config.json,
 * opens the safetensors, sets the metadata and tokenizer (as
 * ar_gguf_set_model_metadata) and adds Llama 3 RoPE factors. has_imatrix is
 * the type policy's flag (1 when the tuned tensors used importance matrices).
 * NULL with ar_error. */
ar_gguf_conv *ar_gguf_conv_open(const char *model_dir, const char *out_path, ar_gguf_ftype ftype, int has_imatrix);

/* The model's config and the type policy's view of it. */
const ar_config *ar_gguf_conv_config(const ar_gguf_conv *cv);
const ar_gguf_model_info *ar_gguf_conv_info(const ar_gguf_conv *cv);
/* The writer, to set extra metadata keys before finish. */
ar_gguf_writer *ar_gguf_conv_writer(ar_gguf_conv *cv);

/* The ggml type the mix gives HF tensor hf_name (F32 for norms), or -1 with
 * ar_error when the model has no such tensor or llama.cpp no name for it. */
int ar_gguf_conv_type(const ar_gguf_conv *cv, const char *hf_name);

/* Add HF tensor hf_name [n_rows, n_cols] already quantized as type: nbytes of
 * blocks, rows in HF order (permuted here where llama.cpp's RoPE layout needs
 * it; the caller's buffer is not modified). -1 with ar_error when the model has
 * no such 2-D tensor of that shape, the size does not match, or it was added
 * before. */
int ar_gguf_conv_add_blocks(ar_gguf_conv *cv, const char *hf_name, ar_ggml_type type, int64_t n_rows,
                            int64_t n_cols, const void *blocks, size_t nbytes);

/* Quantize and add every tensor not added yet (optional imatrix), write the
 * file and rename it into place. Frees cv in every case. 0 or -1. */
int ar_gguf_conv_finish(ar_gguf_conv *cv, ar_gguf_imatrix_fn imatrix, void *imatrix_ctx);

/* Give up: remove temporary files and free cv (NULL is fine). */
void ar_gguf_conv_abort(ar_gguf_conv *cv);

#endif
