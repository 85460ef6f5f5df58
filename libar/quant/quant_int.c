/* quant_int.c — int_sym / int_asym fake-quantizers, STE backward, opt-RTN.
 * See quant_int.h for the formulas; comments here explain the choices. */
#include "quant_int.h"
#include "quant_int_kern.h"
#include "dtype.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Work below this many elements is not worth waking OpenMP threads for. */
#define AR_QUANT_PAR_MIN (1 << 15)

/* Everything a group's forward decided, so the backward can replay it. */
typedef struct {
    float wmin, wmax;   /* group range, forced to contain 0 */
    float al, be;       /* α, β after the [0, hi] clamp */
    float s;            /* scale used: fp16-rounded, magnitude-floored */
    float z;            /* asym zero point (an integer), 0 for sym */
    int   s_live;       /* the magnitude floor did not clamp s (gradient passes) */
    int   sym_c_wins;   /* sym: which of c = wmax·β (1), a = -wmin·α (0) set M; 2 = tie */
} group_state;

/* Where group g of a row starts and how many real (unpadded) columns it has. */
static void group_span(int k, int group_size, int g, int *k0, int *len)
{
    if (group_size <= 0) { *k0 = 0; *len = k; return; }
    *k0 = g * group_size;
    *len = (k - *k0 < group_size) ? k - *k0 : group_size;
}

int ar_quant_int_check(const ar_quant_spec *qs)
{
    if (!qs) return ar_error("quant: no spec");
    if (qs->bits < 2 || qs->bits > 8)
        return ar_error("quant: %d bits not supported by the int quantizer (2..8)", qs->bits);
    if (qs->group_size == 0 || qs->group_size < -1)
        return ar_error("quant: group size %d not supported (G > 0 or -1)", qs->group_size);
    return 0;
}

static float minmax_hi(const ar_quant_spec *qs) { return qs->minmax_hi > 0 ? qs->minmax_hi : 1.0f; }

