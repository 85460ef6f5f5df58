/* quant_fp.c — MXFP4/MXFP8, NVFP4 and FP8 fake-quantizers, STE backward,
 * opt-RTN searches (see quant_fp.h). */
#include "quant_fp.h"
#include "dtype.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Work below this many elements is not worth waking OpenMP threads for. */
#define FP_PAR_MIN (1 << 15)

#define E4M3_MAX AR_E4M3_MAX
#define FP4_MAX AR_FP4_MAX

/* ---- element codecs ------------------------------------------------------ */

/* Element format of an MX data type (spec §4.2 table). */
typedef struct {
    int mant;          /* mantissa bits (mbits - 2) */
    int emin;          /* smallest private exponent */
    int emax;          /* exponent of the largest normal */
    float max_norm;
} elem_fmt;

static const elem_fmt FMT_FP4 = {1, 0, 2, 6.0f};
static const elem_fmt FMT_FP8 = {3, -6, 8, 448.0f};

static float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* floor(log2 |a|) for a finite a > 0, exactly (frexp, not a rounded log2). */
static int floor_log2(float a)
{
    int e;
    frexpf(a, &e);
    return e - 1;
}

/* Round |x| to a float format with `mant` mantissa bits and smallest
 * exponent emin, half to even, then clamp to max_norm. */
static float round_elem(float x, const elem_fmt *f)
{
    if (x == 0.0f || isnan(x)) return x;
    float a = fabsf(x);
    int p = floor_log2(a);
    if (p < f->emin) p = f->emin;
    float r = ldexpf(nearbyintf(ldexpf(a, f->mant - p)), p - f->mant);
    if (r > f->max_norm) r = f->max_norm;
    return x < 0 ? -r : r;
}

float ar_fp4_round(float x) { return round_elem(clampf(x, -FP4_MAX, FP4_MAX), &FMT_FP4); }

static const float fp4_grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

uint8_t ar_fp4_encode(float q)
{
    float a = fabsf(q);
    int best = 0;
    for (int i = 1; i < 8; i++)
        if (fabsf(fp4_grid[i] - a) < fabsf(fp4_grid[best] - a)) best = i;
    return (uint8_t)((q < 0 ? 8 : 0) | best);
}

float ar_fp4_decode(uint8_t code)
{
    float v = fp4_grid[code & 7];
    return (code & 8) ? -v : v;
}

float ar_e4m3_round(float x) { return round_elem(x, &FMT_FP8); }

uint8_t ar_e4m3_encode(float x)
{
    if (isnan(x)) return 0x7F;
    float q = ar_e4m3_round(x);
    uint8_t sign = q < 0 ? 0x80 : 0;
    float a = fabsf(q);
    if (a == 0.0f) return sign;
    int p = floor_log2(a);
    if (p < -6) return (uint8_t)(sign | (int)ldexpf(a, 9));           /* subnormal: a / 2^-9 */
    int mant = (int)ldexpf(a, 3 - p) - 8;
    return (uint8_t)(sign | ((p + 7) << 3) | mant);
}

float ar_e4m3_decode(uint8_t b)
{
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
    return (b & 0x80) ? -v : v;
}

float ar_mx_round_element(float x, int fmt)
{
    return round_elem(x, fmt == AR_QDT_MXFP8 ? &FMT_FP8 : &FMT_FP4);
}

float ar_nvfp4_global_scale(const float *w, size_t n)
{
    float amax = 0.0f;
    for (size_t i = 0; i < n; i++) if (fabsf(w[i]) > amax) amax = fabsf(w[i]);
    /* AutoRound's get_reciprocal: 0 instead of inf for an all-zero tensor. */
    return amax == 0.0f ? 0.0f : E4M3_MAX * FP4_MAX * (1.0f / amax);
}

/* ---- tiles --------------------------------------------------------------- */

int ar_quant_dtype_parse(const char *dt, int bits)
{
    if (!dt) return -1;
    if (!strcmp(dt, "int")) return AR_QDT_INT;
    if (!strcmp(dt, "mx_fp"))
        return bits == 4 ? AR_QDT_MXFP4 : bits == 8 ? AR_QDT_MXFP8 : -1;
    if (!strcmp(dt, "nv_fp") || !strcmp(dt, "nv_fp4") || !strcmp(dt, "nv_fp4_with_static_gs"))
        return bits == 4 ? AR_QDT_NVFP4 : -1;
    if (!strcmp(dt, "fp") || !strcmp(dt, "fp8") || !strcmp(dt, "fp8_e4m3")) return bits == 8 ? AR_QDT_FP8 : -1;
    return -1;
}

