/* ar-pack — read ar-tune's stream of quantized layers and write model folders
 * that other programs load: auto_round, auto_gptq, auto_awq, fake (HF
 * safetensors folders) and gguf:<type> (one llama.cpp file). A comma list
 * writes several outputs in one pass: OUT for a single format, OUT/<format>
 * for several. A GGUF output given an existing folder (or a path ending in
 * '/') is written into it under llama.cpp's file name; --layout autoround puts
 * everything where AutoRound 0.16.1 would (output_names.h). Every output is
 * written under a temporary name and renamed when complete. */
#include "cli.h"
#include "error.h"
#include "export.h"
#include "output_names.h"
#include "pack_gguf.h"
#include "packing.h"
#include "safetensors_writer.h"
#include "scheme.h"
#include "tuned_merge.h"
#include "tuned_stream.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-pack [-i STREAM|- [-i STREAM ...]] --format F[,F...] -o DIR [--model DIR] [--max_shard_size 5GB]\n"
    "               [--layout plain|autoround [--layout_formats F[,F...]] [--layout_scheme NAME]]\n"
    "F: auto_round (default), auto_gptq, auto_awq, llm_compressor, fake, gguf:<type> (q4_0, q4_1, q5_0, q5_1, q8_0,\n"
    "   q2_k_s, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k).\n"
    "Reads ar-tune's stream (ar-stream(5)) from standard input or -i. --layout plain (default): OUT for one\n"
    "format, OUT/<format> for several; a GGUF format with -o an existing folder or DIR/ writes DIR/<llama.cpp name>.gguf.\n"
    "--layout autoround: AutoRound's names under OUT (OUT/<model>-w4g128/..., GGUF as OUT/<model>-gguf/<name>.gguf);\n"
    "--layout_formats: the whole run's --format list when a run is split across ar-pack calls (auto-round does);\n"
    "--layout_scheme: the preset the folder is named after (default: the stream's; AutoScheme: the first candidate).\n"
    "Several -i: the streams of block ranges of one run (ar-tune --blocks A-B), merged into the model the whole\n"
    "run makes; gaps, overlaps and streams whose META settings differ are refused (docs/parallel.md).\n";

enum { MAX_FORMATS = 8, MAX_INPUTS = 256 };

typedef struct {
    const char *in, *out, *model, *formats, *shard, *layout_formats, *layout_scheme;
    int autoround_layout;
    const char *ins[MAX_INPUTS];   /* every -i, in order (in: the first) */
    int nin;
} pack_args;

static pack_args parse_args(int argc, char **argv)
{
    pack_args a = {NULL, NULL, NULL, "auto_round", NULL, NULL, NULL, 0, {NULL}, 0};
    for (int i = 1; i < argc; i++) {
        const char *v, *s = argv[i];
        if ((v = cli_value(argc, argv, &i, "-i")) || (v = cli_value(argc, argv, &i, "--input"))) {
            if (a.nin == MAX_INPUTS) cli_usage_error("-i: at most %d streams", MAX_INPUTS);
            if (!a.in) a.in = v;
            a.ins[a.nin++] = v;
            continue;
        }
        if (cli_io_flag(argc, argv, &i, usage, "--output_dir", NULL, &a.out, &a.model)) continue;
        else if ((v = cli_value(argc, argv, &i, "--format"))) a.formats = v;
        else if ((v = cli_value(argc, argv, &i, "--max_shard_size"))) a.shard = v;
        else if ((v = cli_value(argc, argv, &i, "--layout_formats"))) a.layout_formats = v;
        else if ((v = cli_value(argc, argv, &i, "--layout_scheme"))) a.layout_scheme = v;
        else if ((v = cli_value(argc, argv, &i, "--layout"))) {
            if (strcmp(v, "plain") && strcmp(v, "autoround"))
                cli_usage_error("--layout: '%s' is not plain or autoround", v);
            a.autoround_layout = !strcmp(v, "autoround");
        } else cli_usage_error("unknown argument '%s'", s);
    }
    if (!a.out) cli_usage_error("-o DIR is required");
    if ((a.layout_formats || a.layout_scheme) && !a.autoround_layout)
        cli_usage_error("%s needs --layout autoround", a.layout_formats ? "--layout_formats" : "--layout_scheme");
    if (!a.in && isatty(0)) cli_usage_error("give ar-tune's stream on standard input or with -i FILE");
    if (!a.nin) a.ins[a.nin++] = "-";
    for (int i = 0, stdin_n = 0; i < a.nin; i++)
        if (!strcmp(a.ins[i], "-") && ++stdin_n > 1) cli_usage_error("-i -: standard input can be read once");
    return a;
}

