/* stream.c — writer and reader of the ar tensor stream; format in man ar-stream(5).
 *
 * Decompressed layout (all integers little-endian):
 *   "ARSTREAM" u32 version
 *   'M' u32 len, JSON object text
 *   'T' u32 name_len, name, u8 dtype, u8 ndim, i64 shape[ndim],
 *       u32 attrs_len, JSON object text, u64 nbytes, payload
 *   'E'
 * Everything is one zstd frame with a content checksum. */
#include "stream.h"
#include "error.h"
#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zstd.h>
#include <zstd_errors.h>

/* Payloads go out exactly as they are in memory. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the tensor stream assumes a little-endian host");

/* ---- Shared validation ------------------------------------------------------ */

/* Why a tensor description is invalid, or NULL if it is fine. On success
 * *nelem and *nbytes receive the element and payload byte counts. The byte
 * count must fit in an int64 so every reader can represent it. */
static const char *tensor_problem(int dtype, int ndim, const int64_t *shape, uint64_t *nelem,
                                  uint64_t *nbytes)
{
    if (dtype < 0 || dtype >= AR_DTYPE_COUNT) return "unknown dtype code";
    if (ndim < 0 || ndim > AR_STREAM_MAX_DIMS) return "ndim out of range 0..8";
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return "negative dimension";
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n)) return "shape overflows 64 bits";
    }
    uint64_t bytes;
    if (__builtin_mul_overflow(n, (uint64_t)ar_dtype_size((ar_dtype)dtype), &bytes) || bytes > INT64_MAX)
        return "payload size overflows 63 bits";
    *nelem = n;
    *nbytes = bytes;
    return NULL;
}

/* Why a META/attributes text of n bytes is invalid, or NULL. The text must be
 * a JSON object so that readers can always hand it to a JSON parser. */
static const char *json_problem(const char *s, size_t n)
{
    if (n > AR_STREAM_MAX_JSON) return "JSON text longer than 64 MiB";
    if (memchr(s, 0, n)) return "JSON text contains a NUL byte";
    /* s[n] is the terminating NUL; requiring it rejects trailing garbage */
    cJSON *j = cJSON_ParseWithLengthOpts(s, n + 1, NULL, 1);
    int ok = cJSON_IsObject(j);
    cJSON_Delete(j);
    return ok ? NULL : "JSON text is not a valid JSON object";
}

/* Why a tensor name of n bytes is invalid, or NULL. Names must be printable
 * UTF-8 so that ar-dump's one-line-per-record output and other languages'
 * string types can always hold them. */
static const char *name_problem(const char *s, size_t n)
{
    if (n == 0) return "empty tensor name";
    if (n > AR_STREAM_MAX_NAME) return "tensor name longer than 4096 bytes";
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t len = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (len <= 0) return "tensor name is not valid UTF-8";
        if (c < 0x20 || c == 0x7f) return "tensor name contains a control character";
        i += (size_t)len;
    }
    return NULL;
}

static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

/* ---- Writer ------------------------------------------------------------------ */

struct ar_stream_writer {
    FILE *f;
    char *name;                         /* for messages */
    ZSTD_CCtx *cctx;
    uint8_t *out;                       /* compressed bytes on their way to f */
    size_t out_size;
    int failed;                         /* sticky: a failed stream never gets its END */
    int in_tensor;
    uint64_t remaining;                 /* payload bytes the open tensor still expects */
    uint64_t nbytes;                    /* the open tensor's payload size */
    char tname[AR_STREAM_MAX_NAME + 1]; /* the open tensor's name, for messages */
};

/* Record a writer failure as "name: message"; returns -1. */
__attribute__((format(printf, 2, 3))) static int werr(ar_stream_writer *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ar_verror_at(w->name, 512, fmt, ap);
    va_end(ap);
    w->failed = 1;
    return -1;
}

/* Feed n bytes to the compressor and write whatever it emits. mode
 * ZSTD_e_end also finishes the frame (checksum included). */
