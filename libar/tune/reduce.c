/* reduce.c — the fixed chunk tree of data-parallel SignRound (reduce.h):
 * which chunks and tree nodes a rank owns, and the exchange that finishes
 * the tree on every rank. */
#include "reduce.h"
#include "error.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ar_chunk_range(int K, int r, int n, int *lo, int *hi)
{
    *lo = (int)((long)K * r / n);
    *hi = (int)((long)K * (r + 1) / n);
}

int ar_chunk_split(int lo, int hi)
{
    int p = 1;
    while (2 * p < hi - lo) p *= 2;
    return p;
}

/* The maximal nodes of subtree [lo, hi) inside [a, b), appended at *k. */
static void nodes_in(int lo, int hi, int a, int b, int *nodes, int cap, int *k)
{
    if (hi <= a || lo >= b) return;
    if (a <= lo && hi <= b) {
        if (*k < cap) nodes[2 * *k] = lo, nodes[2 * *k + 1] = hi;
        (*k)++;
        return;
    }
    int mid = lo + ar_chunk_split(lo, hi);
    nodes_in(lo, mid, a, b, nodes, cap, k);
    nodes_in(mid, hi, a, b, nodes, cap, k);
}

int ar_chunk_nodes(int K, int a, int b, int *nodes, int cap)
{
    int k = 0;
    if (K > 0 && a < b) nodes_in(0, K, a, b, nodes, cap, &k);
    return k;
}

/* The rank count every exchange below sizes its per-rank arrays for (on the
 * stack: one entry per rank); refused once here, by every entry point. */
static int ranks_ok(const ar_reducer *rd)
{
    if (rd->size >= 1 && rd->size <= AR_REDUCE_MAX_RANKS) return 1;
    ar_error("reduce: %d ranks, at most %d", rd->size, AR_REDUCE_MAX_RANKS);
    return 0;
}

/* Nodes of every rank, in rank order (= chunk order): *total of them into
 * all[2·i..], rank r's count into cnt[r]. -1 when out of memory. */
enum { MAX_NODES_PER_RANK = 64 };   /* 2·log2(K) + 1 ≤ 63 for any int K */
static int all_nodes(const ar_reducer *rd, int K, int **all, int *cnt, int *total)
{
    *all = malloc(sizeof(int) * 2 * MAX_NODES_PER_RANK * (size_t)rd->size);
    if (!*all) return ar_error("out of memory for the chunk tree");
    *total = 0;
    for (int r = 0; r < rd->size; r++) {
        int lo, hi;
        ar_chunk_range(K, r, rd->size, &lo, &hi);
        cnt[r] = ar_chunk_nodes(K, lo, hi, *all + 2 * *total, MAX_NODES_PER_RANK);
        *total += cnt[r];
    }
    return 0;
}

/* The value of tree node [lo, hi) from the gathered nodes (node j's m floats
 * at buf + j·m): the index of the buffer that holds it; sums go into the
 * left operand's buffer, left + right, the additions local evaluation does. */
static int combine(const int *nodes, int total, int lo, int hi, float *buf, size_t m)
{
    for (int j = 0; j < total; j++)
        if (nodes[2 * j] == lo && nodes[2 * j + 1] == hi) return j;
    int mid = lo + ar_chunk_split(lo, hi);
    int l = combine(nodes, total, lo, mid, buf, m), r = combine(nodes, total, mid, hi, buf, m);
    float *a = buf + (size_t)l * m;
    const float *b = buf + (size_t)r * m;
    for (size_t e = 0; e < m; e++) a[e] = a[e] + b[e];
    return l;
}

size_t ar_reduce_scratch(const ar_reducer *rd, int K, size_t n)
{
    int *all, cnt[AR_REDUCE_MAX_RANKS], total;
    if (!ranks_ok(rd) || all_nodes(rd, K, &all, cnt, &total)) return 0;
    free(all);
    size_t piece = n < AR_REDUCE_PIECE ? n : AR_REDUCE_PIECE;
    return (size_t)(total + cnt[rd->rank]) * piece;
}

/* Slice q of m elements among N ranks: [m·q/N, m·(q+1)/N). */
static size_t slice_at(size_t m, int q, int N) { return (size_t)((unsigned long long)m * q / N); }

/* One piece [e0, e0 + m) of the gradient, reduce-scattered (reduce.h): own
 * node values to the slice owners, the tree finished on this rank's slice,
 * the finished slices gathered into dst. */
