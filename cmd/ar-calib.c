/* ar-calib — tokenize a local dataset, run the embeddings, and write the
 * calibration stream: a META record, input_ids [n, L] i32 and the block-0
 * inputs hidden [n, L, C] (bf16 by default). */
#include "calib.h"
#include "chat_template.h"
#include "cli.h"
#include "device.h"
#include "error.h"
#include "model.h"
#include "stream.h"
#include "tokenizer.h"
#include "tune.h"
#include <cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-calib --model DIR --dataset SPEC [--nsamples 128] [--seqlen 2048] [--seed 42]\n"
    "                [--apply_chat_template] [--chat_date YYYY-MM-DD[THH:MM[:SS]]]\n"
    "                [--dump-text|--dump-ids] [--dtype bf16|f32]\n"
    "                [--device cpu|cuda[:N]]\n"
    "                [--upto-block A [--batch_size 8] [--threads N] [--amp|--disable_amp]]\n"
    "                [-o FILE] [--quiet|--verbose|--progress]\n"
    "SPEC is FILE or AutoRound's FILE[:OPT...][,FILE[:OPT...]...] with OPT num=N, concat,\n"
    "apply_chat_template, system_prompt=TEXT. FILE is a local .txt (one running text: random windows)\n"
    "or .jsonl (a \"text\" string or a \"messages\" conversation per line: documents, as AutoRound\n"
    "samples them), optionally .zst-compressed, or - for standard input.\n"
    "--apply_chat_template renders every .jsonl row with DIR's chat template (tokenizer_config.json).\n"
    "--chat_date pins the clock of templates that print today's date (Llama 3.2's strftime_now);\n"
    "without it they get the local time, and the stream's META records the date used.\n"
    "--dump-text writes the rows' texts (chat-rendered where asked) as JSONL {\"text\": ...} in file\n"
    "order instead of the stream, without loading the model; --dump-ids writes the samples' token ids,\n"
    "one JSON list per line, instead of the stream, without loading the model's weights.\n"
    "Writes the calibration stream (ar-stream(5)) to standard output or -o FILE.\n"
    "--device is accepted for symmetry with ar-tune/ar-eval and checked; the embedding lookup it\n"
    "runs is a copy, so it always runs on the CPU.\n"
    "--upto-block A: hidden holds the FP inputs of decoder block A instead of block 0's (the FP model's\n"
    "blocks 0..A-1 run over the embeddings, on --device), for ar-tune --blocks A-B; --batch_size, --threads\n"
    "and --amp/--disable_amp must be the tuning run's (ar-tune checks them; docs/parallel.md).\n";

typedef struct {
    const char *model, *dataset, *out;
    int nsamples, seqlen, chat, dump_text, dump_ids;
    uint64_t seed;
    ar_dtype dtype;
    int upto;               /* --upto-block: the block whose FP inputs hidden holds (0: the embeddings) */
    ar_tune_opts fp;        /* its forwards' settings: batch_size, threads, amp, device */
} calib_args;

static calib_args parse_args(int argc, char **argv)
{
    calib_args a = {.nsamples = 128, .seqlen = 2048, .seed = 42, .dtype = AR_BF16};
    ar_tune_defaults(&a.fp);
    int fp_flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_io_flag(argc, argv, &i, usage, "--output", NULL, &a.out, &a.model)) continue;
        else if ((v = cli_value(argc, argv, &i, "--dataset"))) a.dataset = v;
        else if (!strcmp(argv[i], "--apply_chat_template")) a.chat = 1;
        else if ((v = cli_value(argc, argv, &i, "--chat_date"))) {
            if (ar_chat_template_set_clock(v)) cli_usage_error("--chat_date: %s", ar_last_error());
        }
        else if (!strcmp(argv[i], "--dump-text")) a.dump_text = 1;
        else if (!strcmp(argv[i], "--dump-ids")) a.dump_ids = 1;
        else if ((v = cli_value(argc, argv, &i, "--nsamples"))) a.nsamples = (int)cli_long("--nsamples", v, 1, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--seqlen"))) a.seqlen = (int)cli_long("--seqlen", v, 2, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--seed"))) a.seed = (uint64_t)cli_long("--seed", v, 0, LONG_MAX);
        else if ((v = cli_value(argc, argv, &i, "--device"))) {
            int dev;
            if (ar_device_parse(v, &dev)) cli_usage_error("--device: %s", ar_last_error());
            if (dev != AR_DEVICE_CPU && ar_device_cuda_count() <= dev)
                cli_die("--device %s: no such CUDA device (%d found)", v, ar_device_cuda_count());
            a.fp.device = dev;
        } else if ((v = cli_value(argc, argv, &i, "--upto-block"))) a.upto = (int)cli_long("--upto-block", v, 0, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--batch_size")))
            a.fp.batch_size = (int)cli_long("--batch_size", v, 1, 1 << 16), fp_flags++;
        else if ((v = cli_value(argc, argv, &i, "--threads"))) a.fp.threads = cli_long("--threads", v, 1, 4096), fp_flags++;
        else if (!strcmp(argv[i], "--amp")) a.fp.amp = 1, fp_flags++;
        else if (!strcmp(argv[i], "--disable_amp")) a.fp.amp = 0, fp_flags++;
        else if ((v = cli_value(argc, argv, &i, "--dtype"))) {
            if (!strcmp(v, "bf16")) a.dtype = AR_BF16;
            else if (!strcmp(v, "f32")) a.dtype = AR_F32;
            else cli_usage_error("--dtype: '%s' is not bf16 or f32", v);
        } else cli_usage_error("unknown argument '%s'", argv[i]);
    }
    if (!a.model) cli_usage_error("--model DIR is required");
    if (!a.dataset) cli_usage_error("--dataset FILE is required");
    if (fp_flags && !a.upto) cli_usage_error("--batch_size, --threads and --amp/--disable_amp are --upto-block's");
    if (a.upto && a.dtype != AR_BF16) cli_usage_error("--upto-block writes the bf16 activations ar-tune carries, not --dtype f32");
    return a;
}

