/* The "cuda" backend's lifetime, memory and ops table: device selection, the stream and library
 * handles, a size-class memory pool (after the first step every allocation is a reuse, so the
 * step loop never calls cudaMalloc: cuda_pool.c), copies between host and device, and the
 * grow-only scratch areas. Environment (read once at init):
 *   MT_CUDA_TF32=1           as train.precision = tf32 (its older spelling): cuDNN and cuBLAS
 *                            may use TF32 tensor cores (default: exact fp32)
 *   MT_CUDA_DEPTHWISE=auto|own|cudnn   depthwise implementation (auto: time both per shape)
 *   MT_CUDA_POINTWISE=auto|gemm|cudnn  1x1 convolutions: cuBLAS GEMM or cuDNN (auto: time both)
 *   MT_CUDA_WORKSPACE_MB=512 the largest cuDNN workspace an algorithm may ask for
 *   MT_CUDA_CHOICES=ignore   do not load a checkpoint's per-shape convolution choices
 *                            (cuda_conv.c's choices_load: every shape is timed anew)
 *   MT_CUDA_DEBUG=1          log algorithm and implementation choices and pool use to stderr */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_export.h"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/cuda_optimizer.h"

void cuda_debug(const cuda_backend *cu, const char *format, ...) {
    if (!cu->debug) return;
    va_list args;
    va_start(args, format);
    fputs("mobiletune cuda: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

mt_status cuda_check_tensor(const char *op, const char *what, const mt_tensor *t, mt_shape4 want,
                            mt_cuda_storage storage) {
    const size_t element = cuda_storage_bytes(storage);
    mt_shape4 s = t->shape;
    if (s.n != want.n || s.h != want.h || s.w != want.w || s.c != want.c)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda %s: %s has shape %dx%dx%dx%d (N,H,W,C) but the descriptor "
                       "says %dx%dx%dx%d",
                       op, what, s.n, s.h, s.w, s.c, want.n, want.h, want.w, want.c);
    if (!t->data || t->bytes < mt_shape4_count(want) * element)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda %s: %s holds %zu bytes, fewer than its %dx%dx%dx%d values need", op,
                       what, t->bytes, s.n, s.h, s.w, s.c);
    return MT_OK;
}

/* ---- scratch areas ------------------------------------------------------------------------- */

mt_status cuda_scratch_get(cuda_backend *cu, cuda_scratch *scratch, size_t bytes, void **out) {
    if (bytes > scratch->bytes) {
        size_t grown = bytes + bytes / 2;
        CUDA_CHECK(cudaStreamSynchronize(cu->stream));
        CUDA_CHECK(cudaFree(scratch->ptr));
        cu->memory_generation++;
        scratch->ptr = NULL, scratch->bytes = 0;
        cudaError_t e = cudaMalloc(&scratch->ptr, grown);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            size_t free_bytes = 0, total_bytes = 0;
            (void)cudaMemGetInfo(&free_bytes, &total_bytes);
            return MT_FAIL(MT_ERR_NOMEM,
                           "cuda: out of device memory growing a scratch area to %zu bytes on "
                           "GPU %d: cudaMemGetInfo says %zu bytes free of %zu: %s",
                           grown, cu->device, free_bytes, total_bytes, cudaGetErrorString(e));
        }
        scratch->bytes = grown;
    }
    *out = scratch->ptr;
    return MT_OK;
}

/* ---- lifetime ------------------------------------------------------------------------------ */

