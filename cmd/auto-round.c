/* auto-round — AutoRound's command line on top of the ar tools (man auto-round(1)).
 *
 * A thin driver: it translates AutoRound's flags into the command lines of
 * ar-calib, ar-tune and ar-pack (found next to its own executable), runs them
 * connected by pipes, or one after another through files with --keep_streams,
 * and reports the first stage that failed. It quantizes nothing itself, so
 * there is exactly one implementation of every step.
 *
 * Installed under another name it applies one of AutoRound's recipes:
 * auto-round-best, auto-round-light, auto-round-opt-rtn, auto-round-rtn. */
#include "cli.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char usage[] =
    "usage: auto-round [--model] DIR [--scheme W4A16] [--bits N] [--group_size G] [--sym|--asym]\n"
    "                  [--format auto_round[,F...]] [--output_dir ./tmp_autoround] [--dataset SPEC]\n"
    "                  [--apply_chat_template]\n"
    "                  [--iters 200] [--lr X] [--minmax_lr X] [--nsamples 128] [--seqlen 2048]\n"
    "                  [--batch_size 8] [--gradient_accumulate_steps 1] [--layer_config FILE.json]\n"
    "                  [--disable_opt_rtn] [--enable_opt_rtn] [--enable_alg_ext] [--enable_lfq] [--seed 42]\n"
    "                  [--device cpu|cuda[:N]|N|auto] [--low_gpu_mem_usage] [--low_cpu_mem_usage]\n"
    "                  [--max_shard_size 5GB]\n"
    "                  [--disable_minmax_tuning] [--not_use_best_mse] [--disable_quanted_input] [--disable_amp]\n"
    "                  [--recipe default|best|light|opt-rtn|rtn] [--keep_streams DIR] [--dry_run]\n"
    "                  [--schemes W2A16G64,W4A16 --bits X [--shared_layers PAT...]... [--ignore_scale_zp_bits]]\n"
    "                  [--layout autoround|plain] [--quiet|--verbose|--progress]\n"
    "Runs ar-calib | ar-tune | ar-pack (installed next to auto-round) with AutoRound's defaults;\n"
    "--schemes (AutoScheme mixed bits, --bits X being the average) adds ar-scheme after ar-calib;\n"
    "--avg_bits/--target_bits X and --options S... are the older spellings of --bits and --schemes.\n"
    "Calibration data is local: --dataset FILE (.txt or .jsonl, optionally .zst), or AutoRound's\n"
    "'a.jsonl:num=64,b.txt:num=64' with :num=N, :concat, :apply_chat_template, :system_prompt=TEXT\n"
    "(see ar-calib(1)); --apply_chat_template renders every .jsonl row with the model's chat template.\n"
    "A dataset is required unless --iters 0 --disable_opt_rtn (plain RTN). One --format writes OUT;\n"
    "several write\n"
    "OUT/<format> each (':' becomes '-'). --keep_streams DIR keeps DIR/calib.ars and DIR/tune.ars;\n"
    "--dry_run prints the commands instead of running them.\n"
    "Those paths are --layout plain's; by default outputs go where AutoRound 0.16.1 puts them:\n"
    "OUT/<model>-w4g128/ (a subfolder per format for several), GGUF files as\n"
    "OUT/<model>-gguf/<Name>-<Size>-<TYPE>.gguf (man auto-round, OUTPUT LAYOUT).\n"
    "Exit status: 0 success, 1 a stage failed, 2 usage error.\n";

enum { MAX_SHARED = 16 };

/* The command line, as given; NULL / -1 means "not set": the tools' or the
 * recipe's default applies. */
typedef struct {
    const char *model, *scheme, *bits, *group_size, *layer_config, *format, *output_dir, *dataset;
    const char *iters, *lr, *minmax_lr, *nsamples, *seqlen, *batch_size, *gas, *seed, *device;
    const char *max_shard_size, *keep_streams, *recipe, *verbosity;
    const char *layout;                 /* "autoround" (AutoRound's folder and file names) or "plain" */
    char layout_scheme[64];             /* AutoScheme: the first candidate, which AutoRound names the folder after */
    double bits_value;                  /* bits as a number (AutoRound parses --bits as a float) */
    const char *avg_bits;               /* with --schemes: bits, the AutoScheme target run by ar-scheme */
    int has_schemes;                    /* --schemes/--options given: AutoScheme */
    char scheme_options[512];           /* --schemes, comma-joined */
    char schemes_given[512];            /* --schemes as given, to compare with a later --options */
    char *shared[MAX_SHARED];           /* --shared_layers groups, each comma-joined */
    int nshared, ignore_scale_zp_bits;
    int sym, disable_opt_rtn, enable_alg_ext, enable_lfq, low_gpu_mem_usage, low_cpu_mem_usage, dry_run;
    int apply_chat_template; /* --apply_chat_template: ar-calib renders .jsonl rows with the chat template */
    int disable_minmax_tuning, not_use_best_mse, disable_quanted_input, disable_amp;
    const char *static_kv_dtype, *static_kv_granularity;   /* AutoRound's static KV-cache flags */
} options;

