/* tune_gguf.c — blocks of GGUF schemes (see tune.h).
 *
 * Each linear is quantized to the ggml type the caller's policy gives it
 * (llama.cpp's mix), by the imatrix-weighted search (importance = Σx² of its
 * inputs on the FP chain; none without calibration data, which is
 * llama-quantize's plain RTN). With iters > 0 the scales that search chose
 * are frozen and SignRound tunes the rounding of every block-quantized linear
 * (quant_ggml.h; no min/max tuning: AutoRound's enable_alg_ext GGUF path),
 * then the codes are rewritten from the tuned ŵ, so the blocks dequantize to
 * exactly the weights that were tuned. With calibration data the stream also
 * carries the token embedding (the mix's type, its columns weighted by block
 * 0's q/k/v sensitivity, see ar_gguf_embedding_importance; with iters > 0 the
 * quantized chain starts from its dequantized rows, what block 0 reads in
 * llama.cpp) and the output head, quantized with the importance matrix of its
 * input (the final-normed hidden states on the FP chain; llama-imatrix
 * collects none). Records: tuned_stream.h's "<hf name>.gguf". */
#include "dtype.h"
#include "error.h"
#include "gguf_mix.h"
#include "quant_ggml.h"
#include "tune_impl.h"
#include "tuned_stream.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_gguf(const tn_run *r, const char *hf_name, const ar_gguf_qlinear *q)
{
    return ar_tuned_write_gguf(r->w, hf_name, q->type, q->rows, q->cols, q->blocks, q->nbytes);
}

/* The policy's type for tensor hf_name (rows of cols). */
static ar_ggml_type type_of(const tn_run *r, const char *hf_name, int64_t cols, int imatrix)
{
    return r->o->gguf_type(r->o->gguf_ctx, r->c, hf_name, cols, imatrix);
}

/* 1 when the quantized chain starts from the quantized embedding and follows
 * the tuned blocks. */
static int quanted_chain(const tn_run *r) { return r->d && r->o->iters > 0 && !r->o->disable_quanted_input; }

/* Block 0 comes first (w0 its weights): the token embedding, quantized with
 * the importance block 0's projections give its columns, and the quantized
 * chain's start. */
static int gguf_embedding(tn_run *r, const ar_block_weights *w0)
{
    const ar_config *c = r->c;
    ar_ggml_type t = type_of(r, "model.embed_tokens.weight", c->hidden, 1);
    if (!ar_ggml_is_quantized(t)) return 0;   /* F16/BF16/F32 mixes: the exporter converts it */
    /* A tied embedding is the output head too (its type is the head's): the
     * block-0 importance measured for untied models does not describe it, so
     * it keeps llama-quantize's plain search. */
    float *imp = NULL;
    if (!c->tie_embeddings) {
        if (!(imp = malloc(sizeof(float) * c->hidden))) return ar_error("out of memory for the embedding's importance");
        ar_gguf_embedding_importance(&r->bd, c, w0, imp);
    }
    ar_gguf_qlinear e;
    int rc = ar_gguf_quantize_model_tensor(r->m, "model.embed_tokens.weight", c->vocab, c->hidden, t, imp, &e);
    free(imp);
    if (rc) return -1;
    rc = write_gguf(r, "model.embed_tokens.weight", &e);
    if (!rc && quanted_chain(r)) {
        size_t ntok = (size_t)r->d->n * r->d->T;
        if (!r->x_q && !(r->x_q = tn_chain_alloc(r))) rc = -1;
        else rc = ar_gguf_embed_lookup(&e, r->d->ids, ntok, r->x_q);
        ar_res_host_wrote(r->gpu, r->x_q);
    }
    free(e.blocks);
    return rc;
}

/* After the last block (r->x_fp holds its FP outputs): the output head,
 * quantized with Σx² of the final-normed hidden states. */
static int gguf_output_head(tn_run *r)
{
    const ar_config *c = r->c;
    if (c->tie_embeddings) return 0;   /* the embedding is the head, written with block 0 */
    ar_ggml_type t = type_of(r, "lm_head.weight", c->hidden, 1);
    if (!ar_ggml_is_quantized(t)) return 0;
    const int T = r->d->T, C = c->hidden;
    if (ar_res_host(r->gpu, r->x_fp)) return -1;   /* the GPU may have written it last */
    float *imat = calloc(C, sizeof(float)), *x = malloc(sizeof(float) * (size_t)T * C);
    int rc = -1;
    if (!imat || !x) {
        ar_error("out of memory for the output head's importance matrix");
        goto done;
    }
    for (int s = 0; s < r->d->n; s++) {
        ar_to_f32(x, r->x_fp + (size_t)s * T * C, AR_BF16, (size_t)T * C);
        if (ar_model_final_norm(r->m, x, T)) goto done;
        ar_imatrix_accumulate(imat, x, T, C);
    }
    ar_gguf_qlinear h;
    if (ar_gguf_quantize_model_tensor(r->m, "lm_head.weight", c->vocab, C, t, imat, &h)) goto done;
    rc = write_gguf(r, "lm_head.weight", &h);
    free(h.blocks);
done:
    free(imat);
    free(x);
    return rc;
}

