/* signround.h — SignRound (AutoRound V1, spec §2): tune the rounding offsets V
 * and range multipliers α/β of every quantized Linear of one decoder block by
 * sign-gradient descent on the MSE between the quantized block's outputs and
 * the FP block's outputs, keeping the best iteration.
 *
 * One iteration: draw GB = batch_size × grad_accum samples from a shuffled
 * permutation (reshuffled when fewer than GB remain), fake-quantize every
 * weight from the FP weight (ar_quant_forward), run the block forward on
 * batch_size samples at a time, take MSE(pred·mask, ref·mask) averaged over
 * all elements (the last token of every sample masked out), back-propagate
 * through the block (ar_block_backward) and the quantizer's straight-through
 * estimator (ar_quant_backward), then p -= lr·(1 - t/iters)·sign(dL/dp).
 * The loss of iteration t is measured before its update; the parameters that
 * gave the smallest loss are kept (AutoRound's best-iteration rule). */
#ifndef AR_SIGNROUND_H
#define AR_SIGNROUND_H
#include "block.h"
#include "quant.h"
#include <stdint.h>

/* Tuning options; ar_signround_defaults fills AutoRound's defaults. */
typedef struct {
    int iters;            /* 200 */
    float lr;             /* 0: auto, 1/iters (2/iters for ≤3-bit layers when iters ≥ 1000) */
    float minmax_lr;      /* 0: same as lr */
    int batch_size;       /* 8 */
    int grad_accum;       /* 1 */
    uint64_t seed;        /* 42 */
    int minmax_tuning;    /* 1: tune α/β; 0: only V */
    int use_best;         /* 1: keep the best iteration; 0: the last (--not_use_best_mse) */
    int threads_hint;     /* unused for now; OpenMP/OpenBLAS decide */
} ar_signround_opts;

void ar_signround_defaults(ar_signround_opts *o);

/* What to do with each of the block's seven linears. */
typedef struct {
    int quantize[AR_NLINEAR];        /* 0: keep FP (bits 16 or skipped) */
    ar_quant_spec spec[AR_NLINEAR];
} ar_block_plan;

/* Results of tuning one block. */
typedef struct {
    double loss0;         /* loss at iteration 0 (plain RTN) */
    double best_loss;
    int best_iter;
    double sec_forward, sec_backward, sec_quant, sec_total;
} ar_signround_report;

/* Called after each iteration (may be NULL). */
typedef void (*ar_signround_progress)(void *ctx, int iter, int iters, double loss, double best_loss);

/* Tune block weights w_fp (FP, f32) on n cached samples of T tokens:
 * x_in [n, T, C] bf16 inputs (the quantized chain, or the FP chain for block 0),
 * y_ref [n, T, C] bf16 FP outputs, mask [n, T] (1 = position counts; may be
 * NULL for "all but the last token"). For each linear i with plan->quantize[i],
 * out[i] receives the final fake-quantized weight, codes, scales and zero
 * points (ar_quant_out buffers owned by the caller). Returns 0 or -1. */
int ar_signround_tune_block(const ar_config *c, const ar_block_weights *w_fp,
                            const uint16_t *x_in, const uint16_t *y_ref, const uint8_t *mask,
                            int n, int T, const ar_block_plan *plan, const ar_signround_opts *o,
                            const ar_quant_out out[AR_NLINEAR], ar_signround_report *rep,
                            ar_signround_progress cb, void *cb_ctx);

/* The MSE loss of pred against ref [rows, C] with a per-row mask (NULL = all
 * rows count), averaged over all rows*C elements (masked rows add 0), and its
 * gradient dpred = 2·(pred − ref)·mask / (rows·C) when dpred != NULL. */
double ar_masked_mse(const float *pred, const float *ref, const uint8_t *row_mask, long rows, int C,
                     float *dpred);

/* Default loss mask for n samples of T tokens: every position but the last. */
void ar_default_mask(uint8_t *mask, int n, int T);

#endif
