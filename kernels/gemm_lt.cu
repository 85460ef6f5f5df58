/* gemm_lt.cu — the bf16 x bf16 -> f32 GEMMs through cuBLASLt with an
 * algorithm chosen once per shape by timing (AR_CUDA_GEMM_TUNE=1; see
 * ar_cuda.h, "GEMM algorithm search").
 *
 * cublasGemmEx with CUBLAS_GEMM_DEFAULT runs whatever its heuristic ranks
 * first; on the 7B block that lands at 86-97% of the measured bf16 peak
 * depending on the shape. Here, the first call of each GEMM signature asks
 * cublasLtMatmulAlgoGetHeuristic for its top candidates, times them and the
 * cuBLAS default on the call's own operands with CUDA events, and keeps the
 * fastest; every later call of that signature runs the kept algorithm (or
 * falls through to the default when no candidate beat it by MARGIN).
 *
 * Reproducibility: a kept algorithm is fixed for the rest of the process, so
 * a tuning run is reproducible once the choices are made. Every reduction
 * scheme cuBLASLt offers for split-K is sequential (INPLACE orders the
 * partial sums with counters, COMPUTE_TYPE / OUTPUT_TYPE reduce in a separate
 * step), none relies on the order atomics happen to land in; the preference
 * below names them explicitly so that a future scheme is not admitted
 * unseen. The choice itself is by timing and may differ between processes:
 * two runs may then differ in the summation order of some GEMMs. */
#include "internal.cuh"
#include <cublasLt.h>
#include <math.h>
#include <mutex>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <vector>

namespace {

const int CANDIDATES = 8;                  /* heuristic's top candidates timed */
const int ROUNDS = 3;                      /* timed rounds per candidate (the fastest counts) */
const int REPS = 2;                        /* calls per timed round */
const size_t WORKSPACE = (size_t)64 << 20; /* cuBLASLt workspace, allocated on the first tuned call */
/* A cuBLASLt candidate must beat the cuBLAS default by this share: timing
 * noise alone then rarely swaps the default's summation order for another. */
const double MARGIN = 0.01;
/* The split-K reduction schemes admitted: all sequential (see the top). */
const uint32_t DETERMINISTIC_SCHEMES = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE |
                                       CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;

/* What makes two calls the same problem for the algorithm choice. Zeroed
 * before it is filled, so that memcmp compares it (padding included). */
struct gemm_sig {
    int ta, tb, M, N, K, lda, ldb, ldc, batch;
    int beta_zero;                /* beta == 0: C is not read (other kernels) */
    int align_a, align_b, align_c; /* bytes, <= 256: what the operands' addresses allow */
    int out_type;                 /* cudaDataType of C (CUDA_R_32F here) */
    long sa, sb, sc;              /* batch strides in elements (0 when batch is 1) */
};

/* One signature's choice and the cuBLASLt descriptors that run it. */
struct gemm_choice {
    gemm_sig sig;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLASLt's A (our B), its B (our A), C = D */
    cublasLtMatmulAlgo_t algo;
    int use_lt;       /* 0: the cuBLAS default stays (fastest, or nothing else ran) */
    int ncand, rank;  /* candidates timed; the kept one's heuristic rank (-1: default) */
    double ms_default, ms_lt; /* per call; ms_lt: the best candidate's, HUGE_VAL if none ran */
    int algo_id, tile, splitk, scheme, stages;
    long calls;
    const char *note; /* why the default stays without a race, NULL otherwise */
};

struct tuner {
    std::mutex mu;
    cublasLtHandle_t lt;
    void *ws;
    int state; /* 0: not set up, 1: ready, -1: unavailable (why) */
    char why[200];
    std::vector<gemm_choice> cache;
};

tuner g_t;
int g_tune_on;
int g_force_rank = -1;

/* The largest power of two up to 256 dividing the address and, for batches,
 * every batch's offset. */
int align_of(const void *p, long stride, int elem_bytes, int batch)
{
    uintptr_t v = (uintptr_t)p;
    if (batch > 1) v |= (uintptr_t)(stride * elem_bytes);
    int a = 256;
    while (a > 1 && (v & (uintptr_t)(a - 1))) a >>= 1;
    return a;
}

/* Handle and workspace on the first tuned call; 0 when ready. A failure
 * leaves the default path in place for the rest of the process. */
int tuner_ready(void)
{
    if (g_t.state) return g_t.state > 0 ? 0 : -1;
    g_t.state = -1;
    if (cublasLtCreate(&g_t.lt) != CUBLAS_STATUS_SUCCESS) {
        snprintf(g_t.why, sizeof g_t.why, "cublasLtCreate failed");
        return -1;
    }
    g_t.ws = ar_cuda_malloc(WORKSPACE);
    if (!g_t.ws) {
        snprintf(g_t.why, sizeof g_t.why, "no %zu MiB cuBLASLt workspace: %s", WORKSPACE >> 20, ar_cuda_last_error());
        return -1;
    }
    g_t.state = 1;
    return 0;
}

void choice_destroy(gemm_choice *c)
{
    if (c->op) cublasLtMatmulDescDestroy(c->op);
    if (c->la) cublasLtMatrixLayoutDestroy(c->la);
    if (c->lb) cublasLtMatrixLayoutDestroy(c->lb);
    if (c->lc) cublasLtMatrixLayoutDestroy(c->lc);
    c->op = NULL, c->la = c->lb = c->lc = NULL;
}

/* A column-major rows x cols layout of type t, batched when batch > 1. */
cublasStatus_t layout(cublasLtMatrixLayout_t *l, cudaDataType t, int rows, int cols, int ld, int batch, long stride)
{
    cublasStatus_t s = cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld);
    if (s != CUBLAS_STATUS_SUCCESS || batch <= 1) return s;
    int32_t b = batch;
    int64_t st = stride;
    s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st);
    return s;
}

