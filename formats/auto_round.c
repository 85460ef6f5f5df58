/* auto_round.c — AutoRound's own format (spec §6.1): quant_method
 * "auto-round"; the packing_format names the tensor layout the loader picks
 * its kernel for. */
#include "export_impl.h"
#include "error.h"
#include "quant.h"
#include <string.h>

/* sym -> GPTQ layout with zeros - 1; asym 4-bit (no other widths) -> AWQ
 * layout; other asym -> GPTQ layout with zeros as is. */
static const char *packing_format(const ar_export *e) {
    if (ar_export_opts_fp(&e->opts)) {
        /* MX/NV: compressed-tensors tensor names; FP8 its own loaders. */
        if (strcmp(e->opts.data_type, "fp")) return "auto_round:llm_compressor";
        return e->opts.act_bits == 8 && !e->opts.act_dynamic ? "auto_round:fp8_static" : "auto_round:fp8";
    }
    if (e->opts.sym) return "auto_round:auto_gptq";
    return e->awq_layout ? "auto_round:auto_awq" : "auto_round";
}

static int write_layer(ar_export *e, const ar_qlayer *l) {
    if (ar_qlayer_dtype(l) != AR_QDT_INT) return ar_export_write_fp(e, l, 1);
    if (e->awq_layout) return ar_export_write_awq(e, l);
    return ar_export_write_gptq(e, l, e->opts.sym, 0);
}

/* The scheme keys of rec that differ from the global scheme (all of them for
 * layers outside the blocks, e.g. a quantized lm_head). */
static cJSON *layer_entry(const ar_export *e, const ar_export_rec *r) {
    cJSON *o = cJSON_CreateObject();
    int all = !r->in_block;
    if (all || r->bits != e->opts.bits) cJSON_AddNumberToObject(o, "bits", r->bits);
    if (all || r->group_size != e->opts.group_size) cJSON_AddNumberToObject(o, "group_size", r->group_size);
    if (all || r->sym != e->opts.sym) cJSON_AddBoolToObject(o, "sym", r->sym);
    const char *gdt = e->opts.data_type ? e->opts.data_type : "int";
    if (all || strcmp(r->data_type, gdt)) cJSON_AddStringToObject(o, "data_type", r->data_type);
    return o;
}

static void add_16bit(void *arg, const char *layer) {
    cJSON *o = cJSON_AddObjectToObject(arg, layer);
    cJSON_AddNumberToObject(o, "bits", 16);
    cJSON_AddStringToObject(o, "data_type", "fp");
}

static cJSON *quant_config(ar_export *e) {
    cJSON *q = ar_export_base_config(e);
    if (!q) return NULL;
    cJSON_AddStringToObject(q, "block_name_to_quantize", e->block_prefix);
    cJSON_AddStringToObject(q, "quant_method", "auto-round");
    cJSON_AddStringToObject(q, "packing_format", packing_format(e));
    cJSON *extra = cJSON_CreateObject();
    for (size_t i = 0; i < e->nrec; i++) {
        cJSON *o = layer_entry(e, &e->rec[i]);
        if (o->child) cJSON_AddItemToObject(extra, e->rec[i].name, o);
        else cJSON_Delete(o);
    }
    ar_export_unquantized_in_block(e, add_16bit, extra);
    ar_export_model_order(extra);
    if (extra->child) cJSON_AddItemToObject(q, "extra_config", extra);
    else cJSON_Delete(extra);
    return q;
}

const ar_export_format ar_fmt_auto_round = {
    .name = "auto_round",
    .write_layer = write_layer,
    .quant_config = quant_config,
    .bias_f16 = 1,
    .config_dtype = NULL,
    .qconfig_file = "quantization_config.json",
    .awq_layout = AR_AWQ_ASYM4,
};
