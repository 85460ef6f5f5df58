/* autoscheme.h — AutoScheme mixed precision (spec §5.2): score every
 * quantizable Linear under each candidate scheme, count each layer's bits as
 * AutoRound does, and pick one scheme per layer (or per group of layers that
 * must share one) minimising the summed score under a bit budget.
 *
 * Pieces, usable alone:
 *  - ar_layer_bits: AutoRound's compute_layer_bits, quirks included;
 *  - ar_autoscheme_dp: the exact allocation over cumulative bits;
 *  - ar_autoscheme_score: one option's first-order "delta loss"
 *    Σ |∂L/∂Ŵ ⊙ (W − Ŵ)| + Σ |∂L/∂x̂ ⊙ (x − x̂)| per Linear from full-model
 *    causal-LM backward passes (the second term for options that quantize
 *    activations);
 *  - ar_autoscheme_run: all of it over a model and calibration token ids.
 *
 * Layer indices ("slots"): block l's Linears are off(l) + i, linear i of
 * block l's description (block_desc.h, ar_block_desc_init_layer; for Llama
 * block.h's order, nlinear 7), off(l) the linears of the blocks before l
 * (l·nlinear when all blocks are alike; mixtures of experts differ between
 * dense and MoE layers); the output head follows the last block;
 * ar_autoscheme_nslots(c) in all.
 *
 * Mixtures of experts (AutoRound 0.16.1 auto_scheme/utils.py): the routed
 * experts' linears of one block ("mlp.experts.E.*", not the shared expert)
 * form one DP item, one scheme for all of them with their losses and bits
 * summed (build_expert_groups); an expert no calibration token reached
 * scores 0 and gets its block's mean active-expert score instead
 * (_fill_inactive_expert_scores). The measured score keeps one description
 * per model (llama only). */
#ifndef AR_AUTOSCHEME_H
#define AR_AUTOSCHEME_H
#include "model.h"
#include "scheme.h"
#include <stdint.h>

/* The number of slots of a model of config c, or -1 (ar_error) when its
 * blocks have no description. */
int ar_autoscheme_nslots(const ar_config *c);

/* 1 when AutoScheme's delta-loss score runs on config c: every block of the
 * llama, moe, deepseek or gpt_oss family (a plain RMSNorm before the head;
 * not Gemma's 1 + w and soft-cap). */
int ar_autoscheme_family_supported(const ar_config *c);

/* Bits a layer of weight [n_out, k_in] costs under scheme s (spec §5.2,
 * AutoRound's compute_layer_bits):
 *  - bits >= 16 or ignore_scale_zp: bits·n (a GGUF K-scheme left at 16 bits: 32·n);
 *  - GGUF K (super_bits > 0): b·n + ng·2·super_bits + ceil(ng/super_group)·64;
 *  - otherwise b·n + ng·(scale_bits + zp_bits), scale_bits 8 for "mx_fp",
 *    "nv_fp", "fp4" data types else 16, zp_bits = b when asymmetric OR when
 *    the data type contains "int" (AutoRound's quirk: symmetric int pays it).
 * ng = n_out·ceil(k_in/G) (G > 0), 1 (G = 0), n_out (G = -1); FP8 2-D blocks
 * count ceil(n_out/G)·ceil(k_in/G) tiles. W4A16 g128: 4 + 20/128 = 4.156/weight. */
int64_t ar_layer_bits(const ar_scheme *s, int n_out, int k_in, int ignore_scale_zp);

/* Exact allocation: choose one option per item minimising Σ loss[i, choice]
 * subject to Σ bits[i, choice] <= budget. bits, loss [nitems, nopt];
 * allowed [nitems, nopt] (NULL: all) masks options out per item. Items are
 * taken in order; a state is an exact cumulative bit count with its least
 * loss, states over budget are dropped, and only the Pareto front (loss
 * strictly falling as bits rise) is kept, thinned evenly to max_states when
 * larger (max_states <= 0: no cap, the result is then exact). Ties go to
 * the option listed first. choice [nitems] gets option indices; *used_bits
 * and *total_loss (each may be NULL) the winner's totals. Returns 0, or -1
 * with ar_error when no assignment fits the budget. */
