/* The head of the "cpu" backend on plain row-major matrices: dropout (the shared hash decides
 * which elements are kept, so the mask equals the reference's bit for bit), the dense layer on
 * oneDNN's sgemm, and the cross-entropy losses on logits in their numerically stable forms. All
 * small next to the convolutions. */
#include <math.h>
#include <string.h>

#include "ops/cpu/cpu_internal.h"
#include "ops/dropout_hash.h"
#include "ops/loss_accum.h"
#include "ops/loss_row.h"

static mt_status check_rate(float rate) {
    if (!(rate >= 0.0f && rate < 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "cpu backend: dropout rate %g must be in [0, 1)",
                       (double)rate);
    return MT_OK;
}

/* x, y, mask: [count]; y may alias x */
mt_status mt_cpu_dropout_forward(mt_backend *backend, size_t count, float rate,
                                 const uint64_t *seed, const float *x, float *y, uint8_t *mask) {
    MT_TRY(check_rate(rate));
    uint32_t threshold = mt_dropout_threshold(rate);
    float scale = 1.0f / (1.0f - rate);
#pragma omp parallel for schedule(static)
    for (ptrdiff_t i = 0; i < (ptrdiff_t)count; i++) {
        bool keep = mt_dropout_keep(*seed, (uint64_t)i, threshold);
        mask[i] = keep;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
    return MT_OK;
}

/* mask, dy, dx: [count]; dx may alias dy */
mt_status mt_cpu_dropout_backward(mt_backend *backend, size_t count, float rate,
                                  const uint8_t *mask, const float *dy, float *dx) {
    MT_TRY(check_rate(rate));
    float scale = 1.0f / (1.0f - rate);
#pragma omp parallel for schedule(static)
    for (ptrdiff_t i = 0; i < (ptrdiff_t)count; i++)
        dx[i] = mask[i] ? dy[i] * scale : 0.0f;
    return MT_OK;
}

static mt_status check_dense(const mt_dense_desc *d) {
    if (d->batch <= 0 || d->in_features <= 0 || d->out_features <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: dense layer batch %d, in %d, out %d must be > 0", d->batch,
                       d->in_features, d->out_features);
    return MT_OK;
}

/* x: [N][in]; w: [in][out]; b: [out]; y: [N][out] = x*w + b */
mt_status mt_cpu_dense_forward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                               const float *w, const float *b, float *y) {
    MT_TRY(check_dense(desc));
    dnnl_dim_t n = desc->batch, in = desc->in_features, out = desc->out_features;
    for (dnnl_dim_t r = 0; r < n; r++)
        memcpy(y + r * out, b, (size_t)out * sizeof *y);
    DNNL_CHECK(dnnl_sgemm('N', 'N', n, out, in, 1.0f, x, in, w, out, 1.0f, y, out));
    return MT_OK;
}

/* dx: [N][in] = dy w^T; dw: [in][out] = x^T dy; db: [out] = column sums of dy; each may be NULL */
mt_status mt_cpu_dense_backward(mt_backend *backend, const mt_dense_desc *desc, const float *x,
                                const float *w, const float *dy, float *dx, float *dw, float *db) {
    MT_TRY(check_dense(desc));
    dnnl_dim_t n = desc->batch, in = desc->in_features, out = desc->out_features;
    if (dx) DNNL_CHECK(dnnl_sgemm('N', 'T', n, in, out, 1.0f, dy, out, w, out, 0.0f, dx, in));
    if (dw) DNNL_CHECK(dnnl_sgemm('T', 'N', in, out, n, 1.0f, x, in, dy, out, 0.0f, dw, out));
    if (db) {
        for (dnnl_dim_t o = 0; o < out; o++) {
            double sum = 0.0;
            for (dnnl_dim_t r = 0; r < n; r++)
                sum += dy[r * out + o];
            db[o] = (float)sum;
        }
    }
    return MT_OK;
}

/* logits, dlogits: [N][classes]; labels: [N], -1 = a padding row (no loss, zero gradient).
 * Binary (one logit) or softmax cross-entropy, each row by ops/loss_row.h (the reference's
 * formula, so the two agree to the last bit). Mean over the valid rows, so gradients are divided
 * by their count. */
mt_status mt_cpu_loss_forward_backward(mt_backend *backend, const mt_loss_desc *desc,
                                       const float *logits, const int32_t *labels, float *loss_host,
                                       float *dlogits) {
    int rows = desc->batch, classes = desc->classes;
    if (rows <= 0 || classes <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cpu backend: loss over %d rows of %d classes", rows,
                       classes);
    int limit = mt_loss_label_limit(classes), valid = 0;
    for (int r = 0; r < rows; r++) {
        if (labels[r] < -1 || labels[r] >= limit)
            return MT_FAIL(MT_ERR_INVALID,
                           "cpu backend: label %d of row %d is not in [0, %d) nor -1 (padding)",
                           (int)labels[r], r, limit);
        valid += labels[r] >= 0;
    }
    double per_row = valid ? 1.0 / valid : 0.0, total = 0.0;
    for (int r = 0; r < rows; r++)
        total += mt_loss_row(logits + (size_t)r * classes, classes, labels[r], per_row,
                             dlogits ? dlogits + (size_t)r * classes : NULL);
    *loss_host = (float)(total * per_row);
    return MT_OK;
}

/* loss_forward_backward's mean, then the accumulator's bookkeeping (ops/loss_accum.h) */
mt_status mt_cpu_loss_accumulate(mt_backend *backend, const mt_loss_desc *desc, const float *logits,
                                 const int32_t *labels, float *dlogits, const uint64_t *step,
                                 double *accum, float *skip) {
    float mean = 0.0f;
    MT_TRY(mt_cpu_loss_forward_backward(backend, desc, logits, labels, &mean, dlogits));
    mt_loss_accum_add(accum, skip, desc, logits, labels, mean, *step);
    return MT_OK;
}

mt_status mt_cpu_scalars_write(mt_backend *backend, void *dst, const void *host_src,
                               size_t bytes) {
    (void)backend;
    return mt_host_scalars_write(dst, host_src, bytes);
}

mt_status mt_cpu_readback_wait(mt_backend *backend) {
    return mt_host_readback_wait(backend);
}

mt_status mt_cpu_buffer_scale(mt_backend *backend, float *x, size_t count, const float *factor,
                              float *flag) {
    (void)backend;
    mt_host_buffer_scale(x, count, *factor, flag);
    return MT_OK;
}

mt_status mt_cpu_buffer_copy_if(mt_backend *backend, void *dst, const void *src, size_t bytes,
                                const float *flag, double *count) {
    (void)backend;
    mt_host_buffer_copy_if(dst, src, bytes, flag, count);
    return MT_OK;
}
