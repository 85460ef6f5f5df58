/* checkpoint.c — checkpoint directories of block-by-block runs; layout and
 * guarantees in checkpoint.h. */
#include "checkpoint.h"
#include "hash.h"
#include "error.h"
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHAIN_MAGIC "ARCHAIN1"
#define MANIFEST "manifest.json"
/* A safetensors header larger than this is not a model we could have opened. */
#define MAX_ST_HEADER (100u << 20)

struct ar_checkpoint {
    char *dir;
    char *settings;         /* the caller's settings, as given */
    int nblocks, last;      /* last finished block, -1 before the first */
    int lock_fd;
    FILE *block_f;          /* the block file being written, if any */
    int block;
};

/* ---- files written atomically ---------------------------------------------- */

static void path_of(char *buf, const ar_checkpoint *ck, const char *fmt, int block)
{
    char name[64];
    snprintf(name, sizeof name, fmt, block);
    snprintf(buf, PATH_MAX, "%s/%s", ck->dir, name);
}

/* Make a rename in dir survive a crash of the machine, not just of the process. */
static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ar_error("%s: cannot open: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    return rc ? ar_error("%s: fsync failed: %s", dir, strerror(errno)) : 0;
}

/* Flush, fsync and close f (the temporary tmp), then rename it to final. */
static int commit_file(const ar_checkpoint *ck, FILE *f, const char *tmp, const char *final)
{
    int bad = fflush(f) || fsync(fileno(f));
    int err = errno;
    if (fclose(f) || bad) {
        unlink(tmp);
        return ar_error("%s: write failed: %s", tmp, strerror(bad ? err : errno));
    }
    if (rename(tmp, final)) {
        err = errno;
        unlink(tmp);
        return ar_error("%s: cannot rename to %s: %s", tmp, final, strerror(err));
    }
    return fsync_dir(ck->dir);
}

static FILE *open_tmp(const char *tmp)
{
    FILE *f = fopen(tmp, "wb");
    if (!f) ar_error("%s: cannot create: %s", tmp, strerror(errno));
    return f;
}

/* ---- manifest --------------------------------------------------------------- */

static int write_manifest(const ar_checkpoint *ck)
{
    char final[PATH_MAX], tmp[PATH_MAX + 8];
    path_of(final, ck, MANIFEST, 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    char *txt = malloc(strlen(ck->settings) + 128);
    if (!txt) return ar_error("%s: out of memory", final);
    sprintf(txt, "{\"version\":%d,\"nblocks\":%d,\"last_block\":%d,\"settings\":%s}\n", AR_CKPT_VERSION,
            ck->nblocks, ck->last, ck->settings);
    FILE *f = open_tmp(tmp);
    int rc = -1;
    if (f && fputs(txt, f) < 0) {
        fclose(f);
        unlink(tmp);
        ar_error("%s: write failed: %s", tmp, strerror(errno));
    } else if (f) rc = commit_file(ck, f, tmp, final);
    free(txt);
    return rc;
}

/* The first field of want that old lacks or holds another value, or of old that
 * want lacks; 0 when the objects are equal. */
static int settings_differ(const char *path, const cJSON *old, const cJSON *want)
{
    const cJSON *w;
    cJSON_ArrayForEach(w, want) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(old, w->string);
        if (o && cJSON_Compare(o, w, 1)) continue;
        char *ot = o ? cJSON_PrintUnformatted(o) : NULL, *wt = cJSON_PrintUnformatted(w);
        ar_error("%s: %s differs (checkpoint %s, this run %s)", path, w->string, ot ? ot : "unset", wt ? wt : "?");
        free(ot); free(wt);
        return -1;
    }
    cJSON_ArrayForEach(w, old)
        if (!cJSON_GetObjectItemCaseSensitive(want, w->string))
            return ar_error("%s: %s differs (checkpoint has it, this run does not)", path, w->string);
    return 0;
}

static int int_field(const cJSON *m, const char *key, int *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(m, key);
    if (!cJSON_IsNumber(j)) return -1;
    *v = j->valueint;
    return 0;
}

