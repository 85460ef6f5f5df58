/* test_moe.c — the MoE layer (moe.h) against a naive dense reference in
 * double: every expert computed for every token and masked by the routing,
 * carried with fx_ev error bounds (fixture.h) so each f32 result is checked
 * within the rounding bound of its own computation. Gradients: the f32
 * backward against the reference's analytic backward (bounds carried from the
 * forward through the backward), and that analytic backward against central
 * finite differences of the reference forward along random directions.
 * Routing families: Qwen3-MoE (softmax, renormalised), Qwen2-MoE (no
 * renormalisation, shared expert × sigmoid gate), DeepSeek-V3 (sigmoid,
 * correction bias, 2-best group sums, renorm + 1e-20, scale, shared),
 * DeepSeek-V2 (softmax, group max, scale, no renorm), gpt-oss (router bias,
 * top-k of logits then softmax, expert biases, clamped SwiGLU). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "moe.h"
#include <stdio.h>

enum { R = 6, H = 8, E = 6, MAXK = 3, I = 5, SI = 4, NLMAX = 3 * E + 3 };

static unsigned rng = 2024;
static double urand(void) /* uniform [-0.5, 0.5) */
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) / 16777216.0 - 0.5;
}

/* The layer: f32 weights for the library, the same values in double for the
 * reference (which the finite differences perturb). */
typedef struct {
    ar_moe_dims d;
    int nl;
    float *fw[NLMAX], *fb[NLMAX], *frouter, *frb, *fsb, *fsg;
    double *w[NLMAX], *b[NLMAX], *router, *rb, *sb, *sg;
    int nw[NLMAX], nout[NLMAX], kin[NLMAX];
} layer;

static float *rnd(double **dp, int n, double scale)
{
    float *f = malloc(sizeof(float) * n);
    double *d = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) d[i] = f[i] = (float)(scale * urand());
    *dp = d;
    return f;
}

static void make_layer(layer *L, ar_moe_dims d, int router_bias, int score_bias, int expert_bias)
{
    memset(L, 0, sizeof *L);
    L->d = d;
    L->nl = ar_moe_nlinear(&d);
    L->frouter = rnd(&L->router, E * H, 3.0);
    if (router_bias) L->frb = rnd(&L->rb, E, 1.0);
    if (score_bias) L->fsb = rnd(&L->sb, E, 0.3);
    if (d.shared_gate) L->fsg = rnd(&L->sg, H, 1.0);
    for (int i = 0; i < L->nl; i++) {
        int shared = i >= 3 * E, width = shared ? d.SI : d.I, down = i % 3 == 2;
        L->nout[i] = down ? H : width, L->kin[i] = down ? width : H;
        L->nw[i] = L->nout[i] * L->kin[i];
        L->fw[i] = rnd(&L->w[i], L->nw[i], 2.0 * 1.7 / sqrt(L->kin[i]));
        if (expert_bias && !shared) L->fb[i] = rnd(&L->b[i], L->nout[i], 0.4);
    }
}

static void free_layer(layer *L)
{
    for (int i = 0; i < L->nl; i++) free(L->fw[i]), free(L->w[i]), free(L->fb[i]), free(L->b[i]);
    free(L->frouter), free(L->router), free(L->frb), free(L->rb), free(L->fsb), free(L->sb), free(L->fsg),
        free(L->sg);
}

static ar_moe_weights f32_weights(layer *L)
{
    return (ar_moe_weights){.router = L->frouter, .router_b = L->frb, .score_bias = L->fsb,
                            .shared_gate = L->fsg, .w = L->fw, .b = L->fb};
}

/* ------------------------------------------------------------ reference */

static fx_ev ex(double v) { return fx_exact(v); }