/* The descriptors of row-major C [M, N] = op(A) op(B): as cublasGemmEx in
 * device.cu, the column-major C^T [N, M] = op(B)^T op(A)^T, so cuBLASLt's A
 * is our B (stored N x K, or K x N when transposed) and its B is our A. */
cublasStatus_t describe(gemm_choice *c)
{
    const gemm_sig &g = c->sig;
    cublasOperation_t opa = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t s = cublasLtMatmulDescCreate(&c->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSA, &opb, sizeof opb);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSB, &opa, sizeof opa);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = layout(&c->la, CUDA_R_16BF, g.tb ? g.K : g.N, g.tb ? g.N : g.K, g.ldb, g.batch, g.sb);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = layout(&c->lb, CUDA_R_16BF, g.ta ? g.M : g.K, g.ta ? g.K : g.M, g.lda, g.batch, g.sa);
    if (s == CUBLAS_STATUS_SUCCESS) s = layout(&c->lc, (cudaDataType)g.out_type, g.N, g.M, g.ldc, g.batch, g.sc);
    return s;
}

/* Up to CANDIDATES algorithms the heuristic ranks for c, fitting the
 * workspace and the operands' alignment, best first; their number. */
int candidates(gemm_choice *c, cublasLtMatmulHeuristicResult_t *res)
{
    cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return 0;
    uint64_t ws = WORKSPACE;
    uint32_t schemes = DETERMINISTIC_SCHEMES, aa = (uint32_t)c->sig.align_a, ab = (uint32_t)c->sig.align_b,
             ac = (uint32_t)c->sig.align_c;
    int n = 0;
    /* cuBLASLt's A is our B and the other way round (see describe) */
    if (cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                             sizeof schemes) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ab, sizeof ab) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &aa, sizeof aa) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac) ||
        cublasLtMatmulAlgoGetHeuristic(g_t.lt, c->op, c->la, c->lb, c->lc, c->lc, pref, CANDIDATES, res, &n))
        n = 0;
    cublasLtMatmulPreferenceDestroy(pref);
    int kept = 0;
    for (int i = 0; i < n; i++)
        if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= WORKSPACE) res[kept++] = res[i];
    return kept;
}

