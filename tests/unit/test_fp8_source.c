/* test_fp8_source.c — FP8 checkpoints read as floats (safetensors.h,
 * ar_st_open_model): weights F8_E4M3 with DeepSeek's block scales
 * (weight_scale_inv, edge blocks partial), compressed-tensors' per-channel and
 * per-tensor scales, and the one-line errors for a missing or misshaped scale.
 *
 * The reference decodes each E4M3 byte from its bit fields by formula (no
 * table, no ar_e4m3_decode), multiplies in double and rounds once to f32, and
 * rounds to bf16 with its own integer round-to-nearest-even. The exact
 * product of a 4-bit and a 24-bit significand has at most 28 bits, so it is
 * exact in double and its rounding to f32 is the correctly rounded f32
 * product the reader computes: the comparison is bit for bit.
 * Last, an export's config.json from such a source: the fp8
 * quantization_config is replaced, every other member kept. */
#include "error.h"
#include "hf_folder.h"
#include "safetensors.h"
#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/ar-fp8-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(fp8_source, .init = make_tmpdir, .fini = remove_tmpdir);

/* ---- the reference ---------------------------------------------------------- */

/* E4M3 (fn: no infinities, S.1111.111 is NaN) from its fields. */
static double ref_e4m3(unsigned b)
{
    unsigned s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? m * pow(2.0, -9) : (8 + m) * pow(2.0, (double)e - 10);
    return s ? -v : v;
}

/* f32 -> bf16 -> f32, round to nearest even on the bits. */
static float ref_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f;
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- writing a model folder -------------------------------------------------- */

typedef struct {
    const char *name, *dtype;
    int ndim;
    int64_t shape[2];
    const void *data;
    size_t nbytes;
} tensor;

static void write_file(const char *name, const void *p, size_t n)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* tmpdir/model.safetensors holding ts, and tmpdir/config.json = config. */
static void write_model(const tensor *ts, int n, const char *config)
{
    char header[4096];
    size_t o = (size_t)snprintf(header, sizeof header, "{"), off = 0, total = 0;
    for (int i = 0; i < n; i++) total += ts[i].nbytes;
    for (int i = 0; i < n; i++) {
        o += (size_t)snprintf(header + o, sizeof header - o, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                              ts[i].name, ts[i].dtype);
        for (int d = 0; d < ts[i].ndim; d++)
            o += (size_t)snprintf(header + o, sizeof header - o, "%s%lld", d ? "," : "", (long long)ts[i].shape[d]);
        o += (size_t)snprintf(header + o, sizeof header - o, "],\"data_offsets\":[%zu,%zu]}", off, off + ts[i].nbytes);
        off += ts[i].nbytes;
    }
    o += (size_t)snprintf(header + o, sizeof header - o, "}");
    cr_assert(o < sizeof header);
    unsigned char *buf = malloc(8 + o + total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)o >> (8 * i));
    memcpy(buf + 8, header, o);
    off = 8 + o;
    for (int i = 0; i < n; i++) { memcpy(buf + off, ts[i].data, ts[i].nbytes); off += ts[i].nbytes; }
    write_file("model.safetensors", buf, off);
    free(buf);
    write_file("config.json", config, strlen(config));
}

static const char FP8_128[] =
    "{\"dtype\": \"bfloat16\", \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", "
    "\"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}}";

/* Codes covering all 256 bytes (NaNs included) in a pattern that differs
 * across rows and columns, and scales with full 24-bit significands. */
static uint8_t *codes(int n, int k)
{
    uint8_t *q = malloc((size_t)n * k);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < k; c++) q[(size_t)r * k + c] = (uint8_t)(r * 7 + c * 13 + (r * c) % 5);
    return q;
}

static float *scales(int n)
{
    float *s = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) s[i] = (float)ldexp(1.0 + (i + 1) * 0.1234567, -(i % 7) - 3) * (i % 3 ? 1 : -1);
    return s;
}

/* Every element of rows [r0, r0+nr) of name matches q * s[r/bh][c/bw]
 * (optionally rounded to bf16), bit for bit, NaN for NaN codes. */
