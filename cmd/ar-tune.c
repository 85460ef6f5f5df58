/* ar-tune — quantize a model block by block: SignRound (--iters > 0),
 * opt-RTN (--iters 0 with calibration data) or plain RTN (--model alone or
 * --disable_opt_rtn), and write the quantized layers as a tensor stream:
 * per Linear P, P.qweight (u8 codes [N,K]), P.scale (f32 [N,groups]) and
 * P.zp (i32 [N,groups]), after a META record naming the model and settings. */
#include "calib.h"
#include "calib_stream.h"
#include "checkpoint.h"
#include "cli.h"
#include "device.h"
#include "error.h"
#include "gguf_policy.h"
#include "gguf_tune.h"
#include "quant_gguf.h"
#include "model.h"
#include "quant.h"
#include "quant_fp.h"
#include "runtime.h"
#include "scheme.h"
#include "signround.h"
#include "stream.h"
#include "tuned_stream.h"
#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-tune [-i CALIB|-] [--model DIR] [-o FILE] [--scheme W4A16] [--bits N] [--group_size G]\n"
    "               [--sym|--asym] [--layer_config FILE.json] [--iters 200] [--lr X] [--minmax_lr X]\n"
    "               [--nsamples N] [--seqlen L] [--batch_size 8] [--gradient_accumulate_steps 1]\n"
    "               [--seed 42] [--recipe default|best|light] [--disable_minmax_tuning]\n"
    "               [--not_use_best_mse] [--disable_quanted_input] [--disable_opt_rtn] [--enable_alg_ext]\n"
    "               [--enable_lfq [--lfq_target labels|fp]]\n"
    "               [--device cpu|cuda[:N]] [--low_gpu_mem_usage] [--threads N] [--checkpoint DIR]\n"
    "               [--quiet|--verbose|--progress]\n"
    "Reads an ar-calib stream (standard input or -i) and writes quantized layers (ar-stream(5)) to\n"
    "standard output or -o FILE. With --model and no stream, plain RTN needs no calibration data.\n"
    "--threads N: OpenMP and OpenBLAS threads (default: all cores; 1 for models with hidden < 256).\n"
    "--checkpoint DIR: save each finished block in DIR; rerun the same command to resume after a kill.\n"
    "--enable_alg_ext: SignRoundV2 (symmetric int, MXFP, NVFP4: imatrix-searched initial scales, beta in [0, 2],\n"
    "outlier-suppressed loss below 4 bits or with 4-bit activations; GGUF: tuned rounding over llama.cpp's\n"
    "imatrix scales, 200 iters by default).\n"
    "--enable_lfq: the last block is tuned on the language-model cross-entropy of its output through the\n"
    "final norm and lm_head against the next tokens (AutoRound's experimental LFQ loss; CPU);\n"
    "--lfq_target fp: instead, the KL divergence from the original model's next-token distribution.\n";

typedef struct {
    const char *in, *model, *out, *scheme, *layer_config, *recipe;
    int bits, group_size, sym;
    int iters, nsamples, seqlen, batch_size, gas;
    double lr, minmax_lr;
    long seed, threads;
    int disable_minmax, not_use_best, disable_quanted_input, disable_opt_rtn;
    int enable_alg_ext;     /* --enable_alg_ext: SignRoundV2 (spec §5.1) */
    int enable_lfq;         /* --enable_lfq: the last block tuned on the LM loss */
    int lfq_kl;             /* --lfq_target fp: that loss is the KL from the FP model's predictions */
    const char *device;     /* --device; NULL = auto (cuda when a GPU is present) */
    int low_gpu_mem;        /* --low_gpu_mem_usage: block caches stay in host memory (GPU tuning) */
    const char *checkpoint; /* --checkpoint DIR; NULL = none */
} tune_args;

static int flag(const char *a, const char *name) { return !strcmp(a, name); }

static tune_args parse_args(int argc, char **argv)
{
    tune_args a = {0};
    a.scheme = "W4A16"; a.bits = a.group_size = a.sym = AR_UNSET;
    a.iters = a.nsamples = a.seqlen = a.batch_size = a.gas = -1;
    a.seed = 42;
    for (int i = 1; i < argc; i++) {
        const char *v, *s = argv[i];
        if (cli_io_flag(argc, argv, &i, usage, "--output", &a.in, &a.out, &a.model)) continue;
        else if ((v = cli_value(argc, argv, &i, "--scheme"))) a.scheme = v;
        else if ((v = cli_value(argc, argv, &i, "--layer_config"))) a.layer_config = v;
        else if ((v = cli_value(argc, argv, &i, "--recipe"))) a.recipe = v;
        else if ((v = cli_value(argc, argv, &i, "--bits"))) a.bits = (int)cli_long(s, v, 2, 16);
        else if ((v = cli_value(argc, argv, &i, "--group_size"))) a.group_size = (int)cli_long("--group_size", v, -1, 1 << 20);
        else if (flag(s, "--sym")) a.sym = 1;
        else if (flag(s, "--asym")) a.sym = 0;
        else if ((v = cli_value(argc, argv, &i, "--iters"))) a.iters = (int)cli_long("--iters", v, 0, 1000000);
        else if ((v = cli_value(argc, argv, &i, "--nsamples"))) a.nsamples = (int)cli_long("--nsamples", v, 1, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--seqlen"))) a.seqlen = (int)cli_long("--seqlen", v, 2, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--batch_size"))) a.batch_size = (int)cli_long("--batch_size", v, 1, 1 << 16);
        else if ((v = cli_value(argc, argv, &i, "--gradient_accumulate_steps"))) a.gas = (int)cli_long("--gradient_accumulate_steps", v, 1, 1 << 16);
        else if ((v = cli_value(argc, argv, &i, "--lr"))) a.lr = cli_double("--lr", v, 1e-12, 10);
        else if ((v = cli_value(argc, argv, &i, "--minmax_lr"))) a.minmax_lr = cli_double("--minmax_lr", v, 1e-12, 10);
        else if ((v = cli_value(argc, argv, &i, "--seed"))) a.seed = cli_long("--seed", v, 0, LONG_MAX);
        else if ((v = cli_value(argc, argv, &i, "--threads"))) a.threads = cli_long("--threads", v, 1, 4096);
        else if (flag(s, "--disable_minmax_tuning")) a.disable_minmax = 1;
        else if (flag(s, "--not_use_best_mse")) a.not_use_best = 1;
        else if (flag(s, "--disable_quanted_input")) a.disable_quanted_input = 1;
        else if (flag(s, "--disable_opt_rtn")) a.disable_opt_rtn = 1;
        else if (flag(s, "--enable_alg_ext")) a.enable_alg_ext = 1;
        else if (flag(s, "--enable_lfq")) a.enable_lfq = 1;
        else if ((v = cli_value(argc, argv, &i, "--lfq_target"))) {
            if (strcmp(v, "labels") && strcmp(v, "fp")) cli_usage_error("--lfq_target: '%s' is not labels or fp", v);
            a.lfq_kl = !strcmp(v, "fp");
        }
        else if ((v = cli_value(argc, argv, &i, "--device"))) a.device = v;
        else if (flag(s, "--low_gpu_mem_usage")) a.low_gpu_mem = 1;
        else if ((v = cli_value(argc, argv, &i, "--checkpoint"))) a.checkpoint = v;
        else cli_usage_error("unknown argument '%s'", s);
    }
    return a;
}

