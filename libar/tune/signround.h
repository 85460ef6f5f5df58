/* signround.h — SignRound (AutoRound V1, spec §2): tune the rounding offsets V
 * and range multipliers α/β of every quantized Linear of one decoder block by
 * sign-gradient descent on the MSE between the quantized block's outputs and
 * the FP block's outputs, keeping the best iteration.
 *
 * One iteration t (0-based) of ar_signround_tune_block:
 *  1. draw GB = min(n, batch_size × grad_accum) sample indices from the
 *     sampler below;
 *  2. fake-quantize every planned weight from its FP weight with the current
 *     V, α, β (ar_quant_forward); linears with plan->act_quant also
 *     fake-quantize their input in every forward (straight-through backward);
 *  3. in micro-batches of o->micro_batch samples (default batch_size; fewer
 *     bound the activations' memory): block forward, masked squared error
 *     against the FP outputs, block backward (ar_block_backward), each
 *     micro-batch's gradient added in order into its chunk's. The chunks are
 *     the whole step (o->dp_chunk 0, the default) or o->dp_chunk samples
 *     each, every chunk's gradient from zero, summed over reduce.h's fixed
 *     binary tree; with o->reduce, ranks compute their own chunks and
 *     exchange the tree's nodes (same bits for any number of ranks). The
 *     loss parts add in order. The loss of the iteration is
 *     Σ_chunks Σ mask·(pred − ref)² / (GB·T·C): for grad_accum = 1 exactly
 *     AutoRound's MSELoss(mean) over pred·mask vs ref·mask; for grad_accum > 1
 *     AutoRound switches to a sum reduction, which weighs every element the
 *     same, as this single denominator does (only the gradient's sign is
 *     used, so the overall scale, like AutoRound's ×1000, is irrelevant;
 *     AutoRound's logged value is further divided by the valid-token count,
 *     a per-block constant);
 *  4. if the loss is strictly below the best so far, snapshot V, α, β (the
 *     parameters that produced this loss, i.e. before this step's update);
 *  5. STE backward into V, α, β (ar_quant_backward), then
 *     p −= lr·(1 − t/iters)·sign(dL/dp) (SignSGD, sign(0) = 0, LinearLR to 0,
 *     no warm-up) and α, β clamped to [0, hi].
 * The returned weights use the best snapshot, or with use_best = 0
 * (--not_use_best_mse) the parameters of the last iteration's forward: as
 * AutoRound collects them before its final optimizer step, that step is
 * skipped. iters = 0 returns plain min/max RTN (V = 0, α = β = 1).
 * Deterministic for a given seed and thread count: the sampler is seeded,
 * the loss is summed serially, and every parallel loop writes disjoint
 * outputs. */
#ifndef AR_SIGNROUND_H
#define AR_SIGNROUND_H
#include "rng.h"
#include "block.h"
#include "block_desc.h"
#include "quant.h"
#include "reduce.h"
#include "scheme.h"
#include <stdint.h>

/* The model's output head, for AutoRound's experimental LFQ loss
 * (enable_lfq, spec §3): the last block's output is scored by the language
 * model's cross-entropy through the final RMSNorm and lm_head against the
 * next token of each position, instead of the MSE against the FP outputs. */
typedef struct {
    const float *norm_w;  /* [C] final RMSNorm weight */
    float eps;            /* its epsilon */
    const float *w;       /* [V, C] lm_head (the token embedding when tied) */
    int V;
    const int32_t *ids;   /* [n, T] token ids of the cached samples */
    int kl;               /* 0: cross-entropy against the next token (AutoRound's LFQ);
                             1: KL divergence from the next-token distribution of the
                             FP block's output (head(y_ref)), the same positions */
} ar_lm_head;

