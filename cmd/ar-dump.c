/* ar-dump — list the records of a tensor stream (man ar-dump(1)).
 *
 * Reads the whole stream, payloads included, so that the exit status also
 * tells whether the stream is complete and uncorrupted. */
#include "cli.h"
#include "error.h"
#include "stream.h"
#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-dump [--json] [FILE|-]\n"
    "List the records of an ar tensor stream (see ar-stream(5)); FILE '-' or none reads stdin.\n"
    "Text output, one tab-separated line per record:\n"
    "  meta    JSON\n"
    "  tensor  NAME  DTYPE  [SHAPE]  BYTES  ATTRS\n"
    "  --json  one JSON object per record and line instead\n"
    "  --help  this text\n"
    "Exit status: 0 valid stream, 1 bad input (one-line message on stderr), 2 usage error.\n";

/* A JSON text from the stream re-printed on one line. The reader has checked
 * it parses, so failure here can only be memory. */
static char *one_line(const char *json)
{
    cJSON *j = cJSON_Parse(json);
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) cli_die("out of memory");
    return s;
}

static void print_text(const ar_record *rec)
{
    char *json = one_line(rec->json);
    if (rec->kind == AR_REC_META) {
        printf("meta\t%s\n", json);
    } else {
        printf("tensor\t%s\t%s\t[", rec->name, ar_dtype_name(rec->dtype));
        for (int i = 0; i < rec->ndim; i++) printf("%s%lld", i ? "," : "", (long long)rec->shape[i]);
        printf("]\t%llu\t%s\n", (unsigned long long)rec->nbytes, json);
    }
    cJSON_free(json);
}

/* The record as a JSON object: kind, and for tensors name, dtype, shape, nbytes, attrs. */
static cJSON *record_json(const ar_record *rec)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *body = cJSON_Parse(rec->json);
    if (rec->kind == AR_REC_META) {
        cJSON_AddStringToObject(o, "kind", "meta");
        cJSON_AddItemToObject(o, "json", body);
        return o;
    }
    cJSON_AddStringToObject(o, "kind", "tensor");
    cJSON_AddStringToObject(o, "name", rec->name);
    cJSON_AddStringToObject(o, "dtype", ar_dtype_name(rec->dtype));
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    for (int i = 0; i < rec->ndim; i++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)rec->shape[i]));
    cJSON_AddNumberToObject(o, "nbytes", (double)rec->nbytes);
    cJSON_AddItemToObject(o, "attrs", body);
    return o;
}

static void print_json(const ar_record *rec)
{
    cJSON *o = record_json(rec);
    char *s = cJSON_PrintUnformatted(o);
    if (!s) cli_die("out of memory");
    printf("%s\n", s);
    cJSON_free(s);
    cJSON_Delete(o);
}

/* Open the input named on the command line; "-" or NULL is stdin. */
static FILE *open_input(const char *path, const char **label)
{
    if (!path || !strcmp(path, "-")) {
        if (isatty(0)) cli_usage_error("no input: give a FILE or pipe a stream in");
        *label = "stdin";
        return stdin;
    }
    FILE *f = fopen(path, "rb");
    if (!f) cli_die("%s: %s", path, strerror(errno));
    *label = path;
    return f;
}

int main(int argc, char **argv)
{
    cli_init("ar-dump");
    int json = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage, stdout); return CLI_EXIT_OK; }
        else if (!strcmp(a, "--json")) json = 1;
        else if (cli_common_flag(a)) continue;
        else if (a[0] == '-' && a[1]) cli_usage_error("unknown option '%s'", a);
        else if (path) cli_usage_error("more than one input given");
        else path = a;
    }
    const char *label;
    FILE *f = open_input(path, &label);
    ar_stream_reader *r = ar_stream_reader_open(f, label);
    if (!r) cli_die_lib();
    ar_record rec;
    int rc;
    while ((rc = ar_stream_next(r, &rec)) == 1) {
        if (json) print_json(&rec);
        else print_text(&rec);
    }
    if (rc < 0) {
        fflush(stdout);
        cli_die_lib();
    }
    ar_stream_reader_close(r);
    if (f != stdin) fclose(f);
    if (fflush(stdout) || ferror(stdout)) cli_die("stdout: write error: %s", strerror(errno));
    return CLI_EXIT_OK;
}
