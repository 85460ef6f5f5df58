/* rng.h — splitmix64, the documented generator behind every seeded choice in
 * ar (sample windows, document shuffles, mini-batch permutations). */
#ifndef AR_RNG_H
#define AR_RNG_H
#include <stdint.h>

/* The next 64 random bits; advances *state. */
uint64_t ar_rand_next(uint64_t *state);

/* Uniform integer in [0, n) from the generator (n > 0), without modulo bias
 * (rejection sampling). */
uint64_t ar_rand_below(uint64_t *state, uint64_t n);

#endif
