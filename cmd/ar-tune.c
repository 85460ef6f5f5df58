/* ar-tune — quantize a model block by block: SignRound (--iters > 0),
 * opt-RTN (--iters 0 with calibration data) or plain RTN (--model alone or
 * --disable_opt_rtn), and write the quantized layers as a tensor stream
 * (libar/io/tuned_stream.h). The pipeline is libar's (libar/tune/tune.h); this is its
 * command line, and the GGUF schemes' per-tensor types from
 * formats/gguf_policy.h. */
#include "calib.h"
#include "calib_stream.h"
#include "cli.h"
#include "device.h"
#include "error.h"
#include "gguf_policy.h"
#include "mpi_ranks.h"
#include "tune.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char usage[] =
    "usage: ar-tune [-i CALIB|-] [--model DIR] [-o FILE] [--scheme W4A16] [--bits N] [--group_size G]\n"
    "               [--sym|--asym] [--layer_config FILE.json] [--iters 200] [--lr X] [--minmax_lr X]\n"
    "               [--nsamples N] [--seqlen L] [--batch_size 8] [--gradient_accumulate_steps 1]\n"
    "               [--micro_batch N] [--dp_chunk M | --expert_parallel] [--bench_chain_samples K]\n"
    "               [--seed 42] [--recipe default|best|light] [--disable_minmax_tuning]\n"
    "               [--not_use_best_mse] [--disable_quanted_input] [--disable_opt_rtn] [--enable_alg_ext]\n"
    "               [--enable_lfq [--lfq_target labels|fp]] [--static_kv_dtype fp8]\n"
    "               [--device cpu|cuda[:N]] [--low_gpu_mem_usage] [--gpu_chain_budget MIB] [--threads N]\n"
    "               [--checkpoint DIR] [--mem_budget MIB | --low_cpu_mem_usage] [--amp|--disable_amp]\n"
    "               [--blocks A-B] [--quiet|--verbose|--progress]\n"
    "Reads an ar-calib stream (standard input or -i) and writes quantized layers (ar-stream(5)) to\n"
    "standard output or -o FILE. With --model and no stream, plain RTN needs no calibration data.\n"
    "--threads N: OpenMP and OpenBLAS threads (default: all cores; 1 for models with hidden < 256).\n"
    "--disable_amp: the block GEMMs in f32 even where the CPU has AVX512-BF16/AMX (default --amp: bf16 there,\n"
    "as AutoRound's amp; f32 elsewhere).\n"
    "--checkpoint DIR: save each finished block in DIR; rerun the same command to resume after a kill.\n"
    "--dp_chunk M: cut each iteration's samples into chunks of M and sum the chunks' gradients over a fixed\n"
    "tree. mpirun -np N ar-tune ... splits those chunks among N ranks (default under mpirun: 1) and writes the\n"
    "same bytes as one process with the same --dp_chunk and --threads (docs/mpi.md; give -i FILE and -o FILE).\n"
    "--expert_parallel: under mpirun, the ranks split each MoE block's routed experts instead (each holds the\n"
    "tuning state of its own experts, the routed rows are exchanged); the same bytes as one process.\n"
    "--mem_budget MIB: when the calibration chains (3 x nsamples x seqlen x hidden bf16) need more host memory,\n"
    "they live in files under $TMPDIR (default /tmp) instead, and SignRound's forward/backward runs a batch in\n"
    "chunks of as many samples as the budget holds (their gradients add up: the same sums, grouped);\n"
    "--low_cpu_mem_usage: the chains always in files, no chunks (same output as without).\n"
    "--micro_batch N: samples per forward/backward (default: batch_size, or as --mem_budget allows).\n"
    "--bench_chain_samples K: benchmarks only (memory, time per iteration): each block's chain forwards run\n"
    "the first K samples only, SignRound still draws from all; the output is not a usable model.\n"
    "--enable_alg_ext: SignRoundV2 (symmetric int, MXFP, NVFP4: imatrix-searched initial scales, beta in [0, 2],\n"
    "outlier-suppressed loss below 4 bits or with 4-bit activations; GGUF: tuned rounding over llama.cpp's\n"
    "imatrix scales, 200 iters by default).\n"
    "--enable_lfq: the last block is tuned on the language-model cross-entropy of its output through the\n"
    "final norm and lm_head against the next tokens (AutoRound's experimental LFQ loss; CPU);\n"
    "--lfq_target fp: instead, the KL divergence from the original model's next-token distribution.\n"
    "--static_kv_dtype fp8: also a static FP8 E4M3 KV-cache scale per layer for K (after RoPE) and V, from\n"
    "their calibration maximum on the chain the next block reads (needs a calibration stream).\n"
    "--blocks A-B: tune and write blocks A to B only (A alone: one block), from a stream of block 0's inputs\n"
    "(blocks before A run their FP forward) or of block A's or an earlier block's (ar-calib --upto-block);\n"
    "past block 0 with SignRound it needs --disable_quanted_input. ar-pack -i a.ars -i b.ars ... merges\n"
    "the ranges into the model a whole run makes (docs/parallel.md).\n";

