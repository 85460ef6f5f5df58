/* runtime.c — threads and BLAS kernels (see runtime.h). */
#include "runtime.h"
#include <cblas.h>
#include <omp.h>
#include <strings.h>

void ar_set_threads(long requested, const ar_config *c)
{
    int n = requested ? (int)requested : c->hidden < 256 ? 1 : 0;
    if (!n) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int ar_thread_count(void) { return omp_get_max_threads(); }

const char *ar_blas_better_coretype(void)
{
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "prescott")) return NULL;
    return __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : NULL;
}
