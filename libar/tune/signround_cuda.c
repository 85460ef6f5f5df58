/* signround_cuda.c — ar_signround_tune_block on the GPU (see device.h and
 * signround.h for the algorithm). The loop is signround.c's, step for step:
 * the same sampler (ar_index_sampler) and seed, quantize → forward/loss/
 * backward per mini-batch with one loss denominator per iteration (GB·T·C) →
 * best snapshot → SignSGD, no step after the last forward; only the numbers
 * move to the device, and the best-iteration decision is taken there too, so
 * an iteration never waits for the GPU. The final codes/scales come from the
 * CPU quantizer. SignRoundV2 (--enable_alg_ext) runs here too: the plan's
 * init_scale goes to the device once per block, and opts.outlier_loss
 * selects the outlier-suppressed loss kernel.
 *
 * With ar_signround_cuda_set_low_mem(1) the cached inputs and references stay
 * in (page-locked) host memory: each mini-batch's samples are copied on a
 * second stream into one of two device slots while the previous mini-batch
 * computes. */
#include "device.h"
#include "signround_cuda.h"
#include "cuda_impl.h"
#include "dtype.h"
#include "error.h"
#include "quant_fp.h"
#include "quant_ggml.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_low_mem;
static int g_fused_step = 1;

void ar_signround_cuda_set_low_mem(int on) { g_low_mem = !!on; }

void ar_signround_cuda_set_fused_step(int on) { g_fused_step = !!on; }

/* 1 when the kernels have spec's quantizer: integer (no 2-D blocks), the FP
 * kinds (any tiling) and GGUF with frozen scales. */
static int kernel_has(const ar_quant_spec *qs)
{
    switch (qs->dtype) {
    case AR_QDT_INT: return !(qs->flags & AR_QF_BLOCK2D);
    case AR_QDT_MXFP4: case AR_QDT_MXFP8: case AR_QDT_NVFP4: case AR_QDT_FP8: case AR_QDT_GGUF: return 1;
    default: return 0;
    }
}

/* 1 when the kernels have the activation quantizer of spec: every kind
 * ar_act_quant handles (kernels/quant_act.cu mirrors its dispatch). */
static int act_kernel_has(const ar_act_spec *as)
{
    return as->bits >= 16 || (as->dtype >= AR_QDT_INT && as->dtype <= AR_QDT_FP8);
}

/* 1 when the kernels take SignRoundV2's init_scale with spec, as the CPU
 * quantizer does: symmetric int and the FP kinds (not GGUF). */
static int init_scale_has(const ar_quant_spec *qs)
{
    return qs->dtype == AR_QDT_INT ? qs->sym : qs->dtype != AR_QDT_GGUF;
}

int ar_signround_cuda_supports(const ar_block_plan *plan)
{
    if (!ar_device_cuda_built()) return 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i]) continue;
        if (!kernel_has(&plan->spec[i])) return 0;
        if (plan->act_quant[i] && !act_kernel_has(&plan->act[i])) return 0;
        if (plan->init_scale[i] && !init_scale_has(&plan->spec[i])) return 0;
    }
    return 1;
}

#ifndef AR_HAVE_CUDA
int ar_signround_tune_block_cuda(const ar_config *c, const ar_block_weights *w_fp, const uint16_t *x_in,
                                 const uint16_t *y_ref, const uint8_t *mask, int n, int T,
                                 const ar_block_plan *plan, const ar_signround_opts *o,
                                 const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                                 ar_signround_progress cb, void *cb_ctx)
{
    (void)c, (void)w_fp, (void)x_in, (void)y_ref, (void)mask, (void)n, (void)T, (void)plan, (void)o;
    (void)out, (void)rep, (void)cb, (void)cb_ctx;
    return ar_error("GPU tuning asked for, but this build has no CUDA");
}

int ar_signround_tune_block_cuda_res(ar_residency *res, const ar_config *c, const ar_block_weights *w_fp,
                                     const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask, int n, int T,
                                     const ar_block_plan *plan, const ar_signround_opts *o,
                                     const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                                     ar_signround_progress cb, void *cb_ctx)
{
    (void)res;
    return ar_signround_tune_block_cuda(c, w_fp, x_in, y_ref, mask, n, T, plan, o, out, rep, cb, cb_ctx);
}

int ar_block_forward_samples_cuda(ar_residency *res, const ar_config *c, const ar_block_weights *w,
                                  const uint16_t *src, uint16_t *dst, int n, int T, int bs)
{
    (void)res, (void)c, (void)w, (void)src, (void)dst, (void)n, (void)T, (void)bs;
    return ar_error("GPU forward asked for, but this build has no CUDA");
}
#else

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The kernels' copy of an activation spec (same fields, same AR_QDT_* kinds). */
static ar_cuda_act act_of(const ar_act_spec *as)
{
    ar_cuda_act a = {as->dtype, as->bits, as->group_size, as->dynamic, as->act_max, as->rceil};
    return a;
}

/* Install the plan's activation quantizers (quantized linears with
 * act_quant, as ar_block_plan_set_act_quant) in the work ws of shape s. */
static int install_act_quant(const ar_block_plan *plan, const ar_cuda_shape *s, ar_cuda_block_work *ws)
{
    ar_cuda_act a[AR_NLINEAR];
    const ar_cuda_act *aq[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) {
        aq[i] = NULL;
        if (!plan->quantize[i] || !plan->act_quant[i]) continue;
        a[i] = act_of(&plan->act[i]);
        aq[i] = &a[i];
    }
    return ar_cuda_block_set_act_quant(s, ws, aq) ? ar_cuda_err("activation quantizers") : 0;
}

/* One quantized linear on the device. */
typedef struct {
    int n, k, ng;
    size_t nel, ngr;
    ar_cuda_qspec q;
    float lr, mlr;
    float *wfp, *wq, *dw, *v, *alpha, *beta, *best_v, *best_alpha, *best_beta;
} glayer;

