/* fuzz_calib.c — calibration datasets through ar_calib_build (file reading,
 * zstd decompression, JSONL parsing, tokenization, sample selection).
 *
 * Input: byte 0 picks the file kind (0 .txt, 1 .jsonl, 2 .txt.zst with the
 * rest as raw zstd bytes, 3 .jsonl.zst compressed here so the JSONL parser
 * sees mutations), byte 1 nsamples (1..8), byte 2 seqlen (2..33); the rest is
 * the file. The tokenizer is a SentencePiece-style fixture that adds BOS
 * (tests/fixtures/tokenizer/metaspace_first.tokenizer.json, or
 * $AR_FUZZ_TOKENIZER), loaded once. Accepted samples must hold exactly n rows
 * of seqlen ids from the vocabulary. */
#include "calib.h"
#include "fuzz.h"
#include <zstd.h>

static ar_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *path = getenv("AR_FUZZ_TOKENIZER");
    tok = ar_tokenizer_load(path ? path : "tests/fixtures/tokenizer/metaspace_first.tokenizer.json");
    if (!tok) {
        fprintf(stderr, "fuzz_calib: %s (run from the repository root or set AR_FUZZ_TOKENIZER)\n", ar_last_error());
        exit(1);
    }
    return 0;
}

static void check_samples(const ar_calib_samples *s, int nsamples, int seqlen)
{
    if (s->n < 1 || s->n > nsamples || s->seqlen != seqlen || !s->ids) fuzz_fail("bad sample count or shape");
    int32_t vocab = ar_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < (size_t)s->n * (size_t)seqlen; i++)
        if (s->ids[i] < 0 || s->ids[i] >= vocab) fuzz_fail("sample id outside the vocabulary");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[] = {"data.txt", "data.jsonl", "data.txt.zst", "data.jsonl.zst"};
    if (size < 3) return 0;
    int kind = data[0] % 4, nsamples = 1 + data[1] % 8, seqlen = 2 + data[2] % 32;
    const uint8_t *body = data + 3;
    size_t n = size - 3;
    void *packed = NULL;
    if (kind == 3) {
        size_t cap = ZSTD_compressBound(n);
        packed = malloc(cap);
        n = ZSTD_compress(packed, cap, body, n, 1);
        if (ZSTD_isError(n)) fuzz_fail("zstd compression failed");
        body = packed;
    }
    const char *path = fuzz_file(names[kind], body, n);
    ar_calib_samples s;
    fuzz_clear_error();
    if (ar_calib_build(tok, path, nsamples, seqlen, 42, &s)) fuzz_expect_message();
    else check_samples(&s, nsamples, seqlen);
    ar_calib_free(&s);
    fuzz_unlink(names[kind]);
    free(packed);
    return 0;
}
