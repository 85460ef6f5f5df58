/* test_kv_cache.c — static FP8 KV cache (AutoRound's static_kv_dtype "fp8"):
 * the scale and the fake-quantizer of quant_kv.h against an E4M3 reference
 * built here from the format's definition (every code's value, nearest with
 * ties to the even code); the block forward with K/V fake-quantized against
 * the double reference block (refblock.h) composed stage by stage with K/V
 * rounded through that reference; the observer seeing K after RoPE and V;
 * the model's KV option refusing bad scales; the tuning pipeline's k_scale /
 * v_scale records against the direct calibration maximum of block 0; the
 * tuned stream's KV records and their bad-value error. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "dtype.h"
#include "error.h"
#include "fixture.h"
#include "model.h"
#include "quant_kv.h"
#include "refblock.h"
#include "tune.h"
#include "tuned_stream.h"

/* ---- the E4M3 reference: all 127 non-negative finite values by definition
 * (exponent bias 7; e = 0 subnormal m·2^-9; e = 15, m = 7 is NaN) ---- */

static double e4m3_val(int code) /* code 0..126 */
{
    int e = code >> 3, m = code & 7;
    return e == 0 ? m * 0x1p-9 : ldexp(1.0 + m / 8.0, e - 7);
}

/* Nearest E4M3 value of x, ties to the even code (even mantissa), saturating at ±448. */
static double e4m3_ref(double x)
{
    double a = fabs(x);
    int best = 0;
    for (int c = 1; c <= 126; c++) {
        double d = fabs(e4m3_val(c) - a), db = fabs(e4m3_val(best) - a);
        if (d < db || (d == db && !(c & 1))) best = c;
    }
    return x < 0 ? -e4m3_val(best) : e4m3_val(best);
}

/* The fake-quantizer as quant_kv.h defines it: f32 division, clamp, E4M3,
 * f32 product (each f32 result exact from double: a correctly rounded f32
 * quotient/product of f32 values equals the double one rounded once more). */
static float qdq_ref(float x, float s)
{
    float v = (float)((double)x / s);
    if (v > 448) v = 448;
    if (v < -448) v = -448;
    return (float)(e4m3_ref(v) * s);
}

static unsigned rng = 2024;
static float urand(void) /* uniform [-0.5, 0.5) */
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) / 16777216.0 - 0.5);
}

Test(kv, scale_is_amax_over_448_with_autorounds_floor)
{
    float amax[] = {0, 1e-9f, 1.0f / 512, 1, 3.5f, 448, 1e4f};
    for (unsigned i = 0; i < sizeof amax / sizeof *amax; i++) {
        double want = amax[i] / 448.0, floor_s = 1.0 / (448.0 * 512.0);
        if (want < floor_s) want = floor_s;
        /* one f32 division: within half an ulp of the exact quotient */
        fx_assert_within(ar_kv_fp8_scale(amax[i]), want, FX_U * want, "scale of amax %g", amax[i]);
    }
    cr_assert_eq(ar_kv_fp8_scale(0), (float)(1.0 / (448.0 * 512.0)));
}

Test(kv, qdq_matches_the_e4m3_definition)
{
    float s = 0.0371f;
    enum { N = 20000 };
    static float x[N], want[N];
    for (int i = 0; i < N; i++) {
        /* magnitudes from subnormal codes (|x/s| < 2^-6) to past saturation (> 448) */
        float mag = ldexpf(1.0f, (i % 22) - 12);
        x[i] = mag * s * 2 * urand();
    }
    /* exact ties between two codes, and the saturation edge */
    x[0] = 0x1.1p0f * s;      /* 1.0625: between 1 and 1.125, to the even 1 */
    x[1] = 0x1.3p0f * s;      /* 1.1875: between 1.125 and 1.25, to the even 1.25 */
    x[2] = 464.0f * s;        /* the midpoint past 448 saturates */
    x[3] = -1e6f * s;
    for (int i = 0; i < N; i++) want[i] = qdq_ref(x[i], s);
    ar_kv_fp8_qdq(x, N, s);
    for (int i = 0; i < N; i++) cr_assert_eq(x[i], want[i], "element %d: %a, reference %a", i, x[i], want[i]);
    cr_assert_eq(x[0], s);
    cr_assert_eq(x[1], (float)(1.25 * s));
    cr_assert_eq(x[2], (float)(448.0 * s));
    cr_assert_eq(x[3], (float)(-448.0 * s));
}

