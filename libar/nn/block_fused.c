/* block_fused.c — Phi-3 and GLM-4 blocks (block_fused.h), from the facts of
 * transformers' modeling_phi3.py and modeling_glm4.py:
 *
 *   n1 = rms(x); q, k, v = split(qkv_proj(n1)) | q_proj(n1), k_proj(n1), v_proj(n1)
 *   q, k = rope on the first rope_dim dims of each head
 *   o = o_proj(attn(q, k, v));  h = x + (post_norms ? rms_pa(o) : o)
 *   g, u = chunk(gate_up_proj(rms(h)), 2);  m = down(silu(g) * u)
 *   y = h + (post_norms ? rms_pm(m) : m)
 *
 * Same ops as block.c (ops.h); the rope tables are built for each call's T
 * (rope_scaling.h: longrope and dynamic depend on it). */
#include "block_fused.h"
#include "error.h"
#include "ops.h"
#include "quant_kv.h"
#include "rope_scaling.h"

#include <stdlib.h>
#include <string.h>

/* Where each linear sits: q == k == v with a fused qkv_proj. */
typedef struct {
    int q, k, v, o, gu, down, n;
} lin_idx;

static lin_idx idx_of(const ar_config *c)
{
    if (c->fused_qkv) return (lin_idx){0, 0, 0, 1, 2, 3, 4};
    return (lin_idx){0, 1, 2, 3, 4, 5, 6};
}

/* First linear reading the same input as linear i (k, v read q's). */
static int group_of(const ar_config *c, int i)
{
    return !c->fused_qkv && i <= 2 ? 0 : i;
}

/* ------------------------------------------------ activation quantization */

static int set_act_quant(ar_block_work *ws, const ar_act_spec *const *aq, int nl)
{
    int any = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        ws->has_act_q[i] = i < nl && aq && aq[i];
        if (ws->has_act_q[i]) ws->act_q[i] = *aq[i];
        else memset(&ws->act_q[i], 0, sizeof ws->act_q[i]);
        any |= ws->has_act_q[i];
    }
    ws->xq_of = -1;
    if (any && !ws->xq && !(ws->xq = malloc(sizeof(float) * (size_t)ws->B * ws->T * ws->kmax))) {
        memset(ws->has_act_q, 0, sizeof ws->has_act_q);
        return ar_error("block: out of memory for the quantized linear inputs");
    }
    return 0;
}

int ar_fused_set_act_quant_phi3(ar_block_work *ws, const ar_act_spec *const *aq) { return set_act_quant(ws, aq, 4); }
int ar_fused_set_act_quant_glm4(ar_block_work *ws, const ar_act_spec *const *aq) { return set_act_quant(ws, aq, 6); }

const float *ar_fused_acts_input_phi3(const ar_block_acts *a, int i)
{
    const float *in[4] = {a->ln1, a->ao, a->ln2, a->act};
    return i >= 0 && i < 4 ? in[i] : NULL;
}

const float *ar_fused_acts_input_glm4(const ar_block_acts *a, int i)
{
    const float *in[6] = {a->ln1, a->ln1, a->ln1, a->ao, a->ln2, a->act};
    return i >= 0 && i < 6 ? in[i] : NULL;
}

/* What linear i multiplies by: x, or its fake-quantized copy in ws->xq (a
 * copy made for the previous member of the group with an equal spec is
 * reused, as in block.c). NULL on failure. */
static const float *linear_input(const ar_config *c, ar_block_work *ws, int i, const float *x, long rows, int k)
{
    if (!ws->has_act_q[i]) return x;
    int g = group_of(c, i), p = ws->xq_of;
    if (i != g && p >= 0 && group_of(c, p) == g && !memcmp(&ws->act_q[p], &ws->act_q[i], sizeof ws->act_q[i]))
        return ws->xq;
    ws->xq_of = -1;
    memcpy(ws->xq, x, sizeof(float) * rows * k);
    if (ar_act_quant(&ws->act_q[i], ws->xq, rows, k)) return NULL;
    ws->xq_of = i;
    return ws->xq;
}

/* y [R, N] = linear i of x [R, K], the observer seeing x first. */
static int lin_fwd(const ar_config *c, ar_block_work *ws, const ar_block_weights *w, int i, float *y, const float *x,
                   int R, int K, int N)
{
    if (ws->observe) ws->observe(ws->observe_ctx, i, x, R, K);
    const float *in = linear_input(c, ws, i, x, R, K);
    if (!in) return -1;
    return ar_linear_forward_g(ws->gemm, y, in, w->w[i], w->b[i], R, K, N);
}

