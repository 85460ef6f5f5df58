/* tune.h — the block-by-block quantization pipeline (ar-tune(1)): from a
 * model folder and, optionally, calibration data to the stream of tuned
 * layers (tuned_stream.h).
 *
 * With calibration data, two activation chains run through the blocks: the
 * FP chain (each block's FP outputs are the next block's inputs and the
 * tuning targets) and the quantized chain (each tuned block, with its
 * quantized weights and activation quantizers, run on its own quantized
 * inputs; block 0 starts from the calibration activations, or for a GGUF
 * scheme tuned with SignRound from the quantized embedding). Per block, by
 * scheme and options:
 *  - RTN (no data, or iters 0 with disable_opt_rtn): min/max rounding;
 *  - opt-RTN (iters 0): the imatrix-weighted scale search of symmetric int
 *    layers (quant.h), with Σx² of each linear's inputs on the FP chain;
 *  - SignRound (iters > 0, signround.h), on the quantized chain's inputs
 *    unless disable_quanted_input, with SignRoundV2's searched initial scales
 *    and outlier-suppressed loss when enable_alg_ext, the last block on the
 *    LM-head loss when enable_lfq;
 *  - GGUF schemes (ar_scheme kind AR_SCHEME_GGUF): each linear in the ggml
 *    type the caller's gguf_type gives it, quantized by llama.cpp's
 *    imatrix-weighted search (gguf_mix.h), its rounding then tuned by
 *    SignRound with the scales frozen when iters > 0 (quant_ggml.h); with
 *    data also the token embedding and the output head.
 * NVFP4 layers of q/k/v and of gate/up share their smallest global scale;
 * static activation quantization (FP8_STATIC, NVFP4's input scale) takes the
 * calibration maximum of each linear's input (on the chain SignRound tunes
 * on). Block b's SignRound is seeded with seed + b; results are deterministic
 * for a given device and thread count.
 *
 * Checkpoints (checkpoint.h): after each block its records, the chains and a
 * manifest of every setting that determines the output; a rerun with the same
 * settings replays the finished blocks and goes on with the saved chains, and
 * writes the same bytes as an uninterrupted run. */
#ifndef AR_TUNE_H
#define AR_TUNE_H
#include "calib_stream.h"
#include "config.h"
#include "ggml_blocks.h"
#include "scheme.h"
#include "reduce.h"
#include "signround.h"
#include "stream.h"

/* Things worth a line to the user, reported through ar_tune_progress.event. */
typedef enum {
    AR_TUNE_EV_LAYER_CONFIG,  /* the calibration stream's layer config is used: a = its entries */
    AR_TUNE_EV_DEVICE,        /* the work runs on text (ar_device_describe) */
    AR_TUNE_EV_RESUME,        /* a checkpoint resumes at block a (0-based) of b; a == b: all finished */
    AR_TUNE_EV_LFQ_ON_CPU,    /* block a of b tunes on the CPU: the LM-head loss has no GPU version */
    AR_TUNE_EV_GPU_TRANSFERS, /* after the last block on a GPU: a = block-weight uploads, b = blocks run,
                                 text = the transfer ledger's line (ar_xfer_summary) */
    AR_TUNE_EV_SPILL,         /* the chains exceed mem_budget_mib: a = MiB of each chain, b = chains,
                                 text = the spill directory */
    AR_TUNE_EV_UNROUTED_EXPERTS, /* MoE block a: b experts got no token in any of SignRound's forwards
                                    of the block, so they keep their initial rounding (RTN, as AutoRound
                                    does); text = their numbers */
} ar_tune_event;

/* Progress callbacks; any may be NULL. */
typedef struct {
    void *ctx;
    /* After SignRound iteration it of iters of block `block` (0-based) of nblocks. */
    void (*iter)(void *ctx, int block, int nblocks, int it, int iters, double loss, double best_loss);
    /* Block `block` is written; rep: its SignRound report, NULL when it had no SignRound. */
    void (*block_done)(void *ctx, int block, int nblocks, const ar_signround_report *rep);
    /* An event; a, b and text as the event says (text NULL when unused). */
    void (*event)(void *ctx, ar_tune_event ev, int a, int b, const char *text);
} ar_tune_progress;

