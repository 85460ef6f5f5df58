/* tune_block.c — the activation chains and the blocks of int, MX, NV and FP8
 * schemes: RTN, opt-RTN, SignRound and SignRoundV2 (see tune.h). */
#include "device.h"
#include "dtype.h"
#include "error.h"
#include "quant_fp.h"
#include "tune_impl.h"
#include "tuned_stream.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the chains ---------------------------------------------------------- */

/* max |x| over ntok tokens of x [ntok, K] folded into *m. */
static void fold_abs_max(float *m, const float *x, long ntok, int k)
{
    for (long i = 0; i < ntok * k; i++) if (fabsf(x[i]) > *m) *m = fabsf(x[i]);
}

/* Statistics of the linears' inputs gathered by the block's input observer. */
typedef struct {
    float **imat;    /* [AR_NLINEAR] Σx² per input column, entries may be NULL */
    float *amax;     /* [AR_NLINEAR] running max |x|, or NULL */
} input_stats;

static void observe_input(void *ctx, int i, const float *x, long rows, int k)
{
    input_stats *st = ctx;
    if (st->imat && st->imat[i]) ar_imatrix_accumulate(st->imat[i], x, rows, k);
    if (st->amax) fold_abs_max(&st->amax[i], x, rows, k);
}

/* The statistics come from an inference forward's input observer: no
 * attention probabilities or other training state are stored; statistics
 * passes stay on the CPU. */
int tn_forward_all(const tn_run *r, const ar_block_weights *w, const uint16_t *src, uint16_t *dst,
                   float *imat[AR_NLINEAR], float *amax, const ar_block_plan *actq)
{
    const ar_config *c = r->c;
    const int n = r->d->n, T = r->d->T, bs = r->o->batch_size;
    int has_actq = actq && ar_block_plan_has_act_quant(actq);
    if (!imat && !amax && !has_actq && dst && r->dev != AR_DEVICE_CPU)
        return ar_block_forward_samples_cuda(c, w, src, dst, n, T, bs);
    ar_block_work ws;
    if (ar_block_work_init(&ws, c, bs, T, 0)) return -1;
    int rc = -1;
    size_t row = (size_t)T * c->hidden;
    float *x = malloc(sizeof(float) * bs * row), *y = malloc(sizeof(float) * bs * row);
    input_stats st = {imat, amax};
    if (imat || amax) ws.observe = observe_input, ws.observe_ctx = &st;
    if (!x || !y) ar_error("out of memory for a forward batch");
    else if (!has_actq || !ar_block_plan_set_act_quant(actq, &ws)) {
        rc = 0;
        for (int s0 = 0; s0 < n && !rc; s0 += bs) {
            int b = n - s0 < bs ? n - s0 : bs;
            ar_to_f32(x, src + s0 * row, AR_BF16, b * row);
            rc = ar_block_forward(c, w, x, y, b, T, &ws);
            if (!rc && dst) ar_from_f32(dst + s0 * row, y, AR_BF16, b * row);
        }
    }
    free(x); free(y);
    ar_block_work_free(&ws);
    return rc;
}

/* ---- per-layer plan ------------------------------------------------------ */

/* The schemes and quantizer specs of block `layer`'s linears (bf16: the
 * weights are rounded to bf16 as the calibrated model computes). */
static int plan_block(const tn_run *r, int layer, ar_block_plan *plan, ar_scheme schemes[AR_NLINEAR], int bf16)
{
    memset(plan, 0, sizeof *plan);
    for (int i = 0; i < AR_NLINEAR; i++) {
        char name[256];
        int n, k;
        ar_linear_shape(r->c, i, &n, &k);
        snprintf(name, sizeof name, "model.layers.%d.%s", layer, ar_linear_names[i]);
        ar_layer_info info = {0, 0, 0};
        ar_scheme *s = &schemes[i];
        if (ar_scheme_for_layer(&r->o->scheme, r->lc, name, n, k, &info, s)) return -1;
        if (!ar_scheme_quantized(s)) continue;
        int dt = ar_quant_dtype_parse(s->data_type, s->bits);
        if (dt < 0 || s->kind == AR_SCHEME_GGUF)
            return ar_error("%s: scheme %s (%s, %d bits) has no quantizer in ar-tune", name,
                            s->name[0] ? s->name : "custom", s->data_type, s->bits);
        plan->quantize[i] = 1;
        plan->spec[i] = (ar_quant_spec){s->bits, s->group_size, s->sym,
                                        (bf16 ? AR_QF_BF16 : 0) | (s->group_2d ? AR_QF_BLOCK2D : 0), 0, dt,
                                        0, 0, NULL, NULL};
        int aq = ar_act_spec_from_scheme(s, 0, &plan->act[i]);
        if (aq < 0) {
            char where[300];
            snprintf(where, sizeof where, "%s: scheme %s", name, s->name[0] ? s->name : "custom");
            return ar_error_prefix(where);
        }
        plan->act_quant[i] = aq;
    }
    return 0;
}

