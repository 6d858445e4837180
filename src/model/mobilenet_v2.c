/* The MobileNetV2 layer list as Keras builds it (keras/src/applications/mobilenet_v2.py), from
 * one readable table of inverted-residual blocks, plus the classification head; and from it the
 * parameter tensor table with each tensor's place in the trainable, frozen or state buffer.
 * Nothing here touches a backend: `mobiletune summary` and the tests use it alone. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"

/* Keras' inverted residual blocks: block_id, filters (before alpha), stride, expansion. Block 0
 * is named "expanded_conv" and has no expansion layer. */
typedef struct block_def {
    int filters, stride, expansion;
} block_def;

static const block_def blocks[17] = {
    {16, 1, 1},                                        /* expanded_conv */
    {24, 2, 6},  {24, 1, 6},                           /* block_1, block_2 */
    {32, 2, 6},  {32, 1, 6},  {32, 1, 6},              /* block_3 .. block_5 */
    {64, 2, 6},  {64, 1, 6},  {64, 1, 6},  {64, 1, 6}, /* block_6 .. block_9 */
    {96, 1, 6},  {96, 1, 6},  {96, 1, 6},              /* block_10 .. block_12 */
    {160, 2, 6}, {160, 1, 6}, {160, 1, 6},             /* block_13 .. block_15 */
    {320, 1, 6},                                       /* block_16 */
};

static int make_divisible(double value, int divisor) {
    /* int(v + divisor/2) // divisor * divisor, at least divisor, +divisor when below 90% */
    int rounded = (int)(value + divisor / 2.0) / divisor * divisor;
    if (rounded < divisor) rounded = divisor;
    if (rounded < 0.9 * value) rounded += divisor;
    return rounded;
}

int mt_make_divisible(float value, int divisor) {
    return make_divisible(value, divisor);
}

mt_model_config mt_model_config_default(void) {
    return (mt_model_config){
        .alpha = 1.0f,
        .input_size = 160,
        .classes = 2,
        .dropout = 0.2f,
        .mode = MT_TRAIN_SCRATCH,
        .fine_tune_at = MT_MODEL_FINE_TUNE_AT_DEFAULT,
        .bn_mode = MT_BN_AUTO,
        .bn_momentum = 0.999f, /* Keras' MobileNetV2 BatchNormalization(momentum=0.999) */
        .batch_size = 32,
    };
}

static const char *const train_mode_names[] = {
    [MT_TRAIN_SCRATCH] = "scratch", [MT_TRAIN_FROZEN] = "frozen", [MT_TRAIN_FINETUNE] = "finetune"};
const mt_enum_names mt_train_mode_names = MT_ENUM_NAMES(train_mode_names);

static const char *const bn_mode_names[] = {
    [MT_BN_AUTO] = "auto", [MT_BN_TRAINABLE] = "trainable", [MT_BN_INFERENCE] = "inference"};
const mt_enum_names mt_bn_mode_names = MT_ENUM_NAMES(bn_mode_names);

mt_status mt_train_mode_parse(const char *text, mt_train_mode *out) {
    int mode;
    if (!mt_enum_find(&mt_train_mode_names, text, &mode)) {
        char names[64];
        return MT_FAIL(MT_ERR_INVALID, "unknown training mode '%s' (use %s)", text,
                       mt_enum_join(&mt_train_mode_names, NULL, names, sizeof names));
    }
    *out = (mt_train_mode)mode;
    return MT_OK;
}

const char *mt_train_mode_name(mt_train_mode mode) {
    return mt_enum_name(&mt_train_mode_names, (int)mode);
}

const char *mt_layer_kind_name(mt_layer_kind kind) {
    switch (kind) {
    case MT_LAYER_INPUT:
        return "InputLayer";
    case MT_LAYER_CONV:
        return "Conv2D";
    case MT_LAYER_DEPTHWISE:
        return "DepthwiseConv2D";
    case MT_LAYER_BATCHNORM:
        return "BatchNormalization";
    case MT_LAYER_RELU6:
        return "ReLU";
    case MT_LAYER_ZERO_PAD:
        return "ZeroPadding2D";
    case MT_LAYER_ADD:
        return "Add";
    case MT_LAYER_GLOBAL_POOL:
        return "GlobalAveragePooling2D";
    case MT_LAYER_DROPOUT:
        return "Dropout";
    case MT_LAYER_DENSE:
        return "Dense";
    }
    return "?";
}

/* Doubles, as Python multiplies them: the channel arithmetic must round exactly like Keras'. */
static const double valid_alphas[] = {0.35, 0.5, 0.75, 1.0, 1.3, 1.4};

static double keras_alpha(float alpha) {
    for (size_t i = 0; i < sizeof valid_alphas / sizeof valid_alphas[0]; i++)
        if (fabs(alpha - valid_alphas[i]) < 1e-6) return valid_alphas[i];
    return alpha;
}

