/* quant_fp.cu — MXFP4/MXFP8, NVFP4 and FP8 fake quantization, their STE
 * backward and the fused SignSGD step, mirroring libar/quant/quant_fp.c (the
 * arithmetic is shared with the host in quant_kinds.cuh).
 *
 * A tile (the elements sharing one scale) may span several rows (FP8 per
 * tensor, FP8 2-D blocks), so the work is split in passes over "row tiles"
 * (one row's part of a tile, one thread block each):
 *   1. the tile maxima: each row tile's max |w| goes into its tile by an
 *      atomic max on the float's bits (non-negative floats order as their
 *      bits), which is order-independent and so exact;
 *   2. forward, or backward: every thread recomputes its tile's scale from
 *      the maximum and β (no broadcast needed); the backward also writes the
 *      row tile's dL/dscale (double) into a partial;
 *   3. (backward with β) one thread per tile sums its rows' partials in row
 *      order, as the CPU does, and adds dβ or takes the SignSGD step on β.
 * The scratch (ar_cuda_quant_scratch_bytes) holds the maxima and partials. */
#include "internal.cuh"
#include "quant_kinds.cuh"
#include <cuda_bf16.h>

enum { FT = 128 }; /* most threads per row tile */

/* Threads for row tiles of t: whole warps covering a tile row, at most FT
 * (MX groups of 32 and NV groups of 16 would leave most of FT idle). */
static int fp_threads(const ar_fp_tiling &t) { return t.tcols >= FT ? FT : (t.tcols + 31) / 32 * 32; }

/* Scratch layout: tile maxima (float bits) [ntr·ntc], then partials [n·ntc]. */
static size_t amax_bytes(const ar_fp_tiling &t) { return ((size_t)t.ntr * t.ntc * 4 + 15) & ~(size_t)15; }

size_t ar_cuda_fp_scratch_bytes(const ar_cuda_qspec *q, int n, int k)
{
    ar_fp_tiling t = ar_fp_tiling_of(*q, n, k);
    return amax_bytes(t) + (size_t)n * t.ntc * sizeof(double);
}

/* Row r and tile column tc of row tile blockIdx.x, with its column range. */
__device__ static void row_tile(const ar_fp_tiling &t, int *r, int *tc, int *c0, int *c1)
{
    *r = (int)(blockIdx.x / t.ntc);
    *tc = (int)(blockIdx.x % t.ntc);
    *c0 = *tc * t.tcols;
    *c1 = *c0 + t.tcols < t.k ? *c0 + t.tcols : t.k;
}

/* Index of the tile's β in [n, ntc]: the tile's first row. */
__device__ static long beta_index(const ar_fp_tiling &t, int r, int tc)
{
    return (long)(r / t.trows) * t.trows * t.ntc + tc;
}

__device__ static float beta_at(const ar_cuda_qspec &q, const float *beta, long i)
{
    float mh = q.hi > 0 ? q.hi : 1.0f;
    return beta ? ar_fp_clamp(beta[i], 0.0f, mh) : 1.0f;
}

/* The scale state of row tile (r, tc) from the pass-1 maxima, β and (when
 * given) init_scale, both read at the tile's first row as the CPU does. */
__device__ static ar_fp_tile tile_of(const ar_cuda_qspec &q, const ar_fp_tiling &t, const unsigned *amax,
                                     const float *beta, int r, int tc)
{
    float m = __uint_as_float(amax[(long)(r / t.trows) * t.ntc + tc]);
    long bi = beta_index(t, r, tc);
    return ar_fp_tile_setup(q.kind, q.global_scale, m, beta_at(q, beta, bi), q.init_scale ? q.init_scale[bi] : 1.0f);
}

__global__ void k_fp_amax(ar_fp_tiling t, const float *w, unsigned *amax)
{
    __shared__ float sh[32];
    int r, tc, c0, c1;
    row_tile(t, &r, &tc, &c0, &c1);
    const float *row = w + (long)r * t.k;
    float m = 0.0f;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) m = fmaxf(m, fabsf(row[c]));
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int i = 1; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, sh[i]);
    atomicMax(&amax[(long)(r / t.trows) * t.ntc + tc], __float_as_uint(m));
}

__global__ void k_fp_fwd(ar_cuda_qspec q, ar_fp_tiling t, const float *w, const float *v, const float *beta,
                         const unsigned *amax, float *wq)
{
    int r, tc, c0, c1;
    row_tile(t, &r, &tc, &c0, &c1);
    ar_fp_tile s = tile_of(q, t, amax, beta, r, tc);
    long off = (long)r * t.k;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
        float x = ar_fp_elem_forward(q.kind, s, w[off + c], v ? v[off + c] : 0.0f);
        wq[off + c] = q.bf16_out ? __bfloat162float(__float2bfloat16_rn(x)) : x;
    }
}

__device__ static float sgnf(float x) { return (float)((x > 0) - (x < 0)); }

/* dV (accumulated into dv, or a SignSGD step on v when step) and the row
 * tile's dL/dscale into part[blockIdx.x] (when part is not NULL). */
