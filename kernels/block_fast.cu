/* block_fast.cu — the fast block path (see ar_cuda.h): the tuner's path for
 * bf16 GEMMs and a flash head_dim. The dataflow of block.cu with every
 * matrix-product operand stored in bf16 and
 * multiplied natively (cublasGemmEx bf16 x bf16 -> f32), elementwise ops that
 * write the bf16 operand their consumer needs directly (RMSNorm, SwiGLU and
 * its backward, RoPE), residuals folded into the GEMMs (beta = 1 on a copy of
 * the skip input), and flash attention (flash.cu) instead of stored
 * probabilities. What stays f32: the residual stream, the GEMM outputs, the
 * normalization statistics and every accumulated gradient, as in the BF16
 * mode of the general path, whose operands cuBLAS rounds to bf16 the same
 * way (round to nearest even).
 * Activation quantization (quant_act.cuh, installed through block.cu) works
 * on the bf16 inputs: a quantized linear multiplies by bf16(q(x_bf16)), its
 * own copy, in the forward and in its dW GEMM. The general path's BF16 mode
 * quantizes the f32 input instead (bf16(q(x)) after cuBLAS' rounding), the
 * CPU q(x) in f32: see kernels/README.md for what that difference does. */
#include "internal.cuh"
#include "quant_act.cuh"
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { LQ, LK, LV, LO, LGATE, LUP, LDOWN };
typedef __nv_bfloat16 bf16;

/* ---- fused elementwise kernels ------------------------------------------------
 * Two sets. The scalar kernels (the first design: grid-stride loops, one
 * element per thread, 64-bit index math per element) are the fallback for
 * shapes and pointers the vector kernels do not take (unaligned pointers,
 * widths not a multiple of 4, RMSNorm rows over 8192). The vector kernels
 * move 16-byte f32 and 8-byte bf16
 * groups, walk rows with one block per row or 2-D grids (no 64-bit division
 * per element), keep a row in registers between a norm's reduction and its
 * output (one read of x), and fuse passes: the first RMSNorm reads the bf16
 * samples through their index, the second one's backward adds the residual
 * and writes dh in bf16, the loss writes dy in f32 and bf16. Every element
 * is the same expression in the same order as in the scalar kernel
 * (-fmad=false: no contraction either) and each thread of a row reduction
 * sums the same elements in the same order, so both sets give the same bits
 * (the loss total excepted: a double sum over blocks, grouped differently
 * and already ordered by atomics). */

static int row_threads(int C)
{
    int t = 32;
    while (t < C && t < 256) t *= 2;
    return t;
}

/* p is a multiple of a bytes (a power of two). */
static bool aligned(const void *p, unsigned a) { return ((uintptr_t)p & (a - 1)) == 0; }

__device__ inline unsigned bf16_bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

/* Four values rounded to bf16 (as __float2bfloat16_rn), lowest address first. */
__device__ inline uint2 pack_bf16x4(float a, float b, float c, float d)
{
    return make_uint2(bf16_bits(a) | bf16_bits(b) << 16, bf16_bits(c) | bf16_bits(d) << 16);
}

/* A hint that p (global memory) is read soon: no effect on any value. */
__device__ inline void prefetch_l2(const void *p)
{
    asm volatile("{\n\t.reg .u64 g;\n\tcvta.to.global.u64 g, %0;\n\tprefetch.global.L2 [g];\n\t}" ::"l"(p));
}

/* bf16 bits to f32, exact (ops.cu's k_from_bf16). */
__device__ inline float widen(uint16_t v) { return __uint_as_float((unsigned)v << 16); }
__device__ inline float widen(float v) { return v; }
__device__ inline float4 widen4(uint2 u)
{
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                       __uint_as_float(u.y & 0xffff0000u));
}

/* Sample indices of one launch, passed by value (about 1 KB of kernel
 * parameters): row r of the batch is token r % T of sample idx[r / T] of a
 * source [*, T, ...]. Larger batches take several launches. */
enum { SAMPLES_PER_LAUNCH = 240 };
struct sample_rows {
    int T;
    int idx[SAMPLES_PER_LAUNCH];
};

__device__ inline long source_row(const sample_rows &s, int r)
{
    int b = r / s.T;
    return (long)s.idx[b] * s.T + (r - b * s.T);
}

/* Samples s0 .. s0 + n - 1 of idx (host; NULL: the batch's own order). */
static sample_rows samples_of(const int *idx, int s0, int n, int T)
{
    sample_rows s;
    memset(&s, 0, sizeof s);
    s.T = T;
    for (int k = 0; k < n; k++) s.idx[k] = idx ? idx[s0 + k] : s0 + k;
    return s;
}

/* Samples in the launch starting at s0 of a batch of B. */
static int launch_samples(int B, int s0) { return B - s0 < SAMPLES_PER_LAUNCH ? B - s0 : SAMPLES_PER_LAUNCH; }

/* Rows of an RMSNorm input: f32 rows of C, or bf16 sample rows through their index. */
struct f32_rows {
    const float *x;
    int C;
    __device__ const float *row(int r) const { return x + (long)r * C; }
};
struct bf16_rows {
    const uint16_t *src;
    int C;
    sample_rows s;
    __device__ const uint16_t *row(int r) const { return src + source_row(s, r) * C; }
};

/* ---- RMSNorm forward ---- */

/* Same formula and reduction as ops.cu's k_rmsnorm_fwd; only the store
 * differs. c1, c2 (either may be NULL) receive copies of x: the fast block
 * keeps its input and starts its residual sums while x is read anyway. */
__global__ void k_rmsnorm_fwd_bf16(bf16 *out, float *rstd, const float *x, const float *w, int C, float eps, float *c1,
                                   float *c2)
{
    __shared__ double shm[32];
    long off = (long)blockIdx.x * C;
    const float *xr = x + off;
    bf16 *o = out + off;
    double ss = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = ar_block_sum(ss, shm);
    float s = 1.0f / sqrtf((float)(ss / C) + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = s;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = xr[i];
        if (c1) c1[off + i] = v;
        if (c2) c2[off + i] = v;
        o[i] = __float2bfloat16_rn((v * s) * w[i]);
    }
}

/* k_rmsnorm_fwd_bf16 with the row held in registers, read from f32 rows or
 * bf16 sample rows: TPB (= blockDim.x, row_threads(C)) threads of NPT
 * elements, thread t holding elements t + j·TPB and summing them in that
 * order, as there. TPB is a constant so that the NPT addresses are one
 * register plus immediate offsets. */
template <int NPT, int TPB, typename Rows>
__global__ void __launch_bounds__(TPB) k_rmsnorm_fwd_regs(bf16 *out, float *rstd, Rows x, const float *w, int C,
                                                          float eps, float *c1, float *c2)
{
    __shared__ double shm[32];
    long off = (long)blockIdx.x * C;
    const auto *xr = x.row(blockIdx.x);
    float v[NPT];
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        int i = threadIdx.x + j * TPB;
        v[j] = i < C ? widen(xr[i]) : 0.0f;
    }
    double ss = 0;
