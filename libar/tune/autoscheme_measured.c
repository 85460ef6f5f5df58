/* autoscheme_measured.c — AutoScheme's measured layer score (autoscheme.h,
 * ar_autoscheme_measure): the calibration loss with one layer quantized
 * minus the loss with it in full precision, by forwards alone.
 *
 * Why: the spec's first-order delta loss Σ|∂L/∂Ŵ ⊙ (W − Ŵ)| misjudges large
 * (2-bit) errors, whose effect on the loss is far from linear; measuring the
 * loss change itself costs forwards only. The base model's block inputs are
 * kept for every sequence, so a layer of block l reruns blocks l..L-1 only. */
#include "autoscheme.h"
#include "error.h"
#include "ops.h"
#include "quant.h"
#include "quant_fp.h"
#include "signround.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One option as the measurement applies it. */
typedef struct {
    int quantizes;          /* 0: kept in full precision (BF16-like) */
    ar_quant_spec qs;
    int has_act;
    ar_act_spec act;
} meas_opt;

/* Everything one measurement holds. */
typedef struct {
    ar_model *m;
    const ar_config *c;
    const ar_block_desc *bd;    /* the model's blocks: nl linears, forward */
    int nl;
    const ar_act_spec **aq;     /* [nl] a block's activation quantizers */
    int L, C, V, nseq, T, B;
    const int32_t *ids;
    int nopt;
    meas_opt *opt;              /* [nopt] */
    const unsigned char *cand;
    const int *base;            /* NULL: all FP */
    float **imat;               /* [nslots] Σx² per input column, or NULL (RTN) */
    float *states;              /* [L+1][nseq·T·C]: the base model's block inputs, then its last output */
    float *cur;                 /* [nseq·T·C]: the chain being measured */
    float **base_w;             /* [nslots]: the slot's weight under base when base quantizes it, else NULL */
    float *var_w;               /* the measured slot's weight (largest linear or the head) */
    ar_block_weights wfp;
    ar_block_weights wv;        /* a view of wfp with some linears swapped (setup_block) */
    ar_block_work ws;
    float *norm_w, *head;       /* final norm, FP head [V, C] */
    float *xn, *rstd, *logits;  /* one sequence: [T, C], [T], [T, V] */
    int imat_layer;             /* block the observer is in */
} meas_ctx;

static size_t chain_floats(const meas_ctx *x) { return (size_t)x->nseq * x->T * x->C; }

static int head_slot(const meas_ctx *x) { return x->L * x->nl; }

static int nslots(const meas_ctx *x) { return x->L * x->nl + 1; }

static void slot_shape(const meas_ctx *x, int slot, int *n, int *k)
{
    if (slot == head_slot(x)) { *n = x->V; *k = x->C; }
    else *n = x->bd->lin[slot % x->nl].n_out, *k = x->bd->lin[slot % x->nl].k_in;
}

/* Option index of slot under base, -1 when base keeps it in full precision. */
static int base_choice(const meas_ctx *x, int slot)
{
    int j = x->base && x->cand[slot] ? x->base[slot] : -1;
    return j >= 0 && j < x->nopt && x->opt[j].quantizes ? j : -1;
}

/* Config of block l: Qwen's first max_window_layers layers see the full context. */
static ar_config block_config(const ar_config *c, int l)
{
    ar_config cl = *c;
    if (l < cl.sliding_from_layer) cl.sliding_window = 0;
    return cl;
}

static int fill_option(const ar_scheme *s, meas_opt *o)
{
    memset(o, 0, sizeof *o);
    if (!ar_scheme_quantized(s)) return 0;
    const char *name = s->name[0] ? s->name : "custom";
    int dt = ar_quant_dtype_parse(s->data_type, s->bits);
    if (dt < 0 || s->kind == AR_SCHEME_GGUF)
        return ar_error("autoscheme: option %s (%s, %d bits) has no RTN quantizer here", name, s->data_type, s->bits);
    o->quantizes = 1;
    o->qs = (ar_quant_spec){s->bits, s->group_size, s->sym, s->group_2d ? AR_QF_BLOCK2D : 0, 0, dt, 0, 0, NULL, NULL};
    if (ar_quant_spec_check(&o->qs)) return -1;
    o->has_act = ar_act_spec_from_scheme(s, 0, &o->act);
    if (o->has_act < 0) return ar_error("autoscheme: option %s: %s", name, ar_last_error());
    return 0;
}

