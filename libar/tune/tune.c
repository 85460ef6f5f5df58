/* tune.c — the tuning run: setup, META, the block loop (see tune.h). */
#include "device.h"
#include "signround_cuda.h"
#include "error.h"
#include "calib.h"
#include "hash.h"
#include "runtime.h"
#include "safetensors.h"
#include "spill.h"
#include "tune_impl.h"
#include "tuned_stream.h"
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ar_tune_defaults(ar_tune_opts *o)
{
    memset(o, 0, sizeof *o);
    ar_scheme_preset(&o->scheme, "W4A16");
    o->iters = 200;
    o->batch_size = 8;
    o->grad_accum = 1;
    o->seed = 42;
    o->device = AR_DEVICE_CPU;
    o->spill_dir = P_tmpdir;
    o->amp = 1;
    o->last_block = -1;
}

/* ---- setup ------------------------------------------------------------------ */

/* The layer config file, or else the calibration stream's (ar-scheme's). */
static int load_layer_config(tn_run *r)
{
    if (r->o->layer_config) return (r->lc = ar_layer_config_load(r->o->layer_config)) ? 0 : -1;
    if (!r->d || !r->d->layer_config) return 0;
    if (!(r->lc = ar_layer_config_parse(r->d->layer_config, r->d->src))) return -1;
    tn_event(r, AR_TUNE_EV_LAYER_CONFIG, ar_layer_config_count(r->lc), 0, NULL);
    return 0;
}

/* AutoRound's loss mask (spec §1.4; the attention is not masked): positions
 * holding the pad token are left out, or, when the tokenizer has none, each
 * sample's trailing run of its final token when that token repeats; the last
 * position always. A stream without pad_token_id (made before ar-calib wrote
 * it) gets the last-position mask alone. */
static void loss_mask(uint8_t *mask, const ar_calib_data *d)
{
    ar_default_mask(mask, d->n, d->T);
    if (!d->pad_key) return;
    for (int s = 0; s < d->n; s++) {
        const int32_t *ids = d->ids + (size_t)s * d->T;
        uint8_t *m = mask + (size_t)s * d->T;
        if (d->pad_id >= 0) {
            for (int t = 0; t < d->T; t++) if (ids[t] == d->pad_id) m[t] = 0;
        } else {
            for (int t = d->T - 2; t >= 0 && ids[t] == ids[d->T - 1]; t--) m[t] = 0;
        }
    }
}

/* The chains: x_fp starts as the calibration activations, y (the FP
 * outputs) and the mask are allocated. With a memory budget the chains
 * would exceed (x_fp, y and, when SignRound tunes on quantized inputs, x_q),
 * on the CPU, they go to spill files (spill_chains moves x_fp there). */
static int setup_chains(tn_run *r)
{
    const ar_calib_data *d = r->d;
    const ar_tune_opts *o = r->o;
    if (d->C != r->c->hidden)
        return ar_error("calibration hidden size %d does not match the model's %d", d->C, r->c->hidden);
    double chain_mib = sizeof(uint16_t) * (double)d->n * d->T * d->C / (1 << 20);
    int nchains = 2 + (o->iters > 0 && !o->disable_quanted_input);
    r->spill = o->mem_budget_mib > 0 && r->dev == AR_DEVICE_CPU && nchains * chain_mib > o->mem_budget_mib;
    if (r->spill) tn_event(r, AR_TUNE_EV_SPILL, (int)(chain_mib + 0.5), nchains, o->spill_dir);
    r->x_fp = d->hidden;
    r->y = r->own_fp = tn_chain_alloc(r);
    r->mask = malloc((size_t)d->n * d->T);
    if (!r->y) return -1;
    if (!r->mask) return ar_error("out of memory for the activation cache");
    loss_mask(r->mask, d);
    return 0;
}

/* With spill: the FP chain's input (the calibration activations, or what a
 * checkpoint restored into them) moves to a spill file and calib's copy is
 * freed. After the checkpoint has hashed and restored them. 0 or -1. */
