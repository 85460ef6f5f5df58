/* calib_stream.c — the calibration stream reader (see calib_stream.h). */
#include "calib_stream.h"
#include "error.h"
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

/* Copy the rest of the current payload (n bytes) from r to w. */
static int copy_payload(ar_stream_reader *r, ar_stream_writer *w, uint64_t n)
{
    char buf[1 << 16];
    for (uint64_t left = n; left;) {
        size_t m = left < sizeof buf ? (size_t)left : sizeof buf;
        if (ar_stream_read_data(r, buf, m) || ar_stream_write_data(w, buf, m)) return -1;
        left -= m;
    }
    return 0;
}

static int read_ids(ar_stream_reader *r, const ar_record *rec, ar_stream_writer *copy, ar_calib_data *d)
{
    if (rec->dtype != AR_I32 || rec->ndim != 2 || rec->shape[0] < 1 || rec->shape[1] < 2)
        return ar_error("%s: input_ids must be i32 [n, L] with L >= 2", d->src);
    free(d->ids);
    if (!(d->ids = ar_stream_read_payload(r))) return -1;
    d->n = (int)rec->shape[0];
    d->T = (int)rec->shape[1];
    return copy ? ar_stream_write_data(copy, d->ids, rec->nbytes) : 0;
}

/* hidden, narrowed to bf16 when the stream holds f32 (in slices, to keep
 * memory at one copy). */
static int read_hidden(ar_stream_reader *r, const ar_record *rec, ar_stream_writer *copy, ar_calib_data *d)
{
    if (rec->ndim != 3 || (rec->dtype != AR_BF16 && rec->dtype != AR_F32))
        return ar_error("%s: hidden must be bf16 or f32 [n, L, C]", d->src);
    size_t nel = rec->nelem;
    d->C = (int)rec->shape[2];
    free(d->hidden);
    if (!(d->hidden = malloc(nel * 2))) return ar_error("%s: out of memory for %zu activations", d->src, nel);
    if (rec->dtype == AR_BF16) {
        if (ar_stream_read_data(r, d->hidden, nel * 2) || (copy && ar_stream_write_data(copy, d->hidden, nel * 2)))
            return -1;
    } else {
        float buf[4096];
        for (size_t i = 0; i < nel; i += 4096) {
            size_t m = nel - i < 4096 ? nel - i : 4096;
            if (ar_stream_read_data(r, buf, m * 4) || (copy && ar_stream_write_data(copy, buf, m * 4))) return -1;
            ar_from_f32(d->hidden + i, buf, AR_BF16, m);
        }
    }
    if (rec->shape[0] != d->n || rec->shape[1] != d->T)
        return ar_error("%s: hidden [%lld, %lld, C] does not match input_ids [%d, %d]", d->src,
                        (long long)rec->shape[0], (long long)rec->shape[1], d->n, d->T);
    return 0;
}

static int read_tensor(ar_stream_reader *r, const ar_record *rec, ar_stream_writer *copy, int keep_hidden,
                       ar_calib_data *d)
{
    if (copy && ar_stream_begin_tensor(copy, rec->name, rec->dtype, rec->ndim, rec->shape, rec->json)) return -1;
    int rc = !strcmp(rec->name, "input_ids")            ? read_ids(r, rec, copy, d)
           : keep_hidden && !strcmp(rec->name, "hidden") ? read_hidden(r, rec, copy, d)
           : copy                                        ? copy_payload(r, copy, rec->nbytes)
                                                         : 0;
    if (rc) return -1;
    return copy ? ar_stream_end_tensor(copy) : 0;
}

/* META "fp_inputs" (ar-calib --upto-block): the block whose inputs hidden
 * holds and the forward settings that made them. */
