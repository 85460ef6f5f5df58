/* test_autoscheme_measured.c — AutoScheme's measured score on stories260K:
 * each score against the loss difference of two explicit whole-model
 * forwards (ar_model_nll over a weight source that swaps in the quantized
 * tensors), with and without a base assignment, RTN and opt-RTN (its
 * imatrix recomputed here from saved block inputs); whole runs meet the
 * budget; bad options are refused. */
#include "autoscheme.h"
#include "error.h"
#include "fixture.h"
#include "refblock.h"
#include "quant.h"
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NSEQ = 3, T = 24, NOPT = 3, MAXSWAP = 4 };

static void stories_dir(char *dir, size_t n) { fx_model_dir(dir, n, "stories260K"); }

static ar_scheme preset(const char *name)
{
    ar_scheme s;
    cr_assert_eq(ar_scheme_preset(&s, name), 0, "%s", ar_last_error());
    return s;
}

static void make_ids(int32_t *ids)
{
    for (int i = 0; i < NSEQ * T; i++) ids[i] = (29 * i + 11) % 512;
}

/* ---- a source that serves some tensors from memory ---------------------- */

typedef struct {
    ar_tensor_source inner;
    int n;
    char name[MAXSWAP][128];
    const float *data[MAXSWAP];
    int k[MAXSWAP];
} swap_src;

static int swap_shape(void *ctx, const char *name, int *ndim, int64_t shape[AR_SRC_MAX_DIMS])
{
    swap_src *s = ctx;
    return s->inner.shape(s->inner.ctx, name, ndim, shape);
}

static int swap_read(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst)
{
    swap_src *s = ctx;
    for (int i = 0; i < s->n; i++)
        if (!strcmp(name, s->name[i])) {
            memcpy(dst, s->data[i] + row0 * s->k[i], sizeof(float) * nrows * s->k[i]);
            return 0;
        }
    return s->inner.read_rows(s->inner.ctx, name, row0, nrows, dst);
}

static void swap_close(void *ctx)
{
    swap_src *s = ctx;
    if (s->inner.close) s->inner.close(s->inner.ctx);
    free(s);
}

/* One weight replaced in the explicit model. */
typedef struct {
    int slot;
    const float *w;
} swap;

/* The mean of refblock.c's rb_model_nll, for fx_mca_tolerance. */
typedef struct { ar_model *m; const int32_t *ids; } nll_run;

static void run_mean_nll(void *ctx, double *out)
{
    nll_run *r = ctx;
    double nll[NSEQ * (T - 1)], sum = 0;
    rb_model_nll(r->m, r->ids, NSEQ, T, nll);
    for (int i = 0; i < NSEQ * (T - 1); i++) sum += nll[i];
    out[0] = sum / (NSEQ * (T - 1));
}

/* Mean next-token NLL of stories260K with the given slots' weights swapped;
 * *tol (may be NULL) the Monte Carlo estimate (fixture.h) of its f32
 * rounding: losses and scores are results of the whole model. The tests
 * take it for the FP model, once, for every loss: a swapped RTN weight
 * changes one matrix by a few percent, not how rounding grows through the
 * network. A loss computed by the library and explicitly differs by at
 * most two such estimates, a score (a difference of two losses) by four. */
static double explicit_loss_tol(const int32_t *ids, const swap *sw, int nsw, double *tol)
{
    char dir[1024];
    stories_dir(dir, sizeof dir);
    ar_config c;
    cr_assert_eq(ar_config_load(&c, dir), 0, "%s", ar_last_error());
    swap_src *s = calloc(1, sizeof *s);
    cr_assert_eq(ar_source_safetensors(&s->inner, dir), 0, "%s", ar_last_error());
    s->n = nsw;
    for (int i = 0; i < nsw; i++) {
        int n;
        ar_autoscheme_slot_name(&c, sw[i].slot, s->name[i], sizeof s->name[i] - 8);
        strcat(s->name[i], ".weight");
        ar_linear_shape(&c, sw[i].slot % AR_NLINEAR, &n, &s->k[i]);
        s->data[i] = sw[i].w;
    }
    ar_tensor_source src = {s, swap_shape, swap_read, swap_close};
    ar_model *m = ar_model_open_source(&c, &src, 0);
    cr_assert(m, "%s", ar_last_error());
    double nll[NSEQ * (T - 1)], sum = 0;
    cr_assert_eq(ar_model_nll(m, ids, NSEQ, T, nll), 0, "%s", ar_last_error());
    for (int i = 0; i < NSEQ * (T - 1); i++) sum += nll[i];
    if (tol) *tol = fx_mca_tolerance(run_mean_nll, &(nll_run){m, ids}, 1, NULL);
    ar_model_close(m);
    return sum / (NSEQ * (T - 1));
}


