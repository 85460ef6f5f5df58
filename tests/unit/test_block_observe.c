/* test_block_observe.c — the linear-input observer of ar_block_work (used for
 * cheap importance-matrix passes): an inference forward with an observer must
 * report, for every linear, exactly the input the training forward saves for
 * that linear's backward (ar_block_acts_input), and leave the output alone. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "block.h"
#include "calib.h"

typedef struct {
    float *seen[AR_NLINEAR];   /* copy of each linear's observed input */
    long rows[AR_NLINEAR];
    int k[AR_NLINEAR], calls[AR_NLINEAR];
} observed;

static void record(void *ctx, int i, const float *x, long rows, int k)
{
    observed *o = ctx;
    o->calls[i]++;
    o->rows[i] = rows;
    o->k[i] = k;
    free(o->seen[i]);
    o->seen[i] = malloc(sizeof(float) * rows * k);
    memcpy(o->seen[i], x, sizeof(float) * rows * k);
}

static float *randn(uint64_t *rng, long n, float sd, float mean)
{
    float *p = malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) {
        double u = ((ar_rand_next(rng) >> 11) + 1.0) / 9007199254740993.0, v = (ar_rand_next(rng) >> 11) / 9007199254740992.0;
        p[i] = mean + sd * (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
    }
    return p;
}

Test(block_observe, inference_observer_sees_the_training_inputs)
{
    omp_set_num_threads(1);
    ar_config c = {0};
    c.hidden = 32, c.intermediate = 48, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8;
    c.rms_eps = 1e-5f, c.rope_theta = 10000.0, c.n_layers = 1;
    uint64_t rng = 5;
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_init(&w, AR_NLINEAR), 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&c, i, &n, &k);
        w.w[i] = randn(&rng, (long)n * k, 0.2f, 0);
    }
    w.attn_norm = randn(&rng, c.hidden, 0.1f, 1);
    w.mlp_norm = randn(&rng, c.hidden, 0.1f, 1);
    const int B = 2, T = 6;
    long nel = (long)B * T * c.hidden;
    float *x = randn(&rng, nel, 1, 0), *y1 = malloc(sizeof(float) * nel), *y2 = malloc(sizeof(float) * nel);
    ar_block_work ws;
    ar_block_acts acts;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 0), 0);
    cr_assert_eq(ar_block_acts_init(&acts, &c, B, T), 0);
    cr_assert_eq(ar_block_forward_train(&c, &w, x, y1, B, T, &ws, &acts), 0);
    observed o = {0};
    ws.observe = record;
    ws.observe_ctx = &o;
    cr_assert_eq(ar_block_forward(&c, &w, x, y2, B, T, &ws), 0);
    /* exact: the same ops on the same shapes (same machine, kernel, threads) */
    cr_assert_eq(memcmp(y1, y2, sizeof(float) * nel), 0, "the observer changed the output");
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(&c, i, &n, &k);
        cr_assert_eq(o.calls[i], 1, "%s observed %d times", ar_linear_names[i], o.calls[i]);
        cr_assert_eq(o.rows[i], (long)B * T);
        cr_assert_eq(o.k[i], k);
        const float *want = ar_block_acts_input(&acts, i);
        for (long j = 0; j < (long)B * T * k; j++)
            cr_assert_eq(o.seen[i][j], want[j], "%s input %ld: %g vs %g", ar_linear_names[i], j, o.seen[i][j], want[j]);
        free(o.seen[i]);
        free(w.w[i]);
    }
    ar_block_work_free(&ws);
    ar_block_acts_free(&acts);
    free(x); free(y1); free(y2); free(w.attn_norm); free(w.mlp_norm);
}