#pragma unroll
    for (int j = 0; j < NPT; j++)
        if ((int)threadIdx.x + j * TPB < C) ss += (double)v[j] * v[j];
    ss = ar_block_sum(ss, shm);
    float s = 1.0f / sqrtf((float)(ss / C) + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = s;
    bf16 *o = out + off;
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        int i = threadIdx.x + j * TPB;
        if (i >= C) continue;
        if (c1) c1[off + i] = v[j];
        if (c2) c2[off + i] = v[j];
        o[i] = __float2bfloat16_rn((v[j] * s) * w[i]);
    }
}

/* Elements per thread the register kernels need for rows of C over
 * row_threads(C) threads, rounded up to an instance (1, 2, 4, 8, then
 * multiples of 4 to 24, then 32: C = 5120 holds 20, not 32, registers); 0
 * when a row is longer (C > 8192: the looping kernels take it). */
static int row_regs(int C)
{
    int t = row_threads(C), need = (C + t - 1) / t;
    if (need > 32) return 0;
    if (need > 24) return 32;
    if (need > 8) return (need + 3) / 4 * 4;
    int n = 1;
    while (n < need) n *= 2;
    return n;
}

/* The register kernel for rows of C: npt = row_regs(C) elements per thread
 * over row_threads(C) threads (below 256 threads a row has one each). */
template <typename Rows>
static void rmsnorm_regs(int npt, bf16 *out, float *rstd, const Rows &x, const float *w, int R, int C, float eps,
                         float *c1, float *c2)
{
    switch (row_threads(C) < 256 ? -row_threads(C) : npt) {
    case -32: k_rmsnorm_fwd_regs<1, 32, Rows><<<R, 32, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case -64: k_rmsnorm_fwd_regs<1, 64, Rows><<<R, 64, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case -128: k_rmsnorm_fwd_regs<1, 128, Rows><<<R, 128, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 1: k_rmsnorm_fwd_regs<1, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 2: k_rmsnorm_fwd_regs<2, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 4: k_rmsnorm_fwd_regs<4, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 8: k_rmsnorm_fwd_regs<8, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 12: k_rmsnorm_fwd_regs<12, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 16: k_rmsnorm_fwd_regs<16, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 20: k_rmsnorm_fwd_regs<20, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    case 24: k_rmsnorm_fwd_regs<24, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    default: k_rmsnorm_fwd_regs<32, 256, Rows><<<R, 256, 0, g_cu.st>>>(out, rstd, x, w, C, eps, c1, c2); break;
    }
}

/* RMSNorm of x [R, C] into out (bf16) and rstd; c1 and c2 (either may be
 * NULL) receive copies of x. */
static void rmsnorm_bf16_copying(uint16_t *out, float *rstd, const float *x, const float *w, int R, int C, float eps,
                                 float *c1, float *c2)
{
    if (R <= 0) return;
    int npt = row_regs(C);
    if (npt) {
        f32_rows xr = {x, C};
        rmsnorm_regs(npt, (bf16 *)out, rstd, xr, w, R, C, eps, c1, c2);
    } else {
        k_rmsnorm_fwd_bf16<<<R, row_threads(C), 0, g_cu.st>>>((bf16 *)out, rstd, x, w, C, eps, c1, c2);
    }
}

void ar_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const float *w, int R, int C, float eps)
{
    rmsnorm_bf16_copying(out, rstd, x, w, R, C, eps, NULL, NULL);
}

/* RMSNorm of B bf16 samples of T rows of C (sample b at src + idx[b]·T·C;
 * idx host, NULL: b) into out (bf16) and rstd, x widened into c (may be
 * NULL); the vector kernels only (row_regs(C) != 0). */
static void rmsnorm_samples_bf16(uint16_t *out, float *rstd, const uint16_t *src, const int *idx, int B, int T,
                                 const float *w, int C, float eps, float *c)
{
    int npt = row_regs(C);
    for (int s0 = 0; s0 < B; s0 += SAMPLES_PER_LAUNCH) {
        int n = launch_samples(B, s0);
        long r0 = (long)s0 * T;
        bf16_rows x = {src, C, samples_of(idx, s0, n, T)};
        rmsnorm_regs(npt, (bf16 *)out + r0 * C, rstd + r0, x, w, n * T, C, eps, c ? c + r0 * C : NULL, NULL);
    }
}

/* ---- RMSNorm backward with the residual ---- */

/* dh = resid + s·dout·w − (Σ dout·w·x)·s³/C · x per row, stored in bf16
 * (dhb) and, when dhf is not NULL, in f32: ops.cu's k_rmsnorm_bwd adding to
 * a copy of resid, followed by the narrowing to bf16, in one pass. */
__global__ void k_rmsnorm_bwd_resid(bf16 *dhb, float *dhf, const float *resid, const float *dout, const float *x,
                                    const float *w, const float *rstd, int C)
{
    __shared__ double shm[32];
    long off = (long)blockIdx.x * C;
    const float *xr = x + off, *dr = dout + off;
    float s = rstd[blockIdx.x];
    double dot = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dot += (double)dr[i] * w[i] * xr[i];
    dot = ar_block_sum(dot, shm);
    float k = (float)(dot * s * s * s / C);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = resid[off + i] + (s * dr[i] * w[i] - k * xr[i]);
        dhb[off + i] = __float2bfloat16_rn(v);
        if (dhf) dhf[off + i] = v;
    }
}

/* k_rmsnorm_bwd_resid with dout and x held in registers (as k_rmsnorm_fwd_regs). */
template <int NPT, int TPB>
__global__ void __launch_bounds__(TPB) k_rmsnorm_bwd_regs(bf16 *dhb, float *dhf, const float *resid,
                                                          const float *dout, const float *x, const float *w,
                                                          const float *rstd, int C)
{
    __shared__ double shm[32];
    long off = (long)blockIdx.x * C;
    float d[NPT], xv[NPT];
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        int i = threadIdx.x + j * TPB;
        d[j] = i < C ? dout[off + i] : 0.0f;
        xv[j] = i < C ? x[off + i] : 0.0f;
        /* resid is read after the reduction: have it in L2 by then */
        if (i < C) prefetch_l2(resid + off + i);
    }
    float s = rstd[blockIdx.x];
    double dot = 0;
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        int i = threadIdx.x + j * TPB;
        if (i < C) dot += (double)d[j] * w[i] * xv[j];
    }
    dot = ar_block_sum(dot, shm);
    float k = (float)(dot * s * s * s / C);
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        int i = threadIdx.x + j * TPB;
        if (i >= C) continue;
        float v = resid[off + i] + (s * d[j] * w[i] - k * xv[j]);
        dhb[off + i] = __float2bfloat16_rn(v);
        if (dhf) dhf[off + i] = v;
    }
}

