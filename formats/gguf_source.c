/* gguf_source.c — a GGUF file as a model, the GGUF hooks of model_open.h.
 *
 * Weights: tensors by HF name (llama.cpp's names mapped back), dequantized to
 * f32 with ggml's arithmetic, Q/K rows of the llama architecture read back in
 * HF's rotate-half order. Config: from the file's own metadata, so the weights
 * are self-describing (qwen2's sliding window is not used, as llama.cpp does
 * not). Tokenizer: the Hugging Face one, tokenizer.json beside the file, else
 * in the model folder named by the file's "ar.source_model" key (ar-pack
 * writes it); llama.cpp's embedded vocabulary is not turned back into a
 * tokenizer.json. */
#include "error.h"
#include "gguf.h"
#include "gguf_ds_oss.h"
#include "gguf_moe.h"
#include "model_open.h"
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *gguf, *hf_class, *model_type; ar_arch arch; } archs[] = {
    {"llama", "LlamaForCausalLM", "llama", AR_ARCH_LLAMA},
    {"qwen2", "Qwen2ForCausalLM", "qwen2", AR_ARCH_QWEN2},
    {"qwen3", "Qwen3ForCausalLM", "qwen3", AR_ARCH_QWEN3},
    {"gemma2", "Gemma2ForCausalLM", "gemma2", AR_ARCH_GEMMA2},
    {"gemma3", "Gemma3ForCausalLM", "gemma3_text", AR_ARCH_GEMMA3},
    {"phi3", "Phi3ForCausalLM", "phi3", AR_ARCH_PHI3},
    {"glm4", "Glm4ForCausalLM", "glm4", AR_ARCH_GLM4},
    {"qwen3moe", "Qwen3MoeForCausalLM", "qwen3_moe", AR_ARCH_QWEN3_MOE},   /* "llama" with experts: Mixtral (gguf_moe.c) */
    {"qwen2moe", "Qwen2MoeForCausalLM", "qwen2_moe", AR_ARCH_QWEN2_MOE},
    /* DeepSeek-V2 or -V3 by the file's gating function, and gpt-oss (gguf_ds_oss.c) */
    {"deepseek2", "DeepseekV2ForCausalLM", "deepseek_v2", AR_ARCH_DEEPSEEK_V2},
    {"gpt-oss", "GptOssForCausalLM", "gpt_oss", AR_ARCH_GPT_OSS},
};

static int token_id(const ar_gguf *g, const char *key)
{
    const ar_gguf_kv *kv = ar_gguf_find_kv(g, key);
    return kv ? (int)ar_gguf_kv_int(kv) : -1;
}

static int has_tensor(const ar_gguf *g, const char *name) { return ar_gguf_find_tensor(g, name) != NULL; }

static int set_arch(ar_config *c, const ar_gguf *g, const char *path, const char **arch)
{
    const ar_gguf_kv *a = ar_gguf_find_kv(g, "general.architecture");
    if (!a || a->type != AR_GGUF_STRING) return ar_error("%s: no general.architecture", path);
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (!strcmp(a->str, archs[i].gguf)) {
            c->arch = archs[i].arch;
            snprintf(c->arch_name, sizeof c->arch_name, "%s", archs[i].hf_class);
            snprintf(c->model_type, sizeof c->model_type, "%s", archs[i].model_type);
            *arch = archs[i].gguf;
            return 0;
        }
    return ar_error("%s: architecture '%s' is not supported (llama, qwen2, qwen3, gemma2, gemma3, phi3, glm4, qwen3moe, qwen2moe, deepseek2, gpt-oss)",
                    path, a->str);
}

