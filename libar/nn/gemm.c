/* gemm.c — Linear-layer matrix products in f32 (OpenBLAS) or bf16 (oneDNN);
 * see gemm.h. */
#include "gemm.h"
#include "error.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef AR_HAVE_DNNL
#include <dnnl.h>
#endif

/* An operand held fixed by ar_gemm_pin and its bf16 copy (gemm.h). */
struct ar_gemm_pin {
    const float *p;
    int rows, cols;
    int live, ready;   /* pinned; bf holds p's conversion */
    uint16_t *bf;
    size_t cap;
};

/* ------------------------------------------------------------ f32, OpenBLAS */

/* All parallelism in libar/nn is OpenMP, and every sgemm runs on one thread
 * inside an OpenMP region: OpenBLAS' own pthreads and OpenMP's threads spin
 * against each other otherwise (measured on 16 cores: a block forward 1.5x
 * slower at B=8 T=512, 8x at B=1 T=128; nested calls 2-5x). OpenBLAS' thread
 * count is process-wide, so it is lowered for the duration of an op and
 * restored (other BLAS users of the process run single-threaded meanwhile).
 * Returns the previous count. */
int ar_blas_threads_begin(void)
{
#ifdef OPENBLAS_VERSION
    int n = openblas_get_num_threads();
    if (n > 1) openblas_set_num_threads(1);
    return n;
#else
    return 1;
#endif
}

void ar_blas_threads_end(int n)
{
#ifdef OPENBLAS_VERSION
    if (n > 1) openblas_set_num_threads(n);
#else
    (void)n;
#endif
}

/* Row-major C [M, N] = op(A) op(B) + beta C as one single-threaded sgemm per
 * OpenMP thread, each on a tile of C cut along its longer side (tile edges
 * on multiples of 16 floats). */
static void sgemm_par(int ta, int tb, int M, int N, int K, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc)
{
    int by_rows = M >= N, len = by_rows ? M : N;
    int tiles = omp_get_max_threads();
    if (tiles > len / 16) tiles = len / 16 > 0 ? len / 16 : 1;
    if ((double)M * N * K < 1e6) tiles = 1; /* not worth a fork */
    enum CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE opb = tb ? CblasTrans : CblasNoTrans;
    int nb = ar_blas_threads_begin();
#pragma omp parallel for schedule(static) num_threads(tiles)
    for (int i = 0; i < tiles; i++) {
        int lo = (int)((long)len * i / tiles) & ~15;
        int hi = i == tiles - 1 ? len : (int)((long)len * (i + 1) / tiles) & ~15;
        if (hi <= lo) continue;
        if (by_rows)
            cblas_sgemm(CblasRowMajor, opa, opb, hi - lo, N, K, 1.0f,
                        A + (ta ? lo : (long)lo * lda), lda, B, ldb, beta,
                        C + (long)lo * ldc, ldc);
        else
            cblas_sgemm(CblasRowMajor, opa, opb, M, hi - lo, K, 1.0f, A, lda,
                        B + (tb ? (long)lo * ldb : lo), ldb, beta, C + lo, ldc);
    }
    ar_blas_threads_end(nb);
}

#ifdef AR_HAVE_DNNL
/* ------------------------------------------------------------ bf16 rounding */

/* x [n] to bf16 bit patterns, rounded to nearest even as torch's
 * .to(torch.bfloat16) (and dtype.h's ar_f32_to_bf16, one value at a time);
 * inputs are finite. */
