/* tokenizer.c — loading tokenizer.json, added tokens, encode/decode driver.
 * The text stages live in tokenizer_text.c, the BPE model in tokenizer_bpe.c. */
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "error.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* An entry of "added_tokens". `match` is the text searched for: the content
 * itself, or for normalized tokens the content passed through the normalizer. */
typedef struct {
    char *content, *match;
    size_t mlen;
    int32_t id;
    int special, single_word, lstrip, rstrip, normalized;
} tk_added;

/* Added tokens searched in one pass, longest first; `first` flags the bytes
 * a token can start with so most positions are skipped at once. */
typedef struct { int *idx; int n; unsigned char first[256]; } tk_matcher;

struct ar_tokenizer {
    char path[1024];
    tk_norm *norms;   int n_norms;
    tk_pre *pres;     int n_pres;
    tk_dec *decs;     int n_decs;
    tk_bpe bpe;
    tk_added *added;  int n_added;
    int *added_of_id;               /* id → index in added[], -1; n_vocab entries */
    int32_t n_vocab;                /* 1 + largest id of vocab and added tokens */
    tk_matcher raw_set, norm_set;   /* matched before / after normalization */
    tk_ids prefix, suffix;          /* post-processor ids around the sequence */
    int32_t bos, eos;
    int bos_added;
    tk_pieces pieces, scratch;      /* reused between encodes */
};

/* ---- small JSON helpers -------------------------------------------------- */

static const char *js_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int js_bool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char *js_type(const cJSON *o) { const char *t = js_str(o, "type"); return t ? t : "(none)"; }

static char *dupstr(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d) ar_error("tokenizer: out of memory");
    return d;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { ar_error("%s: cannot open", path); return NULL; }
    tk_buf b = { 0 };
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (tk_buf_add(&b, chunk, got)) { fclose(f); free(b.p); return NULL; }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(b.p); ar_error("%s: read error", path); return NULL; }
    if (!b.p && tk_buf_add(&b, "", 0)) return NULL;
    return b.p;
}

/* Parse a JSON file; NULL (with the file named in the error) if absent or bad. */
static cJSON *read_json(const char *path)
{
    char *text = read_file(path);
    if (!text) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) ar_error("%s: not valid JSON", path);
    return j;
}

/* ---- normalizers --------------------------------------------------------- */

static int add_norm(ar_tokenizer *t, const cJSON *n);

static int add_norm_item(ar_tokenizer *t, tk_norm nm)
{
    tk_norm *v = realloc(t->norms, (t->n_norms + 1) * sizeof *v);
    if (!v) return ar_error("tokenizer: out of memory");
    t->norms = v;
    t->norms[t->n_norms++] = nm;
    return 0;
}

/* A "pattern" object: {"String": s} or {"Regex": r}. */
static int parse_pattern(const ar_tokenizer *t, const cJSON *o, char **lit, pcre2_code **re)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = js_str(p, "String"), *r = js_str(p, "Regex");
    *lit = NULL, *re = NULL;
    if (s) return (*lit = dupstr(s)) ? 0 : -1;
    if (r) return (*re = tk_regex(r, t->path)) ? 0 : -1;
    return ar_error("%s: %s without a String or Regex pattern", t->path, js_type(o));
}

static int add_norm(ar_tokenizer *t, const cJSON *n)
{
    const char *ty = js_type(n);
    tk_norm nm = { 0 };
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
            if (add_norm(t, it)) return -1;
        return 0;
    }
    if (!strcmp(ty, "NFC")) nm.kind = TK_NORM_NFC;
    else if (!strcmp(ty, "NFD")) nm.kind = TK_NORM_NFD;
    else if (!strcmp(ty, "NFKC")) nm.kind = TK_NORM_NFKC;
    else if (!strcmp(ty, "NFKD")) nm.kind = TK_NORM_NFKD;
    else if (!strcmp(ty, "Lowercase")) nm.kind = TK_NORM_LOWERCASE;
    else if (!strcmp(ty, "Prepend")) {
        nm.kind = TK_NORM_PREPEND;
        if (!(nm.a = dupstr(js_str(n, "prepend")))) return -1;
    } else if (!strcmp(ty, "Replace")) {
        nm.kind = TK_NORM_REPLACE;
        if (parse_pattern(t, n, &nm.a, &nm.re) || !(nm.b = dupstr(js_str(n, "content")))) return -1;
    } else if (!strcmp(ty, "Strip")) {
        nm.kind = TK_NORM_STRIP;
        nm.left = js_bool(n, "strip_left", 1), nm.right = js_bool(n, "strip_right", 1);
    } else
        return ar_error("%s: unsupported normalizer type '%s'", t->path, ty);
    return add_norm_item(t, nm);
}

