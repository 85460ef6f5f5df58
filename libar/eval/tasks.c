/* tasks.c — lm-eval-harness's tasks from local JSONL files (tasks.h). */
#include "tasks.h"
#include "calib.h"
#include "error.h"
#include "pyrandom.h"
#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- growing strings ------------------------------------------------------ */

typedef struct { char *s; size_t n, cap; int oom; } sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p; b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void sb_add(sbuf *b, const char *s) { sb_addn(b, s, strlen(s)); }
/* The finished string (never NULL unless out of memory). */
static char *sb_take(sbuf *b)
{
    if (!b->s && !b->oom) sb_addn(b, "", 0);
    return b->oom ? (free(b->s), NULL) : b->s;
}
static char *cat(const char *a, const char *b)
{
    sbuf s = {0};
    sb_add(&s, a);
    sb_add(&s, b);
    return sb_take(&s);
}

/* ---- Python's str methods on UTF-8 ---------------------------------------- */

/* str.isspace() of one code point: bidirectional class WS, B or S, or Zs. */
static int py_space(int32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decode the code point at s[i] (of n bytes); *len its bytes (1 for an invalid byte). */
static int32_t cp_at(const char *s, size_t n, size_t i, int *len)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (k < 1) { *len = 1; return -1; }
    *len = (int)k;
    return c;
}

/* Bytes of trailing whitespace of s[0..n) (str.rstrip()). */
static size_t trailing_space(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xc0) == 0x80) st--;
        int len;
        int32_t c = cp_at(s, n, st, &len);
        if (c < 0 || st + (size_t)len != end || !py_space(c)) break;
        end = st;
    }
    return n - end;
}

/* str.strip(): a new string. */
static char *py_strip(const char *s)
{
    size_t n = strlen(s), a = 0;
    while (a < n) {
        int len;
        int32_t c = cp_at(s, n, a, &len);
        if (c < 0 || !py_space(c)) break;
        a += (size_t)len;
    }
    size_t t = trailing_space(s + a, n - a);
    sbuf b = {0};
    sb_addn(&b, s + a, n - a - t);
    return sb_take(&b);
}

/* Code points of s (len() of a Python str). */
static long py_len(const char *s)
{
    long k = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) k += (*p & 0xc0) != 0x80;
    return k;
}

/* str.capitalize(): the first character in title case, the rest lower case
 * (simple case mappings; Python applies the full ones, which differ only for
 * a few characters such as 'ß'). */
static char *py_capitalize(const char *s)
{
    size_t n = strlen(s);
    sbuf b = {0};
    for (size_t i = 0; i < n;) {
        int len;
        int32_t c = cp_at(s, n, i, &len);
        if (c < 0) sb_addn(&b, s + i, 1);
        else {
            utf8proc_uint8_t out[4];
            int32_t d = i == 0 ? utf8proc_totitle(c) : utf8proc_tolower(c);
            sb_addn(&b, (const char *)out, (size_t)utf8proc_encode_char(d, out));
        }
        i += (size_t)len;
    }
    return sb_take(&b);
}

/* Replace every non-overlapping occurrence of from in s by to (str.replace). */
static char *py_replace(const char *s, const char *from, const char *to)
{
    sbuf b = {0};
    size_t fl = strlen(from);
    for (const char *p = s;;) {
        const char *q = strstr(p, from);
        if (!q) { sb_add(&b, p); break; }
        sb_addn(&b, p, (size_t)(q - p));
        sb_add(&b, to);
        p = q + fl;
    }
    return sb_take(&b);
}

/* re.sub("\\[.*?\\]", "", s): each "[" with a "]" after it on the same line
 * is removed up to that first "]". */
static char *remove_brackets(const char *s)
{
    sbuf b = {0};
    for (const char *p = s; *p;) {
        if (*p == '[') {
            const char *q = p + 1;
            while (*q && *q != ']' && *q != '\n') q++;
            if (*q == ']') { p = q + 1; continue; }
        }
        sb_addn(&b, p++, 1);
    }
    return sb_take(&b);
}

/* lm-eval's hellaswag preprocess(). */
static char *hellaswag_pre(const char *text)
{
    char *a = py_strip(text), *b = a ? py_replace(a, " [title]", ". ") : NULL, *c = b ? remove_brackets(b) : NULL;
    char *d = c ? py_replace(c, "  ", " ") : NULL;
    free(a); free(b); free(c);
    return d;
}

/* ---- documents -------------------------------------------------------------- */

typedef enum { K_MC, K_LL, K_WINO } task_kind;

typedef struct {
    char *q;          /* doc_to_text (MC, LL) */
    int nchoice;
    char **choices;   /* MC: the answers; winogrande: the contexts (sentence up to "_" + option) */
    int gold;         /* MC, winogrande; -1 for LL */
    char *target;     /* LL: " " + last word; winogrande: the sentence after "_", stripped */
    char *subject;    /* mmlu */
    char *key;        /* the row as printed by cJSON: equality of documents */
    long subj_rows;   /* mmlu: rows of the file with this subject */
} doc;

