/* test_block_fused.c — the Phi-3 and GLM-4 blocks (block_fused.h) on tiny
 * random configs: the f32 forward against refblock.c's double reference
 * (rb_fused_block_forward) within its Monte Carlo tolerance; inference,
 * in-place and training forwards equal; the weight and input gradients
 * against central finite differences of the reference forward along random
 * directions; the partial rotary's backward the transpose of its forward. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "block_desc.h"
#include "block_fused.h"
#include "config.h"
#include "error.h"
#include "fixture.h"
#include "refblock.h"
#include "ops.h"
#include "rope_scaling.h"

enum { B = 2, T = 6 };

static unsigned rng_state = 777;
static double urand(void) /* uniform [-0.5, 0.5) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) / 16777216.0 - 0.5;
}

/* C 32, 4 heads of 8 (2 KV), F 24. Phi-3: 6 of 8 dims rotate, longrope
 * with T beyond the original context 4 (long factors, attention factor);
 * GLM-4: half rotates, interleaved, q/k/v biases, post norms. */
static ar_config tiny(int glm)
{
    const char *phi3 = "{\"architectures\":[\"Phi3ForCausalLM\"],\"hidden_size\":32,\"intermediate_size\":24,"
                       "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":8,"
                       "\"max_position_embeddings\":64,\"original_max_position_embeddings\":4,"
                       "\"partial_rotary_factor\":0.75,\"rope_scaling\":{\"type\":\"longrope\","
                       "\"short_factor\":[1,1.2,1.5],\"long_factor\":[1,2,4]}}";
    const char *glm4 = "{\"architectures\":[\"Glm4ForCausalLM\"],\"hidden_size\":32,\"intermediate_size\":24,"
                       "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":8,"
                       "\"head_dim\":8,\"partial_rotary_factor\":0.5,\"rms_norm_eps\":1e-6}";
    ar_config c;
    cr_assert_eq(ar_config_parse(&c, glm ? glm4 : phi3, "tiny"), 0, "%s", ar_last_error());
    return c;
}

typedef struct {
    ar_config c;
    ar_block_desc d;
    ar_block_weights w;
    rb_weights r;
} fam;

static float *rnd(int n, double scale, double offset)
{
    float *f = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) f[i] = (float)(offset + scale * urand());
    return f;
}

static void make(fam *f, int glm)
{
    f->c = tiny(glm);
    cr_assert_eq(ar_block_desc_init(&f->d, &f->c), 0);
    cr_assert_eq(ar_block_weights_init(&f->w, f->d.nlinear), 0);
    for (int i = 0; i < f->d.nlinear; i++) {
        const ar_linear_desc *l = &f->d.lin[i];
        f->w.w[i] = rnd(l->n_out * l->k_in, 3.4 / sqrt(l->k_in), 0);
        if (l->has_bias) f->w.b[i] = rnd(l->n_out, 0.4, 0);
    }
    int C = f->c.hidden;
    f->w.attn_norm = rnd(C, 0.4, 1), f->w.mlp_norm = rnd(C, 0.4, 1);
    if (f->c.post_norms) f->w.attn_post_norm = rnd(C, 0.4, 1), f->w.mlp_post_norm = rnd(C, 0.4, 1);
    rb_weights_from(&f->r, &f->w, &f->c);
}

static void unmake(fam *f)
{
    for (int i = 0; i < f->d.nlinear; i++) free(f->w.w[i]), free(f->w.b[i]);
    free(f->w.attn_norm), free(f->w.mlp_norm), free(f->w.attn_post_norm), free(f->w.mlp_post_norm);
    ar_block_weights_release(&f->w);
    rb_weights_free(&f->r);
    ar_block_desc_free(&f->d);
}

typedef struct {
    const fam *f;
    const float *x;
} run_ctx;

static void run_ref(void *ctx, double *out)
{
    const run_ctx *r = ctx;
    long n = (long)B * T * r->f->c.hidden;
    fx_ev *e = rb_exact(r->x, n);
    rb_fused_block_forward(&r->f->c, &r->f->r, e, e, B, T);
    for (long i = 0; i < n; i++) out[i] = e[i].v;
    free(e);
}

