/* pyrandom.h — CPython's random.Random, bit for bit: the Mersenne Twister
 * MT19937 seeded as random.seed(int) seeds it (init_by_array over the 32-bit
 * words of the seed), and the few methods lm-eval-harness draws with:
 * getrandbits(k <= 32), _randbelow, random(), sample(range(n), k) and
 * choices(range(n), k=...). Used to pick few-shot examples and bootstrap
 * resamples exactly as lm-eval does (its seed 1234 and seeds 0..99). */
#ifndef AR_PYRANDOM_H
#define AR_PYRANDOM_H
#include <stdint.h>

typedef struct {
    uint32_t mt[624];
    int idx;
} ar_pyrandom;

/* random.Random(seed) for a non-negative integer seed. */
void ar_pyrandom_seed(ar_pyrandom *r, uint64_t seed);

/* The next 32-bit output (genrand_uint32). */
uint32_t ar_pyrandom_u32(ar_pyrandom *r);

/* random(): a double in [0, 1) from 53 random bits. */
double ar_pyrandom_random(ar_pyrandom *r);

/* _randbelow(n) for 1 <= n <= 2^32: rejection sampling on getrandbits(bit_length(n)). */
uint32_t ar_pyrandom_below(ar_pyrandom *r, uint64_t n);

/* sample(range(n), k) into out[k]: the pool or the set algorithm, chosen as
 * CPython 3.11 chooses it. 0, or -1 when k > n (CPython raises ValueError). */
int ar_pyrandom_sample(ar_pyrandom *r, int n, int k, int *out);

#endif
