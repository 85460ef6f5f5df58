/* block_desc.c — the block descriptions (block_desc.h). */
#include "block_desc.h"

#include <stdio.h>
#include <stdlib.h>

#include "error.h"

enum { IN_LN1, IN_AO, IN_LN2, IN_ACT, IN_N };

int ar_block_desc_init(ar_block_desc *d, const ar_config *c)
{
    static const int input[AR_NLINEAR] = {IN_LN1, IN_LN1, IN_LN1, IN_AO, IN_LN2, IN_LN2, IN_ACT};
    static const char *const inames[IN_N] = {"ln1", "ao", "ln2", "act"};
    *d = (ar_block_desc){0};
    int gemma = 0;
    switch (c->arch) {
    case AR_ARCH_LLAMA: case AR_ARCH_MISTRAL: case AR_ARCH_QWEN2: case AR_ARCH_QWEN3: break;
    case AR_ARCH_GEMMA2: case AR_ARCH_GEMMA3: gemma = 1; break;
    default: return ar_error("%s: no block description for this architecture", c->arch_name);
    }
    d->family = gemma ? "gemma" : "llama";
    d->nlinear = AR_NLINEAR;
    d->lin = calloc(AR_NLINEAR, sizeof *d->lin);
    if (!d->lin) return ar_error("block description: out of memory");
    for (int i = 0; i < AR_NLINEAR; i++) {
        ar_linear_desc *l = &d->lin[i];
        l->name = ar_linear_names[i];
        ar_linear_shape(c, i, &l->n_out, &l->k_in);
        l->input = input[i];
        l->has_bias = i <= AR_V ? c->qkv_bias : i == AR_O ? c->o_bias : c->mlp_bias;
    }
    d->ninput = IN_N;
    for (int j = 0; j < IN_N; j++) {
        d->input_names[j] = inames[j];
        d->input_kind[j] = AR_INPUT_DENSE;
    }
    d->norms[d->nnorm++] = (ar_norm_desc){"input_layernorm", c->hidden, AR_NORM_ATTN};
    if (gemma) {   /* Gemma's post_attention_layernorm normalizes the attention output */
        d->norms[d->nnorm++] = (ar_norm_desc){"post_attention_layernorm", c->hidden, AR_NORM_ATTN_POST};
        d->norms[d->nnorm++] = (ar_norm_desc){"pre_feedforward_layernorm", c->hidden, AR_NORM_MLP};
        d->norms[d->nnorm++] = (ar_norm_desc){"post_feedforward_layernorm", c->hidden, AR_NORM_MLP_POST};
    } else {
        d->norms[d->nnorm++] = (ar_norm_desc){"post_attention_layernorm", c->hidden, AR_NORM_MLP};
    }
    if (c->qk_norm) {
        d->norms[d->nnorm++] = (ar_norm_desc){"self_attn.q_norm", c->head_dim, AR_NORM_Q};
        d->norms[d->nnorm++] = (ar_norm_desc){"self_attn.k_norm", c->head_dim, AR_NORM_K};
    }
    d->forward = gemma ? ar_block_gemma_forward : ar_block_forward;
    d->forward_train = gemma ? ar_block_gemma_forward_train : ar_block_forward_train;
    d->backward = gemma ? ar_block_gemma_backward : ar_block_backward_inputs;
    d->set_act_quant = ar_block_set_act_quant;
    d->acts_input = ar_block_acts_input;
    return 0;
}

void ar_block_desc_free(ar_block_desc *d)
{
    free(d->lin);
    d->lin = NULL;
    d->nlinear = 0;
}

int ar_block_desc_group(const ar_block_desc *d, int i)
{
    for (int j = 0; j < i; j++)
        if (d->lin[j].input == d->lin[i].input) return j;
    return i;
}

int ar_block_desc_layer_name(const ar_block_desc *d, int layer, int i, char *buf, int size)
{
    return snprintf(buf, (size_t)size, "model.layers.%d.%s", layer, d->lin[i].name);
}
