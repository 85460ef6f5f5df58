/* llm_compressor.c — compressed-tensors checkpoints as vLLM loads them
 * (spec §6.4): int weights "pack-quantized" (weight_packed int32 along K,
 * weight_scale, weight_shape, weight_zero_point for asym), MXFP4
 * "mxfp4-pack-quantized", MXFP8 "mxfp8-quantized", NVFP4
 * "nvfp4-pack-quantized", FP8 "float-quantized"; quantization_config with
 * config_groups (one per distinct scheme; concrete module names as targets
 * when the model is mixed) and ignore. The floating-point tensor writer is
 * shared with auto_round's "auto_round:llm_compressor" packing. */
#include "export_impl.h"
#include "error.h"
#include "quant_fp.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int put(ar_export *e, const char *layer, const char *suffix, ar_dtype dt, int ndim, int64_t d0, int64_t d1,
               const void *data) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", layer, suffix);
    int64_t shape[2] = {d0, d1};
    return ar_stw_put(e->w, name, dt, ndim, shape, data);
}

/* FP8 scales in the layout compressed-tensors names by strategy: [1] per
 * tensor, [N, 1] per channel, [ceil(N/G), ceil(K/G)] per block, else [N, ng]. */
static int put_fp8_scale(ar_export *e, const ar_qlayer *l, int block_inv) {
    int ng = ar_qlayer_ngroups(l);
    if (l->group_size == 0) return put(e, l->name, "weight_scale", AR_F32, 1, 1, 0, l->scale);
    if (!l->group_2d) return put(e, l->name, "weight_scale", AR_F32, 2, l->n, ng, l->scale);
    int G = l->group_size, tr = (l->n + G - 1) / G;
    float *t = malloc(sizeof(float) * (size_t)tr * ng);
    if (!t) return ar_error("%s: out of memory", l->name);
    for (int r = 0; r < tr; r++)
        for (int c = 0; c < ng; c++) t[(size_t)r * ng + c] = l->scale[(size_t)r * G * ng + c];
    int rc = put(e, l->name, block_inv ? "weight_scale_inv" : "weight_scale", AR_F32, 2, tr, ng, t);
    free(t);
    return rc;
}

/* Static activation scales from the calibration max |x| of the input. */
static int put_act_scales(ar_export *e, const ar_qlayer *l, int dt) {
    if (l->act_bits <= 0 || l->act_bits >= 16 || !(l->act_max > 0)) return 0;
    if (dt == AR_QDT_NVFP4) {
        float igs = 448.0f * 6.0f / l->act_max;
        return put(e, l->name, "input_global_scale", AR_F32, 1, 1, 0, &igs);
    }
    if (dt == AR_QDT_FP8 && !l->act_dynamic) {
        float s = l->act_max / 448.0f;
        return put(e, l->name, "input_scale", AR_F32, 1, 1, 0, &s);
    }
    return 0;
}

int ar_export_write_fp(ar_export *e, const ar_qlayer *l, int block_inv) {
    if (ar_qlayer_check(l, AR_LAYOUT_NONE)) return -1;
    int dt = ar_qlayer_dtype(l), ng = ar_qlayer_ngroups(l);
    size_t nel = (size_t)l->n * l->k, nsc = (size_t)l->n * ng;
    uint8_t *buf = malloc(nel > nsc ? nel : nsc);
    if (!buf) return ar_error("%s: out of memory", l->name);
    int rc;
    if (l->bits == 4) {
        ar_pack_fp4(l->codes, l->n, l->k, buf);
        rc = put(e, l->name, "weight_packed", AR_U8, 2, l->n, l->k / 2, buf);
    } else {
        rc = put(e, l->name, "weight", AR_F8_E4M3, 2, l->n, l->k, l->codes);
    }
    if (!rc && (dt == AR_QDT_MXFP4 || dt == AR_QDT_MXFP8)) {
        for (size_t i = 0; i < nsc; i++) buf[i] = ar_e8m0_encode(l->scale[i]);
        rc = put(e, l->name, "weight_scale", AR_U8, 2, l->n, ng, buf);
    } else if (!rc && dt == AR_QDT_NVFP4) {
        for (size_t i = 0; i < nsc; i++) buf[i] = ar_e4m3_encode(l->scale[i]);
        rc = put(e, l->name, "weight_scale", AR_F8_E4M3, 2, l->n, ng, buf) ||
             put(e, l->name, "weight_global_scale", AR_F32, 1, 1, 0, &l->global_scale);
    } else if (!rc) {
        rc = put_fp8_scale(e, l, block_inv);
    }
    if (!rc) rc = put_act_scales(e, l, dt);
    free(buf);
    return rc ? -1 : 0;
}

