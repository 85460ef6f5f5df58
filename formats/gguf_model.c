/* gguf_model.c — from a Hugging Face model directory to llama.cpp's GGUF
 * conventions: tensor names, RoPE row permutation, hyper-parameter keys, the
 * embedded tokenizer, and the whole conversion with RTN quantization. */
#include "gguf.h"
#include "error.h"
#include "gguf_moe.h"
#include "safetensors.h"
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp token types (llama_token_type / gguf TokenType). */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5, TOK_BYTE = 6 };

/* ---- names and permutation ------------------------------------------------- */

const char *ar_gguf_arch_name(const ar_config *c)
{
    switch (c->arch) {
    case AR_ARCH_QWEN2: return "qwen2";
    case AR_ARCH_QWEN3: return "qwen3";
    case AR_ARCH_GEMMA2: return "gemma2";
    case AR_ARCH_GEMMA3: return "gemma3";
    case AR_ARCH_PHI3: return "phi3";
    case AR_ARCH_GLM4: return "glm4";
    case AR_ARCH_QWEN3_MOE: return "qwen3moe";
    case AR_ARCH_QWEN2_MOE: return "qwen2moe";
    case AR_ARCH_DEEPSEEK_V2: case AR_ARCH_DEEPSEEK_V3: return "deepseek2";   /* gguf_ds_oss.h */
    case AR_ARCH_GPT_OSS: return "gpt-oss";
    default: return "llama";   /* Llama, Mistral, Mixtral (llama with experts) */
    }
}

int ar_gguf_permute_rows(void *rows_data, int64_t rows, size_t row_bytes, int n_head)
{
    if (n_head <= 0 || rows % (2 * n_head)) return ar_error("cannot permute %lld rows into %d heads", (long long)rows, n_head);
    const int64_t d = rows / n_head, half = d / 2;
    char *tmp = malloc(row_bytes * (size_t)d);
    if (!tmp) return ar_error("out of memory");
    for (int h = 0; h < n_head; h++) {
        char *head = (char *)rows_data + (size_t)(h * d) * row_bytes;
        /* new row 2i+k is old row k*half + i */
        for (int64_t i = 0; i < half; i++)
            for (int k = 0; k < 2; k++)
                memcpy(tmp + (size_t)(2 * i + k) * row_bytes, head + (size_t)(k * half + i) * row_bytes, row_bytes);
        memcpy(head, tmp, row_bytes * (size_t)d);
    }
    free(tmp);
    return 0;
}

int64_t ar_gguf_permuted_row(int64_t r, int64_t d)
{
    int64_t head = r / d, j = r % d, half = d / 2;
    return head * d + 2 * (j % half) + j / half;
}

int ar_gguf_permute_qk(float *w, int64_t rows, int64_t cols, int n_head)
{
    return ar_gguf_permute_rows(w, rows, sizeof(float) * (size_t)cols, n_head);
}

/* ---- hyper-parameters --------------------------------------------------------- */

/* Gemma 2 / Gemma 3 keys as llama.cpp's loader reads them (src/models/gemma2.cpp,
 * gemma3.cpp of llama.cpp b8xxx): soft-caps, the per-layer sliding pattern as a
 * bool array (attention.sliding_window_pattern; without it llama.cpp assumes
 * every 2nd / 6th layer is global) and the sliding layers' RoPE base. */
static int set_gemma(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    if (c->arch != AR_ARCH_GEMMA2 && c->arch != AR_ARCH_GEMMA3) return 0;
    char k[128];
    int8_t swa[AR_CONFIG_MAX_LAYERS];
    for (int l = 0; l < c->n_layers && l < AR_CONFIG_MAX_LAYERS; l++) swa[l] = (int8_t)ar_config_layer_sliding(c, l);
    snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", arch);
    int rc = ar_gguf_set_arr(w, k, AR_GGUF_BOOL, swa, (uint64_t)c->n_layers);
    rc |= ar_gguf_set_arch_f32(w, arch, "rope.freq_base_swa", (float)(c->rope_local_theta > 0 ? c->rope_local_theta : c->rope_theta));
    if (c->attn_softcap > 0) rc |= ar_gguf_set_arch_f32(w, arch, "attn_logit_softcapping", (float)c->attn_softcap);
    if (c->final_softcap > 0) rc |= ar_gguf_set_arch_f32(w, arch, "final_logit_softcapping", (float)c->final_softcap);
    return rc;
}

