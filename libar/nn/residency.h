/* residency.h — what a GPU tuning run keeps on the device between its
 * steps, and the ledger of what it copies: plain host code (no CUDA), so the
 * decisions and the bookkeeping are the same, and unit-tested, in every
 * build. The copies themselves go through a table of transfer functions
 * (ar_xfer_ops): the GPU's in device.c (ar_gpu_residency_open), a mock's in
 * the unit test.
 *
 * Per block of a tuning run (tune.h) three GPU steps need the block's
 * weights: the FP forward of the cached samples (the FP chain), SignRound and
 * the forward of the tuned block (the quantized chain). ar_res_weights hands
 * all three the one device copy uploaded at the block's first ask. The
 * chains (bf16 [n, T, C] host arrays) get device mirrors that stay valid
 * across blocks when the run decided they fit (ar_chains_fit); each mirror
 * knows which side holds the current contents, and host code that reads a
 * chain calls ar_res_host first (a download only when the device wrote it
 * last), host code that writes one calls ar_res_host_wrote. When the chains
 * do not fit they stream: no mirrors, the host arrays are page-locked once
 * (ops.pin) and the GPU steps copy batches as they need them.
 *
 * Copies per block of a SignRound block on the GPU (W: the block's weights,
 * biases and norms in f32; S: one chain, n·T·C bf16; docs/gpu-residency.md
 * has the whole map). Before this residency: W uploaded three times (the FP
 * forward, the tuner, the quantized forward — the last with the tuned ŵ in
 * place of the quantized linears), chains 4 S up (x_fp, then the tuner's
 * x_in and y whole, then x_in again) and 2 S down (y, x_q). Now: W once
 * (AR_XFER_WEIGHTS), the tuned ŵ of the quantized linears once
 * (AR_XFER_TUNED); resident chains: S up once per run (the calibration
 * activations) and nothing down unless host code reads a chain; streamed
 * chains: 4 S up and 2 S down as before, through page-locked memory. */
#ifndef AR_RESIDENCY_H
#define AR_RESIDENCY_H
#include "block.h"
#include <stddef.h>
#include <stdint.h>

/* What a copy carries. */
typedef enum {
    AR_XFER_WEIGHTS, /* a block's weights, biases and norms as loaded (one upload per block) */
    AR_XFER_TUNED,   /* the tuned (quantized) weights of a block's linears, for the quantized chain */
    AR_XFER_CHAIN,   /* activations of the calibration samples (chains, caches, their batches) */
    AR_XFER_OTHER,   /* masks, initial tunables and scales, tuned parameters, losses, tables */
    AR_XFER_KINDS
} ar_xfer_kind;

/* Counts and bytes of host-to-device (up) and device-to-host (down) copies. */
typedef struct {
    long n_up[AR_XFER_KINDS], n_down[AR_XFER_KINDS];
    uint64_t up[AR_XFER_KINDS], down[AR_XFER_KINDS];
} ar_xfer_ledger;

/* Count one copy of bytes (down: 1 device to host); l NULL: nothing. */
void ar_xfer_note(ar_xfer_ledger *l, ar_xfer_kind kind, int down, size_t bytes);

/* One line for the user: "16 weight uploads (48.0 MiB), 0 tuned-weight
 * uploads, chains resident: 1 upload (8.0 MiB) 0 downloads, other: ..."
 * (resident: the chains' residency decision). Truncated to cap. */
void ar_xfer_summary(const ar_xfer_ledger *l, int resident, char *buf, size_t cap);

/* The residency decision: 1 when chain_bytes (every chain's device mirror)
 * may stay on the device, 0 when the chains stream. low_mem (AutoRound's
 * --low_gpu_mem_usage) streams; budget_mib < 0 streams; otherwise the chains
 * must fit in free_bytes less block_need (what one block's GPU steps
 * allocate besides the chains) and, when budget_mib > 0, in budget_mib MiB. */
int ar_chains_fit(size_t chain_bytes, size_t free_bytes, size_t block_need, double budget_mib, int low_mem);