/* Flags that take a value, with AutoRound's aliases. */
static const struct {
    const char *names[4];
    size_t off;
} value_flags[] = {
    {{"--model", "--model_name", "--model_name_or_path"}, offsetof(options, model)},
    {{"--scheme"}, offsetof(options, scheme)},
    {{"--group_size"}, offsetof(options, group_size)},
    {{"--layer_config"}, offsetof(options, layer_config)},
    {{"--format", "--formats"}, offsetof(options, format)},
    {{"--output_dir"}, offsetof(options, output_dir)},
    {{"--layout"}, offsetof(options, layout)},
    {{"--dataset"}, offsetof(options, dataset)},
    {{"--iters", "--iter"}, offsetof(options, iters)},
    {{"--lr"}, offsetof(options, lr)},
    {{"--minmax_lr"}, offsetof(options, minmax_lr)},
    {{"--nsamples", "--nsample"}, offsetof(options, nsamples)},
    {{"--seqlen", "--seq_len"}, offsetof(options, seqlen)},
    {{"--batch_size", "--train_bs", "--bs"}, offsetof(options, batch_size)},
    {{"--gradient_accumulate_steps"}, offsetof(options, gas)},
    {{"--seed"}, offsetof(options, seed)},
    {{"--device", "--device_map", "--devices"}, offsetof(options, device)},
    {{"--max_shard_size"}, offsetof(options, max_shard_size)},
    {{"--keep_streams"}, offsetof(options, keep_streams)},
    {{"--recipe"}, offsetof(options, recipe)},
    {{"--static_kv_dtype"}, offsetof(options, static_kv_dtype)},
    {{"--static_kv_granularity"}, offsetof(options, static_kv_granularity)},
};

/* Switches: each sets its int field to val. */
static const struct {
    const char *name;
    size_t off;
    int val;
} switch_flags[] = {
    {"--sym", offsetof(options, sym), 1},
    {"--asym", offsetof(options, sym), 0},
    {"--disable_opt_rtn", offsetof(options, disable_opt_rtn), 1},
    {"--enable_opt_rtn", offsetof(options, disable_opt_rtn), 0},
    {"--enable_alg_ext", offsetof(options, enable_alg_ext), 1},
    {"--enable_lfq", offsetof(options, enable_lfq), 1},
    {"--low_gpu_mem_usage", offsetof(options, low_gpu_mem_usage), 1},
    {"--low_cpu_mem_usage", offsetof(options, low_cpu_mem_usage), 1},
    {"--disable_low_cpu_mem_usage", offsetof(options, low_cpu_mem_usage), 0},
    {"--disable_minmax_tuning", offsetof(options, disable_minmax_tuning), 1},
    {"--not_use_best_mse", offsetof(options, not_use_best_mse), 1},
    {"--disable_quanted_input", offsetof(options, disable_quanted_input), 1},
    {"--disable_amp", offsetof(options, disable_amp), 1},
    {"--amp", offsetof(options, disable_amp), 0},
    {"--dry_run", offsetof(options, dry_run), 1},
    {"--ignore_scale_zp_bits", offsetof(options, ignore_scale_zp_bits), 1},
    {"--apply_chat_template", offsetof(options, apply_chat_template), 1},
};

/* AutoRound switches that change nothing here (defaults, or speed/memory
 * knobs of the PyTorch implementation): accepted so AutoRound command lines
 * run unchanged. */
static const char *const noop_flags[] = {
    "--enable_minmax_tuning", "--enable_quanted_input", "--enable_torch_compile", "--disable_torch_compile",
    "--disable_trust_remote_code", "--model_free",
    "--disable_model_free", "--enable_deterministic_algorithms", "--disable_eval",
};

/* AutoRound options that would change the result and that ar does not
 * implement: a clear refusal rather than a silently different model. */
static const struct {
    const char *name, *hint;
} unsupported_flags[] = {
    {"--tasks", "evaluation is a separate tool: ar-eval --model OUT --text FILE"},
    {"--task", "evaluation is a separate tool: ar-eval --model OUT --text FILE"},
    {"--eval_bs", "evaluation is a separate tool: ar-eval --model OUT --text FILE"},
    {"--eval_task_by_task", "evaluation is a separate tool: ar-eval --model OUT --text FILE"},
    {"--limit", "evaluation is a separate tool: ar-eval --model OUT --text FILE --windows N"},
    {"--data_type", "pick a preset with --scheme"}, {"--dtype", "pick a preset with --scheme"},
    {"--act_bits", "pick a preset with --scheme"}, {"--act_group_size", "pick a preset with --scheme"},
    {"--act_asym", "pick a preset with --scheme"}, {"--act_data_type", "pick a preset with --scheme"},
    {"--act_dtype", "pick a preset with --scheme"}, {"--disable_act_dynamic", "pick a preset with --scheme"},
    {"--super_bits", "pick a preset with --scheme"}, {"--super_group_size", "pick a preset with --scheme"},
    {"--scale_dtype", NULL}, {"--quant_lm_head", NULL}, {"--ignore_layers", "use --layer_config"},
    {"--fp_layers", "use --layer_config"}, {"--to_quant_block_names", NULL}, {"--model_dtype", NULL},
    {"--nblocks", NULL}, {"--enable_norm_bias_tuning", NULL}, {"--momentum", NULL},
    {"--enable_adam", NULL}, {"--algorithm", NULL}, {"--alg", NULL},
    {"--mllm", NULL}, {"--platform", NULL},
    {"--static_attention_dtype", NULL},
};

/* "--flag" or "--flag=value" names flag. */
static int is_flag(const char *arg, const char *flag)
{
    size_t n = strlen(flag);
    return !strncmp(arg, flag, n) && (arg[n] == 0 || arg[n] == '=');
}

