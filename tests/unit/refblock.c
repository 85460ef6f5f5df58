/* refblock.c — the double reference block with error bounds (refblock.h). */
#include "refblock.h"

#include "block_desc.h"
#include "error.h"
#include "rope_scaling.h"
#include "attn_ref.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static fx_ev X(double v) { return fx_exact(v); }

static double *dup_d(const float *x, long n)
{
    if (!x) return NULL;
    double *d = malloc(sizeof(double) * n);
    for (long i = 0; i < n; i++) d[i] = x[i];
    return d;
}

void rb_weights_from(rb_weights *d, const ar_block_weights *w, const ar_config *c)
{
    memset(d, 0, sizeof *d);
    ar_block_desc bd;
    cr_assert_eq(ar_block_desc_init(&bd, c), 0, "%s", ar_last_error());
    d->nlinear = bd.nlinear;
    cr_assert_leq(bd.nlinear, AR_NLINEAR);
    for (int i = 0; i < bd.nlinear; i++) {
        int n = bd.lin[i].n_out, k = bd.lin[i].k_in;
        d->w[i] = dup_d(w->w[i], (long)n * k);
        d->b[i] = dup_d(w->b[i], n);
    }
    ar_block_desc_free(&bd);
    d->pa = dup_d(w->attn_post_norm, c->hidden), d->pm = dup_d(w->mlp_post_norm, c->hidden);
    d->n1 = dup_d(w->attn_norm, c->hidden), d->n2 = dup_d(w->mlp_norm, c->hidden);
    d->qn = dup_d(w->q_norm, c->head_dim), d->kn = dup_d(w->k_norm, c->head_dim);
}

void rb_weights_free(rb_weights *d)
{
    for (int i = 0; i < AR_NLINEAR; i++) free(d->w[i]), free(d->b[i]);
    free(d->n1), free(d->n2), free(d->qn), free(d->kn), free(d->pa), free(d->pm);
    memset(d, 0, sizeof *d);
}

fx_ev *rb_exact(const float *x, long n)
{
    fx_ev *e = malloc(sizeof(fx_ev) * (n > 0 ? n : 1));
    for (long i = 0; i < n; i++) e[i] = X(x[i]);
    return e;
}

fx_ev *rb_exact_d(const double *x, long n)
{
    fx_ev *e = malloc(sizeof(fx_ev) * (n > 0 ? n : 1));
    for (long i = 0; i < n; i++) e[i] = X(x[i]);
    return e;
}

static fx_ev *alloc_ev(long n) { return malloc(sizeof(fx_ev) * (n > 0 ? n : 1)); }

/* ---------------------------------------------------------------- RMSNorm */

void rb_rmsnorm(fx_ev *out, fx_ev *s, const fx_ev *x, const double *w, int R, int C, double eps)
{
    for (int r = 0; r < R; r++) {
        const fx_ev *xr = x + (long)r * C;
        fx_acc ss = {0};
        for (int i = 0; i < C; i++) fx_acc_add(&ss, fx_mul(xr[i], xr[i]));
        fx_ev sr = fx_div(X(1), fx_sqrt(fx_add(fx_div(fx_acc_sum(&ss), X(C)), X(eps))));
        if (s) s[r] = sr;
        for (int i = 0; i < C; i++) out[(long)r * C + i] = fx_mul(fx_mul(xr[i], sr), X(w[i]));
    }
}

void rb_rmsnorm_backward(fx_ev *acc, const fx_ev *dout, const fx_ev *x, const double *w, const fx_ev *s, int R, int C)
{
    for (int r = 0; r < R; r++) {
        const fx_ev *dr = dout + (long)r * C, *xr = x + (long)r * C;
        fx_acc dot = {0};
        for (int i = 0; i < C; i++) fx_acc_add(&dot, fx_mul(fx_mul(dr[i], X(w[i])), xr[i]));
        fx_ev k = fx_div(fx_mul(fx_mul(fx_mul(fx_acc_sum(&dot), s[r]), s[r]), s[r]), X(C));
        for (int i = 0; i < C; i++) {
            fx_ev t = fx_sub(fx_mul(fx_mul(s[r], dr[i]), X(w[i])), fx_mul(k, xr[i]));
            acc[(long)r * C + i] = fx_add(acc[(long)r * C + i], t);
        }
    }
}

/* ----------------------------------------------------------------- Linear */

/* init + sum a_i b_i, values only (FX_VALUES, FX_MCA: the fast path of the
 * whole-model references). Exact under FX_VALUES; under FX_MCA every product
 * and addition rounded at random, summed on 4 lanes reduced pairwise (one
 * f32 kernel's order; any order is a plausible rounding). */
static double dot_values(double init, const fx_ev *a, long sa, const double *b, long sb, int n)
{
    if (fx_mode_ != FX_MCA) {
        double acc = init;
        for (int i = 0; i < n; i++) acc += a[i * sa].v * b[i * sb];
        return acc;
    }
    double l[4] = {init, 0, 0, 0};
    uint64_t ctr = fx_rng_; /* a local counter: the draws stay in registers */
    int i = 0;
    double d1, d2;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) {
            fx_perturb2_(&d1, &d2, &ctr);
            l[j] = (l[j] + a[(i + j) * sa].v * b[(i + j) * sb] * d1) * d2;
        }
    for (; i < n; i++) fx_perturb2_(&d1, &d2, &ctr), l[0] = (l[0] + a[i * sa].v * b[i * sb] * d1) * d2;
    double r = fx_perturb_(fx_perturb_(l[0] + l[1], 1, &ctr) + fx_perturb_(l[2] + l[3], 1, &ctr), 1, &ctr);
    fx_rng_ = ctr;
    return r;
}

