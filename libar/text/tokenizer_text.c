/* tokenizer_text.c — the text stages of the tokenizer: UTF-8 repair,
 * normalizers, pre-tokenizers (regex Split, ByteLevel, Metaspace) and
 * decoders, each following the semantics of Hugging Face tokenizers. */
#include "tokenizer_impl.h"
#include "error.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

const char tk_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- UTF-8 --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, or 0 if it is not valid.
 * Follows the Unicode table of well-formed byte sequences (no overlongs,
 * no surrogates, nothing above U+10FFFF). */
static size_t tk_utf8_valid(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!need || avail < 2) return 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < need; k++)
        if (k >= avail || (s[k] & 0xC0) != 0x80) return 0;
    return need;
}

/* Bytes of the maximal prefix of an invalid sequence at s (at least 1): the
 * lead byte plus the continuation bytes that were still acceptable. */
static size_t tk_utf8_bad_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!need) return 1;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    size_t k = 1;
    if (k < avail && s[k] >= lo && s[k] <= hi) k++;
    else return 1;
    while (k < need && k < avail && (s[k] & 0xC0) == 0x80) k++;
    return k;
}

size_t tk_utf8_len(const char *s, size_t avail)
{
    size_t n = tk_utf8_valid((const unsigned char *)s, avail);
    return n ? n : 1;
}

int tk_utf8_sanitize(const char *s, size_t n, tk_buf *out)
{
    static const char fffd[] = "\xEF\xBF\xBD";
    size_t i = 0, run = 0;   /* [run, i) is valid and not yet copied */
    while (i < n) {
        size_t v = tk_utf8_valid((const unsigned char *)s + i, n - i);
        if (v) { i += v; continue; }
        if (tk_buf_add(out, s + run, i - run) || tk_buf_add(out, fffd, 3)) return -1;
        i += tk_utf8_bad_len((const unsigned char *)s + i, n - i);
        run = i;
    }
    return tk_buf_add(out, s + run, n - run);
}

/* Decode one code point (input already valid). */
static int32_t tk_cp(const char *s, size_t avail, size_t *len)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)avail, &cp);
    *len = l > 0 ? (size_t)l : 1;
    return l > 0 ? cp : 0xFFFD;
}

/* ---- normalizers --------------------------------------------------------- */

pcre2_code *tk_regex(const char *pattern, const char *what)
{
    int err;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        ar_error("%s: bad regex at offset %zu: %s", what, (size_t)at, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional speed-up; falls back silently */
    return re;
}

/* Find all non-overlapping matches of re (or of the literal) in s[0..n):
 * on return m[2k], m[2k+1] are the bounds of match k. An empty match moves
 * the search on by one character, as Rust's find_iter does. */
static int tk_find_all(pcre2_code *re, const char *lit, const char *s, size_t n, size_t **m, size_t *nm)
{
    size_t cap = 0, pos = 0;
    *m = NULL, *nm = 0;
    pcre2_match_data *md = re ? pcre2_match_data_create_from_pattern(re, NULL) : NULL;
    size_t litn = lit ? strlen(lit) : 0;
    int rc = 0;
    while (pos <= n) {
        size_t a, b;
        if (re) {
            int r = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
            if (r < 0) { if (r != PCRE2_ERROR_NOMATCH) rc = ar_error("tokenizer: regex match failed (%d)", r); break; }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            a = ov[0], b = ov[1];
        } else {
            const char *f = litn ? memmem(s + pos, n - pos, lit, litn) : NULL;
            if (!f) break;
            a = (size_t)(f - s), b = a + litn;
        }
        if (*nm + 2 > cap) {
            cap = cap ? cap * 2 : 64;
            size_t *v = realloc(*m, cap * sizeof *v);
            if (!v) { rc = ar_error("tokenizer: out of memory"); break; }
            *m = v;
        }
        (*m)[(*nm)++] = a, (*m)[(*nm)++] = b;
        pos = b > a ? b : b + (b < n ? tk_utf8_len(s + b, n - b) : 1);
    }
    if (md) pcre2_match_data_free(md);
    *nm /= 2;
    return rc;
}

/* Replace every match of (re | literal) in in[0..n) by `with`. */
static int tk_replace(pcre2_code *re, const char *lit, const char *with, const char *in, size_t n, tk_buf *out)
{
    size_t *m, nm, at = 0;
    if (tk_find_all(re, lit, in, n, &m, &nm)) return -1;
    int rc = 0;
    for (size_t k = 0; k < nm && !rc; k++) {
        rc = tk_buf_add(out, in + at, m[2 * k] - at) || tk_buf_add(out, with, strlen(with));
        at = m[2 * k + 1];
    }
    if (!rc) rc = tk_buf_add(out, in + at, n - at);
    free(m);
    return rc ? -1 : 0;
}

static int tk_unicode_form(tk_norm_kind kind, const char *in, size_t n, tk_buf *out)
{
    int opt = UTF8PROC_STABLE | (kind == TK_NORM_NFC || kind == TK_NORM_NFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
    if (kind == TK_NORM_NFKC || kind == TK_NORM_NFKD) opt |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)n, &dst, opt);
    if (len < 0) return ar_error("tokenizer: normalization failed: %s", utf8proc_errmsg(len));
    int rc = tk_buf_add(out, dst, (size_t)len);
    free(dst);
    return rc;
}

