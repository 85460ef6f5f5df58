/* block.h — one decoder block (pre-norm attention + SwiGLU MLP), forward and
 * backward over flat f32 buffers, llm.c style.
 *
 * Shapes: B sequences of T tokens, C = hidden, F = intermediate, NH/NKV heads of
 * HD dims. Activations are row-major [B*T, C]. Linear weights use Hugging Face's
 * layout W[N_out, K_in]: y = x W^T + b. */
#ifndef AR_BLOCK_H
#define AR_BLOCK_H
#include "config.h"
#include "quant_act.h"
#include "gemm.h"

/* The seven Linear layers of a block, in this fixed order everywhere
 * (tuning, streams, packers). */
enum { AR_Q, AR_K, AR_V, AR_O, AR_GATE, AR_UP, AR_DOWN, AR_NLINEAR };
/* HF sub-names: "self_attn.q_proj", ..., "mlp.down_proj". */
extern const char *const ar_linear_names[AR_NLINEAR];

/* One block's weights, widened to f32: nlinear linears (the block
 * description's; AR_NLINEAR for Llama), w and b arrays of nlinear pointers
 * (ar_block_weights_init). Optional tensors are NULL when the architecture
 * has none. The struct does not own the tensors (ar_block_weights_alloc in
 * model.h makes ones that do); a copy shares the pointer arrays, so a block
 * with some linears swapped is a view (ar_block_weights_view). */
typedef struct {
    int nlinear;
    float **w;                  /* [nlinear] [N, K] each */
    float **b;                  /* [nlinear] bias [N] or NULL */
    float *attn_norm;           /* input_layernorm [C] */
    float *mlp_norm;            /* post_attention_layernorm [C] */
    float *q_norm, *k_norm;     /* Qwen3, Gemma 3 [HD] or NULL */
    /* Gemma's sandwich norms (NULL elsewhere): attn_post_norm is Gemma's
     * post_attention_layernorm (on the attention output), mlp_norm then holds
     * pre_feedforward_layernorm and mlp_post_norm post_feedforward_layernorm.
     * GLM-4 fills the same two with post_self_attn_layernorm and
     * post_mlp_layernorm (block_fused.c). */
    float *attn_post_norm, *mlp_post_norm;
    /* Mixture-of-experts layers (block_moe.c), kept in full precision, never
     * tuned; NULL otherwise: the router [E, C] (mlp.gate), its bias [E]
     * (gpt-oss), DeepSeek-V3's e_score_correction_bias [E], Qwen2-MoE's
     * shared_expert_gate [1, C]. */
    float *router, *router_b, *score_bias, *shared_gate;
    float *sinks;               /* gpt-oss self_attn.sinks [NH] (block_gptoss.c), else NULL */
} ar_block_weights;

/* Which norm of ar_block_weights a block description's norm fills
 * (ar_norm_desc.slot). */
enum { AR_NORM_ATTN, AR_NORM_MLP, AR_NORM_Q, AR_NORM_K, AR_NORM_ATTN_POST, AR_NORM_MLP_POST, AR_NNORM_SLOTS };

/* The field of w that norm slot s names (s < AR_NNORM_SLOTS). */
float **ar_block_norm_slot(ar_block_weights *w, int s);

/* Zero w and give it pointer arrays for nlinear linears, all NULL. 0, or -1
 * (ar_error) when out of memory. Release the arrays with
 * ar_block_weights_release (the tensors stay the caller's). */
int ar_block_weights_init(ar_block_weights *w, int nlinear);
void ar_block_weights_release(ar_block_weights *w);

/* dst = a view of src: its own pointer arrays holding src's tensors, so
 * that dst.w[i] may be swapped without touching src. Release with
 * ar_block_weights_release. 0 or -1 (ar_error). */
int ar_block_weights_view(ar_block_weights *dst, const ar_block_weights *src);

/* Point view's entries (arrays of the same nlinear) at src's tensors again. */
void ar_block_weights_borrow(ar_block_weights *view, const ar_block_weights *src);

/* Out-features and in-features of linear i for config c. */
void ar_linear_shape(const ar_config *c, int i, int *n_out, int *k_in);

