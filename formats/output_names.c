/* output_names.c — AutoRound's output folders and llama.cpp's GGUF file
 * names (see output_names.h). The rules are AutoRound 0.16.1's and gguf-py
 * 0.19's, restated here; each function names the code it follows. */
#include "output_names.h"
#include "error.h"
#include "gguf.h"
#include "hf_folder.h"
#include <cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- small string helpers ----------------------------------------------------- */

static int put(char *out, size_t cap, const char *s)
{
    if (strlen(s) >= cap) return ar_error("name too long: %s", s);
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

static int is_gguf_format(const char *f) { return !strncasecmp(f, "gguf", 4); }

/* The last component of a model path (trailing slashes dropped), into out. */
static void last_component(const char *path, char *out, size_t cap)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t len = n - b < cap ? n - b : cap - 1;
    memcpy(out, path + b, len);
    out[len] = 0;
}

/* ---- AutoRound's folders -------------------------------------------------------- */

int ar_autoround_run_formats(const char *formats, const char *fmt, char *out, size_t cap)
{
    /* auto_round/export/formats/resolver.py, _validate_format_combination:
     * GGUF formats go only with other GGUF formats and "fake". */
    char list[1024];
    snprintf(list, sizeof list, "%s", formats);
    int has_gguf = 0, companions = 0;
    for (char *s, *f = strtok_r(list, ",", &s); f; f = strtok_r(NULL, ",", &s)) {
        if (is_gguf_format(f)) has_gguf = 1;
        else if (strcasecmp(f, "fake")) companions = 1;
    }
    if (!(has_gguf && companions)) return put(out, cap, formats);
    int want_gguf = is_gguf_format(fmt);
    size_t n = 0;
    out[0] = 0;
    snprintf(list, sizeof list, "%s", formats);
    for (char *s, *f = strtok_r(list, ",", &s); f; f = strtok_r(NULL, ",", &s)) {
        if (is_gguf_format(f) != want_gguf) continue;
        int w = snprintf(out + n, cap - n, "%s%s", n ? "," : "", f);
        if (w < 0 || (size_t)w >= cap - n) return ar_error("format list too long: %s", formats);
        n += (size_t)w;
    }
    return 0;
}

/* _get_export_dir (auto_round/compressors/base.py): the scheme's folder name
 * under --output_dir. */
static int export_dir(const char *model_path, const char *run, const ar_tuned_attrs *a, char *out, size_t cap)
{
    char name[1024], stripped[1024], suffix[64], prefix[40] = "";
    last_component(model_path, name, sizeof name);
    /* last = model_name.split("/")[-1].strip(".") */
    const char *s = name;
    while (*s == '.') s++;
    snprintf(stripped, sizeof stripped, "%s", s);
    size_t k = strlen(stripped);
    while (k && stripped[k - 1] == '.') stripped[--k] = 0;
    int is_gguf = strstr(run, "gguf") != NULL;
    const char *act_dt = a->act_data_type[0] ? a->act_data_type : "float";
    int act_bits = a->act_bits ? a->act_bits : 16;
    if (a->group_size <= 0 && !a->group_2d)
        snprintf(suffix, sizeof suffix, strstr(act_dt, "fp") ? "afp%d" : "a%d", act_bits);
    else if (a->group_2d) snprintf(suffix, sizeof suffix, "g%dx%d", a->group_size, a->group_size);
    else snprintf(suffix, sizeof suffix, "g%d", a->group_size);
    if (!stripped[0]) {   /* the model path is ".", "./" or the like */
        if (is_gguf) return put(out, cap, "");
        char d[128];
        snprintf(d, sizeof d, "w%d%s", a->bits, suffix);
        return put(out, cap, d);
    }
    int w;
    if (is_gguf) w = snprintf(out, cap, "%s-gguf", name);
    else {
        const char *dt = a->data_type[0] ? a->data_type : "int";
        /* prefix = data_type.lower().replace("_", "") unless an int type (MX int keeps it) */
        if (!strstr(dt, "int") || strstr(dt, "mx")) {
            size_t p = 0;
            for (const char *c = dt; *c && p + 1 < sizeof prefix; c++)
                if (*c != '_') prefix[p++] = (char)tolower((unsigned char)*c);
            prefix[p] = 0;
        }
        w = snprintf(out, cap, "%s%s%s-w%d%s", name, prefix[0] ? "-" : "", prefix, a->bits, suffix);
    }
    if (w < 0 || (size_t)w >= cap) return ar_error("%s: folder name too long", model_path);
    return 0;
}

