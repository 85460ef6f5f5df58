/* block_gemma.c — the Gemma 2 / Gemma 3 decoder block, forward and backward
 * (block.h's ar_block_gemma_*; facts from transformers' modeling_gemma2.py and
 * modeling_gemma3.py):
 *
 *   n1 = norm1(x);  q, k, v = q_proj(n1), k_proj(n1), v_proj(n1)
 *   q, k = rope(qknorm(q)), rope(qknorm(k))          (QK-norm: Gemma 3)
 *   a  = o_proj(softmax(mask(cap(scale q k^T))) v)   (cap: Gemma 2's attn_logit_softcapping)
 *   h  = x + postnorm_a(a)
 *   n2 = prenorm_m(h);  m = down(gelu_tanh(gate(n2)) * up(n2))
 *   y  = h + postnorm_m(m)
 *
 * Every RMSNorm scales by (1 + w), formed in f32 once per call into
 * ws->normw (transformers: x * rsqrt(mean(x^2) + eps) * (1 + w.float())).
 * The linears, their inputs (ln1, ao, ln2, act) and activation quantization
 * are Llama's (block.c's helpers), so the description's input groups and
 * ar_block_acts_input hold unchanged. */
#include "block.h"
#include "error.h"
#include "ops.h"

#include <string.h>

/* Effective norm weights 1 + w in ws->normw: [C] each for the four block
 * norms, [HD] each for q/k (NULL entries stay NULL). */
typedef struct { const float *n1, *pa, *n2, *pm, *qn, *kn; } gemma_norms;

static const float *plus_one(float *dst, const float *w, int n)
{
    if (!w) return NULL;
    for (int i = 0; i < n; i++) dst[i] = 1.0f + w[i];
    return dst;
}

static int gemma_norms_init(gemma_norms *g, const ar_config *c, const ar_block_weights *w, ar_block_work *ws)
{
    int C = c->hidden, HD = c->head_dim;
    if (!ws->normw) return ar_error("gemma block: workspace made for another config (no norm buffer)");
    if (!w->attn_norm || !w->mlp_norm || !w->attn_post_norm || !w->mlp_post_norm)
        return ar_error("gemma block: missing one of the four layer norms");
    float *p = ws->normw;
    g->n1 = plus_one(p, w->attn_norm, C);
    g->pa = plus_one(p + C, w->attn_post_norm, C);
    g->n2 = plus_one(p + 2 * C, w->mlp_norm, C);
    g->pm = plus_one(p + 3 * C, w->mlp_post_norm, C);
    g->qn = plus_one(p + 4 * C, w->q_norm, HD);
    g->kn = plus_one(p + 4 * C + HD, w->k_norm, HD);
    return 0;
}

static ar_attn_params attn_params(const ar_config *c)
{
    return (ar_attn_params){(float)c->attn_scale, (float)c->attn_softcap};
}

/* Where one forward keeps its intermediates (block.c's fwd_bufs, plus the
 * sandwich norms' inputs and rstd). */
typedef struct {
    float *ln1, *rstd1, *qpre, *rstdq, *kpre, *rstdk, *q, *k, *v, *att;
    int save_att;
    float *ao, *ao_out, *rstd_ao, *h, *ln2, *rstd2, *gate, *up, *act, *mo, *rstd_mo, *mnorm;
} gfwd;

