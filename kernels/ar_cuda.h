/* ar_cuda.h — the CUDA kernels behind a plain C interface (no CUDA types).
 *
 * Everything here lives in kernels/ .cu files and exists only in builds where nvcc
 * was found (libar is then compiled with -DAR_HAVE_CUDA). libar calls these
 * functions; they never call back into libar, so they report failures through
 * their own ar_cuda_last_error() and libar turns that into ar_error().
 *
 * Conventions:
 * - "dev" pointers are device memory from ar_cuda_malloc; "host" pointers are
 *   ordinary memory. Shapes and layouts mirror libar/nn/ops.h and libar/nn/block.h
 *   exactly (row-major f32, HF Linear layout W[N, K], q/k/v [B, T, H, HD]).
 * - Every op is asynchronous on the one stream of the process' device context;
 *   nothing but ar_cuda_sync, the downloads and the allocators waits for the
 *   GPU. Functions returning int give 0, or -1 with ar_cuda_last_error() set.
 * - *_backward ACCUMULATE into their gradient outputs like the CPU ops, except
 *   where documented. */
#ifndef AR_CUDA_H
#define AR_CUDA_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device and memory ---------------------------------------------------- */

/* Number of usable CUDA devices; 0 when there is no driver, no device or the
 * runtime fails in any way (never an error, never an abort). */
int ar_cuda_device_count(void);

/* Make device dev the process' device and create its stream and cuBLAS
 * handle (idempotent for the same dev). */
int ar_cuda_init(int dev);

/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for the initialized device. */
const char *ar_cuda_device_name(void);

/* The last failure of any ar_cuda_* function, one line. */
const char *ar_cuda_last_error(void);

/* Device allocation of bytes (zeroed); NULL with the error set. The peak of
 * the bytes held through these functions is tracked for reports. */
void *ar_cuda_malloc(size_t bytes);
void  ar_cuda_free(void *dev);
size_t ar_cuda_peak_bytes(void);
void   ar_cuda_reset_peak(void);
/* Free and total memory of the initialized device (cudaMemGetInfo). */
int    ar_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);

/* Pinned host memory (faster, asynchronous-capable copies); NULL on failure. */
void *ar_cuda_host_alloc(size_t bytes);
void  ar_cuda_host_free(void *host);

/* Copies; upload/download/copy are ordered on the stream; download waits for
 * completion so the host may read dst afterwards. */
int ar_cuda_upload(void *dev, const void *host, size_t bytes);
int ar_cuda_download(void *host, const void *dev, size_t bytes);
int ar_cuda_copy(void *dev_dst, const void *dev_src, size_t bytes);
int ar_cuda_zero(void *dev, size_t bytes);

/* Wait for all queued work; reports any asynchronous kernel failure. */
int ar_cuda_sync(void);

/* ---- GEMM precision ------------------------------------------------------- */

/* How the linears' and attention's matrix products run: AR_CUDA_GEMM_BF16
 * (the tuner's; set by libar's ar_device_init) rounds the operands to bf16
 * (CUBLAS_COMPUTE_32F_FAST_16BF on f32 storage in the general path, native
 * bf16 operands in the fast path: bf16 tensor cores, f32 accumulation), as
 * AutoRound's bf16 autocast does; AR_CUDA_GEMM_F32 is full f32 (CUDA cores:
 * the chain and perplexity forwards, and the accuracy reference). */
enum { AR_CUDA_GEMM_F32 = 0, AR_CUDA_GEMM_BF16 = 2 };
void ar_cuda_set_gemm(int mode);
int  ar_cuda_get_gemm(void);

/* Row-major C [M, N] = alpha op(A) op(B) + beta C (all dev f32), as the CPU's
 * cblas_sgemm(CblasRowMajor, ...). */
int ar_cuda_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);

/* Measure cuBLAS' native bf16 GEMM (bf16 in/out, f32 accumulate) on
 * M x N x K for reps repetitions after a warm-up: TFLOP/s in *tflops. */