static void to_bf16_scalar(uint16_t *out, const float *x, size_t n)
{
    /* Add 0x7fff plus the lowest kept bit, then truncate: the carry into the
     * exponent is the correct rounding up to the next binade. */
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        out[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

#ifdef __x86_64__
#include <immintrin.h>
/* The same with AVX512-BF16's VCVTNE2PS2BF16 (round to nearest even), 32
 * values per instruction: the scalar loop took 18% of a bf16 tuning
 * iteration (perf, tiny-llama). Only called once ar_gemm_init found a bf16
 * CPU. Subnormal inputs become zero (the instruction's DAZ), as they do in
 * the AMX / AVX512-BF16 products anyway. */
__attribute__((target("avx512f,avx512bf16"))) static void to_bf16(uint16_t *out, const float *x, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < n / 32; b++) {
        __m512 lo = _mm512_loadu_ps(x + 32 * b), hi = _mm512_loadu_ps(x + 32 * b + 16);
        _mm512_storeu_si512((void *)(out + 32 * b), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    size_t done = n / 32 * 32;
    to_bf16_scalar(out + done, x + done, n - done);
}
#else
static void to_bf16(uint16_t *out, const float *x, size_t n) { to_bf16_scalar(out, x, n); }
#endif

/* rows x cols of src (leading dimension ld) into dst, packed (ld = cols). */
static void to_bf16_packed(uint16_t *dst, const float *src, int rows, int cols, int ld)
{
    if (ld == cols) { to_bf16(dst, src, (size_t)rows * cols); return; }
#pragma omp parallel for schedule(static) if ((long)rows * cols > 65536)
    for (int r = 0; r < rows; r++) to_bf16(dst + (size_t)r * cols, src + (size_t)r * ld, (size_t)cols);
}

static int grow(uint16_t **p, size_t *cap, size_t n)
{
    if (n <= *cap) return 0;
    void *q = realloc(*p, n * sizeof(uint16_t));
    if (!q) return ar_error("gemm: out of memory for a %zu-element bf16 buffer", n);
    *p = q;
    *cap = n;
    return 0;
}

/* ------------------------------------------------------------ pinned operands */

/* The live pin of p stored [rows, cols] with leading dimension ld, or NULL. */
static struct ar_gemm_pin *pin_find(ar_gemm *g, const float *p, int rows, int cols, int ld)
{
    for (int i = 0; i < g->npins; i++) {
        struct ar_gemm_pin *e = &g->pins[i];
        if (e->live && e->p == p && e->rows == rows && e->cols == cols && ld == cols) return e;
    }
    return NULL;
}

/* X stored [rows, cols] (leading dimension ld) as bf16: a pin's copy (made on
 * its first use) or a fresh conversion into *scratch. NULL when out of memory. */
static const uint16_t *operand_bf16(ar_gemm *g, const float *X, int rows, int cols, int ld, uint16_t **scratch,
                                    size_t *cap)
{
    struct ar_gemm_pin *e = pin_find(g, X, rows, cols, ld);
    if (e && e->ready) return e->bf;
    uint16_t **dst = e ? &e->bf : scratch;
    if (grow(dst, e ? &e->cap : cap, (size_t)rows * cols)) return NULL;
    to_bf16_packed(*dst, X, rows, cols, ld);
    g->bf16_converts++;
    if (e) e->ready = 1;
    return *dst;
}

/* -------------------------------------------------------------- bf16, oneDNN */

/* One matmul primitive per distinct (shape, layout, beta); a tuning run sees
 * a handful (7 linears x forward/backward), so a short list searched linearly
 * replaces oneDNN's per-call descriptor creation. */
#define GEMM_CACHE 48
typedef struct {
    int key[9];
    dnnl_primitive_t prim;
} gemm_entry;

typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    gemm_entry cache[GEMM_CACHE];
    int n, next;
} dnnl_ctx;

static int dnnl_fail(const char *what, dnnl_status_t s)
{
    return ar_error("gemm: oneDNN %s failed (status %d)", what, (int)s);
}

static int isa_has_bf16(dnnl_cpu_isa_t isa)
{
    return isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
}

int ar_gemm_bf16_supported(void)
{
    return isa_has_bf16(dnnl_get_effective_cpu_isa());
}

const char *ar_gemm_bf16_backend(void)
{
    static char line[96];
    const dnnl_version_t *v = dnnl_version();
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const char *name = isa == dnnl_cpu_isa_avx512_core_amx    ? "avx512_core_amx"
                       : isa == dnnl_cpu_isa_avx512_core_bf16 ? "avx512_core_bf16"
                                                              : "no bf16 ISA";
    snprintf(line, sizeof line, "oneDNN %d.%d.%d, %s", v->major, v->minor, v->patch, name);
    return line;
}

static int dnnl_open(ar_gemm *g)
{
    dnnl_ctx *d = calloc(1, sizeof *d);
    if (!d) return ar_error("gemm: out of memory");
    dnnl_status_t s = dnnl_engine_create(&d->eng, dnnl_cpu, 0);
    if (s != dnnl_success) { free(d); return dnnl_fail("engine_create", s); }
    s = dnnl_stream_create(&d->stream, d->eng, dnnl_stream_default_flags);
    if (s != dnnl_success) { dnnl_engine_destroy(d->eng); free(d); return dnnl_fail("stream_create", s); }
    g->impl = d;
    return 0;
}

static void dnnl_close(ar_gemm *g)
{
    dnnl_ctx *d = g->impl;
    if (!d) return;
    for (int i = 0; i < d->n; i++) dnnl_primitive_destroy(d->cache[i].prim);
    dnnl_stream_destroy(d->stream);
    dnnl_engine_destroy(d->eng);
    free(d);
    g->impl = NULL;
}

/* The memory descriptors of op(A) [M, K] bf16 packed from A as stored, op(B)
 * [K, N] likewise, C [M, N] f32 with leading dimension ldc. The transposes
 * live in the strides, so the conversion is a straight copy. */
static void descs(dnnl_memory_desc_t *a, dnnl_memory_desc_t *b, dnnl_memory_desc_t *c, int ta, int tb,
                  int M, int N, int K, int ldc)
{
    dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N};
    dnnl_dims_t sa = {ta ? 1 : K, ta ? M : 1}, sb = {tb ? 1 : N, tb ? K : 1}, sc = {ldc, 1};
    dnnl_memory_desc_init_by_strides(a, 2, da, dnnl_bf16, sa);
    dnnl_memory_desc_init_by_strides(b, 2, db, dnnl_bf16, sb);
    dnnl_memory_desc_init_by_strides(c, 2, dc, dnnl_f32, sc);
}

static int dnnl_prim(dnnl_ctx *d, dnnl_primitive_t *out, int ta, int tb, int M, int N, int K, int ldc, int acc)
{
    int key[9] = {ta, tb, M, N, K, ldc, acc, 0, 0};
    for (int i = 0; i < d->n; i++)
        if (!memcmp(d->cache[i].key, key, sizeof key)) { *out = d->cache[i].prim; return 0; }
    dnnl_memory_desc_t ma, mb, mc;
    descs(&ma, &mb, &mc, ta, tb, M, N, K, ldc);
    dnnl_matmul_desc_t md;
    dnnl_status_t s = dnnl_matmul_desc_init(&md, &ma, &mb, NULL, &mc);
    if (s != dnnl_success) return dnnl_fail("matmul_desc_init", s);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (acc) { /* beta = 1: oneDNN's sum post-op adds the old C in f32 */
        if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) return dnnl_fail("attr_create", s);
        if ((s = dnnl_post_ops_create(&po)) != dnnl_success ||
            (s = dnnl_post_ops_append_sum(po, 1.0f)) != dnnl_success ||
            (s = dnnl_primitive_attr_set_post_ops(attr, po)) != dnnl_success) {
            if (po) dnnl_post_ops_destroy(po);
            dnnl_primitive_attr_destroy(attr);
            return dnnl_fail("post_ops", s);
        }
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    s = dnnl_primitive_desc_create(&pd, &md, attr, d->eng, NULL);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return dnnl_fail("matmul primitive_desc_create", s);
    dnnl_primitive_t p;
    s = dnnl_primitive_create(&p, pd);
    dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) return dnnl_fail("matmul primitive_create", s);
    gemm_entry *e;
    if (d->n < GEMM_CACHE) e = &d->cache[d->n++];
    else { e = &d->cache[d->next]; d->next = (d->next + 1) % GEMM_CACHE; dnnl_primitive_destroy(e->prim); }
    memcpy(e->key, key, sizeof key);
    e->prim = p;
    *out = p;
    return 0;
}

