/* test_device.c — device selection on any machine (GPU or not): --device
 * parsing, CPU always available, and on a machine without a usable GPU every
 * GPU entry point fails with a one-line error instead of crashing. The GPU
 * numerics are checked against the CPU by tests/cuda (make cuda-check). */
#include "device.h"
#include "signround_cuda.h"
#include "error.h"
#include "ggml_blocks.h"
#include <criterion/criterion.h>
#include <string.h>

Test(device, parse)
{
    int d = 99;
    cr_assert_eq(ar_device_parse("cpu", &d), 0);
    cr_assert_eq(d, AR_DEVICE_CPU);
    cr_assert_eq(ar_device_parse("cuda", &d), 0);
    cr_assert_eq(d, 0);
    cr_assert_eq(ar_device_parse("cuda:3", &d), 0);
    cr_assert_eq(d, 3);
    const char *bad[] = {"gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1x", "CPU", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(ar_device_parse(bad[i], &d), -1, "%s accepted", bad[i]);
        cr_assert(strstr(ar_last_error(), "is not cpu, cuda or cuda:N"), "%s", ar_last_error());
    }
}

Test(device, auto_follows_detection)
{
    int d = 99, n = ar_device_cuda_count();
    cr_assert_eq(ar_device_parse(NULL, &d), 0);
    cr_assert_eq(d, n > 0 ? 0 : AR_DEVICE_CPU);
    cr_assert_eq(ar_device_parse("auto", &d), 0);
    cr_assert_eq(d, n > 0 ? 0 : AR_DEVICE_CPU);
    if (!ar_device_cuda_built()) cr_assert_eq(n, 0);
}

Test(device, cpu_always_initializes)
{
    cr_assert_eq(ar_device_init(AR_DEVICE_CPU), 0);
    cr_assert_str_eq(ar_device_describe(AR_DEVICE_CPU), "cpu");
}

Test(device, missing_gpu_is_an_error)
{
    int n = ar_device_cuda_count();
    cr_assert_eq(ar_device_init(n + 5), -1, "cuda:%d initialized", n + 5);
    cr_assert(strstr(ar_last_error(), "cuda"), "%s", ar_last_error());
}

Test(device, gpu_quantizer_support)
{
    ar_config c = {0};
    c.hidden = 32, c.intermediate = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.n_layers = 1;
    ar_block_desc bd;
    ar_block_plan plan;
    cr_assert_eq(ar_block_desc_init(&bd, &c), 0);
    cr_assert_eq(ar_block_plan_init(&plan, &bd), 0);
    plan.quantize[AR_Q] = 1;
    plan.spec[AR_Q] = (ar_quant_spec){4, 128, 1, 0, 0, AR_QDT_INT, 0, 0, NULL, NULL};
    cr_assert_eq(ar_signround_cuda_supports(&plan), ar_device_cuda_built());
    /* the FP kinds (FP8 2-D blocks included) and GGUF have GPU quantizers */
    plan.spec[AR_Q] = (ar_quant_spec){4, 16, 1, 0, 0, AR_QDT_NVFP4, 0, 0, NULL, NULL};
    cr_assert_eq(ar_signround_cuda_supports(&plan), ar_device_cuda_built());
    plan.spec[AR_Q] = (ar_quant_spec){8, 128, 1, AR_QF_BLOCK2D, 0, AR_QDT_FP8, 0, 0, NULL, NULL};
    cr_assert_eq(ar_signround_cuda_supports(&plan), ar_device_cuda_built());
    plan.spec[AR_Q] = (ar_quant_spec){4, 32, 0, AR_QF_F32_SCALE, 0, AR_QDT_GGUF, 0, AR_GGML_Q4_K, NULL, NULL};
    cr_assert_eq(ar_signround_cuda_supports(&plan), ar_device_cuda_built());
    /* integer 2-D blocks and unknown kinds have none */
    plan.spec[AR_Q] = (ar_quant_spec){4, 128, 1, AR_QF_BLOCK2D, 0, AR_QDT_INT, 0, 0, NULL, NULL};
    cr_assert_eq(ar_signround_cuda_supports(&plan), 0);
    plan.spec[AR_Q] = (ar_quant_spec){4, 128, 1, 0, 0, 99, 0, 0, NULL, NULL};
    cr_assert_eq(ar_signround_cuda_supports(&plan), 0);
    ar_block_plan_free(&plan);
    ar_block_desc_free(&bd);
}
