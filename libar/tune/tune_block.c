/* tune_block.c — the blocks of int, MX, NV and FP8 schemes: RTN, opt-RTN,
 * SignRound and SignRoundV2 (see tune.h). */
#include "error.h"
#include "quant_fp.h"
#include "quant_kv.h"
#include "tune_impl.h"
#include "tuned_stream.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- per-layer plan ------------------------------------------------------ */

/* The schemes and quantizer specs of block `layer`'s linears (bf16: the
 * weights are rounded to bf16 as the calibrated model computes). */
static int plan_block(const tn_run *r, int layer, ar_block_plan *plan, ar_scheme *schemes, int bf16)
{
    for (int i = 0; i < plan->nlinear; i++) {
        char name[256];
        int n, k;
        n = r->bd.lin[i].n_out, k = r->bd.lin[i].k_in;
        ar_block_desc_layer_name(&r->bd, layer, i, name, sizeof name);
        ar_layer_info info = {0, 0, 0};
        ar_scheme *s = &schemes[i];
        if (ar_scheme_for_layer(&r->o->scheme, r->lc, name, n, k, &info, s)) return -1;
        if (!ar_scheme_quantized(s)) continue;
        int dt = ar_quant_dtype_parse(s->data_type, s->bits);
        if (dt < 0 || s->kind == AR_SCHEME_GGUF)
            return ar_error("%s: scheme %s (%s, %d bits) has no quantizer in ar-tune", name,
                            s->name[0] ? s->name : "custom", s->data_type, s->bits);
        plan->quantize[i] = 1;
        plan->spec[i] = (ar_quant_spec){s->bits, s->group_size, s->sym,
                                        (bf16 ? AR_QF_BF16 : 0) | (s->group_2d ? AR_QF_BLOCK2D : 0), 0, dt,
                                        0, 0, NULL, NULL};
        int aq = ar_act_spec_from_scheme(s, 0, &plan->act[i]);
        if (aq < 0) {
            char where[300];
            snprintf(where, sizeof where, "%s: scheme %s", name, s->name[0] ? s->name : "custom");
            return ar_error_prefix(where);
        }
        plan->act_quant[i] = aq;
    }
    return 0;
}

/* 1 when some planned linear quantizes its input with a calibrated maximum. */
static int plan_needs_act_max(const ar_block_plan *plan, const ar_scheme *schemes)
{
    for (int i = 0; i < plan->nlinear; i++)
        if (plan->quantize[i] && plan->act_quant[i] && ar_scheme_act_needs_max(&schemes[i])) return 1;
    return 0;
}

/* Static activation maxima (FP8_STATIC, NVFP4's input global scale) into the
 * plan's activation quantizers, once gathered. */
static int plan_set_act_max(ar_block_plan *plan, const ar_scheme *schemes, const float *act_max)
{
    for (int i = 0; i < plan->nlinear; i++)
        if (plan->quantize[i] && plan->act_quant[i] && ar_scheme_act_needs_max(&schemes[i]) &&
            ar_act_spec_from_scheme(&schemes[i], act_max[i], &plan->act[i]) < 0)
            return -1;
    return 0;
}

/* NVFP4 global scales: the linears reading one input (q/k/v, gate/up: the
 * fused projections vLLM loads need one) share the smallest of theirs, as
 * AutoRound does by default, when all of them are NVFP4. */
