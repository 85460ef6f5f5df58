/* test_quant_fp.c — MXFP4/MXFP8, NVFP4 and FP8 quantizers: the element
 * rounding vectors of spec §2.13, the E4M3 codec against an exhaustive
 * nearest-value search, forwards against a second implementation written here
 * (brute-force nearest grid value, double precision, explicit tiles), the STE
 * backward against finite differences of a smooth surrogate, opt-RTN against
 * its own candidate set, and activation fake-quantization. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fixture.h"
#include "quant.h"
#include "quant_act.h"
#include "quant_fp.h"

static unsigned rng_state = 777;
static double urand(void) /* uniform [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) / 8388608.0 - 1.0;
}

static void fill(float *x, int n, double amp)
{
    for (int i = 0; i < n; i++) x[i] = (float)(amp * urand());
}

/* ---- spec §2.13 element vectors ------------------------------------------ */

Test(fp_elements, mx_fp4_rounding_vector)
{
    const float in[12] = {0, .25f, .4f, .75f, 1.25f, 1.4f, 1.75f, 2.5f, 2.9f, 3.5f, 5.0f, 5.1f};
    const float want[12] = {0, 0, .5f, 1, 1, 1.5f, 2, 2, 3, 4, 4, 6};
    for (int i = 0; i < 12; i++) {
        cr_expect_eq(ar_mx_round_element(in[i], AR_QDT_MXFP4), want[i], "mx %g -> %g", in[i],
                     ar_mx_round_element(in[i], AR_QDT_MXFP4));
        cr_expect_eq(ar_mx_round_element(-in[i], AR_QDT_MXFP4), -want[i], "negatives mirror (%g)", in[i]);
    }
}

Test(fp_elements, nvfp4_cast_to_fp4_vector)
{
    const float in[15] = {0, .25f, .4f, .75f, 1.25f, 1.4f, 1.75f, 2.5f, 2.9f, 3.5f, 5.0f, 5.1f, 6.0f, 6.2f, 8.9f};
    const float want[15] = {0, 0, .5f, 1, 1, 1.5f, 2, 2, 3, 4, 4, 6, 6, 6, 6};
    for (int i = 0; i < 15; i++) {
        cr_expect_eq(ar_fp4_round(in[i]), want[i], "fp4 %g -> %g", in[i], ar_fp4_round(in[i]));
        cr_expect_eq(ar_fp4_round(-in[i]), -want[i]);
    }
}

Test(fp_elements, fp4_codes_round_trip)
{
    for (int c = 0; c < 16; c++) {
        float v = ar_fp4_decode((uint8_t)c);
        if (c == 8) { cr_expect_eq(v, 0.0f); continue; }  /* -0 decodes to 0 and re-encodes as 0 */
        cr_expect_eq(ar_fp4_encode(v), c, "code %d -> %g -> %d", c, v, ar_fp4_encode(v));
    }
    cr_expect_eq(ar_fp4_decode(0x07), 6.0f);
    cr_expect_eq(ar_fp4_decode(0x0F), -6.0f);   /* bit 3 is the sign */
    cr_expect_eq(ar_fp4_decode(0x0A), -1.0f);
}

/* Every finite E4M3 value, by construction from the bit fields (an
 * independent reading of the format: bias 7, 3 mantissa bits, no inf). */
static int e4m3_values(double *v)
{
    int n = 0;
    for (int e = 0; e < 16; e++)
        for (int m = 0; m < 8; m++) {
            if (e == 15 && m == 7) continue;
            v[n++] = e == 0 ? m * pow(2, -9) : (1 + m / 8.0) * pow(2, e - 7);
        }
    return n;
}

Test(fp_elements, e4m3_round_is_nearest_even_and_codec_round_trips)
{
    double vals[128];
    int nv = e4m3_values(vals);
    cr_assert_eq(nv, 127);
    cr_expect_eq(vals[nv - 1], 448.0);
    for (int b = 0; b < 256; b++) {
        float v = ar_e4m3_decode((uint8_t)b);
        if ((b & 0x7F) == 0x7F) { cr_expect(isnan(v)); continue; }
        if (b == 0x80) continue;
        cr_expect_eq(ar_e4m3_encode(v), b, "byte %02x -> %g -> %02x", b, v, ar_e4m3_encode(v));
    }
    for (int t = 0; t < 20000; t++) {
        double x = fabs(urand()) * 460.0 * (t % 3 == 0 ? 1.0 / 256 : 1.0);
        int best = 0;
        for (int i = 1; i < nv; i++) {
            double d = fabs(vals[i] - x), db = fabs(vals[best] - x);
            if (d < db || (d == db && (i & 1) == 0)) best = i;   /* tie: even mantissa (even index) */
        }
        float got = ar_e4m3_round((float)x);
        cr_assert_eq(got, (float)vals[best], "e4m3(%.9g) = %g, want %g", x, got, vals[best]);
        cr_assert_eq(ar_e4m3_round((float)-x), -(float)vals[best]);
    }
}

