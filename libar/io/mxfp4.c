/* mxfp4.c — gpt-oss MXFP4 expert weights (see mxfp4.h). */
#include "mxfp4.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static const float fp4_values[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

void ar_mxfp4_decode(float *out, const uint8_t *blocks, const uint8_t *scales, int64_t rows)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int e = (int)scales[r] - 127;
        const uint8_t *b = blocks + r * 16;
        float *o = out + r * 32;
        for (int j = 0; j < 16; j++) { /* ldexpf: exact, inf past the f32 range */
            o[2 * j] = ldexpf(fp4_values[b[j] & 15], e);
            o[2 * j + 1] = ldexpf(fp4_values[b[j] >> 4], e);
        }
    }
}

/* "NAME_blocks" / "NAME_scales" into key (cap bytes); 0 when it fits. */
static int key_of(char *key, size_t cap, const char *name, const char *suffix)
{
    return (size_t)snprintf(key, cap, "%s%s", name, suffix) >= cap;
}

int ar_st_has_mxfp4(const ar_safetensors *st, const char *name)
{
    char key[512];
    return !key_of(key, sizeof key, name, "_blocks") && ar_st_find(st, key) != NULL;
}

static void shape_str(char *s, size_t cap, const ar_st_tensor *t)
{
    size_t n = (size_t)snprintf(s, cap, "[");
    for (int i = 0; i < t->ndim && n < cap; i++) n += (size_t)snprintf(s + n, cap - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (n < cap) snprintf(s + n, cap - n, "]");
}

int ar_st_mxfp4_shape(const ar_safetensors *st, const char *name, int64_t shape[3])
{
    char kb[512], ks[512], sb[96], ss[96];
    if (key_of(kb, sizeof kb, name, "_blocks") || key_of(ks, sizeof ks, name, "_scales"))
        return ar_error("MXFP4 tensor name '%s' is too long", name);
    const ar_st_tensor *b = ar_st_find(st, kb), *s = ar_st_find(st, ks);
    if (!b) return ar_error("safetensors: no MXFP4 blocks '%s'", kb);
    if (!s) return ar_error("%s: MXFP4 blocks '%s' have no scales '%s'", b->file, kb, ks);
    if (b->dtype != AR_U8 || s->dtype != AR_U8)
        return ar_error("%s: MXFP4 blocks '%s' and scales '%s' must be U8", b->dtype != AR_U8 ? b->file : s->file, kb, ks);
    shape_str(sb, sizeof sb, b), shape_str(ss, sizeof ss, s);
    if (b->ndim != 4 || b->shape[3] != 16)
        return ar_error("%s: MXFP4 blocks '%s' %s are not [experts, rows, blocks, 16]", b->file, kb, sb);
    if (s->ndim != 3 || s->shape[0] != b->shape[0] || s->shape[1] != b->shape[1] || s->shape[2] != b->shape[2])
        return ar_error("%s: MXFP4 scales '%s' %s do not match blocks '%s' %s", s->file, ks, ss, kb, sb);
    shape[0] = b->shape[0], shape[1] = b->shape[1], shape[2] = b->shape[2] * 32;
    return 0;
}

int ar_st_read_mxfp4(const ar_safetensors *st, const char *name, float *dst, size_t n, int transposed)
{
    int64_t sh[3];
    if (ar_st_mxfp4_shape(st, name, sh)) return -1;
    int64_t E = sh[0], N = sh[1], K = sh[2];
    if ((int64_t)n != E * N * K)
        return ar_error("MXFP4 tensor '%s' [%lld, %lld, %lld] does not fit %zu floats", name, (long long)E,
                        (long long)N, (long long)K, n);
    char kb[512], ks[512];
    key_of(kb, sizeof kb, name, "_blocks"), key_of(ks, sizeof ks, name, "_scales");
    const uint8_t *blocks = ar_st_find(st, kb)->data, *scales = ar_st_find(st, ks)->data;
    if (!transposed) {
        ar_mxfp4_decode(dst, blocks, scales, E * N * (K / 32));
        return 0;
    }
    /* one expert's [N, K] at a time, then transposed into [K, N] */
    float *tmp = malloc(sizeof(float) * N * K);
    if (!tmp) return ar_error("MXFP4 tensor '%s': out of memory", name);
    for (int64_t e = 0; e < E; e++) {
        ar_mxfp4_decode(tmp, blocks + e * N * (K / 32) * 16, scales + e * N * (K / 32), N * (K / 32));
        float *o = dst + e * N * K;
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < K; k++)
            for (int64_t r = 0; r < N; r++) o[k * N + r] = tmp[r * K + k];
    }
    free(tmp);
    return 0;
}
