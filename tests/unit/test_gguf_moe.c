/* GGUF of mixtures of experts (formats/gguf_moe.h): the stacked expert names,
 * a tuned expert's blocks landing byte for byte in its slot of the 3-D tensor
 * (the others quantized from the checkpoint, the router kept F32), the reader
 * giving each expert back as its own [N, K] matrix, llama.cpp's type rules on
 * expert tensors, and the refusals. Model: the checked-in tiny Mixtral under
 * the older block_sparse_moe names (tests/fixtures/moe/tiny/mixtral_legacy). */
#include "error.h"
#include "fixture.h"
#include "gguf.h"
#include "gguf_moe.h"
#include "model_open.h"
#include "safetensors.h"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIXTRAL "tests/fixtures/moe/tiny/mixtral_legacy"
static char tmp_dir[] = "/tmp/ar_test_gguf_moe_XXXXXX";
static void setup(void) { fx_make_tmp(tmp_dir); }
static void teardown(void) { fx_rm_rf(tmp_dir); }
TestSuite(gguf_moe, .init = setup, .fini = teardown);

static void expect_name(const char *hf, const char *want, int want_expert)
{
    char out[256];
    int e = -1;
    cr_assert_eq(ar_gguf_map_name(hf, out, sizeof out), 1, "%s: %s", hf, ar_last_error());
    cr_assert_str_eq(out, want);
    cr_assert_eq(ar_gguf_expert_name(hf, out, sizeof out, &e), want_expert >= 0);
    if (want_expert >= 0) cr_assert_eq(e, want_expert);
}

Test(gguf_moe, names)
{
    expect_name("model.layers.3.mlp.experts.7.gate_proj.weight", "blk.3.ffn_gate_exps.weight", 7);
    expect_name("model.layers.3.mlp.experts.0.up_proj.weight", "blk.3.ffn_up_exps.weight", 0);
    expect_name("model.layers.0.mlp.experts.12.down_proj.weight", "blk.0.ffn_down_exps.weight", 12);
    expect_name("model.layers.1.block_sparse_moe.experts.2.w1.weight", "blk.1.ffn_gate_exps.weight", 2);
    expect_name("model.layers.1.block_sparse_moe.experts.2.w3.weight", "blk.1.ffn_up_exps.weight", 2);
    expect_name("model.layers.1.block_sparse_moe.experts.2.w2.weight", "blk.1.ffn_down_exps.weight", 2);
    expect_name("model.layers.1.mlp.gate.weight", "blk.1.ffn_gate_inp.weight", -1);
    expect_name("model.layers.1.block_sparse_moe.gate.weight", "blk.1.ffn_gate_inp.weight", -1);
    expect_name("model.layers.2.mlp.shared_expert.down_proj.weight", "blk.2.ffn_down_shexp.weight", -1);
    expect_name("model.layers.2.mlp.shared_expert_gate.weight", "blk.2.ffn_gate_inp_shexp.weight", -1);
    expect_name("model.layers.2.mlp.gate_proj.weight", "blk.2.ffn_gate.weight", -1);   /* dense MLP unchanged */
    char out[256];
    int e;
    cr_assert_eq(ar_gguf_expert_name("model.layers.1.mlp.experts.2.gate_proj.bias", out, sizeof out, &e), 0);
    cr_assert_eq(ar_gguf_moe_legacy_name("model.layers.4.mlp.experts.5.up_proj.weight", out, sizeof out), 1);
    cr_assert_str_eq(out, "model.layers.4.block_sparse_moe.experts.5.w3.weight");
    cr_assert_eq(ar_gguf_moe_legacy_name("model.layers.4.mlp.gate.weight", out, sizeof out), 1);
    cr_assert_str_eq(out, "model.layers.4.block_sparse_moe.gate.weight");
    cr_assert_eq(ar_gguf_moe_legacy_name("model.layers.4.mlp.up_proj.weight", out, sizeof out), 0);
    /* no HF name for a stacked tensor; the router maps back to mlp.gate */
    cr_assert_eq(ar_gguf_unmap_name("blk.1.ffn_gate_exps.weight", out, sizeof out), 0);
    cr_assert_eq(ar_gguf_unmap_name("blk.1.ffn_gate_inp.weight", out, sizeof out), 1);
    cr_assert_str_eq(out, "model.layers.1.mlp.gate.weight");
}