Test(kv, amax_fold_is_the_max_abs)
{
    float x[] = {0.5f, -3.25f, 2, -0.0f}, m = 1;
    ar_kv_amax_fold(&m, x, 4);
    cr_assert_eq(m, 3.25f);
    ar_kv_amax_fold(&m, x, 1);
    cr_assert_eq(m, 3.25f);
}

/* ---- the block ---- */

enum { B = 2, T = 6 };

static ar_config tiny(void)
{
    ar_config c = {0};
    c.hidden = 16, c.intermediate = 24, c.n_heads = 4, c.n_kv_heads = 2;
    c.head_dim = 4, c.rms_eps = 1e-6f, c.rope_theta = 10000.0;
    return c;
}

static void make_weights(ar_block_weights *w, const ar_config *c)
{
    cr_assert_eq(ar_block_weights_init(w, AR_NLINEAR), 0);
    for (int i = 0; i < AR_NLINEAR; i++) {
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        w->w[i] = malloc(sizeof(float) * n * k);
        for (int j = 0; j < n * k; j++) w->w[i][j] = 3.4f / sqrtf((float)k) * urand();
    }
    w->attn_norm = malloc(sizeof(float) * c->hidden);
    w->mlp_norm = malloc(sizeof(float) * c->hidden);
    for (int j = 0; j < c->hidden; j++) w->attn_norm[j] = 1 + 0.4f * urand(), w->mlp_norm[j] = 1 + 0.4f * urand();
}

static void free_weights(ar_block_weights *w)
{
    for (int i = 0; i < AR_NLINEAR; i++) free(w->w[i]);
    free(w->attn_norm);
    free(w->mlp_norm);
    ar_block_weights_release(w);
}

/* What the observer saw: copies of K and V of the last forward. */
typedef struct {
    float k[B * T * 8], v[B * T * 8];
    long rows;
    int kd, calls;
} seen_kv;

static void observe(void *ctx, const float *k, const float *v, long rows, int kd)
{
    seen_kv *s = ctx;
    cr_assert_leq(rows * kd, (long)(sizeof s->k / sizeof *s->k));
    memcpy(s->k, k, sizeof(float) * rows * kd);
    memcpy(s->v, v, sizeof(float) * rows * kd);
    s->rows = rows, s->kd = kd, s->calls++;
}

static fx_ev *ev(long n) { return calloc(n, sizeof(fx_ev)); }

/* The block in double (refblock's ops) on x, with the attention reading kq,
 * vq (the K, V the cache holds) exactly; the reference K (after RoPE) and V
 * the linears give go to kref, vref. y [B*T*C]. */
static void ref_block(const ar_config *c, const rb_weights *w, const float *x, const float *kq, const float *vq,
                      fx_ev *y, fx_ev *kref, fx_ev *vref)
{
    int BT = B * T, C = c->hidden, F = c->intermediate, HD = c->head_dim, NH = c->n_heads;
    int NKV = c->n_kv_heads, QD = NH * HD, KD = NKV * HD;
    fx_ev *xe = rb_exact(x, (long)BT * C), *ln1 = ev((long)BT * C), *q = ev((long)BT * QD);
    fx_ev *ao = ev((long)BT * QD), *h = ev((long)BT * C), *ln2 = ev((long)BT * C);
    fx_ev *g = ev((long)BT * F), *u = ev((long)BT * F), *act = ev((long)BT * F), *d = ev((long)BT * C);
    fx_ev *cs = ev((long)T * HD / 2), *sn = ev((long)T * HD / 2);
    rb_rmsnorm(ln1, NULL, xe, w->n1, BT, C, c->rms_eps);
    rb_linear(q, ln1, w->w[AR_Q], NULL, BT, C, QD);
    rb_linear(kref, ln1, w->w[AR_K], NULL, BT, C, KD);
    rb_linear(vref, ln1, w->w[AR_V], NULL, BT, C, KD);
    rb_rope_tables(cs, sn, c, T);
    rb_rope(q, cs, sn, B, T, NH, HD, 1);
    rb_rope(kref, cs, sn, B, T, NKV, HD, 1);
    fx_ev *ke = rb_exact(kq, (long)BT * KD), *ve = rb_exact(vq, (long)BT * KD);
    rb_attention(ao, NULL, q, ke, ve, B, T, NH, NKV, HD, 0);
    rb_linear(h, ao, w->w[AR_O], NULL, BT, QD, C);
    for (long i = 0; i < (long)BT * C; i++) h[i] = fx_add(h[i], xe[i]);
    rb_rmsnorm(ln2, NULL, h, w->n2, BT, C, c->rms_eps);
    rb_linear(g, ln2, w->w[AR_GATE], NULL, BT, C, F);
    rb_linear(u, ln2, w->w[AR_UP], NULL, BT, C, F);
    rb_swiglu(act, g, u, (long)BT * F);
    rb_linear(d, act, w->w[AR_DOWN], NULL, BT, F, C);
    for (long i = 0; i < (long)BT * C; i++) y[i] = fx_add(h[i], d[i]);
    free(xe), free(ln1), free(q), free(ao), free(h), free(ln2), free(g), free(u), free(act), free(d), free(cs);
    free(sn), free(ke), free(ve);
}

