/* Private state and helpers of the "cpu" backend (oneDNN + OpenMP), shared by its source files.
 *
 * Layout rule. An activation of shape N,H,W,C lives in oneDNN's blocked format nChw8c when the
 * CPU has AVX2 and C is a multiple of 8 (every tensor of MobileNetV2 but the 3-channel input),
 * and in plain nhwc otherwise. The rule depends on the shape only, so every op, forward and
 * backward, agrees on a tensor's layout without asking anyone, and no op reorders activations
 * except tensor_from_nhwc / tensor_to_nhwc (and a convolution whose layouts oneDNN has only its
 * slow reference kernel for: it reorders its input side, see cpu_conv.c). In both layouts
 * element (n, c, h, w) sits at
 *     ((n * C/B + c/B) * H*W + h*W + w) * B + c%B          (nhwc is the case B = C)
 * which is what the OpenMP loops use. Measured on MobileNetV2 1.0 at 160x160, batch 32, the
 * blocked layout makes the backbone's convolutions, BNs and ReLU6s 1.29x faster than nhwc
 * (bench/ops). MT_ONEDNN_LAYOUT=nhwc in the environment at backend init forces nhwc everywhere
 * (the layout experiment of bench/ops).
 *
 * One backend is driven by one thread at a time (its scratchpad, temporaries and cache are
 * shared by its ops); the ops themselves run on OpenMP threads, as many as the backend's
 * num_threads option (set for the thread that initializes the backend). */
#ifndef MT_OPS_CPU_INTERNAL_H
#define MT_OPS_CPU_INTERNAL_H

#include <dnnl.h>
#include <dnnl_debug.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"

/* Every oneDNN call goes through one of these; the message names the call. */
#define DNNL_CHECK(call)                                                                           \
    do {                                                                                           \
        dnnl_status_t dnnl_check_status_ = (call);                                                 \
        if (dnnl_check_status_ != dnnl_success)                                                    \
            return MT_FAIL(MT_ERR_BACKEND, "oneDNN call %s failed: %s", #call,                     \
                           dnnl_status2str(dnnl_check_status_));                                   \
    } while (0)

