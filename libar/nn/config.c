/* config.c — Hugging Face config.json → ar_config (see config.h).
 *
 * Defaults follow transformers' config classes: num_key_value_heads defaults
 * to num_attention_heads, head_dim to hidden_size / num_attention_heads
 * (Qwen3: 128), rope_theta to 10000. */
#include "config.h"
#include "error.h"
#include "multimodal.h"
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* config.json files are a few KB; a larger one is not a config. */
#define CONFIG_MAX_BYTES (16u << 20)

/* runs: a forward exists. The MoE families are parsed (AR_CONFIG_ANY_ARCH)
 * but refused as "unsupported architecture" until their forward lands and
 * flips this switch. */
static const struct { const char *arch, *model_type; ar_arch id; int runs; } known_archs[] = {
    {"LlamaForCausalLM", "llama", AR_ARCH_LLAMA, 1},
    {"MistralForCausalLM", "mistral", AR_ARCH_MISTRAL, 1},
    {"Qwen2ForCausalLM", "qwen2", AR_ARCH_QWEN2, 1},
    {"Qwen3ForCausalLM", "qwen3", AR_ARCH_QWEN3, 1},
    {"Gemma2ForCausalLM", "gemma2", AR_ARCH_GEMMA2, 1},
    {"Gemma3ForCausalLM", "gemma3_text", AR_ARCH_GEMMA3, 1},  /* also Gemma3ForConditionalGeneration's text_config */
    {"Qwen3MoeForCausalLM", "qwen3_moe", AR_ARCH_QWEN3_MOE, 1},
    {"Qwen2MoeForCausalLM", "qwen2_moe", AR_ARCH_QWEN2_MOE, 1},
    {"MixtralForCausalLM", "mixtral", AR_ARCH_MIXTRAL, 1},
    {"DeepseekV2ForCausalLM", "deepseek_v2", AR_ARCH_DEEPSEEK_V2, 1},
    {"DeepseekV3ForCausalLM", "deepseek_v3", AR_ARCH_DEEPSEEK_V3, 1},  /* also Kimi-K2 (model_type kimi_k2) */
    {"GptOssForCausalLM", "gpt_oss", AR_ARCH_GPT_OSS, 1},
    {"Phi3ForCausalLM", "phi3", AR_ARCH_PHI3, 1},     /* Phi-3, Phi-3.5, Phi-4 */
    {"Glm4ForCausalLM", "glm4", AR_ARCH_GLM4, 1},     /* GLM-4-0414 */
};

static int is_moe_arch(ar_arch a) { return a >= AR_ARCH_QWEN3_MOE && a <= AR_ARCH_GPT_OSS; }
static int is_gemma_arch(ar_arch a) { return a == AR_ARCH_GEMMA2 || a == AR_ARCH_GEMMA3; }
static int is_mla_arch(ar_arch a) { return a == AR_ARCH_DEEPSEEK_V2 || a == AR_ARCH_DEEPSEEK_V3; }

int ar_config_arch_runs(ar_arch a)
{
    for (size_t i = 0; i < sizeof known_archs / sizeof *known_archs; i++)
        if (known_archs[i].id == a) return known_archs[i].runs;
    return 0;
}

static const cJSON *item(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

/* Integer field: absent or null gives def; present must be a whole number in [lo, hi]. */
static int get_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out, const char *path)
{
    const cJSON *j = item(o, key);
    if (!j || cJSON_IsNull(j)) { *out = def; return 0; }
    double v = cJSON_IsNumber(j) ? j->valuedouble : NAN;
    if (!(v >= lo && v <= hi) || v != floor(v))
        return ar_error("%s: %s must be an integer in [%d, %d]", path, key, lo, hi);
    *out = (int)v;
    return 0;
}

static int get_num(const cJSON *o, const char *key, double def, double *out, const char *path)
{
    const cJSON *j = item(o, key);
    if (!j || cJSON_IsNull(j)) { *out = def; return 0; }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble)) return ar_error("%s: %s must be a number", path, key);
    *out = j->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int def)
{
    const cJSON *j = item(o, key);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : def;
}

/* bos/eos ids may be an int, a list (first entry is used) or null. */
static int token_id(const cJSON *o, const char *key)
{
    const cJSON *j = item(o, key);
    if (cJSON_IsArray(j)) j = cJSON_GetArrayItem(j, 0);
    /* range first: casting an out-of-range double to int is undefined behaviour */
    return cJSON_IsNumber(j) && j->valuedouble >= 0 && j->valuedouble < 2147483647.0 ? (int)j->valuedouble : -1;
}

static void copy_str(char *dst, size_t n, const cJSON *j)
{
    dst[0] = 0;
    if (cJSON_IsString(j)) snprintf(dst, n, "%s", j->valuestring);
}

/* The known architecture c->arch_name names (else c->model_type). */
static int match_arch(ar_config *c, const char *path, int flags)
{
    for (size_t i = 0; i < sizeof known_archs / sizeof *known_archs; i++) {
        if (c->arch_name[0] ? !strcmp(c->arch_name, known_archs[i].arch) : !strcmp(c->model_type, known_archs[i].model_type)) {
            if (!known_archs[i].runs && !(flags & AR_CONFIG_ANY_ARCH)) break;
            c->arch = known_archs[i].id;
            snprintf(c->arch_name, sizeof c->arch_name, "%s", known_archs[i].arch);
            snprintf(c->model_type, sizeof c->model_type, "%s", known_archs[i].model_type);
            return 0;
        }
    }
    if (c->mm_arch[0])
        return ar_error("%s: unsupported architecture %s (the text model of %s)", path,
                        c->arch_name[0] ? c->arch_name : c->model_type, c->mm_arch);
    return ar_error("%s: unsupported architecture %s", path,
                    c->arch_name[0] ? c->arch_name : c->model_type[0] ? c->model_type : "(none given)");
}

