/* export.c — the driver shared by every export format: open the original
 * model and a temporary folder, stream packed layers, copy the rest, write
 * configs, commit (see export.h). */
#include "export_impl.h"
#include "array_grow.h"
#include "config.h"
#include "error.h"
#include "fused_experts.h"
#include "hf_folder.h"
#include "quant_fp.h"
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The block list prefix: the part of the first "<prefix>.<digits>." tensor
 * name before the index ("model.layers"). */
static void detect_block_prefix(ar_export *e) {
    for (size_t i = 0; i < ar_st_count(e->st); i++) {
        const char *n = ar_st_at(e->st, i)->name;
        for (const char *p = strchr(n, '.'); p; p = strchr(p + 1, '.')) {
            const char *d = p + 1;
            while (isdigit((unsigned char)*d)) d++;
            if (d > p + 1 && *d == '.' && (size_t)(p - n) < sizeof e->block_prefix) {
                memcpy(e->block_prefix, n, (size_t)(p - n));
                e->block_prefix[p - n] = 0;
                return;
            }
        }
    }
}

static int st_has(void *ctx, const char *name) { return ar_st_find(ctx, name) != NULL; }

/* A vision-language model (multimodal.h): the layers arrive with text-only
 * names and are written under the checkpoint's prefix; the blocks to
 * quantize are the text decoder's, as AutoRound's block_name_to_quantize
 * says ("model.language_model.layers"); everything else is copied. A config
 * ar cannot parse is left to the tools that tuned the layers (text-only
 * behaviour). */
static int open_multimodal(ar_export *e) {
    ar_config c;
    if (ar_config_load_flags(&c, e->model_dir, AR_CONFIG_ANY_ARCH) || !c.mm_arch[0]) return 0;
    if (ar_mm_resolve(c.mm_arch, st_has, e->st, &e->mm_names)) return ar_error_prefix(e->model_dir);
    e->mm = 1;
    snprintf(e->block_prefix, sizeof e->block_prefix, "%slayers", e->mm_names.prefix);
    return 0;
}

/* A format whose loaders cannot read mixture-of-experts checkpoints refuses
 * them, naming the family (the tuned stream alone does not say it is MoE). */
static int check_moe(const ar_export *e) {
    ar_config c;
    if (!e->fmt->moe_refusal || ar_config_load_flags(&c, e->model_dir, AR_CONFIG_ANY_ARCH) || c.moe.n_experts <= 0)
        return 0;
    return ar_error("%s: %s (mixture of experts) cannot be exported as %s: %s", e->model_dir, c.arch_name,
                    e->fmt->name, e->fmt->moe_refusal);
}

/* A checkpoint with fused 3-D experts (gpt-oss; transformers-5-native dumps
 * of the other MoE families, fused_experts.h) is tuned per expert under
 * mlp.experts.E.{gate,up,down}_proj, the names AutoRound's unfused export
 * writes and its loaders build (modeling/fused_moe/gpt_oss.py,
 * unfused_moe/ modules): the export reads those views through a second handle
 * and writes per-expert tensors in place of the fused ones. */
static int open_fused(ar_export *e) {
    if (!ar_fused_present(e->st)) return 0;
    ar_safetensors *st = ar_st_open_model(e->model_dir);
    if (!st || !(e->fx = ar_fused_source_new(st, ar_fused_layout_of(e->model_dir)))) return -1;
    return 0;
}

/* A fused expert tensor: PREFIX.mlp.experts.{gate_up_proj,down_proj}[_bias|_blocks|_scales]. */
static int fused_tensor(const char *name) {
    const char *m = strstr(name, ".mlp.experts.");
    if (!m) return 0;
    m += 13;
    return !strncmp(m, "gate_up_proj", 12) || !strncmp(m, "down_proj", 9);
}

static int check_opts(const ar_export_format *f, const ar_export_opts *o) {
    if (o->data_type && ar_quant_dtype_parse(o->data_type, o->bits) < 0)
        return ar_error("%s: data type '%s' with %d bits cannot be exported", o->format, o->data_type, o->bits);
    if (o->bits != 2 && o->bits != 3 && o->bits != 4 && o->bits != 8)
        return ar_error("%s: %d-bit weights cannot be exported (2, 3, 4 or 8)", o->format, o->bits);
    if ((o->group_size == 0 && !ar_export_opts_fp(o)) || o->group_size < -1)   /* 0: FP8 per tensor */
        return ar_error("%s: bad group_size %d", o->format, o->group_size);
    if (o->tuning_json) {
        cJSON *j = cJSON_Parse(o->tuning_json);
        int ok = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!ok) return ar_error("%s: tuning keys are not a JSON object", o->format);
    }
    return f->check_opts ? f->check_opts(o) : 0;
}

