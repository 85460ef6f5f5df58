/* tune_chain.c — what every kind of block shares (see tune_impl.h): progress
 * reports, forwards over the cached samples (the chains), the quantizers'
 * output buffers and SignRound over a block. */
#include "device.h"
#include "signround_cuda.h"
#include "dtype.h"
#include "error.h"
#include "ops.h"
#include "quant_kv.h"
#include "spill.h"
#include "tune_impl.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- progress ------------------------------------------------------------- */

void tn_on_iter(void *ctx, int it, int iters, double loss, double best)
{
    const tn_iter_ctx *ic = ctx;
    const ar_tune_progress *p = ic->r->o->progress;
    if (p && p->iter) p->iter(p->ctx, ic->layer, ic->r->c->n_layers, it, iters, loss, best);
}

void tn_event(const tn_run *r, ar_tune_event ev, int a, int b, const char *text)
{
    const ar_tune_progress *p = r->o->progress;
    if (p && p->event) p->event(p->ctx, ev, a, b, text);
}

void tn_block_done(const tn_run *r, int layer, const ar_signround_report *rep)
{
    const ar_tune_progress *p = r->o->progress;
    if (p && p->block_done) p->block_done(p->ctx, layer, r->c->n_layers, rep);
}

/* ---- the chains ---------------------------------------------------------- */

uint16_t *tn_chain_alloc(const tn_run *r)
{
    size_t bytes = sizeof(uint16_t) * (size_t)r->d->n * r->d->T * r->c->hidden;
    if (r->spill) return ar_spill_alloc(r->o->spill_dir, bytes);
    /* a benchmark's chain forwards leave samples unwritten, which SignRound reads: zeros, as in a spill file */
    uint16_t *p = r->o->bench_chain_samples > 0 ? calloc(1, bytes) : malloc(bytes);
    if (!p) ar_error("out of memory for a calibration chain (%zu MiB)", bytes >> 20);
    return p;
}

void tn_chain_free(void *p)
{
    if (ar_spill_owns(p)) ar_spill_free(p);
    else free(p);
}

/* The training buffers of one sample of T tokens, bytes: what SignRound's
 * forward/backward holds per sample of a chunk, counted for the dense block
 * (block.c's ar_block_acts and training ar_block_work, the mini-batch): per
 * token the saved activations x, ln1, ln2, h (4C), q, ao (2QD), k, v (2KD),
 * gate, up, act (3F); the workspace's ln, h, dln, dh (4C), q, ao, dao, dq,
 * dqn (5QD), k, v, dk, dv, dkn (5KD), gate, up, dact, dgate, dup (5F); the
 * mini-batch's x, y_ref, pred, dy (4C); per sample the attention
 * probabilities NH·T² and the attention backward's scratch. An estimate for
 * other families (their extra norms are a few C per token). */
static double sample_train_bytes(const ar_config *c, int T)
{
    double C = c->hidden, F = c->intermediate, NH = c->n_heads;
    double QD = NH * c->head_dim, KD = (double)c->n_kv_heads * c->head_dim;
    double per_token = 12 * C + 7 * QD + 7 * KD + 8 * F;
    return 4.0 * ((double)T * per_token + NH * T * T + (double)ar_attention_backward_scratch(1, T, c->n_heads,
                                                                                              c->head_dim));
}

int tn_chunk(const tn_run *r)
{
    const ar_tune_opts *o = r->o;
    int bs = o->batch_size < r->d->n ? o->batch_size : r->d->n;
    if (r->dev != AR_DEVICE_CPU) return bs;
    int ch = o->micro_batch;
    if (ch <= 0 && o->mem_budget_mib > 0) {
        double fit = o->mem_budget_mib * 1048576.0 / sample_train_bytes(r->c, r->d->T);
        ch = fit < 1 ? 1 : fit < bs ? (int)fit : bs;
    }
    return ch > 0 && ch < bs ? ch : bs;
}

/* max |x| over ntok tokens of x [ntok, K] folded into *m. */
static void fold_abs_max(float *m, const float *x, long ntok, int k)
{
    for (long i = 0; i < ntok * k; i++) if (fabsf(x[i]) > *m) *m = fabsf(x[i]);
}

