/* gguf_ds_oss.c — DeepSeek-V2/V3 and gpt-oss in llama.cpp's GGUF (see
 * gguf_ds_oss.h). */
#include "gguf_ds_oss.h"
#include "error.h"
#include "rope_scaling.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

/* llama.cpp's fixed gpt-oss SwiGLU clamp (src/llama-graph.cpp, LLM_FFN_SWIGLU_OAI_MOE) */
#define OAI_ALPHA 1.702
#define OAI_LIMIT 7.0
/* llama_expert_gating_func_type (gguf-py ExpertGatingFuncType) */
enum { GATING_SOFTMAX = 1, GATING_SIGMOID = 2 };

static int is_deepseek(const ar_config *c) { return c->arch == AR_ARCH_DEEPSEEK_V2 || c->arch == AR_ARCH_DEEPSEEK_V3; }

int ar_gguf_ds_oss_arch(const ar_config *c) { return is_deepseek(c) || c->arch == AR_ARCH_GPT_OSS; }

/* ---- what llama.cpp can hold -------------------------------------------------------- */

/* YaRN in llama.cpp's deepseek2 (src/llama-context.cpp, src/models/deepseek2.cpp):
 * cos/sin unscaled and kq_scale = get_mscale(factor, log_mul)^2 / sqrt(head), which
 * is transformers' yarn when mscale == mscale_all_dim (attention_factor = 1) */
static int check_deepseek_rope(const ar_config *c, const char *dir)
{
    if (c->rope_type == AR_ROPE_DEFAULT) return 0;
    if (c->rope_type != AR_ROPE_YARN)
        return ar_error("%s: GGUF export of %s with this rope_scaling type is not supported (default, yarn)", dir, c->arch_name);
    if (!(c->rope_mscale_all_dim > 0) || c->rope_mscale != c->rope_mscale_all_dim ||
        (c->rope_attention_factor > 0 && c->rope_attention_factor != 1))
        return ar_error("%s: yarn mscale %g, mscale_all_dim %g: llama.cpp's deepseek2 computes mscale == mscale_all_dim "
                        "(> 0) only: no GGUF form", dir, c->rope_mscale, c->rope_mscale_all_dim);
    if (!c->rope_truncate) return ar_error("%s: yarn truncate false: llama.cpp's deepseek2 truncates: no GGUF form", dir);
    return 0;
}

static int check_deepseek(const ar_config *c, const char *dir)
{
    const ar_moe_config *m = &c->moe;
    if (!c->mla.rope_interleave)
        return ar_error("%s: rope_interleave false: llama.cpp's deepseek2 rotates interleaved pairs: no GGUF form", dir);
    if (m->topk_method == AR_TOPK_GROUP_LIMITED && m->topk_group < m->n_group)
        return ar_error("%s: group_limited_greedy keeps the %d of %d groups with the best expert; llama.cpp ranks groups by "
                        "their two best: no GGUF form", dir, m->topk_group, m->n_group);
    if (m->n_shared_experts < 1) return ar_error("%s: llama.cpp's deepseek2 needs shared experts (n_shared_experts 0)", dir);
    if (m->scoring != AR_ROUTER_SOFTMAX && m->scoring != AR_ROUTER_SIGMOID)
        return ar_error("%s: router scoring other than softmax / sigmoid: no GGUF form", dir);
    for (int l = 0; l < c->n_layers; l++)
        if (ar_config_layer_moe(c, l) != (l >= m->first_k_dense_replace))
            return ar_error("%s: layer %d is %s, but llama.cpp's deepseek2 has dense layers below first_k_dense_replace "
                            "(%d) and experts above: no GGUF form", dir, l, ar_config_layer_moe(c, l) ? "MoE" : "dense",
                            m->first_k_dense_replace);
    return check_deepseek_rope(c, dir);
}

/* gpt-oss's YaRN: llama.cpp scales cos/sin by get_mscale(factor, 1) (transformers'
 * default attention_factor) and keeps 1/sqrt(head) */
