/* Training-mode batch norm fused with the ReLU6 that follows it, forward and backward, as OpenMP
 * loops over the backend's layout; the forward without the clip is also the backend's plain
 * training-mode BN forward (see cpu_norm.c for why). Both ops are memory-bound and oneDNN 2.6 has
 * no clip post-op for batch norm, so the fusion is the saving: forward reads x twice and writes y
 * once (instead of BN's passes plus ReLU6's read and write of y), backward applies ReLU6's mask on
 * the fly instead of writing and re-reading the masked gradient.
 *
 * Sums run per channel in double, per thread, over data shifted by one sample of the channel, so
 * E[x^2] - E[x]^2 keeps its precision when the mean is large against the spread. Each term is
 * formed and added in double too: the variance is E[(x-s)^2] - E[x-s]^2 with the shift s one
 * sample, often 2-4 standard deviations from the mean, so the two terms are up to ~20x the
 * variance and cancel; float partial sums (an earlier version summed 128 positions in float) left
 * relative errors of ~300 u in the variance of real MobileNetV2 channels and ~500 u x RMS in BN's
 * output (tests/keras/whole_network.py measures the whole network; test_ops_cpu_fused this op). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "ops/cpu/cpu_internal.h"

/* Accumulators per pass over a plane: LANES channels at a time, in double (the loop over lanes
 * vectorizes; the ops are memory-bound, so double lanes cost little). */
enum { LANES = 64 };

typedef struct bn_geometry {
    int n, c, block, blocks;
    size_t hw;
    double count; /* N*H*W: the samples of one channel */
} bn_geometry;

static bn_geometry geometry_of(const cpu_backend *cpu, mt_shape4 s) {
    int block = cpu_block_of(cpu, s);
    return (bn_geometry){.n = s.n,
                         .c = s.c,
                         .block = block,
                         .blocks = s.c / block,
                         .hw = (size_t)s.h * s.w,
                         .count = (double)s.n * s.h * s.w};
}

/* Per-thread partial sums: part[t][0..c) and part[t][c..2c), zeroed; returns the thread count. */
static mt_status partials(cpu_backend *cpu, int c, double **part, int *threads) {
    *threads = omp_get_max_threads();
    MT_TRY(cpu_reduce_buffer(cpu, (size_t)*threads * 2 * c, part));
    memset(*part, 0, (size_t)*threads * 2 * c * sizeof **part);
    return MT_OK;
}

/* The per-plane kernels below take the channel count of a row (`lanes`) and the row stride
 * (`block`) as arguments and are always inlined, so the callers' constant 8 for nChw8c turns the
 * innermost loops into straight vector code instead of short loops of unknown trip count. */
#define BN_INLINE static inline __attribute__((always_inline))

/* a += sum of (x - shift), b += sum of (x - shift)^2 over a plane's rows, in double */
BN_INLINE void stats_rows(const float *x, size_t hw, int block, int lanes, const float *shift,
                          double *a, double *b) {
    double da[LANES] = {0}, db[LANES] = {0};
    for (size_t p = 0; p < hw; p++) {
        const float *row = x + p * block;
#pragma omp simd
        for (int l = 0; l < lanes; l++) {
            double v = (double)row[l] - (double)shift[l];
            da[l] += v;
            db[l] += v * v;
        }
    }
    for (int l = 0; l < lanes; l++)
        a[l] += da[l], b[l] += db[l];
}

/* y = clip(x * scale + offset, 0, 6) over a plane's rows */
BN_INLINE void normalize_rows(const float *x, float *y, size_t hw, int block, bool clip,
                              const float *scale, const float *offset) {
    for (size_t p = 0; p < hw; p++) {
        const float *xr = x + p * block;
        float *yr = y + p * block;
#pragma omp simd
        for (int l = 0; l < block; l++) {
            float v = xr[l] * scale[l] + offset[l];
            if (clip) {
                v = v > 0.0f ? v : 0.0f;
                v = v < 6.0f ? v : 6.0f;
            }
            yr[l] = v;
        }
    }
}

/* with g = dy where 0 < y < 6 (or everywhere when !masked): a += sum of g, b += sum of g * (x -
 * mean), in double (both sums cancel: in training mode a channel's gradient sums to near zero) */
