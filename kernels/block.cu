/* block.cu — one decoder block forward/backward on the device, the same
 * dataflow as libar/nn/block.c:
 *   h = x + o_proj(attn(rope(qknorm(q_proj(n1))), rope(qknorm(k_proj(n1))), v_proj(n1)))
 *   y = h + down(silu(gate(n2)) * up(n2)),   n1 = rmsnorm1(x), n2 = rmsnorm2(h)
 * The work keeps every activation the backward needs (inference uses the
 * same buffers), so training and inference share one forward. With
 * activation quantization (ar_cuda_block_set_act_quant) a quantized linear
 * multiplies by its own copy of its input (quant_act.cuh), in the forward and
 * in its dW GEMM; the saved inputs themselves stay unquantized. */
#include "internal.cuh"
#include "quant_act.cuh"
#include <string.h>

enum { LQ, LK, LV, LO, LGATE, LUP, LDOWN };

struct ar_cuda_block_work {
    int B, T, train;
    int lastB, lastT; /* shape of the last forward, for the backward */
    float *cos_t, *sin_t;
    /* activations, [BT, *] */
    float *x, *ln1, *rstd1, *qpre, *rstdq, *kpre, *rstdk, *q, *k, *v, *att, *ao;
    float *h, *ln2, *rstd2, *gate, *up, *act, *tmp;
    /* gradients (train) */
    float *dh, *dact, *dgate, *dup, *dln, *dao, *dq, *dk, *dv, *dqn, *dkn, *dP;
    void *base; /* one allocation holds everything */
    ar_cuda_fast_work *fast; /* set: the fast path (block_fast.cu) owns all buffers */
    ar_cuda_act_set aq;      /* activation quantizers (both paths) */
    float dw_beta;           /* the running backward's dW GEMMs: 1 adds to dW, 0 writes it */
};

/* Carve the buffers out of one block of memory (base NULL: only count). */
static size_t layout(ar_cuda_block_work *ws, const ar_cuda_shape *s, int B, int T, int train, char *base)
{
    long BT = (long)B * T, C = s->C, F = s->F, QD = (long)s->NH * s->HD, KD = (long)s->NKV * s->HD;
    size_t off = 0;
    auto take = [&](float **p, long n) {
        *p = base ? (float *)(base + off) : NULL;
        off += ((size_t)(n > 0 ? n : 1) * sizeof(float) + 255) & ~(size_t)255;
    };
    take(&ws->cos_t, (long)T * s->HD / 2), take(&ws->sin_t, (long)T * s->HD / 2);
    take(&ws->x, BT * C), take(&ws->ln1, BT * C), take(&ws->rstd1, BT);
    take(&ws->qpre, BT * QD), take(&ws->rstdq, BT * s->NH), take(&ws->kpre, BT * KD);
    take(&ws->rstdk, BT * s->NKV), take(&ws->q, BT * QD), take(&ws->k, BT * KD), take(&ws->v, BT * KD);
    take(&ws->att, (long)B * s->NH * T * T), take(&ws->ao, BT * QD), take(&ws->h, BT * C);
    take(&ws->ln2, BT * C), take(&ws->rstd2, BT), take(&ws->gate, BT * F), take(&ws->up, BT * F);
    take(&ws->act, BT * F), take(&ws->tmp, BT * C);
    if (train) {
        take(&ws->dh, BT * C), take(&ws->dact, BT * F), take(&ws->dgate, BT * F), take(&ws->dup, BT * F);
        take(&ws->dln, BT * C), take(&ws->dao, BT * QD), take(&ws->dq, BT * QD), take(&ws->dk, BT * KD);
        take(&ws->dv, BT * KD), take(&ws->dqn, BT * QD), take(&ws->dkn, BT * KD);
        take(&ws->dP, ar_cuda_attention_backward_scratch(T, s->NH));
    }
    return off;
}

size_t ar_cuda_block_work_bytes(const ar_cuda_shape *s, int B, int T, int train)
{
    if (ar_cuda_fast_eligible(s)) return ar_cuda_fast_work_bytes(s, B, T, train);
    ar_cuda_block_work ws;
    return layout(&ws, s, B, T, train, NULL);
}

