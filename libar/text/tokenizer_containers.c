/* tokenizer_containers.c — the small growable containers every tokenizer
 * stage uses (byte buffer, id list, string map, piece list), in a file of their
 * own so that the stages depend on them and not on each other. */
#include "tokenizer_impl.h"
#include "error.h"
#include "hash.h"

#include <stdlib.h>
#include <string.h>

int tk_buf_add(tk_buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return ar_error("tokenizer: out of memory");
        b->p = p, b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int tk_ids_add(tk_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return ar_error("tokenizer: out of memory");
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

static size_t tk_map_slot(const tk_map *m, const char *key, size_t len)
{
    size_t i = ar_fnv1a64(key, len) & (m->cap - 1);
    while (m->key[i] && !(m->klen[i] == len && memcmp(m->key[i], key, len) == 0))
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int tk_map_grow(tk_map *m)
{
    tk_map g = { 0 };
    g.cap = m->cap ? m->cap * 2 : 1024;
    g.key = calloc(g.cap, sizeof *g.key);
    g.klen = calloc(g.cap, sizeof *g.klen);
    g.val = calloc(g.cap, sizeof *g.val);
    if (!g.key || !g.klen || !g.val) {
        free(g.key), free(g.klen), free(g.val);
        return ar_error("tokenizer: out of memory");
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->key[i]) continue;
        size_t j = tk_map_slot(&g, m->key[i], m->klen[i]);
        g.key[j] = m->key[i], g.klen[j] = m->klen[i], g.val[j] = m->val[i];
    }
    g.n = m->n;
    free(m->key), free(m->klen), free(m->val);
    *m = g;
    return 0;
}

int tk_map_put(tk_map *m, const char *key, size_t len, int32_t val)
{
    if ((m->n + 1) * 2 > m->cap && tk_map_grow(m)) return -1;
    size_t i = tk_map_slot(m, key, len);
    if (!m->key[i]) {
        char *k = malloc(len + 1);
        if (!k) return ar_error("tokenizer: out of memory");
        memcpy(k, key, len);
        k[len] = 0;
        m->key[i] = k, m->klen[i] = (uint32_t)len;
        m->n++;
    }
    m->val[i] = val;
    return 0;
}

int32_t tk_map_get(const tk_map *m, const char *key, size_t len)
{
    if (!m->cap) return -1;
    size_t i = tk_map_slot(m, key, len);
    return m->key[i] ? m->val[i] : -1;
}

void tk_map_free(tk_map *m)
{
    for (size_t i = 0; i < m->cap; i++) free(m->key[i]);
    free(m->key), free(m->klen), free(m->val);
    memset(m, 0, sizeof *m);
}

/* ---- pieces -------------------------------------------------------------- */

int tk_pieces_add(tk_pieces *p, const char *s, size_t n, int at_start)
{
    if (!n) return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        tk_span *v = realloc(p->v, cap * sizeof *v);
        if (!v) return ar_error("tokenizer: out of memory");
        p->v = v, p->cap = cap;
    }
    p->v[p->n++] = (tk_span){ p->bytes.n, n, at_start };
    return tk_buf_add(&p->bytes, s, n);
}

void tk_pieces_clear(tk_pieces *p) { p->n = 0, p->bytes.n = 0; }

void tk_pieces_free(tk_pieces *p)
{
    free(p->v), free(p->bytes.p);
    memset(p, 0, sizeof *p);
}
