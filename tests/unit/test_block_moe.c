/* test_block_moe.c — the "moe" block family (block_moe.h) composed with the
 * Llama attention half: a one-expert top-1 mixture is exactly the dense
 * SwiGLU MLP (weight softmax(one logit) = 1, routing gradient 0), so with
 * the expert's weights equal to the dense MLP's the MoE block must reproduce
 * ar_block_forward / ar_block_backward bit for bit (the same sgemm shapes,
 * the rows gathered in their own order). The layer itself is tested against
 * a reference in test_moe.c; the description and loader here. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "block_desc.h"
#include "block_moe.h"

enum { B = 2, T = 5, C = 16, F = 24 };

static unsigned rng = 99;
static float urand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) / 16777216.0 - 0.5);
}

static float *rnd(long n, float scale, float offset)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) p[i] = offset + scale * urand();
    return p;
}

static ar_config moe_config(int qk_norm)
{
    ar_config c = {0};
    c.arch = AR_ARCH_QWEN3_MOE;
    c.hidden = C, c.intermediate = F, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
    c.rms_eps = 1e-6f, c.rope_theta = 10000.0, c.qk_norm = qk_norm, c.n_layers = 1;
    c.moe = (ar_moe_config){.n_experts = 1, .top_k = 1, .expert_intermediate = F, .norm_topk_prob = 1,
                            .n_group = 1, .topk_group = 1, .routed_scaling_factor = 1, .n_moe_layers = 1};
    c.layer_flags[0] = AR_LAYER_MOE;
    return c;
}

static void check_equal(int qk_norm)
{
    ar_config c = moe_config(qk_norm);
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init_layer(&d, &c, 0), 0);
    cr_assert_str_eq(d.family, "moe");
    cr_assert_eq(d.nlinear, 7);
    cr_assert_str_eq(d.lin[5].name, "mlp.experts.0.up_proj");
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_init(&w, 7), 0);
    for (int i = 0; i < 7; i++) {
        w.w[i] = rnd((long)d.lin[i].n_out * d.lin[i].k_in, 0.6f, 0);
    }
    w.attn_norm = rnd(C, 0.4f, 1), w.mlp_norm = rnd(C, 0.4f, 1);
    if (qk_norm) w.q_norm = rnd(4, 0.4f, 1), w.k_norm = rnd(4, 0.4f, 1);
    w.router = rnd(C, 1, 0);
    long n = (long)B * T * C;
    float *x = rnd(n, 2, 0), *dy = rnd(n, 1, 0), y1[n], y2[n], dx1[n], dx2[n];
    ar_block_work ws;
    ar_block_acts a1, a2;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 1), 0);
    cr_assert_eq(ar_block_acts_init(&a1, &c, B, T), 0);
    cr_assert_eq(ar_block_acts_init(&a2, &c, B, T), 0);
    cr_assert_eq(ar_block_forward_train(&c, &w, x, y1, B, T, &ws, &a1), 0);
    cr_assert_eq(d.forward_train(&c, &w, x, y2, B, T, &ws, &a2), 0);
    for (long i = 0; i < n; i++) cr_assert_eq(y1[i], y2[i], "train y[%ld]", i);
    cr_assert_eq(d.forward(&c, &w, x, y2, B, T, &ws), 0);
    for (long i = 0; i < n; i++) cr_assert_eq(y1[i], y2[i], "inference y[%ld]", i);
    float *dW1[7], *dW2[7];
    for (int i = 0; i < 7; i++) {
        long k = (long)d.lin[i].n_out * d.lin[i].k_in;
        dW1[i] = calloc(k, sizeof(float)), dW2[i] = calloc(k, sizeof(float));
    }
    memset(dx1, 0, sizeof dx1), memset(dx2, 0, sizeof dx2);
    cr_assert_eq(ar_block_backward(&c, &w, &a1, dy, dW1, dx1, &ws), 0);
    cr_assert_eq(d.backward(&c, &w, &a2, dy, dW2, dx2, NULL, &ws), 0);
    for (long i = 0; i < n; i++) cr_assert_eq(dx1[i], dx2[i], "dx[%ld]", i);
    for (int i = 0; i < 7; i++)
        for (long j = 0; j < (long)d.lin[i].n_out * d.lin[i].k_in; j++)
            cr_assert_eq(dW1[i][j], dW2[i][j], "dW[%d][%ld]", i, j);
    /* activation quantization is refused for MoE blocks */
    ar_act_spec spec = {0};
    const ar_act_spec *aq[7] = {&spec};
    cr_assert_neq(d.set_act_quant(&ws, aq), 0);
    for (int i = 0; i < 7; i++) free(dW1[i]), free(dW2[i]), free(w.w[i]);
    free(w.attn_norm), free(w.mlp_norm), free(w.q_norm), free(w.k_norm), free(w.router), free(x), free(dy);
    ar_block_weights_release(&w);
    ar_block_acts_free(&a1), ar_block_acts_free(&a2), ar_block_work_free(&ws);
    ar_block_desc_free(&d);
}

Test(block_moe, one_expert_equals_dense_mlp) { check_equal(0); }
Test(block_moe, one_expert_equals_dense_mlp_qk_norm) { check_equal(1); }

/* Qwen3-MoE layout: mlp_only_layers make a layer dense; descriptions per layer. */
Test(block_moe, description_per_layer)
{
    ar_config c = moe_config(1);
    c.n_layers = 2, c.layer_flags[1] = 0;
    c.moe.n_experts = 8, c.moe.top_k = 2, c.moe.n_shared_experts = 1, c.moe.shared_intermediate = 32;
    c.moe.shared_expert_gate = 1, c.arch = AR_ARCH_QWEN2_MOE;
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init_layer(&d, &c, 0), 0);
    cr_assert_eq(d.nlinear, 4 + 24 + 3);
    cr_assert_str_eq(d.lin[4 + 3 * 7 + 2].name, "mlp.experts.7.down_proj");
    cr_assert_str_eq(d.lin[4 + 24].name, "mlp.shared_expert.gate_proj");
    cr_assert_eq(d.lin[4 + 24].n_out, 32);
    /* expert 3's gate and up share a routed input; expert 4's differs */
    cr_assert_eq(ar_block_desc_group(&d, 4 + 3 * 3 + 1), 4 + 3 * 3);
    cr_assert_eq(ar_block_desc_group(&d, 4 + 3 * 4), 4 + 3 * 4);
    cr_assert_eq(d.input_kind[d.lin[4 + 9].input], AR_INPUT_ROUTED);
    cr_assert_eq(d.nfp, 2);
    ar_block_desc_free(&d);
    cr_assert_eq(ar_block_desc_init_layer(&d, &c, 1), 0);
    cr_assert_str_eq(d.family, "llama");
    cr_assert_eq(d.nlinear, 7);
    ar_block_desc_free(&d);
    cr_assert_neq(ar_block_desc_init(&d, &c), 0); /* one description for all layers: refused */
}
