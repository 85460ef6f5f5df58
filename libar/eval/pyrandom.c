/* pyrandom.c — CPython's Modules/_randommodule.c and Lib/random.py methods,
 * written from their published algorithms (MT19937 by Matsumoto and
 * Nishimura; the seeding and method definitions documented by CPython). */
#include "pyrandom.h"
#include <math.h>
#include <stdlib.h>

#define N 624
#define M 397

static void init_genrand(ar_pyrandom *r, uint32_t s)
{
    r->mt[0] = s;
    for (int i = 1; i < N; i++) r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->idx = N;
}

static void init_by_array(ar_pyrandom *r, const uint32_t *key, int len)
{
    init_genrand(r, 19650218u);
    int i = 1, j = 0;
    for (int k = N > len ? N : len; k; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++; j++;
        if (i >= N) { r->mt[0] = r->mt[N - 1]; i = 1; }
        if (j >= len) j = 0;
    }
    for (int k = N - 1; k; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= N) { r->mt[0] = r->mt[N - 1]; i = 1; }
    }
    r->mt[0] = 0x80000000u;
}

void ar_pyrandom_seed(ar_pyrandom *r, uint64_t seed)
{
    /* the absolute value's 32-bit words, least significant first; 0 is one word */
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    init_by_array(r, key, key[1] ? 2 : 1);
}

uint32_t ar_pyrandom_u32(ar_pyrandom *r)
{
    static const uint32_t mag01[2] = {0u, 0x9908b0dfu};
    uint32_t y;
    if (r->idx >= N) {
        int kk;
        for (kk = 0; kk < N - M; kk++) {
            y = (r->mt[kk] & 0x80000000u) | (r->mt[kk + 1] & 0x7fffffffu);
            r->mt[kk] = r->mt[kk + M] ^ (y >> 1) ^ mag01[y & 1u];
        }
        for (; kk < N - 1; kk++) {
            y = (r->mt[kk] & 0x80000000u) | (r->mt[kk + 1] & 0x7fffffffu);
            r->mt[kk] = r->mt[kk + (M - N)] ^ (y >> 1) ^ mag01[y & 1u];
        }
        y = (r->mt[N - 1] & 0x80000000u) | (r->mt[0] & 0x7fffffffu);
        r->mt[N - 1] = r->mt[M - 1] ^ (y >> 1) ^ mag01[y & 1u];
        r->idx = 0;
    }
    y = r->mt[r->idx++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double ar_pyrandom_random(ar_pyrandom *r)
{
    uint32_t a = ar_pyrandom_u32(r) >> 5, b = ar_pyrandom_u32(r) >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

uint32_t ar_pyrandom_below(ar_pyrandom *r, uint64_t n)
{
    int k = 0;
    while (k < 64 && (n >> k)) k++; /* n.bit_length() */
    if (k > 32) k = 32;             /* n <= 2^32: 2^32 itself needs 33 bits; callers stay below */
    uint32_t v;
    do v = k ? ar_pyrandom_u32(r) >> (32 - k) : 0;
    while (v >= n);
    return v;
}

int ar_pyrandom_sample(ar_pyrandom *r, int n, int k, int *out)
{
    if (k < 0 || k > n) return -1;
    long setsize = 21;
    if (k > 5) setsize += (long)pow(4.0, ceil(log((double)k * 3) / log(4.0)));
    if (n <= setsize) {
        int *pool = malloc(sizeof(int) * (size_t)(n ? n : 1));
        if (!pool) return -1;
        for (int i = 0; i < n; i++) pool[i] = i;
        for (int i = 0; i < k; i++) {
            int j = (int)ar_pyrandom_below(r, (uint64_t)(n - i));
            out[i] = pool[j];
            pool[j] = pool[n - i - 1];
        }
        free(pool);
    } else {
        for (int i = 0; i < k; i++) {
            int j, dup;
            do {
                j = (int)ar_pyrandom_below(r, (uint64_t)n);
                dup = 0;
                for (int q = 0; q < i; q++) dup |= out[q] == j;
            } while (dup);
            out[i] = j;
        }
    }
    return 0;
}
