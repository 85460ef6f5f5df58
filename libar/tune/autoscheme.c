/* autoscheme.c — AutoScheme mixed precision (see autoscheme.h, spec §5.2). */
#include "autoscheme.h"
#include "block_desc.h"
#include "error.h"
#include "ops.h"
#include "quant.h"
#include "quant_fp.h"
#include "signround.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cblas.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- bit accounting ------------------------------------------------------ */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static int64_t layer_groups(const ar_scheme *s, int n_out, int k_in)
{
    if (s->group_2d && s->group_size > 0)
        return ceil_div(n_out, s->group_size) * ceil_div(k_in, s->group_size);
    if (s->group_size > 0) return (int64_t)n_out * ceil_div(k_in, s->group_size);
    return s->group_size == 0 ? 1 : n_out;
}

int64_t ar_layer_bits(const ar_scheme *s, int n_out, int k_in, int ignore_scale_zp)
{
    int64_t n = (int64_t)n_out * k_in;
    if (s->bits >= 16 || ignore_scale_zp)
        /* AutoRound counts a GGUF layer left in high precision as f32 */
        return (s->super_bits > 0 && s->bits >= 16 ? 32 : s->bits) * n;
    int64_t ng = layer_groups(s, n_out, k_in);
    if (s->super_bits > 0 && s->super_group_size > 0)
        return s->bits * n + ng * 2 * s->super_bits + ceil_div(ng, s->super_group_size) * 64;
    const char *dt = s->data_type;
    int scale_bits = strstr(dt, "mx_fp") || strstr(dt, "nv_fp") || strstr(dt, "fp4") ? 8 : 16;
    int zp_bits = !s->sym || strstr(dt, "int") ? s->bits : 0;
    return s->bits * n + ng * (scale_bits + zp_bits);
}

/* ---- dynamic programming over cumulative bits ---------------------------- */

typedef struct {
    int64_t bits;
    double loss;
    int parent;     /* index in the previous item's front */
    int opt;
} dp_state;

static int state_cmp(const void *a, const void *b)
{
    const dp_state *x = a, *y = b;
    if (x->bits != y->bits) return x->bits < y->bits ? -1 : 1;
    if (x->loss != y->loss) return x->loss < y->loss ? -1 : 1;
    if (x->parent != y->parent) return x->parent < y->parent ? -1 : 1;
    return x->opt - y->opt;
}

/* Keep, in increasing bits, only states whose loss beats every cheaper one. */
static int pareto_prune(dp_state *s, int n)
{
    qsort(s, (size_t)n, sizeof *s, state_cmp);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (m == 0 || s[i].loss < s[m - 1].loss) s[m++] = s[i];
    return m;
}

/* Evenly thin a front of n states to cap, keeping both ends. */
static int thin_front(dp_state *s, int n, long cap)
{
    if (cap <= 0 || n <= cap) return n;
    if (cap == 1) { s[0] = s[n - 1]; return 1; }
    for (long j = 0; j < cap; j++) s[j] = s[(long)((double)j * (n - 1) / (cap - 1) + 0.5)];
    return (int)cap;
}

int ar_autoscheme_dp(int nitems, int nopt, const int64_t *bits, const double *loss,
                     const unsigned char *allowed, int64_t budget, long max_states,
                     int *choice, int64_t *used_bits, double *total_loss)
{
    if (nitems < 0 || nopt < 1) return ar_error("autoscheme: bad problem (%d items, %d options)", nitems, nopt);
    dp_state **fronts = calloc((size_t)nitems + 1, sizeof *fronts);
    int *sizes = calloc((size_t)nitems + 1, sizeof *sizes);
    int rc = -1;
    if (!fronts || !sizes || !(fronts[0] = malloc(sizeof(dp_state)))) { ar_error("autoscheme: out of memory"); goto out; }
    fronts[0][0] = (dp_state){0, 0.0, -1, -1};
    sizes[0] = 1;
    for (int i = 0; i < nitems; i++) {
        size_t cap = (size_t)sizes[i] * nopt;
        dp_state *next = malloc(sizeof *next * (cap ? cap : 1));
        if (!next) { ar_error("autoscheme: out of memory for %zu DP states", cap); goto out; }
        int n = 0;
        for (int p = 0; p < sizes[i]; p++)
            for (int o = 0; o < nopt; o++) {
                if (allowed && !allowed[(size_t)i * nopt + o]) continue;
                int64_t b = fronts[i][p].bits + bits[(size_t)i * nopt + o];
                if (b > budget) continue;
                next[n++] = (dp_state){b, fronts[i][p].loss + loss[(size_t)i * nopt + o], p, o};
            }
        fronts[i + 1] = next;
        sizes[i + 1] = thin_front(next, pareto_prune(next, n), max_states);
        if (!sizes[i + 1]) {
            ar_error("autoscheme: no choice of options fits the budget of %lld bits (item %d of %d)",
                     (long long)budget, i + 1, nitems);
            goto out;
        }
    }
    /* The front's loss falls strictly with bits: its last state is the best. */
    int s = sizes[nitems] - 1;
    if (used_bits) *used_bits = fronts[nitems][s].bits;
    if (total_loss) *total_loss = fronts[nitems][s].loss;
    for (int i = nitems; i > 0; i--) {
        choice[i - 1] = fronts[i][s].opt;
        s = fronts[i][s].parent;
    }
    rc = 0;
out:
    for (int i = 0; fronts && i <= nitems; i++) free(fronts[i]);
    free(fronts);
    free(sizes);
    return rc;
}

/* ---- scoring: full-model forward and backward ---------------------------- */

