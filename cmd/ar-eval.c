/* ar-eval — perplexity, KL divergence against a base model, and greedy
 * generation for a Hugging Face model directory.
 *
 * Perplexity protocol (the one the reference numbers use): tokenize the whole
 * file as the tokenizer does by default (BOS only if its post-processor adds
 * one), cut non-overlapping windows of seqlen tokens from token 0, keep the
 * first N, score positions 1..seqlen-1 of each window given the earlier tokens
 * of the same window; ppl = exp(mean NLL), accumulated in double. */
#include "act_config.h"
#include "kv_config.h"
#include "block_desc.h"
#include "cli.h"
#include "device.h"
#include "model_cuda.h"
#include "error.h"
#include "model.h"
#include "model_open.h"
#include "runtime.h"
#include "tasks.h"
#include "tokenizer.h"
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-eval --model DIR --text FILE [--seqlen 512] [--windows N] [--batch B]\n"
    "               [--kl-base DIR] [--json] [--stream] [--quiet|--verbose]\n"
    "       ar-eval --model DIR --prompt TEXT [-n 64] [--json]\n"
    "       ar-eval --model DIR --tasks T1,T2 --task_data DIR [--num_fewshot K] [--limit N]\n"
    "               [--batch B] [--samples FILE] [--json]\n"
    "\n"
    "Perplexity of FILE: the whole file is tokenized (BOS only if the tokenizer's\n"
    "post-processor adds one), cut into non-overlapping windows of --seqlen tokens\n"
    "from token 0; the first --windows are scored (all by default), each position\n"
    "1..seqlen-1 given the earlier tokens of its window. ppl = exp(mean NLL).\n"
    "  --kl-base DIR  also the mean KL(base || model) over the scored positions and\n"
    "                 the top-1 agreement with the base model (same tokenizer)\n"
    "  --batch B      windows per forward (default 1)\n"
    "  --stream       widen one block's weights at a time instead of caching them all\n"
    "  --device D     cpu, cuda or cuda:N (default: cuda when a GPU is present);\n"
    "                 the GPU scores perplexity (f32); KL and generation use the CPU\n"
    "  --threads N    OpenMP and OpenBLAS threads (default: all cores; 1 for models\n"
    "                 with hidden < 256, whose layers are too small to split)\n"
    "  --act_quant Q  activation fake-quantization of W4A4/W8A8 models: auto (default:\n"
    "                 as the folder's quantization_config says), none, or a preset\n"
    "                 (MXFP4, NVFP4, INT8, ...) applied to the layers it quantizes,\n"
    "                 for fake folders; runs on the CPU\n"
    "  --kv_quant Q   static FP8 KV cache: auto (default: K after RoPE and V fake-\n"
    "                 quantized with the folder's k_scale/v_scale when its config has\n"
    "                 kv_cache_scheme or static_kv_dtype fp8; runs on the CPU) or none\n"
    "  --json         one JSON object on stdout\n"
    "Generation: greedy (argmax) continuation of --prompt for -n tokens, stopping\n"
    "at the model's EOS; prints the text (with --json also the ids).\n"
    "  --verbose      also peak resident memory on stderr\n"
    "Tasks: lm-eval-harness's lambada_openai, piqa, hellaswag, arc_easy, arc_challenge,\n"
    "winogrande and mmlu, scored as its Hugging Face model scores them, from local\n"
    "rows DIR/<task>.jsonl (the Hugging Face dataset's fields; few-shot rows from\n"
    "DIR/<task>.train.jsonl, mmlu's from DIR/mmlu.dev.jsonl). --batch: requests per\n"
    "forward (default 16 here). Prints lm-eval's results object with --json.\n"
    "  --num_fewshot K   examples before each document (default 0), drawn as lm-eval\n"
    "                    draws them with its seed 1234\n"
    "  --limit N         only the first N documents of each task\n"
    "  --max_length L    tokens kept from the left (default: max_position_embeddings)\n"
    "  --bootstrap_iters N  resamples for lambada's perplexity stderr (default 100000)\n"
    "  --samples FILE    one JSON line per document: log-likelihoods and metrics\n";

