/* test_attn_sinks.c — attention with sinks, separate q/k and v widths and a
 * given scale (attn_sinks.h): against the double reference with error
 * bounds (attn_ref.h), its backward against finite differences, and the
 * whole gpt-oss attention layer against transformers 5.25 (fixture of
 * tests/fixtures/moe/dump_attn_refs.py). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_ref.h"
#include "attn_sinks.h"
#include "ops.h"
#include "refblock.h"

static unsigned rng = 4242;
static double urand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) / 8388608.0 - 1.0;
}

typedef struct {
    double *q, *k, *v, *sinks;
    int B, T, NH, NKV, DK, DV, window;
    double scale;
} core_ctx;

static void core_ref(const core_ctx *c, fx_ev *out, fx_ev *P)
{
    long NQ = (long)c->B * c->T * c->NH * c->DK, NK = (long)c->B * c->T * c->NKV * c->DK;
    long NV = (long)c->B * c->T * c->NKV * c->DV;
    fx_ev *q = rb_exact_d(c->q, NQ), *k = rb_exact_d(c->k, NK), *v = rb_exact_d(c->v, NV);
    ra_attention(out, P, q, k, v, c->sinks, c->B, c->T, c->NH, c->NKV, c->DK, c->DV, c->scale, c->window);
    free(q), free(k), free(v);
}

static void core_values(void *vc, double *out)
{
    core_ctx *c = vc;
    long n = (long)c->B * c->T * c->NH * c->DV;
    fx_ev *e = malloc(sizeof(fx_ev) * n);
    core_ref(c, e, NULL);
    for (long i = 0; i < n; i++) out[i] = e[i].v;
    free(e);
}

static float *rnd(long n, double s)
{
    float *f = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) f[i] = (float)(s * urand());
    return f;
}

/* Forward and backward of the core against the reference; the reference
 * backward against finite differences. */
static void check_core(int window, int with_sinks)
{
    enum { B = 2, T = 6, NH = 4, NKV = 2, DK = 5, DV = 3 };
    long NQ = B * T * NH * DK, NK = B * T * NKV * DK, NV = B * T * NKV * DV, NO = B * T * NH * DV;
    float *q = rnd(NQ, 3), *k = rnd(NK, 1), *v = rnd(NV, 1), *sk = rnd(NH, 2), *dout = rnd(NO, 1);
    float scale = 0.37f;
    float *out = malloc(4 * NO), *out2 = malloc(4 * NO), *att = malloc(sizeof(float) * B * NH * T * T);
    float *dq = calloc(NQ, 4), *dk = calloc(NK, 4), *dv = calloc(NV, 4), ds[NH] = {0};
    core_ctx c = {ra_dup(q, NQ), ra_dup(k, NK), ra_dup(v, NV), with_sinks ? ra_dup(sk, NH) : NULL,
                  B, T, NH, NKV, DK, DV, window, scale};
    fx_ev *eo = malloc(sizeof(fx_ev) * NO), *P = malloc(sizeof(fx_ev) * B * NH * T * T);
    double *want = malloc(8 * NQ), *bound = malloc(8 * NQ);

    ar_attn_sinks_forward(out, att, q, k, v, with_sinks ? sk : NULL, B, T, NH, NKV, DK, DV, scale, window);
    ar_attn_sinks_forward(out2, NULL, q, k, v, with_sinks ? sk : NULL, B, T, NH, NKV, DK, DV, scale, window);
    cr_assert(!memcmp(out, out2, 4 * NO), "saving P changes the output");
    core_ref(&c, eo, P);
    ra_split(eo, want, bound, NO);
    fx_assert_all_within(out, want, bound, NO, "out");

    ar_attn_sinks_backward(dq, dk, dv, with_sinks ? ds : NULL, dout, att, q, k, v, B, T, NH, NKV, DK, DV, scale);
    fx_ev *gq = malloc(sizeof(fx_ev) * NQ), *gk = malloc(sizeof(fx_ev) * NK), *gv = malloc(sizeof(fx_ev) * NV), gs[NH];
    fx_ev *eq = rb_exact_d(c.q, NQ), *ek = rb_exact_d(c.k, NK), *ev = rb_exact_d(c.v, NV);
    fx_ev *ed = rb_exact(dout, NO);
    ra_attention_backward(gq, gk, gv, gs, ed, P, eq, ek, ev, B, T, NH, NKV, DK, DV, scale);
    double *r = ra_dup(dout, NO);
    const char *names[4] = {"dq", "dk", "dv", "dsinks"};
    const float *got[4] = {dq, dk, dv, ds};
    const fx_ev *ref[4] = {gq, gk, gv, gs};
    double *param[4] = {c.q, c.k, c.v, c.sinks};
    long n[4] = {NQ, NK, NV, NH};
    for (int j = 0; j < (with_sinks ? 4 : 3); j++) {
        ra_split(ref[j], want, bound, n[j]);
        fx_assert_all_within(got[j], want, bound, n[j], names[j]);
        ra_check_fd(core_values, &c, r, NO, param[j], n[j], 1, want, names[j]);
    }
    free(q), free(k), free(v), free(sk), free(dout), free(out), free(out2), free(att), free(dq), free(dk), free(dv);
    free(c.q), free(c.k), free(c.v), free(c.sinks), free(eo), free(P), free(want), free(bound);
    free(gq), free(gk), free(gv), free(eq), free(ek), free(ev), free(ed), free(r);
}