/* The operands of one call, as the caller passed them. */
struct gemm_args {
    float alpha, beta;
    const uint16_t *A, *B;
    float *C;
};

cublasStatus_t run_lt(const gemm_choice *c, const cublasLtMatmulAlgo_t *algo, const gemm_args &a, float *C)
{
    return cublasLtMatmul(g_t.lt, c->op, &a.alpha, a.B, c->la, a.A, c->lb, &a.beta, C, c->lc, C, c->lc, algo, g_t.ws,
                          WORKSPACE, g_cu.st);
}

/* Candidate i (-1: the cuBLAS default) once into C; 0 when it launched. */
int run_one(const gemm_choice *c, const cublasLtMatmulHeuristicResult_t *res, int i, const gemm_args &a, float *C)
{
    const gemm_sig &g = c->sig;
    if (i >= 0) return run_lt(c, &res[i].algo, a, C) == CUBLAS_STATUS_SUCCESS ? 0 : -1;
    return ar_cuda_gemm_bf16_default(g.ta, g.tb, g.M, g.N, g.K, a.alpha, a.A, g.lda, g.sa, a.B, g.ldb, g.sb, a.beta, C,
                                     g.ldc, g.sc, g.batch);
}

/* ms[i + 1] = fastest per-call time of candidate i (-1: the default) over
 * ROUNDS rounds of REPS calls, rounds interleaved over the candidates so that
 * a clock change hits them alike; HUGE_VAL for those that did not launch. */