static void share_global_scales(const ar_block_desc *bd, const ar_block_weights *w, ar_block_plan *plan)
{
    for (int i = 0; i < bd->nlinear; i++) {
        if (!plan->quantize[i] || plan->spec[i].dtype != AR_QDT_NVFP4 || !w->w[i]) continue;   /* !w: another rank's */
        plan->spec[i].global_scale = ar_nvfp4_global_scale(w->w[i], (size_t)bd->lin[i].n_out * bd->lin[i].k_in);
    }
    for (int g = 0; g < bd->nlinear; g++) {
        if (ar_block_desc_group(bd, g) != g) continue;   /* each group once, from its leader */
        float gmin = 0;
        int all = 1, size = 0;
        for (int j = g; j < bd->nlinear; j++) {
            if (bd->lin[j].input != bd->lin[g].input) continue;
            const ar_quant_spec *qs = &plan->spec[j];
            size++;
            if (!plan->quantize[j] || qs->dtype != AR_QDT_NVFP4) all = 0;
            else if (gmin == 0 || qs->global_scale < gmin) gmin = qs->global_scale;
        }
        if (size < 2) continue;                           /* a linear alone keeps its own */
        for (int j = g; all && gmin > 0 && j < bd->nlinear; j++)
            if (bd->lin[j].input == bd->lin[g].input) plan->spec[j].global_scale = gmin;
    }
}

/* ---- RTN -------------------------------------------------------------------- */

/* RTN, or with imat opt-RTN for the symmetric layers that have an importance
 * matrix (routed experts have none: plain RTN, AutoRound's MoE rule; opt-RTN
 * without one would still search scales). */
static int quantize_block_rtn(const tn_run *r, const ar_block_weights *wfp, const ar_block_plan *plan,
                              float *const *imat, const ar_quant_out *out)
{
    for (int i = 0; i < plan->nlinear; i++) {
        if (!plan->quantize[i]) continue;
        int n = r->bd.lin[i].n_out, k = r->bd.lin[i].k_in;
        int rc = imat && imat[i] && plan->spec[i].sym ? ar_quant_opt_rtn(&plan->spec[i], wfp->w[i], n, k, imat[i], &out[i])
                                           : ar_quant_forward(&plan->spec[i], wfp->w[i], n, k, NULL, &out[i]);
        if (rc) return -1;
    }
    return 0;
}

/* ---- enable_alg_ext on int / MX / NV schemes (SignRoundV2, spec §5.1(a)) ----
 * Symmetric int layers start from the imatrix-weighted scale search of
 * opt-RTN (the imatrix Σx² of the FP block's inputs, not normalized) as
 * init_scale, MX/NV layers from the multiplier search of ar_quant_fp_search;
 * β in [0, 2] scales it and α is unused; below 4 bits (or 4-bit activations)
 * of the scheme the loss drops the top 0.1 % of errors. Other layers of the
 * plan (asymmetric int, FP8) tune as V1, as AutoRound's V2 wrapper covers
 * only symmetric int/MX/NV. */

/* Layers SignRoundV2 gives searched initial scales (spec §5.1(a)): symmetric
 * int, MXFP and NVFP4 (not FP8, not asymmetric int). */
static int v2_layer(const ar_quant_spec *qs)
{
    return (qs->dtype == AR_QDT_INT && qs->sym) || qs->dtype == AR_QDT_MXFP4 || qs->dtype == AR_QDT_MXFP8 ||
           qs->dtype == AR_QDT_NVFP4;
}

/* AutoRound decides the loss on the global scheme, not per layer. */
static int v2_outlier_loss(const ar_scheme *def) { return def->bits < 4 || def->act_bits <= 4; }

/* 1 when the imatrix of k columns is all zero: a routed expert no
 * calibration row reached. */
static int no_rows(const float *imat, int k)
{
    for (int j = 0; j < k; j++)
        if (imat[j] != 0) return 0;
    return 1;
}

/* A mixture of experts' expert that no row reached keeps V1's RTN start:
 * SignRound gives it no gradient, so it is exported as that start, plain
 * RTN as without alg_ext (docs/moe.md §4). */