void rb_linear(fx_ev *y, const fx_ev *x, const double *W, const double *b, int R, int K, int N)
{
    if (fx_mode_ != FX_BOUNDS) {
        for (int r = 0; r < R; r++)
            for (int n = 0; n < N; n++) {
                double init = b ? fx_out_(b[n], 1) : 0;
                y[(long)r * N + n] = fx_exact(dot_values(init, x + (long)r * K, 1, W + (long)n * K, 1, K));
            }
        return;
    }
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            fx_acc a = {0};
            if (b) fx_acc_add(&a, X(b[n]));
            for (int k = 0; k < K; k++) fx_acc_add(&a, fx_mul(x[(long)r * K + k], X(W[(long)n * K + k])));
            y[(long)r * N + n] = fx_acc_sum(&a);
        }
}

void rb_linear_dx(fx_acc *acc, const fx_ev *dy, const double *W, int R, int K, int N)
{
    if (fx_mode_ != FX_BOUNDS) { /* values only: the sums as fx_acc_add keeps them */
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++) {
                fx_acc *a = &acc[(long)r * K + k];
                a->v = dot_values(a->v, dy + (long)r * N, 1, W + k, K, N), a->n += N;
            }
        return;
    }
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++) fx_acc_add(&acc[(long)r * K + k], fx_mul(dy[(long)r * N + n], X(W[(long)n * K + k])));
}

void rb_linear_dW(fx_ev *dW, const fx_ev *dy, const fx_ev *x, int R, int K, int N)
{
    if (fx_mode_ != FX_BOUNDS) { /* values only */
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) {
                double a = 0;
                if (fx_mode_ == FX_MCA) {
                    double l[4] = {0};
                    uint64_t ctr = fx_rng_;
                    int r = 0;
                    double d1, d2;
                    for (; r + 4 <= R; r += 4)
                        for (int j = 0; j < 4; j++) {
                            fx_perturb2_(&d1, &d2, &ctr);
                            l[j] = (l[j] + dy[(long)(r + j) * N + n].v * x[(long)(r + j) * K + k].v * d1) * d2;
                        }
                    for (; r < R; r++)
                        fx_perturb2_(&d1, &d2, &ctr), l[0] = (l[0] + dy[(long)r * N + n].v * x[(long)r * K + k].v * d1) * d2;
                    a = fx_perturb_(fx_perturb_(l[0] + l[1], 1, &ctr) + fx_perturb_(l[2] + l[3], 1, &ctr), 1, &ctr);
                    fx_rng_ = ctr;
                } else {
                    for (int r = 0; r < R; r++) a += dy[(long)r * N + n].v * x[(long)r * K + k].v;
                }
                dW[(long)n * K + k] = fx_exact(a);
            }
        return;
    }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            fx_acc a = {0};
            for (int r = 0; r < R; r++) fx_acc_add(&a, fx_mul(dy[(long)r * N + n], x[(long)r * K + k]));
            dW[(long)n * K + k] = fx_acc_sum(&a);
        }
}

static void acc_sums(fx_ev *out, const fx_acc *acc, long n)
{
    for (long i = 0; i < n; i++) out[i] = fx_acc_sum(&acc[i]);
}

/* ------------------------------------------------------------------- RoPE */

/* 1 / theta^((2i)/HD), then the rope type's scaling: linear f / factor;
 * llama3 keeps f where the wavelength 2pi/f is short, divides by factor
 * where long, interpolates between. The constants (theta, factor, ...,
 * fl(2 pi)) are the f32 values the op uses. */
fx_ev rb_inv_freq(const ar_config *c, int i)
{
    fx_ev e = fx_div(X(2 * i), X(c->head_dim));
    fx_ev f = fx_div(X(1), fx_exp(fx_mul(e, X(log((float)c->rope_theta)))));
    if (c->rope_type == AR_ROPE_LINEAR && c->rope_factor > 0) return fx_div(f, X((float)c->rope_factor));
    if (c->rope_type != AR_ROPE_LLAMA3) return f;
    fx_ev factor = X((float)c->rope_factor), lo = X((float)c->rope_low_freq_factor);
    fx_ev hi = X((float)c->rope_high_freq_factor), L = X((float)c->rope_orig_max_pos);
    fx_ev low_wl = fx_div(L, lo), high_wl = fx_div(L, hi), wl = fx_div(X(2.0f * (float)M_PI), f);
    /* a wavelength within rounding of a threshold could take either branch */
    cr_assert(fabs(wl.v - low_wl.v) > wl.e + low_wl.e && fabs(wl.v - high_wl.v) > wl.e + high_wl.e,
              "inv_freq[%d]: branch undecided", i);
    if (wl.v > low_wl.v) return fx_div(f, factor);
    if (wl.v < high_wl.v) return f;
    fx_ev smooth = fx_div(fx_sub(fx_div(L, wl), lo), fx_sub(hi, lo));
    return fx_add(fx_div(fx_mul(fx_sub(X(1), smooth), f), factor), fx_mul(smooth, f));
}

/* yarn, dynamic, longrope (rope_scaling.h): the f32 frequencies and factor
 * taken as exact inputs, the angles, cos, sin and scaling in this arithmetic. */