/* Recipes (spec §3) fill only what the user left unset. */
static void apply_recipe(tune_args *a)
{
    const char *r = a->recipe ? a->recipe : "default";
    int iters = 200;
    if (!strcmp(r, "best")) { iters = 1000; if (a->nsamples < 0) a->nsamples = 512; }
    else if (!strcmp(r, "light")) { iters = 50; if (a->lr == 0) a->lr = 5e-3; }
    else if (strcmp(r, "default")) cli_usage_error("--recipe: '%s' is not default, best or light", r);
    /* GGUF mixes: llama.cpp's imatrix quantization unless --iters (or a recipe,
     * or --enable_alg_ext) asks for SignRound, as AutoRound recommends iters=0
     * for GGUF without alg_ext */
    int gguf = a->scheme && !strncasecmp(a->scheme, "gguf:", 5);
    if (a->iters < 0) a->iters = !a->recipe && !a->enable_alg_ext && gguf ? 0 : iters;
    if (a->batch_size < 0) a->batch_size = 8;
    if (a->gas < 0) a->gas = 1;
}

/* Where the block forwards and SignRound run: AR_DEVICE_CPU or a CUDA device. */
static int g_dev = AR_DEVICE_CPU;

/* ---- calibration input --------------------------------------------------- */

/* The calibration stream must come from this very config.json. */
static void check_digest(const ar_calib_data *d, const char *model)
{
    if (d->config_digest && ar_config_digest_check(model, d->config_digest)) cli_die_lib();
}

/* ---- per-layer plan and output ------------------------------------------- */

typedef struct {
    ar_scheme def;
    ar_layer_config *lc;
    ar_scheme layer_scheme[AR_NLINEAR];
} scheme_ctx;

static void plan_block(const ar_config *c, const scheme_ctx *sc, int layer, ar_block_plan *plan,
                       ar_scheme *schemes, int bf16)
{
    memset(plan, 0, sizeof *plan);
    for (int i = 0; i < AR_NLINEAR; i++) {
        char name[256];
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        snprintf(name, sizeof name, "model.layers.%d.%s", layer, ar_linear_names[i]);
        ar_layer_info info = {0, 0, 0};
        if (ar_scheme_for_layer(&sc->def, sc->lc, name, n, k, &info, &schemes[i])) cli_die_lib();
        if (!ar_scheme_quantized(&schemes[i])) continue;
        int dt = ar_quant_dtype_parse(schemes[i].data_type, schemes[i].bits);
        if (dt < 0 || schemes[i].kind == AR_SCHEME_GGUF)
            cli_die("%s: scheme %s (%s, %d bits) has no quantizer in ar-tune", name,
                    schemes[i].name[0] ? schemes[i].name : "custom", schemes[i].data_type, schemes[i].bits);
        plan->quantize[i] = 1;
        plan->spec[i] = (ar_quant_spec){schemes[i].bits, schemes[i].group_size, schemes[i].sym,
                                        (bf16 ? AR_QF_BF16 : 0) | (schemes[i].group_2d ? AR_QF_BLOCK2D : 0), 0, dt,
                                        0, 0, NULL, NULL};
        int aq = ar_act_spec_from_scheme(&schemes[i], 0, &plan->act[i]);
        if (aq < 0) cli_die("%s: scheme %s: %s", name, schemes[i].name[0] ? schemes[i].name : "custom", ar_last_error());
        plan->act_quant[i] = aq;
    }
}

/* Static activation maxima (FP8_STATIC, NVFP4's input global scale) into the
 * plan's activation quantizers, once gathered. */
static void plan_set_act_max(ar_block_plan *plan, const ar_scheme *schemes, const float *act_max)
{
    for (int i = 0; i < AR_NLINEAR; i++)
        if (plan->quantize[i] && plan->act_quant[i] && ar_scheme_act_needs_max(&schemes[i]) &&
            ar_act_spec_from_scheme(&schemes[i], act_max[i], &plan->act[i]) < 0)
            cli_die_lib();
}

/* NVFP4 global scales: q/k/v and gate/up share the smallest of theirs (the
 * fused projections vLLM loads need one), as AutoRound does by default. */
static void share_global_scales(const ar_config *c, const ar_block_weights *w, ar_block_plan *plan)
{
    static const int fused[2][3] = {{AR_Q, AR_K, AR_V}, {AR_GATE, AR_UP, -1}};
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i] || plan->spec[i].dtype != AR_QDT_NVFP4) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        plan->spec[i].global_scale = ar_nvfp4_global_scale(w->w[i], (size_t)n * k);
    }
    for (int f = 0; f < 2; f++) {
        float gmin = 0;
        int all = 1;
        for (int j = 0; j < 3 && fused[f][j] >= 0; j++) {
            const ar_quant_spec *qs = &plan->spec[fused[f][j]];
            if (!plan->quantize[fused[f][j]] || qs->dtype != AR_QDT_NVFP4) all = 0;
            else if (gmin == 0 || qs->global_scale < gmin) gmin = qs->global_scale;
        }
        for (int j = 0; all && gmin > 0 && j < 3 && fused[f][j] >= 0; j++) plan->spec[fused[f][j]].global_scale = gmin;
    }
}

typedef struct {
    ar_quant_out out[AR_NLINEAR];
} block_outputs;

static void outputs_alloc(block_outputs *bo, const ar_config *c, const ar_block_plan *plan)
{
    memset(bo, 0, sizeof *bo);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i]) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        bo->out[i].wq = malloc(sizeof(float) * n * k);
        bo->out[i].codes = malloc((size_t)n * k);
        bo->out[i].scale = malloc(sizeof(float) * ng);
        bo->out[i].zp = malloc(sizeof(int32_t) * ng);
        if (!bo->out[i].wq || !bo->out[i].codes || !bo->out[i].scale || !bo->out[i].zp)
            cli_die("out of memory for layer outputs");
    }
}

