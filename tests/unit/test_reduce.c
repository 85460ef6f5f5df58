/* test_reduce.c — the fixed chunk tree of data-parallel SignRound
 * (libar/tune/reduce.h): the ranks' nodes partition the chunks into nodes of
 * the tree, and the exchange gives every rank the bits of the one-process
 * tree sum for any number of ranks (simulated by threads, fake_ranks.h),
 * on data where the order of the additions changes the result. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fake_ranks.h"
#include "reduce.h"
#include "rng.h"

/* Is [lo, hi) a node of the tree over [0, K)? Walked from the root with the
 * rule written out here: left child = the largest power of two below the size. */
static int is_node(int K, int lo, int hi)
{
    int a = 0, b = K;
    while (1) {
        if (a == lo && b == hi) return 1;
        if (b - a < 2) return 0;
        int p = 1;
        while (p * 2 < b - a) p *= 2;
        if (hi <= a + p) b = a + p;
        else if (lo >= a + p) a = a + p;
        else return 0;
    }
}

Test(reduce, nodes_partition_the_chunks_into_tree_nodes)
{
    for (int K = 1; K <= 40; K++)
        for (int N = 1; N <= 9; N++) {
            int next = 0;
            for (int r = 0; r < N; r++) {
                int lo, hi, nodes[128];
                ar_chunk_range(K, r, N, &lo, &hi);
                cr_assert_eq(lo, next, "K %d N %d rank %d starts at %d", K, N, r, lo);
                int k = ar_chunk_nodes(K, lo, hi, nodes, 64);
                int lg = 0;
                while ((1 << lg) < K) lg++;
                cr_assert_leq(k, 2 * lg + 1);
                for (int j = 0; j < k; j++) {
                    cr_assert_eq(nodes[2 * j], next, "K %d N %d rank %d node %d", K, N, r, j);
                    cr_assert(is_node(K, nodes[2 * j], nodes[2 * j + 1]));
                    next = nodes[2 * j + 1];
                }
                cr_assert_eq(next, hi);
            }
            cr_assert_eq(next, K);
        }
}

/* K chunk vectors of m floats whose magnitudes span 2^±20, so that
 * different orders of summation round differently. */
static float *chunk_data(int K, size_t m, uint64_t seed)
{
    float *g = malloc(sizeof(float) * K * m);
    for (size_t i = 0; i < (size_t)K * m; i++) {
        double u = (ar_rand_next(&seed) >> 11) * (1.0 / 9007199254740992.0);
        int e = (int)(ar_rand_next(&seed) % 41) - 20;
        g[i] = (float)ldexp(u - 0.5, e);
    }
    return g;
}

/* The tree sum of chunks [lo, hi) into out (m floats), evaluated locally. */
static void tree_sum(const float *g, size_t m, int lo, int hi, float *out)
{
    if (hi - lo == 1) { memcpy(out, g + (size_t)lo * m, sizeof(float) * m); return; }
    int p = 1;
    while (p * 2 < hi - lo) p *= 2;
    float *r = malloc(sizeof(float) * m);
    tree_sum(g, m, lo, lo + p, out);
    tree_sum(g, m, lo + p, hi, r);
    for (size_t e = 0; e < m; e++) out[e] = out[e] + r[e];
    free(r);
}

typedef struct {
    const float *g;
    int K;
    size_t m;
    float *got;          /* [m] this rank's result */
    double parts[64];
    long counts[3];
    double tree_bytes;   /* what ar_reduce_tree counted as received */
} rank_job;

static int rank_main(void *ctx, ar_reducer *rd)
{
    rank_job *j = ctx;
    int lo, hi, nodes[128];
    ar_chunk_range(j->K, rd->rank, rd->size, &lo, &hi);
    int k = ar_chunk_nodes(j->K, lo, hi, nodes, 64);
    float *mine[64];
    for (int n = 0; n < k; n++) {
        mine[n] = malloc(sizeof(float) * j->m);
        tree_sum(j->g, j->m, nodes[2 * n], nodes[2 * n + 1], mine[n]);
    }
    size_t sc = ar_reduce_scratch(rd, j->K, j->m);
    float *scratch = malloc(sizeof(float) * (sc ? sc : 1));
    int rc = ar_reduce_tree(rd, j->K, j->got, (const float *const *)mine, j->m, scratch);
    j->tree_bytes = rd->bytes;
    for (int c = 0; c < j->K; c++) j->parts[c] = c >= lo && c < hi ? 1.0 / (c + 3) : NAN;
    if (!rc) rc = ar_reduce_parts(rd, j->K, j->parts);
    j->counts[0] = rd->rank, j->counts[1] = 1, j->counts[2] = 7;
    if (!rc) rc = ar_reduce_counts(rd, j->counts, 3);
    for (int n = 0; n < k; n++) free(mine[n]);
    free(scratch);
    return rc;
}

/* Bytes rank r receives in the reduce-scatter (reduce.h), from the node
 * counts: per piece of mp floats, the other ranks' nodes for r's slice
 * (len floats each), then the other slices of the finished tree. */
