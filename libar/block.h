/* block.h — one decoder block (pre-norm attention + SwiGLU MLP), forward and
 * backward over flat f32 buffers, llm.c style.
 *
 * Shapes: B sequences of T tokens, C = hidden, F = intermediate, NH/NKV heads of
 * HD dims. Activations are row-major [B*T, C]. Linear weights use Hugging Face's
 * layout W[N_out, K_in]: y = x W^T + b. */
#ifndef AR_BLOCK_H
#define AR_BLOCK_H
#include "config.h"

/* The seven Linear layers of a block, in this fixed order everywhere
 * (tuning, streams, packers). */
enum { AR_Q, AR_K, AR_V, AR_O, AR_GATE, AR_UP, AR_DOWN, AR_NLINEAR };
/* HF sub-names: "self_attn.q_proj", ..., "mlp.down_proj". */
extern const char *const ar_linear_names[AR_NLINEAR];

/* One block's weights, widened to f32. Optional tensors are NULL when the
 * architecture has none. */
typedef struct {
    float *w[AR_NLINEAR];       /* [N, K] each */
    float *b[AR_NLINEAR];       /* bias [N] or NULL */
    float *attn_norm;           /* input_layernorm [C] */
    float *mlp_norm;            /* post_attention_layernorm [C] */
    float *q_norm, *k_norm;     /* Qwen3 [HD] or NULL */
} ar_block_weights;

/* Out-features and in-features of linear i for config c. */
void ar_linear_shape(const ar_config *c, int i, int *n_out, int *k_in);

#endif
