/* The whole network's backward pass against finite differences of its forward loss, on the
 * reference backend, tiny inputs (alpha 0.35), for each training mode and both BN modes; and the
 * properties of the executor: backward stops at the lowest trainable layer (counted backend
 * calls), overwrites the whole gradient buffer, reports completed ranges in decreasing order,
 * updates BN moving statistics only in BN training mode, and handles a short last batch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "model/model_testing.h"
#include "test_util.h"

/* ---- a reference backend whose backward calls are counted ---- */
static int calls_conv_weights, calls_conv_data, calls_bn_backward;
static mt_ops counting_ops;

static mt_status count_conv_weights(mt_backend *b, const mt_conv_desc *d, const mt_tensor *x,
                                    const mt_tensor *dy, float *dw) {
    calls_conv_weights++;
    return mt_ops_reference.conv_backward_weights(b, d, x, dy, dw);
}
static mt_status count_conv_data(mt_backend *b, const mt_conv_desc *d, const mt_tensor *dy,
                                 const float *w, mt_tensor *dx) {
    calls_conv_data++;
    return mt_ops_reference.conv_backward_data(b, d, dy, w, dx);
}
static mt_status count_bn_train(mt_backend *b, const mt_batchnorm_desc *d, const mt_tensor *x,
                                const mt_tensor *dy, const float *g, const float *m, const float *s,
                                mt_tensor *dx, float *dg, float *db) {
    calls_bn_backward++;
    return mt_ops_reference.batchnorm_backward_training(b, d, x, dy, g, m, s, dx, dg, db);
}
static mt_status count_bn_inf(mt_backend *b, const mt_batchnorm_desc *d, const mt_tensor *x,
                              const mt_tensor *dy, const float *g, const float *m, const float *v,
                              mt_tensor *dx, float *dg, float *db) {
    calls_bn_backward++;
    return mt_ops_reference.batchnorm_backward_inference(b, d, x, dy, g, m, v, dx, dg, db);
}

/* ---- helpers ---- */
static uint64_t rng = 12345;
static float uniform(float lo, float hi) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}

typedef struct hook_state {
    size_t next_end, covered;
    bool ordered;
} hook_state;

static mt_status hook(void *user, size_t offset, size_t count) {
    hook_state *h = user;
    if (offset + count != h->next_end) h->ordered = false;
    h->next_end = offset;
    h->covered += count;
    return MT_OK;
}

static float loss_of(mt_model *model, const float *images, const int32_t *labels, int n) {
    mt_step_result r;
    if (mt_model_forward(model, images, labels, n, true, 7, NULL, &r) != MT_OK) {
        fprintf(stderr, "forward: %s\n", mt_last_error());
        return NAN;
    }
    return r.loss;
}

/* Spread the weights and BN statistics away from their initial values so every path carries a
 * gradient (beta 0 / mean 0 / var 1 would make the check blind to some terms). */
static void perturb(mt_model *model) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        float *v = malloc(t->count * sizeof *v);
        mt_model_tensor_download(model, t, v);
        for (size_t j = 0; j < t->count; j++) {
            if (!strcmp(t->weight, "gamma"))
                v[j] = uniform(0.6f, 1.4f);
            else if (!strcmp(t->weight, "beta"))
                v[j] = uniform(-0.3f, 0.5f);
            else if (!strcmp(t->weight, "moving_mean"))
                v[j] = uniform(-0.2f, 0.2f);
            else if (!strcmp(t->weight, "moving_variance"))
                v[j] = uniform(0.5f, 2.0f);
            else if (!strcmp(t->weight, "bias"))
                v[j] = uniform(-0.1f, 0.1f);
        }
        mt_model_tensor_upload(model, t, v);
        free(v);
    }
}

static const char *const probe_tensors[] = {
    "Conv1/kernel",
    "bn_Conv1/gamma",
    "expanded_conv_depthwise/depthwise_kernel",
    "block_1_depthwise/depthwise_kernel",
    "block_2_project_BN/beta",
    "block_5_expand/kernel",
    "block_11_depthwise/depthwise_kernel",
    "block_13_depthwise/depthwise_kernel",
    "block_15_project/kernel",
    "Conv_1/kernel",
    "Conv_1_bn/gamma",
    "Conv_1_bn/beta",
    "dense/kernel",
    "dense/bias",
};

typedef struct grad_case {
    const char *what;
    mt_train_mode mode;
    mt_bn_mode bn;
    int classes, size, batch;
    float dropout;
    bool finite_differences; /* false: only the structural checks */
} grad_case;

