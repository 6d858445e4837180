/* Private state and helpers of the "cuda" backend (cuDNN + cuBLAS + mobiletune's kernels), shared
 * by its C files. Activations are plain NHWC in device memory (layout 0), the layout cuDNN's NHWC
 * kernels and our own kernels read directly, their elements float or, with train.precision = bf16
 * | fp16, 16-bit (cuda_precision_storage; one ops table serves every precision); every other
 * buffer is device memory in ops.h's documented layout. Every op, copy and memset is enqueued on
 * one stream (`stream`), so ordering between ops, copies and pool reuse needs no events. Two other
 * streams, each ordered with it by events: `copy_stream` carries the input batches into the staging
 * slots (ops.h's input pipeline), `comm_stream` the gradient all-reduce (src/comm/nccl_comm.c). See
 * docs/gpu.md. */
#ifndef MT_OPS_CUDA_INTERNAL_H
#define MT_OPS_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"
#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_profile.h"
#include "ops/cuda/cuda_weight_cache.h"

/* Every CUDA, cuDNN and cuBLAS call goes through one of these: on failure they record a message
 * naming the call, the file and the line and return MT_ERR_BACKEND from the calling function. */
#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t cuda_check_error_ = (call);                                                    \
        if (cuda_check_error_ != cudaSuccess)                                                      \
            return MT_FAIL(MT_ERR_BACKEND, "CUDA call %s failed at %s:%d: %s (%s)", #call,         \
                           __FILE__, __LINE__, cudaGetErrorName(cuda_check_error_),                \
                           cudaGetErrorString(cuda_check_error_));                                 \
    } while (0)

#define CUDNN_CHECK(call)                                                                          \
    do {                                                                                           \
        cudnnStatus_t cudnn_check_status_ = (call);                                                \
        if (cudnn_check_status_ != CUDNN_STATUS_SUCCESS)                                           \
            return MT_FAIL(MT_ERR_BACKEND, "cuDNN call %s failed at %s:%d: %s", #call, __FILE__,   \
                           __LINE__, cudnnGetErrorString(cudnn_check_status_));                    \
    } while (0)

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t cublas_check_status_ = (call);                                              \
        if (cublas_check_status_ != CUBLAS_STATUS_SUCCESS)                                         \
            return MT_FAIL(MT_ERR_BACKEND, "cuBLAS call %s failed at %s:%d: %s", #call, __FILE__,  \
                           __LINE__, cublasGetStatusString(cublas_check_status_));                 \
    } while (0)

/* ---- the memory pool: size classes, blocks kept for reuse instead of cudaFree ---- */
enum { CUDA_POOL_CLASSES = 256, CUDA_POOL_BUCKETS = 1021 };

typedef struct cuda_pool_keep cuda_pool_keep;

typedef struct cuda_block {
    void *ptr;
    size_t bytes; /* the class size actually allocated */
    int cls;
    cuda_pool_keep *keep; /* the step graph it belongs to (handed out or released under its
                             capture; cuda_graph.c), else NULL */
    struct cuda_block *next;
} cuda_block;

/* The pool blocks of one step graph (or of the open capture) that no caller holds: its
 * temporaries, which each replay writes. They stay out of the pool's idle lists (eager work
 * between replays never gets them) until the graph is freed; the capture reuses them in stream
 * order, as the eager step did. */
struct cuda_pool_keep {
    cuda_block *idle[CUDA_POOL_CLASSES]; /* by size class */
    size_t bytes;
    cuda_pool_keep *next; /* the pool's list */
};

typedef struct cuda_pool {
    cuda_block *live[CUDA_POOL_BUCKETS]; /* handed out, by pointer hash */
    cuda_block *idle[CUDA_POOL_CLASSES]; /* returned, by size class */
    cuda_pool_keep *keeps;               /* every live graph's and the open capture's */
    cuda_pool_keep *capture;             /* the open capture's, else NULL */
    /* bytes held from the driver = in_use (handed out) + held (kept for step graphs) + idle;
     * peak: the most of in_use + held (what no allocation could get); cudaMalloc calls */
    size_t reserved, in_use, held, peak, mallocs;
} cuda_pool;