/* The backend name AutoRound resolves a format to (OutputFormat.get_backend_name
 * after auto_round/export/formats/backends/{autoround,llm_compressor,gguf}.py's
 * constructors), for the formats ar-pack writes. */
static int backend_name(const char *fmt, const ar_tuned_attrs *a, int mixed_bits, char *out, size_t cap)
{
    const char *dt = a->data_type[0] ? a->data_type : "int";
    int is_int = strstr(dt, "int") != NULL, is_mx = strstr(dt, "mx") != NULL;
    int act_static = a->act_bits && a->act_bits < 16 && !a->act_dynamic;
    int fp = !strncmp(dt, "fp", 2);
    char b[128];
    if (!strcasecmp(fmt, "auto_round")) {
        if (a->sym && is_int && !is_mx) snprintf(b, sizeof b, "auto_round:auto_gptq");
        else if (a->bits == 4 && !a->sym && is_int) snprintf(b, sizeof b, mixed_bits ? "auto_round" : "auto_round:auto_awq");
        else if (strstr(dt, "nv_fp") || strstr(dt, "mx_fp") || !strcmp(dt, "nvfp4_v2") ||
                 (strstr(dt, "mx_int") && a->bits == 4))
            snprintf(b, sizeof b, "auto_round:%s", dt);
        else if (act_static) snprintf(b, sizeof b, "auto_round:fp8_static");
        else if (fp && a->bits == 8) snprintf(b, sizeof b, "auto_round:fp8");
        else snprintf(b, sizeof b, "auto_round");
    } else if (!strcasecmp(fmt, "llm_compressor")) {
        int act_fp8 = a->act_bits == 8 && !strncmp(a->act_data_type, "fp", 2);
        if (!strcmp(dt, "nvfp4_v2")) snprintf(b, sizeof b, "llm_compressor:nvfp4_v2");
        else if (strstr(dt, "nv_fp") || strstr(dt, "mx_fp") || (a->bits >= 16 && (fp || !strcmp(dt, "float"))))
            snprintf(b, sizeof b, "llm_compressor:%s", a->bits >= 16 ? "mx_fp" : dt);
        else if (a->act_dynamic && act_fp8 && fp && a->bits == 8 && a->group_2d)
            snprintf(b, sizeof b, "llm_compressor:fp8_block");
        else if (act_static) snprintf(b, sizeof b, "llm_compressor:fp8_static");
        else if (a->act_dynamic && is_int && a->bits == 8 && a->act_bits == 8 && strstr(a->act_data_type, "int"))
            snprintf(b, sizeof b, "llm_compressor:int8_w8a8");
        else if (is_int && (a->act_bits == 0 || a->act_bits >= 16)) snprintf(b, sizeof b, "llm_compressor:wint_a16");
        else snprintf(b, sizeof b, "llm_compressor");
    } else if (!strcasecmp(fmt, "auto_gptq") || !strcasecmp(fmt, "auto_awq") || !strcasecmp(fmt, "fake") ||
               is_gguf_format(fmt)) {
        snprintf(b, sizeof b, "%s", fmt);
    } else return ar_error("%s: no AutoRound folder name known for this format", fmt);
    /* _get_save_folder_name: ':' and '_' become '-' */
    for (char *c = b; *c; c++) {
        if (*c == ':' || *c == '_') *c = '-';
        else *c = (char)tolower((unsigned char)*c);
    }
    return put(out, cap, b);
}

int ar_autoround_output_dir(const char *model_path, const char *run, const char *fmt, const ar_tuned_attrs *a,
                            int mixed_bits, char *out, size_t cap)
{
    char dir[2048], sub[128];
    if (export_dir(model_path, run, a, dir, sizeof dir)) return -1;
    if (!strchr(run, ',')) return put(out, cap, dir);
    if (backend_name(fmt, a, mixed_bits, sub, sizeof sub)) return -1;
    int w = snprintf(out, cap, "%s%s%s", dir, dir[0] ? "/" : "", sub);
    if (w < 0 || (size_t)w >= cap) return ar_error("%s: folder name too long", model_path);
    return 0;
}