static int parse_table_flag(int argc, char **argv, int *i, options *o)
{
    for (size_t f = 0; f < sizeof value_flags / sizeof *value_flags; f++)
        for (int k = 0; k < 4 && value_flags[f].names[k]; k++) {
            const char *v = cli_value(argc, argv, i, value_flags[f].names[k]);
            if (v) { *(const char **)((char *)o + value_flags[f].off) = v; return 1; }
        }
    for (size_t f = 0; f < sizeof switch_flags / sizeof *switch_flags; f++)
        if (!strcmp(argv[*i], switch_flags[f].name)) {
            *(int *)((char *)o + switch_flags[f].off) = switch_flags[f].val;
            return 1;
        }
    return 0;
}

/* Exit with a usage error when arg is a known AutoRound option we refuse;
 * return 1 when it is one we ignore. */
static int check_autoround_flag(const char *arg)
{
    for (size_t f = 0; f < sizeof noop_flags / sizeof *noop_flags; f++)
        if (!strcmp(arg, noop_flags[f])) {
            if (cli_progress >= 2) fprintf(stderr, "auto-round: %s has no effect here\n", arg);
            return 1;
        }
    for (size_t f = 0; f < sizeof unsupported_flags / sizeof *unsupported_flags; f++)
        if (is_flag(arg, unsupported_flags[f].name))
            cli_usage_error("%s: AutoRound option not supported yet%s%s", unsupported_flags[f].name,
                            unsupported_flags[f].hint ? "; " : "",
                            unsupported_flags[f].hint ? unsupported_flags[f].hint : "");
    return 0;
}

/* The values after flag argv[*i] up to the next flag (AutoRound's
 * nargs="+"), at least one: returns their count and leaves *i on the last. */
static int list_values(int argc, char **argv, int *i)
{
    int n = 0;
    while (*i + 1 + n < argc && argv[*i + 1 + n][0] != '-') n++;
    if (!n) cli_usage_error("%s needs a value", argv[*i]);
    *i += n;
    return n;
}

static void append_list(char *dst, size_t cap, const char *item, const char *flag)
{
    size_t n = strlen(dst);
    if (n + strlen(item) + 2 > cap) cli_usage_error("%s: list too long", flag);
    snprintf(dst + n, cap - n, "%s%s", n ? "," : "", item);
}

/* A number as AutoRound's argparse reads --bits (type float). */
static double parse_number(const char *flag, const char *v)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end) cli_usage_error("%s: '%s' is not a number", flag, v);
    return x;
}

/* --bits/--bit X, or its older spellings --avg_bits/--target_bits X, which
 * (as in AutoRound 0.16) refuse to replace a different value given before. */
static int parse_bits(int argc, char **argv, int *i, options *o)
{
    static const char *const names[] = {"--bits", "--bit", "--avg_bits", "--target_bits"};
    for (int k = 0; k < 4; k++) {
        const char *v = cli_value(argc, argv, i, names[k]);
        if (!v) continue;
        double x = parse_number(names[k], v);
        if (k >= 2 && o->bits && x != o->bits_value)
            cli_usage_error("conflicting values for --bits: '%s' was already given, then %s '%s'", o->bits,
                            names[k], v);
        o->bits = v;
        o->bits_value = x;
        return 1;
    }
    return 0;
}

/* --schemes A,B or --schemes A B (or --schemes=A,B): one comma list for
 * ar-scheme, blanks and empty items dropped. The older spellings --options
 * and --option refuse to replace a different list given before; --schemes
 * replaces it (AutoRound 0.16). */
