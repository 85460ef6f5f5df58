/* model.c — model = config + tensor source; streaming full forward
 * (see model.h). */
#include "model.h"
#include "block_desc.h"
#include "multimodal.h"
#include "error.h"
#include "fused_experts.h"
#include "ops.h"
#include "safetensors.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Vocabulary rows of lm_head widened at once when it is not cached, and rows
 * of logits materialized at once by ar_model_nll: both bound the memory a
 * forward needs beyond the activations (a 150k vocabulary would otherwise
 * cost 600 KB per position). */
#define HEAD_CHUNK_BYTES (64u << 20)
#define NLL_ROWS 256

struct ar_model {
    ar_config c;
    ar_block_desc bd;           /* the blocks' tensors: linears and norms (MoE models: of the MoE layers) */
    ar_block_desc bd_dense;     /* MoE models with dense layers: theirs (family NULL otherwise) */
    int has_moe;                /* the config has mixture-of-experts layers */
    ar_block_weights cur_dense; /* the streaming buffer of the dense layers of an MoE model */
    ar_tensor_source src;
    int flags;
    ar_block_weights *cached;   /* [n_layers] with AR_MODEL_CACHE, filled lazily */
    unsigned char *cached_ok;   /* [n_layers] 1 once cached[l] is loaded */
    ar_block_weights cur;       /* the streaming buffer otherwise */
    float *embed, *lm_head;     /* [V, C] with AR_MODEL_CACHE (lm_head may == embed) */
    float *norm;                /* [C] the final norm's effective weight (1 + w for Gemma) */
    const char *head_name;      /* lm_head.weight or the embedding when tied */
    ar_block_work ws;
    int ws_B, ws_T;
    float *chunk;               /* head / logits chunk buffer */
    size_t chunk_cap;           /* floats */
    ar_act_spec *act;           /* [n_layers * bd.nlinear] activation quantizers, NULL if none */
    unsigned char *has_act;     /* [n_layers * bd.nlinear] */
    const ar_act_spec **aq;     /* [bd.nlinear] one layer's, as the family installs them */
    float *kv_scale;            /* [n_layers * 2] static FP8 K, V scales (0: off), NULL if none */
};

static const char EMBED[] = "model.embed_tokens.weight", NORM[] = "model.norm.weight", HEAD[] = "lm_head.weight";

/* ---- the safetensors source ------------------------------------------- */

int ar_source_safetensors(ar_tensor_source *src, const char *dir)
{
    ar_safetensors *st = ar_st_open_model(dir);   /* FP8 checkpoints widen through their scales */
    if (!st) return -1;
    void *ctx = ar_fused_source_new(st, ar_fused_layout_of(dir));   /* fused experts readable per expert */
    if (!ctx) return -1;
    *src = (ar_tensor_source){.ctx = ctx, .shape = ar_fused_shape, .read_rows = ar_fused_read_rows, .close = ar_fused_close};
    return 0;
}

/* ---- a vision-language checkpoint's text stack (multimodal.h) ---------- */

/* A source answering text-only names from a checkpoint that keeps its text
 * stack under a prefix. */
typedef struct {
    ar_tensor_source inner;
    ar_mm_names names;
} mm_source;

static int mm_shape(void *ctx, const char *name, int *ndim, int64_t shape[AR_SRC_MAX_DIMS])
{
    mm_source *r = ctx;
    char buf[512];
    return r->inner.shape(r->inner.ctx, ar_mm_map_name(&r->names, name, buf, sizeof buf), ndim, shape);
}

static int mm_read_rows(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst)
{
    mm_source *r = ctx;
    char buf[512];
    return r->inner.read_rows(r->inner.ctx, ar_mm_map_name(&r->names, name, buf, sizeof buf), row0, nrows, dst);
}

static void mm_close(void *ctx)
{
    mm_source *r = ctx;
    if (r->inner.close) r->inner.close(r->inner.ctx);
    free(r);
}

static int src_has(void *ctx, const char *name)
{
    const ar_tensor_source *s = ctx;
    int nd;
    int64_t sh[AR_SRC_MAX_DIMS];
    int rc = s->shape(s->ctx, name, &nd, sh);
    return rc < 0 ? -1 : rc == 0;
}