/* dhb (and dhf when not NULL) = resid + the RMSNorm backward of dout [R, C]. */
static void rmsnorm_bwd_resid(uint16_t *dhb, float *dhf, const float *resid, const float *dout, const float *x,
                              const float *w, const float *rstd, int R, int C)
{
    if (R <= 0) return;
    int t = row_threads(C);
    bf16 *o = (bf16 *)dhb;
    /* rows under 256 threads (C <= 128) are too short to matter: the looping kernel */
    switch (t < 256 ? 0 : row_regs(C)) {
    case 1: k_rmsnorm_bwd_regs<1, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 2: k_rmsnorm_bwd_regs<2, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 4: k_rmsnorm_bwd_regs<4, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 8: k_rmsnorm_bwd_regs<8, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 12: k_rmsnorm_bwd_regs<12, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 16: k_rmsnorm_bwd_regs<16, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 20: k_rmsnorm_bwd_regs<20, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 24: k_rmsnorm_bwd_regs<24, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    case 32: k_rmsnorm_bwd_regs<32, 256><<<R, 256, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    default: k_rmsnorm_bwd_resid<<<R, t, 0, g_cu.st>>>(o, dhf, resid, dout, x, w, rstd, C); break;
    }
}

/* ---- SwiGLU ---- */

__device__ inline float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* The gradients at gate and up of silu(g)·u for the gradient d at its output. */
__device__ inline void swiglu_grads(float d, float g, float u, float &dg, float &du)
{
    float sg = 1.0f / (1.0f + expf(-g));
    dg = d * u * sg * (1.0f + g * (1.0f - sg));
    du = d * g * sg;
}

__global__ void k_swiglu_fwd_bf16(bf16 *out, const float *gate, const float *up, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(swiglu_value(gate[i], up[i]));
}

/* Four elements per thread (gate, up 16-byte aligned, out 8-byte aligned);
 * the last n % 4 one by one. */
__global__ void k_swiglu_fwd_v4(bf16 *out, const float *gate, const float *up, long n)
{
    long n4 = n / 4, t0 = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    for (long v = t0; v < n4; v += stride) {
        float4 g = ((const float4 *)gate)[v], u = ((const float4 *)up)[v];
        ((uint2 *)out)[v] = pack_bf16x4(swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
                                        swiglu_value(g.w, u.w));
    }
    for (long i = 4 * n4 + t0; i < n; i += stride) out[i] = __float2bfloat16_rn(swiglu_value(gate[i], up[i]));
}

void ar_cuda_swiglu_forward_bf16(uint16_t *out, const float *gate, const float *up, long n)
{
    if (n <= 0) return;
    if (aligned(gate, 16) && aligned(up, 16) && aligned(out, 8))
        k_swiglu_fwd_v4<<<ar_blocks((n + 3) / 4, 256), 256, 0, g_cu.st>>>((bf16 *)out, gate, up, n);
    else
        k_swiglu_fwd_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>((bf16 *)out, gate, up, n);
}

/* Inputs are n = rows x F contiguous; output row r starts at r·ld (ld = F:
 * contiguous; the fast block writes dgate and dup side by side, ld = 2F, so
 * one GEMM over K = 2F gives their input gradient). */
__global__ void k_swiglu_bwd_bf16(bf16 *dgate, bf16 *dup, const float *dout, const float *gate, const float *up,
                                  long n, long F, long ld)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float dg, du;
        swiglu_grads(dout[i], gate[i], up[i], dg, du);
        long o = ld == F ? i : i / F * ld + i % F;
        dgate[o] = __float2bfloat16_rn(dg);
        dup[o] = __float2bfloat16_rn(du);
    }
}

/* k_swiglu_bwd_bf16 over R rows of F (F, ld multiples of 4; inputs 16-byte,
 * outputs 8-byte aligned): rows along y, four columns per thread along x. */
__global__ void k_swiglu_bwd_rows_v4(bf16 *dgate, bf16 *dup, const float *dout, const float *gate, const float *up,
                                     long R, int F, long ld)
{
    int F4 = F / 4;
    for (long r = blockIdx.y; r < R; r += gridDim.y) {
        const float4 *d4 = (const float4 *)(dout + r * F), *g4 = (const float4 *)(gate + r * F),
                     *u4 = (const float4 *)(up + r * F);
        uint2 *og = (uint2 *)(dgate + r * ld), *ou = (uint2 *)(dup + r * ld);
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < F4; c += gridDim.x * blockDim.x) {
            float4 d = d4[c], g = g4[c], u = u4[c], dg, du;
            swiglu_grads(d.x, g.x, u.x, dg.x, du.x);
            swiglu_grads(d.y, g.y, u.y, dg.y, du.y);
            swiglu_grads(d.z, g.z, u.z, dg.z, du.z);
            swiglu_grads(d.w, g.w, u.w, dg.w, du.w);
            og[c] = pack_bf16x4(dg.x, dg.y, dg.z, dg.w);
            ou[c] = pack_bf16x4(du.x, du.y, du.z, du.w);
        }
    }
}

/* dgate, dup rows of F at pitch ld (bf16) from dout, gate, up [R, F]. */
static void swiglu_backward_pitched(bf16 *dgate, bf16 *dup, const float *dout, const float *gate, const float *up,
                                    long R, long F, long ld)
{
    long n = R * F;
    if (n <= 0) return;
    if (F % 4 == 0 && ld % 4 == 0 && F / 4 <= 0x7fffffffL && aligned(dout, 16) && aligned(gate, 16) &&
        aligned(up, 16) && aligned(dgate, 8) && aligned(dup, 8)) {
        long bx = (F / 4 + 255) / 256;
        dim3 grid((unsigned)(bx < 65535L * 8 ? bx : 65535L * 8), (unsigned)(R < 65535 ? R : 65535));
        k_swiglu_bwd_rows_v4<<<grid, 256, 0, g_cu.st>>>(dgate, dup, dout, gate, up, R, (int)F, ld);
    } else {
        k_swiglu_bwd_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dgate, dup, dout, gate, up, n, F, ld);
    }
}

void ar_cuda_swiglu_backward_bf16(uint16_t *dgate, uint16_t *dup, const float *dout, const float *gate,
                                  const float *up, long n)
{
    swiglu_backward_pitched((bf16 *)dgate, (bf16 *)dup, dout, gate, up, 1, n, n);
}

/* dgu [R, 2F] (bf16) = [dgate | dup] of R rows of F. */
static void swiglu_backward_rows(uint16_t *dgu, const float *dout, const float *gate, const float *up, long R, long F)
{
    swiglu_backward_pitched((bf16 *)dgu, (bf16 *)dgu + F, dout, gate, up, R, F, 2 * F);
}

/* ---- RoPE ---- */

/* ops.cu's k_rope, reading x and writing the rotated pair to dst in bf16. */
__global__ void k_rope_bf16(bf16 *dst, const float *x, const float *cos_t, const float *sin_t, long rows, int T, int H,
                            int HD, float sign)
{
    int H2 = HD / 2;
    long n = rows * H * H2;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int d = (int)(i % H2);
        long rh = i / H2;
        int t = (int)((rh / H) % T);
        float c = cos_t[(long)t * H2 + d], s = sign * sin_t[(long)t * H2 + d];
        const float *v = x + rh * HD;
        float x0 = v[d], x1 = v[d + H2];
        dst[rh * HD + d] = __float2bfloat16_rn(x0 * c - x1 * s);
        dst[rh * HD + d + H2] = __float2bfloat16_rn(x1 * c + x0 * s);
    }
}

/* k_rope_bf16 with one block per row of H heads (position t = row % T once
 * per row) and four pairs (d, d + HD/2) per thread: HD/2 a multiple of 4,
 * x and the tables 16-byte aligned, dst 8-byte aligned. */
