/* chat_template.c — the Jinja2 subset of chat_template.h: a lexer that applies
 * Jinja's whitespace rules, a recursive-descent parser to a small tree, and a
 * tree-walking evaluator over arena-allocated values. Errors unwind with
 * longjmp; everything a render allocates lives in its arena. */
#include "chat_template.h"
#include "error.h"
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---------------------------------------------------------------- */

typedef struct ablock { struct ablock *next; size_t used, cap; char data[]; } ablock;
typedef struct { ablock *head; } arena;

static void *arena_alloc_raw(arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        ablock *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head, b->used = 0, b->cap = cap;
        a->head = b;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

static void arena_free(arena *a)
{
    for (ablock *b = a->head, *nx; b; b = nx) nx = b->next, free(b);
    a->head = NULL;
}

/* ---- values --------------------------------------------------------------- */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT } vtype;

typedef struct val val;
struct val {
    vtype t;
    int ns;             /* a namespace(): attributes may be set */
    long long i;        /* bool, int */
    double f;
    const char *s;      /* str: bytes (NUL-terminated) */
    size_t n;
    val **it;           /* list items, dict values */
    const char **keys;  /* dict keys (insertion order) */
    int len, cap;
};

/* ---- tree ----------------------------------------------------------------- */

enum { E_LIT, E_VAR, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NOT, E_NEG, E_POS, E_BIN, E_COND, E_LIST, E_DICT };
enum { OP_OR, OP_AND, OP_EQ, OP_NE, OP_LT, OP_GT, OP_LE, OP_GE, OP_IN, OP_NOTIN, OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_CAT };

typedef struct expr expr;
struct expr {
    int k, op, neg, line, nargs;
    val *lit;
    const char *name;
    expr *a, *b, *c, *d;
    expr **args;
    const char **kw; /* kw[i] non-NULL: args[i] is a keyword argument */
};

enum { N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_BREAK, N_CONTINUE, N_BODY };

typedef struct node node;
typedef struct { node **v; int n, cap; } nlist;
struct node {
    int k, line;
    const char *text; size_t n;    /* N_TEXT */
    expr *e;                        /* N_OUT, N_SET value, N_FOR iterable */
    expr **conds; nlist *bodies; int nbr; /* N_IF: nbr branches; conds[i] NULL = else */
    const char *var1, *var2;        /* N_FOR targets, N_SET name */
    const char *attr;               /* N_SET ns.attr */
    expr *filter;                   /* N_FOR ... if cond */
    nlist body, els;                /* N_FOR, N_SETBLOCK, N_BODY */
};

struct ar_chat_template {
    arena ar;
    char *name;
    nlist root;
    int nvars;
    char *var_names[8], *var_vals[8];
};

/* ---- errors --------------------------------------------------------------- */

typedef struct {
    jmp_buf jb;
    const char *name;
    int kind; /* -1 failure, AR_CHAT_RAISED */
} errctx;

static void fail_at(errctx *E, int kind, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 4, 5)));
static void fail_at(errctx *E, int kind, int line, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0) ar_error("%s:%d: %s", E->name, line, msg);
    else ar_error("%s: %s", E->name, msg);
    E->kind = kind;
    longjmp(E->jb, 1);
}

/* ---- lexer: source to segments -------------------------------------------- */

enum { S_TEXT, S_VAR, S_BLOCK };
typedef struct { int k, line; const char *s; size_t n; } seg;

typedef struct {
    errctx *E;
    arena *ar;
    seg *v; int n, cap;
} segs;

static void seg_push(segs *S, int k, int line, const char *s, size_t n)
{
    if (S->n == S->cap) {
        int cap = S->cap ? S->cap * 2 : 64;
        seg *nv = realloc(S->v, cap * sizeof *nv);
        if (!nv) fail_at(S->E, -1, 0, "out of memory");
        S->v = nv, S->cap = cap;
    }
    S->v[S->n++] = (seg){k, line, s, n};
}