static int v2_init_scales(const ar_block_desc *bd, const ar_block_weights *wfp, ar_block_plan *plan,
                          float *const *imat, float **init)
{
    for (int i = 0; i < plan->nlinear; i++) {
        if (!plan->quantize[i] || !v2_layer(&plan->spec[i])) continue;
        int n = bd->lin[i].n_out, k = bd->lin[i].k_in;
        if (bd->input_kind[bd->lin[i].input] == AR_INPUT_ROUTED && no_rows(imat[i], k)) continue;
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        if (!(init[i] = malloc(sizeof(float) * ng))) return ar_error("out of memory for initial scales");
        int rc = plan->spec[i].dtype == AR_QDT_INT
                     ? ar_quant_search_scales(&plan->spec[i], wfp->w[i], n, k, imat[i], init[i])
                     : ar_quant_fp_search(&plan->spec[i], wfp->w[i], n, k, imat[i], init[i]);
        if (rc) return -1;
        plan->init_scale[i] = init[i];
        plan->spec[i].minmax_hi = 2;
    }
    return 0;
}

/* ---- one block ------------------------------------------------------------- */

/* The experts (gate_proj of "mlp.experts.E") that got no row in any of
 * SignRound's forwards of this block (r->rows): their rounding and min/max
 * got no gradient, so they keep their initial values (RTN), as in AutoRound
 * (docs/moe.md §4). */
static void report_unrouted(const tn_run *r, int layer)
{
    char list[512] = "";
    int n = 0, len = 0, e, end;
    for (int i = 0; i < r->bd.nlinear; i++)
        if ((end = 0, sscanf(r->bd.lin[i].name, "mlp.experts.%d.gate_proj%n", &e, &end)) == 1 && end &&
            !r->bd.lin[i].name[end] && !r->rows[i]) {
            if (len < (int)sizeof list - 16) len += snprintf(list + len, sizeof list - len, "%s%d", n ? ", " : "", e);
            n++;
        }
    if (n) tn_event(r, AR_TUNE_EV_UNROUTED_EXPERTS, layer, n, list);
}

/* With data: FP outputs into r->y (with the statistics the plan needs), then
 * SignRound, or RTN / opt-RTN; rep set when SignRound ran. */
static int tune_with_data(tn_run *r, int layer, const ar_block_weights *wfp, ar_block_plan *plan,
                          const ar_scheme *schemes, float *act_max, const ar_quant_out *out,
                          ar_signround_report *rep, int *tuned)
{
    const ar_tune_opts *a = r->o;
    int n = r->d->n;
    int opt_rtn = a->iters == 0 && !a->disable_opt_rtn;
    int alg_ext = a->enable_alg_ext && a->iters > 0;
    const int nl = plan->nlinear;
    float **imat = r->buf->imat, **init = r->buf->init;   /* all NULL (tn_block) */
    int rc = -1;
    for (int i = 0; i < nl; i++) {
        int k = r->bd.lin[i].k_in;
        /* routed experts get plain RTN, not opt-RTN, as AutoRound's MoE rule
         * (docs/moe.md §4); alg_ext searches their scales on their own rows */
        if (opt_rtn && r->bd.input_kind[r->bd.lin[i].input] == AR_INPUT_ROUTED) continue;
        if (plan->quantize[i] && (opt_rtn || (alg_ext && v2_layer(&plan->spec[i]))) &&
            !(imat[i] = calloc(k, sizeof(float)))) {
            ar_error("out of memory for the importance matrix");
            goto done;
        }
    }
    /* Static activation maxima come from the inputs the block is tuned on:
     * the quantized chain's (through the FP block) when SignRound uses it,
     * else the FP chain's (AutoRound's act_max hooks). */
    int need_max = plan_needs_act_max(plan, schemes);
    int q_stats = need_max && a->iters > 0 && !a->disable_quanted_input && r->x_q;
    /* Static KV scales: observed on the chain the next block reads, as
     * AutoRound's last forward of the block (tn_signround_block observes the
     * quantized chain; RTN, opt-RTN and disable_quanted_input the FP one). */
    r->kv_amax[0] = r->kv_amax[1] = 0;
    r->kv_obs = a->static_kv_fp8 && (a->iters == 0 || a->disable_quanted_input) ? r->kv_amax : NULL;
    int frc = tn_forward_all(r, wfp, r->x_fp, r->y, opt_rtn || alg_ext ? imat : NULL,
                             need_max && !q_stats ? act_max : NULL, NULL);
    r->kv_obs = NULL;
    if (frc ||
        (q_stats && tn_forward_all(r, wfp, r->x_q, NULL, NULL, act_max, NULL)) ||
        (need_max && plan_set_act_max(plan, schemes, act_max)))
        goto done;
    if (a->iters > 0) {
        if (alg_ext && v2_init_scales(&r->bd, wfp, plan, imat, init)) goto done;
        /* MoE: count each expert's rows in the tuning forwards */
        int moe = !strcmp(r->bd.family, "moe");
        if (moe && !(r->rows = calloc((size_t)nl, sizeof *r->rows))) { ar_error("out of memory"); goto done; }
        int src = tn_signround_block(r, layer, wfp, plan, !a->disable_minmax, alg_ext && v2_outlier_loss(&a->scheme),
                                     out, rep);
        if (moe && !src) report_unrouted(r, layer);
        free(r->rows), r->rows = NULL;
        if (src) goto done;
        *tuned = 1;
    } else {
        for (int i = 0; opt_rtn && i < nl; i++) {
            int k = r->bd.lin[i].k_in;
            if (imat[i]) ar_imatrix_finalize(imat[i], k, n);
        }
        if (quantize_block_rtn(r, wfp, plan, opt_rtn ? imat : NULL, out)) goto done;
    }
    uint16_t *t = r->x_fp; r->x_fp = r->y; r->y = t;  /* FP chain: Y becomes the next input */
    rc = 0;
done:
    for (int i = 0; i < nl; i++) free(imat[i]), free(init[i]), imat[i] = init[i] = NULL;
    return rc;
}

