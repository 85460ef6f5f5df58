/* test_export_fp.c — pack → unpack round trips of the floating-point layers
 * (MXFP4, MXFP8, NVFP4, FP8 per tensor / channel / 128-style blocks) in the
 * auto_round and llm_compressor formats and of the compressed-tensors int
 * "pack-quantized" layout, read back through the quantized tensor source and
 * compared with the quantizer's own ŵ; quantization_config keys; refusals. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "error.h"
#include "export.h"
#include "fixture.h"
#include "hf_folder.h"
#include "quant.h"
#include "quant_fp.h"
#include "quantized_source.h"
#include "safetensors_writer.h"

#define H 64
#define NQ 96

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ar_test_export_fp_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) {}
}

TestSuite(export_fp, .init = setup, .fini = teardown);

/* Element j of fixture tensor i: smooth, with every 17th value an outlier. */
static float model_value(size_t i, size_t j) { return (float)sin(0.37 * j + i) * (j % 17 == 0 ? 3.0f : 0.2f); }

/* The fixture model in dir; qw receives q_proj (tensor 1) as stored, in bf16. */
static void make_model(const char *dir, float *qw)
{
    const fx_tensor t[] = {
        {"model.embed_tokens.weight", 2, {32, H}}, {"model.layers.0.self_attn.q_proj.weight", 2, {NQ, H}},
        {"model.norm.weight", 1, {H}}, {"lm_head.weight", 2, {32, H}}};
    fx_write_bf16_model(dir, t, sizeof t / sizeof t[0], model_value);
    for (size_t j = 0; j < (size_t)NQ * H; j++) qw[j] = ar_bf16_to_f32(ar_f32_to_bf16(model_value(1, j)));
    fx_write_text(dir, "config.json", "{\"architectures\": [\"LlamaForCausalLM\"], \"dtype\": \"bfloat16\"}\n");
}

typedef struct { const char *dt; int qdt, bits, group, g2d, act_bits, act_dyn; } fp_case;

/* Quantize q_proj with the case, export it in format, read it back. */
static void round_trip(const fp_case *c, const char *format, const char *want_fmt_key, const char *want_fmt)
{
    char model[300], out[300];
    snprintf(model, sizeof model, "%s/model", tmpdir);
    snprintf(out, sizeof out, "%s/out-%s-%s-%d-%d", tmpdir, format, c->dt, c->bits, c->group);
    static float w[NQ * H];
    if (access(model, F_OK)) make_model(model, w);
    int ng = ar_quant_ngroups(H, c->group);
    float *wq = malloc(sizeof(float) * NQ * H), *scale = malloc(sizeof(float) * NQ * ng);
    uint8_t *codes = malloc(NQ * H);
    int32_t *zp = malloc(sizeof(int32_t) * NQ * ng);
    ar_quant_spec qs = { .bits = c->bits, .group_size = c->group, .sym = 1,
                         .flags = c->g2d ? AR_QF_BLOCK2D : 0, .dtype = c->qdt };
    ar_quant_out o = {wq, codes, scale, zp};
    cr_assert_eq(ar_quant_forward(&qs, w, NQ, H, NULL, &o), 0, "%s", ar_last_error());
    ar_qlayer l = {.name = "model.layers.0.self_attn.q_proj", .n = NQ, .k = H, .bits = c->bits, .group_size = c->group,
                   .sym = 1, .codes = codes, .scale = scale, .zp = c->qdt == AR_QDT_INT ? zp : NULL,
                   .data_type = c->dt, .global_scale = ar_quant_fp_global_scale(&qs, w, NQ, H), .act_max = 2.5f,
                   .group_2d = c->g2d, .act_bits = c->act_bits, .act_group_size = c->group, .act_sym = 1,
                   .act_dynamic = c->act_dyn, .act_data_type = c->dt};
    ar_export_opts eo = {.format = format, .bits = c->bits, .group_size = c->group, .sym = 1, .data_type = c->dt,
                         .group_2d = c->g2d, .act_bits = c->act_bits, .act_group_size = c->group, .act_sym = 1,
                         .act_dynamic = c->act_dyn, .act_data_type = c->dt};
    ar_export *e = ar_export_open(model, out, &eo);
    cr_assert(e, "%s", ar_last_error());
    cr_assert_eq(ar_export_layer(e, &l), 0, "%s", ar_last_error());
    cr_assert_eq(ar_export_finish(e), 0, "%s", ar_last_error());
    char p[400];
    snprintf(p, sizeof p, "%s/config.json", out);
    char *cfg = hf_read_file(p, NULL);
    char want[200];
    snprintf(want, sizeof want, "\"%s\": \"%s\"", want_fmt_key, want_fmt);
    cr_expect(strstr(cfg, want), "%s/%s: config lacks %s:\n%s", format, c->dt, want, cfg);
    free(cfg);
    ar_tensor_source src;
    cr_assert_eq(ar_source_quantized(&src, out), 0, "%s", ar_last_error());
    int nd;
    int64_t shape[AR_SRC_MAX_DIMS];
    cr_assert_eq(src.shape(src.ctx, "model.layers.0.self_attn.q_proj.weight", &nd, shape), 0, "%s", ar_last_error());
    cr_assert(nd == 2 && shape[0] == NQ && shape[1] == H);
    float *back = malloc(sizeof(float) * NQ * H), *ref = malloc(sizeof(float) * NQ * H);
    cr_assert_eq(src.read_rows(src.ctx, "model.layers.0.self_attn.q_proj.weight", 0, NQ, back), 0, "%s", ar_last_error());
    ar_qlayer_dequant(&l, ref);
    int bad = 0;
    for (int i = 0; i < NQ * H && bad < 4; i++) {
        /* the exported codes and scales give the quantizer's ŵ back: read
         * back and dequantized exactly alike (the same f32 formula); against
         * the quantizer's own ŵ, each an f32 evaluation of code x scale (/
         * global scale for NVFP4) with up to two roundings: gamma_2 each */
        if (!fx_within(back[i], wq[i], 2 * fx_gamma(2) * fabsf(wq[i])) || back[i] != ref[i]) {
            bad++;
            cr_expect(0, "%s %s: w[%d] read back %.9g, quantizer %.9g, dequant %.9g", format, c->dt, i, back[i], wq[i], ref[i]);
        }
    }
    src.close(src.ctx);
    free(wq); free(scale); free(codes); free(zp); free(back); free(ref);
}

