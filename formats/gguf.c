/* gguf.c — GGUF reader (mmap, validated) and streaming writer. */
#include "gguf.h"
#include "array_grow.h"
#include "error.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const size_t scalar_size[AR_GGUF_VTYPE_COUNT] = {
    [AR_GGUF_UINT8] = 1, [AR_GGUF_INT8] = 1, [AR_GGUF_UINT16] = 2, [AR_GGUF_INT16] = 2,
    [AR_GGUF_UINT32] = 4, [AR_GGUF_INT32] = 4, [AR_GGUF_FLOAT32] = 4, [AR_GGUF_BOOL] = 1,
    [AR_GGUF_UINT64] = 8, [AR_GGUF_INT64] = 8, [AR_GGUF_FLOAT64] = 8,
};

/* ---- reader ---------------------------------------------------------------- */

struct ar_gguf {
    char           *path;
    const uint8_t  *map;
    size_t          size;
    uint32_t        version;
    uint64_t        n_kv, n_tensors;
    ar_gguf_kv     *kv;
    ar_gguf_tensor *tensors;
    void          **owned;        /* copies of keys, names, string values, string-array offsets */
    size_t          n_owned, cap_owned;
    size_t          data_start;
};

/* A bounded cursor over the mapping: every read checks the remaining size. */
typedef struct {
    ar_gguf *g;
    size_t   pos;
} cursor;

/* ar_error with the file name in front. */
__attribute__((format(printf, 2, 3))) static int fail(ar_gguf *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = ar_verror_at(g->path, 512, fmt, ap);
    va_end(ap);
    return rc;
}

static int take(cursor *c, size_t n, const void **out, const char *what)
{
    *out = NULL;
    if (n > c->g->size - c->pos)
        return fail(c->g, "%s at offset %zu runs past end of file (size %zu)", what, c->pos, c->g->size);
    *out = c->g->map + c->pos;
    c->pos += n;
    return 0;
}

static int read_u32(cursor *c, uint32_t *v, const char *what)
{
    const void *p = NULL;
    if (take(c, 4, &p, what)) return -1;
    memcpy(v, p, 4);
    return 0;
}

static int read_u64(cursor *c, uint64_t *v, const char *what)
{
    const void *p = NULL;
    if (take(c, 8, &p, what)) return -1;
    memcpy(v, p, 8);
    return 0;
}

/* Remember a heap block to free at close; frees it and fails when out of memory. */
static void *own(ar_gguf *g, void *p)
{
    if (!p) return NULL;
    void **o = ar_array_reserve(g->owned, g->n_owned, &g->cap_owned, sizeof *o, 64);
    if (!o) { free(p); return NULL; }
    g->owned = o;
    return g->owned[g->n_owned++] = p;
}