/* ---- forward against a reference --------------------------------------- */

/* Nearest value of a symmetric grid (the FP4 magnitudes, or the E4M3 values),
 * ties to the even index — i.e. the even mantissa. */
static double nearest(const double *g, int ng, double x)
{
    double a = fabs(x);
    int best = 0;
    for (int i = 1; i < ng; i++) {
        double d = fabs(g[i] - a), db = fabs(g[best] - a);
        if (d < db || (d == db && (i & 1) == 0)) best = i;
    }
    return x < 0 ? -g[best] : g[best];
}

static const double fp4g[8] = {0, .5, 1, 1.5, 2, 3, 4, 6};

/* Reference forward in double over explicit tiles (trows x tcols). */
static void ref_forward(int dtype, const float *w, int n, int k, int trows, int tcols, const float *beta, int ng,
                        double gs, double *wq)
{
    double e4[128];
    int ne = e4m3_values(e4);
    for (int r0 = 0; r0 < n; r0 += trows)
        for (int c0 = 0; c0 < k; c0 += tcols) {
            double amax = 0;
            for (int r = r0; r < r0 + trows && r < n; r++)
                for (int c = c0; c < c0 + tcols && c < k; c++) amax = fmax(amax, fabs(w[r * k + c]));
            double b = beta ? beta[r0 * ng + c0 / tcols] : 1.0, cmax = amax * b, S, mul;
            const double *grid = dtype == AR_QDT_MXFP4 || dtype == AR_QDT_NVFP4 ? fp4g : e4;
            int gn = grid == fp4g ? 8 : ne;
            double lim = grid == fp4g ? 6 : 448;
            if (dtype == AR_QDT_MXFP4 || dtype == AR_QDT_MXFP8) {
                int emax = dtype == AR_QDT_MXFP4 ? 2 : 8;
                S = pow(2, (cmax == 0 ? 1 : floor(log2(cmax))) - emax);
                mul = 1 / S;
            } else if (dtype == AR_QDT_NVFP4) {
                S = nearest(e4, ne, fmin(gs * cmax / 6, 448));
                mul = gs / S;
                S = S / gs;
            } else {
                S = fmax(cmax / 448, 1 / (448.0 * 512));
                mul = 1 / S;
            }
            for (int r = r0; r < r0 + trows && r < n; r++)
                for (int c = c0; c < c0 + tcols && c < k; c++) {
                    double x = fmin(fmax(w[r * k + c] * mul, -lim), lim);
                    wq[r * k + c] = nearest(grid, gn, x) * S;
                }
        }
}

static void check_forward(int dtype, int G, unsigned flags, int n, int k, int trows, int tcols, double amp)
{
    int ng = ar_quant_ngroups(k, G);
    float *w = malloc(sizeof(float) * n * k), *wq = malloc(sizeof(float) * n * k), *beta = malloc(sizeof(float) * n * ng);
    float *scale = malloc(sizeof(float) * n * ng), gsv = 0;
    uint8_t *codes = malloc((size_t)n * k);
    double *ref = malloc(sizeof(double) * n * k);
    fill(w, n * k, amp);
    for (int i = 0; i < n * ng; i++) beta[i] = (float)(0.75 + 0.25 * fabs(urand()));
    ar_quant_spec qs = {dtype == AR_QDT_MXFP4 || dtype == AR_QDT_NVFP4 ? 4 : 8, G, 1, flags, 0, dtype, 0, 0, NULL, NULL};
    ar_quant_params p = {NULL, NULL, beta, NULL};
    ar_quant_out out = {wq, codes, scale, NULL};
    cr_assert_eq(ar_quant_forward(&qs, w, n, k, &p, &out), 0, "%s", ar_last_error());
    gsv = ar_quant_fp_global_scale(&qs, w, n, k);
    ref_forward(dtype, w, n, k, trows, tcols, beta, ng, gsv, ref);
    if (dtype == AR_QDT_NVFP4) cr_expect_eq(gsv, ar_nvfp4_global_scale(w, (size_t)n * k)); /* exact: one function */
    int bad = 0;
    for (int i = 0; i < n * k && bad < 5; i++) {
        /* the same code times the scale: the f32 scale (an f32 division or
         * product, and / gs for NVFP4) and the product round at most 3 times
         * (MX scales are powers of 2: exact); a code decided otherwise is a
         * whole step off */
        if (!fx_within(wq[i], ref[i], fx_gamma(3) * fabs(ref[i]))) {
            bad++;
            cr_expect(0, "dtype %d G %d: wq[%d] = %.9g, reference %.9g (w %g)", dtype, G, i, wq[i], ref[i], w[i]);
        }
        /* the codes and scales alone give wq back */
        int g = ng == 1 ? 0 : (i % k) / (G > 0 ? G : k);
        float s = scale[(i / k) * ng + g];
        float v = (qs.bits == 4 ? ar_fp4_decode(codes[i]) : ar_e4m3_decode(codes[i]));
        float deq = dtype == AR_QDT_NVFP4 ? v * (s / gsv) : v * s;
        cr_expect(fx_within(deq, wq[i], 2 * fx_gamma(3) * fabsf(wq[i])), "code/scale dequant %g vs wq %g (3 roundings each)",
                  deq, wq[i]);
    }
    free(w); free(wq); free(beta); free(scale); free(codes); free(ref);
}

