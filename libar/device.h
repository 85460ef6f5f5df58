/* device.h — where the numeric work runs: the CPU (the reference, always
 * available) or a CUDA GPU (builds made where nvcc exists), and the GPU
 * versions of the block tuner and the perplexity forward.
 *
 * Nothing here touches CUDA unless a GPU is asked for or detected: in a build
 * without CUDA every GPU entry point fails with a one-line error, and
 * detection on a machine without a driver simply finds no device. */
#ifndef AR_DEVICE_H
#define AR_DEVICE_H
#include "model.h"
#include "signround.h"
#include <stdint.h>

/* Device numbers: AR_DEVICE_CPU, or N >= 0 for cuda:N. */
enum { AR_DEVICE_CPU = -1 };

/* 1 when this build has the CUDA kernels. */
int ar_device_cuda_built(void);

/* Usable CUDA devices (0 without CUDA, driver or GPU; never an error). */
int ar_device_cuda_count(void);

/* Parse "cpu", "cuda", "cuda:N" or "auto" (NULL = "auto": cuda:0 when a GPU
 * is usable, else cpu) into *dev. 0, or -1 with ar_error for anything else. */
int ar_device_parse(const char *s, int *dev);

/* Make dev the device of the following GPU calls (CPU: nothing to do).
 * There is one GPU path (kernels/README.md): the tuner multiplies on bf16
 * tensor cores with f32 accumulation (AutoRound's bf16 autocast), through
 * the fast block path (bf16 operands, fused ops, flash attention) for every
 * head_dim the flash kernels take; the chain forwards and the perplexity
 * forward multiply in f32. 0, or -1 with ar_error (built without CUDA, no
 * such device, driver failure). */
int ar_device_init(int dev);

/* "cpu" or "cuda:0 (NVIDIA H100 ...)" for messages. */
const char *ar_device_describe(int dev);

/* ---- GPU tuner ------------------------------------------------------------ */

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

/* --low_gpu_mem_usage for the GPU tuner: 1 keeps the cached block inputs and
 * references in (page-locked) host memory and copies each mini-batch to the
 * GPU on a second stream, double-buffered, instead of uploading the caches
 * whole. Applies to the following ar_signround_tune_block_cuda calls. */
void ar_signround_cuda_set_low_mem(int on);

/* dst [n, T, C] = block(src [n, T, C]) for n cached bf16 samples (host
 * arrays), bs samples per GPU forward, the matrix products in f32. */
int ar_block_forward_samples_cuda(const ar_config *c, const ar_block_weights *w, const uint16_t *src,
                                  uint16_t *dst, int n, int T, int bs);

/* ---- GPU perplexity forward ----------------------------------------------- */

typedef struct ar_model_gpu ar_model_gpu;

/* Upload every block's weights, the final norm and lm_head of m (read
 * through m's tensor source) to the initialized GPU. NULL with ar_error. */
ar_model_gpu *ar_model_gpu_open(ar_model *m);
void ar_model_gpu_close(ar_model_gpu *g);

/* ar_model_nll on the GPU: nll [B, T-1] in double; the matrix products run
 * in f32 so the result matches the CPU reference to rounding. */
int ar_model_gpu_nll(ar_model_gpu *g, const int *ids, int B, int T, double *nll);

#endif