Test(attn_sinks, sinks_full) { check_core(0, 1); }
Test(attn_sinks, sinks_sliding_window) { check_core(3, 1); }
Test(attn_sinks, no_sinks_sliding_window) { check_core(2, 0); }

/* A sink of -inf takes no mass: the same bits as no sink. A huge sink takes
 * nearly all of it: the output goes to 0. */
Test(attn_sinks, sink_limits)
{
    enum { B = 1, T = 5, NH = 2, D = 4, N = B * T * NH * D };
    float *q = rnd(N, 1), *k = rnd(N, 1), *v = rnd(N, 1), a[N], b[N];
    float none[NH] = {-INFINITY, -INFINITY}, big[NH] = {80, 80};
    ar_attn_sinks_forward(a, NULL, q, k, v, NULL, B, T, NH, NH, D, D, 0.5f, 0);
    ar_attn_sinks_forward(b, NULL, q, k, v, none, B, T, NH, NH, D, D, 0.5f, 0);
    cr_assert(!memcmp(a, b, sizeof a));
    ar_attn_sinks_forward(b, NULL, q, k, v, big, B, T, NH, NH, D, D, 0.5f, 0);
    for (int i = 0; i < N; i++) cr_assert(fabsf(b[i]) < 1e-30f, "b[%d] = %g", i, b[i]);
    free(q), free(k), free(v);
}

/* The gpt-oss attention layer in double (exact f32 inputs): q/k/v with
 * biases, half-split RoPE, the core with sinks, o_proj with bias. */
typedef struct {
    double *W[4], *b[4], *sinks, *x;
    fx_ev *ct, *st;
    int B, T, C, NH, NKV, HD, window;
    float scale;
} gpt_ctx;

static void gpt_ref(const gpt_ctx *g, fx_ev *ey)
{
    int BT = g->B * g->T, QD = g->NH * g->HD, KD = g->NKV * g->HD;
    fx_ev *ex = rb_exact_d(g->x, (long)BT * g->C), *eq = malloc(sizeof(fx_ev) * BT * QD);
    fx_ev *ek = malloc(sizeof(fx_ev) * BT * KD), *ev = malloc(sizeof(fx_ev) * BT * KD);
    fx_ev *eao = malloc(sizeof(fx_ev) * BT * QD);
    rb_linear(eq, ex, g->W[0], g->b[0], BT, g->C, QD);
    rb_linear(ek, ex, g->W[1], g->b[1], BT, g->C, KD);
    rb_linear(ev, ex, g->W[2], g->b[2], BT, g->C, KD);
    rb_rope(eq, g->ct, g->st, g->B, g->T, g->NH, g->HD, 1);
    rb_rope(ek, g->ct, g->st, g->B, g->T, g->NKV, g->HD, 1);
    ra_attention(eao, NULL, eq, ek, ev, g->sinks, g->B, g->T, g->NH, g->NKV, g->HD, g->HD, g->scale, g->window);
    rb_linear(ey, eao, g->W[3], g->b[3], BT, QD, g->C);
    free(ex), free(eq), free(ek), free(ev), free(eao);
}

static void gpt_values(void *vc, double *out)
{
    gpt_ctx *g = vc;
    long n = (long)g->B * g->T * g->C;
    fx_ev *e = malloc(sizeof(fx_ev) * n);
    gpt_ref(g, e);
    for (long i = 0; i < n; i++) out[i] = e[i].v;
    free(e);
}

/* The f32 layer from ops.h's linears and rope and the core, against the
 * reference's rigorous bound and its Monte Carlo tolerance, and so is
 * transformers' output. */