static void split(const fx_ev *e, long n, double *v, double *b)
{
    for (long i = 0; i < n; i++) v[i] = e[i].v, b[i] = e[i].e;
}

Test(kv, block_forward_quantizes_k_after_rope_and_v_as_the_reference)
{
    ar_config c = tiny();
    ar_block_weights w;
    make_weights(&w, &c);
    rb_weights rw;
    rb_weights_from(&rw, &w, &c);
    enum { BT = B * T, C = 16, KD = 8 };
    float x[BT * C], y[BT * C], yplain[BT * C];
    for (int i = 0; i < BT * C; i++) x[i] = 2 * urand();
    ar_block_work ws;
    cr_assert_eq(ar_block_work_init(&ws, &c, B, T, 0), 0, "%s", ar_last_error());

    /* off by default: equal to a forward without the fields, and the
     * observer alone changes nothing */
    seen_kv s = {0};
    cr_assert_eq(ar_block_forward(&c, &w, x, yplain, B, T, &ws), 0);
    ws.observe_kv = observe, ws.kv_ctx = &s;
    cr_assert_eq(ar_block_forward(&c, &w, x, y, B, T, &ws), 0);
    cr_assert_eq(memcmp(y, yplain, sizeof y), 0);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.rows, BT);
    cr_assert_eq(s.kd, KD);
    float amax_k = 0, amax_v = 0;
    ar_kv_amax_fold(&amax_k, s.k, BT * KD);
    ar_kv_amax_fold(&amax_v, s.v, BT * KD);

    /* scales from those maxima, coarsened 16x so that the rounding shows */
    float sk = ar_kv_fp8_scale(amax_k) * 16, sv = ar_kv_fp8_scale(amax_v) * 16;
    ws.kv_scale[0] = sk, ws.kv_scale[1] = sv;
    cr_assert_eq(ar_block_forward(&c, &w, x, y, B, T, &ws), 0);
    cr_assert_eq(s.calls, 2);   /* the observer sees K and V before they are rounded */

    /* the reference: K after RoPE and V within their bounds of what the
     * observer saw, the attention on those rounded by the E4M3 reference */
    float kq[BT * KD], vq[BT * KD];
    for (int i = 0; i < BT * KD; i++) kq[i] = qdq_ref(s.k[i], sk), vq[i] = qdq_ref(s.v[i], sv);
    fx_ev yr[BT * C], kr[BT * KD], vr[BT * KD];
    ref_block(&c, &rw, x, kq, vq, yr, kr, vr);
    double want[BT * C], bound[BT * C];
    split(kr, BT * KD, want, bound);
    fx_assert_all_within(s.k, want, bound, BT * KD, "K after RoPE");
    split(vr, BT * KD, want, bound);
    fx_assert_all_within(s.v, want, bound, BT * KD, "V");
    split(yr, BT * C, want, bound);
    fx_assert_all_within(y, want, bound, BT * C, "y with the FP8 KV cache");
    /* and the rounding matters: the unquantized forward is outside those bounds */
    cr_assert_gt(fx_count_outside(yplain, want, bound, BT * C), BT * C / 2);
    /* K alone: V passes unrounded */
    ws.kv_scale[1] = 0;
    cr_assert_eq(ar_block_forward(&c, &w, x, y, B, T, &ws), 0);
    ref_block(&c, &rw, x, kq, s.v, yr, kr, vr);
    split(yr, BT * C, want, bound);
    fx_assert_all_within(y, want, bound, BT * C, "y with K quantized");

    ar_block_work_free(&ws);
    rb_weights_free(&rw);
    free_weights(&w);
}

