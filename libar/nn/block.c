/* block.c — Llama-family decoder block forward/backward (see block.h).
 *
 *   h = x + o_proj(attn(rope(qknorm(q_proj(n1))), rope(qknorm(k_proj(n1))), v_proj(n1)))
 *   y = h + down(silu(gate(n2)) * up(n2)),   n1 = rmsnorm1(x), n2 = rmsnorm2(h) */
#include "block.h"
#include "error.h"
#include "moe.h"
#include "ops.h"
#include "ops_amp.h"
#include "quant_kv.h"
#include "rope_scaling.h"

#include <stdlib.h>
#include <string.h>

const char *const ar_linear_names[AR_NLINEAR] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

void ar_linear_shape(const ar_config *c, int i, int *n_out, int *k_in)
{
    int C = c->hidden, F = c->intermediate;
    int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    int n = 0, k = 0;
    switch (i) {
    case AR_Q: n = QD; k = C; break;
    case AR_K: case AR_V: n = KD; k = C; break;
    case AR_O: n = C; k = QD; break;
    case AR_GATE: case AR_UP: n = F; k = C; break;
    case AR_DOWN: n = C; k = F; break;
    }
    *n_out = n;
    *k_in = k;
}

/* ------------------------------------------------------------ allocation */

static int check_config(const ar_config *c)
{
    if (c->hidden <= 0 || c->intermediate <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->head_dim % 2 ||
        c->n_heads % c->n_kv_heads)
        return ar_error("block: bad shape (hidden %d, intermediate %d, heads %d/%d, "
                        "head_dim %d)", c->hidden, c->intermediate, c->n_heads,
                        c->n_kv_heads, c->head_dim);
    return 0;
}

/* Allocate n floats into *p, counting failures in *fail (one check at the end
 * keeps the init functions flat). */
static void alloc_f(float **p, long n, int *fail)
{
    *p = n > 0 ? malloc(sizeof(float) * (size_t)n) : NULL;
    if (n > 0 && !*p) (*fail)++;
}

int ar_block_work_init(ar_block_work *ws, const ar_config *c, int B, int T, int train)
{
    memset(ws, 0, sizeof *ws);
    if (check_config(c)) return -1;
    if (B <= 0 || T <= 0) return ar_error("block: bad batch %d x %d", B, T);
    long BT = (long)B * T, C = c->hidden, F = c->intermediate;
    long QD = (long)c->n_heads * c->head_dim, KD = (long)c->n_kv_heads * c->head_dim;
    int fail = 0;
    ws->B = B, ws->T = T, ws->train = train;
    ws->kmax = (int)(C > QD ? (C > F ? C : F) : (QD > F ? QD : F));
    ws->xq_of = -1;
    alloc_f(&ws->cos_t, (long)T * c->head_dim / 2, &fail);
    alloc_f(&ws->sin_t, (long)T * c->head_dim / 2, &fail);
    alloc_f(&ws->ln, BT * C, &fail), alloc_f(&ws->h, BT * C, &fail);
    alloc_f(&ws->q, BT * QD, &fail), alloc_f(&ws->ao, BT * QD, &fail);
    alloc_f(&ws->k, BT * KD, &fail), alloc_f(&ws->v, BT * KD, &fail);
    alloc_f(&ws->gate, BT * F, &fail), alloc_f(&ws->up, BT * F, &fail);
    alloc_f(&ws->rstd, BT * c->n_heads, &fail);
    if (c->fused_qkv || c->fused_gate_up)   /* block_fused.c */
        alloc_f(&ws->fused, BT * (QD + 2 * KD > 2 * F ? QD + 2 * KD : 2 * F), &fail);
    if (train && c->post_norms) alloc_f(&ws->dtmp, BT * C, &fail);
    alloc_f(&ws->att, train ? ar_attention_backward_scratch(B, T, c->n_heads, c->head_dim)
                            : ar_attention_scratch(T), &fail);
    if (c->norm_plus_one) alloc_f(&ws->normw, 4 * C + 2L * c->head_dim, &fail);
    if (c->sandwich_norm && train) alloc_f(&ws->dpost, BT * C, &fail);
    if (train) {
        alloc_f(&ws->dact, BT * F, &fail), alloc_f(&ws->dgate, BT * F, &fail);
        alloc_f(&ws->dup, BT * F, &fail);
        alloc_f(&ws->dln, BT * C, &fail), alloc_f(&ws->dh, BT * C, &fail);
        alloc_f(&ws->dao, BT * QD, &fail), alloc_f(&ws->dq, BT * QD, &fail);
        alloc_f(&ws->dqn, BT * QD, &fail);
        alloc_f(&ws->dk, BT * KD, &fail), alloc_f(&ws->dv, BT * KD, &fail);
        alloc_f(&ws->dkn, BT * KD, &fail);
    }
    if (fail) {
        ar_block_work_free(ws);
        return ar_error("block: out of memory for a %d x %d workspace", B, T);
    }
    /* every rope type (rope_scaling.h); dynamic and longrope rebuilt per call for its T */
    ar_rope_config_tables(ws->cos_t, ws->sin_t, c, ar_rope_rotated_dim(c), T);
    return 0;
}