/* A grow-only device scratch area (weights in cuDNN's layout, partial sums, workspace). Growing
 * synchronizes the stream first: an op still running may be reading the old one. */
typedef struct cuda_scratch {
    void *ptr;
    size_t bytes;
} cuda_scratch;

typedef struct cuda_conv_entry cuda_conv_entry;           /* cuda_conv.c */
typedef struct cuda_precision_state cuda_precision_state; /* cuda_precision.c */

/* MT_CUDA_PROFILE=1: a CUDA event pair around every op of one step. The window opens when the
 * loss op (once per step, and it waits for the device anyway) has run `open_after` times
 * (MT_CUDA_PROFILE_AFTER, default 4: bench_train_step's 3 warm-up steps and the first timed one)
 * and closes after the next loss: the backward of one step, whatever runs between steps, and the
 * forward of the next, so every op of a step once. Then the report goes to stderr. */
typedef struct cuda_profiler {
    int open_after, losses;
    bool recording, done;
    cudaEvent_t start;     /* the window's first event */
    cudaEvent_t *events;   /* [capacity][2]: each op's start and end */
    size_t events_created; /* of those, for cuda_profile_free */
    mt_cuda_profile_op *ops;
    size_t count, capacity;
} cuda_profiler;

/* One of the input pipeline's two staging slots (ops.h mt_input_batch): its own cudaMalloc,
 * outside the pool (the copy stream writes it), holding labels [n], flips [n], then pixels
 * N,H,W,3. `copied` is recorded on the copy stream behind an upload, `consumed` on the compute
 * stream behind the conversion that read the slot; the next upload waits for it. */
typedef struct cuda_input_slot {
    uint8_t *buffer;
    size_t bytes;
    int n, height, width;
    bool full; /* uploaded, not yet converted */
    cudaEvent_t copied, consumed;
} cuda_input_slot;

/* cuBLAS' workspace: 32 MiB, the size cuBLAS' documentation recommends for Hopper (4 MiB before) */
#define CUDA_CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

typedef struct cuda_backend {
    int device;
    cudaStream_t stream;      /* every op, copy and memset */
    cudaStream_t copy_stream; /* the input batches' uploads (ops.h input_upload) */
    cudaStream_t comm_stream; /* the gradient all-reduce, overlapped with backward */
    cuda_input_slot input[2];
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    void *cublas_workspace;  /* cublasSetWorkspace's, CUDA_CUBLAS_WORKSPACE_BYTES */
    bool allow_tf32;    /* MT_CUDA_TF32=1: cuDNN/cuBLAS may use TF32 (off: exact fp32 FMA math) */
    bool debug;         /* MT_CUDA_DEBUG=1: log choices to stderr */
    int depthwise_mode; /* MT_CUDA_DEPTHWISE: 0 auto (time both), 1 own kernels, 2 cuDNN */
    int pointwise_mode; /* MT_CUDA_POINTWISE: 0 auto (time both), 1 cuBLAS GEMM, 2 cuDNN */
    cuda_pool pool;
    cuda_scratch workspace;  /* cuDNN workspace shared by every convolution */
    size_t workspace_limit;  /* algorithms needing more are skipped */
    bool ignore_choices;     /* MT_CUDA_CHOICES=ignore: choices_load loads nothing */
    cuda_scratch filter;     /* a filter gradient in cuDNN's KRSC layout, for the current call */
    cuda_scratch partials;   /* partial sums of reductions (conv weight gradients, BN) */
    cuda_conv_entry **convs; /* cache of convolution descriptors and algorithms */
    size_t conv_count, conv_capacity;
    cudaEvent_t timing[4]; /* the depthwise choice's timing */
    double *host_result;   /* pinned: the loss's result */
    double *device_result;
    cuda_profiler *profile; /* MT_CUDA_PROFILE=1, else NULL */
    bool bn_legacy;         /* MT_CUDA_BN=legacy: the double-precision BN kernels, unfused */
    bool depthwise_legacy;  /* MT_CUDA_DEPTHWISE_KERNEL=legacy: one output per thread */
    bool direct_legacy;     /* MT_CUDA_DIRECT_KERNEL=legacy: Conv1's weight gradient per weight */
    unsigned *bn_counters;  /* the fused BN kernels' tickets (zero between launches); pool */
    int bn_counter_count;
    cuda_precision_state *precision; /* train.precision = bf16 | fp16, else NULL */
    /* cuda_graph.c: readback_start's event (created at its first use); whether a step capture
     * is open; bumped whenever device memory goes back to the driver (a captured step may point
     * into it: step_replay refuses a graph captured before) */
    cudaEvent_t readback;
    bool capturing;
    uint64_t memory_generation;
    mt_cuda_weight_cache weights;    /* per-update copies of conv kernels (cuda_weights.c) */
} cuda_backend;

