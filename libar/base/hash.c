/* hash.c — 64-bit FNV-1a (see hash.h). */
#include "hash.h"

uint64_t ar_fnv1a64_update(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

uint64_t ar_fnv1a64(const void *data, size_t n) { return ar_fnv1a64_update(AR_FNV1A64_INIT, data, n); }
