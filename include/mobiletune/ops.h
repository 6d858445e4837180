/* The ops table: every computation the network needs, forward and backward, behind one explicit
 * table of function pointers per backend, chosen at start-up (STYLE.md 2):
 *   "reference"  plain C, obviously correct: the oracle every other backend is tested against
 *   "cpu"        oneDNN (blocked layouts, fused post-ops) + OpenMP
 *   "cuda"       cuDNN + mobiletune's kernels (issue 6)
 *
 * Memory model. Activations are mt_tensor: a 4-D N,H,W,C tensor whose bytes live in the backend's
 * memory (host for CPU backends, device for CUDA) in the backend's own layout (NHWC for reference;
 * oneDNN may use blocked formats) and element type (fp32, or 16 bits: "Precision" below). The
 * model never looks inside: it converts at the edges only
 * (tensor_from_nhwc for the input batch; global_avg_pool's output is a plain row-major N,C matrix).
 * Everything else -- parameters, gradients, BN statistics, matrices of the head, labels -- is a
 * plain buffer in backend memory with a documented layout:
 *   conv kernel       [kh][kw][cin][cout]   (Keras/TF HWIO)
 *   depthwise kernel  [kh][kw][c][1]        (Keras depthwise_kernel, multiplier 1)
 *   BN gamma, beta, moving_mean, moving_variance, saved mean / inverse std: [c]
 *   dense kernel      [in][out], bias [out] (Keras Dense)
 *   matrices          row-major [n][cols];  labels int32 [n]
 * Gradient outputs for weights are overwritten, never accumulated. Backends cache whatever they
 * derive from a descriptor (oneDNN primitives, cuDNN algorithms) keyed by the descriptor's value,
 * so callers pass plain descriptors and nothing else.
 *
 * Numerics follow Keras: TF 'SAME' padding (asymmetric: the extra row/column goes bottom/right),
 * BatchNormalization with biased batch variance for normalization and for the moving statistics,
 * moving = moving * momentum + batch * (1 - momentum), ReLU6 gradient passed where 0 < y < 6. */
#ifndef MOBILETUNE_OPS_H
#define MOBILETUNE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/enum_names.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_shape4 {
    int n, h, w, c;
} mt_shape4;

static inline size_t mt_shape4_count(mt_shape4 s) {
    return (size_t)s.n * (size_t)s.h * (size_t)s.w * (size_t)s.c;
}

/* An activation in backend memory and the backend's layout. `layout` and `impl` are the
 * backend's business (e.g. a oneDNN memory descriptor); `bytes` is what was allocated. */
typedef struct mt_tensor {
    mt_shape4 shape;
    void *data;
    size_t bytes;
    int layout;
    void *impl;
} mt_tensor;

/* A 2-D convolution, regular (groups 1) or depthwise (channel multiplier 1), no bias. */
typedef struct mt_conv_desc {
    mt_shape4 input;  /* N,H,W,Cin */
    int out_channels; /* Cout; equals Cin for depthwise */
    int kernel;       /* square kernel side */
    int stride;       /* same in both directions */
    int pad_top, pad_left, pad_bottom, pad_right; /* zeros around the input */
    bool depthwise;
} mt_conv_desc;

/* TF/Keras 'SAME' padding of one dimension: total = max((ceil(in/stride)-1)*stride + k - in, 0),
 * before = total/2, after = total - before. */
void mt_same_padding(int in, int kernel, int stride, int *pad_before, int *pad_after);

/* N, floor((H + pads - k)/stride) + 1, ..., Cout */
mt_shape4 mt_conv_output_shape(const mt_conv_desc *desc);

typedef struct mt_batchnorm_desc {
    mt_shape4 shape;  /* N,H,W,C of input and output */
    float epsilon;    /* 1e-3 in Keras' MobileNetV2 */
    float momentum;   /* 0.999 in Keras' MobileNetV2 */
} mt_batchnorm_desc;

typedef struct mt_zero_pad_desc {
    mt_shape4 input;
    int top, left, bottom, right;
} mt_zero_pad_desc;