/* out [N] = x [K] . W[N, K]^T + b */
static void fx_lin(fx_ev *out, const fx_ev *x, const double *W, const double *b, int K, int N)
{
    for (int n = 0; n < N; n++) {
        fx_acc a = {0};
        for (int k = 0; k < K; k++) fx_acc_add(&a, fx_mul(x[k], ex(W[(long)n * K + k])));
        if (b) fx_acc_add(&a, ex(b[n]));
        out[n] = fx_acc_sum(&a);
    }
}

static fx_ev fx_sigmoid(fx_ev x) { return fx_div(ex(1), fx_add(ex(1), fx_exp(fx_scale(x, -1)))); }

/* softmax as the library computes it: exp(x - max) / sum; the f32 max may be
 * another element within the bounds, which moves no exact value. */
static void fx_softmax(fx_ev *p, const fx_ev *x, int n)
{
    int m = 0;
    double em = 0;
    for (int i = 0; i < n; i++) m = x[i].v > x[m].v ? i : m, em = fmax(em, x[i].e);
    fx_ev mx = {x[m].v, em}, e[16];
    fx_acc s = {0};
    for (int i = 0; i < n; i++) fx_acc_add(&s, e[i] = fx_exp(fx_sub(x[i], mx)));
    fx_ev sum = fx_acc_sum(&s);
    for (int i = 0; i < n; i++) p[i] = fx_div(e[i], sum);
}

/* Top-k by exact value (lower index first on ties), asserting in FX_BOUNDS
 * mode that every chosen score is separated from every other candidate by
 * more than their bounds, so the f32 choice and order are the same. */
static void fx_topk(const fx_ev *v, const unsigned char *ok, int n, int k, int *idx)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int t = 0; t < j; t++) taken |= idx[t] == i;
            if ((!ok || ok[i]) && !taken && (best < 0 || v[i].v > v[best].v)) best = i;
        }
        idx[j] = best;
    }
    if (fx_mode_ != FX_BOUNDS) return;
    for (int j = 0; j < k; j++)
        for (int i = 0; i < n; i++) {
            if (i == idx[j] || (ok && !ok[i])) continue;
            if (!(fabs(v[idx[j]].v - v[i].v) > FX_SAFETY * (v[idx[j]].e + v[i].e)))
                fx_fail("fixture: scores %d and %d (%g, %g) are within their bounds; choose other data", idx[j], i,
                        v[idx[j]].v, v[i].v);
        }
}

/* One row's forward, saved for the backward. */
typedef struct {
    fx_ev lg[E], sc[E], wt[MAXK];
    int sel[MAXK];
    fx_ev g[MAXK][I], u[MAXK][I], act[MAXK][I], eo[MAXK][H];
    fx_ev sg[SI], su[SI], sact[SI], so[H], sgl, gv;
} rrow;

static fx_ev fx_min_c(fx_ev a, double L) /* min(a, L): the side must be certain */
{
    if (fx_mode_ == FX_BOUNDS && !(fabs(a.v - L) > FX_SAFETY * a.e)) fx_fail("fixture: %g too close to the clamp", a.v);
    return a.v < L ? a : ex(L);
}

static void fx_glu(const ar_moe_dims *d, fx_ev *act, const fx_ev *g, const fx_ev *u, int n)
{
    for (int i = 0; i < n; i++) {
        if (d->swiglu_limit <= 0) {
            act[i] = fx_mul(fx_div(g[i], fx_add(ex(1), fx_exp(fx_scale(g[i], -1)))), u[i]);
            continue;
        }
        double Lm = d->swiglu_limit;
        fx_ev gc = fx_min_c(g[i], Lm), uc = fx_scale(fx_min_c(fx_scale(u[i], -1), Lm), -1);
        uc = fx_min_c(uc, Lm);
        fx_ev glu = fx_div(gc, fx_add(ex(1), fx_exp(fx_scale(fx_mul(ex(d->swiglu_alpha), gc), -1))));
        act[i] = fx_mul(fx_add(uc, ex(1)), glu);
    }
}

