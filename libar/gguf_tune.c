/* gguf_tune.c — a block's linears quantized for a GGUF mix (see gguf_tune.h). */
#include "gguf_tune.h"
#include "error.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ar_gguf_model_info ar_gguf_info_for(const ar_config *c, int has_output, int has_imatrix)
{
    ar_gguf_model_info m = {0};
    m.n_layers = c->n_layers;
    m.n_gqa = c->n_heads / (c->n_kv_heads > 0 ? c->n_kv_heads : 1);
    m.has_output = has_output;
    m.has_imatrix = has_imatrix;
    return m;
}

ar_ggml_type ar_gguf_linear_type(ar_gguf_ftype f, const ar_gguf_model_info *m, const ar_config *c, int layer, int i)
{
    char hf[256], gname[256];
    int n, k;
    ar_linear_shape(c, i, &n, &k);
    snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", layer, ar_linear_names[i]);
    if (ar_gguf_map_name(hf, gname, sizeof gname) <= 0) return AR_GGML_F32;   /* every linear has a name */
    return ar_gguf_tensor_type(f, m, gname, 2, k);
}

int ar_gguf_quantize_block(ar_gguf_ftype f, const ar_gguf_model_info *m, const ar_config *c, int layer,
                           const ar_block_weights *w, float *const imat[AR_NLINEAR], ar_gguf_qlinear out[AR_NLINEAR])
{
    memset(out, 0, sizeof(ar_gguf_qlinear) * AR_NLINEAR);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        ar_gguf_qlinear *q = &out[i];
        q->type = ar_gguf_linear_type(f, m, c, layer, i);
        q->rows = n;
        q->cols = k;
        q->nbytes = ar_ggml_row_bytes(q->type, k) * (size_t)n;
        if (!(q->blocks = malloc(q->nbytes)))
            return ar_error("model.layers.%d.%s: out of memory", layer, ar_linear_names[i]);
        if (ar_ggml_quantize(q->type, w->w[i], q->blocks, n, k, imat ? imat[i] : NULL))
            return ar_error_prefix(ar_linear_names[i]);
    }
    return 0;
}

void ar_gguf_qlinears_free(ar_gguf_qlinear out[AR_NLINEAR])
{
    for (int i = 0; i < AR_NLINEAR; i++) free(out[i].blocks);
    memset(out, 0, sizeof(ar_gguf_qlinear) * AR_NLINEAR);
}
