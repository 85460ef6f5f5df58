/* amp_moe_routes.c — how far ar's AMP (bf16 GEMMs, gemm.h) moves the routing
 * and the routed experts' gradients of an MoE model's "moe"-family layers
 * (issue 17, docs/moe.md §14).
 *
 * B x T token ids drawn uniformly from the vocabulary are embedded and run
 * through the model's layers with f32 GEMMs; at each "moe" layer one
 * training forward and backward (dy Gaussian, 1e-2) runs twice on the same
 * input, with an f32 and with a bf16 GEMM context. Printed per layer:
 *  - rows whose selected expert set differs between the two runs;
 *  - the largest relative L2 difference of dW (bf16 against f32) among the
 *    non-routed linears, the routed experts whose rows are the same in both
 *    runs, and the experts that gained or lost a row.
 * A bf16 wiring error in a routed expert's backward would show as an O(1)
 * difference in the "same rows" column; bf16's own rounding gives a few
 * 2^-8 (test_gemm.c bounds one product).
 * Usage: amp_moe_routes MODEL_DIR... Prints figures; fails only on errors
 * (and where the build has no bf16 GEMMs). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "block_desc.h"
#include "error.h"
#include "gemm.h"
#include "model.h"
#include "moe.h"

enum { B = 8, T = 128 };

static unsigned rng_state = 4242;
static unsigned lcg(void) { return rng_state = rng_state * 1664525u + 1013904223u; }
static float gauss(void) /* Box-Muller on the LCG: deterministic inputs */
{
    double u0 = ((lcg() >> 8) + 0.5) / 16777216.0, u1 = ((lcg() >> 8) + 0.5) / 16777216.0;
    return (float)(sqrt(-2 * log(u0)) * cos(6.283185307179586 * u1));
}

static double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / (den > 0 ? den : 1));
}

typedef struct {
    float *y, **dW;
    int *sel; /* [B*T, K] the forward's selected experts */
} run_out;

static int die(const char *what)
{
    fprintf(stderr, "amp_moe_routes: %s: %s\n", what, ar_last_error());
    exit(1);
}

/* One training forward and backward of layer (desc d) on x with GEMMs g. */
static void run(const ar_config *c, const ar_block_desc *d, const ar_block_weights *w, const float *x,
                const float *dy, ar_gemm *g, int K, run_out *o)
{
    size_t n = (size_t)B * T * c->hidden;
    ar_block_work ws;
    ar_block_acts a;
    if (ar_block_work_init(&ws, c, B, T, 1) || ar_block_acts_init(&a, c, B, T)) die("workspace");
    ws.gemm = g;
    float *dx = calloc(n, sizeof(float));
    o->y = malloc(sizeof(float) * n), o->dW = calloc(d->nlinear, sizeof(float *));
    o->sel = malloc(sizeof(int) * B * T * K);
    if (!dx || !o->y || !o->dW || !o->sel) die("out of memory");
    for (int i = 0; i < d->nlinear; i++)
        if (!(o->dW[i] = calloc((size_t)d->lin[i].n_out * d->lin[i].k_in, sizeof(float)))) die("out of memory");
    if (d->forward_train(c, w, x, o->y, B, T, &ws, &a)) die("forward");
    if (K) memcpy(o->sel, a.moe->sel, sizeof(int) * B * T * K); /* K 0: not a "moe" layer */
    if (d->backward(c, w, &a, dy, o->dW, dx, NULL, &ws)) die("backward");
    free(dx);
    ar_block_acts_free(&a);
    ar_block_work_free(&ws);
}

static void out_free(run_out *o, int nl)
{
    for (int i = 0; i < nl; i++) free(o->dW[i]);
    free(o->dW), free(o->y), free(o->sel);
}

/* Experts whose row set differs: chg[e] = 1. Returns the rows that moved. */
static int moved_rows(const int *s16, const int *s32, int R, int K, unsigned char *chg)
{
    int moved = 0;
    for (int r = 0; r < R; r++) {
        int same = 1;
        for (int k = 0; k < K; k++) {
            int found = 0;
            for (int j = 0; j < K; j++) found |= s16[r * K + k] == s32[r * K + j];
            same &= found;
        }
        if (same) continue;
        moved++;
        for (int k = 0; k < K; k++) chg[s16[r * K + k]] = chg[s32[r * K + k]] = 1;
    }
    return moved;
}

