#include "fake_ranks.h"
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    pthread_barrier_t bar;
    const void **send;       /* [n] each rank's buffer of the current call */
    const size_t **scounts;  /* [n] each rank's all-to-all send counts */
    int n;
} world;

typedef struct {
    world *w;
    ar_reducer rd;
    int (*fn)(void *, ar_reducer *);
    void *ctx;
    int rc;
} rank;

static int all_gather(void *ctx, const void *send, void *recv, const size_t *counts)
{
    rank *k = ctx;
    world *w = k->w;
    w->send[k->rd.rank] = send;
    pthread_barrier_wait(&w->bar);
    size_t at = 0;
    for (int r = 0; r < w->n; r++) memcpy((char *)recv + at, w->send[r], counts[r]), at += counts[r];
    pthread_barrier_wait(&w->bar);   /* nobody reuses send before all copied it */
    return 0;
}

/* rank p's piece for this rank starts after p's pieces for ranks before it */
static int all_to_all(void *ctx, const void *send, const size_t *scounts, void *recv, const size_t *rcounts)
{
    rank *k = ctx;
    world *w = k->w;
    int me = k->rd.rank;
    w->send[me] = send, w->scounts[me] = scounts;
    pthread_barrier_wait(&w->bar);
    size_t at = 0;
    int bad = 0;
    for (int p = 0; p < w->n; p++) {
        size_t off = 0;
        for (int q = 0; q < me; q++) off += w->scounts[p][q];
        bad |= w->scounts[p][me] != rcounts[p];
        memcpy((char *)recv + at, (const char *)w->send[p] + off, rcounts[p]), at += rcounts[p];
    }
    pthread_barrier_wait(&w->bar);
    return bad ? -1 : 0;
}

static int bcast(void *ctx, void *buf, size_t n, int root)
{
    rank *k = ctx;
    world *w = k->w;
    if (k->rd.rank == root) w->send[root] = buf;
    pthread_barrier_wait(&w->bar);
    if (k->rd.rank != root) memcpy(buf, w->send[root], n);
    pthread_barrier_wait(&w->bar);
    return 0;
}

static void *run(void *p)
{
    rank *k = p;
    omp_set_num_threads(1);
    k->rc = k->fn(k->ctx, &k->rd);
    return NULL;
}

int fake_ranks_run(int n, int (*fn)(void *ctx, ar_reducer *rd), void *ctx, size_t stride)
{
    world w = {.n = n, .send = calloc(n, sizeof(void *)), .scounts = calloc(n, sizeof(size_t *))};
    rank *ks = calloc(n, sizeof *ks);
    pthread_t *th = calloc(n, sizeof *th);
    pthread_barrier_init(&w.bar, NULL, n);
    for (int r = 0; r < n; r++) {
        ks[r] = (rank){&w, {.rank = r, .size = n, .ctx = &ks[r], .allgather = all_gather, .bcast = bcast, .alltoall = all_to_all}, fn, (char *)ctx + r * stride, 0};
        pthread_create(&th[r], NULL, run, &ks[r]);
    }
    int bad = 0;
    for (int r = 0; r < n; r++) pthread_join(th[r], NULL), bad += ks[r].rc != 0;
    pthread_barrier_destroy(&w.bar);
    free(w.send), free(w.scounts), free(ks), free(th);
    return bad;
}