typedef struct {
    const char *name;
    task_kind kind;
    const char *fewshot_split; /* <task>.<split>.jsonl, or NULL: the evaluated rows */
    int exclude_eval_doc;      /* lm-eval passes eval_doc to the sampler (fewshot split == test split) */
    int first_n;               /* first_n sampler (mmlu) instead of random sampling */
    int acc_norm, perplexity;
} task_def;

static const task_def TASKS[] = {
    {"lambada_openai", K_LL, NULL, 0, 0, 0, 1},
    {"piqa", K_MC, "train", 1, 0, 1, 0},
    {"hellaswag", K_MC, "train", 1, 0, 1, 0},
    {"arc_easy", K_MC, "train", 0, 0, 1, 0},
    {"arc_challenge", K_MC, "train", 0, 0, 1, 0},
    {"winogrande", K_WINO, "train", 1, 0, 0, 0},
    {"mmlu", K_MC, "dev", 0, 1, 0, 0},
};
#define NTASKS ((int)(sizeof TASKS / sizeof TASKS[0]))

static const task_def *find_task(const char *name, size_t len)
{
    for (int i = 0; i < NTASKS; i++)
        if (strlen(TASKS[i].name) == len && !strncmp(TASKS[i].name, name, len)) return &TASKS[i];
    return NULL;
}

int ar_task_known(const char *name) { return find_task(name, strlen(name)) ? 0 : -1; }

static void doc_free(doc *d)
{
    free(d->q); free(d->target); free(d->subject); free(d->key);
    for (int i = 0; i < d->nchoice; i++) free(d->choices[i]);
    free(d->choices);
    memset(d, 0, sizeof *d);
}

/* Row errors: "FILE:LINE: message". */
static const char *g_file;
static int g_line;
static int row_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int row_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ar_error("%s:%d: %s", g_file, g_line, msg);
}

static const char *get_str(const cJSON *row, const char *field)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, field);
    if (!cJSON_IsString(v)) { row_error("field '%s' is missing or not a string", field); return NULL; }
    return v->valuestring;
}

/* An integer field given as a JSON number or a string of digits. */
static int get_int(const cJSON *row, const char *field, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, field);
    if (cJSON_IsNumber(v) && v->valuedouble == (double)(int)v->valuedouble) { *out = (int)v->valuedouble; return 0; }
    if (cJSON_IsString(v) && *v->valuestring) {
        char *end;
        long x = strtol(v->valuestring, &end, 10);
        if (!*end && x >= 0 && x < 1000000) { *out = (int)x; return 0; }
    }
    return row_error("field '%s' is missing or not an integer", field);
}

/* An array of strings; *n its length. NULL (error set) if not one. */
static char **get_str_array(const cJSON *arr, const char *field, int *n)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) < 1) {
        row_error("field '%s' is missing or not a non-empty list of strings", field);
        return NULL;
    }
    *n = cJSON_GetArraySize(arr);
    char **out = calloc((size_t)*n, sizeof(char *));
    if (!out) { ar_error("out of memory"); return NULL; }
    for (int i = 0; i < *n; i++) {
        const cJSON *e = cJSON_GetArrayItem(arr, i);
        if (!cJSON_IsString(e) || !(out[i] = strdup(e->valuestring))) {
            for (int k = 0; k < i; k++) free(out[k]);
            free(out);
            row_error("field '%s' is missing or not a non-empty list of strings", field);
            return NULL;
        }
    }
    return out;
}

static int check_gold(doc *d, const char *field)
{
    if (d->gold < 0 || d->gold >= d->nchoice)
        return row_error("field '%s' gives answer %d, outside the %d choices", field, d->gold, d->nchoice);
    return 0;
}

