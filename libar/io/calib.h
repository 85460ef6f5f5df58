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
 * file formats are.
 *
 * A dataset spec names several files with AutoRound's syntax (see
 * ar_calib_spec_parse and docs/calibration.md): "a.jsonl:num=64,b.txt:num=64",
 * options num=N, concat, apply_chat_template and system_prompt=TEXT. */
#ifndef AR_CALIB_H
#define AR_CALIB_H
#include "tokenizer.h"
#include <stddef.h>
#include <stdint.h>

typedef enum { AR_CALIB_WINDOWS, AR_CALIB_DOCUMENTS, AR_CALIB_MIXED } ar_calib_mode;

typedef struct {
    int32_t *ids;        /* [n, seqlen] */
    int n, seqlen;
    ar_calib_mode mode;  /* MIXED: both .txt and .jsonl sources */
    int chat_fallbacks;  /* rows the chat template refused with their system
                            messages and rendered without them (AutoRound's retry) */
} ar_calib_samples;

/* One file of a dataset spec and its options. */
typedef struct {
    char *path;
    int num;             /* num=N: exactly N samples from this file; -1 when not given */
    int concat;          /* concat: documents joined and cut into samples (.jsonl) */
    int chat;            /* apply_chat_template: rows rendered by the model's chat template (.jsonl) */
    char *system_prompt; /* system_prompt=TEXT (implies chat); NULL: "You are a helpful assistant." */
} ar_calib_source;

typedef struct {
    ar_calib_source *src;
    int n;
} ar_calib_spec;

/* Parse AutoRound's dataset syntax: files separated by ",", each followed by
 * ":"-separated options num=N, concat[=true|false],
 * apply_chat_template[=true|false], system_prompt=TEXT. A file name can hold
 * neither "," nor ":". 0, or -1 with ar_error "dataset 'SPEC': ..." for an
 * empty name, a malformed num=, split= (hub datasets only) or an unknown
 * option. */
int ar_calib_spec_parse(const char *spec, ar_calib_spec *out);
void ar_calib_spec_free(ar_calib_spec *s);

/* Build up to nsamples samples of seqlen tokens from the files of spec, as
 * AutoRound's get_dataloader does (docs/calibration.md says where local files
 * differ). Each file is sampled on its own with the same seed (.txt: windows,
 * num= or nsamples of them; .jsonl: rows shuffled, rendered through the chat
 * template of model_dir/tokenizer_config.json when asked, tokenized with
 * special tokens, joined when concat, filtered, num= of them kept when
 * given); with several files, the files are ordered by how many samples they
 * gave, those with num= give that many, the others share the rest of nsamples,
 * and the whole is shuffled with the seed and cut to nsamples. One plain file
 * gives exactly what ar_calib_build gives. model_dir may be NULL when no file
 * asks for the chat template. */
int ar_calib_build_spec(ar_tokenizer *tok, const char *model_dir, const ar_calib_spec *spec, int nsamples,
                        int seqlen, uint64_t seed, ar_calib_samples *out);

/* The texts of the rows of one .jsonl source in file order, rendered by the
 * chat template when src->chat (what is tokenized; for checking a template
 * against a reference). *texts is a malloc'd array of *n malloc'd strings.
 * *fallbacks counts rows rendered without their system messages. */
int ar_calib_texts(const char *model_dir, const ar_calib_source *src, char ***texts, size_t *n, int *fallbacks);

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