typedef struct {
    const char *in, *model, *out, *scheme, *recipe, *device;
    int bits, group_size, sym;  /* --bits, --group_size, --sym/--asym over the scheme; AR_UNSET if not given */
    int nsamples, seqlen;       /* -1 if not given */
    ar_gguf_ftype mix;          /* GGUF schemes: llama.cpp's mix */
    ar_tune_opts o;             /* iters, batch_size, grad_accum -1 until apply_recipe */
} tune_args;

static int flag(const char *a, const char *name) { return !strcmp(a, name); }

/* --blocks A-B (or A): the first and last block, 0-based, A <= B. */
static void parse_blocks(const char *v, ar_tune_opts *o)
{
    char *end;
    long a = strtol(v, &end, 10), b = a;
    if (end != v && *end == '-' && end[1] >= '0' && end[1] <= '9') b = strtol(end + 1, &end, 10);
    if (end == v || *end || *v < '0' || *v > '9' || a > b || b > 1 << 20)
        cli_usage_error("--blocks: '%s' is not A-B with 0 <= A <= B (or one block A)", v);
    o->first_block = (int)a;
    o->last_block = (int)b;
}

static tune_args parse_args(int argc, char **argv)
{
    tune_args a = {0};
    ar_tune_defaults(&a.o);
    const char *tmp = getenv("TMPDIR");
    if (tmp && *tmp) a.o.spill_dir = tmp;
    a.scheme = "W4A16"; a.bits = a.group_size = a.sym = AR_UNSET;
    a.o.iters = a.nsamples = a.seqlen = a.o.batch_size = a.o.grad_accum = -1;
    ar_tune_opts *o = &a.o;
    int low_cpu = 0;   /* --low_cpu_mem_usage: spill, keep whole batches */
    for (int i = 1; i < argc; i++) {
        const char *v, *s = argv[i];
        if (cli_io_flag(argc, argv, &i, usage, "--output", &a.in, &a.out, &a.model)) continue;
        else if ((v = cli_value(argc, argv, &i, "--scheme"))) a.scheme = v;
        else if ((v = cli_value(argc, argv, &i, "--layer_config"))) o->layer_config = v;
        else if ((v = cli_value(argc, argv, &i, "--recipe"))) a.recipe = v;
        else if ((v = cli_value(argc, argv, &i, "--bits"))) a.bits = (int)cli_long(s, v, 2, 16);
        else if ((v = cli_value(argc, argv, &i, "--group_size"))) a.group_size = (int)cli_long("--group_size", v, -1, 1 << 20);
        else if (flag(s, "--sym")) a.sym = 1;
        else if (flag(s, "--asym")) a.sym = 0;
        else if ((v = cli_value(argc, argv, &i, "--iters"))) o->iters = (int)cli_long("--iters", v, 0, 1000000);
        else if ((v = cli_value(argc, argv, &i, "--nsamples"))) a.nsamples = (int)cli_long("--nsamples", v, 1, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--seqlen"))) a.seqlen = (int)cli_long("--seqlen", v, 2, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--batch_size"))) o->batch_size = (int)cli_long("--batch_size", v, 1, 1 << 16);
        else if ((v = cli_value(argc, argv, &i, "--gradient_accumulate_steps"))) o->grad_accum = (int)cli_long("--gradient_accumulate_steps", v, 1, 1 << 16);
        else if ((v = cli_value(argc, argv, &i, "--micro_batch"))) o->micro_batch = (int)cli_long("--micro_batch", v, 1, 1 << 16);
        else if ((v = cli_value(argc, argv, &i, "--bench_chain_samples")))
            o->bench_chain_samples = (int)cli_long("--bench_chain_samples", v, 1, 1 << 20);
        else if ((v = cli_value(argc, argv, &i, "--dp_chunk"))) o->dp_chunk = (int)cli_long("--dp_chunk", v, 1, 1 << 16);
        else if (flag(s, "--expert_parallel")) o->expert_parallel = 1;
        else if ((v = cli_value(argc, argv, &i, "--lr"))) o->lr = cli_double("--lr", v, 1e-12, 10);
        else if ((v = cli_value(argc, argv, &i, "--minmax_lr"))) o->minmax_lr = cli_double("--minmax_lr", v, 1e-12, 10);
        else if ((v = cli_value(argc, argv, &i, "--seed"))) o->seed = cli_long("--seed", v, 0, LONG_MAX);
        else if ((v = cli_value(argc, argv, &i, "--threads"))) o->threads = cli_long("--threads", v, 1, 4096);
        else if (flag(s, "--disable_minmax_tuning")) o->disable_minmax = 1;
        else if (flag(s, "--amp")) o->amp = 1;
        else if (flag(s, "--disable_amp")) o->amp = 0;
        else if (flag(s, "--not_use_best_mse")) o->not_use_best = 1;
        else if (flag(s, "--disable_quanted_input")) o->disable_quanted_input = 1;
        else if (flag(s, "--disable_opt_rtn")) o->disable_opt_rtn = 1;
        else if (flag(s, "--enable_alg_ext")) o->enable_alg_ext = 1;
        else if (flag(s, "--enable_lfq")) o->enable_lfq = 1;
        else if ((v = cli_value(argc, argv, &i, "--lfq_target"))) {
            if (strcmp(v, "labels") && strcmp(v, "fp")) cli_usage_error("--lfq_target: '%s' is not labels or fp", v);
            o->lfq_kl = !strcmp(v, "fp");
        }
        else if ((v = cli_value(argc, argv, &i, "--static_kv_dtype"))) {
            if (strcmp(v, "fp8") && strcmp(v, "float8_e4m3fn"))
                cli_usage_error("--static_kv_dtype: '%s' is not fp8 (float8_e4m3fn)", v);
            o->static_kv_fp8 = 1;
        }
        else if ((v = cli_value(argc, argv, &i, "--device"))) a.device = v;
        else if (flag(s, "--low_gpu_mem_usage")) o->low_gpu_mem = 1;
        else if ((v = cli_value(argc, argv, &i, "--gpu_chain_budget")))
            o->gpu_chain_budget_mib = cli_double("--gpu_chain_budget", v, -1, 1e9);
        else if ((v = cli_value(argc, argv, &i, "--checkpoint"))) o->checkpoint = v;
        else if ((v = cli_value(argc, argv, &i, "--blocks"))) parse_blocks(v, o);
        else if ((v = cli_value(argc, argv, &i, "--mem_budget"))) o->mem_budget_mib = cli_double("--mem_budget", v, 0.001, 1e12);
        else if (flag(s, "--low_cpu_mem_usage")) {
            o->mem_budget_mib = 1e-9;   /* any chain exceeds it */
            low_cpu = 1;
        }
        else cli_usage_error("unknown argument '%s'", s);
    }
    if (low_cpu && o->micro_batch == 0) o->micro_batch = 1 << 16;   /* ≥ any batch: no chunks, the same output */
    return a;
}