static void outputs_free(block_outputs *bo)
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        free(bo->out[i].wq); free(bo->out[i].codes); free(bo->out[i].scale); free(bo->out[i].zp);
    }
}

static void write_layer(ar_stream_writer *w, const ar_config *c, int layer, int i, const ar_scheme *s,
                        const ar_quant_spec *qs, const ar_quant_out *o, float act_max)
{
    char base[256];
    int n, k;
    ar_linear_shape(c, i, &n, &k);
    snprintf(base, sizeof base, "model.layers.%d.%s", layer, ar_linear_names[i]);
    if (ar_tuned_write_linear(w, base, s, n, k, o, qs->dtype == AR_QDT_NVFP4 ? &qs->global_scale : NULL, act_max))
        cli_die_lib();
}

/* ---- the chains ---------------------------------------------------------- */

/* max |x| over ntok tokens of x [ntok, K] folded into *m. */
static void fold_abs_max(float *m, const float *x, long ntok, int k)
{
    for (long i = 0; i < ntok * k; i++) if (fabsf(x[i]) > *m) *m = fabsf(x[i]);
}

/* Statistics of the linears' inputs gathered by the block's input observer. */
typedef struct {
    float **imat;    /* [AR_NLINEAR] Σx² per input column, entries may be NULL */
    float *amax;     /* [AR_NLINEAR] running max |x|, or NULL */
} input_stats;

static void observe_input(void *ctx, int i, const float *x, long rows, int k)
{
    input_stats *st = ctx;
    if (st->imat && st->imat[i]) ar_imatrix_accumulate(st->imat[i], x, rows, k);
    if (st->amax) fold_abs_max(&st->amax[i], x, rows, k);
}

/* Run block weights w over all n samples of src (bf16 [n, T, C]) into dst
 * (NULL: outputs dropped), batch by batch; with imat, accumulate each
 * linear's input Σx² too; with amax, the running max |x| of each linear's
 * input (static activation scales); with actq, quantizing the linears'
 * inputs as that plan says (the statistics see the inputs before). The
 * statistics come from an inference forward's input observer: no attention
 * probabilities or other training state are stored. */
static void forward_all_stats(const ar_config *c, const ar_block_weights *w, const uint16_t *src, uint16_t *dst,
                              int n, int T, int bs, float *imat[AR_NLINEAR], float *amax, const ar_block_plan *actq)
{
    int has_actq = actq && ar_block_plan_has_act_quant(actq);
    if (!imat && !amax && !has_actq && dst && g_dev != AR_DEVICE_CPU) { /* statistics passes stay on the CPU */
        if (ar_block_forward_samples_cuda(c, w, src, dst, n, T, bs)) cli_die_lib();
        return;
    }
    ar_block_work ws;
    if (ar_block_work_init(&ws, c, bs, T, 0)) cli_die_lib();
    if (has_actq && ar_block_plan_set_act_quant(actq, &ws)) cli_die_lib();
    input_stats st = {imat, amax};
    if (imat || amax) ws.observe = observe_input, ws.observe_ctx = &st;
    size_t row = (size_t)T * c->hidden;
    float *x = malloc(sizeof(float) * bs * row), *y = malloc(sizeof(float) * bs * row);
    if (!x || !y) cli_die("out of memory for a forward batch");
    for (int s0 = 0; s0 < n; s0 += bs) {
        int b = n - s0 < bs ? n - s0 : bs;
        ar_to_f32(x, src + s0 * row, AR_BF16, b * row);
        if (ar_block_forward(c, w, x, y, b, T, &ws)) cli_die_lib();
        if (dst) ar_from_f32(dst + s0 * row, y, AR_BF16, b * row);
    }
    free(x); free(y);
    ar_block_work_free(&ws);
}

static void forward_all(const ar_config *c, const ar_block_weights *w, const uint16_t *src, uint16_t *dst,
                        int n, int T, int bs, float *imat[AR_NLINEAR])
{
    forward_all_stats(c, w, src, dst, n, T, bs, imat, NULL, NULL);
}

/* 1 when some planned linear quantizes its input with a calibrated maximum. */
static int plan_needs_act_max(const ar_block_plan *plan, const ar_scheme *schemes)
{
    for (int i = 0; i < AR_NLINEAR; i++)
        if (plan->quantize[i] && plan->act_quant[i] && ar_scheme_act_needs_max(&schemes[i])) return 1;
    return 0;
}

typedef struct {
    double t0;
    int layer, nlayers;
} progress_ctx;

static void on_iter(void *ctx, int it, int iters, double loss, double best)
{
    progress_ctx *p = ctx;
    if (cli_progress >= 2 && (it % 50 == 0 || it == iters - 1))
        fprintf(stderr, "ar-tune: block %d/%d iter %d/%d loss %.6g best %.6g\n", p->layer + 1, p->nlayers, it,
                iters, loss, best);
}

typedef struct {
    tune_args *a;
    ar_model *m;
    const ar_config *c;
    ar_calib_data *d;          /* NULL: zero-shot RTN */
    uint16_t *x_fp, *x_q, *y;
    uint8_t *mask;
    scheme_ctx sc;
    ar_stream_writer *w;
    double sec_tune;
    ar_checkpoint *ck;      /* --checkpoint; NULL = none */
} tune_run;

static void quantize_block_rtn(tune_run *r, const ar_block_weights *wfp, const ar_block_plan *plan,
                               float *imat[AR_NLINEAR], block_outputs *bo)
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i]) continue;
        int n, k;
        ar_linear_shape(r->c, i, &n, &k);
        int rc = imat && plan->spec[i].sym ? ar_quant_opt_rtn(&plan->spec[i], wfp->w[i], n, k, imat[i], &bo->out[i])
                                           : ar_quant_forward(&plan->spec[i], wfp->w[i], n, k, NULL, &bo->out[i]);
        if (rc) cli_die_lib();
    }
}

/* --enable_lfq: the model's output head for the last block's loss; returns
 * the head weights to free. The calibration tokens must lie in the vocabulary
 * (they index the logits). */
static float *lfq_head(tune_run *r, ar_lm_head *h)
{
    const ar_config *c = r->c;
    size_t ntok = (size_t)r->d->n * r->d->T;
    for (size_t i = 0; i < ntok; i++)
        if (r->d->ids[i] < 0 || r->d->ids[i] >= c->vocab)
            cli_die("calibration token id %d is outside the model's vocabulary (%d)", r->d->ids[i], c->vocab);
    float *w = ar_model_read_head(r->m, &h->norm_w);
    if (!w) cli_die_lib();
    h->w = w; h->V = c->vocab; h->eps = c->rms_eps; h->ids = r->d->ids; h->kl = r->a->lfq_kl;
    return w;
}

