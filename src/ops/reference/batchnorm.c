/* Batch normalization of the reference backend, per channel of an NHWC tensor, as Keras does it:
 * training mode normalizes with the batch mean and the biased batch variance (divide by M, the
 * N*H*W values of a channel) and moves the moving statistics by
 *     moving = moving * momentum + batch * (1 - momentum)
 * with the same biased variance; inference mode normalizes with the moving statistics.
 * With xhat = (x - mean) * inv_std, inv_std = 1/sqrt(var + eps), y = gamma * xhat + beta:
 *     training backward:  dx = gamma*inv_std * (dy - mean(dy) - xhat * mean(dy*xhat))
 *     inference backward: dx = gamma*inv_std * dy   (statistics are constants)
 *     both:               dgamma = sum(dy*xhat), dbeta = sum(dy)
 * Channels are independent, so the loops run in parallel over channels; sums are in double. */
#include <math.h>

#include "ops/reference/reference.h"

static mt_status check_bn(const char *op, const mt_batchnorm_desc *d, const mt_tensor *a,
                          const char *a_name, const mt_tensor *b, const char *b_name) {
    if (!(d->epsilon >= 0.0f) || !(d->momentum >= 0.0f && d->momentum <= 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "%s: epsilon %g must be >= 0 and momentum %g in [0, 1]", op,
                       d->epsilon, d->momentum);
    if (d->shape.n <= 0 || d->shape.h <= 0 || d->shape.w <= 0 || d->shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID, "%s: empty shape %dx%dx%dx%d", op, d->shape.n, d->shape.h,
                       d->shape.w, d->shape.c);
    MT_TRY(mt_ref_check_shape(op, a_name, a->shape, d->shape));
    if (b) MT_TRY(mt_ref_check_shape(op, b_name, b->shape, d->shape));
    return MT_OK;
}

/* x, y: N,H,W,C; gamma, beta, moving_*, saved_*: [C] */
mt_status mt_ref_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                            const mt_tensor *x, const float *gamma,
                                            const float *beta, float *moving_mean,
                                            float *moving_variance, mt_tensor *y, float *saved_mean,
                                            float *saved_inv_std) {
    MT_TRY(check_bn("batchnorm_forward_training", desc, x, "x", y, "y"));
    const int C = desc->shape.c;
    const long M = (long)desc->shape.n * desc->shape.h * desc->shape.w;
    const float *px = x->data;
    float *py = y->data;
    const double momentum = desc->momentum;
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (int c = 0; c < C; c++) {
        double sum = 0.0;
        for (long m = 0; m < M; m++)
            sum += px[m * C + c];
        double mean = sum / (double)M;
        double sq = 0.0; /* two passes: no cancellation when |mean| >> std */
        for (long m = 0; m < M; m++) {
            double t = px[m * C + c] - mean;
            sq += t * t;
        }
        double var = sq / (double)M;
        double inv_std = 1.0 / sqrt(var + (double)desc->epsilon);
        for (long m = 0; m < M; m++)
            py[m * C + c] = (float)(gamma[c] * (px[m * C + c] - mean) * inv_std + beta[c]);
        saved_mean[c] = (float)mean;
        saved_inv_std[c] = (float)inv_std;
        moving_mean[c] = (float)(moving_mean[c] * momentum + mean * (1.0 - momentum));
        moving_variance[c] = (float)(moving_variance[c] * momentum + var * (1.0 - momentum));
    }
    return mt_ref_stored(backend, y);
}

/* x, y: N,H,W,C (y may alias x); gamma, beta, moving_*: [C] */
mt_status mt_ref_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, const float *moving_mean,
                                             const float *moving_variance, mt_tensor *y) {
    MT_TRY(check_bn("batchnorm_forward_inference", desc, x, "x", y, "y"));
    const int C = desc->shape.c;
    const long M = (long)desc->shape.n * desc->shape.h * desc->shape.w;
    const float *px = x->data;
    float *py = y->data;
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (int c = 0; c < C; c++) {
        double inv_std = 1.0 / sqrt((double)moving_variance[c] + (double)desc->epsilon);
        for (long m = 0; m < M; m++)
            py[m * C + c] =
                (float)(gamma[c] * (px[m * C + c] - (double)moving_mean[c]) * inv_std + beta[c]);
    }
    return mt_ref_stored(backend, y);
}

/* x, dy, dx: N,H,W,C (dx may alias dy); gamma, saved_*, dgamma, dbeta: [C] */
mt_status mt_ref_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const mt_tensor *dy,
                                             const float *gamma, const float *saved_mean,
                                             const float *saved_inv_std, mt_tensor *dx,
                                             float *dgamma, float *dbeta) {
    MT_TRY(check_bn("batchnorm_backward_training", desc, x, "x", dy, "dy"));
    MT_TRY(mt_ref_check_shape("batchnorm_backward_training", "dx", dx->shape, desc->shape));
    const int C = desc->shape.c;
    const long M = (long)desc->shape.n * desc->shape.h * desc->shape.w;
    const float *px = x->data, *pdy = dy->data;
    float *pdx = dx->data;
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (int c = 0; c < C; c++) {
        const double mean = saved_mean[c], inv_std = saved_inv_std[c];
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (long m = 0; m < M; m++) {
            double g = pdy[m * C + c];
            sum_dy += g;
            sum_dy_xhat += g * (px[m * C + c] - mean) * inv_std;
        }
        const double mean_dy = sum_dy / (double)M, mean_dy_xhat = sum_dy_xhat / (double)M;
        const double scale = gamma[c] * inv_std;
        for (long m = 0; m < M; m++) {
            double xhat = (px[m * C + c] - mean) * inv_std;
            pdx[m * C + c] = (float)(scale * (pdy[m * C + c] - mean_dy - xhat * mean_dy_xhat));
        }
        if (dgamma) dgamma[c] = (float)sum_dy_xhat;
        if (dbeta) dbeta[c] = (float)sum_dy;
    }
    return mt_ref_stored(backend, dx);
}

/* x, dy, dx: N,H,W,C (dx may be NULL or alias dy); gamma, moving_*, dgamma, dbeta: [C] */
mt_status mt_ref_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *dx,
                                              float *dgamma, float *dbeta) {
    MT_TRY(check_bn("batchnorm_backward_inference", desc, x, "x", dy, "dy"));
    if (dx)
        MT_TRY(mt_ref_check_shape("batchnorm_backward_inference", "dx", dx->shape, desc->shape));
    const int C = desc->shape.c;
    const long M = (long)desc->shape.n * desc->shape.h * desc->shape.w;
    const float *px = x->data, *pdy = dy->data;
    float *pdx = dx ? dx->data : NULL;
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (int c = 0; c < C; c++) {
        const double mean = moving_mean[c];
        const double inv_std = 1.0 / sqrt((double)moving_variance[c] + (double)desc->epsilon);
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (long m = 0; m < M; m++) {
            double g = pdy[m * C + c];
            sum_dy += g;
            sum_dy_xhat += g * (px[m * C + c] - mean) * inv_std;
        }
        if (pdx)
            for (long m = 0; m < M; m++)
                pdx[m * C + c] = (float)(gamma[c] * inv_std * pdy[m * C + c]);
        if (dgamma) dgamma[c] = (float)sum_dy_xhat;
        if (dbeta) dbeta[c] = (float)sum_dy;
    }
    return dx ? mt_ref_stored(backend, dx) : MT_OK;
}