typedef struct mt_dense_desc {
    int batch, in_features, out_features;
} mt_dense_desc;

typedef struct mt_loss_desc {
    int batch;   /* rows of logits */
    int classes; /* 1: sigmoid binary cross-entropy on one logit; >1: softmax cross-entropy */
} mt_loss_desc;

/* One optimizer step (the update rules and their Keras semantics are in optimizer.h): fp32, on
 * the trainable buffer in place. The step's learning rate and step size are read from backend
 * memory (mt_update_scalars: "Per-step values" below); the state ("slots") is backend memory,
 * slot after slot, `count` floats each:
 *   RMSPROP  velocity, then momentum when momentum > 0
 *   SGD      momentum when momentum != 0 (no slot otherwise)
 *   ADAM     momentum, then velocity */
typedef enum mt_update_rule {
    MT_UPDATE_RMSPROP = 0, /* the values of mt_optimizer_kind (optimizer.h) */
    MT_UPDATE_SGD,
    MT_UPDATE_ADAM,
} mt_update_rule;

/* ---- per-step values ----
 * Every value a training step's ops read that changes from one step to the next -- the dropout
 * seed, the step number loss_accumulate records, the learning rate and Adam's step size, fp16's
 * loss scale -- is read through a pointer into backend memory, never passed by value: a captured
 * step (step_capture_begin below) replays the same calls with the same arguments, so the values
 * that must change between replays live where the replayed ops read them. The host writes them
 * before the step with scalars_write (at most MT_SCALARS_MAX_BYTES; on cuda a tiny kernel whose
 * argument carries the bytes, so neither the host nor the stream waits). */
enum { MT_SCALARS_MAX_BYTES = 64 };

/* The optimizer's per-step values (mt_optimizer_desc.scalars), computed on the host by
 * mt_optimizer_set_rate: lr the step's rate (finite, >= 0), step its step size
 * (mt_update_step_size: Adam's bias-corrected rate, lr for the other rules). */
typedef struct mt_update_scalars {
    float lr, step;
} mt_update_scalars;

typedef struct mt_optimizer_desc {
    mt_update_rule rule;
    size_t count; /* parameters */
    /* this step's rate and step size, one mt_update_scalars in backend memory (written before
     * the step with scalars_write: mt_optimizer_set_rate) */
    const mt_update_scalars *scalars;
    float rho, momentum, epsilon, beta_1, beta_2, weight_decay;
    bool nesterov;
    /* floats from slot 0 to slot 1; 0 means `count`. A range of a larger buffer (one gradient
     * bucket, updated as soon as its all-reduce is done) passes the whole buffer's count, with
     * params, grads and slots pointing at the range's first element. */
    size_t slot_stride;
    /* NULL, or one float of backend memory (loss_accumulate's skip flag, after the all-reduce):
     * when it is nonzero the op changes nothing, so a non-finite step is skipped without the
     * host looking */
    const float *skip;
} mt_optimizer_desc;

/* The slots of loss_accumulate's accumulator (doubles: counts and step numbers stay exact). */
enum {
    MT_ACCUM_LOSS_SUM = 0, /* sum over the finite steps of mean loss x valid rows */
    MT_ACCUM_CORRECT,      /* rows predicted right, over the finite steps */
    MT_ACCUM_VALID,        /* rows with a label, over the finite steps */
    MT_ACCUM_SKIPPED,      /* steps whose loss was not finite */
    MT_ACCUM_FIRST_SKIP,   /* the `step` of the first of them (valid when SKIPPED > 0) */
    MT_ACCUM_COPIED,       /* buffer_copy_if's count: copies made (the trainer: steps skipped) */
    MT_ACCUM_COUNT = 8     /* doubles in the accumulator (two spare) */
};

/* The prediction of one row of logits, as every backend's loss_accumulate (the cuda kernel's
 * too: a host and device function) and the host's accuracy count make it: the logit's sign for
 * one logit, else the first largest logit (NaN compares false: a row of NaN predicts 0). */
