/* scheme.c — preset table, overrides, layer_config parsing and matching. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "scheme.h"
#include "error.h"

#include <cJSON.h>
#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One preset row. act_* use AR_UNSET where AutoRound leaves None, resolved
 * by resolve_act_defaults() exactly as schemes.py does. */
typedef struct {
    const char *name;
    ar_scheme_kind kind;
    int bits, group_size, sym;
    const char *data_type;
    int act_bits, act_group_size, act_dynamic;
    const char *act_data_type;
    int super_bits, super_group_size;
} preset_row;

#define U AR_UNSET
static const preset_row presets[] = {
    { "W2A16",       AR_SCHEME_INT,   2, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "W3A16",       AR_SCHEME_INT,   3, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "W4A16",       AR_SCHEME_INT,   4, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "W5A16",       AR_SCHEME_INT,   5, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "W6A16",       AR_SCHEME_INT,   6, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "W8A16",       AR_SCHEME_INT,   8, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "W2A16G64",    AR_SCHEME_INT,   2, 64,  1, "int",   U, U, U, NULL, 0, 0 },
    { "W2A16G32",    AR_SCHEME_INT,   2, 32,  1, "int",   U, U, U, NULL, 0, 0 },
    { "W4A16_MIXED", AR_SCHEME_INT,   4, 128, 1, "int",   U, U, U, NULL, 0, 0 },
    { "MXFP4",       AR_SCHEME_MXFP,  4, 32,  1, "mx_fp", 4, 32, 1, "mx_fp", 0, 0 },
    { "MXFP4_RCEIL", AR_SCHEME_MXFP,  4, 32,  1, "mx_fp", 4, 32, 1, "mx_fp_rceil", 0, 0 },
    { "MXFP6",       AR_SCHEME_MXFP,  6, 32,  1, "mx_fp", 6, 32, 1, "mx_fp", 0, 0 },
    { "MXFP8",       AR_SCHEME_MXFP,  8, 32,  1, "mx_fp", 8, 32, 1, "mx_fp", 0, 0 },
    { "MXFP8_RCEIL", AR_SCHEME_MXFP,  8, 32,  1, "mx_fp", 8, 32, 1, "mx_fp_rceil", 0, 0 },
    { "MXINT4",      AR_SCHEME_MXFP,  4, 32,  1, "mx_int", 4, 32, 1, "mx_int", 0, 0 },
    { "NVFP4",       AR_SCHEME_NVFP,  4, 16,  1, "nv_fp", 4, 16, 1, "nv_fp4_with_static_gs", 0, 0 },
    { "NVFP4_E5M3",  AR_SCHEME_NVFP,  4, 16,  1, "nvfp4_v2", 4, 16, 1, "nvfp4_v2", 0, 0 },
    { "FPW8A16",     AR_SCHEME_FP8,   8, 0,   1, "fp",    U, U, U, NULL, 0, 0 },
    { "FP8_STATIC",  AR_SCHEME_FP8,   8, -1,  1, "fp",    8, 0, 0, "fp", 0, 0 },
    { "FP8_BLOCK",   AR_SCHEME_FP8,   8, 128, 1, "fp",    8, 128, 1, "fp", 0, 0 },
    { "INT8",        AR_SCHEME_INT,   8, -1,  1, "int",   8, -1, 1, "int", 0, 0 },
    { "INT8_W8A8",   AR_SCHEME_INT,   8, -1,  1, "int",   8, -1, 1, "int", 0, 0 },
    { "INT4",        AR_SCHEME_INT,   4, -1,  1, "int",   4, -1, 1, "int", 0, 0 },
    { "BF16",        AR_SCHEME_FLOAT, 16, 128, 1, "fp",   U, U, U, "fp", 0, 0 },
    { "GGUF:Q4_0",   AR_SCHEME_GGUF,  4, 32,  1, "int",   U, U, U, NULL, 0, 0 },
    { "GGUF:Q4_1",   AR_SCHEME_GGUF,  4, 32,  0, "int_asym_float_zp", U, U, U, NULL, 0, 0 },
    { "GGUF:Q5_0",   AR_SCHEME_GGUF,  5, 32,  1, "int",   U, U, U, NULL, 0, 0 },
    { "GGUF:Q5_1",   AR_SCHEME_GGUF,  5, 32,  0, "int_asym_float_zp", U, U, U, NULL, 0, 0 },
    { "GGUF:Q8_0",   AR_SCHEME_GGUF,  8, 32,  1, "int",   U, U, U, NULL, 0, 0 },
    /* Q2_K: llama.cpp's mix (AutoRound has only Q2_K_S); same base type */
    { "GGUF:Q2_K",   AR_SCHEME_GGUF,  2, 16,  0, "int_asym_dq", U, U, U, NULL, 4, 16 },
    { "GGUF:Q2_K_S", AR_SCHEME_GGUF,  2, 16,  0, "int_asym_dq", U, U, U, NULL, 4, 16 },
    { "GGUF:Q2_K_MIXED", AR_SCHEME_GGUF, 2, 16, 0, "int_asym_dq", U, U, U, NULL, 4, 16 },
    { "GGUF:Q3_K_S", AR_SCHEME_GGUF,  3, 16,  1, "int_sym_dq", U, U, U, NULL, 6, 16 },
    { "GGUF:Q3_K_M", AR_SCHEME_GGUF,  3, 16,  1, "int_sym_dq", U, U, U, NULL, 6, 16 },
    { "GGUF:Q3_K_L", AR_SCHEME_GGUF,  3, 16,  1, "int_sym_dq", U, U, U, NULL, 6, 16 },
    { "GGUF:Q4_K_S", AR_SCHEME_GGUF,  4, 32,  0, "int_asym_dq", U, U, U, NULL, 6, 8 },
    { "GGUF:Q4_K_M", AR_SCHEME_GGUF,  4, 32,  0, "int_asym_dq", U, U, U, NULL, 6, 8 },
    { "GGUF:Q5_K_S", AR_SCHEME_GGUF,  5, 32,  0, "int_asym_dq", U, U, U, NULL, 6, 8 },
    { "GGUF:Q5_K_M", AR_SCHEME_GGUF,  5, 32,  0, "int_asym_dq", U, U, U, NULL, 6, 8 },
    { "GGUF:Q6_K",   AR_SCHEME_GGUF,  6, 16,  1, "int_sym_dq", U, U, U, NULL, 8, 16 },
};
#define NPRESETS (int)(sizeof presets / sizeof *presets)

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* schemes.py's resolution of None act fields: dynamic → True, group → the
 * weight group, bits → 16, sym → weight sym, data type → the weight's when
 * activations are quantized, else "float". */
