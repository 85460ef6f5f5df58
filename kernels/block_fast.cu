/* block_fast.cu — the fast block path (AR_CUDA_FAST=1, see ar_cuda.h): the
 * dataflow of block.cu with every matrix-product operand stored in bf16 and
 * multiplied natively (cublasGemmEx bf16 x bf16 -> f32), elementwise ops that
 * write the bf16 operand their consumer needs directly (RMSNorm, SwiGLU and
 * its backward, RoPE), residuals folded into the GEMMs (beta = 1 on a copy of
 * the skip input), and flash attention (flash.cu) instead of stored
 * probabilities. What stays f32: the residual stream, the GEMM outputs, the
 * normalization statistics and every accumulated gradient, as in the BF16
 * mode of the default path, whose operands cuBLAS rounds to bf16 the same
 * way (round to nearest even).
 * Activation quantization (quant_act.cuh, installed through block.cu) works
 * on the bf16 inputs: a quantized linear multiplies by bf16(q(x_bf16)), its
 * own copy, in the forward and in its dW GEMM. The default path's BF16 mode
 * quantizes the f32 input instead (bf16(q(x)) after cuBLAS' rounding), the
 * CPU q(x) in f32: see kernels/README.md for what that difference does. */
#include "internal.cuh"
#include "quant_act.cuh"
#include <cuda_bf16.h>
#include <math.h>

enum { LQ, LK, LV, LO, LGATE, LUP, LDOWN };
typedef __nv_bfloat16 bf16;

/* ---- fused elementwise kernels ------------------------------------------------ */

static int row_threads(int C)
{
    int t = 32;
    while (t < C && t < 256) t *= 2;
    return t;
}

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

void ar_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const float *w, int R, int C, float eps)
{
    if (R > 0) k_rmsnorm_fwd_bf16<<<R, row_threads(C), 0, g_cu.st>>>((bf16 *)out, rstd, x, w, C, eps, NULL, NULL);
}

/* ar_cuda_rmsnorm_forward_bf16 that also copies x [R, C] to c1 and c2 (either may be NULL). */
static void rmsnorm_bf16_copying(uint16_t *out, float *rstd, const float *x, const float *w, int R, int C, float eps,
                                 float *c1, float *c2)
{
    if (R > 0) k_rmsnorm_fwd_bf16<<<R, row_threads(C), 0, g_cu.st>>>((bf16 *)out, rstd, x, w, C, eps, c1, c2);
}

__global__ void k_swiglu_fwd_bf16(bf16 *out, const float *gate, const float *up, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * up[i]);
    }
}

void ar_cuda_swiglu_forward_bf16(uint16_t *out, const float *gate, const float *up, long n)
{
    if (n > 0) k_swiglu_fwd_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>((bf16 *)out, gate, up, n);
}

/* Inputs are n = rows x F contiguous; output row r starts at r·ld (ld = F:
 * contiguous; the fast block writes dgate and dup side by side, ld = 2F, so
 * one GEMM over K = 2F gives their input gradient). */
__global__ void k_swiglu_bwd_bf16(bf16 *dgate, bf16 *dup, const float *dout, const float *gate, const float *up,
                                  long n, long F, long ld)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g));
        long o = ld == F ? i : i / F * ld + i % F;
        dgate[o] = __float2bfloat16_rn(dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg)));
        dup[o] = __float2bfloat16_rn(dout[i] * g * sg);
    }
}

void ar_cuda_swiglu_backward_bf16(uint16_t *dgate, uint16_t *dup, const float *dout, const float *gate,
                                  const float *up, long n)
{
    if (n > 0)
        k_swiglu_bwd_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>((bf16 *)dgate, (bf16 *)dup, dout, gate, up, n, n, n);
}

/* dgu [R, 2F] (bf16) = [dgate | dup] of R rows of F. */
static void swiglu_backward_rows(uint16_t *dgu, const float *dout, const float *gate, const float *up, long R, long F)
{
    long n = R * F;
    if (n > 0)
        k_swiglu_bwd_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>((bf16 *)dgu, (bf16 *)dgu + F, dout, gate, up, n, F,
                                                                  2 * F);
}

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

