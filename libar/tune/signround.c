#include "signround.h"
#include "dtype.h"
#include "error.h"
#include "moe.h"
#include "ops.h"
#include "quant_fp.h"
#include "spill.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void ar_signround_defaults(ar_signround_opts *o)
{
    memset(o, 0, sizeof *o);
    o->iters = 200;
    o->batch_size = 8;
    o->grad_accum = 1;
    o->seed = 42;
    o->minmax_tuning = 1;
    o->use_best = 1;
}

int ar_block_plan_init(ar_block_plan *plan, const ar_block_desc *desc)
{
    int n = desc->nlinear;
    *plan = (ar_block_plan){desc, n, calloc(n, sizeof(int)), calloc(n, sizeof(ar_quant_spec)), calloc(n, sizeof(int)),
                            calloc(n, sizeof(ar_act_spec)), calloc(n, sizeof(float *))};
    if (!plan->quantize || !plan->spec || !plan->act_quant || !plan->act || !plan->init_scale)
        return ar_error("out of memory for the plan of %d linears", n);
    return 0;
}

void ar_block_plan_free(ar_block_plan *plan)
{
    free(plan->quantize); free(plan->spec); free(plan->act_quant); free(plan->act); free(plan->init_scale);
    *plan = (ar_block_plan){0};
}

void ar_block_plan_copy(ar_block_plan *dst, const ar_block_plan *src)
{
    size_t n = (size_t)src->nlinear;
    memcpy(dst->quantize, src->quantize, n * sizeof *src->quantize);
    memcpy(dst->spec, src->spec, n * sizeof *src->spec);
    memcpy(dst->act_quant, src->act_quant, n * sizeof *src->act_quant);
    memcpy(dst->act, src->act, n * sizeof *src->act);
    memcpy(dst->init_scale, src->init_scale, n * sizeof *src->init_scale);
}

ar_quant_out *ar_block_plan_outputs(const ar_block_plan *plan)
{
    ar_quant_out *out = calloc(plan->nlinear, sizeof *out);
    if (!out) return ar_error("out of memory for layer outputs"), NULL;
    for (int i = 0; i < plan->nlinear; i++) {
        if (!plan->quantize[i]) continue;
        int n = plan->desc->lin[i].n_out, k = plan->desc->lin[i].k_in;
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        out[i].wq = malloc(sizeof(float) * n * k);
        out[i].codes = malloc((size_t)n * k);
        out[i].scale = malloc(sizeof(float) * ng);
        out[i].zp = malloc(sizeof(int32_t) * ng);
        if (!out[i].wq || !out[i].codes || !out[i].scale || !out[i].zp) {
            ar_block_plan_outputs_free(out, plan);
            return ar_error("out of memory for layer outputs"), NULL;
        }
    }
    return out;
}

void ar_block_plan_outputs_free(ar_quant_out *out, const ar_block_plan *plan)
{
    for (int i = 0; out && i < plan->nlinear; i++) {
        free(out[i].wq); free(out[i].codes); free(out[i].scale); free(out[i].zp);
    }
    free(out);
}

int ar_block_plan_has_act_quant(const ar_block_plan *plan)
{
    for (int i = 0; i < plan->nlinear; i++) if (plan->quantize[i] && plan->act_quant[i]) return 1;
    return 0;
}

int ar_scheme_act_needs_max(const ar_scheme *s)
{
    return s->bits < 16 && s->act_bits <= 8 && (!s->act_dynamic || strstr(s->act_data_type, "static"));
}

int ar_act_spec_from_scheme(const ar_scheme *s, float act_max, ar_act_spec *as)
{
    memset(as, 0, sizeof *as);
    if (s->bits >= 16 || s->act_bits >= 16) return 0;
    const char *dt = s->act_data_type;
    int rceil = !strcmp(dt, "mx_fp_rceil");
    int qdt = ar_quant_dtype_parse(rceil ? "mx_fp" : dt, s->act_bits);
    if (qdt < 0 || qdt == AR_QDT_GGUF)
        return ar_error("activations of data type %s with %d bits have no quantizer", dt, s->act_bits);
    if (!s->act_sym) return ar_error("asymmetric activations (%s, %d bits) have no quantizer", dt, s->act_bits);
    *as = (ar_act_spec){qdt, s->act_bits, s->act_group_size, s->act_dynamic, 0, rceil};
    if (ar_scheme_act_needs_max(s)) {
        as->act_max = act_max > 0 ? act_max : 0;
        if (!(act_max > 0)) as->dynamic = 1;
    }
    float probe[64] = {0};      /* a bad group size fails here, not mid-tuning */
    if (ar_act_quant(as, probe, 1, 64))
        return ar_error("activations %s, %d bits, group %d: %s", dt, s->act_bits, s->act_group_size, ar_last_error());
    return 1;
}

int ar_block_plan_set_act_quant(const ar_block_plan *plan, ar_block_work *ws)
{
    const ar_act_spec **aq = malloc(sizeof *aq * (size_t)plan->nlinear);
    if (!aq) return ar_error("out of memory for the activation quantizers");
    for (int i = 0; i < plan->nlinear; i++) aq[i] = plan->quantize[i] && plan->act_quant[i] ? &plan->act[i] : NULL;
    int rc = plan->desc->set_act_quant(ws, aq);
    free(aq);
    return rc;
}

void ar_default_mask(uint8_t *mask, int n, int T)
{
    for (long i = 0; i < (long)n * T; i++) mask[i] = (i % T) != T - 1;
}

/* Row blocks of the loss sum: a fixed count, so the order of the additions
 * (and hence the result) does not depend on the number of threads. */
#define LOSS_BLOCKS 64

/* Σ over the rows kept by row_mask of (pred − ref)², accumulated in double;
 * with dpred, also dpred = gscale·(pred − ref) on kept rows and 0 on the
 * others. */