static void resolve_act_defaults(ar_scheme *s, const preset_row *p)
{
    s->act_dynamic = p->act_dynamic == AR_UNSET ? 1 : p->act_dynamic;
    s->act_group_size = p->act_group_size == AR_UNSET ? s->group_size : p->act_group_size;
    s->act_bits = p->act_bits == AR_UNSET ? 16 : p->act_bits;
    s->act_sym = s->sym;
    if (p->act_data_type) copy_str(s->act_data_type, sizeof s->act_data_type, p->act_data_type);
    else copy_str(s->act_data_type, sizeof s->act_data_type, s->act_bits < 16 ? s->data_type : "float");
}

int ar_scheme_preset(ar_scheme *s, const char *name)
{
    for (int i = 0; i < NPRESETS; i++) {
        const preset_row *p = &presets[i];
        if (strcasecmp(p->name, name) != 0) continue;
        memset(s, 0, sizeof *s);
        copy_str(s->name, sizeof s->name, p->name);
        s->kind = p->kind;
        s->bits = p->bits; s->group_size = p->group_size; s->sym = p->sym;
        s->group_2d = strcmp(p->name, "FP8_BLOCK") == 0;
        copy_str(s->data_type, sizeof s->data_type, p->data_type);
        s->super_bits = p->super_bits; s->super_group_size = p->super_group_size;
        s->scale_f32 = p->kind == AR_SCHEME_GGUF;
        s->mixed = strcmp(p->name, "W4A16_MIXED") == 0;
        resolve_act_defaults(s, p);
        return 0;
    }
    return ar_error("unknown scheme '%s' (try W4A16, W2A16G64, W8A16, MXFP4, NVFP4, GGUF:Q4_K_M, ...)", name);
}

