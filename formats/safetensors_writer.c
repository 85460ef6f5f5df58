/* safetensors_writer.c — streamed, sharded safetensors output (see header). */
#include "safetensors_writer.h"
#include "array_grow.h"
#include "error.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "textbuf.h"
#include <unistd.h>

#define MAX_DIMS 8

typedef struct {
    char    *name;
    ar_dtype dtype;
    int      ndim;
    int64_t  shape[MAX_DIMS];
    uint64_t begin, end;        /* data_offsets inside its shard */
    int      shard;             /* 0-based shard index */
} stw_entry;

struct ar_stw {
    char      *dir;
    uint64_t   max_shard;
    int        data_fd;         /* scratch file holding the current shard's data */
    stw_entry *e;               /* every tensor so far, all shards */
    size_t     n, cap;
    size_t     shard_first;     /* index in e of the current shard's first tensor */
    int        nshards;         /* shards already finished */
    uint64_t   shard_bytes;     /* data bytes of the current shard so far */
    uint64_t   left;            /* bytes the current tensor still expects */
    uint64_t   total;
    char     **names;           /* open-addressing set of tensor names */
    size_t     names_cap;
};

/* safetensors spells dtypes in upper case; index = ar_dtype. */
static const char *const st_dtype_names[AR_DTYPE_COUNT] = {
    "F32", "F16", "BF16", "I32", "I8", "U8", "I64", "I16", "F64", "F8_E4M3"};

int ar_parse_size(const char *text, uint64_t *bytes) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || errno || v < 0) return ar_error("max shard size '%s': not a size", text);
    while (*end == ' ') end++;
    static const struct { const char *unit; double mult; } units[] = {
        {"", 1}, {"b", 1}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
        {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].unit) == 0) {
            *bytes = (uint64_t)(v * units[i].mult);
            return 0;
        }
    }
    return ar_error("max shard size '%s': unknown unit '%s' (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", text, end);
}

static char *path_in(const ar_stw *w, const char *file) {
    size_t n = strlen(w->dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", w->dir, file);
    return p;
}

static char *shard_tmp_path(const ar_stw *w, int shard) {
    char f[64];
    snprintf(f, sizeof f, ".shard-%05d.tmp", shard + 1);
    return path_in(w, f);
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;           /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Insert name into the set; 1 if it was already there, -1 on allocation failure. */
static int names_insert(ar_stw *w, char *name) {
    if (2 * (w->n + 1) > w->names_cap) {
        size_t cap = w->names_cap ? 2 * w->names_cap : 256;
        char **t = calloc(cap, sizeof *t);
        if (!t) return -1;
        for (size_t i = 0; i < w->names_cap; i++) {
            if (!w->names[i]) continue;
            size_t j = name_hash(w->names[i]) & (cap - 1);
            while (t[j]) j = (j + 1) & (cap - 1);
            t[j] = w->names[i];
        }
        free(w->names);
        w->names = t;
        w->names_cap = cap;
    }
    size_t j = name_hash(name) & (w->names_cap - 1);
    while (w->names[j]) {
        if (strcmp(w->names[j], name) == 0) return 1;
        j = (j + 1) & (w->names_cap - 1);
    }
    w->names[j] = name;
    return 0;
}

ar_stw *ar_stw_open(const char *dir, uint64_t max_shard_bytes) {
    ar_stw *w = calloc(1, sizeof *w);
    if (!w || !(w->dir = strdup(dir))) {
        free(w);
        ar_error("%s: out of memory", dir);
        return NULL;
    }
    w->max_shard = max_shard_bytes ? max_shard_bytes : AR_STW_DEFAULT_SHARD;
    char *p = path_in(w, ".shard-data.tmp");
    w->data_fd = p ? open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    if (w->data_fd < 0) {
        ar_error("%s: cannot create scratch file: %s", dir, strerror(errno));
        free(p);
        free(w->dir);
        free(w);
        return NULL;
    }
    free(p);
    return w;
}


/* Append s as a JSON string literal. */
static void sb_json_string(ar_textbuf *b, const char *s) {
    ar_textbuf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; ar_textbuf_add(b, esc, 2); }
        else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); ar_textbuf_add(b, esc, 6); }
        else ar_textbuf_add(b, (const char *)&c, 1);
    }
    ar_textbuf_add(b, "\"", 1);
}