/* ---- pre-tokenizers ------------------------------------------------------ */

static int add_pre_item(ar_tokenizer *t, tk_pre p)
{
    tk_pre *v = realloc(t->pres, (t->n_pres + 1) * sizeof *v);
    if (!v) return ar_error("tokenizer: out of memory");
    t->pres = v;
    t->pres[t->n_pres++] = p;
    return 0;
}

static int parse_behavior(const ar_tokenizer *t, const char *b, tk_split_behavior *out)
{
    static const char *names[] = { "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous" };
    for (int k = 0; k < 5; k++)
        if (b && !strcmp(b, names[k])) { *out = (tk_split_behavior)k; return 0; }
    return ar_error("%s: unknown Split behavior '%s'", t->path, b ? b : "(none)");
}

static int parse_scheme(const ar_tokenizer *t, const cJSON *o, tk_prepend_scheme *out)
{
    const char *s = js_str(o, "prepend_scheme");
    if (!s) *out = js_bool(o, "add_prefix_space", 1) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;   /* older files */
    else if (!strcmp(s, "always")) *out = TK_PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *out = TK_PREPEND_FIRST;
    else if (!strcmp(s, "never")) *out = TK_PREPEND_NEVER;
    else return ar_error("%s: unknown prepend_scheme '%s'", t->path, s);
    return 0;
}

/* A Split step on a fixed regex (Digits, Whitespace, WhitespaceSplit). */
static int add_regex_split(ar_tokenizer *t, const char *re, tk_split_behavior bh, int invert)
{
    tk_pre p = { .kind = TK_PRE_SPLIT, .behavior = bh, .invert = invert };
    return (p.re = tk_regex(re, t->path)) ? add_pre_item(t, p) : -1;
}

static int add_pre(ar_tokenizer *t, const cJSON *o)
{
    const char *ty = js_type(o);
    tk_pre p = { 0 };
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "pretokenizers"))
            if (add_pre(t, it)) return -1;
        return 0;
    }
    if (!strcmp(ty, "Split")) {
        p.kind = TK_PRE_SPLIT, p.invert = js_bool(o, "invert", 0);
        if (parse_pattern(t, o, &p.literal, &p.re) || parse_behavior(t, js_str(o, "behavior"), &p.behavior)) return -1;
    } else if (!strcmp(ty, "ByteLevel")) {
        p.kind = TK_PRE_BYTELEVEL, p.add_prefix_space = js_bool(o, "add_prefix_space", 1);
        if (js_bool(o, "use_regex", 1) && !(p.re = tk_regex(tk_gpt2_pattern, t->path))) return -1;
    } else if (!strcmp(ty, "Metaspace")) {
        const char *r = js_str(o, "replacement");
        p.kind = TK_PRE_METASPACE, p.split = js_bool(o, "split", 1);
        snprintf(p.repl, sizeof p.repl, "%s", r ? r : "\xE2\x96\x81");
        if (parse_scheme(t, o, &p.scheme)) return -1;
    } else if (!strcmp(ty, "Digits"))
        return add_regex_split(t, "\\p{N}", js_bool(o, "individual_digits", 0) ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS, 0);
    else if (!strcmp(ty, "Whitespace"))
        return add_regex_split(t, "\\w+|[^\\w\\s]+", TK_SPLIT_REMOVED, 1);
    else if (!strcmp(ty, "WhitespaceSplit"))
        return add_regex_split(t, "\\s", TK_SPLIT_REMOVED, 0);
    else
        return ar_error("%s: unsupported pre_tokenizer type '%s'", t->path, ty);
    return add_pre_item(t, p);
}