int ar_scheme_is_int(const ar_scheme *s)
{
    return s->kind == AR_SCHEME_INT && s->bits >= 2 && s->bits <= 8 && s->act_bits >= 16 &&
           strcmp(s->data_type, "int") == 0;
}

int ar_scheme_quantized(const ar_scheme *s) { return s->bits < 16; }

int ar_scheme_override(ar_scheme *s, int bits, int group_size, int sym)
{
    if (bits != AR_UNSET) {
        if (s->kind == AR_SCHEME_INT && !((bits >= 2 && bits <= 8) || bits == 16))
            return ar_error("--bits %d: integer schemes take 2..8 (or 16 to keep 16-bit)", bits);
        s->bits = bits;
    }
    if (group_size != AR_UNSET) {
        if (group_size < -1) return ar_error("--group_size %d: use a positive size, -1 or 0", group_size);
        if (s->act_group_size == s->group_size) s->act_group_size = group_size;
        s->group_size = group_size;
    }
    if (sym != AR_UNSET) {
        if (s->act_sym == s->sym) s->act_sym = sym != 0;
        s->sym = sym != 0;
    }
    if (bits != AR_UNSET || group_size != AR_UNSET || sym != AR_UNSET) s->name[0] = '\0';
    return 0;
}

double ar_scheme_default_lr(int bits, int iters)
{
    if (iters <= 0) return 0.0;
    return (iters >= 1000 && bits <= 3) ? 2.0 / iters : 1.0 / iters;
}

/* ---- layer_config ------------------------------------------------------- */

/* One entry: a key, how it matches, and the fields it sets (AR_UNSET / ""
 * for those it leaves to the default scheme). */
typedef struct {
    char *key;
    pcre2_code *re;         /* NULL: the key has no regex token, match as substring */
    int has_base;           /* started from a preset ("W8A16" or "scheme": ...) */
    ar_scheme base;
    int bits, group_size, sym, act_bits, act_group_size, act_sym, act_dynamic;
    int super_bits, super_group_size, scale_f32;
    char data_type[32], act_data_type[32];
} lc_entry;

struct ar_layer_config {
    lc_entry *e;
    int n;
};

/* AutoRound's to_standard_regex for a key with regex tokens: bare dots are
 * escaped (".*" kept), and ".*" is added at an unanchored end. Keys without
 * tokens are matched as plain substrings, which is what ".*escaped.*" means. */
static int has_regex_token(const char *k)
{
    return strstr(k, ".*") || strpbrk(k, "^$|()[]?+");
}

static char *standard_regex(const char *k)
{
    size_t n = strlen(k);
    char *r = malloc(2 * n + 8), *o = r;
    if (!r) return NULL;
    if (k[0] != '^' && strncmp(k, ".*", 2) != 0) o += sprintf(o, ".*");
    for (size_t i = 0; i < n; i++) {
        if (k[i] == '.' && k[i + 1] == '*') { *o++ = '.'; *o++ = '*'; i++; }
        else if (k[i] == '.') { *o++ = '\\'; *o++ = '.'; }
        else *o++ = k[i];
    }
    *o = '\0';
    size_t len = (size_t)(o - r);
    if (!(len && r[len - 1] == '$') && !(len >= 2 && strcmp(r + len - 2, ".*") == 0))
        strcpy(o, ".*");
    return r;
}

