/* gguf_policy.c — llama.cpp's mixes: per-tensor types and tensor names (see
 * gguf_policy.h). */
#include "gguf_policy.h"
#include "error.h"
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- llama.cpp mixes: per-tensor type policy ----------------------------------- */

static const struct { ar_gguf_ftype f; const char *name; ar_ggml_type base; } ftypes[] = {
    {AR_FTYPE_ALL_F32, "F32", AR_GGML_F32},     {AR_FTYPE_F16, "F16", AR_GGML_F16},
    {AR_FTYPE_BF16, "BF16", AR_GGML_BF16},      {AR_FTYPE_Q4_0, "Q4_0", AR_GGML_Q4_0},
    {AR_FTYPE_Q4_1, "Q4_1", AR_GGML_Q4_1},      {AR_FTYPE_Q5_0, "Q5_0", AR_GGML_Q5_0},
    {AR_FTYPE_Q5_1, "Q5_1", AR_GGML_Q5_1},      {AR_FTYPE_Q8_0, "Q8_0", AR_GGML_Q8_0},
    {AR_FTYPE_Q2_K, "Q2_K", AR_GGML_Q2_K},      {AR_FTYPE_Q2_K_S, "Q2_K_S", AR_GGML_Q2_K},
    {AR_FTYPE_Q3_K_S, "Q3_K_S", AR_GGML_Q3_K},  {AR_FTYPE_Q3_K_M, "Q3_K_M", AR_GGML_Q3_K},
    {AR_FTYPE_Q3_K_L, "Q3_K_L", AR_GGML_Q3_K},  {AR_FTYPE_Q4_K_S, "Q4_K_S", AR_GGML_Q4_K},
    {AR_FTYPE_Q4_K_M, "Q4_K_M", AR_GGML_Q4_K},  {AR_FTYPE_Q5_K_S, "Q5_K_S", AR_GGML_Q5_K},
    {AR_FTYPE_Q5_K_M, "Q5_K_M", AR_GGML_Q5_K},  {AR_FTYPE_Q6_K, "Q6_K", AR_GGML_Q6_K},
};
#define N_FTYPES (int)(sizeof ftypes / sizeof ftypes[0])

int ar_gguf_ftype_parse(const char *name)
{
    /* llama-quantize's short aliases pick the _M variant */
    if (!strcasecmp(name, "Q3_K")) return AR_FTYPE_Q3_K_M;
    if (!strcasecmp(name, "Q4_K")) return AR_FTYPE_Q4_K_M;
    if (!strcasecmp(name, "Q5_K")) return AR_FTYPE_Q5_K_M;
    for (int i = 0; i < N_FTYPES; i++)
        if (!strcasecmp(name, ftypes[i].name)) return ftypes[i].f;
    return -1;
}

const char *ar_gguf_ftype_name(ar_gguf_ftype f)
{
    for (int i = 0; i < N_FTYPES; i++)
        if (ftypes[i].f == f) return ftypes[i].name;
    return "?";
}