/* Scratch for block forwards and backward, allocated once for up to B
 * sequences of up to T tokens and reused across calls (treat as opaque).
 * Sizes in floats, BT = B*T, QD = NH*HD, KD = NKV*HD:
 *   rope cos/sin 2 * T*HD/2, ln/h 2 * BT*C, q/ao 2 * BT*QD, k/v 2 * BT*KD,
 *   gate/up 2 * BT*F, rstd BT*NH, attention scratch min(T, 128)*T per thread;
 * with train, for ar_block_backward also: dact/dgate/dup 3 * BT*F,
 *   dln/dh 2 * BT*C, dao/dq/dqn 3 * BT*QD, dk/dv/dkn 3 * BT*KD, and
 *   2 * BT*QD more attention scratch (per-head partial dK, dV). */
typedef struct {
    int B, T, train;
    float *cos_t, *sin_t;
    float *ln, *h, *q, *ao, *k, *v, *gate, *up, *rstd, *att;
    float *dact, *dgate, *dup, *dln, *dh, *dao, *dq, *dqn, *dk, *dv, *dkn;
    /* block_fused.c: a fused linear's output or gradient [BT, max(QD + 2 KD,
     * 2F)] (configs with fused_qkv or fused_gate_up), and with train and
     * post_norms one more [BT, C] gradient (else NULL) */
    float *fused, *dtmp;
    /* Activation fake-quantization (spec §2.12), set with ar_block_set_act_quant:
     * the spec per linear, the widest linear input (max of C, NH*HD, F), the
     * quantized copy of the input being multiplied [BT, kmax] (allocated by
     * the first set with any spec) and the linear it was made for (-1: none). */
    ar_act_spec act_q[AR_NLINEAR];
    int has_act_q[AR_NLINEAR];
    int kmax;
    float *xq;
    int xq_of;
    /* Optional observer of the linears' inputs in every later forward
     * (inference and training; NULL: none), for statistics such as importance
     * matrices gathered by a cheap inference pass: called once per linear i
     * with its input x [rows, k] before any activation fake-quantization
     * (q/k/v, and gate/up, see the same x). Set the fields directly. */
    void (*observe)(void *ctx, int linear, const float *x, long rows, int k);
    void *observe_ctx;
    /* Static KV-cache FP8 (quant_kv.h; AutoRound's static_kv_dtype): in every
     * later forward, kv_scale[0] > 0 fake-quantizes K (after QK-norm and
     * RoPE, the keys the cache would hold) and kv_scale[1] > 0 V with that
     * scale; 0: off (the default). observe_kv, when set, first sees K and V
     * [rows, NKV*HD] of each forward (kv_ctx its context). The backward is
     * unaware of both (inference use). Set the fields directly. */
    float kv_scale[2];
    void (*observe_kv)(void *ctx, const float *k, const float *v, long rows, int kd);
    void *kv_ctx;
    /* Gemma (c->norm_plus_one): the norms' effective weights 1 + w, [4 C + 2 HD],
     * and with train dpost [BT * C], the gradient at a post-norm's input. */
    float *normw, *dpost;
    /* Precision of the linears' GEMMs in every later forward and backward
     * (gemm.h): NULL (the default) f32, the reference; an ar_gemm set up for
     * bf16 runs them as AutoRound's AMP autocast does. Not owned; set the
     * field directly. */
    ar_gemm *gemm;
    /* The MoE layer's scratch (block_moe.c allocates it on first use, for
     * B*T rows; ar_block_work_free frees it). NULL otherwise. */
    struct ar_moe_acts_s *moe;
    /* NULL; else the MoE layers compute this rank's routed experts alone
     * and exchange their rows (moe.h, ar_moe_ep). Not owned; set directly. */
    struct ar_moe_ep_s *moe_ep;
    /* A family's own scratch (block_deepseek.c, block_gptoss.c: allocated on
     * first use, released by fam_free in ar_block_work_free). NULL otherwise. */
    void *fam;
    void (*fam_free)(void *);
} ar_block_work;

