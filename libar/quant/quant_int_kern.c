/* quant_int_kern.c — the integer fake-quantizer's element loops: the
 * reference (the formulas as quant_int.h writes them, one element at a
 * time) and the vector builds (quant_int_kern.h says why they give the same
 * bits). */
#include "quant_int_kern.h"

#include <math.h>
#include <string.h>

/* ---- reference ------------------------------------------------------------ */

static float clamp_ref(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* The bf16 rounding of dtype.c's ar_round_bf16 (NaN quieted, else round half
 * to even), written out so that it vectorizes. */
static inline __attribute__((always_inline)) float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) << 16
                                                 : ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16;
    float o;
    memcpy(&o, &r, 4);
    return o;
}

static void range_ref(const float *w, int len, float *wmin, float *wmax)
{
    float lo = 0.0f, hi = 0.0f;
    for (int j = 0; j < len; j++) { if (w[j] < lo) lo = w[j]; if (w[j] > hi) hi = w[j]; }
    *wmin = lo; *wmax = hi;
}

static void forward_ref(const ar_qint_group *g, const float *w, const float *v, int len, float *wq, uint8_t *codes)
{
    for (int j = 0; j < len; j++) {
        float q = clamp_ref(nearbyintf(w[j] / g->s + (v ? v[j] : 0.0f)) + g->z, g->lo, g->hi);
        if (wq) {
            float r = g->s * (q - g->z);
            wq[j] = g->bf16 ? round_bf16(r) : r;
        }
        if (codes) codes[j] = (uint8_t)(q + g->code_shift);
    }
}

static void backward_ref(const ar_qint_group *g, const float *w, const float *v, const float *dwq, int len,
                         float *dv, double *ts, double *tz)
{
    for (int j = 0; j < len; j++) {
        float t = nearbyintf(w[j] / g->s + (v ? v[j] : 0.0f)) + g->z;
        /* The clamp passes gradient on the open interval (lo, hi) only: PyTorch
         * (2.15, the peer's) gives torch.clamp with number bounds a zero
         * gradient at x == lo and x == hi, so AutoRound's tuning sends no
         * gradient to V at the extreme levels, and there ŵ's scale gradient
         * is q alone (docs/peer-benchmark.md §1, "clamp boundary"). */
        int inside = t > g->lo && t < g->hi;
        float q = clamp_ref(t, g->lo, g->hi);
        double gj = dwq[j];
        if (dv && inside) dv[j] += (float)(gj * g->s);
        /* ŵ = s·(q - z): direct term, plus q's dependence on s through w/s. */
        ts[j] = gj * ((double)q - g->z - (inside ? (double)w[j] / g->s : 0.0));
        /* dŵ/dz = s·(dq/dz - 1) = s·(inside - 1). */
        if (tz) tz[j] = gj * g->s * (inside - 1);
    }
}

/* SignSGD's sign: 1, -1, or 0 for ±0 and NaN (signround.c's sign_step). */
static inline __attribute__((always_inline)) float sign_of(float x) { return (float)((x > 0) - (x < 0)); }

static void backward_step_ref(const ar_qint_group *g, const float *w, float *v, const float *dwq, int len, float lr,
                              double *ts, double *tz)
{
    for (int j = 0; j < len; j++) {
        float dv = 0.0f;
        backward_ref(g, w + j, v + j, dwq + j, 1, &dv, ts + j, tz ? tz + j : NULL);
        v[j] -= lr * sign_of(dv);
    }
}

static const ar_qint_kernels kern_ref = { range_ref, forward_ref, backward_ref, backward_step_ref };

/* ---- vector builds ---------------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AR_QINT_HAVE_SIMD 1

/* Range over 16 lanes, each keeping the reference's "strictly below / above"
 * rule; a lane never holds -0 (it starts at +0 and only takes strictly
 * smaller values) and NaN never enters, so combining the lanes the same way
 * gives the reference's value. */
static inline __attribute__((always_inline)) void range_body(const float *w, int len, float *wmin, float *wmax)
{
    enum { L = 16 };
    float lo[L], hi[L];
    for (int l = 0; l < L; l++) lo[l] = hi[l] = 0.0f;
    int j = 0;
    for (; j + L <= len; j += L) {
        #pragma omp simd
        for (int l = 0; l < L; l++) {
            float x = w[j + l];
            lo[l] = x < lo[l] ? x : lo[l];
            hi[l] = x > hi[l] ? x : hi[l];
        }
    }
    for (int h = L / 2; h; h /= 2)   /* pairwise: the lanes hold exact values, so any order is the same */
        for (int l = 0; l < h; l++) {
            lo[l] = lo[l + h] < lo[l] ? lo[l + h] : lo[l];
            hi[l] = hi[l + h] > hi[l] ? hi[l + h] : hi[l];
        }
    float a = lo[0], b = hi[0];
    for (; j < len; j++) { if (w[j] < a) a = w[j]; if (w[j] > b) b = w[j]; }
    *wmin = a; *wmax = b;
}