typedef struct {
    const char *model, *text, *kl_base, *prompt, *device, *act_quant;
    long seqlen, windows, batch, n_new, threads;
    int json, stream;
    int act_linears;        /* linears whose input is fake-quantized (set in main) */
    const char *kv_quant;   /* --kv_quant: "auto" or "none" */
    int kv_layers;          /* layers whose K/V are FP8 fake-quantized (set in main) */
    const char *tasks, *task_data, *samples;   /* --tasks mode */
    long num_fewshot, limit, max_length, bootstrap_iters;
    int batch_given;
} opts;

/* The --tasks flags; 1 when argv[*i] was one. */
static int task_flag(int argc, char **argv, int *i, opts *o)
{
    const char *v;
    if ((v = cli_value(argc, argv, i, "--tasks"))) o->tasks = v;
    else if ((v = cli_value(argc, argv, i, "--task_data"))) o->task_data = v;
    else if ((v = cli_value(argc, argv, i, "--samples"))) o->samples = v;
    else if ((v = cli_value(argc, argv, i, "--num_fewshot"))) o->num_fewshot = cli_long("--num_fewshot", v, 0, 1000);
    else if ((v = cli_value(argc, argv, i, "--limit"))) o->limit = cli_long("--limit", v, 1, INT_MAX);
    else if ((v = cli_value(argc, argv, i, "--max_length"))) o->max_length = cli_long("--max_length", v, 2, 1 << 20);
    else if ((v = cli_value(argc, argv, i, "--bootstrap_iters")))
        o->bootstrap_iters = cli_long("--bootstrap_iters", v, 0, 100000000);
    else return 0;
    return 1;
}

static opts parse_args(int argc, char **argv)
{
    opts o = {.seqlen = 512, .windows = -1, .batch = 1, .n_new = 64, .act_quant = "auto", .bootstrap_iters = 100000};
    const char *v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage, stdout); exit(CLI_EXIT_OK); }
        else if (cli_common_flag(a)) continue;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--stream")) o.stream = 1;
        else if ((v = cli_value(argc, argv, &i, "--model"))) o.model = v;
        else if ((v = cli_value(argc, argv, &i, "--text"))) o.text = v;
        else if ((v = cli_value(argc, argv, &i, "--kl-base"))) o.kl_base = v;
        else if ((v = cli_value(argc, argv, &i, "--prompt"))) o.prompt = v;
        else if ((v = cli_value(argc, argv, &i, "--seqlen"))) o.seqlen = cli_long("--seqlen", v, 2, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--windows"))) o.windows = cli_long("--windows", v, 1, INT_MAX);
        else if ((v = cli_value(argc, argv, &i, "--batch"))) o.batch = cli_long("--batch", v, 1, 4096), o.batch_given = 1;
        else if ((v = cli_value(argc, argv, &i, "-n"))) o.n_new = cli_long("-n", v, 0, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--device"))) o.device = v;
        else if ((v = cli_value(argc, argv, &i, "--threads"))) o.threads = cli_long("--threads", v, 1, 4096);
        else if ((v = cli_value(argc, argv, &i, "--act_quant"))) o.act_quant = v;
        else if ((v = cli_value(argc, argv, &i, "--kv_quant"))) {
            if (strcmp(v, "auto") && strcmp(v, "none")) cli_usage_error("--kv_quant: '%s' is not auto or none", v);
            o.kv_quant = v;
        }
        else if (task_flag(argc, argv, &i, &o)) continue;
        else cli_usage_error("unknown argument '%s'", a);
    }
    if (!o.model) cli_usage_error("--model DIR is required");
    if (!!o.text + !!o.prompt + !!o.tasks != 1) cli_usage_error("give exactly one of --text FILE, --prompt TEXT or --tasks LIST");
    if (o.tasks && !o.task_data) cli_usage_error("--tasks needs --task_data DIR");
    if (o.tasks && o.kl_base) cli_usage_error("--kl-base does not apply to --tasks");
    if (o.kl_base && !o.text) cli_usage_error("--kl-base needs --text");
    return o;
}

