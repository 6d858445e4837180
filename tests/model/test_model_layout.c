/* The model's layer list and tensor table against Keras' own: every layer's index, name, class,
 * output shape and parameter count for six (alpha, size) pairs (goldens made by
 * golden/make_golden.py from keras.applications.MobileNetV2), the parameter totals of each
 * training mode, and the layout of the trainable / frozen / state buffers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "test_util.h"

static void check_golden(const char *dir, float alpha, const char *alpha_text, int size) {
    char path[1024];
    snprintf(path, sizeof path, "%s/keras_layers_%s_%d.txt", dir, alpha_text, size);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f != NULL, "cannot open golden %s", path);
    if (!f) return;
    mt_model_config config = mt_model_config_default();
    config.alpha = alpha;
    config.input_size = size;
    mt_model_layout *layout = NULL;
    if (mt_model_layout_create(&config, &layout) != MT_OK) {
        CHECK_MSG(false, "layout %s@%d: %s", alpha_text, size, mt_last_error());
        fclose(f);
        return;
    }
    char line[512];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[128], cls[128];
        int index, h, w, c;
        size_t params, trainable;
        if (sscanf(line, "total %zu %zu", &params, &trainable) == 2) {
            CHECK_MSG(layout->backbone_params == params, "%s@%d total %zu, Keras %zu", alpha_text,
                      size, layout->backbone_params, params);
            CHECK_MSG(layout->backbone_trainable == trainable, "%s@%d trainable %zu, Keras %zu",
                      alpha_text, size, layout->backbone_trainable, trainable);
            continue;
        }
        if (sscanf(line, "%d %127s %127s %d %d %d %zu", &index, name, cls, &h, &w, &c, &params) !=
            7) {
            CHECK_MSG(false, "bad golden line: %s", line);
            continue;
        }
        rows++;
        CHECK(index == rows - 1);
        if (index < 0 || index >= MT_MODEL_BACKBONE_LAYERS) continue;
        const mt_layer_info *l = &layout->layers[index];
        CHECK_MSG(strcmp(l->name, name) == 0, "%s@%d layer %d: %s, Keras %s", alpha_text, size,
                  index, l->name, name);
        CHECK_MSG(strcmp(mt_layer_kind_name(l->kind), cls) == 0, "layer %s: %s, Keras %s", name,
                  mt_layer_kind_name(l->kind), cls);
        CHECK_MSG(l->out_h == h && l->out_w == w && l->out_c == c,
                  "%s@%d layer %s: %dx%dx%d, Keras %dx%dx%d", alpha_text, size, name, l->out_h,
                  l->out_w, l->out_c, h, w, c);
        CHECK_MSG(l->params == params, "%s@%d layer %s: %zu params, Keras %zu", alpha_text, size,
                  name, l->params, params);
    }
    CHECK_MSG(rows == MT_MODEL_BACKBONE_LAYERS, "golden %s has %d layers", path, rows);
    fclose(f);
    mt_model_layout_free(layout);
}

static mt_model_layout *make(float alpha, int size, int classes, mt_train_mode mode, int at) {
    mt_model_config config = mt_model_config_default();
    config.alpha = alpha;
    config.input_size = size;
    config.classes = classes;
    config.mode = mode;
    config.fine_tune_at = at;
    mt_model_layout *layout = NULL;
    mt_status status = mt_model_layout_create(&config, &layout);
    CHECK_MSG(status == MT_OK, "layout: %s", mt_last_error());
    return layout;
}

/* Every buffer is covered by its tensors in table order without gaps or overlaps, and the table
 * is in layer order with Keras' weight order inside a layer. */
static void check_buffers(const mt_model_layout *layout) {
    size_t next[3] = {0, 0, 0};
    int last_layer = -1;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        CHECK_MSG(t->offset == next[t->buffer], "%s at %zu, expected %zu", t->name, t->offset,
                  next[t->buffer]);
        next[t->buffer] += t->count;
        CHECK(t->layer_index >= last_layer);
        last_layer = t->layer_index;
        const mt_layer_info *l = &layout->layers[t->layer_index];
        bool state = strncmp(t->weight, "moving_", 7) == 0;
        mt_param_buffer want = state          ? MT_PARAM_STATE
                               : l->trainable ? MT_PARAM_TRAINABLE
                                              : MT_PARAM_FROZEN;
        CHECK_MSG(t->buffer == want, "%s in buffer %d", t->name, (int)t->buffer);
        CHECK(mt_model_layout_find(layout, t->layer, t->weight) == t);
    }
    CHECK(next[MT_PARAM_TRAINABLE] == layout->trainable_count);
    CHECK(next[MT_PARAM_FROZEN] == layout->frozen_count);
    CHECK(next[MT_PARAM_STATE] == layout->state_count);
    CHECK(layout->trainable_count + layout->frozen_count + layout->state_count ==
          layout->total_params);
}

