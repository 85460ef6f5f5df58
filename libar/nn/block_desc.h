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
 *  - MoE (done for the forward, ar_block_desc_init_layer, block_moe.c): a
 *    block with E experts lists 3*E expert linears ("mlp.experts.%d.gate_proj",
 *    ...) after the attention's four; the router ("mlp.gate") is an fp entry,
 *    not a linear; each expert's gate/up get their own input, the routed token
 *    subset of "ln2" for that expert (AR_INPUT_ROUTED), and its down reads that
 *    expert's "act". Statistics are then per routed subset, as they must be:
 *    an expert sees only its tokens. Tuning and AutoScheme take one description
 *    per layer; GGUF still one per model (ar_block_desc_init refuses MoE configs).
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
 * numbered block by block, ar_autoscheme_nslots; shapes, forward/backward,
 * act_quant and acts_input from each block's description), the
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

#define AR_BLOCK_MAX_NORMS 8

/* A full-precision tensor of a block that is no linear to quantize (MoE
 * routers): where it goes in ar_block_weights, its HF sub-name, its shape
 * (cols 0: 1-D). */
enum { AR_FP_ROUTER, AR_FP_ROUTER_BIAS, AR_FP_SCORE_BIAS, AR_FP_SHARED_GATE, AR_FP_SINKS, AR_FP_N };
typedef struct {
    int kind;                   /* AR_FP_* */
    const char *name;           /* e.g. "mlp.gate" (".weight" / ".bias" / as is for a bias-like name) */
    int rows, cols;
} ar_fp_desc;

/* A block's description. lin, input_names, input_kind and the strings they
 * point to are owned (ar_block_desc_free); norms and fp are plain data. */
typedef struct {
    const char *family;         /* "llama", "gemma", "phi3", "glm4", "moe", "deepseek", "gpt_oss" */
    int nlinear;
    ar_linear_desc *lin;        /* [nlinear], block.h's order for "llama" */
    int ninput;
    const char **input_names;   /* [ninput] "ln1", "ao", "ln2", "act"; MoE also "ln2.e3", "act.e3", ... */
    int *input_kind;            /* [ninput] AR_INPUT_DENSE or AR_INPUT_ROUTED */
    int nnorm;
    ar_norm_desc norms[AR_BLOCK_MAX_NORMS];
    int nfp;
    ar_fp_desc fp[AR_FP_N];
    char *strings;              /* owned storage of the generated names */
    ar_block_forward_fn forward;
    ar_block_forward_train_fn forward_train;
    ar_block_backward_fn backward;  /* ar_block_backward_inputs' form (dxin may be NULL) */
    ar_block_set_act_quant_fn set_act_quant;
    ar_block_acts_input_fn acts_input;
} ar_block_desc;

/* Describe the blocks of config c. Returns 0, or -1 (ar_error) when out of
 * memory or the architecture has no description, or its blocks differ per
 * layer (mixtures of experts: use ar_block_desc_init_layer). */
int ar_block_desc_init(ar_block_desc *d, const ar_config *c);

/* Describe block layer of config c: the "moe" family for a layer whose MLP is
 * a mixture of experts (ar_config_layer_moe), else "llama". MoE linears:
 * q, k, v, o (AR_Q..AR_O), then per expert e "mlp.experts.E.gate_proj",
 * "up_proj", "down_proj" at 4+3e+0..2, then the shared expert's three (Qwen2-MoE
 * "mlp.shared_expert.*", DeepSeek "mlp.shared_experts.*"); expert e's gate/up
 * read the routed input "ln2.eE" and its down "act.eE" (AR_INPUT_ROUTED); the
 * router and shared gate are fp entries. 0 or -1 (ar_error). */
int ar_block_desc_init_layer(ar_block_desc *d, const ar_config *c, int layer);
void ar_block_desc_free(ar_block_desc *d);

/* The first linear that reads the same input as linear i (its group's
 * leader; i itself when it is first). */
int ar_block_desc_group(const ar_block_desc *d, int i);

/* Write "model.layers.LAYER.NAME" of linear i into buf (size bytes,
 * truncated as snprintf does); returns what snprintf returns. */
int ar_block_desc_layer_name(const ar_block_desc *d, int layer, int i, char *buf, int size);

/* The routed expert linear i belongs to (an "mlp.experts.E." linear reading
 * a routed input), or -1 (attention, shared expert, dense MLP). */
int ar_block_desc_expert(const ar_block_desc *d, int i);

/* The block's routed experts: 1 + the largest ar_block_desc_expert, 0 for none. */
int ar_block_desc_nexperts(const ar_block_desc *d);

#endif
