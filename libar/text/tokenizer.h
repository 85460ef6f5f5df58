/* tokenizer.h — Hugging Face tokenizer.json in C, giving exactly the ids the
 * `tokenizers` library gives.
 *
 * Supported: model BPE (merges as "a b" strings or ["a","b"] pairs,
 * byte_fallback, unk_token with fuse_unk, ignore_merges); normalizers NFC, NFD,
 * NFKC, NFKD, Lowercase, Prepend, Replace, Strip and Sequence; pre-tokenizers
 * ByteLevel (GPT-2 regex, add_prefix_space), Split (regex or string, every
 * behaviour, invert), Metaspace (prepend_scheme always/first/never, split),
 * Digits, Whitespace, WhitespaceSplit and Sequence; decoders ByteLevel,
 * Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence; post-processors
 * TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel and
 * Sequence; added tokens with single_word, lstrip, rstrip and normalized.
 * Anything else is refused at load time with an error naming it.
 *
 * Input text that is not valid UTF-8 is repaired first: each maximal invalid
 * subsequence becomes U+FFFD (what Python's errors="replace" and Rust's
 * from_utf8_lossy do), then it is tokenized like that text.
 *
 * A tokenizer caches per-word results, so encode mutates it: use one
 * tokenizer per thread, or serialize the calls. */
#ifndef AR_TOKENIZER_H
#define AR_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct ar_tokenizer ar_tokenizer;

/* Load PATH, either a tokenizer.json file or a model directory holding one.
 * tokenizer_config.json next to it, if present, supplies the bos/eos names.
 * Returns NULL with ar_error set, e.g.
 * "m/tokenizer.json: unsupported model type 'Unigram'". */
ar_tokenizer *ar_tokenizer_load(const char *path);

/* Free everything (NULL is fine). */
void ar_tokenizer_free(ar_tokenizer *t);

/* Tokenize text[0..len) (need not be NUL-terminated). With add_special, the
 * post-processor's tokens are added (e.g. BOS), as HF's
 * encode(add_special_tokens=True). On success *ids is a malloc'd array of *n
 * ids (non-NULL even when *n is 0) and 0 is returned; -1 on failure. */
int ar_tokenizer_encode(ar_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, size_t *n);

/* Text of ids[0..n), as HF's decode(ids, skip_special_tokens): ids that are
 * special added tokens are left out when skip_special is set, unknown ids
 * are ignored. Returns a malloc'd NUL-terminated string, or NULL on failure. */
char *ar_tokenizer_decode(const ar_tokenizer *t, const int32_t *ids, size_t n, int skip_special);

/* Number of ids: 1 + the largest id of the vocabulary and added tokens. */
int32_t ar_tokenizer_vocab_size(const ar_tokenizer *t);

/* The token string of id (added tokens included), or NULL if there is none. */
const char *ar_tokenizer_token(const ar_tokenizer *t, int32_t id);

/* The id of a token string, or -1 if it is not in the vocabulary. */
int32_t ar_tokenizer_id(const ar_tokenizer *t, const char *token);

/* Whether id is a special added token (dropped by decode with skip_special). */
int ar_tokenizer_is_special(const ar_tokenizer *t, int32_t id);

/* The BOS id, or -1 if unknown. *added (may be NULL) is set to 1 when the
 * post-processor puts it first in every encode with add_special. The id
 * comes from the post-processor, else from tokenizer_config.json bos_token. */
int32_t ar_tokenizer_bos(const ar_tokenizer *t, int *added);

/* The EOS id, or -1 if unknown: tokenizer_config.json eos_token, else the
 * first special added token among "</s>", "<|end_of_text|>",
 * "<|endoftext|>", "<eos>", "<|im_end|>". */
int32_t ar_tokenizer_eos(const ar_tokenizer *t);

#endif
