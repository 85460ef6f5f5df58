/* attn_mla.c — DeepSeek multi-head latent attention (see attn_mla.h). */
#include "attn_mla.h"

#include <stdlib.h>
#include <string.h>

#include "attn_sinks.h"
#include "error.h"
#include "ops.h"
#include "rope_scaling.h"

const char *const ar_mla_linear_names[AR_MLA_NLINEAR] = {"q_a_proj", "q_b_proj", "q_proj",
                                                         "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"};

void ar_mla_dims_from_config(ar_mla_dims *d, const ar_config *c)
{
    *d = (ar_mla_dims){.C = c->hidden, .NH = c->n_heads, .QL = c->mla.q_lora_rank, .KL = c->mla.kv_lora_rank,
                       .DN = c->mla.qk_nope_head_dim, .DR = c->mla.qk_rope_head_dim, .DV = c->mla.v_head_dim,
                       .interleave = c->mla.rope_interleave, .eps = 1e-6f,
                       .scale = (float)ar_rope_mla_softmax_scale(c)};
}

void ar_mla_linear_shape(const ar_mla_dims *d, int i, int *N, int *K)
{
    int DQ = d->DN + d->DR, q = d->QL > 0;
    int n[AR_MLA_NLINEAR] = {q ? d->QL : 0, q ? d->NH * DQ : 0, q ? 0 : d->NH * DQ, d->KL + d->DR,
                             d->NH * (d->DN + d->DV), d->C};
    int k[AR_MLA_NLINEAR] = {q ? d->C : 0, q ? d->QL : 0, q ? 0 : d->C, d->C, d->KL, d->NH * d->DV};
    *N = n[i], *K = k[i];
}

/* Floats of the backward's scratch (ar_mla_backward's layout). */
static long scratch_floats(const ar_mla_dims *d, long BT)
{
    int DQ = d->DN + d->DR;
    return BT * ((long)d->NH * (d->DV + 2 * DQ + d->DV + d->DN + d->DV) + d->KL + d->DR + 2L * d->KL + 2L * d->QL);
}

ar_mla_acts *ar_mla_acts_new(const ar_mla_dims *d, int B, int T)
{
    long BT = (long)B * T;
    int DQ = d->DN + d->DR;
    ar_mla_acts *a = calloc(1, sizeof *a);
    if (!a) return ar_error("MLA activations: out of memory"), NULL;
    a->B = B, a->T = T;
    float **buf[] = {&a->qa, &a->qa_rstd, &a->qan, &a->q, &a->kva, &a->lat, &a->lat_rstd, &a->latn,
                     &a->kvb, &a->k, &a->v, &a->att, &a->ao, &a->scratch};
    long n[] = {BT * d->QL, BT, BT * d->QL, BT * d->NH * DQ, BT * (d->KL + d->DR), BT * d->KL, BT,
                BT * d->KL, BT * d->NH * (d->DN + d->DV), BT * d->NH * DQ, BT * d->NH * d->DV,
                (long)B * d->NH * T * T, BT * d->NH * d->DV, scratch_floats(d, BT)};
    for (size_t i = 0; i < sizeof n / sizeof n[0]; i++)
        if (!(*buf[i] = malloc(sizeof(float) * (n[i] > 0 ? n[i] : 1)))) {
            ar_mla_acts_free(a);
            return ar_error("MLA activations: out of memory (B %d, T %d)", B, T), NULL;
        }
    return a;
}

void ar_mla_acts_free(ar_mla_acts *a)
{
    if (!a) return;
    float *buf[] = {a->qa, a->qa_rstd, a->qan, a->q, a->kva, a->lat, a->lat_rstd, a->latn,
                    a->kvb, a->k, a->v, a->att, a->ao, a->scratch};
    for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++) free(buf[i]);
    free(a);
}

/* y = W in(x) + b for linear i, recording the input it read. */
static int linear(ar_mla_acts *a, const ar_mla_hook *hook, const ar_mla_weights *w, const ar_mla_dims *d,
                  int i, float *y, const float *x, long BT)
{
    int N, K;
    ar_mla_linear_shape(d, i, &N, &K);
    const float *in = hook && hook->input ? hook->input(hook->ctx, i, x, BT, K) : x;
    a->in[i] = in;
    return ar_linear_forward_g(a->gemm, y, in, w->w[i], w->b[i], (int)BT, K, N);
}

