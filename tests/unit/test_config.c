/* test_config.c — config.json parsing: the shared models, every supported
 * architecture's options, rope in its three homes, and malformed input. */
#include "config.h"
#include "config_check.h"
#include "error.h"
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *shared(void)
{
    const char *s = getenv("AR_SHARED");
    return s ? s : "../shared";
}

Test(config, stories260k)
{
    ar_config c;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared());
    cr_assert_eq(ar_config_load(&c, dir), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_LLAMA && c.hidden == 64 && c.intermediate == 172 && c.n_layers == 5);
    cr_assert(c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 8 && c.vocab == 512 && c.max_pos == 512);
    cr_assert(c.tie_embeddings && !c.qkv_bias && !c.qk_norm && c.bos_id == 1 && c.eos_id == 2);
    /* exact: JSON decimals parse to the same f32 / f64 constants */
    cr_assert_eq(c.rms_eps, 1e-5f);
    cr_assert_eq(c.rope_theta, 10000.0);
    cr_assert_eq(c.rope_type, AR_ROPE_DEFAULT);
    cr_assert_str_eq(c.torch_dtype, "float32");
}

Test(config, tiny_llama_rope_parameters)
{
    ar_config c;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/tiny-llama", shared());
    cr_assert_eq(ar_config_load(&c, dir), 0, "%s", ar_last_error());
    cr_assert(c.hidden == 512 && c.n_kv_heads == 2 && c.head_dim == 64 && !c.tie_embeddings && c.vocab == 4096);
    cr_assert_eq(c.rope_theta, 10000.0);
    cr_assert_str_eq(c.torch_dtype, "bfloat16");
}

static ar_config parse_ok(const char *json) { return cc_parse(json, 0); }

#define BASE "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100"

Test(config, qwen2_bias_and_sliding_window_switch)
{
    ar_config c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"num_key_value_heads\":2,"
                           "\"sliding_window\":32,\"use_sliding_window\":false,\"rope_theta\":1000000}");
    cr_assert(c.arch == AR_ARCH_QWEN2 && c.qkv_bias && !c.o_bias && c.sliding_window == 0 && c.head_dim == 16);
    cr_assert_eq(c.rope_theta, 1e6);
    c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"sliding_window\":32,"
                 "\"use_sliding_window\":true,\"max_window_layers\":1}");
    cr_assert(c.sliding_window == 32 && c.sliding_from_layer == 1);
}

Test(config, qwen3_qk_norm_and_head_dim)
{
    ar_config c = parse_ok("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE ",\"head_dim\":32}");
    cr_assert(c.arch == AR_ARCH_QWEN3 && c.qk_norm && c.head_dim == 32 && !c.qkv_bias);
    c = parse_ok("{\"model_type\":\"qwen3\"," BASE "}");
    cr_assert_eq(c.head_dim, 128, "Qwen3Config's default head_dim is 128");
}

Test(config, mistral_window_and_llama_biases)
{
    ar_config c = parse_ok("{\"architectures\":[\"MistralForCausalLM\"]," BASE ",\"sliding_window\":4096}");
    cr_assert(c.arch == AR_ARCH_MISTRAL && c.sliding_window == 4096 && c.sliding_from_layer == 0);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"attention_bias\":true,\"mlp_bias\":true,"
                 "\"eos_token_id\":[7,8],\"bos_token_id\":null}");
    cr_assert(c.qkv_bias && c.o_bias && c.mlp_bias && c.eos_id == 7 && c.bos_id == -1);
}

Test(config, rope_in_rope_scaling_llama3)
{
    ar_config c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_theta\":500000,"
                           "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
                           "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}");
    cr_assert(c.rope_type == AR_ROPE_LLAMA3 && c.rope_orig_max_pos == 8192);
    cr_assert_eq(c.rope_theta, 500000.0);
    cr_assert_eq(c.rope_factor, 8.0);
    cr_assert_eq(c.rope_high_freq_factor, 4.0);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}}");
    cr_assert(c.rope_type == AR_ROPE_LINEAR && c.rope_factor == 2.0 && c.rope_theta == 10000.0);
}

static void parse_fails(const char *json, const char *want) { cc_refused(json, want, 0); }

