/* train.precision = bf16 | fp16 on the cuda backend: the ops of the 16-bit table (cuda_precision.c)
 * that read and write their 16-bit tensors directly with the storage kernels (cuda_kernels.h's
 * launchers given the 16-bit storage): add, ReLU6, the input conversion, batch norm (the fused
 * kernels; statistics, gamma, beta and their gradients fp32), zero padding and global average
 * pooling (the pooled values fp32). Each computes in fp32 what the fp32 op computes on the widened
 * tensors and rounds once on store, bit for bit what the staging of cuda_precision.c did, without
 * the fp32 copies and their casts. The checks are the fp32 ops' (cuda_ops.c), on 16-bit elements;
 * each op is inside MT_CUDA_PROFILE's event pair. MT_CUDA_BN=legacy (the double-precision
 * kernels, fp32 only) is refused with 16-bit tensors (cuda_precision_init). */
#include <stdint.h>

#include "ops/cuda/cuda_internal.h"

/* ---- elementwise --------------------------------------------------------------------------- */

/* a, b, y: N,H,W,C; y may alias a or b */
static mt_status add_op(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_stored("add", "a", a, a->shape, st));
    MT_TRY(cuda_check_stored("add", "b", b, a->shape, st));
    MT_TRY(cuda_check_stored("add", "y", y, a->shape, st));
    CUDA_CHECK(
        mt_cuda_launch_add(cu->stream, st, mt_shape4_count(a->shape), a->data, b->data, y->data));
    return MT_OK;
}

/* x, y: N,H,W,C; y may alias x */
static mt_status relu6_forward_op(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_stored("relu6_forward", "x", x, x->shape, st));
    MT_TRY(cuda_check_stored("relu6_forward", "y", y, x->shape, st));
    CUDA_CHECK(
        mt_cuda_launch_relu6_forward(cu->stream, st, mt_shape4_count(x->shape), x->data, y->data));
    return MT_OK;
}

/* y (relu6's output), dy, dx: N,H,W,C; dx may alias dy */
static mt_status relu6_backward_op(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                   mt_tensor *dx) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_stored("relu6_backward", "y", y, y->shape, st));
    MT_TRY(cuda_check_stored("relu6_backward", "dy", dy, y->shape, st));
    MT_TRY(cuda_check_stored("relu6_backward", "dx", dx, y->shape, st));
    CUDA_CHECK(mt_cuda_launch_relu6_backward(cu->stream, st, mt_shape4_count(y->shape), y->data,
                                             dy->data, dx->data));
    return MT_OK;
}

mt_status cuda_p16_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    CUDA_PROFILED(backend, add_op(backend, a, b, y), "add", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(a->shape));
}

mt_status cuda_p16_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    CUDA_PROFILED(backend, relu6_forward_op(backend, x, y), "relu6_forward", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(x->shape));
}

mt_status cuda_p16_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                  mt_tensor *dx) {
    CUDA_PROFILED(backend, relu6_backward_op(backend, y, dy, dx), "relu6_backward", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(y->shape));
}

/* the first activation, written in 16 bits by the conversion kernel itself */
mt_status cuda_p16_input_convert(mt_backend *backend, int slot, mt_tensor *images,
                                 int32_t *labels) {
    return cuda_input_convert_stored(backend, cuda_precision_storage(cuda_of(backend)), slot,
                                     images, labels);
}

/* ---- batch normalization (the fused kernels) ------------------------------------------------ */

/* x, y: N,H,W,C (y apart from x when relu6); gamma, beta, moving_*, saved_*: [C] */
static mt_status bn_forward_training(mt_backend *backend, const char *op,
                                     const mt_batchnorm_desc *desc, const mt_tensor *x,
                                     const float *gamma, const float *beta, float *moving_mean,
                                     float *moving_variance, mt_tensor *y, float *saved_mean,
                                     float *saved_inv_std, bool relu6) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    unsigned *counters;
    MT_TRY(cuda_bn_prepare(backend, op, desc, x, "x", y, "y", st, false, &m, &scratch));
    if (relu6 && x->data == y->data)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: y must not alias x (the backward reads both)", op);
    MT_TRY(cuda_bn_counters(backend, desc->shape.c, &counters));
    CUDA_CHECK(mt_cuda_launch_bn_fused_forward_training(
        cu->stream, st, m, desc->shape.c, desc->epsilon, desc->momentum, relu6, x->data, gamma,
        beta, moving_mean, moving_variance, y->data, saved_mean, saved_inv_std, scratch, counters));
    return MT_OK;
}

