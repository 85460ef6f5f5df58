#include "calib.h"
#include "chat_template.h"
#include "hash.h"
#include "rng.h"
#include "error.h"
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* ---- the dataset spec ----------------------------------------------------- */

static int parse_bool_opt(const char *spec, const char *key, const char *val, int *out)
{
    if (!val || !strcasecmp(val, "true")) *out = 1;
    else if (!strcasecmp(val, "false")) *out = 0;
    else return ar_error("dataset '%s': %s=%s is not true or false", spec, key, val);
    return 0;
}

int ar_calib_spec_parse(const char *spec, ar_calib_spec *out)
{
    memset(out, 0, sizeof *out);
    char *copy = strdup(spec);
    if (!copy) return ar_error("dataset '%s': out of memory", spec);
    int cap = 1;
    for (const char *c = spec; *c; c++) cap += *c == ',';
    out->src = calloc((size_t)cap, sizeof *out->src);
    if (!out->src) { free(copy); return ar_error("dataset '%s': out of memory", spec); }
    int rc = 0;
    char *save = NULL;
    for (char *item = copy, *next; item && !rc; item = next) {
        next = strchr(item, ',');
        if (next) *next++ = 0;
        ar_calib_source *src = &out->src[out->n++];
        src->num = -1;
        char *colon = strchr(item, ':');
        if (colon) *colon = 0;
        if (!*item) { rc = ar_error("dataset '%s': an empty file name", spec); break; }
        if (!(src->path = strdup(item))) { rc = ar_error("dataset '%s': out of memory", spec); break; }
        for (char *opt = colon ? colon + 1 : NULL, *onext; opt && !rc; opt = onext) {
            onext = strchr(opt, ':');
            if (onext) *onext++ = 0;
            char *eq = strchr(opt, '=');
            const char *val = NULL;
            if (eq) *eq = 0, val = eq + 1;
            if (!strcmp(opt, "num")) {
                char *end;
                errno = 0;
                long n = val ? strtol(val, &end, 10) : 0;
                if (!val || !*val || *end || errno || n < 1 || n > (1 << 24))
                    rc = ar_error("dataset '%s': num=%s is not a positive integer", spec, val ? val : "");
                else src->num = (int)n;
            } else if (!strcmp(opt, "concat")) {
                rc = parse_bool_opt(spec, opt, val, &src->concat);
            } else if (!strcmp(opt, "apply_chat_template")) {
                rc = parse_bool_opt(spec, opt, val, &src->chat);
            } else if (!strcmp(opt, "system_prompt")) {
                free(src->system_prompt);
                if (!(src->system_prompt = strdup(val ? val : ""))) rc = ar_error("dataset '%s': out of memory", spec);
                src->chat = 1; /* as AutoRound: a system prompt implies the chat template */
            } else if (!strcmp(opt, "split")) {
                rc = ar_error("dataset '%s': split= selects a split of a hub dataset; %s is a local file", spec,
                              src->path);
            } else {
                rc = ar_error("dataset '%s': unknown option '%s' (num=N, concat, apply_chat_template, "
                              "system_prompt=TEXT)", spec, opt);
            }
        }
    }
    (void)save;
    free(copy);
    if (rc) ar_calib_spec_free(out);
    return rc;
}

void ar_calib_spec_free(ar_calib_spec *s)
{
    for (int i = 0; i < s->n; i++) free(s->src[i].path), free(s->src[i].system_prompt);
    free(s->src);
    s->src = NULL;
    s->n = 0;
}

/* ---- rows of a JSONL file ---------------------------------------------------- */

/* One row: a text, or a chat conversation (messages, a JSON list). */
typedef struct {
    char *text;
    cJSON *messages;
    size_t line;
} calib_row;

static void rows_free(calib_row *r, size_t n)
{
    for (size_t k = 0; k < n; k++) free(r[k].text), cJSON_Delete(r[k].messages);
    free(r);
}

/* A row from its JSON value j (consumed), as AutoRound's local loader reads
 * one: a string, an object with a "messages" list (a conversation), an
 * object with one string member, or an object with a "text" string. NULL
 * with *why set when j is none of these. */
