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
 * kernels the CPU has. This names the OpenBLAS core type to load instead
 * ("SkylakeX" or "Haswell") when that happened and the CPU can run it, NULL
 * when the loaded kernels are fine. Only OPENBLAS_CORETYPE, set before the
 * library loads, changes the choice: a program acts on the answer by setting
 * it and re-executing itself (cmd/cli.c), which a library must not do. */
const char *ar_blas_better_coretype(void);

#endif
