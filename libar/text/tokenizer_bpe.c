/* tokenizer_bpe.c — the BPE model of Hugging Face tokenizers (byte_fallback,
 * unk fusing, ignore_merges). */
#include "tokenizer_impl.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Words up to this many bytes are cached; longer ones are rare and would
 * bloat the cache (a whole SentencePiece paragraph is one word). */
#define TK_CACHE_MAX_WORD 256
/* Bound on cached words (~100 MB worst case): the cache starts over past it. */
#define TK_CACHE_MAX_ENTRIES (1u << 20)

/* ---- merges table -------------------------------------------------------- */

static uint64_t tk_pair_key(int32_t l, int32_t r) { return (((uint64_t)(uint32_t)l << 32) | (uint32_t)r) + 1; }

static size_t tk_merge_slot(const tk_bpe *m, uint64_t key)
{
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (m->mcap - 1);
    while (m->mkey[i] && m->mkey[i] != key) i = (i + 1) & (m->mcap - 1);
    return i;
}

static int tk_merge_grow(tk_bpe *m)
{
    tk_bpe g = { 0 };
    g.mcap = m->mcap ? m->mcap * 2 : 4096;
    g.mkey = calloc(g.mcap, sizeof *g.mkey);
    g.mrank = malloc(g.mcap * sizeof *g.mrank);
    g.mnew = malloc(g.mcap * sizeof *g.mnew);
    if (!g.mkey || !g.mrank || !g.mnew) {
        free(g.mkey), free(g.mrank), free(g.mnew);
        return ar_error("tokenizer: out of memory");
    }
    for (size_t i = 0; i < m->mcap; i++) {
        if (!m->mkey[i]) continue;
        size_t j = tk_merge_slot(&g, m->mkey[i]);
        g.mkey[j] = m->mkey[i], g.mrank[j] = m->mrank[i], g.mnew[j] = m->mnew[i];
    }
    free(m->mkey), free(m->mrank), free(m->mnew);
    m->mkey = g.mkey, m->mrank = g.mrank, m->mnew = g.mnew, m->mcap = g.mcap;
    return 0;
}

int tk_bpe_add_merge(tk_bpe *m, int32_t left, int32_t right, int32_t merged, int32_t rank)
{
    if ((m->n_merges + 1) * 2 > m->mcap && tk_merge_grow(m)) return -1;
    uint64_t key = tk_pair_key(left, right);
    size_t i = tk_merge_slot(m, key);
    if (m->mkey[i]) return 0;   /* a duplicate merge keeps its first (best) rank */
    m->mkey[i] = key, m->mrank[i] = rank, m->mnew[i] = merged;
    m->n_merges++;
    return 0;
}

/* Rank of merging (l, r), or -1 when there is no such merge. */
static int32_t tk_merge_find(const tk_bpe *m, int32_t l, int32_t r, int32_t *merged)
{
    if (!m->mcap) return -1;
    size_t i = tk_merge_slot(m, tk_pair_key(l, r));
    if (!m->mkey[i]) return -1;
    *merged = m->mnew[i];
    return m->mrank[i];
}

int tk_bpe_finish(tk_bpe *m)
{
    m->n_ids = 0;
    for (size_t i = 0; i < m->vocab.cap; i++)
        if (m->vocab.key[i] && m->vocab.val[i] >= m->n_ids) m->n_ids = m->vocab.val[i] + 1;
    m->id_tok = calloc(m->n_ids ? m->n_ids : 1, sizeof *m->id_tok);
    if (!m->id_tok) return ar_error("tokenizer: out of memory");
    for (size_t i = 0; i < m->vocab.cap; i++)
        if (m->vocab.key[i]) m->id_tok[m->vocab.val[i]] = m->vocab.key[i];
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_id[b] = tk_map_get(&m->vocab, name, 6);
    }
    return 0;
}

void tk_bpe_free(tk_bpe *m)
{
    tk_map_free(&m->vocab);
    tk_map_free(&m->cache);
    free(m->id_tok), free(m->mkey), free(m->mrank), free(m->mnew), free(m->cache_ids.v);
    memset(m, 0, sizeof *m);
}

/* ---- word → symbols ------------------------------------------------------ */

/* The symbols of a word being merged: a doubly linked list over an array, so
 * a merge is O(1) and positions keep their original order for tie-breaks. */
typedef struct { int32_t *id, *prev, *next; size_t n, cap; } tk_syms;

static int tk_syms_add(tk_syms *s, int32_t id)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        int32_t *a = realloc(s->id, cap * sizeof *a), *b, *c;
        if (a) s->id = a;
        b = realloc(s->prev, cap * sizeof *b);
        if (b) s->prev = b;
        c = realloc(s->next, cap * sizeof *c);
        if (c) s->next = c;
        if (!a || !b || !c) return ar_error("tokenizer: out of memory");
        s->cap = cap;
    }
    s->prev[s->n] = (int32_t)s->n - 1;
    s->next[s->n] = (int32_t)s->n + 1;
    s->id[s->n++] = id;
    return 0;
}

static void tk_syms_free(tk_syms *s) { free(s->id), free(s->prev), free(s->next); }

/* Whether every byte of s[0..n) has a <0xNN> token. */
static int tk_bytes_known(const tk_bpe *m, const char *s, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (m->byte_id[(unsigned char)s[k]] < 0) return 0;
    return 1;
}

/* Turn each character into its vocabulary id. A character missing from the
 * vocabulary becomes its <0xNN> byte tokens (byte_fallback) or the unknown
 * token, consecutive unknowns fused into one when fuse_unk is set; without
 * an unknown token it is dropped, as HF does. */
