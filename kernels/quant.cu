/* quant.cu — fake quantization (int_sym / int_asym), its straight-through
 * backward fused with the SignSGD step, the masked MSE loss and the
 * best-iteration bookkeeping, mirroring libar/quant/quant.c and libar/tune/signround.c.
 * The entry points hand the other kinds to quant_fp.cu and quant_gguf.cu.
 *
 * The integer kernels run one warp per quantization group, QG groups per
 * block over a grid-stride loop: a Llama-7B block has ~1.6M groups of 128,
 * and a 128-thread block per group spent its time in block launch and
 * __syncthreads rather than in the ~1.5 KB of traffic per group. The group's
 * min/max and gradient sums are warp shuffles; every lane recomputes the
 * group's scalars from the reduced min/max, so no broadcast is needed. When
 * K and the group size are multiples of 4 each lane moves 4 elements per
 * access (float4 / 4 x bf16). ŵ goes to f32 and/or straight to bf16 (the fast
 * block path's operand), the same value either way.
 * Built with -fmad=false (Makefile) so products and sums round as in C. */
#include "internal.cuh"
#include "quant_kinds.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { QG = 8 };        /* groups (warps) per block */
enum { QMAXB = 8192 };  /* most blocks of a grid-stride launch */

struct qgroup {
    float wmin, wmax, al, be, s, z;
    float init;         /* sym with q.init_scale: the group's init_scale (s = init·β) */
    int s_live, c_wins; /* sym: 1 c = wmax·β won, 0 a = −wmin·α won, 2 tie */
};

__device__ static float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

__device__ static float to_scale_dtype(const ar_cuda_qspec &q, float s)
{
    return q.f32_scale ? s : __half2float(__float2half_rn(s));
}

/* Where a group starts in [N, K] and its length. */
struct gspan {
    long off;
    int len;
};

__device__ static gspan group_span(int k, int gs, int ng, long gi)
{
    int row = (int)(gi / ng), g = (int)(gi % ng);
    int k0 = gs <= 0 ? 0 : g * gs;
    gspan sp;
    sp.len = gs <= 0 ? k : (k - k0 < gs ? k - k0 : gs);
    sp.off = (long)row * k + k0;
    return sp;
}

/* V elements starting at p + j (V = 4: one 16-byte access, p + j aligned). */
template <int V> __device__ static void load(const float *p, long j, float x[V])
{
    if (V == 4) {
        float4 t = *(const float4 *)(p + j);
        x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
    } else {
        for (int i = 0; i < V; i++) x[i] = p[j + i];
    }
}

/* One plain 16-byte (4 x f32) / 8-byte (2 x b32) store, p aligned for it.
 * Written out because a float4 assignment came out as four scalar stores in
 * these kernels (seen in the PTX of k_quant_fwd), and the __stwb/__stcg
 * intrinsics give ordered ("strong") stores. The clobber keeps the compiler
 * from moving memory accesses across it (a lane re-reads V it stored). */
__device__ static void st_v4(float *p, float a, float b, float c, float d)
{
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

__device__ static void st_v2(void *p, unsigned a, unsigned b)
{
    asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(p), "r"(a), "r"(b) : "memory");
}

template <int V> __device__ static void store(float *p, long j, const float x[V])
{
    if (V == 4) st_v4(p + j, x[0], x[1], x[2], x[3]);
    else for (int i = 0; i < V; i++) p[j + i] = x[i];
}

template <int V> __device__ static void store_bf16(__nv_bfloat16 *p, long j, const float x[V])
{
    if (V == 4) {
        __nv_bfloat162 a = __floats2bfloat162_rn(x[0], x[1]), b = __floats2bfloat162_rn(x[2], x[3]);
        uint2 u;
        u.x = *(unsigned *)&a, u.y = *(unsigned *)&b;
        st_v2(p + j, u.x, u.y);
    } else {
        for (int i = 0; i < V; i++) p[j + i] = __float2bfloat16_rn(x[i]);
    }
}

/* Lane-partial range lo/hi (both starting at 0) reduced over the warp. */
__device__ static void warp_minmax(float lo, float hi, float *wmin, float *wmax)
{
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    *wmin = lo, *wmax = hi;
}

/* Range of the group's len elements at w (widened to contain 0, as
 * quant.c's group_range), reduced over the warp: every lane gets it. */