/* Weights of the blocks and the embedding / head, in floats: decides whether
 * caching every widened weight is affordable. */
static double param_count(const ar_config *c)
{
    double blocks = 0;
    for (int l = 0; l < c->n_layers; l++) {
        ar_block_desc bd;
        if (ar_block_desc_init_layer(&bd, c, l)) cli_die_lib();
        for (int i = 0; i < bd.nlinear; i++) blocks += (double)bd.lin[i].n_out * bd.lin[i].k_in;
        ar_block_desc_free(&bd);
    }
    return blocks + (c->tie_embeddings ? 1.0 : 2.0) * c->vocab * c->hidden;
}

/* Open a plain or quantized HF folder or a GGUF file; cache widened weights
 * unless asked not to or they would exceed 4 GB. */
static ar_model *open_model(const char *path, int stream)
{
    ar_config c;
    ar_tensor_source src;
    if (ar_model_source_any(path, &c, &src)) cli_die_lib();
    int flags = !stream && param_count(&c) * 4 < 4e9 ? AR_MODEL_CACHE : 0;
    ar_model *m = ar_model_open_source(&c, &src, flags);
    if (!m) { ar_error_prefix(path); cli_die_lib(); }
    return m;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) cli_die("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf || ferror(f)) cli_die("%s: read error", path);
    fclose(f);
    *len = n;
    return buf;
}

/* Tokenize the whole file with the tokenizer's defaults (add_special). */
static int32_t *tokenize_file(ar_tokenizer *tok, const char *path, size_t *n)
{
    size_t len;
    char *text = read_file(path, &len);
    int32_t *ids;
    if (ar_tokenizer_encode(tok, text, len, 1, &ids, n)) {
        ar_error_prefix(path);
        cli_die_lib();
    }
    free(text);
    return ids;
}

/* ---- perplexity and KL -------------------------------------------------- */

typedef struct {
    double nll_sum, kl_sum;
    long scored, top1_agree;
} scores;

/* KL(base || model) and top-1 agreement over rows 0..T-2 of one window,
 * both log-softmaxed [T, V]. */
static void kl_window(const float *lb, const float *lm, int T, int V, scores *s)
{
    double kl = 0;
    long agree = 0;
#pragma omp parallel for reduction(+ : kl, agree) schedule(static)
    for (int t = 0; t < T - 1; t++) {
        const float *b = lb + (size_t)t * V, *m = lm + (size_t)t * V;
        int ab = 0, am = 0;
        double k = 0;
        for (int v = 0; v < V; v++) {
            k += exp((double)b[v]) * ((double)b[v] - m[v]);
            if (b[v] > b[ab]) ab = v;
            if (m[v] > m[am]) am = v;
        }
        kl += k;
        agree += ab == am;
    }
    s->kl_sum += kl;
    s->top1_agree += agree;
}

/* One window scored through full logits of model and base (KL mode). */
static void score_window_kl(ar_model *m, ar_model *base, const int *ids, int T, float *lm, float *lb, scores *s)
{
    int V = ar_model_config(m)->vocab;
    if (ar_model_forward(m, ids, 1, T, lm) || ar_model_forward(base, ids, 1, T, lb)) cli_die_lib();
    ar_log_softmax_rows(lm, T, V);
    ar_log_softmax_rows(lb, T, V);
    for (int t = 0; t < T - 1; t++) s->nll_sum -= lm[(size_t)t * V + ids[t + 1]];
    kl_window(lb, lm, T, V, s);
}

/* Matmul FLOPs of one window of T tokens: the block's linears and lm_head
 * (2 per weight per token) plus QK^T and PV over the full T x T square the
 * attention computes. Lets the benchmark compare the forward with sgemm. */
