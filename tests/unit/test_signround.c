/* test_signround.c — the SignRound block tuner (libar/tune/signround.h).
 *
 * The loss of any set of weights is recomputed here independently: an
 * inference forward (ar_block_forward) and a double-precision masked MSE
 * written in this file. That reference checks what tuning promises: a lower
 * loss than RTN, weights that are a valid quantization, the returned
 * parameters being those of the recorded best (or last) iteration, equal
 * results for equal seeds, and gradient accumulation that matches one large
 * batch. Shapes are tiny, plus stories260K's block 0 on real text. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "calib.h"
#include "dtype.h"
#include "error.h"
#include "fake_ranks.h"
#include "fixture.h"
#include "model.h"
#include "ops.h"
#include "quant_fp.h"
#include "refblock.h"
#include "signround.h"
#include "tokenizer.h"

/* ------------------------------------------------------------ fixtures */

/* The blocks here are tiny: waking threads for each op costs far more than
 * the op, so tests run single-threaded unless they check threading. */
static void one_thread(void) { omp_set_num_threads(1); }

TestSuite(signround, .init = one_thread);

/* One block, its cached inputs/targets and a plan, as ar-tune hands them over. */
typedef struct {
    ar_config c;
    ar_block_weights w;         /* FP weights (f32) */
    int n, T;
    uint16_t *x, *y;            /* bf16 [n, T, C]: inputs and FP outputs */
    ar_block_desc bd;           /* the plan's description of the block */
    ar_block_plan plan;
} fixture;

static uint64_t g_rng = 12345;

static float uniform(void) { return (float)((ar_rand_next(&g_rng) >> 11) * (1.0 / 9007199254740992.0)); }

static float gauss(void)
{
    float u = uniform() + 1e-12f, v = uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static float *gauss_buf(long n, float sd, float mean)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) p[i] = mean + sd * gauss();
    return p;
}

static uint16_t *to_bf16(const float *x, long n)
{
    uint16_t *b = malloc(2 * n);
    ar_from_f32(b, x, AR_BF16, n);
    return b;
}

/* Y = block_fp(X) over all samples, rounded to bf16 like ar-tune's cache. */
static void fill_targets(fixture *f)
{
    long nel = (long)f->n * f->T * f->c.hidden;
    float *x = malloc(sizeof(float) * nel), *y = malloc(sizeof(float) * nel);
    ar_to_f32(x, f->x, AR_BF16, nel);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &f->c, f->n, f->T, 0), 0);
    cr_assert_eq(ar_block_forward(&f->c, &f->w, x, y, f->n, f->T, &ws), 0);
    f->y = to_bf16(y, nel);
    ar_block_work_free(&ws);
    free(x);
    free(y);
}

/* A fresh plan keeping every linear FP (the description and the plan are
 * left to the process's end, as the fixture's other buffers are). */
static void fresh_plan(fixture *f)
{
    cr_assert_eq(ar_block_desc_init(&f->bd, &f->c), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_plan_init(&f->plan, &f->bd), 0, "%s", ar_last_error());
}

static void plan_all(fixture *f, int bits, int group_size, int sym)
{
    fresh_plan(f);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f->c, i, &n, &k);
        f->plan.quantize[i] = 1;
        f->plan.spec[i] = (ar_quant_spec){.bits = bits, .group_size = k % group_size ? -1 : group_size,
                                          .sym = sym, .flags = AR_QF_BF16};
    }
}

/* A random Llama block: C=32, F=64, 4 heads of 8 (2 KV heads). */
static void random_fixture(fixture *f, int n, int T, int bits, int group_size, int sym)
{
    memset(f, 0, sizeof *f);
    g_rng = 777;
    f->c.hidden = 32, f->c.intermediate = 64, f->c.n_heads = 4, f->c.n_kv_heads = 2;
    f->c.head_dim = 8, f->c.rms_eps = 1e-5f, f->c.rope_theta = 10000.0, f->c.n_layers = 1;
    cr_assert_eq(ar_block_weights_init(&f->w, AR_NLINEAR), 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int nn, k;
        ar_linear_shape(&f->c, i, &nn, &k);
        f->w.w[i] = gauss_buf((long)nn * k, 1.0f / sqrtf((float)k), 0);
        for (long j = 0; j < (long)nn * k; j++) f->w.w[i][j] = ar_round_bf16(f->w.w[i][j]);
    }
    f->w.attn_norm = gauss_buf(f->c.hidden, 0.1f, 1.0f);
    f->w.mlp_norm = gauss_buf(f->c.hidden, 0.1f, 1.0f);
    f->n = n, f->T = T;
    long nel = (long)n * T * f->c.hidden;
    float *x = gauss_buf(nel, 1.0f, 0);
    f->x = to_bf16(x, nel);
    free(x);
    fill_targets(f);
    plan_all(f, bits, group_size, sym);
}

static const char *shared_dir(void)
{
    const char *s = getenv("AR_SHARED");
    return s ? s : "../shared";
}

/* stories260K's block 0 on n real TinyStories windows of T tokens, the
 * inputs made the way ar-calib makes them (tokenize, sample, embed). */
static void stories_fixture(fixture *f, int n, int T)
{
    memset(f, 0, sizeof *f);
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared_dir());
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    ar_tokenizer *tok = ar_tokenizer_load(path);
    cr_assert(tok, "%s", ar_last_error());
    snprintf(path, sizeof path, "%s/data/tinystories/TinyStories-validation-head.txt", shared_dir());
    ar_calib_samples s;
    cr_assert_eq(ar_calib_build(tok, path, n, T, 42, &s), 0, "%s", ar_last_error());
    cr_assert_eq(s.n, n);
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    f->c = *ar_model_config(m);
    f->n = n, f->T = T;
    long nel = (long)n * T * f->c.hidden;
    float *x = malloc(sizeof(float) * nel);
    cr_assert_eq(ar_model_embed(m, s.ids, n * T, x), 0);
    f->x = to_bf16(x, nel);
    free(x);
    cr_assert_eq(ar_block_weights_alloc(&f->w, &f->c), 0);
    cr_assert_eq(ar_model_load_block(m, 0, &f->w), 0);
    fill_targets(f);
    ar_model_close(m);
    ar_calib_free(&s);
    ar_tokenizer_free(tok);
    plan_all(f, 4, 32, 1);
}

/* Output buffers of one tuning run. */
typedef struct {
    ar_quant_out out[AR_NLINEAR];
    ar_signround_report rep;
    double losses[256];         /* per-iteration losses from the callback */
} result;

static void result_alloc(result *r, const fixture *f)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f->c, i, &n, &k);
        long ng = (long)n * ar_quant_ngroups(k, f->plan.spec[i].group_size);
        r->out[i].wq = malloc(sizeof(float) * n * k);
        r->out[i].codes = malloc((size_t)n * k);
        r->out[i].scale = malloc(sizeof(float) * ng);
        r->out[i].zp = malloc(sizeof(int32_t) * ng);
    }
}

static void result_free(result *r)
{
    for (int i = 0; i < AR_NLINEAR; i++)
        free(r->out[i].wq), free(r->out[i].codes), free(r->out[i].scale), free(r->out[i].zp);
}

static void record_loss(void *ctx, int iter, int iters, double loss, double best)
{
    (void)iters, (void)best;
    result *r = ctx;
    if (iter < 256) r->losses[iter] = loss;
}

static void tune(const fixture *f, const ar_signround_opts *o, result *r)
{
    result_alloc(r, f);
    int rc = ar_signround_tune_block(&f->c, &f->w, f->x, f->y, NULL, f->n, f->T, &f->plan, o, r->out, &r->rep,
                                     record_loss, r);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
}

static ar_signround_opts opts(int iters, int bs)
{
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = iters;
    o.batch_size = bs;
    return o;
}

/* ------------------------------------------------------- reference loss */

