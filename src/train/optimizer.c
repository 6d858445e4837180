/* RMSprop, SGD and Adam with Keras 3's update rules on one flat float array, and the learning-rate
 * schedules. The formulas are in optimizer.h; the order of the float operations below follows
 * Keras' code so that results agree with tf.keras to float rounding. */
#include "mobiletune/optimizer.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/checkpoint.h"

/* Threads pay off only on big arrays: the frozen head is 1,281 floats. */
enum { PARALLEL_MIN = 1 << 15 };

mt_optimizer_params mt_optimizer_params_default(mt_optimizer_kind kind) {
    return (mt_optimizer_params){
        .kind = kind,
        .rho = 0.9f,
        .momentum = 0.0f,
        .epsilon = 1e-7f,
        .nesterov = false,
        .beta_1 = 0.9f,
        .beta_2 = 0.999f,
        .weight_decay = 0.0f,
    };
}

const char *mt_optimizer_kind_name(mt_optimizer_kind kind) {
    switch (kind) {
    case MT_OPTIMIZER_RMSPROP:
        return "rmsprop";
    case MT_OPTIMIZER_SGD:
        return "sgd";
    case MT_OPTIMIZER_ADAM:
        return "adam";
    }
    return "unknown";
}

int mt_optimizer_slot_count(const mt_optimizer_params *params) {
    switch (params->kind) {
    case MT_OPTIMIZER_RMSPROP:
        return params->momentum > 0.0f ? 2 : 1;
    case MT_OPTIMIZER_SGD:
        return params->momentum != 0.0f ? 1 : 0;
    case MT_OPTIMIZER_ADAM:
        return 2;
    }
    return 0;
}

static mt_status check_unit(const char *name, float value, bool closed_top) {
    if (!isfinite(value) || value < 0.0f || (closed_top ? value > 1.0f : value >= 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "optimizer %s = %g is out of range: use [0, 1%s", name,
                       (double)value, closed_top ? "]" : ")");
    return MT_OK;
}

mt_status mt_optimizer_init(mt_optimizer *optimizer, const mt_optimizer_params *params,
                            size_t count) {
    memset(optimizer, 0, sizeof *optimizer);
    if (params->kind != MT_OPTIMIZER_RMSPROP && params->kind != MT_OPTIMIZER_SGD &&
        params->kind != MT_OPTIMIZER_ADAM)
        return MT_FAIL(MT_ERR_INVALID, "unknown optimizer kind %d: use rmsprop, sgd or adam",
                       (int)params->kind);
    MT_TRY(check_unit("rho", params->rho, false));
    MT_TRY(check_unit("momentum", params->momentum, false));
    MT_TRY(check_unit("beta_1", params->beta_1, false));
    MT_TRY(check_unit("beta_2", params->beta_2, false));
    MT_TRY(check_unit("weight_decay", params->weight_decay, true));
    if (!isfinite(params->epsilon) || params->epsilon <= 0.0f)
        return MT_FAIL(MT_ERR_INVALID, "optimizer epsilon = %g must be > 0 (Keras: 1e-7)",
                       (double)params->epsilon);
    optimizer->params = *params;
    optimizer->count = count;
    optimizer->slot_count = mt_optimizer_slot_count(params);
    switch (params->kind) {
    case MT_OPTIMIZER_RMSPROP:
        optimizer->slot_names[0] = "velocity";
        optimizer->slot_names[1] = "momentum";
        break;
    case MT_OPTIMIZER_SGD:
        optimizer->slot_names[0] = "momentum";
        break;
    case MT_OPTIMIZER_ADAM:
        optimizer->slot_names[0] = "momentum";
        optimizer->slot_names[1] = "velocity";
        break;
    }
    size_t total = (size_t)optimizer->slot_count * count;
    if (total > 0) {
        optimizer->state = calloc(total, sizeof(float));
        if (!optimizer->state)
            return MT_FAIL(MT_ERR_NOMEM, "optimizer state: cannot allocate %zu floats", total);
    }
    return MT_OK;
}

void mt_optimizer_free(mt_optimizer *optimizer) {
    free(optimizer->state);
    memset(optimizer, 0, sizeof *optimizer);
}

float *mt_optimizer_slot(mt_optimizer *optimizer, int slot) {
    if (slot < 0 || slot >= optimizer->slot_count) return NULL;
    return optimizer->state + (size_t)slot * optimizer->count;
}

void mt_optimizer_reset(mt_optimizer *optimizer) {
    if (optimizer->state)
        memset(optimizer->state, 0,
               (size_t)optimizer->slot_count * optimizer->count * sizeof(float));
    optimizer->iterations = 0;
}

/* Keras applies the decay before the update, with the same rate. */
static void apply_weight_decay(float *p, size_t n, float wd, float lr) {
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        p[i] = p[i] - p[i] * wd * lr;
}

static void rmsprop_step(float *p, const float *g, float *v, float *m, size_t n, float lr,
                         float rho, float momentum, float eps) {
    const float one_minus_rho = 1.0f - rho;
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float vi = rho * v[i] + one_minus_rho * (g[i] * g[i]);
        v[i] = vi;
        float increment = (lr * g[i]) / sqrtf(vi + eps);
        if (m) {
            float mi = momentum * m[i] + increment;
            m[i] = mi;
            p[i] -= mi;
        } else {
            p[i] -= increment;
        }
    }
}

