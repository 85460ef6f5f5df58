/* test_tune_moe.c — SignRound on mixture-of-experts blocks (issue 17), on the
 * checked-in tiny Qwen2-MoE (tests/fixtures/moe/tiny/qwen2_moe, 4 experts,
 * top-2): with a three-token calibration sample, layer 0 routes its 6
 * selections to 2 or 3 experts and leaves the others without a token. Their
 * records must be byte for byte those of plain RTN (SignRound gives its
 * rounding and min/max no gradient: they keep their initial values, as
 * AutoRound's sign step skips parameters without gradient), it must be
 * reported through AR_TUNE_EV_UNROUTED_EXPERTS, and a routed expert's must
 * differ (its own tokens tune it). */
#include "error.h"
#include "fixture.h"
#include "model.h"
#include "tune.h"
#include "tuned_stream.h"
#include "dtype.h"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIR "tests/fixtures/moe/tiny/qwen2_moe"

typedef struct {
    int layer, n;
    char list[64];
} unrouted;

static void on_event(void *ctx, ar_tune_event ev, int a, int b, const char *text)
{
    unrouted *u = ctx;
    if (ev != AR_TUNE_EV_UNROUTED_EXPERTS || a != 0) return;
    u->layer = a, u->n = b;
    snprintf(u->list, sizeof u->list, "%s", text);
}

/* One sample of ids [T] with its embedding rows, as ar-calib writes it. */
static void calib(ar_calib_data *d, const int *ids, int T)
{
    memset(d, 0, sizeof *d);
    ar_model *m = ar_model_open(DIR, 0);
    cr_assert(m, "%s", ar_last_error());
    int C = ar_model_config(m)->hidden;
    float *h = malloc(sizeof(float) * T * C);
    cr_assert_eq(ar_model_embed(m, ids, T, h), 0);
    d->n = 1, d->T = T, d->C = C, d->pad_id = -1;
    d->ids = malloc(sizeof(int32_t) * T);
    d->hidden = malloc(sizeof(uint16_t) * T * C);
    for (int t = 0; t < T; t++) d->ids[t] = ids[t];
    ar_from_f32(d->hidden, h, AR_BF16, (size_t)T * C);
    free(h);
    ar_model_close(m);
}

/* --enable_alg_ext in tune() (SignRoundV2: searched initial scales on each
 * expert's own rows; an expert without rows keeps the RTN start). */
static int g_alg_ext;
/* opt-RTN in tune(0) (ar-tune --iters 0's default), else plain RTN. */
static int g_opt_rtn;

/* Tune into a tmpfile; the expert records of layer 0 into codes[e] (gate_proj's, malloc'd). */
static void tune(int iters, unrouted *u, uint8_t *codes[4], float *scales[4])
{
    int ids[3] = {1, 403, 407};
    ar_calib_data d;
    calib(&d, ids, 3);
    ar_tune_opts o;
    ar_tune_defaults(&o);
    o.scheme.group_size = 32;
    o.iters = iters, o.batch_size = 1, o.disable_opt_rtn = !g_opt_rtn;
    o.amp = 0;   /* f32 reference GEMMs */
    o.enable_alg_ext = g_alg_ext && iters > 0;
    /* the last iteration's tunables, not the best: on this toy the RTN start
     * (iteration 0) can be the best loss, which would hide whether the
     * routed experts were tuned at all; an expert without tokens gets no
     * gradient, so it stays RTN either way */
    o.not_use_best = 1;
    ar_tune_progress pr = {0};
    pr.ctx = u, pr.event = on_event;
    o.progress = &pr;
    FILE *f = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(f, "out.ars", 1);
    cr_assert_eq(ar_tune_run(&o, DIR, &d, w), 0, "%s", ar_last_error());
    cr_assert_eq(ar_stream_writer_close(w), 0);
    rewind(f);
    ar_tuned_reader *t = ar_tuned_reader_open(f, "out.ars");
    cr_assert(t, "%s", ar_last_error());
    const ar_tuned_item *it;
    int rc;
    while ((rc = ar_tuned_reader_next(t, &it)) == 1) {
        int e;
        if (sscanf(it->name, "model.layers.0.mlp.experts.%d.gate_proj", &e) != 1 || strstr(it->name, "up_proj") ||
            strstr(it->name, "down_proj"))
            continue;
        size_t nc = (size_t)it->n * it->k, ns = (size_t)it->n * (it->k / 32);
        codes[e] = malloc(nc), scales[e] = malloc(sizeof(float) * ns);
        memcpy(codes[e], it->codes, nc), memcpy(scales[e], it->scale, sizeof(float) * ns);
    }
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    ar_tuned_reader_close(t);
    fclose(f);
    ar_calib_data_free(&d);
}

