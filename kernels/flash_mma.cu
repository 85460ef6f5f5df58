/* flash_mma.cu — flash attention with every tile product on raw
 * mma.sync.m16n8k16 bf16 tensor-core instructions and the scores,
 * probabilities and accumulators in registers (the fast path's default
 * kernels; flash.cu keeps the first design on wmma with shared-memory
 * round trips, AR_CUDA_FLASH=wmma). Same algorithm, tiling, numerics and
 * one-writer-per-output structure as flash.cu (see there):
 *
 *   forward   one block per (64-query tile, head, sequence), four warps of
 *             16 query rows; per visible 64-key tile S = Q Kᵀ, online
 *             softmax on the accumulator registers, O += P V with P rounded
 *             to bf16 straight from the S registers (the accumulator layout
 *             of two 8-column tiles is the operand layout of one 16-deep
 *             k-step); lse = m + log(l) saved.
 *   backward  dK/dV per (64-key tile, kv head): warps own 16 keys, loop over
 *             the group's heads and the query tiles that see the keys;
 *             Sᵀ = K Qᵀ, Pᵀ, dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ, dK += dSᵀ Q.
 *             dQ per (64-query tile, head): S, P, dP = dO Vᵀ, dS, dQ += dS K.
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4g + t holds
 * A rows g and g + 8, columns 2t, 2t+1 (+8); B (k x n) rows 2t, 2t+1 (+8) of
 * column g; C rows g and g + 8, columns 2t, 2t+1. Operands come from
 * shared-memory tiles (rows padded by 8 bf16: conflict-free) through
 * ldmatrix, .trans where the tile is stored k-major. */
#include "internal.cuh"
#include <cuda_bf16.h>
#include <math.h>

