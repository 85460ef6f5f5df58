/* quant_kinds.cuh — the per-element and per-tile arithmetic of the FP kinds
 * (libar/quant/quant_fp.c) and the GGUF kind (libar/quant/quant_ggml.c, ggml_blocks.c's
 * ar_ggml_fake_quant), written once as __host__ __device__ functions so the
 * kernels (quant_fp.cu, quant_gguf.cu) and a host-side check share them.
 *
 * Every expression keeps the C reference's operation order and types (f32
 * where it computes in f32, double where it accumulates in double); with
 * -fmad=false nothing is contracted, and frexpf/ldexpf/rintf are exact on
 * both sides, so the results are the same bits. Not part of ar_cuda.h. */
#ifndef AR_CUDA_QUANT_KINDS_CUH
#define AR_CUDA_QUANT_KINDS_CUH
#include "ar_cuda.h"
#include <math.h>

#ifdef __CUDACC__
#define AR_HD __host__ __device__
#else
#define AR_HD
#endif

/* ---- FP kinds ------------------------------------------------------------ */

/* Element format of a kind (quant_fp.c's elem_fmt). */
struct ar_fp_fmt {
    int mant, emin, emax;
    float max_norm;
};

AR_HD static inline ar_fp_fmt ar_fp_fmt_of(int kind)
{
    ar_fp_fmt fp4 = {1, 0, 2, 6.0f}, fp8 = {3, -6, 8, 448.0f};
    return kind == AR_CUDA_Q_MXFP4 || kind == AR_CUDA_Q_NVFP4 ? fp4 : fp8;
}