static int entry_compile(lc_entry *e, const char *path)
{
    if (!has_regex_token(e->key)) return 0;
    char *rx = standard_regex(e->key);
    if (!rx) return ar_error("%s: out of memory", path);
    int code;
    PCRE2_SIZE off;
    e->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    free(rx);
    if (!e->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return ar_error("%s: layer '%s': bad regex: %s", path, e->key, (char *)msg);
    }
    return 0;
}

static int entry_matches(const lc_entry *e, const char *name)
{
    if (!e->re) return strstr(name, e->key) != NULL;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(e->re, NULL);
    if (!md) return 0;
    int rc = pcre2_match(e->re, (PCRE2_SPTR)name, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

/* Read one integer-valued field; -1 with ar_error if the JSON type is wrong. */
static int json_int(const cJSON *v, int *dst, const char *path, const char *key, const char *field)
{
    /* range first: casting an out-of-range double to int is undefined behaviour */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= -1e9 && v->valuedouble <= 1e9) ||
        v->valuedouble != (double)(int)v->valuedouble)
        return ar_error("%s: layer '%s': \"%s\" must be an integer", path, key, field);
    *dst = (int)v->valuedouble;
    return 0;
}

static int json_bool(const cJSON *v, int *dst, const char *path, const char *key, const char *field)
{
    if (!cJSON_IsBool(v)) return ar_error("%s: layer '%s': \"%s\" must be true or false", path, key, field);
    *dst = cJSON_IsTrue(v);
    return 0;
}

static int json_str(const cJSON *v, char *dst, size_t cap, const char *path, const char *key, const char *field)
{
    if (!cJSON_IsString(v)) return ar_error("%s: layer '%s': \"%s\" must be a string", path, key, field);
    copy_str(dst, cap, v->valuestring);
    return 0;
}

/* Fill one field of an entry from its JSON value. */
static int entry_field(lc_entry *e, const cJSON *f, const char *path)
{
    const char *k = f->string, *key = e->key;
    struct { const char *name; int *dst; int is_bool; } ints[] = {
        { "bits", &e->bits, 0 }, { "group_size", &e->group_size, 0 }, { "sym", &e->sym, 1 },
        { "act_bits", &e->act_bits, 0 }, { "act_group_size", &e->act_group_size, 0 },
        { "act_sym", &e->act_sym, 1 }, { "act_dynamic", &e->act_dynamic, 1 },
        { "super_bits", &e->super_bits, 0 }, { "super_group_size", &e->super_group_size, 0 },
    };
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        if (strcmp(k, ints[i].name) != 0) continue;
        if (cJSON_IsNull(f)) return 0;                 /* None: left to the default */
        return ints[i].is_bool ? json_bool(f, ints[i].dst, path, key, k) : json_int(f, ints[i].dst, path, key, k);
    }
    if (strcmp(k, "data_type") == 0) return json_str(f, e->data_type, sizeof e->data_type, path, key, k);
    if (strcmp(k, "act_data_type") == 0) return json_str(f, e->act_data_type, sizeof e->act_data_type, path, key, k);
    if (strcmp(k, "scale_dtype") == 0) {
        char t[32];
        if (json_str(f, t, sizeof t, path, key, k)) return -1;
        e->scale_f32 = strstr(t, "32") != NULL;
        return 0;
    }
    if (strcmp(k, "scheme") == 0) {
        char t[32];
        if (json_str(f, t, sizeof t, path, key, k)) return -1;
        if (ar_scheme_preset(&e->base, t)) return ar_error_prefix(path);
        e->has_base = 1;
        return 0;
    }
    if (strcmp(k, "fixed_by_user") == 0 || strcmp(k, "in_blocks") == 0) return 0;  /* bookkeeping keys */
    return ar_error("%s: layer '%s': unknown key \"%s\" (bits, group_size, sym, data_type, act_bits, "
                    "act_group_size, act_sym, act_data_type, act_dynamic, super_bits, super_group_size, "
                    "scale_dtype, scheme)", path, key, k);
}

