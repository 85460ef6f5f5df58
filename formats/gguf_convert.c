/* gguf_convert.c — a Hugging Face model directory written as one llama.cpp
 * GGUF file, tensor by tensor: callers may hand over some tensors already
 * quantized (ar-pack's tuned layers), and the rest is quantized with the mix's
 * type policy (round to nearest, optional importance matrix) at finish. */
#include "gguf.h"
#include "error.h"
#include "gguf_policy.h"
#include "gguf_moe.h"
#include "gguf_ds_oss.h"
#include "dtype.h"
#include "fused_experts.h"
#include "multimodal.h"
#include "safetensors.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ar_gguf_conv {
    ar_config          cfg;
    ar_safetensors    *st;
    ar_gguf_writer    *w;
    ar_gguf_ftype      ftype;
    ar_gguf_model_info info;
    char              *done;        /* [ar_st_count]: 1 once that tensor is in the file */
    char               model_dir[4096];
    int                mm;          /* a vision-language model: its text stack only, as llama.cpp's
                                       converter writes it (the vision tower's mmproj file is not ours) */
    ar_mm_names        mm_names;
    ar_gguf_stacks    *stacks;      /* mixtures of experts: each layer's experts gathered into one 3-D tensor */
    void              *fused;       /* gpt-oss: its experts under per-expert names (fused_experts.h) */
    char              *oss_done;    /* [n_layers] gpt-oss: the layer's experts and their biases are written */
};

/* The checkpoint's name of text-only name hf (multimodal.h), or of an
 * expert / router under Mixtral's older spelling when the checkpoint has that one. */
static const char *ckpt_name(const ar_gguf_conv *cv, const char *hf, char *buf, size_t n)
{
    if (cv->mm) return ar_mm_map_name(&cv->mm_names, hf, buf, n);
    if (cv->stacks && !ar_st_find(cv->st, hf) && ar_gguf_moe_legacy_name(hf, buf, n) && ar_st_find(cv->st, buf)) return buf;
    return hf;
}

static int st_has(void *ctx, const char *name) { return ar_st_find(ctx, name) != NULL; }

/* Llama 3 RoPE scaling is stored as per-frequency factors (rope_freqs.weight). */
static int add_llama3_rope_freqs(ar_gguf_writer *w, const ar_config *c)
{
    int n = c->head_dim / 2;
    float *f = malloc(sizeof(float) * (size_t)n);
    if (!f) return ar_error("out of memory");
    double lo_wavelen = c->rope_orig_max_pos / c->rope_low_freq_factor;
    double hi_wavelen = c->rope_orig_max_pos / c->rope_high_freq_factor;
    for (int i = 0; i < n; i++) {
        double freq = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim), wavelen = 2 * M_PI / freq;
        if (wavelen < hi_wavelen) f[i] = 1.f;
        else if (wavelen > lo_wavelen) f[i] = (float)c->rope_factor;
        else {
            double smooth = (c->rope_orig_max_pos / wavelen - c->rope_low_freq_factor) /
                            (c->rope_high_freq_factor - c->rope_low_freq_factor);
            f[i] = (float)(1 / ((1 - smooth) / c->rope_factor + smooth));
        }
    }
    int64_t ne[1] = {n};
    int rc = ar_gguf_writer_add_tensor(w, "rope_freqs.weight", AR_GGML_F32, 1, ne, f, sizeof(float) * (size_t)n);
    free(f);
    return rc;
}

/* Phi-3's longrope factors as llama.cpp stores them: rope_factors_long /
 * rope_factors_short, rope_dim/2 f32 each (one per rotated pair). */
static int add_longrope_factors(ar_gguf_writer *w, const ar_config *c)
{
    int64_t ne[1] = {c->rope_dim / 2};
    size_t n = sizeof(float) * (size_t)ne[0];
    return ar_gguf_writer_add_tensor(w, "rope_factors_long.weight", AR_GGML_F32, 1, ne, c->rope_long_factor, n) ||
           ar_gguf_writer_add_tensor(w, "rope_factors_short.weight", AR_GGML_F32, 1, ne, c->rope_short_factor, n) ? -1 : 0;
}

/* general.name: the last component of the model directory. */
static void model_name(const char *dir, char *out, size_t cap)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), dir + b);
}

