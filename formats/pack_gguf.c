/* pack_gguf.c — ar-pack's GGUF output over the piecewise converter of
 * gguf_convert.c: tuned tensors go in as given, the rest of the model is
 * quantized at finish with the mix's type policy.
 *
 * Integer layers (ar_qlayer) are accepted only where GGUF stores them without
 * any change of value: a legacy mix (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) whose block
 * is exactly the layer's grid — b-bit codes in groups of 32 along K, one fp16
 * scale per group, symmetric with the implied zero point 2^(b-1) (Q4_0, Q5_0,
 * Q8_0) or asymmetric (Q4_1, Q5_1: d = scale, m = -scale·zp, both fp16, the
 * same rounding as the fp16 scales of the HF exports). k-quant mixes keep their
 * scales in 6-bit sub-scales of a super-block, which no int scheme produces:
 * they need a stream tuned with the GGUF scheme itself. */
#include "pack_gguf.h"
#include "dtype.h"
#include "error.h"
#include "gguf.h"
#include "output_names.h"
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct ar_pack_gguf {
    ar_gguf_conv *cv;
    ar_gguf_ftype ftype;
    char          type[32];     /* mix as given after "gguf:" */
    char          out[4096];
    /* ar_pack_gguf_open_dir: the folder asked for, the temporary one the file
     * is written in (out = tmp/model.gguf), and whether dir already existed */
    char          dir[4096], tmp[4200], model[4096];
    int           in_dir, dir_existed;
};

/* Which ggml type stores a `bits`-bit layer of `sym`metry exactly (0: none). */
static ar_ggml_type legacy_type_of(int bits, int sym)
{
    if (bits == 4) return sym ? AR_GGML_Q4_0 : AR_GGML_Q4_1;
    if (bits == 5) return sym ? AR_GGML_Q5_0 : AR_GGML_Q5_1;
    if (bits == 8 && sym) return AR_GGML_Q8_0;
    return AR_GGML_F32;
}

/* "GGUF:Q4_K_M" -> its file type, or -1 when scheme is not a GGUF scheme. */
static int stream_ftype(const char *scheme)
{
    if (!scheme || strncasecmp(scheme, "GGUF:", 5)) return -1;
    return ar_gguf_ftype_parse(scheme + 5);
}

static ar_pack_gguf *open_at(const char *model_dir, const char *out_path, const char *type, const char *scheme,
                             ar_pack_gguf *dirs);

ar_pack_gguf *ar_pack_gguf_open(const char *model_dir, const char *out_path, const char *type, const char *scheme)
{
    return open_at(model_dir, out_path, type, scheme, NULL);
}

ar_pack_gguf *ar_pack_gguf_open_dir(const char *model_dir, const char *dir, const char *type, const char *scheme)
{
    ar_pack_gguf d;
    memset(&d, 0, sizeof d);
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (n >= sizeof d.dir) { ar_error("%.64s...: path too long", dir); return NULL; }
    memcpy(d.dir, dir, n);
    d.dir[n] = 0;
    struct stat sb;
    if (stat(d.dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) { ar_error("%s: exists and is not a folder", d.dir); return NULL; }
        d.dir_existed = 1;
    } else if (errno != ENOENT) { ar_error("%s: %s", d.dir, strerror(errno)); return NULL; }
    snprintf(d.tmp, sizeof d.tmp, "%s.tmp.%ld", d.dir, (long)getpid());
    if (mkdir(d.tmp, 0755)) { ar_error("%s: cannot create: %s", d.tmp, strerror(errno)); return NULL; }
    snprintf(d.model, sizeof d.model, "%s", model_dir);
    d.in_dir = 1;
    char path[4300];
    snprintf(path, sizeof path, "%s/model.gguf", d.tmp);
    ar_pack_gguf *p = open_at(model_dir, path, type, scheme, &d);
    if (!p) rmdir(d.tmp);
    return p;
}