/* The block's static FP8 KV scales, "model.layers.L.self_attn.k_scale" and
 * ".v_scale", from the maxima its chain forward observed. */
static int write_kv_scales(const tn_run *r, int layer)
{
    char attn[256];
    ar_block_desc_layer_name(&r->bd, layer, AR_K, attn, sizeof attn);
    char *dot = strrchr(attn, '.');     /* "....self_attn.k_proj" -> "....self_attn" */
    if (dot) *dot = 0;
    return ar_tuned_write_kv_scales(r->w, attn, ar_kv_fp8_scale(r->kv_amax[0]), ar_kv_fp8_scale(r->kv_amax[1]));
}

/* Write the records of block `layer`'s quantized linears. */
static int write_block(const tn_run *r, int layer, const ar_block_plan *plan, const ar_scheme *schemes,
                       const ar_quant_out *out, const float *act_max)
{
    for (int i = 0; i < plan->nlinear; i++) {
        if (!plan->quantize[i]) continue;
        char base[256];
        int n = r->bd.lin[i].n_out, k = r->bd.lin[i].k_in;
        ar_block_desc_layer_name(&r->bd, layer, i, base, sizeof base);
        float g = plan->spec[i].global_scale;
        ar_quant_out other = {0};   /* expert parallel: a routed expert's output, from its owner */
        const ar_quant_out *use = &out[i];
        int rc = r->ep && ar_block_desc_expert(&r->bd, i) >= 0
                     ? tn_ep_share(r, i, &plan->spec[i], &out[i], &other, &g, &use)
                     : 0;
        const float *gs = plan->spec[i].dtype == AR_QDT_NVFP4 ? &g : NULL;
        if (!rc) rc = ar_tuned_write_linear(r->w, base, &schemes[i], n, k, use, gs, act_max[i]);
        free(other.wq), free(other.codes), free(other.scale), free(other.zp);
        if (rc) return -1;
    }
    return 0;
}

/* The plan, schemes, maxima and output arrays of a block, made by the first
 * block and cleared for each next one, as fresh ones would be. 0 or -1. */
