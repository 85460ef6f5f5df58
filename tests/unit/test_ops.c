/* test_ops.c — each layer op against a naive double-precision loop written
 * here, each backward against central finite differences of that double
 * reference, and the RoPE tables against values recorded from transformers. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static unsigned rng_state = 777;
static double urand(void) /* uniform [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) / 8388608.0 - 1.0;
}

/* Fill f32 and double copies with the same random values. */
static void fill(float *f, double *d, int n)
{
    for (int i = 0; i < n; i++) d[i] = f[i] = (float)urand();
}

static double max_abs(const double *a, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* |got - want| <= tol * max|want|. */
static void expect_close(const float *got, const double *want, int n, double tol,
                         const char *what)
{
    double scale = max_abs(want, n);
    cr_assert(scale > 1e-6, "%s: reference vanishes", what);
    for (int i = 0; i < n; i++)
        cr_assert(fabs(got[i] - want[i]) <= tol * scale, "%s[%d] = %.8g, want %.8g",
                  what, i, got[i], want[i]);
}

/* A scalar loss of a double reference, L(p) = sum(out(p) . r), for finite
 * differences: fn evaluates out into a caller buffer. */
typedef void (*ref_fn)(void *ctx, double *out);
typedef struct {
    ref_fn fn;
    void *ctx;
    const double *r;
    int nout;
} loss_t;

static double loss(const loss_t *l)
{
    double *out = malloc(sizeof(double) * l->nout), L = 0;
    l->fn(l->ctx, out);
    for (int i = 0; i < l->nout; i++) L += out[i] * l->r[i];
    free(out);
    return L;
}

/* Central differences of l along every element of p [n] (step 1e-5 in double:
 * error ~1e-10, far below the 1e-4 f32 checks). */
static void fd_grad(double *g, const loss_t *l, double *p, int n)
{
    const double h = 1e-5;
    for (int j = 0; j < n; j++) {
        double keep = p[j];
        p[j] = keep + h;
        double lp = loss(l);
        p[j] = keep - h;
        double lm = loss(l);
        p[j] = keep;
        g[j] = (lp - lm) / (2 * h);
    }
}

/* Subtract a constant that a +=-style backward started from. */
static void unbias(float *g, int n, float c)
{
    for (int i = 0; i < n; i++) g[i] -= c;
}

/* ---------------------------------------------------------------- RMSNorm */

enum { NR = 3, NC = 7 };
typedef struct { double *x, *w; } norm_ctx;

static void d_rmsnorm(void *vc, double *out)
{
    norm_ctx *c = vc;
    for (int r = 0; r < NR; r++) {
        double ss = 0;
        for (int i = 0; i < NC; i++) ss += c->x[r * NC + i] * c->x[r * NC + i];
        double s = 1 / sqrt(ss / NC + 1e-5);
        for (int i = 0; i < NC; i++) out[r * NC + i] = c->x[r * NC + i] * s * c->w[i];
    }
}

Test(ops, rmsnorm)
{
    float x[NR * NC], w[NC], out[NR * NC], rstd[NR], dx[NR * NC], dw[NC], dout[NR * NC];
    double xd[NR * NC], wd[NC], r[NR * NC], want[NR * NC];
    fill(x, xd, NR * NC), fill(w, wd, NC), fill(dout, r, NR * NC);
    norm_ctx c = {xd, wd};
    loss_t l = {d_rmsnorm, &c, r, NR * NC};

    ar_rmsnorm_forward(out, rstd, x, w, NR, NC, 1e-5f);
    d_rmsnorm(&c, want);
    expect_close(out, want, NR * NC, 1e-6, "out"); /* f32 rounding only */

    /* Backward accumulates: start from 0.5 and take it off again. */
    for (int i = 0; i < NR * NC; i++) dx[i] = 0.5f;
    for (int i = 0; i < NC; i++) dw[i] = 0.5f;
    ar_rmsnorm_backward(dx, dw, dout, x, w, rstd, NR, NC);
    unbias(dx, NR * NC, 0.5f), unbias(dw, NC, 0.5f);
    fd_grad(want, &l, xd, NR * NC);
    expect_close(dx, want, NR * NC, 1e-5, "dx");
    fd_grad(want, &l, wd, NC);
    expect_close(dw, want, NC, 1e-5, "dw");

    /* In place gives the same output. */
    ar_rmsnorm_forward(x, NULL, x, w, NR, NC, 1e-5f);
    for (int i = 0; i < NR * NC; i++) cr_assert_eq(x[i], out[i]);
}

/* ----------------------------------------------------------------- Linear */

enum { LR = 5, LK = 6, LN = 4 };
typedef struct { double *x, *W, *b; } lin_ctx;

static void d_linear(void *vc, double *y)
{
    lin_ctx *c = vc;
    for (int r = 0; r < LR; r++)
        for (int n = 0; n < LN; n++) {
            double acc = c->b ? c->b[n] : 0;
            for (int k = 0; k < LK; k++) acc += c->x[r * LK + k] * c->W[n * LK + k];
            y[r * LN + n] = acc;
        }
}

Test(ops, linear)
{
    float x[LR * LK], W[LN * LK], b[LN], y[LR * LN], dy[LR * LN];
    float dx[LR * LK] = {0}, dW[LN * LK] = {0}, db[LN] = {0};
    double xd[LR * LK], Wd[LN * LK], bd[LN], r[LR * LN], want[LR * LK];
    fill(x, xd, LR * LK), fill(W, Wd, LN * LK), fill(b, bd, LN), fill(dy, r, LR * LN);
    lin_ctx c = {xd, Wd, NULL};
    loss_t l = {d_linear, &c, r, LR * LN};

    ar_linear_forward(y, x, W, NULL, LR, LK, LN);
    d_linear(&c, want);
    expect_close(y, want, LR * LN, 1e-6, "y no bias");
    c.b = bd;
    ar_linear_forward(y, x, W, b, LR, LK, LN);
    d_linear(&c, want);
    expect_close(y, want, LR * LN, 1e-6, "y");

    ar_linear_backward(dx, dW, db, dy, x, W, LR, LK, LN);
    fd_grad(want, &l, xd, LR * LK);
    expect_close(dx, want, LR * LK, 1e-5, "dx");
    fd_grad(want, &l, Wd, LN * LK);
    expect_close(dW, want, LN * LK, 1e-5, "dW");
    fd_grad(want, &l, bd, LN);
    expect_close(db, want, LN, 1e-5, "db");
    /* A second call adds the same again. */
    float keep = dW[7];
    ar_linear_backward(NULL, dW, NULL, dy, x, W, LR, LK, LN);
    cr_assert_float_eq(dW[7], 2 * keep, 1e-5);
}

/* Shapes big enough that the linear is cut into tiles, one sgemm per
 * OpenMP thread (5 threads forced): along rows (R >= N) and along columns
 * (R < N), with uneven tile edges. Reference: the naive double formulas
 * (checked against finite differences above). */
static void check_linear_tiled(int R, int K, int N)
{
    omp_set_num_threads(5);
    float *x = malloc(4L * R * K), *W = malloc(4L * N * K), *b = malloc(4L * N);
    float *y = malloc(4L * R * N), *dy = malloc(4L * R * N);
    float *dx = calloc((size_t)R * K, 4), *dW = calloc((size_t)N * K, 4);
    double *xd = malloc(8L * R * K), *Wd = malloc(8L * N * K), *bd = malloc(8L * N);
    double *r = malloc(8L * R * N), *want = malloc(8L * (R * N + R * K + N * K));
    fill(x, xd, R * K), fill(W, Wd, N * K), fill(b, bd, N), fill(dy, r, R * N);
    ar_linear_forward(y, x, W, b, R, K, N);
    ar_linear_backward(dx, dW, NULL, dy, x, W, R, K, N);
    for (int i = 0; i < R; i++)
        for (int n = 0; n < N; n++) {
            double acc = bd[n];
            for (int k = 0; k < K; k++) acc += xd[(long)i * K + k] * Wd[(long)n * K + k];
            want[(long)i * N + n] = acc;
        }
    expect_close(y, want, R * N, 1e-6, "tiled y");
    for (int i = 0; i < R; i++)
        for (int k = 0; k < K; k++) {
            double acc = 0;
            for (int n = 0; n < N; n++) acc += r[(long)i * N + n] * Wd[(long)n * K + k];
            want[(long)i * K + k] = acc;
        }
    expect_close(dx, want, R * K, 1e-6, "tiled dx");
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double acc = 0;
            for (int i = 0; i < R; i++) acc += r[(long)i * N + n] * xd[(long)i * K + k];
            want[(long)n * K + k] = acc;
        }
    expect_close(dW, want, N * K, 1e-6, "tiled dW");
    free(x), free(W), free(b), free(y), free(dy), free(dx), free(dW);
    free(xd), free(Wd), free(bd), free(r), free(want);
}