static int count_lines(const char *s, const char *e)
{
    int n = 0;
    for (; s < e; s++) n += *s == '\n';
    return n;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Find the end of a {{ or {% tag starting at p (after the opener), skipping
 * string literals and bracketed parts; returns a pointer to the closing
 * "}}" / "%}" or NULL. */
static const char *tag_end(const char *p, const char *end, char close)
{
    int depth = 0; /* open brackets: "}}" inside {...} does not end the tag, as in Jinja's lexer */
    while (p + 1 < end) {
        if (*p == '"' || *p == '\'') {
            char q = *p++;
            while (p < end && *p != q) p += (*p == '\\' && p + 1 < end) ? 2 : 1;
            if (p >= end) return NULL;
            p++;
            continue;
        }
        if (depth == 0 && p[0] == close && p[1] == '}') return p;
        if (*p == '(' || *p == '[' || *p == '{') depth++;
        else if ((*p == ')' || *p == ']' || *p == '}') && depth > 0) depth--;
        p++;
    }
    return NULL;
}

static void lex(segs *S, const char *src, size_t len)
{
    const char *p = src, *end = src + len;
    int line = 1;
    while (p < end) {
        const char *q = p;
        while (q + 1 < end && !(q[0] == '{' && (q[1] == '{' || q[1] == '%' || q[1] == '#'))) q++;
        if (q + 1 >= end) q = end;
        /* text p..q */
        const char *ts = p, *te = q;
        if (q < end) {
            char kind = q[1];
            char mark = q + 2 < end ? q[2] : 0;
            if (mark == '-') {
                while (te > ts && is_ws(te[-1])) te--;
            } else if (kind != '{' && mark != '+') { /* lstrip_blocks */
                const char *l = te;
                while (l > ts && (l[-1] == ' ' || l[-1] == '\t' || l[-1] == '\r' || l[-1] == '\f' || l[-1] == '\v')) l--;
                if ((l > ts && l[-1] == '\n') || (l == ts && (ts == src || ts[-1] == '\n'))) te = l;
            }
        }
        if (te > ts) seg_push(S, S_TEXT, line, ts, (size_t)(te - ts));
        line += count_lines(p, q);
        if (q >= end) break;
        char kind = q[1];
        const char *b = q + 2;
        if (b < end && (*b == '-' || *b == '+')) b++;
        const char *c;
        if (kind == '#') {
            c = b;
            while (c + 1 < end && !(c[0] == '#' && c[1] == '}')) c++;
            if (c + 1 >= end) fail_at(S->E, -1, line, "unclosed comment");
        } else {
            c = tag_end(b, end, kind == '{' ? '}' : '%');
            if (!c) fail_at(S->E, -1, line, "unclosed %s", kind == '{' ? "{{" : "{%");
        }
        const char *ce = c; /* content end */
        int strip_after = 0, no_trim = 0;
        if (ce > b && ce[-1] == '-') strip_after = 1, ce--;
        else if (ce > b && ce[-1] == '+') no_trim = 1, ce--;
        if (kind != '#') seg_push(S, kind == '{' ? S_VAR : S_BLOCK, line, b, (size_t)(ce - b));
        line += count_lines(q, c + 2);
        p = c + 2;
        if (strip_after) {
            while (p < end && is_ws(*p)) line += *p++ == '\n';
        } else if (kind != '{' && !no_trim && p < end && *p == '\n') {
            p++, line++;
        }
    }
}

/* ---- expression tokens ---------------------------------------------------- */

enum { T_END, T_NAME, T_STR, T_INT, T_FLOAT, T_OP };
typedef struct { int k; const char *s; size_t n; long long i; double f; } tok;

typedef struct {
    errctx *E;
    arena *ar;
    int line, depth;
    tok *t; int n, pos;
} tparser;

/* Nesting beyond this is refused (Jinja2 would hit Python's recursion limit). */
enum { MAX_NEST = 200 };

static void *xalloc(tparser *P, size_t n)
{
    void *p = arena_alloc_raw(P->ar, n);
    if (!p) fail_at(P->E, -1, P->line, "out of memory");
    return p;
}

static int utf8_put(char *o, unsigned long cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* A string literal's value: Python's unicode-escape decoding. */
static const char *unescape(tparser *P, const char *s, size_t n, size_t *outn)
{
    char *o = xalloc(P, n + 1), *w = o;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) { *w++ = s[i]; continue; }
        char c = s[++i];
        int hex = 0;
        switch (c) {
        case 'n': *w++ = '\n'; break;
        case 't': *w++ = '\t'; break;
        case 'r': *w++ = '\r'; break;
        case '\\': *w++ = '\\'; break;
        case '\'': *w++ = '\''; break;
        case '"': *w++ = '"'; break;
        case 'a': *w++ = '\a'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'v': *w++ = '\v'; break;
        case '\n': break;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        default:
            if (c >= '0' && c <= '7') {
                unsigned long cp = 0;
                int k = 0;
                for (; k < 3 && i < n && s[i] >= '0' && s[i] <= '7'; k++) cp = cp * 8 + (unsigned long)(s[i++] - '0');
                i--;
                w += utf8_put(w, cp);
            } else {
                *w++ = '\\', *w++ = c;
            }
        }
        if (hex) {
            unsigned long cp = 0;
            for (int k = 0; k < hex; k++) {
                char h = i + 1 + k < n ? s[i + 1 + k] : 0;
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (d < 0) fail_at(P->E, -1, P->line, "malformed \\%c escape in a string literal", c);
                cp = cp * 16 + (unsigned long)d;
            }
            i += (size_t)hex;
            w += utf8_put(w, cp);
        }
    }
    *w = 0;
    *outn = (size_t)(w - o);
    return o;
}

static void tokenize(tparser *P, const char *s, size_t n)
{
    int cap = 16;
    P->t = xalloc(P, sizeof(tok) * (size_t)cap);
    P->n = 0, P->pos = 0;
    size_t i = 0;
    for (;;) {
        while (i < n && is_ws(s[i])) i++;
        if (P->n + 1 >= cap) {
            tok *nt = xalloc(P, sizeof(tok) * (size_t)cap * 2);
            memcpy(nt, P->t, sizeof(tok) * (size_t)cap);
            P->t = nt, cap *= 2;
        }
        tok *t = &P->t[P->n];
        memset(t, 0, sizeof *t);
        if (i >= n) { t->k = T_END; P->n++; return; }
        char c = s[i];
        if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            size_t j = i;
            while (j < n && (s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') || (s[j] >= '0' && s[j] <= '9'))) j++;
            char *nm = xalloc(P, j - i + 1);
            memcpy(nm, s + i, j - i);
            t->k = T_NAME, t->s = nm, t->n = j - i;
            i = j;
        } else if (c >= '0' && c <= '9') {
            size_t j = i;
            int fl = 0;
            while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_')) j++;
            if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                fl = 1, j++;
                while (j < n && s[j] >= '0' && s[j] <= '9') j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && s[k] >= '0' && s[k] <= '9') {
                    fl = 1, j = k;
                    while (j < n && s[j] >= '0' && s[j] <= '9') j++;
                }
            }
            char buf[64];
            size_t m = 0;
            for (size_t k = i; k < j && m < sizeof buf - 1; k++) if (s[k] != '_') buf[m++] = s[k];
            buf[m] = 0;
            if (fl) t->k = T_FLOAT, t->f = strtod(buf, NULL);
            else t->k = T_INT, t->i = strtoll(buf, NULL, 10);
            i = j;
        } else if (c == '"' || c == '\'') {
            size_t j = i + 1;
            while (j < n && s[j] != c) j += (s[j] == '\\' && j + 1 < n) ? 2 : 1;
            if (j >= n) fail_at(P->E, -1, P->line, "unterminated string literal");
            t->k = T_STR;
            t->s = unescape(P, s + i + 1, j - i - 1, &t->n);
            i = j + 1;
        } else {
            static const char *ops[] = {"**", "//", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",", ".", ":",
                                        "|", "~", "+", "-", "*", "/", "%", "<", ">", "=", NULL};
            int k;
            for (k = 0; ops[k]; k++) {
                size_t l = strlen(ops[k]);
                if (i + l <= n && !memcmp(s + i, ops[k], l)) break;
            }
            if (!ops[k]) fail_at(P->E, -1, P->line, "unexpected character '%c'", c);
            t->k = T_OP, t->s = ops[k], t->n = strlen(ops[k]);
            i += t->n;
        }
        P->n++;
    }
}

static tok *peek(tparser *P) { return &P->t[P->pos]; }
static int is_op(tparser *P, const char *op) { tok *t = peek(P); return t->k == T_OP && !strcmp(t->s, op); }
static int is_name(tparser *P, const char *nm) { tok *t = peek(P); return t->k == T_NAME && !strcmp(t->s, nm); }
static int is_name_at(tparser *P, int off, const char *nm)
{
    if (P->pos + off >= P->n) return 0;
    tok *t = &P->t[P->pos + off];
    return t->k == T_NAME && !strcmp(t->s, nm);
}

static const char *tok_desc(tok *t)
{
    switch (t->k) {
    case T_END: return "end of tag";
    case T_NAME: case T_OP: return t->s;
    case T_STR: return "a string";
    default: return "a number";
    }
}

static void expect_op(tparser *P, const char *op)
{
    if (!is_op(P, op)) fail_at(P->E, -1, P->line, "expected '%s', found '%s'", op, tok_desc(peek(P)));
    P->pos++;
}

static const char *expect_name(tparser *P)
{
    tok *t = peek(P);
    if (t->k != T_NAME) fail_at(P->E, -1, P->line, "expected a name, found '%s'", tok_desc(t));
    P->pos++;
    return t->s;
}

static expr *mk(tparser *P, int k)
{
    expr *e = xalloc(P, sizeof *e);
    e->k = k, e->line = P->line;
    return e;
}

static val *mkval(tparser *P, vtype t)
{
    val *v = xalloc(P, sizeof *v);
    v->t = t;
    return v;
}

static expr *parse_expr(tparser *P);
static expr *parse_or(tparser *P);
static expr *parse_unary(tparser *P, int with_filter);
static expr *parse_primary(tparser *P);

static const char *const FILTERS[] = {"trim", "length", "count", "tojson", "upper", "lower", "default", "d", "items",
                                      "join", "list", "first", "last", "string", "reject", "select", "rejectattr",
                                      "selectattr", "replace", "safe", "map", NULL};
static const char *const TESTS[] = {"defined", "undefined", "none", "string", "number", "integer", "float",
                                    "boolean", "true", "false", "mapping", "iterable", "sequence", "equalto", "eq",
                                    "ne", "odd", "even", "in", NULL};

static int in_list(const char *const *l, const char *s)
{
    for (; *l; l++) if (!strcmp(*l, s)) return 1;
    return 0;
}

/* (args...) after the '(' has been seen; keyword arguments name=value. */
static void parse_args(tparser *P, expr *e)
{
    expect_op(P, "(");
    int cap = 4;
    e->args = xalloc(P, sizeof(expr *) * (size_t)cap);
    e->kw = xalloc(P, sizeof(char *) * (size_t)cap);
    while (!is_op(P, ")")) {
        if (e->nargs == cap) {
            expr **na = xalloc(P, sizeof(expr *) * (size_t)cap * 2);
            const char **nk = xalloc(P, sizeof(char *) * (size_t)cap * 2);
            memcpy(na, e->args, sizeof(expr *) * (size_t)cap);
            memcpy(nk, e->kw, sizeof(char *) * (size_t)cap);
            e->args = na, e->kw = nk, cap *= 2;
        }
        if (peek(P)->k == T_NAME && P->pos + 1 < P->n && P->t[P->pos + 1].k == T_OP && !strcmp(P->t[P->pos + 1].s, "=")) {
            e->kw[e->nargs] = peek(P)->s;
            P->pos += 2;
        }
        e->args[e->nargs++] = parse_expr(P);
        if (!is_op(P, ",")) break;
        P->pos++;
    }
    expect_op(P, ")");
}

static expr *parse_postfix(tparser *P, expr *e)
{
    for (;;) {
        if (is_op(P, ".")) {
            P->pos++;
            tok *t = peek(P);
            if (t->k == T_INT) {
                expr *x = mk(P, E_ITEM);
                x->a = e;
                x->b = mk(P, E_LIT);
                x->b->lit = mkval(P, V_INT);
                x->b->lit->i = t->i;
                P->pos++;
                e = x;
                continue;
            }
            expr *x = mk(P, E_ATTR);
            x->a = e, x->name = expect_name(P);
            e = x;
        } else if (is_op(P, "[")) {
            P->pos++;
            expr *lo = NULL, *hi = NULL, *st = NULL;
            if (!is_op(P, ":")) lo = parse_expr(P);
            if (is_op(P, ":")) {
                P->pos++;
                if (!is_op(P, "]") && !is_op(P, ":")) hi = parse_expr(P);
                if (is_op(P, ":")) {
                    P->pos++;
                    if (!is_op(P, "]")) st = parse_expr(P);
                }
                expr *x = mk(P, E_SLICE);
                x->a = e, x->b = lo, x->c = hi, x->d = st;
                e = x;
            } else {
                expr *x = mk(P, E_ITEM);
                x->a = e, x->b = lo;
                e = x;
            }
            expect_op(P, "]");
        } else if (is_op(P, "(")) {
            expr *x = mk(P, E_CALL);
            x->a = e;
            if (e->k == E_VAR) {
                static const char *const fns[] = {"raise_exception", "namespace", "range", NULL};
                if (!in_list(fns, e->name)) fail_at(P->E, -1, P->line, "unsupported function '%s'", e->name);
            } else if (e->k != E_ATTR) {
                fail_at(P->E, -1, P->line, "unsupported call of an expression");
            }
            parse_args(P, x);
            e = x;
        } else {
            return e;
        }
    }
}

static expr *parse_filters(tparser *P, expr *e)
{
    for (;;) {
        if (is_op(P, "|")) {
            P->pos++;
            expr *x = mk(P, E_FILTER);
            x->a = e, x->name = expect_name(P);
            if (!in_list(FILTERS, x->name)) fail_at(P->E, -1, P->line, "unsupported filter '%s'", x->name);
            if (is_op(P, "(")) parse_args(P, x);
            e = x;
        } else if (is_name(P, "is")) {
            P->pos++;
            expr *x = mk(P, E_TEST);
            x->a = e;
            if (is_name(P, "not")) x->neg = 1, P->pos++;
            x->name = expect_name(P);
            if (!in_list(TESTS, x->name)) fail_at(P->E, -1, P->line, "unsupported test '%s'", x->name);
            if (is_op(P, "(")) parse_args(P, x);
            else {
                tok *t = peek(P);
                int arg = t->k == T_STR || t->k == T_INT || t->k == T_FLOAT || is_op(P, "[") || is_op(P, "{") ||
                          (t->k == T_NAME && strcmp(t->s, "and") && strcmp(t->s, "or") && strcmp(t->s, "else") &&
                           strcmp(t->s, "if") && strcmp(t->s, "in") && strcmp(t->s, "not") && strcmp(t->s, "is"));
                if (arg) {
                    x->args = xalloc(P, sizeof(expr *));
                    x->kw = xalloc(P, sizeof(char *));
                    x->args[0] = parse_postfix(P, parse_primary(P));
                    x->nargs = 1;
                }
            }
            e = x;
        } else {
            return e;
        }
    }
}

static expr *parse_primary(tparser *P)
{
    tok *t = peek(P);
    expr *e;
    switch (t->k) {
    case T_NAME:
        P->pos++;
        e = mk(P, E_LIT);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) e->lit = mkval(P, V_BOOL), e->lit->i = 1;
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) e->lit = mkval(P, V_BOOL);
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) e->lit = mkval(P, V_NONE);
        else e->k = E_VAR, e->name = t->s;
        return e;
    case T_STR: {
        P->pos++;
        e = mk(P, E_LIT);
        e->lit = mkval(P, V_STR);
        e->lit->s = t->s, e->lit->n = t->n;
        while (peek(P)->k == T_STR) { /* adjacent literals concatenate */
            tok *u = peek(P);
            char *c = xalloc(P, e->lit->n + u->n + 1);
            memcpy(c, e->lit->s, e->lit->n);
            memcpy(c + e->lit->n, u->s, u->n);
            e->lit->s = c, e->lit->n += u->n;
            P->pos++;
        }
        return e;
    }
    case T_INT: case T_FLOAT:
        P->pos++;
        e = mk(P, E_LIT);
        e->lit = mkval(P, t->k == T_INT ? V_INT : V_FLOAT);
        e->lit->i = t->i, e->lit->f = t->f;
        return e;
    case T_OP:
        if (!strcmp(t->s, "(")) {
            P->pos++;
            if (is_op(P, ")")) fail_at(P->E, -1, P->line, "unsupported construct: empty tuple");
            e = parse_expr(P);
            if (is_op(P, ",")) { /* a tuple: evaluated as a list */
                expr *l = mk(P, E_LIST);
                int cap = 8;
                l->args = xalloc(P, sizeof(expr *) * (size_t)cap);
                l->args[l->nargs++] = e;
                while (is_op(P, ",")) {
                    P->pos++;
                    if (is_op(P, ")")) break;
                    if (l->nargs == cap) {
                        expr **na = xalloc(P, sizeof(expr *) * (size_t)cap * 2);
                        memcpy(na, l->args, sizeof(expr *) * (size_t)cap);
                        l->args = na, cap *= 2;
                    }
                    l->args[l->nargs++] = parse_expr(P);
                }
                e = l;
            }
            expect_op(P, ")");
            return e;
        }
        if (!strcmp(t->s, "[") || !strcmp(t->s, "{")) {
            int dict = t->s[0] == '{';
            const char *close = dict ? "}" : "]";
            P->pos++;
            e = mk(P, dict ? E_DICT : E_LIST);
            int cap = 8;
            e->args = xalloc(P, sizeof(expr *) * (size_t)cap);
            while (!is_op(P, close)) {
                if (e->nargs + 2 > cap) {
                    expr **na = xalloc(P, sizeof(expr *) * (size_t)cap * 2);
                    memcpy(na, e->args, sizeof(expr *) * (size_t)cap);
                    e->args = na, cap *= 2;
                }
                e->args[e->nargs++] = parse_expr(P);
                if (dict) {
                    expect_op(P, ":");
                    e->args[e->nargs++] = parse_expr(P);
                }
                if (!is_op(P, ",")) break;
                P->pos++;
            }
            expect_op(P, close);
            return e;
        }
        break;
    default: break;
    }
    fail_at(P->E, -1, P->line, "unexpected '%s' in an expression", tok_desc(t));
}

