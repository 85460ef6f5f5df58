/* quantized_source.c — unpack exported folders (see quantized_source.h). */
#include "quantized_source.h"
#include "error.h"
#include "hf_folder.h"
#include "packing.h"
#include "quant_fp.h"
#include "safetensors.h"
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <regex.h>
#include <string.h>

typedef enum { L_NONE, L_GPTQ_ZM1, L_GPTQ, L_AWQ, L_CT } layout_t;

struct ar_qfolder {
    char           *dir;
    ar_safetensors *st;
    cJSON          *qcfg;           /* quantization_config or NULL */
    layout_t        layout;
    const char     *layout_name;
    int             bits, group_size;
    int             block;          /* FP8 block edge of compressed-tensors layers, 0 if none */
    char            cached[512];    /* layer whose dequantized weight is in wcache */
    float          *wcache;
};

static int parse_layout(ar_qfolder *q, const char *path) {
    const cJSON *m = cJSON_GetObjectItem(q->qcfg, "quant_method");
    const char *method = cJSON_IsString(m) ? m->valuestring : "";
    if (!strcmp(method, "auto-round")) {
        const cJSON *pf = cJSON_GetObjectItem(q->qcfg, "packing_format");
        const char *p = cJSON_IsString(pf) ? pf->valuestring : "auto_round:auto_gptq";
        if (strstr(p, "llm_compressor") || !strncmp(p, "auto_round:fp8", 14)) {
            q->layout = L_CT;   /* compressed-tensors tensor names (spec §6.1, §6.4) */
            q->layout_name = "auto_round:llm_compressor";
            const cJSON *g = cJSON_GetObjectItem(q->qcfg, "group_size");
            if (!strcmp(p, "auto_round:fp8") && cJSON_IsNumber(g) && g->valueint > 0) q->block = g->valueint;
            return 0;
        }
        if (strstr(p, "awq")) { q->layout = L_AWQ; q->layout_name = "auto_round:auto_awq"; }
        else if (strstr(p, "gptq")) { q->layout = L_GPTQ_ZM1; q->layout_name = "auto_round:auto_gptq"; }
        else if (!strcmp(p, "auto_round")) { q->layout = L_GPTQ; q->layout_name = "auto_round"; }
        else return ar_error("%s: unknown packing_format '%s'", path, p);
    } else if (!strcmp(method, "gptq")) {
        const cJSON *cf = cJSON_GetObjectItem(q->qcfg, "checkpoint_format");
        int v2 = cJSON_IsString(cf) && !strcmp(cf->valuestring, "gptq_v2");
        q->layout = v2 ? L_GPTQ : L_GPTQ_ZM1;
        q->layout_name = "gptq";
    } else if (!strcmp(method, "compressed-tensors")) {
        q->layout = L_CT;
        q->layout_name = "compressed-tensors";
        const cJSON *grp;
        cJSON_ArrayForEach(grp, cJSON_GetObjectItem(q->qcfg, "config_groups")) {
            const cJSON *bs = cJSON_GetObjectItem(cJSON_GetObjectItem(grp, "weights"), "block_structure");
            if (cJSON_GetArraySize(bs) == 2 && cJSON_IsNumber(cJSON_GetArrayItem(bs, 0)))
                q->block = cJSON_GetArrayItem(bs, 0)->valueint;
        }
        return 0;
    } else if (!strcmp(method, "awq")) {
        q->layout = L_AWQ;
        q->layout_name = "awq";
    } else return ar_error("%s: unsupported quant_method '%s'", path, method);
    const cJSON *b = cJSON_GetObjectItem(q->qcfg, "bits"), *g = cJSON_GetObjectItem(q->qcfg, "group_size");
    if (!cJSON_IsNumber(b) || !cJSON_IsNumber(g)) return ar_error("%s: quantization_config lacks bits/group_size", path);
    q->bits = b->valueint;
    q->group_size = g->valueint;
    return 0;
}

static int read_config(ar_qfolder *q) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", q->dir);
    char *text = hf_read_file(path, NULL);
    if (!text) return -1;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg) return ar_error("%s: not valid JSON", path);
    q->qcfg = cJSON_DetachItemFromObject(cfg, "quantization_config");
    cJSON_Delete(cfg);
    q->layout = L_NONE;
    q->layout_name = "none";
    return q->qcfg ? parse_layout(q, path) : 0;
}

