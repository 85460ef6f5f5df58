/* flash_attention.cu — causal (sliding-window, grouped-query) flash attention
 * on bf16 tensor cores: every kernel generation measured on the way to the
 * product's kernels/flash_mma.cu, a CPU reference and a benchmark, in the
 * manner of llm.c's dev/cuda. Not linked into the tools.
 *
 *   make dev-cuda            (or: nvcc -O2 -std=c++17 -fmad=false -arch=sm_90
 *                             dev/cuda/flash_attention.cu -o flash_attention)
 *   flash_attention [--check] [--bench] [KIND...]
 *
 * KIND is a number or a name below (default: all); --check (default with
 * --bench) runs each kind's forward and backward against the CPU reference
 * in double on bf16-rounded q, k, v over ten shapes (odd T, GQA, windows
 * shorter than and spanning tiles, head_dim 32-128; 2e-2 forward, 5e-2
 * backward, 1e-3 lse) and the exact agreements each design promises with
 * mma-v2 (the shared arithmetic: forward out and lse, dK, dV, and dq where it
 * is summed in the same order); the dS-storing backwards also run the last
 * two shapes with a scratch budget of one (sequence, kv head) pair, so their
 * launches run in chunks. --bench times each kind at B 8, T 2048, 32 heads,
 * head_dim 128, causal (forward as the training forward calls it, with bf16
 * and f32 outputs; backward including its dO preparation; 5 runs after a
 * warm-up) and prints the fastest deterministic pair.
 *
 *   KIND           forward / backward (the versions of the mma kernels below)      H200, session 3
 *   1 wmma         wmma fragments, S and O through shared memory / two kernels     fwd 8.73 ms, bwd 24.4 ms
 *   2 mma1         mma.sync, S, P, O in registers, synchronous tiles / 1           fwd 3.21, bwd 7.78
 *   3 mma-v2       2: 64-query tiles, cp.async double buffering / 2: dK/dV + dQ    fwd 1.54, bwd 4.59
 *   4 mma-atomic   3: 128-query tiles, 8 warps / 3: one kernel, dQ by f32 atomics  fwd 1.47, bwd 4.53
 *   5 mma-l2       5: forward 2 in the L2-friendly block order / 6: the same       fwd 1.54, bwd 4.82
 *   6 mma-ds       5 / 4: dS stored once (bf16 scratch), dQ from it                fwd 1.60, bwd 3.59
 *   7 mma-ds-ilv   5 / 5: 4 with the dK/dV products interleaved in pairs           fwd 1.57, bwd 3.60
 *   8 mma-m128     4: 128-query tiles, 4 warps of 32 rows / 6                      fwd 1.23, bwd 4.89
 *   9 mma-m128-ds  4 / 7: 5 with 32 query rows per warp in the dQ kernel           fwd 1.33, bwd 3.45
 *
 * 9 is the product's pair (kernels/flash_mma.cu keeps forward 4 and backward
 * 7 alone, as k_fwd, k_bwd_kv and k_bwd_dq); 4 is not bit-reproducible.
 * Timings: the product's `cuda_check --attn-bench --fast` when these were
 * its AR_CUDA_FLASH kinds, H200, session 3 (docs/gpu-results.md); the cuBLAS
 * bound of the same causal products is fwd 0.63 ms, bwd 1.52 ms.
 * dev/cuda/flash_mma_model.py replays the mma kernels' index arithmetic lane
 * by lane on the CPU. */
#include "common.h"
#include <mma.h>

/* ==== version "wmma": the first design (kernels/flash.cu until session 3) ==============
 * Forward: one thread block per (64-query tile, head, sequence), four warps
 * of 16 query rows each. For every visible 64-key tile: S = scale·Q Kᵀ on
 * the bf16 tensor cores (wmma, f32 accumulation), an online softmax per row
 * (running max m and sum l; the partial output O, kept in shared memory in
 * f32, is rescaled by exp(m_old − m_new)), then O += P V with P rounded to
 * bf16. Only lse = m + log(l) per row is saved for the backward.
 *
 * Backward: P is recomputed tile by tile from Q, K and lse; with
 * D_i = Σ_d dO_id·O_id (= Σ_j P_ij dP_ij), dS = P ⊙ (dP − D)·scale. Two
 * kernels, so that every output element has exactly one writer (no atomics,
 * deterministic): one per key tile accumulating dK = dSᵀ Q and dV = Pᵀ dO over
 * the query tiles (and the query heads sharing the kv head), one per query
 * tile accumulating dQ = dS K over the key tiles.
 *
 * All tiles live in shared memory with padded rows; warps only touch their
 * own 16 rows of S, P and O, so within a tile they synchronize with
 * __syncwarp, and the block synchronizes only around tile loads. */
namespace wmma_kernels {
using namespace nvcuda;
typedef __nv_bfloat16 bf16;

enum { FB = 64, FW = 4, FTHREADS = 32 * FW }; /* tile rows, warps, threads */
enum { LDS = FB + 4, LDP = FB + 8 };          /* f32 and bf16 pitches of 64-wide tiles */

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_bt;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

/* Shared-memory carving: regions rounded to 128 bytes (wmma wants 32). */
struct smem_cursor {
    char *p;
    template <typename T> __device__ T *take(size_t n)
    {
        T *r = (T *)p;
        p += (n * sizeof(T) + 127) & ~(size_t)127;
        return r;
    }
};

static size_t round128(size_t n) { return (n + 127) & ~(size_t)127; }

__device__ static bool visible(int q, int k, int T, int window)
{
    return q < T && k < T && k <= q && (window <= 0 || q - k < window);
}

__device__ static float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ static float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Rows [t0, t0 + 64) of one head of x [B, T, H, D] (bf16) into a tile of
 * pitch D + 8; rows at or past T become zeros. 16-byte vector copies. */
template <int D>
__device__ static void load_tile(bf16 *tile, const bf16 *x, int b, int t0, int T, int H, int h)
{
    const int ch = D / 8, LDH = D + 8;
    for (int c = threadIdx.x; c < FB * ch; c += blockDim.x) {
        int r = c / ch, d = (c % ch) * 8, t = t0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t < T) v = *(const uint4 *)(x + (((long)b * T + t) * H + h) * D + d);
        *(uint4 *)(tile + r * LDH + d) = v;
    }
}

/* Warp w's rows of S [64, 64] (f32, pitch LDS) = A_w · Bᵀ where A and B are
 * 64 x D bf16 tiles (pitch D + 8): A's rows 16w.., all of B's rows. */
template <int D>
__device__ static void tile_abt(float *S, const bf16 *A, const bf16 *B, int w)
{
    const int LDH = D + 8;
    frag_a a[D / 16];
#pragma unroll
    for (int d = 0; d < D / 16; d++) wmma::load_matrix_sync(a[d], A + 16 * w * LDH + 16 * d, LDH);
#pragma unroll
    for (int kc = 0; kc < FB / 16; kc++) {
        frag_c acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int d = 0; d < D / 16; d++) {
            frag_bt bt;
            wmma::load_matrix_sync(bt, B + 16 * kc * LDH + 16 * d, LDH);
            wmma::mma_sync(acc, a[d], bt, acc);
        }
        wmma::store_matrix_sync(S + 16 * w * LDS + 16 * kc, acc, LDS, wmma::mem_row_major);
    }
}

/* acc[c] += P_w · X (P: 64 x 64 bf16 pitch LDP, warp rows 16w..; X: 64 x D
 * bf16 pitch D + 8), one accumulator per 16 output columns. */
template <int D>
__device__ static void tile_pv(frag_c *acc, const bf16 *P, const bf16 *X, int w)
{
    const int LDH = D + 8;
    frag_a a[FB / 16];
#pragma unroll
    for (int kk = 0; kk < FB / 16; kk++) wmma::load_matrix_sync(a[kk], P + 16 * w * LDP + 16 * kk, LDP);
#pragma unroll
    for (int c = 0; c < D / 16; c++)
#pragma unroll
        for (int kk = 0; kk < FB / 16; kk++) {
            frag_b bm;
            wmma::load_matrix_sync(bm, X + 16 * kk * LDH + 16 * c, LDH);
            wmma::mma_sync(acc[c], a[kk], bm, acc[c]);
        }
}

/* Add accumulator tiles acc[D/16] (warp w's 16 rows) into rows t0 + 16w + r
 * < T of y [B, T, H, D] (f32) at head h, through the warp's 16 rows of the
 * f32 scratch (pitch LDS). Each element has one writer: a plain +=. */
template <int D>
__device__ static void add_rows(float *y, frag_c *acc, float *scratch, int b, int t0, int T, int H, int h, int w)
{
    int lane = threadIdx.x & 31;
    float *s = scratch + 16 * w * LDS;
#pragma unroll
    for (int c = 0; c < D / 16; c++) {
        wmma::store_matrix_sync(s, acc[c], LDS, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            int r = e >> 4, cc = e & 15, t = t0 + 16 * w + r;
            if (t < T) y[(((long)b * T + t) * H + h) * D + 16 * c + cc] += s[r * LDS + cc];
        }
        __syncwarp();
    }
}

/* ---- forward ---------------------------------------------------------------- */

template <int D> static size_t fwd_smem(void)
{
    return 3 * round128(sizeof(bf16) * FB * (D + 8)) + round128(sizeof(float) * FB * LDS) +
           round128(sizeof(bf16) * FB * LDP) + round128(sizeof(float) * FB * (D + 4)) + 2 * round128(sizeof(float) * FB);
}

template <int D>
__global__ void __launch_bounds__(FTHREADS) k_flash_fwd(bf16 *out_b, float *out_f, float *lse, const bf16 *q,
                                                        const bf16 *k, const bf16 *v, int T, int NH, int NKV,
                                                        int window, float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int LDO = D + 4, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nT = (T + FB - 1) / FB, i = nT - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV), q0 = i * FB;
    smem_cursor cur = {smem};
    bf16 *Qs = cur.take<bf16>(FB * (D + 8)), *Ks = cur.take<bf16>(FB * (D + 8)), *Vs = cur.take<bf16>(FB * (D + 8));
    float *Ss = cur.take<float>(FB * LDS);
    bf16 *Ps = cur.take<bf16>(FB * LDP);
    float *Os = cur.take<float>(FB * LDO), *ms = cur.take<float>(FB), *ls = cur.take<float>(FB);

    load_tile<D>(Qs, q, b, q0, T, NH, h);
    for (int e = threadIdx.x; e < FB * LDO; e += blockDim.x) Os[e] = 0.0f;
    if (threadIdx.x < FB) ms[threadIdx.x] = -INFINITY, ls[threadIdx.x] = 0.0f;
    int j0 = window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / FB : 0;
    for (int j = j0; j <= i; j++) {
        int k0 = j * FB;
        __syncthreads(); /* every warp is done with the previous K, V */
        load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
        load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
        __syncthreads();
        tile_abt<D>(Ss, Qs, Ks, w);
        __syncwarp();
        for (int rr = 0; rr < 16; rr++) {
            int row = 16 * w + rr, qi = q0 + row, c0 = lane, c1 = lane + 32;
            bool v0 = visible(qi, k0 + c0, T, window), v1 = visible(qi, k0 + c1, T, window);
            float a0 = v0 ? Ss[row * LDS + c0] * scale : -INFINITY;
            float a1 = v1 ? Ss[row * LDS + c1] * scale : -INFINITY;
            float m_old = ms[row], m_new = fmaxf(m_old, warp_max(fmaxf(a0, a1)));
            float p0 = v0 ? expf(a0 - m_new) : 0.0f, p1 = v1 ? expf(a1 - m_new) : 0.0f;
            float rs = warp_sum(p0 + p1);
            float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            Ps[row * LDP + c0] = __float2bfloat16_rn(p0);
            Ps[row * LDP + c1] = __float2bfloat16_rn(p1);
            for (int d = lane; d < D; d += 32) Os[row * LDO + d] *= alpha;
            __syncwarp();
            if (lane == 0) ms[row] = m_new, ls[row] = ls[row] * alpha + rs;
            __syncwarp();
        }
        frag_c acc[D / 16];
#pragma unroll
        for (int c = 0; c < D / 16; c++) wmma::load_matrix_sync(acc[c], Os + 16 * w * LDO + 16 * c, LDO, wmma::mem_row_major);
        tile_pv<D>(acc, Ps, Vs, w);
#pragma unroll
        for (int c = 0; c < D / 16; c++) wmma::store_matrix_sync(Os + 16 * w * LDO + 16 * c, acc[c], LDO, wmma::mem_row_major);
        __syncwarp();
    }
    for (int rr = 0; rr < 16; rr++) {
        int row = 16 * w + rr, qi = q0 + row;
        if (qi >= T) break;
        float inv = 1.0f / ls[row];
        long o = (((long)b * T + qi) * NH + h) * D;
        for (int d = lane; d < D; d += 32) {
            float x = Os[row * LDO + d] * inv;
            if (out_f) out_f[o + d] = x;
            if (out_b) out_b[o + d] = __float2bfloat16_rn(x);
        }
        if (lane == 0) lse[((long)b * NH + h) * T + qi] = ms[row] + logf(ls[row]);
    }
}