static inline cuda_backend *cuda_of(mt_backend *backend) {
    return (cuda_backend *)backend->impl;
}

/* MT_CUDA_DEBUG=1 lines on stderr */
void cuda_debug(const cuda_backend *cu, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* cuda_backend.c */
extern const mt_ops mt_ops_cuda;
/* cuda_pool.c: the memory pool (no zeroing; the block may be reused by later work on the stream
 * as soon as it is released); a live block's size (0: not one); `free` at shutdown */
mt_status cuda_pool_alloc(cuda_backend *cu, size_t bytes, void **out);
void cuda_pool_release(cuda_backend *cu, void *ptr);
size_t cuda_pool_block_bytes(cuda_backend *cu, const void *ptr);
void cuda_pool_free(cuda_backend *cu);
/* A step capture's blocks (cuda_pool_keep): begin opens a keep that every block handed out or
 * released until the end joins; end closes it and hands it to the graph; free gives its idle
 * blocks back to the pool (and its live ones to their holders alone) when the graph goes. */
mt_status cuda_pool_capture_begin(cuda_backend *cu);
cuda_pool_keep *cuda_pool_capture_end(cuda_backend *cu);
void cuda_pool_keep_free(cuda_backend *cu, cuda_pool_keep *keep);
/* cuda_graph.c: readback_start/wait and the step capture (ops.h); cuda_readback_free at shutdown */
mt_status mt_cuda_readback_start(mt_backend *backend, void *host_dst, const void *src,
                                 size_t bytes);
mt_status mt_cuda_readback_wait(mt_backend *backend);
mt_status mt_cuda_step_capture_begin(mt_backend *backend);
mt_status mt_cuda_step_capture_end(mt_backend *backend, void **graph);
mt_status mt_cuda_step_replay(mt_backend *backend, void *graph);
void mt_cuda_step_graph_free(mt_backend *backend, void *graph);
void cuda_readback_free(cuda_backend *cu);
/* cuda_precision.c: 16-bit tensors (one ops table, mt_ops_cuda, for every precision) */
mt_status cuda_precision_init(cuda_backend *cu, mt_compute_precision precision);
void cuda_precision_free(cuda_backend *cu);
/* What every mt_tensor of the backend is stored in: MT_CUDA_F32, or MT_CUDA_BF16 / _FP16 in
 * bf16/fp16 mode (the one answer; every op that touches a tensor asks it). */
mt_cuda_storage cuda_precision_storage(const cuda_backend *cu);
/* ops.h tensor_from_nhwc / tensor_to_nhwc of a 16-bit tensor, through an fp32 view (the table's
 * entries of cuda_backend.c hand 16-bit tensors over) */
mt_status cuda_precision_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst);
mt_status cuda_precision_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst);
/* The bytes of one element of `storage` */
static inline size_t cuda_storage_bytes(mt_cuda_storage storage) {
    return storage == MT_CUDA_F32 ? sizeof(float) : sizeof(uint16_t);
}
/* cuda_weights.c: the per-update conv weight copies (cuda_weight_cache.h). `get` returns the
 * copy of the kernel `w` (rs taps x cin x cout) in `form`, making it on the stream if needed;
 * `touched` drops the copies of kernels overlapping [dst, dst + bytes) (every copy for 0) and
 * remembers the range as one a step may write: each device op that can write backend memory
 * calls it before the write; `forget` only drops them: an upload (host data, never inside a
 * step); `freed` drops them and forgets the range was written (buffer_free); `free` at shutdown. The capture's side (cuda_graph.c): `capture_begin`
 * drops the copies of kernels a step may write; `capture_end` drops the copies the capture made
 * and pins those made before it that it read (MT_ERR_BACKEND when it read one and then dropped
 * it); `replay` is false when a pinned copy is gone, else drops the copies the replay rewrites. */
