/* gguf_moe.c — mixtures of experts in llama.cpp's GGUF (see gguf_moe.h). */
#include "gguf_moe.h"
#include "error.h"
#include "gguf_ds_oss.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ----------------------------------------------------------------------- */

int ar_gguf_moe_legacy_name(const char *hf, char *out, size_t cap)
{
    const char *mlp = strstr(hf, ".mlp.");
    int e, used = 0;
    char word[16];
    if (!mlp || strncmp(hf, "model.layers.", 13)) return 0;
    if (!strcmp(mlp, ".mlp.gate.weight"))
        return snprintf(out, cap, "%.*s.block_sparse_moe.gate.weight", (int)(mlp - hf), hf) > 0;
    if (sscanf(mlp, ".mlp.experts.%d.%15[a-z_].weight%n", &e, word, &used) != 2 || !used || mlp[used]) return 0;
    const char *w = !strcmp(word, "gate_proj") ? "w1" : !strcmp(word, "up_proj") ? "w3" : !strcmp(word, "down_proj") ? "w2" : NULL;
    return w && snprintf(out, cap, "%.*s.block_sparse_moe.experts.%d.%s.weight", (int)(mlp - hf), hf, e, w) > 0;
}

/* ---- what llama.cpp can hold ------------------------------------------------------ */

int ar_gguf_moe_check(const ar_config *c, const char *dir)
{
    const ar_moe_config *m = &c->moe;
    if (!m->n_experts) return 0;
    if (ar_gguf_ds_oss_arch(c)) return ar_gguf_ds_oss_check(c, dir);   /* deepseek2, gpt-oss */
    const char *arch = c->arch == AR_ARCH_QWEN3_MOE ? "qwen3moe" : c->arch == AR_ARCH_QWEN2_MOE ? "qwen2moe" : "llama";
    if (c->arch != AR_ARCH_QWEN3_MOE && c->arch != AR_ARCH_QWEN2_MOE && c->arch != AR_ARCH_MIXTRAL)
        return ar_error("%s: GGUF export of %s is not supported yet (Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V2/V3, gpt-oss)",
                        dir, c->arch_name);
    /* llama.cpp's qwen3moe / qwen2moe / llama loaders take experts on every
     * layer once expert_count is set (src/models/qwen3moe.cpp etc.) */
    if (m->n_moe_layers != c->n_layers) {
        int l = 0;
        while (l < c->n_layers && ar_config_layer_moe(c, l)) l++;
        return ar_error("%s: layer %d is dense (mlp_only_layers / decoder_sparse_step) and llama.cpp's %s has experts "
                        "on every layer: no GGUF form", dir, l, arch);
    }
    /* build_moe_ffn's norm_w is fixed per architecture: true for qwen3moe and llama, false for qwen2moe */
    int norm = c->arch != AR_ARCH_QWEN2_MOE;
    if (m->norm_topk_prob != norm)
        return ar_error("%s: norm_topk_prob %s, but llama.cpp's %s always %s the top-k weights: no GGUF form", dir,
                        m->norm_topk_prob ? "true" : "false", arch, norm ? "renormalises" : "keeps");
    if (c->arch == AR_ARCH_QWEN2_MOE && !m->shared_expert_gate)
        return ar_error("%s: llama.cpp's qwen2moe needs the shared expert (shared_expert_intermediate_size 0)", dir);
    if (c->rope_type != AR_ROPE_DEFAULT && c->rope_type != AR_ROPE_LINEAR)
        return ar_error("%s: GGUF export of %s with this rope_scaling type is not supported", dir, c->arch_name);
    return 0;
}

int ar_gguf_moe_set_metadata(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    const ar_moe_config *m = &c->moe;
    if (!m->n_experts) return 0;
    int rc = ar_gguf_set_arch_u32(w, arch, "expert_count", (uint32_t)m->n_experts) |
             ar_gguf_set_arch_u32(w, arch, "expert_used_count", (uint32_t)m->top_k);
    /* the converter writes moe_intermediate_size where config.json has one (Qwen);
     * Mixtral's experts are feed_forward_length wide */
    if (c->arch != AR_ARCH_MIXTRAL) rc |= ar_gguf_set_arch_u32(w, arch, "expert_feed_forward_length", (uint32_t)m->expert_intermediate);
    if (m->shared_expert_gate)
        rc |= ar_gguf_set_arch_u32(w, arch, "expert_shared_feed_forward_length", (uint32_t)m->shared_intermediate);
    if (!rc && ar_gguf_ds_oss_arch(c)) rc = ar_gguf_ds_oss_set_metadata(w, c, arch);
    return rc ? -1 : 0;
}

