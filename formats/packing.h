/* packing.h — the integer layouts of quantized Linear layers that GPTQ-,
 * AWQ- and AutoRound-format checkpoints share, packing and unpacking.
 *
 * Input of every packer, one Linear W[N, K] (HF layout, K = in-features):
 *   codes u8 [N, K]      unsigned codes u in [0, 2^bits - 1]
 *   scale f32 [N, ng]    ng = ceil(K / G) groups along K (G = K when group_size is -1);
 *                        stored as fp16, may be negative (full-range sym)
 *   zp    i32 [N, ng]    zero points in [0, 2^bits - 1]; NULL for sym = 2^(bits-1)
 * so that w = scale * (u - zp).
 *
 * GPTQ layout (spec §6.1/6.2; used by auto_gptq, auto_round:auto_gptq, auto_round):
 *   qweight i32 [K*b/32, N]  in each column n, the 32 codes k = 32t .. 32t+31
 *                            form a 32*b-bit little-endian bit stream (code i at
 *                            bits [i*b, i*b+b)) stored as rows t*b .. t*b+b-1.
 *                            For b = 2, 4, 8 this is "code j of a word at bits
 *                            [j*b, (j+1)*b)"; for b = 3 it is GPTQ's 3-word layout.
 *   qzeros  i32 [ng, N*b/32] the zero points packed the same way along N,
 *                            stored minus 1 (clamped to [0, 2^b-1]) when zp_minus_one
 *   scales  f16 [ng, N]      transposed scale
 *   N and K must be multiples of 32 (the clients' QuantLinear shapes assume it).
 * AWQ GEMM layout (spec §6.3; auto_awq, auto_round:auto_awq), 4-bit only:
 *   qweight i32 [K, N/8]     8 output columns per word, column j at bits
 *                            4*[0,4,1,5,2,6,3,7][j]
 *   qzeros  i32 [ng, N/8]    zero points as is, same interleave
 *   scales  f16 [ng, N]
 *   N % 8 == 0 and K % G == 0 required. */
#ifndef AR_PACKING_H
#define AR_PACKING_H
#include <stdint.h>

/* One quantized Linear as the tuner hands it over (see above). */
typedef struct {
    const char    *name;        /* HF module name, e.g. "model.layers.0.self_attn.q_proj" */
    int            n, k;        /* out_features, in_features */
    int            bits;        /* 2, 3, 4 or 8 */
    int            group_size;  /* > 0, or -1 for one group per row */
    int            sym;         /* 1: zp is the implied 2^(bits-1) */
    const uint8_t *codes;       /* [n, k] */
    const float   *scale;       /* [n, groups] */
    const int32_t *zp;          /* [n, groups] or NULL when sym */
    const float   *bias;        /* [n] tuned bias, or NULL to copy the original's */
    /* Floating-point layers (libar/quant/quant_fp.h): data_type "mx_fp" (4 or 8
     * bits), "nv_fp" or "fp" (8 bits); NULL or "int" for integer codes.
     * Their codes are FP4 codes / E4M3 bytes and scale is 2^e (MX), the E4M3
     * block scale (NV, dequant code·scale/global_scale) or the FP8 scale. */
    const char    *data_type;
    float          global_scale;  /* NVFP4 */
    float          act_max;       /* calibration max |input| (static activation scales), 0 if none */
    int            group_2d;      /* FP8 group_size x group_size tiles */
    int            act_bits, act_group_size, act_sym, act_dynamic;  /* act_bits 0 or 16: none */
    const char    *act_data_type;
} ar_qlayer;

/* AR_QDT_* of the layer's data type (AR_QDT_INT for NULL / "int"), -1 if unknown. */
int ar_qlayer_dtype(const ar_qlayer *l);

/* FP4 codes [n, k] (k even) packed two per byte into [n, k/2]: element 2i in
 * the low nibble, 2i+1 in the high one (compressed-tensors' layout). */
void ar_pack_fp4(const uint8_t *codes, int n, int k, uint8_t *packed);
void ar_unpack_fp4(const uint8_t *packed, int n, int k, uint8_t *codes);

/* E8M0 byte e + 127 of a power-of-two MX scale 2^e, and back. */
uint8_t ar_e8m0_encode(float scale);
float ar_e8m0_decode(uint8_t b);

/* Effective group size (K for -1) and number of groups ceil(K/G). */
int ar_qlayer_group(const ar_qlayer *l);
int ar_qlayer_ngroups(const ar_qlayer *l);

/* Zero point of row n, group g (the implied 2^(bits-1) when zp is NULL). */
int32_t ar_qlayer_zp(const ar_qlayer *l, int n, int g);

/* Layouts a layer may have to fit (ar_qlayer_check). */
enum { AR_LAYOUT_GPTQ = 0, AR_LAYOUT_AWQ = 1, AR_LAYOUT_NONE = 2 };

/* Check that l is well-formed (bits, group, codes and zero points in range,
 * finite scales) and that the layout (AR_LAYOUT_*) can hold it. -1 with
 * ar_error naming the layer, e.g. "model.layers.0.mlp.down_proj: N=100 is not
 * a multiple of 32 (GPTQ packing)". */
int ar_qlayer_check(const ar_qlayer *l, int layout);

/* Pack 32 values of b bits as a little-endian bit stream into b words. */
void ar_pack32(const uint32_t v[32], int b, uint32_t *words);
/* Inverse of ar_pack32. */
void ar_unpack32(const uint32_t *words, int b, uint32_t v[32]);

/* GPTQ layout. qweight [K*b/32 * N], qzeros [ng * N*b/32], scales [ng * N]
 * (fp16 bits). zp_minus_one: store zp - 1 (GPTQ v1 convention), else zp. */
int ar_pack_gptq(const ar_qlayer *l, int zp_minus_one, int32_t *qweight, int32_t *qzeros, uint16_t *scales);

/* Inverse of ar_pack_gptq into codes [n*k], scale [n*ng], zp [n*ng]. A
 * zp_minus_one zero point decodes as stored + 1, as the clients' kernels do. */
void ar_unpack_gptq(int n, int k, int bits, int group, int zp_minus_one, const int32_t *qweight,
                    const int32_t *qzeros, const uint16_t *scales, uint8_t *codes, float *scale, int32_t *zp);

/* AWQ GEMM layout: qweight [K * N/8], qzeros [ng * N/8], scales [ng * N]. */
int ar_pack_awq(const ar_qlayer *l, int32_t *qweight, int32_t *qzeros, uint16_t *scales);

/* Inverse of ar_pack_awq. */
void ar_unpack_awq(int n, int k, int group, const int32_t *qweight, const int32_t *qzeros,
                   const uint16_t *scales, uint8_t *codes, float *scale, int32_t *zp);

/* Dequantize a whole layer into w[n*k]: scale * (code - zp) for integer
 * layers, the element value times its scale for floating-point ones. */
void ar_qlayer_dequant(const ar_qlayer *l, float *w);

#endif