Test(ops, linear_tiled_rows) { check_linear_tiled(523, 70, 50); }
Test(ops, linear_tiled_cols) { check_linear_tiled(40, 64, 601); }

/* ------------------------------------------------------------------- RoPE */

/* Llama 3.1 rope parameters (theta 5e5, factor 8, low 1, high 4, original
 * 8192) with head_dim 64. */
static ar_config llama31(void)
{
    ar_config c = {0};
    c.head_dim = 64, c.rope_theta = 500000.0, c.rope_type = AR_ROPE_LLAMA3;
    c.rope_factor = 8, c.rope_low_freq_factor = 1, c.rope_high_freq_factor = 4;
    c.rope_orig_max_pos = 8192;
    return c;
}

/* Recorded with transformers 5.24.0 / torch 2.15 (build/venv):
 * ROPE_INIT_FUNCTIONS['llama3'](LlamaConfig(head_dim=64, rope_theta=5e5,
 * rope_scaling={llama3, 8, 1, 4, 8192}), 'cpu')[0], printed with %.9g. */
static const float llama3_inv_freq[32] = {
    1, 0.663601279, 0.440366626, 0.292227834, 0.193922758, 0.128687382,
    0.0853971019, 0.0566696189, 0.0376060307, 0.0249554086, 0.0165604409,
    0.0109895291, 0.00729266508, 0.00483942125, 0.00321144611, 0.00137189368,
    0.000524846022, 0.000178507791, 7.78465546e-05, 5.16590699e-05, 3.42810235e-05,
    2.2748929e-05, 1.50962178e-05, 1.00178686e-05, 6.64786967e-06, 4.41153452e-06,
    2.92749974e-06, 1.94269251e-06, 1.28917316e-06, 8.55496921e-07, 5.6770881e-07,
    3.7673226e-07};

