/* test_quant_gguf.c — the GGUF kind of ar_quant_spec (libar/quant/quant_ggml.h):
 * SignRound's rounding over GGML blocks with frozen scales.
 *
 * References computed another way: the forward against ggml_blocks.h's own
 * ar_ggml_fake_quant and its dequantizer (the emitted blocks), the backward
 * against central finite differences (double precision, written here) of the
 * smooth surrogate s·clamp((w + m)/s + V, lo + ½, hi − ½) − m whose slope the
 * straight-through rule claims (no gradient where the rounded level is at a
 * bound, as torch.clamp's number bounds give AutoRound), and tuning against an independent block
 * forward and MSE of the weights the stored blocks dequantize to. */
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
#include "quant_ggml.h"
#include "signround.h"

static uint64_t g_rng = 99;

static float uniform(void) { return (float)((ar_rand_next(&g_rng) >> 11) * (1.0 / 9007199254740992.0)); }

static float *random_buf(long n, float lo, float hi)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) p[i] = lo + (hi - lo) * uniform();
    return p;
}

/* Weights with an offset per row (exercises the mins) and a few outliers. */
static float *weights(int n, int k)
{
    float *w = random_buf((long)n * k, -1.f, 1.f);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < k; j++) w[(size_t)r * k + j] = 0.05f * w[(size_t)r * k + j] + 0.01f * (r % 3);
    w[7] = 0.4f;
    return w;
}

/* Quantize w [n, k] to t with an imatrix and freeze its scales. */
static void *quantize_frozen(ar_ggml_type t, const float *w, int n, int k, ar_gguf_frozen *fz, ar_quant_spec *qs)
{
    void *blocks = malloc(ar_ggml_row_bytes(t, k) * n);
    float *imat = random_buf(k, 0.1f, 2.f);
    cr_assert_eq(ar_ggml_quantize(t, w, blocks, n, k, imat), 0, "%s", ar_last_error());
    free(imat);
    cr_assert_eq(ar_quant_gguf_freeze(t, blocks, n, k, fz, qs), 0, "%s", ar_last_error());
    return blocks;
}

static const ar_ggml_type all_types[] = {AR_GGML_Q4_0, AR_GGML_Q4_1, AR_GGML_Q5_0, AR_GGML_Q5_1, AR_GGML_Q8_0,
                                         AR_GGML_Q2_K, AR_GGML_Q3_K, AR_GGML_Q4_K, AR_GGML_Q5_K, AR_GGML_Q6_K};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

/* Forward = ar_ggml_fake_quant on the same (s, m, V); V = 0 reproduces the
 * blocks llama.cpp's k-quant search wrote; tuned ŵ stored as codes dequantizes to ŵ. */
