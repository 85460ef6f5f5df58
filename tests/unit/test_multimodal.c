/* test_multimodal.c — vision-language configs read as their text decoder
 * (multimodal.h): text_config and the defaults of transformers 5's text
 * config classes, the legacy top-level Qwen2-VL layout, M-RoPE, tying as the
 * top-level config decides it, the errors; and the names between text-only
 * and the three checkpoint layouts. Expected values are read off transformers
 * 5.25's configuration_*.py (cited per test). */
#include "config.h"
#include "error.h"
#include "multimodal.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#define SIZES "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, " \
              "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 128"

static ar_config parse_ok(const char *json)
{
    ar_config c;
    cr_assert_eq(ar_config_parse(&c, json, "t/config.json"), 0, "%s", ar_last_error());
    return c;
}

static void parse_fails(const char *json, const char *msg)
{
    ar_config c;
    cr_assert_eq(ar_config_parse(&c, json, "t/config.json"), -1);
    cr_assert(strstr(ar_last_error(), msg), "error '%s' lacks '%s'", ar_last_error(), msg);
}

/* Qwen3VLTextConfig: head_dim 128, rms_norm_eps 1e-6, default_theta 5e5;
 * interleaved M-RoPE is rope_type default with extra keys. */
Test(multimodal, qwen3_vl_text_config_defaults)
{
    ar_config c = parse_ok("{\"architectures\": [\"Qwen3VLForConditionalGeneration\"], \"model_type\": \"qwen3_vl\","
                           "\"text_config\": {\"model_type\": \"qwen3_vl_text\", " SIZES ", \"rope_parameters\": "
                           "{\"rope_type\": \"default\", \"mrope_section\": [8, 4, 4], \"mrope_interleaved\": true}},"
                           "\"vision_config\": {\"hidden_size\": 32}}");
    cr_assert_eq(c.arch, AR_ARCH_QWEN3);
    cr_assert_str_eq(c.arch_name, "Qwen3ForCausalLM");
    cr_assert_str_eq(c.mm_arch, "Qwen3VLForConditionalGeneration");
    cr_assert(c.hidden == 64 && c.head_dim == 128 && c.qk_norm && !c.qkv_bias && !c.tie_embeddings);
    cr_assert_eq(c.rope_theta, 500000.0);
    cr_assert_eq(c.rms_eps, 1e-6f);
    cr_assert_eq(c.rope_type, AR_ROPE_DEFAULT);
}

/* transformers 4's Qwen2-VL: text keys at the top level, rope_scaling type
 * "mrope" (Qwen2VLTextConfig renames it to default); Qwen2 attention biases;
 * rms_norm_eps 1e-05 and rope_theta 1e6 by default. */
Test(multimodal, qwen2_vl_legacy_top_level)
{
    ar_config c = parse_ok("{\"architectures\": [\"Qwen2VLForConditionalGeneration\"], \"model_type\": \"qwen2_vl\", "
                           SIZES ", \"rope_scaling\": {\"type\": \"mrope\", \"mrope_section\": [8, 4, 4]}}");
    cr_assert_eq(c.arch, AR_ARCH_QWEN2);
    cr_assert(c.qkv_bias && !c.o_bias && c.head_dim == 16 && !c.tie_embeddings);
    cr_assert_eq(c.rms_eps, 1e-5f);
    cr_assert_eq(c.rope_theta, 1e6);
    /* "mrope" is refused where no multimodal class makes it plain RoPE */
    parse_fails("{\"architectures\": [\"Qwen2ForCausalLM\"], " SIZES ", \"rope_scaling\": {\"type\": \"mrope\"}}",
                "unsupported rope type mrope");
}

/* Tying: the top-level key, else the class default (Mistral3Config True,
 * LlavaConfig False), or text_config's as transformers 4 wrote it. */
Test(multimodal, tying_follows_the_top_level)
{
    const char *tc = "\"text_config\": {\"model_type\": \"mistral\", " SIZES "}";
    char j[1024];
    snprintf(j, sizeof j, "{\"architectures\": [\"Mistral3ForConditionalGeneration\"], %s}", tc);
    ar_config c = parse_ok(j);
    cr_assert(c.tie_embeddings && c.arch == AR_ARCH_MISTRAL);
    snprintf(j, sizeof j, "{\"architectures\": [\"Mistral3ForConditionalGeneration\"], \"tie_word_embeddings\": false, %s}", tc);
    cr_assert(!parse_ok(j).tie_embeddings);
    c = parse_ok("{\"architectures\": [\"LlavaForConditionalGeneration\"], \"text_config\": {\"model_type\": \"llama\", "
                 SIZES "}}");
    cr_assert(!c.tie_embeddings && c.arch == AR_ARCH_LLAMA);
    c = parse_ok("{\"architectures\": [\"LlavaForConditionalGeneration\"], \"text_config\": {\"model_type\": \"llama\", "
                 "\"tie_word_embeddings\": true, " SIZES "}}");
    cr_assert(c.tie_embeddings);
}