static int spill_chains(tn_run *r)
{
    if (!r->spill || r->x_fp != r->d->hidden) return 0;
    size_t bytes = sizeof(uint16_t) * (size_t)r->d->n * r->d->T * r->d->C;
    if (!(r->spill_fp = tn_chain_alloc(r))) return -1;
    const size_t step = (size_t)64 << 20;   /* written back as it goes: no second copy in memory */
    for (size_t off = 0; off < bytes; off += step) {
        size_t len = bytes - off < step ? bytes - off : step;
        memcpy((char *)r->spill_fp + off, (const char *)r->x_fp + off, len);
        if (ar_spill_release(r->spill_fp, off, len)) return -1;
    }
    free(r->d->hidden);
    r->d->hidden = NULL;
    r->x_fp = r->spill_fp;
    return 0;
}

/* 1 when some layer will get other bits than the default scheme (the auto_round
 * exporter picks its asym layout from this before seeing any layer); -1 on error. */
static int plan_is_mixed(const tn_run *r)
{
    const ar_scheme *def = &r->o->scheme;
    for (int layer = 0; layer < r->c->n_layers; layer++) {
        ar_block_desc bd;   /* mixtures of experts: per layer */
        if (ar_block_desc_init_layer(&bd, r->c, layer)) return -1;
        for (int i = 0; i < bd.nlinear; i++) {
            char name[256];
            int n, k;
            ar_scheme s;
            n = bd.lin[i].n_out, k = bd.lin[i].k_in;
            ar_block_desc_layer_name(&bd, layer, i, name, sizeof name);
            ar_layer_info info = {0, 0, 0};
            if (ar_scheme_for_layer(def, r->lc, name, n, k, &info, &s)) { ar_block_desc_free(&bd); return -1; }
            if (ar_scheme_quantized(&s) && s.bits != def->bits) { ar_block_desc_free(&bd); return 1; }
        }
        ar_block_desc_free(&bd);
    }
    return 0;
}

/* The model's weights were FP8 (safetensors.h): record what they were
 * widened from as tuning.source_quantization {quant_method, fmt,
 * weight_block_size ([rows, cols], or null for per-tensor / per-row scales)}.
 * Nothing for a float checkpoint. 0 or -1 with ar_error. */
static int add_source_quantization(cJSON *t, const char *model)
{
    ar_st_fp8 f;
    if (ar_st_fp8_config(model, &f)) return -1;
    if (!f.on) return 0;
    cJSON *s = cJSON_AddObjectToObject(t, "source_quantization");
    if (!s) return ar_error("the tuned stream's META: out of memory");
    cJSON_AddStringToObject(s, "quant_method", f.method);
    cJSON_AddStringToObject(s, "fmt", "e4m3");
    if (f.block[0] > 0) {
        cJSON *b = cJSON_AddArrayToObject(s, "weight_block_size");
        cJSON_AddItemToArray(b, cJSON_CreateNumber(f.block[0]));
        cJSON_AddItemToArray(b, cJSON_CreateNumber(f.block[1]));
    } else cJSON_AddNullToObject(s, "weight_block_size");
    cJSON_AddStringToObject(s, "dequantized_to", ar_dtype_name(f.out));
    return 0;
}

