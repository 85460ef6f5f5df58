/* test_autoscheme.c — AutoScheme: bit accounting against hand-worked spec
 * numbers, the DP against hand-worked cases and brute-force enumeration,
 * the delta-loss scores against PyTorch autograd over AutoRound's own RTN
 * (tests/fixtures/autoscheme/make_scores.py), and whole runs on stories260K. */
#include "autoscheme.h"
#include "calib.h"
#include "error.h"
#include "fixture.h"
#include "quant.h"
#include "refblock.h"
#include "rng.h"
#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ar_scheme preset(const char *name)
{
    ar_scheme s;
    cr_assert_eq(ar_scheme_preset(&s, name), 0, "%s", ar_last_error());
    return s;
}

/* Bits per weight of a preset on a [n, k] layer. */
static double per_weight(const char *name, int n, int k, int ignore)
{
    ar_scheme s = preset(name);
    return (double)ar_layer_bits(&s, n, k, ignore) / ((double)n * k);
}

Test(autoscheme, layer_bits_match_the_spec)
{
    /* spec §5.2: W4A16 g128 pays 16 scale bits and (quirk) 4 zp bits per 128 */
    cr_assert_eq(per_weight("W4A16", 4096, 4096, 0), 4.0 + 20.0 / 128);
    cr_assert(fabs(per_weight("W4A16", 4096, 4096, 0) - 4.156) <= 0.0005); /* the spec rounds to 3 decimals */
    cr_assert_eq(per_weight("W2A16G64", 512, 512, 0), 2.0 + 18.0 / 64);
    cr_assert_eq(per_weight("W3A16", 256, 1280, 0), 3.0 + 19.0 / 128);
    /* a short last group still counts as a group: K = 200, G = 128 -> 2 groups */
    cr_assert_eq(per_weight("W4A16", 32, 200, 0), (4.0 * 200 + 2 * 20) / 200);
    /* MX/NV scales are 8 bits and there is no zero point */
    cr_assert_eq(per_weight("MXFP4", 128, 256, 0), 4.0 + 8.0 / 32);
    cr_assert_eq(per_weight("NVFP4", 128, 256, 0), 4.0 + 8.0 / 16);
    /* per output channel: one fp16 scale per row; int also pays the zp */
    cr_assert_eq(per_weight("FP8_STATIC", 64, 512, 0), 8.0 + 16.0 / 512);
    cr_assert_eq(per_weight("INT8", 64, 512, 0), 8.0 + 24.0 / 512);
    /* GGUF K: 2·super_bits per sub-block and 64 bits per super group of 8 */
    cr_assert_eq(per_weight("GGUF:Q4_K_S", 64, 512, 0), 4.0 + 12.0 / 32 + 64.0 / 256);
    cr_assert_eq(per_weight("BF16", 64, 512, 0), 16.0);
    cr_assert_eq(per_weight("W4A16", 4096, 4096, 1), 4.0);
    cr_assert_eq(per_weight("BF16", 64, 512, 1), 16.0);
    /* an asymmetric int layer pays the same zp as the symmetric quirk */
    ar_scheme a = preset("W4A16");
    a.sym = 0;
    cr_assert_eq(ar_layer_bits(&a, 64, 512, 0), 4 * 64 * 512 + 64 * 4 * 20);
}