void ar_block_work_free(ar_block_work *ws)
{
    float **p[] = {&ws->cos_t, &ws->sin_t, &ws->ln, &ws->h, &ws->q, &ws->ao, &ws->k,
                   &ws->v, &ws->gate, &ws->up, &ws->rstd, &ws->att, &ws->dact,
                   &ws->dgate, &ws->dup, &ws->dln, &ws->dh, &ws->dao, &ws->dq,
                   &ws->dqn, &ws->dk, &ws->dv, &ws->dkn, &ws->xq, &ws->normw, &ws->dpost,
                   &ws->fused, &ws->dtmp};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(*p[i]), *p[i] = NULL;
    if (ws->moe) ar_moe_acts_free(ws->moe), free(ws->moe), ws->moe = NULL;
    if (ws->fam) ws->fam_free(ws->fam), ws->fam = NULL;
}

int ar_block_acts_init(ar_block_acts *a, const ar_config *c, int B, int T)
{
    memset(a, 0, sizeof *a);
    if (check_config(c)) return -1;
    if (B <= 0 || T <= 0) return ar_error("block: bad batch %d x %d", B, T);
    long BT = (long)B * T, C = c->hidden, F = c->intermediate, NH = c->n_heads;
    long QD = NH * c->head_dim, KD = (long)c->n_kv_heads * c->head_dim;
    int fail = 0;
    a->cap_B = B, a->cap_T = T;
    alloc_f(&a->x, BT * C, &fail), alloc_f(&a->ln1, BT * C, &fail);
    alloc_f(&a->rstd1, BT, &fail);
    if (c->qk_norm) {
        alloc_f(&a->qpre, BT * QD, &fail), alloc_f(&a->kpre, BT * KD, &fail);
        alloc_f(&a->rstdq, BT * NH, &fail);
        alloc_f(&a->rstdk, BT * c->n_kv_heads, &fail);
    }
    alloc_f(&a->q, BT * QD, &fail), alloc_f(&a->k, BT * KD, &fail);
    alloc_f(&a->v, BT * KD, &fail), alloc_f(&a->att, (long)B * NH * T * T, &fail);
    alloc_f(&a->ao, BT * QD, &fail), alloc_f(&a->h, BT * C, &fail);
    alloc_f(&a->ln2, BT * C, &fail), alloc_f(&a->rstd2, BT, &fail);
    alloc_f(&a->gate, BT * F, &fail), alloc_f(&a->up, BT * F, &fail);
    alloc_f(&a->act, BT * F, &fail);
    if (c->sandwich_norm || c->post_norms) {
        alloc_f(&a->attn_out, BT * C, &fail), alloc_f(&a->rstd_ao, BT, &fail);
        alloc_f(&a->mlp_out, BT * C, &fail), alloc_f(&a->rstd_mo, BT, &fail);
    }
    if (fail) {
        ar_block_acts_free(a);
        return ar_error("block: out of memory for %d x %d saved activations", B, T);
    }
    return 0;
}

void ar_block_acts_free(ar_block_acts *a)
{
    float **p[] = {&a->x,   &a->ln1, &a->rstd1, &a->qpre, &a->rstdq, &a->kpre,
                   &a->rstdk, &a->q, &a->k,     &a->v,    &a->att,   &a->ao,
                   &a->h,   &a->ln2, &a->rstd2, &a->gate, &a->up,    &a->act,
                   &a->attn_out, &a->rstd_ao, &a->mlp_out, &a->rstd_mo};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(*p[i]), *p[i] = NULL;
    if (a->moe) ar_moe_acts_free(a->moe), free(a->moe), a->moe = NULL;
    if (a->fam) a->fam_free(a->fam), a->fam = NULL;
}

