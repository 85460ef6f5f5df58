/* test_stream.c — the tensor stream: round trips of every dtype and shape,
 * large payloads through a pipe in odd pieces, and a reader that rejects every
 * truncation, corruption and malformed header it is shown. */
#include "dtype.h"
#include "error.h"
#include "stream.h"
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

/* ---- helpers ---------------------------------------------------------------- */

/* A readable FILE* holding exactly n bytes (tmpfile, since fmemopen rejects n = 0). */
static FILE *file_of(const void *p, size_t n)
{
    FILE *f = tmpfile();
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    rewind(f);
    return f;
}

/* Deterministic bytes that differ from record to record (seeded xorshift). */
static void fill_bytes(uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = (uint8_t)(x >> 24);
    }
}

/* Compress raw decompressed bytes into a stream the way the writer would
 * (one frame, checksum on), so tests can hand-craft malformed contents. */
static size_t compress_raw(const void *raw, size_t n, uint8_t *dst, size_t cap)
{
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    size_t z = ZSTD_compress2(c, dst, cap, raw, n);
    ZSTD_freeCCtx(c);
    cr_assert(!ZSTD_isError(z));
    return z;
}

/* Read a whole stream, consuming payloads; returns the final next() result (0
 * or -1) and counts records in *count. */
static int drain(const void *p, size_t n, int *count)
{
    FILE *f = file_of(p, n);
    ar_stream_reader *r = ar_stream_reader_open(f, "mem.ars");
    int rc = -1;
    *count = 0;
    if (r) {
        ar_record rec;
        while ((rc = ar_stream_next(r, &rec)) == 1) {
            (*count)++;
            if (rec.kind == AR_REC_TENSOR) free(ar_stream_read_payload(r));
        }
    }
    ar_stream_reader_close(r);
    fclose(f);
    return rc;
}

/* A growable byte buffer for hand-crafted decompressed streams. */
typedef struct { uint8_t b[1024]; size_t n; } raw_t;
static void raw_put(raw_t *r, const void *p, size_t n) { memcpy(r->b + r->n, p, n), r->n += n; }
static void raw_u8(raw_t *r, uint8_t v) { raw_put(r, &v, 1); }
static void raw_u32(raw_t *r, uint32_t v) { raw_put(r, &v, 4); }   /* host is little-endian */
static void raw_u64(raw_t *r, uint64_t v) { raw_put(r, &v, 8); }
static void raw_header(raw_t *r) { raw_put(r, "ARSTREAM", 8), raw_u32(r, 1); }
static void raw_str(raw_t *r, const char *s) { raw_u32(r, (uint32_t)strlen(s)), raw_put(r, s, strlen(s)); }

/* Compress r and expect the reader to fail with a message containing want. */
static void expect_error(const raw_t *r, const char *want)
{
    uint8_t z[2048];
    size_t zn = compress_raw(r->b, r->n, z, sizeof z);
    int count;
    cr_assert_eq(drain(z, zn, &count), -1, "accepted a bad stream (expected '%s')", want);
    cr_assert(strstr(ar_last_error(), want), "message '%s' lacks '%s'", ar_last_error(), want);
    cr_assert(!strncmp(ar_last_error(), "mem.ars: ", 9), "message '%s' does not name the file", ar_last_error());
    cr_assert(!strchr(ar_last_error(), '\n'));
}

/* Write a small stream (META, two tensors) into a malloc'd buffer. */
static uint8_t *small_stream(size_t *n)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, n);
    ar_stream_writer *w = ar_stream_writer_open(f, "mem.ars", 0);
    cr_assert(w, "%s", ar_last_error());
    int64_t shape[2] = {3, 4};
    int32_t ids[12];
    for (int i = 0; i < 12; i++) ids[i] = i * 1000 - 7;
    cr_assert_eq(ar_stream_write_meta(w, "{\"tool\":\"test\",\"n\":3}"), 0);
    cr_assert_eq(ar_stream_write_tensor(w, "input_ids", AR_I32, 2, shape, "{\"k\":1}", ids), 0);
    cr_assert_eq(ar_stream_write_tensor(w, "scale", AR_F32, 1, shape, NULL, ids), 0);
    cr_assert_eq(ar_stream_writer_close(w), 0, "%s", ar_last_error());
    fclose(f);
    return (uint8_t *)buf;
}