/* One output being written. */
typedef struct {
    char name[64], dir[4096];
    int gguf_dir;             /* gguf: dir is a folder, the file inside named by llama.cpp's convention */
    ar_export *hf;            /* HF folder formats */
    ar_pack_gguf *gguf;       /* gguf:<type> */
} output;

/* mkdir -p the folders above path. */
static void make_parents(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) cli_die("%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
}

/* The attributes the folder is named after: --layout_scheme's preset, or the stream's. */
static ar_tuned_attrs layout_attrs(const pack_args *a, const ar_tuned_meta *m)
{
    if (!a->layout_scheme) return m->attrs;
    ar_scheme s;
    if (ar_scheme_preset(&s, a->layout_scheme)) cli_usage_error("--layout_scheme: %s", ar_last_error());
    ar_tuned_attrs t = {.bits = s.bits, .group_size = s.group_size, .sym = s.sym, .group_2d = s.group_2d,
                        .act_bits = s.act_bits, .act_group_size = s.act_group_size, .act_sym = s.act_sym,
                        .act_dynamic = s.act_dynamic};
    snprintf(t.data_type, sizeof t.data_type, "%s", s.data_type);
    snprintf(t.act_data_type, sizeof t.act_data_type, "%s", s.act_data_type);
    return t;
}

/* Where format o->name goes under --layout autoround. */
static void autoround_dir(const pack_args *a, const ar_tuned_meta *m, output *o)
{
    char run[1024], rel[2048];
    ar_tuned_attrs t = layout_attrs(a, m);
    if (ar_autoround_run_formats(a->layout_formats ? a->layout_formats : a->formats, o->name, run, sizeof run) ||
        ar_autoround_output_dir(m->model, run, o->name, &t, m->mixed_bits, rel, sizeof rel))
        cli_die_lib();
    size_t n = strlen(a->out);
    while (n > 1 && a->out[n - 1] == '/') n--;
    if (rel[0]) snprintf(o->dir, sizeof o->dir, "%.*s/%s", (int)n, a->out, rel);
    else snprintf(o->dir, sizeof o->dir, "%.*s", (int)n, a->out);
    o->gguf_dir = !strncmp(o->name, "gguf:", 5);
    make_parents(o->dir);
}

static const char *g_made_parent;   /* OUT made for several formats: removed again if left empty */