namespace {
typedef __nv_bfloat16 bf16;

enum { MB = 64, MW = 4, MTHREADS = 32 * MW }; /* tile rows, warps, threads */

__device__ __forceinline__ void mma16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i. */
__device__ __forceinline__ void ldsm(unsigned r[4], const bf16 *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

__device__ __forceinline__ void ldsm_t(unsigned r[4], const bf16 *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

/* A operand: the 16 x 16 block at (r0, c0) of a row-major tile of pitch ld. */
__device__ __forceinline__ void load_a(unsigned a[4], const bf16 *X, int ld, int r0, int c0, int lane)
{
    ldsm(a, X + (r0 + (lane & 15)) * ld + c0 + ((lane >> 4) << 3));
}

/* B operands of two 8-column tiles (n0 and n0 + 8, k rows k0..k0+15) from a
 * tile stored n-major X[n][k] (K for Q Kᵀ): b[0..1] tile n0, b[2..3] n0 + 8. */
__device__ __forceinline__ void load_b_nk(unsigned b[4], const bf16 *X, int ld, int n0, int k0, int lane)
{
    ldsm(b, X + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + (((lane >> 3) & 1) << 3));
}

/* The same from a tile stored k-major Y[k][n] (V for P V), transposed on load. */
__device__ __forceinline__ void load_b_kn(unsigned b[4], const bf16 *Y, int ld, int k0, int n0, int lane)
{
    ldsm_t(b, Y + (k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ld + n0 + ((lane >> 4) << 3));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (lo) in the low half: the lower column */
    return *(unsigned *)&v;
}

/* The A operand of k-step kk (16 columns) from accumulators s[2kk], s[2kk+1]. */
__device__ __forceinline__ void acc_to_a(unsigned a[4], const float s0[4], const float s1[4])
{
    a[0] = pack_bf16(s0[0], s0[1]), a[1] = pack_bf16(s0[2], s0[3]);
    a[2] = pack_bf16(s1[0], s1[1]), a[3] = pack_bf16(s1[2], s1[3]);
}

/* acc[8][4] (16 rows x 64 columns) = A (16 rows of X from row r0, D deep) ·
 * Yᵀ where Y is a 64 x D tile stored n-major: S = Q Kᵀ and its relatives. */
template <int D>
__device__ __forceinline__ void rows_times_tile_t(float acc[8][4], const bf16 *X, int r0, const bf16 *Y, int lane)
{
    const int LD = D + 8;
#pragma unroll
    for (int n = 0; n < 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        unsigned a[4];
        load_a(a, X, LD, r0, 16 * kk, lane);
#pragma unroll
        for (int np = 0; np < 4; np++) {
            unsigned b[4];
            load_b_nk(b, Y, LD, 16 * np, 16 * kk, lane);
            mma16816(acc[2 * np], a, b[0], b[1]);
            mma16816(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
}

/* out[D/8][4] += P · Y where P (16 x 64) is in accumulator registers p[8][4]
 * and Y is a 64 x D tile stored k-major (rows = the 64 summed positions). */
template <int D>
__device__ __forceinline__ void acc_times_tile(float out[D / 8][4], const float p[8][4], const bf16 *Y, int lane)
{
    const int LD = D + 8;
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        unsigned a[4];
        acc_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            unsigned b[4];
            load_b_kn(b, Y, LD, 16 * kk, 16 * dp, lane);
            mma16816(out[2 * dp], a, b[0], b[1]);
            mma16816(out[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

__device__ __forceinline__ bool visible(int q, int k, int T, int window)
{
    return q < T && k < T && k <= q && (window <= 0 || q - k < window);
}

/* Every (query, key) of the 64 x 64 tile at (q0, k0) is visible: no masking
 * work (most tiles of a long sequence). */
__device__ __forceinline__ bool tile_visible(int q0, int k0, int T, int window)
{
    return k0 + MB - 1 <= q0 && q0 + MB <= T && (window <= 0 || q0 + MB - 1 - k0 < window);
}

/* 2^x on the special-function unit (relative error ~2^-22, far below the
 * bf16 rounding P gets; 2^-inf = 0). The kernels work in log2 units, with
 * the score scale folded into log2(e)·scale, so one FFMA and one EX2 make a
 * probability: the softmax is otherwise what limits the tile loop. */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

#define AR_LOG2E 1.4426950408889634f
#define AR_LN2 0.6931471805599453f

/* Rows [t0, t0 + 64) of one head of x [B, T, H, D] (bf16) into a tile of
 * pitch D + 8; rows at or past T become zeros. 16-byte vector copies. */
template <int D>
__device__ void load_tile(bf16 *tile, const bf16 *x, int b, int t0, int T, int H, int h)
{
    const int ch = D / 8, LD = D + 8;
    for (int c = threadIdx.x; c < MB * ch; c += blockDim.x) {
        int r = c / ch, d = (c % ch) * 8, t = t0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t < T) v = *(const uint4 *)(x + (((long)b * T + t) * H + h) * D + d);
        *(uint4 *)(tile + r * LD + d) = v;
    }
}

/* y[row, h, :] += acc (accumulate = 0: y = acc) for this lane's rows r0 + g
 * and r0 + g + 8 (< T) of y [B, T, H, D] f32; each element has one writer. */
template <int D>
__device__ void add_acc_rows(float *y, const float acc[D / 8][4], int b, int r0, int T, int H, int h, int lane,
                             int accumulate)
{
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int r = r0 + g + 8 * hh;
        if (r >= T) continue;
        float *row = y + (((long)b * T + r) * H + h) * D + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            float2 *p = (float2 *)(row + 8 * n), v = accumulate ? *p : make_float2(0.0f, 0.0f);
            v.x += acc[n][2 * hh], v.y += acc[n][2 * hh + 1];
            *p = v;
        }
    }
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* ---- forward ------------------------------------------------------------------- */

template <int D>
__global__ void __launch_bounds__(MTHREADS) k_fwd(bf16 *out_b, float *out_f, float *lse, const bf16 *q, const bf16 *k,
                                                  const bf16 *v, int T, int NH, int NKV, int window, float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nT = (T + MB - 1) / MB, i = nT - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV), q0 = i * MB, row0 = q0 + 16 * w + g; /* rows row0, row0 + 8 */
    const float scale2 = scale * AR_LOG2E; /* scores in log2 units */
    bf16 *Qs = (bf16 *)smem, *Ks = Qs + MB * LD, *Vs = Ks + MB * LD;

    load_tile<D>(Qs, q, b, q0, T, NH, h);
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    int j0 = window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / MB : 0;
    for (int j = j0; j <= i; j++) {
        int k0 = j * MB;
        __syncthreads(); /* every warp is done with the previous K, V */
        load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
        load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
        __syncthreads();
        float s[8][4];
        rows_times_tile_t<D>(s, Qs, 16 * w, Ks, lane);
        float mx[2] = {-INFINITY, -INFINITY};
        bool full = tile_visible(q0, k0, T, window);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + 8 * n + 2 * t + (e & 1);
                float x = full || visible(row0 + 8 * (e >> 1), key, T, window) ? s[n][e] * scale2 : -INFINITY;
                s[n][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float alpha[2], mu[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            float mn = fmaxf(m[hh], quad_max(mx[hh]));
            alpha[hh] = m[hh] == -INFINITY ? 0.0f : ex2(m[hh] - mn);
            mu[hh] = mn == -INFINITY ? 0.0f : mn; /* a row with nothing visible yet keeps p = 0 */
            m[hh] = mn;
        }
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = ex2(s[n][e] - mu[e >> 1]); /* masked: 2^-inf = 0 */
                s[n][e] = p;
                rs[e >> 1] += p;
            }
        /* l stays a per-lane partial sum until the end: every term is scaled alike */
        l[0] = l[0] * alpha[0] + rs[0], l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        acc_times_tile<D>(o, s, Vs, lane);
    }
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        float lt = quad_sum(l[hh]);
        int r = row0 + 8 * hh;
        if (r >= T) continue;
        float inv = 1.0f / lt;
        long base = (((long)b * T + r) * NH + h) * D + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            float x0 = o[n][2 * hh] * inv, x1 = o[n][2 * hh + 1] * inv;
            if (out_f) *(float2 *)(out_f + base + 8 * n) = make_float2(x0, x1);
            if (out_b) *(__nv_bfloat162 *)(out_b + base + 8 * n) = __floats2bfloat162_rn(x0, x1);
        }
        if (t == 0) lse[((long)b * NH + h) * T + r] = m[hh] * AR_LN2 + logf(lt); /* m is in log2 units */
    }
}

/* ---- backward ------------------------------------------------------------------- */

template <int D>
__global__ void __launch_bounds__(MTHREADS) k_bwd_kv(float *dk, float *dv, const bf16 *q, const bf16 *k, const bf16 *v,
                                                     const bf16 *dob, const float *lse, const float *Drow, int T,
                                                     int NH, int NKV, int window, float scale, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int group = NH / NKV, nT = (T + MB - 1) / MB, j = nT - 1 - blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int k0 = j * MB, key0 = k0 + 16 * w + g; /* this lane's keys key0, key0 + 8 */
    const float scale2 = scale * AR_LOG2E;
    bf16 *Ks = (bf16 *)smem, *Vs = Ks + MB * LD, *Qs = Vs + MB * LD, *dOs = Qs + MB * LD;
    float *Ls = (float *)(dOs + MB * LD), *Ds = Ls + MB;

    load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
    load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
    float dK[D / 8][4], dV[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[n][e] = dV[n][e] = 0.0f;
    for (int r = 0; r < group; r++) {
        int h = kvh * group + r;
        for (int i = j; i < nT; i++) {
            int q0 = i * MB;
            if (window > 0 && q0 - window >= k0 + MB - 1) break; /* every later query is out of the window */
            __syncthreads(); /* previous Q, dO, lse, D no longer read */
            load_tile<D>(Qs, q, b, q0, T, NH, h);
            load_tile<D>(dOs, dob, b, q0, T, NH, h);
            if (threadIdx.x < MB) {
                int tq = q0 + threadIdx.x;
                long o = ((long)b * NH + h) * T + tq;
                Ls[threadIdx.x] = tq < T ? lse[o] * AR_LOG2E : 0.0f; /* log2 units */
                Ds[threadIdx.x] = tq < T ? Drow[o] : 0.0f;
            }
            __syncthreads();
            float p[8][4], dp[8][4];
            rows_times_tile_t<D>(p, Ks, 16 * w, Qs, lane); /* Sᵀ: this warp's keys x 64 queries */
            bool full = tile_visible(q0, k0, T, window);
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int c = 8 * n + 2 * t + (e & 1);
                    p[n][e] = full || visible(q0 + c, key0 + 8 * (e >> 1), T, window)
                                  ? ex2(__fmaf_rn(p[n][e], scale2, -Ls[c]))
                                  : 0.0f;
                }
            acc_times_tile<D>(dV, p, dOs, lane);            /* dV += Pᵀ dO */
            rows_times_tile_t<D>(dp, Vs, 16 * w, dOs, lane); /* dPᵀ = V dOᵀ */
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) dp[n][e] = p[n][e] * (dp[n][e] - Ds[8 * n + 2 * t + (e & 1)]) * scale;
            acc_times_tile<D>(dK, dp, Qs, lane); /* dK += dSᵀ Q */
        }
    }
    add_acc_rows<D>(dk, dK, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
    add_acc_rows<D>(dv, dV, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
}

template <int D>
__global__ void __launch_bounds__(MTHREADS) k_bwd_q(float *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                                    const bf16 *dob, const float *lse, const float *Drow, int T, int NH,
                                                    int NKV, int window, float scale, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nT = (T + MB - 1) / MB, i = nT - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV), q0 = i * MB, row0 = q0 + 16 * w + g;
    const float scale2 = scale * AR_LOG2E;
    bf16 *Qs = (bf16 *)smem, *dOs = Qs + MB * LD, *Ks = dOs + MB * LD, *Vs = Ks + MB * LD;

    load_tile<D>(Qs, q, b, q0, T, NH, h);
    load_tile<D>(dOs, dob, b, q0, T, NH, h);
    float L[2], Dd[2];
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int r = row0 + 8 * hh;
        long o = ((long)b * NH + h) * T + r;
        L[hh] = r < T ? lse[o] * AR_LOG2E : 0.0f; /* log2 units */
        Dd[hh] = r < T ? Drow[o] : 0.0f;
    }
    float dQ[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) dQ[n][0] = dQ[n][1] = dQ[n][2] = dQ[n][3] = 0.0f;
    int j0 = window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / MB : 0;
    for (int j = j0; j <= i; j++) {
        int k0 = j * MB;
        __syncthreads();
        load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
        load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
        __syncthreads();
        float p[8][4], dp[8][4];
        rows_times_tile_t<D>(p, Qs, 16 * w, Ks, lane);  /* S = Q Kᵀ */
        rows_times_tile_t<D>(dp, dOs, 16 * w, Vs, lane); /* dP = dO Vᵀ */
        bool full = tile_visible(q0, k0, T, window);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int hh = e >> 1, key = k0 + 8 * n + 2 * t + (e & 1);
                float pv = full || visible(row0 + 8 * hh, key, T, window) ? ex2(__fmaf_rn(p[n][e], scale2, -L[hh]))
                                                                          : 0.0f;
                dp[n][e] = pv * (dp[n][e] - Dd[hh]) * scale;
            }
        acc_times_tile<D>(dQ, dp, Ks, lane); /* dQ += dS K */
    }
    add_acc_rows<D>(dq, dQ, b, q0 + 16 * w, T, NH, h, lane, accumulate);
}

/* ---- version 2: pipelined tiles ----------------------------------------------------
 * The same tiles, fragments and arithmetic as above (the mma1 kernels,
 * AR_CUDA_FLASH=mma1), restructured around what limited them: every tile
 * load was synchronous (global -> registers -> shared, then a barrier), so
 * each tile step waited a full memory latency with only the SM's other
 * blocks to hide it. Here the tiles a block streams through are copied with
 * cp.async into two shared-memory buffers: the copy of step s + 1 is in
 * flight while step s computes (double buffering; rows past T are
 * zero-filled by the copy itself). Also:
 *   - the forward keeps its Q fragments in registers (loaded once with
 *     ldmatrix) instead of re-reading Q from shared memory every key tile,
 *     and takes the row maximum on the raw scores so a probability costs one
 *     FFMA + EX2;
 *   - grids put the block with the most tiles first (blockIdx.y is the tile,
 *     blockIdx.x the (head, sequence) pair: the hardware issues x fastest),
 *     so the long blocks of the causal triangle do not run last: the dK/dV
 *     kernel's longest blocks are its first key tiles, the forward's and
 *     the dQ kernel's their last query tiles;
 *   - __launch_bounds__(128, 2): two blocks per SM (the double buffers take
 *     5 to 6 tiles of shared memory: 87-105 KB at head_dim 128).
 * The dK/dV kernel flattens its (query head of the group, query tile) loop
 * into one step sequence so the prefetch crosses head boundaries. */

/* 16 bytes global -> shared without a register round trip; valid = 0 writes
 * zeros and reads nothing (src must still be a mapped address). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}

/* The same for one float (the backward's lse and D rows). */
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool valid)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0) : "memory");
}