/* Recipes (spec §3) fill only what the user left unset; the rest gets
 * ar_tune_defaults' values. */
static void apply_recipe(tune_args *a)
{
    const char *r = a->recipe ? a->recipe : "default";
    ar_tune_opts def;
    ar_tune_defaults(&def);
    int iters = def.iters;
    if (!strcmp(r, "best")) { iters = 1000; if (a->nsamples < 0) a->nsamples = 512; }
    else if (!strcmp(r, "light")) { iters = 50; if (a->o.lr == 0) a->o.lr = 5e-3; }
    else if (strcmp(r, "default")) cli_usage_error("--recipe: '%s' is not default, best or light", r);
    /* GGUF mixes: llama.cpp's imatrix quantization unless --iters (or a recipe,
     * or --enable_alg_ext) asks for SignRound, as AutoRound recommends iters=0
     * for GGUF without alg_ext */
    int gguf = a->scheme && !strncasecmp(a->scheme, "gguf:", 5);
    if (a->o.iters < 0) a->o.iters = !a->recipe && !a->o.enable_alg_ext && gguf ? 0 : iters;
    if (a->o.batch_size < 0) a->o.batch_size = def.batch_size;
    if (a->o.grad_accum < 0) a->o.grad_accum = def.grad_accum;
}

/* --scheme and its overrides; a GGUF scheme names one of llama.cpp's mixes. */
static void setup_scheme(tune_args *a)
{
    ar_scheme *s = &a->o.scheme;
    if (ar_scheme_preset(s, a->scheme)) cli_usage_error("%s", ar_last_error());
    if (ar_scheme_override(s, a->bits, a->group_size, a->sym)) cli_usage_error("%s", ar_last_error());
    if (s->kind != AR_SCHEME_GGUF) return;
    int f = ar_gguf_ftype_parse(s->name + 5);
    if (f < 0) cli_usage_error("--scheme %s: no llama.cpp mix of that name", s->name);
    a->mix = (ar_gguf_ftype)f;
}

