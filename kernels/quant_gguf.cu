/* quant_gguf.cu — the GGUF kind: fake quantization over frozen GGML scales
 * and mins, its STE backward and the fused SignSGD step on V, mirroring
 * libar/quant/quant_ggml.c and ggml_blocks.c's ar_ggml_fake_quant (the arithmetic is
 * shared with the host in quant_kinds.cuh). Elementwise: one thread per
 * element, the group's s and m read from the frozen [N, K/group] arrays
 * (uploaded once per block by the tuner). */
#include "internal.cuh"
#include "quant_kinds.cuh"

__global__ void k_gguf_fwd(ar_cuda_qspec q, long total, const float *w, const float *v, float *wq)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long g = i / q.group_size;
        float s = q.gguf_scale[g], m = q.gguf_min ? q.gguf_min[g] : 0.f;
        wq[i] = ar_gguf_elem_forward(s, m, w[i], v ? v[i] : 0.f, q.code_lo, q.code_hi);
    }
}

__device__ static float sgnf(float x) { return (float)((x > 0) - (x < 0)); }

/* dv += dL/dV where it passes, or (step) v −= lr·sign(dL/dV). */
__global__ void k_gguf_bwd(ar_cuda_qspec q, long total, const float *w, float *v, const float *dwq, float *dv,
                           int step, float lr)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long g = i / q.group_size;
        float s = q.gguf_scale[g], m = q.gguf_min ? q.gguf_min[g] : 0.f, vi = v ? v[i] : 0.f;
        int pass;
        float d = ar_gguf_elem_grad(s, m, w[i], vi, dwq[i], q.code_lo, q.code_hi, &pass);
        if (step) {
            if (v) v[i] = vi - lr * sgnf(d);
        } else if (dv && pass) {
            dv[i] += d;
        }
    }
}

static int gguf_check(const ar_cuda_qspec *q, int n, int k)
{
    if (q->group_size <= 0 || !q->gguf_scale || q->code_lo > q->code_hi)
        return ar_cuda_fail("quant: GGUF spec without its frozen scales or grid (group %d)", q->group_size);
    if (n <= 0 || k <= 0 || k % q->group_size)
        return ar_cuda_fail("quant: GGUF weight [%d, %d] is not made of groups of %d", n, k, q->group_size);
    return 0;
}

int ar_cuda_gguf_forward(const ar_cuda_qspec *q, const float *w, int n, int k, const float *v, float *wq)
{
    if (gguf_check(q, n, k)) return -1;
    long total = (long)n * k;
    k_gguf_fwd<<<ar_blocks(total, 256), 256, 0, g_cu.st>>>(*q, total, w, v, wq);
    return ar_cuda_check_launch("GGUF quant forward");
}

int ar_cuda_gguf_backward(const ar_cuda_qspec *q, const float *w, int n, int k, float *v, const float *dwq,
                          float *dv, int step, float lr)
{
    if (gguf_check(q, n, k)) return -1;
    long total = (long)n * k;
    k_gguf_bwd<<<ar_blocks(total, 256), 256, 0, g_cu.st>>>(*q, total, w, v, dwq, dv, step, lr);
    return ar_cuda_check_launch(step ? "GGUF quant signsgd" : "GGUF quant backward");
}