/* llama-quant.cpp's rules: routers never quantized, the shared expert's gate
 * neither (1-D in llama.cpp), ffn_down_exps gets the ffn_down bump by layer,
 * and the 8-expert bumps of attn_v / attn_k / attn_output. */
Test(gguf_moe, type_rules_on_expert_tensors)
{
    ar_gguf_model_info m = {.n_layers = 8, .n_gqa = 4, .n_expert = 8, .has_output = 1};
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.0.ffn_gate_inp.weight", 2, 256), AR_GGML_F32);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.0.ffn_gate_inp_shexp.weight", 2, 256), AR_GGML_F32);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.0.ffn_down_exps.weight", 3, 256), AR_GGML_Q6_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.2.ffn_down_exps.weight", 3, 256), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.3.ffn_gate_exps.weight", 3, 256), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.3.ffn_down_shexp.weight", 2, 256), AR_GGML_Q6_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.3.attn_v.weight", 2, 256), AR_GGML_Q8_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.3.attn_k.weight", 2, 256), AR_GGML_Q8_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.3.attn_output.weight", 2, 256), AR_GGML_Q5_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q8_0, &m, "blk.3.ffn_up_exps.weight", 3, 256), AR_GGML_Q8_0);
}

/* Source rows of one checkpoint tensor. */
static float *source_rows(const char *name, size_t n)
{
    ar_safetensors *st = ar_st_open_model(MIXTRAL);
    cr_assert(st, "%s", ar_last_error());
    float *x = malloc(sizeof(float) * n);
    cr_assert(x);
    cr_assert_eq(ar_st_read_f32(st, name, x, n), 0, "%s", ar_last_error());
    ar_st_close(st);
    return x;
}