/* Phi-3 / GLM-4 (llama.cpp src/models/phi3.cpp, glm4.cpp): the rotated part
 * of each head (rope.dimension_count; llama.cpp's phi3 rotates halves within
 * it, glm4 pairs, as the HF models do), and Phi-3's longrope as the converter
 * writes it: the original context, beyond which llama.cpp takes
 * rope_factors_long (gguf_convert.c adds both tables), and the attention
 * factor on cos and sin. */
static int set_fused(ar_gguf_writer *w, const ar_config *c, const char *arch)
{
    if (c->arch != AR_ARCH_PHI3 && c->arch != AR_ARCH_GLM4) return 0;
    int rc = ar_gguf_set_arch_u32(w, arch, "rope.dimension_count", (uint32_t)(c->rope_dim > 0 ? c->rope_dim : c->head_dim));
    if (c->rope_type == AR_ROPE_LONGROPE)
        rc |= ar_gguf_set_arch_u32(w, arch, "rope.scaling.original_context_length", (uint32_t)c->rope_orig_max_pos) |
              ar_gguf_set_arch_f32(w, arch, "rope.scaling.attn_factor", (float)c->rope_attention_factor);
    return rc;
}

static int set_hparams(ar_gguf_writer *w, const ar_config *c, const char *name, ar_gguf_ftype ftype)
{
    const char *arch = ar_gguf_arch_name(c);
    int rc = ar_gguf_set_str(w, "general.architecture", arch) | ar_gguf_set_str(w, "general.type", "model") |
             ar_gguf_set_str(w, "general.name", name) | ar_gguf_set_arch_u32(w, arch, "block_count", (uint32_t)c->n_layers) |
             ar_gguf_set_arch_u32(w, arch, "context_length", (uint32_t)c->max_pos) |
             ar_gguf_set_arch_u32(w, arch, "embedding_length", (uint32_t)c->hidden) |
             ar_gguf_set_arch_u32(w, arch, "feed_forward_length", (uint32_t)c->intermediate) |
             ar_gguf_set_arch_u32(w, arch, "attention.head_count", (uint32_t)c->n_heads) |
             ar_gguf_set_arch_u32(w, arch, "attention.head_count_kv", (uint32_t)c->n_kv_heads) |
             ar_gguf_set_arch_f32(w, arch, "rope.freq_base", (float)c->rope_theta) |
             ar_gguf_set_arch_f32(w, arch, "attention.layer_norm_rms_epsilon", c->rms_eps) |
             ar_gguf_set_arch_u32(w, arch, "attention.key_length", (uint32_t)c->head_dim) |
             ar_gguf_set_arch_u32(w, arch, "attention.value_length", (uint32_t)c->head_dim) |
             ar_gguf_set_u32(w, "general.file_type", (uint32_t)ftype);
    if (!strcmp(arch, "llama"))
        rc |= ar_gguf_set_arch_u32(w, arch, "vocab_size", (uint32_t)c->vocab) |
              ar_gguf_set_arch_u32(w, arch, "rope.dimension_count", (uint32_t)c->head_dim);
    if (c->rope_type == AR_ROPE_LINEAR) {
        char k[128];
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        rc |= ar_gguf_set_str(w, k, "linear") | ar_gguf_set_arch_f32(w, arch, "rope.scaling.factor", (float)c->rope_factor);
    }
    if (c->sliding_window > 0 && strcmp(arch, "llama"))
        rc |= ar_gguf_set_arch_u32(w, arch, "attention.sliding_window", (uint32_t)c->sliding_window);
    rc |= set_gemma(w, c, arch) | set_fused(w, c, arch) | ar_gguf_moe_set_metadata(w, c, arch);
    rc |= ar_gguf_set_u32(w, "general.quantization_version", 2);
    return rc ? -1 : 0;
}