typedef struct {
    const ar_config *c;
    const ar_block_plan *plan;
    const ar_signround_opts *o;
    ar_cuda_shape shape;
    int T, C, bs, iters;
    glayer L[AR_NLINEAR];
    uint16_t *wb[AR_NLINEAR];   /* fast path: the work's bf16 weights, written here (NULL otherwise) */
    ar_residency *res;          /* the block's device weights (borrowed), the chains' mirrors, the ledger */
    ar_cuda_weights w;          /* the residency's block weights, the quantized linears' swapped for ŵ */
    ar_cuda_block_work *ws;
    uint16_t *x_in, *y_ref;     /* [n, T, C] bf16 on the device (NULL with low_mem) */
    int chains_borrowed;        /* x_in, y_ref are the residency's chain mirrors (not freed here) */
    int low_mem;                /* caches stay on the host, staged per mini-batch */
    const uint16_t *hx, *hy;    /* the host caches (low_mem) */
    int pinned_x, pinned_y;     /* 1 when ar_cuda_pin succeeded on hx / hy */
    uint16_t *slot_x[AR_CUDA_STAGE_SLOTS], *slot_y[AR_CUDA_STAGE_SLOTS]; /* [bs, T, C] bf16 */
    long chunk_no;              /* mini-batches staged so far: slot = chunk_no % slots */
    uint8_t *mask, *mb;         /* [n, T], [bs, T] (mb: NULL on the sample-index route) */
    float *xb, *yb, *pred, *dy; /* xb, yb: f32 samples (NULL where the route reads them in bf16) */
    uint16_t *dyb;              /* the work's bf16 dy: the sample-index route of the fast path, else NULL */
    void *os_scratch;           /* opts.outlier_loss: the loss kernel's scratch, else NULL */
    double *loss_acc, *losses, *best;
    int *best_iter, *flag;
    int fused;                  /* the integer linears step through ar_cuda_quant_step (ar_signround_cuda_set_fused_step) */
    int wq_ahead;               /* 1: the last update_all wrote those linears' ŵ: quantize_all skips them */
    int snap_deferred;          /* 1: snapshot_if_best left their V/α/β copy to the update_all that follows */
} gtuner;

static float layer_lr(const ar_signround_opts *o, int bits)
{
    if (o->lr > 0) return o->lr;
    return (o->iters >= 1000 && bits <= 3 ? 2.0f : 1.0f) / (float)o->iters;
}

static void *dalloc(size_t bytes, int *fail)
{
    void *p = ar_cuda_malloc(bytes);
    if (!p) (*fail)++;
    return p;
}

/* The kernels name the quantizer kinds by libar's AR_QDT_* values. */
_Static_assert((int)AR_CUDA_Q_INT == AR_QDT_INT && (int)AR_CUDA_Q_MXFP4 == AR_QDT_MXFP4 &&
                   (int)AR_CUDA_Q_MXFP8 == AR_QDT_MXFP8 && (int)AR_CUDA_Q_NVFP4 == AR_QDT_NVFP4 &&
                   (int)AR_CUDA_Q_FP8 == AR_QDT_FP8 && (int)AR_CUDA_Q_GGUF == AR_QDT_GGUF,
               "ar_cuda.h's quantizer kinds differ from quant.h's");

/* The kind-specific part of ar_cuda_qspec_make: GGUF's code range and its
 * frozen scales and mins on the device. */
static int qspec_gguf(ar_cuda_qspec *q, const ar_quant_spec *qs, int n, int k)
{
    ar_ggml_grid g;
    if (ar_quant_gguf_check(qs) || ar_ggml_grid_of((ar_ggml_type)qs->ggml_type, &g)) return -1;
    if (n <= 0 || k <= 0 || k % g.group)
        return ar_error("quant: %s weight [%d, %d]: K is not a multiple of the group of %d",
                        ar_ggml_type_name((ar_ggml_type)qs->ggml_type), n, k, g.group);
    /* Q8_0 keeps the symmetric ±127 range (its lowest code is 1), as ar_ggml_fake_quant */
    q->code_lo = (qs->ggml_type == AR_GGML_Q8_0 ? 1 : 0) - g.offset;
    q->code_hi = g.qmax - g.offset;
    size_t ngr = (size_t)n * (size_t)(k / g.group);
    if (!(q->gguf_scale = ar_cuda_upload_f32(qs->gguf_scale, ngr))) return -1;
    if (qs->gguf_min && !(q->gguf_min = ar_cuda_upload_f32(qs->gguf_min, ngr))) return -1;
    return 0;
}

int ar_cuda_qspec_make(ar_cuda_qspec *q, const ar_quant_spec *qs, const float *w, int n, int k)
{
    memset(q, 0, sizeof *q);
    if (!kernel_has(qs)) return ar_error("quant: data type %d has no GPU quantizer", qs->dtype);
    q->bits = qs->bits, q->group_size = qs->group_size, q->sym = qs->sym;
    q->f32_scale = !!(qs->flags & AR_QF_F32_SCALE), q->bf16_out = !!(qs->flags & AR_QF_BF16);
    q->hi = qs->minmax_hi, q->kind = qs->dtype;
    if (qs->dtype == AR_QDT_INT) return 0;
    if (qs->dtype == AR_QDT_GGUF) return qspec_gguf(q, qs, n, k);
    if (ar_quant_fp_check(qs)) return -1;
    q->block2d = !!(qs->flags & AR_QF_BLOCK2D);
    /* the CPU quantizer's own choice: the spec's, else 448·6/max|W| */
    q->global_scale = ar_quant_fp_global_scale(qs, w, n, k);
    if (!(q->scratch = ar_cuda_malloc(ar_cuda_quant_scratch_bytes(q, n, k)))) return ar_cuda_err("quantizer scratch");
    return 0;
}