static int is_gemma(const ar_gguf_conv *cv) { return cv->cfg.arch == AR_ARCH_GEMMA2 || cv->cfg.arch == AR_ARCH_GEMMA3; }

static int ends_with(const char *s, const char *t)
{
    size_t n = strlen(s), k = strlen(t);
    return n >= k && !strcmp(s + n - k, t);
}

static int conv_map_name(const ar_gguf_conv *cv, const char *hf, char *out, size_t cap)
{
    return ar_gguf_map_name_for(&cv->cfg, hf, out, cap);
}

/* Factor on the queries that makes llama.cpp's fixed softmax scale
 * (ar_gguf_gemma_attn_scale) equal the model's query_pre_attn_scalar^-1/2. RoPE and
 * the QK-norm are linear in q, so the factor goes on the query weights
 * (Gemma 2) or on the query norm's weights (Gemma 3). 1 elsewhere. */
static double query_fold(const ar_gguf_conv *cv)
{
    if (!is_gemma(cv) || !(cv->cfg.attn_scale > 0)) return 1.0;
    return cv->cfg.attn_scale / ar_gguf_gemma_attn_scale(&cv->cfg);
}

/* The GGUF tensor that carries query_fold's factor. */
static int takes_query_fold(const ar_gguf_conv *cv, const char *gname)
{
    return ends_with(gname, cv->cfg.arch == AR_ARCH_GEMMA3 ? ".attn_q_norm.weight" : ".attn_q.weight");
}

/* f32 values of one tensor as llama.cpp's converter writes them: Gemma's norm
 * weights w as 1 + w (its RMSNorm multiplies by w itself), and the query fold. */
static void adjust_values(const ar_gguf_conv *cv, const char *gname, float *x, int64_t n)
{
    if (is_gemma(cv) && ends_with(gname, "norm.weight"))
        for (int64_t i = 0; i < n; i++) x[i] += 1.f;
    double f = query_fold(cv);
    if (f != 1.0 && takes_query_fold(cv, gname))
        for (int64_t i = 0; i < n; i++) x[i] = (float)(x[i] * f);
}

/* Offsets of the fp16 block scales (d, and dmin / m where the type has one;
 * -1 for none) of a ggml block type, from ggml-common.h's block layouts. */
static int block_scale_offsets(ar_ggml_type t, size_t bb, int *d, int *m)
{
    *m = -1;
    switch (t) {
    case AR_GGML_Q4_0: case AR_GGML_Q5_0: case AR_GGML_Q8_0: *d = 0; return 0;
    case AR_GGML_Q4_1: case AR_GGML_Q5_1: case AR_GGML_Q4_K: case AR_GGML_Q5_K: *d = 0; *m = 2; return 0;
    case AR_GGML_Q2_K: *d = (int)bb - 4; *m = (int)bb - 2; return 0;
    case AR_GGML_Q3_K: case AR_GGML_Q6_K: *d = (int)bb - 2; return 0;
    default: return -1;
    }
}

static void scale_f16(uint8_t *p, double f)
{
    uint16_t h;
    memcpy(&h, p, 2);
    h = ar_f32_to_f16((float)(ar_f16_to_f32(h) * f));
    memcpy(p, &h, 2);
}

int ar_gguf_scale_blocks(void *blocks, ar_ggml_type t, size_t nbytes, double f, const char *name)
{
    size_t bb = ar_ggml_block_bytes(t);
    int d, m;
    if (t == AR_GGML_F32) {
        for (size_t i = 0; i < nbytes / 4; i++) ((float *)blocks)[i] = (float)(((float *)blocks)[i] * f);
        return 0;
    }
    if (!bb || block_scale_offsets(t, bb, &d, &m))
        return ar_error("%s: cannot rescale %s blocks for llama.cpp's attention scale", name, ar_ggml_type_name(t));
    for (size_t o = 0; o + bb <= nbytes; o += bb) {
        scale_f16((uint8_t *)blocks + o + d, f);
        if (m >= 0) scale_f16((uint8_t *)blocks + o + m, f);
    }
    return 0;
}

/* Heads of the projection a GGUF name belongs to when its rows need llama.cpp's
 * interleaved RoPE order; 0 when they stay as they are. */
