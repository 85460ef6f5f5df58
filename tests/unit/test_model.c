/* test_model.c — the full forward against recorded references:
 * stories260K logits from a float64 numpy forward (shared reference JSON),
 * and the safetensors/config error paths a forward depends on. */
#include "error.h"
#include "fixture.h"
#include "model.h"
#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest |ours - reference| over the recorded positions of greedy_once_upon_a_time.json. */
static double stories_max_diff(int flags)
{
    char dir[1024], ref[1100];
    fx_model_dir(dir, sizeof dir, "stories260K");
    snprintf(ref, sizeof ref, "%s/reference/greedy_once_upon_a_time.json", dir);
    cJSON *j = fx_load_json(ref);
    const cJSON *ids = cJSON_GetObjectItem(j, "ids"), *pos = cJSON_GetObjectItem(j, "logits_positions");
    const cJSON *lg = cJSON_GetObjectItem(j, "logits");
    int T = 256;
    cr_assert_geq(cJSON_GetArraySize(ids), T);
    int *tok = malloc(sizeof(int) * T);
    for (int t = 0; t < T; t++) tok[t] = cJSON_GetArrayItem(ids, t)->valueint;
    ar_model *m = ar_model_open(dir, flags);
    cr_assert(m, "%s", ar_last_error());
    int V = ar_model_config(m)->vocab;
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    cr_assert_eq(ar_model_forward(m, tok, 1, T, logits), 0, "%s", ar_last_error());
    double worst = 0;
    for (int k = 0; k < cJSON_GetArraySize(pos); k++) {
        int p = cJSON_GetArrayItem(pos, k)->valueint;
        const cJSON *row = cJSON_GetArrayItem(lg, k);
        cr_assert_eq(cJSON_GetArraySize(row), V);
        for (int v = 0; v < V; v++) {
            double d = fabs(logits[(size_t)p * V + v] - cJSON_GetArrayItem(row, v)->valuedouble);
            if (d > worst) worst = d;
        }
    }
    free(logits); free(tok);
    ar_model_close(m);
    cJSON_Delete(j);
    return worst;
}

/* f32 forward vs the float64 reference: logits are O(10), 5 layers of f32
 * rounding leave ~1e-5; 1e-4 leaves a margin while catching any real error
 * (a wrong RoPE or norm moves logits by > 0.1). */
Test(model, stories260k_logits_match_float64_reference_streaming)
{
    double d = stories_max_diff(0);
    cr_log_info("stories260K max |logit diff| (streaming) = %.3g", d);
    cr_assert_lt(d, 1e-4, "max diff %g", d);
}

Test(model, stories260k_logits_match_float64_reference_cached)
{
    double d = stories_max_diff(AR_MODEL_CACHE);
    cr_assert_lt(d, 1e-4, "max diff %g", d);
}

/* Tiny random-weight models written by tools/gen_model_fixtures.py, with
 * float32 transformers logits: each exercises one architecture option. */
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
    double worst = 0;
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
    cr_log_info("%s max |logit diff| = %.3g", name, worst);
    return worst;
}

/* Both sides compute in f32 from the same weights (logits O(5)); 1e-4 is a
 * few hundred f32 ulps, far below what any wrong option would cause. */
Test(model, qwen2_bias_linear_rope_bf16_tied) { cr_assert_lt(fixture_max_diff("qwen2"), 1e-4); }
Test(model, qwen3_qk_norm_wide_head_dim) { cr_assert_lt(fixture_max_diff("qwen3"), 1e-4); }
Test(model, mistral_sliding_window_untied) { cr_assert_lt(fixture_max_diff("mistral"), 1e-4); }
Test(model, llama3_rope_attention_and_mlp_bias) { cr_assert_lt(fixture_max_diff("llama3"), 1e-4); }

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
    for (int pass = 0; pass < 2; pass++) {
        if (pass) c.sliding_window = 0;
        cr_assert_eq(ar_source_safetensors(&src, "tests/fixtures/models/mistral"), 0);
        ar_model *m = ar_model_open_source(&c, &src, 0);
        cr_assert(m, "%s", ar_last_error());
        cr_assert_eq(ar_model_forward(m, ids, 1, 16, pass ? b : a), 0);
        ar_model_close(m);
    }
    double worst = 0;
    for (int i = 0; i < 16 * c.vocab; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    cr_assert_gt(worst, 1e-2, "window changes logits by only %g", worst);
    free(a); free(b);
}

static void stories_dir(char *dir, size_t n) { fx_model_dir(dir, n, "stories260K"); }

/* ar_model_nll (chunked, batched) equals -log_softmax of ar_model_forward's
 * logits at the next token, and a batch of two windows scores each as alone. */
Test(model, nll_matches_forward_logits_and_batching)
{
    char dir[512];
    stories_dir(dir, sizeof dir);
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    enum { T = 40 };
    int ids[2 * T];
    for (int i = 0; i < 2 * T; i++) ids[i] = (i * 37 + 11) % 512;
    double nll[2 * (T - 1)];
    cr_assert_eq(ar_model_nll(m, ids, 2, T, nll), 0, "%s", ar_last_error());
    float *lg = malloc(sizeof(float) * T * 512);
    for (int b = 0; b < 2; b++) {
        cr_assert_eq(ar_model_forward(m, ids + b * T, 1, T, lg), 0);
        ar_log_softmax_rows(lg, T, 512);
        for (int t = 0; t < T - 1; t++)
            cr_assert_float_eq(nll[b * (T - 1) + t], -lg[t * 512 + ids[b * T + t + 1]], 1e-4, "b %d t %d", b, t);
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
