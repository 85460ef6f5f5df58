/* test_pack_gguf.c — ar-pack's GGUF output (formats/pack_gguf.h) and GGUF
 * files read back as a model (ar_source_gguf, ar_tokenizer_gguf), on
 * stories260K and llama.cpp's own files of it ($AR_SHARED/models/stories260K). */
#include "dtype.h"
#include "error.h"
#include "fixture.h"
#include "gguf.h"
#include "model_open.h"
#include "pack_gguf.h"
#include "safetensors.h"
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char model_dir[1024], ref_dir[1100];
static char tmp_dir[] = "/tmp/ar_test_pack_gguf_XXXXXX";

static void setup(void)
{
    fx_model_dir(model_dir, sizeof model_dir, "stories260K");
    snprintf(ref_dir, sizeof ref_dir, "%s/gguf-reference", model_dir);
    fx_make_tmp(tmp_dir);
}

static void teardown(void) { fx_rm_rf(tmp_dir); }

TestSuite(pack_gguf, .init = setup, .fini = teardown);

static char *tmp_path(const char *name) { return fx_path_in(tmp_dir, name); }

static uint32_t rng = 12345;
static uint32_t next_u32(void) { return rng = rng * 1664525u + 1013904223u; }
static float next_f(void) { return (float)(next_u32() >> 8) / (float)(1 << 24) - 0.5f; }

/* Every row of HF tensor name from source src. */
static float *read_all(ar_tensor_source *src, const char *name, int64_t *rows, int64_t *cols)
{
    int ndim;
    int64_t shape[AR_SRC_MAX_DIMS];
    cr_assert_eq(src->shape(src->ctx, name, &ndim, shape), 0, "%s", name);
    *rows = shape[0];
    *cols = ndim == 2 ? shape[1] : 1;
    float *x = malloc(sizeof(float) * (size_t)(*rows * *cols));
    cr_assert_eq(src->read_rows(src->ctx, name, 0, *rows, x), 0, "%s: %s", name, ar_last_error());
    return x;
}

/* llama.cpp's own F32 conversion read as HF tensors gives model.safetensors
 * exactly: names mapped back, Q/K rows un-permuted, config from metadata. */
Test(pack_gguf, source_reads_llama_cpp_f32_file_as_the_hf_model)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/stories260K-f32.gguf", ref_dir);
    ar_tensor_source src;
    ar_config c, hf;
    cr_assert_eq(ar_source_gguf(&src, &c, path), 0, "%s", ar_last_error());
    cr_assert_eq(ar_config_load(&hf, model_dir), 0);
    cr_assert(c.arch == AR_ARCH_LLAMA && c.hidden == hf.hidden && c.intermediate == hf.intermediate);
    cr_assert(c.n_layers == hf.n_layers && c.n_heads == hf.n_heads && c.n_kv_heads == hf.n_kv_heads);
    cr_assert(c.head_dim == hf.head_dim && c.vocab == hf.vocab && c.tie_embeddings == hf.tie_embeddings);
    cr_assert(c.rms_eps == hf.rms_eps && c.rope_theta == hf.rope_theta); /* exact: the same f32/f64 constants */
    ar_safetensors *st = ar_st_open_dir(model_dir);
    cr_assert(st);
    for (size_t i = 0; i < ar_st_count(st); i++) {
        const ar_st_tensor *t = ar_st_at(st, i);
        int64_t rows, cols;
        float *got = read_all(&src, t->name, &rows, &cols);
        cr_assert_eq((size_t)(rows * cols), t->numel, "%s", t->name);
        float *want = malloc(sizeof(float) * t->numel);
        cr_assert_eq(ar_st_read_f32(st, t->name, want, t->numel), 0);
        cr_assert_eq(memcmp(got, want, sizeof(float) * t->numel), 0, "%s differs", t->name);
        free(got); free(want);
    }
    int ndim;
    int64_t shape[AR_SRC_MAX_DIMS];
    cr_assert_eq(src.shape(src.ctx, "lm_head.weight", &ndim, shape), 1, "tied: no lm_head");
    float rows5[5 * 64];
    cr_assert_eq(src.read_rows(src.ctx, "model.layers.0.mlp.up_proj.weight", 170, 5, rows5), -1, "past the last row");
    ar_st_close(st);
    src.close(src.ctx);
}