int ar_quant_fp_check(const ar_quant_spec *qs)
{
    if (!qs) return ar_error("quant: no spec");
    switch (qs->dtype) {
    case AR_QDT_MXFP4: case AR_QDT_NVFP4:
        if (qs->bits != 4) return ar_error("quant: %s needs 4 bits, not %d", qs->dtype == AR_QDT_MXFP4 ? "MXFP4" : "NVFP4", qs->bits);
        if (qs->group_size <= 0) return ar_error("quant: FP4 group size %d (needs G > 0)", qs->group_size);
        return 0;
    case AR_QDT_MXFP8:
        if (qs->bits != 8) return ar_error("quant: MXFP8 needs 8 bits, not %d", qs->bits);
        if (qs->group_size <= 0) return ar_error("quant: MXFP8 group size %d (needs G > 0)", qs->group_size);
        return 0;
    case AR_QDT_FP8:
        if (qs->bits != 8) return ar_error("quant: FP8 needs 8 bits, not %d", qs->bits);
        if (qs->group_size < -1) return ar_error("quant: FP8 group size %d (0, -1 or > 0)", qs->group_size);
        if ((qs->flags & AR_QF_BLOCK2D) && qs->group_size <= 0) return ar_error("quant: FP8 blocks need G > 0");
        return 0;
    default:
        return ar_error("quant: unknown data type %d", qs->dtype);
    }
}

/* How a weight splits into tiles sharing one scale. */
typedef struct {
    int n, k, ng;        /* rows, columns, groups per row in [N, ngroups] tensors */
    int trows, tcols;    /* tile size */
    int ntr, ntc;        /* tile counts */
} tiling;

static tiling tiling_of(const ar_quant_spec *qs, int n, int k)
{
    tiling t = {n, k, ar_quant_ngroups(k, qs->group_size), 1, k, 0, 0};
    if (qs->group_size > 0) t.tcols = qs->group_size;
    if (qs->group_size == 0) t.trows = n;                             /* FP8 per tensor */
    if (qs->flags & AR_QF_BLOCK2D) t.trows = qs->group_size;
    if (t.tcols > k) t.tcols = k;
    if (t.trows > n) t.trows = n;
    t.ntr = (n + t.trows - 1) / t.trows;
    t.ntc = (k + t.tcols - 1) / t.tcols;
    return t;
}

/* Index of tile (tr, tc)'s tunable in the [N, ngroups] layout. */
static size_t tile_param(const tiling *t, int tr, int tc) { return (size_t)tr * t->trows * t->ng + tc; }

/* What a tile's forward decided, replayed by the backward. */
typedef struct {
    float amax;      /* max |w| over the tile */
    float scale;     /* MX 2^e, NV s (E4M3 value), FP8 s */
    float o, deq;    /* NV: o = 1/(s/gs) and deq = 1/o; else 1/scale and scale */
    float dscale_dbeta; /* chain factor scale -> β (0 where a clamp blocks it) */
} tile_state;

static float tile_amax(const tiling *t, const float *w, int tr, int tc)
{
    int r0 = tr * t->trows, r1 = r0 + t->trows < t->n ? r0 + t->trows : t->n;
    int c0 = tc * t->tcols, c1 = c0 + t->tcols < t->k ? c0 + t->tcols : t->k;
    float m = 0.0f;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) {
            float a = fabsf(w[(size_t)r * t->k + c]);
            if (a > m) m = a;
        }
    return m;
}

static float beta_of(const ar_quant_spec *qs, const ar_quant_params *p, size_t idx)
{
    float hi = qs->minmax_hi > 0 ? qs->minmax_hi : 1.0f;
    return (p && p->beta) ? clampf(p->beta[idx], 0.0f, hi) : 1.0f;
}

