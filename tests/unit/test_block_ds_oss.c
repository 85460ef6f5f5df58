#include <stdio.h>
/* test_block_ds_oss.c — the backward of the whole "deepseek" and "gpt_oss"
 * blocks (block_deepseek.h, block_gptoss.h) against central differences of
 * their own forward. Their parts are checked against double references
 * elsewhere (test_attn_mla.c, test_attn_sinks.c, test_moe.c); this checks
 * the composition: residuals, both norms, the MLA latents (q_a, q_b or q,
 * kv_a, kv_b, o), gpt-oss's biased attention with sinks and its sliding
 * window, the routers (their effect on dx through the routing weights; the
 * routers themselves are full precision and get no gradient), the experts
 * with their biases and the shared expert.
 *
 * Blocks: every layer of the checked-in tiny models
 * (tests/fixtures/moe/tiny/): deepseek_v3 (layer 0 dense, layer 1 MoE with
 * q LoRA, sigmoid + correction bias + groups, scale 2.5), deepseek_v2 (no q
 * LoRA, group-limited greedy softmax), gpt_oss (layer 0 sliding window 8,
 * layer 1 full; T = 12 > 8 so the window cuts). Linear weights and routers
 * are rescaled to rms 1/√k_in so pre-activations are O(1) (the files hold
 * small random weights, where the block is almost the identity).
 *
 * Check, per weight tensor and for x, along a random direction v (uniform
 * [-1, 1]): g·v (the backward's gradient, summed in double) against
 * D(h) = (φ(h) − φ(−h)) / 2h, φ(t) = Σ dy · block(θ + t v) summed in double,
 * h = 1e-2 · rms(θ). Error bound, three terms:
 *  - truncation: |D(h) − D(2h)| (Richardson: D(h)'s truncation error is
 *    (D(2h) − D(h)) / 3 to leading order, so this covers it three times);
 *  - the f32 forward's rounding, divided by h: measured, as fixture.h's Monte
 *    Carlo tolerances are, from the same data: φ at NOISE tiny steps
 *    t = ±h·2^-10·{1..4} (where φ's curvature moves it by far less than one
 *    f32 rounding) differs from φ(0) + t·D(h) only by rounding (of θ + t v to
 *    f32 and of the forward); FX_MCA_FACTOR times the largest such
 *    difference, over h, bounds what rounding adds to D(h)
 *    ((φ(h) − φ(−h)) differs from exact by at most twice one deviation);
 *  - the f32 gradient's own error, worst case: γ_N · Σ|g v|, N = a generous
 *    count of the roundings along the longest path (every contraction
 *    length, the norms, softmaxes and transcendental functions, doubled).
 * Top-k routing is piecewise: every evaluation must route every token to the
 * same experts (through the block's observer: each expert's gathered ln2 rows
 * must be, row by row, nearest to the same token's rows of the unperturbed
 * forward); where a selection flips within ±2h the step is divided by 4, so
 * no jump hides in the difference. The bound must also be below a tenth of
 * Σ|g v|, else the check would prove nothing. Checked to fail: the router
 * logits' gradient scaled by 0.9 in moe.c fails both MoE layers' x checks
 * (g·v 13.32 vs D(h) 12.25, bound 0.17). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "block_desc.h"
#include "error.h"
#include "fixture.h"
#include "model.h"

enum { B = 2, T = 12, MAXL = 64 };
#ifndef H_REL
#define H_REL 1e-2
#endif
enum { NOISE = 8 };

static unsigned rng = 4242;
static double urand(void) /* uniform [-1, 1) */
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) / 8388608.0 - 1.0;
}

/* ---- routing through the observer ----------------------------------------- */

/* The rows each expert's gate reads in one forward (the linears whose input
 * is routed and who lead their input group). */
typedef struct {
    int n;                      /* routed gates */
    int lin[MAXL];
    long rows[MAXL];
    float *x[MAXL];             /* [rows, C] copies */
} routing;

typedef struct {
    const ar_block_desc *d;
    routing *r;
} obs_ctx;

