/* ar-scheme — AutoScheme mixed precision between ar-calib and ar-tune: pass
 * the calibration stream through unchanged and append a META record whose
 * "layer_config" gives each Linear one of --options so that the model
 * averages --avg_bits (libar/tune/autoscheme.h does the work). */
#include "autoscheme.h"
#include "calib.h"
#include "calib_stream.h"
#include "cli.h"
#include "error.h"
#include "model.h"
#include "runtime.h"
#include "scheme.h"
#include "stream.h"
#include <cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-scheme --avg_bits X [-i CALIB|-] [-o FILE] [--model DIR] [--options W2A16G64,W4A16]\n"
    "                 [--shared_layers PAT,PAT,...]... [--ignore_scale_zp_bits] [--quant_lm_head]\n"
    "                 [--nsamples 16] [--seqlen 256] [--batch_size 8] [--max_states N]\n"
    "                 [--emit_config FILE.json] [--always_weight_score] [--threads N]\n"
    "                 [--score delta|measured|measured_opt_rtn] [--score_rounds N]\n"
    "                 [--quiet|--verbose|--progress]\n"
    "Reads an ar-calib stream (standard input or -i), scores every Linear under each option, picks\n"
    "one option per layer for the target average bits, and writes the stream through unchanged\n"
    "with an extra META record carrying the layer config (ar-tune applies it) to stdout or -o FILE.\n"
    "--shared_layers: one group of names or regexes that must share an option (block by block);\n"
    "repeat the flag for several groups. --emit_config also writes the --layer_config JSON.\n"
    "Scores: Σ|dL/dŴ·(W−Ŵ)| when some option is weight-only (bits <= 8 < act_bits), plus\n"
    "Σ|dL/dx̂·(x−x̂)| for options that quantize activations (MXFP4, NVFP4, INT8, ...);\n"
    "--always_weight_score: the weight term for every option (auto-round 0.16's rule).\n"
    "--score measured: instead, each layer's score is the calibration loss with that layer alone\n"
    "quantized (RTN; measured_opt_rtn: opt-RTN) minus the full-precision loss, by forwards only;\n"
    "--score_rounds N (measured, default 1): re-measure each layer given the last pick, N rounds.\n";

#define MAX_SHARED 64

typedef struct {
    const char *in, *out, *model, *options, *emit;
    const char *shared[MAX_SHARED];
    int nshared;
    double avg_bits;
    int ignore_scale_zp, quant_lm_head, nsamples, seqlen, batch_size, always_weight;
    int score, opt_rtn, rounds;
    long max_states, threads;
} scheme_args;

static int flag(const char *a, const char *name) { return !strcmp(a, name); }

/* AutoRound's AR_AUTO_SCHEME_* environment overrides of the sample counts. */
static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? (int)cli_long(name, v, 1, 1 << 20) : def;
}

/* --score: the spec's delta loss or the measured loss change (RTN or opt-RTN). */
static void parse_score(const char *v, scheme_args *a)
{
    if (!strcmp(v, "delta")) a->score = AR_AS_SCORE_DELTA, a->opt_rtn = 0;
    else if (!strcmp(v, "measured")) a->score = AR_AS_SCORE_MEASURED, a->opt_rtn = 0;
    else if (!strcmp(v, "measured_opt_rtn")) a->score = AR_AS_SCORE_MEASURED, a->opt_rtn = 1;
    else cli_usage_error("--score: '%s' is not delta, measured or measured_opt_rtn", v);
}