int ar_gguf_set_model_metadata(ar_gguf_writer *w, const ar_config *c, const char *model_dir, const char *name,
                               ar_gguf_ftype ftype)
{
    /* RoPE scalings llama.cpp's phi3/glm4 files carry: none, linear, Phi-3's longrope */
    if ((c->arch == AR_ARCH_PHI3 || c->arch == AR_ARCH_GLM4) && c->rope_type != AR_ROPE_DEFAULT &&
        c->rope_type != AR_ROPE_LINEAR && !(c->arch == AR_ARCH_PHI3 && c->rope_type == AR_ROPE_LONGROPE))
        return ar_error("%s: GGUF export of %s with this rope_scaling type is not supported", model_dir, c->arch_name);
    if (set_hparams(w, c, name, ftype)) return -1;
    return ar_gguf_set_tokenizer(w, model_dir);
}

/* ---- tokenizer ------------------------------------------------------------------- */

static cJSON *read_json(const char *dir, const char *file, int required)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (required) ar_error("%s: %s", path, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = n >= 0 ? malloc((size_t)n + 1) : NULL;
    size_t got = text ? fread(text, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!text || got != (size_t)n) {
        free(text);
        ar_error("%s: cannot read", path);
        return NULL;
    }
    text[n] = 0;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) ar_error("%s: invalid JSON", path);
    return j;
}

/* The tokenizer as llama.cpp stores it, built from tokenizer.json. */
typedef struct {
    int          n;
    const char **text;     /* borrowed from the JSON or owned in `owned` */
    char       **owned;
    int32_t     *type;
    float       *score;
    int          spm;      /* SentencePiece-style BPE with byte fallback ("llama") */
} vocab;

static void vocab_free(vocab *v)
{
    if (v->owned)
        for (int i = 0; i < v->n; i++) free(v->owned[i]);
    free(v->owned); free(v->text); free(v->type); free(v->score);
}

static int is_byte_token(const char *s)
{
    unsigned x;
    char tail;
    return strlen(s) == 6 && sscanf(s, "<0x%2x%c", &x, &tail) == 2 && tail == '>';
}

/* Converters treat some added tokens as control even when not marked special. */
static int looks_special(const char *s)
{
    size_t n = strlen(s);
    return n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>");
}

static int vocab_size_of(const cJSON *model_vocab, const cJSON *added, int config_vocab)
{
    int n = config_vocab;
    const cJSON *e;
    cJSON_ArrayForEach(e, model_vocab) if (cJSON_IsNumber(e) && e->valueint + 1 > n) n = e->valueint + 1;
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItem(e, "id");
        if (cJSON_IsNumber(id) && id->valueint + 1 > n) n = id->valueint + 1;
    }
    return n;
}

static int vocab_alloc(vocab *v, int n)
{
    v->n = n;
    v->text = calloc((size_t)n, sizeof *v->text);
    v->owned = calloc((size_t)n, sizeof *v->owned);
    v->type = calloc((size_t)n, sizeof *v->type);
    v->score = calloc((size_t)n, sizeof *v->score);
    return v->text && v->owned && v->type && v->score ? 0 : -1;
}

/* Fill tokens from model.vocab and added_tokens, then types and scores:
 * added special -> control, added other -> user-defined (llama style: both
 * score -1000); <0xNN> -> byte (score 0); the unk token -> unknown; holes ->
 * "[PADi]" unused; the rest normal, scored -k for the k-th normal token (the
 * order SentencePiece's BPE scores follow). */