void ar_cuda_qspec_free(ar_cuda_qspec *q)
{
    ar_cuda_free(q->scratch);
    ar_cuda_free(q->gguf_scale);
    ar_cuda_free(q->gguf_min);
    ar_cuda_free(q->init_scale);
    q->scratch = NULL;
    q->gguf_scale = q->gguf_min = q->init_scale = NULL;
}

/* Bytes of GGUF's frozen scales (and as many of mins) ar_cuda_qspec_make uploads. */
static size_t gguf_scale_bytes(const ar_quant_spec *qs, int n, int k)
{
    ar_ggml_grid g;
    if (qs->dtype != AR_QDT_GGUF || ar_ggml_grid_of((ar_ggml_type)qs->ggml_type, &g) || g.group <= 0) return 0;
    return sizeof(float) * (size_t)n * (size_t)(k / g.group);
}

/* init: the plan's init_scale of this linear [N, ngroups] (host) or NULL:
 * uploaded once for the whole block's tuning. wfp: the linear's FP weight
 * on the device, the residency's (borrowed: glayer_free leaves it). The
 * uploads here are counted in res' ledger as "other". */
static int glayer_init(glayer *L, const ar_config *c, int i, const ar_block_weights *w, const ar_quant_spec *qs,
                       const float *init, const ar_signround_opts *o, float *wfp, ar_residency *res)
{
    int fail = 0;
    memset(L, 0, sizeof *L);
    ar_linear_shape(c, i, &L->n, &L->k);
    L->ng = ar_quant_ngroups(L->k, qs->group_size);
    L->nel = (size_t)L->n * L->k;
    L->ngr = (size_t)L->n * L->ng;
    if (ar_cuda_qspec_make(&L->q, qs, w->w[i], L->n, L->k)) return -1;
    if (L->q.gguf_scale) ar_res_note(res, AR_XFER_OTHER, 0, gguf_scale_bytes(qs, L->n, L->k));
    if (L->q.gguf_min) ar_res_note(res, AR_XFER_OTHER, 0, gguf_scale_bytes(qs, L->n, L->k));
    if (init && !(L->q.init_scale = ar_cuda_upload_f32(init, L->ngr))) return -1;
    if (init) ar_res_note(res, AR_XFER_OTHER, 0, L->ngr * 4);
    L->lr = layer_lr(o, qs->bits);
    L->mlr = o->minmax_lr > 0 ? o->minmax_lr : L->lr;
    if (!(L->wfp = wfp)) return ar_error("signround: linear %d has no weight on the device", i);
    L->wq = dalloc(L->nel * 4, &fail); L->dw = dalloc(L->nel * 4, &fail);
    L->v = dalloc(L->nel * 4, &fail); L->best_v = dalloc(L->nel * 4, &fail);
    float *ones = malloc(L->ngr * 4);
    if (!ones) return ar_error("out of memory");
    for (size_t g = 0; g < L->ngr; g++) ones[g] = 1.0f;
    L->alpha = ar_cuda_upload_f32(ones, L->ngr); L->beta = ar_cuda_upload_f32(ones, L->ngr);
    L->best_alpha = ar_cuda_upload_f32(ones, L->ngr); L->best_beta = ar_cuda_upload_f32(ones, L->ngr);
    for (int u = 0; u < 4; u++) ar_res_note(res, AR_XFER_OTHER, 0, L->ngr * 4);
    free(ones);
    if (fail || !L->alpha || !L->beta || !L->best_alpha || !L->best_beta)
        return ar_cuda_err("tunables of one linear");
    return 0;
}

static void glayer_free(glayer *L)
{
    ar_cuda_qspec_free(&L->q);
    /* wfp is the residency's */
    float *p[] = {L->wq, L->dw, L->v, L->alpha, L->beta, L->best_v, L->best_alpha, L->best_beta};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) ar_cuda_free(p[i]);
}

/* Low-memory mode: page-lock the host caches (asynchronous copies when that
 * works) and allocate the two staging slots of one mini-batch each. */
static int stage_cache(gtuner *t, const uint16_t *x_in, const uint16_t *y_ref, int n)
{
    size_t el = (size_t)n * t->T * t->C, slot = (size_t)t->bs * t->T * t->C;
    int fail = 0;
    t->hx = x_in, t->hy = y_ref;
    t->pinned_x = !ar_cuda_pin(x_in, el * 2);
    t->pinned_y = y_ref != x_in && !ar_cuda_pin(y_ref, el * 2);
    for (int i = 0; i < AR_CUDA_STAGE_SLOTS; i++) {
        t->slot_x[i] = dalloc(slot * 2, &fail);
        t->slot_y[i] = dalloc(slot * 2, &fail);
    }
    return fail ? ar_cuda_err("staging buffers") : 0;
}

/* The caches on the device: the residency's chain mirrors when the chains
 * are resident (no copy when they are current there), else (low_mem) staged
 * per mini-batch from the host or uploaded whole; and the mask (the default
 * one when none is given). */
