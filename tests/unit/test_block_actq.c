/* test_block_actq.c — activation fake-quantization inside the block
 * (ar_block_set_act_quant, spec §2.12): the hooked forward equals a forward
 * composed by hand from the ops with ar_act_quant applied to each linear's
 * input; training and inference forwards agree; the backward is
 * straight-through (dx as without the hook given the same saved
 * activations, dW against the quantized input). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "error.h"
#include "ops.h"
#include "quant_fp.h"

enum { B = 2, T = 5 };

static unsigned rng = 777;
static float urand(void) /* uniform [-0.5, 0.5) */
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) / 16777216.0 - 0.5);
}

static ar_config tiny(void)
{
    ar_config c = {0};
    c.hidden = 16, c.intermediate = 24, c.n_heads = 4, c.n_kv_heads = 2;
    c.head_dim = 4, c.rms_eps = 1e-6f, c.rope_theta = 10000.0;
    return c;
}

static float *rand_floats(long n, float scale, float offset)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) p[i] = offset + scale * urand();
    return p;
}

static void make_weights(ar_block_weights *w, const ar_config *c)
{
    memset(w, 0, sizeof *w);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        w->w[i] = rand_floats((long)n * k, 3.4f / sqrtf((float)k), 0);
    }
    w->attn_norm = rand_floats(c->hidden, 0.4f, 1);
    w->mlp_norm = rand_floats(c->hidden, 0.4f, 1);
}

static void free_weights(ar_block_weights *w)
{
    for (int i = 0; i < AR_NLINEAR; i++) free(w->w[i]);
    free(w->attn_norm); free(w->mlp_norm);
}

static float *quantized(const ar_act_spec *as, const float *x, long rows, int k)
{
    float *q = malloc(sizeof(float) * rows * k);
    memcpy(q, x, sizeof(float) * rows * k);
    if (as) cr_assert_eq(ar_act_quant(as, q, rows, k), 0, "%s", ar_last_error());
    return q;
}

/* The block by hand from the ops, with aq[i] applied to linear i's input. */
static void by_hand(const ar_config *c, const ar_block_weights *w, const ar_act_spec *const aq[AR_NLINEAR],
                    const float *x, float *y)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    float n1[BT * C], q[BT * QD], k[BT * KD], v[BT * KD], ao[BT * QD], h[BT * C], n2[BT * C];
    float g[BT * F], u[BT * F], d[BT * C], cs[T * HD / 2], sn[T * HD / 2];
    float *att = malloc(sizeof(float) * ar_attention_scratch(T));
    ar_rmsnorm_forward(n1, NULL, x, w->attn_norm, BT, C, c->rms_eps);
    float *xq = quantized(aq[AR_Q], n1, BT, C);
    ar_linear_forward(q, xq, w->w[AR_Q], NULL, BT, C, QD);
    ar_linear_forward(k, xq, w->w[AR_K], NULL, BT, C, KD);
    ar_linear_forward(v, xq, w->w[AR_V], NULL, BT, C, KD);
    free(xq);
    ar_rope_tables(cs, sn, c, T);
    ar_rope_forward(q, cs, sn, B, T, NH, HD);
    ar_rope_forward(k, cs, sn, B, T, NKV, HD);
    ar_attention_forward(ao, att, 0, q, k, v, B, T, NH, NKV, HD, 0);
    xq = quantized(aq[AR_O], ao, BT, QD);
    ar_linear_forward(h, xq, w->w[AR_O], NULL, BT, QD, C);
    free(xq);
    ar_residual_forward(h, h, x, (long)BT * C);
    ar_rmsnorm_forward(n2, NULL, h, w->mlp_norm, BT, C, c->rms_eps);
    xq = quantized(aq[AR_GATE], n2, BT, C);
    ar_linear_forward(g, xq, w->w[AR_GATE], NULL, BT, C, F);
    ar_linear_forward(u, xq, w->w[AR_UP], NULL, BT, C, F);
    free(xq);
    ar_swiglu_forward(g, g, u, (long)BT * F);
    xq = quantized(aq[AR_DOWN], g, BT, F);
    ar_linear_forward(d, xq, w->w[AR_DOWN], NULL, BT, F, C);
    free(xq);
    ar_residual_forward(y, h, d, (long)BT * C);
    free(att);
}

