/* test_residency.c — the GPU run's residency (residency.h) on any machine:
 * the fits-or-streams decision against hand-computed cases, the ledger,
 * and a tuning run's sequence of residency calls (tune_chain.c's FP forward,
 * signround_cuda.c's tuner, the quantized chain's forward, the FP chain's
 * swap) over a mock of the transfer functions whose "device" is host memory
 * and whose "kernel" is a known map. Checked: one weight upload per block
 * however often a block asks, the tuned linears reported as differing, the
 * chains uploaded once per run when resident and never when streaming, and
 * the host arrays, when read back, equal to the same map run on the host. */
#include "residency.h"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((size_t)1 << 20)

Test(residency, decision)
{
    /* chains 100 MiB, free 1000 MiB, block needs 800: 200 left, fits */
    cr_assert_eq(ar_chains_fit(100 * MIB, 1000 * MIB, 800 * MIB, 0, 0), 1);
    /* exactly the room left fits, one byte more does not */
    cr_assert_eq(ar_chains_fit(200 * MIB, 1000 * MIB, 800 * MIB, 0, 0), 1);
    cr_assert_eq(ar_chains_fit(200 * MIB + 1, 1000 * MIB, 800 * MIB, 0, 0), 0);
    /* the block alone does not fit: stream (no wrap-around of free - need) */
    cr_assert_eq(ar_chains_fit(1, 100 * MIB, 800 * MIB, 0, 0), 0);
    /* a budget caps below the room left, never above it */
    cr_assert_eq(ar_chains_fit(100 * MIB, 1000 * MIB, 800 * MIB, 99, 0), 0);
    cr_assert_eq(ar_chains_fit(100 * MIB, 1000 * MIB, 800 * MIB, 100, 0), 1);
    cr_assert_eq(ar_chains_fit(300 * MIB, 1000 * MIB, 800 * MIB, 1e6, 0), 0);
    /* a negative budget and --low_gpu_mem_usage stream whatever the room */
    cr_assert_eq(ar_chains_fit(1, 1000 * MIB, 0, -1, 0), 0);
    cr_assert_eq(ar_chains_fit(1, 1000 * MIB, 0, 0, 1), 0);
    cr_assert_eq(ar_chains_fit(0, 0, 0, 0, 0), 1);
}

Test(residency, ledger)
{
    ar_xfer_ledger l;
    memset(&l, 0, sizeof l);
    ar_xfer_note(&l, AR_XFER_WEIGHTS, 0, 3 * MIB);
    ar_xfer_note(&l, AR_XFER_WEIGHTS, 0, MIB);
    ar_xfer_note(&l, AR_XFER_CHAIN, 1, MIB / 2);
    ar_xfer_note(&l, AR_XFER_KINDS, 0, 99); /* not a kind: ignored */
    ar_xfer_note(NULL, AR_XFER_OTHER, 0, 1);
    cr_assert_eq(l.n_up[AR_XFER_WEIGHTS], 2);
    cr_assert_eq(l.up[AR_XFER_WEIGHTS], 4 * MIB);
    cr_assert_eq(l.n_down[AR_XFER_CHAIN], 1);
    cr_assert_eq(l.down[AR_XFER_CHAIN], MIB / 2);
    cr_assert_eq(l.n_up[AR_XFER_OTHER] + l.n_up[AR_XFER_TUNED] + l.n_up[AR_XFER_CHAIN], 0);
    char buf[512];
    ar_xfer_summary(&l, 1, buf, sizeof buf);
    cr_assert(strstr(buf, "2 weight uploads (4.0 MiB)"), "%s", buf);
    cr_assert(strstr(buf, "chains resident: 0 uploads (0.0 MiB) 1 downloads (0.5 MiB)"), "%s", buf);
    ar_xfer_summary(&l, 0, buf, sizeof buf);
    cr_assert(strstr(buf, "chains streamed"), "%s", buf);
    ar_xfer_summary(&l, 0, buf, 8); /* truncated, terminated */
    cr_assert_eq(strlen(buf), 7);
}

/* ---- a mock device --------------------------------------------------------- */

typedef struct {
    long allocs, frees, uploads, downloads, pins, unpins, wups, wfrees;
    long fail_alloc_after;   /* allocations that succeed before the rest fail (-1: never) */
    int fail_pin;            /* 1: page-locking fails */
    size_t wbytes;           /* what a block's weight upload reports */
} mock;

