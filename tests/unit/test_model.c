/* test_model.c — the full forward against recorded references:
 * stories260K logits from a float64 numpy forward (shared reference JSON),
 * and the safetensors/config error paths a forward depends on. */
#include "error.h"
#include "model.h"
#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *shared(void)
{
    const char *s = getenv("AR_SHARED");
    return s ? s : "../shared";
}

static cJSON *load_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    fclose(f);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    cr_assert(j, "%s: bad JSON", path);
    return j;
}

/* Largest |ours - reference| over the recorded positions of greedy_once_upon_a_time.json. */
static double stories_max_diff(int flags)
{
    char dir[1024], ref[1100];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared());
    snprintf(ref, sizeof ref, "%s/reference/greedy_once_upon_a_time.json", dir);
    cJSON *j = load_json(ref);
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
    cJSON *j = load_json(ref);
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