static void check_gpt_oss(const char *cs)
{
    ar_refs r;
    ar_refs_load(&r);
    const char *wcase = "gpt_oss_sliding"; /* the weights and input are stored once */
    int B = (int)ar_refs_num(&r, cs, 0, "B"), T = (int)ar_refs_num(&r, cs, 0, "T");
    int window = (int)ar_refs_num(&r, cs, 0, "window"), C = (int)ar_refs_num(&r, cs, 1, "hidden_size");
    int NH = (int)ar_refs_num(&r, cs, 1, "num_attention_heads"), NKV = (int)ar_refs_num(&r, cs, 1, "num_key_value_heads");
    int HD = (int)ar_refs_num(&r, cs, 1, "head_dim"), BT = B * T;
    float scale = (float)ar_refs_num(&r, cs, 0, "scaling");
    cr_assert_eq(window, strcmp(cs, "gpt_oss_sliding") ? 0 : 4);
    float *x = ar_refs_tensor(&r, wcase, "x", NULL), *sinks = ar_refs_tensor(&r, wcase, "sinks", NULL);
    const char *lin[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    float *W[4], *bias[4];
    for (int i = 0; i < 4; i++) {
        char n[64];
        snprintf(n, sizeof n, "%s.weight", lin[i]), W[i] = ar_refs_tensor(&r, wcase, n, NULL);
        snprintf(n, sizeof n, "%s.bias", lin[i]), bias[i] = ar_refs_tensor(&r, wcase, n, NULL);
    }
    float *ct = ar_refs_tensor(&r, cs, "cos", NULL), *st = ar_refs_tensor(&r, cs, "sin", NULL);
    float *hy = ar_refs_tensor(&r, cs, "y", NULL);
    int QD = NH * HD, KD = NKV * HD;
    float *q = malloc(4L * BT * QD), *k = malloc(4L * BT * KD), *v = malloc(4L * BT * KD);
    float *ao = malloc(4L * BT * QD), *y = malloc(4L * BT * C);
    ar_linear_forward(q, x, W[0], bias[0], BT, C, QD);
    ar_linear_forward(k, x, W[1], bias[1], BT, C, KD);
    ar_linear_forward(v, x, W[2], bias[2], BT, C, KD);
    ar_rope_forward(q, ct, st, B, T, NH, HD);
    ar_rope_forward(k, ct, st, B, T, NKV, HD);
    ar_attn_sinks_forward(ao, NULL, q, k, v, sinks, B, T, NH, NKV, HD, HD, scale, window);
    ar_linear_forward(y, ao, W[3], bias[3], BT, QD, C);

    gpt_ctx g = {.sinks = ra_dup(sinks, NH), .x = ra_dup(x, (long)BT * C), .ct = rb_exact(ct, (long)T * HD / 2),
                 .st = rb_exact(st, (long)T * HD / 2), .B = B, .T = T, .C = C, .NH = NH, .NKV = NKV, .HD = HD,
                 .window = window, .scale = scale};
    int N[4] = {QD, KD, KD, C}, K[4] = {C, C, C, QD};
    for (int i = 0; i < 4; i++) g.W[i] = ra_dup(W[i], (long)N[i] * K[i]), g.b[i] = ra_dup(bias[i], N[i]);
    long NY = (long)BT * C;
    fx_ev *ey = malloc(sizeof(fx_ev) * NY);
    gpt_ref(&g, ey);
    double *want = malloc(8 * NY), *bound = malloc(8 * NY), *exact = malloc(8 * NY);
    ra_split(ey, want, bound, NY);
    fx_assert_all_within(y, want, bound, NY, "y (ar)");
    fx_assert_all_within(hy, want, bound, NY, "y (transformers)");
    double tol = fx_mca_tolerance(gpt_values, &g, NY, exact), worst = 0, wb = 0;
    for (long i = 0; i < NY; i++) {
        fx_assert_within(y[i], exact[i], tol / FX_SAFETY, "y[%ld] (ar) vs exact, Monte Carlo tolerance", i);
        fx_assert_within(hy[i], exact[i], tol / FX_SAFETY, "y[%ld] (transformers) vs exact, Monte Carlo tolerance", i);
        worst = fmax(worst, fabs((double)y[i] - hy[i])), wb = fmax(wb, bound[i]);
    }
    cr_log_info("%s: max |ar - transformers| %.3g, Monte Carlo tolerance %.3g, largest bound %.3g", cs, worst, tol, wb);

    for (int i = 0; i < 4; i++) free(W[i]), free(bias[i]), free(g.W[i]), free(g.b[i]);
    free(x), free(sinks), free(ct), free(st), free(hy), free(q), free(k), free(v), free(ao), free(y), free(g.sinks);
    free(g.x), free(g.ct), free(g.st), free(ey), free(want), free(bound), free(exact);
    ar_refs_free(&r);
}

Test(attn_sinks, gpt_oss_sliding_vs_transformers) { check_gpt_oss("gpt_oss_sliding"); }
Test(attn_sinks, gpt_oss_full_vs_transformers) { check_gpt_oss("gpt_oss_full"); }
