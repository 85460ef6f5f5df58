/* test_packers.c — int32 layouts (hand-worked words), pack -> unpack round
 * trips for every format, bits 2/3/4/8, group sizes 32/64/128/-1, sym and
 * asym, negative scales, odd shapes, and whole exported folders read back
 * through the safetensors reader and the quantized tensor source. */
#include "dtype.h"
#include "error.h"
#include "export.h"
#include "fixture.h"
#include "hf_folder.h"
#include "packing.h"
#include "quantized_source.h"
#include "safetensors.h"
#include "safetensors_writer.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- hand-worked words ---------------------------------------------------- */

Test(pack32, four_bit_word) {
    uint32_t v[32] = {0}, w[4];
    for (int i = 0; i < 8; i++) v[i] = (uint32_t)i;       /* first word: codes 0..7 */
    ar_pack32(v, 4, w);
    cr_assert_eq(w[0], 0x76543210u);
    cr_assert_eq(w[1], 0u);
}

Test(pack32, two_and_eight_bit_words) {
    uint32_t v[32] = {1, 2, 3, 0, 3}, w[8];
    ar_pack32(v, 2, w);
    cr_assert_eq(w[0], 0x339u);                          /* 01 10 11 00 11 from bit 0 up */
    uint32_t b[32] = {1, 2, 3, 0xFF}, w8[8];
    ar_pack32(b, 8, w8);
    cr_assert_eq(w8[0], 0xFF030201u);
}

/* Words worked by hand from GPTQ's 3-bit description (spec §6.1): codes 0-9
 * at 3i, code 10 split 2+1, codes 11-20 at 3i+1, code 21 split 1+2, codes
 * 22-31 at 3i+2. */
Test(pack32, three_bit_words) {
    uint32_t v[32], w[3], back[32];
    for (int i = 0; i < 32; i++) v[i] = 3;
    ar_pack32(v, 3, w);
    cr_assert_eq(w[0], 0xdb6db6dbu);
    cr_assert_eq(w[1], 0xb6db6db6u);
    cr_assert_eq(w[2], 0x6db6db6du);
    for (int i = 0; i < 32; i++) v[i] = (uint32_t)(i % 8);
    ar_pack32(v, 3, w);
    cr_assert_eq(w[0], 0x88fac688u);
    cr_assert_eq(w[1], 0xc688fac6u);
    cr_assert_eq(w[2], 0xfac688fau);
    ar_unpack32(w, 3, back);
    cr_assert_arr_eq(back, v, sizeof v);
}

/* AWQ: output column j at nibble [0,4,1,5,2,6,3,7][j]. */
Test(pack_awq, interleaved_word) {
    uint8_t codes[8 * 8];
    float scale[8];
    int32_t zp[8];
    for (int n = 0; n < 8; n++) {
        for (int k = 0; k < 8; k++) codes[n * 8 + k] = (uint8_t)n;   /* column n holds code n */
        scale[n] = 1;
        zp[n] = 15 - n;
    }
    ar_qlayer l = {.name = "t", .n = 8, .k = 8, .bits = 4, .group_size = 8, .codes = codes, .scale = scale, .zp = zp};
    int32_t qw[8], qz[1];
    uint16_t sc[8];
    cr_assert_eq(ar_pack_awq(&l, qw, qz, sc), 0, "%s", ar_last_error());
    cr_assert_eq((uint32_t)qw[0], 0x75316420u);
    cr_assert_eq((uint32_t)qz[0], 0x8ACE9BDFu);          /* zp 15..8 through the same interleave */
}

/* Sym zero points are the constant 2^(b-1), stored minus 1: 0x77777777 for 4
 * bits, 0x55555555 for 2, 0x7F7F7F7F for 8. */