/* Wrap *src for a checkpoint of class arch (its layout found with
 * ar_mm_resolve). On failure src is closed. */
static int mm_source_wrap(ar_tensor_source *src, const char *arch)
{
    mm_source *r = calloc(1, sizeof *r);
    if (!r || ar_mm_resolve(arch, src_has, src, &r->names)) {
        if (!r) ar_error("out of memory");
        free(r);
        if (src->close) src->close(src->ctx);
        return -1;
    }
    r->inner = *src;
    *src = (ar_tensor_source){.ctx = r, .shape = mm_shape, .read_rows = mm_read_rows, .close = mm_close};
    return 0;
}

/* ---- names and shapes ---------------------------------------------------- */

/* The tensors of one block of nl linears, in a fixed order: nl weights, nl
 * biases, then the norms of the block description (bd->norms, each naming
 * its ar_block_weights slot), then the full-precision MoE tensors (AR_FP_*
 * order); bt_count covers every slot. */
static int bt_count(int nl) { return 2 * nl + AR_NNORM_SLOTS + AR_FP_N; }

/* The description of block layer. */
static const ar_block_desc *layer_bd(const ar_model *m, int layer)
{
    return m->has_moe && !ar_config_layer_moe(&m->c, layer) ? &m->bd_dense : &m->bd;
}

/* Name and expected shape of block tensor j, from the block description bd;
 * 0 if the architecture lacks it. */
static int block_tensor(const ar_block_desc *bd, int layer, int j, char *name, size_t n, int64_t shape[2], int *ndim)
{
    const int bias0 = bd->nlinear, norm0 = 2 * bd->nlinear;
    *ndim = 1;
    if (j < bias0) {
        const ar_linear_desc *l = &bd->lin[j];
        snprintf(name, n, "model.layers.%d.%s.weight", layer, l->name);
        shape[0] = l->n_out; shape[1] = l->k_in; *ndim = 2;
        return 1;
    }
    if (j < norm0) {
        const ar_linear_desc *l = &bd->lin[j - bias0];
        if (!l->has_bias) return 0;
        snprintf(name, n, "model.layers.%d.%s.bias", layer, l->name);
        shape[0] = l->n_out;
        return 1;
    }
    if (j - norm0 >= AR_NNORM_SLOTS) {
        for (int f = 0; f < bd->nfp; f++) {
            const ar_fp_desc *fp = &bd->fp[f];
            if (fp->kind != j - norm0 - AR_NNORM_SLOTS) continue;
            snprintf(name, n, "model.layers.%d.%s", layer, fp->name);
            shape[0] = fp->rows, shape[1] = fp->cols, *ndim = fp->cols ? 2 : 1;
            return 1;
        }
        return 0;
    }
    if (j - norm0 >= bd->nnorm) return 0;
    const ar_norm_desc *nd = &bd->norms[j - norm0];
    snprintf(name, n, "model.layers.%d.%s.weight", layer, nd->name);
    shape[0] = nd->size;
    return 1;
}

/* Where block tensor j of bd goes in w (bd NULL: norm j is slot j, for freeing). */
static float **block_slot(ar_block_weights *w, const ar_block_desc *bd, int j)
{
    const int nl = w->nlinear;
    if (j < nl) return &w->w[j];
    if (j < 2 * nl) return &w->b[j - nl];
    if (j < 2 * nl + AR_NNORM_SLOTS) return ar_block_norm_slot(w, bd ? bd->norms[j - 2 * nl].slot : j - 2 * nl);
    float **fp[AR_FP_N] = {&w->router, &w->router_b, &w->score_bias, &w->shared_gate, &w->sinks};
    return fp[j - 2 * nl - AR_NNORM_SLOTS];
}

/* Older Mixtral checkpoints name the experts block_sparse_moe.experts.E.w1
 * (gate), w3 (up), w2 (down) and the router block_sparse_moe.gate (AutoRound
 * 0.16.1's exports: block_sparse_moe.experts.E.gate_proj): when the
 * source lacks name, the legacy spelling if the source has that one, else
 * name itself. alt holds the result (n bytes). */