static double scatter_bytes(int K, size_t m, int N, int r)
{
    int total = 0, own = 0, nodes[128];
    for (int q = 0; q < N; q++) {
        int lo, hi;
        ar_chunk_range(K, q, N, &lo, &hi);
        int c = ar_chunk_nodes(K, lo, hi, nodes, 64);
        total += c, own = q == r ? c : own;
    }
    double b = 0;
    for (size_t e0 = 0; e0 < m; e0 += AR_REDUCE_PIECE) {
        size_t mp = m - e0 < AR_REDUCE_PIECE ? m - e0 : AR_REDUCE_PIECE;
        size_t len = mp * (r + 1) / N - mp * r / N;
        b += ((double)(total - own) * len + (double)(mp - len)) * sizeof(float);
    }
    return b;
}

static void check_ranks(int K, size_t m, int N)
{
    float *g = chunk_data(K, m, 1000 + K);
    float *want = malloc(sizeof(float) * m), *fold = malloc(sizeof(float) * m);
    tree_sum(g, m, 0, K, want);
    /* the data is order-sensitive: a left fold differs somewhere (K ≥ 4; for K ≤ 3 the tree is the fold) */
    memcpy(fold, g, sizeof(float) * m);
    for (int c = 1; c < K; c++) for (size_t e = 0; e < m; e++) fold[e] += g[(size_t)c * m + e];
    if (K >= 4 && m > 100) cr_assert(memcmp(fold, want, sizeof(float) * m), "K %d: the data is not order-sensitive", K);
    rank_job *jobs = calloc(N, sizeof *jobs);
    for (int r = 0; r < N; r++) jobs[r] = (rank_job){g, K, m, malloc(sizeof(float) * m), {0}, {0}, 0};
    cr_assert_eq(fake_ranks_run(N, rank_main, jobs, sizeof *jobs), 0);
    for (int r = 0; r < N; r++) {
        cr_assert(!memcmp(jobs[r].got, want, sizeof(float) * m), "K %d, %d ranks: rank %d's sum differs", K, N, r);
        cr_assert_eq(jobs[r].tree_bytes, scatter_bytes(K, m, N, r), "K %d, %d ranks: rank %d received %.0f bytes",
                     K, N, r, jobs[r].tree_bytes);
        for (int c = 0; c < K; c++) cr_assert_eq(jobs[r].parts[c], 1.0 / (c + 3));
        cr_assert_eq(jobs[r].counts[0], (long)N * (N - 1) / 2);
        cr_assert_eq(jobs[r].counts[1], N);
        cr_assert_eq(jobs[r].counts[2], 7L * N);
        free(jobs[r].got);
    }
    free(jobs), free(g), free(want), free(fold);
}

Test(reduce, any_number_of_ranks_gives_the_one_process_bits)
{
    int Ks[] = {1, 2, 3, 5, 8, 13};
    for (size_t i = 0; i < sizeof Ks / sizeof *Ks; i++)
        for (int N = 1; N <= 5; N++) check_ranks(Ks[i], 1000, N);
}

Test(reduce, gradients_longer_than_a_piece)
{
    check_ranks(4, (size_t)AR_REDUCE_PIECE + 5, 3);
}

Test(reduce, fold_adds_in_chunk_order)
{
    double p[3] = {1e16, 1.0, -1e16};
    cr_assert_eq(ar_chunk_fold(p, 3), (1e16 + 1.0) - 1e16);
}

/* More ranks than the per-rank arrays hold: every entry point refuses with
 * the one message before any exchange (the allgather here would fail the test). */
static int must_not_gather(void *ctx, const void *send, void *recv, const size_t *counts)
{
    (void)ctx, (void)send, (void)recv, (void)counts;
    cr_assert_fail("allgather reached with too many ranks");
    return -1;
}

Test(reduce, too_many_ranks_are_refused_by_every_exchange)
{
    ar_reducer rd = {.rank = 0, .size = AR_REDUCE_MAX_RANKS + 1, .allgather = must_not_gather};
    const char *want = "reduce: 1025 ranks, at most 1024";
    float dst[1], one[1] = {0}, scratch[8];
    const float *mine[1] = {one};
    double part[4] = {0};
    long v[1] = {0};
    cr_assert_eq(ar_reduce_scratch(&rd, 4, 1), 0);
    cr_assert_str_eq(ar_last_error(), want);
    ar_error("cleared");
    cr_assert_eq(ar_reduce_tree(&rd, 4, dst, mine, 1, scratch), -1);
    cr_assert_str_eq(ar_last_error(), want);
    ar_error("cleared");
    cr_assert_eq(ar_reduce_parts(&rd, 4, part), -1);
    cr_assert_str_eq(ar_last_error(), want);
    ar_error("cleared");
    cr_assert_eq(ar_reduce_counts(&rd, v, 1), -1);
    cr_assert_str_eq(ar_last_error(), want);
}