/* The tensors of two GGUF files, by name: same types and bytes. */
static void check_same_tensors(const char *a_path, const char *b_path)
{
    ar_gguf *a = ar_gguf_open(a_path), *b = ar_gguf_open(b_path);
    cr_assert(a && b, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_n_tensors(a), ar_gguf_n_tensors(b));
    for (size_t i = 0; i < ar_gguf_n_tensors(a); i++) {
        const ar_gguf_tensor *ta = ar_gguf_tensor_at(a, i), *tb = ar_gguf_find_tensor(b, ta->name);
        cr_assert(tb, "%s missing", ta->name);
        cr_assert(ta->type == tb->type && ta->nbytes == tb->nbytes, "%s", ta->name);
        cr_assert_eq(memcmp(ta->data, tb->data, ta->nbytes), 0, "%s bytes differ", ta->name);
    }
    ar_gguf_close(a);
    ar_gguf_close(b);
}

/* Nothing tuned: everything is quantized at finish as the converter does,
 * i.e. as llama-quantize without imatrix. */
Test(pack_gguf, untuned_tensors_match_llama_quantize)
{
    ar_pack_gguf *p = ar_pack_gguf_open(model_dir, tmp_path("q4_0.gguf"), "q4_0", "W4A16");
    cr_assert(p, "%s", ar_last_error());
    cr_assert_eq(ar_pack_gguf_finish(p), 0, "%s", ar_last_error());
    char ref[2048];
    snprintf(ref, sizeof ref, "%s/stories260K-Q4_0.gguf", ref_dir);
    check_same_tensors(tmp_path("q4_0.gguf"), ref);
}

/* A random int layer of the given grid (codes in range, positive and negative scales). */
typedef struct {
    ar_qlayer l;
    uint8_t *codes;
    float *scale;
    int32_t *zp;
} rand_layer;

static void make_layer(rand_layer *r, const char *name, int n, int k, int bits, int sym)
{
    int ng = k / 32;
    r->codes = malloc((size_t)n * k);
    r->scale = malloc(sizeof(float) * n * ng);
    r->zp = malloc(sizeof(int32_t) * n * ng);
    for (int i = 0; i < n * k; i++) r->codes[i] = (uint8_t)(next_u32() >> 16) & ((1 << bits) - 1);
    for (int i = 0; i < n * ng; i++) {
        r->scale[i] = 0.01f * next_f() + (sym ? 0.f : 0.006f);
        r->zp[i] = (int32_t)((next_u32() >> 16) & ((1 << bits) - 1));
    }
    r->l = (ar_qlayer){.name = name, .n = n, .k = k, .bits = bits, .group_size = 32, .sym = sym,
                       .codes = r->codes, .scale = r->scale, .zp = sym ? NULL : r->zp};
}

static void free_layer(rand_layer *r) { free(r->codes); free(r->scale); free(r->zp); }

/* What the layer stands for once its scale (and min = -scale*zp) are fp16:
 * sym: s16*(u - 2^(b-1)); asym: s16*u + m16. */
static float expected(const ar_qlayer *l, int row, int col)
{
    int g = col / 32, ng = l->k / 32;
    float s = ar_f16_to_f32(ar_f32_to_f16(l->scale[row * ng + g]));
    int u = l->codes[(size_t)row * l->k + col];
    if (l->sym) return (float)(u - (1 << (l->bits - 1))) * s;
    float m = ar_f16_to_f32(ar_f32_to_f16(-l->scale[row * ng + g] * (float)l->zp[row * ng + g]));
    return (float)u * s + m;
}

static void check_int_layers(const char *mix, int bits, int sym)
{
    const char *names[3] = {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                            "model.layers.4.mlp.up_proj"};
    const int shape[3][2] = {{64, 64}, {32, 64}, {172, 64}};
    rand_layer r[3];
    char *out = tmp_path("int.gguf");
    unlink(out);
    ar_pack_gguf *p = ar_pack_gguf_open(model_dir, out, mix, "W4A16");
    cr_assert(p, "%s", ar_last_error());
    for (int i = 0; i < 3; i++) {
        make_layer(&r[i], names[i], shape[i][0], shape[i][1], bits, sym);
        cr_assert_eq(ar_pack_gguf_layer(p, &r[i].l), 0, "%s: %s", mix, ar_last_error());
    }
    cr_assert_eq(ar_pack_gguf_finish(p), 0, "%s", ar_last_error());
    ar_tensor_source src;
    ar_config c;
    cr_assert_eq(ar_source_gguf(&src, &c, out), 0, "%s", ar_last_error());
    for (int i = 0; i < 3; i++) {
        char w[300];
        snprintf(w, sizeof w, "%s.weight", names[i]);
        int64_t rows, cols;
        float *got = read_all(&src, w, &rows, &cols);
        for (int n = 0; n < rows; n++)
            for (int k = 0; k < cols; k++) {
                /* exact: the reader evaluates the same f32 formula (an
                 * fp16 scale times a small integer, plus an fp16 min) */
                float e = expected(&r[i].l, n, k);
                cr_assert_eq(got[n * cols + k], e, "%s %s [%d,%d]: %g vs %g", mix, w, n, k, got[n * cols + k], e);
            }
        free(got);
        free_layer(&r[i]);
    }
    src.close(src.ctx);
}

