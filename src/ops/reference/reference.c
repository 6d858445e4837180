/* The reference backend's ops table, its lifetime (its state: two input staging slots) and the
 * checks its ops share. Plain loops over NHWC host arrays, double accumulators for long sums: the
 * oracle every other backend is compared with, so clarity wins over speed everywhere in this
 * folder. */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ops/loss_accum.h"
#include "ops/precision.h"
#include "ops/reference/reference.h"

int mt_ref_threads(const mt_backend *backend) {
    int n = backend ? backend->options.num_threads : 0;
    return n > 0 ? n : omp_get_max_threads();
}

mt_status mt_ref_check_shape(const char *op, const char *what, mt_shape4 got, mt_shape4 want) {
    if (got.n == want.n && got.h == want.h && got.w == want.w && got.c == want.c) return MT_OK;
    return MT_FAIL(MT_ERR_INVALID, "%s: %s has shape %dx%dx%dx%d (N,H,W,C), expected %dx%dx%dx%d",
                   op, what, got.n, got.h, got.w, got.c, want.n, want.h, want.w, want.c);
}

static mt_compute_precision precision_of(const mt_backend *backend) {
    return backend ? backend->options.precision : MT_COMPUTE_FP32;
}

mt_status mt_ref_stored(const mt_backend *backend, mt_tensor *t) {
    mt_round_to_storage(precision_of(backend), t->data, mt_shape4_count(t->shape));
    return MT_OK;
}

const float *mt_ref_conv_weights(const mt_backend *backend, const float *w, size_t count,
                                 float **owned) {
    *owned = NULL;
    const mt_compute_precision precision = precision_of(backend);
    if (mt_precision_tensor_bytes(precision) == sizeof(float)) return w;
    *owned = malloc((count ? count : 1) * sizeof **owned);
    if (!*owned) {
        MT_FAIL(MT_ERR_NOMEM, "reference backend: out of memory rounding %zu conv weights", count);
        return NULL;
    }
    memcpy(*owned, w, count * sizeof **owned);
    mt_round_to_storage(precision, *owned, count);
    return *owned;
}

mt_status mt_ref_buffer_scale(mt_backend *backend, float *x, size_t count, const float *factor,
                              float *flag) {
    (void)backend;
    mt_host_buffer_scale(x, count, *factor, flag);
    return MT_OK;
}

mt_status mt_ref_scalars_write(mt_backend *backend, void *dst, const void *host_src,
                               size_t bytes) {
    (void)backend;
    return mt_host_scalars_write(dst, host_src, bytes);
}

mt_status mt_ref_readback_start(mt_backend *backend, void *host_dst, const void *src,
                                size_t bytes) {
    return mt_ref_download(backend, host_dst, src, bytes); /* the copy at once */
}

mt_status mt_ref_readback_wait(mt_backend *backend) {
    return mt_host_readback_wait(backend);
}

mt_status mt_ref_check_options(const mt_backend_options *options) {
    if (options->num_threads < 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference backend: num_threads %d is negative (0 = all "
                       "cores)",
                       options->num_threads);
    return MT_OK;
}

static mt_status ref_init(mt_backend *backend, const mt_backend_options *options) {
    backend->impl = NULL;
    MT_TRY(mt_ref_check_options(options));
    /* MT_REFERENCE_GUARDED=1: the same ops on memory the host cannot touch (guarded.c), for the
     * tests that prove no module reads backend memory behind the backend's back */
    const char *guarded = getenv("MT_REFERENCE_GUARDED");
    if (backend->ops == &mt_ops_reference && guarded && strcmp(guarded, "1") == 0) {
        backend->ops = &mt_ops_reference_guarded;
        return backend->ops->init(backend, options);
    }
    /* the only state: the input pipeline's staging slots (every op is otherwise a pure
     * function of its arguments) */
    backend->impl = calloc(1, sizeof(mt_ref_state));
    if (!backend->impl) return MT_FAIL(MT_ERR_NOMEM, "reference backend: out of memory");
    return MT_OK;
}

static void ref_shutdown(mt_backend *backend) {
    mt_ref_input_free(backend);
    free(backend->impl);
    backend->impl = NULL;
}

const mt_ops mt_ops_reference = {
    .name = "reference",
    .init = ref_init,
    .shutdown = ref_shutdown,
    .buffer_alloc = mt_ref_buffer_alloc,
    .buffer_free = mt_ref_buffer_free,
    .upload = mt_ref_upload,
    .download = mt_ref_download,
    .tensor_alloc = mt_ref_tensor_alloc,
    .tensor_free = mt_ref_tensor_free,
    .host_alloc = mt_ref_host_alloc,
    .host_free = mt_ref_host_free,
    .input_upload = mt_ref_input_upload,
    .input_convert = mt_ref_input_convert,
    .input_wait = mt_ref_input_wait,
    .tensor_from_nhwc = mt_ref_tensor_from_nhwc,
    .tensor_to_nhwc = mt_ref_tensor_to_nhwc,
    .synchronize = mt_ref_synchronize,
    .buffer_copy = mt_ref_buffer_copy,
    .buffer_copy_if = mt_ref_buffer_copy_if,
    .buffer_scale = mt_ref_buffer_scale,
    .scalars_write = mt_ref_scalars_write,
    .readback_start = mt_ref_readback_start,
    .readback_wait = mt_ref_readback_wait,
    .tensor_zero = mt_ref_tensor_zero,
    .tensor_copy = mt_ref_tensor_copy,
    .add = mt_ref_add,
    .relu6_forward = mt_ref_relu6_forward,
    .relu6_backward = mt_ref_relu6_backward,
    .conv_forward = mt_ref_conv_forward,
    .conv_backward_data = mt_ref_conv_backward_data,
    .conv_backward_weights = mt_ref_conv_backward_weights,
    .batchnorm_forward_training = mt_ref_batchnorm_forward_training,
    .batchnorm_forward_inference = mt_ref_batchnorm_forward_inference,
    .batchnorm_backward_training = mt_ref_batchnorm_backward_training,
    .batchnorm_backward_inference = mt_ref_batchnorm_backward_inference,
    .zero_pad_forward = mt_ref_zero_pad_forward,
    .zero_pad_backward = mt_ref_zero_pad_backward,
    .global_avg_pool_forward = mt_ref_global_avg_pool_forward,
    .global_avg_pool_backward = mt_ref_global_avg_pool_backward,
    .dropout_forward = mt_ref_dropout_forward,
    .dropout_backward = mt_ref_dropout_backward,
    .dense_forward = mt_ref_dense_forward,
    .dense_backward = mt_ref_dense_backward,
    .loss_forward_backward = mt_ref_loss_forward_backward,
    .loss_accumulate = mt_ref_loss_accumulate,
    .optimizer_update = mt_ref_optimizer_update,
};
