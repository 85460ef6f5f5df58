/* test_block_family.c — the parts of the pipeline that read the block
 * description (block_desc.h) instead of the seven Llama linears take a family
 * with another number of linears unchanged. The family here exists only in
 * this test: Llama's block with q/k/v fused into one linear
 * "self_attn.qkv_proj" [QD + 2·KD, C] (five linears), its forward/backward
 * the Llama ones over row slices of the fused weight.
 *
 * Reference, computed another way: the same weights as the plain Llama
 * description (seven linears). A row of the fused weight is a row of q, k or
 * v, and every quantizer here works row by row (groups along the input), the
 * SignRound tunables and steps are elementwise and the forward/backward do
 * the same arithmetic on the same numbers, so the plan, the quantizer outputs
 * (ar_block_plan_outputs), the CPU tuner (ar_signround_tune_block) and the
 * GGUF block quantizer must give the fused linear exactly the bytes of q, k
 * and v stacked, and the other four linears exactly theirs: equality, no
 * tolerance. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "block_desc.h"
#include "dtype.h"
#include "error.h"
#include "ggml_blocks.h"
#include "gguf_mix.h"
#include "rng.h"
#include "signround.h"

enum { F_QKV, F_O, F_GATE, F_UP, F_DOWN, F_N };

/* ---- the fused-QKV family ------------------------------------------------- */

/* The Llama linear of fused linear j for j > F_QKV. */
static int llama_of(int j) { return AR_O + (j - F_O); }

/* Row offsets of q, k, v inside the fused weight [QD + 2·KD, C]. */
static void qkv_rows(const ar_config *c, int rows[3])
{
    rows[0] = 0;
    rows[1] = c->n_heads * c->head_dim;
    rows[2] = rows[1] + c->n_kv_heads * c->head_dim;
}

/* Llama's weights viewing the fused ones: q/k/v are row slices of linear 0. */
static ar_block_weights llama_view(const ar_config *c, const ar_block_weights *w)
{
    ar_block_weights l = *w;
    int rows[3];
    qkv_rows(c, rows);
    for (int s = 0; s < 3; s++) l.w[AR_Q + s] = w->w[F_QKV] + (size_t)rows[s] * c->hidden;
    for (int j = F_O; j < F_N; j++) l.w[llama_of(j)] = w->w[j];
    for (int i = 0; i < AR_NLINEAR; i++) l.b[i] = NULL;
    return l;
}

static int fused_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                         ar_block_work *ws)
{
    ar_block_weights l = llama_view(c, w);
    return ar_block_forward(c, &l, x, y, B, T, ws);
}

static int fused_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B,
                               int T, ar_block_work *ws, ar_block_acts *a)
{
    ar_block_weights l = llama_view(c, w);
    return ar_block_forward_train(c, &l, x, y, B, T, ws, a);
}

/* Gradients of the fused weight are the row slices' gradients; dxin of the
 * fused linear is the sum over q/k/v of theirs, which ACCUMULATING into one
 * buffer gives. */
static int fused_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                          float *const dW[], float *dx, float *const dxin[], ar_block_work *ws)
{
    ar_block_weights l = llama_view(c, w);
    float *ldw[AR_NLINEAR] = {0}, *ldx[AR_NLINEAR] = {0};
    int rows[3];
    qkv_rows(c, rows);
    for (int s = 0; s < 3; s++) {
        if (dW[F_QKV]) ldw[AR_Q + s] = dW[F_QKV] + (size_t)rows[s] * c->hidden;
        if (dxin) ldx[AR_Q + s] = dxin[F_QKV];
    }
    for (int j = F_O; j < F_N; j++) {
        ldw[llama_of(j)] = dW[j];
        if (dxin) ldx[llama_of(j)] = dxin[j];
    }
    return ar_block_backward_inputs(c, &l, a, dy, ldw, dx, ldx, ws);
}

static int fused_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq)
{
    const ar_act_spec *l[AR_NLINEAR];
    for (int s = 0; s < 3; s++) l[AR_Q + s] = aq ? aq[F_QKV] : NULL;
    for (int j = F_O; j < F_N; j++) l[llama_of(j)] = aq ? aq[j] : NULL;
    return ar_block_set_act_quant(ws, l);
}

