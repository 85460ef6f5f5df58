/* ops_amp.h — elementwise passes of the AMP (bf16) path, vectorized.
 *
 * Under AMP the block's tensors are what torch autocast makes them: bf16
 * (2^-8 relative precision) at every linear's output. The f32 reference path
 * (ops.h) calls libm's expf one value at a time, which took ~10% of a bf16
 * tuning iteration on tiny-llama (perf); here exp is a 16-wide AVX-512
 * polynomial whose relative error (<= 1.01e-6, derived in ops_amp.c) is far
 * below bf16's. Only the AMP path calls these, so f32 results stay
 * byte-identical; on a CPU without AVX-512F (which has no bf16 GEMMs, hence no
 * AMP, either) they fall back to ops.h's loops. Same contracts as ops.h's
 * ar_swiglu_forward / ar_swiglu_backward except where said. */
#ifndef AR_OPS_AMP_H
#define AR_OPS_AMP_H

/* out[n] = silu(gate) * up. */
void ar_swiglu_forward_amp(float *out, const float *gate, const float *up, long n);

/* dgate = dout * up * silu'(gate), dup = dout * silu(gate) (either may be
 * NULL). Unlike ops.h's ar_swiglu_backward these overwrite: the block's
 * backward would otherwise clear both [BT, F] buffers first, a memory pass
 * each (memset was 4% of a bf16 tuning iteration, perf). */
void ar_swiglu_backward_amp(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n);

/* Relative error bound of the vectorized exp (the figure tests use). */
#define AR_AMP_EXP_REL_ERR 1.01e-6

#endif
