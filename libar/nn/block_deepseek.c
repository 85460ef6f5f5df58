/* block_deepseek.c — the "deepseek" block family (see block_deepseek.h). */
#include "block_deepseek.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_mla.h"
#include "error.h"
#include "moe.h"
#include "ops.h"
#include "rope_scaling.h"

/* ---- state ---------------------------------------------------------------- */

/* One forward's buffers (exactly B x T; reallocated when the shape changes):
 * x, ln1, ao, h, ln2, dh, dln [BT, C]; rstd1, rstd2 [BT]; cos, sin [T, DR/2];
 * dense g, u, act, dg, du, dact [BT, F]; the MLA and MoE activations. */
typedef struct {
    int B, T, train, moe;
    ar_mla_dims d;
    ar_moe_dims md;
    ar_mla_acts *mla;
    ar_moe_acts moe_acts;
    float *x, *ln1, *ao, *h, *ln2, *dh, *dln, *rstd1, *rstd2, *cos, *sin;
    float *g, *u, *act, *dg, *du, *dact;
    void (*observe)(void *ctx, int linear, const float *x, long rows, int k);
    void *observe_ctx;
    int lin_of[AR_MLA_NLINEAR];   /* description index of each MLA linear, -1 absent */
} ds_state;

static void ds_free(void *p)
{
    ds_state *s = p;
    if (!s) return;
    ar_mla_acts_free(s->mla);
    if (s->moe) ar_moe_acts_free(&s->moe_acts);
    float *f[] = {s->x, s->ln1, s->ao, s->h, s->ln2, s->dh, s->dln, s->rstd1, s->rstd2, s->cos, s->sin,
                  s->g, s->u, s->act, s->dg, s->du, s->dact};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
    free(s);
}

static ds_state *ds_new(const ar_config *c, int moe, int B, int T, int train)
{
    ds_state *s = calloc(1, sizeof *s);
    if (!s) { ar_error("deepseek block: out of memory"); return NULL; }
    s->B = B, s->T = T, s->train = train, s->moe = moe;
    ar_mla_dims_from_config(&s->d, c);
    ar_moe_dims_from_config(&s->md, c);
    size_t BT = (size_t)B * T, C = (size_t)c->hidden, F = (size_t)c->intermediate, half = (size_t)s->d.DR / 2;
    int ok = (s->mla = ar_mla_acts_new(&s->d, B, T)) != NULL;
    float **bc[] = {&s->x, &s->ln1, &s->ao, &s->h, &s->ln2, &s->dh, &s->dln};
    for (size_t i = 0; ok && i < sizeof bc / sizeof *bc; i++) ok = (*bc[i] = malloc(sizeof(float) * BT * C)) != NULL;
    ok = ok && (s->rstd1 = malloc(sizeof(float) * BT)) && (s->rstd2 = malloc(sizeof(float) * BT)) &&
         (s->cos = malloc(sizeof(float) * T * half)) && (s->sin = malloc(sizeof(float) * T * half));
    float **bf[] = {&s->g, &s->u, &s->act, &s->dg, &s->du, &s->dact};
    for (size_t i = 0; ok && !moe && i < sizeof bf / sizeof *bf; i++) ok = (*bf[i] = malloc(sizeof(float) * BT * F)) != NULL;
    if (ok && moe && ar_moe_acts_init(&s->moe_acts, &s->md, (int)BT, train)) { s->moe = 0; ok = 0; }
    if (!ok) { ds_free(s); ar_error("deepseek block: out of memory"); return NULL; }
    ar_rope_config_tables(s->cos, s->sin, c, s->d.DR, T);
    for (int k = 0, i = 0; k < AR_MLA_NLINEAR; k++) {
        int N, K;
        ar_mla_linear_shape(&s->d, k, &N, &K);
        s->lin_of[k] = N ? i++ : -1;
    }
    return s;
}

