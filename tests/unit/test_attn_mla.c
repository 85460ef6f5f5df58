/* test_attn_mla.c — DeepSeek multi-head latent attention (attn_mla.h):
 * forward and backward against the double reference with error bounds
 * (attn_ref.h), the reference backward against finite differences, and the
 * layer against transformers 5.25's DeepseekV3Attention (fixture of
 * tests/fixtures/moe/dump_attn_refs.py: output and, for the small case,
 * autograd's gradients). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_mla.h"
#include "error.h"
#include "rope_scaling.h"
#include "attn_ref.h"
#include "refblock.h"

static unsigned rng = 99;
static double urand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) / 8388608.0 - 1.0;
}

/* A layer's f32 weights and their double copies. */
typedef struct {
    float *w[AR_MLA_NLINEAR], *b[AR_MLA_NLINEAR], *qn, *kvn;
    ar_mla_weights fw;
    ra_mla_weights dw;
} layer;

static void layer_views(layer *L, const ar_mla_dims *d)
{
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        int N, K;
        ar_mla_linear_shape(d, i, &N, &K);
        L->fw.w[i] = L->w[i], L->fw.b[i] = L->b[i];
        L->dw.w[i] = L->w[i] ? ra_dup(L->w[i], (long)N * K) : NULL;
        L->dw.b[i] = L->b[i] ? ra_dup(L->b[i], N) : NULL;
    }
    L->fw.q_a_norm = L->qn, L->fw.kv_a_norm = L->kvn;
    L->dw.qn = L->qn ? ra_dup(L->qn, d->QL) : NULL;
    L->dw.kvn = ra_dup(L->kvn, d->KL);
}

static void layer_free(layer *L)
{
    for (int i = 0; i < AR_MLA_NLINEAR; i++) free(L->w[i]), free(L->b[i]), free(L->dw.w[i]), free(L->dw.b[i]);
    free(L->qn), free(L->kvn), free(L->dw.qn), free(L->dw.kvn);
}

typedef struct {
    const ar_mla_dims *d;
    layer *L;
    double *x;
    const fx_ev *ct, *st;
    int B, T;
} fd_ctx;

static void mla_values(void *vc, double *out)
{
    fd_ctx *c = vc;
    long BT = (long)c->B * c->T, n = BT * c->d->C;
    fx_ev *ex = rb_exact_d(c->x, n), *y = malloc(sizeof(fx_ev) * n);
    ra_mla_forward(y, ex, &c->L->dw, c->d, c->ct, c->st, c->B, c->T);
    for (long i = 0; i < n; i++) out[i] = y[i].v;
    free(ex), free(y);
}

/* Runs the f32 layer and its backward with dy, checks them against the
 * reference; fd: the reference backward against finite differences too;
 * hf_y / hf_g (may be NULL): transformers' output and gradients, checked
 * against the same bounds. */
