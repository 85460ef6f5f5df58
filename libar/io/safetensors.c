/* safetensors.c — mmap reader and header validation (see safetensors.h).
 *
 * File layout: u64 little-endian header length N, N bytes of JSON, then the
 * data area; each tensor's data_offsets are relative to the data area. */
#include "safetensors.h"
#include "error.h"
#include "quant_fp.h"
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The safetensors format itself caps the header at 100 MB; anything larger is
 * a corrupt length field, refused before we allocate or parse. */
#define ST_MAX_HEADER (100u << 20)

typedef struct {
    char  *path;
    void  *map;
    size_t size;
} st_file;

struct ar_safetensors {
    st_file      *files;
    int           nfiles;
    ar_st_tensor *t;        /* sorted by name once everything is loaded */
    size_t        n, cap;
    char         *label;    /* file or index path, for messages about missing tensors */
    ar_st_fp8     fp8;      /* FP8 weights widened through their scales when fp8.on */
};

/* ---- small helpers ---------------------------------------------------- */

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ar_st_tensor *)a)->name, ((const ar_st_tensor *)b)->name);
}

/* A JSON number that is a whole number in [0, 2^53] (exact in a double). */
static int json_uint(const cJSON *j, int64_t *out)
{
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != floor(v)) return -1;
    *out = (int64_t)v;
    return 0;
}

static int push_tensor(ar_safetensors *st, const ar_st_tensor *t)
{
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        ar_st_tensor *nt = realloc(st->t, cap * sizeof *nt);
        if (!nt) return ar_error("out of memory");
        st->t = nt; st->cap = cap;
    }
    st->t[st->n++] = *t;
    return 0;
}

/* ---- mapping ------------------------------------------------------------ */

static int map_file(st_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ar_error("%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ar_error("%s: not a regular file", path);
    }
    f->size = (size_t)sb.st_size;
    f->path = strdup(path);
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            close(fd);
            return ar_error("%s: cannot map: %s", path, strerror(errno));
        }
    }
    close(fd);
    return f->path ? 0 : ar_error("out of memory");
}

static void unmap_file(st_file *f)
{
    if (f->map) munmap(f->map, f->size);
    free(f->path);
}

/* ---- header parsing ------------------------------------------------------ */

/* Fill t's dtype, shape, numel and nbytes from one header entry. */
static int parse_entry_type(const cJSON *e, ar_st_tensor *t, const char *path)
{
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsString(dt)) return ar_error("%s: tensor '%s' has no dtype string", path, t->name);
    int d = ar_dtype_parse(dt->valuestring);
    /* Only the upper-case safetensors spellings are valid in a file. */
    if (d < 0 || strcmp(dt->valuestring, ar_dtype_name(d)) == 0)
        return ar_error("%s: tensor '%s' has unknown dtype '%s'", path, t->name, dt->valuestring);
    t->dtype = (ar_dtype)d;
    if (!cJSON_IsArray(sh)) return ar_error("%s: tensor '%s' has no shape array", path, t->name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > AR_ST_MAX_DIMS) return ar_error("%s: tensor '%s' has %d dimensions (at most %d)", path, t->name, nd, AR_ST_MAX_DIMS);
    t->ndim = nd;
    t->numel = 1;
    for (int i = 0; i < nd; i++) {
        int64_t v;
        if (json_uint(cJSON_GetArrayItem(sh, i), &v)) return ar_error("%s: tensor '%s' shape[%d] is not a non-negative integer", path, t->name, i);
        t->shape[i] = v;
        /* Refuse element counts that overflow before they meet the offsets. */
        if (v && t->numel > INT64_MAX / 8 / v) return ar_error("%s: tensor '%s' shape is absurdly large", path, t->name);
        t->numel *= v;
    }
    t->nbytes = (size_t)t->numel * ar_dtype_size(t->dtype);
    return 0;
}