/* Columns [c0, c0 + n) of src [R, ld] to dst [R, n] (split), or back (gather). */
static void cols(float *dst, int ldd, const float *src, int lds, long R, int n)
{
    for (long r = 0; r < R; r++) memcpy(dst + r * ldd, src + r * lds, sizeof(float) * n);
}

/* --------------------------------------------------------------- forward */

typedef struct {
    float *ln1, *rstd1, *q, *k, *v, *att;
    int save_att;
    float *ao, *po, *rstd3, *h, *ln2, *rstd2, *gate, *up, *act, *pm, *rstd4;
    float *mn;                  /* the normed down output (post_norms; may be pm when not kept) */
} fwd_bufs;

static int attn_half(const ar_config *c, const ar_block_weights *w, const float *x, int B, int T,
                     ar_block_work *ws, const fwd_bufs *f)
{
    lin_idx L = idx_of(c);
    int BT = B * T, C = c->hidden, HD = c->head_dim, NH = c->n_heads, NKV = c->n_kv_heads;
    int QD = NH * HD, KD = NKV * HD;
    ar_rmsnorm_forward(f->ln1, f->rstd1, x, w->attn_norm, BT, C, c->rms_eps);
    if (c->fused_qkv) {
        int N = QD + 2 * KD;
        if (lin_fwd(c, ws, w, L.q, ws->fused, f->ln1, BT, C, N)) return -1;
        cols(f->q, QD, ws->fused, N, BT, QD);
        cols(f->k, KD, ws->fused + QD, N, BT, KD);
        cols(f->v, KD, ws->fused + QD + KD, N, BT, KD);
    } else if (lin_fwd(c, ws, w, L.q, f->q, f->ln1, BT, C, QD) || lin_fwd(c, ws, w, L.k, f->k, f->ln1, BT, C, KD) ||
               lin_fwd(c, ws, w, L.v, f->v, f->ln1, BT, C, KD)) {
        return -1;
    }
    ar_rope_config_tables(ws->cos_t, ws->sin_t, c, ar_rope_rotated_dim(c), T);
    ar_rope_slice(f->q, ws->cos_t, ws->sin_t, B, T, NH, (long)NH * HD, HD, 0, ar_rope_rotated_dim(c), c->rope_interleaved, 1);
    ar_rope_slice(f->k, ws->cos_t, ws->sin_t, B, T, NKV, (long)NKV * HD, HD, 0, ar_rope_rotated_dim(c), c->rope_interleaved, 1);
    if (ws->observe_kv) ws->observe_kv(ws->kv_ctx, f->k, f->v, BT, KD);
    if (ws->kv_scale[0] > 0) ar_kv_fp8_qdq(f->k, (long)BT * KD, ws->kv_scale[0]);
    if (ws->kv_scale[1] > 0) ar_kv_fp8_qdq(f->v, (long)BT * KD, ws->kv_scale[1]);
    ar_attention_forward(f->ao, f->att, f->save_att, f->q, f->k, f->v, B, T, NH, NKV, HD, c->sliding_window);
    if (c->post_norms) {
        if (lin_fwd(c, ws, w, L.o, f->po, f->ao, BT, QD, C)) return -1;
        ar_rmsnorm_forward(f->h, f->rstd3, f->po, w->attn_post_norm, BT, C, c->rms_eps);
    } else if (lin_fwd(c, ws, w, L.o, f->h, f->ao, BT, QD, C)) {
        return -1;
    }
    ar_residual_forward(f->h, f->h, x, (long)BT * C);
    return 0;
}

static int mlp_half(const ar_config *c, const ar_block_weights *w, float *y, int BT, ar_block_work *ws,
                    const fwd_bufs *f)
{
    lin_idx L = idx_of(c);
    int C = c->hidden, F = c->intermediate;
    ar_rmsnorm_forward(f->ln2, f->rstd2, f->h, w->mlp_norm, BT, C, c->rms_eps);
    if (lin_fwd(c, ws, w, L.gu, ws->fused, f->ln2, BT, C, 2 * F)) return -1;
    cols(f->gate, F, ws->fused, 2 * F, BT, F);
    cols(f->up, F, ws->fused + F, 2 * F, BT, F);
    ar_swiglu_forward(f->act, f->gate, f->up, (long)BT * F);
    if (lin_fwd(c, ws, w, L.down, f->pm, f->act, BT, F, C)) return -1;
    const float *m = f->pm;
    if (c->post_norms) ar_rmsnorm_forward(f->mn, f->rstd4, f->pm, w->mlp_post_norm, BT, C, c->rms_eps), m = f->mn;
    ar_residual_forward(y, f->h, m, (long)BT * C);
    return 0;
}

