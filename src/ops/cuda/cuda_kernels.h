/* The CUDA kernels of the "cuda" backend, as plain C launchers (cuda_kernels_*.cu), one per op:
 * every launcher enqueues its kernels on `stream` and returns the launch's cudaError_t, which the
 * C side checks with CUDA_CHECK. Tensors are NHWC in device memory, their elements in a storage
 * (mt_cuda_storage below: fp32, bf16 or fp16); weights are float, in Keras' layouts
 * (conv HWIO [k][k][cin][cout], depthwise [k][k][c]). Sums that feed a gradient or a statistic are
 * reduced in a fixed order (per-block partials, then one pass over the partials in double), so
 * results do not depend on scheduling. */
#ifndef MT_OPS_CUDA_KERNELS_H
#define MT_OPS_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The geometry of one convolution, explicit pads (TF 'SAME' may be asymmetric: the bottom/right
 * pads are implied by the output size). Output (oh, ow) and tap (kh, kw) read input
 *     ih = oh*stride + kh - pad_top,  iw = ow*stride + kw - pad_left   (zero outside). */
typedef struct mt_cuda_conv_geom {
    int n, h, w, cin; /* input N,H,W,Cin */
    int ho, wo, cout; /* output Ho,Wo,Cout (Cout == Cin for depthwise) */
    int k, stride;    /* square kernel, same stride both ways */
    int pad_top, pad_left;
} mt_cuda_conv_geom;

/* The element type of a tensor in device memory: fp32 (MT_CUDA_F32), or the bf16 / fp16 bit
 * patterns (uint16) of ops/precision_bits.h (train.precision = bf16 | fp16). One launcher per op:
 * those that move activations or their gradients take the storage of those tensors (void
 * pointers; fp32 is MT_CUDA_F32), read them into fp32, compute in fp32 the same way whatever the
 * storage and round once on store (to nearest, ties to even): in 16 bits, bit for bit the
 * MT_CUDA_F32 case on the widened inputs, then the cast. Weights, statistics and the gradients of
 * weights stay float; an unknown storage is cudaErrorInvalidValue. */
typedef enum mt_cuda_storage { MT_CUDA_F32, MT_CUDA_BF16, MT_CUDA_FP16 } mt_cuda_storage;

/* Partial sums: how many slices a reduction over `rows` is split into, and the scratch floats
 * (or doubles) it needs. */
int mt_cuda_reduce_parts(long rows);

/* ---- weight layouts ---- */
/* Keras HWIO [rs][cin][cout] <-> cuDNN's NHWC filter KRSC [cout][rs][cin]. Depthwise kernels are
 * the case cin = 1 ([rs][c] <-> [c][rs]). */
cudaError_t mt_cuda_launch_hwio_to_krsc(cudaStream_t stream, const float *src, float *dst, int rs,
                                        int cin, int cout);
cudaError_t mt_cuda_launch_krsc_to_hwio(cudaStream_t stream, const float *src, float *dst, int rs,
                                        int cin, int cout);

/* ---- convolutions of our own: depthwise (multiplier 1) and direct regular (any pads) ---- */
/* x, y, dy, dx in `storage`; w (rounded to the format by the caller in bf16/fp16, as the
 * reference's emulation reads it), dw and the partials stay float. */
/* x: N,H,W,C; w: [k][k][C]; y: N,Ho,Wo,C */
cudaError_t mt_cuda_launch_depthwise_forward(cudaStream_t stream, mt_cuda_storage storage,
                                             const mt_cuda_conv_geom *g, const void *x,
                                             const float *w, void *y);
/* dy: N,Ho,Wo,C; w: [k][k][C]; dx: N,H,W,C */
cudaError_t mt_cuda_launch_depthwise_backward_data(cudaStream_t stream, mt_cuda_storage storage,
                                                   const mt_cuda_conv_geom *g, const void *dy,
                                                   const float *w, void *dx);
