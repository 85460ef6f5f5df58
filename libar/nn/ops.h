/* ops.h — the layer operations of a Llama-family decoder, forward and
 * backward over flat f32 row-major buffers (llm.c style).
 *
 * Conventions:
 * - Shapes are given in brackets; R = rows (tokens, or tokens x heads),
 *   B sequences of T tokens, NH query heads, NKV key/value heads, HD head dim.
 * - Every *_backward ACCUMULATES (+=) into its gradient outputs, so the caller
 *   zeroes them once and several paths (residuals, q/k/v sharing an input) can
 *   add into one buffer. Gradient outputs documented "optional" may be NULL.
 *   The one exception is ar_rope_backward, which works in place.
 * - Forwards never allocate; attention takes caller-provided scratch. */
#ifndef AR_OPS_H
#define AR_OPS_H
#include "config.h"
#include "gemm.h"

/* ---- RMSNorm (HF LlamaRMSNorm, all in f32) ----
 * out[r, :] = x[r, :] * rstd[r] * w,  rstd[r] = 1 / sqrt(mean(x[r, :]^2) + eps).
 * x, out [R, C]; w [C]; rstd [R] (saved for backward; may be NULL when not
 * needed). out may equal x. Also used for Qwen3 QK-norm with R = tokens*heads,
 * C = HD. */
void ar_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                        int R, int C, float eps);

/* dx [R, C] += d/dx, dw [C] += d/dw (dx and dw optional), given dout [R, C],
 * the forward input x [R, C], w [C] and rstd [R] from the forward. */
void ar_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                         const float *w, const float *rstd, int R, int C);

/* ---- Linear, HF layout ----
 * y [R, N] = x [R, K] . W[N, K]^T + b [N]  (b may be NULL). One sgemm. */
void ar_linear_forward(float *y, const float *x, const float *W, const float *b,
                       int R, int K, int N);

/* Given dy [R, N]: dx [R, K] += dy . W, dW [N, K] += dy^T . x, db [N] += sum_r dy.
 * dx, dW and db are each optional. */
void ar_linear_backward(float *dx, float *dW, float *db, const float *dy,
                        const float *x, const float *W, int R, int K, int N);

/* The same with the GEMMs in g's precision (gemm.h; NULL: f32, as above).
 * Return 0, or -1 (ar_error) when a bf16 GEMM fails. */
int ar_linear_forward_g(ar_gemm *g, float *y, const float *x, const float *W, const float *b,
                        int R, int K, int N);
int ar_linear_backward_g(ar_gemm *g, float *dx, float *dW, float *db, const float *dy,
                         const float *x, const float *W, int R, int K, int N);

/* ---- Rotary position embedding, HF rotate_half layout ----
 * Dimension i < HD/2 pairs with i + HD/2:
 *   out[i]      = x[i] cos[t,i] - x[i+HD/2] sin[t,i]
 *   out[i+HD/2] = x[i+HD/2] cos[t,i] + x[i] sin[t,i]
 *
 * Fill inv_freq [HD/2] as transformers does for c->rope_type (default, linear,
 * llama3), in f32: 1 / theta^(2i/HD), then the scaling. */
void ar_rope_inv_freq(float *inv_freq, const ar_config *c);

/* cos, sin [T, HD/2] for positions 0..T-1: angle = (float)t * inv_freq[i] in
 * f32, as transformers' rotary embedding computes them. HD = c->head_dim. */
void ar_rope_tables(float *cos_t, float *sin_t, const ar_config *c, int T);

/* cos, sin [T, dim/2] = cosf(fl(t inv_freq[i])) * af, sinf(...) * af in f32,
 * positions 0..T-1, as transformers' rotary embeddings (af: the scaling's
 * attention factor; 1 leaves the values unchanged). */
void ar_rope_tables_scaled(float *cos_t, float *sin_t, const float *inv_freq, int dim, int T, float af);

/* RoPE on a slice of each head, the one rotation every family uses:
 * x holds B sequences of T rows; row (b, t) starts at x + (b T + t) rs and
 * has H heads at head stride hs; dims [off, off + D) of each head are
 * rotated by position t with tables [T, D/2]:
 *  - interleave 0 (rotate_half): pair (i, i + D/2);
 *  - interleave 1 (GLM-4, DeepSeek rope_interleave): pair (2i, 2i + 1).
 *    For DeepSeek transformers rotates and writes the result
 *    de-interleaved ([evens | odds]); this keeps the pairs in place. q and k
 *    get the same permutation there, so every q.k, hence the attention, is
 *    the same.
 * pair (a, b) -> (a c - b s, b c + a s). sign +1: forward; -1: the
 * transpose (the backward of a gradient, in place; valid also for tables
 * scaled by an attention factor). */
void ar_rope_slice(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, long rs, long hs,
                   int off, int D, int interleave, int sign);

/* Rotate x [B, T, H, HD] in place by position t (cos/sin [T, HD/2] tables):
 * ar_rope_slice over whole heads, rotate_half pairs. */
void ar_rope_forward(float *x, const float *cos_t, const float *sin_t,
                     int B, int T, int H, int HD);

/* In place: dx = R(t)^T dout (the inverse rotation), d [B, T, H, HD]. */
void ar_rope_backward(float *d, const float *cos_t, const float *sin_t,
                      int B, int T, int H, int HD);

