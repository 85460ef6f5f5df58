/* rope_dense.c — partial / interleaved RoPE and the length-dependent
 * scalings (rope_dense.h). Formulas from transformers'
 * modeling_rope_utils.py (_compute_default/_dynamic_ntk/_longrope_parameters,
 * dynamic_rope_update), evaluated in f32 in the same order. */
#include "rope_dense.h"
#include "ops.h"
#include <math.h>

int ar_rope_dense_dim(const ar_config *c)
{
    return c->rope_dim > 0 ? c->rope_dim : c->head_dim;
}

/* theta^(2i/dim) as transformers: arange(0, dim, 2) / dim in f32, then pow. */
static float base_pow(float theta, int i, int dim)
{
    return powf(theta, (float)(2 * i) / (float)dim);
}

void ar_rope_dense_longrope_inv_freq(float *inv_freq, const ar_config *c, int T)
{
    int dim = ar_rope_dense_dim(c);
    const float *ext = T > c->rope_orig_max_pos ? c->rope_long_factor : c->rope_short_factor;
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / (ext[i] * base_pow((float)c->rope_theta, i, dim));
}

void ar_rope_dense_dynamic_inv_freq(float *inv_freq, const ar_config *c, int T)
{
    int dim = ar_rope_dense_dim(c);
    float factor = (float)c->rope_factor, L = (float)(T > c->max_pos ? T : c->max_pos);
    /* f32 as the tensor arithmetic on the length: factor * L / max_pos - (factor - 1) */
    float g = factor * L / (float)c->max_pos - (factor - 1.0f);
    float base = (float)c->rope_theta * powf(g, (float)dim / (float)(dim - 2));
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / base_pow(base, i, dim);
}

/* yarn's 0.1 * mscale * ln(scale) + 1 (1 when scale <= 1). */
static double yarn_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* The dimension at which a frequency turns num_rotations times over the
 * original context (transformers' find_correction_dim). */
static double correction_dim(double rotations, int dim, double base, int orig)
{
    return dim * log(orig / (rotations * 2 * M_PI)) / (2 * log(base));
}

float ar_rope_dense_yarn_inv_freq(float *inv_freq, const ar_config *c)
{
    int dim = ar_rope_dense_dim(c);
    double factor = c->rope_factor, low = correction_dim(c->rope_beta_fast, dim, c->rope_theta, c->rope_orig_max_pos);
    double high = correction_dim(c->rope_beta_slow, dim, c->rope_theta, c->rope_orig_max_pos);
    if (c->rope_truncate) low = floor(low), high = ceil(high);
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;   /* transformers' guard against a zero-width ramp */
    for (int i = 0; i < dim / 2; i++) {
        float pos = base_pow((float)c->rope_theta, i, dim);
        float extra = 1.0f / pos, inter = 1.0f / ((float)factor * pos);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float ef = 1.0f - ramp;
        inv_freq[i] = inter * (1.0f - ef) + extra * ef;
    }
    if (c->rope_attention_factor > 0) return (float)c->rope_attention_factor;
    if (c->rope_mscale > 0 && c->rope_mscale_all_dim > 0)
        return (float)(yarn_mscale(factor, c->rope_mscale) / yarn_mscale(factor, c->rope_mscale_all_dim));
    return (float)yarn_mscale(factor, 1.0);
}

int ar_rope_dense_by_length(const ar_config *c)
{
    return c->rope_type == AR_ROPE_DYNAMIC || c->rope_type == AR_ROPE_LONGROPE;
}

float ar_rope_dense_inv_freq(float *inv_freq, const ar_config *c, int T)
{
    int dim = ar_rope_dense_dim(c);
    switch (c->rope_type) {
    case AR_ROPE_LONGROPE: ar_rope_dense_longrope_inv_freq(inv_freq, c, T); return (float)c->rope_attention_factor;
    case AR_ROPE_DYNAMIC: ar_rope_dense_dynamic_inv_freq(inv_freq, c, T); return 1.0f;
    case AR_ROPE_YARN: return ar_rope_dense_yarn_inv_freq(inv_freq, c);
    case AR_ROPE_LINEAR:
        for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / base_pow((float)c->rope_theta, i, dim) / (float)c->rope_factor;
        return 1.0f;
    case AR_ROPE_LLAMA3:
        ar_rope_inv_freq(inv_freq, c);   /* ops.c's; the config refuses llama3 with a partial rotary */
        return 1.0f;
    default:
        for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / base_pow((float)c->rope_theta, i, dim);
        return 1.0f;
    }
}

void ar_rope_dense_tables(float *cos_t, float *sin_t, const ar_config *c, int T)
{
    int H2 = ar_rope_dense_dim(c) / 2;
    float inv_freq[H2 > 0 ? H2 : 1];
    float s = ar_rope_dense_inv_freq(inv_freq, c, T);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H2; i++) {
            float a = (float)t * inv_freq[i];
            cos_t[(long)t * H2 + i] = cosf(a) * s;
            sin_t[(long)t * H2 + i] = sinf(a) * s;
        }
}

/* Rotate by sign * angle: +1 the forward, -1 its transpose. */
static void rotate(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, int HD, int rot,
                   int interleaved, float sign)
{
    int H2 = rot / 2;
    /* pair i: dims (a, b) = (2i, 2i+1) interleaved, (i, i + H2) in halves */
    int stride_a = interleaved ? 2 : 1, off_b = interleaved ? 1 : H2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *cs = cos_t + (long)t * H2, *sn = sin_t + (long)t * H2;
            float *row = x + ((long)b * T + t) * H * HD;
            for (int h = 0; h < H; h++) {
                float *v = row + (long)h * HD;
                for (int i = 0; i < H2; i++) {
                    float c = cs[i], s = sign * sn[i];
                    float *pa = v + i * stride_a, *pb = pa + off_b;
                    float x0 = *pa, x1 = *pb;
                    *pa = x0 * c - x1 * s;
                    *pb = x1 * c + x0 * s;
                }
            }
        }
}

void ar_rope_partial_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, int HD,
                             int rot, int interleaved)
{
    rotate(x, cos_t, sin_t, B, T, H, HD, rot, interleaved, 1.0f);
}

void ar_rope_partial_backward(float *d, const float *cos_t, const float *sin_t, int B, int T, int H, int HD,
                              int rot, int interleaved)
{
    rotate(d, cos_t, sin_t, B, T, H, HD, rot, interleaved, -1.0f);
}