#if defined(__CUDACC__)
__host__ __device__
#endif
static inline int mt_accum_predicted(const float *row, int classes) {
    if (classes == 1) return row[0] > 0.0f;
    int predicted = 0;
    for (int k = 1; k < classes; k++)
        if (row[k] > row[predicted]) predicted = k;
    return predicted;
}

/* One pixel value as the network's input: x/127.5 - 1 in float, the two operations Keras'
 * preprocess_input performs (x /= 127.5; x -= 1), so every backend and the loader agree bit for
 * bit (a division and a subtraction: nothing a compiler may fuse). */
static inline float mt_u8_to_input(uint8_t value) {
    float x = (float)value;
    x /= 127.5f;
    x -= 1.0f;
    return x;
}

/* ---- the input pipeline ----
 * A training batch goes from the loader's host buffers into the network's input in three ops,
 * so that the copy of batch k overlaps the compute of batch k-1 and neither side waits for the
 * other. The backend has two staging slots (0 and 1) in its own memory; the caller alternates
 * them, one batch per slot from input_upload to input_convert:
 *   input_upload(slot, batch)     enqueue the copy of pixels, labels and flip flags into the slot
 *   input_convert(slot, x, y)     the first op of the step: x = scaled (and flipped) pixels,
 *                                 y = labels, both in backend memory; the slot is empty again
 *   input_wait(slot)              the copy has read the host buffers: the host may reuse them
 * The trainer's step k: input_upload(k % 2, batch k), then input_wait((k-1) % 2) and give batch
 * k-1's buffers back to the loader (that copy finished a step ago: nothing waits), then the
 * step's ops, starting with input_convert(k % 2). Uploading into a slot that still holds a batch
 * or converting an empty one is MT_ERR_INVALID (a caller's bug: a batch would be lost).
 *   cuda:  input_upload is cudaMemcpyAsync on the backend's copy stream (from host_alloc's
 *          page-locked memory: a DMA that runs while the GPU computes), ordered after an event
 *          the compute stream recorded behind the slot's last input_convert (a slot is not
 *          overwritten before the conversion that read it ran), then records a copy event;
 *          input_convert makes the compute stream wait for that event (cudaStreamWaitEvent: the
 *          GPU waits, never the host) and scales and flips on the GPU; input_wait synchronizes
 *          the host with the copy event alone.
 *   CPU backends: input_upload copies at once (input_wait has nothing to wait for). */
typedef struct mt_input_batch {
    int n, height, width;  /* N,H,W of the pixels (3 channels) */
    const uint8_t *pixels; /* host N,H,W,3 as stored (host_alloc memory for an asynchronous
                            * copy; any host memory works, cuda then copies before returning) */
    const int32_t *labels; /* host [n], -1 for padding; the caller checks their range on the
                            * host before the upload (the device does not report a bad one) */
    const uint8_t *flips;  /* host [n]: nonzero mirrors image i left to right; NULL: none */
} mt_input_batch;

typedef struct mt_backend mt_backend;

/* Precision (train.precision; the values of mt_precision in config.h, in the same order). A
 * backend's arithmetic is fixed when it is created (mt_backend_options.precision), so no op takes
 * a type argument and the model does not change with it:
 *   FP32  fp32 storage, fp32 math
 *   TF32  fp32 storage; cuda lets cuDNN and cuBLAS use TF32 tensor-core math (10-bit mantissa
 *         products, fp32 accumulation). The CPU backends have no TF32 and run it as fp32: a
 *         documented no-op, so a tf32 config still runs (and tests) anywhere.
 *   BF16, FP16  every mt_tensor -- the backbone's activations and the gradients flowing back
 *         through them -- is stored in the 16-bit type: each op that writes a tensor rounds its
 *         result (to nearest, ties to even; ops/precision.h) as it stores it. Everything else
 *         stays fp32: convolutions accumulate in fp32 (on the weights rounded to the 16-bit
 *         type, as the tensor cores read them: forward and backward-data; backward-weights
 *         takes the stored tensors and writes fp32), BN computes its statistics and its
 *         normalization in fp32 from the stored values, and every plain buffer (parameters,
 *         weight gradients, BN statistics, the head's matrices, the loss, the optimizer) is
 *         fp32. The cuda backend stores tensors as bf16/fp16 (tensor_alloc sizes them; the
 *         bytes per element are mt_precision_tensor_bytes); the reference backend emulates it
 *         on float storage, rounding exactly where cuda stores 16 bits, so it stays the truth
 *         the GPU's bf16 is compared with; the cpu backend refuses both (it is fp32 only).
 * Nothing outside the backends looks at it but the trainer (fp16's loss scale). */