/* The weight strategy of a compressed-tensors config when all its groups
 * agree ("tensor", "channel", "block", ...), else NULL. */
static const char *ct_strategy(const ar_qfolder *q) {
    const char *s = NULL;
    const cJSON *g;
    cJSON_ArrayForEach(g, cJSON_GetObjectItem(q->qcfg, "config_groups")) {
        const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(g, "weights"), "strategy");
        if (!cJSON_IsString(v) || (s && strcmp(s, v->valuestring))) return NULL;
        s = v->valuestring;
    }
    return s;
}

/* compressed-tensors FP8 weights: each comes with NAME.weight_scale
 * (auto_round:fp8 blocks: NAME.weight_scale_inv) of the shape its strategy gives (per tensor [1], per channel [n, 1], blocks
 * [ceil(n / b), ceil(k / b)]); otherwise they would fail later, as "not a
 * float type", or be read with another tiling. */
static int ct_scales_present(const ar_qfolder *q) {
    char sname[600];
    const char *strat = q->layout == L_CT ? ct_strategy(q) : NULL;
    for (size_t i = 0; q->layout == L_CT && i < ar_st_count(q->st); i++) {
        const ar_st_tensor *t = ar_st_at(q->st, i);
        size_t n = strlen(t->name);
        if (t->dtype != AR_F8_E4M3 || n < 7 || strcmp(t->name + n - 7, ".weight") || t->ndim != 2) continue;
        /* auto_round:fp8 block exports name it weight_scale_inv (ct_dequant reads either) */
        snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
        const ar_st_tensor *s = ar_st_find(q->st, sname);
        snprintf(sname, sizeof sname, "%s_scale", t->name);
        if (!s) s = ar_st_find(q->st, sname);
        else snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
        if (!s) return ar_error("%s: FP8 tensor '%s' has no scale '%s'", t->file, t->name, sname);
        int64_t r = t->shape[0], c = t->shape[1], b = q->block;
        int ok = !strat || (!strcmp(strat, "tensor") && s->numel == 1) ||
                 (!strcmp(strat, "channel") && s->shape[0] == r && (s->ndim == 1 || (s->ndim == 2 && s->shape[1] == 1))) ||
                 (!strcmp(strat, "block") && b > 0 && s->ndim == 2 && s->shape[0] == (r + b - 1) / b &&
                  s->shape[1] == (c + b - 1) / b) ||
                 (strcmp(strat, "tensor") && strcmp(strat, "channel") && strcmp(strat, "block"));
        if (!ok) {
            char sh[64] = "[";
            for (int d = 0; d < s->ndim && d < 4; d++)
                snprintf(sh + strlen(sh), sizeof sh - strlen(sh), "%s%lld", d ? ", " : "", (long long)s->shape[d]);
            return ar_error("%s: scale '%s' has shape %s], not what strategy %s gives FP8 tensor '%s' [%lld, %lld]",
                            s->file, sname, sh, strat, t->name, (long long)r, (long long)c);
        }
    }
    return 0;
}

ar_qfolder *ar_qfolder_open(const char *dir) {
    ar_qfolder *q = calloc(1, sizeof *q);
    if (!q || !(q->dir = strdup(dir))) { free(q); ar_error("%s: out of memory", dir); return NULL; }
    if (read_config(q) || !(q->st = ar_st_open_dir(dir)) || ct_scales_present(q)) { ar_qfolder_close(q); return NULL; }
    return q;
}

void ar_qfolder_close(ar_qfolder *q) {
    if (!q) return;
    ar_st_close(q->st);
    cJSON_Delete(q->qcfg);
    free(q->wcache);
    free(q->dir);
    free(q);
}

const char *ar_qfolder_layout(const ar_qfolder *q) { return q->layout_name; }

static const ar_st_tensor *find_part(const ar_qfolder *q, const char *layer, const char *part) {
    char name[600];
    snprintf(name, sizeof name, "%s.%s", layer, part);
    return ar_st_find(q->st, name);
}