/* The reference forward with its options fixed at compile time (each call
 * site below passes constants, so every combination gets its own loop). */
static inline __attribute__((always_inline)) void
forward_body(const ar_qint_group *g, const float *w, const float *v, int len, float *wq, uint8_t *codes,
             const int has_v, const int bf16, const int has_wq, const int has_codes)
{
    const float s = g->s, z = g->z, lo = g->lo, hi = g->hi, shift = g->code_shift;
    #pragma omp simd
    for (int j = 0; j < len; j++) {
        float t = nearbyintf(w[j] / s + (has_v ? v[j] : 0.0f)) + z;
        float q = t < lo ? lo : (t > hi ? hi : t);
        if (has_wq) {
            float r = s * (q - z);
            wq[j] = bf16 ? round_bf16(r) : r;
        }
        if (has_codes) codes[j] = (uint8_t)(q + shift);
    }
}

/* The reference backward, with one division: w/s is taken once in double,
 * d = RN53(w/s), and its float rounding RN24(d) is the reference's f32
 * quotient RN24(w/s), since rounding to 53 bits and then to 24 equals
 * rounding to 24 whenever 53 >= 2·24 + 2 (Figueroa, "When is double rounding
 * innocuous?", SIGNUM 1995, for +, -, ×, ÷ and √ of f32 operands). */
static inline __attribute__((always_inline)) void
backward_body(const ar_qint_group *g, const float *w, const float *v, const float *dwq, int len,
              float *dv, double *ts, double *tz, const int has_v, const int has_dv, const int has_tz,
              const int has_step, float *vstep, float lr)
{
    const float s = g->s, z = g->z, lo = g->lo, hi = g->hi;
    const double sd = s, zd = z;
    #pragma omp simd
    for (int j = 0; j < len; j++) {
        double d = (double)w[j] / sd;
        float t = nearbyintf((float)d + (has_v ? v[j] : 0.0f)) + z;
        /* written as selects one after another, the shape GCC's if-conversion
         * vectorizes for AVX2 as well as AVX-512 */
        _Bool inside = (t > lo) && (t < hi);
        float q = t < lo ? lo : (t > hi ? hi : t);
        float gj = dwq[j];
        /* (float)(g·s in double) is g·s in f32: the double product is exact */
        float gs = gj * s;
        double dd = inside ? d : 0.0;
        ts[j] = (double)gj * (((double)q - zd) - dd);
        if (has_dv) {
            float cur = dv[j], a = cur + gs;
            dv[j] = inside ? a : cur;
        }
        if (has_step) {   /* dV's element would be +0 + g·s inside, else +0; sign(+0 + x) = sign(x) */
            float sg = gs > 0.0f ? 1.0f : 0.0f;
            sg = gs < 0.0f ? -1.0f : sg;
            sg = inside ? sg : 0.0f;
            vstep[j] = vstep[j] - lr * sg;
        }
        if (has_tz) tz[j] = (double)gj * sd * (double)((int)inside - 1);
    }
}

/* Dispatch a body over its option constants; expands inside a target
 * function so that the body is compiled for that target. */
#define FORWARD_CASES(g, w, v, len, wq, codes)                                                         \
    switch ((v != NULL) | (g)->bf16 << 1 | (wq != NULL) << 2 | (codes != NULL) << 3) {                 \
    case 0: forward_body(g, w, v, len, wq, codes, 0, 0, 0, 0); break;                                  \
    case 1: forward_body(g, w, v, len, wq, codes, 1, 0, 0, 0); break;                                  \
    case 2: forward_body(g, w, v, len, wq, codes, 0, 1, 0, 0); break;                                  \
    case 3: forward_body(g, w, v, len, wq, codes, 1, 1, 0, 0); break;                                  \
    case 4: forward_body(g, w, v, len, wq, codes, 0, 0, 1, 0); break;                                  \
    case 5: forward_body(g, w, v, len, wq, codes, 1, 0, 1, 0); break;                                  \
    case 6: forward_body(g, w, v, len, wq, codes, 0, 1, 1, 0); break;                                  \
    case 7: forward_body(g, w, v, len, wq, codes, 1, 1, 1, 0); break;                                  \
    case 8: forward_body(g, w, v, len, wq, codes, 0, 0, 0, 1); break;                                  \
    case 9: forward_body(g, w, v, len, wq, codes, 1, 0, 0, 1); break;                                  \
    case 10: forward_body(g, w, v, len, wq, codes, 0, 1, 0, 1); break;                                 \
    case 11: forward_body(g, w, v, len, wq, codes, 1, 1, 0, 1); break;                                 \
    case 12: forward_body(g, w, v, len, wq, codes, 0, 0, 1, 1); break;                                 \
    case 13: forward_body(g, w, v, len, wq, codes, 1, 0, 1, 1); break;                                 \
    case 14: forward_body(g, w, v, len, wq, codes, 0, 1, 1, 1); break;                                 \
    default: forward_body(g, w, v, len, wq, codes, 1, 1, 1, 1); break;                                 \
    }