Test(multimodal, errors)
{
    parse_fails("{\"architectures\": [\"Mistral3ForConditionalGeneration\"], \"vision_config\": {}}",
                "t/config.json: Mistral3ForConditionalGeneration config has no text_config");
    /* Qwen2-VL without text_config nor top-level text keys */
    parse_fails("{\"architectures\": [\"Qwen2VLForConditionalGeneration\"], \"vision_config\": {}}",
                "Qwen2VLForConditionalGeneration config has no text_config");
    parse_fails("{\"architectures\": [\"Mistral3ForConditionalGeneration\"], \"text_config\": 3}",
                "text_config of Mistral3ForConditionalGeneration is not an object");
    parse_fails("{\"architectures\": [\"Mistral3ForConditionalGeneration\"], \"text_config\": {\"model_type\": \"mistral\"}}",
                "missing hidden_size");
    parse_fails("{\"architectures\": [\"LlavaForConditionalGeneration\"], \"text_config\": {\"model_type\": \"opt\", "
                SIZES "}}", "unsupported architecture opt (the text model of LlavaForConditionalGeneration)");
}

/* ---- names ------------------------------------------------------------------- */

static const char *const *present;   /* the fake checkpoint's names */

static int has(void *ctx, const char *name)
{
    (void)ctx;
    for (const char *const *p = present; *p; p++)
        if (!strcmp(*p, name)) return 1;
    return 0;
}

Test(multimodal, layouts_and_names)
{
    static const char *const v5[] = {"model.visual.blocks.0.attn.qkv.weight", "model.language_model.embed_tokens.weight", NULL};
    static const char *const llava4[] = {"vision_tower.x.weight", "language_model.model.embed_tokens.weight", NULL};
    static const char *const qwen4[] = {"visual.blocks.0.attn.qkv.weight", "model.embed_tokens.weight", NULL};
    static const char *const none[] = {"visual.blocks.0.attn.qkv.weight", NULL};
    ar_mm_names nm;
    char b[256];

    present = v5;
    cr_assert_eq(ar_mm_resolve("X", has, NULL, &nm), 0);
    cr_assert_str_eq(ar_mm_map_name(&nm, "model.layers.1.mlp.up_proj.weight", b, sizeof b),
                     "model.language_model.layers.1.mlp.up_proj.weight");
    cr_assert_str_eq(ar_mm_map_name(&nm, "lm_head.weight", b, sizeof b), "lm_head.weight");
    cr_assert_null(ar_mm_unmap_name(&nm, "model.visual.blocks.0.attn.qkv.weight", b, sizeof b));
    cr_assert_str_eq(ar_mm_module_name(&nm, "model.visual.blocks.0.attn.qkv", b, sizeof b), "model.visual.blocks.0.attn.qkv");

    present = llava4;
    cr_assert_eq(ar_mm_resolve("X", has, NULL, &nm), 0);
    cr_assert_str_eq(ar_mm_map_name(&nm, "lm_head.weight", b, sizeof b), "language_model.lm_head.weight");
    cr_assert_str_eq(ar_mm_map_name(&nm, "lm_head.qweight", b, sizeof b), "language_model.lm_head.qweight");
    cr_assert_str_eq(ar_mm_map_name(&nm, "model.norm.weight", b, sizeof b), "language_model.model.norm.weight");
    cr_assert_str_eq(ar_mm_unmap_name(&nm, "language_model.lm_head.weight", b, sizeof b), "lm_head.weight");
    cr_assert_str_eq(ar_mm_unmap_name(&nm, "language_model.model.layers.0.self_attn.q_proj.weight", b, sizeof b),
                     "model.layers.0.self_attn.q_proj.weight");
    cr_assert_null(ar_mm_unmap_name(&nm, "vision_tower.x.weight", b, sizeof b));
    cr_assert_str_eq(ar_mm_module_name(&nm, "language_model.model.layers.0.mlp.up_proj", b, sizeof b),
                     "model.language_model.layers.0.mlp.up_proj");
    cr_assert_str_eq(ar_mm_module_name(&nm, "language_model.model.layers", b, sizeof b), "model.language_model.layers");
    cr_assert_str_eq(ar_mm_module_name(&nm, "language_model.lm_head", b, sizeof b), "lm_head");
    cr_assert_str_eq(ar_mm_module_name(&nm, "vision_tower.x", b, sizeof b), "model.vision_tower.x");

    present = qwen4;
    cr_assert_eq(ar_mm_resolve("X", has, NULL, &nm), 0);
    cr_assert_str_eq(ar_mm_map_name(&nm, "model.layers.0.self_attn.q_proj.bias", b, sizeof b),
                     "model.layers.0.self_attn.q_proj.bias");
    cr_assert_str_eq(ar_mm_module_name(&nm, "model.layers.0.self_attn.q_proj", b, sizeof b),
                     "model.language_model.layers.0.self_attn.q_proj");
    cr_assert_str_eq(ar_mm_module_name(&nm, "visual.blocks.0.attn.qkv", b, sizeof b), "model.visual.blocks.0.attn.qkv");
    cr_assert_str_eq(ar_mm_module_name(&nm, "lm_head", b, sizeof b), "lm_head");

    present = none;
    cr_assert_eq(ar_mm_resolve("Qwen2VLForConditionalGeneration", has, NULL, &nm), -1);
    cr_assert(strstr(ar_last_error(), "Qwen2VLForConditionalGeneration: no text decoder weights"), "%s", ar_last_error());
}

/* Gemma 3's text family plugs in by its class name (config.c's Gemma3ForCausalLM). */
Test(multimodal, gemma3_text_stack)
{
    ar_config c = parse_ok("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"text_config\": "
                           "{\"model_type\": \"gemma3_text\", " SIZES "}}");
    cr_assert_eq(c.arch, AR_ARCH_GEMMA3);
    cr_assert(c.norm_plus_one && c.sandwich_norm);
}
