/* test_gemma.c — the Gemma 2 / Gemma 3 family: config parsing (both
 * transformers 5's rope_parameters per layer type and the older keys), the
 * new ops (GeGLU with the tanh GeLU, attention scale and soft-cap, logit
 * soft-cap) against references in double carrying the f32 error bound
 * (fixture.h), and the whole block: forward against a double reference
 * written from the formulas of modeling_gemma2.py / modeling_gemma3.py with a
 * Monte Carlo tolerance (fixture.h: bounds compound past use through a
 * block), backward against central differences of that reference. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "block_desc.h"
#include "config.h"
#include "config_check.h"
#include "error.h"
#include "fixture.h"
#include "model.h"
#include "ops.h"
#include "refblock.h"

/* ------------------------------------------------------------------ config */

static const char *GEMMA3_V5 =
    "{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\",\"hidden_size\":128,"
    "\"intermediate_size\":192,\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"head_dim\":32,\"vocab_size\":512,\"query_pre_attn_scalar\":48,\"sliding_window\":32,"
    "\"attn_logit_softcapping\":null,\"final_logit_softcapping\":null,\"tie_word_embeddings\":true,"
    "\"layer_types\":[\"sliding_attention\",\"sliding_attention\",\"full_attention\"],"
    "\"rope_parameters\":{\"full_attention\":{\"factor\":2.0,\"rope_theta\":1000000.0,\"rope_type\":\"linear\"},"
    "\"sliding_attention\":{\"rope_theta\":10000.0,\"rope_type\":\"default\"}}}";

Test(gemma, config_gemma3_rope_per_layer_type)
{
    ar_config c, l0, l2;
    cr_assert_eq(ar_config_parse(&c, GEMMA3_V5, "g3"), 0, "%s", ar_last_error());
    cr_assert_eq(c.arch, AR_ARCH_GEMMA3);
    cr_assert(c.qk_norm && c.norm_plus_one && c.sandwich_norm && c.act == AR_ACT_GELU_TANH);
    cr_assert_float_eq(c.embed_scale, sqrt(128.0), 1e-12);
    cr_assert_float_eq(c.attn_scale, 1 / sqrt(48.0), 1e-12);
    cr_assert(c.attn_softcap == 0 && c.final_softcap == 0);
    ar_config_for_layer(&l0, &c, 0);
    ar_config_for_layer(&l2, &c, 2);
    cr_assert_eq(l0.sliding_window, 32);
    cr_assert(l0.rope_theta == 10000.0 && l0.rope_type == AR_ROPE_DEFAULT);
    cr_assert_eq(l2.sliding_window, 0);
    cr_assert(l2.rope_theta == 1e6 && l2.rope_type == AR_ROPE_LINEAR && l2.rope_factor == 2.0);
}

/* The keys before transformers 5: rope_theta, rope_scaling, rope_local_base_freq, sliding_window_pattern. */
Test(gemma, config_gemma3_older_keys_and_gemma2_defaults)
{
    ar_config c, l;
    const char *g3 = "{\"model_type\":\"gemma3_text\",\"hidden_size\":64,\"intermediate_size\":64,"
                     "\"num_hidden_layers\":7,\"num_attention_heads\":2,\"vocab_size\":10,\"head_dim\":16,"
                     "\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0},\"rope_local_base_freq\":5000.0,"
                     "\"sliding_window_pattern\":3}";
    cr_assert_eq(ar_config_parse(&c, g3, "g3"), 0, "%s", ar_last_error());
    cr_assert(c.rope_theta == 1e6 && c.rope_type == AR_ROPE_LINEAR && c.rope_factor == 8.0);
    cr_assert(c.rope_local_theta == 5000.0 && c.sliding_window == 4096);
    for (int i = 0; i < 7; i++) cr_assert_eq(ar_config_layer_sliding(&c, i), (i + 1) % 3 != 0, "layer %d", i);
    ar_config_for_layer(&l, &c, 1);
    cr_assert(l.rope_theta == 5000.0 && l.rope_type == AR_ROPE_DEFAULT);
    const char *g2 = "{\"architectures\":[\"Gemma2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":64,"
                     "\"num_hidden_layers\":3,\"num_attention_heads\":2,\"vocab_size\":10}";
    cr_assert_eq(ar_config_parse(&c, g2, "g2"), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_GEMMA2 && c.head_dim == 256 && !c.qk_norm);
    cr_assert(c.attn_softcap == 50.0 && c.final_softcap == 30.0 && c.attn_scale == 1 / 16.0);
    for (int i = 0; i < 3; i++) cr_assert_eq(ar_config_layer_sliding(&c, i), i % 2 == 0, "layer %d", i);
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init(&d, &c), 0);
    cr_assert_str_eq(d.family, "gemma");
    cr_assert_eq(d.nnorm, 4);
    cr_assert_str_eq(d.norms[2].name, "pre_feedforward_layernorm");
    cr_assert_eq(d.norms[2].slot, AR_NORM_MLP);
    ar_block_desc_free(&d);
}


