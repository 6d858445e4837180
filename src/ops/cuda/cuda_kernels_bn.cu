/* mobiletune's own CUDA kernels, batch normalization (launchers in cuda_kernels.h): the fused
 * fp32 kernels (the default: statistics in one launch, normalize with the optional ReLU6 in one,
 * float4 loads), which also read and write 16-bit tensors (statistics in fp32 all the same; the
 * storage template of cuda_kernels_internal.cuh), the first double-precision ones are in
 * cuda_kernels_bn_legacy.cu. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_kernels_internal.cuh"

namespace {

/* ---- batch normalization, fp32 and fused (the default; MT_CUDA_BN=legacy runs
 * cuda_kernels_bn_legacy.cu) ----
 *
 * Layout: a row is one position's C channels, split into G = C/V groups of V consecutive
 * channels (V = 4: one float4, when C % 4 == 0 and the pointers are 16-byte aligned; else V = 1).
 * Block (lanes, rows): threadIdx.x picks a group, so a warp reads consecutive groups of one row
 * (or of neighbouring rows, which are contiguous too), and threadIdx.y the row within the block's
 * stride: every index is row * C + group * V, no per-element division. Grid (cols, parts): cols
 * blocks side by side cover the groups, parts slices of the M rows.
 *
 * Statistics without double per element: each thread sums its rows (at most BN_ROWS_PER_THREAD of
 * them in one slice) in fp32, the block adds its rows' sums in fp32 in a fixed order, and the
 * last block of each column to finish (a ticket from an atomic counter, the usual threadfence
 * reduction) adds the per-slice partials in double, in slice order, and writes the per-channel
 * results: one launch for the statistics, results independent of scheduling. The forward sums
 * are shifted by k = the channel's value in row 0 (sum(x-k), sum((x-k)^2)), so the variance
 * S2/M - (S1/M)^2 does not cancel catastrophically when |mean| >> std (see the error bound in
 * tests/gpu/test_gpu_kernels_emulated.c). */

/* Adds this thread's V pairs (a, b) over the block's rows (threadIdx.y) in fixed order into the
 * partials of slice blockIdx.y ([part][C][2]), then takes a ticket: true in the one block of this
 * column that finishes last, whose threads then see every slice's partials. */
template <int V>
__device__ bool bn_block_partials(int C, int c0, bool active, const float *a, const float *b,
                                  float *partials, unsigned *counters) {
    __shared__ float sa[BN_THREADS * BN_MAX_V], sb[BN_THREADS * BN_MAX_V];
    __shared__ bool last;
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    for (int v = 0; v < V; v++)
        sa[t * V + v] = a[v], sb[t * V + v] = b[v];
    __syncthreads();
    if (threadIdx.y == 0 && active) {
        for (int v = 0; v < V; v++) {
            float ta = 0.0f, tb = 0.0f;
            for (unsigned r = 0; r < blockDim.y; r++) {
                ta += sa[(r * blockDim.x + threadIdx.x) * V + v];
                tb += sb[(r * blockDim.x + threadIdx.x) * V + v];
            }
            partials[((size_t)blockIdx.y * C + c0 + v) * 2] = ta;
            partials[((size_t)blockIdx.y * C + c0 + v) * 2 + 1] = tb;
        }
        __threadfence(); /* the partials reach memory before the ticket says so */
    }
    __syncthreads();
    if (t == 0) last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    return last;
}

/* In the last block: the totals over all slices of this thread's V channels, in double, slice
 * order fixed (threads take slices y, y + rows, ...; then rows are added in order). Valid in the
 * threadIdx.y == 0 threads; resets the column's counter for the next launch. */
template <int V>
__device__ void bn_block_totals(int C, int c0, bool active, const float *partials,
                                unsigned *counters, double *ta, double *tb) {
    __shared__ double da[BN_THREADS * BN_MAX_V], db[BN_THREADS * BN_MAX_V];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    for (int v = 0; v < V; v++) {
        double a = 0.0, b = 0.0;
        if (active)
            for (unsigned p = threadIdx.y; p < gridDim.y; p += blockDim.y) {
                a += __ldcg(&partials[((size_t)p * C + c0 + v) * 2]);
                b += __ldcg(&partials[((size_t)p * C + c0 + v) * 2 + 1]);
            }
        da[t * V + v] = a, db[t * V + v] = b;
    }
    __syncthreads();
    if (threadIdx.y == 0)
        for (int v = 0; v < V; v++) {
            double a = 0.0, b = 0.0;
            for (unsigned r = 0; r < blockDim.y; r++)
                a += da[(r * blockDim.x + threadIdx.x) * V + v],
                    b += db[(r * blockDim.x + threadIdx.x) * V + v];
            ta[v] = a, tb[v] = b;
        }
    if (t == 0) counters[blockIdx.x] = 0;
}