/* The slots of a model: block l's linears are off[l] .. off[l+1]-1 in the
 * order of its own description (block_desc.h: mixtures of experts describe
 * their dense and MoE layers differently), the head is off[L]. With blocks
 * all alike off[l] = l·nlinear, the numbering autoscheme.h gives. */
typedef struct {
    int L;
    int *off;                   /* [L + 1] */
    ar_block_desc *d;           /* [L] owned */
} slot_map;

static void slot_map_free(slot_map *sm)
{
    for (int l = 0; sm->d && l < sm->L; l++) ar_block_desc_free(&sm->d[l]);
    free(sm->d), free(sm->off);
    memset(sm, 0, sizeof *sm);
}

static int slot_map_init(slot_map *sm, const ar_config *c)
{
    memset(sm, 0, sizeof *sm);
    sm->off = calloc((size_t)c->n_layers + 1, sizeof *sm->off);
    sm->d = calloc((size_t)c->n_layers ? (size_t)c->n_layers : 1, sizeof *sm->d);
    if (!sm->off || !sm->d) { slot_map_free(sm); return ar_error("autoscheme: out of memory"); }
    for (int l = 0; l < c->n_layers; l++) {
        if (ar_block_desc_init_layer(&sm->d[l], c, l)) { slot_map_free(sm); return -1; }
        sm->L = l + 1;
        sm->off[l + 1] = sm->off[l] + sm->d[l].nlinear;
    }
    return 0;
}

static int head_slot(const slot_map *sm) { return sm->off[sm->L]; }

/* The block of slot s (L for the head) and its linear index there. */
static int slot_layer(const slot_map *sm, int slot, int *i)
{
    int l = 0;
    while (l < sm->L && slot >= sm->off[l + 1]) l++;
    *i = l < sm->L ? slot - sm->off[l] : 0;
    return l;
}

static void slot_name(const slot_map *sm, int slot, char *buf, int size)
{
    int i, l = slot_layer(sm, slot, &i);
    if (l >= sm->L) snprintf(buf, (size_t)size, "lm_head");
    else ar_block_desc_layer_name(&sm->d[l], l, i, buf, size);
}

int ar_autoscheme_nslots(const ar_config *c)
{
    slot_map sm;
    if (slot_map_init(&sm, c)) return -1;
    int n = head_slot(&sm) + 1;
    slot_map_free(&sm);
    return n;
}

int ar_autoscheme_slot_name(const ar_config *c, int slot, char *buf, int size)
{
    slot_map sm;
    if (slot_map_init(&sm, c)) return -1;
    slot_name(&sm, slot, buf, size);
    slot_map_free(&sm);
    return 0;
}

static void slot_shape(const slot_map *sm, const ar_config *c, int slot, int *n, int *k)
{
    int i, l = slot_layer(sm, slot, &i);
    if (l >= sm->L) { *n = c->vocab; *k = c->hidden; }
    else *n = sm->d[l].lin[i].n_out, *k = sm->d[l].lin[i].k_in;
}

/* The expert of a routed-expert linear of a block ("mlp.experts.E.*":
 * AutoRound's _expert_key_from_layer_name pattern ".experts.<id>."), or -1;
 * shared experts ("shared_expert(s).*") are not routed experts. */
static int expert_of(const ar_block_desc *d, int i)
{
    const char *p = strstr(d->lin[i].name, "experts.");
    if (!p || (p != d->lin[i].name && p[-1] != '.')) return -1;
    p += strlen("experts.");
    if (*p < '0' || *p > '9') return -1;
    return atoi(p);
}

/* The RTN quantizer spec of a preset, as ar-tune builds it (no bf16 rounding:
 * scores are relative, f32 is enough). */
static int spec_of(const ar_scheme *s, ar_quant_spec *qs)
{
    int dt = ar_quant_dtype_parse(s->data_type, s->bits);
    if (dt < 0 || s->kind == AR_SCHEME_GGUF)
        return ar_error("autoscheme: option %s (%s, %d bits) has no RTN quantizer here",
                        s->name[0] ? s->name : "custom", s->data_type, s->bits);
    *qs = (ar_quant_spec){s->bits, s->group_size, s->sym, s->group_2d ? AR_QF_BLOCK2D : 0, 0, dt, 0, 0, NULL, NULL};
    return ar_quant_spec_check(qs);
}

/* Everything one scoring pass holds. */
typedef struct {
    ar_model *m;
    const ar_config *c;
    slot_map sm;                    /* slot numbering, per block */
    const ar_block_desc *bd;        /* the loaded block's description: nl linears, forward/backward */
    int nl, nlmax, wl;              /* nl of the loaded block, the most of any block; wl: the block wfp is for */
    ar_quant_spec qs;
    int has_act;                    /* the option quantizes activations (with act) */
    ar_act_spec act;
    unsigned terms;                 /* AR_AS_WEIGHT_TERM | AR_AS_ACT_TERM in effect */
    const unsigned char *cand;
    int B, T, L, C, V;
    ar_block_weights wfp, wq;       /* wq: norms/biases borrowed from wfp, w[i] own or borrowed */
    float **qbuf;                   /* [nlmax] quantized weights of candidate linears (each the largest of its index) */
    const ar_act_spec **aq;         /* [nlmax] the block's activation quantizers */
    float **dWsel, **dxinsel;       /* [nlmax] the backward's dW, dxin: this batch's entries or NULL */
    ar_block_acts *acts;            /* [L] */
    ar_block_work ws;
    float *x, *xn, *rstd, *logits, *dx, *dy, **dW; /* dW [nl] */
    float **dxin, *xhat;            /* activation term: dL/dx̂ per linear [nl][BT, K], x̂ scratch [BT, kmax] */
    float *xnq;                     /* head input x̂n when the head quantizes it, else xn */
    float *norm_w, *head, *head_q, *dhead;   /* head_q: Ĥ when the head is a candidate, else head */
} score_ctx;