static const char *row_from_json(cJSON *j, calib_row *r)
{
    const cJSON *t = NULL, *msgs = NULL;
    if (cJSON_IsString(j)) t = j;
    else if (cJSON_IsObject(j)) {
        msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
        if (!cJSON_IsArray(msgs)) msgs = NULL;
        if (!msgs && j->child && !j->child->next && cJSON_IsString(j->child)) t = j->child;
        if (!msgs && !t) t = cJSON_GetObjectItemCaseSensitive(j, "text");
    }
    if (!msgs && !cJSON_IsString(t)) return j ? "object has no \"text\" string (nor a \"messages\" list)" : "malformed JSON line";
    if (msgs) r->messages = cJSON_DetachItemViaPointer(j, (cJSON *)msgs);
    else r->text = strdup(t->valuestring);
    return r->text || r->messages ? NULL : "out of memory";
}

static int push_row(const char *path, calib_row **rows, size_t *nd, size_t *cap, cJSON *j, size_t lineno)
{
    if (*nd == *cap) {
        calib_row *nr = realloc(*rows, (*cap *= 2) * sizeof **rows);
        if (!nr) return ar_error("%s:%zu: out of memory", path, lineno);
        *rows = nr;
    }
    calib_row *r = &(*rows)[*nd];
    memset(r, 0, sizeof *r);
    r->line = lineno;
    const char *why = row_from_json(j, r);
    if (why) { free(r->text); cJSON_Delete(r->messages); return ar_error("%s:%zu: %s", path, lineno, why); }
    (*nd)++;
    return 0;
}

/* The rows of a JSONL file (one JSON value per line), or of a .json file
 * holding one JSON list of rows, as AutoRound's json.load reads it ("line"
 * numbers of such a file count its elements). A .json holding one object is
 * read as lines (AutoRound would take the object's values as rows). */
static int read_rows(const char *path, char *text, calib_row **rows_out, size_t *nrows)
{
    size_t cap = 1024, nd = 0, lineno = 0;
    calib_row *rows = malloc(cap * sizeof *rows);
    if (!rows) return ar_error("%s: out of memory", path);
    int rc = 0;
    if (has_suffix(path, ".json") || has_suffix(path, ".json.zst")) {
        cJSON *all = cJSON_Parse(text);
        if (cJSON_IsArray(all)) {
            cJSON *e = all->child;
            while (!rc && e) {
                cJSON *next = e->next;
                cJSON *item = cJSON_DetachItemViaPointer(all, e);
                rc = push_row(path, &rows, &nd, &cap, item, ++lineno);
                cJSON_Delete(item);
                e = next;
            }
            cJSON_Delete(all);
            if (rc) { rows_free(rows, nd); return -1; }
            *rows_out = rows;
            *nrows = nd;
            return 0;
        }
        cJSON_Delete(all); /* not one list: read as lines */
    }
    for (char *line = text; !rc && line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p) {
            cJSON *j = cJSON_Parse(p);
            rc = push_row(path, &rows, &nd, &cap, j, lineno);
            cJSON_Delete(j);
        }
        line = nl ? nl + 1 : NULL;
    }
    if (rc) { rows_free(rows, nd); return -1; }
    *rows_out = rows;
    *nrows = nd;
    return 0;
}

/* AutoRound's default system prompt (_get_dataset_impl). */
static const char default_system_prompt[] = "You are a helpful assistant.";

/* The conversation of a row: [system prompt] + its messages, or + one user
 * message with the text right-stripped; without_system drops every system
 * message (AutoRound's retry when the template raises). */
static char *row_conversation(const calib_row *r, const char *system_prompt, int without_system)
{
    cJSON *a = cJSON_CreateArray();
    if (!a) return NULL;
    if (!without_system && system_prompt && *system_prompt) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(a, m);
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system_prompt);
    }
    if (r->messages) {
        const cJSON *m;
        cJSON_ArrayForEach(m, r->messages) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            if (without_system && cJSON_IsString(role) && !strcmp(role->valuestring, "system")) continue;
            cJSON_AddItemToArray(a, cJSON_Duplicate(m, 1));
        }
    } else {
        size_t n = strlen(r->text);
        while (n && (r->text[n - 1] == ' ' || r->text[n - 1] == '\t' || r->text[n - 1] == '\n' ||
                     r->text[n - 1] == '\r' || r->text[n - 1] == '\f' || r->text[n - 1] == '\v'))
            n--;
        char *t = strndup(r->text, n);
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(a, m);
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", t ? t : "");
        free(t);
    }
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return s;
}