Test(quant_gguf, forward_matches_fake_quant_and_blocks)
{
    const int n = 3, k = 512;
    for (int ti = 0; ti < N_TYPES; ti++) {
        ar_ggml_type t = all_types[ti];
        float *w = weights(n, k), *v = random_buf((long)n * k, -0.5f, 0.5f);
        ar_gguf_frozen fz;
        ar_quant_spec qs;
        void *blocks = quantize_frozen(t, w, n, k, &fz, &qs);
        float *wq = malloc(sizeof(float) * n * k), *ref = malloc(sizeof(float) * n * k);
        uint8_t *codes = malloc((size_t)n * k);
        ar_quant_params p = {.v = v};
        cr_assert_eq(ar_quant_forward(&qs, w, n, k, &p, &(ar_quant_out){.wq = wq, .codes = codes}), 0, "%s",
                     ar_last_error());
        cr_assert_eq(ar_ggml_fake_quant(t, w, v, fz.scale, fz.min, (int64_t)n * k, ref), 0);
        cr_assert_eq(memcmp(wq, ref, sizeof(float) * n * k), 0, "%s: forward differs from fake_quant",
                     ar_ggml_type_name(t));
        /* V = 0 on a k-quant: exactly what the blocks dequantize to (llama.cpp
         * ends its k-quant searches with this rounding; the legacy searches
         * round with the scale before its fp16 cast, so they may differ) */
        cr_assert_eq(ar_quant_forward(&qs, w, n, k, NULL, &(ar_quant_out){.wq = wq}), 0);
        cr_assert_eq(ar_ggml_dequantize(t, blocks, ref, (int64_t)n * k), 0);
        for (int i = 0; i < n * k && ar_ggml_block_elems(t) == 256; i++)
            cr_assert_eq(wq[i], ref[i], "%s V=0 element %d", ar_ggml_type_name(t), i);
        /* tuned weights stored: blocks dequantize to them, codes as reported */
        cr_assert_eq(ar_quant_forward(&qs, w, n, k, &p, &(ar_quant_out){.wq = wq}), 0);
        cr_assert_eq(ar_quant_gguf_store(&qs, wq, n, k, blocks), 0, "%s: %s", ar_ggml_type_name(t), ar_last_error());
        cr_assert_eq(ar_ggml_dequantize(t, blocks, ref, (int64_t)n * k), 0);
        int moved = 0;
        for (int i = 0; i < n * k; i++) {
            cr_assert_eq(wq[i], ref[i], "%s stored element %d", ar_ggml_type_name(t), i);
            float s = fz.scale[i / qs.group_size], m = fz.min ? fz.min[i / qs.group_size] : 0.f;
            if (s) cr_assert_eq(s * (float)codes[i] - s * (float)(1 << (qs.bits - 1)) * qs.sym - m, ref[i] ,
                                "%s code of element %d", ar_ggml_type_name(t), i);
            moved += nearbyintf((w[i] + m) / (s ? s : 1.f)) != nearbyintf((w[i] + m) / (s ? s : 1.f) + v[i]);
        }
        cr_assert_gt(moved, 0, "%s: random V changed no rounding", ar_ggml_type_name(t));
        ar_gguf_frozen_free(&fz);
        free(blocks); free(w); free(v); free(wq); free(ref); free(codes);
    }
}

/* Slope of the smooth surrogate Σ g·(s·clamp(x + V, lo + ½, hi − ½) − m) by
 * central differences, where x + V is not within h of a clamp edge. Its
 * edges are where the rounded level reaches a bound: AutoRound 0.16.1 clamps
 * the rounded level with torch.clamp's number bounds (data_type/gguf.py),
 * and PyTorch 2.15 passes no gradient at a bound itself:
 *   build/venv/bin/python -c "import torch; from auto_round.data_type.utils import round_ste;
 *     x = torch.tensor([-.4, 0, 3, 15, 15.2], requires_grad=True);
 *     round_ste(x).clamp_(0, 15).sum().backward(); print(x.grad)"
 * gives 0 0 1 0 0 (levels 0 0 3 15 15). Elements
 * whose level is at a bound are counted so the test sees both kinds. */
