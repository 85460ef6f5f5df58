/* multimodal.h — vision-language checkpoints (Qwen2-VL, Qwen2.5-VL,
 * Qwen3-VL, Mistral 3, Llava, Gemma 3) seen as the text decoder they carry.
 *
 * AutoRound quantizes only the text stack of such a model by default
 * (auto_round/special_model_handler.py, SUPPORT_ONLY_TEXT_MODELS); ar does
 * the same. The text model is described by config.json's "text_config",
 * parsed by config.c as the family its model_type names (qwen2_vl_text ->
 * Qwen2, qwen3_vl_text -> Qwen3, mistral, llama; gemma3_text -> whatever
 * config.c knows as Gemma3ForCausalLM, so the Gemma 3 family plugs in by
 * name). Its weights sit under a prefix that depends on the transformers
 * version that saved them; the rest of ar names text tensors as a
 * text-only checkpoint does ("model.layers.0.self_attn.q_proj.weight",
 * "lm_head.weight"), and model.c's renaming tensor source (ar_model_open_source)
 * maps between the two with these functions.
 *
 * M-RoPE (mrope_section, Qwen3-VL's interleaved variant): the three position
 * ids (time, height, width) of a text token are all equal to its index, so
 * every rotary frequency sees the same position and the rotation is plain
 * RoPE; docs/multimodal.md has where this is read in transformers. */
#ifndef AR_MULTIMODAL_H
#define AR_MULTIMODAL_H
#include <stddef.h>

/* A multimodal class ar reads the text stack of. */
typedef struct {
    const char *arch;          /* "Qwen2VLForConditionalGeneration", as in "architectures"[0] */
    const char *model_type;    /* "qwen2_vl" */
    const char *text_type;     /* text_config's model_type when it has none: "qwen2_vl_text" */
    int legacy_top_level;      /* no text_config: the text keys sit at the top level (transformers' BC) */
    int tie_default;           /* the class's tie_word_embeddings default (the top-level key decides) */
} ar_mm_class;

/* The class named arch ("architectures"[0]), else the one of model_type
 * (when arch is NULL or ""); NULL when neither is multimodal. */
const ar_mm_class *ar_mm_class_find(const char *arch, const char *model_type);

/* What a text_config's model_type means: the text-only class whose forward
 * runs it ("Qwen2ForCausalLM") and transformers' defaults for the keys a
 * save_pretrained may leave out (its config class's). NULL when unknown. */
typedef struct {
    const char *model_type;    /* "qwen2_vl_text" */
    const char *text_arch;     /* "Qwen2ForCausalLM" */
    double rms_eps, rope_theta;
    int head_dim;              /* 0: hidden_size / num_attention_heads */
} ar_mm_text;
const ar_mm_text *ar_mm_text_find(const char *model_type);

/* Where a checkpoint keeps its text stack: prefix replaces "model." of the
 * text-only names, head is the output head's name. */
typedef struct {
    char prefix[48];           /* "model.language_model." */
    char head[64];             /* "lm_head.weight" */
} ar_mm_names;

/* Find the layout of a checkpoint of class arch: has(ctx, name) answers
 * whether it holds tensor name (1 yes, 0 no). The layouts tried, in order:
 * "model.language_model." + "lm_head.weight" (transformers >= 4.52 and 5),
 * "language_model.model." + "language_model.lm_head.weight" (Llava, Mistral 3,
 * Gemma 3 before), "model." + "lm_head.weight" (Qwen2-VL / Qwen2.5-VL before:
 * vision under "visual."). 0, or -1 with ar_error naming arch. */
int ar_mm_resolve(const char *arch, int (*has)(void *ctx, const char *name), void *ctx, ar_mm_names *out);

/* The checkpoint's name of text-only name (the prefix swapped, lm_head
 * renamed; any other name unchanged) into buf. Returns buf. */
const char *ar_mm_map_name(const ar_mm_names *nm, const char *name, char *buf, size_t size);

/* The text-only name of checkpoint name ckpt into buf (the inverse of
 * ar_mm_map_name), or NULL when ckpt is not part of the text stack (the
 * vision tower, the projector). */
const char *ar_mm_unmap_name(const ar_mm_names *nm, const char *ckpt, char *buf, size_t size);

/* The name transformers (>= 4.52, and 5) gives checkpoint module or tensor
 * name ckpt in memory, whatever layout the file has: the text stack under
 * "model.language_model." (the head "lm_head"), every other module under
 * "model." ("visual.blocks.0" -> "model.visual.blocks.0"). Loaders match
 * quantization_config's module names against these (auto-round 0.16.1's
 * get_layer_config, compressed-tensors' ignore list). Into buf; returns buf. */
const char *ar_mm_module_name(const ar_mm_names *nm, const char *ckpt, char *buf, size_t size);

#endif
