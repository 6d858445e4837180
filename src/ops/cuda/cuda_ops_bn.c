/* The "cuda" backend's batch normalization ops (ops.h), alone and fused with ReLU6, in every
 * precision: each checks its arguments on the host, then enqueues the BN kernels on the backend's
 * stream. x, y, dy, dx are in the backend's storage (cuda_precision_storage: fp32, or bf16/fp16
 * read into fp32 and rounded once on store by the fused kernels); gamma, beta, the statistics and
 * their gradients are float. MT_CUDA_BN=legacy (cu->bn_legacy, set in cuda_diagnostics.c) runs
 * the first, double-precision kernels, which are fp32 only: cuda_precision_init refuses it with
 * bf16/fp16, so the legacy branches only ever see MT_CUDA_F32 tensors. */
#include "ops/cuda/cuda_internal.h"

/* Checks the descriptor and the tensors (of `storage`), and returns M (rows) and the reduction
 * scratch of the legacy kernels or the fused ones. */
static mt_status bn_prepare(mt_backend *backend, const char *op, const mt_batchnorm_desc *d,
                            const mt_tensor *a, const char *a_name, const mt_tensor *b,
                            const char *b_name, mt_cuda_storage storage, bool legacy, long *m,
                            void **scratch) {
    if (!(d->epsilon >= 0.0f) || !(d->momentum >= 0.0f && d->momentum <= 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: epsilon %g must be >= 0 and momentum %g in [0, 1]",
                       op, d->epsilon, d->momentum);
    if (d->shape.n <= 0 || d->shape.h <= 0 || d->shape.w <= 0 || d->shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: empty shape %dx%dx%dx%d", op, d->shape.n,
                       d->shape.h, d->shape.w, d->shape.c);
    MT_TRY(cuda_check_tensor(op, a_name, a, d->shape, storage));
    if (b) MT_TRY(cuda_check_tensor(op, b_name, b, d->shape, storage));
    *m = (long)d->shape.n * d->shape.h * d->shape.w;
    cuda_backend *cu = cuda_of(backend);
    size_t bytes = legacy ? mt_cuda_bn_scratch_doubles(*m, d->shape.c) * sizeof(double)
                          : mt_cuda_bn_fused_scratch_floats(*m, d->shape.c) * sizeof(float);
    return cuda_scratch_get(cu, &cu->partials, bytes, scratch);
}

/* The fused kernels' tickets for C channels: zeroed pool memory, grown (never shrunk) on demand
 * (the warm-up step before a capture meets the largest C); the old block goes back to the pool
 * in stream order, so no launch still using it is affected. */
static mt_status bn_counters(mt_backend *backend, int c, unsigned **out) {
    cuda_backend *cu = cuda_of(backend);
    int need = mt_cuda_bn_fused_counters(c);
    if (need > cu->bn_counter_count) {
        if (need < 64) need = 64;
        void *p;
        MT_TRY(backend->ops->buffer_alloc(backend, (size_t)need * sizeof(unsigned), &p));
        if (cu->bn_counters) {
            backend->ops->buffer_free(backend, cu->bn_counters);
            /* a captured step points at the old block, now the pool's: refuse its replays (a
             * capture that grows them keeps the old block itself, cuda_graph.c) */
            if (!cu->capturing) cu->memory_generation++;
        }
        cu->bn_counters = p;
        cu->bn_counter_count = need;
    }
    *out = cu->bn_counters;
    return MT_OK;
}

/* x, y: N,H,W,C (y apart from x); gamma, beta, moving_*, saved_*: [C]; y = relu6(BN(x)) when
 * relu6 */
static mt_status bn_forward_training(mt_backend *backend, const char *op,
                                     const mt_batchnorm_desc *desc, const mt_tensor *x,
                                     const float *gamma, const float *beta, float *moving_mean,
                                     float *moving_variance, mt_tensor *y, float *saved_mean,
                                     float *saved_inv_std, bool relu6) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    MT_TRY(bn_prepare(backend, op, desc, x, "x", y, "y", st, cu->bn_legacy, &m, &scratch));
    if (relu6 && x->data == y->data)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: y must not alias x (the backward reads both)", op);
    const int c = desc->shape.c;
    if (cu->bn_legacy) {
        CUDA_CHECK(mt_cuda_launch_bn_forward_training(
            cu->stream, m, c, desc->epsilon, desc->momentum, x->data, gamma, beta, moving_mean,
            moving_variance, y->data, saved_mean, saved_inv_std, scratch));
        if (relu6)
            CUDA_CHECK(mt_cuda_launch_relu6_forward(cu->stream, MT_CUDA_F32, (size_t)m * c, y->data,
                                                    y->data));
        return MT_OK;
    }
    unsigned *counters;
    MT_TRY(bn_counters(backend, c, &counters));
    CUDA_CHECK(mt_cuda_launch_bn_fused_forward_training(
        cu->stream, st, m, c, desc->epsilon, desc->momentum, relu6, x->data, gamma, beta,
        moving_mean, moving_variance, y->data, saved_mean, saved_inv_std, scratch, counters));
    return MT_OK;
}