/* Close the group of copies issued so far (an empty group is legal: the
 * last step commits one so the wait below stays uniform). */
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/* Wait until at most N of this thread's groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/* load_tile through cp.async (no wait): rows [t0, t0 + 64) of one head of x
 * [B, T, H, D] into a tile of pitch D + 8, rows at or past T zero-filled. */
template <int D>
__device__ void load_tile_async(bf16 *tile, const bf16 *x, int b, int t0, int T, int H, int h)
{
    const int ch = D / 8, LD = D + 8;
    for (int c = threadIdx.x; c < MB * ch; c += blockDim.x) {
        int r = c / ch, d = (c % ch) * 8, t = t0 + r;
        bool ok = t < T;
        cp_async16(tile + r * LD + d, x + (((long)b * T + (ok ? t : 0)) * H + h) * D + d, ok);
    }
}

/* lse and D of query rows [q0, q0 + 64) of head h (rows past T: zeros);
 * threads 0..63 copy lse, 64..127 D. */
__device__ __forceinline__ void load_rows_async(float *Ls, float *Ds, const float *lse, const float *Drow, int b,
                                                int q0, int T, int NH, int h)
{
    int c = threadIdx.x & (MB - 1), tq = q0 + c;
    bool ok = tq < T;
    long o = ((long)b * NH + h) * T + (ok ? tq : 0);
    if (threadIdx.x < MB) cp_async4(Ls + c, lse + o, ok);
    else if (threadIdx.x < 2 * MB) cp_async4(Ds + c, Drow + o, ok);
}