/* Σ over all positions but the last of each sample of (pred − ref)², divided
 * by all ns·T·C elements, in double: the loss of weights w on samples idx. */
static double ref_loss(const fixture *f, const ar_block_weights *w, const int *idx, int ns)
{
    int T = f->T, C = f->c.hidden;
    long row = (long)T * C;
    float *x = malloc(sizeof(float) * row), *y = malloc(sizeof(float) * row);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &f->c, 1, T, 0), 0);
    double sum = 0;
    for (int s = 0; s < ns; s++) {
        int i = idx ? idx[s] : s;
        ar_to_f32(x, f->x + i * row, AR_BF16, row);
        cr_assert_eq(ar_block_forward(&f->c, w, x, y, 1, T, &ws), 0);
        for (long j = 0; j < (long)(T - 1) * C; j++) {
            double e = (double)y[j] - ar_bf16_to_f32(f->y[i * row + j]);
            sum += e * e;
        }
    }
    ar_block_work_free(&ws);
    free(x);
    free(y);
    return sum / ((double)ns * row);
}

/* The tolerance of a comparison of two f32 computations of ref_loss (the
 * tuner's recorded loss, a recomputation): both are whole-block forwards,
 * where worst-case bounds are too loose to tell iterations apart, so each
 * side's rounding is estimated by Monte Carlo arithmetic (fixture.h) over
 * refblock.c's block and the squared errors, and the two added. Activation
 * quantizers (when the plan has them) are left out of the estimate: a code
 * decided differently by the two paths would move the loss by far more. */
typedef struct {
    const fixture *f;
    rb_weights w;
    const int *idx;
    int ns;
} loss_run;

static void run_loss(void *ctx, double *out)
{
    loss_run *r = ctx;
    int T = r->f->T, C = r->f->c.hidden;
    long row = (long)T * C;
    float *x = malloc(sizeof(float) * row);
    fx_ev *y = malloc(sizeof(fx_ev) * row);
    fx_acc sum = {0};
    for (int s = 0; s < r->ns; s++) {
        int i = r->idx ? r->idx[s] : s;
        ar_to_f32(x, r->f->x + i * row, AR_BF16, row);
        for (long j = 0; j < row; j++) y[j] = fx_exact(x[j]);
        rb_block_forward(&r->f->c, &r->w, y, y, 1, T);
        for (long j = 0; j < (long)(T - 1) * C; j++) {
            fx_ev e = fx_sub(y[j], fx_exact(ar_bf16_to_f32(r->f->y[i * row + j])));
            fx_acc_add(&sum, fx_mul(e, e));
        }
    }
    out[0] = fx_acc_sum(&sum).v / ((double)r->ns * row);
    free(x), free(y);
}

static double loss_tolerance(const fixture *f, const ar_block_weights *w, const int *idx, int ns)
{
    loss_run r = {.f = f, .idx = idx, .ns = ns};
    rb_weights_from(&r.w, w, &f->c);
    double tol = 2 * fx_mca_tolerance(run_loss, &r, 1, NULL);
    rb_weights_free(&r.w);
    return tol;
}

/* The block with its planned linears replaced by the tuned ŵ (a view of
 * f->w whose pointer arrays live to the process's end). */
static ar_block_weights with_wq(const fixture *f, const result *r)
{
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_view(&w, &f->w), 0);
    for (int i = 0; i < AR_NLINEAR; i++) if (f->plan.quantize[i]) w.w[i] = r->out[i].wq;
    return w;
}

/* Loss over every sample of the tuned block and of plain RTN. */
static void full_losses(const fixture *f, const result *r, double *tuned, double *rtn)
{
    ar_signround_opts o = opts(0, 1);
    result z;
    tune(f, &o, &z);
    ar_block_weights wt = with_wq(f, r), wr = with_wq(f, &z);
    *tuned = ref_loss(f, &wt, NULL, f->n);
    *rtn = ref_loss(f, &wr, NULL, f->n);
    result_free(&z);
}

/* codes within [0, 2^b), zero points as the quantizer defines them, scales
 * fp16 values above the floor, ŵ = bf16(scale·(code − zp)) exactly. */
static void check_valid_quantization(const fixture *f, const result *r)
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        const ar_quant_spec *qs = &f->plan.spec[i];
        int n, k, ng;
        ar_linear_shape(&f->c, i, &n, &k);
        ng = ar_quant_ngroups(k, qs->group_size);
        int maxq = (1 << qs->bits) - 1;
        for (int row = 0; row < n; row++)
            for (int c = 0; c < k; c++) {
                int g = qs->group_size > 0 ? c / qs->group_size : 0;
                float s = r->out[i].scale[row * ng + g];
                int zp = r->out[i].zp[row * ng + g], code = r->out[i].codes[(long)row * k + c];
                cr_assert_leq(code, maxq);
                if (qs->sym) cr_assert_eq(zp, 1 << (qs->bits - 1));
                else cr_assert(zp >= 0 && zp <= maxq);
                cr_assert_eq(ar_round_f16(s), s);
                cr_assert_geq(fabsf(s), ar_round_f16(1e-5f)); /* exact: the floor is this fp16 value */
                float want = ar_round_bf16(s * (float)(code - zp));
                cr_assert_eq(r->out[i].wq[(long)row * k + c], want, "%s [%d,%d]: %g vs %g", ar_linear_names[i], row,
                             c, r->out[i].wq[(long)row * k + c], want);
            }
    }
}

/* ---------------------------------------------------------- masked MSE */

static double d_masked_mse(const float *p, const float *q, const uint8_t *m, long rows, int C)
{
    double s = 0;
    for (long r = 0; r < rows; r++)
        for (int j = 0; j < C && (!m || m[r]); j++) s += ((double)p[r * C + j] - q[r * C + j]) * ((double)p[r * C + j] - q[r * C + j]);
    return s / ((double)rows * C);
}

Test(signround, masked_mse_value_and_gradient_vs_finite_differences)
{
    enum { R = 7, C = 5 };
    g_rng = 5;
    float *p = gauss_buf(R * C, 1, 0), *q = gauss_buf(R * C, 1, 0), d[R * C];
    uint8_t m[R] = {1, 0, 1, 1, 0, 1, 1};
    /* The loss: f32 differences (u each, 2u once squared), summed and scaled
     * in double (bounded as f32): positive terms, gamma_3 relative. */
    double L = ar_masked_mse(p, q, m, R, C, d);
    fx_assert_within(L, d_masked_mse(p, q, m, R, C), fx_gamma(3) * L, "masked MSE");
    double N = (double)R * C;
    for (int i = 0; i < R * C; i++) {
        /* the f32 steps keep +- h are not exactly h: with the actual steps
         * hp, hm the difference quotient of this quadratic is exactly
         * 2 (p - q) / N + (hp - hm) / N, up to the double rounding of the
         * losses over the step */
        float h = 1e-2f, keep = p[i];
        p[i] = keep + h;
        double hp = (double)p[i] - keep, lp = d_masked_mse(p, q, m, R, C);
        p[i] = keep - h;
        double hm = (double)keep - p[i], lm = d_masked_mse(p, q, m, R, C);
        p[i] = keep;
        double fd = (lp - lm) / (hp + hm), fd_err = m[i / C] ? fabs(hp - hm) / N + 0x1p-50 * (lp + lm) / (hp + hm) : 0;
        /* d = (float)(2 / N) (p - q): three roundings */
        fx_assert_within(d[i], fd, fx_gamma(3) * fabs(fd) + fd_err, "element %d", i);
        if (!m[i / C]) cr_assert_eq(d[i], 0.0f);
    }
    /* NULL mask = every row counts. */
    double Ln = d_masked_mse(p, q, NULL, R, C);
    fx_assert_within(ar_masked_mse(p, q, NULL, R, C, NULL), Ln, fx_gamma(3) * Ln, "unmasked MSE");
    free(p);
    free(q);
}