static float clamp_to(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

static float scale_floor(const ar_quant_spec *qs) { return (qs->flags & AR_QF_F32_SCALE) ? 1e-8f : 1e-5f; }

/* The cast to scale_dtype: fp16 unless f32 scales were asked for. */
static float to_scale_dtype(const ar_quant_spec *qs, float s)
{
    return (qs->flags & AR_QF_F32_SCALE) ? s : ar_round_f16(s);
}

/* AutoRound's `where(s < 0, clamp(s, max=-t), clamp(s, min=t))` on an
 * already cast scale: the clamped value is itself a scale_dtype value, so the
 * floor 1e-5 becomes fp16(1e-5). -0 counts as positive, so an all-zero group
 * gets +t. *live tells whether the clamp left s alone (gradient passes). */
static float floor_magnitude(const ar_quant_spec *qs, float s, int *live)
{
    float t = scale_floor(qs);
    if (s < 0) { *live = s <= -t; return *live ? s : to_scale_dtype(qs, -t); }
    *live = s >= t;
    return *live ? s : to_scale_dtype(qs, t);
}

/* Scale (and zero point) of one group, recorded in *gs. idx is the group's
 * index into the [N, ngroups] tunables. The range of the group's real
 * elements is widened to contain 0 (the zero pad of a short last group would
 * contain 0 anyway). */
static void group_setup(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int len,
                        const ar_quant_params *p, size_t idx, group_state *gs)
{
    float hi = minmax_hi(qs);
    memset(gs, 0, sizeof *gs);
    kern->range(w, len, &gs->wmin, &gs->wmax);
    gs->al = (p && p->alpha) ? clamp_to(p->alpha[idx], 0.0f, hi) : 1.0f;
    gs->be = (p && p->beta)  ? clamp_to(p->beta[idx], 0.0f, hi) : 1.0f;
    float raw;
    if (qs->sym && p && p->init_scale) {
        raw = p->init_scale[idx] * gs->be;
    } else if (qs->sym) {
        float m = (float)(1 << (qs->bits - 1));
        float a = -(gs->wmin * gs->al), c = gs->wmax * gs->be;
        /* s < 0 maps the positive extreme to -m; ties (c == a) also go negative. */
        float sign = (c < a) ? 1.0f : -1.0f;
        gs->sym_c_wins = (c > a) ? 1 : (c < a ? 0 : 2);
        raw = sign * (c > a ? c : a) / m;
    } else {
        float maxq = (float)((1 << qs->bits) - 1);
        raw = (gs->wmax * gs->be - gs->wmin * gs->al) / maxq;
    }
    gs->s = floor_magnitude(qs, to_scale_dtype(qs, raw), &gs->s_live);
    if (!qs->sym) gs->z = nearbyintf(-(gs->wmin * gs->al) / gs->s);
}

static void level_bounds(const ar_quant_spec *qs, float *lo, float *hi)
{
    if (qs->sym) { *lo = -(float)(1 << (qs->bits - 1)); *hi = (float)((1 << (qs->bits - 1)) - 1); }
    else         { *lo = 0.0f; *hi = (float)((1 << qs->bits) - 1); }
}

/* What the element loops (quant_int_kern.h) need of a group's state. */
static ar_qint_group kern_group(const ar_quant_spec *qs, const group_state *gs)
{
    ar_qint_group g = { gs->s, gs->z, 0, 0, qs->sym ? (float)(1 << (qs->bits - 1)) : 0.0f,
                        (qs->flags & AR_QF_BF16) != 0 };
    level_bounds(qs, &g.lo, &g.hi);
    return g;
}

/* The integer path's argument checks, shared by forward and backward: a valid
 * spec, and init_scale only with a symmetric scheme. 0 or -1 (ar_error). */
static int int_args_check(const ar_quant_spec *qs, const ar_quant_params *p)
{
    if (ar_quant_int_check(qs)) return -1;
    if (!qs->sym && p && p->init_scale) return ar_error("quant: init_scale needs a symmetric scheme");
    return 0;
}

/* One group of w [n, k] ready to quantize: where its weights start, how many
 * there are, and its scale state. */
typedef struct {
    size_t off;
    int len;
    group_state gs;
} group_view;

/* Group r of the row-major [n, ng] grid of w [n, k], set up with p. */
static group_view group_open(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int k, int ng,
                             const ar_quant_params *p, long r)
{
    group_view v;
    int row = (int)(r / ng), g = (int)(r % ng), k0;
    group_span(k, qs->group_size, g, &k0, &v.len);
    v.off = (size_t)row * k + k0;
    group_setup(kern, qs, w + v.off, v.len, p, (size_t)r, &v.gs);
    return v;
}

int ar_quant_int_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                         const ar_quant_params *p, const ar_quant_out *out)
{
    return ar_quant_int_forward_with(ar_qint_kernels_best(), qs, w, n, k, p, out);
}

int ar_quant_int_forward_with(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n, int k,
                              const ar_quant_params *p, const ar_quant_out *out)
{
    if (int_args_check(qs, p)) return -1;
    int ng = ar_quant_ngroups(k, qs->group_size);
    int32_t zp_sym = 1 << (qs->bits - 1);
    long total = (long)n * ng;
    #pragma omp parallel for schedule(static) if ((long)n * k >= AR_QUANT_PAR_MIN)
    for (long r = 0; r < total; r++) {
        group_view g = group_open(kern, qs, w, k, ng, p, r);
        ar_qint_group kg = kern_group(qs, &g.gs);
        kern->forward(&kg, w + g.off, (p && p->v) ? p->v + g.off : NULL, g.len, out->wq ? out->wq + g.off : NULL,
                      out->codes ? out->codes + g.off : NULL);
        if (out->scale) out->scale[r] = g.gs.s;
        if (out->zp) out->zp[r] = qs->sym ? zp_sym : (int32_t)g.gs.z;
    }
    return 0;
}

/* ---- backward ----------------------------------------------------------- */