/* The row as lm-eval's doc_to_text / doc_to_choice / doc_to_target see it. */
static int parse_row(const task_def *t, const cJSON *row, doc *d)
{
    const char *s, *s2, *s3, *s4;
    int n;
    memset(d, 0, sizeof *d);
    d->gold = -1;
    if (!cJSON_IsObject(row)) return row_error("not a JSON object");
    if (!strcmp(t->name, "lambada_openai")) {
        if (!(s = get_str(row, "text"))) return -1;
        const char *sp = strrchr(s, ' ');
        sbuf q = {0};
        sb_addn(&q, s, sp ? (size_t)(sp - s) : 0);
        d->q = sb_take(&q);
        d->target = cat(" ", sp ? sp + 1 : s);
    } else if (!strcmp(t->name, "piqa")) {
        if (!(s = get_str(row, "goal")) || !(s2 = get_str(row, "sol1")) || !(s3 = get_str(row, "sol2"))) return -1;
        if (get_int(row, "label", &d->gold)) return -1;
        sbuf q = {0};
        sb_add(&q, "Question: "); sb_add(&q, s); sb_add(&q, "\nAnswer:");
        d->q = sb_take(&q);
        d->nchoice = 2;
        if ((d->choices = calloc(2, sizeof(char *)))) { d->choices[0] = strdup(s2); d->choices[1] = strdup(s3); }
        if (check_gold(d, "label")) return -1;
    } else if (!strcmp(t->name, "hellaswag")) {
        if (!(s = get_str(row, "activity_label")) || !(s2 = get_str(row, "ctx_a")) || !(s3 = get_str(row, "ctx_b")))
            return -1;
        if (get_int(row, "label", &d->gold)) return -1;
        char *cap = py_capitalize(s3);
        sbuf q = {0};
        sb_add(&q, s); sb_add(&q, ": "); sb_add(&q, s2); sb_add(&q, " "); sb_add(&q, cap ? cap : "");
        free(cap);
        char *raw = sb_take(&q);
        d->q = raw ? hellaswag_pre(raw) : NULL;
        free(raw);
        char **e = get_str_array(cJSON_GetObjectItemCaseSensitive(row, "endings"), "endings", &n);
        if (!e) return -1;
        d->nchoice = n;
        d->choices = e;
        for (int i = 0; i < n; i++) { char *p = hellaswag_pre(e[i]); free(e[i]); e[i] = p; }
        if (check_gold(d, "label")) return -1;
    } else if (!strncmp(t->name, "arc_", 4)) {
        if (!(s = get_str(row, "question")) || !(s2 = get_str(row, "answerKey"))) return -1;
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(row, "choices");
        int nl;
        char **text = get_str_array(cJSON_GetObjectItemCaseSensitive(ch, "text"), "choices.text", &n);
        if (!text) return -1;
        d->choices = text;
        d->nchoice = n;
        char **lab = get_str_array(cJSON_GetObjectItemCaseSensitive(ch, "label"), "choices.label", &nl);
        if (!lab) return -1;
        for (int i = 0; i < nl && d->gold < 0; i++) if (!strcmp(lab[i], s2)) d->gold = i;
        for (int i = 0; i < nl; i++) free(lab[i]);
        free(lab);
        if (nl != n) return row_error("choices.text has %d entries but choices.label %d", n, nl);
        if (d->gold < 0) return row_error("answerKey '%s' is not among choices.label", s2);
        sbuf q = {0};
        sb_add(&q, "Question: "); sb_add(&q, s); sb_add(&q, "\nAnswer:");
        d->q = sb_take(&q);
    } else if (!strcmp(t->name, "winogrande")) {
        if (!(s = get_str(row, "sentence")) || !(s2 = get_str(row, "option1")) || !(s3 = get_str(row, "option2")))
            return -1;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(row, "answer");
        if (!cJSON_IsString(a) || (strcmp(a->valuestring, "1") && strcmp(a->valuestring, "2")))
            return row_error("field 'answer' is missing or not \"1\" or \"2\"");
        d->gold = a->valuestring[0] - '1';
        const char *us = strchr(s, '_');
        if (!us) return row_error("field 'sentence' has no \"_\" to fill");
        d->target = py_strip(us + 1);
        d->nchoice = 2;
        if ((d->choices = calloc(2, sizeof(char *)))) {
            sbuf c1 = {0}, c2 = {0};
            sb_addn(&c1, s, (size_t)(us - s)); sb_add(&c1, s2);
            sb_addn(&c2, s, (size_t)(us - s)); sb_add(&c2, s3);
            d->choices[0] = sb_take(&c1);
            d->choices[1] = sb_take(&c2);
        }
    } else if (!strcmp(t->name, "mmlu")) {
        if (!(s = get_str(row, "question")) || !(s4 = get_str(row, "subject"))) return -1;
        if (get_int(row, "answer", &d->gold)) return -1;
        char **c = get_str_array(cJSON_GetObjectItemCaseSensitive(row, "choices"), "choices", &n);
        if (!c) return -1;
        if (n != 4) {
            for (int i = 0; i < n; i++) free(c[i]);
            free(c);
            return row_error("field 'choices' has %d entries, mmlu's prompt needs 4", n);
        }
        char *qs = py_strip(s);
        sbuf q = {0};
        sb_add(&q, qs ? qs : "");
        free(qs);
        static const char *const letter[4] = {"\nA. ", "\nB. ", "\nC. ", "\nD. "};
        for (int i = 0; i < 4; i++) { sb_add(&q, letter[i]); sb_add(&q, c[i]); free(c[i]); }
        free(c);
        sb_add(&q, "\nAnswer:");
        d->q = sb_take(&q);
        d->subject = strdup(s4);
        d->nchoice = 4;
        if ((d->choices = calloc(4, sizeof(char *))))
            for (int i = 0; i < 4; i++) d->choices[i] = strdup((const char *[]){"A", "B", "C", "D"}[i]);
        if (check_gold(d, "answer")) return -1;
    }
    d->key = cJSON_PrintUnformatted(row);
    int ok = d->key && (t->kind == K_LL ? d->q && d->target : d->choices && (t->kind != K_MC || d->q));
    for (int i = 0; ok && i < d->nchoice; i++) ok = d->choices[i] != NULL;
    if (t->kind == K_WINO) ok = ok && d->target;
    if (t->kind == K_MC && !strcmp(t->name, "mmlu")) ok = ok && d->subject;
    return ok ? 0 : ar_error("out of memory");
}

typedef struct { doc *d; int n; } doc_list;

static void docs_free(doc_list *l)
{
    for (int i = 0; i < l->n; i++) doc_free(&l->d[i]);
    free(l->d);
    l->d = NULL; l->n = 0;
}

