/* test_gguf_quant.c — GGML block quantizers against llama.cpp's recorded bytes
 * (tests/fixtures/gguf, see its README for provenance), gguf-py's dequantizer,
 * the grid API and the mix type policy. */
#include "error.h"
#include "fixture.h"
#include "gguf_policy.h"
#include "ggml_blocks.h"
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NROWS 6
#define NCOLS 512
#define FIX "tests/fixtures/gguf/"

static const char *qnames[] = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"};
#define NQ (int)(sizeof qnames / sizeof qnames[0])

static float *rows(void)
{
    size_t n;
    float *x = fx_slurp(FIX "rows.f32", &n);
    cr_assert_eq(n, sizeof(float) * NROWS * NCOLS);
    return x;
}

/* Quantize the fixture rows to type `name` and compare with prefix_<name>.bin. */
static void check_bytes(const char *prefix, const char *name, int use_imatrix)
{
    char path[256];
    size_t n, ni;
    float *x = rows();
    float *imx = use_imatrix ? fx_slurp(FIX "imatrix.f32", &ni) : NULL;
    snprintf(path, sizeof path, FIX "%s_%s.bin", prefix, name);
    uint8_t *want = fx_slurp(path, &n);
    int t = ar_ggml_type_parse(name);
    cr_assert(t >= 0);
    cr_assert_eq(n, NROWS * ar_ggml_row_bytes(t, NCOLS));
    uint8_t *got = malloc(n);
    cr_assert_eq(ar_ggml_quantize(t, x, got, NROWS, NCOLS, imx), 0, "%s", ar_last_error());
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(got[i], want[i], "%s %s: byte %zu (row %zu) differs: %u vs llama.cpp %u", prefix, name, i,
                     i / ar_ggml_row_bytes(t, NCOLS), got[i], want[i]);
    free(x); free(imx); free(want); free(got);
}

Test(gguf_quant, reference_quantizers_match_llama_cpp)
{
    for (int i = 0; i < NQ; i++) check_bytes("ref", qnames[i], 0);
}

Test(gguf_quant, imatrix_quantizers_match_llama_cpp)
{
    for (int i = 0; i < NQ; i++) check_bytes("imx", qnames[i], 1);
}

Test(gguf_quant, dequantize_matches_gguf_py)
{
    for (int i = 0; i < NQ; i++) {
        char path[256];
        size_t nb, nf;
        snprintf(path, sizeof path, FIX "ref_%s.bin", qnames[i]);
        uint8_t *blocks = fx_slurp(path, &nb);
        snprintf(path, sizeof path, FIX "deq_%s.f32", qnames[i]);
        float *want = fx_slurp(path, &nf), *got = malloc(nf);
        cr_assert_eq(ar_ggml_dequantize(ar_ggml_type_parse(qnames[i]), blocks, got, NROWS * NCOLS), 0);
        /* exact: gguf-py evaluates the same f32 formula per element (scale
         * times code, minus the min; no sums), and IEEE arithmetic rounds it
         * alike (the library is built without FP contraction: -std=c11) */
        for (int j = 0; j < NROWS * NCOLS; j++)
            cr_assert_eq(got[j], want[j], "%s[%d]: %.9g vs %.9g", qnames[i], j, got[j], want[j]);
        free(blocks); free(want); free(got);
    }
}

/* Frozen-scale API: requantizing with v = 0 keeps llama.cpp's bytes, fake
 * quantization equals dequantization, and offsets move codes by one step. */
Test(gguf_quant, grid_roundtrip)
{
    float *x = rows();
    const ar_ggml_type kq[] = {AR_GGML_Q2_K, AR_GGML_Q3_K, AR_GGML_Q4_K, AR_GGML_Q5_K, AR_GGML_Q6_K};
    for (int k = 0; k < 5; k++) {
        ar_ggml_type t = kq[k];
        ar_ggml_grid g;
        cr_assert_eq(ar_ggml_grid_of(t, &g), 0);
        size_t rb = ar_ggml_row_bytes(t, NCOLS);
        uint8_t *b = malloc(rb * NROWS), *b2 = malloc(rb * NROWS);
        int n = NROWS * NCOLS;
        float *s = malloc(sizeof(float) * n / g.group), *m = malloc(sizeof(float) * n / g.group);
        float *deq = malloc(sizeof(float) * n), *fq = malloc(sizeof(float) * n), *v = calloc(n, sizeof(float));
        cr_assert_eq(ar_ggml_quantize(t, x, b, NROWS, NCOLS, NULL), 0);
        memcpy(b2, b, rb * NROWS);
        cr_assert_eq(ar_ggml_requantize_codes(t, x, NULL, b2, n), 0);
        cr_assert_eq(memcmp(b, b2, rb * NROWS), 0, "%s: requantize changed bytes", ar_ggml_type_name(t));
        cr_assert_eq(ar_ggml_frozen_params(t, b, n, s, m), 0);
        cr_assert_eq(ar_ggml_dequantize(t, b, deq, n), 0);
        cr_assert_eq(ar_ggml_fake_quant(t, x, NULL, s, m, n, fq), 0);
        /* exact: fake quantization and dequantization evaluate the same f32
         * formula on the same codes */
        for (int j = 0; j < n; j++)
            if (s[j / g.group]) cr_assert_eq(fq[j], deq[j], "%s[%d] %g vs %g", ar_ggml_type_name(t), j, fq[j], deq[j]);
        /* push one mid-range element of row 0 up by one step with v = +1 */
        int j0 = 300;
        v[j0] = 1.f;
        float before = fq[j0];
        cr_assert_eq(ar_ggml_fake_quant(t, x, v, s, m, n, fq), 0);
        /* s (q + 1) - m against (s q - m) + s: each side's f32 rounding,
         * |s q| <= |before| + |m| */
        double sj = s[j0 / g.group], mj = fabs(m[j0 / g.group]);
        double step = 2 * fx_gamma(2) * (fabs(before) + sj + 2 * mj) + FX_U * (fabs(before) + sj);
        cr_assert(fx_within(fq[j0], before + sj, step) || fq[j0] == before,
                  "%s: v=1 gives %g from %g (step %g)", ar_ggml_type_name(t), fq[j0], before, s[j0 / g.group]);
        cr_assert_eq(ar_ggml_requantize_codes(t, x, v, b2, n), 0);
        cr_assert_eq(ar_ggml_dequantize(t, b2, deq, n), 0);
        cr_assert_eq(deq[j0], fq[j0], "%s: requantized %g vs fake %g (exact: the same codes, the same formula)",
                     ar_ggml_type_name(t), deq[j0], fq[j0]);
        free(b); free(b2); free(s); free(m); free(deq); free(fq); free(v);
    }
    free(x);
}