static double masked_sse(const float *pred, const float *ref, const uint8_t *row_mask, long rows, int C,
                         float gscale, float *dpred)
{
    double part[LOSS_BLOCKS] = {0};
    long per = (rows + LOSS_BLOCKS - 1) / LOSS_BLOCKS;
    #pragma omp parallel for schedule(static) if (rows * C >= (1L << 16))
    for (int blk = 0; blk < LOSS_BLOCKS; blk++) {
        long r1 = (blk + 1) * per < rows ? (blk + 1) * per : rows;
        double acc = 0;
        for (long r = blk * per; r < r1; r++) {
            const float *p = pred + r * C, *q = ref + r * C;
            float *d = dpred ? dpred + r * C : NULL;
            if (row_mask && !row_mask[r]) {
                if (d) memset(d, 0, sizeof(float) * C);
                continue;
            }
            for (int j = 0; j < C; j++) {
                float e = p[j] - q[j];
                acc += (double)e * e;
                if (d) d[j] = gscale * e;
            }
        }
        part[blk] = acc;
    }
    double sum = 0;
    for (int blk = 0; blk < LOSS_BLOCKS; blk++) sum += part[blk];
    return sum;
}

double ar_masked_mse(const float *pred, const float *ref, const uint8_t *row_mask, long rows, int C,
                     float *dpred)
{
    double nel = (double)rows * C;
    return masked_sse(pred, ref, row_mask, rows, C, (float)(2.0 / nel), dpred) / nel;
}