/* Integer layer as "pack-quantized": codes (already offset by 2^(b-1) for
 * sym, and the same bits as CT's signed values + 2^(b-1) for asym) packed
 * along K, 32/b per int32 word, element j at bits [j·b, (j+1)·b). */
static int write_int(ar_export *e, const ar_qlayer *l) {
    if (ar_qlayer_check(l, AR_LAYOUT_NONE)) return -1;
    int b = l->bits;
    if (b != 2 && b != 4 && b != 8) return ar_error("%s: compressed-tensors packs 2, 4 or 8 bits, not %d", l->name, b);
    if (l->k % 32) return ar_error("%s: K=%d is not a multiple of 32 (pack-quantized)", l->name, l->k);
    int ng = ar_qlayer_ngroups(l), cols = l->k * b / 32;
    int32_t *pk = malloc(sizeof(int32_t) * (size_t)l->n * cols);
    uint16_t *sc = malloc(sizeof(uint16_t) * (size_t)l->n * ng);
    int8_t *zp = l->sym ? NULL : malloc((size_t)l->n * ng);
    int rc = !pk || !sc || (!l->sym && !zp) ? ar_error("%s: out of memory", l->name) : 0;
    uint32_t v[32], w[8];
    for (int n = 0; !rc && n < l->n; n++)
        for (int t = 0; t < l->k / 32; t++) {
            for (int i = 0; i < 32; i++) v[i] = l->codes[(size_t)n * l->k + 32 * t + i];
            ar_pack32(v, b, w);
            for (int j = 0; j < b; j++) pk[(size_t)n * cols + t * b + j] = (int32_t)w[j];
        }
    for (size_t i = 0; !rc && i < (size_t)l->n * ng; i++) {
        sc[i] = ar_f32_to_f16(l->scale[i]);
        if (zp) zp[i] = (int8_t)(l->zp[i] - (1 << (b - 1)));     /* signed convention */
    }
    int64_t shape[2] = {l->n, l->k};
    if (!rc) rc = put(e, l->name, "weight_packed", AR_I32, 2, l->n, cols, pk) ||
                  put(e, l->name, "weight_scale", AR_F16, 2, l->n, ng, sc) ||
                  put(e, l->name, "weight_shape", AR_I64, 1, 2, 0, shape) ||
                  (zp && put(e, l->name, "weight_zero_point", AR_I8, 2, l->n, ng, zp));
    free(pk); free(sc); free(zp);
    return rc ? -1 : 0;
}

static int write_layer(ar_export *e, const ar_qlayer *l) {
    return ar_qlayer_dtype(l) == AR_QDT_INT ? write_int(e, l) : ar_export_write_fp(e, l, 0);
}

/* ---- quantization_config ---------------------------------------------------- */

static const char *ct_format(int dtype) {
    switch (dtype) {
    case AR_QDT_MXFP4: return "mxfp4-pack-quantized";
    case AR_QDT_MXFP8: return "mxfp8-quantized";
    case AR_QDT_NVFP4: return "nvfp4-pack-quantized";
    case AR_QDT_FP8: return "float-quantized";
    default: return "pack-quantized";
    }
}

static cJSON *weights_args(const ar_export_rec *r) {
    cJSON *w = cJSON_CreateObject();
    int fp = r->dtype != AR_QDT_INT;
    cJSON_AddNumberToObject(w, "num_bits", r->bits);
    cJSON_AddStringToObject(w, "type", fp ? "float" : "int");
    cJSON_AddBoolToObject(w, "symmetric", r->sym);
    /* compressed-tensors' QuantizationArgs order: num_bits, type, symmetric,
     * group_size, strategy, block_structure, dynamic. */
    const char *strategy = r->dtype == AR_QDT_NVFP4 ? "tensor_group"
                           : r->group_2d            ? "block"
                           : r->group_size > 0      ? "group"
                           : r->group_size == -1    ? "channel"
                                                    : "tensor";
    if (r->group_size > 0 && !r->group_2d) cJSON_AddNumberToObject(w, "group_size", r->group_size);
    cJSON_AddStringToObject(w, "strategy", strategy);
    if (r->group_2d) {
        cJSON *bs = cJSON_AddArrayToObject(w, "block_structure");
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(r->group_size));
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(r->group_size));
    }
    cJSON_AddBoolToObject(w, "dynamic", 0);
    return w;
}