/* Statistics of the linears' inputs gathered by the block's input observer.
 * Linears reading one input (block_desc.h) see the same rows, so a group's
 * statistics are gathered once, into its leader's entry when it has one,
 * and copied to the others after the pass (share_stats): equal bytes, as
 * the same sums over the same rows from the same start. */
typedef struct {
    const ar_block_desc *bd;
    float *const *imat; /* [nlinear] Σx² per input column, entries may be NULL */
    float *amax;        /* [nlinear] running max |x|, or NULL */
    long *rows;         /* [nlinear] rows seen per linear, or NULL */
} input_stats;

static void observe_input(void *ctx, int i, const float *x, long rows, int k)
{
    input_stats *st = ctx;
    int g = ar_block_desc_group(st->bd, i);
    if (st->imat && st->imat[i] && (g == i || !st->imat[g])) ar_imatrix_accumulate(st->imat[i], x, rows, k);
    if (st->amax && g == i) fold_abs_max(&st->amax[i], x, rows, k);
    if (st->rows) st->rows[i] += rows;
}

static void share_stats(const input_stats *st)
{
    for (int i = 0; i < st->bd->nlinear; i++) {
        int g = ar_block_desc_group(st->bd, i);
        if (g == i) continue;
        if (st->imat && st->imat[i] && st->imat[g])
            memcpy(st->imat[i], st->imat[g], sizeof(float) * st->bd->lin[i].k_in);
        if (st->amax) st->amax[i] = st->amax[g];
    }
}

/* K/V maxima of a static FP8 KV cache (ar_block_work.observe_kv). */
static void observe_kv(void *ctx, const float *k, const float *v, long rows, int kd)
{
    float *m = ctx;
    ar_kv_amax_fold(&m[0], k, rows * kd);
    ar_kv_amax_fold(&m[1], v, rows * kd);
}

/* The statistics come from an inference forward's input observer: no
 * attention probabilities or other training state are stored; statistics
 * passes stay on the CPU. */
int tn_forward_all(const tn_run *r, const ar_block_weights *w, const uint16_t *src, uint16_t *dst,
                   float *const *imat, float *amax, const ar_block_plan *actq)
{
    const ar_config *c = r->c;
    const int bench = r->o->bench_chain_samples, all = r->d->n, T = r->d->T, bs = tn_chunk(r);
    const int n = bench > 0 && bench < all ? bench : all;   /* a benchmark's shortened pass (tune.h) */
    int has_actq = actq && ar_block_plan_has_act_quant(actq);
    if (!imat && !amax && !r->rows && !has_actq && !r->kv_obs && dst && r->dev != AR_DEVICE_CPU)
        return ar_block_forward_samples_cuda(r->gpu, c, w, src, dst, n, T, bs);
    if (ar_res_host(r->gpu, src)) return -1;   /* the GPU may have written it last */
    tn_bufs *b = r->buf;
    size_t row = (size_t)T * c->hidden;
    if (!b->fws_ready) {
        if (ar_block_work_init(&b->fws, c, bs, T, 0)) return -1;
        b->fws_ready = 1;
    }
    if ((!b->fx && !(b->fx = malloc(sizeof(float) * bs * row))) ||
        (!b->fy && !(b->fy = malloc(sizeof(float) * bs * row))))
        return ar_error("out of memory for a forward batch");
    ar_block_work *ws = &b->fws;
    ws->gemm = r->amp;
    float *x = b->fx, *y = b->fy;
    input_stats st = {&r->bd, imat, amax, r->rows};
    int obs = imat || amax || r->rows;
    ws->observe = obs ? observe_input : NULL;
    ws->observe_ctx = obs ? &st : NULL;
    ws->observe_kv = r->kv_obs ? observe_kv : NULL;
    ws->kv_ctx = r->kv_obs;
    /* expert parallel: this rank's experts, the rows exchanged (no statistics
     * here then: ep_setup refuses the passes that take them) */
    ws->moe_ep = r->ep;
    int rc = 0;
    if (has_actq || b->fws_actq) {   /* this pass's quantizers, or none as in a fresh workspace */
        rc = has_actq ? ar_block_plan_set_act_quant(actq, ws) : r->bd.set_act_quant(ws, NULL);
        b->fws_actq = has_actq && !rc;
    }
    for (int s0 = 0; s0 < n && !rc; s0 += bs) {
        int nb = n - s0 < bs ? n - s0 : bs;
        ar_to_f32(x, src + s0 * row, AR_BF16, nb * row);
        /* a spilled chain keeps in memory only the batch being worked on */
        rc = ar_spill_release((void *)src, sizeof *src * s0 * row, sizeof *src * nb * row);
        if (!rc) rc = r->bd.forward(c, w, x, y, nb, T, ws);
        if (!rc && dst) {
            ar_from_f32(dst + s0 * row, y, AR_BF16, nb * row);
            rc = ar_spill_release(dst, sizeof *dst * s0 * row, sizeof *dst * nb * row);
        }
    }
    ws->observe = NULL, ws->observe_ctx = NULL;   /* st goes with this call */
    ws->observe_kv = NULL, ws->kv_ctx = NULL;
    if (!rc && (imat || amax)) share_stats(&st);
    if (dst) ar_res_host_wrote(r->gpu, dst);
    return rc;
}

