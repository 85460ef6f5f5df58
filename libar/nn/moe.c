/* moe.c — the mixture-of-experts MLP layer (see moe.h). */
#include "moe.h"
#include "error.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void ar_moe_dims_from_config(ar_moe_dims *d, const ar_config *c)
{
    const ar_moe_config *m = &c->moe;
    *d = (ar_moe_dims){0};
    d->H = c->hidden, d->E = m->n_experts, d->K = m->top_k, d->I = m->expert_intermediate;
    d->scoring = m->scoring, d->topk_method = m->topk_method;
    d->n_group = m->n_group > 0 ? m->n_group : 1;
    d->topk_group = m->topk_group > 0 ? m->topk_group : 1;
    /* DeepSeek-V2's router never reads norm_topk_prob (docs/moe.md §3). */
    d->norm_topk_prob = c->arch == AR_ARCH_DEEPSEEK_V2 ? 0 : m->norm_topk_prob;
    d->scale = m->routed_scaling_factor > 0 ? (float)m->routed_scaling_factor : 1.0f;
    d->swiglu_alpha = (float)m->swiglu_alpha, d->swiglu_limit = (float)m->swiglu_limit;
    d->SI = m->n_shared_experts > 0 ? m->shared_intermediate : 0;
    d->shared_gate = m->shared_expert_gate;
}

int ar_moe_nlinear(const ar_moe_dims *d) { return 3 * d->E + (d->SI > 0 ? 3 : 0); }

/* ------------------------------------------------------------ allocation */

static void alloc_b(void **p, size_t bytes, int *fail)
{
    *p = bytes ? malloc(bytes) : NULL;
    if (bytes && !*p) (*fail)++;
}
#define ALLOC_F(p, n) alloc_b((void **)&(p), sizeof(float) * (size_t)(n), &fail)
#define ALLOC_I(p, n) alloc_b((void **)&(p), sizeof(int) * (size_t)(n), &fail)

int ar_moe_acts_init(ar_moe_acts *a, const ar_moe_dims *d, int cap, int train)
{
    memset(a, 0, sizeof *a);
    if (d->E < 1 || d->K < 1 || d->K > d->E || d->H < 1 || d->I < 1 || d->E % d->n_group ||
        d->topk_group > d->n_group || d->K > 64 || d->n_group > 64 ||
        (d->topk_method == AR_TOPK_NOAUX_TC && d->n_group > 1 && d->E / d->n_group < 2))
        return ar_error("moe: bad shape (experts %d, top-k %d, hidden %d, width %d, groups %d/%d)", d->E, d->K,
                        d->H, d->I, d->topk_group, d->n_group);
    long R = cap, RK = (long)cap * d->K, H = d->H, I = d->I, E = d->E, SI = d->SI;
    int fail = 0;
    a->cap = cap;
    ALLOC_F(a->logits, R * E), ALLOC_F(a->scores, R * E), ALLOC_F(a->wt, RK);
    ALLOC_I(a->sel, RK), ALLOC_I(a->cnt, E + 1), ALLOC_I(a->off, E + 1);
    ALLOC_I(a->slot_of, RK), ALLOC_I(a->row_of, RK);
    ALLOC_F(a->xg, RK * H), ALLOC_F(a->g, RK * I), ALLOC_F(a->u, RK * I);
    ALLOC_F(a->act, RK * I), ALLOC_F(a->eo, RK * H);
    if (SI) {
        ALLOC_F(a->sg, R * SI), ALLOC_F(a->su, R * SI), ALLOC_F(a->sact, R * SI);
        ALLOC_F(a->so, R * H), ALLOC_F(a->sgl, R);
    }
    if (train) {
        ALLOC_F(a->deo, RK * H), ALLOC_F(a->dact, RK * I), ALLOC_F(a->dg, RK * I);
        ALLOC_F(a->du, RK * I), ALLOC_F(a->dlog, R * E), ALLOC_F(a->dxg, RK * H);
        if (SI) ALLOC_F(a->dsg, R * SI), ALLOC_F(a->dsu, R * SI), ALLOC_F(a->dsact, R * SI);
    }
    if (fail) {
        ar_moe_acts_free(a);
        return ar_error("moe: out of memory for %d rows", cap);
    }
    return 0;
}