static void check_rows(const ar_safetensors *st, const char *name, const uint8_t *q, const float *s, int k, int bh,
                       int bw, int scols, int r0, int nr, int bf16)
{
    float *got = malloc(sizeof(float) * (size_t)nr * k);
    cr_assert_eq(ar_st_read_rows_f32(st, name, r0, nr, got), 0, "%s", ar_last_error());
    for (int r = r0; r < r0 + nr; r++)
        for (int c = 0; c < k; c++) {
            double x = ref_e4m3(q[(size_t)r * k + c]);
            float want = (float)(x * s[(r / bh) * scols + c / bw]), g = got[(size_t)(r - r0) * k + c];
            if (bf16) want = ref_bf16(want);
            if (isnan(want)) { cr_assert(isnan(g), "%s[%d][%d]: %g, want NaN", name, r, c, g); continue; }
            cr_assert(memcmp(&want, &g, 4) == 0, "%s[%d][%d] (code 0x%02x): %.9g, want %.9g", name, r, c,
                      q[(size_t)r * k + c], g, want);
        }
    free(got);
}

/* ---- block scales (DeepSeek / Qwen3 FP8) ----------------------------------- */

/* [200, 300] in 128 x 128 blocks: scale [2, 3], the last block row 72 rows
 * high and the last block column 44 wide. */