static int parse_schemes(int argc, char **argv, int *i, options *o)
{
    static const char *const names[] = {"--schemes", "--options", "--option"};
    for (int k = 0; k < 3; k++) {
        const char *flag = names[k], *eq = strchr(argv[*i], '=');
        if (!is_flag(argv[*i], flag)) continue;
        int n = 1, at = *i;
        if (!eq) n = list_values(argc, argv, i), at = *i - n + 1;
        char given[sizeof o->schemes_given] = "", list[sizeof o->scheme_options] = "";
        for (int j = 0; j < n; j++) {
            const char *v = eq ? eq + 1 : argv[at + j];
            size_t len = strlen(given);
            if (len + strlen(v) + 2 > sizeof given) cli_usage_error("%s: list too long", flag);
            snprintf(given + len, sizeof given - len, "%s%s", j ? "\n" : "", v);
            char item[sizeof list];
            snprintf(item, sizeof item, "%s", v);
            for (char *save, *t = strtok_r(item, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                while (*t == ' ') t++;
                size_t m = strlen(t);
                while (m && t[m - 1] == ' ') t[--m] = 0;
                if (m) append_list(list, sizeof list, t, flag);
            }
        }
        if (k && o->has_schemes && strcmp(given, o->schemes_given))
            cli_usage_error("conflicting values for --schemes: '%s' was already given, then %s", o->scheme_options,
                            flag);
        if (!list[0]) cli_usage_error("%s: no scheme given", flag);
        memcpy(o->schemes_given, given, sizeof given);
        memcpy(o->scheme_options, list, sizeof list);
        o->has_schemes = 1;
        return 1;
    }
    return 0;
}

/* x in its shortest form that reads back the same: 3.0 -> "3", 2.50 -> "2.5". */
static const char *number_text(double x)
{
    static char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    return buf;
}

/* AutoRound 0.16's reading of --bits: with --schemes it is AutoScheme's
 * average target (the candidates carry their own bits, and --scheme may not
 * pick another), without it the weight bits, which must be a whole number. */
static void resolve_bits(options *o)
{
    if (o->has_schemes) {
        if (o->scheme && strcasecmp(o->scheme, "W4A16"))
            cli_usage_error("--scheme and --schemes cannot be used together: give only --schemes");
        if (!o->bits) cli_usage_error("--schemes: give the average bits to aim for with --bits X");
        o->avg_bits = strdup(number_text(o->bits_value));
        /* parse_scheme (auto_round/schemes.py) binds the run's attributes to options[0] */
        snprintf(o->layout_scheme, sizeof o->layout_scheme, "%.*s", (int)strcspn(o->scheme_options, ","),
                 o->scheme_options);
        if (!o->avg_bits) cli_die("out of memory");
        o->bits = NULL;
        o->scheme = NULL;
    } else if (o->bits) {
        if (!(o->bits_value == floor(o->bits_value)) || fabs(o->bits_value) > 1e6)
            cli_usage_error("--bits %s: weight bits must be a whole number; a fractional AutoScheme average "
                            "needs --schemes",
                            o->bits);
        o->bits = strdup(number_text(o->bits_value));
        if (!o->bits) cli_die("out of memory");
    }
    if (!o->has_schemes && (o->nshared || o->ignore_scale_zp_bits) && cli_progress)
        fprintf(stderr, "auto-round: --shared_layers and --ignore_scale_zp_bits have no effect without --schemes\n");
}

/* --shared_layers as AutoRound reads it: bare names form one group; when a
 * value holds commas, each value is a group of its own. */
static void parse_shared_layers(int argc, char **argv, int *i, options *o)
{
    enum { CAP = 1024 };
    int n = list_values(argc, argv, i), at = *i - n + 1, commas = 0;
    for (int k = 0; k < n; k++) commas |= strchr(argv[at + k], ',') != NULL;
    for (int k = 0; k < (commas ? n : 1); k++) {
        if (o->nshared == MAX_SHARED) cli_usage_error("--shared_layers: at most %d groups", MAX_SHARED);
        char *g = calloc(1, CAP);
        if (!g) cli_die("out of memory");
        if (commas) append_list(g, CAP, argv[at + k], "--shared_layers");
        else for (int j = 0; j < n; j++) append_list(g, CAP, argv[at + j], "--shared_layers");
        o->shared[o->nshared++] = g;
    }
}

/* The recipe named by how we were invoked: auto-round-best -> "best". */
static const char *recipe_from_name(const char *argv0)
{
    const char *base = strrchr(argv0, '/');
    base = base ? base + 1 : argv0;
    if (!strncmp(base, "auto-round-", 11)) return base + 11;
    return "default";
}

static options parse_args(int argc, char **argv)
{
    options o = {0};
    o.sym = o.disable_opt_rtn = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage, stdout); exit(CLI_EXIT_OK); }
        else if (cli_common_flag(a)) o.verbosity = a;
        else if (parse_bits(argc, argv, &i, &o) || parse_schemes(argc, argv, &i, &o)) continue;
        else if (!strcmp(a, "--shared_layers")) parse_shared_layers(argc, argv, &i, &o);
        else if (parse_table_flag(argc, argv, &i, &o)) continue;
        else if (check_autoround_flag(a)) continue;
        else if (a[0] == '-') cli_usage_error("unknown argument '%s'", a);
        else if (o.model) cli_usage_error("more than one model given ('%s' and '%s')", o.model, a);
        else o.model = a;
    }
    if (!o.model) cli_usage_error("give the model folder: auto-round --model DIR");
    if (!o.recipe) o.recipe = recipe_from_name(argv[0]);
    if (!o.layout) o.layout = "autoround";
    if (strcmp(o.layout, "autoround") && strcmp(o.layout, "plain"))
        cli_usage_error("--layout: '%s' is not autoround or plain", o.layout);
    resolve_bits(&o);
    if (o.avg_bits && o.layer_config)
        cli_usage_error("--schemes and --layer_config both set the per-layer schemes: give one");
    return o;
}

/* ---- recipes and AutoRound's defaults ------------------------------------ */

static int is_recipe(const options *o, const char *name) { return !strcmp(o->recipe, name); }

/* Fill what the recipe fixes and the user left unset (AutoRound's RECIPES):
 * best tunes 512 samples; opt-rtn and rtn do not tune. ar-tune applies the
 * iteration counts and learning rates of best and light itself (--recipe). */
static void apply_recipe(options *o)
{
    if (is_recipe(o, "best")) { if (!o->nsamples) o->nsamples = "512"; }
    else if (is_recipe(o, "opt-rtn")) { if (!o->iters) o->iters = "0"; }
    else if (is_recipe(o, "rtn")) {
        if (!o->iters) o->iters = "0";
        if (o->disable_opt_rtn < 0) o->disable_opt_rtn = 1;
    } else if (!is_recipe(o, "default") && !is_recipe(o, "light"))
        cli_usage_error("--recipe: '%s' is not default, best, light, opt-rtn or rtn", o->recipe);
    if (!o->format) o->format = "auto_round";
    if (!o->output_dir) o->output_dir = "./tmp_autoround";
}

/* AutoRound derives the scheme from a GGUF format when none is given. */
static void scheme_from_gguf_format(options *o)
{
    static char scheme[64];
    if (o->scheme || strncmp(o->format, "gguf:", 5) || strchr(o->format, ',')) return;
    snprintf(scheme, sizeof scheme, "%s", o->format);
    for (char *p = scheme; *p; p++) if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 32);
    o->scheme = scheme;
}