int ar_qfolder_is_packed(const ar_qfolder *q, const char *layer) {
    if (q->layout == L_CT)
        return find_part(q, layer, "weight_packed") ||
               (find_part(q, layer, "weight") && (find_part(q, layer, "weight_scale") || find_part(q, layer, "weight_scale_inv")));
    return q->layout != L_NONE && find_part(q, layer, "qweight") != NULL;
}

/* ---- compressed-tensors layers (int pack-quantized, MXFP4/8, NVFP4, FP8) --- */

/* [n, k] of a compressed-tensors layer from its tensors. */
static int ct_dims(const ar_qfolder *q, const char *layer, int *n, int *k) {
    const ar_st_tensor *wp = find_part(q, layer, "weight_packed"), *wt = find_part(q, layer, "weight"),
                       *shp = find_part(q, layer, "weight_shape");
    if (wp && wp->ndim == 2 && wp->dtype == AR_U8) { *n = (int)wp->shape[0]; *k = (int)wp->shape[1] * 2; return 0; }
    if (wp && wp->ndim == 2 && wp->dtype == AR_I32 && shp && shp->numel == 2 && (shp->dtype == AR_I64 || shp->dtype == AR_I32)) {
        int64_t d[2];
        if (shp->dtype == AR_I64) memcpy(d, shp->data, sizeof d);
        else { int32_t d32[2]; memcpy(d32, shp->data, sizeof d32); d[0] = d32[0]; d[1] = d32[1]; }
        *n = (int)d[0]; *k = (int)d[1];
        return 0;
    }
    if (wt && wt->ndim == 2 && wt->dtype == AR_F8_E4M3) { *n = (int)wt->shape[0]; *k = (int)wt->shape[1]; return 0; }
    return ar_error("%s: %s: no weight_packed (u8, or i32 with weight_shape) or f8 weight", q->dir, layer);
}

/* A scale tensor widened to f32 (u8 E8M0 and f8 E4M3 decoded). */
static float *ct_scales(const ar_st_tensor *t) {
    float *f = malloc(sizeof(float) * (t->numel ? t->numel : 1));
    if (!f) return NULL;
    const uint8_t *b = t->data;
    if (t->dtype == AR_U8) for (int64_t i = 0; i < t->numel; i++) f[i] = ar_e8m0_decode(b[i]);
    else if (t->dtype == AR_F8_E4M3) for (int64_t i = 0; i < t->numel; i++) f[i] = ar_e4m3_decode(b[i]);
    else if (t->dtype == AR_F32) memcpy(f, t->data, t->nbytes);
    else {
        void *tmp = malloc(t->nbytes ? t->nbytes : 1);
        if (!tmp || (memcpy(tmp, t->data, t->nbytes), ar_to_f32(f, tmp, t->dtype, (size_t)t->numel))) {
            free(tmp); free(f); return NULL;
        }
        free(tmp);
    }
    return f;
}

/* Column tiling of a scale tensor [rows, cols] over W [n, k]: group width
 * and rows per scale row (1, or the block height / n for one per tensor). */
static int ct_tiling(const ar_st_tensor *s, int n, int k, int block, int *gw, int *gh) {
    if (s->numel == 1) { *gw = k; *gh = n; return 0; }
    if (s->ndim != 2 || s->shape[1] <= 0 || s->shape[0] <= 0) return -1;
    *gw = (int)((k + s->shape[1] - 1) / s->shape[1]);
    *gh = (int)((n + s->shape[0] - 1) / s->shape[0]);
    if (block > 0 && s->shape[0] != n) *gw = *gh = block;   /* FP8 blocks (edge tiles are partial) */
    return (int64_t)((n + *gh - 1) / *gh) == s->shape[0] && (int64_t)((k + *gw - 1) / *gw) == s->shape[1] ? 0 : -1;
}

