/* common.h — what the dev/cuda study programs share: error checks, device
 * buffers, timing, random data, bf16 conversions, comparisons. Each program
 * is one .cu file built on its own (make dev-cuda); nothing here is linked
 * into the tools.
 *
 * The kernels the programs keep were copied from kernels/ when the product
 * dropped them, so the few helpers of kernels/internal.cuh they call
 * (g_cu.st, AR_CK, ar_cuda_fail, ar_cuda_check_launch, ar_cuda_malloc,
 * ar_cuda_free, ar_blocks) are defined here with the same meaning: the
 * copies stay as they were measured. */
#ifndef DEV_CUDA_COMMON_H
#define DEV_CUDA_COMMON_H
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- kernels/internal.cuh's helpers ---------------------------------------------- */

struct dev_ctx {
    cudaStream_t st; /* the stream every launch goes to (the default stream) */
};
static dev_ctx g_cu = {0};

/* Print a one-line error; returns -1 so callers can `return ar_cuda_fail(...)`. */
static int ar_cuda_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return -1;
}

#define AR_CK(call)                                                                      \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) return ar_cuda_fail("%s: %s", #call, cudaGetErrorString(e_)); \
    } while (0)

/* The launches queued since the last check (no wait). */
static int ar_cuda_check_launch(const char *what)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : ar_cuda_fail("%s: %s", what, cudaGetErrorString(e));
}

/* Zeroed device memory, NULL (error printed) on failure. */
static void *ar_cuda_malloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess || cudaMemset(p, 0, bytes ? bytes : 1) != cudaSuccess) {
        ar_cuda_fail("cudaMalloc of %zu bytes failed", bytes);
        return NULL;
    }
    return p;
}

static void ar_cuda_free(void *p)
{
    if (p) cudaFree(p);
}

/* Blocks of `threads` covering n elements (capped: kernels use grid-stride loops). */
static inline int ar_blocks(long n, int threads)
{
    long b = (n + threads - 1) / threads;
    return (int)(b > 65535L * 8 ? 65535L * 8 : (b < 1 ? 1 : b));
}

/* ---- the programs' own helpers ----------------------------------------------------- */

/* Exit with a message when a CUDA call fails (host code of the programs). */
#define cuda_check(call)                                                                          \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                              \
        }                                                                                         \
    } while (0)

static void *dmalloc(size_t bytes)
{
    void *p = ar_cuda_malloc(bytes);
    if (!p) exit(2);
    return p;
}

static void *hmalloc(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static void to_dev(void *d, const void *h, size_t bytes) { cuda_check(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice)); }
static void to_host(void *h, const void *d, size_t bytes) { cuda_check(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost)); }

/* Uniform in [-1, 1) from a xorshift generator (fixed seed: runs repeat). */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float urand(void)
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* bf16 bits of f (round to nearest even; NaN kept a NaN) and back. */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* max |a - ref| / max |ref| over n elements (NaN in a: NaN). */
static double rel_err(const float *a, const double *ref, size_t n)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (d > e || d != d) e = d;
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return m > 0 ? e / m : e;
}

/* Elements of a and b (n floats) whose bits differ. */
static size_t bits_differ(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += memcmp(a + i, b + i, sizeof(float)) != 0;
    return d;
}

/* Milliseconds between two events recorded around reps launches, per launch. */
struct timer {
    cudaEvent_t a, b;
    timer()
    {
        cuda_check(cudaEventCreate(&a));
        cuda_check(cudaEventCreate(&b));
    }
    ~timer()
    {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    void start(void) { cuda_check(cudaEventRecord(a, g_cu.st)); }
    double stop(int reps)
    {
        float ms = 0;
        cuda_check(cudaEventRecord(b, g_cu.st));
        cuda_check(cudaEventSynchronize(b));
        cuda_check(cudaEventElapsedTime(&ms, a, b));
        return ms / reps;
    }
};
#endif