static int check_gpt_oss(const ar_config *c, const char *dir)
{
    const ar_moe_config *m = &c->moe;
    if (m->swiglu_alpha != OAI_ALPHA || m->swiglu_limit != OAI_LIMIT)
        return ar_error("%s: swiglu_alpha %g / swiglu_limit %g: llama.cpp's gpt-oss computes %g / %g only: no GGUF form", dir,
                        m->swiglu_alpha, m->swiglu_limit, OAI_ALPHA, OAI_LIMIT);
    if (!c->attn_sinks || !c->qkv_bias || !c->o_bias || !m->router_bias || !m->expert_bias)
        return ar_error("%s: llama.cpp's gpt-oss needs the attention sinks and every bias (attention, router, experts)", dir);
    if (m->n_moe_layers != c->n_layers) return ar_error("%s: llama.cpp's gpt-oss has experts on every layer", dir);
    if (c->rope_type == AR_ROPE_DEFAULT) return 0;
    if (c->rope_type != AR_ROPE_YARN)
        return ar_error("%s: GGUF export of %s with this rope_scaling type is not supported (default, yarn)", dir, c->arch_name);
    if (c->rope_mscale != 0 || c->rope_mscale_all_dim != 0 ||
        (c->rope_attention_factor > 0 && c->rope_attention_factor != ar_rope_yarn_get_mscale(c->rope_factor, 1)))
        return ar_error("%s: yarn mscale / attention_factor given: llama.cpp's gpt-oss uses the default factor: no GGUF form", dir);
    return 0;
}

int ar_gguf_ds_oss_check(const ar_config *c, const char *dir)
{
    return is_deepseek(c) ? check_deepseek(c, dir) : check_gpt_oss(c, dir);
}

/* ---- metadata ------------------------------------------------------------------------ */

/* conversion/base.py's YaRN keys */
static int set_yarn(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    if (c->rope_type != AR_ROPE_YARN) return 0;
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    return ar_gguf_set_str(w, k, "yarn") | ar_gguf_set_arch_f32(w, arch, "rope.scaling.factor", (float)c->rope_factor) |
           ar_gguf_set_arch_u32(w, arch, "rope.scaling.original_context_length", (uint32_t)c->rope_orig_max_pos) |
           ar_gguf_set_arch_f32(w, arch, "rope.scaling.yarn_beta_fast", (float)c->rope_beta_fast) |
           ar_gguf_set_arch_f32(w, arch, "rope.scaling.yarn_beta_slow", (float)c->rope_beta_slow);
}

static int set_deepseek(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    const ar_moe_config *m = &c->moe;
    const ar_mla_config *a = &c->mla;
    /* q_lora_rank 0 (V2-Lite's null): the converter omits the key, but llama.cpp requires it
     * unless the file has 26 or 27 layers (its "lite" rule), and 0 selects attn_q */
    int rc = ar_gguf_set_arch_u32(w, arch, "leading_dense_block_count", (uint32_t)m->first_k_dense_replace) |
             ar_gguf_set_arch_u32(w, arch, "vocab_size", (uint32_t)c->vocab) |
             ar_gguf_set_arch_u32(w, arch, "attention.q_lora_rank", (uint32_t)a->q_lora_rank) |
             ar_gguf_set_arch_u32(w, arch, "attention.kv_lora_rank", (uint32_t)a->kv_lora_rank) |
             ar_gguf_set_arch_u32(w, arch, "attention.head_count_kv", 1) |
             ar_gguf_set_arch_u32(w, arch, "attention.key_length", (uint32_t)(a->kv_lora_rank + a->qk_rope_head_dim)) |
             ar_gguf_set_arch_u32(w, arch, "attention.value_length", (uint32_t)a->kv_lora_rank) |
             ar_gguf_set_arch_u32(w, arch, "attention.key_length_mla", (uint32_t)(a->qk_nope_head_dim + a->qk_rope_head_dim)) |
             ar_gguf_set_arch_u32(w, arch, "attention.value_length_mla", (uint32_t)a->v_head_dim) |
             ar_gguf_set_arch_u32(w, arch, "expert_shared_count", (uint32_t)m->n_shared_experts) |
             ar_gguf_set_arch_f32(w, arch, "expert_weights_scale", (float)m->routed_scaling_factor) |
             ar_gguf_set_arch_u32(w, arch, "rope.dimension_count", (uint32_t)a->qk_rope_head_dim);
    if (m->norm_topk_prob) rc |= ar_gguf_set_arch_bool(w, arch, "expert_weights_norm", 1);
    /* written always: a V3 config without scoring_func is sigmoid in transformers, while
     * llama.cpp falls back to softmax when the key is absent */
    rc |= ar_gguf_set_arch_u32(w, arch, "expert_gating_func", m->scoring == AR_ROUTER_SIGMOID ? GATING_SIGMOID : GATING_SOFTMAX);
    /* only where groups are dropped: llama.cpp asserts expert_group_used_count < expert_group_count
     * (src/llama-model.cpp load_hparams), and keeping every group selects as plain top-k */
    if (m->n_group > 1 && m->topk_group < m->n_group)
        rc |= ar_gguf_set_arch_u32(w, arch, "expert_group_count", (uint32_t)m->n_group) |
              ar_gguf_set_arch_u32(w, arch, "expert_group_used_count", (uint32_t)m->topk_group);
    rc |= set_yarn(w, c, arch);
    /* [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: the file holds 0.1 x mscale_all_dim */
    if (c->rope_type == AR_ROPE_YARN) rc |= ar_gguf_set_arch_f32(w, arch, "rope.scaling.yarn_log_multiplier", (float)(0.1 * c->rope_mscale_all_dim));
    return rc ? -1 : 0;
}

