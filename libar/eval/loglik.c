/* loglik.c — batched continuation log-likelihoods (loglik.h). */
#include "loglik.h"
#include "error.h"
#include "ops.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOGIT_ROWS 128 /* continuation rows sent through lm_head at once */

typedef struct {
    int idx, S;     /* request index; kept tokens (context + continuation, at most max_length + 1) */
} order_item;

static int by_length_desc(const void *a, const void *b)
{
    const order_item *x = a, *y = b;
    if (x->S != y->S) return y->S - x->S;
    return x->idx - y->idx;
}

/* Token k of the kept sequence of request q (its last S tokens). */
static int32_t kept_token(const ar_ll_request *q, int S, int k)
{
    int total = q->nctx + q->ncont, i = total - S + k;
    return i < q->nctx ? q->ctx[i] : q->cont[i - q->nctx];
}

/* One CPU batch: hidden states of the padded ids, then lm_head on the rows
 * that predict continuation tokens only. */
static int cpu_batch(ar_model *m, const ar_ll_request *r, const order_item *it, int nb, int T, const int *ids,
                     double *ll, int *greedy)
{
    const ar_config *c = ar_model_config(m);
    const int C = c->hidden, V = c->vocab;
    float *h = malloc(sizeof(float) * (size_t)nb * T * C);
    float *x = malloc(sizeof(float) * (size_t)LOGIT_ROWS * C), *lg = malloc(sizeof(float) * (size_t)LOGIT_ROWS * V);
    int *tok = malloc(sizeof(int) * LOGIT_ROWS), *own = malloc(sizeof(int) * LOGIT_ROWS);
    int rc = -1;
    if (!h || !x || !lg || !tok || !own) { ar_error("out of memory for a batch of %d x %d tokens", nb, T); goto out; }
    if (ar_model_hidden(m, ids, nb, T, h)) goto out;
    for (int b = 0; b < nb; b++) { ll[it[b].idx] = 0; if (greedy) greedy[it[b].idx] = 1; }
    /* every (request, continuation token) pair, LOGIT_ROWS at a time */
    int rows = 0;
    for (int b = 0; b < nb; b++) {
        const ar_ll_request *q = &r[it[b].idx];
        for (int j = 0; j < q->ncont; j++) {
            /* continuation token j is kept position S - ncont + j, predicted by row S - ncont + j - 1 */
            int p = it[b].S - q->ncont + j - 1;
            memcpy(x + (size_t)rows * C, h + ((size_t)b * T + p) * C, sizeof(float) * C);
            tok[rows] = q->cont[j];
            own[rows] = it[b].idx;
            int end = b == nb - 1 && j == q->ncont - 1;
            if (++rows < LOGIT_ROWS && !end) continue;
            if (ar_model_logits(m, x, rows, lg)) goto out;
            for (int k = 0; k < rows; k++) {
                const float *row = lg + (size_t)k * V;
                double lse = ar_logsumexp(row, V);
                int am = 0;
                for (int v = 1; v < V; v++) if (row[v] > row[am]) am = v;
                ll[own[k]] += (double)row[tok[k]] - lse;
                if (greedy && am != tok[k]) greedy[own[k]] = 0;
            }
            rows = 0;
        }
    }
    rc = 0;
out:
    free(h); free(x); free(lg); free(tok); free(own);
    return rc;
}

static int gpu_batch(ar_model_gpu *g, const ar_ll_request *r, const order_item *it, int nb, int T, const int *ids,
                     double *ll)
{
    double *nll = malloc(sizeof(double) * (size_t)nb * (T - 1));
    if (!nll) return ar_error("out of memory for a batch of %d x %d tokens", nb, T);
    if (ar_model_gpu_nll(g, ids, nb, T, nll)) { free(nll); return -1; }
    for (int b = 0; b < nb; b++) {
        int S = it[b].S, nc = r[it[b].idx].ncont;
        double s = 0;
        for (int t = S - nc - 1; t <= S - 2; t++) s -= nll[(size_t)b * (T - 1) + t];
        ll[it[b].idx] = s;
    }
    free(nll);
    return 0;
}

int ar_loglik(ar_model *m, ar_model_gpu *gpu, const ar_ll_request *r, int n, int max_length, int batch,
              double *ll, int *greedy, void (*progress)(void *arg, int done, int total), void *arg)
{
    if (max_length < 1 || batch < 1) return ar_error("log-likelihood needs max_length >= 1 and batch >= 1");
    order_item *it = malloc(sizeof *it * (size_t)(n ? n : 1));
    if (!it) return ar_error("out of memory for %d requests", n);
    for (int i = 0; i < n; i++) {
        if (r[i].ncont < 1) { free(it); return ar_error("request %d: empty continuation", i); }
        if (r[i].ncont > max_length)
            { free(it); return ar_error("request %d: continuation of %d tokens exceeds the maximum length %d", i, r[i].ncont, max_length); }
        int total = r[i].nctx + r[i].ncont;
        it[i].idx = i;
        it[i].S = total < max_length + 1 ? total : max_length + 1;
        if (it[i].S < 2) { free(it); return ar_error("request %d: needs at least one context token", i); }
    }
    qsort(it, (size_t)n, sizeof *it, by_length_desc);
    int *ids = NULL;
    int rc = 0;
    for (int b0 = 0; b0 < n && !rc; b0 += batch) {
        int nb = n - b0 < batch ? n - b0 : batch, T = it[b0].S;
        free(ids);
        ids = calloc((size_t)nb * T, sizeof(int)); /* padding: id 0 */
        if (!ids) { rc = ar_error("out of memory for a batch of %d x %d tokens", nb, T); break; }
        for (int b = 0; b < nb; b++)
            for (int k = 0; k < it[b0 + b].S; k++) ids[(size_t)b * T + k] = kept_token(&r[it[b0 + b].idx], it[b0 + b].S, k);
        rc = gpu && !greedy ? gpu_batch(gpu, r, it + b0, nb, T, ids, ll)
                            : cpu_batch(m, r, it + b0, nb, T, ids, ll, greedy);
        if (!rc && progress) progress(arg, b0 + nb, n);
    }
    free(ids); free(it);
    return rc;
}
