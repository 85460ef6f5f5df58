/* quantized_source.h — read back any folder ar-pack writes (auto_round in its
 * three packing formats, auto_gptq, auto_awq, fake/plain) as dequantized f32
 * weights by Hugging Face name, for ar-eval and for round-trip tests.
 *
 * The format comes from config.json's quantization_config: quant_method
 * "auto-round" + packing_format ("auto_round:auto_gptq"/"auto_round:gptq":
 * GPTQ layout, zeros - 1; "auto_round": GPTQ layout, zeros as is;
 * "auto_round:auto_awq"/"auto_round:awq": AWQ layout), "gptq" (zeros - 1 unless
 * checkpoint_format is "gptq_v2"), "awq"; none = plain checkpoint. Per-layer
 * bits and group sizes come from extra_config (auto-round) or dynamic "+:"
 * entries (gptq) given by exact layer name; regex keys are not supported.
 * Compressed-tensors folders (quant_method "compressed-tensors") and auto-round
 * "auto_round:llm_compressor" / "auto_round:fp8*" folders are read from their
 * tensors: int pack-quantized (weight_packed i32 + weight_shape), MXFP4 / NVFP4
 * (weight_packed u8 with u8 E8M0 / f8 E4M3 + weight_global_scale scales), MXFP8
 * and FP8 (f8 weight with u8 or float scales, per tensor / channel / block). */
#ifndef AR_QUANTIZED_SOURCE_H
#define AR_QUANTIZED_SOURCE_H
#include "model.h"
#include <stdint.h>

typedef struct ar_qfolder ar_qfolder;

/* One unpacked layer; free with ar_qunpacked_free. zp is explicit for every
 * group (2^(bits-1) for sym layers as stored). */
typedef struct {
    int      n, k, bits, group_size, ngroups;
    uint8_t *codes;   /* [n, k] */
    float   *scale;   /* [n, ngroups] (from fp16) */
    int32_t *zp;      /* [n, ngroups] */
} ar_qunpacked;

/* Open folder dir. NULL with ar_error, e.g. "out/config.json: unknown
 * packing_format 'foo'". */
ar_qfolder *ar_qfolder_open(const char *dir);
void ar_qfolder_close(ar_qfolder *q);

/* The layout name: "auto_round:auto_gptq", "auto_round", "auto_round:auto_awq",
 * "gptq", "awq" or "none". */
const char *ar_qfolder_layout(const ar_qfolder *q);

/* 1 when layer (e.g. "model.layers.0.self_attn.q_proj") is stored packed. */
int ar_qfolder_is_packed(const ar_qfolder *q, const char *layer);

/* Unpack layer into out (allocated here). 0 or -1 with ar_error. */
int ar_qfolder_unpack(ar_qfolder *q, const char *layer, ar_qunpacked *out);
void ar_qunpacked_free(ar_qunpacked *u);

/* Fill src with a tensor source over folder dir: packed layers appear as
 * NAME.weight [N, K] dequantized to f32 (scale * (code - zp)); their packed
 * tensors are hidden; everything else reads through. 0 or -1 with ar_error. */
int ar_source_quantized(ar_tensor_source *src, const char *dir);

#endif
