/* mobiletune's own CUDA kernels, everything elementwise or small (launchers in cuda_kernels.h):
 * add and ReLU6 (float4 when aligned), the fp32 <-> bf16/fp16 casts, the input conversion, zero
 * padding, global average pooling, dropout, the dense layer's helpers and the losses. One thread
 * per element (grid-stride), sums in double where a pooled value or a gradient sums over rows.
 * Add, ReLU6, the input conversion, zero pad and pooling also read and write 16-bit tensors (a
 * storage template, cuda_kernels_internal.cuh); the rest is fp32. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "mobiletune/ops.h" /* MT_ACCUM_* */
#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_kernels_internal.cuh"
#include "ops/dropout_hash.h"
#include "ops/loss_row.h"
#include "ops/precision_bits.h"

namespace {

/* ---- elementwise: V consecutive values per thread (V = 4: one float4 or 8-byte access when the
 * count is a multiple of 4 and the pointers allow it, the launchers check), count4 = count / V;
 * the arithmetic in fp32 whatever the storage ---------------------------------------------- */

template <class S, int V>
__global__ void add_kernel(size_t count4, const typename S::elem *a, const typename S::elem *b,
                           typename S::elem *y) {
    GRID_STRIDE(i, count4) {
        float va[V], vb[V];
        vec_io<S, V>::load(a + V * i, va);
        vec_io<S, V>::load(b + V * i, vb);
        for (int v = 0; v < V; v++)
            va[v] += vb[v];
        vec_io<S, V>::store(y + V * i, va);
    }
}

template <class S, int V>
__global__ void relu6_forward_kernel(size_t count4, const typename S::elem *x,
                                     typename S::elem *y) {
    GRID_STRIDE(i, count4) {
        float v4[V];
        vec_io<S, V>::load(x + V * i, v4);
        for (int v = 0; v < V; v++)
            v4[v] = v4[v] < 0.0f ? 0.0f : v4[v] > 6.0f ? 6.0f : v4[v];
        vec_io<S, V>::store(y + V * i, v4);
    }
}

/* dx = dy where 0 < y < 6 */
template <class S, int V>
__global__ void relu6_backward_kernel(size_t count4, const typename S::elem *y,
                                      const typename S::elem *dy, typename S::elem *dx) {
    GRID_STRIDE(i, count4) {
        float vy[V], vd[V];
        vec_io<S, V>::load(y + V * i, vy);
        vec_io<S, V>::load(dy + V * i, vd);
        for (int v = 0; v < V; v++)
            vd[v] = vy[v] > 0.0f && vy[v] < 6.0f ? vd[v] : 0.0f;
        vec_io<S, V>::store(dx + V * i, vd);
    }
}

/* ---- precision casts: fp32 <-> bf16 / fp16 bit patterns (uint16), round to nearest even ---- */

/* the bit patterns of ops/precision_bits.h, the host's rounding (the emulated test checks
 * every 16-bit pattern against it) */

/* format: 0 bf16, 1 fp16 */
__global__ void cast_from_f32_kernel(size_t count, int format, const float *x, uint16_t *y) {
    GRID_STRIDE(i, count) y[i] = format ? mt_f32_to_fp16_bits(x[i]) : mt_f32_to_bf16_bits(x[i]);
}

__global__ void cast_to_f32_kernel(size_t count, int format, const uint16_t *x, float *y) {
    GRID_STRIDE(i, count) y[i] = format ? mt_fp16_bits_to_f32(x[i]) : mt_bf16_bits_to_f32(x[i]);
}

/* the value a 16-bit store would keep, in fp32: the conv weights as 16-bit math reads them */
__global__ void round_f32_kernel(size_t count, int format, const float *x, float *y) {
    GRID_STRIDE(i, count) {
        y[i] = format ? mt_fp16_bits_to_f32(mt_f32_to_fp16_bits(x[i]))
                      : mt_bf16_bits_to_f32(mt_f32_to_bf16_bits(x[i]));
    }
}

/* ---- padding, pooling, dropout, dense helpers --------------------------------------------- */

/* the elements are moved as they are (zero is all bits clear in every storage) */
template <class S>
__global__ void zero_pad_forward_kernel(int n, int h, int w, int C, int ho, int wo, int top,
                                        int left, const typename S::elem *x, typename S::elem *y) {
    const size_t count = (size_t)n * ho * wo * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
        int ow = (int)(t % wo);
        t /= wo;
        int oh = (int)(t % ho), b = (int)(t / ho);
        int ih = oh - top, iw = ow - left;
        y[i] = ih < 0 || ih >= h || iw < 0 || iw >= w ? (typename S::elem)0
                                                      : x[(((size_t)b * h + ih) * w + iw) * C + c];
    }
}

