/* flash_mma.cu — the fast path's causal (sliding-window) flash attention:
 * every tile product on raw mma.sync.m16n8k16 bf16 tensor-core instructions,
 * the scores, probabilities and accumulators in registers, tiles streamed
 * through shared memory with cp.async double buffering (entry points and the
 * backward's D rows: flash.cu).
 *
 *   forward   k_fwd, one block per (128-query tile, head, sequence), four
 *             warps of 32 query rows (two 16-row units sharing every K and V
 *             fragment); per visible 64-key tile S = Q Kᵀ, online softmax on
 *             the accumulator registers, O += P V with P rounded to bf16
 *             straight from the S registers (the accumulator layout of two
 *             8-column tiles is the operand layout of one 16-deep k-step);
 *             lse = m + log(l) saved.
 *   backward  k_bwd_kv per (64-key tile, kv head): warps own 16 keys, loop
 *             over the group's heads and the query tiles that see the keys;
 *             Sᵀ = K Qᵀ with dPᵀ = V dOᵀ, then dV += Pᵀ dO with dK += dSᵀ Q
 *             (each pair interleaved), and each bf16 dS tile stored once in a
 *             scratch area; k_bwd_dq per (two 64-query tiles, head) streams
 *             those dS tiles and K through dQ += dS K. 5 tile products per
 *             step, one writer per output element: deterministic.
 *
 * The other kernel generations measured on the way (the first design on
 * wmma, the first mma kernels, 64-row tiles, dQ by f32 atomics, the L2 block
 * order alone, ...) are study programs in dev/cuda/flash_attention.cu, where
 * these kernels are version 9 under their names there (k_fwd3, k_bwd_kv2<D,
 * KV_STORE_DS | KV_ILV | KV_L2>, k_bwd_dq2); kernels/README.md has the
 * timings. dev/cuda/flash_mma_model.py replays their index arithmetic.
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

/* Two independent tile products in one loop: a1 [8][4] (16 rows x 64
 * columns) = X1 rows r0.. (D deep) · Y1ᵀ and a2 = X2 rows r0.. · Y2ᵀ, the Y
 * tiles 64 x D stored n-major (the backward's Sᵀ = K Qᵀ and dPᵀ = V dOᵀ).
 * Per accumulator the mma sequence of one product alone, so the same
 * results, with 16 independent accumulation chains per k-step instead of 8
 * for the tensor pipe to overlap. */
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

/* Two independent products in one loop: o1 [D/8][4] += P1 · Y1 and o2 +=
 * P2 · Y2, where P (16 x 64) is in accumulator registers p[8][4] and Y is a
 * 64 x D tile stored k-major (rows = the 64 summed positions): the
 * backward's dV += Pᵀ dO and dK += dSᵀ Q. Per accumulator the mma sequence of
 * one product alone, 32 independent chains per k-step. */
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
 * kernel does (its dQ kernel reads the dS tiles the dK/dV kernel wrote). */
__device__ __forceinline__ int end_query_tile(int k0, int nT, int window)
{
    if (window <= 0) return nT;
    int e = (k0 + MB - 1 + window + MB - 1) / MB;
    return e < nT ? e : nT;
}

/* The (pair, tile) coordinates of a backward block in the L2-friendly order:
 * a grid of x = tiles by y, z = pairs (pair = y + gridDim.y·z; a pair = a
 * (sequence, kv head) pair or a query head), so the blocks in flight are all
 * tiles of a few pairs and read each operand tile from DRAM about once. (x =
 * pairs fastest, the hardware's issue order, left every pair's operand tiles
 * to be evicted from the 50 MB L2 before its next tile's block read them:
 * 4.3 GB of DRAM reads per kernel at B 8, T 2048, 32 heads, head_dim 128.)
 * Reads only blockIdx and gridDim, which the compiler can re-read instead of
 * keeping in registers. */
