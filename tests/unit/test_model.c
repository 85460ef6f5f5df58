/* test_model.c — the full forward against recorded references:
 * stories260K logits from a float64 numpy forward (shared reference JSON),
 * and the safetensors/config error paths a forward depends on. */
#include "error.h"
#include "fixture.h"
#include "model.h"
#include "refblock.h"
#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The recorded references come from other implementations, so the
 * comparison spans a whole model, where worst-case bounds carried through
 * the layers exceed the logits themselves. The tolerance is the Monte Carlo
 * estimate of our f32 forward's rounding error on the same ids
 * (fixture.h fx_mca_tolerance over refblock.c's rb_model_logits), doubled
 * where the reference is f32 too (its rounding is of the same kind); a
 * float64 reference adds nothing measurable. The layers themselves are
 * checked stage by stage with rigorous bounds in test_block. */
typedef struct {
    ar_model *m;
    const int *ids, *rows;
    int T, nrows;
} model_run;

static void run_model(void *ctx, double *out)
{
    model_run *r = ctx;
    rb_model_logits(r->m, r->ids, r->T, r->rows, r->nrows, out);
}

static double model_tolerance(ar_model *m, const int *ids, int T, const int *rows, int nrows)
{
    model_run r = {m, ids, rows, T, nrows};
    long n = (long)(rows ? nrows : T) * ar_model_config(m)->vocab;
    double tol = fx_mca_tolerance(run_model, &r, n, NULL);
    cr_log_info("Monte Carlo tolerance of the logits: %.3g", tol);
    return tol;
}

/* stories260K's logits [256, V] for the ids of greedy_once_upon_a_time.json
 * (opened with flags); *jref the reference JSON, *m the open model. */
static float *stories_logits(int flags, cJSON **jref, ar_model **mp, int **tokp)
{
    char dir[1024], ref[1100];
    fx_model_dir(dir, sizeof dir, "stories260K");
    snprintf(ref, sizeof ref, "%s/reference/greedy_once_upon_a_time.json", dir);
    cJSON *j = fx_load_json(ref);
    const cJSON *ids = cJSON_GetObjectItem(j, "ids");
    int T = 256;
    cr_assert_geq(cJSON_GetArraySize(ids), T);
    int *tok = malloc(sizeof(int) * T);
    for (int t = 0; t < T; t++) tok[t] = cJSON_GetArrayItem(ids, t)->valueint;
    ar_model *m = ar_model_open(dir, flags);
    cr_assert(m, "%s", ar_last_error());
    int V = ar_model_config(m)->vocab;
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    cr_assert_eq(ar_model_forward(m, tok, 1, T, logits), 0, "%s", ar_last_error());
    *jref = j, *mp = m, *tokp = tok;
    return logits;
}

/* f32 forward vs the float64 reference at its recorded positions (a wrong
 * RoPE or norm moves logits by > 0.1). */
Test(model, stories260k_logits_match_float64_reference_streaming)
{
    cJSON *j;
    ar_model *m;
    int *tok;
    float *logits = stories_logits(0, &j, &m, &tok);
    const cJSON *pos = cJSON_GetObjectItem(j, "logits_positions"), *lg = cJSON_GetObjectItem(j, "logits");
    int V = ar_model_config(m)->vocab, np = cJSON_GetArraySize(pos), rows[np];
    for (int k = 0; k < np; k++) rows[k] = cJSON_GetArrayItem(pos, k)->valueint;
    double tol = model_tolerance(m, tok, 256, rows, np), worst = 0;
    for (int k = 0; k < np; k++) {
        const cJSON *row = cJSON_GetArrayItem(lg, k);
        cr_assert_eq(cJSON_GetArraySize(row), V);
        for (int v = 0; v < V; v++)
            worst = fmax(worst, fabs(logits[(size_t)rows[k] * V + v] - cJSON_GetArrayItem(row, v)->valuedouble));
    }
    cr_log_info("stories260K max |logit diff| = %.3g, tolerance %.3g", worst, tol);
    cr_assert_leq(worst, tol, "max diff %g, tolerance %g", worst, tol);
    free(logits), free(tok);
    ar_model_close(m);
    cJSON_Delete(j);
}

/* Cached weights are the same weights: exact, the same f32 forward (same
 * machine, kernel and thread count). */
Test(model, stories260k_logits_cached_equal_streaming)
{
    cJSON *j, *j2;
    ar_model *m, *m2;
    int *tok, *tok2;
    float *a = stories_logits(0, &j, &m, &tok), *b = stories_logits(AR_MODEL_CACHE, &j2, &m2, &tok2);
    long n = 256L * ar_model_config(m)->vocab;
    for (long i = 0; i < n; i++) cr_assert_eq(a[i], b[i], "logit %ld: %.9g cached, %.9g streaming", i, b[i], a[i]);
    free(a), free(b), free(tok), free(tok2);
    ar_model_close(m), ar_model_close(m2);
    cJSON_Delete(j), cJSON_Delete(j2);
}

/* Tiny random-weight models written by tools/gen_model_fixtures.py, with
 * float32 transformers logits: each exercises one architecture option.
 * Asserts the largest |ours - transformers| is within twice the Monte Carlo
 * tolerance (both sides f32) and returns it. */
static double fixture_max_diff(const char *name)
{
    char dir[512], ref[600];
    snprintf(dir, sizeof dir, "tests/fixtures/models/%s", name);
    snprintf(ref, sizeof ref, "%s/reference.json", dir);
    cJSON *j = fx_load_json(ref);
    const cJSON *ids = cJSON_GetObjectItem(j, "ids"), *lg = cJSON_GetObjectItem(j, "logits");
    int T = cJSON_GetArraySize(ids);
    int *tok = malloc(sizeof(int) * T);
    for (int t = 0; t < T; t++) tok[t] = cJSON_GetArrayItem(ids, t)->valueint;
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    int V = ar_model_config(m)->vocab;
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    cr_assert_eq(ar_model_forward(m, tok, 1, T, logits), 0, "%s", ar_last_error());
    double tol = 2 * model_tolerance(m, tok, T, NULL, 0), worst = 0;
    for (int t = 0; t < T; t++) {
        const cJSON *row = cJSON_GetArrayItem(lg, t);
        cr_assert_eq(cJSON_GetArraySize(row), V);
        for (int v = 0; v < V; v++) {
            double d = fabs(logits[(size_t)t * V + v] - cJSON_GetArrayItem(row, v)->valuedouble);
            if (d > worst) worst = d;
        }
    }
    free(logits); free(tok);
    ar_model_close(m);
    cJSON_Delete(j);
    cr_log_info("%s max |logit diff| = %.3g, tolerance %.3g", name, worst, tol);
    cr_assert_leq(worst, tol, "%s: max diff %g, tolerance %g", name, worst, tol);
    return worst;
}

/* Any wrong option moves the logits by far more than the tolerance. */
Test(model, qwen2_bias_linear_rope_bf16_tied) { fixture_max_diff("qwen2"); }
Test(model, qwen3_qk_norm_wide_head_dim) { fixture_max_diff("qwen3"); }
Test(model, mistral_sliding_window_untied) { fixture_max_diff("mistral"); }
Test(model, llama3_rope_attention_and_mlp_bias) { fixture_max_diff("llama3"); }
Test(model, phi3_fused_partial_longrope_short) { fixture_max_diff("phi3"); }
Test(model, phi3_longrope_long_factors_tied) { fixture_max_diff("phi3_long"); }
Test(model, glm4_bias_interleaved_partial_rope_post_norms) { fixture_max_diff("glm4"); }
Test(model, qwen2_dense_yarn) { fixture_max_diff("qwen2_yarn"); }
Test(model, llama_dynamic_ntk_beyond_max_position) { fixture_max_diff("llama_dynamic"); }

/* The Mistral fixture must depend on its window: without it the logits move. */
Test(model, mistral_fixture_is_sensitive_to_the_window)
{
    ar_config c;
    ar_tensor_source src;
    cr_assert_eq(ar_config_load(&c, "tests/fixtures/models/mistral"), 0, "%s", ar_last_error());
    cr_assert_eq(c.sliding_window, 5);
    int ids[16];
    for (int i = 0; i < 16; i++) ids[i] = (7 * i * i + 3 * i + 1) % c.vocab;
    float *a = malloc(sizeof(float) * 16 * c.vocab), *b = malloc(sizeof(float) * 16 * c.vocab);
    double tol = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass) c.sliding_window = 0;
        cr_assert_eq(ar_source_safetensors(&src, "tests/fixtures/models/mistral"), 0);
        ar_model *m = ar_model_open_source(&c, &src, 0);
        cr_assert(m, "%s", ar_last_error());
        cr_assert_eq(ar_model_forward(m, ids, 1, 16, pass ? b : a), 0);
        if (pass) tol = 2 * model_tolerance(m, ids, 16, NULL, 0);
        ar_model_close(m);
    }
    double worst = 0;
    for (int i = 0; i < 16 * c.vocab; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    /* beyond twice the tolerance of the comparison with transformers, so
     * that a forward without the window fails it: |b - ref| >= |b - a| -
     * |a - ref| > 2 tol - tol */
    cr_assert_gt(worst, 2 * tol, "window changes logits by only %g (tolerance %g)", worst, tol);
    free(a); free(b);
}

