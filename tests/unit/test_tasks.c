/* test_tasks.c — libar/eval: the CPython random generator replayed bit for
 * bit (constants printed by CPython 3.11's random module), and the batched
 * continuation log-likelihoods against the double-precision reference
 * forward, one request at a time (no batch, no padding). */
#include "error.h"
#include "fixture.h"
#include "loglik.h"
#include "model.h"
#include "pyrandom.h"
#include "refblock.h"
#include "tasks.h"
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* random.Random(1234).getrandbits(32) x4, Random(0).random() x3,
 * Random(2**40 + 5).getrandbits(32) x2. */
Test(pyrandom, outputs_equal_cpython)
{
    ar_pyrandom r;
    const uint32_t want[4] = {4150886329u, 3342196574u, 1892932127u, 501869158u};
    ar_pyrandom_seed(&r, 1234);
    for (int i = 0; i < 4; i++) cr_assert_eq(ar_pyrandom_u32(&r), want[i], "output %d", i);
    const double wr[3] = {0.8444218515250481, 0.7579544029403025, 0.420571580830845};
    ar_pyrandom_seed(&r, 0);
    for (int i = 0; i < 3; i++) cr_assert_eq(ar_pyrandom_random(&r), wr[i], "random() %d", i);
    ar_pyrandom_seed(&r, (1ull << 40) + 5);
    cr_assert_eq(ar_pyrandom_u32(&r), 2166296868u);
    cr_assert_eq(ar_pyrandom_u32(&r), 2220160828u);
}

/* r = Random(1234); r.sample(range(20), 5) (pool path), r.sample(range(100), 7)
 * (set path), r.sample(range(3), 3), r.sample(range(1), 1), in that order;
 * Random(7).choices(range(40), k=10) = floor(random() * 40). */
Test(pyrandom, sample_and_choices_equal_cpython)
{
    ar_pyrandom r;
    ar_pyrandom_seed(&r, 1234);
    int out[8];
    const int a[5] = {14, 3, 0, 2, 1}, b[7] = {85, 88, 10, 12, 98, 45, 30}, c[3] = {0, 2, 1};
    cr_assert_eq(ar_pyrandom_sample(&r, 20, 5, out), 0);
    for (int i = 0; i < 5; i++) cr_assert_eq(out[i], a[i], "sample(20, 5)[%d] = %d", i, out[i]);
    cr_assert_eq(ar_pyrandom_sample(&r, 100, 7, out), 0);
    for (int i = 0; i < 7; i++) cr_assert_eq(out[i], b[i], "sample(100, 7)[%d] = %d", i, out[i]);
    cr_assert_eq(ar_pyrandom_sample(&r, 3, 3, out), 0);
    for (int i = 0; i < 3; i++) cr_assert_eq(out[i], c[i]);
    cr_assert_eq(ar_pyrandom_sample(&r, 1, 1, out), 0);
    cr_assert_eq(out[0], 0);
    cr_assert_eq(ar_pyrandom_sample(&r, 3, 4, out), -1, "k > n is refused as CPython refuses it");
    const int ch[10] = {12, 6, 26, 2, 21, 14, 2, 20, 1, 17};
    ar_pyrandom_seed(&r, 7);
    for (int i = 0; i < 10; i++) cr_assert_eq((int)floor(ar_pyrandom_random(&r) * 40.0), ch[i]);
}

/* ---- log-likelihoods ----------------------------------------------------- */

#define NREQ 5
#define MAXLEN 24

typedef struct {
    ar_model *m;
    ar_ll_request r[NREQ];
    double *logits; /* scratch */
} ll_ref;

/* Reference of each request: its kept tokens (the last MAXLEN + 1) through
 * rb_model_logits on their own (T = kept - 1), then the continuation's
 * log-softmax summed in double. */
static void run_ref(void *ctx, double *out)
{
    ll_ref *q = ctx;
    int V = ar_model_config(q->m)->vocab;
    for (int i = 0; i < NREQ; i++) {
        const ar_ll_request *r = &q->r[i];
        int total = r->nctx + r->ncont, S = total < MAXLEN + 1 ? total : MAXLEN + 1, ids[MAXLEN + 1], rows[MAXLEN];
        for (int k = 0; k < S; k++) {
            int j = total - S + k;
            ids[k] = j < r->nctx ? r->ctx[j] : r->cont[j - r->nctx];
        }
        for (int j = 0; j < r->ncont; j++) rows[j] = S - r->ncont + j - 1;
        rb_model_logits(q->m, ids, S - 1, rows, r->ncont, q->logits);
        double ll = 0;
        for (int j = 0; j < r->ncont; j++) {
            const double *row = q->logits + (size_t)j * V;
            double mx = row[0], s = 0;
            for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
            for (int v = 0; v < V; v++) s += exp(row[v] - mx);
            ll += row[r->cont[j]] - mx - log(s);
        }
        out[i] = ll;
    }
}

/* Requests of different lengths (so the batch is padded), one longer than
 * MAXLEN + 1 (truncated from the left), one-token and multi-token
 * continuations, scored in batches of 2 and 5: each equals the unbatched
 * double reference within its Monte Carlo rounding tolerance, and the greedy
 * flag is the reference's argmax where no near-tie makes it ambiguous. */
