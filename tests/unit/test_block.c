/* test_block.c — decoder block forward/backward against the double-precision
 * reference block of refblock.c (naive loops, no BLAS) within the error
 * bound of the f32 block it carries (fixture.h), and the reference
 * gradients against central finite differences of the reference forward. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "fixture.h"
#include "ops.h"
#include "refblock.h"

/* ------------------------------------------------------------ reference */

/* The reference block is refblock.c's: double, naive loops, with the error
 * bound of the f32 block's rounding next to every value. */
typedef rb_weights dweights;

static void d_block(const ar_config *c, const dweights *w, const double *x, double *y, int B, int T)
{
    long n = (long)B * T * c->hidden;
    fx_ev *e = rb_exact_d(x, n);
    rb_block_forward(c, w, e, e, B, T);
    for (long i = 0; i < n; i++) y[i] = e[i].v;
    free(e);
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
    cr_assert_eq(ar_block_weights_init(&m->w, AR_NLINEAR), 0);
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

/* ---------------------------------------------------------------- forward */

enum { B = 2, T = 5 };

/* The training forward checked stage by stage against the reference ops
 * (refblock.h: each stage from the f32 stage before it, within its
 * rigorous bound); the inference forward, in place or not, equals it
 * exactly: the same ops on the same shapes in the same order (same machine,
 * kernel and thread count). A worst-case bound carried through the whole
 * block instead would reach ~3e-3 relative here: too loose to be sharp. */
static void check_forward(ar_config c)
{
    model m;
    make_model(&m, &c);
    int n = B * T * c.hidden;
    float x[n], y[n], y2[n];
    for (int i = 0; i < n; i++) x[i] = (float)(2 * urand());

    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_forward_train(&c, &m.w, x, y, B, T, &ws, &a), 0);
    rb_check_block_stages(&c, &m.d, &a, y);
    cr_assert_eq(ar_block_forward(&c, &m.w, x, y2, B, T, &ws), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(y2[i], y[i], "inference y[%d]", i);
    memcpy(y2, x, sizeof y2);
    cr_assert_eq(ar_block_forward(&c, &m.w, y2, y2, B, T, &ws), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(y2[i], y[i], "in-place y[%d]", i);
    /* A shorter batch in the same workspace (prefix of the rope tables). */
    cr_assert_eq(ar_block_forward_train(&c, &m.w, x, y, 1, T - 2, &ws, &a), 0);
    rb_check_block_stages(&c, &m.d, &a, y);
    cr_assert_eq(ar_block_forward(&c, &m.w, x, y2, 1, T - 2, &ws), 0);
    for (int i = 0; i < (T - 2) * c.hidden; i++) cr_assert_eq(y2[i], y[i], "short batch y[%d]", i);
    cr_assert_neq(ar_block_forward(&c, &m.w, x, y, B, T + 1, &ws), 0);
    ar_block_acts_free(&a);
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

/* L = sum(y . r) of the double reference; *mag = sum |y r|. */
static double d_loss(const ar_config *c, const dweights *w, const double *x, const double *r, double *mag)
{
    int n = B * T * c->hidden;
    double y[n], L = 0, m = 0;
    d_block(c, w, x, y, B, T);
    for (int i = 0; i < n; i++) L += y[i] * r[i], m += fabs(y[i] * r[i]);
    *mag = m;
    return L;
}

/* Central difference of d_loss along direction d of p [n] (steps 1e-5 and
 * 2e-5), with its error bound (fixture.h fx_central_diff). */
static double fd(const ar_config *c, const dweights *w, const double *x, const double *r, double *p,
                 const double *d, int n, double *err)
{
    const double h = 1e-5, step[4] = {h, -h, 2 * h, -2 * h};
    double *keep = malloc(sizeof(double) * n), f[4], mag = 0, m;
    memcpy(keep, p, sizeof(double) * n);
    for (int s = 0; s < 4; s++) {
        for (int j = 0; j < n; j++) p[j] = keep[j] + step[s] * d[j];
        f[s] = d_loss(c, w, x, r, &m);
        mag = fmax(mag, m);
    }
    memcpy(p, keep, sizeof(double) * n);
    free(keep);
    return fx_central_diff(f[0], f[1], f[2], f[3], h, mag, err);
}

/* The f32 gradient against the reference backward run on the f32
 * forward's saved activations (saved: its bound covers the f32 backward's
 * rounding only), element by element; and the reference backward run on
 * the exact forward (want) against finite differences of the reference
 * forward along 3 random directions of p (every element weighs in, so a
 * wrong or missing term shows; per element would cost a block forward pair
 * per weight). */
static void check_grad(const ar_config *c, const dweights *w, const double *x, const double *r, const float *got,
                       const fx_ev *saved, const fx_ev *want, double *p, int n, const char *what)
{
    for (int j = 0; j < n; j++) fx_assert_within(got[j], saved[j].v, saved[j].e, "%s[%d]", what, j);
    double *d = malloc(sizeof(double) * n);
    for (int t = 0; t < 3; t++) {
        double dot = 0, mag = 0, err;
        for (int j = 0; j < n; j++) d[j] = 2 * urand(), dot += want[j].v * d[j], mag += fabs(want[j].v * d[j]);
        double g = fd(c, w, x, r, p, d, n, &err);
        fx_assert_within(dot, g, err + n * 0x1p-53 * mag, "%s: reference gradient along direction %d vs finite differences",
                         what, t);
    }
    free(d);
}

static void check_backward(ar_config c)
{
    model m;
    make_model(&m, &c);
    int n = B * T * c.hidden;
    float x[n], y[n], dy[n], dx[n];
    double xd[n], r[n];
    for (int i = 0; i < n; i++) xd[i] = x[i] = (float)(2 * urand());
    for (int i = 0; i < n; i++) r[i] = dy[i] = (float)(2 * urand());

    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0);
    cr_assert_eq(ar_block_forward_train(&c, &m.w, x, y, B, T, &ws, &a), 0);
    float *dW[AR_NLINEAR];
    fx_ev *eW[AR_NLINEAR], *sW[AR_NLINEAR], *ex = malloc(sizeof(fx_ev) * n), *sx = malloc(sizeof(fx_ev) * n);
    fx_ev *xe = rb_exact(x, n), *dye = rb_exact(dy, n);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int no, k;
        ar_linear_shape(&c, i, &no, &k);
        dW[i] = calloc((size_t)no * k, sizeof(float));
        eW[i] = malloc(sizeof(fx_ev) * no * k), sW[i] = malloc(sizeof(fx_ev) * no * k);
    }
    memset(dx, 0, sizeof dx);
    cr_assert_eq(ar_block_backward(&c, &m.w, &a, dy, dW, dx, &ws), 0);
    rb_block_backward(&c, &m.d, xe, dye, B, T, eW, ex);
    rb_block_backward_saved(&c, &m.d, &a, dye, sW, sx);

    for (int i = 0; i < AR_NLINEAR; i++) {
        int no, k;
        ar_linear_shape(&c, i, &no, &k);
        check_grad(&c, &m.d, xd, r, dW[i], sW[i], eW[i], m.d.w[i], no * k, ar_linear_names[i]);
    }
    check_grad(&c, &m.d, xd, r, dx, sx, ex, xd, n, "dx");

    /* Gradients accumulate: a second backward adds the same sum again, with
     * the previous value as one more term. keep is within b of the exact S;
     * the second sum's rounding is at most twice the first's (gamma_{n+1} <=
     * 2 gamma_n) plus gamma_{n+1} |keep|: |dW - 2S| <= 3b + gamma_{n+1} (|S| + b). */
    float keep = dW[AR_DOWN][3];
    cr_assert_eq(ar_block_backward(&c, &m.w, &a, dy, dW, NULL, &ws), 0);
    fx_ev S = sW[AR_DOWN][3];
    fx_assert_within(dW[AR_DOWN][3], 2 * S.v, 3 * S.e + fx_gamma(B * T + 1) * (fabs(S.v) + S.e),
                     "dW_down[3] twice (once %g)", keep);
    for (int i = 0; i < AR_NLINEAR; i++) free(dW[i]), free(eW[i]), free(sW[i]);
    free(ex), free(sx), free(xe), free(dye);
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
    /* exact: the same ops on the same shapes in the same order (same
     * machine, kernel and thread count); only where P is kept differs */
    for (int i = 0; i < n; i++) cr_assert_eq(y2[i], y[i], "y[%d]", i);
    ar_block_work no_train;
    cr_assert_eq(ar_block_work_init(&no_train, &c, B, T, 0), 0);
    float *dW[AR_NLINEAR] = {0};
    cr_assert_neq(ar_block_backward(&c, &m.w, &a, y, dW, NULL, &no_train), 0);
    ar_block_work_free(&no_train);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free_model(&m);
}