static void observe(void *ctx, int i, const float *x, long rows, int k)
{
    obs_ctx *o = ctx;
    const ar_block_desc *d = o->d;
    if (d->input_kind[d->lin[i].input] != AR_INPUT_ROUTED || ar_block_desc_group(d, i) != i) return;
    if (strncmp(d->input_names[d->lin[i].input], "ln2", 3)) return;
    routing *r = o->r;
    cr_assert_lt(r->n, MAXL);
    r->lin[r->n] = i, r->rows[r->n] = rows;
    r->x[r->n] = malloc(sizeof(float) * (rows ? rows : 1) * k);
    memcpy(r->x[r->n], x, sizeof(float) * rows * k);
    r->n++;
}

static void routing_free(routing *r)
{
    for (int j = 0; j < r->n; j++) free(r->x[j]);
    r->n = 0;
}

static double dist2(const float *a, const float *b, int C)
{
    double s = 0;
    for (int c = 0; c < C; c++) s += ((double)a[c] - b[c]) * ((double)a[c] - b[c]);
    return s;
}

/* Same experts for the same tokens: equal row counts, and each gathered row
 * of r has, among all baseline rows, the baseline row at its own place as a
 * nearest one (a token routed to two experts has two equal baseline rows). */
static int same_routing(const routing *base, const routing *r, int C, const char *what)
{
    cr_assert_eq(r->n, base->n, "%s: routed gates observed", what);
    for (int j = 0; j < r->n; j++) {
        cr_assert_eq(r->lin[j], base->lin[j]);
        if (r->rows[j] != base->rows[j]) return 0;
        for (long i = 0; i < r->rows[j]; i++) {
            const float *p = r->x[j] + i * C;
            double own = dist2(p, base->x[j] + i * C, C), best = own;
            for (int jj = 0; jj < base->n; jj++)
                for (long ii = 0; ii < base->rows[jj]; ii++) best = fmin(best, dist2(p, base->x[jj] + ii * C, C));
            if (own > best) return 0;
        }
    }
    return 1;
}

/* ---- one block --------------------------------------------------------------- */

typedef struct {
    ar_config c;
    const ar_block_desc *d;
    ar_block_weights w;
    float *x, *dy, *y;
    long n;
    ar_block_work ws;
    obs_ctx oc;
    int N;                      /* roundings along the longest path */
} blk;

/* φ = Σ dy·y of the inference forward, the routing observed into r; *ymax = ‖y‖∞. */
static double phi(blk *b, routing *r, double *ymax)
{
    b->oc.r = r;
    cr_assert_eq(b->d->forward(&b->c, &b->w, b->x, b->y, B, T, &b->ws), 0, "%s", ar_last_error());
    double s = 0, m = 0;
    for (long i = 0; i < b->n; i++) s += (double)b->dy[i] * b->y[i], m = fmax(m, fabs(b->y[i]));
    *ymax = m;
    return s;
}

static double gamma_f32(int n) { return n * 0x1p-24 / (1 - n * 0x1p-24); }

/* φ at p = keep + t v (rounded to f32); 0 when the routing differs from base. */
static int phi_at(blk *b, float *p, const float *keep, const double *v, long np, double t, const routing *base,
                  double *f)
{
    for (long j = 0; j < np; j++) p[j] = (float)(keep[j] + t * v[j]);
    double m;
    routing r = {0};
    *f = phi(b, &r, &m);
    int same = same_routing(base, &r, b->c.hidden, "");
    routing_free(&r);
    return same;
}

/* Central difference D(h) of φ along v with its bound (module comment);
 * 0 when a selection flipped within ±2h. */
