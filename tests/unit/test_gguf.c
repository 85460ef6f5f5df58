/* test_gguf.c — GGUF reader/writer and HF -> GGUF conversion, against the
 * stock llama.cpp files of stories260K ($AR_SHARED/models/stories260K/gguf-reference,
 * made by convert_hf_to_gguf.py and llama-quantize; see its README). */
#include "error.h"
#include "fixture.h"
#include "gguf.h"
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char model_dir[1024], ref_dir[1100];
static char tmp_dir[] = "/tmp/ar_test_gguf_XXXXXX";

static void setup(void)
{
    fx_model_dir(model_dir, sizeof model_dir, "stories260K");
    snprintf(ref_dir, sizeof ref_dir, "%s/gguf-reference", model_dir);
    fx_make_tmp(tmp_dir);
}

static void teardown(void) { fx_rm_rf(tmp_dir); }

TestSuite(gguf, .init = setup, .fini = teardown);

static ar_gguf *open_ref(const char *file)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", ref_dir, file);
    ar_gguf *g = ar_gguf_open(path);
    cr_assert(g, "%s", ar_last_error());
    return g;
}

static char *tmp_path(const char *name) { return fx_path_in(tmp_dir, name); }

Test(gguf, reads_reference_metadata_and_tensors)
{
    ar_gguf *g = open_ref("stories260K-f32.gguf");
    cr_assert_eq(ar_gguf_version(g), 3);
    cr_assert_eq(ar_gguf_n_tensors(g), 47);
    cr_assert_str_eq(ar_gguf_find_kv(g, "general.architecture")->str, "llama");
    cr_assert_eq(ar_gguf_kv_int(ar_gguf_find_kv(g, "llama.block_count")), 5);
    cr_assert_eq(ar_gguf_kv_float(ar_gguf_find_kv(g, "llama.rope.freq_base")), 10000.0); /* exact: an f32 field */
    const ar_gguf_kv *tokens = ar_gguf_find_kv(g, "tokenizer.ggml.tokens");
    cr_assert_eq(tokens->n, 512);
    const char *s;
    uint64_t len;
    cr_assert_eq(ar_gguf_kv_arr_str(g, tokens, 1, &s, &len), 0);
    cr_assert(len == 3 && !memcmp(s, "<s>", 3));
    const ar_gguf_tensor *t = ar_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    cr_assert(t);
    cr_assert_eq(t->type, AR_GGML_F32);
    cr_assert(t->ne[0] == 172 && t->ne[1] == 64 && t->n_dims == 2);
    ar_gguf_close(g);
}

/* Quantize each tensor of the F32 reference with our kernels to the type
 * llama-quantize chose and compare the bytes with its output file. */
static void check_requantized(const char *quant_file)
{
    ar_gguf *f32 = open_ref("stories260K-f32.gguf"), *q = open_ref(quant_file);
    int checked = 0;
    for (size_t i = 0; i < ar_gguf_n_tensors(q); i++) {
        const ar_gguf_tensor *tq = ar_gguf_tensor_at(q, i), *tf = ar_gguf_find_tensor(f32, tq->name);
        cr_assert(tf, "%s missing from the F32 file", tq->name);
        void *out = malloc(tq->nbytes);
        int64_t rows = ar_gguf_tensor_numel(tf) / tf->ne[0];
        cr_assert_eq(ar_ggml_quantize(tq->type, tf->data, out, rows, tf->ne[0], NULL), 0, "%s", ar_last_error());
        cr_assert_eq(memcmp(out, tq->data, tq->nbytes), 0, "%s: %s tensor %s differs from llama-quantize", quant_file,
                     ar_ggml_type_name(tq->type), tq->name);
        checked += ar_ggml_is_quantized(tq->type);
        free(out);
    }
    cr_assert_gt(checked, 30);
    ar_gguf_close(f32);
    ar_gguf_close(q);
}

Test(gguf, q8_0_matches_llama_quantize) { check_requantized("stories260K-Q8_0.gguf"); }
Test(gguf, q4_0_matches_llama_quantize) { check_requantized("stories260K-Q4_0.gguf"); }
Test(gguf, q4_k_m_fallbacks_match_llama_quantize) { check_requantized("stories260K-Q4_K_M.gguf"); }

/* Keys whose values are cosmetic (the model's display name and size label). */
static int cosmetic(const char *key) { return !strcmp(key, "general.name") || !strcmp(key, "general.size_label"); }