ar_export *ar_export_open_format(const ar_export_format *f, const char *model_dir, const char *out_dir,
                                 const ar_export_opts *opts) {
    if (check_opts(f, opts)) return NULL;
    ar_export *e = calloc(1, sizeof *e);
    if (!e) { ar_error("%s: out of memory", out_dir); return NULL; }
    e->fmt = f;
    e->opts = *opts;
    e->opts.tuning_json = opts->tuning_json ? strdup(opts->tuning_json) : NULL;
    e->opts.data_type = opts->data_type ? strdup(opts->data_type) : NULL;
    e->opts.act_data_type = opts->act_data_type ? strdup(opts->act_data_type) : NULL;
    e->model_dir = strdup(model_dir);
    e->out_dir = strdup(out_dir);
    if (!e->model_dir || !e->out_dir || !(e->st = ar_st_open_model(model_dir)) ||
        !(e->tmp_dir = hf_folder_begin(out_dir)) || !(e->w = ar_stw_open(e->tmp_dir, opts->max_shard_bytes))) {
        ar_export_abort(e);
        return NULL;
    }
    if (check_moe(e) || open_multimodal(e) || open_fused(e)) { ar_export_abort(e); return NULL; }
    if (!e->mm) detect_block_prefix(e);
    /* AutoRound writes asym 4-bit in the AWQ layout unless other widths occur. */
    e->awq_layout = f->awq_layout == AR_AWQ_ALWAYS ||
                    (f->awq_layout == AR_AWQ_ASYM4 && !opts->sym && opts->bits == 4 && !opts->mixed_bits);
    return e;
}

static ar_export_rec *find_rec(const ar_export *e, const char *name, size_t len) {
    for (size_t i = 0; i < e->nrec; i++)
        if (strlen(e->rec[i].name) == len && !strncmp(e->rec[i].name, name, len)) return &e->rec[i];
    return NULL;
}

static int in_block(const ar_export *e, const char *name) {
    size_t n = strlen(e->block_prefix);
    return n && !strncmp(name, e->block_prefix, n) && name[n] == '.';
}

static int add_rec(ar_export *e, const ar_qlayer *l) {
    ar_export_rec *recs = ar_array_reserve(e->rec, e->nrec, &e->caprec, sizeof *recs, 64);
    if (!recs) return ar_error("%s: out of memory", e->out_dir);
    e->rec = recs;
    ar_export_rec *r = &e->rec[e->nrec];
    if (!(r->name = strdup(l->name))) return ar_error("%s: out of memory", e->out_dir);
    r->bits = l->bits;
    r->group_size = l->group_size;
    r->sym = l->sym;
    r->in_block = in_block(e, l->name);
    r->own_bias = l->bias != NULL;
    r->dtype = ar_qlayer_dtype(l);
    r->group_2d = l->group_2d;
    r->act_bits = l->act_bits > 0 ? l->act_bits : 16;
    r->act_group_size = l->act_group_size;
    r->act_sym = l->act_sym;
    r->act_dynamic = l->act_dynamic;
    snprintf(r->data_type, sizeof r->data_type, "%s", l->data_type ? l->data_type : "int");
    snprintf(r->act_data_type, sizeof r->act_data_type, "%s", l->act_data_type ? l->act_data_type : "float");
    e->nrec++;
    return 0;
}

/* Older Mixtral checkpoints (and transformers 5.25's Mixtral save_pretrained)
 * name experts block_sparse_moe.experts.E.w1 / w3 / w2 where the block
 * description says mlp.experts.E.gate_proj / up_proj / down_proj (model.c
 * reads both). Packed layers keep the description's name, which is what
 * transformers 5 loads (it maps block_sparse_moe to mlp but not w1 to
 * gate_proj; AutoRound 0.16.1 writes gate_proj too, docs/moe.md §6): the
 * source weight of layer name is looked up under the old name when the new
 * one is absent (legacy_weight), and the old name's weight counts as
 * replaced (replaced_layer). */
static int legacy_weight(const ar_export *e, const char *name, char *buf, size_t n) {
    const char *mlp = strstr(name, ".mlp.experts.");
    int ex;
    char proj[16];
    if (!mlp || sscanf(mlp, ".mlp.experts.%d.%15[a-z]_proj", &ex, proj) != 2) return 0;
    const char *o = !strcmp(proj, "gate") ? "w1" : !strcmp(proj, "up") ? "w3" : !strcmp(proj, "down") ? "w2" : NULL;
    if (!o) return 0;
    snprintf(buf, n, "%.*s.block_sparse_moe.experts.%d.%s.weight", (int)(mlp - name), name, ex, o);
    return ar_st_find(e->st, buf) != NULL;
}

