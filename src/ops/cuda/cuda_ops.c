/* The "cuda" backend's ops other than convolution and batch normalization (cuda_ops_bn.c):
 * elementwise, zero padding, pooling, dropout, the dense layer (cuBLAS) and the losses. Each checks
 * its arguments on the host, then enqueues kernels from cuda_kernels_*.cu on the backend's stream;
 * only the loss waits for the device (its value goes to the host). The same ops serve every
 * precision: tensors (mt_tensor) are in the backend's storage (cuda_precision_storage: fp32, or
 * bf16/fp16, which the kernels read into fp32 and round once on store), plain buffers (the head,
 * the loss) are float. The ops table's entries (at the end) wrap each op in MT_CUDA_PROFILE's
 * event pair; the window is set in cuda_diagnostics.c. */
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/cuda_optimizer.h"
#include "ops/dropout_hash.h"

/* ---- elementwise --------------------------------------------------------------------------- */

/* all bits clear: +0 in every storage */
static mt_status tensor_zero_op(mt_backend *backend, mt_tensor *tensor) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("tensor_zero", "tensor", tensor, tensor->shape, st));
    CUDA_CHECK(cudaMemsetAsync(
        tensor->data, 0, mt_shape4_count(tensor->shape) * cuda_storage_bytes(st), cu->stream));
    return MT_OK;
}

/* src, dst: N,H,W,C */
static mt_status tensor_copy_op(mt_backend *backend, const mt_tensor *src, mt_tensor *dst) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("tensor_copy", "src", src, src->shape, st));
    MT_TRY(cuda_check_tensor("tensor_copy", "dst", dst, src->shape, st));
    if (src->data == dst->data) return MT_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst->data, src->data,
                               mt_shape4_count(src->shape) * cuda_storage_bytes(st),
                               cudaMemcpyDeviceToDevice, cu->stream));
    return MT_OK;
}

/* a, b, y: N,H,W,C; y may alias a or b (each element is read before it is written) */
static mt_status add_op(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("add", "a", a, a->shape, st));
    MT_TRY(cuda_check_tensor("add", "b", b, a->shape, st));
    MT_TRY(cuda_check_tensor("add", "y", y, a->shape, st));
    CUDA_CHECK(
        mt_cuda_launch_add(cu->stream, st, mt_shape4_count(a->shape), a->data, b->data, y->data));
    return MT_OK;
}

/* x, y: N,H,W,C; y may alias x */
static mt_status relu6_forward_op(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("relu6_forward", "x", x, x->shape, st));
    MT_TRY(cuda_check_tensor("relu6_forward", "y", y, x->shape, st));
    CUDA_CHECK(
        mt_cuda_launch_relu6_forward(cu->stream, st, mt_shape4_count(x->shape), x->data, y->data));
    return MT_OK;
}

/* y (relu6's output), dy, dx: N,H,W,C; dx may alias dy */
static mt_status relu6_backward_op(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                   mt_tensor *dx) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("relu6_backward", "y", y, y->shape, st));
    MT_TRY(cuda_check_tensor("relu6_backward", "dy", dy, y->shape, st));
    MT_TRY(cuda_check_tensor("relu6_backward", "dx", dx, y->shape, st));
    CUDA_CHECK(mt_cuda_launch_relu6_backward(cu->stream, st, mt_shape4_count(y->shape), y->data,
                                             dy->data, dx->data));
    return MT_OK;
}

/* ---- zero padding -------------------------------------------------------------------------- */

/* x: the input, y: the padded tensor, both of `storage` */
static mt_status check_pad(const char *op, const mt_zero_pad_desc *d, const mt_tensor *x,
                           const mt_tensor *y, mt_cuda_storage storage) {
    if (d->top < 0 || d->left < 0 || d->bottom < 0 || d->right < 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: negative padding (t%d l%d b%d r%d)", op, d->top,
                       d->left, d->bottom, d->right);
    mt_shape4 padded = {.n = d->input.n,
                        .h = d->input.h + d->top + d->bottom,
                        .w = d->input.w + d->left + d->right,
                        .c = d->input.c};
    MT_TRY(cuda_check_tensor(op, "input", x, d->input, storage));
    MT_TRY(cuda_check_tensor(op, "padded output", y, padded, storage));
    return MT_OK;
}

/* x: N,H,W,C; y: N,H+top+bottom,W+left+right,C */
static mt_status zero_pad_forward_op(mt_backend *backend, const mt_zero_pad_desc *desc,
                                     const mt_tensor *x, mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(check_pad("zero_pad_forward", desc, x, y, st));
    const mt_shape4 i = x->shape, o = y->shape;
    CUDA_CHECK(mt_cuda_launch_zero_pad_forward(cu->stream, st, i.n, i.h, i.w, i.c, o.h, o.w,
                                               desc->top, desc->left, x->data, y->data));
    return MT_OK;
}

