/* test_mxfp4.c — gpt-oss MXFP4 expert weights (mxfp4.h) against
 * transformers 5.25's convert_moe_packed_tensors on the fixture of
 * tests/fixtures/moe/dump_mxfp4_ref.py (exact: every value is a power of two
 * times a 3-bit code), and the one-line errors for bad tensors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fixture.h"
#include "mxfp4.h"
#include "safetensors.h"
#include "safetensors_writer.h"

/* got equals want bit for bit up to NaN (and -0 == 0 is not enough: the
 * sign of a zero code is part of the value). */
static void assert_same(const float *got, const float *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        cr_assert(!memcmp(&got[i], &want[i], 4) || (isnan(got[i]) && isnan(want[i])), "%s[%zu]: %g, want %g", what,
                  i, got[i], want[i]);
}

Test(mxfp4, matches_transformers)
{
    ar_safetensors *st = ar_st_open_file("tests/fixtures/moe/mxfp4.safetensors");
    ar_safetensors *ref = ar_st_open_file("tests/fixtures/moe/mxfp4_ref.safetensors");
    cr_assert(st && ref, "%s", ar_last_error());
    const char *names[2] = {"a", "b"};
    const int64_t want_shape[2][3] = {{2, 4, 64}, {3, 2, 32}};
    for (int i = 0; i < 2; i++) {
        int64_t sh[3];
        cr_assert_eq(ar_st_has_mxfp4(st, names[i]), 1);
        cr_assert_eq(ar_st_mxfp4_shape(st, names[i], sh), 0, "%s", ar_last_error());
        cr_assert(sh[0] == want_shape[i][0] && sh[1] == want_shape[i][1] && sh[2] == want_shape[i][2]);
        size_t n = (size_t)(sh[0] * sh[1] * sh[2]);
        float *t = malloc(4 * n), *rows = malloc(4 * n), *w = malloc(4 * n), *wb = malloc(4 * n);
        char bf[16];
        snprintf(bf, sizeof bf, "%s.bf16", names[i]);
        cr_assert_eq(ar_st_read_f32(ref, names[i], w, n), 0);
        cr_assert_eq(ar_st_read_f32(ref, bf, wb, n), 0);
        cr_assert_eq(ar_st_read_mxfp4(st, names[i], t, n, 1), 0, "%s", ar_last_error());
        assert_same(t, w, n, names[i]);
        assert_same(t, wb, n, bf); /* exact in bf16 too */
        /* untransposed: element (e, r, k) of [E, N, K] is (e, k, r) of [E, K, N] */
        cr_assert_eq(ar_st_read_mxfp4(st, names[i], rows, n, 0), 0);
        int64_t E = sh[0], N = sh[1], K = sh[2];
        for (int64_t e = 0; e < E; e++)
            for (int64_t r = 0; r < N; r++)
                for (int64_t k = 0; k < K; k++)
                    assert_same(&rows[(e * N + r) * K + k], &t[(e * K + k) * N + r], 1, "rows");
        free(t), free(rows), free(w), free(wb);
    }
    /* the extremes placed in "b": scale 0 gives 0.5 * 2^-127 = 2^-128 (subnormal, exact); 255 gives inf */
    float b[3 * 2 * 32];
    cr_assert_eq(ar_st_read_mxfp4(st, "b", b, 192, 0), 0);
    int inf = 0;
    for (int k = 0; k < 32; k++) inf += isinf(b[(2 * 2 + 1) * 32 + k]) != 0;
    cr_assert(inf > 0, "scale 255 gave no inf");
    cr_assert_eq(b[(2 * 2 + 1) * 32 + 0], 0.0f, "a zero code under scale 255 is 0");
    cr_assert_eq(b[(2 * 2 + 1) * 32 + 1], ldexpf(6.0f, 128), "code 7 (6.0) under scale 255 overflows");
    cr_assert_eq(ar_st_has_mxfp4(st, "c"), 0);
    ar_st_close(st), ar_st_close(ref);
}

/* A scratch file with blocks and scales of the given shapes and dtypes. */
static ar_safetensors *write_case(char *dir, const int64_t *bs, int bnd, ar_dtype bdt, const int64_t *ss, int snd,
                                  ar_dtype sdt, int with_scales)
{
    static unsigned char zeros[4096];
    strcpy(dir, "/tmp/ar-mxfp4-XXXXXX");
    fx_make_tmp(dir);
    ar_stw *w = ar_stw_open(dir, 0);
    cr_assert(w);
    cr_assert_eq(ar_stw_put(w, "x_blocks", bdt, bnd, bs, zeros), 0);
    if (with_scales) cr_assert_eq(ar_stw_put(w, "x_scales", sdt, snd, ss, zeros), 0);
    cr_assert_eq(ar_stw_close(w), 0);
    ar_safetensors *st = ar_st_open_dir(dir);
    cr_assert(st, "%s", ar_last_error());
    return st;
}

static void expect_error(const int64_t *bs, int bnd, ar_dtype bdt, const int64_t *ss, int snd, ar_dtype sdt,
                         int with_scales, const char *msg)
{
    char dir[64];
    ar_safetensors *st = write_case(dir, bs, bnd, bdt, ss, snd, sdt, with_scales);
    float out[2 * 3 * 64];
    cr_assert_eq(ar_st_read_mxfp4(st, "x", out, 2 * 3 * 64, 1), -1);
    const char *e = ar_last_error();
    cr_assert(strstr(e, msg) && strstr(e, "model.safetensors") && !strchr(e, '\n'), "error '%s', want '%s'", e, msg);
    ar_st_close(st);
    fx_rm_rf(dir);
}

Test(mxfp4, bad_tensors)
{
    int64_t b[4] = {2, 3, 2, 16}, s[3] = {2, 3, 2}, s_bad[3] = {2, 3, 4}, b_bad[4] = {2, 3, 4, 8};
    expect_error(b, 4, AR_U8, s, 3, AR_U8, 0, "have no scales 'x_scales'");
    expect_error(b, 4, AR_U8, s_bad, 3, AR_U8, 1, "MXFP4 scales 'x_scales' [2, 3, 4] do not match blocks 'x_blocks' [2, 3, 2, 16]");
    expect_error(b_bad, 4, AR_U8, s_bad, 3, AR_U8, 1, "are not [experts, rows, blocks, 16]");
    expect_error(b, 3, AR_U8, s, 3, AR_U8, 1, "are not [experts, rows, blocks, 16]");
    expect_error(b, 4, AR_U8, s, 3, AR_BF16, 1, "must be U8");
    /* right tensors, wrong destination size */
    char dir[64];
    ar_safetensors *st = write_case(dir, b, 4, AR_U8, s, 3, AR_U8, 1);
    float out[2 * 3 * 64];
    cr_assert_eq(ar_st_read_mxfp4(st, "x", out, 10, 0), -1);
    cr_assert(strstr(ar_last_error(), "does not fit 10 floats"), "%s", ar_last_error());
    cr_assert_eq(ar_st_read_mxfp4(st, "x", out, 2 * 3 * 64, 0), 0);
    ar_st_close(st);
    fx_rm_rf(dir);
}