static int w_push(ar_stream_writer *w, const void *p, size_t n, ZSTD_EndDirective mode)
{
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        ZSTD_outBuffer out = {w->out, w->out_size, 0};
        size_t left = ZSTD_compressStream2(w->cctx, &out, &in, mode);
        if (ZSTD_isError(left)) return werr(w, "zstd compression failed: %s", ZSTD_getErrorName(left));
        if (out.pos && fwrite(w->out, 1, out.pos, w->f) != out.pos)
            return werr(w, "write error: %s", strerror(errno));
        if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return 0;
    }
}

/* Common guard of every writing call: refuse after a failure, and refuse
 * records while a tensor payload is incomplete. */
static int w_ready(ar_stream_writer *w, int want_tensor)
{
    if (w->failed) return ar_error("%s: stream writer already failed", w->name);
    if (want_tensor && !w->in_tensor) return werr(w, "payload written outside a tensor");
    if (!want_tensor && w->in_tensor)
        return werr(w, "tensor '%s' still open (%llu of %llu payload bytes missing)", w->tname,
                    (unsigned long long)w->remaining, (unsigned long long)w->nbytes);
    return 0;
}

static int w_set_params(ar_stream_writer *w, int level)
{
    size_t e1 = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, level);
    size_t e2 = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    if (ZSTD_isError(e1) || ZSTD_isError(e2)) return werr(w, "zstd level %d not accepted", level);
    return 0;
}

ar_stream_writer *ar_stream_writer_open(FILE *f, const char *name, int level)
{
    if (level == 0) level = AR_STREAM_DEFAULT_LEVEL;
    if (level < 1 || level > ZSTD_maxCLevel()) {
        ar_error("%s: zstd level %d out of range 1..%d", name, level, ZSTD_maxCLevel());
        return NULL;
    }
    ar_stream_writer *w = calloc(1, sizeof *w);
    if (!w) { ar_error("%s: out of memory", name); return NULL; }
    w->f = f;
    w->name = strdup(name);
    w->cctx = ZSTD_createCCtx();
    w->out_size = ZSTD_CStreamOutSize();
    w->out = malloc(w->out_size);
    if (!w->name || !w->cctx || !w->out) {
        ar_error("%s: out of memory", name);
        ar_stream_writer_abort(w);
        return NULL;
    }
    uint8_t head[12];
    memcpy(head, AR_STREAM_MAGIC, 8);
    put_u32(head + 8, AR_STREAM_VERSION);
    if (w_set_params(w, level) || w_push(w, head, sizeof head, ZSTD_e_continue)) {
        ar_stream_writer_abort(w);
        return NULL;
    }
    return w;
}

/* Write a u32 length followed by a JSON object text (NULL or "" mean "{}"). */
static int w_json(ar_stream_writer *w, const char *json)
{
    if (!json || !*json) json = "{}";
    size_t n = strlen(json);
    const char *why = json_problem(json, n);
    if (why) return werr(w, "%s", why);
    uint8_t len[4];
    put_u32(len, (uint32_t)n);
    return w_push(w, len, 4, ZSTD_e_continue) || w_push(w, json, n, ZSTD_e_continue) ? -1 : 0;
}

int ar_stream_write_meta(ar_stream_writer *w, const char *json)
{
    if (w_ready(w, 0)) return -1;
    if (!json || !*json) return werr(w, "empty META record");
    return w_push(w, "M", 1, ZSTD_e_continue) || w_json(w, json) ? -1 : 0;
}

int ar_stream_begin_tensor(ar_stream_writer *w, const char *name, ar_dtype dtype, int ndim,
                           const int64_t *shape, const char *attrs_json)
{
    if (w_ready(w, 0)) return -1;
    size_t name_len = name ? strlen(name) : 0;
    const char *why = name_problem(name ? name : "", name_len);
    if (why) return werr(w, "%s", why);
    uint64_t nelem, nbytes;
    if ((why = tensor_problem((int)dtype, ndim, shape, &nelem, &nbytes)))
        return werr(w, "tensor '%s': %s", name, why);
    uint8_t head[1 + 4], dims[2 + 8 * AR_STREAM_MAX_DIMS], size[8];
    head[0] = 'T';
    put_u32(head + 1, (uint32_t)name_len);
    dims[0] = (uint8_t)dtype;
    dims[1] = (uint8_t)ndim;
    for (int i = 0; i < ndim; i++) put_u64(dims + 2 + 8 * i, (uint64_t)shape[i]);
    put_u64(size, nbytes);
    if (w_push(w, head, sizeof head, ZSTD_e_continue) || w_push(w, name, name_len, ZSTD_e_continue) ||
        w_push(w, dims, 2 + 8 * (size_t)ndim, ZSTD_e_continue) || w_json(w, attrs_json) ||
        w_push(w, size, sizeof size, ZSTD_e_continue))
        return -1;
    memcpy(w->tname, name, name_len + 1);
    w->in_tensor = 1;
    w->remaining = w->nbytes = nbytes;
    return 0;
}