/* ---- decoders ------------------------------------------------------------ */

static int add_dec_item(ar_tokenizer *t, tk_dec d)
{
    tk_dec *v = realloc(t->decs, (t->n_decs + 1) * sizeof *v);
    if (!v) return ar_error("tokenizer: out of memory");
    t->decs = v;
    t->decs[t->n_decs++] = d;
    return 0;
}

static int add_dec(ar_tokenizer *t, const cJSON *o)
{
    const char *ty = js_type(o);
    tk_dec d = { 0 };
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "decoders"))
            if (add_dec(t, it)) return -1;
        return 0;
    }
    if (!strcmp(ty, "ByteLevel")) d.kind = TK_DEC_BYTELEVEL;
    else if (!strcmp(ty, "ByteFallback")) d.kind = TK_DEC_BYTEFALLBACK;
    else if (!strcmp(ty, "Fuse")) d.kind = TK_DEC_FUSE;
    else if (!strcmp(ty, "Replace")) {
        pcre2_code *re;
        d.kind = TK_DEC_REPLACE;
        if (parse_pattern(t, o, &d.a, &re)) return -1;
        if (re) { pcre2_code_free(re); return ar_error("%s: Replace decoder with a Regex is unsupported", t->path); }
        if (!(d.b = dupstr(js_str(o, "content")))) return -1;
    } else if (!strcmp(ty, "Strip")) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "start"), *e = cJSON_GetObjectItemCaseSensitive(o, "stop");
        d.kind = TK_DEC_STRIP, d.start = cJSON_IsNumber(s) ? s->valueint : 0, d.stop = cJSON_IsNumber(e) ? e->valueint : 0;
        if (!(d.a = dupstr(js_str(o, "content")))) return -1;
    } else if (!strcmp(ty, "Metaspace")) {
        const char *r = js_str(o, "replacement");
        d.kind = TK_DEC_METASPACE;
        if (parse_scheme(t, o, &d.scheme) || !(d.a = dupstr(r ? r : "\xE2\x96\x81"))) return -1;
    } else
        return ar_error("%s: unsupported decoder type '%s'", t->path, ty);
    return add_dec_item(t, d);
}

/* ---- model --------------------------------------------------------------- */

static int32_t model_id(const ar_tokenizer *t, const char *s)
{
    return tk_map_get(&t->bpe.vocab, s, strlen(s));
}

/* One merge, "a b" or ["a", "b"]: both sides and their concatenation must be
 * in the vocabulary. */
static int load_merge(ar_tokenizer *t, const cJSON *m, int32_t rank)
{
    char buf[1024];
    const char *l = NULL, *r = NULL;
    if (cJSON_IsString(m)) {
        const char *sp = strchr(m->valuestring, ' ');
        size_t ll = sp ? (size_t)(sp - m->valuestring) : 0;
        if (!sp || ll >= sizeof buf / 2 || strchr(sp + 1, ' '))
            return ar_error("%s: merge %d '%s' is not two tokens", t->path, rank, m->valuestring);
        memcpy(buf, m->valuestring, ll);
        buf[ll] = 0;
        l = buf, r = sp + 1;
    } else if (cJSON_GetArraySize(m) == 2) {
        l = cJSON_GetArrayItem(m, 0)->valuestring, r = cJSON_GetArrayItem(m, 1)->valuestring;
    }
    if (!l || !r) return ar_error("%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", t->path, rank);
    size_t ln = strlen(l), rn = strlen(r);
    char *both = malloc(ln + rn + 1);
    if (!both) return ar_error("tokenizer: out of memory");
    memcpy(both, l, ln), memcpy(both + ln, r, rn + 1);
    int32_t a = model_id(t, l), b = model_id(t, r), ab = model_id(t, both);
    int rc = a < 0 || b < 0 || ab < 0
                 ? ar_error("%s: merge %d '%s %s' uses a token missing from the vocab", t->path, rank, l, r)
                 : tk_bpe_add_merge(&t->bpe, a, b, ab, rank);
    free(both);
    return rc;
}