static void check_hook(const ar_act_spec *as)
{
    ar_config c = tiny();
    ar_block_weights w;
    make_weights(&w, &c);
    int n = B * T * c.hidden;
    float x[n], want[n], got[n], plain[n], trained[n];
    for (int i = 0; i < n; i++) x[i] = 2 * urand();
    const ar_act_spec *aq[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) aq[i] = as;
    by_hand(&c, &w, aq, x, want);
    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_forward(&c, &w, x, plain, B, T, &ws), 0);
    cr_assert_eq(ar_block_set_act_quant(&ws, aq), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_forward(&c, &w, x, got, B, T, &ws), 0);
    double diff = 0, effect = 0;
    for (int i = 0; i < n; i++) {
        diff = fmax(diff, fabs(got[i] - want[i]));
        effect = fmax(effect, fabs(got[i] - plain[i]));
    }
    /* the same f32 ops in the same order: equal but for BLAS blocking */
    cr_assert(diff <= 1e-5, "hooked forward differs from the hand-made one by %g", diff);
    cr_assert(effect > 1e-3, "the hook changed nothing (%g)", effect);
    cr_assert_eq(ar_block_forward_train(&c, &w, x, trained, B, T, &ws, &a), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(trained[i], got[i], "train forward y[%d]", i);

    /* Straight-through: dW_down = dy^T · x̂ with x̂ the saved (quantized) input. */
    float dy[n], *dW[AR_NLINEAR] = {0};
    for (int i = 0; i < n; i++) dy[i] = urand();
    int N, K;
    ar_linear_shape(&c, AR_DOWN, &N, &K);
    dW[AR_DOWN] = calloc((size_t)N * K, sizeof(float));
    cr_assert_eq(ar_block_backward(&c, &w, &a, dy, dW, NULL, &ws), 0);
    float *xh = quantized(as, a.act, B * T, K);
    for (int o = 0; o < N; o++)
        for (int kk = 0; kk < K; kk++) {
            double s = 0;
            for (int r = 0; r < B * T; r++) s += (double)dy[r * N + o] * xh[r * K + kk];
            cr_assert(fabs(dW[AR_DOWN][o * K + kk] - s) <= 1e-5 * (1 + fabs(s)), "dW_down[%d,%d]", o, kk);
            /* the saved input is already quantized: quantizing again is a no-op */
            cr_assert_eq(xh[kk], a.act[kk]);
        }
    free(xh);
    free(dW[AR_DOWN]);

    /* NULL switches it off again */
    cr_assert_eq(ar_block_set_act_quant(&ws, NULL), 0);
    cr_assert_eq(ar_block_forward(&c, &w, x, got, B, T, &ws), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(got[i], plain[i], "after reset y[%d]", i);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free_weights(&w);
}

Test(block_actq, int8_per_token) { check_hook(&(ar_act_spec){AR_QDT_INT, 8, -1, 1, 0}); }
Test(block_actq, int4_per_token) { check_hook(&(ar_act_spec){AR_QDT_INT, 4, -1, 1, 0}); }
Test(block_actq, fp8_static) { check_hook(&(ar_act_spec){AR_QDT_FP8, 8, 0, 0, 1.5f}); }
Test(block_actq, nvfp4_dynamic) { check_hook(&(ar_act_spec){AR_QDT_NVFP4, 4, 16, 1, 0}); }

Test(block_actq, shared_inputs_need_one_spec)
{
    ar_config c = tiny();
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 0), 0);
    ar_act_spec a8 = {AR_QDT_INT, 8, -1, 1, 0}, a4 = {AR_QDT_INT, 4, -1, 1, 0};
    const ar_act_spec *aq[AR_NLINEAR] = {&a8, &a4, &a8, NULL, NULL, NULL, NULL};
    cr_assert_eq(ar_block_set_act_quant(&ws, aq), -1);
    cr_assert(strstr(ar_last_error(), "q/k/v"), "%s", ar_last_error());
    cr_assert_eq(ws.has_act_q[AR_Q], 0, "a refused set must leave no hook");
    const ar_act_spec *gu[AR_NLINEAR] = {NULL, NULL, NULL, &a4, &a8, NULL, &a4};
    cr_assert_eq(ar_block_set_act_quant(&ws, gu), -1);
    const ar_act_spec *ok[AR_NLINEAR] = {&a8, &a8, &a8, &a4, NULL, NULL, &a8};
    cr_assert_eq(ar_block_set_act_quant(&ws, ok), 0);
    ar_block_work_free(&ws);
}