/* Same source, ROPE_INIT_FUNCTIONS['linear'] with theta 1e4, factor 4, HD 64:
 * every 8th value. */
static const float linear_inv_freq[4] = {0.25, 0.0250000004, 0.00249999994,
                                         0.000250000012};

Test(ops, rope_inv_freq_matches_transformers)
{
    ar_config c = llama31();
    float f[32];
    ar_rope_inv_freq(f, &c);
    /* f32 pow/divide in both: equal to a couple of ulps. */
    for (int i = 0; i < 32; i++)
        cr_assert(fabsf(f[i] - llama3_inv_freq[i]) <= 3e-7f * llama3_inv_freq[i],
                  "llama3 inv_freq[%d] = %.9g, transformers %.9g", i, f[i],
                  llama3_inv_freq[i]);
    c.rope_type = AR_ROPE_LINEAR, c.rope_theta = 10000, c.rope_factor = 4;
    ar_rope_inv_freq(f, &c);
    for (int i = 0; i < 4; i++)
        cr_assert(fabsf(f[8 * i] - linear_inv_freq[i]) <= 3e-7f * linear_inv_freq[i],
                  "linear inv_freq[%d]", 8 * i);
    /* Default: 1 / theta^(2i/HD) to f32 accuracy. */
    c.rope_type = AR_ROPE_DEFAULT;
    ar_rope_inv_freq(f, &c);
    for (int i = 0; i < 32; i++)
        cr_assert(fabs(f[i] - pow(1e4, -2.0 * i / 64)) <= 1e-6 * pow(1e4, -2.0 * i / 64));
}