Test(gguf_quant, rejects_bad_row_length)
{
    float x[48] = {0};
    uint8_t out[256];
    cr_assert_eq(ar_ggml_quantize(AR_GGML_Q4_K, x, out, 1, 48, NULL), -1);
    cr_assert(strstr(ar_last_error(), "not a multiple"), "%s", ar_last_error());
    cr_assert_eq(ar_ggml_dequantize(AR_GGML_Q4_0, out, x, 48), -1);
}

Test(gguf_quant, type_table)
{
    cr_assert_eq(ar_ggml_row_bytes(AR_GGML_Q4_K, 512), 288);
    cr_assert_eq(ar_ggml_row_bytes(AR_GGML_Q8_0, 64), 68);
    cr_assert_eq(ar_ggml_row_bytes(AR_GGML_Q6_K, 64), 0);
    cr_assert_eq(ar_ggml_type_parse("Q4_K"), AR_GGML_Q4_K);
    cr_assert_str_eq(ar_ggml_type_name(AR_GGML_BF16), "bf16");
    cr_assert_eq(ar_gguf_ftype_parse("q4_k_m"), AR_FTYPE_Q4_K_M);
    cr_assert_eq(ar_gguf_ftype_parse("Q5_K"), AR_FTYPE_Q5_K_M);
    cr_assert_eq(ar_gguf_ftype_parse("q9_9"), -1);
}

/* stories260K (5 layers, rows of 64, FFN 172, tied output): the types
 * llama-quantize chose in the reference Q4_K_M and Q4_0 files. */
Test(gguf_quant, policy_matches_stories260K_reference)
{
    ar_gguf_model_info m = {.n_layers = 5, .n_gqa = 2, .has_output = 0};
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "token_embd.weight", 2, 64), AR_GGML_Q8_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "output_norm.weight", 1, 64), AR_GGML_F32);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.0.attn_q.weight", 2, 64), AR_GGML_Q5_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.1.attn_v.weight", 2, 64), AR_GGML_Q5_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.2.attn_v.weight", 2, 64), AR_GGML_Q8_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.4.attn_v.weight", 2, 64), AR_GGML_Q8_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "blk.3.ffn_down.weight", 2, 172), AR_GGML_F16);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_0, &m, "blk.3.ffn_down.weight", 2, 172), AR_GGML_F16);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_0, &m, "blk.3.ffn_up.weight", 2, 64), AR_GGML_Q4_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_0, &m, "token_embd.weight", 2, 64), AR_GGML_Q8_0);
}

/* A model whose rows fit k-quant blocks (tiny-llama-like: 6 layers, GQA 4). */
Test(gguf_quant, policy_layer_bumps)
{
    ar_gguf_model_info m = {.n_layers = 6, .n_gqa = 4, .has_output = 1};
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "output.weight", 2, 512), AR_GGML_Q6_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, "token_embd.weight", 2, 512), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q8_0, &m, "output.weight", 2, 512), AR_GGML_Q8_0);
    /* use_more_bits(i, 6): i >= 5 or (i % 3) == 2 */
    const ar_ggml_type down[6] = {AR_GGML_Q4_K, AR_GGML_Q4_K, AR_GGML_Q6_K, AR_GGML_Q4_K, AR_GGML_Q4_K, AR_GGML_Q6_K};
    for (int i = 0; i < 6; i++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", i);
        cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_M, &m, name, 2, 1280), down[i], "layer %d", i);
    }
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q2_K, &m, "blk.0.attn_v.weight", 2, 512), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q2_K, &m, "blk.0.ffn_down.weight", 2, 1280), AR_GGML_Q3_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q2_K, &m, "blk.0.attn_output.weight", 2, 512), AR_GGML_Q3_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q3_K_M, &m, "blk.1.attn_v.weight", 2, 512), AR_GGML_Q5_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q3_K_M, &m, "blk.2.attn_v.weight", 2, 512), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q3_K_S, &m, "blk.2.attn_v.weight", 2, 512), AR_GGML_Q3_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q4_K_S, &m, "blk.0.ffn_down.weight", 2, 1280), AR_GGML_Q4_K);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q5_K_S, &m, "blk.0.ffn_down.weight", 2, 224), AR_GGML_Q5_1);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q6_K, &m, "blk.0.ffn_up.weight", 2, 224), AR_GGML_Q8_0);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_F16, &m, "blk.0.ffn_up.weight", 2, 200), AR_GGML_F16);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_F16, &m, "blk.0.attn_norm.weight", 1, 512), AR_GGML_F32);
    cr_assert_eq(ar_gguf_tensor_type(AR_FTYPE_Q6_K, &m, "blk.0.ffn_up.weight", 2, 200), AR_GGML_F16);
}