static void *m_alloc(void *ctx, size_t b)
{
    mock *m = ctx;
    if (m->fail_alloc_after >= 0 && m->allocs >= m->fail_alloc_after) return NULL;
    m->allocs++;
    return calloc(1, b ? b : 1);
}
static void m_release(void *ctx, void *d) { ((mock *)ctx)->frees++, free(d); }
static int m_upload(void *ctx, void *d, const void *h, size_t b) { ((mock *)ctx)->uploads++, memcpy(d, h, b); return 0; }
static int m_download(void *ctx, void *h, const void *d, size_t b) { ((mock *)ctx)->downloads++, memcpy(h, d, b); return 0; }
static int m_pin(void *ctx, const void *h, size_t b)
{
    (void)h, (void)b;
    ((mock *)ctx)->pins++;
    return ((mock *)ctx)->fail_pin ? -1 : 0;
}
static void m_unpin(void *ctx, const void *h) { (void)h; ((mock *)ctx)->unpins++; }
/* the device weights: a copy of the block's scale, w[0][0] */
static void *m_wup(void *ctx, const ar_block_weights *w, size_t *bytes)
{
    mock *m = ctx;
    m->wups++;
    float *d = malloc(sizeof *d);
    *d = w->w[0][0];
    *bytes = m->wbytes;
    return d;
}
static void m_wfree(void *ctx, void *d) { ((mock *)ctx)->wfrees++, free(d); }

static ar_xfer_ops mock_ops(mock *m)
{
    ar_xfer_ops o = {m, m_alloc, m_release, m_upload, m_download, m_pin, m_unpin, m_wup, m_wfree};
    return o;
}

enum { N = 64 };  /* elements of a chain array (uint16_t) */

/* The "block": y = x * scale + layer, modulo 2^16, elementwise. */
static void block_map(uint16_t *dst, const uint16_t *src, float scale, int layer)
{
    for (int i = 0; i < N; i++) dst[i] = (uint16_t)((unsigned)src[i] * (unsigned)scale + (unsigned)layer);
}

/* One forward as signround_cuda.c's ar_block_forward_samples_cuda makes it:
 * device weights from the residency (tuned linears uploaded separately),
 * mirrors when resident, else the host arrays. */
static void forward(ar_residency *r, const ar_block_weights *w, const float *tuned_scale, const uint16_t *src,
                    uint16_t *dst, int layer)
{
    int differs[AR_NLINEAR];
    float *dw = ar_res_weights(r, w, differs);
    cr_assert_not_null(dw);
    float scale = *dw;
    if (differs[0]) {
        ar_res_note(r, AR_XFER_TUNED, 0, sizeof(float));
        scale = *tuned_scale;
    }
    uint16_t *ds = ar_res_chain(r, src, N * 2, 1), *dd = ar_res_chain(r, dst, N * 2, 0);
    if (ds && dd) {
        uint16_t tmp[N];
        memcpy(tmp, ds, sizeof tmp); /* src may be dst */
        block_map(dd, tmp, scale, layer);
        ar_res_dev_wrote(r, dst);
    } else {
        cr_assert_eq(ar_res_host(r, src), 0);
        uint16_t tmp[N];
        memcpy(tmp, src, sizeof tmp);
        block_map(dst, tmp, scale, layer);
        ar_res_host_wrote(r, dst);
    }
}

/* The tuner's asks (signround_cuda.c gtuner_init/upload_cache). */
static void tune(ar_residency *r, const ar_block_weights *w, const uint16_t *x_in, const uint16_t *y)
{
    cr_assert_not_null(ar_res_weights(r, w, NULL));
    const uint16_t *dx = r->resident ? ar_res_chain(r, x_in, N * 2, 1) : NULL;
    const uint16_t *dy = dx ? ar_res_chain(r, y, N * 2, 1) : NULL;
    if (!dx || !dy) {
        /* the caches come from the host arrays */
        cr_assert_eq(ar_res_host(r, x_in), 0);
        cr_assert_eq(ar_res_host(r, y), 0);
    }
}

typedef struct {
    uint16_t a[N], b[N], q[N];     /* calibration (x_fp's first buffer), y, x_q */
    uint16_t ref_fp[N], ref_q[N];  /* the same chains on the host */
} chains;

