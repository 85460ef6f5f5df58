/* config.h — a Hugging Face config.json, reduced to what a decoder-only
 * forward needs: the Llama family (Llama, Mistral, Qwen2, Qwen3), the
 * Gemma family (Gemma2ForCausalLM; Gemma3ForCausalLM, model_type gemma3_text,
 * which is also the text_config of Gemma3ForConditionalGeneration: parsing
 * that object alone gives the text stack's config), and Phi-3 / GLM-4's
 * (fused linears, partial rotary, post norms; block_fused.h).
 *
 * Mixtures of experts (issue 17: Qwen3-MoE, Qwen2-MoE, Mixtral,
 * DeepSeek-V2/V3 with MLA, gpt-oss) are parsed into ar_config.moe / .mla /
 * the gpt-oss fields, but no forward runs them yet: ar_config_load and
 * ar_config_parse refuse them with "unsupported architecture NAME", as
 * before; ar_config_parse_flags / ar_config_load_flags with
 * AR_CONFIG_ANY_ARCH parse them (tools and tests that only read the
 * config). The switch a family's forward flips is its "runs" entry in
 * config.c's table of architectures. docs/moe.md has the per-family
 * semantics and where each field comes from. */
#ifndef AR_CONFIG_H
#define AR_CONFIG_H

typedef enum {
    AR_ARCH_LLAMA, AR_ARCH_MISTRAL, AR_ARCH_QWEN2, AR_ARCH_QWEN3,
    AR_ARCH_GEMMA2, AR_ARCH_GEMMA3,   /* the "gemma" block family (block_gemma.c) */
    /* mixtures of experts: parsed, not run yet (see above) */
    AR_ARCH_QWEN3_MOE, AR_ARCH_QWEN2_MOE, AR_ARCH_MIXTRAL, AR_ARCH_DEEPSEEK_V2, AR_ARCH_DEEPSEEK_V3,
    AR_ARCH_GPT_OSS,
    /* dense families with their own block (block_fused.c) */
    AR_ARCH_PHI3, AR_ARCH_GLM4
} ar_arch;
/* yarn: the MoE families and, with dynamic and longrope, the dense ones
 * (rope_scaling.c) */
typedef enum { AR_ROPE_DEFAULT, AR_ROPE_LINEAR, AR_ROPE_LLAMA3, AR_ROPE_YARN, AR_ROPE_DYNAMIC,
               AR_ROPE_LONGROPE } ar_rope_type;

/* longrope lists one factor per rotated pair; at most this many. */
#define AR_ROPE_MAX_PAIRS 256

/* The MLP's gate activation. */
typedef enum { AR_ACT_SILU, AR_ACT_GELU_TANH } ar_act_fn;

/* How a router turns its logits into the k expert weights. */
typedef enum {
    AR_ROUTER_SOFTMAX,       /* softmax over all experts, top-k of the probabilities (Qwen, Mixtral, DeepSeek-V2) */
    AR_ROUTER_SIGMOID,       /* sigmoid per expert, top-k of sigmoid + e_score_correction_bias (DeepSeek-V3) */
    AR_ROUTER_TOPK_SOFTMAX   /* top-k of the logits, softmax over those k (gpt-oss) */
} ar_router_scoring;

/* Which experts a token may pick. */
typedef enum {
    AR_TOPK_GREEDY,          /* plain top-k over all experts */
    AR_TOPK_GROUP_LIMITED,   /* DeepSeek-V2 group_limited_greedy: best topk_group groups by their max score */
    AR_TOPK_NOAUX_TC         /* DeepSeek-V3 noaux_tc: groups by the sum of their 2 best biased scores */
} ar_topk_method;

/* Layers whose kinds a config lists one by one (MoE layouts, layer_types)
 * are recorded up to this many layers; more is refused for those configs. */
#define AR_CONFIG_MAX_LAYERS 1024