Test(autoscheme, dp_beats_greedy_on_a_hand_worked_case)
{
    /* A: 1 or 4 bits (loss 9 or 0); B, C: 1 or 3 bits (loss 5 or 0); budget 7.
     * Upgrading A (best loss per bit) leaves no room: loss 10; B and C: loss 9. */
    int64_t bits[] = {1, 4, 1, 3, 1, 3};
    double loss[] = {9, 0, 5, 0, 5, 0};
    int ch[3];
    int64_t used;
    double tot;
    cr_assert_eq(ar_autoscheme_dp(3, 2, bits, loss, NULL, 7, 0, ch, &used, &tot), 0, "%s", ar_last_error());
    cr_assert(ch[0] == 0 && ch[1] == 1 && ch[2] == 1, "choice %d %d %d", ch[0], ch[1], ch[2]);
    cr_assert_eq(used, 7);
    cr_assert_eq(tot, 9.0);
    /* exact budget 3: all low; 2: infeasible with a message */
    cr_assert_eq(ar_autoscheme_dp(3, 2, bits, loss, NULL, 3, 0, ch, &used, &tot), 0);
    cr_assert(ch[0] == 0 && ch[1] == 0 && ch[2] == 0 && used == 3 && tot == 19.0);
    cr_assert_eq(ar_autoscheme_dp(3, 2, bits, loss, NULL, 2, 0, ch, &used, &tot), -1);
    cr_assert(strstr(ar_last_error(), "budget"), "%s", ar_last_error());
    /* budget 10 fits everything high */
    cr_assert_eq(ar_autoscheme_dp(3, 2, bits, loss, NULL, 10, 0, ch, &used, &tot), 0);
    cr_assert(used == 10 && tot == 0.0);
    /* a mask forbidding A's high option changes nothing at 7, forces all-low-A at 10 */
    unsigned char allowed[] = {1, 0, 1, 1, 1, 1};
    cr_assert_eq(ar_autoscheme_dp(3, 2, bits, loss, allowed, 10, 0, ch, &used, &tot), 0);
    cr_assert(ch[0] == 0 && ch[1] == 1 && ch[2] == 1 && used == 7 && tot == 9.0);
}

/* Least loss over all nopt^nitems assignments within budget (-1: none). */
static double brute_force(int nitems, int nopt, const int64_t *bits, const double *loss, int64_t budget)
{
    double best = -1;
    long total = 1;
    for (int i = 0; i < nitems; i++) total *= nopt;
    for (long code = 0; code < total; code++) {
        long c = code;
        int64_t b = 0;
        double l = 0;
        for (int i = 0; i < nitems; i++, c /= nopt) {
            b += bits[i * nopt + c % nopt];
            l += loss[i * nopt + c % nopt];
        }
        if (b <= budget && (best < 0 || l < best)) best = l;
    }
    return best;
}

Test(autoscheme, dp_equals_brute_force_on_random_problems)
{
    uint64_t st = 12345;
    for (int trial = 0; trial < 200; trial++) {
        int nitems = 1 + (int)ar_rand_below(&st, 7), nopt = 1 + (int)ar_rand_below(&st, 3);
        int64_t bits[21];
        double loss[21];
        for (int j = 0; j < nitems * nopt; j++) {
            bits[j] = 1 + (int64_t)ar_rand_below(&st, 20);
            loss[j] = (double)ar_rand_below(&st, 1000) / 10;
        }
        int64_t budget = (int64_t)ar_rand_below(&st, 20 * (uint64_t)nitems + 1);
        double want = brute_force(nitems, nopt, bits, loss, budget);
        int ch[7];
        int64_t used;
        double tot;
        int rc = ar_autoscheme_dp(nitems, nopt, bits, loss, NULL, budget, 0, ch, &used, &tot);
        if (want < 0) { cr_assert_eq(rc, -1, "trial %d: infeasible yet solved", trial); continue; }
        cr_assert_eq(rc, 0, "trial %d: %s", trial, ar_last_error());
        int64_t b = 0;
        double l = 0;
        for (int i = 0; i < nitems; i++) { b += bits[i * nopt + ch[i]]; l += loss[i * nopt + ch[i]]; }
        /* sums of at most 7 positive doubles in other orders: gamma_7 (double) */
        cr_assert(b == used && b <= budget, "trial %d: totals", trial);
        fx_assert_within(l, tot, fx_gamma_d(nitems) * (l + tot), "trial %d: total loss", trial);
        fx_assert_within(l, want, fx_gamma_d(nitems) * (l + want), "trial %d: loss vs brute force", trial);
        /* a beam cap still returns a feasible assignment */
        cr_assert_eq(ar_autoscheme_dp(nitems, nopt, bits, loss, NULL, budget, 2, ch, &used, &tot), 0);
        cr_assert(used <= budget);
    }
}