int ar_stream_write_data(ar_stream_writer *w, const void *data, size_t n)
{
    if (w_ready(w, 1)) return -1;
    if (n > w->remaining)
        return werr(w, "tensor '%s': %zu payload bytes given, only %llu expected", w->tname, n,
                    (unsigned long long)w->remaining);
    if (w_push(w, data, n, ZSTD_e_continue)) return -1;
    w->remaining -= n;
    return 0;
}

int ar_stream_end_tensor(ar_stream_writer *w)
{
    if (w_ready(w, 1)) return -1;
    if (w->remaining)
        return werr(w, "tensor '%s': %llu of %llu payload bytes missing", w->tname,
                    (unsigned long long)w->remaining, (unsigned long long)w->nbytes);
    w->in_tensor = 0;
    return 0;
}

int ar_stream_write_tensor(ar_stream_writer *w, const char *name, ar_dtype dtype, int ndim,
                           const int64_t *shape, const char *attrs_json, const void *data)
{
    if (ar_stream_begin_tensor(w, name, dtype, ndim, shape, attrs_json)) return -1;
    if (w->remaining > SIZE_MAX) return werr(w, "tensor '%s' too large for this host", name);
    if (ar_stream_write_data(w, data, (size_t)w->remaining)) return -1;
    return ar_stream_end_tensor(w);
}

int ar_stream_writer_close(ar_stream_writer *w)
{
    int rc = w_ready(w, 0);
    if (!rc) rc = w_push(w, "E", 1, ZSTD_e_end);
    if (!rc && fflush(w->f)) rc = werr(w, "write error: %s", strerror(errno));
    ar_stream_writer_abort(w);
    return rc;
}

void ar_stream_writer_abort(ar_stream_writer *w)
{
    if (!w) return;
    ZSTD_freeCCtx(w->cctx);
    free(w->out);
    free(w->name);
    free(w);
}

/* ---- Reader ------------------------------------------------------------------ */

/* Where the reader is, so that a truncation message can say what was cut. */
typedef enum { AT_HEADER, AT_RECORD, AT_META, AT_TENSOR_HEADER, AT_PAYLOAD } reader_place;

struct ar_stream_reader {
    FILE *f;
    char *name;                         /* for messages */
    ZSTD_DCtx *dctx;
    uint8_t *in;                        /* compressed bytes from f */
    size_t in_size;
    ZSTD_inBuffer inb;
    int eof;                            /* f has no more bytes */
    uint64_t bytes_in;                  /* compressed bytes read so far */
    uint8_t *out;                       /* decompressed bytes not yet consumed: out[out_pos..out_len) */
    size_t out_size, out_pos, out_len;
    int frame_done;                     /* zstd reported the end of the frame (checksum verified) */
    uint64_t offset;                    /* decompressed bytes consumed, for messages */
    int state;                          /* 0 reading, 1 END seen, -1 failed */
    reader_place place;
    uint64_t remaining, nbytes;         /* payload of the current tensor */
    char *json;                         /* current META / attributes text */
    size_t json_cap;
    char tname[AR_STREAM_MAX_NAME + 1]; /* current tensor name */
};

/* Record a stream error as "name: message", poisoning the reader; returns -1. */
__attribute__((format(printf, 2, 3))) static int rerr(ar_stream_reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ar_verror_at(r->name, 600, fmt, ap);
    va_end(ap);
    r->state = -1;
    return -1;
}

