/* auto_awq.c — AutoAWQ GEMM checkpoints (spec §6.3): 4-bit asym only, one
 * scheme for every quantized layer (AWQ has no per-layer config; layers left
 * in 16 bits are listed in modules_to_not_convert), fp16 config dtype. */
#include "export_impl.h"
#include "error.h"
#include <stdlib.h>
#include <string.h>

static int check_opts(const ar_export_opts *o) {
    if (o->sym)
        return ar_error("auto_awq: symmetric quantization cannot be exported as AWQ (AutoRound lists auto_awq for "
                        "asym only); use auto_round or auto_gptq, or quantize with sym off");
    if (o->bits != 4) return ar_error("auto_awq: AWQ is 4-bit only, not %d-bit", o->bits);
    if (o->mixed_bits) return ar_error("auto_awq: AWQ cannot hold mixed bit widths; use auto_round");
    return 0;
}

static int write_layer(ar_export *e, const ar_qlayer *l) {
    if (l->sym || l->bits != 4 || l->group_size != e->opts.group_size)
        return ar_error("%s: AWQ needs every layer 4-bit asym with group_size %d (layer: %d-bit %s G%d)", l->name,
                        e->opts.group_size, l->bits, l->sym ? "sym" : "asym", l->group_size);
    return ar_export_write_awq(e, l);
}

static void add_name(void *arg, const char *layer) { cJSON_AddNullToObject(arg, layer); }

/* As AutoRound 0.16.1 writes it: to_quant_block_names before
 * autoround_version; modules_to_not_convert every Linear left unquantized,
 * lm_head included even when tied (AutoRound lists them from a set, in no
 * fixed order; ar in model order). */
static cJSON *quant_config(ar_export *e) {
    cJSON *q = ar_export_base_config(e);
    if (!q) return NULL;
    cJSON *ver = cJSON_DetachItemFromObjectCaseSensitive(q, "autoround_version");
    cJSON_AddStringToObject(q, "to_quant_block_names", e->block_prefix);
    if (ver) cJSON_AddItemToObject(q, "autoround_version", ver);
    cJSON_AddStringToObject(q, "provider", "auto-round");
    cJSON_AddStringToObject(q, "quant_method", "awq");
    cJSON_AddBoolToObject(q, "zero_point", !e->opts.sym);
    cJSON_AddStringToObject(q, "version", "gemm");
    cJSON *names = cJSON_CreateObject(), *skip = cJSON_AddArrayToObject(q, "modules_to_not_convert");
    if (!names || !skip) { cJSON_Delete(names); cJSON_Delete(q); ar_error("%s: out of memory", e->out_dir); return NULL; }
    ar_export_unquantized_outside(e, add_name, names);
    ar_export_unquantized_in_block(e, add_name, names);
    int lm_q = 0;
    for (size_t i = 0; i < e->nrec; i++) lm_q |= !strcmp(e->rec[i].name, "lm_head");
    if (!lm_q && !cJSON_HasObjectItem(names, "lm_head")) cJSON_AddNullToObject(names, "lm_head");
    ar_export_model_order(names);
    for (cJSON *c = names->child; c; c = c->next) cJSON_AddItemToArray(skip, cJSON_CreateString(c->string));
    cJSON_Delete(names);
    return q;
}

const ar_export_format ar_fmt_auto_awq = {
    .name = "auto_awq",
    .check_opts = check_opts,
    .write_layer = write_layer,
    .quant_config = quant_config,
    .bias_f16 = 1,
    .config_dtype = "float16",
    .qconfig_file = "quantization_config.json",
    .awq_layout = AR_AWQ_ALWAYS,
};
