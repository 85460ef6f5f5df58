/* block_bench.c — time ar_block_forward (inference), the training forward and
 * ar_block_backward on a TinyLlama-sized block (C=512, F=1280, NH=8, NKV=2,
 * HD=64) at B=8, T=512, and a plain sgemm of similar shape in the same run,
 * so the block's GFLOP/s can be read against what BLAS gives this machine.
 * Usage: block_bench [B T reps [tiny|1b [f32|bf16 [wall|cpu]]]]: 1b is a Llama-3.2-1B
 * block (C=2048, F=8192, NH=32, NKV=8, HD=64); bf16 runs the linears' GEMMs
 * through gemm.h's bf16 path (AMP), where supported. Prints figures; never
 * fails on time. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"

#include "block.h"
#include "ops.h"

static float *rand_buf(long n, float scale)
{
    float *p = malloc(sizeof(float) * n);
    unsigned s = 42;
    for (long i = 0; p && i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = scale * ((s >> 8) / 8388608.0f - 1.0f);
    }
    return p;
}

/* Useful FLOPs of one block forward: 2 per multiply-add of the seven linears
 * plus Q K^T and P V over the causal half. */
static double block_flops(const ar_config *c, int B, int T)
{
    double lin = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        lin += 2.0 * n * k;
    }
    double attn = 2.0 * 2.0 * c->n_heads * c->head_dim * (T * (T + 1.0) / 2);
    return (double)B * T * lin + B * attn;
}

/* Best of reps times of stmt: wall time, or process CPU
 * time (clock_gettime CLOCK_PROCESS_CPUTIME_ID; argument cpu), which on a shared, loaded
 * machine measures the work rather than the waiting for a core: with one
 * thread it is the time the block would take alone (with several it also
 * counts the threads' spinning). */
static int cpu_clock;
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
#define BEST(reps, stmt)                                                     \
    ({                                                                       \
        double best_ = 1e30;                                                 \
        for (int r_ = 0; r_ < (reps); r_++) {                                \
            double t0_ = now_s();                                            \
            stmt;                                                            \
            double t_ = now_s() - t0_;                                       \
            best_ = t_ < best_ ? t_ : best_;                                 \
        }                                                                    \
        best_;                                                               \
    })

/* The seven linear forwards of the block at their shapes (inputs and outputs
 * in the workspace's F-wide buffers, which fit every shape). */
static void all_linears(const ar_config *c, const ar_block_weights *w,
                        ar_block_work *ws, int rows)
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        ar_linear_forward_g(ws->gemm, ws->gate, ws->up, w->w[i], NULL, rows, k, n);
    }
}

int main(int argc, char **argv)
{
    int B = argc > 1 ? atoi(argv[1]) : 8, T = argc > 2 ? atoi(argv[2]) : 512;
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    cpu_clock = argc > 6 && !strcmp(argv[6], "cpu");
    int big = argc > 4 && !strcmp(argv[4], "1b"), bf16 = argc > 5 && !strcmp(argv[5], "bf16");
    ar_config c = {0};
    c.hidden = 512, c.intermediate = 1280, c.n_heads = 8, c.n_kv_heads = 2;
    c.head_dim = 64, c.rms_eps = 1e-5f, c.rope_theta = 10000;
    if (big) c.hidden = 2048, c.intermediate = 8192, c.n_heads = 32, c.n_kv_heads = 8;
    ar_gemm g;
    if (ar_gemm_init(&g, bf16)) {
        fprintf(stderr, "block_bench: %s\n", ar_last_error());
        return 1;
    }
    ar_block_weights w;
    if (ar_block_weights_init(&w, AR_NLINEAR)) return 1;
    float *dW[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&c, i, &n, &k);
        w.w[i] = rand_buf((long)n * k, 0.05f);
        dW[i] = calloc((size_t)n * k, sizeof(float));
    }
    w.attn_norm = rand_buf(c.hidden, 1), w.mlp_norm = rand_buf(c.hidden, 1);
    long n = (long)B * T * c.hidden;
    float *x = rand_buf(n, 1), *y = rand_buf(n, 1);
    ar_block_work ws;
    ar_block_acts a;
    if (ar_block_work_init(&ws, &c, B, T, 1) || ar_block_acts_init(&a, &c, B, T)) {
        fprintf(stderr, "block_bench: out of memory\n");
        return 1;
    }
    ws.gemm = &g;
    /* Reference: one sgemm [B*T, 512] x [1280, 512]^T, the gate projection. */
    int M = B * T, N = c.intermediate, K = c.hidden;
    float *A = rand_buf((long)M * K, 1), *Wg = rand_buf((long)N * K, 1);
    float *Cm = rand_buf((long)M * N, 1);
    ar_block_forward(&c, &w, x, y, B, T, &ws); /* warm-up: pages, BLAS threads */
    double t_gemm = BEST(reps, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N,
                                           K, 1, A, K, Wg, K, 0, Cm, N));
    double t_fwd = BEST(reps, ar_block_forward(&c, &w, x, y, B, T, &ws));
    double t_trn = BEST(reps, ar_block_forward_train(&c, &w, x, y, B, T, &ws, &a));
    double t_bwd = BEST(reps, ar_block_backward(&c, &w, &a, x, dW, NULL, &ws));
    /* Where the forward's time goes: the seven linears alone, attention alone. */
    double t_lin = BEST(reps, all_linears(&c, &w, &ws, M));
    double t_att = BEST(reps, ar_attention_forward(ws.ao, ws.att, 0, ws.q, ws.k, ws.v, B,
                                                   T, c.n_heads, c.n_kv_heads,
                                                   c.head_dim, 0));
    double f = block_flops(&c, B, T), fg = 2.0 * M * N * K;
    printf("block_bench: C=%d F=%d NH=%d NKV=%d HD=64 B=%d T=%d, %d threads, best of %d %s time, GEMMs %s\n",
           c.hidden, c.intermediate, c.n_heads, c.n_kv_heads, B, T, omp_get_max_threads(), reps, cpu_clock ? "CPU" : "wall",
           bf16 ? ar_gemm_bf16_backend() : "f32 OpenBLAS");
    printf("  sgemm %dx%dx%d     %8.1f ms  %6.1f GFLOP/s\n", M, N, K, 1e3 * t_gemm,
           fg / t_gemm * 1e-9);
    printf("  ar_block_forward       %8.1f ms  %6.1f GFLOP/s (%.2f GFLOP)\n", 1e3 * t_fwd,
           f / t_fwd * 1e-9, f * 1e-9);
    printf("    of which 7 linears   %8.1f ms, attention %.1f ms\n", 1e3 * t_lin,
           1e3 * t_att);
    printf("  ar_block_forward_train %8.1f ms  %6.1f GFLOP/s\n", 1e3 * t_trn,
           f / t_trn * 1e-9);
    printf("  ar_block_backward      %8.1f ms  %6.1f GFLOP/s (dW only, ~2x forward FLOPs)\n",
           1e3 * t_bwd, 2 * f / t_bwd * 1e-9);
    return 0;
}
