/* The "cuda" backend's ops other than convolution: elementwise, batch normalization, zero padding,
 * pooling, dropout, the dense layer (cuBLAS) and the losses. Each checks its arguments on the
 * host, then enqueues kernels from cuda_kernels.cu on the backend's stream; only the loss waits
 * for the device (its value goes to the host). */
#include <stdio.h>

#include "ops/cuda/cuda_internal.h"
#include "ops/dropout_hash.h"

/* ---- elementwise --------------------------------------------------------------------------- */

mt_status mt_cuda_tensor_zero(mt_backend *backend, mt_tensor *tensor) {
    MT_TRY(cuda_check_tensor("tensor_zero", "tensor", tensor, tensor->shape));
    CUDA_CHECK(cudaMemsetAsync(tensor->data, 0, mt_shape4_count(tensor->shape) * sizeof(float),
                               cuda_of(backend)->stream));
    return MT_OK;
}

/* src, dst: N,H,W,C */
mt_status mt_cuda_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst) {
    MT_TRY(cuda_check_tensor("tensor_copy", "src", src, src->shape));
    MT_TRY(cuda_check_tensor("tensor_copy", "dst", dst, src->shape));
    if (src->data == dst->data) return MT_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst->data, src->data, mt_shape4_count(src->shape) * sizeof(float),
                               cudaMemcpyDeviceToDevice, cuda_of(backend)->stream));
    return MT_OK;
}

/* a, b, y: N,H,W,C; y may alias a or b (each element is read before it is written) */
mt_status mt_cuda_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    MT_TRY(cuda_check_tensor("add", "a", a, a->shape));
    MT_TRY(cuda_check_tensor("add", "b", b, a->shape));
    MT_TRY(cuda_check_tensor("add", "y", y, a->shape));
    CUDA_CHECK(mt_cuda_launch_add(cuda_of(backend)->stream, mt_shape4_count(a->shape), a->data,
                                  b->data, y->data));
    return MT_OK;
}

/* x, y: N,H,W,C; y may alias x */
mt_status mt_cuda_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    MT_TRY(cuda_check_tensor("relu6_forward", "x", x, x->shape));
    MT_TRY(cuda_check_tensor("relu6_forward", "y", y, x->shape));
    CUDA_CHECK(mt_cuda_launch_relu6_forward(cuda_of(backend)->stream, mt_shape4_count(x->shape),
                                            x->data, y->data));
    return MT_OK;
}

/* y (relu6's output), dy, dx: N,H,W,C; dx may alias dy */
mt_status mt_cuda_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                 mt_tensor *dx) {
    MT_TRY(cuda_check_tensor("relu6_backward", "y", y, y->shape));
    MT_TRY(cuda_check_tensor("relu6_backward", "dy", dy, y->shape));
    MT_TRY(cuda_check_tensor("relu6_backward", "dx", dx, y->shape));
    CUDA_CHECK(mt_cuda_launch_relu6_backward(cuda_of(backend)->stream, mt_shape4_count(y->shape),
                                             y->data, dy->data, dx->data));
    return MT_OK;
}

/* ---- batch normalization ------------------------------------------------------------------- */