/* llama.cpp's default gpt-oss pattern (load_swa_pattern(ml, 2)): even layers slide */
static int default_swa_pattern(const ar_config *c)
{
    for (int l = 0; l < c->n_layers; l++)
        if (ar_config_layer_sliding(c, l) != (l % 2 == 0)) return 0;
    return 1;
}

static int set_gpt_oss(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    int rc = set_yarn(w, c, arch);
    if (!default_swa_pattern(c)) {
        char k[128];
        int8_t swa[AR_CONFIG_MAX_LAYERS];
        for (int l = 0; l < c->n_layers; l++) swa[l] = (int8_t)ar_config_layer_sliding(c, l);
        snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", arch);
        rc |= ar_gguf_set_arr(w, k, AR_GGUF_BOOL, swa, (uint64_t)c->n_layers);
    }
    return rc ? -1 : 0;
}

int ar_gguf_ds_oss_set_metadata(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    return is_deepseek(c) ? set_deepseek(w, c, arch) : set_gpt_oss(w, c, arch);
}

/* ---- reading a file back -------------------------------------------------------------- */

static void set_names(ar_config *c, ar_arch a, const char *cls, const char *type)
{
    c->arch = a;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", cls);
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
}

/* The YaRN keys as llama.cpp reads them (truncating correction dims: ggml_rope_yarn_corr_dims). */
static int read_rope(const ar_gguf *g, const char *arch, const char *path, ar_config *c)
{
    const ar_gguf_kv *st = ar_gguf_find_arch_kv(g, arch, "rope.scaling.type");
    c->rope_theta = ar_gguf_arch_float(g, arch, "rope.freq_base", 10000.0);
    c->rope_type = AR_ROPE_DEFAULT;
    if (!st || (st->type == AR_GGUF_STRING && !strcmp(st->str, "none"))) return 0;
    if (st->type != AR_GGUF_STRING || strcmp(st->str, "yarn"))
        return ar_error("%s: %s with RoPE scaling '%s' is not supported (yarn)", path, arch, st->type == AR_GGUF_STRING ? st->str : "?");
    c->rope_type = AR_ROPE_YARN;
    c->rope_factor = ar_gguf_arch_float(g, arch, "rope.scaling.factor", 1.0);
    c->rope_orig_max_pos = (int)ar_gguf_arch_int(g, arch, "rope.scaling.original_context_length", c->max_pos);
    c->rope_beta_fast = ar_gguf_arch_float(g, arch, "rope.scaling.yarn_beta_fast", 32.0);
    c->rope_beta_slow = ar_gguf_arch_float(g, arch, "rope.scaling.yarn_beta_slow", 1.0);
    c->rope_truncate = 1;
    if (!(c->rope_factor >= 1) || c->rope_orig_max_pos <= 0)
        return ar_error("%s: %s.rope.scaling factor %g / original_context_length %d are not a YaRN scaling", path, arch,
                        c->rope_factor, c->rope_orig_max_pos);
    /* deepseek2: mscale = mscale_all_dim = log_mul / 0.1; absent: llama.cpp's default factors, which only
     * gpt-oss's equal transformers' (check_deepseek_rope) */
    double log_mul = ar_gguf_arch_float(g, arch, "rope.scaling.yarn_log_multiplier", 0);
    if (!strcmp(arch, "deepseek2") && !(log_mul > 0))
        return ar_error("%s: deepseek2 YaRN without rope.scaling.yarn_log_multiplier is not supported", path);
    c->rope_mscale = c->rope_mscale_all_dim = log_mul / 0.1;
    return 0;
}