/* Tuning options; ar_signround_defaults fills AutoRound's defaults. */
typedef struct {
    int iters;            /* 200 */
    float lr;             /* 0: auto, 1/iters (2/iters for ≤3-bit layers when iters ≥ 1000) */
    float minmax_lr;      /* 0: same as lr */
    int batch_size;       /* 8 */
    int grad_accum;       /* 1 */
    /* 0: batch_size; else the samples of one forward/backward (micro-batch),
     * at most batch_size: the saved activations and the workspace are sized
     * for it, not for batch_size. A step still draws batch_size·grad_accum
     * samples and divides by that count, so the loss and the gradient are the
     * same sums, grouped in chunks: exactly the run with batch_size = micro_batch
     * and grad_accum = the chunks of a step when it divides batch_size
     * (same chunks, same order, same bytes); against an unchunked run only
     * the float rounding of the per-chunk sums differs (dL/dŵ adds chunk by
     * chunk). Ignored with outlier_loss, whose top 0.1 % is taken over each
     * batch_size mini-batch (as AutoRound's) and so needs it whole. */
    int micro_batch;
    int dp_chunk;         /* 0: the step's samples are one chunk (micro-batch gradients add up in
                             order); else chunks of this many samples, each chunk's gradient from zero
                             (its micro-batches adding up in order inside it), summed over the fixed
                             chunk tree of reduce.h: the order ranks can reproduce (ceil(log2(chunks))
                             more gradient copies in one process) */
    ar_reducer *reduce;   /* NULL: one process; else this process is one of reduce->size ranks that
                             split each iteration's chunks (reduce.h); the result is the same bits */
    int expert_parallel;  /* 0; 1 with reduce (size > 1): the ranks split the routed experts instead
                             of the chunks (docs/mpi.md, "Expert parallel"): every rank runs all
                             samples through the replicated rest of the block, computes, tunes and
                             bakes its experts [E·r/size, E·(r+1)/size) alone (moe.h's ar_moe_ep):
                             their outputs are the one-process bits; the other ranks' experts' FP
                             weights are not read (may be NULL) and their outputs not written (the
                             caller collects them from their owners: tune_block.c's write_block) */
    uint64_t seed;        /* 42 */
    int minmax_tuning;    /* 1: tune α/β; 0: only V */
    int use_best;         /* 1: keep the best iteration; 0: the last (--not_use_best_mse) */
    int outlier_loss;     /* 0; 1: SignRoundV2's outlier-suppressed loss (ar_outlier_suppressed_sse)
                             in place of the MSE (enable_alg_ext with bits < 4 or act_bits <= 4) */
    const ar_lm_head *lfq; /* NULL; else the loss of every position the mask keeps is the LM
                             cross-entropy of head(pred) against the sample's next token, or
                             with lfq->kl the KL divergence from head(y_ref)'s distribution
                             (ar_lm_head_loss), averaged over those positions */
    /* NULL; else the FP weight of a quantized linear i may be absent from
     * w_fp (w_fp->w[i] NULL): the tuner reads it into one scratch buffer,
     * sized for the largest linear, each time it needs it (quantizer
     * forward and backward), with reload(reload_ctx, i, dst [N_i, K_i]),
     * 0 or -1 with ar_error. The same values as a resident copy: the same
     * results, one linear's f32 weights in memory instead of the block's. */
    int (*reload)(void *ctx, int linear, float *dst);
    void *reload_ctx;
    ar_gemm *gemm;        /* NULL: the block's GEMMs in f32; else in its precision (gemm.h, AMP) */
    /* NULL; else it sees every linear's input in every tuning forward
     * (ar_block_work.observe's contract): MoE experts, their routed rows */
    void (*observe)(void *ctx, int linear, const float *x, long rows, int k);
    void *observe_ctx;
} ar_signround_opts;

/* Fill o with AutoRound's defaults (the values in the comments above). */
void ar_signround_defaults(ar_signround_opts *o);

/* What to do with each linear of a block: arrays of desc->nlinear entries,
 * entry i for desc->lin[i] (ar_block_plan_init allocates them zeroed: every
 * linear kept FP). The tuner takes the shapes and the forward/backward from
 * desc, so a block of any family and any number of linears tunes alike. */
typedef struct {
    const ar_block_desc *desc;       /* the block described (not owned) */
    int nlinear;                     /* desc->nlinear */
    int *quantize;                   /* 0: keep FP (bits 16 or skipped) */
    ar_quant_spec *spec;
    /* Activation fake-quantization (spec §2.12): when act_quant[i] (only
     * meaningful with quantize[i], as AutoRound wraps only quantized layers),
     * the input of linear i is fake-quantized with act[i] in every tuning
     * forward, straight-through in the backward (desc->set_act_quant). */
    int *act_quant;
    ar_act_spec *act;
    /* SignRoundV2's pre-tuning scale search (spec §5.1(a)): NULL, or the
     * signed per-group scales [N, ngroups] of a symmetric int linear
     * (ar_quant_search_scales), used as ar_quant_params.init_scale: the
     * scale is init_scale·β, α unused; set spec.minmax_hi = 2 with it. */
    const float **init_scale;
} ar_block_plan;