/* SignRound over block `layer` (r->y holds its FP outputs): tune the planned
 * linears into out, then run the quantized block for the next block's
 * quantized-chain input (unless disabled). outlier: SignRoundV2's
 * outlier-suppressed loss. extra receives the loss summary. */
static void signround_block(tune_run *r, int layer, const ar_block_weights *wfp, const ar_block_plan *plan,
                            int minmax, int outlier, const ar_quant_out out[AR_NLINEAR], double t0, char *extra,
                            size_t n_extra)
{
    const ar_config *c = r->c;
    int n = r->d->n, T = r->d->T;
    ar_signround_opts o;
    ar_signround_defaults(&o);
    o.iters = r->a->iters; o.lr = (float)r->a->lr; o.minmax_lr = (float)r->a->minmax_lr;
    o.batch_size = r->a->batch_size; o.grad_accum = r->a->gas; o.seed = (uint64_t)r->a->seed + layer;
    o.minmax_tuning = minmax; o.use_best = !r->a->not_use_best;
    o.outlier_loss = outlier;
    ar_lm_head head = {0};
    float *head_w = NULL;
    if (r->a->enable_lfq && layer == c->n_layers - 1) head_w = lfq_head(r, &head), o.lfq = &head;
    ar_signround_report rep;
    progress_ctx pc = {t0, layer, c->n_layers};
    const uint16_t *xin = r->x_q ? r->x_q : r->x_fp;
    int gpu = g_dev != AR_DEVICE_CPU && ar_signround_cuda_supports(plan) && !o.lfq;
    if (g_dev != AR_DEVICE_CPU && o.lfq && cli_progress)
        fprintf(stderr, "ar-tune: block %d/%d tunes on the CPU (--enable_lfq)\n", layer + 1, c->n_layers);
    if ((gpu ? ar_signround_tune_block_cuda : ar_signround_tune_block)(c, wfp, xin, r->y, r->mask, n, T, plan, &o,
                                                                    out, &rep, on_iter, &pc))
        cli_die_lib();
    free(head_w);
    r->sec_tune += rep.sec_total;
    snprintf(extra, n_extra, "loss %.4g -> %.4g (iter %d)  fwd %.1fs bwd %.1fs quant %.1fs", rep.loss0,
             rep.best_loss, rep.best_iter, rep.sec_forward, rep.sec_backward, rep.sec_quant);
    if (!r->a->disable_quanted_input) {
        /* next block's quantized-chain input: the tuned block as AutoRound
         * leaves it, quantized weights and (WrapperWALayer) quantized inputs */
        ar_block_weights wq = *wfp;
        for (int i = 0; i < AR_NLINEAR; i++) if (plan->quantize[i]) wq.w[i] = out[i].wq;
        if (!r->x_q && !(r->x_q = malloc(sizeof(uint16_t) * (size_t)n * T * c->hidden)))
            cli_die("out of memory for the quantized chain");
        forward_all_stats(c, &wq, xin, r->x_q, n, T, r->a->batch_size, NULL, NULL, plan);
    }
}

/* ---- GGUF schemes (--scheme gguf:<mix>) ------------------------------------
 * Each linear is quantized to the ggml type llama.cpp's mix gives it, with the
 * imatrix-weighted search (importance = Σx² of its inputs on the FP chain; none
 * without calibration data, which is llama-quantize's plain RTN). With --iters > 0
 * the scales that search chose are frozen and SignRound tunes the rounding of
 * every block-quantized linear (quant_gguf.h; no min/max tuning: AutoRound's
 * enable_alg_ext GGUF path), then the codes are rewritten from the tuned ŵ, so
 * the blocks dequantize to exactly the weights that were tuned.
 * With calibration data the stream also carries the token embedding (the
 * mix's type, its columns weighted by block 0's q/k/v sensitivity, see
 * ar_gguf_embedding_importance; with --iters > 0 the quantized chain starts
 * from its dequantized rows, what block 0 reads in llama.cpp) and
 * the output head, quantized with the importance matrix of its input (the
 * final-normed hidden states on the FP chain; llama-imatrix collects none).
 * Records: "<hf name>.gguf" (e.g. "model.layers.0.mlp.up_proj.weight.gguf",
 * "lm_head.weight.gguf"), u8 [nbytes], attrs ggml_type/rows/cols. */

static void write_gguf_tensor(ar_stream_writer *w, const char *hf_name, const ar_gguf_qlinear *q)
{
    if (ar_tuned_write_gguf(w, hf_name, q->type, q->rows, q->cols, q->blocks, q->nbytes)) cli_die_lib();
}

static void write_gguf_linear(ar_stream_writer *w, int layer, int i, const ar_gguf_qlinear *q)
{
    char hf[256];
    snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", layer, ar_linear_names[i]);
    write_gguf_tensor(w, hf, q);
}

static ar_gguf_ftype gguf_mix(const tune_run *r)
{
    int f = ar_gguf_ftype_parse(r->sc.def.name + 5);
    if (f < 0) cli_usage_error("--scheme %s: no llama.cpp mix of that name", r->sc.def.name);
    return (ar_gguf_ftype)f;
}

/* 1 when the quantized chain starts from the quantized embedding and follows
 * the tuned blocks. */
static int gguf_quanted_chain(const tune_run *r) { return r->d && r->a->iters > 0 && !r->a->disable_quanted_input; }

/* Block 0 comes first (w0 its weights): the token embedding, quantized with
 * the importance block 0's projections give its columns, and the quantized
 * chain's start. */
static void gguf_embedding(tune_run *r, const ar_block_weights *w0)
{
    const ar_config *c = r->c;
    ar_ggml_type t = ar_gguf_hf_tensor_type(gguf_mix(r), c, "model.embed_tokens.weight", c->hidden, 1);
    if (!ar_ggml_is_quantized(t)) return;   /* F16/BF16/F32 mixes: ar-pack converts it */
    /* A tied embedding is the output head too (its type is the head's): the
     * block-0 importance measured for untied models does not describe it, so
     * it keeps llama-quantize's plain search. */
    float *imp = NULL;
    if (!c->tie_embeddings) {
        if (!(imp = malloc(sizeof(float) * c->hidden))) cli_die("out of memory for the embedding's importance");
        ar_gguf_embedding_importance(c, w0, imp);
    }
    ar_gguf_qlinear e;
    if (ar_gguf_quantize_model_tensor(r->m, "model.embed_tokens.weight", c->vocab, c->hidden, t, imp, &e))
        cli_die_lib();
    free(imp);
    write_gguf_tensor(r->w, "model.embed_tokens.weight", &e);
    if (gguf_quanted_chain(r)) {
        size_t ntok = (size_t)r->d->n * r->d->T;
        if (!r->x_q && !(r->x_q = malloc(sizeof(uint16_t) * ntok * c->hidden)))
            cli_die("out of memory for the quantized chain");
        if (ar_gguf_embed_lookup(&e, r->d->ids, ntok, r->x_q)) cli_die_lib();
    }
    free(e.blocks);
}

