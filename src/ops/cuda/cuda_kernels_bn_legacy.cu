/* mobiletune's own CUDA kernels, the first batch normalization (launchers in cuda_kernels.h),
 * kept as MT_CUDA_BN=legacy to bypass the fused kernels of cuda_kernels_bn.cu quickly on a GPU:
 * two passes of per-channel sums in double (mean, then the variance around it), 5 launches
 * forward and 4 backward, fp32 tensors only. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_kernels_internal.cuh"

namespace {

enum bn_sum { BN_SUM_X, BN_SUM_SQDEV, BN_SUM_GRAD };

/* Per-channel partial sums over this block's slice of the M rows. Block 32 channels x 8 rows,
 * grid (C/32, parts). partials: [part][C][2]:
 *   BN_SUM_X:     x
 *   BN_SUM_SQDEV: (x - mean)^2
 *   BN_SUM_GRAD:  dy, and dy * (x - mean) * istd */
__global__ void bn_sums_kernel(long m, int C, int mode, const float *x, const float *dy,
                               const double *mean, const double *istd, double *partials) {
    const int c = blockIdx.x * RED_X + threadIdx.x;
    const long per = (m + gridDim.y - 1) / gridDim.y;
    const long begin = (long)blockIdx.y * per;
    const long end = begin + per < m ? begin + per : m;
    double a = 0.0, b = 0.0;
    if (c < C) {
        const double mu = mode == BN_SUM_X ? 0.0 : mean[c];
        const double is = mode == BN_SUM_GRAD ? istd[c] : 0.0;
        for (long r = begin + threadIdx.y; r < end; r += RED_Y) {
            double v = x[(size_t)r * C + c];
            if (mode == BN_SUM_X) {
                a += v;
            } else if (mode == BN_SUM_SQDEV) {
                a += (v - mu) * (v - mu);
            } else {
                double d = dy[(size_t)r * C + c];
                a += d;
                b += d * (v - mu) * is;
            }
        }
    }
    __shared__ double sa[RED_Y][RED_X], sb[RED_Y][RED_X];
    sa[threadIdx.y][threadIdx.x] = a;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int r = 1; r < RED_Y; r++)
            a += sa[r][threadIdx.x], b += sb[r][threadIdx.x];
        partials[((size_t)blockIdx.y * C + c) * 2] = a;
        partials[((size_t)blockIdx.y * C + c) * 2 + 1] = b;
    }
}

/* sums of the two partial columns of channel c, in part order */
__device__ void bn_total(const double *partials, int parts, int C, int c, double *a, double *b) {
    double sa = 0.0, sb = 0.0;
    for (int p = 0; p < parts; p++) {
        sa += partials[((size_t)p * C + c) * 2];
        sb += partials[((size_t)p * C + c) * 2 + 1];
    }
    *a = sa, *b = sb;
}

__global__ void bn_mean_kernel(long m, int C, int parts, const double *partials, double *mean) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s, unused;
    bn_total(partials, parts, C, c, &s, &unused);
    mean[c] = s / (double)m;
}

/* biased variance, saved statistics, Keras' moving update, and the coefficients of y */
__global__ void bn_variance_kernel(long m, int C, int parts, float epsilon, float momentum,
                                   const double *partials, const double *mean, const float *gamma,
                                   const float *beta, float *moving_mean, float *moving_variance,
                                   float *saved_mean, float *saved_inv_std, double *coef) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sq, unused;
    bn_total(partials, parts, C, c, &sq, &unused);
    const double var = sq / (double)m, mu = mean[c];
    const double inv_std = 1.0 / sqrt(var + (double)epsilon), mom = momentum;
    saved_mean[c] = (float)mu;
    saved_inv_std[c] = (float)inv_std;
    moving_mean[c] = (float)(moving_mean[c] * mom + mu * (1.0 - mom));
    moving_variance[c] = (float)(moving_variance[c] * mom + var * (1.0 - mom));
    coef[c] = mu;
    coef[C + c] = gamma[c] * inv_std;
    coef[2 * C + c] = beta[c];
}

/* coefficients of inference: mean = moving mean, scale = gamma * inv_std, shift = beta; and, for
 * backward, the statistics in double */
__global__ void bn_inference_coef_kernel(int C, float epsilon, const float *gamma,
                                         const float *beta, const float *moving_mean,
                                         const float *moving_variance, double *coef, double *mean,
                                         double *istd) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const double inv_std = 1.0 / sqrt((double)moving_variance[c] + (double)epsilon);
    coef[c] = moving_mean[c];
    coef[C + c] = gamma[c] * inv_std;
    coef[2 * C + c] = beta ? beta[c] : 0.0f;
    mean[c] = moving_mean[c];
    istd[c] = inv_std;
}

/* training backward: statistics from the saved mean and inverse std */
__global__ void bn_saved_stats_kernel(int C, const float *saved_mean, const float *saved_inv_std,
                                      double *mean, double *istd) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    mean[c] = saved_mean[c];
    istd[c] = saved_inv_std[c];
}

/* y = (x - coef[0]) * coef[1] + coef[2], per channel */
__global__ void bn_apply_kernel(size_t count, int C, const float *x, const double *coef, float *y) {
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        y[i] = (float)(((double)x[i] - coef[c]) * coef[C + c] + coef[2 * C + c]);
    }
}