ar_ggml_type ar_gguf_ftype_base(ar_gguf_ftype f)
{
    for (int i = 0; i < N_FTYPES; i++)
        if (ftypes[i].f == f) return ftypes[i].base;
    return AR_GGML_F32;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Layers at the ends of the stack and every third in between get more bits. */
static int use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static int layer_of(const char *name)
{
    int i = -1;
    if (sscanf(name, "blk.%d.", &i) != 1) return 0;
    return i;
}

/* output.weight (or token_embd when it doubles as the output): Q6_K, or Q8_0
 * when the base type is Q8_0 or the row length is not a multiple of the base
 * type's block. */
static ar_ggml_type output_type(ar_ggml_type t, int64_t ne0)
{
    if (ne0 % ar_ggml_block_elems(t)) return AR_GGML_Q8_0;
    return t == AR_GGML_Q8_0 ? t : AR_GGML_Q6_K;
}

static ar_ggml_type attn_v_type(ar_gguf_ftype f, const ar_gguf_model_info *m, int i, ar_ggml_type t)
{
    if (f == AR_FTYPE_Q2_K) t = m->n_gqa >= 4 ? AR_GGML_Q4_K : AR_GGML_Q3_K;
    else if (f == AR_FTYPE_Q2_K_S && m->n_gqa >= 4) t = AR_GGML_Q4_K;
    else if (f == AR_FTYPE_Q3_K_M) t = i < 2 ? AR_GGML_Q5_K : AR_GGML_Q4_K;
    else if (f == AR_FTYPE_Q3_K_L) t = AR_GGML_Q5_K;
    else if ((f == AR_FTYPE_Q4_K_M || f == AR_FTYPE_Q5_K_M) && use_more_bits(i, m->n_layers)) t = AR_GGML_Q6_K;
    else if (f == AR_FTYPE_Q4_K_S && i < 4) t = AR_GGML_Q5_K;
    if (m->n_expert == 8) t = AR_GGML_Q8_0;
    return t;
}

static ar_ggml_type ffn_down_type(ar_gguf_ftype f, const ar_gguf_model_info *m, int i, ar_ggml_type t)
{
    const int n = m->n_layers;
    switch (f) {
    case AR_FTYPE_Q2_K: return AR_GGML_Q3_K;
    case AR_FTYPE_Q2_K_S: return i < n / 8 ? AR_GGML_Q4_K : t;
    case AR_FTYPE_Q3_K_M:
        return i < n / 16 ? AR_GGML_Q5_K : !m->falcon || use_more_bits(i, n) ? AR_GGML_Q4_K : AR_GGML_Q3_K;
    case AR_FTYPE_Q3_K_L: return m->falcon ? AR_GGML_Q4_K : AR_GGML_Q5_K;
    case AR_FTYPE_Q4_K_M:
        if (m->falcon) return i < n / 16 ? AR_GGML_Q6_K : use_more_bits(i, n) ? AR_GGML_Q5_K : AR_GGML_Q4_K;
        return use_more_bits(i, n) ? AR_GGML_Q6_K : t;
    case AR_FTYPE_Q5_K_M: return use_more_bits(i, n) ? AR_GGML_Q6_K : t;
    case AR_FTYPE_Q4_K_S: return !m->falcon && i < n / 8 ? AR_GGML_Q5_K : t;
    case AR_FTYPE_Q4_0: return m->has_imatrix && i < n / 8 ? AR_GGML_Q4_1 : t;
    case AR_FTYPE_Q5_0: return m->has_imatrix && i < n / 8 ? AR_GGML_Q5_1 : t;
    default: return t;
    }
}

static ar_ggml_type attn_output_type(ar_gguf_ftype f, const ar_gguf_model_info *m, ar_ggml_type t)
{
    if (m->falcon) return f == AR_FTYPE_Q3_K_L ? AR_GGML_Q4_K : t;
    if (m->n_expert == 8) {
        int bump = f == AR_FTYPE_Q2_K || f == AR_FTYPE_Q3_K_S || f == AR_FTYPE_Q3_K_M || f == AR_FTYPE_Q4_K_S ||
                   f == AR_FTYPE_Q4_K_M;
        return bump ? AR_GGML_Q5_K : t;
    }
    if (f == AR_FTYPE_Q2_K) return AR_GGML_Q3_K;
    if (f == AR_FTYPE_Q3_K_M) return AR_GGML_Q4_K;
    if (f == AR_FTYPE_Q3_K_L) return AR_GGML_Q5_K;
    return t;
}

/* Row length not divisible by the chosen type's block: the nearest legacy type,
 * then F16. */
static ar_ggml_type shape_fallback(ar_ggml_type t, int64_t ne0)
{
    if (ne0 % ar_ggml_block_elems(t) == 0) return t;
    switch (t) {
    case AR_GGML_Q2_K: case AR_GGML_Q3_K: case AR_GGML_Q4_K: t = AR_GGML_Q5_0; break;
    case AR_GGML_Q5_K: t = AR_GGML_Q5_1; break;
    case AR_GGML_Q6_K: t = AR_GGML_Q8_0; break;
    default: break;
    }
    return ne0 % ar_ggml_block_elems(t) ? AR_GGML_F16 : t;
}

static int is_quantizable(const char *name, int n_dims)
{
    /* the shared expert's gate is 1-D [hidden] in llama.cpp's files, so never quantized */
    return n_dims >= 2 && ends_with(name, "weight") && !strstr(name, "_norm.weight") &&
           !strstr(name, "ffn_gate_inp.weight") && !strstr(name, "ffn_gate_inp_shexp.weight");
}

ar_ggml_type ar_gguf_tensor_type(ar_gguf_ftype f, const ar_gguf_model_info *m, const char *name, int n_dims,
                                 int64_t ne0)
{
    ar_ggml_type t = ar_gguf_ftype_base(f);
    if (!is_quantizable(name, n_dims)) return AR_GGML_F32;
    if (!ar_ggml_is_quantized(t)) return t;
    int i = layer_of(name);
    if (!strcmp(name, "output.weight") || (!m->has_output && !strcmp(name, "token_embd.weight")))
        t = m->falcon ? AR_GGML_Q8_0 : output_type(t, ne0);
    else if (!strcmp(name, "token_embd.weight"))
        ;
    else if (strstr(name, "attn_v.weight"))
        t = attn_v_type(f, m, i, t);
    else if (strstr(name, "attn_k.weight") && m->n_expert == 8)
        t = AR_GGML_Q8_0;
    else if (strstr(name, "ffn_down"))
        t = ffn_down_type(f, m, i, t);
    else if (strstr(name, "attn_output.weight"))
        t = attn_output_type(f, m, t);
    else if (strstr(name, "attn_qkv.weight")) {
        if (f == AR_FTYPE_Q3_K_M || f == AR_FTYPE_Q3_K_L) t = AR_GGML_Q4_K;
        else if (f == AR_FTYPE_Q4_K_M) t = AR_GGML_Q5_K;
        else if (f == AR_FTYPE_Q5_K_M) t = AR_GGML_Q6_K;
    }
    return shape_fallback(t, ne0);
}

/* ---- tensor names ---------------------------------------------------------- */

/* Per-layer tensors: HF sub-module name and llama.cpp's. */
static const struct { const char *hf, *gguf; } layer_names[] = {
    {"input_layernorm", "attn_norm"},       {"post_attention_layernorm", "ffn_norm"},
    {"self_attn.q_proj", "attn_q"},         {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},         {"self_attn.o_proj", "attn_output"},
    {"self_attn.q_norm", "attn_q_norm"},    {"self_attn.k_norm", "attn_k_norm"},
    {"mlp.gate_proj", "ffn_gate"},          {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},
    /* Gemma's sandwich norms (its post_attention_layernorm is the converter's
     * post_attention_norm: gguf_convert.c renames it by architecture) */
    {"pre_feedforward_layernorm", "ffn_norm"}, {"post_feedforward_layernorm", "post_ffw_norm"},
    /* Phi-3's fused projections (gate rows first, as llama.cpp's fused SwiGLU
     * splits ffn_up) and GLM-4's norms after each branch */
    {"self_attn.qkv_proj", "attn_qkv"},      {"mlp.gate_up_proj", "ffn_up"},
    {"post_self_attn_layernorm", "post_attention_norm"}, {"post_mlp_layernorm", "post_ffw_norm"},
    /* mixtures of experts (gguf_moe.h; the routed experts' stacked names come
     * from ar_gguf_expert_name above): the router under both Mixtral spellings, and
     * Qwen2-MoE's shared expert and its gate */
    {"mlp.gate", "ffn_gate_inp"},            {"block_sparse_moe.gate", "ffn_gate_inp"},
    {"mlp.shared_expert.gate_proj", "ffn_gate_shexp"}, {"mlp.shared_expert.up_proj", "ffn_up_shexp"},
    {"mlp.shared_expert.down_proj", "ffn_down_shexp"}, {"mlp.shared_expert_gate", "ffn_gate_inp_shexp"},
    /* DeepSeek-V2/V3 (llama.cpp deepseek2; gguf_ds_oss.h): MLA's projections and norms (kv_b_proj is
     * written split, attn_k_b / attn_v_b), the shared experts; gpt-oss's router */
    {"self_attn.q_a_proj", "attn_q_a"},      {"self_attn.q_a_layernorm", "attn_q_a_norm"},
    {"self_attn.q_b_proj", "attn_q_b"},      {"self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"},
    {"self_attn.kv_a_layernorm", "attn_kv_a_norm"}, {"self_attn.kv_b_proj", "attn_kv_b"},
    {"mlp.shared_experts.gate_proj", "ffn_gate_shexp"}, {"mlp.shared_experts.up_proj", "ffn_up_shexp"},
    {"mlp.shared_experts.down_proj", "ffn_down_shexp"}, {"mlp.router", "ffn_gate_inp"},
};
enum { N_LAYER_NAMES = sizeof layer_names / sizeof layer_names[0] };

/* Per-layer tensors whose HF name has no .weight / .bias suffix: DeepSeek-V3's
 * router bias (llama.cpp's exp_probs_b) and gpt-oss's attention sinks. */
static const struct { const char *hf, *gguf; } layer_params[] = {
    {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"}, {"self_attn.sinks", "attn_sinks.weight"},
};

/* Whole-model tensors. */
static const struct { const char *hf, *gguf; } model_names[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};
enum { N_MODEL_NAMES = sizeof model_names / sizeof model_names[0] };

/* ".weight" or ".bias" */
static int is_param_suffix(const char *s) { return !strcmp(s, ".weight") || !strcmp(s, ".bias"); }

/* "gate" / "up" / "down" for an HF projection word (also Mixtral's w1 / w3 / w2), else NULL. */
static const char *proj_of(const char *w)
{
    static const char *const map[][2] = {{"gate_proj", "gate"}, {"up_proj", "up"}, {"down_proj", "down"},
                                         {"w1", "gate"},        {"w3", "up"},      {"w2", "down"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(w, map[i][0])) return map[i][1];
    return NULL;
}

int ar_gguf_expert_name(const char *hf, char *gname, size_t cap, int *expert)
{
    int layer, e, used = 0;
    char word[16];
    if ((sscanf(hf, "model.layers.%d.mlp.experts.%d.%15[a-z0-9_].weight%n", &layer, &e, word, &used) != 3 &&
         sscanf(hf, "model.layers.%d.block_sparse_moe.experts.%d.%15[a-z0-9_].weight%n", &layer, &e, word, &used) != 3) ||
        !used || hf[used] || layer < 0 || e < 0)
        return 0;
    const char *p = proj_of(word);
    if (!p) return 0;
    *expert = e;
    return snprintf(gname, cap, "blk.%d.ffn_%s_exps.weight", layer, p) > 0;
}

int ar_gguf_map_name(const char *hf, char *out, size_t out_size)
{
    int layer, used = 0, expert;
    for (int i = 0; i < N_MODEL_NAMES; i++)
        if (!strcmp(hf, model_names[i].hf)) return snprintf(out, out_size, "%s", model_names[i].gguf) > 0;
    if (ar_gguf_expert_name(hf, out, out_size, &expert)) return 1;   /* many experts, one stacked tensor */
    if (sscanf(hf, "model.layers.%d.%n", &layer, &used) == 1 && used > 0) {
        const char *rest = hf + used;
        if (strstr(rest, "rotary_emb.inv_freq")) return 0;
        for (size_t i = 0; i < sizeof layer_params / sizeof layer_params[0]; i++)
            if (!strcmp(rest, layer_params[i].hf)) return snprintf(out, out_size, "blk.%d.%s", layer, layer_params[i].gguf) > 0;
        for (int i = 0; i < N_LAYER_NAMES; i++) {
            size_t n = strlen(layer_names[i].hf);
            if (!strncmp(rest, layer_names[i].hf, n) && is_param_suffix(rest + n))
                return snprintf(out, out_size, "blk.%d.%s%s", layer, layer_names[i].gguf, rest + n) > 0;
        }
    }
    return ar_error("no llama.cpp name for tensor %s", hf);
}

double ar_gguf_gemma_attn_scale(const ar_config *c)
{
    int big = (c->arch == AR_ARCH_GEMMA2 && c->n_layers == 46) || (c->arch == AR_ARCH_GEMMA3 && c->n_layers == 62);
    return 1.0 / sqrt(big ? (double)c->hidden / c->n_heads : (double)c->head_dim);
}

int ar_gguf_map_name_for(const ar_config *c, const char *hf, char *out, size_t out_size)
{
    int m = ar_gguf_map_name(hf, out, out_size), layer;
    /* Gemma's sandwich norm, and gpt-oss's (llama.cpp's openai-moe loads attn_post_norm before the MLP) */
    if (m == 1 && (c->sandwich_norm || c->arch == AR_ARCH_GPT_OSS) && strstr(hf, ".post_attention_layernorm.") &&
        sscanf(out, "blk.%d.", &layer) == 1)
        snprintf(out, out_size, "blk.%d.post_attention_norm.weight", layer);
    return m;
}

int ar_gguf_unmap_name(const char *gguf, char *out, size_t out_size)
{
    int layer, used = 0;
    for (int i = 0; i < N_MODEL_NAMES; i++)
        if (!strcmp(gguf, model_names[i].gguf)) return snprintf(out, out_size, "%s", model_names[i].hf) > 0;
    if (sscanf(gguf, "blk.%d.%n", &layer, &used) == 1 && used > 0) {
        const char *rest = gguf + used;
        for (int i = 0; i < N_LAYER_NAMES; i++) {
            size_t n = strlen(layer_names[i].gguf);
            if (!strncmp(rest, layer_names[i].gguf, n) && is_param_suffix(rest + n))
                return snprintf(out, out_size, "model.layers.%d.%s%s", layer, layer_names[i].hf, rest + n) > 0;
        }
    }
    return 0;
}

/* ---- the policy for an HF model --------------------------------------------- */

ar_gguf_model_info ar_gguf_info_for(const ar_config *c, int has_output, int has_imatrix)
{
    ar_gguf_model_info m = {0};
    m.n_layers = c->n_layers;
    m.n_expert = c->moe.n_experts;   /* llama.cpp's 8-expert rules (attn_v / attn_k Q8_0, attn_output Q5_K) */
    m.n_gqa = c->n_heads / (c->n_kv_heads > 0 ? c->n_kv_heads : 1);
    m.has_output = has_output;
    m.has_imatrix = has_imatrix;
    return m;
}

ar_ggml_type ar_gguf_hf_tensor_type(ar_gguf_ftype f, const ar_config *c, const char *hf_name, int64_t cols,
                                    int has_imatrix)
{
    char gname[256];
    int layer;
    ar_gguf_model_info info = ar_gguf_info_for(c, !c->tie_embeddings, has_imatrix);
    if (ar_gguf_map_name(hf_name, gname, sizeof gname) <= 0) return AR_GGML_F32;
    /* MLA's kv_b_proj is written split (gguf_ds_oss.h): its rows of kv_lora_rank columns are tuned in
     * attn_v_b's type, whose rows they are; the attn_k_b half is transposed and quantized again at packing */
    if (strstr(gname, ".attn_kv_b.weight") && sscanf(gname, "blk.%d.", &layer) == 1) {
        snprintf(gname, sizeof gname, "blk.%d.attn_v_b.weight", layer);
        return ar_gguf_tensor_type(f, &info, gname, 3, cols);
    }
    return ar_gguf_tensor_type(f, &info, gname, 2, cols);
}