static void run_case(mt_backend *backend, const grad_case *c) {
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = c->size;
    config.classes = c->classes;
    config.dropout = c->dropout;
    config.mode = c->mode;
    config.fine_tune_at = 100;
    config.bn_mode = c->bn;
    config.batch_size = c->batch;
    mt_model *model = NULL;
    if (mt_model_create(backend, &config, 99, &model) != MT_OK) {
        CHECK_MSG(false, "%s: create: %s", c->what, mt_last_error());
        return;
    }
    perturb(model);
    const mt_model_layout *layout = mt_model_get_layout(model);
    const int n = c->batch;
    size_t image_count = (size_t)n * c->size * c->size * 3;
    float *images = malloc(image_count * sizeof *images);
    for (size_t i = 0; i < image_count; i++)
        images[i] = uniform(-1.0f, 1.0f);
    int32_t labels[8] = {1, 0, 0, 1, 1, 0, 1, 0};
    if (c->classes > 2) labels[0] = 2;
    if (c->classes > 3) labels[3] = 3;

    float *params, *grads;
    size_t count;
    mt_model_trainable(model, &params, &grads, &count);
    /* NaN everywhere first: backward must overwrite every element */
    float *host = malloc(count * sizeof *host);
    for (size_t i = 0; i < count; i++)
        host[i] = NAN;
    backend->ops->upload(backend, grads, host, count * sizeof(float));

    hook_state h = {.next_end = count, .covered = 0, .ordered = true};
    mt_model_set_grad_hook(model, hook, &h);
    calls_conv_weights = calls_conv_data = calls_bn_backward = 0;
    mt_step_result r;
    if (mt_model_forward(model, images, labels, n, true, 7, NULL, &r) != MT_OK ||
        mt_model_backward(model) != MT_OK) {
        CHECK_MSG(false, "%s: step: %s", c->what, mt_last_error());
        goto done;
    }
    CHECK(r.valid == n && isfinite(r.loss) && r.loss > 0);
    CHECK_MSG(h.ordered && h.covered == count, "%s: hook covered %zu of %zu, ordered %d", c->what,
              h.covered, count, h.ordered);

    /* the backend calls the backward made: exactly the trainable region's */
    int want_weights = 0, want_data = 0, want_bn = 0;
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        bool conv = l->kind == MT_LAYER_CONV || l->kind == MT_LAYER_DEPTHWISE;
        if (conv && l->trainable) want_weights++;
        if (conv && i > layout->lowest_trainable) want_data++;
        if (l->kind == MT_LAYER_BATCHNORM && i > layout->lowest_trainable) want_bn++;
    }
    CHECK_MSG(calls_conv_weights == want_weights && calls_conv_data == want_data &&
                  calls_bn_backward == want_bn,
              "%s: conv weight/data and BN backward calls %d/%d/%d, expected %d/%d/%d", c->what,
              calls_conv_weights, calls_conv_data, calls_bn_backward, want_weights, want_data,
              want_bn);

    backend->ops->download(backend, host, grads, count * sizeof(float));
    size_t nonfinite = 0;
    for (size_t i = 0; i < count; i++)
        nonfinite += !isfinite(host[i]);
    CHECK_MSG(nonfinite == 0, "%s: %zu gradient elements not written", c->what, nonfinite);

    /* finite differences on the largest-gradient elements of each probed trainable tensor */
    bool batch_stats = false;
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        batch_stats |= layout->layers[i].bn_training;
    int probes = 0, bad = 0;
    size_t probe_count = c->finite_differences ? sizeof probe_tensors / sizeof probe_tensors[0] : 0;
    for (size_t p = 0; p < probe_count; p++) {
        char layer[128];
        snprintf(layer, sizeof layer, "%s", probe_tensors[p]);
        char *slash = strchr(layer, '/');
        *slash = 0;
        const mt_param_tensor *t = mt_model_layout_find(layout, layer, slash + 1);
        CHECK_MSG(t != NULL, "no tensor %s", probe_tensors[p]);
        if (!t || t->buffer != MT_PARAM_TRAINABLE) continue;
        float *w = malloc(t->count * sizeof *w);
        mt_model_tensor_download(model, t, w);
        float tensor_max = 0.0f;
        for (size_t j = 0; j < t->count; j++)
            tensor_max = fmaxf(tensor_max, fabsf(host[t->offset + j]));
        /* with batch statistics an ordinary element's slope is swamped by the curvature and
         * float32 noise of its big neighbours: the tolerance scales with the tensor's largest
         * gradient there, and only the largest element (plus every 3rd tensor's ordinary one)
         * is probed, to keep the ladder of steps affordable */
        double atol = batch_stats ? 2e-3 + 0.02 * tensor_max : 2e-3;
        int elements = batch_stats && p % 3 != 0 ? 1 : 2;
        for (int k = 0; k < elements; k++) {
            size_t best = 0;
            for (size_t j = 0; j < t->count; j++) {
                float g = fabsf(host[t->offset + j]);
                if (g > fabsf(host[t->offset + best]) && (k == 0 || j != best)) best = j;
            }
            if (k == 1) best = (best * 7 + 3) % t->count; /* and one ordinary element */
            float analytic = host[t->offset + best];
            float saved = w[best];
            /* BN in training mode on a batch of 2 makes the loss curved on the scale of the
             * weights themselves (each channel is renormalized by its own batch statistics), so
             * a step of 2e-3 can be far off; when it disagrees, retry smaller steps down to
             * where float32 noise takes over (tools: a standalone sweep of one weight converged
             * to the backward's value within 2% at 4e-5). A wrong gradient fails at every step. */
            double numeric = 0.0;
            const float steps[5] = {2e-3f * fmaxf(1.0f, fabsf(saved)), 1e-3f, 3e-4f, 1e-4f, 4e-5f};
            for (int attempt = 0; attempt < (batch_stats ? 5 : 1); attempt++) {
                float eps = steps[attempt];
                w[best] = saved + eps;
                mt_model_tensor_upload(model, t, w);
                float up = loss_of(model, images, labels, n);
                w[best] = saved - eps;
                mt_model_tensor_upload(model, t, w);
                float down = loss_of(model, images, labels, n);
                w[best] = saved;
                mt_model_tensor_upload(model, t, w);
                numeric = ((double)up - down) / (2.0 * eps);
                if (mt_test_close(analytic, numeric, atol, 8e-2)) break;
            }
            probes++;
            if (!mt_test_close(analytic, numeric, atol, 8e-2)) {
                bad++;
                fprintf(stderr, "%s: %s[%zu]: backward %.6g, finite difference %.6g\n", c->what,
                        t->name, best, analytic, numeric);
            }
        }
        free(w);
    }
    printf("%s: %d probes, %d off, loss %.5f\n", c->what, probes, bad, r.loss);
    CHECK_MSG((probes > 0 || !c->finite_differences) && bad == 0,
              "%s: %d of %d gradient probes disagree", c->what, bad, probes);