static int gemm_bf16(ar_gemm *g, int ta, int tb, int M, int N, int K, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc)
{
    dnnl_ctx *d = g->impl;
    g->bf16_calls++;
    /* A as stored is [M, K] or, with ta, [K, M]; B is [K, N] or [N, K]. */
    int ar_ = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    const uint16_t *a16 = operand_bf16(g, A, ar_, ac, lda, &g->a, &g->a_cap);
    const uint16_t *b16 = a16 ? operand_bf16(g, B, br, bc, ldb, &g->b, &g->b_cap) : NULL;
    if (!b16) return -1;
    dnnl_primitive_t p = NULL;
    if (dnnl_prim(d, &p, ta, tb, M, N, K, ldc, beta != 0.0f)) return -1;
    dnnl_memory_desc_t ma, mb, mc;
    descs(&ma, &mb, &mc, ta, tb, M, N, K, ldc);
    dnnl_memory_t mem[3] = {NULL, NULL, NULL};
    dnnl_status_t s;
    if ((s = dnnl_memory_create(&mem[0], &ma, d->eng, (void *)a16)) != dnnl_success ||
        (s = dnnl_memory_create(&mem[1], &mb, d->eng, (void *)b16)) != dnnl_success ||
        (s = dnnl_memory_create(&mem[2], &mc, d->eng, C)) != dnnl_success) {
        for (int i = 0; i < 3; i++) if (mem[i]) dnnl_memory_destroy(mem[i]);
        return dnnl_fail("memory_create", s);
    }
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]}, {DNNL_ARG_DST, mem[2]}};
    s = dnnl_primitive_execute(p, d->stream, 3, args);
    if (s == dnnl_success) s = dnnl_stream_wait(d->stream);
    for (int i = 0; i < 3; i++) dnnl_memory_destroy(mem[i]);
    return s == dnnl_success ? 0 : dnnl_fail("matmul execute", s);
}
#else
int ar_gemm_bf16_supported(void) { return 0; }
const char *ar_gemm_bf16_backend(void) { return "built without oneDNN (libdnnl-dev)"; }
#endif