/* Architecture from "architectures"[0], else from "model_type". */
static int parse_arch(ar_config *c, const cJSON *root, const char *path, int flags)
{
    const cJSON *archs = item(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    copy_str(c->arch_name, sizeof c->arch_name, a0);
    copy_str(c->model_type, sizeof c->model_type, item(root, "model_type"));
    return match_arch(c, path, flags);
}

/* A vision-language config (multimodal.h): *text becomes the object that
 * describes its text decoder ("text_config", or the top level of a legacy
 * Qwen2-VL config), c->mm_arch the class, c->arch the text family, *tx the
 * text config class's defaults. Text-only configs leave all three alone. */
static int parse_multimodal(ar_config *c, const cJSON *root, const char *path, int flags, const cJSON **text,
                            const ar_mm_text **tx)
{
    const cJSON *archs = item(root, "architectures"), *mt = item(root, "model_type");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    const ar_mm_class *k = ar_mm_class_find(cJSON_IsString(a0) ? a0->valuestring : NULL,
                                            cJSON_IsString(mt) ? mt->valuestring : NULL);
    if (!k) return 0;
    snprintf(c->mm_arch, sizeof c->mm_arch, "%s", k->arch);
    const cJSON *tc = item(root, "text_config");
    if (!cJSON_IsObject(tc)) {
        if (tc && !cJSON_IsNull(tc)) return ar_error("%s: text_config of %s is not an object", path, k->arch);
        if (!k->legacy_top_level || !item(root, "hidden_size"))
            return ar_error("%s: %s config has no text_config (the text decoder's sizes)", path, k->arch);
        tc = root;   /* transformers 4's Qwen2-VL layout: the text keys at the top level */
    }
    const cJSON *tmt = tc == root ? NULL : item(tc, "model_type");
    const char *ttype = cJSON_IsString(tmt) ? tmt->valuestring : k->text_type;
    *tx = ar_mm_text_find(ttype);
    *text = tc;
    c->model_type[0] = 0;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", *tx ? (*tx)->text_arch : ttype);
    return match_arch(c, path, flags);
}

/* DeepSeek MLA dims. head_dim becomes the q/k width per head (nope + rope);
 * transformers writes head_dim = qk_rope_head_dim into config.json. */
static int parse_mla(ar_config *c, const cJSON *r, const char *path)
{
    ar_mla_config *m = &c->mla;
    const int big = 1 << 20;
    if (get_int(r, "q_lora_rank", 0, 0, big, &m->q_lora_rank, path) ||
        get_int(r, "kv_lora_rank", 512, 1, big, &m->kv_lora_rank, path) ||
        get_int(r, "qk_nope_head_dim", 128, 0, big, &m->qk_nope_head_dim, path) ||
        get_int(r, "qk_rope_head_dim", 64, 2, big, &m->qk_rope_head_dim, path) ||
        get_int(r, "v_head_dim", 128, 1, big, &m->v_head_dim, path))
        return -1;
    /* q_lora_rank null: no q compression (q_proj; DeepSeek-V2-Lite); absent: the class default 1536 */
    if (!item(r, "q_lora_rank")) m->q_lora_rank = 1536;
    if (m->qk_rope_head_dim % 2) return ar_error("%s: qk_rope_head_dim %d is odd (RoPE rotates pairs)", path, m->qk_rope_head_dim);
    if (m->qk_nope_head_dim % 2) return ar_error("%s: qk_nope_head_dim %d is odd", path, m->qk_nope_head_dim);
    /* V3: rope_interleave (default true); V2 always rotates interleaved pairs */
    m->rope_interleave = c->arch == AR_ARCH_DEEPSEEK_V3 ? get_bool(r, "rope_interleave", 1) : 1;
    c->head_dim = m->qk_nope_head_dim + m->qk_rope_head_dim;
    return 0;
}

/* yarn's own keys (transformers' defaults: beta_fast 32, beta_slow 1,
 * truncate true, original_max_position_embeddings = max_position_embeddings). */
static int parse_yarn(ar_config *c, const cJSON *d, const char *path)
{
    const cJSON *t = item(d, "truncate");
    if (get_num(d, "beta_fast", 32.0, &c->rope_beta_fast, path) ||
        get_num(d, "beta_slow", 1.0, &c->rope_beta_slow, path) ||
        get_num(d, "mscale", 0.0, &c->rope_mscale, path) ||
        get_num(d, "mscale_all_dim", 0.0, &c->rope_mscale_all_dim, path) ||
        get_num(d, "attention_factor", 0.0, &c->rope_attention_factor, path) ||
        get_int(d, "original_max_position_embeddings", c->max_pos, 1, 1 << 30, &c->rope_orig_max_pos, path))
        return -1;
    c->rope_truncate = cJSON_IsBool(t) ? cJSON_IsTrue(t) : 1;
    if (!(c->rope_beta_fast > c->rope_beta_slow) || !(c->rope_beta_slow > 0))
        return ar_error("%s: yarn rope needs beta_fast > beta_slow > 0", path);
    if (c->rope_mscale < 0 || c->rope_mscale_all_dim < 0 || c->rope_attention_factor < 0)
        return ar_error("%s: yarn mscale, mscale_all_dim and attention_factor must not be negative", path);
    return 0;
}

static int parse_sizes(ar_config *c, const cJSON *r, const char *path, const ar_mm_text *tx)
{
    const int big = 1 << 24;
    if (get_int(r, "hidden_size", 0, 1, big, &c->hidden, path) ||
        get_int(r, "intermediate_size", 0, 1, big, &c->intermediate, path) ||
        get_int(r, "num_hidden_layers", 0, 1, 100000, &c->n_layers, path) ||
        get_int(r, "num_attention_heads", 0, 1, 100000, &c->n_heads, path) ||
        get_int(r, "vocab_size", 0, 1, 1 << 28, &c->vocab, path) ||
        get_int(r, "max_position_embeddings", 2048, 1, 1 << 30, &c->max_pos, path))
        return -1;
    const char *need[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"};
    for (size_t i = 0; i < sizeof need / sizeof *need; i++)   /* null counts as missing */
        if (!item(r, need[i]) || cJSON_IsNull(item(r, need[i]))) return ar_error("%s: missing %s", path, need[i]);
    if (get_int(r, "num_key_value_heads", c->n_heads, 1, c->n_heads, &c->n_kv_heads, path) ||
        get_int(r, "head_dim",
                tx && tx->head_dim ? tx->head_dim
                : c->arch == AR_ARCH_QWEN3 || c->arch == AR_ARCH_GLM4 ? 128
                : is_gemma_arch(c->arch) ? 256 : c->hidden / c->n_heads,
                1, big, &c->head_dim, path))
        return -1;
    if (is_mla_arch(c->arch) && parse_mla(c, r, path)) return -1;
    if (c->n_heads % c->n_kv_heads)
        return ar_error("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads, c->n_kv_heads);
    /* the default hidden / n_heads is 0 when there are more heads than hidden units */
    if (c->head_dim < 1)
        return ar_error("%s: head_dim is 0 (hidden_size %d / num_attention_heads %d)", path, c->hidden, c->n_heads);
    if (c->head_dim % 2) return ar_error("%s: head_dim %d is odd (RoPE rotates pairs)", path, c->head_dim);
    double eps;
    /* the config classes' defaults: Phi-3 1e-5, GLM-4 1.5625e-7 */
    double def_eps = tx ? tx->rms_eps : c->arch == AR_ARCH_PHI3 ? 1e-5 : c->arch == AR_ARCH_GLM4 ? 1.5625e-07 : 1e-6;
    if (get_num(r, "rms_norm_eps", def_eps, &eps, path)) return -1;
    c->rms_eps = (float)eps;
    return 0;
}

/* The rope dict: transformers 5 writes "rope_parameters", older files "rope_scaling". */
static const cJSON *rope_dict(const cJSON *r)
{
    const cJSON *d = item(r, "rope_parameters");
    if (cJSON_IsObject(d)) return d;
    d = item(r, "rope_scaling");
    return cJSON_IsObject(d) ? d : NULL;
}

/* A longrope factor list: rope_dim/2 positive numbers into out. */
static int factor_list(const cJSON *d, const char *key, int n, float *out, const char *path)
{
    const cJSON *l = item(d, key);
    if (!cJSON_IsArray(l)) return ar_error("%s: longrope rope needs %s, a list of numbers", path, key);
    if (cJSON_GetArraySize(l) != n)
        return ar_error("%s: longrope %s has %d entries, rotary dims / 2 = %d", path, key, cJSON_GetArraySize(l), n);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, l) {
        if (!cJSON_IsNumber(e) || !(e->valuedouble > 0) || !isfinite(e->valuedouble))
            return ar_error("%s: longrope %s entry %d is not a positive number", path, key, i);
        out[i++] = (float)e->valuedouble;
    }
    return 0;
}

/* longrope (Phi-3): short_factor up to the original context, long_factor
 * beyond it, one per rotated pair; the attention factor scales cos and sin.
 * As transformers 5 (standardize_rope_params, _compute_longrope_parameters):
 * the original context is Phi-3's top-level original_max_position_embeddings
 * (class default 4096), else the rope dict's, else max_position_embeddings;
 * factor is the dict's, else max_position_embeddings / original; the
 * attention factor the dict's, else sqrt(1 + ln(factor) / ln(original)), 1
 * when factor <= 1. */
static int parse_longrope(ar_config *c, const cJSON *d, const cJSON *root, const char *path)
{
    int n = c->rope_dim / 2;
    if (n > AR_ROPE_MAX_PAIRS) return ar_error("%s: longrope with more than %d rotated pairs", path, AR_ROPE_MAX_PAIRS);
    if (factor_list(d, "short_factor", n, c->rope_short_factor, path) ||
        factor_list(d, "long_factor", n, c->rope_long_factor, path) ||
        get_num(d, "attention_factor", 0.0, &c->rope_attention_factor, path))
        return -1;
    int dict_orig;
    if (get_int(d, "original_max_position_embeddings", c->max_pos, 1, 1 << 30, &dict_orig, path)) return -1;
    c->rope_orig_max_pos = dict_orig;
    if (c->arch == AR_ARCH_PHI3 &&
        get_int(root, "original_max_position_embeddings", 4096, 1, 1 << 30, &c->rope_orig_max_pos, path))
        return -1;
    const cJSON *f = item(d, "factor");
    if (!f || cJSON_IsNull(f)) c->rope_factor = (double)c->max_pos / c->rope_orig_max_pos;
    if (c->rope_attention_factor < 0) return ar_error("%s: longrope attention_factor must not be negative", path);
    if (c->rope_attention_factor == 0)
        c->rope_attention_factor = c->rope_factor <= 1.0 ? 1.0
            : sqrt(1.0 + log(c->rope_factor) / log((double)c->rope_orig_max_pos));
    return 0;
}

static int parse_rope_type(ar_config *c, const cJSON *d, const cJSON *root, const char *path)
{
    const cJSON *t = item(d, "rope_type");
    if (!cJSON_IsString(t)) t = item(d, "type");
    const char *name = cJSON_IsString(t) ? t->valuestring : "default";
    /* M-RoPE on text positions is plain RoPE (multimodal.h); transformers
     * renames Qwen2-VL's "mrope" to "default" the same way */
    if (!strcmp(name, "default") || (c->mm_arch[0] && !strcmp(name, "mrope"))) c->rope_type = AR_ROPE_DEFAULT;
    else if (!strcmp(name, "linear")) c->rope_type = AR_ROPE_LINEAR;
    else if (!strcmp(name, "llama3")) c->rope_type = AR_ROPE_LLAMA3;
    /* Phi-3's config class renames su and yarn to longrope */
    else if (c->arch == AR_ARCH_PHI3 && (!strcmp(name, "su") || !strcmp(name, "yarn"))) c->rope_type = AR_ROPE_LONGROPE;
    else if (!strcmp(name, "yarn")) c->rope_type = AR_ROPE_YARN;
    else if (!strcmp(name, "dynamic")) c->rope_type = AR_ROPE_DYNAMIC;
    else if (!strcmp(name, "longrope")) c->rope_type = AR_ROPE_LONGROPE;
    else return ar_error("%s: unsupported rope type %s", path, name);
    if (c->rope_type == AR_ROPE_DEFAULT) return 0;
    if (c->rope_type == AR_ROPE_LLAMA3 && c->rope_dim != c->head_dim)
        return ar_error("%s: llama3 rope with a partial rotary factor is not supported", path);
    if (get_num(d, "factor", 1.0, &c->rope_factor, path)) return -1;
    if (!(c->rope_factor > 0)) return ar_error("%s: rope factor must be positive", path);
    if (c->rope_type == AR_ROPE_LONGROPE) return parse_longrope(c, d, root, path);
    if (c->rope_type == AR_ROPE_YARN) return parse_yarn(c, d, path);
    if (c->rope_type == AR_ROPE_DYNAMIC) return 0;
    if (c->rope_type != AR_ROPE_LLAMA3) return 0;
    if (get_num(d, "low_freq_factor", 1.0, &c->rope_low_freq_factor, path) ||
        get_num(d, "high_freq_factor", 4.0, &c->rope_high_freq_factor, path) ||
        get_int(d, "original_max_position_embeddings", 8192, 1, 1 << 30, &c->rope_orig_max_pos, path))
        return -1;
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return ar_error("%s: llama3 rope needs high_freq_factor > low_freq_factor", path);
    return 0;
}

static int parse_rope(ar_config *c, const cJSON *r, const char *path, const ar_mm_text *tx)
{
    const cJSON *d = rope_dict(r);
    const double def = tx ? tx->rope_theta : 10000.0;
    /* Top-level rope_theta wins; transformers 5 moved it inside rope_parameters. */
    if (get_num(r, "rope_theta", def, &c->rope_theta, path)) return -1;
    if (!item(r, "rope_theta") && d && get_num(d, "rope_theta", def, &c->rope_theta, path)) return -1;
    if (!(c->rope_theta > 0)) return ar_error("%s: rope_theta must be positive", path);
    c->rope_type = AR_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    /* the rotated part of each head (Phi-3 may, GLM-4 does rotate a part) */
    double prf;
    if (get_num(r, "partial_rotary_factor", c->arch == AR_ARCH_GLM4 ? 0.5 : 1.0, &prf, path)) return -1;
    if (d && item(d, "partial_rotary_factor") && get_num(d, "partial_rotary_factor", prf, &prf, path)) return -1;
    if (!(prf > 0 && prf <= 1)) return ar_error("%s: partial_rotary_factor must be in (0, 1]", path);
    c->rope_dim = (int)(c->head_dim * prf);
    if (c->rope_dim < 2 || c->rope_dim % 2)
        return ar_error("%s: partial_rotary_factor %g gives %d rotary dims of head_dim %d (must be even, >= 2)", path,
                        prf, c->rope_dim, c->head_dim);
    if (c->rope_dim != c->head_dim && c->arch != AR_ARCH_PHI3 && c->arch != AR_ARCH_GLM4)
        return ar_error("%s: partial_rotary_factor is not supported for %s", path, c->arch_name);
    return d ? parse_rope_type(c, d, r, path) : 0;
}

/* Biases, q/k norm and the sliding window, which differ per architecture. */
static int parse_moe_arch_options(ar_config *c, const cJSON *r, const char *path);

static int parse_gemma(ar_config *c, const cJSON *r, const char *path);
static int parse_layer_types_pattern(ar_config *c, const cJSON *r, const char *path, int pattern);
/* Phi-3: fused qkv_proj and gate_up_proj, no biases, an optional sliding
 * window (null: none). GLM-4: q/k/v biases (attention_bias, default true),
 * fused gate_up_proj, interleaved rotary pairs, norms after both branches.
 * Both use SiLU (hidden_act other than silu is refused). */
static int parse_fused_arch_options(ar_config *c, const cJSON *r, const char *path)
{
    const cJSON *act = item(r, "hidden_act");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return ar_error("%s: hidden_act %s is not supported (only silu)", path,
                        cJSON_IsString(act) ? act->valuestring : "(not a string)");
    c->fused_gate_up = 1;
    if (c->arch == AR_ARCH_PHI3) {
        c->fused_qkv = 1;
        return get_int(r, "sliding_window", 0, 0, 1 << 30, &c->sliding_window, path);
    }
    c->qkv_bias = get_bool(r, "attention_bias", 1);
    c->rope_interleaved = c->post_norms = 1;
    return 0;
}

static int parse_arch_options(ar_config *c, const cJSON *r, const char *path)
{
    if (is_moe_arch(c->arch)) return parse_moe_arch_options(c, r, path);
    if (is_gemma_arch(c->arch)) return parse_gemma(c, r, path);
    if (c->arch == AR_ARCH_PHI3 || c->arch == AR_ARCH_GLM4) return parse_fused_arch_options(c, r, path);
    int attn_bias = get_bool(r, "attention_bias", 0);
    c->qkv_bias = c->arch == AR_ARCH_QWEN2 ? 1 : attn_bias;
    c->o_bias = (c->arch == AR_ARCH_LLAMA || c->arch == AR_ARCH_QWEN3) ? attn_bias : 0;
    c->mlp_bias = c->arch == AR_ARCH_LLAMA ? get_bool(r, "mlp_bias", 0) : 0;
    c->qk_norm = c->arch == AR_ARCH_QWEN3;
    int sw = 0;
    if (get_int(r, "sliding_window", 0, 0, 1 << 30, &sw, path)) return -1;
    /* Qwen2/Qwen3 configs carry a sliding_window that is off unless use_sliding_window. */
    if (c->arch == AR_ARCH_QWEN2 || c->arch == AR_ARCH_QWEN3) sw = get_bool(r, "use_sliding_window", 0) ? sw : 0;
    c->sliding_window = sw;
    c->sliding_from_layer = 0;
    if (sw && c->arch != AR_ARCH_MISTRAL)
        return get_int(r, "max_window_layers", 28, 0, 1 << 20, &c->sliding_from_layer, path);
    return 0;
}

/* ---- Gemma 2 / Gemma 3 ---------------------------------------------------------
 * Defaults are those of transformers' Gemma2Config / Gemma3TextConfig. */

/* A soft-capping value: absent gives def, null turns it off (0), else it must be positive. */
static int get_softcap(const cJSON *r, const char *key, double def, double *out, const char *path)
{
    const cJSON *j = item(r, key);
    if (!j) { *out = def; return 0; }
    if (cJSON_IsNull(j)) { *out = 0; return 0; }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !isfinite(j->valuedouble))
        return ar_error("%s: %s must be a positive number or null", path, key);
    *out = j->valuedouble;
    return 0;
}

/* Gemma 3's RoPE: transformers 5 writes rope_parameters as one dict per layer
 * type ("full_attention": the global base and scaling, "sliding_attention":
 * the local base); older files give rope_theta, rope_scaling (global) and
 * rope_local_base_freq. The sliding layers' RoPE has no scaling. */
static int parse_gemma3_rope(ar_config *c, const cJSON *r, const char *path)
{
    const cJSON *rp = item(r, "rope_parameters");
    const cJSON *full = cJSON_IsObject(rp) ? item(rp, "full_attention") : NULL;
    const cJSON *slide = cJSON_IsObject(rp) ? item(rp, "sliding_attention") : NULL;
    if (full || slide) {
        if (!cJSON_IsObject(full) || !cJSON_IsObject(slide))
            return ar_error("%s: rope_parameters needs both full_attention and sliding_attention objects", path);
        c->rope_type = AR_ROPE_DEFAULT;
        c->rope_factor = 1.0;
        if (get_num(full, "rope_theta", 1000000.0, &c->rope_theta, path) || parse_rope_type(c, full, r, path) ||
            get_num(slide, "rope_theta", 10000.0, &c->rope_local_theta, path))
            return -1;
        const cJSON *t = item(slide, "rope_type");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "default"))
            return ar_error("%s: sliding_attention rope_type %s is not supported (only default)", path, t->valuestring);
    } else {
        if (!item(r, "rope_theta") && !(rp && item(rp, "rope_theta"))) c->rope_theta = 1000000.0;
        if (get_num(r, "rope_local_base_freq", 10000.0, &c->rope_local_theta, path)) return -1;
    }
    if (!(c->rope_theta > 0) || !(c->rope_local_theta > 0))
        return ar_error("%s: rope_theta and rope_local_base_freq must be positive", path);
    return 0;
}