/* ŵ of w [n, k] under option j into out: opt-RTN when an imatrix is there
 * and the spec is symmetric (as ar-tune --iters 0), else RTN. */
static int quantize_slot(const meas_ctx *x, int slot, int j, const float *w, float *out)
{
    int n, k;
    slot_shape(x, slot, &n, &k);
    ar_quant_out qo = {out, NULL, NULL, NULL};
    const ar_quant_spec *qs = &x->opt[j].qs;
    if (x->imat && x->imat[slot] && qs->sym) return ar_quant_opt_rtn(qs, w, n, k, x->imat[slot], &qo);
    return ar_quant_forward(qs, w, n, k, NULL, &qo);
}

/* ---- the forward pieces -------------------------------------------------- */

/* Block l with the base's weights and activation quantizers, and slot
 * var_slot (when in block l) switched to var_w / var_act. wfp gets the FP
 * weights; *w (a view from ar_block_weights_view) borrows from it. */
static int setup_block(meas_ctx *x, int l, int var_slot, const float *var_w, const ar_act_spec *var_act,
                       ar_block_weights *w)
{
    if (ar_model_load_block(x->m, l, &x->wfp)) return -1;
    ar_block_weights_borrow(w, &x->wfp);
    const ar_act_spec **aq = x->aq;
    for (int i = 0; i < x->nl; i++) {
        int slot = l * x->nl + i, j = base_choice(x, slot);
        aq[i] = NULL;
        if (slot == var_slot) {
            w->w[i] = (float *)var_w;
            aq[i] = var_act;
        } else if (j >= 0) {
            w->w[i] = x->base_w[slot];
            aq[i] = x->opt[j].has_act ? &x->opt[j].act : NULL;
        }
    }
    return x->bd->set_act_quant(&x->ws, aq);
}

/* Run block l in place over all nseq sequences of h [nseq·T, C]. */
static int block_all(meas_ctx *x, int l, const ar_block_weights *w, float *h)
{
    ar_config cl = block_config(x->c, l);
    for (int s0 = 0; s0 < x->nseq; s0 += x->B) {
        int b = x->nseq - s0 < x->B ? x->nseq - s0 : x->B;
        float *hb = h + (size_t)s0 * x->T * x->C;
        if (x->bd->forward(&cl, w, hb, hb, b, x->T, &x->ws)) return -1;
    }
    return 0;
}

/* Summed next-token cross-entropy of one sequence's logits [T, V]. */
static double sequence_nll(const float *logits, const int32_t *ids, int T, int V)
{
    double total = 0;
    for (int t = 0; t + 1 < T; t++) {
        const float *z = logits + (size_t)t * V;
        float mx = z[0];
        for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)z[v] - mx);
        total += mx + log(sum) - z[ids[t + 1]];
    }
    return total;
}

/* Mean next-token cross-entropy of the final hidden states h [nseq·T, C]
 * through the final norm and head [V, C] (its input quantized by act when
 * given). */
static int head_loss(meas_ctx *x, const float *h, const float *head, const ar_act_spec *act, double *loss)
{
    double total = 0;
    for (int s = 0; s < x->nseq; s++) {
        ar_rmsnorm_forward(x->xn, x->rstd, h + (size_t)s * x->T * x->C, x->norm_w, x->T, x->C, x->c->rms_eps);
        if (act && ar_act_quant(act, x->xn, x->T, x->C)) return -1;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, x->T, x->V, x->C, 1.0f, x->xn, x->C, head, x->C,
                    0.0f, x->logits, x->V);
        total += sequence_nll(x->logits, x->ids + (size_t)s * x->T, x->T, x->V);
    }
    *loss = total / ((double)x->nseq * (x->T - 1));
    return 0;
}