/* ---- reading a file back ------------------------------------------------------------- */

static void set_names(ar_config *c, ar_arch a, const char *cls, const char *type)
{
    c->arch = a;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", cls);
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
}

int ar_gguf_moe_read_config(const ar_gguf *g, const char *arch, const char *path, ar_config *c)
{
    ar_moe_config *m = &c->moe;
    if (!strcmp(arch, "deepseek2") || !strcmp(arch, "gpt-oss")) return ar_gguf_ds_oss_read_config(g, arch, path, c);
    int qwen3 = !strcmp(arch, "qwen3moe"), qwen2 = !strcmp(arch, "qwen2moe");
    int64_t E = ar_gguf_arch_int(g, arch, "expert_count", 0), k = ar_gguf_arch_int(g, arch, "expert_used_count", 0);
    if (!qwen3 && !qwen2 && E == 0) return 0;   /* a dense llama */
    if (E <= 0 || k <= 0 || k > E)
        return ar_error("%s: %s.expert_count %lld / expert_used_count %lld do not describe a mixture of experts", path,
                        arch, (long long)E, (long long)k);
    if (c->n_layers > AR_CONFIG_MAX_LAYERS) return ar_error("%s: %d layers exceed %d", path, c->n_layers, AR_CONFIG_MAX_LAYERS);
    const ar_gguf_kv *scale = ar_gguf_find_arch_kv(g, arch, "expert_weights_scale");
    if (scale && ar_gguf_kv_float(scale) != 0 && ar_gguf_kv_float(scale) != 1)
        return ar_error("%s: %s.expert_weights_scale %g is not supported", path, arch, ar_gguf_kv_float(scale));
    if (qwen3) set_names(c, AR_ARCH_QWEN3_MOE, "Qwen3MoeForCausalLM", "qwen3_moe");
    else if (qwen2) set_names(c, AR_ARCH_QWEN2_MOE, "Qwen2MoeForCausalLM", "qwen2_moe");
    else set_names(c, AR_ARCH_MIXTRAL, "MixtralForCausalLM", "mixtral");
    m->n_experts = (int)E;
    m->top_k = (int)k;
    /* llama.cpp's default width when the key is absent: n_ff / n_expert_used (qwen*moe), n_ff (llama) */
    m->expert_intermediate = (int)ar_gguf_arch_int(g, arch, "expert_feed_forward_length",
                                           qwen3 || qwen2 ? c->intermediate / k : c->intermediate);
    m->norm_topk_prob = !qwen2;
    m->scoring = AR_ROUTER_SOFTMAX;
    m->topk_method = AR_TOPK_GREEDY;
    m->n_group = m->topk_group = 1;
    m->routed_scaling_factor = 1.0;
    m->decoder_sparse_step = 1;
    if (qwen2) {
        m->shared_intermediate = (int)ar_gguf_arch_int(g, arch, "expert_shared_feed_forward_length", c->intermediate);
        m->n_shared_experts = m->shared_expert_gate = 1;
    }
    if (m->expert_intermediate <= 0 || (qwen2 && m->shared_intermediate <= 0))
        return ar_error("%s: %s expert widths must be positive", path, arch);
    m->n_moe_layers = 0;
    for (int l = 0; l < c->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.weight", l);
        if (!ar_gguf_find_tensor(g, name)) continue;
        c->layer_flags[l] |= AR_LAYER_MOE;
        m->n_moe_layers++;
    }
    return 0;
}

/* ---- stacks ----------------------------------------------------------------------------- */

typedef struct {
    char         name[96];
    ar_ggml_type type;
    int64_t      rows, cols;
    size_t       slot_bytes;
    uint8_t     *buf;        /* E slots; NULL once written */
    char        *have;       /* [E] */
    int          n_have, written;
} stack;