static mt_status validate(const mt_model_config *c) {
    bool alpha_ok = false;
    for (size_t i = 0; i < sizeof valid_alphas / sizeof valid_alphas[0]; i++)
        if (fabs(c->alpha - valid_alphas[i]) < 1e-6) alpha_ok = true;
    if (!alpha_ok)
        return MT_FAIL(
            MT_ERR_INVALID,
            "model alpha %g is not one of Keras' widths (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)",
            (double)c->alpha);
    if (c->input_size < MT_MODEL_INPUT_SIZE_MIN || c->input_size % MT_MODEL_INPUT_SIZE_STEP != 0 ||
        c->input_size > MT_MODEL_INPUT_SIZE_MAX)
        return MT_FAIL(MT_ERR_INVALID,
                       "model input size %d must be a multiple of %d between %d and %d "
                       "(160 and 224 are the usual ones)",
                       c->input_size, MT_MODEL_INPUT_SIZE_STEP, MT_MODEL_INPUT_SIZE_MIN,
                       MT_MODEL_INPUT_SIZE_MAX);
    if (c->classes < 2 || c->classes > 100000)
        return MT_FAIL(MT_ERR_INVALID, "model classes %d must be at least 2", c->classes);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "model dropout %g must be in [0, 1)", (double)c->dropout);
    if ((unsigned)c->mode > MT_TRAIN_FINETUNE)
        return MT_FAIL(MT_ERR_INVALID, "model mode %d is not scratch, frozen or finetune",
                       (int)c->mode);
    if (c->mode == MT_TRAIN_FINETUNE &&
        (c->fine_tune_at < 1 || c->fine_tune_at >= MT_MODEL_BACKBONE_LAYERS))
        return MT_FAIL(MT_ERR_INVALID,
                       "fine_tune_at %d must be a backbone layer index from 1 to %d "
                       "(the tutorial uses 100)",
                       c->fine_tune_at, MT_MODEL_BACKBONE_LAYERS - 1);
    if ((unsigned)c->bn_mode > MT_BN_INFERENCE)
        return MT_FAIL(MT_ERR_INVALID, "model bn_mode %d is not auto, trainable or inference",
                       (int)c->bn_mode);
    if (!(c->bn_momentum >= 0.0f && c->bn_momentum < 1.0f))
        return MT_FAIL(MT_ERR_INVALID, "model bn_momentum %g must be in [0, 1) (Keras: 0.999)",
                       (double)c->bn_momentum);
    if (c->batch_size < 1 || c->batch_size > 65536)
        return MT_FAIL(MT_ERR_INVALID, "model batch size %d must be between 1 and 65536",
                       c->batch_size);
    return MT_OK;
}

/* The builder appends layers in Keras order, tracking the current tensor. */
typedef struct builder {
    mt_model_layout *layout;
    int count;
    int current; /* index of the layer whose output is the running tensor */
} builder;

static mt_layer_info *add_layer(builder *b, mt_layer_kind kind, const char *name, int input) {
    MT_ASSERT(b->count < MT_MODEL_LAYERS);
    mt_layer_info *l = &b->layout->layers[b->count];
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", name);
    l->index = b->count;
    l->kind = kind;
    l->inputs[0] = input;
    l->inputs[1] = -1;
    if (input >= 0) {
        const mt_layer_info *in = &b->layout->layers[input];
        l->out_h = in->out_h;
        l->out_w = in->out_w;
        l->out_c = in->out_c;
    }
    b->current = b->count++;
    return l;
}

static void add_conv(builder *b, const char *name, bool depthwise, int out_c, int kernel,
                     int stride, bool same_padding) {
    const mt_layer_info *in = &b->layout->layers[b->current];
    mt_layer_info *l =
        add_layer(b, depthwise ? MT_LAYER_DEPTHWISE : MT_LAYER_CONV, name, b->current);
    l->kernel = kernel;
    l->stride = stride;
    int in_h = in->out_h, in_w = in->out_w, in_c = in->out_c;
    if (in->kind == MT_LAYER_ZERO_PAD) {
        /* Executed without the pad layer: its zeros become this conv's padding. */
        l->pad_top = in->pad_top;
        l->pad_left = in->pad_left;
        l->pad_bottom = in->pad_bottom;
        l->pad_right = in->pad_right;
        in_h -= in->pad_top + in->pad_bottom;
        in_w -= in->pad_left + in->pad_right;
    } else if (same_padding) {
        mt_same_padding(in_h, kernel, stride, &l->pad_top, &l->pad_bottom);
        mt_same_padding(in_w, kernel, stride, &l->pad_left, &l->pad_right);
    }
    l->out_c = depthwise ? in_c : out_c;
    l->out_h = (in_h + l->pad_top + l->pad_bottom - kernel) / stride + 1;
    l->out_w = (in_w + l->pad_left + l->pad_right - kernel) / stride + 1;
    l->params = (size_t)kernel * kernel * in_c * (depthwise ? 1 : (size_t)out_c);
}