done:
    free(host);
    free(images);
    mt_model_destroy(model);
}

/* BN moving statistics move in BN training mode only; a short batch reallocates and runs. */
static void check_state_and_short_batch(mt_backend *backend) {
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = 32;
    config.batch_size = 3;
    mt_model *model = NULL;
    if (mt_model_create(backend, &config, 1, &model) != MT_OK) {
        CHECK_MSG(false, "create: %s", mt_last_error());
        return;
    }
    const mt_model_layout *layout = mt_model_get_layout(model);
    const mt_param_tensor *mean = mt_model_layout_find(layout, "bn_Conv1", "moving_mean");
    float images[3 * 32 * 32 * 3];
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
        images[i] = uniform(-1, 1);
    int32_t labels[3] = {0, 1, -1};
    float before[16], after[16];
    mt_model_tensor_download(model, mean, before);
    mt_step_result r;
    CHECK(mt_model_forward(model, images, labels, 3, false, 0, NULL, &r) == MT_OK);
    CHECK(r.valid == 2);
    mt_model_tensor_download(model, mean, after);
    CHECK(memcmp(before, after, sizeof before) == 0);  /* inference: untouched */
    CHECK(mt_model_backward(model) == MT_ERR_INVALID); /* no training forward */
    CHECK(mt_model_forward(model, images, labels, 3, true, 0, NULL, &r) == MT_OK);
    mt_model_tensor_download(model, mean, after);
    CHECK(memcmp(before, after, sizeof before) != 0); /* scratch: BN in training mode */
    CHECK(mt_model_backward(model) == MT_OK);
    /* a short batch, then the full one again */
    float logits_short[1], logits_full[3], features[3 * 1280], features_short[1280];
    CHECK(mt_model_forward(model, images, labels, 1, false, 0, logits_short, &r) == MT_OK);
    CHECK(mt_model_forward(model, images, labels, 3, false, 0, logits_full, &r) == MT_OK);
    CHECK_CLOSE(logits_short[0], logits_full[0], 1e-5, 1e-4);
    CHECK(mt_model_forward(model, images, labels, 4, false, 0, NULL, &r) == MT_ERR_INVALID);
    /* features + head == the whole forward in inference mode */
    CHECK(mt_model_features(model, images, 3, features) == MT_OK);
    CHECK(mt_model_features(model, images, 1, features_short) == MT_OK);
    CHECK(mt_test_arrays_close("short-batch features", features_short, features, 1280, 1e-5, 1e-4));
    float logits_head[3];
    CHECK(mt_model_forward_head(model, features, labels, 3, false, 0, logits_head, &r) == MT_OK);
    CHECK(mt_test_arrays_close("head on features", logits_head, logits_full, 3, 1e-5, 1e-4));
    /* head-only backward is refused outside the frozen mode */
    CHECK(mt_model_forward_head(model, features, labels, 3, true, 0, NULL, &r) == MT_OK);
    CHECK(mt_model_backward(model) == MT_ERR_INVALID);
    mt_model_destroy(model);
}