/* Allocate ws for config c, up to B sequences of up to T tokens; train != 0
 * adds the buffers of ar_block_backward. Returns 0, or -1 (ar_error) when out
 * of memory or the config is inconsistent. */
int ar_block_work_init(ar_block_work *ws, const ar_config *c, int B, int T, int train);
void ar_block_work_free(ar_block_work *ws);

/* Fake-quantize the input of linear i with aq[i] (NULL entry or NULL aq: not
 * quantized) in every later forward that uses ws, train and inference alike,
 * as AutoRound's wrapper does for act_bits <= 8. Each linear quantizes its
 * own copy of its input, so linears reading one input (q/k/v; gate/up) may
 * have different specs or none, as with a mixed-precision layer config; an
 * equal spec within such a group quantizes once. The saved activations
 * (ar_block_acts) keep the inputs before quantization. The backward is
 * straight-through: dL/dx passes unchanged, dW is taken against the quantized
 * input (recomputed from the saved one). Returns 0, or -1 (ar_error) when
 * the quantized-input buffer cannot be allocated. */
int ar_block_set_act_quant(ar_block_work *ws, const ar_act_spec *const aq[AR_NLINEAR]);

/* Activations one training forward saves for ar_block_backward, for up to B
 * sequences of T tokens (BT = B*T, QD = NH*HD, KD = NKV*HD); the linears'
 * inputs ln1, ao, ln2, act as they were before any activation quantization:
 * x, ln1, h, ln2 [BT, C]; rstd1, rstd2 [BT]; q, ao [BT, QD]; k, v [BT, KD]
 * (q, k after QK-norm and RoPE); qpre [BT, QD], kpre [BT, KD], rstdq [BT*NH],
 * rstdk [BT*NKV] only with QK-norm (else NULL); att [B, NH, T, T];
 * gate, up, act [BT, F]. */
typedef struct {
    int cap_B, cap_T;           /* capacity */
    int B, T;                   /* shape of the last ar_block_forward_train */
    float *x, *ln1, *rstd1, *qpre, *rstdq, *kpre, *rstdk, *q, *k, *v, *att, *ao;
    float *h, *ln2, *rstd2, *gate, *up, *act;
    /* Post-norms after attention and MLP (Gemma's sandwich_norm, GLM-4's
     * post_norms; else NULL): the attention (o_proj) and MLP (down_proj)
     * outputs before their post-norms [BT, C] and those norms' rstd [BT]. */
    float *attn_out, *rstd_ao, *mlp_out, *rstd_mo;
    struct ar_moe_acts_s *moe;  /* MoE layers' saved routing and expert activations (block_moe.c) */
    void *fam;                  /* a family's own saved activations (as ar_block_work.fam) */
    void (*fam_free)(void *);
} ar_block_acts;

/* Allocate a for config c (QK-norm buffers when c->qk_norm), capacity B x T.
 * Returns 0 or -1 (ar_error). */
int ar_block_acts_init(ar_block_acts *a, const ar_config *c, int B, int T);
void ar_block_acts_free(ar_block_acts *a);

/* The saved input of linear i [B*T, K_i] (ln1 for q/k/v, ao for o, ln2 for
 * gate/up, act for down), before activation quantization. */
const float *ar_block_acts_input(const ar_block_acts *a, int i);

/* Inference forward of one block: y [B*T, C] = block(x [B*T, C]) over B
 * independent causal sequences of T tokens at positions 0..T-1.
 * y may equal x (the input is last read before y is first written).
 * ws from ar_block_work_init with capacity >= B, T. Returns 0, or -1
 * (ar_error) when B, T exceed the capacity. */
int ar_block_forward(const ar_config *c, const ar_block_weights *w, const float *x,
                     float *y, int B, int T, ar_block_work *ws);

/* The same forward, saving into a (capacity >= B, T) what ar_block_backward
 * needs (x is copied, so the caller may reuse it). y may equal x. */
int ar_block_forward_train(const ar_config *c, const ar_block_weights *w,
                           const float *x, float *y, int B, int T,
                           ar_block_work *ws, ar_block_acts *a);

