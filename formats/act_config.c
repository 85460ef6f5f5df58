/* act_config.c — activation quantizers of an exported model for inference
 * (see act_config.h). */
#include "act_config.h"
#include "block_desc.h"
#include "error.h"
#include "hf_folder.h"
#include "quantized_source.h"
#include "safetensors.h"
#include "signround.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define E4M3_MAX 448.0f
#define FP4_MAX 6.0f

/* Everything one folder's pass needs. */
typedef struct {
    const char *path;           /* config.json, for messages */
    const cJSON *qcfg;
    int ct;                     /* compressed-tensors (else auto-round) */
    ar_qfolder *q;
    ar_safetensors *st;
} folder_ctx;

static int json_int(const cJSON *o, const char *key, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valueint : cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static void json_str(const cJSON *o, const char *key, char *dst, size_t cap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(v)) snprintf(dst, cap, "%s", v->valuestring);
}

/* auto-round: the act_* fields of o (the global config or one extra_config
 * entry) over s; bits 16 in an entry keeps the layer unquantized. */
static void autoround_fields(const cJSON *o, ar_scheme *s)
{
    s->bits = json_int(o, "bits", s->bits);
    s->act_bits = json_int(o, "act_bits", s->act_bits);
    s->act_group_size = json_int(o, "act_group_size", s->act_group_size);
    s->act_sym = json_int(o, "act_sym", s->act_sym);
    s->act_dynamic = json_int(o, "act_dynamic", s->act_dynamic);
    json_str(o, "act_data_type", s->act_data_type, sizeof s->act_data_type);
}

/* compressed-tensors: one config group's input_activations as act_* fields. */
static int ct_fields(const folder_ctx *f, const cJSON *group, ar_scheme *s)
{
    const cJSON *ia = cJSON_GetObjectItemCaseSensitive(group, "input_activations");
    if (!ia || cJSON_IsNull(ia)) return 0;
    if (!cJSON_IsObject(ia)) return ar_error("%s: input_activations is not an object", f->path);
    char type[16] = "", strategy[32] = "", format[64] = "";
    json_str(ia, "type", type, sizeof type);
    json_str(ia, "strategy", strategy, sizeof strategy);
    json_str(group, "format", format, sizeof format);
    const cJSON *dyn = cJSON_GetObjectItemCaseSensitive(ia, "dynamic");
    s->act_bits = json_int(ia, "num_bits", 16);
    s->act_sym = json_int(ia, "symmetric", 1);
    s->act_dynamic = !cJSON_IsFalse(dyn);
    s->act_group_size = !strcmp(strategy, "group") ? json_int(ia, "group_size", 0)
                        : !strcmp(strategy, "token") ? -1 : 0;
    const char *dt = !strcmp(type, "int") ? "int"
                     : s->act_bits == 4 && !strcmp(strategy, "tensor_group") ? "nv_fp4_with_static_gs"
                     : s->act_bits == 4 || strstr(format, "mxfp") ? "mx_fp"
                     : "fp";
    if (!strcmp(dt, "nv_fp4_with_static_gs")) s->act_group_size = json_int(ia, "group_size", 16);
    snprintf(s->act_data_type, sizeof s->act_data_type, "%s", dt);
    return 0;
}

static int targets_layer(const cJSON *group, const char *layer)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(group, "targets"))
        if (cJSON_IsString(t) && (!strcmp(t->valuestring, layer) || !strcmp(t->valuestring, "Linear"))) return 1;
    return 0;
}

/* The scheme fields of layer: 1 filled, 0 when the config quantizes neither
 * it nor its input, -1 on error. */
static int layer_fields(const folder_ctx *f, const char *layer, ar_scheme *s)
{
    memset(s, 0, sizeof *s);
    s->bits = 8, s->act_bits = 16, s->act_sym = 1, s->act_dynamic = 1;
    if (!f->ct) {
        autoround_fields(f->qcfg, s);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(f->qcfg, "extra_config"), layer);
        if (cJSON_IsObject(e)) autoround_fields(e, s);
        return s->bits < 16;
    }
    const cJSON *g, *exact = NULL, *any = NULL;
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(f->qcfg, "ignore"))   /* left unquantized */
        if (cJSON_IsString(g) && !strcmp(g->valuestring, layer)) return 0;
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(f->qcfg, "config_groups")) {
        const cJSON *t;
        cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(g, "targets"))
            if (cJSON_IsString(t) && !strcmp(t->valuestring, layer)) exact = g;
        if (!any && targets_layer(g, layer)) any = g;
    }
    g = exact ? exact : any;
    if (!g) return 0;
    return ct_fields(f, g, s) ? -1 : 1;
}

/* The static maximum a layer's stored activation scale implies, 0 if none. */
static float stored_act_max(const folder_ctx *f, const char *layer, const ar_scheme *s)
{
    char name[512];
    int nv = strstr(s->act_data_type, "nv_fp") != NULL;
    snprintf(name, sizeof name, "%s.%s", layer, nv ? "input_global_scale" : "input_scale");
    const ar_st_tensor *t = f->st ? ar_st_find(f->st, name) : NULL;
    float v = 0;
    if (!t || t->numel != 1 || ar_st_read_f32(f->st, name, &v, 1) || !(v > 0)) return 0;
    return nv ? E4M3_MAX * FP4_MAX / v : v * E4M3_MAX;
}