void ar_moe_acts_free(ar_moe_acts *a)
{
    void *p[] = {a->logits, a->scores, a->wt, a->sel, a->cnt, a->off, a->slot_of, a->row_of, a->xg,
                 a->g, a->u, a->act, a->eo, a->sg, a->su, a->sact, a->so, a->sgl, a->deo, a->dact,
                 a->dg, a->du, a->dsg, a->dsu, a->dsact, a->dlog, a->dxg};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    memset(a, 0, sizeof *a);
}

/* --------------------------------------------------------------- routing */

/* Indices of the k largest of v[n] (those with ok[i] != 0 when ok is given)
 * into idx, by descending value, the lower index first among equals. */
static void topk(const float *v, const unsigned char *ok, int n, int k, int *idx)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (ok && !ok[i]) continue;
            int taken = 0;
            for (int t = 0; t < j && !taken; t++) taken = idx[t] == i;
            if (!taken && (best < 0 || v[i] > v[best])) best = i;
        }
        idx[j] = best;
    }
}

/* Group limitation: ok[e] = 1 for the experts of the topk_group best groups,
 * a group's score being its max (V2) or the sum of its 2 best (V3) of v. */
static void keep_groups(const ar_moe_dims *d, const float *v, unsigned char *ok)
{
    int G = d->n_group, per = d->E / G, gi[64], best[2];
    float gs[64];
    for (int g = 0; g < G; g++) {
        topk(v + g * per, NULL, per, d->topk_method == AR_TOPK_NOAUX_TC ? 2 : 1, best);
        gs[g] = v[g * per + best[0]];
        if (d->topk_method == AR_TOPK_NOAUX_TC) gs[g] += v[g * per + best[1]];
    }
    topk(gs, NULL, G, d->topk_group, gi);
    memset(ok, 0, (size_t)d->E);
    for (int j = 0; j < d->topk_group; j++) memset(ok + gi[j] * per, 1, (size_t)per);
}

static void softmax_row(float *out, const float *x, int n)
{
    float m = x[0], s = 0;
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) s += out[i] = expf(x[i] - m);
    for (int i = 0; i < n; i++) out[i] /= s;
}

/* One row: scores [E], sel, wt [K]. choice [E] and ok [E] are scratch. */
static void route_row(const ar_moe_dims *d, const float *lg, const float *sb, float *sc, int *sel, float *wt,
                      float *choice, unsigned char *ok)
{
    int E = d->E, K = d->K, grouped = d->topk_method != AR_TOPK_GREEDY && d->n_group > 1;
    if (d->scoring == AR_ROUTER_TOPK_SOFTMAX) {
        memcpy(sc, lg, sizeof(float) * E);
        topk(sc, NULL, E, K, sel);
        for (int k = 0; k < K; k++) choice[k] = sc[sel[k]];
        softmax_row(wt, choice, K);
        return;
    }
    if (d->scoring == AR_ROUTER_SIGMOID)
        for (int e = 0; e < E; e++) sc[e] = 1.0f / (1.0f + expf(-lg[e]));
    else softmax_row(sc, lg, E);
    for (int e = 0; e < E; e++) choice[e] = sc[e] + (sb ? sb[e] : 0.0f);
    if (grouped) keep_groups(d, choice, ok);
    topk(choice, grouped ? ok : NULL, E, K, sel);
    float sum = 0;
    for (int k = 0; k < K; k++) sum += wt[k] = sc[sel[k]];
    if (d->norm_topk_prob) {
        if (d->scoring == AR_ROUTER_SIGMOID) sum += 1e-20f;
        for (int k = 0; k < K; k++) wt[k] /= sum;
    }
    for (int k = 0; k < K; k++) wt[k] *= d->scale;
}

void ar_moe_route(const ar_moe_dims *d, const float *logits, const float *score_bias, int R, float *scores,
                  int *sel, float *wt)
{
#pragma omp parallel
    {
        float *choice = malloc(sizeof(float) * (size_t)d->E);
        unsigned char *ok = malloc((size_t)d->E);
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++)
            route_row(d, logits + (size_t)r * d->E, score_bias, scores + (size_t)r * d->E, sel + (size_t)r * d->K,
                      wt + (size_t)r * d->K, choice, ok);
        free(choice);
        free(ok);
    }
}

