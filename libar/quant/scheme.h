/* scheme.h — quantization schemes: AutoRound's presets by name (spec §4.1),
 * user overrides, per-layer configuration (--layer_config FILE.json) and the
 * rule that decides which scheme one Linear gets (spec §1.3).
 *
 * A scheme with bits >= 16 means "keep this layer in high precision". Only
 * AR_SCHEME_INT schemes are quantized by libar/quant/quant.h; the other kinds are
 * parsed so that later modules (MX/NV/FP8 quantizers, GGUF) can pick them up. */
#ifndef AR_SCHEME_H
#define AR_SCHEME_H

/* Family of the weight data type. */
typedef enum {
    AR_SCHEME_INT,    /* "int": int_sym / int_asym (libar/quant/quant.h) */
    AR_SCHEME_MXFP,   /* "mx_fp", "mx_int": OCP microscaling */
    AR_SCHEME_NVFP,   /* "nv_fp", "nvfp4_v2" */
    AR_SCHEME_FP8,    /* "fp" with 8 bits */
    AR_SCHEME_GGUF,   /* GGUF:* presets (int data types with GGUF packing) */
    AR_SCHEME_FLOAT,  /* 16-bit: not quantized */
} ar_scheme_kind;

/* Sentinel for "not given" in overrides and unset layer_config fields. */
#define AR_UNSET (-32768)

typedef struct {
    char name[32];          /* upper-case preset name ("W4A16", "GGUF:Q4_K_M"), "" if custom */
    ar_scheme_kind kind;
    int  bits;              /* weight bits; >= 16 keeps the layer in high precision */
    int  group_size;        /* > 0, -1 per output channel, 0 per tensor */
    int  group_2d;          /* FP8_BLOCK: group_size x group_size blocks */
    int  sym;               /* 1 symmetric (int: full range), 0 asymmetric */
    char data_type[32];     /* AutoRound's string: "int", "mx_fp", "nv_fp", "fp", "int_asym_dq", ... */
    int  act_bits;          /* 16 = activations not quantized */
    int  act_group_size;
    int  act_sym;
    int  act_dynamic;
    char act_data_type[32];
    int  super_bits;        /* GGUF K-quant double quantization, 0 if none */
    int  super_group_size;
    int  scale_f32;         /* scale_dtype fp32 (GGUF) instead of fp16 */
    int  mixed;             /* W4A16_MIXED: experts 4-bit, other Linears 8-bit */
} ar_scheme;

/* Fill *s from a preset name, case-insensitive ("w4a16", "GGUF:Q4_K_M",
 * "MXFP4", ...). Returns 0, or -1 with ar_error naming the unknown preset. */
int ar_scheme_preset(ar_scheme *s, const char *name);

/* 1 when s is an integer weight-only scheme libar/quant/quant.h handles (bits 2..8,
 * data type "int", activations unquantized, not GGUF). */
int ar_scheme_is_int(const ar_scheme *s);

/* 1 when the scheme quantizes the layer at all (bits < 16). */
int ar_scheme_quantized(const ar_scheme *s);

/* Apply --bits / --group_size / --sym|--asym on top of a preset; AR_UNSET
 * leaves a field alone. The activation group size follows the weight one
 * when it did before, as AutoRound resolves act_group_size from group_size.
 * Returns 0, or -1 with ar_error for bits an int scheme cannot use (2..8, 16)
 * or a group size below -1. */
int ar_scheme_override(ar_scheme *s, int bits, int group_size, int sym);

/* Default SignSGD learning rate of a layer (spec §2.7): 1/iters, or 2/iters
 * when iters >= 1000 and the layer has <= 3 bits. 0 when iters <= 0 (RTN). */
double ar_scheme_default_lr(int bits, int iters);

/* ---- per-layer configuration ------------------------------------------- */

/* A parsed --layer_config file: {"name or regex": {"bits": 8, ...} or
 * "PRESET", ...}. Keys: bits, group_size, sym, data_type, act_bits,
 * act_group_size, act_sym, act_data_type, act_dynamic, super_bits,
 * super_group_size, scale_dtype, scheme (a preset the entry starts from). */
typedef struct ar_layer_config ar_layer_config;

/* Parse JSON text; path names the file in messages. Returns NULL with
 * ar_error ("PATH: ...") for malformed JSON, an entry that is not an object
 * or preset name, an unknown key, a wrongly typed value or a bad regex. */
ar_layer_config *ar_layer_config_parse(const char *json, const char *path);

/* Read and parse a file (NULL + ar_error naming it on failure). */
ar_layer_config *ar_layer_config_load(const char *path);

void ar_layer_config_free(ar_layer_config *lc);

/* Number of entries, in file order. */
int ar_layer_config_count(const ar_layer_config *lc);

/* What the caller knows about the layer beyond its name and shape. */
typedef struct {
    int is_lm_head;     /* the output head ("lm_head") */
    int quant_lm_head;  /* user asked to quantize it (--quant_lm_head) */
    int tied;           /* the head shares the embedding matrix */
} ar_layer_info;

/* Scheme of one Linear named `name` with weight [n_out, k_in] under the
 * default scheme def and the optional layer config lc (may be NULL):
 *  1. a layer_config entry whose key equals the name wins; otherwise the last
 *     entry, in file order, whose key matches as a regex (AutoRound's
 *     to_standard_regex: a key without regex tokens matches as a substring);
 *     fields the entry leaves out come from def;
 *  2. W4A16_MIXED without an entry: "expert" layers (not "shared") 4-bit,
 *     others 8-bit;
 *  3. lm_head: quantized only if asked (info->quant_lm_head or a matching
 *     entry) and not tied to the embeddings (GGUF excepted);
 *  4. when def is int weight-only, a layer with n_out % 32 or k_in % 32 != 0
 *     stays 16-bit even if an entry asked otherwise; MX/NV defaults skip
 *     layers with k_in % group_size != 0.
 * *out gets bits >= 16 and kind AR_SCHEME_FLOAT when the layer is kept in high
 * precision. Returns 0 (or -1 with ar_error for NULL arguments). */
int ar_scheme_for_layer(const ar_scheme *def, const ar_layer_config *lc, const char *name,
                        int n_out, int k_in, const ar_layer_info *info, ar_scheme *out);

#endif