/* Read an existing manifest and check it against ck's settings; sets ck->last,
 * or *mismatch when the manifest is valid but made by another run. */
static int check_manifest(ar_checkpoint *ck, const char *path, const char *txt, const cJSON *want, int *mismatch)
{
    cJSON *m = cJSON_Parse(txt);
    int version, nblocks, last, rc = -1;
    const cJSON *old = cJSON_GetObjectItemCaseSensitive(m, "settings");
    if (!cJSON_IsObject(m) || int_field(m, "version", &version) || int_field(m, "nblocks", &nblocks) ||
        int_field(m, "last_block", &last) || !cJSON_IsObject(old))
        ar_error("%s: not a checkpoint manifest (needs version, nblocks, last_block, settings)", path);
    else if (version != AR_CKPT_VERSION)
        ar_error("%s: checkpoint version %d, this build reads %d", path, version, AR_CKPT_VERSION);
    else if (last < -1 || last >= nblocks)
        ar_error("%s: last_block %d outside -1..%d", path, last, nblocks - 1);
    else if (nblocks != ck->nblocks)
        *mismatch = ar_error("%s: nblocks differs (checkpoint %d, this run %d)", path, nblocks, ck->nblocks) != 0;
    else if (settings_differ(path, old, want))
        *mismatch = 1;
    else {
        ck->last = last;
        rc = 0;
    }
    cJSON_Delete(m);
    return rc;
}

/* Read the whole small file at path; NULL when it does not exist (errno ENOENT). */
static char *read_small_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = 2 * cap + 8192);
            if (!nb) { free(buf); fclose(f); errno = ENOMEM; return NULL; }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got < 4096) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); errno = EIO; return NULL; }
    buf[n] = 0;
    return buf;
}

/* ---- open / close ----------------------------------------------------------- */

static int take_lock(ar_checkpoint *ck)
{
    char p[PATH_MAX];
    path_of(p, ck, "lock", 0);
    ck->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (ck->lock_fd < 0) return ar_error("%s: cannot create: %s", p, strerror(errno));
    if (flock(ck->lock_fd, LOCK_EX | LOCK_NB))
        return ar_error("%s: checkpoint directory in use by another process", ck->dir);
    return 0;
}

/* Load or start the manifest. */
static int open_manifest(ar_checkpoint *ck, int *mismatch)
{
    cJSON *want = cJSON_Parse(ck->settings);
    if (!cJSON_IsObject(want)) { cJSON_Delete(want); return ar_error("%s: settings are not a JSON object", ck->dir); }
    char p[PATH_MAX];
    path_of(p, ck, MANIFEST, 0);
    char *txt = read_small_file(p);
    int rc;
    if (txt) rc = check_manifest(ck, p, txt, want, mismatch);
    else if (errno != ENOENT) rc = ar_error("%s: cannot read: %s", p, strerror(errno));
    else rc = write_manifest(ck);
    free(txt);
    cJSON_Delete(want);
    return rc;
}

ar_checkpoint *ar_ckpt_open(const char *dir, const char *settings_json, int nblocks, int *mismatch)
{
    int dummy;
    if (!mismatch) mismatch = &dummy;
    *mismatch = 0;
    if (mkdir(dir, 0755) && errno != EEXIST) { ar_error("%s: cannot create: %s", dir, strerror(errno)); return NULL; }
    ar_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) { ar_error("%s: out of memory", dir); return NULL; }
    ck->dir = strdup(dir);
    ck->settings = strdup(settings_json ? settings_json : "");
    ck->nblocks = nblocks;
    ck->last = -1;
    ck->lock_fd = -1;
    ck->block = -1;
    if (!ck->dir || !ck->settings) { ar_error("%s: out of memory", dir); ar_ckpt_close(ck); return NULL; }
    if (take_lock(ck) || open_manifest(ck, mismatch)) { ar_ckpt_close(ck); return NULL; }
    return ck;
}

int ar_ckpt_next_block(const ar_checkpoint *ck) { return ck->last + 1; }