static int block_bufs(tn_run *r)
{
    tn_bufs *b = r->buf;
    const int nl = r->bd.nlinear;
    if (!b->plan_ready) {
        if (ar_block_plan_init(&b->plan, &r->bd)) { ar_block_plan_free(&b->plan); return -1; }
        b->plan_ready = 1;
        b->schemes = calloc(nl, sizeof *b->schemes);
        b->act_max = calloc(nl, sizeof *b->act_max);
        b->imat = calloc(nl, sizeof *b->imat);
        b->init = calloc(nl, sizeof *b->init);
        b->out = calloc(nl, sizeof *b->out);
        b->out_ng = calloc(nl, sizeof *b->out_ng);
    }
    if (!b->schemes || !b->act_max || !b->imat || !b->init || !b->out || !b->out_ng)
        return ar_error("out of memory for the block's schemes");
    ar_block_plan *p = &b->plan;
    memset(p->quantize, 0, sizeof *p->quantize * nl);
    memset(p->spec, 0, sizeof *p->spec * nl);
    memset(p->act_quant, 0, sizeof *p->act_quant * nl);
    memset(p->act, 0, sizeof *p->act * nl);
    memset(p->init_scale, 0, sizeof *p->init_scale * nl);
    memset(b->schemes, 0, sizeof *b->schemes * nl);
    memset(b->act_max, 0, sizeof *b->act_max * nl);
    return 0;
}

/* The output buffers of the planned linears (as ar_block_plan_outputs),
 * kept from block to block; the scales and zero points grow with the
 * groups. 0 or -1. */
static int block_outputs(const tn_run *r, tn_bufs *b, const ar_block_plan *plan)
{
    for (int i = 0; i < plan->nlinear; i++) {
        if (!plan->quantize[i] || tn_ep_other(r, i)) continue;   /* another rank's expert: its owner's */
        ar_quant_out *o = &b->out[i];
        int n = plan->desc->lin[i].n_out, k = plan->desc->lin[i].k_in;
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        if (!o->wq && !(o->wq = malloc(sizeof(float) * n * k))) return ar_error("out of memory for layer outputs");
        if (!o->codes && !(o->codes = malloc((size_t)n * k))) return ar_error("out of memory for layer outputs");
        if (ng > b->out_ng[i]) {
            free(o->scale); free(o->zp);
            b->out_ng[i] = 0;
            o->scale = malloc(sizeof(float) * ng);
            o->zp = malloc(sizeof(int32_t) * ng);
            if (!o->scale || !o->zp) return ar_error("out of memory for layer outputs");
            b->out_ng[i] = ng;
        }
    }
    return 0;
}

int tn_block(tn_run *r, int layer, const ar_block_weights *wfp)
{
    if (block_bufs(r)) return -1;
    tn_bufs *b = r->buf;
    ar_block_plan *plan = &b->plan;
    ar_scheme *schemes = b->schemes;
    float *act_max = b->act_max;
    ar_quant_out *out = b->out;
    ar_signround_report rep;
    int tuned = 0;
    if (plan_block(r, layer, plan, schemes, r->d != NULL)) return -1;
    for (int i = 0; !strcmp(r->bd.family, "moe") && i < plan->nlinear; i++)
        if (plan->act_quant[i])
            return ar_error("%s: activation quantization of mixture-of-experts blocks is not supported",
                            r->bd.lin[i].name);
    share_global_scales(&r->bd, wfp, plan);
    if (block_outputs(r, b, plan)) return -1;
    if (r->d ? tune_with_data(r, layer, wfp, plan, schemes, act_max, out, &rep, &tuned)
             : quantize_block_rtn(r, wfp, plan, NULL, out))
        return -1;
    if (write_block(r, layer, plan, schemes, out, act_max)) return -1;
    if (r->d && r->o->static_kv_fp8 && write_kv_scales(r, layer)) return -1;
    tn_block_done(r, layer, tuned ? &rep : NULL);
    return 0;
}
