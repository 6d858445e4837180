/* The ReLU6 kink shifts shared by the GPU model checks (test_gpu_model.c, golden_step.c).
 *
 * A pre-activation within float32 rounding of 0 or 6 may land on either side in two fp32 runs
 * that sum in different orders, which flips that element's gradient and, through training-mode
 * BN's batch statistics, every gradient below: outside any rounding error model (docs/model.md,
 * "the error model"). As the Keras comparison does (tests/keras/keras_reference.py), these
 * checks first move the betas of the BNs that feed a ReLU6, per channel and by the least that
 * works, until every pre-activation on the gradient path is at least `margin_u` u x its layer's
 * RMS from both kinks, layer by layer from the bottom (a shift changes every layer above). */
#ifndef MT_TESTS_GPU_KINK_SHIFT_H
#define MT_TESTS_GPU_KINK_SHIFT_H

#include <stdbool.h>
#include <stdint.h>

#include "mobiletune/model.h"

typedef struct kink_report {
    long before; /* pre-activations within the margin of 0 or 6, before the shifts */
    long after;  /* the same, after them (0 when the shifts worked) */
    int layers;  /* BN + ReLU6 pairs on the gradient path (pre-activations inspected) */
    int shifted; /* layers whose betas moved */
} kink_report;

/* Counts the kink-near pre-activations of `a`'s training forward on (images, labels, n rows),
 * moves the betas when `shift` (uploading each moved beta into `a` and, if not NULL, `b`, a
 * model of the same layout), and counts again. `a`'s BN moving statistics are restored at the
 * end (its training forwards move them). false, with the reason on stderr, when a forward,
 * download or upload fails. */
bool kink_shift(mt_model *a, mt_model *b, const float *images, const int32_t *labels, int n,
                double margin_u, bool shift, kink_report *report);

#endif