/* The packed layer's name for source tensor base name (len bytes): the
 * new spelling of an old Mixtral expert name into buf, else name itself. */
static const char *replaced_layer(const char *name, size_t *len, char *buf, size_t n) {
    const char *b = strstr(name, ".block_sparse_moe.experts.");
    int ex, used = 0;
    char w[4];
    if (!b || b >= name + *len || sscanf(b, ".block_sparse_moe.experts.%d.%3[w0-9]%n", &ex, w, &used) != 2 ||
        (size_t)(b - name) + used != *len)
        return name;
    const char *p = !strcmp(w, "w1") ? "gate_proj" : !strcmp(w, "w3") ? "up_proj" : !strcmp(w, "w2") ? "down_proj" : NULL;
    if (!p) return name;
    int m = snprintf(buf, n, "%.*s.mlp.experts.%d.%s", (int)(b - name), name, ex, p);
    *len = m > 0 && (size_t)m < n ? (size_t)m : 0;
    return *len ? buf : name;
}

const ar_st_tensor *ar_export_source_weight(const ar_export *e, const char *layer) {
    char w[600];
    snprintf(w, sizeof w, "%s.weight", layer);
    const ar_st_tensor *t = ar_st_find(e->st, w);
    if (!t && legacy_weight(e, layer, w, sizeof w)) t = ar_st_find(e->st, w);
    return t;
}

/* The layer must replace an existing [n, k] weight, once. */
static int check_layer_target(const ar_export *e, const ar_qlayer *l) {
    if (!l->name) return ar_error("%s: quantized layer without a name", e->out_dir);
    if (find_rec(e, l->name, strlen(l->name))) return ar_error("%s: layer %s packed twice", e->out_dir, l->name);
    char wname[512];
    snprintf(wname, sizeof wname, "%s.weight", l->name);
    const ar_st_tensor *t = ar_export_source_weight(e, l->name);
    int ndim = t ? t->ndim : 0;
    int64_t shape[8] = {0};
    if (t) memcpy(shape, t->shape, sizeof(int64_t) * (size_t)(ndim < 8 ? ndim : 8));
    else if (e->fx) {   /* an expert of a fused tensor */
        int rc = ar_fused_shape(e->fx, wname, &ndim, shape);
        if (rc < 0) return ar_error_prefix(e->model_dir);
        if (rc) ndim = 0;
    }
    if (!ndim) return ar_error("%s: the model has no tensor %s", e->model_dir, wname);
    if (ndim != 2 || shape[0] != l->n || shape[1] != l->k)
        return ar_error("%s: %s is not [%d, %d]", e->model_dir, wname, l->n, l->k);
    return 0;
}

/* Write n floats as dtype (f16/bf16/f32) under name. */
static int put_floats(ar_export *e, const char *name, ar_dtype dtype, int ndim, const int64_t *shape,
                      const float *v, size_t n) {
    void *buf = malloc(n * ar_dtype_size(dtype));
    if (!buf) return ar_error("%s: out of memory", e->out_dir);
    int rc = ar_from_f32(buf, v, dtype, n) || ar_stw_put(e->w, name, dtype, ndim, shape, buf);
    free(buf);
    return rc ? -1 : 0;
}

/* Original dtype of a float tensor, narrowed to 16 bits when f16 is asked. */
static ar_dtype bias_dtype(const ar_export *e, ar_dtype orig) { return e->fmt->bias_f16 ? AR_F16 : orig; }

int ar_export_layer(ar_export *e, const ar_qlayer *ql) {
    char mapped[512];
    ar_qlayer ml = *ql;
    if (e->mm && ql->name)   /* text-only name -> the checkpoint's */
        ml.name = ar_mm_map_name(&e->mm_names, ql->name, mapped, sizeof mapped);
    const ar_qlayer *l = &ml;
    if (check_layer_target(e, l)) return -1;
    if (e->awq_layout && e->fmt->awq_layout == AR_AWQ_ASYM4 && l->bits != 4)
        return ar_error("%s: %d-bit layer in an auto_round:auto_awq (4-bit) export; set mixed_bits", l->name, l->bits);
    if (e->fmt->write_layer(e, l) || add_rec(e, l)) return -1;
    if (!l->bias) return 0;
    char bname[512];
    snprintf(bname, sizeof bname, "%s.bias", l->name);
    const ar_st_tensor *ob = ar_st_find(e->st, bname);
    int64_t shape[1] = {l->n};
    return put_floats(e, bname, bias_dtype(e, ob ? ob->dtype : AR_BF16), 1, shape, l->bias, (size_t)l->n);
}

