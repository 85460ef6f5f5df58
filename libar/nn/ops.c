/* ops.c — decoder layer operations, forward and backward (see ops.h). */
#include "ops.h"
#include "gemm.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* ---------------------------------------------------------------- RMSNorm */

void ar_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                        int R, int C, float eps)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *xr = x + (long)r * C;
        float *o = out + (long)r * C;
        /* Sum of squares in double: the f32 result then matches PyTorch's
         * (pairwise) f32 reduction to rounding, independent of C. */
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xr[i] * xr[i];
        float s = 1.0f / sqrtf((float)(ss / C) + eps);
        if (rstd) rstd[r] = s;
        for (int i = 0; i < C; i++) o[i] = (xr[i] * s) * w[i];
    }
}

/* With n = x * s, s = (mean(x^2) + eps)^-1/2 and g = dout * w:
 * dx = s * g - s^3 / C * x * sum(g * x). */
void ar_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                         const float *w, const float *rstd, int R, int C)
{
    if (dx) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++) {
            const float *xr = x + (long)r * C, *dr = dout + (long)r * C;
            float *d = dx + (long)r * C;
            float s = rstd[r];
            double dot = 0;
            for (int i = 0; i < C; i++) dot += (double)dr[i] * w[i] * xr[i];
            float k = (float)(dot * s * s * s / C);
            for (int i = 0; i < C; i++) d[i] += s * dr[i] * w[i] - k * xr[i];
        }
    }
    if (dw) {
        /* Parallel over columns so no two threads add into the same dw[i]. */
#pragma omp parallel for schedule(static)
        for (int i = 0; i < C; i++) {
            double acc = 0;
            for (int r = 0; r < R; r++)
                acc += (double)dout[(long)r * C + i] * x[(long)r * C + i] * rstd[r];
            dw[i] += (float)acc;
        }
    }
}

/* ----------------------------------------------------------------- Linear */

/* The GEMMs go through gemm.h: f32 OpenBLAS unless g asks for bf16. A bf16
 * failure (oneDNN error, out of memory) is reported and leaves y undefined. */
int ar_linear_forward_g(ar_gemm *g, float *y, const float *x, const float *W, const float *b,
                        int R, int K, int N)
{
    float beta = 0.0f;
    if (b) {
        /* Seed y with the bias and let the GEMM add x W^T onto it. */
#pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++) memcpy(y + (long)r * N, b, sizeof(float) * N);
        beta = 1.0f;
    }
    return ar_gemm_run(g, 0, 1, R, N, K, x, K, W, K, beta, y, N);
}

void ar_linear_forward(float *y, const float *x, const float *W, const float *b,
                       int R, int K, int N)
{
    ar_linear_forward_g(NULL, y, x, W, b, R, K, N);
}

void ar_linear_backward(float *dx, float *dW, float *db, const float *dy,
                        const float *x, const float *W, int R, int K, int N)
{
    ar_linear_backward_g(NULL, dx, dW, db, dy, x, W, R, K, N);
}

int ar_linear_backward_g(ar_gemm *g, float *dx, float *dW, float *db, const float *dy,
                         const float *x, const float *W, int R, int K, int N)
{
    /* both products read dy as stored [R, N]: one bf16 copy serves both */
    int pin = dx && dW ? ar_gemm_pin(g, dy, R, N) : 0;
    if (pin < 0) return -1;
    int rc = (dx && ar_gemm_run(g, 0, 0, R, K, N, dy, N, W, K, 1.0f, dx, K)) ||
             (dW && ar_gemm_run(g, 1, 0, N, K, R, dy, N, x, K, 1.0f, dW, K));
    if (pin) ar_gemm_unpin(g, dy);
    if (rc) return -1;
    if (db) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int r = 0; r < R; r++) acc += dy[(long)r * N + n];
            db[n] += (float)acc;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------- RoPE */

/* transformers' _compute_llama3_parameters, elementwise in f32: long
 * wavelengths are divided by factor, short ones kept, the band between
 * interpolated by smooth = (L / wavelen - lo) / (hi - lo). */
