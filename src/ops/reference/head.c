/* The head ops of the reference backend, on plain row-major matrices: global average pooling
 * (the NHWC -> N,C edge), inverted dropout, the dense layer and the cross-entropy losses on
 * logits (sigmoid for one logit, softmax for several), written in their numerically stable
 * forms. */
#include <math.h>

#include "ops/dropout_hash.h"
#include "ops/loss_accum.h"
#include "ops/loss_row.h"
#include "ops/reference/reference.h"

/* x: N,H,W,C; y: N,C = mean over H,W */
mt_status mt_ref_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y) {
    const mt_shape4 s = x->shape;
    const long hw = (long)s.h * s.w;
    const float *px = x->data;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < s.n; n++) {
        for (int c = 0; c < s.c; c++) {
            double sum = 0.0;
            for (long p = 0; p < hw; p++)
                sum += px[((size_t)n * hw + p) * s.c + c];
            y[(size_t)n * s.c + c] = (float)(sum / (double)hw);
        }
    }
    return MT_OK;
}

/* dy: N,C; dx: N,H,W,C = dy / (H*W) at every position */
mt_status mt_ref_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx) {
    const mt_shape4 s = dx->shape;
    const long hw = (long)s.h * s.w;
    float *pdx = dx->data;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < s.n; n++) {
        for (long p = 0; p < hw; p++) {
            for (int c = 0; c < s.c; c++)
                pdx[((size_t)n * hw + p) * s.c + c] =
                    (float)((double)dy[(size_t)n * s.c + c] / (double)hw);
        }
    }
    return mt_ref_stored(backend, dx);
}

static mt_status check_rate(const char *op, float rate) {
    if (!(rate >= 0.0f && rate < 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "%s: dropout rate %g is outside [0, 1)", op, rate);
    return MT_OK;
}

/* x, y: [count] (y may alias x); mask: [count] bytes, 1 = kept */
mt_status mt_ref_dropout_forward(mt_backend *backend, size_t count, float rate,
                                 const uint64_t *seed, const float *x, float *y, uint8_t *mask) {
    MT_TRY(check_rate("dropout_forward", rate));
    const uint32_t threshold = mt_dropout_threshold(rate);
    const float scale = 1.0f / (1.0f - rate);
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (long i = 0; i < (long)count; i++) {
        bool keep = mt_dropout_keep(*seed, (uint64_t)i, threshold);
        mask[i] = keep ? 1 : 0;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
    return MT_OK;
}

/* mask, dy, dx: [count] (dx may alias dy) */
mt_status mt_ref_dropout_backward(mt_backend *backend, size_t count, float rate,
                                  const uint8_t *mask, const float *dy, float *dx) {
    MT_TRY(check_rate("dropout_backward", rate));
    const float scale = 1.0f / (1.0f - rate);
#pragma omp parallel for num_threads(mt_ref_threads(backend)) schedule(static)
    for (long i = 0; i < (long)count; i++)
        dx[i] = mask[i] ? dy[i] * scale : 0.0f;
    return MT_OK;
}

static mt_status check_dense(const char *op, const mt_dense_desc *d) {
    if (d->batch <= 0 || d->in_features <= 0 || d->out_features <= 0)
        return MT_FAIL(MT_ERR_INVALID, "%s: bad shape batch %d, in %d, out %d", op, d->batch,
                       d->in_features, d->out_features);
    return MT_OK;
}

/* x: [N][in]; w: [in][out]; b: [out]; y: [N][out] = x*w + b */
mt_status mt_ref_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                               const float *w, const float *b, float *y) {
    MT_TRY(check_dense("dense_forward", desc));
    const int N = desc->batch, I = desc->in_features, O = desc->out_features;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < O; o++) {
            double acc = b[o];
            for (int i = 0; i < I; i++)
                acc += (double)x[(size_t)n * I + i] * w[(size_t)i * O + o];
            y[(size_t)n * O + o] = (float)acc;
        }
    }
    return MT_OK;
}

/* x: [N][in]; w: [in][out]; dy: [N][out]; dx: [N][in] = dy*w^T; dw: [in][out] = x^T*dy;
 * db: [out] = column sums of dy. Each of dx, dw, db may be NULL. */
mt_status mt_ref_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *dy, float *dx, float *dw, float *db) {
    MT_TRY(check_dense("dense_backward", desc));
    const int N = desc->batch, I = desc->in_features, O = desc->out_features;
    const int threads = mt_ref_threads(backend);
    if (dx) {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < I; i++) {
                double acc = 0.0;
                for (int o = 0; o < O; o++)
                    acc += (double)dy[(size_t)n * O + o] * w[(size_t)i * O + o];
                dx[(size_t)n * I + i] = (float)acc;
            }
        }
    }
    if (dw) {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
        for (int i = 0; i < I; i++) {
            for (int o = 0; o < O; o++) {
                double acc = 0.0;
                for (int n = 0; n < N; n++)
                    acc += (double)x[(size_t)n * I + i] * dy[(size_t)n * O + o];
                dw[(size_t)i * O + o] = (float)acc;
            }
        }
    }
    if (db) {
        for (int o = 0; o < O; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                acc += dy[(size_t)n * O + o];
            db[o] = (float)acc;
        }
    }
    return MT_OK;
}

/* logits: [N][classes]; labels: int32 [N], -1 = padding row; dlogits: [N][classes] or NULL.
 * Binary (one logit) or softmax cross-entropy, each row by ops/loss_row.h; the mean over the V
 * rows with label >= 0, so the gradient is divided by V. */
mt_status mt_ref_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                       const float *logits, const int32_t *labels, float *loss_host,
                                       float *dlogits) {
    const int N = desc->batch, K = desc->classes;
    if (N <= 0 || K <= 0)
        return MT_FAIL(MT_ERR_INVALID, "loss: bad shape batch %d, classes %d", N, K);
    const int label_limit = mt_loss_label_limit(K);
    int valid = 0;
    for (int n = 0; n < N; n++) {
        if (labels[n] >= label_limit || labels[n] < -1)
            return MT_FAIL(MT_ERR_INVALID,
                           "loss: label %d of row %d is outside [0, %d) (or -1 "
                           "for a padding row)",
                           (int)labels[n], n, label_limit);
        if (labels[n] >= 0) valid++;
    }
    const double inv_valid = valid > 0 ? 1.0 / valid : 0.0;
    double total = 0.0;
    for (int n = 0; n < N; n++)
        total += mt_loss_row(logits + (size_t)n * K, K, labels[n], inv_valid,
                             dlogits ? dlogits + (size_t)n * K : NULL);
    *loss_host = (float)(total * inv_valid);
    return MT_OK;
}

/* loss_forward_backward's mean, then the accumulator's bookkeeping (ops/loss_accum.h) */
mt_status mt_ref_loss_accumulate(mt_backend *backend, const mt_loss_desc *desc, const float *logits,
                                 const int32_t *labels, float *dlogits, const uint64_t *step,
                                 double *accum, float *skip) {
    float mean = 0.0f;
    MT_TRY(mt_ref_loss_forward_backward(backend, desc, logits, labels, &mean, dlogits));
    mt_loss_accum_add(accum, skip, desc, logits, labels, mean, *step);
    return MT_OK;
}

mt_status mt_ref_buffer_copy_if(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                const float *flag, double *count) {
    (void)backend;
    mt_host_buffer_copy_if(dst, src, bytes, flag, count);
    return MT_OK;
}
