/* Fixtures for the export tests, made in a second, not by training:
 *   export_fixture checkpoint ALPHA SIZE CLASSES WEIGHTS.h5 SEED OUT.safetensors
 *     a checkpoint `mobiletune predict` and `mobiletune export` read: the Keras backbone from
 *     WEIGHTS (real ImageNet/Teachable Machine weights, so BN statistics and activations are
 *     those of a trained network, not of an initializer), a Dense head drawn from SEED with a
 *     spread that puts the probabilities away from 0 and 1 (saturated outputs would hide errors)
 *   export_fixture inputs SIZE OUT.f32 IMAGE...
 *     the float32 NHWC batch `mobiletune predict` feeds the network for those images: decoded and
 *     resized as mobiletune-pack does (stretch), x/127.5 - 1 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/checkpoint.h"
#include "mobiletune/config.h"
#include "mobiletune/image.h"
#include "mobiletune/model.h"

static int fail(const char *what) {
    fprintf(stderr, "export_fixture: %s: %s\n", what, mt_last_error());
    return 1;
}

static int make_checkpoint(char **argv) {
    const char *alpha = argv[0], *size = argv[1], *classes = argv[2], *weights = argv[3];
    unsigned long long seed = strtoull(argv[4], NULL, 10);
    const char *out = argv[5];
    mt_train_config *config = malloc(sizeof *config);
    if (!config) return 1;
    mt_config_defaults(config);
    char set[512];
    const char *values[][2] = {{"model.alpha", alpha}, {"model.input_size", size},
                               {"model.classes", classes}, {"train.backend", "cpu"}};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        snprintf(set, sizeof set, "%s=%s", values[i][0], values[i][1]);
        if (mt_config_set(config, set) != MT_OK) return fail(set);
    }
    mt_model_config model_config = mt_config_model(config);
    model_config.batch_size = 1;
    mt_backend *backend = NULL;
    mt_model *model = NULL;
    mt_backend_options options = {.num_threads = 1};
    if (mt_backend_create("reference", &options, &backend) != MT_OK) return fail("backend");
    if (mt_model_create(backend, &model_config, seed, &model) != MT_OK) return fail("model");
    if (mt_model_load_keras(model, weights) != MT_OK) return fail(weights);
    const mt_model_layout *layout = mt_model_get_layout(model);
    const mt_param_tensor *kernel = mt_model_layout_find(layout, "dense", "kernel");
    const mt_param_tensor *bias = mt_model_layout_find(layout, "dense", "bias");
    float *k = malloc(kernel->count * sizeof *k), b[1024];
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < kernel->count + bias->count; i++) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17; /* xorshift64 */
        /* pooled ImageNet features are mostly in [0, 2] over 1280 (or 1280*alpha) channels:
         * +-0.06 gives logits of a few units, probabilities well inside (0, 1) */
        float u = (float)((double)(state >> 11) / 9007199254740992.0) * 0.12f - 0.06f;
        if (i < kernel->count) k[i] = u;
        else b[i - kernel->count] = u * 10.0f;
    }
    if (mt_model_tensor_upload(model, kernel, k) != MT_OK ||
        mt_model_tensor_upload(model, bias, b) != MT_OK)
        return fail("head");
    mt_checkpoint *c = NULL;
    char *ini = NULL;
    float *host = malloc(2 * 1024 * 1280 * sizeof *host);
    if (mt_checkpoint_create(&c) != MT_OK || mt_config_to_ini(config, &ini) != MT_OK)
        return fail("checkpoint");
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        if (p->count > 2 * 1024 * 1280) return fail("tensor too large");
        if (mt_model_tensor_download(model, p, host) != MT_OK ||
            mt_checkpoint_add_f32(c, p->name, p->rank, p->shape, host) != MT_OK)
            return fail(p->name);
    }
    char names[4096] = "";
    for (int i = 0; i < model_config.classes; i++) {
        size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%sclass%d", i ? "\n" : "", i);
    }
    if (mt_checkpoint_set_meta(c, "format", "mobiletune-checkpoint") != MT_OK ||
        mt_checkpoint_set_meta(c, "mode", mt_train_mode_name(model_config.mode)) != MT_OK ||
        mt_checkpoint_set_meta(c, "config", ini) != MT_OK ||
        mt_checkpoint_set_meta(c, "class_names", names) != MT_OK ||
        mt_checkpoint_write(c, out) != MT_OK)
        return fail(out);
    free(host);
    free(ini);
    free(k);
    free(config);
    mt_checkpoint_free(c);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    return 0;
}

static int make_inputs(int size, const char *out, char **images, int count) {
    FILE *f = fopen(out, "wb");
    uint8_t *pixels = malloc((size_t)size * size * 3);
    float *input = malloc((size_t)size * size * 3 * sizeof *input);
    if (!f || !pixels || !input) return fail(out);
    for (int i = 0; i < count; i++) {
        mt_image image = {0};
        if (mt_image_decode_file(images[i], size, &image) != MT_OK ||
            mt_image_resize(&image, size, MT_RESIZE_STRETCH, pixels) != MT_OK)
            return fail(images[i]);
        /* the same expression as `mobiletune predict`, so the bits agree */
        for (size_t j = 0; j < (size_t)size * size * 3; j++)
            input[j] = (float)pixels[j] / 127.5f - 1.0f;
        fwrite(input, sizeof *input, (size_t)size * size * 3, f);
        mt_image_free(&image);
    }
    free(pixels);
    free(input);
    return fclose(f) == 0 ? 0 : fail(out);
}

int main(int argc, char **argv) {
    if (argc == 8 && strcmp(argv[1], "checkpoint") == 0) return make_checkpoint(argv + 2);
    if (argc >= 5 && strcmp(argv[1], "inputs") == 0)
        return make_inputs(atoi(argv[2]), argv[3], argv + 4, argc - 4);
    fprintf(stderr, "usage: export_fixture checkpoint ALPHA SIZE CLASSES WEIGHTS SEED OUT\n"
                    "       export_fixture inputs SIZE OUT.f32 IMAGE...\n");
    return 2;
}