/* Dequantize a compressed-tensors layer into w [n, k]. */
static int ct_dequant(const ar_qfolder *q, const char *layer, int n, int k, float *w) {
    const ar_st_tensor *wp = find_part(q, layer, "weight_packed"), *wt = find_part(q, layer, "weight"),
                       *st = find_part(q, layer, "weight_scale"), *gst = find_part(q, layer, "weight_global_scale"),
                       *zt = find_part(q, layer, "weight_zero_point");
    if (!st) st = find_part(q, layer, "weight_scale_inv");
    int gw, gh;
    if (!st || ct_tiling(st, n, k, q->block, &gw, &gh)) return ar_error("%s: %s: missing or misshaped weight_scale", q->dir, layer);
    float *s = ct_scales(st);
    uint8_t *codes = malloc((size_t)n * k);
    if (!s || !codes) { free(s); free(codes); return ar_error("%s: %s: out of memory", q->dir, layer); }
    int ints = wp && wp->dtype == AR_I32, bits = 8;
    if (wp && !ints) ar_unpack_fp4(wp->data, n, k, codes), bits = 4;
    else if (ints) {
        bits = (int)(wp->shape[1] * 32 / k);
        const uint8_t *raw = wp->data;
        uint32_t words[8], v[32];
        for (int r = 0; r < n; r++)
            for (int t = 0; t < k / 32; t++) {
                memcpy(words, raw + ((size_t)r * wp->shape[1] + (size_t)t * bits) * 4, (size_t)bits * 4);
                ar_unpack32(words, bits, v);
                for (int i = 0; i < 32; i++) codes[(size_t)r * k + 32 * t + i] = (uint8_t)v[i];
            }
    } else memcpy(codes, wt->data, (size_t)n * k);
    float gs = 1.0f;
    if (gst) memcpy(&gs, gst->data, sizeof gs);
    int nv = wp && !ints && st->dtype == AR_F8_E4M3, scol = (k + gw - 1) / gw;
    const int8_t *zp = zt && zt->dtype == AR_I8 ? zt->data : NULL;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < k; c++) {
            size_t si = (size_t)(r / gh) * scol + c / gw, i = (size_t)r * k + c;
            float v = ints ? (float)((int)codes[i] - (1 << (bits - 1)) - (zp ? zp[si] : 0))
                      : bits == 4 ? ar_fp4_decode(codes[i]) : ar_e4m3_decode(codes[i]);
            w[i] = nv ? v * (s[si] / gs) : v * s[si];
        }
    free(s);
    free(codes);
    return 0;
}

/* The "+:" entry of a GPTQ "dynamic" map that matches layer: "+:NAME" as
 * written before, or a regex as AutoRound and GPTQModel write them
 * ("+:.*model\\.layers\\.0\\.mlp\\.down_proj.*"), matched from the start of
 * the name as Python's re.match does. NULL when none matches. */
static const cJSON *dynamic_entry(const cJSON *dyn, const char *layer) {
    const cJSON *c;
    cJSON_ArrayForEach(c, dyn) {
        if (!c->string || strncmp(c->string, "+:", 2)) continue;
        const char *pat = c->string + 2;
        if (!strcmp(pat, layer)) return c;
        size_t n = strlen(pat);
        char *re = malloc(n + 4);
        if (!re) continue;
        snprintf(re, n + 4, "^(%s)", pat);
        regex_t rx;
        int hit = 0;
        if (!regcomp(&rx, re, REG_EXTENDED | REG_NOSUB)) {
            hit = !regexec(&rx, layer, 0, NULL, 0);
            regfree(&rx);
        }
        free(re);
        if (hit) return c;
    }
    return NULL;
}

/* bits / group_size of layer: the global ones overlaid with its extra_config
 * (auto-round) or "+:layer" dynamic entry (gptq). */
static void layer_scheme(const ar_qfolder *q, const char *layer, int *bits, int *group) {
    *bits = q->bits;
    *group = q->group_size;
    const cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(q->qcfg, "extra_config"), layer);
    if (!o) o = dynamic_entry(cJSON_GetObjectItem(q->qcfg, "dynamic"), layer);
    const cJSON *b = cJSON_GetObjectItem(o, "bits"), *g = cJSON_GetObjectItem(o, "group_size");
    if (cJSON_IsNumber(b)) *bits = b->valueint;
    if (cJSON_IsNumber(g)) *group = g->valueint;
}

/* Copy an int32/f16 tensor out of the mapping (tensor data need not be aligned). */
static void *copy_of(const ar_st_tensor *t) {
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    if (p) memcpy(p, t->data, t->nbytes);
    return p;
}