static cJSON *input_args(const ar_export_rec *r) {
    if (r->act_bits >= 16) return cJSON_CreateNull();
    cJSON *a = cJSON_CreateObject();
    int nv = r->dtype == AR_QDT_NVFP4;
    cJSON_AddNumberToObject(a, "num_bits", r->act_bits);
    cJSON_AddStringToObject(a, "type", strcmp(r->act_data_type, "int") ? "float" : "int");
    cJSON_AddBoolToObject(a, "symmetric", r->act_sym);
    const char *strategy = nv ? "tensor_group" : r->act_group_size > 0 ? "group" : r->act_group_size == -1 ? "token" : "tensor";
    if (r->act_group_size > 0) cJSON_AddNumberToObject(a, "group_size", r->act_group_size);
    cJSON_AddStringToObject(a, "strategy", strategy);
    if (nv) cJSON_AddStringToObject(a, "dynamic", "local");
    else cJSON_AddBoolToObject(a, "dynamic", r->act_dynamic);
    return a;
}

/* One config group per distinct (weights, input_activations, format). */
typedef struct {
    cJSON *groups;            /* config_groups */
    char **keys;
    int n;
} group_set;

static cJSON *group_for(group_set *gs, const ar_export_rec *r) {
    cJSON *g = cJSON_CreateObject();
    cJSON_AddItemToObject(g, "targets", cJSON_CreateArray());
    cJSON_AddItemToObject(g, "weights", weights_args(r));
    cJSON_AddItemToObject(g, "input_activations", input_args(r));
    cJSON_AddNullToObject(g, "output_activations");
    cJSON_AddStringToObject(g, "format", ct_format(r->dtype));
    char *key = cJSON_PrintUnformatted(g);
    for (int i = 0; i < gs->n; i++)
        if (!strcmp(gs->keys[i], key)) {
            free(key);
            cJSON_Delete(g);
            char name[32];
            snprintf(name, sizeof name, "group_%d", i);
            return cJSON_GetObjectItem(gs->groups, name);
        }
    char **k = realloc(gs->keys, sizeof *k * (gs->n + 1));
    if (!k) { free(key); cJSON_Delete(g); return NULL; }
    gs->keys = k;
    gs->keys[gs->n] = key;
    char name[32];
    snprintf(name, sizeof name, "group_%d", gs->n++);
    cJSON_AddItemToObject(gs->groups, name, g);
    return g;
}

/* The static FP8 KV cache's QuantizationArgs as compressed-tensors serializes
 * them (AutoRound 0.16.1's _construct_kv_scheme: num_bits 8, float, tensor,
 * symmetric, not dynamic); the scales are the attention's k_scale / v_scale. */
static cJSON *kv_cache_scheme(void) {
    cJSON *k = cJSON_CreateObject();
    cJSON_AddNumberToObject(k, "num_bits", 8);
    cJSON_AddStringToObject(k, "type", "float");
    cJSON_AddBoolToObject(k, "symmetric", 1);
    cJSON_AddNullToObject(k, "group_size");
    cJSON_AddStringToObject(k, "strategy", "tensor");
    cJSON_AddBoolToObject(k, "dynamic", 0);
    return k;
}

static void add_ignored(void *arg, const char *layer) { cJSON_AddNullToObject(arg, layer); }

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(cJSON *const *)a)->valuestring, (*(cJSON *const *)b)->valuestring);
}

/* A group's targets sorted by name, as AutoRound rewrites them for several groups. */
static void sort_targets(cJSON *targets) {
    int n = cJSON_GetArraySize(targets);
    cJSON **v = n > 1 ? malloc((size_t)n * sizeof *v) : NULL;
    if (!v) return;
    int i = 0;
    while (targets->child) v[i++] = cJSON_DetachItemViaPointer(targets, targets->child);
    qsort(v, (size_t)n, sizeof *v, cmp_name);
    for (i = 0; i < n; i++) cJSON_AddItemToArray(targets, v[i]);
    free(v);
}

/* quantization_config as AutoRound 0.16.1 writes it (compressed-tensors'
 * QuantizationConfig.to_dict): one group targets "Linear" and ignore lists
 * every Linear left unquantized, lm_head included (tied or not), in model
 * order; several groups target their layers' names, sorted. */