static const char *src_name(ar_model *m, const char *name, char *alt, size_t n)
{
    int nd;
    int64_t sh[AR_SRC_MAX_DIMS];
    if (!m->has_moe || m->src.shape(m->src.ctx, name, &nd, sh) != 1) return name;
    const char *mlp = strstr(name, ".mlp.");
    if (!mlp) return name;
    int e;
    char proj[16];
    if (sscanf(mlp, ".mlp.experts.%d.%15[a-z]_proj.weight", &e, proj) == 2) {
        const char *w = !strcmp(proj, "gate") ? "w1" : !strcmp(proj, "up") ? "w3" : !strcmp(proj, "down") ? "w2" : NULL;
        if (!w) return name;
        snprintf(alt, n, "%.*s.block_sparse_moe.experts.%d.%s.weight", (int)(mlp - name), name, e, w);
        if (m->src.shape(m->src.ctx, alt, &nd, sh) != 0) /* AutoRound 0.16.1's Mixtral export: old prefix, new names */
            snprintf(alt, n, "%.*s.block_sparse_moe.experts.%d.%s_proj.weight", (int)(mlp - name), name, e, proj);
    } else if (!strcmp(mlp, ".mlp.gate.weight")) {
        snprintf(alt, n, "%.*s.block_sparse_moe.gate.weight", (int)(mlp - name), name);
    } else return name;
    return m->src.shape(m->src.ctx, alt, &nd, sh) == 0 ? alt : name;
}

static int check_shape(ar_model *m, const char *name, int ndim, const int64_t *want)
{
    int nd;
    int64_t sh[AR_SRC_MAX_DIMS];
    char alt[200];
    name = src_name(m, name, alt, sizeof alt);
    int rc = m->src.shape(m->src.ctx, name, &nd, sh);
    if (rc < 0) return -1;
    int layer, e;
    if (rc > 0 && sscanf(name, "model.layers.%d.mlp.experts.%d.", &layer, &e) == 2)
        return ar_error("layer %d: missing %s (%d experts in config.json)", layer, strstr(name, "mlp."),
                        m->c.moe.n_experts);
    if (rc > 0) return ar_error("model has no tensor '%s'", name);
    int ok = nd == ndim;
    for (int i = 0; ok && i < nd; i++) ok = sh[i] == want[i];
    if (!ok)
        return ar_error("tensor '%s' has shape [%lld%s%lld], config.json implies [%lld%s%lld]", name, (long long)sh[0],
                        nd > 1 ? ", " : "", nd > 1 ? (long long)sh[1] : 0LL, (long long)want[0], ndim > 1 ? ", " : "",
                        ndim > 1 ? (long long)want[1] : 0LL);
    return 0;
}

/* Every tensor the forward will read exists with the shape the config implies. */
static int check_all_shapes(ar_model *m)
{
    const ar_config *c = &m->c;
    int64_t vc[2] = {c->vocab, c->hidden}, cc[1] = {c->hidden};
    if (check_shape(m, EMBED, 2, vc) || check_shape(m, NORM, 1, cc)) return -1;
    int nd;
    int64_t sh[AR_SRC_MAX_DIMS];
    int head_absent = m->src.shape(m->src.ctx, HEAD, &nd, sh);
    if (head_absent < 0) return -1;
    if (!c->tie_embeddings && head_absent) return ar_error("model has no tensor '%s' and tie_word_embeddings is false", HEAD);
    m->head_name = c->tie_embeddings ? EMBED : HEAD;
    if (!c->tie_embeddings && check_shape(m, HEAD, 2, vc)) return -1;
    for (int l = 0; l < c->n_layers; l++)
        for (int j = 0; j < bt_count(layer_bd(m, l)->nlinear); j++) {
            char name[160];
            int64_t want[2];
            if (block_tensor(layer_bd(m, l), l, j, name, sizeof name, want, &nd) && check_shape(m, name, nd, want))
                return -1;
        }
    return 0;
}

/* ---- block weights ------------------------------------------------------- */

static int weights_alloc_desc(ar_block_weights *w, const ar_block_desc *bd)
{
    if (ar_block_weights_init(w, bd->nlinear)) return -1;
    for (int j = 0; j < bt_count(bd->nlinear); j++) {
        char name[160];
        int64_t shape[2];
        int nd;
        if (!block_tensor(bd, 0, j, name, sizeof name, shape, &nd)) continue;
        float *p = malloc(sizeof(float) * (size_t)(shape[0] * (nd > 1 ? shape[1] : 1)));
        if (!p) { ar_block_weights_free(w); return ar_error("out of memory for block weights"); }
        *block_slot(w, bd, j) = p;
    }
    return 0;
}

