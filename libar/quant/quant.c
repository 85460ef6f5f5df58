/* quant.c — the quantizers' entry points: each hands the spec to the
 * quantizer of its dtype (quant.h), plus the importance matrices. */
#include "quant.h"
#include "quant_fp.h"
#include "quant_ggml.h"
#include "error.h"

/* Work below this many elements is not worth waking OpenMP threads for. */
#define AR_QUANT_PAR_MIN (1 << 15)

int ar_quant_spec_check(const ar_quant_spec *qs)
{
    if (!qs) return ar_error("quant: no spec");
    if (qs->dtype == AR_QDT_GGUF) return ar_quant_gguf_check(qs);
    if (qs->dtype != AR_QDT_INT) return ar_quant_fp_check(qs);
    return ar_quant_int_check(qs);
}

int ar_quant_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                     const ar_quant_params *p, const ar_quant_out *out)
{
    if (qs && qs->dtype == AR_QDT_GGUF) return ar_quant_gguf_forward(qs, w, n, k, p, out);
    if (qs && qs->dtype != AR_QDT_INT) return ar_quant_fp_forward(qs, w, n, k, p, out);
    return ar_quant_int_forward(qs, w, n, k, p, out);
}

int ar_quant_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                      const ar_quant_params *p, const float *dwq,
                      float *dv, float *dalpha, float *dbeta)
{
    if (qs && qs->dtype == AR_QDT_GGUF) return ar_quant_gguf_backward(qs, w, n, k, p, dwq, dv);
    if (qs && qs->dtype != AR_QDT_INT) return ar_quant_fp_backward(qs, w, n, k, p, dwq, dv, dalpha, dbeta);
    return ar_quant_int_backward(qs, w, n, k, p, dwq, dv, dalpha, dbeta);
}

int ar_quant_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                     const float *imat, const ar_quant_out *out)
{
    if (qs && qs->dtype == AR_QDT_GGUF) return ar_quant_gguf_forward(qs, w, n, k, NULL, out);
    if (qs && qs->dtype != AR_QDT_INT) return ar_quant_fp_opt_rtn(qs, w, n, k, imat, out);
    return ar_quant_int_opt_rtn(qs, w, n, k, imat, out);
}

void ar_imatrix_accumulate(float *imat, const float *x, long ntok, int k)
{
    /* Sum each column in double, then add once: AutoRound sums one forward
     * call's tokens in f32 with a tree reduction; double is closer to that
     * than a long naive f32 loop. */
    #pragma omp parallel for schedule(static) if (ntok * k >= AR_QUANT_PAR_MIN)
    for (int c = 0; c < k; c++) {
        double acc = 0.0;
        for (long t = 0; t < ntok; t++) { double v = x[t * k + c]; acc += v * v; }
        imat[c] += (float)acc;
    }
}

void ar_imatrix_finalize(float *imat, int k, long nseq)
{
    if (nseq <= 0) return;
    for (int c = 0; c < k; c++) imat[c] /= (float)nseq;
}