/* ---- the model option ---- */

Test(kv, model_refuses_bad_scales)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    cr_assert_eq(ar_model_has_kv_quant(m), 0);
    cr_assert_eq(ar_model_set_kv_quant(m, 5, 1, 1), -1);
    cr_assert_str_eq(ar_last_error(), "KV-cache scales for layer 5 of 5");
    cr_assert_eq(ar_model_set_kv_quant(m, 0, -1, 1), -1);
    cr_assert_str_eq(ar_last_error(), "layer 0: KV-cache scales must be finite and >= 0 (k -1, v 1)");
    cr_assert_eq(ar_model_set_kv_quant(m, 0, 1, NAN), -1);
    cr_assert_eq(ar_model_set_kv_quant(m, 0, 1, INFINITY), -1);
    cr_assert_eq(ar_model_has_kv_quant(m), 0);
    /* a scale changes the forward; 0 turns it off again */
    int ids[8] = {1, 20, 33, 47, 5, 60, 7, 80};
    double a[7], b[7], d[7];
    cr_assert_eq(ar_model_nll(m, ids, 1, 8, a), 0);
    cr_assert_eq(ar_model_set_kv_quant(m, 2, 0.5f, 0.5f), 0);
    cr_assert_eq(ar_model_has_kv_quant(m), 1);
    cr_assert_eq(ar_model_nll(m, ids, 1, 8, b), 0);
    cr_assert_eq(ar_model_set_kv_quant(m, 2, 0, 0), 0);
    cr_assert_eq(ar_model_has_kv_quant(m), 0);
    cr_assert_eq(ar_model_nll(m, ids, 1, 8, d), 0);
    cr_assert_neq(memcmp(a, b, sizeof a), 0);
    cr_assert_eq(memcmp(a, d, sizeof a), 0);
    ar_model_close(m);
}

/* ---- the pipeline ---- */

enum { NS = 3, NT = 8 };
static uint16_t *calib_master;   /* the activations: ar_tune_run overwrites d->hidden (its FP chain) */

static void calib(ar_calib_data *d, int C)
{
    memset(d, 0, sizeof *d);
    d->n = NS, d->T = NT, d->C = C;
    d->ids = calloc(NS * NT, sizeof *d->ids);
    d->hidden = malloc(sizeof(uint16_t) * NS * NT * C);
    float *f = malloc(sizeof(float) * NS * NT * C);
    for (int i = 0; i < NS * NT * C; i++) f[i] = 2 * urand();
    ar_from_f32(d->hidden, f, AR_BF16, (size_t)NS * NT * C);
    free(f);
    calib_master = malloc(sizeof(uint16_t) * NS * NT * C);
    memcpy(calib_master, d->hidden, sizeof(uint16_t) * NS * NT * C);
}

/* ar_tune_run on stories260K into a rewound tmpfile. */
static FILE *tune_run(const ar_tune_opts *o, ar_calib_data *d, int *rc)
{
    if (d) memcpy(d->hidden, calib_master, sizeof(uint16_t) * NS * NT * d->C);
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    FILE *f = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(f, "out.ars", 1);
    *rc = ar_tune_run(o, dir, d, w);
    if (*rc) ar_stream_writer_abort(w);
    else cr_assert_eq(ar_stream_writer_close(w), 0, "%s", ar_last_error());
    rewind(f);
    return f;
}

/* The KV scales of the stream f: ks[l], vs[l]; returns their count. */
static int read_scales(FILE *f, float *ks, float *vs)
{
    ar_tuned_reader *t = ar_tuned_reader_open(f, "out.ars");
    cr_assert(t, "%s", ar_last_error());
    const ar_tuned_item *it;
    int n = 0, rc, l;
    char kind;
    while ((rc = ar_tuned_reader_next(t, &it)) == 1) {
        if (it->kind != AR_TUNED_KV_SCALE) continue;
        cr_assert_eq(sscanf(it->name, "model.layers.%d.self_attn.%c_scale", &l, &kind), 2, "%s", it->name);
        cr_assert(l >= 0 && l < 5 && (kind == 'k' || kind == 'v'));
        (kind == 'k' ? ks : vs)[l] = it->kv_scale;
        n++;
    }
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    ar_tuned_reader_close(t);
    return n;
}