Test(gemma, config_bad_values_are_one_line_errors)
{
#define G3 "{\"model_type\":\"gemma3_text\",\"hidden_size\":64,\"intermediate_size\":64,\"num_hidden_layers\":2," \
           "\"num_attention_heads\":2,\"vocab_size\":10,\"head_dim\":16,"
    cc_refused(G3 "\"hidden_activation\":\"relu\"}", "hidden_activation relu", 0);
    cc_refused(G3 "\"attn_logit_softcapping\":-1}", "attn_logit_softcapping", 0);
    cc_refused(G3 "\"query_pre_attn_scalar\":0}", "query_pre_attn_scalar", 0);
    cc_refused(G3 "\"use_bidirectional_attention\":true}", "use_bidirectional_attention", 0);
    cc_refused(G3 "\"rope_parameters\":{\"full_attention\":{\"rope_theta\":1.0}}}", "sliding_attention", 0);
    cc_refused(G3 "\"layer_types\":[\"full_attention\"]}", "layer_types", 0);
    cc_refused(G3 "\"rope_parameters\":{\"full_attention\":{},\"sliding_attention\":{\"rope_type\":\"linear\"}}}",
               "sliding_attention rope_type linear", 0);
#undef G3
}

/* --------------------------------------------------------------- op checks */

static unsigned rng_state = 777;
static double urand(void) /* uniform [-0.5, 0.5) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) / 16777216.0 - 0.5;
}

static float *randf(long n, double scale)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) p[i] = (float)(scale * urand());
    return p;
}

/* tanhf: glibc documents at most 2 ulps for binary32 (libm-test-ulps), so 4u
 * relative; |d tanh| <= (1 - tanh^2) e + e^2. */
static fx_ev fx_tanh(fx_ev a)
{
    double v = tanh(a.v), e = (1 - v * v) * a.e + a.e * a.e;
    return (fx_ev){fx_out_(v, 4), e + 4 * fx_rnd_(v, e)};
}

/* The f32 constants of ops.c's GeLU, exactly as the code rounds them. */
static const double K0 = (double)0.7978845608028654f, K1 = (double)0.044715f;

/* gelu(g) as ops.c orders it: t = tanhf(k0 (g + k1 g g g)), 0.5 g (1 + t). */
static fx_ev ref_gelu(fx_ev g, fx_ev *t_out)
{
    fx_ev g3 = fx_mul(fx_mul(fx_mul(fx_exact(K1), g), g), g);
    fx_ev t = fx_tanh(fx_mul(fx_exact(K0), fx_add(g, g3)));
    if (t_out) *t_out = t;
    return fx_mul(fx_scale(g, 0.5), fx_add(fx_exact(1), t));
}

