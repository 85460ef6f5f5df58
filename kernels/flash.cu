/* flash.cu — causal attention that never stores the T x T probabilities
 * (the fast path; see ar_cuda.h and kernels/README.md): the entry points,
 * their size checks and the backward's preparation; the kernels are in
 * flash_mma.cu.
 *
 * Forward: per query tile, for every visible key tile S = scale·Q Kᵀ on the
 * bf16 tensor cores (f32 accumulation), an online softmax per row (running
 * max m and sum l; the partial output O is rescaled by exp(m_old − m_new)),
 * then O += P V with P rounded to bf16. Only lse = m + log(l) per row is
 * saved for the backward.
 *
 * Backward: P is recomputed tile by tile from Q, K and lse; with
 * D_i = Σ_d dO_id·O_id (= Σ_j P_ij dP_ij), dS = P ⊙ (dP − D)·scale. Every
 * output element has exactly one writer (no atomics, deterministic): dK =
 * dSᵀ Q and dV = Pᵀ dO per key tile over the query tiles (and the query heads
 * sharing the kv head), dQ = dS K per query tile over the key tiles. */
#include "internal.cuh"
#include <cuda_bf16.h>
#include <math.h>

typedef __nv_bfloat16 bf16;

enum { FB = 64 }; /* tile rows */

__device__ static float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

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

int ar_cuda_flash_supported(int HD) { return HD == 32 || HD == 64 || HD == 80 || HD == 96 || HD == 128; }

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
    return ar_cuda_flash_mma_forward(out_b, out_f, lse, q, k, v, B, T, NH, NKV, HD, window);
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
    return ar_cuda_flash_mma_backward(dq, dk, dv, dob, Drow, lse, q, k, v, B, T, NH, NKV, HD, window, accumulate);
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