Test(kv, tune_scales_are_the_calibration_maximum_over_448)
{
    char dir[1024];
    fx_model_dir(dir, sizeof dir, "stories260K");
    ar_model *m = ar_model_open(dir, 0);
    cr_assert(m, "%s", ar_last_error());
    const ar_config *c = ar_model_config(m);
    ar_calib_data d;
    calib(&d, c->hidden);
    /* block 0's K (after RoPE) and V on the calibration activations, in
     * double with bounds: the largest magnitude and its bound */
    ar_block_weights w;
    cr_assert_eq(ar_block_weights_alloc(&w, c), 0);
    cr_assert_eq(ar_model_load_block(m, 0, &w), 0, "%s", ar_last_error());
    rb_weights rw;
    rb_weights_from(&rw, &w, c);
    int BT = NS * NT, C = c->hidden, HD = c->head_dim, KD = c->n_kv_heads * HD;
    float *x = malloc(sizeof(float) * BT * C);
    ar_to_f32(x, d.hidden, AR_BF16, (size_t)BT * C);
    fx_ev *xe = rb_exact(x, (long)BT * C), *ln1 = ev((long)BT * C), *k = ev((long)BT * KD), *v = ev((long)BT * KD);
    fx_ev *cs = ev((long)NT * HD / 2), *sn = ev((long)NT * HD / 2);
    rb_rmsnorm(ln1, NULL, xe, rw.n1, BT, C, c->rms_eps);
    rb_linear(k, ln1, rw.w[AR_K], rw.b[AR_K], BT, C, KD);
    rb_linear(v, ln1, rw.w[AR_V], rw.b[AR_V], BT, C, KD);
    cr_assert_null(rw.kn);
    rb_rope_tables(cs, sn, c, NT);
    rb_rope(k, cs, sn, NS, NT, c->n_kv_heads, HD, 1);
    fx_ev mk = {0, 0}, mv = {0, 0};
    for (long i = 0; i < (long)BT * KD; i++) {
        if (fabs(k[i].v) > mk.v) mk = (fx_ev){fabs(k[i].v), k[i].e};
        if (fabs(v[i].v) > mv.v) mv = (fx_ev){fabs(v[i].v), v[i].e};
    }
    /* RTN with data and opt-RTN observe the FP chain: block 0 sees the calibration activations */
    for (int opt = 0; opt < 2; opt++) {
        ar_tune_opts o;
        ar_tune_defaults(&o);
        o.iters = 0, o.disable_opt_rtn = !opt, o.static_kv_fp8 = 1;
        o.amp = 0; /* the reference below is an f32 forward */
        int rc;
        FILE *f = tune_run(&o, &d, &rc);
        cr_assert_eq(rc, 0, "%s", ar_last_error());
        float ks[5] = {0}, vs[5] = {0};
        cr_assert_eq(read_scales(f, ks, vs), 10);
        fclose(f);
        /* s = max|K| / 448: the bound of the max plus one f32 division */
        fx_assert_within(ks[0], mk.v / 448, mk.e / 448 + FX_U * mk.v / 448, "k_scale of block 0");
        fx_assert_within(vs[0], mv.v / 448, mv.e / 448 + FX_U * mv.v / 448, "v_scale of block 0");
        for (int l = 1; l < 5; l++) cr_assert(ks[l] > 0 && vs[l] > 0);
    }
    /* SignRound observes the quantized chain for blocks after the first (the
     * inputs the next block reads), --disable_quanted_input the FP chain: the
     * same block 0, other later scales; without the option: no scales */
    ar_tune_opts o;
    ar_tune_defaults(&o);
    o.iters = 1, o.static_kv_fp8 = 1;
    o.amp = 0; /* block 0's reference above is an f32 forward */
    int rc;
    float qk[5], qv[5], fk[5], fv[5];
    FILE *f = tune_run(&o, &d, &rc);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    cr_assert_eq(read_scales(f, qk, qv), 10);
    fclose(f);
    o.disable_quanted_input = 1;
    f = tune_run(&o, &d, &rc);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    cr_assert_eq(read_scales(f, fk, fv), 10);
    fclose(f);
    fx_assert_within(fk[0], mk.v / 448, mk.e / 448 + FX_U * mk.v / 448, "k_scale of block 0, FP chain");
    cr_assert_neq(qk[4], fk[4]);
    o.static_kv_fp8 = 0;
    f = tune_run(&o, &d, &rc);
    cr_assert_eq(rc, 0, "%s", ar_last_error());
    cr_assert_eq(read_scales(f, fk, fv), 0);
    fclose(f);
    /* refused without data and for GGUF schemes */
    o.static_kv_fp8 = 1;
    f = tune_run(&o, NULL, &rc);
    cr_assert_eq(rc, AR_TUNE_FAILED);
    cr_assert_str_eq(ar_last_error(), "static FP8 KV-cache scales need calibration data");
    fclose(f);
    cr_assert_eq(ar_scheme_preset(&o.scheme, "GGUF:Q4_K_M"), 0);
    f = tune_run(&o, &d, &rc);
    cr_assert_eq(rc, AR_TUNE_FAILED);
    cr_assert_str_eq(ar_last_error(), "static FP8 KV-cache scales are not made for GGUF schemes");
    fclose(f);
    free(x), free(xe), free(ln1), free(k), free(v), free(cs), free(sn);
    rb_weights_free(&rw);
    ar_block_weights_free(&w);
    ar_calib_data_free(&d);
    free(calib_master);
    ar_model_close(m);
}

