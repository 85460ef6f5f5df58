/* quant_ggml.c — SignRound's GGUF kind: frozen GGML scales, tuned rounding
 * (see quant_ggml.h for the formulas). */
#include "quant_ggml.h"
#include "error.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Work below this many elements is not worth waking OpenMP threads for. */
#define GGUF_PAR_MIN (1 << 15)

/* The lowest stored code: Q8_0 keeps the symmetric ±127 range. */
static int lowest_code(const ar_quant_spec *qs) { return qs->ggml_type == AR_GGML_Q8_0 ? 1 : 0; }

int ar_quant_gguf_check(const ar_quant_spec *qs)
{
    ar_ggml_grid g;
    if (ar_ggml_grid_of((ar_ggml_type)qs->ggml_type, &g)) return ar_error_prefix("quant");
    if (qs->group_size != g.group)
        return ar_error("quant: %s groups are %d elements, not %d", ar_ggml_type_name((ar_ggml_type)qs->ggml_type),
                        g.group, qs->group_size);
    if (!qs->gguf_scale || (g.asym && !qs->gguf_min))
        return ar_error("quant: %s needs its frozen scales%s", ar_ggml_type_name((ar_ggml_type)qs->ggml_type),
                        g.asym ? " and mins" : "");
    return 0;
}

/* Shared argument checks of forward and backward; fills the grid. */
static int gguf_setup(const ar_quant_spec *qs, int n, int k, ar_ggml_grid *g)
{
    if (!qs || ar_quant_gguf_check(qs)) return -1;
    ar_ggml_grid_of((ar_ggml_type)qs->ggml_type, g);
    if (n <= 0 || k <= 0 || k % g->group)
        return ar_error("quant: %s weight [%d, %d]: K is not a multiple of the group of %d",
                        ar_ggml_type_name((ar_ggml_type)qs->ggml_type), n, k, g->group);
    return 0;
}

int ar_quant_gguf_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                          const ar_quant_params *p, const ar_quant_out *out)
{
    ar_ggml_grid g;
    if (gguf_setup(qs, n, k, &g)) return -1;
    const float *v = p ? p->v : NULL;
    const int64_t total = (int64_t)n * k, ngr = total / g.group;
    const ar_ggml_type t = (ar_ggml_type)qs->ggml_type;
    if (out->wq) {
        /* Row by row so large weights use every thread; the kernel is elementwise. */
        int fail = 0;
        #pragma omp parallel for schedule(static) reduction(|:fail) if (total >= GGUF_PAR_MIN)
        for (int r = 0; r < n; r++) {
            size_t o = (size_t)r * k, go = o / g.group;
            fail |= ar_ggml_fake_quant(t, w + o, v ? v + o : NULL, qs->gguf_scale + go,
                                       qs->gguf_min ? qs->gguf_min + go : NULL, k, out->wq + o) != 0;
        }
        if (fail) return -1;
    }
    if (out->codes) {
        const int lo = lowest_code(qs) - g.offset, hi = g.qmax - g.offset;
        for (int64_t i = 0; i < total; i++) {
            float s = qs->gguf_scale[i / g.group], m = qs->gguf_min ? qs->gguf_min[i / g.group] : 0.f;
            float u = s ? nearbyintf((w[i] + m) / s + (v ? v[i] : 0.f)) : 0.f;
            u = u < lo ? lo : u > hi ? hi : u;
            out->codes[i] = (uint8_t)((int)u + g.offset);
        }
    }
    if (out->scale) memcpy(out->scale, qs->gguf_scale, sizeof(float) * (size_t)ngr);
    if (out->zp) for (int64_t r = 0; r < ngr; r++) out->zp[r] = g.offset;
    return 0;
}