/* dgamma, dbeta and the coefficients of dx: grad[c] = mean(dy), grad[C+c] = mean(dy * xhat) */
__global__ void bn_grad_kernel(long m, int C, int parts, const double *partials, float *dgamma,
                               float *dbeta, double *grad) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sum_dy, sum_dy_xhat;
    bn_total(partials, parts, C, c, &sum_dy, &sum_dy_xhat);
    if (dgamma) dgamma[c] = (float)sum_dy_xhat;
    if (dbeta) dbeta[c] = (float)sum_dy;
    grad[c] = sum_dy / (double)m;
    grad[C + c] = sum_dy_xhat / (double)m;
}

/* dx = gamma*istd * (dy - mean(dy) - xhat * mean(dy*xhat)); dx may alias dy */
__global__ void bn_dx_training_kernel(size_t count, int C, const float *x, const float *dy,
                                      const float *gamma, const double *mean, const double *istd,
                                      const double *grad, float *dx) {
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        double xhat = ((double)x[i] - mean[c]) * istd[c];
        dx[i] = (float)(gamma[c] * istd[c] * ((double)dy[i] - grad[c] - xhat * grad[C + c]));
    }
}

/* inference: the statistics are constants, dx = gamma*istd * dy; dx may alias dy */
__global__ void bn_dx_inference_kernel(size_t count, int C, const float *dy, const float *gamma,
                                       const double *istd, float *dx) {
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        dx[i] = (float)(gamma[c] * istd[c] * (double)dy[i]);
    }
}

} // namespace

extern "C" {

/* scratch layout: partials [parts][C][2], mean [C], istd [C], coef [3][C], grad [2][C] */
size_t mt_cuda_bn_scratch_doubles(long m, int c) {
    return (size_t)mt_cuda_reduce_parts(m) * c * 2 + (size_t)7 * c;
}

cudaError_t mt_cuda_launch_bn_forward_training(cudaStream_t stream, long m, int c, float epsilon,
                                               float momentum, const float *x, const float *gamma,
                                               const float *beta, float *moving_mean,
                                               float *moving_variance, float *y, float *saved_mean,
                                               float *saved_inv_std, double *scratch) {
    const int parts = mt_cuda_reduce_parts(m);
    double *partials = scratch, *mean = partials + (size_t)parts * c * 2, *coef = mean + 2 * c;
    const dim3 grid((unsigned)((c + RED_X - 1) / RED_X), (unsigned)parts), block(RED_X, RED_Y);
    const unsigned per_channel = (unsigned)((c + THREADS - 1) / THREADS);
    bn_sums_kernel<<<grid, block, 0, stream>>>(m, c, BN_SUM_X, x, NULL, NULL, NULL, partials);
    bn_mean_kernel<<<per_channel, THREADS, 0, stream>>>(m, c, parts, partials, mean);
    bn_sums_kernel<<<grid, block, 0, stream>>>(m, c, BN_SUM_SQDEV, x, NULL, mean, NULL, partials);
    bn_variance_kernel<<<per_channel, THREADS, 0, stream>>>(
        m, c, parts, epsilon, momentum, partials, mean, gamma, beta, moving_mean, moving_variance,
        saved_mean, saved_inv_std, coef);
    bn_apply_kernel<<<grid_for((size_t)m * c), THREADS, 0, stream>>>((size_t)m * c, c, x, coef, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_bn_forward_inference(cudaStream_t stream, long m, int c, float epsilon,
                                                const float *x, const float *gamma,
                                                const float *beta, const float *moving_mean,
                                                const float *moving_variance, float *y,
                                                double *scratch) {
    double *mean = scratch, *istd = mean + c, *coef = istd + c;
    bn_inference_coef_kernel<<<(unsigned)((c + THREADS - 1) / THREADS), THREADS, 0, stream>>>(
        c, epsilon, gamma, beta, moving_mean, moving_variance, coef, mean, istd);
    bn_apply_kernel<<<grid_for((size_t)m * c), THREADS, 0, stream>>>((size_t)m * c, c, x, coef, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_bn_backward(cudaStream_t stream, long m, int c, float epsilon,
                                       int training, const float *x, const float *dy,
                                       const float *gamma, const float *stat_mean,
                                       const float *stat_second, float *dx, float *dgamma,
                                       float *dbeta, double *scratch) {
    const int parts = mt_cuda_reduce_parts(m);
    double *partials = scratch, *mean = partials + (size_t)parts * c * 2, *istd = mean + c;
    double *coef = istd + c, *grad = coef + 3 * c;
    const dim3 grid((unsigned)((c + RED_X - 1) / RED_X), (unsigned)parts), block(RED_X, RED_Y);
    const unsigned per_channel = (unsigned)((c + THREADS - 1) / THREADS);
    const size_t count = (size_t)m * c;
    if (training)
        bn_saved_stats_kernel<<<per_channel, THREADS, 0, stream>>>(c, stat_mean, stat_second, mean,
                                                                   istd);
    else
        bn_inference_coef_kernel<<<per_channel, THREADS, 0, stream>>>(
            c, epsilon, gamma, NULL, stat_mean, stat_second, coef, mean, istd);
    if (dgamma || dbeta || training) {
        bn_sums_kernel<<<grid, block, 0, stream>>>(m, c, BN_SUM_GRAD, x, dy, mean, istd, partials);
        bn_grad_kernel<<<per_channel, THREADS, 0, stream>>>(m, c, parts, partials, dgamma, dbeta,
                                                            grad);
    }
    if (dx && training)
        bn_dx_training_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, c, x, dy, gamma, mean,
                                                                       istd, grad, dx);
    else if (dx)
        bn_dx_inference_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, c, dy, gamma, istd,
                                                                        dx);
    return cudaGetLastError();
}

} // extern "C"
