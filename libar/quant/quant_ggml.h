/* quant_ggml.h — the GGUF data-type kind of ar_quant_spec (AR_QDT_GGUF):
 * SignRound over the rounding of a GGML block type whose scales are frozen
 * (spec §5.1(b), §6.6).
 *
 * A linear is first quantized by llama.cpp's own (imatrix-weighted) search
 * (ggml_blocks.h); its per-group scale s and min m, exactly as the dequantizer
 * uses them, are then read back (ar_ggml_frozen_params) and held fixed, and
 * only the rounding offsets V are tuned, as AutoRound's GGUF path does once
 * its scales are searched (no α/β: min/max tuning is off). With the grid of
 * the type (ggml_blocks.h: group, qmax, offset), per element of group g:
 *     u  = clamp(round((w + m_g)/s_g + V) , lo − offset, qmax − offset)
 *     ŵ  = s_g·u − m_g              (lo = 1 for Q8_0's ±127 range, else 0)
 * which is ar_ggml_fake_quant, called as is so that ŵ is bit-equal to what
 * the emitted blocks dequantize to. A group with s_g = 0 gives −m_g and no
 * gradient. Straight-through backward: dV = s_g·dŵ where the rounded value
 * lies strictly inside the clamp's interval, 0 at a bound and outside:
 * AutoRound 0.16.1 clamps the rounded level with torch.clamp's number bounds
 * (data_type/gguf.py, quant_tensor_gguf_{a,}sym_dq), whose gradient in
 * PyTorch 2.15 is 0 where the value equals a bound (docs/peer-benchmark.md,
 * "The clamp boundary"). Q8_0's bounds are ar's ±127, not AutoRound's
 * int8 [−128, 127].
 *
 * Layout as quant.h: W [N, K] row-major, K a multiple of the type's block;
 * gguf_scale and gguf_min are [N, K/group] — the order ar_ggml_frozen_params
 * reads them from N rows of blocks. ar_quant_forward/backward/opt_rtn
 * dispatch here, so the tuner needs no change. */
#ifndef AR_QUANT_GGML_H
#define AR_QUANT_GGML_H
#include "ggml_blocks.h"
#include "quant_spec.h"

/* Check a GGUF spec: a ggml type with a grid, group_size equal to the grid's
 * group, frozen scales present (and mins for asymmetric types). 0 or -1. */
int ar_quant_gguf_check(const ar_quant_spec *qs);

/* As ar_quant_forward with the frozen scales: out->wq = ŵ (ar_ggml_fake_quant),
 * out->codes = the stored code u + offset, out->scale = s, out->zp = offset.
 * Only p->v is used. K must be a multiple of the group. 0 or -1. */
int ar_quant_gguf_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                          const ar_quant_params *p, const ar_quant_out *out);

/* As ar_quant_backward: ADD dL/dV (see the header comment) into dv (may be
 * NULL). There are no α/β here. 0 or -1. */
int ar_quant_gguf_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                           const ar_quant_params *p, const float *dwq, float *dv);

/* Frozen parameters of one quantized linear, owned by the caller. */
typedef struct {
    float *scale, *min;   /* [N, K/group] each; min NULL for symmetric types */
} ar_gguf_frozen;

/* Read the frozen (s, m) of n rows of k columns of type-t blocks into fz
 * (malloc'd) and fill qs as the GGUF kind pointing at them. 0 or -1 with
 * ar_error (type without a grid, k not a multiple of the block, no memory). */
int ar_quant_gguf_freeze(ar_ggml_type t, const void *blocks, int n, int k, ar_gguf_frozen *fz,
                         ar_quant_spec *qs);

/* Free fz's arrays and zero it (safe on a zeroed struct). */
void ar_gguf_frozen_free(ar_gguf_frozen *fz);

/* Rewrite the codes of `blocks` (n rows of k, holding qs's frozen scales) so
 * they dequantize to wq, a ŵ produced by ar_quant_gguf_forward with these
 * scales; scale bytes are kept. The codes are recovered by requantizing ŵ
 * itself with V = 0: (ŵ + m)/s is the code up to a rounding error far below
 * one half. The result is checked by dequantizing every element and
 * comparing with wq; a mismatch is an error. 0 or -1 with ar_error. */
int ar_quant_gguf_store(const ar_quant_spec *qs, const float *wq, int n, int k, void *blocks);

#endif