/* ------------------------------------------------ activation quantization */

int ar_block_set_act_quant(ar_block_work *ws, const ar_act_spec *const aq[AR_NLINEAR])
{
    int any = 0;
    for (int i = 0; i < AR_NLINEAR; i++) {
        ws->has_act_q[i] = aq && aq[i];
        if (ws->has_act_q[i]) ws->act_q[i] = *aq[i];
        else memset(&ws->act_q[i], 0, sizeof ws->act_q[i]);
        any |= ws->has_act_q[i];
    }
    ws->xq_of = -1;
    if (any && !ws->xq) {
        int fail = 0;
        alloc_f(&ws->xq, (long)ws->B * ws->T * ws->kmax, &fail);
        if (fail) {
            memset(ws->has_act_q, 0, sizeof ws->has_act_q);
            return ar_error("block: out of memory for the quantized linear inputs");
        }
    }
    return 0;
}

/* First linear of the group reading the same input as linear i. */
static int input_group(int i)
{
    return i <= AR_V ? AR_Q : i == AR_UP ? AR_GATE : i;
}

static int same_act(const ar_block_work *ws, int i, int j)
{
    return !memcmp(&ws->act_q[i], &ws->act_q[j], sizeof ws->act_q[i]);
}

/* What linear i multiplies by: its input x [rows, k] itself, or x
 * fake-quantized into ws->xq (x is left as it is, so the saved activations
 * stay unquantized and the backward re-derives x̂ the same way). Linears of
 * one input group are visited one after another, forward and backward, so a
 * copy made for the previous member with an equal spec is still in ws->xq
 * and is reused. NULL on failure (ar_error). */
const float *ar_block_linear_input(ar_block_work *ws, int i, const float *x, long rows, int k)
{
    if (!ws->has_act_q[i]) return x;
    int g = input_group(i);
    if (i != g && ws->xq_of >= 0 && input_group(ws->xq_of) == g && same_act(ws, ws->xq_of, i)) return ws->xq;
    ws->xq_of = -1;
    memcpy(ws->xq, x, sizeof(float) * rows * k);
    if (ar_act_quant(&ws->act_q[i], ws->xq, rows, k)) return NULL;
    ws->xq_of = i;
    return ws->xq;
}

const float *ar_block_acts_input(const ar_block_acts *a, int i)
{
    switch (input_group(i)) {
    case AR_Q: return a->ln1;
    case AR_O: return a->ao;
    case AR_GATE: return a->ln2;
    default: return a->act;
    }
}

/* --------------------------------------------------------------- forward */

/* linear_input for the forwards: the observer sees x first. */
const float *ar_block_forward_input(ar_block_work *ws, int i, const float *x, long rows, int k)
{
    if (ws->observe) ws->observe(ws->observe_ctx, i, x, rows, k);
    return ar_block_linear_input(ws, i, x, rows, k);
}

/* Where one forward keeps its intermediates: the workspace (inference, with
 * buffers reused) or the saved activations (training). NULL rstd = not kept. */
typedef struct {
    float *ln1, *rstd1, *qpre, *rstdq, *kpre, *rstdk, *q, *k, *v, *att;
    int save_att;
    float *ao, *h, *ln2, *rstd2, *gate, *up, *act, *tmp;
} fwd_bufs;

/* K and V as the KV cache would hold them: observed, then fake-quantized
 * (static FP8) when ws asks. */
void ar_block_kv_cache(ar_block_work *ws, float *k, float *v, long n, int kd)
{
    if (ws->observe_kv) ws->observe_kv(ws->kv_ctx, k, v, n / kd, kd);
    if (ws->kv_scale[0] > 0) ar_kv_fp8_qdq(k, n, ws->kv_scale[0]);
    if (ws->kv_scale[1] > 0) ar_kv_fp8_qdq(v, n, ws->kv_scale[1]);
}

/* Under AMP (bf16 GEMMs) the elementwise passes may use ops_amp.h's
 * vectorized versions: their error is far below the bf16 rounding of the
 * products around them, and the f32 path stays the byte-exact reference. */