/* ---- round trips -------------------------------------------------------------- */

static const int64_t shapes[][AR_STREAM_MAX_DIMS] = {{0}, {0, 3}, {7}, {2, 3, 5}, {1, 2, 1, 2, 1, 2, 1, 3}};
static const int ndims[] = {0, 2, 1, 3, 8};
#define NSHAPES (int)(sizeof ndims / sizeof *ndims)

static uint64_t elems(int s)
{
    uint64_t n = 1;
    for (int i = 0; i < ndims[s]; i++) n *= (uint64_t)shapes[s][i];
    return n;
}

Test(stream, round_trip_every_dtype_and_shape)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ar_stream_writer *w = ar_stream_writer_open(f, "rt.ars", 5);
    cr_assert(w, "%s", ar_last_error());
    cr_assert_eq(ar_stream_write_meta(w, "{\"model\":\"x\"}"), 0);
    uint8_t data[4096];
    for (int t = 0; t < AR_DTYPE_COUNT; t++)
        for (int s = 0; s < NSHAPES; s++) {
            char name[32], attrs[64];
            snprintf(name, sizeof name, "t%d.%d", t, s);
            snprintf(attrs, sizeof attrs, "{\"dtype\":\"%s\",\"s\":%d}", ar_dtype_name(t), s);
            fill_bytes(data, sizeof data, (uint32_t)(t * 100 + s));
            cr_assert_eq(ar_stream_write_tensor(w, name, t, ndims[s], shapes[s], attrs, data), 0, "%s",
                         ar_last_error());
        }
    cr_assert_eq(ar_stream_writer_close(w), 0, "%s", ar_last_error());
    fclose(f);

    FILE *in = file_of(buf, len);
    ar_stream_reader *r = ar_stream_reader_open(in, "rt.ars");
    cr_assert(r, "%s", ar_last_error());
    ar_record rec;
    cr_assert_eq(ar_stream_next(r, &rec), 1, "%s", ar_last_error());
    cr_assert_eq(rec.kind, AR_REC_META);
    cr_assert_str_eq(rec.json, "{\"model\":\"x\"}");
    cr_assert_eq(rec.nbytes, 0);
    for (int t = 0; t < AR_DTYPE_COUNT; t++)
        for (int s = 0; s < NSHAPES; s++) {
            char name[32], attrs[64];
            snprintf(name, sizeof name, "t%d.%d", t, s);
            snprintf(attrs, sizeof attrs, "{\"dtype\":\"%s\",\"s\":%d}", ar_dtype_name(t), s);
            cr_assert_eq(ar_stream_next(r, &rec), 1, "%s", ar_last_error());
            cr_assert_eq(rec.kind, AR_REC_TENSOR);
            cr_assert_str_eq(rec.name, name);
            cr_assert_str_eq(rec.json, attrs);
            cr_assert_eq(rec.dtype, t);
            cr_assert_eq(rec.ndim, ndims[s]);
            for (int i = 0; i < ndims[s]; i++) cr_assert_eq(rec.shape[i], shapes[s][i]);
            cr_assert_eq(rec.nelem, elems(s));
            cr_assert_eq(rec.nbytes, elems(s) * ar_dtype_size(t));
            uint8_t *got = ar_stream_read_payload(r);
            cr_assert(got, "%s", ar_last_error());
            fill_bytes(data, sizeof data, (uint32_t)(t * 100 + s));
            cr_assert_eq(memcmp(got, data, rec.nbytes), 0, "payload of %s differs", name);
            free(got);
        }
    cr_assert_eq(ar_stream_next(r, &rec), 0, "%s", ar_last_error());
    cr_assert_eq(ar_stream_next(r, &rec), 0, "END must stay END");
    ar_stream_reader_close(r);
    fclose(in);
    free(buf);
}

