/* test_rope_scaling.c — rope_scaling.h against transformers 5.25 (the
 * fixture of tests/fixtures/moe/dump_attn_refs.py) and against the formulas
 * evaluated in double with error bounds. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_ref.h"
#include "ops.h"
#include "rope_scaling.h"

static fx_ev X(double v) { return fx_exact(v); }

/* powf(b, e) with e carrying a bound: b^e exact, bounded as exp(e ln b) (1 ulp + e's error). */
static fx_ev fx_powf(double b, fx_ev e)
{
    double v = pow(b, e.v), err = v * expm1(fabs(log(b)) * e.e);
    return (fx_ev){v, err + 2 * FX_U * (v + err)};
}

/* The reference of ar_rope_yarn_inv_freq's entry i, in its f32 order. */
static fx_ev yarn_ref(const ar_rope_yarn *y, int i)
{
    double lo = y->dim * log(y->orig_max_pos / (y->beta_fast * 2 * M_PI)) / (2 * log(y->theta));
    double hi = y->dim * log(y->orig_max_pos / (y->beta_slow * 2 * M_PI)) / (2 * log(y->theta));
    if (y->truncate) lo = floor(lo), hi = ceil(hi);
    lo = fmax(lo, 0), hi = fmin(hi, y->dim - 1);
    fx_ev pos = fx_powf((float)y->theta, fx_div(X(2 * i), X(y->dim)));
    fx_ev extra = fx_div(X(1), pos), inter = fx_div(X(1), fx_mul(X((float)y->factor), pos));
    fx_ev ramp = fx_div(fx_sub(X(i), X((float)lo)), X((float)(hi - lo)));
    if (ramp.v - ramp.e > 1) ramp = X(1); /* clamped for sure: exact */
    else if (ramp.v + ramp.e < 0) ramp = X(0);
    else ramp.v = fmin(fmax(ramp.v, 0), 1); /* clamping does not widen the bound */
    fx_ev keep = fx_sub(X(1), ramp);
    return fx_add(fx_mul(inter, fx_sub(X(1), keep)), fx_mul(extra, keep));
}

static void yarn_from_case(ar_rope_yarn *y, const ar_refs *r, const char *cs, int dim)
{
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(ar_refs_case(r, cs), "config"), "rope_parameters");
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(rp, "truncate");
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(rp, "mscale");
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(rp, "mscale_all_dim");
    *y = (ar_rope_yarn){.theta = cJSON_GetObjectItemCaseSensitive(rp, "rope_theta")->valuedouble, .dim = dim,
                        .factor = cJSON_GetObjectItemCaseSensitive(rp, "factor")->valuedouble,
                        .orig_max_pos = cJSON_GetObjectItemCaseSensitive(rp, "original_max_position_embeddings")->valueint,
                        .beta_fast = cJSON_GetObjectItemCaseSensitive(rp, "beta_fast")->valuedouble,
                        .beta_slow = cJSON_GetObjectItemCaseSensitive(rp, "beta_slow")->valuedouble,
                        .truncate = tr ? cJSON_IsTrue(tr) : 1, .mscale = cJSON_IsNumber(ms) ? ms->valuedouble : 0,
                        .mscale_all_dim = cJSON_IsNumber(ma) ? ma->valuedouble : 0};
}

/* Double formulas of a few operations: within 64 ulps of double (log,
 * pow, sqrt each 1 ulp; the Python side the same). */
static void assert_double(double got, double want, const char *what)
{
    fx_assert_within(got, want, 32 * 0x1p-53 * fabs(want), "%s", what);
}