static void sgd_step(float *p, const float *g, float *m, size_t n, float lr, float momentum,
                     bool nesterov) {
    if (!m) {
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            p[i] -= g[i] * lr;
        return;
    }
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float mi = m[i] * momentum - g[i] * lr;
        m[i] = mi;
        p[i] += nesterov ? mi * momentum - g[i] * lr : mi;
    }
}

static void adam_step(float *p, const float *g, float *m, float *v, size_t n, float alpha,
                      float beta_1, float beta_2, float eps) {
    const float one_minus_b1 = 1.0f - beta_1, one_minus_b2 = 1.0f - beta_2;
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float mi = m[i] + (g[i] - m[i]) * one_minus_b1;
        float vi = v[i] + (g[i] * g[i] - v[i]) * one_minus_b2;
        m[i] = mi;
        v[i] = vi;
        p[i] -= (mi * alpha) / (sqrtf(vi) + eps);
    }
}

mt_status mt_optimizer_step(mt_optimizer *optimizer, float *params, const float *grads,
                            size_t count, float lr) {
    if (count != optimizer->count)
        return MT_FAIL(MT_ERR_INVALID,
                       "optimizer step on %zu parameters, but the optimizer was set up for %zu",
                       count, optimizer->count);
    if (!isfinite(lr) || lr < 0.0f)
        return MT_FAIL(MT_ERR_INVALID, "optimizer step: learning rate %g must be finite and >= 0",
                       (double)lr);
    const mt_optimizer_params *hp = &optimizer->params;
    if (hp->weight_decay > 0.0f) apply_weight_decay(params, count, hp->weight_decay, lr);
    switch (hp->kind) {
    case MT_OPTIMIZER_RMSPROP:
        rmsprop_step(params, grads, mt_optimizer_slot(optimizer, 0),
                     mt_optimizer_slot(optimizer, 1), count, lr, hp->rho, hp->momentum,
                     hp->epsilon);
        break;
    case MT_OPTIMIZER_SGD:
        sgd_step(params, grads, mt_optimizer_slot(optimizer, 0), count, lr, hp->momentum,
                 hp->nesterov);
        break;
    case MT_OPTIMIZER_ADAM: {
        /* Keras computes the powers and alpha on float32 scalars. */
        float t = (float)(optimizer->iterations + 1);
        float b1_power = powf(hp->beta_1, t), b2_power = powf(hp->beta_2, t);
        float alpha = lr * sqrtf(1.0f - b2_power) / (1.0f - b1_power);
        adam_step(params, grads, mt_optimizer_slot(optimizer, 0), mt_optimizer_slot(optimizer, 1),
                  count, alpha, hp->beta_1, hp->beta_2, hp->epsilon);
        break;
    }
    }
    optimizer->iterations++;
    return MT_OK;
}

/* ---- checkpoints ------------------------------------------------------------------------------
 */

