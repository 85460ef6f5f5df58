/* block_desc.c — the block descriptions (block_desc.h). */
#include "block_desc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_mla.h"
#include "block_deepseek.h"
#include "block_fused.h"
#include "block_gptoss.h"
#include "block_moe.h"
#include "error.h"

enum { IN_LN1, IN_AO, IN_LN2, IN_ACT, IN_N };
static const char *const inames[IN_N] = {"ln1", "ao", "ln2", "act"};

static int is_moe_family(const ar_config *c)
{
    return c->arch == AR_ARCH_QWEN3_MOE || c->arch == AR_ARCH_QWEN2_MOE || c->arch == AR_ARCH_MIXTRAL ||
           c->arch == AR_ARCH_DEEPSEEK_V2 || c->arch == AR_ARCH_DEEPSEEK_V3 || c->arch == AR_ARCH_GPT_OSS;
}

static int is_deepseek(const ar_config *c) { return c->arch == AR_ARCH_DEEPSEEK_V2 || c->arch == AR_ARCH_DEEPSEEK_V3; }

/* The family's five functions (block_desc.h). */
static void set_fns(ar_block_desc *d, ar_block_forward_fn fwd, ar_block_forward_train_fn fwd_train,
                    ar_block_backward_fn bwd, ar_block_set_act_quant_fn set_aq, ar_block_acts_input_fn acts_input)
{
    d->forward = fwd, d->forward_train = fwd_train, d->backward = bwd;
    d->set_act_quant = set_aq, d->acts_input = acts_input;
}

/* lin [nlinear], input_names and input_kind [ninput] in one go. */
static int desc_alloc(ar_block_desc *d, int nlinear, int ninput)
{
    d->nlinear = nlinear, d->ninput = ninput;
    d->lin = calloc((size_t)nlinear, sizeof *d->lin);
    d->input_names = calloc((size_t)ninput, sizeof *d->input_names);
    d->input_kind = calloc((size_t)ninput, sizeof *d->input_kind);
    if (!d->lin || !d->input_names || !d->input_kind) {
        ar_block_desc_free(d);
        return ar_error("block description: out of memory");
    }
    return 0;
}

/* The attention's four linears (Llama family) and the block's norms;
 * gemma: Gemma's sandwich norms (its post_attention_layernorm normalizes the
 * attention output). */
static void attention_desc(ar_block_desc *d, const ar_config *c, int gemma)
{
    static const int input[AR_GATE] = {IN_LN1, IN_LN1, IN_LN1, IN_AO};
    for (int i = 0; i < AR_GATE; i++) {
        ar_linear_desc *l = &d->lin[i];
        l->name = ar_linear_names[i];
        ar_linear_shape(c, i, &l->n_out, &l->k_in);
        l->input = input[i];
        l->has_bias = i <= AR_V ? c->qkv_bias : c->o_bias;
    }
    for (int j = 0; j < IN_N; j++) d->input_names[j] = inames[j], d->input_kind[j] = AR_INPUT_DENSE;
    d->norms[d->nnorm++] = (ar_norm_desc){"input_layernorm", c->hidden, AR_NORM_ATTN};
    if (gemma) {
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
}

/* Llama, Mistral, Qwen2, Qwen3 ("llama") and Gemma 2 / 3 ("gemma"). */
static int llama_desc(ar_block_desc *d, const ar_config *c)
{
    int gemma = c->arch == AR_ARCH_GEMMA2 || c->arch == AR_ARCH_GEMMA3;
    if (desc_alloc(d, AR_NLINEAR, IN_N)) return -1;
    d->family = gemma ? "gemma" : "llama";
    attention_desc(d, c, gemma);
    static const int input[3] = {IN_LN2, IN_LN2, IN_ACT};
    for (int i = AR_GATE; i < AR_NLINEAR; i++) {
        ar_linear_desc *l = &d->lin[i];
        l->name = ar_linear_names[i];
        ar_linear_shape(c, i, &l->n_out, &l->k_in);
        l->input = input[i - AR_GATE];
        l->has_bias = c->mlp_bias;
    }
    if (gemma)
        set_fns(d, ar_block_gemma_forward, ar_block_gemma_forward_train, ar_block_gemma_backward,
                ar_block_set_act_quant, ar_block_acts_input);
    else
        set_fns(d, ar_block_forward, ar_block_forward_train, ar_block_backward_inputs, ar_block_set_act_quant,
                ar_block_acts_input);
    return 0;
}

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
    if (desc_alloc(d, n, IN_N)) return -1;
    memcpy(d->lin, phi ? phi3 : glm4, sizeof *d->lin * (size_t)n);
    for (int j = 0; j < IN_N; j++) d->input_names[j] = inames[j], d->input_kind[j] = AR_INPUT_DENSE;
    d->norms[d->nnorm++] = (ar_norm_desc){"input_layernorm", C, AR_NORM_ATTN};
    d->norms[d->nnorm++] = (ar_norm_desc){"post_attention_layernorm", C, AR_NORM_MLP};
    if (c->post_norms) {
        d->norms[d->nnorm++] = (ar_norm_desc){"post_self_attn_layernorm", C, AR_NORM_ATTN_POST};
        d->norms[d->nnorm++] = (ar_norm_desc){"post_mlp_layernorm", C, AR_NORM_MLP_POST};
    }
    set_fns(d, ar_fused_forward, ar_fused_forward_train, ar_fused_backward,
            phi ? ar_fused_set_act_quant_phi3 : ar_fused_set_act_quant_glm4,
            phi ? ar_fused_acts_input_phi3 : ar_fused_acts_input_glm4);
    return 0;
}

