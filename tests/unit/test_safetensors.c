/* test_safetensors.c — the reader on hand-built files: values of every float
 * dtype, lookup and iteration, shards, and each kind of corrupt header. */
#include "error.h"
#include "safetensors.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/ar-st-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(safetensors, .init = make_tmpdir, .fini = remove_tmpdir);

/* Write name under tmpdir: u64 header length (hlen_override if nonzero), header, data. */
static const char *write_st(const char *name, const char *header, const void *data, size_t n, unsigned long long hlen_override)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    unsigned long long h = hlen_override ? hlen_override : strlen(header);
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(h >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
    return path;
}

/* 1.5 and -2 in f32 (8 bytes), bf16 (4 bytes), f16 (4 bytes). */
static const unsigned char good_data[16] = {0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0, 0xc0, 0x3f, 0, 0xc0, 0, 0x3e, 0, 0xc0};
static const char good_header[] =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"w.f32\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[0,8]},"
    "\"b.bf16\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
    "\"a.f16\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}";

Test(safetensors, reads_every_float_dtype)
{
    ar_safetensors *st = ar_st_open_file(write_st("m.safetensors", good_header, good_data, 16, 0));
    cr_assert(st, "%s", ar_last_error());
    cr_assert_eq(ar_st_count(st), 3);
    const char *names[] = {"a.f16", "b.bf16", "w.f32"};
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(ar_st_at(st, i)->name, names[i]);
        float v[2] = {0, 0};
        cr_assert_eq(ar_st_read_f32(st, names[i], v, 2), 0, "%s", ar_last_error());
        cr_assert(v[0] == 1.5f && v[1] == -2.0f, "%s: %g %g", names[i], v[0], v[1]);
    }
    const ar_st_tensor *t = ar_st_find(st, "w.f32");
    cr_assert(t && t->dtype == AR_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 1 && t->nbytes == 8);
    cr_assert_null(ar_st_find(st, "nope"));
    float row;
    cr_assert_eq(ar_st_read_rows_f32(st, "w.f32", 1, 1, &row), 0);
    cr_assert_eq(row, -2.0f);
    cr_assert_eq(ar_st_read_rows_f32(st, "w.f32", 1, 2, &row), -1);
    cr_assert(strstr(ar_last_error(), "out of range"), "%s", ar_last_error());
    cr_assert_eq(ar_st_read_f32(st, "w.f32", &row, 1), -1);
    ar_st_close(st);
}

/* Opening must fail with a message containing want. */
static void expect_error(const char *header, size_t ndata, unsigned long long hlen, const char *want)
{
    unsigned char data[64] = {0};
    ar_safetensors *st = ar_st_open_file(write_st("bad.safetensors", header, data, ndata, hlen));
    cr_assert_null(st, "opened a bad file (%s)", want);
    cr_assert(strstr(ar_last_error(), want), "message '%s' lacks '%s'", ar_last_error(), want);
    cr_assert(strstr(ar_last_error(), "bad.safetensors"), "message '%s' lacks the file name", ar_last_error());
}

Test(safetensors, rejects_header_length_past_eof) { expect_error("{}", 0, 1000000, "exceeds file size"); }
Test(safetensors, rejects_corrupt_json) { expect_error("{\"a\":{\"dtype\":", 0, 0, "not a valid JSON"); }
Test(safetensors, rejects_unknown_dtype)
{
    expect_error("{\"x\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, "unknown dtype 'F7'");
}
Test(safetensors, rejects_offsets_past_end)
{
    expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, 0,
                 "tensor 'x' data_offsets [0,16] past end of data (size 8)");
}
Test(safetensors, rejects_size_not_matching_shape)
{
    expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, 0, "needs 12");
}
Test(safetensors, rejects_overlap)
{
    expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, 0, "overlap");
}
Test(safetensors, rejects_reversed_offsets)
{
    expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, 0, "reversed");
}
Test(safetensors, rejects_absurd_shape_before_allocating)
{
    expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, 0, "absurdly large");
}
Test(safetensors, rejects_negative_shape)
{
    expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, 0, "shape[0]");
}
Test(safetensors, rejects_truncated_file)
{
    char path[256];
    snprintf(path, sizeof path, "%s/short.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite("\x10\0\0", 1, 3, f);
    fclose(f);
    cr_assert_null(ar_st_open_file(path));
    cr_assert(strstr(ar_last_error(), "too short"), "%s", ar_last_error());
}

static void write_text(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

Test(safetensors, opens_sharded_directory)
{
    float a = 3, b = 4;
    write_st("s-1.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", &a, 4, 0);
    write_st("s-2.safetensors", "{\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", &b, 4, 0);
    write_text("model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{\"a\":\"s-1.safetensors\",\"b\":\"s-2.safetensors\"}}");
    ar_safetensors *st = ar_st_open_dir(tmpdir);
    cr_assert(st, "%s", ar_last_error());
    float v;
    cr_assert_eq(ar_st_read_f32(st, "a", &v, 1), 0);
    cr_assert_eq(v, 3.0f);
    cr_assert_eq(ar_st_read_f32(st, "b", &v, 1), 0, "%s", ar_last_error());
    cr_assert_eq(v, 4.0f);
    ar_st_close(st);
    write_text("model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s-1.safetensors\",\"b\":\"s-1.safetensors\"}}");
    cr_assert_null(ar_st_open_dir(tmpdir));
    cr_assert(strstr(ar_last_error(), "tensor 'b' is not in shard s-1.safetensors"), "%s", ar_last_error());
}

Test(safetensors, missing_directory_names_it)
{
    cr_assert_null(ar_st_open_dir("/nonexistent/model"));
    cr_assert(strstr(ar_last_error(), "/nonexistent/model"), "%s", ar_last_error());
}

Test(safetensors, stories260k_has_its_47_tensors)
{
    const char *s = getenv("AR_SHARED");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K", s ? s : "../shared");
    ar_safetensors *st = ar_st_open_dir(dir);
    cr_assert(st, "%s", ar_last_error());
    cr_assert_eq(ar_st_count(st), 47);
    const ar_st_tensor *t = ar_st_find(st, "model.embed_tokens.weight");
    cr_assert(t && t->shape[0] == 512 && t->shape[1] == 64 && t->dtype == AR_F32);
    ar_st_close(st);
}
