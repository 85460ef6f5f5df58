/* test_block_family.c — the parts of the pipeline that read the block
 * description (block_desc.h) instead of the seven Llama linears take a family
 * with another number of linears unchanged. Two families exist only in this
 * test, both Llama's block with its linears cut differently:
 *  - "fused QKV": q/k/v as one linear "self_attn.qkv_proj" [QD + 2·KD, C]
 *    (five linears);
 *  - "split MLP": gate and up each as two linears of F/2 rows, as experts
 *    would come in several pieces (nine linears, more than AR_NLINEAR).
 * A family's forward/backward copies its rows into Llama's weights and runs
 * Llama's block; the weight gradients go back to the rows they came from.
 *
 * Reference, computed another way: the same numbers as the plain Llama
 * description. Every quantizer here works row by row (groups along the
 * input), SignRound's tunables and steps are elementwise and the block does
 * the same arithmetic on the same numbers, so the plan, the quantizer outputs
 * (ar_block_plan_outputs), the CPU tuner (ar_signround_tune_block) and the
 * GGUF block quantizer must give each family linear exactly the bytes of the
 * Llama rows it holds: equality, no tolerance. (One mini-batch per step, so
 * every weight gradient is one product added to zero on both sides.) */
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

/* ---- families as row maps onto Llama's linears ------------------------------ */

/* rows [fam_row, fam_row + rows) of family linear fam are rows
 * [ll_row, ll_row + rows) of Llama linear ll. */
typedef struct {
    int fam, fam_row, ll, ll_row, rows;
} segment;

#define MAX_SEG 16

typedef struct {
    ar_block_desc desc;
    segment seg[MAX_SEG];
    int nseg;
} family;

/* The family whose functions run (the function types carry no context). */
static const family *g_fam;

static void add_seg(family *f, int fam, int fam_row, int ll, int ll_row, int rows)
{
    cr_assert_lt(f->nseg, MAX_SEG);
    f->seg[f->nseg++] = (segment){fam, fam_row, ll, ll_row, rows};
}

/* Copy the rows of every segment between family weights fw and Llama's lw
 * (to_llama: family -> Llama, else back). */
static void copy_rows(const family *f, float *const *fw, float *const *lw, int to_llama)
{
    for (int s = 0; s < f->nseg; s++) {
        const segment *g = &f->seg[s];
        int k = f->desc.lin[g->fam].k_in;
        float *a = fw[g->fam] + (size_t)g->fam_row * k, *b = lw[g->ll] + (size_t)g->ll_row * k;
        if (to_llama) memcpy(b, a, sizeof(float) * g->rows * k);
        else memcpy(a, b, sizeof(float) * g->rows * k);
    }
}

/* Llama weights (own buffers) holding family weights w's numbers. */
static int llama_weights(const ar_config *c, const ar_block_weights *w, ar_block_weights *l)
{
    if (ar_block_weights_init(l, AR_NLINEAR)) return -1;
    l->attn_norm = w->attn_norm, l->mlp_norm = w->mlp_norm, l->q_norm = w->q_norm, l->k_norm = w->k_norm;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        if (!(l->w[i] = malloc(sizeof(float) * n * k))) return ar_error("out of memory");
    }
    copy_rows(g_fam, w->w, l->w, 1);
    return 0;
}

static void llama_free(ar_block_weights *l)
{
    for (int i = 0; l->w && i < AR_NLINEAR; i++) free(l->w[i]);
    ar_block_weights_release(l);
}

static int fam_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                       ar_block_work *ws)
{
    ar_block_weights l;
    int rc = llama_weights(c, w, &l) || ar_block_forward(c, &l, x, y, B, T, ws) ? -1 : 0;
    llama_free(&l);
    return rc;
}

static int fam_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                             ar_block_work *ws, ar_block_acts *a)
{
    ar_block_weights l;
    int rc = llama_weights(c, w, &l) || ar_block_forward_train(c, &l, x, y, B, T, ws, a) ? -1 : 0;
    llama_free(&l);
    return rc;
}

/* Llama's weight gradients into zeroed buffers, then added to the family
 * rows they belong to. No per-linear input gradients (AutoScheme's). */