/* The ggml type of HF tensor hf_name ("model.layers.3.mlp.down_proj.weight",
 * "model.embed_tokens.weight", "lm_head.weight": 2-D, rows of cols elements)
 * of a model of config c in the GGUF mix being made; imatrix: 1 when
 * importance matrices are used (there is calibration data). */
typedef ar_ggml_type (*ar_tune_gguf_type_fn)(void *ctx, const ar_config *c, const char *hf_name, int64_t cols,
                                             int imatrix);

/* Every knob of a run; ar_tune_defaults fills the values in brackets. */
typedef struct {
    ar_scheme scheme;           /* the default scheme of every linear [W4A16] */
    const char *layer_config;   /* a layer config file (scheme.h) giving layers other schemes; it wins over
                                   the calibration stream's; NULL: the stream's, if any [NULL] */
    /* with calibration data */
    int iters;                  /* SignRound iterations per block; 0: opt-RTN [200] */
    double lr;                  /* SignSGD learning rate; 0: ar_scheme_default_lr [0] */
    double minmax_lr;           /* of the range multipliers α/β; 0: lr [0] */
    int batch_size;             /* samples per forward [8] */
    int grad_accum;             /* batches per SignRound step [1] */
    int micro_batch;            /* CPU: samples per forward and per SignRound forward/backward (a
                                   micro-batch: signround.h's micro_batch; the gradients of a batch add up
                                   chunk by chunk); 0: batch_size, or with mem_budget_mib the most
                                   samples whose training buffers fit in it (tn_chunk), at least 1;
                                   >= batch_size: whole batches whatever the budget.
                                   META records it ("micro_batch") when below batch_size [0] */
    int dp_chunk;               /* 0: each SignRound step is one chunk; else chunks of this many samples
                                   summed over reduce.h's fixed tree (signround.h), what ranks split;
                                   1 under ranks when 0 [0] */
    /* NULL: one process; else this process is rank reduce->rank of reduce->size that split SignRound's
     * chunks (reduce.h; CPU only): every rank runs the whole pipeline on all samples, tunes its share of
     * each iteration's chunks and writes the same bytes as one process; a checkpoint is rank 0's, which
     * hands the others its chains on resume. [NULL] */
    ar_reducer *reduce;
    int expert_parallel;        /* 1 with reduce: the ranks split each MoE block's routed experts, not the
                                   chunks (signround.h's expert_parallel; docs/mpi.md) [0] */
    long seed;                  /* block b is tuned with seed + b [42] */
    int disable_minmax;         /* 1: no α/β (min/max) tuning [0] */
    int not_use_best;           /* 1: the last iteration's parameters instead of the best [0] */
    int disable_quanted_input;  /* 1: SignRound on the FP chain's inputs [0] */
    int disable_opt_rtn;        /* 1: iters 0 is plain RTN [0] */
    int enable_alg_ext;         /* 1: SignRoundV2 [0] */
    int enable_lfq;             /* 1: the last block tuned on the LM-head loss (CPU) [0] */
    int lfq_kl;                 /* with enable_lfq, 1: that loss is the KL from the FP model's predictions [0] */
    int static_kv_fp8;          /* 1: static FP8 KV-cache scales (AutoRound's static_kv_dtype "fp8",
                                   quant_kv.h): per block, max |K| (after RoPE) and max |V| over all
                                   samples of the chain the next block reads (the quantized chain after
                                   SignRound with quanted input, else the FP chain), written as
                                   self_attn.k_scale / v_scale records; needs data, not GGUF [0] */
    /* where */
    int device;                 /* AR_DEVICE_CPU or a CUDA device (device.h); the CPU without data [CPU] */
    int device_auto;            /* device was detected, not asked for: a family the GPU path lacks
                                   (Gemma) then runs on the CPU instead of failing [0] */
    int low_gpu_mem;            /* 1: GPU tuning keeps the block caches in host memory [0] */
    double gpu_chain_budget_mib; /* device memory the chains (the cached samples' activations) may keep
                                   across blocks, MiB; 0: the device's free memory less one block's need;
                                   < 0: none, they stream through page-locked host memory (residency.h) [0] */
    double mem_budget_mib;      /* host memory the calibration chains (FP input, FP output and quantized
                                   input, [n, seqlen, hidden] bf16 each) may hold, MiB; when they need more
                                   they live in files under spill_dir (spill.h, CPU only; the output is the
                                   same bytes) and calib's activations are freed (calib->hidden NULL);
                                   0: no limit [0] */
    const char *spill_dir;      /* where those files go [P_tmpdir, "/tmp"] */
    int bench_chain_samples;    /* benchmarks only: the chain forwards run the first K samples, the rest of
                                   each chain keeps zeros (the FP chain's input: the calibration input), so
                                   SignRound draws from all n samples at the memory of an n-sample run while
                                   the 2·n sample forwards per block shrink to 2·K; not a quantization
                                   anyone should use: META records "bench_chain_samples"; 0: all [0] */
    int amp;                    /* 1: the CPU block forwards and SignRound's forward/backward run their
                                   linears' GEMMs in bf16 (gemm.h; AutoRound's amp, autocast to bf16)
                                   where this build has oneDNN and the CPU AVX512-BF16 or AMX, else f32;
                                   0: always f32, the reference. META's "amp" says what ran [1] */
    long threads;               /* OpenMP/OpenBLAS threads, 0: ar_set_threads's default (runtime.h) [0] */
    /* block ranges (docs/parallel.md): only blocks first_block..last_block are tuned and written; the
       blocks before first_block from calib->block on only run their FP forward (as the FP chain of a
       whole run), so first_block > 0 with data needs iters 0 or disable_quanted_input (blocks then
       depend on the FP model alone). last_block >= 0 also puts the range into META ("blocks",
       "n_layers", and what else the bytes depend on: "threads", "calibration_digest",
       "layer_config_digest") so that
       ranges can be merged (tuned_merge.h) [0, -1: to the last block, META as a whole run's] */
    int first_block, last_block;
    const char *checkpoint;     /* checkpoint directory, NULL: none [NULL] */
    /* GGUF schemes: the type of each tensor (required for them) [NULL] */
    ar_tune_gguf_type_fn gguf_type;
    void *gguf_ctx;
    const ar_tune_progress *progress;   /* [NULL] */
} ar_tune_opts;