/* Scale of one tile from its maximum, β and init_scale (spec §4.2–4.4). */
static void tile_setup(const ar_quant_spec *qs, float gs, float amax, float beta, float init, tile_state *s)
{
    s->amax = amax;
    s->dscale_dbeta = 0.0f;
    if (qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_MXFP8) {
        const elem_fmt *f = qs->dtype == AR_QDT_MXFP8 ? &FMT_FP8 : &FMT_FP4;
        float c = amax * (init * beta);
        int e = (c == 0.0f ? 1 : floor_log2(c)) - f->emax;
        int live = c != 0.0f && e > -127 && e < 127;   /* a clamped exponent passes nothing, at ±127 too */
        e = e < -127 ? -127 : (e > 127 ? 127 : e);
        s->scale = ldexpf(1.0f, e);
        s->o = 1.0f / s->scale;
        s->deq = s->scale;
        /* d 2^floor(log2 c)/dβ through the straight-through floor = 2^e / β. */
        /* scale times a ratio near 1/β: the same bits as (scale·amax·init)/c
         * (scale is a power of two), without its underflow at tiny scales */
        if (live) s->dscale_dbeta = s->scale * (amax * init / c);
    } else if (qs->dtype == AR_QDT_NVFP4) {
        float raw = gs * (amax * (beta * init) * (1.0f / FP4_MAX));
        s->scale = ar_e4m3_round(clampf(raw, -E4M3_MAX, E4M3_MAX));
        float inv_gs = gs == 0.0f ? 0.0f : 1.0f / gs, d = s->scale * inv_gs;
        s->o = d == 0.0f ? 0.0f : 1.0f / d;
        s->deq = s->o == 0.0f ? 0.0f : 1.0f / s->o;
        if (fabsf(raw) < E4M3_MAX) s->dscale_dbeta = gs * amax * init / FP4_MAX;
    } else {
        const float floor_s = 1.0f / (E4M3_MAX * 512.0f);
        float raw = amax * (beta * init) / E4M3_MAX;
        s->scale = raw < floor_s ? floor_s : raw;
        s->o = 1.0f / s->scale;
        s->deq = s->scale;
        if (raw > floor_s) s->dscale_dbeta = amax * init / E4M3_MAX;
    }
}

float ar_quant_fp_global_scale(const ar_quant_spec *qs, const float *w, int n, int k)
{
    if (qs->dtype != AR_QDT_NVFP4) return 1.0f;
    return qs->global_scale > 0 ? qs->global_scale : ar_nvfp4_global_scale(w, (size_t)n * k);
}

/* Tile states for the whole weight; NULL (ar_error) when out of memory. */
static tile_state *tiles_setup(const ar_quant_spec *qs, const tiling *t, const float *w, const ar_quant_params *p,
                               float gs)
{
    tile_state *ts = malloc(sizeof *ts * (size_t)t->ntr * t->ntc);
    if (!ts) { ar_error("quant: out of memory for %d x %d tiles", t->ntr, t->ntc); return NULL; }
    long nt = (long)t->ntr * t->ntc;
    #pragma omp parallel for schedule(static) if ((long)t->n * t->k >= FP_PAR_MIN)
    for (long i = 0; i < nt; i++) {
        int tr = (int)(i / t->ntc), tc = (int)(i % t->ntc);
        size_t idx = tile_param(t, tr, tc);
        float init = (p && p->init_scale) ? p->init_scale[idx] : 1.0f;
        tile_setup(qs, gs, tile_amax(t, w, tr, tc), beta_of(qs, p, idx), init, &ts[i]);
    }
    return ts;
}

/* ---- elements ------------------------------------------------------------ */

/* Largest |x| the element format holds. */
static float elem_max(const ar_quant_spec *qs)
{
    return qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_NVFP4 ? FP4_MAX : E4M3_MAX;
}

/* Scaled element before the clamp: w/S + V (NV: w·o + V). */
static float scaled_of(const ar_quant_spec *qs, const tile_state *s, float w, float v)
{
    return (qs->dtype == AR_QDT_NVFP4 ? w * s->o : w / s->scale) + v;
}

static float elem_round(const ar_quant_spec *qs, float x)
{
    switch (qs->dtype) {
    case AR_QDT_MXFP4: case AR_QDT_NVFP4: return ar_fp4_round(x);
    default: return ar_e4m3_round(x);
    }
}

static uint8_t elem_code(const ar_quant_spec *qs, float q)
{
    return qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_NVFP4 ? ar_fp4_encode(q) : ar_e4m3_encode(q);
}

/* d elem(x)/dx of the rounding as AutoRound's autograd sees it (see header),
 * x the clamped scaled element and q its rounded value. */
static float elem_grad(const ar_quant_spec *qs, float x, float q)
{
    float lim = elem_max(qs);
    if (qs->dtype == AR_QDT_FP8) return fabsf(x) < lim;   /* the one clamp is before the cast */
    /* MX and NV clamp again after rounding (quant_element, cast_to_fp4): no
     * gradient where the level is ±max; sign(0) = 0 kills x = 0 */
    if (x == 0.0f || fabsf(q) >= lim) return 0.0f;
    if (qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_MXFP8) {
        /* the private exponent's clip(min = emin) passes nothing at emin
         * itself, so below 2^(emin+1) the rounding is the identity */
        const elem_fmt *f = qs->dtype == AR_QDT_MXFP8 ? &FMT_FP8 : &FMT_FP4;
        return fabsf(x) >= ldexpf(1.0f, f->emin + 1) ? q / x : 1.0f;
    }
    return 1.0f;
}

