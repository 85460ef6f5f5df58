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
#include "stream.h"
#include <cJSON.h>
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

/* The quantization attributes that ar-tune's META and each layer's qweight
 * record both carry: the weight scheme and the activation scheme. */
typedef struct {
    char data_type[32], act_data_type[32];
    int bits, group_size, sym;
    int group_2d, act_bits, act_group_size, act_sym, act_dynamic;
} quant_attrs;

/* The stream's global scheme, from ar-tune's META record. */
typedef struct {
    char model[4096], scheme[64];
    quant_attrs attrs;
    int mixed_bits;
    char *tuning_json;
} tune_meta;

static int json_int(cJSON *o, const char *k, int def)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valueint : cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* Read the attributes from o. Absent keys: bits and group_size take the
 * caller's defaults (META and layer records differ), sym 1, group_2d 0,
 * act_bits 16, act_group_size and act_sym the weight's, act_dynamic 1; the
 * type names keep what *a held. */
static void read_quant_attrs(cJSON *o, int bits, int group_size, quant_attrs *a)
{
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(o, "data_type");
    cJSON *adt = cJSON_GetObjectItemCaseSensitive(o, "act_data_type");
    if (cJSON_IsString(dt)) snprintf(a->data_type, sizeof a->data_type, "%s", dt->valuestring);
    if (cJSON_IsString(adt)) snprintf(a->act_data_type, sizeof a->act_data_type, "%s", adt->valuestring);
    a->bits = json_int(o, "bits", bits);
    a->group_size = json_int(o, "group_size", group_size);
    a->sym = json_int(o, "sym", 1);
    a->group_2d = json_int(o, "group_2d", 0);
    a->act_bits = json_int(o, "act_bits", 16);
    a->act_group_size = json_int(o, "act_group_size", a->group_size);
    a->act_sym = json_int(o, "act_sym", a->sym);
    a->act_dynamic = json_int(o, "act_dynamic", 1);
}

static void parse_meta(const char *json, tune_meta *m, const char *src)
{
    cJSON *o = cJSON_Parse(json);
    cJSON *ar = cJSON_GetObjectItemCaseSensitive(o, "ar");
    if (!cJSON_IsString(ar) || strcmp(ar->valuestring, "tune"))
        cli_die("%s: not an ar-tune stream (META \"ar\" is not \"tune\")", src);
    cJSON *v;
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "model"))) snprintf(m->model, sizeof m->model, "%s", v->valuestring);
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "scheme"))) snprintf(m->scheme, sizeof m->scheme, "%s", v->valuestring);
    read_quant_attrs(o, 4, 128, &m->attrs);
    m->mixed_bits = json_int(o, "mixed_bits", 0);
    if (!m->attrs.data_type[0]) snprintf(m->attrs.data_type, sizeof m->attrs.data_type, "int");
    cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tuning");
    m->tuning_json = t ? cJSON_PrintUnformatted(t) : NULL;
    cJSON_Delete(o);
}

/* One output being written. */
typedef struct {
    char name[64], dir[4096];
    ar_export *hf;            /* HF folder formats */
    ar_pack_gguf *gguf;       /* gguf:<type> */
} output;

static void open_outputs(const pack_args *a, const tune_meta *m, output *outs, int *nout)
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
        const quant_attrs *q = &m->attrs;
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

/* A layer assembled from its qweight/scale/zp records. */
typedef struct {
    char name[256];
    int n, k;
    quant_attrs attrs;
    float global_scale, act_max;
    uint8_t *codes;
    float *scale;
    int32_t *zp;
} layer_buf;

static void layer_reset(layer_buf *l)
{
    free(l->codes); free(l->scale); free(l->zp);
    memset(l, 0, sizeof *l);
}

static void flush_layer(layer_buf *l, output *outs, int nout, const char *src)
{
    if (!l->name[0]) return;
    if (!l->codes || !l->scale) cli_die("%s: layer %s lacks its qweight or scale record", src, l->name);
    const quant_attrs *a = &l->attrs;
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
    layer_reset(l);
}

/* Split "model.layers.0.mlp.up_proj.qweight" into layer and field. */
static const char *split_field(const char *name, char *layer, size_t cap)
{
    const char *dot = strrchr(name, '.');
    if (!dot || (size_t)(dot - name) >= cap) return NULL;
    memcpy(layer, name, dot - name);
    layer[dot - name] = 0;
    return dot + 1;
}

/* A "<hf tensor>.gguf" record: u8 [nbytes] with attrs ggml_type, rows, cols;
 * only GGUF outputs can take it. */