/* Attention and MLP options of Gemma 2 and Gemma 3 text models. */
static int parse_gemma(ar_config *c, const cJSON *r, const char *path)
{
    int g3 = c->arch == AR_ARCH_GEMMA3, pattern = 2;
    const cJSON *act = item(r, "hidden_activation");
    if (!act || cJSON_IsNull(act)) act = item(r, "hidden_act");
    const char *an = cJSON_IsString(act) ? act->valuestring : "gelu_pytorch_tanh";
    if (strcmp(an, "gelu_pytorch_tanh")) return ar_error("%s: unsupported hidden_activation %s (only gelu_pytorch_tanh)", path, an);
    if (get_bool(r, "use_bidirectional_attention", 0))
        return ar_error("%s: use_bidirectional_attention is not supported (causal decoders only)", path);
    c->act = AR_ACT_GELU_TANH;
    c->norm_plus_one = c->sandwich_norm = 1;
    c->embed_scale = sqrt((double)c->hidden);
    c->qkv_bias = c->o_bias = get_bool(r, "attention_bias", 0);
    c->qk_norm = g3;
    double qpas;
    if (get_num(r, "query_pre_attn_scalar", 256.0, &qpas, path)) return -1;
    if (!(qpas > 0)) return ar_error("%s: query_pre_attn_scalar must be positive", path);
    c->attn_scale = 1.0 / sqrt(qpas);
    if (get_softcap(r, "attn_logit_softcapping", g3 ? 0 : 50.0, &c->attn_softcap, path) ||
        get_softcap(r, "final_logit_softcapping", g3 ? 0 : 30.0, &c->final_softcap, path) ||
        get_int(r, "sliding_window", 4096, 0, 1 << 30, &c->sliding_window, path))
        return -1;
    if (g3) {
        const char *pk = item(r, "sliding_window_pattern") ? "sliding_window_pattern" : "_sliding_window_pattern";
        if (get_int(r, pk, 6, 1, 1 << 20, &pattern, path) || parse_gemma3_rope(c, r, path)) return -1;
    }
    return parse_layer_types_pattern(c, r, path, pattern);
}