ar_cuda_block_work *ar_cuda_block_work_create(const ar_cuda_shape *s, int B, int T, int train,
                                              const float *cos_host, const float *sin_host)
{
    if (B <= 0 || T <= 0 || T > AR_CUDA_MAX_T || s->NH % s->NKV || s->HD % 2) {
        ar_cuda_fail("block work: bad sizes (B %d, T %d, heads %d/%d, head_dim %d)", B, T, s->NH, s->NKV, s->HD);
        return NULL;
    }
    ar_cuda_block_work *ws = (ar_cuda_block_work *)calloc(1, sizeof *ws);
    if (!ws) return NULL;
    if (ar_cuda_fast_eligible(s)) {
        ws->B = B, ws->T = T, ws->train = train;
        if (!(ws->fast = ar_cuda_fast_work_create(s, B, T, train, cos_host, sin_host))) {
            free(ws);
            return NULL;
        }
        return ws;
    }
    size_t bytes = layout(ws, s, B, T, train, NULL);
    ws->base = ar_cuda_malloc(bytes);
    if (!ws->base) {
        free(ws);
        return NULL;
    }
    layout(ws, s, B, T, train, (char *)ws->base);
    ws->B = B, ws->T = T, ws->train = train;
    size_t tb = sizeof(float) * (size_t)T * (s->HD / 2);
    if (ar_cuda_upload(ws->cos_t, cos_host, tb) || ar_cuda_upload(ws->sin_t, sin_host, tb)) {
        ar_cuda_block_work_free(ws);
        return NULL;
    }
    return ws;
}

void ar_cuda_block_work_free(ar_cuda_block_work *ws)
{
    if (!ws) return;
    ar_cuda_act_set_free(&ws->aq);
    ar_cuda_fast_work_free(ws->fast);
    ar_cuda_free(ws->base);
    free(ws);
}

int ar_cuda_block_set_act_quant(const ar_cuda_shape *s, ar_cuda_block_work *ws, const ar_cuda_act *const aq[7])
{
    long C = s->C, F = s->F, QD = (long)s->NH * s->HD;
    const long kin[7] = {C, C, C, QD, C, C, F};
    if (ar_cuda_act_set_install(&ws->aq, aq, kin, (long)ws->B * ws->T, ws->fast != NULL)) return -1;
    if (ws->fast) ar_cuda_fast_attach_act(ws->fast, ws->aq.any ? &ws->aq : NULL);
    return 0;
}

int ar_cuda_block_forward_rows(const ar_cuda_shape *s, const ar_cuda_weights *w, const uint16_t *src, const int *idx,
                               float *y, int B, int T, int train, ar_cuda_block_work *ws)
{
    return ar_cuda_fast_forward_rows(s, w, src, idx, y, B, T, train, ws ? ws->fast : NULL);
}

uint16_t *ar_cuda_block_dy_bf16(ar_cuda_block_work *ws) { return ar_cuda_fast_dy_bf16(ws ? ws->fast : NULL); }

int ar_cuda_block_backward_prepared(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                                    float *const dW[7], float *dx, int dw_write, ar_cuda_block_work *ws)
{
    return ar_cuda_fast_backward_prepared(s, w, dy, dW, dx, dw_write, ws ? ws->fast : NULL);
}

uint16_t *ar_cuda_block_weight_bf16(ar_cuda_block_work *ws, int i, int own)
{
    if (!ws->fast || i < 0 || i >= 7) return NULL;
    return ar_cuda_fast_weight_bf16(ws->fast, i, own);
}

/* Quantize x [rows, k], the input of linears first..last, into their copies
 * (a profile phase of its own only when some linear is quantized). */
static int act_run(ar_cuda_block_work *ws, const char *phase, int first, int last, const float *x, long rows, int k)
{
    if (!ws->aq.any) return 0;
    AR_PROF(phase, 0);
    return ar_cuda_act_set_run(&ws->aq, first, last, x, rows, k);
}

/* What linear i multiplies by, forward and dW: x or its quantized copy. */
static const float *input_of(const ar_cuda_block_work *ws, int i, const float *x)
{
    return (const float *)ar_cuda_act_input(&ws->aq, i, x);
}

