/* Test helper shared by the model tests that compare models: BN parameters and statistics with
 * some spread. With the initial ones (beta 0, mean 0, variance 1) the activations of a
 * BN-inference network fade towards 0 and a comparison would be of nothing. */
#ifndef MT_TEST_MODEL_PERTURB_H
#define MT_TEST_MODEL_PERTURB_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "test_util.h"

/* The same values (a fixed LCG, seed 7) into the BN tensors of each of the `count` models, which
 * share one layout; other tensors are left as they are. */
static void model_perturb_bn(mt_model *const *models, int count) {
    const mt_model_layout *layout = mt_model_get_layout(models[0]);
    uint64_t s = 7;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        float lo, hi;
        if (!strcmp(t->weight, "gamma"))
            lo = 0.6f, hi = 1.4f;
        else if (!strcmp(t->weight, "beta"))
            lo = -0.3f, hi = 0.5f;
        else if (!strcmp(t->weight, "moving_mean"))
            lo = -0.2f, hi = 0.2f;
        else if (!strcmp(t->weight, "moving_variance"))
            lo = 0.5f, hi = 2.0f;
        else
            continue;
        float *v = malloc(t->count * sizeof *v);
        if (!v) abort();
        for (size_t j = 0; j < t->count; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            v[j] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
        }
        for (int m = 0; m < count; m++)
            CHECK(mt_model_tensor_upload(models[m], t, v) == MT_OK);
        free(v);
    }
}

#endif