int ar_cuda_bench_bf16_gemm(int M, int N, int K, int reps, double *tflops);

/* ---- layer ops (device pointers; semantics of the same-named CPU ops) ----- */

void ar_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int R, int C, float eps);
void ar_cuda_rmsnorm_backward(float *dx, const float *dout, const float *x, const float *w,
                              const float *rstd, int R, int C);
int  ar_cuda_linear_forward(float *y, const float *x, const float *W, const float *b, int R, int K, int N);
int  ar_cuda_linear_backward(float *dx, float *dW, const float *dy, const float *x, const float *W,
                             int R, int K, int N);
/* In place rotation of x [B, T, H, HD] by the dev tables cos/sin [T, HD/2];
 * inverse != 0 applies the transpose (the backward). */
void ar_cuda_rope(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, int HD, int inverse);
void ar_cuda_swiglu_forward(float *out, const float *gate, const float *up, long n);
void ar_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, long n);
void ar_cuda_add(float *out, const float *a, const float *b, long n);

/* Attention stores the probabilities P [B, NH, T, T] (att, f32; zeros above
 * the diagonal and outside the window): the first-step design, documented in
 * kernels/README.md; T is limited to AR_CUDA_MAX_T. out is overwritten. */
enum { AR_CUDA_MAX_T = 4096 };
int ar_cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                              int B, int T, int NH, int NKV, int HD, int window);
/* Floats of scratch ar_cuda_attention_backward needs (one sequence's dP). */
long ar_cuda_attention_backward_scratch(int T, int NH);
/* dq, dk, dv += (like the CPU op); scratch from the function above. */
int ar_cuda_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *att, const float *q, const float *k, const float *v,
                               int B, int T, int NH, int NKV, int HD);

/* Widen rows: dst [nidx*rows, C] f32 from sample idx[i] of src [*, rows*C]
 * bf16 (dev). idx is a HOST array (the sampler runs on the host). */
int ar_cuda_gather_bf16(float *dst, const uint16_t *src, const int *idx, int nidx, long row_elems);
/* Narrow n f32 into bf16 (round to nearest even), dev to dev. */
void ar_cuda_to_bf16(uint16_t *dst, const float *src, long n);
/* Widen n bf16 into f32, dev to dev. */
void ar_cuda_from_bf16(float *dst, const uint16_t *src, long n);

/* Negative log-likelihood per row of logits [rows, V] (dev): nll[r] =
 * logsumexp(row) - row[target[r]] in double (as ar_model_nll), for rows
 * whose target (dev int array) is >= 0; other entries are left alone. */
int ar_cuda_nll_rows(const float *logits, const int *target, int rows, int V, double *nll);

/* ---- block ---------------------------------------------------------------- */

/* What the block kernels need from the model config. */
typedef struct {
    int C, F, NH, NKV, HD;
    float eps;
    int window;             /* sliding window, 0 = full causal */
} ar_cuda_shape;

/* Device pointers of one block's weights (NULL = absent, as in libar). */
typedef struct {
    float *w[7], *b[7];
    float *attn_norm, *mlp_norm, *q_norm, *k_norm;
} ar_cuda_weights;

/* Workspace (and, with train, the saved activations and gradient buffers)
 * for up to B sequences of up to T tokens; cos/sin host tables [T, HD/2]
 * from ar_rope_tables are copied in. Opaque. */
typedef struct ar_cuda_block_work ar_cuda_block_work;
ar_cuda_block_work *ar_cuda_block_work_create(const ar_cuda_shape *s, int B, int T, int train,
                                              const float *cos_host, const float *sin_host);
void ar_cuda_block_work_free(ar_cuda_block_work *ws);
/* Bytes a work of these sizes allocates (for capacity planning). */
size_t ar_cuda_block_work_bytes(const ar_cuda_shape *s, int B, int T, int train);

/* y [B*T, C] = block(x) (y may equal x). With train the activations are kept
 * in ws for ar_cuda_block_backward. */
