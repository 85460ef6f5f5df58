/* fuzz_tokenizer.c — tokenizer.json through ar_tokenizer_load; a tokenizer
 * that loads then encodes (both with and without special tokens) a text made
 * of the input's own first bytes, which are mostly JSON and vocabulary
 * strings, and decodes the ids back. No id may be negative. */
#include "fuzz.h"
#include "tokenizer.h"

static void encode_decode(ar_tokenizer *t, const char *text, size_t len, int add_special)
{
    int32_t *ids = NULL;
    size_t n = 0;
    fuzz_clear_error();
    if (ar_tokenizer_encode(t, text, len, add_special, &ids, &n)) { fuzz_expect_message(); return; }
    /* Not checked against ar_tokenizer_vocab_size: a post-processor may name
     * any id (BertProcessing sep ["x", 99999]) and HF emits it as given; the
     * model's forward rejects ids past its embedding (test_model). */
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0) fuzz_fail("encode returned a negative id");
    char *back = ar_tokenizer_decode(t, ids, n, add_special);
    if (!back) fuzz_fail("decode of encoded ids failed");
    free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_clear_error();
    ar_tokenizer *t = ar_tokenizer_load(fuzz_file("tokenizer.json", data, size));
    if (!t) { fuzz_expect_message(); return 0; }
    size_t len = size < 512 ? size : 512;
    encode_decode(t, (const char *)data, len, 0);
    encode_decode(t, (const char *)data, len, 1);
    static const char mixed[] = "Once upon a time, \xc3\xa9t\xc3\xa9 \xe2\x80\x94 42 tokens\n\t <s> \xff\xfe end";
    encode_decode(t, mixed, sizeof mixed - 1, 1);
    ar_tokenizer_free(t);
    return 0;
}
