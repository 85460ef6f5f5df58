/* tune_impl.h — internals shared by tune.c (the run), tune_chain.c (what
 * every block shares: progress, the chains, SignRound), tune_block.c (int /
 * MX / NV / FP8 blocks), tune_gguf.c (GGUF blocks) and tune_ckpt.c
 * (checkpoints). tune.c uses the others, and they use tune_chain.c and
 * nothing else of this list, so no two files call each other. Not a public
 * header: callers use tune.h. */
#ifndef AR_TUNE_IMPL_H
#define AR_TUNE_IMPL_H
#include "block.h"
#include "block_desc.h"
#include "checkpoint.h"
#include "model.h"
#include "moe.h"
#include "quant.h"
#include "residency.h"
#include "signround.h"
#include "tune.h"
#include <limits.h>
#include <stdint.h>

/* Buffers a block needs, made by the first block that needs them and kept
 * for the next ones (sized by the block description; freed with the run by
 * tn_bufs_free), so that the allocator does not return their pages to the
 * system after each block and fault them in again for the next. */
typedef struct {
    ar_block_work fws;          /* tn_forward_all's inference workspace, batch_size x T */
    int fws_ready, fws_actq;    /* fws made; its activation quantizers set */
    float *fx, *fy;             /* tn_forward_all's batch in / out [batch_size, T, C] */
    ar_signround_cache *sr;     /* SignRound's tuner buffers (signround.h) */
    ar_block_weights wq;        /* tn_signround_block's view of the tuned block (pointer arrays) */
    int plan_ready;             /* tn_block's plan, schemes, maxima and outputs allocated */
    ar_block_plan plan;
    ar_scheme *schemes;         /* [nlinear] */
    float *act_max;             /* [nlinear] */
    float **imat, **init;       /* [nlinear] pointer arrays of tune_with_data */
    ar_quant_out *out;          /* [nlinear], buffers made as linears are planned */
    size_t *out_ng;             /* [nlinear] the groups out[i].scale / zp hold */
} tn_bufs;
void tn_bufs_free(tn_bufs *b);

/* One run of ar_tune_run. */
typedef struct {
    const ar_tune_opts *o;
    ar_model *m;
    const ar_config *c;         /* the model's config; in the block loop layer_c, the block's */
    ar_config layer_c;          /* ar_config_for_layer of the block being tuned */
    ar_block_desc bd;           /* the block's linears: names, shapes, inputs */
    ar_calib_data *d;           /* NULL: RTN without data */
    int dev;                    /* where block forwards and SignRound run: AR_DEVICE_CPU or a GPU */
    ar_residency *gpu;          /* on a GPU: the block's device weights, the chains' device mirrors and the
                                   transfer ledger (residency.h); NULL on the CPU. Host code reading a chain
                                   array calls ar_res_host first, host code writing one ar_res_host_wrote */
    ar_layer_config *lc;        /* per-layer schemes, or NULL */
    uint16_t *x_fp, *x_q, *y;   /* [n, T, C] bf16: FP chain input, quantized chain input, FP outputs */
    uint16_t *own_fp;           /* the chain buffer allocated here (the other is d->hidden) */
    int spill;                  /* the chains live in spill files (o->mem_budget_mib, spill.h) */
    uint16_t *spill_fp;         /* with spill: the FP chain's second buffer (d->hidden's copy) */
    uint8_t *mask;              /* [n, T] loss mask */
    ar_stream_writer *w;        /* where the block's records go (the output, or the checkpoint's block file) */
    ar_checkpoint *ck;          /* NULL: no checkpoint */
    char model_abs[PATH_MAX];   /* the model folder's absolute path */
    float kv_amax[2];           /* static_kv_fp8: this block's max |K|, max |V| */
    float *kv_obs;              /* kv_amax while a forward observes K/V (tn_forward_all), else NULL */
    tn_bufs *buf;               /* block buffers kept across blocks (never NULL during run_blocks) */
    ar_gemm gemm;               /* the CPU linears' GEMMs: bf16 when o->amp and supported, else f32 */
    ar_gemm *amp;               /* &gemm when it is bf16 (what block work spaces take), else NULL */
    long *rows;                 /* [bd.nlinear] or NULL: tn_forward_all and SignRound's forwards add the rows
                                   each linear's input had (MoE experts: their routed rows) */
    ar_moe_ep *ep;              /* expert parallel (o->expert_parallel under ranks), else NULL: this rank
                                   holds, computes and tunes its share of each block's routed experts */
} tn_run;

