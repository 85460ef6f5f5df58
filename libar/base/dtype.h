/* dtype.h — element types shared by the tensor stream, safetensors and GGUF,
 * and the conversions between 16-bit floats and f32. */
#ifndef AR_DTYPE_H
#define AR_DTYPE_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
    AR_F32 = 0, AR_F16 = 1, AR_BF16 = 2, AR_I32 = 3, AR_I8 = 4, AR_U8 = 5,
    AR_I64 = 6, AR_I16 = 7, AR_F64 = 8,
    AR_F8_E4M3 = 9,   /* float8_e4m3fn bytes (FP8 exports; see quant_fp.h for the codec) */
    AR_DTYPE_COUNT
} ar_dtype;

/* Bytes per element. */
size_t ar_dtype_size(ar_dtype t);
/* Lower-case name used in streams and by ar-dump ("f32", "bf16", ...). */
const char *ar_dtype_name(ar_dtype t);
/* Parse a name: ours ("f32") or safetensors' ("F32", "BF16", "I64", ...). -1 if unknown. */
int ar_dtype_parse(const char *name);

/* Half/bfloat conversions. f32->bf16 and f32->f16 round to nearest even, as
 * PyTorch's .to() does; NaN stays NaN (quiet). */
float    ar_bf16_to_f32(uint16_t h);
uint16_t ar_f32_to_bf16(float f);
float    ar_f16_to_f32(uint16_t h);
uint16_t ar_f32_to_f16(float f);
/* Round a float to the nearest fp16 / bf16 value and back (scale rounding). */
float    ar_round_f16(float f);
float    ar_round_bf16(float f);

/* Widen n elements of type t (f32, f16 or bf16) at src into f32 dst. Returns -1
 * (with ar_error) for other types. */
int ar_to_f32(float *dst, const void *src, ar_dtype t, size_t n);
/* Narrow n f32 values into dst of type t (f32, f16 or bf16). */
int ar_from_f32(void *dst, const float *src, ar_dtype t, size_t n);

#endif