Test(ops, rope_tables_match_transformers)
{
    /* LlamaRotaryEmbedding(llama31)(x, positions) cos/sin at positions
     * 1, 7, 1000, 4095 and dims 0, 3, 14, 31 (same recording as above). */
    static const int pos[4] = {1, 7, 1000, 4095}, dim[4] = {0, 3, 14, 31};
    static const float want_cos[4][4] = {
        {0.540302336, 0.957604468, 0.999994874, 1},
        {0.753902256, -0.45715934, 0.999747336, 1},
        {0.562379062, -0.998216867, -0.997561216, 0.99999994},
        {-0.0659759939, -0.962742984, 0.833987176, 0.999998808}};
    static const float want_sin[4][4] = {
        {0.841470957, 0.288086325, 0.00321144052, 3.7673226e-07},
        {0.656986594, 0.889384806, 0.0224782303, 2.63712582e-06},
        {0.826879561, -0.0596919507, -0.0697965994, 0.000376732263},
        {-0.997821212, 0.270418197, 0.5517838, 0.00154271803}};
    ar_config c = llama31();
    float *ct = malloc(sizeof(float) * 4096 * 32), *st = malloc(sizeof(float) * 4096 * 32);
    ar_rope_tables(ct, st, &c, 4096);
    for (int p = 0; p < 4; p++)
        for (int d = 0; d < 4; d++) {
            long i = (long)pos[p] * 32 + dim[d];
            /* Same f32 angle; cos/sin implementations differ by ~1 ulp. */
            cr_assert(fabsf(ct[i] - want_cos[p][d]) <= 1e-6f, "cos t=%d i=%d: %.9g",
                      pos[p], dim[d], ct[i]);
            cr_assert(fabsf(st[i] - want_sin[p][d]) <= 1e-6f, "sin t=%d i=%d: %.9g",
                      pos[p], dim[d], st[i]);
        }
    free(ct), free(st);
}

enum { RB = 2, RT = 3, RH = 2, RD = 6 };

Test(ops, rope_forward_backward)
{
    ar_config c = {0};
    c.head_dim = RD, c.rope_theta = 100;
    int n = RB * RT * RH * RD;
    float ct[RT * RD / 2], st[RT * RD / 2], x[n], x0[n];
    double xd[n];
    ar_rope_tables(ct, st, &c, RT);
    fill(x, xd, n);
    memcpy(x0, x, sizeof x);
    ar_rope_forward(x, ct, st, RB, RT, RH, RD);
    /* Reference rotation in double, rotate_half pairing. */
    double want[n];
    for (int row = 0; row < RB * RT * RH; row++) {
        int t = row / RH % RT;
        for (int i = 0; i < RD / 2; i++) {
            double a = t * pow(100.0, -2.0 * i / RD);
            double a0 = xd[row * RD + i], a1 = xd[row * RD + i + RD / 2];
            want[row * RD + i] = a0 * cos(a) - a1 * sin(a);
            want[row * RD + i + RD / 2] = a1 * cos(a) + a0 * sin(a);
        }
    }
    expect_close(x, want, n, 1e-6, "rope");
    /* The backward is the transpose; for a rotation that is the inverse. */
    ar_rope_backward(x, ct, st, RB, RT, RH, RD);
    for (int i = 0; i < n; i++) cr_assert_float_eq(x[i], x0[i], 1e-6, "inverse [%d]", i);
    /* And the transpose proper: <R x, y> == <x, R^T y>. */
    float y[n], ry[n], rx[n];
    for (int i = 0; i < n; i++) ry[i] = y[i] = (float)urand();
    memcpy(rx, x0, sizeof rx);
    ar_rope_forward(rx, ct, st, RB, RT, RH, RD);
    ar_rope_backward(ry, ct, st, RB, RT, RH, RD);
    double l = 0, r = 0;
    for (int i = 0; i < n; i++) l += (double)rx[i] * y[i], r += (double)x0[i] * ry[i];
    cr_assert(fabs(l - r) <= 1e-5 * fabs(l) + 1e-6, "<Rx,y> %g vs <x,R^T y> %g", l, r);
}

/* -------------------------------------------------------------- Attention */

typedef struct {
    double *q, *k, *v;
    int B, T, NH, NKV, HD, window;
} att_ctx;