int ar_export_kv_scale(ar_export *e, const char *name, float scale) {
    char mapped[512];
    if (e->mm) name = ar_mm_map_name(&e->mm_names, name, mapped, sizeof mapped);
    size_t n = strlen(name);
    if (n < 8 || (strcmp(name + n - 8, ".k_scale") && strcmp(name + n - 8, ".v_scale")))
        return ar_error("%s: not a KV-cache scale name (ATTN.k_scale or ATTN.v_scale)", name);
    if (!(scale > 0) || isinf(scale)) return ar_error("%s: KV-cache scale %g is not finite and > 0", name, scale);
    int64_t one[1] = {1};
    if (ar_stw_put(e->w, name, AR_F32, 1, one, &scale)) return -1;
    e->nkv++;
    return 0;
}

/* What happens to original tensor t: 0 copy, 1 skip (replaced by a packed
 * layer, or the scale of an FP8 weight), 2 re-type (bias of a packed layer),
 * 3 widen (an FP8 weight left unquantized: written in the dtype the source
 * dequantizes to, safetensors.h). */
static int tensor_fate(const ar_export *e, const char *name) {
    if (e->fx && fused_tensor(name)) return 1;   /* written per expert (write_fused_experts) */
    int fp8 = ar_st_fp8_role(e->st, name);
    if (fp8 == 2) return 1;
    const char *dot = strrchr(name, '.');
    if (fp8 == 1 && !(dot && !strcmp(dot, ".weight") && find_rec(e, name, (size_t)(dot - name)))) return 3;
    if (!dot) return 0;
    char buf[600];
    size_t len = (size_t)(dot - name);
    const char *base = replaced_layer(name, &len, buf, sizeof buf);
    const ar_export_rec *r = find_rec(e, base, len);
    if (!r) return 0;
    if (!strcmp(dot, ".weight")) return 1;
    if (!strcmp(dot, ".bias")) return r->own_bias ? 1 : 2;
    return 0;
}

static int copy_tensor(ar_export *e, const ar_st_tensor *t) {
    if (ar_stw_begin(e->w, t->name, t->dtype, t->ndim, t->shape)) return -1;
    const char *p = t->data;
    for (size_t off = 0; off < t->nbytes; off += 64u << 20) {    /* pieces keep page cache pressure low */
        size_t n = t->nbytes - off < (64u << 20) ? t->nbytes - off : 64u << 20;
        if (ar_stw_write(e->w, p + off, n)) return -1;
    }
    return 0;
}

static int retype_bias(ar_export *e, const ar_st_tensor *t) {
    ar_dtype d = bias_dtype(e, t->dtype);
    if (d == t->dtype) return copy_tensor(e, t);
    float *v = malloc((size_t)t->numel * sizeof *v);
    int rc = !v || ar_st_read_f32(e->st, t->name, v, (size_t)t->numel) ||
             put_floats(e, t->name, d, t->ndim, t->shape, v, (size_t)t->numel);
    free(v);
    return rc ? -1 : 0;
}

/* An FP8 weight [n, k] widened through its scale, a few rows at a time. */
static int widen_fp8(ar_export *e, const ar_st_tensor *t) {
    ar_dtype d = ar_st_fp8_of(e->st)->out;
    int64_t n = t->shape[0], k = t->shape[1], step = k ? (4 << 20) / k + 1 : n;
    if (ar_stw_begin(e->w, t->name, d, t->ndim, t->shape)) return -1;
    float *f = malloc(sizeof(float) * (size_t)(step * k + 1));
    void *b = malloc(ar_dtype_size(d) * (size_t)(step * k + 1));
    int rc = !f || !b ? ar_error("%s: out of memory", e->out_dir) : 0;
    for (int64_t r = 0; !rc && r < n; r += step) {
        int64_t m = n - r < step ? n - r : step;
        rc = ar_st_read_rows_f32(e->st, t->name, r, m, f) || ar_from_f32(b, f, d, (size_t)(m * k)) ||
             ar_stw_write(e->w, b, ar_dtype_size(d) * (size_t)(m * k));
    }
    free(f);
    free(b);
    return rc ? -1 : 0;
}

/* One per-expert view name (weight or bias) of the fused source, written
 * as dtype d; 1 when the view does not exist. */
