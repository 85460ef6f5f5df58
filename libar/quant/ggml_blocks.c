/* ggml_blocks.c — GGML block quantizers and dequantizers.
 *
 * Written from the published block layouts and the algorithms' formulas. To be
 * byte-identical with llama.cpp the float arithmetic follows the same order of
 * operations (sums accumulated left to right, products associated the same way),
 * and rounding is half-to-even like ggml's nearest_int. Build without FMA
 * contraction (-std=c11 implies -ffp-contract=off) or results may differ. */
#include "ggml_blocks.h"
#include "dtype.h"
#include "error.h"
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define QK 32          /* elements per block of the legacy types */
#define QKK 256        /* elements per k-quant super-block */
#define ALL_ZERO_EPS 1e-15f

/* ---- type table ------------------------------------------------------------ */

static const struct { const char *name; int elems; size_t bytes; } type_info[AR_GGML_TYPE_LIMIT] = {
    [AR_GGML_F32] = {"f32", 1, 4},        [AR_GGML_F16] = {"f16", 1, 2},
    [AR_GGML_Q4_0] = {"q4_0", QK, 18},    [AR_GGML_Q4_1] = {"q4_1", QK, 20},
    [AR_GGML_Q5_0] = {"q5_0", QK, 22},    [AR_GGML_Q5_1] = {"q5_1", QK, 24},
    [AR_GGML_Q8_0] = {"q8_0", QK, 34},
    [AR_GGML_Q2_K] = {"q2_K", QKK, 84},   [AR_GGML_Q3_K] = {"q3_K", QKK, 110},
    [AR_GGML_Q4_K] = {"q4_K", QKK, 144},  [AR_GGML_Q5_K] = {"q5_K", QKK, 176},
    [AR_GGML_Q6_K] = {"q6_K", QKK, 210},
    [AR_GGML_I8] = {"i8", 1, 1},          [AR_GGML_I16] = {"i16", 1, 2},
    [AR_GGML_I32] = {"i32", 1, 4},        [AR_GGML_I64] = {"i64", 1, 8},
    [AR_GGML_F64] = {"f64", 1, 8},        [AR_GGML_BF16] = {"bf16", 1, 2},
};

int ar_ggml_block_elems(ar_ggml_type t) { return (unsigned)t < AR_GGML_TYPE_LIMIT ? type_info[t].elems : 0; }
size_t ar_ggml_block_bytes(ar_ggml_type t) { return (unsigned)t < AR_GGML_TYPE_LIMIT ? type_info[t].bytes : 0; }

const char *ar_ggml_type_name(ar_ggml_type t)
{
    return (unsigned)t < AR_GGML_TYPE_LIMIT && type_info[t].name ? type_info[t].name : "?";
}

size_t ar_ggml_row_bytes(ar_ggml_type t, int64_t n)
{
    int be = ar_ggml_block_elems(t);
    if (be == 0 || n < 0 || n % be) return 0;
    return (size_t)(n / be) * type_info[t].bytes;
}

int ar_ggml_type_parse(const char *name)
{
    for (int t = 0; t < AR_GGML_TYPE_LIMIT; t++)
        if (type_info[t].name && !strcasecmp(name, type_info[t].name)) return t;
    return -1;
}

int ar_ggml_is_quantized(ar_ggml_type t) { return ar_ggml_block_elems(t) > 1; }

/* ---- small helpers ----------------------------------------------------------- */

/* Round to nearest, ties to even, for |v| < 2^22: adding 1.5·2^23 leaves the
 * rounded integer in the low mantissa bits (the trick ggml's nearest_int uses). */
static inline int round_even(float v)
{
    if (!(fabsf(v) < 4194303.f)) return (int)rintf(v);   /* out of range or NaN: rare */
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
static inline uint16_t h16(float f) { return ar_f32_to_f16(f); }
static inline float f16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return ar_f16_to_f32(h); }
static inline void put16(uint8_t *p, uint16_t h) { memcpy(p, &h, 2); }

/* ---- the scale searches -------------------------------------------------------
 * Each works on one group x[0..n) and returns codes L (with the type's offset
 * already added) plus the fitted scale (and min). */

/* The element of x[0..n) largest in magnitude, with its sign (the first of
 * equals; 0 when all are 0): the symmetric searches map it onto −nmax. */
static float signed_absmax(const float *x, int n)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    return max;
}

/* Symmetric search: start from the scale that maps the signed absolute maximum
 * onto −nmax, then try 18 nearby scales; keep the one maximizing (Σw·x·l)²/Σw·l²
 * (least-squares fit quality), and return the least-squares scale Σwxl/Σwl².
 * Codes l in [−nmax, nmax−1], stored as l + nmax. w: per-element weights. */
