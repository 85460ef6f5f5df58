/* quant_fp.h — floating-point fake-quantizers of one Linear weight
 * (spec §4.2–4.4): OCP microscaling MXFP4 / MXFP8 (E8M0 shared scale per 32),
 * NVFP4 (E4M3 scale per 16 plus a global FP32 scale) and FP8 E4M3 (per
 * tensor, per output channel or per 128×128 tile), their straight-through
 * backward and opt-RTN scale searches, and the element codecs the packers
 * and the activation quantizers (quant_act.h) share.
 *
 * ar_quant_forward/backward/opt_rtn (quant.h) dispatch here when
 * ar_quant_spec.dtype is not AR_QDT_INT, so the tuner needs no change.
 * Layout and tunables as quant.h: W [N, K], groups along K, per-group tensors
 * [N, ngroups] (ngroups = ar_quant_ngroups(k, G)). Tiles that span several
 * rows (FP8 per tensor: G = 0; FP8 blocks: AR_QF_BLOCK2D) keep their one
 * tunable β at the tile's first row, [r0·ngroups + g], and repeat their scale
 * in every row of the scale output. α (min_scale) is unused: it has no
 * gradient in these quantizers.
 *
 * Per group, with amax = max|w| over the group (the zero pad of a short last
 * group never changes it), c = amax·β·init_scale:
 *   MX:  e = floor(log2 c) − emax (c = 0: 1 − emax), clamped to [−127, 127];
 *        S = 2^e; x = clamp(w/S + V, ±max_norm); ŵ = S·elem(x), elem = the
 *        element format with round-half-even mantissas (FP4 E2M1: emax 2,
 *        max 6; FP8 E4M3: emax 8, max 448).
 *   NV:  gs = 448·6/max|W| (or spec.global_scale); s = e4m3(clamp(gs·c/6,
 *        ±448)); o = 1/(s/gs); x = clamp(w·o + V, ±6); ŵ = fp4(x)/o.
 *   FP8: s = max(c/448, 1/(448·512)); x = clamp(w/s + V, ±448); ŵ = s·e4m3(x).
 * Scale outputs: MX 2^e, NV s (an E4M3 value; dequant ŵ = code·s/gs), FP8 s.
 * Codes: FP4 = sign·8 + index into {0, .5, 1, 1.5, 2, 3, 4, 6}; FP8 = the
 * E4M3 byte. */
#ifndef AR_QUANT_FP_H
#define AR_QUANT_FP_H
#include "quant_spec.h"
#include <stddef.h>
#include <stdint.h>

/* ---- element codecs ---------------------------------------------------- */

/* Largest finite E4M3 value and largest FP4 E2M1 value. */
#define AR_E4M3_MAX 448.0f
#define AR_FP4_MAX 6.0f

/* Round to the FP4 E2M1 grid, half to even, saturating at ±6 (NVFP4's
 * cast_to_fp4; also MXFP4's element rounding after its clamp). */
float ar_fp4_round(float x);
/* FP4 code of a grid value (sign bit 3, magnitude index in bits 0..2). */
uint8_t ar_fp4_encode(float q);
/* Value of an FP4 code (low 4 bits used). */
float ar_fp4_decode(uint8_t code);

/* Round to the nearest FP8 E4M3 (fn: no inf, max 448) value, half to even,
 * subnormals included, saturating at ±448. NaN stays NaN. */
float ar_e4m3_round(float x);
/* E4M3 byte of x (rounded as ar_e4m3_round; NaN → 0x7F). */
uint8_t ar_e4m3_encode(float x);
/* Value of an E4M3 byte (0x7F/0xFF are NaN). */
float ar_e4m3_decode(uint8_t b);

/* MX element rounding (spec §4.2 quant_element) of an already scaled value:
 * private exponent p = max(floor(log2|x|), emin), mantissa of mant_bits bits
 * rounded half to even, result clamped to ±max_norm. fmt is AR_QDT_MXFP4 or
 * AR_QDT_MXFP8. */
float ar_mx_round_element(float x, int fmt);

/* NVFP4's global scale 448·6 / max|w| over n values (0 for an all-zero w). */
float ar_nvfp4_global_scale(const float *w, size_t n);

/* The global scale the quantizer uses for W [n, k]: qs->global_scale when
 * set, else ar_nvfp4_global_scale(W); 1 for kinds other than NVFP4. */
float ar_quant_fp_global_scale(const ar_quant_spec *qs, const float *w, int n, int k);

/* ---- weight quantizers (called through quant.h's dispatch) ------------- */

/* AR_QDT_* for an AutoRound data_type string and bit width ("int" any bits,
 * "mx_fp" 4 or 8, "nv_fp" 4, "fp" 8); -1 when no quantizer here handles it
 * (e.g. "mx_fp" 6, "mx_int", "nvfp4_v2", GGUF types). */
int ar_quant_dtype_parse(const char *data_type, int bits);

/* Check a floating-point spec: MXFP4/NVFP4 4 bits, MXFP8/FP8 8 bits; MX
 * groups of 32 (any G > 0 accepted), NV of 16; FP8 G = 0, -1, or > 0 (with
 * AR_QF_BLOCK2D for tiles). 0 or -1 with ar_error. */
int ar_quant_fp_check(const ar_quant_spec *qs);

/* As ar_quant_forward; out->zp (if given) gets 0. The NVFP4 global scale
 * used is ar_quant_fp_global_scale(qs, w, n, k). init_scale, when given,
 * multiplies the group maximum (SignRoundV2 / opt-RTN). */
int ar_quant_fp_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                        const ar_quant_params *p, const ar_quant_out *out);

/* As ar_quant_backward: ADD dL/dV and dL/dβ (dalpha untouched). Rounding is
 * a straight-through identity, the scale casts (E8M0 floor, E4M3) pass the
 * gradient unchanged, and every clamp passes it on its open interval only:
 * AutoRound 0.16.1 clamps with torch.clamp/clip's number bounds, whose
 * gradient in PyTorch 2.15 is 0 at a bound (docs/peer-benchmark.md, "The
 * clamp boundary"). So an element gets no gradient where |x| >= max_norm
 * (FP8: its one clamp, before the cast) or, for MX and NV, where its level
 * is ±max_norm (data_type/mxfp.py's quant_element and nvfp.py's cast_to_fp4
 * clamp again after rounding); the scale's chain gets none where the MX
 * exponent is clamped at ±127, the NV scale at ±448 or the FP8 scale at its
 * floor, bounds included. MX follows AutoRound's autograd exactly: its
 * element rounding derives the private exponent from the input through a
 * straight-through floor clipped at emin, which makes d elem(x)/dx =
 * elem(x)/x wherever |x| >= 2^(emin+1) (1 below, where the exponent is
 * clipped or at emin; 0 at x = 0). */
int ar_quant_fp_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                         const ar_quant_params *p, const float *dwq,
                         float *dv, float *dalpha, float *dbeta);

/* Importance-weighted scale search (spec §2.11): per group the multiplier of
 * the group maximum with the smallest Σ imat_j (ŵ_j − w_j)² — MX over
 * {1, 0.5, 2}, NV over {1, 0.50, 0.51, …, 1.51}, first best kept; FP8 has
 * none (1). imat [K] may be NULL (unweighted). mult [N, ngroups]. */
int ar_quant_fp_search(const ar_quant_spec *qs, const float *w, int n, int k,
                       const float *imat, float *mult);

/* opt-RTN: the searched multipliers as init_scale, then RTN (FP8: plain RTN). */
int ar_quant_fp_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                        const float *imat, const ar_quant_out *out);

#endif