/* Checks the descriptor and the tensors, and returns M (rows) and the reduction scratch. */
static mt_status bn_prepare(mt_backend *backend, const char *op, const mt_batchnorm_desc *d,
                            const mt_tensor *a, const char *a_name, const mt_tensor *b,
                            const char *b_name, long *m, double **scratch) {
    if (!(d->epsilon >= 0.0f) || !(d->momentum >= 0.0f && d->momentum <= 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: epsilon %g must be >= 0 and momentum %g in [0, 1]",
                       op, d->epsilon, d->momentum);
    if (d->shape.n <= 0 || d->shape.h <= 0 || d->shape.w <= 0 || d->shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: empty shape %dx%dx%dx%d", op, d->shape.n,
                       d->shape.h, d->shape.w, d->shape.c);
    MT_TRY(cuda_check_tensor(op, a_name, a, d->shape));
    if (b) MT_TRY(cuda_check_tensor(op, b_name, b, d->shape));
    *m = (long)d->shape.n * d->shape.h * d->shape.w;
    cuda_backend *cu = cuda_of(backend);
    void *p;
    MT_TRY(cuda_scratch_get(cu, &cu->partials, mt_cuda_bn_scratch_doubles(*m, d->shape.c) * 8, &p));
    *scratch = p;
    return MT_OK;
}

/* x, y: N,H,W,C; gamma, beta, moving_*, saved_*: [C] */
mt_status mt_cuda_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, float *moving_mean,
                                             float *moving_variance, mt_tensor *y,
                                             float *saved_mean, float *saved_inv_std) {
    long m;
    double *scratch;
    MT_TRY(bn_prepare(backend, "batchnorm_forward_training", desc, x, "x", y, "y", &m, &scratch));
    CUDA_CHECK(mt_cuda_launch_bn_forward_training(
        cuda_of(backend)->stream, m, desc->shape.c, desc->epsilon, desc->momentum, x->data, gamma,
        beta, moving_mean, moving_variance, y->data, saved_mean, saved_inv_std, scratch));
    return MT_OK;
}

/* x, y: N,H,W,C (y may alias x); gamma, beta, moving_*: [C] */
mt_status mt_cuda_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const float *gamma,
                                              const float *beta, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *y) {
    long m;
    double *scratch;
    MT_TRY(bn_prepare(backend, "batchnorm_forward_inference", desc, x, "x", y, "y", &m, &scratch));
    CUDA_CHECK(mt_cuda_launch_bn_forward_inference(cuda_of(backend)->stream, m, desc->shape.c,
                                                   desc->epsilon, x->data, gamma, beta, moving_mean,
                                                   moving_variance, y->data, scratch));
    return MT_OK;
}

/* x, dy, dx: N,H,W,C (dx may alias dy); gamma, saved_*, dgamma, dbeta: [C] */
mt_status mt_cuda_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *saved_mean,
                                              const float *saved_inv_std, mt_tensor *dx,
                                              float *dgamma, float *dbeta) {
    long m;
    double *scratch;
    if (!dx)
        return MT_FAIL(MT_ERR_INVALID, "cuda batchnorm_backward_training: dx must not be NULL");
    MT_TRY(
        bn_prepare(backend, "batchnorm_backward_training", desc, x, "x", dy, "dy", &m, &scratch));
    MT_TRY(cuda_check_tensor("batchnorm_backward_training", "dx", dx, desc->shape));
    CUDA_CHECK(mt_cuda_launch_bn_backward(cuda_of(backend)->stream, m, desc->shape.c, desc->epsilon,
                                          1, x->data, dy->data, gamma, saved_mean, saved_inv_std,
                                          dx->data, dgamma, dbeta, scratch));
    return MT_OK;
}

/* x, dy, dx: N,H,W,C (dx may be NULL or alias dy); gamma, moving_*, dgamma, dbeta: [C] */
mt_status mt_cuda_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                               const mt_tensor *x, const mt_tensor *dy,
                                               const float *gamma, const float *moving_mean,
                                               const float *moving_variance, mt_tensor *dx,
                                               float *dgamma, float *dbeta) {
    long m;
    double *scratch;
    MT_TRY(
        bn_prepare(backend, "batchnorm_backward_inference", desc, x, "x", dy, "dy", &m, &scratch));
    if (dx) MT_TRY(cuda_check_tensor("batchnorm_backward_inference", "dx", dx, desc->shape));
    CUDA_CHECK(mt_cuda_launch_bn_backward(cuda_of(backend)->stream, m, desc->shape.c, desc->epsilon,
                                          0, x->data, dy->data, gamma, moving_mean, moving_variance,
                                          dx ? dx->data : NULL, dgamma, dbeta, scratch));
    return MT_OK;
}

