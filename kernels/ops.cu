/* ops.cu — layer operations on the device, mirroring libar/nn/ops.c (see
 * ar_cuda.h). Elementwise kernels are grid-stride loops; row kernels use one
 * thread block per row with a block reduction. Reductions accumulate in
 * double where the CPU reference does, so both agree to f32 rounding. */
#include "internal.cuh"
#include <cuda_bf16.h>
#include <math.h>

/* Threads for a row of C elements: at least a warp, at most 256. */
static int row_threads(int C)
{
    int t = 32;
    while (t < C && t < 256) t *= 2;
    return t;
}

/* ---- RMSNorm ---------------------------------------------------------------- */

__global__ void k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int C, float eps)
{
    __shared__ double shm[32];
    const float *xr = x + (long)blockIdx.x * C;
    float *o = out + (long)blockIdx.x * C;
    double ss = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = ar_block_sum(ss, shm);
    float s = 1.0f / sqrtf((float)(ss / C) + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = s;
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = (xr[i] * s) * w[i];
}

void ar_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int R, int C, float eps)
{
    if (R > 0) k_rmsnorm_fwd<<<R, row_threads(C), 0, g_cu.st>>>(out, rstd, x, w, C, eps);
}

/* dx += s·dout·w − (Σ dout·w·x)·s³/C · x  (dx may be NULL: nothing to do). */
__global__ void k_rmsnorm_bwd(float *dx, const float *dout, const float *x, const float *w, const float *rstd,
                              int C)
{
    __shared__ double shm[32];
    long off = (long)blockIdx.x * C;
    const float *xr = x + off, *dr = dout + off;
    float s = rstd[blockIdx.x];
    double dot = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dot += (double)dr[i] * w[i] * xr[i];
    dot = ar_block_sum(dot, shm);
    float k = (float)(dot * s * s * s / C);
    for (int i = threadIdx.x; i < C; i += blockDim.x) dx[off + i] += s * dr[i] * w[i] - k * xr[i];
}

void ar_cuda_rmsnorm_backward(float *dx, const float *dout, const float *x, const float *w, const float *rstd,
                              int R, int C)
{
    if (dx && R > 0) k_rmsnorm_bwd<<<R, row_threads(C), 0, g_cu.st>>>(dx, dout, x, w, rstd, C);
}

/* ---- Linear ------------------------------------------------------------------ */

__global__ void k_bias_rows(float *y, const float *b, long R, int N)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < R * N; i += (long)gridDim.x * blockDim.x)
        y[i] = b[i % N];
}

int ar_cuda_linear_forward(float *y, const float *x, const float *W, const float *b, int R, int K, int N)
{
    float beta = 0.0f;
    if (b) {
        k_bias_rows<<<ar_blocks((long)R * N, 256), 256, 0, g_cu.st>>>(y, b, R, N);
        beta = 1.0f;
    }
    return ar_cuda_sgemm(0, 1, R, N, K, 1.0f, x, K, W, K, beta, y, N);
}

int ar_cuda_linear_backward(float *dx, float *dW, const float *dy, const float *x, const float *W, int R, int K,
                            int N)
{
    if (dx && ar_cuda_sgemm(0, 0, R, K, N, 1.0f, dy, N, W, K, 1.0f, dx, K)) return -1;
    if (dW && ar_cuda_sgemm(1, 0, N, K, R, 1.0f, dy, N, x, K, 1.0f, dW, K)) return -1;
    return 0;
}

/* ---- RoPE ----------------------------------------------------------------------- */

__global__ void k_rope(float *x, const float *cos_t, const float *sin_t, long rows, int T, int H, int HD,
                       float sign)
{
    int H2 = HD / 2;
    long n = rows * H * H2; /* one thread per rotated pair */
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int d = (int)(i % H2);
        long rh = i / H2;            /* (row, head) */
        int t = (int)((rh / H) % T); /* row = b*T + t */
        float c = cos_t[(long)t * H2 + d], s = sign * sin_t[(long)t * H2 + d];
        float *v = x + rh * HD;
        float x0 = v[d], x1 = v[d + H2];
        v[d] = x0 * c - x1 * s;
        v[d + H2] = x1 * c + x0 * s;
    }
}

void ar_cuda_rope(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, int HD, int inverse)
{
    long n = (long)B * T * H * (HD / 2);
    if (n > 0)
        k_rope<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(x, cos_t, sin_t, (long)B * T, T, H, HD,
                                                       inverse ? -1.0f : 1.0f);
}