Test(config, bad_input)
{
    parse_fails("{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "}", "unsupported architecture GPT2LMHeadModel");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"], \"hidden_size\": }", "malformed JSON");
    parse_fails("[1,2]", "not a JSON object");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", "missing intermediate_size");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":3}", "not a multiple");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"mrope\"}}",
                "unsupported rope type mrope");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-5,\"intermediate_size\":8,"
                "\"num_hidden_layers\":1,\"num_attention_heads\":1,\"vocab_size\":4}", "hidden_size must be");
}

Test(config, missing_file_names_it)
{
    ar_config c;
    cr_assert_eq(ar_config_load(&c, "/nonexistent"), -1);
    cr_assert(strstr(ar_last_error(), "/nonexistent/config.json"), "%s", ar_last_error());
}

/* ---- mixtures of experts (issue 17): parsed with AR_CONFIG_ANY_ARCH only ---- */

static ar_config parse_any(const char *json) { return cc_parse(json, AR_CONFIG_ANY_ARCH); }

static void parse_any_fails(const char *json, const char *want) { cc_refused(json, want, AR_CONFIG_ANY_ARCH); }

#define QWEN3MOE "{\"architectures\":[\"Qwen3MoeForCausalLM\"]," BASE ",\"num_key_value_heads\":2,\"head_dim\":16"

Test(config, moe_runs_without_the_flag)
{
    /* every MoE family runs now (block_moe.c, block_deepseek.c, block_gptoss.c): parsed without the flag,
     * whichever way the family is named */
    const char *runs[] = {"Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM", "MixtralForCausalLM",
                          "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "GptOssForCausalLM"};
    ar_config c;
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        char json[512];
        snprintf(json, sizeof json, "{\"architectures\":[\"%s\"]," BASE ",\"num_experts_per_tok\":2}", runs[i]);
        cr_assert_eq(ar_config_parse(&c, json, "config.json"), 0, "%s: %s", runs[i], ar_last_error());
        cr_assert(ar_config_arch_runs(c.arch));
    }
    cr_assert_eq(ar_config_parse(&c, "{\"model_type\":\"gpt_oss\"," BASE "}", "config.json"), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_GPT_OSS);
    /* and the flag changes nothing for dense models */
    c = parse_any("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE "}");
    cr_assert(c.arch == AR_ARCH_QWEN3 && c.moe.n_experts == 0 && !ar_config_layer_moe(&c, 0));
}

Test(config, qwen3_moe_sparse_layers_and_defaults)
{
    ar_config c = parse_any("{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":256,"
                            "\"num_hidden_layers\":6,\"num_attention_heads\":4,\"vocab_size\":100,"
                            "\"num_experts\":8,\"num_experts_per_tok\":2,\"moe_intermediate_size\":32,"
                            "\"norm_topk_prob\":true,\"decoder_sparse_step\":2,\"mlp_only_layers\":[3]}");
    cr_assert(c.arch == AR_ARCH_QWEN3_MOE && c.qk_norm && c.moe.n_experts == 8 && c.moe.top_k == 2);
    cr_assert(c.moe.expert_intermediate == 32 && c.intermediate == 256 && c.moe.norm_topk_prob);
    cr_assert(c.moe.scoring == AR_ROUTER_SOFTMAX && c.moe.topk_method == AR_TOPK_GREEDY);
    cr_assert(c.moe.n_group == 1 && c.moe.topk_group == 1 && c.moe.routed_scaling_factor == 1.0);
    cr_assert(!c.moe.n_shared_experts && !c.moe.shared_expert_gate && !c.moe.router_bias);
    cr_assert_eq(c.head_dim, 16, "Qwen3-MoE's default head_dim is hidden / heads, not Qwen3's 128");
    /* (l+1) % 2 == 0 and l not in mlp_only_layers: layers 1 and 5 */
    int want[6] = {0, 1, 0, 0, 0, 1};
    for (int l = 0; l < 6; l++) cr_assert_eq(ar_config_layer_moe(&c, l), want[l], "layer %d", l);
    cr_assert_eq(c.moe.n_moe_layers, 2);
    /* class defaults when the keys are absent: 128 experts, top-8, 768 wide, no renormalisation */
    c = parse_any(QWEN3MOE "}");
    cr_assert(c.moe.n_experts == 128 && c.moe.top_k == 8 && c.moe.expert_intermediate == 768 && !c.moe.norm_topk_prob);
    cr_assert(c.moe.n_moe_layers == 2 && ar_config_layer_moe(&c, 0) && ar_config_layer_moe(&c, 1));
    /* transformers 5 writes num_local_experts for Qwen3-MoE */
    c = parse_any(QWEN3MOE ",\"num_local_experts\":4,\"num_experts_per_tok\":4}");
    cr_assert(c.moe.n_experts == 4 && c.moe.top_k == 4);
}