/* Read path: one document a non-blank line. */
static int read_docs(const task_def *t, const char *path, doc_list *out)
{
    size_t len;
    out->d = NULL; out->n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ar_error("%s: cannot open: no such task data file (task %s)", path, t->name);
    fclose(f);
    char *text = ar_read_text_file(path, &len);
    if (!text) return ar_error_prefix(path);
    int cap = 0, rc = 0;
    g_file = path;
    g_line = 0;
    for (char *p = text; *p && !rc;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        g_line++;
        char *s = p;
        while (*s == ' ' || *s == '\t' || *s == '\r') s++;
        if (*s) {
            cJSON *row = cJSON_Parse(s);
            if (!row) rc = row_error("not valid JSON");
            else {
                if (out->n == cap) {
                    cap = cap ? cap * 2 : 64;
                    doc *nd = realloc(out->d, sizeof(doc) * (size_t)cap);
                    if (!nd) rc = ar_error("out of memory");
                    else out->d = nd;
                }
                if (!rc) {
                    rc = parse_row(t, row, &out->d[out->n]);
                    out->n++; /* freed by docs_free, filled or not */
                }
                cJSON_Delete(row);
            }
        }
        if (!nl) break;
        p = nl + 1;
    }
    free(text);
    if (!rc && out->n == 0) rc = ar_error("%s: no rows", path);
    if (rc) docs_free(out);
    return rc;
}

/* ---- contexts and requests ------------------------------------------------- */

/* The description before the examples (lm-eval's system message). */
static char *description(const task_def *t, const doc *d)
{
    if (strcmp(t->name, "mmlu")) return strdup("");
    char *subj = py_replace(d->subject, "_", " ");
    sbuf b = {0};
    sb_add(&b, "The following are multiple choice questions (with answers) about ");
    sb_add(&b, subj ? subj : "");
    sb_add(&b, ".\n\n");
    free(subj);
    return sb_take(&b);
}

/* One few-shot example: question, target delimiter " ", answer, "\n\n". */
static void add_shot(sbuf *b, const task_def *t, const doc *s)
{
    if (t->kind == K_WINO) sb_add(b, s->choices[s->gold]);
    else sb_add(b, s->q);
    sb_add(b, " ");
    sb_add(b, t->kind == K_MC ? s->choices[s->gold] : s->target);
    sb_add(b, "\n\n");
}

/* Indices into pool of the few-shot examples of document d (lm-eval's sampler). */
static int pick_shots(const task_def *t, ar_pyrandom *rnd, const doc_list *pool, const doc *d, int k, int *out,
                      const char *pool_path)
{
    if (t->first_n) { /* the first k rows of the same subject (lm-eval's first_n sampler) */
        int got = 0;
        for (int i = 0; i < pool->n && got < k; i++)
            if (!strcmp(pool->d[i].subject, d->subject) && (!t->exclude_eval_doc || strcmp(pool->d[i].key, d->key)))
                out[got++] = i;
        if (got < k) return ar_error("%s: %d few-shot rows of subject '%s', fewer than --num_fewshot %d", pool_path, got, d->subject, k);
        return 0;
    }
    int draw = t->exclude_eval_doc ? k + 1 : k;
    int *tmp = malloc(sizeof(int) * (size_t)(draw + pool->n + 1));
    if (!tmp) return ar_error("out of memory");
    if (ar_pyrandom_sample(rnd, pool->n, draw, tmp)) {
        free(tmp);
        return ar_error("%s: %d rows, too few to draw %d few-shot examples", pool_path, pool->n, draw);
    }
    int got = 0;
    for (int i = 0; i < draw && got < k; i++)
        if (!t->exclude_eval_doc || strcmp(pool->d[tmp[i]].key, d->key)) out[got++] = tmp[i];
    if (got < k) { /* lm-eval resamples from the pool without the copies of d */
        int m = 0;
        int *keep = tmp + draw;
        for (int i = 0; i < pool->n; i++) if (strcmp(pool->d[i].key, d->key)) keep[m++] = i;
        int *sel = malloc(sizeof(int) * (size_t)(k ? k : 1));
        if (!sel || ar_pyrandom_sample(rnd, m, k, sel)) {
            free(sel); free(tmp);
            return ar_error("%s: too few rows other than the evaluated one for %d few-shot examples", pool_path, k);
        }
        for (int i = 0; i < k; i++) out[i] = keep[sel[i]];
        free(sel);
    }
    free(tmp);
    return 0;
}

typedef struct { char *ctx, *cont; } req_text;

/* Requests of document d after the few-shot prefix: MC one per choice
 * (context, " " + choice); LL (context, target); winogrande one per option
 * (prefix + option, " " + target). *n gets their number. */
static req_text *doc_requests(const task_def *t, const doc *d, const char *prefix, int *n)
{
    *n = t->kind == K_LL ? 1 : d->nchoice;
    req_text *r = calloc((size_t)*n, sizeof *r);
    if (!r) return NULL;
    int ok = 1;
    for (int i = 0; i < *n; i++) {
        if (t->kind == K_WINO) { r[i].ctx = cat(prefix, d->choices[i]); r[i].cont = cat(" ", d->target); }
        else if (t->kind == K_LL) { r[i].ctx = cat(prefix, d->q); r[i].cont = strdup(d->target); }
        else { r[i].ctx = cat(prefix, d->q); r[i].cont = cat(" ", d->choices[i]); }
        ok = ok && r[i].ctx && r[i].cont;
    }
    if (!ok) {
        for (int i = 0; i < *n; i++) { free(r[i].ctx); free(r[i].cont); }
        free(r);
        return NULL;
    }
    return r;
}