static void check_yarn(const char *cs, int dim, int is_mla)
{
    ar_refs r;
    ar_refs_load(&r);
    ar_rope_yarn y;
    yarn_from_case(&y, &r, cs, dim);
    long n;
    float *want = ar_refs_tensor(&r, cs, "inv_freq", &n), got[64];
    cr_assert_eq(n, dim / 2);
    ar_rope_yarn_inv_freq(got, &y);
    for (int i = 0; i < dim / 2; i++) {
        fx_ev e = yarn_ref(&y, i);
        fx_assert_within(got[i], e.v, e.e, "%s inv_freq[%d] (ar)", cs, i);
        fx_assert_within(want[i], e.v, e.e, "%s inv_freq[%d] (transformers)", cs, i);
    }
    double af = ar_rope_yarn_attention_factor(&y);
    assert_double(af, ar_refs_num(&r, cs, 0, "attention_scaling"), "attention factor");
    if (is_mla) {
        ar_config c = {.rope_type = AR_ROPE_YARN, .rope_factor = y.factor, .rope_mscale_all_dim = y.mscale_all_dim};
        c.mla.qk_nope_head_dim = (int)ar_refs_num(&r, cs, 1, "qk_nope_head_dim");
        c.mla.qk_rope_head_dim = dim;
        assert_double(ar_rope_mla_softmax_scale(&c), ar_refs_num(&r, cs, 0, "scaling"), "MLA softmax scale");
    }
    /* cos/sin tables: cosf(fl(t inv)) * af from ar's inv_freq; transformers'
     * from its own inv_freq, which may differ within the bounds above: the
     * angle then moves by t |inv_ar - inv_hf| at most. */
    long nt;
    float *hc = ar_refs_tensor(&r, cs, "cos", &nt), *hs = ar_refs_tensor(&r, cs, "sin", NULL);
    int T = (int)(nt / (dim / 2));
    float *ct = malloc(sizeof(float) * nt), *st = malloc(sizeof(float) * nt);
    ar_rope_tables_scaled(ct, st, got, dim, T, (float)af);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < dim / 2; i++) {
            fx_ev a = fx_mul(X(t), X(got[i]));
            fx_ev c = fx_mul(fx_cos(a), X((float)af)), s = fx_mul(fx_sin(a), X((float)af));
            double moved = t * fabs((double)want[i] - got[i]) * (float)af;
            long j = (long)t * (dim / 2) + i;
            fx_assert_within(ct[j], c.v, c.e, "%s cos[%d, %d] (ar)", cs, t, i);
            fx_assert_within(st[j], s.v, s.e, "%s sin[%d, %d] (ar)", cs, t, i);
            fx_assert_within(hc[j], c.v, c.e + moved, "%s cos[%d, %d] (transformers)", cs, t, i);
            fx_assert_within(hs[j], s.v, s.e + moved, "%s sin[%d, %d] (transformers)", cs, t, i);
        }
    free(want), free(hc), free(hs), free(ct), free(st);
    ar_refs_free(&r);
}

Test(rope_scaling, yarn_deepseek_v3) { check_yarn("deepseek_v3", 16, 1); }
Test(rope_scaling, yarn_deepseek_small_mscale) { check_yarn("deepseek_small", 4, 1); }
Test(rope_scaling, yarn_gpt_oss_no_truncate) { check_yarn("gpt_oss_sliding", 32, 0); }

/* A correction range that truncation changes: the two settings must give
 * different frequencies in the ramp (the flag is not ignored). */
Test(rope_scaling, yarn_truncate_matters)
{
    ar_rope_yarn y = {.theta = 150000, .dim = 32, .factor = 4, .orig_max_pos = 1024, .beta_fast = 32, .beta_slow = 1};
    float a[16], b[16];
    y.truncate = 1, ar_rope_yarn_inv_freq(a, &y);
    y.truncate = 0, ar_rope_yarn_inv_freq(b, &y);
    int differ = 0;
    for (int i = 0; i < 16; i++) differ += a[i] != b[i];
    cr_assert(differ > 0);
}

static void check_inv(const float *got, const float *want, const fx_ev *ref, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        fx_assert_within(got[i], ref[i].v, ref[i].e, "%s[%d] (ar)", what, i);
        fx_assert_within(want[i], ref[i].v, ref[i].e, "%s[%d] (transformers)", what, i);
    }
}

Test(rope_scaling, longrope_and_dynamic_ntk)
{
    ar_refs r;
    ar_refs_load(&r);
    const cJSON *c = ar_refs_case(&r, "rope_only");
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(c, "short_factor"), *lf = cJSON_GetObjectItemCaseSensitive(c, "long_factor");
    float sh[8], lo[8], got[8];
    for (int i = 0; i < 8; i++)
        sh[i] = (float)cJSON_GetArrayItem(sf, i)->valuedouble, lo[i] = (float)cJSON_GetArrayItem(lf, i)->valuedouble;
    double theta = ar_refs_num(&r, "rope_only", 0, "theta");
    int dim = 16, orig = 64, L[2] = {32, 300};
    for (int j = 0; j < 2; j++) {
        char name[64];
        const float *ext = L[j] > orig ? lo : sh;
        ar_rope_longrope_inv_freq(got, theta, dim, ext);
        snprintf(name, sizeof name, "longrope_inv_freq_%d", L[j]);
        float *want = ar_refs_tensor(&r, "rope_only", name, NULL);
        fx_ev ref[8];
        for (int i = 0; i < 8; i++)
            ref[i] = fx_div(X(1), fx_mul(X(ext[i]), fx_powf((float)theta, fx_div(X(2 * i), X(dim)))));
        check_inv(got, want, ref, 8, name);
        free(want);
        snprintf(name, sizeof name, "longrope_attention_factor_%d", L[j]);
        assert_double(ar_rope_longrope_attention_factor(256.0 / orig, orig), ar_refs_num(&r, "rope_only", 0, name), name);
        /* dynamic NTK: factor 2 over 64 positions. The reference is
         * transformers' init function with an integer length (the base in
         * double); beyond 64 positions ar computes the base in f32 as the
         * model's dynamic_rope_update does on a tensor length. */
        ar_rope_dynamic_ntk_inv_freq(got, theta, dim, 2.0, 64, L[j]);
        snprintf(name, sizeof name, "dynamic_inv_freq_%d", L[j]);
        want = ar_refs_tensor(&r, "rope_only", name, NULL);
        double seq = L[j] > 64 ? L[j] : 64, g = 2.0 * seq / 64 - 1, p = (double)dim / (dim - 2);
        double base = theta * pow(g, p);
        /* relative error of base: one f32 rounding (double path); the f32
         * path adds g's 3 roundings (amplified by p and by the cancellation
         * 2 seq / 64 over g), p's rounding (times |ln g|), powf's 1 ulp and
         * theta's product: u (3 p (g + 1) / g + p |ln g| + 3) */
        double rel = L[j] > 64 ? FX_U * (3 * p * (g + 1) / g + p * fabs(log(g)) + 3) : FX_U;
        for (int i = 0; i < 8; i++) ref[i] = fx_div(X(1), fx_powf((float)base, fx_div(X(2 * i), X(dim))));
        for (int i = 0; i < 8; i++) ref[i].e += fabs(ref[i].v) * (2 * i / (double)dim) * rel; /* base's error */
        check_inv(got, want, ref, 8, name);
        free(want);
    }
    ar_refs_free(&r);
}