Test(fp_forward, mxfp4_matches_reference)   { check_forward(AR_QDT_MXFP4, 32, 0, 8, 96, 1, 32, 3.0); }
Test(fp_forward, mxfp4_short_last_group)    { check_forward(AR_QDT_MXFP4, 32, 0, 4, 80, 1, 32, 0.05); }
Test(fp_forward, mxfp8_matches_reference)   { check_forward(AR_QDT_MXFP8, 32, 0, 8, 64, 1, 32, 0.2); }
Test(fp_forward, nvfp4_matches_reference)   { check_forward(AR_QDT_NVFP4, 16, 0, 8, 64, 1, 16, 0.1); }
Test(fp_forward, fp8_per_channel)           { check_forward(AR_QDT_FP8, -1, 0, 8, 70, 1, 70, 0.1); }
Test(fp_forward, fp8_per_tensor)            { check_forward(AR_QDT_FP8, 0, 0, 8, 70, 8, 70, 0.1); }
Test(fp_forward, fp8_blocks_2d)             { check_forward(AR_QDT_FP8, 16, AR_QF_BLOCK2D, 40, 40, 16, 16, 1.0); }

Test(fp_forward, mx_scale_is_floor_rule_and_saturates)
{
    /* amax 7.9 -> e = floor(log2 7.9) - 2 = 0: 7.9 saturates to 6 (spec §4.2). */
    float w[32] = {0}, wq[32], s;
    w[0] = 7.9f; w[1] = -0.3f; w[2] = 0.2f;
    ar_quant_spec qs = {4, 32, 1, 0, 0, AR_QDT_MXFP4, 0, 0, NULL, NULL};
    ar_quant_out out = {wq, NULL, &s, NULL};
    cr_assert_eq(ar_quant_forward(&qs, w, 1, 32, NULL, &out), 0);
    cr_expect_eq(s, 1.0f);
    cr_expect_eq(wq[0], 6.0f);
    cr_expect_eq(wq[1], -0.5f);   /* 0.3 -> 0.5 (nearest of 0, .5) */
    cr_expect_eq(wq[2], 0.0f);    /* 0.2 -> 0 */
    /* all-zero group: exponent 1 - emax, never a division by zero */
    memset(w, 0, sizeof w);
    cr_assert_eq(ar_quant_forward(&qs, w, 1, 32, NULL, &out), 0);
    cr_expect_eq(s, 0.5f);
    cr_expect_eq(wq[5], 0.0f);
}

Test(fp_forward, rejects_bad_specs)
{
    float w[32] = {0}, wq[32];
    ar_quant_out out = {wq, NULL, NULL, NULL};
    ar_quant_spec bad1 = {8, 32, 1, 0, 0, AR_QDT_MXFP4, 0, 0, NULL, NULL};
    cr_expect_neq(ar_quant_forward(&bad1, w, 1, 32, NULL, &out), 0);
    cr_expect(strstr(ar_last_error(), "MXFP4 needs 4 bits") != NULL, "%s", ar_last_error());
    ar_quant_spec bad2 = {4, -1, 1, 0, 0, AR_QDT_NVFP4, 0, 0, NULL, NULL};
    cr_expect_neq(ar_quant_forward(&bad2, w, 1, 32, NULL, &out), 0);
    ar_quant_spec bad3 = {8, 0, 1, AR_QF_BLOCK2D, 0, AR_QDT_FP8, 0, 0, NULL, NULL};
    cr_expect_neq(ar_quant_forward(&bad3, w, 1, 32, NULL, &out), 0);
    ar_quant_spec bad4 = {8, 32, 1, 0, 0, 42, 0, 0, NULL, NULL};
    cr_expect_neq(ar_quant_forward(&bad4, w, 1, 32, NULL, &out), 0);
}