/* The k-th largest (k >= 1) of a[0..n), which is reordered: quickselect. */
static float kth_largest(float *a, long n, long k)
{
    long lo = 0, hi = n - 1, want = k - 1;   /* index in descending order */
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

double ar_outlier_suppressed_sse(const float *pred, const float *ref, const uint8_t *row_mask, long rows, int C,
                                 float gscale, float *dpred)
{
    const long n = rows * C, k = n / 1000 > 1 ? n / 1000 : 1;
    float *d = malloc(sizeof(float) * (size_t)n);
    if (!d) return ar_error("signround: out of memory for the outlier-suppressed loss");
    for (long i = 0; i < n; i++) d[i] = fabsf(pred[i] - ref[i]);
    float thr = kth_largest(d, n, k);
    long above = 0;
    for (long i = 0; i < n; i++) above += fabsf(pred[i] - ref[i]) > thr;
    long ties = k - above;       /* elements equal to thr still to drop */
    double sse = 0;
    for (long i = 0; i < n; i++) {
        float e = pred[i] - ref[i], a = fabsf(e);
        int drop = a > thr || (a == thr && ties-- > 0);
        int keep = !drop && (!row_mask || row_mask[i / C]);
        if (keep) sse += (double)e * e;
        if (dpred) dpred[i] = keep ? gscale * e : 0.f;
    }
    free(d);
    return sse;
}

/* Rows of logits formed at once by ar_lm_head_loss. */
#define HEAD_CHUNK 256

double ar_lm_head_loss(const ar_lm_head *h, const float *pred, const float *ref, const int *target, long rows, int C,
                       float scale, float *dpred)
{
    const int V = h->V;
    const long ch = rows < HEAD_CHUNK ? rows : HEAD_CHUNK;
    if (h->kl && !ref) return ar_error("signround: the KL head loss needs the FP outputs");
    float *x = malloc(sizeof(float) * (size_t)rows * C), *rstd = malloc(sizeof(float) * (size_t)rows);
    float *logits = malloc(sizeof(float) * (size_t)ch * V);
    float *ref_x = h->kl ? malloc(sizeof(float) * (size_t)ch * C) : NULL;
    float *ref_logits = h->kl ? malloc(sizeof(float) * (size_t)ch * V) : NULL;
    float *dlogits = dpred ? malloc(sizeof(float) * (size_t)ch * V) : NULL;
    float *dx = dpred ? calloc((size_t)rows * C, sizeof(float)) : NULL;
    double sum = -1;
    if (!x || !rstd || !logits || (h->kl && (!ref_x || !ref_logits)) || (dpred && (!dlogits || !dx))) {
        ar_error("signround: out of memory for the LM-head loss (%ld rows, vocabulary %d)", rows, V);
        goto done;
    }
    ar_rmsnorm_forward(x, rstd, pred, h->norm_w, (int)rows, C, h->eps);
    sum = 0;
    for (long r0 = 0; r0 < rows; r0 += ch) {
        int nr = (int)(rows - r0 < ch ? rows - r0 : ch);
        const float *xr = x + r0 * C;
        const int *tr = target + r0;
        ar_linear_forward(logits, xr, h->w, NULL, nr, C, V);
        if (h->kl) {
            ar_rmsnorm_forward(ref_x, NULL, ref + r0 * C, h->norm_w, nr, C, h->eps);
            ar_linear_forward(ref_logits, ref_x, h->w, NULL, nr, C, V);
            sum += ar_kldiv_forward(ref_logits, logits, tr, nr, V);
        } else {
            sum += ar_crossentropy_forward(logits, tr, nr, V);
        }
        if (!dpred) continue;
        memset(dlogits, 0, sizeof(float) * (size_t)nr * V);
        if (h->kl) ar_kldiv_backward(dlogits, ref_logits, logits, tr, nr, V, scale);
        else ar_crossentropy_backward(dlogits, logits, tr, nr, V, scale);
        ar_linear_backward(dx + r0 * C, NULL, NULL, dlogits, xr, h->w, nr, C, V);
    }
    if (dpred) {
        memset(dpred, 0, sizeof(float) * (size_t)rows * C);
        ar_rmsnorm_backward(dpred, NULL, dx, pred, h->norm_w, rstd, (int)rows, C);
    }
done:
    free(x); free(rstd); free(logits); free(ref_x); free(ref_logits); free(dlogits); free(dx);
    return sum;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Tunables, their best snapshot and gradients for one quantized linear. */
/* Tunables and gradients for one quantized linear. No best copy of V, α, β
 * is kept: at each new best the linear's outputs are made from the current
 * tunables (what finish would make from a copy of them), so the best
 * iteration's result lives in the caller's output buffers. The gradients of
 * V, α, β are the tuner's, shared by the linears (update_all takes one
 * linear at a time). */
typedef struct {
    int n, k, ng;
    size_t nel, ngr;
    size_t cap_nel, cap_ngr;   /* what the buffers hold (kept across blocks by the cache) */
    float *v, *alpha, *beta;
    float *wq, *dw;
    float lr, mlr;
    const float *init_scale;   /* plan->init_scale[i] (SignRoundV2), or NULL */
    int wq_fresh;              /* wq is the fake-quantization of the current tunables */
    int dw_zero;               /* dw is all zero (no step was taken from it) */
} layer_state;

static float layer_lr(const ar_signround_opts *o, int bits)
{
    if (o->lr > 0) return o->lr;
    return (o->iters >= 1000 && bits <= 3 ? 2.0f : 1.0f) / (float)o->iters;
}

static int layer_init(layer_state *L, const ar_linear_desc *d, const ar_quant_spec *qs, const ar_signround_opts *o)
{
    L->n = d->n_out, L->k = d->k_in;
    L->ng = ar_quant_ngroups(L->k, qs->group_size);
    L->nel = (size_t)L->n * L->k;
    L->ngr = (size_t)L->n * L->ng;
    L->init_scale = NULL;
    if (L->nel > L->cap_nel) {
        free(L->v); free(L->wq); free(L->dw);
        L->cap_nel = 0;
        L->v = malloc(L->nel * 4); L->wq = malloc(L->nel * 4); L->dw = malloc(L->nel * 4);
        if (!L->v || !L->wq || !L->dw) return ar_error("out of memory for the tunables of %s", d->name);
        L->cap_nel = L->nel;
    }
    if (L->ngr > L->cap_ngr) {
        free(L->alpha); free(L->beta);
        L->cap_ngr = 0;
        L->alpha = malloc(L->ngr * 4); L->beta = malloc(L->ngr * 4);
        if (!L->alpha || !L->beta) return ar_error("out of memory for the tunables of %s", d->name);
        L->cap_ngr = L->ngr;
    }
    /* v starts at zero (wq and dw are written before they are read), α = β = 1 */
    memset(L->v, 0, L->nel * 4);
    for (size_t g = 0; g < L->ngr; g++) L->alpha[g] = L->beta[g] = 1.0f;
    L->wq_fresh = L->dw_zero = 0;
    L->lr = layer_lr(o, qs->bits);
    L->mlr = o->minmax_lr > 0 ? o->minmax_lr : L->lr;
    return 0;
}

static void layer_free(layer_state *L)
{
    free(L->v); free(L->wq); free(L->dw);
    free(L->alpha); free(L->beta);
    memset(L, 0, sizeof *L);
}

static ar_quant_params layer_params(const layer_state *L, int minmax)
{
    ar_quant_params p = {L->v, NULL, NULL, L->init_scale};
    if (minmax) p.alpha = L->alpha, p.beta = L->beta;
    return p;
}

/* p -= lr · sign(g), sign(0) = 0 (SignSGD). */
static void sign_step(float *p, const float *g, size_t n, float lr)
{
    #pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) p[i] -= lr * (float)((g[i] > 0) - (g[i] < 0));
}

static void sampler_shuffle(ar_index_sampler *s)
{
    for (int i = s->n; i > 1; i--) {
        int j = (int)ar_rand_below(&s->rng, (uint64_t)i);
        int t = s->perm[i - 1]; s->perm[i - 1] = s->perm[j]; s->perm[j] = t;
    }
    s->pos = 0;
}

int ar_index_sampler_init(ar_index_sampler *s, int n, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    if (n < 1) return ar_error("sampler: %d samples", n);
    s->perm = malloc(sizeof(int) * (size_t)n);
    if (!s->perm) return ar_error("sampler: out of memory for %d indices", n);
    for (int i = 0; i < n; i++) s->perm[i] = i;
    s->n = n;
    s->rng = seed;
    sampler_shuffle(s);
    return 0;
}

const int *ar_index_sampler_next(ar_index_sampler *s, int gb)
{
    if (s->pos + gb > s->n) sampler_shuffle(s);
    const int *r = s->perm + s->pos;
    s->pos += gb;
    return r;
}

void ar_index_sampler_free(ar_index_sampler *s)
{
    free(s->perm);
    s->perm = NULL;
}

/* Widen the rows of samples idx[0..bs) of src [n, T, C] bf16 into dst [bs*T, C]. */
static void gather_bf16(float *dst, const uint16_t *src, const int *idx, int bs, int T, int C)
{
    size_t row = (size_t)T * C;
    for (int b = 0; b < bs; b++) {
        ar_to_f32(dst + b * row, src + (size_t)idx[b] * row, AR_BF16, row);
        /* a chain in a spill file (spill.h) keeps none of its pages in memory:
         * the next draw of this sample reads it from the file again */
        ar_spill_release((void *)src, sizeof *src * idx[b] * row, sizeof *src * row);
    }
}

static void gather_mask(uint8_t *dst, const uint8_t *mask, const int *idx, int bs, int T)
{
    for (int b = 0; b < bs; b++) {
        if (mask) memcpy(dst + (size_t)b * T, mask + (size_t)idx[b] * T, T);
        else ar_default_mask(dst + (size_t)b * T, 1, T);
    }
}

typedef struct {
    const ar_config *c;
    const ar_block_plan *plan;
    const ar_signround_opts *o;
    int T, C, bs;
    int mc;                       /* samples of one forward/backward (micro-batch): at most bs and leaf */
    int leaf;                     /* samples of one chunk of the tree (o->dp_chunk); 0: the whole step */
    int nl;                       /* entries of L, gptr, mine and wq (the cache's) */
    unsigned char *mine;          /* [nl] planned and tuned here: with expert parallel, not another
                                     rank's routed expert */
    ar_moe_ep ep;                 /* expert parallel's exchange (o->reduce's all-gather), size 0 when off */
    layer_state *L;               /* [plan->nlinear], set where planned */
    float *dv, *dalpha, *dbeta;   /* gradients of one linear's V, α, β, sized for the largest */
    size_t cap_dv, cap_dg;
    float *wtmp;                  /* with o->reload: one linear's FP weight, sized for the largest */
    size_t cap_wtmp;
    ar_block_weights wq;          /* FP weights with the quantized linears swapped for ŵ */
    ar_block_work ws;
    ar_block_acts acts;
    float *xb, *yb, *pred, *dy;
    uint8_t *mb;
    int *tgt;                     /* LFQ: next-token targets of a mini-batch [bs, T] */
    long head_rows;               /* LFQ: positions scored in the current chunk */
    /* the chunk tree (reduce.h): gradient sets beyond the layers' dw, each
     * gtotal floats (the planned linears' weights, in linear order) */
    size_t gtotal;
    float *gsets;
    int cap_gsets;
    float **gptr;                 /* [nl] one set's pointers, passed to the backward as dW */
    double *part, *hpart;         /* [K] per-chunk loss sums and LFQ positions */
    int cap_part;
    float *rscratch;              /* ar_reduce_tree's scratch */
    size_t cap_rscratch;
    ar_signround_report *rep;
} tuner;

/* Linear i's FP weight: resident in w_fp, or read through o->reload into
 * the scratch (valid until the next call). NULL with ar_error. */
static const float *fp_weight(tuner *t, const ar_block_weights *w_fp, int i)
{
    if (w_fp->w[i]) return w_fp->w[i];
    if (!t->o->reload) return ar_error("signround: linear %d has no FP weight", i), NULL;
    return t->o->reload(t->o->reload_ctx, i, t->wtmp) ? NULL : t->wtmp;
}

/* Pin every linear's weight of t->wq for bf16 GEMMs (gemm.h): the
 * iteration's forward and backward then share one bf16 copy of each. Called
 * once ŵ is written; quantize_all drops the pins before rewriting it. */
static int pin_weights(tuner *t)
{
    for (int i = 0; i < t->plan->nlinear; i++) {
        const ar_linear_desc *d = &t->plan->desc->lin[i];
        if (ar_gemm_pin(t->o->gemm, t->wq.w[i], d->n_out, d->k_in) < 0) return -1;
    }
    return 0;
}

/* Fake-quantize every planned linear with the current tunables (a linear
 * whose tunables did not move since its last fake-quantization keeps it). */
static int quantize_all(tuner *t, const ar_block_weights *w_fp)
{
    double t0 = now_s();
    ar_gemm_unpin(t->o->gemm, NULL);
    for (int i = 0; i < t->plan->nlinear; i++) {
        if (!t->mine[i]) continue;
        layer_state *L = &t->L[i];
        if (!L->wq_fresh) {
            ar_quant_params p = layer_params(L, t->o->minmax_tuning);
            ar_quant_out out = {L->wq, NULL, NULL, NULL};
            const float *w = fp_weight(t, w_fp, i);
            if (!w || ar_quant_forward(&t->plan->spec[i], w, L->n, L->k, &p, &out)) return -1;
            L->wq_fresh = 1;
        }
        if (!L->dw_zero) memset(L->dw, 0, L->nel * 4);
    }
    t->rep->sec_quant += now_s() - t0;
    return pin_weights(t);
}

/* The LFQ loss of one chunk of bs samples (t->pred holds their block
 * outputs, t->yb the FP outputs, t->mb their mask): each position the mask
 * keeps predicts the next token of its sample (or, with kl, matches the FP
 * output's prediction). t->dy gets scale × the gradient; t->head_rows counts
 * the positions. */
static double head_loss(tuner *t, const int *idx, int bs, float scale)
{
    const ar_lm_head *h = t->o->lfq;
    const int T = t->T;
    for (int b = 0; b < bs; b++) {
        const int32_t *ids = h->ids + (size_t)idx[b] * T;
        for (int p = 0; p < T; p++) {
            long r = (long)b * T + p;
            int keep = t->mb[r] && p + 1 < T;
            t->tgt[r] = keep ? ids[p + 1] : -1;
            t->head_rows += keep;
        }
    }
    return ar_lm_head_loss(h, t->pred, t->yb, t->tgt, (long)bs * T, t->C, scale, t->dy);
}

/* Forward and backward of one chunk of bs samples idx[0..bs), the function
 * every chunking shares (dp chunks, ranks): dW[i] += ∂(chunk loss)/∂W_i
 * for the planned linears (the block backward accumulates; the tree gives it
 * zeroed sets), where the chunk loss is its masked sum of squares (or LFQ /
 * outlier loss) scaled by 1/nel, nel = the iteration's gb·T·C, the same
 * denominator for every chunk. *part gets the chunk's unscaled sum, *hrows
 * its LFQ positions. 0 or -1. */
static int chunk_grad(tuner *t, const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask, const int *idx,
                      int bs, double nel, float *const *dW, double *part, double *hrows)
{
    long rows = (long)bs * t->T;
    gather_bf16(t->xb, x_in, idx, bs, t->T, t->C);
    gather_bf16(t->yb, y_ref, idx, bs, t->T, t->C);
    gather_mask(t->mb, mask, idx, bs, t->T);
    double t0 = now_s();
    if (t->plan->desc->forward_train(t->c, &t->wq, t->xb, t->pred, bs, t->T, &t->ws, &t->acts)) return -1;
    double t1 = now_s();
    t->head_rows = 0;
    if (t->o->lfq) *part = head_loss(t, idx, bs, (float)(1.0 / nel));
    else if (t->o->outlier_loss)
        *part = ar_outlier_suppressed_sse(t->pred, t->yb, t->mb, rows, t->C, (float)(2.0 / nel), t->dy);
    else *part = masked_sse(t->pred, t->yb, t->mb, rows, t->C, (float)(2.0 / nel), t->dy);
    if (*part < 0) return -1;
    *hrows = (double)t->head_rows;
    if (t->plan->desc->backward(t->c, &t->wq, &t->acts, t->dy, dW, NULL, NULL, &t->ws)) return -1;
    t->rep->sec_forward += t1 - t0;
    t->rep->sec_backward += now_s() - t1;
    return 0;
}

/* Gradient set s: 0 the layers' dw (what update_all reads), s ≥ 1 the
 * arena's set s − 1; into t->gptr. */
static float *const *grad_set(tuner *t, int s)
{
    size_t off = 0;
    for (int i = 0; i < t->plan->nlinear; i++) {
        t->gptr[i] = NULL;
        if (!t->mine[i]) continue;
        t->gptr[i] = s ? t->gsets + (size_t)(s - 1) * t->gtotal + off : t->L[i].dw;
        off += t->L[i].nel;
    }
    return t->gptr;
}

static void zero_set(tuner *t, int s)
{
    float *const *g = grad_set(t, s);
    for (int i = 0; i < t->plan->nlinear; i++) if (g[i]) memset(g[i], 0, t->L[i].nel * 4);
}

/* dst += src, set by set (left + right of a tree node, reduce.h). */
static void add_set(tuner *t, int dst, int src)
{
    for (int i = 0; i < t->plan->nlinear; i++) {
        if (!t->mine[i]) continue;
        float *a = grad_set(t, dst)[i];
        const float *b = grad_set(t, src)[i];
        for (size_t e = 0; e < t->L[i].nel; e++) a[e] = a[e] + b[e];
    }
}

typedef struct {
    const uint16_t *x_in, *y_ref;
    const uint8_t *mask;
    const int *idx;
    int gb;
    double nel;
    int tmp0;        /* the first temporary set; tmp0 + depth is level depth's */
} tree_job;

/* Tree node [lo, hi) of chunks into set s: a leaf runs its chunk's
 * micro-batches in order on a zeroed set; otherwise left into s, right into
 * a temporary, s = left + right. */
static int eval_node(tuner *t, const tree_job *j, int lo, int hi, int s, int depth)
{
    if (hi - lo == 1) {
        int L = t->leaf ? t->leaf : j->gb, off = lo * L, n = j->gb - off < L ? j->gb - off : L;
        zero_set(t, s);
        t->part[lo] = 0, t->hpart[lo] = 0;
        for (int m = 0; m < n; m += t->mc) {   /* its micro-batches add into the chunk's set in order */
            int b = n - m < t->mc ? n - m : t->mc;
            double p, h;
            if (chunk_grad(t, j->x_in, j->y_ref, j->mask, j->idx + off + m, b, j->nel, grad_set(t, s), &p, &h))
                return -1;
            t->part[lo] += p, t->hpart[lo] += h;
        }
        return 0;
    }
    int mid = lo + ar_chunk_split(lo, hi), tmp = j->tmp0 + depth;
    if (eval_node(t, j, lo, mid, s, depth + 1) || eval_node(t, j, mid, hi, tmp, depth + 1)) return -1;
    add_set(t, s, tmp);
    return 0;
}

/* o->reduce when the ranks split the chunks (data parallel), else NULL. */
static ar_reducer *dp_ranks(const tuner *t)
{
    ar_reducer *rd = t->o->reduce;
    return rd && rd->size > 1 && !t->o->expert_parallel ? rd : NULL;
}

/* Room for `sets` arena sets, the loss parts of K chunks and the exchange
 * scratch. */
static int tree_alloc(tuner *t, int K, int sets)
{
    if (sets > t->cap_gsets) {
        free(t->gsets);
        t->cap_gsets = 0;
        if (!(t->gsets = malloc(sizeof(float) * t->gtotal * (size_t)sets)))
            return ar_error("out of memory for %d gradient copies of the chunk tree", sets);
        t->cap_gsets = sets;
    }
    if (K > t->cap_part) {
        free(t->part); free(t->hpart);
        t->cap_part = 0;
        t->part = malloc(sizeof(double) * K), t->hpart = malloc(sizeof(double) * K);
        if (!t->part || !t->hpart) return ar_error("out of memory for the loss parts");
        t->cap_part = K;
    }
    ar_reducer *rd = dp_ranks(t);
    size_t sc = rd ? ar_reduce_scratch(rd, K, t->gtotal) : 0;
    if (rd && !sc) return -1;   /* ar_reduce_scratch said why */
    if (sc > t->cap_rscratch) {
        free(t->rscratch);
        t->cap_rscratch = 0;
        if (!(t->rscratch = malloc(sizeof(float) * sc))) return ar_error("out of memory for the gradient exchange");
        t->cap_rscratch = sc;
    }
    return 0;
}

/* Forward + backward over one iteration's gb samples in K chunks (of t->leaf samples, or one):
 * the layers' dw get the chunk tree's sum of the chunk gradients and *loss
 * the chunks' masked sums of squares, added in chunk order, over gb·T·C
 * (LFQ: over the positions scored). With o->reduce, this rank runs its own
 * chunks into contiguous sets (every planned linear's gradient, one after
 * the other), and the ranks exchange those tree nodes in one all-gather
 * and the loss parts in another. */
static int run_batches(tuner *t, const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask,
                       const int *idx, int gb, double *loss)
{
    int L = t->leaf ? t->leaf : gb, K = (gb + L - 1) / L, depth = 0;
    ar_reducer *rd = dp_ranks(t);
    int ranks = rd != NULL;
    int lo = 0, hi = K, nodes[2 * 64];
    if (ranks) ar_chunk_range(K, rd->rank, rd->size, &lo, &hi);
    int own = ar_chunk_nodes(K, lo, hi, nodes, 64);
    for (int n = 0; n < own; n++)   /* temporaries: one per level below the tallest own node */
        while ((1 << depth) < nodes[2 * n + 1] - nodes[2 * n]) depth++;
    /* one process: the root into set 0 (the layers' dw), temporaries in sets
     * 1..depth; ranks: nodes in sets 1..own, temporaries after them, then
     * the exchange's result */
    if (tree_alloc(t, K, ranks ? own + depth + 1 : depth)) return -1;
    tree_job j = {x_in, y_ref, mask, idx, gb, (double)gb * t->T * t->C, ranks ? own + 1 : 1};
    for (int n = 0; n < own; n++)
        if (eval_node(t, &j, nodes[2 * n], nodes[2 * n + 1], ranks ? n + 1 : 0, 0)) return -1;
    if (ranks) {
        const float *mine[64];
        for (int n = 0; n < own; n++) mine[n] = t->gsets + (size_t)n * t->gtotal;
        float *sum = t->gsets + (size_t)(own + depth) * t->gtotal;
        if (ar_reduce_tree(rd, K, sum, mine, t->gtotal, t->rscratch)) return -1;
        for (int i = 0; i < t->plan->nlinear; i++)
            if (t->mine[i]) memcpy(t->L[i].dw, sum, t->L[i].nel * 4), sum += t->L[i].nel;
        if (ar_reduce_parts(rd, K, t->part) || (t->o->lfq && ar_reduce_parts(rd, K, t->hpart))) return -1;
        rd->iters++;
    }
    double sse = ar_chunk_fold(t->part, K), head_rows = ar_chunk_fold(t->hpart, K);
    *loss = !t->o->lfq ? sse / j.nel : head_rows ? sse / head_rows : 0;
    return 0;
}

/* Whether all n floats of x are zero (+0 or -0). */
static int all_zero(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

/* STE backward into the tunables and one SignSGD step at lr scale f.
 * A linear whose dW is all zero (an expert no token of the step was routed
 * to) is skipped: every term of its backward is ±0 (or NaN where w/s is
 * not finite), SignSGD's sign of ±0 and of NaN is 0, so V, α and β would
 * stay bit for bit (p - lr·(+0) = p, -0 included), and the α/β clamp of an
 * already clamped value is the identity. AutoRound never calls such an
 * expert, so its tunables get no gradient (None), which its SignSGD skips
 * (auto_round 0.16.1 algorithms/quantization/sign_round/sign_sgd.py L274),
 * and its α/β in-place clamp (wrapper.py L298) does not run: the same. */
static int update_all(tuner *t, const ar_block_weights *w_fp, float f)
{
    double t0 = now_s();
    for (int i = 0; i < t->plan->nlinear; i++) {
        if (!t->mine[i]) continue;
        layer_state *L = &t->L[i];
        if ((L->dw_zero = all_zero(L->dw, L->nel))) continue;
        L->wq_fresh = 0;
        int mm = t->o->minmax_tuning;
        ar_quant_params p = layer_params(L, mm);
        const ar_quant_spec *qs = &t->plan->spec[i];
        memset(t->dalpha, 0, L->ngr * 4);
        memset(t->dbeta, 0, L->ngr * 4);
        const float *w = fp_weight(t, w_fp, i);
        if (!w) return -1;
        if (qs->dtype == AR_QDT_INT) {   /* V's step fused into the backward: the same bits */
            if (ar_quant_int_backward_step(qs, w, L->n, L->k, &p, L->dw, L->v, L->lr * f,
                                           mm ? t->dalpha : NULL, mm ? t->dbeta : NULL))
                return -1;
        } else {
            memset(t->dv, 0, L->nel * 4);
            if (ar_quant_backward(qs, w, L->n, L->k, &p, L->dw, t->dv, mm ? t->dalpha : NULL, mm ? t->dbeta : NULL))
                return -1;
            sign_step(L->v, t->dv, L->nel, L->lr * f);
        }
        if (mm) {
            sign_step(L->alpha, t->dalpha, L->ngr, L->mlr * f);
            sign_step(L->beta, t->dbeta, L->ngr, L->mlr * f);
            ar_quant_clamp_minmax(&t->plan->spec[i], L->alpha, L->ngr);
            ar_quant_clamp_minmax(&t->plan->spec[i], L->beta, L->ngr);
        }
    }
    t->rep->sec_quant += now_s() - t0;
    return 0;
}

/* The tuner's buffers, kept between calls of ar_signround_tune_block_cached
 * while the shapes they were made for stay (the config, the mini-batch and
 * the plan's size). */
struct ar_signround_cache {
    tuner t;
    int ready;        /* t's shared buffers are allocated for the fields below */
    ar_config c;
    int bs, T, nl, lfq;
};

static void tuner_free(tuner *t)
{
    for (int i = 0; t->L && i < t->nl; i++) layer_free(&t->L[i]);
    free(t->L); free(t->mine);
    free(t->dv); free(t->dalpha); free(t->dbeta); free(t->wtmp);
    ar_block_weights_release(&t->wq);
    free(t->xb); free(t->yb); free(t->pred); free(t->dy); free(t->mb); free(t->tgt);
    free(t->gsets); free(t->gptr); free(t->part); free(t->hpart); free(t->rscratch);
    ar_block_work_free(&t->ws);
    ar_block_acts_free(&t->acts);
    memset(t, 0, sizeof *t);
}

void ar_signround_cache_free(ar_signround_cache *cache)
{
    if (!cache) return;
    tuner_free(&cache->t);
    free(cache);
}

/* The buffers that do not depend on the plan's choices: made once per shape. */
static int tuner_alloc(ar_signround_cache *k, const ar_config *c, int nl, int bs, int T, int lfq)
{
    tuner *t = &k->t;
    if (k->ready && k->bs == bs && k->T == T && k->nl == nl && k->lfq == lfq && !memcmp(&k->c, c, sizeof *c))
        return 0;
    tuner_free(t);
    k->ready = 0;
    if (ar_block_weights_init(&t->wq, nl)) return -1;
    t->nl = nl;
    if (!(t->L = calloc(nl, sizeof *t->L)) || !(t->gptr = calloc(nl, sizeof *t->gptr)) ||
        !(t->mine = calloc(nl, 1)))
        return ar_error("out of memory for the tunables");
    size_t rows = (size_t)bs * T * c->hidden;
    t->xb = malloc(rows * 4); t->yb = malloc(rows * 4);
    t->pred = malloc(rows * 4); t->dy = malloc(rows * 4);
    t->mb = malloc((size_t)bs * T);
    t->tgt = lfq ? malloc(sizeof(int) * (size_t)bs * T) : NULL;
    if (!t->xb || !t->yb || !t->pred || !t->dy || !t->mb || (lfq && !t->tgt))
        return ar_error("out of memory for a mini-batch");
    if (ar_block_work_init(&t->ws, c, bs, T, 1) || ar_block_acts_init(&t->acts, c, bs, T)) return -1;
    memcpy(&k->c, c, sizeof *c);
    k->bs = bs, k->T = T, k->nl = nl, k->lfq = lfq;
    k->ready = 1;
    return 0;
}

/* t->mine and t->ep: with expert parallel, this rank's experts' linears and
 * every non-expert one; else every planned linear. */
static void set_mine(tuner *t)
{
    const ar_block_plan *plan = t->plan;
    ar_reducer *rd = t->o->reduce;
    int E = 0;
    t->ep = (ar_moe_ep){0};
    if (t->o->expert_parallel && rd && rd->size > 1) {
        t->ep = (ar_moe_ep){rd->rank, rd->size, rd->ctx, rd->allgather, 0, 0};
        E = ar_block_desc_nexperts(plan->desc);
    }
    int e0 = 0, e1 = E;
    if (E) ar_moe_ep_range(E, rd->rank, rd->size, &e0, &e1);
    for (int i = 0; i < plan->nlinear; i++) {
        int e = E ? ar_block_desc_expert(plan->desc, i) : -1;
        t->mine[i] = plan->quantize[i] && (e < 0 || (e >= e0 && e < e1));
    }
}

static int tuner_init(ar_signround_cache *k, const ar_config *c, const ar_block_weights *w_fp,
                      const ar_block_plan *plan, const ar_signround_opts *o, int n, int T)
{
    tuner *t = &k->t;
    int bs = o->batch_size < n ? o->batch_size : n;
    /* micro-batches bound the activations (not with the outlier loss, whose top 0.1 % is taken
     * over a whole mini-batch, as AutoRound's); never larger than a chunk of the tree */
    int mc = o->micro_batch > 0 && o->micro_batch < bs && !o->outlier_loss ? o->micro_batch : bs;
    if (o->dp_chunk > 0 && o->dp_chunk < mc) mc = o->dp_chunk;
    if (plan->nlinear != w_fp->nlinear)
        return ar_error("signround: a plan of %d linears for weights of %d", plan->nlinear, w_fp->nlinear);
    if (tuner_alloc(k, c, plan->nlinear, mc, T, o->lfq != 0)) return -1;   /* buffers of one chunk */
    t->c = c; t->plan = plan; t->o = o; t->T = T; t->C = c->hidden;
    t->bs = bs, t->mc = mc, t->leaf = o->dp_chunk > 0 ? o->dp_chunk : 0;
    t->head_rows = 0;
    t->rep = NULL;
    ar_block_weights_borrow(&t->wq, w_fp);
    set_mine(t);
    size_t gtotal = 0;
    for (int i = 0; i < plan->nlinear; i++) {
        if (!t->mine[i]) continue;
        if (ar_quant_spec_check(&plan->spec[i]) || layer_init(&t->L[i], &plan->desc->lin[i], &plan->spec[i], o))
            return -1;
        t->L[i].init_scale = plan->init_scale[i];
        gtotal += t->L[i].nel;
        t->wq.w[i] = t->L[i].wq;
        if (t->L[i].nel > t->cap_dv) {
            free(t->dv);
            t->cap_dv = 0;
            if (!(t->dv = malloc(t->L[i].nel * 4))) return ar_error("out of memory for the gradients");
            t->cap_dv = t->L[i].nel;
        }
        if (o->reload && !w_fp->w[i] && t->L[i].nel > t->cap_wtmp) {
            free(t->wtmp);
            t->cap_wtmp = 0;
            if (!(t->wtmp = malloc(t->L[i].nel * 4))) return ar_error("out of memory for a weight scratch");
            t->cap_wtmp = t->L[i].nel;
        }
        if (t->L[i].ngr > t->cap_dg) {
            free(t->dalpha); free(t->dbeta);
            t->cap_dg = 0;
            t->dalpha = malloc(t->L[i].ngr * 4), t->dbeta = malloc(t->L[i].ngr * 4);
            if (!t->dalpha || !t->dbeta) return ar_error("out of memory for the gradients");
            t->cap_dg = t->L[i].ngr;
        }
    }
    if (gtotal != t->gtotal) {   /* the chunk tree's sets are of the plan's size */
        free(t->gsets);
        t->gsets = NULL, t->cap_gsets = 0, t->gtotal = gtotal;
    }
    /* the caller's observer or none (the activation quantizers and the
     * quantized-input copy are set below) */
    t->ws.observe = o->observe, t->ws.observe_ctx = o->observe_ctx;
    t->ws.gemm = o->gemm;
    t->ws.moe_ep = t->ep.size > 1 ? &t->ep : NULL;
    return ar_block_plan_set_act_quant(plan, &t->ws);
}

/* Bake the current tunables into the outputs: at each new best (the
 * tunables that gave this iteration's loss), and after the last iteration
 * with use_best = 0, or when no iteration set a best (iters 0; every loss
 * NaN: then the tunables are reset to their start, V = 0, α = β = 1, which
 * a best copy made at the start would have held). */
static int bake(tuner *t, const ar_block_weights *w_fp, const ar_quant_out *out)
{
    for (int i = 0; i < t->plan->nlinear; i++) {
        if (!t->mine[i]) continue;
        layer_state *L = &t->L[i];
        ar_quant_params p = layer_params(L, t->o->minmax_tuning);
        const float *w = fp_weight(t, w_fp, i);
        if (!w || ar_quant_forward(&t->plan->spec[i], w, L->n, L->k, &p, &out[i])) return -1;
    }
    return 0;
}

static void reset_tunables(tuner *t)
{
    for (int i = 0; i < t->plan->nlinear; i++) {
        if (!t->mine[i]) continue;
        layer_state *L = &t->L[i];
        memset(L->v, 0, L->nel * 4);
        for (size_t g = 0; g < L->ngr; g++) L->alpha[g] = L->beta[g] = 1.0f;
        L->wq_fresh = 0;
    }
}

int ar_signround_begin(int n, int T, const ar_signround_opts *o, ar_signround_report **rep,
                       ar_signround_report *spare)
{
    if (!*rep) *rep = spare;
    memset(*rep, 0, sizeof **rep);
    if (n <= 0 || T < 2 || o->iters < 0 || o->batch_size < 1 || o->grad_accum < 1)
        return ar_error("signround: bad sizes (n %d, T %d, iters %d, batch %d)", n, T, o->iters, o->batch_size);
    return o->batch_size * o->grad_accum < n ? o->batch_size * o->grad_accum : n;
}

int ar_signround_tune_block(const ar_config *c, const ar_block_weights *w_fp,
                            const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask,
                            int n, int T, const ar_block_plan *plan, const ar_signround_opts *o,
                            const ar_quant_out *out, ar_signround_report *rep,
                            ar_signround_progress cb, void *cb_ctx)
{
    ar_signround_cache *cache = NULL;
    int rc = ar_signround_tune_block_cached(&cache, c, w_fp, x_in, y_ref, mask, n, T, plan, o, out, rep, cb, cb_ctx);
    ar_signround_cache_free(cache);
    return rc;
}

int ar_signround_tune_block_cached(ar_signround_cache **cache, const ar_config *c, const ar_block_weights *w_fp,
                                   const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask,
                                   int n, int T, const ar_block_plan *plan, const ar_signround_opts *o,
                                   const ar_quant_out *out, ar_signround_report *rep,
                                   ar_signround_progress cb, void *cb_ctx)
{
    ar_signround_report spare;
    int gb = ar_signround_begin(n, T, o, &rep, &spare);
    if (gb < 0) return -1;
    if (!*cache && !(*cache = calloc(1, sizeof **cache))) return ar_error("out of memory for the tuner");
    double t_start = now_s();
    tuner *tp = &(*cache)->t;
    int rc = tuner_init(*cache, c, w_fp, plan, o, n, T);
    if (rc) (*cache)->ready = 0;   /* half made: made again next time */
    tp->rep = rep;
    ar_index_sampler s = {0};
    if (!rc) rc = ar_index_sampler_init(&s, n, o->seed);
    rep->best_loss = INFINITY;
    double loss = 0;
    int baked = 0;   /* out holds the best iteration's result */
    for (int it = 0; !rc && it < o->iters; it++) {
        const int *idx = ar_index_sampler_next(&s, gb);
        rc = quantize_all(tp, w_fp);
        if (!rc) rc = run_batches(tp, x_in, y_ref, mask, idx, gb, &loss);
        if (rc) break;
        if (it == 0) rep->loss0 = loss;
        if (loss < rep->best_loss) {
            rep->best_loss = loss;
            rep->best_iter = it;
            if (o->use_best) {
                double t0 = now_s();
                rc = bake(tp, w_fp, out);
                rep->sec_quant += now_s() - t0;
                if (rc) break;
                baked = 1;
            }
        }
        /* No step after the last forward: nothing would read its result. */
        if (it + 1 < o->iters) rc = update_all(tp, w_fp, 1.0f - (float)it / (float)o->iters);
        if (cb) cb(cb_ctx, it, o->iters, loss, rep->best_loss);
    }
    ar_gemm_unpin(o->gemm, NULL);   /* ŵ and the FP weights are the caller's again */
    if (!o->use_best && o->iters > 0) rep->best_loss = loss, rep->best_iter = o->iters - 1;
    if (!rc && o->use_best && !baked) reset_tunables(tp);
    if (!rc && !baked) rc = bake(tp, w_fp, out);
    if (tp->ep.size > 1) {   /* the exchanges' accounting, where ar-tune reports the ranks' */
        o->reduce->bytes += tp->ep.bytes, o->reduce->seconds += tp->ep.seconds;
        if (tp->ep.bytes > 0) o->reduce->iters += o->iters;   /* iterations of blocks with routed experts */
        tp->ep.bytes = tp->ep.seconds = 0;
    }
    ar_index_sampler_free(&s);
    rep->sec_total = now_s() - t_start;
    return rc;
}
