/* The whole network in bf16 and fp16 (the reference backend's emulation, ops.h "Precision")
 * against fp32 on the same weights and batch: logits, loss and every gradient, within the error
 * model of reduced-precision storage written down below; and fp16's loss scale: with the loss
 * gradient scaled by 2^15 (mt_model_set_loss_scale) and the gradients divided by it again
 * (buffer_scale), small gradients that fp16 storage flushes to zero survive.
 *     test_model_precision [BACKEND]   (the 16-bit runs on BACKEND, e.g. cuda; the fp32 truth on
 *                                       the reference; cuda skips with 77 without a GPU)
 *
 * The error model of 16-bit storage. Every stored tensor is one rounding to the nearest 16-bit
 * value: a relative error of at most u per element (u = 2^-8 bf16, 2^-11 fp16: half the spacing
 * of the format's significand), independent from element to element, so the relative L2 error
 * of one stored tensor is about u / sqrt(3) (a uniform rounding error) and of the whole
 * network's output, through D = 52 layers of such roundings that add up like a random walk
 * (docs/model.md, "the error model"), about C x u x sqrt(D), C what one layer's rounding grows
 * to by the time it reaches the output. fp32's accumulation error (2^-24) is negligible beside
 * it. With the ReLU6 kinks kept away (BN on moving statistics, finetune from the middle: no
 * batch statistics to spread a flipped element over its channel), C is small; measured here
 * (alpha 0.35, 64x64, batch 4), in units of u sqrt(D): logits 0.02-0.03, loss < 0.01, the
 * whole gradient 0.27-0.39 (printed on every run). The limits are HEADROOM 4 x C_max with C_max
 * 0.1 for the logits and the loss and 1 for the gradients: 0.4 u sqrt(D), i.e. 0.011 (bf16)
 * and 0.0014 (fp16) for the logits, and 0.11 and 0.014 for the gradients. A headroom of 4, not
 * the fp32 comparisons' 16: u is 2^16 (bf16) and 2^13 (fp16) times fp32's, and 16 would put the
 * bf16 gradient limit near 0.5, which would pass nearly anything. The loss scale's check is
 * sharper than any headroom: without it the gradients flush to zero (relative error 1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "test_util.h"
#include "model_perturb.h"

enum { N = 4, SIZE = 64 };
static const double SQRT_D = 7.2111025509279782; /* sqrt(52) */
static const double HEADROOM = 4.0, C_LOGITS = 0.1, C_GRADS = 1.0;

static double rel_l2(const float *got, const float *want, size_t n) {
    double d = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)got[i] - want[i];
        d += e * e;
        w += (double)want[i] * want[i];
    }
    return w > 0 ? sqrt(d / w) : sqrt(d);
}

typedef struct run {
    float logits[N];
    float loss;
    float *grads;
} run;

/* one training step's forward and backward; the gradients divided by `scale` (the loss scale
 * the model multiplied the loss gradient by) */
static bool step(mt_backend *backend, mt_model *model, const float *images, const int32_t *labels,
                 float scale, run *out) {
    mt_step_result result;
    float *params, *grads;
    size_t count;
    mt_model_trainable(model, &params, &grads, &count);
    if (scale != 1.0f && mt_model_set_loss_scale(model, scale) != MT_OK) return false;
    if (mt_model_forward(model, images, labels, N, true, 1, out->logits, &result) != MT_OK ||
        mt_model_backward(model) != MT_OK)
        return false;
    if (scale != 1.0f) { /* the factor is a per-step value in backend memory (ops.h) */
        const float inverse = 1.0f / scale;
        float *factor = NULL;
        bool ok = backend->ops->buffer_alloc(backend, sizeof inverse, (void **)&factor) == MT_OK;
        ok = ok && backend->ops->scalars_write(backend, factor, &inverse, sizeof inverse) == MT_OK &&
             backend->ops->buffer_scale(backend, grads, count, factor, NULL) == MT_OK;
        if (factor) backend->ops->buffer_free(backend, factor);
        if (!ok) return false;
    }
    out->loss = result.loss;
    out->grads = malloc(count * sizeof *out->grads);
    return out->grads &&
           backend->ops->download(backend, out->grads, grads, count * sizeof(float)) == MT_OK;
}