static void check_layer(const ar_mla_dims *d, layer *L, const float *x, const float *ct, const float *st, int B,
                        int T, const float *dy, int fd, const float *hf_y, float *const hf_g[AR_MLA_NLINEAR],
                        float *const hf_gb[AR_MLA_NLINEAR], const float *hf_gx)
{
    long BT = (long)B * T, NX = BT * d->C;
    int H2 = d->DR / 2;
    ar_mla_acts *a = ar_mla_acts_new(d, B, T);
    cr_assert(a);
    float *y = malloc(4 * NX), *dx = calloc(NX, 4);
    ar_mla_forward(y, x, &L->fw, d, ct, st, a, NULL);
    fx_ev *ex = rb_exact(x, NX), *ey = malloc(sizeof(fx_ev) * NX), *ect = rb_exact(ct, (long)T * H2);
    fx_ev *est = rb_exact(st, (long)T * H2);
    ra_mla_forward(ey, ex, &L->dw, d, ect, est, B, T);
    double *want = malloc(8 * NX), *bound = malloc(8 * NX);
    ra_split(ey, want, bound, NX);
    fx_assert_all_within(y, want, bound, NX, "y (ar)");
    if (hf_y) {
        fx_assert_all_within(hf_y, want, bound, NX, "y (transformers)");
        /* The rigorous bound compounds through five linears, two norms and
         * the softmax; the Monte Carlo estimate (fixture.h) of how rounding
         * grows on this data is the sharp check of the two f32 results. */
        fd_ctx m = {d, L, ra_dup(x, NX), ect, est, B, T};
        double *exact = malloc(8 * NX), tol = fx_mca_tolerance(mla_values, &m, NX, exact), worst = 0, wb = 0;
        for (long i = 0; i < NX; i++) {
            fx_assert_within(y[i], exact[i], tol / FX_SAFETY, "y[%ld] (ar) vs exact, Monte Carlo tolerance", i);
            fx_assert_within(hf_y[i], exact[i], tol / FX_SAFETY, "y[%ld] (transformers) vs exact, Monte Carlo tolerance", i);
            worst = fmax(worst, fabs((double)y[i] - hf_y[i])), wb = fmax(wb, bound[i]);
        }
        cr_log_info("max |ar - transformers| %.3g, Monte Carlo tolerance %.3g, largest bound %.3g", worst, tol, wb);
        free(m.x), free(exact);
    }
    if (!dy) goto done;

    ar_mla_grads g = {0};
    fx_ev *gW[AR_MLA_NLINEAR] = {0}, *gb[AR_MLA_NLINEAR] = {0}, *gx = malloc(sizeof(fx_ev) * NX);
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        int N, K;
        ar_mla_linear_shape(d, i, &N, &K);
        if (!L->w[i]) continue;
        g.w[i] = calloc((long)N * K, 4), gW[i] = malloc(sizeof(fx_ev) * N * K);
        if (L->b[i]) g.b[i] = calloc(N, 4), gb[i] = malloc(sizeof(fx_ev) * N);
    }
    ar_mla_backward(dx, &g, dy, x, &L->fw, d, ct, st, a);
    fx_ev *edy = rb_exact(dy, NX);
    ra_mla_backward(gW, gb, gx, ex, edy, &L->dw, d, ect, est, B, T);
    fd_ctx c = {d, L, ra_dup(x, NX), ect, est, B, T};
    double *r = ra_dup(dy, NX);
    long stride = fd > 0 ? fd : 1;
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        if (!L->w[i]) continue;
        int N, K;
        ar_mla_linear_shape(d, i, &N, &K);
        long n = (long)N * K;
        double *wv = malloc(8 * n), *wb = malloc(8 * n);
        char what[64];
        ra_split(gW[i], wv, wb, n);
        snprintf(what, sizeof what, "d%s.weight", ar_mla_linear_names[i]);
        fx_assert_all_within(g.w[i], wv, wb, n, what);
        if (hf_g && hf_g[i]) fx_assert_all_within(hf_g[i], wv, wb, n, what);
        if (fd) ra_check_fd(mla_values, &c, r, NX, L->dw.w[i], n, stride, wv, what);
        if (L->b[i]) {
            ra_split(gb[i], wv, wb, N);
            snprintf(what, sizeof what, "d%s.bias", ar_mla_linear_names[i]);
            fx_assert_all_within(g.b[i], wv, wb, N, what);
            if (hf_gb && hf_gb[i]) fx_assert_all_within(hf_gb[i], wv, wb, N, what);
            if (fd) ra_check_fd(mla_values, &c, r, NX, L->dw.b[i], N, 1, wv, what);
        }
        free(wv), free(wb);
    }
    ra_split(gx, want, bound, NX);
    fx_assert_all_within(dx, want, bound, NX, "dx");
    if (hf_gx) fx_assert_all_within(hf_gx, want, bound, NX, "dx (transformers)");
    if (fd) ra_check_fd(mla_values, &c, r, NX, c.x, NX, stride, want, "dx");
    for (int i = 0; i < AR_MLA_NLINEAR; i++) free(g.w[i]), free(g.b[i]), free(gW[i]), free(gb[i]);
    free(gx), free(edy), free(c.x), free(r);
done:
    free(y), free(dx), free(ex), free(ey), free(ect), free(est), free(want), free(bound);
    ar_mla_acts_free(a);
}

static float *rnd(long n, double s, double c)
{
    float *f = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) f[i] = (float)(c + s * urand());
    return f;
}

