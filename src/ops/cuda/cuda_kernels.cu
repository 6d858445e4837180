/* mobiletune's own CUDA kernels (see cuda_kernels.h for the launchers' contracts): weight layout
 * transforms, depthwise and direct convolutions, elementwise ops, batch normalization, padding,
 * pooling, dropout, the dense layer's helpers and the losses. Plain fp32 with simple indexing:
 * each kernel is a loop over one output element per thread (grid-stride), or a two-stage
 * reduction (per-block partials, then a fixed-order sum in double) where a gradient or a
 * statistic sums over the batch. Kept lean on purpose: nvcc time is part of every CI build. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mobiletune/ops.h" /* MT_ACCUM_* */
#include "ops/cuda/cuda_kernels.h"
#include "ops/dropout_hash.h"
#include "ops/loss_row.h"
#include "ops/precision_bits.h"

/* loops unrolled by nvcc (so arrays they index stay in registers); nothing under the emulation */
#ifdef __CUDACC__
#define MT_UNROLL _Pragma("unroll")
#else
#define MT_UNROLL
#endif

namespace {

const int THREADS = 256;
/* reductions: 32 channels (one warp, coalesced in NHWC) x 8 rows per block */
const int RED_X = 32, RED_Y = 8;
/* the depthwise weight gradient accumulates this many taps per pass (3x3 in one) */
const int MAX_TAPS = 9;

unsigned grid_for(size_t count) {
    size_t blocks = (count + THREADS - 1) / THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > (size_t)1 << 20) blocks = (size_t)1 << 20; /* grid-stride loops do the rest */
    return (unsigned)blocks;
}

/* float4 loads and stores need 16-byte addresses */
bool aligned16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

#define GRID_STRIDE(i, count)                                                                      \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);                    \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- weight layouts ----------------------------------------------------------------------- */

__global__ void hwio_to_krsc_kernel(const float *src, float *dst, int rs, int cin, int cout) {
    const size_t count = (size_t)rs * cin * cout;
    GRID_STRIDE(j, count) {
        int ci = (int)(j % cin);
        size_t t = j / cin;
        int r = (int)(t % rs), k = (int)(t / rs);
        dst[j] = src[((size_t)r * cin + ci) * cout + k];
    }
}

__global__ void krsc_to_hwio_kernel(const float *src, float *dst, int rs, int cin, int cout) {
    const size_t count = (size_t)rs * cin * cout;
    GRID_STRIDE(j, count) {
        int co = (int)(j % cout);
        size_t t = j / cout;
        int ci = (int)(t % cin), r = (int)(t / cin);
        dst[j] = src[((size_t)co * rs + r) * cin + ci];
    }
}

/* ---- convolutions -------------------------------------------------------------------------- */

/* y: one thread per output element (n, oh, ow, c) */
__global__ void depthwise_forward_kernel(mt_cuda_conv_geom g, const float *x, const float *w,
                                         float *y) {
    const int C = g.cin;
    const size_t count = (size_t)g.n * g.ho * g.wo * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
        int ow = (int)(t % g.wo);
        t /= g.wo;
        int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        float acc = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            int ih = oh * g.stride + kh - g.pad_top;
            if (ih < 0 || ih >= g.h) continue;
            for (int kw = 0; kw < g.k; kw++) {
                int iw = ow * g.stride + kw - g.pad_left;
                if (iw < 0 || iw >= g.w) continue;
                acc += x[(((size_t)n * g.h + ih) * g.w + iw) * C + c] * w[(kh * g.k + kw) * C + c];
            }
        }
        y[i] = acc;
    }
}

/* The output position that tap kk maps input position i to, or -1. */
__device__ int output_index(int i, int pad, int kk, int stride, int out_size) {
    int t = i + pad - kk;
    if (t < 0 || t % stride != 0) return -1;
    t /= stride;
    return t < out_size ? t : -1;
}

/* dx: one thread per input element (n, ih, iw, c) */
__global__ void depthwise_backward_data_kernel(mt_cuda_conv_geom g, const float *dy, const float *w,
                                               float *dx) {
    const int C = g.cin;
    const size_t count = (size_t)g.n * g.h * g.w * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
        int iw = (int)(t % g.w);
        t /= g.w;
        int ih = (int)(t % g.h), n = (int)(t / g.h);
        float acc = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            int oh = output_index(ih, g.pad_top, kh, g.stride, g.ho);
            if (oh < 0) continue;
            for (int kw = 0; kw < g.k; kw++) {
                int ow = output_index(iw, g.pad_left, kw, g.stride, g.wo);
                if (ow < 0) continue;
                acc +=
                    dy[(((size_t)n * g.ho + oh) * g.wo + ow) * C + c] * w[(kh * g.k + kw) * C + c];
            }
        }
        dx[i] = acc;
    }
}

/* Partial weight gradients of taps [tap0, tap0+taps) over this block's slice of the N*Ho*Wo
 * output positions. Block: 32 channels x 8 positions; grid: (C/32, parts).
 * partials: [part][k*k][C] */
__global__ void depthwise_backward_weights_kernel(mt_cuda_conv_geom g, const float *x,
                                                  const float *dy, int tap0, int taps,
                                                  float *partials) {
    const int C = g.cin, kk = g.k * g.k;
    const int c = blockIdx.x * RED_X + threadIdx.x;
    const long positions = (long)g.n * g.ho * g.wo;
    const long per = (positions + gridDim.y - 1) / gridDim.y;
    const long begin = (long)blockIdx.y * per;
    const long end = begin + per < positions ? begin + per : positions;
    float acc[MAX_TAPS];
    for (int t = 0; t < MAX_TAPS; t++)
        acc[t] = 0.0f;
    if (c < C) {
        for (long p = begin + threadIdx.y; p < end; p += RED_Y) {
            int ow = (int)(p % g.wo);
            long t = p / g.wo;
            int oh = (int)(t % g.ho), n = (int)(t / g.ho);
            float d = dy[(size_t)p * C + c];
            for (int tt = 0; tt < taps; tt++) {
                int kh = (tap0 + tt) / g.k, kw = (tap0 + tt) % g.k;
                int ih = oh * g.stride + kh - g.pad_top, iw = ow * g.stride + kw - g.pad_left;
                if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                acc[tt] += d * x[(((size_t)n * g.h + ih) * g.w + iw) * C + c];
            }
        }
    }
    __shared__ float part[RED_Y][RED_X];
    for (int tt = 0; tt < taps; tt++) {
        part[threadIdx.y][threadIdx.x] = acc[tt];
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            float s = 0.0f;
            for (int r = 0; r < RED_Y; r++)
                s += part[r][threadIdx.x];
            partials[((size_t)blockIdx.y * kk + tap0 + tt) * C + c] = s;
        }
        __syncthreads();
    }
}