/* ---- mixtures of experts (issue 17; docs/moe.md) ----------------------------
 * Defaults are those of the transformers config classes (5.25): a config.json
 * that leaves a key out means what transformers would use. */

/* Attention options of the MoE families (biases, QK-norm, windows, sinks). */
static int parse_moe_arch_options(ar_config *c, const cJSON *r, const char *path)
{
    int attn_bias = get_bool(r, "attention_bias", c->arch == AR_ARCH_GPT_OSS);
    switch (c->arch) {
    case AR_ARCH_QWEN2_MOE: c->qkv_bias = get_bool(r, "qkv_bias", 1); break;    /* q/k/v only */
    case AR_ARCH_QWEN3_MOE: c->qkv_bias = c->o_bias = attn_bias; c->qk_norm = 1; break;
    case AR_ARCH_GPT_OSS: c->qkv_bias = c->o_bias = attn_bias; c->attn_sinks = 1; break;
    /* MLA: attention_bias is on q_a_proj, kv_a_proj_with_mqa and o_proj (q_b/kv_b/q_proj never) */
    case AR_ARCH_DEEPSEEK_V2: case AR_ARCH_DEEPSEEK_V3: c->qkv_bias = c->o_bias = attn_bias; break;
    default: break;
    }
    if (c->arch == AR_ARCH_QWEN2_MOE || c->arch == AR_ARCH_QWEN3_MOE) {
        if (get_bool(r, "use_sliding_window", 0))
            return ar_error("%s: use_sliding_window is not supported for %s", path, c->arch_name);
    } else if (c->arch == AR_ARCH_MIXTRAL) {
        if (get_int(r, "sliding_window", 0, 0, 1 << 30, &c->sliding_window, path)) return -1;
    } else if (c->arch == AR_ARCH_GPT_OSS) {
        if (get_int(r, "sliding_window", 128, 0, 1 << 30, &c->sliding_window, path)) return -1;
    }
    return 0;
}

