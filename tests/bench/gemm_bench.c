/* gemm_bench — the three GEMMs of a Linear layer in a tuning step (forward
 * y = x W^T, backward dx = dy W and dW = dy^T x) timed on three backends:
 * OpenBLAS sgemm (f32, ar's reference path), oneDNN sgemm (f32) and oneDNN
 * bf16 matmul through gemm.h (bf16 inputs incl. their conversion from f32,
 * f32 accumulation). Shapes: tiny-llama (hidden 512, intermediate 1280) and
 * a 1B Llama (hidden 2048, intermediate 8192) at R rows (= samples x seqlen
 * of one tuning batch). One line per (shape, product, backend) with GFLOP/s.
 * usage: gemm_bench [R, default 2048] [seconds per case, default 0.5] [wall|cpu]
 * Threads: OMP_NUM_THREADS (OpenMP, which oneDNN also uses). cpu: rates per
 * second of process CPU time, which on a loaded shared machine measures the
 * work, not the wait for a core (exact with one thread; with several it
 * counts spinning too). */
#include "gemm.h"
#include "error.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef AR_HAVE_DNNL
#include <dnnl.h>
#endif

static int cpu_clock;
static double now(void)
{
    struct timespec ts;
    clock_gettime(cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { OPENBLAS, DNNL_F32, DNNL_BF16 };
static const char *names[] = {"openblas-f32", "onednn-f32", "onednn-bf16"};

static int run(int be, ar_gemm *g, int ta, int tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc)
{
    if (be == OPENBLAS) return ar_gemm_run(NULL, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
#ifdef AR_HAVE_DNNL
    if (be == DNNL_F32)
        return dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc) ==
                       dnnl_success ? 0 : -1;
#endif
    return ar_gemm_run(g, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

/* GFLOP/s of one product repeated for about secs. */
static double rate(int be, ar_gemm *g, int ta, int tb, int M, int N, int K, const float *A,
                   const float *B, float *C, double secs)
{
    int lda = ta ? M : K, ldb = tb ? K : N;
    if (run(be, g, ta, tb, M, N, K, A, lda, B, ldb, 1.0f, C, N)) return -1; /* warm up */
    long reps = 0;
    double t0 = now(), t;
    do {
        run(be, g, ta, tb, M, N, K, A, lda, B, ldb, 1.0f, C, N);
        reps++;
    } while ((t = now() - t0) < secs);
    return 2.0 * M * N * K * reps / t * 1e-9;
}

int main(int argc, char **argv)
{
    int R = argc > 1 ? atoi(argv[1]) : 2048;
    double secs = argc > 2 ? atof(argv[2]) : 0.5;
    cpu_clock = argc > 3 && !strcmp(argv[3], "cpu");
    /* (name, N_out, K_in) of the linears with distinct shapes. */
    static const struct { const char *model, *lin; int n, k; } L[] = {
        {"tiny", "q/o", 512, 512},   {"tiny", "k/v", 128, 512},   {"tiny", "gate/up", 1280, 512},
        {"tiny", "down", 512, 1280}, {"1b", "q/o", 2048, 2048},   {"1b", "k/v", 512, 2048},
        {"1b", "gate/up", 8192, 2048}, {"1b", "down", 2048, 8192},
    };
    ar_gemm g;
    int nbe = 1;
    if (ar_gemm_bf16_supported()) {
        if (ar_gemm_init(&g, 1)) { fprintf(stderr, "gemm_bench: %s\n", ar_last_error()); return 1; }
        nbe = 3;
    }
    printf("R=%d rows, %d OpenMP threads, %s time, openblas core %s; bf16: %s\n", R, omp_get_max_threads(),
           cpu_clock ? "CPU" : "wall", openblas_get_corename(), ar_gemm_bf16_backend());
    printf("%-5s %-8s %-8s %6s %6s %6s", "model", "linear", "product", "M", "N", "K");
    for (int b = 0; b < nbe; b++) printf(" %13s", names[b]);
    printf("   (GFLOP/s)\n");
    for (size_t i = 0; i < sizeof L / sizeof *L; i++) {
        int n = L[i].n, k = L[i].k;
        size_t big = (size_t)R * (n > k ? n : k);
        float *x = malloc(sizeof(float) * big), *w = malloc(sizeof(float) * (size_t)n * k);
        float *y = malloc(sizeof(float) * big), *dw = malloc(sizeof(float) * (size_t)n * k);
        if (!x || !w || !y || !dw) { fprintf(stderr, "gemm_bench: out of memory\n"); return 1; }
        for (size_t j = 0; j < big; j++) x[j] = (float)(j % 7) * 0.1f - 0.3f;
        for (size_t j = 0; j < (size_t)n * k; j++) w[j] = (float)(j % 5) * 0.01f - 0.02f;
        /* forward: y [R, n] = x [R, k] W^T; dx [R, k] = dy [R, n] W; dW [n, k] = dy^T x */
        struct { const char *p; int ta, tb, M, N, K; const float *A, *B; float *C; } P[3] = {
            {"fwd", 0, 1, R, n, k, x, w, y}, {"bwd-dx", 0, 0, R, k, n, x, w, y}, {"bwd-dW", 1, 0, n, k, R, x, x, dw}};
        for (int p = 0; p < 3; p++) {
            printf("%-5s %-8s %-8s %6d %6d %6d", L[i].model, L[i].lin, P[p].p, P[p].M, P[p].N, P[p].K);
            for (int b = 0; b < nbe; b++)
                printf(" %13.1f", rate(b, &g, P[p].ta, P[p].tb, P[p].M, P[p].N, P[p].K, P[p].A, P[p].B, P[p].C, secs));
            printf("\n");
            fflush(stdout);
        }
        free(x); free(w); free(y); free(dw);
    }
    if (nbe > 1) ar_gemm_free(&g);
    return 0;
}