static int put_fused_view(ar_export *e, const char *name, ar_dtype d) {
    int ndim;
    int64_t shape[8];
    int rc = ar_fused_shape(e->fx, name, &ndim, shape);
    if (rc) return rc < 0 ? ar_error_prefix(e->model_dir) : 1;
    size_t n = (size_t)shape[0] * (ndim > 1 ? (size_t)shape[1] : 1);
    float *v = malloc(n * sizeof *v);
    rc = !v ? ar_error("%s: out of memory", e->out_dir)
            : ar_fused_read_rows(e->fx, name, 0, shape[0], v) ? ar_error_prefix(e->model_dir)
                                                              : put_floats(e, name, d, ndim, shape, v, n);
    free(v);
    return rc ? -1 : 0;
}

/* What the fused tensors of layer prefix p (p.mlp.experts.gate_up_proj, ...)
 * hold besides the packed experts: per expert, the biases (gpt-oss; in the
 * format's bias dtype when the layer was packed) and the weights of experts
 * left unpacked (BF16, the dtype of the fused checkpoints). */
static int write_fused_layer(ar_export *e, const char *p) {
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    char name[600];
    for (int x = 0;; x++) {
        snprintf(name, sizeof name, "%s.mlp.experts.%d.gate_proj.weight", p, x);
        int ndim;
        int64_t shape[8];
        int rc = ar_fused_shape(e->fx, name, &ndim, shape);
        if (rc < 0) return ar_error_prefix(e->model_dir);
        if (rc) return 0;   /* past the last expert */
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "%s.mlp.experts.%d.%s", p, x, proj[k]);
            const ar_export_rec *r = find_rec(e, name, strlen(name));
            size_t n = strlen(name);
            if (!r) {
                snprintf(name + n, sizeof name - n, ".weight");
                if (put_fused_view(e, name, AR_BF16) < 0) return -1;
            }
            if (r && r->own_bias) continue;
            snprintf(name + n, sizeof name - n, ".bias");
            if (put_fused_view(e, name, r ? bias_dtype(e, AR_BF16) : AR_BF16) < 0) return -1;
        }
    }
}

static int write_fused_experts(ar_export *e) {
    for (size_t i = 0; e->fx && i < ar_st_count(e->st); i++) {
        const char *n = ar_st_at(e->st, i)->name, *m = strstr(n, ".mlp.experts.down_proj");
        /* once per layer: at its down_proj (BF16) or down_proj_blocks (MXFP4) */
        if (!m || (strcmp(m + 22, "") && strcmp(m + 22, "_blocks"))) continue;
        char p[512];
        snprintf(p, sizeof p, "%.*s", (int)(m - n), n);
        if (write_fused_layer(e, p)) return -1;
    }
    return 0;
}

static int copy_rest(ar_export *e) {
    for (size_t i = 0; i < ar_st_count(e->st); i++) {
        const ar_st_tensor *t = ar_st_at(e->st, i);
        int fate = tensor_fate(e, t->name);
        if (fate == 0 && copy_tensor(e, t)) return -1;
        if (fate == 2 && retype_bias(e, t)) return -1;
        if (fate == 3 && widen_fp8(e, t)) return -1;
    }
    return write_fused_experts(e);
}

/* Module names in j (strings, object keys, at any depth) from the
 * checkpoint's layout to transformers' in-memory names (ar_mm_module_name):
 * loaders match quantization_config against the modules of the loaded model,
 * whatever layout its tensors are stored in. Names that are not the model's
 * ("auto-round", "int", ...) have no '.' and no tensor, and are kept. */
static void config_names_in_memory(const ar_export *e, cJSON *j) {
    char buf[512], probe[560];
    for (cJSON *c = j ? j->child : NULL; c; c = c->next) {
        config_names_in_memory(e, c);
        const char *names[2] = {c->string, cJSON_IsString(c) ? c->valuestring : NULL};
        for (int k = 0; k < 2; k++) {
            if (!names[k] || !strchr(names[k], '.')) continue;
            /* a module of the model: NAME.weight exists, or NAME is the blocks' list */
            snprintf(probe, sizeof probe, "%s.weight", names[k]);
            if (!ar_st_find(e->st, probe) && strcmp(names[k], e->block_prefix)) continue;
            ar_mm_module_name(&e->mm_names, names[k], buf, sizeof buf);
            if (k == 0) { free(c->string); c->string = strdup(buf); }
            else cJSON_SetValuestring(c, buf);
        }
    }
}

/* gpt-oss experts stored as MXFP4 (io/mxfp4.h), which the export writes per expert. */
static int mxfp4_experts(const ar_export *e) {
    for (size_t i = 0; e->fx && i < ar_st_count(e->st); i++) {
        const char *n = ar_st_at(e->st, i)->name;
        size_t l = strlen(n);
        if (fused_tensor(n) && l > 7 && !strcmp(n + l - 7, "_blocks")) return 1;
    }
    return 0;
}