static void open_outputs(const pack_args *a, const ar_tuned_meta *m, output *outs, int *nout)
{
    char list[512];
    snprintf(list, sizeof list, "%s", a->formats);
    int n = 0;
    for (char *save, *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
        if (n == MAX_FORMATS) cli_usage_error("--format: at most %d formats", MAX_FORMATS);
        output *o = &outs[n++];
        memset(o, 0, sizeof *o);
        snprintf(o->name, sizeof o->name, "%s", f);
        for (char *p = o->name; *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        if (a->autoround_layout) autoround_dir(a, m, o);
        else if (strchr(a->formats, ',')) {
            char safe[64];
            memcpy(safe, o->name, sizeof safe);   /* both 64 bytes, NUL-terminated */
            for (char *p = safe; *p; p++) if (*p == ':') *p = '-';
            snprintf(o->dir, sizeof o->dir, "%s/%s", a->out, safe);
        } else {
            struct stat sb;
            snprintf(o->dir, sizeof o->dir, "%s", a->out);
            size_t len = strlen(a->out);
            o->gguf_dir = !strncmp(o->name, "gguf:", 5) &&
                          ((len && a->out[len - 1] == '/') || (stat(a->out, &sb) == 0 && S_ISDIR(sb.st_mode)));
            /* "DIR/" as DIR, so that the interrupt guard below sees its name */
            for (size_t k = strlen(o->dir); o->gguf_dir && k > 1 && o->dir[k - 1] == '/';) o->dir[--k] = 0;
        }
    }
    *nout = n;   /* from here a failure aborts the outputs already open (cleanup_at_exit) */
    if (n > 1 && !a->autoround_layout) {
        if (mkdir(a->out, 0755) == 0) g_made_parent = a->out;
        else if (errno != EEXIST) cli_die("%s: cannot create: %s", a->out, strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        output *o = &outs[i];
        cli_out_guard(o->dir);    /* an interrupted run removes the writers' "DIR.tmp*" names */
        if (!strncmp(o->name, "gguf:", 5)) {
            o->gguf = o->gguf_dir ? ar_pack_gguf_open_dir(m->model, o->dir, o->name + 5, m->scheme)
                                  : ar_pack_gguf_open(m->model, o->dir, o->name + 5, m->scheme);
            if (!o->gguf) cli_die_lib();
            continue;
        }
        if (!strncasecmp(m->scheme, "gguf:", 5))
            cli_die("%s: the stream holds GGUF blocks (scheme %s); it packs only as gguf:<type>, not %s",
                    a->in ? a->in : "<stdin>", m->scheme, o->name);
        const ar_tuned_attrs *q = &m->attrs;
        ar_export_opts eo = {.format = o->name, .bits = q->bits, .group_size = q->group_size, .sym = q->sym,
                             .mixed_bits = m->mixed_bits, .tuning_json = m->tuning_json, .data_type = q->data_type,
                             .group_2d = q->group_2d, .act_bits = q->act_bits, .act_group_size = q->act_group_size,
                             .act_sym = q->act_sym, .act_dynamic = q->act_dynamic, .act_data_type = q->act_data_type};
        if (a->shard && ar_parse_size(a->shard, &eo.max_shard_bytes))
            cli_usage_error("--max_shard_size: %s", ar_last_error());
        o->hf = ar_export_open(m->model, o->dir, &eo);
        if (!o->hf) cli_die_lib();
    }
    *nout = n;
}

static void abort_outputs(output *outs, int n)
{
    for (int i = 0; i < n; i++) {
        ar_export_abort(outs[i].hf);
        ar_pack_gguf_abort(outs[i].gguf);
        outs[i].hf = NULL;
        outs[i].gguf = NULL;
    }
}

static output *g_outs;
static int g_nout;
static void cleanup_at_exit(void)
{
    abort_outputs(g_outs, g_nout);
    if (g_made_parent) rmdir(g_made_parent);   /* fails, as it should, once outputs are in it */
}

/* A linear from the stream into every output. */
static void pack_linear(const ar_tuned_item *l, output *outs, int nout, const char *src)
{
    const ar_tuned_attrs *a = &l->attrs;
    ar_qlayer q = {.name = l->name, .n = l->n, .k = l->k, .bits = a->bits, .group_size = a->group_size, .sym = a->sym,
                   .codes = l->codes, .scale = l->scale, .zp = a->sym ? NULL : l->zp,
                   .data_type = a->data_type[0] ? a->data_type : NULL, .global_scale = l->global_scale,
                   .act_max = l->act_max, .group_2d = a->group_2d, .act_bits = a->act_bits,
                   .act_group_size = a->act_group_size, .act_sym = a->act_sym, .act_dynamic = a->act_dynamic,
                   .act_data_type = a->act_data_type};
    int fp = ar_qlayer_dtype(&q) != 0;
    for (int i = 0; i < nout; i++) {
        if (fp && outs[i].gguf) cli_die("%s: %s is a %s layer; GGUF holds integer types only", src, l->name, a->data_type);
        int rc = outs[i].hf ? ar_export_layer(outs[i].hf, &q) : ar_pack_gguf_layer(outs[i].gguf, &q);
        if (rc) cli_die_lib();
    }
}

/* Raw GGML blocks of a GGUF scheme's tensor: only GGUF outputs can take them. */
static void pack_gguf(const ar_tuned_item *g, output *outs, int nout, const char *src)
{
    for (int i = 0; i < nout; i++)
        if (!outs[i].gguf)
            cli_die("%s: %s.gguf holds GGUF blocks (a GGUF scheme's stream); it packs only as gguf:<type>, not %s", src,
                    g->name, outs[i].name);
    for (int i = 0; i < nout; i++)
        if (ar_pack_gguf_raw(outs[i].gguf, g->name, g->type, g->rows, g->cols, g->blocks, g->nbytes)) cli_die_lib();
}

int main(int argc, char **argv)
{
    cli_init("ar-pack");
    pack_args a = parse_args(argc, argv);
    FILE *files[MAX_INPUTS];
    const char *srcs[MAX_INPUTS];
    for (int i = 0; i < a.nin; i++) {
        int std = !strcmp(a.ins[i], "-");
        srcs[i] = std ? "<stdin>" : a.ins[i];
        if (!(files[i] = std ? stdin : fopen(a.ins[i], "rb"))) cli_die("%s: cannot open: %s", a.ins[i], strerror(errno));
    }
    ar_tuned_merge *r = ar_tuned_merge_open(files, srcs, a.nin);
    if (!r) cli_die_lib();
    ar_tuned_meta m = *ar_tuned_merge_meta(r);
    if (a.model) snprintf(m.model, sizeof m.model, "%s", a.model);
    static output outs[MAX_FORMATS];   /* static: cleanup_at_exit reads it after main returns */
    g_outs = outs;
    atexit(cleanup_at_exit);   /* before opening: a format refused after another opened leaves nothing */
    open_outputs(&a, &m, outs, &g_nout);
    int nout = g_nout;
    double t0 = cli_now();
    int nlayers = 0, rc;
    const ar_tuned_item *it;
    while ((rc = ar_tuned_merge_next(r, &it)) == 1) {
        if (it->kind == AR_TUNED_GGUF) {
            pack_gguf(it, outs, nout, ar_tuned_merge_source(r));
            continue;
        }
        if (it->kind == AR_TUNED_KV_SCALE) {   /* GGUF has no KV-cache scales (AutoRound drops them too) */
            for (int i = 0; i < nout; i++)
                if (outs[i].hf && ar_export_kv_scale(outs[i].hf, it->name, it->kv_scale)) cli_die_lib();
            continue;
        }
        if (++nlayers % 7 == 0) cli_progress_line("layers", nlayers, nlayers, t0, NULL);
        pack_linear(it, outs, nout, ar_tuned_merge_source(r));   /* the range's file in messages */
    }
    if (rc < 0) cli_die_lib();
    for (int i = 0; i < nout; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s", outs[i].dir);
        int frc = outs[i].hf ? ar_export_finish(outs[i].hf) : ar_pack_gguf_finish_path(outs[i].gguf, path, sizeof path);
        if (frc) cli_die_lib();
        outs[i].hf = NULL; outs[i].gguf = NULL;
        if (cli_progress) fprintf(stderr, "ar-pack: wrote %s\n", path);
    }
    ar_tuned_merge_close(r);
    for (int i = 0; i < a.nin; i++) if (files[i] != stdin) fclose(files[i]);
    return 0;
}
