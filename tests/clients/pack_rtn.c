/* pack_rtn.c — export a model with plain RTN codes (no tuning), for the
 * real-client checks: pack_rtn MODEL_DIR OUT_DIR FORMAT BITS GROUP SYM.
 * Every in-block Linear is quantized with ar_quant_forward (int_sym/int_asym,
 * fp16 scales, bf16 weight) and handed to the exporter.
 * Build: make build/obj/libar.a build/obj/libarformats.a && cc -Ilibar -Iformats
 *   tests/clients/pack_rtn.c build/obj/libarformats.a build/obj/libar.a $(LDLIBS) */
#include "block.h"
#include "config.h"
#include "error.h"
#include "export.h"
#include "quant.h"
#include "safetensors.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int pack_layer(ar_export *e, ar_safetensors *st, const char *layer, const ar_quant_spec *qs) {
    char wname[300];
    snprintf(wname, sizeof wname, "%s.weight", layer);
    const ar_st_tensor *t = ar_st_find(st, wname);
    if (!t) return ar_error("no tensor %s", wname);
    int n = (int)t->shape[0], k = (int)t->shape[1], ng = ar_quant_ngroups(k, qs->group_size);
    float *w = malloc((size_t)n * k * 4), *scale = malloc((size_t)n * ng * 4);
    uint8_t *codes = malloc((size_t)n * k);
    int32_t *zp = malloc((size_t)n * ng * 4);
    ar_quant_out out = {.codes = codes, .scale = scale, .zp = zp};
    int rc = ar_st_read_f32(st, wname, w, (size_t)n * k) || ar_quant_forward(qs, w, n, k, NULL, &out);
    ar_qlayer l = {.name = layer, .n = n, .k = k, .bits = qs->bits, .group_size = qs->group_size,
                   .sym = qs->sym, .codes = codes, .scale = scale, .zp = qs->sym ? NULL : zp};
    if (!rc) rc = ar_export_layer(e, &l);
    free(w); free(scale); free(codes); free(zp);
    return rc ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: pack_rtn MODEL OUT FORMAT BITS GROUP SYM\n"); return 2; }
    ar_config c;
    ar_quant_spec qs = {.bits = atoi(argv[4]), .group_size = atoi(argv[5]), .sym = atoi(argv[6]), .flags = AR_QF_BF16};
    ar_export_opts o = {.format = argv[3], .bits = qs.bits, .group_size = qs.group_size, .sym = qs.sym,
                        .tuning_json = "{\"iters\": 0}"};
    ar_safetensors *st = NULL;
    ar_export *e = NULL;
    if (ar_config_load(&c, argv[1]) || !(st = ar_st_open_dir(argv[1])) || !(e = ar_export_open(argv[1], argv[2], &o)))
        goto fail;
    for (int b = 0; b < c.n_layers; b++)
        for (int i = 0; i < AR_NLINEAR; i++) {
            char layer[200];
            snprintf(layer, sizeof layer, "model.layers.%d.%s", b, ar_linear_names[i]);
            if (pack_layer(e, st, layer, &qs)) goto fail;
        }
    if (ar_export_finish(e)) goto fail;
    ar_st_close(st);
    return 0;
fail:
    fprintf(stderr, "pack_rtn: %s\n", ar_last_error());
    ar_export_abort(e);
    ar_st_close(st);
    return 1;
}
