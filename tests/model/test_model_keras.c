/* mt_model_load_keras with the shared Keras files: the ImageNet backbone and the teachable
 * machine file (whole-model layout, alpha 0.35) load, values arrive unchanged in the right
 * tensors, a file of another width is refused with a message naming both widths, a failed
 * load leaves the model untouched, and a saved backbone loads back identically. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/keras_h5.h"
#include "mobiletune/model.h"
#include "test_util.h"

static mt_model *make(mt_backend *backend, float alpha) {
    mt_model_config config = mt_model_config_default();
    config.alpha = alpha;
    config.input_size = 32;
    config.batch_size = 1;
    mt_model *model = NULL;
    if (mt_model_create(backend, &config, 3, &model) != MT_OK)
        fprintf(stderr, "create: %s\n", mt_last_error());
    return model;
}

/* The model's copy of layer/weight equals the file's. */
static void check_same(mt_model *model, const char *path, const char *layer, const char *weight,
                       const char *file_weight) {
    const mt_param_tensor *t = mt_model_layout_find(mt_model_get_layout(model), layer, weight);
    CHECK(t != NULL);
    if (!t) return;
    float *mine = malloc(t->count * sizeof *mine), *theirs = malloc(t->count * sizeof *theirs);
    int64_t shape[4];
    for (int d = 0; d < t->rank; d++)
        shape[d] = t->shape[d];
    mt_keras_h5 *file = NULL;
    CHECK(mt_keras_h5_open(path, &file) == MT_OK);
    CHECK(file && mt_keras_h5_read(file, layer, file_weight, shape, t->rank, theirs) == MT_OK);
    mt_keras_h5_close(file);
    CHECK(mt_model_tensor_download(model, t, mine) == MT_OK);
    CHECK_MSG(memcmp(mine, theirs, t->count * sizeof *mine) == 0, "%s differs from the file",
              t->name);
    free(mine);
    free(theirs);
}

int main(void) {
    const char *imagenet_rel = "weights/mobilenet_v2_1.0_224_imagenet_no_top.h5";
    const char *tm_rel = "weights/teachable_machine_catdog_0.35_224.h5";
    if (!mt_test_shared_path(imagenet_rel) || !mt_test_shared_path(tm_rel))
        mt_test_skip("the shared weights (../shared/weights) are not here");
    char imagenet[1024], tm[1024];
    snprintf(imagenet, sizeof imagenet, "%s", mt_test_shared_path(imagenet_rel));
    snprintf(tm, sizeof tm, "%s", mt_test_shared_path(tm_rel));

    mt_backend *backend = NULL;
    CHECK_OK(mt_backend_create("reference", NULL, &backend));

    mt_model *wide = make(backend, 1.0f);
    CHECK_OK(mt_model_load_keras(wide, imagenet));
    check_same(wide, imagenet, "Conv1", "kernel", "kernel");
    check_same(wide, imagenet, "block_16_depthwise", "depthwise_kernel", "depthwise_kernel");
    check_same(wide, imagenet, "Conv_1_bn", "moving_variance", "moving_variance");
    check_same(wide, imagenet, "block_3_project_BN", "beta", "beta");

    mt_model *narrow = make(backend, 0.35f);
    CHECK_OK(mt_model_load_keras(narrow, tm));
    check_same(narrow, tm, "block_5_expand", "kernel", "kernel");
    check_same(narrow, tm, "bn_Conv1", "moving_mean", "moving_mean");

    /* the wrong width: refused, naming both alphas, nothing changed */
    mt_model *other = make(backend, 0.35f);
    const mt_param_tensor *t =
        mt_model_layout_find(mt_model_get_layout(other), "Conv_1_bn", "gamma");
    float before[1280], after[1280];
    CHECK(mt_model_tensor_download(other, t, before) == MT_OK);
    mt_status status = mt_model_load_keras(other, imagenet);
    CHECK(status == MT_ERR_FORMAT);
    const char *message = mt_last_error();
    CHECK_MSG(strstr(message, "alpha 1") && strstr(message, "alpha 0.35") &&
                  strstr(message, "Conv1"),
              "message: %s", message);
    CHECK(mt_model_tensor_download(other, t, after) == MT_OK);
    CHECK(memcmp(before, after, sizeof before) == 0);
    CHECK(mt_model_load_keras(other, "/nonexistent/weights.h5") == MT_ERR_IO);

    /* save and load back: every backbone tensor identical */
    char *dir = mt_test_make_temp_dir("model-keras");
    char saved[4200];
    snprintf(saved, sizeof saved, "%s/backbone.h5", dir);
    CHECK_OK(mt_model_save_keras(narrow, saved));
    mt_model *back = make(backend, 0.35f);
    CHECK_OK(mt_model_load_keras(back, saved));
    const mt_model_layout *layout = mt_model_get_layout(narrow);
    int differ = 0;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        if (p->layer_index >= MT_MODEL_BACKBONE_LAYERS) continue;
        float *x = malloc(p->count * sizeof *x), *y = malloc(p->count * sizeof *y);
        CHECK(mt_model_tensor_download(narrow, p, x) == MT_OK);
        CHECK(mt_model_tensor_download(back, p, y) == MT_OK);
        differ += memcmp(x, y, p->count * sizeof *x) != 0;
        free(x);
        free(y);
    }
    CHECK_MSG(differ == 0, "%d tensors differ after a save/load round trip", differ);
    mt_model_destroy(back);
    mt_test_remove_tree(dir);

    /* copy by name into a model of another mode (other buffer placement): same values */
    mt_model_config fine = mt_model_config_default();
    fine.alpha = 0.35f;
    fine.input_size = 32;
    fine.batch_size = 1;
    fine.mode = MT_TRAIN_FINETUNE;
    mt_model *tuned = NULL;
    CHECK_OK(mt_model_create(backend, &fine, 8, &tuned));
    CHECK_OK(mt_model_copy_weights(tuned, narrow));
    differ = 0;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        float *x = malloc(p->count * sizeof *x), *y = malloc(p->count * sizeof *y);
        CHECK(mt_model_tensor_download(narrow, p, x) == MT_OK);
        CHECK(mt_model_tensor_download(tuned, p, y) == MT_OK); /* p: narrow's entry, by name */
        differ += memcmp(x, y, p->count * sizeof *x) != 0;
        free(x);
        free(y);
    }
    CHECK_MSG(differ == 0, "%d tensors differ after mt_model_copy_weights", differ);
    CHECK(mt_model_copy_weights(tuned, wide) == MT_ERR_INVALID); /* another width */
    mt_model_destroy(tuned);

    mt_model_destroy(wide);
    mt_model_destroy(narrow);
    mt_model_destroy(other);
    mt_backend_destroy(backend);
    return mt_test_finish();
}
