/* test_ops_amp.c — the AMP path's vectorized SwiGLU (ops_amp.h) against a
 * double-precision reference.
 *
 * Bounds, with δ = AR_AMP_EXP_REL_ERR (the exp's relative error, derived in
 * ops_amp.c) and u = 2^-24:
 * - sg = 1 / (1 + e), e = exp(-g) with relative error δ: d sg / sg = −(1 − sg)
 *   de / e, so sg is off by at most δ·sg(1 − sg) <= δ·sg, plus 2u·sg for the
 *   add and the divide;
 * - out = g·sg·up: (δ + 4u)|g·sg·up|;
 * - dup = dout·g·sg: (δ + 4u)|dout·g·sg|;
 * - dgate = dout·up·sg(1 + g(1 − sg)): sg's error δ'·sg (δ' = δ + 2u) enters
 *   once through sg and once through g(1 − sg), the products round 5 times: (δ' + 6u)|dout·up|·sg·(1 + 2|g|) bounds it.
 * Where e^-g overflows f32 (g < -88.7, sg < 2^-126 in exact arithmetic) f32
 * holds sg as 0 or a subnormal, so each bound also allows 2^-125 times the
 * other factors (libm's expf path gives the same 0 there).
 * The inputs cover the exp's whole useful range (|g| up to 120, where e^-g
 * overflows or underflows) and the lengths leave a scalar tail. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "ops.h"
#include "ops_amp.h"

static unsigned rng = 77;
static double urand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) / 8388608.0 - 1.0;
}

Test(ops_amp, swiglu_forward_backward_within_derived_bound)
{
    const long n = 16 * 700 + 5;
    float *g = malloc(n * 4), *u = malloc(n * 4), *d = malloc(n * 4), *out = malloc(n * 4);
    float *dg = malloc(n * 4), *du = malloc(n * 4), *ref32 = malloc(n * 4);
    cr_assert(g && u && d && out && dg && du && ref32);
    for (long i = 0; i < n; i++) {
        /* most values in [-8, 8), every 50th one far out, a few exact zeros */
        g[i] = (float)(i % 50 == 0 ? 120 * urand() : 8 * urand());
        if (i % 997 == 0) g[i] = 0;
        u[i] = (float)(2 * urand()), d[i] = (float)urand();
    }
    double del = AR_AMP_EXP_REL_ERR, eps = ldexp(1.0, -24), dp = del + 2 * eps, tiny = ldexp(1.0, -125);
    ar_swiglu_forward_amp(out, g, u, n);
    for (long i = 0; i < n; i++) dg[i] = du[i] = 1e30f;   /* overwritten, not added to */
    ar_swiglu_backward_amp(dg, du, d, g, u, n);
    ar_swiglu_forward(ref32, g, u, n);
    long bad = 0, differ = 0;
    for (long i = 0; i < n; i++) {
        double gg = g[i], sg = 1.0 / (1.0 + exp(-gg));
        double o = gg * sg * u[i];
        double gd = d[i] * u[i] * sg * (1 + gg * (1 - sg)), ud = d[i] * gg * sg;
        bad += fabs(out[i] - o) > (del + 4 * eps) * fabs(o) + tiny * fabs(gg * u[i]);
        bad += fabs(du[i] - ud) > (del + 4 * eps) * fabs(ud) + tiny * fabs(d[i] * gg);
        bad += fabs(dg[i] - gd) > ((dp + 6 * eps) * sg + tiny) * fabs(d[i] * u[i]) * (1 + 2 * fabs(gg));
        differ += out[i] != ref32[i];
    }
    cr_expect_eq(bad, 0, "%ld values outside the derived bound", bad);
    /* the vectorized exp is not libm's: some outputs differ from ops.h's
     * (else this test would not be testing the fast path) */
    cr_expect_gt(differ, 0, "every output equals ops.h's f32 loop: did the vector path run?");
    /* = semantics (ops_amp.h): a second backward onto the results gives the same values */
    float *dg2 = malloc(n * 4), *du2 = malloc(n * 4);
    cr_assert(dg2 && du2);
    for (long i = 0; i < n; i++) dg2[i] = dg[i], du2[i] = du[i];
    ar_swiglu_backward_amp(dg2, du2, d, g, u, n);
    long notsame = 0;
    for (long i = 0; i < n; i++) notsame += dg2[i] != dg[i] || du2[i] != du[i];
    cr_expect_eq(notsame, 0, "%ld entries of a second backward differ from the first (accumulated?)", notsame);
    /* in place, out == gate (as ar_block_forward runs it) */
    ar_swiglu_forward_amp(g, g, u, n);
    long inplace = 0;
    for (long i = 0; i < n; i++) inplace += g[i] != out[i];
    cr_expect_eq(inplace, 0, "%ld in-place outputs differ", inplace);
    free(g); free(u); free(d); free(out); free(dg); free(du); free(ref32); free(dg2); free(du2);
}