/* The header JSON of tensors e[first, last), padded to a multiple of 8. */
static int shard_header(const ar_stw *w, size_t first, size_t last, ar_textbuf *b) {
    char num[64];
    ar_textbuf_str(b, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = first; i < last; i++) {
        const stw_entry *t = &w->e[i];
        ar_textbuf_str(b, ",");
        sb_json_string(b, t->name);
        ar_textbuf_str(b, ":{\"dtype\":\"");
        ar_textbuf_str(b, st_dtype_names[t->dtype]);
        ar_textbuf_str(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            ar_textbuf_str(b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}",
                 (unsigned long long)t->begin, (unsigned long long)t->end);
        ar_textbuf_str(b, num);
    }
    ar_textbuf_str(b, "}");
    while (!b->oom && b->n % 8) ar_textbuf_str(b, " ");
    return b->oom ? ar_error("%s: out of memory building a safetensors header", w->dir) : 0;
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Copy n bytes from the start of in_fd to the current end of out_fd. */
static int copy_data(int in_fd, int out_fd, uint64_t n) {
    off_t in_off = 0;
    while (n) {
        ssize_t k = copy_file_range(in_fd, &in_off, out_fd, NULL, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;                      /* fall back to read/write below */
        n -= (uint64_t)k;
    }
    static char buf[1 << 16];
    while (n) {
        size_t want = n < sizeof buf ? (size_t)n : sizeof buf;
        ssize_t k = pread(in_fd, buf, want, in_off);
        if (k <= 0 || write_all(out_fd, buf, (size_t)k)) return -1;
        in_off += k;
        n -= (uint64_t)k;
    }
    return 0;
}

/* Write the current shard (header + scratch data) to its temporary file and
 * empty the scratch file for the next shard. */
static int finish_shard(ar_stw *w) {
    if (w->shard_first == w->n) return 0;
    ar_textbuf h = {0};
    if (shard_header(w, w->shard_first, w->n, &h)) { free(h.p); return -1; }
    char *p = shard_tmp_path(w, w->nshards);
    int fd = p ? open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    uint64_t len = h.n;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(len >> (8 * i));
    int rc = fd < 0 || write_all(fd, le, 8) || write_all(fd, h.p, h.n) ||
             copy_data(w->data_fd, fd, w->shard_bytes);
    if (fd >= 0 && close(fd)) rc = 1;
    free(h.p);
    if (rc) {
        ar_error("%s: cannot write shard: %s", p ? p : w->dir, strerror(errno));
        free(p);
        return -1;
    }
    free(p);
    if (ftruncate(w->data_fd, 0)) return ar_error("%s: cannot reset scratch file: %s", w->dir, strerror(errno));
    lseek(w->data_fd, 0, SEEK_SET);
    w->nshards++;
    w->shard_first = w->n;
    w->shard_bytes = 0;
    return 0;
}

static uint64_t tensor_bytes(ar_dtype dtype, int ndim, const int64_t *shape) {
    uint64_t n = ar_dtype_size(dtype);
    for (int d = 0; d < ndim; d++) n *= (uint64_t)shape[d];
    return n;
}

static int check_new_tensor(ar_stw *w, const char *name, ar_dtype dtype, int ndim, const int64_t *shape) {
    if (w->left) return ar_error("%s: tensor %s still lacks %llu bytes before %s", w->dir, w->e[w->n - 1].name,
                                 (unsigned long long)w->left, name);
    if ((int)dtype < 0 || dtype >= AR_DTYPE_COUNT) return ar_error("%s: tensor %s: bad dtype %d", w->dir, name, dtype);
    if (ndim < 0 || ndim > MAX_DIMS) return ar_error("%s: tensor %s: %d dimensions", w->dir, name, ndim);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0) return ar_error("%s: tensor %s: negative dimension", w->dir, name);
    return 0;
}

int ar_stw_begin(ar_stw *w, const char *name, ar_dtype dtype, int ndim, const int64_t *shape) {
    if (check_new_tensor(w, name, dtype, ndim, shape)) return -1;
    uint64_t bytes = tensor_bytes(dtype, ndim, shape);
    if (w->shard_first < w->n && w->shard_bytes + bytes > w->max_shard && finish_shard(w)) return -1;
    stw_entry *entries = ar_array_reserve(w->e, w->n, &w->cap, sizeof *entries, 64);
    if (!entries) return ar_error("%s: out of memory", w->dir);
    w->e = entries;
    stw_entry *t = &w->e[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return ar_error("%s: out of memory", w->dir);
    int dup = names_insert(w, t->name);
    if (dup) {
        free(t->name);
        return dup < 0 ? ar_error("%s: out of memory", w->dir) : ar_error("%s: tensor %s written twice", w->dir, name);
    }
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->begin = w->shard_bytes;
    t->end = w->shard_bytes + bytes;
    t->shard = w->nshards;
    w->n++;
    w->shard_bytes += bytes;
    w->total += bytes;
    w->left = bytes;
    return 0;
}

int ar_stw_write(ar_stw *w, const void *data, size_t n) {
    if (n > w->left)
        return ar_error("%s: %zu bytes written to %s, which has %llu left", w->dir, n,
                        w->n ? w->e[w->n - 1].name : "(no tensor)", (unsigned long long)w->left);
    if (write_all(w->data_fd, data, n)) return ar_error("%s: cannot write tensor data: %s", w->dir, strerror(errno));
    w->left -= n;
    return 0;
}

int ar_stw_put(ar_stw *w, const char *name, ar_dtype dtype, int ndim, const int64_t *shape, const void *data) {
    if (ar_stw_begin(w, name, dtype, ndim, shape)) return -1;
    return ar_stw_write(w, data, (size_t)tensor_bytes(dtype, ndim, shape));
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp((*(const stw_entry *const *)a)->name, (*(const stw_entry *const *)b)->name);
}

static void shard_file_name(char *buf, size_t n, int shard, int nshards) {
    if (nshards == 1) snprintf(buf, n, "model.safetensors");
    else snprintf(buf, n, "model-%05d-of-%05d.safetensors", shard + 1, nshards);
}

/* model.safetensors.index.json as transformers writes it (json.dumps indent=2,
 * sort_keys=True, trailing newline). */
static int write_index(ar_stw *w) {
    stw_entry **order = malloc(w->n * sizeof *order);
    if (!order) return ar_error("%s: out of memory", w->dir);
    for (size_t i = 0; i < w->n; i++) order[i] = &w->e[i];
    qsort(order, w->n, sizeof *order, cmp_entry_name);
    ar_textbuf b = {0};
    char line[128];
    snprintf(line, sizeof line, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n",
             (unsigned long long)w->total);
    ar_textbuf_str(&b, line);
    for (size_t i = 0; i < w->n; i++) {
        ar_textbuf_str(&b, "    ");
        sb_json_string(&b, order[i]->name);
        shard_file_name(line, sizeof line, order[i]->shard, w->nshards);
        ar_textbuf_str(&b, ": \"");
        ar_textbuf_str(&b, line);
        ar_textbuf_str(&b, i + 1 < w->n ? "\",\n" : "\"\n");
    }
    ar_textbuf_str(&b, "  }\n}\n");
    free(order);
    char *p = path_in(w, "model.safetensors.index.json");
    FILE *f = b.oom || !p ? NULL : fopen(p, "wb");
    int rc = !f || fwrite(b.p, 1, b.n, f) != b.n;
    if (f && fclose(f)) rc = 1;
    if (rc) ar_error("%s: cannot write model.safetensors.index.json", w->dir);
    free(p);
    free(b.p);
    return rc ? -1 : 0;
}

static void stw_free(ar_stw *w) {
    char *p = path_in(w, ".shard-data.tmp");
    if (w->data_fd >= 0) close(w->data_fd);
    if (p) unlink(p);
    free(p);
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w->names);
    free(w->dir);
    free(w);
}

static int rename_shards(ar_stw *w) {
    for (int s = 0; s < w->nshards; s++) {
        char name[64];
        shard_file_name(name, sizeof name, s, w->nshards);
        char *from = shard_tmp_path(w, s), *to = path_in(w, name);
        int rc = !from || !to || rename(from, to);
        if (rc) ar_error("%s: cannot rename shard to %s: %s", w->dir, name, strerror(errno));
        free(from);
        free(to);
        if (rc) return -1;
    }
    return 0;
}

int ar_stw_close(ar_stw *w) {
    int rc = 0;
    if (w->left)
        rc = ar_error("%s: tensor %s is missing %llu bytes", w->dir, w->e[w->n - 1].name, (unsigned long long)w->left);
    else if (w->n == 0)
        rc = ar_error("%s: no tensors to write", w->dir);
    if (!rc) rc = finish_shard(w);
    if (!rc) rc = rename_shards(w);
    if (!rc && w->nshards > 1) rc = write_index(w);
    if (rc) {
        ar_stw_abort(w);
        return -1;
    }
    stw_free(w);
    return 0;
}

void ar_stw_abort(ar_stw *w) {
    if (!w) return;
    for (int s = 0; s <= w->nshards; s++) {
        char *p = shard_tmp_path(w, s);
        if (p) unlink(p);
        free(p);
    }
    stw_free(w);
}