Test(stream, unread_payloads_are_skipped)
{
    size_t n;
    uint8_t *s = small_stream(&n);
    FILE *f = file_of(s, n);
    ar_stream_reader *r = ar_stream_reader_open(f, "mem.ars");
    ar_record rec;
    cr_assert_eq(ar_stream_next(r, &rec), 1);
    cr_assert_eq(ar_stream_next(r, &rec), 1);
    int32_t first;
    cr_assert_eq(ar_stream_read_data(r, &first, 4), 0);
    cr_assert_eq(first, -7);
    cr_assert_eq(ar_stream_remaining(r), 44);
    cr_assert_eq(ar_stream_next(r, &rec), 1, "%s", ar_last_error());
    cr_assert_str_eq(rec.name, "scale");
    cr_assert_str_eq(rec.json, "{}");
    int32_t too_much[13];
    cr_assert_eq(ar_stream_read_data(r, too_much, sizeof too_much), -1, "read past the payload accepted");
    cr_assert(strstr(ar_last_error(), "only 12 left"), "%s", ar_last_error());
    cr_assert_eq(ar_stream_next(r, &rec), 0, "%s", ar_last_error());
    ar_stream_reader_close(r);
    fclose(f);
    free(s);
}

/* ---- a large tensor through a pipe -------------------------------------------- */

#define BIG_ROWS 1531
#define BIG_COLS 1031   /* 1531 * 1031 * 4 bytes ~ 6.3 MB, well past zstd's buffers */

/* Byte at of the big tensor's payload: the little-endian bytes of float at/4. */
static uint8_t big_byte(size_t at)
{
    size_t i = at / 4;
    float v = (float)(i % 9973) * 0.5f - (float)(i % 7);
    uint8_t b[4];
    memcpy(b, &v, 4);
    return b[at % 4];
}

/* Writer thread: streams the tensor in 9973-byte pieces (splitting floats),
 * never holding it whole. */
static void *big_writer(void *arg)
{
    FILE *f = fdopen(*(int *)arg, "w");
    ar_stream_writer *w = ar_stream_writer_open(f, "pipe", 1);
    int64_t shape[2] = {BIG_ROWS, BIG_COLS};
    int ok = w && !ar_stream_begin_tensor(w, "big", AR_F32, 2, shape, "{\"note\":\"large\"}");
    uint8_t piece[9973];
    size_t total = (size_t)BIG_ROWS * BIG_COLS * 4, done = 0;
    while (ok && done < total) {
        size_t n = total - done < sizeof piece ? total - done : sizeof piece;
        for (size_t k = 0; k < n; k++) piece[k] = big_byte(done + k);
        ok = !ar_stream_write_data(w, piece, n);
        done += n;
    }
    ok = ok && !ar_stream_end_tensor(w) && !ar_stream_writer_close(w);
    fclose(f);
    return (void *)(intptr_t)ok;
}

Test(stream, large_tensor_through_pipe_in_odd_chunks)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pthread_t th;
    pthread_create(&th, NULL, big_writer, &fds[1]);
    FILE *f = fdopen(fds[0], "r");
    ar_stream_reader *r = ar_stream_reader_open(f, "pipe");
    cr_assert(r, "%s", ar_last_error());
    ar_record rec;
    cr_assert_eq(ar_stream_next(r, &rec), 1, "%s", ar_last_error());
    cr_assert_eq(rec.nbytes, (uint64_t)BIG_ROWS * BIG_COLS * 4);
    size_t piece = 1, done = 0;
    uint8_t *buf = malloc(300001);
    while (done < rec.nbytes) {
        piece = piece * 7 % 300001 + 1;   /* odd sizes from 1 byte to ~300 KB */
        size_t n = rec.nbytes - done < piece ? rec.nbytes - done : piece;
        cr_assert_eq(ar_stream_read_data(r, buf, n), 0, "%s", ar_last_error());
        for (size_t k = 0; k < n; k++)
            if (buf[k] != big_byte(done + k)) cr_assert_fail("byte %zu differs", done + k);
        done += n;
    }
    cr_assert_eq(ar_stream_next(r, &rec), 0, "%s", ar_last_error());
    void *ok;
    pthread_join(th, &ok);
    cr_assert(ok, "writer failed: %s", ar_last_error());
    ar_stream_reader_close(r);
    fclose(f);
    free(buf);
}

