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
 * reading a layer's experts in turn widens each fused tensor once).
 *
 * The other MoE families (Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V2/V3) keep
 * the same names in transformers 5 memory (e.g. models/qwen3_moe/
 * modeling_qwen3_moe.py Qwen3MoeExperts) but another layout, which
 * save_pretrained(save_original_format=False) writes as is:
 *   mlp.experts.gate_up_proj [E, 2I, H] = per expert [gate_proj.weight ;
 *   up_proj.weight] stacked on the rows (conversion_mapping.py:
 *   MergeModulelist(dim=0) then Concatenate(dim=1)), no biases,
 *   mlp.experts.down_proj [E, H, I] = the down_proj.weight of each expert.
 * Which layout a checkpoint uses is the config's business (gpt-oss or not),
 * not the shapes' (H = 2I is ambiguous), so the caller says. */
#ifndef AR_FUSED_EXPERTS_H
#define AR_FUSED_EXPERTS_H
#include <stdint.h>

#include "safetensors.h"

/* The functions of model.h's ar_tensor_source over a context made by
 * ar_fused_source_new(st), which owns st (closed by ar_fused_close, or at
 * once when out of memory: NULL, ar_error set). */
enum { AR_FUSED_GPT_OSS = 0,   /* [E, H, 2I] gate/up interleaved columns, [E, I, H] */
       AR_FUSED_ROWS = 1 };     /* [E, 2I, H] gate rows then up rows, [E, H, I] */
void *ar_fused_source_new(ar_safetensors *st, int layout);

/* 1 when st holds a fused expert tensor (BF16 or MXFP4) of any layer. */
int ar_fused_present(const ar_safetensors *st);

/* The layout of model_dir's fused experts by its config.json: gpt-oss's or
 * the rows layout for every other architecture. */
int ar_fused_layout_of(const char *model_dir);
int ar_fused_shape(void *ctx, const char *name, int *ndim, int64_t *shape);
int ar_fused_read_rows(void *ctx, const char *name, int64_t row0, int64_t nrows, float *dst);
void ar_fused_close(void *ctx);

#endif
