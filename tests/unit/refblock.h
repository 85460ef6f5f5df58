/* refblock.h — the decoder layer ops, a whole block and its backward, in
 * double with error bounds (fixture.h's fx_ev): naive loops, no BLAS,
 * written from the formulas. Each value is exact on the f32 inputs; each
 * bound covers the rounding of the f32 op of ops.h / block.h it mirrors,
 * operation by operation in that op's order, its sums and products for any
 * summation order (so for every BLAS kernel and thread split). Inputs may
 * carry bounds of their own (fx_ev arrays), which propagate.
 *
 * Linked into every unit binary with fixture.c (Makefile TESTLIB rule). */
#ifndef AR_TEST_REFBLOCK_H
#define AR_TEST_REFBLOCK_H

#include "block.h"
#include "config.h"
#include "fixture.h"
#include "model.h"

/* A block's weights in double (exactly the f32 values when made by
 * rb_weights_from); NULL where the block has none. */
typedef struct {
    double *w[AR_NLINEAR], *b[AR_NLINEAR], *n1, *n2, *qn, *kn;
    double *pa, *pm;            /* GLM-4's post_self_attn / post_mlp norms */
    int nlinear;                /* the block description's (Phi-3 4, GLM-4 6, else AR_NLINEAR) */
} rb_weights;

/* Allocates d and copies w (f32) into it; rb_weights_free releases. */
void rb_weights_from(rb_weights *d, const ar_block_weights *w, const ar_config *c);
void rb_weights_free(rb_weights *d);

/* An array of n exact values (malloc'd): f32 data as fx_ev inputs. */
fx_ev *rb_exact(const float *x, long n);
fx_ev *rb_exact_d(const double *x, long n);

/* ---- ops (shapes as in ops.h) ---- */

/* ar_rmsnorm_forward: out = x s w, s = (mean(x^2) + eps)^-1/2 per row (the
 * op's double sum of squares bounded as f32: a larger bound); s [R] may be
 * NULL. eps: the op's f32 eps, exactly. */
void rb_rmsnorm(fx_ev *out, fx_ev *s, const fx_ev *x, const double *w, int R, int C, double eps);

/* ar_rmsnorm_backward's dx: acc[i] += s g - (s^3/C sum_j g_j x_j) x, g =
 * dout w, as one more f32 add onto acc (which holds what dx held). */
void rb_rmsnorm_backward(fx_ev *acc, const fx_ev *dout, const fx_ev *x, const double *w, const fx_ev *s, int R, int C);

/* ar_linear_forward: y [R, N] = x W^T (+ b), the bias one more term. */
void rb_linear(fx_ev *y, const fx_ev *x, const double *W, const double *b, int R, int K, int N);

/* ar_linear_backward's dx: adds the N terms dy[r, n] W[n, k] of each dx[r, k]
 * to acc[r, k] (several linears backward into one buffer are one sum). */
void rb_linear_dx(fx_acc *acc, const fx_ev *dy, const double *W, int R, int K, int N);

/* ar_linear_backward's dW [N, K] = dy^T x onto zeros. */
void rb_linear_dW(fx_ev *dW, const fx_ev *dy, const fx_ev *x, int R, int K, int N);

/* ar_rope_inv_freq's entry i (default, linear or llama3, in f32; powf
 * bounded as exp(x ln theta)). Asserts the llama3 branch is decided. */
fx_ev rb_inv_freq(const ar_config *c, int i);

/* ar_rope_tables [T, HD/2]: cosf/sinf of fl(t inv_freq). */
void rb_rope_tables(fx_ev *cos_t, fx_ev *sin_t, const ar_config *c, int T);

/* ar_rope_forward (sign +1) / ar_rope_backward (sign -1) in place on
 * x [B, T, H, HD] with tables [T, HD/2]. */
void rb_rope(fx_ev *x, const fx_ev *cos_t, const fx_ev *sin_t, int B, int T, int H, int HD, int sign);

/* ar_attention_forward: out [B, T, NH, HD]; P [B, NH, T, T] (may be NULL)
 * receives the probabilities (masked entries exactly 0). */