/* The head and its input quantizer under base. */
static const float *base_head(const meas_ctx *x, const ar_act_spec **act)
{
    int j = base_choice(x, head_slot(x));
    *act = j >= 0 && x->opt[j].has_act ? &x->opt[j].act : NULL;
    return j >= 0 ? x->base_w[head_slot(x)] : x->head;
}

/* ---- the base chain and the imatrix -------------------------------------- */

static void observe_imatrix(void *ctx, int linear, const float *in, long rows, int k)
{
    meas_ctx *x = ctx;
    float *im = x->imat[x->imat_layer * x->nl + linear];
    if (im) ar_imatrix_accumulate(im, in, rows, k);
}

/* Σx² of every candidate's input in the FP model over all sequences,
 * normalized per sequence as ar-tune does; cur is the scratch chain. */
static int build_imatrix(meas_ctx *x)
{
    int ns = nslots(x);
    if (!(x->imat = calloc((size_t)ns, sizeof *x->imat))) return ar_error("autoscheme: out of memory");
    for (int s = 0; s < ns; s++) {
        int n, k;
        slot_shape(x, s, &n, &k);
        if (x->cand[s] && !(x->imat[s] = calloc((size_t)k, sizeof(float))))
            return ar_error("autoscheme: out of memory for the importance matrix");
    }
    for (int i = 0; i < x->nl; i++) x->aq[i] = NULL;
    if (ar_model_embed(x->m, x->ids, x->nseq * x->T, x->cur) || x->bd->set_act_quant(&x->ws, x->aq)) return -1;
    x->ws.observe = observe_imatrix, x->ws.observe_ctx = x;
    for (int l = 0; l < x->L; l++) {
        x->imat_layer = l;
        if (ar_model_load_block(x->m, l, &x->wfp) || block_all(x, l, &x->wfp, x->cur)) return -1;
    }
    x->ws.observe = NULL;
    float *hi = x->imat[head_slot(x)];
    for (int s = 0; hi && s < x->nseq; s++) {
        ar_rmsnorm_forward(x->xn, x->rstd, x->cur + (size_t)s * x->T * x->C, x->norm_w, x->T, x->C, x->c->rms_eps);
        ar_imatrix_accumulate(hi, x->xn, x->T, x->C);
    }
    for (int s = 0; s < ns; s++) {
        int n, k;
        slot_shape(x, s, &n, &k);
        if (x->imat[s]) ar_imatrix_finalize(x->imat[s], k, x->nseq);
    }
    return 0;
}

/* The base's quantized weights of every slot it quantizes. */
static int build_base_weights(meas_ctx *x)
{
    int ns = nslots(x);
    if (!(x->base_w = calloc((size_t)ns, sizeof *x->base_w))) return ar_error("autoscheme: out of memory");
    for (int s = 0; s < ns; s++) {
        int j = base_choice(x, s), n, k;
        if (j < 0 || !x->cand[s]) continue;
        slot_shape(x, s, &n, &k);
        if (!(x->base_w[s] = malloc(sizeof(float) * n * k))) return ar_error("autoscheme: out of memory");
        const float *w = x->head;
        if (s != head_slot(x) && ar_model_load_block(x->m, s / x->nl, &x->wfp)) return -1;
        if (s != head_slot(x)) w = x->wfp.w[s % x->nl];
        if (quantize_slot(x, s, j, w, x->base_w[s])) return -1;
    }
    return 0;
}

