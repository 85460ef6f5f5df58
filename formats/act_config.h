/* act_config.h — the activation fake-quantization an exported model asks for
 * at inference, installed in an opened model (ar_model_set_act_quant) so that
 * ar-eval scores a W4A4 / W8A8 model as it runs: AutoRound's evaluated model
 * keeps each tuned layer's activation quantizer (spec §2.12, WrapperWALayer).
 *
 * From config.json's quantization_config:
 *  - auto-round: act_bits, act_data_type, act_group_size, act_sym and
 *    act_dynamic, overlaid per layer by its extra_config entry (exact name);
 *  - compressed-tensors: the input_activations of the config group whose
 *    targets name the layer (or "Linear"): type int → integer per token or
 *    group; float 4-bit with strategy tensor_group → NVFP4 (groups of 16),
 *    other float 4-bit → MXFP4 (group_size); float 8-bit in an mxfp8 group →
 *    MXFP8, else FP8 (strategy tensor: per tensor, token: per token, group:
 *    group_size); dynamic false → static (true or "local" → dynamic).
 * Only block linears stored quantized get one. Static maxima come from the
 * layer's tensors: input_global_scale (NVFP4, act_max = 448·6/s) or
 * input_scale (FP8 static, act_max = 448·s); without them the maximum is
 * taken per call. */
#ifndef AR_ACT_CONFIG_H
#define AR_ACT_CONFIG_H
#include "model.h"
#include "scheme.h"

/* Install in m the activation quantizers the quantized folder dir's config
 * asks for. Returns how many linears got one (0: none asked: plain, "fake"
 * or weight-only folders), or -1 with ar_error naming the file and the
 * problem (e.g. an activation type no quantizer here handles). */
int ar_model_act_quant_from_folder(ar_model *m, const char *dir);

/* Install scheme s's activation quantizer (dynamic: no calibration maximum)
 * on every block linear s quantizes under AutoRound's layer rules
 * (ar_scheme_for_layer): for "fake" folders, which carry no quantization
 * config. Returns the count (0 for a weight-only s) or -1 with ar_error. */
int ar_model_act_quant_from_scheme(ar_model *m, const ar_scheme *s);

#endif