/* Rust's char::is_whitespace (the White_Space property). */
static int tk_is_space(int32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Rust's to_lowercase: the simple mapping, plus the one unconditional
 * multi-character case of SpecialCasing.txt (U+0130 → "i\u0307"). */
static int tk_lowercase(const char *in, size_t n, tk_buf *out)
{
    for (size_t i = 0, l; i < n; i += l) {
        utf8proc_uint8_t enc[4];
        int32_t c = tk_cp(in + i, n - i, &l);
        if (c == 0x130) {
            if (tk_buf_add(out, "i\xCC\x87", 3)) return -1;
            continue;
        }
        c = utf8proc_tolower(c);
        if (tk_buf_add(out, enc, (size_t)utf8proc_encode_char(c, enc))) return -1;
    }
    return 0;
}

static int tk_strip(const tk_norm *nm, const char *in, size_t n, tk_buf *out)
{
    size_t a = 0, b = n, l;
    while (nm->left && a < b && tk_is_space(tk_cp(in + a, b - a, &l))) a += l;
    while (nm->right && b > a) {
        size_t s = b - 1;
        while (s > a && ((unsigned char)in[s] & 0xC0) == 0x80) s--;
        if (!tk_is_space(tk_cp(in + s, b - s, &l))) break;
        b = s;
    }
    return tk_buf_add(out, in + a, b - a);
}

static int tk_normalize_one(const tk_norm *nm, const char *in, size_t n, tk_buf *out)
{
    switch (nm->kind) {
    case TK_NORM_LOWERCASE: return tk_lowercase(in, n, out);
    case TK_NORM_PREPEND:   /* HF prepends only to non-empty text */
        return (n && tk_buf_add(out, nm->a, strlen(nm->a))) || tk_buf_add(out, in, n) ? -1 : 0;
    case TK_NORM_REPLACE:   return tk_replace(nm->re, nm->a, nm->b, in, n, out);
    case TK_NORM_STRIP:     return tk_strip(nm, in, n, out);
    default:                return tk_unicode_form(nm->kind, in, n, out);
    }
}

int tk_normalize(const tk_norm *norms, int n_norms, const char *in, size_t n, tk_buf *out)
{
    tk_buf cur = { 0 }, next = { 0 };
    if (tk_buf_add(&cur, in, n)) return -1;
    for (int k = 0; k < n_norms; k++) {
        next.n = 0;
        if (tk_buf_add(&next, "", 0) || tk_normalize_one(&norms[k], cur.p, cur.n, &next)) {
            free(cur.p), free(next.p);
            return -1;
        }
        tk_buf t = cur;
        cur = next, next = t;
    }
    int rc = tk_buf_add(out, cur.p, cur.n);
    free(cur.p), free(next.p);
    return rc;
}

/* ---- pre-tokenizers ------------------------------------------------------ */

/* GPT-2's reversible byte → character map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes take code points 256, 257, ... in order. */
static int32_t tk_byte_cp[256];
static unsigned char tk_cp_byte[324];
static pthread_once_t tk_bytemap_once = PTHREAD_ONCE_INIT;

static void tk_bytemap_build(void)
{
    int32_t extra = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        tk_byte_cp[b] = printable ? b : extra++;
        tk_cp_byte[tk_byte_cp[b]] = (unsigned char)b;
    }
}

