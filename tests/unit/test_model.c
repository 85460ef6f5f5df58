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
