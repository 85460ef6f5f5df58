/* kv_config.h — the static FP8 KV cache an exported model asks for at
 * inference, installed in an opened model (ar_model_set_kv_quant) so that
 * ar-eval scores it with K (after RoPE) and V fake-quantized to FP8 E4M3 as
 * vLLM's FP8 KV cache holds them (quant_kv.h).
 *
 * Asked for by config.json's quantization_config:
 *  - compressed-tensors: a non-null kv_cache_scheme; handled: num_bits 8,
 *    type "float", strategy "tensor" (or absent), dynamic false, symmetric;
 *  - auto-round: static_kv_dtype "fp8" (or "float8_e4m3fn"), as AutoRound
 *    writes it (granularity "tensor" when given).
 * The scales are the tensors model.layers.L.self_attn.k_scale and .v_scale of
 * every layer: one value each (shape [1] or a scalar), finite and > 0. */
#ifndef AR_KV_CONFIG_H
#define AR_KV_CONFIG_H
#include "model.h"

/* Install in m the KV-cache scales the folder dir's config asks for. Returns
 * how many layers got them (0: none asked), or -1 with ar_error naming the
 * folder and the problem, e.g. "out/config.json: kv_cache_scheme: 4-bit int
 * KV caches are not handled (8-bit float per tensor only)", "out:
 * kv_cache_scheme but no tensor model.layers.0.self_attn.k_scale", "out:
 * model.layers.0.self_attn.k_scale must hold one value (shape [1]), not shape
 * [2]"; m is then unchanged. */
int ar_model_kv_quant_from_folder(ar_model *m, const char *dir);

#endif