Test(pack_gguf, int_layers_q4_0_exact) { check_int_layers("q4_0", 4, 1); }
Test(pack_gguf, int_layers_q4_1_exact) { check_int_layers("q4_1", 4, 0); }
Test(pack_gguf, int_layers_q5_0_exact) { check_int_layers("q5_0", 5, 1); }
Test(pack_gguf, int_layers_q5_1_exact) { check_int_layers("q5_1", 5, 0); }
Test(pack_gguf, int_layers_q8_0_exact) { check_int_layers("q8_0", 8, 1); }

/* Raw blocks in HF row order are stored in llama.cpp's RoPE order (within each
 * head of d rows, file row 2i+k = HF row k*d/2+i) and read back in HF order. */
Test(pack_gguf, raw_blocks_permuted_in_file_and_back_in_source)
{
    const int n = 32, k = 64, d = 8;   /* k_proj: 4 KV heads of 8 */
    float w[32 * 64];
    for (int i = 0; i < n * k; i++) w[i] = next_f();
    size_t rb = ar_ggml_row_bytes(AR_GGML_Q8_0, k), nbytes = rb * n;
    uint8_t *blocks = malloc(nbytes);
    cr_assert_eq(ar_ggml_quantize(AR_GGML_Q8_0, w, blocks, n, k, NULL), 0);
    char *out = tmp_path("raw.gguf");
    ar_pack_gguf *p = ar_pack_gguf_open(model_dir, out, "q8_0", "GGUF:Q8_0");
    cr_assert(p, "%s", ar_last_error());
    cr_assert_eq(ar_pack_gguf_raw(p, "model.layers.2.self_attn.k_proj.weight", AR_GGML_Q8_0, n, k, blocks, nbytes), 0,
                 "%s", ar_last_error());
    cr_assert_eq(ar_pack_gguf_finish(p), 0, "%s", ar_last_error());
    ar_gguf *g = ar_gguf_open(out);
    cr_assert(g);
    const ar_gguf_tensor *t = ar_gguf_find_tensor(g, "blk.2.attn_k.weight");
    cr_assert(t && t->type == AR_GGML_Q8_0 && t->ne[0] == k && t->ne[1] == n);
    for (int h = 0; h < n / d; h++)
        for (int i = 0; i < d / 2; i++)
            for (int kk = 0; kk < 2; kk++)
                cr_assert_eq(memcmp((const uint8_t *)t->data + (size_t)(h * d + 2 * i + kk) * rb,
                                    blocks + (size_t)(h * d + kk * d / 2 + i) * rb, rb), 0, "head %d row %d", h, i);
    ar_gguf_close(g);
    ar_tensor_source src;
    ar_config c;
    cr_assert_eq(ar_source_gguf(&src, &c, out), 0);
    int64_t rows, cols;
    float *got = read_all(&src, "model.layers.2.self_attn.k_proj.weight", &rows, &cols);
    float *want = malloc(sizeof(float) * n * k);
    cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q8_0, blocks, want, (int64_t)n * k), 0);
    cr_assert_eq(memcmp(got, want, sizeof(float) * n * k), 0);
    /* one row at a time gives the same */
    float row[64];
    cr_assert_eq(src.read_rows(src.ctx, "model.layers.2.self_attn.k_proj.weight", 5, 1, row), 0);
    cr_assert_eq(memcmp(row, want + 5 * k, sizeof row), 0);
    free(got); free(want); free(blocks);
    src.close(src.ctx);
}