Test(loglik, batched_padded_truncated_match_reference)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    ar_model *m = ar_model_open(dir, AR_MODEL_CACHE);
    cr_assert(m, "%s", ar_last_error());
    int V = ar_model_config(m)->vocab;
    static const int lens[NREQ][2] = {{5, 1}, {12, 3}, {30, 4}, {2, 6}, {9, 1}};
    int32_t *bufs[NREQ][2];
    ll_ref q = {.m = m, .logits = malloc(sizeof(double) * (size_t)MAXLEN * V)};
    uint32_t x = 12345;
    for (int i = 0; i < NREQ; i++) {
        for (int h = 0; h < 2; h++) {
            bufs[i][h] = malloc(sizeof(int32_t) * (size_t)lens[i][h]);
            for (int k = 0; k < lens[i][h]; k++) x = x * 1664525u + 1013904223u, bufs[i][h][k] = 1 + (int)(x >> 8) % (V - 1);
        }
        q.r[i] = (ar_ll_request){bufs[i][0], bufs[i][1], lens[i][0], lens[i][1]};
    }
    double exact[NREQ];
    double tol = fx_mca_tolerance(run_ref, &q, NREQ, exact);
    for (int batch = 2; batch <= 5; batch += 3) {
        double ll[NREQ];
        int greedy[NREQ];
        cr_assert_eq(ar_loglik(m, NULL, q.r, NREQ, MAXLEN, batch, ll, greedy, NULL, NULL), 0, "%s", ar_last_error());
        for (int i = 0; i < NREQ; i++) {
            cr_log_info("batch %d request %d: ll %.9g reference %.9g tolerance %.3g", batch, i, ll[i], exact[i], tol);
            cr_assert_leq(fabs(ll[i] - exact[i]), tol, "request %d: %.9g vs %.9g", i, ll[i], exact[i]);
        }
        /* greedy: argmax of the reference rows (in FX_VALUES mode) */
        fx_set_mode(FX_VALUES, 0);
        for (int i = 0; i < NREQ; i++) {
            const ar_ll_request *r = &q.r[i];
            int total = r->nctx + r->ncont, S = total < MAXLEN + 1 ? total : MAXLEN + 1, ids[MAXLEN + 1], rows[MAXLEN];
            for (int k = 0; k < S; k++) {
                int j = total - S + k;
                ids[k] = j < r->nctx ? r->ctx[j] : r->cont[j - r->nctx];
            }
            for (int j = 0; j < r->ncont; j++) rows[j] = S - r->ncont + j - 1;
            rb_model_logits(m, ids, S - 1, rows, r->ncont, q.logits);
            int want = 1, ambiguous = 0;
            for (int j = 0; j < r->ncont; j++) {
                const double *row = q.logits + (size_t)j * V;
                int am = 0;
                for (int v = 1; v < V; v++) if (row[v] > row[am]) am = v;
                for (int v = 0; v < V; v++) ambiguous |= v != am && row[am] - row[v] <= tol;
                want &= am == r->cont[j];
            }
            if (!ambiguous) cr_assert_eq(greedy[i], want, "request %d greedy flag", i);
        }
        fx_set_mode(FX_BOUNDS, 0);
    }
    /* a continuation whose greedy flag must be 1: the reference argmax tokens */
    fx_set_mode(FX_VALUES, 0);
    int ctx[6] = {1, 5, 9, 14, 20, 7}, cont[1];
    int rows1[1] = {5};
    rb_model_logits(m, ctx, 6, rows1, 1, q.logits);
    int am = 0;
    for (int v = 1; v < V; v++) if (q.logits[v] > q.logits[am]) am = v;
    fx_set_mode(FX_BOUNDS, 0);
    cont[0] = am;
    int32_t c32[6], k32[1] = {cont[0]};
    for (int k = 0; k < 6; k++) c32[k] = ctx[k];
    ar_ll_request g = {c32, k32, 6, 1};
    double llg;
    int gg;
    cr_assert_eq(ar_loglik(m, NULL, &g, 1, MAXLEN, 1, &llg, &gg, NULL, NULL), 0);
    cr_assert_eq(gg, 1, "the argmax token is the greedy continuation");
    /* a continuation longer than max_length is refused */
    ar_ll_request too = {c32, bufs[0][0], 6, 5};
    cr_assert_eq(ar_loglik(m, NULL, &too, 1, 4, 1, &llg, &gg, NULL, NULL), -1);
    cr_assert(strstr(ar_last_error(), "exceeds the maximum length"), "%s", ar_last_error());
    for (int i = 0; i < NREQ; i++) free(bufs[i][0]), free(bufs[i][1]);
    free(q.logits);
    ar_model_close(m);
}