/* The experts of a mixture-of-experts model; all 0 for a dense model. */
typedef struct {
    int n_experts;              /* routed experts: num_experts | num_local_experts | n_routed_experts */
    int top_k;                  /* num_experts_per_tok (gpt-oss also experts_per_token), <= n_experts */
    int expert_intermediate;    /* moe_intermediate_size; Mixtral and gpt-oss: intermediate_size */
    int norm_topk_prob;         /* divide the k weights by their sum (Mixtral always; gpt-oss implied) */
    ar_router_scoring scoring;  /* scoring_func, else the family's */
    ar_topk_method topk_method; /* topk_method, else the family's */
    int n_group, topk_group;    /* group-limited top-k; 1 and 1 when off */
    double routed_scaling_factor; /* multiplies the routed weights (DeepSeek), else 1 */
    int router_bias;            /* the router linear has a bias (gpt-oss) */
    int score_correction_bias;  /* router carries e_score_correction_bias (DeepSeek-V3) */
    int n_shared_experts;       /* DeepSeek n_shared_experts; Qwen2-MoE 1 when shared_expert_intermediate_size > 0 */
    int shared_intermediate;    /* intermediate width of the shared MLP (DeepSeek: n_shared * moe_intermediate) */
    int shared_expert_gate;     /* sigmoid(shared_expert_gate(x)) scales the shared expert (Qwen2-MoE) */
    int expert_bias;            /* experts carry biases (gpt-oss) */
    int fused_gate_up;          /* checkpoints store experts fused 3-D (gpt-oss gate_up_proj [E, H, 2I] interleaved) */
    double swiglu_alpha, swiglu_limit; /* gpt-oss clamped SwiGLU; 0 and 0 = plain SiLU gate */
    int decoder_sparse_step;    /* Qwen-MoE: layer l is sparse when (l+1) % step == 0 (and not in mlp_only_layers) */
    int first_k_dense_replace;  /* DeepSeek: layers below this are dense */
    int n_moe_layers;           /* layers whose MLP is a mixture (ar_config_layer_moe) */
} ar_moe_config;

/* DeepSeek multi-head latent attention; all 0 otherwise. */
typedef struct {
    int q_lora_rank;            /* 0: q_proj directly (null in DeepSeek-V2-Lite), else q_a_proj/q_a_layernorm/q_b_proj */
    int kv_lora_rank;           /* kv_a_proj_with_mqa -> kv_lora_rank + qk_rope_head_dim, kv_a_layernorm, kv_b_proj */
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim; /* head_dim = nope + rope (q/k width per head) */
    int rope_interleave;        /* DeepSeek-V3 rope_interleave: the rope part's pairs are interleaved */
} ar_mla_config;

enum { AR_LAYER_MOE = 1, AR_LAYER_SLIDING = 2 };  /* ar_config.layer_flags bits */