static int upload_cache(gtuner *t, const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask, int n)
{
    size_t el = (size_t)n * t->T * t->C;
    int fail = 0;
    if (!t->low_mem && t->res && t->res->resident) {
        uint16_t *dx = ar_res_chain(t->res, x_in, el * 2, 1), *dy = dx ? ar_res_chain(t->res, y_ref, el * 2, 1) : NULL;
        if (dx && dy) t->x_in = dx, t->y_ref = dy, t->chains_borrowed = 1;
    }
    /* the routes below read the host arrays */
    if (!t->chains_borrowed && (ar_res_host(t->res, x_in) || ar_res_host(t->res, y_ref))) return -1;
    if (t->chains_borrowed) {
        /* on the device already */
    } else if (t->low_mem) {
        if (stage_cache(t, x_in, y_ref, n)) return -1;
    } else {
        t->x_in = dalloc(el * 2, &fail);
        t->y_ref = dalloc(el * 2, &fail);
    }
    t->mask = dalloc((size_t)n * t->T, &fail);
    if (fail) return ar_cuda_err("activation cache (try a smaller --nsamples or --low_gpu_mem_usage)");
    uint8_t *m = NULL;
    if (!mask) {
        if (!(m = malloc((size_t)n * t->T))) return ar_error("out of memory");
        ar_default_mask(m, n, t->T);
    }
    int whole = !t->low_mem && !t->chains_borrowed;
    int rc = (whole && (ar_cuda_upload(t->x_in, x_in, el * 2) || ar_cuda_upload(t->y_ref, y_ref, el * 2))) ||
             ar_cuda_upload(t->mask, mask ? mask : m, (size_t)n * t->T);
    free(m);
    if (whole) ar_res_note(t->res, AR_XFER_CHAIN, 0, el * 2), ar_res_note(t->res, AR_XFER_CHAIN, 0, el * 2);
    ar_res_note(t->res, AR_XFER_OTHER, 0, (size_t)n * t->T);
    return rc ? ar_cuda_err("cache upload") : 0;
}

/* Fast path: take over the work's bf16 weights, so no forward converts them
 * again: the quantized linears get ŵ written there by quantize_all, the
 * others their fixed weights converted once here. */
static int own_bf16_weights(gtuner *t)
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!(t->wb[i] = ar_cuda_block_weight_bf16(t->ws, i, 1))) continue;
        if (t->plan->quantize[i]) continue;
        int n, k;
        ar_linear_shape(t->c, i, &n, &k);
        ar_cuda_to_bf16(t->wb[i], t->w.w[i], (long)n * k);
    }
    return 0;
}

/* A work for B x T (train: the tuner's), its two RoPE-table uploads counted. */
static ar_cuda_block_work *work_for(ar_residency *res, const ar_config *c, int B, int T, int train)
{
    ar_cuda_block_work *ws = ar_cuda_work_for(c, B, T, train);
    for (int u = 0; ws && u < 2; u++) ar_res_note(res, AR_XFER_OTHER, 0, sizeof(float) * (size_t)T * (c->head_dim / 2));
    return ws;
}

static int gtuner_init(gtuner *t, ar_residency *res, const ar_config *c, const ar_block_weights *w_fp,
                       const ar_block_plan *plan, const ar_signround_opts *o, const uint16_t *x_in,
                       const uint16_t *y_ref, const uint8_t *mask, int n, int T)
{
    memset(t, 0, sizeof *t);
    t->res = res;
    t->c = c; t->plan = plan; t->o = o; t->T = T; t->C = c->hidden;
    t->shape = ar_cuda_shape_of(c);
    t->bs = o->batch_size < n ? o->batch_size : n;
    t->iters = o->iters;
    t->low_mem = g_low_mem;
    t->fused = g_fused_step;
    if (!ar_signround_cuda_supports(plan)) return ar_error("signround: this scheme has no GPU quantizer");
    /* the block's weights as the residency holds them (uploaded at the
     * block's first ask, maybe by the FP chain's forward) */
    const ar_cuda_weights *dw = ar_res_weights(res, w_fp, NULL);
    if (!dw) return -1;
    t->w = *dw;
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i]) continue;
        if (ar_quant_spec_check(&plan->spec[i]) ||
            glayer_init(&t->L[i], c, i, w_fp, &plan->spec[i], plan->init_scale[i], o, dw->w[i], res))
            return -1;
        t->w.w[i] = t->L[i].wq;
    }
    if (!(t->ws = work_for(res, c, t->bs, T, 1)) || own_bf16_weights(t)) return -1;
    if (ar_block_plan_has_act_quant(plan) && install_act_quant(plan, &t->shape, t->ws)) return -1;
    if (upload_cache(t, x_in, y_ref, mask, n)) return -1;
    /* the fast path reads the bf16 samples and references through the
     * sample index: no f32 copies (the outlier loss still wants f32
     * references and a gathered mask) */
    t->dyb = ar_cuda_block_dy_bf16(t->ws);
    size_t rows = (size_t)t->bs * T * t->C;
    int fail = 0, f32_ref = !t->dyb || o->outlier_loss;
    if (!t->dyb) t->xb = dalloc(rows * 4, &fail);
    if (f32_ref) t->yb = dalloc(rows * 4, &fail), t->mb = dalloc((size_t)t->bs * T, &fail);
    t->pred = dalloc(rows * 4, &fail); t->dy = dalloc(rows * 4, &fail);
    t->loss_acc = dalloc(8, &fail); t->best = dalloc(8, &fail);
    t->losses = dalloc(8 * (size_t)(o->iters > 0 ? o->iters : 1), &fail);
    t->best_iter = dalloc(sizeof(int), &fail); t->flag = dalloc(sizeof(int), &fail);
    if (o->outlier_loss) t->os_scratch = dalloc(ar_cuda_outlier_scratch_bytes(), &fail);
    if (fail) return ar_cuda_err("tuning buffers");
    double inf = INFINITY;
    ar_res_note(res, AR_XFER_OTHER, 0, 8);
    return ar_cuda_upload(t->best, &inf, 8) ? ar_cuda_err("cuda") : 0;
}

static void gtuner_free(gtuner *t)
{
    ar_cuda_sync(); /* staged copies may still read the host caches */
    if (t->pinned_x) ar_cuda_unpin(t->hx);
    if (t->pinned_y) ar_cuda_unpin(t->hy);
    for (int i = 0; i < AR_CUDA_STAGE_SLOTS; i++) ar_cuda_free(t->slot_x[i]), ar_cuda_free(t->slot_y[i]);
    for (int i = 0; i < AR_NLINEAR; i++) if (t->plan && t->plan->quantize[i]) glayer_free(&t->L[i]);
    /* t->w's tensors are the residency's, but for the ŵ freed above */
    ar_cuda_block_work_free(t->ws);
    if (t->chains_borrowed) t->x_in = t->y_ref = NULL; /* the residency's mirrors */
    void *p[] = {t->x_in, t->y_ref, t->mask, t->mb, t->xb, t->yb, t->pred, t->dy, t->loss_acc, t->losses, t->best,
                 t->best_iter, t->flag, t->os_scratch};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) ar_cuda_free(p[i]);
}