__global__ void k_rope_rows_v4(bf16 *dst, const float *x, const float *cos_t, const float *sin_t, long rows, int T,
                               int H, int HD, float sign)
{
    int H2 = HD / 2, Q = H2 / 4, nv = H * Q;
    for (long r = blockIdx.x; r < rows; r += gridDim.x) {
        int t = (int)(r % T);
        const float4 *c4 = (const float4 *)(cos_t + (long)t * H2), *s4 = (const float4 *)(sin_t + (long)t * H2);
        for (int v = threadIdx.x; v < nv; v += blockDim.x) {
            int h = v / Q, q = v - h * Q;
            long o = (r * H + h) * HD + 4 * q;
            float4 a = *(const float4 *)(x + o), b = *(const float4 *)(x + o + H2), c = c4[q], sn = s4[q];
            float s0 = sign * sn.x, s1 = sign * sn.y, s2 = sign * sn.z, s3 = sign * sn.w;
            *(uint2 *)(dst + o) =
                pack_bf16x4(a.x * c.x - b.x * s0, a.y * c.y - b.y * s1, a.z * c.z - b.z * s2, a.w * c.w - b.w * s3);
            *(uint2 *)(dst + o + H2) =
                pack_bf16x4(b.x * c.x + a.x * s0, b.y * c.y + a.y * s1, b.z * c.z + a.z * s2, b.w * c.w + a.w * s3);
        }
    }
}

void ar_cuda_rope_bf16(uint16_t *dst, const float *x, const float *cos_t, const float *sin_t, int B, int T, int H,
                       int HD, int inverse)
{
    long rows = (long)B * T, n = rows * H * (HD / 2);
    float sign = inverse ? -1.0f : 1.0f;
    if (n <= 0) return;
    if ((HD / 2) % 4 == 0 && aligned(x, 16) && aligned(cos_t, 16) && aligned(sin_t, 16) &&
        aligned(dst, 8)) {
        int nv = H * (HD / 8), threads = nv >= 256 ? 256 : (nv + 31) / 32 * 32;
        unsigned blocks = (unsigned)(rows < 65535L * 8 ? rows : 65535L * 8);
        k_rope_rows_v4<<<blocks, threads, 0, g_cu.st>>>((bf16 *)dst, x, cos_t, sin_t, rows, T, H, HD, sign);
    } else {
        k_rope_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>((bf16 *)dst, x, cos_t, sin_t, rows, T, H, HD, sign);
    }
}

/* ---- f32 -> bf16 copies ---- */

__global__ void k_copy_to_bf16(float *dst_f, bf16 *dst_b, const float *src, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v = src[i];
        if (dst_f) dst_f[i] = v;
        dst_b[i] = __float2bfloat16_rn(v);
    }
}

/* Four elements per thread (src, dst_f 16-byte aligned, dst_b 8-byte); the
 * last n % 4 one by one. */
__global__ void k_copy_to_bf16_v4(float *dst_f, bf16 *dst_b, const float *src, long n)
{
    long n4 = n / 4, t0 = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    for (long v = t0; v < n4; v += stride) {
        float4 a = ((const float4 *)src)[v];
        if (dst_f) ((float4 *)dst_f)[v] = a;
        ((uint2 *)dst_b)[v] = pack_bf16x4(a.x, a.y, a.z, a.w);
    }
    for (long i = 4 * n4 + t0; i < n; i += stride) {
        if (dst_f) dst_f[i] = src[i];
        dst_b[i] = __float2bfloat16_rn(src[i]);
    }
}

void ar_cuda_copy_to_bf16(float *dst_f, uint16_t *dst_b, const float *src, long n)
{
    if (n <= 0) return;
    if (aligned(src, 16) && aligned(dst_f, 16) && aligned(dst_b, 8))
        k_copy_to_bf16_v4<<<ar_blocks((n + 3) / 4, 256), 256, 0, g_cu.st>>>(dst_f, (bf16 *)dst_b, src, n);
    else
        k_copy_to_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dst_f, (bf16 *)dst_b, src, n);
}

/* ---- masked MSE from bf16 references ---- */

/* quant.cu's k_masked_mse over whole rows (a block per row at a time) with
 * the reference row read in bf16 through the sample index and the mask row
 * through its own; dpred = g·e written in f32 and, when dpred_b is not
 * NULL, in bf16. VEC: four elements per access (C a multiple of 4, f32
 * 16-byte and bf16 8-byte aligned). Masked rows read nothing and write
 * zeros. */
template <bool VEC>
__global__ void k_mse_rows(const float *pred, const uint16_t *ref, sample_rows refs, const uint8_t *mask,
                           sample_rows masks, int rows, int C, float g, double denom, float *dpred, bf16 *dpred_b,
                           double *loss_acc)
{
    __shared__ double shm[32];
    double acc = 0;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        long o = (long)r * C;
        const uint16_t *y = ref + source_row(refs, r) * C;
        bool keep = !mask || mask[source_row(masks, r)];
        if (VEC) {
            const float4 *p4 = (const float4 *)(pred + o);
            const uint2 *y4 = (const uint2 *)y;
            float4 *d4 = (float4 *)(dpred + o);
            uint2 *b4 = dpred_b ? (uint2 *)(dpred_b + o) : NULL;
#pragma unroll 4
            for (int c = threadIdx.x; c < C / 4; c += blockDim.x) {
                float4 d = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (keep) {
                    float4 p = p4[c], q = widen4(y4[c]);
                    float e0 = p.x - q.x, e1 = p.y - q.y, e2 = p.z - q.z, e3 = p.w - q.w;
                    acc += (double)e0 * e0;
                    acc += (double)e1 * e1;
                    acc += (double)e2 * e2;
                    acc += (double)e3 * e3;
                    d = make_float4(g * e0, g * e1, g * e2, g * e3);
                }
                d4[c] = d;
                if (b4) b4[c] = pack_bf16x4(d.x, d.y, d.z, d.w);
            }
        } else {
            for (int c = threadIdx.x; c < C; c += blockDim.x) {
                float d = 0.0f;
                if (keep) {
                    float e = pred[o + c] - widen(y[c]);
                    acc += (double)e * e;
                    d = g * e;
                }
                dpred[o + c] = d;
                if (dpred_b) dpred_b[o + c] = __float2bfloat16_rn(d);
            }
        }
    }
    acc = ar_block_sum(acc, shm);
    if (threadIdx.x == 0) atomicAdd(loss_acc, acc / denom);
}