/* Carry the scale (and zero-point) gradient of one group back to α and β. */
static void group_backward_minmax(const ar_quant_spec *qs, const group_state *gs, const ar_quant_params *p,
                                  size_t idx, double ds, double dz, float *dalpha, float *dbeta)
{
    double dal = 0.0, dbe = 0.0;
    if (!qs->sym) {
        double wmin_eff = (double)gs->wmin * gs->al, s = gs->s;
        ds += dz * wmin_eff / (s * s);            /* z = round(-wmin'/s) */
        double dwmin_eff = -dz / s;
        double draw = gs->s_live ? ds : 0.0;
        double maxq = (double)((1 << qs->bits) - 1);
        dwmin_eff -= draw / maxq;
        dal = dwmin_eff * gs->wmin;
        dbe = draw / maxq * gs->wmax;
    } else if (p && p->init_scale) {
        dbe = (gs->s_live ? ds : 0.0) * p->init_scale[idx];
    } else {
        double m = (double)(1 << (qs->bits - 1));
        double sign = gs->sym_c_wins == 0 ? 1.0 : -1.0;
        double dM = (gs->s_live ? ds : 0.0) * sign / m;
        double to_c = gs->sym_c_wins == 1 ? dM : (gs->sym_c_wins == 2 ? dM / 2 : 0.0);
        double to_a = gs->sym_c_wins == 0 ? dM : (gs->sym_c_wins == 2 ? dM / 2 : 0.0);
        dbe = to_c * gs->wmax;                    /* c = wmax·β */
        dal = to_a * -(double)gs->wmin;           /* a = -wmin·α */
    }
    if (dalpha) dalpha[idx] += (float)dal;
    if (dbeta)  dbeta[idx]  += (float)dbe;
}

int ar_quant_int_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                          const ar_quant_params *p, const float *dwq,
                          float *dv, float *dalpha, float *dbeta)
{
    return ar_quant_int_backward_with(ar_qint_kernels_best(), qs, w, n, k, p, dwq, dv, dalpha, dbeta);
}

/* Groups whose scale-gradient sums run side by side: eight independent
 * chains keep the adder busy where one chain waits on each add's latency. */
enum { SUM_LANES = 8 };

/* dL/ds and dL/dz of groups r0 .. r0+nb (nb <= SUM_LANES): the element
 * loops write each element's terms into ts / tz (SUM_LANES × cap doubles
 * each; tz NULL for sym) and add dL/dV; the sums then run in element order,
 * as one loop over each group would add them. A short group's terms are
 * padded with +0, which leaves a sum that starts at +0 unchanged: in
 * round-to-nearest x + (+0) = x for every x but -0, and a sum started at +0
 * never becomes -0. Then ds, dz go to α and β. */
static void backward_lanes(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int k, int ng,
                           const ar_quant_params *p, const float *dwq, float *dv, float *vstep, float lr,
                           float *dalpha, float *dbeta, long r0, int nb, int cap, double *ts, double *tz)
{
    group_view g[SUM_LANES];
    int maxlen = 0;
    for (int l = 0; l < nb; l++) {
        g[l] = group_open(kern, qs, w, k, ng, p, r0 + l);
        ar_qint_group kg = kern_group(qs, &g[l].gs);
        size_t off = g[l].off;
        double *tsl = ts + (size_t)l * cap, *tzl = tz ? tz + (size_t)l * cap : NULL;
        if (vstep) kern->backward_step(&kg, w + off, vstep + off, dwq + off, g[l].len, lr, tsl, tzl);
        else kern->backward(&kg, w + off, (p && p->v) ? p->v + off : NULL, dwq + off, g[l].len,
                            dv ? dv + off : NULL, tsl, tzl);
        if (g[l].len > maxlen) maxlen = g[l].len;
    }
    for (int l = 0; l < SUM_LANES; l++) {
        int len = l < nb ? g[l].len : 0;
        memset(ts + (size_t)l * cap + len, 0, sizeof(double) * (size_t)(maxlen - len));
        if (tz) memset(tz + (size_t)l * cap + len, 0, sizeof(double) * (size_t)(maxlen - len));
    }
    double as[SUM_LANES] = {0}, az[SUM_LANES] = {0};
    for (int j = 0; j < maxlen; j++)
        for (int l = 0; l < SUM_LANES; l++) as[l] += ts[(size_t)l * cap + j];
    if (tz)
        for (int j = 0; j < maxlen; j++)
            for (int l = 0; l < SUM_LANES; l++) az[l] += tz[(size_t)l * cap + j];
    for (int l = 0; l < nb; l++) group_backward_minmax(qs, &g[l].gs, p, (size_t)(r0 + l), as[l], az[l], dalpha, dbeta);
}