__device__ __forceinline__ void block_coords(unsigned &pair, unsigned &y)
{
    pair = blockIdx.y + gridDim.y * blockIdx.z, y = blockIdx.x;
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

/* Rows [t0, t0 + 64) of one head of x [B, T, H, D] (bf16) into a tile of
 * pitch D + 8 through cp.async (no wait), rows at or past T zero-filled.
 * (A version with the thread count as a template constant, an unrolled
 * loop and the index math folded into a base pointer and row stride made
 * ptxas give the kernels 24-26 more registers and spills: not taken without
 * a GPU to measure it.) */
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

/* A 64 x 64 bf16 tile stored contiguously (8 KB: the stored dS tiles)
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

/* One key tile of the forward's online softmax for 16 query rows
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

/* Pᵀ in the dK/dV kernel: p holds Sᵀ (raw scores) of this lane's keys key0,
 * key0 + 8 against queries q0 + 8n + 2t + (e & 1) and leaves as the
 * probabilities 2^(s·scale2 − L·lmul) (0 where not visible); L: the query
 * tile's lse rows, times lmul (log2 e) in log2 units. */
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

/* ---- the backward: dS stored once, dQ without recomputation -------------------------
 * The dK/dV kernel needs Sᵀ, Pᵀ, dPᵀ and dSᵀ (4 tile products per step with
 * dV and dK); a dQ kernel recomputing S and dP from Q, K, V, dO to get dS for
 * dQ = dS K would take 3 more: 7 products where 5 are the work. Instead the
 * dK/dV kernel stores each dS tile it computes (bf16: the values its dK
 * product rounds to anyway) in a scratch area, and the dQ kernel only
 * streams dS tiles and K tiles through one product per step, in key-tile
 * order: one writer per dq element, deterministic. The price is the
 * scratch: one 8 KB tile per (query head, query tile, key tile <= query
 * tile), 1.1 GB at B 8, T 2048, 32 heads (allocated once and kept; the launch
 * splits into chunks of (sequence, kv head) pairs when it exceeds the
 * budget, ar_cuda_set_flash_ds_budget).
 *
 * A dS tile is stored as 64 8x8 matrices of 128 bytes each: matrix kb·8 + n
 * holds dSᵀ rows (keys) 8kb .. 8kb + 7 by columns (queries) 8n .. 8n + 7,
 * row-major. In the dK/dV kernel's accumulator layout lane 4g + t holds
 * exactly row g, columns 2t, 2t + 1 of such a matrix, so each warp store of
 * a 32-bit pair fills one 128-byte line; in the dQ kernel, ldmatrix.trans
 * of four such matrices (128 contiguous bytes each: conflict-free) gives
 * the A operand of dS. */

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

/* dK, dV per (64-key tile, kv head): the grid's x is the key tile, y the
 * (sequence, kv head) pair counted from p0 (pair = b·NKV + kvh; launches run
 * in chunks of pairs), in block_coords' order. Each step (query head r of the
 * group, query tile i) stores its dS tile to dS at chunk-local query head
 * (pair − p0)·group + r for k_bwd_dq. */
template <int D>
__global__ void __launch_bounds__(MTHREADS, 2) k_bwd_kv(float *dk, float *dv, bf16 *dS, const bf16 *q, const bf16 *k,
                                                        const bf16 *v, const bf16 *dob, const float *lse,
                                                        const float *Drow, int T, int NH, int NKV, int window,
                                                        float scale, int p0, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    unsigned lp, y;
    block_coords(lp, y);
    const int j = y, group = NH / NKV, nT = (T + MB - 1) / MB, pair = p0 + lp, kvh = pair % NKV, b = pair / NKV;
    const int k0 = j * MB, key0 = k0 + 16 * w + g; /* this lane's keys key0, key0 + 8 */
    const float scale2 = scale * AR_LOG2E;
    const long ntri = (long)nT * (nT + 1) / 2;
    bf16 *Ks = (bf16 *)smem, *Vs = Ks + TS, *Qs = Vs + TS, *dOs = Qs + 2 * TS; /* Q, dO: two buffers each */
    float *Ls = (float *)(dOs + 2 * TS), *Ds = Ls + 2 * MB;
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
        /* Sᵀ (this warp's keys x 64 queries) and dPᵀ = V dOᵀ together */
        rows_times_tiles_t2<D>(p, Ks, Qc, dp, Vs, dOc, 16 * w, lane);
        kv_probs(p, Lc, AR_LOG2E, tile_visible(q0, k0, T, window), q0, key0, t, T, window, scale2);
        kv_dst(dp, p, Dc, t, scale);
        store_ds_tile(dS + ds_tile_at(lp * group + st / ni, ntri, i, j), dp, w, lane);
        acc_times_tiles2<D>(dV, p, dOc, dK, dp, Qc, lane); /* dV += Pᵀ dO, dK += dSᵀ Q */
        /* every warp is done with this step's Q, dO, lse, D (refilled by the
         * next step's prefetch) */
        __syncthreads();
    }
    add_acc_rows<D>(dk, dK, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
    add_acc_rows<D>(dv, dV, b, k0 + 16 * w, T, NKV, kvh, lane, accumulate);
}

/* dQ per (128 query rows = query tiles ia = 2·(nP − 1 − y) and ia + 1,
 * query head): dQ += dS K over the key tiles in order, dS from the tiles
 * k_bwd_kv stored (chunk-local head lh = (pair − p0)·group + r; blocks in
 * block_coords' order), double-buffered with cp.async. Each warp takes 32
 * rows of one query tile (warps 0, 1: tile ia; 2, 3: ia + 1) as two 16-row
 * units that share every K fragment: 10 ldmatrix per 16 mma (16 rows per
 * warp read 9 per 8 and were bound by shared memory). A warp pair skips the
 * key tiles its query tile does not see (after its diagonal, before its
 * window), whose dS tiles were never stored; the block loads a dS tile only
 * for a pair that reads it. Shared memory: two K tiles, two dS tiles per
 * query tile (67 KB at head_dim 128). */
template <int D>
__global__ void __launch_bounds__(MTHREADS, 3) k_bwd_dq(float *dq, const bf16 *k, const bf16 *dS, int T, int NH,
                                                        int NKV, int window, int p0, int accumulate)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned lh, y;
    block_coords(lh, y);
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

/* ---- the forward: 128-row query tiles, 32 rows per warp ------------------------------
 * A block of four warps takes 128 query rows, each warp 32 (two 16-row
 * units, u = 0, 1, that share every K/V fragment: four mma per ldmatrix of K
 * or V, where 16 rows per warp gave two, and half the K/V traffic per flop
 * from L2 and shared memory), the layout of FlashAttention-2's forward. K and
 * V tiles are double-buffered with cp.async. Q stays in shared memory (34 KB
 * at head_dim 128; in registers it would take 64 of them) and is re-read per
 * key tile as A fragments. The row maximum is taken on the raw scores so a
 * probability costs one FFMA and one EX2 (softmax_tile); a warp skips key
 * tiles after its rows or before its window. Registers: o 2 x D/2, s 2 x 32
 * per lane; two blocks per SM (Q + two K/V buffers: 6 tiles, 104 KB at 128). */
template <int D>
__global__ void __launch_bounds__(MTHREADS, 2) k_fwd(bf16 *out_b, float *out_f, float *lse, const bf16 *q,
                                                     const bf16 *k, const bf16 *v, int T, int NH, int NKV, int window,
                                                     float scale)
{
    extern __shared__ __align__(128) char smem[];
    const int LD = D + 8, TS = MB * LD, QR = 2 * MB, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2,
              t = lane & 3;
    /* grid (query tiles, NH, B): the L2-friendly order of block_coords */
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

/* Allow a kernel its dynamic shared memory and ask for the largest
 * shared-memory carveout (a host call: once per kernel): the kernels want
 * two or three blocks of 66-104 KB per SM. */
template <typename K> int allow_smem_max(K kernel, size_t bytes, bool *done)
{
    if (!*done) {
        AR_CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        AR_CK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    }
    *done = true;
    return 0;
}

/* Q (2 tiles) + two K/V buffers. */
template <int D>
int fwd_launch(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
               int B, int T, int NH, int NKV, int window)
{
    static bool ready;
    const float scale = 1.0f / sqrtf((float)D);
    size_t sm = tiles_smem<D>(6);
    if (allow_smem_max(k_fwd<D>, sm, &ready)) return -1;
    k_fwd<D><<<dim3((T + 127) / 128, NH, B), MTHREADS, sm, g_cu.st>>>((bf16 *)out_b, out_f, lse, (const bf16 *)q,
                                                                      (const bf16 *)k, (const bf16 *)v, T, NH, NKV,
                                                                      window, scale);
    return ar_cuda_check_launch("flash attention forward");
}

/* The backward's dS scratch: allocated on first use, grown when a larger
 * launch needs more, kept until the process ends (ar_cuda_set_flash_ds_budget
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

/* k_bwd_kv storing dS, then k_bwd_dq, per chunk of (sequence, kv head)
 * pairs that fits the budget. K, V, two Q, two dO, two lse and D rows; two K
 * tiles and four dS tiles. */
template <int D>
int bwd_launch(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow, const float *lse,
               const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int NH, int NKV, int window,
               int accumulate)
{
    static bool ready_kv, ready_dq;
    const float scale = 1.0f / sqrtf((float)D);
    const int nT = (T + MB - 1) / MB, group = NH / NKV;
    const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v, *dd = (const bf16 *)dob;
    size_t s1 = tiles_smem<D>(6) + 4 * MB * sizeof(float), s2 = tiles_smem<D>(2) + 4 * DS_TILE * sizeof(bf16);
    if (allow_smem_max(k_bwd_kv<D>, s1, &ready_kv) || allow_smem_max(k_bwd_dq<D>, s2, &ready_dq)) return -1;
    const long pairs = (long)B * NKV, ntri = (long)nT * (nT + 1) / 2;
    bf16 *ds;
    long chunk;
    if (ds_scratch((size_t)group * ntri * DS_TILE * sizeof(bf16), pairs, &ds, &chunk)) return -1;
    if (chunk > 65535 / group) chunk = 65535 / group; /* the grids' y: chunk·group query heads */
    for (long p0 = 0; p0 < pairs; p0 += chunk) {
        int np = (int)(pairs - p0 < chunk ? pairs - p0 : chunk);
        k_bwd_kv<D><<<dim3(nT, np), MTHREADS, s1, g_cu.st>>>(dk, dv, ds, qq, kk, vv, dd, lse, Drow, T, NH, NKV, window,
                                                             scale, (int)p0, accumulate);
        k_bwd_dq<D><<<dim3((nT + 1) / 2, np * group), MTHREADS, s2, g_cu.st>>>(dq, kk, ds, T, NH, NKV, window, (int)p0,
                                                                               accumulate);
    }
    return ar_cuda_check_launch("flash attention backward");
}
} // namespace

int ar_cuda_flash_mma_forward(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                              const uint16_t *v, int B, int T, int NH, int NKV, int HD, int window)
{
    switch (HD) {
    case 32: return fwd_launch<32>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 64: return fwd_launch<64>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 80: return fwd_launch<80>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 96: return fwd_launch<96>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    case 128: return fwd_launch<128>(out_b, out_f, lse, q, k, v, B, T, NH, NKV, window);
    default: return ar_cuda_fail("flash attention: head_dim %d not supported", HD);
    }
}

int ar_cuda_flash_mma_backward(float *dq, float *dk, float *dv, const uint16_t *dob, const float *Drow,
                               const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                               int NH, int NKV, int HD, int window, int accumulate)
{
    switch (HD) {
    case 32: return bwd_launch<32>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate);
    case 64: return bwd_launch<64>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate);
    case 80: return bwd_launch<80>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate);
    case 96: return bwd_launch<96>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate);
    case 128: return bwd_launch<128>(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, window, accumulate);
    default: return ar_cuda_fail("flash attention: head_dim %d not supported", HD);
    }
}

void ar_cuda_set_flash_ds_budget(long bytes) { g_ds_budget = bytes > 0 ? (size_t)bytes : (size_t)2 << 30; }
