/* The optimizer update of one element, shared by every backend's optimizer_update op (the
 * reference and cpu loops, the CUDA kernel), so that the backends differ at most by the device's
 * float rounding, never by formula. The rules and the order of the float operations follow Keras
 * 3 (keras/src/optimizers/NAME.py; optimizer.h gives the formulas), all in float32. Usable from
 * C, C++ and CUDA device code. */
#ifndef MT_OPS_OPTIMIZER_UPDATE_H
#define MT_OPS_OPTIMIZER_UPDATE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"
#include "mobiletune/status.h"

#if defined(__CUDACC__)
#define MT_UPDATE_FN static inline __host__ __device__
#else
#define MT_UPDATE_FN static inline
#endif

/* Adam's step size for a step at rate lr after `iterations` steps, on float32 scalars as Keras
 * computes it:  t = iterations + 1;  alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t).
 * Computed once on the host per step (not per element: mt_update_scalars.step). Other rules:
 * lr. */
static inline float mt_update_step_size(mt_update_rule rule, float beta_1, float beta_2, float lr,
                                        uint64_t iterations) {
    if (rule != MT_UPDATE_ADAM) return lr;
    float t = (float)(iterations + 1);
    float b1_power = powf(beta_1, t), b2_power = powf(beta_2, t);
    return lr * sqrtf(1.0f - b2_power) / (1.0f - b1_power);
}

/* How many slots of `count` floats the rule keeps (see mt_optimizer_desc). */
MT_UPDATE_FN int mt_update_slot_count(const mt_optimizer_desc *d) {
    switch (d->rule) {
    case MT_UPDATE_RMSPROP:
        return d->momentum > 0.0f ? 2 : 1;
    case MT_UPDATE_SGD:
        return d->momentum != 0.0f ? 1 : 0;
    case MT_UPDATE_ADAM:
        return 2;
    }
    return 0;
}

/* Floats from slot 0 to slot 1 (mt_optimizer_desc.slot_stride; 0 is count). */
MT_UPDATE_FN size_t mt_update_slot_stride(const mt_optimizer_desc *d) {
    return d->slot_stride ? d->slot_stride : d->count;
}

/* Slot k (0 or 1) of `slots`, or NULL when the rule keeps fewer slots: the s0/s1 arguments of
 * mt_update_element. */
MT_UPDATE_FN float *mt_update_slot(const mt_optimizer_desc *d, float *slots, int k) {
    if (k >= mt_update_slot_count(d)) return NULL;
    return k == 0 ? slots : slots + mt_update_slot_stride(d); /* slots is NULL when count is 0 */
}

#if !defined(__CUDACC__)
/* The argument checks every backend's optimizer_update makes first (`backend_name` names it). */
static inline mt_status mt_update_check(const char *backend_name, const mt_optimizer_desc *d,
                                        const float *params, const float *grads,
                                        const float *slots) {
    if (d->rule != MT_UPDATE_RMSPROP && d->rule != MT_UPDATE_SGD && d->rule != MT_UPDATE_ADAM)
        return MT_FAIL(MT_ERR_INVALID, "%s optimizer_update: unknown rule %d", backend_name,
                       (int)d->rule);
    if (!d->scalars)
        return MT_FAIL(MT_ERR_INVALID, "%s optimizer_update: the step's scalars are NULL",
                       backend_name);
    if (d->count && (!params || !grads || (mt_update_slot_count(d) > 0 && !slots)))
        return MT_FAIL(MT_ERR_INVALID, "%s optimizer_update: %s is NULL", backend_name,
                       !params ? "params" : !grads ? "grads" : "slots");
    return MT_OK;
}
#endif

/* Element i: p[i], and the slots s0[i], s1[i] as the rule keeps them (s0/s1 point at slot 0/1:
 * NULL when the rule has no such slot). `v` is *d->scalars, read once by the caller (the host,
 * or a kernel from device memory). Keras applies the decoupled weight decay first, with the
 * step's lr. */
MT_UPDATE_FN void mt_update_element(const mt_optimizer_desc *d, mt_update_scalars v, size_t i,
                                    float *p, const float *g, float *s0, float *s1) {
    const float lr = v.lr, step = v.step, gi = g[i];
    float pi = p[i];
    if (d->weight_decay > 0.0f) pi = pi - pi * d->weight_decay * lr;
    switch (d->rule) {
    case MT_UPDATE_RMSPROP: {
        /* v = rho*v + (1-rho)*g^2;  d = lr*g / sqrt(v + eps), eps inside the root */
        float vi = d->rho * s0[i] + (1.0f - d->rho) * (gi * gi);
        s0[i] = vi;
        float increment = (lr * gi) / sqrtf(vi + d->epsilon);
        if (d->momentum > 0.0f) {
            float mi = d->momentum * s1[i] + increment;
            s1[i] = mi;
            pi -= mi;
        } else {
            pi -= increment;
        }
        break;
    }
    case MT_UPDATE_SGD:
        if (d->momentum == 0.0f) {
            pi -= gi * lr;
        } else {
            float mi = s0[i] * d->momentum - gi * lr;
            s0[i] = mi;
            pi += d->nesterov ? mi * d->momentum - gi * lr : mi;
        }
        break;
    case MT_UPDATE_ADAM: {
        float mi = s0[i] + (gi - s0[i]) * (1.0f - d->beta_1);
        float vi = s1[i] + (gi * gi - s1[i]) * (1.0f - d->beta_2);
        s0[i] = mi;
        s1[i] = vi;
        pi -= (mi * step) / (sqrtf(vi) + d->epsilon);
        break;
    }
    }
    p[i] = pi;
}

#undef MT_UPDATE_FN
#endif
