/* device.cu — device context, errors, memory, cuBLAS GEMMs (see ar_cuda.h). */
#include "internal.cuh"
#include <cuda_bf16.h>
#include <mutex>
#include <stdarg.h>
#include <stdio.h>
#include <unordered_map>

ar_cuda_ctx g_cu = {-1, 0, AR_CUDA_GEMM_BF16, 0, 0};

static char g_err[512];
static char g_name[400];
static std::mutex g_mem_mu;
static std::unordered_map<void *, size_t> g_sizes;
static size_t g_held, g_peak;

int ar_cuda_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return -1;
}

const char *ar_cuda_last_error(void) { return g_err[0] ? g_err : "no CUDA error"; }

int ar_cuda_check_launch(const char *what)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return ar_cuda_fail("%s: %s", what, cudaGetErrorString(e));
    return 0;
}

int ar_cuda_device_count(void)
{
    int n = 0;
    /* With no driver this returns cudaErrorInsufficientDriver or
     * cudaErrorNoDevice; clear the sticky error so later calls start clean. */
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

int ar_cuda_init(int dev)
{
    if (g_cu.ready && g_cu.dev == dev) return 0;
    if (g_cu.ready) return ar_cuda_fail("CUDA device %d already in use; cannot switch to %d", g_cu.dev, dev);
    int n = ar_cuda_device_count();
    if (dev < 0 || dev >= n) return ar_cuda_fail("CUDA device %d not present (%d found)", dev, n);
    AR_CK(cudaSetDevice(dev));
    AR_CK(cudaStreamCreateWithFlags(&g_cu.st, cudaStreamNonBlocking));
    AR_CKB(cublasCreate(&g_cu.blas));
    AR_CKB(cublasSetStream(g_cu.blas, g_cu.st));
    cudaDeviceProp p;
    AR_CK(cudaGetDeviceProperties(&p, dev));
    snprintf(g_name, sizeof g_name, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
             p.totalGlobalMem / 1073741824.0);
    g_cu.dev = dev;
    g_cu.ready = 1;
    return 0;
}

const char *ar_cuda_device_name(void) { return g_cu.ready ? g_name : "(no CUDA device initialized)"; }

void *ar_cuda_malloc(size_t bytes)
{
    void *p = NULL;
    if (!bytes) bytes = 16;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        ar_cuda_fail("cannot allocate %.1f MiB on the GPU: %s", bytes / 1048576.0, cudaGetErrorString(e));
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes, g_cu.st) != cudaSuccess) {
        cudaFree(p);
        ar_cuda_fail("cudaMemset failed");
        return NULL;
    }
    std::lock_guard<std::mutex> lk(g_mem_mu);
    g_sizes[p] = bytes;
    g_held += bytes;
    if (g_held > g_peak) g_peak = g_held;
    return p;
}

void ar_cuda_free(void *dev)
{
    if (!dev) return;
    {
        std::lock_guard<std::mutex> lk(g_mem_mu);
        auto it = g_sizes.find(dev);
        if (it != g_sizes.end()) {
            g_held -= it->second;
            g_sizes.erase(it);
        }
    }
    cudaFree(dev);
}

size_t ar_cuda_peak_bytes(void) { return g_peak; }

int ar_cuda_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    size_t f = 0, t = 0;
    AR_CK(cudaMemGetInfo(&f, &t));
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return 0;
}
void ar_cuda_reset_peak(void) { g_peak = g_held; }

void *ar_cuda_host_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMallocHost(&p, bytes ? bytes : 16) != cudaSuccess) {
        cudaGetLastError();
        ar_cuda_fail("cannot pin %.1f MiB of host memory", bytes / 1048576.0);
        return NULL;
    }
    return p;
}

void ar_cuda_host_free(void *host)
{
    if (host) cudaFreeHost(host);
}