/* Specs of block l's linears into spec/aq (bd->nlinear each); adds their
 * count to *count. */
static int block_specs(ar_model *m, const folder_ctx *f, const ar_block_desc *bd, int l,
                       ar_act_spec *spec, const ar_act_spec **aq, int *count)
{
    for (int i = 0; i < bd->nlinear; i++) {
        char layer[256];
        ar_scheme s;
        aq[i] = NULL;
        ar_block_desc_layer_name(bd, l, i, layer, sizeof layer);
        if (!ar_qfolder_is_packed(f->q, layer)) continue;
        int rc = layer_fields(f, layer, &s);
        if (rc < 0) return -1;
        if (!rc || s.act_bits >= 16) continue;
        rc = ar_act_spec_from_scheme(&s, ar_scheme_act_needs_max(&s) ? stored_act_max(f, layer, &s) : 0, &spec[i]);
        if (rc < 0) return ar_error("%s: %s: %s", f->path, layer, ar_last_error());
        if (rc) aq[i] = &spec[i], (*count)++;
    }
    return ar_model_set_act_quant(m, l, aq);
}

/* The quantization_config of dir's config.json (detached into *root), or
 * NULL without one. -1 on a read or parse error. */
static int read_qcfg(const char *path, cJSON **root, const cJSON **qcfg)
{
    *root = NULL, *qcfg = NULL;
    char *text = hf_read_file(path, NULL);
    if (!text) return -1;
    *root = cJSON_Parse(text);
    free(text);
    if (!*root) return ar_error("%s: malformed JSON", path);
    *qcfg = cJSON_GetObjectItemCaseSensitive(*root, "quantization_config");
    return 0;
}

int ar_model_act_quant_from_folder(ar_model *m, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root;
    folder_ctx f = {path, NULL, 0, NULL, NULL};
    if (read_qcfg(path, &root, &f.qcfg)) return -1;
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(f.qcfg, "quant_method");
    int count = 0, rc = 0;
    if (cJSON_IsString(method) && (!strcmp(method->valuestring, "auto-round") ||
                                   !strcmp(method->valuestring, "compressed-tensors"))) {
        f.ct = !strcmp(method->valuestring, "compressed-tensors");
        f.q = ar_qfolder_open(dir);
        f.st = f.q ? ar_st_open_dir(dir) : NULL;
        const ar_block_desc *bd = ar_model_block_desc(m);
        ar_act_spec *spec = calloc((size_t)bd->nlinear, sizeof *spec);
        const ar_act_spec **aq = calloc((size_t)bd->nlinear, sizeof *aq);
        rc = f.q && f.st && spec && aq ? 0 : -1;
        if (f.q && f.st && (!spec || !aq)) ar_error("out of memory for activation quantizers");
        for (int l = 0; !rc && l < ar_model_config(m)->n_layers; l++) rc = block_specs(m, &f, bd, l, spec, aq, &count);
        free(spec);
        free(aq);
    }
    ar_st_close(f.st);
    ar_qfolder_close(f.q);
    cJSON_Delete(root);
    return rc ? -1 : count;
}

/* Specs of block l's linears under scheme s into spec/aq (bd->nlinear each);
 * adds their count to *count. 0 or -1. */
static int scheme_specs(const ar_block_desc *bd, const ar_scheme *s, int l, ar_act_spec *spec,
                        const ar_act_spec **aq, int *count)
{
    for (int i = 0; i < bd->nlinear; i++) {
        char layer[256];
        ar_scheme ls;
        aq[i] = NULL;
        ar_block_desc_layer_name(bd, l, i, layer, sizeof layer);
        ar_layer_info info = {0, 0, 0};
        if (ar_scheme_for_layer(s, NULL, layer, bd->lin[i].n_out, bd->lin[i].k_in, &info, &ls)) return -1;
        int rc = ar_act_spec_from_scheme(&ls, 0, &spec[i]);
        if (rc < 0) return ar_error("%s: %s", layer, ar_last_error());
        if (rc) aq[i] = &spec[i], (*count)++;
    }
    return 0;
}

int ar_model_act_quant_from_scheme(ar_model *m, const ar_scheme *s)
{
    const ar_config *c = ar_model_config(m);
    const ar_block_desc *bd = ar_model_block_desc(m);
    ar_act_spec *spec = calloc((size_t)bd->nlinear, sizeof *spec);
    const ar_act_spec **aq = calloc((size_t)bd->nlinear, sizeof *aq);
    int count = 0, rc = spec && aq ? 0 : ar_error("out of memory for activation quantizers");
    for (int l = 0; !rc && l < c->n_layers; l++)
        if (scheme_specs(bd, s, l, spec, aq, &count) || ar_model_set_act_quant(m, l, aq)) rc = -1;
    free(spec);
    free(aq);
    return rc ? -1 : count;
}