static int build_vocab(vocab *v, const cJSON *tok, int config_vocab, const char *path)
{
    const cJSON *model = cJSON_GetObjectItem(tok, "model"), *added = cJSON_GetObjectItem(tok, "added_tokens");
    const cJSON *mv = cJSON_GetObjectItem(model, "vocab"), *e;
    if (!cJSON_IsObject(mv)) return ar_error("%s: model.vocab is not an object", path);
    v->spm = cJSON_IsTrue(cJSON_GetObjectItem(model, "byte_fallback"));
    if (vocab_alloc(v, vocab_size_of(mv, added, config_vocab))) return ar_error("%s: out of memory", path);
    cJSON_ArrayForEach(e, mv) {
        if (!cJSON_IsNumber(e) || e->valueint < 0) return ar_error("%s: bad id for token '%s'", path, e->string);
        v->text[e->valueint] = e->string;
        v->type[e->valueint] = v->spm && is_byte_token(e->string) ? TOK_BYTE : TOK_NORMAL;
    }
    const cJSON *unk = cJSON_GetObjectItem(model, "unk_token");
    if (cJSON_IsString(unk) && cJSON_IsNumber(cJSON_GetObjectItem(mv, unk->valuestring)))
        v->type[cJSON_GetObjectItem(mv, unk->valuestring)->valueint] = TOK_UNKNOWN;
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItem(e, "id"), *content = cJSON_GetObjectItem(e, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content) || id->valueint < 0)
            return ar_error("%s: malformed added_tokens entry", path);
        v->text[id->valueint] = content->valuestring;
        int special = cJSON_IsTrue(cJSON_GetObjectItem(e, "special")) || (!v->spm && looks_special(content->valuestring));
        v->type[id->valueint] = special ? TOK_CONTROL : TOK_USER_DEFINED;
    }
    int k = 0;
    for (int i = 0; i < v->n; i++) {
        if (!v->text[i]) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            if (!(v->owned[i] = strdup(pad))) return ar_error("%s: out of memory", path);
            v->text[i] = v->owned[i];
            v->type[i] = TOK_UNUSED;
            v->score[i] = -10000.f;
        } else if (v->type[i] == TOK_CONTROL || v->type[i] == TOK_USER_DEFINED) {
            v->score[i] = -1000.f;
        } else if (v->type[i] == TOK_NORMAL || v->type[i] == TOK_UNKNOWN) {
            v->score[i] = -(float)k++;
        }
    }
    return 0;
}

/* Copy src to dst with each space written as U+0120 (how byte-level BPE shows
 * a space); returns the end of dst. */
static char *put_escaped(char *dst, const char *src)
{
    for (; *src; src++) {
        if (*src == ' ') { memcpy(dst, "\xc4\xa0", 2); dst += 2; }
        else *dst++ = *src;
    }
    return dst;
}

/* One merge as "a b": already so, or a ["a", "b"] pair (newer tokenizers). */
static char *merge_text(const cJSON *e)
{
    if (cJSON_IsString(e)) return strdup(e->valuestring);
    const cJSON *a = cJSON_GetArrayItem(e, 0), *b = cJSON_GetArrayItem(e, 1);
    if (!cJSON_IsString(a) || !cJSON_IsString(b)) return NULL;
    char *s = malloc(2 * (strlen(a->valuestring) + strlen(b->valuestring)) + 2);
    if (!s) return NULL;
    char *end = put_escaped(s, a->valuestring);
    *end++ = ' ';
    *put_escaped(end, b->valuestring) = 0;
    return s;
}

static int set_merges(ar_gguf_writer *w, const cJSON *merges, const char *path)
{
    int n = cJSON_GetArraySize(merges), rc = 0;
    char **m = calloc((size_t)n + 1, sizeof *m);
    if (!m) return ar_error("%s: out of memory", path);
    for (int i = 0; i < n && !rc; i++)
        if (!(m[i] = merge_text(cJSON_GetArrayItem(merges, i)))) rc = ar_error("%s: malformed merge %d", path, i);
    if (!rc) rc = ar_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)m, (uint64_t)n);
    for (int i = 0; i < n; i++) free(m[i]);
    free(m);
    return rc;
}

static int type_is(const cJSON *o, const char *type)
{
    const cJSON *t = cJSON_GetObjectItem(o, "type");
    return cJSON_IsString(t) && !strcmp(t->valuestring, type);
}

/* The regex of the first Split pre-tokenizer (inside a Sequence or alone), or
 * the GPT-2 regex implied by a ByteLevel pre-tokenizer with use_regex. */
static const char *split_regex(const cJSON *pre)
{
    static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    const cJSON *e;
    if (type_is(pre, "Sequence")) {
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(pre, "pretokenizers")) {
            const char *r = split_regex(e);
            if (r) return r;
        }
        return NULL;
    }
    if (type_is(pre, "Split")) {
        e = cJSON_GetObjectItem(cJSON_GetObjectItem(pre, "pattern"), "Regex");
        return cJSON_IsString(e) ? e->valuestring : NULL;
    }
    if (type_is(pre, "ByteLevel") && cJSON_IsTrue(cJSON_GetObjectItem(pre, "use_regex"))) return gpt2;
    return NULL;
}