int ar_cuda_masked_mse_rows(const float *pred, const uint16_t *ref, const int *ref_idx, const uint8_t *mask,
                            const int *mask_idx, int B, int T, int C, double denom, float *dpred, uint16_t *dpred_b,
                            double *loss_acc)
{
    if (B <= 0 || T <= 0 || C <= 0) return ar_cuda_fail("masked mse: bad sizes (%d samples of %d x %d)", B, T, C);
    bool vec = C % 4 == 0 && aligned(pred, 16) && aligned(dpred, 16) && aligned(ref, 8) &&
               aligned(dpred_b, 8);
    /* the gradient scale rounds as the CPU's (float)(2.0 / nel) */
    float g = (float)(2.0 / denom);
    for (int s0 = 0; s0 < B; s0 += SAMPLES_PER_LAUNCH) {
        int n = launch_samples(B, s0), rows = n * T, blocks = rows < 1024 ? rows : 1024;
        long o = (long)s0 * T * C;
        sample_rows rs = samples_of(ref_idx, s0, n, T), ms = samples_of(mask_idx, s0, n, T);
        bf16 *db = dpred_b ? (bf16 *)dpred_b + o : NULL;
        if (vec)
            k_mse_rows<true><<<blocks, 256, 0, g_cu.st>>>(pred + o, ref, rs, mask, ms, rows, C, g, denom, dpred + o, db,
                                                          loss_acc);
        else
            k_mse_rows<false><<<blocks, 256, 0, g_cu.st>>>(pred + o, ref, rs, mask, ms, rows, C, g, denom, dpred + o,
                                                           db, loss_acc);
    }
    return ar_cuda_check_launch("masked mse (bf16 references)");
}

/* y = b per row (add = 0) or y += b per row (add = 1). */
__global__ void k_bias(float *y, const float *b, long R, int N, int add)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < R * N; i += (long)gridDim.x * blockDim.x)
        y[i] = add ? y[i] + b[i % N] : b[i % N];
}

/* ---- the work ------------------------------------------------------------------- */

struct ar_cuda_fast_work {
    int B, T, train;
    int lastB, lastT;
    float *cos_t, *sin_t;
    uint16_t *wb[7]; /* bf16 copies of the weights, refreshed by every forward; one block, in order */
    float *x, *rstd1, *qpre, *rstdq, *kpre, *rstdk, *q, *k, *v, *ao, *lse, *h, *rstd2, *gate, *up;
    uint16_t *ln1b, *qb, *kb, *vb, *aob, *ln2b, *actb;
    float *dh, *dact, *dln, *dao, *dq, *dk, *dv, *dqn, *dkn, *scratch;
    uint16_t *dyb, *dhb, *dgub, *dqb, *dkb, *dvb; /* dgub [BT, 2F]: dgate | dup per row */
    void *base;
    const ar_cuda_act_set *aq; /* activation quantizers (bf16 copies; owned by the block work) or NULL */
    float dw_beta;             /* the running backward's dW GEMMs: 1 adds to dW, 0 writes it */
    unsigned wb_own;           /* bit i: the caller writes wb[i] (ar_cuda_block_own_weight_bf16) */
    int x_kept;                /* the last forward kept its input in x (a backward can give dx) */
};

void ar_cuda_fast_attach_act(ar_cuda_fast_work *fw, const ar_cuda_act_set *s) { fw->aq = s; }

/* Quantize xb [rows, k], the input of linears first..last, into their copies. */
static int act_run(const ar_cuda_fast_work *fw, const char *phase, int first, int last, const uint16_t *xb, long rows,
                   int k)
{
    if (!fw->aq) return 0;
    AR_PROF(phase, 0);
    return ar_cuda_act_set_run(fw->aq, first, last, xb, rows, k);
}

/* What linear i multiplies by, forward and dW: xb or its quantized copy. */
static const uint16_t *in_b(const ar_cuda_fast_work *fw, int i, const uint16_t *xb)
{
    return (const uint16_t *)ar_cuda_act_input(fw->aq, i, xb);
}

int ar_cuda_fast_eligible(const ar_cuda_shape *s)
{
    return g_cu.gemm == AR_CUDA_GEMM_BF16 && ar_cuda_flash_supported(s->HD) && s->NKV > 0 &&
           s->NH % s->NKV == 0;
}

/* Elements of linear i's weight [N, K]. */
static long weight_elems(const ar_cuda_shape *s, int i)
{
    long C = s->C, F = s->F, QD = (long)s->NH * s->HD, KD = (long)s->NKV * s->HD;
    const long n[7] = {QD * C, KD * C, KD * C, C * QD, F * C, F * C, C * F};
    return n[i];
}

/* Carve the buffers out of one allocation (base NULL: only count). */
static size_t layout(ar_cuda_fast_work *fw, const ar_cuda_shape *s, int B, int T, int train, char *base)
{
    long BT = (long)B * T, C = s->C, F = s->F, QD = (long)s->NH * s->HD, KD = (long)s->NKV * s->HD;
    size_t off = 0;
    auto bytes = [&](long n, size_t el) -> void * {
        void *p = base ? (void *)(base + off) : NULL;
        off += ((size_t)(n > 0 ? n : 1) * el + 255) & ~(size_t)255;
        return p;
    };
    auto f = [&](float **p, long n) { *p = (float *)bytes(n, 4); };
    auto h = [&](uint16_t **p, long n) { *p = (uint16_t *)bytes(n, 2); };
    f(&fw->cos_t, (long)T * s->HD / 2), f(&fw->sin_t, (long)T * s->HD / 2);
    /* Weights back to back (q|k|v and gate|up are then single [N, K] operands),
     * q, k, v and gate, up each in one block (fixed strides between them). */
    long wall = 0;
    for (int i = 0; i < 7; i++) wall += weight_elems(s, i);
    h(&fw->wb[0], wall);
    for (int i = 1; i < 7; i++) fw->wb[i] = base ? fw->wb[i - 1] + weight_elems(s, i - 1) : NULL;
    f(&fw->x, BT * C), f(&fw->rstd1, BT), h(&fw->ln1b, BT * C);
    f(&fw->qpre, BT * QD), f(&fw->rstdq, BT * s->NH), f(&fw->kpre, BT * KD), f(&fw->rstdk, BT * s->NKV);
    f(&fw->q, BT * (QD + 2 * KD));
    fw->k = base ? fw->q + BT * QD : NULL, fw->v = base ? fw->k + BT * KD : NULL;
    h(&fw->qb, BT * QD), h(&fw->kb, BT * KD), h(&fw->vb, BT * KD);
    f(&fw->ao, BT * QD), h(&fw->aob, BT * QD), f(&fw->lse, (long)B * s->NH * T);
    f(&fw->h, BT * C), f(&fw->rstd2, BT), h(&fw->ln2b, BT * C);
    f(&fw->gate, 2 * BT * F), h(&fw->actb, BT * F);
    fw->up = base ? fw->gate + BT * F : NULL;
    if (train) {
        h(&fw->dyb, BT * C), f(&fw->dh, BT * C), h(&fw->dhb, BT * C), f(&fw->dln, BT * C);
        f(&fw->dact, BT * F), h(&fw->dgub, 2 * BT * F);
        f(&fw->dao, BT * QD), f(&fw->dq, BT * QD), f(&fw->dk, BT * KD), f(&fw->dv, BT * KD);
        f(&fw->dqn, BT * QD), f(&fw->dkn, BT * KD);
        h(&fw->dqb, BT * QD), h(&fw->dkb, BT * KD), h(&fw->dvb, BT * KD);
        f(&fw->scratch, ar_cuda_flash_backward_scratch(B, T, s->NH, s->HD));
    }
    return off;
}

