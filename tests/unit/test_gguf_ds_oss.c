/* GGUF of DeepSeek-V2/V3 and gpt-oss (formats/gguf_ds_oss.h): the tensor
 * names, kv_b_proj split into attn_k_b / attn_v_b (checked against an index
 * formula written here), a tuned kv_b's v rows landing byte for byte in
 * attn_v_b while attn_k_b is the checkpoint's k rows transposed and rounded to
 * nearest, the reader giving kv_b back, and gpt-oss's fused experts and
 * biases split and read back exactly (F32). Models: the checked-in tiny
 * DeepSeek-V2 (with topk_group = n_group, which llama.cpp can express) and
 * gpt-oss (tests/fixtures/moe/tiny). */
#include "error.h"
#include "fixture.h"
#include "fused_experts.h"
#include "gguf.h"
#include "gguf_ds_oss.h"
#include "model_open.h"
#include "safetensors.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/moe/tiny/"
static char tmp_dir[] = "/tmp/ar_test_gguf_ds_oss_XXXXXX";
static void setup(void) { fx_make_tmp(tmp_dir); }
static void teardown(void) { fx_rm_rf(tmp_dir); }
TestSuite(gguf_ds_oss, .init = setup, .fini = teardown);

static void expect_name(const ar_config *c, const char *hf, const char *want)
{
    char out[256];
    cr_assert_eq(ar_gguf_map_name_for(c, hf, out, sizeof out), 1, "%s: %s", hf, ar_last_error());
    cr_assert_str_eq(out, want);
}

Test(gguf_ds_oss, names)
{
    ar_config ds = {.arch = AR_ARCH_DEEPSEEK_V3}, oss = {.arch = AR_ARCH_GPT_OSS};
    expect_name(&ds, "model.layers.2.self_attn.q_a_proj.weight", "blk.2.attn_q_a.weight");
    expect_name(&ds, "model.layers.2.self_attn.q_a_layernorm.weight", "blk.2.attn_q_a_norm.weight");
    expect_name(&ds, "model.layers.2.self_attn.q_b_proj.weight", "blk.2.attn_q_b.weight");
    expect_name(&ds, "model.layers.2.self_attn.kv_a_proj_with_mqa.weight", "blk.2.attn_kv_a_mqa.weight");
    expect_name(&ds, "model.layers.2.self_attn.kv_a_layernorm.weight", "blk.2.attn_kv_a_norm.weight");
    expect_name(&ds, "model.layers.2.mlp.shared_experts.down_proj.weight", "blk.2.ffn_down_shexp.weight");
    expect_name(&ds, "model.layers.2.mlp.gate.e_score_correction_bias", "blk.2.exp_probs_b.bias");
    expect_name(&ds, "model.layers.2.post_attention_layernorm.weight", "blk.2.ffn_norm.weight");
    expect_name(&oss, "model.layers.1.self_attn.sinks", "blk.1.attn_sinks.weight");
    expect_name(&oss, "model.layers.1.mlp.router.bias", "blk.1.ffn_gate_inp.bias");
    expect_name(&oss, "model.layers.1.post_attention_layernorm.weight", "blk.1.post_attention_norm.weight");
    char g[64];
    int e = -1;
    cr_assert(ar_gguf_expert_bias_name("model.layers.3.mlp.experts.5.up_proj.bias", g, sizeof g, &e));
    cr_assert_str_eq(g, "blk.3.ffn_up_exps.bias");
    cr_assert_eq(e, 5);
    cr_assert(!ar_gguf_expert_bias_name("model.layers.3.mlp.experts.5.up_proj.weight", g, sizeof g, &e));
}

Test(gguf_ds_oss, kvb_split_is_llama_cpp_layout)
{
    /* conversion/deepseek.py: view [NH, DN+DV, KL], split on dim 1, k transposed (1, 2) */
    ar_gguf_kvb s = {3, 4, 5, 6};
    const int DH = s.DN + s.DV;
    float kvb[3 * 9 * 6], kb[3 * 6 * 4], vb[3 * 5 * 6];
    for (int i = 0; i < 3 * 9 * 6; i++) kvb[i] = (float)i;
    ar_gguf_kvb_split(&s, kvb, kb, vb);
    for (int h = 0; h < s.NH; h++) {
        for (int c = 0; c < s.KL; c++)
            for (int d = 0; d < s.DN; d++)   /* k_b[h][c][d] = kv_b[h·DH + d][c] */
                cr_assert_eq(kb[(h * s.KL + c) * s.DN + d], (float)((h * DH + d) * s.KL + c));
        for (int v = 0; v < s.DV; v++)
            for (int c = 0; c < s.KL; c++)   /* v_b[h][v][c] = kv_b[h·DH + DN + v][c] */
                cr_assert_eq(vb[(h * s.DV + v) * s.KL + c], (float)((h * DH + s.DN + v) * s.KL + c));
    }
}