Test(quant_gguf, backward_matches_finite_differences)
{
    const int n = 2, k = 256;
    const ar_ggml_type types[] = {AR_GGML_Q4_K, AR_GGML_Q6_K, AR_GGML_Q2_K, AR_GGML_Q8_0};
    for (int ti = 0; ti < 4; ti++) {
        ar_ggml_type t = types[ti];
        ar_ggml_grid g;
        ar_ggml_grid_of(t, &g);
        float *w = weights(n, k), *v = random_buf((long)n * k, -0.5f, 0.5f), *dwq = random_buf((long)n * k, -1, 1);
        ar_gguf_frozen fz;
        ar_quant_spec qs;
        void *blocks = quantize_frozen(t, w, n, k, &fz, &qs);
        float *dv = calloc((size_t)n * k, sizeof(float));
        ar_quant_params p = {.v = v};
        cr_assert_eq(ar_quant_backward(&qs, w, n, k, &p, dwq, dv, NULL, NULL), 0, "%s", ar_last_error());
        double lo = (t == AR_GGML_Q8_0 ? 1 : 0) - g.offset + 0.5, hi = g.qmax - g.offset - 0.5, h = 1e-4;
        int inside = 0, outside = 0;
        for (int i = 0; i < n * k; i++) {
            double s = fz.scale[i / g.group], m = fz.min ? fz.min[i / g.group] : 0, x = (w[i] + m) / s + v[i];
            if (!s || fabs(x - lo) < 2 * h || fabs(x - hi) < 2 * h) continue;
            double xp = fmin(fmax(x + h, lo), hi), xm = fmin(fmax(x - h, lo), hi);
            double fd = dwq[i] * (s * xp - m - (s * xm - m)) / (2 * h);
            /* the surrogate is linear here, so the differences are exact but
             * for the double rounding of x +- h, s x -+ m and their difference
             * (2^-51 (|s x| + |s| h + |m|) over 2h, times |g|); dV = g s
             * rounded once to f32 */
            double gs = fabs(dwq[i] * s), cancel = 0x1p-51 * (fabs(s * x) + fabs(s) * h + fabs(m)) / (2 * h);
            fx_assert_within(dv[i], fd, FX_U * gs + cancel * fabs(dwq[i]), "%s element %d: dV vs differences",
                             ar_ggml_type_name(t), i);
            if (x > lo && x < hi) inside++; else outside++;
        }
        cr_assert_gt(inside, n * k / 2, "%s: too few elements inside the clamp", ar_ggml_type_name(t));
        cr_assert_gt(outside, 0, "%s: no element at a bound level", ar_ggml_type_name(t));
        ar_gguf_frozen_free(&fz);
        free(blocks); free(w); free(v); free(dwq); free(dv);
    }
}

Test(quant_gguf, bad_specs_are_refused)
{
    float s = 1.f, w[32] = {0}, out[32];
    ar_quant_spec qs = {.dtype = AR_QDT_GGUF, .ggml_type = AR_GGML_Q4_K, .group_size = 32, .gguf_scale = &s};
    ar_quant_out o = {.wq = out};
    cr_assert_eq(ar_quant_forward(&qs, w, 1, 32, NULL, &o), -1);   /* Q4_K needs mins */
    cr_assert(strstr(ar_last_error(), "mins"), "%s", ar_last_error());
    qs.ggml_type = AR_GGML_Q6_K;
    cr_assert_eq(ar_quant_forward(&qs, w, 1, 32, NULL, &o), -1);   /* Q6_K groups are 16 */
    cr_assert(strstr(ar_last_error(), "16"), "%s", ar_last_error());
    qs.group_size = 16;
    cr_assert_eq(ar_quant_forward(&qs, w, 1, 24, NULL, &o), -1);   /* K not whole groups */
    qs.ggml_type = AR_GGML_F16;
    cr_assert_eq(ar_quant_spec_check(&qs), -1);
    ar_gguf_frozen fz;
    uint8_t blk[210] = {0};
    cr_assert_eq(ar_quant_gguf_freeze(AR_GGML_Q6_K, blk, 1, 128, &fz, &qs), -1);  /* not a whole block */
    cr_assert(strstr(ar_last_error(), "256"), "%s", ar_last_error());
}

/* ---- tuning a random block whose every linear is Q4_K ------------------- */

static double block_mse(const ar_config *c, const ar_block_weights *w, const uint16_t *xb, const uint16_t *yb, int n,
                        int T)
{
    long nel = (long)n * T * c->hidden;
    float *x = malloc(sizeof(float) * nel), *y = malloc(sizeof(float) * nel), *ref = malloc(sizeof(float) * nel);
    ar_to_f32(x, xb, AR_BF16, nel);
    ar_to_f32(ref, yb, AR_BF16, nel);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, c, n, T, 0), 0);
    cr_assert_eq(ar_block_forward(c, w, x, y, n, T, &ws), 0);
    double e = 0;
    for (long i = 0; i < nel; i++) {
        if ((i / c->hidden) % T == T - 1) continue;   /* the default mask drops each sample's last position */
        e += ((double)y[i] - ref[i]) * ((double)y[i] - ref[i]);
    }
    ar_block_work_free(&ws);
    free(x); free(y); free(ref);
    return e;
}