/* x, y: N,H,W,C (y may alias x) */
static mt_status bn_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                      const mt_tensor *x, const float *gamma, const float *beta,
                                      const float *moving_mean, const float *moving_variance,
                                      mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    MT_TRY(cuda_bn_prepare(backend, "batchnorm_forward_inference", desc, x, "x", y, "y", st, false,
                           &m, &scratch));
    CUDA_CHECK(mt_cuda_launch_bn_fused_forward_inference(cu->stream, st, m, desc->shape.c,
                                                         desc->epsilon, x->data, gamma, beta,
                                                         moving_mean, moving_variance, y->data));
    return MT_OK;
}

/* Training (stat_* = saved mean and inverse std; y: ReLU6's output of a fused forward or NULL; dx
 * required) or inference (stat_* = moving mean and variance; y NULL; dx may be NULL). dx may
 * alias dy; dgamma, dbeta may be NULL. */
static mt_status bn_backward(mt_backend *backend, const char *op, const mt_batchnorm_desc *desc,
                             bool training, const mt_tensor *x, const mt_tensor *y,
                             const mt_tensor *dy, const float *gamma, const float *stat_mean,
                             const float *stat_second, mt_tensor *dx, float *dgamma, float *dbeta) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    unsigned *counters;
    if (training && !dx) return MT_FAIL(MT_ERR_INVALID, "cuda %s: dx must not be NULL", op);
    MT_TRY(cuda_bn_prepare(backend, op, desc, x, "x", dy, "dy", st, false, &m, &scratch));
    if (dx) MT_TRY(cuda_check_stored(op, "dx", dx, desc->shape, st));
    if (y) MT_TRY(cuda_check_stored(op, "y", y, desc->shape, st));
    MT_TRY(cuda_bn_counters(backend, desc->shape.c, &counters));
    CUDA_CHECK(mt_cuda_launch_bn_fused_backward(cu->stream, st, m, desc->shape.c, desc->epsilon,
                                                training, x->data, y ? y->data : NULL, dy->data,
                                                gamma, stat_mean, stat_second, dx ? dx->data : NULL,
                                                dgamma, dbeta, scratch, counters));
    return MT_OK;
}

