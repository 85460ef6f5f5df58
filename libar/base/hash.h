/* hash.h — 64-bit FNV-1a, the digest that ties streams and checkpoints to
 * the model, data and settings they came from (and the tokenizer's string
 * maps hash with it). Not cryptographic. */
#ifndef AR_HASH_H
#define AR_HASH_H
#include <stddef.h>
#include <stdint.h>

/* FNV-1a's offset basis: the digest of no bytes. */
#define AR_FNV1A64_INIT 0xcbf29ce484222325ull

/* FNV-1a continued over more bytes from h (start with AR_FNV1A64_INIT), so a
 * digest can cover data as it is read, in pieces. */
uint64_t ar_fnv1a64_update(uint64_t h, const void *data, size_t n);

/* The digest of n bytes: ar_fnv1a64_update(AR_FNV1A64_INIT, data, n). */
uint64_t ar_fnv1a64(const void *data, size_t n);

#endif
