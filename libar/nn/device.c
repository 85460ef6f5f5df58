/* device.c — device selection and the helpers the GPU code shares (see
 * device.h, cuda_impl.h). Without AR_HAVE_CUDA only the CPU exists. */
#include "device.h"
#include "cuda_impl.h"
#include "error.h"
#include "ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ar_device_cuda_built(void)
{
#ifdef AR_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int ar_device_cuda_count(void)
{
#ifdef AR_HAVE_CUDA
    return ar_cuda_device_count();
#else
    return 0;
#endif
}

int ar_device_parse(const char *s, int *dev)
{
    if (!s || !strcmp(s, "auto")) {
        *dev = ar_device_cuda_count() > 0 ? 0 : AR_DEVICE_CPU;
        return 0;
    }
    if (!strcmp(s, "cpu")) { *dev = AR_DEVICE_CPU; return 0; }
    if (!strcmp(s, "cuda")) { *dev = 0; return 0; }
    char *end;
    if (!strncmp(s, "cuda:", 5) && s[5] >= '0' && s[5] <= '9') {
        long n = strtol(s + 5, &end, 10);
        if (!*end && n < 1024) { *dev = (int)n; return 0; }
    }
    return ar_error("device '%s' is not cpu, cuda or cuda:N", s);
}

int ar_device_init(int dev)
{
    if (dev == AR_DEVICE_CPU) return 0;
#ifdef AR_HAVE_CUDA
    if (ar_cuda_init(dev)) return ar_cuda_err("cuda");
    /* the tuner's matrix products: bf16 tensor cores (AutoRound's bf16
     * autocast); the chain and perplexity forwards switch to f32 themselves */
    ar_cuda_set_gemm(AR_CUDA_GEMM_BF16);
    return 0;
#else
    return ar_error("cuda:%d asked for, but this build has no CUDA (nvcc was not found at build time)", dev);
#endif
}

#ifndef AR_HAVE_CUDA
ar_residency *ar_gpu_residency_open(const ar_config *c, int n, int T, int bs, int nchains, double budget_mib,
                                    int low_mem)
{
    (void)c, (void)n, (void)T, (void)bs, (void)nchains, (void)budget_mib, (void)low_mem;
    ar_error("GPU residency asked for, but this build has no CUDA");
    return NULL;
}
void ar_gpu_residency_close(ar_residency *r) { (void)r; }
#else
/* The residency and what its GPU ops need (r first: close casts back). */
typedef struct {
    ar_residency r;
    ar_config c;
} gpu_residency;

static void *op_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    return ar_cuda_malloc(bytes); /* NULL: the chain streams, no error for the run */
}
static void op_release(void *ctx, void *dev) { (void)ctx; ar_cuda_free(dev); }
static int op_upload(void *ctx, void *dev, const void *host, size_t bytes)
{
    (void)ctx;
    return ar_cuda_upload(dev, host, bytes) ? ar_cuda_err("chain upload") : 0;
}
static int op_download(void *ctx, void *host, const void *dev, size_t bytes)
{
    (void)ctx;
    return ar_cuda_download(host, dev, bytes) ? ar_cuda_err("chain download") : 0;
}
static int op_pin(void *ctx, const void *host, size_t bytes) { (void)ctx; return ar_cuda_pin(host, bytes); }
static void op_unpin(void *ctx, const void *host) { (void)ctx; ar_cuda_unpin(host); }

/* Bytes of one block's f32 weights, biases and norms as ar_cuda_weights_upload copies them. */
static size_t weight_bytes(const ar_config *c, const ar_block_weights *w)
{
    size_t b = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        b += (w->w[i] ? (size_t)n * k : 0) + (w->b[i] ? (size_t)n : 0);
    }
    b += (w->attn_norm ? c->hidden : 0) + (w->mlp_norm ? c->hidden : 0);
    b += (w->q_norm ? c->head_dim : 0) + (w->k_norm ? c->head_dim : 0);
    return b * sizeof(float);
}

static void *op_weights_up(void *ctx, const ar_block_weights *w, size_t *bytes)
{
    const ar_config *c = &((gpu_residency *)ctx)->c;
    ar_cuda_weights *d = malloc(sizeof *d);
    if (!d) { ar_error("out of memory"); return NULL; }
    if (ar_cuda_weights_upload(d, c, w, NULL)) { free(d); return NULL; }
    *bytes = weight_bytes(c, w);
    return d;
}
static void op_weights_free(void *ctx, void *dw)
{
    (void)ctx;
    ar_cuda_weights_free(dw, NULL);
    free(dw);
}