static void ref_route(const layer *L, rrow *s)
{
    const ar_moe_dims *d = &L->d;
    int K = d->K;
    if (d->scoring == AR_ROUTER_TOPK_SOFTMAX) {
        fx_ev c[MAXK];
        memcpy(s->sc, s->lg, sizeof s->sc);
        fx_topk(s->sc, NULL, E, K, s->sel);
        for (int k = 0; k < K; k++) c[k] = s->sc[s->sel[k]];
        fx_softmax(s->wt, c, K);
        return;
    }
    if (d->scoring == AR_ROUTER_SIGMOID)
        for (int e = 0; e < E; e++) s->sc[e] = fx_sigmoid(s->lg[e]);
    else fx_softmax(s->sc, s->lg, E);
    fx_ev choice[E];
    for (int e = 0; e < E; e++) choice[e] = L->sb ? fx_add(s->sc[e], ex(L->sb[e])) : s->sc[e];
    unsigned char ok[E], *okp = NULL;
    if (d->topk_method != AR_TOPK_GREEDY && d->n_group > 1) {
        int G = d->n_group, per = E / G, gi[E], b2[2];
        fx_ev gs[E];
        for (int g = 0; g < G; g++) {
            int two = d->topk_method == AR_TOPK_NOAUX_TC;
            fx_topk(choice + g * per, NULL, per, two ? 2 : 1, b2);
            gs[g] = choice[g * per + b2[0]];
            if (two) gs[g] = fx_add(gs[g], choice[g * per + b2[1]]);
        }
        fx_topk(gs, NULL, G, d->topk_group, gi);
        memset(ok, 0, sizeof ok);
        for (int j = 0; j < d->topk_group; j++) memset(ok + gi[j] * per, 1, per);
        okp = ok;
    }
    fx_topk(choice, okp, E, K, s->sel);
    fx_acc a = {0};
    for (int k = 0; k < K; k++) fx_acc_add(&a, s->wt[k] = s->sc[s->sel[k]]);
    fx_ev sum = fx_acc_sum(&a);
    if (d->scoring == AR_ROUTER_SIGMOID) sum = fx_add(sum, ex(1e-20f));
    for (int k = 0; k < K; k++) {
        if (d->norm_topk_prob) s->wt[k] = fx_div(s->wt[k], sum);
        s->wt[k] = fx_mul(s->wt[k], ex(d->scale));
    }
}

/* Row forward: y [H]. */
static void ref_row(const layer *L, const fx_ev *x, fx_ev *y, rrow *s)
{
    const ar_moe_dims *d = &L->d;
    fx_lin(s->lg, x, L->router, L->rb, H, E);
    ref_route(L, s);
    fx_acc acc[H];
    memset(acc, 0, sizeof acc);
    /* dense: every expert on this token, kept only where routed */
    for (int e = 0; e < E; e++) {
        fx_ev g[I], u[I], act[I], eo[H];
        fx_lin(g, x, L->w[3 * e], L->b[3 * e], H, I);
        fx_lin(u, x, L->w[3 * e + 1], L->b[3 * e + 1], H, I);
        fx_glu(d, act, g, u, I);
        fx_lin(eo, act, L->w[3 * e + 2], L->b[3 * e + 2], I, H);
        for (int k = 0; k < d->K; k++) {
            if (s->sel[k] != e) continue;
            memcpy(s->g[k], g, sizeof g), memcpy(s->u[k], u, sizeof u);
            memcpy(s->act[k], act, sizeof act), memcpy(s->eo[k], eo, sizeof eo);
            for (int c = 0; c < H; c++) fx_acc_add(&acc[c], fx_mul(s->wt[k], eo[c]));
        }
    }
    if (d->SI) {
        int i0 = 3 * E;
        fx_lin(s->sg, x, L->w[i0], NULL, H, SI);
        fx_lin(s->su, x, L->w[i0 + 1], NULL, H, SI);
        ar_moe_dims plain = *d;
        plain.swiglu_limit = 0;
        fx_glu(&plain, s->sact, s->sg, s->su, SI);
        fx_lin(s->so, s->sact, L->w[i0 + 2], NULL, SI, H);
        s->gv = ex(1);
        if (d->shared_gate) fx_lin(&s->sgl, x, L->sg, NULL, H, 1), s->gv = fx_sigmoid(s->sgl);
        for (int c = 0; c < H; c++) fx_acc_add(&acc[c], d->shared_gate ? fx_mul(s->gv, s->so[c]) : s->so[c]);
    }
    for (int c = 0; c < H; c++) y[c] = fx_acc_sum(&acc[c]);
}

