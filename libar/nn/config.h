/* config.h — a Hugging Face config.json, reduced to what a decoder-only
 * Llama-family forward needs (Llama, Mistral, Qwen2, Qwen3). */
#ifndef AR_CONFIG_H
#define AR_CONFIG_H

typedef enum { AR_ARCH_LLAMA, AR_ARCH_MISTRAL, AR_ARCH_QWEN2, AR_ARCH_QWEN3 } ar_arch;
typedef enum { AR_ROPE_DEFAULT, AR_ROPE_LINEAR, AR_ROPE_LLAMA3 } ar_rope_type;

typedef struct {
    ar_arch arch;
    char    arch_name[64];      /* "LlamaForCausalLM", ... as in "architectures"[0] */
    char    model_type[32];     /* "llama", "mistral", "qwen2", "qwen3" */
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
} ar_config;

/* Read DIR/config.json into *c. Returns 0, or -1 with ar_error set to e.g.
 * "DIR/config.json: unsupported architecture GPT2LMHeadModel". */
int ar_config_load(ar_config *c, const char *model_dir);

/* Parse config JSON text (path only used in messages). */
int ar_config_parse(ar_config *c, const char *json_text, const char *path);

#endif