/* RTN ŵ of slot under preset opt, made here from the FP weight. */
static float *rtn_weight(ar_model *m, int slot, const ar_scheme *opt)
{
    const ar_config *c = ar_model_config(m);
    char name[160];
    int n, k;
    ar_autoscheme_slot_name(c, slot, name, 140);
    strcat(name, ".weight");
    ar_linear_shape(c, slot % AR_NLINEAR, &n, &k);
    float *w = malloc(sizeof(float) * n * k), *wq = malloc(sizeof(float) * n * k);
    cr_assert_eq(ar_model_read_tensor(m, name, 0, n, w), 0, "%s", ar_last_error());
    ar_quant_spec qs = {opt->bits, opt->group_size, opt->sym, 0, 0, 0, 0, 0, NULL, NULL};
    ar_quant_out o = {wq, NULL, NULL, NULL};
    cr_assert_eq(ar_quant_forward(&qs, w, n, k, NULL, &o), 0, "%s", ar_last_error());
    free(w);
    return wq;
}

/* One thread: stories260K is far too small to gain from more, and on a busy
 * machine spinning OpenMP workers make it 50x slower. */
static ar_model *open_stories(void)
{
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    char dir[1024];
    stories_dir(dir, sizeof dir);
    ar_model *m = ar_model_open(dir, AR_MODEL_CACHE);
    cr_assert(m, "%s", ar_last_error());
    return m;
}

/* Candidates: every q/k/v/o (stories260K's MLP has 172 rows, no group fits). */
static void attention_candidates(const ar_config *c, unsigned char *cand)
{
    memset(cand, 0, ar_autoscheme_nslots(c));
    for (int l = 0; l < c->n_layers; l++)
        for (int i = AR_Q; i <= AR_O; i++) cand[l * AR_NLINEAR + i] = 1;
}

/* What the scoring tests start from: stories260K, its synthetic tokens and
 * the attention candidates. */
typedef struct {
    ar_model *m;
    const ar_config *c;
    int ns;
    int32_t ids[NSEQ * T];
    unsigned char *cand;
} measure_case;

static void measure_case_open(measure_case *mc)
{
    mc->m = open_stories();
    mc->c = ar_model_config(mc->m);
    mc->ns = ar_autoscheme_nslots(mc->c);
    make_ids(mc->ids);
    mc->cand = malloc(mc->ns);
    attention_candidates(mc->c, mc->cand);
}

static void measure_case_close(measure_case *mc)
{
    free(mc->cand);
    ar_model_close(mc->m);
}

Test(autoscheme_measured, scores_equal_explicit_loss_differences)
{
    measure_case mc;
    measure_case_open(&mc);
    ar_scheme opts[NOPT] = {preset("W2A16G64"), preset("W4A16"), preset("BF16")};
    double *score = malloc(sizeof(double) * mc.ns * NOPT), base_loss;
    cr_assert_eq(ar_autoscheme_measure(mc.m, opts, NOPT, mc.cand, NULL, 0, mc.ids, NSEQ, T, 2, score, &base_loss, NULL,
                                       NULL), 0, "%s", ar_last_error());
    double tfp, fp = explicit_loss_tol(mc.ids, NULL, 0, &tfp);
    cr_assert_leq(fabs(base_loss - fp), 2 * tfp, "FP loss %.8f vs explicit %.8f, tolerance %g", base_loss, fp, 2 * tfp);
    /* first and last block, an early and a late linear: the block caching matters */
    int slots[] = {AR_Q, AR_V, (mc.c->n_layers - 1) * AR_NLINEAR + AR_O, 2 * AR_NLINEAR + AR_K};
    int positive = 0;
    for (size_t t = 0; t < sizeof slots / sizeof *slots; t++) {
        int s = slots[t];
        for (int j = 0; j < 2; j++) {
            float *wq = rtn_weight(mc.m, s, &opts[j]);
            swap sw = {s, wq};
            double want = explicit_loss_tol(mc.ids, &sw, 1, NULL) - fp, tol = 4 * tfp;
            want = want > 0 ? want : 0;
            double got = score[(size_t)s * NOPT + j];
            cr_assert_leq(fabs(got - want), tol, "slot %d option %d: %.8f vs explicit %.8f, tolerance %g", s, j, got,
                          want, tol);
            positive += got > tol;
            free(wq);
        }
        cr_assert_eq(score[(size_t)s * NOPT + 2], 0.0, "BF16 scores 0");
    }
    cr_assert(positive >= 2, "the test must see real loss changes");
    for (int s = 0; s < mc.ns; s++)
        for (int j = 0; j < NOPT; j++) {
            cr_assert(score[(size_t)s * NOPT + j] >= 0);
            if (!mc.cand[s]) cr_assert_eq(score[(size_t)s * NOPT + j], 0.0);
        }
    free(score);
    measure_case_close(&mc);
}

