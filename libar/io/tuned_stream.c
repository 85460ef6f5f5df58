/* tuned_stream.c — ar-tune's stream of tuned layers (see tuned_stream.h). */
#include "tuned_stream.h"
#include "error.h"
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- writing ----------------------------------------------------------------- */

char *ar_tuned_meta_json(const char *model, const ar_scheme *def, int mixed_bits, const char *tuning_json)
{
    cJSON *m = cJSON_CreateObject(), *t = cJSON_Parse(tuning_json);
    char *txt = NULL;
    if (m && t) {
        cJSON_AddStringToObject(m, "ar", "tune");
        cJSON_AddNumberToObject(m, "version", 1);
        cJSON_AddStringToObject(m, "model", model);
        cJSON_AddStringToObject(m, "scheme", def->name);
        cJSON_AddNumberToObject(m, "bits", def->bits);
        cJSON_AddNumberToObject(m, "group_size", def->group_size);
        cJSON_AddBoolToObject(m, "sym", def->sym);
        cJSON_AddStringToObject(m, "data_type", def->data_type);
        cJSON_AddNumberToObject(m, "group_2d", def->group_2d);
        cJSON_AddNumberToObject(m, "act_bits", def->act_bits);
        cJSON_AddNumberToObject(m, "act_group_size", def->act_group_size);
        cJSON_AddBoolToObject(m, "act_sym", def->act_sym);
        cJSON_AddBoolToObject(m, "act_dynamic", def->act_dynamic);
        cJSON_AddStringToObject(m, "act_data_type", def->act_data_type);
        cJSON_AddBoolToObject(m, "mixed_bits", mixed_bits);
        cJSON_AddItemToObject(m, "tuning", t);
        t = NULL;
        txt = cJSON_PrintUnformatted(m);
    }
    cJSON_Delete(m);
    cJSON_Delete(t);
    if (!txt) ar_error("the tuned stream's META: out of memory or a malformed tuning object");
    return txt;
}

int ar_tuned_write_linear(ar_stream_writer *w, const char *base, const ar_scheme *s, int n, int k,
                          const ar_quant_out *q, const float *global_scale, float act_max)
{
    char name[300], attrs[1200];
    int ng = ar_quant_ngroups(k, s->group_size);
    snprintf(attrs, sizeof attrs,
             "{\"bits\":%d,\"group_size\":%d,\"sym\":%s,\"data_type\":\"%s\",\"scheme\":\"%s\","
             "\"group_2d\":%d,\"act_bits\":%d,\"act_group_size\":%d,\"act_sym\":%s,\"act_dynamic\":%s,"
             "\"act_data_type\":\"%s\"}",
             s->bits, s->group_size, s->sym ? "true" : "false", s->data_type, s->name, s->group_2d, s->act_bits,
             s->act_group_size, s->act_sym ? "true" : "false", s->act_dynamic ? "true" : "false", s->act_data_type);
    int64_t one[1] = {1};
    if (global_scale) {
        snprintf(name, sizeof name, "%s.global_scale", base);
        if (ar_stream_write_tensor(w, name, AR_F32, 1, one, "{}", global_scale)) return -1;
    }
    if (s->act_bits < 16 && act_max > 0) {
        snprintf(name, sizeof name, "%s.act_max", base);
        if (ar_stream_write_tensor(w, name, AR_F32, 1, one, "{}", &act_max)) return -1;
    }
    int64_t wshape[2] = {n, k}, gshape[2] = {n, ng};
    snprintf(name, sizeof name, "%s.qweight", base);
    if (ar_stream_write_tensor(w, name, AR_U8, 2, wshape, attrs, q->codes)) return -1;
    snprintf(name, sizeof name, "%s.scale", base);
    if (ar_stream_write_tensor(w, name, AR_F32, 2, gshape, "{}", q->scale)) return -1;
    snprintf(name, sizeof name, "%s.zp", base);
    return ar_stream_write_tensor(w, name, AR_I32, 2, gshape, "{}", q->zp);
}

