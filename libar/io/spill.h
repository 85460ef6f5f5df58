/* spill.h — arrays kept in a file instead of anonymous memory, for data
 * larger than a memory budget (the calibration chains of ar-tune at 8B–70B
 * shapes: [n, seqlen, hidden] bf16 each, 4 GiB for 128 × 2048 × 8192).
 *
 * A spilled array is a MAP_SHARED mapping of a fresh file in a directory
 * the caller names (unlinked at once, so nothing is left behind even after
 * a kill). Code reads and writes it through the pointer like any array; the
 * pages are page cache, which the kernel may write back and evict under
 * memory pressure (a memory cgroup's limit included), unlike anonymous
 * memory without swap. ar_spill_release writes a finished range back and
 * drops it from memory at once, so that a sequential writer holds only the
 * range it is working on. Contents are bytes: results are identical to the
 * same computation on malloc'd arrays. */
#ifndef AR_SPILL_H
#define AR_SPILL_H
#include <stddef.h>

/* A zero-filled array of `bytes` bytes in a new file under dir. NULL
 * (ar_error naming dir and the cause) when the file cannot be made, sized or
 * mapped. */
void *ar_spill_alloc(const char *dir, size_t bytes);

/* 1 when p is the start of an array from ar_spill_alloc not yet freed. */
int ar_spill_owns(const void *p);

/* Write bytes [off, off + len) of spilled array p back to its file and drop
 * them from memory (later reads fault them in again from the file). Nothing
 * for p not spilled. 0, or -1 (ar_error) when the write-back fails. */
int ar_spill_release(void *p, size_t off, size_t len);

/* Unmap a spilled array (its file goes with it). Nothing for NULL. */
void ar_spill_free(void *p);

#endif