Test(gemma, geglu_tanh_forward_backward_within_bounds)
{
    enum { N = 257 };
    float *g = randf(N, 10), *u = randf(N, 4), *d = randf(N, 2), out[N], dg[N] = {0}, du[N] = {0};
    ar_geglu_tanh_forward(out, g, u, N);
    ar_geglu_tanh_backward(dg, du, d, g, u, N);
    for (int i = 0; i < N; i++) {
        fx_ev G = fx_exact(g[i]), U = fx_exact(u[i]), D = fx_exact(d[i]), t;
        fx_ev gl = ref_gelu(G, &t), y = fx_mul(gl, U);
        fx_assert_within(out[i], y.v, y.e, "geglu[%d]", i);
        /* 0.5 (1 + t) + 0.5 g (1 - t^2) k0 (1 + 3 k1 g^2) in ops.c's order */
        fx_ev one_m = fx_sub(fx_exact(1), fx_mul(t, t));
        fx_ev poly = fx_add(fx_exact(1), fx_mul(fx_mul(fx_exact((double)(3.0f * 0.044715f)), G), G));
        fx_ev dgl = fx_add(fx_scale(fx_add(fx_exact(1), t), 0.5), fx_mul(fx_mul(fx_mul(fx_scale(G, 0.5), one_m),
                                                                               fx_exact(K0)), poly));
        fx_ev want_dg = fx_mul(fx_mul(D, U), dgl), want_du = fx_mul(D, gl);
        fx_assert_within(dg[i], want_dg.v, want_dg.e, "dgate[%d]", i);
        fx_assert_within(du[i], want_du.v, want_du.e, "dup[%d]", i);
        /* and the formula is the derivative: central differences of gelu in double */
        double h = 1e-4, x = g[i];
        double gd[4];
        for (int s = 0; s < 4; s++) {
            double xs = x + (s == 0 ? h : s == 1 ? -h : s == 2 ? 2 * h : -2 * h);
            gd[s] = 0.5 * xs * (1 + tanh(K0 * (xs + K1 * xs * xs * xs)));
        }
        double err, fd = fx_central_diff(gd[0], gd[1], gd[2], gd[3], h, fabs(x) + 1, &err);
        double exact_d = 0.5 * (1 + tanh(K0 * (x + K1 * x * x * x))) +
                         0.5 * x * (1 - pow(tanh(K0 * (x + K1 * x * x * x)), 2)) * K0 * (1 + 3 * K1 * x * x);
        fx_assert_within(exact_d, fd, err, "gelu'(%g) vs finite differences", x);
    }
    /* ar_softcap_forward: cap tanhf(x / cap) */
    float x[N];
    memcpy(x, g, sizeof x);
    ar_softcap_forward(x, N, 3.0f);
    for (int i = 0; i < N; i++) {
        fx_ev want = fx_mul(fx_exact(3), fx_tanh(fx_div(fx_exact(g[i]), fx_exact(3))));
        fx_assert_within(x[i], want.v, want.e, "softcap[%d]", i);
    }
    free(g), free(u), free(d);
}

/* ------------------------------------------------ attention with scale, cap */

static int visible(int t, int s, int window) { return s <= t && (window == 0 || t - s < window); }

/* ar_attention_forward_p in fx rules: scores (alpha q) . k, cap tanh(s / cap),
 * softmax from the row max, P V. q [B,T,NH,HD], k, v [B,T,NKV,HD]. */
static void ref_attention(fx_ev *out, const fx_ev *q, const fx_ev *k, const fx_ev *v, int B, int T, int NH, int NKV,
                          int HD, int window, double scale, double cap)
{
    fx_ev *p = malloc(sizeof(fx_ev) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int g = h / (NH / NKV);
                const fx_ev *qt = q + ((long)(b * T + t) * NH + h) * HD;
                double mx = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    if (!visible(t, s, window)) continue;
                    const fx_ev *ks = k + ((long)(b * T + s) * NKV + g) * HD;
                    fx_acc d = {0};
                    for (int i = 0; i < HD; i++) fx_acc_add(&d, fx_mul(fx_mul(fx_exact(scale), qt[i]), ks[i]));
                    p[s] = fx_acc_sum(&d);
                    if (cap > 0) p[s] = fx_mul(fx_exact(cap), fx_tanh(fx_div(p[s], fx_exact(cap))));
                    mx = fmax(mx, p[s].v);
                }
                fx_acc sum = {0};
                for (int s = 0; s <= t; s++)
                    if (visible(t, s, window)) fx_acc_add(&sum, p[s] = fx_exp(fx_sub(p[s], fx_exact(mx))));
                fx_ev inv = fx_div(fx_exact(1), fx_acc_sum(&sum));
                for (int i = 0; i < HD; i++) {
                    fx_acc a = {0};
                    for (int s = 0; s <= t; s++)
                        if (visible(t, s, window))
                            fx_acc_add(&a, fx_mul(fx_mul(p[s], inv), v[((long)(b * T + s) * NKV + g) * HD + i]));
                    out[((long)(b * T + t) * NH + h) * HD + i] = fx_acc_sum(&a);
                }
            }
    free(p);
}

