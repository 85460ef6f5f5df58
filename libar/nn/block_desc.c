/* block_desc.c — the block descriptions (block_desc.h). */
#include "block_desc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block_fused.h"
#include "error.h"

enum { IN_LN1, IN_AO, IN_LN2, IN_ACT, IN_N };
static const char *const inames[IN_N] = {"ln1", "ao", "ln2", "act"};

/* Phi-3 and GLM-4 (block_fused.h): fused qkv_proj (Phi-3) or q/k/v with
 * biases (GLM-4), o_proj, fused gate_up_proj, down_proj; GLM-4's norms after
 * both branches. */
static int fused_desc_init(ar_block_desc *d, const ar_config *c)
{
    int C = c->hidden, F = c->intermediate, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const ar_linear_desc phi3[] = {
        {"self_attn.qkv_proj", QD + 2 * KD, C, IN_LN1, 0}, {"self_attn.o_proj", C, QD, IN_AO, 0},
        {"mlp.gate_up_proj", 2 * F, C, IN_LN2, 0},         {"mlp.down_proj", C, F, IN_ACT, 0}};
    const ar_linear_desc glm4[] = {
        {"self_attn.q_proj", QD, C, IN_LN1, c->qkv_bias}, {"self_attn.k_proj", KD, C, IN_LN1, c->qkv_bias},
        {"self_attn.v_proj", KD, C, IN_LN1, c->qkv_bias}, {"self_attn.o_proj", C, QD, IN_AO, 0},
        {"mlp.gate_up_proj", 2 * F, C, IN_LN2, 0},        {"mlp.down_proj", C, F, IN_ACT, 0}};
    int phi = c->arch == AR_ARCH_PHI3, n = phi ? 4 : 6;
    d->family = phi ? "phi3" : "glm4";
    d->nlinear = n;
    if (!(d->lin = calloc((size_t)n, sizeof *d->lin))) return ar_error("block description: out of memory");
    memcpy(d->lin, phi ? phi3 : glm4, sizeof *d->lin * (size_t)n);
    d->ninput = IN_N;
    for (int j = 0; j < IN_N; j++) d->input_names[j] = inames[j], d->input_kind[j] = AR_INPUT_DENSE;
    d->norms[d->nnorm++] = (ar_norm_desc){"input_layernorm", C, AR_NORM_ATTN};
    d->norms[d->nnorm++] = (ar_norm_desc){"post_attention_layernorm", C, AR_NORM_MLP};
    if (c->post_norms) {
        d->norms[d->nnorm++] = (ar_norm_desc){"post_self_attn_layernorm", C, AR_NORM_ATTN_POST};
        d->norms[d->nnorm++] = (ar_norm_desc){"post_mlp_layernorm", C, AR_NORM_MLP_POST};
    }
    d->forward = ar_fused_forward;
    d->forward_train = ar_fused_forward_train;
    d->backward = ar_fused_backward;
    d->set_act_quant = phi ? ar_fused_set_act_quant_phi3 : ar_fused_set_act_quant_glm4;
    d->acts_input = phi ? ar_fused_acts_input_phi3 : ar_fused_acts_input_glm4;
    return 0;
}

int ar_block_desc_init(ar_block_desc *d, const ar_config *c)
{
    static const int input[AR_NLINEAR] = {IN_LN1, IN_LN1, IN_LN1, IN_AO, IN_LN2, IN_LN2, IN_ACT};
    *d = (ar_block_desc){0};
    int gemma = 0;
    switch (c->arch) {
    case AR_ARCH_LLAMA: case AR_ARCH_MISTRAL: case AR_ARCH_QWEN2: case AR_ARCH_QWEN3: break;
    case AR_ARCH_GEMMA2: case AR_ARCH_GEMMA3: gemma = 1; break;
    case AR_ARCH_PHI3: case AR_ARCH_GLM4: return fused_desc_init(d, c);
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
