/* model_cuda.h — the whole-model forward on the GPU chosen by ar_device_init
 * (device.h), for perplexity: model.h's ar_model_nll with the weights
 * resident on the device. Built with CUDA only. */
#ifndef AR_MODEL_CUDA_H
#define AR_MODEL_CUDA_H
#include "model.h"

typedef struct ar_model_gpu ar_model_gpu;

/* Upload every block's weights, the final norm and lm_head of m (read
 * through m's tensor source) to the initialized GPU. NULL with ar_error. */
ar_model_gpu *ar_model_gpu_open(ar_model *m);
void ar_model_gpu_close(ar_model_gpu *g);

/* ar_model_nll on the GPU: nll [B, T-1] in double; the matrix products run
 * in f32 so the result matches the CPU reference to rounding. */
int ar_model_gpu_nll(ar_model_gpu *g, const int *ids, int B, int T, double *nll);

#endif
