/* tuned_merge.c — block-range streams read as one (see tuned_merge.h). */
#include "tuned_merge.h"
#include "error.h"
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

struct ar_tuned_merge {
    int n, cur;                 /* streams, the one being read */
    ar_tuned_reader **r;        /* [n], sorted by first block */
    const char **src;           /* [n], in the same order */
};

/* The first key where META objects a and b differ, as "tuning.iters (A x, B
 * y)" into buf; "blocks" is skipped at the top. 1 when they differ. */
static int first_difference(const cJSON *a, const cJSON *b, const char *prefix, const char *sa, const char *sb,
                            char *buf, size_t cap)
{
    for (int pass = 0; pass < 2; pass++) {   /* a's keys, then those only b has */
        const cJSON *x = pass ? b : a, *y = pass ? a : b, *k;
        cJSON_ArrayForEach(k, x) {
            if (!*prefix && !strcmp(k->string, "blocks")) continue;
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(y, k->string);
            if (o && cJSON_Compare(k, o, 1)) continue;
            char path[256];
            snprintf(path, sizeof path, "%.120s%.120s", prefix, k->string);
            if (o && cJSON_IsObject(k) && cJSON_IsObject(o)) {
                char sub[256];
                snprintf(sub, sizeof sub, "%.240s.", path);
                return first_difference(pass ? o : k, pass ? k : o, sub, sa, sb, buf, cap);
            }
            char *va = pass ? (o ? cJSON_PrintUnformatted(o) : NULL) : cJSON_PrintUnformatted(k);
            char *vb = pass ? cJSON_PrintUnformatted(k) : (o ? cJSON_PrintUnformatted(o) : NULL);
            snprintf(buf, cap, "%s (%s %s, %s %s)", path, sa, va ? va : "absent", sb, vb ? vb : "absent");
            free(va);
            free(vb);
            return 1;
        }
    }
    return 0;
}

/* Stream i's META against stream 0's. 0 or -1 with ar_error. */
static int same_settings(const ar_tuned_merge *m, int i)
{
    cJSON *a = cJSON_Parse(ar_tuned_reader_meta(m->r[0])->json), *b = cJSON_Parse(ar_tuned_reader_meta(m->r[i])->json);
    char diff[1024];
    int rc = !a || !b ? ar_error("%s: META is not a JSON object", m->src[i])
             : first_difference(a, b, "", m->src[0], m->src[i], diff, sizeof diff)
                 ? ar_error("%s: META differs from %s's: %s; merged ranges must come from one run's settings",
                            m->src[i], m->src[0], diff)
                 : 0;
    cJSON_Delete(a);
    cJSON_Delete(b);
    return rc;
}

/* Sort by first block (insertion: a few streams). */
static void sort_ranges(ar_tuned_merge *m)
{
    for (int i = 1; i < m->n; i++)
        for (int j = i; j > 0 && ar_tuned_reader_meta(m->r[j])->blocks[0] < ar_tuned_reader_meta(m->r[j - 1])->blocks[0];
             j--) {
            ar_tuned_reader *t = m->r[j]; m->r[j] = m->r[j - 1]; m->r[j - 1] = t;
            const char *s = m->src[j]; m->src[j] = m->src[j - 1]; m->src[j - 1] = s;
        }
}

/* The sorted ranges tile 0..n_layers-1. 0 or -1 with ar_error. */
static int check_tiling(const ar_tuned_merge *m)
{
    int nl = ar_tuned_reader_meta(m->r[0])->n_layers, next = 0;
    for (int i = 0; i < m->n; i++) {
        const int *b = ar_tuned_reader_meta(m->r[i])->blocks;
        if (b[0] < next)
            return ar_error("%s: blocks %d-%d overlap %s's %d-%d", m->src[i], b[0], b[1], m->src[i - 1],
                            ar_tuned_reader_meta(m->r[i - 1])->blocks[0], next - 1);
        if (b[0] > next && i == 0)
            return ar_error("blocks 0-%d are in no stream (%s starts at %d)", b[0] - 1, m->src[0], b[0]);
        if (b[0] > next)
            return ar_error("blocks %d-%d are in no stream (%s ends at %d, %s starts at %d)", next, b[0] - 1,
                            m->src[i - 1], next - 1, m->src[i], b[0]);
        next = b[1] + 1;
    }
    if (next < nl && m->n == 1)
        return ar_error("%s: holds blocks %d-%d of %d and is the only stream: blocks %d-%d are in no stream",
                        m->src[0], ar_tuned_reader_meta(m->r[0])->blocks[0], next - 1, nl, next, nl - 1);
    if (next < nl)
        return ar_error("blocks %d-%d are in no stream (%s ends at %d of the model's 0-%d)", next, nl - 1,
                        m->src[m->n - 1], next - 1, nl - 1);
    return 0;
}

static int check(ar_tuned_merge *m)
{
    for (int i = 0; i < m->n; i++)
        if (ar_tuned_reader_meta(m->r[i])->blocks[0] < 0 && m->n > 1)
            return ar_error("%s: a whole run's stream (no blocks in its META) cannot be merged with others",
                            m->src[i]);
    if (ar_tuned_reader_meta(m->r[0])->blocks[0] < 0) return 0;   /* one whole run */
    sort_ranges(m);
    for (int i = 1; i < m->n; i++)
        if (same_settings(m, i)) return -1;
    return check_tiling(m);
}

ar_tuned_merge *ar_tuned_merge_open(FILE *const *f, const char *const *src, int n)
{
    ar_tuned_merge *m = calloc(1, sizeof *m);
    if (m) m->r = calloc(n, sizeof *m->r), m->src = calloc(n, sizeof *m->src);
    if (!m || !m->r || !m->src) {
        ar_error("out of memory for %d streams", n);
        ar_tuned_merge_close(m);
        return NULL;
    }
    for (; m->n < n; m->n++) {
        m->src[m->n] = src[m->n];
        if (!(m->r[m->n] = ar_tuned_reader_open(f[m->n], src[m->n]))) break;
    }
    if (m->n < n || check(m)) {
        ar_tuned_merge_close(m);
        return NULL;
    }
    return m;
}

const ar_tuned_meta *ar_tuned_merge_meta(const ar_tuned_merge *m) { return ar_tuned_reader_meta(m->r[0]); }

int ar_tuned_merge_next(ar_tuned_merge *m, const ar_tuned_item **it)
{
    for (; m->cur < m->n; m->cur++) {
        int rc = ar_tuned_reader_next(m->r[m->cur], it);
        if (rc) return rc;
    }
    return 0;
}

const char *ar_tuned_merge_source(const ar_tuned_merge *m) { return m->src[m->cur < m->n ? m->cur : m->n - 1]; }

void ar_tuned_merge_close(ar_tuned_merge *m)
{
    if (!m) return;
    for (int i = 0; i < m->n; i++) ar_tuned_reader_close(m->r[i]);
    free(m->r);
    free(m->src);
    free(m);
}