Test(config, qwen2_moe_shared_expert)
{
    ar_config c = parse_any("{\"architectures\":[\"Qwen2MoeForCausalLM\"]," BASE ",\"num_experts\":60,"
                            "\"num_experts_per_tok\":4,\"moe_intermediate_size\":1408,"
                            "\"shared_expert_intermediate_size\":5632}");
    cr_assert(c.arch == AR_ARCH_QWEN2_MOE && c.qkv_bias && !c.o_bias && !c.qk_norm);
    cr_assert(c.moe.n_shared_experts == 1 && c.moe.shared_expert_gate && c.moe.shared_intermediate == 5632);
    cr_assert(c.moe.expert_intermediate == 1408 && !c.moe.norm_topk_prob);
    c = parse_any("{\"architectures\":[\"Qwen2MoeForCausalLM\"]," BASE ",\"shared_expert_intermediate_size\":0,"
                  "\"qkv_bias\":false}");
    cr_assert(!c.moe.n_shared_experts && !c.moe.shared_expert_gate && !c.qkv_bias);
}

Test(config, mixtral_experts_are_intermediate_size)
{
    ar_config c = parse_any("{\"architectures\":[\"MixtralForCausalLM\"]," BASE ",\"num_key_value_heads\":2,"
                            "\"num_local_experts\":8,\"num_experts_per_tok\":2,\"sliding_window\":null}");
    cr_assert(c.arch == AR_ARCH_MIXTRAL && c.moe.n_experts == 8 && c.moe.top_k == 2);
    cr_assert(c.moe.expert_intermediate == 128 && c.moe.norm_topk_prob && !c.sliding_window);
    cr_assert(c.moe.n_moe_layers == 2 && ar_config_layer_moe(&c, 1) && !ar_config_layer_moe(&c, 2));
}

/* DSV3_A: sizes, MLA and yarn; then q_lora_rank and the routing keys, which tests vary (cJSON keeps the
 * first of duplicate keys, so a variant must not repeat one) */
#define DSV3_A "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"hidden_size\":128,\"intermediate_size\":256," \
    "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":4,\"vocab_size\":512," \
    "\"head_dim\":16,\"moe_intermediate_size\":128,\"n_shared_experts\":1,\"first_k_dense_replace\":1," \
    "\"norm_topk_prob\":true,\"kv_lora_rank\":128,\"qk_nope_head_dim\":32,\"v_head_dim\":32," \
    "\"rope_interleave\":true,\"rope_parameters\":{\"beta_fast\":32.0,\"beta_slow\":1.0,\"factor\":4.0," \
    "\"mscale\":1.0,\"mscale_all_dim\":1.0,\"original_max_position_embeddings\":256,\"rope_theta\":10000.0," \
    "\"rope_type\":\"yarn\"}"
#define DSV3_Q ",\"q_lora_rank\":128,\"qk_rope_head_dim\":16"
#define DSV3_R ",\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"routed_scaling_factor\":2.5"
#define DSV3_G ",\"n_group\":4,\"topk_group\":2"
#define DSV3 DSV3_A DSV3_Q DSV3_R DSV3_G