/* Allocate plan for the linears of desc (kept: it must outlive the plan),
 * all entries zero. 0, or -1 (ar_error) when out of memory; the plan is
 * then safe to free. */
int ar_block_plan_init(ar_block_plan *plan, const ar_block_desc *desc);
void ar_block_plan_free(ar_block_plan *plan);

/* Copy src's entries into dst (a plan of the same description). */
void ar_block_plan_copy(ar_block_plan *dst, const ar_block_plan *src);

/* Output buffers for plan: out[nlinear], out[i] sized by desc->lin[i] for
 * every planned linear i (others zero). NULL (ar_error) when out of memory.
 * Free with ar_block_plan_outputs_free. */
ar_quant_out *ar_block_plan_outputs(const ar_block_plan *plan);
void ar_block_plan_outputs_free(ar_quant_out *out, const ar_block_plan *plan);

/* 1 when some quantized linear of plan fake-quantizes its input. */
int ar_block_plan_has_act_quant(const ar_block_plan *plan);

/* 1 when scheme s fake-quantizes activations with a calibrated maximum
 * (AutoRound's check_need_act_calibration): act_bits <= 8 and static
 * (act_dynamic 0, FP8_STATIC) or a data type naming "static" (NVFP4's
 * nv_fp4_with_static_gs: the input global scale 448·6/act_max). */
int ar_scheme_act_needs_max(const ar_scheme *s);

/* The activation quantizer of a quantized layer with scheme s (spec §4.1:
 * act_bits, act_data_type, act_group_size, act_dynamic, act_sym), act_max
 * being the calibrated max|x| of its input for schemes that need one (0 when
 * none was gathered: the maximum is then taken per call, as AutoRound does
 * without act_max). Returns 1 with *as filled, 0 when the layer's
 * activations stay unquantized (act_bits >= 16 or the layer kept at 16 bits),
 * -1 with ar_error for activations no quantizer here handles (asymmetric,
 * mx_int, nvfp4_v2, 6-bit MX, a bad group size). */
int ar_act_spec_from_scheme(const ar_scheme *s, float act_max, ar_act_spec *as);

/* Install plan's activation quantizers (quantized linears with act_quant) in
 * ws, so that every later forward through ws quantizes those inputs as the
 * tuned block does (AutoRound keeps them after tuning: the quantized chain
 * and the fake model evaluate with them). 0 or -1 (ar_error). */
int ar_block_plan_set_act_quant(const ar_block_plan *plan, ar_block_work *ws);

/* Results of tuning one block. */
typedef struct {
    double loss0;         /* loss at iteration 0 (plain RTN) */
    double best_loss;     /* loss of the returned parameters' iteration: the
                             smallest, or with use_best = 0 the last one */
    int best_iter;        /* that iteration (use_best = 0: iters − 1) */
    double sec_forward, sec_backward, sec_quant, sec_total; /* wall seconds */
    double ms_per_iter;   /* CUDA: device time per iteration, iterations 1 to
                             iters − 2 by events (0 on the CPU, or iters < 3) */
} ar_signround_report;

/* Called after each iteration (may be NULL). */
typedef void (*ar_signround_progress)(void *ctx, int iter, int iters, double loss, double best_loss);

/* Tune block weights w_fp (FP, f32) on n cached samples of T tokens:
 * x_in [n, T, C] bf16 inputs (the quantized chain, or the FP chain for block 0),
 * y_ref [n, T, C] bf16 FP outputs, mask [n, T] (1 = position counts; may be
 * NULL for "all but the last token"). Linear i is plan->desc->lin[i] (its
 * shape; the block runs plan->desc's forward/backward). For each linear i
 * with plan->quantize[i], out[i] (plan->nlinear entries, e.g. from
 * ar_block_plan_outputs) receives the final fake-quantized weight, codes,
 * scales and zero points (buffers owned by the caller). Returns 0 or -1. */
int ar_signround_tune_block(const ar_config *c, const ar_block_weights *w_fp,
                            const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask,
                            int n, int T, const ar_block_plan *plan, const ar_signround_opts *o,
                            const ar_quant_out *out, ar_signround_report *rep,
                            ar_signround_progress cb, void *cb_ctx);