int ar_tuned_write_gguf(ar_stream_writer *w, const char *hf_name, ar_ggml_type t, int64_t rows, int64_t cols,
                        const void *blocks, size_t nbytes)
{
    char name[300], attrs[160];
    snprintf(name, sizeof name, "%s.gguf", hf_name);
    snprintf(attrs, sizeof attrs, "{\"ggml_type\":\"%s\",\"rows\":%lld,\"cols\":%lld}", ar_ggml_type_name(t),
             (long long)rows, (long long)cols);
    int64_t shape[1] = {(int64_t)nbytes};
    return ar_stream_write_tensor(w, name, AR_U8, 1, shape, attrs, blocks);
}

int ar_tuned_write_kv_scales(ar_stream_writer *w, const char *attn, float k_scale, float v_scale)
{
    char name[300];
    int64_t one[1] = {1};
    const char *attrs = "{\"kv_cache_dtype\":\"fp8_e4m3\"}";
    snprintf(name, sizeof name, "%s.k_scale", attn);
    if (ar_stream_write_tensor(w, name, AR_F32, 1, one, attrs, &k_scale)) return -1;
    snprintf(name, sizeof name, "%s.v_scale", attn);
    return ar_stream_write_tensor(w, name, AR_F32, 1, one, attrs, &v_scale);
}

/* ---- reading ----------------------------------------------------------------- */

struct ar_tuned_reader {
    ar_stream_reader *r;
    char *src;
    ar_tuned_meta meta;
    ar_record rec;          /* a record read ahead, its payload unread, when pending */
    int pending, eof;
    ar_tuned_item cur;      /* the linear being assembled (name "" when none) */
    ar_tuned_item out;      /* the item handed out last */
};

static int json_int(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valueint : cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* The attributes in o. Absent keys: bits and group_size the caller's
 * defaults (META and layer records differ), sym 1, group_2d 0, act_bits 16,
 * act_group_size and act_sym the weight's, act_dynamic 1; the type names keep
 * what *a held. */
static void read_attrs(const cJSON *o, int bits, int group_size, ar_tuned_attrs *a)
{
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(o, "data_type");
    const cJSON *adt = cJSON_GetObjectItemCaseSensitive(o, "act_data_type");
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

/* A block range's "blocks" [first, last] and "n_layers" (0 <= first <= last
 * < n_layers), else -1 -1. */
static int read_range(ar_tuned_reader *t, const cJSON *o)
{
    ar_tuned_meta *m = &t->meta;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "blocks"), *nl = cJSON_GetObjectItemCaseSensitive(o, "n_layers");
    m->blocks[0] = m->blocks[1] = -1;
    if (!b) return 0;
    const cJSON *b0 = cJSON_GetArrayItem(b, 0), *b1 = cJSON_GetArrayItem(b, 1);
    if (!cJSON_IsArray(b) || cJSON_GetArraySize(b) != 2 || !cJSON_IsNumber(b0) || !cJSON_IsNumber(b1) ||
        !cJSON_IsNumber(nl) || b0->valuedouble < 0 || b0->valuedouble > b1->valuedouble ||
        b1->valuedouble >= nl->valuedouble || nl->valuedouble > 1 << 20)
        return ar_error("%s: META blocks must be [first, last] with 0 <= first <= last < n_layers", t->src);
    m->blocks[0] = b0->valueint, m->blocks[1] = b1->valueint, m->n_layers = nl->valueint;
    return 0;
}

static int read_meta(ar_tuned_reader *t, const char *json)
{
    cJSON *o = cJSON_Parse(json);
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(o, "ar"), *v;
    if (!cJSON_IsString(ar) || strcmp(ar->valuestring, "tune")) {
        cJSON_Delete(o);
        return ar_error("%s: not an ar-tune stream (META \"ar\" is not \"tune\")", t->src);
    }
    ar_tuned_meta *m = &t->meta;
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "model")))
        snprintf(m->model, sizeof m->model, "%s", v->valuestring);
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "scheme")))
        snprintf(m->scheme, sizeof m->scheme, "%s", v->valuestring);
    read_attrs(o, 4, 128, &m->attrs);
    m->mixed_bits = json_int(o, "mixed_bits", 0);
    if (!m->attrs.data_type[0]) snprintf(m->attrs.data_type, sizeof m->attrs.data_type, "int");
    const cJSON *tu = cJSON_GetObjectItemCaseSensitive(o, "tuning");
    m->tuning_json = tu ? cJSON_PrintUnformatted(tu) : NULL;
    m->json = strdup(json);
    int rc = m->json ? read_range(t, o) : ar_error("%s: out of memory", t->src);
    cJSON_Delete(o);
    return rc;
}

