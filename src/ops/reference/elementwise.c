/* Elementwise ops of the reference backend on NHWC tensors of equal shape: zero, copy, the
 * residual add (also used to sum gradients), ReLU6 and its gradient. */
#include <string.h>

#include "ops/reference/reference.h"

mt_status mt_ref_tensor_zero(mt_backend *backend, mt_tensor *tensor) {
    memset(tensor->data, 0, mt_shape4_count(tensor->shape) * sizeof(float));
    return MT_OK;
}

/* src, dst: N,H,W,C */
mt_status mt_ref_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst) {
    MT_TRY(mt_ref_check_shape("tensor_copy", "dst", dst->shape, src->shape));
    memmove(dst->data, src->data, mt_shape4_count(src->shape) * sizeof(float));
    return mt_ref_stored(backend, dst);
}

/* a, b, y: N,H,W,C; y may alias a or b (each element is read before it is written) */
mt_status mt_ref_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    MT_TRY(mt_ref_check_shape("add", "b", b->shape, a->shape));
    MT_TRY(mt_ref_check_shape("add", "y", y->shape, a->shape));
    const float *pa = a->data, *pb = b->data;
    float *py = y->data;
    long count = (long)mt_shape4_count(a->shape);
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (long i = 0; i < count; i++)
        py[i] = pa[i] + pb[i];
    return mt_ref_stored(backend, y);
}

/* x, y: N,H,W,C; y may alias x */
mt_status mt_ref_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    MT_TRY(mt_ref_check_shape("relu6_forward", "y", y->shape, x->shape));
    const float *px = x->data;
    float *py = y->data;
    long count = (long)mt_shape4_count(x->shape);
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (long i = 0; i < count; i++) {
        float v = px[i];
        py[i] = v < 0.0f ? 0.0f : v > 6.0f ? 6.0f : v;
    }
    return mt_ref_stored(backend, y);
}

/* y (relu6's output), dy, dx: N,H,W,C; dx may alias dy. The gradient is taken from y, not x:
 * 0 < y < 6 exactly where x was in the open interval (0, 6), where relu6 has slope 1. */
mt_status mt_ref_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                mt_tensor *dx) {
    MT_TRY(mt_ref_check_shape("relu6_backward", "dy", dy->shape, y->shape));
    MT_TRY(mt_ref_check_shape("relu6_backward", "dx", dx->shape, y->shape));
    const float *py = y->data, *pdy = dy->data;
    float *pdx = dx->data;
    long count = (long)mt_shape4_count(y->shape);
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (long i = 0; i < count; i++)
        pdx[i] = py[i] > 0.0f && py[i] < 6.0f ? pdy[i] : 0.0f;
    return mt_ref_stored(backend, dx);
}