/* dg, du of act = glu(g, u) given dact, as moe.c / ops.c compute them. */
static void fx_glu_back(const ar_moe_dims *d, fx_ev *dg, fx_ev *du, const fx_ev *dact, const fx_ev *g, const fx_ev *u,
                        int n)
{
    for (int i = 0; i < n; i++) {
        if (d->swiglu_limit <= 0) {
            fx_ev sg = fx_sigmoid(g[i]);
            dg[i] = fx_mul(fx_mul(fx_mul(dact[i], u[i]), sg), fx_add(ex(1), fx_mul(g[i], fx_sub(ex(1), sg))));
            du[i] = fx_mul(fx_mul(dact[i], g[i]), sg);
            continue;
        }
        double Lm = d->swiglu_limit, al = d->swiglu_alpha;
        fx_ev gc = fx_min_c(g[i], Lm), uc = fx_scale(fx_min_c(fx_scale(u[i], -1), Lm), -1);
        uc = fx_min_c(uc, Lm);
        fx_ev agc = fx_mul(ex(al), gc), sg = fx_sigmoid(agc), glu = fx_mul(gc, sg);
        fx_ev dsg = fx_add(sg, fx_mul(fx_mul(agc, sg), fx_sub(ex(1), sg)));
        dg[i] = g[i].v <= Lm ? fx_mul(fx_mul(dact[i], fx_add(uc, ex(1))), dsg) : ex(0);
        du[i] = fabs(u[i].v) <= Lm ? fx_mul(dact[i], glu) : ex(0);
    }
}

/* Row backward: terms of dx [H] into dxa, of dW into dWa (per linear, per
 * element), given dy [H] and the row's forward. */