static void check_same_kv(const ar_gguf *a, const ar_gguf_kv *ka, const ar_gguf *b, const ar_gguf_kv *kb)
{
    cr_assert_eq(ka->type, kb->type, "%s: type %d vs %d", ka->key, ka->type, kb->type);
    cr_assert_eq(ka->elem_type, kb->elem_type, "%s", ka->key);
    cr_assert_eq(ka->n, kb->n, "%s: %llu vs %llu elements", ka->key, (unsigned long long)ka->n,
                 (unsigned long long)kb->n);
    if (ka->type == AR_GGUF_STRING) {
        cr_assert_str_eq(ka->str, kb->str, "%s", ka->key);
    } else if (ka->elem_type == AR_GGUF_STRING) {
        for (uint64_t i = 0; i < ka->n; i++) {
            const char *sa, *sb;
            uint64_t la, lb;
            ar_gguf_kv_arr_str(a, ka, i, &sa, &la);
            ar_gguf_kv_arr_str(b, kb, i, &sb, &lb);
            cr_assert(la == lb && !memcmp(sa, sb, la), "%s[%llu]: '%.*s' vs '%.*s'", ka->key,
                      (unsigned long long)i, (int)la, sa, (int)lb, sb);
        }
    } else if (ka->type == AR_GGUF_ARRAY) {
        for (uint64_t i = 0; i < ka->n; i++)
            cr_assert_eq(ar_gguf_kv_arr_float(ka, i), ar_gguf_kv_arr_float(kb, i), "%s[%llu]", ka->key,
                         (unsigned long long)i);
    } else {
        cr_assert_eq(ar_gguf_kv_float(ka), ar_gguf_kv_float(kb), "%s: %g vs %g", ka->key, ar_gguf_kv_float(ka),
                     ar_gguf_kv_float(kb));
    }
}

/* Our conversion vs llama.cpp's file: same keys and values (but cosmetic ones),
 * same tensors with the same types, shapes and bytes. */
static void check_conversion(const char *mix, const char *ref_file)
{
    char *out = tmp_path(mix);
    cr_assert_eq(ar_gguf_convert_hf(model_dir, out, ar_gguf_ftype_parse(mix), NULL, NULL), 0, "%s", ar_last_error());
    cr_assert_eq(access(tmp_path("F32.tmp"), F_OK), -1, "temporary file left behind");
    ar_gguf *ours = ar_gguf_open(out), *ref = open_ref(ref_file);
    cr_assert(ours, "%s", ar_last_error());
    for (size_t i = 0; i < ar_gguf_n_kv(ref); i++) {
        const ar_gguf_kv *kr = ar_gguf_kv_at(ref, i), *ko = ar_gguf_find_kv(ours, kr->key);
        if (cosmetic(kr->key)) continue;
        cr_assert(ko, "%s: key %s missing", mix, kr->key);
        check_same_kv(ours, ko, ref, kr);
    }
    for (size_t i = 0; i < ar_gguf_n_kv(ours); i++)
        cr_assert(ar_gguf_find_kv(ref, ar_gguf_kv_at(ours, i)->key) || cosmetic(ar_gguf_kv_at(ours, i)->key),
                  "extra key %s", ar_gguf_kv_at(ours, i)->key);
    cr_assert_eq(ar_gguf_n_tensors(ours), ar_gguf_n_tensors(ref));
    for (size_t i = 0; i < ar_gguf_n_tensors(ref); i++) {
        const ar_gguf_tensor *tr = ar_gguf_tensor_at(ref, i), *to = ar_gguf_find_tensor(ours, tr->name);
        cr_assert(to, "%s: tensor %s missing", mix, tr->name);
        cr_assert_eq(to->type, tr->type, "%s: %s is %s, llama.cpp has %s", mix, tr->name, ar_ggml_type_name(to->type),
                     ar_ggml_type_name(tr->type));
        cr_assert(to->n_dims == tr->n_dims && !memcmp(to->ne, tr->ne, sizeof to->ne), "%s: shape", tr->name);
        cr_assert_eq(memcmp(to->data, tr->data, tr->nbytes), 0, "%s: %s bytes differ (permutation?)", mix, tr->name);
    }
    ar_gguf_close(ours);
    ar_gguf_close(ref);
}

Test(gguf, convert_f32_matches_llama_cpp_converter) { check_conversion("F32", "stories260K-f32.gguf"); }
Test(gguf, convert_q4_k_m_matches_llama_quantize) { check_conversion("Q4_K_M", "stories260K-Q4_K_M.gguf"); }