Test(quant_gguf, signround_lowers_block_loss_and_blocks_hold_the_tuned_weights)
{
    omp_set_num_threads(1);
    ar_config c = {0};
    c.hidden = 256, c.intermediate = 512, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64;
    c.rms_eps = 1e-5f, c.rope_theta = 10000.0, c.n_layers = 1;
    const int n = 4, T = 16;
    ar_block_weights wfp, wq0, wq1;
    cr_assert(!ar_block_weights_init(&wfp, AR_NLINEAR) && !ar_block_weights_init(&wq0, AR_NLINEAR));
    ar_block_desc bd;
    ar_block_plan plan;
    cr_assert_eq(ar_block_desc_init(&bd, &c), 0);
    cr_assert_eq(ar_block_plan_init(&plan, &bd), 0);
    ar_gguf_frozen fz[AR_NLINEAR];
    void *blocks[AR_NLINEAR];
    ar_quant_out out[AR_NLINEAR] = {0};
    for (int i = 0; i < AR_NLINEAR; i++) {
        int rows, k;
        ar_linear_shape(&c, i, &rows, &k);
        wfp.w[i] = random_buf((long)rows * k, -1.7f / sqrtf((float)k), 1.7f / sqrtf((float)k));
        blocks[i] = quantize_frozen(AR_GGML_Q4_K, wfp.w[i], rows, k, &fz[i], &plan.spec[i]);
        plan.quantize[i] = 1;
        wq0.w[i] = malloc(sizeof(float) * rows * k);
        cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q4_K, blocks[i], wq0.w[i], (int64_t)rows * k), 0);
        out[i].wq = malloc(sizeof(float) * rows * k);
    }
    float ones[256];
    for (int j = 0; j < 256; j++) ones[j] = 1.f;
    wfp.attn_norm = wfp.mlp_norm = wq0.attn_norm = wq0.mlp_norm = ones;
    long nel = (long)n * T * c.hidden;
    float *x = random_buf(nel, -1.7f, 1.7f), *y = malloc(sizeof(float) * nel);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &c, n, T, 0), 0);
    cr_assert_eq(ar_block_forward(&c, &wfp, x, y, n, T, &ws), 0);
    ar_block_work_free(&ws);
    uint16_t *xb = malloc(2 * nel), *yb = malloc(2 * nel);
    ar_from_f32(xb, x, AR_BF16, nel);
    ar_from_f32(yb, y, AR_BF16, nel);

    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = 40, o.batch_size = 4, o.minmax_tuning = 0;
    ar_signround_report rep;
    cr_assert_eq(ar_signround_tune_block(&c, &wfp, xb, yb, NULL, n, T, &plan, &o, out, &rep, NULL, NULL), 0, "%s",
                 ar_last_error());
    cr_assert_eq(ar_block_weights_view(&wq1, &wq0), 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int rows, k;
        ar_linear_shape(&c, i, &rows, &k);
        cr_assert_eq(ar_quant_gguf_store(&plan.spec[i], out[i].wq, rows, k, blocks[i]), 0, "%s", ar_last_error());
        wq1.w[i] = malloc(sizeof(float) * rows * k);
        cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q4_K, blocks[i], wq1.w[i], (int64_t)rows * k), 0);
        cr_assert_eq(memcmp(wq1.w[i], out[i].wq, sizeof(float) * rows * k), 0, "linear %d: blocks differ", i);
    }
    double e0 = block_mse(&c, &wq0, xb, yb, n, T), e1 = block_mse(&c, &wq1, xb, yb, n, T);
    cr_assert_lt(e1, 0.9 * e0, "tuned loss %g, untuned %g (tuner: %g -> %g)", e1, e0, rep.loss0, rep.best_loss);
    cr_assert_lt(rep.best_loss, rep.loss0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        ar_gguf_frozen_free(&fz[i]);
        free(blocks[i]); free(wfp.w[i]); free(wq0.w[i]); free(wq1.w[i]); free(out[i].wq);
    }
    free(x); free(y); free(xb); free(yb);
    ar_block_weights_release(&wfp); ar_block_weights_release(&wq0); ar_block_weights_release(&wq1);
    ar_block_plan_free(&plan);
    ar_block_desc_free(&bd);
}
