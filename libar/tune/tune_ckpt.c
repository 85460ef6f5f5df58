/* tune_ckpt.c — checkpoints of a tuning run (checkpoint.h): after each block
 * its records go to DIR/block-NNNN.ars, the chains (x_fp and x_q, what the
 * next block reads) and the manifest follow. A rerun with the same settings
 * replays the finished blocks' records into the output (the same writer
 * calls, so the same bytes) and continues with the saved chains. */
#include "hash.h"
#include "calib.h"
#include "device.h"
#include "error.h"
#include "runtime.h"
#include "tune_impl.h"
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a of the calibration data this run uses (first n samples), "none" without. */
static void calib_digest(const ar_calib_data *d, char hex[17])
{
    if (!d) { snprintf(hex, 17, "none"); return; }
    size_t ntok = (size_t)d->n * d->T;
    uint64_t h = ar_fnv1a64_update(AR_FNV1A64_INIT, d->ids, ntok * sizeof(int32_t));
    h = ar_fnv1a64_update(h, d->hidden, ntok * d->C * sizeof(uint16_t));
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
}

/* Of the layer config file, else of the stream's layer config text, else "none". */
static int layer_config_digest(const tn_run *r, char hex[17])
{
    const char *path = r->o->layer_config, *stream_lc = r->d ? r->d->layer_config : NULL;
    if (!path && stream_lc) {
        snprintf(hex, 17, "%016llx", (unsigned long long)ar_fnv1a64(stream_lc, strlen(stream_lc)));
        return 0;
    }
    if (!path) { snprintf(hex, 17, "none"); return 0; }
    size_t n;
    char *txt = ar_read_text_file(path, &n);
    if (!txt) return -1;
    snprintf(hex, 17, "%016llx", (unsigned long long)ar_fnv1a64(txt, n));
    free(txt);
    return 0;
}

/* Everything that changes the output bytes, as the JSON object the manifest
 * keeps (NULL with ar_error). */
static char *settings_json(const tn_run *r, const char *meta)
{
    const ar_tune_opts *a = r->o;
    const ar_scheme *def = &a->scheme;
    char model_dg[17], calib_dg[17], lc_dg[17], meta_dg[17];
    if (ar_ckpt_model_digest(r->model_abs, model_dg) || layer_config_digest(r, lc_dg)) return NULL;
    calib_digest(r->d, calib_dg);
    snprintf(meta_dg, sizeof meta_dg, "%016llx", (unsigned long long)ar_fnv1a64(meta, strlen(meta)));
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "tool", "ar-tune");
    cJSON_AddStringToObject(s, "model", r->model_abs);
    cJSON_AddNumberToObject(s, "nsamples", r->d ? r->d->n : 0);
    cJSON_AddNumberToObject(s, "seqlen", r->d ? r->d->T : 0);
    cJSON_AddStringToObject(s, "scheme", def->name);
    cJSON_AddNumberToObject(s, "bits", def->bits);
    cJSON_AddNumberToObject(s, "group_size", def->group_size);
    cJSON_AddBoolToObject(s, "sym", def->sym);
    cJSON_AddNumberToObject(s, "iters", a->iters);
    cJSON_AddNumberToObject(s, "lr", a->lr);
    cJSON_AddNumberToObject(s, "minmax_lr", a->minmax_lr);
    cJSON_AddNumberToObject(s, "batch_size", a->batch_size);
    cJSON_AddNumberToObject(s, "gradient_accumulate_steps", a->grad_accum);
    if (a->dp_chunk > 0) cJSON_AddNumberToObject(s, "dp_chunk", a->dp_chunk);
    cJSON_AddNumberToObject(s, "seed", (double)a->seed);
    cJSON_AddBoolToObject(s, "disable_minmax_tuning", a->disable_minmax);
    cJSON_AddBoolToObject(s, "not_use_best_mse", a->not_use_best);
    cJSON_AddBoolToObject(s, "disable_quanted_input", a->disable_quanted_input);
    cJSON_AddBoolToObject(s, "disable_opt_rtn", a->disable_opt_rtn);
    cJSON_AddNumberToObject(s, "threads", ar_thread_count());   /* f32 sums depend on it */
    cJSON_AddStringToObject(s, "device", ar_device_describe(r->dev));
    cJSON_AddStringToObject(s, "model_digest", model_dg);
    cJSON_AddStringToObject(s, "calibration_digest", calib_dg);
    cJSON_AddStringToObject(s, "layer_config_digest", lc_dg);
    cJSON_AddStringToObject(s, "meta_digest", meta_dg);             /* all else the output records */
    char *txt = cJSON_PrintUnformatted(s);
    cJSON_Delete(s);
    if (!txt) ar_error("%s: out of memory", r->o->checkpoint);
    return txt;
}

int tn_ckpt_open(tn_run *r, const char *meta)
{
    char *settings = settings_json(r, meta);
    if (!settings) return AR_TUNE_FAILED;
    int mismatch;
    r->ck = ar_ckpt_open(r->o->checkpoint, settings, r->c->n_layers, &mismatch);
    free(settings);
    if (!r->ck) return mismatch ? AR_TUNE_CHECKPOINT_OTHER : AR_TUNE_FAILED;
    return 0;
}

/* The chain arrays the checkpoint keeps: x_fp always (with data), x_q once it exists. */
static int chain_arrays(const tn_run *r, ar_ckpt_array arr[2])
{
    if (!r->d) return 0;
    size_t nb = sizeof(uint16_t) * (size_t)r->d->n * r->d->T * r->d->C;
    arr[0] = (ar_ckpt_array){"x_fp", r->x_fp, nb, 0};
    arr[1] = (ar_ckpt_array){"x_q", r->x_q, nb, 0};
    return 2;
}

int tn_ckpt_resume(tn_run *r, ar_stream_writer *out, int *first)
{
    int nl = r->c->n_layers;
    *first = ar_ckpt_next_block(r->ck);
    if (*first > 0) tn_event(r, AR_TUNE_EV_RESUME, *first, nl, NULL);
    for (int b = 0; b < *first; b++)
        if (ar_ckpt_replay_block(r->ck, b, out)) return -1;
    if (*first == 0 || *first == nl) return 0;
    ar_ckpt_array arr[2];
    int n = chain_arrays(r, arr);
    if (ar_ckpt_load_chain(r->ck, arr, n)) return -1;
    if (n && arr[1].present && r->spill) {   /* the saved quantized chain goes to its spill file */
        if (!(r->x_q = tn_chain_alloc(r))) { free(arr[1].data); return -1; }
        memcpy(r->x_q, arr[1].data, arr[1].nbytes);
        free(arr[1].data);
    } else if (n && arr[1].present) r->x_q = arr[1].data;
    ar_res_host_wrote(r->gpu, r->x_fp);
    ar_res_host_wrote(r->gpu, r->x_q);
    return 0;
}

ar_stream_writer *tn_ckpt_block_begin(tn_run *r, int layer) { return ar_ckpt_block_begin(r->ck, layer); }

int tn_ckpt_block_end(tn_run *r, int layer, ar_stream_writer *w, ar_stream_writer *out)
{
    if (ar_ckpt_block_end(r->ck, w)) return -1;
    /* the chains as the GPU left them */
    if (ar_res_host(r->gpu, r->x_fp) || ar_res_host(r->gpu, r->x_q)) return -1;
    ar_ckpt_array arr[2];
    int n = chain_arrays(r, arr);
    return ar_ckpt_commit(r->ck, layer, arr, n) || ar_ckpt_replay_block(r->ck, layer, out) ? -1 : 0;
}