Test(gguf_moe, tuned_expert_lands_in_its_slot_and_reads_back)
{
    const int N = 32, K = 64, E = 4;   /* config.json: intermediate 32, hidden 64, 4 experts */
    char *out = fx_path_in(tmp_dir, "m.gguf");
    ar_gguf_conv *cv = ar_gguf_conv_open(MIXTRAL, out, AR_FTYPE_Q8_0, 0);
    cr_assert(cv, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_conv_type(cv, "model.layers.1.mlp.experts.2.gate_proj.weight"), AR_GGML_Q8_0);
    /* "tuned" blocks of expert 2: the negated weights, unlike anything the converter makes */
    float *w2 = source_rows("model.layers.1.block_sparse_moe.experts.2.w1.weight", (size_t)N * K);
    for (int i = 0; i < N * K; i++) w2[i] = -w2[i];
    size_t nb = ar_ggml_row_bytes(AR_GGML_Q8_0, K) * N;
    uint8_t *tuned = malloc(nb), *rtn0 = malloc(nb);
    cr_assert_eq(ar_ggml_quantize(AR_GGML_Q8_0, w2, tuned, N, K, NULL), 0);
    cr_assert_eq(ar_gguf_conv_add_blocks(cv, "model.layers.1.mlp.experts.2.gate_proj.weight", AR_GGML_Q8_0, N, K,
                                         tuned, nb), 0, "%s", ar_last_error());
    cr_assert_neq(ar_gguf_conv_add_blocks(cv, "model.layers.1.mlp.experts.2.gate_proj.weight", AR_GGML_Q8_0, N, K,
                                          tuned, nb), 0, "the same expert twice");
    cr_assert_eq(ar_gguf_conv_finish(cv, NULL, NULL), 0, "%s", ar_last_error());

    ar_gguf *g = ar_gguf_open(out);
    cr_assert(g, "%s", ar_last_error());
    const ar_gguf_tensor *t = ar_gguf_find_tensor(g, "blk.1.ffn_gate_exps.weight");
    cr_assert(t);
    cr_assert_eq(t->n_dims, 3);
    cr_assert(t->ne[0] == K && t->ne[1] == N && t->ne[2] == E && t->type == AR_GGML_Q8_0);
    cr_assert_eq(memcmp((const uint8_t *)t->data + 2 * nb, tuned, nb), 0, "expert 2 is not the tuned blocks");
    float *w0 = source_rows("model.layers.1.block_sparse_moe.experts.0.w1.weight", (size_t)N * K);
    cr_assert_eq(ar_ggml_quantize(AR_GGML_Q8_0, w0, rtn0, N, K, NULL), 0);
    cr_assert_eq(memcmp(t->data, rtn0, nb), 0, "expert 0 is not the checkpoint's RTN");
    const ar_gguf_tensor *r = ar_gguf_find_tensor(g, "blk.1.ffn_gate_inp.weight");
    cr_assert(r && r->type == AR_GGML_F32 && r->n_dims == 2 && r->ne[0] == K && r->ne[1] == E);
    float *router = source_rows("model.layers.1.block_sparse_moe.gate.weight", (size_t)E * K);
    cr_assert_eq(memcmp(r->data, router, sizeof(float) * E * K), 0, "router not kept as F32");
    const ar_gguf_kv *kv = ar_gguf_find_kv(g, "llama.expert_count");
    cr_assert(kv && ar_gguf_kv_int(kv) == E);
    kv = ar_gguf_find_kv(g, "llama.expert_used_count");
    cr_assert(kv && ar_gguf_kv_int(kv) == 2);
    ar_gguf_close(g);

    /* the reader: expert 2 alone, rows 5..8, as the tuned blocks dequantize */
    ar_tensor_source src;
    ar_config c;
    cr_assert_eq(ar_source_gguf(&src, &c, out), 0, "%s", ar_last_error());
    cr_assert_eq(c.arch, AR_ARCH_MIXTRAL);
    cr_assert(c.moe.n_experts == E && c.moe.top_k == 2 && c.moe.expert_intermediate == N && c.moe.norm_topk_prob);
    cr_assert_eq(c.moe.n_moe_layers, 2);
    int nd;
    int64_t sh[AR_SRC_MAX_DIMS];
    cr_assert_eq(src.shape(src.ctx, "model.layers.1.mlp.experts.2.gate_proj.weight", &nd, sh), 0);
    cr_assert(nd == 2 && sh[0] == N && sh[1] == K);
    cr_assert_eq(src.shape(src.ctx, "model.layers.1.mlp.experts.4.gate_proj.weight", &nd, sh), 1, "no expert 4");
    float got[4 * 64], want[32 * 64];
    cr_assert_eq(src.read_rows(src.ctx, "model.layers.1.mlp.experts.2.gate_proj.weight", 5, 4, got), 0, "%s",
                 ar_last_error());
    cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q8_0, tuned, want, (int64_t)N * K), 0);
    cr_assert_eq(memcmp(got, want + 5 * K, sizeof got), 0);
    cr_assert_neq(src.read_rows(src.ctx, "model.layers.1.mlp.experts.2.gate_proj.weight", 30, 4, got), 0,
                  "rows past the expert's end");
    src.close(src.ctx);
    free(w2); free(w0); free(router); free(tuned); free(rtn0);
}

static void expect_refused(const char *dir, const char *msg)
{
    char *out = fx_path_in(tmp_dir, "refused.gguf");
    ar_gguf_conv *cv = ar_gguf_conv_open(dir, out, AR_FTYPE_Q8_0, 0);
    cr_assert_null(cv, "%s accepted", dir);
    cr_assert(strstr(ar_last_error(), msg), "%s", ar_last_error());
    cr_assert_eq(access(out, F_OK), -1, "a file was left");
}

Test(gguf_moe, refusals)
{
    expect_refused("tests/fixtures/moe/tiny/qwen3_moe", "layer 1 is dense");
    /* DeepSeek and gpt-oss are written (gguf_ds_oss.h); this fixture's yarn has no deepseek2 form */
    expect_refused("tests/fixtures/moe/tiny/deepseek_v3", "yarn mscale 0.707, mscale_all_dim 1: llama.cpp's deepseek2");
}
