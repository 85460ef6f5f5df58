/* mxfp4.h — gpt-oss checkpoints' MXFP4 expert weights widened to f32.
 *
 * The released gpt-oss checkpoints store each fused expert weight NAME
 * (mlp.experts.gate_up_proj, mlp.experts.down_proj) as two U8 tensors:
 *   NAME_blocks [E, N, G, 16]: 32 FP4 (E2M1) codes per block, two per byte,
 *                              the low nibble first;
 *   NAME_scales [E, N, G]:     one E8M0 exponent per block, 2^(s - 127);
 * N output rows of K = 32 G inputs per expert. Value j of a block is
 * FP4[code] * 2^(s - 127), FP4 = {0, .5, 1, 1.5, 2, 3, 4, 6} and their
 * negatives for codes 8..15 (transformers 5.25 integrations/mxfp4.py:
 * FP4_VALUES L28, _convert_moe_packed_tensors L228-285: lut[blk & 15] to the
 * even positions, lut[blk >> 4] to the odd ones, torch.ldexp). Every such
 * value is exact in f32 (and in bf16, transformers' default dtype), so the
 * widening is exact up to the f32 range: s = 255 (NaN in the OCP MX
 * specification) and 254 give what torch.ldexp gives, the exact product
 * rounded to f32: 0 stays 0, 0.5 * 2^128 = 2^127, larger codes overflow to
 * inf (checked against transformers in tests/unit/test_mxfp4.c).
 *
 * transformers then transposes to its parameter's layout [E, K, N]
 * (gate_up_proj [E, hidden, 2 intermediate] with gate/up interleaved in
 * the last dimension, down_proj [E, intermediate, hidden]): the layout of
 * the BF16 checkpoints' fused tensors. */
#ifndef AR_MXFP4_H
#define AR_MXFP4_H
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* out [rows, 32] = the blocks [rows, 16] bytes with their scales [rows]. */
void ar_mxfp4_decode(float *out, const uint8_t *blocks, const uint8_t *scales, int64_t rows);

/* 1 when st holds NAME_blocks (an MXFP4 weight to read with ar_st_read_mxfp4). */
int ar_st_has_mxfp4(const ar_safetensors *st, const char *name);

/* The shape {E, N, K} of MXFP4 weight name after validating NAME_blocks and
 * NAME_scales: both present and U8, blocks 4-D with 16 bytes per block,
 * scales 3-D and equal to blocks' first three dimensions. -1 with ar_error
 * naming the file and the problem otherwise, e.g. "m.safetensors: MXFP4
 * scales 'X_scales' [2, 3, 4] do not match blocks 'X_blocks' [2, 3, 2, 16]". */
int ar_st_mxfp4_shape(const ar_safetensors *st, const char *name, int64_t shape[3]);

/* Widens MXFP4 weight name into dst (n floats, n = E N K): transposed 0:
 * [E, N, K] (each expert's rows as an nn.Linear holds them); 1: [E, K, N]
 * (transformers' parameter layout). -1 with ar_error when the tensors are
 * invalid (as above) or n is not E N K. */
int ar_st_read_mxfp4(const ar_safetensors *st, const char *name, float *dst, size_t n, int transposed);
#endif