/* Random small layers: every weight and bias, against finite differences. */
static void check_random(int qlora, int interleave)
{
    ar_mla_dims d = {.C = 8, .NH = 2, .QL = qlora ? 6 : 0, .KL = 5, .DN = 3, .DR = 4, .DV = 2,
                     .interleave = interleave, .eps = 1e-6f, .scale = 0.61f};
    int B = 2, T = 4;
    layer L = {0};
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        int N, K;
        ar_mla_linear_shape(&d, i, &N, &K);
        if (!N) continue;
        L.w[i] = rnd((long)N * K, 1.2 / sqrt(K), 0);
        if (i == AR_MLA_Q_A || i == AR_MLA_KV_A || i == AR_MLA_O) L.b[i] = rnd(N, 0.2, 0);
    }
    if (qlora) L.qn = rnd(d.QL, 0.2, 1);
    L.kvn = rnd(d.KL, 0.2, 1);
    layer_views(&L, &d);
    float *x = rnd((long)B * T * d.C, 1, 0), *dy = rnd((long)B * T * d.C, 1, 0);
    float ct[4 * 2], st[4 * 2];
    for (int t = 0; t < T; t++)
        for (int i = 0; i < 2; i++) ct[t * 2 + i] = 1.1f * cosf(t * (i ? 0.1f : 1.0f)), st[t * 2 + i] = 1.1f * sinf(t * (i ? 0.1f : 1.0f));
    check_layer(&d, &L, x, ct, st, B, T, dy, 1, NULL, NULL, NULL, NULL);
    free(x), free(dy);
    layer_free(&L);
}

Test(attn_mla, random_qlora_interleaved) { check_random(1, 1); }
Test(attn_mla, random_no_qlora_half_split) { check_random(0, 0); }

/* The fixture's layer: dims from its config, weights, transformers' rope
 * tables, output and (small case) gradients. */
static void check_hf(const char *cs, int grads)
{
    ar_refs r;
    ar_refs_load(&r);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(ar_refs_case(&r, cs), "config");
    const cJSON *ql = cJSON_GetObjectItemCaseSensitive(cfg, "q_lora_rank");
    ar_mla_dims d = {.C = (int)ar_refs_num(&r, cs, 1, "hidden_size"), .NH = (int)ar_refs_num(&r, cs, 1, "num_attention_heads"),
                     .QL = cJSON_IsNumber(ql) ? ql->valueint : 0, .KL = (int)ar_refs_num(&r, cs, 1, "kv_lora_rank"),
                     .DN = (int)ar_refs_num(&r, cs, 1, "qk_nope_head_dim"), .DR = (int)ar_refs_num(&r, cs, 1, "qk_rope_head_dim"),
                     .DV = (int)ar_refs_num(&r, cs, 1, "v_head_dim"),
                     .interleave = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "rope_interleave")),
                     .eps = 1e-6f, .scale = (float)ar_refs_num(&r, cs, 0, "scaling")};
    int B = (int)ar_refs_num(&r, cs, 0, "B"), T = (int)ar_refs_num(&r, cs, 0, "T");
    layer L = {0};
    float *hg[AR_MLA_NLINEAR] = {0}, *hgb[AR_MLA_NLINEAR] = {0};
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        char n[96];
        snprintf(n, sizeof n, "%s.weight", ar_mla_linear_names[i]), L.w[i] = ar_refs_tensor_opt(&r, cs, n, NULL);
        snprintf(n, sizeof n, "%s.bias", ar_mla_linear_names[i]), L.b[i] = ar_refs_tensor_opt(&r, cs, n, NULL);
        snprintf(n, sizeof n, "grad.%s.weight", ar_mla_linear_names[i]), hg[i] = ar_refs_tensor_opt(&r, cs, n, NULL);
        snprintf(n, sizeof n, "grad.%s.bias", ar_mla_linear_names[i]), hgb[i] = ar_refs_tensor_opt(&r, cs, n, NULL);
        int N, K;
        ar_mla_linear_shape(&d, i, &N, &K);
        cr_assert_eq(!!L.w[i], !!N, "%s: %s present iff the layout has it", cs, ar_mla_linear_names[i]);
    }
    L.qn = ar_refs_tensor_opt(&r, cs, "q_a_layernorm.weight", NULL);
    L.kvn = ar_refs_tensor(&r, cs, "kv_a_layernorm.weight", NULL);
    layer_views(&L, &d);
    float *x = ar_refs_tensor(&r, cs, "x", NULL), *hy = ar_refs_tensor(&r, cs, "y", NULL);
    float *ct = ar_refs_tensor(&r, cs, "cos", NULL), *st = ar_refs_tensor(&r, cs, "sin", NULL);
    float *dy = grads ? ar_refs_tensor(&r, cs, "r", NULL) : NULL, *hgx = grads ? ar_refs_tensor(&r, cs, "grad.x", NULL) : NULL;
    check_layer(&d, &L, x, ct, st, B, T, dy, 0, hy, hg, hgb, hgx);
    for (int i = 0; i < AR_MLA_NLINEAR; i++) free(hg[i]), free(hgb[i]);
    free(x), free(hy), free(ct), free(st), free(dy), free(hgx);
    layer_free(&L);
    ar_refs_free(&r);
}