void ar_moe_route_backward(const ar_moe_dims *d, const float *dwt, const float *scores, const int *sel,
                           const float *wt, int R, float *dlogits)
{
    int E = d->E, K = d->K;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *dw = dwt + (size_t)r * K, *w = wt + (size_t)r * K, *sc = scores + (size_t)r * E;
        const int *s = sel + (size_t)r * K;
        float *dl = dlogits + (size_t)r * E, ds[64];
        memset(dl, 0, sizeof(float) * E);
        if (d->scoring == AR_ROUTER_TOPK_SOFTMAX) {
            /* wt = softmax(logits[sel]): dl = wt (dw - Σ dw wt) */
            float dot = 0;
            for (int k = 0; k < K; k++) dot += dw[k] * w[k];
            for (int k = 0; k < K; k++) dl[s[k]] = w[k] * (dw[k] - dot);
            continue;
        }
        /* wt = scale · v, v = sc[sel] / D (D = Σ sc[sel] (+1e-20)) or v = sc[sel]:
         * dsc[sel_j] = (dv_j - Σ_k dv_k v_k) / D with dv = scale dw. */
        float sum = 0, dot = 0;
        for (int k = 0; k < K; k++) sum += sc[s[k]];
        for (int k = 0; k < K; k++) ds[k] = d->scale * dw[k];
        if (d->norm_topk_prob) {
            if (d->scoring == AR_ROUTER_SIGMOID) sum += 1e-20f;
            for (int k = 0; k < K; k++) dot += ds[k] * (sc[s[k]] / sum);
            for (int k = 0; k < K; k++) ds[k] = (ds[k] - dot) / sum;
        }
        if (d->scoring == AR_ROUTER_SIGMOID) {
            for (int k = 0; k < K; k++) dl[s[k]] = ds[k] * sc[s[k]] * (1 - sc[s[k]]);
            continue;
        }
        /* softmax over all E: dl_e = p_e (dp_e - Σ_k dp_k p_sel_k), dp zero off sel */
        float pd = 0;
        for (int k = 0; k < K; k++) pd += ds[k] * sc[s[k]];
        for (int e = 0; e < E; e++) dl[e] = -sc[e] * pd;
        for (int k = 0; k < K; k++) dl[s[k]] += sc[s[k]] * ds[k];
    }
}

/* ------------------------------------------------------------ activation */

/* gpt-oss's clamped SwiGLU, or silu(g)·u when limit is 0. */
static void glu_forward(const ar_moe_dims *d, float *out, const float *g, const float *u, long n)
{
    if (d->swiglu_limit <= 0) { ar_swiglu_forward(out, g, u, n); return; }
    float L = d->swiglu_limit, al = d->swiglu_alpha;
    for (long i = 0; i < n; i++) {
        float gc = g[i] < L ? g[i] : L, uc = u[i] < -L ? -L : u[i] > L ? L : u[i];
        out[i] = (uc + 1) * (gc / (1 + expf(-al * gc)));
    }
}

/* dg, du [n] += (torch's clamp passes the gradient where min <= x <= max) */
static void glu_backward(const ar_moe_dims *d, float *dg, float *du, const float *dout, const float *g,
                         const float *u, long n)
{
    if (d->swiglu_limit <= 0) { ar_swiglu_backward(dg, du, dout, g, u, n); return; }
    float L = d->swiglu_limit, al = d->swiglu_alpha;
    for (long i = 0; i < n; i++) {
        float gc = g[i] < L ? g[i] : L, uc = u[i] < -L ? -L : u[i] > L ? L : u[i];
        float sg = 1 / (1 + expf(-al * gc)), glu = gc * sg;
        if (g[i] <= L) dg[i] += dout[i] * (uc + 1) * (sg + al * gc * sg * (1 - sg));
        if (u[i] >= -L && u[i] <= L) du[i] += dout[i] * glu;
    }
}

/* -------------------------------------------------------- expert parallel */

void ar_moe_ep_range(int E, int r, int n, int *e0, int *e1)
{
    *e0 = (int)((long)E * r / n), *e1 = (int)((long)E * (r + 1) / n);
}

