/* fake.c — "fake" quantization: every quantized Linear is written back as its
 * dequantized weight scale * (code - zp), in the original weight's dtype, in
 * a plain checkpoint any client loads (no quantization_config). */
#include "export_impl.h"
#include "error.h"
#include <stdio.h>
#include <stdlib.h>

static int write_layer(ar_export *e, const ar_qlayer *l) {
    if (ar_qlayer_check(l, AR_LAYOUT_NONE)) return -1;
    char name[512];
    snprintf(name, sizeof name, "%s.weight", l->name);
    const ar_st_tensor *orig = ar_export_source_weight(e, l->name);
    size_t n = (size_t)l->n * l->k;
    /* An FP8 source's weight is written in the dtype it dequantizes to; an
     * expert of a fused tensor (export.c open_fused) as BF16, the dtype of
     * fused checkpoints (MXFP4 ones widen to it). */
    ar_dtype dt = !orig ? AR_BF16 : ar_st_fp8_role(e->st, orig->name) == 1 ? ar_st_fp8_of(e->st)->out : orig->dtype;
    float *w = malloc(n * sizeof *w);
    void *out = malloc(n * ar_dtype_size(dt));
    int64_t shape[2] = {l->n, l->k};
    int rc = !w || !out ? ar_error("%s: out of memory", l->name) : 0;
    if (!rc) {
        ar_qlayer_dequant(l, w);
        rc = ar_from_f32(out, w, dt, n) || ar_stw_put(e->w, name, dt, 2, shape, out);
    }
    free(w);
    free(out);
    return rc ? -1 : 0;
}

const ar_export_format ar_fmt_fake = {
    .name = "fake",
    .write_layer = write_layer,
    .quant_config = NULL,
    .bias_f16 = 0,
    .config_dtype = NULL,
    .qconfig_file = NULL,
    .allow_empty = 1,
};