template <int D> static size_t bkv_smem(void)
{
    return 4 * round128(sizeof(bf16) * FB * (D + 8)) + 2 * round128(sizeof(float) * FB * LDS) +
           2 * round128(sizeof(bf16) * FB * LDP) + 2 * round128(sizeof(float) * FB);
}

/* dK, dV of one 64-key tile of kv head kvh: warps own 16 key rows; the loop
 * runs over the query heads of the group and the query tiles that see the
 * keys. Transposed tiles: St[key][query]. */
template <int D>
__global__ void __launch_bounds__(FTHREADS) k_flash_bwd_kv(float *dk, float *dv, const bf16 *q, const bf16 *k,
                                                           const bf16 *v, const bf16 *dob, const float *lse,
                                                           const float *Drow, int T, int NH, int NKV, int window,
                                                           float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, group = NH / NKV;
    const int nT = (T + FB - 1) / FB, j = nT - 1 - blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, k0 = j * FB;
    smem_cursor cur = {smem};
    bf16 *Ks = cur.take<bf16>(FB * (D + 8)), *Vs = cur.take<bf16>(FB * (D + 8));
    bf16 *Qs = cur.take<bf16>(FB * (D + 8)), *dOs = cur.take<bf16>(FB * (D + 8));
    float *St = cur.take<float>(FB * LDS), *dPt = cur.take<float>(FB * LDS);
    bf16 *Pt = cur.take<bf16>(FB * LDP), *dSt = cur.take<bf16>(FB * LDP);
    float *Ls = cur.take<float>(FB), *Ds = cur.take<float>(FB);

    load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
    load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
    frag_c dK[D / 16], dV[D / 16];
#pragma unroll
    for (int c = 0; c < D / 16; c++) wmma::fill_fragment(dK[c], 0.0f), wmma::fill_fragment(dV[c], 0.0f);
    for (int r = 0; r < group; r++) {
        int h = kvh * group + r;
        for (int i = j; i < nT; i++) {
            int q0 = i * FB;
            if (window > 0 && q0 - window >= k0 + FB - 1) break; /* every later query is out of the window */
            __syncthreads(); /* previous Q, dO, lse, D no longer read */
            load_tile<D>(Qs, q, b, q0, T, NH, h);
            load_tile<D>(dOs, dob, b, q0, T, NH, h);
            if (threadIdx.x < FB) {
                int t = q0 + threadIdx.x;
                long o = ((long)b * NH + h) * T + t;
                Ls[threadIdx.x] = t < T ? lse[o] : 0.0f;
                Ds[threadIdx.x] = t < T ? Drow[o] : 0.0f;
            }
            __syncthreads();
            tile_abt<D>(St, Ks, Qs, w);  /* Sᵀ rows: this warp's keys */
            tile_abt<D>(dPt, Vs, dOs, w); /* dPᵀ = V dOᵀ */
            __syncwarp();
            for (int rr = 0; rr < 16; rr++) {
                int row = 16 * w + rr, key = k0 + row;
                for (int c = lane; c < FB; c += 32) {
                    int qi = q0 + c;
                    float p = visible(qi, key, T, window) ? expf(St[row * LDS + c] * scale - Ls[c]) : 0.0f;
                    float ds = p * (dPt[row * LDS + c] - Ds[c]) * scale;
                    Pt[row * LDP + c] = __float2bfloat16_rn(p);
                    dSt[row * LDP + c] = __float2bfloat16_rn(ds);
                }
            }
            __syncwarp();
            tile_pv<D>(dV, Pt, dOs, w); /* dV += Pᵀ dO */
            tile_pv<D>(dK, dSt, Qs, w); /* dK += dSᵀ Q */
        }
    }
    __syncthreads();
    add_rows<D>(dk, dK, St, b, k0, T, NKV, kvh, w);
    add_rows<D>(dv, dV, St, b, k0, T, NKV, kvh, w);
}

template <int D> static size_t bq_smem(void)
{
    return 4 * round128(sizeof(bf16) * FB * (D + 8)) + 2 * round128(sizeof(float) * FB * LDS) +
           round128(sizeof(bf16) * FB * LDP) + 2 * round128(sizeof(float) * FB);
}

/* dQ of one 64-query tile of head h: the loop runs over the visible key tiles. */
template <int D>
__global__ void __launch_bounds__(FTHREADS) k_flash_bwd_q(float *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                                          const bf16 *dob, const float *lse, const float *Drow, int T,
                                                          int NH, int NKV, int window, float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nT = (T + FB - 1) / FB, i = nT - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV), q0 = i * FB;
    smem_cursor cur = {smem};
    bf16 *Qs = cur.take<bf16>(FB * (D + 8)), *dOs = cur.take<bf16>(FB * (D + 8));
    bf16 *Ks = cur.take<bf16>(FB * (D + 8)), *Vs = cur.take<bf16>(FB * (D + 8));
    float *Ss = cur.take<float>(FB * LDS), *dPs = cur.take<float>(FB * LDS);
    bf16 *dSs = cur.take<bf16>(FB * LDP);
    float *Ls = cur.take<float>(FB), *Ds = cur.take<float>(FB);

    load_tile<D>(Qs, q, b, q0, T, NH, h);
    load_tile<D>(dOs, dob, b, q0, T, NH, h);
    if (threadIdx.x < FB) {
        int t = q0 + threadIdx.x;
        long o = ((long)b * NH + h) * T + t;
        Ls[threadIdx.x] = t < T ? lse[o] : 0.0f;
        Ds[threadIdx.x] = t < T ? Drow[o] : 0.0f;
    }
    frag_c dQ[D / 16];
#pragma unroll
    for (int c = 0; c < D / 16; c++) wmma::fill_fragment(dQ[c], 0.0f);
    int j0 = window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / FB : 0;
    for (int j = j0; j <= i; j++) {
        int k0 = j * FB;
        __syncthreads();
        load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
        load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
        __syncthreads();
        tile_abt<D>(Ss, Qs, Ks, w);   /* S = Q Kᵀ */
        tile_abt<D>(dPs, dOs, Vs, w); /* dP = dO Vᵀ */
        __syncwarp();
        for (int rr = 0; rr < 16; rr++) {
            int row = 16 * w + rr, qi = q0 + row;
            for (int c = lane; c < FB; c += 32) {
                float p = visible(qi, k0 + c, T, window) ? expf(Ss[row * LDS + c] * scale - Ls[row]) : 0.0f;
                dSs[row * LDP + c] = __float2bfloat16_rn(p * (dPs[row * LDS + c] - Ds[row]) * scale);
            }
        }
        __syncwarp();
        tile_pv<D>(dQ, dSs, Ks, w); /* dQ += dS K */
    }
    __syncthreads();
    add_rows<D>(dq, dQ, Ss, b, q0, T, NH, h, w);
}