/* The fused family's description of config c (free with ar_block_desc_free). */
static void fused_desc(ar_block_desc *d, const ar_config *c)
{
    ar_block_desc llama;
    cr_assert_eq(ar_block_desc_init(&llama, c), 0, "%s", ar_last_error());
    *d = llama;
    d->family = "test-fused-qkv";
    d->nlinear = F_N;
    d->lin = calloc(F_N, sizeof *d->lin);
    cr_assert(d->lin);
    d->lin[F_QKV] = llama.lin[AR_Q];
    d->lin[F_QKV].name = "self_attn.qkv_proj";
    d->lin[F_QKV].n_out = llama.lin[AR_Q].n_out + llama.lin[AR_K].n_out + llama.lin[AR_V].n_out;
    for (int j = F_O; j < F_N; j++) d->lin[j] = llama.lin[llama_of(j)];
    d->forward = fused_forward;
    d->forward_train = fused_forward_train;
    d->backward = fused_backward;
    d->set_act_quant = fused_set_act_quant;
    ar_block_desc_free(&llama);
}

/* ---- a random block and its calibration cache ----------------------------- */

typedef struct {
    ar_config c;
    ar_block_desc llama, fused;
    ar_block_weights wl, wf;       /* the same numbers: wf.w[F_QKV] is q, k, v stacked */
    int n, T;
    uint16_t *x, *y;               /* bf16 [n, T, C]: inputs, FP block outputs */
} block_case;

