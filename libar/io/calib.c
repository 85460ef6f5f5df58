#include "calib.h"
#include "hash.h"
#include "rng.h"
#include "error.h"
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static char *slurp(FILE *f, const char *path, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        char *nb = n + 1 >= cap ? realloc(buf, cap *= 2) : buf;
        if (!nb) { free(buf); ar_error("%s: out of memory reading %zu bytes", path, n); return NULL; }
        buf = nb;
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) { free(buf); ar_error("%s: read error: %s", path, strerror(errno)); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

static char *zstd_decompress_all(char *src, size_t n, const char *path, size_t *len)
{
    ZSTD_DStream *ds = ZSTD_createDStream();
    size_t cap = n * 4 + 1024, out_n = 0, ret = 1;
    char *out = malloc(cap);
    ZSTD_inBuffer in = {src, n, 0};
    while (out && in.pos < in.size) {
        char *nb = cap - out_n < 65536 ? realloc(out, cap *= 2) : out;
        if (!nb) { free(out); out = NULL; break; }
        out = nb;
        ZSTD_outBuffer ob = {out + out_n, cap - out_n - 1, 0};
        ret = ZSTD_decompressStream(ds, &ob, &in);
        out_n += ob.pos;
        if (ZSTD_isError(ret)) break;
    }
    ZSTD_freeDStream(ds);
    free(src);
    if (!out) {
        ar_error("%s: out of memory decompressing (%zu bytes so far)", path, out_n);
        return NULL;
    }
    if (ZSTD_isError(ret) || ret != 0) {
        free(out);
        ar_error("%s: corrupt or truncated zstd data%s%s", path, ZSTD_isError(ret) ? ": " : "",
                 ZSTD_isError(ret) ? ZSTD_getErrorName(ret) : "");
        return NULL;
    }
    out[out_n] = 0;
    *len = out_n;
    return out;
}

char *ar_read_text_file(const char *path, size_t *len)
{
    int is_stdin = !strcmp(path, "-");
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) { ar_error("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    char *buf = slurp(f, path, len);
    if (!is_stdin) fclose(f);
    size_t pl = strlen(path);
    if (buf && pl > 4 && !strcmp(path + pl - 4, ".zst")) buf = zstd_decompress_all(buf, *len, path, len);
    return buf;
}

static int has_suffix(const char *path, const char *suf)
{
    size_t pl = strlen(path), sl = strlen(suf);
    return pl >= sl && !strcmp(path + pl - sl, suf);
}

static int is_jsonl(const char *path)
{
    return has_suffix(path, ".jsonl") || has_suffix(path, ".jsonl.zst") || has_suffix(path, ".json") ||
           has_suffix(path, ".json.zst");
}

/* Random windows over one running text. */
static int build_windows(ar_tokenizer *tok, const char *path, const char *text, size_t len, int nsamples,
                         int seqlen, uint64_t seed, ar_calib_samples *out)
{
    int32_t *ids;
    size_t n;
    if (ar_tokenizer_encode(tok, text, len, 0, &ids, &n)) return ar_error_prefix(path);
    int bos_added = 0;
    int32_t bos = ar_tokenizer_bos(tok, &bos_added);
    int lead = bos_added && bos >= 0;
    size_t body = (size_t)seqlen - lead;
    if (n < body) {
        free(ids);
        return ar_error("%s: %zu tokens, fewer than one sample of %d", path, n, seqlen);
    }
    out->ids = malloc(sizeof(int32_t) * (size_t)nsamples * seqlen);
    if (!out->ids) {
        free(ids);
        return ar_error("%s: out of memory for %d samples of %d tokens", path, nsamples, seqlen);
    }
    uint64_t st = seed;
    for (int s = 0; s < nsamples; s++) {
        size_t start = ar_rand_below(&st, n - body + 1);
        int32_t *row = out->ids + (size_t)s * seqlen;
        if (lead) row[0] = bos;
        memcpy(row + lead, ids + start, body * sizeof(int32_t));
    }
    free(ids);
    out->n = nsamples;
    return 0;
}

/* Split jsonl text into document strings (pointers into a cJSON-owned copy). */
static int read_jsonl_docs(const char *path, char *text, char ***docs_out, size_t *ndocs)
{
    size_t cap = 1024, nd = 0, lineno = 0;
    char **docs = malloc(cap * sizeof *docs);
    if (!docs) return ar_error("%s: out of memory", path);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p) {
            cJSON *j = cJSON_Parse(p);
            cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
            if (!cJSON_IsString(t)) {
                cJSON_Delete(j);
                for (size_t k = 0; k < nd; k++) free(docs[k]);
                free(docs);
                return ar_error("%s:%zu: %s", path, lineno,
                                j ? "object has no \"text\" string" : "malformed JSON line");
            }
            char **nds = nd == cap ? realloc(docs, (cap *= 2) * sizeof *docs) : docs;
            char *doc = nds ? strdup(t->valuestring) : NULL;
            cJSON_Delete(j);
            if (!doc) {
                for (size_t k = 0; k < nd; k++) free((nds ? nds : docs)[k]);
                free(nds ? nds : docs);
                return ar_error("%s:%zu: out of memory", path, lineno);
            }
            docs = nds;
            docs[nd++] = doc;
        }
        line = nl ? nl + 1 : NULL;
    }
    *docs_out = docs;
    *ndocs = nd;
    return 0;
}