static mt_status batchnorm_forward_training_op(mt_backend *backend, const mt_batchnorm_desc *desc,
                                               const mt_tensor *x, const float *gamma,
                                               const float *beta, float *moving_mean,
                                               float *moving_variance, mt_tensor *y,
                                               float *saved_mean, float *saved_inv_std) {
    return bn_forward_training(backend, "batchnorm_forward_training", desc, x, gamma, beta,
                               moving_mean, moving_variance, y, saved_mean, saved_inv_std, false);
}

static mt_status batchnorm_relu6_forward_training_op(mt_backend *backend,
                                                     const mt_batchnorm_desc *desc,
                                                     const mt_tensor *x, const float *gamma,
                                                     const float *beta, float *moving_mean,
                                                     float *moving_variance, mt_tensor *y,
                                                     float *saved_mean, float *saved_inv_std) {
    return bn_forward_training(backend, "batchnorm_relu6_forward_training", desc, x, gamma, beta,
                               moving_mean, moving_variance, y, saved_mean, saved_inv_std, true);
}

/* x, y: N,H,W,C (y may alias x); gamma, beta, moving_*: [C] */
static mt_status batchnorm_forward_inference_op(mt_backend *backend, const mt_batchnorm_desc *desc,
                                                const mt_tensor *x, const float *gamma,
                                                const float *beta, const float *moving_mean,
                                                const float *moving_variance, mt_tensor *y) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    MT_TRY(bn_prepare(backend, "batchnorm_forward_inference", desc, x, "x", y, "y", st,
                      cu->bn_legacy, &m, &scratch));
    if (cu->bn_legacy)
        CUDA_CHECK(mt_cuda_launch_bn_forward_inference(cu->stream, m, desc->shape.c, desc->epsilon,
                                                       x->data, gamma, beta, moving_mean,
                                                       moving_variance, y->data, scratch));
    else
        CUDA_CHECK(mt_cuda_launch_bn_fused_forward_inference(
            cu->stream, st, m, desc->shape.c, desc->epsilon, x->data, gamma, beta, moving_mean,
            moving_variance, y->data));
    return MT_OK;
}

/* x, dy, dx: N,H,W,C (dx may alias dy); gamma, saved_*, dgamma, dbeta: [C]. y: NULL, or the
 * ReLU6's output of a fused forward (dy is then the gradient at y). */
static mt_status bn_backward_training(mt_backend *backend, const char *op,
                                      const mt_batchnorm_desc *desc, const mt_tensor *x,
                                      const mt_tensor *y, const mt_tensor *dy, const float *gamma,
                                      const float *saved_mean, const float *saved_inv_std,
                                      mt_tensor *dx, float *dgamma, float *dbeta) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    if (!dx) return MT_FAIL(MT_ERR_INVALID, "cuda %s: dx must not be NULL", op);
    MT_TRY(bn_prepare(backend, op, desc, x, "x", dy, "dy", st, cu->bn_legacy, &m, &scratch));
    MT_TRY(cuda_check_tensor(op, "dx", dx, desc->shape, st));
    if (y) MT_TRY(cuda_check_tensor(op, "y", y, desc->shape, st));
    const int c = desc->shape.c;
    if (cu->bn_legacy) {
        const float *g = dy->data;
        if (y) { /* ReLU6's backward into dx, then BN's in place */
            CUDA_CHECK(mt_cuda_launch_relu6_backward(cu->stream, MT_CUDA_F32, (size_t)m * c,
                                                     y->data, dy->data, dx->data));
            g = dx->data;
        }
        CUDA_CHECK(mt_cuda_launch_bn_backward(cu->stream, m, c, desc->epsilon, 1, x->data, g, gamma,
                                              saved_mean, saved_inv_std, dx->data, dgamma, dbeta,
                                              scratch));
        return MT_OK;
    }
    unsigned *counters;
    MT_TRY(bn_counters(backend, c, &counters));
    CUDA_CHECK(mt_cuda_launch_bn_fused_backward(
        cu->stream, st, m, c, desc->epsilon, 1, x->data, y ? y->data : NULL, dy->data, gamma,
        saved_mean, saved_inv_std, dx->data, dgamma, dbeta, scratch, counters));
    return MT_OK;
}

static mt_status batchnorm_backward_training_op(mt_backend *backend, const mt_batchnorm_desc *desc,
                                                const mt_tensor *x, const mt_tensor *dy,
                                                const float *gamma, const float *saved_mean,
                                                const float *saved_inv_std, mt_tensor *dx,
                                                float *dgamma, float *dbeta) {
    return bn_backward_training(backend, "batchnorm_backward_training", desc, x, NULL, dy, gamma,
                                saved_mean, saved_inv_std, dx, dgamma, dbeta);
}