int ar_block_weights_alloc(ar_block_weights *w, const ar_config *c)
{
    return ar_block_weights_alloc_layer(w, c, -1);
}

int ar_block_weights_alloc_layer(ar_block_weights *w, const ar_config *c, int layer)
{
    memset(w, 0, sizeof *w);
    ar_block_desc bd;
    if (layer < 0 ? ar_block_desc_init(&bd, c) : ar_block_desc_init_layer(&bd, c, layer)) return -1;
    int rc = weights_alloc_desc(w, &bd);
    ar_block_desc_free(&bd);
    return rc;
}

void ar_block_weights_free(ar_block_weights *w)
{
    for (int j = 0; w->w && j < bt_count(w->nlinear); j++) {
        float **p = block_slot(w, NULL, j);
        free(*p);
        *p = NULL;
    }
    ar_block_weights_release(w);
}

int ar_model_load_block(ar_model *m, int layer, ar_block_weights *w)
{
    if (layer < 0 || layer >= m->c.n_layers) return ar_error("block %d out of range (model has %d)", layer, m->c.n_layers);
    const ar_block_desc *bd = layer_bd(m, layer);
    if (w->nlinear != bd->nlinear)
        return ar_error("block weights for %d linears, block %d has %d", w->nlinear, layer, bd->nlinear);
    for (int j = 0; j < bt_count(bd->nlinear); j++) {
        char name[160], alt[200];
        int64_t shape[2];
        int nd;
        if (!block_tensor(bd, layer, j, name, sizeof name, shape, &nd)) continue;
        if (!*block_slot(w, bd, j)) continue;   /* a weight the caller does not hold (expert parallel) */
        if (m->src.read_rows(m->src.ctx, src_name(m, name, alt, sizeof alt), 0, shape[0], *block_slot(w, bd, j)))
            return -1;
    }
    return 0;
}

/* Block layer's weights: the cached copy (loaded on first use) or the
 * streaming buffer refilled now. */
static const ar_block_weights *block_weights(ar_model *m, int layer)
{
    ar_block_weights *w = m->cached ? &m->cached[layer] : layer_bd(m, layer) == &m->bd ? &m->cur : &m->cur_dense;
    if (m->cached && m->cached_ok[layer]) return w;
    if (m->cached && weights_alloc_desc(w, layer_bd(m, layer))) return NULL;
    if (ar_model_load_block(m, layer, w)) return NULL;
    if (m->cached) m->cached_ok[layer] = 1;
    return w;
}

/* ---- open / close -------------------------------------------------------- */

static float *read_whole(ar_model *m, const char *name, int64_t rows, int64_t cols)
{
    float *p = malloc(sizeof(float) * (size_t)(rows * cols));
    if (!p) { ar_error("out of memory reading %s", name); return NULL; }
    if (m->src.read_rows(m->src.ctx, name, 0, rows, p)) { free(p); return NULL; }
    return p;
}

static int load_model_level(ar_model *m)
{
    const ar_config *c = &m->c;
    if (!(m->norm = read_whole(m, NORM, c->hidden, 1))) return -1;
    /* Gemma's norms scale by 1 + w (in f32, as transformers): keep that sum,
     * so the final norm, ar_model_read_head's users included, is a plain RMSNorm */
    if (c->norm_plus_one)
        for (int i = 0; i < c->hidden; i++) m->norm[i] += 1.0f;
    if (!(m->flags & AR_MODEL_CACHE))
        return weights_alloc_desc(&m->cur, &m->bd) || (m->bd_dense.family && weights_alloc_desc(&m->cur_dense, &m->bd_dense))
                   ? -1 : 0;
    m->cached = calloc((size_t)c->n_layers, sizeof *m->cached);
    m->cached_ok = calloc((size_t)c->n_layers, 1);
    if (!m->cached || !m->cached_ok) return ar_error("out of memory");
    if (!(m->embed = read_whole(m, EMBED, c->vocab, c->hidden))) return -1;
    m->lm_head = c->tie_embeddings ? m->embed : read_whole(m, HEAD, c->vocab, c->hidden);
    return m->lm_head ? 0 : -1;
}