AR_HD static inline float ar_fp_clamp(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* floor(log2 a) for a finite a > 0, exactly. */
AR_HD static inline int ar_fp_floor_log2(float a)
{
    int e;
    frexpf(a, &e);
    return e - 1;
}

/* Round to the format's grid, half to even, saturating at max_norm. */
AR_HD static inline float ar_fp_round_elem(float x, ar_fp_fmt f)
{
    if (x == 0.0f || isnan(x)) return x;
    float a = fabsf(x);
    int p = ar_fp_floor_log2(a);
    if (p < f.emin) p = f.emin;
    float r = ldexpf(rintf(ldexpf(a, f.mant - p)), p - f.mant);
    if (r > f.max_norm) r = f.max_norm;
    return x < 0 ? -r : r;
}

/* The element rounding of a kind: FP4 clamps to ±6 first (ar_fp4_round),
 * E4M3 saturates (ar_e4m3_round). */
AR_HD static inline float ar_fp_elem_round(int kind, float x)
{
    if (kind == AR_CUDA_Q_MXFP4 || kind == AR_CUDA_Q_NVFP4)
        return ar_fp_round_elem(ar_fp_clamp(x, -6.0f, 6.0f), ar_fp_fmt_of(kind));
    return ar_fp_round_elem(x, ar_fp_fmt_of(kind));
}

/* What a tile's scale setup decided (quant_fp.c's tile_state). */
struct ar_fp_tile {
    float scale, o, deq, dscale_dbeta;
};

/* Scale of one tile from its maximum, (clamped) β and init_scale (the
 * SignRoundV2 multiplier of the maximum; 1 without one: its products are
 * then exact, so the result is the same bits as leaving it out), in
 * quant_fp.c's tile_setup order. gs: NVFP4's global scale. */
AR_HD static inline ar_fp_tile ar_fp_tile_setup(int kind, float gs, float amax, float beta, float init)
{
    ar_fp_tile s = {0.0f, 0.0f, 0.0f, 0.0f};
    if (kind == AR_CUDA_Q_MXFP4 || kind == AR_CUDA_Q_MXFP8) {
        ar_fp_fmt f = ar_fp_fmt_of(kind);
        float c = amax * (init * beta);
        int e = (c == 0.0f ? 1 : ar_fp_floor_log2(c)) - f.emax;
        int live = c != 0.0f && e > -127 && e < 127;
        e = e < -127 ? -127 : (e > 127 ? 127 : e);
        s.scale = ldexpf(1.0f, e);
        s.o = 1.0f / s.scale;
        s.deq = s.scale;
        if (live) s.dscale_dbeta = s.scale * (amax * init / c);   /* d 2^floor(log2 c)/dβ, straight-through floor */
    } else if (kind == AR_CUDA_Q_NVFP4) {
        float raw = gs * (amax * (beta * init) * (1.0f / 6.0f));
        s.scale = ar_fp_elem_round(AR_CUDA_Q_FP8, ar_fp_clamp(raw, -448.0f, 448.0f));
        float inv_gs = gs == 0.0f ? 0.0f : 1.0f / gs, d = s.scale * inv_gs;
        s.o = d == 0.0f ? 0.0f : 1.0f / d;
        s.deq = s.o == 0.0f ? 0.0f : 1.0f / s.o;
        if (fabsf(raw) < 448.0f) s.dscale_dbeta = gs * amax * init / 6.0f;
    } else {
        const float floor_s = 1.0f / (448.0f * 512.0f);
        float raw = amax * (beta * init) / 448.0f;
        s.scale = raw < floor_s ? floor_s : raw;
        s.o = 1.0f / s.scale;
        s.deq = s.scale;
        if (raw > floor_s) s.dscale_dbeta = amax * init / 448.0f;
    }
    return s;
}

/* Largest |x| of the kind's elements. */
AR_HD static inline float ar_fp_elem_max(int kind)
{
    return kind == AR_CUDA_Q_MXFP4 || kind == AR_CUDA_Q_NVFP4 ? 6.0f : 448.0f;
}

/* Scaled element before the clamp: w/S + V (NVFP4: w·o + V). */
AR_HD static inline float ar_fp_scaled(int kind, const ar_fp_tile &s, float w, float v)
{
    return (kind == AR_CUDA_Q_NVFP4 ? w * s.o : w / s.scale) + v;
}

/* ŵ of one element (before the optional bf16 rounding). */
AR_HD static inline float ar_fp_elem_forward(int kind, const ar_fp_tile &s, float w, float v)
{
    float lim = ar_fp_elem_max(kind);
    float q = ar_fp_elem_round(kind, ar_fp_clamp(ar_fp_scaled(kind, s, w, v), -lim, lim));
    return q * s.deq;
}

/* d elem(x)/dx as AutoRound's autograd sees it (quant_fp.h, quant_fp.c's
 * elem_grad): 0 at and beyond the clamps. */
AR_HD static inline float ar_fp_elem_grad(int kind, float x, float q)
{
    float lim = ar_fp_elem_max(kind);
    if (kind == AR_CUDA_Q_FP8) return fabsf(x) < lim ? 1.0f : 0.0f;
    if (x == 0.0f || fabsf(q) >= lim) return 0.0f;
    if (kind == AR_CUDA_Q_MXFP4 || kind == AR_CUDA_Q_MXFP8)
        return fabsf(x) >= ldexpf(1.0f, ar_fp_fmt_of(kind).emin + 1) ? q / x : 1.0f;
    return 1.0f;
}

/* STE backward of one element: returns dL/dV (the f32 value the CPU adds to
 * dv) and adds this element's dL/dscale to *dscale (double, as the CPU). */
AR_HD static inline float ar_fp_elem_backward(int kind, const ar_fp_tile &s, float w, float v, float dwq,
                                              double *dscale)
{
    float lim = ar_fp_elem_max(kind);
    float x = ar_fp_scaled(kind, s, w, v);
    float xc = ar_fp_clamp(x, -lim, lim), q = ar_fp_elem_round(kind, xc);
    double dq = ar_fp_elem_grad(kind, xc, q), g = dwq;
    if (kind == AR_CUDA_Q_NVFP4) {
        if (s.scale != 0.0f && s.o != 0.0f) *dscale += g * ((double)q * s.deq - dq * w) / s.scale;
    } else {
        *dscale += g * ((double)q - dq * w / s.scale);
    }
    return (float)(g * s.deq * dq);
}

/* How a weight [n, k] splits into tiles sharing one scale (quant_fp.c's
 * tiling_of); the per-group tunables are [n, ntc], a tile's at its first row. */
struct ar_fp_tiling {
    int n, k, trows, tcols, ntr, ntc;
};

AR_HD static inline ar_fp_tiling ar_fp_tiling_of(const ar_cuda_qspec &q, int n, int k)
{
    ar_fp_tiling t = {n, k, 1, k, 0, 0};
    if (q.group_size > 0) t.tcols = q.group_size;
    if (q.group_size == 0) t.trows = n;
    if (q.block2d) t.trows = q.group_size;
    if (t.tcols > k) t.tcols = k;
    if (t.trows > n) t.trows = n;
    t.ntr = (n + t.trows - 1) / t.trows;
    t.ntc = (k + t.tcols - 1) / t.tcols;
    return t;
}

/* ---- activations (quant_fp.c's ar_act_quant) ------------------------------
 * How ar_act_quant treats one spec, decided once on the host (quant_act.cu's
 * act_mode_of follows ar_act_quant's dispatch): the MX kinds with the RCEIL
 * exponent, FP8 with a static scale, the integer per-token/per-group
 * quantizer (int_sym, f32 scales, α = β = 1), or the weight quantizer of an
 * FP kind with β = 1, no V and no init_scale (MX floor exponent, NVFP4,
 * dynamic FP8). Groups run along each row; glen is the group length (K for
 * one group per row). */
enum { AR_ACT_MX_RCEIL = 0, AR_ACT_FP8_STATIC, AR_ACT_INT, AR_ACT_FP };

struct ar_act_mode {
    int mode;        /* AR_ACT_* */
    int kind;        /* AR_CUDA_Q_* */
    int bits;        /* AR_ACT_INT */
    int glen;        /* elements per group along the row (> 0) */
    int per_tensor;  /* AR_ACT_FP (FP8, group 0): one scale from the tensor's max */
    int tensor_gs;   /* NVFP4 without act_max: global scale 448·6/max|x| of the tensor */
    float gs;        /* NVFP4 with act_max: the static global scale 448·6/act_max */
    float act_max;   /* AR_ACT_FP8_STATIC */
};

/* ceil(log2 r) for a finite r > 0, exactly (quant_fp.c's ceil_log2). */
AR_HD static inline int ar_fp_ceil_log2(float r)
{
    int e;
    float m = frexpf(r, &e);
    return m == 0.5f ? e - 1 : e;
}

/* What a group's statistics decided: the RCEIL exponent, the static/int
 * scale s with its integer level bounds, or the FP kinds' tile state. */
struct ar_act_group {
    int e;
    float s, lo, hi;
    ar_fp_tile t;
};

/* Group setup from the group's min and max (both widened to contain 0, as
 * quant.c's group_range), the group's max |x| amax and the NVFP4 global
 * scale gs (the static one, or from the tensor's max). For per-tensor FP8
 * amax is the tensor's. */
AR_HD static inline ar_act_group ar_act_group_setup(const ar_act_mode &m, float wmin, float wmax, float amax, float gs)
{
    ar_act_group g;
    g.e = 0, g.s = 0.0f, g.lo = 0.0f, g.hi = 0.0f;
    g.t.scale = g.t.o = g.t.deq = g.t.dscale_dbeta = 0.0f;
    if (m.mode == AR_ACT_MX_RCEIL) {
        ar_fp_fmt f = ar_fp_fmt_of(m.kind);
        int e = amax == 0.0f ? 1 : ar_fp_ceil_log2(amax / f.max_norm);
        g.e = e < -127 ? -127 : (e > 127 ? 127 : e);
    } else if (m.mode == AR_ACT_FP8_STATIC) {
        const float floor_s = 1.0f / (448.0f * 512.0f);
        float s = m.act_max / 448.0f;
        g.s = s < floor_s ? floor_s : s;
    } else if (m.mode == AR_ACT_INT) {
        /* quant.c's group_setup for int_sym with α = β = 1 and f32 scales */
        float q = (float)(1 << (m.bits - 1));
        float a = -(wmin * 1.0f), c = wmax * 1.0f;
        float sign = (c < a) ? 1.0f : -1.0f;
        float s = sign * (c > a ? c : a) / q, t = 1e-8f;
        if (s < 0) g.s = s <= -t ? s : -t;
        else g.s = s >= t ? s : t;
        g.lo = -q, g.hi = q - 1.0f;
    } else {
        g.t = ar_fp_tile_setup(m.kind, gs, amax, 1.0f, 1.0f);
    }
    return g;
}

/* x̂ of one element of a set-up group. */
AR_HD static inline float ar_act_elem(const ar_act_mode &m, const ar_act_group &g, float x)
{
    if (m.mode == AR_ACT_MX_RCEIL) {
        ar_fp_fmt f = ar_fp_fmt_of(m.kind);
        return ldexpf(ar_fp_round_elem(ar_fp_clamp(ldexpf(x, -g.e), -f.max_norm, f.max_norm), f), g.e);
    }
    if (m.mode == AR_ACT_FP8_STATIC)
        return ar_fp_elem_round(AR_CUDA_Q_FP8, ar_fp_clamp(x / g.s, -448.0f, 448.0f)) * g.s;
    if (m.mode == AR_ACT_INT) {
        /* quant.c's level_of with V = 0, z = 0, then ŵ = s·(q − z) */
        float q = ar_fp_clamp(rintf(x / g.s + 0.0f) + 0.0f, g.lo, g.hi);
        return g.s * (q - 0.0f);
    }
    return ar_fp_elem_forward(m.kind, g.t, x, 0.0f);
}

/* NVFP4's global scale from a tensor maximum (ar_nvfp4_global_scale). */
AR_HD static inline float ar_act_tensor_gs(float amax)
{
    return amax == 0.0f ? 0.0f : 448.0f * 6.0f * (1.0f / amax);
}

/* ---- GGUF ------------------------------------------------------------------ */

/* ggml_blocks.c's round_even: half to even; out of its fast range it is
 * (int)rintf(v), whose out-of-int-range and NaN results are x86's "integer
 * indefinite" INT_MIN (the CPU the reference runs on), so that is returned
 * here too instead of the GPU's saturating conversion. */
AR_HD static inline int ar_gguf_round_even(float v)
{
    float r = rintf(v);
    if (r >= -2147483648.0f && r < 2147483648.0f) return (int)r;
    return (int)(-2147483647 - 1);
}

/* ŵ of one element with frozen s, m (ar_ggml_fake_quant). */
AR_HD static inline float ar_gguf_elem_forward(float s, float m, float w, float v, int lo, int hi)
{
    if (!s) return -m;
    float q = (w + m) / s + v;
    int u = ar_gguf_round_even(q);
    u = u < lo ? lo : (u > hi ? hi : u);
    return s * (float)u - m;
}

/* dL/dV of one element (ar_quant_gguf_backward); *pass = 0 where it adds
 * nothing (zero scale, or the rounded value at or outside the bounds lo, hi:
 * torch.clamp's number bounds pass no gradient at a bound). */
AR_HD static inline float ar_gguf_elem_grad(float s, float m, float w, float v, float dwq, int lo, int hi,
                                            int *pass)
{
    *pass = 0;
    if (!s) return 0.0f;
    float u = rintf((w + m) / s + v);
    if (!(u > (float)lo && u < (float)hi)) return 0.0f;
    *pass = 1;
    return s * dwq;
}

/* ---- entry points of quant_fp.cu / quant_gguf.cu (called by quant.cu) ----- */

#ifdef __CUDACC__
int ar_cuda_fp_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v, const float *beta,
                       float *wq);
int ar_cuda_fp_backward(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, float *alpha, float *beta,
                        const float *dwq, float *dv, float *dbeta, int step, float lr, float mlr);
size_t ar_cuda_fp_scratch_bytes(const ar_cuda_qspec *q, int n, int k);
int ar_cuda_gguf_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v, float *wq);
int ar_cuda_gguf_backward(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, const float *dwq,
                          float *dv, int step, float lr);
#endif
#endif