static expr *bin(tparser *P, int op, expr *a, expr *b)
{
    expr *e = mk(P, E_BIN);
    e->op = op, e->a = a, e->b = b;
    return e;
}

static expr *parse_unary(tparser *P, int with_filter)
{
    expr *e;
    if (is_op(P, "-") || is_op(P, "+")) {
        int neg = is_op(P, "-");
        P->pos++;
        if (++P->depth > MAX_NEST) fail_at(P->E, -1, P->line, "expression nested more than %d deep", MAX_NEST);
        e = mk(P, neg ? E_NEG : E_POS);
        e->a = parse_unary(P, 0);
        P->depth--;
    } else {
        e = parse_postfix(P, parse_primary(P));
    }
    return with_filter ? parse_filters(P, e) : e;
}

static expr *parse_pow(tparser *P)
{
    expr *e = parse_unary(P, 1);
    while (is_op(P, "**")) { P->pos++; e = bin(P, OP_POW, e, parse_unary(P, 1)); }
    return e;
}

static expr *parse_math2(tparser *P)
{
    expr *e = parse_pow(P);
    for (;;) {
        int op = is_op(P, "*") ? OP_MUL : is_op(P, "/") ? OP_DIV : is_op(P, "//") ? OP_FDIV : is_op(P, "%") ? OP_MOD : -1;
        if (op < 0) return e;
        P->pos++;
        e = bin(P, op, e, parse_pow(P));
    }
}

static expr *parse_concat(tparser *P)
{
    expr *e = parse_math2(P);
    while (is_op(P, "~")) { P->pos++; e = bin(P, OP_CAT, e, parse_math2(P)); }
    return e;
}

static expr *parse_math1(tparser *P)
{
    expr *e = parse_concat(P);
    for (;;) {
        int op = is_op(P, "+") ? OP_ADD : is_op(P, "-") ? OP_SUB : -1;
        if (op < 0) return e;
        P->pos++;
        e = bin(P, op, e, parse_concat(P));
    }
}

static expr *parse_compare(tparser *P)
{
    expr *e = parse_math1(P);
    for (;;) {
        int op = is_op(P, "==") ? OP_EQ : is_op(P, "!=") ? OP_NE : is_op(P, "<") ? OP_LT : is_op(P, ">") ? OP_GT
               : is_op(P, "<=") ? OP_LE : is_op(P, ">=") ? OP_GE : is_name(P, "in") ? OP_IN : -1;
        if (op < 0 && is_name(P, "not") && is_name_at(P, 1, "in")) op = OP_NOTIN, P->pos++;
        if (op < 0) return e;
        P->pos++;
        e = bin(P, op, e, parse_math1(P));
    }
}

static expr *parse_not(tparser *P)
{
    if (is_name(P, "not")) {
        P->pos++;
        if (++P->depth > MAX_NEST) fail_at(P->E, -1, P->line, "expression nested more than %d deep", MAX_NEST);
        expr *e = mk(P, E_NOT);
        e->a = parse_not(P);
        P->depth--;
        return e;
    }
    return parse_compare(P);
}

static expr *parse_and(tparser *P)
{
    expr *e = parse_not(P);
    while (is_name(P, "and")) { P->pos++; e = bin(P, OP_AND, e, parse_not(P)); }
    return e;
}

static expr *parse_or(tparser *P)
{
    expr *e = parse_and(P);
    while (is_name(P, "or")) { P->pos++; e = bin(P, OP_OR, e, parse_and(P)); }
    return e;
}

static expr *parse_expr(tparser *P)
{
    if (++P->depth > MAX_NEST) fail_at(P->E, -1, P->line, "expression nested more than %d deep", MAX_NEST);
    expr *e = parse_or(P);
    while (is_name(P, "if")) {
        P->pos++;
        expr *c = mk(P, E_COND);
        c->a = parse_or(P);
        c->b = e;
        if (is_name(P, "else")) { P->pos++; c->c = parse_expr(P); }
        e = c;
    }
    P->depth--;
    return e;
}

static void expect_end(tparser *P)
{
    if (peek(P)->k != T_END) fail_at(P->E, -1, P->line, "unexpected '%s'", tok_desc(peek(P)));
}

/* ---- statements ----------------------------------------------------------- */

typedef struct {
    errctx *E;
    arena *ar;
    segs *S;
    int pos, depth;
} sparser;

static void nl_push(sparser *SP, nlist *l, node *n)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        node **nv = arena_alloc_raw(SP->ar, sizeof(node *) * (size_t)cap);
        if (!nv) fail_at(SP->E, -1, 0, "out of memory");
        if (l->n) memcpy(nv, l->v, sizeof(node *) * (size_t)l->n);
        l->v = nv, l->cap = cap;
    }
    l->v[l->n++] = n;
}

static node *mknode(sparser *SP, int k, int line)
{
    node *n = arena_alloc_raw(SP->ar, sizeof *n);
    if (!n) fail_at(SP->E, -1, line, "out of memory");
    n->k = k, n->line = line;
    return n;
}

static void tp_init(sparser *SP, tparser *P, seg *s)
{
    P->E = SP->E, P->ar = SP->ar, P->line = s->line, P->depth = 0;
    tokenize(P, s->s, s->n);
}

/* Parse nodes until a block tag whose keyword is in stops; returns the index
 * of that keyword (the tag is consumed, its parser left in *P) or -1 at the
 * end of the template. */
static int parse_body(sparser *SP, nlist *out, const char *const *stops, tparser *P);

static const char *block_kw(sparser *SP, seg *s, tparser *P)
{
    tp_init(SP, P, s);
    if (peek(P)->k != T_NAME) fail_at(SP->E, -1, s->line, "expected a statement name after {%%");
    return peek(P)->s;
}

static void parse_stmt_in(sparser *SP, nlist *out, seg *s, tparser *P, const char *kw);

static void parse_stmt(sparser *SP, nlist *out, seg *s, tparser *P, const char *kw)
{
    if (++SP->depth > MAX_NEST) fail_at(SP->E, -1, s->line, "statements nested more than %d deep", MAX_NEST);
    parse_stmt_in(SP, out, s, P, kw);
    SP->depth--;
}

static void parse_stmt_in(sparser *SP, nlist *out, seg *s, tparser *P, const char *kw)
{
    P->pos++;
    if (!strcmp(kw, "if")) {
        node *n = mknode(SP, N_IF, s->line);
        int cap = 8;
        n->conds = arena_alloc_raw(SP->ar, sizeof(expr *) * (size_t)cap);
        n->bodies = arena_alloc_raw(SP->ar, sizeof(nlist) * (size_t)cap);
        expr *cond = parse_expr(P);
        expect_end(P);
        for (;;) {
            if (n->nbr == cap) {
                expr **nc = arena_alloc_raw(SP->ar, sizeof(expr *) * (size_t)cap * 2);
                nlist *nb = arena_alloc_raw(SP->ar, sizeof(nlist) * (size_t)cap * 2);
                memcpy(nc, n->conds, sizeof(expr *) * (size_t)cap);
                memcpy(nb, n->bodies, sizeof(nlist) * (size_t)cap);
                n->conds = nc, n->bodies = nb, cap *= 2;
            }
            n->conds[n->nbr] = cond;
            static const char *const stops[] = {"elif", "else", "endif", NULL};
            tparser Q;
            int which = parse_body(SP, &n->bodies[n->nbr++], stops, &Q);
            if (which < 0) fail_at(SP->E, -1, s->line, "'if' without 'endif'");
            if (which == 2) { expect_end(&Q); break; }
            if (which == 0) { cond = parse_expr(&Q); expect_end(&Q); continue; }
            expect_end(&Q);
            if (!cond) fail_at(SP->E, -1, Q.line, "a second 'else' in one 'if'");
            cond = NULL;
        }
        nl_push(SP, out, n);
    } else if (!strcmp(kw, "for")) {
        node *n = mknode(SP, N_FOR, s->line);
        n->var1 = expect_name(P);
        if (is_op(P, ",")) { P->pos++; n->var2 = expect_name(P); }
        if (is_op(P, ",")) fail_at(SP->E, -1, s->line, "unsupported construct: unpacking into more than two names");
        if (!is_name(P, "in")) fail_at(SP->E, -1, s->line, "expected 'in' in 'for'");
        P->pos++;
        n->e = parse_or(P); /* "if" here is the loop filter, not an inline if */
        if (is_name(P, "if")) { P->pos++; n->filter = parse_or(P); }
        if (is_name(P, "recursive")) fail_at(SP->E, -1, s->line, "unsupported construct: recursive loop");
        expect_end(P);
        static const char *const stops[] = {"else", "endfor", NULL};
        tparser Q;
        int which = parse_body(SP, &n->body, stops, &Q);
        if (which < 0) fail_at(SP->E, -1, s->line, "'for' without 'endfor'");
        expect_end(&Q);
        if (which == 0) {
            static const char *const stops2[] = {"endfor", NULL};
            if (parse_body(SP, &n->els, stops2, &Q) < 0) fail_at(SP->E, -1, s->line, "'for' without 'endfor'");
            expect_end(&Q);
        }
        nl_push(SP, out, n);
    } else if (!strcmp(kw, "set")) {
        node *n = mknode(SP, N_SET, s->line);
        n->var1 = expect_name(P);
        if (is_op(P, ".")) { P->pos++; n->attr = expect_name(P); }
        if (is_op(P, ",")) fail_at(SP->E, -1, s->line, "unsupported construct: set with several names");
        if (is_op(P, "=")) {
            P->pos++;
            n->e = parse_expr(P);
            expect_end(P);
        } else {
            expect_end(P);
            if (n->attr) fail_at(SP->E, -1, s->line, "unsupported construct: block set of an attribute");
            n->k = N_SETBLOCK;
            static const char *const stops[] = {"endset", NULL};
            tparser Q;
            if (parse_body(SP, &n->body, stops, &Q) < 0) fail_at(SP->E, -1, s->line, "'set' without 'endset'");
            expect_end(&Q);
        }
        nl_push(SP, out, n);
    } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
        expect_end(P);
        nl_push(SP, out, mknode(SP, kw[0] == 'b' ? N_BREAK : N_CONTINUE, s->line));
    } else if (!strcmp(kw, "generation")) { /* transformers' AssistantTracker: the body as is */
        expect_end(P);
        node *n = mknode(SP, N_BODY, s->line);
        static const char *const stops[] = {"endgeneration", NULL};
        tparser Q;
        if (parse_body(SP, &n->body, stops, &Q) < 0) fail_at(SP->E, -1, s->line, "'generation' without 'endgeneration'");
        expect_end(&Q);
        nl_push(SP, out, n);
    } else {
        fail_at(SP->E, -1, s->line, "unsupported statement '%s'", kw);
    }
}