static int write_configs(ar_export *e) {
    cJSON *q = e->fmt->quant_config ? e->fmt->quant_config(e) : NULL;
    if (e->fmt->quant_config && !q) return -1;
    if (q && e->mm) config_names_in_memory(e, q);
    /* AWQ kernels run in fp16, so AutoRound forces it for any AWQ layout. */
    const char *dtype = e->awq_layout ? "float16" : e->fmt->config_dtype;
    /* the source's own quantization_config goes when its weights were widened on reading: FP8, MXFP4 experts */
    int rc = hf_folder_write_config(e->model_dir, e->tmp_dir, q, dtype, ar_st_fp8_of(e->st) != NULL || mxfp4_experts(e));
    if (!rc && q && e->fmt->qconfig_file) rc = hf_folder_write_json(e->tmp_dir, e->fmt->qconfig_file, q);
    if (!rc && q && e->fmt->qconfig_file2) rc = hf_folder_write_json(e->tmp_dir, e->fmt->qconfig_file2, q);
    cJSON_Delete(q);
    return rc;
}

int ar_export_finish(ar_export *e) {
    if (e->nrec == 0 && !e->fmt->allow_empty) return ar_error("%s: no quantized layers to export", e->out_dir);
    if (copy_rest(e)) return -1;
    int rc = ar_stw_close(e->w);
    e->w = NULL;
    if (rc || write_configs(e) || hf_folder_copy_side_files(e->model_dir, e->tmp_dir) ||
        hf_folder_commit(e->tmp_dir, e->out_dir))
        return -1;
    free(e->tmp_dir);
    e->tmp_dir = NULL;
    ar_export_abort(e);
    return 0;
}

void ar_export_abort(ar_export *e) {
    if (!e) return;
    ar_stw_abort(e->w);
    hf_folder_remove(e->tmp_dir);
    ar_st_close(e->st);
    if (e->fx) ar_fused_close(e->fx);
    for (size_t i = 0; i < e->nrec; i++) free(e->rec[i].name);
    free(e->rec);
    free((char *)e->opts.tuning_json);
    free((char *)e->opts.data_type);
    free((char *)e->opts.act_data_type);
    free(e->tmp_dir);
    free(e->model_dir);
    free(e->out_dir);
    free(e);
}

/* ---- helpers for the format files ---------------------------------------- */

static int put_i32(ar_export *e, const char *layer, const char *suffix, int64_t rows, int64_t cols, const int32_t *v) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", layer, suffix);
    int64_t shape[2] = {rows, cols};
    return ar_stw_put(e->w, name, AR_I32, cols ? 2 : 1, shape, v);
}

static int put_scales(ar_export *e, const char *layer, int64_t ng, int64_t n, const uint16_t *s) {
    char name[512];
    snprintf(name, sizeof name, "%s.scales", layer);
    int64_t shape[2] = {ng, n};
    return ar_stw_put(e->w, name, AR_F16, 2, shape, s);
}

int ar_export_write_gptq(ar_export *e, const ar_qlayer *l, int zp_minus_one, int with_g_idx) {
    if (ar_qlayer_check(l, AR_LAYOUT_GPTQ)) return -1;
    int ng = ar_qlayer_ngroups(l), grp = ar_qlayer_group(l);
    int64_t qrows = (int64_t)l->k / 32 * l->bits, zcols = (int64_t)l->n / 32 * l->bits;
    int32_t *qw = malloc((size_t)qrows * l->n * 4), *qz = malloc((size_t)ng * zcols * 4), *gi = NULL;
    uint16_t *sc = malloc((size_t)ng * l->n * 2);
    int rc = !qw || !qz || !sc ? ar_error("%s: out of memory", l->name) : ar_pack_gptq(l, zp_minus_one, qw, qz, sc);
    if (!rc) rc = put_i32(e, l->name, "qweight", qrows, l->n, qw) || put_i32(e, l->name, "qzeros", ng, zcols, qz) ||
                  put_scales(e, l->name, ng, l->n, sc);
    if (!rc && with_g_idx) {
        if (!(gi = malloc((size_t)l->k * 4))) rc = ar_error("%s: out of memory", l->name);
        for (int k = 0; !rc && k < l->k; k++) gi[k] = k / grp;
        if (!rc) rc = put_i32(e, l->name, "g_idx", l->k, 0, gi);
    }
    free(qw);
    free(qz);
    free(sc);
    free(gi);
    return rc ? -1 : 0;
}