int ar_quant_fp_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                        const ar_quant_params *p, const ar_quant_out *out)
{
    if (ar_quant_fp_check(qs)) return -1;
    tiling t = tiling_of(qs, n, k);
    float gs = ar_quant_fp_global_scale(qs, w, n, k), lim = elem_max(qs);
    tile_state *ts = tiles_setup(qs, &t, w, p, gs);
    if (!ts) return -1;
    #pragma omp parallel for schedule(static) if ((long)n * k >= FP_PAR_MIN)
    for (int r = 0; r < n; r++) {
        for (int tc = 0; tc < t.ntc; tc++) {
            const tile_state *s = &ts[(size_t)(r / t.trows) * t.ntc + tc];
            int c0 = tc * t.tcols, c1 = c0 + t.tcols < k ? c0 + t.tcols : k;
            for (int c = c0; c < c1; c++) {
                size_t i = (size_t)r * k + c;
                float x = clampf(scaled_of(qs, s, w[i], (p && p->v) ? p->v[i] : 0.0f), -lim, lim);
                float q = elem_round(qs, x);
                if (out->codes) out->codes[i] = elem_code(qs, q);
                if (out->wq) {
                    float wq = q * s->deq;
                    out->wq[i] = (qs->flags & AR_QF_BF16) ? ar_round_bf16(wq) : wq;
                }
            }
        }
        for (int g = 0; g < t.ng; g++) {
            const tile_state *s = &ts[(size_t)(r / t.trows) * t.ntc + g];
            if (out->scale) out->scale[(size_t)r * t.ng + g] = s->scale;
            if (out->zp) out->zp[(size_t)r * t.ng + g] = 0;
        }
    }
    free(ts);
    return 0;
}

/* ---- backward ------------------------------------------------------------ */

/* dL/dV of the row's elements of one tile, and dL/dscale summed over them. */
static double row_tile_backward(const ar_quant_spec *qs, const tile_state *s, const float *w, const float *v,
                                const float *dwq, float *dv, int c0, int c1)
{
    float lim = elem_max(qs);
    double dscale = 0.0;
    for (int c = c0; c < c1; c++) {
        float x = scaled_of(qs, s, w[c], v ? v[c] : 0.0f);
        float xc = clampf(x, -lim, lim), q = elem_round(qs, xc);
        double dq = elem_grad(qs, xc, q), g = dwq[c];   /* 0 at and beyond the clamp */
        if (dv) dv[c] += (float)(g * s->deq * dq);
        if (qs->dtype == AR_QDT_NVFP4) {
            /* ŵ = q(w·o + V)/o with o = gs/s: dŵ/ds = (q·deq − q'·w)/s. */
            if (s->scale != 0.0f && s->o != 0.0f) dscale += g * ((double)q * s->deq - dq * w[c]) / s->scale;
        } else {
            dscale += g * ((double)q - dq * w[c] / s->scale);      /* ŵ = S·q(w/S + V) */
        }
    }
    return dscale;
}

int ar_quant_fp_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                         const ar_quant_params *p, const float *dwq,
                         float *dv, float *dalpha, float *dbeta)
{
    (void)dalpha;
    if (ar_quant_fp_check(qs)) return -1;
    tiling t = tiling_of(qs, n, k);
    float gs = ar_quant_fp_global_scale(qs, w, n, k);
    tile_state *ts = tiles_setup(qs, &t, w, p, gs);
    double *part = ts ? malloc(sizeof(double) * (size_t)n * t.ntc) : NULL;
    if (!part) { free(ts); return ts ? ar_error("quant: out of memory in the FP backward") : -1; }
    #pragma omp parallel for schedule(static) if ((long)n * k >= FP_PAR_MIN)
    for (int r = 0; r < n; r++)
        for (int tc = 0; tc < t.ntc; tc++) {
            int c0 = tc * t.tcols, c1 = c0 + t.tcols < k ? c0 + t.tcols : k;
            size_t off = (size_t)r * k;
            part[(size_t)r * t.ntc + tc] =
                row_tile_backward(qs, &ts[(size_t)(r / t.trows) * t.ntc + tc], w + off,
                                  (p && p->v) ? p->v + off : NULL, dwq + off, dv ? dv + off : NULL, c0, c1);
        }
    if (dbeta)
        for (int tr = 0; tr < t.ntr; tr++)
            for (int tc = 0; tc < t.ntc; tc++) {
                double sum = 0.0;
                int r1 = (tr + 1) * t.trows < n ? (tr + 1) * t.trows : n;
                for (int r = tr * t.trows; r < r1; r++) sum += part[(size_t)r * t.ntc + tc];
                dbeta[tile_param(&t, tr, tc)] += (float)(sum * ts[(size_t)tr * t.ntc + tc].dscale_dbeta);
            }
    free(part);
    free(ts);
    return 0;
}