__global__ void k_fp_bwd(ar_cuda_qspec q, ar_fp_tiling t, const float *w, float *v, const float *beta,
                         const unsigned *amax, const float *dwq, float *dv, double *part, int step, float lr)
{
    __shared__ double shm[32];
    int r, tc, c0, c1;
    row_tile(t, &r, &tc, &c0, &c1);
    ar_fp_tile s = tile_of(q, t, amax, beta, r, tc);
    long off = (long)r * t.k;
    double ds = 0.0;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
        float vj = v ? v[off + c] : 0.0f;
        float d = ar_fp_elem_backward(q.kind, s, w[off + c], vj, dwq[off + c], &ds);
        if (step) {
            if (v) v[off + c] = vj - lr * sgnf(d);
        } else if (dv) {
            dv[off + c] += d;
        }
    }
    if (!part) return;
    ds = ar_block_sum(ds, shm);
    if (threadIdx.x == 0) part[blockIdx.x] = ds;
}

/* One thread per tile: dβ = Σ_rows part · dscale/dβ (rows in order, as the
 * CPU; part NULL: 0), then dbeta += it, or (step) β −= mlr·sign(dβ) and, as
 * the CPU tuner's in-place clamp of the whole [n, ngroups] arrays, every α
 * and β entry of the tile's rows clamped to [0, hi] (α has no gradient). */
__global__ void k_fp_beta(ar_cuda_qspec q, ar_fp_tiling t, float *alpha, float *beta, const unsigned *amax,
                          const double *part, float *dbeta, int step, float mlr)
{
    long tiles = (long)t.ntr * t.ntc;
    float mh = q.hi > 0 ? q.hi : 1.0f;
    for (long tile = blockIdx.x * (long)blockDim.x + threadIdx.x; tile < tiles; tile += (long)gridDim.x * blockDim.x) {
        int tr = (int)(tile / t.ntc), tc = (int)(tile % t.ntc);
        int r0 = tr * t.trows, r1 = r0 + t.trows < t.n ? r0 + t.trows : t.n;
        double sum = 0.0;
        if (part)
            for (int r = r0; r < r1; r++) sum += part[(long)r * t.ntc + tc];
        ar_fp_tile s = tile_of(q, t, amax, beta, r0, tc);
        long bi = beta_index(t, r0, tc);
        float g = (float)(sum * s.dscale_dbeta);
        if (!step) {
            if (dbeta) dbeta[bi] += g;
            continue;
        }
        if (beta) beta[bi] = beta[bi] - mlr * sgnf(g);
        for (int r = r0; r < r1; r++) {
            long i = (long)r * t.ntc + tc;
            if (beta) beta[i] = ar_fp_clamp(beta[i], 0.0f, mh);
            if (alpha) alpha[i] = ar_fp_clamp(alpha[i], 0.0f, mh);
        }
    }
}

static int fp_check(const ar_cuda_qspec *q, int n, int k)
{
    if (n <= 0 || k <= 0) return ar_cuda_fail("quant: bad FP weight shape [%d, %d]", n, k);
    if (!q->scratch) return ar_cuda_fail("quant: FP kind %d without its scratch", q->kind);
    if (q->group_size < -1 || (q->block2d && q->group_size <= 0) ||
        (q->group_size == 0 && q->kind != AR_CUDA_Q_FP8))
        return ar_cuda_fail("quant: FP kind %d with group size %d", q->kind, q->group_size);
    return 0;
}

/* Pass 1: the tile maxima into the scratch (*amax); 0 or -1. */
static int fp_maxima(const ar_cuda_qspec *q, const ar_fp_tiling &t, const float *w, unsigned **amax)
{
    *amax = (unsigned *)q->scratch;
    AR_CK(cudaMemsetAsync(*amax, 0, (size_t)t.ntr * t.ntc * 4, g_cu.st));
    k_fp_amax<<<(unsigned)((long)t.n * t.ntc), fp_threads(t), 0, g_cu.st>>>(t, w, *amax);
    return 0;
}

int ar_cuda_fp_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v, const float *beta,
                       float *wq)
{
    if (fp_check(q, n, k)) return -1;
    ar_fp_tiling t = ar_fp_tiling_of(*q, n, k);
    unsigned *amax;
    if (fp_maxima(q, t, w, &amax)) return -1;
    k_fp_fwd<<<(unsigned)((long)n * t.ntc), fp_threads(t), 0, g_cu.st>>>(*q, t, w, v, beta, amax, wq);
    return ar_cuda_check_launch("FP quant forward");
}

int ar_cuda_fp_backward(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, float *alpha, float *beta,
                        const float *dwq, float *dv, float *dbeta, int step, float lr, float mlr)
{
    if (fp_check(q, n, k)) return -1;
    ar_fp_tiling t = ar_fp_tiling_of(*q, n, k);
    unsigned *amax;
    if (fp_maxima(q, t, w, &amax)) return -1;
    int want_dbeta = step ? beta != NULL : dbeta != NULL;
    double *part = want_dbeta ? (double *)((char *)q->scratch + amax_bytes(t)) : NULL;
    k_fp_bwd<<<(unsigned)((long)n * t.ntc), fp_threads(t), 0, g_cu.st>>>(*q, t, w, v, beta, amax, dwq, dv, part, step, lr);
    if (want_dbeta || (step && alpha)) {
        long tiles = (long)t.ntr * t.ntc;
        k_fp_beta<<<ar_blocks(tiles, 128), 128, 0, g_cu.st>>>(*q, t, alpha, beta, amax, part, dbeta, step, mlr);
    }
    return ar_cuda_check_launch(step ? "FP quant signsgd" : "FP quant backward");
}
