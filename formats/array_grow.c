#include "array_grow.h"

#include <stdlib.h>

void *ar_array_reserve(void *items, size_t n, size_t *cap, size_t elem, size_t first)
{
    if (n < *cap) return items;
    size_t grown = *cap ? 2 * *cap : first;
    void *p = realloc(items, grown * elem);
    if (p) *cap = grown;
    return p;
}