/* ---- the experts of the MoE families (moe, deepseek, gpt_oss) ---- */

/* Room for one generated name ("mlp.experts.%d.gate_proj", "ln2.e%d", ...). */
#define NAME_LEN 48

/* The three projections gate, up, down of one MLP named prefix.*_proj at
 * d->lin[l0..l0+2], intermediate size n, reading in_x (gate, up) and in_act
 * (down); their names are written at p. Returns p past them. */
static char *mlp_linears(ar_block_desc *d, int l0, char *p, const char *prefix, int n, const ar_config *c,
                         int in_x, int in_act, int bias)
{
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int j = 0; j < 3; j++, p += NAME_LEN) {
        ar_linear_desc *l = &d->lin[l0 + j];
        snprintf(p, NAME_LEN, "%s.%s", prefix, proj[j]), l->name = p;
        l->n_out = j == 2 ? c->hidden : n;
        l->k_in = j == 2 ? n : c->hidden;
        l->input = j == 2 ? in_act : in_x;
        l->has_bias = bias;
    }
    return p;
}

/* The routed experts: expert e's inputs "ln2.eE", "act.eE" at in0 + 2e and
 * in0 + 2e + 1 (routed), its linears mlp.experts.E.* at d->lin[l0 + 3e..];
 * five names each at p. Returns p past them. */
static char *routed_experts(ar_block_desc *d, const ar_config *c, int l0, int in0, char *p, int bias)
{
    for (int e = 0; e < c->moe.n_experts; e++) {
        int in_x = in0 + 2 * e, in_act = in_x + 1;
        char prefix[32];
        snprintf(p, NAME_LEN, "ln2.e%d", e), d->input_names[in_x] = p, p += NAME_LEN;
        snprintf(p, NAME_LEN, "act.e%d", e), d->input_names[in_act] = p, p += NAME_LEN;
        d->input_kind[in_x] = d->input_kind[in_act] = AR_INPUT_ROUTED;
        snprintf(prefix, sizeof prefix, "mlp.experts.%d", e);
        p = mlp_linears(d, l0 + 3 * e, p, prefix, c->moe.expert_intermediate, c, in_x, in_act, bias);
    }
    return p;
}

static int moe_desc(ar_block_desc *d, const ar_config *c)
{
    const ar_moe_config *m = &c->moe;
    int E = m->n_experts, shared = m->n_shared_experts > 0 && m->shared_intermediate > 0;
    int nl = 4 + 3 * E + 3 * shared, nin = IN_N + 2 * E + shared;
    if (desc_alloc(d, nl, nin)) return -1;
    d->family = "moe";
    d->strings = malloc((size_t)(3 * E + 3 + 2 * E + 1) * NAME_LEN);
    if (!d->strings) { ar_block_desc_free(d); return ar_error("block description: out of memory"); }
    attention_desc(d, c, 0);
    char *p = routed_experts(d, c, 4, IN_N, d->strings, m->expert_bias);
    if (shared) {
        const char *pre = c->arch == AR_ARCH_QWEN2_MOE ? "mlp.shared_expert" : "mlp.shared_experts";
        int in_act = IN_N + 2 * E;
        d->input_names[in_act] = "act.shared", d->input_kind[in_act] = AR_INPUT_DENSE;
        mlp_linears(d, 4 + 3 * E, p, pre, m->shared_intermediate, c, IN_LN2, in_act, 0);
    }
    d->fp[d->nfp++] = (ar_fp_desc){AR_FP_ROUTER, "mlp.gate.weight", E, c->hidden};
    if (m->score_correction_bias) d->fp[d->nfp++] = (ar_fp_desc){AR_FP_SCORE_BIAS, "mlp.gate.e_score_correction_bias", E, 0};
    if (m->shared_expert_gate) d->fp[d->nfp++] = (ar_fp_desc){AR_FP_SHARED_GATE, "mlp.shared_expert_gate.weight", 1, c->hidden};
    set_fns(d, ar_block_moe_forward, ar_block_moe_forward_train, ar_block_moe_backward, ar_block_moe_set_act_quant,
            ar_block_moe_acts_input);
    return 0;
}