static float sym_search(int n, int nmax, const float *x, const float *w, uint8_t *L)
{
    float max = signed_absmax(x, n);
    if (fabsf(max) < ALL_ZERO_EPS) { memset(L, 0, (size_t)n); return 0.f; }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (uint8_t)(l + nmax);
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
            sumlx += w[i] * x[i] * l;
            suml2 += w[i] * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = (uint8_t)(nmax + clampi(round_even(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric search of Q3_K's reference quantizer: codes from the max-mapped
 * scale, then up to 5 passes of coordinate descent, each element moved to the
 * code the current least-squares fit prefers when that improves the fit.
 * Weights are x². */
static float sym_descent(int n, int nmax, const float *x, uint8_t *L)
{
    float max = signed_absmax(x, n);
    if (fabsf(max) < ALL_ZERO_EPS) { memset(L, 0, (size_t)n); return 0.f; }
    float iscale = -nmax / max;
    int l8[QKK];
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
        l8[i] = l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * l8[i];
            if (slx <= 0) continue;
            float sl2 = suml2 - w * l8[i] * l8[i];
            int nl = clampi(round_even(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (nl == l8[i]) continue;
            slx += w * x[i] * nl;
            sl2 += w * nl * nl;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                l8[i] = nl; sumlx = slx; suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)(l8[i] + nmax);
    return sumlx / suml2;
}

/* Asymmetric search (scale and min): the min is clamped to <= 0; for nstep+1
 * candidate inverse scales (rmin + rdelta·k + nmax)/(max − min) the codes are
 * fitted by weighted least squares for (scale, min) (min forced to 0 when the
 * fit wants it positive) and the candidate with the smallest weighted error
 * (absolute if use_mad, else squared) is kept. Returns the scale; *neg_min
 * receives −min (>= 0). w: weights (never NULL here). */
static float asym_search(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                         float rmin, float rdelta, int nstep, int use_mad)
{
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max <= min) { memset(L, 0, (size_t)n); *neg_min = -min; return 0.f; }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(round_even(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * L[i] + min - x[i];
        best += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    uint8_t aux[QKK];
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_even(iscale * (x[i] - min)), 0, nmax);
            aux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * aux[i] + this_min - x[i];
            err += w[i] * (use_mad ? fabsf(diff) : diff * diff);
        }
        if (err < best) {
            memcpy(L, aux, (size_t)n);
            best = err; scale = this_scale; min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

/* Weighted search for the super-block scale of non-negative values x (sub-block
 * scales or mins) coded as 0..nmax: 9 candidate scales around max/nmax by
 * weighted squared error, then up to 5 coordinate-descent passes on the codes;
 * returns the least-squares scale. */
static float positive_search(int n, int nmax, const float *x, uint8_t *L, const float *w)
{
    float max = 0;
    for (int i = 0; i < n; i++) max = fmaxf(max, x[i]);
    if (!max) { memset(L, 0, (size_t)n); return 0.f; }
    float iscale = nmax / max;
    float scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * round_even(iscale * x[i]);
        best += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max, scale_is = 1 / iscale_is, err = 0;
        for (int i = 0; i < n; i++) {
            int l = round_even(iscale_is * x[i]);
            if (l > nmax) l = nmax;
            float diff = x[i] - scale_is * l;
            err += w[i] * diff * diff;
        }
        if (err < best) { best = err; iscale = iscale_is; }
    }
    int l8[QKK];
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = round_even(iscale * x[i]);
        if (l > nmax) l = nmax;
        l8[i] = l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * l8[i];
            float sl2 = suml2 - w[i] * l8[i] * l8[i];
            if (!(slx > 0 && sl2 > 0)) continue;
            int nl = round_even(x[i] * sl2 / slx);
            if (nl > nmax) nl = nmax;
            if (nl == l8[i]) continue;
            slx += w[i] * x[i] * nl;
            sl2 += w[i] * nl * nl;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                l8[i] = nl; sumlx = slx; suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)l8[i];
    return sumlx / suml2;
}

/* ---- legacy 32-element types --------------------------------------------------- */

/* Nibble-pack 32 codes: byte j holds code j (low) and code j+16 (high); codes
 * >= 16 (Q5) also set bit j of the 32-bit high-bit word *qh. */
static void pack_nibbles32(const uint8_t *L, uint8_t *qs, uint8_t *qh_out)
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((L[j] & 15) | (L[j + 16] & 15) << 4);
        qh |= (uint32_t)(L[j] >> 4 & 1) << j | (uint32_t)(L[j + 16] >> 4 & 1) << (j + 16);
    }
    if (qh_out) memcpy(qh_out, &qh, 4);
}

static void unpack_nibbles32(const uint8_t *qs, const uint8_t *qh_in, uint8_t *L)
{
    uint32_t qh = 0;
    if (qh_in) memcpy(&qh, qh_in, 4);
    for (int j = 0; j < 16; j++) {
        L[j] = (uint8_t)((qs[j] & 15) | (qh >> j & 1) << 4);
        L[j + 16] = (uint8_t)((qs[j] >> 4) | (qh >> (j + 16) & 1) << 4);
    }
}

/* Q4_0 / Q5_0 reference: d = (signed absolute max)/−2^(b−1); code = trunc(x/d + 2^(b−1) + 0.5) capped. */
static void ref_sym_legacy(const float *x, uint8_t *blk, int bits)
{
    float amax = 0, max = 0;
    for (int j = 0; j < QK; j++)
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    const int half = 1 << (bits - 1);
    const float d = max / -half;
    const float id = d ? 1.0f / d : 0.0f;
    put16(blk, h16(d));
    uint8_t L[QK];
    for (int j = 0; j < QK; j++) {
        int q = (int8_t)(x[j] * id + (half + 0.5f));
        L[j] = (uint8_t)(q < 2 * half - 1 ? q : 2 * half - 1);
    }
    if (bits == 4) pack_nibbles32(L, blk + 2, NULL);
    else pack_nibbles32(L, blk + 6, blk + 2);
}

/* Q4_1 / Q5_1 reference: d = (max − min)/(2^b − 1), m = min; code = trunc((x − min)/d + 0.5). */
static void ref_asym_legacy(const float *x, uint8_t *blk, int bits)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const int qmax = (1 << bits) - 1;
    const float d = (max - min) / qmax;
    const float id = d ? 1.0f / d : 0.0f;
    put16(blk, h16(d));
    put16(blk + 2, h16(min));
    uint8_t L[QK];
    for (int j = 0; j < QK; j++) {
        int q = (uint8_t)((x[j] - min) * id + 0.5f);
        L[j] = (uint8_t)(bits == 4 && q > 15 ? 15 : q);
    }
    if (bits == 4) pack_nibbles32(L, blk + 4, NULL);
    else pack_nibbles32(L, blk + 8, blk + 4);
}

static void ref_q8_0(const float *x, uint8_t *blk)
{
    float amax = 0;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    put16(blk, h16(d));
    for (int j = 0; j < QK; j++) blk[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

/* imatrix path of the legacy types: weights qw·sqrt(σ² + x²) with σ² the
 * row's mean square; symmetric types use sym_search, asymmetric ones the
 * squared-error asym_search. */
static void imx_legacy(const float *x, uint8_t *blk, int bits, int asym, float sigma2, const float *qw)
{
    float w[QK];
    uint8_t L[QK];
    for (int j = 0; j < QK; j++) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
    int off = asym ? 4 : 2;
    if (asym) {
        float neg_min;
        float d = asym_search(QK, (1 << bits) - 1, x, w, L, &neg_min, -0.9f, 0.05f, 36, 0);
        put16(blk, h16(d));
        put16(blk + 2, h16(-neg_min));
    } else {
        put16(blk, h16(sym_search(QK, 1 << (bits - 1), x, w, L)));
    }
    if (bits == 4) pack_nibbles32(L, blk + off, NULL);
    else pack_nibbles32(L, blk + off + 4, blk + off);
}

/* ---- k-quant code layouts ------------------------------------------------------ */

/* 2-bit fields of 128-element halves: byte l of each 32-byte run holds elements
 * l, l+32, l+64, l+96 (Q2_K codes, Q3_K low bits). */
static void pack_crumbs(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QKK; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)((L[j + l] & 3) | (L[j + l + 32] & 3) << 2 | (L[j + l + 64] & 3) << 4 |
                                      (L[j + l + 96] & 3) << 6);
}

static void unpack_crumbs(const uint8_t *qs, uint8_t *L)
{
    for (int j = 0; j < QKK; j += 128)
        for (int l = 0; l < 32; l++)
            for (int k = 0; k < 4; k++) L[j + l + 32 * k] = qs[j / 4 + l] >> (2 * k) & 3;
}

/* 4-bit fields of Q4_K/Q5_K: per 64 elements, 32 bytes, low nibble element l, high l+32. */
static void pack_nibbles_k(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QKK; j += 64)
        for (int l = 0; l < 32; l++) qs[j / 2 + l] = (uint8_t)((L[j + l] & 15) | (L[j + l + 32] & 15) << 4);
}

static void unpack_nibbles_k(const uint8_t *qs, uint8_t *L)
{
    for (int j = 0; j < QKK; j += 64)
        for (int l = 0; l < 32; l++) { L[j + l] = qs[j / 2 + l] & 15; L[j + l + 32] = qs[j / 2 + l] >> 4; }
}

/* High bit of element 32·k + l lives in bit k of byte l (Q3_K hmask: bit 2;
 * Q5_K qh: bit 4). */
static void pack_highbits(const uint8_t *L, int bit, uint8_t *h)
{
    memset(h, 0, 32);
    for (int j = 0; j < QKK; j++) h[j % 32] |= (uint8_t)((L[j] >> bit & 1) << (j / 32));
}

static void unpack_highbits(const uint8_t *h, int bit, uint8_t *L)
{
    for (int j = 0; j < QKK; j++) L[j] |= (uint8_t)((h[j % 32] >> (j / 32) & 1) << bit);
}

/* Q6_K: low nibbles ql[128] (per half: byte l = e[l] | e[l+64]<<4, byte 32+l =
 * e[l+32] | e[l+96]<<4), high 2 bits qh[64] (per half: byte l = e[l], e[l+32],
 * e[l+64], e[l+96] in bit pairs). */
static void pack_q6(const uint8_t *L, uint8_t *ql, uint8_t *qh)
{
    for (int j = 0; j < QKK; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            const uint8_t *e = L + j + l;
            ql[l] = (uint8_t)((e[0] & 15) | (e[64] & 15) << 4);
            ql[l + 32] = (uint8_t)((e[32] & 15) | (e[96] & 15) << 4);
            qh[l] = (uint8_t)((e[0] >> 4) | (e[32] >> 4) << 2 | (e[64] >> 4) << 4 | (e[96] >> 4) << 6);
        }
}

static void unpack_q6(const uint8_t *ql, const uint8_t *qh, uint8_t *L)
{
    for (int j = 0; j < QKK; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            uint8_t *e = L + j + l;
            e[0] = (uint8_t)((ql[l] & 15) | (qh[l] & 3) << 4);
            e[32] = (uint8_t)((ql[l + 32] & 15) | (qh[l] >> 2 & 3) << 4);
            e[64] = (uint8_t)((ql[l] >> 4) | (qh[l] >> 4 & 3) << 4);
            e[96] = (uint8_t)((ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4);
        }
}

/* Q4_K/Q5_K 12-byte scale field: 8 six-bit scales sc and 8 six-bit mins m. */
static void pack_scales_k4(const uint8_t *sc, const uint8_t *m, uint8_t *s)
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)((m[j] & 63) | (m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
    }
}

static void unpack_scales_k4(const uint8_t *s, int j, uint8_t *sc, uint8_t *m)
{
    if (j < 4) { *sc = s[j] & 63; *m = s[j + 4] & 63; return; }
    *sc = (uint8_t)((s[j + 4] & 15) | (s[j - 4] >> 6) << 4);
    *m = (uint8_t)((s[j + 4] >> 4) | (s[j] >> 6) << 4);
}

/* Q3_K 12-byte scale field: 16 six-bit values (scale + 32): low nibbles in bytes
 * 0..7 (j and j+8), high bit pairs in bytes 8..11. */
static void pack_scales_q3(const uint8_t *v, uint8_t *s)
{
    memset(s, 0, 12);
    for (int j = 0; j < 16; j++) {
        s[j % 8] |= (uint8_t)((v[j] & 15) << (j < 8 ? 0 : 4));
        s[8 + j % 4] |= (uint8_t)((v[j] >> 4 & 3) << (2 * (j / 4)));
    }
}

static int unpack_scale_q3(const uint8_t *s, int j)
{
    int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
    return (lo | (s[8 + j % 4] >> (2 * (j / 4)) & 3) << 4) - 32;
}

/* ---- k-quant block offsets and per-type code access ---------------------------- */

typedef struct {
    int d, dmin, scales, qs, qh;   /* byte offsets inside the block (-1: absent) */
} kq_layout;

static kq_layout layout_of(ar_ggml_type t)
{
    switch (t) {
    case AR_GGML_Q2_K: return (kq_layout){80, 82, 0, 16, -1};
    case AR_GGML_Q3_K: return (kq_layout){108, -1, 96, 32, 0};
    case AR_GGML_Q4_K: return (kq_layout){0, 2, 4, 16, -1};
    case AR_GGML_Q5_K: return (kq_layout){0, 2, 4, 48, 16};
    case AR_GGML_Q6_K: return (kq_layout){208, -1, 192, 0, 128};
    default: return (kq_layout){-1, -1, -1, -1, -1};
    }
}

/* Codes (offset included) of one block, 32 of them for legacy types, 256 for k. */
static void get_codes(ar_ggml_type t, const uint8_t *b, uint8_t *L)
{
    kq_layout o = layout_of(t);
    switch (t) {
    case AR_GGML_Q4_0: unpack_nibbles32(b + 2, NULL, L); break;
    case AR_GGML_Q4_1: unpack_nibbles32(b + 4, NULL, L); break;
    case AR_GGML_Q5_0: unpack_nibbles32(b + 6, b + 2, L); break;
    case AR_GGML_Q5_1: unpack_nibbles32(b + 8, b + 4, L); break;
    case AR_GGML_Q8_0: for (int j = 0; j < QK; j++) L[j] = (uint8_t)((int8_t)b[2 + j] + 128); break;
    case AR_GGML_Q2_K: unpack_crumbs(b + o.qs, L); break;
    case AR_GGML_Q3_K: unpack_crumbs(b + o.qs, L); unpack_highbits(b + o.qh, 2, L); break;
    case AR_GGML_Q4_K: unpack_nibbles_k(b + o.qs, L); break;
    case AR_GGML_Q5_K: unpack_nibbles_k(b + o.qs, L); unpack_highbits(b + o.qh, 4, L); break;
    case AR_GGML_Q6_K: unpack_q6(b + o.qs, b + o.qh, L); break;
    default: break;
    }
}

static void set_codes(ar_ggml_type t, uint8_t *b, const uint8_t *L)
{
    kq_layout o = layout_of(t);
    switch (t) {
    case AR_GGML_Q4_0: pack_nibbles32(L, b + 2, NULL); break;
    case AR_GGML_Q4_1: pack_nibbles32(L, b + 4, NULL); break;
    case AR_GGML_Q5_0: pack_nibbles32(L, b + 6, b + 2); break;
    case AR_GGML_Q5_1: pack_nibbles32(L, b + 8, b + 4); break;
    case AR_GGML_Q8_0: for (int j = 0; j < QK; j++) b[2 + j] = (uint8_t)(int8_t)(L[j] - 128); break;
    case AR_GGML_Q2_K: pack_crumbs(L, b + o.qs); break;
    case AR_GGML_Q3_K: pack_crumbs(L, b + o.qs); pack_highbits(L, 2, b + o.qh); break;
    case AR_GGML_Q4_K: pack_nibbles_k(L, b + o.qs); break;
    case AR_GGML_Q5_K: pack_nibbles_k(L, b + o.qs); pack_highbits(L, 4, b + o.qh); break;
    case AR_GGML_Q6_K: pack_q6(L, b + o.qs, b + o.qh); break;
    default: break;
    }
}

/* Effective scale and min of every group of one block (as the dequantizer
 * computes them: fp16 super scale times integer sub-scale). */
static void get_params(ar_ggml_type t, const uint8_t *b, float *s, float *m)
{
    kq_layout o = layout_of(t);
    switch (t) {
    case AR_GGML_Q4_0: case AR_GGML_Q5_0: case AR_GGML_Q8_0:
        s[0] = f16(b); m[0] = 0; break;
    case AR_GGML_Q4_1: case AR_GGML_Q5_1:
        s[0] = f16(b); m[0] = -f16(b + 2); break;
    case AR_GGML_Q2_K:
        for (int j = 0; j < 16; j++) {
            s[j] = f16(b + o.d) * (b[j] & 15);
            m[j] = f16(b + o.dmin) * (b[j] >> 4);
        }
        break;
    case AR_GGML_Q3_K:
        for (int j = 0; j < 16; j++) { s[j] = f16(b + o.d) * unpack_scale_q3(b + o.scales, j); m[j] = 0; }
        break;
    case AR_GGML_Q4_K: case AR_GGML_Q5_K:
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            unpack_scales_k4(b + o.scales, j, &sc, &mn);
            s[j] = f16(b + o.d) * sc;
            m[j] = f16(b + o.dmin) * mn;
        }
        break;
    case AR_GGML_Q6_K:
        for (int j = 0; j < 16; j++) { s[j] = f16(b + o.d) * (int8_t)b[o.scales + j]; m[j] = 0; }
        break;
    default: break;
    }
}

