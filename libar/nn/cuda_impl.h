/* cuda_impl.h — helpers shared by libar's GPU files (device.c,
 * signround_cuda.c, model_cuda.c); only meaningful with AR_HAVE_CUDA. */
#ifndef AR_CUDA_IMPL_H
#define AR_CUDA_IMPL_H
#ifdef AR_HAVE_CUDA
#include "../../kernels/ar_cuda.h"
#include "block.h"
#include "config.h"
#include "quant.h"

/* Turn the kernels' last error into ar_error (prefixed by what); returns -1. */
int ar_cuda_err(const char *what);

/* The kernels' block shape for config c. */
ar_cuda_shape ar_cuda_shape_of(const ar_config *c);

/* Upload the block weights w (f32, host) into freshly allocated device
 * tensors d; swap (may be NULL) lists device tensors to use instead for some
 * linears (NULL entries: upload w's). 0 or -1 (ar_error). */
int ar_cuda_weights_upload(ar_cuda_weights *d, const ar_config *c, const ar_block_weights *w,
                           float *const swap[AR_NLINEAR]);
/* Free what ar_cuda_weights_upload allocated (not the swapped tensors). */
void ar_cuda_weights_free(ar_cuda_weights *d, float *const swap[AR_NLINEAR]);

/* Device copy of n host floats; NULL with ar_error. */
float *ar_cuda_upload_f32(const float *host, size_t n);

/* A training/inference work for up to B x T with c's RoPE tables. */
ar_cuda_block_work *ar_cuda_work_for(const ar_config *c, int B, int T, int train);

/* The kernels' quantizer for spec qs of the weight w [n, k] (host f32): the
 * scalar fields, and per kind what the kernels need on the device — GGUF's
 * frozen scales/mins uploaded and its code range, the FP kinds' NVFP4 global
 * scale (ar_quant_fp_global_scale of w) and their scratch. 0, or -1 with
 * ar_error (a kind without kernels, a bad spec, no device memory); release
 * with ar_cuda_qspec_free either way. */
int ar_cuda_qspec_make(ar_cuda_qspec *q, const ar_quant_spec *qs, const float *w, int n, int k);
/* Free what ar_cuda_qspec_make allocated on the device (safe on a zeroed q). */
void ar_cuda_qspec_free(ar_cuda_qspec *q);

/* 1 (the default): the GPU tuner steps its integer linears with
 * ar_cuda_quant_step (one pass that also writes the next iteration's ŵ and
 * takes the best-loss snapshot); 0: the separate snapshot, SignSGD and
 * forward kernels. Both give the same bits (cuda_check compares whole
 * tuning runs); the switch is for that test. Read when a tuning starts. */
void ar_signround_cuda_set_fused_step(int on);
#endif
#endif
