/* The cuda backend's optimizer_update, buffer_copy, buffer_scale and scalars_write ops: arguments
 * checked on the host, the work enqueued on the backend's stream (no synchronization: the next
 * download waits). Each op that may write a conv kernel drops the per-update copies of what it
 * writes first (cuda_weights.c). */
#include "ops/cuda/cuda_optimizer.h"

#include <string.h>

#include "ops/cuda/cuda_internal.h"
#include "ops/optimizer_update.h"

/* params, grads: [count] device; slots: mt_update_slot_count(desc) arrays, slot_stride apart */
mt_status mt_cuda_optimizer_update(mt_backend *backend, const mt_optimizer_desc *desc,
                                   float *params, const float *grads, float *slots) {
    MT_TRY(mt_update_check("cuda", desc, params, grads, slots));
    if (!desc->count) return MT_OK;
    cuda_weights_touched(cuda_of(backend), params, desc->count * sizeof(float));
    float *s0 = mt_update_slot(desc, slots, 0), *s1 = mt_update_slot(desc, slots, 1);
    CUDA_CHECK(
        mt_cuda_launch_optimizer_update(cuda_of(backend)->stream, desc, params, grads, s0, s1));
    return MT_OK;
}

mt_status mt_cuda_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes) {
    if (!bytes) return MT_OK;
    cuda_weights_touched(cuda_of(backend), dst, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                               cuda_of(backend)->stream));
    return MT_OK;
}

mt_status mt_cuda_buffer_copy_if(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                 const float *flag, double *count) {
    if (!flag) return MT_FAIL(MT_ERR_INVALID, "cuda buffer_copy_if: the flag is required");
    cuda_weights_touched(cuda_of(backend), dst, bytes);
    CUDA_CHECK(
        mt_cuda_launch_buffer_copy_if(cuda_of(backend)->stream, dst, src, bytes, flag, count));
    return MT_OK;
}

mt_status mt_cuda_buffer_scale(mt_backend *backend, float *x, size_t count,
                               const float *factor, float *flag) {
    if (!count) return MT_OK;
    if (!factor) return MT_FAIL(MT_ERR_INVALID, "cuda buffer_scale: the factor is required");
    cuda_weights_touched(cuda_of(backend), x, count * sizeof(float));
    CUDA_CHECK(mt_cuda_launch_buffer_scale(cuda_of(backend)->stream, x, count, factor, flag));
    return MT_OK;
}

mt_status mt_cuda_scalars_write(mt_backend *backend, void *dst, const void *host_src,
                                size_t bytes) {
    if (!bytes) return MT_OK;
    if (bytes > MT_SCALARS_MAX_BYTES || !dst || !host_src)
        return MT_FAIL(MT_ERR_INVALID, "cuda scalars_write of %zu bytes: at most %d, to and from "
                       "non-NULL", bytes, (int)MT_SCALARS_MAX_BYTES);
    mt_cuda_scalars values = {{0}};
    memcpy(values.bytes, host_src, bytes);
    CUDA_CHECK(mt_cuda_launch_scalars_write(cuda_of(backend)->stream, dst, &values, bytes));
    return MT_OK;
}