/* The META text of the output (tuned_stream.h), NULL with ar_error. */
static char *meta_json(const tn_run *r)
{
    const ar_tune_opts *a = r->o;
    const ar_calib_data *d = r->d;
    int mixed = plan_is_mixed(r);
    if (mixed < 0) return NULL;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "iters", d ? a->iters : 0);
    if (d) {
        cJSON_AddNumberToObject(t, "nsamples", d->n);
        cJSON_AddNumberToObject(t, "seqlen", d->T);
        cJSON_AddNumberToObject(t, "batch_size", a->batch_size);
        cJSON_AddNumberToObject(t, "gradient_accumulate_steps", a->grad_accum);
        int chunk = tn_chunk(r), bs = a->batch_size < d->n ? a->batch_size : d->n;
        if (chunk < bs) cJSON_AddNumberToObject(t, "micro_batch", chunk);   /* the sums' grouping (signround.h) */
        if (a->bench_chain_samples > 0 && a->bench_chain_samples < d->n)   /* not a usable result: say so */
            cJSON_AddNumberToObject(t, "bench_chain_samples", a->bench_chain_samples);
        if (a->lr > 0) cJSON_AddNumberToObject(t, "lr", a->lr);
        if (a->minmax_lr > 0) cJSON_AddNumberToObject(t, "minmax_lr", a->minmax_lr);
        cJSON_AddBoolToObject(t, "enable_minmax_tuning", !a->disable_minmax);
        cJSON_AddBoolToObject(t, "enable_quanted_input", !a->disable_quanted_input);
        cJSON_AddBoolToObject(t, "enable_alg_ext", a->enable_alg_ext);
        /* bf16 GEMMs ran (AMP); absent: f32, as in streams made before */
        if (r->amp) cJSON_AddBoolToObject(t, "amp", 1);
        if (a->enable_lfq) cJSON_AddBoolToObject(t, "enable_lfq", 1);
        if (a->enable_lfq && a->lfq_kl) cJSON_AddStringToObject(t, "lfq_target", "fp");
        cJSON_AddNumberToObject(t, "seed", (double)a->seed);
        if (d->pad_key && d->pad_id >= 0) cJSON_AddNumberToObject(t, "loss_mask_pad_token_id", d->pad_id);
        if (a->static_kv_fp8) {     /* AutoRound's quantization_config keys */
            cJSON_AddStringToObject(t, "static_kv_dtype", "fp8");
            cJSON_AddStringToObject(t, "static_kv_granularity", "tensor");
        }
    }
    cJSON_AddStringToObject(t, "method", !d || (a->iters == 0 && a->disable_opt_rtn) ? "rtn"
                                         : a->iters == 0 ? "opt_rtn" : "signround");
    if (add_source_quantization(t, r->model_abs)) { cJSON_Delete(t); return NULL; }
    char *tj = cJSON_PrintUnformatted(t);
    cJSON_Delete(t);
    char *txt = tj ? ar_tuned_meta_json(r->model_abs, &a->scheme, mixed, tj) : NULL;
    if (!tj) ar_error("the tuned stream's META: out of memory");
    free(tj);
    return txt;
}

/* A range's META (o->last_block >= 0): "blocks" [first, last], "n_layers", and
 * what else its bytes depend on that a whole run's META leaves out: "threads"
 * (f32 sums), with data "calibration_digest" (FNV-1a of the token ids used)
 * and with a layer config "layer_config_digest" (of its text). Top-level
 * keys, so the "tuning" object exported is a whole run's. *txt replaced; 0 or
 * -1 with ar_error. */
static int add_range_keys(const tn_run *r, char **txt)
{
    const ar_tune_opts *o = r->o;
    if (o->last_block < 0) return 0;
    cJSON *m = cJSON_Parse(*txt), *b = cJSON_CreateArray();
    if (!m || !b) { cJSON_Delete(m); cJSON_Delete(b); return ar_error("the tuned stream's META: out of memory"); }
    cJSON_AddItemToArray(b, cJSON_CreateNumber(o->first_block));
    cJSON_AddItemToArray(b, cJSON_CreateNumber(o->last_block));
    cJSON_AddItemToObject(m, "blocks", b);
    cJSON_AddNumberToObject(m, "n_layers", r->c->n_layers);
    cJSON_AddNumberToObject(m, "threads", ar_thread_count());
    char hex[17];
    if (r->d) {
        uint64_t h = ar_fnv1a64(r->d->ids, sizeof(int32_t) * (size_t)r->d->n * r->d->T);
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
        cJSON_AddStringToObject(m, "calibration_digest", hex);
    }
    /* the per-layer schemes, which META's scheme and mixed_bits do not pin down */
    size_t n = 0;
    char *lc = o->layer_config ? ar_read_text_file(o->layer_config, &n) : NULL;
    const char *txt_lc = lc ? lc : !o->layer_config && r->d ? r->d->layer_config : NULL;
    if (o->layer_config && !lc) { cJSON_Delete(m); return -1; }
    if (txt_lc) {
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)ar_fnv1a64(txt_lc, lc ? n : strlen(txt_lc)));
        cJSON_AddStringToObject(m, "layer_config_digest", hex);
    }
    free(lc);
    char *t = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    if (!t) return ar_error("the tuned stream's META: out of memory");
    free(*txt);
    *txt = t;
    return 0;
}