/* The first of several alias keys that is present and not null, or NULL. */
static const char *first_key(const cJSON *r, const char *const *keys, int n)
{
    for (int i = 0; i < n; i++)
        if (item(r, keys[i]) && !cJSON_IsNull(item(r, keys[i]))) return keys[i];
    return NULL;
}

/* Number of experts: the families spell it three ways (and transformers 5
 * writes num_local_experts for Qwen3-MoE); aliases must agree. */
static int parse_n_experts(ar_config *c, const cJSON *r, const char *path, int def)
{
    static const char *const keys[] = {"num_experts", "num_local_experts", "n_routed_experts"};
    const char *seen = NULL;
    int n = def;
    for (int i = 0; i < 3; i++) {
        if (!item(r, keys[i]) || cJSON_IsNull(item(r, keys[i]))) continue;
        int v;
        if (get_int(r, keys[i], 0, 1, 1 << 20, &v, path)) return -1;
        if (seen && v != n) return ar_error("%s: %s %d and %s %d disagree", path, seen, n, keys[i], v);
        seen = keys[i];
        n = v;
    }
    c->moe.n_experts = n;
    return 0;
}

/* scoring_func / topk_method (DeepSeek's config keys): each family computes
 * one scoring in transformers, so another known one is refused, an unknown
 * one named. */
