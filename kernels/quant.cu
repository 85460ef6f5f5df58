/* quant.cu — fake quantization (int_sym / int_asym), its straight-through
 * backward fused with the SignSGD step, the masked MSE loss and the
 * best-iteration bookkeeping, mirroring libar/quant.c and libar/signround.c.
 * The entry points hand the other kinds to quant_fp.cu and quant_gguf.cu.
 * One thread block per quantization group; every thread recomputes the
 * group's scalars from the reduced min/max, so no broadcast is needed.
 * Built with -fmad=false (Makefile) so products and sums round as in C. */
#include "internal.cuh"
#include "quant_kinds.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

enum { QT = 128 }; /* threads per group */

struct qgroup {
    float wmin, wmax, al, be, s, z;
    int s_live, c_wins; /* sym: 1 c = wmax·β won, 0 a = −wmin·α won, 2 tie */
};

__device__ static float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

__device__ static float to_scale_dtype(const ar_cuda_qspec &q, float s)
{
    return q.f32_scale ? s : __half2float(__float2half_rn(s));
}

/* Range, α/β and scale of group gi whose len elements start at w. */
__device__ static qgroup group_setup(const ar_cuda_qspec &q, const float *w, int len, const float *alpha,
                                     const float *beta, long gi)
{
    __shared__ float smin[32], smax[32];
    float lo = 0.0f, hi = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        lo = fminf(lo, w[j]);
        hi = fmaxf(hi, w[j]);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) smin[threadIdx.x >> 5] = lo, smax[threadIdx.x >> 5] = hi;
    __syncthreads();
    qgroup g;
    g.wmin = g.wmax = 0.0f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) g.wmin = fminf(g.wmin, smin[i]), g.wmax = fmaxf(g.wmax, smax[i]);
    float mh = q.hi > 0 ? q.hi : 1.0f;
    g.al = alpha ? clampf(alpha[gi], 0.0f, mh) : 1.0f;
    g.be = beta ? clampf(beta[gi], 0.0f, mh) : 1.0f;
    g.c_wins = 0;
    g.z = 0.0f;
    float raw;
    if (q.sym) {
        float m = (float)(1 << (q.bits - 1));
        float a = -(g.wmin * g.al), c = g.wmax * g.be;
        float sign = (c < a) ? 1.0f : -1.0f;
        g.c_wins = (c > a) ? 1 : (c < a ? 0 : 2);
        raw = sign * (c > a ? c : a) / m;
    } else {
        float maxq = (float)((1 << q.bits) - 1);
        raw = (g.wmax * g.be - g.wmin * g.al) / maxq;
    }
    float s = to_scale_dtype(q, raw), t = q.f32_scale ? 1e-8f : 1e-5f;
    if (s < 0) {
        g.s_live = s <= -t;
        g.s = g.s_live ? s : to_scale_dtype(q, -t);
    } else {
        g.s_live = s >= t;
        g.s = g.s_live ? s : to_scale_dtype(q, t);
    }
    if (!q.sym) g.z = rintf(-(g.wmin * g.al) / g.s);
    return g;
}

__device__ static void level_bounds(const ar_cuda_qspec &q, float *lo, float *hi)
{
    if (q.sym) *lo = -(float)(1 << (q.bits - 1)), *hi = (float)((1 << (q.bits - 1)) - 1);
    else *lo = 0.0f, *hi = (float)((1 << q.bits) - 1);
}

/* Where group blockIdx.x starts (offset into [N, K]) and its length. */
__device__ static void group_span(int k, int gs, int ng, long *off, int *len)
{
    long r = blockIdx.x;
    int row = (int)(r / ng), g = (int)(r % ng);
    int k0 = gs <= 0 ? 0 : g * gs;
    *len = gs <= 0 ? k : (k - k0 < gs ? k - k0 : gs);
    *off = (long)row * k + k0;
}

__global__ void k_quant_fwd(ar_cuda_qspec q, const float *w, int k, int ng, const float *v, const float *alpha,
                            const float *beta, float *wq)
{
    long off;
    int len;
    group_span(k, q.group_size, ng, &off, &len);
    qgroup g = group_setup(q, w + off, len, alpha, beta, blockIdx.x);
    float lo, hi;
    level_bounds(q, &lo, &hi);
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float x = clampf(rintf(w[off + j] / g.s + (v ? v[off + j] : 0.0f)) + g.z, lo, hi);
        float r = g.s * (x - g.z);
        wq[off + j] = q.bf16_out ? __bfloat162float(__float2bfloat16_rn(r)) : r;
    }
}