static int set_rope(ar_config *c, const ar_gguf *g, const char *arch, const char *path)
{
    char k[160];
    c->rope_theta = ar_gguf_arch_float(g, arch, "rope.freq_base", 10000.0);
    c->rope_type = AR_ROPE_DEFAULT;
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const ar_gguf_kv *st = ar_gguf_find_kv(g, k);
    if (st && st->type == AR_GGUF_STRING && !strcmp(st->str, "linear")) {
        c->rope_type = AR_ROPE_LINEAR;
        c->rope_factor = ar_gguf_arch_float(g, arch, "rope.scaling.factor", 1.0);
    } else if (st && st->type == AR_GGUF_STRING && strcmp(st->str, "none"))
        return ar_error("%s: RoPE scaling '%s' is not supported", path, st->str);
    if (has_tensor(g, "rope_freqs.weight"))
        return ar_error("%s: per-frequency RoPE factors (rope_freqs.weight, Llama 3 scaling) are not supported", path);
    return 0;
}

/* Gemma 2 / Gemma 3 as llama.cpp runs them (src/models/gemma2.cpp, gemma3.cpp):
 * GELU-tanh MLP, (1 + w) sandwich norms (the file stores 1 + w: src_read_rows
 * takes the 1 off), embeddings times sqrt(hidden), llama.cpp's fixed softmax
 * scale (the writer folded the model's into the queries), soft-caps, the
 * sliding window on the layers of attention.sliding_window_pattern (an array
 * of flags, or every n-th layer global; llama.cpp's defaults 2 and 6), and
 * Gemma 3's local RoPE base. */
static int set_gemma(ar_config *c, const ar_gguf *g, const char *arch, const char *path)
{
    int g3 = c->arch == AR_ARCH_GEMMA3;
    char k[160];
    c->act = AR_ACT_GELU_TANH;
    c->norm_plus_one = c->sandwich_norm = 1;
    c->embed_scale = sqrt((double)c->hidden);
    c->attn_scale = ar_gguf_gemma_attn_scale(c);
    c->attn_softcap = ar_gguf_arch_float(g, arch, "attn_logit_softcapping", g3 ? 0 : 50.0);
    c->final_softcap = ar_gguf_arch_float(g, arch, "final_logit_softcapping", g3 ? 0 : 30.0);
    c->sliding_window = (int)ar_gguf_arch_int(g, arch, "attention.sliding_window", g3 ? 0 : 4096);
    if (g3 && c->sliding_window > 0) c->rope_local_theta = ar_gguf_arch_float(g, arch, "rope.freq_base_swa", 10000.0);
    if (c->n_layers > AR_CONFIG_MAX_LAYERS) return ar_error("%s: %d layers exceed %d", path, c->n_layers, AR_CONFIG_MAX_LAYERS);
    c->layer_types = 1;
    snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", arch);
    const ar_gguf_kv *p = ar_gguf_find_kv(g, k);
    if (p && p->type == AR_GGUF_ARRAY && p->n != (uint64_t)c->n_layers)
        return ar_error("%s: %s lists %llu layers, the model has %d", path, k, (unsigned long long)p->n, c->n_layers);
    int64_t every = p && p->type != AR_GGUF_ARRAY ? ar_gguf_kv_int(p) : g3 ? 6 : 2;
    if (every <= 0) return ar_error("%s: %s must be positive", path, k);
    for (int l = 0; l < c->n_layers; l++) {
        int swa = p && p->type == AR_GGUF_ARRAY ? ar_gguf_kv_arr_int(p, (uint64_t)l) != 0 : (l + 1) % every != 0;
        if (swa) c->layer_flags[l] |= AR_LAYER_SLIDING;
    }
    return 0;
}

/* One longrope factor table (rope_factors_long / _short.weight) into out[n]. */
static int longrope_table(const ar_gguf *g, const char *name, int n, float *out, const char *path)
{
    const ar_gguf_tensor *t = ar_gguf_find_tensor(g, name);
    if (!t || t->n_dims != 1 || t->ne[0] != n || t->type != AR_GGML_F32)
        return ar_error("%s: %s must be %d f32 values (rope.dimension_count / 2)", path, name, n);
    return ar_gguf_tensor_f32(t, out) ? ar_error_prefix(path) : 0;
}

/* Phi-3 / GLM-4 as llama.cpp runs them (src/models/phi3.cpp, glm4.cpp): fused
 * gate/up (and Phi-3's fused q/k/v when attn_qkv is there), the rotated part
 * of each head, GLM-4's interleaved pairs and post norms, Phi-3's longrope
 * (the factor tables, the original context, the attention factor). */