Test(signround, masked_mse_large_matches_double_sum_for_any_thread_count)
{
    enum { R = 300, C = 512 };  /* big enough for the parallel path */
    g_rng = 6;
    float *p = gauss_buf(R * C, 1, 0), *q = gauss_buf(R * C, 1, 0);
    uint8_t m[R];
    ar_default_mask(m, 3, R / 3);
    for (int r = 0; r < R; r++) cr_assert_eq(m[r], (r % (R / 3)) != R / 3 - 1);
    omp_set_num_threads(2);
    double a = ar_masked_mse(p, q, m, R, C, NULL);
    omp_set_num_threads(1);
    double b = ar_masked_mse(p, q, m, R, C, NULL);
    /* exact by design: fixed row blocks summed in a fixed order, no BLAS */
    cr_assert_eq(a, b, "the sum does not depend on the thread count");
    fx_assert_within(a, d_masked_mse(p, q, m, R, C), fx_gamma(3) * a, "masked MSE");
    free(p);
    free(q);
}

/* ------------------------------------------------------------- sampler */

Test(signround, sampler_epochs_drop_the_remainder_and_reshuffle)
{
    enum { N = 10, GB = 4, BATCHES = 40 };
    ar_index_sampler s, s2, s3;
    cr_assert_eq(ar_index_sampler_init(&s, N, 42), 0);
    cr_assert_eq(ar_index_sampler_init(&s2, N, 42), 0);
    cr_assert_eq(ar_index_sampler_init(&s3, N, 43), 0);
    int epochs[BATCHES / 2][2 * GB], differs_seed = 0, differs_epoch = 0;
    for (int b = 0; b < BATCHES; b++) {
        const int *i1 = ar_index_sampler_next(&s, GB);
        memcpy(&epochs[b / 2][(b % 2) * GB], i1, sizeof(int) * GB);
        const int *i2 = ar_index_sampler_next(&s2, GB), *i3 = ar_index_sampler_next(&s3, GB);
        cr_assert_eq(memcmp(epochs[b / 2] + (b % 2) * GB, i2, sizeof(int) * GB), 0, "same seed, same batches");
        differs_seed |= memcmp(epochs[b / 2] + (b % 2) * GB, i3, sizeof(int) * GB) != 0;
    }
    /* Two batches per epoch (10 / 4, the last 2 indices dropped): the 8
     * indices of an epoch are distinct, and epochs are new permutations. */
    for (int e = 0; e < BATCHES / 2; e++) {
        int seen[N] = {0};
        for (int j = 0; j < 2 * GB; j++) {
            cr_assert(epochs[e][j] >= 0 && epochs[e][j] < N);
            cr_assert_eq(seen[epochs[e][j]]++, 0, "epoch %d repeats index %d", e, epochs[e][j]);
        }
        if (e) differs_epoch |= memcmp(epochs[e], epochs[0], sizeof epochs[0]) != 0;
    }
    cr_assert(differs_seed && differs_epoch);
    /* gb = n: every batch is a whole permutation. */
    for (int b = 0; b < 5; b++) {
        const int *all = ar_index_sampler_next(&s3, N);
        int seen[N] = {0};
        for (int j = 0; j < N; j++) cr_assert_eq(seen[all[j]]++, 0);
    }
    ar_index_sampler_free(&s);
    ar_index_sampler_free(&s2);
    ar_index_sampler_free(&s3);
}

/* --------------------------------------------------------------- tuning */

Test(signround, iters_zero_is_rtn_exactly)
{
    fixture f;
    random_fixture(&f, 4, 16, 4, 16, 1);
    ar_signround_opts o = opts(0, 2);
    result r;
    tune(&f, &o, &r);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        long ng = (long)n * ar_quant_ngroups(k, f.plan.spec[i].group_size);
        result z;
        result_alloc(&z, &f);
        cr_assert_eq(ar_quant_forward(&f.plan.spec[i], f.w.w[i], n, k, NULL, &z.out[i]), 0);
        cr_assert_eq(memcmp(z.out[i].wq, r.out[i].wq, sizeof(float) * n * k), 0);
        cr_assert_eq(memcmp(z.out[i].codes, r.out[i].codes, (size_t)n * k), 0);
        cr_assert_eq(memcmp(z.out[i].scale, r.out[i].scale, sizeof(float) * ng), 0);
        cr_assert_eq(memcmp(z.out[i].zp, r.out[i].zp, sizeof(int32_t) * ng), 0);
        result_free(&z);
    }
    result_free(&r);
}

/* A linear whose dW is exactly zero every step (here gate and up, behind an
 * FP down projection of zeros; what an expert no token reaches sees) keeps
 * its RTN start bit for bit, as SignSGD's sign(0) = 0 leaves it, while the
 * other linears move: update_all skips such a linear's backward and step
 * and quantize_all its next fake-quantization; this checks the skip leaves
 * the result of not skipping. */
Test(signround, linears_with_zero_gradient_keep_rtn_exactly)
{
    fixture f;
    random_fixture(&f, 4, 16, 4, 16, 1);
    int nd, kd;
    ar_linear_shape(&f.c, AR_DOWN, &nd, &kd);
    memset(f.w.w[AR_DOWN], 0, sizeof(float) * nd * kd);
    f.plan.quantize[AR_DOWN] = 0;
    ar_signround_opts o = opts(20, 2);
    result r;
    tune(&f, &o, &r);
    cr_assert_gt(r.rep.best_iter, 0, "the RTN start stayed the best: nothing to compare");
    for (int i = 0; i < AR_DOWN; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        result z;
        result_alloc(&z, &f);
        cr_assert_eq(ar_quant_forward(&f.plan.spec[i], f.w.w[i], n, k, NULL, &z.out[i]), 0);
        int same = !memcmp(z.out[i].wq, r.out[i].wq, sizeof(float) * n * k) &&
                   !memcmp(z.out[i].codes, r.out[i].codes, (size_t)n * k);
        if (i == AR_GATE || i == AR_UP) cr_expect(same, "%s moved with a zero gradient", ar_linear_names[i]);
        else cr_expect(!same, "%s did not move: the tuning did not run", ar_linear_names[i]);
        result_free(&z);
    }
    result_free(&r);
}

static void check_tuning_beats_rtn(const fixture *f, int iters, int bs)
{
    ar_signround_opts o = opts(iters, bs);
    result r;
    tune(f, &o, &r);
    cr_assert_lt(r.rep.best_loss, r.rep.loss0, "best %g vs iteration 0 %g", r.rep.best_loss, r.rep.loss0);
    cr_assert_eq(r.losses[0], r.rep.loss0);
    double tuned, rtn;
    full_losses(f, &r, &tuned, &rtn);
    cr_assert_lt(tuned, rtn, "all samples: tuned %g vs RTN %g", tuned, rtn);
    check_valid_quantization(f, &r);
    result_free(&r);
}

Test(signround, random_block_w4_sym_beats_rtn_and_is_a_valid_quantization)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    check_tuning_beats_rtn(&f, 60, 4);
}

Test(signround, random_block_w2_asym_beats_rtn_and_is_a_valid_quantization)
{
    fixture f;
    random_fixture(&f, 8, 16, 2, 16, 0);
    check_tuning_beats_rtn(&f, 60, 4);
}

Test(signround, stories260k_block0_on_real_text_beats_rtn)
{
    fixture f;
    stories_fixture(&f, 8, 64);
    check_tuning_beats_rtn(&f, 40, 4);
}

/* The parameters returned are those whose forward produced the recorded loss
 * of the chosen iteration: the best one, or with use_best = 0 the last one
 * (before the step AutoRound takes and discards after it). */