int ar_cuda_block_forward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *x, float *y,
                          int B, int T, int train, ar_cuda_block_work *ws);
/* dW[i] += dL/dW_i for the linears with dW[i] != NULL, dx += dL/dx when dx is
 * not NULL, from dy of the last training forward. */
int ar_cuda_block_backward(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                           float *const dW[7], float *dx, ar_cuda_block_work *ws);
/* The fast path's bf16 copy [N, K] (dev) of linear i's weight in ws, or NULL
 * when ws is not a fast-path work. Every forward refreshes it from the f32
 * weight (w->w[i]) unless the caller owns it: own = 1 hands it to the caller,
 * who then writes it before the forwards that should use it (the tuner
 * quantizes ŵ straight into it; w->w[i] is then not read by the fast path),
 * own = 0 gives it back to the refresh, -1 leaves the ownership as it is. */
uint16_t *ar_cuda_block_weight_bf16(ar_cuda_block_work *ws, int i, int own);
/* ar_cuda_block_backward that WRITES dW[i] = dL/dW_i (the dW GEMMs run with
 * beta 0) instead of adding: the first mini-batch of a tuning iteration,
 * which then needs no zeroed dW; dx is still added to. */
int ar_cuda_block_backward_write_dw(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                                    float *const dW[7], float *dx, ar_cuda_block_work *ws);
/* ---- quantization and tuning ---------------------------------------------- */

/* Quantizer kinds of ar_cuda_qspec.kind: the values of libar/quant/quant.h's
 * AR_QDT_* (int_sym/int_asym, the FP kinds of libar/quant/quant_fp.h, and the GGUF
 * kind of libar/quant/quant_ggml.h with frozen scales). */
enum { AR_CUDA_Q_INT = 0, AR_CUDA_Q_MXFP4 = 1, AR_CUDA_Q_MXFP8 = 2, AR_CUDA_Q_NVFP4 = 3, AR_CUDA_Q_FP8 = 4,
       AR_CUDA_Q_GGUF = 5 };

/* The quantizer of libar/quant/quant.h (see there for the formulas). The fields
 * after hi serve the other kinds; all zero is the integer quantizer.
 * libar fills one with ar_cuda_qspec_make (libar/nn/cuda_impl.h). */
typedef struct {
    int bits, group_size, sym;
    int f32_scale;          /* AR_QF_F32_SCALE */
    int bf16_out;           /* AR_QF_BF16: ŵ rounded to bf16 (int and FP kinds) */
    float hi;               /* α/β upper clamp (minmax_hi, 1 when 0) */
    int kind;               /* AR_CUDA_Q_* */
    /* FP kinds (libar/quant/quant_fp.h): group_size 0 = one tile per tensor, -1 =
     * one per row; block2d: group_size x group_size tiles (FP8 blocks). */
    int block2d;
    float global_scale;     /* NVFP4: the global scale used (computed on the host) */
    void *scratch;          /* FP kinds: ar_cuda_quant_scratch_bytes of device memory */
    /* GGUF (libar/quant/quant_ggml.h): u = clamp(round((w + m)/s + V), code_lo,
     * code_hi), ŵ = s·u − m with the frozen s, m of each group of group_size. */
    int code_lo, code_hi;
    float *gguf_scale;      /* device [N, K/group_size] */
    float *gguf_min;        /* device [N, K/group_size], NULL for symmetric types (m = 0) */
    /* SignRoundV2's init_scale (libar/quant/quant.h): device [N, ngroups] or NULL.
     * int_sym: s = init_scale·β (α unused, dα = 0); FP kinds: it multiplies
     * the tile maximum (a tile's entry at its first row, as β). */
    float *init_scale;
} ar_cuda_qspec;

/* Device scratch bytes the quantizer q needs on weights [n, k] (FP kinds:
 * per-tile maxima and per-row partial β gradients; 0 for the others). */
size_t ar_cuda_quant_scratch_bytes(const ar_cuda_qspec *q, int n, int k);

