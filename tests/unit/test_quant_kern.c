/* test_quant_kern.c — the vector builds of the integer quantizer's element
 * loops (quant_int_kern.h) give the reference's bits: forward ŵ, codes,
 * scales, zero points and backward dV, dα, dβ compared with memcmp through
 * the quantizer's entry points, over every option the loops specialize on
 * (sym / asym, 2..8 bits, G | K, a short last group, one group per row, bf16
 * ŵ, f32 scales, V, α/β up to 2, init_scale, each output present or not).
 * The data put exact halves under round() and levels exactly on the clamp
 * bounds (init_scale a power of two, w on a quarter grid of it), and the
 * test checks that those cases occurred. Builds this CPU lacks are skipped
 * with a note; the reference build itself is checked against independent
 * arithmetic in test_quant.c (the entry points ran on it before). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "quant.h"
#include "quant_int_kern.h"

static unsigned rng_state = 777;
static double urand(void) /* uniform [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) / 8388608.0 - 1.0;
}

/* One problem: W [n, k], tunables and an upstream gradient. */
typedef struct {
    int n, k, ng;
    float *w, *v, *alpha, *beta, *init, *dwq, *dv0, *dg0;
} problem;

/* grid = 1: w on a quarter grid of 2^-6 (with init_scale 2^-6 that puts w/s
 * on quarters, V on quarters makes exact halves and exact bounds); else
 * Gaussian-ish weights with a few zeros, a -0 and an all-zero row. */
static void problem_make(problem *P, int n, int k, int group_size, int grid)
{
    P->n = n, P->k = k, P->ng = ar_quant_ngroups(k, group_size);
    size_t nel = (size_t)n * k, ngr = (size_t)n * P->ng;
    P->w = malloc(4 * nel), P->v = malloc(4 * nel), P->dwq = malloc(4 * nel), P->dv0 = malloc(4 * nel);
    P->alpha = malloc(4 * ngr), P->beta = malloc(4 * ngr), P->init = malloc(4 * ngr), P->dg0 = malloc(4 * ngr);
    cr_assert(P->w && P->v && P->dwq && P->dv0 && P->alpha && P->beta && P->init && P->dg0);
    for (size_t i = 0; i < nel; i++) {
        if (grid) P->w[i] = (float)((int)(urand() * 48) / 4.0 / 64.0);
        else P->w[i] = (float)((urand() + urand() + urand()) * 0.05);
        P->v[i] = grid ? (float)((int)(urand() * 3) / 4.0) : (float)(urand() * 0.5);
        P->dwq[i] = urand() < -0.9 ? 0.0f : (float)urand();
        P->dv0[i] = (float)urand();
    }
    if (!grid && nel > 3) P->w[1] = 0.0f, P->w[2] = -0.0f;
    if (!grid && n > 2) memset(P->w + (size_t)2 * k, 0, 4 * (size_t)k);   /* the scale floor */
    for (size_t g = 0; g < ngr; g++) {
        P->alpha[g] = (float)(1.0 + 0.6 * urand()), P->beta[g] = (float)(1.0 + 0.6 * urand());
        P->init[g] = (g % 3 ? 1.0f : -1.0f) / 64.0f;
        P->dg0[g] = (float)urand();
    }
}

static void problem_free(problem *P)
{
    free(P->w), free(P->v), free(P->dwq), free(P->dv0), free(P->alpha), free(P->beta), free(P->init), free(P->dg0);
}

/* Everything one build computes for one spec and tunables. */
typedef struct {
    float *wq, *scale, *dv, *dalpha, *dbeta;
    uint8_t *codes;
    int32_t *zp;
} result;

static void result_run(const ar_qint_kernels *kern, const ar_quant_spec *qs, const problem *P,
                       const ar_quant_params *p, int outputs, result *R)
{
    size_t nel = (size_t)P->n * P->k, ngr = (size_t)P->n * P->ng;
    R->wq = calloc(nel, 4), R->codes = calloc(nel, 1), R->scale = calloc(ngr, 4), R->zp = calloc(ngr, 4);
    R->dv = malloc(4 * nel), R->dalpha = malloc(4 * ngr), R->dbeta = malloc(4 * ngr);
    cr_assert(R->wq && R->codes && R->scale && R->zp && R->dv && R->dalpha && R->dbeta);
    memcpy(R->dv, P->dv0, 4 * nel), memcpy(R->dalpha, P->dg0, 4 * ngr), memcpy(R->dbeta, P->dg0, 4 * ngr);
    ar_quant_out out = { outputs & 1 ? R->wq : NULL, outputs & 2 ? R->codes : NULL, R->scale, R->zp };
    cr_assert_eq(ar_quant_int_forward_with(kern, qs, P->w, P->n, P->k, p, &out), 0, "%s", ar_last_error());
    cr_assert_eq(ar_quant_int_backward_with(kern, qs, P->w, P->n, P->k, p, P->dwq, outputs & 4 ? R->dv : NULL,
                                            R->dalpha, R->dbeta),
                 0, "%s", ar_last_error());
}