static double window_flops(const ar_config *c, int T)
{
    double per_token = 0;
    for (int l = 0; l < c->n_layers; l++) { /* MoE: each token runs top-k of the E experts */
        ar_block_desc bd;
        if (ar_block_desc_init_layer(&bd, c, l)) cli_die_lib();
        double routed = c->moe.n_experts && ar_config_layer_moe(c, l) ? (double)c->moe.top_k / c->moe.n_experts : 1;
        for (int i = 0; i < bd.nlinear; i++)
            per_token += 2.0 * bd.lin[i].n_out * bd.lin[i].k_in * (bd.lin[i].input >= 4 && i >= 4 ? routed : 1);
        ar_block_desc_free(&bd);
    }
    per_token += 2.0 * c->vocab * c->hidden + 4.0 * T * c->n_heads * c->head_dim * c->n_layers;
    return per_token * T;
}

static void print_ppl(const opts *o, const ar_config *c, long tokens, long windows, const scores *s, double secs)
{
    double ppl = exp(s->nll_sum / (double)s->scored);
    double tps = windows * o->seqlen / secs;
    double gflops = window_flops(c, (int)o->seqlen) * windows * (o->kl_base ? 2 : 1) / secs * 1e-9;
    if (o->json) {
        printf("{\"ppl\": %.6f, \"tokens\": %ld, \"windows\": %ld, \"seqlen\": %ld, \"seconds\": %.3f, "
               "\"scored\": %ld, \"tokens_per_second\": %.1f, \"gflops_per_second\": %.2f",
               ppl, tokens, windows, o->seqlen, secs, s->scored, tps, gflops);
        if (o->kl_base) printf(", \"kl\": %.6g, \"top1\": %.4f", s->kl_sum / s->scored, 100.0 * s->top1_agree / s->scored);
        printf(", \"act_quant_linears\": %d", o->act_linears);
        if (o->kv_layers) printf(", \"kv_fp8_layers\": %d", o->kv_layers);
        printf("}\n");
        return;
    }
    printf("ppl %.4f  tokens %ld  windows %ld  seqlen %ld  seconds %.2f  tokens/s %.0f\n", ppl, tokens, windows,
           o->seqlen, secs, tps);
    if (o->kl_base)
        printf("kl %.6g  top1 %.2f%%  (base %s)\n", s->kl_sum / s->scored, 100.0 * s->top1_agree / s->scored, o->kl_base);
}

static void run_ppl(const opts *o, ar_tokenizer *tok, ar_model *m, ar_model *base, ar_model_gpu *gpu)
{
    size_t n;
    int32_t *ids = tokenize_file(tok, o->text, &n);
    long avail = (long)(n / (size_t)o->seqlen);
    long nwin = o->windows < 0 || o->windows > avail ? avail : o->windows;
    if (nwin < 1) cli_die("%s: %zu tokens, fewer than one window of %ld", o->text, n, o->seqlen);
    if (o->windows > avail && cli_progress)
        fprintf(stderr, "%s: %s has only %ld windows of %ld tokens\n", cli_tool, o->text, avail, o->seqlen);
    const int T = (int)o->seqlen, V = ar_model_config(m)->vocab;
    int B = base ? 1 : (int)(o->batch < nwin ? o->batch : nwin);
    double *nll = malloc(sizeof(double) * (size_t)B * (T - 1));
    float *lm = base ? malloc(sizeof(float) * (size_t)T * V) : NULL, *lb = base ? malloc(sizeof(float) * (size_t)T * V) : NULL;
    if (!nll || (base && (!lm || !lb))) cli_die("out of memory");
    scores s = {0};
    double t0 = cli_now();
    for (long w = 0; w < nwin; w += B) {
        int nb = (int)(nwin - w < B ? nwin - w : B);
        const int *win = ids + (size_t)w * T;
        if (base) score_window_kl(m, base, win, T, lm, lb, &s);
        else if (gpu ? ar_model_gpu_nll(gpu, win, nb, T, nll) : ar_model_nll(m, win, nb, T, nll)) cli_die_lib();
        else for (long k = 0; k < (long)nb * (T - 1); k++) s.nll_sum += nll[k];
        s.scored += (long)nb * (T - 1);
        char extra[64];
        snprintf(extra, sizeof extra, "ppl %.4f", exp(s.nll_sum / s.scored));
        cli_progress_line("window", (int)(w + nb), (int)nwin, t0, extra);
    }
    print_ppl(o, ar_model_config(m), (long)n, nwin, &s, cli_now() - t0);
    free(nll); free(lm); free(lb); free(ids);
}