static void check_forward(int glm)
{
    fam f;
    make(&f, glm);
    int n = B * T * f.c.hidden;
    float *x = rnd(n, 4, 0), y[n], y2[n];
    double want[n];
    run_ctx rc = {&f, x};
    double tol = 2 * fx_mca_tolerance(run_ref, &rc, n, want);
    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &f.c, B, T, 1), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_acts_init(&a, &f.c, B, T), 0);
    cr_assert_eq(f.d.forward_train(&f.c, &f.w, x, y, B, T, &ws, &a), 0, "%s", ar_last_error());
    double worst = 0;
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs(y[i] - want[i]));
    cr_log_info("%s forward: max |diff| %.3g, tolerance %.3g", f.d.family, worst, tol);
    cr_assert_leq(worst, tol, "%s forward: max diff %g > tolerance %g", f.d.family, worst, tol);
    cr_assert_eq(f.d.forward(&f.c, &f.w, x, y2, B, T, &ws), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(y2[i], y[i], "inference y[%d]", i);
    memcpy(y2, x, sizeof y2);
    cr_assert_eq(f.d.forward(&f.c, &f.w, y2, y2, B, T, &ws), 0);
    for (int i = 0; i < n; i++) cr_assert_eq(y2[i], y[i], "in-place y[%d]", i);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free(x);
    unmake(&f);
}

Test(block_fused, phi3_forward) { check_forward(0); }
Test(block_fused, glm4_forward) { check_forward(1); }

/* L = sum r * y of the double reference forward. */
static double ref_loss(const fam *f, const float *x, const double *r, double *mag)
{
    long n = (long)B * T * f->c.hidden;
    fx_set_mode(FX_VALUES, 0);
    fx_ev *e = rb_exact(x, n);
    rb_fused_block_forward(&f->c, &f->r, e, e, B, T);
    double L = 0, m = 0;
    for (long i = 0; i < n; i++) L += e[i].v * r[i], m += fabs(e[i].v * r[i]);
    free(e);
    fx_set_mode(FX_BOUNDS, 0);
    *mag = m;
    return L;
}

/* Directional derivative of ref_loss along d of the double tensor p
 * (weights: the reference's copy; x: xd, mirrored into the f32 x the
 * reference reads), central differences with their error bound. */
static double fd(fam *f, float *x, double *xd, const double *r, double *p, const double *d, int n, int is_x,
                 double *err)
{
    const double h = 1e-4, step[4] = {h, -h, 2 * h, -2 * h};
    double *keep = malloc(sizeof(double) * n), v[4], mag = 0, m;
    memcpy(keep, p, sizeof(double) * n);
    for (int s = 0; s < 4; s++) {
        for (int j = 0; j < n; j++) p[j] = keep[j] + step[s] * d[j];
        /* the reference reads x as f32 exact values: keep x on a grid where +-h, +-2h are exact */
        if (is_x) for (int j = 0; j < n; j++) x[j] = (float)xd[j];
        v[s] = ref_loss(f, x, r, &m);
        mag = fmax(mag, m);
    }
    memcpy(p, keep, sizeof(double) * n);
    if (is_x) for (int j = 0; j < n; j++) x[j] = (float)xd[j];
    free(keep);
    return fx_central_diff(v[0], v[1], v[2], v[3], h, mag, err);
}

/* The f32 gradient g [n] along 3 random directions d against finite
 * differences. Tolerance: the differences' own error bound plus the f32
 * backward's rounding, bounded as gamma_1024 times sum |g_i d_i| times 8:
 * no gradient element here passes through more than 1024 f32 roundings
 * (linear sums of at most 64 terms, through at most 6 products, norms and
 * the attention on the way), and 8 covers cancellation among the terms of a
 * sum (terms up to 8 times the result). */