static void dense_tables(fx_ev *cos_t, fx_ev *sin_t, const ar_config *c, int T)
{
    int H2 = ar_rope_rotated_dim(c) / 2;
    float f[AR_ROPE_MAX_PAIRS];
    fx_ev s = X(ar_rope_config_inv_freq(f, c, ar_rope_rotated_dim(c), T));
    for (int i = 0; i < H2; i++)
        for (int t = 0; t < T; t++) {
            fx_ev a = fx_mul(X(t), X(f[i]));
            cos_t[(long)t * H2 + i] = fx_mul(fx_cos(a), s), sin_t[(long)t * H2 + i] = fx_mul(fx_sin(a), s);
        }
}

void rb_rope_tables(fx_ev *cos_t, fx_ev *sin_t, const ar_config *c, int T)
{
    if (c->rope_type >= AR_ROPE_YARN || ar_rope_rotated_dim(c) != c->head_dim) {
        dense_tables(cos_t, sin_t, c, T);
        return;
    }
    int H2 = c->head_dim / 2;
    for (int i = 0; i < H2; i++) {
        fx_ev f = rb_inv_freq(c, i);
        for (int t = 0; t < T; t++) {
            fx_ev a = fx_mul(X(t), f);
            cos_t[(long)t * H2 + i] = fx_cos(a), sin_t[(long)t * H2 + i] = fx_sin(a);
        }
    }
}

void rb_rope(fx_ev *x, const fx_ev *cos_t, const fx_ev *sin_t, int B, int T, int H, int HD, int sign)
{
    int H2 = HD / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                fx_ev *v = x + (((long)b * T + t) * H + h) * HD;
                for (int i = 0; i < H2; i++) {
                    fx_ev c = cos_t[(long)t * H2 + i], s = fx_scale(sin_t[(long)t * H2 + i], sign);
                    fx_ev x0 = v[i], x1 = v[i + H2];
                    v[i] = fx_sub(fx_mul(x0, c), fx_mul(x1, s));
                    v[i + H2] = fx_add(fx_mul(x1, c), fx_mul(x0, s));
                }
            }
}

/* -------------------------------------------------------------- Attention */

static int visible(int t, int s, int window) { return s <= t && (window == 0 || t - s < window); }

/* Row t of head h, sequence b: scores by sgemm with alpha = 1/sqrtf(HD)
 * (each term bounded as (alpha q) k, which covers alpha applied before or
 * after the sum), exp(score - max), their sum, times 1/sum; masked keys
 * exactly 0. */
static void probs_row(fx_ev *p, const fx_ev *q, const fx_ev *k, int b, int h, int t, int T, int NH, int NKV, int HD,
                      int window)
{
    int g = h / (NH / NKV);
    fx_ev scale = fx_div(X(1), fx_sqrt(X(HD)));
    double mx = -INFINITY;
    const fx_ev *qt = q + ((long)(b * T + t) * NH + h) * HD;
    for (int s = 0; s < T; s++) {
        p[s] = X(0);
        if (!visible(t, s, window)) continue;
        const fx_ev *ks = k + ((long)(b * T + s) * NKV + g) * HD;
        if (fx_mode_ != FX_BOUNDS) {
            double acc = 0;
            for (int i = 0; i < HD; i++) acc = fx_out_(acc + fx_out_(fx_out_(scale.v * qt[i].v, 1) * ks[i].v, 1), 1);
            p[s] = fx_exact(acc);
        } else {
            fx_acc d = {0};
            for (int i = 0; i < HD; i++) fx_acc_add(&d, fx_mul(fx_mul(scale, qt[i]), ks[i]));
            p[s] = fx_acc_sum(&d);
        }
        mx = fmax(mx, p[s].v);
    }
    fx_acc sum = {0};
    for (int s = 0; s <= t; s++)
        if (visible(t, s, window)) fx_acc_add(&sum, p[s] = fx_exp(fx_sub(p[s], X(mx))));
    fx_ev inv = fx_div(X(1), fx_acc_sum(&sum));
    for (int s = 0; s <= t; s++)
        if (visible(t, s, window)) p[s] = fx_mul(p[s], inv);
}

void rb_attention(fx_ev *out, fx_ev *P, const fx_ev *q, const fx_ev *k, const fx_ev *v, int B, int T, int NH,
                  int NKV, int HD, int window)
{
    fx_ev *row = alloc_ev(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int g = h / (NH / NKV);
                fx_ev *p = P ? P + (((long)b * NH + h) * T + t) * T : row;
                probs_row(p, q, k, b, h, t, T, NH, NKV, HD, window);
                /* P V by sgemm: the masked zeros add nothing */
                for (int i = 0; i < HD; i++) {
                    const fx_ev *vi = v + (long)b * T * NKV * HD + (long)g * HD + i;
                    long o = ((long)(b * T + t) * NH + h) * HD + i;
                    if (fx_mode_ != FX_BOUNDS) {
                        double acc = 0;
                        for (int s = 0; s <= t; s++)
                            if (visible(t, s, window)) acc = fx_out_(acc + fx_out_(p[s].v * vi[(long)s * NKV * HD].v, 1), 1);
                        out[o] = fx_exact(acc);
                        continue;
                    }
                    fx_acc a = {0};
                    for (int s = 0; s <= t; s++)
                        if (visible(t, s, window)) fx_acc_add(&a, fx_mul(p[s], vi[(long)s * NKV * HD]));
                    out[o] = fx_acc_sum(&a);
                }
            }
    free(row);
}

/* From the chain rule query by query, as the op rounds it: dp_s = dout . v_s
 * (sgemm), dot = sum_s p_s dp_s, ds_s = p_s (dp_s - dot) scale, dq += ds_s
 * k_s, dk_s += ds_s q, dv_s += p_s dout (sgemms summing over queries in
 * blocks per head, then the heads of a group added: one sum of all those
 * terms, any order). */