static int central_diff(blk *b, float *p, const float *keep, const double *v, long np, double h, const routing *base,
                        double *d1, double *bound, double *rich, double *rnd_err)
{
    const double t4[4] = {h, -h, 2 * h, -2 * h};
    double f[4], f0, fe;
    for (int s = 0; s < 4; s++)
        if (!phi_at(b, p, keep, v, np, t4[s], base, &f[s])) return 0;
    cr_assert(phi_at(b, p, keep, v, np, 0, base, &f0));
    *d1 = (f[0] - f[1]) / (2 * h);
    double d2 = (f[2] - f[3]) / (4 * h), noise = 0;
    /* rounding noise: tiny steps, where φ is linear far below the noise */
    for (int s = 0; s < NOISE; s++) {
        double t = ldexp(h, -10) * (s / 2 + 1) * (s & 1 ? -1 : 1);
        cr_assert(phi_at(b, p, keep, v, np, t, base, &fe));
        noise = fmax(noise, fabs(fe - f0 - t * *d1));
    }
    *rich = fabs(*d1 - d2), *rnd_err = FX_MCA_FACTOR * noise / h;
    *bound = *rich + *rnd_err;
    return 1;
}

/* p [np] along a random direction: the backward's g·v against D(h). */
static void check_dir(blk *b, float *p, const float *g, long np, const routing *base, const char *what)
{
    double *v = malloc(sizeof(double) * np), dot = 0, gv = 0, rms = 0;
    float *keep = malloc(sizeof(float) * np);
    memcpy(keep, p, sizeof(float) * np);
    for (long j = 0; j < np; j++) {
        v[j] = urand();
        dot += (double)g[j] * v[j], gv += fabs(g[j] * v[j]), rms += (double)p[j] * p[j];
    }
    rms = sqrt(rms / np);
    double h = H_REL * (rms > 0 ? rms : 1), d1 = 0, bound = 0, rich = 0, rnd_err = 0;
    int tries = 0;
    while (!central_diff(b, p, keep, v, np, h, base, &d1, &bound, &rich, &rnd_err)) {
        cr_assert_lt(++tries, 6, "%s: a routing selection flips within every step down to %.3g; choose other data", what,
                     h);
        h /= 4; /* a top-k selection flipped within ±2h: closer */
    }
    memcpy(p, keep, sizeof(float) * np);
    double grad_err = gamma_f32(b->N) * gv;
    bound += grad_err;
    cr_log_info("%s: g.v %.6g, D(h) %.6g, |diff| %.3g, bound %.3g (Richardson %.3g, f32 rounding %.3g, gradient %.3g; "
                "h %.3g)", what, dot, d1, fabs(dot - d1), bound, rich, rnd_err, grad_err, h);
    cr_assert(bound < 0.1 * gv, "%s: bound %.3g is not below a tenth of sum |g v| %.3g: the check proves nothing", what,
              bound, gv);
    cr_assert(fabs(dot - d1) <= bound, "%s: backward g.v %.9g vs central difference %.9g, bound %.3g", what, dot, d1,
              bound);
    free(v), free(keep);
}

static float *rnd(long n, double scale)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) p[i] = (float)(scale * urand());
    return p;
}

/* Scale w [n] (rows of k) to rms 1/√k: unit gain on O(1) inputs. */
static void unit_gain(float *w, long n, int k)
{
    double s = 0;
    for (long j = 0; j < n; j++) s += (double)w[j] * w[j];
    double f = s > 0 ? 1 / sqrt(s / n * k) : 1;
    for (long j = 0; j < n; j++) w[j] = (float)(w[j] * f);
}

