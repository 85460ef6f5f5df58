/* residency.c — the residency decision, the transfer ledger and the device
 * mirrors of a GPU tuning run (see residency.h). Plain host code: every copy
 * goes through the ops table. */
#include "residency.h"
#include "error.h"

#include <stdio.h>
#include <string.h>

#define MIB (1024.0 * 1024.0)

void ar_xfer_note(ar_xfer_ledger *l, ar_xfer_kind kind, int down, size_t bytes)
{
    if (!l || kind < 0 || kind >= AR_XFER_KINDS) return;
    if (down) l->n_down[kind]++, l->down[kind] += bytes;
    else l->n_up[kind]++, l->up[kind] += bytes;
}

void ar_xfer_summary(const ar_xfer_ledger *l, int resident, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "%ld weight uploads (%.1f MiB), %ld tuned-weight uploads (%.1f MiB), chains %s: "
             "%ld uploads (%.1f MiB) %ld downloads (%.1f MiB), other: %ld uploads (%.1f MiB) %ld downloads (%.1f MiB)",
             l->n_up[AR_XFER_WEIGHTS], l->up[AR_XFER_WEIGHTS] / MIB, l->n_up[AR_XFER_TUNED], l->up[AR_XFER_TUNED] / MIB,
             resident ? "resident" : "streamed", l->n_up[AR_XFER_CHAIN], l->up[AR_XFER_CHAIN] / MIB,
             l->n_down[AR_XFER_CHAIN], l->down[AR_XFER_CHAIN] / MIB, l->n_up[AR_XFER_OTHER], l->up[AR_XFER_OTHER] / MIB,
             l->n_down[AR_XFER_OTHER], l->down[AR_XFER_OTHER] / MIB);
}

int ar_chains_fit(size_t chain_bytes, size_t free_bytes, size_t block_need, double budget_mib, int low_mem)
{
    if (low_mem || budget_mib < 0) return 0;
    if (free_bytes < block_need || chain_bytes > free_bytes - block_need) return 0;
    return budget_mib == 0 || (double)chain_bytes <= budget_mib * MIB;
}

void ar_res_init(ar_residency *r, const ar_xfer_ops *ops, int resident)
{
    memset(r, 0, sizeof *r);
    r->ops = *ops;
    r->resident = resident;
    r->block = -1;
}

static void drop_weights(ar_residency *r)
{
    if (r->dev_w) r->ops.weights_free(r->ops.ctx, r->dev_w);
    r->dev_w = NULL;
    memset(&r->host_w, 0, sizeof r->host_w);
}

void ar_res_release(ar_residency *r)
{
    drop_weights(r);
    for (int i = 0; i < AR_RES_MIRRORS; i++) {
        ar_res_mirror *m = &r->m[i];
        if (m->dev) r->ops.release(r->ops.ctx, m->dev);
        if (m->pinned > 0) r->ops.unpin(r->ops.ctx, m->host);
    }
    memset(r->m, 0, sizeof r->m);
}

void ar_res_next_block(ar_residency *r, int layer)
{
    if (!r) return;
    drop_weights(r);
    r->block = layer;
    if (layer >= 0) r->blocks++;
}

/* 1 when w's biases and norms are the tensors dev_w came from. */
static int same_block(const ar_block_weights *a, const ar_block_weights *b)
{
    if (!a->b) return 0;
    for (int i = 0; i < AR_NLINEAR; i++)
        if (a->b[i] != b->b[i]) return 0;
    return a->attn_norm == b->attn_norm && a->mlp_norm == b->mlp_norm && a->q_norm == b->q_norm &&
           a->k_norm == b->k_norm;
}

