/* quant_act.cuh — the activation quantizers of one block's linears, shared by
 * the general block path (block.cu, f32 inputs) and the fast path
 * (block_fast.cu, bf16 inputs). Not part of ar_cuda.h.
 *
 * As libar/nn/block.c: each quantized linear multiplies by its own fake-quantized
 * copy of its input, the input itself is left as it is (the attention and
 * norm backwards still read it), and the linears reading one input (q/k/v;
 * gate/up) may have different specs or none. Unlike the CPU, which re-derives
 * x̂ from the saved input in the backward, the copies are kept from the
 * forward until the backward's dW GEMMs (same values, no second pass); a
 * member whose spec equals an earlier member's of the same input shares that
 * member's copy, quantized once. */
#ifndef AR_CUDA_QUANT_ACT_CUH
#define AR_CUDA_QUANT_ACT_CUH
#include "ar_cuda.h"

struct ar_cuda_fast_work;

/* The block's seven linears (libar/nn/block.h's order). */
enum { AR_ACT_NLIN = 7 };

struct ar_cuda_act_set {
    int any;                    /* some linear is quantized */
    int bf16;                   /* buffers hold bf16 (fast path), else f32 */
    int has[AR_ACT_NLIN];       /* linear i multiplies by buf[i] */
    ar_cuda_act a[AR_ACT_NLIN];
    void *buf[AR_ACT_NLIN];     /* x̂ of linear i [rows, K_i] */
    int own[AR_ACT_NLIN];       /* buf[i] allocated for i (else an earlier member's) */
};

/* Install aq (NULL entries, or specs with bits >= 16: not quantized) for
 * works of up to rows rows, linear i reading kin[i] columns; bf16 selects
 * the buffers' type. Frees what was installed before. 0 or -1 (bad spec,
 * no device memory). */
int ar_cuda_act_set_install(ar_cuda_act_set *s, const ar_cuda_act *const aq[AR_ACT_NLIN], const long kin[AR_ACT_NLIN],
                            long rows, int bf16);
/* Release the buffers (safe on a zeroed set). */
void ar_cuda_act_set_free(ar_cuda_act_set *s);

/* Quantize x [rows, k] (f32 or bf16 as the set) into the buffers of linears
 * first..last (one input group), each distinct buffer once. 0 or -1. */
int ar_cuda_act_set_run(const ar_cuda_act_set *s, int first, int last, const void *x, long rows, int k);

/* What linear i multiplies by: its quantized copy, or x itself. */
static inline const void *ar_cuda_act_input(const ar_cuda_act_set *s, int i, const void *x)
{
    return s && s->has[i] ? s->buf[i] : x;
}

/* The fast work uses the set s (owned by the block work; NULL: none). */
void ar_cuda_fast_attach_act(ar_cuda_fast_work *fw, const ar_cuda_act_set *s);

#endif