/* ŵ [N, K] from w with tunables v [N, K], alpha, beta [N, ngroups] (each may
 * be NULL: 0 / 1). Only ŵ is produced (codes and scales come from the CPU
 * quantizer at the end of tuning). The FP kinds read only β (at a tile's
 * first row for tiles spanning rows, as libar/quant/quant_fp.h), GGUF neither. */
int ar_cuda_quant_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                          const float *alpha, const float *beta, float *wq);
/* ar_cuda_quant_forward writing ŵ to wq (f32) and/or wqb (bf16, round to
 * nearest even: the fast block path's operand); either may be NULL. The
 * integer kind writes both in one pass; the FP and GGUF kinds need wq and
 * narrow it into wqb afterwards. */
int ar_cuda_quant_forward_to(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                             const float *alpha, const float *beta, float *wq, uint16_t *wqb);
/* STE backward: dv, dalpha, dbeta += (each may be NULL), as ar_quant_backward
 * (FP kinds: dalpha untouched; GGUF: only dv). */
int ar_cuda_quant_backward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v,
                           const float *alpha, const float *beta, const float *dwq,
                           float *dv, float *dalpha, float *dbeta);
/* The fused SignSGD step of one linear: the STE backward of dwq, then
 * v -= lr·sign(dv), α/β -= mlr·sign(dα/β) clamped to [0, hi] (alpha/beta
 * NULL: V only). Nothing but the tunables is written (FP kinds: α has no
 * gradient and is only clamped; GGUF: V only, α/β are not touched). */
int ar_cuda_quant_signsgd(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, float *alpha,
                          float *beta, const float *dwq, float lr, float mlr);

/* One linear of ar_cuda_quant_step. */
typedef struct {
    ar_cuda_qspec q;          /* the integer kind (AR_CUDA_Q_INT) */
    const float *w;           /* [n, k] weight */
    const float *dwq;         /* [n, k] dL/dŵ */
    float *v;                 /* [n, k] rounding offsets, stepped in place */
    float *alpha, *beta;      /* [n, ngroups] stepped in place; NULL: no min-max tuning (α = β = 1) */
    float *wq;                /* ŵ after the step, f32 [n, k] (NULL: not written) */
    uint16_t *wqb;            /* ŵ after the step, bf16 [n, k] (NULL: not written) */
    float *best_v, *best_alpha, *best_beta; /* with *flag: the tunables before the step (NULL: skipped;
                                               best_alpha/best_beta also when alpha/beta are NULL) */
    int n, k;
    float lr, mlr;            /* the step sizes (ar_cuda_quant_signsgd's) */
} ar_cuda_qstep_seg;
enum { AR_CUDA_QSTEP_SEGS = 8 };
/* The tuner's step of the integer linears in one pass over their weights,
 * bit for bit the sequence: ar_cuda_copy_if_many of v, alpha, beta into
 * best_v, best_alpha, best_beta when flag (device int; NULL: never) is set;
 * ar_cuda_quant_signsgd(q, w, n, k, v, alpha, beta, dwq, lr, mlr); then
 * ar_cuda_quant_forward_to(q, w, n, k, v, alpha, beta, wq, wqb) — the next
 * iteration's ŵ, so that iteration needs no forward pass of its own. All
 * segments in one launch where their shapes allow; at most
 * AR_CUDA_QSTEP_SEGS, n <= 0 or k <= 0 ones skipped. -1: a kind other than
 * the integer one, a bad spec, w, dwq or v missing. */
int ar_cuda_quant_step(const ar_cuda_qstep_seg *segs, int nseg, const int *flag);

/* ---- activation fake-quantization ------------------------------------------
 * libar/quant/quant_fp.h's ar_act_quant on the device (kernels/quant_act.cu): MX
 * per group with the floor or the RCEIL shared exponent, NVFP4 per 16 with
 * the static (act_max) or per-call global scale, FP8 with a static scale or
 * dynamic per tensor / row / group, int_sym per token or group with f32
 * scales. The arithmetic is the CPU's operation for operation
 * (quant_kinds.cuh, -fmad=false): on the same f32 input the result is the
 * same bits. */

