/* test_moe_ep.c — expert parallel in the MoE layer (moe.h, ar_moe_ep): N
 * ranks, simulated by threads (fake_ranks.h), each computing only its routed
 * experts [E·r/N, E·(r+1)/N) and all-gathering the routed rows, give every
 * rank the one-process forward output y and input gradient dx bit for bit,
 * and each rank the one-process weight gradients of its own experts; the
 * other ranks' experts' gradients stay untouched. The bytes each rank
 * receives are the other ranks' routed rows, forward (expert outputs) and
 * backward (their input gradients): Σ_{r' ≠ r} rows(r')·H·4 twice.
 * The one-process reference is the same library call (test_moe checks that
 * call against a double-precision reference); equality here is exact because
 * a rank runs each of its experts' GEMMs on the same rows with the same
 * thread count, and the sums over k are the same code in the same order.
 * Without the exchange the other experts' rows would be missing from y:
 * checked by running the ranks with an all-gather that copies nothing. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "fake_ranks.h"
#include "moe.h"

enum { R = 40, H = 16, E = 8, I = 12, SI = 8, NL = 3 * E + 3, MAXN = 9 };

static unsigned rng = 77;
static float urand(void) /* uniform [-0.5, 0.5) */
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) / 16777216.0 - 0.5);
}

typedef struct {
    ar_moe_dims d;
    float *w[NL], *b[NL], router[E * H], score_bias[E], x[R * H], dy[R * H];
} layer;

static void make_layer(layer *L, ar_moe_dims d)
{
    memset(L, 0, sizeof *L);
    L->d = d;
    for (int i = 0; i < E * H; i++) L->router[i] = 3 * urand();
    for (int i = 0; i < E; i++) L->score_bias[i] = 0.3f * urand();
    for (int i = 0; i < ar_moe_nlinear(&d); i++) {
        int shared = i >= 3 * E, width = shared ? SI : I, n = width * H;
        L->w[i] = malloc(sizeof(float) * n);
        for (int j = 0; j < n; j++) L->w[i][j] = 0.8f * urand();
    }
    for (int i = 0; i < R * H; i++) L->x[i] = 2 * urand(), L->dy[i] = urand();
}

static void free_layer(layer *L)
{
    for (int i = 0; i < NL; i++) free(L->w[i]);
}

/* One forward + backward: y, dx [R, H], dW[i] (size of w[i]; pre-filled by the caller). */
typedef struct {
    layer *L;
    float y[R * H], dx[R * H], *dW[NL];
    double bytes;
    int rc, rank;
    int broken;            /* the all-gather copies nothing (the negative check) */
} run;

static int no_gather(void *ctx, const void *send, void *recv, const size_t *counts)
{
    (void)ctx, (void)send, (void)recv, (void)counts;
    return 0;
}

static int layer_run(run *u, ar_moe_ep *ep)
{
    layer *L = u->L;
    ar_moe_acts a;
    ar_moe_weights w = {.router = L->router, .score_bias = L->d.scoring == AR_ROUTER_SIGMOID ? L->score_bias : NULL,
                        .w = L->w, .b = NULL};
    if (ar_moe_acts_init(&a, &L->d, R, 1)) return -1;
    a.ep = ep;
    /* fresh buffers may hold an earlier run's rows: zeros, so a missing exchange shows */
    memset(a.eo, 0, sizeof(float) * R * L->d.K * H), memset(a.dxg, 0, sizeof(float) * R * L->d.K * H);
    memset(u->dx, 0, sizeof u->dx);
    int rc = ar_moe_forward(&L->d, &w, L->x, u->y, R, &a) || ar_moe_backward(&L->d, &w, &a, L->dy, u->dW, u->dx);
    ar_moe_acts_free(&a);
    return rc ? -1 : 0;
}

static int rank_fn(void *ctx, ar_reducer *rd)
{
    run *u = ctx;
    ar_moe_ep ep = {rd->rank, rd->size, rd->ctx, u->broken ? no_gather : rd->allgather, 0, 0};
    u->rank = rd->rank;
    u->rc = layer_run(u, &ep);
    u->bytes = ep.bytes;
    return u->rc;
}

static void alloc_grads(run *u, const layer *L, float fill)
{
    for (int i = 0; i < ar_moe_nlinear(&L->d); i++) {
        int n = (i >= 3 * E ? SI : I) * H;
        u->dW[i] = malloc(sizeof(float) * n);
        for (int j = 0; j < n; j++) u->dW[i][j] = fill;
    }
}

static void free_grads(run *u)
{
    for (int i = 0; i < NL; i++) free(u->dW[i]), u->dW[i] = NULL;
}