int main(int argc, char **argv) {
    /* the backend of the 16-bit runs (the fp32 truth is always the reference) */
    const char *device = argc > 1 ? argv[1] : "reference";
    const mt_compute_precision precisions[] = {MT_COMPUTE_FP32, MT_COMPUTE_BF16, MT_COMPUTE_FP16};
    mt_backend *backends[3] = {NULL};
    mt_model *models[3] = {NULL};
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = SIZE;
    config.batch_size = N;
    config.classes = 2; /* one logit: the sigmoid */
    config.mode = MT_TRAIN_FINETUNE;
    config.fine_tune_at = 100;
    config.bn_mode = MT_BN_INFERENCE;
    config.dropout = 0.0f;
    for (int p = 0; p < 3; p++) {
        mt_backend_options options = {.num_threads = 2, .precision = precisions[p]};
        const char *name = p ? device : "reference";
        if (p && strcmp(name, "reference") != 0 &&
            mt_backend_create(name, &options, &backends[p]) != MT_OK) {
            printf("skipped: backend %s: %s\n", name, mt_last_error());
            return MT_TEST_SKIP_CODE;
        }
        if (!backends[p]) CHECK_OK(mt_backend_create(name, &options, &backends[p]));
        CHECK_OK(mt_model_create(backends[p], &config, 5, &models[p]));
    }
    model_perturb_bn(models, 3);
    const size_t pixels = (size_t)N * SIZE * SIZE * 3;
    float *images = malloc(pixels * sizeof *images);
    if (!images) return 1;
    uint64_t s = 42;
    for (size_t i = 0; i < pixels; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        images[i] = (float)((s >> 40) * (2.0 / 16777216.0)) - 1.0f;
    }
    const int32_t labels[N] = {0, 1, 1, 0};
    float *params, *grads;
    size_t count;
    mt_model_trainable(models[0], &params, &grads, &count);

    run runs[3];
    for (int p = 0; p < 3; p++)
        CHECK_MSG(step(backends[p], models[p], images, labels, 1.0f, &runs[p]), "%s step: %s",
                  mt_compute_precision_name(precisions[p]), mt_last_error());
    for (int p = 1; p < 3; p++) {
        const double u = precisions[p] == MT_COMPUTE_BF16 ? 0x1p-8 : 0x1p-11;
        const double unit = u * SQRT_D;
        const double e_logits = rel_l2(runs[p].logits, runs[0].logits, N);
        const double e_loss = fabs((double)runs[p].loss - runs[0].loss) / fabs(runs[0].loss);
        const double e_grads = rel_l2(runs[p].grads, runs[0].grads, count);
        printf("%s: logits %.3g, loss %.3g, gradients %.3g (in u sqrt(D): %.2f, %.2f, %.2f)\n",
               mt_compute_precision_name(precisions[p]), e_logits, e_loss, e_grads, e_logits / unit,
               e_loss / unit, e_grads / unit);
        CHECK_MSG(e_logits <= HEADROOM * C_LOGITS * unit, "%s logits: rel L2 %.3g > %.3g",
                  mt_compute_precision_name(precisions[p]), e_logits, HEADROOM * C_LOGITS * unit);
        CHECK_MSG(e_loss <= HEADROOM * C_LOGITS * unit, "%s loss: rel %.3g > %.3g",
                  mt_compute_precision_name(precisions[p]), e_loss, HEADROOM * C_LOGITS * unit);
        CHECK_MSG(e_grads <= HEADROOM * C_GRADS * unit, "%s gradients: rel L2 %.3g > %.3g",
                  mt_compute_precision_name(precisions[p]), e_grads, HEADROOM * C_GRADS * unit);
    }

    /* fp16's loss scale: a loss 2^-20 times smaller (the logit weights scaled down) has
     * gradients of ~1e-7 x the usual at the lowest trainable layers, below fp16's smallest
     * subnormal (6e-8) once divided over the batch and the positions: without the scale most
     * of them flush to zero; with 2^15 they come back within the limit above. */
    for (int p = 0; p < 3; p += 2) {
        const mt_param_tensor *kernel = NULL;
        const mt_model_layout *layout = mt_model_get_layout(models[p]);
        for (int i = 0; i < layout->tensor_count; i++)
            if (!strcmp(layout->tensors[i].name, "dense/kernel")) kernel = &layout->tensors[i];
        CHECK(kernel != NULL);
        if (!kernel) break;
        float *k = malloc(kernel->count * sizeof *k);
        CHECK_OK(mt_model_tensor_download(models[p], kernel, k));
        for (size_t i = 0; i < kernel->count; i++)
            k[i] *= 0x1p-20f;
        CHECK_OK(mt_model_tensor_upload(models[p], kernel, k));
        free(k);
    }
    /* one label for all: with the logits all near the bias, balanced labels would give loss
     * gradients that cancel over the batch, and the backbone's gradients would be that
     * cancellation's rounding residue */
    const int32_t ones[N] = {1, 1, 1, 1};
    run tiny[3];
    CHECK(step(backends[0], models[0], images, ones, 1.0f, &tiny[0]));
    CHECK(step(backends[2], models[2], images, ones, 1.0f, &tiny[1]));
    CHECK(step(backends[2], models[2], images, ones, 32768.0f, &tiny[2]));
    const double unit = 0x1p-11 * SQRT_D;
    /* the backbone's gradients: the head's (dense kernel and bias, last in the buffer) are fp32
     * products of fp32 values, and here a difference of nearly equal pooled features, which
     * any rounding of the features dominates */
    const mt_model_layout *layout = mt_model_get_layout(models[0]);
    const size_t backbone =
        count - (size_t)(layout->feature_channels + 1) * (size_t)layout->logit_count;
    const double unscaled = rel_l2(tiny[1].grads, tiny[0].grads, backbone);
    const double scaled = rel_l2(tiny[2].grads, tiny[0].grads, backbone);
    printf("fp16, loss x 2^-20: gradients rel L2 %.3g without the loss scale, %.3g with 2^15\n",
           unscaled, scaled);
    CHECK_MSG(unscaled > HEADROOM * C_GRADS * unit,
              "without a loss scale the tiny gradients "
              "survived fp16 (rel L2 %.3g): the test does not test the scale",
              unscaled);
    CHECK_MSG(scaled <= HEADROOM * C_GRADS * unit, "with the loss scale: rel L2 %.3g > %.3g",
              scaled, HEADROOM * C_GRADS * unit);

    for (int p = 0; p < 3; p++) {
        free(runs[p].grads);
        free(tiny[p].grads);
        mt_model_destroy(models[p]);
        mt_backend_destroy(backends[p]);
    }
    free(images);
    return mt_test_finish();
}