static bool env_flag(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static void cuda_shutdown(mt_backend *backend) {
    cuda_backend *cu = cuda_of(backend);
    if (!cu) return;
    (void)cudaSetDevice(cu->device);
    if (cu->stream) (void)cudaStreamSynchronize(cu->stream);
    if (cu->copy_stream) (void)cudaStreamSynchronize(cu->copy_stream);
    cuda_debug(cu, "pool: peak %.1f MiB in use (step graphs' blocks included), %.1f MiB "
               "reserved, %zu cudaMalloc calls", (double)cu->pool.peak / 1048576.0,
               (double)cu->pool.reserved / 1048576.0, cu->pool.mallocs);
    cuda_profile_free(cu);
    cuda_readback_free(cu);
    cuda_conv_cache_free(cu);
    cuda_weights_free(cu); /* pool blocks: before the pool goes */
    cuda_precision_free(cu); /* pool blocks: before the pool goes */
    cuda_pool_free(cu);
    cuda_scratch *scratch[] = {&cu->workspace, &cu->filter, &cu->partials};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++)
        (void)cudaFree(scratch[i]->ptr);
    for (int i = 0; i < 4; i++)
        if (cu->timing[i]) (void)cudaEventDestroy(cu->timing[i]);
    if (cu->device_result) (void)cudaFree(cu->device_result);
    if (cu->host_result) (void)cudaFreeHost(cu->host_result);
    if (cu->cublas) (void)cublasDestroy(cu->cublas);
    if (cu->cublas_workspace) (void)cudaFree(cu->cublas_workspace);
    if (cu->cudnn) (void)cudnnDestroy(cu->cudnn);
    for (int slot = 0; slot < 2; slot++) {
        cuda_input_slot *in = &cu->input[slot];
        if (in->buffer) (void)cudaFree(in->buffer);
        if (in->copied) (void)cudaEventDestroy(in->copied);
        if (in->consumed) (void)cudaEventDestroy(in->consumed);
    }
    if (cu->copy_stream) (void)cudaStreamDestroy(cu->copy_stream);
    if (cu->comm_stream) (void)cudaStreamDestroy(cu->comm_stream);
    if (cu->stream) (void)cudaStreamDestroy(cu->stream);
    free(cu);
    backend->impl = NULL;
}