static void result_free(result *R)
{
    free(R->wq), free(R->codes), free(R->scale), free(R->zp), free(R->dv), free(R->dalpha), free(R->dbeta);
}

/* Index of the first differing 4-byte element of a and b, or -1. */
static long first_diff(const void *a, const void *b, size_t n, size_t size)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp((const char *)a + i * size, (const char *)b + i * size, size)) return (long)i;
    return -1;
}

static void expect_same(const char *what, const char *isa, const char *cfg, const void *a, const void *b, size_t n,
                        size_t size)
{
    long i = first_diff(a, b, n, size);
    cr_expect_eq(i, -1, "%s build, %s: %s[%ld] differs from the reference", isa, cfg, what, i);
}

/* Cases that show the data reached the spots where builds could part: exact
 * halves under round() and levels on the clamp bounds. */
static long halves, on_bounds;

static void count_cases(const ar_quant_spec *qs, const problem *P, const ar_quant_params *p, const result *ref)
{
    int G = qs->group_size > 0 ? qs->group_size : P->k;
    float lo = qs->sym ? -(float)(1 << (qs->bits - 1)) : 0.0f;
    float hi = qs->sym ? (float)((1 << (qs->bits - 1)) - 1) : (float)((1 << qs->bits) - 1);
    float shift = qs->sym ? -lo : 0.0f;
    for (int r = 0; r < P->n; r++)
        for (int c = 0; c < P->k; c++) {
            size_t i = (size_t)r * P->k + c;
            float s = ref->scale[(size_t)r * P->ng + c / G];
            float x = P->w[i] / s + (p->v ? p->v[i] : 0.0f);
            halves += x - floorf(x) == 0.5f;
            float q = ref->codes[i] - shift;
            on_bounds += q == lo || q == hi;
        }
}

static void compare_builds(const ar_quant_spec *qs, const problem *P, const ar_quant_params *p, int outputs,
                           const char *cfg)
{
    static const char *names[] = { "reference", "AVX2", "AVX-512" };
    result ref;
    result_run(ar_qint_kernels_isa(AR_QINT_REF), qs, P, p, outputs, &ref);
    if (outputs & 2) count_cases(qs, P, p, &ref);
    size_t nel = (size_t)P->n * P->k, ngr = (size_t)P->n * P->ng;
    for (int isa = AR_QINT_REF + 1; isa < AR_QINT_NISA; isa++) {
        const ar_qint_kernels *kern = ar_qint_kernels_isa(isa);
        if (!kern) continue;
        result R;
        result_run(kern, qs, P, p, outputs, &R);
        expect_same("wq", names[isa], cfg, R.wq, ref.wq, nel, 4);
        expect_same("codes", names[isa], cfg, R.codes, ref.codes, nel, 1);
        expect_same("scale", names[isa], cfg, R.scale, ref.scale, ngr, 4);
        expect_same("zp", names[isa], cfg, R.zp, ref.zp, ngr, 4);
        expect_same("dv", names[isa], cfg, R.dv, ref.dv, nel, 4);
        expect_same("dalpha", names[isa], cfg, R.dalpha, ref.dalpha, ngr, 4);
        expect_same("dbeta", names[isa], cfg, R.dbeta, ref.dbeta, ngr, 4);
        result_free(&R);
    }
    result_free(&ref);
}

