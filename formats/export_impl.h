/* export_impl.h — what the format files (auto_round.c, auto_gptq.c,
 * auto_awq.c, fake.c) share with the export driver (export.c). Private to
 * formats/. */
#ifndef AR_EXPORT_IMPL_H
#define AR_EXPORT_IMPL_H
#include "export.h"
#include "multimodal.h"
#include "safetensors.h"
#include "safetensors_writer.h"
#include <cJSON.h>

/* What the driver remembers of each packed layer, for the per-layer config. */
typedef struct {
    char *name;
    int   bits, group_size, sym;
    int   in_block;             /* under block_prefix */
    int   own_bias;             /* bias came with the layer, not from the original */
    int   dtype;                /* AR_QDT_* of the layer */
    int   group_2d, act_bits, act_group_size, act_sym, act_dynamic;
    char  data_type[16], act_data_type[32];
} ar_export_rec;

struct ar_export;

/* One output format. */
typedef struct {
    const char *name;
    /* Refuse options the format cannot represent (may be NULL). */
    int (*check_opts)(const ar_export_opts *o);
    /* Write the layer's tensors (not its bias). */
    int (*write_layer)(struct ar_export *e, const ar_qlayer *l);
    /* The quantization_config object, or NULL when the format has none. */
    cJSON *(*quant_config)(struct ar_export *e);
    int         bias_f16;       /* biases of quantized layers are stored fp16 */
    const char *config_dtype;   /* dtype forced into config.json, or NULL */
    const char *qconfig_file;   /* file that repeats quantization_config, or NULL */
    const char *qconfig_file2;  /* a second such file (a loader's older name), or NULL */
    int         awq_layout;     /* AR_AWQ_*: when layers are written in the AWQ layout */
    int         allow_empty;    /* an export with no quantized layer is valid (fake) */
    const char *moe_refusal;    /* why mixture-of-experts models are refused, or NULL (docs/moe.md §10) */
} ar_export_format;

/* ar_export_format.awq_layout: never; always (auto_awq); for uniform
 * asymmetric 4-bit exports, as AutoRound writes its own format then
 * (auto_round), where any other width is an error. */
enum { AR_AWQ_NEVER, AR_AWQ_ALWAYS, AR_AWQ_ASYM4 };

struct ar_export {
    const ar_export_format *fmt;
    ar_export_opts          opts;
    char                   *model_dir, *out_dir, *tmp_dir;
    ar_safetensors         *st;         /* the original model */
    void                   *fx;         /* its fused experts seen per expert (fused_experts.h), else NULL */
    ar_stw                 *w;
    char                    block_prefix[128];   /* "model.layers" ("model.language_model.layers": a VLM) */
    int                     mm;                  /* a vision-language model: only its text stack is quantized */
    ar_mm_names             mm_names;            /* where its text tensors are (multimodal.h) */
    int                     awq_layout;          /* auto_round: AWQ tensors */
    ar_export_rec          *rec;
    size_t                  nrec, caprec;
    int                     nkv;                 /* KV-cache scales written (ar_export_kv_scale) */
};

extern const ar_export_format ar_fmt_auto_round, ar_fmt_auto_gptq, ar_fmt_auto_awq, ar_fmt_fake,
    ar_fmt_llm_compressor;

/* The format named name, or NULL (export_formats.c: the one file that knows
 * every format, so the driver and the format files do not depend on each
 * other). */
const ar_export_format *ar_export_format_find(const char *name);

/* ar_export_open for a format already looked up (export.c, the driver). */
struct ar_export *ar_export_open_format(const ar_export_format *f, const char *model_dir, const char *out_dir,
                                        const ar_export_opts *opts);

/* Write a floating-point layer (MXFP4/MXFP8/NVFP4/FP8) with the
 * compressed-tensors tensor names (spec §6.4 table): weight_packed or weight,
 * weight_scale (weight_scale_inv for FP8 blocks when block_inv), NVFP4
 * weight_global_scale / input_global_scale, FP8 static input_scale. */
int ar_export_write_fp(struct ar_export *e, const ar_qlayer *l, int block_inv);

/* 1 when the global options name a floating-point weight type. */
int ar_export_opts_fp(const ar_export_opts *o);

/* Write l as GPTQ-layout tensors NAME.qweight/.qzeros/.scales (+ .g_idx). */
int ar_export_write_gptq(struct ar_export *e, const ar_qlayer *l, int zp_minus_one, int with_g_idx);
/* Write l as AWQ GEMM tensors NAME.qweight/.qzeros/.scales. */
int ar_export_write_awq(struct ar_export *e, const ar_qlayer *l);

/* The global scheme keys every format starts its config with, as AutoRound
 * 0.16.1 writes them: bits, data_type (opts, "int" by default), group_size,
 * sym with the act_* keys among them when activations are quantized, then
 * the tuning keys that differ from AutoRound's defaults (amp false always),
 * then autoround_version. NULL on allocation failure (ar_error set). */
cJSON *ar_export_base_config(const struct ar_export *e);

/* Whether the original model has an in-block Linear (2-D NAME.weight under
 * block_prefix) that was not packed; calls fn for each such layer name and
 * returns their count. fn may be NULL. */
int ar_export_unquantized_in_block(const struct ar_export *e, void (*fn)(void *arg, const char *layer), void *arg);

/* The source weight of packed layer `layer` ("LAYER.weight"; for an expert
 * of an older Mixtral checkpoint its block_sparse_moe.experts.E.wN name),
 * NULL when the source has none. */
const ar_st_tensor *ar_export_source_weight(const struct ar_export *e, const char *layer);

/* Same for Linear-like 2-D weights outside the blocks (lm_head), excluding
 * embeddings. */
int ar_export_unquantized_outside(const struct ar_export *e, void (*fn)(void *arg, const char *layer), void *arg);

/* Sort the members of a JSON object (layer name -> ...) into the model's
 * order: block by block, in a block q, k, v, o, gate, up, down. */
void ar_export_model_order(cJSON *obj);

/* The version string written as autoround_version (spec snapshot). */
#define AR_AUTOROUND_VERSION "0.16.1"

#endif