void ar_ckpt_close(ar_checkpoint *ck)
{
    if (!ck) return;
    if (ck->block_f) fclose(ck->block_f);
    if (ck->lock_fd >= 0) close(ck->lock_fd);
    free(ck->dir);
    free(ck->settings);
    free(ck);
}

/* ---- block record files ----------------------------------------------------- */

ar_stream_writer *ar_ckpt_block_begin(ar_checkpoint *ck, int block)
{
    char tmp[PATH_MAX];
    if (ck->block_f) { ar_error("%s: block %d still open", ck->dir, ck->block); return NULL; }
    path_of(tmp, ck, "block-%04d.ars.tmp", block);
    if (!(ck->block_f = open_tmp(tmp))) return NULL;
    ck->block = block;
    /* level 1: the file is read back once; speed matters more than size */
    ar_stream_writer *w = ar_stream_writer_open(ck->block_f, tmp, 1);
    if (!w) { fclose(ck->block_f); ck->block_f = NULL; unlink(tmp); }
    return w;
}

int ar_ckpt_block_end(ar_checkpoint *ck, ar_stream_writer *w)
{
    char tmp[PATH_MAX], final[PATH_MAX];
    if (!ck->block_f) { ar_stream_writer_abort(w); return ar_error("%s: no block file open", ck->dir); }
    path_of(tmp, ck, "block-%04d.ars.tmp", ck->block);
    path_of(final, ck, "block-%04d.ars", ck->block);
    FILE *f = ck->block_f;
    ck->block_f = NULL;
    if (ar_stream_writer_close(w)) { fclose(f); unlink(tmp); return -1; }
    return commit_file(ck, f, tmp, final);
}

/* Copy the current tensor record of r to out. */
static int replay_tensor(ar_stream_reader *r, const ar_record *rec, ar_stream_writer *out)
{
    void *payload = ar_stream_read_payload(r);
    if (!payload) return -1;
    int rc = ar_stream_write_tensor(out, rec->name, rec->dtype, rec->ndim, rec->shape, rec->json, payload);
    free(payload);
    return rc;
}

int ar_ckpt_replay_block(const ar_checkpoint *ck, int block, ar_stream_writer *out)
{
    char p[PATH_MAX];
    path_of(p, ck, "block-%04d.ars", block);
    if (block > ck->last) return ar_error("%s: block %d is not finished in this checkpoint", p, block);
    FILE *f = fopen(p, "rb");
    if (!f) return ar_error("%s: cannot open: %s", p, strerror(errno));
    ar_stream_reader *r = ar_stream_reader_open(f, p);
    int rc = r ? 1 : -1;
    ar_record rec;
    while (rc == 1 && (rc = ar_stream_next(r, &rec)) == 1) {
        int bad = rec.kind == AR_REC_META ? ar_stream_write_meta(out, rec.json) : replay_tensor(r, &rec, out);
        if (bad) rc = -1;
    }
    ar_stream_reader_close(r);
    fclose(f);
    return rc;
}

/* ---- chain state ------------------------------------------------------------ */

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Write the chain header and payloads of the arrays with data to f. */
static int write_chain(FILE *f, const char *path, int block, const ar_ckpt_array *a, int n)
{
    int count = 0;
    for (int i = 0; i < n; i++) count += a[i].data != NULL;
    unsigned char head[16];
    memcpy(head, CHAIN_MAGIC, 8);
    put_le(head + 8, (uint32_t)block, 4);
    put_le(head + 12, (uint32_t)count, 4);
    int ok = fwrite(head, 1, 16, f) == 16;
    for (int i = 0; ok && i < n; i++) {
        if (!a[i].data) continue;
        unsigned char e[AR_CKPT_NAME_MAX + 8] = {0};
        if (strlen(a[i].name) >= AR_CKPT_NAME_MAX) return ar_error("%s: array name '%s' too long", path, a[i].name);
        memcpy(e, a[i].name, strlen(a[i].name));
        put_le(e + AR_CKPT_NAME_MAX, a[i].nbytes, 8);
        ok = fwrite(e, 1, sizeof e, f) == sizeof e;
    }
    for (int i = 0; ok && i < n; i++)
        if (a[i].data) ok = fwrite(a[i].data, 1, a[i].nbytes, f) == a[i].nbytes;
    return ok ? 0 : ar_error("%s: write failed: %s", path, strerror(errno));
}