/* Pre-tokenizer name llama.cpp knows, recognised from the split regex: GPT-2's
 * (" ?\p{N}+"), Llama 3's (digits in runs of up to 3), Qwen2's (single digits). */
static const char *pre_tokenizer_name(const cJSON *tok)
{
    const char *r = split_regex(cJSON_GetObjectItem(tok, "pre_tokenizer"));
    if (!r) return "default";
    if (strstr(r, "\\p{N}{1,3}")) return "llama-bpe";
    if (strstr(r, "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|")) return "qwen2";
    if (strstr(r, " ?\\p{L}+| ?\\p{N}+")) return "gpt-2";
    return "default";
}

/* Content of a tokenizer_config entry: a string or {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key)
{
    const cJSON *e = cJSON_GetObjectItem(cfg, key);
    if (cJSON_IsObject(e)) e = cJSON_GetObjectItem(e, "content");
    return cJSON_IsString(e) ? e->valuestring : NULL;
}

static int added_token_id(const cJSON *tok, const char *content)
{
    const cJSON *e;
    if (!content) return -1;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(tok, "added_tokens")) {
        const cJSON *c = cJSON_GetObjectItem(e, "content"), *id = cJSON_GetObjectItem(e, "id");
        if (cJSON_IsString(c) && cJSON_IsNumber(id) && !strcmp(c->valuestring, content)) return id->valueint;
    }
    return -1;
}

/* Special token ids: tokenizer_config's *_token matched against added_tokens,
 * else config.json's *_token_id. */
static int set_special_ids(ar_gguf_writer *w, const cJSON *tok, const cJSON *cfg, const cJSON *config)
{
    static const struct { const char *typ, *key; } sp[] = {
        {"bos", "bos_token_id"}, {"eos", "eos_token_id"}, {"unk", "unknown_token_id"},
        {"sep", "seperator_token_id"}, {"pad", "padding_token_id"}, {"cls", "cls_token_id"}, {"mask", "mask_token_id"},
    };
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++) {
        char k[64], gk[96];
        snprintf(k, sizeof k, "%s_token", sp[i].typ);
        int id = added_token_id(tok, config_token(cfg, k));
        if (id < 0) {
            snprintf(k, sizeof k, "%s_token_id", sp[i].typ);
            const cJSON *e = cJSON_GetObjectItem(config, k);
            if (cJSON_IsNumber(e)) id = e->valueint;
        }
        snprintf(gk, sizeof gk, "tokenizer.ggml.%s", sp[i].key);
        if (id >= 0 && ar_gguf_set_u32(w, gk, (uint32_t)id)) return -1;
    }
    return 0;
}