static void ref_row_back(const layer *L, const fx_ev *x, const rrow *s, const double *dy, fx_acc *dxa, fx_acc **dWa)
{
    const ar_moe_dims *d = &L->d;
    int K = d->K;
    fx_ev dwt[MAXK];
    for (int k = 0; k < K; k++) {
        int e = s->sel[k], i0 = 3 * e;
        fx_acc a = {0};
        fx_ev deo[H], dact[I], dg[I], du[I];
        for (int c = 0; c < H; c++) fx_acc_add(&a, fx_mul(ex(dy[c]), s->eo[k][c]));
        dwt[k] = fx_acc_sum(&a);
        for (int c = 0; c < H; c++) deo[c] = fx_mul(s->wt[k], ex(dy[c]));
        for (int i = 0; i < I; i++) {
            fx_acc t = {0};
            for (int c = 0; c < H; c++) fx_acc_add(&t, fx_mul(deo[c], ex(L->w[i0 + 2][c * I + i])));
            dact[i] = fx_acc_sum(&t);
        }
        for (int c = 0; c < H; c++)
            for (int i = 0; i < I; i++) fx_acc_add(&dWa[i0 + 2][c * I + i], fx_mul(deo[c], s->act[k][i]));
        fx_glu_back(d, dg, du, dact, s->g[k], s->u[k], I);
        for (int i = 0; i < I; i++)
            for (int c = 0; c < H; c++) {
                fx_acc_add(&dWa[i0][i * H + c], fx_mul(dg[i], x[c]));
                fx_acc_add(&dWa[i0 + 1][i * H + c], fx_mul(du[i], x[c]));
                fx_acc_add(&dxa[c], fx_mul(dg[i], ex(L->w[i0][i * H + c])));
                fx_acc_add(&dxa[c], fx_mul(du[i], ex(L->w[i0 + 1][i * H + c])));
            }
    }
    /* routing weights -> logits, as ar_moe_route_backward */
    fx_ev dl[E];
    for (int e = 0; e < E; e++) dl[e] = ex(0);
    if (d->scoring == AR_ROUTER_TOPK_SOFTMAX) {
        fx_acc a = {0};
        for (int k = 0; k < K; k++) fx_acc_add(&a, fx_mul(dwt[k], s->wt[k]));
        fx_ev dot = fx_acc_sum(&a);
        for (int k = 0; k < K; k++) dl[s->sel[k]] = fx_mul(s->wt[k], fx_sub(dwt[k], dot));
    } else {
        fx_acc a = {0};
        fx_ev ds[MAXK];
        for (int k = 0; k < K; k++) fx_acc_add(&a, s->sc[s->sel[k]]);
        fx_ev sum = fx_acc_sum(&a);
        if (d->scoring == AR_ROUTER_SIGMOID) sum = fx_add(sum, ex(1e-20f));
        for (int k = 0; k < K; k++) ds[k] = fx_mul(ex(d->scale), dwt[k]);
        if (d->norm_topk_prob) {
            fx_acc b = {0};
            for (int k = 0; k < K; k++) fx_acc_add(&b, fx_mul(ds[k], fx_div(s->sc[s->sel[k]], sum)));
            fx_ev dot = fx_acc_sum(&b);
            for (int k = 0; k < K; k++) ds[k] = fx_div(fx_sub(ds[k], dot), sum);
        }
        if (d->scoring == AR_ROUTER_SIGMOID) {
            for (int k = 0; k < K; k++) {
                fx_ev sc = s->sc[s->sel[k]];
                dl[s->sel[k]] = fx_mul(fx_mul(ds[k], sc), fx_sub(ex(1), sc));
            }
        } else {
            fx_acc b = {0};
            for (int k = 0; k < K; k++) fx_acc_add(&b, fx_mul(ds[k], s->sc[s->sel[k]]));
            fx_ev pd = fx_acc_sum(&b);
            for (int e = 0; e < E; e++) dl[e] = fx_scale(fx_mul(s->sc[e], pd), -1);
            for (int k = 0; k < K; k++) dl[s->sel[k]] = fx_add(dl[s->sel[k]], fx_mul(s->sc[s->sel[k]], ds[k]));
        }
    }
    for (int e = 0; e < E; e++)
        for (int c = 0; c < H; c++) fx_acc_add(&dxa[c], fx_mul(dl[e], ex(L->router[e * H + c])));
    if (!d->SI) return;
    int i0 = 3 * E;
    fx_ev dso[H], dsact[SI], dsg[SI], dsu[SI];
    fx_acc a = {0};
    for (int c = 0; c < H; c++) {
        dso[c] = d->shared_gate ? fx_mul(s->gv, ex(dy[c])) : ex(dy[c]);
        fx_acc_add(&a, fx_mul(ex(dy[c]), s->so[c]));
    }
    fx_ev dsgl = fx_mul(fx_mul(fx_acc_sum(&a), s->gv), fx_sub(ex(1), s->gv));
    for (int i = 0; i < SI; i++) {
        fx_acc t = {0};
        for (int c = 0; c < H; c++) fx_acc_add(&t, fx_mul(dso[c], ex(L->w[i0 + 2][c * SI + i])));
        dsact[i] = fx_acc_sum(&t);
    }
    for (int c = 0; c < H; c++)
        for (int i = 0; i < SI; i++) fx_acc_add(&dWa[i0 + 2][c * SI + i], fx_mul(dso[c], s->sact[i]));
    ar_moe_dims plain = *d;
    plain.swiglu_limit = 0;
    fx_glu_back(&plain, dsg, dsu, dsact, s->sg, s->su, SI);
    for (int i = 0; i < SI; i++)
        for (int c = 0; c < H; c++) {
            fx_acc_add(&dWa[i0][i * H + c], fx_mul(dsg[i], x[c]));
            fx_acc_add(&dWa[i0 + 1][i * H + c], fx_mul(dsu[i], x[c]));
            fx_acc_add(&dxa[c], fx_mul(dsg[i], ex(L->w[i0][i * H + c])));
            fx_acc_add(&dxa[c], fx_mul(dsu[i], ex(L->w[i0 + 1][i * H + c])));
        }
    if (d->shared_gate)
        for (int c = 0; c < H; c++) fx_acc_add(&dxa[c], fx_mul(dsgl, ex(L->sg[c])));
}