static int check_spec(const ar_cuda_qspec *q)
{
    if (q->kind != AR_CUDA_Q_INT) return ar_cuda_fail("quant: unknown kind %d", q->kind);
    if (q->bits < 2 || q->bits > 8 || q->group_size == 0 || q->group_size < -1)
        return ar_cuda_fail("quant: bad spec (bits %d, group %d)", q->bits, q->group_size);
    return 0;
}

static int ngroups(int k, int gs) { return gs <= 0 ? 1 : (k + gs - 1) / gs; }

/* The kinds quant_fp.cu handles. */
static int is_fp(const ar_cuda_qspec *q) { return q->kind >= AR_CUDA_Q_MXFP4 && q->kind <= AR_CUDA_Q_FP8; }

size_t ar_cuda_quant_scratch_bytes(const ar_cuda_qspec *q, int n, int k)
{
    return is_fp(q) ? ar_cuda_fp_scratch_bytes(q, n, k) : 0;
}

int ar_cuda_quant_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                          const float *alpha, const float *beta, float *wq)
{
    if (q->kind == AR_CUDA_Q_GGUF) return ar_cuda_gguf_forward(q, w, n, k, v, wq);
    if (is_fp(q)) return ar_cuda_fp_forward(q, w, n, k, v, beta, wq);
    if (check_spec(q)) return -1;
    int ng = ngroups(k, q->group_size);
    k_quant_fwd<<<(unsigned)((long)n * ng), QT, 0, g_cu.st>>>(*q, w, k, ng, v, alpha, beta, wq);
    return ar_cuda_check_launch("quant forward");
}

/* The STE gradients of one group: per element dV (passed to emit), and the
 * scale/zero-point sums reduced over the block into dα, dβ. */
struct qgrads {
    double dal, dbe;
};

/* Per-element part; returns dL/dV of element j (0 when clamped) and adds to
 * the scale / zero-point accumulators. */
__device__ static float elem_grad(const ar_cuda_qspec &q, const qgroup &g, float w, float v, float dwq, double *acc_s,
                                  double *acc_z)
{
    float lo, hi;
    level_bounds(q, &lo, &hi);
    float t = rintf(w / g.s + v) + g.z;
    int inside = t >= lo && t <= hi;
    float x = clampf(t, lo, hi);
    double gr = dwq;
    *acc_s += gr * ((double)x - g.z - (inside ? (double)w / g.s : 0.0));
    *acc_z += gr * g.s * (inside - 1);
    return inside ? (float)(gr * g.s) : 0.0f;
}

/* dα, dβ of the group from the reduced scale / zero-point gradients. */
__device__ static qgrads minmax_grads(const ar_cuda_qspec &q, const qgroup &g, double ds, double dz)
{
    qgrads r = {0.0, 0.0};
    if (!q.sym) {
        double wmin_eff = (double)g.wmin * g.al, s = g.s;
        ds += dz * wmin_eff / (s * s);
        double dwmin_eff = -dz / s;
        double draw = g.s_live ? ds : 0.0;
        double maxq = (double)((1 << q.bits) - 1);
        dwmin_eff -= draw / maxq;
        r.dal = dwmin_eff * g.wmin;
        r.dbe = draw / maxq * g.wmax;
    } else {
        double m = (double)(1 << (q.bits - 1));
        double sign = g.c_wins == 0 ? 1.0 : -1.0;
        double dM = (g.s_live ? ds : 0.0) * sign / m;
        double to_c = g.c_wins == 1 ? dM : (g.c_wins == 2 ? dM / 2 : 0.0);
        double to_a = g.c_wins == 0 ? dM : (g.c_wins == 2 ? dM / 2 : 0.0);
        r.dbe = to_c * g.wmax;
        r.dal = to_a * -(double)g.wmin;
    }
    return r;
}

__device__ static float sgnf(float x) { return (float)((x > 0) - (x < 0)); }

/* mode 0: accumulate dv, dalpha, dbeta. mode 1: SignSGD step on v, alpha, beta. */
__global__ void k_quant_bwd(ar_cuda_qspec q, const float *w, int k, int ng, float *v, float *alpha, float *beta,
                            const float *dwq, float *dv, float *dalpha, float *dbeta, int step, float lr, float mlr)
{
    __shared__ double shm[32];
    long off;
    int len;
    group_span(k, q.group_size, ng, &off, &len);
    qgroup g = group_setup(q, w + off, len, alpha, beta, blockIdx.x);
    double acc_s = 0.0, acc_z = 0.0;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float vj = v ? v[off + j] : 0.0f;
        float d = elem_grad(q, g, w[off + j], vj, dwq[off + j], &acc_s, &acc_z);
        if (step) v[off + j] = vj - lr * sgnf(d);
        else if (dv) dv[off + j] += d;
    }
    acc_s = ar_block_sum(acc_s, shm);
    acc_z = ar_block_sum(acc_z, shm);
    if (threadIdx.x != 0) return;
    qgrads r = minmax_grads(q, g, acc_s, acc_z);
    long gi = blockIdx.x;
    float mh = q.hi > 0 ? q.hi : 1.0f;
    if (step) {
        if (alpha) alpha[gi] = clampf(alpha[gi] - mlr * sgnf((float)r.dal), 0.0f, mh);
        if (beta) beta[gi] = clampf(beta[gi] - mlr * sgnf((float)r.dbe), 0.0f, mh);
    } else {
        if (dalpha) dalpha[gi] += (float)r.dal;
        if (dbeta) dbeta[gi] += (float)r.dbe;
    }
}