/* *slot holds a state for this shape and layer kind (w->router: MoE). */
static ds_state *ensure(void **slot, void (**fr)(void *), const ar_config *c, const ar_block_weights *w, int B,
                        int T, int train)
{
    ds_state *s = *slot;
    int moe = w->router != NULL;
    if (s && s->B == B && s->T == T && s->moe == moe && (s->train || !train)) return s;
    ds_free(s);
    *slot = s = ds_new(c, moe, B, T, train);
    *fr = ds_free;
    return s;
}

/* ---- forward --------------------------------------------------------------- */

static const float *mla_input(void *ctx, int linear, const float *x, long rows, int k)
{
    ds_state *s = ctx;
    if (s->observe) s->observe(s->observe_ctx, s->lin_of[linear], x, rows, k);
    return x;
}

static ar_mla_weights mla_weights(const ds_state *s, const ar_block_weights *w)
{
    ar_mla_weights mw = {.q_a_norm = s->d.QL ? w->q_norm : NULL, .kv_a_norm = w->k_norm};
    for (int k = 0; k < AR_MLA_NLINEAR; k++)
        if (s->lin_of[k] >= 0) mw.w[k] = w->w[s->lin_of[k]], mw.b[k] = w->b[s->lin_of[k]];
    return mw;
}

static ar_moe_weights moe_weights(const ds_state *s, const ar_block_weights *w)
{
    int n0 = s->d.QL ? 5 : 4;
    return (ar_moe_weights){.router = w->router, .score_bias = w->score_bias, .w = w->w + n0, .b = w->b + n0};
}

static int run_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, ds_state *s,
                       const ar_block_work *ws)
{
    const int BT = s->B * s->T, C = c->hidden, F = c->intermediate, n0 = s->d.QL ? 5 : 4;
    s->observe = ws->observe, s->observe_ctx = ws->observe_ctx;
    memcpy(s->x, x, sizeof(float) * BT * C);   /* y may equal x */
    ar_rmsnorm_forward(s->ln1, s->rstd1, s->x, w->attn_norm, BT, C, c->rms_eps);
    ar_mla_weights mw = mla_weights(s, w);
    ar_mla_hook hook = {mla_input, s};
    s->mla->gemm = ws->gemm;
    if (ar_mla_forward(s->ao, s->ln1, &mw, &s->d, s->cos, s->sin, s->mla, &hook)) return -1;
    ar_residual_forward(s->h, s->x, s->ao, (long)BT * C);
    ar_rmsnorm_forward(s->ln2, s->rstd2, s->h, w->mlp_norm, BT, C, c->rms_eps);
    if (s->moe) {
        ar_moe_weights ew = moe_weights(s, w);
        s->moe_acts.observe = ws->observe, s->moe_acts.observe_ctx = ws->observe_ctx, s->moe_acts.lin0 = n0;
        s->moe_acts.gemm = ws->gemm, s->moe_acts.ep = ws->moe_ep;
        if (ar_moe_forward(&s->md, &ew, s->ln2, y, BT, &s->moe_acts)) return -1;
    } else {
        if (ws->observe) ws->observe(ws->observe_ctx, n0, s->ln2, BT, C), ws->observe(ws->observe_ctx, n0 + 1, s->ln2, BT, C);
        if (ar_linear_forward_g(ws->gemm, s->g, s->ln2, w->w[n0], NULL, BT, C, F) ||
            ar_linear_forward_g(ws->gemm, s->u, s->ln2, w->w[n0 + 1], NULL, BT, C, F))
            return -1;
        ar_swiglu_forward(s->act, s->g, s->u, (long)BT * F);
        if (ws->observe) ws->observe(ws->observe_ctx, n0 + 2, s->act, BT, F);
        if (ar_linear_forward_g(ws->gemm, y, s->act, w->w[n0 + 2], NULL, BT, F, C)) return -1;
    }
    ar_residual_forward(y, y, s->h, (long)BT * C);
    return 0;
}