/* The message for input that ends too early, naming what it ended inside. */
static int r_truncated(ar_stream_reader *r)
{
    if (r->bytes_in == 0) return rerr(r, "empty input (not a tensor stream)");
    switch (r->place) {
    case AT_HEADER: return rerr(r, "truncated stream (ended inside the stream header)");
    case AT_RECORD: return rerr(r, "truncated stream (no END record)");
    case AT_META: return rerr(r, "truncated stream (ended inside a META record)");
    case AT_TENSOR_HEADER:
        if (r->tname[0]) return rerr(r, "truncated stream (ended inside the header of tensor '%s')", r->tname);
        return rerr(r, "truncated stream (ended inside a tensor record header)");
    case AT_PAYLOAD: break;
    }
    return rerr(r, "truncated stream (ended inside tensor '%s')", r->tname);
}

static int r_zstd_error(ar_stream_reader *r, size_t code)
{
    switch (ZSTD_getErrorCode(code)) {
    case ZSTD_error_checksum_wrong: return rerr(r, "corrupt data (zstd checksum mismatch)");
    case ZSTD_error_prefix_unknown:
        if (r->offset == 0 && r->out_len == 0) return rerr(r, "not a tensor stream (no zstd frame)");
        return rerr(r, "corrupt data (bad zstd frame)");
    default: return rerr(r, "corrupt data (zstd: %s)", ZSTD_getErrorName(code));
    }
}

/* Read more compressed input. 1 if some arrived, 0 at end of file, -1 on error. */
static int r_refill(ar_stream_reader *r)
{
    if (r->eof) return 0;
    size_t n = fread(r->in, 1, r->in_size, r->f);
    if (n == 0 && ferror(r->f)) return rerr(r, "read error: %s", strerror(errno));
    if (n == 0) r->eof = 1;
    r->inb = (ZSTD_inBuffer){r->in, n, 0};
    r->bytes_in += n;
    return n > 0;
}

/* Decompress into *out until it holds some bytes. 1 when it does, 0 when no
 * more can come (frame finished or input ended), -1 on error. Input is read
 * only when the decompressor cannot progress without it, so a complete stream
 * on a pipe never waits for bytes beyond its end. */
static int r_decompress(ar_stream_reader *r, ZSTD_outBuffer *out)
{
    while (!r->frame_done) {
        size_t ret = ZSTD_decompressStream(r->dctx, out, &r->inb);
        if (ZSTD_isError(ret)) return r_zstd_error(r, ret);
        if (ret == 0) r->frame_done = 1;
        if (out->pos > 0) return 1;
        if (r->frame_done) break;
        if (r->inb.pos == r->inb.size) {
            int got = r_refill(r);
            if (got <= 0) return got;
        }
    }
    return 0;
}

/* Consume the next n decompressed bytes into dst (or discard them when dst is
 * NULL). Large reads decompress straight into dst to save a copy. */
static int r_get(ar_stream_reader *r, void *dst, uint64_t n)
{
    uint8_t *d = dst;
    while (n) {
        if (r->out_pos < r->out_len) {
            size_t take = r->out_len - r->out_pos < n ? r->out_len - r->out_pos : (size_t)n;
            if (d) memcpy(d, r->out + r->out_pos, take), d += take;
            r->out_pos += take;
            r->offset += take;
            n -= take;
            continue;
        }
        int direct = d && n >= r->out_size;
        ZSTD_outBuffer o = direct ? (ZSTD_outBuffer){d, n > SIZE_MAX ? SIZE_MAX : (size_t)n, 0}
                                  : (ZSTD_outBuffer){r->out, r->out_size, 0};
        int got = r_decompress(r, &o);
        if (got < 0) return -1;
        if (got == 0) return r_truncated(r);
        if (direct) {
            d += o.pos, n -= o.pos, r->offset += o.pos;
        } else {
            r->out_pos = 0, r->out_len = o.pos;
        }
    }
    return 0;
}

static int r_u32(ar_stream_reader *r, uint32_t *v)
{
    uint8_t b[4];
    if (r_get(r, b, 4)) return -1;
    *v = get_u32(b);
    return 0;
}