/* ---- GGUF parameter count and size label ---------------------------------------- */

int ar_gguf_count_params(const char *path, ar_gguf_param_count *pc)
{
    /* gguf-py's GGUFWriter.get_total_parameter_count: "_exps." tensors of 3 or
     * more dimensions count once per expert; numpy's shape[-3] (shape[-2] for
     * a bias) is ggml's ne[2] (ne[1]). */
    memset(pc, 0, sizeof *pc);
    ar_gguf *g = ar_gguf_open(path);
    if (!g) return -1;
    int64_t expert_sum = 0, n_expert_tensors = 0;
    for (size_t i = 0; i < ar_gguf_n_tensors(g); i++) {
        const ar_gguf_tensor *t = ar_gguf_tensor_at(g, i);
        int64_t size = ar_gguf_tensor_numel(t);
        if (strstr(t->name, "_exps.") && t->n_dims >= 3) {
            int64_t count = (int64_t)t->ne[strstr(t->name, ".bias") ? 1 : 2];
            if (count > 0) pc->expert += size / count;
            expert_sum += count;
            n_expert_tensors++;
        } else pc->shared += size;
        pc->total += size;
    }
    pc->expert_count = n_expert_tensors ? expert_sum / n_expert_tensors : 0;
    ar_gguf_close(g);
    return 0;
}

/* gguf-py's model_weight_count_rounded_notation(n, min_digits=2). */
static void rounded_notation(int64_t n, char *out, size_t cap)
{
    double x = (double)n, scaled;
    char suffix;
    if (x > 1e12) scaled = x * 1e-12, suffix = 'T';
    else if (x > 1e9) scaled = x * 1e-9, suffix = 'B';
    else if (x > 1e6) scaled = x * 1e-6, suffix = 'M';
    else scaled = x * 1e-3, suffix = 'K';
    /* fix = max(min_digits - len(str(round(scaled)).lstrip('0')), 0); round() is half-even */
    char digits[64];
    snprintf(digits, sizeof digits, "%.0f", nearbyint(scaled));
    const char *d = digits;
    while (*d == '0') d++;
    int fix = 2 - (int)strlen(d);
    if (fix < 0) fix = 0;
    snprintf(out, cap, "%.*f%c", fix, scaled, suffix);
}

void ar_gguf_size_label(const ar_gguf_param_count *pc, char *out, size_t cap)
{
    if (pc->expert_count > 0) {
        char pretty[64];
        rounded_notation(llabs(pc->shared) + llabs(pc->expert), pretty, sizeof pretty);
        snprintf(out, cap, "%lldx%s", (long long)pc->expert_count, pretty);
    } else rounded_notation(llabs(pc->total), out, cap);
}

/* ---- gguf-py's Metadata heuristics (gguf/metadata.py) ----------------------------- */

enum { T_BASENAME = 1, T_SIZE = 2, T_FINETUNE = 4, T_VERSION = 8, T_TYPE = 16 };
enum { F_BASENAME, F_FINETUNE, F_VERSION, F_SIZE, N_FIELDS };

typedef struct { char *v[N_FIELDS]; } name_fields;

/* digits+ then end, returning the count of digits at s (0 if none). */
static size_t span_digits(const char *s) { size_t n = 0; while (isdigit((unsigned char)s[n])) n++; return n; }

/* re.fullmatch(r'(v|iter)?\d+([.]\d+)*', part, re.IGNORECASE) */
static int is_version(const char *p)
{
    if (!strncasecmp(p, "iter", 4) && isdigit((unsigned char)p[4])) p += 4;
    else if ((*p == 'v' || *p == 'V') && isdigit((unsigned char)p[1])) p++;
    size_t n = span_digits(p);
    if (!n) return 0;
    p += n;
    while (*p == '.') {
        n = span_digits(p + 1);
        if (!n) return 0;
        p += 1 + n;
    }
    return *p == 0;
}

