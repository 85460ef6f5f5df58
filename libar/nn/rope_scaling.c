/* rope_scaling.c — YaRN, LongRoPE, dynamic NTK frequencies
 * (see rope_scaling.h; formulas from transformers 5.25 modeling_rope_utils.py)
 * and a config's tables. */
#include "rope_scaling.h"

#include <math.h>

#include "ops.h"

void ar_rope_yarn_from_config(ar_rope_yarn *y, const ar_config *c, int dim)
{
    *y = (ar_rope_yarn){.theta = c->rope_theta, .dim = dim, .factor = c->rope_factor,
                        .orig_max_pos = c->rope_orig_max_pos > 0 ? c->rope_orig_max_pos : c->max_pos,
                        .beta_fast = c->rope_beta_fast, .beta_slow = c->rope_beta_slow,
                        .truncate = c->rope_truncate, .mscale = c->rope_mscale,
                        .mscale_all_dim = c->rope_mscale_all_dim, .attention_factor = c->rope_attention_factor};
}

double ar_rope_yarn_get_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* The dimension whose wavelength makes n rotations over L positions
 * (find_correction_dim): dim ln(L / (2 pi n)) / (2 ln theta). */
static double correction_dim(double n, int dim, double theta, int L)
{
    return dim * log(L / (n * 2 * M_PI)) / (2 * log(theta));
}

void ar_rope_yarn_inv_freq(float *inv_freq, const ar_rope_yarn *y)
{
    double bf = y->beta_fast > 0 ? y->beta_fast : 32, bs = y->beta_slow > 0 ? y->beta_slow : 1;
    double lo = correction_dim(bf, y->dim, y->theta, y->orig_max_pos);
    double hi = correction_dim(bs, y->dim, y->theta, y->orig_max_pos);
    if (y->truncate) lo = floor(lo), hi = ceil(hi);
    lo = fmax(lo, 0), hi = fmin(hi, y->dim - 1);
    if (lo == hi) hi += 0.001; /* transformers' guard against a zero-width ramp */
    float base = (float)y->theta, factor = (float)y->factor, flo = (float)lo, span = (float)(hi - lo);
    for (int i = 0; i < y->dim / 2; i++) {
        /* torch: base ** (arange(0, dim, 2).float() / dim), all f32 */
        float pos = powf(base, (float)(2 * i) / (float)y->dim);
        float extra = 1.0f / pos, inter = 1.0f / (factor * pos);
        float ramp = ((float)i - flo) / span;
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float keep = 1.0f - ramp; /* share of the unscaled (extrapolated) frequency */
        inv_freq[i] = inter * (1.0f - keep) + extra * keep;
    }
}

double ar_rope_yarn_attention_factor(const ar_rope_yarn *y)
{
    if (y->attention_factor > 0) return y->attention_factor;
    if (y->mscale != 0 && y->mscale_all_dim != 0)
        return ar_rope_yarn_get_mscale(y->factor, y->mscale) / ar_rope_yarn_get_mscale(y->factor, y->mscale_all_dim);
    return ar_rope_yarn_get_mscale(y->factor, 1);
}

double ar_rope_mla_softmax_scale(const ar_config *c)
{
    double s = pow(c->mla.qk_nope_head_dim + c->mla.qk_rope_head_dim, -0.5);
    if (c->rope_type != AR_ROPE_DEFAULT && c->rope_mscale_all_dim != 0) {
        double m = ar_rope_yarn_get_mscale(c->rope_factor, c->rope_mscale_all_dim);
        s = s * m * m;
    }
    return s;
}

void ar_rope_longrope_inv_freq(float *inv_freq, double theta, int dim, const float *ext)
{
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / (ext[i] * powf((float)theta, (float)(2 * i) / (float)dim));
}

double ar_rope_longrope_attention_factor(double factor, int orig_max_pos)
{
    return factor <= 1 ? 1.0 : sqrt(1 + log(factor) / log(orig_max_pos));
}

void ar_rope_dynamic_ntk_inv_freq(float *inv_freq, double theta, int dim, double factor, int max_pos, int seq_len)
{
    float base;
    if (seq_len <= max_pos) { /* the initial frequencies: Python floats, L = max_pos */
        base = (float)(theta * pow(factor * max_pos / max_pos - (factor - 1), (double)dim / (dim - 2)));
    } else { /* dynamic_rope_update: f32 tensor arithmetic on the length */
        float f = (float)factor, g = f * (float)seq_len / (float)max_pos - (f - 1.0f);
        base = (float)theta * powf(g, (float)dim / (float)(dim - 2));
    }
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / powf(base, (float)(2 * i) / (float)dim);
}

int ar_rope_rotated_dim(const ar_config *c)
{
    return c->rope_dim > 0 ? c->rope_dim : c->head_dim;
}

int ar_rope_by_length(const ar_config *c)
{
    return c->rope_type == AR_ROPE_DYNAMIC || c->rope_type == AR_ROPE_LONGROPE;
}

float ar_rope_config_inv_freq(float *inv_freq, const ar_config *c, int dim, int T)
{
    switch (c->rope_type) {
    case AR_ROPE_YARN: {
        ar_rope_yarn y;
        ar_rope_yarn_from_config(&y, c, dim);
        ar_rope_yarn_inv_freq(inv_freq, &y);
        return (float)ar_rope_yarn_attention_factor(&y);
    }
    case AR_ROPE_LONGROPE:
        ar_rope_longrope_inv_freq(inv_freq, c->rope_theta, dim,
                                  T > c->rope_orig_max_pos ? c->rope_long_factor : c->rope_short_factor);
        return (float)c->rope_attention_factor;
    case AR_ROPE_DYNAMIC:
        ar_rope_dynamic_ntk_inv_freq(inv_freq, c->rope_theta, dim, c->rope_factor, c->max_pos, T);
        return 1.0f;
    default: { /* default, linear, llama3: ops.c's, which reads the width from head_dim */
        ar_config cd = *c;
        cd.head_dim = dim;
        ar_rope_inv_freq(inv_freq, &cd);
        return 1.0f;
    }
    }
}

void ar_rope_config_tables(float *cos_t, float *sin_t, const ar_config *c, int dim, int T)
{
    float inv[dim / 2 > 0 ? dim / 2 : 1];
    float af = ar_rope_config_inv_freq(inv, c, dim, T);
    ar_rope_tables_scaled(cos_t, sin_t, inv, dim, T, af);
}
