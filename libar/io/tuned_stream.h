/* tuned_stream.h — the stream ar-tune writes and ar-pack reads (ar-stream(5)
 * records, ar-tune(1)): one META record, then the tuned layers.
 *
 * META: {"ar":"tune","version":1,"model":DIR,"scheme":NAME, the default
 * scheme's attributes (bits, group_size, sym, data_type, group_2d, act_bits,
 * act_group_size, act_sym, act_dynamic, act_data_type), "mixed_bits": some
 * layer has other bits than the default, "tuning":{how it was tuned}}.
 *
 * A linear P ("model.layers.3.mlp.up_proj") quantized to codes:
 *   P.global_scale  f32 [1]      NVFP4 only: the global scale the codes were made with
 *   P.act_max       f32 [1]      only with static activation quantization: calibration max |x| of the input
 *   P.qweight       u8 [N, K]    codes; attrs: the layer's scheme (as in META, plus "scheme")
 *   P.scale         f32 [N, G]   per-group scales
 *   P.zp            i32 [N, G]   per-group zero points
 * in that order. A tensor T ("model.layers.0.mlp.up_proj.weight",
 * "model.embed_tokens.weight", "lm_head.weight") in ggml blocks (GGUF schemes):
 *   T.gguf          u8 [nbytes]  attrs ggml_type (ggml's name), rows, cols
 * With static FP8 KV-cache scales (tune.h static_kv_fp8), after block L's
 * linears, A = "model.layers.L.self_attn":
 *   A.k_scale       f32 [1]      attrs {"kv_cache_dtype":"fp8_e4m3"}: K's scale (quant_kv.h)
 *   A.v_scale       f32 [1]      the same for V */
#ifndef AR_TUNED_STREAM_H
#define AR_TUNED_STREAM_H
#include "ggml_blocks.h"
#include "quant.h"
#include "scheme.h"
#include "stream.h"
#include <stdint.h>
#include <stdio.h>

/* ---- writing ----------------------------------------------------------------- */

/* The META text (malloc'd; NULL with ar_error when out of memory) for a model
 * folder (its absolute path), default scheme def, mixed_bits, and tuning, a
 * JSON object text describing the tuning (copied in as "tuning"). */
char *ar_tuned_meta_json(const char *model, const ar_scheme *def, int mixed_bits, const char *tuning_json);

/* Write the records of linear `name` ([n, k], scheme s; group count from
 * s->group_size) from q's codes, scale and zp: first global_scale when not
 * NULL, act_max when s quantizes activations and act_max > 0. 0 or -1. */
int ar_tuned_write_linear(ar_stream_writer *w, const char *name, const ar_scheme *s, int n, int k,
                          const ar_quant_out *q, const float *global_scale, float act_max);

/* Write tensor hf_name as rows × cols in nbytes of type-t ggml blocks. 0 or -1. */
int ar_tuned_write_gguf(ar_stream_writer *w, const char *hf_name, ar_ggml_type t, int64_t rows, int64_t cols,
                        const void *blocks, size_t nbytes);

/* Write attention attn's ("model.layers.3.self_attn") static FP8 KV-cache
 * scales as attn.k_scale and attn.v_scale. 0 or -1. */
int ar_tuned_write_kv_scales(ar_stream_writer *w, const char *attn, float k_scale, float v_scale);

/* ---- reading ----------------------------------------------------------------- */

/* The quantization attributes of META and of each qweight record. */
typedef struct {
    char data_type[32], act_data_type[32];
    int bits, group_size, sym;
    int group_2d, act_bits, act_group_size, act_sym, act_dynamic;
} ar_tuned_attrs;

typedef struct {
    char model[4096], scheme[64];
    ar_tuned_attrs attrs;       /* absent keys: bits 4, group_size 128, data_type "int", see ar_tuned_item */
    int mixed_bits;
    char *tuning_json;          /* the "tuning" object as text, or NULL */
    char *json;                 /* the whole META text */
    int blocks[2];              /* a block range's (tune.h first_block, last_block): "blocks"; -1 -1: a whole run */
    int n_layers;               /* with blocks: the model's blocks ("n_layers") */
} ar_tuned_meta;

typedef enum { AR_TUNED_LINEAR = 1, AR_TUNED_GGUF, AR_TUNED_KV_SCALE } ar_tuned_kind;

/* One tuned layer. LINEAR: name is P; absent attributes are bits and
 * group_size 0, sym 1, group_2d 0, act_bits 16, act_group_size and act_sym
 * the weight's, act_dynamic 1, data types "". GGUF: name is T. KV_SCALE:
 * name is the tensor ("model.layers.3.self_attn.k_scale"), kv_scale its
 * value (> 0 and finite, else the read fails). */
typedef struct {
    ar_tuned_kind kind;
    char name[256];
    int n, k;                   /* LINEAR */
    ar_tuned_attrs attrs;
    float global_scale, act_max;    /* 0 when absent */
    float kv_scale;             /* KV_SCALE */
    uint8_t *codes;
    float *scale;
    int32_t *zp;                /* NULL when absent */
    ar_ggml_type type;          /* GGUF */
    int64_t rows, cols;
    uint8_t *blocks;
    size_t nbytes;
} ar_tuned_item;

typedef struct ar_tuned_reader ar_tuned_reader;

/* Open ar-tune's stream on f (named src in messages) and read its META:
 * "X: stream does not start with ar-tune's META record", "X: not an ar-tune
 * stream (META "ar" is not "tune")". NULL with ar_error. f stays the caller's. */
ar_tuned_reader *ar_tuned_reader_open(FILE *f, const char *src);

const ar_tuned_meta *ar_tuned_reader_meta(const ar_tuned_reader *t);

/* The next layer, assembled from its records, in *it (valid until the next
 * call or close): 1, 0 at the end of the stream, -1 with ar_error naming src
 * for a malformed record ("X: model.layers.0.mlp.up_proj.scale must be f32
 * [N, groups]", "X: unexpected record 'R'", "X: layer P lacks its qweight or
 * scale record", ...) or a stream error. Records other than tensors are
 * skipped. */
int ar_tuned_reader_next(ar_tuned_reader *t, const ar_tuned_item **it);

/* Free t (not its FILE). NULL is allowed. */
void ar_tuned_reader_close(ar_tuned_reader *t);

#endif