#define BACKWARD_CASES(g, w, v, dwq, len, dv, ts, tz)                                                  \
    switch ((v != NULL) | (dv != NULL) << 1 | (tz != NULL) << 2) {                                     \
    case 0: backward_body(g, w, v, dwq, len, dv, ts, tz, 0, 0, 0, 0, NULL, 0); break;                              \
    case 1: backward_body(g, w, v, dwq, len, dv, ts, tz, 1, 0, 0, 0, NULL, 0); break;                              \
    case 2: backward_body(g, w, v, dwq, len, dv, ts, tz, 0, 1, 0, 0, NULL, 0); break;                              \
    case 3: backward_body(g, w, v, dwq, len, dv, ts, tz, 1, 1, 0, 0, NULL, 0); break;                              \
    case 4: backward_body(g, w, v, dwq, len, dv, ts, tz, 0, 0, 1, 0, NULL, 0); break;                              \
    case 5: backward_body(g, w, v, dwq, len, dv, ts, tz, 1, 0, 1, 0, NULL, 0); break;                              \
    case 6: backward_body(g, w, v, dwq, len, dv, ts, tz, 0, 1, 1, 0, NULL, 0); break;                              \
    default: backward_body(g, w, v, dwq, len, dv, ts, tz, 1, 1, 1, 0, NULL, 0); break;                             \
    }

#define DEFINE_BUILD(name, isa_str)                                                                     \
    __attribute__((target(isa_str))) static void range_##name(const float *w, int len, float *wmin,     \
                                                             float *wmax)                              \
    {                                                                                                  \
        range_body(w, len, wmin, wmax);                                                                \
    }                                                                                                  \
    __attribute__((target(isa_str))) static void forward_##name(const ar_qint_group *g, const float *w, \
                                                               const float *v, int len, float *wq,     \
                                                               uint8_t *codes)                         \
    {                                                                                                  \
        FORWARD_CASES(g, w, v, len, wq, codes)                                                         \
    }                                                                                                  \
    __attribute__((target(isa_str))) static void backward_##name(const ar_qint_group *g, const float *w,\
                                                                const float *v, const float *dwq,      \
                                                                int len, float *dv, double *ts,        \
                                                                double *tz)                            \
    {                                                                                                  \
        BACKWARD_CASES(g, w, v, dwq, len, dv, ts, tz)                                                  \
    }                                                                                                  \
    __attribute__((target(isa_str))) static void backward_step_##name(const ar_qint_group *g,           \
                                                                     const float *w, float *v,          \
                                                                     const float *dwq, int len,         \
                                                                     float lr, double *ts, double *tz)  \
    {                                                                                                  \
        if (tz) backward_body(g, w, v, dwq, len, NULL, ts, tz, 1, 0, 1, 1, v, lr);                     \
        else backward_body(g, w, v, dwq, len, NULL, ts, tz, 1, 0, 0, 1, v, lr);                        \
    }                                                                                                  \
    static const ar_qint_kernels kern_##name = { range_##name, forward_##name, backward_##name,        \
                                                 backward_step_##name };

DEFINE_BUILD(avx2, "avx2")
DEFINE_BUILD(avx512, "avx512f,avx512dq,avx512bw,avx512vl")
#endif

const ar_qint_kernels *ar_qint_kernels_isa(int isa)
{
    if (isa == AR_QINT_REF) return &kern_ref;
#ifdef AR_QINT_HAVE_SIMD
    __builtin_cpu_init();
    if (isa == AR_QINT_AVX2 && __builtin_cpu_supports("avx2")) return &kern_avx2;
    if (isa == AR_QINT_AVX512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return &kern_avx512;
#endif
    return NULL;
}

const ar_qint_kernels *ar_qint_kernels_best(void)
{
    static const ar_qint_kernels *best;   /* threads racing here all store the same value */
    const ar_qint_kernels *k = __atomic_load_n(&best, __ATOMIC_RELAXED);
    if (k) return k;
    for (int isa = AR_QINT_NISA - 1; !k; isa--) k = ar_qint_kernels_isa(isa);
    __atomic_store_n(&best, k, __ATOMIC_RELAXED);
    return k;
}
