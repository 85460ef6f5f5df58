/* moe_bench.c — one SignRound iteration of a mixture-of-experts block against
 * a dense block with the same *active* parameters (issue 17): same
 * attention (C=512, NH=8, NKV=2, HD=64, Llama's), the dense MLP F=1280 wide,
 * the MoE block (Qwen3-MoE routing: softmax, top-K, renormalised) E experts
 * of I = F/K, so the K experts a token runs hold F rows like the dense MLP.
 * W4A16 G128 (sym) on every linear, f32 GEMMs on both sides, AutoRound's
 * defaults otherwise (batch 8, minmax tuning, best iteration kept).
 *
 * Process CPU time per iteration (on a shared machine it measures the work,
 * not the wait for a core): (t(2 + iters) − t(2)) / iters of ar_signround_tune_block
 * on the same data, so the set-up (RTN start, FP reference outputs, buffers)
 * cancels. Peak RSS: this process's (getrusage), so the script runs each
 * side in its own process.
 * Usage: moe_bench dense|moe [n T iters E K reps]. Prints figures; never
 * fails on time. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "block.h"
#include "block_desc.h"
#include "dtype.h"
#include "error.h"
#include "model.h"
#include "signround.h"

static unsigned seed = 42;
static float *rand_buf(long n, float scale, float offset)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; p && i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = offset + scale * ((seed >> 8) / 8388608.0f - 1.0f);
    }
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static ar_config bench_config(int moe, int E, int K)
{
    ar_config c = {0};
    c.arch = moe ? AR_ARCH_QWEN3_MOE : AR_ARCH_LLAMA;
    c.hidden = 512, c.intermediate = 1280, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 64;
    c.rms_eps = 1e-6f, c.rope_theta = 10000, c.n_layers = 1;
    if (moe) {
        c.moe = (ar_moe_config){.n_experts = E, .top_k = K, .expert_intermediate = c.intermediate / K,
                                .norm_topk_prob = 1, .n_group = 1, .topk_group = 1, .routed_scaling_factor = 1,
                                .n_moe_layers = 1};
        c.layer_flags[0] = AR_LAYER_MOE;
    }
    return c;
}

static void die(const char *what)
{
    fprintf(stderr, "moe_bench: %s: %s\n", what, ar_last_error());
    exit(1);
}

int main(int argc, char **argv)
{
    int moe = argc > 1 && !strcmp(argv[1], "moe");
    int n = argc > 2 ? atoi(argv[2]) : 8, T = argc > 3 ? atoi(argv[3]) : 256;
    int iters = argc > 4 ? atoi(argv[4]) : 10, E = argc > 5 ? atoi(argv[5]) : 8, K = argc > 6 ? atoi(argv[6]) : 2;
    int reps = argc > 7 ? atoi(argv[7]) : 2;
    ar_config c = bench_config(moe, E, K);
    ar_block_desc d;
    if (ar_block_desc_init_layer(&d, &c, 0)) die("description");
    ar_block_weights w;
    if (ar_block_weights_init(&w, d.nlinear)) die("weights");
    long active = 0, total = 0;
    for (int i = 0; i < d.nlinear; i++) {
        long sz = (long)d.lin[i].n_out * d.lin[i].k_in;
        w.w[i] = rand_buf(sz, 1.7f / sqrtf((float)d.lin[i].k_in), 0); /* rms ≈ 1/√k */
        total += sz, active += i < 4 ? sz : (moe ? sz * K / E : sz);
    }
    w.attn_norm = rand_buf(c.hidden, 0.2f, 1), w.mlp_norm = rand_buf(c.hidden, 0.2f, 1);
    if (moe) w.router = rand_buf((long)E * c.hidden, 1.7f / sqrtf((float)c.hidden), 0);
    /* calibration: random inputs, the FP block's outputs as the reference (bf16, as the cache holds them) */
    long nx = (long)n * T * c.hidden;
    float *x = rand_buf(nx, 1.7f, 0), *y = malloc(sizeof(float) * nx);
    uint16_t *xb = malloc(2 * nx), *yb = malloc(2 * nx);
    ar_block_work ws;
    if (!y || !xb || !yb || ar_block_work_init(&ws, &c, n, T, 0)) die("calibration buffers");
    if (d.forward(&c, &w, x, y, n, T, &ws)) die("forward");
    ar_block_work_free(&ws);
    ar_from_f32(xb, x, AR_BF16, nx), ar_from_f32(yb, y, AR_BF16, nx);
    ar_block_plan p;
    if (ar_block_plan_init(&p, &d)) die("plan");
    for (int i = 0; i < d.nlinear; i++) p.quantize[i] = 1, p.spec[i] = (ar_quant_spec){.bits = 4, .group_size = 128, .sym = 1};
    ar_quant_out *out = ar_block_plan_outputs(&p);
    if (!out) die("outputs");
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.batch_size = n < 8 ? n : 8;
    double t[2] = {1e30, 1e30}, q[2] = {0, 0}, wall[2] = {0, 0};   /* CPU s; quantizer and total wall s */
    ar_signround_report rep;
    ar_signround_cache *cache = NULL;
    for (int r = 0; r < reps; r++)
        for (int s = 0; s < 2; s++) {
            o.iters = s ? 2 + iters : 2;
            double t0 = now_s();
            if (ar_signround_tune_block_cached(&cache, &c, &w, xb, yb, NULL, n, T, &p, &o, out, &rep, NULL, NULL))
                die("tune");
            double dt = now_s() - t0;
            if (dt < t[s]) t[s] = dt, q[s] = rep.sec_quant, wall[s] = rep.sec_total;
        }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double per = (t[1] - t[0]) / iters;
    printf("moe_bench %-5s: C=512 %s, %d linears, %.2fM linear weights (%.2fM active per token), n=%d T=%d batch %d, "
           "%d threads: %.1f ms per SignRound iteration (best of %d), peak RSS %ld MiB, loss %.4g -> %.4g\n",
           moe ? "moe" : "dense", moe ? "E experts top-K" : "F=1280", d.nlinear, total / 1e6, active / 1e6, n, T,
           o.batch_size, omp_get_max_threads(), 1e3 * per, reps, ru.ru_maxrss / 1024, rep.loss0, rep.best_loss);
    /* the report's quantizer time (forward fake-quant, bakes, backward and
     * steps) is wall clock, as is its total: their ratio is the share */
    double qper = (q[1] - q[0]) / iters, wper = (wall[1] - wall[0]) / iters;
    printf("moe_bench %-5s: quantizer share of the iteration %.0f%% (of wall clock; the CPU ms above are the figure)\n",
           moe ? "moe" : "dense", wper > 0 ? 100 * qper / wper : 0);
    if (moe) printf("moe_bench moe  : E=%d K=%d I=%d\n", E, K, c.moe.expert_intermediate);
    ar_signround_cache_free(cache);
    ar_block_plan_outputs_free(out, &p);
    ar_block_plan_free(&p);
    for (int i = 0; i < d.nlinear; i++) free(w.w[i]);
    free(w.attn_norm), free(w.mlp_norm), free(w.router);
    ar_block_weights_release(&w);
    ar_block_desc_free(&d);
    free(x), free(y), free(xb), free(yb);
    return 0;
}
