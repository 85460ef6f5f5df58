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
#include "fixture.h"
#include "ops.h"
#include "quant_fp.h"
#include "refblock.h"

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
    cr_assert_eq(ar_block_weights_init(w, AR_NLINEAR), 0);
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

/* How the hand-made block quantizes linear inputs: with the quantizers
 * (delta[i], when given, records Q_i(x) - x), or with replay on, along the
 * un-rounded path x + delta[i] frozen at a recorded point, which is what the
 * straight-through estimator differentiates. nudge_lin >= 0 adds nudge to
 * element nudge_idx of that linear's quantized input (finite differences of
 * the loss w.r.t. that input alone). */
typedef struct {
    const ar_act_spec *const *aq;
    float *delta[AR_NLINEAR];
    int replay;
    int nudge_lin;
    long nudge_idx;
    float nudge;
    double taken;   /* the step the nudge actually made in f32 */
} hand_mode;

/* Linear i of the hand-made block: y = Q_i(x) · W_i^T, Q_i as hm says. */
static void hand_linear(float *y, const float *x, const ar_block_weights *w, const hand_mode *hm,
                        int i, int R, int K, int N)
{
    long n = (long)R * K;
    float *xq = hm->replay ? malloc(sizeof(float) * n) : quantized(hm->aq[i], x, R, K);
    for (long j = 0; hm->replay && j < n; j++) xq[j] = x[j] + hm->delta[i][j];
    for (long j = 0; !hm->replay && hm->delta[i] && j < n; j++) hm->delta[i][j] = xq[j] - x[j];
    if (hm->nudge_lin == i) {
        float before = xq[hm->nudge_idx];
        xq[hm->nudge_idx] += hm->nudge;
        ((hand_mode *)hm)->taken = (double)xq[hm->nudge_idx] - before;
    }
    ar_linear_forward(y, xq, w->w[i], NULL, R, K, N);
    free(xq);
}

/* The block by hand from the ops, with aq[i] applied to linear i's own copy
 * of its input. */
static void by_hand_mode(const ar_config *c, const ar_block_weights *w, const hand_mode *hm,
                         const float *x, float *y)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    float n1[BT * C], q[BT * QD], k[BT * KD], v[BT * KD], ao[BT * QD], h[BT * C], n2[BT * C];
    float g[BT * F], u[BT * F], d[BT * C], cs[T * HD / 2], sn[T * HD / 2];
    float *att = malloc(sizeof(float) * ar_attention_scratch(T));
    ar_rmsnorm_forward(n1, NULL, x, w->attn_norm, BT, C, c->rms_eps);
    hand_linear(q, n1, w, hm, AR_Q, BT, C, QD);
    hand_linear(k, n1, w, hm, AR_K, BT, C, KD);
    hand_linear(v, n1, w, hm, AR_V, BT, C, KD);
    ar_rope_tables(cs, sn, c, T);
    ar_rope_forward(q, cs, sn, B, T, NH, HD);
    ar_rope_forward(k, cs, sn, B, T, NKV, HD);
    ar_attention_forward(ao, att, 0, q, k, v, B, T, NH, NKV, HD, 0);
    hand_linear(h, ao, w, hm, AR_O, BT, QD, C);
    ar_residual_forward(h, h, x, (long)BT * C);
    ar_rmsnorm_forward(n2, NULL, h, w->mlp_norm, BT, C, c->rms_eps);
    hand_linear(g, n2, w, hm, AR_GATE, BT, C, F);
    hand_linear(u, n2, w, hm, AR_UP, BT, C, F);
    ar_swiglu_forward(g, g, u, (long)BT * F);
    hand_linear(d, g, w, hm, AR_DOWN, BT, F, C);
    ar_residual_forward(y, h, d, (long)BT * C);
    free(att);
}

/* by_hand_mode with plain quantizers. */
static void by_hand(const ar_config *c, const ar_block_weights *w, const ar_act_spec *const aq[AR_NLINEAR],
                    const float *x, float *y)
{
    hand_mode hm = {.aq = aq, .nudge_lin = -1};
    by_hand_mode(c, w, &hm, x, y);
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
    /* exact: the same f32 ops on the same shapes in the same order (same
     * machine, kernel and thread count); so any difference from the plain
     * forward is the hook's */
    double effect = 0;
    for (int i = 0; i < n; i++) {
        cr_assert_eq(got[i], want[i], "hooked forward y[%d] %.9g vs hand-made %.9g", i, got[i], want[i]);
        effect = fmax(effect, fabs(got[i] - plain[i]));
    }
    cr_assert(effect > 0, "the hook changed nothing");
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
            /* one sgemm element: gamma_{BT} sum |dy x-hat| */
            fx_assert_within(dW[AR_DOWN][o * K + kk], s, fx_dot_bound(dy + o, N, xh + kk, K, B * T), "dW_down[%d,%d]",
                             o, kk);
        }
    /* the saved input is the one before quantization (the backward re-derives x̂) */
    double moved = 0;
    for (long j = 0; j < (long)B * T * K; j++) moved = fmax(moved, fabs(xh[j] - a.act[j]));
    cr_assert(moved > 0, "saved input of down_proj is already quantized");
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