static int amp_on(const ar_block_work *ws) { return ws->gemm && ws->gemm->bf16; }

/* q, k and v of the normed input f->ln1 [BT, C], which stays pinned for
 * the three products (one bf16 copy; gemm.h). */
static int qkv_forward(const ar_block_weights *w, int BT, int C, int QD, int KD, ar_block_work *ws,
                       const fwd_bufs *f)
{
    int pin = ar_gemm_pin(ws->gemm, f->ln1, BT, C);
    if (pin < 0) return -1;
    const float *in;
    int rc = !(in = ar_block_forward_input(ws, AR_Q, f->ln1, BT, C)) ||
             ar_linear_forward_g(ws->gemm, f->qpre, in, w->w[AR_Q], w->b[AR_Q], BT, C, QD) ||
             !(in = ar_block_forward_input(ws, AR_K, f->ln1, BT, C)) ||
             ar_linear_forward_g(ws->gemm, f->kpre, in, w->w[AR_K], w->b[AR_K], BT, C, KD) ||
             !(in = ar_block_forward_input(ws, AR_V, f->ln1, BT, C)) ||
             ar_linear_forward_g(ws->gemm, f->v, in, w->w[AR_V], w->b[AR_V], BT, C, KD);
    if (pin) ar_gemm_unpin(ws->gemm, f->ln1);
    return rc ? -1 : 0;
}

/* Attention half: h = x + o_proj(attn(...)). x is not read after this. */
static int attn_half(const ar_config *c, const ar_block_weights *w, const float *x,
                     int B, int T, ar_block_work *ws, const fwd_bufs *f)
{
    int BT = B * T, C = c->hidden, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    ar_rmsnorm_forward(f->ln1, f->rstd1, x, w->attn_norm, BT, C, c->rms_eps);
    if (qkv_forward(w, BT, C, QD, KD, ws, f)) return -1;
    const float *in;
    if (w->q_norm) ar_rmsnorm_forward(f->q, f->rstdq, f->qpre, w->q_norm, BT * NH, HD, c->rms_eps);
    else if (f->q != f->qpre) memcpy(f->q, f->qpre, sizeof(float) * BT * QD);
    if (w->k_norm) ar_rmsnorm_forward(f->k, f->rstdk, f->kpre, w->k_norm, BT * NKV, HD, c->rms_eps);
    else if (f->k != f->kpre) memcpy(f->k, f->kpre, sizeof(float) * BT * KD);
    ar_rope_forward(f->q, ws->cos_t, ws->sin_t, B, T, NH, HD);
    ar_rope_forward(f->k, ws->cos_t, ws->sin_t, B, T, NKV, HD);
    ar_block_kv_cache(ws, f->k, f->v, (long)BT * KD, KD);
    ar_attention_forward(f->ao, f->att, f->save_att, f->q, f->k, f->v, B, T, NH, NKV,
                         HD, c->sliding_window);
    if (!(in = ar_block_forward_input(ws, AR_O, f->ao, BT, QD))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->h, in, w->w[AR_O], w->b[AR_O], BT, QD, C)) return -1;
    ar_residual_forward(f->h, f->h, x, (long)BT * C);
    return 0;
}

int ar_block_attn_forward(const ar_config *c, const ar_block_weights *w, const float *x, int B, int T,
                          ar_block_work *ws, ar_block_acts *a)
{
    if (ar_block_check_fit(B, T, ws->B, ws->T, "workspace")) return -1;
    if (!a) {
        fwd_bufs f = {.ln1 = ws->ln, .qpre = ws->q, .kpre = ws->k, .q = ws->q, .k = ws->k,
                      .v = ws->v, .att = ws->att, .ao = ws->ao, .h = ws->h};
        return attn_half(c, w, x, B, T, ws, &f);
    }
    if (ar_block_check_fit(B, T, a->cap_B, a->cap_T, "activation")) return -1;
    if ((w->q_norm || w->k_norm) && !a->qpre)
        return ar_error("block: QK-norm weights but activations allocated without");
    a->B = B, a->T = T;
    memcpy(a->x, x, sizeof(float) * B * T * c->hidden);
    fwd_bufs f = {.ln1 = a->ln1, .rstd1 = a->rstd1, .qpre = w->q_norm ? a->qpre : a->q,
                  .rstdq = a->rstdq, .kpre = w->k_norm ? a->kpre : a->k,
                  .rstdk = a->rstdk, .q = a->q, .k = a->k, .v = a->v, .att = a->att,
                  .save_att = 1, .ao = a->ao, .h = a->h};
    return attn_half(c, w, a->x, B, T, ws, &f);
}