/* Datasets are local files only: a missing path that looks like a hub name
 * gets a message saying what is accepted. */
static void check_dataset_path(const char *path)
{
    struct stat st;
    if (!strcmp(path, "-") || stat(path, &st) == 0) return;
    cli_die("%s: no such file (datasets are local files: .txt running text, .jsonl with a \"text\" field per "
            "line, either optionally .zst; network datasets such as NeelNanda/pile-10k are not fetched)", path);
}

/* The pad token's name in a tokenizer file's "pad_token" (a string, or an
 * object with "content"); NULL when the file or the entry is absent or null. */
static char *pad_token_name(const char *model, const char *file)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", model, file);
    if (access(p, F_OK)) return NULL;
    size_t n;
    char *txt = ar_read_text_file(p, &n);
    if (!txt) cli_die_lib();
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j) cli_die("%s: not valid JSON", p);
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(j, "pad_token");
    if (cJSON_IsObject(pad)) pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
    char *name = cJSON_IsString(pad) ? strdup(pad->valuestring) : NULL;
    cJSON_Delete(j);
    return name;
}

/* The tokenizer's pad id, as Hugging Face's tokenizer.pad_token_id: the
 * pad_token of tokenizer_config.json, else of special_tokens_map.json, looked
 * up in the vocabulary; -1 when none is named (config.json's pad_token_id is
 * the model's, which the tokenizer, and so AutoRound's loss mask, ignores). */
static int32_t pad_token_id(const char *model, const ar_tokenizer *tok)
{
    char *name = pad_token_name(model, "tokenizer_config.json");
    if (!name) name = pad_token_name(model, "special_tokens_map.json");
    if (!name) return -1;
    int32_t id = ar_tokenizer_id(tok, name);
    if (id < 0) cli_die("%s: pad_token '%s' is not in the tokenizer's vocabulary", model, name);
    free(name);
    return id;
}

/* The dataset as META records it: each file's real path with its options
 * (one plain file: just its path, as before). */
static char *dataset_desc(const ar_calib_spec *sp)
{
    size_t cap = 256, n = 0;
    char *d = malloc(cap);
    if (!d) cli_die("out of memory");
    d[0] = 0;
    for (int i = 0; i < sp->n; i++) {
        const ar_calib_source *src = &sp->src[i];
        char dpath[PATH_MAX], opts[64];
        if (!strcmp(src->path, "-") || !realpath(src->path, dpath)) snprintf(dpath, sizeof dpath, "%s", src->path);
        snprintf(opts, sizeof opts, "%s%.0d%s%s", src->num > 0 ? ":num=" : "", src->num > 0 ? src->num : 0,
                 src->concat ? ":concat" : "", src->chat && !src->system_prompt ? ":apply_chat_template" : "");
        const char *sys = src->system_prompt ? src->system_prompt : NULL;
        size_t need = n + strlen(dpath) + strlen(opts) + (sys ? strlen(sys) + 16 : 0) + 2;
        if (need > cap) {
            char *nd = realloc(d, cap = need * 2);
            if (!nd) cli_die("out of memory");
            d = nd;
        }
        n += (size_t)sprintf(d + n, "%s%s%s%s%s", i ? "," : "", dpath, opts, sys ? ":system_prompt=" : "", sys ? sys : "");
    }
    return d;
}

