/* test_gemm.c — the bf16 GEMM path (gemm.h, oneDNN) against references
 * computed in double, and the Linear ops through it against their f32 path.
 *
 * Error bounds (u = 2^-24, f32's unit roundoff; bf16 keeps 8 significant
 * bits, so rounding a value to bf16 moves it by at most 2^-8 of itself):
 * - Against the double product of the bf16-ROUNDED inputs (â, b̂ rounded here
 *   with dtype.h's ar_round_bf16, another implementation of the rounding),
 *   only the f32 accumulation remains: the products âb̂ are exact in f32
 *   (8 + 8 significant bits), and K - 1 additions plus the sum with beta·C0
 *   in any order and grouping give |C - ref| <= γ_(K+1) (Σ_k |â_k b̂_k| + |C0|),
 *   γ_n = n u / (1 - n u). Inputs are away from f32's subnormals, which AMX
 *   and AVX512-BF16 flush.
 * - Against the double product of the f32 inputs, rounding both inputs adds
 *   |âb̂ - ab| <= (2·2^-8 + 2^-16)|a||b|: the k·2^-8·|a||b| bound of the bf16
 *   path versus f32.
 * The tests also require the bf16 result to differ from the f32 inputs'
 * product by more than f32 accumulation alone could, so they fail if the
 * bf16 path silently ran in f32. Skipped where the build has no oneDNN or
 * the CPU no bf16. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "gemm.h"
#include "ops.h"

static unsigned rng_state = 4242;
static float urand(void) /* uniform [-1, 1), never within 2^-20 of 0 */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    float v = (float)((rng_state >> 8) / 8388608.0 - 1.0);
    return fabsf(v) < 1e-6f ? 0.5f : v;
}

static double gamma_n(int n)
{
    double u = ldexp(1.0, -24);
    return n * u / (1 - n * u);
}

/* A stored as op(A) [M, K] element (i, k) with lda, ta. */
static float at(const float *A, int ta, int lda, int i, int k) { return ta ? A[(long)k * lda + i] : A[(long)i * lda + k]; }

typedef struct { double bf_err, bf_bound, f32_err, f32_bound, f32_only; } errs;

/* C = op(A) op(B) + beta C0 through g; worst |error| / bound ratios. */
static errs check(ar_gemm *g, int ta, int tb, int M, int N, int K, float beta)
{
    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2; /* padded leading dimensions */
    long na = (long)(ta ? K : M) * lda, nb = (long)(tb ? N : K) * ldb, nc = (long)M * ldc;
    float *A = malloc(sizeof(float) * na), *B = malloc(sizeof(float) * nb), *C = malloc(sizeof(float) * nc);
    float *C0 = malloc(sizeof(float) * nc);
    cr_assert(A && B && C && C0);
    for (long i = 0; i < na; i++) A[i] = urand();
    for (long i = 0; i < nb; i++) B[i] = urand() * 3.0f;
    for (long i = 0; i < nc; i++) C0[i] = C[i] = urand();
    cr_assert_eq(ar_gemm_run(g, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc), 0);
    errs e = {0, 0, 0, 0, 0};
    double worst_bf = 0, worst_f = 0, worst_f32 = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double rb = 0, abs_b = 0, rf = 0, abs_f = 0;
            for (int k = 0; k < K; k++) {
                float a = at(A, ta, lda, i, k), b = at(B, !tb, ldb, j, k);
                double p = (double)ar_round_bf16(a) * ar_round_bf16(b);
                rb += p, abs_b += fabs(p);
                rf += (double)a * b, abs_f += fabs((double)a * b);
            }
            double c0 = beta * (double)C0[(long)i * ldc + j], c = C[(long)i * ldc + j];
            double bound_bf = gamma_n(K + 1) * (abs_b + fabs(c0));
            double bound_f = (2 * ldexp(1.0, -8) + ldexp(1.0, -16)) * abs_f + bound_bf;
            double f32_acc = gamma_n(K + 1) * (abs_f + fabs(c0)); /* all f32 could explain */
            double eb = fabs(c - (rb + c0)) / bound_bf, ef = fabs(c - (rf + c0)) / bound_f;
            double e32 = fabs(c - (rf + c0)) / f32_acc;
            if (eb > worst_bf) worst_bf = eb;
            if (ef > worst_f) worst_f = ef;
            if (e32 > worst_f32) worst_f32 = e32;
        }
    e.bf_err = worst_bf, e.f32_err = worst_f, e.f32_only = worst_f32;
    free(A); free(B); free(C); free(C0);
    return e;
}

static void need_bf16(void)
{
    if (!ar_gemm_bf16_supported()) cr_skip_test("no bf16 GEMMs here: %s", ar_gemm_bf16_backend());
}