/* m->bd, and for an MoE model with dense layers m->bd_dense. */
static int init_descs(ar_model *m)
{
    const ar_config *c = &m->c;
    m->has_moe = c->moe.n_moe_layers > 0;
    if (!m->has_moe) return ar_block_desc_init(&m->bd, c);
    int lm = -1, ld = -1;
    for (int l = 0; l < c->n_layers; l++) *(ar_config_layer_moe(c, l) ? &lm : &ld) = l;
    if (ar_block_desc_init_layer(&m->bd, c, lm)) return -1;
    return ld >= 0 ? ar_block_desc_init_layer(&m->bd_dense, c, ld) : 0;
}

ar_model *ar_model_open_source(const ar_config *c, const ar_tensor_source *src, int flags)
{
    ar_tensor_source s = *src;
    /* a vision-language checkpoint: its text stack under the class's prefix */
    if (c->mm_arch[0] && mm_source_wrap(&s, c->mm_arch)) return NULL;
    ar_model *m = calloc(1, sizeof *m);
    if (!m) {
        if (s.close) s.close(s.ctx);
        ar_error("out of memory");
        return NULL;
    }
    m->c = *c;
    m->src = s;
    m->flags = flags;
    if (init_descs(m) || check_all_shapes(m) || load_model_level(m)) { ar_model_close(m); return NULL; }
    return m;
}

ar_model *ar_model_open(const char *dir, int flags)
{
    ar_config c;
    ar_tensor_source src;
    if (ar_config_load(&c, dir) || ar_source_safetensors(&src, dir)) return NULL;
    ar_model *m = ar_model_open_source(&c, &src, flags);
    if (!m) ar_error_prefix(dir);
    return m;
}

void ar_model_close(ar_model *m)
{
    if (!m) return;
    if (m->cached)
        for (int l = 0; l < m->c.n_layers; l++) ar_block_weights_free(&m->cached[l]);
    free(m->cached); free(m->cached_ok);
    ar_block_weights_free(&m->cur);
    ar_block_weights_free(&m->cur_dense);
    if (m->lm_head != m->embed) free(m->lm_head);
    free(m->embed); free(m->norm); free(m->chunk); free(m->act); free(m->has_act); free(m->aq); free(m->kv_scale);
    if (m->ws_B) ar_block_work_free(&m->ws);
    if (m->src.close) m->src.close(m->src.ctx);
    ar_block_desc_free(&m->bd);
    ar_block_desc_free(&m->bd_dense);
    free(m);
}

const ar_config *ar_model_config(const ar_model *m) { return &m->c; }

const ar_block_desc *ar_model_block_desc(const ar_model *m) { return &m->bd; }

const ar_block_desc *ar_model_layer_desc(const ar_model *m, int layer) { return layer_bd(m, layer); }

int ar_model_read_tensor(ar_model *m, const char *name, int64_t row0, int64_t nrows, float *dst)
{
    return m->src.read_rows(m->src.ctx, name, row0, nrows, dst);
}

/* ---- forward pieces ------------------------------------------------------ */

int ar_model_embed(ar_model *m, const int *ids, int n, float *out)
{
    const int C = m->c.hidden;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= m->c.vocab) return ar_error("token id %d out of range (vocab %d)", ids[i], m->c.vocab);
        float *row = out + (size_t)i * C;
        if (m->embed) memcpy(row, m->embed + (size_t)ids[i] * C, sizeof(float) * C);
        else if (m->src.read_rows(m->src.ctx, EMBED, ids[i], 1, row)) return -1;
        /* Gemma: times sqrt(hidden) as an f32, the dtype this forward computes in */
        if (m->c.embed_scale > 0)
            for (int j = 0; j < C; j++) row[j] *= (float)m->c.embed_scale;
    }
    return 0;
}

int ar_model_final_norm(ar_model *m, float *x, int rows)
{
    ar_rmsnorm_forward(x, NULL, x, m->norm, rows, m->c.hidden, m->c.rms_eps);
    return 0;
}

