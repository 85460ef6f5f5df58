/* test_scheme.c — presets against spec §4.1, overrides, default lr (§2.7),
 * layer_config parsing and the per-layer decision (§1.3), malformed files. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "scheme.h"

Test(scheme, int_presets_from_the_spec_table)
{
    struct { const char *name; int bits, g; } want[] = {
        { "W2A16", 2, 128 }, { "w3a16", 3, 128 }, { "W4A16", 4, 128 }, { "W8A16", 8, 128 },
        { "w2a16g64", 2, 64 }, { "W2A16G32", 2, 32 }, { "W4A16_MIXED", 4, 128 },
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        ar_scheme s;
        cr_assert_eq(ar_scheme_preset(&s, want[i].name), 0, "%s", ar_last_error());
        cr_assert_eq(s.bits, want[i].bits); cr_assert_eq(s.group_size, want[i].g);
        cr_assert_eq(s.sym, 1); cr_assert_str_eq(s.data_type, "int");
        cr_assert_eq(s.act_bits, 16); cr_assert_str_eq(s.act_data_type, "float");
        cr_assert_eq(s.act_group_size, want[i].g); cr_assert_eq(s.act_dynamic, 1);
        cr_assert(ar_scheme_is_int(&s), "%s should be int", want[i].name);
        cr_assert_eq(s.scale_f32, 0);
    }
}

Test(scheme, non_int_presets_parse_but_are_not_int)
{
    const char *names[] = { "MXFP4", "nvfp4", "FP8_STATIC", "FPW8A16", "FP8_BLOCK", "gguf:q4_k_m", "GGUF:Q2_K_S",
                            "GGUF:Q8_0", "INT8", "BF16", "MXINT4" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        ar_scheme s;
        cr_assert_eq(ar_scheme_preset(&s, names[i]), 0, "%s: %s", names[i], ar_last_error());
        cr_assert(!ar_scheme_is_int(&s), "%s must not be handled as int weight-only", names[i]);
    }
    ar_scheme s;
    ar_scheme_preset(&s, "gguf:q4_k_m");
    cr_assert_str_eq(s.name, "GGUF:Q4_K_M");
    cr_assert_eq(s.kind, AR_SCHEME_GGUF); cr_assert_eq(s.bits, 4); cr_assert_eq(s.group_size, 32);
    cr_assert_eq(s.sym, 0); cr_assert_str_eq(s.data_type, "int_asym_dq");
    cr_assert_eq(s.super_bits, 6); cr_assert_eq(s.super_group_size, 8); cr_assert_eq(s.scale_f32, 1);
    ar_scheme_preset(&s, "NVFP4");
    cr_assert_eq(s.kind, AR_SCHEME_NVFP); cr_assert_eq(s.group_size, 16); cr_assert_eq(s.act_bits, 4);
    cr_assert_str_eq(s.act_data_type, "nv_fp4_with_static_gs");
    ar_scheme_preset(&s, "FP8_STATIC");
    cr_assert_eq(s.group_size, -1); cr_assert_eq(s.act_group_size, 0); cr_assert_eq(s.act_dynamic, 0);
}

Test(scheme, unknown_preset_is_an_error)
{
    ar_scheme s;
    cr_assert_eq(ar_scheme_preset(&s, "W4A17"), -1);
    cr_assert(strstr(ar_last_error(), "W4A17"), "%s", ar_last_error());
}

Test(scheme, overrides)
{
    ar_scheme s;
    ar_scheme_preset(&s, "W4A16");
    cr_assert_eq(ar_scheme_override(&s, 3, 64, 0), 0);
    cr_assert_eq(s.bits, 3); cr_assert_eq(s.group_size, 64); cr_assert_eq(s.sym, 0);
    cr_assert_eq(s.act_group_size, 64);
    cr_assert_eq(ar_scheme_override(&s, AR_UNSET, -1, AR_UNSET), 0);
    cr_assert_eq(s.bits, 3); cr_assert_eq(s.group_size, -1); cr_assert_eq(s.sym, 0);
    cr_assert_eq(ar_scheme_override(&s, 9, AR_UNSET, AR_UNSET), -1);
    cr_assert(strstr(ar_last_error(), "--bits 9"));
    cr_assert_eq(ar_scheme_override(&s, AR_UNSET, -5, AR_UNSET), -1);
}

Test(scheme, default_lr)
{
    cr_assert_eq(ar_scheme_default_lr(4, 200), 1.0 / 200);
    cr_assert_eq(ar_scheme_default_lr(2, 200), 1.0 / 200);    /* < 1000 iters: no doubling */
    cr_assert_eq(ar_scheme_default_lr(3, 1000), 2.0 / 1000);
    cr_assert_eq(ar_scheme_default_lr(4, 1000), 1.0 / 1000);
    cr_assert_eq(ar_scheme_default_lr(2, 0), 0.0);
}

