/* A whole training step of MobileNetV2 (alpha 0.35, 64x64, batch 4) on the "cuda" backend against
 * the reference backend, from the same seed: logits, loss, every trainable gradient, the BN
 * moving statistics after the step and the pooled features, in each training mode (scratch with
 * batch statistics, fine-tune and frozen with moving statistics and the backward stop). Run twice
 * on cuda, so the second step also exercises the cached algorithms and the reused pool blocks.
 * Skips (77) without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "test_util.h"

enum { N = 4, SIZE = 64 };

static float largest(const float *v, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(v[i]));
    return m;
}

static float *download(mt_backend *b, const float *device, size_t count) {
    float *host = malloc(count * sizeof *host);
    if (host && b->ops->download(b, host, device, count * sizeof *host) != MT_OK) {
        fprintf(stderr, "download: %s\n", mt_last_error());
        free(host);
        return NULL;
    }
    return host;
}

/* one forward + backward; logits and the result on the host */
static bool step(mt_model *m, const float *images, const int32_t *labels, float *logits,
                 mt_step_result *r) {
    if (mt_model_forward(m, images, labels, N, true, 11, logits, r) != MT_OK ||
        mt_model_backward(m) != MT_OK) {
        fprintf(stderr, "step: %s\n", mt_last_error());
        return false;
    }
    return true;
}

static void compare_mode(mt_backend *ref, mt_backend *gpu, mt_train_mode mode, int classes) {
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = SIZE;
    config.batch_size = N;
    config.classes = classes;
    config.mode = mode;
    config.dropout = 0.2f;
    mt_model *a = NULL, *b = NULL;
    if (mt_model_create(ref, &config, 5, &a) != MT_OK ||
        mt_model_create(gpu, &config, 5, &b) != MT_OK) {
        fprintf(stderr, "create (%s): %s\n", mt_train_mode_name(mode), mt_last_error());
        mt_test_failures++;
        mt_model_destroy(a), mt_model_destroy(b);
        return;
    }
    const mt_model_layout *layout = mt_model_get_layout(a);
    size_t pixels = (size_t)N * SIZE * SIZE * 3;
    float *images = malloc(pixels * sizeof *images);
    uint64_t s = 1234;
    for (size_t i = 0; i < pixels; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        images[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    int32_t labels[N] = {0, 1, classes > 2 ? 2 : 1, -1}; /* the last row is padding */
    const int outs = layout->logit_count;
    float la[N * 8], lb[N * 8];
    mt_step_result ra, rb;
    /* cuda twice: the second step runs on cached algorithms and reused memory; BN in scratch
     * moves the statistics, so the reference model takes the same two steps */
    bool ok = step(a, images, labels, la, &ra) && step(b, images, labels, lb, &rb) &&
              step(a, images, labels, la, &ra) && step(b, images, labels, lb, &rb);
    CHECK(ok);
    if (!ok) goto done;
    CHECK(mt_test_arrays_close("logits", lb, la, (size_t)N * outs, 1e-3, 1e-3));
    CHECK_CLOSE(rb.loss, ra.loss, 1e-4, 1e-3);
    CHECK(ra.valid == rb.valid && ra.correct == rb.correct);

    float *ga, *gb;
    size_t count;
    mt_model_trainable(a, NULL, &ga, &count);
    mt_model_trainable(b, NULL, &gb, &count);
    float *ha = download(ref, ga, count), *hb = download(gpu, gb, count);
    CHECK(ha && hb);
    int bad = 0, compared = 0;
    for (int i = 0; ha && hb && i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer != MT_PARAM_TRAINABLE) continue;
        float scale = largest(ha + t->offset, t->count);
        compared++;
        if (!mt_test_arrays_close(t->name, hb + t->offset, ha + t->offset, t->count,
                                  2e-3 * scale + 1e-6, 2e-2))
            bad++;
    }
    CHECK_MSG(bad == 0, "%s: %d of %d gradient tensors differ", mt_train_mode_name(mode), bad,
              compared);
    CHECK(compared > 0);

    float *sa, *sb;
    size_t state;
    mt_model_state(a, &sa, &state);
    mt_model_state(b, &sb, &state);
    float *hsa = download(ref, sa, state), *hsb = download(gpu, sb, state);
    CHECK(hsa && hsb && mt_test_arrays_close("BN moving statistics", hsb, hsa, state, 1e-4, 1e-3));

    size_t f = (size_t)N * layout->feature_channels;
    float *fa = malloc(f * sizeof *fa), *fb = malloc(f * sizeof *fb);
    CHECK(mt_model_features(a, images, N, fa) == MT_OK);
    CHECK(mt_model_features(b, images, N, fb) == MT_OK);
    CHECK(mt_test_arrays_close("features", fb, fa, f, 1e-3 * largest(fa, f), 1e-3));
    printf("%s, %d classes: loss %.6f (reference) %.6f (cuda), %d gradient tensors compared\n",
           mt_train_mode_name(mode), classes, ra.loss, rb.loss, compared);
    free(fa), free(fb), free(hsa), free(hsb), free(ha), free(hb);
done:
    free(images);
    mt_model_destroy(a);
    mt_model_destroy(b);
}

int main(void) {
    mt_backend *gpu = NULL, *ref = NULL;
    if (mt_backend_create("cuda", NULL, &gpu) != MT_OK) {
        printf("skipped: no GPU (%s)\n", mt_last_error());
        return MT_TEST_SKIP_CODE;
    }
    CHECK_OK(mt_backend_create("reference", NULL, &ref));
    compare_mode(ref, gpu, MT_TRAIN_SCRATCH, 2);
    compare_mode(ref, gpu, MT_TRAIN_FINETUNE, 3);
    compare_mode(ref, gpu, MT_TRAIN_FROZEN, 2);
    mt_backend_destroy(ref);
    mt_backend_destroy(gpu);
    return mt_test_finish();
}