static float llama3_scale(float f, const ar_config *c)
{
    float factor = (float)c->rope_factor, lo = (float)c->rope_low_freq_factor;
    float hi = (float)c->rope_high_freq_factor, L = (float)c->rope_orig_max_pos;
    float low_wavelen = L / lo, high_wavelen = L / hi;
    float wavelen = 2.0f * (float)M_PI / f;
    if (wavelen > low_wavelen) return f / factor;
    if (wavelen < high_wavelen) return f;
    float smooth = (L / wavelen - lo) / (hi - lo);
    return (1.0f - smooth) * f / factor + smooth * f;
}

void ar_rope_inv_freq(float *inv_freq, const ar_config *c)
{
    int HD = c->head_dim;
    float theta = (float)c->rope_theta;
    for (int i = 0; i < HD / 2; i++) {
        /* arange(0, HD, 2).float() / HD, then base ** e, then 1 / that. */
        float e = (float)(2 * i) / (float)HD;
        float f = 1.0f / powf(theta, e);
        if (c->rope_type == AR_ROPE_LINEAR && c->rope_factor > 0)
            f = f / (float)c->rope_factor;
        else if (c->rope_type == AR_ROPE_LLAMA3)
            f = llama3_scale(f, c);
        inv_freq[i] = f;
    }
}

void ar_rope_tables_scaled(float *cos_t, float *sin_t, const float *inv_freq, int dim, int T, float af)
{
    int H2 = dim / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H2; i++) {
            float a = (float)t * inv_freq[i];
            cos_t[(long)t * H2 + i] = cosf(a) * af;
            sin_t[(long)t * H2 + i] = sinf(a) * af;
        }
}

void ar_rope_tables(float *cos_t, float *sin_t, const ar_config *c, int T)
{
    int H2 = c->head_dim / 2;
    float inv_freq[H2 > 0 ? H2 : 1];
    ar_rope_inv_freq(inv_freq, c);
    ar_rope_tables_scaled(cos_t, sin_t, inv_freq, c->head_dim, T, 1.0f);
}

void ar_rope_slice(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, long rs, long hs,
                   int off, int D, int interleave, int sign)
{
    int H2 = D / 2;
    /* element offsets of pair i's two members */
    int step = interleave ? 2 : 1, other = interleave ? 1 : H2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *cs = cos_t + (long)t * H2, *sn = sin_t + (long)t * H2;
            float *row = x + ((long)b * T + t) * rs + off;
            for (int h = 0; h < H; h++) {
                float *v = row + (long)h * hs;
                for (int i = 0; i < H2; i++) {
                    float c = cs[i], s = sign * sn[i];
                    float *p0 = v + i * step, *p1 = p0 + other;
                    float a = *p0, bb = *p1;
                    *p0 = a * c - bb * s;
                    *p1 = bb * c + a * s;
                }
            }
        }
}

void ar_rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T,
                     int H, int HD)
{
    ar_rope_slice(x, cos_t, sin_t, B, T, H, (long)H * HD, HD, 0, HD, 0, 1);
}

void ar_rope_backward(float *d, const float *cos_t, const float *sin_t, int B, int T,
                      int H, int HD)
{
    ar_rope_slice(d, cos_t, sin_t, B, T, H, (long)H * HD, HD, 0, HD, 0, -1);
}

/* -------------------------------------------------------------- Attention */

/* Query rows are processed in blocks of ATT_BLOCK: block [i0, i1) only needs
 * keys [0, i1), which skips most of the masked upper triangle (37% of the
 * FLOPs at T=512) while keeping every product one sgemm. */
enum { ATT_BLOCK = 128 };

/* Floats of per-thread scratch: one row block of P or dP, [min(T, ATT_BLOCK), T]. */
static long thread_scratch(int T)
{
    return (long)(T < ATT_BLOCK ? T : ATT_BLOCK) * T;
}

long ar_attention_scratch(int T)
{
    return omp_get_max_threads() * thread_scratch(T);
}