Test(quant_kern, builds_match_reference_bit_for_bit)
{
    int nbuilds = 0;
    for (int isa = AR_QINT_REF + 1; isa < AR_QINT_NISA; isa++) nbuilds += ar_qint_kernels_isa(isa) != NULL;
    if (!nbuilds) {
        fprintf(stderr, "test_quant_kern: no vector build runs on this CPU; the reference is the only one\n");
        return;
    }
    static const struct { int k, G; } shapes[] = { {256, 128}, {100, 32}, {96, -1}, {64, 16}, {40, 48} };
    static const int bits[] = { 2, 3, 4, 8 };
    static const unsigned flags[] = { 0, AR_QF_BF16, AR_QF_F32_SCALE };
    char cfg[160];
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int grid = 0; grid < 2; grid++) {
            problem P;
            problem_make(&P, 7, shapes[si].k, shapes[si].G, grid);
            for (size_t bi = 0; bi < sizeof bits / sizeof *bits; bi++)
                for (int sym = 0; sym < 2; sym++)
                    for (size_t fi = 0; fi < sizeof flags / sizeof *flags; fi++)
                        for (int tun = 0; tun < 4; tun++) {
                            if (tun == 3 && !sym) continue;   /* init_scale is sym only */
                            ar_quant_spec qs = { .bits = bits[bi], .group_size = shapes[si].G, .sym = sym,
                                                 .flags = flags[fi], .minmax_hi = tun == 2 ? 2.0f : 0.0f };
                            ar_quant_params p = { 0 };
                            if (tun >= 1) p.v = P.v;
                            if (tun == 2) p.alpha = P.alpha, p.beta = P.beta;
                            if (tun == 3) p.init_scale = P.init;   /* s = ±2^-6 exactly: grid data hits ties */
                            int outputs = 7 ^ (int)((si + bi + fi + tun) % 4);   /* drop one output at times */
                            snprintf(cfg, sizeof cfg, "k %d G %d grid %d bits %d sym %d flags %u tunables %d outputs %d",
                                     shapes[si].k, shapes[si].G, grid, bits[bi], sym, flags[fi], tun, outputs);
                            compare_builds(&qs, &P, &p, outputs | 2, cfg);
                            if (outputs != 7) compare_builds(&qs, &P, &p, outputs & 5, cfg);
                        }
            problem_free(&P);
        }
    cr_expect_gt(halves, 100, "only %ld exact halves under round(): the data missed the ties", halves);
    cr_expect_gt(on_bounds, 100, "only %ld levels on a clamp bound", on_bounds);
}

/* The range loop directly, on lengths around its 16-lane blocks, with NaN,
 * -0 and all-zero inputs. */
Test(quant_kern, range_matches_reference)
{
    float w[80], rlo, rhi, lo, hi;
    const ar_qint_kernels *ref = ar_qint_kernels_isa(AR_QINT_REF);
    for (int isa = AR_QINT_REF + 1; isa < AR_QINT_NISA; isa++) {
        const ar_qint_kernels *kern = ar_qint_kernels_isa(isa);
        if (!kern) continue;
        for (int len = 0; len <= 80; len++)
            for (int kind = 0; kind < 4; kind++) {
                for (int j = 0; j < len; j++)
                    w[j] = kind == 0 ? (float)urand() : kind == 1 ? -0.0f : kind == 2 ? (float)(-fabs(urand())) : 0.0f;
                if (kind == 0 && len > 5) w[len / 2] = NAN, w[len - 1] = -0.0f;
                ref->range(w, len, &rlo, &rhi);
                kern->range(w, len, &lo, &hi);
                cr_expect(!memcmp(&lo, &rlo, 4) && !memcmp(&hi, &rhi, 4),
                          "isa %d len %d kind %d: range [%g, %g], reference [%g, %g]", isa, len, kind, lo, hi, rlo, rhi);
            }
    }
}

/* The element loops directly: the backward's double terms (which the entry
 * points only show after a sum and a cast to f32) and the forward, for
 * every length 1..140 across the vector blocks, sym and asym groups. */
Test(quant_kern, element_terms_match_reference)
{
    enum { N = 140 };
    float w[N], v[N], dwq[N], dv[N], dvr[N], wq[N], wqr[N];
    double ts[N], tz[N], tsr[N], tzr[N];
    uint8_t codes[N], codesr[N];
    const ar_qint_kernels *ref = ar_qint_kernels_isa(AR_QINT_REF);
    for (int isa = AR_QINT_REF + 1; isa < AR_QINT_NISA; isa++) {
        const ar_qint_kernels *kern = ar_qint_kernels_isa(isa);
        if (!kern) continue;
        for (int len = 1; len <= N; len++) {
            int sym = len % 2, bits = 2 + len % 7;
            ar_qint_group g = { (float)(0.01 + 0.02 * fabs(urand())), sym ? 0.0f : (float)(len % 5), 0, 0, 0, len % 3 == 0 };
            g.lo = sym ? -(float)(1 << (bits - 1)) : 0.0f;
            g.hi = sym ? (float)((1 << (bits - 1)) - 1) : (float)((1 << bits) - 1);
            g.code_shift = sym ? -g.lo : 0.0f;
            for (int j = 0; j < len; j++) {
                w[j] = (float)(urand() * 0.2), v[j] = (float)(urand() * 0.5), dwq[j] = (float)urand();
                dv[j] = dvr[j] = (float)urand();
            }
            const float *vp = len % 4 ? v : NULL;
            ref->backward(&g, w, vp, dwq, len, dvr, tsr, tzr);
            kern->backward(&g, w, vp, dwq, len, dv, ts, tz);
            ref->forward(&g, w, vp, len, wqr, codesr);
            kern->forward(&g, w, vp, len, wq, codes);
            cr_expect_eq(first_diff(ts, tsr, len, 8), -1, "isa %d len %d: dL/ds terms differ", isa, len);
            cr_expect_eq(first_diff(tz, tzr, len, 8), -1, "isa %d len %d: dL/dz terms differ", isa, len);
            cr_expect_eq(first_diff(dv, dvr, len, 4), -1, "isa %d len %d: dV differs", isa, len);
            cr_expect_eq(first_diff(wq, wqr, len, 4), -1, "isa %d len %d: wq differs", isa, len);
            cr_expect_eq(first_diff(codes, codesr, len, 1), -1, "isa %d len %d: codes differ", isa, len);
        }
    }
}