/* ---- zero padding -------------------------------------------------------------------------- */

static mt_status check_pad(const char *op, const mt_zero_pad_desc *d, const mt_tensor *x,
                           const mt_tensor *y) {
    if (d->top < 0 || d->left < 0 || d->bottom < 0 || d->right < 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: negative padding (t%d l%d b%d r%d)", op, d->top,
                       d->left, d->bottom, d->right);
    mt_shape4 padded = {.n = d->input.n,
                        .h = d->input.h + d->top + d->bottom,
                        .w = d->input.w + d->left + d->right,
                        .c = d->input.c};
    MT_TRY(cuda_check_tensor(op, "input", x, d->input));
    MT_TRY(cuda_check_tensor(op, "padded output", y, padded));
    return MT_OK;
}

/* x: N,H,W,C; y: N,H+top+bottom,W+left+right,C */
mt_status mt_cuda_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *x, mt_tensor *y) {
    MT_TRY(check_pad("zero_pad_forward", desc, x, y));
    const mt_shape4 i = x->shape, o = y->shape;
    CUDA_CHECK(mt_cuda_launch_zero_pad_forward(cuda_of(backend)->stream, i.n, i.h, i.w, i.c, o.h,
                                               o.w, desc->top, desc->left, x->data, y->data));
    return MT_OK;
}

/* dy: N,H+top+bottom,W+left+right,C; dx: N,H,W,C */
mt_status mt_cuda_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                    const mt_tensor *dy, mt_tensor *dx) {
    MT_TRY(check_pad("zero_pad_backward", desc, dx, dy));
    const mt_shape4 i = dx->shape, o = dy->shape;
    CUDA_CHECK(mt_cuda_launch_zero_pad_backward(cuda_of(backend)->stream, i.n, i.h, i.w, i.c, o.h,
                                                o.w, desc->top, desc->left, dy->data, dx->data));
    return MT_OK;
}

/* ---- head ---------------------------------------------------------------------------------- */

/* x: N,H,W,C; y: N,C */
mt_status mt_cuda_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y) {
    MT_TRY(cuda_check_tensor("global_avg_pool_forward", "x", x, x->shape));
    const mt_shape4 s = x->shape;
    CUDA_CHECK(mt_cuda_launch_avg_pool_forward(cuda_of(backend)->stream, s.n, (long)s.h * s.w, s.c,
                                               x->data, y));
    return MT_OK;
}

/* dy: N,C; dx: N,H,W,C */
mt_status mt_cuda_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx) {
    MT_TRY(cuda_check_tensor("global_avg_pool_backward", "dx", dx, dx->shape));
    const mt_shape4 s = dx->shape;
    CUDA_CHECK(mt_cuda_launch_avg_pool_backward(cuda_of(backend)->stream, s.n, (long)s.h * s.w, s.c,
                                                dy, dx->data));
    return MT_OK;
}