static int entry_parse(lc_entry *e, const cJSON *item, const char *path)
{
    int *unset[] = { &e->bits, &e->group_size, &e->sym, &e->act_bits, &e->act_group_size, &e->act_sym,
                     &e->act_dynamic, &e->super_bits, &e->super_group_size, &e->scale_f32 };
    for (size_t i = 0; i < sizeof unset / sizeof *unset; i++) *unset[i] = AR_UNSET;
    if (cJSON_IsString(item)) {
        if (ar_scheme_preset(&e->base, item->valuestring)) return ar_error_prefix(path);
        e->has_base = 1;
    } else if (cJSON_IsObject(item)) {
        for (const cJSON *f = item->child; f; f = f->next)
            if (entry_field(e, f, path)) return -1;
    } else {
        return ar_error("%s: layer '%s': expected an object or a preset name", path, e->key);
    }
    return entry_compile(e, path);
}

void ar_layer_config_free(ar_layer_config *lc)
{
    if (!lc) return;
    for (int i = 0; i < lc->n; i++) { free(lc->e[i].key); pcre2_code_free(lc->e[i].re); }
    free(lc->e);
    free(lc);
}

int ar_layer_config_count(const ar_layer_config *lc) { return lc ? lc->n : 0; }

ar_layer_config *ar_layer_config_parse(const char *json, const char *path)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        ar_error("%s: malformed JSON near byte %ld", path, at ? (long)(at - json) : -1L);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        ar_error("%s: layer_config must be a JSON object {\"layer or regex\": {...}}", path);
        return NULL;
    }
    ar_layer_config *lc = calloc(1, sizeof *lc);
    int n = cJSON_GetArraySize(root);
    if (lc) lc->e = calloc(n ? (size_t)n : 1, sizeof *lc->e);
    if (!lc || !lc->e) { free(lc); cJSON_Delete(root); ar_error("%s: out of memory", path); return NULL; }
    for (const cJSON *item = root->child; item; item = item->next) {
        lc_entry *e = &lc->e[lc->n++];
        e->key = strdup(item->string);
        if (!e->key || entry_parse(e, item, path)) {
            if (!e->key) ar_error("%s: out of memory", path);
            cJSON_Delete(root); ar_layer_config_free(lc);
            return NULL;
        }
    }
    cJSON_Delete(root);
    return lc;
}

ar_layer_config *ar_layer_config_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { ar_error("%s: cannot open", path); return NULL; }
    char *buf = NULL;
    size_t cap = 0, len = 0, got;
    do {
        if (len + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = 2 * cap + 8192);
            if (!nb) { free(buf); fclose(f); ar_error("%s: out of memory", path); return NULL; }
            buf = nb;
        }
        got = fread(buf + len, 1, 4096, f);
        len += got;
    } while (got > 0);
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); ar_error("%s: read error", path); return NULL; }
    buf[len] = '\0';
    ar_layer_config *lc = ar_layer_config_parse(buf, path);
    free(buf);
    return lc;
}

/* ---- which scheme a layer gets ------------------------------------------- */

/* Exact key first; else the last matching key in file order (AutoRound's
 * regex expansion assigns in dict order, so later keys overwrite). */
static const lc_entry *find_entry(const ar_layer_config *lc, const char *name)
{
    if (!lc) return NULL;
    for (int i = 0; i < lc->n; i++) if (strcmp(lc->e[i].key, name) == 0) return &lc->e[i];
    const lc_entry *hit = NULL;
    for (int i = 0; i < lc->n; i++) if (entry_matches(&lc->e[i], name)) hit = &lc->e[i];
    return hit;
}

