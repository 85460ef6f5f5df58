#include "dtype.h"
#include "error.h"
#include <math.h>
#include <string.h>
#include <strings.h>

static const struct { const char *name, *st_name; size_t size; } dtype_info[AR_DTYPE_COUNT] = {
    [AR_F32] = {"f32", "F32", 4},  [AR_F16] = {"f16", "F16", 2},  [AR_BF16] = {"bf16", "BF16", 2},
    [AR_I32] = {"i32", "I32", 4},  [AR_I8] = {"i8", "I8", 1},     [AR_U8] = {"u8", "U8", 1},
    [AR_I64] = {"i64", "I64", 8},  [AR_I16] = {"i16", "I16", 2},  [AR_F64] = {"f64", "F64", 8},
    [AR_F8_E4M3] = {"f8_e4m3", "F8_E4M3", 1},
};

size_t ar_dtype_size(ar_dtype t) { return (unsigned)t < AR_DTYPE_COUNT ? dtype_info[t].size : 0; }
const char *ar_dtype_name(ar_dtype t) { return (unsigned)t < AR_DTYPE_COUNT ? dtype_info[t].name : "?"; }

int ar_dtype_parse(const char *name)
{
    for (int t = 0; t < AR_DTYPE_COUNT; t++)
        if (!strcmp(name, dtype_info[t].name) || !strcmp(name, dtype_info[t].st_name)) return t;
    return -1;
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float ar_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ar_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);                                         /* round half to even */
    return (uint16_t)(u >> 16);
}

float ar_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t ar_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);         /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);        /* overflow to inf (>= 65520) */
    if (a < 0x38800000u) {                                          /* subnormal or zero in f16 */
        /* value / 2^-24, rounded half to even, gives the subnormal mantissa */
        float v = bits_f32(a) * 0x1p24f;
        float r = nearbyintf(v);                                    /* default rounding: half to even */
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t exp = (a >> 23) - 112, mant = a & 0x7fffff;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;         /* carries into exponent correctly */
    return (uint16_t)(sign | h);
}

float ar_round_f16(float f) { return ar_f16_to_f32(ar_f32_to_f16(f)); }
float ar_round_bf16(float f) { return ar_bf16_to_f32(ar_f32_to_bf16(f)); }

/* Element i of a 16-bit array that may be unaligned (tensor data in a mapped
 * file starts wherever the file's header ends); compiles to a plain load. */
static uint16_t load16(const void *src, size_t i)
{
    uint16_t v;
    memcpy(&v, (const char *)src + 2 * i, 2);
    return v;
}

int ar_to_f32(float *dst, const void *src, ar_dtype t, size_t n)
{
    switch (t) {
    case AR_F32: memmove(dst, src, n * 4); return 0;
    case AR_BF16: for (size_t i = 0; i < n; i++) dst[i] = ar_bf16_to_f32(load16(src, i)); return 0;
    case AR_F16: for (size_t i = 0; i < n; i++) dst[i] = ar_f16_to_f32(load16(src, i)); return 0;
    default: return ar_error("cannot widen %s to f32", ar_dtype_name(t));
    }
}

int ar_from_f32(void *dst, const float *src, ar_dtype t, size_t n)
{
    uint16_t *h = dst;
    switch (t) {
    case AR_F32: memmove(dst, src, n * 4); return 0;
    case AR_BF16: for (size_t i = 0; i < n; i++) h[i] = ar_f32_to_bf16(src[i]); return 0;
    case AR_F16: for (size_t i = 0; i < n; i++) h[i] = ar_f32_to_f16(src[i]); return 0;
    default: return ar_error("cannot narrow f32 to %s", ar_dtype_name(t));
    }
}
