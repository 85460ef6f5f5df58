/* test_block.c — decoder block forward/backward against a double-precision
 * reference block written independently here (naive loops, no BLAS), and
 * the block gradients against central finite differences of that reference. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "ops.h"

/* ------------------------------------------------------------ reference */

typedef struct {
    double *w[AR_NLINEAR], *b[AR_NLINEAR], *n1, *n2, *qn, *kn;
} dweights;

static void d_rmsnorm(double *o, const double *x, const double *w, int R, int C,
                      double eps)
{
    for (int r = 0; r < R; r++) {
        double ss = 0;
        for (int i = 0; i < C; i++) ss += x[r * C + i] * x[r * C + i];
        double s = 1 / sqrt(ss / C + eps);
        for (int i = 0; i < C; i++) o[r * C + i] = x[r * C + i] * s * w[i];
    }
}

static void d_linear(double *y, const double *x, const double *W, const double *b,
                     int R, int K, int N)
{
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double acc = b ? b[n] : 0;
            for (int k = 0; k < K; k++) acc += x[r * K + k] * W[n * K + k];
            y[r * N + n] = acc;
        }
}

/* Default RoPE (theta only), rotate_half pairs (i, i + HD/2). */
static void d_rope(double *x, int B, int T, int H, int HD, double theta)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                double *v = x + (((long)b * T + t) * H + h) * HD;
                for (int i = 0; i < HD / 2; i++) {
                    double a = t / pow(theta, 2.0 * i / HD), c = cos(a), s = sin(a);
                    double x0 = v[i], x1 = v[i + HD / 2];
                    v[i] = x0 * c - x1 * s;
                    v[i + HD / 2] = x1 * c + x0 * s;
                }
            }
}

static void d_attention(double *out, const double *q, const double *k,
                        const double *v, int B, int T, int NH, int NKV, int HD,
                        int window)
{
    double p[T];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            for (int t = 0; t < T; t++) {
                const double *qt = q + ((b * T + t) * NH + h) * HD;
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    const double *ks = k + ((b * T + s) * NKV + g) * HD;
                    double d = 0;
                    for (int i = 0; i < HD; i++) d += qt[i] * ks[i];
                    p[s] = (window > 0 && t - s >= window) ? -INFINITY : d / sqrt(HD);
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
                double *o = out + ((b * T + t) * NH + h) * HD;
                for (int i = 0; i < HD; i++) {
                    double acc = 0;
                    for (int s = 0; s <= t; s++)
                        acc += p[s] / sum * v[((b * T + s) * NKV + g) * HD + i];
                    o[i] = acc;
                }
            }
        }
}

static void d_block(const ar_config *c, const dweights *w, const double *x,
                    double *y, int B, int T)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim;
    int NH = c->n_heads, NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    double *n = malloc(sizeof(double) * BT * C), *h = malloc(sizeof(double) * BT * C);
    double *q = malloc(sizeof(double) * BT * QD), *ao = malloc(sizeof(double) * BT * QD);
    double *k = malloc(sizeof(double) * BT * KD), *v = malloc(sizeof(double) * BT * KD);
    double *g = malloc(sizeof(double) * BT * F), *u = malloc(sizeof(double) * BT * F);
    d_rmsnorm(n, x, w->n1, BT, C, c->rms_eps);
    d_linear(q, n, w->w[AR_Q], w->b[AR_Q], BT, C, QD);
    d_linear(k, n, w->w[AR_K], w->b[AR_K], BT, C, KD);
    d_linear(v, n, w->w[AR_V], w->b[AR_V], BT, C, KD);
    if (w->qn) d_rmsnorm(q, q, w->qn, BT * NH, HD, c->rms_eps);
    if (w->kn) d_rmsnorm(k, k, w->kn, BT * NKV, HD, c->rms_eps);
    d_rope(q, B, T, NH, HD, c->rope_theta);
    d_rope(k, B, T, NKV, HD, c->rope_theta);
    d_attention(ao, q, k, v, B, T, NH, NKV, HD, c->sliding_window);
    d_linear(h, ao, w->w[AR_O], w->b[AR_O], BT, QD, C);
    for (int i = 0; i < BT * C; i++) h[i] += x[i];
    d_rmsnorm(n, h, w->n2, BT, C, c->rms_eps);
    d_linear(g, n, w->w[AR_GATE], w->b[AR_GATE], BT, C, F);
    d_linear(u, n, w->w[AR_UP], w->b[AR_UP], BT, C, F);
    for (int i = 0; i < BT * F; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
    d_linear(y, g, w->w[AR_DOWN], w->b[AR_DOWN], BT, F, C);
    for (int i = 0; i < BT * C; i++) y[i] += h[i];
    free(n), free(h), free(q), free(ao), free(k), free(v), free(g), free(u);
}

/* -------------------------------------------------------------- fixture */