/* Check data_offsets [a,b] against the data area and the shape; set t->data. */
static int parse_entry_offsets(const cJSON *e, ar_st_tensor *t, const char *path, const char *data, size_t data_size, int64_t off[2])
{
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 ||
        json_uint(cJSON_GetArrayItem(of, 0), &off[0]) || json_uint(cJSON_GetArrayItem(of, 1), &off[1]))
        return ar_error("%s: tensor '%s' data_offsets is not a pair of non-negative integers", path, t->name);
    if (off[0] > off[1])
        return ar_error("%s: tensor '%s' data_offsets [%lld,%lld] are reversed", path, t->name, (long long)off[0], (long long)off[1]);
    if ((uint64_t)off[1] > data_size)
        return ar_error("%s: tensor '%s' data_offsets [%lld,%lld] past end of data (size %zu)", path, t->name,
                        (long long)off[0], (long long)off[1], data_size);
    if ((uint64_t)(off[1] - off[0]) != t->nbytes)
        return ar_error("%s: tensor '%s' data_offsets [%lld,%lld] span %lld bytes but shape x %s needs %zu", path, t->name,
                        (long long)off[0], (long long)off[1], (long long)(off[1] - off[0]), ar_dtype_name(t->dtype), t->nbytes);
    t->data = data + off[0];
    return 0;
}

typedef struct { int64_t a, b; const char *name; } span;

static int by_start(const void *x, const void *y)
{
    const span *p = x, *q = y;
    return p->a < q->a ? -1 : p->a > q->a ? 1 : (p->b > q->b) - (p->b < q->b);
}

/* Sorted by start, consecutive spans must not overlap (empty tensors never do). */
static int check_overlaps(span *s, size_t n, const char *path)
{
    qsort(s, n, sizeof *s, by_start);
    int64_t end = 0;
    const char *last = NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i].a == s[i].b) continue;
        if (last && s[i].a < end)
            return ar_error("%s: tensors '%s' and '%s' overlap in the data area", path, last, s[i].name);
        end = s[i].b; last = s[i].name;
    }
    return 0;
}

static int parse_header(ar_safetensors *st, const st_file *f, const char *json, size_t hlen)
{
    cJSON *root = cJSON_ParseWithLength(json, hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ar_error("%s: header is not a valid JSON object", f->path);
    }
    const char *data = json + hlen;
    size_t data_size = f->size - 8 - hlen;
    size_t count = 0;
    int rc = 0;
    span *spans = calloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *spans);
    if (!spans) rc = ar_error("out of memory");
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        ar_st_tensor t = {.name = e->string, .file = f->path};
        int64_t off[2] = {0, 0};
        if (!cJSON_IsObject(e)) rc = ar_error("%s: entry '%s' is not an object", f->path, e->string);
        else if (!(rc = parse_entry_type(e, &t, f->path)) && !(rc = parse_entry_offsets(e, &t, f->path, data, data_size, off))) {
            spans[count++] = (span){off[0], off[1], e->string};
            if (!(t.name = strdup(e->string))) rc = ar_error("out of memory");
            else if ((rc = push_tensor(st, &t))) free((char *)t.name);
        }
    }
    if (!rc) rc = check_overlaps(spans, count, f->path); /* names still point into root here */
    free(spans);
    cJSON_Delete(root);
    return rc;
}

/* Validate the length prefix of f, then parse its header. */
static int load_file(ar_safetensors *st, const st_file *f)
{
    if (f->size < 8) return ar_error("%s: file too short for a safetensors header (%zu bytes)", f->path, f->size);
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > f->size - 8)
        return ar_error("%s: header length %llu exceeds file size %zu", f->path, (unsigned long long)hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return ar_error("%s: header length %llu is larger than the 100 MB the format allows", f->path, (unsigned long long)hlen);
    return parse_header(st, f, (const char *)p + 8, (size_t)hlen);
}

static int add_file(ar_safetensors *st, const char *path)
{
    st_file *nf = realloc(st->files, (st->nfiles + 1) * sizeof *nf);
    if (!nf) return ar_error("out of memory");
    st->files = nf;
    if (map_file(&st->files[st->nfiles], path)) return -1;
    st->nfiles++;
    return load_file(st, &st->files[st->nfiles - 1]);
}

/* Sort by name for lookup; a name present twice (two shards) is an error. */
static int finish(ar_safetensors *st, const char *what)
{
    if (!(st->label = strdup(what))) return ar_error("out of memory");
    if (st->n) qsort(st->t, st->n, sizeof *st->t, by_name);
    for (size_t i = 1; i < st->n; i++)
        if (!strcmp(st->t[i].name, st->t[i - 1].name))
            return ar_error("%s: tensor '%s' appears twice (%s and %s)", what, st->t[i].name, st->t[i - 1].file, st->t[i].file);
    return 0;
}

