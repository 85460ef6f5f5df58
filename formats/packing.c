/* packing.c — GPTQ and AWQ int32 layouts (see packing.h). */
#include "packing.h"
#include "dtype.h"
#include "error.h"
#include "quant_fp.h"
#include <math.h>
#include <stddef.h>

/* Output column j of an AWQ word sits at nibble awq_slot[j] (AWQ's GEMM kernel
 * dequantizes nibbles in this interleaved order). */
static const int awq_slot[8] = {0, 4, 1, 5, 2, 6, 3, 7};

int ar_qlayer_group(const ar_qlayer *l) { return l->group_size > 0 ? l->group_size : l->k; }

int ar_qlayer_ngroups(const ar_qlayer *l) {
    int g = ar_qlayer_group(l);
    return (l->k + g - 1) / g;
}

int32_t ar_qlayer_zp(const ar_qlayer *l, int n, int g) {
    return l->zp ? l->zp[(size_t)n * ar_qlayer_ngroups(l) + g] : 1 << (l->bits - 1);
}

static int check_values(const ar_qlayer *l) {
    int maxq = (1 << l->bits) - 1, ng = ar_qlayer_ngroups(l);
    for (size_t i = 0; i < (size_t)l->n * l->k; i++)
        if (l->codes[i] > maxq)
            return ar_error("%s: code %d at [%zu, %zu] exceeds %d bits", l->name, l->codes[i], i / l->k, i % l->k,
                            l->bits);
    for (size_t i = 0; i < (size_t)l->n * ng; i++) {
        if (!isfinite(l->scale[i])) return ar_error("%s: scale %zu is not finite", l->name, i);
        if (l->zp && (l->zp[i] < 0 || l->zp[i] > maxq))
            return ar_error("%s: zero point %d outside [0, %d]", l->name, l->zp[i], maxq);
    }
    return 0;
}

int ar_qlayer_dtype(const ar_qlayer *l) {
    return l->data_type ? ar_quant_dtype_parse(l->data_type, l->bits) : AR_QDT_INT;
}

/* Floating-point layers: known kind, whole groups, finite scales. */
static int check_fp(const ar_qlayer *l, int layout, int dt) {
    const char *name = l->name ? l->name : "(layer)";
    if (dt < 0) return ar_error("%s: data type '%s' with %d bits cannot be packed", name, l->data_type, l->bits);
    if (layout != AR_LAYOUT_NONE)
        return ar_error("%s: %s layers have no GPTQ/AWQ layout (use auto_round, llm_compressor or fake)", name, l->data_type);
    if (l->n <= 0 || l->k <= 0) return ar_error("%s: bad shape [%d, %d]", name, l->n, l->k);
    if ((dt == AR_QDT_MXFP4 || dt == AR_QDT_MXFP8 || dt == AR_QDT_NVFP4) && (l->group_size <= 0 || l->k % l->group_size))
        return ar_error("%s: K=%d is not a multiple of the %s group size %d", name, l->k, l->data_type, l->group_size);
    if ((dt == AR_QDT_MXFP4 || dt == AR_QDT_NVFP4) && l->k % 2) return ar_error("%s: FP4 needs an even K (%d)", name, l->k);
    for (size_t i = 0; i < (size_t)l->n * l->k; i++)
        if (l->bits == 4 && l->codes[i] > 15) return ar_error("%s: FP4 code %d at %zu exceeds 4 bits", name, l->codes[i], i);
    for (size_t i = 0; i < (size_t)l->n * ar_qlayer_ngroups(l); i++)
        if (!isfinite(l->scale[i])) return ar_error("%s: scale %zu is not finite", name, i);
    if (dt == AR_QDT_NVFP4 && !(l->global_scale > 0 && isfinite(l->global_scale)))
        return ar_error("%s: NVFP4 layer without a positive global scale", name);
    return 0;
}

int ar_qlayer_check(const ar_qlayer *l, int layout) {
    const char *name = l->name ? l->name : "(layer)";
    int dt = ar_qlayer_dtype(l);
    if (dt != AR_QDT_INT) return check_fp(l, layout, dt);
    if (l->bits != 2 && l->bits != 3 && l->bits != 4 && l->bits != 8)
        return ar_error("%s: %d-bit weights cannot be packed (2, 3, 4 or 8)", name, l->bits);
    if (l->n <= 0 || l->k <= 0) return ar_error("%s: bad shape [%d, %d]", name, l->n, l->k);
    if (l->group_size == 0 || l->group_size < -1) return ar_error("%s: bad group_size %d", name, l->group_size);
    if (!l->sym && !l->zp) return ar_error("%s: asymmetric layer without zero points", name);
    if (layout == AR_LAYOUT_AWQ) {
        if (l->bits != 4) return ar_error("%s: AWQ packing is 4-bit only, layer is %d-bit", name, l->bits);
        if (l->n % 8) return ar_error("%s: N=%d is not a multiple of 8 (AWQ packing)", name, l->n);
        if (l->k % ar_qlayer_group(l))
            return ar_error("%s: K=%d is not a multiple of group_size %d (AWQ packing)", name, l->k, l->group_size);
    } else if (layout == AR_LAYOUT_GPTQ) {
        if (l->n % 32) return ar_error("%s: N=%d is not a multiple of 32 (GPTQ packing)", name, l->n);
        if (l->k % 32) return ar_error("%s: K=%d is not a multiple of 32 (GPTQ packing)", name, l->k);
    }
    return check_values(l);
}