static mt_status cuda_setup(cuda_backend *cu) {
    CUDA_CHECK(cudaSetDevice(cu->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&cu->copy_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&cu->comm_stream, cudaStreamNonBlocking));
    for (int slot = 0; slot < 2; slot++) { /* ordering only: no timing */
        CUDA_CHECK(cudaEventCreateWithFlags(&cu->input[slot].copied, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&cu->input[slot].consumed, cudaEventDisableTiming));
    }
    CUDNN_CHECK(cudnnCreate(&cu->cudnn));
    CUDNN_CHECK(cudnnSetStream(cu->cudnn, cu->stream));
    CUBLAS_CHECK(cublasCreate(&cu->cublas));
    CUBLAS_CHECK(cublasSetStream(cu->cublas, cu->stream));
    /* cuBLAS' own workspace, set after the stream (setting a stream resets it): without one, a
     * captured step gets a fresh workspace from cuBLAS per graph and may run other kernels than
     * eager; with this one, eager and captured products run the same kernels */
    CUDA_CHECK(cudaMalloc(&cu->cublas_workspace, CUDA_CUBLAS_WORKSPACE_BYTES));
    CUBLAS_CHECK(cublasSetWorkspace(cu->cublas, cu->cublas_workspace,
                                    CUDA_CUBLAS_WORKSPACE_BYTES));
    /* DISALLOW_REDUCED_PRECISION_REDUCTION: a product with a 16-bit output (bf16/fp16's 1x1
     * convolutions) must not add split-K partial sums in that type -- one rounding at the end,
     * as the reference's emulation has; no effect on fp32 outputs */
    CUBLAS_CHECK(cublasSetMathMode(
        cu->cublas, (cublasMath_t)((cu->allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                   : CUBLAS_DEFAULT_MATH) |
                                   CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    for (int i = 0; i < 4; i++)
        CUDA_CHECK(cudaEventCreate(&cu->timing[i]));
    CUDA_CHECK(cudaMallocHost((void **)&cu->host_result, 4 * sizeof(double)));
    CUDA_CHECK(cudaMalloc((void **)&cu->device_result, 4 * sizeof(double)));
    MT_TRY(cuda_profile_init(cu));
    MT_TRY(cuda_kernels_configure(cu));
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, cu->device));
    cuda_debug(cu, "GPU %d: %s, sm_%d%d, %.1f GiB; cuDNN %zu, TF32 %s", cu->device, prop.name,
               prop.major, prop.minor, (double)prop.totalGlobalMem / (1u << 30), cudnnGetVersion(),
               cu->allow_tf32 ? "allowed" : "off");
    return MT_OK;
}

/* An implementation choice from the environment: "auto" or unset (0: time both per shape), `own`
 * (1: mobiletune's implementation) or "cudnn" (2). */
static mt_status impl_mode(const char *variable, const char *own, int *mode) {
    const char *value = getenv(variable);
    *mode = 0;
    if (!value || !*value || strcmp(value, "auto") == 0) return MT_OK;
    if (strcmp(value, own) == 0) {
        *mode = 1;
    } else if (strcmp(value, "cudnn") == 0) {
        *mode = 2;
    } else {
        return MT_FAIL(MT_ERR_INVALID, "%s='%s': use auto (time both per shape), %s or cudnn",
                       variable, value, own);
    }
    return MT_OK;
}

static mt_status cuda_init(mt_backend *backend, const mt_backend_options *options) {
    backend->impl = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return MT_FAIL(MT_ERR_BACKEND,
                       "cuda backend: no usable GPU: cudaGetDeviceCount failed: %s (%s)",
                       cudaGetErrorName(e), cudaGetErrorString(e));
    }
    if (count == 0)
        return MT_FAIL(MT_ERR_BACKEND, "cuda backend: no GPU: cudaGetDeviceCount found 0 devices");
    if (options->device < 0 || options->device >= count)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda backend: device %d does not exist: this machine has %d GPU(s), "
                       "ordinals 0..%d",
                       options->device, count, count - 1);
    int depthwise_mode = 0, pointwise_mode = 0;
    MT_TRY(impl_mode("MT_CUDA_DEPTHWISE", "own", &depthwise_mode));
    MT_TRY(impl_mode("MT_CUDA_POINTWISE", "gemm", &pointwise_mode));
    size_t workspace_mb = 512;
    const char *ws = getenv("MT_CUDA_WORKSPACE_MB");
    if (ws && *ws) {
        char *end;
        long v = strtol(ws, &end, 10);
        if (*end || v < 0)
            return MT_FAIL(MT_ERR_INVALID, "MT_CUDA_WORKSPACE_MB='%s': expected megabytes >= 0",
                           ws);
        workspace_mb = (size_t)v;
    }
    const char *choices = getenv("MT_CUDA_CHOICES");
    if (choices && *choices && strcmp(choices, "ignore") != 0)
        return MT_FAIL(MT_ERR_INVALID, "MT_CUDA_CHOICES='%s': expected 'ignore' or nothing",
                       choices);
    cuda_backend *cu = calloc(1, sizeof *cu);
    if (!cu) return MT_FAIL(MT_ERR_NOMEM, "cuda backend: out of host memory");
    cu->device = options->device;
    /* train.precision = tf32; MT_CUDA_TF32=1, its older spelling, still turns it on */
    cu->allow_tf32 = options->precision == MT_COMPUTE_TF32 || env_flag("MT_CUDA_TF32");
    cu->debug = env_flag("MT_CUDA_DEBUG");
    cu->depthwise_mode = depthwise_mode;
    cu->pointwise_mode = pointwise_mode;
    cu->workspace_limit = workspace_mb << 20;
    cu->ignore_choices = choices && strcmp(choices, "ignore") == 0;
    backend->impl = cu;
    mt_status status = cuda_setup(cu);
    /* bf16 / fp16: 16-bit tensors (cuda_precision.c), the same backend otherwise */
    if (status == MT_OK &&
        (options->precision == MT_COMPUTE_BF16 || options->precision == MT_COMPUTE_FP16)) {
        status = cuda_precision_init(cu, options->precision);
    }
    if (status != MT_OK) cuda_shutdown(backend);
    return status;
}

/* ---- memory -------------------------------------------------------------------------------- */

static mt_status cuda_buffer_alloc(mt_backend *backend, size_t bytes, void **out) {
    cuda_backend *cu = cuda_of(backend);
    MT_TRY(cuda_pool_alloc(cu, bytes, out));
    CUDA_CHECK(cudaMemsetAsync(*out, 0, bytes ? bytes : 1, cu->stream));
    return MT_OK;
}

static void cuda_buffer_free(mt_backend *backend, void *buffer) {
    cuda_backend *cu = cuda_of(backend);
    cuda_weights_freed(cu, buffer, cuda_pool_block_bytes(cu, buffer)); /* a kernel there is gone */
    cuda_pool_release(cu, buffer);
}

/* Synchronous: the host buffer may be reused (or be pinned memory the caller rewrites) as soon as
 * this returns. */
static mt_status upload_op(mt_backend *backend, void *dst, const void *host_src, size_t bytes) {
    cuda_backend *cu = cuda_of(backend);
    if (!bytes) return MT_OK;
    cuda_weights_forget(cu, dst, bytes); /* host data: never part of a step */
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, cu->stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    return MT_OK;
}

