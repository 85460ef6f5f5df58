/* quant_spec.c — the helpers of quant_spec.h every quantizer uses. */
#include "quant_spec.h"

int ar_quant_ngroups(int k, int group_size)
{
    return group_size <= 0 ? 1 : (k + group_size - 1) / group_size;
}

static float minmax_hi(const ar_quant_spec *qs) { return qs->minmax_hi > 0 ? qs->minmax_hi : 1.0f; }

static float clamp_to(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

void ar_quant_clamp_minmax(const ar_quant_spec *qs, float *x, size_t n)
{
    float hi = minmax_hi(qs);
    for (size_t i = 0; i < n; i++) x[i] = clamp_to(x[i], 0.0f, hi);
}
