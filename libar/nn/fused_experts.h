/* fused_experts.h — the safetensors tensor source, with gpt-oss's fused
 * expert tensors also readable under per-expert Linear names.
 *
 * gpt-oss checkpoints store a layer's experts as 3-D parameters
 * (transformers 5.25 models/gpt_oss/modeling_gpt_oss.py GptOssExperts):
 *   mlp.experts.gate_up_proj [E, H, 2I], gate/up columns interleaved
 *   (gate = [..., 0::2], up = [..., 1::2]), gate_up_proj_bias [E, 2I],
 *   mlp.experts.down_proj [E, I, H], down_proj_bias [E, H],
 * in BF16, or in MXFP4 as NAME_blocks / NAME_scales (io/mxfp4.h). The block
 * description names experts as AutoRound's unfused export does
 * (docs/moe.md §4): mlp.experts.E.gate_proj.weight [I, H] =
 * gate_up_proj[E][:, 0::2]^T, up_proj = [:, 1::2]^T, down_proj.weight
 * [H, I] = down_proj[E]^T, and the biases likewise. A name the checkpoint
 * holds is read as is; such a per-expert name absent from it is made from
 * the fused tensor (the last layer's fused tensors are kept widened, so
 * reading a layer's experts in turn widens each fused tensor once). */
#ifndef AR_FUSED_EXPERTS_H
#define AR_FUSED_EXPERTS_H
#include "model.h"
#include "safetensors.h"

/* src = the source over st (owned: closed by src->close). 0 or -1 (ar_error). */
int ar_source_safetensors_st(ar_tensor_source *src, ar_safetensors *st);

#endif
