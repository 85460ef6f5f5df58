/* test_tuned_stream.c — ar-tune's stream of tuned layers (libar/io/tuned_stream.h):
 * META, linears (with an NVFP4 global scale and a static activation maximum)
 * and GGUF tensors written and read back field for field; the reader's
 * errors for a missing scale, an unknown record and a stream that is not
 * ar-tune's, each naming the stream. */
#include "error.h"
#include "tuned_stream.h"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

enum { N = 3, K = 64, G = 32 };

/* q's arrays filled from seed, for a [N, K] layer in groups of G. */
static void fill_out(ar_quant_out *q, uint8_t *codes, float *scale, int32_t *zp, int seed)
{
    for (int i = 0; i < N * K; i++) codes[i] = (uint8_t)(i * 7 + seed);
    for (int i = 0; i < N * K / G; i++) scale[i] = 0.25f * (float)(i + seed), zp[i] = i - seed;
    *q = (ar_quant_out){.codes = codes, .scale = scale, .zp = zp};
}

static FILE *write_stream(int bad)
{
    FILE *f = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(f, "t.ars", 1);
    ar_scheme s, nv;
    cr_assert_eq(ar_scheme_preset(&s, "W4A16"), 0);
    s.group_size = G, s.sym = 0;
    cr_assert_eq(ar_scheme_preset(&nv, "NVFP4"), 0);
    char *meta = ar_tuned_meta_json("/models/m", &s, 1, "{\"iters\":10,\"lr\":0.005}");
    cr_assert(meta, "%s", ar_last_error());
    cr_assert_eq(ar_stream_write_meta(w, meta), 0);
    free(meta);
    uint8_t codes[N * K];
    float scale[N * K / G];
    int32_t zp[N * K / G];
    ar_quant_out q;
    fill_out(&q, codes, scale, zp, 1);
    cr_assert_eq(ar_tuned_write_linear(w, "model.layers.0.mlp.up_proj", &s, N, K, &q, NULL, 0), 0);
    uint8_t blocks[40];
    for (int i = 0; i < 40; i++) blocks[i] = (uint8_t)(3 * i);
    cr_assert_eq(ar_tuned_write_gguf(w, "lm_head.weight", AR_GGML_Q8_0, 1, 32, blocks, 34), 0);
    fill_out(&q, codes, scale, zp, 2);
    float gs = 448.0f * 6.0f / 3.5f;
    if (bad == 1) {   /* a qweight without its scale */
        int64_t s2[2] = {N, K};
        cr_assert_eq(ar_stream_write_tensor(w, "model.layers.0.mlp.down_proj.qweight", AR_U8, 2, s2, "{}", codes), 0);
    } else if (bad == 2) {
        int64_t one[1] = {1};
        cr_assert_eq(ar_stream_write_tensor(w, "model.layers.0.mlp.down_proj.bias", AR_F32, 1, one, "{}", &gs), 0);
    } else {
        nv.group_size = G;   /* the stream's group count follows the scheme */
        cr_assert_eq(ar_tuned_write_linear(w, "model.layers.0.mlp.down_proj", &nv, N, K, &q, &gs, 2.5f), 0);
    }
    cr_assert_eq(ar_stream_writer_close(w), 0);
    rewind(f);
    return f;
}