template <class S>
__global__ void zero_pad_backward_kernel(int n, int h, int w, int C, int ho, int wo, int top,
                                         int left, const typename S::elem *dy,
                                         typename S::elem *dx) {
    const size_t count = (size_t)n * h * w * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
        int iw = (int)(t % w);
        t /= w;
        int ih = (int)(t % h), b = (int)(t / h);
        dx[i] = dy[(((size_t)b * ho + ih + top) * wo + iw + left) * C + c];
    }
}

/* one thread per (n, c): coalesced across c; y (the head's input) is float in every storage */
template <class S>
__global__ void avg_pool_forward_kernel(int n, long hw, int C, const typename S::elem *x,
                                        float *y) {
    const size_t count = (size_t)n * C;
    GRID_STRIDE(i, count) {
        size_t b = i / C, c = i % C;
        double s = 0.0;
        for (long p = 0; p < hw; p++)
            s += S::load(x[(b * hw + p) * C + c]);
        y[i] = (float)(s / (double)hw);
    }
}

template <class S>
__global__ void avg_pool_backward_kernel(int n, long hw, int C, const float *dy,
                                         typename S::elem *dx) {
    const size_t count = (size_t)n * hw * C;
    GRID_STRIDE(i, count) {
        size_t c = i % C, b = i / ((size_t)hw * C);
        dx[i] = S::store((float)((double)dy[b * C + c] / (double)hw));
    }
}

__global__ void dropout_forward_kernel(size_t count, const uint64_t *seed_in, uint32_t threshold,
                                       float scale, const float *x, float *y, uint8_t *mask) {
    const uint64_t seed = *seed_in; /* a per-step value, in device memory */
    GRID_STRIDE(i, count) {
        bool keep = mt_dropout_keep(seed, (uint64_t)i, threshold);
        mask[i] = keep ? 1 : 0;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
}

__global__ void dropout_backward_kernel(size_t count, float scale, const uint8_t *mask,
                                        const float *dy, float *dx) {
    GRID_STRIDE(i, count) dx[i] = mask[i] ? dy[i] * scale : 0.0f;
}

__global__ void broadcast_rows_kernel(int rows, int cols, const float *b, float *y) {
    const size_t count = (size_t)rows * cols;
    GRID_STRIDE(i, count) y[i] = b[i % cols];
}

__global__ void column_sums_kernel(int rows, int cols, const float *a, float *sums) {
    GRID_STRIDE(j, (size_t)cols) {
        double s = 0.0;
        for (int r = 0; r < rows; r++)
            s += a[(size_t)r * cols + j];
        sums[j] = (float)s;
    }
}

/* ---- the input: uint8 pixels to x/127.5 - 1 (ops.h mt_u8_to_input, a host function: the same
 * two operations here, division and subtraction, which nvcc does not fuse), each image mirrored
 * left to right where its flip flag is set (ops.h input_convert) ----------------------------- */

template <class S>
__global__ void input_convert_kernel(size_t count, int height, int width, const uint8_t *src,
                                     const uint8_t *flips, typename S::elem *dst) {
    const size_t row = (size_t)width * 3, image = row * (size_t)height;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t from = i;
        if (flips[i / image]) {
            const size_t in_row = i % row, x = in_row / 3, c = in_row % 3;
            from = i - in_row + ((size_t)width - 1 - x) * 3 + c;
        }
        float x = (float)src[from];
        x /= 127.5f;
        x -= 1.0f;
        dst[i] = S::store(x);
    }
}