Test(attn_mla, deepseek_v3_vs_transformers) { check_hf("deepseek_v3", 0); }
Test(attn_mla, deepseek_small_grads_vs_transformers) { check_hf("deepseek_small", 1); }

/* The input hook: called once per linear with its width; what it returns is
 * what the linear reads (forward) and what its dW uses (backward). Here it
 * doubles o_proj's input: y - b_o doubles and d o_proj.weight doubles,
 * exactly (a power of two), while dx is unchanged. */
typedef struct {
    int calls[AR_MLA_NLINEAR], k[AR_MLA_NLINEAR];
    float *buf;
} hook_ctx;

static const float *twice_o(void *vc, int linear, const float *x, long rows, int k)
{
    hook_ctx *h = vc;
    h->calls[linear]++, h->k[linear] = k;
    if (linear != AR_MLA_O) return x;
    for (long i = 0; i < rows * k; i++) h->buf[i] = 2 * x[i];
    return h->buf;
}

Test(attn_mla, input_hook)
{
    ar_mla_dims d = {.C = 8, .NH = 2, .QL = 6, .KL = 5, .DN = 3, .DR = 4, .DV = 2, .interleave = 1, .eps = 1e-6f, .scale = 0.5f};
    int B = 1, T = 3, NX = B * T * d.C;
    layer L = {0};
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        int N, K;
        ar_mla_linear_shape(&d, i, &N, &K);
        if (N) L.w[i] = rnd((long)N * K, 0.5, 0);
    }
    L.qn = rnd(d.QL, 0.1, 1), L.kvn = rnd(d.KL, 0.1, 1);
    layer_views(&L, &d);
    float *x = rnd(NX, 1, 0), *dy = rnd(NX, 1, 0), ct[6], st[6];
    for (int i = 0; i < 6; i++) ct[i] = cosf(0.2f * i), st[i] = sinf(0.2f * i);
    hook_ctx h = {{0}, {0}, malloc(sizeof(float) * B * T * d.NH * d.DV)};
    ar_mla_hook hook = {twice_o, &h};
    ar_mla_acts *a = ar_mla_acts_new(&d, B, T), *a2 = ar_mla_acts_new(&d, B, T);
    float y[24], y2[24], dx[24] = {0}, dx2[24] = {0};
    int N, K;
    ar_mla_linear_shape(&d, AR_MLA_O, &N, &K);
    ar_mla_grads g = {0}, g2 = {0};
    g.w[AR_MLA_O] = calloc(N * K, 4), g2.w[AR_MLA_O] = calloc(N * K, 4);
    ar_mla_forward(y, x, &L.fw, &d, ct, st, a, NULL);
    ar_mla_forward(y2, x, &L.fw, &d, ct, st, a2, &hook);
    for (int i = 0; i < AR_MLA_NLINEAR; i++) {
        int n, k;
        ar_mla_linear_shape(&d, i, &n, &k);
        cr_assert_eq(h.calls[i], n ? 1 : 0, "linear %d called %d times", i, h.calls[i]);
        if (n) cr_assert_eq(h.k[i], k);
    }
    for (int i = 0; i < NX; i++) cr_assert_eq(y2[i], 2 * y[i], "y[%d]", i);
    ar_mla_backward(dx, &g, dy, x, &L.fw, &d, ct, st, a);
    ar_mla_backward(dx2, &g2, dy, x, &L.fw, &d, ct, st, a2);
    for (int i = 0; i < N * K; i++) cr_assert_eq(g2.w[AR_MLA_O][i], 2 * g.w[AR_MLA_O][i]);
    for (int i = 0; i < NX; i++) cr_assert_eq(dx2[i], dx[i]);
    free(g.w[AR_MLA_O]), free(g2.w[AR_MLA_O]), free(h.buf), free(x), free(dy);
    ar_mla_acts_free(a), ar_mla_acts_free(a2);
    layer_free(&L);
}