/* 1 when some planned linear quantizes its input with a calibrated maximum. */
static int plan_needs_act_max(const ar_block_plan *plan, const ar_scheme *schemes)
{
    for (int i = 0; i < AR_NLINEAR; i++)
        if (plan->quantize[i] && plan->act_quant[i] && ar_scheme_act_needs_max(&schemes[i])) return 1;
    return 0;
}

/* Static activation maxima (FP8_STATIC, NVFP4's input global scale) into the
 * plan's activation quantizers, once gathered. */
static int plan_set_act_max(ar_block_plan *plan, const ar_scheme *schemes, const float *act_max)
{
    for (int i = 0; i < AR_NLINEAR; i++)
        if (plan->quantize[i] && plan->act_quant[i] && ar_scheme_act_needs_max(&schemes[i]) &&
            ar_act_spec_from_scheme(&schemes[i], act_max[i], &plan->act[i]) < 0)
            return -1;
    return 0;
}

/* NVFP4 global scales: q/k/v and gate/up share the smallest of theirs (the
 * fused projections vLLM loads need one), as AutoRound does by default. */
static void share_global_scales(const ar_config *c, const ar_block_weights *w, ar_block_plan *plan)
{
    static const int fused[2][3] = {{AR_Q, AR_K, AR_V}, {AR_GATE, AR_UP, -1}};
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i] || plan->spec[i].dtype != AR_QDT_NVFP4) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        plan->spec[i].global_scale = ar_nvfp4_global_scale(w->w[i], (size_t)n * k);
    }
    for (int f = 0; f < 2; f++) {
        float gmin = 0;
        int all = 1;
        for (int j = 0; j < 3 && fused[f][j] >= 0; j++) {
            const ar_quant_spec *qs = &plan->spec[fused[f][j]];
            if (!plan->quantize[fused[f][j]] || qs->dtype != AR_QDT_NVFP4) all = 0;
            else if (gmin == 0 || qs->global_scale < gmin) gmin = qs->global_scale;
        }
        for (int j = 0; all && gmin > 0 && j < 3 && fused[f][j] >= 0; j++) plan->spec[fused[f][j]].global_scale = gmin;
    }
}

int tn_outputs_alloc(ar_quant_out out[AR_NLINEAR], const ar_config *c, const ar_block_plan *plan)
{
    memset(out, 0, sizeof(ar_quant_out) * AR_NLINEAR);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i]) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        out[i].wq = malloc(sizeof(float) * n * k);
        out[i].codes = malloc((size_t)n * k);
        out[i].scale = malloc(sizeof(float) * ng);
        out[i].zp = malloc(sizeof(int32_t) * ng);
        if (!out[i].wq || !out[i].codes || !out[i].scale || !out[i].zp)
            return ar_error("out of memory for layer outputs");
    }
    return 0;
}

void tn_outputs_free(ar_quant_out out[AR_NLINEAR])
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        free(out[i].wq); free(out[i].codes); free(out[i].scale); free(out[i].zp);
    }
    memset(out, 0, sizeof(ar_quant_out) * AR_NLINEAR);
}

/* ---- RTN and SignRound ----------------------------------------------------- */

/* RTN, or with imat opt-RTN for the symmetric layers. */
static int quantize_block_rtn(const tn_run *r, const ar_block_weights *wfp, const ar_block_plan *plan,
                              float *imat[AR_NLINEAR], const ar_quant_out out[AR_NLINEAR])
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i]) continue;
        int n, k;
        ar_linear_shape(r->c, i, &n, &k);
        int rc = imat && plan->spec[i].sym ? ar_quant_opt_rtn(&plan->spec[i], wfp->w[i], n, k, imat[i], &out[i])
                                           : ar_quant_forward(&plan->spec[i], wfp->w[i], n, k, NULL, &out[i]);
        if (rc) return -1;
    }
    return 0;
}

/* enable_lfq: the model's output head for the last block's loss; *head_w
 * gets the head weights to free. The calibration tokens must lie in the
 * vocabulary (they index the logits). */
