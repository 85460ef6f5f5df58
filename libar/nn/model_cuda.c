/* model_cuda.c — the perplexity forward on the GPU (see device.h): every
 * block's weights, the final norm and lm_head stay on the device; the
 * embedding lookup runs on the host (a copy), everything after it on the
 * GPU in f32, down to one NLL per position. */
#include "device.h"
#include "model_cuda.h"
#include "cuda_impl.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

#ifndef AR_HAVE_CUDA
ar_model_gpu *ar_model_gpu_open(ar_model *m)
{
    (void)m;
    ar_error("GPU forward asked for, but this build has no CUDA");
    return NULL;
}
void ar_model_gpu_close(ar_model_gpu *g) { (void)g; }
int ar_model_gpu_nll(ar_model_gpu *g, const int *ids, int B, int T, double *nll)
{
    (void)g, (void)ids, (void)B, (void)T, (void)nll;
    return ar_error("GPU forward asked for, but this build has no CUDA");
}
#else

/* Rows of logits materialized at once. */
#define NLL_ROWS 1024

struct ar_model_gpu {
    ar_model *m;
    ar_config c;
    ar_cuda_weights *blk;       /* [n_layers] */
    float *norm, *head;         /* [C], [V, C] */
    ar_cuda_block_work *ws;
    int wsB, wsT;
    float *x, *logits;          /* [B*T, C], [NLL_ROWS, V] */
    int *target;                /* [B*T] */
    double *nll;                /* [B*T] */
};

/* Upload one whole host-read tensor of rows x cols. */
static float *upload_tensor(ar_model *m, const char *name, long rows, long cols)
{
    float *h = malloc(sizeof(float) * rows * cols), *d = NULL;
    if (!h) { ar_error("out of memory reading %s", name); return NULL; }
    if (!ar_model_read_tensor(m, name, 0, rows, h)) d = ar_cuda_upload_f32(h, (size_t)rows * cols);
    free(h);
    return d;
}

static int upload_blocks(ar_model_gpu *g)
{
    ar_block_weights w;
    if (ar_block_weights_alloc(&w, &g->c)) return -1;
    int rc = 0;
    for (int l = 0; !rc && l < g->c.n_layers; l++)
        rc = ar_model_load_block(g->m, l, &w) || ar_cuda_weights_upload(&g->blk[l], &g->c, &w, NULL);
    ar_block_weights_free(&w);
    return rc ? -1 : 0;
}

ar_model_gpu *ar_model_gpu_open(ar_model *m)
{
    if (strcmp(ar_model_block_desc(m)->family, "llama")) {
        ar_error("GPU forward: only Llama-family blocks (this model's: %s)", ar_model_block_desc(m)->family);
        return NULL;
    }
    ar_model_gpu *g = calloc(1, sizeof *g);
    if (!g) { ar_error("out of memory"); return NULL; }
    g->m = m;
    g->c = *ar_model_config(m);
    g->blk = calloc((size_t)g->c.n_layers, sizeof *g->blk);
    if (!g->blk) { free(g); ar_error("out of memory"); return NULL; }
    const char *head = g->c.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    if (upload_blocks(g) || !(g->norm = upload_tensor(m, "model.norm.weight", g->c.hidden, 1)) ||
        !(g->head = upload_tensor(m, head, g->c.vocab, g->c.hidden)) ||
        !(g->logits = ar_cuda_malloc(sizeof(float) * (size_t)NLL_ROWS * g->c.vocab))) {
        if (!g->logits && g->head) ar_cuda_err("logits buffer");
        ar_model_gpu_close(g);
        return NULL;
    }
    return g;
}

void ar_model_gpu_close(ar_model_gpu *g)
{
    if (!g) return;
    for (int l = 0; g->blk && l < g->c.n_layers; l++) ar_cuda_weights_free(&g->blk[l], NULL);
    free(g->blk);
    ar_cuda_free(g->norm); ar_cuda_free(g->head); ar_cuda_free(g->logits);
    ar_cuda_free(g->x); ar_cuda_free(g->target); ar_cuda_free(g->nll);
    ar_cuda_block_work_free(g->ws);
    free(g);
}

