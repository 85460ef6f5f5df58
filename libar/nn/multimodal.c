/* multimodal.c — vision-language classes, their text configs, the prefix of
 * their text weights and the names between layouts (see multimodal.h). */
#include "multimodal.h"
#include "error.h"
#include <stdio.h>
#include <string.h>

/* SUPPORT_ONLY_TEXT_MODELS of auto-round 0.16.1 whose text stack is a family
 * ar runs (or, for Gemma 3, will run once config.c knows Gemma3ForCausalLM),
 * plus Mistral 3, whose text stack AutoRound also quantizes alone. Only the
 * Qwen2-VL configs of transformers 4 put the text keys at the top level
 * (their config classes read **kwargs into the text config when
 * text_config is absent); every other class needs text_config. Tying:
 * transformers 5 ties the head when the top-level tie_word_embeddings (the
 * class default when absent: Mistral3Config and Gemma3Config True, the
 * others False) or, for configs saved by transformers 4, text_config's says
 * so (LlavaConfig.__post_init__, Qwen2VLConfig's BC note). */
static const ar_mm_class classes[] = {
    {"Qwen2VLForConditionalGeneration", "qwen2_vl", "qwen2_vl_text", 1, 0},
    {"Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", "qwen2_5_vl_text", 1, 0},
    {"Qwen3VLForConditionalGeneration", "qwen3_vl", "qwen3_vl_text", 0, 0},
    {"Mistral3ForConditionalGeneration", "mistral3", "mistral", 0, 1},
    {"LlavaForConditionalGeneration", "llava", "llama", 0, 0},
    {"Gemma3ForConditionalGeneration", "gemma3", "gemma3_text", 0, 1},
};

/* Defaults of transformers 5's text config classes for the keys a diffed
 * config.json leaves out: Qwen2VLTextConfig and Qwen2_5_VLTextConfig
 * (rms_norm_eps 1e-05, rope_theta 1e6), Qwen3VLTextConfig (1e-6,
 * default_theta 5e5, head_dim 128), MistralConfig and LlamaConfig (1e-6,
 * 1e4), Gemma3TextConfig (1e-6, 1e6; head_dim 256). */
static const ar_mm_text texts[] = {
    {"qwen2_vl_text", "Qwen2ForCausalLM", 1e-5, 1e6, 0},
    {"qwen2_5_vl_text", "Qwen2ForCausalLM", 1e-5, 1e6, 0},
    {"qwen3_vl_text", "Qwen3ForCausalLM", 1e-6, 5e5, 128},
    {"mistral", "MistralForCausalLM", 1e-6, 1e4, 0},
    {"llama", "LlamaForCausalLM", 1e-6, 1e4, 0},
    {"qwen2", "Qwen2ForCausalLM", 1e-6, 1e4, 0},
    {"qwen3", "Qwen3ForCausalLM", 1e-6, 1e4, 128},
    {"gemma3_text", "Gemma3ForCausalLM", 1e-6, 1e6, 256},
};

const ar_mm_class *ar_mm_class_find(const char *arch, const char *model_type)
{
    for (size_t i = 0; i < sizeof classes / sizeof *classes; i++) {
        const ar_mm_class *k = &classes[i];
        if (arch && arch[0] ? !strcmp(arch, k->arch) : model_type && !strcmp(model_type, k->model_type)) return k;
    }
    return NULL;
}

const ar_mm_text *ar_mm_text_find(const char *model_type)
{
    for (size_t i = 0; model_type && i < sizeof texts / sizeof *texts; i++)
        if (!strcmp(model_type, texts[i].model_type)) return &texts[i];
    return NULL;
}

/* The layouts transformers has saved these classes in, newest first. */
static const ar_mm_names layouts[] = {
    {"model.language_model.", "lm_head.weight"},
    {"language_model.model.", "language_model.lm_head.weight"},
    {"model.", "lm_head.weight"},
};

int ar_mm_resolve(const char *arch, int (*has)(void *ctx, const char *name), void *ctx, ar_mm_names *out)
{
    char name[96];
    for (size_t i = 0; i < sizeof layouts / sizeof *layouts; i++) {
        if (snprintf(name, sizeof name, "%sembed_tokens.weight", layouts[i].prefix) >= (int)sizeof name) continue;
        int h = has(ctx, name);
        if (h < 0) return -1;
        if (h) { *out = layouts[i]; return 0; }
    }
    return ar_error("%s: no text decoder weights (no model.language_model.embed_tokens.weight, "
                    "language_model.model.embed_tokens.weight or model.embed_tokens.weight)", arch);
}

const char *ar_mm_map_name(const ar_mm_names *nm, const char *name, char *buf, size_t size)
{
    if (!strcmp(name, "lm_head.weight")) snprintf(buf, size, "%s", nm->head);
    else if (!strncmp(name, "lm_head.", 8)) {   /* a packed head's parts: lm_head.qweight, ... */
        size_t stem = strlen(nm->head) - strlen("weight");
        snprintf(buf, size, "%.*s%s", (int)stem, nm->head, name + 8);
    } else if (!strncmp(name, "model.", 6)) snprintf(buf, size, "%s%s", nm->prefix, name + 6);
    else snprintf(buf, size, "%s", name);
    return buf;
}

const char *ar_mm_unmap_name(const ar_mm_names *nm, const char *ckpt, char *buf, size_t size)
{
    size_t np = strlen(nm->prefix), nh = strlen(nm->head) - strlen("weight");
    if (!strcmp(ckpt, nm->head)) snprintf(buf, size, "lm_head.weight");
    else if (!strncmp(ckpt, nm->head, nh) && !strchr(ckpt + nh, '.')) snprintf(buf, size, "lm_head.%s", ckpt + nh);
    else if (!strncmp(ckpt, nm->prefix, np)) snprintf(buf, size, "model.%s", ckpt + np);
    else return NULL;
    return buf;
}

const char *ar_mm_module_name(const ar_mm_names *nm, const char *ckpt, char *buf, size_t size)
{
    char t[512];
    size_t nh = strlen(nm->head) - strlen(".weight");
    /* the head's module name ("language_model.lm_head") is its weight's name less ".weight" */
    if (!strncmp(ckpt, nm->head, nh) && (!ckpt[nh] || ckpt[nh] == '.')) snprintf(buf, size, "lm_head%s", ckpt + nh);
    else if (ar_mm_unmap_name(nm, ckpt, t, sizeof t) && !strncmp(t, "model.", 6))
        snprintf(buf, size, "model.language_model.%s", t + 6);
    else if (!strcmp(ckpt, nm->prefix) || (strlen(ckpt) + 1 == strlen(nm->prefix) && !strncmp(ckpt, nm->prefix, strlen(ckpt))))
        snprintf(buf, size, "model.language_model");
    else if (strncmp(ckpt, "model.", 6)) snprintf(buf, size, "model.%s", ckpt);
    else snprintf(buf, size, "%s", ckpt);
    return buf;
}