int ar_ckpt_commit(ar_checkpoint *ck, int block, const ar_ckpt_array *arrays, int n)
{
    char tmp[PATH_MAX], final[PATH_MAX], old[PATH_MAX];
    if (block != ck->last + 1) return ar_error("%s: block %d committed after block %d", ck->dir, block, ck->last);
    path_of(tmp, ck, "chain-%04d.bin.tmp", block);
    path_of(final, ck, "chain-%04d.bin", block);
    FILE *f = open_tmp(tmp);
    if (!f) return -1;
    if (write_chain(f, tmp, block, arrays, n)) { fclose(f); unlink(tmp); return -1; }
    if (commit_file(ck, f, tmp, final)) return -1;
    int prev = ck->last;
    ck->last = block;
    if (write_manifest(ck)) { ck->last = prev; return -1; }
    if (prev >= 0) {    /* superseded; a leftover one is harmless, so no error */
        path_of(old, ck, "chain-%04d.bin", prev);
        unlink(old);
    }
    return 0;
}

/* Find entry name among the n header entries e; -1 when absent. */
static int find_entry(const unsigned char *e, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (!strncmp((const char *)e + i * (AR_CKPT_NAME_MAX + 8), name, AR_CKPT_NAME_MAX)) return i;
    return -1;
}

/* Check the header entries against the requested arrays and the file size. */
static int check_chain_entries(const char *p, const unsigned char *e, int count, ar_ckpt_array *a, int n,
                               uint64_t file_size)
{
    uint64_t total = 16 + (uint64_t)count * (AR_CKPT_NAME_MAX + 8);
    for (int j = 0; j < count; j++) {
        const unsigned char *ej = e + j * (AR_CKPT_NAME_MAX + 8);
        uint64_t nb = get_le(ej + AR_CKPT_NAME_MAX, 8);
        int i = 0;
        while (i < n && strncmp((const char *)ej, a[i].name, AR_CKPT_NAME_MAX)) i++;
        if (i == n) return ar_error("%s: unexpected array '%.*s'", p, AR_CKPT_NAME_MAX, (const char *)ej);
        if (find_entry(e, j, a[i].name) >= 0) return ar_error("%s: array '%s' twice", p, a[i].name);
        if (nb != a[i].nbytes)
            return ar_error("%s: array '%s' holds %llu bytes, this run needs %zu", p, a[i].name,
                            (unsigned long long)nb, a[i].nbytes);
        total += nb;
    }
    if (total != file_size)
        return ar_error("%s: %llu bytes, the header describes %llu", p, (unsigned long long)file_size,
                        (unsigned long long)total);
    return 0;
}

/* Read the payloads, in file order, into the arrays (allocating where asked). */
static int read_chain_payloads(FILE *f, const char *p, const unsigned char *e, int count, ar_ckpt_array *a, int n)
{
    for (int i = 0; i < n; i++) a[i].present = find_entry(e, count, a[i].name) >= 0;
    for (int j = 0; j < count; j++) {
        int i = 0;
        while (strncmp((const char *)e + j * (AR_CKPT_NAME_MAX + 8), a[i].name, AR_CKPT_NAME_MAX)) i++;
        if (!a[i].data && !(a[i].data = malloc(a[i].nbytes ? a[i].nbytes : 1)))
            return ar_error("%s: out of memory for '%s' (%zu bytes)", p, a[i].name, a[i].nbytes);
        if (fread(a[i].data, 1, a[i].nbytes, f) != a[i].nbytes) return ar_error("%s: truncated", p);
    }
    return 0;
}