/* h = x + postnorm_a(o_proj(attn(...))). */
static int attn_half(const ar_config *c, const ar_block_weights *w, const gemma_norms *g, const float *x, int B,
                     int T, ar_block_work *ws, const gfwd *f)
{
    int BT = B * T, C = c->hidden, HD = c->head_dim, NH = c->n_heads, NKV = c->n_kv_heads;
    int QD = NH * HD, KD = NKV * HD;
    float eps = c->rms_eps;
    ar_rmsnorm_forward(f->ln1, f->rstd1, x, g->n1, BT, C, eps);
    const float *in;
    if (!(in = ar_block_forward_input(ws, AR_Q, f->ln1, BT, C))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->qpre, in, w->w[AR_Q], w->b[AR_Q], BT, C, QD)) return -1;
    if (!(in = ar_block_forward_input(ws, AR_K, f->ln1, BT, C))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->kpre, in, w->w[AR_K], w->b[AR_K], BT, C, KD)) return -1;
    if (!(in = ar_block_forward_input(ws, AR_V, f->ln1, BT, C))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->v, in, w->w[AR_V], w->b[AR_V], BT, C, KD)) return -1;
    if (g->qn) ar_rmsnorm_forward(f->q, f->rstdq, f->qpre, g->qn, BT * NH, HD, eps);
    else if (f->q != f->qpre) memcpy(f->q, f->qpre, sizeof(float) * BT * QD);
    if (g->kn) ar_rmsnorm_forward(f->k, f->rstdk, f->kpre, g->kn, BT * NKV, HD, eps);
    else if (f->k != f->kpre) memcpy(f->k, f->kpre, sizeof(float) * BT * KD);
    ar_rope_forward(f->q, ws->cos_t, ws->sin_t, B, T, NH, HD);
    ar_rope_forward(f->k, ws->cos_t, ws->sin_t, B, T, NKV, HD);
    ar_block_kv_cache(ws, f->k, f->v, (long)BT * KD, KD);
    ar_attn_params p = attn_params(c);
    ar_attention_forward_p(f->ao, f->att, f->save_att, f->q, f->k, f->v, B, T, NH, NKV, HD, c->sliding_window, &p);
    if (!(in = ar_block_forward_input(ws, AR_O, f->ao, BT, QD))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->ao_out, in, w->w[AR_O], w->b[AR_O], BT, QD, C)) return -1;
    ar_rmsnorm_forward(f->h, f->rstd_ao, f->ao_out, g->pa, BT, C, eps);
    ar_residual_forward(f->h, f->h, x, (long)BT * C);
    return 0;
}

/* y = h + postnorm_m(down(gelu_tanh(gate(n2)) * up(n2))). */
static int mlp_half(const ar_config *c, const ar_block_weights *w, const gemma_norms *g, float *y, int BT,
                    ar_block_work *ws, const gfwd *f)
{
    int C = c->hidden, F = c->intermediate;
    ar_rmsnorm_forward(f->ln2, f->rstd2, f->h, g->n2, BT, C, c->rms_eps);
    const float *in;
    if (!(in = ar_block_forward_input(ws, AR_GATE, f->ln2, BT, C))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->gate, in, w->w[AR_GATE], w->b[AR_GATE], BT, C, F)) return -1;
    if (!(in = ar_block_forward_input(ws, AR_UP, f->ln2, BT, C))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->up, in, w->w[AR_UP], w->b[AR_UP], BT, C, F)) return -1;
    ar_geglu_tanh_forward(f->act, f->gate, f->up, (long)BT * F);
    if (!(in = ar_block_forward_input(ws, AR_DOWN, f->act, BT, F))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->mo, in, w->w[AR_DOWN], w->b[AR_DOWN], BT, F, C)) return -1;
    ar_rmsnorm_forward(f->mnorm, f->rstd_mo, f->mo, g->pm, BT, C, c->rms_eps);
    ar_residual_forward(y, f->h, f->mnorm, (long)BT * C);
    return 0;
}

static int run(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
               ar_block_work *ws, const gfwd *f)
{
    gemma_norms g;
    if (gemma_norms_init(&g, c, w, ws)) return -1;
    ar_rope_tables(ws->cos_t, ws->sin_t, c, T);   /* the layer's base (Gemma 3 local / global) */
    return attn_half(c, w, &g, x, B, T, ws, f) || mlp_half(c, w, &g, y, B * T, ws, f) ? -1 : 0;
}

int ar_block_gemma_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                           ar_block_work *ws)
{
    if (ar_block_check_fit(B, T, ws->B, ws->T, "workspace")) return -1;
    /* ln serves both norms, then the down output; ao's buffer the o_proj
     * output once attention is done (QD >= C is not given: use h then
     * normalize in place); QK-norm and GeGLU run in place. */
    gfwd f = {.ln1 = ws->ln, .qpre = ws->q, .kpre = ws->k, .q = ws->q, .k = ws->k, .v = ws->v, .att = ws->att,
              .ao = ws->ao, .ao_out = ws->h, .h = ws->h, .ln2 = ws->ln, .gate = ws->gate, .up = ws->up,
              .act = ws->gate, .mo = ws->ln, .mnorm = ws->ln};
    return run(c, w, x, y, B, T, ws, &f);
}