int ar_ggml_grid_of(ar_ggml_type t, ar_ggml_grid *g)
{
    switch (t) {
    case AR_GGML_Q4_0: *g = (ar_ggml_grid){32, 15, 8, 0}; return 0;
    case AR_GGML_Q4_1: *g = (ar_ggml_grid){32, 15, 0, 1}; return 0;
    case AR_GGML_Q5_0: *g = (ar_ggml_grid){32, 31, 16, 0}; return 0;
    case AR_GGML_Q5_1: *g = (ar_ggml_grid){32, 31, 0, 1}; return 0;
    case AR_GGML_Q8_0: *g = (ar_ggml_grid){32, 255, 128, 0}; return 0;
    case AR_GGML_Q2_K: *g = (ar_ggml_grid){16, 3, 0, 1}; return 0;
    case AR_GGML_Q3_K: *g = (ar_ggml_grid){16, 7, 4, 0}; return 0;
    case AR_GGML_Q4_K: *g = (ar_ggml_grid){32, 15, 0, 1}; return 0;
    case AR_GGML_Q5_K: *g = (ar_ggml_grid){32, 31, 0, 1}; return 0;
    case AR_GGML_Q6_K: *g = (ar_ggml_grid){16, 63, 32, 0}; return 0;
    default: return ar_error("gguf: type %s has no quantization grid", ar_ggml_type_name(t));
    }
}

