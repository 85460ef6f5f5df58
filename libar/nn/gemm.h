/* gemm.h — the matrix products of the Linear layers, in f32 (OpenBLAS sgemm,
 * the reference) or in bf16 (oneDNN matmul on AVX512-BF16 / AMX).
 *
 * The bf16 path is what AutoRound's CPU tuning does under AMP (torch autocast
 * to bfloat16 around the block forward and backward): both inputs are rounded
 * to bf16 (round to nearest even), products accumulate in f32 and the result is
 * f32. It is built only when oneDNN's headers were found at compile time
 * (AR_HAVE_DNNL, like nvcc for CUDA) and used only when the CPU runs bf16
 * natively (ar_gemm_bf16_supported, asked at run time), so every other build
 * and CPU runs the f32 path unchanged. */
#ifndef AR_GEMM_H
#define AR_GEMM_H
#include <stddef.h>
#include <stdint.h>

/* A GEMM context: which precision, and for bf16 the conversion scratch and
 * oneDNN objects, kept across calls so that a tuning iteration allocates
 * nothing once every shape has been seen. Zero-initialised (or NULL where a
 * pointer is taken) means f32. Not shared between threads. */
typedef struct {
    int bf16;                   /* 1: bf16 inputs, f32 accumulation and output */
    uint16_t *a, *b;            /* bf16 copies of the two inputs */
    size_t a_cap, b_cap;        /* their capacities, in elements */
    void *impl;                 /* oneDNN engine, stream and primitive cache */
    long bf16_calls;            /* bf16 products run since ar_gemm_init (tests count them) */
    struct ar_gemm_pin *pins;   /* operands held fixed by ar_gemm_pin, with their bf16 copies */
    int npins;                  /* entries of pins (live or free for reuse) */
    long bf16_converts;         /* f32 -> bf16 operand conversions made (tests count them) */
} ar_gemm;

/* 1 when this build has oneDNN and the CPU has AVX512-BF16 or AMX-BF16; 0
 * otherwise (then only f32 runs). Cheap after the first call. */
int ar_gemm_bf16_supported(void);

/* A line naming the bf16 backend and the ISA oneDNN picked ("oneDNN 2.6.3,
 * avx512_core_amx"), or why there is none ("built without oneDNN"). */
const char *ar_gemm_bf16_backend(void);

/* Set g up for f32 (bf16 == 0) or bf16 (bf16 != 0). bf16 on a build or CPU
 * without support is an error. Returns 0, or -1 (ar_error). */
int ar_gemm_init(ar_gemm *g, int bf16);
void ar_gemm_free(ar_gemm *g);

/* Row-major C [M, N] = op(A) op(B) + beta C, beta 0 or 1; op(A) [M, K] is A
 * ([M, K], leading dimension lda) or, with ta, A^T (A stored [K, M]); op(B)
 * [K, N] likewise with tb (B stored [N, K]). g NULL or f32: OpenBLAS sgemm,
 * one single-threaded call per OpenMP thread on a tile of C. bf16: one oneDNN
 * matmul over the whole product on oneDNN's own OpenMP threads. Call from
 * outside any parallel region. Returns 0, or -1 (ar_error: a oneDNN failure
 * or out of memory; the f32 path cannot fail). */
int ar_gemm_run(ar_gemm *g, int ta, int tb, int M, int N, int K, const float *A, int lda,
            const float *B, int ldb, float beta, float *C, int ldc);

/* Pinned operands: the caller promises that the f32 matrix p [rows, cols]
 * (packed, leading dimension cols) will not change until it is unpinned, so
 * the bf16 path converts it once, on its first use as either input of
 * ar_gemm_run (with any transpose; the copy keeps the stored layout), and
 * reuses that copy. A tuning iteration pins each fake-quantized weight, used
 * by the forward (x W^T) and the backward (dy W); a block pins an input that
 * several linears read (q/k/v, gate/up) and a dy that both products of a
 * linear's backward read. An operand that matches a pin's pointer but not
 * its shape is converted as usual. g NULL or f32: nothing is kept (the f32
 * path reads the floats directly).
 * ar_gemm_pin returns 1 when it pinned p, 0 when p was already pinned with
 * that shape (then leave the unpinning to whoever pinned it) or when g does
 * not run bf16, -1 (ar_error) when out of memory. ar_gemm_unpin(g, NULL)
 * drops every pin; buffers are kept for the next pins (no allocation in a
 * steady tuning loop). */
int ar_gemm_pin(ar_gemm *g, const float *p, int rows, int cols);
void ar_gemm_unpin(ar_gemm *g, const float *p);

/* OpenBLAS' process-wide thread count lowered to 1 for an op whose OpenMP
 * threads each call sgemm (returns the old count), and restored. */
int ar_blas_threads_begin(void);
void ar_blas_threads_end(int n);

#endif