int ar_block_deepseek_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                              ar_block_work *ws)
{
    ds_state *s = ensure(&ws->fam, &ws->fam_free, c, w, B, T, 0);
    return s ? run_forward(c, w, x, y, s, ws) : -1;
}

int ar_block_deepseek_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                                    int T, ar_block_work *ws, ar_block_acts *a)
{
    ds_state *s = ensure(&a->fam, &a->fam_free, c, w, B, T, 1);
    if (!s) return -1;
    a->B = B, a->T = T;
    return run_forward(c, w, x, y, s, ws);
}

/* ---- backward ---------------------------------------------------------------- */

int ar_block_deepseek_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                               const float *dy, float *const *dW, float *dx, float *const *dxin, ar_block_work *ws)
{
    ds_state *s = a->fam;
    if (!s || !s->train) return ar_error("deepseek block: no saved activations (run the training forward first)");
    s->mla->gemm = s->moe_acts.gemm = ws->gemm;
    s->moe_acts.ep = ws->moe_ep;
    for (int i = 0; dxin && i < (s->d.QL ? 5 : 4) + 3; i++)
        if (dxin[i]) return ar_error("deepseek block: per-linear input gradients are not supported");
    const int BT = s->B * s->T, C = c->hidden, F = c->intermediate, n0 = s->d.QL ? 5 : 4;
    memcpy(s->dh, dy, sizeof(float) * BT * C);
    memset(s->dln, 0, sizeof(float) * BT * C);
    if (s->moe) {
        ar_moe_weights ew = moe_weights(s, w);
        if (ar_moe_backward(&s->md, &ew, &s->moe_acts, dy, dW ? dW + n0 : NULL, s->dln)) return -1;
    } else {
        memset(s->dact, 0, sizeof(float) * BT * F);
        memset(s->dg, 0, sizeof(float) * BT * F);
        memset(s->du, 0, sizeof(float) * BT * F);
        if (ar_linear_backward_g(ws->gemm, s->dact, dW ? dW[n0 + 2] : NULL, NULL, dy, s->act, w->w[n0 + 2], BT, F, C))
            return -1;
        ar_swiglu_backward(s->dg, s->du, s->dact, s->g, s->u, (long)BT * F);
        if (ar_linear_backward_g(ws->gemm, s->dln, dW ? dW[n0] : NULL, NULL, s->dg, s->ln2, w->w[n0], BT, C, F) ||
            ar_linear_backward_g(ws->gemm, s->dln, dW ? dW[n0 + 1] : NULL, NULL, s->du, s->ln2, w->w[n0 + 1], BT, C,
                                 F))
            return -1;
    }
    ar_rmsnorm_backward(s->dh, NULL, s->dln, s->h, w->mlp_norm, s->rstd2, BT, C);
    ar_mla_weights mw = mla_weights(s, w);
    ar_mla_grads g = {0};
    for (int k = 0; dW && k < AR_MLA_NLINEAR; k++)
        if (s->lin_of[k] >= 0) g.w[k] = dW[s->lin_of[k]];
    memset(s->dln, 0, sizeof(float) * BT * C);
    if (ar_mla_backward(s->dln, &g, s->dh, s->ln1, &mw, &s->d, s->cos, s->sin, s->mla)) return -1;
    if (dx) {
        ar_residual_forward(dx, dx, s->dh, (long)BT * C);
        ar_rmsnorm_backward(dx, NULL, s->dln, s->x, w->attn_norm, s->rstd1, BT, C);
    }
    return 0;
}

int ar_block_deepseek_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq)
{
    (void)ws;
    for (int i = 0; aq && i < 7; i++)   /* the first entries: every layer has at least 7 linears */
        if (aq[i]) return ar_error("activation quantization of DeepSeek blocks is not supported");
    return 0;
}

const float *ar_block_deepseek_acts_input(const ar_block_acts *a, int i)
{
    (void)a, (void)i;
    return NULL;
}