static int set_fused(ar_config *c, const ar_gguf *g, const char *arch, const char *path)
{
    c->fused_gate_up = 1;
    c->rope_dim = (int)ar_gguf_arch_int(g, arch, "rope.dimension_count", c->head_dim);
    if (c->rope_dim < 2 || c->rope_dim % 2 || c->rope_dim > c->head_dim)
        return ar_error("%s: %s.rope.dimension_count %d does not fit head size %d", path, arch, c->rope_dim, c->head_dim);
    if (c->arch == AR_ARCH_GLM4) {
        c->rope_interleaved = c->post_norms = 1;
        return 0;
    }
    c->fused_qkv = has_tensor(g, "blk.0.attn_qkv.weight");
    c->sliding_window = (int)ar_gguf_arch_int(g, arch, "attention.sliding_window", 0);
    if (!has_tensor(g, "rope_factors_long.weight")) return 0;
    int n = c->rope_dim / 2;
    if (n > AR_ROPE_MAX_PAIRS) return ar_error("%s: longrope with more than %d rotated pairs", path, AR_ROPE_MAX_PAIRS);
    if (longrope_table(g, "rope_factors_long.weight", n, c->rope_long_factor, path) ||
        longrope_table(g, "rope_factors_short.weight", n, c->rope_short_factor, path))
        return -1;
    c->rope_type = AR_ROPE_LONGROPE;
    c->rope_orig_max_pos = (int)ar_gguf_arch_int(g, arch, "rope.scaling.original_context_length", c->max_pos);
    if (c->rope_orig_max_pos <= 0) return ar_error("%s: %s.rope.scaling.original_context_length must be positive", path, arch);
    c->rope_factor = (double)c->max_pos / c->rope_orig_max_pos;
    c->rope_attention_factor = ar_gguf_arch_float(g, arch, "rope.scaling.attn_factor", 1.0);
    return 0;
}

int ar_gguf_read_config(const ar_gguf *g, const char *path, ar_config *c)
{
    const char *arch = "";
    memset(c, 0, sizeof *c);
    if (set_arch(c, g, path, &arch)) return -1;
    c->n_layers = (int)ar_gguf_arch_int(g, arch, "block_count", 0);
    c->hidden = (int)ar_gguf_arch_int(g, arch, "embedding_length", 0);
    c->intermediate = (int)ar_gguf_arch_int(g, arch, "feed_forward_length", 0);
    c->n_heads = (int)ar_gguf_arch_int(g, arch, "attention.head_count", 0);
    c->n_kv_heads = (int)ar_gguf_arch_int(g, arch, "attention.head_count_kv", c->n_heads);
    c->max_pos = (int)ar_gguf_arch_int(g, arch, "context_length", 2048);
    c->rms_eps = (float)ar_gguf_arch_float(g, arch, "attention.layer_norm_rms_epsilon", 1e-6);
    if (c->n_layers <= 0 || c->hidden <= 0 || c->intermediate <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0)
        return ar_error("%s: missing or zero %s.block_count / embedding_length / feed_forward_length / head counts",
                        path, arch);
    c->head_dim = (int)ar_gguf_arch_int(g, arch, "attention.key_length", c->hidden / c->n_heads);
    const ar_gguf_tensor *emb = ar_gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != c->hidden)
        return ar_error("%s: no token_embd.weight of row length %d", path, c->hidden);
    c->vocab = (int)emb->ne[1];
    int ds_oss = c->arch == AR_ARCH_DEEPSEEK_V2 || c->arch == AR_ARCH_GPT_OSS;   /* their YaRN: gguf_ds_oss.c */
    if (!ds_oss && set_rope(c, g, arch, path)) return -1;
    c->tie_embeddings = !has_tensor(g, "output.weight");
    c->qkv_bias = has_tensor(g, "blk.0.attn_q.bias");
    c->o_bias = has_tensor(g, "blk.0.attn_output.bias");
    c->mlp_bias = has_tensor(g, "blk.0.ffn_up.bias");
    c->qk_norm = has_tensor(g, "blk.0.attn_q_norm.weight");
    if ((c->arch == AR_ARCH_GEMMA2 || c->arch == AR_ARCH_GEMMA3) && set_gemma(c, g, arch, path)) return -1;
    if ((c->arch == AR_ARCH_PHI3 || c->arch == AR_ARCH_GLM4) && set_fused(c, g, arch, path)) return -1;
    if (ar_gguf_moe_read_config(g, arch, path, c)) return -1;
    c->bos_id = token_id(g, "tokenizer.ggml.bos_token_id");
    c->eos_id = token_id(g, "tokenizer.ggml.eos_token_id");
    return 0;
}