static int read_fp_inputs(const cJSON *fi, ar_calib_data *d)
{
    if (!fi) return 0;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(fi, "block");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(fi, "batch_size");
    const cJSON *amp = cJSON_GetObjectItemCaseSensitive(fi, "amp");
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(fi, "threads");
    if (!cJSON_IsNumber(b) || b->valuedouble < 0 || b->valuedouble > 1e6 || !cJSON_IsNumber(bs) ||
        bs->valuedouble < 1 || !cJSON_IsBool(amp) || !cJSON_IsNumber(th) || th->valuedouble < 1)
        return ar_error("%s: META fp_inputs must hold block, batch_size, amp and threads", d->src);
    d->block = b->valueint;
    d->fp_batch_size = bs->valueint;
    d->fp_amp = cJSON_IsTrue(amp);
    d->fp_threads = (long)th->valuedouble;
    return 0;
}

/* The first model and config digest, the first pad_token_id (a token id, or
 * null when the tokenizer names no pad token), the last layer config. */
static int read_meta(const char *json, ar_calib_data *d)
{
    cJSON *m = cJSON_Parse(json);
    const cJSON *mp = cJSON_GetObjectItemCaseSensitive(m, "model");
    const cJSON *dg = cJSON_GetObjectItemCaseSensitive(m, "config_fnv1a64");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(m, "pad_token_id");
    const cJSON *lc = cJSON_GetObjectItemCaseSensitive(m, "layer_config");
    int rc = 0;
    if (cJSON_IsString(mp) && !d->model && !(d->model = strdup(mp->valuestring))) rc = -1;
    if (cJSON_IsString(dg) && !d->config_digest && !(d->config_digest = strdup(dg->valuestring))) rc = -1;
    if (rc) rc = ar_error("%s: out of memory", d->src);
    else if (p && !d->pad_key) {
        if (!cJSON_IsNull(p) && !(cJSON_IsNumber(p) && p->valuedouble >= 0 && p->valuedouble < INT32_MAX))
            rc = ar_error("%s: META pad_token_id must be a token id or null", d->src);
        d->pad_key = 1;
        d->pad_id = cJSON_IsNull(p) ? -1 : p->valueint;
    }
    if (!rc) rc = read_fp_inputs(cJSON_GetObjectItemCaseSensitive(m, "fp_inputs"), d);
    if (lc) d->n_layer_configs++;
    if (!rc && cJSON_IsObject(lc)) {
        free(d->layer_config);
        if (!(d->layer_config = cJSON_PrintUnformatted(lc))) rc = ar_error("%s: out of memory", d->src);
    }
    cJSON_Delete(m);
    return rc;
}

int ar_calib_stream_read(FILE *f, const char *src, ar_stream_writer *copy, int keep_hidden, ar_calib_data *d)
{
    memset(d, 0, sizeof *d);
    if (!(d->src = strdup(src))) return ar_error("%s: out of memory", src);
    ar_stream_reader *r = ar_stream_reader_open(f, src);
    if (!r) goto fail;
    ar_record rec;
    int rc;
    while ((rc = ar_stream_next(r, &rec)) == 1) {
        if (rec.kind == AR_REC_META) {
            if (read_meta(rec.json, d) || (copy && ar_stream_write_meta(copy, rec.json))) goto fail;
        } else if (read_tensor(r, &rec, copy, keep_hidden, d)) goto fail;
    }
    if (rc < 0) goto fail;
    ar_stream_reader_close(r);
    r = NULL;
    if (keep_hidden && (!d->ids || !d->hidden)) {
        ar_error("%s: not a calibration stream (needs input_ids and hidden)", src);
        goto fail;
    }
    if (!d->ids) {
        ar_error("%s: not a calibration stream (no input_ids)", src);
        goto fail;
    }
    return 0;
fail:
    ar_stream_reader_close(r);
    ar_calib_data_free(d);
    return -1;
}

int ar_calib_stream_load(const char *path, ar_calib_data *d)
{
    int is_stdin = !path || !strcmp(path, "-");
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        memset(d, 0, sizeof *d);
        return ar_error("%s: cannot open", path);
    }
    int rc = ar_calib_stream_read(f, is_stdin ? "<stdin>" : path, NULL, 1, d);
    if (!is_stdin) fclose(f);
    return rc;
}

void ar_calib_data_free(ar_calib_data *d)
{
    free(d->src); free(d->model); free(d->config_digest); free(d->ids); free(d->hidden); free(d->layer_config);
    memset(d, 0, sizeof *d);
}
