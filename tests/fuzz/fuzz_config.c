/* fuzz_config.c — config.json text through ar_config_parse. An accepted
 * config must hold the sizes a forward pass divides and allocates by. */
#include "config.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    ar_config c;
    fuzz_clear_error();
    if (ar_config_parse(&c, text, "config.json")) {
        fuzz_expect_message();
    } else {
        if (c.hidden < 1 || c.intermediate < 1 || c.n_layers < 1 || c.vocab < 1) fuzz_fail("non-positive size accepted");
        if (c.n_heads < 1 || c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads) fuzz_fail("bad head counts accepted");
        if (c.head_dim < 1 || c.head_dim % 2) fuzz_fail("bad head_dim accepted");
        if (!(c.rope_theta > 0) || !(c.rope_factor > 0)) fuzz_fail("bad rope accepted");
        if (!memchr(c.arch_name, 0, sizeof c.arch_name) || !memchr(c.torch_dtype, 0, sizeof c.torch_dtype))
            fuzz_fail("unterminated string field");
    }
    free(text);
    return 0;
}