/* ---- truncation and corruption ---------------------------------------------------- */

Test(stream, every_truncation_is_an_error)
{
    size_t n;
    uint8_t *s = small_stream(&n);
    int count;
    cr_assert_eq(drain(s, n, &count), 0, "%s", ar_last_error());
    cr_assert_eq(count, 3);
    for (size_t cut = 0; cut < n; cut++) {
        cr_assert_eq(drain(s, cut, &count), -1, "stream cut at %zu of %zu accepted", cut, n);
        const char *m = ar_last_error();
        cr_assert(strstr(m, "truncated") || (cut == 0 && strstr(m, "empty input")), "cut %zu: '%s'", cut, m);
    }
    free(s);
}

Test(stream, cut_at_a_record_boundary_is_truncated)
{
    raw_t r = {.n = 0};
    raw_header(&r);
    raw_u8(&r, 'M'), raw_str(&r, "{}");
    expect_error(&r, "truncated stream (no END record)");
}

Test(stream, cut_inside_a_payload_names_the_tensor)
{
    raw_t r = {.n = 0};
    raw_header(&r);
    raw_u8(&r, 'T'), raw_str(&r, "input_ids"), raw_u8(&r, AR_I32), raw_u8(&r, 1), raw_u64(&r, 4);
    raw_str(&r, "{}"), raw_u64(&r, 16), raw_u32(&r, 1);
    expect_error(&r, "ended inside tensor 'input_ids'");
}

/* zstd's checksum covers the decompressed bytes, so a flip that leaves them
 * unchanged (an unused bit of an entropy table, the window size) is harmless.
 * Every other flip must be an error: never a different stream accepted. */
Test(stream, flipped_bits_are_errors_or_harmless)
{
    size_t n;
    uint8_t *s = small_stream(&n);
    uint8_t orig[512], got[512];
    size_t on = ZSTD_decompress(orig, sizeof orig, s, n);
    int trials = 0, errors = 0;
    for (size_t at = 0; at < n; at++)
        for (int bit = 0; bit < 8; bit += 7, trials++) {
            s[at] ^= (uint8_t)(1 << bit);
            int count;
            if (drain(s, n, &count) == -1) {
                errors++;
            } else {
                size_t gn = ZSTD_decompress(got, sizeof got, s, n);
                cr_assert(gn == on && !memcmp(got, orig, on), "flip of bit %d at byte %zu changed the data", bit, at);
            }
            s[at] ^= (uint8_t)(1 << bit);
        }
    cr_assert_gt(errors, trials * 9 / 10, "only %d of %d flips detected", errors, trials);
    free(s);
}

Test(stream, flipped_payload_byte_is_a_checksum_error)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ar_stream_writer *w = ar_stream_writer_open(f, "mem.ars", 0);
    uint8_t noise[4096];
    fill_bytes(noise, sizeof noise, 42);   /* incompressible: stored nearly verbatim */
    int64_t shape[1] = {sizeof noise};
    cr_assert_eq(ar_stream_write_tensor(w, "noise", AR_U8, 1, shape, NULL, noise), 0);
    cr_assert_eq(ar_stream_writer_close(w), 0);
    fclose(f);
    buf[len / 2] ^= 0x10;
    int count;
    cr_assert_eq(drain(buf, len, &count), -1, "corrupt payload accepted");
    cr_assert(strstr(ar_last_error(), "mem.ars: corrupt data"), "%s", ar_last_error());
    free(buf);
}

