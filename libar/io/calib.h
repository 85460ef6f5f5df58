/* calib.h — calibration samples from a local text dataset, built the way
 * AutoRound builds them (spec §1.4), for ar-calib.
 *
 * Two kinds of file, optionally zstd-compressed (name ends in .zst):
 *  - .jsonl: one JSON object per line with a "text" string = one document.
 *    Documents are shuffled with the seed, each is tokenized (with the
 *    tokenizer's special tokens, e.g. BOS) and truncated to seqlen; a document
 *    is kept only if it reaches seqlen tokens and its last token does not occur
 *    more than seqlen/2 times in it; the first nsamples kept are used.
 *  - anything else (.txt): one running text. It is tokenized whole and
 *    nsamples windows of seqlen tokens start at positions drawn uniformly with
 *    the seed (BOS first, then seqlen-1 text tokens, when the tokenizer adds
 *    one). This is how the reference figures for tiny-llama were made
 *    ("128 random windows of 512 tokens from the first 3 MB").
 * Network datasets (pile-10k etc.) are not supported: the error says which
 * file formats are. */
#ifndef AR_CALIB_H
#define AR_CALIB_H
#include "tokenizer.h"
#include <stddef.h>
#include <stdint.h>

typedef enum { AR_CALIB_WINDOWS, AR_CALIB_DOCUMENTS } ar_calib_mode;

typedef struct {
    int32_t *ids;        /* [n, seqlen] */
    int n, seqlen;
    ar_calib_mode mode;
} ar_calib_samples;

/* Build up to nsamples samples of seqlen tokens from the file at path.
 * Fewer than nsamples is not an error (the caller warns); zero is. */
int ar_calib_build(ar_tokenizer *tok, const char *path, int nsamples, int seqlen, uint64_t seed,
                   ar_calib_samples *out);

void ar_calib_free(ar_calib_samples *s);

/* Read a whole file into memory, decompressing it when path ends in ".zst";
 * "-" reads standard input. *len gets the size; the buffer is NUL-terminated. */
char *ar_read_text_file(const char *path, size_t *len);

/* The FNV-1a digest of model_dir/config.json as 16 lower-case hex digits
 * (the "config_fnv1a64" of ar-calib's META). 0, or -1 with ar_error. */
int ar_config_digest(const char *model_dir, char hex[17]);

/* 0 when model_dir/config.json has the digest hex (as written by ar-calib);
 * -1 with ar_error "DIR: config.json differs from the one the calibration
 * stream was made with" otherwise, or when it cannot be read. */
int ar_config_digest_check(const char *model_dir, const char *hex);

#endif
