/* block_desc.h — a decoder block described as data: its linears (HF name,
 * shape, which activation feeds each), its norms, and its family's
 * forward/backward. Consumers that only need names, shapes or which linears
 * share an input (the pipeline's plan, statistics such as imatrix/act_max,
 * stream record names, exporters) read the description instead of
 * hard-coding the seven Llama linears; adding a family then means a
 * description plus its forward/backward.
 *
 * Four families: "llama" covers Llama, Mistral, Qwen2 and Qwen3 (config
 * flags give the biases and Qwen3's QK-norm); "gemma" Gemma 2 and Gemma 3
 * (block_gemma.c: four norms, GeLU-tanh, soft-capping). Both list their
 * linears in the AR_Q..AR_DOWN order of block.h, so desc.lin[i] is linear i
 * everywhere. "phi3" (fused qkv_proj and gate_up_proj, 4 linears) and "glm4"
 * (6 linears, post norms) have their own forward/backward in block_fused.c.
 *
 * Inputs. Each linear names the activation it multiplies by an index into
 * input_names; linears with the same input see the same rows, so they share
 * input statistics (importance matrices, act_max, activation quantization of
 * equal specs) and could be fused (q/k/v read "ln1", gate/up read "ln2").
 * The first linear of an input is its group's leader (ar_block_desc_group).
 *
 * What comes next (design, not yet implemented):
 *  - MoE: a block with E experts lists 3*E expert linears
 *    ("mlp.experts.%d.gate_proj", ...) plus the router ("mlp.gate", input
 *    "ln2"); each expert's gate/up get their own input index, an input whose
 *    rows are the routed token subset of "ln2" for that expert (input_kind
 *    AR_INPUT_ROUTED with the expert number), and its down reads that
 *    expert's "act". Statistics are then per routed subset, as they must be:
 *    an expert sees only its tokens. lin is allocated, so hundreds of linears
 *    cost nothing to the description itself.
 *  - Fused QKV: one linear "self_attn.qkv_proj" of n_out QD+2*KD with a
 *    split recorded next to it; extra norms and attention variants are new
 *    entries in norms and a family's own forward/backward.
 *
 * Who reads it now, iterating over nlinear with storage sized by it: the
 * tuning pipeline (tn_run.bd: plan names and shapes, output records, the
 * NVFP4 global scales and the imatrix/act_max of an input group, the
 * family's forward for statistics), ar_block_plan (signround.h: its arrays,
 * ar_block_plan_outputs, and the CPU tuner, which takes the shapes and the
 * forward/backward/set_act_quant from plan->desc), GGUF blocks
 * (ar_gguf_quantize_block, ar_gguf_embedding_importance), AutoScheme (slots
 * l*nlinear + i, ar_autoscheme_nslots; shapes, forward/backward, act_quant
 * and acts_input from the model's description, ar_model_block_desc), the
 * model's tensor table (model.c) and formats/act_config.c. Block weights
 * (block.h) hold nlinear pointers
 * (ar_block_weights_alloc sizes them by the description; a block with some
 * linears swapped is an ar_block_weights_view), and so do the model's tensor
 * slots and per-layer activation quantizers (model.c, act_config.c).
 * tests/unit/test_block_family.c runs a five-linear fused-QKV family and a
 * nine-linear split-MLP family through the plan, the outputs, the CPU tuner
 * and GGUF blocks, against the Llama description's bytes.
 *
 * Still fixed at AR_NLINEAR (the next step):
 *  - the GPU path: signround_cuda.c, device.c, model_cuda.c, kernels/ keep
 *    the Llama block (tn_signround_block sends only the "llama" family's plans there;
 *    ar_tune_run and ar_model_gpu_open refuse the "gemma" family on a GPU);
 *  - AutoScheme's head (autoscheme*.c) is Llama's plain final norm and logits:
 *    it refuses the "gemma" family;
 *  - the family itself, as its own code: block.c's ar_block_work.act_q,
 *    dW/dxin indices of ar_block_backward*, input_group and
 *    ar_block_acts_input, the linear index passed to ws->observe. */