static float gauss(uint64_t *rng)
{
    double u = ((ar_rand_next(rng) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double v = (ar_rand_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static void block_case_init(block_case *b)
{
    memset(b, 0, sizeof *b);
    uint64_t rng = 2024;
    ar_config *c = &b->c;
    c->hidden = 32, c->intermediate = 64, c->n_heads = 4, c->n_kv_heads = 2, c->head_dim = 8;
    c->rms_eps = 1e-5f, c->rope_theta = 10000.0, c->n_layers = 1;
    cr_assert_eq(ar_block_desc_init(&b->llama, c), 0);
    fused_desc(&b->fused, c);
    const ar_linear_desc *qkv = &b->fused.lin[F_QKV];
    b->wf.w[F_QKV] = malloc(sizeof(float) * qkv->n_out * qkv->k_in);
    for (int i = 0; i < AR_NLINEAR; i++) {
        size_t nel = (size_t)b->llama.lin[i].n_out * b->llama.lin[i].k_in;
        b->wl.w[i] = malloc(sizeof(float) * nel);
        for (size_t e = 0; e < nel; e++)
            b->wl.w[i][e] = ar_round_bf16(gauss(&rng) / sqrtf((float)b->llama.lin[i].k_in));
    }
    ar_block_weights view = llama_view(c, &b->wf);
    for (int i = AR_Q; i <= AR_V; i++)
        memcpy(view.w[i], b->wl.w[i], sizeof(float) * b->llama.lin[i].n_out * b->llama.lin[i].k_in);
    for (int j = F_O; j < F_N; j++) b->wf.w[j] = b->wl.w[llama_of(j)];
    float *norm = malloc(sizeof(float) * c->hidden);
    for (int e = 0; e < c->hidden; e++) norm[e] = 1.0f + 0.1f * gauss(&rng);
    b->wl.attn_norm = b->wl.mlp_norm = b->wf.attn_norm = b->wf.mlp_norm = norm;
    b->n = 4, b->T = 8;
    long nel = (long)b->n * b->T * c->hidden;
    float *x = malloc(sizeof(float) * nel), *y = malloc(sizeof(float) * nel);
    for (long e = 0; e < nel; e++) x[e] = gauss(&rng);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, c, b->n, b->T, 0), 0);
    cr_assert_eq(ar_block_forward(c, &b->wl, x, y, b->n, b->T, &ws), 0);
    ar_block_work_free(&ws);
    b->x = malloc(2 * nel), b->y = malloc(2 * nel);
    ar_from_f32(b->x, x, AR_BF16, nel);
    ar_from_f32(b->y, y, AR_BF16, nel);
    free(x); free(y);
}

static void block_case_free(block_case *b)
{
    for (int i = 0; i < AR_NLINEAR; i++) free(b->wl.w[i]);
    free(b->wf.w[F_QKV]);
    free(b->wl.attn_norm);
    free(b->x); free(b->y);
    ar_block_desc_free(&b->llama);
    ar_block_desc_free(&b->fused);
}

/* ---- comparing the fused outputs with the stacked Llama ones ---------------- */

/* Fused linear j covers Llama linears [*first, *first + *count). */
static void covered(int j, int *first, int *count)
{
    *first = j == F_QKV ? AR_Q : llama_of(j);
    *count = j == F_QKV ? 3 : 1;
}

/* out_f[j] holds exactly the stacked out_l of the linears it covers. */
static void same_outputs(const block_case *b, const ar_block_plan *pl, const ar_quant_out *out_l,
                         const ar_quant_out *out_f)
{
    for (int j = 0; j < F_N; j++) {
        int first, count;
        covered(j, &first, &count);
        size_t off = 0, goff = 0;
        for (int i = first; i < first + count; i++) {
            int n = b->llama.lin[i].n_out, k = b->llama.lin[i].k_in;
            size_t nel = (size_t)n * k, ng = (size_t)n * ar_quant_ngroups(k, pl->spec[i].group_size);
            cr_assert_eq(memcmp(out_f[j].wq + off, out_l[i].wq, nel * sizeof(float)), 0, "%s: weights",
                         b->llama.lin[i].name);
            cr_assert_eq(memcmp(out_f[j].codes + off, out_l[i].codes, nel), 0, "%s: codes", b->llama.lin[i].name);
            cr_assert_eq(memcmp(out_f[j].scale + goff, out_l[i].scale, ng * sizeof(float)), 0, "%s: scales",
                         b->llama.lin[i].name);
            cr_assert_eq(memcmp(out_f[j].zp + goff, out_l[i].zp, ng * sizeof(int32_t)), 0, "%s: zero points",
                         b->llama.lin[i].name);
            off += nel, goff += ng;
        }
    }
}

/* Plan every linear of d with spec (and act, when not NULL). */
static void plan_every(ar_block_plan *p, const ar_block_desc *d, ar_quant_spec spec, const ar_act_spec *act)
{
    cr_assert_eq(ar_block_plan_init(p, d), 0);
    cr_assert_eq(p->nlinear, d->nlinear);
    for (int i = 0; i < p->nlinear; i++) {
        p->quantize[i] = 1, p->spec[i] = spec;
        if (act) p->act_quant[i] = 1, p->act[i] = *act;
    }
}

/* SignRound on both descriptions of one block: equal losses and outputs. */
static void tune_both(ar_quant_spec spec, const ar_act_spec *act, int minmax)
{
    omp_set_num_threads(1);
    block_case b;
    block_case_init(&b);
    ar_block_plan pl, pf;
    plan_every(&pl, &b.llama, spec, act);
    plan_every(&pf, &b.fused, spec, act);
    ar_quant_out *out_l = ar_block_plan_outputs(&pl), *out_f = ar_block_plan_outputs(&pf);
    cr_assert(out_l && out_f, "%s", ar_last_error());
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = 20, o.batch_size = 2, o.minmax_tuning = minmax;
    ar_signround_report rl, rf;
    cr_assert_eq(ar_signround_tune_block(&b.c, &b.wl, b.x, b.y, NULL, b.n, b.T, &pl, &o, out_l, &rl, NULL, NULL), 0,
                 "%s", ar_last_error());
    cr_assert_eq(ar_signround_tune_block(&b.c, &b.wf, b.x, b.y, NULL, b.n, b.T, &pf, &o, out_f, &rf, NULL, NULL), 0,
                 "%s", ar_last_error());
    /* a run that changed nothing would compare equal too: tuning must move */
    cr_assert(rl.best_loss < rl.loss0, "llama: loss %g -> %g", rl.loss0, rl.best_loss);
    cr_assert_eq(rf.loss0, rl.loss0, "loss at iteration 0: fused %.17g, llama %.17g", rf.loss0, rl.loss0);
    cr_assert_eq(rf.best_loss, rl.best_loss, "best loss: fused %.17g, llama %.17g", rf.best_loss, rl.best_loss);
    cr_assert_eq(rf.best_iter, rl.best_iter);
    same_outputs(&b, &pl, out_l, out_f);
    ar_block_plan_outputs_free(out_l, &pl);
    ar_block_plan_outputs_free(out_f, &pf);
    ar_block_plan_free(&pl);
    ar_block_plan_free(&pf);
    block_case_free(&b);
}

Test(block_family, fused_qkv_description)
{
    block_case b;
    block_case_init(&b);
    cr_assert_eq(b.fused.nlinear, 5);
    cr_assert_eq(b.fused.lin[F_QKV].n_out, (4 + 2 * 2) * 8);
    cr_assert_eq(ar_block_desc_group(&b.fused, F_UP), F_GATE);
    cr_assert_eq(ar_block_desc_group(&b.fused, F_O), F_O);
    char name[128];
    ar_block_desc_layer_name(&b.fused, 7, F_QKV, name, sizeof name);
    cr_assert_str_eq(name, "model.layers.7.self_attn.qkv_proj");
    /* outputs are sized by the description: planned linears only */
    ar_block_plan p;
    cr_assert_eq(ar_block_plan_init(&p, &b.fused), 0);
    p.quantize[F_QKV] = 1, p.spec[F_QKV] = (ar_quant_spec){.bits = 4, .group_size = 16, .sym = 1};
    ar_quant_out *out = ar_block_plan_outputs(&p);
    cr_assert(out && out[F_QKV].wq && out[F_QKV].scale && !out[F_O].wq && !out[F_DOWN].codes);
    ar_block_plan_outputs_free(out, &p);
    ar_block_plan_free(&p);
    block_case_free(&b);
}

Test(block_family, signround_int_asym_minmax) { tune_both((ar_quant_spec){.bits = 4, .group_size = 16, .flags = AR_QF_BF16}, NULL, 1); }

Test(block_family, signround_mxfp4_weights_and_activations)
{
    ar_act_spec act = {AR_QDT_MXFP4, 4, 32, 1, 0, 0};
    tune_both((ar_quant_spec){.bits = 4, .group_size = 32, .sym = 1, .flags = AR_QF_BF16, .dtype = AR_QDT_MXFP4},
              &act, 0);
}

/* GGUF blocks: Q4_K with the importance of each linear's input. */
Test(block_family, gguf_quantize_block)
{
    block_case b;
    block_case_init(&b);
    /* Q4_K's super-blocks are 256 columns wide: a wider block of the same family */
    b.c.hidden = 256, b.c.intermediate = 512, b.c.head_dim = 64;
    ar_block_desc_free(&b.llama);
    ar_block_desc_free(&b.fused);
    cr_assert_eq(ar_block_desc_init(&b.llama, &b.c), 0);
    fused_desc(&b.fused, &b.c);
    uint64_t rng = 99;
    ar_block_weights wl = {0}, wf = {0};
    float *imat_l[AR_NLINEAR], *imat_f[F_N];
    ar_ggml_type tl[AR_NLINEAR], tf[F_N];
    const ar_linear_desc *qkv = &b.fused.lin[F_QKV];
    wf.w[F_QKV] = malloc(sizeof(float) * qkv->n_out * qkv->k_in);
    ar_block_weights view = llama_view(&b.c, &wf);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n = b.llama.lin[i].n_out, k = b.llama.lin[i].k_in;
        wl.w[i] = i <= AR_V ? view.w[i] : malloc(sizeof(float) * n * k);
        for (long e = 0; e < (long)n * k; e++) wl.w[i][e] = gauss(&rng) / sqrtf((float)k);
        imat_l[i] = malloc(sizeof(float) * k);
        for (int e = 0; e < k; e++) imat_l[i][e] = 0.5f + fabsf(gauss(&rng));
        tl[i] = AR_GGML_Q4_K;
    }
    for (int j = 0; j < F_N; j++) {
        int first, count;
        covered(j, &first, &count);
        if (j > F_QKV) wf.w[j] = wl.w[first];
        imat_f[j] = imat_l[first];    /* q, k, v read one input: one importance */
        tf[j] = AR_GGML_Q4_K;
    }
    for (int i = AR_K; i <= AR_V; i++) memcpy(imat_l[i], imat_l[AR_Q], sizeof(float) * b.c.hidden);
    ar_gguf_qlinear ql[AR_NLINEAR], qf[F_N];
    cr_assert_eq(ar_gguf_quantize_block(tl, &b.llama, 0, &wl, imat_l, ql), 0, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_quantize_block(tf, &b.fused, 0, &wf, imat_f, qf), 0, "%s", ar_last_error());
    for (int j = 0; j < F_N; j++) {
        int first, count;
        covered(j, &first, &count);
        size_t off = 0;
        for (int i = first; i < first + count; i++) {
            cr_assert_eq(memcmp((char *)qf[j].blocks + off, ql[i].blocks, ql[i].nbytes), 0, "%s",
                         b.llama.lin[i].name);
            off += ql[i].nbytes;
        }
        cr_assert_eq(qf[j].nbytes, off);
        cr_assert_eq(qf[j].rows, b.fused.lin[j].n_out);
    }
    ar_gguf_qlinears_free(ql, AR_NLINEAR);
    ar_gguf_qlinears_free(qf, F_N);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (i > AR_V) free(wl.w[i]);
        free(imat_l[i]);
    }
    free(wf.w[F_QKV]);
    block_case_free(&b);
}