/* Recompute the codes of one block from x with offsets v (may be NULL), keeping
 * the codes of groups whose scale is 0. Q8_0 keeps its symmetric ±127 range. */
static void requant_block(ar_ggml_type t, const ar_ggml_grid *g, const float *x, const float *v, uint8_t *b)
{
    float s[16], m[16];
    uint8_t L[QKK];
    int be = ar_ggml_block_elems(t), lo = t == AR_GGML_Q8_0 ? 1 : 0;
    get_params(t, b, s, m);
    get_codes(t, b, L);
    for (int j = 0; j < be; j++) {
        int k = j / g->group;
        if (!s[k]) continue;
        float q = (x[j] + m[k]) / s[k];
        if (v) q += v[j];
        L[j] = (uint8_t)(clampi(round_even(q), lo - g->offset, g->qmax - g->offset) + g->offset);
    }
    set_codes(t, b, L);
}

/* ---- k-quant reference quantizers ---------------------------------------------- */

static void ref_q2_k(const float *x, uint8_t *b)
{
    uint8_t L[QKK];
    float w[16], scales[16], mins[16], max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        scales[j] = asym_search(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    memset(b, 0, 16);
    put16(b + 80, h16(max_scale > 0 ? max_scale / 15.f : 0.f));
    put16(b + 82, h16(max_min > 0 ? max_min / 15.f : 0.f));
    for (int j = 0; j < 16; j++) {
        if (max_scale > 0) b[j] = (uint8_t)round_even(15.f / max_scale * scales[j]);
        if (max_min > 0) b[j] |= (uint8_t)(round_even(15.f / max_min * mins[j]) << 4);
    }
    pack_crumbs(L, b + 16);
}

static void ref_q3_k(const float *x, uint8_t *b)
{
    uint8_t L[QKK], v[16];
    float scales[16], amax = 0, max_scale = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = sym_descent(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) { amax = fabsf(scales[j]); max_scale = scales[j]; }
    }
    memset(b + 96, 0, 12);
    put16(b + 108, h16(0.f));
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; j++) v[j] = (uint8_t)(clampi((int8_t)round_even(iscale * scales[j]), -32, 31) + 32);
        pack_scales_q3(v, b + 96);
        put16(b + 108, h16(1 / iscale));
    }
    set_codes(AR_GGML_Q3_K, b, L);
}