static int fam_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                        float *const *dW, float *dx, float *const *dxin, ar_block_work *ws)
{
    for (int j = 0; dxin && j < g_fam->desc.nlinear; j++)
        if (dxin[j]) return ar_error("test family: no per-linear input gradients");
    ar_block_weights l;
    float *ldw[AR_NLINEAR] = {0};
    int rc = llama_weights(c, w, &l);
    for (int s = 0; !rc && s < g_fam->nseg; s++) {
        const segment *g = &g_fam->seg[s];
        int n, k;
        ar_linear_shape(c, g->ll, &n, &k);
        if (dW[g->fam] && !ldw[g->ll] && !(ldw[g->ll] = calloc((size_t)n * k, sizeof(float)))) rc = -1;
    }
    if (!rc) rc = ar_block_backward(c, &l, a, dy, ldw, dx, ws);
    for (int s = 0; !rc && s < g_fam->nseg; s++) {
        const segment *g = &g_fam->seg[s];
        int k = g_fam->desc.lin[g->fam].k_in;
        if (!dW[g->fam]) continue;
        float *to = dW[g->fam] + (size_t)g->fam_row * k;
        const float *from = ldw[g->ll] + (size_t)g->ll_row * k;
        for (size_t e = 0; e < (size_t)g->rows * k; e++) to[e] += from[e];
    }
    for (int i = 0; i < AR_NLINEAR; i++) free(ldw[i]);
    llama_free(&l);
    return rc;
}

/* Each Llama linear reads its input through the quantizer of the family
 * linear its first rows belong to. */
static int fam_set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq)
{
    const ar_act_spec *l[AR_NLINEAR] = {0};
    for (int s = g_fam->nseg - 1; s >= 0; s--) l[g_fam->seg[s].ll] = aq ? aq[g_fam->seg[s].fam] : NULL;
    return ar_block_set_act_quant(ws, l);
}

/* A family of nl linears: names and rows given, inputs and columns those of
 * the Llama linear of its first segment. */
static void family_finish(family *f, const ar_config *c, int nl, const char *const *names)
{
    ar_block_desc llama;
    cr_assert_eq(ar_block_desc_init(&llama, c), 0, "%s", ar_last_error());
    f->desc = llama;
    f->desc.nlinear = nl;
    cr_assert(f->desc.lin = calloc(nl, sizeof *f->desc.lin));
    for (int s = f->nseg - 1; s >= 0; s--) f->desc.lin[f->seg[s].fam] = llama.lin[f->seg[s].ll];
    for (int j = 0; j < nl; j++) f->desc.lin[j].name = names[j], f->desc.lin[j].n_out = 0;
    for (int s = 0; s < f->nseg; s++) f->desc.lin[f->seg[s].fam].n_out += f->seg[s].rows;
    f->desc.forward = fam_forward;
    f->desc.forward_train = fam_forward_train;
    f->desc.backward = fam_backward;
    f->desc.set_act_quant = fam_set_act_quant;
    llama.input_names = NULL, llama.input_kind = NULL; /* now f->desc's */
    ar_block_desc_free(&llama);
}

static void fused_qkv(family *f, const ar_config *c)
{
    static const char *const names[] = {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                        "mlp.down_proj"};
    int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    memset(f, 0, sizeof *f);
    add_seg(f, 0, 0, AR_Q, 0, QD);
    add_seg(f, 0, QD, AR_K, 0, KD);
    add_seg(f, 0, QD + KD, AR_V, 0, KD);
    add_seg(f, 1, 0, AR_O, 0, c->hidden);
    add_seg(f, 2, 0, AR_GATE, 0, c->intermediate);
    add_seg(f, 3, 0, AR_UP, 0, c->intermediate);
    add_seg(f, 4, 0, AR_DOWN, 0, c->hidden);
    family_finish(f, c, 5, names);
}

static void split_mlp(family *f, const ar_config *c)
{
    static const char *const names[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.o_proj", "mlp.gate_proj.0",  "mlp.gate_proj.1",
                                        "mlp.up_proj.0",    "mlp.up_proj.1",    "mlp.down_proj"};
    int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim, H = c->intermediate / 2;
    memset(f, 0, sizeof *f);
    add_seg(f, 0, 0, AR_Q, 0, QD);
    add_seg(f, 1, 0, AR_K, 0, KD);
    add_seg(f, 2, 0, AR_V, 0, KD);
    add_seg(f, 3, 0, AR_O, 0, c->hidden);
    add_seg(f, 4, 0, AR_GATE, 0, H);
    add_seg(f, 5, 0, AR_GATE, H, H);
    add_seg(f, 6, 0, AR_UP, 0, H);
    add_seg(f, 7, 0, AR_UP, H, H);
    add_seg(f, 8, 0, AR_DOWN, 0, c->hidden);
    family_finish(f, c, 9, names);
}