/* One linear's input quantizer: the fields of libar's ar_act_spec, kind
 * being its dtype (AR_CUDA_Q_INT .. AR_CUDA_Q_FP8). */
typedef struct {
    int kind, bits;
    int group_size;   /* along K: > 0 groups, -1 one per row (token), 0 one per tensor */
    int dynamic;      /* 0 with FP8: the static scale act_max/448 */
    float act_max;    /* FP8 static scale source; NVFP4: > 0 gives the global scale 448·6/act_max */
    int rceil;        /* MX: RCEIL shared exponent */
} ar_cuda_act;

/* 0 when ar_act_quant accepts a and the kernels have it (bits >= 16: a
 * no-op), else -1 with the error set. */
int ar_cuda_act_check(const ar_cuda_act *a);

/* xq [rows, k] = x fake-quantized as ar_act_quant(a, x, rows, k) would leave
 * it, bit for bit (statistics per call over these rows: NVFP4 without
 * act_max and FP8 per tensor take the max over all rows·k). xq may equal x;
 * bits >= 16 copies. */
int ar_cuda_act_quant(const ar_cuda_act *a, const float *x, float *xq, long rows, int k);
/* The same on bf16 data: x widened to f32, quantized as above, the result
 * rounded to bf16 (round to nearest even). MX results (an element of the
 * grid times 2^e) are exact in bf16; NVFP4, FP8 and int results are rounded. */
int ar_cuda_act_quant_bf16(const ar_cuda_act *a, const uint16_t *x, uint16_t *xq, long rows, int k);

/* Fake-quantize the input of linear i with aq[i] (aq or an entry NULL: not
 * quantized) in every later forward through ws, training and inference, as
 * ar_block_set_act_quant does on the CPU: each linear multiplies by its own
 * quantized copy (input groups may mix specs), the backward is
 * straight-through (dx = dy·W unchanged) with dW taken against the copy the
 * forward used. The general path quantizes the f32 inputs; the fast path
 * quantizes its bf16 inputs (see ar_cuda_act_quant_bf16). s must be the
 * work's shape. 0 or -1 (bad spec, no device memory). */
int ar_cuda_block_set_act_quant(const ar_cuda_shape *s, ar_cuda_block_work *ws, const ar_cuda_act *const aq[7]);

/* Masked MSE of pred vs ref [rows, C] with per-row mask (dev u8, NULL: all):
 * dpred = 2·(pred − ref)·mask / (rows·C) written (not accumulated), and
 * sum(e²)/(rows·C) ADDED to *loss_acc (dev double). */
int ar_cuda_masked_mse(const float *pred, const float *ref, const uint8_t *mask, long rows, int C,
                       float *dpred, double *loss_acc);
/* ar_cuda_masked_mse over a chunk of an iteration with the iteration's one
 * denominator denom (GB·T·C): dpred = 2·(pred − ref)·mask / denom written,
 * sum(e²)/denom ADDED to *loss_acc. */
int ar_cuda_masked_mse_denom(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, double denom,
                             float *dpred, double *loss_acc);
/* SignRoundV2's outlier-suppressed loss (libar/tune/signround.h's
 * ar_outlier_suppressed_sse) over a chunk, with the iteration's denominator
 * denom: the k = max(1, floor(rows·C/1000)) largest |pred − ref| among ALL
 * rows·C elements (masked rows included; ties at the threshold dropped
 * lowest index first) are left out, dpred = 2·(pred − ref) / denom written
 * on the other elements of the rows kept by mask (0 elsewhere), and their
 * sum(e²)/denom ADDED to *loss_acc. The k-th largest is found on the device
 * (radix select over the float bits), so nothing waits for the GPU. scratch:
 * ar_cuda_outlier_scratch_bytes() of device memory, not shared between
 * concurrent calls. */
size_t ar_cuda_outlier_scratch_bytes(void);
int ar_cuda_outlier_mse_denom(const float *pred, const float *ref, const uint8_t *mask, long rows, int C, double denom,
                              float *dpred, double *loss_acc, void *scratch);