/* model.bn_momentum reaches the BN layers: one training forward from the initial moving mean 0
 * leaves bn_Conv1's moving mean at (1 - m) x the batch mean of its input (Conv1's output), for
 * Keras' 0.999 and for 0.5. Tolerance: the reference's double-precision batch mean rounded to
 * float, against ours summed in double from the same float activations: a few float ulps. */
static void check_bn_momentum(mt_backend *backend) {
    const float momenta[2] = {0.999f, 0.5f};
    for (int k = 0; k < 2; k++) {
        mt_model_config config = mt_model_config_default();
        config.alpha = 0.35f;
        config.input_size = 32;
        config.batch_size = 2;
        config.bn_momentum = momenta[k];
        mt_model *model = NULL;
        if (mt_model_create(backend, &config, 1, &model) != MT_OK) {
            CHECK_MSG(false, "create: %s", mt_last_error());
            return;
        }
        const mt_model_layout *layout = mt_model_get_layout(model);
        const mt_layer_info *conv = &layout->layers[1];
        const mt_param_tensor *mean = mt_model_layout_find(layout, "bn_Conv1", "moving_mean");
        CHECK(conv->kind == MT_LAYER_CONV && mean && (int)mean->count == conv->out_c);
        float images[2 * 32 * 32 * 3];
        for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
            images[i] = uniform(-1, 1);
        int32_t labels[2] = {0, 1};
        mt_step_result r;
        CHECK(mt_model_forward(model, images, labels, 2, true, 0, NULL, &r) == MT_OK);
        const size_t pixels = (size_t)2 * conv->out_h * conv->out_w;
        float *out = malloc(pixels * conv->out_c * sizeof *out);
        float moving[64];
        CHECK(out && conv->out_c <= 64);
        if (out && conv->out_c <= 64 && mt_model_layer_output(model, 1, out) == MT_OK &&
            mt_model_tensor_download(model, mean, moving) == MT_OK) {
            for (int c = 0; c < conv->out_c; c++) {
                double sum = 0;
                for (size_t p = 0; p < pixels; p++)
                    sum += out[p * conv->out_c + c];
                double want = (1.0 - momenta[k]) * (sum / (double)pixels);
                CHECK_CLOSE(moving[c], want, 1e-7, 1e-5);
            }
        } else {
            CHECK_MSG(false, "bn_momentum %g: %s", (double)momenta[k], mt_last_error());
        }
        free(out);
        mt_model_destroy(model);
    }
    /* out of [0, 1): refused by name */
    mt_model_config config = mt_model_config_default();
    config.bn_momentum = 1.0f;
    mt_model *model = NULL;
    CHECK(mt_model_create(backend, &config, 1, &model) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "bn_momentum") != NULL);
}

int main(void) {
    mt_backend *backend = NULL;
    CHECK_OK(mt_backend_create("reference", NULL, &backend));
    counting_ops = *backend->ops;
    counting_ops.conv_backward_weights = count_conv_weights;
    counting_ops.conv_backward_data = count_conv_data;
    counting_ops.batchnorm_backward_training = count_bn_train;
    counting_ops.batchnorm_backward_inference = count_bn_inf;
    backend->ops = &counting_ops;

    /* The finetune case with batch statistics gets only the structural checks: above frozen
     * layers with perturbed statistics, a tiny batch leaves channels of near-zero variance
     * whose BN multiplies by up to 1/sqrt(1e-3) each, so finite differences there measure
     * chaos (a sweep showed slopes of 1000s at a step of 2e-3, converging only below 1e-5);
     * batch-statistics backward itself is checked by the scratch case. */
    const grad_case cases[] = {
        {"scratch, BN training, dropout, sigmoid", MT_TRAIN_SCRATCH, MT_BN_AUTO, 2, 64, 2, 0.2f,
         true},
        {"scratch, BN inference, softmax", MT_TRAIN_SCRATCH, MT_BN_INFERENCE, 3, 32, 2, 0.0f, true},
        {"finetune@100, BN inference", MT_TRAIN_FINETUNE, MT_BN_AUTO, 2, 32, 2, 0.2f, true},
        {"finetune@100, BN training", MT_TRAIN_FINETUNE, MT_BN_TRAINABLE, 4, 32, 2, 0.0f, false},
        {"frozen", MT_TRAIN_FROZEN, MT_BN_AUTO, 2, 32, 2, 0.2f, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(backend, &cases[i]);
    check_state_and_short_batch(backend);
    check_bn_momentum(backend);
    mt_backend_destroy(backend);
    return mt_test_finish();
}