int ar_cuda_upload(void *dev, const void *host, size_t bytes)
{
    AR_CK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, g_cu.st));
    /* The host buffer may be reused as soon as we return (pageable memory is
     * staged synchronously anyway; pinned memory would not be). */
    AR_CK(cudaStreamSynchronize(g_cu.st));
    return 0;
}

int ar_cuda_download(void *host, const void *dev, size_t bytes)
{
    AR_CK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, g_cu.st));
    AR_CK(cudaStreamSynchronize(g_cu.st));
    return 0;
}

int ar_cuda_copy(void *dst, const void *src, size_t bytes)
{
    AR_CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_cu.st));
    return 0;
}

int ar_cuda_zero(void *dev, size_t bytes)
{
    AR_CK(cudaMemsetAsync(dev, 0, bytes, g_cu.st));
    return 0;
}

int ar_cuda_sync(void)
{
    AR_CK(cudaStreamSynchronize(g_cu.st));
    if (g_cu.copy) AR_CK(cudaStreamSynchronize(g_cu.copy));
    return ar_cuda_check_launch("kernel");
}

/* ---- GEMM ------------------------------------------------------------------ */

void ar_cuda_set_gemm(int mode) { g_cu.gemm = mode; }
int ar_cuda_get_gemm(void) { return g_cu.gemm; }

static cublasComputeType_t compute_type(void)
{
    switch (g_cu.gemm) {
    case AR_CUDA_GEMM_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CUBLAS_COMPUTE_32F_PEDANTIC;
    }
}

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the
 * operands and keep each one's transpose flag. */
int ar_cuda_sgemm_batched(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                          long sa, const float *B, int ldb, long sb, float beta, float *C, int ldc, long sc,
                          int batch)
{
    if (M <= 0 || N <= 0 || batch <= 0) return 0;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        AR_CKB(cublasGemmEx(g_cu.blas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C,
                            CUDA_R_32F, ldc, compute_type(), CUBLAS_GEMM_DEFAULT));
    else
        AR_CKB(cublasGemmStridedBatchedEx(g_cu.blas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, sb, A,
                                          CUDA_R_32F, lda, sa, &beta, C, CUDA_R_32F, ldc, sc, batch,
                                          compute_type(), CUBLAS_GEMM_DEFAULT));
    return 0;
}

