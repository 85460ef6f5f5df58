/* runtime.c — threads and BLAS kernels (see runtime.h). */
#include "runtime.h"
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

void ar_set_threads(long requested, const ar_config *c)
{
    int n = requested ? (int)requested : c->hidden < 256 ? 1 : 0;
    if (!n) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int ar_thread_count(void) { return omp_get_max_threads(); }

void ar_blas_fix_kernels(void)
{
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "prescott")) return;
    const char *want = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                     : __builtin_cpu_supports("avx2")    ? "Haswell" : NULL;
    if (!want) return;
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    if (n == 0 || n == sizeof buf - 1) return;
    buf[n] = 0;
    enum { MAXARG = 1024 };
    static char *args[MAXARG + 1];
    int argc = 0;
    for (size_t i = 0; i < n && argc < MAXARG; i += strlen(buf + i) + 1) args[argc++] = buf + i;
    if (argc == MAXARG) return;
    args[argc] = NULL;
    setenv("OPENBLAS_CORETYPE", want, 1);
    execv("/proc/self/exe", args); /* on failure carry on with the slow kernels */
}