/* Calibration data is needed by SignRound (iters > 0) and opt-RTN. */
static int needs_calibration(const options *o)
{
    if (o->avg_bits) return 1;   /* AutoScheme scores the layers on it */
    if (o->static_kv_dtype) return 1;   /* AutoRound observes K/V in the calibration forwards */
    long iters = o->iters ? cli_long("--iters", o->iters, 0, 1000000) : 1;
    return iters > 0 || o->disable_opt_rtn != 1;
}

/* ---- the tools ----------------------------------------------------------- */

static char tool_dir[PATH_MAX];

/* The ar tools are installed next to auto-round: find our own directory. */
static void find_tool_dir(void)
{
    ssize_t n = readlink("/proc/self/exe", tool_dir, sizeof tool_dir - 1);
    if (n <= 0) cli_die("/proc/self/exe: cannot read: %s", strerror(errno));
    tool_dir[n] = 0;
    char *slash = strrchr(tool_dir, '/');
    if (slash) *slash = 0;
}

static char *tool_path(const char *tool)
{
    char *p;
    if (asprintf(&p, "%s/%s", tool_dir, tool) < 0) cli_die("out of memory");
    if (access(p, X_OK)) cli_die("%s: not found (auto-round runs the ar tools installed next to it)", p);
    return p;
}

/* Whether `tool --help` mentions flag: lets the driver follow what the tools
 * support (e.g. --enable_alg_ext) without knowing their versions. */