/* x: N,H,W,C; dy: N,Ho,Wo,C; dw: [k][k][C]; partials: mt_cuda_reduce_parts(N*Ho*Wo) * k*k*C */
cudaError_t mt_cuda_launch_depthwise_backward_weights(cudaStream_t stream, mt_cuda_storage storage,
                                                      const mt_cuda_conv_geom *g, const void *x,
                                                      const void *dy, float *partials, float *dw);
/* The same two passes register-blocked (each thread a strip of 4 positions along W, vectors of 4
 * channels when C % 4 == 0): the default; the two above stay as MT_CUDA_DEPTHWISE_KERNEL=legacy */
cudaError_t mt_cuda_launch_depthwise_forward_strip(cudaStream_t stream, mt_cuda_storage storage,
                                                   const mt_cuda_conv_geom *g, const void *x,
                                                   const float *w, void *y);
cudaError_t mt_cuda_launch_depthwise_backward_data_strip(cudaStream_t stream,
                                                         mt_cuda_storage storage,
                                                         const mt_cuda_conv_geom *g, const void *dy,
                                                         const float *w, void *dx);
/* The weight gradient with whole output rows per thread and vectors of 4 channels (the default;
 * the kernel above stays as MT_CUDA_DEPTHWISE_KERNEL=legacy): partials holds
 * mt_cuda_depthwise_weights_rows_partials(g) floats */
size_t mt_cuda_depthwise_weights_rows_partials(const mt_cuda_conv_geom *g);
cudaError_t mt_cuda_launch_depthwise_backward_weights_rows(cudaStream_t stream,
                                                           mt_cuda_storage storage,
                                                           const mt_cuda_conv_geom *g,
                                                           const void *x, const void *dy,
                                                           float *partials, float *dw);
/* x: N,H,W,Cin; w: [k][k][Cin][Cout]; y: N,Ho,Wo,Cout */
cudaError_t mt_cuda_launch_direct_conv_forward(cudaStream_t stream, mt_cuda_storage storage,
                                               const mt_cuda_conv_geom *g, const void *x,
                                               const float *w, void *y);
/* dy: N,Ho,Wo,Cout; w: HWIO; dx: N,H,W,Cin */
cudaError_t mt_cuda_launch_direct_conv_backward_data(cudaStream_t stream, mt_cuda_storage storage,
                                                     const mt_cuda_conv_geom *g, const void *dy,
                                                     const float *w, void *dx);
/* x, dy as above; dw: HWIO; partials: mt_cuda_reduce_parts(N*Ho*Wo) * k*k*Cin*Cout */
cudaError_t mt_cuda_launch_direct_conv_backward_weights(cudaStream_t stream,
                                                        mt_cuda_storage storage,
                                                        const mt_cuda_conv_geom *g, const void *x,
                                                        const void *dy, float *partials, float *dw);

/* The weight gradient with every tap in registers, for 3x3 over 3 input channels (Conv1; the
 * default there, the kernel above otherwise and as MT_CUDA_DIRECT_KERNEL=legacy): partials holds
 * mt_cuda_direct_weights_rows_partials(g) floats; cudaErrorInvalidValue for other shapes */
int mt_cuda_direct_weights_rows_supported(const mt_cuda_conv_geom *g);
size_t mt_cuda_direct_weights_rows_partials(const mt_cuda_conv_geom *g);
cudaError_t mt_cuda_launch_direct_conv_backward_weights_rows(cudaStream_t stream,
                                                             mt_cuda_storage storage,
                                                             const mt_cuda_conv_geom *g,
                                                             const void *x, const void *dy,
                                                             float *partials, float *dw);

/* ---- elementwise on `count` elements of `storage` ---- */
cudaError_t mt_cuda_launch_add(cudaStream_t stream, mt_cuda_storage storage, size_t count,
                               const void *a, const void *b, void *y);
cudaError_t mt_cuda_launch_relu6_forward(cudaStream_t stream, mt_cuda_storage storage, size_t count,
                                         const void *x, void *y);
/* dx = dy where 0 < y < 6 */
cudaError_t mt_cuda_launch_relu6_backward(cudaStream_t stream, mt_cuda_storage storage,
                                          size_t count, const void *y, const void *dy, void *dx);