int ar_cuda_quant_backward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                           const float *alpha, const float *beta, const float *dwq, float *dv, float *dalpha,
                           float *dbeta)
{
    if (q->kind == AR_CUDA_Q_GGUF) return ar_cuda_gguf_backward(q, w, n, k, (float *)v, dwq, dv, 0, 0);
    if (is_fp(q)) return ar_cuda_fp_backward(q, w, n, k, (float *)v, NULL, (float *)beta, dwq, dv, dbeta, 0, 0, 0);
    if (check_spec(q)) return -1;
    int ng = ngroups(k, q->group_size);
    k_quant_bwd<<<(unsigned)((long)n * ng), QT, 0, g_cu.st>>>(*q, w, k, ng, (float *)v, (float *)alpha,
                                                               (float *)beta, dwq, dv, dalpha, dbeta, 0, 0, 0);
    return ar_cuda_check_launch("quant backward");
}

int ar_cuda_quant_signsgd(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, float *alpha,
                          float *beta, const float *dwq, float lr, float mlr)
{
    if (q->kind == AR_CUDA_Q_GGUF) return ar_cuda_gguf_backward(q, w, n, k, v, dwq, NULL, 1, lr);
    if (is_fp(q)) return ar_cuda_fp_backward(q, w, n, k, v, alpha, beta, dwq, NULL, NULL, 1, lr, mlr);
    if (check_spec(q)) return -1;
    int ng = ngroups(k, q->group_size);
    k_quant_bwd<<<(unsigned)((long)n * ng), QT, 0, g_cu.st>>>(*q, w, k, ng, v, alpha, beta, dwq, NULL, NULL, NULL,
                                                               1, lr, mlr);
    return ar_cuda_check_launch("quant signsgd");
}

/* ---- loss and best-iteration bookkeeping ----------------------------------------- */

__global__ void k_masked_mse(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, float g,
                             double denom, float *dpred, double *loss_acc)
{
    __shared__ double shm[32];
    double acc = 0;
    long n = rows * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        if (mask && !mask[i / C]) {
            dpred[i] = 0.0f;
            continue;
        }
        float e = pred[i] - ref[i];
        acc += (double)e * e;
        dpred[i] = g * e;
    }
    acc = ar_block_sum(acc, shm);
    if (threadIdx.x == 0) atomicAdd(loss_acc, acc / denom);
}

int ar_cuda_masked_mse_denom(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, double denom,
                             float *dpred, double *loss_acc)
{
    long n = rows * C;
    int blocks = ar_blocks(n, 256);
    if (blocks > 1024) blocks = 1024;
    /* the gradient scale rounds as the CPU's (float)(2.0 / nel) */
    k_masked_mse<<<blocks, 256, 0, g_cu.st>>>(pred, ref, mask, rows, C, (float)(2.0 / denom), denom, dpred, loss_acc);
    return ar_cuda_check_launch("masked mse");
}

int ar_cuda_masked_mse(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, float *dpred,
                       double *loss_acc)
{
    return ar_cuda_masked_mse_denom(pred, ref, mask, rows, C, (double)rows * C, dpred, loss_acc);
}

__global__ void k_track_best(double *loss_acc, int chunks, int it, double *losses, double *best, int *best_iter,
                             int *flag)
{
    double loss = *loss_acc / chunks;
    losses[it] = loss;
    *flag = loss < *best;
    if (*flag) *best = loss, *best_iter = it;
    *loss_acc = 0.0;
}

int ar_cuda_track_best(double *loss_acc, int chunks, int it, double *losses, double *best, int *best_iter, int *flag)
{
    k_track_best<<<1, 1, 0, g_cu.st>>>(loss_acc, chunks, it, losses, best, best_iter, flag);
    return ar_cuda_check_launch("track best");
}

__global__ void k_copy_if(float *dst, const float *src, long n, const int *flag)
{
    if (!*flag) return;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

int ar_cuda_copy_if(float *dst, const float *src, long n, const int *flag)
{
    if (n > 0) k_copy_if<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dst, src, n, flag);
    return ar_cuda_check_launch("copy_if");
}