static int parse_router_kind(ar_config *c, const cJSON *r, const char *path)
{
    ar_moe_config *m = &c->moe;
    const cJSON *sf = item(r, "scoring_func");
    if (sf && !cJSON_IsNull(sf)) {
        if (!cJSON_IsString(sf)) return ar_error("%s: scoring_func must be a string", path);
        const char *v = sf->valuestring;
        ar_router_scoring s;
        if (!strcmp(v, "softmax")) s = AR_ROUTER_SOFTMAX;
        else if (!strcmp(v, "sigmoid")) s = AR_ROUTER_SIGMOID;
        else return ar_error("%s: unknown router scoring_func %s", path, v);
        if (s != m->scoring)
            return ar_error("%s: router scoring_func %s is not what %s computes", path, v, c->arch_name);
    }
    const cJSON *tm = item(r, "topk_method");
    if (tm && !cJSON_IsNull(tm)) {
        if (!cJSON_IsString(tm)) return ar_error("%s: topk_method must be a string", path);
        const char *v = tm->valuestring;
        if (!strcmp(v, "greedy")) m->topk_method = AR_TOPK_GREEDY;
        else if (!strcmp(v, "group_limited_greedy")) m->topk_method = AR_TOPK_GROUP_LIMITED;
        else if (!strcmp(v, "noaux_tc")) m->topk_method = AR_TOPK_NOAUX_TC;
        else return ar_error("%s: unknown router topk_method %s", path, v);
        /* transformers: V2 knows greedy and group_limited_greedy, V3 always selects as noaux_tc */
        if ((c->arch == AR_ARCH_DEEPSEEK_V3) != (m->topk_method == AR_TOPK_NOAUX_TC))
            return ar_error("%s: router topk_method %s is not what %s computes", path, v, c->arch_name);
    }
    return 0;
}

/* Group-limited routing (DeepSeek): n_group divides the experts, the top-k
 * fits in the kept groups. */
static int parse_groups(ar_config *c, const cJSON *r, const char *path, int def_group, int def_topk_group)
{
    ar_moe_config *m = &c->moe;
    if (get_int(r, "n_group", def_group, 1, m->n_experts, &m->n_group, path) ||
        get_int(r, "topk_group", def_topk_group, 1, m->n_group, &m->topk_group, path))
        return -1;
    if (m->n_experts % m->n_group)
        return ar_error("%s: n_group %d does not divide the %d experts", path, m->n_group, m->n_experts);
    int per = m->n_experts / m->n_group;
    if (m->topk_method == AR_TOPK_NOAUX_TC && per < 2)
        return ar_error("%s: noaux_tc routing needs at least 2 experts per group (%d experts, n_group %d)",
                        path, m->n_experts, m->n_group);
    if (m->topk_method == AR_TOPK_GREEDY) m->n_group = m->topk_group = 1;   /* groups unused */
    if (m->top_k > m->topk_group * per)
        return ar_error("%s: num_experts_per_tok %d exceeds the %d experts of the topk_group %d kept groups",
                        path, m->top_k, m->topk_group * per, m->topk_group);
    return 0;
}

