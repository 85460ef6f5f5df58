/* device.h — where the numeric work runs: the CPU (the reference, always
 * available) or a CUDA GPU (builds made where nvcc exists). The GPU versions
 * of the block tuner and of the perplexity forward are in signround_cuda.h
 * and model_cuda.h.
 *
 * Nothing here touches CUDA unless a GPU is asked for or detected: in a build
 * without CUDA every GPU entry point fails with a one-line error, and
 * detection on a machine without a driver simply finds no device. */
#ifndef AR_DEVICE_H
#define AR_DEVICE_H
#include "config.h"
#include "residency.h"

/* Device numbers: AR_DEVICE_CPU, or N >= 0 for cuda:N. */
enum { AR_DEVICE_CPU = -1 };

/* 1 when this build has the CUDA kernels. */
int ar_device_cuda_built(void);

/* Usable CUDA devices (0 without CUDA, driver or GPU; never an error). */
int ar_device_cuda_count(void);

/* Parse "cpu", "cuda", "cuda:N" or "auto" (NULL = "auto": cuda:0 when a GPU
 * is usable, else cpu) into *dev. 0, or -1 with ar_error for anything else. */
int ar_device_parse(const char *s, int *dev);

/* Make dev the device of the following GPU calls (CPU: nothing to do).
 * There is one GPU path (kernels/README.md): the tuner multiplies on bf16
 * tensor cores with f32 accumulation (AutoRound's bf16 autocast), through
 * the fast block path (bf16 operands, fused ops, flash attention) for every
 * head_dim the flash kernels take; the chain forwards and the perplexity
 * forward multiply in f32. 0, or -1 with ar_error (built without CUDA, no
 * such device, driver failure). */
int ar_device_init(int dev);

/* The residency of a GPU tuning run on the initialized device (residency.h)
 * for config c, n cached samples of T tokens in chains nchains arrays of
 * bf16 [n, T, hidden], forwards and tuning of bs samples at a time: the
 * chains stay on the device when ar_chains_fit says so for the device's free
 * memory (cudaMemGetInfo) less what one block's steps allocate (its weights,
 * the tuner's tunables, the tuned weights, two works, the tuner's batch
 * buffers, and 512 MiB for cuBLAS and fragmentation), budget_mib and
 * low_mem as there; else they stream through page-locked host arrays. NULL
 * with ar_error (no CUDA in this build, a device query failed). Close with
 * ar_gpu_residency_close (frees the device copies, unpins; no downloads). */
ar_residency *ar_gpu_residency_open(const ar_config *c, int n, int T, int bs, int nchains, double budget_mib,
                                    int low_mem);
void ar_gpu_residency_close(ar_residency *r);

/* "cpu" or "cuda:0 (NVIDIA H100 ...)" for messages. */
const char *ar_device_describe(int dev);

#endif