static float *alloc_floats(size_t n, int *fail)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) (*fail)++;
    return p;
}

static void score_ctx_free(score_ctx *s)
{
    for (int i = 0; s->qbuf && i < s->nlmax; i++) free(s->qbuf[i]), free(s->dW[i]), free(s->dxin[i]);
    free(s->qbuf); free(s->dW); free(s->dxin); free(s->aq); free(s->dWsel); free(s->dxinsel);
    free(s->xhat);
    if (s->xnq != s->xn) free(s->xnq);
    for (int l = 0; s->acts && l < s->L; l++) ar_block_acts_free(&s->acts[l]);
    free(s->acts);
    ar_block_weights_free(&s->wfp);
    ar_block_weights_release(&s->wq);
    ar_block_work_free(&s->ws);
    slot_map_free(&s->sm);
    free(s->x); free(s->xn); free(s->rstd); free(s->logits); free(s->dx); free(s->dy);
    free(s->norm_w);
    if (s->head_q != s->head) free(s->head_q);
    free(s->head); free(s->dhead);
}

static int head_is_candidate(const score_ctx *s)
{
    return s->cand[head_slot(&s->sm)] && !s->c->tie_embeddings;
}

/* The activation-term buffers: dL/dx̂ per linear and one x̂ scratch. */
static void alloc_act_term(score_ctx *s, size_t BT, int *fail)
{
    int kmax = 0;
    for (int i = 0; i < s->nlmax; i++) {
        int k = 0;
        for (int l = 0; l < s->L; l++)
            if (i < s->sm.d[l].nlinear && s->sm.d[l].lin[i].k_in > k) k = s->sm.d[l].lin[i].k_in;
        s->dxin[i] = alloc_floats(BT * k, fail);
        kmax = k > kmax ? k : kmax;
    }
    s->xhat = alloc_floats(BT * (kmax > s->C ? kmax : s->C), fail);
}

static int score_ctx_init(score_ctx *s, ar_model *m, const ar_quant_spec *qs, const ar_act_spec *act,
                          unsigned terms, const unsigned char *cand, int B, int T)
{
    const ar_config *c = ar_model_config(m);
    memset(s, 0, sizeof *s);
    s->m = m, s->qs = *qs, s->c = c, s->cand = cand, s->B = B, s->T = T;
    if (act) s->has_act = 1, s->act = *act;
    s->terms = terms & (s->has_act ? ~0u : ~(unsigned)AR_AS_ACT_TERM);
    s->L = c->n_layers, s->C = c->hidden, s->V = c->vocab;
    s->wl = -1;
    if (slot_map_init(&s->sm, c)) return -1;
    for (int l = 0; l < s->L; l++) s->nlmax = s->sm.d[l].nlinear > s->nlmax ? s->sm.d[l].nlinear : s->nlmax;
    size_t BT = (size_t)B * T, nl = (size_t)s->nlmax;
    int fail = 0;
    s->qbuf = calloc(nl, sizeof *s->qbuf), s->dW = calloc(nl, sizeof *s->dW), s->dxin = calloc(nl, sizeof *s->dxin);
    s->aq = calloc(nl, sizeof *s->aq), s->dWsel = calloc(nl, sizeof *s->dWsel);
    s->dxinsel = calloc(nl, sizeof *s->dxinsel);
    if (!s->qbuf || !s->dW || !s->dxin || !s->aq || !s->dWsel || !s->dxinsel)
        return ar_error("autoscheme: out of memory");
    if (ar_block_work_init(&s->ws, c, B, T, 1)) return -1;
    if (!(s->acts = calloc((size_t)s->L, sizeof *s->acts))) return ar_error("autoscheme: out of memory");
    for (int l = 0; l < s->L; l++)
        if (ar_block_acts_init(&s->acts[l], c, B, T)) return -1;
    for (int i = 0; i < s->nlmax; i++) {
        size_t nk = 0;
        for (int l = 0; l < s->L; l++)
            if (i < s->sm.d[l].nlinear && (size_t)s->sm.d[l].lin[i].n_out * s->sm.d[l].lin[i].k_in > nk)
                nk = (size_t)s->sm.d[l].lin[i].n_out * s->sm.d[l].lin[i].k_in;
        s->qbuf[i] = alloc_floats(nk, &fail);
        s->dW[i] = alloc_floats(nk, &fail);
    }
    s->x = alloc_floats(BT * s->C, &fail), s->xn = alloc_floats(BT * s->C, &fail);
    s->dx = alloc_floats(BT * s->C, &fail), s->dy = alloc_floats(BT * s->C, &fail);
    s->rstd = alloc_floats(BT, &fail), s->logits = alloc_floats(BT * s->V, &fail);
    s->norm_w = alloc_floats((size_t)s->C, &fail);
    s->head = alloc_floats((size_t)s->V * s->C, &fail);
    if (s->terms & AR_AS_ACT_TERM) alloc_act_term(s, BT, &fail);
    s->xnq = s->xn;
    if (s->has_act && head_is_candidate(s)) s->xnq = alloc_floats(BT * s->C, &fail);
    if (fail) return ar_error("autoscheme: out of memory for a batch of %d x %d tokens", B, T);
    const char *hn = c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    if (ar_model_read_tensor(m, "model.norm.weight", 0, s->C, s->norm_w) ||
        ar_model_read_tensor(m, hn, 0, s->V, s->head)) return -1;
    s->head_q = s->head;
    if (!head_is_candidate(s)) return 0;
    s->head_q = alloc_floats((size_t)s->V * s->C, &fail);
    s->dhead = alloc_floats((size_t)s->V * s->C, &fail);
    if (fail) return ar_error("autoscheme: out of memory for the head");
    ar_quant_out o = {s->head_q, NULL, NULL, NULL};
    return ar_quant_forward(&s->qs, s->head, s->V, s->C, NULL, &o);
}