static ar_model *open_stories(void)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    ar_model *m = ar_model_open(dir, AR_MODEL_CACHE);
    cr_assert(m, "%s", ar_last_error());
    return m;
}

/* What both score-against-PyTorch tests start from: make_scores.py's
 * reference, stories260K, its B x T synthetic tokens, and every q/k/v/o as
 * a candidate. */
enum { SCORE_B = 4, SCORE_T = 32 };
typedef struct {
    cJSON *ref;
    ar_model *m;
    const ar_config *c;
    int ns;
    unsigned char *cand;
    int32_t ids[SCORE_B * SCORE_T];
} score_case;

static void score_case_open(score_case *sc)
{
    sc->ref = fx_load_json("tests/fixtures/autoscheme/stories260K_scores.json");
    sc->m = open_stories();
    sc->c = ar_model_config(sc->m);
    for (int b = 0; b < SCORE_B; b++)
        for (int t = 0; t < SCORE_T; t++) sc->ids[b * SCORE_T + t] = (131 * b + 17 * t + 7) % 512;
    sc->ns = ar_autoscheme_nslots(sc->c);
    sc->cand = calloc((size_t)sc->ns, 1);
    for (int l = 0; l < sc->c->n_layers; l++)
        for (int i = AR_Q; i <= AR_O; i++) sc->cand[l * AR_NLINEAR + i] = 1;
}

static void score_case_close(score_case *sc)
{
    free(sc->cand);
    ar_model_close(sc->m);
    cJSON_Delete(sc->ref);
}

/* ar_autoscheme_score's weight term and mean loss with refblock.c's fx ops,
 * for Monte Carlo arithmetic (fixture.h): the model with the candidates'
 * RTN weights, in batches of bs sequences: forward, each batch's mean
 * next-token cross-entropy, its gradient back through the head, the final
 * norm and every block; score[slot] += sum |dW (w - w-hat)|. out = the ns
 * scores, then the mean loss. The scores and PyTorch's are gradients of a
 * whole model: each side's rounding is estimated this way, per score. */
typedef struct {
    score_case *sc;
    int bs;
    rb_weights *wl;     /* per layer, candidates quantized */
    double **delta;     /* [layer * AR_NLINEAR + i]: w - w-hat, or NULL */
    double *head, *norm;
} score_run;

