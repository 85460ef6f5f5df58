/* tokenizer_impl.h — internals shared by tokenizer.c, tokenizer_bpe.c,
 * tokenizer_text.c and tokenizer_containers.c. Not a public header: callers
 * use tokenizer.h.
 *
 * The pipeline mirrors Hugging Face `tokenizers`: added tokens are cut out of
 * the text, the rest is normalized, pre-tokenized into "pieces", each piece is
 * run through the BPE model, and the post-processor adds BOS/EOS. */
#ifndef AR_TOKENIZER_IMPL_H
#define AR_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

/* ---- containers ---------------------------------------------------------- */

/* Growable byte string (always NUL-terminated when p != NULL). */
typedef struct { char *p; size_t n, cap; } tk_buf;

/* Append n bytes to b. Returns 0, or -1 on out of memory. */
int tk_buf_add(tk_buf *b, const void *s, size_t n);

/* Growable int32 array (token ids). */
typedef struct { int32_t *v; size_t n, cap; } tk_ids;

/* Append one id. Returns 0, or -1 on out of memory. */
int tk_ids_add(tk_ids *a, int32_t id);

/* Open-addressing hash map from byte strings to int32 (keys are copied). */
typedef struct { char **key; uint32_t *klen; int32_t *val; size_t cap, n; } tk_map;

/* Insert or overwrite key → val. Returns 0, or -1 on out of memory. */
int tk_map_put(tk_map *m, const char *key, size_t len, int32_t val);

/* The value stored for key, or -1 when absent. */
int32_t tk_map_get(const tk_map *m, const char *key, size_t len);

/* Free the keys and tables. */
void tk_map_free(tk_map *m);

/* Pre-tokenizer pieces: byte ranges of one shared buffer. `at_start` marks a
 * piece that begins at offset 0 of the caller's original text, which
 * Metaspace's prepend_scheme "first" needs. */
typedef struct { size_t off, len; int at_start; } tk_span;
typedef struct { tk_buf bytes; tk_span *v; size_t n, cap; } tk_pieces;

/* Append a piece (copied). Empty pieces are dropped, as HF drops them. */
int tk_pieces_add(tk_pieces *p, const char *s, size_t n, int at_start);

/* Empty the list, keeping its memory for the next use. */
void tk_pieces_clear(tk_pieces *p);

/* Free the list's memory. */
void tk_pieces_free(tk_pieces *p);

/* ---- UTF-8 --------------------------------------------------------------- */

/* Length of the UTF-8 character starting at s (1 for an invalid lead byte). */
size_t tk_utf8_len(const char *s, size_t avail);

/* Copy s into out, replacing each maximal invalid subsequence by U+FFFD (the
 * policy of Rust's from_utf8_lossy and Python's errors="replace"). */
int tk_utf8_sanitize(const char *s, size_t n, tk_buf *out);

/* ---- normalizers, pre-tokenizers, decoders ------------------------------- */

typedef enum { TK_NORM_NFC, TK_NORM_NFD, TK_NORM_NFKC, TK_NORM_NFKD, TK_NORM_LOWERCASE,
               TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP } tk_norm_kind;
typedef struct {
    tk_norm_kind kind;
    char *a, *b;          /* Prepend: a = text; Replace: a = pattern, b = content */
    pcre2_code *re;       /* Replace with a Regex pattern (a unused) */
    int left, right;      /* Strip */
} tk_norm;

typedef enum { TK_SPLIT_REMOVED, TK_SPLIT_ISOLATED, TK_SPLIT_MERGED_PREV, TK_SPLIT_MERGED_NEXT,
               TK_SPLIT_CONTIGUOUS } tk_split_behavior;
typedef enum { TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE } tk_pre_kind;
typedef enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER } tk_prepend_scheme;
typedef struct {
    tk_pre_kind kind;
    pcre2_code *re;            /* Split by regex (or NULL with literal) */
    char *literal;             /* Split by string */
    tk_split_behavior behavior;
    int invert;
    int add_prefix_space;      /* ByteLevel */
    char repl[8];              /* Metaspace replacement character (UTF-8) */
    tk_prepend_scheme scheme;  /* Metaspace */
    int split;                 /* Metaspace: split on the replacement */
} tk_pre;

typedef enum { TK_DEC_REPLACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE, TK_DEC_STRIP, TK_DEC_METASPACE,
               TK_DEC_BYTELEVEL } tk_dec_kind;
typedef struct {
    tk_dec_kind kind;
    char *a, *b;               /* Replace: pattern → content; Strip/Metaspace: a = character */
    int start, stop;           /* Strip */
    tk_prepend_scheme scheme;  /* Metaspace */
} tk_dec;

/* Apply the normalizers in order to in[0..n), result in *out. */
int tk_normalize(const tk_norm *norms, int n_norms, const char *in, size_t n, tk_buf *out);

/* Run the pre-tokenizer steps over *pieces (replaced by the result); *tmp is
 * scratch space. Returns 0 or -1. */
int tk_pretokenize(const tk_pre *steps, int n_steps, tk_pieces *pieces, tk_pieces *tmp);

/* Run the decoders over the token strings toks[0..n) (owned, may be replaced
 * and their count changed) and concatenate the result into *out. */
int tk_decode_chain(const tk_dec *decs, int n_decs, char ***toks, size_t *n, tk_buf *out);

/* Compile a pattern with Unicode properties; NULL with ar_error on failure. */
pcre2_code *tk_regex(const char *pattern, const char *what);

/* The GPT-2 byte-level pre-tokenizer regex. */
extern const char tk_gpt2_pattern[];

/* ---- BPE model ----------------------------------------------------------- */

typedef struct {
    tk_map vocab;              /* token string → id */
    char **id_tok;             /* id → token string (NULL for holes) */
    int32_t n_ids;             /* 1 + largest id */
    /* merges: open addressing on (left id, right id) */
    uint64_t *mkey;            /* (left << 32 | right) + 1, 0 = empty */
    int32_t *mrank, *mnew;
    size_t mcap, n_merges;
    int32_t unk_id;            /* -1 when none */
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_id[256];      /* "<0xNN>" ids for byte_fallback, -1 if absent */
    tk_map cache;              /* word → offset into cache_ids */
    tk_ids cache_ids;          /* count, then ids, per cached word */
} tk_bpe;

/* Add merge (left, right) → merged with the given rank. */
int tk_bpe_add_merge(tk_bpe *m, int32_t left, int32_t right, int32_t merged, int32_t rank);

/* Fill byte_id[] and the id → token table once the vocabulary is complete. */
int tk_bpe_finish(tk_bpe *m);

/* Tokenize one pre-token word and append its ids to *out. Results of words
 * up to 256 bytes are cached, so this mutates m. */
int tk_bpe_word(tk_bpe *m, const char *word, size_t n, tk_ids *out);

/* Free the vocabulary, merges and cache. */
void tk_bpe_free(tk_bpe *m);

#endif