void ar_pack32(const uint32_t v[32], int b, uint32_t *words) {
    uint32_t mask = (1u << b) - 1;
    for (int w = 0; w < b; w++) words[w] = 0;
    for (int i = 0; i < 32; i++) {
        int bit = i * b, w = bit / 32, off = bit % 32;
        words[w] |= (v[i] & mask) << off;
        if (off + b > 32) words[w + 1] |= (v[i] & mask) >> (32 - off);   /* straddles (3-bit) */
    }
}

void ar_unpack32(const uint32_t *words, int b, uint32_t v[32]) {
    uint32_t mask = (1u << b) - 1;
    for (int i = 0; i < 32; i++) {
        int bit = i * b, w = bit / 32, off = bit % 32;
        uint32_t x = words[w] >> off;
        if (off + b > 32) x |= words[w + 1] << (32 - off);
        v[i] = x & mask;
    }
}

/* Stored zero point for the GPTQ layout: zp - 1 clamped to [0, maxq] in the
 * v1 convention (zp = 0 cannot be represented and degrades to 1, as AutoRound's
 * packer does), else zp. */
static uint32_t stored_zp(const ar_qlayer *l, int n, int g, int zp_minus_one) {
    int32_t z = ar_qlayer_zp(l, n, g);
    if (zp_minus_one) z = z > 0 ? z - 1 : 0;
    return (uint32_t)z;
}

static void pack_scales(const ar_qlayer *l, uint16_t *scales) {
    int ng = ar_qlayer_ngroups(l);
    for (int g = 0; g < ng; g++)
        for (int n = 0; n < l->n; n++) scales[(size_t)g * l->n + n] = ar_f32_to_f16(l->scale[(size_t)n * ng + g]);
}

int ar_pack_gptq(const ar_qlayer *l, int zp_minus_one, int32_t *qweight, int32_t *qzeros, uint16_t *scales) {
    if (ar_qlayer_check(l, AR_LAYOUT_GPTQ)) return -1;
    int b = l->bits, ng = ar_qlayer_ngroups(l);
    uint32_t v[32], w[8];
    for (int t = 0; t < l->k / 32; t++)
        for (int n = 0; n < l->n; n++) {
            for (int i = 0; i < 32; i++) v[i] = l->codes[(size_t)n * l->k + 32 * t + i];
            ar_pack32(v, b, w);
            for (int j = 0; j < b; j++) qweight[((size_t)t * b + j) * l->n + n] = (int32_t)w[j];
        }
    int zcols = l->n / 32 * b;
    for (int g = 0; g < ng; g++)
        for (int t = 0; t < l->n / 32; t++) {
            for (int i = 0; i < 32; i++) v[i] = stored_zp(l, 32 * t + i, g, zp_minus_one);
            ar_pack32(v, b, w);
            for (int j = 0; j < b; j++) qzeros[(size_t)g * zcols + t * b + j] = (int32_t)w[j];
        }
    pack_scales(l, scales);
    return 0;
}

void ar_unpack_gptq(int n, int k, int bits, int group, int zp_minus_one, const int32_t *qweight,
                    const int32_t *qzeros, const uint16_t *scales, uint8_t *codes, float *scale, int32_t *zp) {
    int b = bits, ng = (k + group - 1) / group, zcols = n / 32 * b;
    uint32_t v[32], w[8];
    for (int t = 0; t < k / 32; t++)
        for (int c = 0; c < n; c++) {
            for (int j = 0; j < b; j++) w[j] = (uint32_t)qweight[((size_t)t * b + j) * n + c];
            ar_unpack32(w, b, v);
            for (int i = 0; i < 32; i++) codes[(size_t)c * k + 32 * t + i] = (uint8_t)v[i];
        }
    for (int g = 0; g < ng; g++) {
        for (int t = 0; t < n / 32; t++) {
            for (int j = 0; j < b; j++) w[j] = (uint32_t)qzeros[(size_t)g * zcols + t * b + j];
            ar_unpack32(w, b, v);
            for (int i = 0; i < 32; i++) zp[(size_t)(32 * t + i) * ng + g] = (int32_t)v[i] + (zp_minus_one ? 1 : 0);
        }
        for (int c = 0; c < n; c++) scale[(size_t)c * ng + g] = ar_f16_to_f32(scales[(size_t)g * n + c]);
    }
}