/* lm-eval's loglikelihood(): token ids of (context, continuation). */
static int encode_pair(ar_tokenizer *tok, const char *ctx, const char *cont, int32_t **ci, int *nc, int32_t **ki,
                       int *nk)
{
    size_t n1, n2;
    int32_t *whole = NULL, *c = NULL;
    if (!*ctx) {
        int32_t pre = ar_tokenizer_bos(tok, NULL);
        if (pre < 0) pre = ar_tokenizer_eos(tok);
        if (pre < 0) return ar_error("an empty context needs a BOS or EOS token, and the tokenizer has neither");
        if (ar_tokenizer_encode(tok, cont, strlen(cont), 0, &whole, &n1)) return -1;
        if (n1 > 0 && whole[0] == pre) { /* lm-eval: the continuation's first token becomes the context */
            *ci = malloc(sizeof(int32_t)); (*ci)[0] = whole[0];
            *nc = 1;
            memmove(whole, whole + 1, sizeof(int32_t) * (n1 - 1));
            *ki = whole; *nk = (int)n1 - 1;
        } else {
            *ci = malloc(sizeof(int32_t)); (*ci)[0] = pre;
            *nc = 1;
            *ki = whole; *nk = (int)n1;
        }
        return 0;
    }
    /* lm-eval's tok_encode: no special tokens for a text that already starts
     * with the prefix token's text */
    int32_t pre = ar_tokenizer_bos(tok, NULL);
    if (pre < 0) pre = ar_tokenizer_eos(tok);
    const char *pre_s = pre >= 0 ? ar_tokenizer_token(tok, pre) : NULL;
    int special = !(pre_s && *pre_s && !strncmp(ctx, pre_s, strlen(pre_s)));
    size_t lc = strlen(ctx), sp = trailing_space(ctx, lc);
    if (ar_tokenizer_encode(tok, ctx, lc - sp, special, &c, &n1)) return -1;
    sbuf w = {0};
    sb_add(&w, ctx);
    sb_add(&w, cont);
    if (!w.s || ar_tokenizer_encode(tok, w.s, w.n, special, &whole, &n2)) { free(w.s); free(c); return w.s ? -1 : ar_error("out of memory"); }
    free(w.s);
    size_t k = n2 > n1 ? n2 - n1 : 0;
    int32_t *cont_ids = malloc(sizeof(int32_t) * (k ? k : 1));
    if (!cont_ids) { free(c); free(whole); return ar_error("out of memory"); }
    memcpy(cont_ids, whole + (n2 - k), sizeof(int32_t) * k);
    free(whole);
    *ci = c; *nc = (int)n1;
    *ki = cont_ids; *nk = (int)k;
    return 0;
}

/* ---- metrics ---------------------------------------------------------------- */

/* Python's sum(arr) / len(arr), left to right. */
static double py_mean(const double *x, long n)
{
    double s = 0;
    for (long i = 0; i < n; i++) s += x[i];
    return s / (double)n;
}

/* lm-eval's sample_stddev / sqrt(n); NAN for fewer than 2 values. */
static double mean_stderr(const double *x, long n)
{
    if (n < 2) return NAN;
    double mu = py_mean(x, n), s = 0;
    for (long i = 0; i < n; i++) s += (x[i] - mu) * (x[i] - mu);
    return sqrt(s / (double)(n - 1)) / sqrt((double)n);
}

/* lm-eval's bootstrap_stderr(perplexity, xs, iters): chunks of 1000 draws,
 * chunk i from random.Random(i), each draw rnd.choices(xs, k=len(xs)). */
static double perplexity_bootstrap(const double *x, long n, long iters)
{
    long chunk = iters < 1000 ? iters : 1000, nchunks = chunk ? iters / chunk : 0, total = nchunks * chunk;
    if (total < 2) return NAN;
    double *res = malloc(sizeof(double) * (size_t)total);
    if (!res) return NAN;
    ar_pyrandom r;
    for (long c = 0; c < nchunks; c++) {
        ar_pyrandom_seed(&r, (uint64_t)c);
        for (long j = 0; j < chunk; j++) {
            double s = 0;
            for (long i = 0; i < n; i++) s += x[(long)floor(ar_pyrandom_random(&r) * (double)n)];
            res[c * chunk + j] = exp(-(s / (double)n));
        }
    }
    double mu = py_mean(res, total), s = 0;
    for (long i = 0; i < total; i++) s += (res[i] - mu) * (res[i] - mu);
    free(res);
    return sqrt(s / (double)(total - 1));
}

static int first_argmax(const double *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[b]) b = i;
    return b;
}

static void add_num(cJSON *o, const char *k, double v)
{
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddStringToObject(o, k, "N/A");
}

/* ---- one task ---------------------------------------------------------------- */