Test(config, deepseek_v3_mla_routing_and_yarn)
{
    /* the config make_tiny_moe.py writes (transformers 5.25) */
    ar_config c = parse_any(DSV3 "}");
    cr_assert(c.arch == AR_ARCH_DEEPSEEK_V3 && c.moe.n_experts == 8 && c.moe.top_k == 2);
    cr_assert(c.moe.scoring == AR_ROUTER_SIGMOID && c.moe.topk_method == AR_TOPK_NOAUX_TC && c.moe.score_correction_bias);
    cr_assert(c.moe.n_group == 4 && c.moe.topk_group == 2 && c.moe.norm_topk_prob);
    cr_assert_eq(c.moe.routed_scaling_factor, 2.5);
    cr_assert(c.moe.n_shared_experts == 1 && c.moe.shared_intermediate == 128 && !c.moe.shared_expert_gate);
    cr_assert(c.mla.q_lora_rank == 128 && c.mla.kv_lora_rank == 128 && c.mla.qk_nope_head_dim == 32);
    cr_assert(c.mla.qk_rope_head_dim == 16 && c.mla.v_head_dim == 32 && c.mla.rope_interleave);
    cr_assert_eq(c.head_dim, 48, "MLA's q/k head is nope + rope, not config.json's head_dim (= rope part)");
    cr_assert(!ar_config_layer_moe(&c, 0) && ar_config_layer_moe(&c, 1) && ar_config_layer_moe(&c, 2));
    cr_assert(c.rope_type == AR_ROPE_YARN && c.rope_orig_max_pos == 256 && c.rope_truncate);
    cr_assert(c.rope_factor == 4.0 && c.rope_beta_fast == 32.0 && c.rope_beta_slow == 1.0);
    cr_assert(c.rope_mscale == 1.0 && c.rope_mscale_all_dim == 1.0 && c.rope_attention_factor == 0.0);
    /* DeepSeek's own config.json spelling: scoring_func, topk_method, null q_lora_rank (V2-Lite style) */
    c = parse_any(DSV3_A DSV3_R DSV3_G ",\"scoring_func\":\"sigmoid\",\"topk_method\":\"noaux_tc\",\"q_lora_rank\":null}");
    cr_assert(c.mla.q_lora_rank == 0 && c.moe.scoring == AR_ROUTER_SIGMOID);
}

Test(config, deepseek_v2_defaults_and_group_limited)
{
    ar_config c = parse_any("{\"architectures\":[\"DeepseekV2ForCausalLM\"]," BASE ",\"num_experts_per_tok\":6,"
                            "\"n_routed_experts\":64,\"topk_method\":\"group_limited_greedy\",\"n_group\":8,"
                            "\"topk_group\":3,\"scoring_func\":\"softmax\",\"q_lora_rank\":null,"
                            "\"moe_layer_freq\":1,\"first_k_dense_replace\":1}");
    cr_assert(c.arch == AR_ARCH_DEEPSEEK_V2 && c.moe.scoring == AR_ROUTER_SOFTMAX);
    cr_assert(c.moe.topk_method == AR_TOPK_GROUP_LIMITED && c.moe.n_group == 8 && c.moe.topk_group == 3);
    cr_assert(c.moe.n_shared_experts == 2 && c.moe.expert_intermediate == 1407 && c.moe.shared_intermediate == 2814);
    cr_assert(c.moe.routed_scaling_factor == 1.0 && !c.moe.norm_topk_prob && !c.moe.score_correction_bias);
    cr_assert(c.mla.q_lora_rank == 0 && c.mla.kv_lora_rank == 512 && c.head_dim == 192);
    cr_assert(!ar_config_layer_moe(&c, 0) && ar_config_layer_moe(&c, 1));
}

Test(config, gpt_oss_sinks_layer_types_swiglu)
{
    ar_config c = parse_any("{\"architectures\":[\"GptOssForCausalLM\"],\"hidden_size\":128,\"intermediate_size\":128,"
                            "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                            "\"head_dim\":32,\"vocab_size\":512,\"num_local_experts\":8,\"experts_per_token\":2,"
                            "\"sliding_window\":32,\"layer_types\":[\"full_attention\",\"sliding_attention\","
                            "\"full_attention\"],\"swiglu_limit\":7.0,\"rope_parameters\":{\"rope_type\":\"yarn\","
                            "\"factor\":32.0,\"beta_fast\":32.0,\"beta_slow\":1.0,\"truncate\":false,"
                            "\"original_max_position_embeddings\":4096,\"rope_theta\":150000}}");
    cr_assert(c.arch == AR_ARCH_GPT_OSS && c.attn_sinks && c.qkv_bias && c.o_bias);
    cr_assert(c.moe.n_experts == 8 && c.moe.top_k == 2 && c.moe.expert_intermediate == 128);
    cr_assert(c.moe.scoring == AR_ROUTER_TOPK_SOFTMAX && c.moe.router_bias && c.moe.expert_bias && c.moe.fused_gate_up);
    cr_assert(c.moe.swiglu_limit == 7.0 && c.moe.swiglu_alpha == 1.702);
    cr_assert(c.sliding_window == 32 && c.layer_types);
    cr_assert(!ar_config_layer_sliding(&c, 0) && ar_config_layer_sliding(&c, 1) && !ar_config_layer_sliding(&c, 2));
    cr_assert(c.rope_type == AR_ROPE_YARN && !c.rope_truncate && c.rope_orig_max_pos == 4096);
    cr_assert_eq(c.rope_theta, 150000.0);
    /* no layer_types: even layers slide (transformers' default) */
    c = parse_any("{\"architectures\":[\"GptOssForCausalLM\"]," BASE ",\"sliding_window\":8}");
    cr_assert(ar_config_layer_sliding(&c, 0) && !ar_config_layer_sliding(&c, 1) && c.moe.top_k == 4);
    /* the dense families keep their window rule */
    c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"sliding_window\":32,"
                 "\"use_sliding_window\":true,\"max_window_layers\":1}");
    cr_assert(!ar_config_layer_sliding(&c, 0) && ar_config_layer_sliding(&c, 1));
}

