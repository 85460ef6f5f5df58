/* stream.h — the tensor stream every ar tool reads and writes (man ar-stream(5)).
 *
 * A stream is one zstd frame (with content checksum) whose decompressed bytes
 * are a header ("ARSTREAM", version) followed by records: META (a JSON object),
 * TENSOR (name, dtype, shape, attributes JSON, raw little-endian payload) and a
 * final END. The END record exists so that a stream cut exactly between two
 * records is still recognised as truncated.
 *
 * Both sides work over a FILE* (pipes included) in bounded memory: payloads are
 * written and read in pieces of any size, so a tensor never has to fit in RAM.
 * Neither side closes the FILE*; the caller owns it. */
#ifndef AR_STREAM_H
#define AR_STREAM_H
#include "dtype.h"
#include <stdint.h>
#include <stdio.h>

#define AR_STREAM_MAGIC     "ARSTREAM"   /* first 8 decompressed bytes */
#define AR_STREAM_VERSION   1u
#define AR_STREAM_MAX_DIMS  8
/* Limits the reader enforces before allocating, so a corrupt length field can
 * never make it allocate gigabytes. The writer refuses the same. */
#define AR_STREAM_MAX_NAME  4096u        /* bytes of a tensor name */
#define AR_STREAM_MAX_JSON  (64u << 20)  /* bytes of a META or attributes text */
#define AR_STREAM_DEFAULT_LEVEL 3

/* Record kinds; the values are the kind bytes in the stream. */
typedef enum { AR_REC_META = 'M', AR_REC_TENSOR = 'T', AR_REC_END = 'E' } ar_record_kind;

/* ---- Writer ---------------------------------------------------------------- */

typedef struct ar_stream_writer ar_stream_writer;

/* Start a stream on f; writes the header. name labels error messages (the
 * output file name, or "stdout"). level is the zstd level (1..19; 0 means
 * AR_STREAM_DEFAULT_LEVEL). NULL (with ar_error) on failure. */
ar_stream_writer *ar_stream_writer_open(FILE *f, const char *name, int level);

/* Write a META record. json must be a JSON object text. */
int ar_stream_write_meta(ar_stream_writer *w, const char *json);

/* Write a whole TENSOR record: data holds prod(shape) elements of dtype in
 * little-endian order. attrs_json is a JSON object text; NULL or "" mean "{}".
 * ndim may be 0 (a scalar: one element); a zero dimension makes an empty payload. */
int ar_stream_write_tensor(ar_stream_writer *w, const char *name, ar_dtype dtype, int ndim,
                           const int64_t *shape, const char *attrs_json, const void *data);

/* Incremental form of ar_stream_write_tensor: begin writes the record header,
 * write_data appends n payload bytes (any split is fine), end checks that
 * exactly prod(shape) * dtype size bytes were given. */
int ar_stream_begin_tensor(ar_stream_writer *w, const char *name, ar_dtype dtype, int ndim,
                           const int64_t *shape, const char *attrs_json);
int ar_stream_write_data(ar_stream_writer *w, const void *data, size_t n);
int ar_stream_end_tensor(ar_stream_writer *w);

/* Write END, finish the zstd frame, fflush f and free w. Returns -1 if anything
 * failed, now or in an earlier call (w is freed either way). A tensor still
 * open is an error and END is then not written. */
int ar_stream_writer_close(ar_stream_writer *w);

/* Free w without writing END, leaving an unfinished stream that every reader
 * rejects as truncated. For error paths. NULL is allowed. */
void ar_stream_writer_abort(ar_stream_writer *w);

/* ---- Reader ---------------------------------------------------------------- */

typedef struct ar_stream_reader ar_stream_reader;

/* One record header as returned by ar_stream_next. The strings belong to the
 * reader and stay valid until the next call to ar_stream_next or close. */
typedef struct {
    ar_record_kind kind;                /* AR_REC_META or AR_REC_TENSOR */
    const char *name;                   /* tensor name; "" for META */
    const char *json;                   /* META: its text; TENSOR: its attributes */
    ar_dtype dtype;                     /* TENSOR only */
    int ndim;                           /* TENSOR only; 0..AR_STREAM_MAX_DIMS */
    int64_t shape[AR_STREAM_MAX_DIMS];
    uint64_t nelem;                     /* prod(shape); 1 when ndim is 0 */
    uint64_t nbytes;                    /* payload bytes; 0 for META */
} ar_record;

/* Open a stream on f and check its header (magic, version). name labels error
 * messages (the input file name, or "stdin"). NULL (with ar_error) on failure. */
ar_stream_reader *ar_stream_reader_open(FILE *f, const char *name);

/* Advance to the next record, first skipping whatever of the current payload
 * was not read. Returns 1 with *rec filled, 0 at END (after checking that the
 * zstd frame ends there with a valid checksum and nothing follows), -1 on
 * error. Once 0 or -1 was returned, later calls return the same. */
int ar_stream_next(ar_stream_reader *r, ar_record *rec);

/* Read the next n bytes of the current tensor's payload into dst. Asking for
 * more than remains is an error. */
int ar_stream_read_data(ar_stream_reader *r, void *dst, size_t n);

/* Payload bytes of the current tensor not yet read. */
uint64_t ar_stream_remaining(const ar_stream_reader *r);

/* Discard the rest of the current payload (ar_stream_next does it too). */
int ar_stream_skip_data(ar_stream_reader *r);

/* Read the rest of the current payload into a malloc'd buffer (never NULL for
 * an empty payload: a 1-byte allocation). The caller frees it. NULL on error,
 * including a payload that does not fit in memory. */
void *ar_stream_read_payload(ar_stream_reader *r);

/* Free the reader (not f). NULL is allowed. */
void ar_stream_reader_close(ar_stream_reader *r);

#endif