/* Render row r through the chat template into r->text. */
static int render_row(const ar_chat_template *ct, const char *path, const ar_calib_source *src, calib_row *r,
                      int *fallbacks)
{
    const char *sp = src->system_prompt ? src->system_prompt : default_system_prompt;
    for (int without = 0; without < 2; without++) {
        char *conv = row_conversation(r, sp, without);
        if (!conv) return ar_error("%s:%zu: out of memory", path, r->line);
        char *out;
        size_t len;
        int rc = ar_chat_template_render(ct, conv, 1, &out, &len);
        free(conv);
        if (rc == 0) {
            free(r->text);
            r->text = out;
            *fallbacks += without;
            return 0;
        }
        if (rc != AR_CHAT_RAISED || without) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ar_last_error());
            return ar_error("%s:%zu: %s", path, r->line, msg);
        }
    }
    return -1;
}

/* The rows of src as texts, chat-rendered when src->chat (ct non-NULL). */
static int source_rows(const ar_chat_template *ct, const ar_calib_source *src, calib_row **rows, size_t *n,
                       int *fallbacks)
{
    size_t len;
    char *text = ar_read_text_file(src->path, &len);
    if (!text) return -1;
    int rc = read_rows(src->path, text, rows, n);
    free(text);
    for (size_t k = 0; !rc && k < *n; k++) {
        calib_row *r = &(*rows)[k];
        if (ct) rc = render_row(ct, src->path, src, r, fallbacks);
        else if (r->messages)
            rc = ar_error("%s:%zu: a chat row (\"messages\") needs apply_chat_template", src->path, r->line);
    }
    if (rc) rows_free(*rows, *n), *rows = NULL, *n = 0;
    return rc;
}

/* True when the last token occurs more than seqlen/2 times (AutoRound's
 * padding/repetition guard). */
static int too_repetitive(const int32_t *ids, int seqlen)
{
    int count = 0;
    for (int i = 0; i < seqlen; i++) count += ids[i] == ids[seqlen - 1];
    return count > seqlen / 2;
}

/* A growing set of samples of seqlen tokens. */
typedef struct { int32_t *ids; int n, cap, seqlen; } sampleset;

static int set_push(sampleset *s, const int32_t *row, const char *path)
{
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        int32_t *ni = realloc(s->ids, sizeof(int32_t) * (size_t)cap * s->seqlen);
        if (!ni) return ar_error("%s: out of memory for %d samples of %d tokens", path, cap, s->seqlen);
        s->ids = ni, s->cap = cap;
    }
    memcpy(s->ids + (size_t)s->n++ * s->seqlen, row, sizeof(int32_t) * s->seqlen);
    return 0;
}

/* AutoRound's filter: a sample reaches seqlen tokens and is not mostly its
 * last token; kept samples are cut to seqlen. */
static int keep_sample(sampleset *s, const int32_t *ids, size_t n, const char *path)
{
    if (n < (size_t)s->seqlen || too_repetitive(ids, s->seqlen)) return 0;
    return set_push(s, ids, path);
}

/* :concat — documents (each already cut to seqlen tokens, as AutoRound's
 * tokenizer call truncates) joined into one stream without their BOS/EOS,
 * cut into samples of seqlen - (BOS? 1 : 0) - (EOS? 1 : 0) tokens, each put
 * back between BOS and EOS when the documents carried them. */
typedef struct {
    int32_t *buf; size_t n, cap;
    int have_bos, have_eos;
    int32_t bos, eos;
} concat_state;

static int concat_doc(concat_state *c, sampleset *s, int32_t *ids, size_t n, const char *path)
{
    if (n > (size_t)s->seqlen) n = (size_t)s->seqlen;
    if (n && c->bos >= 0 && ids[0] == c->bos) ids++, n--, c->have_bos = 1;
    if (n && c->eos >= 0 && ids[n - 1] == c->eos) n--, c->have_eos = 1;
    if (c->n + n > c->cap) {
        size_t cap = (c->n + n) * 2 + 16;
        int32_t *nb = realloc(c->buf, cap * sizeof *nb);
        if (!nb) return ar_error("%s: out of memory", path);
        c->buf = nb, c->cap = cap;
    }
    memcpy(c->buf + c->n, ids, n * sizeof *ids);
    c->n += n;
    size_t os = (size_t)(c->have_bos + c->have_eos), body = (size_t)s->seqlen - os;
    int32_t *row = malloc(sizeof(int32_t) * s->seqlen);
    if (!row) return ar_error("%s: out of memory", path);
    int rc = 0;
    while (!rc && body > 0 && c->n >= body) {
        size_t k = 0;
        if (c->have_bos) row[k++] = c->bos;
        memcpy(row + k, c->buf, body * sizeof *row);
        k += body;
        if (c->have_eos) row[k++] = c->eos;
        rc = keep_sample(s, row, k, path);
        memmove(c->buf, c->buf + body, (c->n - body) * sizeof *c->buf);
        c->n -= body;
    }
    free(row);
    return rc;
}