/* ---- a random block and its calibration cache ----------------------------- */

static float gauss(uint64_t *rng)
{
    double u = ((ar_rand_next(rng) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double v = (ar_rand_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static ar_config small_config(int C, int F, int HD)
{
    ar_config c = {0};
    c.hidden = C, c.intermediate = F, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = HD;
    c.rms_eps = 1e-5f, c.rope_theta = 10000.0, c.n_layers = 1;
    return c;
}

/* Random bf16-valued Llama weights (wl, own buffers) and the family's
 * weights wf (own buffers, the same numbers by rows). */
static void random_weights(const ar_config *c, const family *f, ar_block_weights *wl, ar_block_weights *wf,
                           uint64_t seed)
{
    uint64_t rng = seed;
    cr_assert(!ar_block_weights_init(wl, AR_NLINEAR) && !ar_block_weights_init(wf, f->desc.nlinear));
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        wl->w[i] = malloc(sizeof(float) * n * k);
        for (long e = 0; e < (long)n * k; e++) wl->w[i][e] = ar_round_bf16(gauss(&rng) / sqrtf((float)k));
    }
    for (int j = 0; j < f->desc.nlinear; j++)
        wf->w[j] = malloc(sizeof(float) * f->desc.lin[j].n_out * f->desc.lin[j].k_in);
    copy_rows(f, wf->w, wl->w, 0);
    float *norm = malloc(sizeof(float) * c->hidden);
    for (int e = 0; e < c->hidden; e++) norm[e] = 1.0f + 0.1f * gauss(&rng);
    wl->attn_norm = wl->mlp_norm = wf->attn_norm = wf->mlp_norm = norm;
}

static void weights_free(ar_block_weights *wl, ar_block_weights *wf)
{
    free(wl->attn_norm);
    for (int i = 0; i < wl->nlinear; i++) free(wl->w[i]);
    for (int j = 0; j < wf->nlinear; j++) free(wf->w[j]);
    ar_block_weights_release(wl);
    ar_block_weights_release(wf);
}

/* n samples of T tokens: random inputs x and the FP block's outputs y (bf16). */
static void calib_cache(const ar_config *c, const ar_block_weights *wl, int n, int T, uint16_t **x, uint16_t **y)
{
    uint64_t rng = 7;
    long nel = (long)n * T * c->hidden;
    float *xf = malloc(sizeof(float) * nel), *yf = malloc(sizeof(float) * nel);
    for (long e = 0; e < nel; e++) xf[e] = gauss(&rng);
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, c, n, T, 0), 0);
    cr_assert_eq(ar_block_forward(c, wl, xf, yf, n, T, &ws), 0);
    ar_block_work_free(&ws);
    *x = malloc(2 * nel), *y = malloc(2 * nel);
    ar_from_f32(*x, xf, AR_BF16, nel);
    ar_from_f32(*y, yf, AR_BF16, nel);
    free(xf); free(yf);
}

/* ---- SignRound on a family against Llama -------------------------------------- */

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

/* The rows of each segment: equal weights, codes, scales and zero points. */
static void same_outputs(const family *f, const ar_block_desc *ll, const ar_quant_spec *spec,
                         const ar_quant_out *out_l, const ar_quant_out *out_f)
{
    for (int s = 0; s < f->nseg; s++) {
        const segment *g = &f->seg[s];
        const char *name = ll->lin[g->ll].name;
        int k = ll->lin[g->ll].k_in, ng = ar_quant_ngroups(k, spec->group_size);
        size_t a = (size_t)g->fam_row, b = (size_t)g->ll_row, rows = (size_t)g->rows;
        const ar_quant_out *of = &out_f[g->fam], *ol = &out_l[g->ll];
        cr_assert_eq(memcmp(of->wq + a * k, ol->wq + b * k, rows * k * sizeof(float)), 0, "%s: weights", name);
        cr_assert_eq(memcmp(of->codes + a * k, ol->codes + b * k, rows * k), 0, "%s: codes", name);
        cr_assert_eq(memcmp(of->scale + a * ng, ol->scale + b * ng, rows * ng * sizeof(float)), 0, "%s: scales", name);
        cr_assert_eq(memcmp(of->zp + a * ng, ol->zp + b * ng, rows * ng * sizeof(int32_t)), 0, "%s: zero points",
                     name);
    }
}

/* SignRound on both descriptions of one block: equal losses and outputs. */
static void tune_both(void (*make)(family *, const ar_config *), ar_quant_spec spec, const ar_act_spec *act,
                      int minmax)
{
    omp_set_num_threads(1);
    ar_config c = small_config(32, 64, 8);
    family f;
    make(&f, &c);
    g_fam = &f;
    ar_block_desc ll;
    cr_assert_eq(ar_block_desc_init(&ll, &c), 0);
    ar_block_weights wl, wf;
    random_weights(&c, &f, &wl, &wf, 2024);
    const int n = 4, T = 8;
    uint16_t *x, *y;
    calib_cache(&c, &wl, n, T, &x, &y);
    ar_block_plan pl, pf;
    plan_every(&pl, &ll, spec, act);
    plan_every(&pf, &f.desc, spec, act);
    ar_quant_out *out_l = ar_block_plan_outputs(&pl), *out_f = ar_block_plan_outputs(&pf);
    cr_assert(out_l && out_f, "%s", ar_last_error());
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = 20, o.batch_size = n, o.minmax_tuning = minmax;
    ar_signround_report rl, rf;
    cr_assert_eq(ar_signround_tune_block(&c, &wl, x, y, NULL, n, T, &pl, &o, out_l, &rl, NULL, NULL), 0, "%s",
                 ar_last_error());
    cr_assert_eq(ar_signround_tune_block(&c, &wf, x, y, NULL, n, T, &pf, &o, out_f, &rf, NULL, NULL), 0, "%s",
                 ar_last_error());
    /* a run that changed nothing would compare equal too: tuning must move */
    cr_assert(rl.best_loss < rl.loss0, "llama: loss %g -> %g", rl.loss0, rl.best_loss);
    cr_assert_eq(rf.loss0, rl.loss0, "loss at iteration 0: family %.17g, llama %.17g", rf.loss0, rl.loss0);
    cr_assert_eq(rf.best_loss, rl.best_loss, "best loss: family %.17g, llama %.17g", rf.best_loss, rl.best_loss);
    cr_assert_eq(rf.best_iter, rl.best_iter);
    same_outputs(&f, &ll, &spec, out_l, out_f);
    ar_block_plan_outputs_free(out_l, &pl);
    ar_block_plan_outputs_free(out_f, &pf);
    ar_block_plan_free(&pl);
    ar_block_plan_free(&pf);
    weights_free(&wl, &wf);
    free(x); free(y);
    ar_block_desc_free(&ll);
    ar_block_desc_free(&f.desc);
}

static const ar_quant_spec INT4_ASYM = {.bits = 4, .group_size = 16, .flags = AR_QF_BF16};
static const ar_quant_spec MXFP4 = {.bits = 4, .group_size = 32, .sym = 1, .flags = AR_QF_BF16, .dtype = AR_QDT_MXFP4};
static const ar_act_spec MXFP4_ACT = {AR_QDT_MXFP4, 4, 32, 1, 0, 0};

Test(block_family, descriptions)
{
    ar_config c = small_config(32, 64, 8);
    family f;
    fused_qkv(&f, &c);
    cr_assert_eq(f.desc.nlinear, 5);
    cr_assert_eq(f.desc.lin[0].n_out, (4 + 2 * 2) * 8);
    cr_assert_eq(ar_block_desc_group(&f.desc, 3), 2);   /* up reads gate's input */
    cr_assert_eq(ar_block_desc_group(&f.desc, 1), 1);
    char name[128];
    ar_block_desc_layer_name(&f.desc, 7, 0, name, sizeof name);
    cr_assert_str_eq(name, "model.layers.7.self_attn.qkv_proj");
    /* outputs are sized by the description: planned linears only */
    ar_block_plan p;
    cr_assert_eq(ar_block_plan_init(&p, &f.desc), 0);
    p.quantize[0] = 1, p.spec[0] = INT4_ASYM;
    ar_quant_out *out = ar_block_plan_outputs(&p);
    cr_assert(out && out[0].wq && out[0].scale && !out[1].wq && !out[4].codes);
    ar_block_plan_outputs_free(out, &p);
    ar_block_plan_free(&p);
    ar_block_desc_free(&f.desc);
    split_mlp(&f, &c);
    cr_assert_eq(f.desc.nlinear, 9);
    cr_assert_eq(f.desc.lin[5].n_out, 32);
    cr_assert_eq(ar_block_desc_group(&f.desc, 7), 4);   /* all four halves read ln2 */
    ar_block_desc_free(&f.desc);
}

Test(block_family, fused_qkv_signround_int_asym_minmax) { tune_both(fused_qkv, INT4_ASYM, NULL, 1); }
Test(block_family, fused_qkv_signround_mxfp4_activations) { tune_both(fused_qkv, MXFP4, &MXFP4_ACT, 0); }
Test(block_family, split_mlp_signround_int_asym_minmax) { tune_both(split_mlp, INT4_ASYM, NULL, 1); }
Test(block_family, split_mlp_signround_mxfp4_activations) { tune_both(split_mlp, MXFP4, &MXFP4_ACT, 0); }

/* GGUF blocks: Q4_K (256-column super-blocks: a wider block) with the
 * importance of each linear's input. */
static void gguf_both(void (*make)(family *, const ar_config *))
{
    ar_config c = small_config(256, 512, 64);
    family f;
    make(&f, &c);
    ar_block_desc ll;
    cr_assert_eq(ar_block_desc_init(&ll, &c), 0);
    ar_block_weights wl, wf;
    random_weights(&c, &f, &wl, &wf, 99);
    uint64_t rng = 5;
    float *imat_l[AR_NLINEAR], *imat_f[MAX_SEG];
    ar_ggml_type tl[AR_NLINEAR], tf[MAX_SEG];
    for (int i = 0; i < AR_NLINEAR; i++) {
        int g = ar_block_desc_group(&ll, i), k = ll.lin[i].k_in;
        imat_l[i] = malloc(sizeof(float) * k);
        for (int e = 0; e < k; e++) imat_l[i][e] = g == i ? 0.5f + fabsf(gauss(&rng)) : imat_l[g][e];
        tl[i] = AR_GGML_Q4_K;
    }
    for (int s = 0; s < f.nseg; s++) imat_f[f.seg[s].fam] = imat_l[f.seg[s].ll], tf[f.seg[s].fam] = AR_GGML_Q4_K;
    ar_gguf_qlinear ql[AR_NLINEAR], qf[MAX_SEG];
    cr_assert_eq(ar_gguf_quantize_block(tl, &ll, 0, &wl, imat_l, ql), 0, "%s", ar_last_error());
    cr_assert_eq(ar_gguf_quantize_block(tf, &f.desc, 0, &wf, imat_f, qf), 0, "%s", ar_last_error());
    for (int s = 0; s < f.nseg; s++) {
        const segment *g = &f.seg[s];
        size_t rb = ar_ggml_row_bytes(AR_GGML_Q4_K, ll.lin[g->ll].k_in);
        cr_assert_eq(memcmp((char *)qf[g->fam].blocks + g->fam_row * rb, (char *)ql[g->ll].blocks + g->ll_row * rb,
                            g->rows * rb),
                     0, "%s rows %d..", ll.lin[g->ll].name, g->ll_row);
    }
    for (int j = 0; j < f.desc.nlinear; j++) cr_assert_eq(qf[j].rows, f.desc.lin[j].n_out);
    ar_gguf_qlinears_free(ql, AR_NLINEAR);
    ar_gguf_qlinears_free(qf, f.desc.nlinear);
    for (int i = 0; i < AR_NLINEAR; i++) free(imat_l[i]);
    weights_free(&wl, &wf);
    ar_block_desc_free(&ll);
    ar_block_desc_free(&f.desc);
}

Test(block_family, fused_qkv_gguf_blocks) { gguf_both(fused_qkv); }
Test(block_family, split_mlp_gguf_blocks) { gguf_both(split_mlp); }