/* Q4_K / Q5_K: 8 sub-blocks of 32, weights mean-RMS + |x|. */
static void ref_q45_k(const float *x, uint8_t *b, int nmax, float rmin, int nstep)
{
    ar_ggml_type t = nmax == 15 ? AR_GGML_Q4_K : AR_GGML_Q5_K;
    uint8_t L[QKK], sc[8], mn[8];
    float w[32], scales[8], mins[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(xs[l]);
        scales[j] = asym_search(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)round_even(inv_scale * scales[j]), lm = (uint8_t)round_even(inv_min * mins[j]);
        sc[j] = ls < 63 ? ls : 63;
        mn[j] = lm < 63 ? lm : 63;
    }
    pack_scales_k4(sc, mn, b + 4);
    put16(b, h16(max_scale / 63.f));
    put16(b + 2, h16(max_min / 63.f));
    set_codes(t, b, L);
}

/* Q6_K with or without an imatrix: each 16-element sub-block's scale by a
 * weighted symmetric search (weights qw, or x² without one), then the
 * sub-block scales as signed 8-bit steps of the largest one. */
static void quant_q6_k(const float *x, uint8_t *b, const float *qw)
{
    uint8_t L[QKK];
    float scales[16], w[16];
    for (int j = 0; j < 16; j++) {
        if (!qw)
            for (int l = 0; l < 16; l++) w[l] = x[16 * j + l] * x[16 * j + l];
        scales[j] = sym_search(16, 32, x + 16 * j, qw ? qw + 16 * j : w, L + 16 * j);
    }
    float max_scale = signed_absmax(scales, 16);
    memset(b, 0, 210);
    if (fabsf(max_scale) < ALL_ZERO_EPS) return;
    float iscale = -128.f / max_scale;
    put16(b + 208, h16(1 / iscale));
    for (int j = 0; j < 16; j++) {
        int l = round_even(iscale * scales[j]);
        b[192 + j] = (uint8_t)(int8_t)(l < 127 ? l : 127);
    }
    set_codes(AR_GGML_Q6_K, b, L);
}