/* Whether linear i of the current block is another rank's routed expert
 * (expert parallel): its FP weight is not loaded, its output not made here. */
int tn_ep_other(const tn_run *r, int i);

/* Expert parallel, routed expert linear i (every rank calls it, in the same
 * order): its owner broadcasts its output mine (ŵ, codes, scales, zero
 * points and, NVFP4, the global scale *gs); the other ranks receive it into
 * o (allocated here: the caller frees its buffers) and *gs. *use: the
 * output to write. 0 or -1. */
int tn_ep_share(const tn_run *r, int i, const ar_quant_spec *qs, const ar_quant_out *mine, ar_quant_out *o,
                float *gs, const ar_quant_out **use);

/* ---- tune_chain.c ------------------------------------------------------------ */

/* SignRound's per-iteration progress for block `layer`, as ar_signround_progress. */
typedef struct {
    const tn_run *r;
    int layer;
} tn_iter_ctx;
void tn_on_iter(void *ctx, int it, int iters, double loss, double best);

/* Report an event / a finished block through o->progress. */
void tn_event(const tn_run *r, ar_tune_event ev, int a, int b, const char *text);
void tn_block_done(const tn_run *r, int layer, const ar_signround_report *rep);

/* A chain array [n, T, C] bf16: in a spill file when r->spill, else
 * malloc'd; NULL with ar_error. tn_chain_free frees either kind. */
uint16_t *tn_chain_alloc(const tn_run *r);
void tn_chain_free(void *p);

/* Samples per block forward and per SignRound forward/backward (o->micro_batch,
 * or as o->mem_budget_mib allows; batch_size on a GPU), ≤ min(batch_size, n). */
int tn_chunk(const tn_run *r);

/* Run block weights w over all n samples of src (bf16 [n, T, C]) into dst
 * (NULL: outputs dropped), tn_chunk samples at a time; with r->kv_obs, fold max |K|
 * and max |V| into it (CPU); with imat (r->bd.nlinear entries, NULL ones
 * skipped), accumulate each linear's input Σx² too; with amax
 * [r->bd.nlinear], the running max |x| of each linear's input; with actq, the linears' inputs quantized as that plan says (the
 * statistics see them before). On the GPU when r->dev is one and only dst
 * is asked for. 0 or -1. */
int tn_forward_all(const tn_run *r, const ar_block_weights *w, const uint16_t *src, uint16_t *dst,
                   float *const *imat, float *amax, const ar_block_plan *actq);

/* SignRound over block `layer` (r->y holds its FP outputs): tune the planned
 * linears into out, then (unless disabled) run the quantized block for the
 * next block's quantized-chain input (observing K/V into r->kv_amax with
 * static_kv_fp8). minmax: α/β tuning; outlier:
 * SignRoundV2's loss. rep receives the report. 0 or -1. */
int tn_signround_block(tn_run *r, int layer, const ar_block_weights *wfp, const ar_block_plan *plan, int minmax,
                       int outlier, const ar_quant_out *out, ar_signround_report *rep);

/* ---- tune_block.c ------------------------------------------------------------ */

/* Block `layer` of an int / MX / NV / FP8 scheme: quantize, write its
 * records, advance the chains. 0 or -1. */
int tn_block(tn_run *r, int layer, const ar_block_weights *wfp);

/* ---- tune_gguf.c ------------------------------------------------------------- */

/* Block `layer` of a GGUF scheme (and, with data, the embedding before block
 * 0 and the head after the last). 0 or -1. */
int tn_block_gguf(tn_run *r, int layer, const ar_block_weights *wfp);

/* ---- tune_ckpt.c ------------------------------------------------------------- */

/* Open o->checkpoint for this run (meta: the output's META text). 0,
 * AR_TUNE_FAILED or AR_TUNE_CHECKPOINT_OTHER. */
int tn_ckpt_open(tn_run *r, const char *meta);

/* Replay the finished blocks into out and restore the chains; the first block
 * still to tune in *first. 0 or -1. */
int tn_ckpt_resume(tn_run *r, ar_stream_writer *out, int *first);

/* Block `layer` goes to the checkpoint first: the writer for its records
 * (NULL with ar_error), then, once they are written, tn_ckpt_block_end
 * closes it, commits the block (records, chains, manifest) and copies its
 * records to out. 0 or -1. */
ar_stream_writer *tn_ckpt_block_begin(tn_run *r, int layer);
int tn_ckpt_block_end(tn_run *r, int layer, ar_stream_writer *w, ar_stream_writer *out);

#endif