static int parse_body(sparser *SP, nlist *out, const char *const *stops, tparser *P)
{
    while (SP->pos < SP->S->n) {
        seg *s = &SP->S->v[SP->pos++];
        if (s->k == S_TEXT) {
            node *n = mknode(SP, N_TEXT, s->line);
            n->text = s->s, n->n = s->n;
            nl_push(SP, out, n);
        } else if (s->k == S_VAR) {
            node *n = mknode(SP, N_OUT, s->line);
            tparser Q;
            tp_init(SP, &Q, s);
            n->e = parse_expr(&Q);
            expect_end(&Q);
            nl_push(SP, out, n);
        } else {
            const char *kw = block_kw(SP, s, P);
            if (stops)
                for (int i = 0; stops[i]; i++)
                    if (!strcmp(kw, stops[i])) { P->pos++; return i; }
            static const char *const closers[] = {"elif", "else", "endif", "endfor", "endset", "endgeneration", NULL};
            if (in_list(closers, kw)) fail_at(SP->E, -1, s->line, "unexpected '%s'", kw);
            parse_stmt(SP, out, s, P, kw);
        }
    }
    return -1;
}

/* ---- template objects ----------------------------------------------------- */

/* Lex and parse src[0..m) into t->root; 0, or -1 with ar_error. */
static int parse_into(ar_chat_template *t, const char *src, size_t m)
{
    errctx E = {.name = t->name, .kind = -1};
    segs *S = calloc(1, sizeof *S);
    if (!S) return ar_error("%s: out of memory", t->name);
    S->E = &E, S->ar = &t->ar;
    if (setjmp(E.jb)) {
        free(S->v);
        free(S);
        return -1;
    }
    lex(S, src, m);
    sparser SP = {&E, &t->ar, S, 0, 0};
    tparser P;
    parse_body(&SP, &t->root, NULL, &P);
    free(S->v);
    free(S);
    return 0;
}

ar_chat_template *ar_chat_template_parse(const char *src, size_t len, const char *name)
{
    ar_chat_template *t = calloc(1, sizeof *t);
    char *norm = malloc(len + 1);
    if (!t || !norm || !(t->name = strdup(name ? name : "chat template"))) {
        free(norm);
        if (t) free(t->name);
        free(t);
        ar_error("%s: out of memory", name);
        return NULL;
    }
    /* newlines as Jinja normalizes them (\r\n and \r to \n), then one
     * trailing newline dropped (keep_trailing_newline off) */
    size_t m = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') { norm[m++] = '\n'; if (i + 1 < len && src[i + 1] == '\n') i++; }
        else norm[m++] = src[i];
    }
    if (m && norm[m - 1] == '\n') m--;
    norm[m] = 0;
    char *kept = arena_alloc_raw(&t->ar, m + 1);
    if (kept) memcpy(kept, norm, m + 1);
    free(norm);
    if (!kept || parse_into(t, kept, m)) {
        if (!kept) ar_error("%s: out of memory", name);
        ar_chat_template_free(t);
        return NULL;
    }
    return t;
}

void ar_chat_template_free(ar_chat_template *t)
{
    if (!t) return;
    arena_free(&t->ar);
    for (int i = 0; i < t->nvars; i++) free(t->var_names[i]), free(t->var_vals[i]);
    free(t->name);
    free(t);
}

int ar_chat_template_set_var(ar_chat_template *t, const char *name, const char *value)
{
    int i;
    for (i = 0; i < t->nvars && strcmp(t->var_names[i], name); i++) {}
    if (i == (int)(sizeof t->var_names / sizeof *t->var_names)) return ar_error("%s: too many variables", t->name);
    char *v = strdup(value);
    if (!v) return ar_error("%s: out of memory", t->name);
    if (i == t->nvars) {
        if (!(t->var_names[i] = strdup(name))) { free(v); return ar_error("%s: out of memory", t->name); }
        t->nvars++;
    } else {
        free(t->var_vals[i]);
    }
    t->var_vals[i] = v;
    return 0;
}

/* A special token entry of tokenizer_config.json: a string or {"content"}. */
static const char *token_str(const cJSON *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

ar_chat_template *ar_chat_template_load(const char *model_dir)
{
    size_t pl = strlen(model_dir) + sizeof "/tokenizer_config.json";
    char *path = malloc(pl);
    if (!path) { ar_error("%s: out of memory", model_dir); return NULL; }
    snprintf(path, pl, "%s/tokenizer_config.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f) { ar_error("%s: cannot open: %s", path, strerror(errno)); free(path); return NULL; }
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 2) { char *nb = realloc(buf, cap *= 2); if (!nb) { free(buf); buf = NULL; } else buf = nb; }
    }
    fclose(f);
    if (!buf) { ar_error("%s: out of memory", path); free(path); return NULL; }
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    ar_chat_template *t = NULL;
    if (!j) { ar_error("%s: not valid JSON", path); free(path); return NULL; }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
    const char *src = NULL;
    if (cJSON_IsString(ct)) src = ct->valuestring;
    else if (cJSON_IsArray(ct)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, ct) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name"), *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tp)) src = tp->valuestring;
        }
        if (!src) { ar_error("%s: chat_template is a list without a \"default\" entry", path); goto out; }
    }
    if (!src) {
        ar_error("%s: no chat_template (the model ships no chat template; drop apply_chat_template)", path);
        goto out;
    }
    pl = strlen(path) + sizeof ":chat_template";
    char *name = malloc(pl);
    if (!name) { ar_error("%s: out of memory", path); goto out; }
    snprintf(name, pl, "%s:chat_template", path);
    t = ar_chat_template_parse(src, strlen(src), name);
    free(name);
    static const char *const toks[] = {"bos_token", "eos_token", "unk_token", "pad_token", NULL};
    for (int i = 0; t && toks[i]; i++) {
        const char *v = token_str(j, toks[i]);
        if (v && ar_chat_template_set_var(t, toks[i], v)) { ar_chat_template_free(t); t = NULL; }
    }
out:
    cJSON_Delete(j);
    free(path);
    return t;
}

/* ---- evaluation ----------------------------------------------------------- */

typedef struct { const char **names; val **vals; int n, cap; } scope;

typedef struct {
    errctx E;
    arena ar;
    char *out; size_t on, ocap;
    scope sc[64]; int nsc;
    int brk, cont;
    int line;
    const ar_chat_template *t;
} rctx;

static void *ralloc(rctx *R, size_t n)
{
    void *p = arena_alloc_raw(&R->ar, n);
    if (!p) fail_at(&R->E, -1, R->line, "out of memory");
    return p;
}

#define RAISE(R, ...) fail_at(&(R)->E, AR_CHAT_RAISED, (R)->line, __VA_ARGS__)
#define FAIL(R, ...) fail_at(&(R)->E, -1, (R)->line, __VA_ARGS__)

static val V_UNDEF_V = {.t = V_UNDEF}, V_NONE_V = {.t = V_NONE}, V_TRUE_V = {.t = V_BOOL, .i = 1}, V_FALSE_V = {.t = V_BOOL};

static val *vbool(int b) { return b ? &V_TRUE_V : &V_FALSE_V; }
static val *vint(rctx *R, long long i) { val *v = ralloc(R, sizeof *v); v->t = V_INT, v->i = i; return v; }
static val *vfloat(rctx *R, double f) { val *v = ralloc(R, sizeof *v); v->t = V_FLOAT, v->f = f; return v; }
static val *vstr(rctx *R, const char *s, size_t n)
{
    val *v = ralloc(R, sizeof *v);
    char *c = ralloc(R, n + 1);
    memcpy(c, s, n);
    v->t = V_STR, v->s = c, v->n = n;
    return v;
}
static val *vlist(rctx *R, int cap)
{
    val *v = ralloc(R, sizeof *v);
    v->t = V_LIST, v->cap = cap > 0 ? cap : 4;
    v->it = ralloc(R, sizeof(val *) * (size_t)v->cap);
    return v;
}
static void list_push(rctx *R, val *l, val *x)
{
    if (l->len == l->cap) {
        val **ni = ralloc(R, sizeof(val *) * (size_t)l->cap * 2);
        memcpy(ni, l->it, sizeof(val *) * (size_t)l->len);
        if (l->keys) {
            const char **nk = ralloc(R, sizeof(char *) * (size_t)l->cap * 2);
            memcpy(nk, l->keys, sizeof(char *) * (size_t)l->len);
            l->keys = nk;
        }
        l->it = ni, l->cap *= 2;
    }
    l->it[l->len++] = x;
}
static val *vdict(rctx *R)
{
    val *v = vlist(R, 4);
    v->t = V_DICT;
    v->keys = ralloc(R, sizeof(char *) * (size_t)v->cap);
    return v;
}
static val **dict_slot(val *d, const char *k)
{
    for (int i = 0; i < d->len; i++) if (!strcmp(d->keys[i], k)) return &d->it[i];
    return NULL;
}
static void dict_set(rctx *R, val *d, const char *k, val *x)
{
    val **s = dict_slot(d, k);
    if (s) { *s = x; return; }
    list_push(R, d, x);
    d->keys[d->len - 1] = k;
}
static val *dict_get(val *d, const char *k) { val **s = dict_slot(d, k); return s ? *s : NULL; }

static val *from_json(rctx *R, const cJSON *j)
{
    if (cJSON_IsString(j)) return vstr(R, j->valuestring, strlen(j->valuestring));
    if (cJSON_IsBool(j)) return vbool(cJSON_IsTrue(j));
    if (cJSON_IsNull(j)) return &V_NONE_V;
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9e15) return vint(R, (long long)d);
        return vfloat(R, d);
    }
    if (cJSON_IsArray(j)) {
        val *l = vlist(R, cJSON_GetArraySize(j));
        const cJSON *e;
        cJSON_ArrayForEach(e, j) list_push(R, l, from_json(R, e));
        return l;
    }
    val *d = vdict(R);
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        size_t n = strlen(e->string);
        char *k = ralloc(R, n + 1);
        memcpy(k, e->string, n);
        dict_set(R, d, k, from_json(R, e));
    }
    return d;
}