Test(pack_gptq, sym_qzeros_constants) {
    static const uint32_t want[9] = {[2] = 0x55555555u, [4] = 0x77777777u, [8] = 0x7F7F7F7Fu};
    for (int b = 2; b <= 8; b *= 2) {
        uint8_t codes[32 * 32] = {0};
        float scale[32];
        for (int i = 0; i < 32; i++) scale[i] = -0.5f;
        ar_qlayer l = {.name = "t", .n = 32, .k = 32, .bits = b, .group_size = -1, .sym = 1, .codes = codes,
                       .scale = scale};
        int32_t qw[32 * 8], qz[8];
        uint16_t sc[32];
        cr_assert_eq(ar_pack_gptq(&l, 1, qw, qz, sc), 0, "%s", ar_last_error());
        for (int j = 0; j < b; j++) cr_assert_eq((uint32_t)qz[j], want[b], "bits %d", b);
        cr_assert_eq(sc[0], ar_f32_to_f16(-0.5f));
    }
}

/* ---- random layers --------------------------------------------------------- */

typedef struct {
    ar_qlayer l;
    uint8_t  *codes;
    float    *scale;
    int32_t  *zp;
} rand_layer;

static uint32_t rng = 12345;
static uint32_t rnd(void) { rng = rng * 1664525u + 1013904223u; return rng >> 8; }

/* A layer with random codes, fp16-exact scales of both signs and (asym)
 * zero points in [min_zp, maxq]. */
static rand_layer make_layer(const char *name, int n, int k, int bits, int group, int sym, int min_zp) {
    rand_layer r = {0};
    int g = group > 0 ? group : k, ng = (k + g - 1) / g, maxq = (1 << bits) - 1;
    r.codes = malloc((size_t)n * k);
    r.scale = malloc((size_t)n * ng * sizeof(float));
    r.zp = sym ? NULL : malloc((size_t)n * ng * sizeof(int32_t));
    for (int i = 0; i < n * k; i++) r.codes[i] = (uint8_t)(rnd() % (maxq + 1));
    for (int i = 0; i < n * ng; i++) {
        r.scale[i] = ar_round_f16(((float)(rnd() % 2000) - 1000.f) * 1e-5f + (sym ? 0 : 0.02f));
        if (!sym) {
            r.scale[i] = r.scale[i] < 0 ? -r.scale[i] : r.scale[i];
            r.zp[i] = min_zp + (int32_t)(rnd() % (uint32_t)(maxq + 1 - min_zp));
        }
    }
    r.l = (ar_qlayer){.name = name, .n = n, .k = k, .bits = bits, .group_size = group, .sym = sym,
                      .codes = r.codes, .scale = r.scale, .zp = r.zp};
    return r;
}

static void free_layer(rand_layer *r) { free(r->codes); free(r->scale); free(r->zp); }

/* unpacked == original, zero points compared through ar_qlayer_zp. */
static void assert_same(const ar_qlayer *l, const uint8_t *codes, const float *scale, const int32_t *zp) {
    int ng = ar_qlayer_ngroups(l);
    cr_assert_arr_eq(codes, l->codes, (size_t)l->n * l->k, "%s b%d G%d: codes", l->name, l->bits, l->group_size);
    for (int n = 0; n < l->n; n++)
        for (int g = 0; g < ng; g++) {
            cr_assert_eq(scale[n * ng + g], l->scale[n * ng + g], "scale [%d,%d]", n, g);
            cr_assert_eq(zp[n * ng + g], ar_qlayer_zp(l, n, g), "zp [%d,%d] b%d", n, g, l->bits);
        }
}

static void gptq_round_trip(int n, int k, int bits, int group, int sym, int zm1) {
    rand_layer r = make_layer("rt", n, k, bits, group, sym, zm1 ? 1 : 0);
    int ng = ar_qlayer_ngroups(&r.l), g = ar_qlayer_group(&r.l);
    int32_t *qw = malloc((size_t)k / 32 * bits * n * 4), *qz = malloc((size_t)ng * n / 32 * bits * 4);
    uint16_t *sc = malloc((size_t)ng * n * 2);
    uint8_t *codes = malloc((size_t)n * k);
    float *scale = malloc((size_t)n * ng * 4);
    int32_t *zp = malloc((size_t)n * ng * 4);
    cr_assert_eq(ar_pack_gptq(&r.l, zm1, qw, qz, sc), 0, "%s", ar_last_error());
    ar_unpack_gptq(n, k, bits, g, zm1, qw, qz, sc, codes, scale, zp);
    assert_same(&r.l, codes, scale, zp);
    free(qw); free(qz); free(sc); free(codes); free(scale); free(zp);
    free_layer(&r);
}