static char *meta_json(const calib_args *a, const ar_calib_spec *sp, const ar_calib_samples *s, const ar_config *c,
                       const char *digest, int32_t pad_id, const ar_calib_data *fp)
{
    char apath[PATH_MAX];
    if (!realpath(a->model, apath)) snprintf(apath, sizeof apath, "%s", a->model);
    char *dpath = dataset_desc(sp);
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "ar", "calib");
    cJSON_AddNumberToObject(m, "version", 1);
    cJSON_AddStringToObject(m, "model", apath);
    cJSON_AddStringToObject(m, "config_fnv1a64", digest);
    cJSON_AddStringToObject(m, "dataset", dpath);
    free(dpath);
    cJSON_AddStringToObject(m, "sampling", s->mode == AR_CALIB_WINDOWS     ? "windows"
                                           : s->mode == AR_CALIB_DOCUMENTS ? "documents"
                                                                           : "mixed");
    cJSON_AddNumberToObject(m, "nsamples", s->n);
    cJSON_AddNumberToObject(m, "seqlen", s->seqlen);
    cJSON_AddNumberToObject(m, "seed", (double)a->seed);
    cJSON_AddNumberToObject(m, "hidden", c->hidden);
    cJSON_AddStringToObject(m, "dtype", ar_dtype_name(a->dtype));
    if (pad_id >= 0) cJSON_AddNumberToObject(m, "pad_token_id", pad_id); /* ar-tune's loss mask */
    else cJSON_AddNullToObject(m, "pad_token_id");
    /* the instant the chat template's strftime_now formatted (its rows' date) */
    const char *when = ar_chat_template_clock_used();
    if (when) cJSON_AddStringToObject(m, "chat_date", when);
    if (fp) {   /* --upto-block: whose inputs, and the forwards' settings ar-tune must share */
        cJSON *f = cJSON_AddObjectToObject(m, "fp_inputs");
        cJSON_AddNumberToObject(f, "block", fp->block);
        cJSON_AddNumberToObject(f, "batch_size", fp->fp_batch_size);
        cJSON_AddBoolToObject(f, "amp", fp->fp_amp);
        cJSON_AddNumberToObject(f, "threads", (double)fp->fp_threads);
    }
    char *txt = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return txt;
}


/* Embed sample by sample and stream the hidden states out, so memory is one
 * sample's activations, not the whole set. */
static void write_hidden(ar_stream_writer *w, ar_model *m, const ar_calib_samples *s, ar_dtype dt)
{
    int C = ar_model_config(m)->hidden, L = s->seqlen;
    int64_t shape[3] = {s->n, L, C};
    if (ar_stream_begin_tensor(w, "hidden", dt, 3, shape, "{}")) cli_die_lib();
    float *x = malloc(sizeof(float) * (size_t)L * C);
    void *buf = malloc(ar_dtype_size(dt) * (size_t)L * C);
    double t0 = cli_now();
    for (int i = 0; i < s->n; i++) {
        if (ar_model_embed(m, s->ids + (size_t)i * L, L, x)) cli_die_lib();
        ar_from_f32(buf, x, dt, (size_t)L * C);
        if (ar_stream_write_data(w, buf, ar_dtype_size(dt) * (size_t)L * C)) cli_die_lib();
        if ((i + 1) % 16 == 0 || i + 1 == s->n) cli_progress_line("sample", i + 1, s->n, t0, NULL);
    }
    if (ar_stream_end_tensor(w)) cli_die_lib();
    free(x);
    free(buf);
}

/* --upto-block: the embeddings of every sample run through the FP model's
 * blocks 0..upto-1 (ar_tune_fp_inputs, as ar-tune's FP chain), into fp. */
static void fp_inputs(const calib_args *a, ar_model *m, const ar_calib_samples *s, ar_calib_data *fp)
{
    int C = ar_model_config(m)->hidden, L = s->seqlen, nl = ar_model_config(m)->n_layers;
    if (a->upto >= nl) cli_die("--upto-block %d: %s has %d blocks (0-%d)", a->upto, a->model, nl, nl - 1);
    size_t row = (size_t)L * C;
    float *x = malloc(sizeof(float) * row);
    *fp = (ar_calib_data){.src = "ar-calib", .n = s->n, .T = L, .C = C, .ids = s->ids,
                          .hidden = malloc(sizeof(uint16_t) * row * s->n)};
    if (!x || !fp->hidden) cli_die("out of memory for %d samples' activations", s->n);
    for (int i = 0; i < s->n; i++) {
        if (ar_model_embed(m, s->ids + (size_t)i * L, L, x)) cli_die_lib();
        ar_from_f32(fp->hidden + row * i, x, AR_BF16, row);
    }
    free(x);
    if (ar_tune_fp_inputs(&a->fp, a->model, fp, a->upto)) cli_die_lib();
}

