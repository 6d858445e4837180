/* The cuda backend's optimizer update (cuda_optimizer.cu: the kernel; cuda_optimizer.c: the op)
 * and its device-to-device buffer copy. */
#ifndef MT_OPS_CUDA_OPTIMIZER_H
#define MT_OPS_CUDA_OPTIMIZER_H

#include <cuda_runtime_api.h>

#include "mobiletune/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One optimizer step over params[desc->count] in place (ops/optimizer_update.h per element):
 * s0, s1 the rule's slots (NULL where it has none); the rate and step size from
 * desc->scalars (device memory). */
cudaError_t mt_cuda_launch_optimizer_update(cudaStream_t stream, const mt_optimizer_desc *desc,
                                            float *params, const float *grads, float *s0,
                                            float *s1);

/* ops.h's buffer_copy_if: dst = src (`bytes`) when *flag (device) is nonzero, and *count += 1
 * (count may be NULL); nothing otherwise */
cudaError_t mt_cuda_launch_buffer_copy_if(cudaStream_t stream, void *dst, const void *src,
                                          size_t bytes, const float *flag, double *count);

/* ops.h's buffer_scale: x[i] *= *factor (device); *flag = 1 when some product is not finite
 * (flag may be NULL) */
cudaError_t mt_cuda_launch_buffer_scale(cudaStream_t stream, float *x, size_t count,
                                        const float *factor, float *flag);

/* ops.h's scalars_write: the bytes by value, as a kernel argument */
typedef struct mt_cuda_scalars {
    unsigned char bytes[MT_SCALARS_MAX_BYTES];
} mt_cuda_scalars;
cudaError_t mt_cuda_launch_scalars_write(cudaStream_t stream, void *dst,
                                         const mt_cuda_scalars *values, size_t bytes);

/* ops-table entries (cuda_optimizer.c) */
mt_status mt_cuda_optimizer_update(mt_backend *backend, const mt_optimizer_desc *desc,
                                   float *params, const float *grads, float *slots);
mt_status mt_cuda_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes);
mt_status mt_cuda_buffer_copy_if(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                 const float *flag, double *count);
mt_status mt_cuda_buffer_scale(mt_backend *backend, float *x, size_t count,
                               const float *factor, float *flag);
mt_status mt_cuda_scalars_write(mt_backend *backend, void *dst, const void *host_src,
                                size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