/* ---- backward against a smooth surrogate ---------------------------------- */

/* The surrogate freezes every piecewise-constant decision of the forward at
 * the evaluation point (the rounded value q0 at x0, the scale's exponent /
 * E4M3 cast) and replaces it by the straight-through line through that point
 * with the slope AutoRound's autograd uses: MX elements q0·x/x0 (private
 * exponent STE) or identity below 2^(emin+1), NV/FP8 elements q0 + (x − x0),
 * MX and NV elements whose level is ±max_norm constant (the clamp after the
 * rounding, whose bound passes nothing), MX scales S0·β/β0, NV/FP8 scales
 * linear in β. L = Σ G_j ŵ_j; central differences in V and β are then exact
 * up to O(h²). */
static double surrogate(int dtype, const float *w, int len, const double *v, const float *v0, double beta, double beta0,
                        const double *G, double gs)
{
    double amax = 0;
    for (int j = 0; j < len; j++) amax = fmax(amax, fabs(w[j]));
    double S0, S, lim = (dtype == AR_QDT_MXFP8 || dtype == AR_QDT_FP8) ? 448 : 6;
    if (dtype == AR_QDT_MXFP4 || dtype == AR_QDT_MXFP8) {
        S0 = pow(2, floor(log2(amax * beta0)) - (dtype == AR_QDT_MXFP4 ? 2 : 8));
        S = S0 * beta / beta0;
    } else if (dtype == AR_QDT_NVFP4) {
        S0 = ar_e4m3_round((float)(gs * amax * beta0 / 6));
        S = S0 + gs * amax / 6 * (beta - beta0);
    } else {
        S0 = amax * beta0 / 448;
        S = amax * beta / 448;
    }
    double L = 0;
    for (int j = 0; j < len; j++) {
        double x0 = dtype == AR_QDT_NVFP4 ? w[j] * (gs / S0) : w[j] / S0;
        double x = (dtype == AR_QDT_NVFP4 ? w[j] * (gs / S) : w[j] / S) + v[j];
        x0 += v0[j];   /* the frozen point uses the unperturbed V */
        double xc0 = fmin(fmax(x0, -lim), lim), xc = fmin(fmax(x, -lim), lim);
        double q0 = dtype == AR_QDT_FP8 || dtype == AR_QDT_MXFP8 ? ar_e4m3_round((float)xc0) : ar_fp4_round((float)xc0);
        double q;
        if (dtype != AR_QDT_FP8 && fabs(q0) >= lim) {
            q = q0;
        } else if (dtype == AR_QDT_MXFP4 || dtype == AR_QDT_MXFP8) {
            double emin = dtype == AR_QDT_MXFP4 ? 1.0 : pow(2, -6);
            q = fabs(xc0) >= 2 * emin ? q0 * xc / xc0 : q0 + (xc - xc0);
        } else {
            q = q0 + (xc - xc0);
        }
        L += G[j] * q * (dtype == AR_QDT_NVFP4 ? S / gs : S);
    }
    return L;
}

