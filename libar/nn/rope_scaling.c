/* rope_scaling.c — YaRN, LongRoPE, dynamic NTK and RoPE on head slices
 * (see rope_scaling.h; formulas from transformers 5.25 modeling_rope_utils.py). */
#include "rope_scaling.h"

#include <math.h>
#include <omp.h>

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
    double L = seq_len > max_pos ? seq_len : max_pos;
    double base = theta * pow(factor * L / max_pos - (factor - 1), (double)dim / (dim - 2));
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / powf((float)base, (float)(2 * i) / (float)dim);
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

void ar_rope_config_tables(float *cos_t, float *sin_t, const ar_config *c, int dim, int T)
{
    float inv[dim / 2 > 0 ? dim / 2 : 1], af = 1.0f;
    if (c->rope_type == AR_ROPE_YARN) {
        ar_rope_yarn y;
        ar_rope_yarn_from_config(&y, c, dim);
        ar_rope_yarn_inv_freq(inv, &y);
        af = (float)ar_rope_yarn_attention_factor(&y);
    } else {
        ar_config cd = *c; /* ar_rope_inv_freq reads the width from head_dim */
        cd.head_dim = dim;
        ar_rope_inv_freq(inv, &cd);
    }
    ar_rope_tables_scaled(cos_t, sin_t, inv, dim, T, af);
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
