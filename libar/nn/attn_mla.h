/* attn_mla.h — DeepSeek-V2/V3 multi-head latent attention (MLA), forward and
 * backward over flat f32 buffers, as transformers 5.25 computes it
 * (models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention L333-;
 * docs/moe.md section 3). Shapes: BT = B T token rows, C = hidden,
 * NH heads, QL = q_lora_rank (0: no q LoRA), KL = kv_lora_rank,
 * DN = qk_nope_head_dim, DR = qk_rope_head_dim, DQ = DN + DR, DV = v_head_dim.
 *
 *   qa  = q_a_proj x (+ bias)                [BT, QL]
 *   q   = q_b_proj rmsnorm(qa; q_a_norm)     [BT, NH, DQ]   (or q_proj x when QL = 0)
 *   kva = kv_a_proj_with_mqa x (+ bias)      [BT, KL + DR]  = [latent | shared rope part]
 *   kvb = kv_b_proj rmsnorm(latent; kv_a_norm) [BT, NH, DN + DV] = per head [k_nope | v]
 *   RoPE (interleaved pairs when rope_interleave) on q[..., DN:] and on the
 *   shared rope part; k = [k_nope | rope part, the same for every head]
 *   attention (causal, scale = ar_rope_mla_softmax_scale) -> ao [BT, NH, DV]
 *   y   = o_proj ao (+ bias)                 [BT, C]
 * Biases (attention_bias) exist on q_a_proj, kv_a_proj_with_mqa and o_proj
 * only; the two RMSNorms use eps 1e-6 (DeepseekV3RMSNorm's default, not
 * rms_norm_eps) and their weights stay fixed in the backward. */
#ifndef AR_ATTN_MLA_H
#define AR_ATTN_MLA_H
#include "config.h"
#include "gemm.h"

/* The linears, in this order (an index of ar_mla_weights.w / grads). */
enum { AR_MLA_Q_A, AR_MLA_Q_B, AR_MLA_Q, AR_MLA_KV_A, AR_MLA_KV_B, AR_MLA_O, AR_MLA_NLINEAR };
/* Their checkpoint names under self_attn. (q_a_proj, q_b_proj, q_proj, ...) */
extern const char *const ar_mla_linear_names[AR_MLA_NLINEAR];

typedef struct {
    int C, NH, QL, KL, DN, DR, DV;
    int interleave;   /* rope_interleave */
    float eps;        /* of q_a_layernorm and kv_a_layernorm: 1e-6 */
    float scale;      /* softmax scale */
} ar_mla_dims;

/* The dims of c (c->mla, c->hidden, c->n_heads; scale from
 * ar_rope_mla_softmax_scale). */
void ar_mla_dims_from_config(ar_mla_dims *d, const ar_config *c);

/* Rows and columns of linear i: out [N] = W [N, K] in [K]; 0, 0 when the
 * layer has no such linear (Q_A/Q_B without q LoRA, Q with it). */
void ar_mla_linear_shape(const ar_mla_dims *d, int i, int *N, int *K);

typedef struct {
    const float *w[AR_MLA_NLINEAR];   /* [N, K] HF layout; NULL for the absent ones */
    const float *b[AR_MLA_NLINEAR];   /* biases [N] (Q_A, KV_A, O with attention_bias) or NULL */
    const float *q_a_norm;            /* [QL] */
    const float *kv_a_norm;           /* [KL] */
} ar_mla_weights;

/* Gradients, each accumulated (+=) when non-NULL (layouts as the weights). */
typedef struct {
    float *w[AR_MLA_NLINEAR], *b[AR_MLA_NLINEAR];
} ar_mla_grads;

/* The input a linear reads: x itself, or what a hook returns for it (an
 * activation fake-quantized copy, block.h's act_q; or x after observing it,
 * block.h's observe). The returned buffer must stay unchanged until the
 * backward (one buffer per linear), which uses it for dW as the forward did
 * (straight-through: dx flows to x unchanged). */
typedef struct {
    const float *(*input)(void *ctx, int linear, const float *x, long rows, int k);
    void *ctx;
} ar_mla_hook;

/* What the forward keeps for the backward, and the backward's scratch;
 * allocated for B sequences of T tokens by ar_mla_acts_new (NULL and
 * ar_error set when out of memory), released by ar_mla_acts_free. */
typedef struct {
    int B, T;
    float *qa, *qa_rstd, *qan;        /* [BT, QL], [BT], [BT, QL] (QL > 0) */
    float *q;                         /* [BT, NH, DQ] after RoPE */
    float *kva, *lat, *lat_rstd, *latn; /* [BT, KL + DR] (rope part rotated), [BT, KL], [BT], [BT, KL] */
    float *kvb;                       /* [BT, NH, DN + DV] */
    float *k, *v;                     /* [BT, NH, DQ], [BT, NH, DV] */
    float *att;                       /* [B, NH, T, T] */
    float *ao;                        /* [BT, NH * DV] */
    const float *in[AR_MLA_NLINEAR];  /* the input each linear read */
    float *scratch;                   /* backward: gradients of the above */
    ar_gemm *gemm;                    /* the linears' precision (gemm.h): NULL f32; not owned, set directly */
} ar_mla_acts;

ar_mla_acts *ar_mla_acts_new(const ar_mla_dims *d, int B, int T);
void ar_mla_acts_free(ar_mla_acts *a);

/* y [BT, C] = MLA(x [BT, C]) for a->B sequences of a->T tokens; cos_t, sin_t
 * [T, DR/2] the rope tables with yarn's attention factor in them
 * (rope_scaling.h: ar_rope_yarn_inv_freq, ar_rope_tables_scaled). hook may
 * be NULL. y must not alias x. Returns 0, or -1 (ar_error) when a bf16 GEMM
 * fails (a->gemm); f32 cannot fail. */
int ar_mla_forward(float *y, const float *x, const ar_mla_weights *w, const ar_mla_dims *d, const float *cos_t,
                   const float *sin_t, ar_mla_acts *a, const ar_mla_hook *hook);

/* From dy [BT, C] and the forward's a: dx [BT, C] += (optional) and g's
 * non-NULL entries +=. x is the forward's input. 0 or -1 as the forward. */
int ar_mla_backward(float *dx, ar_mla_grads *g, const float *dy, const float *x, const ar_mla_weights *w,
                    const ar_mla_dims *d, const float *cos_t, const float *sin_t, ar_mla_acts *a);
#endif