/* output / string builder */
typedef struct { rctx *R; char *s; size_t n, cap; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *ns = ralloc(b->R, cap);
        if (b->n) memcpy(ns, b->s, b->n);
        b->s = ns, b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void out_put(rctx *R, const char *s, size_t n)
{
    if (R->on + n + 1 > R->ocap) {
        size_t cap = R->ocap ? R->ocap : 1024;
        while (cap < R->on + n + 1) cap *= 2;
        char *no = realloc(R->out, cap);
        if (!no) FAIL(R, "out of memory");
        R->out = no, R->ocap = cap;
    }
    memcpy(R->out + R->on, s, n);
    R->on += n;
}

/* Python's repr(float): the shortest form that reads back. */
static void fmt_float(char *buf, size_t sz, double f)
{
    if (isnan(f)) { snprintf(buf, sz, "nan"); return; }
    if (isinf(f)) { snprintf(buf, sz, f < 0 ? "-inf" : "inf"); return; }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sz, "%.*g", p, f);
        if (strtod(buf, NULL) == f) break;
    }
    /* Python uses exponent form below 1e-4 and from 1e16, as %g does with
     * enough digits; make integral values end in ".0" and exponents two-digit */
    char *e = strchr(buf, 'e');
    if (e) {
        char mant[40], ex[16];
        snprintf(mant, sizeof mant, "%.*s", (int)(e - buf) < 39 ? (int)(e - buf) : 39, buf);
        int x = atoi(e + 1);
        snprintf(ex, sizeof ex, "e%c%02d", x < 0 ? '-' : '+', abs(x));
        snprintf(buf, sz, "%s%s", mant, ex);
        if (fabs(f) < 1e16 && fabs(f) >= 1e-4) { /* %g chose exponent form where Python would not */
            snprintf(buf, sz, "%.1f", f);
        }
    } else if (!strchr(buf, '.') && !strchr(buf, 'n')) {
        size_t l = strlen(buf);
        snprintf(buf + l, sz - l, ".0");
    }
}

static void repr_str(sbuf *b, const char *s, size_t n)
{
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    sb_put(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '\\') sb_puts(b, "\\\\");
        else if (c == (unsigned char)q) { e[0] = '\\', e[1] = (char)c; sb_put(b, e, 2); }
        else if (c == '\n') sb_puts(b, "\\n");
        else if (c == '\r') sb_puts(b, "\\r");
        else if (c == '\t') sb_puts(b, "\\t");
        else if (c < 0x20 || c == 0x7f) { snprintf(e, sizeof e, "\\x%02x", c); sb_puts(b, e); }
        else sb_put(b, (const char *)&c, 1);
    }
    sb_put(b, &q, 1);
}

static void to_str(sbuf *b, val *v, int repr)
{
    char num[64];
    switch (v->t) {
    case V_UNDEF: break;
    case V_NONE: sb_puts(b, "None"); break;
    case V_BOOL: sb_puts(b, v->i ? "True" : "False"); break;
    case V_INT: snprintf(num, sizeof num, "%lld", v->i); sb_puts(b, num); break;
    case V_FLOAT: fmt_float(num, sizeof num, v->f); sb_puts(b, num); break;
    case V_STR: if (repr) repr_str(b, v->s, v->n); else sb_put(b, v->s, v->n); break;
    case V_LIST:
        sb_puts(b, "[");
        for (int i = 0; i < v->len; i++) { if (i) sb_puts(b, ", "); to_str(b, v->it[i], 1); }
        sb_puts(b, "]");
        break;
    case V_DICT:
        if (v->ns) { sb_puts(b, "<Namespace "); }
        sb_puts(b, "{");
        for (int i = 0; i < v->len; i++) {
            if (i) sb_puts(b, ", ");
            repr_str(b, v->keys[i], strlen(v->keys[i]));
            sb_puts(b, ": ");
            to_str(b, v->it[i], 1);
        }
        sb_puts(b, "}");
        if (v->ns) sb_puts(b, ">");
        break;
    }
}

static val *as_str(rctx *R, val *v)
{
    if (v->t == V_STR) return v;
    sbuf b = {R, NULL, 0, 0};
    to_str(&b, v, 0);
    return vstr(R, b.s ? b.s : "", b.n);
}

static void json_str(sbuf *b, const char *s, size_t n)
{
    sb_puts(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default:
            if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", c); sb_puts(b, e); }
            else sb_put(b, (const char *)&c, 1);
        }
    }
    sb_puts(b, "\"");
}

static void indent_nl(sbuf *b, int indent, int depth)
{
    sb_puts(b, "\n");
    for (int i = 0; i < indent * depth; i++) sb_puts(b, " ");
}

/* json.dumps(v, ensure_ascii=False, indent=indent) (indent < 0: none) */
static void to_json(rctx *R, sbuf *b, val *v, int indent, int depth)
{
    char num[64];
    switch (v->t) {
    case V_UNDEF: RAISE(R, "Object of type Undefined is not JSON serializable");
    case V_NONE: sb_puts(b, "null"); break;
    case V_BOOL: sb_puts(b, v->i ? "true" : "false"); break;
    case V_INT: snprintf(num, sizeof num, "%lld", v->i); sb_puts(b, num); break;
    case V_FLOAT:
        if (isnan(v->f)) sb_puts(b, "NaN");
        else if (isinf(v->f)) sb_puts(b, v->f < 0 ? "-Infinity" : "Infinity");
        else { fmt_float(num, sizeof num, v->f); sb_puts(b, num); }
        break;
    case V_STR: json_str(b, v->s, v->n); break;
    case V_LIST: case V_DICT: {
        int d = v->t == V_DICT;
        if (v->len == 0) { sb_puts(b, d ? "{}" : "[]"); break; }
        sb_puts(b, d ? "{" : "[");
        for (int i = 0; i < v->len; i++) {
            if (i) sb_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) indent_nl(b, indent, depth + 1);
            if (d) { json_str(b, v->keys[i], strlen(v->keys[i])); sb_puts(b, ": "); }
            to_json(R, b, v->it[i], indent, depth + 1);
        }
        if (indent >= 0) indent_nl(b, indent, depth);
        sb_puts(b, d ? "}" : "]");
        break;
    }
    }
}

static int truthy(val *v)
{
    switch (v->t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->n != 0;
    default: return v->len != 0;
    }
}

static const char *type_name(val *v)
{
    static const char *const n[] = {"Undefined", "NoneType", "bool", "int", "float", "str", "list", "dict"};
    return n[v->t];
}

static int is_num(val *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num_of(val *v) { return v->t == V_FLOAT ? v->f : (double)v->i; }

static int equal(val *a, val *b)
{
    if (is_num(a) && is_num(b)) return num_of(a) == num_of(b);
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a->n == b->n && !memcmp(a->s, b->s, a->n);
    case V_LIST:
        if (a->len != b->len) return 0;
        for (int i = 0; i < a->len; i++) if (!equal(a->it[i], b->it[i])) return 0;
        return 1;
    case V_DICT:
        if (a->len != b->len) return 0;
        for (int i = 0; i < a->len; i++) {
            val *o = dict_get(b, a->keys[i]);
            if (!o || !equal(a->it[i], o)) return 0;
        }
        return 1;
    default: return 0;
    }
}

/* UTF-8 code points */
static size_t u8_len(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}
static size_t u8_off(const char *s, size_t n, size_t cp) /* byte offset of code point cp */
{
    size_t i = 0, c = 0;
    for (; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) { if (c == cp) return i; c++; }
    }
    return n;
}
static unsigned long u8_dec(const char *s, size_t n, size_t *adv)
{
    unsigned char c = (unsigned char)s[0];
    int k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if ((size_t)k > n) k = 1;
    unsigned long cp = k == 1 ? c : k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
    for (int i = 1; i < k; i++) cp = cp << 6 | ((unsigned char)s[i] & 0x3F);
    *adv = (size_t)k;
    return cp;
}
/* Python's str.isspace() */
static int u_space(unsigned long c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}
static int prev_cp(const char *s, size_t e, size_t *start) /* code point ending at e */
{
    size_t b = e - 1;
    while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
    *start = b;
    return 0;
}

/* str.strip(chars) on both (1), left (2) or right (3) ends */
static val *strip(rctx *R, val *s, val *chars, int which)
{
    size_t b = 0, e = s->n;
    const char *cs = chars && chars->t == V_STR ? chars->s : NULL;
    size_t cn = cs ? chars->n : 0;
#define IN_SET(cp_, st_, ln_) (cs ? (memmem(cs, cn, (st_), (ln_)) != NULL) : u_space(cp_))
    if (which != 3)
        while (b < e) {
            size_t adv;
            unsigned long cp = u8_dec(s->s + b, e - b, &adv);
            if (!IN_SET(cp, s->s + b, adv)) break;
            b += adv;
        }
    if (which != 2)
        while (e > b) {
            size_t st, adv;
            prev_cp(s->s, e, &st);
            unsigned long cp = u8_dec(s->s + st, e - st, &adv);
            if (!IN_SET(cp, s->s + st, e - st)) break;
            e = st;
        }
#undef IN_SET
    return vstr(R, s->s + b, e - b);
}

static val *case_map(rctx *R, val *s, int upper)
{
    val *o = vstr(R, s->s, s->n);
    char *w = (char *)o->s;
    for (size_t i = 0; i < o->n; i++) {
        if (upper && w[i] >= 'a' && w[i] <= 'z') w[i] = (char)(w[i] - 32);
        if (!upper && w[i] >= 'A' && w[i] <= 'Z') w[i] = (char)(w[i] + 32);
    }
    return o;
}

static val *replace(rctx *R, val *s, val *old, val *new_, long long count)
{
    if (old->t != V_STR || new_->t != V_STR) RAISE(R, "replace() arguments must be str");
    sbuf b = {R, NULL, 0, 0};
    size_t i = 0;
    long long done = 0;
    if (old->n == 0) { /* Python inserts new between every code point */
        size_t adv;
        for (; i <= s->n && (count < 0 || done < count); done++) {
            sb_put(&b, new_->s, new_->n);
            if (i == s->n) { i++; break; }
            u8_dec(s->s + i, s->n - i, &adv);
            sb_put(&b, s->s + i, adv);
            i += adv;
        }
        if (i < s->n) sb_put(&b, s->s + i, s->n - i);
        return vstr(R, b.s ? b.s : "", b.n);
    }
    while (i < s->n) {
        const char *f = (count < 0 || done < count) ? memmem(s->s + i, s->n - i, old->s, old->n) : NULL;
        if (!f) { sb_put(&b, s->s + i, s->n - i); break; }
        sb_put(&b, s->s + i, (size_t)(f - s->s - i));
        sb_put(&b, new_->s, new_->n);
        i = (size_t)(f - s->s) + old->n;
        done++;
    }
    return vstr(R, b.s ? b.s : "", b.n);
}

