/* test_signround_v2.c — SignRoundV2 (enable_alg_ext, spec §5.1(a)) pieces of
 * the block tuner: the outlier-suppressed loss against a reference that sorts
 * every error, and the init_scale / β ∈ [0, 2] path of the plan against a
 * symmetric quantizer written out here. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "calib.h"
#include "dtype.h"
#include "error.h"
#include "fixture.h"
#include "signround.h"

static void one_thread(void) { omp_set_num_threads(1); }

TestSuite(signround_v2, .init = one_thread);

static uint64_t g_rng = 99;

static float gauss(void)
{
    double u = ((ar_rand_next(&g_rng) >> 11) + 1.0) / 9007199254740993.0;
    double v = (ar_rand_next(&g_rng) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* ---- the loss --------------------------------------------------------------- */

static const float *g_err;   /* |pred − ref| for the sort below */

/* Descending |error|, lower index first on ties. */
static int by_error_desc(const void *a, const void *b)
{
    long i = *(const long *)a, j = *(const long *)b;
    if (g_err[i] != g_err[j]) return g_err[i] > g_err[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* Reference: sort all indices by |error|, drop the first k, sum the rest over kept rows. */
static double reference_sse(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, uint8_t *dropped)
{
    long n = rows * C, k = n / 1000 > 1 ? n / 1000 : 1;
    float *err = malloc(sizeof(float) * n);
    long *idx = malloc(sizeof(long) * n);
    for (long i = 0; i < n; i++) err[i] = fabsf(pred[i] - ref[i]), idx[i] = i;
    g_err = err;
    qsort(idx, (size_t)n, sizeof *idx, by_error_desc);
    memset(dropped, 0, (size_t)n);
    for (long i = 0; i < k; i++) dropped[idx[i]] = 1;
    double sse = 0;
    for (long i = 0; i < n; i++)
        if (!dropped[i] && (!mask || mask[i / C])) sse += (double)(pred[i] - ref[i]) * (pred[i] - ref[i]);
    free(err); free(idx);
    return sse;
}

static void check_loss(long rows, int C, int with_mask, int with_ties)
{
    long n = rows * C;
    float *pred = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n), *dp = malloc(sizeof(float) * n);
    uint8_t *mask = malloc((size_t)rows), *dropped = malloc((size_t)n);
    for (long i = 0; i < n; i++) {
        ref[i] = gauss();
        /* a heavy tail, so the dropped top 0.1 % matter; with ties, many equal errors */
        float e = with_ties ? (float)(i % 7 == 0 ? 4 : 1) * 0.25f : gauss() * (i % 97 == 0 ? 20.f : 1.f);
        pred[i] = ref[i] + e;
    }
    for (long r = 0; r < rows; r++) mask[r] = with_mask ? r % 5 != 4 : 1;
    double want = reference_sse(pred, ref, with_mask ? mask : NULL, rows, C, dropped);
    float g = 0.5f;
    double got = ar_outlier_suppressed_sse(pred, ref, with_mask ? mask : NULL, rows, C, g, dp);
    /* both sum the same positive f32 squares in double in index order (among
     * tied errors they may drop different, equal terms): gamma_n, double */
    fx_assert_within(got, want, fx_gamma_d(n) * want, "rows %ld: sse", rows);
    for (long i = 0; i < n; i++) {
        int counted = !dropped[i] && (!with_mask || mask[i / C]);
        float w = counted ? g * (pred[i] - ref[i]) : 0.f;
        cr_assert_eq(dp[i], w, "element %ld: gradient %g, want %g", i, dp[i], w);
    }
    /* against the plain masked MSE: only the dropped elements differ */
    double mse = ar_masked_mse(pred, ref, with_mask ? mask : NULL, rows, C, NULL) * (double)n, gone = 0;
    for (long i = 0; i < n; i++)
        if (dropped[i] && (!with_mask || mask[i / C])) gone += (double)(pred[i] - ref[i]) * (pred[i] - ref[i]);
    /* double sums of positive terms, each within gamma_n (double) of its
     * exact value: their sum bounds the difference */
    fx_assert_within(mse - gone, got, fx_gamma_d(n) * (mse + gone + got), "MSE %g − dropped %g", mse, gone);
    free(pred); free(ref); free(dp); free(mask); free(dropped);
}

Test(signround_v2, outlier_loss_matches_sorted_reference)
{
    check_loss(300, 64, 0, 0);     /* k = 19 */
    check_loss(300, 64, 1, 0);     /* masked rows: their errors still compete for the top k */
    check_loss(37, 16, 1, 0);      /* fewer than 1000 elements: k = 1 */
}

Test(signround_v2, outlier_loss_ties_drop_lowest_indices)
{
    check_loss(200, 50, 0, 1);     /* 1429 errors of 1.0, k = 10 of them dropped */
}

/* ---- init_scale through the tuner --------------------------------------------- */

/* One random Llama block (C=32, F=64) quantized W2 sym, group 16, f32 scales. */
Test(signround_v2, init_scale_sets_the_iteration_zero_scale)
{
    ar_config c = {0};
    c.hidden = 32, c.intermediate = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8;
    c.rms_eps = 1e-5f, c.rope_theta = 10000.0, c.n_layers = 1;
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_init(&w, AR_NLINEAR), 0);
    ar_block_desc bd;
    ar_block_plan plan;
    cr_assert_eq(ar_block_desc_init(&bd, &c), 0);
    cr_assert_eq(ar_block_plan_init(&plan, &bd), 0);
    float *init[AR_NLINEAR] = {0};
    ar_quant_out out[AR_NLINEAR] = {{0}};
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&c, i, &n, &k);
        w.w[i] = malloc(sizeof(float) * n * k);
        for (int j = 0; j < n * k; j++) w.w[i][j] = gauss() / sqrtf((float)k);
        init[i] = malloc(sizeof(float) * n * (k / 16));
        for (int g = 0; g < n * k / 16; g++) init[i][g] = (g % 2 ? 1 : -1) * (0.02f + 0.001f * (g % 13));
        plan.quantize[i] = 1;
        plan.spec[i] = (ar_quant_spec){.bits = 2, .group_size = 16, .sym = 1, .flags = AR_QF_F32_SCALE,
                                       .minmax_hi = 2};
        plan.init_scale[i] = init[i];
        out[i].wq = malloc(sizeof(float) * n * k);
    }
    float ones[32];
    for (int j = 0; j < 32; j++) ones[j] = 1;
    w.attn_norm = w.mlp_norm = ones;
    const int n = 2, T = 8;
    long nel = (long)n * T * c.hidden;
    uint16_t *x = malloc(2 * nel), *y = malloc(2 * nel);
    for (long i = 0; i < nel; i++) x[i] = ar_f32_to_bf16(gauss()), y[i] = ar_f32_to_bf16(gauss());
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = 1;                   /* the returned weights are iteration 0's: V = 0, β = 1 */
    o.outlier_loss = 1;
    ar_signround_report rep;
    cr_assert_eq(ar_signround_tune_block(&c, &w, x, y, NULL, n, T, &plan, &o, out, &rep, NULL, NULL), 0, "%s",
                 ar_last_error());
    for (int i = 0; i < AR_NLINEAR; i++) {
        int nn, k;
        ar_linear_shape(&c, i, &nn, &k);
        for (int j = 0; j < nn * k; j++) {
            float s = init[i][j / 16];
            float q = rintf(w.w[i][j] / s);
            q = q < -2 ? -2 : q > 1 ? 1 : q;
            cr_assert_eq(out[i].wq[j], s * q, "%s[%d]: %g, want %g·%g", ar_linear_names[i], j, out[i].wq[j], s, q);
        }
        free(w.w[i]); free(init[i]); free(out[i].wq);
    }
    cr_assert(rep.loss0 > 0 && isfinite(rep.loss0));
    free(x); free(y);
    ar_block_plan_free(&plan);
    ar_block_desc_free(&bd);
}