/* After END: the frame must end right here (its checksum verified) and the
 * input must end with it. */
static int r_finish(ar_stream_reader *r)
{
    uint8_t probe;
    ZSTD_outBuffer o = {&probe, 1, 0};
    if (r->out_pos < r->out_len) return rerr(r, "data after the END record");
    int got = r_decompress(r, &o);
    if (got < 0) return -1;
    if (got > 0) return rerr(r, "data after the END record");
    if (!r->frame_done) return rerr(r, "truncated stream (zstd frame cut after the END record)");
    if (r->inb.pos < r->inb.size || r_refill(r) > 0) return rerr(r, "trailing bytes after the stream");
    return r->state < 0 ? -1 : 0;
}

ar_stream_reader *ar_stream_reader_open(FILE *f, const char *name)
{
    ar_stream_reader *r = calloc(1, sizeof *r);
    if (!r) { ar_error("%s: out of memory", name); return NULL; }
    r->f = f;
    r->name = strdup(name);
    r->dctx = ZSTD_createDCtx();
    r->in_size = ZSTD_DStreamInSize();
    r->out_size = ZSTD_DStreamOutSize();
    r->in = malloc(r->in_size);
    r->out = malloc(r->out_size);
    if (!r->name || !r->dctx || !r->in || !r->out) {
        ar_error("%s: out of memory", name);
        ar_stream_reader_close(r);
        return NULL;
    }
    r->inb = (ZSTD_inBuffer){r->in, 0, 0};
    r->place = AT_HEADER;
    uint8_t head[12];
    int bad = r_get(r, head, sizeof head);
    if (!bad && memcmp(head, AR_STREAM_MAGIC, 8))
        bad = rerr(r, "bad magic (zstd data, but not an ar tensor stream)");
    if (!bad && get_u32(head + 8) != AR_STREAM_VERSION)
        bad = rerr(r, "unsupported stream version %u (this build reads %u)", get_u32(head + 8), AR_STREAM_VERSION);
    if (bad) {
        ar_stream_reader_close(r);
        return NULL;
    }
    r->place = AT_RECORD;
    return r;
}

/* Read a u32 length and that many bytes of JSON object text into r->json. */
static int r_json(ar_stream_reader *r, const char *what)
{
    uint32_t n;
    if (r_u32(r, &n)) return -1;
    if (n > AR_STREAM_MAX_JSON) return rerr(r, "%s: JSON length %u exceeds the 64 MiB limit", what, n);
    if (n + 1 > r->json_cap) {
        char *p = realloc(r->json, n + 1);
        if (!p) return rerr(r, "out of memory (%u bytes of JSON)", n);
        r->json = p, r->json_cap = n + 1;
    }
    if (r_get(r, r->json, n)) return -1;
    r->json[n] = 0;
    const char *why = json_problem(r->json, n);
    return why ? rerr(r, "%s: %s", what, why) : 0;
}

static int r_meta(ar_stream_reader *r, ar_record *rec)
{
    r->place = AT_META;
    if (r_json(r, "META record")) return -1;
    rec->kind = AR_REC_META;
    rec->name = "";
    rec->json = r->json;
    r->place = AT_RECORD;
    return 1;
}

/* Name, dtype, ndim and shape of a tensor record, checked. */
static int r_tensor_shape(ar_stream_reader *r, ar_record *rec)
{
    uint32_t n;
    uint8_t dn[2];
    if (r_u32(r, &n)) return -1;
    if (n == 0 || n > AR_STREAM_MAX_NAME)
        return rerr(r, "tensor name length %u out of range 1..%u", n, AR_STREAM_MAX_NAME);
    if (r_get(r, r->tname, n)) return -1;
    r->tname[n] = 0;
    const char *why = name_problem(r->tname, n);
    if (why) return rerr(r, "%s", why);
    if (r_get(r, dn, 2)) return -1;
    if (dn[0] >= AR_DTYPE_COUNT) return rerr(r, "tensor '%s': unknown dtype code %u", r->tname, dn[0]);
    if (dn[1] > AR_STREAM_MAX_DIMS) return rerr(r, "tensor '%s': ndim %u exceeds 8", r->tname, dn[1]);
    rec->dtype = (ar_dtype)dn[0];
    rec->ndim = dn[1];
    for (int i = 0; i < rec->ndim; i++) {
        uint8_t b[8];
        if (r_get(r, b, 8)) return -1;
        rec->shape[i] = (int64_t)get_u64(b);
    }
    if ((why = tensor_problem(rec->dtype, rec->ndim, rec->shape, &rec->nelem, &rec->nbytes)))
        return rerr(r, "tensor '%s': %s", r->tname, why);
    return 0;
}