/* ---- the run ---------------------------------------------------------------- */

/* A block before the range: its FP forward alone, the FP chain's step of a
 * whole run (tune_block.c's tune_with_data, without statistics, which do not
 * change the outputs). */
static int fp_forward(tn_run *r, const ar_block_weights *wfp)
{
    if (tn_forward_all(r, wfp, r->x_fp, r->y, NULL, NULL, NULL)) return -1;
    uint16_t *t = r->x_fp; r->x_fp = r->y; r->y = t;
    return 0;
}

static int layer_desc(tn_run *r, int layer, ar_block_weights *wfp);

/* Block `layer` of this run: nothing before the block whose inputs the data
 * holds (without data, before the range), the FP forward alone before the
 * range, else tuned and written. 0 or -1. */
static int block_work(tn_run *r, int layer, ar_block_weights *wfp)
{
    const ar_tune_opts *o = r->o;
    int from = r->d ? r->d->block : o->first_block;
    if (layer < from) return 0;
    if (layer_desc(r, layer, wfp)) return -1;
    for (int i = 0; r->ep && i < r->bd.nlinear; i++)   /* other ranks' experts: not read */
        if (tn_ep_other(r, i)) free(wfp->w[i]), wfp->w[i] = NULL;
    if (ar_model_load_block(r->m, layer, wfp)) return -1;
    if (layer < o->first_block) return fp_forward(r, wfp);
    return o->scheme.kind == AR_SCHEME_GGUF ? tn_block_gguf(r, layer, wfp) : tn_block(r, layer, wfp);
}

/* Block `layer` (weights into wfp) into out, through the checkpoint when
 * there is one (which commits every block from 0, the ones without work
 * empty). */
static int one_block(tn_run *r, int layer, ar_block_weights *wfp, ar_stream_writer *out)
{
    if (r->ck && !(r->w = tn_ckpt_block_begin(r, layer))) return -1;
    int rc = block_work(r, layer, wfp);
    if (r->ck) {
        ar_stream_writer *w = r->w;
        r->w = out;
        if (rc) ar_stream_writer_abort(w);
        else rc = tn_ckpt_block_end(r, layer, w, out);
    }
    return rc;
}

/* r->bd and wfp for block `layer`: kept when the layer's description is the
 * current one, else made anew with the block buffers sized by it
 * (mixtures of experts alternate MoE and dense layers). 0 or -1. */
static int layer_desc(tn_run *r, int layer, ar_block_weights *wfp)
{
    ar_block_desc d;
    if (ar_block_desc_init_layer(&d, r->c, layer)) return -1;
    if (wfp->w && !strcmp(d.family, r->bd.family) && d.nlinear == r->bd.nlinear) {
        ar_block_desc_free(&d);
        return 0;
    }
    tn_bufs_free(r->buf);
    ar_block_desc_free(&r->bd);
    r->bd = d;
    ar_block_weights_free(wfp);
    return ar_block_weights_alloc_layer(wfp, r->c, layer);
}

/* What the mixture-of-experts blocks do not support yet: one line. */
static int moe_refusals(const tn_run *r)
{
    if (!r->c->moe.n_moe_layers) return 0;
    if (r->dev != AR_DEVICE_CPU) return ar_error("mixture-of-experts blocks are tuned on the CPU only (--device cpu)");
    return 0;
}

/* Data-parallel ranks (reduce.h) on a resumed checkpoint: rank 0 alone
 * opened it; the others get the first block to tune and, past block 0, the
 * chains it restored. 0 or -1. */