/* ---- tensor source --------------------------------------------------------- */

typedef struct {
    ar_gguf  *g;
    ar_config cfg;
    char      path[4096];
    /* MLA's kv_b_proj read back from attn_k_b (transposed per head) and attn_v_b:
     * the last head's k_b rows, dequantized */
    float    *kb;
    int       kb_layer, kb_head;
} gguf_src;

/* "model.layers.L.self_attn.kv_b_proj.weight" of a deepseek2 file: its layer, else -1 */
static int kvb_layer(const gguf_src *s, const char *hf_name)
{
    int l, used = 0;
    if (s->cfg.arch != AR_ARCH_DEEPSEEK_V2 && s->cfg.arch != AR_ARCH_DEEPSEEK_V3) return -1;
    if (sscanf(hf_name, "model.layers.%d.self_attn.kv_b_proj.weight%n", &l, &used) != 1 || !used || hf_name[used]) return -1;
    return l;
}

/* The layer's attn_k_b / attn_v_b of the split form, checked against the config (NULL, no error, if absent). */
static const ar_gguf_tensor *kvb_part(const gguf_src *s, int layer, char which)
{
    char name[64];
    ar_gguf_kvb k = ar_gguf_kvb_of(&s->cfg);
    snprintf(name, sizeof name, "blk.%d.attn_%c_b.weight", layer, which);
    const ar_gguf_tensor *t = ar_gguf_find_tensor(s->g, name);
    int64_t want0 = which == 'k' ? k.DN : k.KL, want1 = which == 'k' ? k.KL : k.DV;
    return t && t->n_dims == 3 && t->ne[0] == want0 && t->ne[1] == want1 && t->ne[2] == k.NH ? t : NULL;
}

/* Rows row0.. of kv_b [NH·(DN+DV), KL]: v rows straight from attn_v_b, k rows
 * from head h's attn_k_b [KL, DN] transposed. */
static int kvb_read_rows(gguf_src *s, int layer, int64_t row0, int64_t nrows, float *dst)
{
    ar_gguf_kvb k = ar_gguf_kvb_of(&s->cfg);
    const ar_gguf_tensor *kt = kvb_part(s, layer, 'k'), *vt = kvb_part(s, layer, 'v');
    const int DH = k.DN + k.DV;
    if (!kt || !vt) return ar_error("%s: blk.%d.attn_k_b / attn_v_b are missing or not shaped as the MLA keys say", s->path, layer);
    if (row0 < 0 || nrows < 0 || row0 + nrows > (int64_t)k.NH * DH)
        return ar_error("%s: rows out of range of layer %d's kv_b_proj", s->path, layer);
    if (!s->kb && !(s->kb = malloc(sizeof(float) * (size_t)k.KL * k.DN))) return ar_error("out of memory");
    for (int64_t r = row0; r < row0 + nrows; r++) {
        int h = (int)(r / DH), j = (int)(r % DH);
        float *out = dst + (r - row0) * k.KL;
        if (j >= k.DN) {
            size_t rb = ar_ggml_row_bytes(vt->type, k.KL);
            if (ar_ggml_dequantize(vt->type, (const char *)vt->data + ((size_t)h * k.DV + (j - k.DN)) * rb, out, k.KL))
                return ar_error_prefix(s->path);
            continue;
        }
        if (s->kb_layer != layer || s->kb_head != h) {
            size_t rb = ar_ggml_row_bytes(kt->type, k.DN);
            for (int i = 0; i < k.KL; i++)
                if (ar_ggml_dequantize(kt->type, (const char *)kt->data + ((size_t)h * k.KL + i) * rb, s->kb + (size_t)i * k.DN, k.DN))
                    return ar_error_prefix(s->path);
            s->kb_layer = layer, s->kb_head = h;
        }
        for (int i = 0; i < k.KL; i++) out[i] = s->kb[(size_t)i * k.DN + j];
    }
    return 0;
}

