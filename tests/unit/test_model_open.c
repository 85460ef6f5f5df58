/* test_model_open.c — ar_model_open_any and friends: the kind of each path,
 * the source each kind gets (a packed layer read back as scale·(code − zp)
 * computed here by hand, a plain folder equal to its safetensors, a GGUF F32
 * file equal to the folder it came from), and the one-line errors. */
#include "error.h"
#include "export.h"
#include "gguf.h"
#include "model_open.h"
#include "safetensors.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp[256];
static char stories[1024];

static void setup(void)
{
    const char *s = getenv("AR_SHARED");
    snprintf(stories, sizeof stories, "%s/models/stories260K", s ? s : "../shared");
    snprintf(tmp, sizeof tmp, "/tmp/ar_test_model_open_XXXXXX");
    cr_assert(mkdtemp(tmp));
}

static void teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    cr_assert_eq(system(cmd), 0);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* Read tensor name [n, k] of a source into a new buffer. */
static float *read_all(const ar_tensor_source *src, const char *name, int64_t *n, int64_t *k)
{
    int nd;
    int64_t shape[AR_SRC_MAX_DIMS];
    cr_assert_eq(src->shape(src->ctx, name, &nd, shape), 0, "%s: %s", name, ar_last_error());
    cr_assert_eq(nd, 2);
    *n = shape[0];
    *k = shape[1];
    float *w = malloc(sizeof(float) * (size_t)(*n * *k));
    cr_assert_eq(src->read_rows(src->ctx, name, 0, *n, w), 0, "%s", ar_last_error());
    return w;
}

TestSuite(model_open, .init = setup, .fini = teardown);

Test(model_open, path_kinds_and_errors)
{
    char p[512];
    cr_assert_eq(ar_model_path_kind(stories), AR_PATH_HF, "%s", ar_last_error());

    snprintf(p, sizeof p, "%s/q", tmp);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/q/config.json", tmp);
    write_file(p, "{\"model_type\": \"llama\", \"quantization_config\": {\"quant_method\": \"gptq\"}}");
    snprintf(p, sizeof p, "%s/q", tmp);
    cr_assert_eq(ar_model_path_kind(p), AR_PATH_HF_QUANTIZED, "%s", ar_last_error());

    snprintf(p, sizeof p, "%s/m.gguf", tmp);
    write_file(p, "GGUF\3\0\0\0");
    cr_assert_eq(ar_model_path_kind(p), AR_PATH_GGUF);

    snprintf(p, sizeof p, "%s/notes.txt", tmp);
    write_file(p, "hello");
    cr_assert_eq(ar_model_path_kind(p), -1);
    cr_assert(strstr(ar_last_error(), "notes.txt: neither a model folder nor a GGUF file"), "%s", ar_last_error());
    cr_assert_null(ar_model_open_any(p, 0));
    cr_assert_null(ar_tokenizer_open_any(p));

    snprintf(p, sizeof p, "%s/missing", tmp);
    cr_assert_eq(ar_model_path_kind(p), -1);
    cr_assert(strstr(ar_last_error(), "missing"), "%s", ar_last_error());

    snprintf(p, sizeof p, "%s/empty", tmp);
    cr_assert_eq(mkdir(p, 0755), 0);
    cr_assert_eq(ar_model_path_kind(p), -1);
    cr_assert(strstr(ar_last_error(), "empty/config.json"), "%s", ar_last_error());

    snprintf(p, sizeof p, "%s/q/config.json", tmp);
    write_file(p, "{not json");
    snprintf(p, sizeof p, "%s/q", tmp);
    cr_assert_eq(ar_model_path_kind(p), -1);
    cr_assert(strstr(ar_last_error(), "q/config.json: malformed JSON"), "%s", ar_last_error());
}