static int tk_word_symbols(const tk_bpe *m, const char *w, size_t n, tk_syms *s)
{
    int pending_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = tk_utf8_len(w + i, n - i);
        int32_t id = tk_map_get(&m->vocab, w + i, cl);
        if (id >= 0) {
            if (pending_unk && tk_syms_add(s, m->unk_id)) return -1;
            pending_unk = 0;
            if (tk_syms_add(s, id)) return -1;
        } else if (m->byte_fallback && tk_bytes_known(m, w + i, cl)) {
            for (size_t k = 0; k < cl; k++)
                if (tk_syms_add(s, m->byte_id[(unsigned char)w[i + k]])) return -1;
        } else if (m->unk_id >= 0) {
            if (pending_unk && !m->fuse_unk && tk_syms_add(s, m->unk_id)) return -1;
            pending_unk = 1;
        }
        i += cl;
    }
    if (pending_unk && tk_syms_add(s, m->unk_id)) return -1;
    if (s->n) s->next[s->n - 1] = -1;
    return 0;
}

/* ---- merging ------------------------------------------------------------- */

/* A candidate merge of the symbol at `pos` with its right neighbour. */
typedef struct { int32_t rank, pos; } tk_cand;
typedef struct { tk_cand *v; size_t n, cap; } tk_heap;

/* HF order: lowest rank first, then leftmost position. */
static int tk_cand_less(tk_cand a, tk_cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static int tk_heap_push(tk_heap *h, tk_cand c)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        tk_cand *v = realloc(h->v, cap * sizeof *v);
        if (!v) return ar_error("tokenizer: out of memory");
        h->v = v, h->cap = cap;
    }
    size_t i = h->n++;
    while (i && tk_cand_less(c, h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = c;
    return 0;
}

static tk_cand tk_heap_pop(tk_heap *h)
{
    tk_cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && tk_cand_less(h->v[c + 1], h->v[c])) c++;
        if (!tk_cand_less(h->v[c], last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* Queue the merge of symbol pos with its right neighbour, if one exists. */
static int tk_queue_pair(const tk_bpe *m, const tk_syms *s, tk_heap *h, int32_t pos)
{
    int32_t merged, nx = pos >= 0 ? s->next[pos] : -1;
    if (nx < 0) return 0;
    int32_t rank = tk_merge_find(m, s->id[pos], s->id[nx], &merged);
    return rank < 0 ? 0 : tk_heap_push(h, (tk_cand){ rank, pos });
}

/* Apply merges until none applies: always the lowest-ranked pair, leftmost
 * first. Stale candidates (a side already merged away) are skipped when
 * popped, so each merge costs O(log n). */
static int tk_merge_all(const tk_bpe *m, tk_syms *s)
{
    tk_heap h = { 0 };
    int rc = 0;
    for (int32_t i = 0; i < (int32_t)s->n && !rc; i++) rc = tk_queue_pair(m, s, &h, i);
    while (!rc && h.n) {
        tk_cand c = tk_heap_pop(&h);
        int32_t merged, nx = s->next[c.pos];
        if (s->id[c.pos] < 0 || nx < 0 || tk_merge_find(m, s->id[c.pos], s->id[nx], &merged) != c.rank)
            continue;
        s->id[c.pos] = merged;
        s->id[nx] = -1;                     /* dead */
        s->next[c.pos] = s->next[nx];
        if (s->next[nx] >= 0) s->prev[s->next[nx]] = c.pos;
        rc = tk_queue_pair(m, s, &h, s->prev[c.pos]);
        if (!rc) rc = tk_queue_pair(m, s, &h, c.pos);
    }
    free(h.v);
    return rc;
}

/* Merge a word from scratch and append the resulting ids to *out. */
static int tk_bpe_uncached(const tk_bpe *m, const char *w, size_t n, tk_ids *out)
{
    tk_syms s = { 0 };
    int rc = tk_word_symbols(m, w, n, &s);
    if (!rc && s.n) rc = tk_merge_all(m, &s);
    for (int32_t i = s.n ? 0 : -1; !rc && i >= 0; i = s.next[i]) rc = tk_ids_add(out, s.id[i]);
    tk_syms_free(&s);
    return rc;
}

int tk_bpe_word(tk_bpe *m, const char *w, size_t n, tk_ids *out)
{
    if (!n) return 0;
    if (m->ignore_merges) {
        int32_t whole = tk_map_get(&m->vocab, w, n);
        if (whole >= 0) return tk_ids_add(out, whole);
    }
    if (n > TK_CACHE_MAX_WORD) return tk_bpe_uncached(m, w, n, out);
    int32_t at = tk_map_get(&m->cache, w, n);
    if (at >= 0) {
        for (int32_t k = 0; k < m->cache_ids.v[at]; k++)
            if (tk_ids_add(out, m->cache_ids.v[at + 1 + k])) return -1;
        return 0;
    }
    size_t first = out->n;
    if (tk_bpe_uncached(m, w, n, out)) return -1;
    if (m->cache.n >= TK_CACHE_MAX_ENTRIES) {
        tk_map_free(&m->cache);
        m->cache_ids.n = 0;
    }
    /* Remember the result: count followed by the ids. */
    at = (int32_t)m->cache_ids.n;
    if (tk_ids_add(&m->cache_ids, (int32_t)(out->n - first))) return -1;
    for (size_t k = first; k < out->n; k++)
        if (tk_ids_add(&m->cache_ids, out->v[k])) return -1;
    return tk_map_put(&m->cache, w, n, at);
}
