/* test_config.c — config.json parsing: the shared models, every supported
 * architecture's options, rope in its three homes, and malformed input. */
#include "config.h"
#include "error.h"
#include <criterion/criterion.h>
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

static ar_config parse_ok(const char *json)
{
    ar_config c;
    cr_assert_eq(ar_config_parse(&c, json, "t/config.json"), 0, "%s", ar_last_error());
    return c;
}

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

static void parse_fails(const char *json, const char *want)
{
    ar_config c;
    cr_assert_eq(ar_config_parse(&c, json, "t/config.json"), -1, "accepted (%s)", want);
    cr_assert(strstr(ar_last_error(), want), "'%s' lacks '%s'", ar_last_error(), want);
    cr_assert(strstr(ar_last_error(), "t/config.json"), "'%s' lacks the path", ar_last_error());
}

Test(config, bad_input)
{
    parse_fails("{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "}", "unsupported architecture GPT2LMHeadModel");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"], \"hidden_size\": }", "malformed JSON");
    parse_fails("[1,2]", "not a JSON object");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", "missing intermediate_size");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":3}", "not a multiple");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\"}}",
                "unsupported rope type yarn");
    parse_fails("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-5,\"intermediate_size\":8,"
                "\"num_hidden_layers\":1,\"num_attention_heads\":1,\"vocab_size\":4}", "hidden_size must be");
}

Test(config, missing_file_names_it)
{
    ar_config c;
    cr_assert_eq(ar_config_load(&c, "/nonexistent"), -1);
    cr_assert(strstr(ar_last_error(), "/nonexistent/config.json"), "%s", ar_last_error());
}