int ar_autoscheme_dp(int nitems, int nopt, const int64_t *bits, const double *loss,
                     const unsigned char *allowed, int64_t budget, long max_states,
                     int *choice, int64_t *used_bits, double *total_loss);

/* Progress callback: what ("score W2A16G64"), step i of n. */
typedef void (*ar_as_progress_fn)(void *ctx, const char *what, int i, int n, double loss);

/* Terms of the delta-loss score (spec §5.2 step 3). */
enum {
    AR_AS_WEIGHT_TERM = 1u << 0,    /* Σ |∂L/∂Ŵ ⊙ (W − Ŵ)| */
    AR_AS_ACT_TERM = 1u << 1,       /* Σ |∂L/∂x̂ ⊙ (x − x̂)| (options with act_bits <= 8 only) */
};

/* The terms a run over options[nopt] scores with, as spec §5.2 says: the
 * activation term when some option quantizes activations (it applies to
 * those options only), the weight term only when some option is
 * weight-only (bits <= 8 < act_bits), so a run of
 * MXFP4/MXFP8/NVFP4 options alone ranks layers by their activation error
 * (with quantized weights in the forward). always_weight_term adds the
 * weight term in every case, as auto-round 0.16 does. */
unsigned ar_autoscheme_terms(const ar_scheme *options, int nopt, int always_weight_term);

/* Score one option: every slot with candidate[slot] != 0 is fake-quantized
 * with opt by RTN (no tuning) and, when opt quantizes activations, reads its
 * input through opt's activation quantizer (dynamic: no calibrated maximum);
 * the model runs on nseq sequences of T tokens (ids [nseq, T]) in batches of
 * batch_size with the mean next-token cross-entropy of each batch as loss,
 * and after each batch's backward, for each candidate, score[slot] +=
 * Σ |∂L/∂Ŵ ⊙ (W − Ŵ)| (with AR_AS_WEIGHT_TERM in terms) and
 * Σ |∂L/∂x̂ ⊙ (x − x̂)| over its own quantized input x̂ (AR_AS_ACT_TERM, for an
 * activation option). The backward through activation quantizers is
 * straight-through. Activations of all blocks of one batch are held (about
 * 40·B·T·(C + F) bytes per block plus the attention matrices). *mean_loss
 * (may be NULL) gets the average batch loss. The head slot is scored only
 * when the head is not tied. 0 or -1 (ar_error). */
int ar_autoscheme_score(ar_model *m, const ar_scheme *opt, const unsigned char *candidate, unsigned terms,
                        const int32_t *ids, int nseq, int T, int batch_size, double *score,
                        double *mean_loss, ar_as_progress_fn progress, void *pctx);

/* Layer scores of ar_autoscheme_run. */
enum {
    AR_AS_SCORE_DELTA = 0,      /* the spec's first-order delta loss (ar_autoscheme_score) */
    AR_AS_SCORE_MEASURED = 1,   /* the loss change itself (ar_autoscheme_measure) */
};

/* Measured score (beyond AutoRound, spec §5.2 asks for none): for every
 * candidate slot s (candidate[s] != 0; an untied head only) and quantizing
 * option j, score[s·nopt + j] = max(0, L(base, s <- j) - L(base, s <- FP)):
 * the mean next-token cross-entropy over the nseq x T calibration tokens
 * (ids [nseq, T]) of the model whose slots follow base (base[slot]: option
 * index, -1 or a BF16 option = full precision; base NULL: all FP), with slot
 * s alone switched to option j, minus the same with s left in FP. Weights
 * are fake-quantized by RTN, or with opt_rtn by opt-RTN (imatrix Σx² of the
 * FP model's linear inputs on the same tokens; symmetric specs only, as
 * ar-tune's --iters 0); options that quantize activations read their inputs
 * through their dynamic quantizer. Options that keep 16 bits score 0. Only
 * the blocks from s's block on are recomputed: the base model's block inputs
 * for all nseq sequences are kept (4·nseq·T·C·(n_layers+1) bytes). Cost: one
 * forward of about half the model per slot and non-base option, plus one
 * more per slot whose base choice quantizes. batch_size sequences share a
 * block call. *base_loss (may be NULL) gets L(base). 0 or -1 (ar_error). */
