/* RMSprop, SGD and Adam with Keras 3's update rules on one flat float array, and the learning-rate
 * schedules. The formulas are in optimizer.h; the update itself is the backend's optimizer_update
 * op (ops/optimizer_update.h follows Keras' order of float operations so that results agree with
 * tf.keras to float rounding). This file keeps the bookkeeping: parameters, slots in backend
 * memory, the iteration count, checkpoints. */
#include "mobiletune/optimizer.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/checkpoint.h"
#include "ops/optimizer_update.h"

_Static_assert((int)MT_OPTIMIZER_RMSPROP == (int)MT_UPDATE_RMSPROP &&
                   (int)MT_OPTIMIZER_SGD == (int)MT_UPDATE_SGD &&
                   (int)MT_OPTIMIZER_ADAM == (int)MT_UPDATE_ADAM,
               "optimizer kinds and the ops' update rules share their values");

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

static const char *const optimizer_kind_names[] = {
    [MT_OPTIMIZER_RMSPROP] = "rmsprop", [MT_OPTIMIZER_SGD] = "sgd", [MT_OPTIMIZER_ADAM] = "adam"};
const mt_enum_names mt_optimizer_kind_names = MT_ENUM_NAMES(optimizer_kind_names);

const char *mt_optimizer_kind_name(mt_optimizer_kind kind) {
    return mt_enum_name(&mt_optimizer_kind_names, (int)kind);
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

mt_status mt_optimizer_init(mt_optimizer *optimizer, mt_backend *backend,
                            const mt_optimizer_params *params, size_t count) {
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
    if (!backend->ops->optimizer_update)
        return MT_FAIL(MT_ERR_INVALID, "backend '%s' has no optimizer_update op",
                       backend->ops->name);
    optimizer->params = *params;
    optimizer->backend = backend;
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
    mt_status status = backend->ops->buffer_alloc(backend, sizeof *optimizer->scalars,
                                                  (void **)&optimizer->scalars);
    if (status != MT_OK) {
        optimizer->scalars = NULL;
        return mt_error_context(status, "optimizer rate");
    }
    size_t total = (size_t)optimizer->slot_count * count;
    if (total > 0) {
        status = backend->ops->buffer_alloc(backend, total * sizeof(float),
                                            (void **)&optimizer->state);
        if (status != MT_OK) {
            optimizer->state = NULL;
            return mt_error_context(status, "optimizer state: %zu floats", total);
        }
    }
    return MT_OK;
}

void mt_optimizer_free(mt_optimizer *optimizer) {
    if (optimizer->state)
        optimizer->backend->ops->buffer_free(optimizer->backend, optimizer->state);
    if (optimizer->scalars)
        optimizer->backend->ops->buffer_free(optimizer->backend, optimizer->scalars);
    memset(optimizer, 0, sizeof *optimizer);
}

float *mt_optimizer_slot(mt_optimizer *optimizer, int slot) {
    if (slot < 0 || slot >= optimizer->slot_count) return NULL;
    return optimizer->state + (size_t)slot * optimizer->count;
}

mt_status mt_optimizer_slot_download(mt_optimizer *optimizer, int slot, float *host) {
    float *state = mt_optimizer_slot(optimizer, slot);
    if (!state) return MT_FAIL(MT_ERR_INVALID, "optimizer has no slot %d", slot);
    return optimizer->backend->ops->download(optimizer->backend, host, state,
                                             optimizer->count * sizeof(float));
}

mt_status mt_optimizer_slot_upload(mt_optimizer *optimizer, int slot, const float *host) {
    float *state = mt_optimizer_slot(optimizer, slot);
    if (!state) return MT_FAIL(MT_ERR_INVALID, "optimizer has no slot %d", slot);
    return optimizer->backend->ops->upload(optimizer->backend, state, host,
                                           optimizer->count * sizeof(float));
}

mt_status mt_optimizer_reset(mt_optimizer *optimizer) {
    size_t total = (size_t)optimizer->slot_count * optimizer->count;
    if (total) {
        float *zeros = calloc(total, sizeof *zeros);
        if (!zeros) return MT_FAIL(MT_ERR_NOMEM, "out of memory resetting the optimizer");
        mt_status status = optimizer->backend->ops->upload(optimizer->backend, optimizer->state,
                                                           zeros, total * sizeof *zeros);
        free(zeros);
        MT_TRY(status);
    }
    optimizer->iterations = 0;
    return MT_OK;
}

mt_status mt_optimizer_set_rate(mt_optimizer *optimizer, float lr) {
    if (!isfinite(lr) || lr < 0.0f)
        return MT_FAIL(MT_ERR_INVALID, "optimizer step: learning rate %g must be finite and >= 0",
                       (double)lr);
    const mt_optimizer_params *hp = &optimizer->params;
    const mt_update_scalars values = {
        .lr = lr,
        .step = mt_update_step_size((mt_update_rule)hp->kind, hp->beta_1, hp->beta_2, lr,
                                    optimizer->iterations),
    };
    mt_backend *backend = optimizer->backend;
    return backend->ops->scalars_write(backend, optimizer->scalars, &values, sizeof values);
}

mt_status mt_optimizer_update_range(mt_optimizer *optimizer, float *params, const float *grads,
                                    size_t offset, size_t count) {
    if (offset > optimizer->count || count > optimizer->count - offset)
        return MT_FAIL(MT_ERR_INVALID,
                       "optimizer update of parameters [%zu, %zu), but the optimizer was set up "
                       "for %zu", offset, offset + count, optimizer->count);
    const mt_optimizer_params *hp = &optimizer->params;
    mt_optimizer_desc desc = {
        .rule = (mt_update_rule)hp->kind,
        .count = count,
        .scalars = optimizer->scalars,
        .rho = hp->rho,
        .momentum = hp->momentum,
        .epsilon = hp->epsilon,
        .beta_1 = hp->beta_1,
        .beta_2 = hp->beta_2,
        .weight_decay = hp->weight_decay,
        .nesterov = hp->nesterov,
        .slot_stride = optimizer->count,
        .skip = optimizer->skip,
    };
    return optimizer->backend->ops->optimizer_update(
        optimizer->backend, &desc, params + offset, grads + offset,
        optimizer->state ? optimizer->state + offset : NULL);
}

void mt_optimizer_step_done(mt_optimizer *optimizer) {
    optimizer->iterations++;
}

mt_status mt_optimizer_step(mt_optimizer *optimizer, float *params, const float *grads,
                            size_t count, float lr) {
    if (count != optimizer->count)
        return MT_FAIL(MT_ERR_INVALID,
                       "optimizer step on %zu parameters, but the optimizer was set up for %zu",
                       count, optimizer->count);
    MT_TRY(mt_optimizer_set_rate(optimizer, lr));
    MT_TRY(mt_optimizer_update_range(optimizer, params, grads, 0, count));
    mt_optimizer_step_done(optimizer);
    return MT_OK;
}

/* ---- checkpoints ------------------------------------------------------------------------------
 */

mt_status mt_optimizer_save(const mt_optimizer *optimizer, mt_checkpoint *checkpoint) {
    char name[64];
    float *host = optimizer->slot_count ? malloc(optimizer->count * sizeof *host + 1) : NULL;
    if (optimizer->slot_count && !host)
        return MT_FAIL(MT_ERR_NOMEM, "out of memory saving the optimizer");
    mt_status status = MT_OK;
    for (int s = 0; status == MT_OK && s < optimizer->slot_count; s++) {
        snprintf(name, sizeof name, "optimizer/%s", optimizer->slot_names[s]);
        uint64_t shape[1] = {optimizer->count};
        status = mt_optimizer_slot_download((mt_optimizer *)optimizer, s, host);
        if (status == MT_OK)
            status = mt_checkpoint_add(checkpoint, name, MT_CHECKPOINT_F32, 1, shape, host);
    }
    free(host);
    MT_TRY(status);
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
        /* a NaN in a slot would poison every later step of a resumed run */
        MT_TRY(mt_checkpoint_check_finite(checkpoint, name));
    }
    float *host = optimizer->slot_count ? malloc(optimizer->count * sizeof *host + 1) : NULL;
    if (optimizer->slot_count && !host)
        return MT_FAIL(MT_ERR_NOMEM, "out of memory loading the optimizer");
    mt_status status = MT_OK;
    for (int s = 0; status == MT_OK && s < optimizer->slot_count; s++) {
        snprintf(name, sizeof name, "optimizer/%s", optimizer->slot_names[s]);
        status = mt_checkpoint_get_f32(checkpoint, name, host, optimizer->count, 0, NULL);
        if (status == MT_OK) status = mt_optimizer_slot_upload(optimizer, s, host);
    }
    free(host);
    MT_TRY(status);
    optimizer->iterations = iterations;
    return MT_OK;
}

/* ---- schedules ------------------------------------------------------------------------------ */

static const char *const lr_schedule_kind_names[] = {
    [MT_LR_CONSTANT] = "constant", [MT_LR_STEP] = "step", [MT_LR_COSINE] = "cosine"};
const mt_enum_names mt_lr_schedule_kind_names = MT_ENUM_NAMES(lr_schedule_kind_names);

const char *mt_lr_schedule_kind_name(mt_lr_schedule_kind kind) {
    return mt_enum_name(&mt_lr_schedule_kind_names, (int)kind);
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
