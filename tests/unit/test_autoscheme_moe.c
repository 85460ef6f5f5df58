/* test_autoscheme_moe.c — AutoScheme on a mixture of experts (autoscheme.h),
 * on the checked-in tiny Qwen2-MoE (tests/fixtures/moe/tiny/qwen2_moe, 2
 * layers, 4 experts top-2, a gated shared expert). With a 3-token sample
 * layer 0 routes its 6 selections to 2 or 3 experts (test_tune_moe.c), so
 * some experts get no token and, in the raw delta-loss score
 * (ar_autoscheme_score), exactly 0: no gradient reaches them.
 * ar_autoscheme_run must then, as AutoRound 0.16.1's
 * _fill_inactive_expert_scores, give each linear of an inactive expert the
 * mean over the active experts of their mean non-zero score (recomputed here
 * from the raw scores), leave every other slot's score as scored, and give
 * all routed-expert linears of a block one option (build_expert_groups),
 * while the shared expert and the attention choose on their own. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoscheme.h"
#include "error.h"
#include "model.h"
#include "scheme.h"

#define DIR "tests/fixtures/moe/tiny/qwen2_moe"

/* The expert of slot name ("...mlp.experts.E.x"), or -1. */
static int expert(const char *name)
{
    const char *p = strstr(name, ".experts.");
    return p ? atoi(p + 9) : -1;
}

Test(autoscheme_moe, inactive_experts_and_expert_groups)
{
    ar_model *m = ar_model_open(DIR, 0);
    cr_assert(m, "%s", ar_last_error());
    const ar_config *c = ar_model_config(m);
    int ns = ar_autoscheme_nslots(c);
    /* 2 layers of q,k,v,o + 4 experts x 3 + shared 3, and the head */
    cr_assert_eq(ns, 2 * (4 + 12 + 3) + 1, "slots %d", ns);
    ar_scheme opts[2];
    cr_assert_eq(ar_scheme_preset(&opts[0], "W2A16G64"), 0);
    cr_assert_eq(ar_scheme_preset(&opts[1], "W4A16"), 0);
    int32_t ids[3] = {1, 403, 407};
    ar_autoscheme_opts o = {3.0, opts, 2, NULL, 0, 0, 0, 1, 0, NULL, NULL, 0, AR_AS_SCORE_DELTA, 0, 1};
    ar_autoscheme_result r;
    cr_assert_eq(ar_autoscheme_run(m, ids, 1, 3, &o, &r), 0, "%s", ar_last_error());
    cr_assert_eq(r.nslots, ns);
    cr_assert_eq(r.terms, AR_AS_WEIGHT_TERM);
    /* the raw scores of the same candidates */
    unsigned char *cand = malloc((size_t)ns);
    for (int s = 0; s < ns; s++) cand[s] = r.params[s] != 0;
    double *raw[2];
    for (int j = 0; j < 2; j++) {
        raw[j] = calloc((size_t)ns, sizeof(double));
        cr_assert_eq(ar_autoscheme_score(m, &opts[j], cand, AR_AS_WEIGHT_TERM, ids, 1, 3, 1, raw[j], NULL, NULL, NULL),
                     0, "%s", ar_last_error());
    }
    int inactive_seen = 0;
    for (int l = 0; l < 2; l++) {
        int off = l * 19;
        for (int j = 0; j < 2; j++) {
            /* the fill value from the raw scores */
            double fill = 0;
            int nact = 0, active[4] = {0};
            for (int e = 0; e < 4; e++) {
                double sum = 0;
                int nz = 0;
                for (int p = 0; p < 3; p++) {
                    double v = raw[j][off + 4 + 3 * e + p];
                    if (fabs(v) >= 1e-12) sum += v, nz++;
                }
                if (nz) fill += sum / nz, nact++, active[e] = 1;
            }
            cr_assert_gt(nact, 0);
            fill /= nact;
            for (int s = off; s < off + 19; s++) {
                char name[128];
                cr_assert_eq(ar_autoscheme_slot_name(c, s, name, sizeof name), 0);
                int e = expert(name);
                double got = r.score[(size_t)s * 2 + j];
                if (e >= 0 && !active[e]) {
                    inactive_seen += j == 0;
                    cr_assert_eq(raw[j][s], 0.0, "%s: an inactive expert scored %g", name, raw[j][s]);
                    cr_assert(fabs(got - fill) <= 1e-12 * fill, "%s (option %d): filled %.17g, want %.17g", name, j,
                              got, fill);
                    cr_assert_gt(got, 0);
                } else {
                    cr_assert_eq(got, raw[j][s], "%s (option %d): score changed", name, j);
                }
            }
        }
        /* one option for all routed experts of the block */
        for (int e = 0; e < 4; e++)
            for (int p = 0; p < 3; p++)
                cr_assert_eq(r.choice[off + 4 + 3 * e + p], r.choice[off + 4], "layer %d expert %d: own option", l, e);
    }
    cr_assert_gt(inactive_seen, 0, "no expert went without tokens: the fill was not exercised");
    cr_assert_leq(r.avg_bits, 3.0);
    /* the shared expert is not a routed expert: its slots are named so */
    char name[128];
    cr_assert_eq(ar_autoscheme_slot_name(c, 4 + 12, name, sizeof name), 0);
    cr_assert_str_eq(name, "model.layers.0.mlp.shared_expert.gate_proj");
    cr_assert_eq(expert(name), -1);
    ar_autoscheme_result_free(&r);
    free(raw[0]), free(raw[1]), free(cand);
    ar_model_close(m);
}