/* Gather the row masks of samples idx (host) of mask [*, T] (dev) into dst. */
int ar_cuda_gather_mask(uint8_t *dst, const uint8_t *mask, const int *idx, int nidx, int T);

/* Best-iteration bookkeeping on the device (no host round trip): with
 * loss = *loss_acc / chunks, losses[it] = loss; if loss < *best: *best = loss,
 * *best_iter = it, *flag = 1, else *flag = 0; then *loss_acc = 0. */
int ar_cuda_track_best(double *loss_acc, int chunks, int it, double *losses, double *best, int *best_iter,
                       int *flag);
/* dst = src (n floats) when *flag != 0 (flag on the device). */
int ar_cuda_copy_if(float *dst, const float *src, long n, const int *flag);
/* One copy of ar_cuda_copy_if_many: dst = src, n floats (dev). */
typedef struct {
    float *dst;
    const float *src;
    long n;
} ar_cuda_copy_seg;
enum { AR_CUDA_COPY_SEGS = 32 };
/* Every segment's copy in one launch (16-byte accesses where the pointers
 * allow) when *flag != 0: the tuner's best-loss snapshot of all tunables of a
 * block. At most AR_CUDA_COPY_SEGS segments; n <= 0 ones are skipped. */
int ar_cuda_copy_if_many(const ar_cuda_copy_seg *segs, int nseg, const int *flag);

/* ---- fast path -------------------------------------------------------------
 * Native bf16 GEMM operands, fused elementwise ops and flash attention. A
 * block work takes it when it is created (ar_cuda_block_work_create) while
 * the GEMM mode is BF16, ar_cuda_flash_supported(head_dim) and the heads
 * divide into kv heads; such a work then runs the fast forward/backward and
 * refuses other GEMM modes. Other works run the general path (block.cu: f32
 * activations, stored probabilities). Numerically it is the BF16 mode's
 * computation (operands rounded to bf16, f32 accumulation), with the
 * attention probabilities also rounded to bf16 for their products, and the
 * causal half of the scores never computed. */

/* Row-major C [M, N] (f32) = alpha op(A) op(B) + beta C with A, B bf16 (dev),
 * f32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F). */
int ar_cuda_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                      const uint16_t *B, int ldb, float beta, float *C, int ldc);
/* ar_cuda_gemm_bf16 over batch problems i < batch with A_i = A + i·sa,
 * B_i = B + i·sb, C_i = C + i·sc (element strides; 0 shares an operand):
 * one cuBLAS launch for the projections that read the same input. */
int ar_cuda_gemm_bf16_strided(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda, long sa,
                              const uint16_t *B, int ldb, long sb, float beta, float *C, int ldc, long sc, int batch);

/* RMSNorm whose output is stored only in bf16 (rstd in f32 as usual). */
void ar_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const float *w, int R, int C,
                                  float eps);
/* silu(gate)·up stored in bf16. */
void ar_cuda_swiglu_forward_bf16(uint16_t *out, const float *gate, const float *up, long n);
/* The SwiGLU gradients WRITTEN (not accumulated) in bf16. */
void ar_cuda_swiglu_backward_bf16(uint16_t *dgate, uint16_t *dup, const float *dout, const float *gate,
                                  const float *up, long n);
/* dst (bf16) = rope(x) (inverse != 0: the transpose); x is not modified. */
void ar_cuda_rope_bf16(uint16_t *dst, const float *x, const float *cos_t, const float *sin_t, int B, int T, int H,
                       int HD, int inverse);
/* dst_b = bf16(src), and dst_f = src when dst_f is not NULL. */
void ar_cuda_copy_to_bf16(float *dst_f, uint16_t *dst_b, const float *src, long n);