/* 1 when linear i steps through ar_cuda_quant_step (the integer kind). */
static int fused_layer(const gtuner *t, int i)
{
    return t->fused && t->plan->quantize[i] && t->L[i].q.kind == AR_CUDA_Q_INT;
}

/* Fake-quantize every planned linear with the current tunables: ŵ in f32
 * (the general path's operand), or on the fast path straight into the
 * work's bf16 weight (the integer kind skips the f32 copy). The linears
 * whose ŵ the last update_all already wrote (wq_ahead) are skipped: the same
 * bits. dW needs no clearing: the iteration's first mini-batch writes it
 * (run_batches). */
static int quantize_all(gtuner *t)
{
    int mm = t->o->minmax_tuning, ahead = t->wq_ahead;
    t->wq_ahead = 0;
    ar_cuda_prof_mark(t->wb[0] || t->wb[AR_NLINEAR - 1] ? "quant/fake-quant fwd -> bf16" : "quant/fake-quant fwd", 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!t->plan->quantize[i] || (ahead && fused_layer(t, i))) continue;
        glayer *L = &t->L[i];
        float *wq = t->wb[i] && L->q.kind == AR_CUDA_Q_INT ? NULL : L->wq;
        if (ar_cuda_quant_forward_to(&L->q, L->wfp, L->n, L->k, L->v, mm ? L->alpha : NULL, mm ? L->beta : NULL, wq,
                                     t->wb[i]))
            return ar_cuda_err("quantize");
    }
    return 0;
}

/* Queue the host-to-device copies of samples idx[0..bs) into the next slot
 * (low_mem); returns the slot. */
static int stage_samples(gtuner *t, const int *idx, int bs)
{
    int slot = (int)(t->chunk_no++ % AR_CUDA_STAGE_SLOTS);
    size_t row = (size_t)t->T * t->C;
    if (ar_cuda_stage_begin(slot)) return -1;
    for (int b = 0; b < bs; b++) {
        if (ar_cuda_stage_copy(t->slot_x[slot] + b * row, t->hx + (size_t)idx[b] * row, row * 2) ||
            ar_cuda_stage_copy(t->slot_y[slot] + b * row, t->hy + (size_t)idx[b] * row, row * 2))
            return -1;
        ar_res_note(t->res, AR_XFER_CHAIN, 0, row * 2), ar_res_note(t->res, AR_XFER_CHAIN, 0, row * 2);
    }
    return ar_cuda_stage_end(slot) ? -1 : slot;
}

/* xb, yb (f32) = the bf16 samples idx[0..bs), from the device caches or
 * (low_mem) from the slot staged for them. */
static int load_samples(gtuner *t, const int *idx, int bs, int slot)
{
    long row = (long)t->T * t->C;
    if (!t->low_mem)
        return ar_cuda_gather_bf16(t->xb, t->x_in, idx, bs, row) || ar_cuda_gather_bf16(t->yb, t->y_ref, idx, bs, row);
    if (ar_cuda_stage_acquire(slot)) return -1;
    ar_cuda_from_bf16(t->xb, t->slot_x[slot], bs * row);
    ar_cuda_from_bf16(t->yb, t->slot_y[slot], bs * row);
    return ar_cuda_stage_release(slot);
}

/* yb (f32) = the bf16 references of samples idx[0..bs) (device cache or the
 * staged slot, whose wait the caller did), mb = their masks: the outlier
 * loss' inputs on the sample-index route. */
static int load_refs(gtuner *t, const int *idx, int bs, int slot)
{
    long row = (long)t->T * t->C;
    if (t->low_mem) ar_cuda_from_bf16(t->yb, t->slot_y[slot], bs * row);
    else if (ar_cuda_gather_bf16(t->yb, t->y_ref, idx, bs, row)) return -1;
    return ar_cuda_gather_mask(t->mb, t->mask, idx, bs, t->T);
}

/* One chunk of bs samples idx[0..bs) on the fast path's sample-index route:
 * the forward reads the bf16 inputs (device cache through idx, or the
 * staged slot), the loss the bf16 references and the masks through idx and
 * writes dy in f32 and, into the work, in bf16 (the outlier loss: f32
 * references gathered for its kernel, as before). first: the backward
 * writes dW. Same bits as the f32 route: widening bf16 is exact. */
static int fast_chunk(gtuner *t, const int *idx, int bs, int slot, double nel, int first, float *const dW[])
{
    const uint16_t *xs = t->low_mem ? t->slot_x[slot] : t->x_in, *ys = t->low_mem ? t->slot_y[slot] : t->y_ref;
    const int *si = t->low_mem ? NULL : idx; /* a slot holds the chunk's samples in order */
    if (t->low_mem) {
        ar_cuda_prof_mark("copy/wait for the staged samples", 0);
        if (ar_cuda_stage_acquire(slot)) return -1;
    }
    if (ar_cuda_block_forward_rows(&t->shape, &t->w, xs, si, t->pred, bs, t->T, 1, t->ws)) return -1;
    if (t->os_scratch) {
        ar_cuda_prof_mark("loss/outlier-suppressed mse", 0);
        if (load_refs(t, idx, bs, slot) || (t->low_mem && ar_cuda_stage_release(slot)) ||
            ar_cuda_outlier_mse_denom(t->pred, t->yb, t->mb, (long)bs * t->T, t->C, nel, t->dy, t->loss_acc,
                                      t->os_scratch))
            return -1;
        return first ? ar_cuda_block_backward_write_dw(&t->shape, &t->w, t->dy, dW, NULL, t->ws)
                     : ar_cuda_block_backward(&t->shape, &t->w, t->dy, dW, NULL, t->ws);
    }
    ar_cuda_prof_mark("loss/masked mse <- bf16 ref -> dy f32 + bf16", 0);
    if (ar_cuda_masked_mse_rows(t->pred, ys, si, t->mask, idx, bs, t->T, t->C, nel, t->dy, t->dyb, t->loss_acc) ||
        (t->low_mem && ar_cuda_stage_release(slot)))
        return -1;
    return ar_cuda_block_backward_prepared(&t->shape, &t->w, t->dy, dW, NULL, first, t->ws);
}