/* Shapes of the three parts, checked against the layout; fills n, k, ng. */
static int layer_dims(const ar_qfolder *q, const char *layer, const ar_st_tensor *qw, const ar_st_tensor *qz,
                      const ar_st_tensor *sc, ar_qunpacked *u) {
    if (qw->dtype != AR_I32 || qz->dtype != AR_I32 || sc->dtype != AR_F16 || qw->ndim != 2 || qz->ndim != 2 ||
        sc->ndim != 2)
        return ar_error("%s: %s: qweight/qzeros must be 2-D int32 and scales 2-D fp16", q->dir, layer);
    u->n = (int)sc->shape[1];
    u->ngroups = (int)sc->shape[0];
    int awq = q->layout == L_AWQ;
    if (awq && u->bits != 4) return ar_error("%s: %s: AWQ layout with %d bits", q->dir, layer, u->bits);
    if (!awq && (u->bits < 2 || u->bits > 8 || (u->bits > 4 && u->bits != 8)))
        return ar_error("%s: %s: unsupported %d-bit GPTQ layer", q->dir, layer, u->bits);
    u->k = awq ? (int)qw->shape[0] : (int)(qw->shape[0] * 32 / u->bits);
    int64_t want_qw1 = awq ? u->n / 8 : u->n, want_qz1 = awq ? u->n / 8 : (int64_t)u->n / 32 * u->bits;
    int g = u->group_size > 0 ? u->group_size : u->k;
    if (qw->shape[1] != want_qw1 || qz->shape[0] != u->ngroups || qz->shape[1] != want_qz1 ||
        u->ngroups != (u->k + g - 1) / g || (!awq && (u->n % 32 || qw->shape[0] * 32 % u->bits)))
        return ar_error("%s: %s: packed shapes disagree with %d-bit G%d ([%lld,%lld] [%lld,%lld] [%lld,%lld])", q->dir,
                        layer, u->bits, u->group_size, (long long)qw->shape[0], (long long)qw->shape[1],
                        (long long)qz->shape[0], (long long)qz->shape[1], (long long)sc->shape[0],
                        (long long)sc->shape[1]);
    return 0;
}

int ar_qfolder_unpack(ar_qfolder *q, const char *layer, ar_qunpacked *u) {
    memset(u, 0, sizeof *u);
    const ar_st_tensor *qw = find_part(q, layer, "qweight"), *qz = find_part(q, layer, "qzeros"),
                       *sc = find_part(q, layer, "scales");
    if (q->layout == L_NONE || !qw || !qz || !sc) return ar_error("%s: %s is not a packed layer", q->dir, layer);
    layer_scheme(q, layer, &u->bits, &u->group_size);
    if (layer_dims(q, layer, qw, qz, sc, u)) return -1;
    int g = u->group_size > 0 ? u->group_size : u->k;
    int32_t *w = copy_of(qw), *z = copy_of(qz);
    uint16_t *s = copy_of(sc);
    u->codes = malloc((size_t)u->n * u->k);
    u->scale = malloc((size_t)u->n * u->ngroups * sizeof *u->scale);
    u->zp = malloc((size_t)u->n * u->ngroups * sizeof *u->zp);
    int rc = 0;
    if (!w || !z || !s || !u->codes || !u->scale || !u->zp) rc = ar_error("%s: %s: out of memory", q->dir, layer);
    else if (q->layout == L_AWQ) ar_unpack_awq(u->n, u->k, g, w, z, s, u->codes, u->scale, u->zp);
    else ar_unpack_gptq(u->n, u->k, u->bits, g, q->layout == L_GPTQ_ZM1, w, z, s, u->codes, u->scale, u->zp);
    free(w);
    free(z);
    free(s);
    if (rc) ar_qunpacked_free(u);
    return rc;
}

void ar_qunpacked_free(ar_qunpacked *u) {
    free(u->codes);
    free(u->scale);
    free(u->zp);
    memset(u, 0, sizeof *u);
}

/* ---- tensor source --------------------------------------------------------- */