int ar_block_gemma_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                                 int T, ar_block_work *ws, ar_block_acts *a)
{
    if (ar_block_check_fit(B, T, ws->B, ws->T, "workspace") ||
        ar_block_check_fit(B, T, a->cap_B, a->cap_T, "activation"))
        return -1;
    if ((w->q_norm || w->k_norm) && !a->qpre) return ar_error("gemma block: QK-norm weights but activations allocated without");
    if (!a->attn_out) return ar_error("gemma block: activations allocated for another config (no sandwich norms)");
    a->B = B, a->T = T;
    memcpy(a->x, x, sizeof(float) * B * T * c->hidden);
    /* the MLP output is kept before its post-norm (mlp_out), normalized into ws->ln */
    gfwd f = {.ln1 = a->ln1, .rstd1 = a->rstd1, .qpre = w->q_norm ? a->qpre : a->q, .rstdq = a->rstdq,
              .kpre = w->k_norm ? a->kpre : a->k, .rstdk = a->rstdk, .q = a->q, .k = a->k, .v = a->v,
              .att = a->att, .save_att = 1, .ao = a->ao, .ao_out = a->attn_out, .rstd_ao = a->rstd_ao, .h = a->h,
              .ln2 = a->ln2, .rstd2 = a->rstd2, .gate = a->gate, .up = a->up, .act = a->act, .mo = a->mlp_out,
              .rstd_mo = a->rstd_mo, .mnorm = ws->ln};
    return run(c, w, a->x, y, B, T, ws, &f);
}

/* ------------------------------------------------------------- backward */

/* Linear i backward over its saved input x [R, K] (block.c's linear_back:
 * straight-through activation quantization). */
static int linear_back(ar_block_work *ws, int i, float *dx, float *const *dW, float *const *dxin, const float *dy,
                       const float *x, const float *W, long R, int K, int N)
{
    const float *in = x;
    if (dW[i] && !(in = ar_block_linear_input(ws, i, x, R, K))) return -1;
    if (ar_linear_backward_g(ws->gemm, dx, dW[i], NULL, dy, in, W, (int)R, K, N)) return -1;
    if (dxin && dxin[i] && ar_linear_backward_g(ws->gemm, dxin[i], NULL, NULL, dy, in, W, (int)R, K, N))
        return -1;
    return 0;
}

/* MLP half: dW of down/gate/up, and ws->dh = dL/dh. */
static int mlp_back(const ar_config *c, const ar_block_weights *w, const gemma_norms *g, const ar_block_acts *a,
                    const float *dy, float *const *dW, float *const *dxin, ar_block_work *ws)
{
    long BT = (long)a->B * a->T;
    int C = c->hidden, F = c->intermediate;
    memset(ws->dact, 0, sizeof(float) * BT * F);
    memset(ws->dgate, 0, sizeof(float) * BT * F);
    memset(ws->dup, 0, sizeof(float) * BT * F);
    memset(ws->dln, 0, sizeof(float) * BT * C);
    memset(ws->dpost, 0, sizeof(float) * BT * C);
    memcpy(ws->dh, dy, sizeof(float) * BT * C);   /* residual: dh = dy + ... */
    ar_rmsnorm_backward(ws->dpost, NULL, dy, a->mlp_out, g->pm, a->rstd_mo, (int)BT, C);
    if (linear_back(ws, AR_DOWN, ws->dact, dW, dxin, ws->dpost, a->act, w->w[AR_DOWN], BT, F, C)) return -1;
    ar_geglu_tanh_backward(ws->dgate, ws->dup, ws->dact, a->gate, a->up, BT * F);
    if (linear_back(ws, AR_GATE, ws->dln, dW, dxin, ws->dgate, a->ln2, w->w[AR_GATE], BT, C, F) ||
        linear_back(ws, AR_UP, ws->dln, dW, dxin, ws->dup, a->ln2, w->w[AR_UP], BT, C, F))
        return -1;
    ar_rmsnorm_backward(ws->dh, NULL, ws->dln, a->h, g->n2, a->rstd2, (int)BT, C);
    return 0;
}