/* The attention half alone, for families that reuse this attention with
 * another MLP (block_moe.c): h = x + o_proj(attn(rmsnorm1(x))) into ws->h
 * (a == NULL: inference) or a->h (training: a->B, a->T set, x copied to
 * a->x and everything ar_block_attn_backward needs saved). The MLP fields
 * of a are left alone. 0, or -1 (ar_error) on a capacity overflow. */
int ar_block_attn_forward(const ar_config *c, const ar_block_weights *w, const float *x, int B, int T,
                          ar_block_work *ws, ar_block_acts *a);

/* Backward of the attention half saved in a, given dh [B*T, C] = dL/dh (the
 * residual's and the MLP's paths summed): dW[AR_Q..AR_O] +=, dxin as
 * ar_block_backward_inputs, dx += dL/dx (dx may be NULL). ws needs train. */
int ar_block_attn_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                           const float *dh, float *const *dW, float *const *dxin, float *dx,
                           ar_block_work *ws);

/* Backward of the forward saved in a: given dy [B*T, C] (the loss gradient at
 * the block output), ACCUMULATE dW[i] [N_i, K_i] += dL/dW_i for each of the
 * seven Llama linears (dW[i] may be NULL to skip one) and, when dx != NULL,
 * dx [B*T, C] += dL/dx. Norm weights and biases get no gradient. w must be
 * the weights of that forward; ws needs train. Returns 0 or -1 (ar_error). */
int ar_block_backward(const ar_config *c, const ar_block_weights *w,
                      const ar_block_acts *a, const float *dy,
                      float *const dW[AR_NLINEAR], float *dx, ar_block_work *ws);

/* ar_block_backward, and for each linear i with dxin[i] != NULL (dxin itself
 * may be NULL) also ACCUMULATE dxin[i] [B*T, K_i] += dL/dx̂_i, the gradient
 * at linear i's own (possibly quantized) input through that linear alone,
 * dy_i · W_i: AutoScheme's activation term needs it per linear, while dx sums
 * the linears sharing an input. */
int ar_block_backward_inputs(const ar_config *c, const ar_block_weights *w,
                             const ar_block_acts *a, const float *dy,
                             float *const dW[AR_NLINEAR], float *dx,
                             float *const dxin[AR_NLINEAR], ar_block_work *ws);

/* ---- helpers for other families with the same seven linears (block_gemma.c) ---- */

/* What linear i multiplies by: ws->observe sees x [rows, k], then x itself
 * or its activation-quantized copy in ws (ar_block_set_act_quant). NULL on
 * failure (ar_error). */
const float *ar_block_forward_input(ar_block_work *ws, int i, const float *x, long rows, int k);

/* The same without the observer (the backward's straight-through input). */
const float *ar_block_linear_input(ar_block_work *ws, int i, const float *x, long rows, int k);

/* K and V [n floats each, rows of kd] as a KV cache would hold them: observed
 * and fake-quantized as ws asks (kv_scale, observe_kv). */
void ar_block_kv_cache(ar_block_work *ws, float *k, float *v, long n, int kd);

/* 0, or -1 (ar_error) when B x T does not fit a capacity capB x capT. */
int ar_block_check_fit(int B, int T, int capB, int capT, const char *what);

/* The Gemma family (block_gemma.c), block.h's contracts:
 *   h = x + postnorm_a(o_proj(attn(rope(qknorm(q)), rope(qknorm(k)), v)))   q, k, v of n1 = norm1(x)
 *   y = h + postnorm_m(down(gelu_tanh(gate(n2)) * up(n2))),   n2 = prenorm_m(h)
 * every norm scaling by (1 + w); attention scale c->attn_scale and soft-cap
 * c->attn_softcap; the config is the layer's (ar_config_for_layer), the RoPE
 * tables are rebuilt from it on each call. */
int ar_block_gemma_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                           ar_block_work *ws);
int ar_block_gemma_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                                 int T, ar_block_work *ws, ar_block_acts *a);
int ar_block_gemma_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                            float *const *dW, float *dx, float *const *dxin, ar_block_work *ws);

#endif
