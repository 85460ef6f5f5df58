/* kv_config.c — static FP8 KV-cache scales of exported folders (see kv_config.h). */
#include "kv_config.h"
#include "error.h"
#include "hf_folder.h"
#include "safetensors.h"
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1 when compressed-tensors' kv_cache_scheme k is the static FP8 per-tensor
 * cache handled here, 0 when null/absent, -1 (ar_error) for any other. */
static int ct_kv_scheme(const cJSON *k, const char *path)
{
    if (!k || cJSON_IsNull(k)) return 0;
    if (!cJSON_IsObject(k)) return ar_error("%s: kv_cache_scheme is not an object", path);
    const cJSON *bits = cJSON_GetObjectItemCaseSensitive(k, "num_bits"),
                *type = cJSON_GetObjectItemCaseSensitive(k, "type"),
                *strat = cJSON_GetObjectItemCaseSensitive(k, "strategy"),
                *dyn = cJSON_GetObjectItemCaseSensitive(k, "dynamic"),
                *sym = cJSON_GetObjectItemCaseSensitive(k, "symmetric");
    int nb = cJSON_IsNumber(bits) ? bits->valueint : 8;
    const char *ty = cJSON_IsString(type) ? type->valuestring : "int";
    if (nb != 8 || strcmp(ty, "float"))
        return ar_error("%s: kv_cache_scheme: %d-bit %s KV caches are not handled (8-bit float per tensor only)", path,
                        nb, ty);
    if (strat && !cJSON_IsNull(strat) && !(cJSON_IsString(strat) && !strcmp(strat->valuestring, "tensor")))
        return ar_error("%s: kv_cache_scheme: strategy %s is not handled (tensor only)", path,
                        cJSON_IsString(strat) ? strat->valuestring : "(not a string)");
    if (dyn && !cJSON_IsFalse(dyn)) return ar_error("%s: kv_cache_scheme: dynamic KV caches are not handled", path);
    if (sym && !cJSON_IsTrue(sym)) return ar_error("%s: kv_cache_scheme: asymmetric KV caches are not handled", path);
    return 1;
}

/* 1 when auto-round's quantization_config q asks for the FP8 KV cache. */
static int ar_kv_dtype(const cJSON *q, const char *path)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(q, "static_kv_dtype");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(q, "static_kv_granularity");
    if (!d || cJSON_IsNull(d)) return 0;
    if (!cJSON_IsString(d) || (strcmp(d->valuestring, "fp8") && strcmp(d->valuestring, "float8_e4m3fn")))
        return ar_error("%s: static_kv_dtype %s is not handled (fp8 only)", path,
                        cJSON_IsString(d) ? d->valuestring : "(not a string)");
    if (g && !cJSON_IsNull(g) && !(cJSON_IsString(g) && !strcmp(g->valuestring, "tensor")))
        return ar_error("%s: static_kv_granularity is not handled (tensor only)", path);
    return 1;
}

/* Layer l's scale kind ("k_scale" / "v_scale") into *v. */
static int read_scale(const ar_safetensors *st, const char *dir, int l, const char *kind, float *v)
{
    char name[128];
    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", l, kind);
    const ar_st_tensor *t = ar_st_find(st, name);
    if (!t) return ar_error("%s: the config asks for a static FP8 KV cache but there is no tensor %s", dir, name);
    if (t->numel != 1 || t->ndim > 1) {
        char shape[96] = "";
        size_t o = 0;
        for (int i = 0; i < t->ndim && o < sizeof shape - 24; i++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return ar_error("%s: %s must hold one value (shape [1]), not shape [%s]", dir, name, shape);
    }
    if (ar_st_read_f32(st, name, v, 1)) return -1;
    if (!(*v > 0) || isinf(*v)) return ar_error("%s: %s is %g, not a finite scale > 0", dir, name, *v);
    return 0;
}

int ar_model_kv_quant_from_folder(ar_model *m, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = hf_read_file(path, NULL);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return ar_error("%s: malformed JSON", path);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    int on = 0;
    if (cJSON_IsString(method) && !strcmp(method->valuestring, "compressed-tensors"))
        on = ct_kv_scheme(cJSON_GetObjectItemCaseSensitive(q, "kv_cache_scheme"), path);
    else if (cJSON_IsString(method) && !strcmp(method->valuestring, "auto-round"))
        on = ar_kv_dtype(q, path);
    cJSON_Delete(root);
    if (on <= 0) return on;
    ar_safetensors *st = ar_st_open_dir(dir);
    if (!st) return -1;
    int n = ar_model_config(m)->n_layers, rc = 0;
    float *s = malloc(sizeof(float) * 2 * (size_t)n);   /* all read before any is set: m changes whole or not */
    if (!s) rc = ar_error("%s: out of memory", dir);
    for (int l = 0; !rc && l < n; l++)
        rc = read_scale(st, dir, l, "k_scale", &s[2 * l]) || read_scale(st, dir, l, "v_scale", &s[2 * l + 1]);
    for (int l = 0; !rc && l < n; l++) rc = ar_model_set_kv_quant(m, l, s[2 * l], s[2 * l + 1]);
    free(s);
    ar_st_close(st);
    return rc ? -1 : n;
}