/* dy: N,H+top+bottom,W+left+right,C; dx: N,H,W,C */
static mt_status zero_pad_backward_op(mt_backend *backend, const mt_zero_pad_desc *desc,
                                      const mt_tensor *dy, mt_tensor *dx) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(check_pad("zero_pad_backward", desc, dx, dy, st));
    const mt_shape4 i = dx->shape, o = dy->shape;
    CUDA_CHECK(mt_cuda_launch_zero_pad_backward(cu->stream, st, i.n, i.h, i.w, i.c, o.h, o.w,
                                                desc->top, desc->left, dy->data, dx->data));
    return MT_OK;
}

/* ---- head ---------------------------------------------------------------------------------- */

/* x: N,H,W,C (the backend's storage); y: N,C (float, the head's input) */
static mt_status global_avg_pool_forward_op(mt_backend *backend, const mt_tensor *x, float *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("global_avg_pool_forward", "x", x, x->shape, st));
    const mt_shape4 s = x->shape;
    CUDA_CHECK(
        mt_cuda_launch_avg_pool_forward(cu->stream, st, s.n, (long)s.h * s.w, s.c, x->data, y));
    return MT_OK;
}

/* dy: N,C (float); dx: N,H,W,C (the backend's storage) */
static mt_status global_avg_pool_backward_op(mt_backend *backend, const float *dy, mt_tensor *dx) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    MT_TRY(cuda_check_tensor("global_avg_pool_backward", "dx", dx, dx->shape, st));
    const mt_shape4 s = dx->shape;
    CUDA_CHECK(
        mt_cuda_launch_avg_pool_backward(cu->stream, st, s.n, (long)s.h * s.w, s.c, dy, dx->data));
    return MT_OK;
}

static mt_status check_rate(const char *op, float rate) {
    if (!(rate >= 0.0f && rate < 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: dropout rate %g is outside [0, 1)", op, rate);
    return MT_OK;
}

/* x, y, mask: [count] (y may alias x) */
static mt_status dropout_forward_op(mt_backend *backend, size_t count, float rate,
                                    const uint64_t *seed, const float *x, float *y, uint8_t *mask) {
    MT_TRY(check_rate("dropout_forward", rate));
    if (!count) return MT_OK;
    CUDA_CHECK(mt_cuda_launch_dropout_forward(cuda_of(backend)->stream, count, seed,
                                              mt_dropout_threshold(rate), 1.0f / (1.0f - rate), x,
                                              y, mask));
    return MT_OK;
}

/* mask, dy, dx: [count] (dx may alias dy) */
static mt_status dropout_backward_op(mt_backend *backend, size_t count, float rate,
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
static mt_status dense_forward_op(mt_backend *backend, const mt_dense_desc *desc, const float *x,
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
static mt_status dense_backward_op(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                   const float *w, const float *dy, float *dx, float *dw,
                                   float *db) {
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
static mt_status loss_forward_backward_op(mt_backend *backend, const mt_loss_desc *desc,
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

/* loss_accumulate: the loss kernel adds into the device accumulator; no wait, no label check
 * (the caller checked them on the host: a bad one counts as a padding row here). */
static mt_status loss_accumulate_op(mt_backend *backend, const mt_loss_desc *desc,
                                    const float *logits, const int32_t *labels, float *dlogits,
                                    const uint64_t *step, double *accum, float *skip) {
    const int N = desc->batch, K = desc->classes;
    if (N <= 0 || K <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda loss: bad shape batch %d, classes %d", N, K);
    if (!dlogits || !accum || !skip)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda loss_accumulate: dlogits, accum and skip are required");
    CUDA_CHECK(mt_cuda_launch_loss_accumulate(cuda_of(backend)->stream, N, K, logits, labels,
                                              dlogits, step, accum, skip));
    return MT_OK;
}

/* ---- the ops table's entries: each op, profiled while MT_CUDA_PROFILE's window is open ----- */

mt_status mt_cuda_tensor_zero(mt_backend *backend, mt_tensor *tensor) {
    CUDA_PROFILED(backend, tensor_zero_op(backend, tensor), "tensor_zero", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(tensor->shape));
}

mt_status mt_cuda_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst) {
    CUDA_PROFILED(backend, tensor_copy_op(backend, src, dst), "tensor_copy", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(src->shape));
}

mt_status mt_cuda_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    CUDA_PROFILED(backend, add_op(backend, a, b, y), "add", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(a->shape));
}

mt_status mt_cuda_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    CUDA_PROFILED(backend, relu6_forward_op(backend, x, y), "relu6_forward", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(x->shape));
}

mt_status mt_cuda_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                 mt_tensor *dx) {
    CUDA_PROFILED(backend, relu6_backward_op(backend, y, dy, dx), "relu6_backward", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(y->shape));
}

mt_status mt_cuda_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *x, mt_tensor *y) {
    CUDA_PROFILED(backend, zero_pad_forward_op(backend, desc, x, y), "zero_pad_forward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->input));
}

mt_status mt_cuda_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                    const mt_tensor *dy, mt_tensor *dx) {
    CUDA_PROFILED(backend, zero_pad_backward_op(backend, desc, dy, dx), "zero_pad_backward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->input));
}

mt_status mt_cuda_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y) {
    CUDA_PROFILED(backend, global_avg_pool_forward_op(backend, x, y), "global_avg_pool_forward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(x->shape));
}

mt_status mt_cuda_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx) {
    CUDA_PROFILED(backend, global_avg_pool_backward_op(backend, dy, dx), "global_avg_pool_backward",
                  CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(dx->shape));
}

mt_status mt_cuda_dropout_forward(mt_backend *backend, size_t count, float rate,
                                  const uint64_t *seed, const float *x, float *y, uint8_t *mask) {
    CUDA_PROFILED(backend, dropout_forward_op(backend, count, rate, seed, x, y, mask),
                  "dropout_forward", "%zu values", count);
}

mt_status mt_cuda_dropout_backward(mt_backend *backend, size_t count, float rate,
                                   const uint8_t *mask, const float *dy, float *dx) {
    CUDA_PROFILED(backend, dropout_backward_op(backend, count, rate, mask, dy, dx),
                  "dropout_backward", "%zu values", count);
}

mt_status mt_cuda_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *b, float *y) {
    CUDA_PROFILED(backend, dense_forward_op(backend, desc, x, w, b, y), "dense_forward",
                  "N%d %d -> %d", desc->batch, desc->in_features, desc->out_features);
}

mt_status mt_cuda_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                 const float *w, const float *dy, float *dx, float *dw, float *db) {
    CUDA_PROFILED(backend, dense_backward_op(backend, desc, x, w, dy, dx, dw, db), "dense_backward",
                  "N%d %d -> %d%s", desc->batch, desc->in_features, desc->out_features,
                  dx ? "" : " (no dx)");
}