template <int D>
static int fwd_launch(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                      const uint16_t *v, int B, int T, int NH, int NKV, int window)
{
    size_t sm = fwd_smem<D>();
    AR_CK(cudaFuncSetAttribute(k_flash_fwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    dim3 grid((T + FB - 1) / FB, NH, B);
    k_flash_fwd<D><<<grid, FTHREADS, sm, g_cu.st>>>((bf16 *)out_b, out_f, lse, (const bf16 *)q, (const bf16 *)k,
                                                    (const bf16 *)v, T, NH, NKV, window, 1.0f / sqrtf((float)D));
    return ar_cuda_check_launch("flash attention forward");
}

template <int D>
static int bwd_launch(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow, const float *lse,
                      const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int NH, int NKV,
                      int window)
{
    float scale = 1.0f / sqrtf((float)D);
    dim3 gq((T + FB - 1) / FB, NH, B), gkv((T + FB - 1) / FB, NKV, B);
    size_t s1 = bkv_smem<D>(), s2 = bq_smem<D>();
    AR_CK(cudaFuncSetAttribute(k_flash_bwd_kv<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s1));
    AR_CK(cudaFuncSetAttribute(k_flash_bwd_q<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s2));
    k_flash_bwd_kv<D><<<gkv, FTHREADS, s1, g_cu.st>>>(dk, dv, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v,
                                                      (const bf16 *)dob, lse, Drow, T, NH, NKV, window, scale);
    k_flash_bwd_q<D><<<gq, FTHREADS, s2, g_cu.st>>>(dq, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v,
                                                    (const bf16 *)dob, lse, Drow, T, NH, NKV, window, scale);
    return ar_cuda_check_launch("flash attention backward");
}

} // namespace wmma_kernels

/* ==== shared: the backward's D rows and bf16 dO (kernels/flash.cu) ===================== */

__device__ static float warp_sum32(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Drow[b, h, t] = Σ_d dO·O (f32) and dO narrowed to bf16; one warp per row. */
__global__ void k_flash_prep(float *Drow, __nv_bfloat16 *dob, const float *dout, const float *out, int T, int NH, int HD,
                             long rows)
{
    int lane = threadIdx.x & 31;
    for (long r = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5; r < rows;
         r += ((long)gridDim.x * blockDim.x) >> 5) {
        const float *g = dout + r * HD, *o = out + r * HD;
        float s = 0.0f;
        for (int d = lane; d < HD; d += 32) {
            s += g[d] * o[d];
            dob[r * HD + d] = __float2bfloat16_rn(g[d]);
        }
        s = warp_sum32(s);
        long bt = r / NH;
        int h = (int)(r % NH), t = (int)(bt % T), b = (int)(bt / T);
        if (lane == 0) Drow[((long)b * NH + h) * T + t] = s;
    }
}

/* ==== the mma kernels (kernels/flash_mma.cu until the product kept forward 4 and
 * backward 7), as they were measured ====================================================

/* Flash attention with every tile product on raw
 * mma.sync.m16n8k16 bf16 tensor-core instructions and the scores,
 * probabilities and accumulators in registers (the first design on wmma,
 * with shared-memory round trips, is KIND wmma above). Same algorithm,
 * tiling, numerics and one-writer-per-output structure as that design:
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
 * Kernel generations, picked per direction by the version number the
 * entry points take (each KIND of this program maps to a forward and a
 * backward version):
 *   forward   1 k_fwd (mma1), 2 k_fwd2<4> (mma-v2: pipelined, 64-row tiles),
 *             3 k_fwd2<8> (128-row tiles, 8 warps of 16 rows),
 *             4 k_fwd3 (128-row tiles, 4 warps of 32 rows: see there),
 *             5 k_fwd2<4> in block_coords' L2-friendly block order;
 *   backward  1 k_bwd_kv + k_bwd_q (mma1), 2 k_bwd_kv2 + k_bwd_q2 (mma-v2),
 *             3 k_bwd_kv2 fused with f32-atomic dQ (mma-atomic),
 *             4 k_bwd_kv2 storing dS + k_bwd_dq (deterministic, no
 *             recomputation of S and dP for dQ: see there), 5 the same
 *             with k_bwd_kv2's products interleaved in pairs (KV_ILV),
 *             6 version 2 in the L2-friendly block order, 7 version 5
 *             with k_bwd_dq2 (32 query rows per warp) for dQ.
 * Forward 4 and backward 4, 5 use the L2-friendly order too.
 * Versions 2-4 of each direction compute every output element with the
 * same operations in the same order (forward 4 = forward 2; backward 4's dK,
 * dV = backward 2's), except for the summation orders named where they differ.
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4g + t holds
 * A rows g and g + 8, columns 2t, 2t+1 (+8); B (k x n) rows 2t, 2t+1 (+8) of
 * column g; C rows g and g + 8, columns 2t, 2t+1. Operands come from
 * shared-memory tiles (rows padded by 8 bf16: conflict-free) through
 * ldmatrix, .trans where the tile is stored k-major. */
namespace {
typedef __nv_bfloat16 bf16;

enum { MB = 64, MW = 4, MTHREADS = 32 * MW }; /* tile rows, warps, threads */

/* ---- tensor-core primitives ------------------------------------------------------ */

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

/* A operand of the 16 x 16 block at (rows r0, columns c0) of Xᵀ, where X is
 * stored k-major X[k][m] (pitch ld): the fused backward's dS from the dSᵀ
 * tile. Matrices 0..3: (k lo, m lo), (k lo, m hi), (k hi, m lo), (k hi, m hi). */
__device__ __forceinline__ void load_a_t(unsigned a[4], const bf16 *X, int ld, int r0, int c0, int lane)
{
    ldsm_t(a, X + (c0 + (lane & 7) + ((lane >> 4) << 3)) * ld + r0 + (((lane >> 3) & 1) << 3));
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

template <int N> __device__ __forceinline__ void zero_acc(float acc[N][4])
{
#pragma unroll
    for (int n = 0; n < N; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

/* acc[8][4] (16 rows x 64 columns) = A (16 rows of X from row r0, D deep) ·
 * Yᵀ where Y is a 64 x D tile stored n-major: S = Q Kᵀ and its relatives. */
template <int D>
__device__ __forceinline__ void rows_times_tile_t(float acc[8][4], const bf16 *X, int r0, const bf16 *Y, int lane)
{
    const int LD = D + 8;
    zero_acc<8>(acc);
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

/* acc[8][4] (16 rows x 64 columns) = Qf · Yᵀ with the A operand already in
 * registers (qf[kk]: k-step kk of the warp's 16 rows) and Y a 64 x D tile
 * stored n-major: S = Q Kᵀ of the forward. */
template <int D>
__device__ __forceinline__ void frags_times_tile_t(float acc[8][4], const unsigned qf[D / 16][4], const bf16 *Y,
                                                   int lane)
{
    const int LD = D + 8;
    zero_acc<8>(acc);
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

/* Two independent rows_times_tile_t products in one loop (a1 = X1 rows r0 ·
 * Y1ᵀ, a2 = X2 rows r0 · Y2ᵀ): the same mma sequence per accumulator, so the
 * same results, with 16 independent accumulation chains per k-step instead
 * of 8 for the tensor pipe to overlap (the backward's Sᵀ and dPᵀ). */
template <int D>
__device__ __forceinline__ void rows_times_tiles_t2(float a1[8][4], const bf16 *X1, const bf16 *Y1, float a2[8][4],
                                                    const bf16 *X2, const bf16 *Y2, int r0, int lane)
{
    const int LD = D + 8;
    zero_acc<8>(a1);
    zero_acc<8>(a2);
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        unsigned x1[4], x2[4];
        load_a(x1, X1, LD, r0, 16 * kk, lane);
        load_a(x2, X2, LD, r0, 16 * kk, lane);
#pragma unroll
        for (int np = 0; np < 4; np++) {
            unsigned b1[4], b2[4];
            load_b_nk(b1, Y1, LD, 16 * np, 16 * kk, lane);
            load_b_nk(b2, Y2, LD, 16 * np, 16 * kk, lane);
            mma16816(a1[2 * np], x1, b1[0], b1[1]);
            mma16816(a1[2 * np + 1], x1, b1[2], b1[3]);
            mma16816(a2[2 * np], x2, b2[0], b2[1]);
            mma16816(a2[2 * np + 1], x2, b2[2], b2[3]);
        }
    }
}

/* Two independent acc_times_tile products in one loop (o1 += P1 · Y1, o2 +=
 * P2 · Y2): per accumulator the same mma sequence (the backward's dV and
 * dK), 32 independent chains per k-step. */
template <int D>
__device__ __forceinline__ void acc_times_tiles2(float o1[D / 8][4], const float p1[8][4], const bf16 *Y1,
                                                 float o2[D / 8][4], const float p2[8][4], const bf16 *Y2, int lane)
{
    const int LD = D + 8;
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        unsigned x1[4], x2[4];
        acc_to_a(x1, p1[2 * kk], p1[2 * kk + 1]);
        acc_to_a(x2, p2[2 * kk], p2[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            unsigned b1[4], b2[4];
            load_b_kn(b1, Y1, LD, 16 * kk, 16 * dp, lane);
            load_b_kn(b2, Y2, LD, 16 * kk, 16 * dp, lane);
            mma16816(o1[2 * dp], x1, b1[0], b1[1]);
            mma16816(o1[2 * dp + 1], x1, b1[2], b1[3]);
            mma16816(o2[2 * dp], x2, b2[0], b2[1]);
            mma16816(o2[2 * dp + 1], x2, b2[2], b2[3]);
        }
    }
}

/* ---- masks, exponentials, reductions ----------------------------------------------- */

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

/* First key tile a query tile at q0 sees (0, or the window's start). */
__device__ __forceinline__ int first_key_tile(int q0, int window)
{
    return window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / MB : 0;
}

/* One past the last query tile that sees the key tile at k0 (a window ends
 * the band: the first i with i·64 − window ≥ k0 + 63 sees none of it). Every
 * (query tile i, key tile j) with first_key_tile(64i) <= j <= i has
 * i < end_query_tile(64j): the dK/dV kernel visits every tile the dQ
 * kernels do (backward 4 relies on it: its dQ kernel reads the dS tiles the
 * dK/dV kernel wrote). */
__device__ __forceinline__ int end_query_tile(int k0, int nT, int window)
{
    if (window <= 0) return nT;
    int e = (k0 + MB - 1 + window + MB - 1) / MB;
    return e < nT ? e : nT;
}

/* The (pair, tile) coordinates of this block: pair = a head or a (sequence,
 * kv head) pair, y = the tile index (the kernel maps it to a tile, the one
 * with the most work first). L2 = false: a grid of x = pairs by y = tiles.
 * The hardware starts blocks x fastest, so the ~2 blocks per SM in flight
 * are one tile index of ~all pairs, and each pair's K/V (forward, dQ) or
 * Q/dO (dK/dV) tiles, read again by its next tile's block a wave later, have
 * left the 50 MB L2 by then (256 pairs x 1 MB at B 8, T 2048, 32 heads, head
 * dim 128): every block fetches its operand tiles from DRAM, 4.3 GB per
 * forward with 64-row tiles. L2 = true: a grid of x = tiles by y, z = pairs
 * (pair = y + gridDim.y·z), so the blocks in flight are all tiles of a few
 * pairs and read each operand tile from DRAM about once. Which block
 * computes what is unchanged: same results. (Both read only blockIdx and
 * gridDim, which the compiler can re-read instead of keeping in registers.) */
template <bool L2> __device__ __forceinline__ void block_coords(unsigned &pair, unsigned &y)
{
    if (L2) pair = blockIdx.y + gridDim.y * blockIdx.z, y = blockIdx.x;
    else pair = blockIdx.x, y = blockIdx.y;
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

/* ---- global <-> shared / registers ---------------------------------------------------- */

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
 * [B, T, H, D] into a tile of pitch D + 8, rows at or past T zero-filled.
 * (A version with the thread count as a template constant, an unrolled
 * loop and the index math folded into a base pointer and row stride made
 * ptxas give k_fwd2 26 and k_bwd_q2 24 more registers and k_bwd_kv2 spills:
 * not taken without a GPU to measure it.) */
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

/* A 64 x 64 bf16 tile stored contiguously (8 KB: backward 4's dS tiles)
 * through cp.async by a block of MTHREADS threads. */
__device__ __forceinline__ void load_flat_tile_async(bf16 *dst, const bf16 *src)
{
#pragma unroll
    for (int u = 0; u < MB * MB / 8 / MTHREADS; u++) {
        int c = (threadIdx.x + u * MTHREADS) * 8;
        cp_async16(dst + c, src + c, true);
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

/* lse (in log2 units) and D of this lane's query rows row0, row0 + 8 (past
 * T: zeros): the dQ kernels keep them in registers. */
__device__ __forceinline__ void load_row_stats(float L[2], float Dd[2], const float *lse, const float *Drow, int b,
                                               int row0, int T, int NH, int h)
{
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int r = row0 + 8 * hh;
        long o = ((long)b * NH + h) * T + r;
        L[hh] = r < T ? lse[o] * AR_LOG2E : 0.0f; /* log2 units */
        Dd[hh] = r < T ? Drow[o] : 0.0f;
    }
}

/* ---- forward pieces ----------------------------------------------------------------- */

/* The forward's output rows of one 16-row unit: this lane's rows row0 and
 * row0 + 8 (< T) of out [B, T, NH, D] = o / l (f32 and/or bf16), lse = m·ln 2
 * + log l (m in log2 units; l a per-lane partial sum, completed here over the
 * quad: every term was scaled alike). */
template <int D>
__device__ __forceinline__ void store_out_rows(bf16 *out_b, float *out_f, float *lse, const float o[D / 8][4],
                                               const float m[2], const float l[2], int b, int row0, int T, int NH,
                                               int h, int t)
{
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        float lt = quad_sum(l[hh]); /* every lane: a shuffle */
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

/* One key tile of the version 2+ forward's online softmax for 16 query rows
 * qa .. qa + 15 (this lane's: row0 = qa + g and row0 + 8): s holds their raw
 * scores Q Kᵀ against keys k0 .. k0 + 63 and leaves as the unnormalized
 * probabilities 2^(s·scale2 − m); the running maximum m (log2 units) and the
 * per-lane partial sums l are updated and the output rows o rescaled. The
 * row maximum is taken on the raw scores (scale2 > 0), so a probability
 * costs one FFMA and one EX2. A tile none of whose keys a row sees leaves
 * that row's m, l and o unchanged bit for bit (alpha = 1 or o = 0, p = 0). */
template <int D>
__device__ __forceinline__ void softmax_tile(float s[8][4], float o[D / 8][4], float m[2], float l[2], int qa,
                                             int row0, int k0, int t, int T, int window, float scale2)
{
    float mx[2] = {-INFINITY, -INFINITY};
    /* the 16 rows see every key of the tile: no masking */
    if (k0 + MB - 1 <= qa && qa + 16 <= T && (window <= 0 || qa + 15 - k0 < window)) {
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
}

/* ---- backward pieces ------------------------------------------------------------------ */

/* Pᵀ in the dK/dV kernels: p holds Sᵀ (raw scores) of this lane's keys key0,
 * key0 + 8 against queries q0 + 8n + 2t + (e & 1) and leaves as the
 * probabilities 2^(s·scale2 − L·lmul) (0 where not visible); L: the query
 * tile's lse rows, times lmul in log2 units (version 1 stores them scaled:
 * lmul = 1, exact). */
__device__ __forceinline__ void kv_probs(float p[8][4], const float *L, float lmul, bool full, int q0, int key0,
                                         int t, int T, int window, float scale2)
{
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int c = 8 * n + 2 * t + (e & 1);
            p[n][e] = full || visible(q0 + c, key0 + 8 * (e >> 1), T, window)
                          ? ex2(__fmaf_rn(p[n][e], scale2, -(L[c] * lmul)))
                          : 0.0f;
        }
}

/* dSᵀ = Pᵀ ⊙ (dPᵀ − D)·scale in place of dPᵀ (dp), D per query column. */
__device__ __forceinline__ void kv_dst(float dp[8][4], const float p[8][4], const float *Dv, int t, float scale)
{
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dp[n][e] = p[n][e] * (dp[n][e] - Dv[8 * n + 2 * t + (e & 1)]) * scale;
}

/* dS in the dQ kernels: from S (p) and dP (dp) of this lane's query rows
 * row0, row0 + 8 against keys k0.., with the rows' lse L (log2 units) and D,
 * in place of dp. */
__device__ __forceinline__ void q_ds(float dp[8][4], const float p[8][4], const float L[2], const float Dd[2],
                                     bool full, int row0, int k0, int t, int T, int window, float scale2, float scale)
{
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int hh = e >> 1, key = k0 + 8 * n + 2 * t + (e & 1);
            float pv = full || visible(row0 + 8 * hh, key, T, window) ? ex2(__fmaf_rn(p[n][e], scale2, -L[hh])) : 0.0f;
            dp[n][e] = pv * (dp[n][e] - Dd[hh]) * scale;
        }
}

/* ---- version 1: the first mma kernels (KIND mma1) ------------------------------------------- */

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
    zero_acc<D / 8>(o);
    for (int j = first_key_tile(q0, window); j <= i; j++) {
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
    store_out_rows<D>(out_b, out_f, lse, o, m, l, b, row0, T, NH, h, t);
}

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
    zero_acc<D / 8>(dK);
    zero_acc<D / 8>(dV);
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
            kv_probs(p, Ls, 1.0f, tile_visible(q0, k0, T, window), q0, key0, t, T, window, scale2);
            acc_times_tile<D>(dV, p, dOs, lane);            /* dV += Pᵀ dO */
            rows_times_tile_t<D>(dp, Vs, 16 * w, dOs, lane); /* dPᵀ = V dOᵀ */
            kv_dst(dp, p, Ds, t, scale);
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
    load_row_stats(L, Dd, lse, Drow, b, row0, T, NH, h);
    float dQ[D / 8][4];
    zero_acc<D / 8>(dQ);
    for (int j = first_key_tile(q0, window); j <= i; j++) {
        int k0 = j * MB;
        __syncthreads();
        load_tile<D>(Ks, k, b, k0, T, NKV, kvh);
        load_tile<D>(Vs, v, b, k0, T, NKV, kvh);
        __syncthreads();
        float p[8][4], dp[8][4];
        rows_times_tile_t<D>(p, Qs, 16 * w, Ks, lane);  /* S = Q Kᵀ */
        rows_times_tile_t<D>(dp, dOs, 16 * w, Vs, lane); /* dP = dO Vᵀ */
        q_ds(dp, p, L, Dd, tile_visible(q0, k0, T, window), row0, k0, t, T, window, scale2, scale);
        acc_times_tile<D>(dQ, dp, Ks, lane); /* dQ += dS K */
    }
    add_acc_rows<D>(dq, dQ, b, q0 + 16 * w, T, NH, h, lane, accumulate);
}

/* ---- version 2: pipelined tiles ----------------------------------------------------
 * The same tiles, fragments and arithmetic as above (the mma1 kernels,
 * KIND mma1), restructured around what limited them: every tile
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

/* Forward on query tiles of 16·NW rows (NW warps of 16 rows; NW = 4: the
 * 64-row tiles of mma-v2, 8: 128-row tiles, mma-atomic,
 * half the K/V traffic per flop) over 64-key tiles. Shared memory: K0 V0 K1 V1
 * (buffer c = K at 2c, V at 2c + 1); Q is staged in buffer 1 until every
 * warp holds its fragments. A warp whose rows all precede a key tile skips
 * it (the causal diagonal of a 128-row tile spans two key tiles). */
template <int D, int NW, bool L2>
__global__ void __launch_bounds__(32 * NW, NW == 4 ? 2 : 1) k_fwd2(bf16 *out_b, float *out_f, float *lse, const bf16 *q,
                                                                   const bf16 *k, const bf16 *v, int T, int NH, int NKV,
                                                                   int window, float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, QR = 16 * NW, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2,
              t = lane & 3;
    unsigned bh, y;
    block_coords<L2>(bh, y);
    const int nQ = (T + QR - 1) / QR, i = nQ - 1 - y, h = bh % NH, b = bh / NH;
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
    zero_acc<D / 8>(o);
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
            softmax_tile<D>(s, o, m, l, qw, row0, k0, t, T, window, scale2);
            acc_times_tile<D>(o, s, Vs + 2 * cur * TS, lane);
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    store_out_rows<D>(out_b, out_f, lse, o, m, l, b, row0, T, NH, h, t);
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
        zero_acc<8>(acc);
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

/* ---- backward 4: dS stored once, dQ without recomputation ---------------------------
 * The deterministic backward 2 computes dS twice: the dK/dV kernel needs Sᵀ,
 * Pᵀ, dPᵀ and dSᵀ (4 tile products per step with dV and dK) and the dQ
 * kernel recomputes S and dP from Q, K, V, dO to get dS for dQ = dS K (3
 * products): 7 products where 5 are the work. Backward 4 has the dK/dV
 * kernel store each dS tile it computes (bf16: the values its dK product
 * rounds to anyway) in a scratch area, and a dQ kernel that only streams
 * dS tiles and K tiles through one product per step, in the same key-tile
 * order: one writer per dq element, deterministic, and dq the same sums of
 * the same bf16 products as backward 2's. The price is the scratch: one 8 KB
 * tile per (query head, query tile, key tile <= query tile), 1.1 GB at B 8,
 * T 2048, 32 heads (allocated once and kept; the launch splits into chunks of
 * (sequence, kv head) pairs when it exceeds the budget,
 * set_ds_budget).
 *
 * A dS tile is stored as 64 8x8 matrices of 128 bytes each: matrix kb·8 + n
 * holds dSᵀ rows (keys) 8kb .. 8kb + 7 by columns (queries) 8n .. 8n + 7,
 * row-major. In the dK/dV kernel's accumulator layout lane 4g + t holds
 * exactly row g, columns 2t, 2t + 1 of such a matrix, so each warp store of
 * a 32-bit pair fills one 128-byte line; in the dQ kernel, ldmatrix.trans
 * of four such matrices (128 contiguous bytes each: conflict-free) gives
 * the A operand of dS. */

/* k_bwd_kv2's MODE bits: what it does with dS besides dK (nothing, f32
 * atomics into dq, or store it for k_bwd_dq), and KV_ILV: its four products
 * as two interleaved pairs (Sᵀ with dPᵀ, then dV with dK; same results);
 * KV_L2: block_coords' L2-friendly order. */
enum { KV_PLAIN = 0, KV_ATOMIC_DQ = 1, KV_STORE_DS = 2, KV_ILV = 4, KV_L2 = 8 };
enum { DS_TILE = MB * MB }; /* bf16 elements of a stored dS tile */

/* Offset (in bf16) of the stored dS tile (query tile i, key tile j <= i) of
 * chunk-local query head lh; ntri = nT(nT + 1)/2 tiles per head. */
__device__ __forceinline__ size_t ds_tile_at(int lh, long ntri, int i, int j)
{
    return ((size_t)lh * ntri + (size_t)i * (i + 1) / 2 + j) * DS_TILE;
}

/* The warp's 16 rows (keys 16w ..) of dSᵀ, rounded to bf16 as acc_to_a
 * rounds them for dK, into a stored dS tile (layout above). Streaming
 * stores: the tile is read once, by another kernel, after 1 GB of others. */
__device__ __forceinline__ void store_ds_tile(bf16 *tile, const float ds[8][4], int w, int lane)
{
#pragma unroll
    for (int hh = 0; hh < 2; hh++)
#pragma unroll
        for (int n = 0; n < 8; n++)
            __stcs((unsigned *)(tile + ((2 * w + hh) * 8 + n) * 64 + 2 * lane), pack_bf16(ds[n][2 * hh], ds[n][2 * hh + 1]));
}

/* dK, dV per (64-key tile, kv head), as k_bwd_kv. The grid's x enumerates
 * (sequence, kv head) pairs from p0 (pair = b·NKV + kvh; backward 4 runs
 * them in chunks), y the key tile. MODE KV_ATOMIC_DQ (KIND mma-atomic):
 * the same kernel also adds dQ = dS K: each step's dSᵀ goes to
 * shared memory in bf16 (the values the dK product uses), and after a
 * barrier each warp multiplies 16 query rows of its transpose by the key
 * tile and adds them to dq with f32 reductions: 5 tile products per step
 * instead of 4 here + 3 in k_bwd_q2, but dq's sums are in arrival order
 * (not bit-reproducible) and dq must start zeroed. MODE KV_STORE_DS
 * (backward 4): each step's dS tile is stored to dS (chunk-local query head
 * (pair − p0)·group + r) for k_bwd_dq. */
template <int D, int MODE>
__global__ void __launch_bounds__(MTHREADS, 2) k_bwd_kv2(float *dk, float *dv, float *dq, bf16 *dS, const bf16 *q,
                                                         const bf16 *k, const bf16 *v, const bf16 *dob, const float *lse,
                                                         const float *Drow, int T, int NH, int NKV, int window,
                                                         float scale, int p0, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    unsigned lp, y;
    block_coords<(MODE & KV_L2) != 0>(lp, y);
    const int j = y, group = NH / NKV, nT = (T + MB - 1) / MB, pair = p0 + lp, kvh = pair % NKV, b = pair / NKV;
    const int k0 = j * MB, key0 = k0 + 16 * w + g; /* this lane's keys key0, key0 + 8 */
    const float scale2 = scale * AR_LOG2E;
    const long ntri = (long)nT * (nT + 1) / 2;
    bf16 *Ks = (bf16 *)smem, *Vs = Ks + TS, *Qs = Vs + TS, *dOs = Qs + 2 * TS; /* Q, dO: two buffers each */
    float *Ls = (float *)(dOs + 2 * TS), *Ds = Ls + 2 * MB;
    bf16 *dSt = (bf16 *)(Ds + 2 * MB); /* KV_ATOMIC_DQ: [64 keys][LDT] */
    /* steps: (query head r of the group, query tile i), i fastest */
    const int ni = end_query_tile(k0, nT, window) - j, steps = group * ni;

    load_tile_async<D>(Ks, k, b, k0, T, NKV, kvh);
    load_tile_async<D>(Vs, v, b, k0, T, NKV, kvh);
    load_tile_async<D>(Qs, q, b, k0, T, NH, kvh * group); /* step 0: r = 0, i = j */
    load_tile_async<D>(dOs, dob, b, k0, T, NH, kvh * group);
    load_rows_async(Ls, Ds, lse, Drow, b, k0, T, NH, kvh * group);
    cp_commit();
    float dK[D / 8][4], dV[D / 8][4];
    zero_acc<D / 8>(dK);
    zero_acc<D / 8>(dV);
    for (int st = 0; st < steps; st++) {
        const int cur = st & 1, i = j + st % ni, q0 = i * MB;
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
        if (MODE & KV_ILV) { /* Sᵀ and dPᵀ together; dV after dPᵀ: the same sums */
            rows_times_tiles_t2<D>(p, Ks, Qc, dp, Vs, dOc, 16 * w, lane);
            kv_probs(p, Lc, AR_LOG2E, tile_visible(q0, k0, T, window), q0, key0, t, T, window, scale2);
        } else {
            rows_times_tile_t<D>(p, Ks, 16 * w, Qc, lane); /* Sᵀ: this warp's keys x 64 queries */
            kv_probs(p, Lc, AR_LOG2E, tile_visible(q0, k0, T, window), q0, key0, t, T, window, scale2);
            acc_times_tile<D>(dV, p, dOc, lane);            /* dV += Pᵀ dO */
            rows_times_tile_t<D>(dp, Vs, 16 * w, dOc, lane); /* dPᵀ = V dOᵀ */
        }
        kv_dst(dp, p, Dc, t, scale);
        if (MODE & KV_ATOMIC_DQ) { /* the warp's 16 rows of dSᵀ, rounded as acc_to_a rounds them */
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++)
                    *(unsigned *)(dSt + (16 * w + g + 8 * hh) * LDT + 8 * n + 2 * t) =
                        pack_bf16(dp[n][2 * hh], dp[n][2 * hh + 1]);
        }
        if (MODE & KV_STORE_DS) store_ds_tile(dS + ds_tile_at(lp * group + st / ni, ntri, i, j), dp, w, lane);
        if (MODE & KV_ILV) acc_times_tiles2<D>(dV, p, dOc, dK, dp, Qc, lane); /* dV += Pᵀ dO, dK += dSᵀ Q */
        else acc_times_tile<D>(dK, dp, Qc, lane); /* dK += dSᵀ Q */
        /* every warp is done with this step's Q, dO, lse, D (refilled by the
         * next step's prefetch) and, KV_ATOMIC_DQ, has written its dSᵀ rows */
        __syncthreads();
        if (MODE & KV_ATOMIC_DQ) /* dSt and K only: the next step's barrier guards dSt */
            add_dq_atomic<D>(dq, dSt, Ks, b, q0, T, NH, kvh * group + st / ni, w, lane);
    }
    add_acc_rows<D>(dk, dK, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
    add_acc_rows<D>(dv, dV, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
}

template <int D, bool L2>
__global__ void __launch_bounds__(MTHREADS, 2) k_bwd_q2(float *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                                        const bf16 *dob, const float *lse, const float *Drow, int T,
                                                        int NH, int NKV, int window, float scale, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    unsigned bh, y;
    block_coords<L2>(bh, y);
    const int nT = (T + MB - 1) / MB, i = nT - 1 - y, h = bh % NH, b = bh / NH;
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
    load_row_stats(L, Dd, lse, Drow, b, row0, T, NH, h);
    float dQ[D / 8][4];
    zero_acc<D / 8>(dQ);
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
        q_ds(dp, p, L, Dd, tile_visible(q0, k0, T, window), row0, k0, t, T, window, scale2, scale);
        acc_times_tile<D>(dQ, dp, Kc, lane); /* dQ += dS K */
        __syncthreads();
    }
    add_acc_rows<D>(dq, dQ, b, q0 + 16 * w, T, NH, h, lane, accumulate);
}

/* dQ of backward 4 per (64-query tile, query head): dQ += dS K over the key
 * tiles j0 .. i in k_bwd_q2's order, dS from the tiles k_bwd_kv2<.,
 * KV_STORE_DS> stored (chunk-local head lh = (pair − p0)·group + r; blocks
 * in block_coords' L2 order),
 * both double-buffered with cp.async. One tile product per step and no
 * softmax: a small kernel (K 2 x 17 KB + dS 2 x 8 KB of shared memory at
 * head_dim 128, 126 registers), four blocks per SM. */
template <int D>
__global__ void __launch_bounds__(MTHREADS, 4) k_bwd_dq(float *dq, const bf16 *k, const bf16 *dS, int T, int NH,
                                                        int NKV, int window, int p0, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned lh, y;
    block_coords<true>(lh, y);
    const int group = NH / NKV, nT = (T + MB - 1) / MB, i = nT - 1 - y;
    const int pair = p0 + lh / group, b = pair / NKV, kvh = pair % NKV, h = kvh * group + lh % group;
    const int q0 = i * MB, j0 = first_key_tile(q0, window);
    const long ntri = (long)nT * (nT + 1) / 2;
    bf16 *Ks = (bf16 *)smem, *Ss = Ks + 2 * TS; /* two K tiles, two dS tiles */
    const bf16 *tiles = dS + ds_tile_at(lh, ntri, i, 0); /* key tile j at tiles + j·DS_TILE */
    const int mi = lane >> 3; /* the 8x8 matrix whose row address this lane gives to ldmatrix */

    load_tile_async<D>(Ks, k, b, j0 * MB, T, NKV, kvh);
    load_flat_tile_async(Ss, tiles + (size_t)j0 * DS_TILE);
    cp_commit();
    float dQ[D / 8][4];
    zero_acc<D / 8>(dQ);
    for (int j = j0; j <= i; j++) {
        const int cur = (j - j0) & 1, k0 = j * MB;
        if (j < i) {
            load_tile_async<D>(Ks + (cur ^ 1) * TS, k, b, k0 + MB, T, NKV, kvh);
            load_flat_tile_async(Ss + (cur ^ 1) * DS_TILE, tiles + (size_t)(j + 1) * DS_TILE);
        }
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const bf16 *Kc = Ks + cur * TS, *Sc = Ss + cur * DS_TILE;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            /* A of dS rows (queries) 16w.., columns (keys) 16kk..: matrices
             * (keys 8·(2kk + mi/2), queries 8·(2w + mi%2)) transposed */
            unsigned a[4];
            ldsm_t(a, Sc + ((2 * kk + (mi >> 1)) * 8 + 2 * w + (mi & 1)) * 64 + (lane & 7) * 8);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                unsigned bb[4];
                load_b_kn(bb, Kc, LD, 16 * kk, 16 * dp, lane);
                mma16816(dQ[2 * dp], a, bb[0], bb[1]);
                mma16816(dQ[2 * dp + 1], a, bb[2], bb[3]);
            }
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    add_acc_rows<D>(dq, dQ, b, q0 + 16 * w, T, NH, h, lane, accumulate);
}

/* dQ of backward 7 per (128 query rows = query tiles ia = 2·(nP − 1 − y) and
 * ia + 1, query head): k_bwd_dq reads 9 ldmatrix per 8 mma from shared
 * memory (one dS A operand, eight K B operands per k-step), which bounds it.
 * Here each warp takes 32 rows of one query tile (warps 0, 1: tile ia;
 * 2, 3: ia + 1) as two 16-row units that share every K fragment: 10
 * ldmatrix per 16 mma. Per row the same products in the same key-tile
 * order as k_bwd_dq (same bits). A warp pair skips the key tiles its query
 * tile does not see (after its diagonal, before its window), whose dS tiles
 * were never stored; the block loads a dS tile only for a pair that reads
 * it. Shared memory: two K tiles, two dS tiles per query tile (67 KB at
 * head_dim 128). */
template <int D>
__global__ void __launch_bounds__(MTHREADS, 3) k_bwd_dq2(float *dq, const bf16 *k, const bf16 *dS, int T, int NH,
                                                         int NKV, int window, int p0, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned lh, y;
    block_coords<true>(lh, y);
    const int group = NH / NKV, nT = (T + MB - 1) / MB, nP = (nT + 1) / 2, ia = 2 * (nP - 1 - (int)y);
    const int pair = p0 + lh / group, b = pair / NKV, kvh = pair % NKV, h = kvh * group + lh % group;
    const int nq = ia + 1 < nT ? 2 : 1; /* query tiles in the block */
    const int jf = first_key_tile(ia * MB, window), jl = ia + nq - 1; /* the block's key tiles */
    const int iq = ia + (w >> 1), wj0 = first_key_tile(iq * MB, window); /* the warp's tile and its first key tile */
    const long ntri = (long)nT * (nT + 1) / 2;
    bf16 *Ks = (bf16 *)smem, *Ss = Ks + 2 * TS; /* K buffer c at Ks + c·TS; dS of tile ia + x at Ss + (2c + x)·DS_TILE */
    const int mi = lane >> 3; /* the 8x8 matrix whose row address this lane gives to ldmatrix */
    const int ub = 4 * (w & 1) + (mi & 1); /* its query block (of 8 rows) within the tile, unit 0 */

    /* key tile j's K and the dS tiles of the block's query tiles that see it */
    auto load_step = [&](int j, int c) {
        load_tile_async<D>(Ks + c * TS, k, b, j * MB, T, NKV, kvh);
        for (int x = 0; x < nq; x++)
            if (j >= first_key_tile((ia + x) * MB, window) && j <= ia + x)
                load_flat_tile_async(Ss + (2 * c + x) * DS_TILE, dS + ds_tile_at(lh, ntri, ia + x, j));
    };
    load_step(jf, 0);
    cp_commit();
    float dQ[2][D / 8][4];
    zero_acc<D / 8>(dQ[0]);
    zero_acc<D / 8>(dQ[1]);
    for (int j = jf; j <= jl; j++) {
        const int cur = (j - jf) & 1;
        if (j < jl) load_step(j + 1, cur ^ 1);
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        if (iq < nT && j >= wj0 && j <= iq) {
            const bf16 *Kc = Ks + cur * TS, *Sc = Ss + (2 * cur + (w >> 1)) * DS_TILE;
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                /* A of dS rows 16·(2(w&1) + u).., keys 16kk..: matrices (keys
                 * 8·(2kk + mi/2), queries 8·(ub + 2u)) transposed */
                unsigned a0[4], a1[4];
                ldsm_t(a0, Sc + ((2 * kk + (mi >> 1)) * 8 + ub) * 64 + (lane & 7) * 8);
                ldsm_t(a1, Sc + ((2 * kk + (mi >> 1)) * 8 + ub + 2) * 64 + (lane & 7) * 8);
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    unsigned bb[4];
                    load_b_kn(bb, Kc, LD, 16 * kk, 16 * dp, lane);
                    mma16816(dQ[0][2 * dp], a0, bb[0], bb[1]);
                    mma16816(dQ[0][2 * dp + 1], a0, bb[2], bb[3]);
                    mma16816(dQ[1][2 * dp], a1, bb[0], bb[1]);
                    mma16816(dQ[1][2 * dp + 1], a1, bb[2], bb[3]);
                }
            }
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    if (iq < nT) {
        add_acc_rows<D>(dq, dQ[0], b, iq * MB + 32 * (w & 1), T, NH, h, lane, accumulate);
        add_acc_rows<D>(dq, dQ[1], b, iq * MB + 32 * (w & 1) + 16, T, NH, h, lane, accumulate);
    }
}

/* ---- forward 4: 128-row query tiles, 32 rows per warp --------------------------------
 * k_fwd2<D, 4> gives each warp 16 query rows, so every K and V fragment a
 * warp loads from shared memory (ldmatrix) feeds two mma instructions, and
 * each SM re-reads every K/V tile once per 64 queries. Here a block of four
 * warps takes 128 query rows, each warp 32 (two 16-row units, u = 0, 1, that
 * share every K/V fragment: four mma per ldmatrix of K or V, half the K/V
 * traffic per flop from L2 and shared memory), the layout of FlashAttention-2's
 * forward. Q stays in shared memory (34 KB at head_dim 128; in registers it
 * would take 64 of them) and is re-read per key tile as A fragments. The
 * per-row arithmetic is k_fwd2's (same products in the same order, the
 * same softmax_tile), so the outputs are identical; a warp skips key tiles
 * after its rows or before its window. Registers: o 2 x D/2, s 2 x 32 per
 * lane; two blocks per SM (Q + two K/V buffers: 6 tiles, 104 KB at 128). */
template <int D>
__global__ void __launch_bounds__(MTHREADS, 2) k_fwd3(bf16 *out_b, float *out_f, float *lse, const bf16 *q,
                                                      const bf16 *k, const bf16 *v, int T, int NH, int NKV, int window,
                                                      float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, QR = 2 * MB, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2,
              t = lane & 3;
    /* grid (query tiles, NH, B): block_coords' L2-friendly order */
    const int nQ = (T + QR - 1) / QR, i = nQ - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV), q0 = i * QR, qw = q0 + 32 * w; /* the warp's rows qw .. qw + 31 */
    const float scale2 = scale * AR_LOG2E; /* scores in log2 units */
    bf16 *Qs = (bf16 *)smem, *Ks = Qs + 2 * TS, *Vs = Ks + TS; /* K/V buffer c: Ks + 2c·TS, Vs + 2c·TS */
    const int j0 = first_key_tile(q0, window), jl = ((q0 + QR < T ? q0 + QR : T) - 1) / MB; /* last key tile */

    load_tile_async<D>(Qs, q, b, q0, T, NH, h);
    load_tile_async<D>(Qs + TS, q, b, q0 + MB, T, NH, h);
    load_tile_async<D>(Ks, k, b, j0 * MB, T, NKV, kvh);
    load_tile_async<D>(Vs, v, b, j0 * MB, T, NKV, kvh);
    cp_commit();
    float o[2][D / 8][4], m[2][2], l[2][2];
#pragma unroll
    for (int u = 0; u < 2; u++) {
        zero_acc<D / 8>(o[u]);
        m[u][0] = m[u][1] = -INFINITY, l[u][0] = l[u][1] = 0.0f;
    }
    for (int j = j0; j <= jl; j++) {
        const int cur = (j - j0) & 1, k0 = j * MB;
        if (j < jl) { /* prefetch the next K, V into the other buffer */
            load_tile_async<D>(Ks + 2 * (cur ^ 1) * TS, k, b, k0 + MB, T, NKV, kvh);
            load_tile_async<D>(Vs + 2 * (cur ^ 1) * TS, v, b, k0 + MB, T, NKV, kvh);
        }
        cp_commit();
        cp_wait<1>(); /* this step's K, V (and at the first, Q) are in */
        __syncthreads();
        /* skip a tile whose keys all follow the warp's rows or all precede its window */
        if (k0 <= qw + 31 && (window <= 0 || qw - (k0 + MB - 1) < window)) {
            const bf16 *Kc = Ks + 2 * cur * TS, *Vc = Vs + 2 * cur * TS;
            float s[2][8][4];
            zero_acc<8>(s[0]);
            zero_acc<8>(s[1]);
            /* two k-steps per iteration, not all D/16: fully unrolled, ptxas
             * ran out of registers (255, spills) hoisting the loads */
#pragma unroll 2
            for (int kk = 0; kk < D / 16; kk++) {
                unsigned a0[4], a1[4];
                load_a(a0, Qs, LD, 32 * w, 16 * kk, lane);
                load_a(a1, Qs, LD, 32 * w + 16, 16 * kk, lane);
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    unsigned bb[4];
                    load_b_nk(bb, Kc, LD, 16 * np, 16 * kk, lane);
                    mma16816(s[0][2 * np], a0, bb[0], bb[1]);
                    mma16816(s[0][2 * np + 1], a0, bb[2], bb[3]);
                    mma16816(s[1][2 * np], a1, bb[0], bb[1]);
                    mma16816(s[1][2 * np + 1], a1, bb[2], bb[3]);
                }
            }
            softmax_tile<D>(s[0], o[0], m[0], l[0], qw, qw + g, k0, t, T, window, scale2);
            softmax_tile<D>(s[1], o[1], m[1], l[1], qw + 16, qw + 16 + g, k0, t, T, window, scale2);
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                unsigned a0[4], a1[4];
                acc_to_a(a0, s[0][2 * kk], s[0][2 * kk + 1]);
                acc_to_a(a1, s[1][2 * kk], s[1][2 * kk + 1]);
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    unsigned bb[4];
                    load_b_kn(bb, Vc, LD, 16 * kk, 16 * dp, lane);
                    mma16816(o[0][2 * dp], a0, bb[0], bb[1]);
                    mma16816(o[0][2 * dp + 1], a0, bb[2], bb[3]);
                    mma16816(o[1][2 * dp], a1, bb[0], bb[1]);
                    mma16816(o[1][2 * dp + 1], a1, bb[2], bb[3]);
                }
            }
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    store_out_rows<D>(out_b, out_f, lse, o[0], m[0], l[0], b, qw + g, T, NH, h, t);
    store_out_rows<D>(out_b, out_f, lse, o[1], m[1], l[1], b, qw + 16 + g, T, NH, h, t);
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

/* k_fwd2 with NW warps of 16 rows, in block_coords<L2> order. */
template <int D, int NW, bool L2>
int fwd2_launch(bf16 *ob, float *out_f, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T, int NH,
                int NKV, int window, const char *what)
{
    static bool ready;
    size_t sm = tiles_smem<D>(4); /* two K, two V (Q staged in the second pair) */
    if (allow_smem_max(k_fwd2<D, NW, L2>, sm, &ready)) return -1;
    const int nQ = (T + 16 * NW - 1) / (16 * NW);
    k_fwd2<D, NW, L2><<<L2 ? dim3(nQ, NH, B) : dim3(NH * B, nQ), 32 * NW, sm, g_cu.st>>>(ob, out_f, lse, q, k, v, T, NH,
                                                                                       NKV, window,
                                                                                       1.0f / sqrtf((float)D));
    return ar_cuda_check_launch(what);
}

template <int D>
int fwd_launch(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
               int B, int T, int NH, int NKV, int window, int version)
{
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB;
    bf16 *ob = (bf16 *)out_b;
    const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v;
    switch (version) {
    case 1: {
        static bool ready;
        size_t sm = tiles_smem<D>(3);
        if (allow_smem(k_fwd<D>, sm, &ready)) return -1;
        k_fwd<D><<<dim3(nT, NH, B), MTHREADS, sm, g_cu.st>>>(ob, out_f, lse, qq, kk, vv, T, NH, NKV, window, scale);
        return ar_cuda_check_launch("flash attention forward (mma1)");
    }
    case 3: /* 128-row query tiles, 8 warps */
        return fwd2_launch<D, 8, false>(ob, out_f, lse, qq, kk, vv, B, T, NH, NKV, window,
                                        "flash attention forward (mma-atomic)");
    case 4: { /* 128-row tiles, 32 rows per warp: Q (2 tiles) + two K/V buffers */
        static bool ready4;
        size_t sm = tiles_smem<D>(6);
        if (allow_smem_max(k_fwd3<D>, sm, &ready4)) return -1;
        k_fwd3<D><<<dim3((T + 127) / 128, NH, B), MTHREADS, sm, g_cu.st>>>(ob, out_f, lse, qq, kk, vv, T, NH, NKV,
                                                                           window, scale);
        return ar_cuda_check_launch("flash attention forward (m128)");
    }
    case 5:
        return fwd2_launch<D, 4, true>(ob, out_f, lse, qq, kk, vv, B, T, NH, NKV, window,
                                       "flash attention forward (mma, L2 order)");
    default:
        return fwd2_launch<D, 4, false>(ob, out_f, lse, qq, kk, vv, B, T, NH, NKV, window,
                                        "flash attention forward (mma)");
    }
}

/* Backward 4's dS scratch: allocated on first use, grown when a larger
 * launch needs more, kept until the process ends (set_ds_budget
 * caps a launch's chunk). */
bf16 *g_ds;
size_t g_ds_bytes, g_ds_budget = (size_t)2 << 30;

/* The dS area for `pairs` (sequence, kv head) pairs of per_pair bytes each:
 * *chunk pairs per launch (equal chunks under the budget; halved while the
 * allocation fails, down to one pair). */
int ds_scratch(size_t per_pair, long pairs, bf16 **buf, long *chunk)
{
    size_t budget = g_ds_budget;
    for (;;) {
        long fit = (long)(budget / per_pair), c, nchunks;
        if (fit < 1) fit = 1;
        nchunks = (pairs + fit - 1) / fit;
        c = (pairs + nchunks - 1) / nchunks;
        size_t need = (size_t)c * per_pair;
        if (need <= g_ds_bytes) {
            *buf = g_ds, *chunk = c;
            return 0;
        }
        if (g_ds) { /* kernels queued on the old area finish first */
            AR_CK(cudaStreamSynchronize(g_cu.st));
            ar_cuda_free(g_ds);
            g_ds = NULL, g_ds_bytes = 0;
        }
        g_ds = (bf16 *)ar_cuda_malloc(need);
        if (g_ds) {
            g_ds_bytes = need;
            *buf = g_ds, *chunk = c;
            return 0;
        }
        if (c == 1) return -1; /* ar_cuda_malloc said why */
        budget = need / 2;
    }
}

/* Backward 4 (MODE KV_STORE_DS | KV_L2), 5 (| KV_ILV) and 7 (5 with DQ2):
 * k_bwd_kv2 storing dS, then k_bwd_dq (DQ2: k_bwd_dq2), per chunk of
 * (sequence, kv head) pairs that fits the budget. */
template <int D, int MODE, bool DQ2>
int bwd_ds_launch(float *dq, float *dk, float *dv, const bf16 *dob, const float *Drow, const float *lse, const bf16 *q,
                  const bf16 *k, const bf16 *v, int B, int T, int NH, int NKV, int window, int accumulate)
{
    static bool ready_kv, ready_dq;
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB, group = NH / NKV;
    size_t s1 = tiles_smem<D>(6) + 4 * MB * sizeof(float), s2 = tiles_smem<D>(2) + (DQ2 ? 4 : 2) * DS_TILE * sizeof(bf16);
    if (allow_smem_max(k_bwd_kv2<D, MODE>, s1, &ready_kv) ||
        (DQ2 ? allow_smem_max(k_bwd_dq2<D>, s2, &ready_dq) : allow_smem_max(k_bwd_dq<D>, s2, &ready_dq)))
        return -1;
    const long pairs = (long)B * NKV, ntri = (long)nT * (nT + 1) / 2;
    bf16 *ds;
    long chunk;
    if (ds_scratch((size_t)group * ntri * DS_TILE * sizeof(bf16), pairs, &ds, &chunk)) return -1;
    if (chunk > 65535 / group) chunk = 65535 / group; /* the grids' y: chunk·group query heads */
    for (long p0 = 0; p0 < pairs; p0 += chunk) {
        int np = (int)(pairs - p0 < chunk ? pairs - p0 : chunk);
        k_bwd_kv2<D, MODE><<<dim3(nT, np), MTHREADS, s1, g_cu.st>>>(dk, dv, NULL, ds, q, k, v, dob, lse, Drow, T, NH,
                                                                    NKV, window, scale, (int)p0, accumulate);
        if (DQ2)
            k_bwd_dq2<D><<<dim3((nT + 1) / 2, np * group), MTHREADS, s2, g_cu.st>>>(dq, k, ds, T, NH, NKV, window,
                                                                                    (int)p0, accumulate);
        else
            k_bwd_dq<D><<<dim3(nT, np * group), MTHREADS, s2, g_cu.st>>>(dq, k, ds, T, NH, NKV, window, (int)p0,
                                                                         accumulate);
    }
    return ar_cuda_check_launch(DQ2 ? "flash attention backward (ds, ilv, dq2)"
                                : MODE & KV_ILV ? "flash attention backward (ds, ilv)"
                                                : "flash attention backward (ds)");
}

/* Backward 2 (L2 = false) and 6 (L2 = true): k_bwd_kv2 and k_bwd_q2. */
template <int D, bool L2>
int bwd2_launch(float *dq, float *dk, float *dv, const bf16 *dob, const float *Drow, const float *lse, const bf16 *q,
                const bf16 *k, const bf16 *v, int B, int T, int NH, int NKV, int window, int accumulate)
{
    static bool ready_kv, ready_q;
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB, MODE = L2 ? KV_L2 : KV_PLAIN;
    /* K, V, two Q, two dO, two lse and D rows; Q, dO, two K, two V */
    size_t s1 = tiles_smem<D>(6) + 4 * MB * sizeof(float), s2 = tiles_smem<D>(6);
    if (allow_smem_max(k_bwd_kv2<D, MODE>, s1, &ready_kv) || allow_smem_max(k_bwd_q2<D, L2>, s2, &ready_q)) return -1;
    k_bwd_kv2<D, MODE><<<L2 ? dim3(nT, NKV, B) : dim3(NKV * B, nT), MTHREADS, s1, g_cu.st>>>(
        dk, dv, NULL, NULL, q, k, v, dob, lse, Drow, T, NH, NKV, window, scale, 0, accumulate);
    k_bwd_q2<D, L2><<<L2 ? dim3(nT, NH, B) : dim3(NH * B, nT), MTHREADS, s2, g_cu.st>>>(
        dq, q, k, v, dob, lse, Drow, T, NH, NKV, window, scale, accumulate);
    return ar_cuda_check_launch(L2 ? "flash attention backward (mma, L2 order)" : "flash attention backward (mma)");
}

template <int D>
int bwd_launch(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow, const float *lse,
               const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int NH, int NKV, int window,
               int accumulate, int version)
{
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB;
    const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v, *dd = (const bf16 *)dob;
    switch (version) {
    case 1: {
        static bool ready_kv, ready_q;
        size_t s1 = tiles_smem<D>(4) + 2 * MB * sizeof(float), s2 = tiles_smem<D>(4);
        if (allow_smem(k_bwd_kv<D>, s1, &ready_kv) || allow_smem(k_bwd_q<D>, s2, &ready_q)) return -1;
        k_bwd_kv<D><<<dim3(nT, NKV, B), MTHREADS, s1, g_cu.st>>>(dk, dv, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window,
                                                                 scale, accumulate);
        k_bwd_q<D><<<dim3(nT, NH, B), MTHREADS, s2, g_cu.st>>>(dq, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window, scale,
                                                               accumulate);
        return ar_cuda_check_launch("flash attention backward (mma1)");
    }
    case 3: { /* K, V, two Q, two dO, two lse and D rows, dSᵀ */
        static bool ready3;
        size_t s3 = tiles_smem<D>(6) + 4 * MB * sizeof(float) + MB * LDT * sizeof(bf16);
        if (allow_smem_max(k_bwd_kv2<D, KV_ATOMIC_DQ>, s3, &ready3)) return -1;
        if (!accumulate) AR_CK(cudaMemsetAsync(dq, 0, sizeof(float) * (size_t)B * T * NH * D, g_cu.st));
        k_bwd_kv2<D, KV_ATOMIC_DQ><<<dim3(NKV * B, nT), MTHREADS, s3, g_cu.st>>>(
            dk, dv, dq, NULL, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window, scale, 0, accumulate);
        return ar_cuda_check_launch("flash attention backward (mma-atomic)");
    }
    case 4:
        return bwd_ds_launch<D, KV_STORE_DS | KV_L2, false>(dq, dk, dv, dd, Drow, lse, qq, kk, vv, B, T, NH, NKV,
                                                            window, accumulate);
    case 5:
        return bwd_ds_launch<D, KV_STORE_DS | KV_ILV | KV_L2, false>(dq, dk, dv, dd, Drow, lse, qq, kk, vv, B, T, NH,
                                                                     NKV, window, accumulate);
    case 7:
        return bwd_ds_launch<D, KV_STORE_DS | KV_ILV | KV_L2, true>(dq, dk, dv, dd, Drow, lse, qq, kk, vv, B, T, NH,
                                                                    NKV, window, accumulate);
    case 6: return bwd2_launch<D, true>(dq, dk, dv, dd, Drow, lse, qq, kk, vv, B, T, NH, NKV, window, accumulate);
    default: return bwd2_launch<D, false>(dq, dk, dv, dd, Drow, lse, qq, kk, vv, B, T, NH, NKV, window, accumulate);
    }
}
} // namespace

static int mma_forward(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
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

static int mma_backward(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow, const float *lse,
                        const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int NH, int NKV, int HD,
                        int window, int accumulate, int version)
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

/* Cap on one dS-storing backward launch's scratch (bytes; <= 0: 2 GiB). */
static void set_ds_budget(long bytes) { g_ds_budget = bytes > 0 ? (size_t)bytes : (size_t)2 << 30; }

/* ==== the kinds, dispatch ================================================================ */

static const struct {
    const char *name;
    int fwd, bwd; /* mma versions; 0: the wmma kernels */
    int deterministic;
} g_kinds[] = {
    {"wmma", 0, 0, 1},      {"mma1", 1, 1, 1},       {"mma-v2", 2, 2, 1},
    {"mma-atomic", 3, 3, 0}, {"mma-l2", 5, 6, 1},     {"mma-ds", 5, 4, 1},
    {"mma-ds-ilv", 5, 5, 1}, {"mma-m128", 4, 6, 1},   {"mma-m128-ds", 4, 7, 1},
};
enum { NKINDS = sizeof g_kinds / sizeof *g_kinds, K_V2 = 2, K_DS_ILV = 6, K_M128_DS = 8 };

static int flash_supported(int HD) { return HD == 32 || HD == 64 || HD == 80 || HD == 96 || HD == 128; }

static int check_sizes(int B, int T, int NH, int NKV, int HD)
{
    if (!flash_supported(HD)) return ar_cuda_fail("flash attention: head_dim %d not supported", HD);
    if (B < 1 || T < 1 || NKV < 1 || NH % NKV) return ar_cuda_fail("flash attention: bad sizes");
    if ((T + 63) / 64 > 65535 || NH > 65535 || B > 65535) return ar_cuda_fail("flash attention: grid too large");
    return 0;
}

/* q [B, T, NH, HD], k, v [B, T, NKV, HD] bf16 -> out (bf16 and/or f32), lse [B, NH, T]. */
static int flash_forward(int kind, uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                         const uint16_t *v, int B, int T, int NH, int NKV, int HD, int window)
{
    if (check_sizes(B, T, NH, NKV, HD)) return -1;
    if (g_kinds[kind].fwd) return mma_forward(out_b, out_f, lse, q, k, v, B, T, NH, NKV, HD, window, g_kinds[kind].fwd);
    switch (HD) {
    case 32: return wmma_kernels::fwd_launch<32>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 64: return wmma_kernels::fwd_launch<64>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 80: return wmma_kernels::fwd_launch<80>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 96: return wmma_kernels::fwd_launch<96>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    default: return wmma_kernels::fwd_launch<128>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    }
}

/* Floats of scratch flash_backward needs: D [B, NH, T] f32 and dO bf16. */
static long backward_scratch(int B, int T, int NH, int HD)
{
    return (long)B * NH * T + ((long)B * T * NH * HD + 1) / 2 + 64;
}

/* dq, dk, dv (f32) += (accumulate) or = the gradients for dout (f32), from
 * the forward's f32 output and lse. */
static int flash_backward(int kind, float *dq, float *dk, float *dv, float *scratch, const float *dout,
                          const float *out, const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          int B, int T, int NH, int NKV, int HD, int window, int accumulate)
{
    if (check_sizes(B, T, NH, NKV, HD)) return -1;
    long rows = (long)B * T * NH;
    float *Drow = scratch;
    size_t off = ((size_t)B * NH * T * sizeof(float) + 255) & ~(size_t)255; /* dO 256-byte aligned */
    uint16_t *dob = (uint16_t *)((char *)scratch + off);
    k_flash_prep<<<ar_blocks(rows * 32, 256), 256, 0, g_cu.st>>>(Drow, (__nv_bfloat16 *)dob, dout, out, T, NH, HD,
                                                                rows);
    if (g_kinds[kind].bwd)
        return mma_backward(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, HD, window, accumulate,
                            g_kinds[kind].bwd);
    if (!accumulate) { /* the wmma kernels only add */
        size_t nq = sizeof(float) * rows * HD, nk = sizeof(float) * (size_t)B * T * NKV * HD;
        AR_CK(cudaMemsetAsync(dq, 0, nq, g_cu.st));
        AR_CK(cudaMemsetAsync(dk, 0, nk, g_cu.st));
        AR_CK(cudaMemsetAsync(dv, 0, nk, g_cu.st));
    }
    switch (HD) {
    case 32: return wmma_kernels::bwd_launch<32>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    case 64: return wmma_kernels::bwd_launch<64>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    case 80: return wmma_kernels::bwd_launch<80>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    case 96: return wmma_kernels::bwd_launch<96>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    default: return wmma_kernels::bwd_launch<128>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    }
}

/* ==== CPU reference ======================================================================
 * Causal attention with an optional sliding window (query i sees keys j <= i
 * with i − j < window) and kv head h / (NH / NKV), in double on the given
 * (bf16-rounded) inputs: o [B, T, NH, HD], lse [B, NH, T] (natural log of the
 * row's sum of exp(scale·q·k)), and for dout the gradients dq, dk, dv. */
static void attention_cpu(const float *q, const float *k, const float *v, const float *dout, int B, int T, int NH,
                          int NKV, int HD, int window, double *o, double *lse, double *dq, double *dk, double *dv)
{
    const double scale = 1.0 / sqrt((double)HD);
    const int group = NH / NKV;
    double *p = (double *)hmalloc(sizeof(double) * T), *dp = (double *)hmalloc(sizeof(double) * T);
    memset(dq, 0, sizeof(double) * (size_t)B * T * NH * HD);
    memset(dk, 0, sizeof(double) * (size_t)B * T * NKV * HD);
    memset(dv, 0, sizeof(double) * (size_t)B * T * NKV * HD);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int kh = h / group;
            for (int i = 0; i < T; i++) {
                const float *qi = q + (((size_t)b * T + i) * NH + h) * HD;
                int j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
                double m = -INFINITY, l = 0;
                for (int j = j0; j <= i; j++) {
                    const float *kj = k + (((size_t)b * T + j) * NKV + kh) * HD;
                    double s = 0;
                    for (int d = 0; d < HD; d++) s += (double)qi[d] * kj[d];
                    p[j] = s * scale;
                    if (p[j] > m) m = p[j];
                }
                for (int j = j0; j <= i; j++) p[j] = exp(p[j] - m), l += p[j];
                double *oi = o + (((size_t)b * T + i) * NH + h) * HD;
                for (int d = 0; d < HD; d++) oi[d] = 0;
                for (int j = j0; j <= i; j++) {
                    const float *vj = v + (((size_t)b * T + j) * NKV + kh) * HD;
                    p[j] /= l;
                    for (int d = 0; d < HD; d++) oi[d] += p[j] * vj[d];
                }
                lse[((size_t)b * NH + h) * T + i] = m + log(l);
                /* backward: dP = dO·v, D = Σ P dP, dS = P (dP − D) */
                const float *gi = dout + (((size_t)b * T + i) * NH + h) * HD;
                double D = 0;
                for (int j = j0; j <= i; j++) {
                    const float *vj = v + (((size_t)b * T + j) * NKV + kh) * HD;
                    double s = 0;
                    for (int d = 0; d < HD; d++) s += (double)gi[d] * vj[d];
                    dp[j] = s, D += p[j] * s;
                }
                double *dqi = dq + (((size_t)b * T + i) * NH + h) * HD;
                for (int j = j0; j <= i; j++) {
                    double ds = p[j] * (dp[j] - D) * scale;
                    const float *kj = k + (((size_t)b * T + j) * NKV + kh) * HD;
                    double *dkj = dk + (((size_t)b * T + j) * NKV + kh) * HD, *dvj = dv + (((size_t)b * T + j) * NKV + kh) * HD;
                    for (int d = 0; d < HD; d++) {
                        dqi[d] += ds * kj[d];
                        dkj[d] += ds * qi[d];
                        dvj[d] += p[j] * gi[d];
                    }
                }
            }
        }
    free(p), free(dp);
}

/* ==== checks ============================================================================== */

static int g_fail, g_tests;

static void verdict(const char *name, double err, double tol, const char *what)
{
    int ok = err <= tol;
    g_tests++, g_fail += !ok;
    printf("%s %-60s %s %.3g (tol %.3g)\n", ok ? "PASS" : "FAIL", name, what, err, tol);
    fflush(stdout);
}

/* One shape: random q, k, v, dout (q, k, v rounded to bf16), the CPU
 * reference on them, device inputs, and the results of the kinds that the
 * exact comparisons refer to (mma-v2's, mma-ds-ilv's dq). */
typedef struct {
    int B, T, NH, NKV, HD, window;
    size_t nq, nk, nl;
    double *o, *lse, *dq, *dk, *dv;
    uint16_t *qb, *kb, *vb; /* device */
    float *dout;            /* device */
    float *vo, *vl, *vdq, *vdk, *vdv, *idq; /* host, NULL until that kind ran */
} shape_case;

static uint16_t *rounded_bf16(float *x, size_t n)
{
    uint16_t *h = (uint16_t *)hmalloc(2 * n), *d = (uint16_t *)dmalloc(2 * n);
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]), x[i] = bf16_to_f32(h[i]);
    to_dev(d, h, 2 * n);
    free(h);
    return d;
}

static void case_init(shape_case *c, int B, int T, int NH, int NKV, int HD, int window)
{
    memset(c, 0, sizeof *c);
    c->B = B, c->T = T, c->NH = NH, c->NKV = NKV, c->HD = HD, c->window = window;
    c->nq = (size_t)B * T * NH * HD, c->nk = (size_t)B * T * NKV * HD, c->nl = (size_t)B * NH * T;
    float *q = (float *)hmalloc(4 * c->nq), *k = (float *)hmalloc(4 * c->nk), *v = (float *)hmalloc(4 * c->nk);
    float *g = (float *)hmalloc(4 * c->nq);
    for (size_t i = 0; i < c->nq; i++) q[i] = urand(), g[i] = urand();
    for (size_t i = 0; i < c->nk; i++) k[i] = urand(), v[i] = urand();
    c->qb = rounded_bf16(q, c->nq), c->kb = rounded_bf16(k, c->nk), c->vb = rounded_bf16(v, c->nk);
    c->dout = (float *)dmalloc(4 * c->nq);
    to_dev(c->dout, g, 4 * c->nq);
    c->o = (double *)hmalloc(8 * c->nq), c->lse = (double *)hmalloc(8 * c->nl), c->dq = (double *)hmalloc(8 * c->nq);
    c->dk = (double *)hmalloc(8 * c->nk), c->dv = (double *)hmalloc(8 * c->nk);
    attention_cpu(q, k, v, g, B, T, NH, NKV, HD, window, c->o, c->lse, c->dq, c->dk, c->dv);
    free(q), free(k), free(v), free(g);
}

static void case_free(shape_case *c)
{
    double *hd[] = {c->o, c->lse, c->dq, c->dk, c->dv};
    for (double *p : hd) free(p);
    float *hf[] = {c->vo, c->vl, c->vdq, c->vdk, c->vdv, c->idq};
    for (float *p : hf) free(p);
    ar_cuda_free(c->qb), ar_cuda_free(c->kb), ar_cuda_free(c->vb), ar_cuda_free(c->dout);
}

static float *download_f32(const float *d, size_t n)
{
    float *h = (float *)hmalloc(4 * n);
    to_host(h, d, 4 * n);
    return h;
}

/* A result computed with mma-v2's operations in its order must match it bit
 * for bit; info = 1 prints the count only (the same sums up to the order
 * the tensor core adds within an mma). */
static void exact(const char *kind, const char *what, const char *ref, const shape_case *c, const float *got,
                  const float *want, size_t n, int info)
{
    char name[160];
    size_t d = bits_differ(got, want, n);
    snprintf(name, sizeof name, "[%s] %s exact vs %s T%d H%d/%d D%d w%d", kind, what, ref, c->T, c->NH, c->NKV, c->HD,
             c->window);
    if (info) printf("     %s: %zu of %zu elements differ (info)\n", name, d, n);
    else verdict(name, (double)d, 0, "differing elements");
}

/* Kind on case c (tag: the kind's name, " chunked" when the dS budget is one pair). */
static void case_run(shape_case *c, int kind, const char *tag)
{
    const int B = c->B, T = c->T, NH = c->NH, NKV = c->NKV, HD = c->HD, w = c->window;
    const size_t nq = c->nq, nk = c->nk, nl = c->nl;
    uint16_t *ob = (uint16_t *)dmalloc(2 * nq);
    float *o = (float *)dmalloc(4 * nq), *lse = (float *)dmalloc(4 * nl), *dq = (float *)dmalloc(4 * nq);
    float *dk = (float *)dmalloc(4 * nk), *dv = (float *)dmalloc(4 * nk);
    float *scr = (float *)dmalloc(4 * (size_t)backward_scratch(B, T, NH, HD));
    char name[160];
    if (flash_forward(kind, ob, o, lse, c->qb, c->kb, c->vb, B, T, NH, NKV, HD, w) ||
        flash_backward(kind, dq, dk, dv, scr, c->dout, o, lse, c->qb, c->kb, c->vb, B, T, NH, NKV, HD, w, 0) ||
        cudaDeviceSynchronize() != cudaSuccess) {
        printf("FAIL [%s] T%d D%d: %s\n", tag, T, HD, cudaGetErrorString(cudaGetLastError()));
        g_fail++, g_tests++;
        return;
    }
    float *ho = download_f32(o, nq), *hl = download_f32(lse, nl), *hq = download_f32(dq, nq);
    float *hk = download_f32(dk, nk), *hv = download_f32(dv, nk);
    uint16_t *hb = (uint16_t *)hmalloc(2 * nq);
    to_host(hb, ob, 2 * nq);
    float *hbf = (float *)hmalloc(4 * nq);
    for (size_t i = 0; i < nq; i++) hbf[i] = bf16_to_f32(hb[i]);
    snprintf(name, sizeof name, "[%s] fwd B%d T%d H%d/%d D%d w%d", tag, B, T, NH, NKV, HD, w);
    verdict(name, rel_err(ho, c->o, nq), 2e-2, "err");
    snprintf(name, sizeof name, "[%s] fwd bf16 out T%d D%d w%d", tag, T, HD, w);
    verdict(name, rel_err(hbf, c->o, nq), 2e-2, "err");
    snprintf(name, sizeof name, "[%s] fwd lse T%d D%d w%d", tag, T, HD, w);
    verdict(name, rel_err(hl, c->lse, nl), 1e-3, "err");
    snprintf(name, sizeof name, "[%s] bwd dq dk dv T%d H%d/%d D%d w%d", tag, T, NH, NKV, HD, w);
    verdict(name, fmax(rel_err(hq, c->dq, nq), fmax(rel_err(hk, c->dk, nk), rel_err(hv, c->dv, nk))), 5e-2, "err");
    /* exact: the forward of every mma kind after mma-v2 but mma-atomic's
     * (forward 4 = forward 2 per row, forward 5 = forward 2 in another block
     * order), dK/dV of every k_bwd_kv2 kind, dq where k_bwd_q2 computes it;
     * the dS-storing kinds' dq (dS from Sᵀ = K Qᵀ instead of S = Q Kᵀ) as info */
    int v = g_kinds[kind].bwd, fam = kind > K_V2 && kind != 3;
    int ds = v == 4 || v == 5 || v == 7;
    if (kind == K_V2) {
        free(c->vo), free(c->vl), free(c->vdq), free(c->vdk), free(c->vdv);
        c->vo = ho, c->vl = hl, c->vdq = hq, c->vdk = hk, c->vdv = hv;
        ho = hl = hq = hk = hv = NULL;
    } else {
        if (fam && c->vo) {
            exact(tag, "fwd out", "mma-v2", c, ho, c->vo, nq, 0);
            exact(tag, "fwd lse", "mma-v2", c, hl, c->vl, nl, 0);
            exact(tag, "bwd dk", "mma-v2", c, hk, c->vdk, nk, 0);
            exact(tag, "bwd dv", "mma-v2", c, hv, c->vdv, nk, 0);
            exact(tag, "bwd dq", "mma-v2", c, hq, c->vdq, nq, ds);
        }
        /* k_bwd_dq2 (mma-m128-ds) sums what k_bwd_dq (mma-ds-ilv) sums, in its order */
        if (kind == K_M128_DS && c->idq) exact(tag, "bwd dq", "mma-ds-ilv", c, hq, c->idq, nq, 0);
        if (kind == K_DS_ILV) free(c->idq), c->idq = hq, hq = NULL;
    }
    float *hf[] = {ho, hl, hq, hk, hv, hbf};
    for (float *p : hf) free(p);
    free(hb);
    void *fd[] = {ob, o, lse, dq, dk, dv, scr};
    for (void *p : fd) ar_cuda_free(p);
}

/* Every selected kind on every shape, mma-v2 first (the exact comparisons'
 * reference) and mma-ds-ilv before mma-m128-ds. */
static void run_checks(const int *sel)
{
    static const int shapes[][6] = {{2, 128, 8, 2, 64, 0},   {1, 200, 4, 4, 32, 48},  {1, 512, 8, 2, 64, 0},
                                    {1, 300, 4, 2, 128, 0},  {2, 160, 4, 1, 80, 100}, {1, 257, 6, 3, 96, 0},
                                    {2, 390, 4, 2, 128, 150}, {1, 129, 2, 2, 64, 0},   {2, 300, 4, 2, 64, 0},
                                    {2, 200, 6, 3, 128, 70}};
    const int nshapes = (int)(sizeof shapes / sizeof *shapes), chunked_from = 8;
    int order[NKINDS], n = 0;
    order[n++] = K_V2;
    for (int k = 0; k < NKINDS; k++)
        if (k != K_V2) order[n++] = k;
    for (int si = 0; si < nshapes; si++) {
        const int *sh = shapes[si];
        shape_case c;
        case_init(&c, sh[0], sh[1], sh[2], sh[3], sh[4], sh[5]);
        for (int ki = 0; ki < n; ki++) {
            int kind = order[ki], v = g_kinds[kind].bwd, ds = v == 4 || v == 5 || v == 7;
            if (!sel[kind] && kind != K_V2) continue;
            char tag[64];
            if (si >= chunked_from && !ds && kind != K_V2) continue;
            snprintf(tag, sizeof tag, "%s%s", g_kinds[kind].name, si >= chunked_from && ds ? " chunked" : "");
            if (si >= chunked_from) set_ds_budget(1); /* one (sequence, kv head) pair per launch */
            case_run(&c, kind, tag);
            set_ds_budget(0);
        }
        case_free(&c);
    }
}

/* ==== benchmark =========================================================================== */

__global__ void k_fill(__nv_bfloat16 *p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        p[i] = __float2bfloat16_rn((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

/* Useful flops of the causal forward (S = QKᵀ and O = PV over visible pairs). */
static double attention_flops(int B, int T, int NH, int HD)
{
    return 2.0 * 2.0 * HD * ((double)T * (T + 1) / 2) * NH * (double)B;
}

/* Each selected kind at B 8, T 2048, 32 heads, head_dim 128 (NKV = NH),
 * causal: the forward with bf16 and f32 outputs, the backward with its dO
 * preparation, reps runs after a warm-up each. */
static void run_bench(const int *sel)
{
    const int B = 8, T = 2048, NH = 32, HD = 128, reps = 5;
    size_t n = (size_t)B * T * NH * HD;
    __nv_bfloat16 *q = (__nv_bfloat16 *)dmalloc(2 * n), *k = (__nv_bfloat16 *)dmalloc(2 * n);
    __nv_bfloat16 *v = (__nv_bfloat16 *)dmalloc(2 * n), *ob = (__nv_bfloat16 *)dmalloc(2 * n);
    float *of = (float *)dmalloc(4 * n), *lse = (float *)dmalloc(4 * (size_t)B * NH * T), *dq = (float *)dmalloc(4 * n);
    float *dk = (float *)dmalloc(4 * n), *dv = (float *)dmalloc(4 * n);
    float *scr = (float *)dmalloc(4 * (size_t)backward_scratch(B, T, NH, HD));
    k_fill<<<1024, 256>>>(q, n, 11u), k_fill<<<1024, 256>>>(k, n, 12u), k_fill<<<1024, 256>>>(v, n, 13u);
    double ff = attention_flops(B, T, NH, HD), fb = 2.5 * ff;
    int best_f = -1, best_b = -1;
    double ms_f = 0, ms_b = 0;
    timer tm;
    for (int kind = 0; kind < NKINDS; kind++) {
        if (!sel[kind]) continue;
        double mf = 0, mb = 0;
        int rc = 0;
        const uint16_t *qq = (const uint16_t *)q, *kk = (const uint16_t *)k, *vv = (const uint16_t *)v;
        for (int r = -1; !rc && r < reps; r++) {
            if (r == 0) tm.start();
            rc = flash_forward(kind, (uint16_t *)ob, of, lse, qq, kk, vv, B, T, NH, NH, HD, 0);
        }
        if (!rc) mf = tm.stop(reps);
        for (int r = -1; !rc && r < reps; r++) {
            if (r == 0) tm.start();
            /* any gradient: the output itself; accumulating, as the product's bench timed it */
            rc = flash_backward(kind, dq, dk, dv, scr, of, of, lse, qq, kk, vv, B, T, NH, NH, HD, 0, 1);
        }
        if (!rc) mb = tm.stop(reps);
        if (rc) {
            printf("FAIL bench [%s]\n", g_kinds[kind].name);
            g_fail++;
            continue;
        }
        printf("BENCH B%d T%d H%d D%d causal [%d %s]: fwd %.3f ms (%.1f TFLOP/s useful), bwd %.3f ms (%.1f TFLOP/s, "
               "flops 2.5 x fwd)%s\n", B, T, NH, HD, kind + 1, g_kinds[kind].name, mf, ff / mf * 1e-9, mb,
               fb / mb * 1e-9, g_kinds[kind].deterministic ? "" : "  (not deterministic)");
        fflush(stdout);
        if (!g_kinds[kind].deterministic) continue;
        if (best_f < 0 || mf < ms_f) best_f = kind, ms_f = mf;
        if (best_b < 0 || mb < ms_b) best_b = kind, ms_b = mb;
    }
    if (best_f >= 0)
        printf("BENCH fastest deterministic: fwd %.3f ms [%s], bwd %.3f ms [%s]\n", ms_f, g_kinds[best_f].name, ms_b,
               g_kinds[best_b].name);
    void *fd[] = {q, k, v, ob, of, lse, dq, dk, dv, scr};
    for (void *p : fd) ar_cuda_free(p);
}

int main(int argc, char **argv)
{
    int check = 0, bench = 0, sel[NKINDS] = {0}, any = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check")) check = 1;
        else if (!strcmp(argv[i], "--bench")) bench = 1;
        else {
            int k = -1;
            for (int j = 0; j < NKINDS; j++)
                if (!strcmp(argv[i], g_kinds[j].name) || atoi(argv[i]) == j + 1) k = j;
            if (k < 0) {
                fprintf(stderr, "usage: flash_attention [--check] [--bench] [KIND...]; kinds:");
                for (int j = 0; j < NKINDS; j++) fprintf(stderr, " %d %s", j + 1, g_kinds[j].name);
                fprintf(stderr, "\n");
                return 2;
            }
            sel[k] = 1, any = 1;
        }
    }
    if (!check && !bench) check = bench = 1;
    for (int j = 0; j < NKINDS && !any; j++) sel[j] = 1;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        fprintf(stderr, "flash_attention: no CUDA device\n");
        return 2;
    }
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    if (check) {
        run_checks(sel);
        printf("checks: %d of %d passed\n", g_tests - g_fail, g_tests);
    }
    if (bench) run_bench(sel);
    return g_fail ? 1 : 0;
}
