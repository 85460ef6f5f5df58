/* quant_int.h — integer fake-quantizers of one Linear weight (AutoRound's
 * int_sym and int_asym), their straight-through backward, RTN and opt-RTN.
 * Layout and tunables: quant_spec.h. Callers use the entry points of quant.h,
 * which dispatch here for AR_QDT_INT.
 *
 * Formulas (spec §2.2, §2.3), with m = 2^(b-1), maxq = 2^b - 1, per group:
 *   wmin = min(0, min w), wmax = max(0, max w); α, β clamped to [0, hi]
 *   sym:  a = -wmin·α, c = wmax·β, s = ±max(a, c)/m (negative unless a > c),
 *         or s = init_scale·β when init_scale is given (SignRoundV2);
 *         q = clamp(round(w/s + V), -m, m-1), ŵ = s·q
 *   asym: s = (wmax·β - wmin·α)/maxq, z = round(-wmin·α / s),
 *         q = clamp(round(w/s + V) + z, 0, maxq), ŵ = s·(q - z)
 * The scale is rounded to fp16 (AutoRound's default scale_dtype) and its
 * magnitude clamped to at least 1e-5 (1e-8 with fp32 scales). round() is
 * round-half-to-even. All arithmetic is f32, as PyTorch's promotion of a bf16
 * weight, an fp16 scale and an f32 V gives.
 */
#ifndef AR_QUANT_INT_H
#define AR_QUANT_INT_H
#include "quant_spec.h"

/* Check an integer spec: bits (2..8) and group size (> 0 or -1); 0 or -1
 * with ar_error set. */
int ar_quant_int_check(const ar_quant_spec *qs);

/* Fake-quantize W [N, K] with the tunables p (may be NULL) into out.
 * Returns 0, or -1 with ar_error set for a bad spec or init_scale with asym. */
int ar_quant_int_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                         const ar_quant_params *p, const ar_quant_out *out);

/* Straight-through backward of ar_quant_int_forward: given dL/dŵ [N, K], ADD
 * dL/dV [N, K], dL/dα and dL/dβ [N, ngroups] into dv, dalpha, dbeta (each may
 * be NULL). Rounding passes the gradient as identity; a clamp passes it only
 * inside its open interval (V and s reach ŵ only while q is not clamped);
 * the scale's fp16 cast passes it unchanged, its magnitude floor blocks it.
 * sym: ds reaches α or β through max(a, c); on a tie a == c each gets half,
 * as PyTorch's maximum() backward does (the forward's tie rule only picks the
 * sign). With init_scale, dβ = ds·init_scale and dα stays 0.
 * asym: z = round(-wmin·α/s) passes gradient to α and s as identity.
 * The α/β clamps are in-place value clamps in AutoRound, not graph ops, so
 * they never mask the gradient. Returns 0 or -1 (bad spec). */
int ar_quant_int_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                          const ar_quant_params *p, const float *dwq,
                          float *dv, float *dalpha, float *dbeta);

/* ar_quant_int_backward into a zeroed dV followed by SignSGD's step on V,
 * V -= lr·sign(dV) with sign(0) = 0, in one pass that keeps no dV: the same
 * bits as those two steps (quant_int_kern.h). v must be p->v (read for the
 * backward, then stepped in place); dalpha, dbeta as ar_quant_int_backward.
 * Returns 0 or -1 (bad spec; v not p->v). */
int ar_quant_int_backward_step(const ar_quant_spec *qs, const float *w, int n, int k, const ar_quant_params *p,
                               const float *dwq, float *v, float lr, float *dalpha, float *dbeta);

/* Importance-weighted scale search of opt_rtn_int_sym for a sym spec: per
 * group, start from iscale = -m / wmax_signed (wmax_signed = the element of
 * largest |w|, first one on ties), then try iscale = -(m - step·i)/wmax_signed,
 * i ∈ [-n, n] \ {0} (2 bits: step 0.01, n = 90; else step = 1.5·m/200,
 * n = 100), keep the candidate 1/iscale with the strictly smallest
 * Σ imat_j (s·L_j - w_j)², L = clamp(round(iscale·w), -m, m-1). imat [K] may be
 * NULL (unweighted); its zero entries are repaired as AutoRound does (group
 * rows with more than G/2 zeros weigh by |w| for bits ≤ 3 or |w| + sqrt(Σw²/32)
 * otherwise; other zeros take the row mean). The result is clamped to
 * |s| ≥ thresh but NOT rounded to fp16: it is the scale opt_rtn_int_sym
 * quantizes with (and SignRoundV2's init_scale). scale: [N, ngroups].
 * With AR_QF_BF16 the arithmetic is rounded to bf16 after every tensor op, as
 * PyTorch eager runs it on a bf16 weight. Returns 0 or -1. */
int ar_quant_search_scales(const ar_quant_spec *qs, const float *w, int n, int k,
                           const float *imat, float *scale);

/* RTN with an importance matrix (opt-RTN), as AutoRound's iters=0 path:
 * sym → the searched scale s of ar_quant_search_scales, then
 * q = clamp(round(w/s), -m, m-1), ŵ = s·q, both in the weight's precision
 * (bf16 with AR_QF_BF16) and with s NOT rounded to fp16 (the exporter rounds
 * the stored scale later); asym → plain min/max RTN (ar_quant_int_forward with
 * no tunables). Outputs as ar_quant_forward. Returns 0 or -1. */
int ar_quant_int_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                         const float *imat, const ar_quant_out *out);

#endif