/* ---- Causal self-attention with GQA ----
 * q [B, T, NH, HD], k, v [B, T, NKV, HD] -> out [B, T, NH, HD] (overwritten).
 * Query head h reads kv head h / (NH/NKV). Scale 1/sqrt(HD), softmax in f32.
 * window > 0 (sliding window): query t only sees keys t-window < s <= t
 * (Mistral/transformers semantics); 0 = full causal.
 *
 * att holds the softmax probabilities P:
 * - save != 0: att is [B, NH, T, T] and keeps P for ar_attention_backward
 *   (entries above the diagonal are 0);
 * - save == 0: att is scratch of ar_attention_scratch(T) floats.
 * out must not alias q, k or v. */
void ar_attention_forward(float *out, float *att, int save, const float *q,
                          const float *k, const float *v, int B, int T, int NH,
                          int NKV, int HD, int window);

/* Attention variants (Gemma): scale multiplies Q K^T (0: 1/sqrt(HD), e.g.
 * query_pre_attn_scalar^-1/2); softcap > 0 caps each scaled score s to
 * softcap * tanh(s / softcap) before the mask and softmax (Gemma 2's
 * attn_logit_softcapping; 0: off). ar_attention_forward is _p with NULL. */
typedef struct { float scale, softcap; } ar_attn_params;
void ar_attention_forward_p(float *out, float *att, int save, const float *q, const float *k, const float *v,
                            int B, int T, int NH, int NKV, int HD, int window, const ar_attn_params *p);

/* Floats of scratch that ar_attention_forward (save == 0) needs for
 * sequences of T tokens: one row block of
 * min(T, 128) x T per OpenMP thread, counted with omp_get_max_threads(), so
 * do not raise the OpenMP thread count after allocating. */
long ar_attention_scratch(int T);

/* Floats of scratch ar_attention_backward needs: 2 ar_attention_scratch(T)
 * (dP blocks, and recomputed scores when soft-capping) plus each query
 * head's partial dK, dV (2 * B*NH*T*HD). */
long ar_attention_backward_scratch(int B, int T, int NH, int HD);

/* Given dout [B, T, NH, HD] and the saved att [B, NH, T, T]:
 * dq [B, T, NH, HD] += , dk, dv [B, T, NKV, HD] +=. scratch has
 * ar_attention_backward_scratch(B, T, NH, HD) floats. Parallel over
 * (sequence, query head). The mask (causal, sliding window) lives in
 * the zeros of att, so no window argument is needed. */
void ar_attention_backward(float *dq, float *dk, float *dv, float *scratch,
                           const float *dout, const float *att, const float *q,
                           const float *k, const float *v, int B, int T, int NH,
                           int NKV, int HD);

/* ar_attention_backward of ar_attention_forward_p with the same p (NULL:
 * the plain one). With a softcap the capped scores are recomputed from q, k
 * (the saved P alone does not give tanh') into the last part of the
 * ar_attention_backward_scratch floats. */
void ar_attention_backward_p(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                             const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD,
                             const ar_attn_params *p);

/* ---- SwiGLU ----
 * out [n] = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may equal gate or up. */
void ar_swiglu_forward(float *out, const float *gate, const float *up, long n);

/* dgate [n] +=, dup [n] += (each optional) given dout [n] and the forward inputs. */
void ar_swiglu_backward(float *dgate, float *dup, const float *dout,
                        const float *gate, const float *up, long n);

/* ---- GeGLU with the tanh GeLU (Gemma's gelu_pytorch_tanh) ----
 * out [n] = gelu(gate) * up, gelu(g) = g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))),
 * in f32 as PyTorch's tanh approximation. out may equal gate or up. */
void ar_geglu_tanh_forward(float *out, const float *gate, const float *up, long n);

/* dgate [n] +=, dup [n] += (each optional) given dout [n] and the forward inputs. */
void ar_geglu_tanh_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n);

/* ---- Soft-capping (Gemma's final logits) ----
 * x [n] <- cap * tanh(x / cap) in place. */
void ar_softcap_forward(float *x, long n, float cap);

/* ---- Residual ----
 * out [n] = a + b; out may equal a or b. */
void ar_residual_forward(float *out, const float *a, const float *b, long n);

/* da [n] += dout and db [n] += dout (each optional). */
void ar_residual_backward(float *da, float *db, const float *dout, long n);

/* ---- Softmax cross-entropy (the language-model loss over logits) ----
 * logits [R, V]; target [R] holds the token each row must predict, or -1 for
 * a row that does not count. */

/* log Σ_i exp(x[i]) over x [n], computed from the row maximum with the sum in
 * double (exp of values <= 0 is exact enough in f32; the sum is what loses
 * precision over a large vocabulary). */
double ar_logsumexp(const float *x, int n);

/* Σ over rows with target[r] >= 0 of logsumexp(logits[r, :]) - logits[r, target[r]]. */
double ar_crossentropy_forward(const float *logits, const int *target, int R, int V);

/* dlogits [R, V] += dloss · (softmax(logits[r, :]) - onehot(target[r])) for
 * each row with target[r] >= 0 (the gradient of dloss × the forward's sum);
 * rows with target < 0 get nothing. */
void ar_crossentropy_backward(float *dlogits, const float *logits, const int *target, int R, int V,
                              float dloss);

/* ---- KL divergence between two next-token distributions ----
 * p = softmax(ref_logits[r, :]) (the reference), q = softmax(logits[r, :]).
 * Σ over rows with keep[r] >= 0 of KL(p || q) = Σ_i p_i (log p_i − log q_i). */
double ar_kldiv_forward(const float *ref_logits, const float *logits, const int *keep, int R, int V);

/* dlogits [R, V] += dloss · (q − p) on rows with keep[r] >= 0 (the gradient of
 * dloss × the forward's sum with respect to logits; ref_logits is constant). */
void ar_kldiv_backward(float *dlogits, const float *ref_logits, const float *logits, const int *keep, int R, int V,
                       float dloss);
#endif
