/* quant.h — the quantizers' entry points: check a spec, fake-quantize one
 * Linear weight, its straight-through backward, opt-RTN, and the importance
 * matrices opt-RTN weighs with. Each entry point hands the spec to the
 * quantizer of its dtype (quant_spec.h): integers to quant_int.h, MXFP4 /
 * MXFP8 / NVFP4 / FP8 to quant_fp.h, GGML blocks with frozen scales to
 * quant_ggml.h, so a caller needs no other header to tune any of them. */
#ifndef AR_QUANT_H
#define AR_QUANT_H
#include "quant_int.h"
#include "quant_spec.h"

/* Check a spec of any dtype (bits, group size, sym/asym support, the dtype's
 * own rules); 0 or -1 with ar_error set. Every entry point below calls it. */
int ar_quant_spec_check(const ar_quant_spec *qs);

/* Fake-quantize W [N, K] with the tunables p (may be NULL) into out, by the
 * spec's dtype (formulas in its quantizer's header). Returns 0, or -1 with
 * ar_error set for a bad spec or arguments. */
int ar_quant_forward(const ar_quant_spec *qs, const float *w, int n, int k,
                     const ar_quant_params *p, const ar_quant_out *out);

/* Straight-through backward of ar_quant_forward: given dL/dŵ [N, K], ADD
 * dL/dV [N, K], dL/dα and dL/dβ [N, ngroups] into dv, dalpha, dbeta (each may
 * be NULL; GGML blocks tune V only). Returns 0 or -1. */
int ar_quant_backward(const ar_quant_spec *qs, const float *w, int n, int k,
                      const ar_quant_params *p, const float *dwq,
                      float *dv, float *dalpha, float *dbeta);

/* RTN with an importance matrix imat [K] (may be NULL), AutoRound's iters=0
 * path, by the spec's dtype (ar_quant_int_opt_rtn, ar_quant_fp_opt_rtn; GGML
 * blocks: their frozen-scale forward). Outputs as ar_quant_forward. */
int ar_quant_opt_rtn(const ar_quant_spec *qs, const float *w, int n, int k,
                     const float *imat, const ar_quant_out *out);

/* ---- importance matrices (spec §2.11) ----------------------------------- */

/* Add Σ_t x[t, k]² over ntok tokens of x [ntok, K] into imat [K] (the tokens
 * of one forward call). */
void ar_imatrix_accumulate(float *imat, const float *x, long ntok, int k);

/* Divide imat [K] by the number of calibration SEQUENCES seen (AutoRound's
 * imatrix_cnt; llama.cpp divides by tokens instead — only a scale factor). */
void ar_imatrix_finalize(float *imat, int k, long nseq);

#endif