Test(pack_gptq, round_trips_all_bits_groups) {
    static const int bits[] = {2, 3, 4, 8}, groups[] = {32, 64, 128, -1};
    for (int b = 0; b < 4; b++)
        for (int g = 0; g < 4; g++)
            for (int sym = 0; sym < 2; sym++)
                for (int zm1 = 0; zm1 < 2; zm1++) {
                    gptq_round_trip(64, 256, bits[b], groups[g], sym, zm1);
                    gptq_round_trip(96, 160, bits[b], groups[g], sym, zm1);   /* K % G != 0 for 64/128 */
                }
}

/* The v1 convention stores zp - 1, so zp 0 cannot be represented: like
 * AutoRound's packer it is clamped and reads back as 1. */
Test(pack_gptq, zero_zp_v1_clamps_to_one) {
    rand_layer r = make_layer("z", 32, 32, 4, 32, 0, 1);
    r.zp[5] = 0;
    int32_t qw[32 * 4], qz[4];
    uint16_t sc[32];
    uint8_t codes[32 * 32];
    float scale[32];
    int32_t zp[32];
    cr_assert_eq(ar_pack_gptq(&r.l, 1, qw, qz, sc), 0);
    ar_unpack_gptq(32, 32, 4, 32, 1, qw, qz, sc, codes, scale, zp);
    cr_assert_eq(zp[5], 1);
    cr_assert_eq(zp[6], r.zp[6]);
    free_layer(&r);
}

Test(pack_awq, round_trips) {
    static const int groups[] = {32, 64, 128, -1};
    for (int g = 0; g < 4; g++) {
        int n = 40, k = 256;                              /* N multiple of 8 but not of 32 */
        rand_layer r = make_layer("awq", n, k, 4, groups[g], 0, 0);
        int ng = ar_qlayer_ngroups(&r.l);
        int32_t *qw = malloc((size_t)k * n / 8 * 4), *qz = malloc((size_t)ng * n / 8 * 4);
        uint16_t *sc = malloc((size_t)ng * n * 2);
        uint8_t *codes = malloc((size_t)n * k);
        float *scale = malloc((size_t)n * ng * 4);
        int32_t *zp = malloc((size_t)n * ng * 4);
        cr_assert_eq(ar_pack_awq(&r.l, qw, qz, sc), 0, "%s", ar_last_error());
        ar_unpack_awq(n, k, ar_qlayer_group(&r.l), qw, qz, sc, codes, scale, zp);
        assert_same(&r.l, codes, scale, zp);
        free(qw); free(qz); free(sc); free(codes); free(scale); free(zp);
        free_layer(&r);
    }
}

Test(pack_check, rejects_what_layouts_cannot_hold) {
    rand_layer a = make_layer("model.layers.0.mlp.down_proj", 48, 64, 4, 32, 1, 0);
    cr_assert_eq(ar_qlayer_check(&a.l, AR_LAYOUT_GPTQ), -1);
    cr_assert(strstr(ar_last_error(), "down_proj: N=48 is not a multiple of 32"), "%s", ar_last_error());
    cr_assert_eq(ar_qlayer_check(&a.l, AR_LAYOUT_NONE), 0);
    free_layer(&a);
    rand_layer b = make_layer("x", 12, 64, 4, 32, 0, 0);
    cr_assert_eq(ar_qlayer_check(&b.l, AR_LAYOUT_AWQ), -1);
    cr_assert(strstr(ar_last_error(), "multiple of 8"), "%s", ar_last_error());
    free_layer(&b);
    rand_layer c = make_layer("y", 32, 96, 4, 64, 0, 0);
    cr_assert_eq(ar_qlayer_check(&c.l, AR_LAYOUT_AWQ), -1);
    cr_assert(strstr(ar_last_error(), "group_size"), "%s", ar_last_error());
    c.l.bits = 3;
    cr_assert_eq(ar_qlayer_check(&c.l, AR_LAYOUT_AWQ), -1);
    c.l.bits = 4;
    c.codes[7] = 16;
    cr_assert_eq(ar_qlayer_check(&c.l, AR_LAYOUT_GPTQ), -1);
    cr_assert(strstr(ar_last_error(), "exceeds 4 bits"), "%s", ar_last_error());
    free_layer(&c);
}