/* Buffers for B x T (grown when needed). */
static int ensure(ar_model_gpu *g, int B, int T)
{
    if (g->ws && B <= g->wsB && T <= g->wsT) return 0;
    ar_cuda_block_work_free(g->ws);
    ar_cuda_free(g->x); ar_cuda_free(g->target); ar_cuda_free(g->nll);
    size_t rows = (size_t)B * T;
    g->x = ar_cuda_malloc(sizeof(float) * rows * g->c.hidden);
    g->target = ar_cuda_malloc(sizeof(int) * rows);
    g->nll = ar_cuda_malloc(sizeof(double) * rows);
    g->ws = ar_cuda_work_for(&g->c, B, T, 0);
    g->wsB = B, g->wsT = T;
    if (!g->x || !g->target || !g->nll || !g->ws) {
        g->wsB = g->wsT = 0;
        return ar_cuda_err("forward buffers");
    }
    return 0;
}

/* Embeddings on the host, uploaded; targets: the next token, -1 for the last. */
static int upload_inputs(ar_model_gpu *g, const int *ids, int B, int T)
{
    size_t rows = (size_t)B * T, C = g->c.hidden;
    float *h = malloc(sizeof(float) * rows * C);
    int *tg = malloc(sizeof(int) * rows);
    int rc = !h || !tg ? ar_error("out of memory for activations") : ar_model_embed(g->m, ids, (int)rows, h);
    for (size_t r = 0; !rc && r < rows; r++) tg[r] = (int)(r % T) == T - 1 ? -1 : ids[r + 1];
    if (!rc && (ar_cuda_upload(g->x, h, sizeof(float) * rows * C) || ar_cuda_upload(g->target, tg, sizeof(int) * rows)))
        rc = ar_cuda_err("upload");
    free(h);
    free(tg);
    return rc;
}

static int run_blocks(ar_model_gpu *g, int B, int T)
{
    for (int l = 0; l < g->c.n_layers; l++) {
        ar_cuda_shape s = ar_cuda_shape_of(&g->c);
        if (l < g->c.sliding_from_layer) s.window = 0; /* Qwen's full-attention layers */
        if (ar_cuda_block_forward(&s, &g->blk[l], g->x, g->x, B, T, 0, g->ws)) return ar_cuda_err("forward");
    }
    ar_cuda_rmsnorm_forward(g->x, NULL, g->x, g->norm, B * T, g->c.hidden, g->c.rms_eps);
    return 0;
}

int ar_model_gpu_nll(ar_model_gpu *g, const int *ids, int B, int T, double *nll)
{
    if (T < 2 || B < 1) return ar_error("scoring needs sequences of at least 2 tokens (T=%d)", T);
    int mode = ar_cuda_get_gemm(), rc;
    ar_cuda_set_gemm(AR_CUDA_GEMM_F32);
    rc = ensure(g, B, T) || upload_inputs(g, ids, B, T) || run_blocks(g, B, T) ? -1 : 0;
    int rows = B * T, C = g->c.hidden, V = g->c.vocab;
    for (int r0 = 0; !rc && r0 < rows; r0 += NLL_ROWS) {
        int nr = rows - r0 < NLL_ROWS ? rows - r0 : NLL_ROWS;
        if (ar_cuda_sgemm(0, 1, nr, V, C, 1.0f, g->x + (size_t)r0 * C, C, g->head, C, 0.0f, g->logits, V) ||
            ar_cuda_nll_rows(g->logits, g->target + r0, nr, V, g->nll + r0))
            rc = ar_cuda_err("logits");
    }
    ar_cuda_set_gemm(mode);
    double *h = rc ? NULL : malloc(sizeof(double) * rows);
    if (!rc && !h) rc = ar_error("out of memory");
    if (!rc && ar_cuda_download(h, g->nll, sizeof(double) * rows)) rc = ar_cuda_err("download");
    for (int r = 0; !rc && r < rows; r++)
        if (r % T != T - 1) nll[(size_t)(r / T) * (T - 1) + r % T] = h[r];
    free(h);
    return rc;
}
#endif
