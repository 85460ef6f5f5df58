/* array_grow.h — the doubling growth that the format readers and writers give
 * their record, tensor and key arrays. */
#ifndef AR_ARRAY_GROW_H
#define AR_ARRAY_GROW_H
#include <stddef.h>

/* Room for element n of items (n elements of elem bytes, capacity *cap): when
 * n == *cap, reallocate to twice *cap (first when empty) and update *cap.
 * Returns the array, moved or not, or NULL when out of memory; items and *cap
 * are then untouched, so the caller still owns what it had and can report the
 * failure under its own file name. */
void *ar_array_reserve(void *items, size_t n, size_t *cap, size_t elem, size_t first);

#endif