/* The converter's permutation: per head of d rows, row 2i+k <- row k*d/2+i. */
Test(gguf, permute_qk_interleaves_halves)
{
    float w[8 * 2];
    for (int i = 0; i < 16; i++) w[i] = (float)i;   /* 8 rows of 2: row r holds 2r, 2r+1 */
    cr_assert_eq(ar_gguf_permute_qk(w, 8, 2, 2), 0);
    const int rows[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int r = 0; r < 8; r++) cr_assert_eq(w[2 * r], (float)(2 * rows[r]), "row %d", r);
    cr_assert_eq(ar_gguf_permute_qk(w, 6, 2, 4), -1);
}

Test(gguf, map_names)
{
    char out[128];
    cr_assert_eq(ar_gguf_map_name("model.layers.12.mlp.down_proj.weight", out, sizeof out), 1);
    cr_assert_str_eq(out, "blk.12.ffn_down.weight");
    cr_assert_eq(ar_gguf_map_name("model.layers.0.self_attn.q_proj.bias", out, sizeof out), 1);
    cr_assert_str_eq(out, "blk.0.attn_q.bias");
    cr_assert_eq(ar_gguf_map_name("model.layers.0.self_attn.k_norm.weight", out, sizeof out), 1);
    cr_assert_str_eq(out, "blk.0.attn_k_norm.weight");
    cr_assert_eq(ar_gguf_map_name("lm_head.weight", out, sizeof out), 1);
    cr_assert_str_eq(out, "output.weight");
    cr_assert_eq(ar_gguf_map_name("model.layers.0.self_attn.rotary_emb.inv_freq", out, sizeof out), 0);
    cr_assert_eq(ar_gguf_map_name("model.vision.patch_embed", out, sizeof out), -1);
}

/* The family names: Gemma's post_attention_layernorm follows attention, Llama's
 * precedes the MLP; Phi-3's fused projections; GLM-4's post norms. */
Test(gguf, map_names_of_the_dense_families)
{
    char out[128];
    ar_config llama = {0}, gemma = {0};
    gemma.sandwich_norm = 1;
    const struct { const ar_config *c; const char *hf, *gguf; } cases[] = {
        {&llama, "model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"},
        {&gemma, "model.layers.3.post_attention_layernorm.weight", "blk.3.post_attention_norm.weight"},
        {&gemma, "model.layers.3.pre_feedforward_layernorm.weight", "blk.3.ffn_norm.weight"},
        {&gemma, "model.layers.3.post_feedforward_layernorm.weight", "blk.3.post_ffw_norm.weight"},
        {&llama, "model.layers.1.self_attn.qkv_proj.weight", "blk.1.attn_qkv.weight"},
        {&llama, "model.layers.1.mlp.gate_up_proj.weight", "blk.1.ffn_up.weight"},
        {&llama, "model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight"},
        {&llama, "model.layers.1.post_self_attn_layernorm.weight", "blk.1.post_attention_norm.weight"},
        {&llama, "model.layers.1.post_mlp_layernorm.weight", "blk.1.post_ffw_norm.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(ar_gguf_map_name_for(cases[i].c, cases[i].hf, out, sizeof out), 1, "%s", cases[i].hf);
        cr_assert_str_eq(out, cases[i].gguf, "%s", cases[i].hf);
    }
}

/* Rescaling quantized blocks through their fp16 scales multiplies every
 * dequantized value by f: each value is d·X - dmin·Y with |d·X|, |dmin·Y| at
 * most about twice the block's largest |x|, and each scale rounds once to fp16
 * (2^-11 relative), so |after - f·before| <= 2^-11·f·(2 + 1)·max|x|. */
Test(gguf, scale_blocks_multiplies_every_value)
{
    static const ar_ggml_type types[] = {AR_GGML_Q4_0, AR_GGML_Q4_1, AR_GGML_Q5_0, AR_GGML_Q5_1, AR_GGML_Q8_0,
                                         AR_GGML_Q2_K, AR_GGML_Q3_K, AR_GGML_Q4_K, AR_GGML_Q5_K, AR_GGML_Q6_K};
    enum { N = 512 };
    float x[N], a[N], b[N], xmax = 0;
    uint32_t r = 12345;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        x[i] = ((float)(r >> 8) / (1 << 24) - 0.3f) * (1 + (i % 7));   /* asymmetric, varying blocks */
        if (fabsf(x[i]) > xmax) xmax = fabsf(x[i]);
    }
    const double f = sqrt(32.0 / 24.0);   /* the tiny Gemma 2's fold */
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        ar_ggml_type t = types[k];
        size_t nb = ar_ggml_row_bytes(t, N);
        uint8_t *q = malloc(nb);
        cr_assert_eq(ar_ggml_quantize(t, x, q, 1, N, NULL), 0);
        cr_assert_eq(ar_ggml_dequantize(t, q, a, N), 0);
        cr_assert_eq(ar_gguf_scale_blocks(q, t, nb, f, "t"), 0, "%s", ar_last_error());
        cr_assert_eq(ar_ggml_dequantize(t, q, b, N), 0);
        double worst = 0, bound = ldexp(1.0, -11) * f * 3 * xmax;
        for (int i = 0; i < N; i++) worst = fmax(worst, fabs(b[i] - f * a[i]));
        cr_assert_leq(worst, bound, "%s: %g > %g", ar_ggml_type_name(t), worst, bound);
        free(q);
    }
    uint8_t z[8] = {0};
    cr_assert_eq(ar_gguf_scale_blocks(z, AR_GGML_F16, sizeof z, f, "t"), -1, "F16 has no block scale");
}