static int read_moe_common(const ar_gguf *g, const char *arch, const char *path, ar_config *c)
{
    ar_moe_config *m = &c->moe;
    int64_t E = ar_gguf_arch_int(g, arch, "expert_count", 0), k = ar_gguf_arch_int(g, arch, "expert_used_count", 0);
    if (E <= 0 || k <= 0 || k > E)
        return ar_error("%s: %s.expert_count %lld / expert_used_count %lld do not describe a mixture of experts", path, arch,
                        (long long)E, (long long)k);
    if (c->n_layers > AR_CONFIG_MAX_LAYERS) return ar_error("%s: %d layers exceed %d", path, c->n_layers, AR_CONFIG_MAX_LAYERS);
    m->n_experts = (int)E;
    m->top_k = (int)k;
    m->expert_intermediate = (int)ar_gguf_arch_int(g, arch, "expert_feed_forward_length", 0);
    if (m->expert_intermediate <= 0) return ar_error("%s: %s.expert_feed_forward_length must be positive", path, arch);
    m->n_group = m->topk_group = 1;
    m->routed_scaling_factor = 1.0;
    m->decoder_sparse_step = 1;
    m->topk_method = AR_TOPK_GREEDY;
    return read_rope(g, arch, path, c);
}

static int read_deepseek(const ar_gguf *g, const char *path, ar_config *c)
{
    const char *arch = "deepseek2";
    ar_moe_config *m = &c->moe;
    ar_mla_config *a = &c->mla;
    if (read_moe_common(g, arch, path, c)) return -1;
    int64_t gating = ar_gguf_arch_int(g, arch, "expert_gating_func", GATING_SOFTMAX);
    if (gating != GATING_SOFTMAX && gating != GATING_SIGMOID)
        return ar_error("%s: deepseek2.expert_gating_func %lld is not supported (1 softmax, 2 sigmoid)", path, (long long)gating);
    int v3 = gating == GATING_SIGMOID;
    set_names(c, v3 ? AR_ARCH_DEEPSEEK_V3 : AR_ARCH_DEEPSEEK_V2, v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM",
              v3 ? "deepseek_v3" : "deepseek_v2");
    m->scoring = v3 ? AR_ROUTER_SIGMOID : AR_ROUTER_SOFTMAX;
    m->score_correction_bias = ar_gguf_find_tensor(g, "blk.0.exp_probs_b.bias") != NULL;
    for (int l = 0; l < c->n_layers && !m->score_correction_bias; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.exp_probs_b.bias", l);
        m->score_correction_bias = ar_gguf_find_tensor(g, name) != NULL;
    }
    m->norm_topk_prob = ar_gguf_arch_int(g, arch, "expert_weights_norm", 0) != 0;
    double scale = ar_gguf_arch_float(g, arch, "expert_weights_scale", 0);
    m->routed_scaling_factor = scale != 0 ? scale : 1.0;
    m->n_group = (int)ar_gguf_arch_int(g, arch, "expert_group_count", 1);
    m->topk_group = (int)ar_gguf_arch_int(g, arch, "expert_group_used_count", m->n_group);
    if (m->n_group < 1 || m->topk_group < 1 || m->topk_group > m->n_group || m->n_experts % m->n_group)
        return ar_error("%s: deepseek2.expert_group_count %d / expert_group_used_count %d do not divide %d experts", path,
                        m->n_group, m->topk_group, m->n_experts);
    /* llama.cpp ranks groups by the sum of their two best (biased) scores: noaux_tc's selection */
    m->topk_method = m->n_group > 1 ? AR_TOPK_NOAUX_TC : AR_TOPK_GREEDY;
    m->n_shared_experts = (int)ar_gguf_arch_int(g, arch, "expert_shared_count", 0);
    m->shared_intermediate = m->n_shared_experts * m->expert_intermediate;
    m->first_k_dense_replace = (int)ar_gguf_arch_int(g, arch, "leading_dense_block_count", 0);
    a->q_lora_rank = (int)ar_gguf_arch_int(g, arch, "attention.q_lora_rank", 0);
    a->kv_lora_rank = (int)ar_gguf_arch_int(g, arch, "attention.kv_lora_rank", 0);
    a->qk_rope_head_dim = (int)ar_gguf_arch_int(g, arch, "rope.dimension_count", 0);
    int dk = (int)ar_gguf_arch_int(g, arch, "attention.key_length_mla", 0);
    a->v_head_dim = (int)ar_gguf_arch_int(g, arch, "attention.value_length_mla", 0);
    a->qk_nope_head_dim = dk - a->qk_rope_head_dim;
    a->rope_interleave = 1;
    if (a->kv_lora_rank <= 0 || a->qk_rope_head_dim <= 0 || a->qk_nope_head_dim <= 0 || a->v_head_dim <= 0 ||
        a->q_lora_rank < 0 || m->n_shared_experts <= 0 || m->first_k_dense_replace < 0)
        return ar_error("%s: deepseek2 needs kv_lora_rank, rope.dimension_count, key_length_mla > it, value_length_mla "
                        "and expert_shared_count (the split attn_k_b / attn_v_b form)", path);
    c->head_dim = dk;
    c->n_kv_heads = c->n_heads;   /* the file's 1 is MLA's latent "head" */
    m->n_moe_layers = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (l >= m->first_k_dense_replace) c->layer_flags[l] |= AR_LAYER_MOE, m->n_moe_layers++;
    return 0;
}