/* The experts this call computes: a's rank's share, or all. */
static void own_experts(const ar_moe_dims *d, const ar_moe_acts *a, int *e0, int *e1)
{
    if (a->ep && a->ep->size > 1) ar_moe_ep_range(d->E, a->ep->rank, a->ep->size, e0, e1);
    else *e0 = 0, *e1 = d->E;
}

/* buf [RK, width] in expert order: every rank's experts' rows, computed by
 * that rank, to every rank (one all-gather; the ranks' row ranges are
 * contiguous and in rank order). 0 or -1 (ar_error). */
static int ep_gather(const ar_moe_dims *d, ar_moe_acts *a, float *buf, int width)
{
    ar_moe_ep *ep = a->ep;
    if (!ep || ep->size <= 1) return 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t *counts = malloc(sizeof(size_t) * (size_t)ep->size), row = sizeof(float) * (size_t)width;
    int e0, e1;
    ar_moe_ep_range(d->E, ep->rank, ep->size, &e0, &e1);
    size_t mine = (size_t)(a->off[e1] - a->off[e0]) * row;
    void *send = malloc(mine + 1);
    if (!counts || !send) {
        free(counts), free(send);
        return ar_error("moe: out of memory for the expert exchange");
    }
    double got = 0;
    for (int r = 0; r < ep->size; r++) {
        int r0, r1;
        ar_moe_ep_range(d->E, r, ep->size, &r0, &r1);
        counts[r] = (size_t)(a->off[r1] - a->off[r0]) * row;
        if (r != ep->rank) got += (double)counts[r];
    }
    memcpy(send, (char *)buf + (size_t)a->off[e0] * row, mine);
    int rc = ep->allgather(ep->ctx, send, buf, counts);
    free(counts), free(send);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ep->bytes += got;
    ep->seconds += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return rc;
}

/* --------------------------------------------------------------- forward */

/* cnt/off per expert and the assignment <-> expert-order row maps. */
static void dispatch(const ar_moe_dims *d, int R, ar_moe_acts *a)
{
    int E = d->E, K = d->K, RK = R * K;
    memset(a->cnt, 0, sizeof(int) * (size_t)(E + 1));
    for (int j = 0; j < RK; j++) a->cnt[a->sel[j]]++;
    a->off[0] = 0;
    for (int e = 0; e < E; e++) a->off[e + 1] = a->off[e] + a->cnt[e];
    /* cnt serves as each expert's fill cursor, then holds its count again */
    for (int e = 0; e < E; e++) a->cnt[e] = a->off[e];
    for (int j = 0; j < RK; j++) { /* ascending rows within each expert */
        int s = a->cnt[a->sel[j]]++;
        a->slot_of[j] = s, a->row_of[s] = j / K;
    }
    for (int e = 0; e < E; e++) a->cnt[e] = a->off[e + 1] - a->off[e];
}

static void observe(ar_moe_acts *a, int i, const float *x, long rows, int k)
{
    if (a->observe && rows > 0) a->observe(a->observe_ctx, a->lin0 + i, x, rows, k);
}

static const float *bias(const ar_moe_weights *w, int i) { return w->b ? w->b[i] : NULL; }

/* Expert e on its rows of a->xg: g, u, act, eo. */
static int expert_forward(const ar_moe_dims *d, const ar_moe_weights *w, ar_moe_acts *a, int e)
{
    int n = a->cnt[e], o = a->off[e], H = d->H, I = d->I, i0 = 3 * e;
    if (!n) return 0;
    const float *x = a->xg + (size_t)o * H;
    float *g = a->g + (size_t)o * I, *u = a->u + (size_t)o * I, *act = a->act + (size_t)o * I;
    observe(a, i0, x, n, H), observe(a, i0 + 1, x, n, H);
    if (ar_linear_forward_g(a->gemm, g, x, w->w[i0], bias(w, i0), n, H, I) ||
        ar_linear_forward_g(a->gemm, u, x, w->w[i0 + 1], bias(w, i0 + 1), n, H, I))
        return -1;
    glu_forward(d, act, g, u, (long)n * I);
    observe(a, i0 + 2, act, n, I);
    return ar_linear_forward_g(a->gemm, a->eo + (size_t)o * H, act, w->w[i0 + 2], bias(w, i0 + 2), n, I, H);
}