void ar_cuda_rope_bf16(uint16_t *dst, const float *x, const float *cos_t, const float *sin_t, int B, int T, int H,
                       int HD, int inverse)
{
    long n = (long)B * T * H * (HD / 2);
    if (n > 0)
        k_rope_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>((bf16 *)dst, x, cos_t, sin_t, (long)B * T, T, H, HD,
                                                            inverse ? -1.0f : 1.0f);
}

__global__ void k_copy_to_bf16(float *dst_f, bf16 *dst_b, const float *src, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v = src[i];
        if (dst_f) dst_f[i] = v;
        dst_b[i] = __float2bfloat16_rn(v);
    }
}

void ar_cuda_copy_to_bf16(float *dst_f, uint16_t *dst_b, const float *src, long n)
{
    if (n > 0) k_copy_to_bf16<<<ar_blocks(n, 256), 256, 0, g_cu.st>>>(dst_f, (bf16 *)dst_b, src, n);
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
    return g_cu.fast && g_cu.gemm == AR_CUDA_GEMM_BF16 && ar_cuda_flash_supported(s->HD) && s->NKV > 0 &&
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

/* The attention half from the block input x: x is kept in the work (for the
 * backward) and copied into h, where o_proj then adds the attention. */
static int attn_fwd(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, int B, int T, int train,
                    ar_cuda_fast_work *fw)
{
    int BT = B * T, C = s->C, HD = s->HD, NH = s->NH, NKV = s->NKV, QD = NH * HD, KD = NKV * HD;
    AR_PROF("elem-fwd/rmsnorm1 -> bf16, x -> work, h", 0);
    rmsnorm_bf16_copying(fw->ln1b, fw->rstd1, x, w->attn_norm, BT, C, s->eps, fw->x, fw->h);
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

int ar_cuda_fast_forward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, float *y, int B, int T,
                         int train, ar_cuda_fast_work *fw)
{
    if (B <= 0 || T <= 0 || T > fw->T || B > fw->B)
        return ar_cuda_fail("block: batch %d x %d exceeds the work's %d x %d", B, T, fw->B, fw->T);
    if (train && !fw->train) return ar_cuda_fail("block: training forward needs a training work");
    if (convert_weights(s, w, fw)) return -1;
    /* y may be x: x is read only by the first RMSNorm, y first written by the second */
    if (attn_fwd(s, w, x, B, T, train, fw) || mlp_fwd(s, w, y, B * T, fw)) return -1;
    fw->lastB = B, fw->lastT = T;
    return ar_cuda_check_launch("fast block forward");
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

static int mlp_bwd(const ar_cuda_shape *s, const float *dy, float *const dW[7], const ar_cuda_weights *w,
                   ar_cuda_fast_work *fw)
{
    int BT = fw->lastB * fw->lastT, C = s->C, F = s->F;
    AR_PROF("elem-bwd/dy -> dh f32 + bf16", 0);
    ar_cuda_copy_to_bf16(fw->dh, fw->dyb, dy, (long)BT * C); /* dh starts as the residual's dy */
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
    AR_PROF("elem-bwd/rmsnorm2", 0);
    ar_cuda_rmsnorm_backward(fw->dh, fw->dln, fw->h, w->mlp_norm, fw->rstd2, BT, C);
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
    AR_PROF("elem-bwd/dh -> bf16", 0);
    ar_cuda_copy_to_bf16(NULL, fw->dhb, fw->dh, (long)BT * C);
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

int ar_cuda_fast_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy, float *const dW[7],
                          float *dx, int dw_write, ar_cuda_fast_work *fw)
{
    if (!fw->train || !fw->lastB) return ar_cuda_fail("block: backward needs a training forward first");
    fw->dw_beta = dw_write ? 0.0f : 1.0f;
    if (mlp_bwd(s, dy, dW, w, fw) || attn_bwd(s, w, dW, dx, fw)) return -1;
    return ar_cuda_check_launch("fast block backward");
}