/* nblocks blocks as tune_block.c + tune_chain.c run them on a GPU: FP
 * forward x_fp -> y, SignRound on (x_q or x_fp, y), the quantized forward
 * xin -> x_q with linear 0 tuned, then the FP chain's swap. */
static void run(ar_residency *r, chains *c, int nblocks)
{
    uint16_t *x_fp = c->a, *y = c->b, *x_q = NULL;
    for (int i = 0; i < N; i++) c->a[i] = c->ref_fp[i] = (uint16_t)(i * 7 + 1);
    int have_q = 0;
    for (int layer = 0; layer < nblocks; layer++) {
        float wfp_scale = 3.0f + layer, tuned_scale = 5.0f + layer, zero = 0;
        float *wfp0 = &wfp_scale;
        ar_block_weights w;
        cr_assert_eq(ar_block_weights_init(&w, AR_NLINEAR), 0);
        for (int i = 0; i < AR_NLINEAR; i++) w.w[i] = i ? &zero : wfp0;
        w.attn_norm = w.mlp_norm = &zero;
        ar_res_next_block(r, layer);
        forward(r, &w, NULL, x_fp, y, layer);
        const uint16_t *xin = x_q ? x_q : x_fp;
        tune(r, &w, xin, y);
        ar_block_weights wq;
        cr_assert_eq(ar_block_weights_view(&wq, &w), 0);
        wq.w[0] = &tuned_scale;
        x_q = c->q;
        forward(r, &wq, &tuned_scale, xin, x_q, layer);
        uint16_t *t = x_fp; x_fp = y; y = t;
        /* the host reference */
        uint16_t nq[N];
        block_map(nq, have_q ? c->ref_q : c->ref_fp, tuned_scale, layer);
        block_map(c->ref_fp, c->ref_fp, wfp_scale, layer);
        memcpy(c->ref_q, nq, sizeof nq);
        have_q = 1;
        ar_block_weights_release(&wq);
        ar_block_weights_release(&w);
    }
    ar_res_next_block(r, -1);
    /* what the host code reads at the end (a checkpoint, GGUF's output head) */
    cr_assert_eq(ar_res_host(r, x_fp), 0);
    cr_assert_eq(ar_res_host(r, x_q), 0);
    cr_assert_arr_eq(x_fp, c->ref_fp, sizeof c->ref_fp);
    cr_assert_arr_eq(x_q, c->ref_q, sizeof c->ref_q);
}

Test(residency, resident_run_uploads_each_block_once)
{
    mock m = {0};
    m.fail_alloc_after = -1, m.wbytes = 1000;
    ar_xfer_ops ops = mock_ops(&m);
    ar_residency r;
    ar_res_init(&r, &ops, 1);
    chains c;
    run(&r, &c, 4);
    /* three asks per block, one upload each */
    cr_assert_eq(m.wups, 4);
    cr_assert_eq(r.led.n_up[AR_XFER_WEIGHTS], 4);
    cr_assert_eq(r.led.up[AR_XFER_WEIGHTS], 4000);
    cr_assert_eq(m.wfrees, 4, "each block's weights freed when the next comes");
    cr_assert_eq(r.led.n_up[AR_XFER_TUNED], 4);
    /* the calibration activations go up once; two downloads at the end */
    cr_assert_eq(r.led.n_up[AR_XFER_CHAIN], 1);
    cr_assert_eq(r.led.up[AR_XFER_CHAIN], N * 2);
    cr_assert_eq(r.led.n_down[AR_XFER_CHAIN], 2);
    cr_assert_eq(m.uploads, 1);
    cr_assert_eq(m.downloads, 2);
    cr_assert_eq(m.allocs, 3, "three mirrors: x_fp, y, x_q");
    cr_assert_eq(m.pins, 0);
    /* a second read finds the host current */
    cr_assert_eq(ar_res_host(&r, c.a), 0);
    cr_assert_eq(m.downloads, 2);
    ar_res_release(&r);
    cr_assert_eq(m.frees, 3);
}