/* The backward, with dV added into dv, or (vstep = p->v) SignSGD's step
 * on V taken in place at rate lr. */
static int backward_run(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n, int k,
                        const ar_quant_params *p, const float *dwq, float *dv, float *vstep, float lr,
                        float *dalpha, float *dbeta)
{
    int ng = ar_quant_ngroups(k, qs->group_size);
    int cap = (qs->group_size > 0 && qs->group_size < k) ? qs->group_size : k;
    long total = (long)n * ng, batches = (total + SUM_LANES - 1) / SUM_LANES;
    size_t per = (size_t)SUM_LANES * cap;
    int failed = 0;
    #pragma omp parallel if ((long)n * k >= AR_QUANT_PAR_MIN)
    {
        double *buf = malloc(sizeof(double) * per * (qs->sym ? 1 : 2));
        if (!buf) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (long b = 0; b < batches; b++) {
            if (!buf) continue;
            long r0 = b * SUM_LANES;
            int nb = total - r0 < SUM_LANES ? (int)(total - r0) : SUM_LANES;
            backward_lanes(kern, qs, w, k, ng, p, dwq, dv, vstep, lr, dalpha, dbeta, r0, nb, cap, buf,
                           qs->sym ? NULL : buf + per);
        }
        free(buf);
    }
    return failed ? ar_error("quant: out of memory in the quantizer backward") : 0;
}

int ar_quant_int_backward_with(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n, int k,
                               const ar_quant_params *p, const float *dwq, float *dv, float *dalpha, float *dbeta)
{
    if (int_args_check(qs, p)) return -1;
    return backward_run(kern, qs, w, n, k, p, dwq, dv, NULL, 0.0f, dalpha, dbeta);
}

int ar_quant_int_backward_step(const ar_quant_spec *qs, const float *w, int n, int k, const ar_quant_params *p,
                               const float *dwq, float *v, float lr, float *dalpha, float *dbeta)
{
    return ar_quant_int_backward_step_with(ar_qint_kernels_best(), qs, w, n, k, p, dwq, v, lr, dalpha, dbeta);
}

int ar_quant_int_backward_step_with(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n,
                                    int k, const ar_quant_params *p, const float *dwq, float *v, float lr,
                                    float *dalpha, float *dbeta)
{
    if (int_args_check(qs, p)) return -1;
    if (!p || p->v != v || !v) return ar_error("quant: the backward's V step needs V as the tunables' V");
    return backward_run(kern, qs, w, n, k, p, dwq, NULL, v, lr, dalpha, dbeta);
}

/* ---- opt-RTN ------------------------------------------------------------- */

/* Precision of the tensor ops of the search: PyTorch eager rounds every op's
 * result to the weight dtype (bf16 by default); f32 otherwise. */
static float tround(const ar_quant_spec *qs, float x)
{
    return (qs->flags & AR_QF_BF16) ? ar_round_bf16(x) : x;
}

/* AutoRound's get_reciprocal: 1/x, or 0 where |x| < 1e-30 (bf16/f32 eps). */
static float safe_recip(const ar_quant_spec *qs, float x)
{
    return fabsf(x) >= 1e-30f ? tround(qs, 1.0f / x) : 0.0f;
}

/* One group row as AutoRound sees it: padded to plen columns (weights 0,
 * importances 1e-5 in the pad), with the importances already repaired. */
typedef struct {
    float *w, *imp;
    int plen;
} padded_group;

/* Half the nominal group size as Python's `group_size // 2` gives it: -1 for
 * G = -1, which marks every row for replacement below. */
static int zero_half(int group_size) { return group_size > 0 ? group_size / 2 : -1; }