ar_tuned_reader *ar_tuned_reader_open(FILE *f, const char *src)
{
    ar_tuned_reader *t = calloc(1, sizeof *t);
    if (!t || !(t->src = strdup(src))) {
        free(t);
        ar_error("%s: out of memory", src);
        return NULL;
    }
    ar_record rec;
    int rc = -1;
    if ((t->r = ar_stream_reader_open(f, src)) && (rc = ar_stream_next(t->r, &rec)) >= 0) {
        if (rc == 0 || rec.kind != AR_REC_META) rc = ar_error("%s: stream does not start with ar-tune's META record", src);
        else rc = read_meta(t, rec.json);
    }
    if (rc < 0) {
        ar_tuned_reader_close(t);
        return NULL;
    }
    return t;
}

const ar_tuned_meta *ar_tuned_reader_meta(const ar_tuned_reader *t) { return &t->meta; }

static void item_free(ar_tuned_item *it)
{
    free(it->codes); free(it->scale); free(it->zp); free(it->blocks);
    memset(it, 0, sizeof *it);
}

/* Split "model.layers.0.mlp.up_proj.qweight" into the layer and the field. */
static const char *split_field(const char *name, char *layer, size_t cap)
{
    const char *dot = strrchr(name, '.');
    if (!dot || (size_t)(dot - name) >= cap) return NULL;
    memcpy(layer, name, dot - name);
    layer[dot - name] = 0;
    return dot + 1;
}

/* The pending "<tensor>.gguf" record into t->out. */
static int read_gguf(ar_tuned_reader *t, const char *tensor)
{
    const ar_record *rec = &t->rec;
    if (rec->dtype != AR_U8 || rec->ndim != 1) return ar_error("%s: %s must be u8 [nbytes]", t->src, rec->name);
    cJSON *at = cJSON_Parse(rec->json);
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(at, "ggml_type");
    int type = cJSON_IsString(ty) ? ar_ggml_type_parse(ty->valuestring) : -1;
    long long rows = json_int(at, "rows", 0), cols = json_int(at, "cols", 0);
    cJSON_Delete(at);
    if (type < 0 || rows <= 0 || cols <= 0)
        return ar_error("%s: %s lacks a known ggml_type, rows and cols", t->src, rec->name);
    ar_tuned_item *o = &t->out;
    o->kind = AR_TUNED_GGUF;
    snprintf(o->name, sizeof o->name, "%s", tensor);
    o->type = (ar_ggml_type)type;
    o->rows = rows;
    o->cols = cols;
    o->nbytes = rec->nelem;
    return (o->blocks = ar_stream_read_payload(t->r)) ? 0 : -1;
}

/* Read one f32 [1] field into *v. */
static int read_scalar(ar_tuned_reader *t, float *v)
{
    if (t->rec.dtype != AR_F32 || t->rec.nelem != 1) return ar_error("%s: %s must be one f32", t->src, t->rec.name);
    return ar_stream_read_data(t->r, v, sizeof *v);
}