Test(gemm, bf16_matches_rounded_reference_all_layouts)
{
    need_bf16();
    ar_gemm g;
    cr_assert_eq(ar_gemm_init(&g, 1), 0);
    /* the three Linear products' layouts (fwd NT, dx NN, dW TN) and TT, beta 0 and 1,
     * odd sizes that are not multiples of any tile */
    static const int shapes[][3] = {{37, 29, 53}, {64, 48, 300}, {129, 65, 31}, {1, 17, 700}};
    for (int s = 0; s < 4; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int acc = 0; acc < 2; acc++) {
                    errs e = check(&g, ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], acc ? 1.0f : 0.0f);
                    cr_expect_leq(e.bf_err, 1.0, "shape %d ta %d tb %d beta %d: %.3g of the bf16-input bound", s,
                                  ta, tb, acc, e.bf_err);
                    cr_expect_leq(e.f32_err, 1.0, "shape %d ta %d tb %d beta %d: %.3g of the k 2^-8 |a||b| bound",
                                  s, ta, tb, acc, e.f32_err);
                    cr_expect_gt(e.f32_only, 1.0, "shape %d ta %d tb %d: result within f32 accumulation error of "
                                 "the f32 inputs' product: did bf16 run?", s, ta, tb);
                }
    ar_gemm_free(&g);
}

Test(gemm, f32_context_and_null_are_the_reference_path)
{
    ar_gemm g;
    cr_assert_eq(ar_gemm_init(&g, 0), 0);
    errs e = check(&g, 0, 1, 33, 21, 45, 1.0f);
    /* f32: within f32 accumulation error of the exact product */
    cr_expect_leq(e.f32_only, 1.0, "%.3g", e.f32_only);
    e = check(NULL, 1, 0, 33, 21, 45, 0.0f);
    cr_expect_leq(e.f32_only, 1.0, "%.3g", e.f32_only);
    ar_gemm_free(&g);
}

Test(gemm, bf16_refused_where_unsupported)
{
    if (ar_gemm_bf16_supported()) cr_skip_test("this CPU and build support bf16");
    ar_gemm g;
    cr_expect_neq(ar_gemm_init(&g, 1), 0);
}

/* ar_linear_forward_g / backward_g in bf16 against their f32 path: every
 * output is a sum of K products (forward), N (dx) or R (dW), so each differs
 * from f32 by at most (2·2^-8 + 2^-16 + 2 γ_(n+1)) Σ |a||b| + γ_1·|bias|,
 * checked elementwise with Σ |a||b| computed in double. */
Test(gemm, linear_bf16_vs_f32)
{
    need_bf16();
    int R = 96, K = 80, N = 48;
    float *x = malloc(sizeof(float) * R * K), *W = malloc(sizeof(float) * N * K), *b = malloc(sizeof(float) * N);
    float *dy = malloc(sizeof(float) * R * N);
    float *y32 = calloc(R * N, 4), *y16 = calloc(R * N, 4), *dx32 = calloc(R * K, 4), *dx16 = calloc(R * K, 4);
    float *dW32 = calloc(N * K, 4), *dW16 = calloc(N * K, 4);
    cr_assert(x && W && b && dy && y32 && y16 && dx32 && dx16 && dW32 && dW16);
    for (int i = 0; i < R * K; i++) x[i] = urand();
    for (int i = 0; i < N * K; i++) W[i] = urand() * 0.1f;
    for (int i = 0; i < N; i++) b[i] = urand();
    for (int i = 0; i < R * N; i++) dy[i] = urand();
    ar_gemm g;
    cr_assert_eq(ar_gemm_init(&g, 1), 0);
    cr_assert_eq(ar_linear_forward_g(&g, y16, x, W, b, R, K, N), 0);
    ar_linear_forward(y32, x, W, b, R, K, N);
    cr_assert_eq(ar_linear_backward_g(&g, dx16, dW16, NULL, dy, x, W, R, K, N), 0);
    ar_linear_backward(dx32, dW32, NULL, dy, x, W, R, K, N);
    double rel = 2 * ldexp(1.0, -8) + ldexp(1.0, -16);
    int bad = 0;
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += fabs((double)x[r * K + k] * W[n * K + k]);
            double bound = (rel + 2 * gamma_n(K + 1)) * (s + fabs(b[n]));
            bad += fabs((double)y16[r * N + n] - y32[r * N + n]) > bound;
        }
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += fabs((double)dy[r * N + n] * W[n * K + k]);
            bad += fabs((double)dx16[r * K + k] - dx32[r * K + k]) > (rel + 2 * gamma_n(N + 1)) * s;
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int r = 0; r < R; r++) s += fabs((double)dy[r * N + n] * x[r * K + k]);
            bad += fabs((double)dW16[n * K + k] - dW32[n * K + k]) > (rel + 2 * gamma_n(R + 1)) * s;
        }
    cr_expect_eq(bad, 0, "%d outputs outside the bf16-vs-f32 bound", bad);
    cr_expect_neq(memcmp(y16, y32, sizeof(float) * R * N), 0, "bf16 forward identical to f32: did bf16 run?");
    ar_gemm_free(&g);
    free(x); free(W); free(b); free(dy); free(y32); free(y16); free(dx32); free(dx16); free(dW32); free(dW16);
}