Test(block_actq, int8_per_token) { check_hook(&(ar_act_spec){AR_QDT_INT, 8, -1, 1, 0, 0}); }
Test(block_actq, int4_per_token) { check_hook(&(ar_act_spec){AR_QDT_INT, 4, -1, 1, 0, 0}); }
Test(block_actq, fp8_static) { check_hook(&(ar_act_spec){AR_QDT_FP8, 8, 0, 0, 1.5f, 0}); }
Test(block_actq, nvfp4_dynamic) { check_hook(&(ar_act_spec){AR_QDT_NVFP4, 4, 16, 1, 0, 0}); }

/* Mixed specs inside the q/k/v and gate/up groups (a mixed-precision layer
 * config): each linear multiplies by its own quantized copy, as by hand. */
Test(block_actq, shared_inputs_with_different_specs)
{
    ar_config c = tiny();
    ar_block_weights w;
    make_weights(&w, &c);
    int n = B * T * c.hidden;
    float x[n], want[n], got[n], trained[n];
    for (int i = 0; i < n; i++) x[i] = 2 * urand();
    ar_act_spec a8 = {AR_QDT_INT, 8, -1, 1, 0, 0}, a4 = {AR_QDT_INT, 4, -1, 1, 0, 0};
    ar_act_spec mx = {AR_QDT_MXFP4, 4, 8, 1, 0, 0};
    const ar_act_spec *aq[AR_NLINEAR] = {&a8, &a4, &a8, NULL, &mx, NULL, &a4};
    by_hand(&c, &w, aq, x, want);
    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_set_act_quant(&ws, aq), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_forward(&c, &w, x, got, B, T, &ws), 0);
    cr_assert_eq(ar_block_forward_train(&c, &w, x, trained, B, T, &ws, &a), 0);
    for (int i = 0; i < n; i++) { /* exact, as in check_hook */
        cr_assert_eq(got[i], want[i], "y[%d] %g vs by hand %g", i, got[i], want[i]);
        cr_assert_eq(trained[i], got[i], "train forward y[%d]", i);
    }
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free_weights(&w);
}

/* Central differences of the f32 hand-made block along the frozen path,
 * over the steps the f32 nudges actually made (a[s], about +-eps, +-2 eps):
 * D1 = (f0 - f1) / (a0 - a1), D2 = (f2 - f3) / (a2 - a3). Their error:
 * |D1 - D2| (Richardson, as fx_central_diff), plus the rounding noise of
 * the two f32 forwards D1 subtracts, at most 2 tau sum |dy| over a0 - a1,
 * with tau the Monte Carlo estimate (fixture.h) of a block output's
 * rounding error on this data (refblock.c's block; activation quantizers,
 * frozen as additive offsets, left out); fd_noise returns tau sum |dy|. */
static const double fd_step[4] = {1, -1, 2, -2};

static double fd_loss(const ar_config *c, const ar_block_weights *w, hand_mode *hm, const float *x, const float *dy,
                      int n, int s, float eps)
{
    float y[n];
    if (s >= 0) hm->nudge = (float)(fd_step[s] * eps);
    by_hand_mode(c, w, hm, x, y);
    double L = 0;
    for (int e = 0; e < n; e++) L += (double)dy[e] * y[e];
    return L;
}

static double fd_quotient(const double f[4], const double a[4], double noise, double *err)
{
    double d1 = (f[0] - f[1]) / (a[0] - a[1]), d2 = (f[2] - f[3]) / (a[2] - a[3]);
    *err = fabs(d1 - d2) + 2 * noise / (a[0] - a[1]);
    return d1;
}

typedef struct {
    const ar_config *c;
    rb_weights w;
    const float *x;
} noise_run;

static void run_block(void *ctx, double *out)
{
    noise_run *r = ctx;
    int n = B * T * r->c->hidden;
    fx_ev *y = rb_exact(r->x, n);
    rb_block_forward(r->c, &r->w, y, y, B, T);
    for (int i = 0; i < n; i++) out[i] = y[i].v;
    free(y);
}

static double fd_noise(const ar_config *c, const ar_block_weights *w, const float *x, const float *dy)
{
    noise_run r = {.c = c, .x = x};
    rb_weights_from(&r.w, w, c);
    int n = B * T * c->hidden;
    double tau = fx_mca_tolerance(run_block, &r, n, NULL), sum = 0;
    rb_weights_free(&r.w);
    for (int i = 0; i < n; i++) sum += fabs(dy[i]);
    return tau * sum;
}

