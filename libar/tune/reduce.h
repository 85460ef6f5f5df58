/* reduce.h — data-parallel SignRound: ranks that each hold the whole block
 * and all calibration chains, split every iteration's samples among
 * themselves and combine their gradients and losses so that every rank takes
 * the same sign step (docs/mpi.md).
 *
 * The library knows no MPI. A communicator is this struct of function
 * pointers, given to the tuner through ar_signround_opts.reduce /
 * ar_tune_opts.reduce; cmd/mpi_ranks.c implements it with MPI (a build
 * without MPI has none, and the tools run as one process). A GPU build would
 * implement the same calls with NCCL (ncclAllGather, ncclBroadcast, and
 * ncclSend/ncclRecv pairs in a group for the all-to-all).
 *
 * Why the result does not depend on the number of ranks N. An iteration's
 * gb samples (the sampler's, the same on every rank) are cut into K chunks of
 * `dp_chunk` samples, K independent of N. The loss is the sum of the
 * chunks' partial sums in chunk order (ar_chunk_fold). The gradient is the
 * sum of the chunk gradients (each computed from zero, ar_chunk_grad's
 * contract) over one fixed binary tree on the chunks 0..K-1 (ar_chunk_tree):
 * a node [lo, hi) of more than one chunk is left + right with left =
 * [lo, lo + p), p the largest power of two below hi − lo. Rank r owns the
 * contiguous chunks [K·r/N, K·(r+1)/N) and sums locally every tree node that
 * lies inside its range. The tree is then finished as a reduce-scatter: the
 * gradient is cut into N slices, rank q receives every rank's nodes for
 * slice q only (all-to-all) and finishes the tree on it, and the finished
 * slices are all-gathered; a rank receives about 2·(N−1)/N of the gradient
 * (plus (N−1)/N more per extra node of a rank) instead of (N−1) node-sized
 * copies. The tree is element-wise, so a slice's sums are the whole
 * gradient's sums of those elements. Every addition is the same
 * f32 addition of the same two operands whatever N is, so one process (N =
 * 1, all nodes local) and N ranks give the same bits, given the same
 * threads per rank (the chunks' GEMMs depend on it). */
#ifndef AR_REDUCE_H
#define AR_REDUCE_H
#include <stddef.h>

typedef struct ar_reducer {
    int rank, size;   /* this process's rank, 0..size-1, and the number of ranks */
    void *ctx;
    /* Every rank passes its counts[rank] bytes in send; every rank receives all
     * ranks' bytes, rank 0's first, in recv (Σ counts bytes). counts is the
     * same array on every rank. 0, or -1 with ar_error. */
    int (*allgather)(void *ctx, const void *send, void *recv, const size_t *counts);
    /* root's n bytes at buf to every rank's buf. 0, or -1 with ar_error. */
    int (*bcast)(void *ctx, void *buf, size_t n, int root);
    /* Every rank sends scounts[q] bytes to rank q, the pieces for ranks 0, 1,
     * ... one after another in send, and receives rcounts[p] bytes from rank
     * p, rank 0's first, in recv. 0, or -1 with ar_error. */
    int (*alltoall)(void *ctx, const void *send, const size_t *scounts, void *recv, const size_t *rcounts);
    /* Accounting, kept by the tuner: bytes this rank received through
     * allgather and seconds spent in it, and the tuning iterations they served. */
    double bytes, seconds;
    long iters;
} ar_reducer;

/* The most ranks the exchanges below accept (each refuses more, by ar_error). */
#define AR_REDUCE_MAX_RANKS 1024

/* Chunks [*lo, *hi) of K that rank r of n owns: an even, contiguous split. */
void ar_chunk_range(int K, int r, int n, int *lo, int *hi);

/* The left child's size of tree node [lo, hi) (hi − lo ≥ 2). */
int ar_chunk_split(int lo, int hi);

/* The maximal tree nodes inside [a, b) of the tree over [0, K), in chunk
 * order: up to cap pairs (lo, hi) into nodes[2·i], nodes[2·i+1]; returns how
 * many (a == b: none). */
int ar_chunk_nodes(int K, int a, int b, int *nodes, int cap);

/* Gradient pieces are exchanged this many floats per node at a time. */
#define AR_REDUCE_PIECE (1L << 22)

/* Finish the tree over K chunks for n floats of one tunable's gradient
 * (dst: on entry this rank's own nodes' values are found in mine, on return
 * the total), exchanging the nodes with the other ranks: mine holds this
 * rank's maximal nodes in chunk order, n floats each (ar_chunk_nodes over
 * its range); scratch holds at least (total nodes) × min(n, AR_REDUCE_PIECE)
 * floats, the total nodes being Σ over the ranks of their node counts (at
 * most 2·log2(K)+1 each). 0 or -1. */
int ar_reduce_tree(ar_reducer *rd, int K, float *dst, const float *const *mine, size_t n, float *scratch);

/* Scratch floats ar_reduce_tree needs for n floats over K chunks; 0 with
 * ar_error (too many ranks, out of memory). */
size_t ar_reduce_scratch(const ar_reducer *rd, int K, size_t n);

/* The loss parts: part[c] of chunk c for this rank's chunks in, all K
 * chunks' out (in place: part has K entries, this rank's range filled);
 * doubles, exchanged bit for bit. 0 or -1. */
int ar_reduce_parts(ar_reducer *rd, int K, double *part);

/* Element-wise sum of long counts over the ranks (exact), in place. 0 or -1. */
int ar_reduce_counts(ar_reducer *rd, long *v, int n);

/* Left fold of K partial sums in chunk order: ((p0 + p1) + p2) + ... */
double ar_chunk_fold(const double *part, int K);

#endif