static void layer_report(const char *dir, ar_model *m, const ar_config *mc, int layer, float *x, const float *dy)
{
    ar_config c;
    ar_config_for_layer(&c, mc, layer);
    ar_block_desc d;
    if (ar_block_desc_init_layer(&d, &c, layer)) die(dir);
    ar_block_weights w = {0};
    if (ar_block_weights_alloc_layer(&w, mc, layer) || ar_model_load_block(m, layer, &w)) die(dir);
    ar_moe_dims md;
    ar_moe_dims_from_config(&md, &c);
    int moe = !strcmp(d.family, "moe"), K = md.K, E = md.E;
    ar_gemm g32, g16;
    if (ar_gemm_init(&g32, 0) || ar_gemm_init(&g16, 1)) die("gemm");
    run_out r32, r16;
    run(&c, &d, &w, x, dy, &g32, moe ? K : 0, &r32);
    if (moe) {
        run(&c, &d, &w, x, dy, &g16, K, &r16);
        unsigned char *chg = calloc(E, 1);
        int moved = moved_rows(r16.sel, r32.sel, B * T, K, chg), i0 = -1, nchg = 0;
        for (int i = 0; i < d.nlinear && i0 < 0; i++)
            if (d.input_kind[d.lin[i].input] == AR_INPUT_ROUTED) i0 = i;
        double mx[3] = {0, 0, 0};
        for (int i = 0; i < d.nlinear; i++) {
            int ex = i0 >= 0 && i >= i0 && i < i0 + 3 * E ? (i - i0) / 3 : -1, k = ex < 0 ? 0 : chg[ex] ? 2 : 1;
            double e = rel_l2(r16.dW[i], r32.dW[i], (size_t)d.lin[i].n_out * d.lin[i].k_in);
            if (e > mx[k]) mx[k] = e;
        }
        for (int e = 0; e < E; e++) nchg += chg[e];
        printf("%s layer %d: %d of %d rows routed differently (%.2f%%); dW bf16 vs f32 (relative L2, max): "
               "non-routed %.2e, %d experts with the same rows %.2e, %d with changed rows %.2e\n",
               dir, layer, moved, B * T, 100.0 * moved / (B * T), mx[0], E - nchg, mx[1], nchg, mx[2]);
        free(chg);
        out_free(&r16, d.nlinear);
    } else printf("%s layer %d: %s family, not measured\n", dir, layer, d.family);
    memcpy(x, r32.y, sizeof(float) * B * T * c.hidden); /* the next layer's input: the f32 chain */
    out_free(&r32, d.nlinear);
    ar_gemm_free(&g32), ar_gemm_free(&g16);
    ar_block_weights_free(&w);
    ar_block_desc_free(&d);
}

int main(int argc, char **argv)
{
    if (!ar_gemm_bf16_supported()) {
        fprintf(stderr, "amp_moe_routes: no bf16 GEMMs here: %s\n", ar_gemm_bf16_backend());
        return 1;
    }
    for (int a = 1; a < argc; a++) {
        ar_model *m = ar_model_open(argv[a], 0);
        if (!m) die(argv[a]);
        const ar_config *mc = ar_model_config(m);
        size_t n = (size_t)B * T * mc->hidden;
        float *x = malloc(sizeof(float) * n), *dy = malloc(sizeof(float) * n);
        int *ids = malloc(sizeof(int) * B * T);
        if (!x || !dy || !ids) die("out of memory");
        for (int i = 0; i < B * T; i++) ids[i] = (int)((lcg() >> 8) % (unsigned)mc->vocab);
        if (ar_model_embed(m, ids, B * T, x)) die(argv[a]);
        for (size_t i = 0; i < n; i++) dy[i] = 1e-2f * gauss();
        for (int layer = 0; layer < mc->n_layers; layer++) layer_report(argv[a], m, mc, layer, x, dy);
        free(x), free(dy), free(ids);
        ar_model_close(m);
    }
    return 0;
}