/* Probabilities p [T] of query t of head h in sequence b (naive, double). */
static void d_probs(const att_ctx *c, int b, int h, int t, double *p)
{
    int g = h / (c->NH / c->NKV), HD = c->HD;
    double sum = 0;
    for (int s = 0; s < c->T; s++) {
        double d = 0;
        for (int i = 0; i < HD; i++)
            d += c->q[((long)(b * c->T + t) * c->NH + h) * HD + i] *
                 c->k[((long)(b * c->T + s) * c->NKV + g) * HD + i];
        int seen = s <= t && (c->window == 0 || t - s < c->window);
        p[s] = seen ? exp(d / sqrt(HD)) : 0;
        sum += p[s];
    }
    for (int s = 0; s < c->T; s++) p[s] /= sum;
}

/* out = softmax(q k^T / sqrt(HD) masked) v, one query at a time. */
static void d_attention(void *vc, double *out)
{
    att_ctx *c = vc;
    int HD = c->HD;
    double *p = malloc(sizeof(double) * c->T);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int t = 0; t < c->T; t++) {
                int g = h / (c->NH / c->NKV);
                d_probs(c, b, h, t, p);
                for (int i = 0; i < HD; i++) {
                    double acc = 0;
                    for (int s = 0; s <= t; s++)
                        acc += p[s] * c->v[((long)(b * c->T + s) * c->NKV + g) * HD + i];
                    out[((long)(b * c->T + t) * c->NH + h) * HD + i] = acc;
                }
            }
    free(p);
}

/* Analytic backward in double, written from the chain rule query by query:
 * dp_s = dout . v_s, ds_s = p_s (dp_s - sum_u p_u dp_u) / sqrt(HD),
 * dq += ds_s k_s, dk_s += ds_s q, dv_s += p_s dout. Used where finite
 * differences would be too slow (T spanning several row blocks); checked
 * against finite differences itself on the small case. */
static void d_attention_backward(const att_ctx *c, const double *dout, double *dq,
                                 double *dk, double *dv)
{
    int HD = c->HD, T = c->T;
    double *p = malloc(sizeof(double) * T), *dp = malloc(sizeof(double) * T);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int t = 0; t < T; t++) {
                int g = h / (c->NH / c->NKV);
                long qo = ((long)(b * T + t) * c->NH + h) * HD;
                d_probs(c, b, h, t, p);
                double dot = 0;
                for (int s = 0; s <= t; s++) {
                    long ko = ((long)(b * T + s) * c->NKV + g) * HD;
                    dp[s] = 0;
                    for (int i = 0; i < HD; i++) dp[s] += dout[qo + i] * c->v[ko + i];
                    dot += p[s] * dp[s];
                }
                for (int s = 0; s <= t; s++) {
                    long ko = ((long)(b * T + s) * c->NKV + g) * HD;
                    double ds = p[s] * (dp[s] - dot) / sqrt(HD);
                    for (int i = 0; i < HD; i++) {
                        dq[qo + i] += ds * c->k[ko + i];
                        dk[ko + i] += ds * c->q[qo + i];
                        dv[ko + i] += p[s] * dout[qo + i];
                    }
                }
            }
    free(p), free(dp);
}

/* Forward against d_attention and backward against the analytic double
 * backward, plus (small shapes) finite differences. */