int ar_mla_forward(float *y, const float *x, const ar_mla_weights *w, const ar_mla_dims *d, const float *cos_t,
                   const float *sin_t, ar_mla_acts *a, const ar_mla_hook *hook)
{
    int B = a->B, T = a->T, NH = d->NH, DQ = d->DN + d->DR, KV = d->KL + d->DR, NKV = d->DN + d->DV;
    long BT = (long)B * T;
    if (d->QL > 0) {
        if (linear(a, hook, w, d, AR_MLA_Q_A, a->qa, x, BT)) return -1;
        ar_rmsnorm_forward(a->qan, a->qa_rstd, a->qa, w->q_a_norm, (int)BT, d->QL, d->eps);
        if (linear(a, hook, w, d, AR_MLA_Q_B, a->q, a->qan, BT)) return -1;
    } else {
        if (linear(a, hook, w, d, AR_MLA_Q, a->q, x, BT)) return -1;
    }
    if (linear(a, hook, w, d, AR_MLA_KV_A, a->kva, x, BT)) return -1;
    for (long r = 0; r < BT; r++) memcpy(a->lat + r * d->KL, a->kva + r * KV, sizeof(float) * d->KL);
    ar_rmsnorm_forward(a->latn, a->lat_rstd, a->lat, w->kv_a_norm, (int)BT, d->KL, d->eps);
    if (linear(a, hook, w, d, AR_MLA_KV_B, a->kvb, a->latn, BT)) return -1;
    /* RoPE on each query head's rope part and on the one shared key part */
    ar_rope_slice(a->q, cos_t, sin_t, B, T, NH, (long)NH * DQ, DQ, d->DN, d->DR, d->interleave, 1);
    ar_rope_slice(a->kva, cos_t, sin_t, B, T, 1, KV, KV, d->KL, d->DR, d->interleave, 1);
    for (long r = 0; r < BT; r++)
        for (int h = 0; h < NH; h++) {
            const float *src = a->kvb + (r * NH + h) * NKV;
            float *k = a->k + (r * NH + h) * DQ;
            memcpy(k, src, sizeof(float) * d->DN);
            memcpy(k + d->DN, a->kva + r * KV + d->KL, sizeof(float) * d->DR);
            memcpy(a->v + (r * NH + h) * d->DV, src + d->DN, sizeof(float) * d->DV);
        }
    ar_attn_sinks_forward(a->ao, a->att, a->q, a->k, a->v, NULL, B, T, NH, NH, DQ, d->DV, d->scale, 0);
    return linear(a, hook, w, d, AR_MLA_O, y, a->ao, BT);
}

/* dx += dy W, dW += dy^T in, db += sum dy for linear i (each optional). */
static int linear_back(const ar_mla_acts *a, ar_mla_grads *g, const ar_mla_weights *w, const ar_mla_dims *d,
                       int i, float *dx, const float *dy, long BT)
{
    int N, K;
    ar_mla_linear_shape(d, i, &N, &K);
    return ar_linear_backward_g(a->gemm, dx, g ? g->w[i] : NULL, g && w->b[i] ? g->b[i] : NULL, dy, a->in[i],
                                w->w[i], (int)BT, K, N);
}

int ar_mla_backward(float *dx, ar_mla_grads *g, const float *dy, const float *x, const ar_mla_weights *w,
                    const ar_mla_dims *d, const float *cos_t, const float *sin_t, ar_mla_acts *a)
{
    (void)x; /* the linears' inputs are in a->in */
    int B = a->B, T = a->T, NH = d->NH, DQ = d->DN + d->DR, KV = d->KL + d->DR, NKV = d->DN + d->DV;
    long BT = (long)B * T;
    float *dao = a->scratch, *dq = dao + BT * NH * d->DV, *dk = dq + BT * NH * DQ, *dv = dk + BT * NH * DQ;
    float *dkvb = dv + BT * NH * d->DV, *dkva = dkvb + BT * NH * NKV, *dlatn = dkva + BT * KV;
    float *dlat = dlatn + BT * d->KL, *dqan = dlat + BT * d->KL, *dqa = dqan + BT * d->QL;
    memset(a->scratch, 0, sizeof(float) * scratch_floats(d, BT));

    if (linear_back(a, g, w, d, AR_MLA_O, dao, dy, BT)) return -1;
    ar_attn_sinks_backward(dq, dk, dv, NULL, dao, a->att, a->q, a->k, a->v, B, T, NH, NH, DQ, d->DV, d->scale);
    /* k = [k_nope | shared rope part], v -> kv_b's output and the rope part */
    for (long r = 0; r < BT; r++)
        for (int h = 0; h < NH; h++) {
            const float *dkh = dk + (r * NH + h) * DQ;
            float *o = dkvb + (r * NH + h) * NKV, *dr = dkva + r * KV + d->KL;
            memcpy(o, dkh, sizeof(float) * d->DN);
            memcpy(o + d->DN, dv + (r * NH + h) * d->DV, sizeof(float) * d->DV);
            for (int i = 0; i < d->DR; i++) dr[i] += dkh[d->DN + i];
        }
    ar_rope_slice(dq, cos_t, sin_t, B, T, NH, (long)NH * DQ, DQ, d->DN, d->DR, d->interleave, -1);
    ar_rope_slice(dkva, cos_t, sin_t, B, T, 1, KV, KV, d->KL, d->DR, d->interleave, -1);
    /* latent path: kv_b, then kv_a_layernorm into dkva's first KL columns */
    if (linear_back(a, g, w, d, AR_MLA_KV_B, dlatn, dkvb, BT)) return -1;
    ar_rmsnorm_backward(dlat, NULL, dlatn, a->lat, w->kv_a_norm, a->lat_rstd, (int)BT, d->KL);
    for (long r = 0; r < BT; r++)
        for (int i = 0; i < d->KL; i++) dkva[r * KV + i] += dlat[r * d->KL + i];
    if (linear_back(a, g, w, d, AR_MLA_KV_A, dx, dkva, BT)) return -1;
    if (d->QL > 0) {
        if (linear_back(a, g, w, d, AR_MLA_Q_B, dqan, dq, BT)) return -1;
        ar_rmsnorm_backward(dqa, NULL, dqan, a->qa, w->q_a_norm, a->qa_rstd, (int)BT, d->QL);
        return linear_back(a, g, w, d, AR_MLA_Q_A, dx, dqa, BT);
    }
    return linear_back(a, g, w, d, AR_MLA_Q, dx, dq, BT);
}