int main(int argc, char **argv) {
    if (argc < 2) mt_test_skip("usage: test_model_layout GOLDEN_DIR");
    check_golden(argv[1], 1.0f, "1.0", 160);
    check_golden(argv[1], 0.35f, "0.35", 224);
    check_golden(argv[1], 1.3f, "1.3", 96);
    check_golden(argv[1], 0.5f, "0.5", 64);
    check_golden(argv[1], 0.75f, "0.75", 128);
    check_golden(argv[1], 1.4f, "1.4", 224);

    /* The numbers (Keras' model.summary() of the tutorial). */
    mt_model_layout *l = make(1.0f, 160, 2, MT_TRAIN_SCRATCH, 100);
    if (l) {
        CHECK(l->backbone_params == 2257984);
        CHECK(l->backbone_trainable == 2223872);
        CHECK(l->state_count == 34112);
        CHECK(l->trainable_count == 2223872 + 1281);
        CHECK(l->frozen_count == 0);
        CHECK(l->total_params == 2257984 + 1281);
        CHECK(l->feature_channels == 1280 && l->logit_count == 1);
        CHECK(l->lowest_trainable == 1);
        CHECK(strcmp(l->layers[100].name, "block_11_expand_relu") == 0);
        CHECK(strcmp(l->layers[0].name, "input_layer") == 0);
        CHECK(strcmp(l->layers[12].name, "block_1_pad") == 0);
        CHECK(l->layers[12].out_h == 81);
        CHECK(l->layers[13].pad_top == 0 && l->layers[13].pad_bottom == 1);
        CHECK(l->layers[1].pad_top == 0 && l->layers[1].pad_bottom == 1); /* SAME, stride 2 */
        CHECK(l->layers[26].kind == MT_LAYER_ADD && l->layers[26].inputs[1] == 17);
        CHECK(strcmp(l->layers[156].name, "dense") == 0 && l->layers[156].params == 1281);
        const mt_param_tensor *t = mt_model_layout_find(l, "block_1_depthwise", "depthwise_kernel");
        CHECK(t && t->rank == 4 && t->shape[0] == 3 && t->shape[2] == 96 && t->shape[3] == 1);
        t = mt_model_layout_find(l, "dense", "bias");
        CHECK(t && t->buffer == MT_PARAM_TRAINABLE && t->offset + t->count == l->trainable_count);
        t = mt_model_layout_find(l, "Conv1", "kernel");
        CHECK(t && t->offset == 0 && t->count == 864);
        check_buffers(l);
        mt_model_layout_free(l);
    }
    l = make(1.0f, 160, 2, MT_TRAIN_FROZEN, 100);
    if (l) {
        CHECK(l->trainable_count == 1281);
        CHECK(l->backbone_trainable == 0);
        CHECK(l->frozen_count == 2223872);
        CHECK(l->lowest_trainable == 156);
        check_buffers(l);
        mt_model_layout_free(l);
    }
    l = make(1.0f, 160, 2, MT_TRAIN_FINETUNE, 100);
    if (l) {
        CHECK_MSG(l->trainable_count == 1862721, "finetune@100: %zu", l->trainable_count);
        CHECK(l->lowest_trainable == 101); /* block_11_depthwise: 100 has no weights */
        CHECK(!l->layers[99].trainable && l->layers[100].trainable);
        check_buffers(l);
        mt_model_layout_free(l);
    }
    l = make(0.35f, 224, 5, MT_TRAIN_SCRATCH, 100);
    if (l) {
        CHECK(l->backbone_params == 410208);
        CHECK(l->logit_count == 5 && l->layers[156].params == 1280 * 5 + 5);
        CHECK(l->feature_channels == 1280);
        check_buffers(l);
        mt_model_layout_free(l);
    }
    l = make(1.4f, 224, 3, MT_TRAIN_FINETUNE, 1);
    if (l) {
        CHECK(l->feature_channels == 1792);
        CHECK(l->frozen_count == 0 && l->lowest_trainable == 1);
        check_buffers(l);
        mt_model_layout_free(l);
    }

    /* Keras' _make_divisible */
    CHECK(mt_make_divisible(32 * 0.35f, 8) == 16);
    CHECK(mt_make_divisible(5, 8) == 8);
    CHECK(mt_make_divisible(1280 * 1.4f, 8) == 1792);

    /* Bad configurations fail with a message naming the field. */
    mt_model_config bad = mt_model_config_default();
    mt_model_layout *none = NULL;
    bad.alpha = 0.6f;
    CHECK(mt_model_layout_create(&bad, &none) == MT_ERR_INVALID &&
          strstr(mt_last_error(), "alpha"));
    bad = mt_model_config_default();
    bad.input_size = 150;
    CHECK(mt_model_layout_create(&bad, &none) == MT_ERR_INVALID && strstr(mt_last_error(), "150"));
    bad = mt_model_config_default();
    bad.mode = MT_TRAIN_FINETUNE;
    bad.fine_tune_at = 154;
    CHECK(mt_model_layout_create(&bad, &none) == MT_ERR_INVALID &&
          strstr(mt_last_error(), "fine_tune_at"));
    bad = mt_model_config_default();
    bad.classes = 1;
    CHECK(mt_model_layout_create(&bad, &none) == MT_ERR_INVALID);
    CHECK(none == NULL);
    /* the input-size limits are the ones the config table documents (model.h's constants):
     * the largest side builds, one step more is refused, naming the limit */
    mt_model_layout_free(make(1.0f, MT_MODEL_INPUT_SIZE_MAX, 2, MT_TRAIN_FROZEN, 100));
    bad = mt_model_config_default();
    bad.input_size = MT_MODEL_INPUT_SIZE_MAX + MT_MODEL_INPUT_SIZE_STEP;
    CHECK(mt_model_layout_create(&bad, &none) == MT_ERR_INVALID &&
          strstr(mt_last_error(), "between 32 and 1024"));
    bad.input_size = MT_MODEL_INPUT_SIZE_MIN - MT_MODEL_INPUT_SIZE_STEP / 2;
    CHECK(mt_model_layout_create(&bad, &none) == MT_ERR_INVALID);
    CHECK(mt_model_config_default().fine_tune_at == MT_MODEL_FINE_TUNE_AT_DEFAULT);
    mt_train_mode mode;
    CHECK(mt_train_mode_parse("finetune", &mode) == MT_OK && mode == MT_TRAIN_FINETUNE);
    CHECK(mt_train_mode_parse("fine", &mode) == MT_ERR_INVALID);
    return mt_test_finish();
}
