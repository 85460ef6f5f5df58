/* attn_ref.c — see attn_ref.h. */
#include "attn_ref.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "refblock.h"

static fx_ev X(double v) { return fx_exact(v); }

/* ------------------------------------------------------------ the fixture */

void ar_refs_load(ar_refs *r)
{
    r->json = fx_load_json("tests/fixtures/moe/attn_refs.json");
    r->bin = fx_slurp("tests/fixtures/moe/attn_refs.bin", &r->len);
}

void ar_refs_free(ar_refs *r)
{
    cJSON_Delete(r->json);
    free(r->bin);
}

const cJSON *ar_refs_case(const ar_refs *r, const char *cs)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r->json, "cases"), cs);
    cr_assert(cJSON_IsObject(c), "attn_refs.json: no case %s", cs);
    return c;
}

double ar_refs_num(const ar_refs *r, const char *cs, int cfg, const char *key)
{
    const cJSON *c = ar_refs_case(r, cs);
    if (cfg) c = cJSON_GetObjectItemCaseSensitive(c, "config");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    cr_assert(cJSON_IsNumber(v), "attn_refs.json: case %s has no number %s", cs, key);
    return v->valuedouble;
}

float *ar_refs_tensor_opt(const ar_refs *r, const char *cs, const char *name, long *n)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(ar_refs_case(r, cs), "tensors"), name);
    if (!t) return NULL;
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    long cnt = 1;
    const cJSON *s;
    cJSON_ArrayForEach(s, shape) cnt *= (long)s->valuedouble;
    size_t off = (size_t)cJSON_GetObjectItemCaseSensitive(t, "offset")->valuedouble;
    int bf16 = !strcmp(cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring, "bf16");
    cr_assert(off + (size_t)cnt * (bf16 ? 2 : 4) <= r->len, "attn_refs.bin: %s/%s past the end", cs, name);
    float *f = malloc(sizeof(float) * cnt);
    for (long i = 0; i < cnt; i++) {
        const unsigned char *p = r->bin + off + (size_t)i * (bf16 ? 2 : 4);
        uint32_t u = bf16 ? (uint32_t)(p[0] | p[1] << 8) << 16
                          : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        memcpy(&f[i], &u, 4);
    }
    if (n) *n = cnt;
    return f;
}

float *ar_refs_tensor(const ar_refs *r, const char *cs, const char *name, long *n)
{
    float *f = ar_refs_tensor_opt(r, cs, name, n);
    cr_assert(f, "attn_refs.json: case %s has no tensor %s", cs, name);
    return f;
}

/* -------------------------------------------------------------- RoPE slice */

void ra_rope_slice(fx_ev *x, const fx_ev *cos_t, const fx_ev *sin_t, int B, int T, int H, long rs, long hs, int off,
                   int D, int interleave, int sign)
{
    int H2 = D / 2, step = interleave ? 2 : 1, other = interleave ? 1 : H2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                fx_ev *v = x + ((long)b * T + t) * rs + off + (long)h * hs;
                for (int i = 0; i < H2; i++) {
                    fx_ev c = cos_t[(long)t * H2 + i], s = fx_scale(sin_t[(long)t * H2 + i], sign);
                    fx_ev *p0 = v + i * step, *p1 = p0 + other, a = *p0, bb = *p1;
                    *p0 = fx_sub(fx_mul(a, c), fx_mul(bb, s));
                    *p1 = fx_add(fx_mul(bb, c), fx_mul(a, s));
                }
            }
}

/* --------------------------------------------------------------- attention */

static fx_ev dotv(const fx_ev *a, const fx_ev *b, int n)
{
    fx_acc s = {0};
    for (int i = 0; i < n; i++) fx_acc_add(&s, fx_mul(a[i], b[i]));
    return fx_acc_sum(&s);
}