size_t ar_cuda_fast_work_bytes(const ar_cuda_shape *s, int B, int T, int train)
{
    ar_cuda_fast_work fw;
    return layout(&fw, s, B, T, train, NULL);
}

ar_cuda_fast_work *ar_cuda_fast_work_create(const ar_cuda_shape *s, int B, int T, int train, const float *cos_host,
                                            const float *sin_host)
{
    ar_cuda_fast_work *fw = (ar_cuda_fast_work *)calloc(1, sizeof *fw);
    if (!fw) {
        ar_cuda_fail("out of host memory for a block work");
        return NULL;
    }
    fw->base = ar_cuda_malloc(layout(fw, s, B, T, train, NULL));
    if (!fw->base) {
        free(fw);
        return NULL;
    }
    layout(fw, s, B, T, train, (char *)fw->base);
    fw->B = B, fw->T = T, fw->train = train;
    size_t tb = sizeof(float) * (size_t)T * (s->HD / 2);
    if (ar_cuda_upload(fw->cos_t, cos_host, tb) || ar_cuda_upload(fw->sin_t, sin_host, tb)) {
        ar_cuda_fast_work_free(fw);
        return NULL;
    }
    return fw;
}

void ar_cuda_fast_work_free(ar_cuda_fast_work *fw)
{
    if (!fw) return;
    ar_cuda_free(fw->base);
    free(fw);
}

/* ---- forward ---------------------------------------------------------------------- */

/* y [R, N] (f32) = xb [R, K] · Wbᵀ (+ b); with add, y += (the residual is
 * already in y). phase names it for the profile. */
static int lin(const char *phase, float *y, const uint16_t *xb, const uint16_t *Wb, const float *b, int R, int K, int N,
               int add)
{
    float beta = add ? 1.0f : 0.0f;
    AR_PROF(phase, 2.0 * R * K * N);
    if (b) {
        k_bias<<<ar_blocks((long)R * N, 256), 256, 0, g_cu.st>>>(y, b, R, N, add);
        beta = 1.0f;
    }
    return ar_cuda_gemm_bf16(0, 1, R, N, K, 1.0f, xb, K, Wb, K, beta, y, N);
}

/* n linears reading the same xb [R, K]: y_i [R, N] = xb · W_iᵀ for i < n,
 * with W_i = Wb + i·N·K (back to back in the work) and y_i = y + i·ys: one
 * batched GEMM launch instead of n. */
static int lin_shared_input(const char *phase, float *y, long ys, const uint16_t *xb, const uint16_t *Wb, int n, int R,
                            int K, int N)
{
    AR_PROF(phase, 2.0 * n * R * K * N);
    return ar_cuda_gemm_bf16_strided(0, 1, R, N, K, 1.0f, xb, K, 0, Wb, K, (long)N * K, 0.0f, y, N, ys, n);
}

/* Refresh the bf16 weights from the f32 ones, except those the caller owns. */
static int convert_weights(const ar_cuda_shape *s, const ar_cuda_weights *w, ar_cuda_fast_work *fw)
{
    if ((fw->wb_own & 0x7fu) != 0x7fu) AR_PROF("weights/linears f32 -> bf16", 0);
    for (int i = 0; i < 7; i++) {
        if (fw->wb_own >> i & 1u) continue;
        if (!w->w[i]) return ar_cuda_fail("block: weight %d missing", i);
        ar_cuda_to_bf16(fw->wb[i], w->w[i], weight_elems(s, i));
    }
    return 0;
}

uint16_t *ar_cuda_fast_weight_bf16(ar_cuda_fast_work *fw, int i, int own)
{
    if (own >= 0) fw->wb_own = own ? fw->wb_own | 1u << i : fw->wb_own & ~(1u << i);
    return fw->wb[i];
}

/* The block input: f32 rows x, or (x NULL) B bf16 samples of [T, C], sample
 * b at src + idx[b]·T·C (idx a host array; NULL: b). */
typedef struct {
    const float *x;
    const uint16_t *src;
    const int *idx;
} block_in;

/* The first RMSNorm into ln1b, with the input copied into h (where o_proj
 * then adds the attention) and, from f32 rows, into the work's x (the dx of
 * the backward needs it). The register kernels read bf16 samples straight
 * from the cache (widening is exact: the same bits as from their f32 copy)
 * and keep no f32 input; for rows too long for them (C > 8192) the samples
 * are widened into the work's x first. */
static void rmsnorm1(const ar_cuda_shape *s, const ar_cuda_weights *w, const block_in *in, int B, int T,
                     ar_cuda_fast_work *fw)
{
    int BT = B * T, C = s->C;
    const float *x = in->x;
    fw->x_kept = 1;
    if (!x && row_regs(C)) {
        AR_PROF("elem-fwd/rmsnorm1 <- bf16 samples -> bf16, x -> h", 0);
        rmsnorm_samples_bf16(fw->ln1b, fw->rstd1, in->src, in->idx, B, T, w->attn_norm, C, s->eps, fw->h);
        fw->x_kept = 0;
        return;
    }
    if (!x) {
        AR_PROF("copy/samples -> f32 (work)", 0);
        long row = (long)T * C;
        for (int b = 0; b < B; b++) ar_cuda_from_bf16(fw->x + b * row, in->src + (in->idx ? in->idx[b] : b) * row, row);
    }
    AR_PROF("elem-fwd/rmsnorm1 -> bf16, x -> work, h", 0);
    rmsnorm_bf16_copying(fw->ln1b, fw->rstd1, x ? x : fw->x, w->attn_norm, BT, C, s->eps, x ? fw->x : NULL, fw->h);
}

