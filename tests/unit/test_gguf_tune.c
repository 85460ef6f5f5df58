/* test_gguf_tune.c — the tensors outside the blocks of ar-tune's GGUF path
 * (libar/tune/gguf_mix.h) on tiny-llama (untied head, 512-wide rows) and
 * stories260K (tied, 64-wide rows): types from llama.cpp's policy for HF
 * names (formats/gguf_policy.h), a model
 * tensor quantized slice by slice equal to the whole tensor quantized at
 * once, and embedding lookups equal to a full dequantization. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "calib.h"
#include "dtype.h"
#include "error.h"
#include "fixture.h"
#include "gguf_policy.h"
#include "gguf_mix.h"

static ar_model *open_model(const char *name)
{
    const char *shared = getenv("AR_SHARED");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", shared ? shared : "../shared", name);
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    return m;
}

Test(gguf_tune, outer_types_follow_llama_cpp)
{
    ar_model *m = open_model("tiny-llama");
    const ar_config *c = ar_model_config(m);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q2_K, c, "model.embed_tokens.weight", c->hidden, 1), AR_GGML_Q2_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q2_K, c, "lm_head.weight", c->hidden, 1), AR_GGML_Q6_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.embed_tokens.weight", c->hidden, 1), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q8_0, c, "lm_head.weight", c->hidden, 1), AR_GGML_Q8_0);
    /* block linears of 6 layers: Q4_K_M bumps ffn_down and attn_v of layers 2 and 5 */
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.layers.2.mlp.down_proj.weight", c->intermediate, 1),
                 AR_GGML_Q6_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.layers.0.self_attn.v_proj.weight", c->hidden, 1),
                 AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.layers.5.self_attn.v_proj.weight", c->hidden, 1),
                 AR_GGML_Q6_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.layers.2.self_attn.q_proj.weight", c->hidden, 1),
                 AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.layers.0.self_attn.rotary_emb.inv_freq", 64, 1),
                 AR_GGML_F32);
    ar_model_close(m);
    m = open_model("stories260K");   /* tied: the embedding is the output (Q6_K, 64 wide: Q8_0) */
    c = ar_model_config(m);
    cr_assert_eq(ar_gguf_hf_tensor_type(AR_FTYPE_Q4_K_M, c, "model.embed_tokens.weight", c->hidden, 1), AR_GGML_Q8_0);
    ar_model_close(m);
}

/* The embedding (4096 x 512) is read in two slices of 2048 rows (4 MiB of f32);
 * the lm_head with an importance matrix too: bytes as one whole-tensor call. */
Test(gguf_tune, model_tensor_in_slices_equals_whole)
{
    ar_model *m = open_model("tiny-llama");
    const ar_config *c = ar_model_config(m);
    const char *names[] = {"model.embed_tokens.weight", "lm_head.weight"};
    float *imat = malloc(sizeof(float) * c->hidden);
    for (int k = 0; k < c->hidden; k++) imat[k] = 1.0f + (float)(k % 17);
    float *x = malloc(sizeof(float) * (size_t)c->vocab * c->hidden);
    for (int t = 0; t < 2; t++) {
        ar_ggml_type ty = t ? AR_GGML_Q6_K : AR_GGML_Q2_K;
        const float *im = t ? imat : NULL;
        ar_gguf_qlinear q;
        cr_assert_eq(ar_gguf_quantize_model_tensor(m, names[t], c->vocab, c->hidden, ty, im, &q), 0, "%s",
                     ar_last_error());
        cr_assert_eq(q.type, ty);
        cr_assert_eq(q.rows, c->vocab);
        cr_assert_eq(q.nbytes, ar_ggml_row_bytes(ty, c->hidden) * (size_t)c->vocab);
        cr_assert_eq(ar_model_read_tensor(m, names[t], 0, c->vocab, x), 0);
        uint8_t *want = malloc(q.nbytes);
        cr_assert_eq(ar_ggml_quantize(ty, x, want, c->vocab, c->hidden, im), 0);
        cr_assert_eq(memcmp(q.blocks, want, q.nbytes), 0, "%s: sliced quantization differs", names[t]);
        free(want);
        free(q.blocks);
    }
    free(x); free(imat);
    ar_model_close(m);
}