int ar_cuda_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B,
                      int ldb, float beta, float *C, int ldc)
{
    return ar_cuda_gemm_bf16_strided(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

/* cublasGemmEx, or cublasGemmStridedBatchedEx when batch > 1, with the cuBLAS
 * default algorithm (CUBLAS_GEMM_DEFAULT). */
int ar_cuda_gemm_bf16_strided(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda, long sa,
                              const uint16_t *B, int ldb, long sb, float beta, float *C, int ldc, long sc, int batch)
{
    if (M <= 0 || N <= 0 || batch <= 0) return 0;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        AR_CKB(cublasGemmEx(g_cu.blas, opb, opa, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
                            CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    else
        AR_CKB(cublasGemmStridedBatchedEx(g_cu.blas, opb, opa, N, M, K, &alpha, B, CUDA_R_16BF, ldb, sb, A,
                                          CUDA_R_16BF, lda, sa, &beta, C, CUDA_R_32F, ldc, sc, batch,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

int ar_cuda_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc)
{
    return ar_cuda_sgemm_batched(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

/* Pseudo-random bf16 in [-1, 1): GEMMs on zeros draw less power and clock
 * higher, which would overstate the peak. */
__global__ void k_fill_bf16(__nv_bfloat16 *p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        p[i] = __float2bfloat16_rn((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

int ar_cuda_bench_bf16_gemm(int M, int N, int K, int reps, double *tflops)
{
    size_t na = (size_t)M * K, nb = (size_t)N * K, nc = (size_t)M * N;
    __nv_bfloat16 *a = (__nv_bfloat16 *)ar_cuda_malloc(na * 2), *b = (__nv_bfloat16 *)ar_cuda_malloc(nb * 2);
    __nv_bfloat16 *c = (__nv_bfloat16 *)ar_cuda_malloc(nc * 2);
    cudaEvent_t e0 = 0, e1 = 0;
    int rc = -1;
    float one = 1.0f, zero = 0.0f, ms = 0;
    if (!a || !b || !c) goto done;
    k_fill_bf16<<<ar_blocks((long)na, 256), 256, 0, g_cu.st>>>(a, na, 1u);
    k_fill_bf16<<<ar_blocks((long)nb, 256), 256, 0, g_cu.st>>>(b, nb, 2u);
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        ar_cuda_fail("cudaEventCreate failed");
        goto done;
    }
    for (int i = -3; i < reps; i++) {
        if (i == 0) cudaEventRecord(e0, g_cu.st);
        /* y [M, N] = x [M, K] . W[N, K]^T, the linear's layout. */
        if (cublasGemmEx(g_cu.blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, b, CUDA_R_16BF, K, a, CUDA_R_16BF, K,
                         &zero, c, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            ar_cuda_fail("bf16 cublasGemmEx failed");
            goto done;
        }
    }
    cudaEventRecord(e1, g_cu.st);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    *tflops = 2.0 * M * N * (double)K * reps / (ms * 1e-3) * 1e-12;
    rc = 0;
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    ar_cuda_free(a);
    ar_cuda_free(b);
    ar_cuda_free(c);
    return rc;
}

/* ---- staged copies ------------------------------------------------------------ */

int ar_cuda_pin(const void *host, size_t bytes)
{
    if (!host || !bytes) return -1;
    if (cudaHostRegister((void *)host, bytes, cudaHostRegisterDefault) != cudaSuccess) {
        cudaGetLastError(); /* not an error for the caller: copies fall back to pageable memory */
        return -1;
    }
    return 0;
}

void ar_cuda_unpin(const void *host)
{
    if (host && cudaHostUnregister((void *)host) != cudaSuccess) cudaGetLastError();
}

/* The copy stream and the slots' events, created on first use. */
static int stage_ready(void)
{
    if (g_cu.copy) return 0;
    if (!g_cu.ready) return ar_cuda_fail("staged copy before ar_cuda_init");
    AR_CK(cudaStreamCreateWithFlags(&g_cu.copy, cudaStreamNonBlocking));
    for (int i = 0; i < AR_CUDA_STAGE_SLOTS; i++) {
        AR_CK(cudaEventCreateWithFlags(&g_cu.staged[i], cudaEventDisableTiming));
        AR_CK(cudaEventCreateWithFlags(&g_cu.freed[i], cudaEventDisableTiming));
    }
    return 0;
}

static int slot_ok(int slot)
{
    if (slot < 0 || slot >= AR_CUDA_STAGE_SLOTS) return ar_cuda_fail("staging slot %d out of range", slot);
    return stage_ready();
}

int ar_cuda_stage_begin(int slot)
{
    if (slot_ok(slot)) return -1;
    /* An event never recorded completes at once: the first use does not wait. */
    AR_CK(cudaStreamWaitEvent(g_cu.copy, g_cu.freed[slot], 0));
    return 0;
}

int ar_cuda_stage_copy(void *dev, const void *host, size_t bytes)
{
    if (stage_ready()) return -1;
    AR_CK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, g_cu.copy));
    return 0;
}

int ar_cuda_stage_end(int slot)
{
    if (slot_ok(slot)) return -1;
    AR_CK(cudaEventRecord(g_cu.staged[slot], g_cu.copy));
    return 0;
}

int ar_cuda_stage_acquire(int slot)
{
    if (slot_ok(slot)) return -1;
    AR_CK(cudaStreamWaitEvent(g_cu.st, g_cu.staged[slot], 0));
    return 0;
}

int ar_cuda_stage_release(int slot)
{
    if (slot_ok(slot)) return -1;
    AR_CK(cudaEventRecord(g_cu.freed[slot], g_cu.st));
    return 0;
}