/* ---- opt-RTN --------------------------------------------------------------- */

/* Candidate multipliers of the search, after the baseline 1. */
static int search_candidates(const ar_quant_spec *qs, float *c)
{
    if (qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_MXFP8) { c[0] = 0.5f; c[1] = 2.0f; return 2; }
    if (qs->dtype != AR_QDT_NVFP4) return 0;
    int m = 0;
    for (int i = 50; i < 152; i++) if (i != 100) c[m++] = (float)(i / 100.0);
    return m;
}

/* Σ imat_j (wq_j − w_j)² per group row into loss [N, ngroups]. */
static void group_losses(const tiling *t, const float *w, const float *wq, const float *imat, double *loss)
{
    #pragma omp parallel for schedule(static) if ((long)t->n * t->k >= FP_PAR_MIN)
    for (int r = 0; r < t->n; r++)
        for (int g = 0; g < t->ng; g++) {
            int c0 = g * t->tcols, c1 = c0 + t->tcols < t->k ? c0 + t->tcols : t->k;
            double s = 0.0;
            for (int c = c0; c < c1; c++) {
                double d = (double)wq[(size_t)r * t->k + c] - w[(size_t)r * t->k + c];
                s += d * d * (imat ? imat[c] : 1.0f);
            }
            loss[(size_t)r * t->ng + g] = s;
        }
}

int ar_quant_fp_search(const ar_quant_spec *qs, const float *w, int n, int k, const float *imat, float *mult)
{
    if (ar_quant_fp_check(qs)) return -1;
    tiling t = tiling_of(qs, n, k);
    size_t ngr = (size_t)n * t.ng;
    for (size_t i = 0; i < ngr; i++) mult[i] = 1.0f;
    float cands[128];
    int nc = search_candidates(qs, cands);
    if (!nc || t.trows != 1) return 0;
    ar_quant_spec plain = *qs;
    plain.flags &= ~(unsigned)AR_QF_BF16;        /* the search runs in f32 */
    float *wq = malloc(sizeof(float) * (size_t)n * k), *init = malloc(sizeof(float) * ngr);
    double *best = malloc(sizeof(double) * ngr), *loss = malloc(sizeof(double) * ngr);
    int rc = (!wq || !init || !best || !loss) ? ar_error("quant: out of memory in the FP scale search") : 0;
    ar_quant_out o = {wq, NULL, NULL, NULL};
    if (!rc) rc = ar_quant_fp_forward(&plain, w, n, k, NULL, &o);
    if (!rc) group_losses(&t, w, wq, imat, best);
    for (int ci = 0; !rc && ci < nc; ci++) {
        for (size_t i = 0; i < ngr; i++) init[i] = cands[ci];
        ar_quant_params p = {NULL, NULL, NULL, init};
        if ((rc = ar_quant_fp_forward(&plain, w, n, k, &p, &o))) break;
        group_losses(&t, w, wq, imat, loss);
        for (size_t i = 0; i < ngr; i++)
            if (loss[i] < best[i]) { best[i] = loss[i]; mult[i] = cands[ci]; }
    }
    free(wq); free(init); free(best); free(loss);
    return rc;
}

int ar_quant_fp_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                        const float *imat, const ar_quant_out *out)
{
    if (ar_quant_fp_check(qs)) return -1;
    size_t ngr = (size_t)n * ar_quant_ngroups(k, qs->group_size);
    float *mult = malloc(sizeof(float) * ngr);
    if (!mult) return ar_error("quant: out of memory for %zu multipliers", ngr);
    int rc = ar_quant_fp_search(qs, w, n, k, imat, mult);
    ar_quant_params p = {NULL, NULL, NULL, mult};
    if (!rc) rc = ar_quant_fp_forward(qs, w, n, k, &p, out);
    free(mult);
    return rc;
}
