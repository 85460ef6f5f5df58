/* quant_act.h — fake-quantization of a Linear's input activations
 * (spec §2.12): dynamic or static, integer per token, MX (floor or RCEIL
 * shared exponent), NVFP4 with a static or per-call global scale, FP8 static
 * or dynamic. The weight quantizers (quant.h) do the group arithmetic; this
 * file picks and prepares them for activations. */
#ifndef AR_QUANT_ACT_H
#define AR_QUANT_ACT_H
#include "quant_spec.h"

/* How one Linear's input is fake-quantized while tuning (and evaluating). */
typedef struct {
    int   dtype;        /* AR_QDT_*; AR_QDT_INT with bits 8: per-token int8 */
    int   bits;         /* 4 or 8 */
    int   group_size;   /* along K: 32 MX, 16 NV, 128 FP8 block, -1 per token, 0 per tensor */
    int   dynamic;      /* 1: statistics per call; 0: static act_max */
    float act_max;      /* static scale source (FP8 static) / NVFP4 input amax; 0 = dynamic */
    int   rceil;        /* MX only: RCEIL shared exponent (act_data_type mx_fp_rceil) */
} ar_act_spec;

/* Fake-quantize x [rows, K] in place. NVFP4 uses the static global scale
 * 448·6/act_max (dynamic per-call max when act_max is 0). MX with rceil:
 * e = ceil(log2(amax/max_norm)) (amax = 0: 1), clamped to [−127, 127], no
 * saturation beyond the element clamp (spec §4.2). Returns 0 or -1. */
int ar_act_quant(const ar_act_spec *as, float *x, long rows, int k);

#endif