/* L = Σ y · dy of the reference forward on x (values only, for finite
 * differences); *mag = Σ |y dy|. */
static double ref_loss(const layer *L, const double *x, const double *dy, double *mag)
{
    fx_ev xe[H], y[H];
    rrow s;
    double l = 0, m = 0;
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < H; c++) xe[c] = ex(x[r * H + c]);
        ref_row(L, xe, y, &s);
        for (int c = 0; c < H; c++) l += y[c].v * dy[r * H + c], m += fabs(y[c].v * dy[r * H + c]);
    }
    *mag = m;
    return l;
}

/* Central difference of ref_loss along dir of p [n] (a weight or x). */
static double fd(const layer *L, const double *x, const double *dy, double *p, const double *dir, int n, double *err)
{
    const double h = 1e-5, step[4] = {h, -h, 2 * h, -2 * h};
    double *keep = malloc(sizeof(double) * n), f[4], mag = 0, m;
    memcpy(keep, p, sizeof(double) * n);
    fx_set_mode(FX_VALUES, 0);
    for (int s = 0; s < 4; s++) {
        for (int j = 0; j < n; j++) p[j] = keep[j] + step[s] * dir[j];
        f[s] = ref_loss(L, x, dy, &m);
        mag = fmax(mag, m);
    }
    fx_set_mode(FX_BOUNDS, 0);
    memcpy(p, keep, sizeof(double) * n);
    free(keep);
    return fx_central_diff(f[0], f[1], f[2], f[3], h, mag, err);
}

/* The analytic reference gradient g [n] of p against finite differences
 * along 3 random directions. */
static void check_fd(const layer *L, const double *x, const double *dy, double *p, const fx_ev *g, int n,
                     const char *what)
{
    double *dir = malloc(sizeof(double) * n);
    for (int t = 0; t < 3; t++) {
        double dot = 0, mag = 0, err;
        for (int j = 0; j < n; j++) dir[j] = 2 * urand(), dot += g[j].v * dir[j], mag += fabs(g[j].v * dir[j]);
        double f = fd(L, x, dy, p, dir, n, &err);
        fx_assert_within(dot, f, err + n * 0x1p-53 * mag, "%s: reference gradient along direction %d vs finite differences",
                         what, t);
    }
    free(dir);
}

/* ------------------------------------------------------------------ tests */