static unsigned rng_state = 12345;
static double urand(void) /* uniform [-0.5, 0.5) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) / 16777216.0 - 0.5;
}

/* The tiny config of the brief: C=16, NH=4, NKV=2, HD=4, F=24. */
static ar_config tiny(int bias, int qknorm, int window)
{
    ar_config c = {0};
    c.hidden = 16, c.intermediate = 24, c.n_heads = 4, c.n_kv_heads = 2;
    c.head_dim = 4, c.rms_eps = 1e-6f, c.rope_theta = 10000.0;
    c.qkv_bias = bias, c.qk_norm = qknorm, c.sliding_window = window;
    return c;
}

typedef struct {
    ar_block_weights w;
    dweights d;
    float *buf[AR_NLINEAR * 2 + 4];
    double *dbuf[AR_NLINEAR * 2 + 4];
    int nbuf;
} model;

/* One random tensor of n values (scale * U[-0.5,0.5) + offset), f32 and double. */
static float *rand_tensor(model *m, double **d, int n, double scale, double offset)
{
    float *f = malloc(sizeof(float) * n);
    *d = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) {
        f[i] = (float)(offset + scale * urand());
        (*d)[i] = f[i];
    }
    m->buf[m->nbuf] = f, m->dbuf[m->nbuf++] = *d;
    return f;
}

static void make_model(model *m, const ar_config *c)
{
    memset(m, 0, sizeof *m);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        m->w.w[i] = rand_tensor(m, &m->d.w[i], n * k, 2.0 / sqrt(k) * 1.7, 0);
        if (c->qkv_bias && i <= AR_V) m->w.b[i] = rand_tensor(m, &m->d.b[i], n, 0.4, 0);
    }
    m->w.attn_norm = rand_tensor(m, &m->d.n1, c->hidden, 0.4, 1);
    m->w.mlp_norm = rand_tensor(m, &m->d.n2, c->hidden, 0.4, 1);
    if (c->qk_norm) {
        m->w.q_norm = rand_tensor(m, &m->d.qn, c->head_dim, 0.4, 1);
        m->w.k_norm = rand_tensor(m, &m->d.kn, c->head_dim, 0.4, 1);
    }
}

static void free_model(model *m)
{
    for (int i = 0; i < m->nbuf; i++) free(m->buf[i]), free(m->dbuf[i]);
}

static double max_abs(const double *a, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* ---------------------------------------------------------------- forward */

enum { B = 2, T = 5 };

static void check_forward(ar_config c)
{
    model m;
    make_model(&m, &c);
    int n = B * T * c.hidden;
    float x[n], y[n], y2[n];
    double xd[n], yd[n];
    for (int i = 0; i < n; i++) xd[i] = x[i] = (float)(2 * urand());
    d_block(&c, &m.d, xd, yd, B, T);

    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 0), 0);
    cr_assert_eq(ar_block_forward(&c, &m.w, x, y, B, T, &ws), 0);
    /* f32 against double: rounding of ~100-term sums of O(1) values, so
     * 1e-5 relative to the output scale is ample and a wrong op is far off. */
    double scale = max_abs(yd, n);
    for (int i = 0; i < n; i++)
        cr_assert(fabs(y[i] - yd[i]) <= 1e-5 * scale, "y[%d] = %.7g, reference %.7g", i,
                  y[i], yd[i]);
    /* In place (y == x) gives the same result. */
    memcpy(y2, x, sizeof y2);
    cr_assert_eq(ar_block_forward(&c, &m.w, y2, y2, B, T, &ws), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(y2[i], y[i], "in-place y[%d]", i);
    /* A shorter batch in the same workspace (prefix of the rope tables). */
    d_block(&c, &m.d, xd, yd, 1, T - 2);
    cr_assert_eq(ar_block_forward(&c, &m.w, x, y2, 1, T - 2, &ws), 0);
    for (int i = 0; i < (T - 2) * c.hidden; i++)
        cr_assert(fabs(y2[i] - yd[i]) <= 1e-5 * scale, "short batch y[%d]", i);
    cr_assert_neq(ar_block_forward(&c, &m.w, x, y, B, T + 1, &ws), 0);
    ar_block_work_free(&ws);
    free_model(&m);
}

Test(block, forward_llama) { check_forward(tiny(0, 0, 0)); }
Test(block, forward_qkv_bias) { check_forward(tiny(1, 0, 0)); }
Test(block, forward_qk_norm) { check_forward(tiny(0, 1, 0)); }
Test(block, forward_sliding_window) { check_forward(tiny(1, 0, 2)); }

Test(block, linear_shapes_and_names)
{
    ar_config c = tiny(0, 0, 0);
    int n, k;
    ar_linear_shape(&c, AR_K, &n, &k);
    cr_assert(n == 8 && k == 16);
    ar_linear_shape(&c, AR_DOWN, &n, &k);
    cr_assert(n == 16 && k == 24);
    cr_assert_str_eq(ar_linear_names[AR_O], "self_attn.o_proj");
}