void rb_attention_backward(fx_ev *dq, fx_ev *dk, fx_ev *dv, const fx_ev *dout, const fx_ev *P, const fx_ev *q,
                           const fx_ev *k, const fx_ev *v, int B, int T, int NH, int NKV, int HD, int window)
{
    long NQ = (long)B * T * NH * HD, NK = (long)B * T * NKV * HD;
    fx_ev *dp = alloc_ev(T), scale = fx_div(X(1), fx_sqrt(X(HD)));
    fx_acc *aq = calloc(NQ, sizeof(fx_acc)), *ak = calloc(NK, sizeof(fx_acc)), *av = calloc(NK, sizeof(fx_acc));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int g = h / (NH / NKV);
                long qo = ((long)(b * T + t) * NH + h) * HD;
                const fx_ev *p = P + (((long)b * NH + h) * T + t) * T;
                fx_acc dot = {0};
                for (int s = 0; s <= t; s++) {
                    if (!visible(t, s, window)) continue;
                    long ko = ((long)(b * T + s) * NKV + g) * HD;
                    fx_acc a = {0};
                    for (int i = 0; i < HD; i++) fx_acc_add(&a, fx_mul(dout[qo + i], v[ko + i]));
                    dp[s] = fx_acc_sum(&a);
                    fx_acc_add(&dot, fx_mul(dp[s], p[s]));
                }
                fx_ev dt = fx_acc_sum(&dot);
                for (int s = 0; s <= t; s++) {
                    if (!visible(t, s, window)) continue;
                    long ko = ((long)(b * T + s) * NKV + g) * HD;
                    fx_ev ds = fx_mul(fx_mul(p[s], fx_sub(dp[s], dt)), scale);
                    for (int i = 0; i < HD; i++) {
                        fx_acc_add(&aq[qo + i], fx_mul(ds, k[ko + i]));
                        fx_acc_add(&ak[ko + i], fx_mul(ds, q[qo + i]));
                        fx_acc_add(&av[ko + i], fx_mul(p[s], dout[qo + i]));
                    }
                }
            }
    acc_sums(dq, aq, NQ), acc_sums(dk, ak, NK), acc_sums(dv, av, NK);
    free(dp), free(aq), free(ak), free(av);
}

/* ----------------------------------------------------------------- SwiGLU */

void rb_swiglu(fx_ev *out, const fx_ev *g, const fx_ev *u, long n)
{
    for (long i = 0; i < n; i++) out[i] = fx_mul(fx_div(g[i], fx_add(X(1), fx_exp(fx_scale(g[i], -1)))), u[i]);
}

void rb_swiglu_backward(fx_ev *dg, fx_ev *du, const fx_ev *dout, const fx_ev *g, const fx_ev *u, long n)
{
    for (long i = 0; i < n; i++) {
        fx_ev sg = fx_div(X(1), fx_add(X(1), fx_exp(fx_scale(g[i], -1))));
        dg[i] = fx_mul(fx_mul(fx_mul(dout[i], u[i]), sg), fx_add(X(1), fx_mul(g[i], fx_sub(X(1), sg))));
        du[i] = fx_mul(fx_mul(dout[i], g[i]), sg);
    }
}

/* ------------------------------------------------------------------ block */

/* The forward's intermediates, as block.c keeps them for its backward. */
typedef struct {
    fx_ev *ln1, *s1, *qpre, *sq, *kpre, *sk, *q, *k, *v, *P, *ao, *h, *ln2, *s2, *gate, *up, *act, *cs, *sn;
} acts;

static void forward(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T, acts *a)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    double eps = c->rms_eps;
    a->ln1 = alloc_ev((long)BT * C), a->s1 = alloc_ev(BT), a->qpre = alloc_ev((long)BT * QD);
    a->kpre = alloc_ev((long)BT * KD), a->sq = alloc_ev((long)BT * NH), a->sk = alloc_ev((long)BT * NKV);
    a->q = alloc_ev((long)BT * QD), a->k = alloc_ev((long)BT * KD), a->v = alloc_ev((long)BT * KD);
    a->P = alloc_ev((long)B * NH * T * T), a->ao = alloc_ev((long)BT * QD), a->h = alloc_ev((long)BT * C);
    a->ln2 = alloc_ev((long)BT * C), a->s2 = alloc_ev(BT), a->gate = alloc_ev((long)BT * F);
    a->up = alloc_ev((long)BT * F), a->act = alloc_ev((long)BT * F);
    a->cs = alloc_ev((long)T * HD / 2), a->sn = alloc_ev((long)T * HD / 2);
    rb_rmsnorm(a->ln1, a->s1, x, w->n1, BT, C, eps);
    rb_linear(a->qpre, a->ln1, w->w[AR_Q], w->b[AR_Q], BT, C, QD);
    rb_linear(a->kpre, a->ln1, w->w[AR_K], w->b[AR_K], BT, C, KD);
    rb_linear(a->v, a->ln1, w->w[AR_V], w->b[AR_V], BT, C, KD);
    if (w->qn) rb_rmsnorm(a->q, a->sq, a->qpre, w->qn, BT * NH, HD, eps);
    else memcpy(a->q, a->qpre, sizeof(fx_ev) * BT * QD);
    if (w->kn) rb_rmsnorm(a->k, a->sk, a->kpre, w->kn, BT * NKV, HD, eps);
    else memcpy(a->k, a->kpre, sizeof(fx_ev) * BT * KD);
    rb_rope_tables(a->cs, a->sn, c, T);
    rb_rope(a->q, a->cs, a->sn, B, T, NH, HD, 1);
    rb_rope(a->k, a->cs, a->sn, B, T, NKV, HD, 1);
    rb_attention(a->ao, a->P, a->q, a->k, a->v, B, T, NH, NKV, HD, c->sliding_window);
    rb_linear(a->h, a->ao, w->w[AR_O], w->b[AR_O], BT, QD, C);
    for (long i = 0; i < (long)BT * C; i++) a->h[i] = fx_add(a->h[i], x[i]);
    rb_rmsnorm(a->ln2, a->s2, a->h, w->n2, BT, C, eps);
    rb_linear(a->gate, a->ln2, w->w[AR_GATE], w->b[AR_GATE], BT, C, F);
    rb_linear(a->up, a->ln2, w->w[AR_UP], w->b[AR_UP], BT, C, F);
    rb_swiglu(a->act, a->gate, a->up, (long)BT * F);
    fx_ev *d = alloc_ev((long)BT * C);
    rb_linear(d, a->act, w->w[AR_DOWN], w->b[AR_DOWN], BT, F, C);
    for (long i = 0; i < (long)BT * C; i++) y[i] = fx_add(a->h[i], d[i]);
    free(d);
}

