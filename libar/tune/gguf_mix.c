/* gguf_mix.c — a block's linears quantized for a GGUF mix (see gguf_mix.h). */
#include "gguf_mix.h"
#include "dtype.h"
#include "error.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ar_gguf_quantize_block(const ar_ggml_type *types, const ar_block_desc *bd, int layer,
                           const ar_block_weights *w, float *const *imat, ar_gguf_qlinear *out)
{
    memset(out, 0, sizeof(ar_gguf_qlinear) * (size_t)bd->nlinear);
    for (int i = 0; i < bd->nlinear; i++) {
        int n = bd->lin[i].n_out, k = bd->lin[i].k_in;
        ar_gguf_qlinear *q = &out[i];
        q->type = types[i];
        q->rows = n;
        q->cols = k;
        q->nbytes = ar_ggml_row_bytes(q->type, k) * (size_t)n;
        if (!(q->blocks = malloc(q->nbytes)))
            return ar_error("model.layers.%d.%s: out of memory", layer, bd->lin[i].name);
        if (ar_ggml_quantize(q->type, w->w[i], q->blocks, n, k, imat ? imat[i] : NULL))
            return ar_error_prefix(bd->lin[i].name);
    }
    return 0;
}

void ar_gguf_qlinears_free(ar_gguf_qlinear *out, int n)
{
    for (int i = 0; i < n; i++) free(out[i].blocks);
    memset(out, 0, sizeof(ar_gguf_qlinear) * (size_t)n);
}

void ar_gguf_embedding_importance(const ar_block_desc *bd, const ar_config *c, const ar_block_weights *w0,
                                  float *imp)
{
    const int C = c->hidden;
    memset(imp, 0, sizeof(float) * (size_t)C);
    for (int i = 0; i < bd->nlinear; i++) {    /* column energies of the linears reading the first input */
        if (bd->lin[i].input != 0) continue;
        int n = bd->lin[i].n_out, k = bd->lin[i].k_in;
        for (int j = 0; j < n; j++) {
            const float *row = w0->w[i] + (size_t)j * k;
            for (int kk = 0; kk < k; kk++) imp[kk] += row[kk] * row[kk];
        }
    }
    for (int kk = 0; kk < C; kk++) imp[kk] *= w0->attn_norm[kk] * w0->attn_norm[kk];
}

/* Rows per slice when quantizing a model tensor: about 4 MiB of f32. */
static int64_t slice_rows(int64_t cols)
{
    int64_t r = ((int64_t)1 << 20) / (cols > 0 ? cols : 1);
    return r > 0 ? r : 1;
}

int ar_gguf_quantize_model_tensor(ar_model *m, const char *hf_name, int64_t rows, int64_t cols, ar_ggml_type t,
                                  const float *imat, ar_gguf_qlinear *out)
{
    memset(out, 0, sizeof *out);
    size_t rb = ar_ggml_row_bytes(t, cols);
    if (!rb) return ar_error("%s: rows of %lld do not fill %s blocks", hf_name, (long long)cols, ar_ggml_type_name(t));
    int64_t step = slice_rows(cols);
    float *x = malloc(sizeof(float) * (size_t)(step < rows ? step : rows) * (size_t)cols);
    out->blocks = malloc(rb * (size_t)rows);
    if (!x || !out->blocks) {
        free(x);
        free(out->blocks);
        out->blocks = NULL;
        return ar_error("%s: out of memory for %lld x %lld %s", hf_name, (long long)rows, (long long)cols,
                        ar_ggml_type_name(t));
    }
    out->type = t;
    out->rows = rows;
    out->cols = cols;
    out->nbytes = rb * (size_t)rows;
    int rc = 0;
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += step) {
        int64_t nr = rows - r0 < step ? rows - r0 : step;
        rc = ar_model_read_tensor(m, hf_name, r0, nr, x) ||
             ar_ggml_quantize(t, x, (uint8_t *)out->blocks + rb * (size_t)r0, nr, cols, imat);
    }
    free(x);
    if (rc) {
        free(out->blocks);
        out->blocks = NULL;
        return ar_error_prefix(hf_name);
    }
    return 0;
}

int ar_gguf_embed_lookup(const ar_gguf_qlinear *emb, const int32_t *ids, size_t n, uint16_t *out)
{
    const size_t rb = ar_ggml_row_bytes(emb->type, emb->cols);
    float *row = malloc(sizeof(float) * (size_t)emb->cols);
    if (!row) return ar_error("embedding lookup: out of memory");
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (ids[i] < 0 || ids[i] >= emb->rows) {
            rc = ar_error("embedding lookup: token id %d outside the %lld rows", ids[i], (long long)emb->rows);
            break;
        }
        rc = ar_ggml_dequantize(emb->type, (const uint8_t *)emb->blocks + rb * (size_t)ids[i], row, emb->cols) ||
             ar_from_f32(out + i * (size_t)emb->cols, row, AR_BF16, (size_t)emb->cols);
    }
    free(row);
    return rc ? -1 : 0;
}