static int attn_half(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, int B, int T,
                     ar_cuda_block_work *ws)
{
    int BT = B * T, C = s->C, HD = s->HD, NH = s->NH, NKV = s->NKV, QD = NH * HD, KD = NKV * HD;
    AR_PROF("elem-fwd/rmsnorm1", 0);
    ar_cuda_rmsnorm_forward(ws->ln1, ws->rstd1, x, w->attn_norm, BT, C, s->eps);
    float *qp = w->q_norm ? ws->qpre : ws->q, *kp = w->k_norm ? ws->kpre : ws->k;
    if (act_run(ws, "elem-fwd/act quant q k v", LQ, LV, ws->ln1, BT, C)) return -1;
    AR_PROF("gemm-fwd/q k v", 2.0 * BT * C * (QD + 2 * KD));
    if (ar_cuda_linear_forward(qp, input_of(ws, LQ, ws->ln1), w->w[LQ], w->b[LQ], BT, C, QD) ||
        ar_cuda_linear_forward(kp, input_of(ws, LK, ws->ln1), w->w[LK], w->b[LK], BT, C, KD) ||
        ar_cuda_linear_forward(ws->v, input_of(ws, LV, ws->ln1), w->w[LV], w->b[LV], BT, C, KD))
        return -1;
    AR_PROF("elem-fwd/qk-norm, rope", 0);
    if (w->q_norm) ar_cuda_rmsnorm_forward(ws->q, ws->rstdq, ws->qpre, w->q_norm, BT * NH, HD, s->eps);
    if (w->k_norm) ar_cuda_rmsnorm_forward(ws->k, ws->rstdk, ws->kpre, w->k_norm, BT * NKV, HD, s->eps);
    ar_cuda_rope(ws->q, ws->cos_t, ws->sin_t, B, T, NH, HD, 0);
    ar_cuda_rope(ws->k, ws->cos_t, ws->sin_t, B, T, NKV, HD, 0);
    AR_PROF("attn-fwd/stored probabilities", ar_cuda_attention_flops(B, T, NH, HD, s->window));
    if (ar_cuda_attention_forward(ws->ao, ws->att, ws->q, ws->k, ws->v, B, T, NH, NKV, HD, s->window)) return -1;
    /* o_proj reads its own copy: ao itself is the saved attention output */
    if (act_run(ws, "elem-fwd/act quant o", LO, LO, ws->ao, BT, QD)) return -1;
    AR_PROF("gemm-fwd/o", 2.0 * BT * QD * C);
    if (ar_cuda_linear_forward(ws->h, input_of(ws, LO, ws->ao), w->w[LO], w->b[LO], BT, QD, C)) return -1;
    AR_PROF("elem-fwd/residual", 0);
    ar_cuda_add(ws->h, ws->h, x, (long)BT * C);
    return 0;
}

static int mlp_half(const ar_cuda_shape *s, const ar_cuda_weights *w, float *y, int BT, ar_cuda_block_work *ws)
{
    int C = s->C, F = s->F;
    AR_PROF("elem-fwd/rmsnorm2", 0);
    ar_cuda_rmsnorm_forward(ws->ln2, ws->rstd2, ws->h, w->mlp_norm, BT, C, s->eps);
    if (act_run(ws, "elem-fwd/act quant gate up", LGATE, LUP, ws->ln2, BT, C)) return -1;
    AR_PROF("gemm-fwd/gate up", 4.0 * BT * C * F);
    if (ar_cuda_linear_forward(ws->gate, input_of(ws, LGATE, ws->ln2), w->w[LGATE], w->b[LGATE], BT, C, F) ||
        ar_cuda_linear_forward(ws->up, input_of(ws, LUP, ws->ln2), w->w[LUP], w->b[LUP], BT, C, F))
        return -1;
    AR_PROF("elem-fwd/swiglu", 0);
    ar_cuda_swiglu_forward(ws->act, ws->gate, ws->up, (long)BT * F);
    if (act_run(ws, "elem-fwd/act quant down", LDOWN, LDOWN, ws->act, BT, F)) return -1;
    AR_PROF("gemm-fwd/down", 2.0 * BT * F * C);
    if (ar_cuda_linear_forward(ws->tmp, input_of(ws, LDOWN, ws->act), w->w[LDOWN], w->b[LDOWN], BT, F, C)) return -1;
    AR_PROF("elem-fwd/residual", 0);
    ar_cuda_add(y, ws->h, ws->tmp, (long)BT * C);
    return 0;
}