/* ---- public API ---------------------------------------------------------- */

ar_safetensors *ar_st_open_file(const char *path)
{
    ar_safetensors *st = calloc(1, sizeof *st);
    if (!st) { ar_error("out of memory"); return NULL; }
    if (add_file(st, path) || finish(st, path)) { ar_st_close(st); return NULL; }
    return st;
}

static char *read_small_file(const char *path, size_t limit)
{
    FILE *f = fopen(path, "rb");
    if (!f) { ar_error("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    char *buf = malloc(limit + 1);
    size_t n = buf ? fread(buf, 1, limit + 1, f) : 0;
    fclose(f);
    if (!buf) { ar_error("out of memory"); return NULL; }
    if (n > limit) { free(buf); ar_error("%s: larger than %zu bytes", path, limit); return NULL; }
    buf[n] = 0;
    return buf;
}

/* Open every distinct shard the weight map names, then check each entry. */
static int open_shards(ar_safetensors *st, const char *dir, const cJSON *wm, const char *ipath)
{
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) return ar_error("%s: weight_map['%s'] is not a file name", ipath, e->string);
        if (strchr(e->valuestring, '/')) return ar_error("%s: shard name '%s' must be a plain file name", ipath, e->valuestring);
        int seen = 0;
        for (const cJSON *p = wm->child; p != e && !seen; p = p->next) seen = !strcmp(p->valuestring, e->valuestring);
        if (seen) continue;
        char *path = path_join(dir, e->valuestring);
        int rc = path ? add_file(st, path) : ar_error("out of memory");
        free(path);
        if (rc) return -1;
    }
    if (finish(st, ipath)) return -1;
    for (const cJSON *e = wm->child; e; e = e->next) {
        const ar_st_tensor *t = ar_st_find(st, e->string);
        const char *base = t ? strrchr(t->file, '/') : NULL;
        if (!t || strcmp(base ? base + 1 : t->file, e->valuestring))
            return ar_error("%s: tensor '%s' is not in shard %s", ipath, e->string, e->valuestring);
    }
    return 0;
}

static ar_safetensors *open_index(const char *dir, const char *ipath)
{
    char *text = read_small_file(ipath, 64u << 20);
    if (!text) return NULL;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    ar_safetensors *st = NULL;
    if (!root) ar_error("%s: not valid JSON", ipath);
    else if (!cJSON_IsObject(wm)) ar_error("%s: no weight_map object", ipath);
    else if (!(st = calloc(1, sizeof *st))) ar_error("out of memory");
    else if (open_shards(st, dir, wm, ipath)) { ar_st_close(st); st = NULL; }
    cJSON_Delete(root);
    return st;
}

ar_safetensors *ar_st_open_dir(const char *dir)
{
    char *ipath = path_join(dir, "model.safetensors.index.json");
    char *spath = path_join(dir, "model.safetensors");
    ar_safetensors *st = NULL;
    if (!ipath || !spath) ar_error("out of memory");
    else if (access(ipath, F_OK) == 0) st = open_index(dir, ipath);
    else if (access(spath, F_OK) == 0) st = ar_st_open_file(spath);
    else ar_error("%s: no model.safetensors or model.safetensors.index.json", dir);
    free(ipath); free(spath);
    return st;
}

const ar_st_tensor *ar_st_find(const ar_safetensors *st, const char *name)
{
    if (!st || !st->n) return NULL;
    ar_st_tensor key = {.name = name};
    return bsearch(&key, st->t, st->n, sizeof key, by_name);
}

size_t ar_st_count(const ar_safetensors *st) { return st ? st->n : 0; }

const char *ar_st_label(const ar_safetensors *st) { return st && st->label ? st->label : "checkpoint"; }

const ar_st_tensor *ar_st_at(const ar_safetensors *st, size_t i) { return st && i < st->n ? &st->t[i] : NULL; }

static int fp8_read_rows(const ar_safetensors *st, const ar_st_tensor *t, int64_t row0, int64_t nrows, float *dst);

/* After a large read (a block's weight, not an embedding row): the mapped
 * pages of [p, p + n) leave this process's memory (a later read faults them
 * in again from the page cache or the file), so that the weights of the
 * blocks already tuned do not stay resident for the whole run. */