/* ar_cuda_block_forward on a fast-path work with the block input read in
 * bf16: sample b of the batch is src + idx[b]·T·C ([T, C], dev), idx a HOST
 * array of B entries (NULL: b). Widening bf16 is exact, so y has the bits of
 * ar_cuda_block_forward on the widened rows. The input is not kept in f32
 * (except for rows too long for the register RMSNorm, C > 8192): a backward
 * after it cannot give dx (it fails when asked). -1 for a general-path work. */
int ar_cuda_block_forward_rows(const ar_cuda_shape *s, const ar_cuda_weights *w, const uint16_t *src,
                               const int *idx, float *y, int B, int T, int train, ar_cuda_block_work *ws);
/* The bf16 buffer [B·T, C] of a fast-path training work that holds the
 * output gradient for the linears (NULL for any other work): a loss may
 * write bf16(dy) there (ar_cuda_masked_mse_rows) and call
 * ar_cuda_block_backward_prepared. */
uint16_t *ar_cuda_block_dy_bf16(ar_cuda_block_work *ws);
/* ar_cuda_block_backward (dw_write 0) or ar_cuda_block_backward_write_dw
 * (dw_write 1) on a fast-path work whose ar_cuda_block_dy_bf16 buffer
 * already holds bf16(dy) (round to nearest even): the narrowing pass is
 * skipped. dy (f32) is still read. -1 for a general-path work. */
int ar_cuda_block_backward_prepared(const ar_cuda_shape *s, const ar_cuda_weights *w, const float *dy,
                                    float *const dW[7], float *dx, int dw_write, ar_cuda_block_work *ws);
/* ar_cuda_masked_mse_denom over B samples of T rows of C whose references
 * are bf16 rows: sample b's reference is ref + ref_idx[b]·T·C and its row
 * mask mask + mask_idx[b]·T (ref [*, T, C], mask [*, T] u8 dev, NULL: all
 * rows; ref_idx, mask_idx HOST arrays of B entries, NULL: b). dpred (f32)
 * and, when dpred_b is not NULL, bf16(dpred) are written; sum(e²)/denom is
 * ADDED to *loss_acc. dpred has the bits ar_cuda_masked_mse_denom gives on
 * the widened references (widening is exact); the loss total is summed in
 * another grouping (double, differences near 1e-16 relative). */
int ar_cuda_masked_mse_rows(const float *pred, const uint16_t *ref, const int *ref_idx, const uint8_t *mask,
                            const int *mask_idx, int B, int T, int C, double denom, float *dpred, uint16_t *dpred_b,
                            double *loss_acc);

/* 1 when the flash kernels exist for this head dimension (32, 64, 80, 96, 128). */
int ar_cuda_flash_supported(int HD);
/* Causal (optionally sliding-window) attention without the T x T matrix
 * (kernels/flash_mma.cu: mma.sync bf16 tensor-core tiles with the scores and
 * accumulators in registers; 128-query tiles, four warps of 32 rows):
 * q [B, T, NH, HD], k/v [B, T, NKV, HD] bf16; the output [B, T, NH, HD] is
 * written in bf16 (out_b) and/or f32 (out_f), either may be NULL; lse
 * [B, NH, T] f32 receives each row's log-sum-exp of the scaled scores. */
int ar_cuda_flash_forward(uint16_t *out_b, float *out_f, float *lse, const uint16_t *q, const uint16_t *k,
                          const uint16_t *v, int B, int T, int NH, int NKV, int HD, int window);
/* Cap on the dS scratch one flash backward launch uses (bytes; <= 0: the
 * default 2 GiB); a larger need runs in chunks of (sequence, kv head) pairs.
 * The scratch is allocated on first use and kept. Tests set small caps to
 * exercise the chunking. */
void ar_cuda_set_flash_ds_budget(long bytes);
/* Floats of scratch ar_cuda_flash_backward needs. */
long ar_cuda_flash_backward_scratch(int B, int T, int NH, int HD);
/* dq [B, T, NH, HD], dk, dv [B, T, NKV, HD] (f32) += the attention gradients
 * for dout (f32), from the forward's f32 output out, lse and bf16 q, k, v;
 * probabilities are recomputed tile by tile. A dK/dV kernel per key tile
 * stores each bf16 dS tile once (scratch above), a dQ kernel multiplies them
 * by K: one writer per output element, deterministic. */
