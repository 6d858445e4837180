/* Optimizers on one flat float array (the model's trainable buffer and its gradient buffer), with
 * Keras 3's update rules so the tutorial's hyper-parameters mean the same here, and learning-rate
 * schedules in steps.
 *
 * Per element, with g the gradient, lr the step's rate (keras/src/optimizers/NAME.py):
 *   weight decay (all optimizers, applied first, decoupled as Keras 3 does):  p -= p * wd * lr
 *   RMSprop:  v = rho*v + (1-rho)*g^2;  d = lr*g / sqrt(v + eps)   (eps INSIDE the root)
 *             momentum > 0:  m = momentum*m + d;  p -= m      else  p -= d
 *   SGD:      momentum > 0:  m = momentum*m - lr*g;  p += nesterov ? momentum*m - lr*g : m
 *             else           p -= lr*g
 *   Adam:     t = iterations + 1;  a = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
 *             m += (g - m)*(1-beta_1);  v += (g^2 - v)*(1-beta_2);  p -= m*a / (sqrt(v) + eps)
 * All arithmetic is float32, as Keras does it on float32 variables. The update is the backend's
 * optimizer_update op (ops.h; every backend applies ops/optimizer_update.h per element) on the
 * trainable buffer in place. The state ("slots") is zero-initialized backend memory, one array
 * of slot_count * count floats, slot after slot; only the iteration count lives on the host. The
 * step's rate (and Adam's step size) go to backend memory before the update
 * (mt_optimizer_set_rate), where the op reads them: a captured training step replays the same
 * update call, step after step, with that step's rate (ops.h "Per-step values"). */
#ifndef MOBILETUNE_OPTIMIZER_H
#define MOBILETUNE_OPTIMIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"
#include "mobiletune/enum_names.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mt_optimizer_kind {
    MT_OPTIMIZER_RMSPROP = 0,
    MT_OPTIMIZER_SGD,
    MT_OPTIMIZER_ADAM,
} mt_optimizer_kind;
extern const mt_enum_names mt_optimizer_kind_names; /* rmsprop|sgd|adam: optimizer.name */

typedef struct mt_optimizer_params {
    mt_optimizer_kind kind;
    float rho;          /* RMSprop; Keras 0.9 */
    float momentum;     /* RMSprop, SGD; Keras 0.0 */
    float epsilon;      /* RMSprop, Adam; Keras 1e-7 */
    bool nesterov;      /* SGD */
    float beta_1;       /* Adam; Keras 0.9 */
    float beta_2;       /* Adam; Keras 0.999 */
    float weight_decay; /* 0: none */
} mt_optimizer_params;

/* Keras' defaults for `kind`. */
mt_optimizer_params mt_optimizer_params_default(mt_optimizer_kind kind);

/* "rmsprop", "sgd", "adam" */
const char *mt_optimizer_kind_name(mt_optimizer_kind kind);

enum { MT_OPTIMIZER_MAX_SLOTS = 2 };

typedef struct mt_optimizer {
    mt_optimizer_params params;
    mt_backend *backend;                            /* where the state lives and the step runs */
    size_t count;                                   /* parameters */
    int slot_count;                                 /* state arrays of `count` floats each */
    const char *slot_names[MT_OPTIMIZER_MAX_SLOTS]; /* Keras' names: "velocity", "momentum" ... */
    float *state; /* slot_count * count floats in backend memory, slot s at state + s*count */
    mt_update_scalars *scalars; /* backend memory: the step's rate (mt_optimizer_set_rate) */
    uint64_t iterations; /* steps taken (Keras' optimizer.iterations) */
    /* NULL, or the skip flag every update reads in backend memory (mt_optimizer_desc.skip: the
     * trainer's, after the gradients, so a non-finite step changes nothing without the host
     * looking) */
    const float *skip;
} mt_optimizer;

/* Slots of an optimizer: RMSprop velocity (+ momentum when momentum > 0), SGD momentum when
 * momentum > 0, Adam momentum and velocity. */
int mt_optimizer_slot_count(const mt_optimizer_params *params);

/* Validate the parameters (ranges as Keras accepts them) and allocate zeroed state for `count`
 * parameters in `backend`'s memory (the backend must outlive the optimizer). */
mt_status mt_optimizer_init(mt_optimizer *optimizer, mt_backend *backend,
                            const mt_optimizer_params *params, size_t count);