static void check_returned_iteration(int use_best)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    enum { ITERS = 12, BS = 3 };
    ar_signround_opts o = opts(ITERS, BS);
    o.lr = 0.05f;       /* large steps: the loss moves visibly between iterations */
    o.use_best = use_best;
    result r;
    tune(&f, &o, &r);
    int chosen = use_best ? r.rep.best_iter : ITERS - 1;
    cr_assert_eq(r.rep.best_iter, chosen);
    cr_assert_eq(r.rep.best_loss, r.losses[chosen]);
    for (int it = 0; use_best && it < ITERS; it++) cr_assert_geq(r.losses[it], r.rep.best_loss);
    ar_index_sampler s;
    cr_assert_eq(ar_index_sampler_init(&s, f.n, o.seed), 0);
    const int *idx = NULL;
    for (int it = 0; it <= chosen; it++) idx = ar_index_sampler_next(&s, BS);
    ar_block_weights w = with_wq(&f, &r);
    double again = ref_loss(&f, &w, idx, BS), tol = loss_tolerance(&f, &w, idx, BS);
    cr_assert_leq(fabs(again - r.losses[chosen]), tol, "iteration %d: %g recomputed vs %g recorded, tolerance %g",
                  chosen, again, r.losses[chosen], tol);
    int distinct = 0;   /* the check can tell iterations apart */
    for (int it = 0; it < ITERS; it++) distinct += fabs(r.losses[it] - again) > tol;
    cr_assert_geq(distinct, ITERS / 2);
    ar_index_sampler_free(&s);
    result_free(&r);
}

Test(signround, best_iteration_parameters_reproduce_its_loss) { check_returned_iteration(1); }

Test(signround, not_use_best_returns_the_last_iterate) { check_returned_iteration(0); }

Test(signround, same_seed_same_bytes_other_seed_other_batches)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    ar_signround_opts o = opts(8, 2);
    result a, b, c;
    tune(&f, &o, &a);
    tune(&f, &o, &b);
    o.seed = 7;
    tune(&f, &o, &c);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        cr_assert_eq(memcmp(a.out[i].wq, b.out[i].wq, sizeof(float) * n * k), 0);
        cr_assert_eq(memcmp(a.out[i].codes, b.out[i].codes, (size_t)n * k), 0);
        cr_assert_eq(memcmp(a.out[i].scale, b.out[i].scale, sizeof(float) * n), 0);
    }
    /* exact: the same run twice on the same machine, kernel and thread
     * count; across kernels or thread counts only the bounds of the other
     * tests hold */
    cr_assert_eq(memcmp(a.losses, b.losses, sizeof a.losses), 0);
    cr_assert_neq(memcmp(a.losses, c.losses, sizeof a.losses), 0);
    result_free(&a), result_free(&b), result_free(&c);
}

/* Without α/β tuning the scales stay RTN's, and with the default lr = 1/iters
 * the offsets V move by at most Σ_t lr·(1 − t/iters) < 1, so no code moves by
 * more than one level; a large explicit lr lets codes move further. */
Test(signround, lr_schedule_bounds_the_rounding_offsets)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    ar_signround_opts o = opts(20, 4);
    o.minmax_tuning = 0;
    result r, z, big;
    tune(&f, &o, &r);
    o.lr = 0.3f;        /* Σ lr_t = 0.3 · 21/2 = 3.15 */
    o.use_best = 0;
    tune(&f, &o, &big);
    ar_signround_opts o0 = opts(0, 4);
    tune(&f, &o0, &z);
    int maxd_default = 0, maxd_big = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        long ng = (long)n * ar_quant_ngroups(k, f.plan.spec[i].group_size);
        cr_assert_eq(memcmp(z.out[i].scale, r.out[i].scale, sizeof(float) * ng), 0);
        for (long j = 0; j < (long)n * k; j++) {
            int d = abs((int)r.out[i].codes[j] - z.out[i].codes[j]), e = abs((int)big.out[i].codes[j] - z.out[i].codes[j]);
            maxd_default = d > maxd_default ? d : maxd_default;
            maxd_big = e > maxd_big ? e : maxd_big;
        }
    }
    cr_assert_leq(maxd_default, 1);
    cr_assert_geq(maxd_big, 2);
    result_free(&r), result_free(&z), result_free(&big);
}

/* Runs a and b of the same fixture that sum the same terms grouped
 * differently: each of the first iters losses within twice the rounding
 * estimate of the loss at the RTN start (loss_tolerance, batch `batch`), and
 * at most 0.1 % of the codes apart (a gradient component within rounding of 0
 * may flip its sign and so a code). */
static void assert_close_runs(const fixture *f, const result *a, const result *b, int iters, int batch)
{
    ar_signround_opts o0 = opts(0, batch);
    result z;
    tune(f, &o0, &z);
    ar_block_weights wr = with_wq(f, &z);
    double tol = loss_tolerance(f, &wr, NULL, f->n);
    result_free(&z);
    for (int it = 0; it < iters; it++)
        cr_assert_leq(fabs(a->losses[it] - b->losses[it]), tol, "iteration %d: %g vs %g, tolerance %g", it,
                      a->losses[it], b->losses[it], tol);
    long same = 0, total = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f->c, i, &n, &k);
        for (long j = 0; j < (long)n * k; j++) same += a->out[i].codes[j] == b->out[i].codes[j];
        total += (long)n * k;
    }
    cr_assert_geq(same, total - total / 1000);
}

/* Gradient accumulation sums the chunks' squared errors over one shared
 * denominator (AutoRound's sum reduction), so batch 2 × 2 steps over 3
 * samples (chunks of 2 and 1) follows batch 3 × 1 step. */
Test(signround, gradient_accumulation_matches_one_large_batch)
{
    fixture f;
    random_fixture(&f, 3, 16, 4, 16, 1);
    ar_signround_opts o1 = opts(10, 3), o2 = opts(10, 2);
    o2.grad_accum = 2;
    result a, b;
    tune(&f, &o1, &a);
    tune(&f, &o2, &b);
    /* the two runs compute each step's loss by different f32 paths (one
     * batch, two chunks): within twice the rounding estimate of the loss at
     * the RTN start; a sign of a gradient component within rounding of 0
     * could part the runs' codes (the check below allows 0.1 %) */
    assert_close_runs(&f, &a, &b, 10, 3);
    result_free(&a), result_free(&b);
}

Test(signround, bad_sizes_are_errors)
{
    fixture f;
    random_fixture(&f, 2, 16, 4, 16, 1);
    ar_signround_opts o = opts(2, 0);
    result r;
    result_alloc(&r, &f);
    cr_assert_eq(ar_signround_tune_block(&f.c, &f.w, f.x, f.y, NULL, f.n, f.T, &f.plan, &o, r.out, &r.rep, NULL, NULL),
                 -1);
    cr_assert(strstr(ar_last_error(), "signround"));
    o = opts(2, 1);
    cr_assert_eq(ar_signround_tune_block(&f.c, &f.w, f.x, f.y, NULL, 0, f.T, &f.plan, &o, r.out, &r.rep, NULL, NULL),
                 -1);
    f.plan.spec[0].bits = 1;
    cr_assert_eq(ar_signround_tune_block(&f.c, &f.w, f.x, f.y, NULL, f.n, f.T, &f.plan, &o, r.out, &r.rep, NULL, NULL),
                 -1);
    cr_assert(strstr(ar_last_error(), "bits"));
    result_free(&r);
}