/* ---- losses: one block; rows are few (a batch), classes few (a head) ---------------------- */

/* result (accum NULL): the mean, the valid rows, the first bad label's row. accum (not NULL):
 * loss_accumulate's bookkeeping (ops.h, the same as ops/loss_accum.h's on the host) instead, a
 * bad label counting as a padding row (the host checked them), and no result. */
__global__ void loss_kernel(int N, int K, const float *logits, const int32_t *labels,
                            float *dlogits, double *result, double *accum, const uint64_t *step,
                            float *skip) {
    __shared__ int valid, bad, correct;
    __shared__ double totals[THREADS];
    if (threadIdx.x == 0) valid = 0, bad = N, correct = 0;
    __syncthreads();
    const int limit = mt_loss_label_limit(K);
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        int t = labels[n];
        if (t >= limit || t < -1) atomicMin(&bad, n);
        if (t >= 0 && t < limit) {
            atomicAdd(&valid, 1);
            if (accum && mt_accum_predicted(logits + (size_t)n * K, K) == t) atomicAdd(&correct, 1);
        }
    }
    __syncthreads();
    const double inv_valid = valid > 0 ? 1.0 / valid : 0.0;
    double total = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const int t = labels[n];
        /* the reference's per-row formula (ops/loss_row.h); a bad label is a padding row here */
        total += mt_loss_row(logits + (size_t)n * K, K, t < limit ? t : -1, inv_valid,
                             dlogits ? dlogits + (size_t)n * K : NULL);
    }
    totals[threadIdx.x] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int i = 0; i < (int)blockDim.x; i++)
            s += totals[i];
        if (!accum) {
            result[0] = s * inv_valid;
            result[1] = valid;
            result[2] = bad < N ? bad : -1;
        } else {
            const float mean = (float)(s * inv_valid); /* the host backends' rounding */
            if (!isfinite(mean)) {
                if (accum[MT_ACCUM_SKIPPED] == 0.0) accum[MT_ACCUM_FIRST_SKIP] = (double)*step;
                accum[MT_ACCUM_SKIPPED] += 1.0;
                *skip = 1.0f;
            } else {
                accum[MT_ACCUM_LOSS_SUM] += (double)mean * valid;
                accum[MT_ACCUM_CORRECT] += correct;
                accum[MT_ACCUM_VALID] += valid;
                *skip = 0.0f;
            }
        }
    }
}

} // namespace