static ar_pack_gguf *open_at(const char *model_dir, const char *out_path, const char *type, const char *scheme,
                             ar_pack_gguf *dirs)
{
    int f = ar_gguf_ftype_parse(type);
    if (f < 0) {
        ar_error("gguf:%s: unknown GGUF type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k, f16, bf16, f32)", type);
        return NULL;
    }
    int sf = stream_ftype(scheme);
    if (scheme && !strncasecmp(scheme, "GGUF:", 5) && sf != f) {
        ar_error("gguf:%s needs a stream tuned with --scheme gguf:%s (this stream was tuned for %s)", type, type, scheme);
        return NULL;
    }
    ar_pack_gguf *p = calloc(1, sizeof *p);
    if (!p) { ar_error("out of memory"); return NULL; }
    if (dirs) {
        memcpy(p->dir, dirs->dir, sizeof p->dir);
        memcpy(p->tmp, dirs->tmp, sizeof p->tmp);
        memcpy(p->model, dirs->model, sizeof p->model);
        p->in_dir = 1;
        p->dir_existed = dirs->dir_existed;
    }
    p->ftype = (ar_gguf_ftype)f;
    snprintf(p->type, sizeof p->type, "%s", type);
    snprintf(p->out, sizeof p->out, "%s", out_path);
    /* Tensors we quantize ourselves get no imatrix (as llama-quantize gives
     * none to token_embd/output); tuned ones arrive already quantized. */
    if (!(p->cv = ar_gguf_conv_open(model_dir, out_path, p->ftype, 0))) {
        free(p);
        return NULL;
    }
    /* Where ar-eval finds the HF tokenizer of this file (model_any.h). */
    char abs[PATH_MAX];
    if (ar_gguf_set_str(ar_gguf_conv_writer(p->cv), "ar.source_model", realpath(model_dir, abs) ? abs : model_dir)) {
        ar_pack_gguf_abort(p);
        return NULL;
    }
    return p;
}

/* One group of 32 codes u (already offset by the zero point where symmetric)
 * into the block layout of t: fp16 d (and m), 4 low bits of element j and j+16
 * sharing byte j, the 5th bits in a 32-bit mask; Q8_0 as signed bytes. */