mt_status cuda_weights_get(cuda_backend *cu, const float *w, mt_cuda_weight_form form, int rs,
                           int cin, int cout, const void **out);
void cuda_weights_touched(cuda_backend *cu, const void *dst, size_t bytes);
void cuda_weights_forget(cuda_backend *cu, const void *dst, size_t bytes);
void cuda_weights_freed(cuda_backend *cu, const void *dst, size_t bytes);
void cuda_weights_capture_begin(cuda_backend *cu);
mt_status cuda_weights_capture_end(cuda_backend *cu, bool captured, mt_cuda_weight_pins *pins);
bool cuda_weights_replay(cuda_backend *cu, const mt_cuda_weight_pins *pins);
void cuda_weights_free(cuda_backend *cu);
mt_status cuda_scratch_get(cuda_backend *cu, cuda_scratch *scratch, size_t bytes, void **out);
/* Checks a tensor's shape and its bytes (elements of `storage`) against what the op expects. */
mt_status cuda_check_tensor(const char *op, const char *what, const mt_tensor *t, mt_shape4 want,
                            mt_cuda_storage storage);
/* cuda_input.c: the input pipeline's ops (ops.h) */
mt_status cuda_input_upload(mt_backend *backend, int slot, const mt_input_batch *batch);
mt_status cuda_input_convert(mt_backend *backend, int slot, mt_tensor *images, int32_t *labels);
mt_status cuda_input_wait(mt_backend *backend, int slot);
void cuda_conv_cache_free(cuda_backend *cu);

/* MT_CUDA_BN, MT_CUDA_DEPTHWISE_KERNEL, MT_CUDA_DIRECT_KERNEL = new (default) | legacy
 * (cuda_diagnostics.c) */
mt_status cuda_kernels_configure(cuda_backend *cu);

/* ---- MT_CUDA_PROFILE (cuda_diagnostics.c) ---- */
mt_status cuda_profile_init(cuda_backend *cu); /* reads the environment */
void cuda_profile_free(cuda_backend *cu);      /* prints a window still open */
mt_status cuda_profile_begin(cuda_backend *cu, size_t *slot);
mt_status cuda_profile_end(cuda_backend *cu, size_t slot, mt_status status, const char *op,
                           const char *shape_format, ...) __attribute__((format(printf, 5, 6)));
/* After each loss op (one per step): opens the window after MT_CUDA_PROFILE_AFTER of them,
 * closes it and prints the report at the next. */
mt_status cuda_profile_loss_done(cuda_backend *cu);
/* The body of a profiled op: `return call;`, with an event pair around it while the window is
 * open; the shape label (format and arguments) is only formatted then. */
#define CUDA_PROFILED(backend, call, op, ...)                                                      \
    do {                                                                                           \
        cuda_backend *prof_cu_ = cuda_of(backend);                                                 \
        if (!prof_cu_->profile || !prof_cu_->profile->recording) return (call);                    \
        size_t prof_slot_;                                                                         \
        MT_TRY(cuda_profile_begin(prof_cu_, &prof_slot_));                                         \
        mt_status prof_status_ = (call);                                                           \
        return cuda_profile_end(prof_cu_, prof_slot_, prof_status_, op, __VA_ARGS__);              \
    } while (0)
/* MT_CUDA_PROFILE's shape label of a tensor op: "N32 80x80x96" */
#define CUDA_SHAPE_FMT "N%d %dx%dx%d"
#define CUDA_SHAPE_ARGS(s) (s).n, (s).h, (s).w, (s).c