/* SignRound over the rounding of the block-quantized linears q[] (scales frozen
 * as llama.cpp's search left them; plain-typed ones stay FP while tuning), then
 * their codes rewritten from the tuned weights and the quantized chain
 * advanced. r->y holds the FP outputs. */
static int tune_rounding(tn_run *r, int layer, const ar_block_weights *wfp, ar_gguf_qlinear *q,
                         ar_signround_report *rep)
{
    ar_block_plan plan;
    const int nl = r->bd.nlinear;
    ar_gguf_frozen *fz = calloc(nl, sizeof *fz);
    ar_quant_out *out = NULL;
    int rc = -1;
    if (ar_block_plan_init(&plan, &r->bd) || !fz) {
        if (!fz) ar_error("out of memory for the frozen scales");
        goto done;
    }
    for (int i = 0; i < nl; i++) {
        if (!ar_ggml_is_quantized(q[i].type)) continue;
        if (ar_quant_gguf_freeze(q[i].type, q[i].blocks, (int)q[i].rows, (int)q[i].cols, &fz[i], &plan.spec[i]))
            goto done;
        plan.quantize[i] = 1;
    }
    if (!(out = ar_block_plan_outputs(&plan)) || tn_signround_block(r, layer, wfp, &plan, 0, 0, out, rep)) goto done;
    for (int i = 0; i < nl; i++)
        if (plan.quantize[i] &&
            ar_quant_gguf_store(&plan.spec[i], out[i].wq, (int)q[i].rows, (int)q[i].cols, q[i].blocks)) {
            char where[256];
            ar_block_desc_layer_name(&r->bd, layer, i, where, sizeof where);
            ar_error_prefix(where);
            goto done;
        }
    rc = 0;
done:
    for (int i = 0; fz && i < nl; i++) ar_gguf_frozen_free(&fz[i]);
    free(fz);
    ar_block_plan_outputs_free(out, &plan);
    ar_block_plan_free(&plan);
    return rc;
}

/* With data: the FP outputs into r->y and the linears' importance matrices
 * (imat entries allocated here), then the ggml quantization into q and, with
 * iters > 0, SignRound over its rounding (*tuned set). */
static int quantize_linears(tn_run *r, int layer, const ar_block_weights *wfp, const ar_ggml_type *types,
                            float **imat, ar_gguf_qlinear *q, ar_signround_report *rep, int *tuned)
{
    for (int i = 0; r->d && i < r->bd.nlinear; i++)
        if (!(imat[i] = calloc(r->bd.lin[i].k_in, sizeof(float)))) return ar_error("out of memory for the importance matrix");
    if (r->d && tn_forward_all(r, wfp, r->x_fp, r->y, imat, NULL, NULL)) return -1;
    if (ar_gguf_quantize_block(types, &r->bd, layer, wfp, r->d ? imat : NULL, q)) return -1;
    if (r->d && r->o->iters > 0) {
        if (tune_rounding(r, layer, wfp, q, rep)) return -1;
        *tuned = 1;
    }
    return 0;
}

int tn_block_gguf(tn_run *r, int layer, const ar_block_weights *wfp)
{
    const ar_config *c = r->c;
    if (!r->o->gguf_type) return ar_error("scheme %s: no GGUF type policy was given", r->o->scheme.name);
    if (r->d && layer == 0 && gguf_embedding(r, wfp)) return -1;
    const int nl = r->bd.nlinear;
    ar_ggml_type *types = calloc(nl, sizeof *types);
    float **imat = calloc(nl, sizeof *imat);
    ar_gguf_qlinear *q = calloc(nl, sizeof *q);
    ar_signround_report rep;
    int tuned = 0, rc = -1;
    if (!types || !imat || !q) {
        ar_error("out of memory for a GGUF block");
        goto done;
    }
    for (int i = 0; i < nl; i++) {
        char hf[256];
        snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", layer, r->bd.lin[i].name);
        types[i] = type_of(r, hf, r->bd.lin[i].k_in, r->d != NULL);
    }
    if (quantize_linears(r, layer, wfp, types, imat, q, &rep, &tuned)) goto done;
    if (r->d) { uint16_t *t = r->x_fp; r->x_fp = r->y; r->y = t; }  /* FP chain: Y is the next input */
    for (int i = 0; i < nl; i++) {
        char hf[256];
        snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", layer, r->bd.lin[i].name);
        if (write_gguf(r, hf, &q[i])) goto done;
    }
    if (r->d && layer == c->n_layers - 1 && gguf_output_head(r)) goto done;
    tn_block_done(r, layer, tuned ? &rep : NULL);
    rc = 0;
done:
    if (q) ar_gguf_qlinears_free(q, nl);
    for (int i = 0; imat && i < nl; i++) free(imat[i]);
    free(types); free(imat); free(q);
    return rc;
}
