/* ar-pack — read ar-tune's stream of quantized layers and write model folders
 * that other programs load: auto_round, auto_gptq, auto_awq, fake (HF
 * safetensors folders) and gguf:<type> (one llama.cpp file). A comma list
 * writes several outputs in one pass: OUT for a single format, OUT/<format>
 * for several. Every output is written under a temporary name and renamed when
 * complete. */
#include "cli.h"
#include "error.h"
#include "export.h"
#include "pack_gguf.h"
#include "packing.h"
#include "safetensors_writer.h"
#include "tuned_stream.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-pack [-i STREAM|-] --format F[,F...] -o DIR [--model DIR] [--max_shard_size 5GB]\n"
    "F: auto_round (default), auto_gptq, auto_awq, llm_compressor, fake, gguf:<type> (q4_0, q4_1, q5_0, q5_1, q8_0,\n"
    "   q2_k_s, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k).\n"
    "Reads ar-tune's stream (ar-stream(5)) from standard input or -i.\n";

enum { MAX_FORMATS = 8 };

typedef struct {
    const char *in, *out, *model, *formats, *shard;
} pack_args;

static pack_args parse_args(int argc, char **argv)
{
    pack_args a = {NULL, NULL, NULL, "auto_round", NULL};
    for (int i = 1; i < argc; i++) {
        const char *v, *s = argv[i];
        if (cli_io_flag(argc, argv, &i, usage, "--output_dir", &a.in, &a.out, &a.model)) continue;
        else if ((v = cli_value(argc, argv, &i, "--format"))) a.formats = v;
        else if ((v = cli_value(argc, argv, &i, "--max_shard_size"))) a.shard = v;
        else cli_usage_error("unknown argument '%s'", s);
    }
    if (!a.out) cli_usage_error("-o DIR is required");
    if (!a.in && isatty(0)) cli_usage_error("give ar-tune's stream on standard input or with -i FILE");
    return a;
}

/* One output being written. */
typedef struct {
    char name[64], dir[4096];
    ar_export *hf;            /* HF folder formats */
    ar_pack_gguf *gguf;       /* gguf:<type> */
} output;

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
        if (strchr(a->formats, ',')) {
            char safe[64];
            memcpy(safe, o->name, sizeof safe);   /* both 64 bytes, NUL-terminated */
            for (char *p = safe; *p; p++) if (*p == ':') *p = '-';
            snprintf(o->dir, sizeof o->dir, "%s/%s", a->out, safe);
        } else snprintf(o->dir, sizeof o->dir, "%s", a->out);
    }
    if (n > 1 && mkdir(a->out, 0755) && errno != EEXIST) cli_die("%s: cannot create: %s", a->out, strerror(errno));
    for (int i = 0; i < n; i++) {
        output *o = &outs[i];
        cli_out_guard(o->dir);    /* an interrupted run removes the writers' "DIR.tmp*" names */
        if (!strncmp(o->name, "gguf:", 5)) {
            o->gguf = ar_pack_gguf_open(m->model, o->dir, o->name + 5, m->scheme);
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
static void cleanup_at_exit(void) { abort_outputs(g_outs, g_nout); }

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
    const char *src = !a.in || !strcmp(a.in, "-") ? "<stdin>" : a.in;
    FILE *f = !a.in || !strcmp(a.in, "-") ? stdin : fopen(a.in, "rb");
    if (!f) cli_die("%s: cannot open: %s", a.in, strerror(errno));
    ar_tuned_reader *r = ar_tuned_reader_open(f, src);
    if (!r) cli_die_lib();
    ar_tuned_meta m = *ar_tuned_reader_meta(r);
    if (a.model) snprintf(m.model, sizeof m.model, "%s", a.model);
    output outs[MAX_FORMATS];
    int nout = 0;
    open_outputs(&a, &m, outs, &nout);
    g_outs = outs; g_nout = nout;
    atexit(cleanup_at_exit);
    double t0 = cli_now();
    int nlayers = 0, rc;
    const ar_tuned_item *it;
    while ((rc = ar_tuned_reader_next(r, &it)) == 1) {
        if (it->kind == AR_TUNED_GGUF) {
            pack_gguf(it, outs, nout, src);
            continue;
        }
        if (it->kind == AR_TUNED_KV_SCALE) {   /* GGUF has no KV-cache scales (AutoRound drops them too) */
            for (int i = 0; i < nout; i++)
                if (outs[i].hf && ar_export_kv_scale(outs[i].hf, it->name, it->kv_scale)) cli_die_lib();
            continue;
        }
        if (++nlayers % 7 == 0) cli_progress_line("layers", nlayers, nlayers, t0, NULL);
        pack_linear(it, outs, nout, src);
    }
    if (rc < 0) cli_die_lib();
    for (int i = 0; i < nout; i++) {
        int frc = outs[i].hf ? ar_export_finish(outs[i].hf) : ar_pack_gguf_finish(outs[i].gguf);
        if (frc) cli_die_lib();
        outs[i].hf = NULL; outs[i].gguf = NULL;
        if (cli_progress) fprintf(stderr, "ar-pack: wrote %s\n", outs[i].dir);
    }
    ar_tuned_reader_close(r);
    return 0;
}