int ar_quant_gguf_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                           const ar_quant_params *p, const float *dwq, float *dv)
{
    ar_ggml_grid g;
    if (gguf_setup(qs, n, k, &g)) return -1;
    if (!dv) return 0;
    const float *v = p ? p->v : NULL;
    const float lo = (float)(lowest_code(qs) - g.offset), hi = (float)(g.qmax - g.offset);
    const int64_t total = (int64_t)n * k;
    #pragma omp parallel for schedule(static) if (total >= GGUF_PAR_MIN)
    for (int64_t i = 0; i < total; i++) {
        float s = qs->gguf_scale[i / g.group], m = qs->gguf_min ? qs->gguf_min[i / g.group] : 0.f;
        if (!s) continue;   /* ŵ = −m whatever V is */
        /* nearbyintf rounds half to even in the default mode, as the forward does */
        float u = nearbyintf((w[i] + m) / s + (v ? v[i] : 0.f));
        /* open interval: torch.clamp with number bounds (AutoRound's GGUF
         * path clamps the rounded level so) passes no gradient at a bound */
        if (u > lo && u < hi) dv[i] += s * dwq[i];
    }
    return 0;
}

int ar_quant_gguf_freeze(ar_ggml_type t, const void *blocks, int n, int k, ar_gguf_frozen *fz,
                         ar_quant_spec *qs)
{
    ar_ggml_grid g;
    memset(fz, 0, sizeof *fz);
    if (ar_ggml_grid_of(t, &g)) return -1;
    if (n <= 0 || ar_ggml_row_bytes(t, k) == 0)
        return ar_error("quant: %s weight [%d, %d]: K is not a multiple of the block of %d", ar_ggml_type_name(t),
                        n, k, ar_ggml_block_elems(t));
    size_t ngr = (size_t)n * k / g.group;
    fz->scale = malloc(sizeof(float) * ngr);
    fz->min = g.asym ? malloc(sizeof(float) * ngr) : NULL;
    if (!fz->scale || (g.asym && !fz->min)) {
        ar_gguf_frozen_free(fz);
        return ar_error("quant: out of memory for %zu frozen %s scales", ngr, ar_ggml_type_name(t));
    }
    if (ar_ggml_frozen_params(t, blocks, (int64_t)n * k, fz->scale, fz->min)) {
        ar_gguf_frozen_free(fz);
        return -1;
    }
    memset(qs, 0, sizeof *qs);
    qs->bits = (int)lrint(log2(g.qmax + 1.0));
    qs->group_size = g.group;
    qs->sym = !g.asym;
    qs->flags = AR_QF_F32_SCALE;
    qs->dtype = AR_QDT_GGUF;
    qs->ggml_type = t;
    qs->gguf_scale = fz->scale;
    qs->gguf_min = fz->min;
    return 0;
}

void ar_gguf_frozen_free(ar_gguf_frozen *fz)
{
    free(fz->scale);
    free(fz->min);
    fz->scale = fz->min = NULL;
}

int ar_quant_gguf_store(const ar_quant_spec *qs, const float *wq, int n, int k, void *blocks)
{
    ar_ggml_grid g;
    if (gguf_setup(qs, n, k, &g)) return -1;
    const ar_ggml_type t = (ar_ggml_type)qs->ggml_type;
    const size_t rb = ar_ggml_row_bytes(t, k);
    if (!rb) return ar_error("quant: %s rows of %d are not whole blocks", ar_ggml_type_name(t), k);
    float *back = malloc(sizeof(float) * (size_t)k);
    if (!back) return ar_error("quant: out of memory");
    int rc = 0;
    for (int r = 0; r < n && !rc; r++) {
        uint8_t *row = (uint8_t *)blocks + (size_t)r * rb;
        const float *x = wq + (size_t)r * k;
        if (ar_ggml_requantize_codes(t, x, NULL, row, k) || ar_ggml_dequantize(t, row, back, k)) { rc = -1; break; }
        for (int j = 0; j < k; j++)
            if (back[j] != x[j]) {   /* == also equates the −0 of a zero-scale group with +0 */
                rc = ar_error("quant: %s row %d column %d: stored blocks give %g, tuned weight %g",
                              ar_ggml_type_name(t), r, j, back[j], x[j]);
                break;
            }
    }
    free(back);
    return rc;
}