float *ar_model_read_head(ar_model *m, const float **norm_w)
{
    const int C = m->c.hidden, V = m->c.vocab;
    float *w = malloc(sizeof(float) * (size_t)V * C);
    if (!w) { ar_error("out of memory for the output head (%d x %d)", V, C); return NULL; }
    if (m->src.read_rows(m->src.ctx, m->head_name, 0, V, w)) { free(w); return NULL; }
    *norm_w = m->norm;
    return w;
}

static float *chunk_buffer(ar_model *m, size_t floats)
{
    if (floats <= m->chunk_cap) return m->chunk;
    float *p = realloc(m->chunk, sizeof(float) * floats);
    if (!p) { ar_error("out of memory for a %zu-float buffer", floats); return NULL; }
    m->chunk = p;
    m->chunk_cap = floats;
    return p;
}

int ar_model_logits(ar_model *m, const float *x, int rows, float *logits)
{
    const int C = m->c.hidden, V = m->c.vocab;
    if (m->lm_head) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, V, C, 1.0f, x, C, m->lm_head, C, 0.0f, logits, V);
        if (m->c.final_softcap > 0) ar_softcap_forward(logits, (long)rows * V, (float)m->c.final_softcap);
        return 0;
    }
    int step = (int)(HEAD_CHUNK_BYTES / sizeof(float) / (size_t)C);
    if (step < 1) step = 1;
    if (step > V) step = V;
    float *w = chunk_buffer(m, (size_t)step * C);
    if (!w) return -1;
    for (int v0 = 0; v0 < V; v0 += step) {
        int nv = V - v0 < step ? V - v0 : step;
        if (m->src.read_rows(m->src.ctx, m->head_name, v0, nv, w)) return -1;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nv, C, 1.0f, x, C, w, C, 0.0f, logits + v0, V);
    }
    if (m->c.final_softcap > 0) ar_softcap_forward(logits, (long)rows * V, (float)m->c.final_softcap);
    return 0;
}

static int ensure_work(ar_model *m, int B, int T)
{
    if (B <= m->ws_B && T <= m->ws_T) return 0;
    if (m->ws_B) ar_block_work_free(&m->ws);
    m->ws_B = m->ws_T = 0;
    if (ar_block_work_init(&m->ws, &m->c, B, T, 0)) return -1;
    m->ws_B = B; m->ws_T = T;
    return 0;
}

int ar_model_set_act_quant(ar_model *m, int layer, const ar_act_spec *const *aq)
{
    if (layer < 0 || layer >= m->c.n_layers) return ar_error("activation quantizers for layer %d of %d", layer, m->c.n_layers);
    if (m->has_moe) { /* routed expert inputs are row subsets: refused, nothing to install */
        for (int i = 0; aq && i < layer_bd(m, layer)->nlinear; i++)
            if (aq[i]) return ar_error("activation quantization of mixture-of-experts models is not supported");
        return 0;
    }
    const int nl = m->bd.nlinear;
    size_t n = (size_t)m->c.n_layers * nl;
    if (!m->act && (!(m->act = calloc(n, sizeof *m->act)) || !(m->has_act = calloc(n, 1)) ||
                    !(m->aq = calloc((size_t)nl, sizeof *m->aq))))
        return ar_error("out of memory for activation quantizers");
    for (int i = 0; i < nl; i++) {
        size_t j = (size_t)layer * nl + i;
        m->has_act[j] = aq && aq[i];
        if (m->has_act[j]) m->act[j] = *aq[i];
    }
    return 0;
}

int ar_model_has_act_quant(const ar_model *m)
{
    for (size_t j = 0; m->act && j < (size_t)m->c.n_layers * m->bd.nlinear; j++) if (m->has_act[j]) return 1;
    return 0;
}

int ar_model_set_kv_quant(ar_model *m, int layer, float k_scale, float v_scale)
{
    if (layer < 0 || layer >= m->c.n_layers) return ar_error("KV-cache scales for layer %d of %d", layer, m->c.n_layers);
    if (!(k_scale >= 0) || !(v_scale >= 0) || isinf(k_scale) || isinf(v_scale))
        return ar_error("layer %d: KV-cache scales must be finite and >= 0 (k %g, v %g)", layer, k_scale, v_scale);
    if (!m->kv_scale && !(m->kv_scale = calloc((size_t)m->c.n_layers * 2, sizeof *m->kv_scale)))
        return ar_error("out of memory for KV-cache scales");
    m->kv_scale[2 * layer] = k_scale;
    m->kv_scale[2 * layer + 1] = v_scale;
    return 0;
}