static void tk_bytemap_init(void) { pthread_once(&tk_bytemap_once, tk_bytemap_build); }

/* A run of a split: [a, b) and whether it was a match of the pattern. */
typedef struct { size_t a, b; int match; } tk_run;

/* Cut s[0..n) into alternating match / gap runs. */
static int tk_runs(const tk_pre *st, const char *s, size_t n, tk_run **runs, size_t *nr)
{
    size_t *m, nm, at = 0, k = 0;
    if (tk_find_all(st->re, st->literal, s, n, &m, &nm)) return -1;
    *runs = malloc((2 * nm + 1) * sizeof **runs);
    if (!*runs) { free(m); return ar_error("tokenizer: out of memory"); }
    for (size_t i = 0; i < nm; i++) {
        if (m[2 * i] > at) (*runs)[k++] = (tk_run){ at, m[2 * i], st->invert };
        (*runs)[k++] = (tk_run){ m[2 * i], m[2 * i + 1], !st->invert };
        at = m[2 * i + 1];
    }
    if (at < n) (*runs)[k++] = (tk_run){ at, n, st->invert };
    free(m);
    *nr = k;
    return 0;
}

/* Apply the delimiter behaviour in place: merged runs grow, removed runs get
 * b = a. Returns the new count. */
static size_t tk_behave(tk_split_behavior bh, tk_run *r, size_t n)
{
    size_t k = 0;
    int prev = 0;
    if (bh == TK_SPLIT_MERGED_NEXT) {          /* a match joins the run after it */
        for (size_t i = n; i-- > 0;) {
            if (r[i].match && !prev && k) r[n - k].a = r[i].a;
            else r[n - ++k] = r[i];
            prev = r[i].match;
        }
        memmove(r, r + n - k, k * sizeof *r);
        return k;
    }
    for (size_t i = 0; i < n; i++) {
        if (bh == TK_SPLIT_MERGED_PREV && r[i].match && !prev && k) r[k - 1].b = r[i].b;
        else if (bh == TK_SPLIT_CONTIGUOUS && k && r[k - 1].match == r[i].match) r[k - 1].b = r[i].b;
        else r[k++] = r[i];
        prev = r[i].match;
    }
    if (bh == TK_SPLIT_REMOVED)
        for (size_t i = 0; i < k; i++) if (r[i].match) r[i].b = r[i].a;
    return k;
}

static int tk_split_piece(const tk_pre *st, tk_split_behavior bh, const char *s, size_t n, int at_start, tk_pieces *out)
{
    tk_run *r = NULL;
    size_t nr = 0;
    if (tk_runs(st, s, n, &r, &nr)) return -1;
    nr = tk_behave(bh, r, nr);
    int rc = 0;
    for (size_t i = 0; i < nr && !rc; i++) rc = tk_pieces_add(out, s + r[i].a, r[i].b - r[i].a, at_start && r[i].a == 0);
    free(r);
    return rc;
}

/* Map every byte to its GPT-2 character, in place over the piece list. */
static int tk_bytes_to_chars(tk_pieces *in, tk_pieces *out)
{
    tk_pieces_clear(out);
    tk_buf w = { 0 };
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        w.n = 0;
        const unsigned char *s = (const unsigned char *)in->bytes.p + in->v[i].off;
        for (size_t k = 0; k < in->v[i].len && !rc; k++) {
            utf8proc_uint8_t enc[4];
            rc = tk_buf_add(&w, enc, (size_t)utf8proc_encode_char(tk_byte_cp[s[k]], enc));
        }
        if (!rc) rc = tk_pieces_add(out, w.p, w.n, in->v[i].at_start);
    }
    free(w.p);
    return rc;
}

static int tk_bytelevel_piece(const tk_pre *st, const char *s, size_t n, int at_start, tk_pieces *out)
{
    tk_buf t = { 0 };
    int rc = 0;
    if (st->add_prefix_space && n && s[0] != ' ') {   /* pieces are never empty here */
        rc = tk_buf_add(&t, " ", 1) || tk_buf_add(&t, s, n);
        s = t.p, n = t.n;
    }
    if (!rc) rc = st->re ? tk_split_piece(st, TK_SPLIT_ISOLATED, s, n, at_start, out) : tk_pieces_add(out, s, n, at_start);
    free(t.p);
    return rc ? -1 : 0;
}