/* ---- k-quant imatrix quantizers -------------------------------------------------
 * Per super-block σ² = 2·Σx²/256 (Q2_K: Σx²/256); element weight qw·sqrt(σ² + x²)
 * (Q6_K: qw alone, in quant_q6_k above); sub-block scales/mins by weighted searches, then the
 * super-block scales by positive_search (asym) or sym_search (Q3_K) weighted by
 * the sub-blocks' weight sums. */

static float block_sigma2(const float *x, float factor)
{
    float sumx2 = 0;
    for (int j = 0; j < QKK; j++) sumx2 += x[j] * x[j];
    return factor * sumx2 / QKK;
}

/* One sub-block's element weights qw·sqrt(σ² + x²) into w; returns their sum,
 * the sub-block's weight in the super-block scale search. */
static float sub_block_weights(const float *xs, const float *qws, float sigma2, int n, float *w)
{
    for (int l = 0; l < n; l++) w[l] = qws[l] * sqrtf(sigma2 + xs[l] * xs[l]);
    float sumw = 0;
    for (int l = 0; l < n; l++) sumw += w[l];
    return sumw;
}

/* Shared by Q2_K (group 16, nmax 3, 4-bit sub-scales) and Q4_K/Q5_K (group 32, 6-bit). */
static void imx_asym_k(ar_ggml_type t, const float *x, uint8_t *b, const float *qw)
{
    const int group = t == AR_GGML_Q2_K ? 16 : 32, ng = QKK / group;
    const int nmax = t == AR_GGML_Q2_K ? 3 : t == AR_GGML_Q4_K ? 15 : 31;
    const int smax = t == AR_GGML_Q2_K ? 15 : 63;
    kq_layout o = layout_of(t);
    uint8_t L[QKK], Ls[16], Lm[16];
    float w[32], sw[16], scales[16], mins[16];
    float sigma2 = block_sigma2(x, t == AR_GGML_Q2_K ? 1.f : 2.f);
    for (int j = 0; j < ng; j++) {
        const float *xs = x + group * j;
        sw[j] = sub_block_weights(xs, qw + group * j, sigma2, group, w);
        scales[j] = asym_search(group, nmax, xs, w, L + group * j, &mins[j], -0.9f, 0.05f, 36, 0);
    }
    float d = positive_search(ng, smax, scales, Ls, sw);
    float dm = positive_search(ng, smax, mins, Lm, sw);
    if (t == AR_GGML_Q2_K) {
        for (int j = 0; j < 16; j++) b[j] = (uint8_t)(Ls[j] | Lm[j] << 4);
    } else {
        pack_scales_k4(Ls, Lm, b + o.scales);
    }
    put16(b + o.d, h16(d));
    put16(b + o.dmin, h16(dm));
    set_codes(t, b, L);
}