/* The transfers a residency makes; ctx is passed back. alloc gives zeroed
 * device memory or NULL; upload/download/pin give 0 or -1; weights_up
 * uploads a whole block (ar_block_weights, shapes from the ops' own
 * context) and returns its device handle (NULL on failure) and byte count. */
typedef struct {
    void *ctx;
    void *(*alloc)(void *ctx, size_t bytes);
    void (*release)(void *ctx, void *dev);
    int (*upload)(void *ctx, void *dev, const void *host, size_t bytes);
    int (*download)(void *ctx, void *host, const void *dev, size_t bytes);
    int (*pin)(void *ctx, const void *host, size_t bytes);
    void (*unpin)(void *ctx, const void *host);
    void *(*weights_up)(void *ctx, const ar_block_weights *w, size_t *bytes);
    void (*weights_free)(void *ctx, void *dev_weights);
} ar_xfer_ops;

/* A chain's device mirror (dev NULL: streaming, or not yet allocated). */
typedef struct {
    const void *host;
    void *dev;
    size_t bytes;
    int host_ok, dev_ok;  /* which sides hold the current contents */
    int pinned;           /* streaming: 1 ops.pin succeeded on host, -1 it failed, 0 not tried */
} ar_res_mirror;

enum { AR_RES_MIRRORS = 4 };

/* One run's residency: the current block's device weights, the chains'
 * mirrors and the ledger. Fields are read-only outside residency.c. */
typedef struct {
    ar_xfer_ops ops;
    ar_xfer_ledger led;
    int resident;                    /* the decision: chains stay on the device */
    ar_res_mirror m[AR_RES_MIRRORS];
    int block;                       /* the block ar_res_next_block named, -1 before */
    ar_block_weights host_w;         /* the host tensors dev_w was uploaded from (pointers only, */
    float *host_wp[AR_NLINEAR];      /* copied into these arrays: the caller's may change) */
    float *host_bp[AR_NLINEAR];
    void *dev_w;                     /* its device copy, NULL until asked for */
    long blocks;                     /* blocks named so far */
} ar_residency;

void ar_res_init(ar_residency *r, const ar_xfer_ops *ops, int resident);
/* Free every device copy and unpin (no downloads: read what you need first). */
void ar_res_release(ar_residency *r);

/* The run moves on to block `layer` (-1: past the last): the previous
 * block's device weights go. r NULL: nothing. */
void ar_res_next_block(ar_residency *r, int layer);

/* The device copy of the current block's weights, uploaded at the block's
 * first ask (from w). differs (may be NULL) gets, per linear, 1 where w's
 * weight tensor is not the one uploaded (the quantized chain's tuned
 * weights): the caller supplies those itself. When w's biases or norms are
 * other tensors than the uploaded ones, w is another block and replaces it
 * (a second upload, counted). r NULL or failure: NULL (ar_error set by the
 * ops). */
void *ar_res_weights(ar_residency *r, const ar_block_weights *w, int differs[AR_NLINEAR]);

/* The device mirror of the host chain array host (bytes long): when the
 * chains are resident, allocated at its first ask and, with need, made
 * current (uploaded when the host wrote it last); NULL when they stream (the
 * array then gets page-locked once), when r is NULL, or when no room is
 * left: the caller copies batches from the host array, after ar_res_host. */
void *ar_res_chain(ar_residency *r, const void *host, size_t bytes, int need);

/* The device wrote host's mirror: the host array is stale. */
void ar_res_dev_wrote(ar_residency *r, const void *host);
/* Make the host array current (a download when the device wrote it last).
 * 0 or -1 (ar_error). r NULL or no mirror: 0. */
int ar_res_host(ar_residency *r, const void *host);
/* The host wrote host: its device mirror is stale. */
void ar_res_host_wrote(ar_residency *r, const void *host);

/* Count a copy made outside the residency (r NULL: nothing). */
void ar_res_note(ar_residency *r, ar_xfer_kind kind, int down, size_t bytes);

#endif
