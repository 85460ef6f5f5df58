/* fused_experts.c — per-expert views of fused expert tensors (fused_experts.h). */
#include "fused_experts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "mxfp4.h"

/* One widened fused tensor: its checkpoint name and f32 data in the
 * parameter layout ([E, H, 2I], [E, 2I], [E, I, H], [E, H]). */
typedef struct {
    char name[200];
    int64_t shape[3];
    int ndim;
    float *data;
} fused_cache;

enum { FC_GATE_UP, FC_GATE_UP_BIAS, FC_DOWN, FC_DOWN_BIAS, FC_N };

typedef struct {
    ar_safetensors *st;
    int layout;                 /* AR_FUSED_* */
    fused_cache cache[FC_N];
} fx_source;

/* A per-expert name: layer prefix length, expert, projection (0 gate, 1 up,
 * 2 down), bias or weight. 0 when name is none. */
static int parse_expert(const char *name, int *plen, int *e, int *proj, int *bias)
{
    const char *m = strstr(name, ".mlp.experts.");
    char p[16], kind[16];
    if (!m || sscanf(m, ".mlp.experts.%d.%15[a-z]_proj.%15s", e, p, kind) != 3) return 0;
    *proj = !strcmp(p, "gate") ? 0 : !strcmp(p, "up") ? 1 : !strcmp(p, "down") ? 2 : -1;
    *bias = !strcmp(kind, "bias") ? 1 : !strcmp(kind, "weight") ? 0 : -1;
    *plen = (int)(m - name);
    return *proj >= 0 && *bias >= 0;
}

/* The fused tensor's name for (prefix, proj, bias) and its cache slot. */
static int fused_name(char *buf, size_t n, const char *name, int plen, int proj, int bias)
{
    snprintf(buf, n, "%.*s.mlp.experts.%s%s", plen, name, proj == 2 ? "down_proj" : "gate_up_proj", bias ? "_bias" : "");
    return (proj == 2 ? FC_DOWN : FC_GATE_UP) + bias;
}

/* The error for a per-expert name the checkpoint does not hold, naming the file. */
static int no_tensor(const fx_source *s, const char *name)
{
    return ar_error("%s: no tensor '%s'", ar_st_label(s->st), name);
}

/* Shape of fused tensor fname (BF16 or MXFP4); 1 when absent. */
static int fused_shape(fx_source *s, const char *fname, int64_t shape[3], int *ndim)
{
    const ar_st_tensor *t = ar_st_find(s->st, fname);
    if (t) {
        if (t->ndim < 2 || t->ndim > 3) return ar_error("%s: fused expert tensor '%s' is %d-D", t->file, fname, t->ndim);
        *ndim = t->ndim;
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        return 0;
    }
    if (!ar_st_has_mxfp4(s->st, fname)) return 1;
    int64_t enk[3];
    if (ar_st_mxfp4_shape(s->st, fname, enk)) return -1;
    *ndim = 3, shape[0] = enk[0], shape[1] = enk[2], shape[2] = enk[1];   /* parameter layout [E, K, N] */
    return 0;
}

/* The widened fused tensor fname in slot k (read now unless cached); name is
 * the per-expert view asked for, for the error when fname is absent. */
static fused_cache *fused_get(fx_source *s, int k, const char *fname, const char *name)
{
    fused_cache *fc = &s->cache[k];
    if (fc->data && !strcmp(fc->name, fname)) return fc;
    free(fc->data), fc->data = NULL;
    int rc = fused_shape(s, fname, fc->shape, &fc->ndim);
    if (rc) { if (rc > 0) no_tensor(s, name); return NULL; }
    size_t n = (size_t)fc->shape[0] * fc->shape[1] * (fc->ndim > 2 ? fc->shape[2] : 1);
    if (!(fc->data = malloc(sizeof(float) * n))) { ar_error("out of memory widening %s", fname); return NULL; }
    rc = ar_st_find(s->st, fname) ? ar_st_read_f32(s->st, fname, fc->data, n)
                                   : ar_st_read_mxfp4(s->st, fname, fc->data, n, 1);
    if (rc) { free(fc->data), fc->data = NULL; return NULL; }
    snprintf(fc->name, sizeof fc->name, "%s", fname);
    return fc;
}