/* MLP half: y = h + down(silu(gate(n2)) * up(n2)). */
static int mlp_half(const ar_config *c, const ar_block_weights *w, float *y, int BT,
                    ar_block_work *ws, const fwd_bufs *f)
{
    int C = c->hidden, F = c->intermediate;
    ar_rmsnorm_forward(f->ln2, f->rstd2, f->h, w->mlp_norm, BT, C, c->rms_eps);
    int pin = ar_gemm_pin(ws->gemm, f->ln2, BT, C);   /* gate and up share its bf16 copy */
    if (pin < 0) return -1;
    const float *in;
    int rc = !(in = ar_block_forward_input(ws, AR_GATE, f->ln2, BT, C)) ||
             ar_linear_forward_g(ws->gemm, f->gate, in, w->w[AR_GATE], w->b[AR_GATE], BT, C, F) ||
             !(in = ar_block_forward_input(ws, AR_UP, f->ln2, BT, C)) ||
             ar_linear_forward_g(ws->gemm, f->up, in, w->w[AR_UP], w->b[AR_UP], BT, C, F);
    if (pin) ar_gemm_unpin(ws->gemm, f->ln2);
    if (rc) return -1;
    if (amp_on(ws)) ar_swiglu_forward_amp(f->act, f->gate, f->up, (long)BT * F);
    else ar_swiglu_forward(f->act, f->gate, f->up, (long)BT * F);
    if (!(in = ar_block_forward_input(ws, AR_DOWN, f->act, BT, F))) return -1;
    if (ar_linear_forward_g(ws->gemm, f->tmp, in, w->w[AR_DOWN], w->b[AR_DOWN], BT, F, C)) return -1;
    ar_residual_forward(y, f->h, f->tmp, (long)BT * C);
    return 0;
}

int ar_block_check_fit(int B, int T, int capB, int capT, const char *what)
{
    if (B <= 0 || T <= 0 || T > capT || (long)B * T > (long)capB * capT)
        return ar_error("block: batch %d x %d exceeds the %s capacity %d x %d", B, T,
                        what, capB, capT);
    return 0;
}

int ar_block_forward(const ar_config *c, const ar_block_weights *w, const float *x,
                     float *y, int B, int T, ar_block_work *ws)
{
    if (ar_block_check_fit(B, T, ws->B, ws->T, "workspace")) return -1;
    if (ar_rope_by_length(c)) ar_rope_config_tables(ws->cos_t, ws->sin_t, c, ar_rope_rotated_dim(c), T);
    /* ln serves both norms and, once gate/up are computed, the down output;
     * QK-norm and SwiGLU run in place. */
    fwd_bufs f = {.ln1 = ws->ln, .qpre = ws->q, .kpre = ws->k, .q = ws->q, .k = ws->k,
                  .v = ws->v, .att = ws->att, .ao = ws->ao, .h = ws->h, .ln2 = ws->ln,
                  .gate = ws->gate, .up = ws->up, .act = ws->gate, .tmp = ws->ln};
    return attn_half(c, w, x, B, T, ws, &f) || mlp_half(c, w, y, B * T, ws, &f) ? -1 : 0;
}