static void run_scores(void *ctx, double *out)
{
    score_run *r = ctx;
    const ar_config *c = r->sc->c;
    int L = c->n_layers, C = c->hidden, V = c->vocab, T = SCORE_T, BT = r->bs * T, ns = r->sc->ns;
    float *xf = malloc(sizeof(float) * BT * C);
    fx_ev **xs = malloc(sizeof(fx_ev *) * (L + 1)), *xn = malloc(sizeof(fx_ev) * BT * C), *s = malloc(sizeof(fx_ev) * BT);
    fx_ev *z = malloc(sizeof(fx_ev) * BT * V), *dxn = malloc(sizeof(fx_ev) * BT * C), *dx = malloc(sizeof(fx_ev) * BT * C);
    fx_ev *dx2 = malloc(sizeof(fx_ev) * BT * C), *dW[AR_NLINEAR];
    rb_fwd **kept = malloc(sizeof(rb_fwd *) * L);
    fx_acc *acc = malloc(sizeof(fx_acc) * BT * C);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        dW[i] = malloc(sizeof(fx_ev) * n * k);
    }
    for (int j = 0; j <= ns; j++) out[j] = 0;
    int nb = 0;
    for (int b0 = 0; b0 < SCORE_B; b0 += r->bs, nb++) {
        const int32_t *ids = r->sc->ids + b0 * T;
        cr_assert_eq(ar_model_embed(r->sc->m, ids, BT, xf), 0);
        xs[0] = rb_exact(xf, (long)BT * C);
        for (int l = 0; l < L; l++) {
            xs[l + 1] = malloc(sizeof(fx_ev) * BT * C);
            kept[l] = rb_block_forward_keep(c, &r->wl[l], xs[l], xs[l + 1], r->bs, T);
        }
        rb_rmsnorm(xn, s, xs[L], r->norm, BT, C, c->rms_eps);
        rb_linear(z, xn, r->head, NULL, BT, C, V);
        /* mean cross-entropy and its gradient, as cross_entropy_backward */
        fx_acc loss = {0};
        fx_ev inv = fx_exact(1.0 / ((double)r->bs * (T - 1)));
        for (int row = 0; row < BT; row++) {
            fx_ev *zr = z + (long)row * V;
            if (row % T == T - 1) {
                for (int v = 0; v < V; v++) zr[v] = fx_exact(0);
                continue;
            }
            double mx = zr[0].v;
            for (int v = 1; v < V; v++) mx = fmax(mx, zr[v].v);
            fx_acc sum = {0};
            for (int v = 0; v < V; v++) fx_acc_add(&sum, fx_exp(fx_sub(zr[v], fx_exact(mx))));
            fx_ev lse = fx_add(fx_exact(mx), fx_log(fx_acc_sum(&sum))), zt = zr[ids[row + 1]];
            fx_acc_add(&loss, fx_sub(lse, zt));
            for (int v = 0; v < V; v++) zr[v] = fx_round(fx_mul(fx_exp(fx_sub(zr[v], lse)), inv));
            zr[ids[row + 1]] = fx_sub(zr[ids[row + 1]], fx_round(inv));
        }
        out[ns] += fx_mul(fx_acc_sum(&loss), inv).v;
        memset(acc, 0, sizeof(fx_acc) * BT * C);
        rb_linear_dx(acc, z, r->head, BT, C, V);
        for (long i = 0; i < (long)BT * C; i++) dxn[i] = fx_acc_sum(&acc[i]), dx[i] = fx_exact(0);
        rb_rmsnorm_backward(dx, dxn, xs[L], r->norm, s, BT, C);
        for (int l = L - 1; l >= 0; l--) {
            rb_block_backward_kept(c, &r->wl[l], kept[l], xs[l], dx, r->bs, T, dW, dx2);
            rb_fwd_free(kept[l]);
            memcpy(dx, dx2, sizeof(fx_ev) * BT * C);
            for (int i = 0; i < AR_NLINEAR; i++) {
                const double *d = r->delta[l * AR_NLINEAR + i];
                int n, k;
                ar_linear_shape(c, i, &n, &k);
                for (long j = 0; d && j < (long)n * k; j++) out[l * AR_NLINEAR + i] += fabs(dW[i][j].v * d[j]);
            }
        }
        for (int l = 0; l <= L; l++) free(xs[l]);
    }
    out[ns] /= nb;
    free(xf), free(xs), free(xn), free(s), free(z), free(dxn), free(dx), free(dx2), free(acc), free(kept);
    for (int i = 0; i < AR_NLINEAR; i++) free(dW[i]);
}

