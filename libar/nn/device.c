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