Test(autoscheme_measured, scores_given_a_base_equal_explicit_differences)
{
    measure_case mc;
    measure_case_open(&mc);
    ar_scheme opts[2] = {preset("W2A16G64"), preset("W4A16")};
    /* base: block 0's q at 2 bits, block 1's v at 4 bits, the rest FP */
    int *base = malloc(sizeof(int) * mc.ns), bq = AR_Q, bv = AR_NLINEAR + AR_V;
    for (int s = 0; s < mc.ns; s++) base[s] = -1;
    base[bq] = 0, base[bv] = 1;
    double *score = malloc(sizeof(double) * mc.ns * 2), base_loss;
    cr_assert_eq(ar_autoscheme_measure(mc.m, opts, 2, mc.cand, base, 0, mc.ids, NSEQ, T, 3, score, &base_loss, NULL,
                                       NULL), 0, "%s", ar_last_error());
    float *q2 = rtn_weight(mc.m, bq, &opts[0]), *v4 = rtn_weight(mc.m, bv, &opts[1]);
    swap sw[3] = {{bq, q2}, {bv, v4}};
    double t, eb = explicit_loss_tol(mc.ids, NULL, 0, &t), tol = 4 * t; /* t: the FP model's estimate */
    eb = explicit_loss_tol(mc.ids, sw, 2, NULL);
    cr_assert_leq(fabs(base_loss - eb), 2 * t, "base loss %.8f vs explicit %.8f", base_loss, eb);
    /* slot bq itself: W4 against FP, with v4 in place */
    float *q4 = rtn_weight(mc.m, bq, &opts[1]);
    swap only_v[2] = {{bv, v4}, {bq, q4}};
    double ref = explicit_loss_tol(mc.ids, only_v, 1, NULL), want = explicit_loss_tol(mc.ids, only_v, 2, NULL) - ref;
    cr_assert_leq(fabs(score[(size_t)bq * 2 + 1] - (want > 0 ? want : 0)), tol, "%.8f vs %.8f",
                  score[(size_t)bq * 2 + 1], want);
    want = base_loss - ref;
    cr_assert_leq(fabs(score[(size_t)bq * 2] - (want > 0 ? want : 0)), tol);
    /* a slot after both: k of block 3 at 2 bits with the base around it */
    int sk = 3 * AR_NLINEAR + AR_K;
    float *k2 = rtn_weight(mc.m, sk, &opts[0]);
    sw[2] = (swap){sk, k2};
    want = explicit_loss_tol(mc.ids, sw, 3, NULL) - base_loss;
    cr_assert_leq(fabs(score[(size_t)sk * 2] - (want > 0 ? want : 0)), tol, "%.8f vs %.8f", score[(size_t)sk * 2],
                  want);
    free(q2); free(v4); free(q4); free(k2); free(base); free(score);
    measure_case_close(&mc);
}

/* Σx²/nseq of linear i's input in block l of the FP model, from the inputs
 * a training forward saves (not the inference observer the library uses). */
static float *explicit_imatrix(ar_model *m, const int32_t *ids, int l, int i)
{
    const ar_config *c = ar_model_config(m);
    int n, k;
    ar_linear_shape(c, i, &n, &k);
    ar_block_weights w;
    ar_block_work ws;
    ar_block_acts a;
    float *x = malloc(sizeof(float) * NSEQ * T * c->hidden), *im = calloc(k, sizeof(float));
    cr_assert(ar_block_weights_alloc(&w, c) == 0 && ar_block_work_init(&ws, c, NSEQ, T, 1) == 0 &&
              ar_block_acts_init(&a, c, NSEQ, T) == 0 && ar_model_embed(m, ids, NSEQ * T, x) == 0);
    for (int b = 0; b <= l; b++)
        cr_assert(ar_model_load_block(m, b, &w) == 0 && ar_block_forward_train(c, &w, x, x, NSEQ, T, &ws, &a) == 0);
    const float *in = ar_block_acts_input(&a, i);
    for (long r = 0; r < (long)NSEQ * T; r++)
        for (int j = 0; j < k; j++) im[j] += in[r * k + j] * in[r * k + j] / NSEQ;
    ar_block_acts_free(&a); ar_block_work_free(&ws); ar_block_weights_free(&w); free(x);
    return im;
}