static void read_gguf_record(ar_stream_reader *r, const ar_record *rec, const char *tensor, output *outs, int nout,
                             const char *src)
{
    if (rec->dtype != AR_U8 || rec->ndim != 1) cli_die("%s: %s must be u8 [nbytes]", src, rec->name);
    cJSON *at = cJSON_Parse(rec->json);
    cJSON *ty = cJSON_GetObjectItemCaseSensitive(at, "ggml_type");
    int t = cJSON_IsString(ty) ? ar_ggml_type_parse(ty->valuestring) : -1;
    long long rows = json_int(at, "rows", 0), cols = json_int(at, "cols", 0);
    cJSON_Delete(at);
    if (t < 0 || rows <= 0 || cols <= 0) cli_die("%s: %s lacks a known ggml_type, rows and cols", src, rec->name);
    for (int i = 0; i < nout; i++)
        if (!outs[i].gguf)
            cli_die("%s: %s holds GGUF blocks (a GGUF scheme's stream); it packs only as gguf:<type>, not %s", src,
                    rec->name, outs[i].name);
    uint8_t *blocks = ar_stream_read_payload(r);
    if (!blocks) cli_die_lib();
    for (int i = 0; i < nout; i++)
        if (ar_pack_gguf_raw(outs[i].gguf, tensor, (ar_ggml_type)t, rows, cols, blocks, rec->nelem)) cli_die_lib();
    free(blocks);
}

static void read_layer_record(ar_stream_reader *r, const ar_record *rec, layer_buf *l, output *outs, int nout,
                              const char *src)
{
    char layer[256];
    const char *field = split_field(rec->name, layer, sizeof layer);
    if (!field) cli_die("%s: unexpected record '%s'", src, rec->name);
    if (!strcmp(field, "gguf")) {   /* raw GGML blocks of tensor `layer` from a GGUF scheme */
        flush_layer(l, outs, nout, src);
        read_gguf_record(r, rec, layer, outs, nout, src);
        return;
    }
    if (strcmp(layer, l->name)) {
        flush_layer(l, outs, nout, src);
        snprintf(l->name, sizeof l->name, "%s", layer);
    }
    if (!strcmp(field, "qweight")) {
        if (rec->dtype != AR_U8 || rec->ndim != 2) cli_die("%s: %s must be u8 [N, K]", src, rec->name);
        cJSON *at = cJSON_Parse(rec->json);
        l->n = (int)rec->shape[0]; l->k = (int)rec->shape[1];
        read_quant_attrs(at, 0, 0, &l->attrs);
        cJSON_Delete(at);
        l->codes = ar_stream_read_payload(r);
    } else if (!strcmp(field, "scale")) {
        if (rec->dtype != AR_F32 || rec->ndim != 2) cli_die("%s: %s must be f32 [N, groups]", src, rec->name);
        l->scale = ar_stream_read_payload(r);
    } else if (!strcmp(field, "zp")) {
        if (rec->dtype != AR_I32 || rec->ndim != 2) cli_die("%s: %s must be i32 [N, groups]", src, rec->name);
        l->zp = ar_stream_read_payload(r);
    } else if (!strcmp(field, "global_scale") || !strcmp(field, "act_max")) {
        if (rec->dtype != AR_F32 || rec->nelem != 1) cli_die("%s: %s must be one f32", src, rec->name);
        float v;
        if (ar_stream_read_data(r, &v, sizeof v)) cli_die_lib();
        *(field[0] == 'g' ? &l->global_scale : &l->act_max) = v;
    } else cli_die("%s: unexpected record '%s'", src, rec->name);
}

int main(int argc, char **argv)
{
    cli_init("ar-pack");
    pack_args a = parse_args(argc, argv);
    const char *src = !a.in || !strcmp(a.in, "-") ? "<stdin>" : a.in;
    FILE *f = !a.in || !strcmp(a.in, "-") ? stdin : fopen(a.in, "rb");
    if (!f) cli_die("%s: cannot open: %s", a.in, strerror(errno));
    ar_stream_reader *r = ar_stream_reader_open(f, src);
    if (!r) cli_die_lib();
    ar_record rec;
    int rc = ar_stream_next(r, &rec);
    if (rc < 0) cli_die_lib();
    if (rc == 0 || rec.kind != AR_REC_META) cli_die("%s: stream does not start with ar-tune's META record", src);
    tune_meta m = {0};
    parse_meta(rec.json, &m, src);
    if (a.model) snprintf(m.model, sizeof m.model, "%s", a.model);
    output outs[MAX_FORMATS];
    int nout = 0;
    open_outputs(&a, &m, outs, &nout);
    g_outs = outs; g_nout = nout;
    atexit(cleanup_at_exit);
    layer_buf l = {0};
    double t0 = cli_now();
    int nlayers = 0;
    while ((rc = ar_stream_next(r, &rec)) == 1) {
        if (rec.kind != AR_REC_TENSOR) continue;
        read_layer_record(r, &rec, &l, outs, nout, src);
        if (!strcmp(strrchr(rec.name, '.') + 1, "qweight") && ++nlayers % 7 == 0)
            cli_progress_line("layers", nlayers, nlayers, t0, NULL);
    }
    if (rc < 0) cli_die_lib();
    flush_layer(&l, outs, nout, src);
    for (int i = 0; i < nout; i++) {
        int frc = outs[i].hf ? ar_export_finish(outs[i].hf) : ar_pack_gguf_finish(outs[i].gguf);
        if (frc) cli_die_lib();
        outs[i].hf = NULL; outs[i].gguf = NULL;
        if (cli_progress) fprintf(stderr, "ar-pack: wrote %s\n", outs[i].dir);
    }
    ar_stream_reader_close(r);
    free(m.tuning_json);
    return 0;
}