/* First key visible to query t. */
static int first_key(int t, int window)
{
    return (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
}

/* Softmax of row t of S in place over keys [first_key, t]; every other entry
 * of the row (up to T) becomes exactly 0 so P . V needs no mask. */
static void causal_softmax_row(float *row, int t, int T, int window)
{
    int s0 = first_key(t, window);
    float mx = -INFINITY, sum = 0;
    for (int s = s0; s <= t; s++) mx = row[s] > mx ? row[s] : mx;
    for (int s = s0; s <= t; s++) {
        row[s] = expf(row[s] - mx);
        sum += row[s];
    }
    float inv = 1.0f / sum;
    for (int s = 0; s < s0; s++) row[s] = 0;
    for (int s = s0; s <= t; s++) row[s] *= inv;
    for (int s = t + 1; s < T; s++) row[s] = 0;
}

/* The scale and cap of p (NULL: 1/sqrt(HD), no cap). */
static ar_attn_params attn_params(const ar_attn_params *p, int HD)
{
    ar_attn_params a = {p && p->scale > 0 ? p->scale : 1.0f / sqrtf((float)HD), p ? p->softcap : 0};
    return a;
}

/* s -> cap * tanh(s / cap) over row t's keys [0, t] (the rest is masked). */
static void softcap_row(float *row, int t, float cap)
{
    for (int s = 0; s <= t; s++) row[s] = cap * tanhf(row[s] / cap);
}

/* Query rows [i0, i0 + m) of one (sequence, query head): P rows = softmax of
 * scale Q K^T (soft-capped when asked) over keys [0, i0 + m), out rows = P V.
 * P points at the block's first row, leading dimension T. qh/out rows have
 * stride qs, kh/vh ks. */
static void attention_rows(float *out, float *P, const float *qh, const float *kh,
                           const float *vh, int i0, int m, int T, int HD, long qs,
                           long ks, int window, ar_attn_params a)
{
    int n = i0 + m;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, HD, a.scale, qh + i0 * qs,
                qs, kh, ks, 0.0f, P, T);
    for (int t = i0; t < n; t++) {
        if (a.softcap > 0) softcap_row(P + (long)(t - i0) * T, t, a.softcap);
        causal_softmax_row(P + (long)(t - i0) * T, t, T, window);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, HD, n, 1.0f, P, T, vh, ks,
                0.0f, out + i0 * qs, qs);
}

void ar_attention_forward(float *out, float *att, int save, const float *q,
                          const float *k, const float *v, int B, int T, int NH,
                          int NKV, int HD, int window)
{
    ar_attention_forward_p(out, att, save, q, k, v, B, T, NH, NKV, HD, window, NULL);
}

void ar_attention_forward_p(float *out, float *att, int save, const float *q, const float *k, const float *v,
                            int B, int T, int NH, int NKV, int HD, int window, const ar_attn_params *p)
{
    int group = NH / NKV, nblk = (T + ATT_BLOCK - 1) / ATT_BLOCK;
    long qs = (long)NH * HD, ks = (long)NKV * HD; /* row strides */
    ar_attn_params a = attn_params(p, HD);
    int nb = ar_blas_threads_begin();
    /* One task per (sequence, head, row block): enough tasks to fill the
     * cores even at B=1; within a head the costly late blocks go first. */
#pragma omp parallel for schedule(dynamic)
    for (long task = 0; task < (long)B * NH * nblk; task++) {
        int bh = (int)(task / nblk), blk = nblk - 1 - (int)(task % nblk);
        int b = bh / NH, h = bh % NH, i0 = blk * ATT_BLOCK;
        int m = T - i0 < ATT_BLOCK ? T - i0 : ATT_BLOCK;
        float *P = save ? att + ((long)bh * T + i0) * T
                        : att + omp_get_thread_num() * thread_scratch(T);
        long qo = (long)b * T * qs + (long)h * HD;
        long kv = (long)b * T * ks + (long)(h / group) * HD;
        attention_rows(out + qo, P, q + qo, k + kv, v + kv, i0, m, T, HD, qs, ks, window, a);
    }
    ar_blas_threads_end(nb);
}

/* dS = P * (dP - rowsum(dP * P)) * scale over row t's keys [0, t]. P is 0
 * outside the visible keys, so dS is too. */
static void softmax_backward_row(float *d, const float *p, int t, float scale)
{
    float dot = 0;
    for (int s = 0; s <= t; s++) dot += d[s] * p[s];
    for (int s = 0; s <= t; s++) d[s] = p[s] * (d[s] - dot) * scale;
}