/* states[l]: the base model's input of block l; states[L]: its last output. */
static int build_states(meas_ctx *x, double *loss)
{
    size_t cf = chain_floats(x);
    if (ar_model_embed(x->m, x->ids, x->nseq * x->T, x->states)) return -1;
    for (int l = 0; l < x->L; l++) {
        float *next = x->states + (size_t)(l + 1) * cf;
        memcpy(next, x->states + (size_t)l * cf, sizeof(float) * cf);
        if (setup_block(x, l, -1, NULL, NULL, &x->wv) || block_all(x, l, &x->wv, next)) return -1;
    }
    const ar_act_spec *act;
    const float *head = base_head(x, &act);
    return head_loss(x, x->states + (size_t)x->L * cf, head, act, loss);
}

/* ---- one measurement ----------------------------------------------------- */

/* Loss of the base model with slot switched to option j (-1: FP). */
static int loss_with(meas_ctx *x, int slot, int j, double *loss)
{
    size_t cf = chain_floats(x);
    const ar_act_spec *act = j >= 0 && x->opt[j].has_act ? &x->opt[j].act : NULL;
    if (slot == head_slot(x)) {
        const float *head = x->head;
        if (j >= 0 && quantize_slot(x, slot, j, x->head, x->var_w)) return -1;
        if (j >= 0) head = x->var_w;
        return head_loss(x, x->states + (size_t)x->L * cf, head, act, loss);
    }
    int l = slot / x->nl, i = slot % x->nl, n, k;
    slot_shape(x, slot, &n, &k);
    if (ar_model_load_block(x->m, l, &x->wfp)) return -1;
    if (j >= 0 && quantize_slot(x, slot, j, x->wfp.w[i], x->var_w)) return -1;
    if (j < 0) memcpy(x->var_w, x->wfp.w[i], sizeof(float) * n * k);
    memcpy(x->cur, x->states + (size_t)l * cf, sizeof(float) * cf);
    for (int b = l; b < x->L; b++) {
        if (setup_block(x, b, slot, x->var_w, act, &x->wv) || block_all(x, b, &x->wv, x->cur)) return -1;
    }
    const ar_act_spec *hact;
    const float *head = base_head(x, &hact);
    return head_loss(x, x->cur, head, hact, loss);
}

/* Scores of one slot over every option, against its FP loss. */
static int measure_slot(meas_ctx *x, int slot, double base_loss, double *score)
{
    int bj = base_choice(x, slot);
    double ref = base_loss;
    if (bj >= 0 && loss_with(x, slot, -1, &ref)) return -1;
    for (int j = 0; j < x->nopt; j++) {
        double loss = base_loss;
        if (!x->opt[j].quantizes) { score[j] = 0; continue; }
        if (j != bj && loss_with(x, slot, j, &loss)) return -1;
        score[j] = loss > ref ? loss - ref : 0;   /* a loss that falls counts as no loss */
    }
    return 0;
}

/* ---- setup and the whole measurement ------------------------------------- */