template <int V> __device__ static void warp_range(const float *w, int len, int lane, float *wmin, float *wmax)
{
    float lo = 0.0f, hi = 0.0f, x[V];
    for (int j = lane * V; j < len; j += 32 * V) {
        load<V>(w, j, x);
        for (int i = 0; i < V; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
    }
    warp_minmax(lo, hi, wmin, wmax);
}

/* Range of a group that fits one access per lane (len <= 32·V), from the
 * lane's elements x (zeros past the group's end: the range contains 0). */
template <int V> __device__ static void warp_range_regs(const float x[V], float *wmin, float *wmax)
{
    float lo = 0.0f, hi = 0.0f;
    for (int i = 0; i < V; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
    warp_minmax(lo, hi, wmin, wmax);
}

/* α/β and scale of a group from its range and its stored α, β (used when
 * has_al / has_be, else 1) and init_scale (used by sym with q.init_scale,
 * SignRoundV2: the raw scale is init·β), as quant.c's group_setup. Takes
 * values, so the fused step can set a group up again from the α, β it has
 * just stepped in registers. */
__device__ static qgroup group_setup_vals(const ar_cuda_qspec &q, float wmin, float wmax, int has_al, float al,
                                          int has_be, float be, float init)
{
    qgroup g;
    g.wmin = wmin, g.wmax = wmax;
    float mh = q.hi > 0 ? q.hi : 1.0f;
    g.al = has_al ? clampf(al, 0.0f, mh) : 1.0f;
    g.be = has_be ? clampf(be, 0.0f, mh) : 1.0f;
    g.c_wins = 0;
    g.z = 0.0f;
    g.init = 0.0f;
    float raw;
    if (q.sym && q.init_scale) {
        g.init = init;
        raw = g.init * g.be;
    } else if (q.sym) {
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

/* group_setup_vals of group gi with its α, β and init_scale read from memory. */
__device__ static qgroup group_setup(const ar_cuda_qspec &q, float wmin, float wmax, const float *alpha,
                                     const float *beta, long gi)
{
    return group_setup_vals(q, wmin, wmax, alpha != NULL, alpha ? alpha[gi] : 0.0f, beta != NULL,
                            beta ? beta[gi] : 0.0f, q.sym && q.init_scale ? q.init_scale[gi] : 0.0f);
}

__device__ static void level_bounds(const ar_cuda_qspec &q, float *lo, float *hi)
{
    if (q.sym) *lo = -(float)(1 << (q.bits - 1)), *hi = (float)((1 << (q.bits - 1)) - 1);
    else *lo = 0.0f, *hi = (float)((1 << q.bits) - 1);
}

/* ŵ of one element (before the optional bf16 rounding of q.bf16_out). */
__device__ static float elem_forward(const ar_cuda_qspec &q, const qgroup &g, float w, float v, float lo, float hi)
{
    float x = clampf(rintf(w / g.s + v) + g.z, lo, hi);
    float r = g.s * (x - g.z);
    return q.bf16_out ? __bfloat162float(__float2bfloat16_rn(r)) : r;
}

/* Launch shape of the warp-per-group kernels over ngr groups. */
static unsigned group_blocks(long ngr)
{
    long b = (ngr + QG - 1) / QG;
    return (unsigned)(b < QMAXB ? (b > 0 ? b : 1) : QMAXB);
}

/* wq (f32) and/or wqb (bf16) = ŵ; either may be NULL. */
template <int V>
__global__ void __launch_bounds__(32 * QG) k_quant_fwd(ar_cuda_qspec q, const float *w, int k, int ng, long ngr,
                                                       const float *v, const float *alpha, const float *beta, float *wq,
                                                       __nv_bfloat16 *wqb)
{
    int lane = threadIdx.x & 31;
    float lo, hi;
    level_bounds(q, &lo, &hi);
    for (long gi = (long)blockIdx.x * QG + (threadIdx.x >> 5); gi < ngr; gi += (long)gridDim.x * QG) {
        gspan sp = group_span(k, q.group_size, ng, gi);
        float wmin, wmax;
        if (sp.len <= 32 * V) {
            /* one access per lane (G128 with float4): w and v are loaded
             * together, before the reduction, and used from registers */
            int j = lane * V, has = j < sp.len;
            float x[V], vv[V], r[V];
            for (int i = 0; i < V; i++) x[i] = vv[i] = 0.0f;
            if (has) {
                load<V>(w + sp.off, j, x);
                if (v) load<V>(v + sp.off, j, vv);
            }
            warp_range_regs<V>(x, &wmin, &wmax);
            qgroup g = group_setup(q, wmin, wmax, alpha, beta, gi);
            if (!has) continue;
            for (int i = 0; i < V; i++) r[i] = elem_forward(q, g, x[i], vv[i], lo, hi);
            if (wq) store<V>(wq + sp.off, j, r);
            if (wqb) store_bf16<V>(wqb + sp.off, j, r);
            continue;
        }
        warp_range<V>(w + sp.off, sp.len, lane, &wmin, &wmax);
        qgroup g = group_setup(q, wmin, wmax, alpha, beta, gi);
        for (int j = lane * V; j < sp.len; j += 32 * V) {
            float x[V], vv[V], r[V];
            load<V>(w + sp.off, j, x);
            if (v) load<V>(v + sp.off, j, vv);
            for (int i = 0; i < V; i++) r[i] = elem_forward(q, g, x[i], v ? vv[i] : 0.0f, lo, hi);
            if (wq) store<V>(wq + sp.off, j, r);
            if (wqb) store_bf16<V>(wqb + sp.off, j, r);
        }
    }
}

static int check_spec(const ar_cuda_qspec *q)
{
    if (q->kind != AR_CUDA_Q_INT) return ar_cuda_fail("quant: unknown kind %d", q->kind);
    if (q->bits < 2 || q->bits > 8 || q->group_size == 0 || q->group_size < -1)
        return ar_cuda_fail("quant: bad spec (bits %d, group %d)", q->bits, q->group_size);
    if (q->init_scale && !q->sym) return ar_cuda_fail("quant: init_scale needs a symmetric scheme");
    return 0;
}

static int ngroups(int k, int gs) { return gs <= 0 ? 1 : (k + gs - 1) / gs; }

/* 1 when every group starts on a 4-element boundary and the buffers allow
 * 16-byte (f32) and 8-byte (bf16) accesses there. */
static int vec4_ok(int k, int gs, const void *const *p, int np)
{
    if (k % 4 || (gs > 0 && gs % 4)) return 0;
    for (int i = 0; i < np; i++)
        if ((uintptr_t)p[i] % 16) return 0;
    return 1;
}

/* The kinds quant_fp.cu handles. */
static int is_fp(const ar_cuda_qspec *q) { return q->kind >= AR_CUDA_Q_MXFP4 && q->kind <= AR_CUDA_Q_FP8; }

size_t ar_cuda_quant_scratch_bytes(const ar_cuda_qspec *q, int n, int k)
{
    return is_fp(q) ? ar_cuda_fp_scratch_bytes(q, n, k) : 0;
}

int ar_cuda_quant_forward_to(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                             const float *alpha, const float *beta, float *wq, uint16_t *wqb)
{
    if (q->kind != AR_CUDA_Q_INT) {
        /* the other kinds write f32; their bf16 copy is narrowed from it */
        if (!wq) return ar_cuda_fail("quant: kind %d needs the f32 output", q->kind);
        int rc = q->kind == AR_CUDA_Q_GGUF ? ar_cuda_gguf_forward(q, w, n, k, v, wq)
                 : is_fp(q)                ? ar_cuda_fp_forward(q, w, n, k, v, beta, wq)
                                           : check_spec(q);
        if (!rc && wqb) ar_cuda_to_bf16(wqb, wq, (long)n * k);
        return rc;
    }
    if (check_spec(q)) return -1;
    if (!wq && !wqb) return 0;
    int ng = ngroups(k, q->group_size);
    long ngr = (long)n * ng;
    const void *p[] = {w, v, wq, wqb};
    __nv_bfloat16 *ob = (__nv_bfloat16 *)wqb;
    if (vec4_ok(k, q->group_size, p, 4))
        k_quant_fwd<4><<<group_blocks(ngr), 32 * QG, 0, g_cu.st>>>(*q, w, k, ng, ngr, v, alpha, beta, wq, ob);
    else
        k_quant_fwd<1><<<group_blocks(ngr), 32 * QG, 0, g_cu.st>>>(*q, w, k, ng, ngr, v, alpha, beta, wq, ob);
    return ar_cuda_check_launch("quant forward");
}

int ar_cuda_quant_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                          const float *alpha, const float *beta, float *wq)
{
    return ar_cuda_quant_forward_to(q, w, n, k, v, alpha, beta, wq, NULL);
}

/* The STE gradients of one group: per element dV (passed to emit), and the
 * scale/zero-point sums reduced over the warp into dα, dβ. */
struct qgrads {
    double dal, dbe;
};

/* Per-element part; returns dL/dV of element j (0 when clamped) and adds to
 * the scale / zero-point accumulators. */
__device__ static float elem_grad(const ar_cuda_qspec &q, const qgroup &g, float w, float v, float dwq, float lo,
                                  float hi, double *acc_s, double *acc_z)
{
    float t = rintf(w / g.s + v) + g.z;
    int inside = t > lo && t < hi;   /* open interval: torch.clamp's gradient (quant_int.c) */
    float x = clampf(t, lo, hi);
    double gr = dwq;
    /* the quotient is formed for every element and then selected (the same
     * value): a branch around it cost each element a divergence region */
    double w_s = (double)w / g.s;
    *acc_s += gr * ((double)x - g.z - (inside ? w_s : 0.0));
    /* (inside − 1) as the double 0 or −1 directly: the same value as the
     * int's conversion, without a conversion instruction per element */
    *acc_z += gr * g.s * (inside ? 0.0 : -1.0);
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
    } else if (q.init_scale) {
        r.dbe = (g.s_live ? ds : 0.0) * g.init;   /* s = init·β; dα stays 0 */
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

__device__ static double warp_sum(double x)
{
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* What one backward launch does with the gradients. */
struct qbwd_args {
    float *v, *alpha, *beta;           /* tunables (alpha/beta NULL: no min-max tuning) */
    float *dv, *dalpha, *dbeta;        /* step 0: accumulated into (each may be NULL) */
    int step;                          /* 1: SignSGD step on v, alpha, beta instead */
    float lr, mlr;
};

/* Lane 0's part: dα, dβ of group gi from the warp's sums, added to the
 * gradients or (step) taken as a SignSGD step with the [0, hi] clamp. */
__device__ static void minmax_update(const ar_cuda_qspec &q, const qgroup &g, const qbwd_args &a, long gi, double ds,
                                     double dz, float mh)
{
    qgrads r = minmax_grads(q, g, ds, dz);
    if (a.step) {
        if (a.alpha) a.alpha[gi] = clampf(a.alpha[gi] - a.mlr * sgnf((float)r.dal), 0.0f, mh);
        if (a.beta) a.beta[gi] = clampf(a.beta[gi] - a.mlr * sgnf((float)r.dbe), 0.0f, mh);
    } else {
        if (a.dalpha) a.dalpha[gi] += (float)r.dal;
        if (a.dbeta) a.dbeta[gi] += (float)r.dbe;
    }
}

/* One lane's chunk of V elements at j of a group: the STE gradients into
 * acc_s / acc_z, then the SignSGD step on v or dv += dL/dV. x: w, vv: v (0
 * without V), gw: dŵ, all already loaded. */
template <int V>
__device__ static void bwd_chunk(const ar_cuda_qspec &q, const qgroup &g, const qbwd_args &a, long at, const float x[V],
                                 float vv[V], const float gw[V], float lo, float hi, double *acc_s, double *acc_z)
{
    float d[V];
    for (int i = 0; i < V; i++) d[i] = elem_grad(q, g, x[i], vv[i], gw[i], lo, hi, acc_s, acc_z);
    if (a.step) {
        if (a.v) {
            for (int i = 0; i < V; i++) vv[i] = vv[i] - a.lr * sgnf(d[i]);
            store<V>(a.v, at, vv);
        }
    } else if (a.dv) {
        float o[V];
        load<V>(a.dv, at, o);
        for (int i = 0; i < V; i++) o[i] += d[i];
        store<V>(a.dv, at, o);
    }
}

/* mode 0: accumulate dv, dalpha, dbeta. step: SignSGD on v, alpha, beta. */
template <int V>
__global__ void __launch_bounds__(32 * QG) k_quant_bwd(ar_cuda_qspec q, const float *w, int k, int ng, long ngr,
                                                       const float *dwq, qbwd_args a)
{
    int lane = threadIdx.x & 31;
    float lo, hi;
    level_bounds(q, &lo, &hi);
    float mh = q.hi > 0 ? q.hi : 1.0f;
    for (long gi = (long)blockIdx.x * QG + (threadIdx.x >> 5); gi < ngr; gi += (long)gridDim.x * QG) {
        gspan sp = group_span(k, q.group_size, ng, gi);
        float wmin, wmax;
        double acc_s = 0.0, acc_z = 0.0;
        if (sp.len <= 32 * V) {
            /* one access per lane: w, v and dŵ loaded together, before the
             * reduction, and used from registers */
            int j = lane * V, has = j < sp.len;
            float x[V], vv[V], gw[V];
            for (int i = 0; i < V; i++) x[i] = vv[i] = gw[i] = 0.0f;
            if (has) {
                load<V>(w + sp.off, j, x);
                load<V>(dwq + sp.off, j, gw);
                if (a.v) load<V>(a.v + sp.off, j, vv);
            }
            warp_range_regs<V>(x, &wmin, &wmax);
            qgroup g = group_setup(q, wmin, wmax, a.alpha, a.beta, gi);
            if (has) bwd_chunk<V>(q, g, a, sp.off + j, x, vv, gw, lo, hi, &acc_s, &acc_z);
            acc_s = warp_sum(acc_s);
            acc_z = warp_sum(acc_z);
            if (lane == 0) minmax_update(q, g, a, gi, acc_s, acc_z, mh);
            continue;
        }
        warp_range<V>(w + sp.off, sp.len, lane, &wmin, &wmax);
        qgroup g = group_setup(q, wmin, wmax, a.alpha, a.beta, gi);
        for (int j = lane * V; j < sp.len; j += 32 * V) {
            float x[V], vv[V], gw[V];
            load<V>(w + sp.off, j, x);
            load<V>(dwq + sp.off, j, gw);
            if (a.v) load<V>(a.v + sp.off, j, vv);
            else for (int i = 0; i < V; i++) vv[i] = 0.0f;
            bwd_chunk<V>(q, g, a, sp.off + j, x, vv, gw, lo, hi, &acc_s, &acc_z);
        }
        acc_s = warp_sum(acc_s);
        acc_z = warp_sum(acc_z);
        if (lane == 0) minmax_update(q, g, a, gi, acc_s, acc_z, mh);
    }
}

static int launch_bwd(const ar_cuda_qspec *q, const float *w, int n, int k, const float *dwq, const qbwd_args &a,
                      const char *what)
{
    if (check_spec(q)) return -1;
    int ng = ngroups(k, q->group_size);
    long ngr = (long)n * ng;
    const void *p[] = {w, dwq, a.v, a.dv};
    if (vec4_ok(k, q->group_size, p, 4))
        k_quant_bwd<4><<<group_blocks(ngr), 32 * QG, 0, g_cu.st>>>(*q, w, k, ng, ngr, dwq, a);
    else
        k_quant_bwd<1><<<group_blocks(ngr), 32 * QG, 0, g_cu.st>>>(*q, w, k, ng, ngr, dwq, a);
    return ar_cuda_check_launch(what);
}

int ar_cuda_quant_backward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                           const float *alpha, const float *beta, const float *dwq, float *dv, float *dalpha,
                           float *dbeta)
{
    if (q->kind == AR_CUDA_Q_GGUF) return ar_cuda_gguf_backward(q, w, n, k, (float *)v, dwq, dv, 0, 0);
    if (is_fp(q)) return ar_cuda_fp_backward(q, w, n, k, (float *)v, NULL, (float *)beta, dwq, dv, dbeta, 0, 0, 0);
    qbwd_args a = {(float *)v, (float *)alpha, (float *)beta, dv, dalpha, dbeta, 0, 0.0f, 0.0f};
    return launch_bwd(q, w, n, k, dwq, a, "quant backward");
}

int ar_cuda_quant_signsgd(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, float *alpha,
                          float *beta, const float *dwq, float lr, float mlr)
{
    if (q->kind == AR_CUDA_Q_GGUF) return ar_cuda_gguf_backward(q, w, n, k, v, dwq, NULL, 1, lr);
    if (is_fp(q)) return ar_cuda_fp_backward(q, w, n, k, v, alpha, beta, dwq, NULL, NULL, 1, lr, mlr);
    qbwd_args a = {v, alpha, beta, NULL, NULL, NULL, 1, lr, mlr};
    return launch_bwd(q, w, n, k, dwq, a, "quant signsgd");
}

/* ---- the fused tuning step ---------------------------------------------------------
 * ar_cuda_quant_step does per group what ar_cuda_copy_if_many (the best-loss
 * snapshot), ar_cuda_quant_signsgd and ar_cuda_quant_forward_to do in three
 * passes: w, dŵ and V are read once, V and ŵ written once, and the next
 * iteration's forward needs no pass of its own. The values are those
 * kernels' bit for bit: the same device functions in the same order on the
 * same lanes (the backward's vector width is ar_cuda_quant_signsgd's choice,
 * which fixes the order of the α/β gradient sums). The new α, β come from
 * the butterfly sums, which every lane holds bit for bit, so every lane
 * steps them itself (lane 0 stores them) and sets the group up again for the
 * forward from registers, where the separate forward read them back.
 *
 * All segments run in one launch over one index of groups (the segment
 * table is a kernel parameter). Groups of at most 128 with 16-byte aligned
 * rows (W4G128, the default) go through k_step_pipe: a grid of about one
 * wave of warps, each streaming its groups through a cp.async pipeline of
 * PS stages in shared memory, so the next PS − 1 groups' 1.5 KB are in
 * flight while a group's (double-precision) gradient math runs: that math
 * left the memory system idle in k_quant_bwd. Other shapes: k_step, one
 * group per warp and iteration as k_quant_bwd. */

enum { PS = 3 };   /* pipeline stages per warp */
enum { PQG = 4 };  /* warps per k_step_pipe block */

struct qstep_table {
    ar_cuda_qstep_seg s[AR_CUDA_QSTEP_SEGS];
    long first[AR_CUDA_QSTEP_SEGS + 1]; /* global index of each segment's first group; [nseg]: the total */
    int ng[AR_CUDA_QSTEP_SEGS];          /* groups per row */
    int vout[AR_CUDA_QSTEP_SEGS];        /* 1: wq, wqb, best_v allow the launch's vector stores */
    int even[AR_CUDA_QSTEP_SEGS];        /* 1: group_size > 0 divides k */
    int nseg;
};

/* A group's stored α, β (0 when the segment has none) and init_scale. */
struct gscal {
    float al, be, init;
};

__device__ static int has_init(const ar_cuda_qspec &q) { return q.sym && q.init_scale != NULL; }

__device__ static gscal load_scalars(const ar_cuda_qstep_seg &s, long gi)
{
    gscal c;
    c.al = s.alpha ? s.alpha[gi] : 0.0f;
    c.be = s.beta ? s.beta[gi] : 0.0f;
    c.init = has_init(s.q) ? s.q.init_scale[gi] : 0.0f;
    return c;
}

__device__ static qgroup setup_of(const ar_cuda_qstep_seg &s, float wmin, float wmax, const gscal &c)
{
    return group_setup_vals(s.q, wmin, wmax, s.alpha != NULL, c.al, s.beta != NULL, c.be, c.init);
}

/* V elements to p + j: one vector access when vec (p + j aligned for it). */
template <int V> __device__ static void store_out(float *p, long j, const float x[V], int vec)
{
    if (vec) store<V>(p, j, x);
    else for (int i = 0; i < V; i++) p[j + i] = x[i];
}

template <int V> __device__ static void store_out_bf16(__nv_bfloat16 *p, long j, const float x[V], int vec)
{
    if (vec) store_bf16<V>(p, j, x);
    else for (int i = 0; i < V; i++) p[j + i] = __float2bfloat16_rn(x[i]);
}

/* Lane 0: the group's α, β before the step into the snapshot (copy_if_many
 * copies the stored values, unclamped). */
__device__ static void snap_scalars(const ar_cuda_qstep_seg &s, long gi, int lane, const gscal &c)
{
    if (lane) return;
    if (s.alpha && s.best_alpha) s.best_alpha[gi] = c.al;
    if (s.beta && s.best_beta) s.best_beta[gi] = c.be;
}

/* Every lane: minmax_update's SignSGD step of α, β from the warp's sums,
 * into c; lane 0 stores them. */
__device__ static void step_scalars(const ar_cuda_qstep_seg &s, const qgroup &g, long gi, int lane, double ds,
                                    double dz, gscal *c)
{
    float mh = s.q.hi > 0 ? s.q.hi : 1.0f;
    qgrads r = minmax_grads(s.q, g, ds, dz);
    if (s.alpha) c->al = clampf(c->al - s.mlr * sgnf((float)r.dal), 0.0f, mh);
    if (s.beta) c->be = clampf(c->be - s.mlr * sgnf((float)r.dbe), 0.0f, mh);
    if (lane == 0) {
        if (s.alpha) s.alpha[gi] = c->al;
        if (s.beta) s.beta[gi] = c->be;
    }
}

/* elem_grad's values with fewer instructions (the fused step's; the separate
 * kernels keep elem_grad, and cuda_check compares the two bit for bit). Two
 * exact rewrites, no other change of operation or order:
 * - w / s (f32) is the f64 quotient (double)w / s rounded to f32, which elem_grad
 *   forms anyway: rounding the exact quotient of two floats to 53 bits and then to
 *   24 gives the float that rounding it to 24 directly gives (double rounding is
 *   innocuous for +, −, ×, ÷ when 53 >= 2·24 + 2, Figueroa 1995; that covers the
 *   f32 overflow threshold and subnormal quotients too). One f64 division per
 *   element instead of an f64 and an f32 one.
 * - the zero-point term gr·s·(inside ? 0 : −1): inside, it adds ±0 to acc_z, which
 *   starts at +0 and can never become −0 (a sum is −0 only when both addends are),
 *   so it leaves acc_z's bits unchanged; outside it adds −(gr·s), exactly the
 *   negated product, i.e. acc_z − gr·s. So the term is subtracted where the
 *   element is clamped, with no product by 0 / −1. */
__device__ static float elem_grad_step(const ar_cuda_qspec &q, const qgroup &g, float w, float v, float dwq,
                                       float lo, float hi, double *acc_s, double *acc_z)
{
    double w_s = (double)w / g.s;
    float t = rintf((float)w_s + v) + g.z;
    int inside = t > lo && t < hi;   /* open interval: torch.clamp's gradient (quant_int.c) */
    float x = clampf(t, lo, hi);
    double gr = dwq, gs = gr * g.s;
    *acc_s += gr * ((double)x - g.z - (inside ? w_s : 0.0));
    if (!inside) *acc_z -= gs;
    /* (float)gs: the f64 product of two floats is exact (48 bits), so its
     * rounding to f32 is the f32 product (the compiler made elem_grad's so) */
    return inside ? dwq * g.s : 0.0f;
}

/* bwd_chunk's step on one lane's V elements (x: w, vv: V, updated in
 * place, gw: dŵ), with the snapshot of V before it when snap; elem_grad_step
 * gives elem_grad's bits. */
template <int V>
__device__ static void step_chunk(const ar_cuda_qstep_seg &s, const qgroup &g, long at, const float x[V], float vv[V],
                                  const float gw[V], float lo, float hi, int snap, int vout, double *acc_s,
                                  double *acc_z)
{
    float d[V];
    if (snap && s.best_v) store_out<V>(s.best_v, at, vv, vout);
    for (int i = 0; i < V; i++) d[i] = elem_grad_step(s.q, g, x[i], vv[i], gw[i], lo, hi, acc_s, acc_z);
    for (int i = 0; i < V; i++) vv[i] = vv[i] - s.lr * sgnf(d[i]);
    store<V>(s.v, at, vv);
}

/* k_quant_fwd's ŵ of V elements, to wq and/or wqb. */
template <int V>
__device__ static void forward_chunk(const ar_cuda_qstep_seg &s, const qgroup &g, long at, const float x[V],
                                     const float vv[V], float lo, float hi, int vout)
{
    float r[V];
    for (int i = 0; i < V; i++) r[i] = elem_forward(s.q, g, x[i], vv[i], lo, hi);
    if (s.wq) store_out<V>(s.wq, at, r, vout);
    if (s.wqb) store_out_bf16<V>((__nv_bfloat16 *)s.wqb, at, r, vout);
}

/* The step of group gi (of its segment) that fits one access per lane
 * (len <= 32·V): x, vv, gw hold the lane's w, V, dŵ (zeros past the end). */
template <int V>
__device__ static void step_group_regs(const ar_cuda_qstep_seg &s, long gi, gspan sp, int lane, int snap, int vout,
                                       const float x[V], float vv[V], const float gw[V], gscal c)
{
    float lo, hi, wmin, wmax;
    level_bounds(s.q, &lo, &hi);
    int j = lane * V, has = j < sp.len;
    warp_range_regs<V>(x, &wmin, &wmax);
    qgroup g = setup_of(s, wmin, wmax, c);
    if (snap) snap_scalars(s, gi, lane, c);
    double acc_s = 0.0, acc_z = 0.0;
    if (has) step_chunk<V>(s, g, sp.off + j, x, vv, gw, lo, hi, snap, vout, &acc_s, &acc_z);
    acc_s = warp_sum(acc_s);
    acc_z = warp_sum(acc_z);
    step_scalars(s, g, gi, lane, acc_s, acc_z, &c);
    qgroup g2 = setup_of(s, wmin, wmax, c);
    if (has) forward_chunk<V>(s, g2, sp.off + j, x, vv, lo, hi, vout);
}

/* The step of a longer group: the range pass, the gradient pass (V stepped
 * in memory), then the forward pass reading back the V this lane wrote. */
template <int V>
__device__ static void step_group_loop(const ar_cuda_qstep_seg &s, long gi, gspan sp, int lane, int snap, int vout)
{
    float lo, hi, wmin, wmax;
    level_bounds(s.q, &lo, &hi);
    gscal c = load_scalars(s, gi);
    warp_range<V>(s.w + sp.off, sp.len, lane, &wmin, &wmax);
    qgroup g = setup_of(s, wmin, wmax, c);
    if (snap) snap_scalars(s, gi, lane, c);
    double acc_s = 0.0, acc_z = 0.0;
    for (int j = lane * V; j < sp.len; j += 32 * V) {
        float x[V], vv[V], gw[V];
        load<V>(s.w + sp.off, j, x);
        load<V>(s.dwq + sp.off, j, gw);
        load<V>(s.v + sp.off, j, vv);
        step_chunk<V>(s, g, sp.off + j, x, vv, gw, lo, hi, snap, vout, &acc_s, &acc_z);
    }
    acc_s = warp_sum(acc_s);
    acc_z = warp_sum(acc_z);
    step_scalars(s, g, gi, lane, acc_s, acc_z, &c);
    qgroup g2 = setup_of(s, wmin, wmax, c);
    for (int j = lane * V; j < sp.len; j += 32 * V) {
        float x[V], vv[V];
        load<V>(s.w + sp.off, j, x);
        load<V>(s.v + sp.off, j, vv);
        forward_chunk<V>(s, g2, sp.off + j, x, vv, lo, hi, vout);
    }
}

/* Where global group gi lies: its segment, index in it, span. */
struct gloc {
    int si;
    long gl;
    gspan sp;
};

/* *si: the segment of a smaller gi of the same caller, or 0 (a warp walks
 * its groups upwards, so the segment only moves forward). Rows that are a
 * whole number of groups need no division: the group starts at gl·gs. */
__device__ static gloc locate(const qstep_table &t, long gi, int *si)
{
    while (*si + 1 < t.nseg && gi >= t.first[*si + 1]) (*si)++;
    gloc l;
    l.si = *si;
    l.gl = gi - t.first[l.si];
    const ar_cuda_qstep_seg &s = t.s[l.si];
    if (t.even[l.si]) {
        l.sp.off = l.gl * s.q.group_size;
        l.sp.len = s.q.group_size;
    } else {
        l.sp = group_span(s.k, s.q.group_size, t.ng[l.si], l.gl);
    }
    return l;
}

/* Any group shape, one group per warp and iteration. */
template <int V>
__global__ void __launch_bounds__(32 * QG) k_step(qstep_table t, const int *flag)
{
    int lane = threadIdx.x & 31, snap = flag && *flag, si = 0;
    long total = t.first[t.nseg];
    for (long gi = (long)blockIdx.x * QG + (threadIdx.x >> 5); gi < total; gi += (long)gridDim.x * QG) {
        gloc l = locate(t, gi, &si);
        const ar_cuda_qstep_seg &s = t.s[l.si];
        int vout = t.vout[l.si];
        if (l.sp.len > 32 * V) {
            step_group_loop<V>(s, l.gl, l.sp, lane, snap, vout);
            continue;
        }
        int j = lane * V;
        float x[V], vv[V], gw[V];
        for (int i = 0; i < V; i++) x[i] = vv[i] = gw[i] = 0.0f;
        if (j < l.sp.len) {
            load<V>(s.w + l.sp.off, j, x);
            load<V>(s.dwq + l.sp.off, j, gw);
            load<V>(s.v + l.sp.off, j, vv);
        }
        step_group_regs<V>(s, l.gl, l.sp, lane, snap, vout, x, vv, gw, load_scalars(s, l.gl));
    }
}

/* One stage of a warp's pipeline: a group's w, dŵ, V (16 bytes a lane) and
 * its α, β, init_scale (each lane its own copy, so a lane reads only what
 * its own copies wrote and cp.async.wait_group is all the sync needed). */
struct pipe_stage {
    float4 w[32], g[32], v[32], c[32];
};

__device__ static unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ static void cp_async16(void *dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ static void cp_async4(void *dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ static void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/* Wait until at most N of this thread's committed copy groups are pending. */
template <int N> __device__ static void cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Queue global group gi into stage st (nothing when gi >= total; lanes past
 * the group's end copy no elements). */
__device__ static void pipe_issue(const qstep_table &t, long gi, long total, int lane, int *si, pipe_stage *st)
{
    if (gi >= total) return;
    gloc l = locate(t, gi, si);
    const ar_cuda_qstep_seg &s = t.s[l.si];
    if (lane * 4 < l.sp.len) {
        long at = l.sp.off + lane * 4;
        cp_async16(&st->w[lane], s.w + at);
        cp_async16(&st->g[lane], s.dwq + at);
        cp_async16(&st->v[lane], s.v + at);
    }
    if (s.alpha) cp_async4(&st->c[lane].x, s.alpha + l.gl);
    if (s.beta) cp_async4(&st->c[lane].y, s.beta + l.gl);
    if (has_init(s.q)) cp_async4(&st->c[lane].z, s.q.init_scale + l.gl);
}

/* Groups of at most 128 (every row 16-byte aligned): warp w of the grid
 * takes groups w, w + nw, w + 2·nw, ... with the next PS − 1 of them queued. */
__global__ void __launch_bounds__(32 * PQG) k_step_pipe(qstep_table t, const int *flag)
{
    __shared__ pipe_stage stages[PQG][PS];
    int lane = threadIdx.x & 31, snap = flag && *flag, si_issue = 0, si = 0;
    pipe_stage *my = stages[threadIdx.x >> 5];
    long total = t.first[t.nseg], nw = (long)gridDim.x * PQG, g0 = (long)blockIdx.x * PQG + (threadIdx.x >> 5);
    for (int p = 0; p < PS - 1; p++) {
        pipe_issue(t, g0 + p * nw, total, lane, &si_issue, &my[p]);
        cp_async_commit();
    }
    int slot = 0;
    for (long gi = g0; gi < total; gi += nw) {
        /* the stage refilled here was read into registers last iteration */
        pipe_issue(t, gi + (PS - 1) * nw, total, lane, &si_issue, &my[(slot + PS - 1) % PS]);
        cp_async_commit();
        cp_async_wait<PS - 1>();
        gloc l = locate(t, gi, &si);
        const ar_cuda_qstep_seg &s = t.s[l.si];
        const pipe_stage &st = my[slot];
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f}, vv[4] = {0.0f, 0.0f, 0.0f, 0.0f}, gw[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (lane * 4 < l.sp.len) {
            float4 a = st.w[lane], b = st.g[lane], d = st.v[lane];
            x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
            gw[0] = b.x, gw[1] = b.y, gw[2] = b.z, gw[3] = b.w;
            vv[0] = d.x, vv[1] = d.y, vv[2] = d.z, vv[3] = d.w;
        }
        float4 cs = st.c[lane];
        gscal c = {s.alpha ? cs.x : 0.0f, s.beta ? cs.y : 0.0f, has_init(s.q) ? cs.z : 0.0f};
        step_group_regs<4>(s, l.gl, l.sp, lane, snap, 1, x, vv, gw, c);
        slot = slot + 1 == PS ? 0 : slot + 1;
    }
    cp_async_wait<0>();
}

/* Blocks of k_step_pipe for ngr groups: at most one wave (the blocks that
 * fit on the device at once), so each warp's pipeline runs long. */
static unsigned pipe_blocks(long ngr)
{
    static int per_sm = -1, nsm = 0;
    if (per_sm < 0) {
        per_sm = 0;
        cudaFuncSetAttribute(k_step_pipe, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
        if (cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, g_cu.dev) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_step_pipe, 32 * PQG, 0) != cudaSuccess)
            per_sm = 0;
        cudaGetLastError(); /* a failed query only costs the grid size: clear it */
        if (per_sm < 1 || nsm < 1) per_sm = 4, nsm = 132;
    }
    long need = (ngr + PQG - 1) / PQG, wave = (long)per_sm * nsm;
    return (unsigned)(need < wave ? (need > 0 ? need : 1) : wave);
}

/* 1 when every pointer allows 16-byte accesses (NULL does). */
static int aligned16(const void *const *p, int np)
{
    for (int i = 0; i < np; i++)
        if ((uintptr_t)p[i] % 16) return 0;
    return 1;
}

/* Launch the kernel of table kind which: 0 k_step_pipe, 1 k_step<4>, 2
 * k_step<1>. */
static int launch_step(const qstep_table &t, int which, const int *flag)
{
    long total = t.first[t.nseg];
    if (which == 0) k_step_pipe<<<pipe_blocks(total), 32 * PQG, 0, g_cu.st>>>(t, flag);
    else if (which == 1) k_step<4><<<group_blocks(total), 32 * QG, 0, g_cu.st>>>(t, flag);
    else k_step<1><<<group_blocks(total), 32 * QG, 0, g_cu.st>>>(t, flag);
    return ar_cuda_check_launch("quant step");
}

int ar_cuda_quant_step(const ar_cuda_qstep_seg *segs, int nseg, const int *flag)
{
    if (nseg < 0 || nseg > AR_CUDA_QSTEP_SEGS)
        return ar_cuda_fail("quant step: %d segments (at most %d)", nseg, AR_CUDA_QSTEP_SEGS);
    qstep_table t[3];
    memset(t, 0, sizeof t);
    for (int i = 0; i < nseg; i++) {
        const ar_cuda_qstep_seg *s = &segs[i];
        if (s->q.kind != AR_CUDA_Q_INT) return ar_cuda_fail("quant step: segment %d: kind %d has no fused step", i,
                                                            s->q.kind);
        if (check_spec(&s->q)) return -1;
        if (s->n <= 0 || s->k <= 0) continue;
        if (!s->w || !s->dwq || !s->v) return ar_cuda_fail("quant step: segment %d lacks w, dwq or v", i);
        int gs = s->q.group_size, ng = ngroups(s->k, gs);
        const void *in[] = {s->w, s->dwq, s->v}, *out[] = {s->wq, s->wqb, s->best_v};
        /* the backward's vector width is ar_cuda_quant_signsgd's (w, dwq, v) */
        int vin = vec4_ok(s->k, gs, in, 3), vout = vin && aligned16(out, 3);
        int which = vin && vout && gs > 0 && gs <= 128 ? 0 : (vin ? 1 : 2);
        qstep_table &tb = t[which];
        tb.s[tb.nseg] = *s;
        tb.ng[tb.nseg] = ng;
        tb.vout[tb.nseg] = vout;
        tb.even[tb.nseg] = gs > 0 && s->k % gs == 0;
        tb.first[tb.nseg + 1] = tb.first[tb.nseg] + (long)s->n * ng;
        tb.nseg++;
    }
    for (int w = 0; w < 3; w++)
        if (t[w].nseg && launch_step(t[w], w, flag)) return -1;
    return 0;
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

/* ---- outlier-suppressed loss (SignRoundV2) ----------------------------------
 * The threshold is the k-th largest a = |pred − ref|. As a >= 0, the order of
 * the floats is the order of their bit patterns, so a radix select over the
 * bits finds it exactly: three passes (11, 11, 10 bits from the top) each
 * histogram the next digit of the elements whose higher bits match the
 * prefix found so far (shared-memory histograms merged with atomics: counts
 * do not depend on the order), then one warp picks the digit holding the
 * k-th largest. All state stays on the device, so the tuner never waits.
 * The CPU drops every a > thr and, of the elements equal to thr, the first
 * `ties` = k − #(a > thr) in index order. When all equal elements go (the
 * usual case: one element at the threshold) nothing more is needed;
 * otherwise the index of the ties-th equal element is searched: counts per
 * chunk, then one block walks the chunk holding it in index order. */
enum { OS_BINS = 2048, OS_CHUNKS = 1024, OS_THREADS = 256 };

struct os_state {
    unsigned prefix;          /* the threshold's high bits found so far (all 32 after the last pass) */
    unsigned kleft;           /* rank still sought among the elements matching prefix; then ties to drop */
    int search;               /* 1: only some of the elements equal to the threshold are dropped */
    long long cut;            /* elements equal to the threshold are dropped up to this index */
    unsigned hist[OS_BINS];
    unsigned counts[OS_CHUNKS];
};

size_t ar_cuda_outlier_scratch_bytes(void) { return sizeof(os_state); }

/* The bits of |pred[i] − ref[i]| (the CPU's fabsf(pred[i] − ref[i])). */
__device__ static unsigned abs_err_bits(const float *pred, const float *ref, long i)
{
    return __float_as_uint(fabsf(pred[i] - ref[i]));
}

__global__ void k_os_init(os_state *st, unsigned k)
{
    for (int i = threadIdx.x; i < OS_BINS; i += blockDim.x) st->hist[i] = 0;
    if (threadIdx.x == 0) st->prefix = 0, st->kleft = k, st->search = 0, st->cut = -1;
}

/* Histogram of digit (bits >> shift) & (2^width − 1) over the elements whose
 * bits above shift + width equal the prefix. */
__global__ void k_os_hist(const float *pred, const float *ref, long n, os_state *st, int shift, int width)
{
    __shared__ unsigned h[OS_BINS];
    for (int i = threadIdx.x; i < OS_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    unsigned prefix = st->prefix, dmask = (1u << width) - 1;
    int hs = shift + width;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        unsigned u = abs_err_bits(pred, ref, i);
        if (hs < 32 && (u >> hs) != prefix) continue;
        atomicAdd(&h[(u >> shift) & dmask], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b <= (int)dmask; b += blockDim.x)
        if (h[b]) atomicAdd(&st->hist[b], h[b]);
}

/* One warp: the digit holding the kleft-th largest (lane l owns bins
 * [l·per, (l+1)·per)); prefix and kleft move on, the histogram is cleared
 * for the next pass. On the last pass, kleft becomes the number of ties to
 * drop, and search tells whether that is fewer than all of them. */
__global__ void k_os_pick(os_state *st, int width, int last)
{
    int lane = threadIdx.x, per = (1 << width) / 32;
    unsigned prefix = st->prefix, kleft = st->kleft, own = 0;
    for (int j = 0; j < per; j++) own += st->hist[lane * per + j];
    unsigned incl = own;      /* count in this lane's bins and all higher ones */
    for (int o = 1; o < 32; o <<= 1) {
        unsigned t = __shfl_down_sync(0xffffffffu, incl, o);
        if (lane + o < 32) incl += t;
    }
    unsigned above = incl - own;
    if (above < kleft && kleft <= incl) {
        unsigned cum = above;
        for (int j = per - 1; j >= 0; j--) {
            unsigned c = st->hist[lane * per + j];
            if (cum + c >= kleft) {
                st->prefix = (prefix << width) | (unsigned)(lane * per + j);
                st->kleft = kleft - cum;
                if (last) {
                    st->search = kleft - cum < c;
                    if (!st->search) st->cut = 0x7fffffffffffffffLL;
                }
                break;
            }
            cum += c;
        }
    }
    __syncwarp();
    for (int j = 0; j < per; j++) st->hist[lane * per + j] = 0;
}

/* Elements equal to the threshold per chunk of ceil(n / OS_CHUNKS). */
__global__ void k_os_tie_count(const float *pred, const float *ref, long n, os_state *st)
{
    __shared__ unsigned shm[32];
    if (!st->search) return;
    long csz = (n + OS_CHUNKS - 1) / OS_CHUNKS, c0 = blockIdx.x * csz, c1 = c0 + csz < n ? c0 + csz : n;
    unsigned thr = st->prefix, cnt = 0;
    for (long i = c0 + threadIdx.x; i < c1; i += blockDim.x) cnt += abs_err_bits(pred, ref, i) == thr;
    cnt = ar_block_sum(cnt, shm);
    if (threadIdx.x == 0) st->counts[blockIdx.x] = cnt;
}

/* One block: the index of the kleft-th element equal to the threshold. */
__global__ void k_os_tie_find(const float *pred, const float *ref, long n, os_state *st)
{
    __shared__ long s_c0;
    __shared__ unsigned s_need;
    if (!st->search) return;
    long csz = (n + OS_CHUNKS - 1) / OS_CHUNKS;
    unsigned thr = st->prefix;
    if (threadIdx.x == 0) {
        unsigned need = st->kleft;
        int ch = 0;
        for (; ch < OS_CHUNKS - 1 && st->counts[ch] < need; ch++) need -= st->counts[ch];
        s_c0 = ch * csz, s_need = need;
    }
    __syncthreads();
    long c0 = s_c0, c1 = c0 + csz < n ? c0 + csz : n;
    unsigned need = s_need;
    for (long base = c0; base < c1; base += blockDim.x) {
        long i = base + threadIdx.x;
        int tot = __syncthreads_count(i < c1 && abs_err_bits(pred, ref, i) == thr);
        if ((unsigned)tot < need) {
            need -= (unsigned)tot;
            continue;
        }
        if (threadIdx.x == 0)
            for (long j = base; j < c1; j++)
                if (abs_err_bits(pred, ref, j) == thr && --need == 0) {
                    st->cut = j;
                    break;
                }
        break;
    }
}

/* The masked MSE over the elements left: a > thr dropped, a == thr dropped
 * up to index cut (k_masked_mse otherwise). */
__global__ void k_os_loss(const float *pred, const float *ref, const uint8_t *mask, long n, int C, float g,
                          double denom, float *dpred, double *loss_acc, const os_state *st)
{
    __shared__ double shm[32];
    unsigned thr = st->prefix;
    long long cut = st->cut;
    double acc = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float e = pred[i] - ref[i];
        unsigned u = __float_as_uint(fabsf(e));
        int drop = u > thr || (u == thr && i <= cut);
        int keep = !drop && (!mask || mask[i / C]);
        if (keep) acc += (double)e * e;
        dpred[i] = keep ? g * e : 0.0f;
    }
    acc = ar_block_sum(acc, shm);
    if (threadIdx.x == 0) atomicAdd(loss_acc, acc / denom);
}

int ar_cuda_outlier_mse_denom(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, double denom,
                              float *dpred, double *loss_acc, void *scratch)
{
    long n = rows * C;
    if (n <= 0 || !scratch) return ar_cuda_fail("outlier loss: %ld elements, scratch %p", n, scratch);
    if (n > 0xffffffffL) return ar_cuda_fail("outlier loss: %ld elements (at most 2^32 - 1 per chunk)", n);
    os_state *st = (os_state *)scratch;
    long k = n / 1000 > 1 ? n / 1000 : 1;
    int blocks = ar_blocks(n, OS_THREADS);
    if (blocks > 1024) blocks = 1024;
    static const int shift[3] = {21, 10, 0}, width[3] = {11, 11, 10};
    k_os_init<<<1, OS_THREADS, 0, g_cu.st>>>(st, (unsigned)k);
    for (int p = 0; p < 3; p++) {
        k_os_hist<<<blocks, OS_THREADS, 0, g_cu.st>>>(pred, ref, n, st, shift[p], width[p]);
        k_os_pick<<<1, 32, 0, g_cu.st>>>(st, width[p], p == 2);
    }
    k_os_tie_count<<<OS_CHUNKS, OS_THREADS, 0, g_cu.st>>>(pred, ref, n, st);
    k_os_tie_find<<<1, OS_THREADS, 0, g_cu.st>>>(pred, ref, n, st);
    /* the gradient scale rounds as the CPU's (float)(2.0 / nel) */
    k_os_loss<<<blocks, OS_THREADS, 0, g_cu.st>>>(pred, ref, mask, n, C, (float)(2.0 / denom), denom, dpred, loss_acc,
                                                   st);
    return ar_cuda_check_launch("outlier-suppressed loss");
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

/* The segments of one ar_cuda_copy_if_many launch (a kernel parameter). */
struct copy_segs {
    ar_cuda_copy_seg s[AR_CUDA_COPY_SEGS];
};

/* Segment blockIdx.y: 16-byte accesses over the part both pointers share
 * an alignment for, single floats for the head and tail. */
__global__ void k_copy_if_many(copy_segs segs, const int *flag)
{
    if (!*flag) return;
    ar_cuda_copy_seg sg = segs.s[blockIdx.y];
    long tid = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    long head = 0;
    if ((uintptr_t)sg.dst % 16 == (uintptr_t)sg.src % 16 && (uintptr_t)sg.dst % 4 == 0)
        head = (long)((16 - (uintptr_t)sg.dst % 16) % 16 / 4);
    else
        head = sg.n; /* misaligned against each other: all scalar */
    if (head > sg.n) head = sg.n;
    long nv = (sg.n - head) / 4;
    const float4 *s4 = (const float4 *)(sg.src + head);
    float4 *d4 = (float4 *)(sg.dst + head);
    for (long i = tid; i < nv; i += stride) d4[i] = s4[i];
    for (long i = tid; i < head; i += stride) sg.dst[i] = sg.src[i];
    for (long i = head + nv * 4 + tid; i < sg.n; i += stride) sg.dst[i] = sg.src[i];
}

int ar_cuda_copy_if_many(const ar_cuda_copy_seg *segs, int nseg, const int *flag)
{
    if (nseg < 0 || nseg > AR_CUDA_COPY_SEGS) return ar_cuda_fail("copy_if_many: %d segments (at most %d)", nseg,
                                                                  AR_CUDA_COPY_SEGS);
    copy_segs cs;
    long most = 0;
    int m = 0;
    for (int i = 0; i < nseg; i++) {
        if (segs[i].n <= 0) continue;
        cs.s[m++] = segs[i];
        if (segs[i].n > most) most = segs[i].n;
    }
    if (!m) return 0;
    /* enough blocks for the largest segment at 4 floats a thread, capped:
     * the grid-stride loop covers the rest */
    long b = (most / 4 + 255) / 256;
    unsigned bx = (unsigned)(b < 1024 ? (b > 0 ? b : 1) : 1024);
    k_copy_if_many<<<dim3(bx, (unsigned)m), 256, 0, g_cu.st>>>(cs, flag);
    return ar_cuda_check_launch("copy_if_many");
}