/* ------------------------------------------------------------------ dispatch */

int ar_gemm_init(ar_gemm *g, int bf16)
{
    memset(g, 0, sizeof *g);
    if (!bf16) return 0;
    if (!ar_gemm_bf16_supported())
        return ar_error("bf16 GEMMs requested but unavailable: %s", ar_gemm_bf16_backend());
#ifdef AR_HAVE_DNNL
    if (dnnl_open(g)) return -1;
#endif
    g->bf16 = 1;
    return 0;
}

int ar_gemm_pin(ar_gemm *g, const float *p, int rows, int cols)
{
    if (!g || !g->bf16 || !p || rows <= 0 || cols <= 0) return 0;
    struct ar_gemm_pin *free_e = NULL;
    for (int i = 0; i < g->npins; i++) {
        struct ar_gemm_pin *e = &g->pins[i];
        if (e->live && e->p == p) return 0;   /* pinned already (another shape: converted as usual) */
        if (!e->live && (!free_e || e->cap > free_e->cap)) free_e = e;
    }
    if (!free_e) {
        struct ar_gemm_pin *q = realloc(g->pins, sizeof *q * (size_t)(g->npins + 1));
        if (!q) return ar_error("gemm: out of memory for a pinned operand");
        g->pins = q;
        free_e = &g->pins[g->npins++];
        memset(free_e, 0, sizeof *free_e);
    }
    free_e->p = p, free_e->rows = rows, free_e->cols = cols;
    free_e->live = 1, free_e->ready = 0;
    return 1;
}

void ar_gemm_unpin(ar_gemm *g, const float *p)
{
    if (!g) return;
    for (int i = 0; i < g->npins; i++)
        if (g->pins[i].live && (!p || g->pins[i].p == p)) g->pins[i].live = g->pins[i].ready = 0;
}

void ar_gemm_free(ar_gemm *g)
{
    if (!g) return;
#ifdef AR_HAVE_DNNL
    dnnl_close(g);
#endif
    for (int i = 0; i < g->npins; i++) free(g->pins[i].bf);
    free(g->pins);
    free(g->a);
    free(g->b);
    memset(g, 0, sizeof *g);
}

int ar_gemm_run(ar_gemm *g, int ta, int tb, int M, int N, int K, const float *A, int lda,
            const float *B, int ldb, float beta, float *C, int ldc)
{
#ifdef AR_HAVE_DNNL
    if (g && g->bf16 && M > 0 && N > 0 && K > 0)
        return gemm_bf16(g, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
#else
    (void)g;
#endif
    sgemm_par(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return 0;
}