int ar_cuda_block_forward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, float *y, int B, int T,
                          int train, ar_cuda_block_work *ws)
{
    if (B <= 0 || T <= 0 || T > ws->T || B > ws->B)
        return ar_cuda_fail("block: batch %d x %d exceeds the work's %d x %d", B, T, ws->B, ws->T);
    if (train && !ws->train) return ar_cuda_fail("block: training forward needs a training work");
    if (ws->fast) {
        if (g_cu.gemm != AR_CUDA_GEMM_BF16) return ar_cuda_fail("block: a fast-path work needs bf16 GEMMs");
        return ar_cuda_fast_forward(s, w, x, y, B, T, train, ws->fast);
    }
    /* Keep x for the backward (and so y may alias x). */
    AR_PROF("copy/x into the work", 0);
    if (ar_cuda_copy(ws->x, x, sizeof(float) * (size_t)B * T * s->C)) return -1;
    if (attn_half(s, w, ws->x, B, T, ws) || mlp_half(s, w, y, B * T, ws)) return -1;
    ws->lastB = B, ws->lastT = T;
    return ar_cuda_check_launch("block forward");
}

/* y = a·W (dx of a linear) written, not accumulated: dx [R, K] = dy [R, N] . W [N, K]. */
static int linear_dx(float *dx, const float *dy, const float *W, int R, int K, int N, float beta)
{
    return ar_cuda_sgemm(0, 0, R, K, N, 1.0f, dy, N, W, K, beta, dx, K);
}

/* dW = beta·dW + dyᵀ x when dW is wanted (beta: the backward's ws->dw_beta). */
static int linear_dw(float *dW, const float *dy, const float *x, int R, int K, int N, float beta)
{
    return dW ? ar_cuda_sgemm(1, 0, N, K, R, 1.0f, dy, N, x, K, beta, dW, K) : 0;
}

static int mlp_back(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                    ar_cuda_block_work *ws)
{
    long BT = (long)ws->lastB * ws->lastT;
    int C = s->C, F = s->F;
    size_t fb = sizeof(float) * BT * F;
    AR_PROF("copy/dy -> dh, zero dgate dup", 0);
    if (ar_cuda_copy(ws->dh, dy, sizeof(float) * BT * C) || ar_cuda_zero(ws->dgate, fb) || ar_cuda_zero(ws->dup, fb))
        return -1;
    AR_PROF("gemm-dx+dw/down", 4.0 * BT * F * C);
    if (linear_dx(ws->dact, dy, w->w[LDOWN], BT, F, C, 0.0f) ||
        linear_dw(dW[LDOWN], dy, input_of(ws, LDOWN, ws->act), BT, F, C, ws->dw_beta))
        return -1;
    AR_PROF("elem-bwd/swiglu", 0);
    ar_cuda_swiglu_backward(ws->dgate, ws->dup, ws->dact, ws->gate, ws->up, BT * F);
    AR_PROF("gemm-dx+dw/gate up", 8.0 * BT * F * C);
    if (linear_dx(ws->dln, ws->dgate, w->w[LGATE], BT, C, F, 0.0f) ||
        linear_dw(dW[LGATE], ws->dgate, input_of(ws, LGATE, ws->ln2), BT, C, F, ws->dw_beta) ||
        linear_dx(ws->dln, ws->dup, w->w[LUP], BT, C, F, 1.0f) ||
        linear_dw(dW[LUP], ws->dup, input_of(ws, LUP, ws->ln2), BT, C, F, ws->dw_beta))
        return -1;
    AR_PROF("elem-bwd/rmsnorm2", 0);
    ar_cuda_rmsnorm_backward(ws->dh, ws->dln, ws->h, w->mlp_norm, ws->rstd2, BT, C);
    return 0;
}

/* Through QK-norm when present: returns the gradient at the projection output. */
static const float *qknorm_back(float *dpre, const float *dn, const float *norm, const float *pre,
                                const float *rstd, long rows, int HD)
{
    if (!norm) return dn;
    if (ar_cuda_zero(dpre, sizeof(float) * rows * HD)) return NULL;
    ar_cuda_rmsnorm_backward(dpre, dn, pre, norm, rstd, rows, HD);
    return dpre;
}