static void check_attention(int B, int T, int NH, int NKV, int HD, int window, int fd)
{
    omp_set_num_threads(3); /* per-thread scratch slices, even on 1-2 cores */
    int NQ = B * T * NH * HD, NK = B * T * NKV * HD;
    float *q = malloc(4 * NQ), *k = malloc(4 * NK), *v = malloc(4 * NK);
    float *out = malloc(4 * NQ), *dout = malloc(4 * NQ);
    float *att = malloc(sizeof(float) * B * NH * T * T);
    float *dq = calloc(NQ, 4), *dk = calloc(NK, 4), *dv = calloc(NK, 4);
    float *scratch = malloc(sizeof(float) * ar_attention_backward_scratch(B, T, NH, HD));
    double *qd = malloc(8 * NQ), *kd = malloc(8 * NK), *vd = malloc(8 * NK);
    double *r = malloc(8 * NQ), *want = malloc(8 * NQ);
    double *wq = calloc(NQ, 8), *wk = calloc(NK, 8), *wv = calloc(NK, 8);
    /* Scores of a few units so the softmax is far from uniform. */
    fill(q, qd, NQ), fill(k, kd, NK), fill(v, vd, NK), fill(dout, r, NQ);
    for (int i = 0; i < NQ; i++) qd[i] = q[i] *= 3;
    att_ctx c = {qd, kd, vd, B, T, NH, NKV, HD, window};

    ar_attention_forward(out, scratch, 0, q, k, v, B, T, NH, NKV, HD, window);
    d_attention(&c, want);
    expect_close(out, want, NQ, 2e-6, "out (scratch)"); /* f32 rounding */
    ar_attention_forward(out, att, 1, q, k, v, B, T, NH, NKV, HD, window);
    expect_close(out, want, NQ, 2e-6, "out (saved)");

    ar_attention_backward(dq, dk, dv, scratch, dout, att, q, k, v, B, T, NH, NKV, HD);
    d_attention_backward(&c, r, wq, wk, wv);
    expect_close(dq, wq, NQ, 1e-5, "dq");
    expect_close(dk, wk, NK, 1e-5, "dk");
    expect_close(dv, wv, NK, 1e-5, "dv");
    if (fd) {
        loss_t l = {d_attention, &c, r, NQ};
        fd_grad(want, &l, qd, NQ);
        expect_close(dq, want, NQ, 1e-5, "dq (FD)");
        fd_grad(want, &l, kd, NK);
        expect_close(dk, want, NK, 1e-5, "dk (FD)");
        fd_grad(want, &l, vd, NK);
        expect_close(dv, want, NK, 1e-5, "dv (FD)");
    }
    free(q), free(k), free(v), free(out), free(dout), free(att), free(dq), free(dk);
    free(dv), free(scratch), free(qd), free(kd), free(vd), free(r), free(want);
    free(wq), free(wk), free(wv);
}

Test(ops, attention_gqa) { check_attention(2, 5, 4, 2, 3, 0, 1); }
Test(ops, attention_sliding_window) { check_attention(2, 5, 4, 2, 3, 2, 1); }
/* T = 300 spans three query row blocks of the implementation (the last one
 * partial), with and without a window that crosses block edges. */
Test(ops, attention_long) { check_attention(1, 300, 2, 1, 8, 0, 0); }
Test(ops, attention_long_window) { check_attention(1, 300, 2, 1, 8, 77, 0); }

/* ---------------------------------------------------------- SwiGLU, residual */

enum { SN = 17 };
typedef struct { double *g, *u; } glu_ctx;

static void d_swiglu(void *vc, double *out)
{
    glu_ctx *c = vc;
    for (int i = 0; i < SN; i++) out[i] = c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
}

Test(ops, swiglu)
{
    float g[SN], u[SN], out[SN], dout[SN], dg[SN] = {0}, du[SN] = {0};
    double gd[SN], ud[SN], r[SN], want[SN];
    fill(g, gd, SN), fill(u, ud, SN), fill(dout, r, SN);
    for (int i = 0; i < SN; i++) gd[i] = g[i] *= 6; /* both tails of silu */
    glu_ctx c = {gd, ud};
    loss_t l = {d_swiglu, &c, r, SN};
    ar_swiglu_forward(out, g, u, SN);
    d_swiglu(&c, want);
    expect_close(out, want, SN, 1e-6, "out");
    ar_swiglu_backward(dg, du, dout, g, u, SN);
    fd_grad(want, &l, gd, SN);
    expect_close(dg, want, SN, 1e-5, "dgate");
    fd_grad(want, &l, ud, SN);
    expect_close(du, want, SN, 1e-5, "dup");
}

Test(ops, residual)
{
    float a[3] = {1, 2, 3}, b[3] = {0.5f, -2, 4}, out[3], da[3] = {1, 1, 1}, db[3] = {0};
    ar_residual_forward(out, a, b, 3);
    cr_assert(out[0] == 1.5f && out[1] == 0 && out[2] == 7);
    ar_residual_backward(da, db, b, 3);
    cr_assert(da[0] == 1.5f && da[1] == -1 && da[2] == 5);
    cr_assert(db[0] == 0.5f && db[1] == -2 && db[2] == 4);
}