static void check_family(ar_moe_dims d, int router_bias, int score_bias, int expert_bias)
{
    fx_set_mode(FX_BOUNDS, 0);
    layer L;
    make_layer(&L, d, router_bias, score_bias, expert_bias);
    float x[R * H], y[R * H], dy[R * H], dx[R * H];
    double xd[R * H], dyd[R * H];
    for (int i = 0; i < R * H; i++) xd[i] = x[i] = (float)(2 * urand()), dyd[i] = dy[i] = (float)urand();
    ar_moe_weights w = f32_weights(&L);
    ar_moe_acts a;
    cr_assert_eq(ar_moe_acts_init(&a, &d, R, 1), 0);
    cr_assert_eq(ar_moe_forward(&d, &w, x, y, R, &a), 0);

    /* reference forward and backward */
    rrow s[R];
    fx_ev yr[R * H], xe[R][H];
    fx_acc dxa[R][H];
    fx_acc *dWa[NLMAX];
    memset(dxa, 0, sizeof dxa);
    for (int i = 0; i < L.nl; i++) dWa[i] = calloc(L.nw[i], sizeof(fx_acc));
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < H; c++) xe[r][c] = ex(x[r * H + c]);
        ref_row(&L, xe[r], yr + r * H, &s[r]);
        for (int k = 0; k < d.K; k++) {
            cr_assert_eq(a.sel[r * d.K + k], s[r].sel[k], "row %d choice %d", r, k);
            fx_assert_within(a.wt[r * d.K + k], s[r].wt[k].v, s[r].wt[k].e, "row %d weight %d", r, k);
        }
        ref_row_back(&L, xe[r], &s[r], dyd + r * H, dxa[r], dWa);
    }
    for (int i = 0; i < R * H; i++) fx_assert_within(y[i], yr[i].v, yr[i].e, "y[%d]", i);

    /* each expert's rows are exactly the rows routed to it */
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int r = 0; r < R; r++)
            for (int k = 0; k < d.K; k++) n += s[r].sel[k] == e;
        cr_assert_eq(a.cnt[e], n, "expert %d rows", e);
    }

    /* f32 backward against the reference backward */
    float *dW[NLMAX];
    for (int i = 0; i < L.nl; i++) dW[i] = calloc(L.nw[i], sizeof(float));
    memset(dx, 0, sizeof dx);
    cr_assert_eq(ar_moe_backward(&d, &w, &a, dy, dW, dx), 0);
    fx_ev dxr[R * H];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < H; c++) dxr[r * H + c] = fx_acc_sum(&dxa[r][c]);
    for (int i = 0; i < R * H; i++) fx_assert_within(dx[i], dxr[i].v, dxr[i].e, "dx[%d]", i);
    for (int l = 0; l < L.nl; l++) {
        fx_ev *g = malloc(sizeof(fx_ev) * L.nw[l]);
        for (int j = 0; j < L.nw[l]; j++) {
            g[j] = fx_acc_sum(&dWa[l][j]);
            fx_assert_within(dW[l][j], g[j].v, g[j].e, "dW[%d][%d]", l, j);
        }
        char what[32];
        snprintf(what, sizeof what, "dW[%d]", l);
        check_fd(&L, xd, dyd, L.w[l], g, L.nw[l], what);
        free(g);
    }
    check_fd(&L, xd, dyd, xd, dxr, R * H, "dx");

    /* gradients accumulate; dx may be skipped */
    cr_assert_eq(ar_moe_backward(&d, &w, &a, dy, dW, NULL), 0);
    for (int l = 0; l < L.nl; l++)
        for (int j = 0; j < L.nw[l]; j++) {
            fx_ev g = fx_acc_sum(&dWa[l][j]);
            fx_assert_within(dW[l][j], 2 * g.v, 2 * g.e + FX_U * 2 * fabs(g.v), "2 dW[%d][%d]", l, j);
        }
    for (int i = 0; i < L.nl; i++) free(dW[i]), free(dWa[i]);
    ar_moe_acts_free(&a);
    free_layer(&L);
}

static ar_moe_dims dims(ar_router_scoring sc, ar_topk_method tm, int K, int norm)
{
    return (ar_moe_dims){.H = H, .E = E, .K = K, .I = I, .scoring = sc, .topk_method = tm, .n_group = 1,
                         .topk_group = 1, .norm_topk_prob = norm, .scale = 1};
}

Test(moe, qwen3_moe_softmax_renormalised) { check_family(dims(AR_ROUTER_SOFTMAX, AR_TOPK_GREEDY, 2, 1), 0, 0, 0); }