static void release_pages(const void *p, size_t n)
{
    if (n < (1u << 20)) return;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p / pg * pg, e = ((uintptr_t)p + n) / pg * pg;   /* whole pages inside */
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

int ar_st_read_rows_f32(const ar_safetensors *st, const char *name, int64_t row0, int64_t nrows, float *dst)
{
    const ar_st_tensor *t = ar_st_find(st, name);
    if (!t) return ar_error("%s: no tensor '%s'", st->label, name);
    int fp8 = ar_st_fp8_role(st, name) == 1;
    if (t->dtype != AR_F32 && t->dtype != AR_F16 && t->dtype != AR_BF16 && !fp8)
        return ar_error("%s: tensor '%s' is %s, not a float type", t->file, name, ar_dtype_name(t->dtype));
    int64_t rows = t->ndim ? t->shape[0] : 1;
    if (row0 < 0 || nrows < 0 || row0 + nrows > rows)
        return ar_error("%s: rows [%lld,%lld) of tensor '%s' out of range (%lld rows)", t->file,
                        (long long)row0, (long long)(row0 + nrows), name, (long long)rows);
    if (fp8) return fp8_read_rows(st, t, row0, nrows, dst);
    int64_t per_row = rows ? t->numel / rows : 0;
    size_t es = ar_dtype_size(t->dtype);
    const char *src = (const char *)t->data + (size_t)(row0 * per_row) * es;
    int rc = ar_to_f32(dst, src, t->dtype, (size_t)(nrows * per_row));
    release_pages(src, (size_t)(nrows * per_row) * es);
    return rc;
}

int ar_st_read_f32(const ar_safetensors *st, const char *name, float *dst, size_t n)
{
    const ar_st_tensor *t = ar_st_find(st, name);
    if (!t) return ar_error("%s: no tensor '%s'", st->label, name);
    if ((size_t)t->numel != n)
        return ar_error("%s: tensor '%s' has %lld elements, expected %zu", t->file, name, (long long)t->numel, n);
    return ar_st_read_rows_f32(st, name, 0, t->ndim ? t->shape[0] : 1, dst);
}

void ar_st_close(ar_safetensors *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n; i++) free((char *)st->t[i].name);
    for (int i = 0; i < st->nfiles; i++) unmap_file(&st->files[i]);
    free(st->t);
    free(st->files);
    free(st->label);
    free(st);
}

/* ---- FP8 weights with scales (see safetensors.h) ---------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* The scale beside FP8 weight name, or NULL. */
static const ar_st_tensor *fp8_scale(const ar_safetensors *st, const char *name)
{
    char key[1024];
    if ((size_t)snprintf(key, sizeof key, "%s%s", name, st->fp8.suffix) >= sizeof key) return NULL;
    return ar_st_find(st, key);
}

int ar_st_fp8_role(const ar_safetensors *st, const char *name)
{
    if (!st || !st->fp8.on) return 0;
    const ar_st_tensor *t = ar_st_find(st, name);
    if (!t) return 0;
    /* A name ending in _scale / _scale_inv is a scale even when it is F8 itself (NVFP4's). */
    if (t->dtype == AR_F8_E4M3 && !ends_with(name, "_scale") && !ends_with(name, "_scale_inv")) return 1;
    if (!ends_with(name, st->fp8.suffix)) return 0;
    char w[1024];
    size_t n = strlen(name) - strlen(st->fp8.suffix);
    if (n >= sizeof w) return 0;
    memcpy(w, name, n);
    w[n] = 0;
    const ar_st_tensor *wt = ar_st_find(st, w);
    return wt && wt->dtype == AR_F8_E4M3 ? 2 : 0;
}

/* "[a, b]" of t's shape into buf. */
static const char *shape_text(const ar_st_tensor *t, char *buf, size_t cap)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* The tiling of FP8 weight t [n, k] by its scale s: each scale covers gh rows
 * and gw columns (edge tiles partial). 0, or -1 with ar_error naming the file,
 * the tensor and the shape the scale should have had. */
