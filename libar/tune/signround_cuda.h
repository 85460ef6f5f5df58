/* signround_cuda.h — SignRound on the GPU chosen by ar_device_init
 * (device.h): the same tuning as signround.h, block by block, with the
 * forward of cached samples the quantized chain needs. Built with CUDA only;
 * without it every call fails with a message saying so. */
#ifndef AR_SIGNROUND_CUDA_H
#define AR_SIGNROUND_CUDA_H
#include "block.h"
#include "residency.h"
#include "signround.h"
#include <stdint.h>

/* 1 when every quantized linear of plan has a GPU quantizer (integer
 * int_sym/int_asym without 2-D blocks, the FP kinds, GGUF with frozen
 * scales), its activation quantizer (if any) has a kernel, and a SignRoundV2
 * init_scale comes only with symmetric int or FP kinds; other plans tune on
 * the CPU. opts.outlier_loss runs on the GPU too. */
int ar_signround_cuda_supports(const ar_block_plan *plan);

/* ar_signround_tune_block on the initialized GPU: the same arguments,
 * algorithm, sampler and seed, the same outputs (the final quantization runs
 * on the CPU from the chosen tunables, so codes and scales follow exactly
 * from them). Block weights, the cached inputs and references and all
 * tunables live on the GPU; an iteration queues its work without waiting for
 * the GPU, so the per-iteration progress callbacks all run at the end.
 * rep->sec_forward/backward/quant stay 0 (no host syncs to split them).
 * opts.lfq (the LM-head loss) is refused: that block tunes on the CPU. */
int ar_signround_tune_block_cuda(const ar_config *c, const ar_block_weights *w_fp, const uint16_t *x_in,
                                 const uint16_t *y_ref, const uint8_t *mask, int n, int T,
                                 const ar_block_plan *plan, const ar_signround_opts *o,
                                 const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                                 ar_signround_progress cb, void *cb_ctx);

/* ar_signround_tune_block_cuda inside a tuning run's residency (device.h's
 * ar_gpu_residency_open): the block's device weights come from
 * ar_res_weights (no upload when the block's FP forward already made it),
 * the caches x_in and y_ref are the chains' device mirrors when the chains
 * are resident (copied only when the host wrote them last), and every copy
 * is counted in res' ledger. res NULL: a residency of this call alone, whose
 * chains stream (ar_signround_tune_block_cuda). */
int ar_signround_tune_block_cuda_res(ar_residency *res, const ar_config *c, const ar_block_weights *w_fp,
                                     const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask, int n, int T,
                                     const ar_block_plan *plan, const ar_signround_opts *o,
                                     const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                                     ar_signround_progress cb, void *cb_ctx);

/* --low_gpu_mem_usage for the GPU tuner: 1 keeps the cached block inputs and
 * references in (page-locked) host memory and copies each mini-batch to the
 * GPU on a second stream, double-buffered, instead of uploading the caches
 * whole. Applies to the following ar_signround_tune_block_cuda calls. */
void ar_signround_cuda_set_low_mem(int on);

/* dst [n, T, C] = block(src [n, T, C]) for n cached bf16 samples (host
 * chain arrays; dst may be src), bs samples per GPU forward, the matrix
 * products in f32. The weights come from res (ar_res_weights: the block's
 * one upload); linears whose host tensor is not the uploaded one (the
 * quantized chain's tuned weights) are uploaded for this call, counted as
 * AR_XFER_TUNED. Resident chains: src's and dst's device mirrors are read
 * and written, dst's host array is left stale (ar_res_host brings it back);
 * else each batch is copied up and back through the host arrays. res NULL:
 * a residency of this call alone (streaming). */
int ar_block_forward_samples_cuda(ar_residency *res, const ar_config *c, const ar_block_weights *w,
                                  const uint16_t *src, uint16_t *dst, int n, int T, int bs);

#endif