static const fp_case MX4 = {"mx_fp", AR_QDT_MXFP4, 4, 32, 0, 4, 1}, MX8 = {"mx_fp", AR_QDT_MXFP8, 8, 32, 0, 8, 1},
                     NV4 = {"nv_fp", AR_QDT_NVFP4, 4, 16, 0, 4, 1}, F8C = {"fp", AR_QDT_FP8, 8, -1, 0, 8, 0},
                     F8T = {"fp", AR_QDT_FP8, 8, 0, 0, 16, 1}, F8B = {"fp", AR_QDT_FP8, 8, 40, 1, 8, 1},
                     I4 = {"int", AR_QDT_INT, 4, 32, 0, 16, 1}, I8 = {"int", AR_QDT_INT, 8, -1, 0, 16, 1},
                     I2 = {"int", AR_QDT_INT, 2, 32, 0, 16, 1};

Test(export_fp, mxfp4_ct) { round_trip(&MX4, "llm_compressor", "format", "mxfp4-pack-quantized"); }
Test(export_fp, mxfp4_auto_round) { round_trip(&MX4, "auto_round", "packing_format", "auto_round:llm_compressor"); }
Test(export_fp, mxfp8_ct) { round_trip(&MX8, "llm_compressor", "format", "mxfp8-quantized"); }
Test(export_fp, mxfp8_auto_round) { round_trip(&MX8, "auto_round", "packing_format", "auto_round:llm_compressor"); }
Test(export_fp, nvfp4_ct) { round_trip(&NV4, "llm_compressor", "format", "nvfp4-pack-quantized"); }
Test(export_fp, nvfp4_auto_round) { round_trip(&NV4, "auto_round", "packing_format", "auto_round:llm_compressor"); }
Test(export_fp, fp8_channel_static_ct) { round_trip(&F8C, "llm_compressor", "format", "float-quantized"); }
Test(export_fp, fp8_channel_static_auto_round) { round_trip(&F8C, "auto_round", "packing_format", "auto_round:fp8_static"); }
Test(export_fp, fp8_tensor_ct) { round_trip(&F8T, "llm_compressor", "format", "float-quantized"); }
Test(export_fp, fp8_blocks_ct) { round_trip(&F8B, "llm_compressor", "strategy", "block"); }
Test(export_fp, fp8_blocks_auto_round) { round_trip(&F8B, "auto_round", "packing_format", "auto_round:fp8"); }
Test(export_fp, int4_pack_quantized) { round_trip(&I4, "llm_compressor", "format", "pack-quantized"); }
Test(export_fp, int8_channel_pack_quantized) { round_trip(&I8, "llm_compressor", "strategy", "channel"); }
Test(export_fp, int2_pack_quantized) { round_trip(&I2, "llm_compressor", "format", "pack-quantized"); }

Test(export_fp, gptq_layouts_refuse_fp_layers)
{
    char model[300], out[300];
    static float w[NQ * H];
    snprintf(model, sizeof model, "%s/model", tmpdir);
    snprintf(out, sizeof out, "%s/gptq", tmpdir);
    make_model(model, w);
    uint8_t codes[NQ * H] = {0};
    float scale[NQ * 2];
    for (int i = 0; i < NQ * 2; i++) scale[i] = 1.0f;
    ar_qlayer l = {.name = "model.layers.0.self_attn.q_proj", .n = NQ, .k = H, .bits = 4, .group_size = 32, .sym = 1,
                   .codes = codes, .scale = scale, .data_type = "mx_fp"};
    ar_export_opts eo = {.format = "auto_gptq", .bits = 4, .group_size = 32, .sym = 1};
    ar_export *e = ar_export_open(model, out, &eo);
    cr_assert(e, "%s", ar_last_error());
    cr_expect_neq(ar_export_layer(e, &l), 0);
    cr_expect(strstr(ar_last_error(), "no GPTQ/AWQ layout"), "%s", ar_last_error());
    ar_export_abort(e);
    ar_export_opts bad = {.format = "llm_compressor", .bits = 6, .group_size = 32, .sym = 1, .data_type = "mx_fp"};
    cr_expect_null(ar_export_open(model, out, &bad));
    cr_expect(strstr(ar_last_error(), "cannot be exported"), "%s", ar_last_error());
}