/* the optimizer's kernel lives in cuda_optimizer.c; its table entry is this profiled one */
mt_status mt_cuda_optimizer_update_profiled(mt_backend *backend, const mt_optimizer_desc *desc,
                                            float *params, const float *grads, float *slots) {
    CUDA_PROFILED(backend, mt_cuda_optimizer_update(backend, desc, params, grads, slots),
                  "optimizer_update", "%zu parameters", desc->count);
}

/* The loss op, inside MT_CUDA_PROFILE's event pair while the window is open. */
static mt_status loss_forward_backward_profiled(mt_backend *backend, const mt_loss_desc *desc,
                                                const float *logits, const int32_t *labels,
                                                float *loss_host, float *dlogits) {
    CUDA_PROFILED(backend,
                  loss_forward_backward_op(backend, desc, logits, labels, loss_host, dlogits),
                  "loss_forward_backward", "N%d classes %d", desc->batch, desc->classes);
}

static mt_status loss_accumulate_profiled(mt_backend *backend, const mt_loss_desc *desc,
                                          const float *logits, const int32_t *labels,
                                          float *dlogits, const uint64_t *step, double *accum,
                                          float *skip) {
    CUDA_PROFILED(backend,
                  loss_accumulate_op(backend, desc, logits, labels, dlogits, step, accum, skip),
                  "loss_accumulate", "N%d classes %d", desc->batch, desc->classes);
}

/* The profiled step ends here (see cuda_profiler). */
mt_status mt_cuda_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                        const float *logits, const int32_t *labels,
                                        float *loss_host, float *dlogits) {
    MT_TRY(loss_forward_backward_profiled(backend, desc, logits, labels, loss_host, dlogits));
    return cuda_profile_loss_done(cuda_of(backend));
}

/* The training step's loss (the trainer's per-step op; same profile window as the above). */
mt_status mt_cuda_loss_accumulate(mt_backend *backend, const mt_loss_desc *desc,
                                  const float *logits, const int32_t *labels, float *dlogits,
                                  const uint64_t *step, double *accum, float *skip) {
    MT_TRY(loss_accumulate_profiled(backend, desc, logits, labels, dlogits, step, accum, skip));
    return cuda_profile_loss_done(cuda_of(backend));
}