/* ---- batch normalization over M = N*H*W rows of C channels ---- */
/* The first kernels, kept as MT_CUDA_BN=legacy: fp32 tensors only (the backend refuses
 * MT_CUDA_BN=legacy with train.precision = bf16 | fp16). */
/* Scratch doubles the BN launchers need for M rows and C channels. */
size_t mt_cuda_bn_scratch_doubles(long m, int c);
/* x, y: [M][C]; gamma, beta, moving_*, saved_*: [C]. Two passes (mean, then the biased variance
 * around it), Keras' moving update. */
cudaError_t mt_cuda_launch_bn_forward_training(cudaStream_t stream, long m, int c, float epsilon,
                                               float momentum, const float *x, const float *gamma,
                                               const float *beta, float *moving_mean,
                                               float *moving_variance, float *y, float *saved_mean,
                                               float *saved_inv_std, double *scratch);
/* y may alias x */
cudaError_t mt_cuda_launch_bn_forward_inference(cudaStream_t stream, long m, int c, float epsilon,
                                                const float *x, const float *gamma,
                                                const float *beta, const float *moving_mean,
                                                const float *moving_variance, float *y,
                                                double *scratch);
/* training: stats are saved_mean and saved_inv_std; inference: moving_mean and
 * moving_variance (inv_std = 1/sqrt(var + eps)). dx (may alias dy), dgamma, dbeta may be NULL
 * (training requires dx). */
cudaError_t mt_cuda_launch_bn_backward(cudaStream_t stream, long m, int c, float epsilon,
                                       int training, const float *x, const float *dy,
                                       const float *gamma, const float *stat_mean,
                                       const float *stat_second, float *dx, float *dgamma,
                                       float *dbeta, double *scratch);

/* The same with fewer launches (the default; the above stay as MT_CUDA_BN=legacy): see
 * cuda_kernels_bn.cu. x, y, dy, dx in `storage`; the statistics, gamma, beta and their gradients
 * stay float. Scratch: mt_cuda_bn_fused_scratch_floats(M, C) floats; counters:
 * mt_cuda_bn_fused_counters(C) unsigned ints, zero before the first launch (each launch leaves
 * them zero again). Launches: forward training 2 (statistics, normalize [+ ReLU6]), forward
 * inference 1, backward 2 (sums with dgamma/dbeta, dx; inference without dgamma/dbeta: 1). */
size_t mt_cuda_bn_fused_scratch_floats(long m, int c);
int mt_cuda_bn_fused_counters(int c);
/* relu6: y = relu6(BN(x)), else y = BN(x); y must not alias x */
cudaError_t mt_cuda_launch_bn_fused_forward_training(cudaStream_t stream, mt_cuda_storage storage,
                                                     long m, int c, float epsilon, float momentum,
                                                     int relu6, const void *x, const float *gamma,
                                                     const float *beta, float *moving_mean,
                                                     float *moving_variance, void *y,
                                                     float *saved_mean, float *saved_inv_std,
                                                     float *scratch, unsigned *counters);
/* y may alias x */
cudaError_t mt_cuda_launch_bn_fused_forward_inference(cudaStream_t stream, mt_cuda_storage storage,
                                                      long m, int c, float epsilon, const void *x,
                                                      const float *gamma, const float *beta,
                                                      const float *moving_mean,
                                                      const float *moving_variance, void *y);
/* Training (stat_* = saved mean and inverse std): y is ReLU6's output when the forward was fused
 * (dy is the gradient at y and is masked where y <= 0 or y >= 6), else NULL; dx required.
 * Inference (stat_* = moving mean and variance, y NULL): dx may be NULL. dx may alias dy; dgamma,
 * dbeta may be NULL. */
cudaError_t mt_cuda_launch_bn_fused_backward(cudaStream_t stream, mt_cuda_storage storage, long m,
                                             int c, float epsilon, int training, const void *x,
                                             const void *y, const void *dy, const float *gamma,
                                             const float *stat_mean, const float *stat_second,
                                             void *dx, float *dgamma, float *dbeta, float *scratch,
                                             unsigned *counters);