struct ar_gguf_stacks {
    int    E, n, cap;
    stack *s;
};

ar_gguf_stacks *ar_gguf_stacks_new(int n_experts)
{
    ar_gguf_stacks *s = calloc(1, sizeof *s);
    if (!s) ar_error("out of memory");
    else s->E = n_experts;
    return s;
}

static stack *find_stack(ar_gguf_stacks *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->s[i].name, name)) return &s->s[i];
    return NULL;
}

static stack *new_stack(ar_gguf_stacks *s, const char *name, ar_ggml_type t, int64_t rows, int64_t cols)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 8;
        stack *p = realloc(s->s, sizeof *p * (size_t)cap);
        if (!p) { ar_error("out of memory"); return NULL; }
        s->s = p;
        s->cap = cap;
    }
    stack *k = &s->s[s->n];
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "%s", name);
    k->type = t;
    k->rows = rows;
    k->cols = cols;
    k->slot_bytes = ar_ggml_row_bytes(t, cols) * (size_t)rows;
    if (!k->slot_bytes) { ar_error("%s: %lld columns do not fit %s blocks", name, (long long)cols, ar_ggml_type_name(t)); return NULL; }
    k->buf = malloc(k->slot_bytes * (size_t)s->E);
    k->have = calloc((size_t)s->E, 1);
    if (!k->buf || !k->have) {
        free(k->buf);
        free(k->have);
        ar_error("%s: out of memory for %d experts", name, s->E);
        return NULL;
    }
    s->n++;
    return k;
}

void *ar_gguf_stack_slot(ar_gguf_stacks *s, const char *gname, int e, ar_ggml_type t, int64_t rows, int64_t cols)
{
    if (e < 0 || e >= s->E) { ar_error("%s: expert %d of %d", gname, e, s->E); return NULL; }
    stack *k = find_stack(s, gname);
    if (!k && !(k = new_stack(s, gname, t, rows, cols))) return NULL;
    if (k->written || k->have[e]) { ar_error("%s: expert %d given twice", gname, e); return NULL; }
    if (k->type != t || k->rows != rows || k->cols != cols) {
        ar_error("%s: expert %d is %s [%lld, %lld], the others %s [%lld, %lld]", gname, e, ar_ggml_type_name(t),
                 (long long)rows, (long long)cols, ar_ggml_type_name(k->type), (long long)k->rows, (long long)k->cols);
        return NULL;
    }
    return k->buf + k->slot_bytes * (size_t)e;
}

int ar_gguf_stack_has(const ar_gguf_stacks *s, const char *gname, int e)
{
    for (int i = 0; s && i < s->n; i++)
        if (!strcmp(s->s[i].name, gname)) return s->s[i].written || (e >= 0 && e < s->E && s->s[i].have[e]);
    return 0;
}

int ar_gguf_stack_filled(ar_gguf_stacks *s, ar_gguf_writer *w, const char *gname, int e)
{
    stack *k = find_stack(s, gname);
    if (!k || e < 0 || e >= s->E || k->have[e]) return ar_error("%s: expert %d filled without a slot", gname, e);
    k->have[e] = 1;
    if (++k->n_have < s->E) return 0;
    int64_t ne[3] = {k->cols, k->rows, s->E};
    int rc = ar_gguf_writer_add_tensor(w, k->name, k->type, 3, ne, k->buf, k->slot_bytes * (size_t)s->E);
    free(k->buf);
    k->buf = NULL;
    k->written = 1;
    return rc;
}

int ar_gguf_stacks_check_complete(const ar_gguf_stacks *s, const char *dir)
{
    for (int i = 0; s && i < s->n; i++)
        if (!s->s[i].written) {
            int e = 0;
            while (e < s->E && s->s[i].have[e]) e++;
            return ar_error("%s: %s lacks expert %d (%d experts in config.json)", dir, s->s[i].name, e, s->E);
        }
    return 0;
}

void ar_gguf_stacks_free(ar_gguf_stacks *s)
{
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        free(s->s[i].buf);
        free(s->s[i].have);
    }
    free(s->s);
    free(s);
}