/* NUL-terminated copy of n bytes (n is already bounded by the file size). */
static const char *stash(ar_gguf *g, const char *s, size_t n)
{
    char *d = own(g, malloc(n + 1));
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static int read_string(cursor *c, const char **s, uint64_t *len, const char *what)
{
    const void *p = NULL;
    if (read_u64(c, len, what)) return -1;
    if (*len > c->g->size - c->pos)
        return fail(c->g, "%s length %llu exceeds the %zu bytes left in the file", what, (unsigned long long)*len, c->g->size - c->pos);
    if (take(c, (size_t)*len, &p, what)) return -1;
    *s = p;
    return 0;
}

/* Offsets of a string array's elements, grown as they are read (so a claimed
 * count costs memory only once the file proves to hold that many strings). */
static int read_str_array(cursor *c, ar_gguf_kv *kv)
{
    uint64_t *off = NULL, cap = 0;
    for (uint64_t i = 0; i < kv->n; i++) {
        const char *s;
        uint64_t len;
        if (i == cap) {
            cap = cap ? 2 * cap : 256;
            uint64_t *o = realloc(off, sizeof *o * cap);
            if (!o) { free(off); return ar_error("%s: out of memory", c->g->path); }
            off = o;
        }
        off[i] = c->pos;
        if (read_string(c, &s, &len, "array string")) { free(off); return -1; }
    }
    if (kv->n && !own(c->g, off)) return ar_error("%s: out of memory", c->g->path);
    kv->str_off = off;
    return 0;
}

static int read_kv_value(cursor *c, ar_gguf_kv *kv)
{
    ar_gguf *g = c->g;
    uint32_t type;
    if (read_u32(c, &type, "value type")) return -1;
    if (type >= AR_GGUF_VTYPE_COUNT) return fail(g, "key '%s': unknown value type %u", kv->key, type);
    kv->type = kv->elem_type = type;
    kv->n = 1;
    if (type == AR_GGUF_STRING) {
        const char *s;
        uint64_t len;
        if (read_string(c, &s, &len, "string value")) return -1;
        kv->str = stash(g, s, (size_t)len);
        return kv->str ? 0 : ar_error("%s: out of memory", g->path);
    }
    if (type != AR_GGUF_ARRAY) return take(c, scalar_size[type], &kv->data, "value");
    uint32_t et;
    if (read_u32(c, &et, "array type") || read_u64(c, &kv->n, "array length")) return -1;
    if (et >= AR_GGUF_VTYPE_COUNT || et == AR_GGUF_ARRAY)
        return fail(g, "key '%s': array of unsupported type %u", kv->key, et);
    kv->elem_type = et;
    size_t esz = et == AR_GGUF_STRING ? 8 : scalar_size[et];
    if (kv->n > (g->size - c->pos) / esz)
        return fail(g, "key '%s': array of %llu elements exceeds the file (%zu bytes left)", kv->key,
                    (unsigned long long)kv->n, g->size - c->pos);
    if (et != AR_GGUF_STRING) return take(c, (size_t)(kv->n * esz), &kv->data, "array");
    return read_str_array(c, kv);
}

static int parse_kvs(cursor *c)
{
    ar_gguf *g = c->g;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const char *k;
        uint64_t len;
        if (read_string(c, &k, &len, "key")) return -1;
        if (!(g->kv[i].key = stash(g, k, (size_t)len))) return ar_error("%s: out of memory", g->path);
        if (read_kv_value(c, &g->kv[i])) return -1;
    }
    return 0;
}

static int check_alignment(ar_gguf *g, uint32_t *align)
{
    *align = AR_GGUF_DEFAULT_ALIGNMENT;
    const ar_gguf_kv *kv = ar_gguf_find_kv(g, "general.alignment");
    if (!kv) return 0;
    if (kv->type != AR_GGUF_UINT32) return ar_error("%s: general.alignment is not a u32", g->path);
    memcpy(align, kv->data, 4);
    if (*align == 0 || (*align & (*align - 1)) || *align > (1u << 20))
        return ar_error("%s: general.alignment %u is not a power of two", g->path, *align);
    return 0;
}

static int parse_tensor_info(cursor *c, ar_gguf_tensor *t)
{
    ar_gguf *g = c->g;
    const char *s;
    uint64_t len;
    uint32_t nd, type;
    if (read_string(c, &s, &len, "tensor name")) return -1;
    if (!(t->name = stash(g, s, (size_t)len))) return ar_error("%s: out of memory", g->path);
    if (read_u32(c, &nd, "tensor dims")) return -1;
    if (nd < 1 || nd > AR_GGUF_MAX_DIMS) return fail(g, "tensor '%s': %u dimensions (1 to %d allowed)", t->name, nd, AR_GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    for (int d = 0; d < AR_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t ne;
        if (read_u64(c, &ne, "tensor shape")) return -1;
        if (ne == 0 || ne > (uint64_t)INT64_MAX || numel > g->size / ne * 64)
            return fail(g, "tensor '%s': dimension %u is absurd (%llu)", t->name, d, (unsigned long long)ne);
        numel *= ne;
        t->ne[d] = (int64_t)ne;
    }
    if (read_u32(c, &type, "tensor type") || read_u64(c, &t->offset, "tensor offset")) return -1;
    if (type >= AR_GGML_TYPE_LIMIT || ar_ggml_block_elems(type) == 0)
        return fail(g, "tensor '%s': unknown ggml type %u", t->name, type);
    t->type = type;
    size_t row = ar_ggml_row_bytes(type, t->ne[0]);
    if (row == 0)
        return ar_error("%s: tensor '%s': row length %lld is not a multiple of %s's block", g->path, t->name,
                        (long long)t->ne[0], ar_ggml_type_name(type));
    t->nbytes = row * (size_t)(numel / (uint64_t)t->ne[0]);
    return 0;
}

static int by_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const ar_gguf_tensor *const *)a)->name, (*(const ar_gguf_tensor *const *)b)->name);
}