/* The buffers of ar_signround_tune_block (tunables, mini-batch, workspace,
 * saved activations) kept from one block to the next: a tuner that runs
 * block after block of one model passes the same *cache (NULL at first) to
 * ar_signround_tune_block_cached, which makes or remakes the buffers when
 * the shapes change and otherwise reuses them, so that the allocator does
 * not hand the pages back to the system and fault them in again for each
 * block. Results are those of ar_signround_tune_block. Free with
 * ar_signround_cache_free (NULL is fine). */
typedef struct ar_signround_cache ar_signround_cache;
int ar_signround_tune_block_cached(ar_signround_cache **cache, const ar_config *c, const ar_block_weights *w_fp,
                                   const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask,
                                   int n, int T, const ar_block_plan *plan, const ar_signround_opts *o,
                                   const ar_quant_out *out, ar_signround_report *rep,
                                   ar_signround_progress cb, void *cb_ctx);
void ar_signround_cache_free(ar_signround_cache *cache);

/* The start that ar_signround_tune_block and its CUDA twin share: point a
 * NULL *rep (the caller wants no report) at spare, zero **rep, check n ≥ 1,
 * T ≥ 2, iters ≥ 0, batch_size ≥ 1 and grad_accum ≥ 1, and return the samples
 * of one step (batch_size · grad_accum, at most n); -1 (ar_error naming the
 * sizes) when a size is out of range. */
int ar_signround_begin(int n, int T, const ar_signround_opts *o, ar_signround_report **rep,
                       ar_signround_report *spare);

/* AutoRound's IndexSampler: a seeded shuffle of 0..n-1 consumed gb indices at
 * a time; when fewer than gb are left the remainder is dropped and the
 * permutation reshuffled (Fisher-Yates over ar_rand_below, splitmix64). */
typedef struct {
    int *perm;
    int n, pos;
    uint64_t rng;
} ar_index_sampler;

/* Allocate and shuffle a sampler over n samples (n ≥ 1). 0 or -1 (ar_error). */
int ar_index_sampler_init(ar_index_sampler *s, int n, uint64_t seed);

/* The next gb (1 ≤ gb ≤ n) indices; valid until the next call. */
const int *ar_index_sampler_next(ar_index_sampler *s, int gb);

/* Release the permutation (safe on a zeroed or failed sampler). */
void ar_index_sampler_free(ar_index_sampler *s);

/* The MSE loss of pred against ref [rows, C] with a per-row mask (NULL = all
 * rows count), averaged over all rows*C elements (masked rows add 0), and its
 * gradient dpred = 2·(pred − ref)·mask / (rows·C) when dpred != NULL. */
double ar_masked_mse(const float *pred, const float *ref, const uint8_t *row_mask, long rows, int C,
                     float *dpred);

/* SignRoundV2's outlier-suppressed loss (spec §5.1(a)) over pred and ref
 * [rows, C]: the k = max(1, floor(rows·C/1000)) largest |pred − ref| among
 * ALL rows·C elements (masked rows included: AutoRound picks them before
 * applying the token mask) are left out; returns Σ (pred − ref)² over the
 * other elements of the rows kept by row_mask (NULL = all), so dividing by
 * rows·C gives AutoRound's mean. With dpred, dpred = gscale·(pred − ref) on
 * the counted elements and 0 elsewhere. Ties at the threshold drop the
 * lowest indices first. -1 when out of memory (ar_error). */
double ar_outlier_suppressed_sse(const float *pred, const float *ref, const uint8_t *row_mask, long rows, int C,
                                 float gscale, float *dpred);

/* The LFQ loss: Σ over rows r of pred [rows, C] with target[r] >= 0 of the
 * cross-entropy of logits = lm_head(rmsnorm(pred[r])) against token
 * target[r], or with h->kl of KL(softmax(head(ref[r])) || softmax(head(pred[r])))
 * (ref [rows, C], the FP block's outputs; target then only selects rows).
 * With dpred (not NULL), dpred [rows, C] = scale · d(Σ)/dpred (overwritten).
 * Logits are formed for a few hundred rows at a time, so the scratch is that
 * many rows of V floats (twice with kl). -1 when out of memory (ar_error). */
double ar_lm_head_loss(const ar_lm_head *h, const float *pred, const float *ref, const int *target, long rows, int C,
                       float scale, float *dpred);

/* Default loss mask for n samples of T tokens: every position but the last. */
void ar_default_mask(uint8_t *mask, int n, int T);

#endif