static void check_dir(fam *f, float *x, double *xd, const double *r, const float *g, double *p, int n, int is_x,
                      const char *what)
{
    double *d = malloc(sizeof(double) * n);
    for (int t = 0; t < 3; t++) {
        double dot = 0, mag = 0, err;
        for (int j = 0; j < n; j++) {
            /* x directions on a coarse binary grid so that x +- k h stays exactly representable in f32 */
            d[j] = is_x ? ldexp(round(urand() * 64), -6) : urand();
            dot += g[j] * d[j], mag += fabs(g[j] * d[j]);
        }
        double want = fd(f, x, xd, r, p, d, n, is_x, &err);
        double tol = err + 8 * fx_gamma(1024) * mag;
        cr_log_info("%s %s dir %d: %.9g vs fd %.9g (tol %.3g)", f->d.family, what, t, dot, want, tol);
        cr_assert(fabs(dot - want) <= tol, "%s %s direction %d: gradient %.9g, finite differences %.9g (tol %.3g)",
                  f->d.family, what, t, dot, want, tol);
    }
    free(d);
}

static void check_backward(int glm)
{
    fam f;
    make(&f, glm);
    int n = B * T * f.c.hidden, nl = f.d.nlinear;
    float *x = rnd(n, 4, 0), y[n], dy[n], dx[n];
    double r[n], xd[n];
    for (int i = 0; i < n; i++) r[i] = dy[i] = (float)(2 * urand()), xd[i] = x[i];
    ar_block_work ws;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &f.c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a, &f.c, B, T), 0);
    cr_assert_eq(f.d.forward_train(&f.c, &f.w, x, y, B, T, &ws, &a), 0);
    float *dW[AR_NLINEAR] = {0};
    for (int i = 0; i < nl; i++) dW[i] = calloc((size_t)f.d.lin[i].n_out * f.d.lin[i].k_in, sizeof(float));
    memset(dx, 0, sizeof dx);
    cr_assert_eq(f.d.backward(&f.c, &f.w, &a, dy, dW, dx, NULL, &ws), 0, "%s", ar_last_error());
    for (int i = nl - 1; i >= 0; i--)   /* from the output back, as the gradient flows */
        check_dir(&f, x, xd, r, dW[i], f.r.w[i], f.d.lin[i].n_out * f.d.lin[i].k_in, 0, f.d.lin[i].name);
    check_dir(&f, x, xd, r, dx, xd, n, 1, "dx");
    for (int i = 0; i < nl; i++) free(dW[i]);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
    free(x);
    unmake(&f);
}

Test(block_fused, phi3_backward_vs_finite_differences) { check_backward(0); }
Test(block_fused, glm4_backward_vs_finite_differences) { check_backward(1); }

/* <R x, y> = <x, R^T y>: the backward rotation is the forward's transpose,
 * for both pair layouts (sums of 24 products: gamma_24 of the magnitudes). */
Test(block_fused, partial_rope_backward_is_transpose)
{
    for (int inter = 0; inter < 2; inter++) {
        ar_config c = tiny(inter);
        int H = 2, HD = c.head_dim, n = T * H * HD, H2 = c.rope_dim / 2;
        float cs[T * H2], sn[T * H2], *x = rnd(n, 2, 0), *y = rnd(n, 2, 0), rx[n], ry[n];
        ar_rope_config_tables(cs, sn, &c, c.rope_dim, T);
        memcpy(rx, x, sizeof rx), memcpy(ry, y, sizeof ry);
        ar_rope_slice(rx, cs, sn, 1, T, H, (long)H * HD, HD, 0, c.rope_dim, c.rope_interleaved, 1);
        ar_rope_slice(ry, cs, sn, 1, T, H, (long)H * HD, HD, 0, c.rope_dim, c.rope_interleaved, -1);
        double a = 0, b = 0, m = 0;
        for (int i = 0; i < n; i++) a += (double)rx[i] * y[i], b += (double)x[i] * ry[i], m += fabs(x[i] * y[i]);
        /* each rotated value is two products and a sum (3 roundings) of |x| |c or s| <= |x| * factor */
        double s = 0;
        for (int i = 0; i < T * H2; i++) s = fmax(s, fmax(fabs(cs[i]), fabs(sn[i])));
        cr_assert_leq(fabs(a - b), 2 * 2 * fx_gamma(3) * m * fmax(1, s), "layout %d: %g vs %g", inter, a, b);
        /* the pass-through dims are untouched */
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int k = c.rope_dim; k < HD; k++)
                    cr_assert_eq(rx[(t * H + h) * HD + k], x[(t * H + h) * HD + k]);
        free(x), free(y);
    }
}
