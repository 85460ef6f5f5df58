/* ops_amp.c — the AMP path's elementwise passes with a vectorized exp; see
 * ops_amp.h.
 *
 * exp(x) = 2^n · p(r), n = round(x / ln 2), r = x − n ln 2 (Cody–Waite: ln 2
 * split into ln2_hi, 12 significant bits so n·ln2_hi is exact for |n| <= 2^12,
 * and ln2_lo), |r| <= ln 2 / 2 = 0.347, p the degree-7 Taylor polynomial of
 * e^r. Error, relative to e^x:
 * - truncation: r^8 / 8! · e^|r| <= 0.347^8 / 40320 · 1.42 = 7.4e-9;
 * - the reduction: ln2_lo's own error (|ln 2 − ln2_hi − ln2_lo| < 2^-45) times
 *   |n| <= 217 is < 7e-12; the two fused steps round r once each, moving
 *   e^r by at most 2u·|r| relative (u = 2^-24);
 * - Horner in fused multiply-adds: each step rounds once; the terms of p
 *   are dominated by 1 (Σ |c_i r^i| <= e^0.347 = 1.42 against p >= 0.707),
 *   so the 8 roundings give at most 8 · 1.42 / 0.707 · u = 16.1u;
 * - scalef (·2^n) is exact away from the subnormal range.
 * Total: 7.4e-9 + 7e-12 + (0.7 + 16.1)u = 1.009e-6 (AR_AMP_EXP_REL_ERR).
 * Inputs are clamped to ±150, beyond which e^x is inf or 0 in f32 anyway. */
#include "ops_amp.h"
#include "ops.h"

#ifdef __x86_64__
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))

AVX512 static inline __m512 exp16(__m512 x)
{
    /* beyond ±150 e^x is inf or 0 in f32 anyway; the clamp keeps r small */
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-150.0f)), _mm512_set1_ps(150.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* sigmoid(g) = 1 / (1 + e^-g) */
AVX512 static inline __m512 sigmoid16(__m512 g)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
}

/* Whole blocks of 16 [0, n16); the caller does the tail with ops.h. */
AVX512 static void swiglu_fwd16(float *out, const float *gate, const float *up, long n16)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n16; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i), u = _mm512_loadu_ps(up + i);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), u));
    }
}

AVX512 static void swiglu_bwd16(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                long n16)
{
    __m512 one = _mm512_set1_ps(1.0f);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n16; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i), d = _mm512_loadu_ps(dout + i), sg = sigmoid16(g);
        if (dgate) {
            /* silu'(g) = sg (1 + g (1 − sg)) */
            __m512 ds = _mm512_mul_ps(sg, _mm512_fmadd_ps(g, _mm512_sub_ps(one, sg), one));
            __m512 du = _mm512_mul_ps(d, _mm512_loadu_ps(up + i));
            _mm512_storeu_ps(dgate + i, _mm512_mul_ps(du, ds));
        }
        if (dup) _mm512_storeu_ps(dup + i, _mm512_mul_ps(d, _mm512_mul_ps(g, sg)));
    }
}

static int have_avx512(void)
{
    static int have = -1;
    if (have < 0) have = __builtin_cpu_supports("avx512f") ? 1 : 0;
    return have;
}

void ar_swiglu_forward_amp(float *out, const float *gate, const float *up, long n)
{
    long n16 = have_avx512() ? n / 16 * 16 : 0;
    if (n16) swiglu_fwd16(out, gate, up, n16);
    ar_swiglu_forward(out + n16, gate + n16, up + n16, n - n16);
}

void ar_swiglu_backward_amp(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n)
{
    long n16 = have_avx512() ? n / 16 * 16 : 0;
    if (n16) swiglu_bwd16(dgate, dup, dout, gate, up, n16);
    for (long i = n16; i < n; i++) {   /* ops.h's loop adds: clear the tail first */
        if (dgate) dgate[i] = 0;
        if (dup) dup[i] = 0;
    }
    ar_swiglu_backward(dgate ? dgate + n16 : NULL, dup ? dup + n16 : NULL, dout + n16, gate + n16, up + n16,
                       n - n16);
}

#else
void ar_swiglu_forward_amp(float *out, const float *gate, const float *up, long n)
{
    ar_swiglu_forward(out, gate, up, n);
}

void ar_swiglu_backward_amp(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n)
{
    for (long i = 0; i < n; i++) {
        if (dgate) dgate[i] = 0;
        if (dup) dup[i] = 0;
    }
    ar_swiglu_backward(dgate, dup, dout, gate, up, n);
}
#endif