Test(config, moe_bad_input)
{
    /* issue 17's three: top-k above the experts, unknown router scoring; missing expert tensors need the
     * tensor table (the model loader's check, docs/moe.md) */
    parse_any_fails(QWEN3MOE ",\"num_experts\":8,\"num_experts_per_tok\":9}", "num_experts_per_tok 9 exceeds the 8 experts");
    parse_any_fails("{\"architectures\":[\"MixtralForCausalLM\"]," BASE ",\"num_local_experts\":2,\"num_experts_per_tok\":3}",
                    "num_experts_per_tok 3 exceeds the 2 experts");
    parse_any_fails(DSV3 ",\"scoring_func\":\"sparsemax\"}", "unknown router scoring_func sparsemax");
    parse_any_fails(DSV3 ",\"scoring_func\":\"softmax\"}", "scoring_func softmax is not what DeepseekV3ForCausalLM computes");
    parse_any_fails(DSV3 ",\"topk_method\":\"random\"}", "unknown router topk_method random");
    parse_any_fails(DSV3 ",\"scoring_func\":3}", "scoring_func must be a string");
    /* the rest of the MoE keys */
    parse_any_fails(QWEN3MOE ",\"num_experts\":8,\"num_local_experts\":4}", "num_experts 8 and num_local_experts 4 disagree");
    parse_any_fails(QWEN3MOE ",\"num_experts\":0}", "num_experts must be an integer");
    parse_any_fails(QWEN3MOE ",\"num_experts_per_tok\":0}", "num_experts_per_tok must be an integer");
    parse_any_fails(QWEN3MOE ",\"mlp_only_layers\":[0,2]}", "mlp_only_layers entry is not a layer index in [0, 2)");
    parse_any_fails(QWEN3MOE ",\"mlp_only_layers\":5}", "mlp_only_layers must be a list");
    parse_any_fails(QWEN3MOE ",\"decoder_sparse_step\":0}", "decoder_sparse_step must be an integer");
    parse_any_fails(QWEN3MOE ",\"use_sliding_window\":true}", "use_sliding_window is not supported");
    parse_any_fails(DSV3_A DSV3_Q DSV3_R ",\"n_group\":3}", "n_group 3 does not divide the 8 experts");
    parse_any_fails(DSV3_A DSV3_Q DSV3_R ",\"n_group\":4,\"topk_group\":5}", "topk_group must be an integer in [1, 4]");
    parse_any_fails(DSV3_A DSV3_Q DSV3_R ",\"n_group\":8,\"topk_group\":1}", "noaux_tc routing needs at least 2 experts per group");
    parse_any_fails(DSV3_A DSV3_Q DSV3_G ",\"n_routed_experts\":8,\"num_experts_per_tok\":5}", "num_experts_per_tok 5 exceeds the 4 experts of the topk_group 2 kept groups");
    parse_any_fails(DSV3_A DSV3_R DSV3_G ",\"qk_rope_head_dim\":15}", "qk_rope_head_dim 15 is odd");
    parse_any_fails(DSV3_A DSV3_Q DSV3_G ",\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"routed_scaling_factor\":0}", "routed_scaling_factor must be positive");
    parse_any_fails(DSV3 ",\"moe_layer_freq\":2}", "moe_layer_freq 2 is not supported");
    parse_any_fails("{\"architectures\":[\"DeepseekV2ForCausalLM\"]," BASE "}", "missing num_experts_per_tok");
    parse_any_fails("{\"architectures\":[\"DeepseekV2ForCausalLM\"]," BASE ",\"num_experts_per_tok\":2,"
                    "\"topk_method\":\"group_limited_greedy\"}", "group_limited_greedy needs n_group and topk_group");
    parse_any_fails("{\"architectures\":[\"GptOssForCausalLM\"]," BASE ",\"layer_types\":[\"full_attention\"]}",
                    "layer_types must list one type for each of the 2 layers");
    parse_any_fails("{\"architectures\":[\"GptOssForCausalLM\"]," BASE ",\"layer_types\":[\"full_attention\",\"local\"]}",
                    "unknown layer type local");
    parse_any_fails("{\"architectures\":[\"GptOssForCausalLM\"]," BASE ",\"rope_parameters\":{\"rope_type\":\"yarn\","
                    "\"factor\":4,\"beta_fast\":1,\"beta_slow\":2}}", "yarn rope needs beta_fast > beta_slow > 0");
    parse_any_fails("{\"architectures\":[\"MixtralForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                    "\"num_hidden_layers\":2000,\"num_attention_heads\":4,\"vocab_size\":100}", "num_hidden_layers 2000 exceeds 1024");
    /* yarn stays refused for the dense families, whose forward has none */
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"mrope\"}}",
                "unsupported rope type mrope");
}