int ar_cuda_flash_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                           const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                           int NH, int NKV, int HD, int window);
/* The same, WRITING dq, dk, dv (rows < T of each sequence) instead of adding
 * to them: spares the caller zeroing them first. */
int ar_cuda_flash_backward_write(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                                 const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B,
                                 int T, int NH, int NKV, int HD, int window);

/* ---- staged host-to-device copies (--low_gpu_mem_usage) -------------------
 * Copies from host memory run on a second stream into one of two device
 * slots, ordered against the compute stream by events: stage_begin(slot)
 * waits until the compute stream released the slot, stage_copy queues
 * copies, stage_end marks them; the compute stream then waits with
 * stage_acquire before reading the slot and stage_release after. */
enum { AR_CUDA_STAGE_SLOTS = 2 };
/* Page-lock an existing host range so copies from it are asynchronous; 0, or
 * -1 when it cannot be (copies then still work, synchronously). */
int  ar_cuda_pin(const void *host, size_t bytes);
void ar_cuda_unpin(const void *host);
int ar_cuda_stage_begin(int slot);
int ar_cuda_stage_copy(void *dev, const void *host, size_t bytes);
int ar_cuda_stage_end(int slot);
int ar_cuda_stage_acquire(int slot);
int ar_cuda_stage_release(int slot);

/* ---- phase profiling -------------------------------------------------------
 * Where an iteration's GPU time goes (cuda_check --profile). While enabled,
 * ar_cuda_prof_mark(phase, flops) records an event on the compute stream that
 * closes the previous phase and opens `phase` (a static string "category/what";
 * NULL opens nothing); flops, when > 0, is the useful work of the phase, for
 * TFLOP/s. ar_cuda_prof_iteration marks the start of a tuning iteration; the
 * first iteration (warm-up) and anything before it are not counted. Disabled,
 * every call returns at once. */
void ar_cuda_prof_enable(int on);
int  ar_cuda_prof_enabled(void);
void ar_cuda_prof_mark(const char *phase, double flops);
void ar_cuda_prof_iteration(void);
/* Print the per-phase table (ms per iteration, share, TFLOP/s and % of
 * peak_tflops where flops were given, host time between the marks, calls) and
 * a per-category summary to stdout, then clear the totals. */
int  ar_cuda_prof_report(double peak_tflops);
/* A stopwatch on the compute stream's timeline (what the tuning loop's
 * iterations take on the device, gaps between launches included, without the
 * profiler's per-phase events): ar_cuda_watch_start records an event;
 * ar_cuda_watch_ms records a second, waits for it and stores the milliseconds
 * between the two in *ms. 0 or -1 (ar_cuda_last_error). */
int ar_cuda_watch_start(void);
int ar_cuda_watch_ms(double *ms);
/* Useful flops of causal (window > 0: sliding-window) attention forward:
 * S = QKᵀ and O = PV over the visible (query, key) pairs only. */
double ar_cuda_attention_flops(int B, int T, int NH, int HD, int window);

/* Flash attention alone (NKV = NH, causal) against cuBLAS strided-batched
 * bf16 GEMMs doing the same products over the full T x T square (no softmax):
 * ms per call, averaged over reps after a warm-up. */
typedef struct {
    double flash_fwd_ms, flash_bwd_ms; /* ar_cuda_flash_forward / _backward */
    double gemm_fwd_ms, gemm_bwd_ms;   /* 2 and 5 full-square batched GEMMs */
    double fwd_flops, bwd_flops;       /* useful causal flops (backward: 2.5 x forward) */
    double causal_fraction;            /* visible pairs / T² */
} ar_cuda_attn_bench;
int ar_cuda_bench_attention(int B, int T, int NH, int HD, int reps, ar_cuda_attn_bench *r);

#ifdef __cplusplus
}
#endif
#endif