/* tol [ns + 1]: the estimate for each score and, last, the mean loss. */
static void score_tolerances(score_case *sc, const ar_scheme *opt, int bs, double *tol)
{
    const ar_config *c = sc->c;
    int L = c->n_layers;
    score_run r = {sc, bs, calloc(L, sizeof(rb_weights)), calloc(L * AR_NLINEAR, sizeof(double *)), NULL, NULL};
    ar_quant_spec qs = {opt->bits, opt->group_size, opt->sym, 0, 0, 0, 0, 0, NULL, NULL};
    ar_block_weights bw;
    cr_assert_eq(ar_block_weights_alloc(&bw, c), 0);
    for (int l = 0; l < L; l++) {
        cr_assert_eq(ar_model_load_block(sc->m, l, &bw), 0);
        rb_weights_from(&r.wl[l], &bw, c);
        for (int i = 0; i < AR_NLINEAR; i++) {
            if (!sc->cand[l * AR_NLINEAR + i]) continue;
            int n, k;
            ar_linear_shape(c, i, &n, &k);
            float *wq = malloc(sizeof(float) * n * k);
            cr_assert_eq(ar_quant_forward(&qs, bw.w[i], n, k, NULL, &(ar_quant_out){wq, NULL, NULL, NULL}), 0);
            double *d = r.delta[l * AR_NLINEAR + i] = malloc(sizeof(double) * n * k);
            for (long j = 0; j < (long)n * k; j++) d[j] = (double)bw.w[i][j] - wq[j], r.wl[l].w[i][j] = wq[j];
            free(wq);
        }
    }
    ar_block_weights_free(&bw);
    const float *nw;
    float *head = ar_model_read_head(sc->m, &nw);
    r.head = malloc(sizeof(double) * c->vocab * c->hidden), r.norm = malloc(sizeof(double) * c->hidden);
    for (long j = 0; j < (long)c->vocab * c->hidden; j++) r.head[j] = head[j];
    for (int j = 0; j < c->hidden; j++) r.norm[j] = nw[j];
    free(head);
    fx_mca_tolerances(run_scores, &r, sc->ns + 1, NULL, tol);
    for (int l = 0; l < L; l++) rb_weights_free(&r.wl[l]);
    for (int j = 0; j < L * AR_NLINEAR; j++) free(r.delta[j]);
    free(r.wl), free(r.delta), free(r.head), free(r.norm);
}

/* Ours against PyTorch's: both f32 gradients of the whole model, so within
 * twice the Monte Carlo estimate of each score (and of the loss). */
Test(autoscheme, scores_match_pytorch_autograd)
{
    score_case sc;
    score_case_open(&sc);
    double *score = calloc((size_t)sc.ns, sizeof *score);
    const char *opts[] = {"W2A16G64", "W4A16"};
    for (int o = 0; o < 2; o++) {
        ar_scheme s = preset(opts[o]);
        memset(score, 0, sizeof(double) * sc.ns);
        double loss;
        cr_assert_eq(ar_autoscheme_score(sc.m, &s, sc.cand, AR_AS_WEIGHT_TERM, sc.ids, SCORE_B, SCORE_T, 2, score,
                                         &loss, NULL, NULL), 0, "%s", ar_last_error());
        double tol[sc.ns + 1];
        score_tolerances(&sc, &s, 2, tol);
        cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "scores"), opts[o]);
        cJSON *losses = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "losses"), opts[o]);
        double ref_loss = (cJSON_GetArrayItem(losses, 0)->valuedouble + cJSON_GetArrayItem(losses, 1)->valuedouble) / 2;
        cr_assert_leq(fabs(loss - ref_loss), 2 * tol[sc.ns], "%s loss %g, torch %g, tolerance %g", opts[o], loss, ref_loss,
                      2 * tol[sc.ns]);
        for (int slot = 0; slot < sc.ns; slot++) {
            char name[128];
            ar_autoscheme_slot_name(sc.c, slot, name, sizeof name);
            cJSON *w = cJSON_GetObjectItem(want, name);
            if (!sc.cand[slot]) { cr_assert(!w && score[slot] == 0, "%s scored", name); continue; }
            cr_assert(w, "%s missing from the reference", name);
            cr_assert_leq(fabs(score[slot] - w->valuedouble), 2 * tol[slot], "%s %s: %.6g, torch %.6g, tolerance %g",
                          opts[o], name, score[slot], w->valuedouble, 2 * tol[slot]);
        }
    }
    free(score);
    score_case_close(&sc);
}

/* MXFP4 (weights and activations): the activation term alone, and both
 * terms, against PyTorch autograd with AutoRound's quant_mx made
 * straight-through on each linear's own input (make_scores.py).
 *
 * The one comparison here whose tolerance is not an error bound or an
 * estimate of rounding: activation quantization is discontinuous, and the
 * two implementations' activations differ by their rounding, so here and
 * there an element falls on the other side of an FP4 boundary and moves
 * these sums by far more than any rounding. Measured: 1e-7 relative noise
 * on PyTorch's inputs moves its scores by 0.1-0.4 %, and ours differs from
 * it by 5e-4 relative in the loss (18.86 vs 18.87), while moving every
 * weight of ours by one ulp
 * moves our loss by only 6e-7 (flips need the network's accumulated
 * rounding, not one ulp of the inputs). The tolerances, 2 % of each score
 * and 1e-3 of the loss, are those measurements with room. */
