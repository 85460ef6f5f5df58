/* config.c — Hugging Face config.json → ar_config (see config.h).
 *
 * Defaults follow transformers' config classes: num_key_value_heads defaults
 * to num_attention_heads, head_dim to hidden_size / num_attention_heads
 * (Qwen3: 128), rope_theta to 10000. */
#include "config.h"
#include "error.h"
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* config.json files are a few KB; a larger one is not a config. */
#define CONFIG_MAX_BYTES (16u << 20)

static const struct { const char *arch, *model_type; ar_arch id; } known_archs[] = {
    {"LlamaForCausalLM", "llama", AR_ARCH_LLAMA},
    {"MistralForCausalLM", "mistral", AR_ARCH_MISTRAL},
    {"Qwen2ForCausalLM", "qwen2", AR_ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", AR_ARCH_QWEN3},
};

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

/* Architecture from "architectures"[0], else from "model_type". */
static int parse_arch(ar_config *c, const cJSON *root, const char *path)
{
    const cJSON *archs = item(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    copy_str(c->arch_name, sizeof c->arch_name, a0);
    copy_str(c->model_type, sizeof c->model_type, item(root, "model_type"));
    for (size_t i = 0; i < sizeof known_archs / sizeof *known_archs; i++) {
        if (c->arch_name[0] ? !strcmp(c->arch_name, known_archs[i].arch) : !strcmp(c->model_type, known_archs[i].model_type)) {
            c->arch = known_archs[i].id;
            snprintf(c->arch_name, sizeof c->arch_name, "%s", known_archs[i].arch);
            snprintf(c->model_type, sizeof c->model_type, "%s", known_archs[i].model_type);
            return 0;
        }
    }
    return ar_error("%s: unsupported architecture %s", path,
                    c->arch_name[0] ? c->arch_name : c->model_type[0] ? c->model_type : "(none given)");
}

static int parse_sizes(ar_config *c, const cJSON *r, const char *path)
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
        get_int(r, "head_dim", c->arch == AR_ARCH_QWEN3 ? 128 : c->hidden / c->n_heads, 1, big, &c->head_dim, path))
        return -1;
    if (c->n_heads % c->n_kv_heads)
        return ar_error("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads, c->n_kv_heads);
    /* the default hidden / n_heads is 0 when there are more heads than hidden units */
    if (c->head_dim < 1)
        return ar_error("%s: head_dim is 0 (hidden_size %d / num_attention_heads %d)", path, c->hidden, c->n_heads);
    if (c->head_dim % 2) return ar_error("%s: head_dim %d is odd (RoPE rotates pairs)", path, c->head_dim);
    double eps;
    if (get_num(r, "rms_norm_eps", 1e-6, &eps, path)) return -1;
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

static int parse_rope_type(ar_config *c, const cJSON *d, const char *path)
{
    const cJSON *t = item(d, "rope_type");
    if (!cJSON_IsString(t)) t = item(d, "type");
    const char *name = cJSON_IsString(t) ? t->valuestring : "default";
    if (!strcmp(name, "default")) c->rope_type = AR_ROPE_DEFAULT;
    else if (!strcmp(name, "linear")) c->rope_type = AR_ROPE_LINEAR;
    else if (!strcmp(name, "llama3")) c->rope_type = AR_ROPE_LLAMA3;
    else return ar_error("%s: unsupported rope type %s", path, name);
    if (c->rope_type == AR_ROPE_DEFAULT) return 0;
    if (get_num(d, "factor", 1.0, &c->rope_factor, path)) return -1;
    if (!(c->rope_factor > 0)) return ar_error("%s: rope factor must be positive", path);
    if (c->rope_type != AR_ROPE_LLAMA3) return 0;
    if (get_num(d, "low_freq_factor", 1.0, &c->rope_low_freq_factor, path) ||
        get_num(d, "high_freq_factor", 4.0, &c->rope_high_freq_factor, path) ||
        get_int(d, "original_max_position_embeddings", 8192, 1, 1 << 30, &c->rope_orig_max_pos, path))
        return -1;
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return ar_error("%s: llama3 rope needs high_freq_factor > low_freq_factor", path);
    return 0;
}

static int parse_rope(ar_config *c, const cJSON *r, const char *path)
{
    const cJSON *d = rope_dict(r);
    const double def = 10000.0;
    /* Top-level rope_theta wins; transformers 5 moved it inside rope_parameters. */
    if (get_num(r, "rope_theta", def, &c->rope_theta, path)) return -1;
    if (!item(r, "rope_theta") && d && get_num(d, "rope_theta", def, &c->rope_theta, path)) return -1;
    if (!(c->rope_theta > 0)) return ar_error("%s: rope_theta must be positive", path);
    c->rope_type = AR_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    return d ? parse_rope_type(c, d, path) : 0;
}

/* Biases, q/k norm and the sliding window, which differ per architecture. */
static int parse_arch_options(ar_config *c, const cJSON *r, const char *path)
{
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

int ar_config_parse(ar_config *c, const char *json_text, const char *path)
{
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json_text);
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        int off = root || !at ? 0 : (int)(at - json_text);
        cJSON_Delete(root);
        return root ? ar_error("%s: not a JSON object", path) : ar_error("%s: malformed JSON near byte %d", path, off);
    }
    int rc = parse_arch(c, root, path);
    if (!rc) rc = parse_sizes(c, root, path);
    if (!rc) rc = parse_rope(c, root, path);
    if (!rc) rc = parse_arch_options(c, root, path);
    if (!rc) {
        c->tie_embeddings = get_bool(root, "tie_word_embeddings", 0);
        c->bos_id = token_id(root, "bos_token_id");
        c->eos_id = token_id(root, "eos_token_id");
        const cJSON *dt = item(root, "torch_dtype");
        copy_str(c->torch_dtype, sizeof c->torch_dtype, cJSON_IsString(dt) ? dt : item(root, "dtype"));
    }
    cJSON_Delete(root);
    return rc;
}

int ar_config_load(ar_config *c, const char *model_dir)
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
    int rc = ar_config_parse(c, buf, path);
    free(buf);
    return rc;
}