void *ar_res_weights(ar_residency *r, const ar_block_weights *w, int differs[AR_NLINEAR])
{
    if (!r) return NULL;
    if (r->dev_w && !same_block(&r->host_w, w)) drop_weights(r);
    if (!r->dev_w) {
        size_t bytes = 0;
        if (!(r->dev_w = r->ops.weights_up(r->ops.ctx, w, &bytes))) return NULL;
        /* remember the tensors, not the caller's pointer arrays */
        r->host_w = *w;
        r->host_w.w = r->host_wp, r->host_w.b = r->host_bp;
        for (int i = 0; i < AR_NLINEAR; i++)
            r->host_wp[i] = i < w->nlinear ? w->w[i] : NULL, r->host_bp[i] = i < w->nlinear ? w->b[i] : NULL;
        ar_xfer_note(&r->led, AR_XFER_WEIGHTS, 0, bytes);
    }
    for (int i = 0; differs && i < AR_NLINEAR; i++) differs[i] = w->w[i] != r->host_w.w[i];
    return r->dev_w;
}

static ar_res_mirror *find(ar_residency *r, const void *host)
{
    for (int i = 0; r && host && i < AR_RES_MIRRORS; i++)
        if (r->m[i].host == host) return &r->m[i];
    return NULL;
}

/* A new mirror entry for host (host side current), or NULL when all are taken. */
static ar_res_mirror *add(ar_residency *r, const void *host, size_t bytes)
{
    for (int i = 0; i < AR_RES_MIRRORS; i++)
        if (!r->m[i].host) {
            r->m[i] = (ar_res_mirror){host, NULL, bytes, 1, 0, 0};
            return &r->m[i];
        }
    return NULL;
}

void *ar_res_chain(ar_residency *r, const void *host, size_t bytes, int need)
{
    if (!r || !host) return NULL;
    ar_res_mirror *m = find(r, host);
    if (!m && !(m = add(r, host, bytes))) return NULL;
    if (!r->resident) {
        /* streaming: page-lock the host array once (a failure only slows the
         * copies, and is not retried) */
        if (!m->pinned) {
            m->pinned = r->ops.pin(r->ops.ctx, host, bytes) ? -1 : 1;
            m->bytes = bytes;
        }
        return NULL;
    }
    if (m->dev && bytes > m->bytes) {
        /* grown: the host takes the contents back, the larger mirror starts stale */
        if (ar_res_host(r, host)) return NULL;
        r->ops.release(r->ops.ctx, m->dev);
        m->dev = NULL, m->dev_ok = 0;
    }
    if (!m->dev) {
        if (!(m->dev = r->ops.alloc(r->ops.ctx, bytes))) {
            /* no room: this array streams from now on (its host side is current) */
            m->host = host, m->bytes = 0, m->dev_ok = 0;
            return NULL;
        }
        m->bytes = bytes, m->dev_ok = 0;
    }
    if (need && !m->dev_ok) {
        if (r->ops.upload(r->ops.ctx, m->dev, host, bytes)) return NULL;
        ar_xfer_note(&r->led, AR_XFER_CHAIN, 0, bytes);
        m->dev_ok = 1;
    }
    return m->dev;
}

void ar_res_dev_wrote(ar_residency *r, const void *host)
{
    ar_res_mirror *m = find(r, host);
    if (m && m->dev) m->dev_ok = 1, m->host_ok = 0;
}

int ar_res_host(ar_residency *r, const void *host)
{
    ar_res_mirror *m = find(r, host);
    if (!m || m->host_ok || !m->dev) return 0;
    if (r->ops.download(r->ops.ctx, (void *)host, m->dev, m->bytes)) return -1;
    ar_xfer_note(&r->led, AR_XFER_CHAIN, 1, m->bytes);
    m->host_ok = 1;
    return 0;
}

void ar_res_host_wrote(ar_residency *r, const void *host)
{
    ar_res_mirror *m = find(r, host);
    if (m) m->host_ok = 1, m->dev_ok = 0;
}

void ar_res_note(ar_residency *r, ar_xfer_kind kind, int down, size_t bytes)
{
    if (r) ar_xfer_note(&r->led, kind, down, bytes);
}