static scheme_args parse_args(int argc, char **argv)
{
    scheme_args a = {0};
    a.avg_bits = -1;
    a.options = "W2A16G64,W4A16";
    a.nsamples = env_int("AR_AUTO_SCHEME_NSAMPLES", 16);
    a.seqlen = env_int("AR_AUTO_SCHEME_SEQLEN", 256);
    a.batch_size = env_int("AR_AUTO_SCHEME_BATCH_SIZE", 8);
    for (int i = 1; i < argc; i++) {
        const char *v, *s = argv[i];
        if (cli_io_flag(argc, argv, &i, usage, "--output", &a.in, &a.out, &a.model)) continue;
        else if ((v = cli_value(argc, argv, &i, "--avg_bits"))) a.avg_bits = cli_double("--avg_bits", v, 1, 32);
        else if ((v = cli_value(argc, argv, &i, "--options"))) a.options = v;
        else if ((v = cli_value(argc, argv, &i, "--shared_layers"))) {
            if (a.nshared == MAX_SHARED) cli_usage_error("--shared_layers: at most %d groups", MAX_SHARED);
            a.shared[a.nshared++] = v;
        }
        else if (flag(s, "--ignore_scale_zp_bits")) a.ignore_scale_zp = 1;
        else if (flag(s, "--quant_lm_head")) a.quant_lm_head = 1;
        else if (flag(s, "--always_weight_score")) a.always_weight = 1;
        else if ((v = cli_value(argc, argv, &i, "--nsamples"))) a.nsamples = (int)cli_long("--nsamples", v, 1, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--seqlen"))) a.seqlen = (int)cli_long("--seqlen", v, 2, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--batch_size"))) a.batch_size = (int)cli_long("--batch_size", v, 1, 1 << 16);
        else if ((v = cli_value(argc, argv, &i, "--max_states"))) a.max_states = cli_long("--max_states", v, 1, LONG_MAX);
        else if ((v = cli_value(argc, argv, &i, "--emit_config"))) a.emit = v;
        else if ((v = cli_value(argc, argv, &i, "--threads"))) a.threads = cli_long("--threads", v, 1, 4096);
        else if ((v = cli_value(argc, argv, &i, "--score"))) parse_score(v, &a);
        else if ((v = cli_value(argc, argv, &i, "--score_rounds"))) a.rounds = (int)cli_long("--score_rounds", v, 1, 16);
        else cli_usage_error("unknown argument '%s'", s);
    }
    if (a.avg_bits < 0) cli_usage_error("--avg_bits X is required");
    if (a.rounds > 1 && a.score != AR_AS_SCORE_MEASURED) cli_usage_error("--score_rounds needs --score measured");
    return a;
}

/* --options "W2A16G64, w4a16": presets, upper-cased as AutoRound does. */
static ar_scheme *parse_options(const char *list, int *n)
{
    char *buf = strdup(list), *save = NULL;
    ar_scheme *opts = calloc(strlen(list) / 2 + 2, sizeof *opts);
    if (!buf || !opts) cli_die("out of memory");
    *n = 0;
    for (char *p = strtok_r(buf, ", ", &save); p; p = strtok_r(NULL, ", ", &save))
        if (ar_scheme_preset(&opts[(*n)++], p)) cli_usage_error("--options: %s", ar_last_error());
    if (*n == 0) cli_usage_error("--options: no preset given");
    free(buf);
    return opts;
}

/* ---- the calibration stream ------------------------------------------------ */

/* The calibration stream must come from this very config.json (as ar-tune checks). */
static void check_digest(const ar_calib_data *ci, const char *model)
{
    if (ci->config_digest && ar_config_digest_check(model, ci->config_digest)) cli_die_lib();
}

/* First nsamples samples, each cut to its first seqlen tokens: [n, T] contiguous. */
static int32_t *take_samples(const ar_calib_data *ci, int nsamples, int seqlen, int *n, int *T)
{
    *n = nsamples < ci->n ? nsamples : ci->n;
    *T = seqlen < ci->T ? seqlen : ci->T;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)*n * *T);
    if (!ids) cli_die("out of memory");
    for (int s = 0; s < *n; s++) memcpy(ids + (size_t)s * *T, ci->ids + (size_t)s * ci->T, sizeof(int32_t) * *T);
    return ids;
}

/* ---- scheme search and output ------------------------------------------- */

static void on_progress(void *ctx, const char *what, int i, int n, double loss)
{
    double *t0 = ctx;
    char extra[64];
    snprintf(extra, sizeof extra, "loss %.4f", loss);
    cli_progress_line(what, i, n, *t0, extra);
}