static void add_bn(builder *b, const char *name) {
    mt_layer_info *l = add_layer(b, MT_LAYER_BATCHNORM, name, b->current);
    l->params = 4 * (size_t)l->out_c;
}

static void add_relu(builder *b, const char *name) {
    add_layer(b, MT_LAYER_RELU6, name, b->current);
}

/* Keras' correct_pad for a 3x3 stride-2 conv: ((0,1),(0,1)) on even sides, which the input
 * size being a multiple of 32 guarantees at every stride-2 block. */
static void add_pad(builder *b, const char *name) {
    mt_layer_info *l = add_layer(b, MT_LAYER_ZERO_PAD, name, b->current);
    l->pad_top = l->out_h % 2 ? 1 : 0;
    l->pad_left = l->out_w % 2 ? 1 : 0;
    l->pad_bottom = 1;
    l->pad_right = 1;
    l->out_h += l->pad_top + l->pad_bottom;
    l->out_w += l->pad_left + l->pad_right;
}

static void add_block(builder *b, int block_id, const block_def *def, double alpha) {
    int block_input = b->current;
    int in_c = b->layout->layers[block_input].out_c;
    int filters = make_divisible((int)(def->filters * alpha), 8); /* int(filters * alpha) */
    char prefix[32], name[MT_MODEL_NAME_MAX];
    if (block_id)
        snprintf(prefix, sizeof prefix, "block_%d_", block_id);
    else
        snprintf(prefix, sizeof prefix, "expanded_conv_");
#define NAME(suffix) (snprintf(name, sizeof name, "%s%s", prefix, suffix), name)
    if (block_id) {
        add_conv(b, NAME("expand"), false, def->expansion * in_c, 1, 1, true);
        add_bn(b, NAME("expand_BN"));
        add_relu(b, NAME("expand_relu"));
    }
    if (def->stride == 2) add_pad(b, NAME("pad"));
    add_conv(b, NAME("depthwise"), true, 0, 3, def->stride, def->stride == 1);
    add_bn(b, NAME("depthwise_BN"));
    add_relu(b, NAME("depthwise_relu"));
    add_conv(b, NAME("project"), false, filters, 1, 1, true);
    add_bn(b, NAME("project_BN"));
    if (in_c == filters && def->stride == 1) {
        mt_layer_info *add = add_layer(b, MT_LAYER_ADD, NAME("add"), b->current);
        add->inputs[1] = block_input;
    }
#undef NAME
}

/* Weight names of a layer in Keras' order, and whether each is a BN moving statistic. */
static int layer_weights(const mt_layer_info *l, const char **names, bool *is_state) {
    switch (l->kind) {
    case MT_LAYER_CONV:
        names[0] = "kernel";
        is_state[0] = false;
        return 1;
    case MT_LAYER_DEPTHWISE:
        names[0] = "depthwise_kernel";
        is_state[0] = false;
        return 1;
    case MT_LAYER_BATCHNORM:
        names[0] = "gamma";
        names[1] = "beta";
        names[2] = "moving_mean";
        names[3] = "moving_variance";
        is_state[0] = is_state[1] = false;
        is_state[2] = is_state[3] = true;
        return 4;
    case MT_LAYER_DENSE:
        names[0] = "kernel";
        names[1] = "bias";
        is_state[0] = is_state[1] = false;
        return 2;
    default:
        return 0;
    }
}

static void weight_shape(const mt_layer_info *l, const mt_layer_info *in, int w, int *rank,
                         int shape[4]) {
    switch (l->kind) {
    case MT_LAYER_CONV:
        *rank = 4;
        shape[0] = shape[1] = l->kernel;
        shape[2] = in->out_c;
        shape[3] = l->out_c;
        return;
    case MT_LAYER_DEPTHWISE:
        *rank = 4;
        shape[0] = shape[1] = l->kernel;
        shape[2] = l->out_c;
        shape[3] = 1;
        return;
    case MT_LAYER_DENSE:
        if (w == 0) {
            *rank = 2;
            shape[0] = in->out_c;
            shape[1] = l->out_c;
        } else {
            *rank = 1;
            shape[0] = l->out_c;
        }
        return;
    default:
        *rank = 1;
        shape[0] = l->out_c;
        return;
    }
}

