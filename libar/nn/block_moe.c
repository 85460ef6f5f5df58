/* block_moe.c — the "moe" block family (see block_moe.h). */
#include "block_moe.h"
#include "error.h"
#include "moe.h"
#include "ops.h"

#include <stdlib.h>
#include <string.h>

/* The layer's weights as moe.h takes them: the linears after the attention's four. */
static ar_moe_weights moe_weights(const ar_block_weights *w)
{
    return (ar_moe_weights){.router = w->router, .router_b = w->router_b, .score_bias = w->score_bias,
                            .shared_gate = w->shared_gate, .w = w->w + AR_GATE, .b = w->b + AR_GATE};
}

/* *slot holds MoE activations for at least rows rows (train: with the
 * backward's buffers), allocated now if not. */
static int ensure_moe(ar_moe_acts **slot, const ar_moe_dims *d, int rows, int train)
{
    if (*slot && (*slot)->cap >= rows && (!train || (*slot)->deo)) return 0;
    if (*slot) ar_moe_acts_free(*slot);
    else if (!(*slot = malloc(sizeof **slot))) return ar_error("moe: out of memory");
    if (ar_moe_acts_init(*slot, d, rows, train)) { free(*slot); *slot = NULL; return -1; }
    return 0;
}

/* y = h + moe(rmsnorm2(h)); ln2, rstd2 (may be NULL) receive the norm. */
static int moe_half(const ar_config *c, const ar_block_weights *w, const float *h, float *ln2, float *rstd2,
                    float *y, int BT, ar_block_work *ws, ar_moe_acts *a)
{
    ar_moe_dims d;
    ar_moe_dims_from_config(&d, c);
    ar_moe_weights mw = moe_weights(w);
    ar_rmsnorm_forward(ln2, rstd2, h, w->mlp_norm, BT, c->hidden, c->rms_eps);
    a->observe = ws->observe, a->observe_ctx = ws->observe_ctx, a->lin0 = AR_GATE;
    a->gemm = ws->gemm, a->ep = ws->moe_ep;
    if (ar_moe_forward(&d, &mw, ln2, y, BT, a)) return -1;
    ar_residual_forward(y, y, h, (long)BT * c->hidden);
    return 0;
}

int ar_block_moe_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                         ar_block_work *ws)
{
    ar_moe_dims d;
    ar_moe_dims_from_config(&d, c);
    if (ensure_moe(&ws->moe, &d, ws->B * ws->T, 0)) return -1;
    /* x is last read by the attention half, so y may equal x; ws->ln holds n2 */
    if (ar_block_attn_forward(c, w, x, B, T, ws, NULL)) return -1;
    return moe_half(c, w, ws->h, ws->ln, NULL, y, B * T, ws, ws->moe);
}

int ar_block_moe_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                               int T, ar_block_work *ws, ar_block_acts *a)
{
    ar_moe_dims d;
    ar_moe_dims_from_config(&d, c);
    if (ensure_moe(&a->moe, &d, a->cap_B * a->cap_T, 1)) return -1;
    if (ar_block_attn_forward(c, w, x, B, T, ws, a)) return -1;
    return moe_half(c, w, a->h, a->ln2, a->rstd2, y, B * T, ws, a->moe);
}

int ar_block_moe_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                          float *const *dW, float *dx, float *const *dxin, ar_block_work *ws)
{
    if (!ws->train) return ar_error("block: backward needs a training workspace");
    if (!a->moe) return ar_error("block: no saved MoE activations (run the training forward first)");
    ar_moe_dims d;
    ar_moe_dims_from_config(&d, c);
    ar_moe_weights mw = moe_weights(w);
    long BT = (long)a->B * a->T;
    int C = c->hidden;
    /* dh = dy (residual) + rmsnorm2'(dL/dn2 from the experts, routing and shared expert) */
    memcpy(ws->dh, dy, sizeof(float) * BT * C);
    memset(ws->dln, 0, sizeof(float) * BT * C);
    a->moe->gemm = ws->gemm, a->moe->ep = ws->moe_ep;
    if (ar_moe_backward(&d, &mw, a->moe, dy, dW ? dW + AR_GATE : NULL, ws->dln)) return -1;
    ar_rmsnorm_backward(ws->dh, NULL, ws->dln, a->h, w->mlp_norm, a->rstd2, BT, C);
    return ar_block_attn_backward(c, w, a, ws->dh, dW, dxin, dx, ws);
}

/* The expert count is not known here: the attention's four entries are
 * checked; the model (ar_model_set_act_quant) and the tuner (tn_block) check
 * every linear before they get here. */
int ar_block_moe_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq)
{
    (void)ws;
    for (int i = 0; aq && i < AR_GATE; i++)
        if (aq[i]) return ar_error("activation quantization of mixture-of-experts blocks is not supported");
    return 0;
}

const float *ar_block_moe_acts_input(const ar_block_acts *a, int i)
{
    return i < AR_GATE ? ar_block_acts_input(a, i) : NULL;
}