static void check_backward(int dtype, int G)
{
    enum { K = 64 };
    int ng = K / G, bits = dtype == AR_QDT_MXFP4 || dtype == AR_QDT_NVFP4 ? 4 : 8;
    float w[K], v[K], beta[K], dwq[K], dv[K] = {0}, dbeta[K] = {0};
    double Gd[K], vd[K];
    fill(w, K, 0.3);
    for (int j = 0; j < K; j++) {
        v[j] = (float)(0.3 * urand());
        dwq[j] = (float)urand();
        Gd[j] = dwq[j];
        vd[j] = v[j];
    }
    for (int g = 0; g < ng; g++) beta[g] = (float)(0.8 + 0.15 * fabs(urand()));
    ar_quant_spec qs = {bits, G, 1, 0, 0, dtype, 0, 0, NULL, NULL};
    ar_quant_params p = {v, NULL, beta, NULL};
    cr_assert_eq(ar_quant_backward(&qs, w, 1, K, &p, dwq, dv, NULL, dbeta), 0, "%s", ar_last_error());
    double gs = ar_nvfp4_global_scale(w, K);
    const double h = 1e-6, step[4] = {h, -h, 2 * h, -2 * h};
    for (int g = 0; g < ng; g++) {
        const float *wg = w + g * G;
        /* Bounds: dV = G S with the library's f32 scale, S within gamma_2
         * of the surrogate's (MX: exact), rounded once: gamma_3 |dV|. dbeta:
         * the group's G (q - x) terms summed in double from f32 levels x =
         * w / S_e + V (S_e the element scale, S / gs for NVFP4), times the
         * chain S_e / beta, stored in f32: gamma_{G+4} sum |G| (2|x| + 1)
         * S_e / beta (|q| <= |x| + 1/2 below the clamp). The finite
         * differences carry their own bound (Richardson). */
        double amax = 0, mag = 0;
        for (int j = 0; j < G; j++) amax = fmax(amax, fabs(wg[j]));
        double lim = (dtype == AR_QDT_MXFP8 || dtype == AR_QDT_FP8) ? 448 : 6, Se;
        if (dtype == AR_QDT_MXFP4 || dtype == AR_QDT_MXFP8)
            Se = pow(2, floor(log2(amax * beta[g])) - (dtype == AR_QDT_MXFP4 ? 2 : 8));
        else if (dtype == AR_QDT_NVFP4) Se = ar_e4m3_round((float)(gs * amax * beta[g] / 6)) / gs;
        else Se = amax * beta[g] / lim;
        for (int j = 0; j < G; j++) mag += fabs(Gd[g * G + j]) * (2 * fabs(wg[j] / Se + vd[g * G + j]) + 1);
        for (int j = 0; j < G; j++) {
            double vs = vd[g * G + j], f4[4], err;
            for (int t = 0; t < 4; t++) {
                vd[g * G + j] = vs + step[t];
                f4[t] = surrogate(dtype, wg, G, vd + g * G, v + g * G, beta[g], beta[g], Gd + g * G, gs);
            }
            vd[g * G + j] = vs;
            double want = fx_central_diff(f4[0], f4[1], f4[2], f4[3], h, mag * Se, &err);
            cr_expect(fx_within(dv[g * G + j], want, fx_gamma(3) * fabs(want) + err), "dtype %d dV[%d] = %g, FD %g", dtype,
                      g * G + j, dv[g * G + j], want);
        }
        double f4[4], err;
        for (int t = 0; t < 4; t++)
            f4[t] = surrogate(dtype, wg, G, vd + g * G, v + g * G, beta[g] + step[t], beta[g], Gd + g * G, gs);
        double db = fx_central_diff(f4[0], f4[1], f4[2], f4[3], h, mag * Se, &err);
        double bnd = fx_gamma(G + 4) * mag * Se / beta[g] + FX_U * fabs(db) + err;
        cr_expect(fx_within(dbeta[g], db, bnd), "dtype %d dbeta[%d] = %g, FD %g, bound %g", dtype, g, dbeta[g], db, bnd);
    }
}

Test(fp_backward, mxfp4_matches_surrogate) { check_backward(AR_QDT_MXFP4, 32); }
Test(fp_backward, mxfp8_matches_surrogate) { check_backward(AR_QDT_MXFP8, 32); }
Test(fp_backward, nvfp4_matches_surrogate) { check_backward(AR_QDT_NVFP4, 16); }
Test(fp_backward, fp8_matches_surrogate)   { check_backward(AR_QDT_FP8, 32); }

/* ---- the clamp boundary ---------------------------------------------------- */

/* dV of one group whose scale is exactly 1 (so the scaled element is w + V,
 * here V = 0) against the gradient PyTorch 2.15's autograd gives AutoRound
 * 0.16.1's quantizers (quant_mx, nv_fp4, quant_fp8_sym) at the same points:
 * every clamp passes nothing at its bound. Printed by
 *   build/venv/bin/python - <<'PY'
 *   import torch; from auto_round.data_type.mxfp import quant_mx
 *   w = torch.tensor([[4., 6, 5.5, 5, 4.9, 2.5, 1.9, 1.2, 1, .9, .3, 0, -6, -5.5, -1.2] + [0.] * 17])
 *   v = torch.zeros_like(w, requires_grad=True)
 *   quant_mx(w, v=v, bits=4, group_size=32, data_type="mx_fp4")[0].sum().backward(); print(v.grad)
 *   PY
 * (likewise mx_fp8 with amax 256, quant_fp8_sym and nv_fp4 with amax 448
 * and 6): MXFP4 gives 1 0 0 .8 .8163265 .8 1 1 1 1 1 0 0 0 1. Each want
 * below is that value written as its formula (q/x, 1 or 0); ar's dV is the
 * f32 quotient q/x or the constant, so the bound is one rounding. */