/* --dump-text: the rows' texts as JSONL, nothing written on error. */
static int dump_text(const calib_args *a, ar_calib_spec *sp)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    int fallbacks = 0;
    if (!buf) cli_die("out of memory");
    for (int i = 0; i < sp->n; i++) {
        char **texts;
        size_t nt;
        if (ar_calib_texts(a->model, &sp->src[i], &texts, &nt, &fallbacks)) cli_die_lib();
        for (size_t k = 0; k < nt; k++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "text", texts[k]);
            char *line = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            if (!line) cli_die("out of memory");
            size_t l = strlen(line);
            if (n + l + 2 > cap) {
                while (n + l + 2 > cap) cap *= 2;
                char *nb = realloc(buf, cap);
                if (!nb) cli_die("out of memory");
                buf = nb;
            }
            memcpy(buf + n, line, l);
            n += l;
            buf[n++] = '\n';
            free(line);
            free(texts[k]);
        }
        free(texts);
    }
    if (fallbacks)
        fprintf(stderr, "ar-calib: warning: the chat template refused %d conversations with a system message; "
                        "they were rendered without it (as AutoRound does)\n", fallbacks);
    FILE *f = cli_out_open(a->out, 0);
    if (fwrite(buf, 1, n, f) != n) cli_die("%s: write error", a->out ? a->out : "<stdout>");
    cli_out_commit(f);
    free(buf);
    ar_calib_spec_free(sp);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("ar-calib");
    calib_args a = parse_args(argc, argv);
    ar_calib_spec sp;
    if (ar_calib_spec_parse(a.dataset, &sp)) cli_die_lib();
    for (int i = 0; i < sp.n; i++) {
        check_dataset_path(sp.src[i].path);
        sp.src[i].chat |= a.chat;
    }
    if (a.dump_text) return dump_text(&a, &sp);
    ar_tokenizer *tok = ar_tokenizer_load(a.model);
    if (!tok) cli_die_lib();
    ar_model *m = a.dump_ids ? NULL : ar_model_open(a.model, 0);
    if (!m && !a.dump_ids) cli_die_lib();
    ar_calib_samples s;
    if (ar_calib_build_spec(tok, a.model, &sp, a.nsamples, a.seqlen, a.seed, &s)) cli_die_lib();
    if (s.chat_fallbacks)
        fprintf(stderr, "ar-calib: warning: the chat template refused %d conversations with a system message; "
                        "they were rendered without it (as AutoRound does)\n", s.chat_fallbacks);
    if (s.n < a.nsamples)
        fprintf(stderr, "ar-calib: warning: only %d of %d samples reach %d tokens\n", s.n, a.nsamples, a.seqlen);

    if (a.dump_ids) {
        FILE *f = cli_out_open(a.out, 0);
        for (int i = 0; i < s.n; i++)
            for (int k = 0; k < s.seqlen; k++)
                fprintf(f, "%s%d%s", k ? ", " : "[", s.ids[(size_t)i * s.seqlen + k], k + 1 == s.seqlen ? "]\n" : "");
        cli_out_commit(f);
        ar_calib_free(&s);
        ar_calib_spec_free(&sp);
        ar_tokenizer_free(tok);
        return 0;
    }
    FILE *f = cli_out_open(a.out, 1);
    ar_stream_writer *w = ar_stream_writer_open(f, a.out ? a.out : "<stdout>", 3);
    if (!w) cli_die_lib();
    char digest[17];
    if (ar_config_digest(a.model, digest)) cli_die_lib();
    ar_calib_data fp = {0};
    if (a.upto) fp_inputs(&a, m, &s, &fp);
    char *meta = meta_json(&a, &sp, &s, ar_model_config(m), digest, pad_token_id(a.model, tok), a.upto ? &fp : NULL);
    int64_t ishape[2] = {s.n, s.seqlen}, hshape[3] = {fp.n, fp.T, fp.C};
    if (ar_stream_write_meta(w, meta) || ar_stream_write_tensor(w, "input_ids", AR_I32, 2, ishape, "{}", s.ids))
        cli_die_lib();
    if (!a.upto) write_hidden(w, m, &s, a.dtype);
    else if (ar_stream_write_tensor(w, "hidden", AR_BF16, 3, hshape, "{}", fp.hidden)) cli_die_lib();
    free(fp.hidden);
    if (ar_stream_writer_close(w)) cli_die_lib();
    cli_out_commit(f);
    free(meta);
    ar_calib_free(&s);
    ar_calib_spec_free(&sp);
    ar_model_close(m);
    ar_tokenizer_free(tok);
    return 0;
}