mt_status mt_model_layout_create(const mt_model_config *config, mt_model_layout **out) {
    *out = NULL;
    MT_TRY(validate(config));
    mt_model_layout *layout = calloc(1, sizeof *layout);
    if (!layout) return MT_FAIL(MT_ERR_NOMEM, "out of memory building the model layout");
    layout->config = *config;
    double alpha = keras_alpha(config->alpha);

    builder b = {.layout = layout, .count = 0, .current = -1};
    mt_layer_info *input = add_layer(&b, MT_LAYER_INPUT, "input_layer", -1);
    input->out_h = input->out_w = config->input_size;
    input->out_c = 3;

    add_conv(&b, "Conv1", false, make_divisible(32 * alpha, 8), 3, 2, true);
    add_bn(&b, "bn_Conv1");
    add_relu(&b, "Conv1_relu");
    for (int i = 0; i < 17; i++)
        add_block(&b, i, &blocks[i], alpha);
    int last = alpha > 1.0 ? make_divisible(1280 * alpha, 8) : 1280;
    add_conv(&b, "Conv_1", false, last, 1, 1, true);
    add_bn(&b, "Conv_1_bn");
    add_relu(&b, "out_relu");
    MT_ASSERT(b.count == MT_MODEL_BACKBONE_LAYERS);

    mt_layer_info *pool =
        add_layer(&b, MT_LAYER_GLOBAL_POOL, "global_average_pooling2d", b.current);
    pool->out_h = pool->out_w = 1;
    add_layer(&b, MT_LAYER_DROPOUT, "dropout", b.current);
    mt_layer_info *dense = add_layer(&b, MT_LAYER_DENSE, "dense", b.current);
    layout->feature_channels = last;
    layout->logit_count = config->classes == 2 ? 1 : config->classes;
    dense->out_c = layout->logit_count;
    dense->params = (size_t)last * dense->out_c + dense->out_c;
    MT_ASSERT(b.count == MT_MODEL_LAYERS);

    /* Trainability as Keras sees it after the tutorial's assignments. */
    mt_bn_mode bn = config->bn_mode;
    if (bn == MT_BN_AUTO) bn = config->mode == MT_TRAIN_SCRATCH ? MT_BN_TRAINABLE : MT_BN_INFERENCE;
    layout->lowest_trainable = -1;
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        mt_layer_info *l = &layout->layers[i];
        if (i >= MT_MODEL_BACKBONE_LAYERS || config->mode == MT_TRAIN_SCRATCH)
            l->trainable = true;
        else if (config->mode == MT_TRAIN_FINETUNE)
            l->trainable = i >= config->fine_tune_at;
        else
            l->trainable = false;
        l->bn_training = l->kind == MT_LAYER_BATCHNORM && l->trainable && bn == MT_BN_TRAINABLE;
        if (l->trainable && l->params > 0 && layout->lowest_trainable < 0)
            layout->lowest_trainable = i;
    }

    /* The tensor table: count first, then place each tensor in its buffer in layer order. */
    int tensors = 0;
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        const char *names[4];
        bool is_state[4];
        tensors += layer_weights(&layout->layers[i], names, is_state);
    }
    layout->tensors = calloc((size_t)tensors, sizeof *layout->tensors);
    if (!layout->tensors) {
        free(layout);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory building the model's tensor table");
    }
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        const char *names[4];
        bool is_state[4];
        int n = layer_weights(l, names, is_state);
        for (int w = 0; w < n; w++) {
            mt_param_tensor *t = &layout->tensors[layout->tensor_count++];
            snprintf(t->name, sizeof t->name, "%s/%s", l->name, names[w]);
            t->layer = l->name;
            t->weight = names[w];
            t->layer_index = i;
            weight_shape(l, &layout->layers[l->inputs[0]], w, &t->rank, t->shape);
            t->count = 1;
            for (int d = 0; d < t->rank; d++)
                t->count *= (size_t)t->shape[d];
            size_t *fill;
            if (is_state[w]) {
                t->buffer = MT_PARAM_STATE;
                fill = &layout->state_count;
            } else if (l->trainable) {
                t->buffer = MT_PARAM_TRAINABLE;
                fill = &layout->trainable_count;
            } else {
                t->buffer = MT_PARAM_FROZEN;
                fill = &layout->frozen_count;
            }
            t->offset = *fill;
            *fill += t->count;
            if (i < MT_MODEL_BACKBONE_LAYERS) {
                layout->backbone_params += t->count;
                if (t->buffer == MT_PARAM_TRAINABLE) layout->backbone_trainable += t->count;
            }
            layout->total_params += t->count;
        }
    }
    *out = layout;
    return MT_OK;
}

void mt_model_layout_free(mt_model_layout *layout) {
    if (!layout) return;
    free(layout->tensors);
    free(layout);
}

const mt_param_tensor *mt_model_layout_find(const mt_model_layout *layout, const char *layer,
                                            const char *weight) {
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (strcmp(t->layer, layer) == 0 && strcmp(t->weight, weight) == 0) return t;
    }
    return NULL;
}