/* The GGUF tensor behind an HF name, or NULL (no error) when there is none;
 * *expert: which expert of a stacked 3-D tensor (gguf_moe.h) the name is, else -1. */
static const ar_gguf_tensor *find_part(const gguf_src *s, const char *hf_name, int *expert)
{
    char gname[256];
    *expert = -1;
    if (ar_gguf_expert_name(hf_name, gname, sizeof gname, expert) ||
        ar_gguf_expert_bias_name(hf_name, gname, sizeof gname, expert)) {   /* gpt-oss's biases: {N, E} */
        const ar_gguf_tensor *b = ar_gguf_find_tensor(s->g, gname);
        if (b && b->n_dims == 2 && strstr(gname, ".bias")) return *expert < b->ne[1] ? b : NULL;
        const ar_gguf_tensor *t = ar_gguf_find_tensor(s->g, gname);
        return t && t->n_dims == 3 && *expert < t->ne[2] ? t : NULL;
    }
    int m = ar_gguf_map_name_for(&s->cfg, hf_name, gname, sizeof gname);   /* an unknown name is just "not here" */
    return m == 1 ? ar_gguf_find_tensor(s->g, gname) : NULL;
}

static int ends_with(const char *s, const char *t)
{
    size_t n = strlen(s), k = strlen(t);
    return n >= k && !strcmp(s + n - k, t);
}

static int src_shape(void *ctx, const char *name, int *ndim, int64_t shape[AR_SRC_MAX_DIMS])
{
    int e, kl = kvb_layer(ctx, name);
    if (kl >= 0 && kvb_part(ctx, kl, 'k') && kvb_part(ctx, kl, 'v')) {   /* written split */
        ar_gguf_kvb k = ar_gguf_kvb_of(&((gguf_src *)ctx)->cfg);
        *ndim = 2, shape[0] = (int64_t)k.NH * (k.DN + k.DV), shape[1] = k.KL;
        return 0;
    }
    const ar_gguf_tensor *t = find_part(ctx, name, &e);
    if (!t) return 1;
    if (e >= 0 && strstr(t->name, ".bias")) {   /* one expert's bias: a row of the stacked {N, E} */
        *ndim = 1, shape[0] = t->ne[0];
        return 0;
    }
    if (e >= 0 || (t->n_dims == 1 && ends_with(t->name, ".ffn_gate_inp_shexp.weight"))) {
        *ndim = 2;   /* one expert's [N, K]; the shared expert's gate is HF's [1, hidden] */
        shape[0] = e >= 0 ? t->ne[1] : 1;
        shape[1] = t->ne[0];
        return 0;
    }
    *ndim = t->n_dims;
    for (int d = 0; d < t->n_dims; d++) shape[d] = t->ne[t->n_dims - 1 - d];  /* ggml's ne[0] is the last HF dim */
    return 0;
}

/* Heads of d rows each when the tensor's rows are in llama.cpp's RoPE order. */
static int permuted_heads(const gguf_src *s, const ar_gguf_tensor *t)
{
    if ((s->cfg.arch != AR_ARCH_LLAMA && s->cfg.arch != AR_ARCH_MIXTRAL) || t->n_dims != 2) return 0;
    if (strstr(t->name, ".attn_q.")) return s->cfg.n_heads;
    if (strstr(t->name, ".attn_k.")) return s->cfg.n_kv_heads;
    return 0;
}