/* ---- the tuned stream ---- */

Test(kv, stream_records_round_trip_and_bad_values_are_refused)
{
    FILE *f = tmpfile();
    ar_stream_writer *w = ar_stream_writer_open(f, "kv.ars", 1);
    ar_scheme s;
    ar_scheme_preset(&s, "W4A16");
    char *meta = ar_tuned_meta_json("/m", &s, 0, "{}");
    cr_assert_eq(ar_stream_write_meta(w, meta), 0);
    free(meta);
    cr_assert_eq(ar_tuned_write_kv_scales(w, "model.layers.0.self_attn", 0.25f, 0.5f), 0);
    cr_assert_eq(ar_tuned_write_kv_scales(w, "model.layers.1.self_attn", 0.125f, 0), 0);
    cr_assert_eq(ar_stream_writer_close(w), 0);
    rewind(f);
    ar_tuned_reader *t = ar_tuned_reader_open(f, "kv.ars");
    cr_assert(t, "%s", ar_last_error());
    const ar_tuned_item *it;
    const char *names[] = {"model.layers.0.self_attn.k_scale", "model.layers.0.self_attn.v_scale",
                           "model.layers.1.self_attn.k_scale"};
    float vals[] = {0.25f, 0.5f, 0.125f};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(ar_tuned_reader_next(t, &it), 1, "%s", ar_last_error());
        cr_assert_eq(it->kind, AR_TUNED_KV_SCALE);
        cr_assert_str_eq(it->name, names[i]);
        cr_assert_eq(it->kv_scale, vals[i]);
    }
    cr_assert_eq(ar_tuned_reader_next(t, &it), -1);
    cr_assert_str_eq(ar_last_error(), "kv.ars: model.layers.1.self_attn.v_scale must be a finite scale > 0, not 0");
    ar_tuned_reader_close(t);
    fclose(f);
}

/* ---- a folder's KV cache (formats/kv_config.h) ---- */

static float half_value(size_t i, size_t j) { return (void)i, (void)j, 0.5f; }

/* A folder with config text cfg and KV scales of 5 layers: [1] each, except
 * that layer 0's k_scale gets shape k0 [k0n] and layer 3's v_scale is left
 * out when drop3. */
static void kv_folder(const char *dir, const char *cfg, int k0n, int drop3)
{
    static char names[10][64];
    fx_tensor t[10];
    fx_rm_rf(dir);
    size_t n = 0;
    for (int l = 0; l < 5; l++)
        for (int kv = 0; kv < 2; kv++) {
            if (drop3 && l == 3 && kv == 1) continue;
            snprintf(names[n], sizeof names[n], "model.layers.%d.self_attn.%c_scale", l, kv ? 'v' : 'k');
            t[n] = (fx_tensor){names[n], 1, {l == 0 && !kv ? k0n : 1, 0}};
            n++;
        }
    fx_write_bf16_model(dir, t, n, half_value);
    fx_write_text(dir, "config.json", cfg);
}