Test(moe, qwen2_moe_shared_expert_gate)
{
    ar_moe_dims d = dims(AR_ROUTER_SOFTMAX, AR_TOPK_GREEDY, 2, 0);
    d.SI = SI, d.shared_gate = 1;
    check_family(d, 0, 0, 0);
}

Test(moe, mixtral_top3) { check_family(dims(AR_ROUTER_SOFTMAX, AR_TOPK_GREEDY, 3, 1), 0, 0, 0); }

Test(moe, deepseek_v3_sigmoid_groups)
{
    ar_moe_dims d = dims(AR_ROUTER_SIGMOID, AR_TOPK_NOAUX_TC, 2, 1);
    d.n_group = 3, d.topk_group = 2, d.scale = 2.5f, d.SI = SI;
    check_family(d, 0, 1, 0);
}

Test(moe, deepseek_v2_group_limited)
{
    ar_moe_dims d = dims(AR_ROUTER_SOFTMAX, AR_TOPK_GROUP_LIMITED, 2, 0);
    d.n_group = 3, d.topk_group = 2, d.scale = 1.5f, d.SI = SI;
    check_family(d, 0, 0, 0);
}

Test(moe, gpt_oss_clamped)
{
    ar_moe_dims d = dims(AR_ROUTER_TOPK_SOFTMAX, AR_TOPK_GREEDY, 2, 1);
    d.swiglu_alpha = 1.702f, d.swiglu_limit = 0.9f;
    check_family(d, 1, 0, 1);
}

/* Equal scores: the lower expert index first. */
Test(moe, ties_lower_index_first)
{
    ar_moe_dims d = dims(AR_ROUTER_SOFTMAX, AR_TOPK_GREEDY, 2, 1);
    float lg[E] = {0.5f, 1, 0.2f, 1, 1, 0}, sc[E], wt[2];
    int sel[2];
    ar_moe_route(&d, lg, NULL, 1, sc, sel, wt);
    cr_assert(sel[0] == 1 && sel[1] == 3, "got %d %d", sel[0], sel[1]);
    cr_assert_eq(wt[0], 0.5f);
}

/* The config's fields, per family. */
Test(moe, dims_from_config)
{
    ar_config c = {0};
    c.arch = AR_ARCH_DEEPSEEK_V2, c.hidden = 16;
    c.moe = (ar_moe_config){.n_experts = 8, .top_k = 2, .expert_intermediate = 4, .norm_topk_prob = 1,
                            .n_group = 1, .topk_group = 1, .routed_scaling_factor = 2, .n_shared_experts = 2,
                            .shared_intermediate = 8};
    ar_moe_dims d;
    ar_moe_dims_from_config(&d, &c);
    cr_assert(d.norm_topk_prob == 0 && d.scale == 2 && d.SI == 8 && d.E == 8 && d.I == 4);
    cr_assert_eq(ar_moe_nlinear(&d), 27);
}

/* Capacity and shape errors. */
Test(moe, bad_input)
{
    ar_moe_dims d = dims(AR_ROUTER_SOFTMAX, AR_TOPK_GREEDY, 2, 1);
    ar_moe_acts a;
    cr_assert_eq(ar_moe_acts_init(&a, &d, 2, 0), 0);
    layer L;
    make_layer(&L, d, 0, 0, 0);
    ar_moe_weights w = f32_weights(&L);
    float x[3 * H] = {0}, y[3 * H], dy[3 * H] = {0};
    cr_assert_neq(ar_moe_forward(&d, &w, x, y, 3, &a), 0);
    cr_assert_eq(ar_moe_forward(&d, &w, x, y, 2, &a), 0);
    cr_assert_neq(ar_moe_backward(&d, &w, &a, dy, NULL, NULL), 0); /* not a training allocation */
    ar_moe_acts_free(&a);
    d.K = E + 1;
    cr_assert_neq(ar_moe_acts_init(&a, &d, 2, 0), 0);
    free_layer(&L);
}