Test(tasks, unknown_task_and_missing_file_are_one_line_errors)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    ar_model *m = ar_model_open(dir, AR_MODEL_CACHE);
    ar_tokenizer *tok = ar_tokenizer_load(dir);
    cr_assert(m && tok, "%s", ar_last_error());
    ar_tasks_opts o;
    ar_tasks_opts_default(&o);
    o.tasks = "piqa,nosuch";
    o.data_dir = "/nonexistent";
    cr_assert_null(ar_tasks_run(&o, m, NULL, tok));
    cr_assert(strstr(ar_last_error(), "unknown task 'nosuch'"), "%s", ar_last_error());
    o.tasks = "piqa";
    cr_assert_null(ar_tasks_run(&o, m, NULL, tok));
    cr_assert(strstr(ar_last_error(), "/nonexistent/piqa.jsonl"), "%s", ar_last_error());
    cr_assert_null(strchr(ar_last_error(), '\n'));
    ar_tokenizer_free(tok);
    ar_model_close(m);
}

/* ---- prompts ----------------------------------------------------------------- */

/* The requests of one row of each kind, as ar_tasks_run writes them to
 * --samples; the expected strings were printed by lm-eval 0.4.13's own code
 * on the same rows (hellaswag's utils.preprocess, winogrande's
 * preprocess_winogrande, the YAML templates, Python's str methods). */
static cJSON *run_rows(const char *task, const char *rows)
{
    char dir[] = "/tmp/ar-test-tasks-XXXXXX", mdir[1024], name[64];
    fx_make_tmp(dir);
    snprintf(name, sizeof name, "%s.jsonl", task);
    fx_write_text(dir, name, rows);
    fx_model_dir(mdir, sizeof mdir, "stories260K");
    ar_model *m = ar_model_open(mdir, AR_MODEL_CACHE);
    ar_tokenizer *tok = ar_tokenizer_load(mdir);
    cr_assert(m && tok, "%s", ar_last_error());
    ar_tasks_opts o;
    ar_tasks_opts_default(&o);
    o.tasks = task;
    o.data_dir = dir;
    o.bootstrap_iters = 0;
    o.samples = tmpfile();
    char *json = ar_tasks_run(&o, m, NULL, tok);
    cr_assert(json, "%s", ar_last_error());
    free(json);
    rewind(o.samples);
    char line[8192];
    cr_assert(fgets(line, sizeof line, o.samples));
    fclose(o.samples);
    ar_tokenizer_free(tok);
    ar_model_close(m);
    fx_rm_rf(dir);
    cJSON *j = cJSON_Parse(line);
    cr_assert(j);
    return j;
}

static void expect_req(const cJSON *s, int k, const char *ctx, const char *cont)
{
    const char *c = cJSON_GetArrayItem(cJSON_GetObjectItem(s, "contexts"), k)->valuestring;
    const char *x = cJSON_GetArrayItem(cJSON_GetObjectItem(s, "continuations"), k)->valuestring;
    cr_assert_str_eq(c, ctx, "request %d context", k);
    cr_assert_str_eq(x, cont, "request %d continuation", k);
}

Test(tasks, hellaswag_preprocess_and_capitalize)
{
    cJSON *s = run_rows("hellaswag", "{\"activity_label\": \"Baking\", \"ctx_a\": \"  Mix the  flour [title] now.\", "
                                     "\"ctx_b\": \"\xc3\xa9LAN AND [x] BOWL\", \"endings\": [\" [step] Stir it.  \", "
                                     "\"Bake\\t\"], \"label\": \"1\"}\n");
    expect_req(s, 0, "Baking:  Mix the flour. now. \xc3\x89lan and bowl", "  Stir it.");
    expect_req(s, 1, "Baking:  Mix the flour. now. \xc3\x89lan and bowl", " Bake");
    cr_assert_eq(cJSON_GetObjectItem(s, "target")->valueint, 1);
    cJSON_Delete(s);
}

Test(tasks, winogrande_partial_evaluation)
{
    cJSON *s = run_rows("winogrande", "{\"sentence\": \"The cat sat on _ because it was  warm. \", "
                                      "\"option1\": \"mat\", \"option2\": \"sofa\", \"answer\": \"2\"}\n");
    expect_req(s, 0, "The cat sat on mat", " because it was  warm.");
    expect_req(s, 1, "The cat sat on sofa", " because it was  warm.");
    cr_assert_eq(cJSON_GetObjectItem(s, "target")->valueint, 1);
    cJSON_Delete(s);
}

/* text.split(' ')[:-1] joined by ' ' keeps the empty word of a double space. */
Test(tasks, lambada_last_word)
{
    cJSON *s = run_rows("lambada_openai", "{\"text\": \"a b  c\"}\n");
    expect_req(s, 0, "a b ", " c");
    cJSON_Delete(s);
}

Test(tasks, mmlu_description_and_letters)
{
    cJSON *s = run_rows("mmlu", "{\"question\": \"  Why? \", \"subject\": \"high_school_physics\", "
                                "\"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 3}\n");
    const char *ctx = "The following are multiple choice questions (with answers) about high school physics.\n\n"
                      "Why?\nA. a\nB. b\nC. c\nD. d\nAnswer:";
    expect_req(s, 0, ctx, " A");
    expect_req(s, 3, ctx, " D");
    cJSON_Delete(s);
}
