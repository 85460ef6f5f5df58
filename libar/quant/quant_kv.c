/* quant_kv.c — static FP8 KV-cache quantization (see quant_kv.h). */
#include "quant_kv.h"
#include "quant_fp.h"
#include <math.h>

float ar_kv_fp8_scale(float amax)
{
    const float floor_s = 1.0f / (AR_E4M3_MAX * 512.0f);
    float s = amax / AR_E4M3_MAX;
    return s < floor_s ? floor_s : s;
}

void ar_kv_fp8_qdq(float *x, long n, float s)
{
    for (long i = 0; i < n; i++) {
        float v = x[i] / s;
        v = v > AR_E4M3_MAX ? AR_E4M3_MAX : v < -AR_E4M3_MAX ? -AR_E4M3_MAX : v;
        x[i] = ar_e4m3_round(v) * s;
    }
}

void ar_kv_amax_fold(float *m, const float *x, long n)
{
    for (long i = 0; i < n; i++) if (fabsf(x[i]) > *m) *m = fabsf(x[i]);
}
