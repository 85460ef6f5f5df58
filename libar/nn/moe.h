/* moe.h — a mixture-of-experts MLP layer: router, routed SwiGLU experts, an
 * optional shared expert; forward and backward over flat f32 buffers, llm.c
 * style. docs/moe.md §3 has each family's transformers forward this follows.
 *
 * Shapes: R token rows, H = hidden, E experts, K = top-k, I = expert width,
 * SI = shared-expert width. Weights use Hugging Face's layout W[N_out, K_in].
 *
 *   logits [R, E] = x · router^T (+ router bias)
 *   (sel, wt) [R, K] = route(logits)                       (ar_moe_route)
 *   y[r] = Σ_k wt[r,k] · expert_sel[r,k](x[r])  + shared(x[r]) · g(x[r])
 *   expert_e(x) = down_e(act(gate_e x + bg, up_e x + bu)) + bd
 *
 * act is silu(g)·u, or gpt-oss's clamped form (swiglu_limit > 0):
 * g' = min(g, L), u' = clamp(u, -L, L), (u' + 1) · g' · sigmoid(alpha g').
 * g(x) = sigmoid(shared_gate · x) (Qwen2-MoE) or 1 (DeepSeek).
 *
 * Routing (ar_moe_route), per scoring:
 *  - SOFTMAX (Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V2): p = softmax(logits)
 *    over all experts; top-k of p (DeepSeek-V2 group_limited_greedy first keeps
 *    the topk_group groups with the largest max p); wt = p[sel], divided by
 *    their sum when norm_topk_prob, times scale.
 *  - SIGMOID (DeepSeek-V3 noaux_tc): s = sigmoid(logits); choice = s +
 *    score_bias; groups ranked by the sum of their 2 best choice scores, the
 *    topk_group best kept; top-k of choice; wt = s[sel] (unbiased), divided by
 *    (sum + 1e-20) when norm_topk_prob, times scale.
 *  - TOPK_SOFTMAX (gpt-oss): top-k of the logits, wt = softmax over those k.
 * Ties (equal scores, equal group scores): the lower index wins, and sel is
 * ordered by descending score. transformers' torch.topk leaves ties
 * unspecified; with f32 scores they do not occur in practice.
 *
 * Dispatch: each expert's routed rows are gathered, run through that expert's
 * three linears (one sgemm each) and the weighted outputs summed back per row
 * in k order (deterministic). No expert ever runs on rows it was not routed.
 *
 * Backward: dW of expert e's linears from its routed rows only; dx through the
 * experts, through the routing weights (the softmax / sigmoid Jacobian on the
 * selected entries; the top-k choice is piecewise constant and has none) and
 * the router linear, and through the shared expert and its sigmoid gate. The
 * router, the shared gate and all biases get no gradient (kept FP, not tuned,
 * as AutoRound keeps them). */
#ifndef AR_MOE_H
#define AR_MOE_H
#include "config.h"
#include "gemm.h"

/* What one MoE layer computes (from ar_moe_dims_from_config, or filled by
 * hand in tests). */
typedef struct {
    int H, E, K, I;
    ar_router_scoring scoring;
    ar_topk_method topk_method;
    int n_group, topk_group;    /* 1, 1 when not group-limited */
    int norm_topk_prob;
    float scale;                /* routed_scaling_factor (1 when none) */
    float swiglu_alpha, swiglu_limit; /* gpt-oss; limit 0 = plain SiLU */
    int SI;                     /* shared expert width, 0 = none */
    int shared_gate;            /* the shared expert is scaled by sigmoid(shared_gate · x) */
} ar_moe_dims;

/* The layer of config c (its MoE fields; DeepSeek-V2 never renormalises). */
void ar_moe_dims_from_config(ar_moe_dims *d, const ar_config *c);

/* Linears per MoE layer: 3 per expert (gate, up, down of expert e at 3e+0,
 * 3e+1, 3e+2), then 3 for the shared expert when SI > 0 (at 3E+0..2). */
int ar_moe_nlinear(const ar_moe_dims *d);

/* The weights of one layer; w and b have ar_moe_nlinear entries (b entries
 * NULL for no bias; b itself may be NULL). */
typedef struct {
    const float *router;        /* [E, H] */
    const float *router_b;      /* [E] or NULL (gpt-oss) */
    const float *score_bias;    /* [E] or NULL (DeepSeek-V3 e_score_correction_bias) */
    const float *shared_gate;   /* [1, H] or NULL */
    float *const *w;            /* gate/up [I, H], down [H, I]; shared [SI, H], [H, SI] */
    float *const *b;
} ar_moe_weights;