/* ---- the ops, one file per family; tensors in cuda_precision_storage's storage ---- */
/* cuda_ops.c: mt_cuda_optimizer_update (cuda_optimizer.c) inside MT_CUDA_PROFILE's event pair */
mt_status mt_cuda_optimizer_update_profiled(mt_backend *backend, const mt_optimizer_desc *desc,
                                            float *params, const float *grads, float *slots);
/* cuda_conv.c */
mt_status mt_cuda_conv_forward(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                               const float *w, mt_tensor *y);
mt_status mt_cuda_conv_backward_data(mt_backend *backend, const mt_conv_desc *desc,
                                     const mt_tensor *dy, const float *w, mt_tensor *dx);
mt_status mt_cuda_conv_backward_weights(mt_backend *backend, const mt_conv_desc *desc,
                                        const mt_tensor *x, const mt_tensor *dy, float *dw);
/* cuda_conv.c: ops.h choices_save / choices_load (the per-shape choices; text: cuda_choices.h) */
mt_status mt_cuda_choices_save(mt_backend *backend, char **text);
mt_status mt_cuda_choices_load(mt_backend *backend, const char *text);

/* cuda_ops.c */
mt_status mt_cuda_tensor_zero(mt_backend *backend, mt_tensor *tensor);
mt_status mt_cuda_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst);
mt_status mt_cuda_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y);
mt_status mt_cuda_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y);
mt_status mt_cuda_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                 mt_tensor *dx);
mt_status mt_cuda_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *x, mt_tensor *y);
mt_status mt_cuda_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                    const mt_tensor *dy, mt_tensor *dx);
mt_status mt_cuda_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y);
mt_status mt_cuda_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx);
mt_status mt_cuda_dropout_forward(mt_backend *backend, size_t count, float rate,
                                  const uint64_t *seed, const float *x, float *y, uint8_t *mask);
mt_status mt_cuda_dropout_backward(mt_backend *backend, size_t count, float rate,
                                   const uint8_t *mask, const float *dy, float *dx);
mt_status mt_cuda_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *b, float *y);
mt_status mt_cuda_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                 const float *w, const float *dy, float *dx, float *dw, float *db);
mt_status mt_cuda_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                        const float *logits, const int32_t *labels,
                                        float *loss_host, float *dlogits);
mt_status mt_cuda_loss_accumulate(mt_backend *backend, const mt_loss_desc *desc,
                                  const float *logits, const int32_t *labels, float *dlogits,
                                  const uint64_t *step, double *accum, float *skip);
/* cuda_ops_bn.c */
mt_status mt_cuda_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, float *moving_mean,
                                             float *moving_variance, mt_tensor *y,
                                             float *saved_mean, float *saved_inv_std);
mt_status mt_cuda_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const float *gamma,
                                              const float *beta, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *y);
mt_status mt_cuda_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *saved_mean,
                                              const float *saved_inv_std, mt_tensor *dx,
                                              float *dgamma, float *dbeta);
mt_status mt_cuda_batchnorm_relu6_forward_training(mt_backend *backend,
                                                   const mt_batchnorm_desc *desc,
                                                   const mt_tensor *x, const float *gamma,
                                                   const float *beta, float *moving_mean,
                                                   float *moving_variance, mt_tensor *y,
                                                   float *saved_mean, float *saved_inv_std);
mt_status mt_cuda_relu6_batchnorm_backward_training(
    mt_backend *backend, const mt_batchnorm_desc *desc, const mt_tensor *x, const mt_tensor *y,
    const mt_tensor *dy, const float *gamma, const float *saved_mean, const float *saved_inv_std,
    mt_tensor *dx, float *dgamma, float *dbeta);
mt_status mt_cuda_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                               const mt_tensor *x, const mt_tensor *dy,
                                               const float *gamma, const float *moving_mean,
                                               const float *moving_variance, mt_tensor *dx,
                                               float *dgamma, float *dbeta);

#endif