/* True when the last token occurs more than seqlen/2 times (AutoRound's
 * padding/repetition guard). */
static int too_repetitive(const int32_t *ids, int seqlen)
{
    int count = 0;
    for (int i = 0; i < seqlen; i++) count += ids[i] == ids[seqlen - 1];
    return count > seqlen / 2;
}

static int build_documents(ar_tokenizer *tok, const char *path, char *text, int nsamples, int seqlen,
                           uint64_t seed, ar_calib_samples *out)
{
    char **docs = NULL;
    size_t nd = 0;
    if (read_jsonl_docs(path, text, &docs, &nd)) return -1;
    uint64_t st = seed;
    for (size_t i = nd; i > 1; i--) { /* Fisher-Yates */
        size_t j = ar_rand_below(&st, i);
        char *t = docs[i - 1]; docs[i - 1] = docs[j]; docs[j] = t;
    }
    out->ids = malloc(sizeof(int32_t) * (size_t)nsamples * seqlen);
    int kept = 0, rc = out->ids ? 0 : ar_error("%s: out of memory for %d samples of %d tokens", path, nsamples, seqlen);
    for (size_t d = 0; !rc && d < nd && kept < nsamples; d++) {
        int32_t *ids;
        size_t n;
        if (ar_tokenizer_encode(tok, docs[d], strlen(docs[d]), 1, &ids, &n)) { rc = ar_error_prefix(path); break; }
        if (n >= (size_t)seqlen && !too_repetitive(ids, seqlen))
            memcpy(out->ids + (size_t)kept++ * seqlen, ids, sizeof(int32_t) * seqlen);
        free(ids);
    }
    for (size_t k = 0; k < nd; k++) free(docs[k]);
    free(docs);
    out->n = kept;
    if (!rc && kept == 0) rc = ar_error("%s: no document reaches %d tokens", path, seqlen);
    return rc;
}

int ar_calib_build(ar_tokenizer *tok, const char *path, int nsamples, int seqlen, uint64_t seed,
                   ar_calib_samples *out)
{
    memset(out, 0, sizeof *out);
    out->seqlen = seqlen;
    if (nsamples <= 0 || seqlen < 2) return ar_error("nsamples and seqlen must be positive (seqlen >= 2)");
    size_t len;
    char *text = ar_read_text_file(path, &len);
    if (!text) return -1;
    int rc;
    if (is_jsonl(path)) {
        out->mode = AR_CALIB_DOCUMENTS;
        rc = build_documents(tok, path, text, nsamples, seqlen, seed, out);
    } else {
        out->mode = AR_CALIB_WINDOWS;
        rc = build_windows(tok, path, text, len, nsamples, seqlen, seed, out);
    }
    free(text);
    if (rc) ar_calib_free(out);
    return rc;
}

void ar_calib_free(ar_calib_samples *s)
{
    free(s->ids);
    s->ids = NULL;
    s->n = 0;
}

int ar_config_digest(const char *model_dir, char hex[17])
{
    size_t pl = strlen(model_dir) + sizeof "/config.json", n;
    char *path = malloc(pl);
    if (!path) return ar_error("%s: out of memory", model_dir);
    snprintf(path, pl, "%s/config.json", model_dir);
    char *txt = ar_read_text_file(path, &n);
    free(path);
    if (!txt) return -1;
    snprintf(hex, 17, "%016llx", (unsigned long long)ar_fnv1a64(txt, n));
    free(txt);
    return 0;
}

int ar_config_digest_check(const char *model_dir, const char *hex)
{
    char have[17];
    if (ar_config_digest(model_dir, have)) return -1;
    if (strcmp(have, hex))
        return ar_error("%s: config.json differs from the one the calibration stream was made with", model_dir);
    return 0;
}