Test(gguf_tune, embedding_lookup_is_a_row_of_the_dequantized_table)
{
    ar_model *m = open_model("tiny-llama");
    const ar_config *c = ar_model_config(m);
    ar_gguf_qlinear e;
    cr_assert_eq(ar_gguf_quantize_model_tensor(m, "model.embed_tokens.weight", c->vocab, c->hidden, AR_GGML_Q3_K,
                                               NULL, &e), 0);
    size_t nel = (size_t)c->vocab * c->hidden;
    float *table = malloc(sizeof(float) * nel);
    cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q3_K, e.blocks, table, (int64_t)nel), 0);
    const int32_t ids[] = {0, 4095, 17, 17, 1234};
    uint16_t got[5 * 512];
    cr_assert_eq(c->hidden, 512);
    cr_assert_eq(ar_gguf_embed_lookup(&e, ids, 5, got), 0, "%s", ar_last_error());
    for (int i = 0; i < 5; i++)
        for (int k = 0; k < 512; k++)
            cr_assert_eq(got[i * 512 + k], ar_f32_to_bf16(table[(size_t)ids[i] * 512 + k]), "token %d column %d",
                         ids[i], k);
    const int32_t bad[] = {4096};
    cr_assert_eq(ar_gguf_embed_lookup(&e, bad, 1, got), -1);
    cr_assert(strstr(ar_last_error(), "4096"), "%s", ar_last_error());
    free(table); free(e.blocks);
    ar_model_close(m);
}

/* g_k²·Σ_{q,k,v} Σ_j W[j,k]² against the diagonal of WᵀW from one BLAS product
 * per projection on a small random block. */
Test(gguf_tune, embedding_importance_is_normed_column_energy)
{
    ar_config c = {0};
    c.hidden = 16, c.intermediate = 24, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4, c.n_layers = 1;
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_init(&w, AR_NLINEAR), 0);
    uint64_t rng = 3;
    float g[16], imp[16];
    double want[16] = {0};
    for (int k = 0; k < 16; k++) g[k] = 0.5f + (float)(ar_rand_next(&rng) % 100) / 100.f;
    w.attn_norm = g;
    for (int i = AR_Q; i <= AR_V; i++) {
        int n, k;
        ar_linear_shape(&c, i, &n, &k);
        w.w[i] = malloc(sizeof(float) * n * k);
        for (int j = 0; j < n * k; j++) w.w[i][j] = (float)((int)(ar_rand_next(&rng) % 201) - 100) / 64.f;
        float *wtw = calloc((size_t)k * k, sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, k, n, 1.f, w.w[i], k, w.w[i], k, 0.f, wtw, k);
        for (int kk = 0; kk < k; kk++) want[kk] += wtw[kk * k + kk];
        free(wtw);
    }
    ar_block_desc bd;
    cr_assert_eq(ar_block_desc_init(&bd, &c), 0);
    ar_gguf_embedding_importance(&bd, &c, &w, imp);
    ar_block_desc_free(&bd);
    /* All terms are positive, so relative bounds over the N = sum n squares
     * of a column: the reference's sgemm diagonals (n products each, any
     * order) added up, gamma_N; the library's f32 sum times g g, gamma_{N+2}. */
    int N = 0;
    for (int i = AR_Q; i <= AR_V; i++) {
        int n, k;
        ar_linear_shape(&c, i, &n, &k);
        N += n;
    }
    for (int k = 0; k < 16; k++) {
        double ref = (double)g[k] * g[k] * want[k];
        fx_assert_within(imp[k], ref, (fx_gamma(N) + fx_gamma(N + 2)) * ref, "column %d", k);
    }
    for (int i = AR_Q; i <= AR_V; i++) free(w.w[i]);
}