/* Whether blocks a and b hold weights of the same shapes (one buffer set fits both). */
static int same_shapes(const ar_block_desc *a, const ar_block_desc *b)
{
    if (a == b) return 1;
    if (strcmp(a->family, b->family) || a->nlinear != b->nlinear || a->nfp != b->nfp) return 0;
    for (int i = 0; i < a->nlinear; i++)
        if (a->lin[i].n_out != b->lin[i].n_out || a->lin[i].k_in != b->lin[i].k_in ||
            a->lin[i].has_bias != b->lin[i].has_bias)
            return 0;
    return 1;
}

/* Load block l and build wq: candidates fake-quantized, the rest borrowed;
 * with an activation option the candidates' inputs are quantized too (the
 * workspace is shared by all blocks, so this is set per block, forward and
 * backward alike). */
static int load_block(score_ctx *s, int l)
{
    s->bd = &s->sm.d[l], s->nl = s->bd->nlinear;
    if (s->wl < 0 || !same_shapes(&s->sm.d[s->wl], s->bd)) {  /* another kind of block: its own buffers */
        ar_block_weights_release(&s->wq);
        ar_block_weights_free(&s->wfp);
        s->wl = -1;
        if (ar_block_weights_alloc_layer(&s->wfp, s->c, l) || ar_block_weights_view(&s->wq, &s->wfp)) return -1;
    }
    s->wl = l;
    if (ar_model_load_block(s->m, l, &s->wfp)) return -1;
    ar_block_weights_borrow(&s->wq, &s->wfp);
    for (int i = 0; i < s->nl; i++) {
        s->aq[i] = NULL;
        if (!s->cand[s->sm.off[l] + i]) continue;
        int n = s->bd->lin[i].n_out, k = s->bd->lin[i].k_in;
        ar_quant_out o = {s->qbuf[i], NULL, NULL, NULL};
        if (ar_quant_forward(&s->qs, s->wfp.w[i], n, k, NULL, &o)) return -1;
        s->wq.w[i] = s->qbuf[i];
        if (s->has_act) s->aq[i] = &s->act;
    }
    return s->bd->set_act_quant(&s->ws, s->aq);
}

/* Config of block l as it runs (ar_config_for_layer: Qwen's first
 * max_window_layers layers see the full context, gpt-oss's full layers). */
static ar_config layer_config(const ar_config *c, int l)
{
    ar_config cl;
    ar_config_for_layer(&cl, c, l);
    return cl;
}

/* Mean next-token cross-entropy of logits [B*T, V] (the last position of
 * each sequence has no target), and in place its gradient w.r.t. the logits. */
static double cross_entropy_backward(float *logits, const int32_t *ids, int B, int T, int V)
{
    double total = 0, inv = 1.0 / ((double)B * (T - 1));
    for (long r = 0; r < (long)B * T; r++) {
        float *z = logits + r * V;
        if (r % T == T - 1) { memset(z, 0, sizeof(float) * V); continue; }
        int target = ids[r + 1];
        float mx = z[0];
        for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)z[v] - mx);
        double lse = mx + log(sum);
        total += lse - z[target];
        for (int v = 0; v < V; v++) z[v] = (float)(exp((double)z[v] - lse) * inv);
        z[target] -= (float)inv;
    }
    return total * inv;
}

/* Σ |g ⊙ (w − ŵ)| over n weights. */
static double delta_loss(const float *g, const float *w, const float *wq, size_t n)
{
    double s = 0;
    for (size_t j = 0; j < n; j++) s += fabs((double)g[j] * ((double)w[j] - wq[j]));
    return s;
}

/* The activation term Σ |g ⊙ (x − x̂)| of one linear input x [rows, k] with
 * g = dL/dx̂, x̂ made here in scratch. -1 when the quantizer fails. */
static int act_delta(const score_ctx *s, const float *g, const float *x, long rows, int k, float *scratch,
                     double *score)
{
    memcpy(scratch, x, sizeof(float) * rows * k);
    if (ar_act_quant(&s->act, scratch, rows, k)) return -1;
    *score += delta_loss(g, x, scratch, (size_t)rows * k);
    return 0;
}

static int forward_batch(score_ctx *s, const int32_t *ids)
{
    long BT = (long)s->B * s->T;
    if (ar_model_embed(s->m, ids, (int)BT, s->x)) return -1;
    for (int l = 0; l < s->L; l++) {
        ar_config cl = layer_config(s->c, l);
        if (load_block(s, l) ||
            s->bd->forward_train(&cl, &s->wq, s->x, s->x, s->B, s->T, &s->ws, &s->acts[l])) return -1;
    }
    ar_rmsnorm_forward(s->xn, s->rstd, s->x, s->norm_w, (int)BT, s->C, s->c->rms_eps);
    if (s->xnq != s->xn) {     /* a candidate head quantizes its input as well */
        memcpy(s->xnq, s->xn, sizeof(float) * BT * s->C);
        if (ar_act_quant(&s->act, s->xnq, BT, s->C)) return -1;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)BT, s->V, s->C, 1.0f, s->xnq, s->C,
                s->head_q, s->C, 0.0f, s->logits, s->V);
    return 0;
}