static mt_status download_op(mt_backend *backend, void *host_dst, const void *src, size_t bytes) {
    cuda_backend *cu = cuda_of(backend);
    if (!bytes) return MT_OK;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, cu->stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    return MT_OK;
}

/* the host side of a step (images in, metrics out) shows in MT_CUDA_PROFILE's report too */
static mt_status cuda_upload(mt_backend *backend, void *dst, const void *host_src, size_t bytes) {
    CUDA_PROFILED(backend, upload_op(backend, dst, host_src, bytes), "upload", "%zu bytes", bytes);
}

static mt_status cuda_download(mt_backend *backend, void *host_dst, const void *src, size_t bytes) {
    CUDA_PROFILED(backend, download_op(backend, host_dst, src, bytes), "download", "%zu bytes",
                  bytes);
}

static mt_status cuda_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out) {
    *out = (mt_tensor){0};
    if (shape.n <= 0 || shape.h <= 0 || shape.w <= 0 || shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda backend: tensor shape %dx%dx%dx%d (N,H,W,C) has a non-positive "
                       "dimension",
                       shape.n, shape.h, shape.w, shape.c);
    size_t bytes =
        mt_shape4_count(shape) * cuda_storage_bytes(cuda_precision_storage(cuda_of(backend)));
    void *data;
    MT_TRY(cuda_buffer_alloc(backend, bytes, &data)); /* zeroed: +0 in every storage */
    *out = (mt_tensor){.shape = shape, .data = data, .bytes = bytes, .layout = 0, .impl = NULL};
    return MT_OK;
}

static void cuda_tensor_free(mt_backend *backend, mt_tensor *tensor) {
    if (!tensor) return;
    cuda_pool_release(cuda_of(backend), tensor->data);
    *tensor = (mt_tensor){0};
}

/* NHWC is the backend's layout: the conversions of fp32 tensors are copies; 16-bit ones go through
 * an fp32 view (cuda_precision.c). */
static mt_status cuda_tensor_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst) {
    if (cuda_precision_storage(cuda_of(backend)) != MT_CUDA_F32)
        return cuda_precision_from_nhwc(backend, host_src, dst);
    MT_TRY(cuda_check_tensor("tensor_from_nhwc", "dst", dst, dst->shape, MT_CUDA_F32));
    return cuda_upload(backend, dst->data, host_src, mt_shape4_count(dst->shape) * sizeof(float));
}

/* Page-locked: the DMA engine reads it directly (no staging copy), and copies from it can be
 * asynchronous. */
static mt_status cuda_host_alloc(mt_backend *backend, size_t bytes, void **out) {
    (void)backend;
    CUDA_CHECK(cudaHostAlloc(out, bytes ? bytes : 1, cudaHostAllocDefault));
    return MT_OK;
}

static void cuda_host_free(mt_backend *backend, void *buffer) {
    (void)backend;
    if (buffer) (void)cudaFreeHost(buffer);
}

static mt_status cuda_tensor_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst) {
    if (cuda_precision_storage(cuda_of(backend)) != MT_CUDA_F32)
        return cuda_precision_to_nhwc(backend, src, host_dst);
    MT_TRY(cuda_check_tensor("tensor_to_nhwc", "src", src, src->shape, MT_CUDA_F32));
    return cuda_download(backend, host_dst, src->data, mt_shape4_count(src->shape) * sizeof(float));
}

static mt_status cuda_synchronize(mt_backend *backend) {
    CUDA_CHECK(cudaStreamSynchronize(cuda_of(backend)->copy_stream));
    CUDA_CHECK(cudaStreamSynchronize(cuda_of(backend)->stream));
    return MT_OK;
}

/* The pool's peak (cuda_pool.c: blocks in use plus those kept for graphs), plus what lives
 * outside the pool: the grow-only scratch areas (cuDNN's workspace, the KRSC filter gradient,
 * the reductions' partials) and input staging slots at their present, largest, size, and
 * cuBLAS' workspace. An upper bound: the scratch areas count as if at their largest when the pool
 * peaked. */
static mt_status device_memory_peak_op(mt_backend *backend, size_t *bytes) {
    const cuda_backend *cu = cuda_of(backend);
    size_t outside = cu->workspace.bytes + cu->filter.bytes + cu->partials.bytes;
    for (size_t i = 0; i < sizeof cu->input / sizeof cu->input[0]; i++)
        outside += cu->input[i].bytes;
    if (cu->cublas_workspace) outside += CUDA_CUBLAS_WORKSPACE_BYTES;
    *bytes = cu->pool.peak + outside;
    return MT_OK;
}