/* The loss sum(out . r) of the reference attention in double, for finite differences. */
static double attn_loss(const double *qd, const double *kd, const double *vd, const double *r, int B, int T, int NH,
                        int NKV, int HD, int window, double scale, double cap)
{
    long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD;
    fx_ev *q = rb_exact_d(qd, nq), *k = rb_exact_d(kd, nk), *v = rb_exact_d(vd, nk), *o = malloc(sizeof(fx_ev) * nq);
    fx_set_mode(FX_VALUES, 0);
    ref_attention(o, q, k, v, B, T, NH, NKV, HD, window, scale, cap);
    fx_set_mode(FX_BOUNDS, 0);
    double L = 0;
    for (long i = 0; i < nq; i++) L += o[i].v * r[i];
    free(q), free(k), free(v), free(o);
    return L;
}

static void check_attention(double scale, double cap, int window)
{
    enum { B = 2, T = 9, NH = 4, NKV = 2, HD = 8 };
    long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD;
    float *q = randf(nq, 6), *k = randf(nk, 6), *v = randf(nk, 2), *out = malloc(sizeof(float) * nq);
    float *att = calloc((size_t)B * NH * T * T, sizeof(float));
    float *scr = malloc(sizeof(float) * ar_attention_backward_scratch(B, T, NH, HD));
    ar_attn_params p = {(float)scale, (float)cap};
    ar_attention_forward_p(out, att, 1, q, k, v, B, T, NH, NKV, HD, window, &p);
    fx_ev *eq = rb_exact(q, nq), *ek = rb_exact(k, nk), *ev = rb_exact(v, nk), *eo = malloc(sizeof(fx_ev) * nq);
    ref_attention(eo, eq, ek, ev, B, T, NH, NKV, HD, window, (double)(float)scale, cap);
    for (long i = 0; i < nq; i++) fx_assert_within(out[i], eo[i].v, eo[i].e, "attention out[%ld]", i);
    /* backward: dq, dk, dv of L = sum(out . r) along random directions vs
     * central differences of the double reference; tolerance: the difference
     * error plus a first-order f32 estimate, gamma_n of the magnitude with n
     * the reductions along the backward's longest chain (T keys, HD dims, T
     * queries, twice over) */
    double *r = malloc(sizeof(double) * nq);
    float *dout = malloc(sizeof(float) * nq);
    for (long i = 0; i < nq; i++) dout[i] = (float)urand(), r[i] = dout[i];
    float *dq = calloc(nq, sizeof(float)), *dk = calloc(nk, sizeof(float)), *dv = calloc(nk, sizeof(float));
    ar_attention_backward_p(dq, dk, dv, scr, dout, att, q, k, v, B, T, NH, NKV, HD, &p);
    double *qd = malloc(sizeof(double) * nq), *kd = malloc(sizeof(double) * nk), *vd = malloc(sizeof(double) * nk);
    for (long j = 0; j < nq; j++) qd[j] = q[j];
    for (long j = 0; j < nk; j++) kd[j] = k[j], vd[j] = v[j];
    double *params[3] = {qd, kd, vd};
    float *grads[3] = {dq, dk, dv};
    long sizes[3] = {nq, nk, nk};
    for (int which = 0; which < 3; which++) {
        long n = sizes[which];
        double *x = params[which], *keep = malloc(sizeof(double) * n);
        memcpy(keep, x, sizeof(double) * n);
        double *dir = malloc(sizeof(double) * n), dot = 0, mag = 0;
        for (long j = 0; j < n; j++) dir[j] = 2 * urand(), dot += grads[which][j] * dir[j],
                                    mag += fabs(grads[which][j] * dir[j]);
        const double h = 1e-4;
        double f[4], st[4] = {h, -h, 2 * h, -2 * h};
        for (int s = 0; s < 4; s++) {
            for (long j = 0; j < n; j++) x[j] = keep[j] + st[s] * dir[j];
            f[s] = attn_loss(qd, kd, vd, r, B, T, NH, NKV, HD, window, (double)(float)scale, cap);
        }
        memcpy(x, keep, sizeof(double) * n);
        double err, fd = fx_central_diff(f[0], f[1], f[2], f[3], h, mag + 1, &err);
        double tol = err + fx_gamma(4.0 * (T + HD)) * mag;
        fx_assert_within(dot, fd, tol, "attention gradient %d along a random direction", which);
        free(keep), free(dir);
    }
    free(q), free(k), free(v), free(out), free(att), free(scr), free(eq), free(ek), free(ev), free(eo), free(r);
    free(dout), free(dq), free(dk), free(dv), free(qd), free(kd), free(vd);
}