static int lfq_head(const tn_run *r, ar_lm_head *h, float **head_w)
{
    const ar_config *c = r->c;
    size_t ntok = (size_t)r->d->n * r->d->T;
    for (size_t i = 0; i < ntok; i++)
        if (r->d->ids[i] < 0 || r->d->ids[i] >= c->vocab)
            return ar_error("calibration token id %d is outside the model's vocabulary (%d)", r->d->ids[i], c->vocab);
    float *w = ar_model_read_head(r->m, &h->norm_w);
    if (!w) return -1;
    h->w = w; h->V = c->vocab; h->eps = c->rms_eps; h->ids = r->d->ids; h->kl = r->o->lfq_kl;
    *head_w = w;
    return 0;
}

int tn_signround_block(tn_run *r, int layer, const ar_block_weights *wfp, const ar_block_plan *plan, int minmax,
                       int outlier, const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep)
{
    const ar_config *c = r->c;
    const ar_tune_opts *a = r->o;
    int n = r->d->n, T = r->d->T;
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = a->iters; o.lr = (float)a->lr; o.minmax_lr = (float)a->minmax_lr;
    o.batch_size = a->batch_size; o.grad_accum = a->grad_accum; o.seed = (uint64_t)a->seed + layer;
    o.minmax_tuning = minmax; o.use_best = !a->not_use_best;
    o.outlier_loss = outlier;
    ar_lm_head head = {0};
    float *head_w = NULL;
    if (a->enable_lfq && layer == c->n_layers - 1) {
        if (lfq_head(r, &head, &head_w)) return -1;
        o.lfq = &head;
    }
    tn_iter_ctx ic = {r, layer};
    const uint16_t *xin = r->x_q ? r->x_q : r->x_fp;
    int gpu = r->dev != AR_DEVICE_CPU && ar_signround_cuda_supports(plan) && !o.lfq;
    if (r->dev != AR_DEVICE_CPU && o.lfq) tn_event(r, AR_TUNE_EV_LFQ_ON_CPU, layer, c->n_layers, NULL);
    int rc = (gpu ? ar_signround_tune_block_cuda : ar_signround_tune_block)(c, wfp, xin, r->y, r->mask, n, T, plan,
                                                                           &o, out, rep, tn_on_iter, &ic);
    free(head_w);
    if (rc || a->disable_quanted_input) return rc;
    /* next block's quantized-chain input: the tuned block as AutoRound
     * leaves it, quantized weights and (WrapperWALayer) quantized inputs */
    ar_block_weights wq = *wfp;
    for (int i = 0; i < AR_NLINEAR; i++) if (plan->quantize[i]) wq.w[i] = out[i].wq;
    if (!r->x_q && !(r->x_q = malloc(sizeof(uint16_t) * (size_t)n * T * c->hidden)))
        return ar_error("out of memory for the quantized chain");
    return tn_forward_all(r, &wq, xin, r->x_q, NULL, NULL, plan);
}

/* ---- enable_alg_ext on int / MX / NV schemes (SignRoundV2, spec §5.1(a)) ----
 * Symmetric int layers start from the imatrix-weighted scale search of
 * opt-RTN (the imatrix Σx² of the FP block's inputs, not normalized) as
 * init_scale, MX/NV layers from the multiplier search of ar_quant_fp_search;
 * β in [0, 2] scales it and α is unused; below 4 bits (or 4-bit activations)
 * of the scheme the loss drops the top 0.1 % of errors. Other layers of the
 * plan (asymmetric int, FP8) tune as V1, as AutoRound's V2 wrapper covers
 * only symmetric int/MX/NV. */

/* Layers SignRoundV2 gives searched initial scales (spec §5.1(a)): symmetric
 * int, MXFP and NVFP4 (not FP8, not asymmetric int). */
static int v2_layer(const ar_quant_spec *qs)
{
    return (qs->dtype == AR_QDT_INT && qs->sym) || qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_MXFP8 ||
           qs->dtype == AR_QDT_NVFP4;
}

/* AutoRound decides the loss on the global scheme, not per layer. */
static int v2_outlier_loss(const ar_scheme *def) { return def->bits < 4 || def->act_bits <= 4; }

static int v2_init_scales(const ar_config *c, const ar_block_weights *wfp, ar_block_plan *plan,
                          float *const imat[AR_NLINEAR], float *init[AR_NLINEAR])
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i] || !v2_layer(&plan->spec[i])) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        if (!(init[i] = malloc(sizeof(float) * ng))) return ar_error("out of memory for initial scales");
        int rc = plan->spec[i].dtype == AR_QDT_INT
                     ? ar_quant_search_scales(&plan->spec[i], wfp->w[i], n, k, imat[i], init[i])
                     : ar_quant_fp_search(&plan->spec[i], wfp->w[i], n, k, imat[i], init[i]);
        if (rc) return -1;
        plan->init_scale[i] = init[i];
        plan->spec[i].minmax_hi = 2;
    }
    return 0;
}