/* The attention half from the block input. */
static int attn_fwd(const ar_cuda_shape *s, const ar_cuda_weights *w, const block_in *in, int B, int T, int train,
                    ar_cuda_fast_work *fw)
{
    int BT = B * T, C = s->C, HD = s->HD, NH = s->NH, NKV = s->NKV, QD = NH * HD, KD = NKV * HD;
    rmsnorm1(s, w, in, B, T, fw);
    float *qp = w->q_norm ? fw->qpre : fw->q, *kp = w->k_norm ? fw->kpre : fw->k;
    if (act_run(fw, "elem-fwd/act quant q k v", LQ, LV, fw->ln1b, BT, C)) return -1;
    const uint16_t *xq = in_b(fw, LQ, fw->ln1b), *xk = in_b(fw, LK, fw->ln1b), *xv = in_b(fw, LV, fw->ln1b);
    /* q, k, v as one batched GEMM when they have one shape, read one input and
     * land in the work's q|k|v block (no QK-norm, no bias, as many kv heads
     * as heads, no activation specs differing between them) */
    int fused = QD == KD && !w->q_norm && !w->k_norm && !w->b[LQ] && !w->b[LK] && !w->b[LV] && xq == xk && xk == xv;
    if (fused ? lin_shared_input("gemm-fwd/q+k+v (batched)", fw->q, (long)fw->B * fw->T * QD, xq, fw->wb[LQ], 3,
                                 BT, C, QD)
              : lin("gemm-fwd/q", qp, xq, fw->wb[LQ], w->b[LQ], BT, C, QD, 0) ||
                    lin("gemm-fwd/k", kp, xk, fw->wb[LK], w->b[LK], BT, C, KD, 0) ||
                    lin("gemm-fwd/v", fw->v, xv, fw->wb[LV], w->b[LV], BT, C, KD, 0))
        return -1;
    AR_PROF("elem-fwd/qk-norm, rope q k, v -> bf16", 0);
    if (w->q_norm) ar_cuda_rmsnorm_forward(fw->q, fw->rstdq, fw->qpre, w->q_norm, BT * NH, HD, s->eps);
    if (w->k_norm) ar_cuda_rmsnorm_forward(fw->k, fw->rstdk, fw->kpre, w->k_norm, BT * NKV, HD, s->eps);
    ar_cuda_rope_bf16(fw->qb, fw->q, fw->cos_t, fw->sin_t, B, T, NH, HD, 0);
    ar_cuda_rope_bf16(fw->kb, fw->k, fw->cos_t, fw->sin_t, B, T, NKV, HD, 0);
    ar_cuda_copy_to_bf16(NULL, fw->vb, fw->v, (long)BT * KD);
    AR_PROF("attn-fwd/flash", ar_cuda_attention_flops(B, T, NH, HD, s->window));
    if (ar_cuda_flash_forward(fw->aob, train ? fw->ao : NULL, fw->lse, fw->qb, fw->kb, fw->vb, B, T, NH, NKV, HD,
                              s->window))
        return -1;
    /* o_proj's quantized copy is its own: the flash backward reads the f32 O */
    if (act_run(fw, "elem-fwd/act quant o", LO, LO, fw->aob, BT, QD)) return -1;
    /* h = x + o_proj(attn): the GEMM accumulates onto the copy of x in h */
    return lin("gemm-fwd/o", fw->h, in_b(fw, LO, fw->aob), fw->wb[LO], w->b[LO], BT, QD, C, 1);
}

static int mlp_fwd(const ar_cuda_shape *s, const ar_cuda_weights *w, float *y, int BT, ar_cuda_fast_work *fw)
{
    int C = s->C, F = s->F;
    AR_PROF("elem-fwd/rmsnorm2 -> bf16, h -> y", 0);
    rmsnorm_bf16_copying(fw->ln2b, fw->rstd2, fw->h, w->mlp_norm, BT, C, s->eps, y, NULL); /* y = h + down(...) */
    if (act_run(fw, "elem-fwd/act quant gate up", LGATE, LUP, fw->ln2b, BT, C)) return -1;
    const uint16_t *xg = in_b(fw, LGATE, fw->ln2b), *xu = in_b(fw, LUP, fw->ln2b);
    /* gate, up: one batched GEMM into the gate|up block when they read one input */
    int fused = !w->b[LGATE] && !w->b[LUP] && xg == xu;
    if (fused ? lin_shared_input("gemm-fwd/gate+up (batched)", fw->gate, (long)fw->B * fw->T * F, xg, fw->wb[LGATE], 2,
                                 BT, C, F)
              : lin("gemm-fwd/gate", fw->gate, xg, fw->wb[LGATE], w->b[LGATE], BT, C, F, 0) ||
                    lin("gemm-fwd/up", fw->up, xu, fw->wb[LUP], w->b[LUP], BT, C, F, 0))
        return -1;
    AR_PROF("elem-fwd/swiglu -> bf16", 0);
    ar_cuda_swiglu_forward_bf16(fw->actb, fw->gate, fw->up, (long)BT * F);
    if (act_run(fw, "elem-fwd/act quant down", LDOWN, LDOWN, fw->actb, BT, F)) return -1;
    return lin("gemm-fwd/down", y, in_b(fw, LDOWN, fw->actb), fw->wb[LDOWN], w->b[LDOWN], BT, F, C, 1);
}

static int fast_forward(const ar_cuda_shape *s, const ar_cuda_weights *w, const block_in *in, float *y, int B, int T,
                        int train, ar_cuda_fast_work *fw)
{
    if (B <= 0 || T <= 0 || T > fw->T || B > fw->B)
        return ar_cuda_fail("block: batch %d x %d exceeds the work's %d x %d", B, T, fw->B, fw->T);
    if (train && !fw->train) return ar_cuda_fail("block: training forward needs a training work");
    if (convert_weights(s, w, fw)) return -1;
    /* y may be x: x is read only by the first RMSNorm, y first written by the second */
    if (attn_fwd(s, w, in, B, T, train, fw) || mlp_fwd(s, w, y, B * T, fw)) return -1;
    fw->lastB = B, fw->lastT = T;
    return ar_cuda_check_launch("fast block forward");
}

int ar_cuda_fast_forward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, float *y, int B, int T,
                         int train, ar_cuda_fast_work *fw)
{
    block_in in = {x, NULL, NULL};
    return fast_forward(s, w, &in, y, B, T, train, fw);
}

int ar_cuda_fast_forward_rows(const ar_cuda_shape *s, const ar_cuda_weights *w, const uint16_t *src, const int *idx,
                              float *y, int B, int T, int train, ar_cuda_fast_work *fw)
{
    if (!fw) return ar_cuda_fail("block: a forward from bf16 samples needs a fast-path work");
    if (g_cu.gemm != AR_CUDA_GEMM_BF16) return ar_cuda_fail("block: a fast-path work needs bf16 GEMMs");
    if (!src) return ar_cuda_fail("block: no bf16 samples");
    block_in in = {NULL, src, idx};
    return fast_forward(s, w, &in, y, B, T, train, fw);
}

/* ---- backward ---------------------------------------------------------------------- */

/* dx [R, K] = dy [R, N] · W [N, K] (beta 0: written, 1: added). */
static int gdx(const char *phase, float *dx, const uint16_t *dyb, const uint16_t *Wb, int R, int K, int N, float beta)
{
    AR_PROF(phase, 2.0 * R * K * N);
    return ar_cuda_gemm_bf16(0, 0, R, K, N, 1.0f, dyb, N, Wb, K, beta, dx, K);
}

/* dW [N, K] = beta·dW + dyᵀ · x when dW is wanted (dy rows of pitch ldy;
 * beta is the backward's fw->dw_beta: 1 accumulates, 0 overwrites). */
static int gdw_ld(const char *phase, float *dW, const uint16_t *dyb, int ldy, const uint16_t *xb, int R, int K, int N,
                  float beta)
{
    if (dW) AR_PROF(phase, 2.0 * R * K * N);
    return dW ? ar_cuda_gemm_bf16(1, 0, N, K, R, 1.0f, dyb, ldy, xb, K, beta, dW, K) : 0;
}

static int gdw(const char *phase, float *dW, const uint16_t *dyb, const uint16_t *xb, int R, int K, int N, float beta)
{
    return gdw_ld(phase, dW, dyb, N, xb, R, K, N, beta);
}

/* The MLP half. dyb_ready: fw->dyb already holds bf16(dy); keep_dh: dh is
 * wanted in f32 too (the residual of dx). The norm's backward adds dy (the
 * residual) and writes dh in bf16 for attn_bwd. */
