/* test_block_desc.c — the block description (block_desc.h) of the shared
 * models' configs against block.h's fixed tables: names, shapes, biases,
 * the input grouping of ar_block_acts_input, norms and the family's
 * functions; and a Qwen-style config's biases and QK-norms. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "block.h"
#include "block_desc.h"
#include "config.h"
#include "fixture.h"

static void check_against_block(const ar_config *c)
{
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init(&d, c), 0);
    cr_assert_str_eq(d.family, "llama");
    cr_assert_eq(d.nlinear, AR_NLINEAR);
    /* the saved activations: one buffer per input, so the input grouping of
     * the description must give the same buffer exactly for the same input */
    ar_block_acts a;
    cr_assert_eq(ar_block_acts_init(&a, c, 1, 2), 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        cr_assert_str_eq(d.lin[i].name, ar_linear_names[i]);
        cr_assert_eq(d.lin[i].n_out, n, "%s", ar_linear_names[i]);
        cr_assert_eq(d.lin[i].k_in, k, "%s", ar_linear_names[i]);
        cr_assert(d.lin[i].input >= 0 && d.lin[i].input < d.ninput);
        for (int j = 0; j < AR_NLINEAR; j++)
            cr_assert_eq(d.lin[i].input == d.lin[j].input,
                         ar_block_acts_input(&a, i) == ar_block_acts_input(&a, j), "%d %d", i, j);
        char name[128];
        ar_block_desc_layer_name(&d, 3, i, name, sizeof name);
        char want[128];
        snprintf(want, sizeof want, "model.layers.3.%s", ar_linear_names[i]);
        cr_assert_str_eq(name, want);
    }
    /* the groups of block.c: q/k/v read ln1, gate/up read ln2 */
    static const int leader[AR_NLINEAR] = {AR_Q, AR_Q, AR_Q, AR_O, AR_GATE, AR_GATE, AR_DOWN};
    for (int i = 0; i < AR_NLINEAR; i++) cr_assert_eq(ar_block_desc_group(&d, i), leader[i], "%d", i);
    cr_assert_eq(d.ninput, 4);
    cr_assert_str_eq(d.input_names[d.lin[AR_Q].input], "ln1");
    cr_assert_str_eq(d.input_names[d.lin[AR_O].input], "ao");
    cr_assert_str_eq(d.input_names[d.lin[AR_UP].input], "ln2");
    cr_assert_str_eq(d.input_names[d.lin[AR_DOWN].input], "act");
    cr_assert_eq(d.nnorm, c->qk_norm ? 4 : 2);
    cr_assert_str_eq(d.norms[0].name, "input_layernorm");
    cr_assert_eq(d.norms[1].size, c->hidden);
    cr_assert(d.forward == ar_block_forward && d.forward_train == ar_block_forward_train &&
              d.backward == ar_block_backward_inputs);
    ar_block_acts_free(&a);
    ar_block_desc_free(&d);
    cr_assert_null(d.lin);
}

static void check_model(const char *model)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, model);
    ar_config c;
    cr_assert_eq(ar_config_load(&c, dir), 0, "%s", dir);
    check_against_block(&c);
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init(&d, &c), 0);
    for (int i = 0; i < AR_NLINEAR; i++) cr_assert_eq(d.lin[i].has_bias, 0);
    ar_block_desc_free(&d);
}

Test(block_desc, stories260K) { check_model("stories260K"); }
Test(block_desc, tiny_llama) { check_model("tiny-llama"); }

/* Qwen2's q/k/v biases and Qwen3's QK-norms come from the config flags. */
Test(block_desc, qwen_flags)
{
    ar_config c = {0};
    c.arch = AR_ARCH_QWEN3;
    c.hidden = 16, c.intermediate = 24, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
    c.qkv_bias = 1, c.qk_norm = 1;
    check_against_block(&c);
    ar_block_desc d;
    cr_assert_eq(ar_block_desc_init(&d, &c), 0);
    for (int i = 0; i < AR_NLINEAR; i++) cr_assert_eq(d.lin[i].has_bias, i <= AR_V, "%d", i);
    cr_assert_eq(d.lin[AR_K].n_out, 8);
    cr_assert_str_eq(d.norms[2].name, "self_attn.q_norm");
    cr_assert_eq(d.norms[3].size, 4);
    ar_block_desc_free(&d);
}
