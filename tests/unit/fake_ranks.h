/* fake_ranks.h — N data-parallel ranks simulated by N threads of this
 * process (for reduce.h's tests): each thread gets an ar_reducer whose
 * all-gather, all-to-all and broadcast meet the others' at a barrier, copying through
 * memory. Each rank thread sets OpenMP to one thread (OpenBLAS, called from
 * several threads at once, picks its own threads by size, alike for every
 * rank and for a one-process reference of the same shapes). */
#ifndef AR_FAKE_RANKS_H
#define AR_FAKE_RANKS_H
#include "reduce.h"

/* Run fn(ctx, rank's reducer) on n threads at once, rank r with
 * ((char *)ctx + r·stride). Returns the number of ranks whose fn returned
 * non-zero. */
int fake_ranks_run(int n, int (*fn)(void *ctx, ar_reducer *rd), void *ctx, size_t stride);

#endif
