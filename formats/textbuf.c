#include "textbuf.h"
#include <stdlib.h>
#include <string.h>

void ar_textbuf_add(ar_textbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *t = realloc(b->p, cap);
        if (!t) { b->oom = 1; return; }
        b->p = t;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void ar_textbuf_str(ar_textbuf *b, const char *s) { ar_textbuf_add(b, s, strlen(s)); }