typedef struct {
    const ar_tasks_opts *o;
    const char *task;
} prog_ctx;

static void prog_cb(void *arg, int done, int total)
{
    prog_ctx *p = arg;
    if (p->o->progress) p->o->progress(p->o->progress_arg, p->task, done, total);
}

static char *path_of(const char *dir, const char *name, const char *split)
{
    sbuf b = {0};
    sb_add(&b, dir);
    sb_add(&b, "/");
    sb_add(&b, name);
    if (split) { sb_add(&b, "."); sb_add(&b, split); }
    sb_add(&b, ".jsonl");
    return sb_take(&b);
}

/* Aggregate rows [lo, hi) of per-doc metrics into results[name]. */
static void put_result(cJSON *results, cJSON *nsamp, const char *name, const task_def *t, const double *acc,
                       const double *accn, const double *ll, long lo, long hi, long original, long iters)
{
    cJSON *r = cJSON_AddObjectToObject(results, name);
    long n = hi - lo;
    cJSON_AddStringToObject(r, "alias", name);
    add_num(r, "acc,none", py_mean(acc + lo, n));
    add_num(r, "acc_stderr,none", mean_stderr(acc + lo, n));
    if (t->acc_norm) {
        add_num(r, "acc_norm,none", py_mean(accn + lo, n));
        add_num(r, "acc_norm_stderr,none", mean_stderr(accn + lo, n));
    }
    if (t->perplexity) {
        add_num(r, "perplexity,none", exp(-py_mean(ll + lo, n)));
        add_num(r, "perplexity_stderr,none", iters > 0 ? perplexity_bootstrap(ll + lo, n, iters) : NAN);
    }
    cJSON *s = cJSON_AddObjectToObject(nsamp, name);
    cJSON_AddNumberToObject(s, "original", (double)original);
    cJSON_AddNumberToObject(s, "effective", (double)n);
}