static int rope_heads(const ar_gguf_conv *cv, const char *gname)
{
    if (cv->cfg.arch != AR_ARCH_LLAMA && cv->cfg.arch != AR_ARCH_MISTRAL && cv->cfg.arch != AR_ARCH_MIXTRAL) return 0;
    if (strstr(gname, ".attn_q.")) return cv->cfg.n_heads;
    if (strstr(gname, ".attn_k.")) return cv->cfg.n_kv_heads;
    return 0;
}

/* Append a tensor; llama.cpp's qwen2moe requires output.weight (src/models/qwen2moe.cpp),
 * so a tied embedding is written a second time under that name, same type and bytes. */
static int add_tensor(ar_gguf_conv *cv, const char *gname, ar_ggml_type type, int n_dims, const int64_t *ne,
                      const void *data, size_t nbytes)
{
    if (ar_gguf_writer_add_tensor(cv->w, gname, type, n_dims, ne, data, nbytes)) return -1;
    /* gpt-oss too (src/models/openai-moe.cpp loads output.weight as required) */
    if ((cv->cfg.arch == AR_ARCH_QWEN2_MOE || cv->cfg.arch == AR_ARCH_GPT_OSS) && !cv->info.has_output &&
        !strcmp(gname, "token_embd.weight"))
        return ar_gguf_writer_add_tensor(cv->w, "output.weight", type, n_dims, ne, data, nbytes);
    return 0;
}

static int open_parts(ar_gguf_conv *cv, const char *model_dir, const char *out_path, int has_imatrix)
{
    if (ar_config_load(&cv->cfg, model_dir)) return -1;
    if (cv->cfg.arch == AR_ARCH_GEMMA2 && !(cv->cfg.attn_softcap > 0))   /* llama.cpp's gemma2 always caps */
        return ar_error("%s: GGUF gemma2 needs attn_logit_softcapping (llama.cpp always applies it)", model_dir);
    if (ar_gguf_moe_check(&cv->cfg, model_dir)) return -1;
    if (cv->cfg.moe.n_experts && !(cv->stacks = ar_gguf_stacks_new(cv->cfg.moe.n_experts))) return -1;
    if (!(cv->st = ar_st_open_model(model_dir))) return -1;   /* FP8 weights widen through their scales */
    if (!(cv->done = calloc(ar_st_count(cv->st) + 1, 1))) return ar_error("out of memory");
    if (cv->cfg.arch == AR_ARCH_GPT_OSS) {   /* fused, MXFP4 or per-expert checkpoints alike */
        ar_safetensors *st2 = ar_st_open_model(model_dir);
        if (!st2 || !(cv->fused = ar_fused_source_new(st2, AR_FUSED_GPT_OSS))) return -1;
        if (!(cv->oss_done = calloc((size_t)cv->cfg.n_layers, 1))) return ar_error("out of memory");
    }
    if (cv->cfg.mm_arch[0]) {
        if (ar_mm_resolve(cv->cfg.mm_arch, st_has, cv->st, &cv->mm_names)) return ar_error_prefix(model_dir);
        cv->mm = 1;
    }
    char head[128];
    cv->info = ar_gguf_info_for(&cv->cfg, ar_st_find(cv->st, ckpt_name(cv, "lm_head.weight", head, sizeof head)) != NULL,
                                has_imatrix);
    if (!(cv->w = ar_gguf_writer_open(out_path))) return -1;
    char name[256];
    model_name(model_dir, name, sizeof name);
    if (ar_gguf_set_model_metadata(cv->w, &cv->cfg, model_dir, name, cv->ftype)) return -1;
    if (cv->cfg.rope_type == AR_ROPE_LLAMA3 && add_llama3_rope_freqs(cv->w, &cv->cfg)) return -1;
    if (cv->cfg.rope_type == AR_ROPE_LONGROPE && add_longrope_factors(cv->w, &cv->cfg)) return -1;
    return 0;
}