/* Every option pass reads each block twice per batch: keep widened weights in
 * memory when they take under 4 GiB (tiny and small models). */
static int cache_flag(const char *model)
{
    ar_config c;
    if (ar_config_load(&c, model)) cli_die_lib();
    double per_block = 2.0 * c.hidden * (c.n_heads + c.n_kv_heads) * c.head_dim + 3.0 * c.hidden * c.intermediate;
    double bytes = 4.0 * (c.n_layers * per_block + 2.0 * c.vocab * c.hidden);
    return bytes < 4.0 * (1 << 30) ? AR_MODEL_CACHE : 0;
}

static const char *score_name(const scheme_args *a)
{
    if (a->score != AR_AS_SCORE_MEASURED) return "delta";
    return a->opt_rtn ? "measured_opt_rtn" : "measured";
}

static char *meta_json(const scheme_args *a, const ar_autoscheme_result *res, const char *lc_json, int n, int T)
{
    cJSON *m = cJSON_CreateObject(), *opts = cJSON_CreateArray();
    cJSON_AddStringToObject(m, "ar", "scheme");
    cJSON_AddNumberToObject(m, "version", 1);
    cJSON_AddNumberToObject(m, "target_avg_bits", a->avg_bits);
    cJSON_AddNumberToObject(m, "avg_bits", res->avg_bits);
    cJSON_AddNumberToObject(m, "total_bits", (double)res->used_bits);
    cJSON_AddNumberToObject(m, "budget_bits", (double)res->budget);
    cJSON_AddNumberToObject(m, "params", (double)res->total_params);
    for (int j = 0; j < res->nopt; j++) cJSON_AddItemToArray(opts, cJSON_CreateString(res->options[j].name));
    cJSON_AddItemToObject(m, "options", opts);
    cJSON_AddBoolToObject(m, "ignore_scale_zp_bits", a->ignore_scale_zp);
    cJSON_AddBoolToObject(m, "weight_score", (res->terms & AR_AS_WEIGHT_TERM) != 0);
    cJSON_AddStringToObject(m, "score", score_name(a));
    if (a->score == AR_AS_SCORE_MEASURED) cJSON_AddNumberToObject(m, "score_rounds", a->rounds > 1 ? a->rounds : 1);
    cJSON_AddNumberToObject(m, "nsamples", n);
    cJSON_AddNumberToObject(m, "seqlen", T);
    cJSON *lc = cJSON_Parse(lc_json);
    if (!lc) cli_die("internal error: layer config JSON does not parse");
    cJSON_AddItemToObject(m, "layer_config", lc);
    char *txt = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return txt;
}

static void emit_config(const char *path, const char *json)
{
    FILE *f = cli_out_open(path, 0);
    if (fputs(json, f) == EOF) cli_die("%s: write failed", path);
    cli_out_commit(f);
}

