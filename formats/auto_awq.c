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

static void add_name(void *arg, const char *layer) { cJSON_AddItemToArray(arg, cJSON_CreateString(layer)); }

static cJSON *quant_config(ar_export *e) {
    cJSON *q = ar_export_base_config(e);
    if (!q) return NULL;
    cJSON_AddStringToObject(q, "provider", "auto-round");
    cJSON_AddStringToObject(q, "quant_method", "awq");
    cJSON_AddBoolToObject(q, "zero_point", !e->opts.sym);
    cJSON_AddStringToObject(q, "version", "gemm");
    cJSON *skip = cJSON_AddArrayToObject(q, "modules_to_not_convert");
    ar_export_unquantized_outside(e, add_name, skip);
    ar_export_unquantized_in_block(e, add_name, skip);
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