static int tk_metaspace_piece(const tk_pre *st, const char *s, size_t n, int at_start, tk_pieces *out)
{
    tk_buf t = { 0 };
    size_t rl = strlen(st->repl);
    int prepend = (st->scheme == TK_PREPEND_ALWAYS || (st->scheme == TK_PREPEND_FIRST && at_start)) &&
                  !(n >= rl && memcmp(s, st->repl, rl) == 0) && s[0] != ' ';
    int rc = (prepend && tk_buf_add(&t, st->repl, rl)) || tk_replace(NULL, " ", st->repl, s, n, &t);
    if (!rc) {
        tk_pre by_char = { .literal = (char *)st->repl };
        rc = st->split ? tk_split_piece(&by_char, TK_SPLIT_MERGED_NEXT, t.p, t.n, at_start, out)
                       : tk_pieces_add(out, t.p, t.n, at_start);
    }
    free(t.p);
    return rc ? -1 : 0;
}

static int tk_pre_piece(const tk_pre *st, const char *s, size_t n, int at_start, tk_pieces *out)
{
    switch (st->kind) {
    case TK_PRE_SPLIT:     return tk_split_piece(st, st->behavior, s, n, at_start, out);
    case TK_PRE_BYTELEVEL: return tk_bytelevel_piece(st, s, n, at_start, out);
    default:               return tk_metaspace_piece(st, s, n, at_start, out);
    }
}

int tk_pretokenize(const tk_pre *steps, int n_steps, tk_pieces *pieces, tk_pieces *tmp)
{
    tk_bytemap_init();
    for (int k = 0; k < n_steps; k++) {
        tk_pieces_clear(tmp);
        for (size_t i = 0; i < pieces->n; i++)
            if (tk_pre_piece(&steps[k], pieces->bytes.p + pieces->v[i].off, pieces->v[i].len, pieces->v[i].at_start, tmp))
                return -1;
        if (steps[k].kind == TK_PRE_BYTELEVEL) {
            if (tk_bytes_to_chars(tmp, pieces)) return -1;
        } else {
            tk_pieces t = *pieces;
            *pieces = *tmp, *tmp = t;
        }
    }
    return 0;
}

/* ---- decoders ------------------------------------------------------------ */

/* A token list being decoded: owned strings. */
typedef struct { char **v; size_t n, cap; } tk_strs;

static int tk_strs_add(tk_strs *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v) return ar_error("tokenizer: out of memory");
        l->v = v, l->cap = cap;
    }
    char *c = malloc(n + 1);
    if (!c) return ar_error("tokenizer: out of memory");
    memcpy(c, s, n);
    c[n] = 0;
    l->v[l->n++] = c;
    return 0;
}

/* "<0xNN>" → the byte, or -1. */
static int tk_byte_token(const char *t)
{
    if (strlen(t) != 6 || strncmp(t, "<0x", 3) || t[5] != '>') return -1;
    char *end;
    char hex[3] = { t[3], t[4], 0 };
    long v = strtol(hex, &end, 16);
    return *end || hex[0] == '-' || hex[0] == '+' ? -1 : (int)v;
}

/* Flush collected bytes: their text if valid UTF-8, else one U+FFFD per byte. */
static int tk_flush_bytes(tk_buf *bytes, tk_strs *out)
{
    int rc = 0;
    if (!bytes->n) return 0;
    tk_buf fixed = { 0 };
    if (tk_utf8_sanitize(bytes->p, bytes->n, &fixed)) return -1;
    if (fixed.n == bytes->n) rc = tk_strs_add(out, bytes->p, bytes->n);
    else
        for (size_t k = 0; k < bytes->n && !rc; k++) rc = tk_strs_add(out, "\xEF\xBF\xBD", 3);
    free(fixed.p);
    bytes->n = 0;
    return rc;
}

static int tk_dec_bytefallback(const tk_strs *in, tk_strs *out)
{
    tk_buf bytes = { 0 };
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        int b = tk_byte_token(in->v[i]);
        unsigned char c = (unsigned char)b;
        if (b >= 0) rc = tk_buf_add(&bytes, &c, 1);
        else rc = tk_flush_bytes(&bytes, out) || tk_strs_add(out, in->v[i], strlen(in->v[i]));
    }
    if (!rc) rc = tk_flush_bytes(&bytes, out);
    free(bytes.p);
    return rc ? -1 : 0;
}