Test(autoscheme, activation_scores_match_pytorch_autograd)
{
    score_case sc;
    score_case_open(&sc);
    double *act = calloc((size_t)sc.ns, sizeof *act), *both = calloc((size_t)sc.ns, sizeof *both);
    ar_scheme s = preset("MXFP4");
    double loss;
    cr_assert_eq(ar_autoscheme_score(sc.m, &s, sc.cand, AR_AS_ACT_TERM, sc.ids, SCORE_B, SCORE_T, 2, act, &loss, NULL,
                                     NULL), 0, "%s", ar_last_error());
    cr_assert_eq(ar_autoscheme_score(sc.m, &s, sc.cand, AR_AS_WEIGHT_TERM | AR_AS_ACT_TERM, sc.ids, SCORE_B, SCORE_T, 2,
                                     both, NULL, NULL, NULL), 0, "%s", ar_last_error());
    cJSON *losses = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "losses"), "MXFP4");
    double ref_loss = (cJSON_GetArrayItem(losses, 0)->valuedouble + cJSON_GetArrayItem(losses, 1)->valuedouble) / 2;
    cr_assert(fabs(loss - ref_loss) < 1e-3 * ref_loss, "MXFP4 loss %g, torch %g", loss, ref_loss);
    cJSON *wref = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "scores"), "MXFP4");
    cJSON *aref = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "act_scores"), "MXFP4");
    for (int slot = 0; slot < sc.ns; slot++) {
        char name[128];
        ar_autoscheme_slot_name(sc.c, slot, name, sizeof name);
        if (!sc.cand[slot]) { cr_assert(act[slot] == 0 && both[slot] == 0, "%s scored", name); continue; }
        double a = cJSON_GetObjectItem(aref, name)->valuedouble, w = cJSON_GetObjectItem(wref, name)->valuedouble;
        cr_assert(a > 0 && w > 0, "%s: empty reference", name);
        cr_assert(fabs(act[slot] - a) < 2e-2 * a, "%s activation term %.6g, torch %.6g", name, act[slot], a);
        cr_assert(fabs(both[slot] - (a + w)) < 2e-2 * (a + w), "%s both terms %.6g, torch %.6g", name, both[slot], a + w);
    }
    /* the spec's rule: the weight term only when some option is weight-only */
    ar_scheme mx[2] = {preset("MXFP4"), preset("MXFP8")}, mixed[2] = {preset("MXFP4"), preset("W4A16")};
    cr_assert_eq(ar_autoscheme_terms(mx, 2, 0), AR_AS_ACT_TERM);
    cr_assert_eq(ar_autoscheme_terms(mx, 2, 1), AR_AS_ACT_TERM | AR_AS_WEIGHT_TERM);
    cr_assert_eq(ar_autoscheme_terms(mixed, 2, 0), AR_AS_ACT_TERM | AR_AS_WEIGHT_TERM);
    ar_scheme wonly[2] = {preset("W2A16G64"), preset("BF16")};
    cr_assert_eq(ar_autoscheme_terms(wonly, 2, 0), AR_AS_WEIGHT_TERM);
    free(act); free(both);
    score_case_close(&sc);
}