BN_INLINE void grad_stats_rows(const float *x, const float *y, const float *dy, size_t hw,
                               int block, int lanes, bool masked, const float *mean, double *a,
                               double *b) {
    double da[LANES] = {0}, db[LANES] = {0};
    for (size_t p = 0; p < hw; p++) {
        size_t o = p * block;
#pragma omp simd
        for (int l = 0; l < lanes; l++) {
            /* unconditional loads and the mask as a factor (0 or 1): with the double sums a
             * select here made GCC keep a branch per element (6x slower) */
            float yv = y[o + l], dv = dy[o + l], xv = x[o + l];
            double keep = !masked || ((yv > 0.0f) & (yv < 6.0f));
            double gv = keep * (double)dv;
            da[l] += gv;
            db[l] += gv * ((double)xv - (double)mean[l]);
        }
    }
    for (int l = 0; l < lanes; l++)
        a[l] += da[l], b[l] += db[l];
}

/* dx = k*g - kx*(x - mean) - kb over a plane's rows */
BN_INLINE void grad_rows(const float *x, const float *y, const float *dy, float *dx, size_t hw,
                         int block, bool masked, const float *k, const float *kx, const float *kb,
                         const float *mean) {
    for (size_t p = 0; p < hw; p++) {
        size_t o = p * block;
#pragma omp simd
        for (int l = 0; l < block; l++) {
            float yv = y[o + l], dv = dy[o + l];
            float gv = !masked || ((yv > 0.0f) & (yv < 6.0f)) ? dv : 0.0f;
            dx[o + l] = k[l] * gv - kx[l] * (x[o + l] - mean[l]) - kb[l];
        }
    }
}

/* Totals over the threads into a and b, which may be thread 0's row: each channel is read
 * from every row before it is written. */
static void sum_partials(double *part, int threads, int c, double *a, double *b) {
    for (int i = 0; i < c; i++) {
        double sa = 0, sb = 0;
        for (int t = 0; t < threads; t++) {
            sa += part[(size_t)t * 2 * c + i];
            sb += part[(size_t)t * 2 * c + c + i];
        }
        a[i] = sa;
        b[i] = sb;
    }
}