/* The tiny models of tests/fixtures/moe/make_tiny_moe.py, when they have been generated. */
Test(config, tiny_moe_models_when_built)
{
    const char *fam[] = {"qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "gpt_oss"};
    const ar_arch want[] = {AR_ARCH_QWEN3_MOE, AR_ARCH_QWEN2_MOE, AR_ARCH_MIXTRAL, AR_ARCH_DEEPSEEK_V3, AR_ARCH_GPT_OSS};
    for (int i = 0; i < 5; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "build/moe/%s", fam[i]);
        FILE *f = fopen("build/moe/heldout.txt", "r");
        if (!f) cr_skip_test("build/moe not generated (tests/fixtures/moe/make_tiny_moe.py)");
        fclose(f);
        char path[300];
        snprintf(path, sizeof path, "%s/config.json", dir);
        if (!(f = fopen(path, "r"))) continue;
        fclose(f);
        ar_config c;
        /* every family runs since DeepSeek-V3 (MLA) and gpt-oss (sinks) landed (docs/moe.md section 10) */
        cr_assert_eq(ar_config_load(&c, dir), 0, "%s: %s", dir, ar_last_error());
        cr_assert_eq(ar_config_load_flags(&c, dir, AR_CONFIG_ANY_ARCH), 0, "%s", ar_last_error());
        cr_assert(c.arch == want[i] && c.moe.n_experts == 8 && c.moe.top_k == 2 && c.hidden == 128, "%s", dir);
    }
}

/* ---- Phi-3, GLM-4 and the dense rope types (block_fused.h, rope_scaling.h) ---- */

#define PHI3 "{\"architectures\":[\"Phi3ForCausalLM\"]," BASE
#define GLM4 "{\"architectures\":[\"Glm4ForCausalLM\"]," BASE
#define LONGROPE(s, l) ",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":" s ",\"long_factor\":" l "}"