Test(residency, streamed_run_pins_once_and_never_mirrors)
{
    mock m = {0};
    m.fail_alloc_after = -1, m.wbytes = 10;
    ar_xfer_ops ops = mock_ops(&m);
    ar_residency r;
    ar_res_init(&r, &ops, 0);
    chains c;
    run(&r, &c, 3);
    cr_assert_eq(m.wups, 3);
    cr_assert_eq(m.allocs, 0);
    cr_assert_eq(m.uploads + m.downloads, 0, "the residency copies nothing: the batches are the caller's");
    cr_assert_eq(m.pins, 3, "x_fp, y and x_q page-locked once each");
    ar_res_release(&r);
    cr_assert_eq(m.unpins, 3);
}

Test(residency, no_room_streams_that_chain)
{
    mock m = {0};
    m.fail_alloc_after = 1, m.wbytes = 10; /* x_fp's mirror only */
    ar_xfer_ops ops = mock_ops(&m);
    ar_residency r;
    ar_res_init(&r, &ops, 1);
    chains c;
    run(&r, &c, 3);
    cr_assert_eq(m.wups, 3);
    ar_res_release(&r);
}

Test(residency, host_writes_and_other_blocks)
{
    mock m = {0};
    m.fail_alloc_after = -1, m.wbytes = 10;
    ar_xfer_ops ops = mock_ops(&m);
    ar_residency r;
    ar_res_init(&r, &ops, 1);
    uint16_t a[N] = {1, 2, 3};
    uint16_t *d = ar_res_chain(&r, a, sizeof a, 1);
    cr_assert_eq(d[2], 3);
    cr_assert_eq(ar_res_chain(&r, a, sizeof a, 1), d);
    cr_assert_eq(m.uploads, 1, "current on the device: no second upload");
    a[2] = 9;
    ar_res_host_wrote(&r, a);
    cr_assert_eq(((uint16_t *)ar_res_chain(&r, a, sizeof a, 1))[2], 9, "stale mirror uploaded again");
    cr_assert_eq(m.uploads, 2);
    /* a grown array: the host takes the contents back, a larger mirror */
    d = ar_res_chain(&r, a, sizeof a, 1);
    d[0] = 77;
    ar_res_dev_wrote(&r, a);
    cr_assert_not_null(ar_res_chain(&r, a, 2 * sizeof a, 0));
    cr_assert_eq(a[0], 77);
    /* weights: biases or norms of other tensors are another block */
    float s1 = 1, s2 = 2, nrm = 0, nrm2 = 0;
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_init(&w, AR_NLINEAR), 0);
    w.w[0] = &s1, w.attn_norm = &nrm;
    ar_res_next_block(&r, 0);
    cr_assert_eq(*(float *)ar_res_weights(&r, &w, NULL), 1);
    ar_block_weights w2;
    cr_assert_eq(ar_block_weights_view(&w2, &w), 0);
    w2.w[0] = &s2, w2.attn_norm = &nrm2;
    cr_assert_eq(*(float *)ar_res_weights(&r, &w2, NULL), 2);
    cr_assert_eq(m.wups, 2);
    cr_assert_eq(r.led.n_up[AR_XFER_WEIGHTS], 2, "a second upload is counted");
    /* no residency: every call is a no-op */
    cr_assert_null(ar_res_chain(NULL, a, sizeof a, 1));
    cr_assert_null(ar_res_weights(NULL, &w, NULL));
    cr_assert_eq(ar_res_host(NULL, a), 0);
    ar_res_host_wrote(NULL, a);
    ar_res_dev_wrote(NULL, a);
    ar_res_next_block(NULL, 1);
    ar_res_release(&r);
    ar_block_weights_release(&w2);
    ar_block_weights_release(&w);
    cr_assert_eq(m.allocs, m.frees);
    cr_assert_eq(m.wups, m.wfrees);
}

Test(residency, failed_pin_is_not_retried)
{
    mock m = {0};
    m.fail_alloc_after = -1, m.fail_pin = 1;
    ar_xfer_ops ops = mock_ops(&m);
    ar_residency r;
    ar_res_init(&r, &ops, 0);
    uint16_t a[N] = {0};
    cr_assert_null(ar_res_chain(&r, a, sizeof a, 1));
    cr_assert_null(ar_res_chain(&r, a, sizeof a, 1));
    cr_assert_eq(m.pins, 1);
    ar_res_release(&r);
    cr_assert_eq(m.unpins, 0, "nothing to unpin");
}
