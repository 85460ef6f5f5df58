/* test_output_names.c — AutoRound's output folders and llama.cpp's GGUF file
 * names (formats/output_names.h). Expected GGUF names were produced by gguf-py
 * 0.19 (gguf.Metadata.load(None, DIR, DIR.name, total) then
 * gguf.naming_convention) on folders made the same way as here; expected
 * folders by AutoRound 0.16.1 itself on stories260K where it runs on this
 * machine (docs/autoround-output.md records those runs). */
#include "fixture.h"
#include "output_names.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp_dir[] = "/tmp/ar_test_output_names_XXXXXX";

static void setup(void) { fx_make_tmp(tmp_dir); }
static void teardown(void) { fx_rm_rf(tmp_dir); }

TestSuite(output_names, .init = setup, .fini = teardown);

/* A model folder tmp_dir/<n>/<name> with optional config.json and README.md. */
static void make_model(char *path, size_t cap, int n, const char *name, const char *config, const char *readme)
{
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/%d", tmp_dir, n);
    mkdir(sub, 0755);
    snprintf(path, cap, "%s/%s", sub, name);
    cr_assert_eq(mkdir(path, 0755), 0, "%s", path);
    const char *files[2][2] = {{"config.json", config}, {"README.md", readme}};
    for (int i = 0; i < 2; i++) {
        if (!files[i][1]) continue;
        char f[1600];
        snprintf(f, sizeof f, "%s/%s", path, files[i][0]);
        FILE *fp = fopen(f, "w");
        cr_assert(fp);
        fputs(files[i][1], fp);
        fclose(fp);
    }
}

static void expect_name(int n, const char *dir, long long total, const char *config, const char *readme,
                        const char *ftype, const char *want)
{
    char model[1400], got[512];
    make_model(model, sizeof model, n, dir, config, readme);
    ar_gguf_param_count pc = {.total = total, .shared = total};
    cr_assert_eq(ar_gguf_file_name(model, &pc, ftype, got, sizeof got), 0);
    cr_expect_str_eq(got, want, "%s (%lld parameters): got %s, gguf-py %s", dir, total, got, want);
}