static int load_model(ar_tokenizer *t, const cJSON *m)
{
    const char *ty = js_str(m, "type");
    if (ty && strcmp(ty, "BPE")) return ar_error("%s: unsupported model type '%s'", t->path, ty);
    if (js_str(m, "continuing_subword_prefix") || js_str(m, "end_of_word_suffix"))
        return ar_error("%s: BPE continuing_subword_prefix / end_of_word_suffix are unsupported", t->path);
    const cJSON *it, *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    if (!cJSON_IsObject(vocab)) return ar_error("%s: model has no vocab", t->path);
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 1e8)
            return ar_error("%s: vocab entry '%s' has no valid id", t->path, it->string);
        if (tk_map_put(&t->bpe.vocab, it->string, strlen(it->string), it->valueint)) return -1;
    }
    t->bpe.fuse_unk = js_bool(m, "fuse_unk", 0);
    t->bpe.byte_fallback = js_bool(m, "byte_fallback", 0);
    t->bpe.ignore_merges = js_bool(m, "ignore_merges", 0);
    const char *unk = js_str(m, "unk_token");
    t->bpe.unk_id = unk ? model_id(t, unk) : -1;
    if (unk && t->bpe.unk_id < 0) return ar_error("%s: unk_token '%s' is not in the vocab", t->path, unk);
    int32_t rank = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(m, "merges"))
        if (load_merge(t, it, rank++)) return -1;
    return tk_bpe_finish(&t->bpe);
}

/* ---- added tokens -------------------------------------------------------- */

static int by_match_len_desc(const void *a, const void *b, void *ctx)
{
    const tk_added *ad = ctx;
    size_t la = ad[*(const int *)a].mlen, lb = ad[*(const int *)b].mlen;
    return la < lb ? 1 : la > lb ? -1 : *(const int *)a - *(const int *)b;
}

static int matcher_add(tk_matcher *m, int idx, const tk_added *a)
{
    int *v = realloc(m->idx, (m->n + 1) * sizeof *v);
    if (!v) return ar_error("tokenizer: out of memory");
    m->idx = v;
    m->idx[m->n++] = idx;
    m->first[(unsigned char)a->match[0]] = 1;
    return 0;
}

/* Sort tokens into the raw and normalized matchers; normalized tokens are
 * searched for in their normalized form, as HF does. */
static int build_matchers(ar_tokenizer *t)
{
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        tk_buf b = { 0 };
        if (a->normalized && t->n_norms) {
            if (tk_normalize(t->norms, t->n_norms, a->content, strlen(a->content), &b)) return -1;
            a->match = b.p;
        } else if (!(a->match = dupstr(a->content)))
            return -1;
        a->mlen = strlen(a->match);
        if (a->mlen && matcher_add(a->normalized ? &t->norm_set : &t->raw_set, i, a)) return -1;
    }
    /* qsort_r's base must not be NULL, even for zero elements */
    if (t->raw_set.n > 1) qsort_r(t->raw_set.idx, t->raw_set.n, sizeof(int), by_match_len_desc, t->added);
    if (t->norm_set.n > 1) qsort_r(t->norm_set.idx, t->norm_set.n, sizeof(int), by_match_len_desc, t->added);
    return 0;
}

static int load_added(ar_tokenizer *t, const cJSON *list)
{
    int n = cJSON_GetArraySize(list), k = 0;
    const cJSON *it;
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return ar_error("tokenizer: out of memory");
    cJSON_ArrayForEach(it, list) {
        tk_added *a = &t->added[k++];
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!js_str(it, "content") || !cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8)
            return ar_error("%s: added token %d lacks content or id", t->path, k - 1);
        if (!(a->content = dupstr(js_str(it, "content")))) return -1;
        t->n_added = k;
        a->id = id->valueint;
        a->special = js_bool(it, "special", 0);
        a->single_word = js_bool(it, "single_word", 0);
        a->lstrip = js_bool(it, "lstrip", 0);
        a->rstrip = js_bool(it, "rstrip", 0);
        a->normalized = js_bool(it, "normalized", !a->special);
    }
    return 0;
}