static const char *cfg_json =
    "{\n"
    "  \"model.layers.0.mlp.down_proj\": {\"bits\": 8, \"group_size\": 32, \"sym\": false},\n"
    "  \"down_proj\": {\"bits\": 3},\n"
    "  \"self_attn.*_proj$\": {\"bits\": 16},\n"
    "  \"model.layers.1.self_attn.o_proj\": \"W8A16\",\n"
    "  \"up_proj\": {\"data_type\": \"mx_fp4\", \"group_size\": 32}\n"
    "}\n";

static void layer(const ar_scheme *def, const ar_layer_config *lc, const char *name, int n, int k, ar_scheme *out)
{
    ar_layer_info info = { 0 };
    cr_assert_eq(ar_scheme_for_layer(def, lc, name, n, k, &info, out), 0);
}

Test(layer_config, exact_name_then_regex_then_default)
{
    ar_scheme def, s;
    ar_scheme_preset(&def, "W4A16");
    ar_layer_config *lc = ar_layer_config_parse(cfg_json, "cfg.json");
    cr_assert_not_null(lc, "%s", ar_last_error());
    cr_assert_eq(ar_layer_config_count(lc), 5);

    layer(&def, lc, "model.layers.0.mlp.down_proj", 64, 256, &s);     /* exact wins over "down_proj" */
    cr_assert_eq(s.bits, 8); cr_assert_eq(s.group_size, 32); cr_assert_eq(s.sym, 0);
    cr_assert(ar_scheme_is_int(&s));
    layer(&def, lc, "model.layers.5.mlp.down_proj", 64, 256, &s);     /* substring key */
    cr_assert_eq(s.bits, 3); cr_assert_eq(s.group_size, 128); cr_assert_eq(s.sym, 1);
    layer(&def, lc, "model.layers.5.self_attn.q_proj", 64, 64, &s);   /* regex: 16 = keep */
    cr_assert(!ar_scheme_quantized(&s)); cr_assert_eq(s.kind, AR_SCHEME_FLOAT);
    /* "model.layers.1.self_attn.o_proj" is exact, so it beats the regex above. */
    layer(&def, lc, "model.layers.1.self_attn.o_proj", 64, 64, &s);
    cr_assert_eq(s.bits, 8); cr_assert_eq(s.group_size, 128);
    layer(&def, lc, "model.layers.2.mlp.up_proj", 64, 64, &s);         /* data type implies bits */
    cr_assert_eq(s.kind, AR_SCHEME_MXFP); cr_assert_eq(s.bits, 4); cr_assert(!ar_scheme_is_int(&s));
    layer(&def, lc, "model.layers.2.mlp.gate_proj", 64, 64, &s);       /* no entry: default */
    cr_assert_eq(s.bits, 4); cr_assert_eq(s.group_size, 128);
    /* The regex needs "_proj" at the end: a longer name does not match it. */
    layer(&def, lc, "model.layers.2.self_attn.q_proj_extra", 64, 64, &s);
    cr_assert_eq(s.bits, 4);
    ar_layer_config_free(lc);
}

Test(layer_config, later_matching_key_wins)
{
    ar_scheme def, s;
    ar_scheme_preset(&def, "W4A16");
    ar_layer_config *lc = ar_layer_config_parse("{\"mlp\": {\"bits\": 2}, \"proj\": {\"bits\": 8}}", "x.json");
    cr_assert_not_null(lc);
    layer(&def, lc, "model.layers.0.mlp.up_proj", 64, 64, &s);
    cr_assert_eq(s.bits, 8);
    ar_layer_config_free(lc);
}