/* A plain folder reads as its safetensors; the opened model has its config. */
Test(model_open, plain_folder)
{
    ar_config c;
    ar_tensor_source src;
    cr_assert_eq(ar_model_source_any(stories, &c, &src), 0, "%s", ar_last_error());
    cr_assert_eq(c.hidden, 64);
    int64_t n, k;
    float *w = read_all(&src, "model.layers.1.mlp.down_proj.weight", &n, &k);
    ar_safetensors *st = ar_st_open_dir(stories);
    float *ref = malloc(sizeof(float) * (size_t)(n * k));
    cr_assert_eq(ar_st_read_f32(st, "model.layers.1.mlp.down_proj.weight", ref, (size_t)(n * k)), 0);
    cr_assert_eq(memcmp(w, ref, sizeof(float) * (size_t)(n * k)), 0);
    free(w); free(ref);
    ar_st_close(st);
    src.close(src.ctx);

    ar_model *m = ar_model_open_any(stories, 0);
    cr_assert(m, "%s", ar_last_error());
    cr_assert_eq(ar_model_config(m)->n_layers, 5);
    ar_model_close(m);
    ar_tokenizer *t = ar_tokenizer_open_any(stories);
    cr_assert(t, "%s", ar_last_error());
    cr_assert_eq(ar_tokenizer_vocab_size(t), 512);
    ar_tokenizer_free(t);
}

/* An auto_gptq export of one layer with chosen codes: the source hands back
 * scale·(code − zp) for it (computed here). zp ≥ 1: GPTQ v1 stores zp − 1 and
 * cannot represent 0. */
Test(model_open, quantized_folder_dequantizes)
{
    const int n = 64, k = 64, g = 32, ng = 2;
    uint8_t codes[64 * 64];
    float scale[64 * 2];
    int32_t zp[64 * 2];
    for (int i = 0; i < n * k; i++) codes[i] = (uint8_t)((i * 7 + i / 13) % 16);
    for (int i = 0; i < n * ng; i++) { scale[i] = 0.0078125f * (1 + i % 5); zp[i] = 1 + (i * 3) % 15; }
    ar_qlayer l = {.name = "model.layers.2.self_attn.q_proj", .n = n, .k = k, .bits = 4, .group_size = g,
                   .sym = 0, .codes = codes, .scale = scale, .zp = zp};
    ar_export_opts o = {.format = "auto_gptq", .bits = 4, .group_size = g, .sym = 0};
    char out[512];
    snprintf(out, sizeof out, "%s/gptq", tmp);
    ar_export *e = ar_export_open(stories, out, &o);
    cr_assert(e, "%s", ar_last_error());
    cr_assert_eq(ar_export_layer(e, &l), 0, "%s", ar_last_error());
    cr_assert_eq(ar_export_finish(e), 0, "%s", ar_last_error());

    cr_assert_eq(ar_model_path_kind(out), AR_PATH_HF_QUANTIZED);
    ar_config c;
    ar_tensor_source src;
    cr_assert_eq(ar_model_source_any(out, &c, &src), 0, "%s", ar_last_error());
    int64_t rn, rk;
    float *w = read_all(&src, "model.layers.2.self_attn.q_proj.weight", &rn, &rk);
    cr_assert(rn == n && rk == k);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < k; j++) {
            int gi = r * ng + j / g;  /* scales are exact in fp16 */
            float want = scale[gi] * (float)(codes[r * k + j] - zp[gi]);
            cr_assert_eq(w[r * k + j], want, "row %d col %d: %g vs %g", r, j, w[r * k + j], want);
        }
    free(w);
    src.close(src.ctx);
    ar_model *m = ar_model_open_any(out, AR_MODEL_CACHE);
    cr_assert(m, "%s", ar_last_error());
    ar_model_close(m);
}

/* A GGUF F32 file opens through the GGUF hook with the folder's weights. */
Test(model_open, gguf_file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/s.gguf", tmp);
    cr_assert_eq(ar_gguf_convert_hf(stories, path, AR_FTYPE_ALL_F32, NULL, NULL), 0, "%s", ar_last_error());
    cr_assert_eq(ar_model_path_kind(path), AR_PATH_GGUF);
    ar_config c, hc;
    ar_tensor_source src, hsrc;
    cr_assert_eq(ar_model_source_any(path, &c, &src), 0, "%s", ar_last_error());
    cr_assert_eq(ar_model_source_any(stories, &hc, &hsrc), 0, "%s", ar_last_error());
    cr_assert(c.hidden == hc.hidden && c.n_layers == hc.n_layers && c.vocab == hc.vocab);
    int64_t n, k, hn, hk;
    float *w = read_all(&src, "model.layers.0.self_attn.k_proj.weight", &n, &k);
    float *hw = read_all(&hsrc, "model.layers.0.self_attn.k_proj.weight", &hn, &hk);
    cr_assert(n == hn && k == hk);
    cr_assert_eq(memcmp(w, hw, sizeof(float) * (size_t)(n * k)), 0);
    free(w); free(hw);
    src.close(src.ctx);
    hsrc.close(hsrc.ctx);
}