/* re.fullmatch(r'i?q\d(_\w)*|b?fp?(16|32)', part, re.IGNORECASE) */
static int is_quant_type(const char *p)
{
    const char *q = p;
    if (*q == 'i' || *q == 'I') q++;
    if ((*q == 'q' || *q == 'Q') && isdigit((unsigned char)q[1])) {
        q += 2;
        while (q[0] == '_' && (isalnum((unsigned char)q[1]) || q[1] == '_')) q += 2;
        if (!*q) return 1;
    }
    q = p;
    if (*q == 'b' || *q == 'B') q++;
    if (*q != 'f' && *q != 'F') return 0;
    q++;
    if (*q == 'p' || *q == 'P') q++;
    return !strcmp(q, "16") || !strcmp(q, "32");
}

/* re.fullmatch(r'(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)', part, re.I) */
static int size_rest(const char *p)
{
    size_t n = span_digits(p);
    if (!n) return 0;
    p += n;
    if ((*p == '.' || *p == '_') && isdigit((unsigned char)p[1])) p += 1 + span_digits(p + 1);
    if (!*p || !strchr("kmbtKMBT", *p)) return 0;
    p++;
    if (isdigit((unsigned char)*p)) p++;
    return *p == 0;
}

static int is_size(const char *p)
{
    static const char *const words[] = {"small", "mini", "medium", "large", "xl", "xxl"};
    for (size_t i = 0; i < sizeof words / sizeof *words; i++) if (!strcasecmp(p, words[i])) return 1;
    if (size_rest(p)) return 1;
    if ((*p == 'a' || *p == 'A') && size_rest(p + 1)) return 1;
    size_t n = span_digits(p);
    return n && (p[n] == 'x' || p[n] == 'X') && size_rest(p + n + 1);
}

static int is_finetune_word(const char *p)
{
    return !strcasecmp(p, "chat") || !strcasecmp(p, "instruct") || !strcasecmp(p, "vision") || !strcasecmp(p, "lora");
}

/* Python's str.isalpha on a first character; a non-ASCII byte counts as a letter. */
static int alpha0(const char *p) { return isalpha((unsigned char)*p) || (unsigned char)*p >= 0x80; }

static char *join_parts(char **parts, const int *types, int n, int want, int not_want, int dedup)
{
    size_t len = 1;
    for (int i = 0; i < n; i++) len += strlen(parts[i]) + 1;
    char *out = calloc(1, len);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        if (!(types[i] & want) || (types[i] & not_want)) continue;
        int dup = 0;
        for (int j = 0; dedup && j < i; j++)
            if ((types[j] & want) && !(types[j] & not_want) && !strcmp(parts[j], parts[i])) dup = 1;
        if (dup) continue;
        if (out[0]) strcat(out, "-");
        strcat(out, parts[i]);
    }
    if (!out[0]) { free(out); return NULL; }
    return out;
}

/* Metadata.get_model_id_components(model_id, total_params): fills the fields
 * of f that are still unset (the caller's "if metadata.x is None"). */