/* After the last block (r->x_fp holds its FP outputs): the output head,
 * quantized with Σx² of the final-normed hidden states. */
static void gguf_output_head(tune_run *r)
{
    const ar_config *c = r->c;
    if (c->tie_embeddings) return;   /* the embedding is the head, written with block 0 */
    ar_ggml_type t = ar_gguf_hf_tensor_type(gguf_mix(r), c, "lm_head.weight", c->hidden, 1);
    if (!ar_ggml_is_quantized(t)) return;
    const int T = r->d->T, C = c->hidden;
    float *imat = calloc(C, sizeof(float)), *x = malloc(sizeof(float) * (size_t)T * C);
    if (!imat || !x) cli_die("out of memory for the output head's importance matrix");
    for (int s = 0; s < r->d->n; s++) {
        ar_to_f32(x, r->x_fp + (size_t)s * T * C, AR_BF16, (size_t)T * C);
        if (ar_model_final_norm(r->m, x, T)) cli_die_lib();
        ar_imatrix_accumulate(imat, x, T, C);
    }
    ar_gguf_qlinear h;
    if (ar_gguf_quantize_model_tensor(r->m, "lm_head.weight", c->vocab, C, t, imat, &h)) cli_die_lib();
    write_gguf_tensor(r->w, "lm_head.weight", &h);
    free(h.blocks);
    free(imat);
    free(x);
}

/* SignRound over the rounding of the block-quantized linears q[] (scales frozen
 * as llama.cpp's search left them; plain-typed ones stay FP while tuning), then
 * their codes rewritten from the tuned weights and the quantized chain
 * advanced. r->y holds the FP outputs. */
static void tune_gguf_rounding(tune_run *r, int layer, const ar_block_weights *wfp, ar_gguf_qlinear q[AR_NLINEAR],
                               double t0, char *extra, size_t n_extra)
{
    ar_block_plan plan;
    ar_gguf_frozen fz[AR_NLINEAR];
    memset(&plan, 0, sizeof plan);
    memset(fz, 0, sizeof fz);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!ar_ggml_is_quantized(q[i].type)) continue;
        if (ar_quant_gguf_freeze(q[i].type, q[i].blocks, (int)q[i].rows, (int)q[i].cols, &fz[i], &plan.spec[i]))
            cli_die_lib();
        plan.quantize[i] = 1;
    }
    block_outputs bo;
    outputs_alloc(&bo, r->c, &plan);
    signround_block(r, layer, wfp, &plan, 0, 0, bo.out, t0, extra, n_extra);
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan.quantize[i]) continue;
        if (ar_quant_gguf_store(&plan.spec[i], bo.out[i].wq, (int)q[i].rows, (int)q[i].cols, q[i].blocks))
            cli_die("model.layers.%d.%s: %s", layer, ar_linear_names[i], ar_last_error());
        ar_gguf_frozen_free(&fz[i]);
    }
    outputs_free(&bo);
}

static void tune_block_gguf(tune_run *r, int layer, ar_block_weights *wfp, double t0)
{
    const ar_config *c = r->c;
    ar_gguf_ftype f = gguf_mix(r);
    ar_ggml_type types[AR_NLINEAR];
    for (int i = 0; i < AR_NLINEAR; i++) {
        char hf[256];
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", layer, ar_linear_names[i]);
        types[i] = ar_gguf_hf_tensor_type(f, c, hf, k, r->d != NULL);
    }
    if (r->d && layer == 0) gguf_embedding(r, wfp);
    float *imat[AR_NLINEAR] = {0};
    if (r->d) {
        for (int i = 0; i < AR_NLINEAR; i++) {
            int n, k;
            ar_linear_shape(c, i, &n, &k);
            if (!(imat[i] = calloc(k, sizeof(float)))) cli_die("out of memory for the importance matrix");
        }
        forward_all(c, wfp, r->x_fp, r->y, r->d->n, r->d->T, r->a->batch_size, imat);
    }
    ar_gguf_qlinear q[AR_NLINEAR];
    if (ar_gguf_quantize_block(types, c, layer, wfp, r->d ? imat : NULL, q)) cli_die_lib();
    char extra[200] = "";
    if (r->d && r->a->iters > 0) tune_gguf_rounding(r, layer, wfp, q, t0, extra, sizeof extra);
    if (r->d) { uint16_t *t = r->x_fp; r->x_fp = r->y; r->y = t; }  /* FP chain: Y is the next input */
    for (int i = 0; i < AR_NLINEAR; i++) write_gguf_linear(r->w, layer, i, &q[i]);
    if (r->d && layer == c->n_layers - 1) gguf_output_head(r);
    ar_gguf_qlinears_free(q);
    for (int i = 0; i < AR_NLINEAR; i++) free(imat[i]);
    cli_progress_line("block", layer + 1, c->n_layers, t0, extra[0] ? extra : NULL);
}

/* ---- --enable_alg_ext on int / MX / NV schemes (SignRoundV2, spec §5.1(a)) --
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

static void v2_init_scales(const ar_config *c, const ar_block_weights *wfp, ar_block_plan *plan,
                           float *const imat[AR_NLINEAR], float *init[AR_NLINEAR])
{
    for (int i = 0; i < AR_NLINEAR; i++) {
        if (!plan->quantize[i] || !v2_layer(&plan->spec[i])) continue;
        int n, k;
        ar_linear_shape(c, i, &n, &k);
        size_t ng = (size_t)n * ar_quant_ngroups(k, plan->spec[i].group_size);
        if (!(init[i] = malloc(sizeof(float) * ng))) cli_die("out of memory for initial scales");
        int rc = plan->spec[i].dtype == AR_QDT_INT
                     ? ar_quant_search_scales(&plan->spec[i], wfp->w[i], n, k, imat[i], init[i])
                     : ar_quant_fp_search(&plan->spec[i], wfp->w[i], n, k, imat[i], init[i]);
        if (rc) cli_die_lib();
        plan->init_scale[i] = init[i];
        plan->spec[i].minmax_hi = 2;
    }
}

/* --enable_lfq changes SignRound's loss; --lfq_target only qualifies it. */
static void check_lfq(const tune_args *a)
{
    if (a->lfq_kl && !a->enable_lfq) cli_usage_error("--lfq_target is --enable_lfq's: give both");
    if (a->enable_lfq && a->iters == 0) cli_usage_error("--enable_lfq changes the SignRound loss: it needs --iters > 0");
}

