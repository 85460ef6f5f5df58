/* quant_int_kern.h — the per-element loops of the integer fake-quantizer
 * (quant_int.c), in a portable reference and in AVX2 / AVX-512 builds of the
 * same C, chosen once at run time by what the CPU has.
 *
 * Every build gives the same bits as the reference: the loops are the
 * reference's own operations in the same order, vectorized only across
 * elements (#pragma omp simd), never across a sum. Correctly rounded IEEE
 * operations (÷, +, ×, conversions) and round-half-even with the inexact
 * exception suppressed (vroundps / vrndscaleps imm 12, nearbyintf) give the
 * same result in a vector lane as in a scalar; a compare-and-select clamp
 * is written as the scalar one; no FMA is formed (ISO C mode, -std=c11,
 * makes GCC's -ffp-contract off). The group sums of the backward stay
 * sequential in element order: the vector loop writes each element's term,
 * and the sums run over eight groups side by side (eight independent
 * chains, each in the reference's order).
 * tests/unit/test_quant_kern.c checks every build against the reference,
 * bit for bit, through the quantizer's entry points.
 */
#ifndef AR_QUANT_INT_KERN_H
#define AR_QUANT_INT_KERN_H
#include "quant_spec.h"

/* What the element loops of one group need from its scale state. */
typedef struct {
    float s, z;          /* scale (cast, floored) and zero point (0 for sym) */
    float lo, hi;        /* integer level bounds */
    float code_shift;    /* sym: 2^(b-1) so codes are unsigned; asym 0 */
    int bf16;            /* round ŵ to bf16 (AR_QF_BF16) */
} ar_qint_group;

/* Instruction sets of the builds, best last. */
enum { AR_QINT_REF = 0, AR_QINT_AVX2, AR_QINT_AVX512, AR_QINT_NISA };

typedef struct {
    /* Range of w [len] widened to contain 0: min(0, min w), max(0, max w);
     * NaN elements are ignored. */
    void (*range)(const float *w, int len, float *wmin, float *wmax);
    /* q = clamp(round(w/s + v) + z, lo, hi) (v may be NULL: 0); wq (may be
     * NULL) = s·(q - z), bf16-rounded with g->bf16; codes (may be NULL) =
     * q + code_shift. */
    void (*forward)(const ar_qint_group *g, const float *w, const float *v, int len, float *wq, uint8_t *codes);
    /* Straight-through terms of one group: with t = round(w/s + v) + z
     * (before the clamp), inside = lo < t < hi, q = clamp(t):
     * dv[j] += dwq[j]·s where inside (dv may be NULL);
     * ts[j] = dwq[j]·((q - z) - (inside ? w/s : 0)) in double (dL/ds's terms);
     * tz[j] (may be NULL) = dwq[j]·s·(inside - 1) in double (dL/dz's terms). */
    void (*backward)(const ar_qint_group *g, const float *w, const float *v, const float *dwq, int len,
                     float *dv, double *ts, double *tz);
    /* backward with dv replaced by SignSGD's step on V in place: with
     * dv_j = +0 + dwq[j]·s where inside, else +0 (what backward adds into a
     * zeroed dv), v[j] = v[j] - lr·sign(dv_j), sign(0) = 0. v is read
     * (before its step) as backward's v. */
    void (*backward_step)(const ar_qint_group *g, const float *w, float *v, const float *dwq, int len, float lr,
                          double *ts, double *tz);
} ar_qint_kernels;

/* The loops of one build, or NULL when this CPU lacks its instructions. */
const ar_qint_kernels *ar_qint_kernels_isa(int isa);

/* The best build this CPU runs (looked up once). */
const ar_qint_kernels *ar_qint_kernels_best(void);

/* ar_quant_int_forward / ar_quant_int_backward through the loops of kern;
 * the entry points of quant_int.h use ar_qint_kernels_best(). Exposed so
 * the tests can compare every build against the reference. */
int ar_quant_int_forward_with(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n, int k,
                              const ar_quant_params *p, const ar_quant_out *out);
int ar_quant_int_backward_with(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n, int k,
                               const ar_quant_params *p, const float *dwq, float *dv, float *dalpha, float *dbeta);
int ar_quant_int_backward_step_with(const ar_qint_kernels *kern, const ar_quant_spec *qs, const float *w, int n,
                                    int k, const ar_quant_params *p, const float *dwq, float *v, float lr,
                                    float *dalpha, float *dbeta);

#endif