static int r_tensor(ar_stream_reader *r, ar_record *rec)
{
    r->place = AT_TENSOR_HEADER;
    r->tname[0] = 0;
    if (r_tensor_shape(r, rec)) return -1;
    char what[AR_STREAM_MAX_NAME + 32];
    snprintf(what, sizeof what, "tensor '%s' attributes", r->tname);
    uint8_t b[8];
    if (r_json(r, what) || r_get(r, b, 8)) return -1;
    if (get_u64(b) != rec->nbytes)
        return rerr(r, "tensor '%s': payload size %llu does not match shape and dtype (%llu bytes)", r->tname,
                    (unsigned long long)get_u64(b), (unsigned long long)rec->nbytes);
    rec->kind = AR_REC_TENSOR;
    rec->name = r->tname;
    rec->json = r->json;
    r->remaining = r->nbytes = rec->nbytes;
    r->place = AT_PAYLOAD;
    return 1;
}

int ar_stream_next(ar_stream_reader *r, ar_record *rec)
{
    if (r->state) return r->state > 0 ? 0 : -1;
    if (r->remaining && ar_stream_skip_data(r)) return -1;
    r->place = AT_RECORD;
    memset(rec, 0, sizeof *rec);
    uint8_t kind;
    uint64_t at = r->offset;
    if (r_get(r, &kind, 1)) return -1;
    switch (kind) {
    case AR_REC_END:
        if (r_finish(r)) return -1;
        r->state = 1;
        return 0;
    case AR_REC_META: return r_meta(r, rec);
    case AR_REC_TENSOR: return r_tensor(r, rec);
    default:
        return rerr(r, "unknown record kind 0x%02x at decompressed offset %llu", kind, (unsigned long long)at);
    }
}

int ar_stream_read_data(ar_stream_reader *r, void *dst, size_t n)
{
    if (r->state) return r->state > 0 ? ar_error("%s: read past the END record", r->name) : -1;
    if (n > r->remaining)
        return ar_error("%s: tensor '%s': read of %zu bytes, only %llu left in its payload", r->name, r->tname, n,
                        (unsigned long long)r->remaining);
    if (r_get(r, dst, n)) return -1;
    r->remaining -= n;
    return 0;
}

uint64_t ar_stream_remaining(const ar_stream_reader *r) { return r->remaining; }

int ar_stream_skip_data(ar_stream_reader *r)
{
    if (r->state < 0) return -1;
    if (r_get(r, NULL, r->remaining)) return -1;
    r->remaining = 0;
    return 0;
}

void *ar_stream_read_payload(ar_stream_reader *r)
{
    if (r->state) {
        if (r->state > 0) ar_error("%s: read past the END record", r->name);
        return NULL;
    }
    if (r->remaining > SIZE_MAX - 1) {
        ar_error("%s: tensor '%s' (%llu bytes) does not fit in memory", r->name, r->tname,
                 (unsigned long long)r->remaining);
        return NULL;
    }
    void *p = malloc(r->remaining ? (size_t)r->remaining : 1);
    if (!p) {
        ar_error("%s: out of memory reading tensor '%s' (%llu bytes)", r->name, r->tname,
                 (unsigned long long)r->remaining);
        return NULL;
    }
    if (ar_stream_read_data(r, p, (size_t)r->remaining)) {
        free(p);
        return NULL;
    }
    return p;
}

void ar_stream_reader_close(ar_stream_reader *r)
{
    if (!r) return;
    ZSTD_freeDCtx(r->dctx);
    free(r->in);
    free(r->out);
    free(r->json);
    free(r->name);
    free(r);
}