enum { CE_R = 4, CE_V = 7 };
static const int ce_target[CE_R] = {2, -1, 0, 6};   /* row 1 does not count */

/* Σ over counted rows of log Σ exp z − z[target], in double. */
static void d_crossentropy(void *vc, double *out)
{
    const double *z = vc;
    out[0] = 0;
    for (int r = 0; r < CE_R; r++) {
        if (ce_target[r] < 0) continue;
        double s = 0;
        for (int i = 0; i < CE_V; i++) s += exp(z[r * CE_V + i]);
        out[0] += log(s) - z[r * CE_V + ce_target[r]];
    }
}

Test(ops, crossentropy)
{
    enum { N = CE_R * CE_V };
    float z[N], dz[N];
    double zd[N], r[1] = {1.7}, want[N], ref;
    fill(z, zd, N);
    for (int i = 0; i < N; i++) zd[i] = z[i] *= 8;   /* peaked and flat rows */
    d_crossentropy(zd, &ref);
    double got = ar_crossentropy_forward(z, ce_target, CE_R, CE_V);
    cr_assert(fabs(got - ref) <= 1e-6 * fabs(ref), "loss %.10g, want %.10g", got, ref);
    for (int i = 0; i < N; i++) dz[i] = 0.25f;
    ar_crossentropy_backward(dz, z, ce_target, CE_R, CE_V, 1.7f);
    unbias(dz, N, 0.25f);
    loss_t l = {d_crossentropy, zd, r, 1};
    fd_grad(want, &l, zd, N);
    expect_close(dz, want, N, 1e-5, "dlogits");
    for (int i = 0; i < CE_V; i++) cr_assert_eq(dz[CE_V + i], 0.0f, "a row with target -1 has no gradient");
}

Test(ops, logsumexp_large_values_do_not_overflow)
{
    float x[3] = {1000.0f, 1000.0f, -1000.0f};
    cr_assert(fabs(ar_logsumexp(x, 3) - (1000.0 + log(2.0))) < 1e-9);
}

/* Σ over counted rows of KL(softmax(a) || softmax(z)), in double; a fixed. */
static double ce_ref_logits[CE_R * CE_V];
static void d_kldiv(void *vc, double *out)
{
    const double *z = vc;
    out[0] = 0;
    for (int r = 0; r < CE_R; r++) {
        if (ce_target[r] < 0) continue;
        double sa = 0, sz = 0;
        for (int i = 0; i < CE_V; i++) sa += exp(ce_ref_logits[r * CE_V + i]), sz += exp(z[r * CE_V + i]);
        for (int i = 0; i < CE_V; i++) {
            double lp = ce_ref_logits[r * CE_V + i] - log(sa), lq = z[r * CE_V + i] - log(sz);
            out[0] += exp(lp) * (lp - lq);
        }
    }
}

Test(ops, kldiv)
{
    enum { N = CE_R * CE_V };
    float z[N], a[N], dz[N];
    double zd[N], r[1] = {0.9}, want[N], ref;
    fill(z, zd, N);
    fill(a, ce_ref_logits, N);
    for (int i = 0; i < N; i++) zd[i] = z[i] *= 5, ce_ref_logits[i] = a[i] *= 5;
    d_kldiv(zd, &ref);
    double got = ar_kldiv_forward(a, z, ce_target, CE_R, CE_V);
    cr_assert(ref > 0.01 && fabs(got - ref) <= 1e-6 * ref, "KL %.10g, want %.10g", got, ref);
    cr_assert(fabs(ar_kldiv_forward(a, a, ce_target, CE_R, CE_V)) < 1e-12, "KL(p||p) is 0");
    for (int i = 0; i < N; i++) dz[i] = 0.25f;
    ar_kldiv_backward(dz, a, z, ce_target, CE_R, CE_V, 0.9f);
    unbias(dz, N, 0.25f);
    loss_t l = {d_kldiv, zd, r, 1};
    fd_grad(want, &l, zd, N);
    expect_close(dz, want, N, 1e-5, "dlogits");
    for (int i = 0; i < CE_V; i++) cr_assert_eq(dz[CE_V + i], 0.0f, "a row with keep -1 has no gradient");
}