/* ---- writer round trip and corrupt files --------------------------------------- */

/* A small valid file: a few KVs and two tensors; returns its size. */
static long write_small(const char *path)
{
    ar_gguf_writer *w = ar_gguf_writer_open(path);
    cr_assert(w, "%s", ar_last_error());
    const char *strs[] = {"a", "bc", ""};
    int32_t ints[] = {-1, 2, 3};
    ar_gguf_set_str(w, "general.architecture", "llama");
    ar_gguf_set_u32(w, "x.u32", 7);
    ar_gguf_set_f32(w, "x.f32", 0.5f);
    ar_gguf_set_bool(w, "x.bool", 1);
    ar_gguf_set_u64(w, "x.u64", 1ull << 40);
    ar_gguf_set_i32(w, "x.i32", -5);
    ar_gguf_set_u32(w, "x.u32", 8);   /* replaces */
    ar_gguf_set_arr_str(w, "x.strs", strs, 3);
    ar_gguf_set_arr(w, "x.ints", AR_GGUF_INT32, ints, 3);
    float data[64];
    for (int i = 0; i < 64; i++) data[i] = (float)i / 7;
    uint8_t q[2 * 34];
    cr_assert_eq(ar_ggml_quantize(AR_GGML_Q8_0, data, q, 1, 64, NULL), 0);
    int64_t ne1[1] = {64}, ne2[2] = {32, 2};
    cr_assert_eq(ar_gguf_writer_add_tensor(w, "a", AR_GGML_F32, 1, ne1, data, sizeof data), 0);
    cr_assert_eq(ar_gguf_writer_add_tensor(w, "b", AR_GGML_Q8_0, 2, ne2, q, sizeof q), 0);
    cr_assert_eq(ar_gguf_writer_add_tensor(w, "b", AR_GGML_Q8_0, 2, ne2, q, sizeof q), -1, "duplicate accepted");
    cr_assert_eq(ar_gguf_writer_add_tensor(w, "c", AR_GGML_Q8_0, 2, ne2, q, 10), -1, "wrong size accepted");
    cr_assert_eq(ar_gguf_writer_finish(w), 0, "%s", ar_last_error());
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

Test(gguf, writer_round_trip)
{
    char *path = tmp_path("small.gguf");
    write_small(path);
    ar_gguf *g = ar_gguf_open(path);
    cr_assert(g, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_n_kv(g), 8);
    cr_assert_eq(ar_gguf_kv_int(ar_gguf_find_kv(g, "x.u32")), 8);
    cr_assert_eq(ar_gguf_kv_float(ar_gguf_find_kv(g, "x.f32")), 0.5);
    cr_assert_eq(ar_gguf_kv_int(ar_gguf_find_kv(g, "x.bool")), 1);
    cr_assert_eq(ar_gguf_kv_int(ar_gguf_find_kv(g, "x.u64")), 1ll << 40);
    cr_assert_eq(ar_gguf_kv_int(ar_gguf_find_kv(g, "x.i32")), -5);
    cr_assert_eq(ar_gguf_kv_arr_int(ar_gguf_find_kv(g, "x.ints"), 0), -1);
    const char *s;
    uint64_t len;
    cr_assert_eq(ar_gguf_kv_arr_str(g, ar_gguf_find_kv(g, "x.strs"), 1, &s, &len), 0);
    cr_assert(len == 2 && !memcmp(s, "bc", 2));
    const ar_gguf_tensor *b = ar_gguf_find_tensor(g, "b");
    cr_assert(b && b->offset % 32 == 0 && b->ne[0] == 32 && b->ne[1] == 2);
    float back[64];
    cr_assert_eq(ar_gguf_tensor_f32(ar_gguf_find_tensor(g, "a"), back), 0);
    cr_assert_eq(back[7], 1.f);
    cr_assert_eq(ar_gguf_tensor_f32(b, back), 0);
    /* Q8_0: within half a step of its block (elements 0..31, amax 31/7) of
     * the value; the step amax/127 is stored as fp16 (relative 2^-11) */
    double step = 31.0 / 7 / 127 * (1 + 0x1p-11);
    fx_assert_within(back[10], 10.0 / 7, step / 2 / FX_SAFETY, "Q8_0 element 10");
    ar_gguf_close(g);
}

/* Copy the first n bytes of src to dst, then overwrite `len` bytes at `at`. */
static void make_variant(const char *src, const char *dst, long n, long at, const void *patch, size_t len)
{
    FILE *f = fopen(src, "rb");
    char *buf = calloc(1, (size_t)n + 64);
    cr_assert(fread(buf, 1, (size_t)n, f) > 0);
    fclose(f);
    if (patch) memcpy(buf + at, patch, len);
    f = fopen(dst, "wb");
    fwrite(buf, 1, (size_t)n, f);
    fclose(f);
    free(buf);
}

static void expect_reject(const char *path, const char *what)
{
    ar_gguf *g = ar_gguf_open(path);
    cr_assert_null(g, "accepted a file with %s", what);
    cr_assert(strstr(ar_last_error(), path), "message does not name the file: %s", ar_last_error());
    cr_assert(strstr(ar_last_error(), what), "expected '%s' in: %s", what, ar_last_error());
}

Test(gguf, rejects_corrupt_files)
{
    char *good = tmp_path("good.gguf"), *bad = tmp_path("bad.gguf");
    long n = write_small(good);
    uint64_t huge = 1ull << 60;
    uint32_t v9 = 9, t99 = 99;
    make_variant(good, bad, n, 0, "GGUX", 4);
    expect_reject(bad, "bad magic");
    make_variant(good, bad, n, 4, &v9, 4);
    expect_reject(bad, "version 9");
    make_variant(good, bad, n, 16, &huge, 8);
    expect_reject(bad, "KV count");
    make_variant(good, bad, n, 8, &huge, 8);
    expect_reject(bad, "tensor count");
    make_variant(good, bad, n, 24, &huge, 8);               /* first key's length */
    expect_reject(bad, "key length");
    make_variant(good, bad, n, 24 + 8 + 20, &t99, 4);       /* "general.architecture" value type */
    expect_reject(bad, "unknown value type 99");
    make_variant(good, bad, n - 100, 0, NULL, 0);
    expect_reject(bad, "runs past end of file");
    make_variant(good, bad, 40, 0, NULL, 0);                /* cut inside the first key */
    expect_reject(bad, "KV count 8 is absurd");
    make_variant(good, bad, 3, 0, NULL, 0);
    expect_reject(bad, "magic");
}

/* Tensor infos sit right before the 32-byte-aligned data: patch the last
 * tensor's offset (its final 8 bytes before padding). */
Test(gguf, rejects_bad_tensor_offsets)
{
    char *good = tmp_path("good2.gguf"), *bad = tmp_path("bad2.gguf");
    long n = write_small(good);
    ar_gguf *g = ar_gguf_open(good);
    cr_assert(g);
    const ar_gguf_tensor *b = ar_gguf_find_tensor(g, "b");
    long scan_from = n - (long)(b->offset + b->nbytes);   /* at or after the data section start */
    uint64_t off = b->offset;
    ar_gguf_close(g);
    /* find the u64 offset of tensor b in the header by searching for its value near the end */
    FILE *f = fopen(good, "rb");
    uint8_t *buf = malloc((size_t)n);
    cr_assert(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    long at = -1;
    for (long i = scan_from - 8; i > 24; i--)
        if (!memcmp(buf + i, &off, 8)) { at = i; break; }
    free(buf);
    cr_assert_gt(at, 0);
    uint64_t misaligned = off + 4, beyond = off + 4096;
    make_variant(good, bad, n, at, &misaligned, 8);
    expect_reject(bad, "not a multiple of the alignment");
    make_variant(good, bad, n, at, &beyond, 8);
    expect_reject(bad, "runs past end of file");
}