Test(tuned_stream, round_trip)
{
    FILE *f = write_stream(0);
    ar_tuned_reader *t = ar_tuned_reader_open(f, "t.ars");
    cr_assert(t, "%s", ar_last_error());
    const ar_tuned_meta *m = ar_tuned_reader_meta(t);
    cr_assert_str_eq(m->model, "/models/m");
    cr_assert_str_eq(m->scheme, "W4A16");
    cr_assert_eq(m->attrs.bits, 4);
    cr_assert_eq(m->attrs.group_size, G);
    cr_assert_eq(m->attrs.sym, 0);
    cr_assert_str_eq(m->attrs.data_type, "int");
    cr_assert_eq(m->attrs.act_bits, 16);
    cr_assert_eq(m->mixed_bits, 1);
    cr_assert_str_eq(m->tuning_json, "{\"iters\":10,\"lr\":0.005}");

    uint8_t codes[N * K];
    float scale[N * K / G];
    int32_t zp[N * K / G];
    ar_quant_out q;
    const ar_tuned_item *it;
    cr_assert_eq(ar_tuned_reader_next(t, &it), 1, "%s", ar_last_error());
    cr_assert_eq(it->kind, AR_TUNED_LINEAR);
    cr_assert_str_eq(it->name, "model.layers.0.mlp.up_proj");
    cr_assert_eq(it->n, N);
    cr_assert_eq(it->k, K);
    cr_assert_eq(it->attrs.bits, 4);
    cr_assert_eq(it->attrs.group_size, G);
    cr_assert_eq(it->attrs.sym, 0);
    cr_assert_eq(it->global_scale, 0);
    cr_assert_eq(it->act_max, 0);
    fill_out(&q, codes, scale, zp, 1);
    cr_assert_eq(memcmp(it->codes, codes, sizeof codes), 0);
    cr_assert_eq(memcmp(it->scale, scale, sizeof scale), 0);
    cr_assert_eq(memcmp(it->zp, zp, sizeof zp), 0);

    cr_assert_eq(ar_tuned_reader_next(t, &it), 1, "%s", ar_last_error());
    cr_assert_eq(it->kind, AR_TUNED_GGUF);
    cr_assert_str_eq(it->name, "lm_head.weight");
    cr_assert_eq(it->type, AR_GGML_Q8_0);
    cr_assert_eq(it->rows, 1);
    cr_assert_eq(it->cols, 32);
    cr_assert_eq(it->nbytes, 34);
    for (int i = 0; i < 34; i++) cr_assert_eq(it->blocks[i], (uint8_t)(3 * i));

    cr_assert_eq(ar_tuned_reader_next(t, &it), 1, "%s", ar_last_error());
    cr_assert_str_eq(it->name, "model.layers.0.mlp.down_proj");
    cr_assert_str_eq(it->attrs.data_type, "nv_fp");
    cr_assert_eq(it->attrs.act_bits, 4);
    cr_assert_eq(it->global_scale, 448.0f * 6.0f / 3.5f);
    cr_assert_eq(it->act_max, 2.5f);
    fill_out(&q, codes, scale, zp, 2);
    cr_assert_eq(memcmp(it->codes, codes, sizeof codes), 0);
    cr_assert_eq(memcmp(it->scale, scale, sizeof scale), 0);

    cr_assert_eq(ar_tuned_reader_next(t, &it), 0);
    cr_assert_eq(ar_tuned_reader_next(t, &it), 0);
    ar_tuned_reader_close(t);
    fclose(f);
}

static void expect_error(int bad, const char *msg)
{
    FILE *f = write_stream(bad);
    ar_tuned_reader *t = ar_tuned_reader_open(f, "t.ars");
    cr_assert(t);
    const ar_tuned_item *it;
    int rc;
    while ((rc = ar_tuned_reader_next(t, &it)) == 1) {}
    cr_assert_eq(rc, -1);
    cr_assert_str_eq(ar_last_error(), msg);
    ar_tuned_reader_close(t);
    fclose(f);
}

Test(tuned_stream, errors_name_the_stream)
{
    expect_error(1, "t.ars: layer model.layers.0.mlp.down_proj lacks its qweight or scale record");
    expect_error(2, "t.ars: unexpected record 'model.layers.0.mlp.down_proj.bias'");
    FILE *f = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(f, "c.ars", 1);
    cr_assert_eq(ar_stream_write_meta(w, "{\"ar\":\"calib\"}"), 0);
    cr_assert_eq(ar_stream_writer_close(w), 0);
    rewind(f);
    cr_assert_null(ar_tuned_reader_open(f, "c.ars"));
    cr_assert_str_eq(ar_last_error(), "c.ars: not an ar-tune stream (META \"ar\" is not \"tune\")");
    fclose(f);
}