/* Names must be unique: sort pointers by name and compare neighbours. A
 * pairwise check is quadratic: a crafted 7 MB file of 100,000 tiny tensors
 * took 30 s to open, and the tensor count may reach 2^24. */
static int check_unique_names(ar_gguf *g)
{
    if (g->n_tensors < 2) return 0;
    const ar_gguf_tensor **p = malloc(sizeof *p * (size_t)g->n_tensors);
    if (!p) return ar_error("%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) p[i] = &g->tensors[i];
    qsort(p, (size_t)g->n_tensors, sizeof *p, by_tensor_name);
    int rc = 0;
    for (uint64_t i = 1; i < g->n_tensors && !rc; i++)
        if (!strcmp(p[i]->name, p[i - 1]->name)) rc = fail(g, "duplicate tensor name '%s'", p[i]->name);
    free(p);
    return rc;
}

static int place_tensors(ar_gguf *g, uint32_t align)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        ar_gguf_tensor *t = &g->tensors[i];
        if (t->offset % align)
            return fail(g, "tensor '%s': offset %llu is not a multiple of the alignment %u", t->name,
                        (unsigned long long)t->offset, align);
        if (t->offset > g->size - g->data_start || t->nbytes > g->size - g->data_start - t->offset)
            return fail(g, "tensor '%s': data at offset %llu runs past end of file (size %zu)", t->name,
                        (unsigned long long)(g->data_start + t->offset), g->size);
        t->data = g->map + g->data_start + t->offset;
    }
    return check_unique_names(g);
}

static int parse(ar_gguf *g)
{
    cursor c = {g, 0};
    const void *magic = NULL;
    uint32_t align;
    if (take(&c, 4, &magic, "magic")) return -1;
    if (memcmp(magic, "GGUF", 4)) return ar_error("%s: not a GGUF file (bad magic)", g->path);
    if (read_u32(&c, &g->version, "version")) return -1;
    if (g->version < 2 || g->version > 3) return ar_error("%s: unsupported GGUF version %u", g->path, g->version);
    if (read_u64(&c, &g->n_tensors, "tensor count") || read_u64(&c, &g->n_kv, "KV count")) return -1;
    /* each KV needs at least 12 bytes, each tensor info at least 28, and no model
     * has millions of either: bound before allocating */
    if (g->n_kv > g->size / 12 || g->n_kv > (1u << 20)) return fail(g, "KV count %llu is absurd for a file of %zu bytes", (unsigned long long)g->n_kv, g->size);
    if (g->n_tensors > g->size / 28 || g->n_tensors > (1u << 24))
        return fail(g, "tensor count %llu is absurd for a file of %zu bytes", (unsigned long long)g->n_tensors, g->size);
    g->kv = calloc(g->n_kv + 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors + 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return ar_error("%s: out of memory", g->path);
    if (parse_kvs(&c) || check_alignment(g, &align)) return -1;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (parse_tensor_info(&c, &g->tensors[i])) return -1;
    g->data_start = (c.pos + align - 1) / align * align;
    if (g->data_start > g->size && g->n_tensors)
        return ar_error("%s: data section starts past end of file", g->path);
    return place_tensors(g, align);
}

ar_gguf *ar_gguf_open(const char *path)
{
    ar_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) { free(g); ar_error("%s: out of memory", path); return NULL; }
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        ar_error("%s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        ar_gguf_close(g);
        return NULL;
    }
    g->size = (size_t)st.st_size;
    if (g->size > 0) {
        void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        g->map = m == MAP_FAILED ? NULL : m;
    }
    close(fd);
    if (!g->map) {
        ar_error("%s: %s", path, g->size ? "cannot map file" : "empty file, not GGUF");
        ar_gguf_close(g);
        return NULL;
    }
    if (parse(g)) { ar_gguf_close(g); return NULL; }
    return g;
}

