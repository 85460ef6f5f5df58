/* auto_gptq.c — GPTQ v1 checkpoints (spec §6.2) as AutoRound exports them:
 * zeros stored minus 1, g_idx = k / G, quant_method "gptq", desc_act false,
 * fp16 config dtype, the quantization_config beside config.json in
 * quantization_config.json (AutoRound's name) and quantize_config.json. */
#include "export_impl.h"
#include "error.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_layer(ar_export *e, const ar_qlayer *l) { return ar_export_write_gptq(e, l, 1, 1); }

/* AutoRound's key for a layer name: SIGN:.*NAME.* with NAME's dots escaped
 * (its to_standard_regex of a plain name). */
static void dyn_key(char *key, size_t size, char sign, const char *layer) {
    size_t n = (size_t)snprintf(key, size, "%c:.*", sign);
    for (const char *p = layer; *p && n + 4 < size; p++) {
        if (*p == '.') key[n++] = '\\';
        key[n++] = *p;
    }
    snprintf(key + n, size - n, ".*");
}

static void add_skip(void *arg, const char *layer) { cJSON_AddObjectToObject(arg, layer); }


/* GPTQ "dynamic" overrides: "+:layer" with the layer's scheme where it
 * differs from the global one (or lies outside the blocks), "-:layer" for
 * in-block layers left in 16 bits. NULL when there are none. */
static cJSON *dynamic_config(const ar_export *e) {
    cJSON *d = cJSON_CreateObject();
    for (size_t i = 0; i < e->nrec; i++) {
        const ar_export_rec *r = &e->rec[i];
        if (r->in_block && r->bits == e->opts.bits && r->group_size == e->opts.group_size && r->sym == e->opts.sym)
            continue;
        cJSON *o = cJSON_AddObjectToObject(d, r->name);
        cJSON_AddNumberToObject(o, "bits", r->bits);
        cJSON_AddNumberToObject(o, "group_size", r->group_size);
        cJSON_AddBoolToObject(o, "sym", r->sym);
    }
    ar_export_unquantized_in_block(e, add_skip, d);
    ar_export_model_order(d);
    for (cJSON *c = d->child; c; c = c->next) {   /* then AutoRound's keys: "+:" an override, "-:" left in 16 bits */
        char key[1100], mem[512];
        /* a VLM's module as transformers names it in memory (export.c maps the other keys) */
        const char *name = e->mm ? ar_mm_module_name(&e->mm_names, c->string, mem, sizeof mem) : c->string;
        dyn_key(key, sizeof key, c->child ? '+' : '-', name);
        char *k = strdup(key);
        if (!k) { cJSON_Delete(d); return NULL; }
        free(c->string);
        c->string = k;
    }
    if (d->child) return d;
    cJSON_Delete(d);
    return NULL;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* [[names inside a block of the layers quantized in any block]], sorted, as
 * AutoRound writes modules_in_block_to_quantize. */
static cJSON *modules_in_block(const ar_export *e) {
    size_t plen = strlen(e->block_prefix), n = 0;
    const char **rel = malloc((e->nrec + 1) * sizeof *rel);
    for (size_t i = 0; rel && i < e->nrec; i++) {
        if (!e->rec[i].in_block) continue;
        const char *p = strchr(e->rec[i].name + plen + 1, '.');  /* after "<prefix>.<i>" */
        if (p) rel[n++] = p + 1;
    }
    if (rel) qsort(rel, n, sizeof *rel, cmp_str);
    cJSON *inner = cJSON_CreateArray();
    for (size_t i = 0; rel && i < n; i++)
        if (i == 0 || strcmp(rel[i], rel[i - 1])) cJSON_AddItemToArray(inner, cJSON_CreateString(rel[i]));
    free(rel);
    cJSON *outer = cJSON_CreateArray();
    cJSON_AddItemToArray(outer, inner);
    return outer;
}

static int lm_head_quantized(const ar_export *e) {
    for (size_t i = 0; i < e->nrec; i++)
        if (!e->rec[i].in_block) return 1;
    return 0;
}

static cJSON *quant_config(ar_export *e) {
    cJSON *q = ar_export_base_config(e);
    if (!q) return NULL;
    if (strcmp(e->block_prefix, "model.layers")) cJSON_AddStringToObject(q, "block_name_to_quantize", e->block_prefix);
    cJSON *dyn = dynamic_config(e);
    if (dyn) cJSON_AddItemToObject(q, "dynamic", dyn);
    cJSON_AddBoolToObject(q, "lm_head", lm_head_quantized(e));
    cJSON_AddStringToObject(q, "provider", "auto-round");
    cJSON_AddStringToObject(q, "quant_method", "gptq");
    cJSON_AddBoolToObject(q, "desc_act", 0);
    cJSON_AddBoolToObject(q, "true_sequential", 0);
    cJSON_AddNumberToObject(q, "damp_percent", 0.01);
    if (ar_export_unquantized_in_block(e, NULL, NULL)) cJSON_AddItemToObject(q, "modules_in_block_to_quantize", modules_in_block(e));
    /* v1 zero points (stored minus 1), as AutoRound writes them, without a
     * checkpoint_format key: GPTQModel and transformers take "gptq" (v1) then. */
    return q;
}

const ar_export_format ar_fmt_auto_gptq = {
    .name = "auto_gptq",
    .write_layer = write_layer,
    .quant_config = quant_config,
    .bias_f16 = 1,
    .config_dtype = "float16",
    /* AutoRound 0.16.1 writes quantization_config.json (its save_model
     * renames the quantize_config.json its GPTQ exporter asks for); AutoGPTQ
     * and GPTQModel's QuantizeConfig look for quantize_config.json, so both. */
    .qconfig_file = "quantization_config.json",
    .qconfig_file2 = "quantize_config.json",
};