static int fp8_tiling(const ar_safetensors *st, const ar_st_tensor *t, const ar_st_tensor *s, int64_t *gh, int64_t *gw)
{
    const ar_st_fp8 *f = &st->fp8;
    char have[128];
    if (t->ndim != 2) return ar_error("%s: FP8 tensor '%s' has %d dimensions, not 2", t->file, t->name, t->ndim);
    int64_t n = t->shape[0], k = t->shape[1];
    if (!s) return ar_error("%s: FP8 tensor '%s' has no scale '%s%s'", t->file, t->name, t->name, f->suffix);
    if (s->dtype != AR_F32 && s->dtype != AR_BF16 && s->dtype != AR_F16)
        return ar_error("%s: scale '%s' of FP8 tensor '%s' is %s, not f32, bf16 or f16", s->file, s->name, t->name,
                        ar_dtype_name(s->dtype));
    if (f->block[0] > 0) {
        int64_t bh = f->block[0], bw = f->block[1], rows = n ? (n + bh - 1) / bh : 0, cols = k ? (k + bw - 1) / bw : 0;
        if (s->ndim != 2 || s->shape[0] != rows || s->shape[1] != cols)
            return ar_error("%s: scale '%s' has shape %s, expected [%lld, %lld] for the %lld x %lld blocks of FP8 tensor "
                            "'%s' [%lld, %lld]", s->file, s->name, shape_text(s, have, sizeof have), (long long)rows,
                            (long long)cols, (long long)bh, (long long)bw, t->name, (long long)n, (long long)k);
        *gh = bh;
        *gw = bw;
        return 0;
    }
    if (s->numel == 1 && s->ndim <= 2) { *gh = n ? n : 1; *gw = k ? k : 1; return 0; }          /* per tensor */
    if ((s->ndim == 1 && s->shape[0] == n) || (s->ndim == 2 && s->shape[0] == n && s->shape[1] == 1)) {
        *gh = 1;                                                                                  /* per row */
        *gw = k ? k : 1;
        return 0;
    }
    return ar_error("%s: scale '%s' has shape %s, expected [1] or [%lld, 1] for FP8 tensor '%s' [%lld, %lld]", s->file,
                    s->name, shape_text(s, have, sizeof have), (long long)n, t->name, (long long)n, (long long)k);
}

static int fp8_read_rows(const ar_safetensors *st, const ar_st_tensor *t, int64_t row0, int64_t nrows, float *dst)
{
    const ar_st_tensor *s = fp8_scale(st, t->name);
    int64_t gh, gw;
    if (fp8_tiling(st, t, s, &gh, &gw)) return -1;
    const int64_t k = t->shape[1], scols = (k + gw - 1) / gw;
    float lut[256];
    for (int b = 0; b < 256; b++) lut[b] = ar_e4m3_decode((uint8_t)b);
    float *srow = malloc(sizeof(float) * (size_t)(scols ? scols : 1));
    if (!srow) return ar_error("%s: out of memory widening '%s'", t->file, t->name);
    const uint8_t *q = t->data;
    const char *sdata = s->data;
    size_t es = ar_dtype_size(s->dtype);
    int64_t have = -1;
    for (int64_t r = row0; r < row0 + nrows; r++) {
        int64_t sr = s->numel == 1 ? 0 : r / gh;
        if (sr != have && ar_to_f32(srow, sdata + (size_t)(sr * scols) * es, s->dtype, (size_t)scols)) { free(srow); return -1; }
        have = sr;
        const uint8_t *qr = q + (size_t)(r * k);
        float *o = dst + (size_t)((r - row0) * k);
        for (int64_t c0 = 0; c0 < k; c0 += gw) {   /* one scale per run of gw columns */
            const float sc = srow[s->numel == 1 ? 0 : c0 / gw];
            const int64_t c1 = c0 + gw < k ? c0 + gw : k;
            for (int64_t c = c0; c < c1; c++) {
                float v = lut[qr[c]] * sc;             /* the product in f32 */
                o[c] = st->fp8.out == AR_BF16 ? ar_round_bf16(v) : st->fp8.out == AR_F16 ? ar_round_f16(v) : v;
            }
        }
    }
    free(srow);
    return 0;
}

int ar_st_set_fp8(ar_safetensors *st, const ar_st_fp8 *f)
{
    if (!f->on) return 0;
    st->fp8 = *f;
    for (size_t i = 0; i < st->n; i++) {
        const ar_st_tensor *t = &st->t[i];
        int64_t gh, gw;
        if (ar_st_fp8_role(st, t->name) == 1 && fp8_tiling(st, t, fp8_scale(st, t->name), &gh, &gw)) {
            memset(&st->fp8, 0, sizeof st->fp8);
            return -1;
        }
    }
    return 0;
}