static void id_components(const char *model_id, int64_t total, name_fields *f)
{
    if (!model_id || strchr(model_id, ' ')) return;   /* a sentence: only a name */
    const char *full = strchr(model_id, '/') ? strchr(model_id, '/') + 1 : model_id;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", full);
    char *parts[128];
    int types[128] = {0}, n = 0;
    for (char *s, *t = strtok_r(buf, "-", &s); t && n < 128; t = strtok_r(NULL, "-", &s)) parts[n++] = t;
    char sizes[128][64];
    for (int i = 0; i < n; i++) {
        char *part = parts[i];
        if (is_version(part)) types[i] |= T_VERSION;
        else if (is_quant_type(part)) {
            types[i] |= T_TYPE;
            for (char *c = part; *c; c++) *c = (char)toupper((unsigned char)*c);
        } else if (i > 0 && is_size(part)) {
            char *z = sizes[i];
            snprintf(z, sizeof sizes[i], "%s", part);
            for (char *c = z; *c; c++) if (*c == '_') *c = '.';
            size_t L = strlen(z);
            if (L >= 2 && isdigit((unsigned char)z[L - 1])) {   /* bloom-7b1 -> 7.1b */
                char last = z[L - 1], unit = z[L - 2];
                z[L - 2] = '.';
                z[L - 1] = last;
                z[L] = unit;
                z[L + 1] = 0;
                L++;
            }
            if (L > 1 && isdigit((unsigned char)z[L - 2]) && strchr("kmbt", z[L - 1]))
                z[L - 1] = (char)toupper((unsigned char)z[L - 1]);
            if (total != 0 && L > 1) {
                char num[64], *end;
                snprintf(num, sizeof num, "%.*s", (int)(L - 1), z);
                double v = strtod(num, &end);
                /* float(part[:-1]): Python's float accepts what strtod reads whole, minus hex/inf forms */
                if (end != num && !*end && strspn(num, "0123456789.") == strlen(num)) {
                    const char *units = " KMBT", *u = strchr(units, z[L - 1]);
                    double label = v * pow(1000, u && z[L - 1] ? (double)(u - units) : -1.0);
                    if (total > 0 && fabs(label - (double)total) > (double)(7 * total / 8)) {
                        types[i] |= T_FINETUNE;   /* likely a context length */
                        z[L - 1] = (char)tolower((unsigned char)z[L - 1]);
                    }
                }
            }
            if (!types[i]) types[i] |= T_SIZE;
            parts[i] = z;
        } else if (i > 0 && is_finetune_word(part)) types[i] |= T_FINETUNE;
    }
    /* word sizes go when a numeric size is present */
    int numeric = 0;
    for (int i = 0; i < n; i++)
        if (types[i] & T_SIZE) for (const char *c = parts[i]; *c; c++) numeric |= isdigit((unsigned char)*c) != 0;
    if (numeric)
        for (int i = 0; i < n; i++) {
            int alpha = 1;
            for (const char *c = parts[i]; *c; c++) alpha &= isalpha((unsigned char)*c) != 0;
            if ((types[i] & T_SIZE) && alpha) types[i] &= ~T_SIZE;
        }
    int at_start = 1;
    for (int i = 0; i < n; i++) {
        if (at_start && ((!types[i] && alpha0(parts[i])) || (types[i] & T_VERSION))) types[i] |= T_BASENAME;
        else {
            at_start = 0;
            if (!types[i]) types[i] |= T_FINETUNE;
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        if ((types[i] & T_BASENAME) && types[i] != T_BASENAME) types[i] &= ~T_BASENAME;
        else break;
    }
    char *base = join_parts(parts, types, n, T_BASENAME, 0, 0);
    char *size = join_parts(parts, types, n, T_SIZE, 0, 1);
    char *fine = join_parts(parts, types, n, T_FINETUNE, 0, 0);
    char *ver = join_parts(parts, types, n, T_VERSION, T_BASENAME, 0);
    if (!size && !fine && !ver) { free(base); base = NULL; }   /* too ambiguous */
    char *got[N_FIELDS] = {base, fine, ver, size};
    for (int k = 0; k < N_FIELDS; k++) {
        if (!f->v[k] && got[k]) f->v[k] = got[k];
        else free(got[k]);
    }
}

/* A scalar "key: value" at the top level of a YAML front matter; quotes
 * removed; NULL for an absent key, null/~, or a value that is not a plain
 * scalar (lists, maps, block scalars). */
static char *front_matter_value(const char *yaml, const char *key)
{
    size_t kl = strlen(key);
    for (const char *l = yaml; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, kl) || l[kl] != ':') continue;
        const char *v = l + kl + 1, *e = strchr(v, '\n');
        if (!e) e = v + strlen(v);
        while (v < e && (*v == ' ' || *v == '\t')) v++;
        while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) e--;
        if (e > v && (*v == '"' || *v == '\'') && e - v >= 2 && e[-1] == *v) v++, e--;
        else {
            const char *hash = v;
            while (hash < e && !(hash[0] == '#' && (hash == v || hash[-1] == ' '))) hash++;
            e = hash;
            while (e > v && e[-1] == ' ') e--;
            if (e == v || (e - v == 4 && !strncmp(v, "null", 4)) || (e - v == 1 && *v == '~') || *v == '|' ||
                *v == '>' || *v == '[' || *v == '{')
                return NULL;
        }
        char *s = malloc((size_t)(e - v) + 1);
        if (!s) return NULL;
        memcpy(s, v, (size_t)(e - v));
        s[e - v] = 0;
        return s;
    }
    return NULL;
}