/* The straight-through backward against central differences of the
 * hand-made block along the un-rounded path (every quantizer frozen to
 * x + (Q(x) − x) at the base point, the function the estimator
 * differentiates), L = Σ dy ⊙ y: ar_block_backward_inputs' dxin[i] = dL/dx̂_i
 * (nudging linear i's quantized input alone), and dW (nudging a weight). */
Test(block_actq, straight_through_backward_matches_finite_differences)
{
    ar_config c = tiny();
    ar_block_weights w;
    make_weights(&w, &c);
    int n = B * T * c.hidden;
    float x[n], y[n], dy[n], base[n];
    for (int i = 0; i < n; i++) x[i] = 2 * urand(), dy[i] = urand();
    ar_act_spec a8 = {AR_QDT_INT, 8, -1, 1, 0, 0}, mx = {AR_QDT_MXFP4, 4, 8, 1, 0, 0};
    const ar_act_spec *aq[AR_NLINEAR] = {&mx, &mx, &a8, &a8, &mx, &mx, &mx};
    hand_mode hm = {.aq = aq, .nudge_lin = -1};
    float *dxin[AR_NLINEAR], *dW[AR_NLINEAR] = {0};
    for (int i = 0; i < AR_NLINEAR; i++) {
        int N, K;
        ar_linear_shape(&c, i, &N, &K);
        dxin[i] = calloc((size_t)B * T * K, sizeof(float));
        hm.delta[i] = malloc(sizeof(float) * B * T * K);
    }
    by_hand_mode(&c, &w, &hm, x, base);     /* records the frozen offsets */
    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_set_act_quant(&ws, aq), 0);
    cr_assert_eq(ar_block_forward_train(&c, &w, x, y, B, T, &ws, &a), 0);
    for (int e = 0; e < n; e++) cr_assert_eq(y[e], base[e], "forward y[%d]", e); /* exact, as in check_hook */
    double noise = fd_noise(&c, &w, x, dy);
    cr_log_info("rounding noise of a loss: %.3g (%.3g over the steps of 1/8)", noise, noise * 8);
    cr_assert_eq(ar_block_backward_inputs(&c, &w, &a, dy, dW, NULL, dxin, &ws), 0, "%s", ar_last_error());
    hm.replay = 1;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int N, K;
        ar_linear_shape(&c, i, &N, &K);
        for (int t = 0; t < 4; t++) {
            const float eps = 0x1p-3f; /* large: the f32 noise over the step shrinks, Richardson bounds the rest */
            hm.nudge_lin = i;
            hm.nudge_idx = (long)((urand() + 0.5f) * (B * T * K - 1));
            double f4[4], a[4], err;
            for (int s = 0; s < 4; s++) f4[s] = fd_loss(&c, &w, &hm, x, dy, n, s, eps), a[s] = hm.taken;
            hm.nudge = 0;
            double fd = fd_quotient(f4, a, noise, &err);
            float got = dxin[i][hm.nudge_idx];
            fx_assert_within(got, fd, err, "%s input[%ld] vs finite differences", ar_linear_names[i], hm.nudge_idx);
        }
    }
    /* dW the same way: weights nudged, inputs along the frozen path */
    hm.nudge_lin = -1;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int N, K;
        ar_linear_shape(&c, i, &N, &K);
        dW[i] = calloc((size_t)N * K, sizeof(float));
    }
    cr_assert_eq(ar_block_backward(&c, &w, &a, dy, dW, NULL, &ws), 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int N, K;
        ar_linear_shape(&c, i, &N, &K);
        for (int t = 0; t < 4; t++) {
            const float eps = 0x1p-3f; /* large: the f32 noise over the step shrinks, Richardson bounds the rest */
            long j = (long)((urand() + 0.5f) * (N * K - 1));
            float keep = w.w[i][j];
            double f4[4], a[4], err;
            for (int s = 0; s < 4; s++) {
                w.w[i][j] = keep + (float)(fd_step[s] * eps);
                a[s] = (double)w.w[i][j] - keep;
                f4[s] = fd_loss(&c, &w, &hm, x, dy, n, -1, 0);
            }
            w.w[i][j] = keep;
            double fd = fd_quotient(f4, a, noise, &err);
            fx_assert_within(dW[i][j], fd, err, "%s dW[%ld] vs finite differences", ar_linear_names[i], j);
        }
    }
    for (int i = 0; i < AR_NLINEAR; i++) free(dxin[i]), free(hm.delta[i]), free(dW[i]);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free_weights(&w);
}