/* "NAME.weight" of a packed layer: copies NAME into layer and returns 1. */
static int packed_weight(const ar_qfolder *q, const char *name, char *layer, size_t cap) {
    size_t n = strlen(name);
    if (q->layout == L_NONE || n < 8 || n - 7 >= cap || strcmp(name + n - 7, ".weight")) return 0;
    memcpy(layer, name, n - 7);
    layer[n - 7] = 0;
    return ar_qfolder_is_packed(q, layer);
}

static int src_shape(void *ctx, const char *name, int *ndim, int64_t shape[AR_SRC_MAX_DIMS]) {
    ar_qfolder *q = ctx;
    char layer[512];
    if (packed_weight(q, name, layer, sizeof layer) && q->layout == L_CT) {
        int n, k;
        if (ct_dims(q, layer, &n, &k)) return -1;
        *ndim = 2;
        shape[0] = n;
        shape[1] = k;
        return 0;
    }
    if (packed_weight(q, name, layer, sizeof layer)) {
        ar_qunpacked u = {0};
        const ar_st_tensor *qw = find_part(q, layer, "qweight"), *qz = find_part(q, layer, "qzeros"),
                           *sc = find_part(q, layer, "scales");
        layer_scheme(q, layer, &u.bits, &u.group_size);
        if (layer_dims(q, layer, qw, qz, sc, &u)) return -1;
        *ndim = 2;
        shape[0] = u.n;
        shape[1] = u.k;
        return 0;
    }
    const ar_st_tensor *t = ar_st_find(q->st, name);
    if (!t) return 1;
    *ndim = t->ndim;
    for (int d = 0; d < t->ndim && d < AR_SRC_MAX_DIMS; d++) shape[d] = t->shape[d];
    return 0;
}

/* Dequantize layer into q->wcache unless it is already there. */
static int load_layer(ar_qfolder *q, const char *layer, int *k_out) {
    if (q->layout == L_CT) {
        int n, k;
        if (ct_dims(q, layer, &n, &k)) return -1;
        float *w = realloc(q->wcache, (size_t)n * k * sizeof *w);
        if (!w) return ar_error("%s: %s: out of memory", q->dir, layer);
        q->wcache = w;
        q->cached[0] = 0;
        if (ct_dequant(q, layer, n, k, w)) return -1;
        snprintf(q->cached, sizeof q->cached, "%s", layer);
        *k_out = k;
        return 0;
    }
    ar_qunpacked u;
    if (ar_qfolder_unpack(q, layer, &u)) return -1;
    float *w = realloc(q->wcache, (size_t)u.n * u.k * sizeof *w);
    if (!w) { ar_qunpacked_free(&u); return ar_error("%s: %s: out of memory", q->dir, layer); }
    q->wcache = w;
    ar_qlayer l = {.name = layer, .n = u.n, .k = u.k, .bits = u.bits, .group_size = u.group_size,
                   .codes = u.codes, .scale = u.scale, .zp = u.zp};
    ar_qlayer_dequant(&l, w);
    snprintf(q->cached, sizeof q->cached, "%s", layer);
    *k_out = u.k;
    ar_qunpacked_free(&u);
    return 0;
}

static int src_read_rows(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst) {
    ar_qfolder *q = ctx;
    char layer[512];
    if (!packed_weight(q, name, layer, sizeof layer)) return ar_st_read_rows_f32(q->st, name, row0, nrows, dst);
    int ndim, k;
    int64_t shape[AR_SRC_MAX_DIMS];
    if (src_shape(q, name, &ndim, shape)) return -1;
    if (row0 < 0 || nrows < 0 || row0 + nrows > shape[0])
        return ar_error("%s: %s: rows [%lld, %lld) out of range", q->dir, name, (long long)row0, (long long)(row0 + nrows));
    if (strcmp(q->cached, layer) && load_layer(q, layer, &k)) return -1;
    memcpy(dst, q->wcache + row0 * shape[1], (size_t)(nrows * shape[1]) * sizeof *dst);
    return 0;
}

static void src_close(void *ctx) { ar_qfolder_close(ctx); }

int ar_source_quantized(ar_tensor_source *src, const char *dir) {
    ar_qfolder *q = ar_qfolder_open(dir);
    if (!q) return -1;
    src->ctx = q;
    src->shape = src_shape;
    src->read_rows = src_read_rows;
    src->close = src_close;
    return 0;
}