static int src_read_rows(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst)
{
    gguf_src *s = ctx;
    int e, kl = kvb_layer(s, name);
    if (kl >= 0 && !find_part(s, name, &e)) return kvb_read_rows(s, kl, row0, nrows, dst);
    const ar_gguf_tensor *t = find_part(s, name, &e);
    if (!t) return ar_error("%s: no tensor for %s", s->path, name);
    if (e >= 0 && strstr(t->name, ".bias")) {
        if (row0 != 0 || (nrows != 1 && nrows != t->ne[0])) return ar_error("%s: %s is read whole", s->path, name);
        return ar_ggml_dequantize(t->type, (const char *)t->data + (size_t)e * ar_ggml_row_bytes(t->type, t->ne[0]), dst,
                                  t->ne[0]) ? ar_error_prefix(s->path) : 0;
    }
    const int64_t cols = t->n_dims == 1 ? 1 : t->ne[0], rows = e >= 0 ? t->ne[1] : ar_gguf_tensor_numel(t) / cols;
    if (row0 < 0 || nrows < 0 || row0 + nrows > rows)
        return ar_error("%s: rows %lld..%lld of %s out of range", s->path, (long long)row0, (long long)(row0 + nrows), name);
    if (t->n_dims == 1) {
        if (ar_ggml_dequantize(t->type, t->data, dst, t->ne[0])) return ar_error_prefix(s->path);
        if (s->cfg.norm_plus_one && strstr(t->name, "norm.weight"))   /* stored as 1 + w */
            for (int64_t i = 0; i < t->ne[0]; i++) dst[i] -= 1.f;
        return 0;
    }
    const size_t rb = ar_ggml_row_bytes(t->type, cols);
    const int heads = permuted_heads(s, t);
    const int64_t base = e >= 0 ? (int64_t)e * rows : 0;   /* expert e's rows follow the e experts before it */
    for (int64_t r = row0; r < row0 + nrows; r++) {
        int64_t gr = base + (heads ? ar_gguf_permuted_row(r, rows / heads) : r);
        if (ar_ggml_dequantize(t->type, (const char *)t->data + (size_t)gr * rb, dst + (r - row0) * cols, cols))
            return ar_error_prefix(s->path);
    }
    return 0;
}

static void src_close(void *ctx)
{
    gguf_src *s = ctx;
    if (!s) return;
    ar_gguf_close(s->g);
    free(s->kb);
    free(s);
}

int ar_source_gguf(ar_tensor_source *src, ar_config *c, const char *path)
{
    gguf_src *s = calloc(1, sizeof *s);
    if (!s) return ar_error("out of memory");
    snprintf(s->path, sizeof s->path, "%s", path);
    s->kb_layer = -1;
    if (!(s->g = ar_gguf_open(path)) || ar_gguf_read_config(s->g, path, &s->cfg)) {
        src_close(s);
        return -1;
    }
    *src = (ar_tensor_source){s, src_shape, src_read_rows, src_close};
    *c = s->cfg;
    return 0;
}

/* ---- tokenizer ---------------------------------------------------------------- */

/* dir holds a tokenizer.json */
static int has_tokenizer(const char *dir)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    return access(p, R_OK) == 0;
}

/* Folder of the tokenizer for GGUF file path: its own folder, else the model
 * folder it was packed from. */
static int gguf_tokenizer_dir(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, cap, ".");
    else if (slash == path) snprintf(dir, cap, "/");
    else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
    if (has_tokenizer(dir)) return 0;
    ar_gguf *g = ar_gguf_open(path);
    if (!g) return -1;
    const ar_gguf_kv *kv = ar_gguf_find_kv(g, "ar.source_model");
    int ok = kv && kv->type == AR_GGUF_STRING && has_tokenizer(kv->str);
    if (ok) snprintf(dir, cap, "%s", kv->str);
    ar_gguf_close(g);
    if (!ok)
        return ar_error("%s: no tokenizer.json beside the file nor in the model folder it was packed from "
                        "(ar.source_model); copy the model's tokenizer.json and tokenizer_config.json beside it",
                        path);
    return 0;
}

ar_tokenizer *ar_tokenizer_gguf(const char *path)
{
    char dir[PATH_MAX];
    if (gguf_tokenizer_dir(path, dir, sizeof dir)) return NULL;
    return ar_tokenizer_load(dir);
}