#ifndef AR_BLOCK_DESC_H
#define AR_BLOCK_DESC_H
#include "block.h"
#include "config.h"

/* One Linear of a block. */
typedef struct {
    const char *name;           /* HF sub-name under model.layers.L, e.g. "self_attn.q_proj" */
    int n_out, k_in;            /* weight [n_out, k_in] */
    int input;                  /* index into ar_block_desc.input_names of what feeds it */
    int has_bias;               /* carries a bias [n_out] */
} ar_linear_desc;

/* One norm weight of a block. */
typedef struct {
    const char *name;           /* HF sub-name, e.g. "input_layernorm" */
    int size;                   /* elements: C, or HD for a per-head QK-norm */
    int slot;                   /* the ar_block_weights field it fills: AR_NORM_* (block.h) */
} ar_norm_desc;

/* What kind of rows an input holds: every token (dense), or a routed subset
 * of the tokens of another input (MoE experts; not produced yet). */
enum { AR_INPUT_DENSE, AR_INPUT_ROUTED };

/* The family's functions, with block.h's contracts, linear i being
 * desc.lin[i] throughout: dW, dxin and aq have nlinear entries, and a
 * forward's ws->observe is called with description indices. */
typedef int (*ar_block_forward_fn)(const ar_config *c, const ar_block_weights *w, const float *x,
                                   float *y, int B, int T, ar_block_work *ws);
typedef int (*ar_block_forward_train_fn)(const ar_config *c, const ar_block_weights *w,
                                         const float *x, float *y, int B, int T,
                                         ar_block_work *ws, ar_block_acts *a);
typedef int (*ar_block_backward_fn)(const ar_config *c, const ar_block_weights *w,
                                    const ar_block_acts *a, const float *dy,
                                    float *const *dW, float *dx, float *const *dxin,
                                    ar_block_work *ws);
/* Install activation quantizers aq[nlinear] (entry i: linear i's, NULL: none)
 * in the family's work, as ar_block_set_act_quant does for "llama". */
typedef int (*ar_block_set_act_quant_fn)(ar_block_work *ws, const ar_act_spec *const *aq);
/* The saved input of linear i in a (ar_block_acts_input for "llama"). */
typedef const float *(*ar_block_acts_input_fn)(const ar_block_acts *a, int i);

#define AR_BLOCK_MAX_INPUTS 8
#define AR_BLOCK_MAX_NORMS 8

/* A block's description. lin is owned (ar_block_desc_free); the rest is
 * plain data, strings are static. */
typedef struct {
    const char *family;         /* "llama" or "gemma" */
    int nlinear;
    ar_linear_desc *lin;        /* [nlinear], block.h's order for "llama" */
    int ninput;
    const char *input_names[AR_BLOCK_MAX_INPUTS];  /* "ln1", "ao", "ln2", "act" */
    int input_kind[AR_BLOCK_MAX_INPUTS];           /* AR_INPUT_DENSE */
    int nnorm;
    ar_norm_desc norms[AR_BLOCK_MAX_NORMS];
    ar_block_forward_fn forward;
    ar_block_forward_train_fn forward_train;
    ar_block_backward_fn backward;  /* ar_block_backward_inputs' form (dxin may be NULL) */
    ar_block_set_act_quant_fn set_act_quant;
    ar_block_acts_input_fn acts_input;
} ar_block_desc;

/* Describe the blocks of config c. Returns 0, or -1 (ar_error) when out of
 * memory or the architecture has no description. */
int ar_block_desc_init(ar_block_desc *d, const ar_config *c);
void ar_block_desc_free(ar_block_desc *d);

/* The first linear that reads the same input as linear i (its group's
 * leader; i itself when it is first). */
int ar_block_desc_group(const ar_block_desc *d, int i);

/* Write "model.layers.LAYER.NAME" of linear i into buf (size bytes,
 * truncated as snprintf does); returns what snprintf returns. */
int ar_block_desc_layer_name(const ar_block_desc *d, int layer, int i, char *buf, int size);

#endif