static int share_resume(tn_run *r, int *first)
{
    ar_reducer *rd = r->o->reduce;
    int32_t hdr[2] = {*first, r->x_q != NULL};
    if (rd->bcast(rd->ctx, hdr, sizeof hdr, 0)) return -1;
    *first = hdr[0];
    if (!r->d || *first == 0 || *first == r->c->n_layers) return 0;
    size_t nb = sizeof(uint16_t) * (size_t)r->d->n * r->d->T * r->d->C;
    if (rd->bcast(rd->ctx, r->x_fp, nb, 0)) return -1;
    if (!hdr[1]) return 0;
    if (!r->x_q && !(r->x_q = tn_chain_alloc(r))) return -1;
    return rd->bcast(rd->ctx, r->x_q, nb, 0);
}

/* Ranks and dp chunks are the CPU tuner's: a detected GPU gives way to
 * the CPU, one asked for is refused. 0 or -1. */
static int cpu_only_options(tn_run *r)
{
    const ar_tune_opts *o = r->o;
    int ranks = o->reduce && o->reduce->size > 1;
    if (r->dev == AR_DEVICE_CPU || (!ranks && o->dp_chunk <= 0)) return 0;
    if (!o->device_auto)
        return ar_error("%s run on the CPU only (--device cpu)", ranks ? "data-parallel ranks" : "dp chunks");
    r->dev = AR_DEVICE_CPU;
    tn_event(r, AR_TUNE_EV_DEVICE, 0, 0, ar_device_describe(r->dev));
    return 0;
}

/* The block range against the model and the data: in the model, starting
 * at or after the block whose inputs the data holds, and, past block 0, on
 * the FP chain alone (SignRound on quantized inputs needs the quantized
 * blocks before). 0 or -1 with ar_error. */
static int check_range(const tn_run *r)
{
    const ar_tune_opts *o = r->o;
    int nl = r->c->n_layers, last = o->last_block < 0 ? nl - 1 : o->last_block;
    int from = r->d ? r->d->block : 0;
    if (last >= nl || o->first_block >= nl)
        return ar_error("blocks %d-%d: the model has %d blocks (0-%d)", o->first_block, last, nl, nl - 1);
    if (from >= nl)
        return ar_error("%s: holds the inputs of block %d; the model has %d blocks (0-%d)", r->d->src, from, nl, nl - 1);
    if (o->first_block < from)
        return ar_error("%s: holds the inputs of block %d, so a run from it starts there (--blocks %d-B), not at "
                        "block %d", r->d->src, from, from, o->first_block);
    if (r->d && o->first_block > 0 && o->iters > 0 && !o->disable_quanted_input)
        return ar_error("blocks %d-%d: SignRound on the quantized blocks' outputs needs every block before it tuned "
                        "in the same run; tune ranges with --disable_quanted_input (or --iters 0)",
                        o->first_block, last);
    return 0;
}

/* Inputs of a block past 0 (ar_tune_fp_inputs) feed this run only when
 * they were computed as its FP chain computes them. 0 or -1 with ar_error. */
static int check_fp_inputs(const tn_run *r)
{
    const ar_calib_data *d = r->d;
    if (!d || d->block == 0) return 0;
    const char *what = NULL;
    long then = 0, now = 0;
    if (d->fp_batch_size != r->o->batch_size) what = "batch_size", then = d->fp_batch_size, now = r->o->batch_size;
    else if (d->fp_threads != ar_thread_count()) what = "threads", then = d->fp_threads, now = ar_thread_count();
    else if (d->fp_amp != (r->amp != NULL)) what = "amp (bf16 GEMMs)", then = d->fp_amp, now = r->amp != NULL;
    if (!what) return 0;
    return ar_error("%s: the inputs of block %d were computed with %s %ld, this run has %ld (give ar-calib "
                    "--upto-block the run's --batch_size, --threads and --amp/--disable_amp)",
                    d->src, d->block, what, then, now);
}

/* ar_tune_fp_inputs's end (out NULL): the FP chain's inputs of the block
 * after the last one run back into calib's activations. 0 or -1. */
static int fp_inputs_out(tn_run *r)
{
    ar_calib_data *d = r->d;
    if (ar_res_host(r->gpu, r->x_fp)) return -1;
    if (r->x_fp != d->hidden) memcpy(d->hidden, r->x_fp, sizeof(uint16_t) * (size_t)d->n * d->T * d->C);
    d->block = r->o->first_block;
    d->fp_batch_size = r->o->batch_size;
    d->fp_amp = r->amp != NULL;
    d->fp_threads = ar_thread_count();
    return 0;
}