/* Index added tokens by id so decode looks them up in O(1). */
static int index_added(ar_tokenizer *t)
{
    t->n_vocab = t->bpe.n_ids;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id >= t->n_vocab) t->n_vocab = t->added[i].id + 1;
    t->added_of_id = malloc((t->n_vocab ? t->n_vocab : 1) * sizeof *t->added_of_id);
    if (!t->added_of_id) return ar_error("tokenizer: out of memory");
    for (int32_t id = 0; id < t->n_vocab; id++) t->added_of_id[id] = -1;
    for (int i = 0; i < t->n_added; i++) t->added_of_id[t->added[i].id] = i;
    return 0;
}

static const tk_added *added_by_id(const ar_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->added_of_id[id] >= 0 ? &t->added[t->added_of_id[id]] : NULL;
}

/* ---- post-processor ------------------------------------------------------ */

/* A post-processor token id: a whole number in the range vocab ids may take
 * (HF stores them as u32 and refuses a file with a negative one). */
static int valid_post_id(const cJSON *j)
{
    return cJSON_IsNumber(j) && j->valuedouble >= 0 && j->valuedouble <= 1e8 && j->valuedouble == (double)j->valueint;
}

/* Append the ids of special token `name` from a template's special_tokens. */
static int template_special(ar_tokenizer *t, const cJSON *specials, const char *name, tk_ids *to)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(specials, name), "ids"), *it;
    if (!cJSON_IsArray(ids)) return ar_error("%s: template names special token '%s' without ids", t->path, name);
    cJSON_ArrayForEach(it, ids) {
        if (!valid_post_id(it)) return ar_error("%s: special token '%s' has an invalid id", t->path, name);
        if (tk_ids_add(to, it->valueint)) return -1;
    }
    return 0;
}

static int load_template(ar_tokenizer *t, const cJSON *o)
{
    const cJSON *it, *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    int seen_seq = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "single")) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) seen_seq = 1;
        else if (sp && template_special(t, specials, js_str(sp, "id") ? js_str(sp, "id") : "", seen_seq ? &t->suffix : &t->prefix))
            return -1;
    }
    return 0;
}

/* RobertaProcessing / BertProcessing: {"cls": [token, id], "sep": [token, id]}. */
static int load_cls_sep(ar_tokenizer *t, const cJSON *o)
{
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(o, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(o, "sep");
    if (cJSON_GetArraySize(cls) != 2 || cJSON_GetArraySize(sep) != 2)
        return ar_error("%s: %s needs cls and sep", t->path, js_type(o));
    if (!valid_post_id(cJSON_GetArrayItem(cls, 1)) || !valid_post_id(cJSON_GetArrayItem(sep, 1)))
        return ar_error("%s: %s cls or sep has an invalid id", t->path, js_type(o));
    return tk_ids_add(&t->prefix, cJSON_GetArrayItem(cls, 1)->valueint) ||
           tk_ids_add(&t->suffix, cJSON_GetArrayItem(sep, 1)->valueint) ? -1 : 0;
}

static int load_post(ar_tokenizer *t, const cJSON *o)
{
    const char *ty = js_type(o);
    const cJSON *it;
    if (!strcmp(ty, "Sequence")) {
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "processors"))
            if (load_post(t, it)) return -1;
        return 0;
    }
    if (!strcmp(ty, "ByteLevel")) return 0;   /* only trims offsets */
    if (!strcmp(ty, "TemplateProcessing")) return load_template(t, o);
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) return load_cls_sep(t, o);
    return ar_error("%s: unsupported post_processor type '%s'", t->path, ty);
}

/* ---- bos / eos ----------------------------------------------------------- */