mt_status mt_optimizer_save(const mt_optimizer *optimizer, mt_checkpoint *checkpoint) {
    char name[64];
    for (int s = 0; s < optimizer->slot_count; s++) {
        snprintf(name, sizeof name, "optimizer/%s", optimizer->slot_names[s]);
        uint64_t shape[1] = {optimizer->count};
        MT_TRY(mt_checkpoint_add(checkpoint, name, MT_CHECKPOINT_F32, 1, shape,
                                 optimizer->state + (size_t)s * optimizer->count));
    }
    char iterations[32];
    snprintf(iterations, sizeof iterations, "%" PRIu64, optimizer->iterations);
    MT_TRY(mt_checkpoint_set_meta(checkpoint, "optimizer",
                                  mt_optimizer_kind_name(optimizer->params.kind)));
    return mt_checkpoint_set_meta(checkpoint, "optimizer_iterations", iterations);
}

mt_status mt_optimizer_load(mt_optimizer *optimizer, const mt_checkpoint *checkpoint) {
    const char *path = mt_checkpoint_path(checkpoint);
    const char *kind = mt_checkpoint_meta(checkpoint, "optimizer");
    const char *want = mt_optimizer_kind_name(optimizer->params.kind);
    if (!kind || strcmp(kind, want) != 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "checkpoint '%s' holds %s optimizer state, but the optimizer is %s (set "
                       "[optimizer] name to match, or start without --resume)",
                       path, kind ? kind : "no", want);
    const char *text = mt_checkpoint_meta(checkpoint, "optimizer_iterations");
    char *end = NULL;
    errno = 0;
    unsigned long long iterations = text ? strtoull(text, &end, 10) : 0;
    if (!text || !*text || *end != '\0' || errno == ERANGE || text[0] == '-')
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': optimizer_iterations '%s' is not a count",
                       path, text ? text : "(missing)");
    /* Check every slot before changing anything. */
    char name[64];
    for (int s = 0; s < optimizer->slot_count; s++) {
        snprintf(name, sizeof name, "optimizer/%s", optimizer->slot_names[s]);
        const mt_checkpoint_tensor *t = mt_checkpoint_find(checkpoint, name);
        if (!t || t->dtype != MT_CHECKPOINT_F32 || t->count != optimizer->count)
            return MT_FAIL(MT_ERR_FORMAT,
                           "checkpoint '%s': tensor '%s' %s; the optimizer has %zu trainable "
                           "parameters (was the checkpoint written with another mode, "
                           "fine_tune_at or momentum?)",
                           path, name, !t ? "is missing" : "has another size or dtype",
                           optimizer->count);
    }
    for (int s = 0; s < optimizer->slot_count; s++) {
        snprintf(name, sizeof name, "optimizer/%s", optimizer->slot_names[s]);
        MT_TRY(mt_checkpoint_get_f32(checkpoint, name, mt_optimizer_slot(optimizer, s),
                                     optimizer->count, 0, NULL));
    }
    optimizer->iterations = iterations;
    return MT_OK;
}

/* ---- schedules ------------------------------------------------------------------------------ */

const char *mt_lr_schedule_kind_name(mt_lr_schedule_kind kind) {
    switch (kind) {
    case MT_LR_CONSTANT:
        return "constant";
    case MT_LR_STEP:
        return "step";
    case MT_LR_COSINE:
        return "cosine";
    }
    return "unknown";
}

double mt_lr_schedule_at(const mt_lr_schedule *s, uint64_t step) {
    /* The ramp starts at base/warmup, not 0: a step at rate 0 would be wasted. */
    if (s->warmup_steps > 0 && step < (uint64_t)s->warmup_steps)
        return s->base_lr * (double)(step + 1) / (double)s->warmup_steps;
    uint64_t warmup = s->warmup_steps > 0 ? (uint64_t)s->warmup_steps : 0;
    uint64_t t = step - warmup;
    switch (s->kind) {
    case MT_LR_CONSTANT:
        return s->base_lr;
    case MT_LR_STEP: {
        if (s->step_size <= 0) return s->base_lr;
        return s->base_lr * pow(s->gamma, (double)(t / (uint64_t)s->step_size));
    }
    case MT_LR_COSINE: {
        double span = (double)s->total_steps - (double)warmup;
        double progress = span > 0.0 ? fmin(1.0, (double)t / span) : 1.0;
        double cosine = 0.5 * (1.0 + cos(M_PI * progress));
        return s->base_lr * (s->final_fraction + (1.0 - s->final_fraction) * cosine);
    }
    }
    return s->base_lr;
}