void rb_attention(fx_ev *out, fx_ev *P, const fx_ev *q, const fx_ev *k, const fx_ev *v, int B, int T, int NH,
                  int NKV, int HD, int window);

/* ar_attention_backward from the forward's P: dq, dk, dv onto zeros. */
void rb_attention_backward(fx_ev *dq, fx_ev *dk, fx_ev *dv, const fx_ev *dout, const fx_ev *P, const fx_ev *q,
                           const fx_ev *k, const fx_ev *v, int B, int T, int NH, int NKV, int HD, int window);

/* ar_swiglu_forward: out = g / (1 + expf(-g)) * u. */
void rb_swiglu(fx_ev *out, const fx_ev *g, const fx_ev *u, long n);

/* ar_swiglu_backward onto zeros: dg = dout u sg (1 + g (1 - sg)), du =
 * dout g sg, sg = 1 / (1 + expf(-g)). */
void rb_swiglu_backward(fx_ev *dg, fx_ev *du, const fx_ev *dout, const fx_ev *g, const fx_ev *u, long n);

/* ---- the block ---- */

/* ar_block_forward: y [B*T, C] = block(x) (x, y may alias). */
void rb_block_forward(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T);

/* ar_block_backward of L = sum(y . dy): dW[i] [N_i, K_i] (NULL: not wanted)
 * and dx [B*T, C] (NULL: not wanted), onto zeros. */
void rb_block_backward(const ar_config *c, const rb_weights *w, const fx_ev *x, const fx_ev *dy, int B, int T,
                       fx_ev *const dW[AR_NLINEAR], fx_ev *dx);

/* rb_block_forward that keeps its intermediates (x must not alias y), and
 * rb_block_backward from them (x the same input): one forward instead of
 * two. rb_fwd_free releases. */
typedef struct rb_fwd rb_fwd;
rb_fwd *rb_block_forward_keep(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T);
void rb_block_backward_kept(const ar_config *c, const rb_weights *w, const rb_fwd *f, const fx_ev *x, const fx_ev *dy,
                            int B, int T, fx_ev *const dW[AR_NLINEAR], fx_ev *dx);
void rb_fwd_free(rb_fwd *f);

/* The same backward from the activations an f32 ar_block_forward_train
 * saved in sa (exact inputs): the bounds then cover the f32 backward's own
 * rounding only, not the forward's (B, T from sa). */
void rb_block_backward_saved(const ar_config *c, const rb_weights *w, const ar_block_acts *sa, const fx_ev *dy,
                             fx_ev *const dW[AR_NLINEAR], fx_ev *dx);

/* Checks every stage of the f32 forward that ar_block_forward_train ran
 * (x -> ln1 -> q, k, v -> P -> ao -> h -> ln2 -> gate, up -> act -> y, saved
 * in sa, y its output) against the reference op applied to the f32 stage
 * before it, within that op's bound: the whole block checked with rigorous
 * bounds of one or two ops each. */
void rb_check_block_stages(const ar_config *c, const rb_weights *w, const ar_block_acts *sa, const float *y);

/* ---- a whole model ---- */

/* The logits ar_model_forward computes for one sequence ids [T], at the
 * positions rows [nrows] (rows NULL: all T): logits [nrows or T, V], values
 * only, under FX_VALUES or FX_MCA (asserts not FX_BOUNDS: bounds carried
 * through a whole model exceed the values; see fx_mca_tolerance). */
void rb_model_logits(ar_model *m, const int *ids, int T, const int *rows, int nrows, double *logits);

/* The Phi-3 / GLM-4 block (block_fused.h) in this arithmetic: fused linears
 * as one product each then split, partial (halves or interleaved) rotary
 * with rope_scaling.h's frequencies taken as exact inputs, post norms. */
void rb_fused_block_forward(const ar_config *c, const rb_weights *w, const fx_ev *x, fx_ev *y, int B, int T);

/* ar_model_nll's per-position next-token NLL of B sequences ids [B, T]:
 * nll [B, T-1] = log-sum-exp of the logits minus the next token's (values
 * only, as rb_model_logits). */
void rb_model_nll(ar_model *m, const int *ids, int B, int T, double *nll);

#endif
