/* block_gptoss.c — the "gpt_oss" block family (see block_gptoss.h). */
#include "block_gptoss.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_sinks.h"
#include "error.h"
#include "moe.h"
#include "ops.h"
#include "rope_scaling.h"

/* One forward's buffers for exactly B x T (QD = NH HD, KD = NKV HD):
 * x, ln1, h, ln2, dh, dln [BT, C]; rstd1, rstd2 [BT]; q, ao, dq, dao [BT, QD];
 * k, v, dk, dv [BT, KD]; att [B, NH, T, T] (train); cos, sin [T, HD/2]. */
typedef struct {
    int B, T, train;
    ar_moe_dims md;
    ar_moe_acts moe;
    float *x, *ln1, *h, *ln2, *dh, *dln, *rstd1, *rstd2, *q, *ao, *k, *v, *att, *cos, *sin;
    float *dq, *dao, *dk, *dv;
} gs_state;

static void gs_free(void *p)
{
    gs_state *s = p;
    if (!s) return;
    ar_moe_acts_free(&s->moe);
    float *f[] = {s->x, s->ln1, s->h, s->ln2, s->dh, s->dln, s->rstd1, s->rstd2, s->q, s->ao, s->k, s->v,
                  s->att, s->cos, s->sin, s->dq, s->dao, s->dk, s->dv};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
    free(s);
}

static gs_state *gs_new(const ar_config *c, int B, int T, int train)
{
    gs_state *s = calloc(1, sizeof *s);
    if (!s) { ar_error("gpt-oss block: out of memory"); return NULL; }
    s->B = B, s->T = T, s->train = train;
    ar_moe_dims_from_config(&s->md, c);
    size_t BT = (size_t)B * T, C = c->hidden, QD = (size_t)c->n_heads * c->head_dim,
           KD = (size_t)c->n_kv_heads * c->head_dim;
    struct { float **p; size_t n; } bufs[] = {
        {&s->x, BT * C}, {&s->ln1, BT * C}, {&s->h, BT * C}, {&s->ln2, BT * C}, {&s->dh, BT * C},
        {&s->dln, BT * C}, {&s->rstd1, BT}, {&s->rstd2, BT}, {&s->q, BT * QD}, {&s->ao, BT * QD},
        {&s->k, BT * KD}, {&s->v, BT * KD}, {&s->cos, (size_t)T * c->head_dim / 2},
        {&s->sin, (size_t)T * c->head_dim / 2}, {&s->att, train ? BT * c->n_heads * T : 0},
        {&s->dq, train ? BT * QD : 0}, {&s->dao, train ? BT * QD : 0}, {&s->dk, train ? BT * KD : 0},
        {&s->dv, train ? BT * KD : 0}};
    int ok = 1;
    for (size_t i = 0; ok && i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i].n) ok = (*bufs[i].p = malloc(sizeof(float) * bufs[i].n)) != NULL;
    if (ok && ar_moe_acts_init(&s->moe, &s->md, (int)BT, train)) ok = 0;
    if (!ok) { gs_free(s); ar_error("gpt-oss block: out of memory"); return NULL; }
    ar_rope_config_tables(s->cos, s->sin, c, c->head_dim, T);
    return s;
}

static gs_state *ensure(void **slot, void (**fr)(void *), const ar_config *c, int B, int T, int train)
{
    gs_state *s = *slot;
    if (s && s->B == B && s->T == T && (s->train || !train)) return s;
    gs_free(s);
    *slot = s = gs_new(c, B, T, train);
    *fr = gs_free;
    return s;
}

static ar_moe_weights moe_weights(const ar_block_weights *w)
{
    return (ar_moe_weights){.router = w->router, .router_b = w->router_b, .w = w->w + 4, .b = w->b + 4};
}

static void observe(const ar_block_work *ws, int i, const float *x, long rows, int k)
{
    if (ws->observe) ws->observe(ws->observe_ctx, i, x, rows, k);
}

static int run_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, gs_state *s,
                       const ar_block_work *ws)
{
    const int B = s->B, T = s->T, BT = B * T, C = c->hidden, NH = c->n_heads, NKV = c->n_kv_heads, HD = c->head_dim;
    const int QD = NH * HD, KD = NKV * HD;
    memcpy(s->x, x, sizeof(float) * BT * C);   /* y may equal x */
    ar_rmsnorm_forward(s->ln1, s->rstd1, s->x, w->attn_norm, BT, C, c->rms_eps);
    for (int i = 0; i < 3; i++) observe(ws, i, s->ln1, BT, C);
    if (ar_linear_forward_g(ws->gemm, s->q, s->ln1, w->w[AR_Q], w->b[AR_Q], BT, C, QD)) return -1;
    if (ar_linear_forward_g(ws->gemm, s->k, s->ln1, w->w[AR_K], w->b[AR_K], BT, C, KD)) return -1;
    if (ar_linear_forward_g(ws->gemm, s->v, s->ln1, w->w[AR_V], w->b[AR_V], BT, C, KD)) return -1;
    ar_rope_slice(s->q, s->cos, s->sin, B, T, NH, QD, HD, 0, HD, 0, 1);
    ar_rope_slice(s->k, s->cos, s->sin, B, T, NKV, KD, HD, 0, HD, 0, 1);
    ar_attn_sinks_forward(s->ao, s->att, s->q, s->k, s->v, w->sinks, B, T, NH, NKV, HD, HD, 1.0f / sqrtf((float)HD),
                          c->sliding_window);
    observe(ws, AR_O, s->ao, BT, QD);
    if (ar_linear_forward_g(ws->gemm, s->h, s->ao, w->w[AR_O], w->b[AR_O], BT, QD, C)) return -1;
    ar_residual_forward(s->h, s->h, s->x, (long)BT * C);
    ar_rmsnorm_forward(s->ln2, s->rstd2, s->h, w->mlp_norm, BT, C, c->rms_eps);
    ar_moe_weights mw = moe_weights(w);
    s->moe.observe = ws->observe, s->moe.observe_ctx = ws->observe_ctx, s->moe.lin0 = 4;
    s->moe.gemm = ws->gemm, s->moe.ep = ws->moe_ep;
    if (ar_moe_forward(&s->md, &mw, s->ln2, y, BT, &s->moe)) return -1;
    ar_residual_forward(y, y, s->h, (long)BT * C);
    return 0;
}