/* A copy of fixture `name` in tmp_dir/dir with one string of config.json replaced (caller frees). */
static char *variant(const char *name, const char *dir, const char *from, const char *to)
{
    char src[512], *d = strdup(fx_path_in(tmp_dir, dir));
    static const char *const files[] = {"model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    cr_assert_eq(mkdir(d, 0755), 0);
    for (int i = 0; i < 3; i++) {
        char abs[4096];
        snprintf(src, sizeof src, FIX "%s/%s", name, files[i]);
        cr_assert(realpath(src, abs), "%s", src);
        cr_assert_eq(symlink(abs, fx_path_in(d, files[i])), 0);
    }
    snprintf(src, sizeof src, FIX "%s/config.json", name);
    size_t n;
    char *text = fx_slurp(src, &n), *at = strstr(text, from);
    cr_assert(at, "%s has no %s", src, from);
    char *out = malloc(n + strlen(to) + 1);
    sprintf(out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    fx_write_text(d, "config.json", out);
    free(text);
    free(out);
    return d;
}

static float *rows_of(const char *model, const char *name, size_t n)
{
    ar_safetensors *st = ar_st_open_model(model);
    cr_assert(st, "%s", ar_last_error());
    float *x = malloc(sizeof(float) * n);
    cr_assert_eq(ar_st_read_f32(st, name, x, n), 0, "%s", ar_last_error());
    ar_st_close(st);
    return x;
}

Test(gguf_ds_oss, tuned_kvb_v_rows_land_k_rows_rounded_from_checkpoint)
{
    const int NH = 4, DN = 16, DV = 16, KL = 32, R = NH * (DN + DV);   /* tiny deepseek_v2's config.json */
    char *dir = variant("deepseek_v2", "ds2", "\"topk_group\": 1", "\"topk_group\": 2");
    char *out = strdup(fx_path_in(tmp_dir, "m.gguf"));
    const char *hf = "model.layers.1.self_attn.kv_b_proj.weight";
    ar_gguf_conv *cv = ar_gguf_conv_open(dir, out, AR_FTYPE_Q8_0, 0);
    cr_assert(cv, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_conv_type(cv, hf), AR_GGML_Q8_0);
    float *w = rows_of(dir, hf, (size_t)R * KL), *neg = malloc(sizeof(float) * R * KL);
    for (int i = 0; i < R * KL; i++) neg[i] = -w[i];   /* "tuned": unlike anything the converter makes */
    size_t rb = ar_ggml_row_bytes(AR_GGML_Q8_0, KL);
    uint8_t *tuned = malloc(rb * R);
    cr_assert_eq(ar_ggml_quantize(AR_GGML_Q8_0, neg, tuned, R, KL, NULL), 0);
    cr_assert_eq(ar_gguf_conv_add_blocks(cv, hf, AR_GGML_Q8_0, R, KL, tuned, rb * R), 0, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_conv_finish(cv, NULL, NULL), 0, "%s", ar_last_error());

    ar_gguf *g = ar_gguf_open(out);
    cr_assert(g, "%s", ar_last_error());
    const ar_gguf_tensor *v = ar_gguf_find_tensor(g, "blk.1.attn_v_b.weight"), *k = ar_gguf_find_tensor(g, "blk.1.attn_k_b.weight");
    cr_assert(v && v->n_dims == 3 && v->ne[0] == KL && v->ne[1] == DV && v->ne[2] == NH && v->type == AR_GGML_Q8_0);
    cr_assert(k && k->n_dims == 3 && k->ne[0] == DN && k->ne[1] == KL && k->ne[2] == NH);
    cr_assert(!ar_gguf_find_tensor(g, "blk.1.attn_kv_b.weight"));
    for (int h = 0; h < NH; h++)
        cr_assert_eq(memcmp((const uint8_t *)v->data + rb * DV * h, tuned + rb * ((size_t)h * (DN + DV) + DN), rb * DV), 0,
                     "head %d's v rows are not the tuned blocks", h);
    /* attn_k_b: the checkpoint's (not the tuned) k rows, transposed by this loop, quantized to k_b's type */
    float *kt = malloc(sizeof(float) * NH * KL * DN);
    for (int h = 0; h < NH; h++)
        for (int c = 0; c < KL; c++)
            for (int d = 0; d < DN; d++) kt[(h * KL + c) * DN + d] = w[(size_t)(h * (DN + DV) + d) * KL + c];
    size_t kb = ar_ggml_row_bytes(k->type, DN) * NH * KL;
    uint8_t *want = malloc(kb);
    cr_assert_eq(ar_ggml_quantize(k->type, kt, want, (int64_t)NH * KL, DN, NULL), 0);
    cr_assert_eq(memcmp(k->data, want, kb), 0, "attn_k_b is not the checkpoint's k rows rounded to nearest");
    const ar_ggml_type ktype = k->type;   /* 16-wide rows: Q8_0 falls back to F16 (llama-quant.cpp) */
    cr_assert_eq(ktype, AR_GGML_F16);
    const ar_gguf_kv *kv = ar_gguf_find_kv(g, "deepseek2.attention.key_length_mla");
    cr_assert(kv && ar_gguf_kv_int(kv) == DN + 8);
    ar_gguf_close(g);

    /* the reader: kv_b again, v rows the tuned values, k rows k_b's values transposed back */
    ar_tensor_source src;
    ar_config c;
    cr_assert_eq(ar_source_gguf(&src, &c, out), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_DEEPSEEK_V2 && c.mla.q_lora_rank == 0 && c.mla.kv_lora_rank == KL);
    cr_assert(c.mla.qk_nope_head_dim == DN && c.mla.v_head_dim == DV && c.n_kv_heads == NH && c.moe.first_k_dense_replace == 1);
    int nd;
    int64_t sh[AR_SRC_MAX_DIMS];
    cr_assert_eq(src.shape(src.ctx, hf, &nd, sh), 0);
    cr_assert(nd == 2 && sh[0] == R && sh[1] == KL);
    float *back = malloc(sizeof(float) * R * KL), *deq = malloc(sizeof(float) * R * KL), *kdeq = malloc(sizeof(float) * NH * KL * DN);
    cr_assert_eq(src.read_rows(src.ctx, hf, 0, R, back), 0, "%s", ar_last_error());
    cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q8_0, tuned, deq, (int64_t)R * KL), 0);
    cr_assert_eq(ar_ggml_dequantize(ktype, want, kdeq, (int64_t)NH * KL * DN), 0);
    for (int r = 0; r < R; r++) {
        int h = r / (DN + DV), j = r % (DN + DV);
        for (int col = 0; col < KL; col++) {
            float want_v = j >= DN ? deq[(size_t)r * KL + col] : kdeq[(h * KL + col) * DN + j];
            cr_assert_eq(back[(size_t)r * KL + col], want_v, "row %d col %d", r, col);
        }
    }
    src.close(src.ctx);
    free(w); free(neg); free(tuned); free(kt); free(want); free(back); free(deq); free(kdeq); free(out); free(dir);
}