static void check_bound_grads(int dtype, int G, const float *x, const double *want, int m)
{
    float w[32] = {0}, v[32] = {0}, dwq[32], dv[32] = {0};
    for (int j = 0; j < m; j++) w[j] = x[j];
    for (int j = 0; j < G; j++) dwq[j] = 1.0f;
    int bits = dtype == AR_QDT_MXFP4 || dtype == AR_QDT_NVFP4 ? 4 : 8;
    ar_quant_spec qs = {bits, G, 1, 0, 0, dtype, 0, 0, NULL, NULL};
    ar_quant_params p = {v, NULL, NULL, NULL};
    float wq[32], sc[2];
    ar_quant_out o = {wq, NULL, sc, NULL};
    cr_assert_eq(ar_quant_forward(&qs, w, 1, G, &p, &o), 0, "%s", ar_last_error());
    cr_assert_eq(sc[0], dtype == AR_QDT_NVFP4 ? 448.0f : 1.0f, "dtype %d: the group's scale is not the unit one", dtype);
    cr_assert_eq(ar_quant_backward(&qs, w, 1, G, &p, dwq, dv, NULL, NULL), 0, "%s", ar_last_error());
    for (int j = 0; j < m; j++)
        cr_expect(fx_within(dv[j], want[j], FX_U * fabs(want[j])), "dtype %d: x = %g: dV %.9g, torch %.9g", dtype,
                  x[j], dv[j], want[j]);
}

Test(fp_backward, clamp_bounds_pass_no_gradient_as_in_torch)
{
    /* MXFP4 (amax 4: e = 2 - 2, S = 1): levels ±6 (from 6 and 5.5) pass
     * nothing; 1 <= |x| < 2 sits at the private exponent's clip (emin = 0) */
    const float x4[] = {4, 6, 5.5f, 5, 4.9f, 2.5f, 1.9f, 1.2f, 1, 0.9f, 0.3f, 0, -6, -5.5f, -1.2f};
    const double w4[] = {1, 0, 0, 4 / 5.0, 4 / (double)4.9f, 2 / 2.5, 1, 1, 1, 1, 1, 0, 0, 0, 1};
    check_bound_grads(AR_QDT_MXFP4, 32, x4, w4, 15);
    /* MXFP8 (amax 256: e = 8 - 8): 440 rounds to 448 = max_norm; 431 to 416;
     * 1.5·2^-6 is at emin = -6, 1.5·2^-5 above it (q = x) */
    const float x8[] = {256, 448, 440, 431, 300, 0.0234375f, 0.046875f, 0.0078125f, 0};
    const double w8[] = {1, 0, 0, 416 / 431.0, 288 / 300.0, 1, 1, 1, 0};
    check_bound_grads(AR_QDT_MXFP8, 32, x8, w8, 9);
    /* FP8 (amax 448: S = 1): the one clamp is before the cast, so 440 (cast
     * to 448) passes and ±448 does not; x = 0 passes (no sign) */
    const float xf[] = {448, 440, 300, 0, -448};
    const double wf[] = {0, 1, 1, 1, 0};
    check_bound_grads(AR_QDT_FP8, 32, xf, wf, 5);
    /* NVFP4 (amax 6: global scale 448·6/6, block scale 448, x = w): levels ±6
     * pass nothing (cast_to_fp4's clamp), 5 rounds to 4 and passes */
    const float xn[] = {6, 5.5f, 5, 4.9f, 1.2f, 0.3f, 0, -6, -5.5f};
    const double wn[] = {0, 0, 1, 1, 1, 1, 0, 0, 0};
    check_bound_grads(AR_QDT_NVFP4, 16, xn, wn, 9);
}

/* The scale's chain at its clamps: an MX exponent at -127 (amax 2^-125 for
 * MXFP4: e = -125 - 2) is clamped at the bound and passes nothing to β; one
 * step above (amax 2^-124) it passes. The NVFP4 block scale of the test above
 * is exactly 448, its clamp's bound: β gets nothing there either. */