static void imx_q3_k(const float *x, uint8_t *b, const float *qw)
{
    uint8_t L[QKK], Ls[16];
    float w[16], sw[16], scales[16];
    float sigma2 = block_sigma2(x, 2.f);
    for (int j = 0; j < 16; j++) {
        const float *xs = x + 16 * j;
        sw[j] = sub_block_weights(xs, qw + 16 * j, sigma2, 16, w);
        scales[j] = sym_search(16, 4, xs, w, L + 16 * j);
    }
    float d = sym_search(16, 32, scales, sw, Ls);
    pack_scales_q3(Ls, b + 96);
    put16(b + 108, h16(d));
    set_codes(AR_GGML_Q3_K, b, L);
}

/* ---- row drivers ---------------------------------------------------------------- */

/* Quantize one block of type t at x into b. qw: the block's imatrix slice or
 * NULL; sigma2_row: the row's mean square (legacy imatrix path only). */
static void quantize_block(ar_ggml_type t, const float *x, uint8_t *b, const float *qw, float sigma2_row)
{
    ar_ggml_grid g;
    switch (t) {
    case AR_GGML_Q4_0: case AR_GGML_Q5_0:
        if (qw) imx_legacy(x, b, t == AR_GGML_Q4_0 ? 4 : 5, 0, sigma2_row, qw);
        else ref_sym_legacy(x, b, t == AR_GGML_Q4_0 ? 4 : 5);
        return;
    case AR_GGML_Q4_1: case AR_GGML_Q5_1:
        if (qw) imx_legacy(x, b, t == AR_GGML_Q4_1 ? 4 : 5, 1, sigma2_row, qw);
        else ref_asym_legacy(x, b, t == AR_GGML_Q4_1 ? 4 : 5);
        return;
    case AR_GGML_Q8_0: ref_q8_0(x, b); return;
    case AR_GGML_Q2_K: if (qw) imx_asym_k(t, x, b, qw); else ref_q2_k(x, b); break;
    case AR_GGML_Q3_K: if (qw) imx_q3_k(x, b, qw); else ref_q3_k(x, b); break;
    case AR_GGML_Q4_K: if (qw) imx_asym_k(t, x, b, qw); else ref_q45_k(x, b, 15, -1.f, 20); break;
    case AR_GGML_Q5_K: if (qw) imx_asym_k(t, x, b, qw); else ref_q45_k(x, b, 31, -0.5f, 15); break;
    case AR_GGML_Q6_K: quant_q6_k(x, b, qw); break;
    default: return;
    }
    /* k-quants: final codes from the coded (fp16-rounded) scales */
    ar_ggml_grid_of(t, &g);
    requant_block(t, &g, x, NULL, b);
}

static int check_row(ar_ggml_type t, int64_t n, const char *what)
{
    int be = ar_ggml_block_elems(t);
    if (be == 0) return ar_error("gguf: %s: unknown tensor type %d", what, (int)t);
    if (n <= 0 || n % be)
        return ar_error("gguf: %s: row length %lld is not a multiple of %s's block of %d", what, (long long)n,
                        ar_ggml_type_name(t), be);
    return 0;
}

static int quantize_plain(ar_ggml_type t, const float *src, void *dst, size_t n)
{
    switch (t) {
    case AR_GGML_F32: return ar_from_f32(dst, src, AR_F32, n);
    case AR_GGML_F16: return ar_from_f32(dst, src, AR_F16, n);
    case AR_GGML_BF16: return ar_from_f32(dst, src, AR_BF16, n);
    default: return ar_error("gguf: cannot quantize to %s", ar_ggml_type_name(t));
    }
}