static val *split(rctx *R, val *s, val *sep, long long maxsplit)
{
    val *l = vlist(R, 8);
    if (!sep || sep->t == V_NONE) { /* runs of whitespace */
        size_t i = 0;
        long long done = 0;
        for (;;) {
            size_t adv;
            while (i < s->n && u_space(u8_dec(s->s + i, s->n - i, &adv))) i += adv;
            if (i >= s->n) break;
            size_t st = i;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = s->n, ps;
                while (e > st) { prev_cp(s->s, e, &ps); if (!u_space(u8_dec(s->s + ps, e - ps, &adv))) break; e = ps; }
                list_push(R, l, vstr(R, s->s + st, e - st));
                break;
            }
            while (i < s->n && !u_space(u8_dec(s->s + i, s->n - i, &adv))) i += adv;
            list_push(R, l, vstr(R, s->s + st, i - st));
            done++;
        }
        return l;
    }
    if (sep->t != V_STR) RAISE(R, "must be str or None, not %s", type_name(sep));
    if (sep->n == 0) RAISE(R, "empty separator");
    size_t i = 0;
    long long done = 0;
    for (;;) {
        const char *f = (maxsplit < 0 || done < maxsplit) ? memmem(s->s + i, s->n - i, sep->s, sep->n) : NULL;
        if (!f) { list_push(R, l, vstr(R, s->s + i, s->n - i)); break; }
        list_push(R, l, vstr(R, s->s + i, (size_t)(f - s->s - i)));
        i = (size_t)(f - s->s) + sep->n;
        done++;
    }
    return l;
}

static val *eval(rctx *R, expr *e);

static val *getattr_v(rctx *R, val *o, const char *name)
{
    if (o->t == V_UNDEF) RAISE(R, "'%s' has no attribute '%s' (undefined value)", type_name(o), name);
    if (o->t == V_DICT) { val *v = dict_get(o, name); return v ? v : &V_UNDEF_V; }
    return &V_UNDEF_V;
}

static long long norm_index(long long i, long long n) { return i < 0 ? i + n : i; }

static val *getitem(rctx *R, val *o, val *k)
{
    if (o->t == V_UNDEF) RAISE(R, "undefined value is not subscriptable");
    if (o->t == V_DICT) {
        if (k->t != V_STR) return &V_UNDEF_V;
        val *v = dict_get(o, k->s);
        return v ? v : &V_UNDEF_V;
    }
    if ((o->t == V_LIST || o->t == V_STR) && (k->t == V_INT || k->t == V_BOOL)) {
        long long n = o->t == V_LIST ? o->len : (long long)u8_len(o->s, o->n);
        long long i = norm_index(k->i, n);
        if (i < 0 || i >= n) return &V_UNDEF_V;
        if (o->t == V_LIST) return o->it[i];
        size_t b = u8_off(o->s, o->n, (size_t)i), adv;
        u8_dec(o->s + b, o->n - b, &adv);
        return vstr(R, o->s + b, adv);
    }
    if (o->t == V_STR && k->t == V_STR) return getattr_v(R, o, k->s);
    return &V_UNDEF_V;
}

static long long slice_bound(rctx *R, val *v, long long n, long long step, int lo)
{
    if (!v || v->t == V_NONE) return step > 0 ? (lo ? 0 : n) : (lo ? n - 1 : -1);
    if (v->t != V_INT && v->t != V_BOOL) RAISE(R, "slice indices must be integers or None");
    long long i = v->i;
    if (i < 0) { i += n; if (i < 0) i = step > 0 ? 0 : -1; }
    else if (i >= n) i = step > 0 ? n : n - 1;
    return i;
}

static val *slice(rctx *R, val *o, val *lo, val *hi, val *st)
{
    if (o->t == V_UNDEF) RAISE(R, "undefined value is not subscriptable");
    if (o->t != V_LIST && o->t != V_STR) RAISE(R, "'%s' object is not subscriptable by a slice", type_name(o));
    long long step = 1;
    if (st && st->t != V_NONE) {
        if (st->t != V_INT) RAISE(R, "slice indices must be integers or None");
        step = st->i;
        if (!step) RAISE(R, "slice step cannot be zero");
    }
    long long n = o->t == V_LIST ? o->len : (long long)u8_len(o->s, o->n);
    long long a = slice_bound(R, lo, n, step, 1), b = slice_bound(R, hi, n, step, 0);
    if (o->t == V_LIST) {
        val *l = vlist(R, 8);
        for (long long i = a; step > 0 ? i < b : i > b; i += step) list_push(R, l, o->it[i]);
        return l;
    }
    sbuf sb = {R, NULL, 0, 0};
    for (long long i = a; step > 0 ? i < b : i > b; i += step) {
        size_t off = u8_off(o->s, o->n, (size_t)i), adv;
        u8_dec(o->s + off, o->n - off, &adv);
        sb_put(&sb, o->s + off, adv);
    }
    return vstr(R, sb.s ? sb.s : "", sb.n);
}

static int contains(rctx *R, val *hay, val *x)
{
    switch (hay->t) {
    case V_STR:
        if (x->t != V_STR) RAISE(R, "'in <string>' requires string as left operand, not %s", type_name(x));
        return x->n == 0 || memmem(hay->s, hay->n, x->s, x->n) != NULL;
    case V_LIST:
        for (int i = 0; i < hay->len; i++) if (equal(hay->it[i], x)) return 1;
        return 0;
    case V_DICT: return x->t == V_STR && dict_get(hay, x->s) != NULL;
    case V_UNDEF: return 0;
    default: RAISE(R, "argument of type '%s' is not iterable", type_name(hay));
    }
}

/* The items iterating v gives (list: items, dict: keys, str: characters). */
static val *iter_list(rctx *R, val *v)
{
    if (v->t == V_LIST) return v;
    if (v->t == V_UNDEF) return vlist(R, 1);
    if (v->t == V_DICT) {
        val *l = vlist(R, v->len);
        for (int i = 0; i < v->len; i++) list_push(R, l, vstr(R, v->keys[i], strlen(v->keys[i])));
        return l;
    }
    if (v->t == V_STR) {
        val *l = vlist(R, (int)v->n);
        for (size_t i = 0, adv; i < v->n; i += adv) {
            u8_dec(v->s + i, v->n - i, &adv);
            list_push(R, l, vstr(R, v->s + i, adv));
        }
        return l;
    }
    RAISE(R, "'%s' object is not iterable", type_name(v));
}

static int cmp_order(rctx *R, val *a, val *b)
{
    if (is_num(a) && is_num(b)) { double x = num_of(a), y = num_of(b); return x < y ? -1 : x > y; }
    if (a->t == V_STR && b->t == V_STR) {
        size_t m = a->n < b->n ? a->n : b->n;
        int c = memcmp(a->s, b->s, m);
        return c ? (c < 0 ? -1 : 1) : (a->n < b->n ? -1 : a->n > b->n);
    }
    RAISE(R, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

static val *binop(rctx *R, int op, val *a, val *b)
{
    switch (op) {
    case OP_EQ: return vbool(equal(a, b));
    case OP_NE: return vbool(!equal(a, b));
    case OP_LT: return vbool(cmp_order(R, a, b) < 0);
    case OP_GT: return vbool(cmp_order(R, a, b) > 0);
    case OP_LE: return vbool(cmp_order(R, a, b) <= 0);
    case OP_GE: return vbool(cmp_order(R, a, b) >= 0);
    case OP_IN: return vbool(contains(R, b, a));
    case OP_NOTIN: return vbool(!contains(R, b, a));
    case OP_CAT: {
        sbuf s = {R, NULL, 0, 0};
        to_str(&s, a, 0);
        to_str(&s, b, 0);
        return vstr(R, s.s ? s.s : "", s.n);
    }
    default: break;
    }
    if (a->t == V_UNDEF || b->t == V_UNDEF) RAISE(R, "arithmetic on an undefined value");
    if (op == OP_ADD) {
        if (a->t == V_STR && b->t == V_STR) {
            sbuf s = {R, NULL, 0, 0};
            sb_put(&s, a->s, a->n);
            sb_put(&s, b->s, b->n);
            return vstr(R, s.s ? s.s : "", s.n);
        }
        if (a->t == V_LIST && b->t == V_LIST) {
            val *l = vlist(R, a->len + b->len);
            for (int i = 0; i < a->len; i++) list_push(R, l, a->it[i]);
            for (int i = 0; i < b->len; i++) list_push(R, l, b->it[i]);
            return l;
        }
    }
    if (op == OP_MUL && ((a->t == V_STR && b->t == V_INT) || (a->t == V_INT && b->t == V_STR))) {
        val *s = a->t == V_STR ? a : b;
        long long k = a->t == V_INT ? a->i : b->i;
        if (k > 0 && s->n && (unsigned long long)k > (64ull << 20) / s->n) FAIL(R, "string repetition beyond 64 MiB");
        sbuf o = {R, NULL, 0, 0};
        for (long long i = 0; i < k; i++) sb_put(&o, s->s, s->n);
        return vstr(R, o.s ? o.s : "", o.n);
    }
    if (!is_num(a) || !is_num(b))
        RAISE(R, "unsupported operand types for an arithmetic operator: '%s' and '%s'", type_name(a), type_name(b));
    int ints = a->t != V_FLOAT && b->t != V_FLOAT;
    double x = num_of(a), y = num_of(b);
    switch (op) {
    case OP_ADD: return ints ? vint(R, a->i + b->i) : vfloat(R, x + y);
    case OP_SUB: return ints ? vint(R, a->i - b->i) : vfloat(R, x - y);
    case OP_MUL: return ints ? vint(R, a->i * b->i) : vfloat(R, x * y);
    case OP_DIV: if (y == 0) RAISE(R, "division by zero"); return vfloat(R, x / y);
    case OP_FDIV:
        if (y == 0) RAISE(R, "integer division or modulo by zero");
        if (ints) { long long q = a->i / b->i; if ((a->i % b->i) && ((a->i < 0) != (b->i < 0))) q--; return vint(R, q); }
        return vfloat(R, floor(x / y));
    case OP_MOD:
        if (y == 0) RAISE(R, "integer division or modulo by zero");
        if (ints) { long long m = a->i % b->i; if (m && ((m < 0) != (b->i < 0))) m += b->i; return vint(R, m); }
        return vfloat(R, x - y * floor(x / y));
    case OP_POW:
        if (ints && b->i >= 0) { long long r = 1; for (long long i = 0; i < b->i; i++) r *= a->i; return vint(R, r); }
        return vfloat(R, pow(x, y));
    }
    FAIL(R, "unknown operator");
}

/* ---- variables ---- */

static val *lookup(rctx *R, const char *name)
{
    for (int i = R->nsc - 1; i >= 0; i--) {
        scope *s = &R->sc[i];
        for (int k = s->n - 1; k >= 0; k--)
            if (!strcmp(s->names[k], name)) return s->vals[k];
    }
    return &V_UNDEF_V;
}

static void assign(rctx *R, const char *name, val *v)
{
    scope *s = &R->sc[R->nsc - 1];
    for (int k = 0; k < s->n; k++)
        if (!strcmp(s->names[k], name)) { s->vals[k] = v; return; }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        const char **nn = ralloc(R, sizeof(char *) * (size_t)cap);
        val **nv = ralloc(R, sizeof(val *) * (size_t)cap);
        if (s->n) { memcpy(nn, s->names, sizeof(char *) * (size_t)s->n); memcpy(nv, s->vals, sizeof(val *) * (size_t)s->n); }
        s->names = nn, s->vals = nv, s->cap = cap;
    }
    s->names[s->n] = name, s->vals[s->n] = v, s->n++;
}

static void push_scope(rctx *R)
{
    if (R->nsc == (int)(sizeof R->sc / sizeof *R->sc)) FAIL(R, "loops nested too deeply");
    memset(&R->sc[R->nsc++], 0, sizeof(scope));
}

/* ---- filters, tests, methods ---- */

static val *arg_kw(rctx *R, expr *e, int pos, const char *kw, int first_pos)
{
    int p = 0;
    for (int i = 0; i < e->nargs; i++) {
        if (e->kw && e->kw[i]) { if (kw && !strcmp(e->kw[i], kw)) return eval(R, e->args[i]); }
        else if (p++ == pos - first_pos) return eval(R, e->args[i]);
    }
    return NULL;
}

static int run_test(rctx *R, const char *name, val *v, val *arg)
{
    if (!strcmp(name, "defined")) return v->t != V_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == V_UNDEF;
    if (!strcmp(name, "none")) return v->t == V_NONE;
    if (!strcmp(name, "string")) return v->t == V_STR;
    if (!strcmp(name, "number")) return is_num(v);
    if (!strcmp(name, "integer")) return v->t == V_INT;
    if (!strcmp(name, "float")) return v->t == V_FLOAT;
    if (!strcmp(name, "boolean")) return v->t == V_BOOL;
    if (!strcmp(name, "true")) return v->t == V_BOOL && v->i;
    if (!strcmp(name, "false")) return v->t == V_BOOL && !v->i;
    if (!strcmp(name, "mapping")) return v->t == V_DICT;
    if (!strcmp(name, "iterable")) return v->t == V_STR || v->t == V_LIST || v->t == V_DICT || v->t == V_UNDEF;
    if (!strcmp(name, "sequence")) return v->t == V_STR || v->t == V_LIST || v->t == V_DICT;
    if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "ne")) {
        if (!arg) RAISE(R, "test '%s' needs an argument", name);
        return equal(v, arg) ^ (name[0] == 'n');
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v->t != V_INT && v->t != V_BOOL) RAISE(R, "test '%s' needs an integer", name);
        return (int)((v->i % 2 + 2) % 2) == (name[0] == 'o');
    }
    if (!strcmp(name, "in")) {
        if (!arg) RAISE(R, "test 'in' needs an argument");
        return contains(R, arg, v);
    }
    FAIL(R, "unsupported test '%s'", name);
}

