/* Keras' dynamic loss scale as a state machine (see loss_scale.h). */
#include "ops/loss_scale.h"

void mt_loss_scale_init(mt_loss_scale *s) {
    *s = (mt_loss_scale){.scale = MT_LOSS_SCALE_INITIAL,
                         .good_steps = 0,
                         .growth_steps = MT_LOSS_SCALE_GROWTH_STEPS,
                         .skipped = 0};
}

bool mt_loss_scale_update(mt_loss_scale *s, bool finite, float *divisor) {
    *divisor = s->scale;
    if (!finite) { /* skip the update, halve, start counting again */
        s->good_steps = 0;
        s->scale *= 0.5f;
        s->skipped++;
        return false;
    }
    /* Keras compares the counter before incrementing it: the growth_steps-th finite step doubles */
    if (s->good_steps == s->growth_steps - 1) {
        s->good_steps = 0;
        s->scale *= 2.0f;
    } else {
        s->good_steps++;
    }
    return true;
}