/* The backward with V's SignSGD step fused in (ar_quant_int_backward_step,
 * what signround.c's update_all calls) against the two steps it replaces:
 * the reference backward into a zeroed dV, then V -= lr·sign(dV) written
 * here; every build, V, dα and dβ compared bit for bit. */
Test(quant_kern, fused_v_step_matches_backward_then_step)
{
    static const struct { int k, G; } shapes[] = { {256, 128}, {100, 32}, {96, -1} };
    const float lr = 0.005f;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int grid = 0; grid < 2; grid++)
            for (int sym = 0; sym < 2; sym++)
                for (int mm = 0; mm < 2; mm++) {
                    problem P;
                    problem_make(&P, 5, shapes[si].k, shapes[si].G, grid);
                    ar_quant_spec qs = { .bits = 2 + (int)si, .group_size = shapes[si].G, .sym = sym };
                    size_t nel = (size_t)P.n * P.k, ngr = (size_t)P.n * P.ng;
                    float *v0 = malloc(4 * nel), *v = malloc(4 * nel), *dv = calloc(nel, 4);
                    float *da0 = calloc(ngr, 4), *db0 = calloc(ngr, 4), *da = malloc(4 * ngr), *db = malloc(4 * ngr);
                    cr_assert(v0 && v && dv && da0 && db0 && da && db);
                    memcpy(v0, P.v, 4 * nel);
                    if (nel > 4) v0[3] = -0.0f;
                    ar_quant_params p = { v0, mm ? P.alpha : NULL, mm ? P.beta : NULL, NULL };
                    cr_assert_eq(ar_quant_int_backward_with(ar_qint_kernels_isa(AR_QINT_REF), &qs, P.w, P.n, P.k, &p,
                                                            P.dwq, dv, mm ? da0 : NULL, mm ? db0 : NULL), 0);
                    for (size_t i = 0; i < nel; i++) v0[i] -= lr * (float)((dv[i] > 0) - (dv[i] < 0));
                    for (int isa = AR_QINT_REF; isa < AR_QINT_NISA; isa++) {
                        const ar_qint_kernels *kern = ar_qint_kernels_isa(isa);
                        if (!kern) continue;
                        memcpy(v, P.v, 4 * nel);
                        if (nel > 4) v[3] = -0.0f;
                        memset(da, 0, 4 * ngr), memset(db, 0, 4 * ngr);
                        ar_quant_params q = { v, p.alpha, p.beta, NULL };
                        cr_assert_eq(ar_quant_int_backward_step_with(kern, &qs, P.w, P.n, P.k, &q, P.dwq, v, lr,
                                                                     mm ? da : NULL, mm ? db : NULL), 0);
                        cr_expect_eq(first_diff(v, v0, nel, 4), -1, "isa %d shape %zu grid %d sym %d: V differs",
                                     isa, si, grid, sym);
                        cr_expect_eq(first_diff(da, da0, ngr, 4), -1, "isa %d: dalpha differs", isa);
                        cr_expect_eq(first_diff(db, db0, ngr, 4), -1, "isa %d: dbeta differs", isa);
                    }
                    free(v0), free(v), free(dv), free(da0), free(db0), free(da), free(db);
                    problem_free(&P);
                }
    /* V must be the tunables' V */
    float w[4] = {0}, g[4] = {0}, vv[4] = {0}, other[4] = {0};
    ar_quant_spec qs = { .bits = 4, .group_size = 4, .sym = 1 };
    ar_quant_params p = { other, NULL, NULL, NULL };
    cr_expect_eq(ar_quant_int_backward_step(&qs, w, 1, 4, &p, g, vv, 0.1f, NULL, NULL), -1);
}