/* ar_rope_slice against the reference in both layouts, and its sign -1 the
 * transpose: <R x, y> = <x, R^T y>. */
Test(rope_scaling, rope_slice_layouts)
{
    enum { B = 2, T = 3, H = 2, HS = 9, OFF = 3, D = 6, N = B * T * H * HS };
    float x[N], y[N], ct[T * D / 2], st[T * D / 2];
    unsigned s = 5;
    for (int i = 0; i < N; i++) s = s * 1664525u + 1013904223u, x[i] = (float)((s >> 8) / 8388608.0 - 1);
    for (int i = 0; i < T * D / 2; i++) ct[i] = cosf(0.3f * i) * 1.1f, st[i] = sinf(0.3f * i) * 1.1f;
    fx_ev cte[T * D / 2], ste[T * D / 2], e[N];
    for (int i = 0; i < T * D / 2; i++) cte[i] = X(ct[i]), ste[i] = X(st[i]);
    for (int il = 0; il < 2; il++)
        for (int sign = -1; sign <= 1; sign += 2) {
            for (int i = 0; i < N; i++) y[i] = x[i], e[i] = X(x[i]);
            ar_rope_slice(y, ct, st, B, T, H, (long)H * HS, HS, OFF, D, il, sign);
            ra_rope_slice(e, cte, ste, B, T, H, (long)H * HS, HS, OFF, D, il, sign);
            for (int i = 0; i < N; i++) fx_assert_within(y[i], e[i].v, e[i].e, "layout %d sign %d [%d]", il, sign, i);
            for (int i = 0; i < N; i++) {
                int in = i % HS;
                if (in < OFF || in >= OFF + D) cr_assert_eq(y[i], x[i], "outside the slice moved");
            }
        }
}

/* ar_rope_config_tables: yarn from the config's fields gives transformers'
 * tables (within the bounds of check_yarn, here via the same two steps it
 * checks: bit for bit); the other types ops.h's tables for that width. */
Test(rope_scaling, config_tables)
{
    ar_config c = {.rope_type = AR_ROPE_YARN, .rope_theta = 150000, .rope_factor = 4, .rope_orig_max_pos = 1024,
                   .max_pos = 4096, .rope_beta_fast = 32, .rope_beta_slow = 1, .rope_truncate = 0, .head_dim = 64};
    enum { D = 32, T = 7, H2 = D / 2 };
    float c1[T * H2], s1[T * H2], c2[T * H2], s2[T * H2], inv[H2];
    ar_rope_config_tables(c1, s1, &c, D, T);
    ar_rope_yarn y = {.theta = 150000, .dim = D, .factor = 4, .orig_max_pos = 1024, .beta_fast = 32, .beta_slow = 1};
    ar_rope_yarn_inv_freq(inv, &y);
    ar_rope_tables_scaled(c2, s2, inv, D, T, (float)ar_rope_yarn_attention_factor(&y));
    cr_assert(!memcmp(c1, c2, sizeof c1) && !memcmp(s1, s2, sizeof s1));
    c.rope_type = AR_ROPE_DEFAULT, c.head_dim = D;
    ar_rope_config_tables(c1, s1, &c, D, T);
    ar_rope_tables(c2, s2, &c, T);
    cr_assert(!memcmp(c1, c2, sizeof c1) && !memcmp(s1, s2, sizeof s1));
}