/* acc[8][4] (16 rows x 64 columns) = Qf · Yᵀ with the A operand already in
 * registers (qf[kk]: k-step kk of the warp's 16 rows) and Y a 64 x D tile
 * stored n-major: S = Q Kᵀ of the forward. */
template <int D>
__device__ __forceinline__ void frags_times_tile_t(float acc[8][4], const unsigned qf[D / 16][4], const bf16 *Y,
                                                   int lane)
{
    const int LD = D + 8;
#pragma unroll
    for (int n = 0; n < 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
        for (int np = 0; np < 4; np++) {
            unsigned bb[4];
            load_b_nk(bb, Y, LD, 16 * np, 16 * kk, lane);
            mma16816(acc[2 * np], qf[kk], bb[0], bb[1]);
            mma16816(acc[2 * np + 1], qf[kk], bb[2], bb[3]);
        }
}

/* First key tile a query tile at q0 sees (0, or the window's start). */
__device__ __forceinline__ int first_key_tile(int q0, int window)
{
    return window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / MB : 0;
}

/* Forward on query tiles of 16·NW rows (NW warps of 16 rows; NW = 4: the
 * 64-row tiles of AR_CUDA_FLASH_MMA, 8: 128-row tiles, AR_CUDA_FLASH_MMA_ATOMIC,
 * half the K/V traffic per flop) over 64-key tiles. Shared memory: K0 V0 K1 V1
 * (buffer c = K at 2c, V at 2c + 1); Q is staged in buffer 1 until every
 * warp holds its fragments. A warp whose rows all precede a key tile skips
 * it (the causal diagonal of a 128-row tile spans two key tiles). */
template <int D, int NW>
__global__ void __launch_bounds__(32 * NW, NW == 4 ? 2 : 1) k_fwd2(bf16 *out_b, float *out_f, float *lse, const bf16 *q,
                                                                   const bf16 *k, const bf16 *v, int T, int NH, int NKV,
                                                                   int window, float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, QR = 16 * NW, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2,
              t = lane & 3;
    const int nQ = (T + QR - 1) / QR, i = nQ - 1 - blockIdx.y, h = blockIdx.x % NH, b = blockIdx.x / NH;
    const int kvh = h / (NH / NKV), q0 = i * QR, qw = q0 + 16 * w, row0 = qw + g; /* rows row0, row0 + 8 */
    const float scale2 = scale * AR_LOG2E; /* scores in log2 units */
    bf16 *Ks = (bf16 *)smem, *Vs = Ks + TS, *Qs = Ks + 2 * TS; /* buffer c: Ks + 2c·TS, Vs + 2c·TS */
    const int j0 = first_key_tile(q0, window), jl = ((q0 + QR < T ? q0 + QR : T) - 1) / MB; /* last key tile */

    for (int r = 0; r < QR; r += MB) load_tile_async<D>(Qs + r * LD, q, b, q0 + r, T, NH, h);
    cp_commit();
    load_tile_async<D>(Ks, k, b, j0 * MB, T, NKV, kvh);
    load_tile_async<D>(Vs, v, b, j0 * MB, T, NKV, kvh);
    cp_commit();
    cp_wait<1>(); /* Q is in (the first K, V may still be coming) */
    __syncthreads();
    unsigned qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) load_a(qf[kk], Qs, LD, 16 * w, 16 * kk, lane);
    __syncthreads(); /* every warp has its Q before buffer 1 is refilled */

    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    for (int j = j0; j <= jl; j++) {
        const int cur = (j - j0) & 1, k0 = j * MB;
        if (j < jl) { /* prefetch the next K, V into the other buffer */
            load_tile_async<D>(Ks + 2 * (cur ^ 1) * TS, k, b, k0 + MB, T, NKV, kvh);
            load_tile_async<D>(Vs + 2 * (cur ^ 1) * TS, v, b, k0 + MB, T, NKV, kvh);
        }
        cp_commit();
        cp_wait<1>(); /* this step's K, V are in */
        __syncthreads();
        if (k0 <= qw + 15) { /* else every key of the tile is after the warp's rows */
            float s[8][4];
            frags_times_tile_t<D>(s, qf, Ks + 2 * cur * TS, lane);
            float mx[2] = {-INFINITY, -INFINITY};
            /* the warp's 16 rows see every key of the tile: no masking */
            if (k0 + MB - 1 <= qw && qw + 16 <= T && (window <= 0 || qw + 15 - k0 < window)) {
#pragma unroll
                for (int n = 0; n < 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            } else {
#pragma unroll
                for (int n = 0; n < 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int key = k0 + 8 * n + 2 * t + (e & 1);
                        if (!visible(row0 + 8 * (e >> 1), key, T, window)) s[n][e] = -INFINITY;
                        mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
                    }
            }
            float alpha[2], mu[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                /* raw maximum times scale2 = maximum of the log2-unit scores (scale2 > 0) */
                float mt = quad_max(mx[hh]), mn = fmaxf(m[hh], mt == -INFINITY ? -INFINITY : mt * scale2);
                alpha[hh] = m[hh] == -INFINITY ? 0.0f : ex2(m[hh] - mn);
                mu[hh] = mn == -INFINITY ? 0.0f : mn; /* a row with nothing visible yet keeps p = 0 */
                m[hh] = mn;
            }
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float p = ex2(__fmaf_rn(s[n][e], scale2, -mu[e >> 1])); /* masked: 2^-inf = 0 */
                    s[n][e] = p;
                    rs[e >> 1] += p;
                }
            /* l stays a per-lane partial sum until the end: every term is scaled alike */
            l[0] = l[0] * alpha[0] + rs[0], l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
            for (int n = 0; n < D / 8; n++) o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
            acc_times_tile<D>(o, s, Vs + 2 * cur * TS, lane);
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        float lt = quad_sum(l[hh]);
        int r = row0 + 8 * hh;
        if (r >= T) continue;
        float inv = 1.0f / lt;
        long base = (((long)b * T + r) * NH + h) * D + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            float x0 = o[n][2 * hh] * inv, x1 = o[n][2 * hh + 1] * inv;
            if (out_f) *(float2 *)(out_f + base + 8 * n) = make_float2(x0, x1);
            if (out_b) *(__nv_bfloat162 *)(out_b + base + 8 * n) = __floats2bfloat162_rn(x0, x1);
        }
        if (t == 0) lse[((long)b * NH + h) * T + r] = m[hh] * AR_LN2 + logf(lt); /* m is in log2 units */
    }
}