static int help_mentions(const char *path, const char *flag)
{
    int fd[2];
    if (pipe(fd)) cli_die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) cli_die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]); close(fd[1]);
        execl(path, path, "--help", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char buf[1 << 15];
    size_t len = 0;
    ssize_t got;
    while ((got = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)got;
    close(fd[0]);
    waitpid(pid, NULL, 0);
    buf[len] = 0;
    size_t n = strlen(flag);
    for (const char *p = buf; (p = strstr(p, flag)); p += n) {
        char next = p[n];
        if (!(next == '_' || (next >= 'a' && next <= 'z') || (next >= '0' && next <= '9'))) return 1;
    }
    return 0;
}

/* ---- stages -------------------------------------------------------------- */

enum { MAX_ARGS = 80, MAX_STAGES = 4 };

typedef struct {
    const char *tool;
    char *path;
    const char *argv[MAX_ARGS];
    int argc;
    pid_t pid;
    int status;
} stage;

static void push(stage *s, const char *arg)
{
    if (s->argc + 2 > MAX_ARGS) cli_die("%s: too many arguments", s->tool);
    s->argv[s->argc++] = arg;
    s->argv[s->argc] = NULL;
}

static void push_opt(stage *s, const char *flag, const char *value)
{
    if (value) { push(s, flag); push(s, value); }
}

static void stage_init(stage *s, const char *tool, const options *o)
{
    memset(s, 0, sizeof *s);
    s->tool = tool;
    s->path = tool_path(tool);
    push(s, s->path);
    if (o->verbosity) push(s, o->verbosity);
}

static void build_calib(stage *s, const options *o, const char *out)
{
    stage_init(s, "ar-calib", o);
    push_opt(s, "--model", o->model);
    push_opt(s, "--dataset", o->dataset);
    if (o->apply_chat_template) push(s, "--apply_chat_template");
    push_opt(s, "--nsamples", o->nsamples);
    push_opt(s, "--seqlen", o->seqlen);
    push_opt(s, "--seed", o->seed);
    push_opt(s, "-o", out);
}

/* AutoScheme: ar-scheme between ar-calib and ar-tune. */
static void build_scheme(stage *s, const options *o, const char *in, const char *out)
{
    stage_init(s, "ar-scheme", o);
    push_opt(s, "-i", in);
    push_opt(s, "--model", o->model);
    push_opt(s, "--avg_bits", o->avg_bits);
    push_opt(s, "--options", o->scheme_options);
    for (int g = 0; g < o->nshared; g++) push_opt(s, "--shared_layers", o->shared[g]);
    if (o->ignore_scale_zp_bits) push(s, "--ignore_scale_zp_bits");
    push_opt(s, "-o", out);
}

/* AutoRound's device names in ar-tune's terms: a bare GPU index N is
 * cuda:N, "auto" leaves the choice to ar-tune (NULL). */
static const char *device_name(const char *d)
{
    static char buf[64];
    if (!d || !strcmp(d, "auto")) return NULL;
    if (strspn(d, "0123456789") == strlen(d)) {
        snprintf(buf, sizeof buf, "cuda:%s", d);
        return buf;
    }
    return d;
}

/* Flags of ar-tune that only some builds have: pass them where supported,
 * refuse clearly where not. */
static void push_optional_tune_flags(stage *s, const options *o)
{
    if (o->enable_alg_ext) {
        if (!help_mentions(s->path, "--enable_alg_ext"))
            cli_usage_error("--enable_alg_ext: not supported yet (ar-tune has no SignRoundV2)");
        push(s, "--enable_alg_ext");
    }
    const char *dev = device_name(o->device);
    if (dev) {
        if (help_mentions(s->path, "--device")) push_opt(s, "--device", dev);
        else if (strcmp(dev, "cpu"))
            cli_usage_error("--device %s: not supported yet (ar-tune runs on the CPU); use --device cpu", o->device);
    }
    if (o->low_cpu_mem_usage) {   /* AutoRound's disk offload of the block inputs: ar-tune's spill files */
        if (help_mentions(s->path, "--low_cpu_mem_usage")) push(s, "--low_cpu_mem_usage");
        else if (cli_progress >= 2)
            fprintf(stderr, "auto-round: --low_cpu_mem_usage has no effect: this ar-tune has no spill files\n");
    }
    if (o->low_gpu_mem_usage) {
        if (help_mentions(s->path, "--low_gpu_mem_usage")) push(s, "--low_gpu_mem_usage");
        else if (cli_progress >= 2)
            fprintf(stderr, "auto-round: --low_gpu_mem_usage has no effect: activations live in host memory\n");
    }
}

/* One ar-tune | ar-pack run: the formats one tuned stream serves. */
typedef struct {
    const char *gguf_scheme;   /* "GGUF:Q4_K_M" for a pass of its own, NULL: the user's scheme */
    char formats[512];         /* comma list for ar-pack */
    const char *out;           /* ar-pack -o */
    const char *stream;        /* the tuned stream between the two ("-": a pipe) */
    const char *run_formats;   /* --layout autoround with several passes: the whole --format list */
} pass;

/* --static_kv_dtype: AutoRound's fp8 (float8_e4m3fn) with "tensor" granularity. */
static void check_static_kv(const options *o)
{
    const char *d = o->static_kv_dtype, *g = o->static_kv_granularity;
    if (d && strcmp(d, "fp8") && strcmp(d, "float8_e4m3fn"))
        cli_usage_error("--static_kv_dtype %s: not supported yet (fp8 only)", d);
    if (g && strcmp(g, "tensor"))
        cli_usage_error("--static_kv_granularity %s: not supported yet (tensor only)", g);
}

static void build_tune(stage *s, const options *o, const pass *p, const char *in)
{
    check_static_kv(o);
    stage_init(s, "ar-tune", o);
    push_opt(s, "-i", in);
    push_opt(s, "--model", o->model);
    if (p->gguf_scheme) push_opt(s, "--scheme", p->gguf_scheme);
    else {
        push_opt(s, "--scheme", o->scheme);
        push_opt(s, "--bits", o->bits);
        push_opt(s, "--group_size", o->group_size);
        if (o->sym >= 0) push(s, o->sym ? "--sym" : "--asym");
        push_opt(s, "--layer_config", o->layer_config);
    }
    if (is_recipe(o, "best") || is_recipe(o, "light")) push_opt(s, "--recipe", o->recipe);
    push_opt(s, "--iters", o->iters);
    push_opt(s, "--lr", o->lr);
    push_opt(s, "--minmax_lr", o->minmax_lr);
    if (in) push_opt(s, "--nsamples", o->nsamples);
    push_opt(s, "--batch_size", o->batch_size);
    push_opt(s, "--gradient_accumulate_steps", o->gas);
    push_opt(s, "--seed", o->seed);
    if (o->disable_opt_rtn == 1) push(s, "--disable_opt_rtn");
    if (o->disable_minmax_tuning) push(s, "--disable_minmax_tuning");
    if (o->not_use_best_mse) push(s, "--not_use_best_mse");
    if (o->enable_lfq) push(s, "--enable_lfq");
    if (o->disable_quanted_input) push(s, "--disable_quanted_input");
    if (o->disable_amp) push(s, "--disable_amp");
    if (o->static_kv_dtype && !p->gguf_scheme) push_opt(s, "--static_kv_dtype", o->static_kv_dtype);
    push_optional_tune_flags(s, o);
    push_opt(s, "-o", p->stream);
}

/* AutoRound's folder and file names: ar-pack --layout autoround under OUT. */
static int is_autoround_layout(const options *o) { return !strcmp(o->layout, "autoround"); }

static void build_pack(stage *s, const options *o, const pass *p)
{
    stage_init(s, "ar-pack", o);
    push_opt(s, "-i", p->stream);
    push_opt(s, "--format", p->formats);
    push_opt(s, "--max_shard_size", o->max_shard_size);
    push_opt(s, "-o", p->out);
    if (is_autoround_layout(o)) {
        push_opt(s, "--layout", "autoround");
        push_opt(s, "--layout_formats", p->run_formats);
        if (o->layout_scheme[0]) push_opt(s, "--layout_scheme", o->layout_scheme);
    }
}

static char *join_path(const char *dir, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0) cli_die("out of memory");
    return p;
}

/* A chain of stages run together: piped, or one after the other through files. */
typedef struct {
    stage st[MAX_STAGES];
    int n, piped;
} chain;

enum { MAX_PASSES = 8 };

typedef struct {
    chain ch[MAX_PASSES + 1];
    int n;
    pass ps[MAX_PASSES];       /* the stages' argv point into these */
    char *tmp_dir;             /* streams shared by several passes, removed at the end */
} plan;

/* A GGUF format gets a stream tuned for its own scheme unless the user's
 * scheme is that one: ar-pack writes k-quant files only from such streams. */
static const char *gguf_pass_scheme(const options *o, const char *fmt)
{
    if (strncmp(fmt, "gguf:", 5) || (o->scheme && !strcasecmp(o->scheme, fmt))) return NULL;
    char *s = strdup(fmt);
    if (!s) cli_die("out of memory");
    for (char *c = s; *c; c++) if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 32);
    return s;
}

