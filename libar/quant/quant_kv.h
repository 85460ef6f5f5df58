/* quant_kv.h — static FP8 (E4M3) KV-cache quantization, AutoRound's
 * static_kv_dtype "fp8" with its default "tensor" granularity: one scale per
 * attention layer for K (after QK-norm and RoPE) and one for V, over all KV
 * heads, in compressed-tensors' / vLLM's convention (the stored value is the
 * dequantization multiplier: x ≈ e4m3(x / s) · s).
 *
 *   s = max(amax / 448, 1 / (448 · 512))      amax = calibration max |x|
 *   q(x) = e4m3(clamp(x / s, ±448)) · s       e4m3: round half to even
 *
 * The floor 1/(448·512) is AutoRound's (quant_fp8_sym's min_scaling_factor,
 * copied there from vLLM). */
#ifndef AR_QUANT_KV_H
#define AR_QUANT_KV_H

/* The FP8 KV scale for calibration maximum amax (>= 0). */
float ar_kv_fp8_scale(float amax);

/* Fake-quantize x [n] in place with scale s (> 0): x ← q(x). */
void ar_kv_fp8_qdq(float *x, long n, float s);

/* *m = max(*m, max |x|) over x [n]. */
void ar_kv_amax_fold(float *m, const float *x, long n);

#endif