/* ---- safetensors writer ------------------------------------------------------ */

static char tmpdir[256];

static void make_tmp(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ar_test_packers_XXXXXX");
    fx_make_tmp(tmpdir);
}

Test(parse_size, units) {
    uint64_t b;
    cr_assert_eq(ar_parse_size("5GB", &b), 0);
    cr_assert_eq(b, 5000000000ull);
    cr_assert_eq(ar_parse_size("500MB", &b), 0);
    cr_assert_eq(b, 500000000ull);
    cr_assert_eq(ar_parse_size("2GiB", &b), 0);
    cr_assert_eq(b, 2147483648ull);
    cr_assert_eq(ar_parse_size("1000", &b), 0);
    cr_assert_eq(b, 1000ull);
    cr_assert_eq(ar_parse_size("5XB", &b), -1);
    cr_assert(strstr(ar_last_error(), "unknown unit"));
}

Test(stw, shards_read_back_by_the_reader, .init = make_tmp) {
    ar_stw *w = ar_stw_open(tmpdir, 1000);
    cr_assert(w);
    float a[100], c[300];
    for (int i = 0; i < 100; i++) a[i] = (float)i;
    for (int i = 0; i < 300; i++) c[i] = -(float)i;
    int64_t sa[2] = {10, 10}, sc[1] = {300}, sb[1] = {3};
    cr_assert_eq(ar_stw_put(w, "a", AR_F32, 2, sa, a), 0);            /* 400 B */
    cr_assert_eq(ar_stw_begin(w, "c", AR_F32, 1, sc), 0);               /* 1200 B > limit: own shard */
    cr_assert_eq(ar_stw_write(w, c, 500), 0);                           /* in pieces */
    cr_assert_eq(ar_stw_write(w, (char *)c + 500, 700), 0);
    int32_t bi[3] = {7, -8, 9};
    cr_assert_eq(ar_stw_put(w, "b", AR_I32, 1, sb, bi), 0);
    cr_assert_eq(ar_stw_put(w, "b", AR_I32, 1, sb, bi), -1);           /* duplicate name */
    cr_assert_eq(ar_stw_close(w), 0, "%s", ar_last_error());
    char p[400];
    snprintf(p, sizeof p, "%s/model-00003-of-00003.safetensors", tmpdir);
    cr_assert_eq(access(p, F_OK), 0, "three shards expected");
    ar_safetensors *st = ar_st_open_dir(tmpdir);
    cr_assert(st, "%s", ar_last_error());
    cr_assert_eq(ar_st_count(st), 3);
    float back[300];
    cr_assert_eq(ar_st_read_f32(st, "c", back, 300), 0);
    cr_assert_arr_eq(back, c, sizeof c);
    cr_assert_eq(ar_st_read_f32(st, "a", back, 100), 0);
    cr_assert_arr_eq(back, a, sizeof a);
    const ar_st_tensor *t = ar_st_find(st, "b");
    cr_assert(t && t->dtype == AR_I32 && !memcmp(t->data, bi, sizeof bi));
    ar_st_close(st);
    fx_rm_rf(tmpdir);
}