void mt_optimizer_free(mt_optimizer *optimizer);

/* Slot `slot`'s array (count floats, backend memory: copy it with the backend's upload/download,
 * or mt_optimizer_slot_download/upload). NULL for a slot the optimizer does not have. */
float *mt_optimizer_slot(mt_optimizer *optimizer, int slot);
mt_status mt_optimizer_slot_download(mt_optimizer *optimizer, int slot, float *host);
mt_status mt_optimizer_slot_upload(mt_optimizer *optimizer, int slot, const float *host);

/* Zero the state and the iteration count. */
mt_status mt_optimizer_reset(mt_optimizer *optimizer);

/* One update of params[count] with grads[count] (both backend memory) at rate `lr` by the
 * backend's optimizer_update op, then iterations += 1: mt_optimizer_set_rate, the update of the
 * whole range, mt_optimizer_step_done. count must equal the count given to init. */
mt_status mt_optimizer_step(mt_optimizer *optimizer, float *params, const float *grads,
                            size_t count, float lr);

/* The same step in pieces: mt_optimizer_set_rate first (the rate `lr` at the current iteration
 * count, and Adam's step size from both, written to backend memory with the backend's
 * scalars_write: no wait), then, for updating each gradient bucket as soon as its all-reduce is
 * done, mt_optimizer_update_range for elements [offset, offset+count) of the buffers (params and
 * grads point at element 0; the state's slots are offset alike), each element exactly once per
 * step, in any order, then mt_optimizer_step_done (iterations += 1). Elements are independent,
 * so the result is mt_optimizer_step's bit for bit. update_range's call does not depend on the
 * step: a captured step replays it, reading each step's rate. */
mt_status mt_optimizer_set_rate(mt_optimizer *optimizer, float lr);
mt_status mt_optimizer_update_range(mt_optimizer *optimizer, float *params, const float *grads,
                                    size_t offset, size_t count);
void mt_optimizer_step_done(mt_optimizer *optimizer);

/* ---- checkpoints ------------------------------------------------------------------------------
 */

typedef struct mt_checkpoint mt_checkpoint; /* checkpoint.h */

/* Put the state in a checkpoint: tensors "optimizer/<slot name>" (F32 [count]) and metadata
 * "optimizer" (the kind's name) and "optimizer_iterations" (decimal). */
mt_status mt_optimizer_save(const mt_optimizer *optimizer, mt_checkpoint *checkpoint);

/* Restore what mt_optimizer_save stored into an optimizer set up (mt_optimizer_init) with the
 * same kind, slots and count; a mismatch or a non-finite slot value is an error naming the
 * checkpoint file and the tensor, and leaves the optimizer unchanged. The trainer's checkpoints
 * store and restore their optimizer state through these two. */
mt_status mt_optimizer_load(mt_optimizer *optimizer, const mt_checkpoint *checkpoint);

/* ---- learning-rate schedules ------------------------------------------------------------- */

typedef enum mt_lr_schedule_kind {
    MT_LR_CONSTANT = 0,
    MT_LR_STEP,   /* base * gamma^floor((step - warmup) / step_size) */
    MT_LR_COSINE, /* base * (f + (1-f) * (1 + cos(pi * min(1, (step-warmup)/(total-warmup))))/2) */
} mt_lr_schedule_kind;

extern const mt_enum_names mt_lr_schedule_kind_names; /* constant|step|cosine */
const char *mt_lr_schedule_kind_name(mt_lr_schedule_kind kind);

typedef struct mt_lr_schedule {
    mt_lr_schedule_kind kind;
    double base_lr;        /* after the linear scaling rule, if any */
    long warmup_steps;     /* linear ramp: base * (step+1)/warmup_steps while step < warmup */
    long step_size;        /* MT_LR_STEP: steps between decays (> 0) */
    double gamma;          /* MT_LR_STEP: decay factor */
    long total_steps;      /* MT_LR_COSINE: where the cosine reaches final_fraction */
    double final_fraction; /* MT_LR_COSINE: lr at the end / base (Keras CosineDecay's alpha) */
} mt_lr_schedule;

/* The rate for 0-based optimizer step `step` (the value of iterations before the step). */
double mt_lr_schedule_at(const mt_lr_schedule *schedule, uint64_t step);

#ifdef __cplusplus
}
#endif
#endif
