/* The host-side bodies of the per-step ops for the backends whose memory the host reaches
 * (reference, cpu), shared so both follow ops.h's rules once: loss_accumulate's bookkeeping (the
 * backend computes the step's mean loss with its own loss_forward_backward, then
 * mt_loss_accum_add adds it, the valid rows and the rows predicted right to the accumulator;
 * cuda_kernels_elementwise.cu's loss kernel does the same on the device), buffer_scale,
 * scalars_write, readback_wait and buffer_copy_if. */
#ifndef MOBILETUNE_OPS_LOSS_ACCUM_H
#define MOBILETUNE_OPS_LOSS_ACCUM_H

#include <math.h>
#include <string.h>

#include "mobiletune/ops.h"

static inline void mt_loss_accum_add(double *accum, float *skip, const mt_loss_desc *desc,
                                     const float *logits, const int32_t *labels, float mean,
                                     uint64_t step) {
    if (!isfinite(mean)) {
        if (accum[MT_ACCUM_SKIPPED] == 0.0) accum[MT_ACCUM_FIRST_SKIP] = (double)step;
        accum[MT_ACCUM_SKIPPED] += 1.0;
        *skip = 1.0f;
        return;
    }
    const int limit = desc->classes == 1 ? 2 : desc->classes;
    int valid = 0, correct = 0;
    for (int n = 0; n < desc->batch; n++) {
        if (labels[n] < 0 || labels[n] >= limit) continue;
        valid++;
        correct +=
            mt_accum_predicted(logits + (size_t)n * desc->classes, desc->classes) == labels[n];
    }
    accum[MT_ACCUM_LOSS_SUM] += (double)mean * valid;
    accum[MT_ACCUM_CORRECT] += correct;
    accum[MT_ACCUM_VALID] += valid;
    *skip = 0.0f;
}

/* buffer_scale on host memory (ops.h): the product rounded once per element */
static inline void mt_host_buffer_scale(float *x, size_t count, float factor, float *flag) {
    int finite = 1;
    for (size_t i = 0; i < count; i++) {
        x[i] *= factor;
        finite &= isfinite(x[i]) != 0;
    }
    if (flag && !finite) *flag = 1.0f;
}

/* scalars_write on host memory (ops.h) */
static inline mt_status mt_host_scalars_write(void *dst, const void *host_src, size_t bytes) {
    if (bytes > MT_SCALARS_MAX_BYTES)
        return MT_FAIL(MT_ERR_INVALID, "scalars_write of %zu bytes: at most %d", bytes,
                       (int)MT_SCALARS_MAX_BYTES);
    if (bytes) memcpy(dst, host_src, bytes);
    return MT_OK;
}

/* readback_wait on host memory: the copy was made at readback_start */
static inline mt_status mt_host_readback_wait(mt_backend *backend) {
    (void)backend;
    return MT_OK;
}

/* buffer_copy_if on host memory */
static inline void mt_host_buffer_copy_if(void *dst, const void *src, size_t bytes,
                                          const float *flag, double *count) {
    if (*flag == 0.0f) return;
    if (bytes) memcpy(dst, src, bytes);
    if (count) *count += 1.0;
}

#endif