int ar_ckpt_load_chain(const ar_checkpoint *ck, ar_ckpt_array *arrays, int n)
{
    char p[PATH_MAX];
    path_of(p, ck, "chain-%04d.bin", ck->last);
    if (ck->last < 0) return ar_error("%s: no finished block, no chain state", ck->dir);
    FILE *f = fopen(p, "rb");
    if (!f) return ar_error("%s: cannot open: %s", p, strerror(errno));
    struct stat st;
    unsigned char head[16], *e = NULL;
    int rc = -1;
    if (fstat(fileno(f), &st) || fread(head, 1, 16, f) != 16 || memcmp(head, CHAIN_MAGIC, 8))
        ar_error("%s: not a chain state file", p);
    else if ((int)get_le(head + 8, 4) != ck->last)
        ar_error("%s: state of block %d, the manifest says %d", p, (int)get_le(head + 8, 4), ck->last);
    else if (get_le(head + 12, 4) > (uint64_t)n)
        ar_error("%s: %u arrays, at most %d expected", p, (unsigned)get_le(head + 12, 4), n);
    else {
        int count = (int)get_le(head + 12, 4);
        size_t esz = (size_t)count * (AR_CKPT_NAME_MAX + 8);
        if (!(e = malloc(esz + 1))) ar_error("%s: out of memory", p);
        else if (fread(e, 1, esz, f) != esz) ar_error("%s: truncated header", p);
        else if (!check_chain_entries(p, e, count, arrays, n, (uint64_t)st.st_size))
            rc = read_chain_payloads(f, p, e, count, arrays, n);
    }
    free(e);
    fclose(f);
    return rc;
}

/* ---- model digest ----------------------------------------------------------- */

/* Fold a whole small file into h; a missing file folds its absence. */
static int digest_file(uint64_t *h, const char *dir, const char *name, int required)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *txt = read_small_file(p);
    if (!txt && (errno != ENOENT || required)) return ar_error("%s: cannot read: %s", p, strerror(errno));
    *h = ar_fnv1a64_update(*h, name, strlen(name) + 1);
    if (txt) *h = ar_fnv1a64_update(*h, txt, strlen(txt));
    free(txt);
    return 0;
}

/* Fold a safetensors file's name, size, and header (length + JSON) into h. */
static int digest_safetensors_header(uint64_t *h, const char *dir, const char *name)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f) return ar_error("%s: cannot open: %s", p, strerror(errno));
    struct stat st;
    unsigned char len8[8];
    int rc = -1;
    if (fstat(fileno(f), &st) || fread(len8, 1, 8, f) != 8) ar_error("%s: too short for a safetensors file", p);
    else {
        uint64_t hl = get_le(len8, 8), size = (uint64_t)st.st_size;
        char *hdr = hl <= MAX_ST_HEADER && hl + 8 <= size ? malloc(hl ? hl : 1) : NULL;
        if (!hdr || fread(hdr, 1, hl, f) != hl) ar_error("%s: unreadable safetensors header", p);
        else {
            *h = ar_fnv1a64_update(*h, name, strlen(name) + 1);
            *h = ar_fnv1a64_update(*h, &size, sizeof size);
            *h = ar_fnv1a64_update(*h, hdr, hl);
            rc = 0;
        }
        free(hdr);
    }
    fclose(f);
    return rc;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

static int is_safetensors(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return n > 12 && !strcmp(d->d_name + n - 12, ".safetensors");
}

int ar_ckpt_model_digest(const char *dir, char hex[17])
{
    uint64_t h = AR_FNV1A64_INIT;
    if (digest_file(&h, dir, "config.json", 1) || digest_file(&h, dir, "model.safetensors.index.json", 0)) return -1;
    struct dirent **list;
    int n = scandir(dir, &list, is_safetensors, by_name), rc = 0;
    if (n < 0) return ar_error("%s: cannot list: %s", dir, strerror(errno));
    for (int i = 0; i < n; i++) {
        if (!rc) rc = digest_safetensors_header(&h, dir, list[i]->d_name);
        free(list[i]);
    }
    free(list);
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
    return rc;
}
