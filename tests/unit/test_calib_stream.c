/* test_calib_stream.c — the calibration stream reader (libar/io/calib_stream.h):
 * a stream written here read back (f32 activations narrowed to bf16, the
 * METAs' model, digest, pad id and last layer config), the pass-through copy
 * equal record for record, and the errors for a truncated stream, a stream
 * without activations and malformed records, each naming the file. */
#include "calib_stream.h"
#include "dtype.h"
#include "error.h"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

enum { N = 2, L = 3, C = 4 };

/* A calibration stream in a tmpfile, rewound: META, input_ids, hidden (f32
 * when f32, else bf16), then a second META with a layer config. */
static FILE *calib_file(int f32, int with_hidden, int ids_len)
{
    FILE *f = tmpfile();
    cr_assert(f);
    ar_stream_writer *w = ar_stream_writer_open(f, "mem", 1);
    cr_assert(w);
    cr_assert_eq(ar_stream_write_meta(w, "{\"model\":\"/m\",\"config_fnv1a64\":\"0123456789abcdef\",\"pad_token_id\":7}"),
                 0);
    int32_t ids[N * L];
    for (int i = 0; i < N * L; i++) ids[i] = i;
    int64_t s2[2] = {N, ids_len}, s3[3] = {N, L, C};
    cr_assert_eq(ar_stream_write_tensor(w, "input_ids", AR_I32, 2, s2, "{}", ids), 0);
    float x[N * L * C];
    uint16_t xb[N * L * C];
    for (int i = 0; i < N * L * C; i++) x[i] = 0.5f * (float)i - 3.0f;
    ar_from_f32(xb, x, AR_BF16, N * L * C);
    if (with_hidden)
        cr_assert_eq(ar_stream_write_tensor(w, "hidden", f32 ? AR_F32 : AR_BF16, 3, s3, "{}", f32 ? (void *)x : xb), 0);
    cr_assert_eq(ar_stream_write_meta(w, "{\"ar\":\"scheme\",\"layer_config\":{\"mlp.down_proj\":{\"bits\":8}}}"), 0);
    cr_assert_eq(ar_stream_writer_close(w), 0);
    rewind(f);
    return f;
}

static void check_data(const ar_calib_data *d, int kept)
{
    cr_assert_str_eq(d->src, "calib.ars");
    cr_assert_str_eq(d->model, "/m");
    cr_assert_str_eq(d->config_digest, "0123456789abcdef");
    cr_assert_eq(d->pad_key, 1);
    cr_assert_eq(d->pad_id, 7);
    cr_assert_eq(d->n, N);
    cr_assert_eq(d->T, L);
    for (int i = 0; i < N * L; i++) cr_assert_eq(d->ids[i], i);
    cr_assert_str_eq(d->layer_config, "{\"mlp.down_proj\":{\"bits\":8}}");
    cr_assert_eq(d->n_layer_configs, 1);
    if (!kept) { cr_assert_null(d->hidden); return; }
    cr_assert_eq(d->C, C);
    for (int i = 0; i < N * L * C; i++) {
        float v;
        ar_to_f32(&v, d->hidden + i, AR_BF16, 1);
        cr_assert_eq(v, 0.5f * (float)i - 3.0f, "activation %d", i);
    }
}

Test(calib_stream, reads_what_was_written)
{
    for (int f32 = 0; f32 < 2; f32++) {
        FILE *f = calib_file(f32, 1, L);
        ar_calib_data d;
        cr_assert_eq(ar_calib_stream_read(f, "calib.ars", NULL, 1, &d), 0, "%s", ar_last_error());
        check_data(&d, 1);
        ar_calib_data_free(&d);
        cr_assert_null(d.ids);
        fclose(f);
    }
}

/* The pass-through copy holds the same records; the activations are not kept. */
Test(calib_stream, copy_passes_every_record_through)
{
    FILE *f = calib_file(1, 1, L), *g = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(g, "copy", 1);
    ar_calib_data d;
    cr_assert_eq(ar_calib_stream_read(f, "calib.ars", w, 0, &d), 0, "%s", ar_last_error());
    cr_assert_eq(ar_stream_writer_close(w), 0);
    check_data(&d, 0);
    ar_calib_data_free(&d);
    rewind(f);
    rewind(g);
    ar_stream_reader *a = ar_stream_reader_open(f, "a"), *b = ar_stream_reader_open(g, "b");
    ar_record ra, rb;
    int n = 0, rc;
    while ((rc = ar_stream_next(a, &ra)) == 1) {
        cr_assert_eq(ar_stream_next(b, &rb), 1);
        cr_assert_eq(ra.kind, rb.kind);
        cr_assert_str_eq(ra.name, rb.name);
        cr_assert_str_eq(ra.json, rb.json);
        cr_assert_eq(ra.nbytes, rb.nbytes);
        if (ra.kind == AR_REC_TENSOR) {
            void *pa = ar_stream_read_payload(a), *pb = ar_stream_read_payload(b);
            cr_assert_eq(memcmp(pa, pb, ra.nbytes), 0, "%s differs", ra.name);
            free(pa); free(pb);
        }
        n++;
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(ar_stream_next(b, &rb), 0);
    cr_assert_eq(n, 4);
    ar_stream_reader_close(a); ar_stream_reader_close(b);
    fclose(f); fclose(g);
}

/* Every proper prefix of a stream is refused, and d is left empty. */
Test(calib_stream, truncated_stream_is_an_error)
{
    FILE *f = calib_file(0, 1, L);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc(n);
    cr_assert_eq(fread(buf, 1, n, f), (size_t)n);
    fclose(f);
    for (long cut = 0; cut < n; cut += 1 + cut / 8) {
        FILE *t = tmpfile();
        cr_assert_eq(fwrite(buf, 1, cut, t), (size_t)cut);
        rewind(t);
        ar_calib_data d;
        cr_assert_eq(ar_calib_stream_read(t, "cut.ars", NULL, 1, &d), -1, "a cut at %ld of %ld bytes was read", cut, n);
        cr_assert(!strncmp(ar_last_error(), "cut.ars", 7), "%s", ar_last_error());
        cr_assert_null(d.ids);
        cr_assert_null(d.hidden);
        fclose(t);
    }
    free(buf);
}

Test(calib_stream, errors_name_the_file)
{
    ar_calib_data d;
    FILE *f = calib_file(0, 0, L);
    cr_assert_eq(ar_calib_stream_read(f, "x.ars", NULL, 1, &d), -1);
    cr_assert_str_eq(ar_last_error(), "x.ars: not a calibration stream (needs input_ids and hidden)");
    rewind(f);
    cr_assert_eq(ar_calib_stream_read(f, "x.ars", NULL, 0, &d), 0, "%s", ar_last_error());
    ar_calib_data_free(&d);
    fclose(f);
    f = calib_file(0, 1, 1);   /* one token per sample */
    cr_assert_eq(ar_calib_stream_read(f, "y.ars", NULL, 1, &d), -1);
    cr_assert_str_eq(ar_last_error(), "y.ars: input_ids must be i32 [n, L] with L >= 2");
    fclose(f);
    cr_assert_eq(ar_calib_stream_load("/nonexistent/calib.ars", &d), -1);
    cr_assert_str_eq(ar_last_error(), "/nonexistent/calib.ars: cannot open");
}