/* Where one format lands among several: OUT/<format>, ':' as '-' (as ar-pack names them). */
static char *format_dir(const char *out, const char *fmt)
{
    char *p, *c;
    if (asprintf(&p, "%s/%s", out, fmt) < 0) cli_die("out of memory");
    for (c = p + strlen(out); *c; c++) if (*c == ':') *c = '-';
    return p;
}

static void add_format(pass *p, const char *fmt)
{
    size_t n = strlen(p->formats);
    if (n + strlen(fmt) + 2 > sizeof p->formats) cli_usage_error("--format: list too long");
    snprintf(p->formats + n, sizeof p->formats - n, "%s%s", n ? "," : "", fmt);
}

/* Split --format into passes: passes[0] serves every format the user's
 * scheme can, each other GGUF format gets its own. Returns the count. */
static int split_passes(const options *o, pass *ps)
{
    char list[512];
    int n = 1, nfmt = 0;
    memset(ps, 0, sizeof *ps * MAX_PASSES);
    snprintf(list, sizeof list, "%s", o->format);
    for (char *save, *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save), nfmt++) {
        const char *gs = gguf_pass_scheme(o, f);
        if (!gs) { add_format(&ps[0], f); continue; }
        if (n == MAX_PASSES) cli_usage_error("--format: at most %d GGUF formats", MAX_PASSES - 1);
        ps[n].gguf_scheme = gs;
        add_format(&ps[n++], f);
    }
    for (int i = 0; i < n; i++) {
        pass *p = &ps[i];
        p->run_formats = n > 1 || !ps[0].formats[0] ? o->format : NULL;
        if (nfmt == 1 || is_autoround_layout(o)) p->out = o->output_dir;
        else if (!strchr(p->formats, ',')) p->out = p->formats[0] ? format_dir(o->output_dir, p->formats) : NULL;
        else p->out = o->output_dir;  /* ar-pack writes OUT/<format> for a list */
    }
    if (!ps[0].formats[0]) { memmove(ps, ps + 1, sizeof *ps * (size_t)(n - 1)); n--; }
    return n;
}

/* The chains for these options. One pass: ar-calib | ar-tune | ar-pack.
 * Several: the calibration stream goes to a file (DIR/calib.ars with
 * --keep_streams, else a temporary folder) and each pass reads it. */
static void build_plan(plan *pl, const options *o)
{
    int calib = needs_calibration(o);
    if (calib && !o->dataset)
        cli_usage_error("--dataset FILE is required for SignRound and opt-RTN: calibration data is local .txt or "
                        ".jsonl files, mixed with AutoRound's 'a.jsonl:num=64,b.txt' syntax (AutoRound's default "
                        "NeelNanda/pile-10k is not downloaded); "
                        "plain RTN (--iters 0 --disable_opt_rtn) needs none");
    memset(pl, 0, sizeof *pl);
    pass *ps = pl->ps;
    int np = split_passes(o, ps);
    const char *dir = o->keep_streams;
    if (!dir && calib && np > 1) {
        if (asprintf(&pl->tmp_dir, "%s.streams.%ld", o->output_dir, (long)getpid()) < 0) cli_die("out of memory");
        dir = pl->tmp_dir;
    }
    for (int i = 0; o->avg_bits && i < np; i++)
        if (ps[i].gguf_scheme)
            cli_usage_error("--schemes with --format %s: a GGUF format beside others needs a pass of its own "
                            "scheme; write it in a run of its own (--format %s alone)", ps[i].formats, ps[i].formats);
    const char *calib_out = dir ? join_path(dir, "calib.ars") : "-";
    const char *tune_in = calib_out;
    chain *c = &pl->ch[0];
    if (calib && dir) {
        build_calib(&c->st[c->n++], o, calib_out);
        if (o->avg_bits) build_scheme(&c->st[c->n++], o, calib_out, tune_in = join_path(dir, "scheme.ars"));
        c = &pl->ch[++pl->n];
    }
    for (int i = 0; i < np; i++, c = &pl->ch[++pl->n]) {
        if (calib && !dir) build_calib(&c->st[c->n++], o, "-");
        if (calib && !dir && o->avg_bits) build_scheme(&c->st[c->n++], o, "-", "-");
        if (o->keep_streams) {
            char name[600];
            snprintf(name, sizeof name, "tune%s%s.ars", ps[i].gguf_scheme ? "-" : "",
                     ps[i].gguf_scheme ? strchr(ps[i].formats, ':') + 1 : "");
            ps[i].stream = join_path(dir, name);
        } else ps[i].stream = "-";
        build_tune(&c->st[c->n++], o, &ps[i], calib ? tune_in : NULL);
        build_pack(&c->st[c->n++], o, &ps[i]);
        c->piped = !o->keep_streams;
    }
}

/* ---- running ------------------------------------------------------------- */

/* An argument as the shell would need it quoted. */
static void print_quoted(FILE *f, const char *a)
{
    if (*a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:,=+@%") == strlen(a)) {
        fputs(a, f);
        return;
    }
    fputc('\'', f);
    for (; *a; a++) {
        if (*a == '\'') fputs("'\\''", f);
        else fputc(*a, f);
    }
    fputc('\'', f);
}