/* Outputs a and b of the same plan are byte for byte the same. */
static void assert_same_outputs(const fixture *f, const result *a, const result *b)
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!f->plan.quantize[i]) continue;
        int n, k;
        ar_linear_shape(&f->c, i, &n, &k);
        long ng = (long)n * ar_quant_ngroups(k, f->plan.spec[i].group_size);
        cr_assert_eq(memcmp(a->out[i].wq, b->out[i].wq, sizeof(float) * n * k), 0, "linear %d: wq", i);
        cr_assert_eq(memcmp(a->out[i].codes, b->out[i].codes, (size_t)n * k), 0, "linear %d: codes", i);
        cr_assert_eq(memcmp(a->out[i].scale, b->out[i].scale, sizeof(float) * ng), 0, "linear %d: scales", i);
        cr_assert_eq(memcmp(a->out[i].zp, b->out[i].zp, sizeof(int32_t) * ng), 0, "linear %d: zero points", i);
    }
    cr_assert_eq(a->rep.best_loss, b->rep.best_loss);
    cr_assert_eq(a->rep.best_iter, b->rep.best_iter);
}

/* A micro-batch (o.micro_batch) is gradient accumulation inside the batch: batch 4
 * in chunks of 2 draws the same 4 samples per step as batch 2 × 2 steps
 * (the sampler takes batch · grad_accum) and sums the same chunks in the
 * same order (signround.c's accumulate_chunks), so every loss and every
 * output byte is the same. */
Test(signround, chunks_are_gradient_accumulation)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    ar_signround_opts oc = opts(10, 4), oa = opts(10, 2);
    oc.micro_batch = 2;
    oa.grad_accum = 2;
    result c, a;
    tune(&f, &oc, &c);
    tune(&f, &oa, &a);
    assert_same_outputs(&f, &c, &a);
    cr_assert_eq(memcmp(c.losses, a.losses, 10 * sizeof c.losses[0]), 0);
    result_free(&c), result_free(&a);
}

/* A chunk that does not divide the batch (3 of 4: chunks of 3 and 1) gives
 * the unchunked run's losses within the rounding of the loss at the RTN
 * start (twice loss_tolerance's estimate, as gradient accumulation above:
 * the same sums, grouped differently); a gradient component within rounding
 * of 0 may flip a code, so 0.1 % of the codes may differ. The outlier loss
 * ignores the chunk (its top 0.1 % is over the whole mini-batch): the same
 * bytes as without. */
Test(signround, uneven_chunks_follow_the_whole_batch)
{
    fixture f;
    random_fixture(&f, 4, 16, 4, 16, 1);
    ar_signround_opts o1 = opts(10, 4), o2 = opts(10, 4);
    o2.micro_batch = 3;
    result a, b;
    tune(&f, &o1, &a);
    tune(&f, &o2, &b);
    assert_close_runs(&f, &a, &b, 10, 4);
    result_free(&a), result_free(&b);
    o1.outlier_loss = o2.outlier_loss = 1;
    o2.micro_batch = 1;
    tune(&f, &o1, &a);
    tune(&f, &o2, &b);
    assert_same_outputs(&f, &a, &b);
    result_free(&a), result_free(&b);
}

static void tune_cached(ar_signround_cache **cache, const fixture *f, const ar_signround_opts *o, result *r)
{
    result_alloc(r, f);
    int rc = ar_signround_tune_block_cached(cache, &f->c, &f->w, f->x, f->y, NULL, f->n, f->T, &f->plan, o, r->out,
                                            &r->rep, record_loss, r);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
}

/* The buffers kept from block to block change nothing: one cache through a
 * plan, a plan with more groups and a linear left out, and the first plan
 * again gives what a fresh tuner gives each time. */
Test(signround, cache_reuse_matches_fresh_tuner)
{
    fixture f;
    random_fixture(&f, 4, 16, 4, 16, 1);
    ar_signround_opts o = opts(4, 2);
    ar_signround_cache *cache = NULL;
    result fresh, cached;
    for (int round = 0; round < 3; round++) {
        plan_all(&f, 4, round == 1 ? 8 : 16, round != 1);
        if (round == 1) f.plan.quantize[AR_K] = 0;
        tune(&f, &o, &fresh);
        tune_cached(&cache, &f, &o, &cached);
        assert_same_outputs(&f, &fresh, &cached);
        result_free(&fresh), result_free(&cached);
    }
    ar_signround_cache_free(cache);
}

/* ------------------------------------------- activation fake-quantization */

/* y [T, C] = the block on one sequence x [T, C], composed from the ops with
 * each linear's input copied and fake-quantized by aq[i] before its matmul
 * (NULL: not quantized): the reference for tuning with activation quant. */
static void hand_forward(const ar_config *c, const ar_block_weights *w, const ar_act_spec *const aq[AR_NLINEAR],
                         const float *x, float *y, int T)
{
    int C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads, NKV = c->n_kv_heads;
    int QD = NH * HD, KD = NKV * HD, kin[AR_NLINEAR] = {C, C, C, QD, C, C, F};
    float *n1 = malloc(sizeof(float) * T * C), *q = malloc(sizeof(float) * T * QD), *k = malloc(sizeof(float) * T * KD);
    float *v = malloc(sizeof(float) * T * KD), *ao = malloc(sizeof(float) * T * QD), *h = malloc(sizeof(float) * T * C);
    float *n2 = malloc(sizeof(float) * T * C), *g = malloc(sizeof(float) * T * F), *u = malloc(sizeof(float) * T * F);
    float *d = malloc(sizeof(float) * T * C), *xq = malloc(sizeof(float) * T * F);
    float *cs = malloc(sizeof(float) * T * HD / 2), *sn = malloc(sizeof(float) * T * HD / 2);
    float *att = malloc(sizeof(float) * ar_attention_scratch(T));
    const float *in[AR_NLINEAR] = {n1, n1, n1, ao, n2, n2, g};
    float *out[AR_NLINEAR] = {q, k, v, h, g, u, d};
    int nout[AR_NLINEAR] = {QD, KD, KD, C, F, F, C};
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (i == AR_Q) ar_rmsnorm_forward(n1, NULL, x, w->attn_norm, T, C, c->rms_eps);
        if (i == AR_O) {
            ar_rope_tables(cs, sn, c, T);
            ar_rope_forward(q, cs, sn, 1, T, NH, HD);
            ar_rope_forward(k, cs, sn, 1, T, NKV, HD);
            ar_attention_forward(ao, att, 0, q, k, v, 1, T, NH, NKV, HD, 0);
        }
        if (i == AR_GATE) {
            ar_residual_forward(h, h, x, (long)T * C);
            ar_rmsnorm_forward(n2, NULL, h, w->mlp_norm, T, C, c->rms_eps);
        }
        if (i == AR_DOWN) ar_swiglu_forward(g, g, u, (long)T * F);
        memcpy(xq, in[i], sizeof(float) * T * kin[i]);
        if (aq[i]) cr_assert_eq(ar_act_quant(aq[i], xq, T, kin[i]), 0, "%s", ar_last_error());
        ar_linear_forward(out[i], xq, w->w[i], NULL, T, kin[i], nout[i]);
    }
    ar_residual_forward(y, h, d, (long)T * C);
    free(n1), free(q), free(k), free(v), free(ao), free(h), free(n2), free(g), free(u), free(d), free(xq);
    free(cs), free(sn), free(att);
}

/* ref_loss with the hand-made forward quantizing the activations as f->plan says. */
static double ref_loss_actq(const fixture *f, const ar_block_weights *w, const int *idx, int ns)
{
    int T = f->T, C = f->c.hidden;
    long row = (long)T * C;
    const ar_act_spec *aq[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) aq[i] = f->plan.act_quant[i] ? &f->plan.act[i] : NULL;
    float *x = malloc(sizeof(float) * row), *y = malloc(sizeof(float) * row);
    double sum = 0;
    for (int s = 0; s < ns; s++) {
        int i = idx ? idx[s] : s;
        ar_to_f32(x, f->x + i * row, AR_BF16, row);
        hand_forward(&f->c, w, aq, x, y, T);
        for (long j = 0; j < (long)(T - 1) * C; j++) {
            double e = (double)y[j] - ar_bf16_to_f32(f->y[i * row + j]);
            sum += e * e;
        }
    }
    free(x), free(y);
    return sum / ((double)ns * row);
}