/* ---- one block ------------------------------------------------------------- */

/* With data: FP outputs into r->y (with the statistics the plan needs), then
 * SignRound, or RTN / opt-RTN; rep set when SignRound ran. */
static int tune_with_data(tn_run *r, int layer, const ar_block_weights *wfp, ar_block_plan *plan,
                          const ar_scheme schemes[AR_NLINEAR], float act_max[AR_NLINEAR],
                          const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep, int *tuned)
{
    const ar_config *c = r->c;
    const ar_tune_opts *a = r->o;
    int n = r->d->n;
    int opt_rtn = a->iters == 0 && !a->disable_opt_rtn;
    int alg_ext = a->enable_alg_ext && a->iters > 0;
    float *imat[AR_NLINEAR] = {0}, *init[AR_NLINEAR] = {0};
    int rc = -1;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int nn, k;
        ar_linear_shape(c, i, &nn, &k);
        if (plan->quantize[i] && (opt_rtn || (alg_ext && v2_layer(&plan->spec[i]))) &&
            !(imat[i] = calloc(k, sizeof(float)))) {
            ar_error("out of memory for the importance matrix");
            goto done;
        }
    }
    /* Static activation maxima come from the inputs the block is tuned on:
     * the quantized chain's (through the FP block) when SignRound uses it,
     * else the FP chain's (AutoRound's act_max hooks). */
    int need_max = plan_needs_act_max(plan, schemes);
    int q_stats = need_max && a->iters > 0 && !a->disable_quanted_input && r->x_q;
    if (tn_forward_all(r, wfp, r->x_fp, r->y, opt_rtn || alg_ext ? imat : NULL, need_max && !q_stats ? act_max : NULL,
                       NULL) ||
        (q_stats && tn_forward_all(r, wfp, r->x_q, NULL, NULL, act_max, NULL)) ||
        (need_max && plan_set_act_max(plan, schemes, act_max)))
        goto done;
    if (a->iters > 0) {
        if (alg_ext && v2_init_scales(c, wfp, plan, imat, init)) goto done;
        if (tn_signround_block(r, layer, wfp, plan, !a->disable_minmax, alg_ext && v2_outlier_loss(&a->scheme), out,
                               rep))
            goto done;
        *tuned = 1;
    } else {
        for (int i = 0; opt_rtn && i < AR_NLINEAR; i++) {
            int nn, k;
            ar_linear_shape(c, i, &nn, &k);
            if (imat[i]) ar_imatrix_finalize(imat[i], k, n);
        }
        if (quantize_block_rtn(r, wfp, plan, opt_rtn ? imat : NULL, out)) goto done;
    }
    uint16_t *t = r->x_fp; r->x_fp = r->y; r->y = t;  /* FP chain: Y becomes the next input */
    rc = 0;
done:
    for (int i = 0; i < AR_NLINEAR; i++) free(imat[i]), free(init[i]);
    return rc;
}

int tn_block(tn_run *r, int layer, const ar_block_weights *wfp)
{
    const ar_config *c = r->c;
    ar_block_plan plan;
    ar_scheme schemes[AR_NLINEAR];
    ar_quant_out out[AR_NLINEAR];
    float act_max[AR_NLINEAR] = {0};
    ar_signround_report rep;
    int tuned = 0, rc = -1;
    memset(out, 0, sizeof out);
    if (plan_block(r, layer, &plan, schemes, r->d != NULL)) return -1;
    share_global_scales(c, wfp, &plan);
    if (tn_outputs_alloc(out, c, &plan)) goto done;
    if (r->d ? tune_with_data(r, layer, wfp, &plan, schemes, act_max, out, &rep, &tuned)
             : quantize_block_rtn(r, wfp, &plan, NULL, out))
        goto done;
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan.quantize[i]) continue;
        char base[256];
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        snprintf(base, sizeof base, "model.layers.%d.%s", layer, ar_linear_names[i]);
        const float *gs = plan.spec[i].dtype == AR_QDT_NVFP4 ? &plan.spec[i].global_scale : NULL;
        if (ar_tuned_write_linear(r->w, base, &schemes[i], n, k, &out[i], gs, act_max[i])) goto done;
    }
    tn_block_done(r, layer, tuned ? &rep : NULL);
    rc = 0;
done:
    tn_outputs_free(out);
    return rc;
}