static int reduce_piece(ar_reducer *rd, const int *all, const int *cnt, int total, int K, float *dst,
                        const float *const *mine, size_t e0, size_t m, float *recv, float *send)
{
    const int N = rd->size, me = rd->rank, own = cnt[me];
    size_t sc[AR_REDUCE_MAX_RANKS], rc_[AR_REDUCE_MAX_RANKS], at = 0;
    const size_t lo = slice_at(m, me, N), len = slice_at(m, me + 1, N) - lo;
    for (int q = 0; q < N; q++) {
        size_t qlo = slice_at(m, q, N), qlen = slice_at(m, q + 1, N) - qlo;
        for (int j = 0; j < own; j++, at += qlen) memcpy(send + at, mine[j] + e0 + qlo, qlen * sizeof(float));
        sc[q] = (size_t)own * qlen * sizeof(float);
        rc_[q] = (size_t)cnt[q] * len * sizeof(float);
    }
    double t0 = now_s();
    int rc = rd->alltoall(rd->ctx, send, sc, recv, rc_);
    rd->seconds += now_s() - t0;
    rd->bytes += (double)(total - own) * len * sizeof(float);
    if (rc) return -1;
    /* recv holds node g's slice at recv + g·len, g in rank (= chunk) order */
    const float *mine_done = recv + (size_t)combine(all, total, 0, K, recv, len) * len;
    for (int q = 0; q < N; q++) sc[q] = (slice_at(m, q + 1, N) - slice_at(m, q, N)) * sizeof(float);
    t0 = now_s();
    rc = rd->allgather(rd->ctx, mine_done, dst + e0, sc);
    rd->seconds += now_s() - t0;
    rd->bytes += (double)(m - len) * sizeof(float);
    return rc;
}

int ar_reduce_tree(ar_reducer *rd, int K, float *dst, const float *const *mine, size_t n, float *scratch)
{
    int *all, total, cnt[AR_REDUCE_MAX_RANKS];
    if (!ranks_ok(rd) || all_nodes(rd, K, &all, cnt, &total)) return -1;
    size_t piece = n < AR_REDUCE_PIECE ? n : AR_REDUCE_PIECE;
    float *recv = scratch, *send = scratch + (size_t)total * piece;   /* ar_reduce_scratch's room */
    int rc = 0;
    for (size_t e0 = 0; e0 < n && !rc; e0 += AR_REDUCE_PIECE) {
        size_t m = n - e0 < AR_REDUCE_PIECE ? n - e0 : AR_REDUCE_PIECE;
        rc = reduce_piece(rd, all, cnt, total, K, dst, mine, e0, m, recv, send);
    }
    free(all);
    return rc;
}

int ar_reduce_parts(ar_reducer *rd, int K, double *part)
{
    size_t counts[AR_REDUCE_MAX_RANKS];
    if (!ranks_ok(rd)) return -1;
    for (int r = 0; r < rd->size; r++) {
        int lo, hi;
        ar_chunk_range(K, r, rd->size, &lo, &hi);
        counts[r] = (size_t)(hi - lo) * sizeof(double);
    }
    int lo, hi;
    ar_chunk_range(K, rd->rank, rd->size, &lo, &hi);
    double *recv = malloc(sizeof(double) * (K > 0 ? K : 1));
    if (!recv) return ar_error("out of memory for the loss parts");
    double t0 = now_s();
    int rc = rd->allgather(rd->ctx, part + lo, recv, counts);
    rd->seconds += now_s() - t0;
    rd->bytes += (double)(K - (hi - lo)) * sizeof(double);
    if (!rc) memcpy(part, recv, sizeof(double) * K);
    free(recv);
    return rc;
}

int ar_reduce_counts(ar_reducer *rd, long *v, int n)
{
    size_t counts[AR_REDUCE_MAX_RANKS];
    if (!ranks_ok(rd)) return -1;
    for (int r = 0; r < rd->size; r++) counts[r] = sizeof(long) * (size_t)n;
    long *recv = malloc(sizeof(long) * (size_t)n * rd->size + 1);
    if (!recv) return ar_error("out of memory for the counts");
    int rc = rd->allgather(rd->ctx, v, recv, counts);
    if (!rc)
        for (int i = 0; i < n; i++) {
            v[i] = 0;
            for (int r = 0; r < rd->size; r++) v[i] += recv[(size_t)r * n + i];
        }
    free(recv);
    return rc;
}

double ar_chunk_fold(const double *part, int K)
{
    double s = 0;
    for (int c = 0; c < K; c++) s += part[c];
    return s;
}