/* Training-mode BN forward, followed by ReLU6 when `clip`. */
static mt_status bn_forward(cpu_backend *cpu, const mt_batchnorm_desc *desc, const mt_tensor *x,
                            const float *gamma, const float *beta, float *moving_mean,
                            float *moving_variance, mt_tensor *y, float *saved_mean,
                            float *saved_inv_std, bool clip) {
    mt_shape4 s = desc->shape;
    if (!(desc->epsilon > 0.0f))
        return MT_FAIL(MT_ERR_INVALID, "cpu backend: batch norm epsilon %g must be > 0",
                       (double)desc->epsilon);
    MT_TRY(cpu_check_tensor(cpu, x, s, "batchnorm_relu6_forward_training's x"));
    MT_TRY(cpu_check_tensor(cpu, y, s, "batchnorm_relu6_forward_training's y"));
    if (clip && x->data == y->data)
        return MT_FAIL(MT_ERR_INVALID, "cpu backend: batchnorm_relu6_forward_training needs y "
                                       "apart from x (the backward pass reads both)");
    bn_geometry g = geometry_of(cpu, s);
    const float *xs = x->data;
    float *ys = y->data;
    float *temp;
    MT_TRY(cpu_temp(cpu, 3 * (size_t)g.c, &temp));
    float *shift = temp, *scale = temp + g.c, *offset = temp + 2 * g.c;
    for (int c = 0; c < g.c; c++) /* sample (0, 0, 0, c) */
        shift[c] = xs[(size_t)(c / g.block) * g.hw * g.block + c % g.block];
    double *part;
    int threads;
    MT_TRY(partials(cpu, g.c, &part, &threads));
    ptrdiff_t planes = (ptrdiff_t)g.n * g.blocks;
#pragma omp parallel num_threads(threads)
    {
        double *sum = part + (size_t)omp_get_thread_num() * 2 * g.c, *sum2 = sum + g.c;
#pragma omp for schedule(static)
        for (ptrdiff_t plane = 0; plane < planes; plane++) {
            int cb = (int)(plane % g.blocks);
            const float *base = xs + (size_t)plane * g.hw * g.block;
            const float *sh = shift + (size_t)cb * g.block;
            double *sa = sum + (size_t)cb * g.block, *sb = sum2 + (size_t)cb * g.block;
            if (g.block == 8) {
                stats_rows(base, g.hw, 8, 8, sh, sa, sb);
            } else {
                for (int l0 = 0; l0 < g.block; l0 += LANES) {
                    int lanes = g.block - l0 < LANES ? g.block - l0 : LANES;
                    stats_rows(base + l0, g.hw, g.block, lanes, sh + l0, sa + l0, sb + l0);
                }
            }
        }
    }
    double *sums = part, *sums2 = part + g.c; /* thread 0's row, reused for the totals */
    sum_partials(part, threads, g.c, sums, sums2);
    float m = desc->momentum;
    for (int c = 0; c < g.c; c++) {
        double d = sums[c] / g.count;
        double var = sums2[c] / g.count - d * d;
        if (var < 0) var = 0;
        float mean = (float)(shift[c] + d), variance = (float)var;
        float inv_std = 1.0f / sqrtf(variance + desc->epsilon);
        saved_mean[c] = mean;
        saved_inv_std[c] = inv_std;
        moving_mean[c] = moving_mean[c] * m + mean * (1.0f - m);
        moving_variance[c] = moving_variance[c] * m + variance * (1.0f - m);
        scale[c] = gamma[c] * inv_std;
        offset[c] = beta[c] - mean * scale[c];
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (ptrdiff_t plane = 0; plane < planes; plane++) {
        int cb = (int)(plane % g.blocks);
        const float *xb = xs + (size_t)plane * g.hw * g.block;
        float *yb = ys + (size_t)plane * g.hw * g.block;
        const float *sc = scale + (size_t)cb * g.block, *of = offset + (size_t)cb * g.block;
        if (g.block == 8 && clip)
            normalize_rows(xb, yb, g.hw, 8, true, sc, of);
        else if (g.block == 8)
            normalize_rows(xb, yb, g.hw, 8, false, sc, of);
        else
            normalize_rows(xb, yb, g.hw, g.block, clip, sc, of);
    }
    return MT_OK;
}

mt_status mt_cpu_batchnorm_relu6_forward_training(mt_backend *backend,
                                                  const mt_batchnorm_desc *desc, const mt_tensor *x,
                                                  const float *gamma, const float *beta,
                                                  float *moving_mean, float *moving_variance,
                                                  mt_tensor *y, float *saved_mean,
                                                  float *saved_inv_std) {
    return bn_forward(cpu_of(backend), desc, x, gamma, beta, moving_mean, moving_variance, y,
                      saved_mean, saved_inv_std, true);
}

mt_status cpu_batchnorm_forward_training_openmp(cpu_backend *cpu, const mt_batchnorm_desc *desc,
                                                const mt_tensor *x, const float *gamma,
                                                const float *beta, float *moving_mean,
                                                float *moving_variance, mt_tensor *y,
                                                float *saved_mean, float *saved_inv_std) {
    return bn_forward(cpu, desc, x, gamma, beta, moving_mean, moving_variance, y, saved_mean,
                      saved_inv_std, false);
}

/* Training-mode BN backward, through ReLU6's mask when y (ReLU6's output) is given. */
static mt_status bn_backward(cpu_backend *cpu, const mt_batchnorm_desc *desc, const mt_tensor *x,
                             const mt_tensor *y, const mt_tensor *dy, const float *gamma,
                             const float *saved_mean, const float *saved_inv_std, mt_tensor *dx,
                             float *dgamma, float *dbeta) {
    mt_shape4 s = desc->shape;
    bool masked = y != NULL;
    MT_TRY(cpu_check_tensor(cpu, x, s, "BN backward's x"));
    if (masked) MT_TRY(cpu_check_tensor(cpu, y, s, "BN backward's y (ReLU6's output)"));
    MT_TRY(cpu_check_tensor(cpu, dy, s, "BN backward's dy"));
    MT_TRY(cpu_check_tensor(cpu, dx, s, "BN backward's dx"));
    bn_geometry g = geometry_of(cpu, s);
    const float *xs = x->data, *ys = masked ? y->data : dy->data, *dys = dy->data;
    float *dxs = dx->data;
    double *part;
    int threads;
    MT_TRY(partials(cpu, g.c, &part, &threads));
    ptrdiff_t planes = (ptrdiff_t)g.n * g.blocks;
    /* pass 1: sum of g and of g * (x - mean), g = dy masked by 0 < y < 6 */
#pragma omp parallel num_threads(threads)
    {
        double *sum = part + (size_t)omp_get_thread_num() * 2 * g.c, *sum_x = sum + g.c;
#pragma omp for schedule(static)
        for (ptrdiff_t plane = 0; plane < planes; plane++) {
            int cb = (int)(plane % g.blocks);
            size_t off = (size_t)plane * g.hw * g.block, c0 = (size_t)cb * g.block;
            const float *xb = xs + off, *yb = ys + off, *db = dys + off;
            if (g.block == 8 && masked) {
                grad_stats_rows(xb, yb, db, g.hw, 8, 8, true, saved_mean + c0, sum + c0,
                                sum_x + c0);
            } else if (g.block == 8) {
                grad_stats_rows(xb, yb, db, g.hw, 8, 8, false, saved_mean + c0, sum + c0,
                                sum_x + c0);
            } else {
                for (int l0 = 0; l0 < g.block; l0 += LANES) {
                    int lanes = g.block - l0 < LANES ? g.block - l0 : LANES;
                    grad_stats_rows(xb + l0, yb + l0, db + l0, g.hw, g.block, lanes, masked,
                                    saved_mean + c0 + l0, sum + c0 + l0, sum_x + c0 + l0);
                }
            }
        }
    }
    float *temp;
    MT_TRY(cpu_temp(cpu, 3 * (size_t)g.c, &temp));
    float *k = temp, *kx = temp + g.c, *kb = temp + 2 * g.c;
    double *sums = part, *sums_x = part + g.c;
    sum_partials(part, threads, g.c, sums, sums_x);
    for (int c = 0; c < g.c; c++) {
        double is = saved_inv_std[c];
        if (dbeta) dbeta[c] = (float)sums[c];
        if (dgamma) dgamma[c] = (float)(sums_x[c] * is);
        /* dx = gamma*is * (g - sum/M - (x-mean) * is^2 * sum_x/M) = k*g - kx*(x-mean) - kb */
        double gk = gamma[c] * is;
        k[c] = (float)gk;
        kx[c] = (float)(gk * is * is * sums_x[c] / g.count);
        kb[c] = (float)(gk * sums[c] / g.count);
    }
    /* pass 2 */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (ptrdiff_t plane = 0; plane < planes; plane++) {
        int cb = (int)(plane % g.blocks);
        size_t off = (size_t)plane * g.hw * g.block, c0 = (size_t)cb * g.block;
        const float *kc = k + c0, *kxc = kx + c0, *kbc = kb + c0, *mu = saved_mean + c0;
        const float *xp = xs + off, *yp = ys + off, *dp = dys + off;
        if (g.block == 8 && masked)
            grad_rows(xp, yp, dp, dxs + off, g.hw, 8, true, kc, kxc, kbc, mu);
        else if (g.block == 8)
            grad_rows(xp, yp, dp, dxs + off, g.hw, 8, false, kc, kxc, kbc, mu);
        else
            grad_rows(xp, yp, dp, dxs + off, g.hw, g.block, masked, kc, kxc, kbc, mu);
    }
    return MT_OK;
}

mt_status mt_cpu_relu6_batchnorm_backward_training(
    mt_backend *backend, const mt_batchnorm_desc *desc, const mt_tensor *x, const mt_tensor *y,
    const mt_tensor *dy, const float *gamma, const float *saved_mean, const float *saved_inv_std,
    mt_tensor *dx, float *dgamma, float *dbeta) {
    return bn_backward(cpu_of(backend), desc, x, y, dy, gamma, saved_mean, saved_inv_std, dx,
                       dgamma, dbeta);
}