static void put_block(ar_ggml_type t, const int *q, float d, float m, uint8_t *blk)
{
    uint16_t h = ar_f32_to_f16(d);
    memcpy(blk, &h, 2);
    uint8_t *p = blk + 2;
    if (t == AR_GGML_Q8_0) {
        for (int j = 0; j < 32; j++) p[j] = (uint8_t)(int8_t)q[j];
        return;
    }
    if (t == AR_GGML_Q4_1 || t == AR_GGML_Q5_1) {
        h = ar_f32_to_f16(m);
        memcpy(p, &h, 2);
        p += 2;
    }
    if (t == AR_GGML_Q5_0 || t == AR_GGML_Q5_1) {
        uint32_t qh = 0;
        for (int j = 0; j < 32; j++) qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        memcpy(p, &qh, 4);
        p += 4;
    }
    for (int j = 0; j < 16; j++) p[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

/* Codes and zero points within b bits, finite scales (the generic
 * ar_qlayer_check knows only the bit widths HF packings take). */
static int check_codes(const ar_qlayer *l)
{
    const int qmax = (1 << l->bits) - 1, ng = l->k / 32;
    for (size_t i = 0; i < (size_t)l->n * l->k; i++)
        if (l->codes[i] > qmax) return ar_error("%s: code %d exceeds %d bits", l->name, l->codes[i], l->bits);
    for (size_t i = 0; i < (size_t)l->n * ng; i++) {
        if (!isfinite(l->scale[i])) return ar_error("%s: non-finite scale", l->name);
        if (l->zp && (l->zp[i] < 0 || l->zp[i] > qmax)) return ar_error("%s: zero point %d out of range", l->name, l->zp[i]);
    }
    return 0;
}

/* The layer's codes as blocks of type t. */
static int layer_blocks(const ar_qlayer *l, ar_ggml_type t, uint8_t *out)
{
    const int ng = l->k / 32;
    const size_t bb = ar_ggml_block_bytes(t);
    for (int r = 0; r < l->n; r++)
        for (int g = 0; g < ng; g++) {
            int q[32];
            float s = l->scale[(size_t)r * ng + g];
            int32_t zp = ar_qlayer_zp(l, r, g);
            if (l->sym && zp != 1 << (l->bits - 1))
                return ar_error("%s: symmetric layer with zero point %d (row %d, group %d)", l->name, zp, r, g);
            for (int j = 0; j < 32; j++) {
                int u = l->codes[(size_t)r * l->k + g * 32 + j];
                q[j] = t == AR_GGML_Q8_0 ? u - zp : u;  /* Q4_0/Q5_0 keep u: their offset is the implied zp */
            }
            put_block(t, q, s, -s * (float)zp, out + ((size_t)r * ng + g) * bb);
        }
    return 0;
}

int ar_pack_gguf_layer(ar_pack_gguf *p, const ar_qlayer *l)
{
    ar_ggml_type want = ar_gguf_ftype_base(p->ftype);
    int legacy = want == AR_GGML_Q4_0 || want == AR_GGML_Q4_1 || want == AR_GGML_Q5_0 || want == AR_GGML_Q5_1 ||
                 want == AR_GGML_Q8_0;
    if (!legacy)
        return ar_error("%s: gguf:%s needs a stream tuned with --scheme gguf:%s", l->name, p->type, p->type);
    if (l->data_type && strcmp(l->data_type, "int"))
        return ar_error("%s: %s weights have no GGUF type (tune with --scheme gguf:%s)", l->name, l->data_type, p->type);
    if (l->act_bits > 0 && l->act_bits < 16)
        return ar_error("%s: GGUF has no quantized activations (act_bits %d)", l->name, l->act_bits);
    ar_ggml_type t = legacy_type_of(l->bits, l->sym);
    if (t != want || l->group_size != 32 || l->k % 32)
        return ar_error("%s: gguf:%s stores %s groups of 32; this layer is %d-bit %s, group %d (tune with --scheme gguf:%s)",
                        l->name, p->type, ar_ggml_type_name(want), l->bits, l->sym ? "sym" : "asym", l->group_size,
                        p->type);
    if (check_codes(l)) return -1;
    if (l->bias) return ar_error("%s: a tuned bias has no place in gguf:%s", l->name, p->type);
    size_t nbytes = ar_ggml_row_bytes(t, l->k) * (size_t)l->n;
    uint8_t *blocks = malloc(nbytes);
    if (!blocks) return ar_error("%s: out of memory", l->name);
    char hf[300];
    snprintf(hf, sizeof hf, "%s.weight", l->name);
    int rc = layer_blocks(l, t, blocks);
    if (!rc) rc = ar_gguf_conv_add_blocks(p->cv, hf, t, l->n, l->k, blocks, nbytes);
    free(blocks);
    return rc;
}

int ar_pack_gguf_raw(ar_pack_gguf *p, const char *hf_name, ar_ggml_type t, int64_t n_rows, int64_t n_cols,
                     const void *blocks, size_t nbytes)
{
    return ar_gguf_conv_add_blocks(p->cv, hf_name, t, n_rows, n_cols, blocks, nbytes) ? ar_error_prefix(p->out) : 0;
}

/* The finished file of an open_dir output: name it as llama.cpp would and
 * move it (or its folder) into place. */
static int place_named(ar_pack_gguf *p, char *path, size_t cap)
{
    ar_gguf_param_count pc;
    char name[1024], from[8400], to[8400];
    if (ar_gguf_count_params(p->out, &pc) ||
        ar_gguf_file_name(p->model, &pc, ar_gguf_ftype_name(p->ftype), name, sizeof name))
        return -1;
    snprintf(to, sizeof to, "%s/%s", p->dir, name);
    if (p->dir_existed) {
        if (rename(p->out, to)) return ar_error("%s: cannot rename to %s: %s", p->out, to, strerror(errno));
        rmdir(p->tmp);
    } else {
        if ((size_t)snprintf(from, sizeof from, "%s/%s", p->tmp, name) >= sizeof p->out)
            return ar_error("%s/%s: path too long", p->tmp, name);
        if (rename(p->out, from)) return ar_error("%s: cannot rename to %s: %s", p->out, from, strerror(errno));
        memcpy(p->out, from, strlen(from) + 1);
        if (rename(p->tmp, p->dir)) return ar_error("%s: cannot rename to %s: %s", p->tmp, p->dir, strerror(errno));
    }
    p->tmp[0] = 0;
    if (path) snprintf(path, cap, "%s", to);
    return 0;
}

int ar_pack_gguf_finish_path(ar_pack_gguf *p, char *path, size_t cap)
{
    ar_gguf_conv *cv = p->cv;
    p->cv = NULL;
    if (ar_gguf_conv_finish(cv, NULL, NULL)) return -1;
    if (p->in_dir && place_named(p, path, cap)) return -1;
    if (!p->in_dir && path) snprintf(path, cap, "%s", p->out);
    free(p);
    return 0;
}

int ar_pack_gguf_finish(ar_pack_gguf *p) { return ar_pack_gguf_finish_path(p, NULL, 0); }

void ar_pack_gguf_abort(ar_pack_gguf *p)
{
    if (!p) return;
    ar_gguf_conv_abort(p->cv);
    if (p->in_dir && p->tmp[0]) {   /* the finished file, if any, then the temporary folder */
        if (!strncmp(p->out, p->tmp, strlen(p->tmp))) unlink(p->out);
        rmdir(p->tmp);
    }
    free(p);
}