/* y += shared(x) · (sigmoid(shared_gate · x) or 1). */
static int shared_forward(const ar_moe_dims *d, const ar_moe_weights *w, const float *x, float *y, int R,
                          ar_moe_acts *a)
{
    int H = d->H, SI = d->SI, i0 = 3 * d->E;
    observe(a, i0, x, R, H), observe(a, i0 + 1, x, R, H);
    if (ar_linear_forward_g(a->gemm, a->sg, x, w->w[i0], bias(w, i0), R, H, SI) ||
        ar_linear_forward_g(a->gemm, a->su, x, w->w[i0 + 1], bias(w, i0 + 1), R, H, SI))
        return -1;
    ar_swiglu_forward(a->sact, a->sg, a->su, (long)R * SI);
    observe(a, i0 + 2, a->sact, R, SI);
    if (ar_linear_forward_g(a->gemm, a->so, a->sact, w->w[i0 + 2], bias(w, i0 + 2), R, SI, H)) return -1;
    if (d->shared_gate) ar_linear_forward(a->sgl, x, w->shared_gate, NULL, R, H, 1);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        float gv = d->shared_gate ? 1 / (1 + expf(-a->sgl[r])) : 1.0f;
        for (int c = 0; c < H; c++) y[(size_t)r * H + c] += gv * a->so[(size_t)r * H + c];
    }
    return 0;
}

int ar_moe_forward(const ar_moe_dims *d, const ar_moe_weights *w, const float *x, float *y, int R,
                   ar_moe_acts *a)
{
    if (R < 1 || R > a->cap) return ar_error("moe: %d rows exceed the capacity %d", R, a->cap);
    int H = d->H, K = d->K;
    a->R = R, a->x = x;
    ar_linear_forward(a->logits, x, w->router, w->router_b, R, H, d->E);
    ar_moe_route(d, a->logits, w->score_bias, R, a->scores, a->sel, a->wt);
    dispatch(d, R, a);
#pragma omp parallel for schedule(static)
    for (int s = 0; s < R * K; s++) memcpy(a->xg + (size_t)s * H, x + (size_t)a->row_of[s] * H, sizeof(float) * H);
    int e0, e1;
    own_experts(d, a, &e0, &e1);
    for (int e = e0; e < e1; e++)
        if (expert_forward(d, w, a, e)) return -1;
    if (ep_gather(d, a, a->eo, H)) return -1;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        float *yr = y + (size_t)r * H;
        memset(yr, 0, sizeof(float) * H);
        for (int k = 0; k < K; k++) {
            const float *eo = a->eo + (size_t)a->slot_of[r * K + k] * H;
            float wk = a->wt[r * K + k];
            for (int c = 0; c < H; c++) yr[c] += wk * eo[c];
        }
    }
    return d->SI ? shared_forward(d, w, x, y, R, a) : 0;
}

int ar_moe_unrouted(const ar_moe_dims *d, const ar_moe_acts *a)
{
    int n = 0;
    for (int e = 0; e < d->E; e++) n += a->cnt[e] == 0;
    return n;
}

/* -------------------------------------------------------------- backward */

static float *dw_of(float *const *dW, int i) { return dW ? dW[i] : NULL; }

/* Expert e: from deo (its rows), dW of its linears and dxg of its rows. */
static int expert_backward(const ar_moe_dims *d, const ar_moe_weights *w, ar_moe_acts *a, float *const *dW,
                           int e)
{
    int n = a->cnt[e], o = a->off[e], H = d->H, I = d->I, i0 = 3 * e;
    if (!n) return 0;
    size_t oi = (size_t)o * I, oh = (size_t)o * H;
    memset(a->dact + oi, 0, sizeof(float) * n * I);
    memset(a->dg + oi, 0, sizeof(float) * n * I);
    memset(a->du + oi, 0, sizeof(float) * n * I);
    memset(a->dxg + oh, 0, sizeof(float) * n * H);
    ar_gemm *G = a->gemm;
    if (ar_linear_backward_g(G, a->dact + oi, dw_of(dW, i0 + 2), NULL, a->deo + oh, a->act + oi, w->w[i0 + 2], n,
                             I, H))
        return -1;
    glu_backward(d, a->dg + oi, a->du + oi, a->dact + oi, a->g + oi, a->u + oi, (long)n * I);
    if (ar_linear_backward_g(G, a->dxg + oh, dw_of(dW, i0), NULL, a->dg + oi, a->xg + oh, w->w[i0], n, H, I))
        return -1;
    return ar_linear_backward_g(G, a->dxg + oh, dw_of(dW, i0 + 1), NULL, a->du + oi, a->xg + oh, w->w[i0 + 1], n,
                                H, I);
}