Test(config, phi3_longrope_and_defaults)
{
    ar_config c;
    /* head_dim 16, partial 0.5: 8 rotated dims, 4 factors; the top-level original context
     * (Phi-3's config) gives factor 4096/1024 = 4 and the attention factor sqrt(1 + ln 4 / ln 1024) */
    const char *j = PHI3 ",\"max_position_embeddings\":4096,\"original_max_position_embeddings\":1024,"
                    "\"partial_rotary_factor\":0.5" LONGROPE("[1,1,1,1]", "[1,2,3,4]") "}";
    cr_assert_eq(ar_config_parse(&c, j, "t"), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_PHI3 && c.fused_qkv && c.fused_gate_up && !c.post_norms && !c.qkv_bias);
    cr_assert(c.rope_type == AR_ROPE_LONGROPE && c.rope_dim == 8 && !c.rope_interleaved);
    cr_assert(c.rope_orig_max_pos == 1024 && c.rope_factor == 4.0);
    cr_assert(fabs(c.rope_attention_factor - sqrt(1 + log(4.0) / log(1024.0))) < 1e-15);
    cr_assert(c.rope_long_factor[3] == 4.0f && c.rope_short_factor[0] == 1.0f);
    cr_assert_eq(c.rms_eps, 1e-5f);   /* Phi3Config's default */
    /* an explicit factor and attention_factor win; "su" is longrope for Phi-3 */
    j = PHI3 ",\"max_position_embeddings\":4096,\"rope_scaling\":{\"type\":\"su\",\"factor\":2,\"attention_factor\":1.5,"
             "\"short_factor\":[1,1,1,1,1,1,1,1],\"long_factor\":[1,1,1,1,1,1,1,1]}}";
    cr_assert_eq(ar_config_parse(&c, j, "t"), 0, "%s", ar_last_error());
    cr_assert(c.rope_type == AR_ROPE_LONGROPE && c.rope_factor == 2.0 && c.rope_attention_factor == 1.5);
    cr_assert_eq(c.rope_orig_max_pos, 4096);   /* Phi3Config's default original context */
}

Test(config, glm4_defaults)
{
    ar_config c;
    cr_assert_eq(ar_config_parse(&c, GLM4 ",\"head_dim\":16}", "t"), 0, "%s", ar_last_error());
    cr_assert(c.arch == AR_ARCH_GLM4 && !c.fused_qkv && c.fused_gate_up && c.post_norms && c.qkv_bias);
    cr_assert(c.rope_dim == 8 && c.rope_interleaved);   /* partial_rotary_factor 0.5 by default */
    cr_assert_eq(c.rms_eps, 1.5625e-07f);
    cr_assert_eq(ar_config_parse(&c, GLM4 "}", "t"), 0, "%s", ar_last_error());
    cr_assert_eq(c.head_dim, 128);   /* Glm4Config's default head_dim */
    cr_assert_eq(ar_config_parse(&c, GLM4 ",\"head_dim\":16,\"attention_bias\":false}", "t"), 0);
    cr_assert(!c.qkv_bias);
}

Test(config, dense_yarn_and_dynamic)
{
    ar_config c;
    const char *j = "{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\","
                    "\"factor\":4,\"original_max_position_embeddings\":32768}}";
    cr_assert_eq(ar_config_parse(&c, j, "t"), 0, "%s", ar_last_error());
    cr_assert(c.rope_type == AR_ROPE_YARN && c.rope_factor == 4.0 && c.rope_orig_max_pos == 32768 && c.rope_dim == c.head_dim);
    j = "{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":2}}";
    cr_assert_eq(ar_config_parse(&c, j, "t"), 0, "%s", ar_last_error());
    cr_assert(c.rope_type == AR_ROPE_DYNAMIC && c.rope_factor == 2.0);
}

Test(config, phi3_glm4_bad_input)
{
    parse_fails(PHI3 LONGROPE("[1,1,1]", "[1,1,1,1,1,1,1,1]") "}", "longrope short_factor has 3 entries, rotary dims / 2 = 8");
    parse_fails(PHI3 LONGROPE("[1,1,1,1,1,1,1,0]", "[1,1,1,1,1,1,1,1]") "}", "longrope short_factor entry 7 is not a positive number");
    parse_fails(PHI3 ",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,1]}}",
                "longrope rope needs long_factor, a list of numbers");
    parse_fails(PHI3 ",\"partial_rotary_factor\":1.5}", "partial_rotary_factor must be in (0, 1]");
    parse_fails(PHI3 ",\"partial_rotary_factor\":0.1}", "gives 1 rotary dims of head_dim 16");
    parse_fails(PHI3 ",\"hidden_act\":\"gelu\"}", "hidden_act gelu is not supported (only silu)");
    parse_fails(GLM4 ",\"head_dim\":16,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}",
                "llama3 rope with a partial rotary factor is not supported");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"partial_rotary_factor\":0.5}",
                "partial_rotary_factor is not supported for LlamaForCausalLM");
}
