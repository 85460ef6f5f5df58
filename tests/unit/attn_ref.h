/* attn_ref.h — references for the MoE families' attention layers
 * (attn_sinks.h, attn_mla.h, rope_scaling.h), shared by test_attn_sinks.c,
 * test_attn_mla.c and test_rope_scaling.c: the transformers fixture
 * (tests/fixtures/moe/attn_refs.{json,bin}, written by dump_attn_refs.py)
 * and the layers in double with error bounds (fixture.h's fx_ev), naive
 * loops written from the formulas, each bound mirroring the f32 op's order
 * of operations (sums in any order). */
#ifndef AR_TEST_ATTN_REF_H
#define AR_TEST_ATTN_REF_H

#include <cJSON.h>

#include "attn_mla.h"
#include "fixture.h"

/* ---- the transformers fixture ---- */
typedef struct {
    cJSON *json;
    unsigned char *bin;
    size_t len;
} ar_refs;

/* Loads tests/fixtures/moe/attn_refs.json and .bin (asserts). */
void ar_refs_load(ar_refs *r);
void ar_refs_free(ar_refs *r);
/* The case's object (asserts it exists). */
const cJSON *ar_refs_case(const ar_refs *r, const char *cs);
/* Number from the case's object (or its "config" when cfg). */
double ar_refs_num(const ar_refs *r, const char *cs, int cfg, const char *key);
/* Tensor name of case cs as f32 (bf16 widened exactly), malloc'd; *n its
 * element count (n may be NULL). Asserts it exists. */
float *ar_refs_tensor(const ar_refs *r, const char *cs, const char *name, long *n);
/* The same or NULL when the case has no such tensor. */
float *ar_refs_tensor_opt(const ar_refs *r, const char *cs, const char *name, long *n);

/* ---- references ---- */

/* ar_rope_slice on fx_ev values (same layout arguments; tables exact
 * [T, D/2] values with bounds). */
void ra_rope_slice(fx_ev *x, const fx_ev *cos_t, const fx_ev *sin_t, int B, int T, int H, long rs, long hs, int off,
                   int D, int interleave, int sign);

/* ar_attn_sinks_forward: out [B, T, NH, DV], P [B, NH, T, T] (may be NULL);
 * sinks [NH] or NULL; scale the f32 scale the op receives. */
void ra_attention(fx_ev *out, fx_ev *P, const fx_ev *q, const fx_ev *k, const fx_ev *v, const double *sinks, int B,
                  int T, int NH, int NKV, int DK, int DV, double scale, int window);

/* ar_attn_sinks_backward from P onto zeros: dq, dk, dv, dsinks [NH] (may be NULL). */
void ra_attention_backward(fx_ev *dq, fx_ev *dk, fx_ev *dv, fx_ev *dsinks, const fx_ev *dout, const fx_ev *P,
                           const fx_ev *q, const fx_ev *k, const fx_ev *v, int B, int T, int NH, int NKV, int DK,
                           int DV, double scale);

/* MLA weights in double (NULL where absent), as ar_mla_weights. */
typedef struct {
    double *w[AR_MLA_NLINEAR], *b[AR_MLA_NLINEAR], *qn, *kvn;
} ra_mla_weights;

/* ar_mla_forward: y [BT, C] from x [BT, C] (exact inputs), tables [T, DR/2]. */
void ra_mla_forward(fx_ev *y, const fx_ev *x, const ra_mla_weights *w, const ar_mla_dims *d, const fx_ev *cos_t,
                    const fx_ev *sin_t, int B, int T);

/* ar_mla_backward of L = sum(y . dy): dW[i] [N_i, K_i], db[i] [N_i] (entries
 * NULL when absent or not wanted) and dx [BT, C] (may be NULL), onto zeros. */
void ra_mla_backward(fx_ev *const dW[AR_MLA_NLINEAR], fx_ev *const db[AR_MLA_NLINEAR], fx_ev *dx, const fx_ev *x,
                     const fx_ev *dy, const ra_mla_weights *w, const ar_mla_dims *d, const fx_ev *cos_t,
                     const fx_ev *sin_t, int B, int T);
#endif

/* ---- finite differences ---- */

/* fn(ctx, out) evaluates nout outputs in double from parameters that
 * include p [n]. Asserts, for every stride-th j, that want[j] (an analytic
 * gradient of L = sum(out . r) with respect to p[j]) is within the central
 * difference's error bound (fixture.h fx_central_diff, steps 1e-5 and
 * 2e-5). Runs fn under FX_VALUES, restores FX_BOUNDS. */
void ra_check_fd(void (*fn)(void *ctx, double *out), void *ctx, const double *r, long nout, double *p, long n,
                 long stride, const double *want, const char *what);

/* Copies: f32 -> double, fx_ev values / bounds. */
double *ra_dup(const float *f, long n);
void ra_split(const fx_ev *e, double *v, double *b, long n);