Test(fp8_source, block_scales_with_partial_edge_blocks)
{
    enum { N = 200, K = 300 };
    uint8_t *q = codes(N, K);
    float *s = scales(6);
    uint16_t norm[4] = {0x3f80, 0x3f80, 0x3f80, 0x3f80};
    tensor ts[] = {{"l.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K},
                   {"l.weight_scale_inv", "F32", 2, {2, 3}, s, 24},
                   {"norm.weight", "BF16", 1, {4, 0}, norm, 8}};
    write_model(ts, 3, FP8_128);
    ar_safetensors *st = ar_st_open_model(tmpdir);
    cr_assert(st, "%s", ar_last_error());
    const ar_st_fp8 *f = ar_st_fp8_of(st);
    cr_assert(f && f->block[0] == 128 && f->block[1] == 128 && f->out == AR_BF16 && !strcmp(f->method, "fp8"));
    check_rows(st, "l.weight", q, s, K, 128, 128, 3, 0, N, 1);
    check_rows(st, "l.weight", q, s, K, 128, 128, 3, 100, 60, 1);   /* across the block-row edge */
    check_rows(st, "l.weight", q, s, K, 128, 128, 3, 199, 1, 1);
    cr_assert_eq(ar_st_fp8_role(st, "l.weight"), 1);
    cr_assert_eq(ar_st_fp8_role(st, "l.weight_scale_inv"), 2);
    cr_assert_eq(ar_st_fp8_role(st, "norm.weight"), 0);
    float nv[4];
    cr_assert_eq(ar_st_read_f32(st, "norm.weight", nv, 4), 0);
    cr_assert_eq(nv[3], 1.0f);
    ar_st_close(st);

    /* Opened without the config the bytes are not floats, as before. */
    st = ar_st_open_dir(tmpdir);
    cr_assert(st);
    float one;
    cr_assert_eq(ar_st_read_rows_f32(st, "l.weight", 0, 1, &one), -1);
    cr_assert(strstr(ar_last_error(), "not a float type"), "%s", ar_last_error());
    cr_assert_eq(ar_st_fp8_role(st, "l.weight"), 0);
    ar_st_close(st);
    free(q);
    free(s);
}

/* Non-square blocks [96, 80] over [130, 170] (scale [2, 3]); float32 config:
 * the f32 products are kept unrounded. */
Test(fp8_source, rectangular_blocks_and_f32_output)
{
    enum { N = 130, K = 170 };
    uint8_t *q = codes(N, K);
    float *s = scales(6);
    tensor ts[] = {{"l.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K},
                   {"l.weight_scale_inv", "F32", 2, {2, 3}, s, 24}};
    write_model(ts, 2, "{\"torch_dtype\": \"float32\", \"quantization_config\": {\"quant_method\": \"fp8\", "
                       "\"weight_block_size\": [96, 80]}}");
    ar_safetensors *st = ar_st_open_model(tmpdir);
    cr_assert(st, "%s", ar_last_error());
    cr_assert_eq(ar_st_fp8_of(st)->out, AR_F32);
    check_rows(st, "l.weight", q, s, K, 96, 80, 3, 0, N, 0);
    check_rows(st, "l.weight", q, s, K, 96, 80, 3, 95, 2, 0);
    ar_st_close(st);
    free(q);
    free(s);
}

/* ---- compressed-tensors float-quantized ---------------------------------- */

static const char CT_CHANNEL[] =
    "{\"dtype\": \"bfloat16\", \"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
    "\"float-quantized\", \"ignore\": [\"lm_head\"], \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], "
    "\"weights\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"channel\", \"symmetric\": true}}}}}";

/* Per-row bf16 scales [n, 1] and a per-tensor f32 scale [1]. */
Test(fp8_source, compressed_tensors_channel_and_tensor_scales)
{
    enum { N = 40, K = 24 };
    uint8_t *q = codes(N, K);
    float *s = scales(N), one = 0.0123456789f;
    uint16_t sb[N];
    for (int i = 0; i < N; i++) {   /* bf16 scales: the reference uses their exact values */
        s[i] = ref_bf16(s[i]);
        uint32_t u;
        memcpy(&u, &s[i], 4);
        sb[i] = (uint16_t)(u >> 16);
    }
    tensor ts[] = {{"a.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K},
                   {"a.weight_scale", "BF16", 2, {N, 1}, sb, sizeof sb},
                   {"b.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K},
                   {"b.weight_scale", "F32", 1, {1, 0}, &one, 4}};
    write_model(ts, 4, CT_CHANNEL);
    ar_safetensors *st = ar_st_open_model(tmpdir);
    cr_assert(st, "%s", ar_last_error());
    cr_assert(!strcmp(ar_st_fp8_of(st)->method, "compressed-tensors") && ar_st_fp8_of(st)->block[0] == 0);
    check_rows(st, "a.weight", q, s, K, 1, K, 1, 0, N, 1);
    check_rows(st, "b.weight", q, &one, K, N, K, 1, 3, 9, 1);
    ar_st_close(st);
    free(q);
    free(s);
}

/* ---- bad input: one line naming the file and the tensor ------------------- */

static void expect_open_error(const char *want1, const char *want2)
{
    ar_safetensors *st = ar_st_open_model(tmpdir);
    cr_assert_null(st, "opened a broken FP8 checkpoint");
    const char *e = ar_last_error();
    cr_assert(strstr(e, want1) && strstr(e, want2), "error '%s' lacks '%s' / '%s'", e, want1, want2);
    cr_assert_null(strchr(e, '\n'), "error spans lines: %s", e);
}

Test(fp8_source, weight_without_scale_is_refused)
{
    uint8_t q[4] = {0x38, 0x38, 0x38, 0x38};
    tensor ts[] = {{"m.q_proj.weight", "F8_E4M3", 2, {2, 2}, q, 4}};
    write_model(ts, 1, FP8_128);
    char file[128];
    snprintf(file, sizeof file, "%s/model.safetensors: ", tmpdir);
    expect_open_error(file, "FP8 tensor 'm.q_proj.weight' has no scale 'm.q_proj.weight_scale_inv'");
}

Test(fp8_source, scale_of_wrong_shape_is_refused)
{
    enum { N = 200, K = 300 };
    uint8_t *q = codes(N, K);
    float s[6] = {1, 1, 1, 1, 1, 1};
    tensor ts[] = {{"m.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K},
                   {"m.weight_scale_inv", "F32", 2, {3, 2}, s, 24}};
    write_model(ts, 2, FP8_128);
    expect_open_error("scale 'm.weight_scale_inv' has shape [3, 2], expected [2, 3]",
                      "128 x 128 blocks of FP8 tensor 'm.weight' [200, 300]");
    /* Per-tensor where blocks are declared is a wrong shape too. */
    tensor t1[] = {{"m.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K}, {"m.weight_scale_inv", "F32", 1, {1, 0}, s, 4}};
    write_model(t1, 2, FP8_128);
    expect_open_error("model.safetensors: scale 'm.weight_scale_inv' has shape [1], expected [2, 3]", "'m.weight'");
    /* compressed-tensors: neither [1] nor [n, 1]. */
    tensor t2[] = {{"m.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K}, {"m.weight_scale", "F32", 2, {1, 6}, s, 24}};
    write_model(t2, 2, CT_CHANNEL);
    expect_open_error("scale 'm.weight_scale' has shape [1, 6], expected [1] or [200, 1]", "'m.weight'");
    /* An integer scale. */
    int32_t si[6] = {1, 1, 1, 1, 1, 1};
    tensor t3[] = {{"m.weight", "F8_E4M3", 2, {N, K}, q, (size_t)N * K}, {"m.weight_scale_inv", "I32", 2, {2, 3}, si, 24}};
    write_model(t3, 2, FP8_128);
    expect_open_error("scale 'm.weight_scale_inv' of FP8 tensor 'm.weight' is i32", "not f32, bf16 or f16");
    free(q);
}

Test(fp8_source, bad_quantization_configs_are_refused)
{
    uint8_t q[4] = {0};
    float s = 1;
    tensor ts[] = {{"m.weight", "F8_E4M3", 2, {2, 2}, q, 4}, {"m.weight_scale_inv", "F32", 2, {1, 1}, &s, 4}};
    write_model(ts, 2, "{\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [0, 128]}}");
    expect_open_error("config.json: fp8 weight_block_size must be two positive integers", "config.json");
    write_model(ts, 2, "{\"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e5m2\"}}");
    expect_open_error("config.json: fp8 fmt 'e5m2' is not supported", "e4m3 only");
    /* No weight_block_size: one scale per tensor, [1, 1] here. */
    write_model(ts, 2, "{\"quantization_config\": {\"quant_method\": \"fp8\"}}");
    ar_safetensors *st = ar_st_open_model(tmpdir);
    cr_assert(st, "%s", ar_last_error());
    ar_st_close(st);
}

/* ---- config.json of an export from an FP8 source (formats/hf_folder.c) ----- */

/* src config text -> hf_folder_write_config(replace) with qcfg {"bits": 4}:
 * the output is JSON with every other member kept and one quantization_config,
 * the new one. */
static void check_replaced(const char *config)
{
    char src[128], dst[128];
    snprintf(src, sizeof src, "%s/src", tmpdir);
    snprintf(dst, sizeof dst, "%s/dst", tmpdir);
    cr_assert(mkdir(src, 0755) == 0 || errno == EEXIST);
    cr_assert(mkdir(dst, 0755) == 0 || errno == EEXIST);
    char path[160];
    snprintf(path, sizeof path, "%s/config.json", src);
    FILE *f = fopen(path, "wb");
    fputs(config, f);
    fclose(f);
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "bits", 4);
    cr_assert_eq(hf_folder_write_config(src, dst, q, NULL, 0), -1, "an FP8 config was kept without replace");
    cr_assert(strstr(ar_last_error(), "already quantized"), "%s", ar_last_error());
    cr_assert_eq(hf_folder_write_config(src, dst, q, NULL, 1), 0, "%s", ar_last_error());
    cJSON_Delete(q);
    snprintf(path, sizeof path, "%s/config.json", dst);
    char *text = hf_read_file(path, NULL);
    cJSON *in = cJSON_Parse(config), *out = cJSON_Parse(text);
    cr_assert(out, "not JSON:\n%s", text);
    cJSON *qc = cJSON_GetObjectItem(out, "quantization_config");
    cr_assert(qc && cJSON_GetObjectItem(qc, "bits") && !cJSON_GetObjectItem(qc, "quant_method"), "%s", text);
    cJSON_DeleteItemFromObject(in, "quantization_config");
    cJSON_DeleteItemFromObject(out, "quantization_config");
    cr_assert(cJSON_Compare(in, out, 1), "members changed:\n%s", text);
    cJSON_Delete(in);
    cJSON_Delete(out);
    free(text);
}

Test(fp8_source, export_config_replaces_the_fp8_quantization_config)
{
    check_replaced("{\n  \"a\": 1,\n  \"quantization_config\": {\n    \"quant_method\": \"fp8\",\n    \"s\": \"}{,\\\"\",\n"
                   "    \"weight_block_size\": [\n      128,\n      128\n    ]\n  },\n  \"z\": [1, {\"b\": 2}]\n}\n");
    check_replaced("{\"a\": 1, \"quantization_config\": {\"quant_method\": \"fp8\"}}");
    check_replaced("{\"quantization_config\": {\"quant_method\": \"fp8\"}, \"a\": {\"quantization_config\": 3}}");
}