const ar_st_fp8 *ar_st_fp8_of(const ar_safetensors *st) { return st && st->fp8.on ? &st->fp8 : NULL; }

/* Two positive integers [a, b] from JSON array j. */
static int json_pair(const cJSON *j, int out[2])
{
    int64_t a, b;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 2 || json_uint(cJSON_GetArrayItem(j, 0), &a) ||
        json_uint(cJSON_GetArrayItem(j, 1), &b) || a < 1 || b < 1 || a > (1 << 30) || b > (1 << 30))
        return -1;
    out[0] = (int)a;
    out[1] = (int)b;
    return 0;
}

static const char *json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* compressed-tensors: the config groups with 8-bit float weights and
 * strategy tensor, channel or block (all with the same block). */
static int fp8_from_ct(const cJSON *qc, ar_st_fp8 *f, const char *path)
{
    const cJSON *g;
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(qc, "config_groups")) {
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weights");
        const cJSON *nb = cJSON_GetObjectItemCaseSensitive(w, "num_bits");
        const char *type = json_str(w, "type"), *strategy = json_str(w, "strategy");
        if (!type || strcmp(type, "float") || !cJSON_IsNumber(nb) || nb->valuedouble != 8) continue;
        int block[2] = {0, 0};
        if (strategy && !strcmp(strategy, "block")) {
            if (json_pair(cJSON_GetObjectItemCaseSensitive(w, "block_structure"), block))
                return ar_error("%s: group '%s' has strategy block but no block_structure of two positive integers",
                                path, g->string);
        } else if (!strategy || (strcmp(strategy, "tensor") && strcmp(strategy, "channel")))
            continue;   /* group (MXFP8: E8M0 scales) and the like: formats/quantized_source.h reads those */
        if (f->on && (block[0] != f->block[0] || block[1] != f->block[1]))
            return ar_error("%s: config groups with different FP8 block structures are not supported", path);
        f->on = 1;
        f->block[0] = block[0];
        f->block[1] = block[1];
    }
    snprintf(f->suffix, sizeof f->suffix, "_scale");
    return 0;
}

int ar_st_fp8_config(const char *dir, ar_st_fp8 *f)
{
    memset(f, 0, sizeof *f);
    char *path = path_join(dir, "config.json");
    if (!path) return ar_error("out of memory");
    if (access(path, F_OK)) { free(path); return 0; }   /* a bare safetensors folder */
    char *text = read_small_file(path, 16u << 20);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    int rc = 0;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const char *method = json_str(qc, "quant_method");
    if (!root) rc = ar_error("%s: malformed JSON", path);
    else if (!method) rc = 0;
    else if (!strcmp(method, "fp8")) {
        const char *fmt = json_str(qc, "fmt");
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
        if (fmt && strcmp(fmt, "e4m3"))
            rc = ar_error("%s: fp8 fmt '%s' is not supported (e4m3 only)", path, fmt);
        else if (bs && !cJSON_IsNull(bs) && json_pair(bs, f->block))
            rc = ar_error("%s: fp8 weight_block_size must be two positive integers", path);
        else {
            f->on = 1;
            snprintf(f->suffix, sizeof f->suffix, "_scale_inv");
        }
    } else if (!strcmp(method, "compressed-tensors"))
        rc = fp8_from_ct(qc, f, path);
    if (!rc && f->on) {
        const char *dt = json_str(root, "dtype") ? json_str(root, "dtype") : json_str(root, "torch_dtype");
        f->out = dt && !strcmp(dt, "float16") ? AR_F16 : dt && !strcmp(dt, "float32") ? AR_F32 : AR_BF16;
        snprintf(f->method, sizeof f->method, "%s", method);
    }
    if (rc) memset(f, 0, sizeof *f);
    cJSON_Delete(root);
    free(path);
    return rc;
}

ar_safetensors *ar_st_open_model(const char *dir)
{
    ar_st_fp8 f;
    if (ar_st_fp8_config(dir, &f)) return NULL;
    ar_safetensors *st = ar_st_open_dir(dir);
    if (st && f.on && ar_st_set_fp8(st, &f)) { ar_st_close(st); return NULL; }
    return st;
}