/* ---- greedy generation --------------------------------------------------- */

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

/* Recomputes the whole sequence each step (no KV cache): fine for the small
 * models this is used on. Only the last row goes through lm_head. */
static void run_generate(const opts *o, ar_tokenizer *tok, ar_model *m)
{
    const ar_config *c = ar_model_config(m);
    int32_t *ids0;
    size_t n0;
    if (ar_tokenizer_encode(tok, o->prompt, strlen(o->prompt), 1, &ids0, &n0)) cli_die_lib();
    if (n0 == 0) cli_die("--prompt: the prompt gives no tokens");
    size_t cap = n0 + (size_t)o->n_new;
    int *ids = malloc(sizeof(int) * cap);
    float *h = malloc(sizeof(float) * cap * c->hidden), *logits = malloc(sizeof(float) * c->vocab);
    if (!ids || !h || !logits) cli_die("out of memory");
    for (size_t i = 0; i < n0; i++) ids[i] = ids0[i];
    free(ids0);
    size_t n = n0;
    double t0 = cli_now();
    while (n < cap) {
        if (ar_model_hidden(m, ids, 1, (int)n, h) || ar_model_logits(m, h + (n - 1) * c->hidden, 1, logits)) cli_die_lib();
        ids[n++] = argmax(logits, c->vocab);
        cli_progress_line("token", (int)(n - n0), (int)(cap - n0), t0, NULL);
        if (ids[n - 1] == c->eos_id) break;
    }
    int32_t *out = malloc(sizeof(int32_t) * n);
    for (size_t i = 0; i < n; i++) out[i] = ids[i];
    char *text = ar_tokenizer_decode(tok, out, n, 1);
    if (!text) cli_die_lib();
    if (o->json) {
        printf("{\"text\": ");
        fputc('"', stdout);
        for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
            if (*p == '"' || *p == '\\') printf("\\%c", *p);
            else if (*p < 0x20) printf("\\u%04x", *p);
            else fputc(*p, stdout);
        }
        printf("\", \"ids\": [");
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", out[i]);
        printf("], \"prompt_tokens\": %zu, \"seconds\": %.3f}\n", n0, cli_now() - t0);
    } else {
        printf("%s\n", text);
    }
    free(text); free(out); free(ids); free(h); free(logits);
}

/* ---- lm-eval tasks ---------------------------------------------------------- */

static void task_progress(void *arg, const char *task, int done, int total)
{
    cli_progress_line(task, done, total, *(double *)arg, NULL);
}

static void run_tasks(const opts *o, ar_tokenizer *tok, ar_model *m, ar_model_gpu *gpu)
{
    ar_tasks_opts t;
    ar_tasks_opts_default(&t);
    t.tasks = o->tasks;
    t.data_dir = o->task_data;
    t.num_fewshot = (int)o->num_fewshot;
    t.limit = o->limit;
    t.max_length = (int)o->max_length;
    t.bootstrap_iters = o->bootstrap_iters;
    if (o->batch_given) t.batch = (int)o->batch;
    double t0 = cli_now();
    t.progress = task_progress;
    t.progress_arg = &t0;
    FILE *samples = o->samples ? cli_out_open(o->samples, 0) : NULL;
    t.samples = samples;
    char *json = ar_tasks_run(&t, m, gpu, tok);
    if (!json) cli_die_lib();
    if (o->json) printf("%s\n", json);
    else ar_tasks_print_table(stdout, json);
    if (samples) cli_out_commit(samples);
    free(json);
}

static void report_rss(void)
{
    struct rusage ru;
    if (cli_progress >= 2 && !getrusage(RUSAGE_SELF, &ru))
        fprintf(stderr, "%s: peak RSS %.1f MiB\n", cli_tool, ru.ru_maxrss / 1024.0);
}

/* Activation quantizers for m (--act_quant): from the folder's config
 * (auto), none, or a preset's; returns how many linears got one. */
