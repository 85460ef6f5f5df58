/* internal.cuh — what the kernels/ .cu files files share: the process' device
 * context (stream, cuBLAS handle, GEMM mode), error recording and launch
 * helpers. Not part of the C interface (ar_cuda.h). */
#ifndef AR_CUDA_INTERNAL_CUH
#define AR_CUDA_INTERNAL_CUH
#include "ar_cuda.h"
#include <cublas_v2.h>
#include <cuda_runtime.h>

struct ar_cuda_ctx {
    int dev, ready, gemm;
    cudaStream_t st;
    cublasHandle_t blas;
    cudaStream_t copy;              /* staged host-to-device copies (created on first use) */
    cudaEvent_t staged[AR_CUDA_STAGE_SLOTS], freed[AR_CUDA_STAGE_SLOTS];
};
extern ar_cuda_ctx g_cu;

/* Record a one-line error; returns -1 so callers can `return ar_cuda_fail(...)`. */
int ar_cuda_fail(const char *fmt, ...);

/* Check the launches queued since the last check (no wait). */
int ar_cuda_check_launch(const char *what);

#define AR_CK(call)                                                                      \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) return ar_cuda_fail("%s: %s", #call, cudaGetErrorString(e_)); \
    } while (0)

#define AR_CKB(call)                                                                      \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) return ar_cuda_fail("%s: cuBLAS status %d", #call, (int)s_); \
    } while (0)

/* Blocks of `threads` covering n elements (capped: kernels use grid-stride loops). */
static inline int ar_blocks(long n, int threads)
{
    long b = (n + threads - 1) / threads;
    return (int)(b > 65535L * 8 ? 65535L * 8 : (b < 1 ? 1 : b));
}

/* Row-major strided-batched GEMM: for i < batch,
 * C_i = alpha op(A_i) op(B_i) + beta C_i with A_i = A + i*sa etc. */
int ar_cuda_sgemm_batched(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                          long sa, const float *B, int ldb, long sb, float beta, float *C, int ldc, long sc,
                          int batch);

/* The fast block path (block_fast.cu): buffers and passes, used by block.cu
 * for the works ar_cuda_fast_eligible accepts (bf16 GEMMs, a flash head_dim). */
struct ar_cuda_fast_work;
int ar_cuda_fast_eligible(const ar_cuda_shape *s);
size_t ar_cuda_fast_work_bytes(const ar_cuda_shape *s, int B, int T, int train);
ar_cuda_fast_work *ar_cuda_fast_work_create(const ar_cuda_shape *s, int B, int T, int train, const float *cos_host,
                                            const float *sin_host);
void ar_cuda_fast_work_free(ar_cuda_fast_work *fw);
int ar_cuda_fast_forward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, float *y, int B, int T,
                         int train, ar_cuda_fast_work *fw);
/* The bf16 copy of weight i; own 1 / 0 hands it to the caller / back to the
 * forward's refresh, -1 leaves that as it is. */
uint16_t *ar_cuda_fast_weight_bf16(ar_cuda_fast_work *fw, int i, int own);
/* dw_write: the dW GEMMs overwrite dW (beta 0) instead of adding to it. */
int ar_cuda_fast_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                          float *dx, int dw_write, ar_cuda_fast_work *fw);
/* The fast-path halves of ar_cuda_block_forward_rows, ar_cuda_block_dy_bf16
 * and ar_cuda_block_backward_prepared (ar_cuda.h), on the block work's fast
 * part (fw NULL: a general-path work, refused). */
int ar_cuda_fast_forward_rows(const ar_cuda_shape *s, const ar_cuda_weights *w, const uint16_t *src, const int *idx,
                              float *y, int B, int T, int train, ar_cuda_fast_work *fw);
uint16_t *ar_cuda_fast_dy_bf16(ar_cuda_fast_work *fw);
int ar_cuda_fast_backward_prepared(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                                   float *const dW[7], float *dx, int dw_write, ar_cuda_fast_work *fw);

/* flash_mma.cu's kernels behind ar_cuda_flash_forward / _backward (sizes
 * checked there); the backward takes the prepared D rows and bf16 dO and
 * adds to dq, dk, dv (accumulate) or writes them. */
int ar_cuda_flash_mma_forward(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                              const uint16_t *v, int B, int T, int NH, int NKV, int HD, int window);
int ar_cuda_flash_mma_backward(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow,
                               const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                               int NH, int NKV, int HD, int window, int accumulate);

/* Phase profiling (profile.cu): AR_PROF costs one branch when it is off. */
extern int g_prof_on;
#define AR_PROF(phase, flops)                                    \
    do {                                                         \
        if (g_prof_on) ar_cuda_prof_mark((phase), (double)(flops)); \
    } while (0)

/* Block-wide sum of v over blockDim.x threads (any multiple of 32 up to 1024);
 * every thread gets the total. shm holds 32 entries of T. */
template <typename T>
__device__ inline T ar_block_sum(T v, T *shm)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) shm[wid] = v;
    __syncthreads();
    T t = 0;
    for (int i = 0; i < nw; i++) t += shm[i];
    return t;
}

#endif