/* The plan as shell commands: pipelines, one after the other. */
static void print_plan(FILE *f, const plan *pl)
{
    for (int c = 0; c < pl->n; c++) {
        const chain *ch = &pl->ch[c];
        if (c) fputs(" &&\n", f);
        for (int i = 0; i < ch->n; i++) {
            if (i) fputs(ch->piped ? " |\n  " : " &&\n", f);
            for (int k = 0; k < ch->st[i].argc; k++) {
                if (k) fputc(' ', f);
                print_quoted(f, ch->st[i].argv[k]);
            }
        }
    }
    fputc('\n', f);
}

static pid_t spawn(stage *s, int in_fd, int out_fd)
{
    pid_t pid = fork();
    if (pid < 0) cli_die("fork: %s", strerror(errno));
    if (pid == 0) {
        if (in_fd >= 0) { dup2(in_fd, 0); close(in_fd); }
        if (out_fd >= 0) { dup2(out_fd, 1); close(out_fd); }
        execv(s->path, (char *const *)s->argv);
        fprintf(stderr, "auto-round: %s: cannot run: %s\n", s->path, strerror(errno));
        _exit(127);
    }
    return pid;
}

/* All stages at once, stdout of each into stdin of the next. */
static void run_piped(stage *st, int n)
{
    int prev = -1;
    for (int i = 0; i < n; i++) {
        int fd[2] = {-1, -1};
        if (i + 1 < n && pipe(fd)) cli_die("pipe: %s", strerror(errno));
        if (fd[0] >= 0) fcntl(fd[0], F_SETFD, FD_CLOEXEC);
        st[i].pid = spawn(&st[i], prev, fd[1]);
        if (prev >= 0) close(prev);
        if (fd[1] >= 0) close(fd[1]);
        prev = fd[0];
    }
    for (int i = 0; i < n; i++) waitpid(st[i].pid, &st[i].status, 0);
}

/* One stage after the other through files; stop at the first failure. */
static void run_sequential(stage *st, int n)
{
    for (int i = 0; i < n; i++) st[i].status = -1;
    for (int i = 0; i < n; i++) {
        st[i].pid = spawn(&st[i], -1, -1);
        waitpid(st[i].pid, &st[i].status, 0);
        if (!WIFEXITED(st[i].status) || WEXITSTATUS(st[i].status)) return;
    }
}

static int stage_ok(const stage *s) { return s->status != -1 && WIFEXITED(s->status) && !WEXITSTATUS(s->status); }

/* A stage killed by SIGPIPE only saw a later stage fail first. */
static int stage_broken_pipe(const stage *s)
{
    return s->status != -1 && WIFSIGNALED(s->status) && WTERMSIG(s->status) == SIGPIPE;
}

/* Report the stage that failed first (its own message is already on
 * stderr) and return the exit status: 2 when it was a usage error. */
static int report(const stage *st, int n)
{
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            const stage *s = &st[i];
            if (s->status == -1 || stage_ok(s) || (pass == 0 && stage_broken_pipe(s))) continue;
            if (WIFSIGNALED(s->status)) {
                fprintf(stderr, "auto-round: %s killed by signal %d\n", s->tool, WTERMSIG(s->status));
                return CLI_EXIT_FAIL;
            }
            fprintf(stderr, "auto-round: %s failed (exit status %d)\n", s->tool, WEXITSTATUS(s->status));
            return WEXITSTATUS(s->status) == CLI_EXIT_USAGE ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
        }
    return CLI_EXIT_OK;
}

/* mkdir -p: AutoRound creates --output_dir with its parents, ar-pack only
 * the last level. */
static void make_dirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) cli_die("%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) cli_die("%s: cannot create: %s", buf, strerror(errno));
}

/* The folder that will hold --output_dir. */
static void make_parent_dirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    while (slash && slash > buf && slash[1] == 0) { *slash = 0; slash = strrchr(buf, '/'); }
    if (slash && slash > buf) { *slash = 0; make_dirs(buf); }
}

/* Remove the temporary stream folder of a multi-pass run. */
static void remove_tmp_streams(const plan *pl)
{
    if (!pl->tmp_dir) return;
    for (int k = 0; k < 2; k++) {
        char *f = join_path(pl->tmp_dir, k ? "scheme.ars" : "calib.ars");
        unlink(f);
        free(f);
    }
    rmdir(pl->tmp_dir);
}

/* Run the chains in order; stop at the first that fails. */
static int run_plan(plan *pl)
{
    for (int c = 0; c < pl->n; c++) {
        chain *ch = &pl->ch[c];
        if (ch->piped) run_piped(ch->st, ch->n);
        else run_sequential(ch->st, ch->n);
        int rc = report(ch->st, ch->n);
        if (rc) return rc;
    }
    return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
    cli_init("auto-round");
    options o = parse_args(argc, argv);
    apply_recipe(&o);
    scheme_from_gguf_format(&o);
    find_tool_dir();
    plan pl;
    build_plan(&pl, &o);
    if (o.dry_run) { print_plan(stdout, &pl); return CLI_EXIT_OK; }
    if (cli_progress >= 2) print_plan(stderr, &pl);
    if (o.keep_streams) make_dirs(o.keep_streams);
    if (pl.tmp_dir) make_dirs(pl.tmp_dir);
    if (strchr(o.format, ',') && !is_autoround_layout(&o)) make_dirs(o.output_dir);
    else make_parent_dirs(o.output_dir);
    double t0 = cli_now();
    int rc = run_plan(&pl);
    remove_tmp_streams(&pl);
    if (rc == CLI_EXIT_OK && cli_progress)
        fprintf(stderr, "auto-round: wrote %s in %.1fs\n", o.output_dir, cli_now() - t0);
    return rc;
}