int ar_autoscheme_measure(ar_model *m, const ar_scheme *options, int nopt, const unsigned char *candidate,
                          const int *base, int opt_rtn, const int32_t *ids, int nseq, int T, int batch_size,
                          double *score, double *base_loss, ar_as_progress_fn progress, void *pctx);

/* Settings of ar_autoscheme_run. */
typedef struct {
    double avg_bits;            /* target average bits per candidate weight */
    const ar_scheme *options;   /* presets; duplicates (same name) count once */
    int nopt;
    const char *const *shared;  /* ngroups groups, each "pat1,pat2,..." of names or regexes */
    int nshared;
    int ignore_scale_zp_bits;
    int quant_lm_head;          /* make an untied head a candidate (restricted to >= 6-bit options) */
    int batch_size;             /* <= 0: 8 */
    long max_states;            /* DP cap, <= 0 none */
    ar_as_progress_fn progress;
    void *pctx;
    int always_weight_term;     /* see ar_autoscheme_terms; 0: the spec's rule */
    int score;                  /* AR_AS_SCORE_*: 0 the spec's delta loss, or measured */
    int measured_opt_rtn;       /* measured: quantize with opt-RTN (imatrix of the samples) */
    int measured_rounds;        /* measured: <= 1 one pass; 2+ re-measure given the last pick */
} ar_autoscheme_opts;

/* What ar_autoscheme_run decided. Arrays have nslots entries. */
typedef struct {
    int nslots, nopt;
    ar_scheme *options;         /* the deduplicated options [nopt] */
    int *choice;                /* option index per slot, -1 for non-candidates */
    double *score;              /* [nslots, nopt] */
    int64_t *bits;              /* [nslots, nopt] */
    int64_t *params;            /* [nslots]: weights of the slot, 0 if not candidate */
    int64_t budget, used_bits, total_params;
    double min_avg, max_avg, avg_bits;  /* feasible range and achieved average */
    double dp_seconds, score_seconds;
    unsigned terms;             /* AR_AS_* the scores were made with */
} ar_autoscheme_result;

/* Whole AutoScheme over m with calibration ids [nseq, T]: candidates are the
 * block Linears that every quantizing option quantizes (spec §1.3 shape
 * rules) plus, with quant_lm_head, an untied head; the target must lie in
 * [min, max] of the options' uniform averages (within 1e-3 it snaps to the
 * end); budget = floor(params · avg_bits); shared groups are matched block by
 * block (exact name, regex search, or substring) and merged when they
 * overlap; BF16-like options (bits >= 16) score 0 without a pass. Returns 0,
 * or -1 with ar_error; free r with ar_autoscheme_result_free. */
int ar_autoscheme_run(ar_model *m, const int32_t *ids, int nseq, int T,
                      const ar_autoscheme_opts *o, ar_autoscheme_result *r);

void ar_autoscheme_result_free(ar_autoscheme_result *r);

/* Hugging Face name of slot s ("model.layers.3.mlp.up_proj", "lm_head") into
 * buf, from the block description of c (block_desc.h). Returns 0, or -1
 * (ar_error) when the description cannot be made. */
int ar_autoscheme_slot_name(const ar_config *c, int slot, char *buf, int size);

/* The decision as --layer_config JSON text (scheme.h's format): one entry per
 * candidate, its full name mapped to the chosen preset name. malloc'd; NULL
 * with ar_error when out of memory. */
char *ar_autoscheme_layer_config_json(const ar_config *c, const ar_autoscheme_result *r);

#endif