int time_candidates(const gemm_choice *c, const cublasLtMatmulHeuristicResult_t *res, int n, const gemm_args &a,
                    float *C, double *ms)
{
    cudaEvent_t ev[2 * (CANDIDATES + 1)] = {};
    int ok[CANDIDATES + 1], rc = 0;
    for (int i = 0; i < 2 * (n + 1); i++)
        if (cudaEventCreate(&ev[i]) != cudaSuccess) rc = ar_cuda_fail("gemm tune: cudaEventCreate failed");
    /* an earlier kernel's launch error is the caller's, not a candidate's */
    if (!rc) rc = ar_cuda_check_launch("kernel before a tuned GEMM");
    for (int i = -1; i < n && !rc; i++) { /* warm-up, and which ones launch at all */
        ok[i + 1] = !run_one(c, res, i, a, C);
        if (cudaGetLastError() != cudaSuccess) ok[i + 1] = 0; /* e.g. a launch configuration refused */
        ms[i + 1] = HUGE_VAL;
    }
    if (!rc && !ok[0]) rc = ar_cuda_fail("gemm tune: the cuBLAS default GEMM failed");
    for (int r = 0; r < ROUNDS && !rc; r++) {
        int last = 1; /* the default's end event: the default always runs */
        for (int i = -1; i < n; i++) {
            if (!ok[i + 1]) continue;
            cudaEventRecord(ev[2 * (i + 1)], g_cu.st);
            for (int k = 0; k < REPS; k++) run_one(c, res, i, a, C);
            cudaEventRecord(ev[2 * (i + 1) + 1], g_cu.st);
            last = 2 * (i + 1) + 1;
        }
        if (cudaEventSynchronize(ev[last]) != cudaSuccess) rc = ar_cuda_fail("gemm tune: timing failed");
        for (int i = -1; i < n && !rc; i++) {
            float t = 0;
            if (ok[i + 1] && cudaEventElapsedTime(&t, ev[2 * (i + 1)], ev[2 * (i + 1) + 1]) == cudaSuccess)
                ms[i + 1] = fmin(ms[i + 1], (double)t / REPS);
        }
    }
    for (int i = 0; i < 2 * (n + 1); i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    if (!rc) rc = ar_cuda_check_launch("gemm tune");
    return rc;
}

/* The kept candidate's configuration, for the report. */
void describe_algo(gemm_choice *c)
{
    size_t w;
    int32_t id = -1, splitk = 1;
    uint32_t tile = 0, scheme = 0, stages = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
    c->algo_id = id, c->tile = (int)tile, c->splitk = splitk, c->scheme = (int)scheme, c->stages = (int)stages;
}

/* Elements of C's span: all batches' rows at pitch ldc. */
size_t c_span(const gemm_sig &g)
{
    return (size_t)(g.batch - 1) * (size_t)g.sc + (size_t)(g.M - 1) * g.ldc + g.N;
}

/* Time the candidates for c on the call's operands and keep the fastest.
 * beta == 0: the timing calls write the real C, which the caller's own call
 * then overwrites; otherwise they run on a zeroed scratch C, so the real C is
 * updated exactly once. 0, or -1 on a CUDA error. */
int tune(gemm_choice *c, const gemm_args &a)
{
    cublasLtMatmulHeuristicResult_t res[CANDIDATES];
    c->rank = -1, c->ms_lt = HUGE_VAL;
    if (describe(c) != CUBLAS_STATUS_SUCCESS) {
        c->note = "cuBLASLt refused the descriptors";
        return 0;
    }
    int n = c->ncand = candidates(c, res);
    if (!n) {
        c->note = "no cuBLASLt candidate";
        return 0;
    }
    float *C = a.C, *scratch = NULL;
    if (a.beta != 0.0f) {
        scratch = (float *)ar_cuda_malloc(c_span(c->sig) * sizeof(float));
        if (!scratch) {
            c->note = "no memory for a scratch C";
            return 0;
        }
        C = scratch;
    }
    double ms[CANDIDATES + 1];
    int rc = time_candidates(c, res, n, a, C, ms);
    ar_cuda_free(scratch); /* cudaFree waits for the timing calls */
    if (rc) return -1;
    c->ms_default = ms[0];
    int best = -1;
    for (int i = 0; i < n; i++)
        if (ms[i + 1] < c->ms_lt) c->ms_lt = ms[i + 1], best = i;
    if (g_force_rank >= 0 && g_force_rank < n && ms[g_force_rank + 1] < HUGE_VAL) best = g_force_rank;
    else if (c->ms_lt >= c->ms_default * (1.0 - MARGIN)) best = -1;
    if (best >= 0) {
        c->use_lt = 1, c->rank = best, c->algo = res[best].algo;
        c->ms_lt = ms[best + 1];
        describe_algo(c);
    }
    return 0;
}

gemm_choice *find(const gemm_sig &g)
{
    for (auto &c : g_t.cache)
        if (!memcmp(&c.sig, &g, sizeof g)) return &c;
    return NULL;
}

gemm_sig signature_of(int ta, int tb, int M, int N, int K, const uint16_t *A, int lda, long sa, const uint16_t *B,
                      int ldb, long sb, float beta, const float *C, int ldc, long sc, int batch)
{
    gemm_sig g;
    memset(&g, 0, sizeof g);
    g.ta = !!ta, g.tb = !!tb, g.M = M, g.N = N, g.K = K, g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.batch = batch;
    g.beta_zero = beta == 0.0f, g.out_type = CUDA_R_32F;
    if (batch > 1) g.sa = sa, g.sb = sb, g.sc = sc;
    g.align_a = align_of(A, g.sa, 2, batch), g.align_b = align_of(B, g.sb, 2, batch), g.align_c = align_of(C, g.sc, 4, batch);
    return g;
}

const char *scheme_name(int s)
{
    switch (s) {
    case CUBLASLT_REDUCTION_SCHEME_NONE: return "none";
    case CUBLASLT_REDUCTION_SCHEME_INPLACE: return "inplace";
    case CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE: return "f32-ws";
    case CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE: return "out-ws";
    default: return "?";
    }
}

} // namespace