/* The samples of one .jsonl source: rows shuffled with the seed, tokenized
 * (with special tokens), concatenated when asked, filtered; at most limit
 * (-1: all) kept. */
static int source_documents(ar_tokenizer *tok, const ar_chat_template *ct, const ar_calib_source *src, int seqlen,
                            uint64_t seed, int limit, sampleset *out, int *fallbacks)
{
    calib_row *rows = NULL;
    size_t nd = 0;
    if (source_rows(ct, src, &rows, &nd, fallbacks)) return -1;
    uint64_t st = seed;
    for (size_t i = nd; i > 1; i--) { /* Fisher-Yates */
        size_t j = ar_rand_below(&st, i);
        calib_row t = rows[i - 1]; rows[i - 1] = rows[j]; rows[j] = t;
    }
    concat_state cs = {0};
    cs.bos = ar_tokenizer_bos(tok, NULL);
    cs.eos = ar_tokenizer_eos(tok);
    int rc = 0;
    for (size_t d = 0; !rc && d < nd && (limit < 0 || out->n < limit); d++) {
        int32_t *ids;
        size_t n;
        if (ar_tokenizer_encode(tok, rows[d].text, strlen(rows[d].text), 1, &ids, &n)) { rc = ar_error_prefix(src->path); break; }
        rc = src->concat ? concat_doc(&cs, out, ids, n, src->path) : keep_sample(out, ids, n, src->path);
        free(ids);
    }
    if (limit >= 0 && out->n > limit) out->n = limit;
    free(cs.buf);
    rows_free(rows, nd);
    if (!rc && out->n == 0)
        rc = ar_error("%s: no %s reaches %d tokens", src->path, src->concat ? "concatenated sample" : "document", seqlen);
    return rc;
}

static int source_samples(ar_tokenizer *tok, const ar_chat_template *ct, const ar_calib_source *src, int nsamples,
                          int seqlen, uint64_t seed, int limit, sampleset *out, int *fallbacks)
{
    out->seqlen = seqlen;
    if (is_jsonl(src->path)) return source_documents(tok, ct, src, seqlen, seed, limit, out, fallbacks);
    if (src->concat) return ar_error("%s: concat applies to .jsonl documents, not to running text", src->path);
    if (src->chat) return ar_error("%s: apply_chat_template applies to .jsonl rows, not to running text", src->path);
    size_t len;
    char *text = ar_read_text_file(src->path, &len);
    if (!text) return -1;
    ar_calib_samples w = {0};
    w.seqlen = seqlen;
    int rc = build_windows(tok, src->path, text, len, src->num > 0 ? src->num : nsamples, seqlen, seed, &w);
    free(text);
    if (!rc) out->ids = w.ids, out->n = out->cap = w.n;
    else free(w.ids);
    return rc;
}