/* A operand of the 16 x 16 block at (rows r0, columns c0) of Xᵀ, where X is
 * stored k-major X[k][m] (pitch ld): the fused backward's dS from the dSᵀ
 * tile. Matrices 0..3: (k lo, m lo), (k lo, m hi), (k hi, m lo), (k hi, m hi). */
__device__ __forceinline__ void load_a_t(unsigned a[4], const bf16 *X, int ld, int r0, int c0, int lane)
{
    ldsm_t(a, X + (c0 + (lane & 7) + ((lane >> 4) << 3)) * ld + r0 + (((lane >> 3) & 1) << 3));
}

/* p[0..1] += (x, y) in global memory without reading back (one vector
 * reduction on sm_90, two scalar ones before). */
__device__ __forceinline__ void red_add2(float *p, float x, float y)
{
#if __CUDA_ARCH__ >= 900
    atomicAdd((float2 *)p, make_float2(x, y));
#else
    atomicAdd(p, x);
    atomicAdd(p + 1, y);
#endif
}

enum { LDT = MB + 8 }; /* pitch of the fused backward's dSᵀ tile (bf16, conflict-free) */

/* dq rows q0 + 16w .. (head hq) += dS K for the warp's 16 query rows, dS read
 * as the transpose of the block's dSᵀ tile (64 keys x 64 queries), K the key
 * tile; 64 output columns at a time (32 accumulators), f32 reductions. */