/* Forward statistics: the batch mean and biased variance of each channel -> saved_mean,
 * saved_inv_std and Keras' moving update, in one launch. */
template <class S, int V>
__global__ void bn_fused_stats_kernel(long m, int C, long rows_per_block, float epsilon,
                                      float momentum, const typename S::elem *x, float *moving_mean,
                                      float *moving_variance, float *saved_mean,
                                      float *saved_inv_std, float *partials, unsigned *counters) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x, c0 = g * V;
    const bool active = c0 < C;
    float k[V], s1[V], s2[V], v[V];
    for (int i = 0; i < V; i++)
        k[i] = 0.0f, s1[i] = 0.0f, s2[i] = 0.0f;
    if (active) {
        vec_io<S, V>::load(x + c0, k);
        const long begin = (long)blockIdx.y * rows_per_block;
        const long end = begin + rows_per_block < m ? begin + rows_per_block : m;
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            vec_io<S, V>::load(x + (size_t)r * C + c0, v);
            for (int i = 0; i < V; i++) {
                float d = v[i] - k[i];
                s1[i] += d;
                s2[i] = fmaf(d, d, s2[i]);
            }
        }
    }
    if (!bn_block_partials<V>(C, c0, active, s1, s2, partials, counters)) return;
    double t1[V], t2[V];
    bn_block_totals<V>(C, c0, active, partials, counters, t1, t2);
    if (threadIdx.y != 0 || !active) return;
    const double mom = momentum;
    for (int i = 0; i < V; i++) {
        const int c = c0 + i;
        const double shifted = t1[i] / (double)m;
        double var = t2[i] / (double)m - shifted * shifted;
        if (var < 0.0) var = 0.0; /* rounding of a constant channel */
        const double mean = (double)k[i] + shifted;
        saved_mean[c] = (float)mean;
        saved_inv_std[c] = (float)(1.0 / sqrt(var + (double)epsilon));
        moving_mean[c] = (float)(moving_mean[c] * mom + mean * (1.0 - mom));
        moving_variance[c] = (float)(moving_variance[c] * mom + var * (1.0 - mom));
    }
}

/* y = gamma * (x - mean) * inv_std + beta (then ReLU6 when relu6), per channel. Statistics:
 * training, the saved mean and inverse std; inference (second = moving variance), the moving
 * ones, the inverse std computed here. Coefficients per thread, once; rows grid-stride. y may
 * alias x. */
template <class S, int V>
__global__ void bn_fused_apply_kernel(long m, int C, int inference, int relu6, float epsilon,
                                      const typename S::elem *x, const float *gamma,
                                      const float *beta, const float *mean, const float *second,
                                      typename S::elem *y) {
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c0 >= C) return;
    float mu[V], scale[V], shift[V], v[V];
    for (int i = 0; i < V; i++) {
        const int c = c0 + i;
        const float istd = inference ? 1.0f / sqrtf(second[c] + epsilon) : second[c];
        mu[i] = mean[c], scale[i] = gamma[c] * istd, shift[i] = beta[c];
    }
    for (long r = (long)blockIdx.y * blockDim.y + threadIdx.y; r < m;
         r += (long)gridDim.y * blockDim.y) {
        vec_io<S, V>::load(x + (size_t)r * C + c0, v);
        for (int i = 0; i < V; i++) {
            float t = fmaf(v[i] - mu[i], scale[i], shift[i]);
            v[i] = relu6 ? fminf(fmaxf(t, 0.0f), 6.0f) : t;
        }
        vec_io<S, V>::store(y + (size_t)r * C + c0, v);
    }
}

/* Backward, statistics: with g = dy, masked to 0 where ReLU6's output y is at a bound when y is
 * given (the fused ReLU6's backward), the sums of g and g * (x - mean) -> dgamma, dbeta (each
 * may be NULL) and, in training, coef [3][C] of dx = coef0 * g + coef1 * (x - mean) + coef2.
 * Training: mean, second = the saved mean and inverse std; inference: the moving mean and
 * variance (the statistics are constants: no coef, dx is gamma * inv_std * g). */
