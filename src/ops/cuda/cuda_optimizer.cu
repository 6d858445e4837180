/* The optimizer update as one grid-stride kernel: each thread applies the shared per-element rule
 * (ops/optimizer_update.h, the reference's own code) to its elements. No reductions, so the
 * result differs from the reference only where the device rounds differently (nvcc may contract
 * a multiply and an add into an FMA). tests/gpu/test_gpu_kernels_emulated.c runs this file on
 * the CPU. */
#include <cuda_runtime.h>
#include <stddef.h>

#include "ops/cuda/cuda_optimizer.h"
#include "ops/optimizer_update.h"

static const int OPTIMIZER_THREADS = 256;

__global__ void optimizer_update_kernel(mt_optimizer_desc desc, float *params,
                                        const float *grads, float *s0, float *s1) {
    if (desc.skip && *desc.skip != 0.0f) return; /* a non-finite step (loss_accumulate) */
    const mt_update_scalars v = *desc.scalars; /* the step's rate, in device memory */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < desc.count;
         i += (size_t)gridDim.x * blockDim.x)
        mt_update_element(&desc, v, i, params, grads, s0, s1);
}

cudaError_t mt_cuda_launch_optimizer_update(cudaStream_t stream, const mt_optimizer_desc *desc,
                                            float *params, const float *grads, float *s0,
                                            float *s1) {
    size_t blocks = (desc->count + OPTIMIZER_THREADS - 1) / OPTIMIZER_THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > 65536) blocks = 65536; /* the grid-stride loop does the rest */
    optimizer_update_kernel<<<(unsigned)blocks, OPTIMIZER_THREADS, 0, stream>>>(
        *desc, params, grads, s0, s1);
    return cudaGetLastError();
}

/* buffer_copy_if: every thread reads the flag (device memory: the host never sees it), copies
 * its words when it is set; one thread counts. 4-byte words when everything is aligned to them
 * (the BN statistics are floats), else bytes. */
__global__ void buffer_copy_if_kernel(unsigned char *dst, const unsigned char *src, size_t bytes,
                                      const float *flag, double *count) {
    if (*flag == 0.0f) return;
    const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    if (first == 0 && count) *count += 1.0;
    if (((size_t)dst | (size_t)src | bytes) % 4 == 0) {
        for (size_t i = first; i < bytes / 4; i += stride)
            ((unsigned *)dst)[i] = ((const unsigned *)src)[i];
    } else {
        for (size_t i = first; i < bytes; i += stride)
            dst[i] = src[i];
    }
}

cudaError_t mt_cuda_launch_buffer_copy_if(cudaStream_t stream, void *dst, const void *src,
                                          size_t bytes, const float *flag, double *count) {
    size_t blocks = (bytes / 4 + OPTIMIZER_THREADS - 1) / OPTIMIZER_THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > 4096) blocks = 4096; /* the grid-stride loop does the rest */
    buffer_copy_if_kernel<<<(unsigned)blocks, OPTIMIZER_THREADS, 0, stream>>>(
        (unsigned char *)dst, (const unsigned char *)src, bytes, flag, count);
    return cudaGetLastError();
}

/* buffer_scale: fp16's loss scale and its unscaling. Every thread that meets a non-finite product
 * writes the same 1 into the flag (a benign race: no read, one value). |v| <= FLT_MAX is false
 * for infinities and NaN alike, without relying on a math library's isfinite. */
__global__ void buffer_scale_kernel(float *x, size_t count, const float *factor_in, float *flag) {
    const float factor = *factor_in; /* a per-step value, in device memory */
    bool finite = true;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = x[i] * factor;
        x[i] = v;
        finite = finite && fabsf(v) <= 3.402823466e38f;
    }
    if (!finite && flag) *flag = 1.0f;
}

cudaError_t mt_cuda_launch_buffer_scale(cudaStream_t stream, float *x, size_t count,
                                        const float *factor, float *flag) {
    size_t blocks = (count + OPTIMIZER_THREADS - 1) / OPTIMIZER_THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > 4096) blocks = 4096; /* the grid-stride loop does the rest */
    buffer_scale_kernel<<<(unsigned)blocks, OPTIMIZER_THREADS, 0, stream>>>(x, count, factor, flag);
    return cudaGetLastError();
}

/* scalars_write: the bytes travel as the kernel's argument (copied by the launch), so the write
 * is ordered on the stream like any op and nobody waits */
__global__ void scalars_write_kernel(unsigned char *dst, mt_cuda_scalars values, size_t bytes) {
    for (size_t i = threadIdx.x; i < bytes; i += blockDim.x)
        dst[i] = values.bytes[i];
}

cudaError_t mt_cuda_launch_scalars_write(cudaStream_t stream, void *dst,
                                         const mt_cuda_scalars *values, size_t bytes) {
    scalars_write_kernel<<<1, 64, 0, stream>>>((unsigned char *)dst, *values, bytes);
    return cudaGetLastError();
}