/* Forward + loss + backward over the iteration's gb samples in chunks of bs:
 * the first chunk's backward writes the layers' dw, the others add to it, and the loss accumulated on the
 * device is the masked sum of squares over all gb·T·C elements divided by
 * that one count (signround.h, step 3; with opts.outlier_loss each chunk's
 * top 0.1% of |pred − ref| left out, as signround.c). With low_mem the next chunk's copy
 * is queued before this chunk computes. */
static int run_batches(gtuner *t, const int *idx, int gb)
{
    float *dW[AR_NLINEAR] = {0};
    for (int i = 0; i < AR_NLINEAR; i++) dW[i] = t->plan->quantize[i] ? t->L[i].dw : NULL;
    double nel = (double)gb * t->T * t->C;
    int slot = t->low_mem ? stage_samples(t, idx, gb < t->bs ? gb : t->bs) : 0;
    for (int off = 0; off < gb; off += t->bs) {
        int bs = gb - off < t->bs ? gb - off : t->bs, next = off + t->bs, cur = slot;
        long rows = (long)bs * t->T;
        if (cur < 0) return ar_cuda_err("staging");
        if (t->low_mem && next < gb)
            slot = stage_samples(t, idx + next, gb - next < t->bs ? gb - next : t->bs);
        if (t->dyb) {
            if (fast_chunk(t, idx + off, bs, cur, nel, off == 0, dW)) return ar_cuda_err("tuning step");
            continue;
        }
        ar_cuda_prof_mark("copy/samples -> f32, mask", 0);
        if (load_samples(t, idx + off, bs, cur) || ar_cuda_gather_mask(t->mb, t->mask, idx + off, bs, t->T) ||
            ar_cuda_block_forward(&t->shape, &t->w, t->xb, t->pred, bs, t->T, 1, t->ws))
            return ar_cuda_err("tuning step");
        ar_cuda_prof_mark(t->os_scratch ? "loss/outlier-suppressed mse" : "loss/masked mse", 0);
        /* the first chunk writes dW (beta 0), the later ones add to it */
        if ((t->os_scratch ? ar_cuda_outlier_mse_denom(t->pred, t->yb, t->mb, rows, t->C, nel, t->dy, t->loss_acc,
                                                       t->os_scratch)
                           : ar_cuda_masked_mse_denom(t->pred, t->yb, t->mb, rows, t->C, nel, t->dy, t->loss_acc)) ||
            (off == 0 ? ar_cuda_block_backward_write_dw(&t->shape, &t->w, t->dy, dW, NULL, t->ws)
                      : ar_cuda_block_backward(&t->shape, &t->w, t->dy, dW, NULL, t->ws)))
            return ar_cuda_err("tuning step");
    }
    return 0;
}

/* Snapshot the tunables when this iteration's loss is the best so far (the
 * decision is on the device: flag). The loss is already divided by GB·T·C.
 * When a step follows (every iteration but the last, as the loop in
 * ar_signround_tune_block_cuda runs update_all), the fused linears' copy is
 * left to that step, which reads their tunables anyway. */
static int snapshot_if_best(gtuner *t, int it)
{
    ar_cuda_prof_mark("quant/best-loss snapshot", 0);
    if (ar_cuda_track_best(t->loss_acc, 1, it, t->losses, t->best, t->best_iter, t->flag))
        return ar_cuda_err("best");
    ar_cuda_copy_seg seg[3 * AR_NLINEAR];
    int ns = 0;
    t->snap_deferred = it + 1 < t->iters;
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!t->plan->quantize[i] || (t->snap_deferred && fused_layer(t, i))) continue;
        glayer *L = &t->L[i];
        seg[ns++] = (ar_cuda_copy_seg){L->best_v, L->v, (long)L->nel};
        seg[ns++] = (ar_cuda_copy_seg){L->best_alpha, L->alpha, (long)L->ngr};
        seg[ns++] = (ar_cuda_copy_seg){L->best_beta, L->beta, (long)L->ngr};
    }
    /* one launch for every tunable of the block */
    return ns && ar_cuda_copy_if_many(seg, ns, t->flag) ? ar_cuda_err("snapshot") : 0;
}

/* The fused step's segment of linear i: V, α, β stepped at lr scale f, ŵ
 * for the next forward where quantize_all would write it, and the
 * snapshot the step owes when snap. Without min-max tuning α and β stay
 * the ones the snapshot already holds. */
static ar_cuda_qstep_seg step_seg(const gtuner *t, int i, float f, int snap)
{
    const glayer *L = &t->L[i];
    int mm = t->o->minmax_tuning;
    ar_cuda_qstep_seg s;
    memset(&s, 0, sizeof s);
    s.q = L->q, s.w = L->wfp, s.dwq = L->dw, s.v = L->v;
    s.alpha = mm ? L->alpha : NULL, s.beta = mm ? L->beta : NULL;
    s.wq = t->wb[i] ? NULL : L->wq, s.wqb = t->wb[i];
    if (snap) s.best_v = L->best_v, s.best_alpha = L->best_alpha, s.best_beta = L->best_beta;
    s.n = L->n, s.k = L->k, s.lr = L->lr * f, s.mlr = L->mlr * f;
    return s;
}