/* MXFP4 weights and activations (the MXFP4 scheme) on every linear; the
 * random block's C = 32, F = 64 and 4·8 heads are all multiples of 32. */
static void plan_mxfp4(fixture *f, int act)
{
    fresh_plan(f);
    for (int i = 0; i < AR_NLINEAR; i++) {
        f->plan.quantize[i] = 1;
        f->plan.spec[i] = (ar_quant_spec){.bits = 4, .group_size = 32, .sym = 1, .flags = AR_QF_BF16,
                                          .dtype = AR_QDT_MXFP4};
        f->plan.act_quant[i] = act;
        f->plan.act[i] = (ar_act_spec){AR_QDT_MXFP4, 4, 32, 1, 0, 0};
    }
}

/* Iteration 0 (RTN weights) of a tuning run with activation quantization has
 * the loss of a forward composed by hand with pre-quantized linear inputs on
 * that iteration's samples; the best iteration's returned weights reproduce
 * its loss the same way; and the run differs from one without activation
 * quantization (loss and weights). */
Test(signround, activation_quant_loss_matches_a_hand_made_forward)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    plan_mxfp4(&f, 1);
    enum { ITERS = 12, BS = 2 };
    ar_signround_opts o = opts(ITERS, BS);
    o.lr = 0.05f;
    result r, plain;
    tune(&f, &o, &r);
    ar_index_sampler s;
    cr_assert_eq(ar_index_sampler_init(&s, f.n, o.seed), 0);
    const int *idx = ar_index_sampler_next(&s, BS);
    int first[BS];
    memcpy(first, idx, sizeof first);
    ar_block_weights rtn;
    cr_assert_eq(ar_block_weights_view(&rtn, &f.w), 0);
    float *wq[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        wq[i] = malloc(sizeof(float) * n * k);
        ar_quant_out qo = {wq[i], NULL, NULL, NULL};
        cr_assert_eq(ar_quant_forward(&f.plan.spec[i], f.w.w[i], n, k, NULL, &qo), 0);
        rtn.w[i] = wq[i];
    }
    double want0 = ref_loss_actq(&f, &rtn, first, BS), tol0 = loss_tolerance(&f, &rtn, first, BS);
    cr_assert_leq(fabs(r.losses[0] - want0), tol0, "iteration 0: %g vs hand-made %g", r.losses[0], want0);
    for (int it = 1; it <= r.rep.best_iter; it++) idx = ar_index_sampler_next(&s, BS);
    ar_block_weights best = with_wq(&f, &r);
    double again = ref_loss_actq(&f, &best, idx, BS), tolb = loss_tolerance(&f, &best, idx, BS);
    cr_assert_leq(fabs(again - r.rep.best_loss), tolb, "best iteration %d: %g vs hand-made %g", r.rep.best_iter,
                  r.rep.best_loss, again);

    plan_mxfp4(&f, 0);
    tune(&f, &o, &plain);
    double plain0 = ref_loss(&f, &rtn, first, BS);
    cr_assert_leq(fabs(plain.losses[0] - plain0), tol0, "%g vs %g", plain.losses[0], plain0);
    cr_assert_gt(r.losses[0], 1.05 * plain.losses[0], "activation quant adds error: %g vs %g", r.losses[0],
                 plain.losses[0]);
    long differ = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        for (long j = 0; j < (long)n * k; j++) differ += r.out[i].wq[j] != plain.out[i].wq[j];
        free(wq[i]);
    }
    cr_assert_gt(differ, 0, "tuning ignored the activation quantizers");
    ar_index_sampler_free(&s);
    result_free(&r), result_free(&plain);
}

/* Tuning against the quantized activations lowers the all-sample loss (with
 * the activations quantized) below RTN's. */
Test(signround, activation_quant_tuning_beats_rtn)
{
    fixture f;
    random_fixture(&f, 8, 16, 4, 16, 1);
    plan_mxfp4(&f, 1);
    ar_signround_opts o = opts(40, 4), o0 = opts(0, 4);
    result r, z;
    tune(&f, &o, &r);
    tune(&f, &o0, &z);
    ar_block_weights wt = with_wq(&f, &r), wr = with_wq(&f, &z);
    double tuned = ref_loss_actq(&f, &wt, NULL, f.n), rtn = ref_loss_actq(&f, &wr, NULL, f.n);
    cr_assert_lt(tuned, rtn, "all samples: tuned %g vs RTN %g", tuned, rtn);
    result_free(&r), result_free(&z);
}

/* ------------------------------------------------ LFQ: the LM-head loss */

/* head(x) = W·rmsnorm(x) for one row, in double. */
static void d_head_logits(const double *x, const ar_lm_head *h, int C, double *z)
{
    double ms = 0;
    for (int j = 0; j < C; j++) ms += x[j] * x[j];
    double rstd = 1.0 / sqrt(ms / C + h->eps);
    for (int v = 0; v < h->V; v++) {
        z[v] = 0;
        for (int j = 0; j < C; j++) z[v] += (double)h->w[(long)v * C + j] * h->norm_w[j] * x[j] * rstd;
    }
}

static double d_logsumexp(const double *z, int n)
{
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, z[i]);
    for (int i = 0; i < n; i++) s += exp(z[i] - mx);
    return mx + log(s);
}

/* The reference of ar_lm_head_loss, all in double: Σ over rows with tgt >= 0
 * of the cross-entropy of head(pred[r]) against tgt[r], or with h->kl of
 * KL(softmax(head(ref[r])) || softmax(head(pred[r]))). */
static double d_head_loss(const double *pred, const float *ref, const ar_lm_head *h, const int *tgt, long rows, int C)
{
    double sum = 0, *z = malloc(sizeof(double) * h->V), *zr = malloc(sizeof(double) * h->V), xr[64];
    for (long r = 0; r < rows; r++) {
        if (tgt[r] < 0) continue;
        d_head_logits(pred + r * C, h, C, z);
        double lse = d_logsumexp(z, h->V);
        if (!h->kl) { sum += lse - z[tgt[r]]; continue; }
        for (int j = 0; j < C; j++) xr[j] = ref[r * C + j];
        d_head_logits(xr, h, C, zr);
        double lser = d_logsumexp(zr, h->V);
        for (int v = 0; v < h->V; v++) sum += exp(zr[v] - lser) * ((zr[v] - lser) - (z[v] - lse));
    }
    free(z), free(zr);
    return sum;
}

/* log-sum-exp of n logits as ar_logsumexp computes it (f32 z - max, expf,
 * the rest in double: bounded as f32). */
static fx_ev fx_lse(const fx_ev *z, int n)
{
    double m = z[0].v;
    for (int i = 1; i < n; i++) m = fmax(m, z[i].v);
    fx_acc s = {0};
    for (int i = 0; i < n; i++) fx_acc_add(&s, fx_exp(fx_sub(z[i], fx_exact(m))));
    return fx_add(fx_exact(m), fx_log(fx_acc_sum(&s)));
}

/* ar_lm_head_loss with fx_ev (fixture.h), op by op as it computes: RMSNorm,
 * the head's linear, cross-entropy of the target or KL divergence from the
 * reference rows' distribution (both summed over counted rows); with dx,
 * the gradient: scale (softmax - onehot) or scale (q - p) stored in f32,
 * back through the linear and the RMSNorm. Shallow: rigorous bounds under
 * FX_BOUNDS; the Monte Carlo estimates of whole-block losses use it too. */