static long long floordiv(long long a, long long b)
{
    long long q = a / b;
    return (a % b && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int ar_calib_build_spec(ar_tokenizer *tok, const char *model_dir, const ar_calib_spec *spec, int nsamples,
                        int seqlen, uint64_t seed, ar_calib_samples *out)
{
    memset(out, 0, sizeof *out);
    out->seqlen = seqlen;
    if (nsamples <= 0 || seqlen < 2) return ar_error("nsamples and seqlen must be positive (seqlen >= 2)");
    if (spec->n < 1) return ar_error("no dataset given");
    ar_chat_template *ct = NULL;
    int need_ct = 0, njsonl = 0;
    for (int i = 0; i < spec->n; i++) need_ct |= spec->src[i].chat, njsonl += is_jsonl(spec->src[i].path);
    if (need_ct && !(ct = ar_chat_template_load(model_dir))) return -1;
    out->mode = njsonl == spec->n ? AR_CALIB_DOCUMENTS : njsonl == 0 ? AR_CALIB_WINDOWS : AR_CALIB_MIXED;
    sampleset *sets = calloc((size_t)spec->n, sizeof *sets);
    int rc = sets ? 0 : ar_error("out of memory");
    int single = spec->n == 1;
    for (int i = 0; !rc && i < spec->n; i++) {
        const ar_calib_source *src = &spec->src[i];
        int limit = src->num > 0 ? src->num : single ? nsamples : -1;
        rc = source_samples(tok, ct ? (src->chat ? ct : NULL) : NULL, src, nsamples, seqlen, seed, limit, &sets[i],
                            &out->chat_fallbacks);
        if (!rc && src->num > 0 && sets[i].n < src->num)
            rc = ar_error("%s: num=%d but only %d samples reach %d tokens", src->path, src->num, sets[i].n, seqlen);
    }
    ar_chat_template_free(ct);
    int *order = NULL, *take = NULL;
    if (!rc && !(order = calloc((size_t)spec->n, sizeof *order)) + !(take = calloc((size_t)spec->n, sizeof *take)))
        rc = ar_error("out of memory");
    if (!rc) {
        /* AutoRound's mix: sources ordered by their sample counts (stable),
         * those without num= share what the num= ones leave of nsamples */
        for (int i = 0; i < spec->n; i++) order[i] = i;
        for (int i = 1; i < spec->n; i++)
            for (int j = i; j > 0 && sets[order[j - 1]].n > sets[order[j]].n; j--) {
                int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
            }
        long long cnt = 0;
        int nnum = 0;
        for (int i = 0; i < spec->n; i++) if (spec->src[i].num > 0) cnt += spec->src[i].num, nnum++;
        if (cnt > nsamples) cnt = 0;
        long long total = 0;
        for (int k = 0; k < spec->n; k++) {
            int i = order[k];
            long long target;
            if (single) target = sets[i].n;
            else if (spec->src[i].num > 0) target = spec->src[i].num;
            else {
                target = floordiv(nsamples - cnt, nnum ? spec->n - nnum : spec->n - k);
                if (target > sets[i].n) target = sets[i].n;
                if (target < 0) target = 0;
                cnt += target;
            }
            take[k] = (int)target;
            total += target;
        }
        out->ids = malloc(sizeof(int32_t) * (size_t)(total ? total : 1) * seqlen);
        if (!out->ids) rc = ar_error("out of memory for %lld samples of %d tokens", total, seqlen);
        for (int k = 0; !rc && k < spec->n; k++) {
            memcpy(out->ids + (size_t)out->n * seqlen, sets[order[k]].ids, sizeof(int32_t) * (size_t)take[k] * seqlen);
            out->n += take[k];
        }
        if (!rc && !single) { /* the mixed set is shuffled with the seed */
            uint64_t st = seed;
            int32_t *tmp = malloc(sizeof(int32_t) * seqlen);
            if (!tmp) rc = ar_error("out of memory");
            for (size_t i = (size_t)out->n; !rc && i > 1; i--) {
                size_t j = ar_rand_below(&st, i);
                int32_t *a = out->ids + (i - 1) * seqlen, *b = out->ids + j * seqlen;
                memcpy(tmp, a, sizeof(int32_t) * seqlen);
                memcpy(a, b, sizeof(int32_t) * seqlen);
                memcpy(b, tmp, sizeof(int32_t) * seqlen);
            }
            free(tmp);
        }
        if (!rc && out->n > nsamples) out->n = nsamples;
        if (!rc && out->n == 0) rc = ar_error("no calibration sample reaches %d tokens", seqlen);
    }
    for (int i = 0; sets && i < spec->n; i++) free(sets[i].ids);
    free(sets);
    free(order);
    free(take);
    if (rc) ar_calib_free(out);
    return rc;
}

int ar_calib_build(ar_tokenizer *tok, const char *path, int nsamples, int seqlen, uint64_t seed,
                   ar_calib_samples *out)
{
    ar_calib_source src = {(char *)path, -1, 0, 0, NULL};
    ar_calib_spec spec = {&src, 1};
    return ar_calib_build_spec(tok, NULL, &spec, nsamples, seqlen, seed, out);
}

int ar_calib_texts(const char *model_dir, const ar_calib_source *src, char ***texts, size_t *n, int *fallbacks)
{
    *texts = NULL;
    *n = 0;
    if (!is_jsonl(src->path)) return ar_error("%s: only .jsonl rows can be listed as texts", src->path);
    ar_chat_template *ct = NULL;
    if (src->chat && !(ct = ar_chat_template_load(model_dir))) return -1;
    calib_row *rows = NULL;
    size_t nr = 0;
    int rc = source_rows(ct, src, &rows, &nr, fallbacks);
    ar_chat_template_free(ct);
    if (rc) return -1;
    char **t = malloc((nr ? nr : 1) * sizeof *t);
    if (!t) { rows_free(rows, nr); return ar_error("%s: out of memory", src->path); }
    for (size_t k = 0; k < nr; k++) t[k] = rows[k].text, rows[k].text = NULL;
    rows_free(rows, nr);
    *texts = t;
    *n = nr;
    return 0;
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
