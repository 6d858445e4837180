/* Dynamic loss scaling for fp16 training, with the semantics of Keras' LossScaleOptimizer
 * (keras 3, keras/src/optimizers/loss_scale_optimizer.py): the loss is multiplied by `scale`
 * before the backward pass and the gradients divided by it before the update; a step whose
 * gradients hold an inf or a NaN is skipped and halves the scale; after `growth_steps` finite
 * steps in a row the scale doubles. No bounds, as in Keras. The whole state is these fields, so a
 * checkpoint that stores them resumes bit-exactly. Plain C: the trainer calls it once per step
 * with the finiteness of all gradients (all ranks' after the all-reduce, so every rank agrees). */
#ifndef MT_OPS_LOSS_SCALE_H
#define MT_OPS_LOSS_SCALE_H

#include <stdbool.h>
#include <stdint.h>

enum { MT_LOSS_SCALE_GROWTH_STEPS = 2000 };
#define MT_LOSS_SCALE_INITIAL 32768.0f /* 2^15, Keras' initial_scale */

typedef struct mt_loss_scale {
    float scale;          /* multiplies the loss of the next step */
    int32_t good_steps;   /* finite steps since the scale last changed (Keras' step_counter) */
    int32_t growth_steps; /* doubling period (Keras' dynamic_growth_steps) */
    int64_t skipped;      /* updates skipped for non-finite gradients, for the metrics */
} mt_loss_scale;

/* Keras' defaults: 2^15, 2000 steps, nothing skipped. */
void mt_loss_scale_init(mt_loss_scale *s);

/* After one step's backward. finite: every gradient of the step is finite. Returns true when the
 * update is to be applied, with the gradients divided by *divisor (the scale the step's loss was
 * multiplied by); false when the step is to be skipped. Then moves the state on. */
bool mt_loss_scale_update(mt_loss_scale *s, bool finite, float *divisor);

#endif