/* ---- DeepSeek-V2/V3 (block_deepseek.h) ---- */

static int deepseek_desc(ar_block_desc *d, const ar_config *c, int layer)
{
    *d = (ar_block_desc){0};
    ar_mla_dims md;
    ar_mla_dims_from_config(&md, c);
    int moe = ar_config_layer_moe(c, layer), E = moe ? c->moe.n_experts : 0;
    int shared = moe && c->moe.n_shared_experts > 0 && c->moe.shared_intermediate > 0;
    int natt = md.QL ? 5 : 4, nl = natt + (moe ? 3 * E + 3 * shared : 3);
    /* inputs: ln1, the normed latents q_a / kv_a, ao, ln2, act; per expert ln2.eE, act.eE; act.shared */
    enum { IN_LN1, IN_QAN, IN_LATN, IN_AO, IN_LN2, IN_ACT, IN_N };
    int nin = IN_N + 2 * E + shared;
    d->family = "deepseek";
    if (desc_alloc(d, nl, nin)) return -1;
    if (!(d->strings = malloc((size_t)(nl + nin) * NAME_LEN))) {
        ar_block_desc_free(d);
        return ar_error("block description: out of memory");
    }
    static const char *const inames[IN_N] = {"ln1", "q_a", "kv_a", "ao", "ln2", "act"};
    for (int j = 0; j < IN_N; j++) d->input_names[j] = inames[j];
    static const int mla_in[AR_MLA_NLINEAR] = {IN_LN1, IN_QAN, IN_LN1, IN_LN1, IN_LATN, IN_AO};
    static const char *const mla_names[AR_MLA_NLINEAR] = {
        "self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.q_proj",
        "self_attn.kv_a_proj_with_mqa", "self_attn.kv_b_proj", "self_attn.o_proj"};
    int i = 0;
    for (int k = 0; k < AR_MLA_NLINEAR; k++) {
        int N, K;
        ar_mla_linear_shape(&md, k, &N, &K);
        if (!N) continue;
        d->lin[i++] = (ar_linear_desc){mla_names[k], N, K, mla_in[k],
                                       (k == AR_MLA_Q_A || k == AR_MLA_KV_A) ? c->qkv_bias : k == AR_MLA_O && c->o_bias};
    }
    char *p = d->strings;
    if (!moe) {
        mlp_linears(d, i, p, "mlp", c->intermediate, c, IN_LN2, IN_ACT, 0);
    } else {
        p = routed_experts(d, c, i, IN_N, p, 0);
        if (shared) {
            d->input_names[IN_N + 2 * E] = "act.shared";
            mlp_linears(d, i + 3 * E, p, "mlp.shared_experts", c->moe.shared_intermediate, c, IN_LN2, IN_N + 2 * E, 0);
        }
        d->fp[d->nfp++] = (ar_fp_desc){AR_FP_ROUTER, "mlp.gate.weight", E, c->hidden};
        if (c->moe.score_correction_bias)
            d->fp[d->nfp++] = (ar_fp_desc){AR_FP_SCORE_BIAS, "mlp.gate.e_score_correction_bias", E, 0};
    }
    d->norms[d->nnorm++] = (ar_norm_desc){"input_layernorm", c->hidden, AR_NORM_ATTN};
    d->norms[d->nnorm++] = (ar_norm_desc){"post_attention_layernorm", c->hidden, AR_NORM_MLP};
    /* MLA's latent norms ride in the QK-norm slots (q_norm: q_a, k_norm: kv_a) */
    if (md.QL) d->norms[d->nnorm++] = (ar_norm_desc){"self_attn.q_a_layernorm", md.QL, AR_NORM_Q};
    d->norms[d->nnorm++] = (ar_norm_desc){"self_attn.kv_a_layernorm", md.KL, AR_NORM_K};
    set_fns(d, ar_block_deepseek_forward, ar_block_deepseek_forward_train, ar_block_deepseek_backward,
            ar_block_deepseek_set_act_quant, ar_block_deepseek_acts_input);
    return 0;
}