void ar_cuda_set_gemm_tune(int on) { g_tune_on = !!on; }
int ar_cuda_get_gemm_tune(void) { return g_tune_on; }
void ar_cuda_gemm_tune_force_rank(int rank) { g_force_rank = rank; }

int ar_cuda_gemm_bf16_tuned(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda, long sa,
                            const uint16_t *B, int ldb, long sb, float beta, float *C, int ldc, long sc, int batch)
{
    if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return 1;
    std::lock_guard<std::mutex> lk(g_t.mu);
    if (tuner_ready()) return 1;
    gemm_sig g = signature_of(ta, tb, M, N, K, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
    gemm_args a = {alpha, beta, A, B, C};
    gemm_choice *c = find(g);
    if (!c) {
        gemm_choice n;
        memset(&n, 0, sizeof n);
        n.sig = g;
        int rc = tune(&n, a);
        if (!n.use_lt) choice_destroy(&n); /* the default runs it: no descriptors needed */
        if (rc) return -1;
        g_t.cache.push_back(n);
        c = &g_t.cache.back();
    }
    c->calls++;
    if (!c->use_lt) return 1;
    if (run_lt(c, &c->algo, a, C) != CUBLAS_STATUS_SUCCESS)
        return ar_cuda_fail("cublasLtMatmul (tuned bf16 GEMM %dx%dx%d, batch %d) failed", M, N, K, batch);
    return 0;
}

int ar_cuda_gemm_tune_report(void)
{
    std::lock_guard<std::mutex> lk(g_t.mu);
    if (g_t.state < 0) {
        printf("gemm-tune: unavailable (%s); the cuBLAS default ran every GEMM\n", g_t.why);
        return 0;
    }
    double saved = 0, spent = 0;
    int n = 0, lt = 0;
    for (auto &c : g_t.cache) {
        const gemm_sig &g = c.sig;
        char shape[160], pick[160];
        snprintf(shape, sizeof shape, "%dx%dx%d %c%c b%d beta%d ld %d/%d/%d", g.M, g.N, g.K, g.ta ? 'T' : 'N',
                 g.tb ? 'T' : 'N', g.batch, g.beta_zero ? 0 : 1, g.lda, g.ldb, g.ldc);
        if (c.use_lt)
            snprintf(pick, sizeof pick, "cuBLASLt #%d of %d (algo %d tile %d stages %d split-K %d %s) %.3f ms (%+.1f%%)",
                     c.rank, c.ncand, c.algo_id, c.tile, c.stages, c.splitk, scheme_name(c.scheme), c.ms_lt,
                     100.0 * (c.ms_lt / c.ms_default - 1.0));
        else if (c.note)
            snprintf(pick, sizeof pick, "cuBLAS default (%s)", c.note);
        else
            snprintf(pick, sizeof pick, "cuBLAS default (best of %d cuBLASLt: %.3f ms, %+.1f%%)", c.ncand, c.ms_lt,
                     100.0 * (c.ms_lt / c.ms_default - 1.0));
        if (c.note)
            printf("  gemm-tune %-44s %s, %ld calls\n", shape, pick, c.calls);
        else
            printf("  gemm-tune %-44s default %.3f ms -> %s, %ld calls\n", shape, c.ms_default, pick, c.calls);
        if (c.use_lt) saved += (c.ms_default - c.ms_lt) * c.calls, lt++;
        spent += c.ms_default * c.calls;
        n++;
    }
    printf("gemm-tune: %d shapes, %d on cuBLASLt; the kept algorithms save %.1f of %.1f ms of default GEMM time "
           "over these calls (%.2f%%, by the tuning's timings)\n",
           n, lt, saved, spent, spent > 0 ? 100.0 * saved / spent : 0.0);
    fflush(stdout);
    return lt;
}

void ar_cuda_gemm_tune_reset(void)
{
    std::lock_guard<std::mutex> lk(g_t.mu);
    for (auto &c : g_t.cache) choice_destroy(&c);
    g_t.cache.clear();
}
