/* rope_scaling.h — the RoPE frequency scalings beyond ops.h's
 * default/linear/llama3 (yarn, longrope, dynamic NTK), a partial rotary
 * width (partial_rotary_factor), and the cos/sin tables of a config: the one
 * place every block family (Llama-like, Phi-3/GLM-4, DeepSeek MLA, gpt-oss)
 * gets its rotary tables from. The rotation itself is ops.h's ar_rope_slice.
 *
 * Every formula is transformers 5.25's (modeling_rope_utils.py:
 * _compute_yarn_parameters L368-, yarn_get_mscale L346, yarn_apply_mscale
 * L353, _compute_longrope_parameters L529-, _compute_dynamic_ntk_parameters
 * L290-), computed in f32 where transformers computes in f32 (its torch
 * tensors) and in double where it computes with Python floats. A rotary
 * embedding's cos/sin are cos(t inv_freq) and sin(t inv_freq) times the
 * scaling's attention factor (1 for default/linear/llama3/dynamic). */
#ifndef AR_ROPE_SCALING_H
#define AR_ROPE_SCALING_H
#include "config.h"

/* ---- YaRN ----
 * Fields as in config.json's rope_parameters; dim = the rotated width (the
 * head dim; MLA: qk_rope_head_dim). factor must be given (> 0): transformers
 * derives a missing factor as max_position_embeddings / original (the
 * config parser's job). */
typedef struct {
    double theta;            /* rope_theta */
    int dim;                 /* rotated dims per head (even) */
    double factor;           /* factor */
    int orig_max_pos;        /* original_max_position_embeddings */
    double beta_fast, beta_slow; /* 0 = the defaults 32 and 1 */
    int truncate;            /* floor/ceil the correction range (default 1; gpt-oss 0) */
    double mscale, mscale_all_dim; /* 0 = absent */
    double attention_factor; /* 0 = absent: derived (ar_rope_yarn_attention_factor) */
} ar_rope_yarn;

/* The yarn parameters of c for a rotated width dim (c->rope_type must be
 * AR_ROPE_YARN). */
void ar_rope_yarn_from_config(ar_rope_yarn *y, const ar_config *c, int dim);

/* 0.1 mscale ln(scale) + 1, or 1 when scale <= 1 (yarn_get_mscale). */
double ar_rope_yarn_get_mscale(double scale, double mscale);

/* inv_freq [dim/2]: 1/theta^(2i/dim) blended with that / factor by the
 * linear ramp over the correction range of beta_fast..beta_slow rotations
 * at orig_max_pos (floored/ceiled when truncate). */
void ar_rope_yarn_inv_freq(float *inv_freq, const ar_rope_yarn *y);

/* The factor cos/sin are multiplied by: attention_factor if given, else
 * get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both
 * are non-zero, else get_mscale(factor, 1). */
double ar_rope_yarn_attention_factor(const ar_rope_yarn *y);

/* DeepSeek MLA's softmax scale: qk_head_dim^-0.5, times m^2 with m =
 * get_mscale(factor, mscale_all_dim) when the rope type is not default and
 * mscale_all_dim != 0 (yarn_apply_mscale). */
double ar_rope_mla_softmax_scale(const ar_config *c);

/* ---- LongRoPE (Phi-3) ----
 * inv_freq [dim/2] = 1 / (ext[i] theta^(2i/dim)), ext = long_factor when
 * the sequence is longer than original_max_position_embeddings, else
 * short_factor (the caller picks). */
void ar_rope_longrope_inv_freq(float *inv_freq, double theta, int dim, const float *ext);

/* sqrt(1 + ln(factor) / ln(orig_max_pos)), 1 when factor <= 1; factor =
 * max_position_embeddings / original when config.json has none. */
double ar_rope_longrope_attention_factor(double factor, int orig_max_pos);

/* ---- Dynamic NTK ----
 * inv_freq [dim/2] with base theta (factor seq_len/max_pos - (factor - 1))^(dim/(dim-2)),
 * seq_len raised to max_pos when shorter (so static up to max_pos). The
 * base is computed as transformers' model does: up to max_pos its initial
 * frequencies (Python floats: double); beyond, dynamic_rope_update's tensor
 * arithmetic on the length (f32). */
void ar_rope_dynamic_ntk_inv_freq(float *inv_freq, double theta, int dim, double factor, int max_pos,
                                  int seq_len);

/* ---- A config's rotary tables ----
 * The rotated dims per head: c->rope_dim (partial_rotary_factor), or
 * head_dim when a config leaves it 0. */
int ar_rope_rotated_dim(const ar_config *c);

/* 1 when c's frequencies depend on the sequence length (dynamic, longrope):
 * every forward runs sequences at positions 0..T-1, so "the sequence length"
 * transformers' dynamic_rope_update reads is T and tables are rebuilt per
 * call for that T. */
int ar_rope_by_length(const ar_config *c);

/* inv_freq [dim/2] of c's rope type for sequences of T tokens at rotated
 * width dim (c's rotated dim, or MLA's qk_rope_head_dim); returns the
 * attention factor that multiplies cos and sin (yarn, longrope; else 1). */
float ar_rope_config_inv_freq(float *inv_freq, const ar_config *c, int dim, int T);

/* The cos/sin tables [T, dim/2] a layer of c rotates dim dims per head
 * with: ar_rope_config_inv_freq, then ops.h's ar_rope_tables_scaled. */
void ar_rope_config_tables(float *cos_t, float *sin_t, const ar_config *c, int dim, int T);
#endif