/* A token named in tokenizer_config.json: "bos_token": "<s>" or {"content": "<s>"}. */
static int32_t config_token(const ar_tokenizer *t, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *name = cJSON_IsString(v) ? v->valuestring : js_str(v, "content");
    return name ? ar_tokenizer_id(t, name) : -1;
}

static void load_bos_eos(ar_tokenizer *t, const char *cfg_path)
{
    static const char *eos_names[] = { "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>" };
    struct stat st;
    cJSON *cfg = stat(cfg_path, &st) == 0 ? read_json(cfg_path) : NULL;
    t->bos_added = t->prefix.n > 0;
    t->bos = t->bos_added ? t->prefix.v[0] : config_token(t, cfg, "bos_token");
    t->eos = config_token(t, cfg, "eos_token");
    for (size_t k = 0; t->eos < 0 && k < sizeof eos_names / sizeof *eos_names; k++) {
        int32_t id = ar_tokenizer_id(t, eos_names[k]);
        if (id >= 0 && ar_tokenizer_is_special(t, id)) t->eos = id;
    }
    cJSON_Delete(cfg);
}

/* ---- load / free --------------------------------------------------------- */

static int load_parts(ar_tokenizer *t, const cJSON *j)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "normalizer"), *p = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"),
                *d = cJSON_GetObjectItemCaseSensitive(j, "decoder"), *pp = cJSON_GetObjectItemCaseSensitive(j, "post_processor");
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "model"))) return ar_error("%s: no model", t->path);
    if (load_model(t, cJSON_GetObjectItemCaseSensitive(j, "model"))) return -1;
    if (cJSON_IsObject(n) && add_norm(t, n)) return -1;
    if (cJSON_IsObject(p) && add_pre(t, p)) return -1;
    if (cJSON_IsObject(d) && add_dec(t, d)) return -1;
    if (cJSON_IsObject(pp) && load_post(t, pp)) return -1;
    if (load_added(t, cJSON_GetObjectItemCaseSensitive(j, "added_tokens")) || index_added(t)) return -1;
    return build_matchers(t);
}

ar_tokenizer *ar_tokenizer_load(const char *path)
{
    struct stat st;
    char dir[1024];
    ar_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { ar_error("tokenizer: out of memory"); return NULL; }
    int is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    snprintf(t->path, sizeof t->path, is_dir ? "%s/tokenizer.json" : "%s", path);
    snprintf(dir, sizeof dir, "%s", t->path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = 0;
    else dir[0] = 0;
    cJSON *j = read_json(t->path);
    int rc = j ? load_parts(t, j) : -1;
    cJSON_Delete(j);
    if (!rc) {
        char cfg[1100];
        snprintf(cfg, sizeof cfg, "%stokenizer_config.json", dir);
        load_bos_eos(t, cfg);
    }
    if (rc) { ar_tokenizer_free(t); return NULL; }
    return t;
}

void ar_tokenizer_free(ar_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_norms; i++) {
        free(t->norms[i].a), free(t->norms[i].b);
        if (t->norms[i].re) pcre2_code_free(t->norms[i].re);
    }
    for (int i = 0; i < t->n_pres; i++) {
        free(t->pres[i].literal);
        if (t->pres[i].re) pcre2_code_free(t->pres[i].re);
    }
    for (int i = 0; i < t->n_decs; i++) free(t->decs[i].a), free(t->decs[i].b);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content), free(t->added[i].match);
    free(t->norms), free(t->pres), free(t->decs), free(t->added), free(t->added_of_id);
    free(t->raw_set.idx), free(t->norm_set.idx), free(t->prefix.v), free(t->suffix.v);
    tk_bpe_free(&t->bpe);
    tk_pieces_free(&t->pieces), tk_pieces_free(&t->scratch);
    free(t);
}

/* ---- added-token matching ------------------------------------------------ */

/* A stretch of text: plain text (id < 0) or one added token. */
typedef struct { size_t a, b; int32_t id; } tk_seg;
typedef struct { tk_seg *v; size_t n, cap; } tk_segs;