static val *apply_filter(rctx *R, expr *e, val *v)
{
    const char *f = e->name;
    if (!strcmp(f, "trim")) return strip(R, as_str(R, v), arg_kw(R, e, 0, "chars", 0), 1);
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        if (v->t == V_STR) return vint(R, (long long)u8_len(v->s, v->n));
        if (v->t == V_LIST || v->t == V_DICT) return vint(R, v->len);
        if (v->t == V_UNDEF) return vint(R, 0);
        RAISE(R, "object of type '%s' has no len()", type_name(v));
    }
    if (!strcmp(f, "tojson")) {
        val *ind = arg_kw(R, e, 0, "indent", 0);
        int indent = ind && ind->t == V_INT ? (int)ind->i : -1;
        if (ind && ind->t != V_INT && ind->t != V_NONE) FAIL(R, "tojson: unsupported indent");
        for (int i = 0; i < e->nargs; i++)
            if (e->kw && e->kw[i] && strcmp(e->kw[i], "indent")) FAIL(R, "tojson: unsupported argument '%s'", e->kw[i]);
        sbuf b = {R, NULL, 0, 0};
        to_json(R, &b, v, indent, 0);
        return vstr(R, b.s ? b.s : "", b.n);
    }
    if (!strcmp(f, "upper") || !strcmp(f, "lower")) return case_map(R, as_str(R, v), f[0] == 'u');
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        val *dflt = arg_kw(R, e, 0, "default_value", 0), *boolean = arg_kw(R, e, 1, "boolean", 0);
        if (!dflt) dflt = vstr(R, "", 0);
        if (v->t == V_UNDEF || (boolean && truthy(boolean) && !truthy(v))) return dflt;
        return v;
    }
    if (!strcmp(f, "items")) {
        if (v->t == V_UNDEF) return vlist(R, 1);
        if (v->t != V_DICT) RAISE(R, "items: can only get item pairs from a mapping");
        val *l = vlist(R, v->len);
        for (int i = 0; i < v->len; i++) {
            val *p = vlist(R, 2);
            list_push(R, p, vstr(R, v->keys[i], strlen(v->keys[i])));
            list_push(R, p, v->it[i]);
            list_push(R, l, p);
        }
        return l;
    }
    if (!strcmp(f, "join")) {
        val *sep = arg_kw(R, e, 0, "d", 0), *attr = arg_kw(R, e, 1, "attribute", 0);
        val *l = iter_list(R, v);
        sbuf b = {R, NULL, 0, 0};
        for (int i = 0; i < l->len; i++) {
            if (i && sep) to_str(&b, sep, 0);
            to_str(&b, attr ? getattr_v(R, l->it[i], as_str(R, attr)->s) : l->it[i], 0);
        }
        return vstr(R, b.s ? b.s : "", b.n);
    }
    if (!strcmp(f, "list")) {
        val *l = iter_list(R, v), *c = vlist(R, l->len);
        for (int i = 0; i < l->len; i++) list_push(R, c, l->it[i]);
        return c;
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        val *l = iter_list(R, v);
        if (!l->len) return &V_UNDEF_V;
        return f[0] == 'f' ? l->it[0] : l->it[l->len - 1];
    }
    if (!strcmp(f, "string")) return as_str(R, v);
    if (!strcmp(f, "map")) { /* map(attribute=NAME) only */
        val *an = arg_kw(R, e, 99, "attribute", 0), *dflt = arg_kw(R, e, 99, "default", 0);
        if (!an || an->t != V_STR || e->nargs != (dflt ? 2 : 1)) FAIL(R, "unsupported construct: map other than map(attribute=...)");
        val *l = iter_list(R, v), *o = vlist(R, l->len);
        for (int i = 0; i < l->len; i++) {
            val *x = getattr_v(R, l->it[i], an->s);
            list_push(R, o, x->t == V_UNDEF && dflt ? dflt : x);
        }
        return o;
    }
    if (!strcmp(f, "safe")) return v;
    if (!strcmp(f, "replace")) {
        val *o = arg_kw(R, e, 0, "old", 0), *n = arg_kw(R, e, 1, "new", 0), *c = arg_kw(R, e, 2, "count", 0);
        if (!o || !n) RAISE(R, "replace needs two arguments");
        return replace(R, as_str(R, v), o, n, c && c->t == V_INT ? c->i : -1);
    }
    /* select/reject(test, arg), selectattr/rejectattr(attr, test, arg) */
    int attr = !strcmp(f, "selectattr") || !strcmp(f, "rejectattr"), keep = f[0] == 's';
    val *l = iter_list(R, v), *out = vlist(R, l->len);
    int a0 = attr ? 1 : 0;
    val *an = attr ? arg_kw(R, e, 0, NULL, 0) : NULL;
    if (attr && (!an || an->t != V_STR)) RAISE(R, "%s needs an attribute name", f);
    val *tn = arg_kw(R, e, a0, NULL, 0);
    if (tn && tn->t != V_STR) RAISE(R, "%s: the test name must be a string", f);
    if (tn && !in_list(TESTS, tn->s)) FAIL(R, "unsupported test '%s'", tn->s);
    val *targ = arg_kw(R, e, a0 + 1, NULL, 0);
    for (int i = 0; i < l->len; i++) {
        val *x = attr ? getattr_v(R, l->it[i], an->s) : l->it[i];
        int ok = tn ? run_test(R, tn->s, x, targ) : truthy(x);
        if (ok == keep) list_push(R, out, l->it[i]);
    }
    return out;
}