static int count_zero_importance(const float *imp, int len)
{
    int zeros = 0;
    for (int j = 0; j < len; j++) zeros += imp[j] <= 1e-30f;
    return zeros;
}

/* Zero repair of AutoRound's `_imatrix_handle_zero` for one padded group row,
 * run only when the imatrix holds an exact 0 somewhere. Rows with more than
 * G/2 near-zero importances fall back to weight magnitudes (|w|, or for
 * bits > 3 |w| + sqrt(Σw²/32) in the weight dtype). Then, if any group of the
 * layer has 1..G/2 zeros (mean_fill), every exact 0 left — also those a |w|
 * fallback produced — takes sum(row) / (plen - zeros), zeros counted before
 * the fallback. That order is AutoRound's; it can divide by zero, which the
 * search then ignores exactly as PyTorch's NaN comparisons do. */
static void repair_zero_importance(const ar_quant_spec *qs, padded_group *pg, int group_size, int mean_fill)
{
    int zeros = count_zero_importance(pg->imp, pg->plen);
    if (zeros > zero_half(group_size)) {
        float av = 0.0f;
        if (qs->bits > 3) {
            float sum = 0.0f;
            for (int j = 0; j < pg->plen; j++) sum += tround(qs, pg->w[j] * pg->w[j]);
            av = tround(qs, sqrtf(tround(qs, tround(qs, sum) / 32.0f)));
        }
        for (int j = 0; j < pg->plen; j++)
            pg->imp[j] = qs->bits > 3 ? tround(qs, fabsf(pg->w[j]) + av) : fabsf(pg->w[j]);
    }
    if (!mean_fill) return;
    float sum = 0.0f;
    for (int j = 0; j < pg->plen; j++) sum += pg->imp[j];
    float mean = sum / (float)(pg->plen - zeros);
    for (int j = 0; j < pg->plen; j++)
        if (pg->imp[j] == 0.0f) pg->imp[j] = mean;
}

/* Whether some group of the layer has between 1 and G/2 near-zero
 * importances (AutoRound's global condition for the mean fill). The imatrix
 * is the same for every output row, so looking at imat [K] suffices. */
static int needs_mean_fill(const float *imat, int k, int group_size)
{
    int ng = ar_quant_ngroups(k, group_size), half = zero_half(group_size);
    for (int g = 0; g < ng; g++) {
        int k0, len;
        group_span(k, group_size, g, &k0, &len);
        int zeros = count_zero_importance(imat + k0, len);
        if (zeros > 0 && zeros <= half) return 1;
    }
    return 0;
}

/* Σ imp_j (s·L_j - w_j)² with L = clamp(round(iscale·w), -m, m-1). */
static float search_loss(const ar_quant_spec *qs, const padded_group *pg, float iscale, float s)
{
    float m = (float)(1 << (qs->bits - 1));
    float loss = 0.0f;
    for (int j = 0; j < pg->plen; j++) {
        float L = clamp_to(nearbyintf(tround(qs, iscale * pg->w[j])), -m, m - 1.0f);
        float d = tround(qs, tround(qs, s * L) - pg->w[j]);
        loss += d * d * pg->imp[j];
    }
    return loss;
}

/* Grid of the search: Python computes it in double; so do we. The half
 * width is AutoRound's default ratio 0.75 of m (its environment override of
 * that ratio, a research knob, is not carried). */
static void search_grid(int bits, double *step, int *nsteps)
{
    if (bits == 2) { *step = 0.01; *nsteps = 90; return; }
    double nmax = (double)(1 << (bits - 1)), half = nmax * 0.75;
    *step = half / 200 * 2;
    *nsteps = (int)(half / *step);
}