/* Backward of one batch from dlogits (in s->logits) down to block 0. */
static int backward_batch(score_ctx *s, double *score)
{
    long BT = (long)s->B * s->T;
    size_t act = sizeof(float) * BT * s->C;
    /* dxn = dlogits · Ĥ, into dy; then through the final norm into dx */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)BT, s->C, s->V, 1.0f, s->logits, s->V,
                s->head_q, s->C, 0.0f, s->dy, s->C);
    if (head_is_candidate(s) && (s->terms & AR_AS_WEIGHT_TERM)) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->V, s->C, (int)BT, 1.0f, s->logits, s->V,
                    s->xnq, s->C, 0.0f, s->dhead, s->C);
        score[head_slot(&s->sm)] += delta_loss(s->dhead, s->head, s->head_q, (size_t)s->V * s->C);
    }
    if (head_is_candidate(s) && (s->terms & AR_AS_ACT_TERM))   /* s->dy is dL/dx̂n (straight-through) */
        score[head_slot(&s->sm)] += delta_loss(s->dy, s->xn, s->xnq, (size_t)BT * s->C);
    memset(s->dx, 0, act);
    ar_rmsnorm_backward(s->dx, NULL, s->dy, s->x, s->norm_w, s->rstd, (int)BT, s->C);
    for (int l = s->L - 1; l >= 0; l--) {
        float *tmp = s->dy; s->dy = s->dx; s->dx = tmp;   /* dy: gradient at this block's output */
        if (load_block(s, l)) return -1;
        float **dW = s->dWsel, **dxin = s->dxinsel;
        for (int i = 0; i < s->nl; i++) {
            int n = s->bd->lin[i].n_out, k = s->bd->lin[i].k_in, cand = s->cand[s->sm.off[l] + i];
            dW[i] = cand && (s->terms & AR_AS_WEIGHT_TERM) ? s->dW[i] : NULL;
            dxin[i] = cand && (s->terms & AR_AS_ACT_TERM) ? s->dxin[i] : NULL;
            if (dW[i]) memset(dW[i], 0, sizeof(float) * n * k);
            if (dxin[i]) memset(dxin[i], 0, sizeof(float) * BT * k);
        }
        if (l > 0) memset(s->dx, 0, act);
        ar_config cl = layer_config(s->c, l);
        if (s->bd->backward(&cl, &s->wq, &s->acts[l], s->dy, dW, l > 0 ? s->dx : NULL, dxin, &s->ws))
            return -1;
        for (int i = 0; i < s->nl; i++) {
            int n = s->bd->lin[i].n_out, k = s->bd->lin[i].k_in;
            double *sc = &score[s->sm.off[l] + i];
            if (dW[i]) *sc += delta_loss(dW[i], s->wfp.w[i], s->wq.w[i], (size_t)n * k);
            if (dxin[i] && act_delta(s, dxin[i], s->bd->acts_input(&s->acts[l], i), BT, k, s->xhat, sc)) return -1;
        }
    }
    return 0;
}

int ar_autoscheme_score(ar_model *m, const ar_scheme *opt, const unsigned char *candidate, unsigned terms,
                        const int32_t *ids, int nseq, int T, int batch_size, double *score,
                        double *mean_loss, ar_as_progress_fn progress, void *pctx)
{
    if (nseq < 1 || T < 2 || batch_size < 1)
        return ar_error("autoscheme: need sequences of at least 2 tokens (%d x %d)", nseq, T);
    /* its head reads model.norm.weight as a plain RMSNorm, without Gemma's 1 + w and soft-cap */
    if (!ar_autoscheme_family_supported(ar_model_config(m)))
        return ar_error("autoscheme: %s is not supported yet (llama and mixture-of-experts families only)",
                        ar_model_config(m)->arch_name);
    int B = batch_size < nseq ? batch_size : nseq;
    score_ctx s;
    ar_quant_spec qs;
    ar_act_spec act;
    if (spec_of(opt, &qs)) return -1;
    int has_act = ar_act_spec_from_scheme(opt, 0, &act);
    if (has_act < 0)
        return ar_error("autoscheme: option %s: %s", opt->name[0] ? opt->name : "custom", ar_last_error());
    int rc = -1, nb = (nseq + B - 1) / B;
    double loss_sum = 0;
    char what[64];
    snprintf(what, sizeof what, "score %s", opt->name[0] ? opt->name : "option");
    if (score_ctx_init(&s, m, &qs, has_act ? &act : NULL, terms, candidate, B, T)) goto out;
    for (int b0 = 0, bi = 0; b0 < nseq; b0 += B, bi++) {
        /* a short last batch reuses the capacity of a full one */
        s.B = nseq - b0 < B ? nseq - b0 : B;
        const int32_t *bids = ids + (size_t)b0 * T;
        if (forward_batch(&s, bids)) goto out;
        double loss = cross_entropy_backward(s.logits, bids, s.B, T, s.V);
        if (backward_batch(&s, score)) goto out;
        loss_sum += loss;
        if (progress) progress(pctx, what, bi + 1, nb, loss);
    }
    if (mean_loss) *mean_loss = loss_sum / nb;
    rc = 0;
out:
    score_ctx_free(&s);
    return rc;
}

int ar_autoscheme_family_supported(const ar_config *c)
{
    slot_map sm;
    if (slot_map_init(&sm, c)) return 0;
    int ok = 1;
    for (int l = 0; l < sm.L; l++) {
        const char *f = sm.d[l].family;
        ok &= !strcmp(f, "llama") || !strcmp(f, "moe") || !strcmp(f, "deepseek") || !strcmp(f, "gpt_oss");
    }
    slot_map_free(&sm);
    return ok;
}