static void stories_dir(char *dir, size_t n) { fx_model_dir(dir, n, "stories260K"); }

/* refblock.c's rb_model_nll of two sequences, for fx_mca_tolerance. */
enum { NLL_T = 40 };
typedef struct { ar_model *m; const int *ids; } nll_run;

static void run_nll(void *ctx, double *out)
{
    nll_run *r = ctx;
    rb_model_nll(r->m, r->ids, 2, NLL_T, out);
}

/* ar_model_nll (chunked, batched) equals -log_softmax of ar_model_forward's
 * logits at the next token, and a batch of two windows scores each as
 * alone: two f32 paths through the whole model (batch 2 against 1, chunks),
 * so within twice the Monte Carlo tolerance of the nll. */
Test(model, nll_matches_forward_logits_and_batching)
{
    char dir[512];
    stories_dir(dir, sizeof dir);
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    enum { T = NLL_T };
    int ids[2 * T];
    for (int i = 0; i < 2 * T; i++) ids[i] = (i * 37 + 11) % 512;
    double nll[2 * (T - 1)];
    cr_assert_eq(ar_model_nll(m, ids, 2, T, nll), 0, "%s", ar_last_error());
    nll_run r = {m, ids};
    double tol = 2 * fx_mca_tolerance(run_nll, &r, 2 * (T - 1), NULL);
    float *lg = malloc(sizeof(float) * T * 512);
    for (int b = 0; b < 2; b++) {
        cr_assert_eq(ar_model_forward(m, ids + b * T, 1, T, lg), 0);
        ar_log_softmax_rows(lg, T, 512);
        for (int t = 0; t < T - 1; t++) {
            double got = nll[b * (T - 1) + t], want = -lg[t * 512 + ids[b * T + t + 1]];
            cr_assert_leq(fabs(got - want), tol, "b %d t %d: nll %.9g vs %.9g, tolerance %g", b, t, got, want, tol);
        }
    }
    free(lg);
    ar_model_close(m);
}

