/* fuzz_layer_config.c — --layer_config JSON through ar_layer_config_parse,
 * then the per-layer scheme decision for a few typical layer names (which
 * runs every entry's regex). */
#include "fuzz.h"
#include "scheme.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[] = {"model.layers.0.self_attn.q_proj", "model.layers.11.mlp.experts.3.down_proj",
                                  "model.layers.2.mlp.shared_expert.up_proj", "lm_head", ""};
    char *text = fuzz_cstr(data, size);
    fuzz_clear_error();
    ar_layer_config *lc = ar_layer_config_parse(text, "layer_config.json");
    if (!lc) {
        fuzz_expect_message();
    } else {
        ar_scheme def, out;
        if (ar_scheme_preset(&def, "W4A16")) fuzz_fail("preset W4A16 missing");
        ar_layer_info info = {0, 1, 0};
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            info.is_lm_head = !strcmp(names[i], "lm_head");
            if (ar_scheme_for_layer(&def, lc, names[i], 4096, 4096, &info, &out)) fuzz_fail("scheme_for_layer failed");
            if (!memchr(out.data_type, 0, sizeof out.data_type)) fuzz_fail("unterminated data_type");
        }
        if (ar_layer_config_count(lc) < 0) fuzz_fail("negative entry count");
        ar_layer_config_free(lc);
    }
    free(text);
    return 0;
}