typedef enum mt_compute_precision {
    MT_COMPUTE_FP32 = 0,
    MT_COMPUTE_TF32,
    MT_COMPUTE_BF16,
    MT_COMPUTE_FP16,
} mt_compute_precision;

/* fp32|tf32|bf16|fp16: the names of train.precision's values too (the config's option row uses
 * this table) */
extern const mt_enum_names mt_compute_precision_names;
/* the value's name; "?" for anything else */
const char *mt_compute_precision_name(mt_compute_precision precision);

/* Bytes of one tensor element in a backend that stores its tensors in the precision's type (cuda;
 * the reference emulates 16 bits on 4) */
static inline size_t mt_precision_tensor_bytes(mt_compute_precision precision) {
    return precision == MT_COMPUTE_BF16 || precision == MT_COMPUTE_FP16 ? 2 : 4;
}

typedef struct mt_backend_options {
    int num_threads; /* CPU threads; 0 = all cores */
    int device;      /* GPU ordinal for "cuda" (the local rank) */
    mt_compute_precision precision; /* see above; 0 (fp32) when not set */
} mt_backend_options;

typedef struct mt_ops {
    const char *name;
    /* true when buffers live in memory the host cannot touch (cuda; the reference backend's
     * guarded mode). Only src/comm looks at it (to stage MPI through upload/download): every
     * other module reaches backend memory through upload/download whatever the backend. */
    bool device_memory;

    /* ---- lifetime and memory ---- */
    mt_status (*init)(mt_backend *backend, const mt_backend_options *options); /* sets impl */
    void (*shutdown)(mt_backend *backend);
    mt_status (*buffer_alloc)(mt_backend *backend, size_t bytes, void **out); /* zeroed */
    void (*buffer_free)(mt_backend *backend, void *buffer);
    mt_status (*upload)(mt_backend *backend, void *dst, const void *host_src, size_t bytes);
    mt_status (*download)(mt_backend *backend, void *host_dst, const void *src, size_t bytes);
    mt_status (*tensor_alloc)(mt_backend *backend, mt_shape4 shape, mt_tensor *out); /* zeroed */
    void (*tensor_free)(mt_backend *backend, mt_tensor *tensor);
    /* Host memory the backend copies from fastest (cuda: page-locked, cudaHostAlloc; the CPU
     * backends: malloc), aligned for float, for the loader's batch buffers. Not backend memory:
     * the host reads and writes it (loader threads included). */
    mt_status (*host_alloc)(mt_backend *backend, size_t bytes, void **out);
    void (*host_free)(mt_backend *backend, void *buffer);
    /* ---- the input pipeline (a training batch: see mt_input_batch above) ---- */
    /* Enqueue the copy of `batch` into staging slot `slot` (0 or 1), which must be empty (its
     * last batch converted). The host buffers must stay unchanged until input_wait(slot). */
    mt_status (*input_upload)(mt_backend *backend, int slot, const mt_input_batch *batch);
    /* Empty the slot into the network's input: images (N,H,W,3 tensor, the batch's shape) =
     * mt_u8_to_input of the pixels, image i mirrored left to right where flips[i] is nonzero;
     * labels (int32 [n] of backend memory, or NULL) = the batch's labels. Ordered after the
     * slot's copy on the device, without the host waiting for it. */
    mt_status (*input_convert)(mt_backend *backend, int slot, mt_tensor *images, int32_t *labels);
    /* Returns once the slot's last copy has read its host buffers (they may then be rewritten);
     * waits for that copy alone, nothing the compute does. */
    mt_status (*input_wait)(mt_backend *backend, int slot);
    /* host: N,H,W,C float -> tensor in backend layout, and back */
    mt_status (*tensor_from_nhwc)(mt_backend *backend, const float *host_src, mt_tensor *dst);
    mt_status (*tensor_to_nhwc)(mt_backend *backend, const mt_tensor *src, float *host_dst);
    mt_status (*synchronize)(mt_backend *backend);
    /* dst = src: `bytes` from one backend buffer to another (not overlapping) */
    mt_status (*buffer_copy)(mt_backend *backend, void *dst, const void *src, size_t bytes);
    /* The same when the float at `flag` (backend memory) is nonzero, and then *count += 1 (count:
     * a double of backend memory, or NULL); nothing otherwise. The host does not look: the
     * trainer restores the BN statistics of a step skipped for a non-finite loss with it. */
    mt_status (*buffer_copy_if)(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                const float *flag, double *count);

    /* x[count] *= factor, fp32 in backend memory, in place; then, when `flag` (one float of
     * backend memory) is not NULL and some x is not finite, *flag = 1 (left as it is otherwise).
     * fp16's loss scale: the loss gradient times the scale before backward, the gradients times
     * 1/scale (a power of two: exact) and checked before the optimizer reads the flag. */
    mt_status (*buffer_scale)(mt_backend *backend, float *x, size_t count, const float *factor,
                              float *flag);
    /* factor: one float of backend memory (a per-step value: "Per-step values" above) */

    /* dst (backend memory) = bytes (<= MT_SCALARS_MAX_BYTES) of host_src, copied from the host
     * at the call and written in stream order: the ops enqueued after it read the new values,
     * those before it the old ones. Neither the host nor the device waits. */
    mt_status (*scalars_write)(mt_backend *backend, void *dst, const void *host_src,
                               size_t bytes);
    /* The other way, without waiting: enqueue the copy of `bytes` of backend memory at src into
     * host_dst (host_alloc memory) behind everything enqueued so far; readback_wait returns
     * once it has landed. One read back in flight at a time (fp16's skip flag: read at the top
     * of the next step, so that no step waits for itself).
     *   cuda: cudaMemcpyAsync on the compute stream and an event; readback_wait synchronizes
     *         with that event alone. CPU backends: the copy at once, nothing to wait for. */
    mt_status (*readback_start)(mt_backend *backend, void *host_dst, const void *src,
                                size_t bytes);
    mt_status (*readback_wait)(mt_backend *backend);

    /* ---- elementwise on tensors of equal shape ---- */
    mt_status (*tensor_zero)(mt_backend *backend, mt_tensor *tensor);
    mt_status (*tensor_copy)(mt_backend *backend, const mt_tensor *src, mt_tensor *dst);
    /* y = a + b (y may alias a or b): residual add forward, and summing gradients in backward */
    mt_status (*add)(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y);
    /* y = min(max(x, 0), 6); y may alias x */
    mt_status (*relu6_forward)(mt_backend *backend, const mt_tensor *x, mt_tensor *y);
    /* dx = dy where 0 < y < 6, else 0 (y: relu6's output); dx may alias dy */
    mt_status (*relu6_backward)(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                mt_tensor *dx);

    /* ---- convolution (regular and depthwise per desc->depthwise) ---- */
    /* x: N,H,W,Cin; w: kernel (see layouts above); y: N,Ho,Wo,Cout */
    mt_status (*conv_forward)(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                              const float *w, mt_tensor *y);
    /* dx = conv_transpose(dy, w) */
    mt_status (*conv_backward_data)(mt_backend *backend, const mt_conv_desc *desc,
                                    const mt_tensor *dy, const float *w, mt_tensor *dx);
    /* dw = correlation of x and dy (overwritten) */
    mt_status (*conv_backward_weights)(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *x, const mt_tensor *dy, float *dw);

    /* ---- batch normalization, per channel ---- */
    /* Training mode: normalize with the batch's mean and biased variance, save mean and
     * 1/sqrt(var+eps) for backward, and update the moving statistics in place. */
    mt_status (*batchnorm_forward_training)(mt_backend *backend, const mt_batchnorm_desc *desc,
                                            const mt_tensor *x, const float *gamma,
                                            const float *beta, float *moving_mean,
                                            float *moving_variance, mt_tensor *y,
                                            float *saved_mean, float *saved_inv_std);
    /* Inference mode: normalize with the moving statistics. y may alias x. */
    mt_status (*batchnorm_forward_inference)(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, const float *moving_mean,
                                             const float *moving_variance, mt_tensor *y);
    /* Training-mode backward through the batch statistics. dgamma/dbeta may be NULL (frozen). */
    mt_status (*batchnorm_backward_training)(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const mt_tensor *dy,
                                             const float *gamma, const float *saved_mean,
                                             const float *saved_inv_std, mt_tensor *dx,
                                             float *dgamma, float *dbeta);
    /* Inference-mode backward: the statistics are constants. dx, dgamma, dbeta may be NULL. */
    mt_status (*batchnorm_backward_inference)(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *dx,
                                              float *dgamma, float *dbeta);

    /* ---- zero padding (Keras ZeroPadding2D) ---- */
    mt_status (*zero_pad_forward)(mt_backend *backend, const mt_zero_pad_desc *desc,
                                  const mt_tensor *x, mt_tensor *y);
    mt_status (*zero_pad_backward)(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *dy, mt_tensor *dx);

    /* ---- head: pooling, dropout, dense, losses on plain row-major matrices ---- */
    /* y: N,C matrix = mean over H,W of x */
    mt_status (*global_avg_pool_forward)(mt_backend *backend, const mt_tensor *x, float *y);
    mt_status (*global_avg_pool_backward)(mt_backend *backend, const float *dy, mt_tensor *dx);
    /* Inverted dropout on `count` values: keep with probability 1-rate (rate in [0, 1)), scale
     * kept by 1/(1-rate). The keep decision of element i is a pure function of (seed, i),
     * identical on every backend: mt_dropout_keep(*seed, i, mt_dropout_threshold(rate)) from
     * src/ops/dropout_hash.h; seed: backend memory (a per-step value). mask (count bytes,
     * 1 = kept) records it for backward. */
    mt_status (*dropout_forward)(mt_backend *backend, size_t count, float rate,
                                 const uint64_t *seed, const float *x, float *y, uint8_t *mask);
    mt_status (*dropout_backward)(mt_backend *backend, size_t count, float rate,
                                  const uint8_t *mask, const float *dy, float *dx);
    /* y[N,out] = x[N,in] * w[in,out] + b[out] */
    mt_status (*dense_forward)(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                               const float *w, const float *b, float *y);
    /* dx (may be NULL), dw, db (overwritten; may be NULL when frozen) */
    mt_status (*dense_backward)(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *dy, float *dx, float *dw, float *db);
    /* Mean cross-entropy over rows whose label >= 0 (label -1 marks padding: no loss, zero
     * gradient). Numerically stable on logits. *loss_host gets the mean (0 when no valid row);
     * dlogits (may be NULL) the gradient of that mean. labels: int32 [batch] in backend memory,
     * in [0, classes) for softmax and in {0, 1} for the sigmoid (classes 1). */
    mt_status (*loss_forward_backward)(mt_backend *backend, const mt_loss_desc *desc,
                                       const float *logits, const int32_t *labels,
                                       float *loss_host, float *dlogits);
    /* The training step's loss without a trip to the host: the same mean loss and dlogits
     * (not NULL) as loss_forward_backward, but the results go into `accum`, MT_ACCUM_COUNT
     * doubles of backend memory the caller zeroes and downloads when it wants them (the
     * trainer: once per logging interval). The labels are the caller's to check on the host:
     * cuda counts an out-of-range one as a padding row rather than wait to report it (the CPU
     * backends fail as loss_forward_backward does). Per call:
     *   finite mean:  [MT_ACCUM_LOSS_SUM] += mean x valid rows, [MT_ACCUM_CORRECT] += rows
     *                 whose prediction (mt_accum_predicted) is the label, [MT_ACCUM_VALID] +=
     *                 valid rows, *skip = 0
     *   NaN or Inf:   *skip = 1, [MT_ACCUM_SKIPPED] += 1, and [MT_ACCUM_FIRST_SKIP] = `step`
     *                 when it is the first since the zeroing (nothing else changes)
     * step: one uint64 of backend memory (a per-step value)
     * skip: one float of backend memory, the optimizer's skip flag (mt_optimizer_desc.skip; the
     * trainer's rides the gradient all-reduce, so that every rank skips when one must). */
    mt_status (*loss_accumulate)(mt_backend *backend, const mt_loss_desc *desc, const float *logits,
                                 const int32_t *labels, float *dlogits, const uint64_t *step,
                                 double *accum, float *skip);

    /* ---- the optimizer ---- */
    /* params[count] -= update(grads[count]) per desc (see mt_optimizer_desc for the slots'
     * layout); params, grads and slots in backend memory. slots may be NULL when the rule has
     * none (SGD without momentum). */
    mt_status (*optimizer_update)(mt_backend *backend, const mt_optimizer_desc *desc,
                                  float *params, const float *grads, float *slots);

    /* ---- optional fused ops (NULL when a backend lacks them; callers fall back to the
     * separate ops) ---- */
    /* y = relu6(batchnorm_inference(conv(x, w))) in one pass (without the relu6 when `relu6`
     * is false), for layers whose BN runs in inference mode and whose conv and BN outputs no
     * backward pass needs (frozen layers, inference). bn->shape is the conv's output shape. */
    mt_status (*conv_bn_relu6_inference_forward)(mt_backend *backend, const mt_conv_desc *conv,
                                                 const mt_batchnorm_desc *bn, const mt_tensor *x,
                                                 const float *w, const float *gamma,
                                                 const float *beta, const float *moving_mean,
                                                 const float *moving_variance, bool relu6,
                                                 mt_tensor *y);
    /* y = relu6(batchnorm_forward_training(x)) with the same statistics outputs; y must not
     * alias x (the backward reads both). */
    mt_status (*batchnorm_relu6_forward_training)(mt_backend *backend,
                                                  const mt_batchnorm_desc *desc,
                                                  const mt_tensor *x, const float *gamma,
                                                  const float *beta, float *moving_mean,
                                                  float *moving_variance, mt_tensor *y,
                                                  float *saved_mean, float *saved_inv_std);
    /* Its backward: dy is the gradient at y (ReLU6's output), x is BN's input; = relu6_backward
     * then batchnorm_backward_training. dgamma/dbeta may be NULL; dx may alias dy. */
    mt_status (*relu6_batchnorm_backward_training)(mt_backend *backend,
                                                   const mt_batchnorm_desc *desc,
                                                   const mt_tensor *x, const mt_tensor *y,
                                                   const mt_tensor *dy, const float *gamma,
                                                   const float *saved_mean,
                                                   const float *saved_inv_std, mt_tensor *dx,
                                                   float *dgamma, float *dbeta);

    /* ---- optional: capturing a training step and replaying it (NULL when a backend cannot;
     * the trainer then runs every step as it comes) ----
     * Between step_capture_begin and step_capture_end the ops are recorded, not run; end hands
     * back the recording, which step_replay runs (as many times as wanted, the first included)
     * with the arguments of the recorded calls: pointers to the same backend memory, by-value
     * arguments as they were. What may change between replays is the content of backend memory
     * (the per-step values, the batch the input pipeline converted), nothing else. A captured
     * sequence must not reach the host: upload, download, synchronize, input_upload,
     * input_wait, allocations and frees fail while capturing (the capture is then broken:
     * step_capture_end fails too, and nothing of the step ran). step_replay fails with
     * MT_ERR_INVALID when backend memory was freed since the capture (the recording could point
     * at memory another buffer now holds): the caller captures again.
     *   cuda:  cudaStreamBeginCapture (thread-local mode) on the compute stream, the streams it
     *          waits on (copy, comm) joining through their events; cudaGraphInstantiate;
     *          cudaGraphLaunch on the compute stream. */
    mt_status (*step_capture_begin)(mt_backend *backend);
    mt_status (*step_capture_end)(mt_backend *backend, void **graph);
    mt_status (*step_replay)(mt_backend *backend, void *graph);
    void (*step_graph_free)(mt_backend *backend, void *graph);

    /* ---- optional: the backend's per-shape choices as state (NULL when a backend makes none
     * that change results: reference, cpu) ----
     * A backend that picks an implementation per shape by timing it (cuda: our kernels, cuDNN
     * or cuBLAS per convolution and pass, and cuDNN's algorithm) may pick differently in another
     * process, and another implementation sums in another order: other bits. The trainer keeps
     * the choices in its checkpoints so that a resumed run makes exactly the straight run's.
     *   choices_save  *text = one line per decided (shape, pass) (malloc'd; the caller frees
     *                 it), or NULL when nothing is decided yet
     *   choices_load  pre-seed the choices from such a text, before the first op of those
     *                 shapes: they skip the timing and run what the text says. A malformed
     *                 line is MT_ERR_FORMAT naming it; what this backend cannot run (another
     *                 GPU, another library version) is dropped with a line on stderr and chosen
     *                 anew (docs/gpu.md, "Choices, determinism and resume"). */
    mt_status (*choices_save)(mt_backend *backend, char **text);
    mt_status (*choices_load)(mt_backend *backend, const char *text);

    /* ---- optional: device memory use (NULL on backends whose memory is the host's) ----
     * *bytes = the most device memory the backend held for its buffers, tensors and scratch at
     * once since it started, or an upper bound of it (cuda: the pool's peak of blocks in use,
     * graphs' kept blocks included, plus the grow-only scratch areas and input slots at their
     * largest and cuBLAS' workspace; what the CUDA context and the libraries' own code take is
     * not counted). For benchmarks and logs: it waits for nothing. */
    mt_status (*device_memory_peak)(mt_backend *backend, size_t *bytes);
} mt_ops;

