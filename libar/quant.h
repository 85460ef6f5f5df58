/* quant.h — integer fake-quantizers of one Linear weight (AutoRound's int_sym
 * and int_asym), their straight-through backward, RTN and opt-RTN.
 *
 * Layout: W is [N, K] row-major (HF Linear: N out-features, K in-features).
 * Groups run along K: group g of row n covers columns [g*G, min(K, (g+1)*G)).
 * ngroups = ceil(K / G), or 1 when G = -1 (one group per row). Per-group
 * tensors (scale, zp, alpha, beta, init_scale) are [N, ngroups] row-major.
 * AutoRound zero-pads the last group when K % G != 0; since every group range
 * is forced to contain 0, padding never changes a statistic, so the pad is
 * implicit here and nothing is ever written for it.
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
 * A spec whose dtype is not AR_QDT_INT (MXFP4/MXFP8/NVFP4/FP8) is handed to
 * quant_fp.h by every entry point below, so callers need no other change;
 * AR_QDT_GGUF (a GGML block type with frozen scales) goes to quant_gguf.h. */
#ifndef AR_QUANT_H
#define AR_QUANT_H
#include <stddef.h>
#include <stdint.h>

/* Flags of ar_quant_spec. */
enum {
    /* Keep scales in f32 (GGUF-style scale_dtype=fp32): no fp16 rounding and a
     * 1e-8 magnitude floor instead of 1e-5. */
    AR_QF_F32_SCALE = 1u << 0,
    /* The layer weight is bf16, as in AutoRound's default amp dtype: ŵ is
     * rounded to bf16 (the cast before the matmul), and opt-RTN's search runs
     * with every intermediate tensor rounded to bf16 as PyTorch eager does. */
    AR_QF_BF16 = 1u << 1,
    /* FP8 blocks: the group is a 2-D group_size x group_size tile (FP8_BLOCK). */
    AR_QF_BLOCK2D = 1u << 2,
};

/* Weight data type of ar_quant_spec.dtype. The floating-point kinds are
 * implemented in quant_fp.h; the entry points below dispatch to them. */
enum { AR_QDT_INT = 0, AR_QDT_MXFP4, AR_QDT_MXFP8, AR_QDT_NVFP4, AR_QDT_FP8,
       AR_QDT_GGUF /* a GGML block type with frozen scales: quant_gguf.h */ };

/* How one Linear is quantized. */
typedef struct {
    int bits;           /* 2..8 */
    int group_size;     /* G > 0, or -1 for one group per output row */
    int sym;            /* 1: full-range int_sym, 0: int_asym */
    unsigned flags;     /* AR_QF_* */
    float minmax_hi;    /* upper clamp of α and β: 1 (SignRound V1) or 2
                           (SignRoundV2's max_scale); 0 means 1 */
    int dtype;          /* AR_QDT_*: 0 = integer (this file) */
    float global_scale; /* NVFP4: shared global scale (fused q/k/v, gate/up);
                           0 = 448·6/max|W| of this weight */
    int ggml_type;      /* AR_QDT_GGUF: the ar_ggml_type of the blocks */
    const float *gguf_scale; /* AR_QDT_GGUF: frozen per-group scale s [N, K/group] */
    const float *gguf_min;   /* AR_QDT_GGUF: frozen per-group min m, or NULL (symmetric types) */
} ar_quant_spec;

/* Tunables of one Linear; every pointer may be NULL (V = 0, α = β = 1, no
 * init_scale). Values of alpha/beta outside [0, hi] are clamped on read;
 * AutoRound clamps them in place after each step, see ar_quant_clamp_minmax. */
typedef struct {
    const float *v;          /* rounding offsets V   [N, K] */
    const float *alpha;      /* min_scale α          [N, ngroups] (unused with init_scale) */
    const float *beta;       /* max_scale β          [N, ngroups] */
    const float *init_scale; /* signed initial scale [N, ngroups], sym only */
} ar_quant_params;

/* Outputs of a fake-quantization; any pointer may be NULL to skip it. */
typedef struct {
    float   *wq;     /* ŵ [N, K] */
    uint8_t *codes;  /* unsigned codes [N, K]: sym q + 2^(b-1), asym q */
    float   *scale;  /* [N, ngroups] (negative allowed for sym) */
    int32_t *zp;     /* [N, ngroups]: asym z, sym the constant 2^(b-1) */
} ar_quant_out;

/* Number of groups per row for K in-features and group size G (G = -1: 1). */
int ar_quant_ngroups(int k, int group_size);

/* Check bits (2..8), group size (> 0 or -1) and sym/asym support; 0 or -1
 * with ar_error set. Every entry point below calls it. */
int ar_quant_spec_check(const ar_quant_spec *qs);

/* Clamp n tunables (α or β) in place to [0, hi] (hi = qs->minmax_hi or 1),
 * as AutoRound does at the start of every quantization call. */
void ar_quant_clamp_minmax(const ar_quant_spec *qs, float *x, size_t n);

/* Fake-quantize W [N, K] with the tunables p (may be NULL) into out.
 * Returns 0, or -1 with ar_error set for a bad spec or init_scale with asym. */
int ar_quant_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                     const ar_quant_params *p, const ar_quant_out *out);

/* Straight-through backward of ar_quant_forward: given dL/dŵ [N, K], ADD
 * dL/dV [N, K], dL/dα and dL/dβ [N, ngroups] into dv, dalpha, dbeta (each may
 * be NULL). Rounding passes the gradient as identity; a clamp passes it only
 * inside its closed interval (V and s reach ŵ only while q is not clamped);
 * the scale's fp16 cast passes it unchanged, its magnitude floor blocks it.
 * sym: ds reaches α or β through max(a, c); on a tie a == c each gets half,
 * as PyTorch's maximum() backward does (the forward's tie rule only picks the
 * sign). With init_scale, dβ = ds·init_scale and dα stays 0.
 * asym: z = round(-wmin·α/s) passes gradient to α and s as identity.
 * The α/β clamps are in-place value clamps in AutoRound, not graph ops, so
 * they never mask the gradient. Returns 0 or -1 (bad spec). */
int ar_quant_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                      const ar_quant_params *p, const float *dwq,
                      float *dv, float *dalpha, float *dbeta);

/* ---- opt-RTN (spec §2.11) ---------------------------------------------- */

/* Add Σ_t x[t, k]² over ntok tokens of x [ntok, K] into imat [K] (the tokens
 * of one forward call). */
void ar_imatrix_accumulate(float *imat, const float *x, long ntok, int k);

/* Divide imat [K] by the number of calibration SEQUENCES seen (AutoRound's
 * imatrix_cnt; llama.cpp divides by tokens instead — only a scale factor). */
void ar_imatrix_finalize(float *imat, int k, long nseq);

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
 * the stored scale later); asym → plain min/max RTN (ar_quant_forward with
 * no tunables). Outputs as ar_quant_forward. Returns 0 or -1. */
int ar_quant_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                     const float *imat, const ar_quant_out *out);

#endif