static mt_status check_rate(const char *op, float rate) {
    if (!(rate >= 0.0f && rate < 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: dropout rate %g is outside [0, 1)", op, rate);
    return MT_OK;
}

/* x, y, mask: [count] (y may alias x) */
mt_status mt_cuda_dropout_forward(mt_backend *backend, size_t count, float rate, uint64_t seed,
                                  const float *x, float *y, uint8_t *mask) {
    MT_TRY(check_rate("dropout_forward", rate));
    if (!count) return MT_OK;
    CUDA_CHECK(mt_cuda_launch_dropout_forward(cuda_of(backend)->stream, count, seed,
                                              mt_dropout_threshold(rate), 1.0f / (1.0f - rate), x,
                                              y, mask));
    return MT_OK;
}

/* mask, dy, dx: [count] (dx may alias dy) */
mt_status mt_cuda_dropout_backward(mt_backend *backend, size_t count, float rate,
                                   const uint8_t *mask, const float *dy, float *dx) {
    MT_TRY(check_rate("dropout_backward", rate));
    if (!count) return MT_OK;
    CUDA_CHECK(mt_cuda_launch_dropout_backward(cuda_of(backend)->stream, count,
                                               1.0f / (1.0f - rate), mask, dy, dx));
    return MT_OK;
}

static mt_status check_dense(const char *op, const mt_dense_desc *d) {
    if (d->batch <= 0 || d->in_features <= 0 || d->out_features <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: bad shape batch %d, in %d, out %d", op, d->batch,
                       d->in_features, d->out_features);
    return MT_OK;
}

/* Row-major matrices are column-major transposes, so every product below is written for
 * cuBLAS' column-major view: y^T = w^T x^T and so on. */

/* x: [N][in]; w: [in][out]; b: [out]; y: [N][out] = x*w + b */
mt_status mt_cuda_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *b, float *y) {
    MT_TRY(check_dense("dense_forward", desc));
    cuda_backend *cu = cuda_of(backend);
    const int N = desc->batch, I = desc->in_features, O = desc->out_features;
    const float one = 1.0f;
    CUDA_CHECK(mt_cuda_launch_broadcast_rows(cu->stream, N, O, b, y));
    CUBLAS_CHECK(
        cublasSgemm(cu->cublas, CUBLAS_OP_N, CUBLAS_OP_N, O, N, I, &one, w, O, x, I, &one, y, O));
    return MT_OK;
}

/* dx: [N][in] = dy*w^T; dw: [in][out] = x^T*dy; db: [out] = column sums of dy; each may be NULL */
mt_status mt_cuda_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                 const float *w, const float *dy, float *dx, float *dw, float *db) {
    MT_TRY(check_dense("dense_backward", desc));
    cuda_backend *cu = cuda_of(backend);
    const int N = desc->batch, I = desc->in_features, O = desc->out_features;
    const float one = 1.0f, zero = 0.0f;
    if (dx)
        CUBLAS_CHECK(cublasSgemm(cu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, I, N, O, &one, w, O, dy, O,
                                 &zero, dx, I));
    if (dw)
        CUBLAS_CHECK(cublasSgemm(cu->cublas, CUBLAS_OP_N, CUBLAS_OP_T, O, I, N, &one, dy, O, x, I,
                                 &zero, dw, O));
    if (db) CUDA_CHECK(mt_cuda_launch_column_sums(cu->stream, N, O, dy, db));
    return MT_OK;
}

/* logits: [N][classes]; labels: int32 [N] (-1 = padding row); dlogits: [N][classes] or NULL.
 * The one op that waits: the loss value crosses to the host. */
mt_status mt_cuda_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                        const float *logits, const int32_t *labels,
                                        float *loss_host, float *dlogits) {
    const int N = desc->batch, K = desc->classes;
    if (N <= 0 || K <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda loss: bad shape batch %d, classes %d", N, K);
    cuda_backend *cu = cuda_of(backend);
    CUDA_CHECK(mt_cuda_launch_loss(cu->stream, N, K, logits, labels, dlogits, cu->device_result));
    CUDA_CHECK(cudaMemcpyAsync(cu->host_result, cu->device_result, 3 * sizeof(double),
                               cudaMemcpyDeviceToHost, cu->stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    const int bad = (int)cu->host_result[2];
    if (bad >= 0) {
        int32_t label = 0;
        CUDA_CHECK(cudaMemcpyAsync(&label, labels + bad, sizeof label, cudaMemcpyDeviceToHost,
                                   cu->stream));
        CUDA_CHECK(cudaStreamSynchronize(cu->stream));
        return MT_FAIL(MT_ERR_INVALID,
                       "loss: label %d of row %d is outside [0, %d) (or -1 for a padding row)",
                       (int)label, bad, K == 1 ? 2 : K);
    }
    *loss_host = (float)cu->host_result[0];
    return MT_OK;
}