static int check_fit(int B, int T, int capB, int capT, const char *what)
{
    if (B <= 0 || T <= 0 || T > capT || (long)B * T > (long)capB * capT)
        return ar_error("block: batch %d x %d exceeds the %s capacity %d x %d", B, T, what, capB, capT);
    return 0;
}

static int check_weights(const ar_config *c, const ar_block_weights *w, const ar_block_work *ws)
{
    if (w->nlinear != idx_of(c).n) return ar_error("block: %d linears for a %s block", w->nlinear, c->arch_name);
    if (c->post_norms && (!w->attn_post_norm || !w->mlp_post_norm))
        return ar_error("block: %s needs post_self_attn_layernorm and post_mlp_layernorm", c->arch_name);
    if (!ws->fused) return ar_error("block: workspace allocated for another architecture");
    return 0;
}

int ar_fused_forward(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                     ar_block_work *ws)
{
    if (check_fit(B, T, ws->B, ws->T, "workspace") || check_weights(c, w, ws)) return -1;
    /* ln holds n1, then the o_proj output, n2 and the down output in turn */
    fwd_bufs f = {.ln1 = ws->ln, .q = ws->q, .k = ws->k, .v = ws->v, .att = ws->att, .ao = ws->ao, .po = ws->ln,
                  .h = ws->h, .ln2 = ws->ln, .gate = ws->gate, .up = ws->up, .act = ws->gate, .pm = ws->ln, .mn = ws->ln};
    return attn_half(c, w, x, B, T, ws, &f) || mlp_half(c, w, y, B * T, ws, &f) ? -1 : 0;
}

int ar_fused_forward_train(const ar_config *c, const ar_block_weights *w, const float *x, float *y, int B, int T,
                           ar_block_work *ws, ar_block_acts *a)
{
    if (check_fit(B, T, ws->B, ws->T, "workspace") || check_fit(B, T, a->cap_B, a->cap_T, "activation") ||
        check_weights(c, w, ws))
        return -1;
    if (c->post_norms && !a->attn_out) return ar_error("block: activations allocated for another architecture");
    a->B = B, a->T = T;
    memcpy(a->x, x, sizeof(float) * B * T * c->hidden);
    fwd_bufs f = {.ln1 = a->ln1, .rstd1 = a->rstd1, .q = a->q, .k = a->k, .v = a->v, .att = a->att, .save_att = 1,
                  .ao = a->ao, .po = c->post_norms ? a->attn_out : ws->ln, .rstd3 = a->rstd_ao, .h = a->h, .ln2 = a->ln2,
                  .rstd2 = a->rstd2, .gate = a->gate, .up = a->up, .act = a->act,
                  .pm = c->post_norms ? a->mlp_out : ws->ln, .rstd4 = a->rstd_mo, .mn = ws->ln};
    return attn_half(c, w, a->x, B, T, ws, &f) || mlp_half(c, w, y, B * T, ws, &f) ? -1 : 0;
}

/* -------------------------------------------------------------- backward */

/* Linear i's backward over its saved input x [R, K] (straight-through, dW
 * against the quantized input): dx += dy W, dW += dy^T x̂, dxin[i] += dy W. */
static int lin_back(const ar_config *c, ar_block_work *ws, int i, float *dx, float *const *dW, float *const *dxin,
                    const float *dy, const float *x, const float *W, long R, int K, int N)
{
    const float *in = x;
    if (dW[i] && !(in = linear_input(c, ws, i, x, R, K))) return -1;
    if (ar_linear_backward_g(ws->gemm, dx, dW[i], NULL, dy, in, W, (int)R, K, N)) return -1;
    if (dxin && dxin[i] && ar_linear_backward_g(ws->gemm, dxin[i], NULL, NULL, dy, in, W, (int)R, K, N))
        return -1;
    return 0;
}

/* d through a post-branch norm: ws->dtmp = rms'(d) (the branch output's gradient). */
static const float *post_norm_back(const ar_config *c, ar_block_work *ws, const float *d, const float *pre,
                                   const float *norm, const float *rstd, long BT)
{
    if (!c->post_norms) return d;
    memset(ws->dtmp, 0, sizeof(float) * BT * c->hidden);
    ar_rmsnorm_backward(ws->dtmp, NULL, d, pre, norm, rstd, BT, c->hidden);
    return ws->dtmp;
}