/* The pending "<attn>.k_scale" / ".v_scale" record into t->out. */
static int read_kv_scale(ar_tuned_reader *t)
{
    ar_tuned_item *o = &t->out;
    if (read_scalar(t, &o->kv_scale)) return -1;
    if (!(o->kv_scale > 0) || isinf(o->kv_scale))
        return ar_error("%s: %s must be a finite scale > 0, not %g", t->src, t->rec.name, o->kv_scale);
    o->kind = AR_TUNED_KV_SCALE;
    snprintf(o->name, sizeof o->name, "%s", t->rec.name);
    return 0;
}

/* The pending record into the linear being assembled. */
static int read_field(ar_tuned_reader *t, const char *field)
{
    const ar_record *rec = &t->rec;
    ar_tuned_item *l = &t->cur;
    void **dst;
    if (!strcmp(field, "qweight")) {
        if (rec->dtype != AR_U8 || rec->ndim != 2) return ar_error("%s: %s must be u8 [N, K]", t->src, rec->name);
        cJSON *at = cJSON_Parse(rec->json);
        l->n = (int)rec->shape[0];
        l->k = (int)rec->shape[1];
        read_attrs(at, 0, 0, &l->attrs);
        cJSON_Delete(at);
        dst = (void **)&l->codes;
    } else if (!strcmp(field, "scale")) {
        if (rec->dtype != AR_F32 || rec->ndim != 2) return ar_error("%s: %s must be f32 [N, groups]", t->src, rec->name);
        dst = (void **)&l->scale;
    } else if (!strcmp(field, "zp")) {
        if (rec->dtype != AR_I32 || rec->ndim != 2) return ar_error("%s: %s must be i32 [N, groups]", t->src, rec->name);
        dst = (void **)&l->zp;
    } else if (!strcmp(field, "global_scale")) {
        return read_scalar(t, &l->global_scale);
    } else if (!strcmp(field, "act_max")) {
        return read_scalar(t, &l->act_max);
    } else return ar_error("%s: unexpected record '%s'", t->src, rec->name);
    free(*dst);
    return (*dst = ar_stream_read_payload(t->r)) ? 0 : -1;
}

/* Hand the assembled linear out. */
static int hand_out(ar_tuned_reader *t, const ar_tuned_item **it)
{
    if (!t->cur.codes || !t->cur.scale)
        return ar_error("%s: layer %s lacks its qweight or scale record", t->src, t->cur.name);
    t->out = t->cur;
    memset(&t->cur, 0, sizeof t->cur);
    *it = &t->out;
    return 1;
}

int ar_tuned_reader_next(ar_tuned_reader *t, const ar_tuned_item **it)
{
    item_free(&t->out);
    for (;;) {
        if (!t->pending) {
            int rc = t->eof ? 0 : ar_stream_next(t->r, &t->rec);
            if (rc < 0) return -1;
            if (rc == 0) {
                t->eof = 1;
                return t->cur.name[0] ? hand_out(t, it) : 0;
            }
            if (t->rec.kind != AR_REC_TENSOR) continue;
            t->pending = 1;
        }
        char layer[256];
        const char *field = split_field(t->rec.name, layer, sizeof layer);
        if (!field) return ar_error("%s: unexpected record '%s'", t->src, t->rec.name);
        int gguf = !strcmp(field, "gguf"), kv = !strcmp(field, "k_scale") || !strcmp(field, "v_scale");
        if (t->cur.name[0] && (gguf || kv || strcmp(layer, t->cur.name))) return hand_out(t, it);
        t->pending = 0;
        if (gguf || kv) {
            if (gguf ? read_gguf(t, layer) : read_kv_scale(t)) return -1;
            *it = &t->out;
            return 1;
        }
        if (!t->cur.name[0]) {
            t->cur.kind = AR_TUNED_LINEAR;
            snprintf(t->cur.name, sizeof t->cur.name, "%s", layer);
        }
        if (read_field(t, field)) return -1;
    }
}

void ar_tuned_reader_close(ar_tuned_reader *t)
{
    if (!t) return;
    ar_stream_reader_close(t->r);
    item_free(&t->cur);
    item_free(&t->out);
    free(t->meta.tuning_json);
    free(t->meta.json);
    free(t->src);
    free(t);
}