/* ---- the whole pass ------------------------------------------------------ */

void ar_autoscheme_result_free(ar_autoscheme_result *r)
{
    if (!r) return;
    free(r->options); free(r->choice); free(r->score); free(r->bits); free(r->params);
    memset(r, 0, sizeof *r);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Options without duplicates (same preset name), in the given order. */
static int dedup_options(const ar_autoscheme_opts *o, ar_autoscheme_result *r)
{
    if (o->nopt < 1) return ar_error("autoscheme: no options");
    if (!(r->options = malloc(sizeof *r->options * (size_t)o->nopt))) return ar_error("autoscheme: out of memory");
    for (int i = 0; i < o->nopt; i++) {
        int dup = 0;
        for (int j = 0; j < r->nopt && !dup; j++)
            dup = o->options[i].name[0] && !strcmp(o->options[i].name, r->options[j].name);
        if (!dup) r->options[r->nopt++] = o->options[i];
    }
    return 0;
}

/* Scheme of slot s under option opt, after the shape and head rules. */
static int slot_scheme(const slot_map *sm, const ar_config *c, int slot, const ar_scheme *opt,
                       int quant_lm_head, ar_scheme *out)
{
    char name[128];
    int n, k;
    slot_name(sm, slot, name, sizeof name);
    slot_shape(sm, c, slot, &n, &k);
    int head = slot >= head_slot(sm);
    ar_layer_info info = {head, head && quant_lm_head, c->tie_embeddings};
    return ar_scheme_for_layer(opt, NULL, name, n, k, &info, out);
}

/* A slot is a candidate when every quantizing option quantizes it; fill its
 * bits per option and its weight count. cand [nslots]. */
static int find_candidates(const slot_map *sm, const ar_config *c, const ar_autoscheme_opts *o, ar_autoscheme_result *r,
                           unsigned char *cand)
{
    for (int slot = 0; slot < r->nslots; slot++) {
        int n, k, any = 0, all = 1;
        slot_shape(sm, c, slot, &n, &k);
        for (int j = 0; j < r->nopt; j++) {
            ar_scheme s;
            if (slot_scheme(sm, c, slot, &r->options[j], o->quant_lm_head, &s)) return -1;
            if (!ar_scheme_quantized(&r->options[j])) continue;
            any = 1;
            if (!ar_scheme_quantized(&s)) all = 0;
            r->bits[(size_t)slot * r->nopt + j] = ar_layer_bits(&s, n, k, o->ignore_scale_zp_bits);
        }
        cand[slot] = any && all;
        for (int j = 0; j < r->nopt; j++)
            if (!ar_scheme_quantized(&r->options[j]))
                r->bits[(size_t)slot * r->nopt + j] = ar_layer_bits(&r->options[j], n, k, o->ignore_scale_zp_bits);
        r->params[slot] = cand[slot] ? (int64_t)n * k : 0;
        r->total_params += r->params[slot];
    }
    if (!r->total_params) return ar_error("autoscheme: no layer is quantized by every option");
    return 0;
}

/* Feasible range [min, max] of the uniform averages; snap a target within 1e-3. */
static int check_target(ar_autoscheme_result *r, double *target)
{
    r->min_avg = INFINITY, r->max_avg = -INFINITY;
    for (int j = 0; j < r->nopt; j++) {
        int64_t tot = 0;
        for (int s = 0; s < r->nslots; s++) if (r->params[s]) tot += r->bits[(size_t)s * r->nopt + j];
        double avg = (double)tot / r->total_params;
        r->min_avg = avg < r->min_avg ? avg : r->min_avg;
        r->max_avg = avg > r->max_avg ? avg : r->max_avg;
    }
    if (fabs(*target - r->min_avg) < 1e-3) *target = r->min_avg;
    else if (fabs(*target - r->max_avg) < 1e-3) *target = r->max_avg;
    if (*target < r->min_avg || *target > r->max_avg)
        return ar_error("autoscheme: target avg_bits %.3f is outside the options' range [%.3f, %.3f]",
                        *target, r->min_avg, r->max_avg);
    return 0;
}

static int find_root(int *parent, int x)
{
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
}

/* 1 when layer name matches pattern: equal, regex search, or substring. */
static int name_matches(const char *pattern, const char *name)
{
    if (!strcmp(pattern, name) || strstr(name, pattern)) return 1;
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);
    if (!re) return 0;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int hit = md && pcre2_match(re, (PCRE2_SPTR)name, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return hit;
}

/* Union the candidates of each block that match any pattern of group g. */
static void union_group(const slot_map *sm, const char *group, const unsigned char *cand, int *parent)
{
    char pats[1024];
    snprintf(pats, sizeof pats, "%s", group);
    for (int l = 0; l < sm->L; l++) {
        int first = -1;
        for (int i = 0; i < sm->d[l].nlinear; i++) {
            int slot = sm->off[l] + i, hit = 0;
            char name[128], buf[1024], *save = NULL;
            if (!cand[slot]) continue;
            slot_name(sm, slot, name, sizeof name);
            memcpy(buf, pats, sizeof buf);
            for (char *p = strtok_r(buf, ",", &save); p && !hit; p = strtok_r(NULL, ",", &save))
                hit = *p && name_matches(p, name);
            if (!hit) continue;
            if (first < 0) first = slot;
            else parent[find_root(parent, slot)] = find_root(parent, first);
        }
    }
}

/* AutoRound's MoE rule (auto_scheme/utils.py build_expert_groups,
 * delta_loss.py L2781): the routed-expert linears of one block, all experts
 * and projections, are one DP item (one scheme, losses and bits summed). */
static void union_experts(const slot_map *sm, const unsigned char *cand, int *parent)
{
    for (int l = 0; l < sm->L; l++) {
        int first = -1;
        for (int i = 0; i < sm->d[l].nlinear; i++) {
            int slot = sm->off[l] + i;
            if (!cand[slot] || expert_of(&sm->d[l], i) < 0) continue;
            if (first < 0) first = slot;
            else parent[find_root(parent, slot)] = find_root(parent, first);
        }
    }
}

/* Items of the DP: one per group root, in slot order; item_of [nslots]. */
static int build_items(const slot_map *sm, const ar_autoscheme_opts *o, const unsigned char *cand,
                       int nslots, int *item_of, int *root_slot)
{
    int *parent = malloc(sizeof *parent * (size_t)nslots), nitems = 0;
    if (!parent) return ar_error("autoscheme: out of memory");
    for (int s = 0; s < nslots; s++) parent[s] = s;
    for (int g = 0; g < o->nshared; g++) union_group(sm, o->shared[g], cand, parent);
    union_experts(sm, cand, parent);
    for (int s = 0; s < nslots; s++) item_of[s] = -1;
    for (int s = 0; s < nslots; s++) {
        if (!cand[s]) continue;
        int root = find_root(parent, s);
        if (item_of[root] < 0) { item_of[root] = nitems; root_slot[nitems++] = root; }
        item_of[s] = item_of[root];
    }
    free(parent);
    return nitems;
}

/* The head trick: the head may only take options of >= 6 bits (only the
 * widest when the target exceeds 6); no restriction if none qualifies. */
static void restrict_head(const ar_autoscheme_result *r, double target, unsigned char *allowed)
{
    int widest = 0, any = 0;
    for (int j = 0; j < r->nopt; j++) {
        if (r->options[j].bits > r->options[widest].bits) widest = j;
        any |= r->options[j].bits >= 6;
    }
    if (!any) return;
    for (int j = 0; j < r->nopt; j++)
        allowed[j] = target > 6 ? j == widest : r->options[j].bits >= 6;
}

/* Merge per-slot bits and scores into items, run the DP, spread the choice back. */
static int allocate(const slot_map *sm, const ar_autoscheme_opts *o, ar_autoscheme_result *r,
                    const unsigned char *cand, double target)
{
    int ns = r->nslots, no = r->nopt, rc = -1;
    int *item_of = malloc(sizeof(int) * ns), *root = malloc(sizeof(int) * ns), *ch = malloc(sizeof(int) * ns);
    int64_t *bits = calloc((size_t)ns * no, sizeof *bits);
    double *loss = calloc((size_t)ns * no, sizeof *loss);
    unsigned char *allowed = malloc((size_t)ns * no);
    if (!item_of || !root || !ch || !bits || !loss || !allowed) { ar_error("autoscheme: out of memory"); goto out; }
    int nitems = build_items(sm, o, cand, ns, item_of, root);
    if (nitems < 0) goto out;
    memset(allowed, 1, (size_t)ns * no);
    for (int s = 0; s < ns; s++) {
        if (item_of[s] < 0) continue;
        for (int j = 0; j < no; j++) {
            bits[(size_t)item_of[s] * no + j] += r->bits[(size_t)s * no + j];
            loss[(size_t)item_of[s] * no + j] += r->score[(size_t)s * no + j];
        }
        if (s == head_slot(sm)) restrict_head(r, target, allowed + (size_t)item_of[s] * no);
    }
    r->budget = (int64_t)floor((double)r->total_params * target);
    double t0 = now_seconds();
    if (ar_autoscheme_dp(nitems, no, bits, loss, allowed, r->budget, o->max_states, ch, &r->used_bits, NULL))
        goto out;
    r->dp_seconds = now_seconds() - t0;
    for (int s = 0; s < ns; s++) r->choice[s] = item_of[s] < 0 ? -1 : ch[item_of[s]];
    r->avg_bits = (double)r->used_bits / r->total_params;
    rc = 0;
out:
    free(item_of); free(root); free(ch); free(bits); free(loss); free(allowed);
    return rc;
}

unsigned ar_autoscheme_terms(const ar_scheme *options, int nopt, int always_weight_term)
{
    unsigned terms = 0;
    for (int j = 0; j < nopt; j++) {
        if (options[j].bits > 8) continue;
        if (always_weight_term || options[j].act_bits > 8) terms |= AR_AS_WEIGHT_TERM;
        if (options[j].act_bits <= 8) terms |= AR_AS_ACT_TERM;
    }
    return terms;
}

/* The measured score (autoscheme_measured.c), given base (NULL: all FP). */
static int measure_all(ar_model *m, const int32_t *ids, int nseq, int T, const ar_autoscheme_opts *o,
                       ar_autoscheme_result *r, const unsigned char *cand, const int *base)
{
    double t0 = now_seconds();
    r->terms = 0;
    int rc = ar_autoscheme_measure(m, r->options, r->nopt, cand, base, o->measured_opt_rtn, ids, nseq, T,
                                   o->batch_size > 0 ? o->batch_size : 8, r->score, NULL, o->progress, o->pctx);
    r->score_seconds += now_seconds() - t0;
    return rc;
}

/* AutoRound's _fill_inactive_expert_scores (auto_scheme/utils.py L442–):
 * in each block, an expert whose candidate linears all scored 0 (|s| < 1e-12:
 * no calibration token reached it, so no gradient) gets, on each of them,
 * the mean over the active experts of each one's mean non-zero score.
 * Column j of r->score. */
static void fill_inactive_experts(const slot_map *sm, const unsigned char *cand, ar_autoscheme_result *r, int j)
{
    for (int l = 0; l < sm->L; l++) {
        const ar_block_desc *d = &sm->d[l];
        int E = 0;
        for (int i = 0; i < d->nlinear; i++) E = expert_of(d, i) + 1 > E ? expert_of(d, i) + 1 : E;
        double fill = 0;
        int nactive = 0;
        for (int e = 0; e < E; e++) {
            double sum = 0;
            int nz = 0;
            for (int i = 0; i < d->nlinear; i++) {
                double v = r->score[(size_t)(sm->off[l] + i) * r->nopt + j];
                if (cand[sm->off[l] + i] && expert_of(d, i) == e && fabs(v) >= 1e-12) sum += v, nz++;
            }
            if (nz) fill += sum / nz, nactive++;
        }
        if (!nactive) continue;
        fill /= nactive;
        for (int e = 0; e < E; e++) {
            int active = 0;
            for (int i = 0; i < d->nlinear; i++)
                if (cand[sm->off[l] + i] && expert_of(d, i) == e &&
                    fabs(r->score[(size_t)(sm->off[l] + i) * r->nopt + j]) >= 1e-12)
                    active = 1;
            for (int i = 0; !active && i < d->nlinear; i++)
                if (cand[sm->off[l] + i] && expert_of(d, i) == e) r->score[(size_t)(sm->off[l] + i) * r->nopt + j] = fill;
        }
    }
}

static int score_all(ar_model *m, const int32_t *ids, int nseq, int T, const ar_autoscheme_opts *o,
                     ar_autoscheme_result *r, const unsigned char *cand, const slot_map *sm)
{
    if (o->score == AR_AS_SCORE_MEASURED) return measure_all(m, ids, nseq, T, o, r, cand, NULL);
    double *one = malloc(sizeof(double) * r->nslots);
    if (!one) return ar_error("autoscheme: out of memory");
    double t0 = now_seconds();
    r->terms = ar_autoscheme_terms(r->options, r->nopt, o->always_weight_term);
    for (int j = 0; j < r->nopt; j++) {
        if (!ar_scheme_quantized(&r->options[j])) continue;   /* BF16: score 0 */
        memset(one, 0, sizeof(double) * r->nslots);
        if (ar_autoscheme_score(m, &r->options[j], cand, r->terms, ids, nseq, T,
                                o->batch_size > 0 ? o->batch_size : 8, one, NULL, o->progress, o->pctx)) {
            free(one);
            return -1;
        }
        for (int s = 0; s < r->nslots; s++) r->score[(size_t)s * r->nopt + j] = one[s];
        fill_inactive_experts(sm, cand, r, j);
    }
    r->score_seconds = now_seconds() - t0;
    free(one);
    return 0;
}

int ar_autoscheme_run(ar_model *m, const int32_t *ids, int nseq, int T,
                      const ar_autoscheme_opts *o, ar_autoscheme_result *r)
{
    const ar_config *c = ar_model_config(m);
    memset(r, 0, sizeof *r);
    slot_map sm;
    if (slot_map_init(&sm, c)) return -1;
    r->nslots = head_slot(&sm) + 1;
    if (dedup_options(o, r)) { slot_map_free(&sm); return -1; }
    size_t cells = (size_t)r->nslots * r->nopt;
    unsigned char *cand = calloc((size_t)r->nslots, 1);
    r->choice = malloc(sizeof(int) * r->nslots);
    r->score = calloc(cells, sizeof(double));
    r->bits = calloc(cells, sizeof(int64_t));
    r->params = calloc((size_t)r->nslots, sizeof(int64_t));
    double target = o->avg_bits;
    int rc = -1;
    if (!cand || !r->choice || !r->score || !r->bits || !r->params) ar_error("autoscheme: out of memory");
    else if (!find_candidates(&sm, c, o, r, cand) && !check_target(r, &target) &&
             !score_all(m, ids, nseq, T, o, r, cand, &sm) && !allocate(&sm, o, r, cand, target))
        rc = 0;
    /* measured, later rounds: each layer's loss given the last pick for the others */
    for (int round = 1; !rc && o->score == AR_AS_SCORE_MEASURED && round < o->measured_rounds; round++)
        if (measure_all(m, ids, nseq, T, o, r, cand, r->choice) || allocate(&sm, o, r, cand, target)) rc = -1;
    free(cand);
    slot_map_free(&sm);
    if (rc) ar_autoscheme_result_free(r);
    return rc;
}

char *ar_autoscheme_layer_config_json(const ar_config *c, const ar_autoscheme_result *r)
{
    size_t cap = 64 + (size_t)r->nslots * 192, len = 0;
    slot_map sm;
    if (slot_map_init(&sm, c)) return NULL;
    char *out = malloc(cap);
    if (!out) { slot_map_free(&sm); ar_error("autoscheme: out of memory"); return NULL; }
    len += (size_t)snprintf(out, cap, "{");
    for (int s = 0, first = 1; s < r->nslots; s++) {
        if (r->choice[s] < 0) continue;
        char name[128];
        slot_name(&sm, s, name, sizeof name);
        len += (size_t)snprintf(out + len, cap - len, "%s\n  \"%s\": \"%s\"", first ? "" : ",", name,
                                r->options[r->choice[s]].name);
        first = 0;
    }
    snprintf(out + len, cap - len, "\n}\n");
    slot_map_free(&sm);
    return out;
}