/* From config.json to the layer's constants: the fixture's transformers
 * config parsed by ar_config (AR_CONFIG_ANY_ARCH), ar_mla_dims_from_config's
 * dims and softmax scale (transformers' self.scaling, rounded to f32), and
 * ar_rope_config_tables at qk_rope_head_dim against transformers' tables
 * (same inv_freq and attention factor, as test_rope_scaling checks: cos/sin
 * of the same f32 angle, within 2 x 1 ulp of each other times the factor). */
static void check_config(const char *cs)
{
    ar_refs r;
    ar_refs_load(&r);
    cJSON *cfg = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(ar_refs_case(&r, cs), "config"), 1);
    cJSON_DeleteItemFromObject(cfg, "architectures");
    cJSON *arch = cJSON_AddArrayToObject(cfg, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("DeepseekV3ForCausalLM"));
    /* the one-layer case keeps DeepseekV3Config's default first_k_dense_replace
     * 3, which ar_config refuses above num_hidden_layers (transformers does
     * not); the MLP layout is not what this test reads */
    cJSON_ReplaceItemInObject(cfg, "first_k_dense_replace", cJSON_CreateNumber(0));
    char *text = cJSON_PrintUnformatted(cfg);
    ar_config c;
    cr_assert_eq(ar_config_parse_flags(&c, text, "config.json", AR_CONFIG_ANY_ARCH), 0, "%s", ar_last_error());
    ar_mla_dims d;
    ar_mla_dims_from_config(&d, &c);
    const cJSON *ql = cJSON_GetObjectItemCaseSensitive(cfg, "q_lora_rank");
    cr_assert_eq(d.C, (int)ar_refs_num(&r, cs, 1, "hidden_size"));
    cr_assert_eq(d.NH, (int)ar_refs_num(&r, cs, 1, "num_attention_heads"));
    cr_assert_eq(d.QL, cJSON_IsNumber(ql) ? ql->valueint : 0);
    cr_assert_eq(d.KL, (int)ar_refs_num(&r, cs, 1, "kv_lora_rank"));
    cr_assert_eq(d.DN, (int)ar_refs_num(&r, cs, 1, "qk_nope_head_dim"));
    cr_assert_eq(d.DR, (int)ar_refs_num(&r, cs, 1, "qk_rope_head_dim"));
    cr_assert_eq(d.DV, (int)ar_refs_num(&r, cs, 1, "v_head_dim"));
    cr_assert_eq(d.interleave, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "rope_interleave")));
    cr_assert_eq(d.eps, 1e-6f);
    cr_assert_eq(d.scale, (float)ar_refs_num(&r, cs, 0, "scaling"), "scale %.9g", d.scale);
    long n;
    float *hc = ar_refs_tensor(&r, cs, "cos", &n), *hs = ar_refs_tensor(&r, cs, "sin", NULL);
    int T = (int)(n / (d.DR / 2));
    float *ct = malloc(4 * n), *st = malloc(4 * n);
    ar_rope_config_tables(ct, st, &c, d.DR, T);
    double af = ar_refs_num(&r, cs, 0, "attention_scaling");
    for (long i = 0; i < n; i++) {
        fx_assert_within(ct[i], hc[i], 2 * 2 * FX_U * af + 2 * FX_U * fabs(hc[i]), "cos[%ld]", i);
        fx_assert_within(st[i], hs[i], 2 * 2 * FX_U * af + 2 * FX_U * fabs(hs[i]), "sin[%ld]", i);
    }
    free(hc), free(hs), free(ct), free(st), free(text);
    cJSON_Delete(cfg);
    ar_refs_free(&r);
}

Test(attn_mla, config_deepseek_v3) { check_config("deepseek_v3"); }
Test(attn_mla, config_deepseek_small) { check_config("deepseek_small"); }