static const float *qknorm_back(float *dpre, const float *dn, const float *norm, const float *pre,
                                const float *rstd, long rows, int HD)
{
    if (!norm) return dn;
    memset(dpre, 0, sizeof(float) * rows * HD);
    ar_rmsnorm_backward(dpre, NULL, dn, pre, norm, rstd, (int)rows, HD);
    return dpre;
}

/* Attention half: from ws->dh, dW of o/q/k/v and optionally dx. */
static int attn_back(const ar_config *c, const ar_block_weights *w, const gemma_norms *g, const ar_block_acts *a,
                     float *const *dW, float *const *dxin, float *dx, ar_block_work *ws)
{
    int B = a->B, T = a->T, C = c->hidden, HD = c->head_dim, NH = c->n_heads, NKV = c->n_kv_heads;
    int QD = NH * HD, KD = NKV * HD;
    long BT = (long)B * T;
    memset(ws->dao, 0, sizeof(float) * BT * QD);
    memset(ws->dq, 0, sizeof(float) * BT * QD);
    memset(ws->dk, 0, sizeof(float) * BT * KD);
    memset(ws->dv, 0, sizeof(float) * BT * KD);
    memset(ws->dpost, 0, sizeof(float) * BT * C);
    ar_rmsnorm_backward(ws->dpost, NULL, ws->dh, a->attn_out, g->pa, a->rstd_ao, (int)BT, C);
    if (linear_back(ws, AR_O, ws->dao, dW, dxin, ws->dpost, a->ao, w->w[AR_O], BT, QD, C)) return -1;
    ar_attn_params p = attn_params(c);
    ar_attention_backward_p(ws->dq, ws->dk, ws->dv, ws->att, ws->dao, a->att, a->q, a->k, a->v, B, T, NH, NKV, HD, &p);
    ar_rope_backward(ws->dq, ws->cos_t, ws->sin_t, B, T, NH, HD);
    ar_rope_backward(ws->dk, ws->cos_t, ws->sin_t, B, T, NKV, HD);
    const float *dq = qknorm_back(ws->dqn, ws->dq, g->qn, a->qpre, a->rstdq, BT * NH, HD);
    const float *dk = qknorm_back(ws->dkn, ws->dk, g->kn, a->kpre, a->rstdk, BT * NKV, HD);
    float *dln = dx ? ws->dln : NULL;
    if (dln) memset(dln, 0, sizeof(float) * BT * C);
    if (linear_back(ws, AR_Q, dln, dW, dxin, dq, a->ln1, w->w[AR_Q], BT, C, QD) ||
        linear_back(ws, AR_K, dln, dW, dxin, dk, a->ln1, w->w[AR_K], BT, C, KD) ||
        linear_back(ws, AR_V, dln, dW, dxin, ws->dv, a->ln1, w->w[AR_V], BT, C, KD))
        return -1;
    if (dx) {
        ar_residual_backward(dx, NULL, ws->dh, BT * C);
        ar_rmsnorm_backward(dx, NULL, dln, a->x, g->n1, a->rstd1, (int)BT, C);
    }
    return 0;
}

int ar_block_gemma_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                            float *const *dW, float *dx, float *const *dxin, ar_block_work *ws)
{
    if (!ws->train || !ws->dpost) return ar_error("gemma block: backward needs a training workspace for this config");
    if (ar_block_check_fit(a->B, a->T, ws->B, ws->T, "workspace")) return -1;
    gemma_norms g;
    if (gemma_norms_init(&g, c, w, ws)) return -1;
    ar_rope_tables(ws->cos_t, ws->sin_t, c, a->T);
    return mlp_back(c, w, &g, a, dy, dW, dxin, ws) || attn_back(c, w, &g, a, dW, dxin, dx, ws) ? -1 : 0;
}