static void free_acts(acts *a)
{
    fx_ev **p = (fx_ev **)a;
    for (size_t i = 0; i < sizeof *a / sizeof *p; i++) free(p[i]);
}

void rb_block_forward(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T)
{
    acts a;
    fx_ev *xc = alloc_ev((long)B * T * c->hidden); /* y may be x */
    memcpy(xc, x, sizeof(fx_ev) * B * T * c->hidden);
    forward(c, w, xc, y, B, T, &a);
    free_acts(&a);
    free(xc);
}

/* In block.c's order: the MLP half (down, SwiGLU, gate and up into one dln,
 * RMSNorm onto dh = dy), then the attention half (o, attention, RoPE
 * inverse, QK-norm, q/k/v into one dln1, dx = dh + RMSNorm's). */
static void backward(const ar_config *c, const rb_weights *w, const acts *a, const fx_ev *x, const fx_ev *dy, int B,
                     int T, fx_ev *const dW[AR_NLINEAR], fx_ev *dx)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    long most = (long)BT * (F > QD ? (F > C ? F : C) : (QD > C ? QD : C));
    fx_acc *acc = malloc(sizeof(fx_acc) * most);
    fx_ev *dh = alloc_ev((long)BT * C), *dact = alloc_ev((long)BT * F), *dgate = alloc_ev((long)BT * F);
    fx_ev *dup = alloc_ev((long)BT * F), *dln = alloc_ev((long)BT * C), *dao = alloc_ev((long)BT * QD);
    fx_ev *dq = alloc_ev((long)BT * QD), *dk = alloc_ev((long)BT * KD), *dv = alloc_ev((long)BT * KD);
    fx_ev *dqn = alloc_ev((long)BT * QD), *dkn = alloc_ev((long)BT * KD);
    fx_ev *tmp = alloc_ev((long)BT * C);
#define ZERO_ACC(n) memset(acc, 0, sizeof(fx_acc) * (n))
    memcpy(dh, dy, sizeof(fx_ev) * BT * C);
    ZERO_ACC((long)BT * F);
    rb_linear_dx(acc, dy, w->w[AR_DOWN], BT, F, C);
    acc_sums(dact, acc, (long)BT * F);
    if (dW[AR_DOWN]) rb_linear_dW(dW[AR_DOWN], dy, a->act, BT, F, C);
    rb_swiglu_backward(dgate, dup, dact, a->gate, a->up, (long)BT * F);
    ZERO_ACC((long)BT * C);
    rb_linear_dx(acc, dgate, w->w[AR_GATE], BT, C, F);
    rb_linear_dx(acc, dup, w->w[AR_UP], BT, C, F);
    acc_sums(dln, acc, (long)BT * C);
    if (dW[AR_GATE]) rb_linear_dW(dW[AR_GATE], dgate, a->ln2, BT, C, F);
    if (dW[AR_UP]) rb_linear_dW(dW[AR_UP], dup, a->ln2, BT, C, F);
    rb_rmsnorm_backward(dh, dln, a->h, w->n2, a->s2, BT, C);

    ZERO_ACC((long)BT * QD);
    rb_linear_dx(acc, dh, w->w[AR_O], BT, QD, C);
    acc_sums(dao, acc, (long)BT * QD);
    if (dW[AR_O]) rb_linear_dW(dW[AR_O], dh, a->ao, BT, QD, C);
    rb_attention_backward(dq, dk, dv, dao, a->P, a->q, a->k, a->v, B, T, NH, NKV, HD, c->sliding_window);
    rb_rope(dq, a->cs, a->sn, B, T, NH, HD, -1);
    rb_rope(dk, a->cs, a->sn, B, T, NKV, HD, -1);
    if (w->qn) {
        for (long i = 0; i < (long)BT * QD; i++) dqn[i] = X(0);
        rb_rmsnorm_backward(dqn, dq, a->qpre, w->qn, a->sq, BT * NH, HD);
        memcpy(dq, dqn, sizeof(fx_ev) * BT * QD);
    }
    if (w->kn) {
        for (long i = 0; i < (long)BT * KD; i++) dkn[i] = X(0);
        rb_rmsnorm_backward(dkn, dk, a->kpre, w->kn, a->sk, BT * NKV, HD);
        memcpy(dk, dkn, sizeof(fx_ev) * BT * KD);
    }
    if (dW[AR_Q]) rb_linear_dW(dW[AR_Q], dq, a->ln1, BT, C, QD);
    if (dW[AR_K]) rb_linear_dW(dW[AR_K], dk, a->ln1, BT, C, KD);
    if (dW[AR_V]) rb_linear_dW(dW[AR_V], dv, a->ln1, BT, C, KD);
    if (dx) {
        ZERO_ACC((long)BT * C);
        rb_linear_dx(acc, dq, w->w[AR_Q], BT, C, QD);
        rb_linear_dx(acc, dk, w->w[AR_K], BT, C, KD);
        rb_linear_dx(acc, dv, w->w[AR_V], BT, C, KD);
        acc_sums(tmp, acc, (long)BT * C);
        memcpy(dx, dh, sizeof(fx_ev) * BT * C);
        rb_rmsnorm_backward(dx, tmp, x, w->n1, a->s1, BT, C);
    }