ar_gguf_conv *ar_gguf_conv_open(const char *model_dir, const char *out_path, ar_gguf_ftype ftype, int has_imatrix)
{
    if (!strcmp(ar_gguf_ftype_name(ftype), "?")) {
        ar_error("%s: unknown GGUF file type %d", out_path, (int)ftype);
        return NULL;
    }
    ar_gguf_conv *cv = calloc(1, sizeof *cv);
    if (!cv) { ar_error("out of memory"); return NULL; }
    cv->ftype = ftype;
    snprintf(cv->model_dir, sizeof cv->model_dir, "%s", model_dir);
    if (open_parts(cv, model_dir, out_path, has_imatrix)) {
        ar_gguf_conv_abort(cv);
        return NULL;
    }
    return cv;
}

const ar_config *ar_gguf_conv_config(const ar_gguf_conv *cv) { return &cv->cfg; }
const ar_gguf_model_info *ar_gguf_conv_info(const ar_gguf_conv *cv) { return &cv->info; }
ar_gguf_writer *ar_gguf_conv_writer(ar_gguf_conv *cv) { return cv->w; }

/* Index of HF tensor name in the safetensors, or -1 with ar_error. */
static long tensor_index(const ar_gguf_conv *cv, const char *hf_name)
{
    for (size_t i = 0; i < ar_st_count(cv->st); i++)
        if (!strcmp(ar_st_at(cv->st, i)->name, hf_name)) return (long)i;
    return ar_error("%s: the model has no tensor %s", cv->model_dir, hf_name);
}

/* Rows and row length of a 1-D or 2-D safetensors tensor, as ggml sees them. */
static int tensor_rows_cols(const ar_st_tensor *t, int64_t *rows, int64_t *cols)
{
    if (t->ndim < 1 || t->ndim > 2) return ar_error("%s: tensor %s has %d dimensions", t->file, t->name, t->ndim);
    *cols = t->shape[t->ndim - 1];
    *rows = t->ndim == 2 ? t->shape[0] : 1;
    return 0;
}

int ar_gguf_conv_type(const ar_gguf_conv *cv, const char *hf_name)
{
    char gname[256], ck[512];
    const ar_st_tensor *t = ar_st_find(cv->st, ckpt_name(cv, hf_name, ck, sizeof ck));
    if (!t) return ar_error("%s: the model has no tensor %s", cv->model_dir, hf_name);
    int64_t rows = 0, cols = 0;
    if (conv_map_name(cv, hf_name, gname, sizeof gname) <= 0 || tensor_rows_cols(t, &rows, &cols)) return -1;
    if (cv->ftype == AR_FTYPE_ALL_F32) return AR_GGML_F32;
    return (int)ar_gguf_tensor_type(cv->ftype, &cv->info, gname, t->ndim, cols);
}

/* ---- DeepSeek's kv_b_proj and gpt-oss's experts (gguf_ds_oss.h) -------------------------- */

static int layer_of(const char *gname)
{
    int l = -1;
    return sscanf(gname, "blk.%d.", &l) == 1 ? l : -1;
}

/* Quantize x [rows, cols] to the mix's type for gname (n_dims as llama.cpp's tensor) and append it as ne. */
static int add_quantized(ar_gguf_conv *cv, const char *gname, const float *x, int n_dims, const int64_t *ne, int64_t rows,
                         int64_t cols, const float *imx)
{
    ar_ggml_type type = cv->ftype == AR_FTYPE_ALL_F32 ? AR_GGML_F32 : ar_gguf_tensor_type(cv->ftype, &cv->info, gname, n_dims, cols);
    size_t nbytes = ar_ggml_row_bytes(type, cols) * (size_t)rows;
    void *q = malloc(nbytes);
    if (!q) return ar_error("%s: out of memory", gname);
    int rc = ar_ggml_quantize(type, x, q, rows, cols, ar_ggml_is_quantized(type) ? imx : NULL);
    if (!rc) rc = ar_gguf_writer_add_tensor(cv->w, gname, type, n_dims, ne, q, nbytes);
    free(q);
    return rc;
}

/* kv_b_proj [NH·(DN+DV), KL] of layer `gname`'s as llama.cpp's attn_k_b and attn_v_b. With tuned
 * blocks (type tt), the v rows keep their bytes when attn_v_b's type is tt; the k rows, transposed,
 * are quantized again from the tuned values. kvb: the f32 values (dequantized tuned blocks). */