Test(stream, trailing_bytes_are_an_error)
{
    size_t n;
    uint8_t *s = small_stream(&n);
    uint8_t *t = malloc(n + n);
    memcpy(t, s, n), memcpy(t + n, s, n);
    int count;
    cr_assert_eq(drain(t, n + n, &count), -1);
    cr_assert(strstr(ar_last_error(), "trailing"), "%s", ar_last_error());
    free(t), free(s);
}

Test(stream, not_zstd_and_empty)
{
    int count;
    cr_assert_eq(drain("hello, this is plain text\n", 26, &count), -1);
    cr_assert(strstr(ar_last_error(), "not a tensor stream"), "%s", ar_last_error());
    cr_assert_eq(drain("", 0, &count), -1);
    cr_assert(strstr(ar_last_error(), "empty input"), "%s", ar_last_error());
}

/* ---- malformed contents -------------------------------------------------------------- */

Test(stream, bad_magic)
{
    raw_t r = {.n = 0};
    raw_put(&r, "ARSTREAX", 8), raw_u32(&r, 1), raw_u8(&r, 'E');
    expect_error(&r, "bad magic");
}

Test(stream, bad_version)
{
    raw_t r = {.n = 0};
    raw_put(&r, "ARSTREAM", 8), raw_u32(&r, 2), raw_u8(&r, 'E');
    expect_error(&r, "unsupported stream version 2");
}

Test(stream, absurd_name_length)
{
    raw_t r = {.n = 0};
    raw_header(&r);
    raw_u8(&r, 'T'), raw_u32(&r, 0xfffffff0u), raw_put(&r, "x", 1);
    expect_error(&r, "name length 4294967280 out of range");
}

Test(stream, absurd_json_length)
{
    raw_t r = {.n = 0};
    raw_header(&r);
    raw_u8(&r, 'M'), raw_u32(&r, 0x7fffffffu), raw_put(&r, "{}", 2);
    expect_error(&r, "exceeds the 64 MiB limit");
}

Test(stream, json_must_be_an_object)
{
    raw_t r = {.n = 0};
    raw_header(&r);
    raw_u8(&r, 'M'), raw_str(&r, "{\"a\":"), raw_u8(&r, 'E');
    expect_error(&r, "not a valid JSON object");
    r.n = 0, raw_header(&r), raw_u8(&r, 'M'), raw_str(&r, "[1]"), raw_u8(&r, 'E');
    expect_error(&r, "not a valid JSON object");
    r.n = 0, raw_header(&r), raw_u8(&r, 'M'), raw_str(&r, "{} x"), raw_u8(&r, 'E');
    expect_error(&r, "not a valid JSON object");
    r.n = 0, raw_header(&r), raw_u8(&r, 'M'), raw_u32(&r, 3), raw_put(&r, "{}\0", 3), raw_u8(&r, 'E');
    expect_error(&r, "contains a NUL byte");
}

Test(stream, names_must_be_printable_utf8)
{
    raw_t r = {.n = 0};
    raw_header(&r), raw_u8(&r, 'T'), raw_str(&r, "a\tb");
    expect_error(&r, "control character");
    r.n = 0, raw_header(&r), raw_u8(&r, 'T'), raw_str(&r, "caf\xc3");
    expect_error(&r, "not valid UTF-8");
    r.n = 0, raw_header(&r), raw_u8(&r, 'T'), raw_u32(&r, 0);
    expect_error(&r, "name length 0 out of range");
}