/* --enable_alg_ext needs a scheme it is defined for. */
static void check_alg_ext(const tune_run *r)
{
    if (!r->a->enable_alg_ext) return;
    int k = r->sc.def.kind;
    if (k != AR_SCHEME_INT && k != AR_SCHEME_GGUF && k != AR_SCHEME_MXFP && k != AR_SCHEME_NVFP)
        cli_usage_error("--enable_alg_ext: supported for integer (W2A16, W4A16, ...), MXFP, NVFP4 and GGUF schemes, "
                        "not %s",
                        r->sc.def.name);
    if (k == AR_SCHEME_INT && !r->sc.def.sym && cli_progress)
        fprintf(stderr, "ar-tune: --enable_alg_ext changes nothing for asymmetric int schemes (AutoRound's V1 path)\n");
}

static void tune_one_block(tune_run *r, int layer, ar_block_weights *wfp, double t0)
{
    if (r->sc.def.kind == AR_SCHEME_GGUF) { tune_block_gguf(r, layer, wfp, t0); return; }
    const ar_config *c = r->c;
    ar_block_plan plan;
    ar_scheme schemes[AR_NLINEAR];
    plan_block(c, &r->sc, layer, &plan, schemes, r->d != NULL);
    share_global_scales(c, wfp, &plan);
    float act_max[AR_NLINEAR] = {0};
    block_outputs bo;
    outputs_alloc(&bo, c, &plan);
    char extra[160] = "";
    if (!r->d) {
        quantize_block_rtn(r, wfp, &plan, NULL, &bo);
    } else {
        int n = r->d->n, T = r->d->T;
        int opt_rtn = r->a->iters == 0 && !r->a->disable_opt_rtn;
        int alg_ext = r->a->enable_alg_ext && r->a->iters > 0;
        float *imat[AR_NLINEAR] = {0};
        for (int i = 0; i < AR_NLINEAR; i++) {
            int nn, k;
            ar_linear_shape(c, i, &nn, &k);
            if (plan.quantize[i] && (opt_rtn || (alg_ext && v2_layer(&plan.spec[i]))) &&
                !(imat[i] = calloc(k, sizeof(float))))
                cli_die("out of memory for the importance matrix");
        }
        /* Static activation maxima come from the inputs the block is tuned
         * on: the quantized chain's (through the FP block) when SignRound
         * uses it, else the FP chain's (AutoRound's act_max hooks). */
        int need_max = plan_needs_act_max(&plan, schemes);
        int q_stats = need_max && r->a->iters > 0 && !r->a->disable_quanted_input && r->x_q;
        forward_all_stats(c, wfp, r->x_fp, r->y, n, T, r->a->batch_size, opt_rtn || alg_ext ? imat : NULL,
                          need_max && !q_stats ? act_max : NULL, NULL);
        if (q_stats) forward_all_stats(c, wfp, r->x_q, NULL, n, T, r->a->batch_size, NULL, act_max, NULL);
        if (need_max) plan_set_act_max(&plan, schemes, act_max);
        if (r->a->iters > 0) {
            float *init[AR_NLINEAR] = {0};
            if (alg_ext) v2_init_scales(c, wfp, &plan, imat, init);
            signround_block(r, layer, wfp, &plan, !r->a->disable_minmax, alg_ext && v2_outlier_loss(&r->sc.def),
                            bo.out, t0, extra, sizeof extra);
            for (int i = 0; i < AR_NLINEAR; i++) free(init[i]);
        } else {
            for (int i = 0; opt_rtn && i < AR_NLINEAR; i++) {
                int nn, k;
                ar_linear_shape(c, i, &nn, &k);
                if (imat[i]) ar_imatrix_finalize(imat[i], k, n);
            }
            quantize_block_rtn(r, wfp, &plan, opt_rtn ? imat : NULL, &bo);
        }
        for (int i = 0; i < AR_NLINEAR; i++) free(imat[i]);
        uint16_t *t = r->x_fp; r->x_fp = r->y; r->y = t;  /* FP chain: Y becomes the next input */
    }
    for (int i = 0; i < AR_NLINEAR; i++)
        if (plan.quantize[i]) write_layer(r->w, c, layer, i, &schemes[i], &plan.spec[i], &bo.out[i], act_max[i]);
    outputs_free(&bo);
    cli_progress_line("block", layer + 1, c->n_layers, t0, extra[0] ? extra : NULL);
}

/* 1 when some layer will get other bits than the default scheme (the auto_round
 * exporter picks its asym layout from this before seeing any layer). */
static int plan_is_mixed(const tune_run *r)
{
    for (int layer = 0; layer < r->c->n_layers; layer++)
        for (int i = 0; i < AR_NLINEAR; i++) {
            char name[256];
            int n, k;
            ar_scheme s;
            ar_linear_shape(r->c, i, &n, &k);
            snprintf(name, sizeof name, "model.layers.%d.%s", layer, ar_linear_names[i]);
            ar_layer_info info = {0, 0, 0};
            if (ar_scheme_for_layer(&r->sc.def, r->sc.lc, name, n, k, &info, &s)) cli_die_lib();
            if (ar_scheme_quantized(&s) && s.bits != r->sc.def.bits) return 1;
        }
    return 0;
}

static char *meta_json(const tune_run *r, const char *model_abs)
{
    const tune_args *a = r->a;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "iters", r->d ? a->iters : 0);
    if (r->d) {
        cJSON_AddNumberToObject(t, "nsamples", r->d->n);
        cJSON_AddNumberToObject(t, "seqlen", r->d->T);
        cJSON_AddNumberToObject(t, "batch_size", a->batch_size);
        cJSON_AddNumberToObject(t, "gradient_accumulate_steps", a->gas);
        if (a->lr > 0) cJSON_AddNumberToObject(t, "lr", a->lr);
        if (a->minmax_lr > 0) cJSON_AddNumberToObject(t, "minmax_lr", a->minmax_lr);
        cJSON_AddBoolToObject(t, "enable_minmax_tuning", !a->disable_minmax);
        cJSON_AddBoolToObject(t, "enable_quanted_input", !a->disable_quanted_input);
        cJSON_AddBoolToObject(t, "enable_alg_ext", a->enable_alg_ext);
        if (a->enable_lfq) cJSON_AddBoolToObject(t, "enable_lfq", 1);
        if (a->enable_lfq && a->lfq_kl) cJSON_AddStringToObject(t, "lfq_target", "fp");
        cJSON_AddNumberToObject(t, "seed", (double)a->seed);
        if (r->d->pad_key && r->d->pad_id >= 0) cJSON_AddNumberToObject(t, "loss_mask_pad_token_id", r->d->pad_id);
    }
    cJSON_AddStringToObject(t, "method", !r->d || (a->iters == 0 && a->disable_opt_rtn) ? "rtn"
                                         : a->iters == 0 ? "opt_rtn" : "signround");
    char *tj = cJSON_PrintUnformatted(t);
    cJSON_Delete(t);
    char *txt = tj ? ar_tuned_meta_json(model_abs, &r->sc.def, plan_is_mixed(r), tj) : NULL;
    free(tj);
    if (!txt) cli_die_lib();
    return txt;
}