static int add_kvb(ar_gguf_conv *cv, const char *gname, const float *kvb, const void *tuned, ar_ggml_type tt,
                   ar_gguf_imatrix_fn imatrix, void *ictx)
{
    ar_gguf_kvb k = ar_gguf_kvb_of(&cv->cfg);
    int l = layer_of(gname), rc = 0;
    char kn[64], vn[64];
    snprintf(kn, sizeof kn, "blk.%d.attn_k_b.weight", l);
    snprintf(vn, sizeof vn, "blk.%d.attn_v_b.weight", l);
    float *kb = malloc(sizeof(float) * (size_t)k.NH * k.KL * k.DN), *vb = malloc(sizeof(float) * (size_t)k.NH * k.DV * k.KL);
    if (!kb || !vb) rc = ar_error("%s: out of memory", gname);
    if (!rc) ar_gguf_kvb_split(&k, kvb, kb, vb);
    int64_t kne[3] = {k.DN, k.KL, k.NH}, vne[3] = {k.KL, k.DV, k.NH};
    /* the imatrix of kv_b's input (the latent) is v_b's; k_b's input (q_nope) has none here */
    if (!rc) rc = add_quantized(cv, kn, kb, 3, kne, (int64_t)k.NH * k.KL, k.DN, NULL);
    ar_ggml_type vt = cv->ftype == AR_FTYPE_ALL_F32 ? AR_GGML_F32 : ar_gguf_tensor_type(cv->ftype, &cv->info, vn, 3, k.KL);
    if (!rc && tuned && vt == tt) {   /* the tuned v rows as they are, head by head */
        size_t rb = ar_ggml_row_bytes(tt, k.KL), hb = rb * (size_t)k.DV;
        uint8_t *v = malloc(hb * (size_t)k.NH);
        if (!v) rc = ar_error("%s: out of memory", gname);
        for (int h = 0; !rc && h < k.NH; h++)
            memcpy(v + hb * (size_t)h, (const uint8_t *)tuned + rb * ((size_t)h * (k.DN + k.DV) + k.DN), hb);
        if (!rc) rc = ar_gguf_writer_add_tensor(cv->w, vn, tt, 3, vne, v, hb * (size_t)k.NH);
        free(v);
    } else if (!rc) {
        const float *imx = imatrix ? imatrix(ictx, gname, k.KL) : NULL;
        rc = add_quantized(cv, vn, vb, 3, vne, (int64_t)k.NH * k.DV, k.KL, imx);
    }
    free(kb);
    free(vb);
    return rc;
}

/* "model.layers.L.mlp.experts.…" of a gpt-oss checkpoint (fused, MXFP4 or per expert): L, else -1 */
static int oss_expert_layer(const ar_gguf_conv *cv, const char *hf)
{
    int l, used = 0;
    if (!cv->fused || sscanf(hf, "model.layers.%d.mlp.experts.%n", &l, &used) != 1 || !used) return -1;
    return l >= 0 && l < cv->cfg.n_layers ? l : -1;
}

/* One gpt-oss expert's projection into its slot (unless a tuned one is there), read through the fused source. */
static int oss_expert(ar_gguf_conv *cv, const char *hf, ar_gguf_imatrix_fn imatrix, void *ictx)
{
    char gname[160];
    int e, ndim;
    int64_t sh[4];
    ar_gguf_expert_name(hf, gname, sizeof gname, &e);
    if (ar_gguf_stack_has(cv->stacks, gname, e)) return 0;
    if (ar_fused_shape(cv->fused, hf, &ndim, sh) || ndim != 2) return ar_error("%s: the model has no tensor %s", cv->model_dir, hf);
    ar_ggml_type type = cv->ftype == AR_FTYPE_ALL_F32 ? AR_GGML_F32 : ar_gguf_tensor_type(cv->ftype, &cv->info, gname, 3, sh[1]);
    float *x = malloc(sizeof(float) * (size_t)(sh[0] * sh[1]));
    if (!x) return ar_error("%s: out of memory", hf);
    int rc = ar_fused_read_rows(cv->fused, hf, 0, sh[0], x);
    const float *imx = !rc && imatrix && ar_ggml_is_quantized(type) ? imatrix(ictx, gname, sh[1]) : NULL;
    void *slot = rc ? NULL : ar_gguf_stack_slot(cv->stacks, gname, e, type, sh[0], sh[1]);
    rc = slot ? ar_ggml_quantize(type, x, slot, sh[0], sh[1], imx) : -1;
    if (!rc) rc = ar_gguf_stack_filled(cv->stacks, cv->w, gname, e);
    free(x);
    return rc;
}

