/* flash.cu — causal attention that never stores the T x T probabilities
 * (the fast path; see ar_cuda.h and kernels/README.md). The entry points
 * dispatch to flash_mma.cu's kernels (mma.sync, tiles in registers: the
 * default) or to this file's first design on wmma (AR_CUDA_FLASH=wmma).
 *
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
#include "internal.cuh"
#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>
#include <string.h>

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

/* ---- backward ---------------------------------------------------------------- */

/* Drow[b, h, t] = Σ_d dO·O (f32) and dO narrowed to bf16; one warp per row. */
__global__ void k_flash_prep(float *Drow, bf16 *dob, const float *dout, const float *out, int T, int NH, int HD,
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
        s = warp_sum(s);
        long bt = r / NH;
        int h = (int)(r % NH), t = (int)(bt % T), b = (int)(bt / T);
        if (lane == 0) Drow[((long)b * NH + h) * T + t] = s;
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

/* ---- host side ---------------------------------------------------------------- */

int ar_cuda_flash_supported(int HD) { return HD == 32 || HD == 64 || HD == 80 || HD == 96 || HD == 128; }

/* Each AR_CUDA_FLASH kind (in enum order): its name and the flash_mma.cu
 * forward and backward versions it runs (0: the wmma kernels here; the
 * versions are listed at the top of flash_mma.cu). The default, `mma`, is
 * one row: making another pair the default is a one-line change here. */
static const struct {
    const char *name;
    int fwd, bwd;
} g_kinds[AR_CUDA_FLASH_KINDS] = {
    {"wmma", 0, 0},        /* AR_CUDA_FLASH_WMMA */
    {"mma", 4, 7},         /* AR_CUDA_FLASH_MMA: the default = mma-m128-ds (H200 session 3: fwd+bwd 4.67 vs 6.52 ms) */
    {"mma1", 1, 1},        /* AR_CUDA_FLASH_MMA1 */
    {"mma-atomic", 3, 3},  /* AR_CUDA_FLASH_MMA_ATOMIC */
    {"mma-l2", 5, 6},      /* AR_CUDA_FLASH_MMA_L2: mma's kernels in the L2-friendly block order */
    {"mma-ds", 5, 4},      /* AR_CUDA_FLASH_MMA_DS */
    {"mma-ds-ilv", 5, 5},  /* AR_CUDA_FLASH_MMA_DS_ILV */
    {"mma-m128", 4, 6},    /* AR_CUDA_FLASH_MMA_M128 */
    {"mma-m128-ds", 4, 7}, /* AR_CUDA_FLASH_MMA_M128_DS: every candidate */
    {"mma-v2", 2, 2},      /* AR_CUDA_FLASH_MMA_V2: session 2's default under a fixed name */
};

static int g_flash_kernel = AR_CUDA_FLASH_MMA;

void ar_cuda_set_flash_kernel(int kind) { g_flash_kernel = kind >= 0 && kind < AR_CUDA_FLASH_KINDS ? kind : AR_CUDA_FLASH_MMA; }

const char *ar_cuda_flash_kernel_name(int kind)
{
    return kind >= 0 && kind < AR_CUDA_FLASH_KINDS ? g_kinds[kind].name : NULL;
}

int ar_cuda_flash_kernel_by_name(const char *name)
{
    for (int k = 0; name && k < AR_CUDA_FLASH_KINDS; k++)
        if (!strcmp(name, g_kinds[k].name)) return k;
    return -1;
}

int ar_cuda_get_flash_kernel(void) { return g_flash_kernel; }

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

static int check_sizes(int B, int T, int NH, int NKV, int HD)
{
    if (!ar_cuda_flash_supported(HD)) return ar_cuda_fail("flash attention: head_dim %d not supported", HD);
    if (B < 1 || T < 1 || NKV < 1 || NH % NKV) return ar_cuda_fail("flash attention: bad sizes");
    if ((T + FB - 1) / FB > 65535 || NH > 65535 || B > 65535) return ar_cuda_fail("flash attention: grid too large");
    return 0;
}

int ar_cuda_flash_forward(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                          const uint16_t *v, int B, int T, int NH, int NKV, int HD, int window)
{
    if (check_sizes(B, T, NH, NKV, HD)) return -1;
    if (g_kinds[g_flash_kernel].fwd)
        return ar_cuda_flash_mma_forward(out_b, out_f, lse, q, k, v, B, T, NH, NKV, HD, window,
                                         g_kinds[g_flash_kernel].fwd);
    switch (HD) {
    case 32: return fwd_launch<32>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 64: return fwd_launch<64>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 80: return fwd_launch<80>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 96: return fwd_launch<96>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    default: return fwd_launch<128>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    }
}

long ar_cuda_flash_backward_scratch(int B, int T, int NH, int HD)
{
    /* D [B, NH, T] f32 and dO [B, T, NH, HD] bf16, in floats */
    return (long)B * NH * T + ((long)B * T * NH * HD + 1) / 2 + 64;
}

/* The backward with dq, dk, dv added to (accumulate) or written. */
static int flash_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                          const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                          int NH, int NKV, int HD, int window, int accumulate)
{
    if (check_sizes(B, T, NH, NKV, HD)) return -1;
    long rows = (long)B * T * NH;
    float *Drow = scratch;
    /* dO after D, 256-byte aligned for the 16-byte tile loads */
    size_t off = ((size_t)B * NH * T * sizeof(float) + 255) & ~(size_t)255;
    uint16_t *dob = (uint16_t *)((char *)scratch + off);
    k_flash_prep<<<ar_blocks(rows * 32, 256), 256, 0, g_cu.st>>>(Drow, (bf16 *)dob, dout, out, T, NH, HD, rows);
    if (g_kinds[g_flash_kernel].bwd)
        return ar_cuda_flash_mma_backward(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, HD, window, accumulate,
                                          g_kinds[g_flash_kernel].bwd);
    if (!accumulate) { /* the wmma kernels only add */
        size_t nq = sizeof(float) * rows * HD, nk = sizeof(float) * (size_t)B * T * NKV * HD;
        AR_CK(cudaMemsetAsync(dq, 0, nq, g_cu.st));
        AR_CK(cudaMemsetAsync(dk, 0, nk, g_cu.st));
        AR_CK(cudaMemsetAsync(dv, 0, nk, g_cu.st));
    }
    switch (HD) {
    case 32: return bwd_launch<32>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    case 64: return bwd_launch<64>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    case 80: return bwd_launch<80>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    case 96: return bwd_launch<96>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    default: return bwd_launch<128>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window);
    }
}

int ar_cuda_flash_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                           const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                           int NH, int NKV, int HD, int window)
{
    return flash_backward(dq, dk, dv, scratch, dout, out, lse, q, k, v, B, T, NH, NKV, HD, window, 1);
}

int ar_cuda_flash_backward_write(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                                 const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B,
                                 int T, int NH, int NKV, int HD, int window)
{
    return flash_backward(dq, dk, dv, scratch, dout, out, lse, q, k, v, B, T, NH, NKV, HD, window, 0);
}