static fx_ev fx_head_loss(const ar_lm_head *h, const fx_ev *x, const fx_ev *ref, const int *tgt, long R, int C,
                          double scale, fx_ev *dx)
{
    int V = h->V;
    double *nw = malloc(sizeof(double) * C), *W = malloc(sizeof(double) * V * C);
    for (int j = 0; j < C; j++) nw[j] = h->norm_w[j];
    for (long j = 0; j < (long)V * C; j++) W[j] = h->w[j];
    fx_ev *n = malloc(sizeof(fx_ev) * R * C), *s = malloc(sizeof(fx_ev) * R), *z = malloc(sizeof(fx_ev) * V);
    fx_ev *zr = malloc(sizeof(fx_ev) * V), *nr = malloc(sizeof(fx_ev) * C), *dl = malloc(sizeof(fx_ev) * R * V);
    rb_rmsnorm(n, s, x, nw, R, C, h->eps);
    fx_acc sum = {0};
    for (long r = 0; r < R; r++) {
        fx_ev *d = dl + r * V;
        for (int v = 0; v < V; v++) d[v] = fx_exact(0);
        if (tgt[r] < 0) continue;
        rb_linear(z, n + r * C, W, NULL, 1, C, V);
        fx_ev lse = fx_lse(z, V);
        if (!h->kl) {
            fx_acc_add(&sum, fx_sub(lse, z[tgt[r]]));
            for (int v = 0; v < V; v++) d[v] = fx_mul(fx_exact(scale), fx_round(fx_exp(fx_sub(z[v], lse))));
            d[tgt[r]] = fx_sub(d[tgt[r]], fx_exact(scale));
            continue;
        }
        rb_rmsnorm(nr, NULL, ref + r * C, nw, 1, C, h->eps);
        rb_linear(zr, nr, W, NULL, 1, C, V);
        fx_ev lr = fx_lse(zr, V);
        fx_acc kl = {0};
        for (int v = 0; v < V; v++) {
            fx_ev lp = fx_sub(zr[v], lr);
            fx_acc_add(&kl, fx_mul(fx_exp(lp), fx_sub(lp, fx_sub(z[v], lse))));
            d[v] = fx_mul(fx_exact(scale), fx_round(fx_sub(fx_exp(fx_sub(z[v], lse)), fx_exp(lp))));
        }
        fx_acc_add(&sum, fx_acc_sum(&kl));
    }
    if (dx) {
        fx_acc *acc = calloc(R * C, sizeof(fx_acc));
        rb_linear_dx(acc, dl, W, (int)R, C, V);
        for (long i = 0; i < R * C; i++) n[i] = fx_acc_sum(&acc[i]), dx[i] = fx_exact(0);
        rb_rmsnorm_backward(dx, n, x, nw, s, (int)R, C);
        free(acc);
    }
    free(nw), free(W), free(n), free(s), free(z), free(zr), free(nr), free(dl);
    return fx_acc_sum(&sum);
}

/* 300 rows cross the 256-row logits chunk; every fifth row does not count. */
static void check_head_loss(int kl)
{
    enum { R = 300, C = 8, V = 11 };
    g_rng = 4242;
    float *pred = gauss_buf((long)R * C, 1.0f, 0.2f), *norm_w = gauss_buf(C, 0.2f, 1.0f);
    float *w = gauss_buf((long)V * C, 0.8f, 0), *ref = gauss_buf((long)R * C, 1.0f, 0.2f), dpred[R * C];
    ar_lm_head h = {norm_w, 1e-5f, w, V, NULL, kl};
    int tgt[R];
    for (int r = 0; r < R; r++) tgt[r] = r % 5 == 3 ? -1 : (r * 7) % V;
    double *pd = malloc(sizeof(double) * R * C);
    for (int i = 0; i < R * C; i++) pd[i] = pred[i];
    double got = ar_lm_head_loss(&h, pred, ref, tgt, R, C, 0.5f, dpred), want = d_head_loss(pd, ref, &h, tgt, R, C);
    fx_ev *xe = rb_exact(pred, R * C), *re = rb_exact(ref, R * C), *de = malloc(sizeof(fx_ev) * R * C);
    fx_ev L = fx_head_loss(&h, xe, re, tgt, R, C, 0.5f, de);
    /* two double evaluations of the same loss: each within the fx bound
     * taken with the double unit (2^-53 for 2^-24: fx_gamma_d(1) / FX_U) */
    cr_assert_leq(fabs(L.v - want), 2 * fx_gamma_d(1) / FX_U * L.e, "fx_head_loss %.17g vs d_head_loss %.17g", L.v,
                  want);
    fx_assert_within(got, L.v, L.e, "loss");
    /* exact: the same f32 computation without the backward */
    cr_assert_eq(ar_lm_head_loss(&h, pred, ref, tgt, R, C, 0.5f, NULL), got, "the loss without a gradient differs");
    /* the gradient against the reference's, which is checked against
     * central differences of d_head_loss (Richardson bound) */
    for (int i = 0; i < R * C; i++) {
        double keep = pd[i], e = 1e-5, f4[4];
        const double step[4] = {e, -e, 2 * e, -2 * e};
        for (int t = 0; t < 4; t++) {
            pd[i] = keep + step[t];
            f4[t] = d_head_loss(pd, ref, &h, tgt, R, C);
        }
        pd[i] = keep;
        double err, fd = 0.5 * fx_central_diff(f4[0], f4[1], f4[2], f4[3], e, want, &err);
        fx_assert_within(dpred[i], de[i].v, de[i].e, "dpred[%d]", i);
        fx_assert_within(de[i].v, fd, 0.5 * err, "dpred[%d]: reference vs finite differences", i);
    }
    for (int j = 0; j < C; j++) cr_assert_eq(dpred[3 * C + j], 0.0f, "row 3 does not count");
    if (kl) {   /* exact: equal rows give equal logits, so KL is 0 and so is the gradient */
        cr_assert_eq(ar_lm_head_loss(&h, ref, ref, tgt, R, C, 1.0f, dpred), 0.0);
        for (int i = 0; i < R * C; i++) cr_assert_eq(dpred[i], 0.0f);
    }
    free(pred), free(norm_w), free(w), free(ref), free(pd), free(xe), free(re), free(de);
}

Test(signround, lm_head_loss_value_and_gradient_vs_double_reference) { check_head_loss(0); }

Test(signround, lm_head_kl_loss_value_and_gradient_vs_double_reference) { check_head_loss(1); }

/* The LM-head loss of the block's outputs under weights w on all samples:
 * the mean cross-entropy of each position but the last against the next id. */
static double lfq_loss_of(const fixture *f, const ar_block_weights *w, const ar_lm_head *h)
{
    const int T = f->T, C = f->c.hidden;
    long rows = (long)f->n * T;
    float *x = malloc(sizeof(float) * rows * C), *y = malloc(sizeof(float) * rows * C);
    int *tgt = malloc(sizeof(int) * rows);
    ar_to_f32(x, f->x, AR_BF16, rows * C);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &f->c, f->n, T, 0), 0);
    cr_assert_eq(ar_block_forward(&f->c, w, x, y, f->n, T, &ws), 0);
    for (long r = 0; r < rows; r++) tgt[r] = r % T == T - 1 ? -1 : h->ids[r + 1];
    float *ref = malloc(sizeof(float) * rows * C);
    ar_to_f32(ref, f->y, AR_BF16, rows * C);
    double loss = ar_lm_head_loss(h, y, ref, tgt, rows, C, 1.0f, NULL) / ((double)f->n * (T - 1));
    free(ref);
    ar_block_work_free(&ws);
    free(x), free(y), free(tgt);
    return loss;
}

/* The tolerance of two f32 computations of lfq_loss_of: Monte Carlo
 * arithmetic (fixture.h) over refblock.c's block and fx_head_loss, both
 * sides' estimates added (as loss_tolerance). */
typedef struct {
    const fixture *f;
    rb_weights w;
    const ar_lm_head *h;
} lfq_run;