Test(gguf_ds_oss, gpt_oss_fused_experts_and_biases_read_back)
{
    const char *model = FIX "gpt_oss";
    char *out = strdup(fx_path_in(tmp_dir, "o.gguf"));
    cr_assert_eq(ar_gguf_convert_hf(model, out, AR_FTYPE_ALL_F32, NULL, NULL), 0, "%s", ar_last_error());
    ar_tensor_source gs;
    ar_config c;
    cr_assert_eq(ar_source_gguf(&gs, &c, out), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_GPT_OSS && c.attn_sinks && c.moe.expert_bias && c.moe.router_bias);
    cr_assert(ar_config_layer_sliding(&c, 0) && !ar_config_layer_sliding(&c, 1));
    ar_safetensors *st = ar_st_open_model(model);
    cr_assert(st);
    void *fx = ar_fused_source_new(st, AR_FUSED_GPT_OSS);
    static const char *const names[] = {
        "model.layers.1.mlp.experts.3.gate_proj.weight", "model.layers.1.mlp.experts.3.up_proj.weight",
        "model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.1.mlp.experts.2.gate_proj.bias",
        "model.layers.1.mlp.experts.2.up_proj.bias",     "model.layers.0.mlp.experts.0.down_proj.bias",
        "model.layers.1.self_attn.sinks",                "model.layers.0.mlp.router.bias"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int nd, nd2;
        int64_t sh[AR_SRC_MAX_DIMS], sh2[AR_SRC_MAX_DIMS];
        cr_assert_eq(ar_fused_shape(fx, names[i], &nd, sh), 0, "%s", names[i]);
        cr_assert_eq(gs.shape(gs.ctx, names[i], &nd2, sh2), 0, "%s not in the GGUF", names[i]);
        cr_assert(nd == nd2 && sh[0] == sh2[0] && (nd == 1 || sh[1] == sh2[1]), "%s: shape", names[i]);
        int64_t rows = sh[0], n = nd == 2 ? sh[0] * sh[1] : sh[0];
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        cr_assert_eq(ar_fused_read_rows(fx, names[i], 0, rows, a), 0);
        cr_assert_eq(gs.read_rows(gs.ctx, names[i], 0, rows, b), 0, "%s: %s", names[i], ar_last_error());
        cr_assert_eq(memcmp(a, b, sizeof(float) * n), 0, "%s differs after the round trip", names[i]);
        free(a);
        free(b);
    }
    ar_fused_close(fx);
    gs.close(gs.ctx);
    free(out);
}