template <class S, int V>
__global__ void bn_fused_grad_kernel(long m, int C, long rows_per_block, int inference,
                                     float epsilon, const typename S::elem *x,
                                     const typename S::elem *y, const typename S::elem *dy,
                                     const float *gamma, const float *mean, const float *second,
                                     float *dgamma, float *dbeta, float *coef, float *partials,
                                     unsigned *counters) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x, c0 = g * V;
    const bool active = c0 < C;
    float mu[V], sg[V], sgx[V], xv[V], gv[V], yv[V];
    for (int i = 0; i < V; i++)
        mu[i] = 0.0f, sg[i] = 0.0f, sgx[i] = 0.0f, yv[i] = 1.0f;
    if (active) {
        for (int i = 0; i < V; i++)
            mu[i] = mean[c0 + i];
        const long begin = (long)blockIdx.y * rows_per_block;
        const long end = begin + rows_per_block < m ? begin + rows_per_block : m;
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            const size_t at = (size_t)r * C + c0;
            vec_io<S, V>::load(x + at, xv);
            vec_io<S, V>::load(dy + at, gv);
            if (y) vec_io<S, V>::load(y + at, yv);
            for (int i = 0; i < V; i++) {
                float d = yv[i] > 0.0f && yv[i] < 6.0f ? gv[i] : 0.0f;
                sg[i] += d;
                sgx[i] = fmaf(d, xv[i] - mu[i], sgx[i]);
            }
        }
    }
    if (!bn_block_partials<V>(C, c0, active, sg, sgx, partials, counters)) return;
    double tg[V], tgx[V];
    bn_block_totals<V>(C, c0, active, partials, counters, tg, tgx);
    if (threadIdx.y != 0 || !active) return;
    for (int i = 0; i < V; i++) {
        const int c = c0 + i;
        const double istd =
            inference ? 1.0 / sqrt((double)second[c] + (double)epsilon) : (double)second[c];
        if (dbeta) dbeta[c] = (float)tg[i];
        if (dgamma) dgamma[c] = (float)(tgx[i] * istd);
        if (inference) continue;
        const double k1 = (double)gamma[c] * istd;
        coef[c] = (float)k1;
        coef[C + c] = (float)(-k1 * istd * istd * tgx[i] / (double)m);
        coef[2 * C + c] = (float)(-k1 * tg[i] / (double)m);
    }
}

/* dx = coef0 * g + coef1 * (x - mean) + coef2, g = dy masked as above (training), or
 * dx = gamma * inv_std * dy with inv_std from the moving variance (inference: x unread); dx may
 * alias dy */
template <class S, int V>
__global__ void bn_fused_dx_kernel(long m, int C, int inference, float epsilon,
                                   const typename S::elem *x, const typename S::elem *y,
                                   const typename S::elem *dy, const float *gamma,
                                   const float *mean, const float *second, const float *coef,
                                   typename S::elem *dx) {
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c0 >= C) return;
    float mu[V], k1[V], k2[V], k3[V], xv[V], gv[V], yv[V];
    for (int i = 0; i < V; i++) {
        const int c = c0 + i;
        if (inference)
            mu[i] = 0.0f, k1[i] = gamma[c] / sqrtf(second[c] + epsilon), k2[i] = k3[i] = 0.0f;
        else
            mu[i] = mean[c], k1[i] = coef[c], k2[i] = coef[C + c], k3[i] = coef[2 * C + c];
        yv[i] = 1.0f, xv[i] = 0.0f;
    }
    for (long r = (long)blockIdx.y * blockDim.y + threadIdx.y; r < m;
         r += (long)gridDim.y * blockDim.y) {
        const size_t at = (size_t)r * C + c0;
        if (!inference) vec_io<S, V>::load(x + at, xv);
        vec_io<S, V>::load(dy + at, gv);
        if (y) vec_io<S, V>::load(y + at, yv);
        for (int i = 0; i < V; i++) {
            float d = yv[i] > 0.0f && yv[i] < 6.0f ? gv[i] : 0.0f;
            gv[i] = fmaf(k1[i], d, fmaf(k2[i], xv[i] - mu[i], k3[i]));
        }
        vec_io<S, V>::store(dx + at, gv);
    }
}

/* The block and grid of the fused BN kernels for C channels (see the kernels' comment). */
struct bn_plan {
    int vec;
    dim3 block, grid; /* grid.y: slices of the statistics */
    long rows_per_block;
    dim3 apply_grid; /* elementwise passes: rows grid-stride */
};

bn_plan bn_make_plan(long m, int c, bool vectorizable) {
    bn_plan p;
    p.vec = vectorizable && c % 4 == 0 ? 4 : 1;
    const int groups = c / p.vec;
    const int cols = (groups + BN_THREADS - 1) / BN_THREADS;
    const int lanes = (groups + cols - 1) / cols;
    const int rows = BN_THREADS / lanes > 0 ? BN_THREADS / lanes : 1;
    long per_thread = BN_ROWS_PER_THREAD;
    long parts = (m + rows * per_thread - 1) / (rows * per_thread);
    if (parts > 65535) { /* the grid's y limit: longer slices instead */
        per_thread = (m + (long)rows * 65535 - 1) / ((long)rows * 65535);
        parts = (m + rows * per_thread - 1) / (rows * per_thread);
    }
    p.block = dim3((unsigned)lanes, (unsigned)rows);
    p.rows_per_block = rows * per_thread;
    p.grid = dim3((unsigned)cols, (unsigned)parts);
    long apply_rows = (m + rows * 4 - 1) / (rows * 4); /* about 4 rows per thread */
    p.apply_grid = dim3((unsigned)cols, (unsigned)(apply_rows > 65535 ? 65535 : apply_rows));
    return p;
}

} // namespace