/* From the device to the last block. */
static int run_blocks(tn_run *r, const char *model, ar_stream_writer *out)
{
    const ar_tune_opts *o = r->o;
    if (o->static_kv_fp8 && (!r->d || o->scheme.kind == AR_SCHEME_GGUF)) {
        ar_error(!r->d ? "static FP8 KV-cache scales need calibration data"
                       : "static FP8 KV-cache scales are not made for GGUF schemes");
        return AR_TUNE_FAILED;
    }
    if (load_layer_config(r)) return AR_TUNE_FAILED;
    r->dev = r->d ? o->device : AR_DEVICE_CPU;   /* RTN without data: nothing to run on a GPU */
    if (ar_device_init(r->dev)) return AR_TUNE_FAILED;
    ar_signround_cuda_set_low_mem(o->low_gpu_mem);
    tn_event(r, AR_TUNE_EV_DEVICE, 0, 0, ar_device_describe(r->dev));
    if (!(r->m = ar_model_open(model, 0))) return AR_TUNE_FAILED;
    r->c = ar_model_config(r->m);
    if (moe_refusals(r) || check_range(r) || ar_block_desc_init_layer(&r->bd, r->c, 0)) return AR_TUNE_FAILED;
    if (r->dev != AR_DEVICE_CPU && strcmp(r->bd.family, "llama") && o->device_auto) {
        r->dev = AR_DEVICE_CPU;
        tn_event(r, AR_TUNE_EV_DEVICE, 0, 0, ar_device_describe(r->dev));
    }
    if (cpu_only_options(r)) return AR_TUNE_FAILED;
    if (r->dev != AR_DEVICE_CPU && strcmp(r->bd.family, "llama")) {
        ar_error("%s: tuning on a GPU runs the llama family only (use --device cpu)", r->c->arch_name);
        return AR_TUNE_FAILED;
    }
    ar_set_threads(o->threads, r->c);
    /* AutoRound turns amp off where the CPU has no bf16; so does ar. Every
     * block family runs its tuned linears through ws->gemm (routers, the
     * shared-expert gate and the LM head stay f32) */
    if (ar_gemm_init(&r->gemm, r->d && o->amp && r->dev == AR_DEVICE_CPU && ar_gemm_bf16_supported()))
        return AR_TUNE_FAILED;
    r->amp = r->gemm.bf16 ? &r->gemm : NULL;
    if (check_fp_inputs(r) || (r->d && setup_chains(r))) return AR_TUNE_FAILED;
    if (r->d && r->dev != AR_DEVICE_CPU) {
        int bs = o->batch_size < r->d->n ? o->batch_size : r->d->n;
        int nchains = 2 + (o->iters > 0 && !o->disable_quanted_input); /* x_fp, y and x_q */
        if (!(r->gpu = ar_gpu_residency_open(r->c, r->d->n, r->d->T, bs > 0 ? bs : 1, nchains,
                                             o->gpu_chain_budget_mib, o->low_gpu_mem)))
            return AR_TUNE_FAILED;
    }
    if (!realpath(model, r->model_abs)) snprintf(r->model_abs, sizeof r->model_abs, "%s", model);
    int ranks = o->reduce && o->reduce->size > 1;
    int rc = 0;
    if (out) {   /* NULL: ar_tune_fp_inputs, no output */
        char *meta = meta_json(r);
        if (!meta || add_range_keys(r, &meta)) { free(meta); return AR_TUNE_FAILED; }
        rc = o->checkpoint && (!ranks || o->reduce->rank == 0) ? tn_ckpt_open(r, meta) : 0;
        if (!rc && ar_stream_write_meta(out, meta)) rc = AR_TUNE_FAILED;
        free(meta);
        if (rc) return rc;
    }
    ar_block_weights wfp = {0};
    int first = 0;
    if (r->ck && tn_ckpt_resume(r, out, &first)) rc = AR_TUNE_FAILED;
    if (!rc && ranks && o->checkpoint && share_resume(r, &first)) rc = AR_TUNE_FAILED;
    const ar_config *mc = r->c;
    if (!rc && r->d && spill_chains(r)) rc = AR_TUNE_FAILED;
    int from = r->d ? r->d->block : o->first_block;   /* the first block with work (block_work) */
    int last = o->last_block < 0 ? mc->n_layers - 1 : o->last_block;
    for (int layer = r->ck || first > from ? first : from; !rc && layer <= last; layer++) {
        ar_config_for_layer(&r->layer_c, mc, layer);   /* the layer's window and RoPE */
        r->c = &r->layer_c;
        ar_res_next_block(r->gpu, layer); /* the previous block's device weights go */
        rc = one_block(r, layer, &wfp, out) ? AR_TUNE_FAILED : 0;
    }
    r->c = mc;
    if (!rc && !out && fp_inputs_out(r)) rc = AR_TUNE_FAILED;
    ar_res_next_block(r->gpu, -1);
    ar_block_weights_free(&wfp);
    if (!rc && r->gpu) {
        char line[512];
        ar_xfer_summary(&r->gpu->led, r->gpu->resident, line, sizeof line);
        tn_event(r, AR_TUNE_EV_GPU_TRANSFERS, (int)r->gpu->led.n_up[AR_XFER_WEIGHTS], last + 1 - first, line);
    }
    return rc;
}

