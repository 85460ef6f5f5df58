/* calib_stream.h — reading the calibration stream ar-calib writes (ar-calib(1),
 * ar-stream(5)): META records naming the model ("model", "config_fnv1a64",
 * "pad_token_id", and ar-scheme's "layer_config"), the token ids
 * "input_ids" (i32 [n, L]) and the embedding outputs "hidden" (bf16 or f32
 * [n, L, C]). One reader for every tool that takes such a stream: ar-tune
 * keeps it all, ar-scheme passes it through to its output and keeps the ids. */
#ifndef AR_CALIB_STREAM_H
#define AR_CALIB_STREAM_H
#include "stream.h"
#include <stdint.h>
#include <stdio.h>

typedef struct {
    char *src;              /* the name the stream was read under (a file name or "<stdin>") */
    char *model;            /* the first META "model", or NULL */
    char *config_digest;    /* the first META "config_fnv1a64", or NULL */
    int n, T, C;            /* samples, tokens per sample, hidden size (C 0 without hidden) */
    int pad_key;            /* 1 when a META has pad_token_id (streams made before it: none) */
    int pad_id;             /* that pad_token_id; -1 for null (the tokenizer has none) */
    int32_t *ids;           /* [n, T] */
    uint16_t *hidden;       /* [n, T, C] bf16 (f32 streams are narrowed), or NULL when not kept */
    char *layer_config;     /* the last META "layer_config" object as JSON text (ar-scheme's), or NULL */
    int n_layer_configs;    /* METAs that carry a "layer_config" key */
    /* hidden holds the FP inputs of decoder block `block` (META "fp_inputs": {"block", "batch_size",
       "amp", "threads"}, ar-calib --upto-block; absent: 0, the embedding outputs) and the forward
       settings that made them, which a tuning run from them must share to match a whole run */
    int block, fp_batch_size, fp_amp;
    long fp_threads;
} ar_calib_data;

/* Read the calibration stream on f, named src in messages, into *d (zeroed
 * first). keep_hidden: 1 keeps the activations (bf16 [n, T, C], checked
 * against input_ids), 0 skips them. copy: NULL, or a writer that receives
 * every record unchanged, in order (a pass-through). The last input_ids and
 * hidden records win. Errors name src: "X: input_ids must be i32 [n, L] with
 * L >= 2", "X: not a calibration stream (needs input_ids and hidden)" (no
 * input_ids and, when kept, no hidden), "X: META pad_token_id must be a token
 * id or null", ... 0, or -1 with ar_error (d is freed then). */
int ar_calib_stream_read(FILE *f, const char *src, ar_stream_writer *copy, int keep_hidden, ar_calib_data *d);

/* ar_calib_stream_read of the file at path, or of standard input when path
 * is NULL or "-" (named "<stdin>"), keeping the activations. "X: cannot open"
 * when the file cannot be opened. 0 or -1 with ar_error. */
int ar_calib_stream_load(const char *path, ar_calib_data *d);

/* Free what d holds and zero it (a zeroed d is fine). */
void ar_calib_data_free(ar_calib_data *d);

#endif
