/* The same model on `reference` and on `cpu` (oneDNN): identical weights, identical batch, then
 * logits, loss, every gradient, the BN moving statistics after a training step, and the pooled
 * features must agree. Skips when the cpu backend is not built. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "test_util.h"
#include "model_perturb.h"

static bool has_backend(const char *name) {
    for (const char *const *n = mt_backend_names(); *n; n++)
        if (strcmp(*n, name) == 0) return true;
    return false;
}

static float maxabs(const float *v, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(v[i]));
    return m;
}

static void compare(mt_backend *ref, mt_backend *cpu, mt_train_mode mode, int classes) {
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = 64;
    config.batch_size = 4;
    config.classes = classes;
    config.mode = mode;
    config.dropout = 0.2f;
    mt_model *a = NULL, *b = NULL;
    CHECK(mt_model_create(ref, &config, 5, &a) == MT_OK);
    CHECK(mt_model_create(cpu, &config, 5, &b) == MT_OK);
    if (!a || !b) {
        fprintf(stderr, "create: %s\n", mt_last_error());
        mt_model_destroy(a);
        mt_model_destroy(b);
        return;
    }
    model_perturb_bn((mt_model *const[]){a, b}, 2);
    const mt_model_layout *layout = mt_model_get_layout(a);
    const int n = 4;
    size_t pixels = (size_t)n * 64 * 64 * 3;
    float *images = malloc(pixels * sizeof *images);
    uint64_t s = 42;
    for (size_t i = 0; i < pixels; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        images[i] = (float)((s >> 40) * (2.0 / 16777216.0)) - 1.0f;
    }
    int32_t labels[4] = {0, 1, 1, 0};
    if (classes > 2) labels[2] = 2;
    float la[4 * 8], lb[4 * 8];
    mt_step_result ra, rb;
    CHECK(mt_model_forward(a, images, labels, n, true, 11, la, &ra) == MT_OK);
    CHECK(mt_model_forward(b, images, labels, n, true, 11, lb, &rb) == MT_OK);
    CHECK(mt_model_backward(a) == MT_OK);
    CHECK(mt_model_backward(b) == MT_OK);
    int outs = layout->logit_count;
    CHECK(mt_test_arrays_close("logits", lb, la, (size_t)n * outs, 1e-3, 1e-3));
    CHECK_CLOSE(rb.loss, ra.loss, 1e-4, 1e-3);
    CHECK(ra.correct == rb.correct && ra.valid == rb.valid);

    float *ga, *gb;
    size_t count;
    mt_model_trainable(a, NULL, &ga, &count);
    mt_model_trainable(b, NULL, &gb, &count);
    float *ha = malloc(count * sizeof *ha), *hb = malloc(count * sizeof *hb);
    ref->ops->download(ref, ha, ga, count * sizeof(float));
    cpu->ops->download(cpu, hb, gb, count * sizeof(float));
    int bad = 0;
    double all = 0.0;
    for (size_t j = 0; j < count; j++)
        all += (double)ha[j] * ha[j];
    all = sqrt(all);
    bool batch_stats = false;
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        batch_stats |= layout->layers[i].bn_training;
    double worst = 0.0;
    const char *worst_name = "";
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer != MT_PARAM_TRAINABLE) continue;
        if (batch_stats) {
            /* With batch statistics a BN's input gradient subtracts two projections from dy
             * (cancellation), and a pre-activation near 0 may pass ReLU6 on one backend and
             * not on the other; such sparse differences spread downwards. With the initial
             * parameters (beta 0) that reached 2% relative L2 while each backend matched its
             * own finite differences; with the spread parameters here it is ~3e-4. So: relative
             * L2 per tensor, with a floor for the betas whose exact gradient is 0 (a BN feeding
             * a 1x1 conv and another batch-statistics BN). */
            double diff = 0.0, norm = 0.0;
            for (size_t j = 0; j < t->count; j++) {
                double d = (double)hb[t->offset + j] - ha[t->offset + j];
                diff += d * d;
                norm += (double)ha[t->offset + j] * ha[t->offset + j];
            }
            double rel = sqrt(diff) / (sqrt(norm) + 1e-4 * all);
            if (rel > worst) {
                worst = rel;
                worst_name = t->name;
            }
            if (rel > 1e-2) {
                fprintf(stderr, "%s: relative L2 difference %.3g\n", t->name, rel);
                bad++;
            }
            if (t->layer_index < MT_MODEL_BACKBONE_LAYERS) continue; /* the head: element-wise */
        }
        /* float sums in another order: tolerance relative to the tensor's largest gradient */
        float scale = maxabs(ha + t->offset, t->count);
        if (!mt_test_arrays_close(t->name, hb + t->offset, ha + t->offset, t->count,
                                  2e-3 * scale + 1e-6, 2e-2))
            bad++;
    }
    if (batch_stats) printf("worst relative L2 gradient difference %.3g (%s)\n", worst, worst_name);
    CHECK_MSG(bad == 0, "%s: %d gradient tensors differ", mt_train_mode_name(mode), bad);

    /* BN moving statistics after the step (moved in scratch, untouched otherwise) */
    float *sa, *sb;
    size_t state;
    mt_model_state(a, &sa, &state);
    mt_model_state(b, &sb, &state);
    float *hsa = malloc(state * sizeof *hsa), *hsb = malloc(state * sizeof *hsb);
    ref->ops->download(ref, hsa, sa, state * sizeof(float));
    cpu->ops->download(cpu, hsb, sb, state * sizeof(float));
    CHECK(mt_test_arrays_close("BN moving statistics", hsb, hsa, state, 1e-4, 1e-3));

    size_t f = (size_t)n * layout->feature_channels;
    float *fa = malloc(f * sizeof *fa), *fb = malloc(f * sizeof *fb);
    CHECK(mt_model_features(a, images, n, fa) == MT_OK);
    CHECK(mt_model_features(b, images, n, fb) == MT_OK);
    CHECK(mt_test_arrays_close("features", fb, fa, f, 1e-3 * maxabs(fa, f), 1e-3));
    printf("%s, %d classes: loss %.6f (reference) %.6f (cpu)\n", mt_train_mode_name(mode), classes,
           ra.loss, rb.loss);
    free(fa);
    free(fb);
    free(hsa);
    free(hsb);
    free(ha);
    free(hb);
    free(images);
    mt_model_destroy(a);
    mt_model_destroy(b);
}

int main(void) {
    if (!has_backend("cpu")) mt_test_skip("the cpu (oneDNN) backend is not built");
    mt_backend *ref = NULL, *cpu = NULL;
    CHECK_OK(mt_backend_create("reference", NULL, &ref));
    CHECK_OK(mt_backend_create("cpu", NULL, &cpu));
    compare(ref, cpu, MT_TRAIN_SCRATCH, 2);
    compare(ref, cpu, MT_TRAIN_FINETUNE, 3);
    compare(ref, cpu, MT_TRAIN_FROZEN, 2);
    mt_backend_destroy(ref);
    mt_backend_destroy(cpu);
    return mt_test_finish();
}
