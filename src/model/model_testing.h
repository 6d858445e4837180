/* What only the tests use of the model: not public API (include/mobiletune/model.h), so that a
 * program does not come to depend on a probe of the executor's internal buffers. Tests reach it
 * with src/ on their include path. */
#ifndef MOBILETUNE_MODEL_TESTING_H
#define MOBILETUNE_MODEL_TESTING_H

#include "mobiletune/model.h"

/* The output of backbone layer `layer` in the last forward, host NHWC (n x out_h x out_w x
 * out_c, the executed shape), for tests that inspect activations (e.g. the pre-activations of a
 * BN from its input). Only outputs the forward keeps for the backward (a trainable BN's input,
 * a trainable conv's input) and only until the next backward; others are refused. */
mt_status mt_model_layer_output(mt_model *model, int layer, float *host);

#endif