ar_residency *ar_gpu_residency_open(const ar_config *c, int n, int T, int bs, int nchains, double budget_mib,
                                    int low_mem)
{
    size_t free_b = 0;
    if (ar_cuda_mem_info(&free_b, NULL)) { ar_cuda_err("device memory"); return NULL; }
    gpu_residency *g = calloc(1, sizeof *g);
    if (!g) { ar_error("out of memory"); return NULL; }
    g->c = *c;
    /* one block's needs besides the chains: the block's weights, the tuner's
     * ŵ, dW, V, best V (and a bf16 copy) and the tuned weights (7 x the
     * weights, bounding α/β too), the tuning and forward works, the tuner's
     * f32 batches (x, y, pred, dy), and 512 MiB for cuBLAS and fragmentation */
    ar_block_weights full;
    memset(&full, 0, sizeof full);
    float one = 0;
    float *wptr[AR_NLINEAR], *bptr[AR_NLINEAR] = {0};
    full.nlinear = AR_NLINEAR;
    full.w = wptr;
    full.b = bptr;
    for (int i = 0; i < AR_NLINEAR; i++) full.w[i] = &one;
    full.attn_norm = full.mlp_norm = &one;
    size_t wb = weight_bytes(c, &full);
    ar_cuda_shape s = ar_cuda_shape_of(c);
    size_t rows = (size_t)bs * T * c->hidden;
    size_t need = 7 * wb + ar_cuda_block_work_bytes(&s, bs, T, 1) + ar_cuda_block_work_bytes(&s, bs, T, 0) +
                  16 * rows + ((size_t)512 << 20);
    size_t chains = (size_t)nchains * n * T * c->hidden * sizeof(uint16_t);
    ar_xfer_ops ops = {g, op_alloc, op_release, op_upload, op_download, op_pin, op_unpin, op_weights_up,
                       op_weights_free};
    ar_res_init(&g->r, &ops, ar_chains_fit(chains, free_b, need, budget_mib, low_mem));
    return &g->r;
}

void ar_gpu_residency_close(ar_residency *r)
{
    if (!r) return;
    ar_res_release(r);
    free((gpu_residency *)r);
}
#endif

const char *ar_device_describe(int dev)
{
    static char buf[512];
    if (dev == AR_DEVICE_CPU) return "cpu";
#ifdef AR_HAVE_CUDA
    snprintf(buf, sizeof buf, "cuda:%d %s", dev, ar_cuda_device_name());
#else
    snprintf(buf, sizeof buf, "cuda:%d (not built)", dev);
#endif
    return buf;
}

#ifdef AR_HAVE_CUDA
int ar_cuda_err(const char *what) { return ar_error("%s: %s", what, ar_cuda_last_error()); }

ar_cuda_shape ar_cuda_shape_of(const ar_config *c)
{
    ar_cuda_shape s = {c->hidden, c->intermediate, c->n_heads, c->n_kv_heads, c->head_dim, c->rms_eps,
                       c->sliding_window};
    return s;
}

float *ar_cuda_upload_f32(const float *host, size_t n)
{
    float *d = ar_cuda_malloc(n * sizeof(float));
    if (!d) { ar_cuda_err("cuda"); return NULL; }
    if (ar_cuda_upload(d, host, n * sizeof(float))) { ar_cuda_free(d); ar_cuda_err("cuda upload"); return NULL; }
    return d;
}

/* Upload one optional tensor of n floats into *d (NULL stays NULL). */
static int up_opt(float **d, const float *h, size_t n)
{
    *d = NULL;
    return h && !(*d = ar_cuda_upload_f32(h, n)) ? -1 : 0;
}

int ar_cuda_weights_upload(ar_cuda_weights *d, const ar_config *c, const ar_block_weights *w,
                           float *const swap[AR_NLINEAR])
{
    memset(d, 0, sizeof *d);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        if (swap && swap[i]) d->w[i] = swap[i];
        else if (up_opt(&d->w[i], w->w[i], (size_t)n * k)) goto fail;
        if (up_opt(&d->b[i], w->b[i], (size_t)n)) goto fail;
    }
    if (up_opt(&d->attn_norm, w->attn_norm, c->hidden) || up_opt(&d->mlp_norm, w->mlp_norm, c->hidden) ||
        up_opt(&d->q_norm, w->q_norm, c->head_dim) || up_opt(&d->k_norm, w->k_norm, c->head_dim))
        goto fail;
    return 0;
fail:
    ar_cuda_weights_free(d, swap);
    return -1;
}

void ar_cuda_weights_free(ar_cuda_weights *d, float *const swap[AR_NLINEAR])
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!(swap && swap[i])) ar_cuda_free(d->w[i]);
        ar_cuda_free(d->b[i]);
    }
    ar_cuda_free(d->attn_norm); ar_cuda_free(d->mlp_norm);
    ar_cuda_free(d->q_norm); ar_cuda_free(d->k_norm);
    memset(d, 0, sizeof *d);
}

ar_cuda_block_work *ar_cuda_work_for(const ar_config *c, int B, int T, int train)
{
    size_t h2 = (size_t)T * (c->head_dim / 2);
    float *cs = malloc(sizeof(float) * h2), *sn = malloc(sizeof(float) * h2);
    ar_cuda_block_work *ws = NULL;
    if (!cs || !sn) ar_error("out of memory for RoPE tables");
    else {
        ar_rope_tables(cs, sn, c, T);
        ar_cuda_shape s = ar_cuda_shape_of(c);
        if (!(ws = ar_cuda_block_work_create(&s, B, T, train, cs, sn))) ar_cuda_err("cuda block work");
    }
    free(cs);
    free(sn);
    return ws;
}
#endif