/* Expert parallel (docs/mpi.md, "Expert parallel"): rank r of size ranks
 * computes the routed experts [E·r/size, E·(r+1)/size) alone (ar_moe_ep_range)
 * and the ranks all-gather the per-expert rows. Routing, the shared expert
 * and everything outside the layer are replicated, so every rank gets the
 * same routed rows; the gathered outputs sit where one process computes them
 * (expert order), and the weighted sum per token runs in k order on every
 * rank, so y and dx are the one-process bits. The library knows no MPI: the
 * all-gather is the caller's (reduce.h's contract: every rank's counts[r]
 * bytes, rank 0's first; send never aliases recv). bytes and seconds count
 * what this rank received and the time spent in the exchanges. */
typedef struct ar_moe_ep_s {
    int rank, size;
    void *ctx;
    int (*allgather)(void *ctx, const void *send, void *recv, const size_t *counts);
    double bytes, seconds;
} ar_moe_ep;

/* The routed experts [*e0, *e1) rank r of n computes: an even, contiguous split. */
void ar_moe_ep_range(int E, int r, int n, int *e0, int *e1);

/* Activations of one forward (saved for the backward) and the scratch of both,
 * for up to cap rows. Sizes in floats, RK = R*K: logits, scores [R, E]; sel,
 * wt [R, K]; cnt, off [E+1]; slot_of, row_of [RK] (assignment r*K+k -> its row
 * in expert order, and back); xg [RK, H] gathered inputs; g, u, act [RK, I];
 * eo [RK, H] expert outputs; shared: sg, su, sact [R, SI], so [R, H], sgl [R];
 * backward: deo [RK, H], dact, dg, du [RK, I], dsh [R, SI] x3, dlog [R, E].
 * x points at the last forward's input (not copied: the caller keeps it). */
typedef struct ar_moe_acts_s {
    int cap, R;
    const float *x;
    float *logits, *scores, *wt;
    int *sel, *cnt, *off, *slot_of, *row_of;
    float *xg, *g, *u, *act, *eo;
    float *sg, *su, *sact, *so, *sgl;
    float *deo, *dact, *dg, *du, *dsg, *dsu, *dsact, *dlog, *dxg;
    /* Optional observer of each expert linear's input (the routed rows only),
     * called with the linear's index in ar_moe_nlinear's order plus lin0. */
    void (*observe)(void *ctx, int linear, const float *x, long rows, int k);
    void *observe_ctx;
    int lin0;
    /* The precision of the expert and shared-expert linears (gemm.h): NULL
     * f32; not owned, set directly. The router and the shared gate stay f32. */
    ar_gemm *gemm;
    /* NULL: every routed expert here; else this rank's share alone (above).
     * Not owned, set directly. dW entries of other ranks' experts are not
     * touched by the backward, and the observer sees this rank's experts. */
    ar_moe_ep *ep;
} ar_moe_acts;

/* Allocate a for up to cap rows; train adds the backward's buffers. 0 or -1 (ar_error). */
int ar_moe_acts_init(ar_moe_acts *a, const ar_moe_dims *d, int cap, int train);
void ar_moe_acts_free(ar_moe_acts *a);

/* Route R rows: scores [R, E] (p, s or the logits, per scoring), sel, wt
 * [R, K]. score_bias [E] or NULL. */
void ar_moe_route(const ar_moe_dims *d, const float *logits, const float *score_bias, int R,
                  float *scores, int *sel, float *wt);

/* dlogits [R, E] = dL/dlogits (overwritten) given dwt [R, K] = dL/dwt and
 * the forward's scores, sel, wt. */
void ar_moe_route_backward(const ar_moe_dims *d, const float *dwt, const float *scores,
                           const int *sel, const float *wt, int R, float *dlogits);

/* y [R, H] = moe(x [R, H]) (overwritten; y must not alias x). Saves into a.
 * 0, or -1 (ar_error) when R exceeds a's capacity. */
int ar_moe_forward(const ar_moe_dims *d, const ar_moe_weights *w, const float *x, float *y,
                   int R, ar_moe_acts *a);

/* Backward of the last forward saved in a, given dy [R, H]: dW[i] += dL/dW_i
 * for each linear (dW or entries may be NULL) and dx [R, H] += dL/dx (dx may
 * be NULL). a needs train. 0 or -1 (ar_error). */
int ar_moe_backward(const ar_moe_dims *d, const ar_moe_weights *w, ar_moe_acts *a,
                    const float *dy, float *const *dW, float *dx);

/* Experts of the last forward that got no row (cnt[e] == 0). */
int ar_moe_unrouted(const ar_moe_dims *d, const ar_moe_acts *a);

#endif