static mt_status relu6_batchnorm_backward_training_op(
    mt_backend *backend, const mt_batchnorm_desc *desc, const mt_tensor *x, const mt_tensor *y,
    const mt_tensor *dy, const float *gamma, const float *saved_mean, const float *saved_inv_std,
    mt_tensor *dx, float *dgamma, float *dbeta) {
    return bn_backward_training(backend, "relu6_batchnorm_backward_training", desc, x, y, dy, gamma,
                                saved_mean, saved_inv_std, dx, dgamma, dbeta);
}

/* x, dy, dx: N,H,W,C (dx may be NULL or alias dy); gamma, moving_*, dgamma, dbeta: [C] */
static mt_status batchnorm_backward_inference_op(mt_backend *backend, const mt_batchnorm_desc *desc,
                                                 const mt_tensor *x, const mt_tensor *dy,
                                                 const float *gamma, const float *moving_mean,
                                                 const float *moving_variance, mt_tensor *dx,
                                                 float *dgamma, float *dbeta) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage st = cuda_precision_storage(cu);
    long m;
    void *scratch;
    MT_TRY(bn_prepare(backend, "batchnorm_backward_inference", desc, x, "x", dy, "dy", st,
                      cu->bn_legacy, &m, &scratch));
    if (dx) MT_TRY(cuda_check_tensor("batchnorm_backward_inference", "dx", dx, desc->shape, st));
    const int c = desc->shape.c;
    if (cu->bn_legacy) {
        CUDA_CHECK(mt_cuda_launch_bn_backward(cu->stream, m, c, desc->epsilon, 0, x->data, dy->data,
                                              gamma, moving_mean, moving_variance,
                                              dx ? dx->data : NULL, dgamma, dbeta, scratch));
        return MT_OK;
    }
    unsigned *counters;
    MT_TRY(bn_counters(backend, c, &counters));
    CUDA_CHECK(mt_cuda_launch_bn_fused_backward(
        cu->stream, st, m, c, desc->epsilon, 0, x->data, NULL, dy->data, gamma, moving_mean,
        moving_variance, dx ? dx->data : NULL, dgamma, dbeta, scratch, counters));
    return MT_OK;
}

/* ---- the ops table's entries: each op, profiled while MT_CUDA_PROFILE's window is open ----- */

mt_status mt_cuda_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, float *moving_mean,
                                             float *moving_variance, mt_tensor *y,
                                             float *saved_mean, float *saved_inv_std) {
    CUDA_PROFILED(backend,
                  batchnorm_forward_training_op(backend, desc, x, gamma, beta, moving_mean,
                                                moving_variance, y, saved_mean, saved_inv_std),
                  "batchnorm_forward_training", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status mt_cuda_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const float *gamma,
                                              const float *beta, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *y) {
    CUDA_PROFILED(backend,
                  batchnorm_forward_inference_op(backend, desc, x, gamma, beta, moving_mean,
                                                 moving_variance, y),
                  "batchnorm_forward_inference", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status mt_cuda_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *saved_mean,
                                              const float *saved_inv_std, mt_tensor *dx,
                                              float *dgamma, float *dbeta) {
    CUDA_PROFILED(backend,
                  batchnorm_backward_training_op(backend, desc, x, dy, gamma, saved_mean,
                                                 saved_inv_std, dx, dgamma, dbeta),
                  "batchnorm_backward_training", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status mt_cuda_batchnorm_relu6_forward_training(mt_backend *backend,
                                                   const mt_batchnorm_desc *desc,
                                                   const mt_tensor *x, const float *gamma,
                                                   const float *beta, float *moving_mean,
                                                   float *moving_variance, mt_tensor *y,
                                                   float *saved_mean, float *saved_inv_std) {
    CUDA_PROFILED(backend,
                  batchnorm_relu6_forward_training_op(backend, desc, x, gamma, beta, moving_mean,
                                                      moving_variance, y, saved_mean,
                                                      saved_inv_std),
                  "batchnorm_relu6_forward_training", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}

mt_status mt_cuda_relu6_batchnorm_backward_training(
    mt_backend *backend, const mt_batchnorm_desc *desc, const mt_tensor *x, const mt_tensor *y,
    const mt_tensor *dy, const float *gamma, const float *saved_mean, const float *saved_inv_std,
    mt_tensor *dx, float *dgamma, float *dbeta) {
    CUDA_PROFILED(backend,
                  relu6_batchnorm_backward_training_op(backend, desc, x, y, dy, gamma, saved_mean,
                                                       saved_inv_std, dx, dgamma, dbeta),
                  "relu6_batchnorm_backward_training", CUDA_SHAPE_FMT,
                  CUDA_SHAPE_ARGS(desc->shape));
}

mt_status mt_cuda_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                               const mt_tensor *x, const mt_tensor *dy,
                                               const float *gamma, const float *moving_mean,
                                               const float *moving_variance, mt_tensor *dx,
                                               float *dgamma, float *dbeta) {
    CUDA_PROFILED(backend,
                  batchnorm_backward_inference_op(backend, desc, x, dy, gamma, moving_mean,
                                                  moving_variance, dx, dgamma, dbeta),
                  "batchnorm_backward_inference", CUDA_SHAPE_FMT, CUDA_SHAPE_ARGS(desc->shape));
}