/* out[j] = sum over parts of partials[part][j], in double, in part order */
__global__ void sum_parts_kernel(const float *partials, int parts, size_t count, float *out) {
    GRID_STRIDE(j, count) {
        double s = 0.0;
        for (int p = 0; p < parts; p++)
            s += partials[(size_t)p * count + j];
        out[j] = (float)s;
    }
}

/* y: one thread per output element (n, oh, ow, co); w: HWIO */
__global__ void direct_forward_kernel(mt_cuda_conv_geom g, const float *x, const float *w,
                                      float *y) {
    const size_t count = (size_t)g.n * g.ho * g.wo * g.cout;
    GRID_STRIDE(i, count) {
        int co = (int)(i % g.cout);
        size_t t = i / g.cout;
        int ow = (int)(t % g.wo);
        t /= g.wo;
        int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        float acc = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            int ih = oh * g.stride + kh - g.pad_top;
            if (ih < 0 || ih >= g.h) continue;
            for (int kw = 0; kw < g.k; kw++) {
                int iw = ow * g.stride + kw - g.pad_left;
                if (iw < 0 || iw >= g.w) continue;
                const float *xp = x + (((size_t)n * g.h + ih) * g.w + iw) * g.cin;
                const float *wp = w + (size_t)(kh * g.k + kw) * g.cin * g.cout + co;
                for (int ci = 0; ci < g.cin; ci++)
                    acc += xp[ci] * wp[(size_t)ci * g.cout];
            }
        }
        y[i] = acc;
    }
}

/* dx: one thread per input element (n, ih, iw, ci) */
__global__ void direct_backward_data_kernel(mt_cuda_conv_geom g, const float *dy, const float *w,
                                            float *dx) {
    const size_t count = (size_t)g.n * g.h * g.w * g.cin;
    GRID_STRIDE(i, count) {
        int ci = (int)(i % g.cin);
        size_t t = i / g.cin;
        int iw = (int)(t % g.w);
        t /= g.w;
        int ih = (int)(t % g.h), n = (int)(t / g.h);
        float acc = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            int oh = output_index(ih, g.pad_top, kh, g.stride, g.ho);
            if (oh < 0) continue;
            for (int kw = 0; kw < g.k; kw++) {
                int ow = output_index(iw, g.pad_left, kw, g.stride, g.wo);
                if (ow < 0) continue;
                const float *dyp = dy + (((size_t)n * g.ho + oh) * g.wo + ow) * g.cout;
                const float *wp = w + ((size_t)(kh * g.k + kw) * g.cin + ci) * g.cout;
                for (int co = 0; co < g.cout; co++)
                    acc += dyp[co] * wp[co];
            }
        }
        dx[i] = acc;
    }
}

/* Partial weight gradients: one thread per weight j = ((kh*k + kw)*cin + ci)*cout + co over this
 * block row's slice of positions. grid: (weights/256, parts); partials: [part][weights] */
__global__ void direct_backward_weights_kernel(mt_cuda_conv_geom g, const float *x, const float *dy,
                                               float *partials) {
    const size_t weights = (size_t)g.k * g.k * g.cin * g.cout;
    const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= weights) return;
    const int co = (int)(j % g.cout);
    const int ci = (int)((j / g.cout) % g.cin);
    const int tap = (int)(j / ((size_t)g.cout * g.cin));
    const int kh = tap / g.k, kw = tap % g.k;
    const long positions = (long)g.n * g.ho * g.wo;
    const long per = (positions + gridDim.y - 1) / gridDim.y;
    const long begin = (long)blockIdx.y * per;
    const long end = begin + per < positions ? begin + per : positions;
    float acc = 0.0f;
    for (long p = begin; p < end; p++) {
        int ow = (int)(p % g.wo);
        long t = p / g.wo;
        int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        int ih = oh * g.stride + kh - g.pad_top, iw = ow * g.stride + kw - g.pad_left;
        if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
        acc += x[(((size_t)n * g.h + ih) * g.w + iw) * g.cin + ci] * dy[(size_t)p * g.cout + co];
    }
    partials[(size_t)blockIdx.y * weights + j] = acc;
}

/* ---- elementwise --------------------------------------------------------------------------- */

__global__ void add_kernel(size_t count, const float *a, const float *b, float *y) {
    GRID_STRIDE(i, count) y[i] = a[i] + b[i];
}

__global__ void relu6_forward_kernel(size_t count, const float *x, float *y) {
    GRID_STRIDE(i, count) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v > 6.0f ? 6.0f : v;
    }
}

__global__ void relu6_backward_kernel(size_t count, const float *y, const float *dy, float *dx) {
    GRID_STRIDE(i, count) dx[i] = y[i] > 0.0f && y[i] < 6.0f ? dy[i] : 0.0f;
}

/* ---- batch normalization ------------------------------------------------------------------- */

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

/* ---- padding, pooling, dropout, dense helpers --------------------------------------------- */

__global__ void zero_pad_forward_kernel(int n, int h, int w, int C, int ho, int wo, int top,
                                        int left, const float *x, float *y) {
    const size_t count = (size_t)n * ho * wo * C;
    GRID_STRIDE(i, count) {
        int c = (int)(i % C);
        size_t t = i / C;
        int ow = (int)(t % wo);
        t /= wo;
        int oh = (int)(t % ho), b = (int)(t / ho);
        int ih = oh - top, iw = ow - left;
        y[i] = ih < 0 || ih >= h || iw < 0 || iw >= w ? 0.0f
                                                      : x[(((size_t)b * h + ih) * w + iw) * C + c];
    }
}