Test(gemma, attention_scale_and_softcap) { check_attention(1 / sqrt(24.0), 1.5, 0); }
Test(gemma, attention_softcap_sliding_window) { check_attention(0.25, 2.0, 4); }
Test(gemma, attention_scale_only) { check_attention(0.4, 0, 3); }

/* ------------------------------------------------------------- the block */

/* A tiny Gemma config: C=16, F=24, 4 query heads and 2 KV heads of 8. */
static ar_config tiny_gemma(int gemma3, int window)
{
    ar_config c = {0};
    c.arch = gemma3 ? AR_ARCH_GEMMA3 : AR_ARCH_GEMMA2;
    c.hidden = 16, c.intermediate = 24, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.n_layers = 1;
    c.rms_eps = 1e-6f, c.rope_theta = gemma3 ? 1e6 : 10000.0, c.sliding_window = window;
    c.act = AR_ACT_GELU_TANH, c.norm_plus_one = c.sandwich_norm = 1, c.qk_norm = gemma3;
    c.attn_scale = gemma3 ? 1 / sqrt(12.0) : 0.3;
    c.attn_softcap = gemma3 ? 0 : 2.0;
    return c;
}

/* Block weights: linears of scale 0.6, norms w = 0.3 U (so 1 + w near 1). */
typedef struct {
    ar_block_weights w;
    float *t[AR_NLINEAR + AR_NNORM_SLOTS];
} gblock;

static void gblock_make(gblock *g, const ar_config *c)
{
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init(&d, c), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_weights_init(&g->w, d.nlinear), 0);
    int n = 0;
    for (int i = 0; i < d.nlinear; i++) g->t[n++] = g->w.w[i] = randf((long)d.lin[i].n_out * d.lin[i].k_in, 0.6);
    for (int j = 0; j < d.nnorm; j++) g->t[n++] = *ar_block_norm_slot(&g->w, d.norms[j].slot) = randf(d.norms[j].size, 0.3);
    for (; n < AR_NLINEAR + AR_NNORM_SLOTS; n++) g->t[n] = NULL;
    ar_block_desc_free(&d);
}

static void gblock_free(gblock *g)
{
    for (int i = 0; i < AR_NLINEAR + AR_NNORM_SLOTS; i++) free(g->t[i]);
    ar_block_weights_release(&g->w);
}

/* 1 + w as the f32 code forms it (and transformers: 1.0 + weight.float()). */
static double *plus1(const float *w, int n)
{
    if (!w) return NULL;
    double *d = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) d[i] = (double)(1.0f + w[i]);
    return d;
}