#undef ZERO_ACC
    free(acc), free(dh), free(dact), free(dgate), free(dup), free(dln), free(dao);
    free(dq), free(dk), free(dv), free(dqn), free(dkn), free(tmp);
}

void rb_block_backward(const ar_config *c, const rb_weights *w, const fx_ev *x, const fx_ev *dy, int B, int T,
                       fx_ev *const dW[AR_NLINEAR], fx_ev *dx)
{
    acts a;
    fx_ev *y = alloc_ev((long)B * T * c->hidden);
    forward(c, w, x, y, B, T, &a);
    backward(c, w, &a, x, dy, B, T, dW, dx);
    free_acts(&a);
    free(y);
}

struct rb_fwd { acts a; };

rb_fwd *rb_block_forward_keep(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T)
{
    rb_fwd *f = malloc(sizeof *f);
    forward(c, w, x, y, B, T, &f->a);
    return f;
}

void rb_block_backward_kept(const ar_config *c, const rb_weights *w, const rb_fwd *f, const fx_ev *x, const fx_ev *dy,
                            int B, int T, fx_ev *const dW[AR_NLINEAR], fx_ev *dx)
{
    backward(c, w, &f->a, x, dy, B, T, dW, dx);
}

void rb_fwd_free(rb_fwd *f)
{
    if (!f) return;
    free_acts(&f->a);
    free(f);
}

void rb_block_backward_saved(const ar_config *c, const rb_weights *w, const ar_block_acts *sa, const fx_ev *dy,
                             fx_ev *const dW[AR_NLINEAR], fx_ev *dx)
{
    int B = sa->B, T = sa->T, BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim;
    int NH = c->n_heads, NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    acts a;
    a.ln1 = rb_exact(sa->ln1, (long)BT * C), a.s1 = rb_exact(sa->rstd1, BT);
    a.qpre = w->qn ? rb_exact(sa->qpre, (long)BT * QD) : alloc_ev(1);
    a.sq = w->qn ? rb_exact(sa->rstdq, (long)BT * NH) : alloc_ev(1);
    a.kpre = w->kn ? rb_exact(sa->kpre, (long)BT * KD) : alloc_ev(1);
    a.sk = w->kn ? rb_exact(sa->rstdk, (long)BT * NKV) : alloc_ev(1);
    a.q = rb_exact(sa->q, (long)BT * QD), a.k = rb_exact(sa->k, (long)BT * KD), a.v = rb_exact(sa->v, (long)BT * KD);
    a.P = rb_exact(sa->att, (long)B * NH * T * T), a.ao = rb_exact(sa->ao, (long)BT * QD);
    a.h = rb_exact(sa->h, (long)BT * C), a.ln2 = rb_exact(sa->ln2, (long)BT * C), a.s2 = rb_exact(sa->rstd2, BT);
    a.gate = rb_exact(sa->gate, (long)BT * F), a.up = rb_exact(sa->up, (long)BT * F);
    a.act = rb_exact(sa->act, (long)BT * F);
    a.cs = alloc_ev((long)T * HD / 2), a.sn = alloc_ev((long)T * HD / 2);
    rb_rope_tables(a.cs, a.sn, c, T);
    fx_ev *x = rb_exact(sa->x, (long)BT * C);
    backward(c, w, &a, x, dy, B, T, dW, dx);
    free_acts(&a);
    free(x);
}

/* ------------------------------------------------------- stage-wise check */

static void check_all(const float *got, const fx_ev *want, long n, const char *what)
{
    for (long i = 0; i < n; i++)
        if (!fx_within(got[i], want[i].v, want[i].e)) fx_assert_within(got[i], want[i].v, want[i].e, "stage %s[%ld]", what, i);
}