static int run_task(const ar_tasks_opts *o, const task_def *t, ar_model *m, ar_model_gpu *gpu, ar_tokenizer *tok,
                    int max_length, cJSON *results, cJSON *nsamp)
{
    doc_list docs = {0}, pool = {0};
    char *path = path_of(o->data_dir, t->name, NULL), *pool_path = NULL;
    int rc = -1, nreq = 0;
    req_text *rt = NULL;
    ar_ll_request *rq = NULL;
    int *doc_first = NULL, *greedy = NULL, *order = NULL;
    double *ll = NULL, *acc = NULL, *accn = NULL, *dll = NULL;
    if (!path) { ar_error("out of memory"); goto out; }
    if (read_docs(t, path, &docs)) goto out;
    long original = docs.n, n = o->limit > 0 && o->limit < docs.n ? o->limit : docs.n;
    if (t->first_n) { /* mmlu: one lm-eval task per subject, so --limit counts per subject */
        for (long i = 0; i < docs.n; i++) {
            docs.d[i].subj_rows = 0;
            for (long j = 0; j < docs.n; j++) docs.d[i].subj_rows += !strcmp(docs.d[j].subject, docs.d[i].subject);
        }
        long kept = 0;
        for (long i = 0; i < docs.n; i++) {
            long rank = 0;
            for (long j = 0; j < kept; j++) rank += !strcmp(docs.d[j].subject, docs.d[i].subject);
            if (o->limit > 0 && rank >= o->limit) { doc_free(&docs.d[i]); continue; }
            docs.d[kept++] = docs.d[i];
        }
        docs.n = (int)kept;
        n = kept;
    }
    if (o->num_fewshot > 0) {
        if (t->fewshot_split) {
            if (!(pool_path = path_of(o->data_dir, t->name, t->fewshot_split))) { ar_error("out of memory"); goto out; }
            if (read_docs(t, pool_path, &pool)) goto out;
        } else {
            pool_path = strdup(path);
            pool = docs; /* the evaluated rows, all of them (borrowed) */
        }
    }
    /* requests of every document, in document order (the sampler's order) */
    ar_pyrandom rnd;
    ar_pyrandom_seed(&rnd, o->fewshot_seed);
    int cap = 0, *shots = malloc(sizeof(int) * (size_t)(o->num_fewshot + 1));
    doc_first = malloc(sizeof(int) * (size_t)(n + 1));
    if (!shots || !doc_first) { free(shots); ar_error("out of memory"); goto out; }
    for (long i = 0; i < n; i++) {
        const doc *d = &docs.d[i];
        char *desc = description(t, d);
        sbuf pre = {0};
        sb_add(&pre, desc ? desc : "");
        free(desc);
        if (o->num_fewshot > 0) {
            if (pick_shots(t, &rnd, &pool, d, o->num_fewshot, shots, pool_path)) { free(pre.s); free(shots); goto out; }
            for (int k = 0; k < o->num_fewshot; k++) add_shot(&pre, t, &pool.d[shots[k]]);
        }
        char *prefix = sb_take(&pre);
        int nr;
        req_text *dr = prefix ? doc_requests(t, d, prefix, &nr) : NULL;
        free(prefix);
        if (!dr) { free(shots); ar_error("out of memory"); goto out; }
        if (nreq + nr > cap) {
            cap = (nreq + nr) * 2;
            req_text *p = realloc(rt, sizeof *rt * (size_t)cap);
            if (!p) { free(dr); free(shots); ar_error("out of memory"); goto out; }
            rt = p;
        }
        doc_first[i] = nreq;
        memcpy(rt + nreq, dr, sizeof *dr * (size_t)nr);
        nreq += nr;
        free(dr);
    }
    free(shots);
    doc_first[n] = nreq;
    rq = calloc((size_t)nreq + 1, sizeof *rq);
    ll = malloc(sizeof(double) * ((size_t)nreq + 1));
    greedy = malloc(sizeof(int) * ((size_t)nreq + 1));
    if (!rq || !ll || !greedy) { ar_error("out of memory"); goto out; }
    for (int i = 0; i < nreq; i++) {
        int32_t *ci = NULL, *ki = NULL;
        if (encode_pair(tok, rt[i].ctx, rt[i].cont, &ci, &rq[i].nctx, &ki, &rq[i].ncont)) goto out;
        rq[i].ctx = ci; rq[i].cont = ki;
        if (rq[i].ncont < 1) {
            long d = 0;
            while (doc_first[d + 1] <= i) d++;
            ar_error("%s: row %ld: the continuation \"%s\" gives no tokens", path, d + 1, rt[i].cont);
            goto out;
        }
    }
    prog_ctx pc = {o, t->name};
    if (ar_loglik(m, gpu, rq, nreq, max_length, o->batch, ll, t->kind == K_LL ? greedy : NULL, prog_cb, &pc)) goto out;
    if (t->kind != K_LL) for (int i = 0; i < nreq; i++) greedy[i] = -1; /* not computed */
    /* per-document metrics */
    acc = malloc(sizeof(double) * (size_t)(n + 1));
    accn = malloc(sizeof(double) * (size_t)(n + 1));
    dll = malloc(sizeof(double) * (size_t)(n + 1));
    order = malloc(sizeof(int) * (size_t)(n + 1));
    if (!acc || !accn || !dll || !order) { ar_error("out of memory"); goto out; }
    for (long i = 0; i < n; i++) {
        const doc *d = &docs.d[i];
        const double *l = ll + doc_first[i];
        int nr = doc_first[i + 1] - doc_first[i];
        if (t->kind == K_LL) {
            acc[i] = greedy[doc_first[i]];
            accn[i] = NAN;
            dll[i] = l[0];
        } else {
            double norm[64], *nv = nr <= 64 ? norm : malloc(sizeof(double) * (size_t)nr);
            if (!nv) { ar_error("out of memory"); goto out; }
            for (int k = 0; k < nr; k++) nv[k] = l[k] / (double)py_len(d->choices[k]);
            acc[i] = first_argmax(l, nr) == d->gold;
            accn[i] = first_argmax(nv, nr) == d->gold;
            if (nv != norm) free(nv);
            dll[i] = NAN;
        }
        if (o->samples) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddStringToObject(s, "task", t->name);
            cJSON_AddNumberToObject(s, "doc_id", (double)i);
            if (d->subject) cJSON_AddStringToObject(s, "subject", d->subject);
            cJSON_AddNumberToObject(s, "target", d->gold);
            cJSON *a = cJSON_AddArrayToObject(s, "lls"), *g = cJSON_AddArrayToObject(s, "greedy");
            cJSON *ctx = cJSON_AddArrayToObject(s, "contexts"), *cont = cJSON_AddArrayToObject(s, "continuations");
            for (int k = 0; k < nr; k++) {
                cJSON_AddItemToArray(a, cJSON_CreateNumber(l[k]));
                int gv = greedy[doc_first[i] + k];
                cJSON_AddItemToArray(g, gv < 0 ? cJSON_CreateNull() : cJSON_CreateBool(gv));
                cJSON_AddItemToArray(ctx, cJSON_CreateString(rt[doc_first[i] + k].ctx));
                cJSON_AddItemToArray(cont, cJSON_CreateString(rt[doc_first[i] + k].cont));
            }
            cJSON_AddNumberToObject(s, "acc", acc[i]);
            if (t->acc_norm) cJSON_AddNumberToObject(s, "acc_norm", accn[i]);
            char *line = cJSON_PrintUnformatted(s);
            if (line) { fputs(line, o->samples); fputc('\n', o->samples); free(line); }
            cJSON_Delete(s);
        }
    }
    if (strcmp(t->name, "mmlu")) {
        put_result(results, nsamp, t->name, t, acc, accn, dll, 0, n, original, o->bootstrap_iters);
    } else {
        /* lm-eval's mmlu is one task per subject; the group's acc is their
         * size-weighted mean (= the mean over all rows). Subjects here keep the
         * file's row order; each subject's rows are gathered in order. */
        double *a2 = malloc(sizeof(double) * (size_t)n), *b2 = malloc(sizeof(double) * (size_t)n);
        int *done = calloc((size_t)n, sizeof(int));
        if (!a2 || !b2 || !done) { free(a2); free(b2); free(done); ar_error("out of memory"); goto out; }
        put_result(results, nsamp, "mmlu", t, acc, accn, dll, 0, n, original, 0);
        for (long i = 0; i < n; i++) {
            if (done[i]) continue;
            long k = 0;
            for (long j = i; j < n; j++)
                if (!done[j] && !strcmp(docs.d[j].subject, docs.d[i].subject)) { a2[k] = acc[j]; b2[k] = accn[j]; k++; done[j] = 1; }
            char name[256];
            snprintf(name, sizeof name, "mmlu_%s", docs.d[i].subject);
            put_result(results, nsamp, name, t, a2, b2, NULL, 0, k, docs.d[i].subj_rows, 0);
        }
        free(a2); free(b2); free(done);
    }
    rc = 0;