/* ar_autoscheme_run on stories260K, 4 x 32 synthetic tokens. */
static int run_stories(ar_model *m, double avg, const char *const *shared_groups, int nshared,
                       ar_autoscheme_result *r)
{
    enum { B = 4, T = 32 };
    static int32_t ids[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (37 * i + 5) % 512;
    ar_scheme opts[3] = {preset("W2A16G64"), preset("W4A16"), preset("w4a16")};
    ar_autoscheme_opts o = {avg, opts, 3, shared_groups, nshared, 0, 0, 2, 0, NULL, NULL, 0, AR_AS_SCORE_DELTA, 0, 1};
    return ar_autoscheme_run(m, ids, B, T, &o, r);
}

Test(autoscheme, run_meets_the_budget_and_shares_groups)
{
    ar_model *m = open_stories();
    const ar_config *c = ar_model_config(m);
    ar_autoscheme_result r;
    cr_assert_eq(run_stories(m, 3.0, NULL, 0, &r), 0, "%s", ar_last_error());
    cr_assert_eq(r.nopt, 2, "duplicate option kept");
    /* candidates: q/k/v/o (gate/up/down have 172 rows: not a multiple of 32) */
    cr_assert_eq(r.total_params, (int64_t)c->n_layers * (64 * 64 * 2 + 32 * 64 * 2));
    /* exact: ratios of integers that are exact binary fractions */
    cr_assert(r.min_avg == 2 + 18.0 / 64 && r.max_avg == 4 + 20.0 / 64, "range %g %g", r.min_avg, r.max_avg);
    cr_assert_eq(r.budget, (int64_t)floor(r.total_params * 3.0));
    int64_t sum = 0;
    for (int s = 0; s < r.nslots; s++)
        if (r.choice[s] >= 0) sum += r.bits[(size_t)s * r.nopt + r.choice[s]];
    cr_assert(sum == r.used_bits && sum <= r.budget);
    cr_assert(r.avg_bits <= 3.0 && r.avg_bits > 3.0 - 0.1, "avg %g", r.avg_bits);
    for (int s = 0; s < r.nslots; s++)
        cr_assert_eq(r.choice[s] >= 0, r.params[s] > 0);
    ar_autoscheme_result_free(&r);

    const char *groups[] = {"q_proj,k_proj,v_proj"};
    cr_assert_eq(run_stories(m, 3.0, groups, 1, &r), 0, "%s", ar_last_error());
    for (int l = 0; l < c->n_layers; l++)
        cr_assert(r.choice[l * AR_NLINEAR + AR_Q] == r.choice[l * AR_NLINEAR + AR_K] &&
                  r.choice[l * AR_NLINEAR + AR_Q] == r.choice[l * AR_NLINEAR + AR_V], "block %d splits q/k/v", l);
    char *json = ar_autoscheme_layer_config_json(c, &r);
    ar_layer_config *lc = ar_layer_config_parse(json, "generated");
    cr_assert(lc, "%s", ar_last_error());
    cr_assert_eq(ar_layer_config_count(lc), 4 * c->n_layers);
    ar_scheme def = preset("W4A16"), got;
    ar_layer_info info = {0, 0, 0};
    for (int s = 0; s < r.nslots; s++) {
        if (r.choice[s] < 0) continue;
        char name[128];
        int n, k;
        ar_autoscheme_slot_name(c, s, name, sizeof name);
        ar_linear_shape(c, s % AR_NLINEAR, &n, &k);
        cr_assert_eq(ar_scheme_for_layer(&def, lc, name, n, k, &info, &got), 0);
        cr_assert_eq(got.bits, r.options[r.choice[s]].bits, "%s", name);
        cr_assert_eq(got.group_size, r.options[r.choice[s]].group_size, "%s", name);
    }
    ar_layer_config_free(lc);
    free(json);
    ar_autoscheme_result_free(&r);

    cr_assert_eq(run_stories(m, 4.5, NULL, 0, &r), -1);
    cr_assert(strstr(ar_last_error(), "outside"), "%s", ar_last_error());
    /* the top of the range snaps and takes every layer at 4 bits */
    cr_assert_eq(run_stories(m, 4.3121, NULL, 0, &r), 0, "%s", ar_last_error());
    for (int s = 0; s < r.nslots; s++) cr_assert(r.choice[s] == -1 || r.choice[s] == 1);
    ar_autoscheme_result_free(&r);
    ar_model_close(m);
}