Test(stw, single_file_header_is_aligned, .init = make_tmp) {
    ar_stw *w = ar_stw_open(tmpdir, 0);
    int64_t s[1] = {1};
    uint16_t h = 0x3c00;
    cr_assert_eq(ar_stw_put(w, "x", AR_F16, 1, s, &h), 0);
    cr_assert_eq(ar_stw_close(w), 0);
    char p[400];
    snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
    size_t n;
    char *f = hf_read_file(p, &n);
    cr_assert(f);
    uint64_t hl;
    memcpy(&hl, f, 8);
    cr_assert_eq(hl % 8, 0);
    cr_assert_eq(n, 8 + hl + 2);
    cr_assert(strstr(f + 8, "{\"__metadata__\":{\"format\":\"pt\"},\"x\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}"));
    free(f);
    fx_rm_rf(tmpdir);
}

/* ---- whole folders ------------------------------------------------------------ */

#define H 64        /* hidden size of the fixture model */
#define NQ 96       /* q_proj out features */

/* Element j of fixture tensor i: small integers, exact in bf16. */
static float model_value(size_t i, size_t j) { return (float)((j * 7 + i) % 13) - 6.f; }

/* A fixture "model": embeddings, one block with q_proj (+bias) and an
 * unquantized down_proj, final norm, lm_head; bf16; with a config.json and a
 * tokenizer.json to be copied. */
static void make_model(const char *dir) {
    const fx_tensor t[] = {
        {"model.embed_tokens.weight", 2, {32, H}},   {"model.layers.0.self_attn.q_proj.weight", 2, {NQ, H}},
        {"model.layers.0.self_attn.q_proj.bias", 1, {NQ}}, {"model.layers.0.mlp.down_proj.weight", 2, {H, H}},
        {"model.norm.weight", 1, {H}},               {"lm_head.weight", 2, {32, H}}};
    fx_write_bf16_model(dir, t, sizeof t / sizeof t[0], model_value);
    fx_write_text(dir, "config.json",
                  "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"dtype\": \"bfloat16\",\n  \"rope_theta\": 10000.0\n}\n");
    fx_write_text(dir, "tokenizer.json", "{}\n");
}