/* Pack 8 consecutive 4-bit values (output columns 8c .. 8c+7) AWQ-style. */
static uint32_t awq_word(const uint32_t v[8]) {
    uint32_t w = 0;
    for (int j = 0; j < 8; j++) w |= (v[j] & 15u) << (4 * awq_slot[j]);
    return w;
}

int ar_pack_awq(const ar_qlayer *l, int32_t *qweight, int32_t *qzeros, uint16_t *scales) {
    if (ar_qlayer_check(l, AR_LAYOUT_AWQ)) return -1;
    int ng = ar_qlayer_ngroups(l), cols = l->n / 8;
    uint32_t v[8];
    for (int k = 0; k < l->k; k++)
        for (int c = 0; c < cols; c++) {
            for (int j = 0; j < 8; j++) v[j] = l->codes[(size_t)(8 * c + j) * l->k + k];
            qweight[(size_t)k * cols + c] = (int32_t)awq_word(v);
        }
    for (int g = 0; g < ng; g++)
        for (int c = 0; c < cols; c++) {
            for (int j = 0; j < 8; j++) v[j] = (uint32_t)ar_qlayer_zp(l, 8 * c + j, g);
            qzeros[(size_t)g * cols + c] = (int32_t)awq_word(v);
        }
    pack_scales(l, scales);
    return 0;
}

void ar_unpack_awq(int n, int k, int group, const int32_t *qweight, const int32_t *qzeros,
                   const uint16_t *scales, uint8_t *codes, float *scale, int32_t *zp) {
    int ng = k / group, cols = n / 8;
    for (int r = 0; r < k; r++)
        for (int c = 0; c < cols; c++) {
            uint32_t w = (uint32_t)qweight[(size_t)r * cols + c];
            for (int j = 0; j < 8; j++) codes[(size_t)(8 * c + j) * k + r] = (uint8_t)((w >> (4 * awq_slot[j])) & 15u);
        }
    for (int g = 0; g < ng; g++)
        for (int c = 0; c < cols; c++) {
            uint32_t w = (uint32_t)qzeros[(size_t)g * cols + c];
            for (int j = 0; j < 8; j++) zp[(size_t)(8 * c + j) * ng + g] = (int32_t)((w >> (4 * awq_slot[j])) & 15u);
        }
    for (int g = 0; g < ng; g++)
        for (int c = 0; c < n; c++) scale[(size_t)c * ng + g] = ar_f16_to_f32(scales[(size_t)g * n + c]);
}

void ar_pack_fp4(const uint8_t *codes, int n, int k, uint8_t *packed) {
    for (size_t i = 0; i < (size_t)n * k / 2; i++)
        packed[i] = (uint8_t)((codes[2 * i] & 15u) | (codes[2 * i + 1] & 15u) << 4);
}

void ar_unpack_fp4(const uint8_t *packed, int n, int k, uint8_t *codes) {
    for (size_t i = 0; i < (size_t)n * k / 2; i++) {
        codes[2 * i] = packed[i] & 15u;
        codes[2 * i + 1] = packed[i] >> 4;
    }
}

uint8_t ar_e8m0_encode(float scale) {
    int e;
    frexpf(scale, &e);           /* scale = 2^(e-1) exactly for a power of two */
    int b = e - 1 + 127;
    return (uint8_t)(b < 0 ? 0 : b > 254 ? 254 : b);
}

float ar_e8m0_decode(uint8_t b) { return ldexpf(1.0f, (int)b - 127); }

/* Element value times the scale of its tile (NV: scale / global scale). */
static void dequant_fp(const ar_qlayer *l, int dt, float *w) {
    int ng = ar_qlayer_ngroups(l), grp = ar_qlayer_group(l);
    for (int n = 0; n < l->n; n++)
        for (int k = 0; k < l->k; k++) {
            size_t i = (size_t)n * l->k + k;
            int g = ng == 1 ? 0 : k / grp;
            float s = l->scale[(size_t)n * ng + g];
            float v = l->bits == 4 ? ar_fp4_decode(l->codes[i]) : ar_e4m3_decode(l->codes[i]);
            w[i] = dt == AR_QDT_NVFP4 ? v * (s / l->global_scale) : v * s;
        }
}

void ar_qlayer_dequant(const ar_qlayer *l, float *w) {
    int dt = ar_qlayer_dtype(l);
    if (dt != AR_QDT_INT) { dequant_fp(l, dt, w); return; }
    int ng = ar_qlayer_ngroups(l), grp = ar_qlayer_group(l);
    for (int n = 0; n < l->n; n++)
        for (int k = 0; k < l->k; k++) {
            int g = k / grp;
            float s = l->scale[(size_t)n * ng + g];
            w[(size_t)n * l->k + k] = s * (float)((int32_t)l->codes[(size_t)n * l->k + k] - ar_qlayer_zp(l, n, g));
        }
}