/* Strip up to `start` leading and `stop` trailing copies of a character. */
static int tk_dec_strip(const tk_dec *d, const char *t, tk_strs *out)
{
    size_t n = strlen(t), cl = strlen(d->a), a = 0, b = n;
    for (int k = 0; k < d->start && b - a >= cl && cl && !memcmp(t + a, d->a, cl); k++) a += cl;
    for (int k = 0; k < d->stop && b - a >= cl && cl && !memcmp(t + b - cl, d->a, cl); k++) b -= cl;
    return tk_strs_add(out, t + a, b - a);
}

/* Metaspace: the replacement becomes a space, except in the first token
 * where it is dropped (unless prepend_scheme is "never"). */
static int tk_dec_metaspace(const tk_dec *d, const char *t, int first, tk_strs *out)
{
    tk_buf b = { 0 };
    const char *with = first && d->scheme != TK_PREPEND_NEVER ? "" : " ";
    int rc = tk_replace(NULL, d->a, with, t, strlen(t), &b) || tk_strs_add(out, b.p ? b.p : "", b.n);
    free(b.p);
    return rc ? -1 : 0;
}

/* Byte-level: map characters back to bytes (a token with a character outside
 * the map contributes its UTF-8 as is), then repair invalid UTF-8. */
static int tk_dec_bytelevel(const tk_strs *in, tk_strs *out)
{
    tk_buf bytes = { 0 }, text = { 0 };
    int rc = 0;
    tk_bytemap_init();
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *t = in->v[i];
        size_t n = strlen(t), start = bytes.n, l;
        for (size_t k = 0; k < n && !rc; k += l) {
            int32_t cp = tk_cp(t + k, n - k, &l);
            if (cp >= 324 || tk_byte_cp[tk_cp_byte[cp]] != cp) {
                bytes.n = start;
                rc = tk_buf_add(&bytes, t, n);
                break;
            }
            rc = tk_buf_add(&bytes, &tk_cp_byte[cp], 1);
        }
    }
    if (!rc) rc = tk_utf8_sanitize(bytes.p ? bytes.p : "", bytes.n, &text) || tk_strs_add(out, text.p ? text.p : "", text.n);
    free(bytes.p), free(text.p);
    return rc ? -1 : 0;
}

static int tk_dec_step(const tk_dec *d, const tk_strs *in, tk_strs *out)
{
    tk_buf fused = { 0 };
    int rc = 0;
    switch (d->kind) {
    case TK_DEC_BYTEFALLBACK: return tk_dec_bytefallback(in, out);
    case TK_DEC_BYTELEVEL:    return tk_dec_bytelevel(in, out);
    case TK_DEC_FUSE:
        for (size_t i = 0; i < in->n && !rc; i++) rc = tk_buf_add(&fused, in->v[i], strlen(in->v[i]));
        if (!rc) rc = tk_strs_add(out, fused.p ? fused.p : "", fused.n);
        free(fused.p);
        return rc;
    default:
        for (size_t i = 0; i < in->n && !rc; i++) {
            if (d->kind == TK_DEC_STRIP) rc = tk_dec_strip(d, in->v[i], out);
            else if (d->kind == TK_DEC_METASPACE) rc = tk_dec_metaspace(d, in->v[i], i == 0, out);
            else {
                tk_buf b = { 0 };
                rc = tk_replace(NULL, d->a, d->b, in->v[i], strlen(in->v[i]), &b) || tk_strs_add(out, b.p ? b.p : "", b.n);
                free(b.p);
            }
        }
        return rc ? -1 : 0;
    }
}

static void tk_strs_free(tk_strs *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
}

int tk_decode_chain(const tk_dec *decs, int n_decs, char ***toks, size_t *n, tk_buf *out)
{
    tk_strs cur = { *toks, *n, *n };
    for (int k = 0; k < n_decs; k++) {
        tk_strs next = { 0 };
        if (tk_dec_step(&decs[k], &cur, &next)) {
            tk_strs_free(&next);
            *toks = cur.v, *n = cur.n;
            return -1;
        }
        tk_strs_free(&cur);
        cur = next;
    }
    *toks = cur.v, *n = cur.n;
    int rc = tk_buf_add(out, "", 0);
    for (size_t i = 0; i < cur.n && !rc; i++) rc = tk_buf_add(out, cur.v[i], strlen(cur.v[i]));
    return rc;
}