/* --enable_alg_ext needs a scheme it is defined for. */
static void check_alg_ext(const tune_args *a)
{
    if (!a->o.enable_alg_ext) return;
    const ar_scheme *s = &a->o.scheme;
    int k = s->kind;
    if (k != AR_SCHEME_INT && k != AR_SCHEME_GGUF && k != AR_SCHEME_MXFP && k != AR_SCHEME_NVFP)
        cli_usage_error("--enable_alg_ext: supported for integer (W2A16, W4A16, ...), MXFP, NVFP4 and GGUF schemes, "
                        "not %s",
                        s->name);
    if (k == AR_SCHEME_INT && !s->sym && cli_progress)
        fprintf(stderr, "ar-tune: --enable_alg_ext changes nothing for asymmetric int schemes (AutoRound's V1 path)\n");
}

/* --enable_lfq changes SignRound's loss; --lfq_target only qualifies it. */
static void check_lfq(const ar_tune_opts *o)
{
    if (o->lfq_kl && !o->enable_lfq) cli_usage_error("--lfq_target is --enable_lfq's: give both");
    if (o->enable_lfq && o->iters == 0) cli_usage_error("--enable_lfq changes the SignRound loss: it needs --iters > 0");
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

/* GGUF schemes: llama.cpp's type for each tensor in the mix. */
static ar_ggml_type gguf_type(void *ctx, const ar_config *c, const char *hf_name, int64_t cols, int imatrix)
{
    return ar_gguf_hf_tensor_type(*(const ar_gguf_ftype *)ctx, c, hf_name, cols, imatrix);
}

/* ---- progress on stderr ----------------------------------------------------- */

typedef struct {
    double t0;
    const char *checkpoint;
    ar_reducer *ranks;          /* NULL: one process */
} progress_ctx;

/* With ranks: every rank's forward+backward seconds of the block, on rank
 * 0's line (a collective: every rank reports every block). Up to
 * RANK_TIMES_LISTED ranks each is listed; beyond, the line would not fit, so
 * it gives the slowest and fastest rank and the mean. The gather buffer holds
 * as many ranks as the exchanges accept (reduce.h): no allocation that one
 * rank could fail while the others wait in the collective. */
enum { RANK_TIMES_LISTED = 32 };
static void rank_times(const progress_ctx *p, const ar_signround_report *rep, char *s, size_t n)
{
    static double all[AR_REDUCE_MAX_RANKS];
    ar_reducer *rd = p->ranks;
    double v = rep ? rep->sec_forward + rep->sec_backward : 0;
    if (!rd || rd->size > AR_REDUCE_MAX_RANKS || mpi_ranks_gather(rd, v, all) || rd->rank) return;
    if (rd->size > RANK_TIMES_LISTED) {
        int lo = 0, hi = 0;
        double sum = 0;
        for (int r = 0; r < rd->size; r++) {
            sum += all[r];
            if (all[r] < all[lo]) lo = r;
            if (all[r] > all[hi]) hi = r;
        }
        snprintf(s, n, "  ranks fwd+bwd max %.1fs (rank %d) min %.1fs (rank %d) mean %.1fs of %d", all[hi], hi,
                 all[lo], lo, sum / rd->size, rd->size);
        return;
    }
    int len = snprintf(s, n, "  ranks fwd+bwd");
    for (int r = 0; r < rd->size && len < (int)n; r++) len += snprintf(s + len, n - len, " %.1fs", all[r]);
}

static void on_iter(void *ctx, int block, int nblocks, int it, int iters, double loss, double best)
{
    (void)ctx;
    if (cli_progress >= 2 && (it % 50 == 0 || it == iters - 1))
        fprintf(stderr, "ar-tune: block %d/%d iter %d/%d loss %.6g best %.6g\n", block + 1, nblocks, it, iters, loss,
                best);
}

static void on_block(void *ctx, int block, int nblocks, const ar_signround_report *rep)
{
    const progress_ctx *p = ctx;
    char extra[600], ranks[400] = "";
    rank_times(p, rep, ranks, sizeof ranks);
    if (rep)
        snprintf(extra, sizeof extra, "loss %.4g -> %.4g (iter %d)  fwd %.1fs bwd %.1fs quant %.1fs%s", rep->loss0,
                 rep->best_loss, rep->best_iter, rep->sec_forward, rep->sec_backward, rep->sec_quant, ranks);
    cli_progress_line("block", block + 1, nblocks, p->t0, rep ? extra : NULL);
}

static void on_event(void *ctx, ar_tune_event ev, int a, int b, const char *text)
{
    const progress_ctx *p = ctx;
    if (ev == AR_TUNE_EV_DEVICE && cli_progress >= 2) fprintf(stderr, "ar-tune: running on %s\n", text);
    if (ev == AR_TUNE_EV_UNROUTED_EXPERTS)   /* a fact about the output: said even when quiet */
        fprintf(stderr, "ar-tune: model.layers.%d: %d expert%s without calibration tokens keep%s RTN: %s\n", a, b,
                b == 1 ? "" : "s", b == 1 ? "s" : "", text);
    if (!cli_progress) return;
    if (ev == AR_TUNE_EV_LAYER_CONFIG) fprintf(stderr, "ar-tune: using the stream's layer config (%d layers)\n", a);
    if (ev == AR_TUNE_EV_SPILL)
        fprintf(stderr, "ar-tune: calibration chains (%d x %d MiB) over --mem_budget: in files under %s\n", b, a, text);
    if (ev == AR_TUNE_EV_GPU_TRANSFERS) fprintf(stderr, "ar-tune: gpu transfers: %s\n", text);
    if (ev == AR_TUNE_EV_LFQ_ON_CPU) fprintf(stderr, "ar-tune: block %d/%d tunes on the CPU (--enable_lfq)\n", a + 1, b);
    if (ev == AR_TUNE_EV_RESUME)
        fprintf(stderr, a < b ? "ar-tune: resuming at block %d/%d from %s\n"
                              : "ar-tune: all %d/%d blocks finished in %s: writing the output\n",
                a + 1 > b ? b : a + 1, b, p->checkpoint);
}

/* mpirun -np N: rank 0 speaks and writes the output; the others are quiet
 * (their errors name their rank) and write nowhere. */
static ar_reducer *start_ranks(int *argc, char ***argv)
{
    ar_reducer *rd = mpi_ranks_start(argc, argv);
    if (rd && rd->rank > 0) {
        static char name[64];
        snprintf(name, sizeof name, "ar-tune (rank %d of %d)", rd->rank, rd->size);
        cli_tool = name;
    }
    return rd;
}

int main(int argc, char **argv)
{
    cli_init("ar-tune");
    ar_reducer *ranks = start_ranks(&argc, &argv);
    tune_args a = parse_args(argc, argv);
    a.o.reduce = ranks;
    /* ranks split chunks: one chunk a step would leave all but rank 0 idle;
     * 1 sample a chunk is a choice that does not depend on the rank count */
    if (a.o.expert_parallel && a.o.dp_chunk)
        cli_usage_error("--expert_parallel: the ranks split experts, not chunks; give no --dp_chunk");
    if (ranks && ranks->size > 1 && a.o.dp_chunk == 0 && !a.o.expert_parallel) a.o.dp_chunk = 1;
    if (ranks && ranks->rank > 0) cli_progress = 0;   /* after --progress / --verbose: rank 0 speaks */
    if (ranks && !a.in && !a.model)   /* mpirun hands standard input to rank 0 alone */
        cli_usage_error("with mpirun give the calibration stream as -i FILE, not on standard input");
    apply_recipe(&a);
    setup_scheme(&a);
    check_alg_ext(&a);
    check_lfq(&a.o);
    if (a.o.static_kv_fp8 && a.o.scheme.kind == AR_SCHEME_GGUF)
        cli_usage_error("--static_kv_dtype: not with GGUF schemes (GGUF has no KV-cache scales)");
    ar_calib_data d = {0}, *data = NULL;
    /* A stream comes from -i, or from standard input when no --model is given;
     * --model alone means zero-shot RTN. */
    if (!a.in && !a.model && isatty(0))
        cli_usage_error("give a calibration stream (-i FILE or a pipe) or --model DIR for plain RTN");
    if (a.in || !a.model) {
        if (ar_calib_stream_load(a.in, &d)) cli_die_lib();
        limit_samples(&d, a.nsamples, a.seqlen);
        data = &d;
        if (!a.model) a.model = d.model;
        if (!a.model) cli_die("the calibration stream names no model; give --model DIR");
        if (d.config_digest && ar_config_digest_check(a.model, d.config_digest)) cli_die_lib();
        if (d.layer_config && a.o.layer_config && cli_progress)
            fprintf(stderr, "ar-tune: --layer_config overrides the stream's layer config\n");
    } else if (a.o.static_kv_fp8) {
        cli_usage_error("--static_kv_dtype needs a calibration stream (-i FILE or a pipe)");
    } else if (a.o.iters > 0) {
        if (a.o.enable_lfq) cli_usage_error("--enable_lfq needs a calibration stream (-i FILE or a pipe)");
        a.o.iters = 0; /* no data: plain RTN, as AutoRound's zero-shot path */
        if (cli_progress) fprintf(stderr, "ar-tune: no calibration stream: plain RTN\n");
    }
    if (ar_device_parse(a.device, &a.o.device)) cli_usage_error("--device: %s", ar_last_error());
    a.o.device_auto = !a.device || !strcmp(a.device, "auto");
    if (a.o.scheme.kind == AR_SCHEME_GGUF) a.o.gguf_type = gguf_type, a.o.gguf_ctx = &a.mix;
    progress_ctx pc = {cli_now(), a.o.checkpoint, ranks};
    ar_tune_progress progress = {&pc, on_iter, on_block, on_event};
    a.o.progress = &progress;
    int quiet_rank = ranks && ranks->rank > 0;
    FILE *f = quiet_rank ? fopen("/dev/null", "wb") : cli_out_open(a.out, 1);
    if (!f) cli_die("/dev/null: cannot open");
    ar_stream_writer *w = ar_stream_writer_open(f, quiet_rank ? "/dev/null" : a.out ? a.out : "<stdout>", 3);
    if (!w) cli_die_lib();
    int rc = ar_tune_run(&a.o, a.model, data, w);
    if (rc == AR_TUNE_CHECKPOINT_OTHER) cli_die("%s; use a new --checkpoint directory", ar_last_error());
    if (rc || ar_stream_writer_close(w)) cli_die_lib();
    if (quiet_rank) fclose(f);
    else cli_out_commit(f);
    if (ranks && ranks->rank == 0 && cli_progress && ranks->iters)
        fprintf(stderr, "ar-tune: %d ranks: %s exchange %.3f MiB received and %.2f ms per iteration (rank 0, "
                        "%ld iterations)\n", ranks->size, a.o.expert_parallel ? "expert" : "gradient",
                ranks->bytes / ranks->iters / 1048576.0,
                1e3 * ranks->seconds / ranks->iters, ranks->iters);
    if (cli_progress) fprintf(stderr, "ar-tune: done in %.1fs\n", cli_now() - pc.t0);
    ar_calib_data_free(&d);
    mpi_ranks_finish(ranks);
    return 0;
}
