/* sgemm_bench — OpenBLAS single-precision GEMM rate on the shapes of a
 * tiny-llama forward (512-token windows, hidden 512, intermediate 1280,
 * vocab 4096), in the layout the forward uses (x . W^T, row-major).
 * Prints one line per shape and a final "sgemm_gflops N" line (the best rate),
 * which tests/bench/eval.bench.sh compares with ar-eval's forward rate.
 * usage: sgemm_bench [seconds per shape, default 0.5] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* GFLOP/s of y [M, N] = x [M, K] . W[N, K]^T, repeated for about secs. */
static double rate(int M, int N, int K, double secs)
{
    float *x = malloc(sizeof(float) * (size_t)M * K), *w = malloc(sizeof(float) * (size_t)N * K);
    float *y = malloc(sizeof(float) * (size_t)M * N);
    if (!x || !w || !y) { fprintf(stderr, "sgemm_bench: out of memory\n"); exit(1); }
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N); /* warm up */
    long reps = 0;
    double t0 = now(), t;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
        reps++;
    } while ((t = now() - t0) < secs);
    free(x); free(w); free(y);
    return 2.0 * M * N * K * reps / t * 1e-9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    static const int shapes[][3] = {{512, 512, 512}, {512, 1280, 512}, {512, 512, 1280}, {512, 4096, 512}, {2048, 1280, 512}};
    double best = 0;
    printf("openblas core %s, %d threads\n", openblas_get_corename(), openblas_get_num_threads());
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        double r = rate(shapes[i][0], shapes[i][1], shapes[i][2], secs);
        printf("sgemm M=%d N=%d K=%d: %.1f GFLOP/s\n", shapes[i][0], shapes[i][1], shapes[i][2], r);
        if (r > best) best = r;
    }
    printf("sgemm_gflops %.1f\n", best);
    return 0;
}