void rb_check_block_stages(const ar_config *c, const rb_weights *w, const ar_block_acts *sa, const float *y)
{
    int B = sa->B, T = sa->T, BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim;
    int NH = c->n_heads, NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    double eps = c->rms_eps;
    long most = (long)BT * (F > QD ? (F > C ? F : C) : (QD > C ? QD : C));
    fx_ev *x = rb_exact(sa->x, (long)BT * C), *t = alloc_ev(most), *s = alloc_ev((long)BT * NH);
    fx_ev *cs = alloc_ev((long)T * HD / 2), *sn = alloc_ev((long)T * HD / 2);
    rb_rope_tables(cs, sn, c, T);
    rb_rmsnorm(t, s, x, w->n1, BT, C, eps);
    check_all(sa->ln1, t, (long)BT * C, "ln1"), check_all(sa->rstd1, s, BT, "rstd1");
    fx_ev *ln1 = rb_exact(sa->ln1, (long)BT * C);
    /* q and k: projection, QK-norm when present (from the saved f32
     * projection), RoPE */
    const struct { int lin, heads, dim; const double *norm; const float *pre, *rstd, *out; const char *name; } qk[2] = {
        {AR_Q, NH, QD, w->qn, sa->qpre, sa->rstdq, sa->q, "q"}, {AR_K, NKV, KD, w->kn, sa->kpre, sa->rstdk, sa->k, "k"}};
    for (int j = 0; j < 2; j++) {
        rb_linear(t, ln1, w->w[qk[j].lin], w->b[qk[j].lin], BT, C, qk[j].dim);
        if (qk[j].norm) {
            check_all(qk[j].pre, t, (long)BT * qk[j].dim, "q/k projection");
            fx_ev *pre = rb_exact(qk[j].pre, (long)BT * qk[j].dim);
            rb_rmsnorm(t, s, pre, qk[j].norm, BT * qk[j].heads, HD, eps);
            check_all(qk[j].rstd, s, (long)BT * qk[j].heads, "q/k norm rstd");
            free(pre);
        }
        rb_rope(t, cs, sn, B, T, qk[j].heads, HD, 1);
        check_all(qk[j].out, t, (long)BT * qk[j].dim, qk[j].name);
    }
    rb_linear(t, ln1, w->w[AR_V], w->b[AR_V], BT, C, KD);
    check_all(sa->v, t, (long)BT * KD, "v");
    /* attention: P from the f32 q, k; ao = P v from the f32 P and v */
    fx_ev *q = rb_exact(sa->q, (long)BT * QD), *k = rb_exact(sa->k, (long)BT * KD), *v = rb_exact(sa->v, (long)BT * KD);
    fx_ev *P = alloc_ev((long)B * NH * T * T);
    rb_attention(t, P, q, k, v, B, T, NH, NKV, HD, c->sliding_window);
    check_all(sa->att, P, (long)B * NH * T * T, "P");
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int tt = 0; tt < T; tt++)
                for (int i = 0; i < HD; i++) {
                    fx_acc a = {0};
                    const float *p = sa->att + (((long)b * NH + h) * T + tt) * T;
                    for (int u = 0; u <= tt; u++)
                        if (p[u] != 0) fx_acc_add(&a, fx_mul(X(p[u]), v[((long)(b * T + u) * NKV + h / (NH / NKV)) * HD + i]));
                    t[((long)(b * T + tt) * NH + h) * HD + i] = fx_acc_sum(&a);
                }
    check_all(sa->ao, t, (long)BT * QD, "ao");
    /* h = o(ao) + x, the MLP half from the f32 h */
    fx_ev *ao = rb_exact(sa->ao, (long)BT * QD);
    rb_linear(t, ao, w->w[AR_O], w->b[AR_O], BT, QD, C);
    for (long i = 0; i < (long)BT * C; i++) t[i] = fx_add(t[i], x[i]);
    check_all(sa->h, t, (long)BT * C, "h");
    fx_ev *hh = rb_exact(sa->h, (long)BT * C);
    rb_rmsnorm(t, s, hh, w->n2, BT, C, eps);
    check_all(sa->ln2, t, (long)BT * C, "ln2"), check_all(sa->rstd2, s, BT, "rstd2");
    fx_ev *ln2 = rb_exact(sa->ln2, (long)BT * C);
    rb_linear(t, ln2, w->w[AR_GATE], w->b[AR_GATE], BT, C, F);
    check_all(sa->gate, t, (long)BT * F, "gate");
    rb_linear(t, ln2, w->w[AR_UP], w->b[AR_UP], BT, C, F);
    check_all(sa->up, t, (long)BT * F, "up");
    fx_ev *g = rb_exact(sa->gate, (long)BT * F), *u = rb_exact(sa->up, (long)BT * F);
    rb_swiglu(t, g, u, (long)BT * F);
    check_all(sa->act, t, (long)BT * F, "act");
    fx_ev *act = rb_exact(sa->act, (long)BT * F);
    rb_linear(t, act, w->w[AR_DOWN], w->b[AR_DOWN], BT, F, C);
    for (long i = 0; i < (long)BT * C; i++) t[i] = fx_add(hh[i], t[i]);
    check_all(y, t, (long)BT * C, "y");
    free(x), free(t), free(s), free(cs), free(sn), free(ln1), free(q), free(k), free(v), free(P), free(ao), free(hh);
    free(ln2), free(g), free(u), free(act);
}

/* ------------------------------------------------------------------ model */

void rb_model_nll(ar_model *m, const int *ids, int B, int T, double *nll)
{
    int V = ar_model_config(m)->vocab;
    double *lg = malloc(sizeof(double) * T * V);
    for (int b = 0; b < B; b++) {
        const int *id = ids + (long)b * T;
        rb_model_logits(m, id, T, NULL, 0, lg);
        for (int t = 0; t < T - 1; t++) {
            const double *z = lg + (long)t * V;
            double mx = z[0];
            for (int v = 1; v < V; v++) mx = fmax(mx, z[v]);
            fx_acc s = {0};
            for (int v = 0; v < V; v++) fx_acc_add(&s, fx_exp(fx_sub(X(z[v]), X(mx))));
            nll[(long)b * (T - 1) + t] = fx_sub(fx_add(X(mx), fx_log(fx_acc_sum(&s))), X(z[id[t + 1]])).v;
        }
    }
    free(lg);
}