/* Layer l's experts and their biases, ffn_{gate,up,down}_exps.bias {N, E} F32 (conversion/gpt_oss.py
 * splits gate_up_proj_bias into its even / odd columns; fused_experts.c reads them so). */
static int oss_layer(ar_gguf_conv *cv, int l, ar_gguf_imatrix_fn imatrix, void *ictx)
{
    static const char *const proj[3] = {"gate", "up", "down"};
    const int E = cv->cfg.moe.n_experts;
    if (cv->oss_done[l]) return 0;
    cv->oss_done[l] = 1;
    for (int j = 0; j < 3; j++) {
        float *bias = NULL;
        int64_t n = 0;
        int rc = 0;
        for (int e = 0; e < E && !rc; e++) {
            char hf[160];
            int ndim;
            int64_t sh[4];
            snprintf(hf, sizeof hf, "model.layers.%d.mlp.experts.%d.%s_proj.weight", l, e, proj[j]);
            if ((rc = oss_expert(cv, hf, imatrix, ictx))) break;
            snprintf(hf, sizeof hf, "model.layers.%d.mlp.experts.%d.%s_proj.bias", l, e, proj[j]);
            if (ar_fused_shape(cv->fused, hf, &ndim, sh) || ndim != 1 || (e && sh[0] != n)) {
                rc = ar_error("%s: the model has no tensor %s of the others' shape", cv->model_dir, hf);
                break;
            }
            if (!bias && !(bias = malloc(sizeof(float) * (size_t)(n = sh[0]) * (size_t)E))) rc = ar_error("out of memory");
            if (!rc) rc = ar_fused_read_rows(cv->fused, hf, 0, n, bias + (size_t)e * n);
        }
        char gname[64];
        int64_t ne[2] = {n, E};
        snprintf(gname, sizeof gname, "blk.%d.ffn_%s_exps.bias", l, proj[j]);
        if (!rc) rc = ar_gguf_writer_add_tensor(cv->w, gname, AR_GGML_F32, 2, ne, bias, sizeof(float) * (size_t)(n * E));
        free(bias);
        if (rc) return -1;
    }
    return 0;
}