Test(fp_backward, clamped_scale_passes_nothing_to_beta_at_the_bound)
{
    float w[32] = {0}, v[32] = {0}, dwq[32], beta[1] = {1.0f};
    for (int j = 0; j < 32; j++) dwq[j] = 1.0f;
    ar_quant_spec mx = {4, 32, 1, 0, 0, AR_QDT_MXFP4, 0, 0, NULL, NULL};
    ar_quant_params p = {v, NULL, beta, NULL};
    for (int e = -125; e <= -124; e++) {
        w[0] = ldexpf(1.0f, e), w[1] = 0.325f * w[0];   /* x = 4 and 1.3: q - x·dq = 0 and 0.2 */
        float db[1] = {0};
        cr_assert_eq(ar_quant_backward(&mx, w, 1, 32, &p, dwq, NULL, NULL, db), 0, "%s", ar_last_error());
        if (e == -125) cr_expect_eq(db[0], 0.0f, "MX exponent at -127: dbeta %g", db[0]);
        else cr_expect_neq(db[0], 0.0f, "MX exponent at -126: dbeta is 0");
    }
    ar_quant_spec nv = {4, 16, 1, 0, 0, AR_QDT_NVFP4, 0, 0, NULL, NULL};
    const float xn[] = {6, 5.5f, 5, 4.9f, 1.2f, 0.3f, 0, -6, -5.5f};
    memset(w, 0, sizeof w);
    for (int j = 0; j < 9; j++) w[j] = xn[j];
    const float betas[2] = {1.0f, 0.9f};
    for (int i = 0; i < 2; i++) {
        float db[1] = {0}, b = betas[i];
        beta[0] = b;
        cr_assert_eq(ar_quant_backward(&nv, w, 1, 16, &p, dwq, NULL, NULL, db), 0, "%s", ar_last_error());
        if (b == 1.0f) cr_expect_eq(db[0], 0.0f, "NVFP4 block scale at 448: dbeta %g", db[0]);
        else cr_expect_neq(db[0], 0.0f, "NVFP4 block scale below 448: dbeta is 0");
    }
}

/* ---- opt-RTN --------------------------------------------------------------- */

static double weighted_err(const float *w, const float *wq, const float *imat, int n, int k)
{
    double e = 0;
    for (int i = 0; i < n * k; i++) e += (double)imat[i % k] * (wq[i] - w[i]) * (wq[i] - w[i]);
    return e;
}

static void check_opt_rtn(int dtype, int G)
{
    enum { N = 6, K = 64 };
    float w[N * K], imat[K], a[N * K], b[N * K], mult[N * K];
    fill(w, N * K, 0.2);
    for (int c = 0; c < K; c++) imat[c] = (float)(0.1 + fabs(urand()) * 3);
    ar_quant_spec qs = {dtype == AR_QDT_MXFP8 ? 8 : 4, G, 1, 0, 0, dtype, 0, 0, NULL, NULL};
    ar_quant_out oa = {a, NULL, NULL, NULL}, ob = {b, NULL, NULL, NULL};
    cr_assert_eq(ar_quant_forward(&qs, w, N, K, NULL, &oa), 0);
    cr_assert_eq(ar_quant_opt_rtn(&qs, w, N, K, imat, &ob), 0, "%s", ar_last_error());
    /* opt-RTN takes the best candidate by its own errors of G terms in f32
     * (gamma_{G+3} each), RTN's among them */
    double eb = weighted_err(w, b, imat, N, K), ea = weighted_err(w, a, imat, N, K);
    cr_expect(eb <= ea + FX_SAFETY * fx_gamma(G + 3) * (ea + eb), "opt-RTN %g vs RTN %g", eb, ea);
    /* each group's multiplier beats every other candidate for that group */
    cr_assert_eq(ar_quant_fp_search(&qs, w, N, K, imat, mult), 0);
    int ng = K / G;
    for (int r = 0; r < N; r++)
        for (int g = 0; g < ng; g++) {
            float *wr = w + r * K + g * G, q[64];
            double best = 1e300;
            for (int ci = 50; ci <= 200; ci++) {
                float m = ci / 100.0f;
                int ok = dtype == AR_QDT_NVFP4 ? ci <= 151 : (ci == 50 || ci == 100 || ci == 200);
                if (!ok) continue;
                ar_quant_spec one = qs;
                ar_quant_params p = {NULL, NULL, NULL, &m};
                ar_quant_out o = {q, NULL, NULL, NULL};
                if (dtype == AR_QDT_NVFP4) one.global_scale = ar_nvfp4_global_scale(w, N * K);
                cr_assert_eq(ar_quant_forward(&one, wr, 1, G, &p, &o), 0);
                best = fmin(best, weighted_err(wr, q, imat + g * G, 1, G));
            }
            float m = mult[r * ng + g], q2[64];
            ar_quant_spec one = qs;
            if (dtype == AR_QDT_NVFP4) one.global_scale = ar_nvfp4_global_scale(w, N * K);
            ar_quant_params p = {NULL, NULL, NULL, &m};
            ar_quant_out o = {q2, NULL, NULL, NULL};
            cr_assert_eq(ar_quant_forward(&one, wr, 1, G, &p, &o), 0);
            double e2 = weighted_err(wr, q2, imat + g * G, 1, G);
            cr_expect(e2 <= best + FX_SAFETY * fx_gamma(G + 3) * (e2 + best), "group %d/%d mult %g", r, g, m);
        }
}