#include "kv_config.h"

Test(kv, folder_scales_and_bad_configs)
{
    char sdir[1024], dir[] = "/tmp/ar-test-kv-XXXXXX";
    fx_model_dir(sdir, sizeof sdir, "stories260K");
    fx_make_tmp(dir);
    ar_model *m = ar_model_open(sdir, 0);
    cr_assert(m, "%s", ar_last_error());
    const char *ct = "{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"kv_cache_scheme\": "
                     "{\"num_bits\": 8, \"type\": \"float\", \"symmetric\": true, \"group_size\": null, "
                     "\"strategy\": \"tensor\", \"dynamic\": false}}}";
    kv_folder(dir, ct, 1, 0);
    cr_assert_eq(ar_model_kv_quant_from_folder(m, dir), 5, "%s", ar_last_error());
    cr_assert_eq(ar_model_has_kv_quant(m), 1);
    ar_model_close(m);
    m = ar_model_open(sdir, 0);
    char want[2048];
    /* wrong shape, missing scale */
    kv_folder(dir, ct, 2, 0);
    cr_assert_eq(ar_model_kv_quant_from_folder(m, dir), -1);
    snprintf(want, sizeof want, "%s: model.layers.0.self_attn.k_scale must hold one value (shape [1]), not shape [2]",
             dir);
    cr_assert_str_eq(ar_last_error(), want);
    kv_folder(dir, ct, 1, 1);
    cr_assert_eq(ar_model_kv_quant_from_folder(m, dir), -1);
    snprintf(want, sizeof want,
             "%s: the config asks for a static FP8 KV cache but there is no tensor model.layers.3.self_attn.v_scale", dir);
    cr_assert_str_eq(ar_last_error(), want);
    /* schemes not handled */
    struct { const char *cfg, *msg; } bad[] = {
        {"{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"kv_cache_scheme\": {\"num_bits\": 4, "
         "\"type\": \"int\"}}}",
         "kv_cache_scheme: 4-bit int KV caches are not handled (8-bit float per tensor only)"},
        {"{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"kv_cache_scheme\": {\"num_bits\": 8, "
         "\"type\": \"float\", \"strategy\": \"attn_head\"}}}",
         "kv_cache_scheme: strategy attn_head is not handled (tensor only)"},
        {"{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"kv_cache_scheme\": {\"num_bits\": 8, "
         "\"type\": \"float\", \"dynamic\": true}}}",
         "kv_cache_scheme: dynamic KV caches are not handled"},
        {"{\"quantization_config\": {\"quant_method\": \"auto-round\", \"static_kv_dtype\": \"nvfp4\"}}",
         "static_kv_dtype nvfp4 is not handled (fp8 only)"},
    };
    for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++) {
        kv_folder(dir, bad[i].cfg, 1, 0);
        cr_assert_eq(ar_model_kv_quant_from_folder(m, dir), -1);
        snprintf(want, sizeof want, "%s/config.json: %s", dir, bad[i].msg);
        cr_assert_str_eq(ar_last_error(), want);
    }
    cr_assert_eq(ar_model_has_kv_quant(m), 0);
    /* none asked: null scheme, auto-round without the key, no quantization_config */
    const char *none[] = {"{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"kv_cache_scheme\": null}}",
                          "{\"quantization_config\": {\"quant_method\": \"auto-round\", \"bits\": 4}}", "{}"};
    for (unsigned i = 0; i < 3; i++) {
        kv_folder(dir, none[i], 2, 1);
        cr_assert_eq(ar_model_kv_quant_from_folder(m, dir), 0, "%s", ar_last_error());
    }
    /* auto-round's keys */
    kv_folder(dir, "{\"quantization_config\": {\"quant_method\": \"auto-round\", \"static_kv_dtype\": \"fp8\", "
                   "\"static_kv_granularity\": \"tensor\"}}", 1, 0);
    cr_assert_eq(ar_model_kv_quant_from_folder(m, dir), 5, "%s", ar_last_error());
    ar_model_close(m);
    fx_rm_rf(dir);
}
