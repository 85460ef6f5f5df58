/* runtime.h — the compute runtime every tool sets up the same way: threads of
 * OpenMP regions and OpenBLAS, and OpenBLAS's choice of CPU kernels. */
#ifndef AR_RUNTIME_H
#define AR_RUNTIME_H
#include "config.h"

/* Threads for OpenMP regions and OpenBLAS: requested when > 0; else one for
 * models with hidden < 256, all cores (left as they are) otherwise. A tuning
 * iteration or forward of a small model is hundreds of tiny ops: waking
 * threads for each costs more than the op, and on a busy machine spinning
 * threads steal the working core (on stories260K one thread is ~20x faster
 * than two on a loaded 2-core box). */
void ar_set_threads(long requested, const ar_config *c);

/* Threads the next OpenMP region gets (f32 sums depend on it). */
int ar_thread_count(void);

/* OpenBLAS picks its kernels from the CPU model when the library loads and
 * falls back to the SSE3 "Prescott" kernels for models it does not know (e.g.
 * recent Xeons behind a hypervisor), 5-6x slower than the AVX-512 or AVX2
 * kernels the CPU has. Only OPENBLAS_CORETYPE, set before the library loads,
 * overrides that, so this re-executes the running program once with it set
 * (argv from /proc/self/cmdline) and returns only when nothing needs doing
 * or the re-execution failed (the slow kernels then stay). A value already in
 * the environment is never changed. For a program's main, before anything
 * else. */
void ar_blas_fix_kernels(void);

#endif