Test(pack_gguf, refuses_what_gguf_cannot_store)
{
    rand_layer r;
    make_layer(&r, "model.layers.0.self_attn.q_proj", 64, 64, 4, 1);
    ar_pack_gguf *p = ar_pack_gguf_open(model_dir, tmp_path("km.gguf"), "q4_k_m", "W4A16");
    cr_assert(p);
    cr_assert_eq(ar_pack_gguf_layer(p, &r.l), -1);
    cr_assert(strstr(ar_last_error(), "gguf:q4_k_m needs a stream tuned with --scheme gguf:q4_k_m"), "%s", ar_last_error());
    ar_pack_gguf_abort(p);
    cr_assert(access(tmp_path("km.gguf"), F_OK) != 0, "abort leaves no file");

    p = ar_pack_gguf_open(model_dir, tmp_path("q8.gguf"), "q8_0", "W4A16");
    cr_assert(p);
    cr_assert_eq(ar_pack_gguf_layer(p, &r.l), -1, "4-bit layer in a Q8_0 file");
    cr_assert(strstr(ar_last_error(), "this layer is 4-bit"), "%s", ar_last_error());
    uint8_t blocks[64 * 68];
    cr_assert_eq(ar_pack_gguf_raw(p, "model.layers.0.self_attn.v_proj.weight", AR_GGML_Q8_0, 32, 64, blocks, 100), -1);
    cr_assert_eq(ar_pack_gguf_raw(p, "model.layers.9.self_attn.v_proj.weight", AR_GGML_Q8_0, 32, 64, blocks, 32 * 68), -1);
    cr_assert(strstr(ar_last_error(), "no tensor"), "%s", ar_last_error());
    cr_assert_eq(ar_pack_gguf_raw(p, "model.layers.0.self_attn.v_proj.weight", AR_GGML_Q8_0, 64, 64, blocks, 64 * 68), -1);
    memset(blocks, 0, sizeof blocks);
    cr_assert_eq(ar_pack_gguf_raw(p, "model.layers.0.self_attn.v_proj.weight", AR_GGML_Q8_0, 32, 64, blocks, 32 * 68), 0,
                 "%s", ar_last_error());
    cr_assert_eq(ar_pack_gguf_raw(p, "model.layers.0.self_attn.v_proj.weight", AR_GGML_Q8_0, 32, 64, blocks, 32 * 68), -1);
    cr_assert(strstr(ar_last_error(), "twice"), "%s", ar_last_error());
    ar_pack_gguf_abort(p);

    cr_assert_null(ar_pack_gguf_open(model_dir, tmp_path("x.gguf"), "q9_9", "W4A16"));
    cr_assert(strstr(ar_last_error(), "unknown GGUF type"), "%s", ar_last_error());
    cr_assert_null(ar_pack_gguf_open(model_dir, tmp_path("x.gguf"), "q6_k", "GGUF:Q4_K_M"));
    cr_assert(strstr(ar_last_error(), "needs a stream tuned with --scheme gguf:q6_k"), "%s", ar_last_error());
    free_layer(&r);
}

/* The tokenizer: beside the file, else from ar.source_model; otherwise a clear error. */
Test(pack_gguf, tokenizer_beside_file_or_from_source_model)
{
    ar_pack_gguf *p = ar_pack_gguf_open(model_dir, tmp_path("t.gguf"), "q8_0", NULL);
    cr_assert(p);
    cr_assert_eq(ar_pack_gguf_finish(p), 0);
    ar_tokenizer *t = ar_tokenizer_gguf(tmp_path("t.gguf"));
    cr_assert(t, "%s", ar_last_error());
    cr_assert_eq(ar_tokenizer_vocab_size(t), 512);
    ar_tokenizer_free(t);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cp %s/stories260K-Q8_0.gguf %s/", ref_dir, tmp_dir);
    cr_assert_eq(system(cmd), 0);
    cr_assert_null(ar_tokenizer_gguf(tmp_path("stories260K-Q8_0.gguf")));
    cr_assert(strstr(ar_last_error(), "no tokenizer.json"), "%s", ar_last_error());
    snprintf(cmd, sizeof cmd, "cp %s/tokenizer.json %s/", model_dir, tmp_dir);
    cr_assert_eq(system(cmd), 0);
    t = ar_tokenizer_gguf(tmp_path("stories260K-Q8_0.gguf"));
    cr_assert(t, "%s", ar_last_error());
    ar_tokenizer_free(t);
}

Test(pack_gguf, source_rejects_unsupported_files)
{
    ar_tensor_source src;
    ar_config c;
    FILE *f = fopen(tmp_path("bad.gguf"), "wb");
    fputs("GGUF not really", f);
    fclose(f);
    cr_assert_eq(ar_source_gguf(&src, &c, tmp_path("bad.gguf")), -1);
    cr_assert(strstr(ar_last_error(), "bad.gguf"), "%s", ar_last_error());
}