static int ctx_init(meas_ctx *x, ar_model *m, const ar_scheme *options, int nopt, const unsigned char *cand,
                    const int *base, const int32_t *ids, int nseq, int T, int batch_size)
{
    const ar_config *c = ar_model_config(m);
    memset(x, 0, sizeof *x);
    x->m = m, x->c = c, x->L = c->n_layers, x->C = c->hidden, x->V = c->vocab;
    x->nseq = nseq, x->T = T, x->B = batch_size < nseq ? batch_size : nseq, x->ids = ids;
    x->nopt = nopt, x->cand = cand, x->base = base;
    x->bd = ar_model_block_desc(m), x->nl = x->bd->nlinear;
    if (!(x->opt = calloc((size_t)nopt, sizeof *x->opt)) || !(x->aq = calloc((size_t)x->nl, sizeof *x->aq)))
        return ar_error("autoscheme: out of memory");
    for (int j = 0; j < nopt; j++)
        if (fill_option(&options[j], &x->opt[j])) return -1;
    size_t cf = chain_floats(x), wmax = (size_t)x->V * x->C;
    for (int i = 0; i < x->nl; i++) {
        size_t nel = (size_t)x->bd->lin[i].n_out * x->bd->lin[i].k_in;
        wmax = nel > wmax ? nel : wmax;
    }
    if (ar_block_weights_alloc(&x->wfp, c) || ar_block_weights_view(&x->wv, &x->wfp) ||
        ar_block_work_init(&x->ws, c, x->B, T, 0))
        return -1;
    x->states = malloc(sizeof(float) * cf * (size_t)(x->L + 1));
    x->cur = malloc(sizeof(float) * cf);
    x->var_w = malloc(sizeof(float) * wmax);
    x->norm_w = malloc(sizeof(float) * x->C);
    x->head = malloc(sizeof(float) * (size_t)x->V * x->C);
    x->xn = malloc(sizeof(float) * (size_t)T * x->C);
    x->rstd = malloc(sizeof(float) * T);
    x->logits = malloc(sizeof(float) * (size_t)T * x->V);
    if (!x->states || !x->cur || !x->var_w || !x->norm_w || !x->head || !x->xn || !x->rstd || !x->logits)
        return ar_error("autoscheme: out of memory for %d x %d calibration tokens (%zu MB of block inputs)", nseq,
                        T, sizeof(float) * cf * (x->L + 1) >> 20);
    const char *hn = c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return ar_model_read_tensor(m, "model.norm.weight", 0, x->C, x->norm_w) ||
           ar_model_read_tensor(m, hn, 0, x->V, x->head) ? -1 : 0;
}

static void ctx_free(meas_ctx *x)
{
    int ns = nslots(x);
    for (int s = 0; s < ns; s++) {
        if (x->imat) free(x->imat[s]);
        if (x->base_w) free(x->base_w[s]);
    }
    free(x->imat); free(x->base_w); free(x->opt); free(x->aq);
    ar_block_weights_free(&x->wfp);
    ar_block_weights_release(&x->wv);
    ar_block_work_free(&x->ws);
    free(x->states); free(x->cur); free(x->var_w); free(x->norm_w); free(x->head);
    free(x->xn); free(x->rstd); free(x->logits);
}

int ar_autoscheme_measure(ar_model *m, const ar_scheme *options, int nopt, const unsigned char *candidate,
                          const int *base, int opt_rtn, const int32_t *ids, int nseq, int T, int batch_size,
                          double *score, double *base_loss, ar_as_progress_fn progress, void *pctx)
{
    if (nseq < 1 || T < 2 || batch_size < 1 || nopt < 1)
        return ar_error("autoscheme: need sequences of at least 2 tokens (%d x %d) and options", nseq, T);
    /* its head reads model.norm.weight as a plain RMSNorm, without Gemma's 1 + w and soft-cap */
    if (strcmp(ar_model_block_desc(m)->family, "llama"))
        return ar_error("autoscheme: %s is not supported yet (llama family only)", ar_model_config(m)->arch_name);
    meas_ctx x;
    int rc = -1, ns = ar_model_config(m)->n_layers * ar_model_block_desc(m)->nlinear + 1, todo = 0, done = 0;
    double bl;
    memset(score, 0, sizeof(double) * ns * nopt);
    if (ctx_init(&x, m, options, nopt, candidate, base, ids, nseq, T, batch_size)) goto out;
    /* a tied head is the embedding: never a candidate here */
    int last = x.c->tie_embeddings ? head_slot(&x) : ns;
    for (int s = 0; s < last; s++) todo += candidate[s] != 0;
    if ((opt_rtn && build_imatrix(&x)) || build_base_weights(&x) || build_states(&x, &bl)) goto out;
    for (int s = 0; s < last; s++) {
        if (!candidate[s]) continue;
        if (measure_slot(&x, s, bl, score + (size_t)s * nopt)) goto out;
        if (progress) progress(pctx, "measure", ++done, todo, bl);
    }
    if (base_loss) *base_loss = bl;
    rc = 0;
out:
    ctx_free(&x);
    return rc;
}