/* tn_forward_all's workspace and batch buffers; made again by its next call. */
static void free_forward_bufs(tn_bufs *b)
{
    if (b->fws_ready) ar_block_work_free(&b->fws);
    free(b->fx); free(b->fy);
    b->fws_ready = b->fws_actq = 0;
    b->fx = b->fy = NULL;
}

void tn_bufs_free(tn_bufs *b)
{
    free_forward_bufs(b);
    ar_signround_cache_free(b->sr);
    ar_block_weights_release(&b->wq);
    if (b->plan_ready) {
        ar_block_plan_outputs_free(b->out, &b->plan);
        ar_block_plan_free(&b->plan);
    }
    free(b->schemes); free(b->act_max); free(b->imat); free(b->init); free(b->out_ng);
    memset(b, 0, sizeof *b);
}

/* ---- SignRound --------------------------------------------------------------- */

/* enable_lfq: the model's output head for the last block's loss; *head_w
 * gets the head weights to free. The calibration tokens must lie in the
 * vocabulary (they index the logits). */
static int lfq_head(const tn_run *r, ar_lm_head *h, float **head_w)
{
    const ar_config *c = r->c;
    if (c->final_softcap > 0)   /* the head loss below has no soft-cap */
        return ar_error("enable_lfq: %s's final logit soft-capping is not supported", c->arch_name);
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

/* With a memory budget: the tuner reads the FP weights of the quantized
 * linears from the model, one linear at a time, instead of keeping the
 * block's f32 copy (4 bytes a parameter) through SignRound. */
typedef struct {
    const tn_run *r;
    int layer;
} reload_ctx;

static int reload_weight(void *ctx, int i, float *dst)
{
    const reload_ctx *k = ctx;
    char name[256];
    /* the tensor ar_model_load_block read (model.c), widened the same way */
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", k->layer, k->r->bd.lin[i].name);
    return ar_model_read_tensor(k->r->m, name, 0, k->r->bd.lin[i].n_out, dst);
}

/* Free (drop 1) or allocate again (drop 0, contents undefined: the next
 * ar_model_load_block fills them) the f32 weights of the planned linears of
 * the run's block buffer wfp. 0 or -1. */
static int drop_quantized_weights(const tn_run *r, const ar_block_weights *wfp, const ar_block_plan *plan, int drop)
{
    ar_block_weights *w = (ar_block_weights *)wfp;   /* run_blocks' buffer, lent as const */
    for (int i = 0; i < plan->nlinear; i++) {
        if (!plan->quantize[i] || tn_ep_other(r, i)) continue;
        if (drop) { free(w->w[i]); w->w[i] = NULL; continue; }
        if (!w->w[i] && !(w->w[i] = malloc(sizeof(float) * plan->desc->lin[i].n_out * plan->desc->lin[i].k_in)))
            return ar_error("out of memory for block weights");
    }
    return 0;
}

int tn_signround_block(tn_run *r, int layer, const ar_block_weights *wfp, const ar_block_plan *plan, int minmax,
                       int outlier, const ar_quant_out *out, ar_signround_report *rep)
{
    const ar_config *c = r->c;
    const ar_tune_opts *a = r->o;
    int n = r->d->n, T = r->d->T;
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = a->iters; o.lr = (float)a->lr; o.minmax_lr = (float)a->minmax_lr;
    o.batch_size = a->batch_size; o.grad_accum = a->grad_accum; o.seed = (uint64_t)a->seed + layer;
    o.micro_batch = tn_chunk(r);   /* the batch's activations in chunks: same sums, bounded memory */
    o.dp_chunk = a->dp_chunk; o.reduce = a->reduce; o.expert_parallel = a->expert_parallel;
    o.minmax_tuning = minmax; o.use_best = !a->not_use_best;
    o.outlier_loss = outlier;
    o.gemm = r->amp;
    ar_lm_head head = {0};
    float *head_w = NULL;
    if (a->enable_lfq && layer == c->n_layers - 1) {
        if (lfq_head(r, &head, &head_w)) return -1;
        o.lfq = &head;
    }
    tn_iter_ctx ic = {r, layer};
    input_stats st = {&r->bd, NULL, NULL, r->rows};
    if (r->rows) o.observe = observe_input, o.observe_ctx = &st;  /* rows each expert gets while tuned */
    const uint16_t *xin = r->x_q ? r->x_q : r->x_fp;
    /* the GPU tuner knows the "llama" family's block alone */
    int llama = !strcmp(plan->desc->family, "llama");
    int gpu = r->dev != AR_DEVICE_CPU && llama && ar_signround_cuda_supports(plan) && !o.lfq;
    if (r->dev != AR_DEVICE_CPU && o.lfq) tn_event(r, AR_TUNE_EV_LFQ_ON_CPU, layer, c->n_layers, NULL);
    reload_ctx rk = {r, layer};
    int lean = !gpu && a->mem_budget_mib > 0 && r->m;
    if (lean) {
        o.reload = reload_weight, o.reload_ctx = &rk;
        drop_quantized_weights(r, wfp, plan, 1);
        free_forward_bufs(r->buf);   /* tn_forward_all makes them again for the quantized chain */
    }
    int rc = gpu ? ar_signround_tune_block_cuda_res(r->gpu, c, wfp, xin, r->y, r->mask, n, T, plan, &o, out, rep,
                                                    tn_on_iter, &ic)
             : ar_res_host(r->gpu, xin) || ar_res_host(r->gpu, r->y)
                 ? -1
                 : ar_signround_tune_block_cached(&r->buf->sr, c, wfp, xin, r->y, r->mask, n, T, plan, &o, out, rep,
                                                  tn_on_iter, &ic);
    free(head_w);
    /* MoE: every rank counted the rows of its own chunks */
    if (!rc && r->rows && a->reduce && a->reduce->size > 1) rc = ar_reduce_counts(a->reduce, r->rows, r->bd.nlinear);
    if (lean) {   /* the tuner's state is done with: the quantized chain's forward needs the outputs alone */
        ar_signround_cache_free(r->buf->sr);
        r->buf->sr = NULL;
    }
    if (lean && !rc && a->disable_quanted_input) rc = drop_quantized_weights(r, wfp, plan, 0);
    if (rc || a->disable_quanted_input) return rc;
    /* next block's quantized-chain input: the tuned block as AutoRound
     * leaves it, quantized weights and (WrapperWALayer) quantized inputs */
    ar_block_weights *wq = &r->buf->wq;
    if (!wq->w && ar_block_weights_init(wq, wfp->nlinear)) return -1;
    ar_block_weights_borrow(wq, wfp);
    for (int i = 0; i < plan->nlinear; i++) if (plan->quantize[i]) wq->w[i] = out[i].wq;
    if (!r->x_q && !(r->x_q = tn_chain_alloc(r))) return -1;
    if (a->static_kv_fp8) r->kv_obs = r->kv_amax;
    long *rows = r->rows;   /* the tuning's counts: this forward is not tuning */
    r->rows = NULL;
    int krc = tn_forward_all(r, wq, xin, r->x_q, NULL, NULL, plan);
    r->rows = rows;
    r->kv_obs = NULL;
    if (lean && !krc) krc = drop_quantized_weights(r, wfp, plan, 0);
    return krc;
}