static int mlp_bwd(const ar_cuda_shape *s, const float *dy, float *const dW[7], const ar_cuda_weights *w,
                   int dyb_ready, int keep_dh, ar_cuda_fast_work *fw)
{
    int BT = fw->lastB * fw->lastT, C = s->C, F = s->F;
    if (!dyb_ready) {
        AR_PROF("elem-bwd/dy -> bf16", 0);
        ar_cuda_copy_to_bf16(NULL, fw->dyb, dy, (long)BT * C);
    }
    if (gdx("gemm-dx/down", fw->dact, fw->dyb, fw->wb[LDOWN], BT, F, C, 0.0f) ||
        gdw("gemm-dw/down", dW[LDOWN], fw->dyb, in_b(fw, LDOWN, fw->actb), BT, F, C, fw->dw_beta))
        return -1;
    AR_PROF("elem-bwd/swiglu -> bf16", 0);
    swiglu_backward_rows(fw->dgub, fw->dact, fw->gate, fw->up, BT, F);
    /* dL/dn2 = [dgate | dup] · [Wgate; Wup]: one GEMM over K = 2F (the
     * weights are back to back) */
    if (gdx("gemm-dx/gate+up (K = 2F)", fw->dln, fw->dgub, fw->wb[LGATE], BT, C, 2 * F, 0.0f) ||
        gdw_ld("gemm-dw/gate", dW[LGATE], fw->dgub, 2 * F, in_b(fw, LGATE, fw->ln2b), BT, C, F, fw->dw_beta) ||
        gdw_ld("gemm-dw/up", dW[LUP], fw->dgub + F, 2 * F, in_b(fw, LUP, fw->ln2b), BT, C, F, fw->dw_beta))
        return -1;
    AR_PROF("elem-bwd/rmsnorm2 + dy -> dh bf16", 0);
    rmsnorm_bwd_resid(fw->dhb, keep_dh ? fw->dh : NULL, dy, fw->dln, fw->h, w->mlp_norm, fw->rstd2, BT, C);
    return 0;
}

/* The gradient at a q/k projection output in bf16: inverse RoPE of g (f32,
 * modified when a QK-norm follows), then through the norm when present. */
static int proj_grad(uint16_t *gb, float *g, float *gn, const float *norm, const float *pre, const float *rstd,
                     int B, int T, int H, int HD, const ar_cuda_fast_work *fw)
{
    long rows = (long)B * T * H;
    if (!norm) {
        ar_cuda_rope_bf16(gb, g, fw->cos_t, fw->sin_t, B, T, H, HD, 1);
        return 0;
    }
    ar_cuda_rope(g, fw->cos_t, fw->sin_t, B, T, H, HD, 1);
    if (ar_cuda_zero(gn, sizeof(float) * rows * HD)) return -1;
    ar_cuda_rmsnorm_backward(gn, g, pre, norm, rstd, rows, HD);
    ar_cuda_copy_to_bf16(NULL, gb, gn, rows * HD);
    return 0;
}

static int attn_bwd(const ar_cuda_shape *s, const ar_cuda_weights *w, float *const dW[7], float *dx,
                    ar_cuda_fast_work *fw)
{
    int B = fw->lastB, T = fw->lastT, BT = B * T, C = s->C, HD = s->HD, NH = s->NH, NKV = s->NKV;
    int QD = NH * HD, KD = NKV * HD;
    if (gdx("gemm-dx/o", fw->dao, fw->dhb, fw->wb[LO], BT, QD, C, 0.0f) ||
        gdw("gemm-dw/o", dW[LO], fw->dhb, in_b(fw, LO, fw->aob), BT, QD, C, fw->dw_beta))
        return -1;
    AR_PROF("attn-bwd/flash", 2.5 * ar_cuda_attention_flops(B, T, NH, HD, s->window));
    if (ar_cuda_flash_backward_write(fw->dq, fw->dk, fw->dv, fw->scratch, fw->dao, fw->ao, fw->lse, fw->qb, fw->kb, fw->vb, B,
                               T, NH, NKV, HD, s->window))
        return -1;
    AR_PROF("elem-bwd/rope^-1 q k (qk-norm), dv -> bf16", 0);
    if (proj_grad(fw->dqb, fw->dq, fw->dqn, w->q_norm, fw->qpre, fw->rstdq, B, T, NH, HD, fw) ||
        proj_grad(fw->dkb, fw->dk, fw->dkn, w->k_norm, fw->kpre, fw->rstdk, B, T, NKV, HD, fw))
        return -1;
    ar_cuda_copy_to_bf16(NULL, fw->dvb, fw->dv, (long)BT * KD);
    if (gdw("gemm-dw/q", dW[LQ], fw->dqb, in_b(fw, LQ, fw->ln1b), BT, C, QD, fw->dw_beta) ||
        gdw("gemm-dw/k", dW[LK], fw->dkb, in_b(fw, LK, fw->ln1b), BT, C, KD, fw->dw_beta) ||
        gdw("gemm-dw/v", dW[LV], fw->dvb, in_b(fw, LV, fw->ln1b), BT, C, KD, fw->dw_beta))
        return -1;
    if (!dx) return 0; /* dL/dn1 only matters on the way to dx */
    if (gdx("gemm-dx/q", fw->dln, fw->dqb, fw->wb[LQ], BT, C, QD, 0.0f) ||
        gdx("gemm-dx/k", fw->dln, fw->dkb, fw->wb[LK], BT, C, KD, 1.0f) ||
        gdx("gemm-dx/v", fw->dln, fw->dvb, fw->wb[LV], BT, C, KD, 1.0f))
        return -1;
    AR_PROF("elem-bwd/residual + rmsnorm1", 0);
    ar_cuda_add(dx, dx, fw->dh, (long)BT * C);
    ar_cuda_rmsnorm_backward(dx, fw->dln, fw->x, w->attn_norm, fw->rstd1, BT, C);
    return 0;
}

static int fast_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                         float *dx, int dw_write, int dyb_ready, ar_cuda_fast_work *fw)
{
    if (!fw->train || !fw->lastB) return ar_cuda_fail("block: backward needs a training forward first");
    if (dx && !fw->x_kept)
        return ar_cuda_fail("block: dx needs the block input, which a forward from bf16 samples does not keep");
    fw->dw_beta = dw_write ? 0.0f : 1.0f;
    if (mlp_bwd(s, dy, dW, w, dyb_ready, dx != NULL, fw) || attn_bwd(s, w, dW, dx, fw)) return -1;
    return ar_cuda_check_launch("fast block backward");
}

int ar_cuda_fast_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                          float *dx, int dw_write, ar_cuda_fast_work *fw)
{
    return fast_backward(s, w, dy, dW, dx, dw_write, 0, fw);
}

uint16_t *ar_cuda_fast_dy_bf16(ar_cuda_fast_work *fw) { return fw && fw->train ? fw->dyb : NULL; }

int ar_cuda_fast_backward_prepared(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                                   float *const dW[7], float *dx, int dw_write, ar_cuda_fast_work *fw)
{
    if (!fw) return ar_cuda_fail("block: a prepared backward needs a fast-path work");
    if (g_cu.gemm != AR_CUDA_GEMM_BF16) return ar_cuda_fail("block: a fast-path work needs bf16 GEMMs");
    return fast_backward(s, w, dy, dW, dx, dw_write, 1, fw);
}
