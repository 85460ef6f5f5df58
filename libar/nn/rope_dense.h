/* rope_dense.h — rotary position embedding as the dense families beyond
 * Llama's need it: a rotated part of each head (partial_rotary_factor), pairs
 * either split in halves (rotate_half, Phi-3) or interleaved (GLM-4), and
 * the scaling types whose frequencies depend on the sequence length
 * (dynamic NTK, longrope) or scale cos and sin (longrope's attention
 * factor). Frequencies as transformers' modeling_rope_utils.py computes
 * them, in f32.
 *
 * Every forward of these blocks runs B sequences of T tokens at positions
 * 0..T-1, so "the sequence length" transformers' dynamic_rope_update reads
 * (max position + 1) is T: tables are built per call for that T. */
#ifndef AR_ROPE_DENSE_H
#define AR_ROPE_DENSE_H
#include "config.h"

/* The rotated dims per head: c->rope_dim, or head_dim when a config built
 * by hand leaves it 0. "rope_dim" below means this. */
int ar_rope_dense_dim(const ar_config *c);

/* inv_freq [c->rope_dim / 2] for sequences of T tokens; returns the factor
 * that multiplies cos and sin (longrope's attention factor, else 1). */
float ar_rope_dense_inv_freq(float *inv_freq, const ar_config *c, int T);

/* longrope: 1 / (ext[i] * theta^(2i/dim)), ext = long_factor when
 * T > original_max_position_embeddings, else short_factor. */
void ar_rope_dense_longrope_inv_freq(float *inv_freq, const ar_config *c, int T);

/* dynamic NTK: the default frequencies of base theta * (factor * L /
 * max_pos - (factor - 1))^(dim / (dim - 2)), L = max(T, max_pos). */
void ar_rope_dense_dynamic_inv_freq(float *inv_freq, const ar_config *c, int T);

/* yarn for the dense families (Qwen2/Qwen3 configs, Llama): NTK-by-parts
 * between factor-interpolated and plain frequencies over the ramp
 * [low, high] from beta_fast / beta_slow; returns the attention factor
 * (attention_factor, else mscale / mscale_all_dim, else 0.1 ln(factor) + 1). */
float ar_rope_dense_yarn_inv_freq(float *inv_freq, const ar_config *c);

/* 1 when c's frequencies depend on the sequence length (dynamic, longrope). */
int ar_rope_dense_by_length(const ar_config *c);

/* cos, sin [T, rope_dim / 2] at positions 0..T-1, times the factor. */
void ar_rope_dense_tables(float *cos_t, float *sin_t, const ar_config *c, int T);

/* Rotate the first rot dims of every head of x [B, T, H, HD] in place
 * (cos/sin [T, rot/2]); interleaved: pair (2i, 2i+1), else (i, i + rot/2). */
void ar_rope_partial_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, int HD,
                             int rot, int interleaved);

/* In place: d = R(t)^T d, the inverse rotation (cos and sin carry the
 * attention factor, so this is the transpose, the gradient of the forward). */
void ar_rope_partial_backward(float *d, const float *cos_t, const float *sin_t, int B, int T, int H, int HD,
                              int rot, int interleaved);

#endif