/* Use the stream's layer config unless --layer_config FILE was given (it wins). */
static void apply_stream_layer_config(tune_run *r, const ar_calib_data *d, const char *src)
{
    if (!d->layer_config) return;
    if (r->a->layer_config) {
        if (cli_progress) fprintf(stderr, "ar-tune: --layer_config overrides the stream's layer config\n");
        return;
    }
    if (!(r->sc.lc = ar_layer_config_parse(d->layer_config, src))) cli_die_lib();
    if (cli_progress) fprintf(stderr, "ar-tune: using the stream's layer config (%d layers)\n",
                              ar_layer_config_count(r->sc.lc));
}

static void setup_scheme(tune_run *r)
{
    if (ar_scheme_preset(&r->sc.def, r->a->scheme)) cli_usage_error("%s", ar_last_error());
    if (ar_scheme_override(&r->sc.def, r->a->bits, r->a->group_size, r->a->sym)) cli_usage_error("%s", ar_last_error());
    if (r->a->layer_config && !(r->sc.lc = ar_layer_config_load(r->a->layer_config))) cli_die_lib();
}

/* Keep the first nsamples samples when fewer are asked for than the stream holds. */
static void limit_samples(ar_calib_data *d, int nsamples, int seqlen)
{
    if (seqlen > 0 && seqlen != d->T)
        cli_die("--seqlen %d does not match the calibration stream's %d (rerun ar-calib)", seqlen, d->T);
    if (nsamples > 0 && nsamples < d->n) d->n = nsamples;
    if (nsamples > d->n)
        fprintf(stderr, "ar-tune: warning: %d samples asked for, the calibration stream has %d\n", nsamples, d->n);
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

/* ---- checkpoints (--checkpoint DIR, libar/checkpoint.h) ---------------------
 * After each block: its records go to DIR/block-NNNN.ars, the chains (x_fp and
 * x_q, what the next block reads) and the manifest follow. A rerun with the
 * same settings replays the finished blocks' records into the output (the same
 * writer calls, so the same bytes) and continues with the saved chains. */

/* FNV-1a of the calibration data this run uses (first n samples), "none" without. */
static void calib_digest(const ar_calib_data *d, char hex[17])
{
    if (!d) { snprintf(hex, 17, "none"); return; }
    size_t ntok = (size_t)d->n * d->T;
    uint64_t h = ar_fnv1a64_update(AR_FNV1A64_INIT, d->ids, ntok * sizeof(int32_t));
    h = ar_fnv1a64_update(h, d->hidden, ntok * d->C * sizeof(uint16_t));
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
}

static void layer_config_digest(const char *path, const char *stream_lc, char hex[17])
{
    if (!path && stream_lc) {
        snprintf(hex, 17, "%016llx", (unsigned long long)ar_fnv1a64(stream_lc, strlen(stream_lc)));
        return;
    }
    if (!path) { snprintf(hex, 17, "none"); return; }
    size_t n;
    char *txt = ar_read_text_file(path, &n);
    if (!txt) cli_die_lib();
    snprintf(hex, 17, "%016llx", (unsigned long long)ar_fnv1a64(txt, n));
    free(txt);
}

/* Everything that changes the output bytes, as the JSON object the manifest keeps. */
static char *checkpoint_settings(const tune_run *r, const char *model_abs, const char *meta)
{
    const tune_args *a = r->a;
    char model_dg[17], calib_dg[17], lc_dg[17], meta_dg[17];
    if (ar_ckpt_model_digest(model_abs, model_dg)) cli_die_lib();
    calib_digest(r->d, calib_dg);
    layer_config_digest(a->layer_config, r->d ? r->d->layer_config : NULL, lc_dg);
    snprintf(meta_dg, sizeof meta_dg, "%016llx", (unsigned long long)ar_fnv1a64(meta, strlen(meta)));
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "tool", "ar-tune");
    cJSON_AddStringToObject(s, "model", model_abs);
    cJSON_AddNumberToObject(s, "nsamples", r->d ? r->d->n : 0);
    cJSON_AddNumberToObject(s, "seqlen", r->d ? r->d->T : 0);
    cJSON_AddStringToObject(s, "scheme", r->sc.def.name);
    cJSON_AddNumberToObject(s, "bits", r->sc.def.bits);
    cJSON_AddNumberToObject(s, "group_size", r->sc.def.group_size);
    cJSON_AddBoolToObject(s, "sym", r->sc.def.sym);
    cJSON_AddNumberToObject(s, "iters", a->iters);
    cJSON_AddNumberToObject(s, "lr", a->lr);
    cJSON_AddNumberToObject(s, "minmax_lr", a->minmax_lr);
    cJSON_AddNumberToObject(s, "batch_size", a->batch_size);
    cJSON_AddNumberToObject(s, "gradient_accumulate_steps", a->gas);
    cJSON_AddNumberToObject(s, "seed", (double)a->seed);
    cJSON_AddBoolToObject(s, "disable_minmax_tuning", a->disable_minmax);
    cJSON_AddBoolToObject(s, "not_use_best_mse", a->not_use_best);
    cJSON_AddBoolToObject(s, "disable_quanted_input", a->disable_quanted_input);
    cJSON_AddBoolToObject(s, "disable_opt_rtn", a->disable_opt_rtn);
    cJSON_AddNumberToObject(s, "threads", ar_thread_count());   /* f32 sums depend on it */
    cJSON_AddStringToObject(s, "device", ar_device_describe(g_dev));
    cJSON_AddStringToObject(s, "model_digest", model_dg);
    cJSON_AddStringToObject(s, "calibration_digest", calib_dg);
    cJSON_AddStringToObject(s, "layer_config_digest", lc_dg);
    cJSON_AddStringToObject(s, "meta_digest", meta_dg);             /* all else the output records */
    char *txt = cJSON_PrintUnformatted(s);
    cJSON_Delete(s);
    return txt;
}