out:
    if (rt) for (int i = 0; i < nreq; i++) { free(rt[i].ctx); free(rt[i].cont); }
    if (rq) for (int i = 0; i < nreq; i++) { free((void *)rq[i].ctx); free((void *)rq[i].cont); }
    free(rt); free(rq); free(ll); free(greedy); free(doc_first); free(acc); free(accn); free(dll); free(order);
    if (pool.d != docs.d) docs_free(&pool);
    docs_free(&docs);
    free(path); free(pool_path);
    return rc;
}

/* ---- all tasks ------------------------------------------------------------------ */

void ar_tasks_opts_default(ar_tasks_opts *o)
{
    memset(o, 0, sizeof *o);
    o->batch = 16;
    o->fewshot_seed = 1234;
    o->bootstrap_iters = 100000;
}

char *ar_tasks_run(const ar_tasks_opts *o, ar_model *m, ar_model_gpu *gpu, ar_tokenizer *tok)
{
    if (!o->tasks || !*o->tasks) { ar_error("no task given"); return NULL; }
    if (!o->data_dir) { ar_error("no task data folder given"); return NULL; }
    if (o->num_fewshot < 0 || o->batch < 1 || o->limit < 0 || o->bootstrap_iters < 0) {
        ar_error("task options out of range");
        return NULL;
    }
    /* every name first, so a typo fails before any scoring */
    for (const char *p = o->tasks; *p;) {
        size_t len = strcspn(p, ",");
        if (!find_task(p, len)) {
            sbuf names = {0};
            for (int i = 0; i < NTASKS; i++) { if (i) sb_add(&names, ", "); sb_add(&names, TASKS[i].name); }
            ar_error("unknown task '%.*s' (known: %s)", (int)len, p, names.s ? names.s : "");
            free(names.s);
            return NULL;
        }
        p += len + (p[len] == ',');
    }
    const ar_config *c = ar_model_config(m);
    int max_length = o->max_length > 0 ? o->max_length : c->max_pos > 0 ? c->max_pos : 2048;
    cJSON *root = cJSON_CreateObject();
    cJSON *results = cJSON_AddObjectToObject(root, "results"), *nsamp = cJSON_AddObjectToObject(root, "n-samples");
    for (const char *p = o->tasks; *p;) {
        size_t len = strcspn(p, ",");
        if (run_task(o, find_task(p, len), m, gpu, tok, max_length, results, nsamp)) { cJSON_Delete(root); return NULL; }
        p += len + (p[len] == ',');
    }
    cJSON *cfg = cJSON_AddObjectToObject(root, "config");
    cJSON_AddNumberToObject(cfg, "num_fewshot", o->num_fewshot);
    if (o->limit > 0) cJSON_AddNumberToObject(cfg, "limit", (double)o->limit);
    else cJSON_AddNullToObject(cfg, "limit");
    cJSON_AddNumberToObject(cfg, "max_length", max_length);
    cJSON_AddNumberToObject(cfg, "batch_size", o->batch);
    cJSON_AddNumberToObject(cfg, "fewshot_seed", (double)o->fewshot_seed);
    cJSON_AddNumberToObject(cfg, "bootstrap_iters", (double)o->bootstrap_iters);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out) ar_error("out of memory");
    return out;
}

void ar_tasks_print_table(FILE *f, const char *json)
{
    cJSON *root = cJSON_Parse(json);
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(root, "results");
    const cJSON *ns = cJSON_GetObjectItemCaseSensitive(root, "n-samples");
    fprintf(f, "%-28s %-12s %10s   %-10s %6s\n", "task", "metric", "value", "stderr", "n");
    for (const cJSON *t = res ? res->child : NULL; t; t = t->next) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ns, t->string), "effective");
        for (const cJSON *m = t->child; m; m = m->next) {
            if (!cJSON_IsNumber(m) || strstr(m->string, "_stderr,")) continue;
            char metric[64], se_key[96];
            snprintf(metric, sizeof metric, "%.*s", (int)strcspn(m->string, ","), m->string);
            snprintf(se_key, sizeof se_key, "%s_stderr,none", metric);
            const cJSON *se = cJSON_GetObjectItemCaseSensitive(t, se_key);
            char sev[32] = "N/A";
            if (cJSON_IsNumber(se)) snprintf(sev, sizeof sev, "%.4f", se->valuedouble);
            fprintf(f, "%-28s %-12s %10.4f ± %-10s %6d\n", t->string, metric, m->valuedouble, sev,
                    cJSON_IsNumber(n) ? (int)n->valuedouble : 0);
        }
    }
    cJSON_Delete(root);
}