int ar_block_forward_train(const ar_config *c, const ar_block_weights *w,
                           const float *x, float *y, int B, int T,
                           ar_block_work *ws, ar_block_acts *a)
{
    if (ar_block_check_fit(B, T, ws->B, ws->T, "workspace")) return -1;
    if (ar_block_check_fit(B, T, a->cap_B, a->cap_T, "activation")) return -1;
    if ((w->q_norm || w->k_norm) && !a->qpre)
        return ar_error("block: QK-norm weights but activations allocated without");
    a->B = B, a->T = T;
    if (ar_rope_by_length(c)) ar_rope_config_tables(ws->cos_t, ws->sin_t, c, ar_rope_rotated_dim(c), T);
    memcpy(a->x, x, sizeof(float) * B * T * c->hidden);
    fwd_bufs f = {.ln1 = a->ln1, .rstd1 = a->rstd1, .qpre = w->q_norm ? a->qpre : a->q,
                  .rstdq = a->rstdq, .kpre = w->k_norm ? a->kpre : a->k,
                  .rstdk = a->rstdk, .q = a->q, .k = a->k, .v = a->v, .att = a->att,
                  .save_att = 1, .ao = a->ao, .h = a->h, .ln2 = a->ln2,
                  .rstd2 = a->rstd2, .gate = a->gate, .up = a->up, .act = a->act,
                  .tmp = ws->ln};
    return attn_half(c, w, a->x, B, T, ws, &f) || mlp_half(c, w, y, B * T, ws, &f) ? -1 : 0;
}

/* -------------------------------------------------------------- backward */

/* Backward of linear i over its saved input x [R, K] (straight-through: dW
 * against the fake-quantized x̂ the forward multiplied by): dx [R, K] += dy·W,
 * dW += dy^T·x̂, and with dxin[i], dxin[i] += dy·W on its own. dx and dW may
 * be NULL. 0 or -1 (ar_error from the activation quantizer or a bf16 GEMM). */
static int linear_back(ar_block_work *ws, int i, float *dx, float *const dW[AR_NLINEAR],
                       float *const dxin[AR_NLINEAR], const float *dy, const float *x,
                       const float *W, long R, int K, int N)
{
    const float *in = x;
    if (dW[i] && !(in = ar_block_linear_input(ws, i, x, R, K))) return -1;
    if (ar_linear_backward_g(ws->gemm, dx, dW[i], NULL, dy, in, W, (int)R, K, N)) return -1;
    if (dxin && dxin[i] && ar_linear_backward_g(ws->gemm, dxin[i], NULL, NULL, dy, in, W, (int)R, K, N))
        return -1;
    return 0;
}

/* MLP half backward: from dy, dW of down/gate/up, and ws->dh = dL/dh. */
static int mlp_back(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                    const float *dy, float *const dW[AR_NLINEAR], float *const dxin[AR_NLINEAR],
                    ar_block_work *ws)
{
    long BT = (long)a->B * a->T;
    int C = c->hidden, F = c->intermediate;
    memset(ws->dact, 0, sizeof(float) * BT * F);
    if (!amp_on(ws)) {   /* the AMP SwiGLU backward overwrites them */
        memset(ws->dgate, 0, sizeof(float) * BT * F);
        memset(ws->dup, 0, sizeof(float) * BT * F);
    }
    memset(ws->dln, 0, sizeof(float) * BT * C);
    memcpy(ws->dh, dy, sizeof(float) * BT * C); /* residual: dh = dy + ... */
    if (linear_back(ws, AR_DOWN, ws->dact, dW, dxin, dy, a->act, w->w[AR_DOWN], BT, F, C)) return -1;
    if (amp_on(ws)) ar_swiglu_backward_amp(ws->dgate, ws->dup, ws->dact, a->gate, a->up, BT * F);
    else ar_swiglu_backward(ws->dgate, ws->dup, ws->dact, a->gate, a->up, BT * F);
    int pin = ar_gemm_pin(ws->gemm, a->ln2, (int)BT, C);   /* both dW products read it */
    if (pin < 0) return -1;
    int rc = linear_back(ws, AR_GATE, ws->dln, dW, dxin, ws->dgate, a->ln2, w->w[AR_GATE], BT, C, F) ||
             linear_back(ws, AR_UP, ws->dln, dW, dxin, ws->dup, a->ln2, w->w[AR_UP], BT, C, F);
    if (pin) ar_gemm_unpin(ws->gemm, a->ln2);
    if (rc) return -1;
    ar_rmsnorm_backward(ws->dh, NULL, ws->dln, a->h, w->mlp_norm, a->rstd2, BT, C);
    return 0;
}

/* Through QK-norm (when present) for one of q/k: dpre += norm'(dn). */
static const float *qknorm_back(float *dpre, const float *dn, const float *norm,
                                const float *pre, const float *rstd, long rows,
                                int HD)
{
    if (!norm) return dn;
    memset(dpre, 0, sizeof(float) * rows * HD);
    ar_rmsnorm_backward(dpre, NULL, dn, pre, norm, rstd, rows, HD);
    return dpre;
}