static int mlp_back(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                    float *const *dW, float *const *dxin, ar_block_work *ws)
{
    lin_idx L = idx_of(c);
    long BT = (long)a->B * a->T;
    int C = c->hidden, F = c->intermediate;
    memset(ws->dact, 0, sizeof(float) * BT * F);
    memset(ws->dgate, 0, sizeof(float) * BT * F);
    memset(ws->dup, 0, sizeof(float) * BT * F);
    memset(ws->dln, 0, sizeof(float) * BT * C);
    memcpy(ws->dh, dy, sizeof(float) * BT * C);
    const float *dm = post_norm_back(c, ws, dy, a->mlp_out, w->mlp_post_norm, a->rstd_mo, BT);
    if (lin_back(c, ws, L.down, ws->dact, dW, dxin, dm, a->act, w->w[L.down], BT, F, C)) return -1;
    ar_swiglu_backward(ws->dgate, ws->dup, ws->dact, a->gate, a->up, BT * F);
    cols(ws->fused, 2 * F, ws->dgate, F, BT, F);
    cols(ws->fused + F, 2 * F, ws->dup, F, BT, F);
    if (lin_back(c, ws, L.gu, ws->dln, dW, dxin, ws->fused, a->ln2, w->w[L.gu], BT, C, 2 * F)) return -1;
    ar_rmsnorm_backward(ws->dh, NULL, ws->dln, a->h, w->mlp_norm, a->rstd2, BT, C);
    return 0;
}

static int attn_back(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, float *const *dW,
                     float *const *dxin, float *dx, ar_block_work *ws)
{
    lin_idx L = idx_of(c);
    int B = a->B, T = a->T, C = c->hidden, HD = c->head_dim, NH = c->n_heads, NKV = c->n_kv_heads;
    int QD = NH * HD, KD = NKV * HD;
    long BT = (long)B * T;
    memset(ws->dao, 0, sizeof(float) * BT * QD);
    memset(ws->dq, 0, sizeof(float) * BT * QD);
    memset(ws->dk, 0, sizeof(float) * BT * KD);
    memset(ws->dv, 0, sizeof(float) * BT * KD);
    const float *dpo = post_norm_back(c, ws, ws->dh, a->attn_out, w->attn_post_norm, a->rstd_ao, BT);
    if (lin_back(c, ws, L.o, ws->dao, dW, dxin, dpo, a->ao, w->w[L.o], BT, QD, C)) return -1;
    ar_attention_backward(ws->dq, ws->dk, ws->dv, ws->att, ws->dao, a->att, a->q, a->k, a->v, B, T, NH, NKV, HD);
    ar_rope_config_tables(ws->cos_t, ws->sin_t, c, ar_rope_rotated_dim(c), T);
    ar_rope_slice(ws->dq, ws->cos_t, ws->sin_t, B, T, NH, (long)NH * HD, HD, 0, ar_rope_rotated_dim(c), c->rope_interleaved, -1);
    ar_rope_slice(ws->dk, ws->cos_t, ws->sin_t, B, T, NKV, (long)NKV * HD, HD, 0, ar_rope_rotated_dim(c), c->rope_interleaved, -1);
    float *dln = dx ? ws->dln : NULL;
    if (dln) memset(dln, 0, sizeof(float) * BT * C);
    if (c->fused_qkv) {
        int N = QD + 2 * KD;
        cols(ws->fused, N, ws->dq, QD, BT, QD);
        cols(ws->fused + QD, N, ws->dk, KD, BT, KD);
        cols(ws->fused + QD + KD, N, ws->dv, KD, BT, KD);
        if (lin_back(c, ws, L.q, dln, dW, dxin, ws->fused, a->ln1, w->w[L.q], BT, C, N)) return -1;
    } else if (lin_back(c, ws, L.q, dln, dW, dxin, ws->dq, a->ln1, w->w[L.q], BT, C, QD) ||
               lin_back(c, ws, L.k, dln, dW, dxin, ws->dk, a->ln1, w->w[L.k], BT, C, KD) ||
               lin_back(c, ws, L.v, dln, dW, dxin, ws->dv, a->ln1, w->w[L.v], BT, C, KD)) {
        return -1;
    }
    if (dx) {
        ar_residual_backward(dx, NULL, ws->dh, BT * C);
        ar_rmsnorm_backward(dx, NULL, dln, a->x, w->attn_norm, a->rstd1, BT, C);
    }
    return 0;
}

int ar_fused_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a, const float *dy,
                      float *const *dW, float *dx, float *const *dxin, ar_block_work *ws)
{
    if (!ws->train) return ar_error("block: backward needs a training workspace");
    if (check_fit(a->B, a->T, ws->B, ws->T, "workspace") || check_weights(c, w, ws)) return -1;
    if (c->post_norms && (!ws->dtmp || !a->attn_out)) return ar_error("block: buffers allocated for another architecture");
    return mlp_back(c, w, a, dy, dW, dxin, ws) || attn_back(c, w, a, dW, dxin, dx, ws) ? -1 : 0;
}