mt_status cuda_p16_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const float *gamma,
                                              const float *beta, float *moving_mean,
                                              float *moving_variance, mt_tensor *y,
                                              float *saved_mean, float *saved_inv_std) {
    CUDA_PROFILED(backend,
                  bn_forward_training(backend, "batchnorm_forward_training", desc, x, gamma, beta,
                                      moving_mean, moving_variance, y, saved_mean, saved_inv_std,
                                      false),
                  "batchnorm_forward_training", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status cuda_p16_batchnorm_relu6_forward_training(mt_backend *backend,
                                                    const mt_batchnorm_desc *desc,
                                                    const mt_tensor *x, const float *gamma,
                                                    const float *beta, float *moving_mean,
                                                    float *moving_variance, mt_tensor *y,
                                                    float *saved_mean, float *saved_inv_std) {
    CUDA_PROFILED(backend,
                  bn_forward_training(backend, "batchnorm_relu6_forward_training", desc, x, gamma,
                                      beta, moving_mean, moving_variance, y, saved_mean,
                                      saved_inv_std, true),
                  "batchnorm_relu6_forward_training", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status cuda_p16_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                               const mt_tensor *x, const float *gamma,
                                               const float *beta, const float *moving_mean,
                                               const float *moving_variance, mt_tensor *y) {
    CUDA_PROFILED(
        backend,
        bn_forward_inference(backend, desc, x, gamma, beta, moving_mean, moving_variance, y),
        "batchnorm_forward_inference", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status cuda_p16_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                               const mt_tensor *x, const mt_tensor *dy,
                                               const float *gamma, const float *saved_mean,
                                               const float *saved_inv_std, mt_tensor *dx,
                                               float *dgamma, float *dbeta) {
    CUDA_PROFILED(backend,
                  bn_backward(backend, "batchnorm_backward_training", desc, true, x, NULL, dy,
                              gamma, saved_mean, saved_inv_std, dx, dgamma, dbeta),
                  "batchnorm_backward_training", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status cuda_p16_relu6_batchnorm_backward_training(
    mt_backend *backend, const mt_batchnorm_desc *desc, const mt_tensor *x, const mt_tensor *y,
    const mt_tensor *dy, const float *gamma, const float *saved_mean, const float *saved_inv_std,
    mt_tensor *dx, float *dgamma, float *dbeta) {
    CUDA_PROFILED(backend,
                  bn_backward(backend, "relu6_batchnorm_backward_training", desc, true, x, y, dy,
                              gamma, saved_mean, saved_inv_std, dx, dgamma, dbeta),
                  "relu6_batchnorm_backward_training", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(desc->shape));
}

mt_status cuda_p16_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                                const mt_tensor *x, const mt_tensor *dy,
                                                const float *gamma, const float *moving_mean,
                                                const float *moving_variance, mt_tensor *dx,
                                                float *dgamma, float *dbeta) {
    CUDA_PROFILED(backend,
                  bn_backward(backend, "batchnorm_backward_inference", desc, false, x, NULL, dy,
                              gamma, moving_mean, moving_variance, dx, dgamma, dbeta),
                  "batchnorm_backward_inference", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

/* ---- zero padding, pooling ------------------------------------------------------------------- */

/* x: N,H,W,C; y: N,H+top+bottom,W+left+right,C; and back */
static mt_status zero_pad_op(mt_backend *backend, const mt_zero_pad_desc *desc, bool forward,
                             const mt_tensor *in, mt_tensor *out) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    const mt_tensor *x = forward ? in : out, *y = forward ? out : in;
    MT_TRY(cuda_check_pad(forward ? "zero_pad_forward" : "zero_pad_backward", desc, x, y, st));
    const mt_shape4 i = x->shape, o = y->shape;
    if (forward)
        CUDA_CHECK(mt_cuda_launch_zero_pad_forward(cu->stream, st, i.n, i.h, i.w, i.c, o.h, o.w,
                                                   desc->top, desc->left, in->data, out->data));
    else
        CUDA_CHECK(mt_cuda_launch_zero_pad_backward(cu->stream, st, i.n, i.h, i.w, i.c, o.h, o.w,
                                                    desc->top, desc->left, in->data, out->data));
    return MT_OK;
}

mt_status cuda_p16_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                    const mt_tensor *x, mt_tensor *y) {
    CUDA_PROFILED(backend, zero_pad_op(backend, desc, true, x, y), "zero_pad_forward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->input));
}

mt_status cuda_p16_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                     const mt_tensor *dy, mt_tensor *dx) {
    CUDA_PROFILED(backend, zero_pad_op(backend, desc, false, dy, dx), "zero_pad_backward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->input));
}

/* x: N,H,W,C (16 bits); y: N,C (float, the head's input) */
static mt_status avg_pool_forward_op(mt_backend *backend, const mt_tensor *x, float *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_stored("global_avg_pool_forward", "x", x, x->shape, st));
    const mt_shape4 s = x->shape;
    CUDA_CHECK(
        mt_cuda_launch_avg_pool_forward(cu->stream, st, s.n, (long)s.h * s.w, s.c, x->data, y));
    return MT_OK;
}

/* dy: N,C (float); dx: N,H,W,C (16 bits) */
static mt_status avg_pool_backward_op(mt_backend *backend, const float *dy, mt_tensor *dx) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_stored("global_avg_pool_backward", "dx", dx, dx->shape, st));
    const mt_shape4 s = dx->shape;
    CUDA_CHECK(
        mt_cuda_launch_avg_pool_backward(cu->stream, st, s.n, (long)s.h * s.w, s.c, dy, dx->data));
    return MT_OK;
}

mt_status cuda_p16_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y) {
    CUDA_PROFILED(backend, avg_pool_forward_op(backend, x, y), "global_avg_pool_forward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(x->shape));
}

mt_status cuda_p16_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx) {
    CUDA_PROFILED(backend, avg_pool_backward_op(backend, dy, dx), "global_avg_pool_backward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(dx->shape));
}