/* Open --checkpoint DIR, or die naming what differs from the run that made it. */
static void checkpoint_open(tune_run *r, const char *model_abs, const char *meta)
{
    char *settings = checkpoint_settings(r, model_abs, meta);
    int mismatch;
    r->ck = ar_ckpt_open(r->a->checkpoint, settings, r->c->n_layers, &mismatch);
    free(settings);
    if (!r->ck && mismatch) cli_die("%s; use a new --checkpoint directory", ar_last_error());
    if (!r->ck) cli_die_lib();
}

/* The chain arrays the checkpoint keeps: x_fp always (with data), x_q once it exists. */
static int chain_arrays(const tune_run *r, ar_ckpt_array arr[2])
{
    if (!r->d) return 0;
    size_t nb = sizeof(uint16_t) * (size_t)r->d->n * r->d->T * r->d->C;
    arr[0] = (ar_ckpt_array){"x_fp", r->x_fp, nb, 0};
    arr[1] = (ar_ckpt_array){"x_q", r->x_q, nb, 0};
    return 2;
}

/* Replay the finished blocks into the output and restore the chains; returns
 * the first block still to tune. */
static int checkpoint_resume(tune_run *r)
{
    int first = ar_ckpt_next_block(r->ck), nl = r->c->n_layers;
    if (first > 0 && cli_progress)
        fprintf(stderr, first < nl ? "ar-tune: resuming at block %d/%d from %s\n"
                                   : "ar-tune: all %d/%d blocks finished in %s: writing the output\n",
                first + 1 > nl ? nl : first + 1, nl, r->a->checkpoint);
    for (int b = 0; b < first; b++)
        if (ar_ckpt_replay_block(r->ck, b, r->w)) cli_die_lib();
    if (first == 0 || first == nl) return first;
    ar_ckpt_array arr[2];
    int n = chain_arrays(r, arr);
    if (ar_ckpt_load_chain(r->ck, arr, n)) cli_die_lib();
    if (n && arr[1].present) r->x_q = arr[1].data;
    return first;
}

/* Tune one block with its records going to the checkpoint first, then commit
 * it (records file, chains, manifest) and copy its records to the output. */
static void tune_block_checkpointed(tune_run *r, int layer, ar_block_weights *wfp, double t0)
{
    ar_stream_writer *out = r->w;
    if (!(r->w = ar_ckpt_block_begin(r->ck, layer))) cli_die_lib();
    tune_one_block(r, layer, wfp, t0);
    if (ar_ckpt_block_end(r->ck, r->w)) cli_die_lib();
    r->w = out;
    ar_ckpt_array arr[2];
    int n = chain_arrays(r, arr);
    if (ar_ckpt_commit(r->ck, layer, arr, n)) cli_die_lib();
    if (ar_ckpt_replay_block(r->ck, layer, r->w)) cli_die_lib();
}

int main(int argc, char **argv)
{
    cli_init("ar-tune");
    tune_args a = parse_args(argc, argv);
    apply_recipe(&a);
    tune_run r = {0};
    r.a = &a;
    setup_scheme(&r);
    check_alg_ext(&r);
    check_lfq(&a);
    ar_calib_data d;
    /* A stream comes from -i, or from standard input when no --model is given;
     * --model alone means zero-shot RTN. */
    if (!a.in && !a.model && isatty(0))
        cli_usage_error("give a calibration stream (-i FILE or a pipe) or --model DIR for plain RTN");
    if (a.in || !a.model) {
        if (ar_calib_stream_load(a.in, &d)) cli_die_lib();
        limit_samples(&d, a.nsamples, a.seqlen);
        r.d = &d;
        if (!a.model) a.model = d.model;
        if (!a.model) cli_die("the calibration stream names no model; give --model DIR");
        check_digest(&d, a.model);
        apply_stream_layer_config(&r, &d, a.in ? a.in : "<stdin>");
    } else if (a.iters > 0) {
        if (a.enable_lfq) cli_usage_error("--enable_lfq needs a calibration stream (-i FILE or a pipe)");
        a.iters = 0; /* no data: plain RTN, as AutoRound's zero-shot path */
        if (cli_progress) fprintf(stderr, "ar-tune: no calibration stream: plain RTN\n");
    }
    if (ar_device_parse(a.device, &g_dev)) cli_usage_error("--device: %s", ar_last_error());
    if (!r.d) g_dev = AR_DEVICE_CPU; /* RTN without data: nothing to run on a GPU */
    if (ar_device_init(g_dev)) cli_die_lib();
    ar_signround_cuda_set_low_mem(a.low_gpu_mem);
    if (cli_progress >= 2) fprintf(stderr, "ar-tune: running on %s\n", ar_device_describe(g_dev));
    r.m = ar_model_open(a.model, 0);
    if (!r.m) cli_die_lib();
    r.c = ar_model_config(r.m);
    ar_set_threads(a.threads, r.c);
    if (r.d) {
        if (d.C != r.c->hidden) cli_die("calibration hidden size %d does not match the model's %d", d.C, r.c->hidden);
        r.x_fp = d.hidden;
        r.y = malloc(sizeof(uint16_t) * (size_t)d.n * d.T * d.C);
        r.mask = malloc((size_t)d.n * d.T);
        if (!r.y || !r.mask) cli_die("out of memory for the activation cache");
        loss_mask(r.mask, &d);
    }
    char model_abs[PATH_MAX];
    if (!realpath(a.model, model_abs)) snprintf(model_abs, sizeof model_abs, "%s", a.model);
    char *meta = meta_json(&r, model_abs);
    if (a.checkpoint) checkpoint_open(&r, model_abs, meta);
    FILE *f = cli_out_open(a.out, 1);
    r.w = ar_stream_writer_open(f, a.out ? a.out : "<stdout>", 3);
    if (!r.w || ar_stream_write_meta(r.w, meta)) cli_die_lib();
    free(meta);
    ar_block_weights wfp;
    if (ar_block_weights_alloc(&wfp, r.c)) cli_die_lib();
    double t0 = cli_now();
    int first = r.ck ? checkpoint_resume(&r) : 0;
    for (int layer = first; layer < r.c->n_layers; layer++) {
        if (ar_model_load_block(r.m, layer, &wfp)) cli_die_lib();
        if (r.ck) tune_block_checkpointed(&r, layer, &wfp, t0);
        else tune_one_block(&r, layer, &wfp, t0);
    }
    if (ar_stream_writer_close(r.w)) cli_die_lib();
    cli_out_commit(f);
    ar_ckpt_close(r.ck);
    if (cli_progress) fprintf(stderr, "ar-tune: done in %.1fs\n", cli_now() - t0);
    ar_block_weights_free(&wfp);
    ar_model_close(r.m);
    return 0;
}
