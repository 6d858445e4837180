/* The cross-entropy of one row of logits and its gradient, shared by every backend's loss (the
 * reference and cpu loops, the CUDA kernel in cuda_kernels_elementwise.cu), so that the backends
 * differ at most by the device's rounding of exp and log, never by formula. In double, rounded to
 * float only for the gradient. Usable from C, C++ and CUDA device code (as optimizer_update.h). */
#ifndef MT_OPS_LOSS_ROW_H
#define MT_OPS_LOSS_ROW_H

#include <math.h>
#include <stddef.h>

#if defined(__CUDACC__)
#define MT_LOSS_FN static inline __host__ __device__
#else
#define MT_LOSS_FN static inline
#endif

/* Labels of a loss over `classes` logits are in [0, limit): one logit is a binary loss (0 or 1);
 * -1 marks a padding row. */
MT_LOSS_FN int mt_loss_label_limit(int classes) {
    return classes == 1 ? 2 : classes;
}

/* z: the row's K logits; t: its label, in [0, mt_loss_label_limit(K)), or negative for a row
 * that takes no part (padding); inv_valid: 1 / the batch's valid rows, since the loss is their
 * mean; dz: K floats for the gradient of that mean, or NULL. Returns the row's loss (0 for a
 * padding row, whose gradient is zero).
 *   K == 1: binary cross-entropy of sigmoid(z) with label t in {0,1}:
 *       loss = max(z,0) - z*t + log1p(exp(-|z|)),   dloss/dz = sigmoid(z) - t
 *   K > 1: softmax cross-entropy with label t in [0, K):
 *       loss = logsumexp(z) - z[t],                  dloss/dz = softmax(z) - onehot(t) */
MT_LOSS_FN double mt_loss_row(const float *z, int K, int t, double inv_valid, float *dz) {
    if (t < 0) {
        if (dz)
            for (int k = 0; k < K; k++)
                dz[k] = 0.0f;
        return 0.0;
    }
    if (K == 1) {
        const double zz = z[0];
        if (dz) {
            /* sigmoid without overflow for either sign of z */
            const double s = zz >= 0 ? 1.0 / (1.0 + exp(-zz)) : exp(zz) / (1.0 + exp(zz));
            dz[0] = (float)((s - t) * inv_valid);
        }
        return fmax(zz, 0.0) - zz * t + log1p(exp(-fabs(zz)));
    }
    double top = z[0];
    for (int k = 1; k < K; k++)
        top = fmax(top, (double)z[k]);
    double sum = 0.0;
    for (int k = 0; k < K; k++)
        sum += exp(z[k] - top);
    const double log_sum = log(sum) + top;
    if (dz)
        for (int k = 0; k < K; k++)
            dz[k] = (float)((exp(z[k] - log_sum) - (k == t ? 1.0 : 0.0)) * inv_valid);
    return log_sum - z[t];
}

#endif