/* Pinned operands (gemm.h): a pinned weight is converted once and its copy
 * serves the forward (x W^T, W as B transposed) and the backward (dy W, W as
 * B as stored), and the results are byte-identical to unpinned runs (the
 * same rounding of the same floats). After ar_gemm_unpin the weight may
 * change: the next product must see the new values, not the stale copy. */
Test(gemm, pinned_operand_converted_once_same_bytes)
{
    need_bf16();
    int R = 64, K = 48, N = 40;
    float *x = malloc(sizeof(float) * R * K), *W = malloc(sizeof(float) * N * K), *dy = malloc(sizeof(float) * R * N);
    float *y0 = calloc(R * N, 4), *y1 = calloc(R * N, 4), *dx0 = calloc(R * K, 4), *dx1 = calloc(R * K, 4);
    float *dW0 = calloc(N * K, 4), *dW1 = calloc(N * K, 4);
    cr_assert(x && W && dy && y0 && y1 && dx0 && dx1 && dW0 && dW1);
    for (int i = 0; i < R * K; i++) x[i] = urand();
    for (int i = 0; i < N * K; i++) W[i] = urand() * 0.1f;
    for (int i = 0; i < R * N; i++) dy[i] = urand();
    ar_gemm g;
    cr_assert_eq(ar_gemm_init(&g, 1), 0);
    /* unpinned: forward converts x and W, backward dy twice, W, x: 6 */
    cr_assert_eq(ar_linear_forward_g(&g, y0, x, W, NULL, R, K, N), 0);
    g.bf16_converts = 0;
    cr_assert_eq(ar_gemm_pin(&g, W, N, K), 1);
    cr_expect_eq(ar_gemm_pin(&g, W, N, K), 0, "a second pin of the same operand is not the pinner's");
    cr_assert_eq(ar_linear_forward_g(&g, y1, x, W, NULL, R, K, N), 0);
    cr_expect_eq(g.bf16_converts, 2, "forward with W pinned: x and W converted, got %ld", g.bf16_converts);
    cr_assert_eq(ar_linear_backward_g(&g, dx1, dW1, NULL, dy, x, W, R, K, N), 0);
    /* backward: dy once (pinned by the backward for its two products), x once; W reused */
    cr_expect_eq(g.bf16_converts, 4, "backward reused W and converted dy once, got %ld", g.bf16_converts);
    ar_gemm_unpin(&g, NULL);
    cr_expect_eq(memcmp(y0, y1, sizeof(float) * R * N), 0, "pinned forward differs from unpinned");
    cr_assert_eq(ar_linear_backward_g(&g, dx0, dW0, NULL, dy, x, W, R, K, N), 0);
    cr_expect_eq(memcmp(dx0, dx1, sizeof(float) * R * K), 0, "pinned dx differs from unpinned");
    cr_expect_eq(memcmp(dW0, dW1, sizeof(float) * N * K), 0, "pinned dW differs from unpinned");
    /* a changed weight after unpin: the product uses the new values */
    cr_assert_eq(ar_gemm_pin(&g, W, N, K), 1);
    cr_assert_eq(ar_linear_forward_g(&g, y1, x, W, NULL, R, K, N), 0);
    ar_gemm_unpin(&g, W);
    for (int i = 0; i < N * K; i++) W[i] = -W[i];
    cr_assert_eq(ar_linear_forward_g(&g, y1, x, W, NULL, R, K, N), 0);
    int same = 0;
    for (int i = 0; i < R * N; i++) same += y1[i] != -y0[i];
    cr_expect_eq(same, 0, "%d outputs after unpin and negating W are not the negated product", same);
    /* a pointer pinned with another shape is converted as usual (no stale copy) */
    cr_assert_eq(ar_gemm_pin(&g, W, 1, K), 1);
    cr_assert_eq(ar_linear_forward_g(&g, y0, x, W, NULL, R, K, N), 0);
    for (int i = 0; i < R * N; i++) same += y0[i] != y1[i];
    cr_expect_eq(same, 0, "a shape-mismatched pin changed the product");
    ar_gemm_unpin(&g, NULL);
    ar_gemm_free(&g);
    /* f32: pinning is a no-op */
    cr_assert_eq(ar_gemm_init(&g, 0), 0);
    cr_expect_eq(ar_gemm_pin(&g, W, N, K), 0);
    cr_expect_eq(ar_gemm_pin(NULL, W, N, K), 0);
    ar_gemm_free(&g);
    free(x); free(W); free(dy); free(y0); free(y1); free(dx0); free(dx1); free(dW0); free(dW1);
}