/* ---- gpt-oss (block_gptoss.h) ---- */

static int gptoss_desc(ar_block_desc *d, const ar_config *c)
{
    *d = (ar_block_desc){0};
    enum { IN_LN1, IN_AO, IN_N };
    int E = c->moe.n_experts, nl = 4 + 3 * E, nin = IN_N + 2 * E;
    d->family = "gpt_oss";
    if (desc_alloc(d, nl, nin)) return -1;
    if (!(d->strings = malloc((size_t)(3 * E + 2 * E) * NAME_LEN + 1))) {
        ar_block_desc_free(d);
        return ar_error("block description: out of memory");
    }
    d->input_names[IN_LN1] = "ln1", d->input_names[IN_AO] = "ao";
    for (int i = 0; i < 4; i++) {
        ar_linear_desc *l = &d->lin[i];
        l->name = ar_linear_names[i];
        ar_linear_shape(c, i, &l->n_out, &l->k_in);
        l->input = i < 3 ? IN_LN1 : IN_AO;
        l->has_bias = i < 3 ? c->qkv_bias : c->o_bias;
    }
    routed_experts(d, c, 4, IN_N, d->strings, c->moe.expert_bias);
    d->norms[d->nnorm++] = (ar_norm_desc){"input_layernorm", c->hidden, AR_NORM_ATTN};
    d->norms[d->nnorm++] = (ar_norm_desc){"post_attention_layernorm", c->hidden, AR_NORM_MLP};
    d->fp[d->nfp++] = (ar_fp_desc){AR_FP_ROUTER, "mlp.router.weight", E, c->hidden};
    if (c->moe.router_bias) d->fp[d->nfp++] = (ar_fp_desc){AR_FP_ROUTER_BIAS, "mlp.router.bias", E, 0};
    if (c->attn_sinks) d->fp[d->nfp++] = (ar_fp_desc){AR_FP_SINKS, "self_attn.sinks", c->n_heads, 0};
    set_fns(d, ar_block_gptoss_forward, ar_block_gptoss_forward_train, ar_block_gptoss_backward,
            ar_block_gptoss_set_act_quant, ar_block_gptoss_acts_input);
    return 0;
}

int ar_block_desc_init(ar_block_desc *d, const ar_config *c)
{
    *d = (ar_block_desc){0};
    switch (c->arch) {
    case AR_ARCH_LLAMA: case AR_ARCH_MISTRAL: case AR_ARCH_QWEN2: case AR_ARCH_QWEN3:
    case AR_ARCH_GEMMA2: case AR_ARCH_GEMMA3: return llama_desc(d, c);
    case AR_ARCH_PHI3: case AR_ARCH_GLM4: return fused_desc_init(d, c);
    default: break;
    }
    if (is_deepseek(c) && c->moe.n_moe_layers == 0) return deepseek_desc(d, c, 0);
    if (is_moe_family(c))
        return ar_error("%s: mixture-of-experts blocks are described per layer; this path takes one description "
                        "for all layers and does not handle them yet", c->arch_name);
    return ar_error("%s: no block description for this architecture", c->arch_name);
}

int ar_block_desc_init_layer(ar_block_desc *d, const ar_config *c, int layer)
{
    *d = (ar_block_desc){0};
    if (!is_moe_family(c)) return ar_block_desc_init(d, c);
    if (is_deepseek(c)) return deepseek_desc(d, c, layer);
    if (c->arch == AR_ARCH_GPT_OSS) return gptoss_desc(d, c);
    return ar_config_layer_moe(c, layer) ? moe_desc(d, c) : llama_desc(d, c);
}

void ar_block_desc_free(ar_block_desc *d)
{
    free(d->lin);
    free(d->input_names);
    free(d->input_kind);
    free(d->strings);
    d->lin = NULL, d->input_names = NULL, d->input_kind = NULL, d->strings = NULL;
    d->nlinear = 0, d->ninput = 0;
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

int ar_block_desc_expert(const ar_block_desc *d, int i)
{
    int e;
    if (d->input_kind[d->lin[i].input] != AR_INPUT_ROUTED) return -1;
    return sscanf(d->lin[i].name, "mlp.experts.%d.", &e) == 1 ? e : -1;
}

int ar_block_desc_nexperts(const ar_block_desc *d)
{
    int E = 0;
    for (int i = 0; i < d->nlinear; i++) {
        int e = ar_block_desc_expert(d, i);
        E = e + 1 > E ? e + 1 : E;
    }
    return E;
}