int ar_fused_shape(void *ctx, const char *name, int *ndim, int64_t *shape)
{
    fx_source *s = ctx;
    const ar_st_tensor *t = ar_st_find(s->st, name);
    if (t) {
        *ndim = t->ndim;
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        return 0;
    }
    int plen, e, proj, bias, fnd;
    char fname[200];
    int64_t fs[3];
    if (!parse_expert(name, &plen, &e, &proj, &bias)) return 1;
    fused_name(fname, sizeof fname, name, plen, proj, bias);
    int rc = fused_shape(s, fname, fs, &fnd);
    if (rc) return rc;
    if (e >= fs[0]) return 1;   /* the caller names the missing expert */
    if (fnd != (bias ? 2 : 3)) return ar_error("%s: fused expert tensor '%s' is %d-D", ar_st_label(s->st), fname, fnd);
    if (s->layout == AR_FUSED_ROWS) {   /* [E, 2I, H] and [E, H, I]: rows are the Linear's rows */
        if (bias) return 1;
        *ndim = 2, shape[0] = proj == 2 ? fs[1] : fs[1] / 2, shape[1] = fs[2];
        return 0;
    }
    int64_t I = proj == 2 ? fs[1] : fs[bias ? 1 : 2] / 2;
    if (bias) *ndim = 1, shape[0] = proj == 2 ? fs[1] : I;
    else *ndim = 2, shape[0] = proj == 2 ? fs[2] : I, shape[1] = proj == 2 ? fs[1] : fs[1];
    return 0;
}

int ar_fused_read_rows(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst)
{
    fx_source *s = ctx;
    if (ar_st_find(s->st, name)) return ar_st_read_rows_f32(s->st, name, row0, nrows, dst);
    int plen, e, proj, bias;
    char fname[200];
    if (!parse_expert(name, &plen, &e, &proj, &bias)) return no_tensor(s, name);
    fused_cache *fc = fused_get(s, fused_name(fname, sizeof fname, name, plen, proj, bias), fname, name);
    if (!fc) return -1;
    if (e >= fc->shape[0]) return no_tensor(s, name);
    if (s->layout == AR_FUSED_ROWS) {   /* gate rows 0..I-1, up rows I..2I-1; down as is */
        if (bias) return no_tensor(s, name);
        int64_t R = fc->shape[1], K = fc->shape[2], off = proj == 1 ? R / 2 : 0;
        memcpy(dst, fc->data + (e * R + off + row0) * K, sizeof(float) * (size_t)(nrows * K));
        return 0;
    }
    if (bias) {   /* [E, 2I] interleaved (gate even, up odd) or [E, H] */
        int64_t n = fc->shape[1];
        const float *b = fc->data + e * n;
        for (int64_t r = 0; r < nrows; r++) dst[r] = proj == 2 ? b[row0 + r] : b[2 * (row0 + r) + proj];
        return 0;
    }
    int64_t K = fc->shape[1], M = fc->shape[2];   /* [E, K, M]: out row r is column r (gate/up: 2r + proj) */
    const float *W = fc->data + e * K * M;
    for (int64_t r = 0; r < nrows; r++) {
        int64_t col = proj == 2 ? row0 + r : 2 * (row0 + r) + proj;
        for (int64_t k = 0; k < K; k++) dst[r * K + k] = W[k * M + col];
    }
    return 0;
}

void ar_fused_close(void *ctx)
{
    fx_source *s = ctx;
    for (int k = 0; k < FC_N; k++) free(s->cache[k].data);
    ar_st_close(s->st);
    free(s);
}

void *ar_fused_source_new(ar_safetensors *st, int layout)
{
    fx_source *s = calloc(1, sizeof *s);
    if (!s) { ar_st_close(st); ar_error("out of memory"); return NULL; }
    s->st = st;
    s->layout = layout;
    return s;
}

int ar_fused_present(const ar_safetensors *st)
{
    for (size_t i = 0; i < ar_st_count(st); i++) {
        const char *n = ar_st_at(st, i)->name, *m = strstr(n, ".mlp.experts.");
        if (m && (!strncmp(m + 13, "gate_up_proj", 12) || !strncmp(m + 13, "down_proj", 9))) return 1;
    }
    return 0;
}

int ar_fused_layout_of(const char *model_dir)
{
    ar_config c;
    /* an unreadable config fails its own reader later; the layout is moot then */
    if (ar_config_load_flags(&c, model_dir, AR_CONFIG_ANY_ARCH)) return AR_FUSED_ROWS;
    return c.arch == AR_ARCH_GPT_OSS ? AR_FUSED_GPT_OSS : AR_FUSED_ROWS;
}