Test(layer_config, shape_rule_overrides_entries_for_int_defaults)
{
    ar_scheme def, s;
    ar_scheme_preset(&def, "W4A16");
    ar_layer_config *lc = ar_layer_config_parse("{\"odd\": {\"bits\": 8}}", "x.json");
    layer(&def, lc, "odd", 64, 100, &s);
    cr_assert(!ar_scheme_quantized(&s), "K %% 32 != 0 must stay 16-bit");
    layer(&def, NULL, "any", 48, 64, &s);
    cr_assert(!ar_scheme_quantized(&s), "N %% 32 != 0 must stay 16-bit");
    layer(&def, NULL, "any", 96, 64, &s);
    cr_assert(ar_scheme_quantized(&s));
    ar_scheme_preset(&def, "MXFP4");
    layer(&def, NULL, "any", 48, 64, &s);                         /* MX only looks at K % 32 */
    cr_assert(ar_scheme_quantized(&s));
    layer(&def, NULL, "any", 64, 48, &s);
    cr_assert(!ar_scheme_quantized(&s));
    ar_layer_config_free(lc);
}

Test(layer_config, lm_head_only_when_asked_and_not_tied)
{
    ar_scheme def, s;
    ar_scheme_preset(&def, "W4A16");
    ar_layer_info info = { .is_lm_head = 1 };
    cr_assert_eq(ar_scheme_for_layer(&def, NULL, "lm_head", 1024, 64, &info, &s), 0);
    cr_assert(!ar_scheme_quantized(&s));
    info.quant_lm_head = 1;
    cr_assert_eq(ar_scheme_for_layer(&def, NULL, "lm_head", 1024, 64, &info, &s), 0);
    cr_assert(ar_scheme_quantized(&s));
    info.tied = 1;
    cr_assert_eq(ar_scheme_for_layer(&def, NULL, "lm_head", 1024, 64, &info, &s), 0);
    cr_assert(!ar_scheme_quantized(&s));
    /* Naming lm_head in layer_config also asks for it. */
    ar_layer_config *lc = ar_layer_config_parse("{\"lm_head\": {\"bits\": 8}}", "x.json");
    ar_layer_info info2 = { .is_lm_head = 1 };
    cr_assert_eq(ar_scheme_for_layer(&def, lc, "lm_head", 1024, 64, &info2, &s), 0);
    cr_assert_eq(s.bits, 8);
    ar_layer_config_free(lc);
}

Test(layer_config, w4a16_mixed_recipe)
{
    ar_scheme def, s;
    ar_scheme_preset(&def, "W4A16_MIXED");
    layer(&def, NULL, "model.layers.0.mlp.experts.3.up_proj", 64, 64, &s);
    cr_assert_eq(s.bits, 4);
    layer(&def, NULL, "model.layers.0.mlp.shared_expert.up_proj", 64, 64, &s);
    cr_assert_eq(s.bits, 8);
    layer(&def, NULL, "model.layers.0.self_attn.q_proj", 64, 64, &s);
    cr_assert_eq(s.bits, 8);
}

static void expect_parse_error(const char *json, const char *needle)
{
    ar_layer_config *lc = ar_layer_config_parse(json, "bad_cfg.json");
    cr_assert_null(lc, "parsed: %s", json);
    cr_assert(strstr(ar_last_error(), "bad_cfg.json"), "message must name the file: %s", ar_last_error());
    cr_assert(strstr(ar_last_error(), needle), "message '%s' lacks '%s'", ar_last_error(), needle);
}

Test(layer_config, malformed_files_give_clear_errors)
{
    expect_parse_error("{\"a\": {\"bits\": 8,}", "malformed JSON");
    expect_parse_error("[1, 2]", "must be a JSON object");
    expect_parse_error("{\"a\": {\"bitz\": 8}}", "unknown key \"bitz\"");
    expect_parse_error("{\"a\": {\"bits\": \"8\"}}", "\"bits\" must be an integer");
    expect_parse_error("{\"a\": {\"sym\": 1}}", "\"sym\" must be true or false");
    expect_parse_error("{\"a\": 8}", "expected an object or a preset name");
    expect_parse_error("{\"a\": \"W9A16\"}", "unknown scheme");
    expect_parse_error("{\"(unclosed\": {\"bits\": 8}}", "bad regex");
}

Test(layer_config, load_from_file_and_missing_file)
{
    char path[] = "/tmp/ar_test_layer_config_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(cfg_json, f);
    fclose(f);
    ar_layer_config *lc = ar_layer_config_load(path);
    cr_assert_not_null(lc, "%s", ar_last_error());
    cr_assert_eq(ar_layer_config_count(lc), 5);
    ar_layer_config_free(lc);
    unlink(path);
    cr_assert_null(ar_layer_config_load("/nonexistent/lc.json"));
    cr_assert(strstr(ar_last_error(), "/nonexistent/lc.json"));
}
