/* test_tune.c — the tuning pipeline's entry point (libar/tune/tune.h) on
 * stories260K, in its cheap modes: RTN without data writes META and every
 * quantized linear, reporting each block and the device; a GGUF scheme takes its types
 * from the caller's policy (and is refused without one); calibration data
 * of another hidden size, and a checkpoint made with other settings, are
 * refused with their messages. The numbers themselves are the e2e tests'
 * (tests/e2e/tune.test.sh, checkpoint.test.sh, gguf.test.sh). */
#include "device.h"
#include "error.h"
#include "fixture.h"
#include "tune.h"
#include "tuned_stream.h"
#include <criterion/criterion.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int blocks, device_events;
    char device[64];
} seen;

static void on_block(void *ctx, int block, int nblocks, const ar_signround_report *rep)
{
    seen *s = ctx;
    cr_assert_eq(block, s->blocks);
    cr_assert_eq(nblocks, 5);
    cr_assert_null(rep);   /* no SignRound without data */
    s->blocks++;
}

static void on_event(void *ctx, ar_tune_event ev, int a, int b, const char *text)
{
    seen *s = ctx;
    (void)a, (void)b;
    if (ev != AR_TUNE_EV_DEVICE) return;
    s->device_events++;
    snprintf(s->device, sizeof s->device, "%s", text);
}

/* Run o on stories260K (data may be NULL) into a rewound tmpfile; *rc gets ar_tune_run's result. */
static FILE *run(const ar_tune_opts *o, ar_calib_data *data, int *rc)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    FILE *f = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(f, "out.ars", 1);
    cr_assert(w);
    *rc = ar_tune_run(o, dir, data, w);
    if (*rc) ar_stream_writer_abort(w);
    else cr_assert_eq(ar_stream_writer_close(w), 0, "%s", ar_last_error());
    rewind(f);
    return f;
}

/* Items of kind in the tuned stream f (its META checked against the model). */
static int count_items(FILE *f, ar_tuned_kind kind)
{
    ar_tuned_reader *t = ar_tuned_reader_open(f, "out.ars");
    cr_assert(t, "%s", ar_last_error());
    char dir[1024], abs[PATH_MAX];
    fx_model_dir(dir, sizeof dir, "stories260K");
    cr_assert(realpath(dir, abs));
    cr_assert_str_eq(ar_tuned_reader_meta(t)->model, abs);
    cr_assert(strstr(ar_tuned_reader_meta(t)->tuning_json, "\"method\":\"rtn\""));
    const ar_tuned_item *it;
    int n = 0, rc;
    while ((rc = ar_tuned_reader_next(t, &it)) == 1) n += it->kind == kind;
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    ar_tuned_reader_close(t);
    return n;
}

Test(tune, rtn_without_data_writes_every_linear)
{
    ar_tune_opts o;
    ar_tune_defaults(&o);
    seen s = {0};
    ar_tune_progress p = {&s, NULL, on_block, on_event};
    o.progress = &p;
    o.device = 0;   /* a GPU is asked for, but RTN without data runs on the CPU */
    int rc;
    FILE *f = run(&o, NULL, &rc);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    cr_assert_eq(s.blocks, 5);
    cr_assert_eq(s.device_events, 1);
    cr_assert_str_eq(s.device, "cpu");
    /* the attention's four per block: the 172-wide MLP stays in high precision, as AutoRound leaves it */
    cr_assert_eq(count_items(f, AR_TUNED_LINEAR), 5 * 4);
    fclose(f);
}

static ar_ggml_type q8_0_policy(void *ctx, const ar_config *c, const char *hf_name, int64_t cols, int imatrix)
{
    int *calls = ctx;
    (*calls)++;
    cr_assert_eq(c->hidden, 64);
    cr_assert(!strncmp(hf_name, "model.layers.", 13), "%s", hf_name);
    cr_assert(cols == 64 || cols == 172);
    cr_assert_eq(imatrix, 0);
    return cols % 32 ? AR_GGML_F16 : AR_GGML_Q8_0;
}

Test(tune, gguf_types_come_from_the_caller)
{
    ar_tune_opts o;
    ar_tune_defaults(&o);
    cr_assert_eq(ar_scheme_preset(&o.scheme, "GGUF:Q4_K_M"), 0);
    int rc;
    FILE *f = run(&o, NULL, &rc);
    cr_assert_eq(rc, AR_TUNE_FAILED);
    cr_assert_str_eq(ar_last_error(), "scheme GGUF:Q4_K_M: no GGUF type policy was given");
    fclose(f);
    int calls = 0;
    o.gguf_type = q8_0_policy;
    o.gguf_ctx = &calls;
    f = run(&o, NULL, &rc);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    cr_assert_eq(calls, 5 * AR_NLINEAR);
    cr_assert_eq(count_items(f, AR_TUNED_GGUF), 5 * AR_NLINEAR);
    fclose(f);
}

Test(tune, calibration_of_another_hidden_size_is_refused)
{
    enum { N = 1, T = 4, C = 8 };
    ar_calib_data d = {0};
    d.n = N, d.T = T, d.C = C;
    d.ids = calloc(N * T, sizeof *d.ids);
    d.hidden = calloc(N * T * C, sizeof *d.hidden);
    ar_tune_opts o;
    ar_tune_defaults(&o);
    int rc;
    FILE *f = run(&o, &d, &rc);
    cr_assert_eq(rc, AR_TUNE_FAILED);
    cr_assert_str_eq(ar_last_error(), "calibration hidden size 8 does not match the model's 64");
    fclose(f);
    ar_calib_data_free(&d);
}

Test(tune, checkpoint_of_other_settings_is_refused)
{
    char dir[] = "/tmp/ar-test-tune-XXXXXX";
    fx_make_tmp(dir);
    ar_tune_opts o;
    ar_tune_defaults(&o);
    o.checkpoint = dir;
    int rc;
    FILE *a = run(&o, NULL, &rc);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    FILE *b = run(&o, NULL, &rc);   /* all blocks finished: replayed, same bytes */
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    fseek(a, 0, SEEK_END);
    fseek(b, 0, SEEK_END);
    long na = ftell(a), nb = ftell(b);
    cr_assert_eq(na, nb);
    rewind(a);
    rewind(b);
    char *pa = malloc(na), *pb = malloc(nb);
    cr_assert_eq(fread(pa, 1, na, a), (size_t)na);
    cr_assert_eq(fread(pb, 1, nb, b), (size_t)nb);
    cr_assert_eq(memcmp(pa, pb, na), 0, "the replayed stream differs");
    free(pa); free(pb); fclose(a); fclose(b);
    o.seed = 7;
    FILE *c = run(&o, NULL, &rc);
    cr_assert_eq(rc, AR_TUNE_CHECKPOINT_OTHER);
    cr_assert(strstr(ar_last_error(), "manifest.json: seed differs (checkpoint 42, this run 7)"), "%s", ar_last_error());
    fclose(c);
    fx_rm_rf(dir);
}
