/* quant_act.cu — activation fake-quantization on the device (ar_cuda_act_quant,
 * libar/quant/quant_fp.c's ar_act_quant) and the block's per-linear quantized
 * inputs (quant_act.cuh).
 *
 * A group (the elements sharing one scale: glen consecutive elements of a
 * row) is reduced to its min and max (0 included), then every element is
 * quantized from the group's setup; both steps are quant_kinds.cuh's
 * __host__ __device__ mirror of the CPU code. Groups of at most 32 elements
 * (MX 32, NVFP4 16) take one warp each, four per block; longer ones (per
 * token, FP8 or int groups of 128) one block of BIG threads each. Per-tensor
 * statistics (NVFP4 without act_max, FP8 per tensor) come first, from a pass
 * over the whole tensor into one device word by an atomic max on the float
 * bits (order-independent, so exact). Every element is read before it is
 * written by the same thread, so x may be the output. */
#include "internal.cuh"
#include "quant_act.cuh"
#include "quant_kinds.cuh"
#include <cuda_bf16.h>
#include <string.h>

typedef __nv_bfloat16 bf16;

enum { WARPS = 4, BIG = 256 };

/* max |x| of the tensor being quantized (float bits): one per process, which
 * the single compute stream orders between calls. */
__device__ unsigned g_act_tamax;

__device__ static inline float ld(const float *p, long i) { return p[i]; }
__device__ static inline float ld(const bf16 *p, long i) { return __bfloat162float(p[i]); }
__device__ static inline void st(float *p, long i, float v) { p[i] = v; }
__device__ static inline void st(bf16 *p, long i, float v) { p[i] = __float2bfloat16_rn(v); }

__global__ void k_act_tamax_reset(void) { g_act_tamax = 0u; }

template <typename T>
__global__ void k_act_tamax(const T *x, long n)
{
    float m = 0.0f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(ld(x, i)));
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) atomicMax(&g_act_tamax, __float_as_uint(m));
}

/* The setup of a group with minimum lo and maximum hi (0 included). */
__device__ static ar_act_group group_of(const ar_act_mode &m, float lo, float hi)
{
    lo += 0.0f, hi += 0.0f; /* -0 → +0: the CPU's comparisons never keep a -0 */
    float amax = fmaxf(fabsf(lo), fabsf(hi)), gs = m.gs;
    if (m.per_tensor || m.tensor_gs) {
        float t = __uint_as_float(g_act_tamax);
        if (m.per_tensor) amax = t;
        if (m.tensor_gs) gs = ar_act_tensor_gs(t);
    }
    return ar_act_group_setup(m, lo, hi, amax, gs);
}

/* Where group gi of rows of k starts, and its length. */
__device__ static void group_span(const ar_act_mode &m, long gi, int ng, int k, long *off, int *len)
{
    long row = gi / ng;
    int c0 = (int)(gi % ng) * m.glen;
    *off = row * k + c0;
    *len = k - c0 < m.glen ? k - c0 : m.glen;
}