void ar_gguf_close(ar_gguf *g)
{
    if (!g) return;
    if (g->map) munmap((void *)g->map, g->size);
    for (size_t i = 0; i < g->n_owned; i++) free(g->owned[i]);
    free(g->owned); free(g->kv); free(g->tensors); free(g->path);
    free(g);
}

uint32_t ar_gguf_version(const ar_gguf *g) { return g->version; }
size_t ar_gguf_n_kv(const ar_gguf *g) { return (size_t)g->n_kv; }
const ar_gguf_kv *ar_gguf_kv_at(const ar_gguf *g, size_t i) { return i < g->n_kv ? &g->kv[i] : NULL; }
size_t ar_gguf_n_tensors(const ar_gguf *g) { return (size_t)g->n_tensors; }
const ar_gguf_tensor *ar_gguf_tensor_at(const ar_gguf *g, size_t i) { return i < g->n_tensors ? &g->tensors[i] : NULL; }

const ar_gguf_kv *ar_gguf_find_kv(const ar_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && !strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const ar_gguf_tensor *ar_gguf_find_tensor(const ar_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

/* A float value as int64: truncated, saturated at the int64 range, 0 for NaN
 * (a plain cast of an out-of-range float is undefined behaviour). */
static int64_t float_to_int(double x)
{
    if (!(x == x)) return 0;
    if (x >= 9223372036854775807.0) return INT64_MAX;
    if (x <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)x;
}

/* Read element i of type t at p as double and as int64. */
static void scalar_at(ar_gguf_vtype t, const uint8_t *p, double *f, int64_t *n)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } v;
    memcpy(&v, p, scalar_size[t]);
    switch (t) {
    case AR_GGUF_UINT8: case AR_GGUF_BOOL: *n = v.u8; *f = v.u8; break;
    case AR_GGUF_INT8: *n = v.i8; *f = v.i8; break;
    case AR_GGUF_UINT16: *n = v.u16; *f = v.u16; break;
    case AR_GGUF_INT16: *n = v.i16; *f = v.i16; break;
    case AR_GGUF_UINT32: *n = v.u32; *f = v.u32; break;
    case AR_GGUF_INT32: *n = v.i32; *f = v.i32; break;
    case AR_GGUF_FLOAT32: *n = float_to_int(v.f32); *f = v.f32; break;
    case AR_GGUF_UINT64: *n = (int64_t)v.u64; *f = (double)v.u64; break;
    case AR_GGUF_INT64: *n = v.i64; *f = (double)v.i64; break;
    case AR_GGUF_FLOAT64: *n = float_to_int(v.f64); *f = v.f64; break;
    default: *n = 0; *f = 0; break;
    }
}

static int numeric(ar_gguf_vtype t) { return t < AR_GGUF_VTYPE_COUNT && scalar_size[t] > 0; }

int64_t ar_gguf_kv_int(const ar_gguf_kv *kv)
{
    double f;
    int64_t n = 0;
    if (kv->type != AR_GGUF_ARRAY && numeric(kv->type)) scalar_at(kv->type, kv->data, &f, &n);
    return n;
}

double ar_gguf_kv_float(const ar_gguf_kv *kv)
{
    double f = 0;
    int64_t n;
    if (kv->type != AR_GGUF_ARRAY && numeric(kv->type)) scalar_at(kv->type, kv->data, &f, &n);
    return f;
}

/* "<arch>.<key>" into k (cap bytes; longer keys are cut, and then not found) */
static const char *arch_key(char *k, size_t cap, const char *arch, const char *key)
{
    snprintf(k, cap, "%s.%s", arch, key);
    return k;
}

const ar_gguf_kv *ar_gguf_find_arch_kv(const ar_gguf *g, const char *arch, const char *key)
{
    char k[160];
    return ar_gguf_find_kv(g, arch_key(k, sizeof k, arch, key));
}

int64_t ar_gguf_arch_int(const ar_gguf *g, const char *arch, const char *key, int64_t def)
{
    const ar_gguf_kv *kv = ar_gguf_find_arch_kv(g, arch, key);
    return kv ? ar_gguf_kv_int(kv) : def;
}