Test(output_names, gguf_names_from_folder_names)
{
    static const struct { const char *dir; long long total; const char *want; } cases[] = {
        {"stories260K", 292000LL, "stories260K-292K-Q4_K_M.gguf"},
        {"tiny-llama", 19923456LL, "tiny-llama-20M-Q4_K_M.gguf"},
        {"Llama-3.1-8B-Instruct", 8030261248LL, "Llama-3.1-8B-Instruct-Q4_K_M.gguf"},
        {"Qwen2.5-0.5B", 494032768LL, "Qwen2.5-0.5B-Q4_K_M.gguf"},
        {"Mistral-7B-v0.1", 7241732096LL, "Mistral-7B-v0.1-Q4_K_M.gguf"},
        {"bloom-7b1", 7069016064LL, "bloom-7.1B-Q4_K_M.gguf"},
        {"phi-2", 2779683840LL, "phi-2.8B-2-Q4_K_M.gguf"},
        {"Meta-Llama-3-8B-Instruct-128k", 8030261248LL, "Meta-Llama-3-8B-Instruct-128k-Q4_K_M.gguf"},
        {"gpt2-xl", 1557611200LL, "gpt2-xl-Q4_K_M.gguf"},
        {"TinyLlama-1.1B-Chat-v1.0", 1100048384LL, "TinyLlama-1.1B-Chat-v1.0-Q4_K_M.gguf"},
        {"Qwen3-30B-A3B", 30532122624LL, "Qwen3-30B-A3B-Q4_K_M.gguf"},
        {"mixtral-8x7B", 46702792704LL, "mixtral-8x7B-Q4_K_M.gguf"},
        {"opt-125m", 125239296LL, "opt-125M-Q4_K_M.gguf"},
        {"model.v2", 1000LL, "model.v2-1.0K-Q4_K_M.gguf"},
        {"my_model-q4_k_m", 5000000LL, "my_model-q4_k_m-5.0M-Q4_K_M.gguf"},
        {"SmolLM2-135M-Instruct", 134515008LL, "SmolLM2-135M-Instruct-Q4_K_M.gguf"},
        {"gemma-2-2b-it", 2614341888LL, "gemma-2-2B-it-Q4_K_M.gguf"},
        {"small-model-large", 100LL, "small-model-large-Q4_K_M.gguf"},
        {"x-7b-32k", 7000000000LL, "x-7B-32k-Q4_K_M.gguf"},
        {"a", 999500LL, "a-1000K-Q4_K_M.gguf"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_name((int)i, cases[i].dir, cases[i].total, NULL, NULL, "Q4_K_M", cases[i].want);
}

Test(output_names, gguf_names_from_config_and_model_card)
{
    expect_name(0, "snapshot", 6738415616LL, "{\"_name_or_path\": \"meta-llama/Llama-2-7b-hf\"}", NULL, "Q4_0",
                "Llama-2-7B-hf-Q4_0.gguf");
    /* a path, not a model id: ignored */
    expect_name(1, "snapshot", 6738415616LL, "{\"_name_or_path\": \"/home/x/meta-llama/Llama-2-7b-hf\"}", NULL, "Q4_0",
                "snapshot-6.7B-Q4_0.gguf");
    expect_name(2, "mymodel", 1000000LL, NULL,
                "---\nbasename: Custom Model\nsize_label: 7B\nfinetune: chat\nversion: 'v2'\n---\n# hi\n", "Q4_0",
                "Custom-Model-7B-chat-v2-Q4_0.gguf");
    expect_name(3, "mymodel", 1000000LL, NULL, "---\nmodel_type: llama\nlicense: mit\n---\n", "Q4_0",
                "llama-1000K-Q4_0.gguf");
    expect_name(4, "mymodel", 1000000LL, NULL, "# no front matter\nbasename: x\n", "Q4_0", "mymodel-1000K-Q4_0.gguf");
    /* a size far from the parameter count is a finetune (context length); the folder's size then fills in */
    expect_name(5, "Llama-2-7b-hf", 6738415616LL, "{\"_name_or_path\": \"org/Other-13B-chat\"}", NULL, "Q4_0",
                "Other-7B-13b-chat-Q4_0.gguf");
}

Test(output_names, size_labels)
{
    static const struct { long long n; const char *want; } cases[] = {
        {999, "1.0K"},      {1000, "1.0K"},   {260000, "260K"},      {292352, "292K"},
        {999999, "1000K"},  {1000001, "1.0M"}, {9950000, "10M"},     {19923456, "20M"},
        {125000000, "125M"}, {1500000000, "1.5B"}, {2500000, "2.5M"}, {3500000, "3.5M"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ar_gguf_param_count pc = {.total = cases[i].n, .shared = cases[i].n};
        char got[64];
        ar_gguf_size_label(&pc, got, sizeof got);
        cr_expect_str_eq(got, cases[i].want, "%lld: got %s, gguf-py %s", cases[i].n, got, cases[i].want);
    }
    ar_gguf_param_count moe = {.total = 46702792704LL, .shared = 1604000000LL, .expert = 5600000000LL, .expert_count = 8};
    char got[64];
    ar_gguf_size_label(&moe, got, sizeof got);
    cr_expect_str_eq(got, "8x7.2B");
}

static ar_tuned_attrs attrs(int bits, int group_size, int sym, const char *dt, int act_bits, const char *act_dt,
                            int act_dynamic)
{
    ar_tuned_attrs a = {.bits = bits, .group_size = group_size, .sym = sym, .act_bits = act_bits,
                        .act_dynamic = act_dynamic};
    snprintf(a.data_type, sizeof a.data_type, "%s", dt);
    snprintf(a.act_data_type, sizeof a.act_data_type, "%s", act_dt);
    return a;
}

static void expect_dir(const char *model, const char *formats, const char *fmt, ar_tuned_attrs a, int mixed,
                       const char *want)
{
    char run[256], got[1024];
    cr_assert_eq(ar_autoround_run_formats(formats, fmt, run, sizeof run), 0);
    cr_assert_eq(ar_autoround_output_dir(model, run, fmt, &a, mixed, got, sizeof got), 0);
    cr_expect_str_eq(got, want, "%s --format %s: %s: got %s, want %s", model, formats, fmt, got, want);
}

Test(output_names, autoround_folders)
{
    const char *M = "/work/shared/models/stories260K";
    ar_tuned_attrs w4 = attrs(4, 128, 1, "int", 16, "float", 1), w3a = attrs(3, 128, 0, "int", 16, "float", 1);
    ar_tuned_attrs w4a = attrs(4, 128, 0, "int", 16, "float", 1);
    /* AutoRound 0.16.1's own runs (tests/e2e/layout.test.sh) */
    expect_dir(M, "auto_round", "auto_round", w4, 0, "stories260K-w4g128");
    expect_dir(M, "auto_round,fake", "auto_round", w4, 0, "stories260K-w4g128/auto-round-auto-gptq");
    expect_dir(M, "auto_round,fake", "fake", w4, 0, "stories260K-w4g128/fake");
    expect_dir(M, "auto_round,auto_gptq", "auto_round", w3a, 0, "stories260K-w3g128/auto-round");
    expect_dir(M, "auto_round,auto_gptq", "auto_gptq", w3a, 0, "stories260K-w3g128/auto-gptq");
    ar_tuned_attrs w8 = attrs(8, 32, 1, "int", 16, "float", 1), mx4 = attrs(4, 32, 1, "mx_fp", 4, "mx_fp", 1);
    expect_dir(M, "auto_round,llm_compressor,auto_gptq", "auto_round", w8, 0, "stories260K-w8g32/auto-round-auto-gptq");
    expect_dir(M, "auto_round,llm_compressor,auto_gptq", "llm_compressor", w8, 0,
               "stories260K-w8g32/llm-compressor-wint-a16");
    expect_dir(M, "auto_round,llm_compressor,auto_gptq", "auto_gptq", w8, 0, "stories260K-w8g32/auto-gptq");
    expect_dir(M, "auto_round,llm_compressor", "auto_round", mx4, 0, "stories260K-mxfp-w4g32/auto-round-mx-fp");
    expect_dir(M, "auto_round,llm_compressor", "llm_compressor", mx4, 0, "stories260K-mxfp-w4g32/llm-compressor-mx-fp");
    expect_dir(M, "gguf:q4_0", "gguf:q4_0", w4, 0, "stories260K-gguf");
    expect_dir("/m/stories260K/", "gguf:q4_k_m,fake", "gguf:q4_k_m", w4, 0, "stories260K-gguf/gguf-q4-k-m");
    /* _get_export_dir's other branches */
    expect_dir(M, "auto_round,auto_awq", "auto_round", w4a, 0, "stories260K-w4g128/auto-round-auto-awq");
    expect_dir(M, "auto_round,auto_awq", "auto_round", w4a, 1, "stories260K-w4g128/auto-round");
    expect_dir(M, "auto_round", "auto_round", attrs(4, -1, 1, "int", 16, "float", 1), 0, "stories260K-w4a16");
    expect_dir(M, "auto_round", "auto_round", attrs(4, 32, 1, "mx_fp", 4, "mx_fp", 1), 0, "stories260K-mxfp-w4g32");
    expect_dir(M, "auto_round,llm_compressor", "auto_round", attrs(4, 16, 1, "nv_fp", 4, "nv_fp4_with_static_gs", 0),
               0, "stories260K-nvfp-w4g16/auto-round-nv-fp");
    expect_dir(M, "auto_round", "auto_round", attrs(8, -1, 1, "fp", 8, "fp", 0), 0, "stories260K-fp-w8afp8");
    ar_tuned_attrs blk = attrs(8, 128, 1, "fp", 8, "fp", 1);
    blk.group_2d = 1;
    expect_dir(M, "auto_round", "auto_round", blk, 0, "stories260K-fp-w8g128x128");
    expect_dir(".", "auto_round", "auto_round", w4, 0, "w4g128");
    expect_dir("./", "gguf:q4_0", "gguf:q4_0", w4, 0, "");
    /* GGUF beside other formats (AutoRound refuses it): written as its two runs would write them */
    expect_dir(M, "auto_round,gguf:q4_k_m", "auto_round", w4, 0, "stories260K-w4g128");
    expect_dir(M, "auto_round,gguf:q4_k_m", "gguf:q4_k_m", w4, 0, "stories260K-gguf");
    expect_dir(M, "auto_round,fake,gguf:q4_k_m", "fake", w4, 0, "stories260K-w4g128/fake");
}
