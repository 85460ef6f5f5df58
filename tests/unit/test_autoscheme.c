/* test_autoscheme.c — AutoScheme: bit accounting against hand-worked spec
 * numbers, the DP against hand-worked cases and brute-force enumeration,
 * the delta-loss scores against PyTorch autograd over AutoRound's own RTN
 * (tests/fixtures/autoscheme/make_scores.py), and whole runs on stories260K. */
#include "autoscheme.h"
#include "calib.h"
#include "error.h"
#include "fixture.h"
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
    cr_assert(fabs(per_weight("W4A16", 4096, 4096, 0) - 4.156) < 1e-3);
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
        cr_assert(b == used && b <= budget && fabs(l - tot) < 1e-9, "trial %d: totals", trial);
        cr_assert(fabs(l - want) < 1e-9, "trial %d: loss %g, brute force %g", trial, l, want);
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
    sc->ns = AR_AS_NSLOTS(sc->c);
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
        cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "scores"), opts[o]);
        cJSON *losses = cJSON_GetObjectItem(cJSON_GetObjectItem(sc.ref, "losses"), opts[o]);
        double ref_loss = (cJSON_GetArrayItem(losses, 0)->valuedouble + cJSON_GetArrayItem(losses, 1)->valuedouble) / 2;
        cr_assert(fabs(loss - ref_loss) < 1e-4 * ref_loss, "%s loss %g, torch %g", opts[o], loss, ref_loss);
        for (int slot = 0; slot < sc.ns; slot++) {
            char name[128];
            ar_autoscheme_slot_name(sc.c, slot, name, sizeof name);
            cJSON *w = cJSON_GetObjectItem(want, name);
            if (!sc.cand[slot]) { cr_assert(!w && score[slot] == 0, "%s scored", name); continue; }
            cr_assert(w, "%s missing from the reference", name);
            cr_assert(fabs(score[slot] - w->valuedouble) < 1e-4 * w->valuedouble, "%s %s: %.6g, torch %.6g",
                      opts[o], name, score[slot], w->valuedouble);
        }
    }
    free(score);
    score_case_close(&sc);
}

/* MXFP4 (weights and activations): the activation term alone, and both
 * terms, against PyTorch autograd with AutoRound's quant_mx made
 * straight-through on each linear's own input (make_scores.py). The
 * tolerance is 2 %: a 1-ulp change of the inputs moves an element across an
 * FP4 rounding boundary here and there, which moves these sums by up to
 * ~1 % in PyTorch itself (measured: 1e-7 relative noise on the inputs, 0.1-0.4 %);
 * the loss agrees to 1e-3. */
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
    cr_assert(fabs(r.min_avg - (2 + 18.0 / 64)) < 1e-12 && fabs(r.max_avg - (4 + 20.0 / 64)) < 1e-12,
              "range %g %g", r.min_avg, r.max_avg);
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