/* Attention half backward: from ws->dh, dW of o/q/k/v and optionally dx. */
static int attn_back(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                     float *const dW[AR_NLINEAR], float *const dxin[AR_NLINEAR], float *dx,
                     ar_block_work *ws)
{
    int B = a->B, T = a->T, C = c->hidden, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    long BT = (long)B * T;
    memset(ws->dao, 0, sizeof(float) * BT * QD);
    memset(ws->dq, 0, sizeof(float) * BT * QD);
    memset(ws->dk, 0, sizeof(float) * BT * KD);
    memset(ws->dv, 0, sizeof(float) * BT * KD);
    if (linear_back(ws, AR_O, ws->dao, dW, dxin, ws->dh, a->ao, w->w[AR_O], BT, QD, C)) return -1;
    ar_attention_backward(ws->dq, ws->dk, ws->dv, ws->att, ws->dao, a->att, a->q, a->k,
                          a->v, B, T, NH, NKV, HD);
    if (ar_rope_by_length(c)) ar_rope_config_tables(ws->cos_t, ws->sin_t, c, ar_rope_rotated_dim(c), T);
    ar_rope_backward(ws->dq, ws->cos_t, ws->sin_t, B, T, NH, HD);
    ar_rope_backward(ws->dk, ws->cos_t, ws->sin_t, B, T, NKV, HD);
    const float *dq = qknorm_back(ws->dqn, ws->dq, w->q_norm, a->qpre, a->rstdq, BT * NH, HD);
    const float *dk = qknorm_back(ws->dkn, ws->dk, w->k_norm, a->kpre, a->rstdk, BT * NKV, HD);
    float *dln = dx ? ws->dln : NULL; /* dL/dn1 only matters on the way to dx */
    if (dln) memset(dln, 0, sizeof(float) * BT * C);
    int pin = ar_gemm_pin(ws->gemm, a->ln1, (int)BT, C);   /* the three dW products read it */
    if (pin < 0) return -1;
    int rc = linear_back(ws, AR_Q, dln, dW, dxin, dq, a->ln1, w->w[AR_Q], BT, C, QD) ||
             linear_back(ws, AR_K, dln, dW, dxin, dk, a->ln1, w->w[AR_K], BT, C, KD) ||
             linear_back(ws, AR_V, dln, dW, dxin, ws->dv, a->ln1, w->w[AR_V], BT, C, KD);
    if (pin) ar_gemm_unpin(ws->gemm, a->ln1);
    if (rc) return -1;
    if (dx) {
        ar_residual_backward(dx, NULL, ws->dh, BT * C);
        ar_rmsnorm_backward(dx, NULL, dln, a->x, w->attn_norm, a->rstd1, BT, C);
    }
    return 0;
}

int ar_block_attn_backward(const ar_config *c, const ar_block_weights *w, const ar_block_acts *a,
                           const float *dh, float *const *dW, float *const *dxin, float *dx,
                           ar_block_work *ws)
{
    if (!ws->train) return ar_error("block: backward needs a training workspace");
    if (ar_block_check_fit(a->B, a->T, ws->B, ws->T, "workspace")) return -1;
    if (dh != ws->dh) memcpy(ws->dh, dh, sizeof(float) * a->B * a->T * c->hidden);
    return attn_back(c, w, a, dW, dxin, dx, ws);
}

int ar_block_backward_inputs(const ar_config *c, const ar_block_weights *w,
                             const ar_block_acts *a, const float *dy,
                             float *const dW[AR_NLINEAR], float *dx,
                             float *const dxin[AR_NLINEAR], ar_block_work *ws)
{
    if (!ws->train) return ar_error("block: backward needs a training workspace");
    if (ar_block_check_fit(a->B, a->T, ws->B, ws->T, "workspace")) return -1;
    return mlp_back(c, w, a, dy, dW, dxin, ws) || attn_back(c, w, a, dW, dxin, dx, ws) ? -1 : 0;
}

int ar_block_backward(const ar_config *c, const ar_block_weights *w,
                      const ar_block_acts *a, const float *dy,
                      float *const dW[AR_NLINEAR], float *dx, ar_block_work *ws)
{
    return ar_block_backward_inputs(c, w, a, dy, dW, dx, NULL, ws);
}