/* ---- SwiGLU, residual ------------------------------------------------------------ */

__global__ void k_swiglu_fwd(float *out, const float *gate, const float *up, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void ar_cuda_swiglu_forward(float *out, const float *gate, const float *up, long n)
{
    if (n > 0) k_swiglu_fwd<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(out, gate, up, n);
}

__global__ void k_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g));
        if (dgate) dgate[i] += dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        if (dup) dup[i] += dout[i] * g * sg;
    }
}

void ar_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             long n)
{
    if (n > 0) k_swiglu_bwd<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dgate, dup, dout, gate, up, n);
}

__global__ void k_add(float *out, const float *a, const float *b, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

void ar_cuda_add(float *out, const float *a, const float *b, long n)
{
    if (n > 0) k_add<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(out, a, b, n);
}

/* ---- dtype conversion and gathers ---------------------------------------------- */

__global__ void k_to_bf16(uint16_t *dst, const float *src, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        __nv_bfloat16 h = __float2bfloat16_rn(src[i]);
        dst[i] = *(uint16_t *)&h;
    }
}

__global__ void k_from_bf16(float *dst, const uint16_t *src, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dst[i] = __uint_as_float((unsigned)src[i] << 16);
}

void ar_cuda_to_bf16(uint16_t *dst, const float *src, long n)
{
    if (n > 0) k_to_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dst, src, n);
}

void ar_cuda_from_bf16(float *dst, const uint16_t *src, long n)
{
    if (n > 0) k_from_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dst, src, n);
}

int ar_cuda_gather_bf16(float *dst, const uint16_t *src, const int *idx, int nidx, long row_elems)
{
    for (int i = 0; i < nidx; i++) ar_cuda_from_bf16(dst + i * row_elems, src + idx[i] * row_elems, row_elems);
    return ar_cuda_check_launch("gather");
}

int ar_cuda_gather_mask(uint8_t *dst, const uint8_t *mask, const int *idx, int nidx, int T)
{
    for (int i = 0; i < nidx; i++)
        AR_CK(cudaMemcpyAsync(dst + (long)i * T, mask + (long)idx[i] * T, T, cudaMemcpyDeviceToDevice, g_cu.st));
    return 0;
}

/* ---- attention --------------------------------------------------------------------
 * S = scale·Q Kᵀ per (sequence, head) with strided-batched GEMMs over the kv
 * heads (query head h = kvh·group + r reads kv head kvh; one batch per r),
 * then a causal softmax per row in place, then O = P V. P is kept for the
 * backward: [B, NH, T, T] floats. The full square is multiplied (the masked
 * half is computed and then zeroed), which costs 2x the attention FLOPs
 * (under 10% of a 7B block at T = 2048). */

/* Row (b, h, t) of P: softmax over keys [first, t], exact zeros elsewhere. */
__global__ void k_causal_softmax(float *P, int T, int window)
{
    __shared__ float shf[32];
    long row = blockIdx.x;
    int t = (int)(row % T);
    float *p = P + row * T;
    int s0 = (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
    float mx = -INFINITY;
    for (int s = s0 + threadIdx.x; s <= t; s += blockDim.x) mx = fmaxf(mx, p[s]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) shf[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) mx = fmaxf(mx, shf[i]);
    float sum = 0;
    for (int s = s0 + threadIdx.x; s <= t; s += blockDim.x) {
        float e = expf(p[s] - mx);
        p[s] = e;
        sum += e;
    }
    sum = ar_block_sum(sum, shf);
    float inv = 1.0f / sum;
    for (int s = threadIdx.x; s < T; s += blockDim.x) p[s] = (s >= s0 && s <= t) ? p[s] * inv : 0.0f;
}

int ar_cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B,
                              int T, int NH, int NKV, int HD, int window)
{
    if (T > AR_CUDA_MAX_T) return ar_cuda_fail("attention: T = %d exceeds %d", T, (int)AR_CUDA_MAX_T);
    int group = NH / NKV;
    long qs = (long)NH * HD, ks = (long)NKV * HD, TT = (long)T * T;
    float scale = 1.0f / sqrtf((float)HD);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < group; r++) {
            const float *qb = q + (long)b * T * qs + (long)r * HD, *kb = k + (long)b * T * ks;
            float *Pb = att + ((long)b * NH + r) * TT;
            if (ar_cuda_sgemm_batched(0, 1, T, T, HD, scale, qb, (int)qs, (long)group * HD, kb, (int)ks, HD, 0.0f,
                                      Pb, T, group * TT, NKV))
                return -1;
        }
    k_causal_softmax<<<(unsigned)((long)B * NH * T), row_threads(T), 0, g_cu.st>>>(att, T, window);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < group; r++) {
            const float *vb = v + (long)b * T * ks, *Pb = att + ((long)b * NH + r) * TT;
            float *ob = out + (long)b * T * qs + (long)r * HD;
            if (ar_cuda_sgemm_batched(0, 0, T, HD, T, 1.0f, Pb, T, group * TT, vb, (int)ks, HD, 0.0f, ob, (int)qs,
                                      (long)group * HD, NKV))
                return -1;
        }
    return ar_cuda_check_launch("attention forward");
}