static void run_lfq(void *ctx, double *out)
{
    lfq_run *r = ctx;
    const int T = r->f->T, C = r->f->c.hidden;
    long rows = (long)r->f->n * T;
    float *x = malloc(sizeof(float) * rows * C);
    int *tgt = malloc(sizeof(int) * rows);
    ar_to_f32(x, r->f->x, AR_BF16, rows * C);
    fx_ev *y = rb_exact(x, rows * C);
    rb_block_forward(&r->f->c, &r->w, y, y, r->f->n, T);
    ar_to_f32(x, r->f->y, AR_BF16, rows * C);
    fx_ev *ref = rb_exact(x, rows * C);
    for (long i = 0; i < rows; i++) tgt[i] = i % T == T - 1 ? -1 : r->h->ids[i + 1];
    out[0] = fx_head_loss(r->h, y, ref, tgt, rows, C, 1, NULL).v / ((double)r->f->n * (T - 1));
    free(x), free(tgt), free(y), free(ref);
}

static double lfq_tolerance(const fixture *f, const ar_block_weights *w, const ar_lm_head *h)
{
    lfq_run r = {.f = f, .h = h};
    rb_weights_from(&r.w, w, &f->c);
    double tol = 2 * fx_mca_tolerance(run_lfq, &r, 1, NULL);
    rb_weights_free(&r.w);
    return tol;
}

/* With opts.lfq the tuner minimizes the head's cross-entropy (or KL
 * divergence from the FP outputs' predictions): iteration 0
 * reports RTN's, the returned weights have the reported (lower) loss, and
 * the result differs from MSE tuning. One step covers all samples, so every
 * iteration's loss is the full one. */
static void check_lfq_tuning(int kl)
{
    fixture f;
    random_fixture(&f, 4, 16, 2, 32, 1);
    enum { V = 13 };
    float *norm_w = gauss_buf(f.c.hidden, 0.1f, 1.0f), *w = gauss_buf((long)V * f.c.hidden, 1.0f, 0);
    int32_t ids[4 * 16];
    for (int i = 0; i < 4 * 16; i++) ids[i] = (int32_t)(ar_rand_next(&g_rng) % V);
    ar_lm_head h = {norm_w, 1e-5f, w, V, ids, kl};
    ar_signround_opts o = opts(40, 4), o0 = opts(0, 4), om = opts(40, 4);
    o.lfq = &h;
    result r, z, m;
    tune(&f, &o, &r);
    tune(&f, &o0, &z);
    tune(&f, &om, &m);
    ar_block_weights wt = with_wq(&f, &r), wr = with_wq(&f, &z);
    double tuned = lfq_loss_of(&f, &wt, &h), rtn = lfq_loss_of(&f, &wr, &h);
    double tol_r = lfq_tolerance(&f, &wr, &h), tol_t = lfq_tolerance(&f, &wt, &h);
    cr_assert_leq(fabs(r.rep.loss0 - rtn), tol_r, "iteration 0: %g vs RTN's %g, tolerance %g", r.rep.loss0, rtn, tol_r);
    cr_assert_leq(fabs(r.rep.best_loss - tuned), tol_t, "returned: %g vs recorded %g, tolerance %g", tuned,
                  r.rep.best_loss, tol_t);
    cr_assert_lt(tuned, rtn, "LM loss: tuned %g vs RTN %g", tuned, rtn);
    long differ = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        for (long j = 0; j < (long)n * k; j++) differ += r.out[i].wq[j] != m.out[i].wq[j];
    }
    cr_assert_gt(differ, 0, "LFQ tuning returned the MSE-tuned weights");
    result_free(&r), result_free(&z), result_free(&m);
    free(norm_w), free(w);
}

Test(signround, lfq_tunes_the_block_on_the_lm_head_loss) { check_lfq_tuning(0); }

Test(signround, lfq_kl_tunes_the_block_on_the_divergence_from_the_fp_head) { check_lfq_tuning(1); }

/* Chunks of one sample sum six chunk gradients over the chunk tree
 * (reduce.h) instead of two batches of three: the same mathematics by other
 * f32 paths, so the losses agree within the rounding estimate and the codes
 * all but everywhere (as gradient accumulation above). */
Test(signround, dp_chunks_match_whole_batches)
{
    fixture f;
    random_fixture(&f, 6, 16, 4, 16, 1);
    ar_signround_opts o1 = opts(10, 3), o2 = opts(10, 3);
    o1.grad_accum = o2.grad_accum = 2;
    o2.dp_chunk = 1;
    result a, b, z;
    tune(&f, &o1, &a);
    tune(&f, &o2, &b);
    ar_signround_opts o0 = opts(0, 3);
    tune(&f, &o0, &z);
    ar_block_weights wr = with_wq(&f, &z);
    double tol = loss_tolerance(&f, &wr, NULL, f.n);
    result_free(&z);
    for (int it = 0; it < 10; it++)
        cr_assert_leq(fabs(a.losses[it] - b.losses[it]), tol, "iteration %d: %g vs %g, tolerance %g", it, a.losses[it],
                      b.losses[it], tol);
    long same = 0, total = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&f.c, i, &n, &k);
        for (long j = 0; j < (long)n * k; j++) same += a.out[i].codes[j] == b.out[i].codes[j];
        total += (long)n * k;
    }
    cr_assert_geq(same, total - total / 1000);
    result_free(&a), result_free(&b);
}

/* Data-parallel ranks (reduce.h), simulated by threads: every rank tunes the
 * block on its share of each iteration's chunks and gets the one-process
 * run's losses, codes, scales and weights bit for bit, for 2, 3 and 4 ranks
 * over 6 chunks (uneven shares, and ranks owning several tree nodes). */
typedef struct {
    const fixture *f;
    ar_signround_opts o;
    result r;
} rank_tune;

static int rank_tune_main(void *ctx, ar_reducer *rd)
{
    rank_tune *k = ctx;
    k->o.reduce = rd;
    return ar_signround_tune_block(&k->f->c, &k->f->w, k->f->x, k->f->y, NULL, k->f->n, k->f->T, &k->f->plan, &k->o,
                                   k->r.out, &k->r.rep, record_loss, &k->r);
}

static void same_bits(const fixture *f, const result *a, const result *b, int iters, int N, int rank)
{
    for (int it = 0; it < iters; it++)
        cr_assert(a->losses[it] == b->losses[it], "%d ranks, rank %d, iteration %d: loss %.17g vs %.17g", N, rank, it,
                  a->losses[it], b->losses[it]);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!f->plan.quantize[i]) continue;
        int n, k;
        ar_linear_shape(&f->c, i, &n, &k);
        size_t ng = (size_t)n * ar_quant_ngroups(k, f->plan.spec[i].group_size);
        cr_assert(!memcmp(a->out[i].codes, b->out[i].codes, (size_t)n * k), "%d ranks, rank %d: linear %d codes", N,
                  rank, i);
        cr_assert(!memcmp(a->out[i].scale, b->out[i].scale, ng * 4), "%d ranks: linear %d scales", N, i);
        cr_assert(!memcmp(a->out[i].wq, b->out[i].wq, (size_t)n * k * 4), "%d ranks: linear %d weights", N, i);
    }
}

Test(signround, ranks_give_the_one_process_bits)
{
    fixture f;
    random_fixture(&f, 6, 16, 4, 16, 0);
    ar_signround_opts o = opts(12, 3);
    o.grad_accum = 2;
    o.dp_chunk = 1;
    result one;
    tune(&f, &o, &one);
    for (int N = 2; N <= 4; N++) {
        rank_tune k[4];
        for (int r = 0; r < N; r++) {
            k[r] = (rank_tune){.f = &f, .o = o};
            result_alloc(&k[r].r, &f);
        }
        cr_assert_eq(fake_ranks_run(N, rank_tune_main, k, sizeof *k), 0, "%s", ar_last_error());
        for (int r = 0; r < N; r++) same_bits(&f, &one, &k[r].r, o.iters, N, r), result_free(&k[r].r);
    }
    result_free(&one);
}