/* Which layers are sparse; layer_flags gets AR_LAYER_MOE. */
static int parse_moe_layers(ar_config *c, const cJSON *r, const char *path)
{
    ar_moe_config *m = &c->moe;
    unsigned char dense_only[AR_CONFIG_MAX_LAYERS] = {0};
    if (c->arch == AR_ARCH_QWEN2_MOE || c->arch == AR_ARCH_QWEN3_MOE) {
        if (get_int(r, "decoder_sparse_step", 1, 1, c->n_layers, &m->decoder_sparse_step, path)) return -1;
        const cJSON *list = item(r, "mlp_only_layers");
        if (list && !cJSON_IsNull(list)) {
            if (!cJSON_IsArray(list)) return ar_error("%s: mlp_only_layers must be a list of layer indices", path);
            const cJSON *e;
            cJSON_ArrayForEach(e, list) {
                double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
                if (!(v >= 0 && v < c->n_layers) || v != floor(v))
                    return ar_error("%s: mlp_only_layers entry is not a layer index in [0, %d)", path, c->n_layers);
                dense_only[(int)v] = 1;
            }
        }
    } else if (is_mla_arch(c->arch)) {
        int freq;
        if (get_int(r, "first_k_dense_replace", c->arch == AR_ARCH_DEEPSEEK_V3 ? 3 : 0, 0, c->n_layers,
                    &m->first_k_dense_replace, path) ||
            get_int(r, "moe_layer_freq", 1, 1, c->n_layers, &freq, path))
            return -1;
        /* DeepSeek's own code also asks layer % moe_layer_freq == 0; transformers has no such key */
        if (freq != 1) return ar_error("%s: moe_layer_freq %d is not supported (only 1)", path, freq);
    }
    m->n_moe_layers = 0;
    for (int l = 0; l < c->n_layers; l++) {
        int moe = 1;
        if (c->arch == AR_ARCH_QWEN2_MOE || c->arch == AR_ARCH_QWEN3_MOE)
            moe = !dense_only[l] && (l + 1) % m->decoder_sparse_step == 0;
        else if (is_mla_arch(c->arch))
            moe = l >= m->first_k_dense_replace;
        if (moe) c->layer_flags[l] |= AR_LAYER_MOE;
        m->n_moe_layers += moe;
    }
    return 0;
}

/* gpt-oss, Gemma: layer_types lists "sliding_attention" / "full_attention"
 * per layer; absent, layer l slides when (l + 1) % pattern != 0
 * (transformers' default: pattern 2 for gpt-oss and Gemma 2, Gemma 3's
 * sliding_window_pattern). */
static int parse_layer_types_pattern(ar_config *c, const cJSON *r, const char *path, int pattern)
{
    const cJSON *lt = item(r, "layer_types");
    c->layer_types = 1;
    if (c->n_layers > AR_CONFIG_MAX_LAYERS)
        return ar_error("%s: num_hidden_layers %d exceeds %d for %s", path, c->n_layers, AR_CONFIG_MAX_LAYERS, c->arch_name);
    if (!lt || cJSON_IsNull(lt)) {
        for (int l = 0; l < c->n_layers; l++)
            if ((l + 1) % pattern) c->layer_flags[l] |= AR_LAYER_SLIDING;
        return 0;
    }
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layers)
        return ar_error("%s: layer_types must list one type for each of the %d layers", path, c->n_layers);
    int l = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, lt) {
        const char *v = cJSON_IsString(e) ? e->valuestring : "(not a string)";
        if (!strcmp(v, "sliding_attention")) c->layer_flags[l] |= AR_LAYER_SLIDING;
        else if (strcmp(v, "full_attention")) return ar_error("%s: unknown layer type %s in layer_types", path, v);
        l++;
    }
    return 0;
}

static int parse_layer_types(ar_config *c, const cJSON *r, const char *path)
{
    return parse_layer_types_pattern(c, r, path, 2);
}

static int parse_moe(ar_config *c, const cJSON *r, const char *path)
{
    ar_moe_config *m = &c->moe;
    ar_arch a = c->arch;
    if (c->n_layers > AR_CONFIG_MAX_LAYERS)
        return ar_error("%s: num_hidden_layers %d exceeds %d for %s", path, c->n_layers, AR_CONFIG_MAX_LAYERS, c->arch_name);
    /* family defaults (transformers' config classes) */
    int def_e = 0, def_k = 0, def_inter = 0;
    m->scoring = AR_ROUTER_SOFTMAX;
    m->topk_method = AR_TOPK_GREEDY;
    m->routed_scaling_factor = 1.0;
    switch (a) {
    case AR_ARCH_QWEN3_MOE: def_e = 128; def_k = 8; def_inter = 768; break;
    case AR_ARCH_QWEN2_MOE: def_e = 60; def_k = 4; def_inter = 1408; break;
    case AR_ARCH_MIXTRAL: def_e = 8; def_k = 2; break;
    case AR_ARCH_DEEPSEEK_V2: def_e = 64; def_k = 0; def_inter = 1407; break;   /* V2's top-k has no default */
    case AR_ARCH_DEEPSEEK_V3:
        def_e = 256; def_k = 8; def_inter = 2048;
        m->scoring = AR_ROUTER_SIGMOID; m->topk_method = AR_TOPK_NOAUX_TC; m->score_correction_bias = 1;
        break;
    case AR_ARCH_GPT_OSS:
        def_e = 128; def_k = 4;
        m->scoring = AR_ROUTER_TOPK_SOFTMAX; m->router_bias = m->expert_bias = m->fused_gate_up = 1;
        break;
    default: return ar_error("%s: %s is not a mixture of experts", path, c->arch_name);
    }
    if (parse_n_experts(c, r, path, def_e)) return -1;
    static const char *const k_keys[] = {"num_experts_per_tok", "experts_per_token"};
    const char *kk = first_key(r, k_keys, a == AR_ARCH_GPT_OSS ? 2 : 1);
    if (!kk && !def_k) return ar_error("%s: missing num_experts_per_tok", path);
    if (kk && get_int(r, kk, def_k, 1, 1 << 20, &m->top_k, path)) return -1;
    if (!kk) m->top_k = def_k;
    if (m->top_k > m->n_experts)
        return ar_error("%s: num_experts_per_tok %d exceeds the %d experts", path, m->top_k, m->n_experts);
    if (def_inter) {
        if (get_int(r, "moe_intermediate_size", def_inter, 1, 1 << 24, &m->expert_intermediate, path)) return -1;
    } else {
        m->expert_intermediate = c->intermediate;   /* Mixtral, gpt-oss: experts are intermediate_size wide */
    }
    m->norm_topk_prob = a == AR_ARCH_MIXTRAL || a == AR_ARCH_GPT_OSS ? 1
                        : get_bool(r, "norm_topk_prob", a == AR_ARCH_DEEPSEEK_V3);
    if (parse_router_kind(c, r, path)) return -1;
    if (is_mla_arch(a)) {
        int gdef = a == AR_ARCH_DEEPSEEK_V3 ? 8 : 1, tdef = a == AR_ARCH_DEEPSEEK_V3 ? 4 : 1;
        if (a == AR_ARCH_DEEPSEEK_V2 && m->topk_method == AR_TOPK_GROUP_LIMITED &&
            (!item(r, "n_group") || cJSON_IsNull(item(r, "n_group")) || !item(r, "topk_group") ||
             cJSON_IsNull(item(r, "topk_group"))))
            return ar_error("%s: topk_method group_limited_greedy needs n_group and topk_group", path);
        if (parse_groups(c, r, path, gdef, tdef) ||
            get_num(r, "routed_scaling_factor", a == AR_ARCH_DEEPSEEK_V3 ? 2.5 : 1.0, &m->routed_scaling_factor, path) ||
            get_int(r, "n_shared_experts", a == AR_ARCH_DEEPSEEK_V3 ? 1 : 2, 0, 1 << 10, &m->n_shared_experts, path))
            return -1;
        if (!(m->routed_scaling_factor > 0)) return ar_error("%s: routed_scaling_factor must be positive", path);
        m->shared_intermediate = m->n_shared_experts * m->expert_intermediate;
    } else {
        m->n_group = m->topk_group = 1;
    }
    if (a == AR_ARCH_QWEN2_MOE) {
        if (get_int(r, "shared_expert_intermediate_size", 5632, 0, 1 << 24, &m->shared_intermediate, path)) return -1;
        m->n_shared_experts = m->shared_expert_gate = m->shared_intermediate > 0;
    }
    if (a == AR_ARCH_GPT_OSS) {
        if (get_num(r, "swiglu_alpha", 1.702, &m->swiglu_alpha, path) ||
            get_num(r, "swiglu_limit", 7.0, &m->swiglu_limit, path))
            return -1;
        if (!(m->swiglu_limit > 0)) return ar_error("%s: swiglu_limit must be positive", path);
        if (parse_layer_types(c, r, path)) return -1;
    }
    return parse_moe_layers(c, r, path);
}