/* A source that forwards to safetensors but lies about one tensor's shape or
 * hides one: shows the interface other sources implement. */
typedef struct { ar_tensor_source inner; const char *lie, *hide; } wrap_ctx;

static int wrap_shape(void *ctx, const char *name, int *nd, int64_t *shape)
{
    wrap_ctx *w = ctx;
    if (w->hide && !strcmp(name, w->hide)) return 1;
    int rc = w->inner.shape(w->inner.ctx, name, nd, shape);
    if (!rc && w->lie && !strcmp(name, w->lie)) shape[0] += 1;
    return rc;
}
static int wrap_read(void *ctx, const char *name, int64_t r0, int64_t nr, float *dst)
{
    wrap_ctx *w = ctx;
    return w->inner.read_rows(w->inner.ctx, name, r0, nr, dst);
}
static void wrap_close(void *ctx)
{
    wrap_ctx *w = ctx;
    w->inner.close(w->inner.ctx);
}

static ar_model *open_wrapped(wrap_ctx *w, int untie)
{
    char dir[512];
    ar_config c;
    stories_dir(dir, sizeof dir);
    cr_assert_eq(ar_config_load(&c, dir), 0);
    if (untie) c.tie_embeddings = 0;
    cr_assert_eq(ar_source_safetensors(&w->inner, dir), 0);
    ar_tensor_source src = {.ctx = w, .shape = wrap_shape, .read_rows = wrap_read, .close = wrap_close};
    return ar_model_open_source(&c, &src, 0);
}

Test(model, custom_source_shape_mismatch_is_reported)
{
    wrap_ctx w = {.lie = "model.layers.3.mlp.up_proj.weight"};
    cr_assert_null(open_wrapped(&w, 0));
    cr_assert(strstr(ar_last_error(), "tensor 'model.layers.3.mlp.up_proj.weight' has shape [173, 64], config.json implies [172, 64]"),
              "%s", ar_last_error());
}

Test(model, missing_tensors_are_reported)
{
    wrap_ctx w = {.hide = "model.layers.4.post_attention_layernorm.weight"};
    cr_assert_null(open_wrapped(&w, 0));
    cr_assert(strstr(ar_last_error(), "no tensor 'model.layers.4.post_attention_layernorm.weight'"), "%s", ar_last_error());
    wrap_ctx w2 = {0};
    cr_assert_null(open_wrapped(&w2, 1));
    cr_assert(strstr(ar_last_error(), "no tensor 'lm_head.weight' and tie_word_embeddings is false"), "%s", ar_last_error());
}

/* The source's own refusal of a name it does not hold (the model checks
 * shapes first, so the tools do not reach it; a library caller can) names the
 * checkpoint file: a plain name, and a per-expert name with no fused tensor. */
Test(model, source_read_of_a_missing_tensor_names_the_file)
{
    char dir[512], want[600];
    stories_dir(dir, sizeof dir);
    ar_tensor_source src;
    cr_assert_eq(ar_source_safetensors(&src, dir), 0, "%s", ar_last_error());
    float row[64];
    const char *names[] = {"model.layers.0.no_such.weight", "model.layers.0.mlp.experts.3.gate_proj.weight"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(src.read_rows(src.ctx, names[i], 0, 1, row), -1);
        snprintf(want, sizeof want, "%s/model.safetensors: no tensor '%s'", dir, names[i]);
        cr_assert_str_eq(ar_last_error(), want);
    }
    src.close(src.ctx);
}

Test(model, token_ids_outside_vocab_are_refused)
{
    char dir[512];
    stories_dir(dir, sizeof dir);
    ar_model *m = ar_model_open(dir, AR_MODEL_CACHE);
    cr_assert(m);
    int ids[3] = {1, 512, 3};
    double nll[2];
    cr_assert_eq(ar_model_nll(m, ids, 1, 3, nll), -1);
    cr_assert(strstr(ar_last_error(), "token id 512 out of range (vocab 512)"), "%s", ar_last_error());
    ar_model_close(m);
}
