/* model_open.h — one entry point for every model a tool may be handed: a
 * plain Hugging Face folder, a quantized Hugging Face folder (anything
 * ar-pack writes: auto_round, auto_gptq, auto_awq; "fake" folders are plain),
 * or a GGUF file.
 *
 * The kind is decided from the path itself:
 *   - a regular file whose first four bytes are "GGUF"          -> GGUF
 *   - a directory whose config.json has a quantization_config  -> quantized
 *     (weights dequantized to f32 by formats/quantized_source.h), except
 *     quant_method "fp8" (DeepSeek / Qwen3 FP8 block-scaled weights), which
 *     is plain: the safetensors source widens it (ar_st_open_model)
 *   - any other directory                                       -> plain HF
 * Everything else is refused with one line naming the path.
 *
 * GGUF is read through two hooks, ar_source_gguf and ar_tokenizer_gguf,
 * defined in formats/gguf_source.c (owned by the GGUF side). */
#ifndef AR_MODEL_OPEN_H
#define AR_MODEL_OPEN_H
#include "config.h"
#include "model.h"
#include "tokenizer.h"

typedef enum { AR_PATH_HF, AR_PATH_HF_QUANTIZED, AR_PATH_GGUF } ar_path_kind;

/* Which kind of model path is: an ar_path_kind, or -1 with ar_error
 * ("x.bin: neither a model folder nor a GGUF file"). */
int ar_model_path_kind(const char *path);

/* The config and the weight source of path (any kind), for callers that look
 * at the config before opening (e.g. to decide on AR_MODEL_CACHE) and then
 * call ar_model_open_source. 0, or -1 with ar_error naming the file. */
int ar_model_source_any(const char *path, ar_config *c, ar_tensor_source *src);

/* ar_model_open for any kind of path. flags as ar_model_open. NULL with ar_error. */
ar_model *ar_model_open_any(const char *path, int flags);

/* The tokenizer of path: tokenizer.json of a folder, or the GGUF hook. NULL with ar_error. */
ar_tokenizer *ar_tokenizer_open_any(const char *path);

/* ---- GGUF hooks (formats/gguf_source.c) ----------------------------------- */

/* Fill *c with the hyper-parameters of GGUF file path and src with a tensor
 * source answering Hugging Face names ("model.layers.0.self_attn.q_proj.weight"
 * in HF row order, i.e. with llama.cpp's Q/K RoPE permutation undone),
 * dequantized to f32. 0, or -1 with ar_error naming the file. */
int ar_source_gguf(ar_tensor_source *src, ar_config *c, const char *path);

/* The tokenizer of GGUF file path. NULL with ar_error. */
ar_tokenizer *ar_tokenizer_gguf(const char *path);

#endif