static char *read_in(const char *dir, const char *name) {
    char p[400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return hf_read_file(p, NULL);
}

/* Export q_proj with opts, read it back through the folder reader. */
static void export_and_check(const char *format, int bits, int group, int sym, uint64_t shard, const char *want_layout) {
    char model[300], out[300];
    snprintf(model, sizeof model, "%s/model", tmpdir);
    snprintf(out, sizeof out, "%s/out-%s-%d-%d-%d", tmpdir, format, bits, group, sym);
    if (access(model, F_OK)) make_model(model);
    rand_layer r = make_layer("model.layers.0.self_attn.q_proj", NQ, H, bits, group, sym, 1);
    ar_export_opts o = {.format = format, .bits = bits, .group_size = group, .sym = sym,
                        .max_shard_bytes = shard, .tuning_json = "{\"iters\": 0}"};
    ar_export *e = ar_export_open(model, out, &o);
    cr_assert(e, "%s", ar_last_error());
    cr_assert_eq(ar_export_layer(e, &r.l), 0, "%s", ar_last_error());
    cr_assert_eq(ar_export_finish(e), 0, "%s", ar_last_error());
    ar_qfolder *q = ar_qfolder_open(out);
    cr_assert(q, "%s", ar_last_error());
    cr_assert_str_eq(ar_qfolder_layout(q), want_layout);
    ar_qunpacked u;
    cr_assert_eq(ar_qfolder_unpack(q, r.l.name, &u), 0, "%s", ar_last_error());
    cr_assert_eq(u.n, NQ);
    cr_assert_eq(u.k, H);
    assert_same(&r.l, u.codes, u.scale, u.zp);
    ar_qunpacked_free(&u);
    ar_qfolder_close(q);
    /* the tensor source dequantizes q_proj and passes the rest through */
    ar_tensor_source src;
    cr_assert_eq(ar_source_quantized(&src, out), 0, "%s", ar_last_error());
    int nd;
    int64_t shape[AR_SRC_MAX_DIMS];
    cr_assert_eq(src.shape(src.ctx, "model.layers.0.self_attn.q_proj.weight", &nd, shape), 0);
    cr_assert(nd == 2 && shape[0] == NQ && shape[1] == H);
    float *w = malloc(sizeof(float) * NQ * H), *ref = malloc(sizeof(float) * NQ * H);
    cr_assert_eq(src.read_rows(src.ctx, "model.layers.0.self_attn.q_proj.weight", 0, NQ, w), 0, "%s", ar_last_error());
    ar_qlayer_dequant(&r.l, ref);
    cr_assert_arr_eq(w, ref, sizeof(float) * NQ * H);
    cr_assert_eq(src.shape(src.ctx, "lm_head.weight", &nd, shape), 0);
    cr_assert_eq(src.shape(src.ctx, "no.such.weight", &nd, shape), 1);
    src.close(src.ctx);
    char *tok = read_in(out, "tokenizer.json");
    cr_assert(tok, "tokenizer.json copied");
    free(tok);
    free(w);
    free(ref);
    free_layer(&r);
}

Test(export, auto_round_sym_all_bits, .init = make_tmp) {
    static const int bits[] = {2, 3, 4, 8}, groups[] = {32, 64, -1};
    for (int b = 0; b < 4; b++)
        for (int g = 0; g < 3; g++) export_and_check("auto_round", bits[b], groups[g], 1, 0, "auto_round:auto_gptq");
    char *cfg = read_in(tmpdir, "out-auto_round-4-32-1/config.json");
    cr_assert(strstr(cfg, "\"rope_theta\": 10000.0"), "original bytes kept");
    cr_assert(strstr(cfg, "\"quant_method\": \"auto-round\""));
    cr_assert(strstr(cfg, "\"packing_format\": \"auto_round:auto_gptq\""));
    cr_assert(strstr(cfg, "\"block_name_to_quantize\": \"model.layers\""));
    cr_assert(!strstr(cfg, "\"iters\"") && strstr(cfg, "\"enable_quanted_input\": false"), "RTN: AutoRound's keys");
    cr_assert(strstr(cfg, "\"model.layers.0.mlp.down_proj\": {"), "16-bit in-block layer in extra_config:\n%s", cfg);
    cr_assert(strstr(cfg, "\"dtype\": \"bfloat16\""));
    free(cfg);
    fx_rm_rf(tmpdir);
}

Test(export, auto_round_asym_layouts, .init = make_tmp) {
    export_and_check("auto_round", 4, 32, 0, 0, "auto_round:auto_awq");
    export_and_check("auto_round", 2, 32, 0, 0, "auto_round");
    export_and_check("auto_round", 3, -1, 0, 0, "auto_round");
    export_and_check("auto_round", 8, 64, 0, 0, "auto_round");
    char *cfg = read_in(tmpdir, "out-auto_round-4-32-0/config.json");
    cr_assert(strstr(cfg, "\"dtype\": \"float16\""), "AWQ layout forces fp16");
    free(cfg);
    fx_rm_rf(tmpdir);
}

Test(export, auto_gptq_and_sharding, .init = make_tmp) {
    static const int bits[] = {2, 3, 4, 8};
    for (int b = 0; b < 4; b++) export_and_check("auto_gptq", bits[b], 32, b % 2, 4096, "gptq");
    char *cfg = read_in(tmpdir, "out-auto_gptq-4-32-0/config.json");
    cr_assert(strstr(cfg, "\"quant_method\": \"gptq\"") && strstr(cfg, "\"desc_act\": false"));
    cr_assert(strstr(cfg, "\"-:.*model\\\\.layers\\\\.0\\\\.mlp\\\\.down_proj.*\": {}"), "%s", cfg);  /* AutoRound's regex key */
    cr_assert(!strstr(cfg, "checkpoint_format"), "%s", cfg);
    cr_assert(strstr(cfg, "\"torch_dtype\": \"float16\""));
    free(cfg);
    char *idx = read_in(tmpdir, "out-auto_gptq-4-32-0/model.safetensors.index.json");
    cr_assert(idx && strstr(idx, "\"model.layers.0.self_attn.q_proj.g_idx\": \"model-0000"));
    free(idx);
    char *qc = read_in(tmpdir, "out-auto_gptq-4-32-0/quantize_config.json");
    char *qc2 = read_in(tmpdir, "out-auto_gptq-4-32-0/quantization_config.json");
    cr_assert(qc && qc2 && !strcmp(qc, qc2));
    free(qc);
    free(qc2);
    fx_rm_rf(tmpdir);
}

Test(export, auto_awq_and_refusals, .init = make_tmp) {
    export_and_check("auto_awq", 4, 32, 0, 0, "awq");
    export_and_check("auto_awq", 4, -1, 0, 0, "awq");
    char *cfg = read_in(tmpdir, "out-auto_awq-4-32-0/config.json");
    cr_assert(strstr(cfg, "\"version\": \"gemm\"") && strstr(cfg, "\"zero_point\": true"));
    cr_assert(strstr(cfg, "\"lm_head\"") && strstr(cfg, "\"model.layers.0.mlp.down_proj\""), "%s", cfg);
    free(cfg);
    char model[300], out[300];
    snprintf(model, sizeof model, "%s/model", tmpdir);
    snprintf(out, sizeof out, "%s/refused", tmpdir);
    ar_export_opts o = {.format = "auto_awq", .bits = 4, .group_size = 128, .sym = 1};
    cr_assert_null(ar_export_open(model, out, &o));
    cr_assert(strstr(ar_last_error(), "symmetric quantization cannot be exported as AWQ"), "%s", ar_last_error());
    cr_assert_neq(access(out, F_OK), 0);
    o.format = "gguf";
    cr_assert_null(ar_export_open(model, out, &o));
    cr_assert(strstr(ar_last_error(), "unknown export format"));
    /* a packed layer that does not fit leaves no output folder behind */
    o = (ar_export_opts){.format = "auto_round", .bits = 4, .group_size = 32, .sym = 1};
    ar_export *e = ar_export_open(model, out, &o);
    rand_layer r = make_layer("model.layers.0.self_attn.q_proj", NQ, H + 1, 4, 32, 1, 0);
    cr_assert_eq(ar_export_layer(e, &r.l), -1);
    cr_assert(strstr(ar_last_error(), "is not [96, 65]"), "%s", ar_last_error());
    ar_export_abort(e);
    cr_assert_neq(access(out, F_OK), 0);
    free_layer(&r);
    fx_rm_rf(tmpdir);
}

Test(export, fake_writes_dequantized_bf16, .init = make_tmp) {
    char model[300], out[300];
    snprintf(model, sizeof model, "%s/model", tmpdir);
    snprintf(out, sizeof out, "%s/fake", tmpdir);
    make_model(model);
    rand_layer r = make_layer("model.layers.0.self_attn.q_proj", NQ, H, 3, 64, 1, 0);
    ar_export_opts o = {.format = "fake", .bits = 3, .group_size = 64, .sym = 1};
    ar_export *e = ar_export_open(model, out, &o);
    cr_assert(e);
    cr_assert_eq(ar_export_layer(e, &r.l), 0, "%s", ar_last_error());
    cr_assert_eq(ar_export_finish(e), 0, "%s", ar_last_error());
    ar_safetensors *st = ar_st_open_dir(out);
    const ar_st_tensor *t = ar_st_find(st, "model.layers.0.self_attn.q_proj.weight");
    cr_assert(t && t->dtype == AR_BF16);
    cr_assert(ar_st_find(st, "model.layers.0.self_attn.q_proj.bias")->dtype == AR_BF16);
    float *w = malloc(sizeof(float) * NQ * H), *ref = malloc(sizeof(float) * NQ * H);
    ar_st_read_f32(st, t->name, w, NQ * H);
    ar_qlayer_dequant(&r.l, ref);
    for (int i = 0; i < NQ * H; i++) cr_assert_eq(w[i], ar_round_bf16(ref[i]));
    ar_st_close(st);
    char *cfg = read_in(out, "config.json");
    cr_assert_null(strstr(cfg, "quantization_config"));
    free(cfg);
    free(w);
    free(ref);
    free_layer(&r);
    fx_rm_rf(tmpdir);
}