/* STE backward fused with one SignSGD step at lr scale f: the integer
 * linears in one ar_cuda_quant_step launch that also writes the next
 * iteration's ŵ (and the deferred snapshot), the other kinds one
 * ar_cuda_quant_signsgd each. */
static int update_all(gtuner *t, float f)
{
    int mm = t->o->minmax_tuning, ns = 0, snap = t->snap_deferred, nf = 0;
    ar_cuda_qstep_seg seg[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) nf += fused_layer(t, i);
    ar_cuda_prof_mark(nf ? "quant/STE bwd + sign-SGD + next fwd" : "quant/STE bwd + sign-SGD", 0);
    t->snap_deferred = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!t->plan->quantize[i]) continue;
        glayer *L = &t->L[i];
        if (fused_layer(t, i)) {
            seg[ns++] = step_seg(t, i, f, snap);
            continue;
        }
        if (ar_cuda_quant_signsgd(&L->q, L->wfp, L->n, L->k, L->v, mm ? L->alpha : NULL, mm ? L->beta : NULL, L->dw,
                                  L->lr * f, L->mlr * f))
            return ar_cuda_err("signsgd");
    }
    if (ns && ar_cuda_quant_step(seg, ns, snap ? t->flag : NULL)) return ar_cuda_err("quant step");
    t->wq_ahead = ns > 0;
    return 0;
}

/* Download the chosen tunables and quantize on the CPU into out. */
static int finish(gtuner *t, const ar_block_weights *w_fp, const ar_quant_out out[AR_NLINEAR])
{
    int best = t->o->use_best, mm = t->o->minmax_tuning, rc = 0;
    for (int i = 0; !rc && i < AR_NLINEAR; i++) {
        if (!t->plan->quantize[i]) continue;
        glayer *L = &t->L[i];
        float *v = malloc(L->nel * 4), *al = malloc(L->ngr * 4), *be = malloc(L->ngr * 4);
        if (!v || !al || !be) rc = ar_error("out of memory");
        else if (ar_cuda_download(v, best ? L->best_v : L->v, L->nel * 4) ||
                 ar_cuda_download(al, best ? L->best_alpha : L->alpha, L->ngr * 4) ||
                 ar_cuda_download(be, best ? L->best_beta : L->beta, L->ngr * 4))
            rc = ar_cuda_err("download tunables");
        else {
            ar_res_note(t->res, AR_XFER_OTHER, 1, L->nel * 4);
            ar_res_note(t->res, AR_XFER_OTHER, 1, L->ngr * 4), ar_res_note(t->res, AR_XFER_OTHER, 1, L->ngr * 4);
            ar_quant_params p = {v, mm ? al : NULL, mm ? be : NULL, t->plan->init_scale[i]};
            rc = ar_quant_forward(&t->plan->spec[i], w_fp->w[i], L->n, L->k, &p, &out[i]);
        }
        free(v); free(al); free(be);
    }
    return rc;
}

/* Losses of every iteration back on the host: report and progress calls. */
static int report_losses(gtuner *t, ar_signround_report *rep, ar_signround_progress cb, void *cb_ctx)
{
    int iters = t->iters;
    rep->best_loss = INFINITY;
    if (iters <= 0) return 0;
    double *l = malloc(sizeof(double) * iters);
    if (!l) return ar_error("out of memory");
    if (ar_cuda_download(l, t->losses, sizeof(double) * iters)) { free(l); return ar_cuda_err("losses"); }
    ar_res_note(t->res, AR_XFER_OTHER, 1, sizeof(double) * iters);
    rep->loss0 = l[0];
    for (int it = 0; it < iters; it++) {
        if (l[it] < rep->best_loss) rep->best_loss = l[it], rep->best_iter = it;
        if (cb) cb(cb_ctx, it, iters, l[it], rep->best_loss);
    }
    /* use_best = 0 returns the last forward's parameters: report its loss */
    if (!t->o->use_best) rep->best_loss = l[iters - 1], rep->best_iter = iters - 1;
    free(l);
    return 0;
}

int ar_signround_tune_block_cuda_res(ar_residency *res, const ar_config *c, const ar_block_weights *w_fp,
                                     const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask, int n, int T,
                                     const ar_block_plan *plan, const ar_signround_opts *o,
                                     const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                                     ar_signround_progress cb, void *cb_ctx)
{
    ar_signround_report spare;
    int gb = ar_signround_begin(n, T, o, &rep, &spare);
    if (gb < 0) return -1;
    if (o->lfq) return ar_error("signround: the LFQ loss runs on the CPU tuner only");
    ar_residency *own = NULL;
    if (!res) {
        /* a block alone: its own residency, streaming (the caches are copied as before) */
        int bs = o->batch_size < n ? o->batch_size : n;
        if (!(res = own = ar_gpu_residency_open(c, n, T, bs > 0 ? bs : 1, 2, -1.0, 0))) return -1;
    }
    double t_start = now_s(), iter_ms = 0;
    gtuner t;
    int rc = gtuner_init(&t, res, c, w_fp, plan, o, x_in, y_ref, mask, n, T);
    ar_index_sampler s = {0};
    if (!rc) rc = ar_index_sampler_init(&s, n, o->seed);
    for (int it = 0; !rc && it < o->iters; it++) {
        ar_cuda_prof_iteration();
        /* Timed: iterations 1 .. iters-2, each with its update (the first
         * warms up workspaces and cuBLAS; the last takes no step). */
        if (o->iters >= 3 && it == 1 && ar_cuda_watch_start()) rc = ar_cuda_err("timer");
        if (!rc && o->iters >= 3 && it == o->iters - 1) {
            double ms;
            if (ar_cuda_watch_ms(&ms)) rc = ar_cuda_err("timer");
            else iter_ms = ms / (o->iters - 2);
        }
        const int *idx = ar_index_sampler_next(&s, gb);
        if (!rc) rc = quantize_all(&t);
        if (!rc) rc = run_batches(&t, idx, gb);
        if (!rc) rc = snapshot_if_best(&t, it);
        /* No step after the last forward: nothing would read its result, and
         * use_best = 0 must return the parameters of that forward. */
        if (!rc && it + 1 < o->iters) rc = update_all(&t, 1.0f - (float)it / (float)o->iters);
    }
    ar_cuda_prof_mark(NULL, 0); /* the profile ends with the iterations */
    if (!rc && ar_cuda_sync()) rc = ar_cuda_err("tuning");
    if (!rc) rc = report_losses(&t, rep, cb, cb_ctx);
    if (!rc) rc = finish(&t, w_fp, out);
    ar_index_sampler_free(&s);
    gtuner_free(&t);
    ar_gpu_residency_close(own);
    rep->sec_total = now_s() - t_start;
    rep->ms_per_iter = iter_ms;
    return rc;
}