/* Expert parallel needs SignRound on calibration data, and no pass that
 * reads every expert's FP weight (opt-RTN and SignRoundV2 statistics,
 * GGUF's mixes). 0 or -1. */
static int ep_setup(tn_run *r, ar_moe_ep *ep)
{
    const ar_tune_opts *o = r->o;
    if (!o->expert_parallel || !o->reduce || o->reduce->size < 2) return 0;
    if (!r->d || o->iters < 1) return ar_error("expert parallel: needs SignRound (calibration data and iters > 0)");
    if (o->enable_alg_ext) return ar_error("expert parallel: not with enable_alg_ext (its statistics read every expert)");
    if (o->scheme.kind == AR_SCHEME_GGUF) return ar_error("expert parallel: not with GGUF schemes");
    *ep = (ar_moe_ep){o->reduce->rank, o->reduce->size, o->reduce->ctx, o->reduce->allgather, 0, 0};
    r->ep = ep;
    return 0;
}

int ar_tune_run(const ar_tune_opts *o, const char *model, ar_calib_data *calib, ar_stream_writer *out)
{
    tn_run r;
    tn_bufs buf;
    memset(&r, 0, sizeof r);
    memset(&buf, 0, sizeof buf);
    r.buf = &buf;
    r.o = o;
    r.d = calib;
    r.w = out;
    ar_moe_ep ep;
    int rc = ep_setup(&r, &ep) ? AR_TUNE_FAILED : run_blocks(&r, model, out);
    ar_gpu_residency_close(r.gpu); /* before the chain arrays it may keep page-locked go */
    tn_bufs_free(&buf);
    ar_gemm_free(&r.gemm);
    ar_ckpt_close(r.ck);
    /* of the FP chain's two buffers, calib keeps its own */
    tn_chain_free(r.x_q);
    tn_chain_free(r.own_fp);
    tn_chain_free(r.spill_fp);
    free(r.mask);
    ar_layer_config_free(r.lc);
    ar_block_desc_free(&r.bd);
    ar_model_close(r.m);
    return rc;
}

int ar_tune_fp_inputs(const ar_tune_opts *o, const char *model, ar_calib_data *calib, int upto)
{
    ar_tune_opts a = *o;
    a.first_block = upto;         /* blocks calib->block..upto-1 run their FP forward, none is tuned */
    a.last_block = upto - 1;
    a.disable_quanted_input = 1;  /* the FP chain alone */
    a.mem_budget_mib = 0;         /* the result goes back into calib's activations */
    a.checkpoint = NULL;
    a.static_kv_fp8 = 0;
    if (!calib || !calib->hidden) return ar_error("the FP inputs of a block need calibration activations");
    return ar_tune_run(&a, model, calib, NULL);
}