static void report(const ar_config *c, const ar_autoscheme_result *r, const scheme_args *a)
{
    if (!cli_progress) return;
    int *count = calloc((size_t)r->nopt, sizeof *count);
    for (int s = 0; count && s < r->nslots; s++) if (r->choice[s] >= 0) count[r->choice[s]]++;
    for (int j = 0; count && j < r->nopt; j++)
        fprintf(stderr, "ar-scheme: %-12s %3d layers\n", r->options[j].name, count[j]);
    if (cli_progress >= 2)
        for (int s = 0; s < r->nslots; s++) {
            if (r->choice[s] < 0) continue;
            char name[128];
            ar_autoscheme_slot_name(c, s, name, sizeof name);
            fprintf(stderr, "ar-scheme:   %-40s %-10s scores", name, r->options[r->choice[s]].name);
            for (int j = 0; j < r->nopt; j++) fprintf(stderr, " %.6g", r->score[(size_t)s * r->nopt + j]);
            fputc('\n', stderr);
        }
    fprintf(stderr, "ar-scheme: avg bits %.4f (target %.4f, options range [%.4f, %.4f]), %lld of %lld budget bits\n",
            r->avg_bits, a->avg_bits, r->min_avg, r->max_avg, (long long)r->used_bits, (long long)r->budget);
    if (a->score == AR_AS_SCORE_MEASURED)
        fprintf(stderr, "ar-scheme: scores: measured loss change (%s, %d round%s)\n", a->opt_rtn ? "opt-RTN" : "RTN",
                a->rounds > 1 ? a->rounds : 1, a->rounds > 1 ? "s" : "");
    else fprintf(stderr, "ar-scheme: scores: %s%s%s\n", r->terms & AR_AS_WEIGHT_TERM ? "weight" : "",
            r->terms == (AR_AS_WEIGHT_TERM | AR_AS_ACT_TERM) ? " + " : "",
            r->terms & AR_AS_ACT_TERM ? "activation (of the options that quantize activations)" : "");
    fprintf(stderr, "ar-scheme: search %.2fs (scoring %.2fs, allocation %.3fs)\n",
            r->score_seconds + r->dp_seconds, r->score_seconds, r->dp_seconds);
    free(count);
}

int main(int argc, char **argv)
{
    cli_init("ar-scheme");
    scheme_args a = parse_args(argc, argv);
    int nopt;
    ar_scheme *options = parse_options(a.options, &nopt);
    if (!a.in && isatty(0)) cli_usage_error("give a calibration stream (-i FILE or a pipe)");
    int is_stdin = !a.in || !strcmp(a.in, "-");
    const char *src = is_stdin ? "<stdin>" : a.in;
    FILE *fin = is_stdin ? stdin : fopen(a.in, "rb");
    if (!fin) cli_die("%s: cannot open", a.in);
    FILE *fout = cli_out_open(a.out, 1);
    ar_stream_writer *w = ar_stream_writer_open(fout, a.out ? a.out : "<stdout>", 3);
    if (!w) cli_die_lib();
    ar_calib_data ci;
    if (ar_calib_stream_read(fin, src, w, 0, &ci)) cli_die_lib();
    for (int k = 0; k < ci.n_layer_configs; k++)
        fprintf(stderr, "ar-scheme: warning: the stream already has a layer config; ar-tune uses the last one\n");
    if (!is_stdin) fclose(fin);

    const char *model = a.model ? a.model : ci.model;
    if (!model) cli_die("the calibration stream names no model; give --model DIR");
    check_digest(&ci, model);
    ar_model *m = ar_model_open(model, cache_flag(model));
    if (!m) cli_die_lib();
    const ar_config *c = ar_model_config(m);
    ar_set_threads(a.threads, c);
    int n, T;
    int32_t *ids = take_samples(&ci, a.nsamples, a.seqlen, &n, &T);
    if (cli_progress)
        fprintf(stderr, "ar-scheme: scoring %d options on %d samples of %d tokens\n", nopt, n, T);
    double t0 = cli_now();
    ar_autoscheme_opts o = {a.avg_bits, options, nopt, a.shared, a.nshared, a.ignore_scale_zp,
                            a.quant_lm_head, a.batch_size, a.max_states, on_progress, &t0, a.always_weight,
                            a.score, a.opt_rtn, a.rounds};
    ar_autoscheme_result res;
    if (ar_autoscheme_run(m, ids, n, T, &o, &res)) cli_die_lib();
    char *lc = ar_autoscheme_layer_config_json(c, &res);
    if (!lc) cli_die_lib();
    char *meta = meta_json(&a, &res, lc, n, T);
    if (ar_stream_write_meta(w, meta) || ar_stream_writer_close(w)) cli_die_lib();
    cli_out_commit(fout);
    if (a.emit) emit_config(a.emit, lc);
    report(c, &res, &a);
    free(meta); free(lc); free(ids); ar_calib_data_free(&ci); free(options);
    ar_autoscheme_result_free(&res);
    ar_model_close(m);
    return 0;
}