static int attn_back(const ar_cuda_shape *s, const ar_cuda_weights *w, float *const dW[7], float *dx,
                     ar_cuda_block_work *ws)
{
    int B = ws->lastB, T = ws->lastT, C = s->C, HD = s->HD, NH = s->NH, NKV = s->NKV;
    int QD = NH * HD, KD = NKV * HD;
    long BT = (long)B * T;
    AR_PROF("gemm-dx+dw/o", 4.0 * BT * QD * C);
    if (linear_dx(ws->dao, ws->dh, w->w[LO], BT, QD, C, 0.0f) ||
        linear_dw(dW[LO], ws->dh, input_of(ws, LO, ws->ao), BT, QD, C, ws->dw_beta) ||
        ar_cuda_zero(ws->dq, sizeof(float) * BT * QD) || ar_cuda_zero(ws->dk, sizeof(float) * BT * KD) ||
        ar_cuda_zero(ws->dv, sizeof(float) * BT * KD))
        return -1;
    AR_PROF("attn-bwd/stored probabilities", 2.0 * ar_cuda_attention_flops(B, T, NH, HD, s->window));
    if (ar_cuda_attention_backward(ws->dq, ws->dk, ws->dv, ws->dP, ws->dao, ws->att, ws->q, ws->k, ws->v, B, T, NH,
                                   NKV, HD))
        return -1;
    AR_PROF("elem-bwd/rope^-1, qk-norm", 0);
    ar_cuda_rope(ws->dq, ws->cos_t, ws->sin_t, B, T, NH, HD, 1);
    ar_cuda_rope(ws->dk, ws->cos_t, ws->sin_t, B, T, NKV, HD, 1);
    const float *dq = qknorm_back(ws->dqn, ws->dq, w->q_norm, ws->qpre, ws->rstdq, BT * NH, HD);
    const float *dk = qknorm_back(ws->dkn, ws->dk, w->k_norm, ws->kpre, ws->rstdk, BT * NKV, HD);
    if (!dq || !dk) return -1;
    AR_PROF("gemm-dw/q k v", 2.0 * BT * C * (QD + 2 * KD));
    if (linear_dw(dW[LQ], dq, input_of(ws, LQ, ws->ln1), BT, C, QD, ws->dw_beta) ||
        linear_dw(dW[LK], dk, input_of(ws, LK, ws->ln1), BT, C, KD, ws->dw_beta) ||
        linear_dw(dW[LV], ws->dv, input_of(ws, LV, ws->ln1), BT, C, KD, ws->dw_beta))
        return -1;
    if (!dx) return 0; /* dL/dn1 only matters on the way to dx */
    AR_PROF("gemm-dx/q k v", 2.0 * BT * C * (QD + 2 * KD));
    if (linear_dx(ws->dln, dq, w->w[LQ], BT, C, QD, 0.0f) || linear_dx(ws->dln, dk, w->w[LK], BT, C, KD, 1.0f) ||
        linear_dx(ws->dln, ws->dv, w->w[LV], BT, C, KD, 1.0f))
        return -1;
    ar_cuda_add(dx, dx, ws->dh, BT * C);
    ar_cuda_rmsnorm_backward(dx, ws->dln, ws->x, w->attn_norm, ws->rstd1, BT, C);
    return 0;
}

/* The backward of both entry points; dw_write: the dW GEMMs write (beta 0). */
static int block_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                          float *dx, int dw_write, ar_cuda_block_work *ws)
{
    if (ws->fast) {
        if (g_cu.gemm != AR_CUDA_GEMM_BF16) return ar_cuda_fail("block: a fast-path work needs bf16 GEMMs");
        return ar_cuda_fast_backward(s, w, dy, dW, dx, dw_write, ws->fast);
    }
    if (!ws->train || !ws->lastB) return ar_cuda_fail("block: backward needs a training forward first");
    ws->dw_beta = dw_write ? 0.0f : 1.0f;
    if (mlp_back(s, w, dy, dW, ws) || attn_back(s, w, dW, dx, ws)) return -1;
    return ar_cuda_check_launch("block backward");
}

int ar_cuda_block_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                           float *dx, ar_cuda_block_work *ws)
{
    return block_backward(s, w, dy, dW, dx, 0, ws);
}

int ar_cuda_block_backward_write_dw(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                                    float *const dW[7], float *dx, ar_cuda_block_work *ws)
{
    return block_backward(s, w, dy, dW, dx, 1, ws);
}