void ar_tune_defaults(ar_tune_opts *o);

/* ar_tune_run's failures. */
enum {
    AR_TUNE_FAILED = -1,            /* ar_error says why */
    AR_TUNE_CHECKPOINT_OTHER = -2,  /* the checkpoint was made with other settings; ar_error names the first
                                       that differs, e.g. "ck/manifest.json: iters differs (checkpoint 10, this
                                       run 11)" */
};

/* Quantize the model in folder model (opened here) block by block with
 * calibration data calib (NULL: RTN without data; its first n samples are
 * used, its activations serve as the FP chain's working memory and are
 * overwritten) and write META and the tuned layers to out (not closed).
 * The combinations ar-tune refuses as usage errors are the caller's to check
 * (enable_alg_ext for int / MX / NV / GGUF schemes only, enable_lfq with
 * iters > 0 and data); outside them those options change nothing. 0, or
 * AR_TUNE_FAILED / AR_TUNE_CHECKPOINT_OTHER with ar_error. */
int ar_tune_run(const ar_tune_opts *o, const char *model, ar_calib_data *calib, ar_stream_writer *out);

/* The FP inputs of block upto: calib's activations (the inputs of block
 * calib->block, 0 for ar-calib's) run through the FP model's blocks
 * calib->block..upto-1 in place, with the forwards ar_tune_run's FP chain
 * runs under o (its batch_size, amp, threads and device; nothing is tuned),
 * so that a run of blocks upto.. on the result sees the bytes a whole run's
 * block upto sees. Sets calib->block to upto and calib->fp_* to the
 * settings that ran. 0 or AR_TUNE_FAILED with ar_error ("the model has 6
 * blocks (0-5); block 7 has no inputs"). */
int ar_tune_fp_inputs(const ar_tune_opts *o, const char *model, ar_calib_data *calib, int upto);

#endif