int ar_config_layer_moe(const ar_config *c, int layer)
{
    return c->moe.n_experts > 0 && layer >= 0 && layer < c->n_layers && layer < AR_CONFIG_MAX_LAYERS &&
           (c->layer_flags[layer] & AR_LAYER_MOE);
}

void ar_config_for_layer(ar_config *out, const ar_config *c, int layer)
{
    *out = *c;
    out->sliding_from_layer = 0;
    if (!ar_config_layer_sliding(c, layer)) out->sliding_window = 0;
    else if (c->rope_local_theta > 0) {
        out->rope_theta = c->rope_local_theta;
        out->rope_type = AR_ROPE_DEFAULT;
        out->rope_factor = 1.0;
    }
}

int ar_config_layer_sliding(const ar_config *c, int layer)
{
    if (!c->sliding_window || layer < 0 || layer >= c->n_layers) return 0;
    if (c->layer_types) return layer < AR_CONFIG_MAX_LAYERS && (c->layer_flags[layer] & AR_LAYER_SLIDING);
    return layer >= c->sliding_from_layer;
}

int ar_config_parse(ar_config *c, const char *json_text, const char *path)
{
    return ar_config_parse_flags(c, json_text, path, 0);
}

int ar_config_parse_flags(ar_config *c, const char *json_text, const char *path, int flags)
{
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json_text);
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        int off = root || !at ? 0 : (int)(at - json_text);
        cJSON_Delete(root);
        return root ? ar_error("%s: not a JSON object", path) : ar_error("%s: malformed JSON near byte %d", path, off);
    }
    const cJSON *r = root;          /* the text decoder's description */
    const ar_mm_text *tx = NULL;
    int rc = parse_multimodal(c, root, path, flags, &r, &tx);
    if (!rc && !c->mm_arch[0]) rc = parse_arch(c, root, path, flags);
    if (!rc) rc = parse_sizes(c, r, path, tx);
    if (!rc) rc = parse_rope(c, r, path, tx);
    if (!rc) rc = parse_arch_options(c, r, path);
    if (!rc && is_moe_arch(c->arch)) rc = parse_moe(c, r, path);
    if (!rc) {
        c->tie_embeddings = get_bool(root, "tie_word_embeddings", 0);
        if (c->mm_arch[0]) {   /* the top level decides, else the class default; transformers 4 wrote it in text_config */
            const ar_mm_class *k = ar_mm_class_find(c->mm_arch, NULL);
            c->tie_embeddings = get_bool(root, "tie_word_embeddings", k->tie_default) || get_bool(r, "tie_word_embeddings", 0);
        }
        c->bos_id = token_id(root, "bos_token_id");
        c->eos_id = token_id(root, "eos_token_id");
        if (c->bos_id < 0) c->bos_id = token_id(r, "bos_token_id");
        if (c->eos_id < 0) c->eos_id = token_id(r, "eos_token_id");
        const cJSON *dt = item(root, "torch_dtype");
        if (!cJSON_IsString(dt)) dt = item(root, "dtype");
        if (!cJSON_IsString(dt)) dt = item(r, "torch_dtype");
        if (!cJSON_IsString(dt)) dt = item(r, "dtype");
        copy_str(c->torch_dtype, sizeof c->torch_dtype, dt);
    }
    cJSON_Delete(root);
    return rc;
}

int ar_config_load(ar_config *c, const char *model_dir)
{
    return ar_config_load_flags(c, model_dir, 0);
}

int ar_config_load_flags(ar_config *c, const char *model_dir, int flags)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f) return ar_error("%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf) return ar_error("out of memory");
    if (n > CONFIG_MAX_BYTES) { free(buf); return ar_error("%s: larger than %u bytes", path, CONFIG_MAX_BYTES); }
    buf[n] = 0;
    int rc = ar_config_parse_flags(c, buf, path, flags);
    free(buf);
    return rc;
}