typedef struct {
    ar_arch arch;
    char    arch_name[64];      /* "LlamaForCausalLM", ... as in "architectures"[0] */
    char    model_type[32];     /* "llama", "mistral", "qwen2", "qwen3" */
    char    mm_arch[64];        /* a vision-language class whose text stack this is
                                   ("Qwen2VLForConditionalGeneration"; multimodal.h), else "" */
    int     hidden;             /* hidden_size */
    int     intermediate;       /* intermediate_size */
    int     n_layers;           /* num_hidden_layers */
    int     n_heads;            /* num_attention_heads */
    int     n_kv_heads;         /* num_key_value_heads (defaults to n_heads) */
    int     head_dim;           /* explicit head_dim, else hidden / n_heads */
    int     vocab;              /* vocab_size */
    int     max_pos;            /* max_position_embeddings */
    float   rms_eps;            /* rms_norm_eps */
    double  rope_theta;         /* top level or inside rope_parameters / rope_scaling */
    ar_rope_type rope_type;
    double  rope_factor;        /* linear / llama3 */
    double  rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int     rope_orig_max_pos;  /* llama3 original_max_position_embeddings */
    int     tie_embeddings;     /* tie_word_embeddings: lm_head shares embed_tokens */
    int     qkv_bias;           /* q/k/v projections carry a bias (Qwen2; Llama attention_bias) */
    int     o_bias;             /* o_proj bias (Llama attention_bias) */
    int     mlp_bias;           /* Llama mlp_bias */
    int     qk_norm;            /* per-head RMSNorm on q and k before RoPE (Qwen3) */
    int     sliding_window;     /* 0 = none (Mistral/Qwen2 when enabled) */
    int     sliding_from_layer; /* layers >= this use the window (Qwen max_window_layers; 0 for Mistral) */
    int     bos_id, eos_id;     /* -1 when absent */
    char    torch_dtype[16];    /* "bfloat16", "float16", "float32" or "" */
    /* Mixtures of experts, MLA, gpt-oss (parsed only with AR_CONFIG_ANY_ARCH until their forwards run) */
    ar_moe_config moe;
    ar_mla_config mla;
    double  rope_beta_fast, rope_beta_slow;   /* yarn (defaults 32, 1) */
    double  rope_mscale, rope_mscale_all_dim; /* yarn, DeepSeek's softmax-scale correction (0 = absent) */
    double  rope_attention_factor;            /* yarn attention_factor (0 = absent: derived from factor) */
    int     rope_truncate;                    /* yarn truncate (default 1; gpt-oss writes false) */
    int     attn_sinks;         /* gpt-oss: a learned per-head sink logit joins each softmax */
    int     layer_types;        /* layer_flags' AR_LAYER_SLIDING comes from "layer_types" (gpt-oss, Gemma) */
    /* Gemma 2 / Gemma 3 (transformers' modeling_gemma2.py / modeling_gemma3.py); 0 elsewhere */
    ar_act_fn act;              /* hidden_activation: gelu_pytorch_tanh for Gemma, else SiLU */
    int     norm_plus_one;      /* every RMSNorm scales by (1 + w), computed in f32 */
    int     sandwich_norm;      /* post_attention_layernorm after attention, pre/post_feedforward_layernorm */
    double  embed_scale;        /* embeddings are multiplied by sqrt(hidden_size); 0 = not scaled */
    double  attn_scale;         /* softmax scale query_pre_attn_scalar^-1/2; 0 = head_dim^-1/2 */
    double  attn_softcap;       /* attn_logit_softcapping: scores -> cap * tanh(scores / cap); 0 = off */
    double  final_softcap;      /* final_logit_softcapping on the logits; 0 = off */
    double  rope_local_theta;   /* Gemma 3 sliding layers: plain RoPE with this base (rope_local_base_freq); 0 = none */
    unsigned char layer_flags[AR_CONFIG_MAX_LAYERS]; /* AR_LAYER_* per layer, filled for MoE/layer_types configs */
    /* Phi-3 / GLM-4 (block_fused.c) and the dense RoPE types (rope_scaling.c) */
    int     rope_dim;           /* rotated dims per head: int(head_dim * partial_rotary_factor), even */
    int     rope_interleaved;   /* pairs (2i, 2i+1) rotate (GLM-4), else (i, i + rope_dim/2) */
    int     fused_qkv;          /* one self_attn.qkv_proj [QD + 2 KD, C] (Phi-3) */
    int     fused_gate_up;      /* one mlp.gate_up_proj [2F, C], gate rows first (Phi-3, GLM-4) */
    int     post_norms;         /* GLM-4: post_self_attn_layernorm and post_mlp_layernorm on the branch outputs */
    float   rope_short_factor[AR_ROPE_MAX_PAIRS], rope_long_factor[AR_ROPE_MAX_PAIRS]; /* longrope, rope_dim/2 each */
} ar_config;

/* ar_config_parse_flags / ar_config_load_flags flags. */
enum { AR_CONFIG_ANY_ARCH = 1 };   /* also the architectures parsed but not yet run (MoE) */

/* Whether layer's MLP is a mixture of experts (0 for dense models and dense layers). */
int ar_config_layer_moe(const ar_config *c, int layer);

/* Whether layer's attention uses the sliding window. */
int ar_config_layer_sliding(const ar_config *c, int layer);

/* *out = c as layer `layer` runs it: sliding_window 0 unless that layer
 * slides (sliding_from_layer then 0), and for Gemma 3's sliding layers their
 * own RoPE (rope_local_theta, no scaling). Block forwards take this config. */
void ar_config_for_layer(ar_config *out, const ar_config *c, int layer);

/* Whether a forward runs architecture a (0 for the parsed-only MoE families). */
int ar_config_arch_runs(ar_arch a);

/* Read DIR/config.json into *c. Returns 0, or -1 with ar_error set to e.g.
 * "DIR/config.json: unsupported architecture GPT2LMHeadModel". */
int ar_config_load(ar_config *c, const char *model_dir);

/* Parse config JSON text (path only used in messages). */
int ar_config_parse(ar_config *c, const char *json_text, const char *path);

/* The same with AR_CONFIG_* flags (0 = the functions above). */
int ar_config_parse_flags(ar_config *c, const char *json_text, const char *path, int flags);
int ar_config_load_flags(ar_config *c, const char *model_dir, int flags);

#endif