static void check_layer(const char *model, int layer)
{
    omp_set_num_threads(1); /* blocks of 24 tokens: threads only wait for each other on a loaded machine */
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/moe/tiny/%s", model);
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    blk b = {0};
    ar_config_for_layer(&b.c, ar_model_config(m), layer);
    b.d = ar_model_layer_desc(m, layer);
    cr_assert_eq(ar_block_weights_alloc_layer(&b.w, ar_model_config(m), layer), 0, "%s", ar_last_error());
    cr_assert_eq(ar_model_load_block(m, layer, &b.w), 0, "%s", ar_last_error());
    const ar_block_desc *d = b.d;
    for (int i = 0; i < d->nlinear; i++) unit_gain(b.w.w[i], (long)d->lin[i].n_out * d->lin[i].k_in, d->lin[i].k_in);
    if (b.w.router) unit_gain(b.w.router, (long)b.c.moe.n_experts * b.c.hidden, b.c.hidden);
    int C = b.c.hidden;
    b.n = (long)B * T * C;
    b.x = rnd(b.n, 1.5), b.dy = rnd(b.n, 1), b.y = malloc(sizeof(float) * b.n);
    /* contraction lengths and fixed-size steps (norms, softmax sums, exp/log/
     * sqrt, rope tables, top-k weights), each counted once, doubled */
    const ar_config *c = &b.c;
    int F = c->intermediate > c->moe.expert_intermediate ? c->intermediate : c->moe.expert_intermediate;
    if (c->moe.shared_intermediate > F) F = c->moe.shared_intermediate;
    b.N = 2 * (6 * C + 2 * c->mla.q_lora_rank + 2 * c->mla.kv_lora_rank + c->n_heads * c->head_dim + 2 * T +
               c->n_heads * (c->mla.v_head_dim ? c->mla.v_head_dim : c->head_dim) + c->moe.n_experts + 2 * F + 64);
    cr_assert_eq(ar_block_work_init(&b.ws, &b.c, B, T, 1), 0, "%s", ar_last_error());
    b.oc.d = d;
    b.ws.observe = observe, b.ws.observe_ctx = &b.oc;
    ar_block_acts a;
    cr_assert_eq(ar_block_acts_init(&a, &b.c, B, T), 0, "%s", ar_last_error());
    routing base = {0};
    b.oc.r = &base;
    cr_assert_eq(d->forward_train(&b.c, &b.w, b.x, b.y, B, T, &b.ws, &a), 0, "%s", ar_last_error());
    cr_assert_eq(base.n, c->moe.n_experts && ar_config_layer_moe(ar_model_config(m), layer) ? c->moe.n_experts : 0,
                 "%s layer %d: routed gates observed", model, layer);
    routing chk = {0};
    double ym;
    b.oc.r = &chk;
    phi(&b, &chk, &ym); /* the inference forward routes as the training one */
    cr_assert(same_routing(&base, &chk, C, "inference forward"), "%s layer %d: the inference forward routes otherwise",
              model, layer);
    routing_free(&chk);
    b.ws.observe = NULL;
    float **dW = calloc(d->nlinear, sizeof *dW), *dx = calloc(b.n, sizeof(float));
    for (int i = 0; i < d->nlinear; i++) dW[i] = calloc((size_t)d->lin[i].n_out * d->lin[i].k_in, sizeof(float));
    cr_assert_eq(d->backward(&b.c, &b.w, &a, b.dy, dW, dx, NULL, &b.ws), 0, "%s", ar_last_error());
    b.ws.observe = observe;
    char what[160];
    snprintf(what, sizeof what, "%s layer %d: x", model, layer);
    check_dir(&b, b.x, dx, b.n, &base, what);
    for (int i = 0; i < d->nlinear; i++) {
        snprintf(what, sizeof what, "%s layer %d: %s", model, layer, d->lin[i].name);
        check_dir(&b, b.w.w[i], dW[i], (long)d->lin[i].n_out * d->lin[i].k_in, &base, what);
    }
    routing_free(&base);
    for (int i = 0; i < d->nlinear; i++) free(dW[i]);
    free(dW), free(dx), free(b.x), free(b.dy), free(b.y);
    ar_block_acts_free(&a), ar_block_work_free(&b.ws);
    ar_block_weights_free(&b.w);
    ar_model_close(m);
}

Test(block_ds_oss, deepseek_v3_dense_layer) { check_layer("deepseek_v3", 0); }
Test(block_ds_oss, deepseek_v3_moe_layer) { check_layer("deepseek_v3", 1); }
Test(block_ds_oss, deepseek_v2_moe_layer_no_q_lora) { check_layer("deepseek_v2", 1); }
Test(block_ds_oss, gpt_oss_sliding_layer) { check_layer("gpt_oss", 0); }
Test(block_ds_oss, gpt_oss_full_layer) { check_layer("gpt_oss", 1); }