static void check_ranks(ar_moe_dims d)
{
    layer L;
    make_layer(&L, d);
    int nl = ar_moe_nlinear(&d);
    run *one = calloc(1, sizeof *one);
    one->L = &L;
    alloc_grads(one, &L, 0);
    cr_assert_eq(layer_run(one, NULL), 0);
    /* rows per expert in the one-process routing (for the expected bytes) */
    ar_moe_acts a;
    ar_moe_weights w = {.router = L.router, .score_bias = d.scoring == AR_ROUTER_SIGMOID ? L.score_bias : NULL,
                        .w = L.w};
    float *y = malloc(sizeof(float) * R * H);
    cr_assert_eq(ar_moe_acts_init(&a, &d, R, 0), 0);
    cr_assert_eq(ar_moe_forward(&d, &w, L.x, y, R, &a), 0);
    for (int n = 2; n <= MAXN; n++) {
        run *u = calloc(n, sizeof *u);
        for (int r = 0; r < n; r++) {   /* own gradients from 0 (the backward adds); the others' stay -7 */
            int e0, e1;
            ar_moe_ep_range(E, r, n, &e0, &e1);
            u[r].L = &L, alloc_grads(&u[r], &L, -7.0f);
            for (int i = 0; i < nl; i++)
                if (i >= 3 * E || (i / 3 >= e0 && i / 3 < e1))
                    memset(u[r].dW[i], 0, sizeof(float) * (i >= 3 * E ? SI : I) * H);
        }
        cr_assert_eq(fake_ranks_run(n, rank_fn, u, sizeof *u), 0, "%d ranks failed", n);
        for (int r = 0; r < n; r++) {
            cr_assert_eq(memcmp(u[r].y, one->y, sizeof one->y), 0, "%d ranks: rank %d's y differs", n, r);
            cr_assert_eq(memcmp(u[r].dx, one->dx, sizeof one->dx), 0, "%d ranks: rank %d's dx differs", n, r);
            int e0, e1;
            ar_moe_ep_range(E, r, n, &e0, &e1);
            for (int i = 0; i < nl; i++) {
                int e = i < 3 * E ? i / 3 : -1, sz = (i >= 3 * E ? SI : I) * H;
                if (e < 0 || (e >= e0 && e < e1)) {
                    cr_assert_eq(memcmp(u[r].dW[i], one->dW[i], sizeof(float) * sz), 0,
                                 "%d ranks: rank %d's gradient of linear %d differs", n, r, i);
                } else {
                    for (int j = 0; j < sz; j++)
                        cr_assert_eq(u[r].dW[i][j], -7.0f, "%d ranks: rank %d wrote expert %d's gradient", n, r, e);
                }
            }
            long others = 0;
            for (int q = 0; q < n; q++) {
                int q0, q1;
                ar_moe_ep_range(E, q, n, &q0, &q1);
                if (q != r) others += a.off[q1] - a.off[q0];
            }
            cr_assert_eq(u[r].bytes, 2.0 * others * H * 4, "%d ranks: rank %d received %.0f bytes, expected %ld", n, r,
                         u[r].bytes, 2 * others * H * 4);
        }
        for (int r = 0; r < n; r++) free_grads(&u[r]);
        free(u);
    }
    /* the negative check: 2 ranks that exchange nothing do not give y */
    run *u = calloc(2, sizeof *u);
    for (int r = 0; r < 2; r++) u[r].L = &L, u[r].broken = 1, alloc_grads(&u[r], &L, 0);
    cr_assert_eq(fake_ranks_run(2, rank_fn, u, sizeof *u), 0);
    cr_assert_neq(memcmp(u[0].y, one->y, sizeof one->y), 0, "without the exchange y is the same: the test cannot fail");
    for (int r = 0; r < 2; r++) free_grads(&u[r]);
    free(u);
    ar_moe_acts_free(&a);
    free(y);
    free_grads(one);
    free(one);
    free_layer(&L);
}

static ar_moe_dims dims(ar_router_scoring sc, ar_topk_method tm, int K)
{
    return (ar_moe_dims){.H = H, .E = E, .K = K, .I = I, .scoring = sc, .topk_method = tm, .n_group = 1,
                         .topk_group = 1, .norm_topk_prob = 1, .scale = 1};
}

Test(moe_ep, qwen3_moe_ranks_give_one_process_bits) { check_ranks(dims(AR_ROUTER_SOFTMAX, AR_TOPK_GREEDY, 2)); }

Test(moe_ep, deepseek_v3_shared_groups_ranks_give_one_process_bits)
{
    ar_moe_dims d = dims(AR_ROUTER_SIGMOID, AR_TOPK_NOAUX_TC, 3);
    d.n_group = 4, d.topk_group = 2, d.scale = 2.5f, d.SI = SI;
    check_ranks(d);
}