/* search_scales for one padded group row; returns the floored scale. */
static float search_group(const ar_quant_spec *qs, const padded_group *pg)
{
    int imax = 0;
    for (int j = 1; j < pg->plen; j++)
        if (fabsf(pg->w[j]) > fabsf(pg->w[imax])) imax = j;   /* first max, as argmax */
    float m = (float)(1 << (qs->bits - 1));
    float recip = safe_recip(qs, pg->w[imax]);
    float iscale = tround(qs, -m * recip);
    float best_s = safe_recip(qs, iscale);
    float best = search_loss(qs, pg, iscale, best_s);
    double step;
    int ns;
    search_grid(qs->bits, &step, &ns);
    for (int i = -ns; i <= ns; i++) {
        if (i == 0) continue;
        float cand_i = tround(qs, (float)(-((double)m - step * i)) * recip);
        float cand_s = safe_recip(qs, cand_i);
        float loss = search_loss(qs, pg, cand_i, cand_s);
        if (loss < best) { best = loss; best_s = cand_s; }
    }
    float t = scale_floor(qs);
    return best_s < 0 ? tround(qs, fminf(best_s, -t)) : tround(qs, fmaxf(best_s, t));
}

/* Length AutoRound pads a group row to: G, or K for G = -1 or K < G. */
static int padded_len(int k, int group_size)
{
    return (group_size <= 0 || k < group_size) ? k : group_size;
}

static int any_zero(const float *x, int k)
{
    for (int c = 0; c < k; c++) if (x[c] == 0.0f) return 1;
    return 0;
}

int ar_quant_search_scales(const ar_quant_spec *qs, const float *w, int n, int k,
                           const float *imat, float *scale)
{
    if (ar_quant_int_check(qs)) return -1;
    if (!qs->sym) return ar_error("quant: the opt-RTN scale search is for symmetric int only");
    int ng = ar_quant_ngroups(k, qs->group_size), plen = padded_len(k, qs->group_size);
    int repair = imat && any_zero(imat, k);
    int mean_fill = repair && needs_mean_fill(imat, k, qs->group_size);
    long total = (long)n * ng;
    int failed = 0;
    #pragma omp parallel if ((long)n * k >= AR_QUANT_PAR_MIN)
    {
        float *buf = malloc(sizeof(float) * 2 * (size_t)plen);
        if (!buf) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (long r = 0; r < total; r++) {
            if (!buf) continue;
            int row = (int)(r / ng), g = (int)(r % ng), k0, len;
            group_span(k, qs->group_size, g, &k0, &len);
            padded_group pg = { buf, buf + plen, plen };
            for (int j = 0; j < plen; j++) {
                pg.w[j] = j < len ? w[(size_t)row * k + k0 + j] : 0.0f;
                pg.imp[j] = j >= len ? 1e-5f : (imat ? imat[k0 + j] : 1.0f);
            }
            if (repair) repair_zero_importance(qs, &pg, qs->group_size, mean_fill);
            scale[r] = search_group(qs, &pg);
        }
        free(buf);
    }
    return failed ? ar_error("quant: out of memory in the scale search") : 0;
}

int ar_quant_int_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                         const float *imat, const ar_quant_out *out)
{
    if (ar_quant_int_check(qs)) return -1;
    if (!qs->sym) return ar_quant_int_forward(qs, w, n, k, NULL, out);
    int ng = ar_quant_ngroups(k, qs->group_size);
    float *s = malloc(sizeof(float) * (size_t)n * ng);
    if (!s) return ar_error("quant: out of memory for %d x %d scales", n, ng);
    if (ar_quant_search_scales(qs, w, n, k, imat, s)) { free(s); return -1; }
    float m = (float)(1 << (qs->bits - 1));
    for (long r = 0; r < (long)n * ng; r++) {
        int row = (int)(r / ng), g = (int)(r % ng), k0, len;
        group_span(k, qs->group_size, g, &k0, &len);
        for (int j = 0; j < len; j++) {
            size_t i = (size_t)row * k + k0 + j;
            /* The weight's precision throughout: tensor.div(s).round().clamp(), ·s. */
            float q = clamp_to(nearbyintf(tround(qs, w[i] / s[r])), -m, m - 1.0f);
            if (out->wq) out->wq[i] = tround(qs, q * s[r]);
            if (out->codes) out->codes[i] = (uint8_t)(q + m);
        }
        if (out->scale) out->scale[r] = s[r];
        if (out->zp) out->zp[r] = (int32_t)m;
    }
    free(s);
    return 0;
}