int ar_export_write_awq(ar_export *e, const ar_qlayer *l) {
    if (ar_qlayer_check(l, AR_LAYOUT_AWQ)) return -1;
    int ng = ar_qlayer_ngroups(l), cols = l->n / 8;
    int32_t *qw = malloc((size_t)l->k * cols * 4), *qz = malloc((size_t)ng * cols * 4);
    uint16_t *sc = malloc((size_t)ng * l->n * 2);
    int rc = !qw || !qz || !sc ? ar_error("%s: out of memory", l->name) : ar_pack_awq(l, qw, qz, sc);
    if (!rc) rc = put_i32(e, l->name, "qweight", l->k, cols, qw) || put_i32(e, l->name, "qzeros", ng, cols, qz) ||
                  put_scales(e, l->name, ng, l->n, sc);
    free(qw);
    free(qz);
    free(sc);
    return rc ? -1 : 0;
}

/* A number key of the tuning keys (def when absent). */
static double tune_num(const cJSON *t, const char *k, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, k);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int tune_false(const cJSON *t, const char *k) {
    return cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(t, k));
}

cJSON *ar_export_base_config(const ar_export *e) {
    cJSON *q = cJSON_CreateObject();
    if (!q) { ar_error("%s: out of memory", e->out_dir); return NULL; }
    /* AutoRound 0.16.1's order (its SerializedCompressorConfig): bits, act_bits,
     * data_type, act_data_type, group_size, act_group_size, sym, act_sym, act_dynamic. */
    int act = e->opts.act_bits > 0 && e->opts.act_bits < 16;
    cJSON_AddNumberToObject(q, "bits", e->opts.bits);
    if (act) cJSON_AddNumberToObject(q, "act_bits", e->opts.act_bits);
    cJSON_AddStringToObject(q, "data_type", e->opts.data_type ? e->opts.data_type : "int");
    if (act) cJSON_AddStringToObject(q, "act_data_type", e->opts.act_data_type ? e->opts.act_data_type : "int");
    cJSON_AddNumberToObject(q, "group_size", e->opts.group_size);
    if (act) cJSON_AddNumberToObject(q, "act_group_size", e->opts.act_group_size);
    cJSON_AddBoolToObject(q, "sym", e->opts.sym);
    if (act) {
        cJSON_AddBoolToObject(q, "act_sym", e->opts.act_sym);
        cJSON_AddBoolToObject(q, "act_dynamic", e->opts.act_dynamic);
    }
    /* The tuning keys as AutoRound writes them: only those that differ from
     * its defaults (export/utils.py filter_quantization_config). amp (default
     * true) is written false unless the tuned stream's META says the tuning ran
     * its GEMMs in bf16 (ar-tune --amp on a CPU with bf16). ar's own
     * provenance (method, nsamples, seqlen, seed, ...) stays in the tuned
     * stream's META (ar-dump), not here. */
    cJSON *t = e->opts.tuning_json ? cJSON_Parse(e->opts.tuning_json) : NULL;
    double iters = tune_num(t, "iters", 0);
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "amp"))) cJSON_AddBoolToObject(q, "amp", 0);
    if (iters > 0 && tune_false(t, "enable_minmax_tuning")) cJSON_AddBoolToObject(q, "enable_minmax_tuning", 0);
    if (iters <= 0 || tune_false(t, "enable_quanted_input")) cJSON_AddBoolToObject(q, "enable_quanted_input", 0);
    if (iters > 0) {
        double gas = tune_num(t, "gradient_accumulate_steps", 1);
        if (gas != 1) cJSON_AddNumberToObject(q, "gradient_accumulate_steps", gas);
        if (iters != 200) cJSON_AddNumberToObject(q, "iters", iters);
        double def = 1.0 / iters;   /* AutoRound's lr when not given (2/iters: >= 1000 iters at <= 3 bits) */
        double lr = tune_num(t, "lr", iters >= 1000 && e->opts.bits <= 3 ? 2.0 / iters : def);
        double mlr = tune_num(t, "minmax_lr", lr);
        if (lr != def) cJSON_AddNumberToObject(q, "lr", lr);
        if (mlr != def) cJSON_AddNumberToObject(q, "minmax_lr", mlr);
    }
    /* the static KV cache, as AutoRound records it (--static_kv_dtype) */
    const char *kv_keys[] = {"static_kv_dtype", "static_kv_granularity"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, kv_keys[i]);
        if (cJSON_IsString(v)) cJSON_AddStringToObject(q, kv_keys[i], v->valuestring);
    }
    /* an FP8 (or other quantized) source checkpoint, recorded as the issue of
     * FP8 input asks: AutoRound has no such key, so only such sources get it */
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(t, "source_quantization");
    if (cJSON_IsObject(src)) cJSON_AddItemToObject(q, "source_quantization", cJSON_Duplicate(src, 1));
    cJSON_Delete(t);
    cJSON_AddStringToObject(q, "autoround_version", AR_AUTOROUND_VERSION);
    return q;
}