/* Shared expert and its gate: dW, and dx += (dx may be NULL). */
static int shared_backward(const ar_moe_dims *d, const ar_moe_weights *w, ar_moe_acts *a, const float *dy,
                           float *const *dW, float *dx)
{
    int R = a->R, H = d->H, SI = d->SI, i0 = 3 * d->E;
    float *dso = a->deo;   /* [R, H] fits in [RK, H]; the experts are done with it */
    float *dsgl = a->dlog; /* [R] fits in [R, E]; the router is done with it */
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *dyr = dy + (size_t)r * H, *so = a->so + (size_t)r * H;
        float gv = 1, dot = 0;
        if (d->shared_gate) gv = 1 / (1 + expf(-a->sgl[r]));
        for (int c = 0; c < H; c++) dso[(size_t)r * H + c] = gv * dyr[c], dot += dyr[c] * so[c];
        dsgl[r] = dot * gv * (1 - gv);
    }
    memset(a->dsact, 0, sizeof(float) * R * SI);
    memset(a->dsg, 0, sizeof(float) * R * SI);
    memset(a->dsu, 0, sizeof(float) * R * SI);
    if (ar_linear_backward_g(a->gemm, a->dsact, dw_of(dW, i0 + 2), NULL, dso, a->sact, w->w[i0 + 2], R, SI, H))
        return -1;
    ar_swiglu_backward(a->dsg, a->dsu, a->dsact, a->sg, a->su, (long)R * SI);
    if (ar_linear_backward_g(a->gemm, dx, dw_of(dW, i0), NULL, a->dsg, a->x, w->w[i0], R, H, SI) ||
        ar_linear_backward_g(a->gemm, dx, dw_of(dW, i0 + 1), NULL, a->dsu, a->x, w->w[i0 + 1], R, H, SI))
        return -1;
    if (d->shared_gate && dx) ar_linear_backward(dx, NULL, NULL, dsgl, a->x, w->shared_gate, R, H, 1);
    return 0;
}

int ar_moe_backward(const ar_moe_dims *d, const ar_moe_weights *w, ar_moe_acts *a, const float *dy,
                    float *const *dW, float *dx)
{
    if (!a->deo) return ar_error("moe: backward needs activations allocated for training");
    int R = a->R, H = d->H, K = d->K, E = d->E;
    float *dw = malloc(sizeof(float) * (size_t)R * K);
    if (!dw) return ar_error("moe: out of memory");
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *dyr = dy + (size_t)r * H;
        for (int k = 0; k < K; k++) {
            int s = a->slot_of[r * K + k];
            const float *eo = a->eo + (size_t)s * H;
            float *de = a->deo + (size_t)s * H, wk = a->wt[r * K + k], dot = 0;
            for (int c = 0; c < H; c++) de[c] = wk * dyr[c], dot += dyr[c] * eo[c];
            dw[r * K + k] = dot;
        }
    }
    int rc = 0, e0, e1;
    own_experts(d, a, &e0, &e1);
    for (int e = e0; !rc && e < e1; e++) rc = expert_backward(d, w, a, dW, e);
    /* dx needs every expert's dxg; every rank calls the exchange alike (dx
     * NULL or not is the same on all ranks) */
    if (!rc && dx) rc = ep_gather(d, a, a->dxg, H);
    if (!rc && dx) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++) {
                const float *g = a->dxg + (size_t)a->slot_of[r * K + k] * H;
                for (int c = 0; c < H; c++) dx[(size_t)r * H + c] += g[c];
            }
        ar_moe_route_backward(d, dw, a->scores, a->sel, a->wt, R, a->dlog);
        ar_linear_backward(dx, NULL, NULL, a->dlog, a->x, w->router, R, H, E);
    }
    free(dw);
    return rc ? -1 : d->SI ? shared_backward(d, w, a, dy, dW, dx) : 0;
}
