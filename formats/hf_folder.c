/* hf_folder.c — temporary output folder, side files, config.json, commit. */
#include "hf_folder.h"
#include "error.h"
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "textbuf.h"
#include <sys/stat.h>
#include <unistd.h>

char *hf_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { ar_error("%s: %s", path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (size_t k; buf && (k = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) {
            char *t = realloc(buf, 2 * cap + 1);
            if (!t) { free(buf); buf = NULL; break; }
            buf = t;
            cap *= 2;
        }
    }
    int bad = !buf || ferror(f);
    fclose(f);
    if (bad) { free(buf); ar_error("%s: cannot read", path); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static int write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    int bad = !f || fwrite(data, 1, n, f) != n;
    if (f && fclose(f)) bad = 1;
    return bad ? ar_error("%s: cannot write: %s", path, strerror(errno)) : 0;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    int empty = 1;
    while (empty && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

char *hf_folder_begin(const char *out_dir) {
    struct stat sb;
    if (stat(out_dir, &sb) == 0 && !(S_ISDIR(sb.st_mode) && dir_is_empty(out_dir))) {
        ar_error("%s: already exists and is not an empty folder", out_dir);
        return NULL;
    }
    size_t n = strlen(out_dir) + 32;
    char *tmp = malloc(n);
    if (!tmp) { ar_error("%s: out of memory", out_dir); return NULL; }
    snprintf(tmp, n, "%s.tmp-%ld", out_dir, (long)getpid());
    hf_folder_remove(tmp);                  /* left over by a crashed run of this pid */
    if (mkdir(tmp, 0755)) {
        ar_error("%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return NULL;
    }
    return tmp;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Files the exporter writes itself, never copied from the source. */
static int is_rewritten(const char *name) {
    return !strcmp(name, "config.json") || !strcmp(name, "quantization_config.json") ||
           !strcmp(name, "quantize_config.json") || !strcmp(name, "quant_config.json") ||
           ends_with(name, ".safetensors.index.json");
}

static int is_side_file(const char *name) {
    if (name[0] == '.' || is_rewritten(name)) return 0;
    return ends_with(name, ".json") || ends_with(name, ".jinja") || ends_with(name, ".tiktoken") ||
           ends_with(name, ".model") || !strcmp(name, "merges.txt") || !strcmp(name, "vocab.txt");
}

static int copy_file(const char *from, const char *to) {
    size_t n;
    char *data = hf_read_file(from, &n);
    if (!data) return -1;
    int rc = write_file(to, data, n);
    free(data);
    return rc;
}

int hf_folder_copy_side_files(const char *src, const char *dst) {
    DIR *d = opendir(src);
    if (!d) return ar_error("%s: cannot list: %s", src, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        if (!is_side_file(de->d_name)) continue;
        char *from = join(src, de->d_name), *to = join(dst, de->d_name);
        struct stat sb;
        if (!from || !to) rc = ar_error("%s: out of memory", src);
        else if (stat(from, &sb) == 0 && S_ISREG(sb.st_mode)) rc = copy_file(from, to);
        free(from);
        free(to);
    }
    closedir(d);
    return rc;
}

/* ---- JSON text in Python's json.dump(indent=2) layout ---------------------- */


static void jb_indent(ar_textbuf *b, int level) {
    ar_textbuf_add(b, "\n", 1);
    for (int i = 0; i < level; i++) ar_textbuf_add(b, "  ", 2);
}

static void jb_string(ar_textbuf *b, const char *s) {
    ar_textbuf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '"' || c == '\\') { e[0] = '\\'; e[1] = (char)c; ar_textbuf_add(b, e, 2); }
        else if (c == '\n') ar_textbuf_add(b, "\\n", 2);
        else if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", c); ar_textbuf_add(b, e, 6); }
        else ar_textbuf_add(b, (const char *)&c, 1);
    }
    ar_textbuf_add(b, "\"", 1);
}

/* Integers print without a fraction; other numbers in the shortest of %.15g /
 * %.17g that reads back exactly (Python's repr gives the same digits). */
static void jb_number(ar_textbuf *b, double v) {
    char t[40];
    if (v == floor(v) && fabs(v) < 1e15) snprintf(t, sizeof t, "%.0f", v);
    else {
        snprintf(t, sizeof t, "%.15g", v);
        if (strtod(t, NULL) != v) snprintf(t, sizeof t, "%.17g", v);
    }
    ar_textbuf_str(b, t);
}

static void jb_value(ar_textbuf *b, const cJSON *v, int level) {
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        int obj = cJSON_IsObject(v);
        if (!v->child) { ar_textbuf_str(b, obj ? "{}" : "[]"); return; }
        ar_textbuf_str(b, obj ? "{" : "[");
        for (const cJSON *c = v->child; c; c = c->next) {
            jb_indent(b, level + 1);
            if (obj) { jb_string(b, c->string); ar_textbuf_str(b, ": "); }
            jb_value(b, c, level + 1);
            if (c->next) ar_textbuf_str(b, ",");
        }
        jb_indent(b, level);
        ar_textbuf_str(b, obj ? "}" : "]");
    } else if (cJSON_IsString(v)) jb_string(b, v->valuestring);
    else if (cJSON_IsNumber(v)) jb_number(b, v->valuedouble);
    else if (cJSON_IsTrue(v)) ar_textbuf_str(b, "true");
    else if (cJSON_IsFalse(v)) ar_textbuf_str(b, "false");
    else ar_textbuf_str(b, "null");
}

int hf_folder_write_json(const char *dir, const char *name, const cJSON *obj) {
    ar_textbuf b = {0};
    jb_value(&b, obj, 0);
    char *path = join(dir, name);
    int rc = b.oom || !path ? ar_error("%s: out of memory", dir) : write_file(path, b.p, b.n);
    free(path);
    free(b.p);
    return rc;
}

/* ---- config.json: textual edit so every original byte survives ------------- */

/* Skip a JSON string starting at s[i] == '"'; returns the index after it. */
static size_t skip_string(const char *s, size_t i) {
    for (i++; s[i] && s[i] != '"'; i++)
        if (s[i] == '\\' && s[i + 1]) i++;
    return s[i] ? i + 1 : i;
}

/* Find the value of top-level key in object text s: sets [*vb, *ve) to the
 * value's span. Returns 1 if found. */
static int find_top_value(const char *s, const char *key, size_t *vb, size_t *ve) {
    size_t klen = strlen(key);
    int depth = 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') depth--;
        else if (c == '"') {
            size_t end = skip_string(s, i);
            int is_key = depth == 1 && end - i == klen + 2 && !strncmp(s + i + 1, key, klen);
            size_t j = end;
            while (s[j] == ' ' || s[j] == '\n' || s[j] == '\r' || s[j] == '\t') j++;
            if (is_key && s[j] == ':') {
                for (j++; s[j] == ' ' || s[j] == '\n' || s[j] == '\t' || s[j] == '\r';) j++;
                *vb = j;
                *ve = s[j] == '"' ? skip_string(s, j) : j;
                while (s[*ve] && !strchr(",}\n", s[*ve]) && s[j] != '"') (*ve)++;
                return 1;
            }
            i = end - 1;
        }
    }
    return 0;
}

/* Replace span [b, e) of *text by repl. */
static int splice(char **text, size_t b, size_t e, const char *repl) {
    size_t n = strlen(*text), r = strlen(repl);
    char *t = malloc(n - (e - b) + r + 1);
    if (!t) return -1;
    memcpy(t, *text, b);
    memcpy(t + b, repl, r);
    memcpy(t + b + r, *text + e, n - e + 1);
    free(*text);
    *text = t;
    return 0;
}

/* Insert `"key": value_text` as the last member of the top-level object. */
static int append_member(char **text, const char *key, const char *value_text) {
    size_t end = strlen(*text);
    while (end && (*text)[end - 1] != '}') end--;
    if (!end) return -1;
    size_t last = end - 1;                          /* index of the closing brace */
    size_t prev = last;
    while (prev && strchr(" \n\r\t", (*text)[prev - 1])) prev--;
    int empty = prev && (*text)[prev - 1] == '{';
    size_t n = strlen(key) + strlen(value_text) + 16;
    char *m = malloc(n);
    if (!m) return -1;
    snprintf(m, n, "%s\n  \"%s\": %s\n", empty ? "" : ",", key, value_text);
    int rc = splice(text, prev, last, m);
    free(m);
    return rc;
}

static int set_dtype(char **text, const char *dtype) {
    char q[48];
    snprintf(q, sizeof q, "\"%s\"", dtype);
    size_t b, e;
    if (find_top_value(*text, "dtype", &b, &e) && splice(text, b, e, q)) return -1;
    if (find_top_value(*text, "torch_dtype", &b, &e)) return splice(text, b, e, q);
    return append_member(text, "torch_dtype", q);
}

/* Remove top-level member key (with one neighbouring comma) from object text
 * *text. 1 when removed, 0 when absent, -1 when out of memory. */
static int drop_top_member(char **text, const char *key) {
    const char *s = *text;
    size_t klen = strlen(key), kb = 0, i, vb = 0;
    int depth = 0, found = 0;
    for (i = 0; s[i] && !found; i++) {
        if (s[i] == '{' || s[i] == '[') depth++;
        else if (s[i] == '}' || s[i] == ']') depth--;
        else if (s[i] == '"') {
            size_t end = skip_string(s, i), j = end;
            while (s[j] && strchr(" \t\r\n", s[j])) j++;
            if (depth == 1 && end - i == klen + 2 && !strncmp(s + i + 1, key, klen) && s[j] == ':') {
                kb = i;
                for (j++; s[j] && strchr(" \t\r\n", s[j]);) j++;
                vb = j;
                found = 1;
            }
            i = end - 1;
        }
    }
    if (!found) return 0;
    size_t ve = vb;   /* the end of the value: a balanced {...} / [...], a string, or a scalar */
    if (s[ve] == '{' || s[ve] == '[') {
        int d = 0;
        for (; s[ve]; ve++) {
            if (s[ve] == '"') { ve = skip_string(s, ve) - 1; continue; }
            if (s[ve] == '{' || s[ve] == '[') d++;
            else if ((s[ve] == '}' || s[ve] == ']') && --d == 0) { ve++; break; }
        }
    } else if (s[ve] == '"') ve = skip_string(s, ve);
    else while (s[ve] && !strchr(",}\n", s[ve])) ve++;
    size_t b = kb, e = ve, j = ve;
    while (s[j] && strchr(" \t\r\n", s[j])) j++;
    if (s[j] == ',') {                               /* "key": v, next  -> next (a line of its own goes whole) */
        while (b > 0 && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
        for (e = j + 1; s[e] == ' ' || s[e] == '\t';) e++;
        if (b == 0 || s[b - 1] == '\n') { if (s[e] == '\r') e++; if (s[e] == '\n') e++; }
        else b = kb;
    } else {                                         /* prev, "key": v  -> prev */
        size_t p = kb;
        while (p > 0 && strchr(" \t\r\n", s[p - 1])) p--;
        if (p > 0 && s[p - 1] == ',') b = p - 1;
    }
    return splice(text, b, e, "") ? -1 : 1;
}

int hf_folder_write_config(const char *src, const char *dst, const cJSON *qcfg, const char *dtype, int replace) {
    char *in = join(src, "config.json"), *out = join(dst, "config.json");
    char *text = in ? hf_read_file(in, NULL) : NULL;
    int rc = -1;
    size_t b, e;
    if (!text) goto done;
    if (replace && drop_top_member(&text, "quantization_config") < 0) { ar_error("%s: out of memory", in); goto done; }
    if (find_top_value(text, "quantization_config", &b, &e)) {
        ar_error("%s: the model is already quantized (it has a quantization_config)", in);
        goto done;
    }
    if (dtype && set_dtype(&text, dtype)) { ar_error("%s: cannot set dtype", in); goto done; }
    if (qcfg) {
        ar_textbuf jb = {0};
        jb_value(&jb, qcfg, 1);
        int bad = jb.oom || append_member(&text, "quantization_config", jb.p);
        free(jb.p);
        if (bad) { ar_error("%s: cannot add quantization_config", in); goto done; }
    }
    rc = write_file(out, text, strlen(text));
done:
    free(text);
    free(in);
    free(out);
    return rc;
}

int hf_folder_commit(const char *tmp, const char *out_dir) {
    struct stat sb;
    if (stat(out_dir, &sb) == 0 && S_ISDIR(sb.st_mode) && dir_is_empty(out_dir)) rmdir(out_dir);
    if (rename(tmp, out_dir)) return ar_error("%s: cannot rename %s into place: %s", out_dir, tmp, strerror(errno));
    return 0;
}

void hf_folder_remove(const char *dir) {
    if (!dir) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *p = join(dir, de->d_name);
        if (p) unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}