static int apply_act_quant(const opts *o, ar_model *m)
{
    if (!strcasecmp(o->act_quant, "none")) return 0;
    int n;
    if (!strcasecmp(o->act_quant, "auto")) {
        n = ar_model_path_kind(o->model) == AR_PATH_HF_QUANTIZED ? ar_model_act_quant_from_folder(m, o->model) : 0;
    } else {
        ar_scheme s;
        if (ar_scheme_preset(&s, o->act_quant)) cli_usage_error("--act_quant: %s", ar_last_error());
        n = ar_model_act_quant_from_scheme(m, &s);
    }
    if (n < 0) cli_die_lib();
    if (n > 0 && cli_progress)
        fprintf(stderr, "%s: activations fake-quantized at the input of %d linears (--act_quant %s)\n", cli_tool, n,
                o->act_quant);
    return n;
}

/* Static FP8 KV-cache scales from the folder's config (--kv_quant auto);
 * returns how many layers got them. */
static int apply_kv_quant(const opts *o, ar_model *m)
{
    if (o->kv_quant && !strcmp(o->kv_quant, "none")) return 0;
    int n = ar_model_path_kind(o->model) == AR_PATH_HF_QUANTIZED ? ar_model_kv_quant_from_folder(m, o->model) : 0;
    if (n < 0) cli_die_lib();
    if (n > 0 && cli_progress)
        fprintf(stderr, "%s: K and V fake-quantized to FP8 E4M3 with the static scales of %d layers\n", cli_tool, n);
    return n;
}

/* The GPU copy of m when --device (or detection) picks a GPU, else NULL. */
static ar_model_gpu *open_gpu(const char *device, ar_model *m)
{
    int dev;
    if (ar_device_parse(device, &dev)) cli_usage_error("--device: %s", ar_last_error());
    if (dev == AR_DEVICE_CPU) return NULL;
    /* the GPU forward is the llama family's: a detected GPU leaves other families on the CPU */
    if ((!device || !strcmp(device, "auto")) && strcmp(ar_model_block_desc(m)->family, "llama")) return NULL;
    if (ar_device_init(dev)) cli_die_lib();
    if (cli_progress >= 2) fprintf(stderr, "%s: scoring on %s\n", cli_tool, ar_device_describe(dev));
    ar_model_gpu *g = ar_model_gpu_open(m);
    if (!g) cli_die_lib();
    return g;
}

int main(int argc, char **argv)
{
    cli_init("ar-eval");
    opts o = parse_args(argc, argv);
    ar_tokenizer *tok = ar_tokenizer_open_any(o.model);
    if (!tok) cli_die_lib();
    ar_model *m = open_model(o.model, o.stream);
    ar_set_threads(o.threads, ar_model_config(m));
    if (ar_tokenizer_vocab_size(tok) > ar_model_config(m)->vocab)
        cli_die("%s: tokenizer has %d ids but the model's vocab_size is %d", o.model, ar_tokenizer_vocab_size(tok),
                ar_model_config(m)->vocab);
    ar_model *base = o.kl_base ? open_model(o.kl_base, o.stream) : NULL;
    if (base && ar_model_config(base)->vocab != ar_model_config(m)->vocab)
        cli_die("%s: vocab_size %d differs from the model's %d", o.kl_base, ar_model_config(base)->vocab,
                ar_model_config(m)->vocab);
    o.act_linears = apply_act_quant(&o, m);
    o.kv_layers = apply_kv_quant(&o, m);
    /* the GPU forward has no activation or KV quantizers: those models score on the CPU */
    ar_model_gpu *gpu = (o.text || o.tasks) && !base && !o.act_linears && !o.kv_layers ? open_gpu(o.device, m) : NULL;
    if (o.tasks) run_tasks(&o, tok, m, gpu);
    else if (o.text) run_ppl(&o, tok, m, base, gpu);
    else run_generate(&o, tok, m);
    report_rss();
    cli_out_commit(stdout);
    ar_model_gpu_close(gpu);
    ar_model_close(base);
    ar_model_close(m);
    ar_tokenizer_free(tok);
    return 0;
}