int ar_model_has_kv_quant(const ar_model *m)
{
    for (int j = 0; m->kv_scale && j < 2 * m->c.n_layers; j++) if (m->kv_scale[j] > 0) return 1;
    return 0;
}

/* Install block l's activation quantizers in the shared workspace. */
static int layer_act_quant(ar_model *m, int l)
{
    const int nl = m->bd.nlinear;
    for (int i = 0; i < nl; i++) {
        size_t j = (size_t)l * nl + i;
        m->aq[i] = m->has_act[j] ? &m->act[j] : NULL;
    }
    return m->bd.set_act_quant(&m->ws, m->aq);
}

int ar_model_hidden(ar_model *m, const int *ids, int B, int T, float *hidden)
{
    if (B < 1 || T < 1) return ar_error("forward needs at least one token (B=%d, T=%d)", B, T);
    if (ensure_work(m, B, T) || ar_model_embed(m, ids, B * T, hidden)) return -1;
    for (int l = 0; l < m->c.n_layers; l++) {
        const ar_block_weights *w = block_weights(m, l);
        if (!w) return -1;
        /* the layer's window and RoPE (Qwen's max_window_layers, layer_types) */
        ar_config cl;
        ar_config_for_layer(&cl, &m->c, l);
        if (m->act && layer_act_quant(m, l)) return -1;
        if (m->kv_scale) m->ws.kv_scale[0] = m->kv_scale[2 * l], m->ws.kv_scale[1] = m->kv_scale[2 * l + 1];
        if (layer_bd(m, l)->forward(&cl, w, hidden, hidden, B, T, &m->ws)) return -1;
    }
    return ar_model_final_norm(m, hidden, B * T);
}

int ar_model_forward(ar_model *m, const int *ids, int B, int T, float *logits)
{
    float *h = malloc(sizeof(float) * (size_t)B * T * m->c.hidden);
    if (!h) return ar_error("out of memory for activations");
    int rc = ar_model_hidden(m, ids, B, T, h);
    if (!rc) rc = ar_model_logits(m, h, B * T, logits);
    free(h);
    return rc;
}


void ar_log_softmax_rows(float *x, int rows, int n)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *row = x + (size_t)r * n;
        double lse = ar_logsumexp(row, n);
        for (int i = 0; i < n; i++) row[i] = (float)(row[i] - lse);
    }
}

/* nll of the rows [r0, r0+nr) of the B*T grid, from their logits. */
static void nll_rows(const float *logits, const int *ids, int r0, int nr, int T, int V, double *nll)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < nr; i++) {
        int r = r0 + i, b = r / T, t = r % T;
        if (t == T - 1) continue;   /* the last position predicts nothing scored */
        const float *row = logits + (size_t)i * V;
        nll[(size_t)b * (T - 1) + t] = ar_logsumexp(row, V) - row[ids[r + 1]];
    }
}

int ar_model_nll(ar_model *m, const int *ids, int B, int T, double *nll)
{
    const int C = m->c.hidden, V = m->c.vocab, BT = B * T;
    if (T < 2) return ar_error("scoring needs sequences of at least 2 tokens (T=%d)", T);
    float *h = malloc(sizeof(float) * (size_t)BT * C);
    if (!h) return ar_error("out of memory for activations");
    int rc = ar_model_hidden(m, ids, B, T, h);
    float *lg = rc ? NULL : malloc(sizeof(float) * (size_t)NLL_ROWS * V);
    if (!rc && !lg) rc = ar_error("out of memory for logits");
    for (int r0 = 0; !rc && r0 < BT; r0 += NLL_ROWS) {
        int nr = BT - r0 < NLL_ROWS ? BT - r0 : NLL_ROWS;
        rc = ar_model_logits(m, h + (size_t)r0 * C, nr, lg);
        if (!rc) nll_rows(lg, ids, r0, nr, T, V, nll);
    }
    free(lg);
    free(h);
    return rc;
}