/* The same inside a function that must release what it made: sets `status`, jumps to `label`. */
#define DNNL_CHECK_GOTO(call, status, label)                                                       \
    do {                                                                                           \
        dnnl_status_t dnnl_check_status_ = (call);                                                 \
        if (dnnl_check_status_ != dnnl_success) {                                                  \
            (status) = MT_FAIL(MT_ERR_BACKEND, "oneDNN call %s failed: %s", #call,                 \
                               dnnl_status2str(dnnl_check_status_));                               \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

enum { CPU_KEY_INTS = 14, CPU_MAX_ARGS = 10 };

/* What a cached primitive was made for: an op kind and the descriptor's values (all ints and
 * floats, zero-filled, so memcmp compares it). */
typedef struct cpu_key {
    int kind;
    int v[CPU_KEY_INTS];
    float f[2];
} cpu_key;

enum cpu_kind {
    CPU_CONV_FWD = 1,
    CPU_CONV_BWD_DATA,
    CPU_CONV_BWD_WEIGHTS,
    CPU_BN_FWD_TRAINING,
    CPU_BN_FWD_INFERENCE,
    CPU_BN_BWD,
    CPU_RELU6_FWD,
    CPU_RELU6_BWD,
    CPU_REORDER_FROM_NHWC,
    CPU_REORDER_TO_NHWC,
    CPU_CONV_BN_RELU6_FWD,
};

/* One cached primitive plus, for convolutions, the reorder between Keras' weight layout and the
 * primitive's and the buffer that holds the reordered weights (owned by the entry), and, where
 * oneDNN has no fast kernel for the tensors' own layouts (the 3-channel nhwc input into a blocked
 * output), a reorder of the input-side activation into the layout it prefers. */
typedef struct cpu_entry {
    cpu_key key;
    uint64_t hash;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    dnnl_primitive_desc_t aux_pd; /* weight reorder, or NULL */
    dnnl_primitive_t aux;
    dnnl_memory_desc_t user_w_md; /* Keras layout */
    dnnl_memory_desc_t prim_w_md; /* the primitive's layout */
    void *w_buf;
    size_t w_bytes;
    dnnl_primitive_desc_t act_pd; /* input-side activation reorder, or NULL */
    dnnl_primitive_t act;
    void *act_buf;
} cpu_entry;

/* One of the input pipeline's two staging slots (ops.h mt_input_batch): host memory, copied
 * into at once by input_upload; labels [n], flips [n], then pixels N,H,W,3. */
typedef struct cpu_input_slot {
    uint8_t *buffer;
    size_t bytes;
    int n, height, width;
    bool full; /* uploaded, not yet converted */
} cpu_input_slot;

typedef struct cpu_backend {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int block;         /* B of the blocked layout; 0 = nhwc everywhere */
    cpu_entry **slots; /* open-addressing hash table */
    size_t capacity, used;
    void *scratch; /* oneDNN scratchpad shared by all primitives (user mode) */
    size_t scratch_bytes;
    float *temp; /* small per-channel temporaries (BN variance, unused gradients) */
    size_t temp_floats;
    double *reduce; /* per-thread partial sums of the OpenMP reductions */
    size_t reduce_doubles;
    cpu_input_slot input[2];
} cpu_backend;

static inline cpu_backend *cpu_of(mt_backend *backend) {
    return (cpu_backend *)backend->impl;
}

/* B for a tensor of this shape (see the layout rule above): the block, or C for nhwc. */
static inline int cpu_block_of(const cpu_backend *cpu, mt_shape4 s) {
    return (cpu->block > 0 && s.c % cpu->block == 0) ? cpu->block : s.c;
}

/* The oneDNN memory descriptor of an activation of this shape in the backend's layout. */
mt_status cpu_tensor_md(const cpu_backend *cpu, mt_shape4 shape, dnnl_memory_desc_t *md);
/* A plain 1-D float vector of `count`, and a Keras conv kernel (HWIO, or [kh][kw][c][1]). */
mt_status cpu_vector_md(int count, dnnl_memory_desc_t *md);
/* Checks that a tensor has the shape an op expects and enough bytes for it. */
mt_status cpu_check_tensor(const cpu_backend *cpu, const mt_tensor *t, mt_shape4 want,
                           const char *what);

/* The cache: find an entry by key (NULL when absent), insert a filled one (takes ownership). */
cpu_entry *cpu_cache_find(cpu_backend *cpu, const cpu_key *key);
mt_status cpu_cache_insert(cpu_backend *cpu, cpu_entry *entry);
/* Makes a primitive from an op descriptor with a user-mode scratchpad, growing the shared
 * scratchpad to fit. hint may be NULL. */
mt_status cpu_make_primitive(cpu_backend *cpu, const_dnnl_op_desc_t op_desc,
                             const_dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint,
                             dnnl_primitive_desc_t *pd, dnnl_primitive_t *prim);
mt_status cpu_make_reorder(cpu_backend *cpu, const dnnl_memory_desc_t *from,
                           const dnnl_memory_desc_t *to, dnnl_primitive_desc_t *pd,
                           dnnl_primitive_t *prim);
void cpu_entry_free(cpu_entry *entry);

/* Runs a primitive on raw pointers: args[i] with md_of(args[i]) taken from the pd by query,
 * plus the shared scratchpad. */
typedef struct cpu_arg {
    int arg; /* DNNL_ARG_* */
    const void *data;
} cpu_arg;
mt_status cpu_execute(cpu_backend *cpu, dnnl_primitive_desc_t pd, dnnl_primitive_t prim, int count,
                      const cpu_arg *args);

/* Grows the small temporaries. */
mt_status cpu_temp(cpu_backend *cpu, size_t floats, float **out);
mt_status cpu_reduce_buffer(cpu_backend *cpu, size_t doubles, double **out);

/* ---- the ops, one file per family ---- */
mt_status mt_cpu_conv_forward(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                              const float *w, mt_tensor *y);
mt_status mt_cpu_conv_backward_data(mt_backend *backend, const mt_conv_desc *desc,
                                    const mt_tensor *dy, const float *w, mt_tensor *dx);
mt_status mt_cpu_conv_backward_weights(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *x, const mt_tensor *dy, float *dw);

mt_status mt_cpu_conv_bn_relu6_inference_forward(mt_backend *backend, const mt_conv_desc *conv,
                                                 const mt_batchnorm_desc *bn, const mt_tensor *x,
                                                 const float *w, const float *gamma,
                                                 const float *beta, const float *moving_mean,
                                                 const float *moving_variance, bool relu6,
                                                 mt_tensor *y);

mt_status mt_cpu_batchnorm_relu6_forward_training(mt_backend *backend,
                                                  const mt_batchnorm_desc *desc, const mt_tensor *x,
                                                  const float *gamma, const float *beta,
                                                  float *moving_mean, float *moving_variance,
                                                  mt_tensor *y, float *saved_mean,
                                                  float *saved_inv_std);
mt_status mt_cpu_relu6_batchnorm_backward_training(
    mt_backend *backend, const mt_batchnorm_desc *desc, const mt_tensor *x, const mt_tensor *y,
    const mt_tensor *dy, const float *gamma, const float *saved_mean, const float *saved_inv_std,
    mt_tensor *dx, float *dgamma, float *dbeta);

/* Training-mode BN forward as the OpenMP passes of the fused op, without the clip. */
mt_status cpu_batchnorm_forward_training_openmp(cpu_backend *cpu, const mt_batchnorm_desc *desc,
                                                const mt_tensor *x, const float *gamma,
                                                const float *beta, float *moving_mean,
                                                float *moving_variance, mt_tensor *y,
                                                float *saved_mean, float *saved_inv_std);
mt_status mt_cpu_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                            const mt_tensor *x, const float *gamma,
                                            const float *beta, float *moving_mean,
                                            float *moving_variance, mt_tensor *y, float *saved_mean,
                                            float *saved_inv_std);
mt_status mt_cpu_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, const float *moving_mean,
                                             const float *moving_variance, mt_tensor *y);
