/* export.h — write a quantized model as a Hugging Face folder that real
 * clients load (transformers + auto-round, GPTQModel, vLLM).
 *
 * Formats (spec §6):
 *   "auto_round"  AutoRound's default: quant_method "auto-round"; sym int uses
 *                 packing_format "auto_round:auto_gptq" (GPTQ layout, zeros - 1),
 *                 asym 4-bit with no other bit widths "auto_round:auto_awq" (AWQ
 *                 layout), other asym "auto_round" (GPTQ layout, zeros as is).
 *   "auto_gptq"   quant_method "gptq" (GPTQ v1: zeros - 1, g_idx), fp16 config.
 *   "auto_awq"    quant_method "awq", version "gemm", 4-bit asym only.
 *   "llm_compressor" compressed-tensors (vLLM): int "pack-quantized", MXFP4
 *                 "mxfp4-pack-quantized", MXFP8 "mxfp8-quantized", NVFP4
 *                 "nvfp4-pack-quantized", FP8 "float-quantized"; config_groups.
 *   "fake"        dequantized weights in the model's dtype, plain checkpoint.
 * Floating-point layers (ar_qlayer.data_type) go to auto_round (packing_format
 * "auto_round:llm_compressor" for MX/NV, "auto_round:fp8" for FP8, with the
 * compressed-tensors tensor names), llm_compressor or fake.
 *
 * Usage: ar_export_open, then ar_export_layer for each quantized Linear (in
 * any order; each is packed and streamed to disk at once), then
 * ar_export_finish, which copies every other tensor of the original model
 * (embeddings, norms, lm_head, unquantized layers, biases) in its own dtype,
 * writes config.json with quantization_config, copies the tokenizer and other
 * side files, and renames the temporary folder to out_dir. On any failure call
 * ar_export_abort, which removes the temporary folder. */
#ifndef AR_EXPORT_H
#define AR_EXPORT_H
#include "packing.h"
#include <stdint.h>

typedef struct {
    const char *format;          /* "auto_round", "auto_gptq", "auto_awq", "llm_compressor" or "fake" */
    int         bits;            /* global scheme, as written in quantization_config */
    int         group_size;      /* > 0 or -1 */
    int         sym;
    int         mixed_bits;      /* some layers will use other bit widths (auto_round
                                    asym 4-bit then keeps the GPTQ layout) */
    uint64_t    max_shard_bytes; /* 0: 5GB, as transformers */
    const char *tuning_json;     /* optional JSON object of non-default tuning keys
                                    ({"iters": 0, ...}) added to quantization_config */
    /* Global data types (NULL: "int" weights, 16-bit activations). */
    const char *data_type;       /* "int", "mx_fp", "nv_fp", "fp" */
    int         group_2d;        /* FP8 128x128 blocks */
    int         act_bits;        /* 0 or 16: activations not quantized */
    int         act_group_size, act_sym, act_dynamic;
    const char *act_data_type;
} ar_export_opts;

typedef struct ar_export ar_export;

/* Start exporting the model in model_dir (config.json + safetensors) to
 * out_dir, which must not exist or be an empty directory. NULL with ar_error,
 * e.g. "auto_awq: symmetric quantization cannot be exported as AWQ (AutoRound
 * lists auto_awq for asym only); use auto_round or auto_gptq". */
ar_export *ar_export_open(const char *model_dir, const char *out_dir, const ar_export_opts *opts);

/* Pack one quantized Linear; l->name + ".weight" must be a [n, k] tensor of
 * the original model. Layers whose scheme differs from the global one are
 * recorded in the format's per-layer config. 0 or -1 with ar_error. */
int ar_export_layer(ar_export *e, const ar_qlayer *l);

/* Write a static FP8 KV-cache scale (tuned_stream.h's k_scale / v_scale
 * records) as tensor name, "model.layers.3.self_attn.k_scale" or ".v_scale",
 * f32 [1], as AutoRound's state dict holds it, in any format; llm_compressor
 * folders then also get a kv_cache_scheme (8-bit float, tensor, static,
 * symmetric). 0, or -1 with ar_error for another name or a scale that is not
 * finite and > 0. */
int ar_export_kv_scale(ar_export *e, const char *name, float scale);

/* Copy the rest, write the configs, commit out_dir. Frees e on success;
 * on failure returns -1 and e must still be passed to ar_export_abort. */
int ar_export_finish(ar_export *e);

/* Remove the temporary folder and free e (NULL is fine). */
void ar_export_abort(ar_export *e);

/* The format names, NULL-terminated (for usage messages). */
extern const char *const ar_export_formats[];

#endif