/* ---- model order ------------------------------------------------------------ */

/* Rank of a layer name's last part in a Llama-family block's module order. */
static int module_rank(const char *name) {
    static const char *const order[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "gate_proj", "up_proj", "down_proj"};
    const char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    for (size_t i = 0; i < sizeof order / sizeof *order; i++)
        if (!strcmp(last, order[i])) return (int)i;
    return (int)(sizeof order / sizeof *order);
}

/* Model order: numbers compare as numbers (layers.2 before layers.10), names
 * in a block compare by module rank where their parent is the same, names
 * outside any numbered block (lm_head) come last. */
static int model_order_cmp(const void *pa, const void *pb) {
    const char *a = (*(cJSON *const *)pa)->string, *b = (*(cJSON *const *)pb)->string;
    int na = strpbrk(a, "0123456789") != NULL, nb = strpbrk(b, "0123456789") != NULL;
    if (na != nb) return nb - na;
    const char *x = a, *y = b;
    while (*x && *y) {
        if (isdigit((unsigned char)*x) && isdigit((unsigned char)*y)) {
            char *ex, *ey;
            unsigned long vx = strtoul(x, &ex, 10), vy = strtoul(y, &ey, 10);
            if (vx != vy) return vx < vy ? -1 : 1;
            x = ex, y = ey;
            continue;
        }
        if (*x != *y) break;
        x++, y++;
    }
    /* Same up to here: the same parent module when neither has a '.' left before its last part. */
    const char *la = strrchr(a, '.'), *lb = strrchr(b, '.');
    if (la && lb && la - a == lb - b && !strncmp(a, b, (size_t)(la - a)) && module_rank(a) != module_rank(b))
        return module_rank(a) - module_rank(b);
    return strcmp(a, b);
}

void ar_export_model_order(cJSON *obj) {
    int n = cJSON_GetArraySize(obj);
    if (n < 2) return;
    cJSON **v = malloc((size_t)n * sizeof *v);
    if (!v) return;   /* order is cosmetic */
    int i = 0;
    for (cJSON *c = obj->child; c; c = c->next) v[i++] = c;
    qsort(v, (size_t)n, sizeof *v, model_order_cmp);
    for (i = 0; i < n; i++) {
        v[i]->prev = i ? v[i - 1] : v[n - 1];   /* cJSON: the first item's prev is the last */
        v[i]->next = i + 1 < n ? v[i + 1] : NULL;
    }
    obj->child = v[0];
    free(v);
}

/* Linear-like weights of the original: 2-D NAME.weight, minus embeddings
 * and gpt-oss's router (GptOssTopKRouter, a weight/bias pair that is no
 * nn.Linear: AutoRound 0.16.1 neither quantizes nor lists it, its export of
 * GptOssForCausalLM has no extra_config). */
static int is_linear_weight(const ar_st_tensor *t) {
    size_t n = strlen(t->name);
    if (n > 18 && !strcmp(t->name + n - 18, ".mlp.router.weight")) return 0;
    return t->ndim == 2 && n > 7 && !strcmp(t->name + n - 7, ".weight") && !strstr(t->name, "embed");
}

static int unquantized(const ar_export *e, int want_in_block, void (*fn)(void *, const char *), void *arg) {
    int count = 0;
    for (size_t i = 0; i < ar_st_count(e->st); i++) {
        const ar_st_tensor *t = ar_st_at(e->st, i);
        if (!is_linear_weight(t) || in_block(e, t->name) != want_in_block) continue;
        size_t len = strlen(t->name) - 7;
        char buf[600];
        const char *base = replaced_layer(t->name, &len, buf, sizeof buf);
        if (find_rec(e, base, len)) continue;
        len = strlen(t->name) - 7;
        char layer[512];
        snprintf(layer, sizeof layer, "%.*s", (int)len, t->name);
        if (fn) fn(arg, layer);
        count++;
    }
    return count;
}

int ar_export_unquantized_in_block(const ar_export *e, void (*fn)(void *, const char *), void *arg) {
    return unquantized(e, 1, fn, arg);
}

int ar_export_unquantized_outside(const ar_export *e, void (*fn)(void *, const char *), void *arg) {
    return unquantized(e, 0, fn, arg);
}

int ar_export_opts_fp(const ar_export_opts *o) {
    return o->data_type && ar_quant_dtype_parse(o->data_type, o->bits) > AR_QDT_INT;
}