int ar_gguf_conv_add_blocks(ar_gguf_conv *cv, const char *hf_name, ar_ggml_type type, int64_t n_rows,
                            int64_t n_cols, const void *blocks, size_t nbytes)
{
    char gname[256], ck[512];
    int expert;
    if (oss_expert_layer(cv, hf_name) >= 0 && ar_gguf_expert_name(hf_name, gname, sizeof gname, &expert)) {
        int ndim;
        int64_t sh[4];
        size_t rb = ar_ggml_row_bytes(type, n_cols);
        if (ar_fused_shape(cv->fused, hf_name, &ndim, sh) || ndim != 2 || sh[0] != n_rows || sh[1] != n_cols)
            return ar_error("%s: %s [%lld, %lld] is not an expert of the model", cv->model_dir, hf_name, (long long)n_rows,
                            (long long)n_cols);
        if (!rb || rb * (size_t)n_rows != nbytes)
            return ar_error("%s: %zu bytes of %s for %s", cv->model_dir, nbytes, ar_ggml_type_name(type), hf_name);
        void *slot = ar_gguf_stack_slot(cv->stacks, gname, expert, type, n_rows, n_cols);
        if (!slot) return -1;
        memcpy(slot, blocks, nbytes);
        return ar_gguf_stack_filled(cv->stacks, cv->w, gname, expert);
    }
    long i = tensor_index(cv, ckpt_name(cv, hf_name, ck, sizeof ck));
    if (i < 0) return -1;
    const ar_st_tensor *t = ar_st_at(cv->st, (size_t)i);
    if (cv->done[i]) return ar_error("%s: tensor %s given twice", cv->model_dir, hf_name);
    if (conv_map_name(cv, hf_name, gname, sizeof gname) <= 0) return -1;
    if (t->ndim != 2 || t->shape[0] != n_rows || t->shape[1] != n_cols)
        return ar_error("%s: %s is [%lld, %lld] but the model's tensor is not", cv->model_dir, hf_name,
                        (long long)n_rows, (long long)n_cols);
    size_t row_bytes = ar_ggml_row_bytes(type, n_cols);
    if (!row_bytes || row_bytes * (size_t)n_rows != nbytes)
        return ar_error("%s: %zu bytes of %s for %s [%lld, %lld]", cv->model_dir, nbytes, ar_ggml_type_name(type),
                        hf_name, (long long)n_rows, (long long)n_cols);
    if (strstr(gname, ".attn_kv_b.weight") && ar_gguf_ds_oss_arch(&cv->cfg)) {   /* written split */
        /* the v rows as tuned; the k rows, transposed into attn_k_b, have no tuned form: the
         * checkpoint's values, rounded to nearest there (so a no-data file is llama-quantize's) */
        ar_gguf_kvb k = ar_gguf_kvb_of(&cv->cfg);
        float *x = malloc(sizeof(float) * (size_t)(n_rows * n_cols));
        int rc = x ? 0 : ar_error("out of memory");
        if (!rc && (n_rows != (int64_t)k.NH * (k.DN + k.DV) || n_cols != k.KL))
            rc = ar_error("%s: %s does not have the MLA heads' rows", cv->model_dir, hf_name);
        if (!rc) rc = ar_st_read_f32(cv->st, t->name, x, (size_t)t->numel);
        for (int64_t r = 0; !rc && r < n_rows; r++)
            if (r % (k.DN + k.DV) >= k.DN)
                rc = ar_ggml_dequantize(type, (const uint8_t *)blocks + row_bytes * (size_t)r, x + r * n_cols, n_cols);
        if (!rc) rc = add_kvb(cv, gname, x, blocks, type, NULL, NULL);
        free(x);
        if (!rc) cv->done[i] = 1;
        return rc;
    }
    if (ar_gguf_expert_name(hf_name, gname, sizeof gname, &expert)) {   /* one slot of the layer's 3-D tensor */
        void *slot = ar_gguf_stack_slot(cv->stacks, gname, expert, type, n_rows, n_cols);
        if (!slot) return -1;
        memcpy(slot, blocks, nbytes);
        cv->done[i] = 1;
        return ar_gguf_stack_filled(cv->stacks, cv->w, gname, expert);
    }
    void *copy = NULL;
    int heads = rope_heads(cv, gname), rc = 0;
    double fold = takes_query_fold(cv, gname) ? query_fold(cv) : 1.0;
    if (heads || fold != 1.0) {   /* permute / rescale a copy, the caller's bytes stay as given */
        if (!(copy = malloc(nbytes))) return ar_error("out of memory");
        memcpy(copy, blocks, nbytes);
        if (heads) rc = ar_gguf_permute_rows(copy, n_rows, row_bytes, heads);
        if (!rc && fold != 1.0) rc = ar_gguf_scale_blocks(copy, type, nbytes, fold, hf_name);
    }
    int64_t ne[2] = {n_cols, n_rows};
    if (!rc) rc = add_tensor(cv, gname, type, 2, ne, copy ? copy : blocks, nbytes);
    free(copy);
    if (!rc) cv->done[i] = 1;
    return rc;
}