static const char *special_id_of(const cJSON *item)
{
    const cJSON *s = cJSON_GetObjectItem(cJSON_GetObjectItem(item, "SpecialToken"), "id");
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

static int is_one_of(const char *s, const char *a, const char *b)
{
    return s && ((a && !strcmp(s, a)) || (b && !strcmp(s, b)));
}

/* Whether BOS/EOS/SEP are added, read from a TemplateProcessing post-processor
 * (first/last special of the single template; a separator between A and B of
 * the pair template), overridden by tokenizer_config's add_*_token. -1 = unknown. */
static void add_flags(const cJSON *tok, const cJSON *cfg, int *bos, int *eos, int *sep)
{
    const char *bos_s = config_token(cfg, "bos_token"), *eos_s = config_token(cfg, "eos_token");
    const char *sep_s = config_token(cfg, "sep_token");
    const cJSON *pp = cJSON_GetObjectItem(tok, "post_processor");
    *bos = *eos = *sep = -1;
    if (pp && cJSON_IsString(cJSON_GetObjectItem(pp, "type")) &&
        !strcmp(cJSON_GetObjectItem(pp, "type")->valuestring, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItem(pp, "single"), *pair = cJSON_GetObjectItem(pp, "pair");
        int ns = cJSON_GetArraySize(single), np = cJSON_GetArraySize(pair);
        const char *first = ns > 1 ? special_id_of(cJSON_GetArrayItem(single, 0)) : NULL;
        const char *last = ns > 1 ? special_id_of(cJSON_GetArrayItem(single, ns - 1)) : NULL;
        if (first) *bos = is_one_of(first, bos_s, NULL);
        if (last) *eos = is_one_of(last, eos_s, NULL);
        int start = first && np && is_one_of(special_id_of(cJSON_GetArrayItem(pair, 0)), first, NULL);
        int stop = np - (last && np && is_one_of(special_id_of(cJSON_GetArrayItem(pair, np - 1)), last, NULL));
        if (stop - start >= 3) {   /* A, separator(s), B */
            const char *mid = special_id_of(cJSON_GetArrayItem(pair, start + 1));
            *sep = is_one_of(mid, sep_s, eos_s) && !last;
        }
    }
    const cJSON *e;
    if (cJSON_IsBool(e = cJSON_GetObjectItem(cfg, "add_bos_token"))) *bos = cJSON_IsTrue(e);
    if (cJSON_IsBool(e = cJSON_GetObjectItem(cfg, "add_eos_token"))) *eos = cJSON_IsTrue(e);
    if (cJSON_IsBool(e = cJSON_GetObjectItem(cfg, "add_sep_token"))) *sep = cJSON_IsTrue(e);
}

static int set_vocab_arrays(ar_gguf_writer *w, const vocab *v)
{
    if (ar_gguf_set_arr_str(w, "tokenizer.ggml.tokens", v->text, (uint64_t)v->n)) return -1;
    if (v->spm && ar_gguf_set_arr(w, "tokenizer.ggml.scores", AR_GGUF_FLOAT32, v->score, (uint64_t)v->n)) return -1;
    return ar_gguf_set_arr(w, "tokenizer.ggml.token_type", AR_GGUF_INT32, v->type, (uint64_t)v->n);
}

static int set_tokenizer_from(ar_gguf_writer *w, const cJSON *tok, const cJSON *cfg, const cJSON *config,
                              const char *path)
{
    const cJSON *model = cJSON_GetObjectItem(tok, "model");
    const cJSON *type = cJSON_GetObjectItem(model, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE"))
        return ar_error("%s: unsupported tokenizer model (only BPE)", path);
    const cJSON *cv = cJSON_GetObjectItem(config, "vocab_size");
    vocab v = {0};
    int rc = build_vocab(&v, tok, cJSON_IsNumber(cv) ? cv->valueint : 0, path);
    if (!rc) rc = ar_gguf_set_str(w, "tokenizer.ggml.model", v.spm ? "llama" : "gpt2") |
                  ar_gguf_set_str(w, "tokenizer.ggml.pre", v.spm ? "default" : pre_tokenizer_name(tok));
    if (!rc) rc = set_vocab_arrays(w, &v);
    if (!rc && !v.spm) rc = set_merges(w, cJSON_GetObjectItem(model, "merges"), path);
    if (!rc) rc = set_special_ids(w, tok, cfg, config);
    int bos, eos, sep;
    add_flags(tok, cfg, &bos, &eos, &sep);
    if (!rc && bos >= 0) rc = ar_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", bos);
    if (!rc && sep >= 0) rc = ar_gguf_set_bool(w, "tokenizer.ggml.add_sep_token", sep);
    if (!rc && eos >= 0) rc = ar_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", eos);
    const cJSON *e = cJSON_GetObjectItem(cfg, "add_prefix_space");
    if (!rc && v.spm && cJSON_IsBool(e)) rc = ar_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", cJSON_IsTrue(e));
    e = cJSON_GetObjectItem(cfg, "chat_template");
    if (!rc && cJSON_IsString(e)) rc = ar_gguf_set_str(w, "tokenizer.chat_template", e->valuestring);
    vocab_free(&v);
    return rc ? -1 : 0;
}

int ar_gguf_set_tokenizer(ar_gguf_writer *w, const char *model_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    cJSON *tok = read_json(model_dir, "tokenizer.json", 1);
    if (!tok) return -1;
    cJSON *cfg = read_json(model_dir, "tokenizer_config.json", 0);
    cJSON *config = read_json(model_dir, "config.json", 0);
    int rc = set_tokenizer_from(w, tok, cfg, config, path);
    cJSON_Delete(tok); cJSON_Delete(cfg); cJSON_Delete(config);
    return rc;
}