static int read_gpt_oss(const ar_gguf *g, const char *path, ar_config *c)
{
    const char *arch = "gpt-oss";
    ar_moe_config *m = &c->moe;
    if (read_moe_common(g, arch, path, c)) return -1;
    set_names(c, AR_ARCH_GPT_OSS, "GptOssForCausalLM", "gpt_oss");
    m->scoring = AR_ROUTER_TOPK_SOFTMAX;
    m->norm_topk_prob = m->router_bias = m->expert_bias = 1;
    m->swiglu_alpha = OAI_ALPHA;
    m->swiglu_limit = OAI_LIMIT;
    c->attn_sinks = 1;
    c->sliding_window = (int)ar_gguf_arch_int(g, arch, "attention.sliding_window", 0);
    if (c->sliding_window <= 0) return ar_error("%s: gpt-oss.attention.sliding_window must be positive", path);
    const ar_gguf_kv *p = ar_gguf_find_arch_kv(g, arch, "attention.sliding_window_pattern");
    if (p && p->type == AR_GGUF_ARRAY && p->n != (uint64_t)c->n_layers)
        return ar_error("%s: gpt-oss.attention.sliding_window_pattern lists %llu layers, the model has %d", path,
                        (unsigned long long)p->n, c->n_layers);
    int64_t every = p && p->type != AR_GGUF_ARRAY ? ar_gguf_kv_int(p) : 2;
    if (every <= 0) return ar_error("%s: gpt-oss.attention.sliding_window_pattern must be positive", path);
    c->layer_types = 1;
    m->n_moe_layers = c->n_layers;
    for (int l = 0; l < c->n_layers; l++) {
        /* llama_hparams::set_swa_pattern: layer l slides when l % n < n - 1 */
        int swa = p && p->type == AR_GGUF_ARRAY ? ar_gguf_kv_arr_int(p, (uint64_t)l) != 0 : l % every < every - 1;
        c->layer_flags[l] |= AR_LAYER_MOE | (swa ? AR_LAYER_SLIDING : 0);
    }
    return 0;
}

int ar_gguf_ds_oss_read_config(const ar_gguf *g, const char *arch, const char *path, ar_config *c)
{
    return !strcmp(arch, "deepseek2") ? read_deepseek(g, path, c) : read_gpt_oss(g, path, c);
}

/* ---- kv_b ---------------------------------------------------------------------------------- */

ar_gguf_kvb ar_gguf_kvb_of(const ar_config *c)
{
    return (ar_gguf_kvb){c->n_heads, c->mla.qk_nope_head_dim, c->mla.v_head_dim, c->mla.kv_lora_rank};
}

void ar_gguf_kvb_split(const ar_gguf_kvb *s, const float *kvb, float *kb, float *vb)
{
    const int DH = s->DN + s->DV;
    for (int h = 0; h < s->NH; h++) {
        const float *head = kvb + (size_t)h * DH * s->KL;
        for (int j = 0; j < s->DN; j++)
            for (int i = 0; i < s->KL; i++) kb[((size_t)h * s->KL + i) * s->DN + j] = head[(size_t)j * s->KL + i];
        memcpy(vb + (size_t)h * s->DV * s->KL, head + (size_t)s->DN * s->KL, sizeof(float) * (size_t)s->DV * s->KL);
    }
}

/* ---- expert biases ---------------------------------------------------------------------------- */

int ar_gguf_expert_bias_name(const char *hf, char *gname, size_t cap, int *expert)
{
    int layer, e, used = 0;
    char word[16];
    if (sscanf(hf, "model.layers.%d.mlp.experts.%d.%15[a-z_].bias%n", &layer, &e, word, &used) != 3 || !used || hf[used] ||
        layer < 0 || e < 0)
        return 0;
    const char *p = !strcmp(word, "gate_proj") ? "gate" : !strcmp(word, "up_proj") ? "up" : !strcmp(word, "down_proj") ? "down" : NULL;
    if (!p) return 0;
    *expert = e;
    return snprintf(gname, cap, "blk.%d.ffn_%s_exps.bias", layer, p) > 0;
}