/* ---- precision casts (train.precision = bf16 | fp16: cuda_precision.c) ---- */
/* y[i] = x[i] rounded to the nearest bf16 (format 0) or fp16 (format 1), ties to even, as the
 * 16-bit pattern; fp16 overflow gives infinity, NaN stays NaN */
cudaError_t mt_cuda_launch_cast_from_f32(cudaStream_t stream, size_t count, int format,
                                         const float *x, uint16_t *y);
/* the exact fp32 value of each bf16 (0) or fp16 (1) pattern */
cudaError_t mt_cuda_launch_cast_to_f32(cudaStream_t stream, size_t count, int format,
                                       const uint16_t *x, float *y);
/* y[i] = x[i] rounded to bf16 (0) / fp16 (1) and widened back: fp32 values the format holds
 * (y may alias x) */
cudaError_t mt_cuda_launch_round_f32(cudaStream_t stream, size_t count, int format, const float *x,
                                     float *y);

/* ---- zero padding, pooling, dropout, dense helpers, loss ---- */
/* x: N,H,W,C; y: N,Ho,Wo,C with x at (top, left); x, y, dy, dx in `storage` */
cudaError_t mt_cuda_launch_zero_pad_forward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                            int h, int w, int c, int ho, int wo, int top, int left,
                                            const void *x, void *y);
cudaError_t mt_cuda_launch_zero_pad_backward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                             int h, int w, int c, int ho, int wo, int top, int left,
                                             const void *dy, void *dx);
/* x: N,HW,C; y: N,C. x and dx in `storage`; the pooled y and its dy stay float (the head's
 * input) */
cudaError_t mt_cuda_launch_avg_pool_forward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                            long hw, int c, const void *x, float *y);
cudaError_t mt_cuda_launch_avg_pool_backward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                             long hw, int c, const float *dy, void *dx);
/* the keep decision of src/ops/dropout_hash.h; seed: device memory (a per-step value); scale =
 * 1/(1-rate) computed by the caller */
cudaError_t mt_cuda_launch_dropout_forward(cudaStream_t stream, size_t count, const uint64_t *seed,
                                           uint32_t threshold, float scale, const float *x,
                                           float *y, uint8_t *mask);
cudaError_t mt_cuda_launch_dropout_backward(cudaStream_t stream, size_t count, float scale,
                                            const uint8_t *mask, const float *dy, float *dx);
/* y: [rows][cols] = b broadcast; sums: [cols] = column sums of a [rows][cols] */
cudaError_t mt_cuda_launch_broadcast_rows(cudaStream_t stream, int rows, int cols, const float *b,
                                          float *y);
cudaError_t mt_cuda_launch_column_sums(cudaStream_t stream, int rows, int cols, const float *a,
                                       float *sums);
/* ops.h input_convert on the device: dst (N,H,W,3 of `storage`) = mt_u8_to_input of src (N,H,W,3
 * uint8), rounded once, image i mirrored left to right where flips[i] (device, [n]) is nonzero */
cudaError_t mt_cuda_launch_input_convert(cudaStream_t stream, mt_cuda_storage storage, int n,
                                         int height, int width, const uint8_t *src,
                                         const uint8_t *flips, void *dst);
/* Mean cross-entropy of ops.h's loss_forward_backward. result (device, 3 doubles): the mean
 * loss, the number of valid rows, the first row with a bad label (-1 when none). */
cudaError_t mt_cuda_launch_loss(cudaStream_t stream, int batch, int classes, const float *logits,
                                const int32_t *labels, float *dlogits, double *result);
/* ops.h's loss_accumulate: the same kernel, its results added to accum (device,
 * MT_ACCUM_COUNT doubles) and the skip flag (device float), step read from device memory;
 * nothing crosses to the host */
cudaError_t mt_cuda_launch_loss_accumulate(cudaStream_t stream, int batch, int classes,
                                           const float *logits, const int32_t *labels,
                                           float *dlogits, const uint64_t *step, double *accum,
                                           float *skip);

#ifdef __cplusplus
}
#endif
#endif