int ar_block_gptoss_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                            ar_block_work *ws)
{
    gs_state *s = ensure(&ws->fam, &ws->fam_free, c, B, T, 0);
    return s ? run_forward(c, w, x, y, s, ws) : -1;
}

int ar_block_gptoss_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                                  int T, ar_block_work *ws, ar_block_acts *a)
{
    gs_state *s = ensure(&a->fam, &a->fam_free, c, B, T, 1);
    if (!s) return -1;
    a->B = B, a->T = T;
    return run_forward(c, w, x, y, s, ws);
}

int ar_block_gptoss_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                             const float *dy, float *const *dW, float *dx, float *const *dxin, ar_block_work *ws)
{
    gs_state *s = a->fam;
    if (!s || !s->train) return ar_error("gpt-oss block: no saved activations (run the training forward first)");
    s->moe.gemm = ws->gemm, s->moe.ep = ws->moe_ep;
    for (int i = 0; dxin && i < 4; i++)
        if (dxin[i]) return ar_error("gpt-oss block: per-linear input gradients are not supported");
    const int B = s->B, T = s->T, BT = B * T, C = c->hidden, NH = c->n_heads, NKV = c->n_kv_heads, HD = c->head_dim;
    const int QD = NH * HD, KD = NKV * HD;
    memcpy(s->dh, dy, sizeof(float) * BT * C);
    memset(s->dln, 0, sizeof(float) * BT * C);
    ar_moe_weights mw = moe_weights(w);
    if (ar_moe_backward(&s->md, &mw, &s->moe, dy, dW ? dW + 4 : NULL, s->dln)) return -1;
    ar_rmsnorm_backward(s->dh, NULL, s->dln, s->h, w->mlp_norm, s->rstd2, BT, C);
    memset(s->dao, 0, sizeof(float) * BT * QD);
    if (ar_linear_backward_g(ws->gemm, s->dao, dW ? dW[AR_O] : NULL, NULL, s->dh, s->ao, w->w[AR_O], BT, QD, C))
        return -1;
    memset(s->dq, 0, sizeof(float) * BT * QD);
    memset(s->dk, 0, sizeof(float) * BT * KD);
    memset(s->dv, 0, sizeof(float) * BT * KD);
    ar_attn_sinks_backward(s->dq, s->dk, s->dv, NULL, s->dao, s->att, s->q, s->k, s->v, B, T, NH, NKV, HD, HD,
                           1.0f / sqrtf((float)HD));
    ar_rope_slice(s->dq, s->cos, s->sin, B, T, NH, QD, HD, 0, HD, 0, -1);
    ar_rope_slice(s->dk, s->cos, s->sin, B, T, NKV, KD, HD, 0, HD, 0, -1);
    memset(s->dln, 0, sizeof(float) * BT * C);
    if (ar_linear_backward_g(ws->gemm, s->dln, dW ? dW[AR_Q] : NULL, NULL, s->dq, s->ln1, w->w[AR_Q], BT, C, QD) ||
        ar_linear_backward_g(ws->gemm, s->dln, dW ? dW[AR_K] : NULL, NULL, s->dk, s->ln1, w->w[AR_K], BT, C, KD) ||
        ar_linear_backward_g(ws->gemm, s->dln, dW ? dW[AR_V] : NULL, NULL, s->dv, s->ln1, w->w[AR_V], BT, C, KD))
        return -1;
    if (dx) {
        ar_residual_forward(dx, dx, s->dh, (long)BT * C);
        ar_rmsnorm_backward(dx, NULL, s->dln, s->x, w->attn_norm, s->rstd1, BT, C);
    }
    return 0;
}

int ar_block_gptoss_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq)
{
    (void)ws;
    for (int i = 0; aq && i < 7; i++)
        if (aq[i]) return ar_error("activation quantization of gpt-oss blocks is not supported");
    return 0;
}

const float *ar_block_gptoss_acts_input(const ar_block_acts *a, int i)
{
    (void)a, (void)i;
    return NULL;
}