/* Family of a data type string at a bit width. */
static ar_scheme_kind kind_of(const char *dt, int bits, ar_scheme_kind def_kind)
{
    if (bits >= 16) return AR_SCHEME_FLOAT;
    if (strncmp(dt, "mx", 2) == 0) return AR_SCHEME_MXFP;
    if (strncmp(dt, "nv", 2) == 0) return AR_SCHEME_NVFP;
    if (strncmp(dt, "fp", 2) == 0 || strncmp(dt, "float", 5) == 0) return AR_SCHEME_FP8;
    return def_kind == AR_SCHEME_GGUF ? AR_SCHEME_GGUF : AR_SCHEME_INT;
}

/* Bits named by a data type like "mx_fp4" or "fp8" (AutoRound infers them when
 * an entry gives a data type but no bits); 0 if none. */
static int bits_in_data_type(const char *dt)
{
    size_t n = strlen(dt);
    if (!n || !isdigit((unsigned char)dt[n - 1])) return 0;
    while (n && isdigit((unsigned char)dt[n - 1])) n--;
    return atoi(dt + n);
}

static void overlay_entry(ar_scheme *s, const lc_entry *e)
{
    if (e->has_base) *s = e->base;
    if (e->data_type[0]) {
        copy_str(s->data_type, sizeof s->data_type, e->data_type);
        int b = bits_in_data_type(e->data_type);
        if (b && e->bits == AR_UNSET) s->bits = b;
    }
    if (e->act_data_type[0]) copy_str(s->act_data_type, sizeof s->act_data_type, e->act_data_type);
    const int src[] = { e->bits, e->group_size, e->sym, e->act_bits, e->act_group_size, e->act_sym,
                        e->act_dynamic, e->super_bits, e->super_group_size, e->scale_f32 };
    int *dst[] = { &s->bits, &s->group_size, &s->sym, &s->act_bits, &s->act_group_size, &s->act_sym,
                   &s->act_dynamic, &s->super_bits, &s->super_group_size, &s->scale_f32 };
    for (size_t i = 0; i < sizeof src / sizeof *src; i++) if (src[i] != AR_UNSET) *dst[i] = src[i];
    s->name[0] = '\0';
    s->mixed = 0;
}

static void keep_high_precision(ar_scheme *s)
{
    s->bits = 16;
    s->kind = AR_SCHEME_FLOAT;
    copy_str(s->data_type, sizeof s->data_type, "fp");
    s->mixed = 0;
}

/* W4A16_MIXED's recipe for a layer without an entry. */
static void apply_mixed_recipe(ar_scheme *s, const char *name)
{
    s->bits = (strstr(name, "expert") && !strstr(name, "shared")) ? 4 : 8;
    s->mixed = 0;
}

/* Shape rule of spec §1.3, judged on the DEFAULT scheme as AutoRound does. */
static int shape_skipped(const ar_scheme *def, int n_out, int k_in)
{
    if (def->kind == AR_SCHEME_INT && strcmp(def->data_type, "int") == 0 && def->act_bits >= 16)
        return n_out % 32 != 0 || k_in % 32 != 0;
    if ((def->kind == AR_SCHEME_MXFP || def->kind == AR_SCHEME_NVFP) && def->group_size > 0)
        return k_in % def->group_size != 0;
    return 0;
}

int ar_scheme_for_layer(const ar_scheme *def, const ar_layer_config *lc, const char *name,
                        int n_out, int k_in, const ar_layer_info *info, ar_scheme *out)
{
    if (!def || !name || !out) return ar_error("scheme: missing argument");
    const lc_entry *e = find_entry(lc, name);
    *out = *def;
    if (e) overlay_entry(out, e);
    else if (def->mixed) apply_mixed_recipe(out, name);
    if (info && info->is_lm_head) {
        int asked = info->quant_lm_head || e;
        int gguf = def->kind == AR_SCHEME_GGUF;
        if (!asked || (info->tied && !gguf)) { keep_high_precision(out); return 0; }
    }
    if (shape_skipped(def, n_out, k_in)) { keep_high_precision(out); return 0; }
    out->kind = kind_of(out->data_type, out->bits, def->kind);
    if (out->kind == AR_SCHEME_FLOAT) keep_high_precision(out);
    return 0;
}