const mt_ops mt_ops_cuda = {
    .name = "cuda",
    .device_memory = true,
    .init = cuda_init,
    .shutdown = cuda_shutdown,
    .buffer_alloc = cuda_buffer_alloc,
    .buffer_free = cuda_buffer_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .tensor_alloc = cuda_tensor_alloc,
    .tensor_free = cuda_tensor_free,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .input_upload = cuda_input_upload,
    .input_convert = cuda_input_convert,
    .input_wait = cuda_input_wait,
    .tensor_from_nhwc = cuda_tensor_from_nhwc,
    .tensor_to_nhwc = cuda_tensor_to_nhwc,
    .synchronize = cuda_synchronize,
    .buffer_copy = mt_cuda_buffer_copy,
    .buffer_copy_if = mt_cuda_buffer_copy_if,
    .buffer_scale = mt_cuda_buffer_scale,
    .scalars_write = mt_cuda_scalars_write,
    .readback_start = mt_cuda_readback_start,
    .readback_wait = mt_cuda_readback_wait,
    .tensor_zero = mt_cuda_tensor_zero,
    .tensor_copy = mt_cuda_tensor_copy,
    .add = mt_cuda_add,
    .relu6_forward = mt_cuda_relu6_forward,
    .relu6_backward = mt_cuda_relu6_backward,
    .conv_forward = mt_cuda_conv_forward,
    .conv_backward_data = mt_cuda_conv_backward_data,
    .conv_backward_weights = mt_cuda_conv_backward_weights,
    .batchnorm_forward_training = mt_cuda_batchnorm_forward_training,
    .batchnorm_forward_inference = mt_cuda_batchnorm_forward_inference,
    .batchnorm_backward_training = mt_cuda_batchnorm_backward_training,
    .batchnorm_backward_inference = mt_cuda_batchnorm_backward_inference,
    .zero_pad_forward = mt_cuda_zero_pad_forward,
    .zero_pad_backward = mt_cuda_zero_pad_backward,
    .global_avg_pool_forward = mt_cuda_global_avg_pool_forward,
    .global_avg_pool_backward = mt_cuda_global_avg_pool_backward,
    .dropout_forward = mt_cuda_dropout_forward,
    .dropout_backward = mt_cuda_dropout_backward,
    .dense_forward = mt_cuda_dense_forward,
    .dense_backward = mt_cuda_dense_backward,
    .loss_forward_backward = mt_cuda_loss_forward_backward,
    .loss_accumulate = mt_cuda_loss_accumulate,
    .optimizer_update = mt_cuda_optimizer_update_profiled,
    .batchnorm_relu6_forward_training = mt_cuda_batchnorm_relu6_forward_training,
    .relu6_batchnorm_backward_training = mt_cuda_relu6_batchnorm_backward_training,
    .step_capture_begin = mt_cuda_step_capture_begin,
    .step_capture_end = mt_cuda_step_capture_end,
    .step_replay = mt_cuda_step_replay,
    .step_graph_free = mt_cuda_step_graph_free,
    .choices_save = mt_cuda_choices_save,
    .choices_load = mt_cuda_choices_load,
    .device_memory_peak = device_memory_peak_op,
};

/* ---- for the NCCL path in src/comm (cuda_export.h) ---------------------------------------- */

int mt_cuda_visible_devices(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear it: a later, unrelated call must not report it */
        return 0;
    }
    return count;
}

mt_status mt_cuda_device_uuid(int device, uint8_t out[16]) {
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    _Static_assert(sizeof prop.uuid.bytes == 16, "cudaUUID_t is no longer 16 bytes");
    memcpy(out, prop.uuid.bytes, 16);
    return MT_OK;
}

mt_status mt_cuda_backend_streams(mt_backend *backend, cudaStream_t *compute, cudaStream_t *comm) {
    if (backend->ops != &mt_ops_cuda || !backend->impl)
        return MT_FAIL(MT_ERR_INVALID, "backend '%s' has no CUDA streams (NCCL needs the cuda "
                       "backend)", backend->ops->name);
    *compute = cuda_of(backend)->stream;
    *comm = cuda_of(backend)->comm_stream;
    return MT_OK;
}
