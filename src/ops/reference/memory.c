/* Memory of the reference backend: every buffer and tensor is zeroed host memory, tensors are
 * plain NHWC, so upload/download and the NHWC conversions are copies. */
#include <stdlib.h>
#include <string.h>

#include "ops/reference/reference.h"

mt_status mt_ref_buffer_alloc(mt_backend *backend, size_t bytes, void **out) {
    /* calloc(0) may return NULL; one byte keeps "NULL means failure" true. */
    *out = calloc(1, bytes ? bytes : 1);
    if (!*out)
        return MT_FAIL(MT_ERR_NOMEM,
                       "reference backend: out of memory allocating %zu "
                       "bytes",
                       bytes);
    return MT_OK;
}

void mt_ref_buffer_free(mt_backend *backend, void *buffer) {
    free(buffer);
}

mt_status mt_ref_upload(mt_backend *backend, void *dst, const void *host_src, size_t bytes) {
    if (bytes) memmove(dst, host_src, bytes);
    return MT_OK;
}

mt_status mt_ref_download(mt_backend *backend, void *host_dst, const void *src, size_t bytes) {
    if (bytes) memmove(host_dst, src, bytes);
    return MT_OK;
}

mt_status mt_ref_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
    return MT_OK;
}

mt_status mt_ref_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out) {
    *out = (mt_tensor){0};
    if (shape.n <= 0 || shape.h <= 0 || shape.w <= 0 || shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference backend: tensor shape %dx%dx%dx%d (N,H,W,C) "
                       "has a non-positive dimension",
                       shape.n, shape.h, shape.w, shape.c);
    size_t bytes = mt_shape4_count(shape) * sizeof(float);
    float *data = calloc(1, bytes);
    if (!data)
        return MT_FAIL(MT_ERR_NOMEM,
                       "reference backend: out of memory allocating a %dx%dx%dx%d "
                       "tensor (%zu bytes)",
                       shape.n, shape.h, shape.w, shape.c, bytes);
    *out = (mt_tensor){.shape = shape, .data = data, .bytes = bytes, .layout = 0, .impl = NULL};
    return MT_OK;
}

void mt_ref_tensor_free(mt_backend *backend, mt_tensor *tensor) {
    if (!tensor) return;
    free(tensor->data);
    *tensor = (mt_tensor){0};
}

mt_status mt_ref_tensor_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst) {
    memmove(dst->data, host_src, mt_shape4_count(dst->shape) * sizeof(float));
    return mt_ref_stored(backend, dst);
}

/* malloc's alignment (16 bytes on the platforms we build for) is enough for float */
mt_status mt_ref_host_alloc(mt_backend *backend, size_t bytes, void **out) {
    (void)backend;
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return MT_FAIL(MT_ERR_NOMEM, "out of memory for %zu bytes of host buffer", bytes);
    return MT_OK;
}

void mt_ref_host_free(mt_backend *backend, void *buffer) {
    (void)backend;
    free(buffer);
}

mt_status mt_ref_tensor_from_u8(mt_backend *backend, const uint8_t *host_src, mt_tensor *dst) {
    float *out = dst->data;
    const size_t count = mt_shape4_count(dst->shape);
    for (size_t i = 0; i < count; i++)
        out[i] = mt_u8_to_input(host_src[i]);
    return mt_ref_stored(backend, dst);
}

mt_status mt_ref_tensor_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst) {
    memmove(host_dst, src->data, mt_shape4_count(src->shape) * sizeof(float));
    return MT_OK;
}

mt_status mt_ref_synchronize(mt_backend *backend) {
    return MT_OK; /* every op has finished when it returns */
}