static double *to_d(const float *x, long n)
{
    double *d = malloc(sizeof(double) * n);
    for (long i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* The block from the formulas (module comment of block_gemma.c), in fx rules:
 * y [B*T, C] from x; wd[i] the linears in double (may differ from w's when a
 * finite difference moves them). */
static void ref_block(const ar_config *c, const ar_block_weights *w, double *const *wd, const fx_ev *x, fx_ev *y,
                      int B, int T)
{
    int C = c->hidden, F = c->intermediate, NH = c->n_heads, NKV = c->n_kv_heads, HD = c->head_dim;
    long BT = (long)B * T, QD = NH * HD, KD = NKV * HD;
    double *n1 = plus1(w->attn_norm, C), *pa = plus1(w->attn_post_norm, C), *n2 = plus1(w->mlp_norm, C);
    double *pm = plus1(w->mlp_post_norm, C), *qn = plus1(w->q_norm, HD), *kn = plus1(w->k_norm, HD);
    fx_ev *ln = malloc(sizeof(fx_ev) * BT * C), *q = malloc(sizeof(fx_ev) * BT * QD), *k = malloc(sizeof(fx_ev) * BT * KD);
    fx_ev *v = malloc(sizeof(fx_ev) * BT * KD), *ao = malloc(sizeof(fx_ev) * BT * QD), *o = malloc(sizeof(fx_ev) * BT * C);
    fx_ev *h = malloc(sizeof(fx_ev) * BT * C), *gt = malloc(sizeof(fx_ev) * BT * F), *up = malloc(sizeof(fx_ev) * BT * F);
    fx_ev *cs = malloc(sizeof(fx_ev) * T * HD / 2), *sn = malloc(sizeof(fx_ev) * T * HD / 2);
    rb_rmsnorm(ln, NULL, x, n1, (int)BT, C, c->rms_eps);
    rb_linear(q, ln, wd[AR_Q], NULL, (int)BT, C, (int)QD);
    rb_linear(k, ln, wd[AR_K], NULL, (int)BT, C, (int)KD);
    rb_linear(v, ln, wd[AR_V], NULL, (int)BT, C, (int)KD);
    if (qn) rb_rmsnorm(q, NULL, q, qn, (int)(BT * NH), HD, c->rms_eps);
    if (kn) rb_rmsnorm(k, NULL, k, kn, (int)(BT * NKV), HD, c->rms_eps);
    rb_rope_tables(cs, sn, c, T);
    rb_rope(q, cs, sn, B, T, NH, HD, 1);
    rb_rope(k, cs, sn, B, T, NKV, HD, 1);
    ref_attention(ao, q, k, v, B, T, NH, NKV, HD, c->sliding_window, (double)(float)c->attn_scale,
                  (double)(float)c->attn_softcap);
    rb_linear(o, ao, wd[AR_O], NULL, (int)BT, (int)QD, C);
    rb_rmsnorm(o, NULL, o, pa, (int)BT, C, c->rms_eps);
    for (long i = 0; i < BT * C; i++) h[i] = fx_add(o[i], x[i]);
    rb_rmsnorm(ln, NULL, h, n2, (int)BT, C, c->rms_eps);
    rb_linear(gt, ln, wd[AR_GATE], NULL, (int)BT, C, F);
    rb_linear(up, ln, wd[AR_UP], NULL, (int)BT, C, F);
    for (long i = 0; i < BT * F; i++) gt[i] = fx_mul(ref_gelu(gt[i], NULL), up[i]);
    rb_linear(o, gt, wd[AR_DOWN], NULL, (int)BT, F, C);
    rb_rmsnorm(o, NULL, o, pm, (int)BT, C, c->rms_eps);
    for (long i = 0; i < BT * C; i++) y[i] = fx_add(h[i], o[i]);
    free(n1), free(pa), free(n2), free(pm), free(qn), free(kn);
    free(ln), free(q), free(k), free(v), free(ao), free(o), free(h), free(gt), free(up), free(cs), free(sn);
}

typedef struct {
    const ar_config *c;
    const ar_block_weights *w;
    double *const *wd;
    const double *x;
    int B, T;
} ref_run;

static void run_ref(void *ctx, double *out)
{
    ref_run *r = ctx;
    long n = (long)r->B * r->T * r->c->hidden;
    fx_ev *x = rb_exact_d(r->x, n), *y = malloc(sizeof(fx_ev) * n);
    ref_block(r->c, r->w, r->wd, x, y, r->B, r->T);
    for (long i = 0; i < n; i++) out[i] = y[i].v;
    free(x), free(y);
}

/* sum(ref_block(x) . dy) in double. */
static double ref_loss(ref_run *r, const double *dy)
{
    long n = (long)r->B * r->T * r->c->hidden;
    double *y = malloc(sizeof(double) * n), L = 0;
    fx_set_mode(FX_VALUES, 0);
    run_ref(r, y);
    fx_set_mode(FX_BOUNDS, 0);
    for (long i = 0; i < n; i++) L += y[i] * dy[i];
    free(y);
    return L;
}

/* Directional derivative of ref_loss along dir [n] of p (doubles the
 * reference reads), by central differences with its error bound. */
static double fd_dir(ref_run *r, const double *dy, double *p, const double *dir, long n, double mag, double *err)
{
    const double h = 1e-4, st[4] = {h, -h, 2 * h, -2 * h};
    double *keep = malloc(sizeof(double) * n), f[4];
    memcpy(keep, p, sizeof(double) * n);
    for (int s = 0; s < 4; s++) {
        for (long j = 0; j < n; j++) p[j] = keep[j] + st[s] * dir[j];
        f[s] = ref_loss(r, dy);
    }
    memcpy(p, keep, sizeof(double) * n);
    free(keep);
    return fx_central_diff(f[0], f[1], f[2], f[3], h, mag, err);
}

static void check_gemma_block(int gemma3, int window)
{
    enum { B = 2, T = 10 };
    ar_config c = tiny_gemma(gemma3, window);
    int C = c.hidden;
    long n = (long)B * T * C;
    gblock g;
    gblock_make(&g, &c);
    float *x = randf(n, 4), *y = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    ar_block_work ws, wt;
    ar_block_acts a;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 0), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_work_init(&wt, &c, B, T, 1), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_acts_init(&a, &c, B, T), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_gemma_forward(&c, &g.w, x, y, B, T, &ws), 0, "%s", ar_last_error());
    cr_assert_eq(ar_block_gemma_forward_train(&c, &g.w, x, y2, B, T, &wt, &a), 0, "%s", ar_last_error());
    cr_assert_eq(memcmp(y, y2, sizeof(float) * n), 0, "training forward differs from inference");
    /* forward vs the reference, Monte Carlo tolerance per output */
    double *wd[AR_NLINEAR], *xd = to_d(x, n), *want = malloc(sizeof(double) * n), *tol = malloc(sizeof(double) * n);
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init(&d, &c), 0);
    for (int i = 0; i < AR_NLINEAR; i++) wd[i] = to_d(g.w.w[i], (long)d.lin[i].n_out * d.lin[i].k_in);
    ref_run r = {&c, &g.w, wd, xd, B, T};
    fx_mca_tolerances(run_ref, &r, n, want, tol);
    double worst = 0;
    for (long i = 0; i < n; i++) {
        fx_assert_within(y[i], want[i], tol[i], "gemma block y[%ld]", i);
        worst = fmax(worst, fabs(y[i] - want[i]));
    }
    cr_log_info("gemma%d block forward: max |y - ref| %.3g", gemma3 ? 3 : 2, worst);
    /* backward: every linear's dW and dx along random directions vs central
     * differences of the reference. Tolerance: the difference's error plus a
     * first-order estimate of the f32 backward's rounding, gamma_n of the
     * magnitude sum |g_j d_j| with n the reduction lengths along the longest
     * chain (C, QD, T, HD, F, C; twice for the forward they depend on). */
    double *dyd = malloc(sizeof(double) * n);
    float *dy = malloc(sizeof(float) * n), *dx = calloc(n, sizeof(float)), *dW[AR_NLINEAR];
    for (long i = 0; i < n; i++) dy[i] = (float)urand(), dyd[i] = dy[i];
    for (int i = 0; i < AR_NLINEAR; i++) dW[i] = calloc((size_t)d.lin[i].n_out * d.lin[i].k_in, sizeof(float));
    cr_assert_eq(ar_block_gemma_backward(&c, &g.w, &a, dy, dW, dx, NULL, &wt), 0, "%s", ar_last_error());
    double chain = 2.0 * (2 * C + c.n_heads * c.head_dim + T + c.head_dim + c.intermediate);
    for (int i = 0; i <= AR_NLINEAR; i++) {
        long m = i < AR_NLINEAR ? (long)d.lin[i].n_out * d.lin[i].k_in : n;
        const float *got = i < AR_NLINEAR ? dW[i] : dx;
        double *p = i < AR_NLINEAR ? wd[i] : xd, *dir = malloc(sizeof(double) * m), dot = 0, mag = 0, err;
        for (long j = 0; j < m; j++) dir[j] = 2 * urand(), dot += got[j] * dir[j], mag += fabs(got[j] * dir[j]);
        double fd = fd_dir(&r, dyd, p, dir, m, mag + 1, &err);
        fx_assert_within(dot, fd, err + fx_gamma(chain) * mag, "gemma%d block: gradient of %s along a random direction",
                         gemma3 ? 3 : 2, i < AR_NLINEAR ? d.lin[i].name : "x");
        free(dir);
    }
    for (int i = 0; i < AR_NLINEAR; i++) free(wd[i]), free(dW[i]);
    free(x), free(y), free(y2), free(xd), free(want), free(tol), free(dyd), free(dy), free(dx);
    ar_block_desc_free(&d);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws), ar_block_work_free(&wt);
    gblock_free(&g);
}

Test(gemma, block_gemma2_softcap_window) { check_gemma_block(0, 4); }
Test(gemma, block_gemma2_softcap_full) { check_gemma_block(0, 0); }
Test(gemma, block_gemma3_qk_norm_window) { check_gemma_block(1, 3); }