__global__ void zero_pad_backward_kernel(int n, int h, int w, int C, int ho, int wo, int top,
                                         int left, const float *dy, float *dx) {
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

/* one thread per (n, c): coalesced across c */
__global__ void avg_pool_forward_kernel(int n, long hw, int C, const float *x, float *y) {
    const size_t count = (size_t)n * C;
    GRID_STRIDE(i, count) {
        size_t b = i / C, c = i % C;
        double s = 0.0;
        for (long p = 0; p < hw; p++)
            s += x[(b * hw + p) * C + c];
        y[i] = (float)(s / (double)hw);
    }
}

__global__ void avg_pool_backward_kernel(int n, long hw, int C, const float *dy, float *dx) {
    const size_t count = (size_t)n * hw * C;
    GRID_STRIDE(i, count) {
        size_t c = i % C, b = i / ((size_t)hw * C);
        dx[i] = (float)((double)dy[b * C + c] / (double)hw);
    }
}

__global__ void dropout_forward_kernel(size_t count, uint64_t seed, uint32_t threshold, float scale,
                                       const float *x, float *y, uint8_t *mask) {
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

__global__ void input_convert_kernel(size_t count, int height, int width, const uint8_t *src,
                                     const uint8_t *flips, float *dst) {
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
        dst[i] = x;
    }
}

/* ---- losses: one block; rows are few (a batch), classes few (a head) ---------------------- */

/* result (accum NULL): the mean, the valid rows, the first bad label's row. accum (not NULL):
 * loss_accumulate's bookkeeping (ops.h, the same as ops/loss_accum.h's on the host) instead, a
 * bad label counting as a padding row (the host checked them), and no result. */
__global__ void loss_kernel(int N, int K, const float *logits, const int32_t *labels,
                            float *dlogits, double *result, double *accum, unsigned long long step,
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
            if (accum && mt_accum_predicted(logits + (size_t)n * K, K) == t)
                atomicAdd(&correct, 1);
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
                if (accum[MT_ACCUM_SKIPPED] == 0.0) accum[MT_ACCUM_FIRST_SKIP] = (double)step;
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

/* ---- batch normalization, fp32 and fused (the default; MT_CUDA_BN=legacy runs the above) ----
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

const int BN_THREADS = 256, BN_ROWS_PER_THREAD = 64, BN_MAX_V = 4;

template <int V> struct vec_io;
template <> struct vec_io<1> {
    __device__ static void load(const float *p, float *v) {
        v[0] = *p;
    }
    __device__ static void store(float *p, const float *v) {
        *p = v[0];
    }
};
template <> struct vec_io<4> {
    __device__ static void load(const float *p, float *v) {
        float4 t = *reinterpret_cast<const float4 *>(p);
        v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    }
    __device__ static void store(float *p, const float *v) {
        float4 t;
        t.x = v[0], t.y = v[1], t.z = v[2], t.w = v[3];
        *reinterpret_cast<float4 *>(p) = t;
    }
};

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
template <int V>
__global__ void bn_fused_stats_kernel(long m, int C, long rows_per_block, float epsilon,
                                      float momentum, const float *x, float *moving_mean,
                                      float *moving_variance, float *saved_mean,
                                      float *saved_inv_std, float *partials, unsigned *counters) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x, c0 = g * V;
    const bool active = c0 < C;
    float k[V], s1[V], s2[V], v[V];
    for (int i = 0; i < V; i++)
        k[i] = 0.0f, s1[i] = 0.0f, s2[i] = 0.0f;
    if (active) {
        vec_io<V>::load(x + c0, k);
        const long begin = (long)blockIdx.y * rows_per_block;
        const long end = begin + rows_per_block < m ? begin + rows_per_block : m;
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            vec_io<V>::load(x + (size_t)r * C + c0, v);
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
template <int V>
__global__ void bn_fused_apply_kernel(long m, int C, int inference, int relu6, float epsilon,
                                      const float *x, const float *gamma, const float *beta,
                                      const float *mean, const float *second, float *y) {
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
        vec_io<V>::load(x + (size_t)r * C + c0, v);
        for (int i = 0; i < V; i++) {
            float t = fmaf(v[i] - mu[i], scale[i], shift[i]);
            v[i] = relu6 ? fminf(fmaxf(t, 0.0f), 6.0f) : t;
        }
        vec_io<V>::store(y + (size_t)r * C + c0, v);
    }
}

/* Backward, statistics: with g = dy, masked to 0 where ReLU6's output y is at a bound when y is
 * given (the fused ReLU6's backward), the sums of g and g * (x - mean) -> dgamma, dbeta (each
 * may be NULL) and, in training, coef [3][C] of dx = coef0 * g + coef1 * (x - mean) + coef2.
 * Training: mean, second = the saved mean and inverse std; inference: the moving mean and
 * variance (the statistics are constants: no coef, dx is gamma * inv_std * g). */
template <int V>
__global__ void bn_fused_grad_kernel(long m, int C, long rows_per_block, int inference,
                                     float epsilon, const float *x, const float *y, const float *dy,
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
            vec_io<V>::load(x + at, xv);
            vec_io<V>::load(dy + at, gv);
            if (y) vec_io<V>::load(y + at, yv);
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
template <int V>
__global__ void bn_fused_dx_kernel(long m, int C, int inference, float epsilon, const float *x,
                                   const float *y, const float *dy, const float *gamma,
                                   const float *mean, const float *second, const float *coef,
                                   float *dx) {
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
        if (!inference) vec_io<V>::load(x + at, xv);
        vec_io<V>::load(dy + at, gv);
        if (y) vec_io<V>::load(y + at, yv);
        for (int i = 0; i < V; i++) {
            float d = yv[i] > 0.0f && yv[i] < 6.0f ? gv[i] : 0.0f;
            gv[i] = fmaf(k1[i], d, fmaf(k2[i], xv[i] - mu[i], k3[i]));
        }
        vec_io<V>::store(dx + at, gv);
    }
}

/* ---- depthwise, register-blocked (the default; MT_CUDA_DEPTHWISE_KERNEL=legacy runs the
 * one-output-per-thread kernels above) ----
 * A thread owns DW_TW consecutive positions along W of one row (n, h) and V channels (V = 4: one
 * float4, when C % 4 == 0 and the pointers are 16-byte aligned), with the DW_TW x V sums in
 * registers: the index arithmetic (64-bit) happens once per thread instead of once per output,
 * each weight vector is loaded once per tap for the whole strip, and loads are float4. Consecutive
 * threads take consecutive channel groups, so a warp reads whole 16-byte-aligned pixel segments.
 * S: the stride when 1 or 2 (the tap-to-output mapping of the backward then has no division),
 * else 0 (read from the geometry). */
const int DW_TW = 4;

/* y: N,Ho,Wo,C from x: N,H,W,C and w: [k][k][C] */
template <int V>
__global__ void depthwise_forward_strip_kernel(mt_cuda_conv_geom g, const float *x, const float *w,
                                               float *y) {
    const int C = g.cin, groups = C / V, strips = (g.wo + DW_TW - 1) / DW_TW;
    const size_t count = (size_t)g.n * g.ho * strips * groups;
    GRID_STRIDE(i, count) {
        const int c0 = (int)(i % groups) * V;
        size_t t = i / groups;
        const int ow0 = (int)(t % strips) * DW_TW;
        t /= strips;
        const int oh = (int)(t % g.ho), n = (int)(t / g.ho);
        float acc[DW_TW][V], xv[V], wv[V];
        for (int s = 0; s < DW_TW; s++)
            for (int v = 0; v < V; v++)
                acc[s][v] = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            const int ih = oh * g.stride + kh - g.pad_top;
            if (ih < 0 || ih >= g.h) continue;
            const float *row = x + ((size_t)n * g.h + ih) * g.w * C + c0;
            for (int kw = 0; kw < g.k; kw++) {
                vec_io<V>::load(w + (size_t)(kh * g.k + kw) * C + c0, wv);
                for (int s = 0; s < DW_TW; s++) {
                    const int iw = (ow0 + s) * g.stride + kw - g.pad_left;
                    if (ow0 + s >= g.wo || iw < 0 || iw >= g.w) continue;
                    vec_io<V>::load(row + (size_t)iw * C, xv);
                    for (int v = 0; v < V; v++)
                        acc[s][v] = fmaf(xv[v], wv[v], acc[s][v]);
                }
            }
        }
        float *out = y + (((size_t)n * g.ho + oh) * g.wo + ow0) * C + c0;
        for (int s = 0; s < DW_TW && ow0 + s < g.wo; s++)
            vec_io<V>::store(out + (size_t)s * C, acc[s]);
    }
}

/* The output position that tap kk maps input position i to, or -1; S > 0: the stride known at
 * compile time. */
template <int S> __device__ int strip_output_index(int i, int pad, int kk, int stride, int size) {
    int t = i + pad - kk;
    if (S == 1) return t >= 0 && t < size ? t : -1;
    if (S == 2) return t >= 0 && !(t & 1) && (t >> 1) < size ? t >> 1 : -1;
    return output_index(i, pad, kk, stride, size);
}

/* dx: N,H,W,C from dy: N,Ho,Wo,C and w: [k][k][C] */
template <int V, int S>
__global__ void depthwise_backward_data_strip_kernel(mt_cuda_conv_geom g, const float *dy,
                                                     const float *w, float *dx) {
    const int C = g.cin, groups = C / V, strips = (g.w + DW_TW - 1) / DW_TW;
    const size_t count = (size_t)g.n * g.h * strips * groups;
    GRID_STRIDE(i, count) {
        const int c0 = (int)(i % groups) * V;
        size_t t = i / groups;
        const int iw0 = (int)(t % strips) * DW_TW;
        t /= strips;
        const int ih = (int)(t % g.h), n = (int)(t / g.h);
        float acc[DW_TW][V], gv[V], wv[V];
        for (int s = 0; s < DW_TW; s++)
            for (int v = 0; v < V; v++)
                acc[s][v] = 0.0f;
        for (int kh = 0; kh < g.k; kh++) {
            const int oh = strip_output_index<S>(ih, g.pad_top, kh, g.stride, g.ho);
            if (oh < 0) continue;
            const float *row = dy + ((size_t)n * g.ho + oh) * g.wo * C + c0;
            for (int kw = 0; kw < g.k; kw++) {
                vec_io<V>::load(w + (size_t)(kh * g.k + kw) * C + c0, wv);
                for (int s = 0; s < DW_TW; s++) {
                    if (iw0 + s >= g.w) continue;
                    const int ow = strip_output_index<S>(iw0 + s, g.pad_left, kw, g.stride, g.wo);
                    if (ow < 0) continue;
                    vec_io<V>::load(row + (size_t)ow * C, gv);
                    for (int v = 0; v < V; v++)
                        acc[s][v] = fmaf(gv[v], wv[v], acc[s][v]);
                }
            }
        }
        float *out = dx + (((size_t)n * g.h + ih) * g.w + iw0) * C + c0;
        for (int s = 0; s < DW_TW && iw0 + s < g.w; s++)
            vec_io<V>::store(out + (size_t)s * C, acc[s]);
    }
}

/* Partial weight gradients of taps [tap0, tap0 + taps) over this block's slice of the N*Ho output
 * rows: block (lanes, rows) as for BN (threadIdx.x: a group of V channels, threadIdx.y: an output
 * row of the slice), grid (cols, parts). A thread walks whole output rows (one division per row,
 * none per position), with the taps x V sums in registers (the tap loops are unrolled to
 * MAX_TAPS so the compiler can keep them there). partials: [part][k*k][C]; the block's rows are
 * added in a fixed order, the parts then by sum_parts_kernel in double. */
template <int V>
__global__ void depthwise_backward_weights_rows_kernel(mt_cuda_conv_geom g, const float *x,
                                                       const float *dy, int tap0, int taps,
                                                       long rows_per_block, float *partials) {
    const int C = g.cin, kk = g.k * g.k;
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    const bool active = c0 < C;
    const long rows = (long)g.n * g.ho;
    const long begin = (long)blockIdx.y * rows_per_block;
    const long end = begin + rows_per_block < rows ? begin + rows_per_block : rows;
    float acc[MAX_TAPS][V], dv[V], xv[V];
    int tap_h[MAX_TAPS], tap_w[MAX_TAPS];
    MT_UNROLL
    for (int tt = 0; tt < MAX_TAPS; tt++) {
        tap_h[tt] = (tap0 + tt) / g.k - g.pad_top, tap_w[tt] = (tap0 + tt) % g.k - g.pad_left;
        for (int v = 0; v < V; v++)
            acc[tt][v] = 0.0f;
    }
    if (active) {
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            const int oh = (int)(r % g.ho), n = (int)(r / g.ho);
            const float *dyrow = dy + (size_t)r * g.wo * C + c0;
            const float *image = x + (size_t)n * g.h * g.w * C + c0;
            for (int ow = 0; ow < g.wo; ow++) {
                vec_io<V>::load(dyrow + (size_t)ow * C, dv);
                MT_UNROLL
                for (int tt = 0; tt < MAX_TAPS; tt++) {
                    const int ih = oh * g.stride + tap_h[tt], iw = ow * g.stride + tap_w[tt];
                    if (tt >= taps || ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                    vec_io<V>::load(image + ((size_t)ih * g.w + iw) * C, xv);
                    for (int v = 0; v < V; v++)
                        acc[tt][v] = fmaf(dv[v], xv[v], acc[tt][v]);
                }
            }
        }
    }
    __shared__ float part[BN_THREADS * BN_MAX_V];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    MT_UNROLL
    for (int tt = 0; tt < MAX_TAPS; tt++) {
        if (tt >= taps) break;
        for (int v = 0; v < V; v++)
            part[t * V + v] = acc[tt][v];
        __syncthreads();
        if (threadIdx.y == 0 && active)
            for (int v = 0; v < V; v++) {
                float s = 0.0f;
                for (unsigned y = 0; y < blockDim.y; y++)
                    s += part[(y * blockDim.x + threadIdx.x) * V + v];
                partials[((size_t)blockIdx.y * kk + tap0 + tt) * C + c0 + v] = s;
            }
        __syncthreads();
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

/* ---- elementwise on float4: count % 4 == 0 and 16-byte aligned pointers (the launchers check);
 * the same arithmetic as the scalar kernels, a quarter of the load and store instructions ---- */

__global__ void add4_kernel(size_t count4, const float *a, const float *b, float *y) {
    GRID_STRIDE(i, count4) {
        float va[4], vb[4];
        vec_io<4>::load(a + 4 * i, va);
        vec_io<4>::load(b + 4 * i, vb);
        for (int v = 0; v < 4; v++)
            va[v] += vb[v];
        vec_io<4>::store(y + 4 * i, va);
    }
}

__global__ void relu6_forward4_kernel(size_t count4, const float *x, float *y) {
    GRID_STRIDE(i, count4) {
        float v4[4];
        vec_io<4>::load(x + 4 * i, v4);
        for (int v = 0; v < 4; v++)
            v4[v] = v4[v] < 0.0f ? 0.0f : v4[v] > 6.0f ? 6.0f : v4[v];
        vec_io<4>::store(y + 4 * i, v4);
    }
}

__global__ void relu6_backward4_kernel(size_t count4, const float *y, const float *dy, float *dx) {
    GRID_STRIDE(i, count4) {
        float vy[4], vd[4];
        vec_io<4>::load(y + 4 * i, vy);
        vec_io<4>::load(dy + 4 * i, vd);
        for (int v = 0; v < 4; v++)
            vd[v] = vy[v] > 0.0f && vy[v] < 6.0f ? vd[v] : 0.0f;
        vec_io<4>::store(dx + 4 * i, vd);
    }
}

/* Direct convolution's weight gradient for a small input depth (Conv1: 3x3 over RGB): the
 * K*K*CIN taps are compile-time, so a thread keeps all of them for V output channels in
 * registers (K*K*CIN*V sums) while it walks whole output rows (one division per row, the input
 * pixel's CIN values read once per tap for V channels). Block (lanes over groups of V output
 * channels, rows), grid (cols, parts); partials [part][K*K*CIN][Cout], rows of the block added in
 * a fixed order, parts by sum_parts_kernel in double. */
template <int V, int K, int CIN>
__global__ void direct_backward_weights_rows_kernel(mt_cuda_conv_geom g, const float *x,
                                                    const float *dy, long rows_per_block,
                                                    float *partials) {
    const int KC = K * K * CIN, cout = g.cout;
    const int co0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    const bool active = co0 < cout;
    const long rows = (long)g.n * g.ho;
    const long begin = (long)blockIdx.y * rows_per_block;
    const long end = begin + rows_per_block < rows ? begin + rows_per_block : rows;
    float acc[K * K * CIN][V], dv[V];
    MT_UNROLL
    for (int j = 0; j < KC; j++)
        for (int v = 0; v < V; v++)
            acc[j][v] = 0.0f;
    if (active) {
        for (long r = begin + threadIdx.y; r < end; r += blockDim.y) {
            const int oh = (int)(r % g.ho), n = (int)(r / g.ho);
            const float *dyrow = dy + (size_t)r * g.wo * cout + co0;
            const float *image = x + (size_t)n * g.h * g.w * CIN;
            for (int ow = 0; ow < g.wo; ow++) {
                vec_io<V>::load(dyrow + (size_t)ow * cout, dv);
                MT_UNROLL
                for (int kh = 0; kh < K; kh++) {
                    const int ih = oh * g.stride + kh - g.pad_top;
                    if (ih < 0 || ih >= g.h) continue;
                    MT_UNROLL
                    for (int kw = 0; kw < K; kw++) {
                        const int iw = ow * g.stride + kw - g.pad_left;
                        if (iw < 0 || iw >= g.w) continue;
                        const float *px = image + ((size_t)ih * g.w + iw) * CIN;
                        MT_UNROLL
                        for (int ci = 0; ci < CIN; ci++) {
                            const float xv = px[ci];
                            for (int v = 0; v < V; v++)
                                acc[(kh * K + kw) * CIN + ci][v] =
                                    fmaf(xv, dv[v], acc[(kh * K + kw) * CIN + ci][v]);
                        }
                    }
                }
            }
        }
    }
    __shared__ float part[BN_THREADS * BN_MAX_V];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    MT_UNROLL
    for (int j = 0; j < KC; j++) {
        for (int v = 0; v < V; v++)
            part[t * V + v] = acc[j][v];
        __syncthreads();
        if (threadIdx.y == 0 && active)
            for (int v = 0; v < V; v++) {
                float s = 0.0f;
                for (unsigned y = 0; y < blockDim.y; y++)
                    s += part[(y * blockDim.x + threadIdx.x) * V + v];
                partials[((size_t)blockIdx.y * KC + j) * cout + co0 + v] = s;
            }
        __syncthreads();
    }
}

} // namespace

/* ---- launchers ------------------------------------------------------------------------------ */

extern "C" {

int mt_cuda_reduce_parts(long rows) {
    long parts = (rows + 255) / 256;
    return parts < 1 ? 1 : parts > 256 ? 256 : (int)parts;
}

cudaError_t mt_cuda_launch_hwio_to_krsc(cudaStream_t stream, const float *src, float *dst, int rs,
                                        int cin, int cout) {
    hwio_to_krsc_kernel<<<grid_for((size_t)rs * cin * cout), THREADS, 0, stream>>>(src, dst, rs,
                                                                                   cin, cout);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_krsc_to_hwio(cudaStream_t stream, const float *src, float *dst, int rs,
                                        int cin, int cout) {
    krsc_to_hwio_kernel<<<grid_for((size_t)rs * cin * cout), THREADS, 0, stream>>>(src, dst, rs,
                                                                                   cin, cout);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_depthwise_forward(cudaStream_t stream, const mt_cuda_conv_geom *g,
                                             const float *x, const float *w, float *y) {
    size_t count = (size_t)g->n * g->ho * g->wo * g->cin;
    depthwise_forward_kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, x, w, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_depthwise_backward_data(cudaStream_t stream, const mt_cuda_conv_geom *g,
                                                   const float *dy, const float *w, float *dx) {
    size_t count = (size_t)g->n * g->h * g->w * g->cin;
    depthwise_backward_data_kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, dy, w, dx);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_depthwise_backward_weights(cudaStream_t stream,
                                                      const mt_cuda_conv_geom *g, const float *x,
                                                      const float *dy, float *partials, float *dw) {
    const int kk = g->k * g->k;
    const int parts = mt_cuda_reduce_parts((long)g->n * g->ho * g->wo);
    const dim3 grid((unsigned)((g->cin + RED_X - 1) / RED_X), (unsigned)parts);
    for (int tap0 = 0; tap0 < kk; tap0 += MAX_TAPS) {
        int taps = kk - tap0 < MAX_TAPS ? kk - tap0 : MAX_TAPS;
        depthwise_backward_weights_kernel<<<grid, dim3(RED_X, RED_Y), 0, stream>>>(*g, x, dy, tap0,
                                                                                   taps, partials);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    size_t count = (size_t)kk * g->cin;
    sum_parts_kernel<<<grid_for(count), THREADS, 0, stream>>>(partials, parts, count, dw);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_direct_conv_forward(cudaStream_t stream, const mt_cuda_conv_geom *g,
                                               const float *x, const float *w, float *y) {
    size_t count = (size_t)g->n * g->ho * g->wo * g->cout;
    direct_forward_kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, x, w, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_direct_conv_backward_data(cudaStream_t stream,
                                                     const mt_cuda_conv_geom *g, const float *dy,
                                                     const float *w, float *dx) {
    size_t count = (size_t)g->n * g->h * g->w * g->cin;
    direct_backward_data_kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, dy, w, dx);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_direct_conv_backward_weights(cudaStream_t stream,
                                                        const mt_cuda_conv_geom *g, const float *x,
                                                        const float *dy, float *partials,
                                                        float *dw) {
    const size_t weights = (size_t)g->k * g->k * g->cin * g->cout;
    const int parts = mt_cuda_reduce_parts((long)g->n * g->ho * g->wo);
    const dim3 grid((unsigned)((weights + THREADS - 1) / THREADS), (unsigned)parts);
    direct_backward_weights_kernel<<<grid, THREADS, 0, stream>>>(*g, x, dy, partials);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    sum_parts_kernel<<<grid_for(weights), THREADS, 0, stream>>>(partials, parts, weights, dw);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_add(cudaStream_t stream, size_t count, const float *a, const float *b,
                               float *y) {
    if (count % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(y)) {
        add4_kernel<<<grid_for(count / 4), THREADS, 0, stream>>>(count / 4, a, b, y);
        return cudaGetLastError();
    }
    add_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, a, b, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_relu6_forward(cudaStream_t stream, size_t count, const float *x,
                                         float *y) {
    if (count % 4 == 0 && aligned16(x) && aligned16(y)) {
        relu6_forward4_kernel<<<grid_for(count / 4), THREADS, 0, stream>>>(count / 4, x, y);
        return cudaGetLastError();
    }
    relu6_forward_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, x, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_relu6_backward(cudaStream_t stream, size_t count, const float *y,
                                          const float *dy, float *dx) {
    if (count % 4 == 0 && aligned16(y) && aligned16(dy) && aligned16(dx)) {
        relu6_backward4_kernel<<<grid_for(count / 4), THREADS, 0, stream>>>(count / 4, y, dy, dx);
        return cudaGetLastError();
    }
    relu6_backward_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, y, dy, dx);
    return cudaGetLastError();
}

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

cudaError_t mt_cuda_launch_zero_pad_forward(cudaStream_t stream, int n, int h, int w, int c, int ho,
                                            int wo, int top, int left, const float *x, float *y) {
    zero_pad_forward_kernel<<<grid_for((size_t)n * ho * wo * c), THREADS, 0, stream>>>(
        n, h, w, c, ho, wo, top, left, x, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_zero_pad_backward(cudaStream_t stream, int n, int h, int w, int c,
                                             int ho, int wo, int top, int left, const float *dy,
                                             float *dx) {
    zero_pad_backward_kernel<<<grid_for((size_t)n * h * w * c), THREADS, 0, stream>>>(
        n, h, w, c, ho, wo, top, left, dy, dx);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_avg_pool_forward(cudaStream_t stream, int n, long hw, int c,
                                            const float *x, float *y) {
    avg_pool_forward_kernel<<<grid_for((size_t)n * c), THREADS, 0, stream>>>(n, hw, c, x, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_avg_pool_backward(cudaStream_t stream, int n, long hw, int c,
                                             const float *dy, float *dx) {
    avg_pool_backward_kernel<<<grid_for((size_t)n * hw * c), THREADS, 0, stream>>>(n, hw, c, dy,
                                                                                   dx);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_dropout_forward(cudaStream_t stream, size_t count, uint64_t seed,
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
                                           0ull, NULL);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_input_convert(cudaStream_t stream, int n, int height, int width,
                                         const uint8_t *src, const uint8_t *flips, float *dst) {
    const size_t count = (size_t)n * (size_t)height * (size_t)width * 3;
    input_convert_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, height, width, src, flips,
                                                                  dst);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_loss_accumulate(cudaStream_t stream, int batch, int classes,
                                           const float *logits, const int32_t *labels,
                                           float *dlogits, uint64_t step, double *accum,
                                           float *skip) {
    loss_kernel<<<1, THREADS, 0, stream>>>(batch, classes, logits, labels, dlogits, NULL, accum,
                                           (unsigned long long)step, skip);
    return cudaGetLastError();
}

} // extern "C"

/* ---- fp32 fused batch normalization ---- */

namespace {

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

cudaError_t mt_cuda_launch_bn_fused_forward_training(
    cudaStream_t stream, long m, int c, float epsilon, float momentum, int relu6, const float *x,
    const float *gamma, const float *beta, float *moving_mean, float *moving_variance, float *y,
    float *saved_mean, float *saved_inv_std, float *scratch, unsigned *counters) {
    const bn_plan p = bn_make_plan(m, c, aligned16(x) && aligned16(y));
    auto stats = p.vec == 4 ? bn_fused_stats_kernel<4> : bn_fused_stats_kernel<1>;
    auto apply = p.vec == 4 ? bn_fused_apply_kernel<4> : bn_fused_apply_kernel<1>;
    stats<<<p.grid, p.block, 0, stream>>>(m, c, p.rows_per_block, epsilon, momentum, x, moving_mean,
                                          moving_variance, saved_mean, saved_inv_std, scratch,
                                          counters);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    apply<<<p.apply_grid, p.block, 0, stream>>>(m, c, 0, relu6, epsilon, x, gamma, beta, saved_mean,
                                                saved_inv_std, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_bn_fused_forward_inference(cudaStream_t stream, long m, int c,
                                                      float epsilon, const float *x,
                                                      const float *gamma, const float *beta,
                                                      const float *moving_mean,
                                                      const float *moving_variance, float *y) {
    const bn_plan p = bn_make_plan(m, c, aligned16(x) && aligned16(y));
    auto apply = p.vec == 4 ? bn_fused_apply_kernel<4> : bn_fused_apply_kernel<1>;
    apply<<<p.apply_grid, p.block, 0, stream>>>(m, c, 1, 0, epsilon, x, gamma, beta, moving_mean,
                                                moving_variance, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_bn_fused_backward(cudaStream_t stream, long m, int c, float epsilon,
                                             int training, const float *x, const float *y,
                                             const float *dy, const float *gamma,
                                             const float *stat_mean, const float *stat_second,
                                             float *dx, float *dgamma, float *dbeta, float *scratch,
                                             unsigned *counters) {
    const bool vectorizable = aligned16(x) && aligned16(dy) && aligned16(dx) && aligned16(y);
    const bn_plan p = bn_make_plan(m, c, vectorizable);
    const int inference = !training;
    float *coef = scratch + (size_t)p.grid.y * c * 2;
    auto grad = p.vec == 4 ? bn_fused_grad_kernel<4> : bn_fused_grad_kernel<1>;
    auto dxk = p.vec == 4 ? bn_fused_dx_kernel<4> : bn_fused_dx_kernel<1>;
    if (training || dgamma || dbeta) {
        grad<<<p.grid, p.block, 0, stream>>>(m, c, p.rows_per_block, inference, epsilon, x, y, dy,
                                             gamma, stat_mean, stat_second, dgamma, dbeta, coef,
                                             scratch, counters);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    if (dx)
        dxk<<<p.apply_grid, p.block, 0, stream>>>(m, c, inference, epsilon, x, y, dy, gamma,
                                                  stat_mean, stat_second, coef, dx);
    return cudaGetLastError();
}

} // extern "C"

/* ---- register-blocked depthwise ---- */

extern "C" {

cudaError_t mt_cuda_launch_depthwise_forward_strip(cudaStream_t stream, const mt_cuda_conv_geom *g,
                                                   const float *x, const float *w, float *y) {
    const int vec = g->cin % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(y) ? 4 : 1;
    const size_t count =
        (size_t)g->n * g->ho * ((g->wo + DW_TW - 1) / DW_TW) * (size_t)(g->cin / vec);
    auto kernel = vec == 4 ? depthwise_forward_strip_kernel<4> : depthwise_forward_strip_kernel<1>;
    kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, x, w, y);
    return cudaGetLastError();
}

cudaError_t mt_cuda_launch_depthwise_backward_data_strip(cudaStream_t stream,
                                                         const mt_cuda_conv_geom *g,
                                                         const float *dy, const float *w,
                                                         float *dx) {
    const int vec = g->cin % 4 == 0 && aligned16(dy) && aligned16(w) && aligned16(dx) ? 4 : 1;
    const size_t count =
        (size_t)g->n * g->h * ((g->w + DW_TW - 1) / DW_TW) * (size_t)(g->cin / vec);
    auto kernel = depthwise_backward_data_strip_kernel<1, 0>;
    if (vec == 4)
        kernel = g->stride == 1   ? depthwise_backward_data_strip_kernel<4, 1>
                 : g->stride == 2 ? depthwise_backward_data_strip_kernel<4, 2>
                                  : depthwise_backward_data_strip_kernel<4, 0>;
    else
        kernel = g->stride == 1   ? depthwise_backward_data_strip_kernel<1, 1>
                 : g->stride == 2 ? depthwise_backward_data_strip_kernel<1, 2>
                                  : depthwise_backward_data_strip_kernel<1, 0>;
    kernel<<<grid_for(count), THREADS, 0, stream>>>(*g, dy, w, dx);
    return cudaGetLastError();
}

} // extern "C"

namespace {

/* The launch of depthwise_backward_weights_rows_kernel: about 64 positions per thread. */
struct dw_weights_plan {
    int vec;
    dim3 block, grid;
    long rows_per_block;
};

dw_weights_plan dw_weights_make_plan(const mt_cuda_conv_geom *g, bool vectorizable) {
    dw_weights_plan p;
    p.vec = vectorizable && g->cin % 4 == 0 ? 4 : 1;
    const int groups = g->cin / p.vec;
    const int cols = (groups + BN_THREADS - 1) / BN_THREADS;
    const int lanes = (groups + cols - 1) / cols;
    const int rows = BN_THREADS / lanes > 0 ? BN_THREADS / lanes : 1;
    const long out_rows = (long)g->n * g->ho;
    long per_thread = (64 + g->wo - 1) / g->wo;
    long parts = (out_rows + rows * per_thread - 1) / (rows * per_thread);
    if (parts > 65535) {
        per_thread = (out_rows + (long)rows * 65535 - 1) / ((long)rows * 65535);
        parts = (out_rows + rows * per_thread - 1) / (rows * per_thread);
    }
    p.block = dim3((unsigned)lanes, (unsigned)rows);
    p.grid = dim3((unsigned)cols, (unsigned)parts);
    p.rows_per_block = rows * per_thread;
    return p;
}

} // namespace

extern "C" {

size_t mt_cuda_depthwise_weights_rows_partials(const mt_cuda_conv_geom *g) {
    const dw_weights_plan a = dw_weights_make_plan(g, false), b = dw_weights_make_plan(g, true);
    const size_t parts = a.grid.y > b.grid.y ? a.grid.y : b.grid.y;
    return parts * g->k * g->k * g->cin;
}

cudaError_t mt_cuda_launch_depthwise_backward_weights_rows(cudaStream_t stream,
                                                           const mt_cuda_conv_geom *g,
                                                           const float *x, const float *dy,
                                                           float *partials, float *dw) {
    const dw_weights_plan p = dw_weights_make_plan(g, aligned16(x) && aligned16(dy));
    const int kk = g->k * g->k;
    auto kernel = p.vec == 4 ? depthwise_backward_weights_rows_kernel<4>
                             : depthwise_backward_weights_rows_kernel<1>;
    for (int tap0 = 0; tap0 < kk; tap0 += MAX_TAPS) {
        const int taps = kk - tap0 < MAX_TAPS ? kk - tap0 : MAX_TAPS;
        kernel<<<p.grid, p.block, 0, stream>>>(*g, x, dy, tap0, taps, p.rows_per_block, partials);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    const size_t count = (size_t)kk * g->cin;
    sum_parts_kernel<<<grid_for(count), THREADS, 0, stream>>>(partials, (int)p.grid.y, count, dw);
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

cudaError_t mt_cuda_launch_round_f32(cudaStream_t stream, size_t count, int format,
                                     const float *x, float *y) {
    round_f32_kernel<<<grid_for(count), THREADS, 0, stream>>>(count, format, x, y);
    return cudaGetLastError();
}

} // extern "C"

/* ---- direct convolution's weight gradient for 3x3 over 3 channels ---- */

namespace {

/* as dw_weights_make_plan, over groups of output channels */
dw_weights_plan direct_weights_make_plan(const mt_cuda_conv_geom *g, bool vectorizable) {
    mt_cuda_conv_geom as_depthwise = *g;
    as_depthwise.cin = g->cout; /* the lanes run over output channels here */
    return dw_weights_make_plan(&as_depthwise, vectorizable);
}

} // namespace

extern "C" {

int mt_cuda_direct_weights_rows_supported(const mt_cuda_conv_geom *g) {
    return g->k == 3 && g->cin == 3;
}

size_t mt_cuda_direct_weights_rows_partials(const mt_cuda_conv_geom *g) {
    const dw_weights_plan a = direct_weights_make_plan(g, false);
    const dw_weights_plan b = direct_weights_make_plan(g, true);
    const size_t parts = a.grid.y > b.grid.y ? a.grid.y : b.grid.y;
    return parts * g->k * g->k * g->cin * g->cout;
}

cudaError_t mt_cuda_launch_direct_conv_backward_weights_rows(cudaStream_t stream,
                                                             const mt_cuda_conv_geom *g,
                                                             const float *x, const float *dy,
                                                             float *partials, float *dw) {
    if (!mt_cuda_direct_weights_rows_supported(g)) return cudaErrorInvalidValue;
    const dw_weights_plan p = direct_weights_make_plan(g, aligned16(dy));
    auto kernel = p.vec == 4 ? direct_backward_weights_rows_kernel<4, 3, 3>
                             : direct_backward_weights_rows_kernel<1, 3, 3>;
    kernel<<<p.grid, p.block, 0, stream>>>(*g, x, dy, p.rows_per_block, partials);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    const size_t count = (size_t)g->k * g->k * g->cin * g->cout;
    sum_parts_kernel<<<grid_for(count), THREADS, 0, stream>>>(partials, (int)p.grid.y, count, dw);
    return cudaGetLastError();
}

} // extern "C"