/* --------------------------------------------------------------- backward */

/* L = sum(y . r) of the double reference. */
static double d_loss(const ar_config *c, const dweights *w, const double *x,
                     const double *r)
{
    int n = B * T * c->hidden;
    double y[n], L = 0;
    d_block(c, w, x, y, B, T);
    for (int i = 0; i < n; i++) L += y[i] * r[i];
    return L;
}

/* Central difference of d_loss along element j of p (double, step 1e-5:
 * truncation ~1e-10, rounding ~1e-11 relative; both far below the check). */
static double fd(const ar_config *c, const dweights *w, const double *x,
                 const double *r, double *p, int j)
{
    const double h = 1e-5;
    double keep = p[j];
    p[j] = keep + h;
    double lp = d_loss(c, w, x, r);
    p[j] = keep - h;
    double lm = d_loss(c, w, x, r);
    p[j] = keep;
    return (lp - lm) / (2 * h);
}

/* |got - want| <= tol * max|want| over n values: f32 backward against
 * exact gradients; 1e-4 leaves ~50x margin over f32 rounding here, while a
 * missing or wrong term changes gradients by O(1) relative. */
static void expect_close(const float *got, const double *want, int n, double tol,
                         const char *what)
{
    double scale = max_abs(want, n);
    cr_assert(scale > 1e-3, "%s: gradient vanishes (scale %g)", what, scale);
    for (int j = 0; j < n; j++)
        cr_assert(fabs(got[j] - want[j]) <= tol * scale, "%s[%d] = %.7g, FD %.7g", what,
                  j, got[j], want[j]);
}

static void check_backward(ar_config c)
{
    model m;
    make_model(&m, &c);
    int n = B * T * c.hidden;
    float x[n], y[n], dy[n], dx[n];
    double xd[n], r[n], want[n];
    for (int i = 0; i < n; i++) xd[i] = x[i] = (float)(2 * urand());
    for (int i = 0; i < n; i++) r[i] = dy[i] = (float)(2 * urand());

    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_forward_train(&c, &m.w, x, y, B, T, &ws, &a), 0);
    float *dW[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) {
        int no, k;
        ar_linear_shape(&c, i, &no, &k);
        dW[i] = calloc((size_t)no * k, sizeof(float));
    }
    memset(dx, 0, sizeof dx);
    cr_assert_eq(ar_block_backward(&c, &m.w, &a, dy, dW, dx, &ws), 0);

    for (int i = 0; i < AR_NLINEAR; i++) {
        int no, k;
        ar_linear_shape(&c, i, &no, &k);
        double *fdw = malloc(sizeof(double) * no * k);
        for (int j = 0; j < no * k; j++) fdw[j] = fd(&c, &m.d, xd, r, m.d.w[i], j);
        expect_close(dW[i], fdw, no * k, 1e-4, ar_linear_names[i]);
        free(fdw);
    }
    for (int j = 0; j < n; j++) want[j] = fd(&c, &m.d, xd, r, xd, j);
    expect_close(dx, want, n, 1e-4, "dx");

    /* Gradients accumulate: a second backward doubles them. */
    float keep = dW[AR_DOWN][3];
    cr_assert_eq(ar_block_backward(&c, &m.w, &a, dy, dW, NULL, &ws), 0);
    cr_assert_float_eq(dW[AR_DOWN][3], 2 * keep, 1e-6 * fabsf(keep) + 1e-12);
    for (int i = 0; i < AR_NLINEAR; i++) free(dW[i]);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free_model(&m);
}

Test(block, backward_llama) { check_backward(tiny(0, 0, 0)); }
Test(block, backward_qkv_bias) { check_backward(tiny(1, 0, 0)); }
Test(block, backward_qk_norm) { check_backward(tiny(0, 1, 0)); }
Test(block, backward_qkv_bias_qk_norm) { check_backward(tiny(1, 1, 0)); }

Test(block, train_forward_matches_inference)
{
    ar_config c = tiny(1, 1, 0);
    model m;
    make_model(&m, &c);
    int n = B * T * c.hidden;
    float x[n], y[n], y2[n];
    for (int i = 0; i < n; i++) x[i] = (float)(2 * urand());
    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_forward(&c, &m.w, x, y, B, T, &ws), 0);
    cr_assert_eq(ar_block_forward_train(&c, &m.w, x, y2, B, T, &ws, &a), 0);
    for (int i = 0; i < n; i++) cr_assert_float_eq(y2[i], y[i], 1e-6, "y[%d]", i);
    ar_block_work no_train;
    cr_assert_eq(ar_block_work_init(&no_train, &c, B, T, 0), 0);
    float *dW[AR_NLINEAR] = {0};
    cr_assert_neq(ar_block_backward(&c, &m.w, &a, y, dW, NULL, &no_train), 0);
    ar_block_work_free(&no_train);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free_model(&m);
}
