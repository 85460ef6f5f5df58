/* profile.cu — where a tuning iteration's GPU time goes (see ar_cuda.h,
 * "phase profiling"), and flash attention timed alone against cuBLAS GEMMs
 * doing the same products.
 *
 * Phases are contiguous: a mark records a cudaEvent on the compute stream and
 * a host timestamp, and closes the phase the previous mark opened. A phase's
 * GPU time is therefore its kernels' time plus any idle gap while the GPU
 * waited for the host to launch them; its host time (the time between the
 * two marks on the host) tells which: a phase whose host time reaches its GPU
 * time is launch- or host-bound. Events are folded into per-phase totals when
 * the buffer fills and at the report, so a long run needs no more memory. */
#include "internal.cuh"
#include <chrono>
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <vector>

int g_prof_on;
typedef uint16_t bf16_t; /* bf16 bits, as the C interface passes them */

namespace {
struct mark {
    cudaEvent_t ev;
    const char *name; /* phase opened here; NULL: none */
    double flops, host_s;
    int iter;
};
struct phase_total {
    const char *name;
    double gpu_ms, host_ms, flops;
    long n;
};
std::vector<mark> g_marks;
std::vector<cudaEvent_t> g_spare;
std::vector<phase_total> g_totals; /* in order of first appearance */
int g_iter;                        /* ar_cuda_prof_iteration calls so far */
double g_first_ms;                 /* GPU time outside the counted iterations */
const int FOLD_AT = 2048;

double host_now(void)
{
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

/* Iterations whose phases count: the first one warms cuBLAS and the kernels'
 * attributes up, marks before any iteration are setup. */
bool counted(int iter) { return iter >= 2; }

phase_total *total_of(const char *name)
{
    for (auto &t : g_totals)
        if (!strcmp(t.name, name)) return &t;
    g_totals.push_back({name, 0, 0, 0, 0});
    return &g_totals.back();
}

/* Turn every closed phase into totals; the last mark stays open. */
int fold(void)
{
    if (g_marks.size() < 2) return 0;
    AR_CK(cudaEventSynchronize(g_marks.back().ev));
    for (size_t i = 0; i + 1 < g_marks.size(); i++) {
        const mark &a = g_marks[i], &b = g_marks[i + 1];
        float ms = 0;
        AR_CK(cudaEventElapsedTime(&ms, a.ev, b.ev));
        if (!a.name) continue;
        if (!counted(a.iter)) {
            g_first_ms += ms;
            continue;
        }
        phase_total *t = total_of(a.name);
        t->gpu_ms += ms, t->host_ms += (b.host_s - a.host_s) * 1e3, t->flops += a.flops, t->n++;
    }
    for (size_t i = 0; i + 1 < g_marks.size(); i++) g_spare.push_back(g_marks[i].ev);
    g_marks.erase(g_marks.begin(), g_marks.end() - 1);
    return 0;
}

void reset(void)
{
    for (auto &m : g_marks) g_spare.push_back(m.ev);
    g_marks.clear();
    g_totals.clear();
    g_iter = 0;
    g_first_ms = 0;
}

/* "gemm-fwd/q" -> category length (up to the slash). */
int cat_len(const char *name)
{
    const char *s = strchr(name, '/');
    return s ? (int)(s - name) : (int)strlen(name);
}
} // namespace

void ar_cuda_prof_enable(int on)
{
    if (on && !g_prof_on) reset();
    g_prof_on = !!on;
}

int ar_cuda_prof_enabled(void) { return g_prof_on; }

void ar_cuda_prof_mark(const char *phase, double flops)
{
    if (!g_prof_on) return;
    cudaEvent_t ev;
    if (!g_spare.empty()) ev = g_spare.back(), g_spare.pop_back();
    else if (cudaEventCreate(&ev) != cudaSuccess) {
        cudaGetLastError();
        g_prof_on = 0; /* cannot profile: run on unprofiled */
        return;
    }
    cudaEventRecord(ev, g_cu.st);
    g_marks.push_back({ev, phase, flops, host_now(), g_iter});
    if ((int)g_marks.size() >= FOLD_AT) fold();
}

void ar_cuda_prof_iteration(void)
{
    if (!g_prof_on) return;
    g_iter++;
    ar_cuda_prof_mark("host/iteration start (sampler, launches)", 0);
}

double ar_cuda_attention_flops(int B, int T, int NH, int HD, int window)
{
    double pairs = 0; /* visible (query, key) pairs of one head */
    for (int t = 0; t < T; t++) pairs += window > 0 && window < t + 1 ? window : t + 1;
    return 2.0 * 2.0 * HD * pairs * NH * (double)B; /* S = QKᵀ and O = PV */
}

int ar_cuda_prof_report(double peak_tflops)
{
    if (!g_prof_on) return ar_cuda_fail("profile report: profiling is off");
    ar_cuda_prof_mark(NULL, 0);
    if (fold()) return -1;
    int iters = g_iter - 1;
    if (iters < 1) return ar_cuda_fail("profile report: needs at least 2 iterations (the first is a warm-up)");
    double gpu = 0, host = 0;
    for (auto &t : g_totals) gpu += t.gpu_ms, host += t.host_ms;
    printf("PROFILE %d iterations (first excluded as warm-up): GPU %.2f ms/iteration (sum of phases), host %.2f "
           "ms/iteration between the marks; bf16 GEMM peak %.1f TFLOP/s\n",
           iters, gpu / iters, host / iters, peak_tflops);
    printf("  %-46s %9s %6s %8s %6s %9s %6s\n", "phase", "ms/iter", "%", "TFLOP/s", "%peak", "host ms", "calls");
    for (auto &t : g_totals) {
        double ms = t.gpu_ms / iters, tf = t.flops > 0 ? t.flops / (t.gpu_ms * 1e-3) * 1e-12 : 0;
        char tfs[16] = "", pk[16] = "";
        if (tf > 0) snprintf(tfs, sizeof tfs, "%.1f", tf);
        if (tf > 0 && peak_tflops > 0) snprintf(pk, sizeof pk, "%.0f%%", 100 * tf / peak_tflops);
        printf("  %-46s %9.3f %5.1f%% %8s %6s %9.3f %6.1f\n", t.name, ms, 100 * t.gpu_ms / gpu, tfs, pk,
               t.host_ms / iters, (double)t.n / iters);
    }
    printf("  by category:\n");
    std::vector<bool> done(g_totals.size(), false);
    for (size_t i = 0; i < g_totals.size(); i++) {
        if (done[i]) continue;
        int l = cat_len(g_totals[i].name);
        double ms = 0, fl = 0;
        for (size_t j = i; j < g_totals.size(); j++)
            if (!done[j] && cat_len(g_totals[j].name) == l && !strncmp(g_totals[j].name, g_totals[i].name, l))
                ms += g_totals[j].gpu_ms, fl += g_totals[j].flops, done[j] = true;
        char tfs[16] = "";
        if (fl > 0) snprintf(tfs, sizeof tfs, "%.1f", fl / (ms * 1e-3) * 1e-12);
        printf("  %-46.*s %9.3f %5.1f%% %8s\n", l, g_totals[i].name, ms / iters, 100 * ms / gpu, tfs);
    }
    printf("  (setup and the warm-up iteration: %.1f ms of GPU time, not counted)\n", g_first_ms);
    fflush(stdout);
    reset();
    return 0;
}

/* ---- flash attention alone --------------------------------------------------------- */

namespace {
/* Row-major strided-batched C (bf16) = op(A) op(B), bf16 operands, f32 sums. */
int gemm_bb(int ta, int tb, int M, int N, int K, const bf16_t *A, int lda, long sa, const bf16_t *B, int ldb, long sb,
            bf16_t *C, int ldc, long sc, int batch)
{
    float one = 1.0f, zero = 0.0f;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    AR_CKB(cublasGemmStridedBatchedEx(g_cu.blas, opb, opa, N, M, K, &one, B, CUDA_R_16BF, ldb, sb, A, CUDA_R_16BF,
                                      lda, sa, &zero, C, CUDA_R_16BF, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
    return 0;
}

__global__ void k_fill_rand(bf16_t *p, size_t n, unsigned seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        __nv_bfloat16 v = __float2bfloat16_rn(((float)(h & 0xffff) / 32768.0f - 1.0f) * scale);
        p[i] = *(bf16_t *)&v;
    }
}

void fill(bf16_t *p, size_t n, unsigned seed, float scale)
{
    k_fill_rand<<<ar_blocks((long)n, 256), 256, 0, g_cu.st>>>(p, n, seed, scale);
}

struct timer {
    cudaEvent_t a = 0, b = 0;
    int start(void)
    {
        if (!a && (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess))
            return ar_cuda_fail("cudaEventCreate failed");
        AR_CK(cudaEventRecord(a, g_cu.st));
        return 0;
    }
    int stop(int reps, double *ms)
    {
        float f = 0;
        AR_CK(cudaEventRecord(b, g_cu.st));
        AR_CK(cudaEventSynchronize(b));
        AR_CK(cudaEventElapsedTime(&f, a, b));
        *ms = f / reps;
        return 0;
    }
    ~timer()
    {
        if (a) cudaEventDestroy(a);
        if (b) cudaEventDestroy(b);
    }
};

/* The flash kernels on random q, k, v [B, T, NH, HD] (NKV = NH), reps times
 * after one warm-up each: forward as the training forward calls it (bf16 and
 * f32 outputs), backward including its dO preparation. */
int time_flash(int B, int T, int NH, int HD, int reps, double *fwd_ms, double *bwd_ms)
{
    size_t n = (size_t)B * T * NH * HD;
    long sc = ar_cuda_flash_backward_scratch(B, T, NH, HD);
    bf16_t *q = (bf16_t *)ar_cuda_malloc(n * 2), *k = (bf16_t *)ar_cuda_malloc(n * 2);
    bf16_t *v = (bf16_t *)ar_cuda_malloc(n * 2), *ob = (bf16_t *)ar_cuda_malloc(n * 2);
    float *of = (float *)ar_cuda_malloc(n * 4), *lse = (float *)ar_cuda_malloc((size_t)B * NH * T * 4);
    float *dout = (float *)ar_cuda_malloc(n * 4), *dq = (float *)ar_cuda_malloc(n * 4);
    float *dk = (float *)ar_cuda_malloc(n * 4), *dv = (float *)ar_cuda_malloc(n * 4);
    float *scratch = (float *)ar_cuda_malloc((size_t)sc * 4);
    int rc = -1;
    timer tm;
    if (q && k && v && ob && of && lse && dout && dq && dk && dv && scratch) {
        fill(q, n, 11u, 1.0f), fill(k, n, 12u, 1.0f), fill(v, n, 13u, 1.0f);
        rc = 0;
        for (int r = -1; !rc && r < reps; r++) {
            if (r == 0) rc = tm.start();
            if (!rc) rc = ar_cuda_flash_forward(ob, of, lse, q, k, v, B, T, NH, NH, HD, 0);
        }
        if (!rc) rc = tm.stop(reps, fwd_ms);
        ar_cuda_copy(dout, of, n * 4); /* any gradient: the output itself */
        for (int r = -1; !rc && r < reps; r++) {
            if (r == 0) rc = tm.start();
            if (!rc) rc = ar_cuda_flash_backward(dq, dk, dv, scratch, dout, of, lse, q, k, v, B, T, NH, NH, HD, 0);
        }
        if (!rc) rc = tm.stop(reps, bwd_ms);
    } else
        ar_cuda_fail("flash bench: out of GPU memory");
    void *p[] = {q, k, v, ob, of, lse, dout, dq, dk, dv, scratch};
    for (void *x : p) ar_cuda_free(x);
    return rc;
}

/* The same products as cuBLAS strided-batched bf16 GEMMs over the full T x T
 * square, one batch entry per (sequence, head), contiguous [T, HD] operands,
 * scores written in bf16: forward S = Q Kᵀ, O = P V; backward S again,
 * dP = dO Vᵀ, dV = Pᵀ dO, dQ = dS K, dK = dSᵀ Q (softmax and masking not
 * included). What an attention built on GEMMs over stored scores costs at
 * least, before its softmax passes. */
int time_gemms(int B, int T, int NH, int HD, int reps, double *fwd_ms, double *bwd_ms)
{
    int bh = B * NH;
    size_t n = (size_t)bh * T * HD, tt = (size_t)T * T;
    long sx = (long)T * HD, ss = (long)tt;
    bf16_t *q = (bf16_t *)ar_cuda_malloc(n * 2), *k = (bf16_t *)ar_cuda_malloc(n * 2);
    bf16_t *v = (bf16_t *)ar_cuda_malloc(n * 2), *o = (bf16_t *)ar_cuda_malloc(n * 2);
    bf16_t *s = (bf16_t *)ar_cuda_malloc(tt * bh * 2), *p = (bf16_t *)ar_cuda_malloc(tt * bh * 2);
    bf16_t *g = (bf16_t *)ar_cuda_malloc(n * 2); /* dQ, dK, dV outputs (timing only: one buffer) */
    int rc = -1;
    timer tm;
    if (q && k && v && o && s && p && g) {
        fill(q, n, 21u, 1.0f), fill(k, n, 22u, 1.0f), fill(v, n, 23u, 1.0f), fill(p, tt * bh, 24u, 0.01f);
        rc = 0;
        for (int r = -1; !rc && r < reps; r++) {
            if (r == 0) rc = tm.start();
            if (!rc) rc = gemm_bb(0, 1, T, T, HD, q, HD, sx, k, HD, sx, s, T, ss, bh);
            if (!rc) rc = gemm_bb(0, 0, T, HD, T, p, T, ss, v, HD, sx, o, HD, sx, bh);
        }
        if (!rc) rc = tm.stop(reps, fwd_ms);
        for (int r = -1; !rc && r < reps; r++) {
            if (r == 0) rc = tm.start();
            if (!rc) rc = gemm_bb(0, 1, T, T, HD, q, HD, sx, k, HD, sx, s, T, ss, bh); /* S */
            if (!rc) rc = gemm_bb(0, 1, T, T, HD, o, HD, sx, v, HD, sx, s, T, ss, bh); /* dP */
            if (!rc) rc = gemm_bb(1, 0, T, HD, T, p, T, ss, o, HD, sx, g, HD, sx, bh); /* dV */
            if (!rc) rc = gemm_bb(0, 0, T, HD, T, p, T, ss, k, HD, sx, g, HD, sx, bh); /* dQ */
            if (!rc) rc = gemm_bb(1, 0, T, HD, T, p, T, ss, q, HD, sx, g, HD, sx, bh); /* dK */
        }
        if (!rc) rc = tm.stop(reps, bwd_ms);
    } else
        ar_cuda_fail("attention GEMM bench: out of GPU memory (%.1f GiB of scores)", 4.0 * tt * bh / 1073741824.0);
    void *x[] = {q, k, v, o, s, p, g};
    for (void *y : x) ar_cuda_free(y);
    return rc;
}
} // namespace

static timer g_watch; /* ar_cuda_watch_start / _ms */

int ar_cuda_watch_start(void) { return g_watch.start(); }

int ar_cuda_watch_ms(double *ms) { return g_watch.stop(1, ms); }

int ar_cuda_bench_attention(int B, int T, int NH, int HD, int reps, ar_cuda_attn_bench *r)
{
    memset(r, 0, sizeof *r);
    if (!ar_cuda_flash_supported(HD)) return ar_cuda_fail("attention bench: head_dim %d not supported", HD);
    if (reps < 1) reps = 1;
    r->fwd_flops = ar_cuda_attention_flops(B, T, NH, HD, 0);
    r->bwd_flops = 2.5 * r->fwd_flops;
    r->causal_fraction = r->fwd_flops / (4.0 * HD * (double)T * T * NH * B);
    if (time_flash(B, T, NH, HD, reps, &r->flash_fwd_ms, &r->flash_bwd_ms) ||
        time_gemms(B, T, NH, HD, reps, &r->gemm_fwd_ms, &r->gemm_bwd_ms))
        return -1;
    return ar_cuda_sync();
}