static val *call(rctx *R, expr *e)
{
    if (e->a->k == E_VAR) {
        const char *fn = e->a->name;
        if (!strcmp(fn, "raise_exception")) {
            val *m = e->nargs ? eval(R, e->args[0]) : vstr(R, "", 0);
            RAISE(R, "raise_exception: %s", as_str(R, m)->s);
        }
        if (!strcmp(fn, "namespace")) {
            val *d = vdict(R);
            d->ns = 1;
            for (int i = 0; i < e->nargs; i++) {
                if (!e->kw[i]) {
                    val *m = eval(R, e->args[i]);
                    if (m->t != V_DICT) RAISE(R, "namespace() takes keyword arguments or a mapping");
                    for (int k = 0; k < m->len; k++) dict_set(R, d, m->keys[k], m->it[k]);
                } else {
                    dict_set(R, d, e->kw[i], eval(R, e->args[i]));
                }
            }
            return d;
        }
        /* range */
        long long a[3] = {0, 0, 1};
        if (e->nargs < 1 || e->nargs > 3) RAISE(R, "range() takes 1 to 3 arguments");
        for (int i = 0; i < e->nargs; i++) {
            val *x = eval(R, e->args[i]);
            if (x->t != V_INT) RAISE(R, "range() arguments must be integers");
            a[e->nargs == 1 ? 1 : i] = x->i;
        }
        if (!a[2]) RAISE(R, "range() arg 3 must not be zero");
        long long cnt = a[2] > 0 ? (a[1] - a[0] + a[2] - 1) / a[2] : (a[0] - a[1] - a[2] - 1) / -a[2];
        if (cnt > 100000) RAISE(R, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        val *l = vlist(R, 8);
        for (long long i = a[0]; a[2] > 0 ? i < a[1] : i > a[1]; i += a[2]) list_push(R, l, vint(R, i));
        return l;
    }
    /* a method */
    val *o = eval(R, e->a->a);
    const char *m = e->a->name;
    if (o->t == V_STR) {
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip"))
            return strip(R, o, e->nargs ? eval(R, e->args[0]) : NULL, m[0] == 's' ? 1 : m[0] == 'l' ? 2 : 3);
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            if (e->nargs != 1) RAISE(R, "%s() takes one argument", m);
            val *p = eval(R, e->args[0]);
            val *one[1] = {p};
            val **ps = p->t == V_LIST ? p->it : one;
            int np = p->t == V_LIST ? p->len : 1;
            for (int i = 0; i < np; i++) {
                if (ps[i]->t != V_STR) RAISE(R, "%s first arg must be str", m);
                if (ps[i]->n <= o->n && !memcmp(m[0] == 's' ? o->s : o->s + o->n - ps[i]->n, ps[i]->s, ps[i]->n)) return vbool(1);
            }
            return vbool(0);
        }
        if (!strcmp(m, "split")) {
            val *sep = arg_kw(R, e, 0, "sep", 0), *mx = arg_kw(R, e, 1, "maxsplit", 0);
            return split(R, o, sep, mx && mx->t == V_INT ? mx->i : -1);
        }
        if (!strcmp(m, "replace")) {
            if (e->nargs < 2) RAISE(R, "replace() takes at least 2 arguments");
            val *c = e->nargs > 2 ? eval(R, e->args[2]) : NULL;
            return replace(R, o, eval(R, e->args[0]), eval(R, e->args[1]), c && c->t == V_INT ? c->i : -1);
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower")) return case_map(R, o, m[0] == 'u');
    } else if (o->t == V_DICT) {
        if (!strcmp(m, "items")) {
            expr fe = {.k = E_FILTER, .name = "items"};
            return apply_filter(R, &fe, o);
        }
        if (!strcmp(m, "keys")) return iter_list(R, o);
        if (!strcmp(m, "values")) {
            val *l = vlist(R, o->len);
            for (int i = 0; i < o->len; i++) list_push(R, l, o->it[i]);
            return l;
        }
        if (!strcmp(m, "get")) {
            if (e->nargs < 1) RAISE(R, "get() takes at least 1 argument");
            val *k = eval(R, e->args[0]);
            val *r = k->t == V_STR ? dict_get(o, k->s) : NULL;
            return r ? r : e->nargs > 1 ? eval(R, e->args[1]) : &V_NONE_V;
        }
    } else if (o->t == V_UNDEF) {
        RAISE(R, "undefined value has no method '%s'", m);
    }
    FAIL(R, "unsupported method '%s' of a %s", m, type_name(o));
}

static val *eval(rctx *R, expr *e)
{
    R->line = e->line;
    switch (e->k) {
    case E_LIT: return e->lit;
    case E_VAR: return lookup(R, e->name);
    case E_ATTR: return getattr_v(R, eval(R, e->a), e->name);
    case E_ITEM: { val *o = eval(R, e->a); return getitem(R, o, eval(R, e->b)); }
    case E_SLICE: {
        val *o = eval(R, e->a);
        val *lo = e->b ? eval(R, e->b) : NULL, *hi = e->c ? eval(R, e->c) : NULL, *st = e->d ? eval(R, e->d) : NULL;
        return slice(R, o, lo, hi, st);
    }
    case E_CALL: return call(R, e);
    case E_FILTER: return apply_filter(R, e, eval(R, e->a));
    case E_TEST: {
        val *v = eval(R, e->a);
        val *arg = e->nargs ? eval(R, e->args[0]) : NULL;
        return vbool(run_test(R, e->name, v, arg) ^ e->neg);
    }
    case E_NOT: return vbool(!truthy(eval(R, e->a)));
    case E_NEG: case E_POS: {
        val *v = eval(R, e->a);
        if (!is_num(v)) RAISE(R, "bad operand type for unary %c: '%s'", e->k == E_NEG ? '-' : '+', type_name(v));
        if (e->k == E_POS) return v->t == V_BOOL ? vint(R, v->i) : v;
        return v->t == V_FLOAT ? vfloat(R, -v->f) : vint(R, -v->i);
    }
    case E_BIN:
        if (e->op == OP_AND) { val *a = eval(R, e->a); return truthy(a) ? eval(R, e->b) : a; }
        if (e->op == OP_OR) { val *a = eval(R, e->a); return truthy(a) ? a : eval(R, e->b); }
        {
            val *a = eval(R, e->a), *b = eval(R, e->b);
            R->line = e->line;
            return binop(R, e->op, a, b);
        }
    case E_COND: return truthy(eval(R, e->a)) ? eval(R, e->b) : e->c ? eval(R, e->c) : &V_UNDEF_V;
    case E_LIST: {
        val *l = vlist(R, e->nargs);
        for (int i = 0; i < e->nargs; i++) list_push(R, l, eval(R, e->args[i]));
        return l;
    }
    case E_DICT: {
        val *d = vdict(R);
        for (int i = 0; i + 1 < e->nargs; i += 2) {
            val *k = eval(R, e->args[i]);
            if (k->t != V_STR) FAIL(R, "unsupported construct: a dict key that is not a string");
            dict_set(R, d, k->s, eval(R, e->args[i + 1]));
        }
        return d;
    }
    }
    FAIL(R, "bad expression");
}

static void exec_list(rctx *R, nlist *l, sbuf *into);

static void emit(rctx *R, sbuf *into, const char *s, size_t n)
{
    if (into) sb_put(into, s, n);
    else out_put(R, s, n);
}

static void exec_node(rctx *R, node *n, sbuf *into)
{
    R->line = n->line;
    switch (n->k) {
    case N_TEXT: emit(R, into, n->text, n->n); break;
    case N_OUT: {
        val *v = eval(R, n->e);
        if (v->t == V_STR) emit(R, into, v->s, v->n);
        else { sbuf b = {R, NULL, 0, 0}; to_str(&b, v, 0); if (b.n) emit(R, into, b.s, b.n); }
        break;
    }
    case N_IF:
        for (int i = 0; i < n->nbr; i++)
            if (!n->conds[i] || truthy(eval(R, n->conds[i]))) { exec_list(R, &n->bodies[i], into); break; }
        break;
    case N_FOR: {
        val *src = iter_list(R, eval(R, n->e));
        push_scope(R);
        val *items = src;
        if (n->filter) { /* the loop filter runs before loop.* is known */
            items = vlist(R, src->len);
            for (int i = 0; i < src->len; i++) {
                assign(R, n->var1, src->it[i]);
                if (n->var2) {
                    val *p = src->it[i];
                    if (p->t != V_LIST || p->len != 2) RAISE(R, "cannot unpack into two names");
                    assign(R, n->var1, p->it[0]);
                    assign(R, n->var2, p->it[1]);
                }
                if (truthy(eval(R, n->filter))) list_push(R, items, src->it[i]);
            }
        }
        val *loop = vdict(R);
        assign(R, "loop", loop);
        for (int i = 0; i < items->len; i++) {
            val *x = items->it[i];
            if (n->var2) {
                if (x->t != V_LIST || x->len != 2) RAISE(R, "cannot unpack into two names");
                assign(R, n->var1, x->it[0]);
                assign(R, n->var2, x->it[1]);
            } else {
                assign(R, n->var1, x);
            }
            loop = vdict(R);
            dict_set(R, loop, "index0", vint(R, i));
            dict_set(R, loop, "index", vint(R, i + 1));
            dict_set(R, loop, "revindex0", vint(R, items->len - 1 - i));
            dict_set(R, loop, "revindex", vint(R, items->len - i));
            dict_set(R, loop, "first", vbool(i == 0));
            dict_set(R, loop, "last", vbool(i == items->len - 1));
            dict_set(R, loop, "length", vint(R, items->len));
            dict_set(R, loop, "previtem", i ? items->it[i - 1] : &V_UNDEF_V);
            dict_set(R, loop, "nextitem", i + 1 < items->len ? items->it[i + 1] : &V_UNDEF_V);
            assign(R, "loop", loop);
            exec_list(R, &n->body, into);
            R->cont = 0;
            if (R->brk) { R->brk = 0; break; }
        }
        if (!items->len) exec_list(R, &n->els, into);
        R->nsc--;
        break;
    }
    case N_SET:
        if (n->attr) {
            val *ns = lookup(R, n->var1);
            if (ns->t != V_DICT || !ns->ns) RAISE(R, "cannot assign attribute on non-namespace object '%s'", n->var1);
            dict_set(R, ns, n->attr, eval(R, n->e));
        } else {
            assign(R, n->var1, eval(R, n->e));
        }
        break;
    case N_SETBLOCK: {
        sbuf b = {R, NULL, 0, 0};
        exec_list(R, &n->body, &b);
        assign(R, n->var1, vstr(R, b.s ? b.s : "", b.n));
        break;
    }
    case N_BREAK: R->brk = 1; break;
    case N_CONTINUE: R->cont = 1; break;
    case N_BODY: exec_list(R, &n->body, into); break;
    }
}

static void exec_list(rctx *R, nlist *l, sbuf *into)
{
    for (int i = 0; i < l->n && !R->brk && !R->cont; i++) exec_node(R, l->v[i], into);
}

int ar_chat_template_render(const ar_chat_template *t, const char *messages_json, int add_generation_prompt,
                            char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    rctx *R = calloc(1, sizeof *R);
    if (!R) return ar_error("%s: out of memory", t->name);
    R->E.name = t->name;
    R->E.kind = -1;
    R->t = t;
    cJSON *volatile j = NULL;
    if (setjmp(R->E.jb)) {
        int kind = R->E.kind;
        cJSON_Delete(j);
        arena_free(&R->ar);
        free(R->out);
        free(R);
        return kind;
    }
    j = cJSON_Parse(messages_json);
    if (!j || !cJSON_IsArray(j)) fail_at(&R->E, -1, 0, "messages are not a JSON list");
    push_scope(R); /* globals */
    assign(R, "messages", from_json(R, j));
    cJSON_Delete(j);
    j = NULL;
    assign(R, "add_generation_prompt", vbool(add_generation_prompt));
    assign(R, "tools", &V_NONE_V);
    assign(R, "documents", &V_NONE_V);
    for (int i = 0; i < t->nvars; i++) assign(R, t->var_names[i], vstr(R, t->var_vals[i], strlen(t->var_vals[i])));
    push_scope(R); /* the template's own top level */
    exec_list(R, (nlist *)&t->root, NULL);
    out_put(R, "", 0);
    if (!R->out) { R->out = malloc(1); if (!R->out) fail_at(&R->E, -1, 0, "out of memory"); }
    R->out[R->on] = 0;
    *out = R->out;
    *len = R->on;
    arena_free(&R->ar);
    free(R);
    return 0;
}