double ar_gguf_arch_float(const ar_gguf *g, const char *arch, const char *key, double def)
{
    const ar_gguf_kv *kv = ar_gguf_find_arch_kv(g, arch, key);
    return kv ? ar_gguf_kv_float(kv) : def;
}

double ar_gguf_kv_arr_float(const ar_gguf_kv *kv, uint64_t i)
{
    double f = 0;
    int64_t n;
    if (kv->type == AR_GGUF_ARRAY && numeric(kv->elem_type) && i < kv->n)
        scalar_at(kv->elem_type, (const uint8_t *)kv->data + i * scalar_size[kv->elem_type], &f, &n);
    return f;
}

int64_t ar_gguf_kv_arr_int(const ar_gguf_kv *kv, uint64_t i)
{
    double f;
    int64_t n = 0;
    if (kv->type == AR_GGUF_ARRAY && numeric(kv->elem_type) && i < kv->n)
        scalar_at(kv->elem_type, (const uint8_t *)kv->data + i * scalar_size[kv->elem_type], &f, &n);
    return n;
}

int ar_gguf_kv_arr_str(const ar_gguf *g, const ar_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len)
{
    if (kv->type != AR_GGUF_ARRAY || kv->elem_type != AR_GGUF_STRING || i >= kv->n)
        return ar_error("%s: '%s' has no string element %llu", g->path, kv->key, (unsigned long long)i);
    memcpy(len, g->map + kv->str_off[i], 8);
    *s = (const char *)g->map + kv->str_off[i] + 8;
    return 0;
}

int64_t ar_gguf_tensor_numel(const ar_gguf_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->ne[d];
    return n;
}

int ar_gguf_tensor_f32(const ar_gguf_tensor *t, float *dst)
{
    if (ar_ggml_dequantize(t->type, t->data, dst, ar_gguf_tensor_numel(t))) return ar_error_prefix(t->name);
    return 0;
}

/* ---- writer ---------------------------------------------------------------- */

typedef struct {
    char    *key;
    uint8_t *val;     /* serialized: u32 type then the value */
    size_t   len;
} wkv;

typedef struct {
    char        *name;
    ar_ggml_type type;
    int          n_dims;
    int64_t      ne[AR_GGUF_MAX_DIMS];
    uint64_t     offset;
} wtensor;

struct ar_gguf_writer {
    char    *path, *tmp, *spool_path;
    FILE    *spool;
    uint64_t spool_size;
    wkv     *kv;
    size_t   n_kv, cap_kv;
    wtensor *t;
    size_t   n_t, cap_t;
};

/* A growable byte buffer for serializing values. */
typedef struct { uint8_t *p; size_t n, cap; int oom; } buf;

static void put(buf *b, const void *src, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 64) + n;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p; b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) { uint64_t n = strlen(s); put_u64(b, n); put(b, s, n); }

static char *path_with(const char *path, const char *suffix)
{
    size_t n = strlen(path) + strlen(suffix) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s", path, suffix);
    return s;
}

ar_gguf_writer *ar_gguf_writer_open(const char *path)
{
    ar_gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = path_with(path, ".tmp")) ||
        !(w->spool_path = path_with(path, ".tmp.data"))) {
        ar_error("%s: out of memory", path);
        ar_gguf_writer_abort(w);
        return NULL;
    }
    if (!(w->spool = fopen(w->spool_path, "wb+"))) {
        ar_error("%s: %s", w->spool_path, strerror(errno));
        ar_gguf_writer_abort(w);
        return NULL;
    }
    return w;
}

static int set_value(ar_gguf_writer *w, const char *key, buf *b)
{
    if (b->oom) { free(b->p); return ar_error("%s: out of memory", w->path); }
    for (size_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].val);
            w->kv[i].val = b->p; w->kv[i].len = b->n;
            return 0;
        }
    wkv *kv = ar_array_reserve(w->kv, w->n_kv, &w->cap_kv, sizeof *kv, 32);
    if (!kv) { free(b->p); return ar_error("%s: out of memory", w->path); }
    w->kv = kv;
    char *k = strdup(key);
    if (!k) { free(b->p); return ar_error("%s: out of memory", w->path); }
    w->kv[w->n_kv++] = (wkv){k, b->p, b->n};
    return 0;
}

