/* quant_spec.h — how one Linear weight is quantized (ar_quant_spec), its
 * tunables (ar_quant_params) and the outputs of a fake-quantization
 * (ar_quant_out): the vocabulary every quantizer (quant_int.h, quant_fp.h,
 * quant_ggml.h) and their dispatcher (quant.h) share.
 *
 * Layout: W is [N, K] row-major (HF Linear: N out-features, K in-features).
 * Groups run along K: group g of row n covers columns [g*G, min(K, (g+1)*G)).
 * ngroups = ceil(K / G), or 1 when G = -1 (one group per row). Per-group
 * tensors (scale, zp, alpha, beta, init_scale) are [N, ngroups] row-major.
 * AutoRound zero-pads the last group when K % G != 0; since every group range
 * is forced to contain 0, padding never changes a statistic, so the pad is
 * implicit here and nothing is ever written for it.
 *
 */
#ifndef AR_QUANT_SPEC_H
#define AR_QUANT_SPEC_H
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

/* Weight data type of ar_quant_spec.dtype: integers (quant_int.h), the
 * floating-point kinds (quant_fp.h) and GGML blocks (quant_ggml.h); the entry
 * points of quant.h dispatch on it. */
enum { AR_QDT_INT = 0, AR_QDT_MXFP4, AR_QDT_MXFP8, AR_QDT_NVFP4, AR_QDT_FP8,
       AR_QDT_GGUF /* a GGML block type with frozen scales: quant_ggml.h */ };

/* How one Linear is quantized. */
typedef struct {
    int bits;           /* 2..8 */
    int group_size;     /* G > 0, or -1 for one group per output row */
    int sym;            /* 1: full-range int_sym, 0: int_asym */
    unsigned flags;     /* AR_QF_* */
    float minmax_hi;    /* upper clamp of α and β: 1 (SignRound V1) or 2
                           (SignRoundV2's max_scale); 0 means 1 */
    int dtype;          /* AR_QDT_*: 0 = integer (quant_int.h) */
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

/* Clamp n tunables (α or β) in place to [0, hi] (hi = qs->minmax_hi or 1),
 * as AutoRound does at the start of every quantization call. */
void ar_quant_clamp_minmax(const ar_quant_spec *qs, float *x, size_t n);

#endif