struct mt_backend {
    const mt_ops *ops;
    void *impl; /* the backend's private state */
    mt_backend_options options;
};

/* Every backend mobiletune knows, whether this build has it or not (train.backend's values). */
typedef enum mt_backend_kind {
    MT_BACKEND_KIND_REFERENCE = 0, /* plain C, the truth */
    MT_BACKEND_KIND_CPU,           /* oneDNN */
    MT_BACKEND_KIND_CUDA,          /* cuDNN and our kernels, in the cuda module */
} mt_backend_kind;
extern const mt_enum_names mt_backend_kind_names; /* reference|cpu|cuda */

/* "reference", "cpu", "cuda" (when built with CUDA), ignoring case. Error lists the available
 * names. */
mt_status mt_backend_create(const char *name, const mt_backend_options *options,
                            mt_backend **out);
/* The same by kind (the config's train.backend). */
mt_status mt_backend_create_kind(mt_backend_kind kind, const mt_backend_options *options,
                                 mt_backend **out);
void mt_backend_destroy(mt_backend *backend);
/* Names of the backends compiled in, NULL-terminated. */
const char *const *mt_backend_names(void);

/* The tables, for tests that want one directly. */
extern const mt_ops mt_ops_reference;
extern const mt_ops mt_ops_cpu;
/* The reference backend in "guarded device" mode (ops/reference/guarded.c): what
 * mt_backend_create("reference") gives when MT_REFERENCE_GUARDED=1 is set. */
extern const mt_ops mt_ops_reference_guarded;

#ifdef __cplusplus
}
#endif
#endif