/* One warp per group of at most 32 elements. */
template <typename Ti, typename To>
__global__ void k_act_small(ar_act_mode m, const Ti *x, To *y, long groups, int ng, int k)
{
    long gi = (long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (gi >= groups) return; /* whole warps leave together: the shuffles stay full */
    int lane = threadIdx.x & 31, len;
    long off;
    group_span(m, gi, ng, k, &off, &len);
    float v = lane < len ? ld(x, off + lane) : 0.0f;
    float lo = fminf(0.0f, v), hi = fmaxf(0.0f, v);
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    ar_act_group g = group_of(m, lo, hi);
    if (lane < len) st(y, off + lane, ar_act_elem(m, g, v));
}

/* One block of BIG threads per longer group. */
template <typename Ti, typename To>
__global__ void k_act_big(ar_act_mode m, const Ti *x, To *y, int ng, int k)
{
    __shared__ float slo[32], shi[32];
    int len;
    long off;
    group_span(m, blockIdx.x, ng, k, &off, &len);
    float lo = 0.0f, hi = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float v = ld(x, off + j);
        lo = fminf(lo, v), hi = fmaxf(hi, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if ((threadIdx.x & 31) == 0) slo[threadIdx.x >> 5] = lo, shi[threadIdx.x >> 5] = hi;
    __syncthreads(); /* also: every read above precedes any write below */
    lo = hi = 0.0f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) lo = fminf(lo, slo[i]), hi = fmaxf(hi, shi[i]);
    ar_act_group g = group_of(m, lo, hi);
    for (int j = threadIdx.x; j < len; j += blockDim.x) st(y, off + j, ar_act_elem(m, g, ld(x, off + j)));
}

/* ar_act_quant's dispatch for spec a on rows of k: 1 = nothing to do (bits
 * >= 16), 0 with *m set, -1 with the error (what ar_act_quant refuses). */
static int act_mode_of(const ar_cuda_act *a, int k, ar_act_mode *m)
{
    memset(m, 0, sizeof *m);
    if (!a) return ar_cuda_fail("act quant: no spec");
    if (a->bits >= 16) return 1;
    int G = a->group_size, mx = a->kind == AR_CUDA_Q_MXFP4 || a->kind == AR_CUDA_Q_MXFP8;
    m->kind = a->kind, m->bits = a->bits;
    if (a->rceil && mx) {
        if (G <= 0) return ar_cuda_fail("act quant: MX activation group size %d (needs G > 0)", G);
        m->mode = AR_ACT_MX_RCEIL;
    } else if (a->kind == AR_CUDA_Q_FP8 && !a->dynamic) {
        m->mode = AR_ACT_FP8_STATIC, m->act_max = a->act_max, G = -1;
    } else if (a->kind == AR_CUDA_Q_INT) {
        if (G == 0) G = -1; /* int per tensor is per token, as ar_act_quant */
        if (a->bits < 2 || a->bits > 8 || G < -1)
            return ar_cuda_fail("act quant: int activations with %d bits, group %d", a->bits, G);
        m->mode = AR_ACT_INT;
    } else {
        int ok = (a->kind == AR_CUDA_Q_MXFP4 || a->kind == AR_CUDA_Q_NVFP4) ? a->bits == 4 && G > 0
                 : a->kind == AR_CUDA_Q_MXFP8                               ? a->bits == 8 && G > 0
                 : a->kind == AR_CUDA_Q_FP8                                 ? a->bits == 8 && G >= -1
                                                                            : 0;
        if (!ok) return ar_cuda_fail("act quant: kind %d with %d bits, group %d", a->kind, a->bits, G);
        m->mode = AR_ACT_FP;
        if (a->kind == AR_CUDA_Q_FP8 && G == 0) m->per_tensor = 1, G = -1;
        if (a->kind == AR_CUDA_Q_NVFP4) {
            if (a->act_max > 0) m->gs = 448.0f * 6.0f / a->act_max; /* ar_act_quant's static global scale */
            else m->tensor_gs = 1;
        }
    }
    m->glen = G > 0 && G < k ? G : (k > 0 ? k : 1);
    return 0;
}

int ar_cuda_act_check(const ar_cuda_act *a)
{
    ar_act_mode m;
    return act_mode_of(a, 1, &m) < 0 ? -1 : 0;
}

template <typename T>
static int act_quant(const ar_cuda_act *a, const T *x, T *y, long rows, int k)
{
    ar_act_mode m;
    int rc = act_mode_of(a, k, &m);
    if (rc < 0) return -1;
    if (rows <= 0 || k <= 0) return 0;
    long n = rows * k;
    if (rc == 1) {
        if (x != y) AR_CK(cudaMemcpyAsync(y, x, sizeof(T) * (size_t)n, cudaMemcpyDeviceToDevice, g_cu.st));
        return 0;
    }
    if (m.per_tensor || m.tensor_gs) {
        k_act_tamax_reset<<<1, 1, 0, g_cu.st>>>();
        k_act_tamax<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(x, n);
    }
    int ng = (k + m.glen - 1) / m.glen;
    long groups = rows * ng;
    if (m.glen <= 32)
        k_act_small<<<(unsigned)((groups + WARPS - 1) / WARPS), 32 * WARPS, 0, g_cu.st>>>(m, x, y, groups, ng, k);
    else
        k_act_big<<<(unsigned)groups, BIG, 0, g_cu.st>>>(m, x, y, ng, k);
    return ar_cuda_check_launch("activation quant");
}

int ar_cuda_act_quant(const ar_cuda_act *a, const float *x, float *xq, long rows, int k)
{
    return act_quant(a, x, xq, rows, k);
}

int ar_cuda_act_quant_bf16(const ar_cuda_act *a, const uint16_t *x, uint16_t *xq, long rows, int k)
{
    return act_quant(a, (const bf16 *)x, (bf16 *)xq, rows, k);
}

/* ---- a block's quantized inputs ---------------------------------------------- */

/* First linear of the input group of linear i: q/k/v, o, gate/up, down. */
static int group_first(int i) { return i <= 2 ? 0 : (i == 5 ? 4 : i); }

static int same_act(const ar_cuda_act *a, const ar_cuda_act *b) { return !memcmp(a, b, sizeof *a); }

void ar_cuda_act_set_free(ar_cuda_act_set *s)
{
    for (int i = 0; i < AR_ACT_NLIN; i++)
        if (s->own[i]) ar_cuda_free(s->buf[i]);
    memset(s, 0, sizeof *s);
}

int ar_cuda_act_set_install(ar_cuda_act_set *s, const ar_cuda_act *const aq[AR_ACT_NLIN], const long kin[AR_ACT_NLIN],
                            long rows, int bf16)
{
    ar_cuda_act_set_free(s);
    s->bf16 = bf16;
    for (int i = 0; i < AR_ACT_NLIN; i++) {
        if (!aq || !aq[i] || aq[i]->bits >= 16) continue;
        if (ar_cuda_act_check(aq[i])) {
            ar_cuda_act_set_free(s);
            return -1;
        }
        s->has[i] = 1, s->a[i] = *aq[i], s->any = 1;
        for (int j = group_first(i); j < i && !s->buf[i]; j++)
            if (s->has[j] && same_act(&s->a[j], &s->a[i])) s->buf[i] = s->buf[j];
        if (s->buf[i]) continue;
        if (!(s->buf[i] = ar_cuda_malloc((size_t)rows * kin[i] * (bf16 ? 2 : 4)))) {
            ar_cuda_act_set_free(s);
            return ar_cuda_fail("act quant: no device memory for the quantized inputs");
        }
        s->own[i] = 1;
    }
    return 0;
}

int ar_cuda_act_set_run(const ar_cuda_act_set *s, int first, int last, const void *x, long rows, int k)
{
    /* a shared buffer is filled by its owner, an earlier member of the same group */
    for (int i = first; s->any && i <= last; i++) {
        if (!s->has[i] || !s->own[i]) continue;
        int rc = s->bf16 ? ar_cuda_act_quant_bf16(&s->a[i], (const uint16_t *)x, (uint16_t *)s->buf[i], rows, k)
                         : ar_cuda_act_quant(&s->a[i], (const float *)x, (float *)s->buf[i], rows, k);
        if (rc) return -1;
    }
    return 0;
}
