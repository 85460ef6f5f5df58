/* fuzz_stream.c — the tensor stream reader (man ar-stream(5)) over
 * fmemopen'd bytes.
 *
 * The first input byte picks the mode: bit 0 set means the rest is the
 * decompressed stream body and is zstd-compressed here (with checksum) before
 * reading, so mutations reach the record parser instead of dying at the zstd
 * checksum; clear means the rest is fed as is (the zstd layer itself). Bits 1
 * and 2 pick how payloads are consumed: whole (ar_stream_read_payload), in
 * small pieces, or skipped. Decompressed payload bytes read per input are
 * capped so a highly compressible claim of gigabytes costs only time up to the
 * cap, never memory. */
#include "fuzz.h"
#include "stream.h"
#include <zstd.h>

#define READ_CAP (8u << 20)

static void consume_payload(ar_stream_reader *r, const ar_record *rec, int how, uint64_t *budget)
{
    if (how == 2 || rec->nbytes > *budget) return;      /* left to ar_stream_next to skip */
    *budget -= rec->nbytes;
    if (how == 1 && rec->nbytes <= (1u << 20)) {
        void *p = ar_stream_read_payload(r);
        if (!p) fuzz_expect_message();
        free(p);
        return;
    }
    uint8_t piece[4093];                                /* odd size: splits across reads */
    while (ar_stream_remaining(r)) {
        uint64_t left = ar_stream_remaining(r);
        size_t n = left < sizeof piece ? (size_t)left : sizeof piece;
        if (ar_stream_read_data(r, piece, n)) { fuzz_expect_message(); return; }
    }
    if (!ar_stream_read_data(r, piece, 1)) fuzz_fail("read past a payload accepted");
}

static void check_record(const ar_record *rec)
{
    if (!rec->name || !rec->json) fuzz_fail("record without name or JSON text");
    if (rec->kind == AR_REC_TENSOR) {
        if (rec->ndim < 0 || rec->ndim > AR_STREAM_MAX_DIMS) fuzz_fail("ndim out of range");
        if (!rec->name[0] || strlen(rec->name) > AR_STREAM_MAX_NAME) fuzz_fail("bad tensor name accepted");
        uint64_t n = 1;
        for (int i = 0; i < rec->ndim; i++) n *= (uint64_t)rec->shape[i];
        if (n != rec->nelem || rec->nbytes != n * ar_dtype_size(rec->dtype)) fuzz_fail("sizes disagree with shape");
    } else if (rec->kind != AR_REC_META) fuzz_fail("unknown record kind returned");
}

static void read_stream(FILE *f, int how)
{
    fuzz_clear_error();
    ar_stream_reader *r = ar_stream_reader_open(f, "fuzz.ars");
    if (!r) { fuzz_expect_message(); return; }
    ar_record rec;
    int rc;
    uint64_t budget = READ_CAP;
    while ((rc = ar_stream_next(r, &rec)) == 1) {
        check_record(&rec);
        if (rec.kind == AR_REC_TENSOR) consume_payload(r, &rec, how, &budget);
    }
    if (rc < 0) fuzz_expect_message();
    if (ar_stream_next(r, &rec) != rc) fuzz_fail("end state not sticky");
    ar_stream_reader_close(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    int mode = data[0], how = (mode >> 1) % 3;
    const uint8_t *body = data + 1;
    size_t n = size - 1;
    void *packed = NULL;
    if (mode & 1) {
        size_t cap = ZSTD_compressBound(n);
        packed = malloc(cap);
        ZSTD_CCtx *c = ZSTD_createCCtx();
        ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
        n = ZSTD_compress2(c, packed, cap, body, size - 1);
        ZSTD_freeCCtx(c);
        if (ZSTD_isError(n)) fuzz_fail("zstd compression failed");
        body = packed;
    }
    static uint8_t one_byte;                            /* fmemopen needs size > 0: an empty */
    FILE *f = fmemopen(n ? (void *)body : &one_byte, n ? n : 1, "rb");
    if (!f) fuzz_fail("fmemopen failed");
    if (!n) fgetc(f);                                   /* input is one byte, already consumed */
    read_stream(f, how);
    fclose(f);
    free(packed);
    return 0;
}