void ra_attention(fx_ev *out, fx_ev *P, const fx_ev *q, const fx_ev *k, const fx_ev *v, const double *sinks, int B,
                  int T, int NH, int NKV, int DK, int DV, double scale, int window)
{
    int group = NH / NKV;
    fx_ev *z = malloc(sizeof(fx_ev) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int g = h / group, s0 = (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
                const fx_ev *qt = q + (((long)b * T + t) * NH + h) * DK;
                fx_ev m = sinks ? X(sinks[h]) : X(-INFINITY);
                for (int s = s0; s <= t; s++) {
                    z[s] = fx_mul(dotv(qt, k + (((long)b * T + s) * NKV + g) * DK, DK), X(scale));
                    if (z[s].v > m.v) m = z[s];
                }
                fx_acc sum = {0};
                if (sinks) fx_acc_add(&sum, fx_exp(fx_sub(X(sinks[h]), m)));
                for (int s = s0; s <= t; s++) fx_acc_add(&sum, z[s] = fx_exp(fx_sub(z[s], m)));
                fx_ev inv = fx_div(X(1), fx_acc_sum(&sum));
                fx_acc o[DV];
                memset(o, 0, sizeof o);
                fx_ev *Pt = P ? P + (((long)b * NH + h) * T + t) * T : NULL;
                if (Pt)
                    for (int s = 0; s < T; s++) Pt[s] = X(0);
                for (int s = s0; s <= t; s++) {
                    fx_ev p = fx_mul(z[s], inv);
                    if (Pt) Pt[s] = p;
                    const fx_ev *vs = v + (((long)b * T + s) * NKV + g) * DV;
                    for (int i = 0; i < DV; i++) fx_acc_add(&o[i], fx_mul(p, vs[i]));
                }
                fx_ev *ot = out + (((long)b * T + t) * NH + h) * DV;
                for (int i = 0; i < DV; i++) ot[i] = fx_acc_sum(&o[i]);
            }
    free(z);
}

void ra_attention_backward(fx_ev *dq, fx_ev *dk, fx_ev *dv, fx_ev *dsinks, const fx_ev *dout, const fx_ev *P,
                           const fx_ev *q, const fx_ev *k, const fx_ev *v, int B, int T, int NH, int NKV, int DK,
                           int DV, double scale)
{
    int group = NH / NKV;
    long NQ = (long)B * T * NH * DK, NK = (long)B * T * NKV * DK, NV = (long)B * T * NKV * DV;
    fx_acc *aq = calloc(NQ, sizeof(fx_acc)), *ak = calloc(NK, sizeof(fx_acc)), *av = calloc(NV, sizeof(fx_acc));
    fx_acc *as = calloc(NH, sizeof(fx_acc));
    fx_ev *dP = malloc(sizeof(fx_ev) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int g = h / group;
                const fx_ev *Pt = P + (((long)b * NH + h) * T + t) * T, *dot_ = dout + (((long)b * T + t) * NH + h) * DV;
                fx_acc rho = {0}, mass = {0};
                for (int s = 0; s <= t; s++) {
                    if (Pt[s].v == 0) continue;
                    dP[s] = dotv(dot_, v + (((long)b * T + s) * NKV + g) * DV, DV);
                    fx_acc_add(&rho, fx_mul(Pt[s], dP[s])), fx_acc_add(&mass, Pt[s]);
                }
                fx_ev r = fx_acc_sum(&rho), rf = fx_round(r);
                for (int s = 0; s <= t; s++) {
                    if (Pt[s].v == 0) continue;
                    fx_ev dz = fx_mul(fx_mul(Pt[s], fx_sub(dP[s], rf)), X(scale));
                    long qo = (((long)b * T + t) * NH + h) * DK, ko = (((long)b * T + s) * NKV + g) * DK;
                    long vo = (((long)b * T + s) * NKV + g) * DV;
                    for (int i = 0; i < DK; i++)
                        fx_acc_add(&aq[qo + i], fx_mul(dz, k[ko + i])), fx_acc_add(&ak[ko + i], fx_mul(dz, q[qo + i]));
                    for (int i = 0; i < DV; i++) fx_acc_add(&av[vo + i], fx_mul(Pt[s], dot_[i]));
                }
                if (dsinks) fx_acc_add(&as[h], fx_scale(fx_round(fx_mul(fx_sub(X(1), fx_acc_sum(&mass)), r)), -1));
            }
    for (long i = 0; i < NQ; i++) dq[i] = fx_acc_sum(&aq[i]);
    for (long i = 0; i < NK; i++) dk[i] = fx_acc_sum(&ak[i]);
    for (long i = 0; i < NV; i++) dv[i] = fx_acc_sum(&av[i]);
    if (dsinks)
        for (int h = 0; h < NH; h++) dsinks[h] = fx_acc_sum(&as[h]);
    free(aq), free(ak), free(av), free(as), free(dP);
}

/* --------------------------------------------------------------------- MLA */

/* The forward's intermediates (ar_mla_acts' names). */
typedef struct {
    fx_ev *qa, *qs, *qan, *q, *kva, *lat, *ls, *latn, *kvb, *k, *v, *P, *ao, *y;
} ra_mla_acts;

static fx_ev *evs(long n) { return calloc(n > 0 ? n : 1, sizeof(fx_ev)); }

static void mla_forward_keep(ra_mla_acts *a, const fx_ev *x, const ra_mla_weights *w, const ar_mla_dims *d,
                             const fx_ev *cos_t, const fx_ev *sin_t, int B, int T)
{
    long BT = (long)B * T;
    int NH = d->NH, DQ = d->DN + d->DR, KV = d->KL + d->DR, NKV = d->DN + d->DV;
    double eps = d->eps;
    a->qa = evs(BT * d->QL), a->qs = evs(BT), a->qan = evs(BT * d->QL), a->q = evs(BT * NH * DQ);
    a->kva = evs(BT * KV), a->lat = evs(BT * d->KL), a->ls = evs(BT), a->latn = evs(BT * d->KL);
    a->kvb = evs(BT * NH * NKV), a->k = evs(BT * NH * DQ), a->v = evs(BT * NH * d->DV);
    a->P = evs((long)B * NH * T * T), a->ao = evs(BT * NH * d->DV), a->y = evs(BT * d->C);
    if (d->QL > 0) {
        rb_linear(a->qa, x, w->w[AR_MLA_Q_A], w->b[AR_MLA_Q_A], (int)BT, d->C, d->QL);
        rb_rmsnorm(a->qan, a->qs, a->qa, w->qn, (int)BT, d->QL, eps);
        rb_linear(a->q, a->qan, w->w[AR_MLA_Q_B], w->b[AR_MLA_Q_B], (int)BT, d->QL, NH * DQ);
    } else {
        rb_linear(a->q, x, w->w[AR_MLA_Q], w->b[AR_MLA_Q], (int)BT, d->C, NH * DQ);
    }
    rb_linear(a->kva, x, w->w[AR_MLA_KV_A], w->b[AR_MLA_KV_A], (int)BT, d->C, KV);
    for (long r = 0; r < BT; r++) memcpy(a->lat + r * d->KL, a->kva + r * KV, sizeof(fx_ev) * d->KL);
    rb_rmsnorm(a->latn, a->ls, a->lat, w->kvn, (int)BT, d->KL, eps);
    rb_linear(a->kvb, a->latn, w->w[AR_MLA_KV_B], w->b[AR_MLA_KV_B], (int)BT, d->KL, NH * NKV);
    ra_rope_slice(a->q, cos_t, sin_t, B, T, NH, (long)NH * DQ, DQ, d->DN, d->DR, d->interleave, 1);
    ra_rope_slice(a->kva, cos_t, sin_t, B, T, 1, KV, KV, d->KL, d->DR, d->interleave, 1);
    for (long r = 0; r < BT; r++)
        for (int h = 0; h < NH; h++) {
            const fx_ev *src = a->kvb + (r * NH + h) * NKV;
            fx_ev *k = a->k + (r * NH + h) * DQ;
            for (int i = 0; i < d->DN; i++) k[i] = src[i];
            for (int i = 0; i < d->DR; i++) k[d->DN + i] = a->kva[r * KV + d->KL + i];
            for (int i = 0; i < d->DV; i++) a->v[(r * NH + h) * d->DV + i] = src[d->DN + i];
        }
    ra_attention(a->ao, a->P, a->q, a->k, a->v, NULL, B, T, NH, NH, DQ, d->DV, d->scale, 0);
    rb_linear(a->y, a->ao, w->w[AR_MLA_O], w->b[AR_MLA_O], (int)BT, NH * d->DV, d->C);
}

static void mla_acts_free(ra_mla_acts *a)
{
    fx_ev *p[] = {a->qa, a->qs, a->qan, a->q, a->kva, a->lat, a->ls, a->latn, a->kvb, a->k, a->v, a->P, a->ao, a->y};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

void ra_mla_forward(fx_ev *y, const fx_ev *x, const ra_mla_weights *w, const ar_mla_dims *d, const fx_ev *cos_t,
                    const fx_ev *sin_t, int B, int T)
{
    ra_mla_acts a;
    mla_forward_keep(&a, x, w, d, cos_t, sin_t, B, T);
    memcpy(y, a.y, sizeof(fx_ev) * B * T * d->C);
    mla_acts_free(&a);
}

/* dx-style accumulators: sum them into out. */
static void acc_out(fx_ev *out, fx_acc *acc, long n)
{
    for (long i = 0; i < n; i++) out[i] = fx_acc_sum(&acc[i]);
}

/* db [N] = column sums of dy [R, N]. */
static void bias_grad(fx_ev *db, const fx_ev *dy, int R, int N)
{
    for (int n = 0; n < N; n++) {
        fx_acc s = {0};
        for (int r = 0; r < R; r++) fx_acc_add(&s, dy[(long)r * N + n]);
        db[n] = fx_acc_sum(&s);
    }
}

/* Linear i's backward: dW, db (when wanted) and din += onto acc (when given). */
static void lin_back(fx_ev *const dW[], fx_ev *const db[], fx_acc *acc, const fx_ev *dy, const fx_ev *in,
                     const ra_mla_weights *w, const ar_mla_dims *d, int i, int R)
{
    int N, K;
    ar_mla_linear_shape(d, i, &N, &K);
    if (dW[i]) rb_linear_dW(dW[i], dy, in, R, K, N);
    if (db[i] && w->b[i]) bias_grad(db[i], dy, R, N);
    if (acc) rb_linear_dx(acc, dy, w->w[i], R, K, N);
}

void ra_mla_backward(fx_ev *const dW[AR_MLA_NLINEAR], fx_ev *const db[AR_MLA_NLINEAR], fx_ev *dx, const fx_ev *x,
                     const fx_ev *dy, const ra_mla_weights *w, const ar_mla_dims *d, const fx_ev *cos_t,
                     const fx_ev *sin_t, int B, int T)
{
    ra_mla_acts a;
    mla_forward_keep(&a, x, w, d, cos_t, sin_t, B, T);
    int R = B * T, NH = d->NH, DQ = d->DN + d->DR, KV = d->KL + d->DR, NKV = d->DN + d->DV;
    long BT = R;
    fx_acc *acc = calloc(BT * (NH * d->DV + d->C + d->KL + d->QL + 1), sizeof(fx_acc));
    fx_ev *dao = evs(BT * NH * d->DV), *dq = evs(BT * NH * DQ), *dk = evs(BT * NH * DQ), *dv = evs(BT * NH * d->DV);
    fx_ev *dkvb = evs(BT * NH * NKV), *dkva = evs(BT * KV), *dlatn = evs(BT * d->KL), *dqan = evs(BT * d->QL);
    fx_ev *dqa = evs(BT * d->QL);
    lin_back(dW, db, acc, dy, a.ao, w, d, AR_MLA_O, R);
    acc_out(dao, acc, BT * NH * d->DV);
    ra_attention_backward(dq, dk, dv, NULL, dao, a.P, a.q, a.k, a.v, B, T, NH, NH, DQ, d->DV, d->scale);
    for (long r = 0; r < BT; r++) {
        for (int h = 0; h < NH; h++) {
            for (int i = 0; i < d->DN; i++) dkvb[(r * NH + h) * NKV + i] = dk[(r * NH + h) * DQ + i];
            for (int i = 0; i < d->DV; i++) dkvb[(r * NH + h) * NKV + d->DN + i] = dv[(r * NH + h) * d->DV + i];
        }
        for (int i = 0; i < d->DR; i++) {
            fx_acc s = {0};
            for (int h = 0; h < NH; h++) fx_acc_add(&s, dk[(r * NH + h) * DQ + d->DN + i]);
            dkva[r * KV + d->KL + i] = fx_acc_sum(&s);
        }
    }
    ra_rope_slice(dq, cos_t, sin_t, B, T, NH, (long)NH * DQ, DQ, d->DN, d->DR, d->interleave, -1);
    ra_rope_slice(dkva, cos_t, sin_t, B, T, 1, KV, KV, d->KL, d->DR, d->interleave, -1);
    fx_acc *al = acc + BT * NH * d->DV, *ax = al + BT * d->KL, *aq = ax + BT * d->C;
    lin_back(dW, db, al, dkvb, a.latn, w, d, AR_MLA_KV_B, R);
    acc_out(dlatn, al, BT * d->KL);
    fx_ev *dlat = evs(BT * d->KL);
    rb_rmsnorm_backward(dlat, dlatn, a.lat, w->kvn, a.ls, R, d->KL);
    for (long r = 0; r < BT; r++)
        for (int i = 0; i < d->KL; i++) dkva[r * KV + i] = dlat[r * d->KL + i];
    lin_back(dW, db, dx ? ax : NULL, dkva, x, w, d, AR_MLA_KV_A, R);
    if (d->QL > 0) {
        lin_back(dW, db, aq, dq, a.qan, w, d, AR_MLA_Q_B, R);
        acc_out(dqan, aq, BT * d->QL);
        rb_rmsnorm_backward(dqa, dqan, a.qa, w->qn, a.qs, R, d->QL);
        lin_back(dW, db, dx ? ax : NULL, dqa, x, w, d, AR_MLA_Q_A, R);
    } else {
        lin_back(dW, db, dx ? ax : NULL, dq, x, w, d, AR_MLA_Q, R);
    }
    if (dx) acc_out(dx, ax, BT * d->C);
    free(acc), free(dao), free(dq), free(dk), free(dv), free(dkvb), free(dkva), free(dlatn), free(dqan), free(dqa);
    free(dlat);
    mla_acts_free(&a);
}

/* ------------------------------------------------------ finite differences */

static double loss_of(void (*fn)(void *, double *), void *ctx, const double *r, long nout, double *out, double *mag)
{
    fn(ctx, out);
    double L = 0, m = 0;
    for (long i = 0; i < nout; i++) L += out[i] * r[i], m += fabs(out[i] * r[i]);
    *mag = m;
    return L;
}

void ra_check_fd(void (*fn)(void *ctx, double *out), void *ctx, const double *r, long nout, double *p, long n,
                 long stride, const double *want, const char *what)
{
    fx_set_mode(FX_VALUES, 0);
    const double h = 1e-5;
    double *out = malloc(sizeof(double) * nout);
    for (long j = 0; j < n; j += stride) {
        double keep = p[j], f[4], mag = 0, m, err;
        const double step[4] = {h, -h, 2 * h, -2 * h};
        for (int s = 0; s < 4; s++) {
            p[j] = keep + step[s];
            f[s] = loss_of(fn, ctx, r, nout, out, &m);
            mag = fmax(mag, m);
        }
        p[j] = keep;
        double g = fx_central_diff(f[0], f[1], f[2], f[3], h, mag, &err);
        fx_set_mode(FX_BOUNDS, 0);
        fx_assert_within(want[j], g, err, "%s[%ld] analytic vs finite differences", what, j);
        fx_set_mode(FX_VALUES, 0);
    }
    free(out);
    fx_set_mode(FX_BOUNDS, 0);
}

double *ra_dup(const float *f, long n)
{
    double *d = malloc(sizeof(double) * (n > 0 ? n : 1));
    for (long i = 0; i < n; i++) d[i] = f[i];
    return d;
}

void ra_split(const fx_ev *e, double *v, double *b, long n)
{
    for (long i = 0; i < n; i++) v[i] = e[i].v, b[i] = e[i].e;
}
