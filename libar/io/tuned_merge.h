/* tuned_merge.h — several ar-tune streams of block ranges (tune.h
 * first_block / last_block, ar-tune --blocks) read as the one stream a whole
 * run writes (docs/parallel.md).
 *
 * The streams must be ranges of one run: their META records equal except
 * "blocks" (the model, scheme, tuning settings, threads and calibration
 * digest all alike), and their ranges, sorted, must tile blocks 0..n_layers-1
 * with no gap and no overlap. The records are then handed out range after
 * range, in block order, so a writer fed from them writes the bytes it
 * writes from a whole run's stream. One stream without "blocks" is a whole
 * run and is read as it is. */
#ifndef AR_TUNED_MERGE_H
#define AR_TUNED_MERGE_H
#include "tuned_stream.h"
#include <stdio.h>

typedef struct ar_tuned_merge ar_tuned_merge;

/* Open the n streams f[i] (named src[i] in messages; the FILEs stay the
 * caller's) and check them. NULL with ar_error naming the stream and the
 * problem: "b.ars: META differs from a.ars's: tuning.iters (a.ars 5, b.ars
 * 6)", "b.ars: blocks 2-4 overlap a.ars's 0-2", "blocks 3-3 are in no stream
 * (a.ars ends at 2, b.ars starts at 4)", "a.ars: holds blocks 0-2 of 6 and is
 * the only stream: blocks 3-5 are in no stream", "b.ars: a whole run's stream
 * (no blocks in its META) cannot be merged with others". */
ar_tuned_merge *ar_tuned_merge_open(FILE *const *f, const char *const *src, int n);

/* The META of the first range (block 0's), which all share but "blocks". */
const ar_tuned_meta *ar_tuned_merge_meta(const ar_tuned_merge *m);

/* The next layer, as ar_tuned_reader_next: 1, 0 after the last range, -1
 * with ar_error. */
int ar_tuned_merge_next(ar_tuned_merge *m, const ar_tuned_item **it);

/* The name (src[i]) of the stream the last layer ar_tuned_merge_next gave
 * came from, for messages about that layer. */
const char *ar_tuned_merge_source(const ar_tuned_merge *m);

/* Free m (not the FILEs). NULL is allowed. */
void ar_tuned_merge_close(ar_tuned_merge *m);

#endif