mt_status mt_cpu_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const mt_tensor *dy,
                                             const float *gamma, const float *saved_mean,
                                             const float *saved_inv_std, mt_tensor *dx,
                                             float *dgamma, float *dbeta);
mt_status mt_cpu_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *dx,
                                              float *dgamma, float *dbeta);
mt_status mt_cpu_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y);
mt_status mt_cpu_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                mt_tensor *dx);

mt_status mt_cpu_tensor_zero(mt_backend *backend, mt_tensor *tensor);
mt_status mt_cpu_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes);
mt_status mt_cpu_optimizer_update(mt_backend *backend, const mt_optimizer_desc *desc,
                                  float *params, const float *grads, float *slots);
mt_status mt_cpu_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst);
mt_status mt_cpu_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y);
mt_status mt_cpu_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                  const mt_tensor *x, mt_tensor *y);
mt_status mt_cpu_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *dy, mt_tensor *dx);
mt_status mt_cpu_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y);
mt_status mt_cpu_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx);

mt_status mt_cpu_dropout_forward(mt_backend *backend, size_t count, float rate,
                                 const uint64_t *seed, const float *x, float *y, uint8_t *mask);
mt_status mt_cpu_dropout_backward(mt_backend *backend, size_t count, float rate,
                                  const uint8_t *mask, const float *dy, float *dx);
mt_status mt_cpu_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                               const float *w, const float *b, float *y);
mt_status mt_cpu_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *dy, float *dx, float *dw, float *db);
mt_status mt_cpu_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                       const float *logits, const int32_t *labels, float *loss_host,
                                       float *dlogits);
mt_status mt_cpu_loss_accumulate(mt_backend *backend, const mt_loss_desc *desc, const float *logits,
                                 const int32_t *labels, float *dlogits, const uint64_t *step,
                                 double *accum, float *skip);
mt_status mt_cpu_scalars_write(mt_backend *backend, void *dst, const void *host_src,
                               size_t bytes);
mt_status mt_cpu_readback_wait(mt_backend *backend);
mt_status mt_cpu_buffer_scale(mt_backend *backend, float *x, size_t count, const float *factor,
                              float *flag);
mt_status mt_cpu_buffer_copy_if(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                const float *flag, double *count);

#endif