template <int D>
__device__ __forceinline__ void add_dq_atomic(float *dq, const bf16 *dSt, const bf16 *Ks, int b, int q0, int T, int NH,
                                              int hq, int w, int lane)
{
    const int LD = D + 8, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int c0 = 0; c0 < D / 16; c0 += 4) { /* 16-column units c0 .. c0 + 3 */
        float acc[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < MB / 16; kk++) {
            unsigned a[4];
            load_a_t(a, dSt, LDT, 16 * w, 16 * kk, lane);
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (c0 + u < D / 16) {
                    unsigned bb[4];
                    load_b_kn(bb, Ks, LD, 16 * kk, 16 * (c0 + u), lane);
                    mma16816(acc[2 * u], a, bb[0], bb[1]);
                    mma16816(acc[2 * u + 1], a, bb[2], bb[3]);
                }
        }
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            int r = q0 + 16 * w + g + 8 * hh;
            if (r >= T) continue;
            float *row = dq + (((long)b * T + r) * NH + hq) * D + 16 * c0 + 2 * t;
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (c0 + u < D / 16) {
                    red_add2(row + 16 * u, acc[2 * u][2 * hh], acc[2 * u][2 * hh + 1]);
                    red_add2(row + 16 * u + 8, acc[2 * u + 1][2 * hh], acc[2 * u + 1][2 * hh + 1]);
                }
        }
    }
}

/* One past the last query tile that sees the key tile at k0 (a window ends
 * the band: the first i with i·64 − window ≥ k0 + 63 sees none of it). */
__device__ __forceinline__ int end_query_tile(int k0, int nT, int window)
{
    if (window <= 0) return nT;
    int e = (k0 + MB - 1 + window + MB - 1) / MB;
    return e < nT ? e : nT;
}

/* dK, dV per (64-key tile, kv head), as k_bwd_kv. FUSED (AR_CUDA_FLASH=
 * mma-atomic): the same kernel also adds dQ = dS K: each step's dSᵀ goes to
 * shared memory in bf16 (the values the dK product uses), and after a
 * barrier each warp multiplies 16 query rows of its transpose by the key
 * tile and adds them to dq with f32 reductions: 5 tile products per step
 * instead of 4 here + 3 in k_bwd_q2, but dq's sums are in arrival order
 * (not bit-reproducible) and dq must start zeroed. */