static int segs_add(tk_segs *s, size_t a, size_t b, int32_t id)
{
    if (id < 0 && a == b) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        tk_seg *v = realloc(s->v, cap * sizeof *v);
        if (!v) return ar_error("tokenizer: out of memory");
        s->v = v, s->cap = cap;
    }
    s->v[s->n++] = (tk_seg){ a, b, id };
    return 0;
}

/* Start of the character that ends at s[end) (end > 0). */
static size_t char_before(const char *s, size_t end)
{
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

static int32_t cp_at(const char *s, size_t n, size_t *len)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &cp);
    *len = l > 0 ? (size_t)l : 1;
    return l > 0 ? cp : 0xFFFD;
}

/* Rust's char::is_whitespace. */
static int is_space_cp(int32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Rust's is_alphanumeric() || '_', approximated with general categories
 * (letters, numbers, and marks for Other_Alphabetic). */
static int is_word_cp(int32_t c)
{
    utf8proc_category_t k = utf8proc_category(c);
    return c == '_' || (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_MC) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

/* single_word: the match must not touch a word character on either side. */
static int stands_alone(const char *s, size_t n, size_t a, size_t b)
{
    size_t l;
    if (a > 0 && is_word_cp(cp_at(s + char_before(s, a), a - char_before(s, a), &l))) return 0;
    return b >= n || !is_word_cp(cp_at(s + b, n - b, &l));
}

/* The longest token of the set starting at s[pos], or NULL. */
static const tk_added *match_at(const ar_tokenizer *t, const tk_matcher *m, const char *s, size_t n, size_t pos)
{
    if (!m->first[(unsigned char)s[pos]]) return NULL;
    for (int k = 0; k < m->n; k++) {
        const tk_added *a = &t->added[m->idx[k]];
        if (a->mlen <= n - pos && !memcmp(s + pos, a->match, a->mlen)) return a;
    }
    return NULL;
}

/* Cut s[0..n) at the added tokens of set m, scanning left to right for the
 * leftmost-longest match like HF's Aho-Corasick; lstrip/rstrip pull the
 * neighbouring whitespace into the token. */
static int find_added(const ar_tokenizer *t, const tk_matcher *m, const char *s, size_t n, tk_segs *out)
{
    size_t pos = 0, done = 0, l;
    while (m->n && pos < n) {
        const tk_added *a = match_at(t, m, s, n, pos);
        if (!a) { pos++; continue; }
        size_t start = pos, stop = pos + a->mlen;
        pos = stop;
        if (a->single_word && !stands_alone(s, n, start, stop)) continue;
        while (a->lstrip && start > done && is_space_cp(cp_at(s + char_before(s, start), start - char_before(s, start), &l)))
            start = char_before(s, start);
        while (a->rstrip && stop < n && is_space_cp(cp_at(s + stop, n - stop, &l))) stop += l;
        if (segs_add(out, done, start, -1) || segs_add(out, start, stop, a->id)) return -1;
        done = pos = stop;
    }
    return segs_add(out, done, n, -1);
}

/* ---- encode -------------------------------------------------------------- */

/* Pre-tokenize one normalized stretch and run the model on each piece. */
static int encode_text(ar_tokenizer *t, const char *s, size_t n, int at_start, tk_ids *out)
{
    tk_pieces_clear(&t->pieces);
    if (tk_pieces_add(&t->pieces, s, n, at_start) || tk_pretokenize(t->pres, t->n_pres, &t->pieces, &t->scratch))
        return -1;
    for (size_t i = 0; i < t->pieces.n; i++)
        if (tk_bpe_word(&t->bpe, t->pieces.bytes.p + t->pieces.v[i].off, t->pieces.v[i].len, out)) return -1;
    return 0;
}

/* Normalize a stretch between raw added tokens, then cut it at the
 * normalized added tokens. */
static int encode_stretch(ar_tokenizer *t, const char *s, size_t n, int at_start, tk_ids *out)
{
    tk_buf norm = { 0 };
    tk_segs segs = { 0 };
    int rc = t->n_norms ? tk_normalize(t->norms, t->n_norms, s, n, &norm) : tk_buf_add(&norm, s, n);
    if (!rc) rc = find_added(t, &t->norm_set, norm.p, norm.n, &segs);
    for (size_t k = 0; k < segs.n && !rc; k++)
        rc = segs.v[k].id >= 0 ? tk_ids_add(out, segs.v[k].id)
                               : encode_text(t, norm.p + segs.v[k].a, segs.v[k].b - segs.v[k].a, at_start && segs.v[k].a == 0, out);
    free(norm.p), free(segs.v);
    return rc;
}

int ar_tokenizer_encode(ar_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, size_t *n)
{
    tk_buf clean = { 0 };
    tk_ids out = { 0 };
    tk_segs segs = { 0 };
    int rc = tk_utf8_sanitize(text ? text : "", text ? len : 0, &clean) || tk_ids_add(&out, 0);
    out.n = 0;   /* the add above only guarantees a non-NULL array */
    for (size_t k = 0; add_special && !rc && k < t->prefix.n; k++) rc = tk_ids_add(&out, t->prefix.v[k]);
    if (!rc) rc = find_added(t, &t->raw_set, clean.p, clean.n, &segs);
    for (size_t k = 0; k < segs.n && !rc; k++)
        rc = segs.v[k].id >= 0 ? tk_ids_add(&out, segs.v[k].id)
                               : encode_stretch(t, clean.p + segs.v[k].a, segs.v[k].b - segs.v[k].a, segs.v[k].a == 0, &out);
    for (size_t k = 0; add_special && !rc && k < t->suffix.n; k++) rc = tk_ids_add(&out, t->suffix.v[k]);
    free(clean.p), free(segs.v);
    if (rc) { free(out.v); return -1; }
    *ids = out.v, *n = out.n;
    return 0;
}

/* ---- decode and lookups -------------------------------------------------- */

char *ar_tokenizer_decode(const ar_tokenizer *t, const int32_t *ids, size_t n, int skip_special)
{
    char **toks = calloc(n ? n : 1, sizeof *toks);
    size_t nt = 0;
    tk_buf out = { 0 };
    int rc = toks ? 0 : ar_error("tokenizer: out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        const char *s = ar_tokenizer_token(t, ids[i]);
        if (!s || (skip_special && ar_tokenizer_is_special(t, ids[i]))) continue;
        if (!(toks[nt] = dupstr(s))) rc = -1;
        else nt++;
    }
    if (!rc && t->n_decs) rc = tk_decode_chain(t->decs, t->n_decs, &toks, &nt, &out);
    else if (!rc) {   /* no decoder: HF joins the tokens with spaces */
        rc = tk_buf_add(&out, "", 0);
        for (size_t i = 0; i < nt && !rc; i++) rc = tk_buf_add(&out, " ", i > 0) || tk_buf_add(&out, toks[i], strlen(toks[i]));
    }
    for (size_t i = 0; toks && i < nt; i++) free(toks[i]);
    free(toks);
    if (rc) { free(out.p); return NULL; }
    return out.p;
}

int32_t ar_tokenizer_vocab_size(const ar_tokenizer *t) { return t->n_vocab; }

const char *ar_tokenizer_token(const ar_tokenizer *t, int32_t id)
{
    const tk_added *a = added_by_id(t, id);
    if (a) return a->content;
    return id >= 0 && id < t->bpe.n_ids ? t->bpe.id_tok[id] : NULL;
}

int32_t ar_tokenizer_id(const ar_tokenizer *t, const char *token)
{
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, token)) return t->added[i].id;
    return model_id(t, token);
}

int ar_tokenizer_is_special(const ar_tokenizer *t, int32_t id)
{
    const tk_added *a = added_by_id(t, id);
    return a && a->special;
}

int32_t ar_tokenizer_bos(const ar_tokenizer *t, int *added)
{
    if (added) *added = t->bos_added;
    return t->bos;
}

int32_t ar_tokenizer_eos(const ar_tokenizer *t) { return t->eos; }