void rb_model_logits(ar_model *m, const int *ids, int T, const int *rows, int nrows, double *logits)
{
    cr_assert(fx_mode_ != FX_BOUNDS, "rb_model_logits: bounds through a whole model exceed the values; use "
                                     "FX_VALUES or FX_MCA (fx_mca_tolerance)");
    const ar_config *c = ar_model_config(m);
    int C = c->hidden, V = c->vocab;
    float *x = malloc(sizeof(float) * T * C);
    cr_assert_eq(ar_model_embed(m, ids, T, x), 0, "%s", ar_last_error());
    fx_ev *h = rb_exact(x, (long)T * C), *n = alloc_ev(C), *lg = alloc_ev(V);
    ar_block_weights bw;
    cr_assert_eq(ar_block_weights_alloc(&bw, c), 0);
    for (int l = 0; l < c->n_layers; l++) {
        rb_weights w;
        cr_assert_eq(ar_model_load_block(m, l, &bw), 0, "%s", ar_last_error());
        rb_weights_from(&w, &bw, c);
        if (c->arch == AR_ARCH_PHI3 || c->arch == AR_ARCH_GLM4) rb_fused_block_forward(c, &w, h, h, 1, T);
        else rb_block_forward(c, &w, h, h, 1, T);
        rb_weights_free(&w);
    }
    ar_block_weights_free(&bw);
    const float *nw;
    float *head = ar_model_read_head(m, &nw);
    cr_assert(head, "%s", ar_last_error());
    double *hd = dup_d(head, (long)V * C), *nwd = dup_d(nw, C);
    for (int j = 0; j < (rows ? nrows : T); j++) {
        int r = rows ? rows[j] : j;
        rb_rmsnorm(n, NULL, h + (long)r * C, nwd, 1, C, c->rms_eps);
        rb_linear(lg, n, hd, NULL, 1, C, V);
        for (int v = 0; v < V; v++) logits[(long)j * V + v] = lg[v].v;
    }
    free(x), free(h), free(n), free(lg), free(head), free(hd), free(nwd);
}

/* ------------------------------------------------ Phi-3 / GLM-4 block */

/* Columns [c0, c0 + n) of the rows of src [R, ld] into dst [R, n]. */
static void take_cols(fx_ev *dst, const fx_ev *src, long R, int ld, int c0, int n)
{
    for (long r = 0; r < R; r++) memcpy(dst + r * n, src + r * ld + c0, sizeof(fx_ev) * n);
}

void rb_fused_block_forward(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD, phi = c->fused_qkv;
    int io = phi ? 1 : 3, igu = io + 1, idn = io + 2;
    double eps = c->rms_eps;
    fx_ev *xc = alloc_ev((long)BT * C), *ln = alloc_ev((long)BT * C), *q = alloc_ev((long)BT * QD);
    fx_ev *k = alloc_ev((long)BT * KD), *v = alloc_ev((long)BT * KD), *P = alloc_ev((long)B * NH * T * T);
    fx_ev *ao = alloc_ev((long)BT * QD), *o = alloc_ev((long)BT * C), *h = alloc_ev((long)BT * C);
    fx_ev *gu = alloc_ev((long)BT * 2 * F), *g = alloc_ev((long)BT * F), *u = alloc_ev((long)BT * F);
    fx_ev *qkv = alloc_ev((long)BT * (QD + 2 * KD));
    fx_ev *cs = alloc_ev((long)T * ar_rope_rotated_dim(c) / 2), *sn = alloc_ev((long)T * ar_rope_rotated_dim(c) / 2);
    memcpy(xc, x, sizeof(fx_ev) * BT * C);   /* y may be x */
    rb_rmsnorm(ln, NULL, xc, w->n1, BT, C, eps);
    if (phi) {
        rb_linear(qkv, ln, w->w[0], w->b[0], BT, C, QD + 2 * KD);
        take_cols(q, qkv, BT, QD + 2 * KD, 0, QD);
        take_cols(k, qkv, BT, QD + 2 * KD, QD, KD);
        take_cols(v, qkv, BT, QD + 2 * KD, QD + KD, KD);
    } else {
        rb_linear(q, ln, w->w[0], w->b[0], BT, C, QD);
        rb_linear(k, ln, w->w[1], w->b[1], BT, C, KD);
        rb_linear(v, ln, w->w[2], w->b[2], BT, C, KD);
    }
    rb_rope_tables(cs, sn, c, T);
    ra_rope_slice(q, cs, sn, B, T, NH, (long)NH * HD, HD, 0, ar_rope_rotated_dim(c), c->rope_interleaved, 1);
    ra_rope_slice(k, cs, sn, B, T, NKV, (long)NKV * HD, HD, 0, ar_rope_rotated_dim(c), c->rope_interleaved, 1);
    rb_attention(ao, P, q, k, v, B, T, NH, NKV, HD, c->sliding_window);
    rb_linear(o, ao, w->w[io], w->b[io], BT, QD, C);
    if (w->pa) rb_rmsnorm(o, NULL, o, w->pa, BT, C, eps);
    for (long i = 0; i < (long)BT * C; i++) h[i] = fx_add(o[i], xc[i]);
    rb_rmsnorm(ln, NULL, h, w->n2, BT, C, eps);
    rb_linear(gu, ln, w->w[igu], w->b[igu], BT, C, 2 * F);
    take_cols(g, gu, BT, 2 * F, 0, F);
    take_cols(u, gu, BT, 2 * F, F, F);
    rb_swiglu(g, g, u, (long)BT * F);
    rb_linear(o, g, w->w[idn], w->b[idn], BT, F, C);
    if (w->pm) rb_rmsnorm(o, NULL, o, w->pm, BT, C, eps);
    for (long i = 0; i < (long)BT * C; i++) y[i] = fx_add(h[i], o[i]);
    free(xc), free(ln), free(q), free(k), free(v), free(P), free(ao), free(o), free(h), free(gu), free(g), free(u);
    free(qkv), free(cs), free(sn);
}