/* Backward of one (sequence, query head): dq (row stride qs) +=, and this
 * head's share of dK, dV into pk, pv [T, HD] (+=). dP is thread_scratch(T)
 * floats. Query rows [i0, i1) touch keys [0, i1) only. */
static void attention_head_backward(float *dq, float *pk, float *pv, float *dP, float *S,
                                    const float *dout, const float *P,
                                    const float *qh, const float *kh,
                                    const float *vh, int T, int HD, long qs, long ks, ar_attn_params a)
{
    float scale = a.softcap > 0 ? 1.0f : a.scale;   /* with a cap, softcap_back applies the scale */
    for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
        int m = T - i0 < ATT_BLOCK ? T - i0 : ATT_BLOCK, n = i0 + m;
        const float *Pb = P + (long)i0 * T, *dOb = dout + i0 * qs;
        /* dV += P^T dO;  dP = dO V^T */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, HD, m, 1.0f, Pb, T, dOb,
                    qs, 1.0f, pv, HD);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, HD, 1.0f, dOb, qs, vh,
                    ks, 0.0f, dP, n);
        for (int t = i0; t < n; t++)
            softmax_backward_row(dP + (long)(t - i0) * n, P + (long)t * T, t, scale);
        if (a.softcap > 0) {
            /* d(cap tanh(s / cap))/d(q.k) = scale (1 - tanh^2), s = scale q.k recomputed as the forward did */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, HD, a.scale, qh + i0 * qs, qs, kh, ks, 0.0f,
                        S, n);
            for (int t = i0; t < n; t++)
                for (int s = 0; s <= t; s++) {
                    float th = tanhf(S[(long)(t - i0) * n + s] / a.softcap);
                    dP[(long)(t - i0) * n + s] *= a.scale * (1.0f - th * th);
                }
        }
        /* Columns s > t of dP hold garbage from the sgemm: zero them. */
        for (int t = i0; t < n; t++)
            memset(dP + (long)(t - i0) * n + t + 1, 0, sizeof(float) * (n - t - 1));
        /* dQ += dS K;  dK += dS^T Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, HD, n, 1.0f, dP, n, kh,
                    ks, 1.0f, dq + i0 * qs, qs);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, HD, m, 1.0f, dP, n,
                    qh + i0 * qs, qs, 1.0f, pk, HD);
    }
}

/* Layout: per-thread dP blocks, the partial dK, dV [B*NH][2][T, HD], then
 * per-thread blocks of recomputed scores (soft-capping only). */
long ar_attention_backward_scratch(int B, int T, int NH, int HD)
{
    return 2 * ar_attention_scratch(T) + 2L * B * NH * T * HD;
}

void ar_attention_backward(float *dq, float *dk, float *dv, float *scratch,
                           const float *dout, const float *att, const float *q,
                           const float *k, const float *v, int B, int T, int NH,
                           int NKV, int HD)
{
    ar_attention_backward_p(dq, dk, dv, scratch, dout, att, q, k, v, B, T, NH, NKV, HD, NULL);
}

void ar_attention_backward_p(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                             const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD,
                             const ar_attn_params *p)
{
    int group = NH / NKV, nb = ar_blas_threads_begin();
    long qs = (long)NH * HD, ks = (long)NKV * HD, th = (long)T * HD;
    ar_attn_params a = attn_params(p, HD);
    float *part = scratch + ar_attention_scratch(T); /* [B*NH][2][T, HD] */
    float *scores = part + 2L * B * NH * th;
    /* Parallel over (sequence, query head). Heads of one group share dk/dv,
     * so each writes its own partial dK, dV, summed per group below. */
#pragma omp parallel for schedule(dynamic)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        float *dP = scratch + omp_get_thread_num() * thread_scratch(T);
        float *S = scores + omp_get_thread_num() * thread_scratch(T);
        float *pk = part + 2 * bh * th, *pv = pk + th;
        long qo = (long)b * T * qs + (long)h * HD;
        long kv = (long)b * T * ks + (long)(h / group) * HD;
        memset(pk, 0, sizeof(float) * 2 * th);
        attention_head_backward(dq + qo, pk, pv, dP, S, dout + qo, att + (long)bh * T * T,
                                q + qo, k + kv, v + kv, T, HD, qs, ks, a);
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const float *pk = part + 2 * ((long)b * NH + h) * th + (long)t * HD;
                float *dkr = dk + ((long)b * T + t) * ks + (long)(h / group) * HD;
                float *dvr = dv + ((long)b * T + t) * ks + (long)(h / group) * HD;
                for (int i = 0; i < HD; i++) dkr[i] += pk[i], dvr[i] += pk[th + i];
            }
    ar_blas_threads_end(nb);
}