int ar_ggml_quantize(ar_ggml_type t, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                     const float *imatrix)
{
    if (check_row(t, n_per_row, "quantize") || nrows < 0) return -1;
    if (!ar_ggml_is_quantized(t)) return quantize_plain(t, src, dst, (size_t)(nrows * n_per_row));
    const int be = ar_ggml_block_elems(t);
    const size_t bb = ar_ggml_block_bytes(t), rb = ar_ggml_row_bytes(t, n_per_row);
    if (t == AR_GGML_Q8_0) imatrix = NULL;
#pragma omp parallel for schedule(dynamic, 16) if (nrows * n_per_row > 65536)
    for (int64_t r = 0; r < nrows; r++) {
        const float *x = src + r * n_per_row;
        uint8_t *row = (uint8_t *)dst + r * rb;
        float sigma2 = 0;
        if (imatrix && be == QK) {
            for (int64_t j = 0; j < n_per_row; j++) sigma2 += x[j] * x[j];
            sigma2 = sigma2 / n_per_row;
        }
        for (int64_t k = 0; k < n_per_row / be; k++)
            quantize_block(t, x + k * be, row + k * bb, imatrix ? imatrix + k * be : NULL, sigma2);
    }
    return 0;
}

/* ---- dequantization ------------------------------------------------------------ */

static void dequant_block(ar_ggml_type t, const uint8_t *b, float *y)
{
    ar_ggml_grid g;
    float s[16], m[16];
    uint8_t L[QKK];
    ar_ggml_grid_of(t, &g);
    get_params(t, b, s, m);
    get_codes(t, b, L);
    const int be = ar_ggml_block_elems(t);
    if (!g.asym) {
        for (int j = 0; j < be; j++) y[j] = s[j / g.group] * (float)(L[j] - g.offset);
    } else if (t == AR_GGML_Q4_1 || t == AR_GGML_Q5_1) {
        for (int j = 0; j < be; j++) y[j] = L[j] * s[0] + f16(b + 2);   /* ggml's order: x·d + m */
    } else {
        for (int j = 0; j < be; j++) y[j] = s[j / g.group] * L[j] - m[j / g.group];
    }
}

int ar_ggml_dequantize(ar_ggml_type t, const void *src, float *dst, int64_t n)
{
    if (check_row(t, n, "dequantize")) return -1;
    switch (t) {
    case AR_GGML_F32: return ar_to_f32(dst, src, AR_F32, (size_t)n);
    case AR_GGML_F16: return ar_to_f32(dst, src, AR_F16, (size_t)n);
    case AR_GGML_BF16: return ar_to_f32(dst, src, AR_BF16, (size_t)n);
    default: break;
    }
    if (!ar_ggml_is_quantized(t)) return ar_error("gguf: cannot dequantize %s", ar_ggml_type_name(t));
    const int be = ar_ggml_block_elems(t);
    const size_t bb = ar_ggml_block_bytes(t);
    for (int64_t k = 0; k < n / be; k++) dequant_block(t, (const uint8_t *)src + k * bb, dst + k * be);
    return 0;
}

/* ---- grid API -------------------------------------------------------------------- */

int ar_ggml_frozen_params(ar_ggml_type t, const void *blocks, int64_t n, float *scale, float *min)
{
    ar_ggml_grid g;
    if (ar_ggml_grid_of(t, &g) || check_row(t, n, "frozen params")) return -1;
    const int be = ar_ggml_block_elems(t), per = be / g.group;
    const size_t bb = ar_ggml_block_bytes(t);
    for (int64_t k = 0; k < n / be; k++) {
        float s[16], m[16];
        get_params(t, (const uint8_t *)blocks + k * bb, s, m);
        memcpy(scale + k * per, s, sizeof(float) * per);
        if (min) memcpy(min + k * per, m, sizeof(float) * per);
    }
    return 0;
}

int ar_ggml_fake_quant(ar_ggml_type t, const float *w, const float *v, const float *scale, const float *min,
                       int64_t n, float *out)
{
    ar_ggml_grid g;
    if (ar_ggml_grid_of(t, &g)) return -1;
    const int lo = t == AR_GGML_Q8_0 ? 1 : 0;
    for (int64_t i = 0; i < n; i++) {
        float s = scale[i / g.group], m = min ? min[i / g.group] : 0.f;
        if (!s) { out[i] = -m; continue; }
        float q = (w[i] + m) / s + (v ? v[i] : 0.f);
        int u = clampi(round_even(q), lo - g.offset, g.qmax - g.offset);
        out[i] = s * (float)u - m;
    }
    return 0;
}

int ar_ggml_requantize_codes(ar_ggml_type t, const float *w, const float *v, void *blocks, int64_t n)
{
    ar_ggml_grid g;
    if (ar_ggml_grid_of(t, &g) || check_row(t, n, "requantize")) return -1;
    const int be = ar_ggml_block_elems(t);
    const size_t bb = ar_ggml_block_bytes(t);
    for (int64_t k = 0; k < n / be; k++)
        requant_block(t, &g, w + k * be, v ? v + k * be : NULL, (uint8_t *)blocks + k * bb);
    return 0;
}
