/* model_open.c — open any model path (see model_open.h). */
#include "model_open.h"
#include "error.h"
#include "hf_folder.h"
#include "quantized_source.h"
#include "safetensors.h"
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* 1 when file path starts with the GGUF magic, 0 when not, -1 when unreadable. */
static int has_gguf_magic(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return ar_error("%s: cannot open: %s", path, strerror(errno));
    char magic[4];
    int yes = fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    fclose(f);
    return yes;
}

/* 1 when dir/config.json has a quantization_config, 0 when not, -1 when the
 * file is missing or not JSON. FP8 checkpoints (quant_method "fp8") count as
 * plain: the safetensors source widens their weights (ar_st_open_model); so do
 * gpt-oss's MXFP4 ones (quant_method "mxfp4"). */
static int has_quantization_config(const char *dir)
{
    ar_st_fp8 f;
    if (ar_st_fp8_config(dir, &f)) return -1;
    if (f.on && !strcmp(f.method, "fp8")) return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = hf_read_file(path, NULL);
    if (!text) return -1;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg) return ar_error("%s: malformed JSON", path);
    const cJSON *qc = cJSON_GetObjectItem(cfg, "quantization_config"), *m = cJSON_GetObjectItem(qc, "quant_method");
    /* gpt-oss MXFP4 experts count as plain too: the source widens them (nn/fused_experts.h) */
    int yes = qc && !(cJSON_IsString(m) && !strcmp(m->valuestring, "mxfp4"));
    cJSON_Delete(cfg);
    return yes;
}

int ar_model_path_kind(const char *path)
{
    struct stat st;
    if (stat(path, &st)) return ar_error("%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        int q = has_quantization_config(path);
        return q < 0 ? -1 : q ? AR_PATH_HF_QUANTIZED : AR_PATH_HF;
    }
    int g = S_ISREG(st.st_mode) ? has_gguf_magic(path) : 0;
    if (g < 0) return -1;
    if (!g) return ar_error("%s: neither a model folder nor a GGUF file", path);
    return AR_PATH_GGUF;
}

int ar_model_source_any(const char *path, ar_config *c, ar_tensor_source *src)
{
    int kind = ar_model_path_kind(path);
    if (kind < 0) return -1;
    if (kind == AR_PATH_GGUF) return ar_source_gguf(src, c, path);
    if (ar_config_load(c, path)) return -1;
    return kind == AR_PATH_HF_QUANTIZED ? ar_source_quantized(src, path) : ar_source_safetensors(src, path);
}

ar_model *ar_model_open_any(const char *path, int flags)
{
    ar_config c;
    ar_tensor_source src;
    if (ar_model_source_any(path, &c, &src)) return NULL;
    ar_model *m = ar_model_open_source(&c, &src, flags);
    if (!m) ar_error_prefix(path);
    return m;
}

ar_tokenizer *ar_tokenizer_open_any(const char *path)
{
    int kind = ar_model_path_kind(path);
    if (kind < 0) return NULL;
    return kind == AR_PATH_GGUF ? ar_tokenizer_gguf(path) : ar_tokenizer_load(path);
}
