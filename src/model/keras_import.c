/* Loading a Keras MobileNetV2 backbone from an HDF5 weights file (either of Keras' layouts; the
 * reader in src/io finds tensors by layer and weight name), and saving one. All tensors are read
 * and checked before any reaches the model, so a failed load leaves the model as it was. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/keras_h5.h"
#include "mobiletune/model.h"
#include "model/model_internal.h"

/* The width multiplier a file was saved with, from its Conv1 and block_1_project kernels
 * (Conv1 alone cannot tell 0.35 from 0.5); 0 when unknown. For error messages only. */
static double file_alpha(const mt_keras_h5 *file) {
    const mt_keras_h5_tensor *conv1 = mt_keras_h5_find(file, "Conv1", "kernel");
    const mt_keras_h5_tensor *proj = mt_keras_h5_find(file, "block_1_project", "kernel");
    if (!conv1 || conv1->rank != 4 || !proj || proj->rank != 4) return 0.0;
    const double alphas[] = {0.35, 0.5, 0.75, 1.0, 1.3, 1.4};
    for (int i = 0; i < 6; i++) {
        mt_model_config c = mt_model_config_default();
        c.alpha = (float)alphas[i];
        mt_model_layout *layout;
        if (mt_model_layout_create(&c, &layout) != MT_OK) continue;
        const mt_param_tensor *a = mt_model_layout_find(layout, "Conv1", "kernel");
        const mt_param_tensor *b = mt_model_layout_find(layout, "block_1_project", "kernel");
        bool match = a->shape[3] == conv1->shape[3] && b->shape[3] == proj->shape[3];
        mt_model_layout_free(layout);
        if (match) return alphas[i];
    }
    return 0.0;
}

mt_status mt_model_load_keras(mt_model *model, const char *path) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    size_t total = 0;
    for (int i = 0; i < layout->tensor_count; i++)
        if (layout->tensors[i].layer_index < MT_MODEL_BACKBONE_LAYERS)
            total += layout->tensors[i].count;
    float *staging = malloc(total * sizeof *staging);
    if (!staging) return MT_FAIL(MT_ERR_NOMEM, "out of memory loading '%s'", path);

    mt_keras_h5 *file = NULL;
    mt_status status = mt_keras_h5_open(path, &file);
    size_t at = 0;
    for (int i = 0; i < layout->tensor_count && status == MT_OK; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->layer_index >= MT_MODEL_BACKBONE_LAYERS) continue;
        int64_t shape[4];
        for (int d = 0; d < t->rank; d++)
            shape[d] = t->shape[d];
        /* Keras 3 names the depthwise kernel "kernel" */
        const char *weight = t->weight;
        if (strcmp(weight, "depthwise_kernel") == 0 && !mt_keras_h5_find(file, t->layer, weight) &&
            mt_keras_h5_find(file, t->layer, "kernel"))
            weight = "kernel";
        status = mt_keras_h5_read(file, t->layer, weight, shape, t->rank, staging + at);
        if (status != MT_OK) {
            double alpha = file_alpha(file);
            if (alpha > 0.0 && alpha != (double)layout->config.alpha &&
                (float)alpha != layout->config.alpha)
                status = mt_error_context(status,
                                          "the file holds MobileNetV2 alpha %g, the model is "
                                          "alpha %g (set the model's alpha to %g)",
                                          alpha, (double)layout->config.alpha, alpha);
        }
        at += t->count;
    }
    at = 0;
    for (int i = 0; i < layout->tensor_count && status == MT_OK; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->layer_index >= MT_MODEL_BACKBONE_LAYERS) continue;
        status = mt_model_tensor_upload(model, t, staging + at);
        at += t->count;
    }
    mt_keras_h5_close(file);
    free(staging);
    if (status != MT_OK) return mt_error_context(status, "loading Keras weights '%s'", path);
    return MT_OK;
}

mt_status mt_model_save_keras(mt_model *model, const char *path) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    const char *names[MT_MODEL_BACKBONE_LAYERS];
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++)
        names[i] = layout->layers[i].name;
    float *host = mt_model_host_tensor(layout);
    if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory saving '%s'", path);
    mt_keras_h5_writer *writer = NULL;
    mt_status status = mt_keras_h5_create(path, names, MT_MODEL_BACKBONE_LAYERS, &writer);
    for (int i = 0; i < layout->tensor_count && status == MT_OK; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->layer_index >= MT_MODEL_BACKBONE_LAYERS) continue;
        int64_t shape[4];
        for (int d = 0; d < t->rank; d++)
            shape[d] = t->shape[d];
        status = mt_model_tensor_download(model, t, host);
        if (status == MT_OK)
            status = mt_keras_h5_write(writer, t->layer, t->weight, shape, t->rank, host);
    }
    if (status == MT_OK)
        status = mt_keras_h5_finish(writer); /* frees the writer */
    else
        mt_keras_h5_abort(writer);
    free(host);
    if (status != MT_OK) return mt_error_context(status, "saving Keras weights '%s'", path);
    return MT_OK;
}