Test(autoscheme_measured, opt_rtn_scores_use_the_fp_imatrix)
{
    measure_case mc;
    measure_case_open(&mc);
    ar_scheme w2 = preset("W2A16G64");
    double *score = malloc(sizeof(double) * mc.ns), *rtn = malloc(sizeof(double) * mc.ns);
    cr_assert_eq(ar_autoscheme_measure(mc.m, &w2, 1, mc.cand, NULL, 1, mc.ids, NSEQ, T, 2, score, NULL, NULL, NULL), 0,
                 "%s", ar_last_error());
    cr_assert_eq(ar_autoscheme_measure(mc.m, &w2, 1, mc.cand, NULL, 0, mc.ids, NSEQ, T, 2, rtn, NULL, NULL, NULL), 0);
    double tfp, fp = explicit_loss_tol(mc.ids, NULL, 0, &tfp);
    /* the two slots RTN hurts most: clipped zeros would prove nothing */
    int differ = 0, slots[2] = {-1, -1};
    for (int s = 0; s < mc.ns; s++) {
        if (slots[0] < 0 || rtn[s] > rtn[slots[0]]) slots[1] = slots[0], slots[0] = s;
        else if (slots[1] < 0 || rtn[s] > rtn[slots[1]]) slots[1] = s;
    }
    cr_assert(rtn[slots[1]] > 4 * tfp, "stories260K shows no loss at 2 bits beyond rounding");
    for (int t = 0; t < 2; t++) {
        int s = slots[t], l = s / AR_NLINEAR, i = s % AR_NLINEAR, n, k;
        char name[160];
        ar_linear_shape(mc.c, i, &n, &k);
        ar_autoscheme_slot_name(mc.c, s, name, 140);
        strcat(name, ".weight");
        float *w = malloc(sizeof(float) * n * k), *wq = malloc(sizeof(float) * n * k);
        float *im = explicit_imatrix(mc.m, mc.ids, l, i);
        cr_assert_eq(ar_model_read_tensor(mc.m, name, 0, n, w), 0);
        ar_quant_spec qs = {2, 64, 1, 0, 0, 0, 0, 0, NULL, NULL};
        ar_quant_out o = {wq, NULL, NULL, NULL};
        cr_assert_eq(ar_quant_opt_rtn(&qs, w, n, k, im, &o), 0, "%s", ar_last_error());
        swap sw = {s, wq};
        double want = explicit_loss_tol(mc.ids, &sw, 1, NULL) - fp, tol = 4 * tfp;
        want = want > 0 ? want : 0;
        cr_assert_leq(fabs(score[s] - want), tol, "slot %d: %.8f vs explicit %.8f, tolerance %g", s, score[s], want, tol);
        differ += fabs(score[s] - rtn[s]) > tol;
        free(w); free(wq); free(im);
    }
    cr_assert(differ > 0, "opt-RTN changed no score: the test cannot tell it from RTN");
    free(score); free(rtn);
    measure_case_close(&mc);
}

Test(autoscheme_measured, runs_meet_the_budget)
{
    ar_model *m = open_stories();
    int32_t ids[NSEQ * T];
    make_ids(ids);
    ar_scheme opts[2] = {preset("W2A16G64"), preset("W4A16")};
    for (int variant = 0; variant < 3; variant++) {
        ar_autoscheme_opts o = {3.0, opts, 2, NULL, 0, 0, 0, 2, 0, NULL, NULL, 0,
                                AR_AS_SCORE_MEASURED, variant == 1, variant == 2 ? 2 : 1};
        ar_autoscheme_result r;
        cr_assert_eq(ar_autoscheme_run(m, ids, NSEQ, T, &o, &r), 0, "%s", ar_last_error());
        cr_assert(r.used_bits <= r.budget && r.avg_bits > 2.9, "avg %g", r.avg_bits);
        int two = 0, four = 0;
        for (int s = 0; s < r.nslots; s++) two += r.choice[s] == 0, four += r.choice[s] == 1;
        cr_assert(two > 0 && four > 0, "variant %d: a 3-bit mix uses both options (%d, %d)", variant, two, four);
        ar_autoscheme_result_free(&r);
    }
    ar_model_close(m);
}

Test(autoscheme_measured, bad_input_is_refused)
{
    measure_case mc;
    measure_case_open(&mc);
    double *score = malloc(sizeof(double) * mc.ns);
    ar_scheme gguf = preset("GGUF:Q4_K_M");
    cr_assert_eq(ar_autoscheme_measure(mc.m, &gguf, 1, mc.cand, NULL, 0, mc.ids, NSEQ, T, 2, score, NULL, NULL, NULL),
                 -1);
    cr_assert(strstr(ar_last_error(), "no RTN quantizer"), "%s", ar_last_error());
    ar_scheme w2 = preset("W2A16G64");
    cr_assert_eq(ar_autoscheme_measure(mc.m, &w2, 1, mc.cand, NULL, 0, mc.ids, NSEQ, 1, 2, score, NULL, NULL, NULL),
                 -1);
    cr_assert(strstr(ar_last_error(), "at least 2 tokens"), "%s", ar_last_error());
    free(score);
    measure_case_close(&mc);
}