template <int D, bool FUSED>
__global__ void __launch_bounds__(MTHREADS, 2) k_bwd_kv2(float *dk, float *dv, float *dq, const bf16 *q, const bf16 *k,
                                                         const bf16 *v, const bf16 *dob, const float *lse,
                                                         const float *Drow, int T, int NH, int NKV, int window,
                                                         float scale, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int group = NH / NKV, nT = (T + MB - 1) / MB, j = blockIdx.y, kvh = blockIdx.x % NKV, b = blockIdx.x / NKV;
    const int k0 = j * MB, key0 = k0 + 16 * w + g; /* this lane's keys key0, key0 + 8 */
    const float scale2 = scale * AR_LOG2E;
    bf16 *Ks = (bf16 *)smem, *Vs = Ks + TS, *Qs = Vs + TS, *dOs = Qs + 2 * TS; /* Q, dO: two buffers each */
    float *Ls = (float *)(dOs + 2 * TS), *Ds = Ls + 2 * MB;
    bf16 *dSt = (bf16 *)(Ds + 2 * MB); /* FUSED: [64 keys][LDT] */
    /* steps: (query head r of the group, query tile i), i fastest */
    const int ni = end_query_tile(k0, nT, window) - j, steps = group * ni;

    load_tile_async<D>(Ks, k, b, k0, T, NKV, kvh);
    load_tile_async<D>(Vs, v, b, k0, T, NKV, kvh);
    load_tile_async<D>(Qs, q, b, k0, T, NH, kvh * group); /* step 0: r = 0, i = j */
    load_tile_async<D>(dOs, dob, b, k0, T, NH, kvh * group);
    load_rows_async(Ls, Ds, lse, Drow, b, k0, T, NH, kvh * group);
    cp_commit();
    float dK[D / 8][4], dV[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[n][e] = dV[n][e] = 0.0f;
    for (int st = 0; st < steps; st++) {
        const int cur = st & 1, q0 = (j + st % ni) * MB;
        if (st + 1 < steps) { /* prefetch the next step's Q, dO, lse, D */
            int h1 = kvh * group + (st + 1) / ni, q1 = (j + (st + 1) % ni) * MB, nb = cur ^ 1;
            load_tile_async<D>(Qs + nb * TS, q, b, q1, T, NH, h1);
            load_tile_async<D>(dOs + nb * TS, dob, b, q1, T, NH, h1);
            load_rows_async(Ls + nb * MB, Ds + nb * MB, lse, Drow, b, q1, T, NH, h1);
        }
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const bf16 *Qc = Qs + cur * TS, *dOc = dOs + cur * TS;
        const float *Lc = Ls + cur * MB, *Dc = Ds + cur * MB;
        float p[8][4], dp[8][4];
        rows_times_tile_t<D>(p, Ks, 16 * w, Qc, lane); /* Sᵀ: this warp's keys x 64 queries */
        bool full = tile_visible(q0, k0, T, window);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = 8 * n + 2 * t + (e & 1);
                p[n][e] = full || visible(q0 + c, key0 + 8 * (e >> 1), T, window)
                              ? ex2(__fmaf_rn(p[n][e], scale2, -(Lc[c] * AR_LOG2E)))
                              : 0.0f;
            }
        acc_times_tile<D>(dV, p, dOc, lane);            /* dV += Pᵀ dO */
        rows_times_tile_t<D>(dp, Vs, 16 * w, dOc, lane); /* dPᵀ = V dOᵀ */
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dp[n][e] = p[n][e] * (dp[n][e] - Dc[8 * n + 2 * t + (e & 1)]) * scale;
        if (FUSED) { /* the warp's 16 rows of dSᵀ, rounded as acc_to_a rounds them */
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++)
                    *(unsigned *)(dSt + (16 * w + g + 8 * hh) * LDT + 8 * n + 2 * t) =
                        pack_bf16(dp[n][2 * hh], dp[n][2 * hh + 1]);
        }
        acc_times_tile<D>(dK, dp, Qc, lane); /* dK += dSᵀ Q */
        /* every warp is done with this step's Q, dO, lse, D (refilled by the
         * next step's prefetch) and, FUSED, has written its dSᵀ rows */
        __syncthreads();
        if (FUSED) /* dSt and K only: the next step's barrier guards dSt */
            add_dq_atomic<D>(dq, dSt, Ks, b, q0, T, NH, kvh * group + st / ni, w, lane);
    }
    add_acc_rows<D>(dk, dK, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
    add_acc_rows<D>(dv, dV, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
}

template <int D>
__global__ void __launch_bounds__(MTHREADS, 2) k_bwd_q2(float *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                                        const bf16 *dob, const float *lse, const float *Drow, int T,
                                                        int NH, int NKV, int window, float scale, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nT = (T + MB - 1) / MB, i = nT - 1 - blockIdx.y, h = blockIdx.x % NH, b = blockIdx.x / NH;
    const int kvh = h / (NH / NKV), q0 = i * MB, row0 = q0 + 16 * w + g;
    const float scale2 = scale * AR_LOG2E;
    bf16 *Qs = (bf16 *)smem, *dOs = Qs + TS, *Ks = dOs + TS, *Vs = Ks + 2 * TS; /* K, V: two buffers each */
    const int j0 = first_key_tile(q0, window);

    load_tile_async<D>(Qs, q, b, q0, T, NH, h);
    load_tile_async<D>(dOs, dob, b, q0, T, NH, h);
    load_tile_async<D>(Ks, k, b, j0 * MB, T, NKV, kvh);
    load_tile_async<D>(Vs, v, b, j0 * MB, T, NKV, kvh);
    cp_commit();
    float L[2], Dd[2];
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int r = row0 + 8 * hh;
        long o = ((long)b * NH + h) * T + r;
        L[hh] = r < T ? lse[o] * AR_LOG2E : 0.0f; /* log2 units */
        Dd[hh] = r < T ? Drow[o] : 0.0f;
    }
    float dQ[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) dQ[n][0] = dQ[n][1] = dQ[n][2] = dQ[n][3] = 0.0f;
    for (int j = j0; j <= i; j++) {
        const int cur = (j - j0) & 1, k0 = j * MB;
        if (j < i) {
            load_tile_async<D>(Ks + (cur ^ 1) * TS, k, b, k0 + MB, T, NKV, kvh);
            load_tile_async<D>(Vs + (cur ^ 1) * TS, v, b, k0 + MB, T, NKV, kvh);
        }
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const bf16 *Kc = Ks + cur * TS;
        float p[8][4], dp[8][4];
        rows_times_tile_t<D>(p, Qs, 16 * w, Kc, lane);            /* S = Q Kᵀ */
        rows_times_tile_t<D>(dp, dOs, 16 * w, Vs + cur * TS, lane); /* dP = dO Vᵀ */
        bool full = tile_visible(q0, k0, T, window);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int hh = e >> 1, key = k0 + 8 * n + 2 * t + (e & 1);
                float pv = full || visible(row0 + 8 * hh, key, T, window) ? ex2(__fmaf_rn(p[n][e], scale2, -L[hh]))
                                                                          : 0.0f;
                dp[n][e] = pv * (dp[n][e] - Dd[hh]) * scale;
            }
        acc_times_tile<D>(dQ, dp, Kc, lane); /* dQ += dS K */
        __syncthreads();
    }
    add_acc_rows<D>(dq, dQ, b, q0 + 16 * w, T, NH, h, lane, accumulate);
}

/* ---- host side -------------------------------------------------------------------- */

template <int D> size_t tiles_smem(int n) { return (size_t)n * MB * (D + 8) * sizeof(bf16); }

/* Allow a kernel its dynamic shared memory (a host call: once per kernel). */
template <typename K> int allow_smem(K kernel, size_t bytes, bool *done)
{
    if (!*done) AR_CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    *done = true;
    return 0;
}

/* The same asking for the largest shared-memory carveout: the version-2
 * kernels want two blocks of 87-113 KB per SM. */
template <typename K> int allow_smem_max(K kernel, size_t bytes, bool *done)
{
    if (!*done) {
        AR_CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        AR_CK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    }
    *done = true;
    return 0;
}