static int set_scalar(ar_gguf_writer *w, const char *key, ar_gguf_vtype t, const void *v)
{
    buf b = {0};
    put_u32(&b, t);
    put(&b, v, scalar_size[t]);
    return set_value(w, key, &b);
}

int ar_gguf_set_u32(ar_gguf_writer *w, const char *key, uint32_t v) { return set_scalar(w, key, AR_GGUF_UINT32, &v); }
int ar_gguf_set_i32(ar_gguf_writer *w, const char *key, int32_t v) { return set_scalar(w, key, AR_GGUF_INT32, &v); }
int ar_gguf_set_u64(ar_gguf_writer *w, const char *key, uint64_t v) { return set_scalar(w, key, AR_GGUF_UINT64, &v); }
int ar_gguf_set_f32(ar_gguf_writer *w, const char *key, float v) { return set_scalar(w, key, AR_GGUF_FLOAT32, &v); }

int ar_gguf_set_bool(ar_gguf_writer *w, const char *key, int v)
{
    uint8_t b = v ? 1 : 0;
    return set_scalar(w, key, AR_GGUF_BOOL, &b);
}

int ar_gguf_set_arch_u32(ar_gguf_writer *w, const char *arch, const char *key, uint32_t v)
{
    char k[160];
    return ar_gguf_set_u32(w, arch_key(k, sizeof k, arch, key), v);
}

int ar_gguf_set_arch_f32(ar_gguf_writer *w, const char *arch, const char *key, float v)
{
    char k[160];
    return ar_gguf_set_f32(w, arch_key(k, sizeof k, arch, key), v);
}

int ar_gguf_set_arch_bool(ar_gguf_writer *w, const char *arch, const char *key, int v)
{
    char k[160];
    return ar_gguf_set_bool(w, arch_key(k, sizeof k, arch, key), v);
}

int ar_gguf_set_str(ar_gguf_writer *w, const char *key, const char *v)
{
    buf b = {0};
    put_u32(&b, AR_GGUF_STRING);
    put_str(&b, v);
    return set_value(w, key, &b);
}

int ar_gguf_set_arr(ar_gguf_writer *w, const char *key, ar_gguf_vtype et, const void *v, uint64_t n)
{
    if (!numeric(et)) return ar_error("%s: key '%s': bad array element type %d", w->path, key, (int)et);
    buf b = {0};
    put_u32(&b, AR_GGUF_ARRAY);
    put_u32(&b, et);
    put_u64(&b, n);
    put(&b, v, (size_t)n * scalar_size[et]);
    return set_value(w, key, &b);
}

int ar_gguf_set_arr_str(ar_gguf_writer *w, const char *key, const char *const *v, uint64_t n)
{
    buf b = {0};
    put_u32(&b, AR_GGUF_ARRAY);
    put_u32(&b, AR_GGUF_STRING);
    put_u64(&b, n);
    for (uint64_t i = 0; i < n; i++) put_str(&b, v[i]);
    return set_value(w, key, &b);
}

static int pad_spool(ar_gguf_writer *w)
{
    static const uint8_t zeros[AR_GGUF_DEFAULT_ALIGNMENT];
    size_t pad = (size_t)((AR_GGUF_DEFAULT_ALIGNMENT - w->spool_size % AR_GGUF_DEFAULT_ALIGNMENT) %
                          AR_GGUF_DEFAULT_ALIGNMENT);
    if (pad && fwrite(zeros, 1, pad, w->spool) != pad) return ar_error("%s: %s", w->spool_path, strerror(errno));
    w->spool_size += pad;
    return 0;
}

static int check_new_tensor(ar_gguf_writer *w, const char *name, ar_ggml_type type, int n_dims, const int64_t *ne,
                            size_t nbytes)
{
    if (n_dims < 1 || n_dims > AR_GGUF_MAX_DIMS)
        return ar_error("%s: tensor '%s': %d dimensions", w->path, name, n_dims);
    size_t row = ar_ggml_row_bytes(type, ne[0]), rows = 1;
    if (row == 0)
        return ar_error("%s: tensor '%s': row length %lld does not fit type %s", w->path, name, (long long)ne[0],
                        ar_ggml_type_name(type));
    for (int d = 1; d < n_dims; d++) {
        if (ne[d] < 1) return ar_error("%s: tensor '%s': dimension %d is %lld", w->path, name, d, (long long)ne[d]);
        rows *= (size_t)ne[d];
    }
    if (row * rows != nbytes)
        return ar_error("%s: tensor '%s': %zu bytes given, shape and type need %zu", w->path, name, nbytes, row * rows);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return ar_error("%s: duplicate tensor '%s'", w->path, name);
    return 0;
}