extern "C" {

cudaError_t mt_cuda_launch_add(cudaStream_t stream, mt_cuda_storage storage, size_t count,
                               const void *a, const void *b, void *y) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        if (count % 4 == 0 && vec_aligned<S>(a) && vec_aligned<S>(b) && vec_aligned<S>(y))
            add_kernel<S, 4><<<grid_for(count / 4), THREADS, 0, stream>>>(
                count / 4, as_elem<S>(a), as_elem<S>(b), as_elem<S>(y));
        else
            add_kernel<S, 1><<<grid_for(count), THREADS, 0, stream>>>(count, as_elem<S>(a),
                                                                      as_elem<S>(b), as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_relu6_forward(cudaStream_t stream, mt_cuda_storage storage, size_t count,
                                         const void *x, void *y) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        if (count % 4 == 0 && vec_aligned<S>(x) && vec_aligned<S>(y))
            relu6_forward_kernel<S, 4><<<grid_for(count / 4), THREADS, 0, stream>>>(
                count / 4, as_elem<S>(x), as_elem<S>(y));
        else
            relu6_forward_kernel<S, 1>
                <<<grid_for(count), THREADS, 0, stream>>>(count, as_elem<S>(x), as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_relu6_backward(cudaStream_t stream, mt_cuda_storage storage,
                                          size_t count, const void *y, const void *dy, void *dx) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        if (count % 4 == 0 && vec_aligned<S>(y) && vec_aligned<S>(dy) && vec_aligned<S>(dx))
            relu6_backward_kernel<S, 4><<<grid_for(count / 4), THREADS, 0, stream>>>(
                count / 4, as_elem<S>(y), as_elem<S>(dy), as_elem<S>(dx));
        else
            relu6_backward_kernel<S, 1><<<grid_for(count), THREADS, 0, stream>>>(
                count, as_elem<S>(y), as_elem<S>(dy), as_elem<S>(dx));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_zero_pad_forward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                            int h, int w, int c, int ho, int wo, int top, int left,
                                            const void *x, void *y) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        zero_pad_forward_kernel<S><<<grid_for((size_t)n * ho * wo * c), THREADS, 0, stream>>>(
            n, h, w, c, ho, wo, top, left, as_elem<S>(x), as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_zero_pad_backward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                             int h, int w, int c, int ho, int wo, int top, int left,
                                             const void *dy, void *dx) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        zero_pad_backward_kernel<S><<<grid_for((size_t)n * h * w * c), THREADS, 0, stream>>>(
            n, h, w, c, ho, wo, top, left, as_elem<S>(dy), as_elem<S>(dx));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_avg_pool_forward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                            long hw, int c, const void *x, float *y) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        avg_pool_forward_kernel<S>
            <<<grid_for((size_t)n * c), THREADS, 0, stream>>>(n, hw, c, as_elem<S>(x), y);
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_avg_pool_backward(cudaStream_t stream, mt_cuda_storage storage, int n,
                                             long hw, int c, const float *dy, void *dx) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        avg_pool_backward_kernel<S>
            <<<grid_for((size_t)n * hw * c), THREADS, 0, stream>>>(n, hw, c, dy, as_elem<S>(dx));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_dropout_forward(cudaStream_t stream, size_t count, const uint64_t *seed,
                                           uint32_t threshold, float scale, const float *x,
                                           float *y, uint8_t *mask) {
    dropout_forward_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, seed, threshold, scale,
                                                                    x, y, mask);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_dropout_backward(cudaStream_t stream, size_t count, float scale,
                                            const uint8_t *mask, const float *dy, float *dx) {
    dropout_backward_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, scale, mask, dy, dx);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_broadcast_rows(cudaStream_t stream, int rows, int cols, const float *b,
                                          float *y) {
    broadcast_rows_kernel<<<grid_for((size_t)rows * cols), THREADS, 0, stream>>>(rows, cols, b, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_column_sums(cudaStream_t stream, int rows, int cols, const float *a,
                                       float *sums) {
    column_sums_kernel<<<grid_for((size_t)cols), THREADS, 0, stream>>>(rows, cols, a, sums);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_loss(cudaStream_t stream, int batch, int classes, const float *logits,
                                const int32_t *labels, float *dlogits, double *result) {
    loss_kernel<<<1, THREADS, 0, stream>>>(batch, classes, logits, labels, dlogits, result, NULL,
                                           NULL, NULL);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_input_convert(cudaStream_t stream, mt_cuda_storage storage, int n,
                                         int height, int width, const uint8_t *src,
                                         const uint8_t *flips, void *dst) {
    const size_t count = (size_t)n * (size_t)height * (size_t)width * 3;
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        input_convert_kernel<S><<<grid_for(count), THREADS, 0, stream>>>(count, height, width, src,
                                                                         flips, as_elem<S>(dst));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_loss_accumulate(cudaStream_t stream, int batch, int classes,
                                           const float *logits, const int32_t *labels,
                                           float *dlogits, const uint64_t *step, double *accum,
                                           float *skip) {
    loss_kernel<<<1, THREADS, 0, stream>>>(batch, classes, logits, labels, dlogits, NULL, accum,
                                           step, skip);
    return cudaGetLastError();
}

} // extern "C"

/* ---- precision casts ---- */

extern "C" {

cudaError_t mt_cuda_launch_cast_from_f32(cudaStream_t stream, size_t count, int format,
                                         const float *x, uint16_t *y) {
    cast_from_f32_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, format, x, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_cast_to_f32(cudaStream_t stream, size_t count, int format,
                                       const uint16_t *x, float *y) {
    cast_to_f32_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, format, x, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_round_f32(cudaStream_t stream, size_t count, int format, const float *x,
                                     float *y) {
    round_f32_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, format, x, y);
    return cudaGetLastError();
}

} // extern "C"