Test(fp_opt_rtn, mxfp4_search_is_best_of_three) { check_opt_rtn(AR_QDT_MXFP4, 32); }
Test(fp_opt_rtn, nvfp4_search_is_best_of_grid)  { check_opt_rtn(AR_QDT_NVFP4, 16); }

/* ---- activations ---------------------------------------------------------- */

Test(fp_act, dynamic_mx_equals_weight_quantizer_and_static_fp8_uses_act_max)
{
    enum { R = 3, K = 64 };
    float x[R * K], y[R * K], ref[R * K];
    fill(x, R * K, 2.0);
    memcpy(y, x, sizeof x);
    ar_act_spec as = {AR_QDT_MXFP4, 4, 32, 1, 0, 0};
    cr_assert_eq(ar_act_quant(&as, y, R, K), 0);
    ar_quant_spec qs = {4, 32, 1, 0, 0, AR_QDT_MXFP4, 0, 0, NULL, NULL};
    ar_quant_out o = {ref, NULL, NULL, NULL};
    cr_assert_eq(ar_quant_forward(&qs, x, R, K, NULL, &o), 0);
    cr_expect_arr_eq(y, ref, sizeof y);
    memcpy(y, x, sizeof x);
    ar_act_spec st = {AR_QDT_FP8, 8, 0, 0, 4.0f, 0};
    cr_assert_eq(ar_act_quant(&st, y, R, K), 0);
    for (int i = 0; i < R * K; i++) {
        float want = ar_e4m3_round(x[i] / (4.0f / 448)) * (4.0f / 448);
        cr_expect_eq(y[i], want, "static fp8 x %g -> %g want %g", x[i], y[i], want);
    }
    ar_act_spec none = {AR_QDT_INT, 16, -1, 1, 0, 0};
    memcpy(y, x, sizeof x);
    cr_assert_eq(ar_act_quant(&none, y, R, K), 0);
    cr_expect_arr_eq(y, x, sizeof y, "16-bit activations are left alone");
}

/* RCEIL shared exponent (act_data_type mx_fp_rceil, spec §4.2), worked by
 * hand: group max 6 → e = ceil(log2(6/6)) = 0 (OCP floor: floor(log2 6) − 2 = 0
 * too); max 6.1 → e = ceil(log2 1.0167) = 1, scale 2 (OCP: 0, saturating
 * 6.1 to 6); max 0.7 → e = ceil(log2 0.1167) = −3, scale 1/8 (OCP:
 * floor(log2 0.7) − 2 = −3). Elements: x/2^e on the FP4 grid, half to even. */
Test(fp_act, mx_rceil_exponent_by_hand)
{
    enum { K = 8 };
    float x[3 * K] = {6.0f, 1.0f, -0.3f, 0, 2.6f, 0, 0, 0,
                      6.1f, 1.0f, -0.3f, 0, 2.6f, 0, 0, 0,
                      0.7f, 0.1f, -0.3f, 0, 0.26f, 0, 0, 0};
    /* row 1, scale 1: −0.3 → −0.5 (0.5 is nearer than 0), 2.6 → 3;
     * row 2, scale 2: 6.1/2 = 3.05 → 3 → 6, 1/2 → 0.5 → 1, −0.3/2 = −0.15 → −0,
     * 2.6/2 = 1.3 → 1.5 → 3; row 3, scale 1/8: 5.6 → 6, 0.8 → 1, −2.4 → −2,
     * 2.08 → 2 */
    float want[3 * K] = {6.0f, 1.0f, -0.5f, 0, 3.0f, 0, 0, 0,
                         6.0f, 1.0f, -0.0f, 0, 3.0f, 0, 0, 0,
                         0.75f, 0.125f, -0.25f, 0, 0.25f, 0, 0, 0};
    float y[3 * K];
    memcpy(y, x, sizeof x);
    ar_act_spec rc = {AR_QDT_MXFP4, 4, K, 1, 0, 1};
    cr_assert_eq(ar_act_quant(&rc, y, 3, K), 0);
    for (int i = 0; i < 3 * K; i++) cr_expect_eq(y[i], want[i], "x[%d] = %g -> %g, want %g", i, x[i], y[i], want[i]);
    /* the OCP floor rule differs on row 2: e = 0, 6.1 saturates to 6, 2.6 → 3 */
    memcpy(y, x, sizeof x);
    ar_act_spec ocp = {AR_QDT_MXFP4, 4, K, 1, 0, 0};
    cr_assert_eq(ar_act_quant(&ocp, y, 3, K), 0);
    cr_expect_eq(y[K + 4], 3.0f);
    cr_expect_eq(y[K + 2], -0.5f, "OCP keeps scale 1 for the 6.1 group");
}
