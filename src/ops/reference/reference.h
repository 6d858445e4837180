/* Private declarations of the reference backend: one function per ops-table entry (defined in
 * the op-family files), its small state and the checks its ops share. Tensors are plain NHWC
 * float arrays in host memory; every buffer is host memory. */
#ifndef MT_OPS_REFERENCE_H
#define MT_OPS_REFERENCE_H

#include "mobiletune/ops.h"

/* The backend's only state (backend->impl; the guarded mode's state begins with it): the input
 * pipeline's two staging slots. A slot's buffer is backend memory (backend->ops->buffer_alloc:
 * guarded in the guarded mode), labels [capacity] then flips [capacity] then pixels. */
typedef struct mt_ref_input_slot {
    void *buffer;
    size_t bytes;
    int n, height, width;
    bool full; /* uploaded, not yet converted */
} mt_ref_input_slot;

typedef struct mt_ref_state {
    mt_ref_input_slot input[2];
} mt_ref_state;

/* ref_init's checks of the options (the guarded mode's init runs them too) */
mt_status mt_ref_check_options(const mt_backend_options *options);
/* Frees the staging slots (both modes' shutdown). */
void mt_ref_input_free(mt_backend *backend);

/* Threads for an OpenMP region: the backend's num_threads option, or OpenMP's default. */
int mt_ref_threads(const mt_backend *backend);

/* MT_ERR_INVALID naming the op, the argument and both shapes when `got` differs from `want`. */
mt_status mt_ref_check_shape(const char *op, const char *what, mt_shape4 got, mt_shape4 want);

/* Reduced precision (ops.h "Precision"): the reference keeps float storage and rounds, to the
 * backend's bf16 or fp16, every tensor an op writes, right where the cuda backend stores 16 bits;
 * fp32 and tf32 change nothing. mt_ref_stored rounds `t` and returns MT_OK (an op's last line). */
mt_status mt_ref_stored(const mt_backend *backend, mt_tensor *t);
/* The conv weights as a reduced-precision backend's convolutions read them: `w` itself in fp32
 * and tf32, else a rounded copy in *owned (free it; NULL when none was made). NULL when out of
 * memory (an error is set). */
const float *mt_ref_conv_weights(const mt_backend *backend, const float *w, size_t count,
                                 float **owned);
/* x[count] *= factor; flag = 1 when some x is not finite (ops.h buffer_scale) */
mt_status mt_ref_buffer_scale(mt_backend *backend, float *x, size_t count, const float *factor,
                              float *flag);

/* memory.c */
mt_status mt_ref_buffer_alloc(mt_backend *backend, size_t bytes, void **out);
void mt_ref_buffer_free(mt_backend *backend, void *buffer);
/* ops.h scalars_write: a memcpy (host memory) */
mt_status mt_ref_scalars_write(mt_backend *backend, void *dst, const void *host_src,
                               size_t bytes);
/* ops.h readback_start/wait: the copy at once, nothing to wait for */
mt_status mt_ref_readback_start(mt_backend *backend, void *host_dst, const void *src,
                                size_t bytes);
mt_status mt_ref_readback_wait(mt_backend *backend);
mt_status mt_ref_upload(mt_backend *backend, void *dst, const void *host_src, size_t bytes);
mt_status mt_ref_download(mt_backend *backend, void *host_dst, const void *src, size_t bytes);
mt_status mt_ref_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out);
void mt_ref_tensor_free(mt_backend *backend, mt_tensor *tensor);
mt_status mt_ref_tensor_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst);
mt_status mt_ref_host_alloc(mt_backend *backend, size_t bytes, void **out);
void mt_ref_host_free(mt_backend *backend, void *buffer);
mt_status mt_ref_input_upload(mt_backend *backend, int slot, const mt_input_batch *batch);
mt_status mt_ref_input_convert(mt_backend *backend, int slot, mt_tensor *images, int32_t *labels);
mt_status mt_ref_input_wait(mt_backend *backend, int slot);
mt_status mt_ref_tensor_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst);
mt_status mt_ref_synchronize(mt_backend *backend);
mt_status mt_ref_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes);

/* elementwise.c */
mt_status mt_ref_tensor_zero(mt_backend *backend, mt_tensor *tensor);
mt_status mt_ref_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst);
mt_status mt_ref_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y);
mt_status mt_ref_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y);
mt_status mt_ref_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                mt_tensor *dx);

/* conv.c */
mt_status mt_ref_conv_forward(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                              const float *w, mt_tensor *y);
mt_status mt_ref_conv_backward_data(mt_backend *backend, const mt_conv_desc *desc,
                                    const mt_tensor *dy, const float *w, mt_tensor *dx);
mt_status mt_ref_conv_backward_weights(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *x, const mt_tensor *dy, float *dw);

/* batchnorm.c */
mt_status mt_ref_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                            const mt_tensor *x, const float *gamma,
                                            const float *beta, float *moving_mean,
                                            float *moving_variance, mt_tensor *y, float *saved_mean,
                                            float *saved_inv_std);
mt_status mt_ref_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, const float *moving_mean,
                                             const float *moving_variance, mt_tensor *y);
mt_status mt_ref_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const mt_tensor *dy,
                                             const float *gamma, const float *saved_mean,
                                             const float *saved_inv_std, mt_tensor *dx,
                                             float *dgamma, float *dbeta);
mt_status mt_ref_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *dx,
                                              float *dgamma, float *dbeta);

/* pad.c */
mt_status mt_ref_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                  const mt_tensor *x, mt_tensor *y);
mt_status mt_ref_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *dy, mt_tensor *dx);

/* head.c */
mt_status mt_ref_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y);
mt_status mt_ref_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx);
mt_status mt_ref_dropout_forward(mt_backend *backend, size_t count, float rate,
                                 const uint64_t *seed, const float *x, float *y, uint8_t *mask);
mt_status mt_ref_dropout_backward(mt_backend *backend, size_t count, float rate,
                                  const uint8_t *mask, const float *dy, float *dx);
mt_status mt_ref_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                               const float *w, const float *b, float *y);
mt_status mt_ref_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *dy, float *dx, float *dw, float *db);
mt_status mt_ref_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                       const float *logits, const int32_t *labels, float *loss_host,
                                       float *dlogits);
mt_status mt_ref_loss_accumulate(mt_backend *backend, const mt_loss_desc *desc, const float *logits,
                                 const int32_t *labels, float *dlogits, const uint64_t *step,
                                 double *accum, float *skip);
mt_status mt_ref_buffer_copy_if(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                const float *flag, double *count);

/* optimizer.c */
mt_status mt_ref_optimizer_update(mt_backend *backend, const mt_optimizer_desc *desc,
                                  float *params, const float *grads, float *slots);

#endif