int ar_signround_tune_block_cuda(const ar_config *c, const ar_block_weights *w_fp, const uint16_t *x_in,
                                 const uint16_t *y_ref, const uint8_t *mask, int n, int T,
                                 const ar_block_plan *plan, const ar_signround_opts *o,
                                 const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                                 ar_signround_progress cb, void *cb_ctx)
{
    return ar_signround_tune_block_cuda_res(NULL, c, w_fp, x_in, y_ref, mask, n, T, plan, o, out, rep, cb, cb_ctx);
}

/* The device weights of w for a forward: the residency's block weights,
 * with the linears whose host tensor differs from the uploaded one (the
 * quantized chain's tuned weights) uploaded into tuned[] (freed by the
 * caller) and swapped in. 0 or -1. */
static int forward_weights(ar_residency *res, const ar_config *c, const ar_block_weights *w, ar_cuda_weights *dw,
                           float *tuned[AR_NLINEAR])
{
    int differs[AR_NLINEAR];
    const ar_cuda_weights *base = ar_res_weights(res, w, differs);
    if (!base) return -1;
    *dw = *base;
    for (int i = 0; i < AR_NLINEAR; i++) {
        tuned[i] = NULL;
        if (!differs[i] || !w->w[i]) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        if (!(tuned[i] = ar_cuda_upload_f32(w->w[i], (size_t)n * k))) return -1;
        ar_res_note(res, AR_XFER_TUNED, 0, sizeof(float) * (size_t)n * k);
        dw->w[i] = tuned[i];
    }
    return 0;
}

int ar_block_forward_samples_cuda(ar_residency *res, const ar_config *c, const ar_block_weights *w,
                                  const uint16_t *src, uint16_t *dst, int n, int T, int bs)
{
    if (n <= 0 || T <= 0 || bs <= 0) return ar_error("block forward: bad sizes (n %d, T %d, batch %d)", n, T, bs);
    if (bs > n) bs = n;
    ar_residency *own = NULL;
    if (!res && !(res = own = ar_gpu_residency_open(c, n, T, bs, 2, -1.0, 0))) return -1;
    size_t row = (size_t)T * c->hidden, el = row * n;
    /* resident chains: read and write the mirrors (src may be dst: each
     * batch reads its rows before writing them); else batches through the
     * host arrays (page-locked by the residency) */
    uint16_t *dsrc = ar_res_chain(res, src, el * 2, 1), *ddst = ar_res_chain(res, dst, el * 2, 0);
    int resident = dsrc && ddst;
    if (!resident && ar_res_host(res, src)) { ar_gpu_residency_close(own); return -1; }
    ar_cuda_weights dw;
    float *tuned[AR_NLINEAR] = {0};
    int rc = forward_weights(res, c, w, &dw, tuned);
    /* The chains are references: f32 like the CPU (set before the work is
     * made, so it is never a bf16 fast-path work). */
    int mode = ar_cuda_get_gemm();
    ar_cuda_set_gemm(AR_CUDA_GEMM_F32);
    ar_cuda_block_work *ws = rc ? NULL : work_for(res, c, bs, T, 0);
    uint16_t *h = resident || rc ? NULL : ar_cuda_malloc(row * bs * 2);
    float *x = rc ? NULL : ar_cuda_malloc(row * bs * 4);
    ar_cuda_shape s = ar_cuda_shape_of(c);
    if (!rc && (!ws || !x || (!resident && !h))) rc = ar_cuda_err("block forward buffers");
    for (int s0 = 0; !rc && s0 < n; s0 += bs) {
        int b = n - s0 < bs ? n - s0 : bs;
        const uint16_t *in = resident ? dsrc + s0 * row : h;
        uint16_t *out = resident ? ddst + s0 * row : h;
        if (!resident) {
            if (ar_cuda_upload(h, src + s0 * row, b * row * 2)) { rc = ar_cuda_err("upload"); break; }
            ar_res_note(res, AR_XFER_CHAIN, 0, b * row * 2);
        }
        ar_cuda_from_bf16(x, in, (long)(b * row));
        if (ar_cuda_block_forward(&s, &dw, x, x, b, T, 0, ws)) { rc = ar_cuda_err("block forward"); break; }
        ar_cuda_to_bf16(out, x, (long)(b * row));
        if (!resident) {
            if (ar_cuda_download(dst + s0 * row, h, b * row * 2)) rc = ar_cuda_err("download");
            else ar_res_note(res, AR_XFER_CHAIN, 1, b * row * 2);
        }
    }
    if (resident) {
        /* the host sees the result only through ar_res_host */
        if (!rc && ar_cuda_sync()) rc = ar_cuda_err("block forward");
        if (!rc) ar_res_dev_wrote(res, dst);
    } else if (!rc) ar_res_host_wrote(res, dst);
    ar_cuda_set_gemm(mode);
    ar_cuda_free(h);
    ar_cuda_free(x);
    ar_cuda_block_work_free(ws);
    for (int i = 0; i < AR_NLINEAR; i++) ar_cuda_free(tuned[i]);
    ar_gpu_residency_close(own);
    return rc;
}
#endif