/* Read, permute, quantize with the mix's type and append one HF tensor. */
static int convert_tensor(ar_gguf_conv *cv, const ar_st_tensor *t, ar_gguf_imatrix_fn imatrix, void *ictx)
{
    char gname[256], tb[512];
    const char *name = cv->mm ? ar_mm_unmap_name(&cv->mm_names, t->name, tb, sizeof tb) : t->name;
    if (!name) return 0;   /* outside a VLM's text stack */
    int ol = oss_expert_layer(cv, name);
    if (ol >= 0) return oss_layer(cv, ol, imatrix, ictx);   /* the whole layer's experts at once */
    int m = conv_map_name(cv, name, gname, sizeof gname);
    if (m <= 0) return m < 0 ? ar_error_prefix(t->file) : 0;
    int64_t rows = 0, cols = 0;
    if (tensor_rows_cols(t, &rows, &cols)) return -1;
    float *x = malloc(sizeof(float) * (size_t)t->numel);
    if (!x) return ar_error("%s: out of memory", t->name);
    int rc = ar_st_read_f32(cv->st, t->name, x, (size_t)t->numel);
    if (!rc) adjust_values(cv, gname, x, t->numel);
    int heads = rope_heads(cv, gname);
    if (!rc && heads) rc = ar_gguf_permute_rows(x, t->ndim == 2 ? rows : cols, sizeof(float) * (t->ndim == 2 ? cols : 1), heads);
    ar_ggml_type type = rc ? AR_GGML_F32 : (ar_ggml_type)ar_gguf_conv_type(cv, name);
    size_t nbytes = ar_ggml_row_bytes(type, cols) * (size_t)rows;
    void *q = rc ? NULL : malloc(nbytes);
    if (!rc && !q) rc = ar_error("%s: out of memory", t->name);
    const float *imx = imatrix && ar_ggml_is_quantized(type) ? imatrix(ictx, gname, cols) : NULL;
    int expert, is_expert = ar_gguf_expert_name(name, gname, sizeof gname, &expert);
    if (!rc && strstr(gname, ".attn_kv_b.weight") && ar_gguf_ds_oss_arch(&cv->cfg)) {
        free(q);
        rc = add_kvb(cv, gname, x, NULL, AR_GGML_F32, imatrix, ictx);
        free(x);
        return rc;
    }
    if (!rc && is_expert) {   /* quantized straight into its slot of the layer's 3-D tensor */
        free(q);
        q = ar_gguf_stack_slot(cv->stacks, gname, expert, type, rows, cols);
        rc = q ? ar_ggml_quantize(type, x, q, rows, cols, imx) : -1;
        if (!rc) rc = ar_gguf_stack_filled(cv->stacks, cv->w, gname, expert);
        free(x);
        return rc;
    }
    if (!rc) rc = ar_ggml_quantize(type, x, q, rows, cols, imx);
    int64_t ne[2] = {cols, rows};
    /* Qwen2-MoE's shared_expert_gate [1, hidden] is llama.cpp's 1-D ffn_gate_inp_shexp {hidden} */
    int ndim = ends_with(gname, ".ffn_gate_inp_shexp.weight") ? 1 : t->ndim;
    if (!rc) rc = add_tensor(cv, gname, type, ndim, ne, q, nbytes);
    free(x);
    free(q);
    return rc;
}

static int convert_rest(ar_gguf_conv *cv, ar_gguf_imatrix_fn imatrix, void *ictx)
{
    for (size_t i = 0; i < ar_st_count(cv->st); i++) {
        if (cv->done[i] || ar_st_fp8_role(cv->st, ar_st_at(cv->st, i)->name) == 2) continue;   /* FP8 scales */
        if (convert_tensor(cv, ar_st_at(cv->st, i), imatrix, ictx)) return -1;
        cv->done[i] = 1;
    }
    return 0;
}

int ar_gguf_conv_finish(ar_gguf_conv *cv, ar_gguf_imatrix_fn imatrix, void *imatrix_ctx)
{
    if (convert_rest(cv, imatrix, imatrix_ctx) || ar_gguf_stacks_check_complete(cv->stacks, cv->model_dir)) {
        ar_gguf_conv_abort(cv);
        return -1;
    }
    ar_gguf_writer *w = cv->w;
    cv->w = NULL;
    ar_gguf_conv_abort(cv);
    return ar_gguf_writer_finish(w);
}

void ar_gguf_conv_abort(ar_gguf_conv *cv)
{
    if (!cv) return;
    ar_gguf_writer_abort(cv->w);
    ar_st_close(cv->st);
    if (cv->fused) ar_fused_close(cv->fused);
    free(cv->oss_done);
    ar_gguf_stacks_free(cv->stacks);
    free(cv->done);
    free(cv);
}

int ar_gguf_convert_hf(const char *model_dir, const char *out_path, ar_gguf_ftype ftype,
                       ar_gguf_imatrix_fn imatrix, void *imatrix_ctx)
{
    ar_gguf_conv *cv = ar_gguf_conv_open(model_dir, out_path, ftype, imatrix != NULL);
    if (!cv) return -1;
    return ar_gguf_conv_finish(cv, imatrix, imatrix_ctx);
}