long ar_cuda_attention_backward_scratch(int T, int NH) { return (long)NH * T * T; }

/* In place on dP rows: dS = P·(dP − Σ dP·P)·scale. P is 0 outside the
 * visible keys, so dS is too. */
__global__ void k_softmax_bwd(float *dP, const float *P, int T, float scale)
{
    __shared__ float shf[32];
    long off = (long)blockIdx.x * T;
    float dot = 0;
    for (int s = threadIdx.x; s < T; s += blockDim.x) dot += dP[off + s] * P[off + s];
    dot = ar_block_sum(dot, shf);
    for (int s = threadIdx.x; s < T; s += blockDim.x) dP[off + s] = P[off + s] * (dP[off + s] - dot) * scale;
}

int ar_cuda_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *att, const float *q, const float *k, const float *v, int B, int T,
                               int NH, int NKV, int HD)
{
    int group = NH / NKV;
    long qs = (long)NH * HD, ks = (long)NKV * HD, TT = (long)T * T;
    float scale = 1.0f / sqrtf((float)HD);
    for (int b = 0; b < B; b++) {
        const float *Pb = att + (long)b * NH * TT;
        long qo = (long)b * T * qs, ko = (long)b * T * ks;
        for (int r = 0; r < group; r++) {
            const float *P = Pb + r * TT, *dO = dout + qo + (long)r * HD;
            float *dP = scratch + r * TT;
            /* dV += Pᵀ dO;  dP = dO Vᵀ */
            if (ar_cuda_sgemm_batched(1, 0, T, HD, T, 1.0f, P, T, group * TT, dO, (int)qs, (long)group * HD, 1.0f,
                                      dv + ko, (int)ks, HD, NKV) ||
                ar_cuda_sgemm_batched(0, 1, T, T, HD, 1.0f, dO, (int)qs, (long)group * HD, v + ko, (int)ks, HD,
                                      0.0f, dP, T, group * TT, NKV))
                return -1;
        }
        k_softmax_bwd<<<(unsigned)((long)NH * T), row_threads(T), 0, g_cu.st>>>(scratch, Pb, T, scale);
        for (int r = 0; r < group; r++) {
            const float *dS = scratch + r * TT, *qh = q + qo + (long)r * HD;
            /* dQ += dS K;  dK += dSᵀ Q */
            if (ar_cuda_sgemm_batched(0, 0, T, HD, T, 1.0f, dS, T, group * TT, k + ko, (int)ks, HD, 1.0f,
                                      dq + qo + (long)r * HD, (int)qs, (long)group * HD, NKV) ||
                ar_cuda_sgemm_batched(1, 0, T, HD, T, 1.0f, dS, T, group * TT, qh, (int)qs, (long)group * HD, 1.0f,
                                      dk + ko, (int)ks, HD, NKV))
                return -1;
        }
    }
    return ar_cuda_check_launch("attention backward");
}

/* ---- NLL --------------------------------------------------------------------------- */

__global__ void k_nll_rows(const float *logits, const int *target, int V, double *nll)
{
    __shared__ float shf[32];
    __shared__ double shd[32];
    int tg = target[blockIdx.x];
    if (tg < 0) return; /* uniform per block: no thread reaches a barrier */
    const float *x = logits + (long)blockIdx.x * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) shf[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) mx = fmaxf(mx, shf[i]);
    double s = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(x[i] - mx);
    s = ar_block_sum(s, shd);
    if (threadIdx.x == 0) nll[blockIdx.x] = mx + log(s) - x[tg];
}

int ar_cuda_nll_rows(const float *logits, const int *target, int rows, int V, double *nll)
{
    if (rows > 0) k_nll_rows<<<rows, 256, 0, g_cu.st>>>(logits, target, V, nll);
    return ar_cuda_check_launch("nll");
}