static void check_unrouted_rtn(void)
{
    unrouted u = {-1, 0, ""}, u0 = {-1, 0, ""};
    uint8_t *sr[4] = {0}, *rtn[4] = {0};
    float *ssr[4] = {0}, *srtn[4] = {0};
    tune(10, &u, sr, ssr);
    tune(0, &u0, rtn, srtn);
    cr_assert(u.n >= 1 && u.n < 4, "experts without tokens in layer 0: %d", u.n);
    int none[4] = {0}, e, pos = 0, used;
    for (const char *p = u.list; sscanf(p, "%d%n", &e, &used) == 1; p += used + (p[used] == ',' ? 2 : 0)) {
        cr_assert(e >= 0 && e < 4);
        none[e] = 1, pos++;
        if (!p[used]) break;
    }
    cr_assert_eq(pos, u.n, "listed %d of %d (%s)", pos, u.n, u.list);
    size_t nc = 32 * 64;
    int tuned = 0;
    for (int x = 0; x < 4; x++) {
        cr_assert(sr[x] && rtn[x], "expert %d records", x);
        int same = !memcmp(sr[x], rtn[x], nc) && !memcmp(ssr[x], srtn[x], sizeof(float) * 64);
        if (none[x]) cr_assert(same, "expert %d (no tokens) differs from RTN", x);
        else tuned += !same;
    }
    cr_assert_gt(tuned, 0, "no routed expert moved from RTN");
    for (int x = 0; x < 4; x++) free(sr[x]), free(rtn[x]), free(ssr[x]), free(srtn[x]);
}

Test(tune_moe, expert_without_tokens_keeps_rtn) { check_unrouted_rtn(); }

/* alg_ext on MoE (AutoRound applies SignRoundV2 to every expert): the same
 * rule, an expert no token reached is exported as plain RTN. */
Test(tune_moe, expert_without_tokens_keeps_rtn_alg_ext)
{
    g_alg_ext = 1;
    check_unrouted_rtn();
}

/* opt-RTN (--iters 0) on MoE: routed experts get plain RTN, AutoRound's MoE
 * rule ("MoE layer detected: optimized RTN is disabled", docs/moe.md §4):
 * every expert's records equal plain RTN's. */
Test(tune_moe, opt_rtn_leaves_experts_plain_rtn)
{
    unrouted u = {-1, 0, ""}, u0 = {-1, 0, ""};
    uint8_t *opt[4] = {0}, *rtn[4] = {0};
    float *sopt[4] = {0}, *srtn[4] = {0};
    g_opt_rtn = 1;
    tune(0, &u, opt, sopt);
    g_opt_rtn = 0;
    tune(0, &u0, rtn, srtn);
    for (int x = 0; x < 4; x++) {
        cr_assert(opt[x] && rtn[x], "expert %d records", x);
        cr_assert(!memcmp(opt[x], rtn[x], 32 * 64) && !memcmp(sopt[x], srtn[x], sizeof(float) * 64),
                  "expert %d: opt-RTN differs from RTN", x);
        free(opt[x]), free(rtn[x]), free(sopt[x]), free(srtn[x]);
    }
}