/* ----------------------------------------------------------------- SwiGLU */

void ar_swiglu_forward(float *out, const float *gate, const float *up, long n)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* silu'(g) = sig(g) * (1 + g * (1 - sig(g))). */
void ar_swiglu_backward(float *dgate, float *dup, const float *dout,
                        const float *gate, const float *up, long n)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g));
        if (dgate) dgate[i] += dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        if (dup) dup[i] += dout[i] * g * sg;
    }
}

/* ------------------------------------------------------ GeGLU (tanh GeLU) */

/* sqrt(2/pi) and the cubic coefficient of PyTorch's tanh approximation. */
#define GELU_K0 0.7978845608028654f
#define GELU_K1 0.044715f

void ar_geglu_tanh_forward(float *out, const float *gate, const float *up, long n)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float g = gate[i], t = tanhf(GELU_K0 * (g + GELU_K1 * g * g * g));
        out[i] = 0.5f * g * (1.0f + t) * up[i];
    }
}

/* gelu'(g) = (1 + t) / 2 + g / 2 (1 - t^2) k0 (1 + 3 k1 g^2). */
void ar_geglu_tanh_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float g = gate[i], t = tanhf(GELU_K0 * (g + GELU_K1 * g * g * g));
        float gelu = 0.5f * g * (1.0f + t);
        float dgelu = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * g * g);
        if (dgate) dgate[i] += dout[i] * up[i] * dgelu;
        if (dup) dup[i] += dout[i] * gelu;
    }
}

void ar_softcap_forward(float *x, long n, float cap)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

/* --------------------------------------------------------------- Residual */

void ar_residual_forward(float *out, const float *a, const float *b, long n)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void ar_residual_backward(float *da, float *db, const float *dout, long n)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

/* ---- Softmax cross-entropy ---- */

double ar_logsumexp(const float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += expf(x[i] - mx);
    return mx + log(s);
}

double ar_crossentropy_forward(const float *logits, const int *target, int R, int V)
{
    double sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (int r = 0; r < R; r++) {
        if (target[r] < 0) continue;
        const float *row = logits + (size_t)r * V;
        sum += ar_logsumexp(row, V) - row[target[r]];
    }
    return sum;
}

void ar_crossentropy_backward(float *dlogits, const float *logits, const int *target, int R, int V,
                              float dloss)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        if (target[r] < 0) continue;
        const float *row = logits + (size_t)r * V;
        float *d = dlogits + (size_t)r * V;
        double lse = ar_logsumexp(row, V);
        for (int i = 0; i < V; i++) d[i] += dloss * (float)exp(row[i] - lse);
        d[target[r]] -= dloss;
    }
}

/* ---- KL divergence between next-token distributions ---- */

double ar_kldiv_forward(const float *ref_logits, const float *logits, const int *keep, int R, int V)
{
    double sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (int r = 0; r < R; r++) {
        if (keep[r] < 0) continue;
        const float *a = ref_logits + (size_t)r * V, *b = logits + (size_t)r * V;
        double la = ar_logsumexp(a, V), lb = ar_logsumexp(b, V), kl = 0;
        for (int i = 0; i < V; i++) {
            double lp = a[i] - la;
            kl += exp(lp) * (lp - (b[i] - lb));
        }
        sum += kl;
    }
    return sum;
}

void ar_kldiv_backward(float *dlogits, const float *ref_logits, const float *logits, const int *keep, int R, int V,
                       float dloss)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        if (keep[r] < 0) continue;
        const float *a = ref_logits + (size_t)r * V, *b = logits + (size_t)r * V;
        float *d = dlogits + (size_t)r * V;
        double la = ar_logsumexp(a, V), lb = ar_logsumexp(b, V);
        for (int i = 0; i < V; i++) d[i] += dloss * (float)(exp(b[i] - lb) - exp(a[i] - la));
    }
}