Test(gguf_ds_oss, refusals_name_the_folder)
{
    char *out = strdup(fx_path_in(tmp_dir, "r.gguf"));
    cr_assert_neq(ar_gguf_convert_hf(FIX "deepseek_v3", out, AR_FTYPE_Q8_0, NULL, NULL), 0);
    cr_assert(strstr(ar_last_error(), FIX "deepseek_v3: yarn mscale 0.707"), "%s", ar_last_error());
    cr_assert_neq(ar_gguf_convert_hf(FIX "deepseek_v2", out, AR_FTYPE_Q8_0, NULL, NULL), 0);
    cr_assert(strstr(ar_last_error(), "group_limited_greedy"), "%s", ar_last_error());
    cr_assert_neq(access(out, F_OK), 0, "a refused conversion left a file");
    free(out);
}

/* A one-layer file of architecture arch with the common keys, the expert counts and a token_embd. */
static char *tiny_file(const char *arch, const char *name, int with_window)
{
    char *path = strdup(fx_path_in(tmp_dir, name)), k[128];
    ar_gguf_writer *w = ar_gguf_writer_open(path);
    cr_assert(w, "%s", ar_last_error());
    static const char *const keys[] = {"block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                                       "expert_count", "expert_used_count", "expert_feed_forward_length"};
    static const uint32_t vals[] = {1, 8, 8, 2, 2, 1, 4};
    cr_assert_eq(ar_gguf_set_str(w, "general.architecture", arch), 0);
    for (int i = 0; i < 7; i++) {
        snprintf(k, sizeof k, "%s.%s", arch, keys[i]);
        cr_assert_eq(ar_gguf_set_u32(w, k, vals[i]), 0);
    }
    if (with_window) {
        snprintf(k, sizeof k, "%s.attention.sliding_window", arch);
        cr_assert_eq(ar_gguf_set_u32(w, k, 4), 0);
    }
    float emb[8 * 4] = {0};
    int64_t ne[2] = {8, 4};
    cr_assert_eq(ar_gguf_writer_add_tensor(w, "token_embd.weight", AR_GGML_F32, 2, ne, emb, sizeof emb), 0);
    cr_assert_eq(ar_gguf_writer_finish(w), 0, "%s", ar_last_error());
    return path;
}

Test(gguf_ds_oss, reader_refuses_incomplete_files_naming_them)
{
    ar_tensor_source src;
    ar_config c;
    char *ds = tiny_file("deepseek2", "ds.gguf", 0), *oss = tiny_file("gpt-oss", "oss.gguf", 0);
    cr_assert_neq(ar_source_gguf(&src, &c, ds), 0);
    cr_assert(strstr(ar_last_error(), ds) && strstr(ar_last_error(), "kv_lora_rank") && !strchr(ar_last_error(), '\n'),
              "%s", ar_last_error());
    cr_assert_neq(ar_source_gguf(&src, &c, oss), 0);
    cr_assert(strstr(ar_last_error(), oss) && strstr(ar_last_error(), "sliding_window"), "%s", ar_last_error());
    free(ds);
    free(oss);
}