static cJSON *quant_config(ar_export *e) {
    cJSON *q = cJSON_CreateObject();
    group_set gs = {cJSON_CreateObject(), NULL, 0};
    int ok = q && gs.groups;
    for (size_t i = 0; ok && i < e->nrec; i++) {
        cJSON *g = group_for(&gs, &e->rec[i]);
        ok = g != NULL;
        if (ok) cJSON_AddItemToArray(cJSON_GetObjectItem(g, "targets"), cJSON_CreateString(e->rec[i].name));
    }
    cJSON *skipped = cJSON_CreateObject(), *ignore = cJSON_CreateArray();
    ok = ok && skipped && ignore;
    if (ok) {
        ar_export_unquantized_in_block(e, add_ignored, skipped);
        ar_export_unquantized_outside(e, add_ignored, skipped);
        /* A tied lm_head has no weight of its own but is a Linear module. */
        int lm_q = 0;
        for (size_t i = 0; i < e->nrec; i++) lm_q |= !strcmp(e->rec[i].name, "lm_head");
        char head[64] = "lm_head";   /* a VLM's head module in its checkpoint's layout */
        if (e->mm) snprintf(head, sizeof head, "%.*s", (int)(strlen(e->mm_names.head) - 7), e->mm_names.head);
        if (!lm_q && !cJSON_HasObjectItem(skipped, head)) cJSON_AddNullToObject(skipped, head);
        ar_export_model_order(skipped);
        for (cJSON *c = skipped->child; c; c = c->next) cJSON_AddItemToArray(ignore, cJSON_CreateString(c->string));
    }
    cJSON_Delete(skipped);
    for (int i = 0; ok && i < gs.n; i++) {
        char name[32];
        snprintf(name, sizeof name, "group_%d", i);
        cJSON *g = cJSON_GetObjectItem(gs.groups, name);
        if (gs.n > 1) { sort_targets(cJSON_GetObjectItem(g, "targets")); continue; }
        cJSON_ReplaceItemInObject(g, "targets", cJSON_CreateArray());
        cJSON_AddItemToArray(cJSON_GetObjectItem(g, "targets"), cJSON_CreateString("Linear"));
    }
    const char *fmt = "mixed-precision";
    for (int i = 0; ok && i < gs.n; i++) {
        char name[32];
        snprintf(name, sizeof name, "group_%d", i);
        const char *f = cJSON_GetObjectItem(cJSON_GetObjectItem(gs.groups, name), "format")->valuestring;
        fmt = i == 0 ? f : strcmp(fmt, f) ? "mixed-precision" : fmt;
    }
    for (int i = 0; i < gs.n; i++) free(gs.keys[i]);
    free(gs.keys);
    if (!ok) {
        cJSON_Delete(q); cJSON_Delete(gs.groups); cJSON_Delete(ignore);
        ar_error("%s: out of memory", e->out_dir);
        return NULL;
    }
    cJSON_AddItemToObject(q, "config_groups", gs.groups);
    cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
    if (e->nkv) cJSON_AddItemToObject(q, "kv_cache_scheme", kv_cache_scheme());
    else cJSON_AddNullToObject(q, "kv_cache_scheme");
    cJSON_AddStringToObject(q, "format", fmt);
    cJSON_AddStringToObject(q, "quantization_status", "compressed");
    cJSON_AddNullToObject(q, "global_compression_ratio");
    cJSON_AddItemToObject(q, "ignore", ignore);
    cJSON_AddNullToObject(q, "moe_sparsity_config");
    return q;
}

const ar_export_format ar_fmt_llm_compressor = {
    .name = "llm_compressor",
    .write_layer = write_layer,
    .quant_config = quant_config,
    .bias_f16 = 0,
    .config_dtype = NULL,
    .qconfig_file = "quantization_config.json",
    /* transformers + auto-round 0.16.1 converts only gptq, awq and auto-round
     * checkpoints ("Failed to convert to auto_round format", tested with
     * tests/clients/check_moe.py), transformers 5 keeps the experts of these
     * families as fused 3-D parameters that compressed-tensors' per-Linear
     * layers do not match, and compressed-tensors is not installed here to
     * show otherwise (docs/moe.md §10) */
    .moe_refusal = "no loader checked here reads its per-expert compressed-tensors layers; use auto_round, "
                   "auto_gptq or auto_awq",
};