template <int D>
int fwd_launch(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
               int B, int T, int NH, int NKV, int window, int version)
{
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB;
    if (version == 1) {
        static bool ready;
        size_t sm = tiles_smem<D>(3);
        if (allow_smem(k_fwd<D>, sm, &ready)) return -1;
        k_fwd<D><<<dim3(nT, NH, B), MTHREADS, sm, g_cu.st>>>((bf16 *)out_b, out_f, lse, (const bf16 *)q,
                                                             (const bf16 *)k, (const bf16 *)v, T, NH, NKV, window, scale);
        return ar_cuda_check_launch("flash attention forward (mma1)");
    }
    size_t sm = tiles_smem<D>(4); /* two K, two V (Q staged in the second pair) */
    if (version == 3) { /* 128-row query tiles */
        static bool ready3;
        if (allow_smem_max(k_fwd2<D, 8>, sm, &ready3)) return -1;
        k_fwd2<D, 8><<<dim3(NH * B, (T + 127) / 128), 256, sm, g_cu.st>>>(
            (bf16 *)out_b, out_f, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, T, NH, NKV, window, scale);
        return ar_cuda_check_launch("flash attention forward (mma-atomic)");
    }
    static bool ready2;
    if (allow_smem_max(k_fwd2<D, 4>, sm, &ready2)) return -1;
    k_fwd2<D, 4><<<dim3(NH * B, nT), MTHREADS, sm, g_cu.st>>>((bf16 *)out_b, out_f, lse, (const bf16 *)q,
                                                              (const bf16 *)k, (const bf16 *)v, T, NH, NKV, window, scale);
    return ar_cuda_check_launch("flash attention forward (mma)");
}

template <int D>
int bwd_launch(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow, const float *lse,
               const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int NH, int NKV, int window,
               int accumulate, int version)
{
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB;
    const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v, *dd = (const bf16 *)dob;
    if (version == 1) {
        static bool ready_kv, ready_q;
        size_t s1 = tiles_smem<D>(4) + 2 * MB * sizeof(float), s2 = tiles_smem<D>(4);
        if (allow_smem(k_bwd_kv<D>, s1, &ready_kv) || allow_smem(k_bwd_q<D>, s2, &ready_q)) return -1;
        k_bwd_kv<D><<<dim3(nT, NKV, B), MTHREADS, s1, g_cu.st>>>(dk, dv, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window,
                                                                 scale, accumulate);
        k_bwd_q<D><<<dim3(nT, NH, B), MTHREADS, s2, g_cu.st>>>(dq, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window, scale,
                                                               accumulate);
        return ar_cuda_check_launch("flash attention backward (mma1)");
    }
    /* K, V, two Q, two dO, two lse and D rows (fused: and dSᵀ); Q, dO, two K, two V */
    size_t s1 = tiles_smem<D>(6) + 4 * MB * sizeof(float), s2 = tiles_smem<D>(6), s3 = s1 + MB * LDT * sizeof(bf16);
    dim3 gkv(NKV * B, nT), gq(NH * B, nT);
    if (version == 3) {
        static bool ready3;
        if (allow_smem_max(k_bwd_kv2<D, true>, s3, &ready3)) return -1;
        if (!accumulate) AR_CK(cudaMemsetAsync(dq, 0, sizeof(float) * (size_t)B * T * NH * D, g_cu.st));
        k_bwd_kv2<D, true><<<gkv, MTHREADS, s3, g_cu.st>>>(dk, dv, dq, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window,
                                                           scale, accumulate);
        return ar_cuda_check_launch("flash attention backward (mma-atomic)");
    }
    static bool ready_kv2, ready_q2;
    if (allow_smem_max(k_bwd_kv2<D, false>, s1, &ready_kv2) || allow_smem_max(k_bwd_q2<D>, s2, &ready_q2)) return -1;
    k_bwd_kv2<D, false><<<gkv, MTHREADS, s1, g_cu.st>>>(dk, dv, NULL, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window,
                                                        scale, accumulate);
    k_bwd_q2<D><<<gq, MTHREADS, s2, g_cu.st>>>(dq, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window, scale, accumulate);
    return ar_cuda_check_launch("flash attention backward (mma)");
}
} // namespace

int ar_cuda_flash_mma_forward(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                              const uint16_t *v, int B, int T, int NH, int NKV, int HD, int window, int version)
{
    switch (HD) {
    case 32: return fwd_launch<32>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window, version);
    case 64: return fwd_launch<64>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window, version);
    case 80: return fwd_launch<80>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window, version);
    case 96: return fwd_launch<96>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window, version);
    case 128: return fwd_launch<128>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window, version);
    default: return ar_cuda_fail("flash attention (mma): head_dim %d not supported", HD);
    }
}

int ar_cuda_flash_mma_backward(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow,
                               const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                               int NH, int NKV, int HD, int window, int accumulate, int version)
{
    switch (HD) {
    case 32: return bwd_launch<32>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate, version);
    case 64: return bwd_launch<64>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate, version);
    case 80: return bwd_launch<80>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate, version);
    case 96: return bwd_launch<96>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate, version);
    case 128: return bwd_launch<128>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate, version);
    default: return ar_cuda_fail("flash attention (mma): head_dim %d not supported", HD);
    }
}