/* Metadata.load_model_card + apply_metadata_heuristic's model-card part. */
static void model_card(const char *model_path, name_fields *f)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/README.md", model_path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return;
    size_t cap = 1 << 16, n = 0;
    char *text = malloc(cap + 1);
    if (text) n = fread(text, 1, cap, fp);
    fclose(fp);
    if (!text) return;
    text[n] = 0;
    char *yaml = NULL;
    if (!strncmp(text, "---\n", 4) || !strncmp(text, "---\r\n", 5) || !strcmp(text, "---")) {
        yaml = strchr(text, '\n') ? strchr(text, '\n') + 1 : text + n;
        for (char *l = yaml; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
            if (!strncmp(l, "---", 3) && (l[3] == '\n' || l[3] == 0 || (l[3] == '\r' && l[4] == '\n'))) { *l = 0; break; }
    }
    if (yaml) {
        static const char *const keys[N_FIELDS][3] = {
            [F_BASENAME] = {"basename", "model_basename", "model_type"},
            [F_FINETUNE] = {"finetune", "model_finetune", NULL},
            [F_VERSION] = {"version", "model_version", NULL},
            [F_SIZE] = {"size_label", "model_size_label", NULL},
        };
        for (int k = 0; k < N_FIELDS; k++)
            for (int j = 0; j < 3 && keys[k][j] && !f->v[k]; j++) f->v[k] = front_matter_value(yaml, keys[k][j]);
    }
    free(text);
}

/* config.json's "_name_or_path" when it is a model id, not a path. */
static char *hf_name_or_path(const char *model_path)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model_path);
    size_t n;
    char *text = hf_read_file(path, &n);   /* no config.json: no model id (the error is not reported) */
    if (!text) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "_name_or_path");
    char *id = NULL;
    if (cJSON_IsString(v)) {
        int slashes = 0;
        for (const char *c = v->valuestring; *c; c++) slashes += *c == '/';
        if (slashes <= 1) id = strdup(v->valuestring);
    }
    cJSON_Delete(j);
    return id;
}

/* naming_convention's spelling of one part: strip, ' ' (and '/' for the name) as '-'. */
static void append_part(char *out, size_t cap, const char *dash, const char *s, int slash, int upper)
{
    size_t n = strlen(out);
    while (*s && isspace((unsigned char)*s)) s++;
    size_t len = strlen(s);
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (n + strlen(dash) < cap) { strcpy(out + n, dash); n += strlen(dash); }
    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        char c = s[i];
        if (c == ' ' || (slash && c == '/')) c = '-';
        out[n++] = upper ? (char)toupper((unsigned char)c) : c;
    }
    out[n] = 0;
}

int ar_gguf_file_name(const char *model_path, const ar_gguf_param_count *pc, const char *ftype_name, char *out,
                      size_t cap)
{
    name_fields f = {{0}};
    model_card(model_path, &f);
    char *id = hf_name_or_path(model_path);
    if (id) id_components(id, pc->total, &f);
    free(id);
    /* dir_model.name, and the name AutoRound passes (model_name: the same component) */
    char name[1024], dir_name[1024];
    last_component(model_path, name, sizeof name);
    snprintf(dir_name, sizeof dir_name, "%s", strcmp(name, ".") ? name : "");   /* pathlib's Path(".").name */
    id_components(dir_name, pc->total, &f);
    char size[64];
    if (!f.v[F_SIZE] && pc->total > 0) {
        ar_gguf_size_label(pc, size, sizeof size);
        f.v[F_SIZE] = strdup(size);
    }
    char buf[2048] = "";
    append_part(buf, sizeof buf, "", f.v[F_BASENAME] ? f.v[F_BASENAME] : name, 1, 0);
    if (f.v[F_SIZE]) append_part(buf, sizeof buf, "-", f.v[F_SIZE], 0, 0);
    if (f.v[F_FINETUNE]) append_part(buf, sizeof buf, "-", f.v[F_FINETUNE], 0, 0);
    if (f.v[F_VERSION]) append_part(buf, sizeof buf, "-", f.v[F_VERSION], 0, 0);
    append_part(buf, sizeof buf, "-", ftype_name, 0, 1);
    for (int k = 0; k < N_FIELDS; k++) free(f.v[k]);
    size_t n = strlen(buf);
    if (n + 6 > cap || n + 6 > sizeof buf) return ar_error("%s: GGUF file name too long", model_path);
    snprintf(out, cap, "%s.gguf", buf);
    return 0;
}