int ar_gguf_writer_add_tensor(ar_gguf_writer *w, const char *name, ar_ggml_type type, int n_dims,
                              const int64_t *ne, const void *data, size_t nbytes)
{
    if (check_new_tensor(w, name, type, n_dims, ne, nbytes)) return -1;
    wtensor *tensors = ar_array_reserve(w->t, w->n_t, &w->cap_t, sizeof *tensors, 64);
    if (!tensors) return ar_error("%s: out of memory", w->path);
    w->t = tensors;
    wtensor *t = &w->t[w->n_t];
    if (!(t->name = strdup(name))) return ar_error("%s: out of memory", w->path);
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < AR_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->offset = w->spool_size;
    w->n_t++;
    if (fwrite(data, 1, nbytes, w->spool) != nbytes) return ar_error("%s: %s", w->spool_path, strerror(errno));
    w->spool_size += nbytes;
    return pad_spool(w);
}

static void serialize_header(const ar_gguf_writer *w, buf *b)
{
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, w->n_t);
    put_u64(b, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(b, w->kv[i].key);
        put(b, w->kv[i].val, w->kv[i].len);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        put_str(b, t->name);
        put_u32(b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(b, (uint64_t)t->ne[d]);
        put_u32(b, t->type);
        put_u64(b, t->offset);
    }
    static const uint8_t zeros[AR_GGUF_DEFAULT_ALIGNMENT];
    put(b, zeros, (AR_GGUF_DEFAULT_ALIGNMENT - b->n % AR_GGUF_DEFAULT_ALIGNMENT) % AR_GGUF_DEFAULT_ALIGNMENT);
}

static int copy_spool(ar_gguf_writer *w, FILE *out)
{
    char chunk[1 << 16];
    size_t n;
    if (fflush(w->spool) || fseek(w->spool, 0, SEEK_SET)) return ar_error("%s: %s", w->spool_path, strerror(errno));
    while ((n = fread(chunk, 1, sizeof chunk, w->spool)) > 0)
        if (fwrite(chunk, 1, n, out) != n) return ar_error("%s: %s", w->tmp, strerror(errno));
    if (ferror(w->spool)) return ar_error("%s: read error", w->spool_path);
    return 0;
}

static void writer_free(ar_gguf_writer *w)
{
    for (size_t i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val); }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv); free(w->t); free(w->path); free(w->tmp); free(w->spool_path);
    free(w);
}

int ar_gguf_writer_finish(ar_gguf_writer *w)
{
    buf b = {0};
    serialize_header(w, &b);
    FILE *out = b.oom ? NULL : fopen(w->tmp, "wb");
    int rc = 0;
    if (b.oom) rc = ar_error("%s: out of memory", w->path);
    else if (!out) rc = ar_error("%s: %s", w->tmp, strerror(errno));
    else if (fwrite(b.p, 1, b.n, out) != b.n) rc = ar_error("%s: %s", w->tmp, strerror(errno));
    else rc = copy_spool(w, out);
    if (out && fclose(out) && !rc) rc = ar_error("%s: %s", w->tmp, strerror(errno));
    free(b.p);
    if (!rc && rename(w->tmp, w->path)) rc = ar_error("%s: rename: %s", w->path, strerror(errno));
    if (rc) {
        ar_gguf_writer_abort(w);
        return -1;
    }
    fclose(w->spool);
    unlink(w->spool_path);
    writer_free(w);
    return 0;
}

void ar_gguf_writer_abort(ar_gguf_writer *w)
{
    if (!w) return;
    if (w->spool) fclose(w->spool);
    if (w->spool_path) unlink(w->spool_path);
    if (w->tmp) unlink(w->tmp);
    writer_free(w);
}