/* A tensor record header with the given dtype code, dims and stated size. */
static void raw_tensor(raw_t *r, uint8_t dtype, uint8_t ndim, const uint64_t *dims, uint64_t nbytes)
{
    raw_u8(r, 'T'), raw_str(r, "w"), raw_u8(r, dtype), raw_u8(r, ndim);
    for (int i = 0; i < ndim; i++) raw_u64(r, dims[i]);
    raw_str(r, "{}"), raw_u64(r, nbytes);
}

Test(stream, bad_dtype_ndim_shape_and_size)
{
    uint64_t dims[9] = {2, 2, 1, 1, 1, 1, 1, 1, 1};
    raw_t r = {.n = 0};
    raw_header(&r), raw_tensor(&r, AR_DTYPE_COUNT, 2, dims, 4 * 4);
    expect_error(&r, "unknown dtype code");
    r.n = 0, raw_header(&r), raw_tensor(&r, AR_U8, 9, dims, 4);
    expect_error(&r, "ndim 9 exceeds 8");
    uint64_t huge[2] = {1ull << 40, 1ull << 40};
    r.n = 0, raw_header(&r), raw_tensor(&r, AR_U8, 2, huge, 0);
    expect_error(&r, "shape overflows");
    uint64_t neg[1] = {(uint64_t)-3};
    r.n = 0, raw_header(&r), raw_tensor(&r, AR_U8, 1, neg, 0);
    expect_error(&r, "negative dimension");
    r.n = 0, raw_header(&r), raw_tensor(&r, AR_F32, 2, dims, 15);
    expect_error(&r, "payload size 15 does not match");
}

Test(stream, unknown_record_kind_and_data_after_end)
{
    raw_t r = {.n = 0};
    raw_header(&r), raw_u8(&r, 'X');
    expect_error(&r, "unknown record kind 0x58 at decompressed offset 12");
    r.n = 0, raw_header(&r), raw_u8(&r, 'E'), raw_u8(&r, 'E');
    expect_error(&r, "data after the END record");
}

/* ---- writer misuse ------------------------------------------------------------------- */

Test(stream, writer_rejects_misuse_and_leaves_a_truncated_stream)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ar_stream_writer *w = ar_stream_writer_open(f, "out.ars", 0);
    int64_t shape[1] = {4};
    cr_assert_eq(ar_stream_write_tensor(w, "bad", AR_U8, 1, shape, "[1,2]", "abcd"), -1);
    cr_assert(strstr(ar_last_error(), "out.ars: JSON text is not a valid JSON object"), "%s", ar_last_error());
    cr_assert_eq(ar_stream_write_meta(w, "{}"), -1, "writer kept going after a failure");
    cr_assert_eq(ar_stream_writer_close(w), -1);
    fclose(f);
    int count;
    cr_assert_eq(drain(buf, len, &count), -1, "a failed writer produced a complete stream");
    free(buf);

    buf = NULL;
    f = open_memstream(&buf, &len);
    w = ar_stream_writer_open(f, "out.ars", 0);
    cr_assert_eq(ar_stream_begin_tensor(w, "t", AR_U8, 1, shape, NULL), 0);
    cr_assert_eq(ar_stream_write_data(w, "abc", 3), 0);
    cr_assert_eq(ar_stream_write_data(w, "de", 2), -1, "payload overflow accepted");
    cr_assert_eq(ar_stream_writer_close(w), -1);
    fclose(f);
    free(buf);

    buf = NULL;
    f = open_memstream(&buf, &len);
    w = ar_stream_writer_open(f, "out.ars", 0);
    cr_assert_eq(ar_stream_begin_tensor(w, "t", AR_U8, 1, shape, NULL), 0);
    cr_assert_eq(ar_stream_write_data(w, "abc", 3), 0);
    cr_assert_eq(ar_stream_end_tensor(w), -1);
    cr_assert(strstr(ar_last_error(), "1 of 4 payload bytes missing"), "%s", ar_last_error());
    ar_stream_writer_abort(w);
    fclose(f);
    free(buf);
    cr_assert_null(ar_stream_writer_open(stdout, "x", 99), "level 99 accepted");
}
