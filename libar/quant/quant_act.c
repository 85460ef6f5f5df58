/* quant_act.c — activation fake-quantization (see quant_act.h). */
#include "quant_act.h"
#include "quant.h"
#include "quant_fp.h"
#include "error.h"

#include <math.h>
#include <stddef.h>

static float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* FP8 with a static per-tensor scale act_max/448 (FP8_STATIC). */
static void act_fp8_static(float *x, size_t n, float act_max)
{
    const float floor_s = 1.0f / (AR_E4M3_MAX * 512.0f);
    float s = act_max / AR_E4M3_MAX;
    if (s < floor_s) s = floor_s;
    for (size_t i = 0; i < n; i++) x[i] = ar_e4m3_round(clampf(x[i] / s, -AR_E4M3_MAX, AR_E4M3_MAX)) * s;
}

/* ceil(log2 r) for a finite r > 0, exactly. */
static int ceil_log2(float r)
{
    int e;
    float m = frexpf(r, &e);    /* r = m·2^e, m in [0.5, 1) */
    return m == 0.5f ? e - 1 : e;
}

/* MX with the RCEIL shared exponent, per group of G along each row. */
static void act_mx_rceil(float *x, long rows, int k, int G, int fmt)
{
    float max_norm = fmt == AR_QDT_MXFP8 ? AR_E4M3_MAX : AR_FP4_MAX;
    for (long r = 0; r < rows; r++)
        for (int g0 = 0; g0 < k; g0 += G) {
            float *p = x + r * k + g0, amax = 0.0f;
            int n = k - g0 < G ? k - g0 : G;
            for (int j = 0; j < n; j++) amax = fabsf(p[j]) > amax ? fabsf(p[j]) : amax;
            int e = amax == 0.0f ? 1 : ceil_log2(amax / max_norm);
            e = e < -127 ? -127 : e > 127 ? 127 : e;
            for (int j = 0; j < n; j++)
                p[j] = ldexpf(ar_mx_round_element(clampf(ldexpf(p[j], -e), -max_norm, max_norm), fmt), e);
        }
}

int ar_act_quant(const ar_act_spec *as, float *x, long rows, int k)
{
    if (!as || as->bits >= 16) return 0;
    if (rows <= 0) return 0;
    if (as->rceil && (as->dtype == AR_QDT_MXFP4 || as->dtype == AR_QDT_MXFP8)) {
        if (as->group_size <= 0) return ar_error("quant: MX activation group size %d (needs G > 0)", as->group_size);
        act_mx_rceil(x, rows, k, as->group_size, as->dtype);
        return 0;
    }
    if (as->dtype == AR_QDT_FP8 && !as->dynamic) {
        act_fp8_static(x, (size_t)rows * k, as->act_max);
        return 0;
    }
    ar_quant_spec qs = {as->bits, as->group_size, 1, 0, 0, as->dtype, 0, 0, NULL, NULL};
    if (as->dtype == AR_QDT_INT) {
        /* int_sym per token (or group): the weight quantizer on x as [rows, K],
         * with f32 scales since activations carry no scale_dtype cast. */
        qs.flags = AR_QF_F32_SCALE;
        if (qs.group_size == 0) qs.group_size = -1;
    }
    if (as->dtype == AR_QDT_NVFP4 && as->act_max > 0) qs.global_scale = AR_E4M3_MAX * AR_FP4_MAX / as->act_max;
    ar_quant_out o = {x, NULL, NULL, NULL};
    /* In place: both quantizers finish a group's statistics before writing it. */
    return ar_quant_forward(&qs, x, (int)rows, k, NULL, &o);
}