extern "C" {

size_t mt_cuda_bn_fused_scratch_floats(long m, int c) {
    const bn_plan scalar = bn_make_plan(m, c, false), vector = bn_make_plan(m, c, true);
    const size_t parts = scalar.grid.y > vector.grid.y ? scalar.grid.y : vector.grid.y;
    return parts * c * 2 + (size_t)3 * c;
}

int mt_cuda_bn_fused_counters(int c) {
    return (c + BN_THREADS - 1) / BN_THREADS;
}

cudaError_t mt_cuda_launch_bn_fused_forward_training(cudaStream_t stream, mt_cuda_storage storage,
                                                     long m, int c, float epsilon, float momentum,
                                                     int relu6, const void *x, const float *gamma,
                                                     const float *beta, float *moving_mean,
                                                     float *moving_variance, void *y,
                                                     float *saved_mean, float *saved_inv_std,
                                                     float *scratch, unsigned *counters) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const bn_plan p = bn_make_plan(m, c, vec_aligned<S>(x) && vec_aligned<S>(y));
        auto stats = p.vec == 4 ? bn_fused_stats_kernel<S, 4> : bn_fused_stats_kernel<S, 1>;
        auto apply = p.vec == 4 ? bn_fused_apply_kernel<S, 4> : bn_fused_apply_kernel<S, 1>;
        stats<<<p.grid, p.block, 0, stream>>>(m, c, p.rows_per_block, epsilon, momentum,
                                              as_elem<S>(x), moving_mean, moving_variance,
                                              saved_mean, saved_inv_std, scratch, counters);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        apply<<<p.apply_grid, p.block, 0, stream>>>(m, c, 0, relu6, epsilon, as_elem<S>(x), gamma,
                                                    beta, saved_mean, saved_inv_std, as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_bn_fused_forward_inference(cudaStream_t stream, mt_cuda_storage storage,
                                                      long m, int c, float epsilon, const void *x,
                                                      const float *gamma, const float *beta,
                                                      const float *moving_mean,
                                                      const float *moving_variance, void *y) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const bn_plan p = bn_make_plan(m, c, vec_aligned<S>(x) && vec_aligned<S>(y));
        auto apply = p.vec == 4 ? bn_fused_apply_kernel<S, 4> : bn_fused_apply_kernel<S, 1>;
        apply<<<p.apply_grid, p.block, 0, stream>>>(m, c, 1, 0, epsilon, as_elem<S>(x), gamma, beta,
                                                    moving_mean, moving_variance, as_elem<S>(y));
        return cudaGetLastError();
    });
}

cudaError_t mt_cuda_launch_bn_fused_backward(cudaStream_t stream, mt_cuda_storage storage, long m,
                                             int c, float epsilon, int training, const void *x,
                                             const void *y, const void *dy, const float *gamma,
                                             const float *stat_mean, const float *stat_second,
                                             void *dx, float *dgamma, float *dbeta, float *scratch,
                                             unsigned *counters) {
    return with_storage(storage, [&](auto st) {
        typedef decltype(st) S;
        const bool vectorizable =
            vec_aligned<S>(x) && vec_aligned<S>(dy) && vec_aligned<S>(dx) && vec_aligned<S>(y);
        const bn_plan p = bn_make_plan(m, c, vectorizable);
        const int inference = !training;
        float *coef = scratch + (size_t)p.grid.y * c * 2;
        auto grad = p.vec == 4 ? bn_fused_grad_kernel<S, 4> : bn_fused_grad_kernel<S, 1>;
        auto dxk = p.vec == 4 ? bn_fused_dx_kernel<S, 4> : bn_fused_dx_kernel<S, 1>;
        if (training || dgamma || dbeta) {
            grad<<<p.grid, p.block, 0, stream>>>(m, c, p.rows_per_block, inference, epsilon,
                                                 as_elem<S>(x), as_elem<S>(y), as_elem<S>(dy),
                                                 gamma, stat_mean, stat_second, dgamma, dbeta, coef,
                                                 scratch, counters);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        if (dx)
            dxk<<<p.apply_grid, p.block, 0, stream>>>(m, c, inference, epsilon, as_elem<S>(x),
                                                      as_elem<S>(y), as_elem<S>(dy), gamma,
                                                      stat_mean, stat_second, coef, as_elem<S>(dx));
        return cudaGetLastError();
    });
}

} // extern "C"
