/* Keras' MobileNetV2, layer for layer, with a classification head, its parameter buffers and its
 * forward/backward executor on any backend of ops.h.
 *
 * The layer list. The backbone is Keras' `MobileNetV2(include_top=False)` as Keras 3 builds it:
 * 154 layers, index 0 the input (`input_layer`; Keras 2 called it `input_1`), 1 `Conv1`,
 * 2 `bn_Conv1`, 3 `Conv1_relu`, 4 `expanded_conv_depthwise` ... 151 `Conv_1`, 152 `Conv_1_bn`,
 * 153 `out_relu`, with Keras' names, indices, output shapes and parameter counts, including the
 * ZeroPadding2D layers `block_N_pad` (executed as the asymmetric padding of the depthwise conv
 * that follows) and the Add layers `block_N_add`. The head follows as layers 154..156:
 * `global_average_pooling2d`, `dropout`, `dense` (Dense(1) logit for 2 classes, Dense(C) for C >
 * 2). "Fine-tune from layer K" has Keras' meaning: backbone layers with index >= K are trainable.
 *
 * Parameters. Every parameter tensor lives in exactly one of three buffers in backend memory:
 *   trainable  the tensors of trainable layers, in Keras layer order and, within a layer, Keras'
 *              weight order (kernel | depthwise_kernel; gamma, beta; dense kernel, bias);
 *   frozen     the same for layers that are not trainable;
 *   state      BN moving_mean, moving_variance of every BN layer, in layer order (never trained).
 * The gradient buffer mirrors the trainable buffer element for element, so an optimizer step or
 * an all-reduce is one pointer and one length (mt_model_trainable). Per-tensor placement
 * (name, layer, shape, buffer, offset) is in mt_model_layout.tensors, for the importer, the
 * checkpoints and the exporter; tensors are copied in and out with mt_model_tensor_upload/download.
 *
 * Execution. Activations are allocated once for the configured batch and reused every step.
 * mt_model_backward walks the layers from the loss down and stops at the lowest trainable layer:
 * no weight gradient for frozen layers, no input gradient below the lowest trainable layer.
 * Gradients complete in reverse buffer order (the head's first, then the last backbone layers),
 * and an optional hook reports each completed range, for a bucketed all-reduce. */
#ifndef MOBILETUNE_MODEL_H
#define MOBILETUNE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/enum_names.h"
#include "mobiletune/ops.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MT_MODEL_BACKBONE_LAYERS = 154, /* Keras' layer count of MobileNetV2(include_top=False) */
    MT_MODEL_HEAD_LAYERS = 3,       /* pooling, dropout, dense */
    MT_MODEL_LAYERS = MT_MODEL_BACKBONE_LAYERS + MT_MODEL_HEAD_LAYERS,
    MT_MODEL_NAME_MAX = 64,
};

/* The input sides a model accepts, the same at every entry point (the config's model.input_size,
 * mt_model_create, `mobiletune summary --size`): multiples of 32, the network's total stride, so
 * every stride-2 stage halves exactly. mobiletune-pack --size is bounded by MT_MAX_IMAGE_SIDE
 * (record.h) instead: a database stores images of any side the record format holds, and only the
 * model checks that the side is one it accepts. */
enum {
    MT_MODEL_INPUT_SIZE_MIN = 32,
    MT_MODEL_INPUT_SIZE_STEP = 32,
    MT_MODEL_INPUT_SIZE_MAX = 1024,
};

/* fine_tune_at's default, the tutorial's value; its range is 1 .. MT_MODEL_BACKBONE_LAYERS - 1.
 * A macro (not an enum) so that the config table can spell it as its text default. */
#define MT_MODEL_FINE_TUNE_AT_DEFAULT 100

typedef enum mt_train_mode {
    MT_TRAIN_SCRATCH = 0, /* everything trainable, weights from initializers (or any file) */
    MT_TRAIN_FROZEN,      /* backbone frozen, head trainable (the tutorial's first phase) */
    MT_TRAIN_FINETUNE,    /* backbone layers with index >= fine_tune_at, and the head */
} mt_train_mode;

/* Which BN layers normalize with batch statistics during a training step. Frozen BN layers are
 * always in inference mode (Keras: a BN layer with trainable=False runs in inference mode). */
typedef enum mt_bn_mode {
    MT_BN_AUTO = 0,  /* scratch: TRAINABLE; frozen/finetune: INFERENCE (the tutorial) */
    MT_BN_TRAINABLE, /* trainable BN layers use batch statistics and update moving statistics */
    MT_BN_INFERENCE, /* every BN uses its moving statistics (Keras: base_model(training=False)) */
} mt_bn_mode;

typedef struct mt_model_config {
    float alpha;    /* width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 */
    int input_size; /* square side, MT_MODEL_INPUT_SIZE_MIN..MAX by STEP; 160 in the tutorial */
    int classes;    /* >= 2; 2 -> one logit with sigmoid cross-entropy */
    float dropout;  /* head dropout rate in [0, 1); 0.2 in the tutorial */
    mt_train_mode mode;
    int fine_tune_at; /* MT_TRAIN_FINETUNE: first trainable backbone layer index, 1..153
                       * (MT_MODEL_BACKBONE_LAYERS - 1) */
    mt_bn_mode bn_mode;
    float bn_momentum; /* BN moving statistics: moving = moving*m + batch*(1-m); Keras 0.999 */
    int batch_size;    /* the largest batch a step will see (activations are sized for it) */
} mt_model_config;

/* alpha 1.0, 160, 2 classes, dropout 0.2, scratch, fine_tune_at 100, BN auto, BN momentum 0.999,
 * batch 32. */
mt_model_config mt_model_config_default(void);

/* The names of the modes (the config's model.mode and model.bn_mode, `summary --mode/--bn`). */
extern const mt_enum_names mt_train_mode_names; /* scratch|frozen|finetune */
extern const mt_enum_names mt_bn_mode_names;    /* auto|trainable|inference */

mt_status mt_train_mode_parse(const char *text, mt_train_mode *out); /* scratch|frozen|finetune */
const char *mt_train_mode_name(mt_train_mode mode);

typedef enum mt_layer_kind {
    MT_LAYER_INPUT = 0,
    MT_LAYER_CONV,      /* Conv2D, no bias */
    MT_LAYER_DEPTHWISE, /* DepthwiseConv2D, multiplier 1, no bias */
    MT_LAYER_BATCHNORM, /* epsilon 1e-3, momentum config.bn_momentum (Keras: 0.999) */
    MT_LAYER_RELU6,     /* Keras ReLU(6.) */
    MT_LAYER_ZERO_PAD,  /* ZeroPadding2D ((0,1),(0,1)) before a stride-2 depthwise conv */
    MT_LAYER_ADD,       /* residual Add */
    MT_LAYER_GLOBAL_POOL,
    MT_LAYER_DROPOUT,
    MT_LAYER_DENSE,
} mt_layer_kind;

/* Keras' class name of a kind ("Conv2D", "BatchNormalization", ...). */
const char *mt_layer_kind_name(mt_layer_kind kind);

typedef struct mt_layer_info {
    char name[MT_MODEL_NAME_MAX]; /* Keras' layer name */
    int index;                    /* Keras' index (== position in mt_model_layout.layers) */
    mt_layer_kind kind;
    int inputs[2];           /* indices of the input layers (-1: none; [1] only for Add) */
    int out_h, out_w, out_c; /* output shape without the batch (pooled/dense: 1,1,C) */
    int kernel, stride;      /* conv/depthwise */
    int pad_top, pad_left, pad_bottom, pad_right; /* conv/depthwise as executed; zero-pad */
    size_t params;                                /* parameter count as Keras counts it (BN: 4*C) */
    bool trainable;   /* in the configured mode (layers without weights: as Keras) */
    bool bn_training; /* BN: batch statistics during training steps */
} mt_layer_info;

typedef enum mt_param_buffer {
    MT_PARAM_TRAINABLE = 0,
    MT_PARAM_FROZEN,
    MT_PARAM_STATE, /* BN moving statistics */
} mt_param_buffer;

typedef struct mt_param_tensor {
    char name[2 * MT_MODEL_NAME_MAX]; /* "<layer>/<weight>", e.g.
                                         "block_1_depthwise/depthwise_kernel" */
    const char *layer;                /* points into the layer's name */
    const char
        *weight; /* kernel, depthwise_kernel, gamma, beta, moving_mean, moving_variance, bias
                    (Keras 2 h5 names, without ":0"; Keras 3 calls depthwise_kernel "kernel") */
    int layer_index;
    int rank;
    int shape[4]; /* Keras' shape: conv [kh][kw][cin][cout], depthwise [kh][kw][c][1],
                     BN [c], dense kernel [in][out], bias [out] */
    size_t count; /* elements */
    mt_param_buffer buffer;
    size_t offset; /* elements from the start of its buffer */
} mt_param_tensor;

/* The network as a description: no backend, no memory. `mobiletune summary` prints this. */
typedef struct mt_model_layout {
    mt_model_config config;
    mt_layer_info layers[MT_MODEL_LAYERS];
    int tensor_count;
    mt_param_tensor *tensors; /* in the order: layer, then weight order within the layer */
    int feature_channels;     /* pooled features: 1280, or make_divisible(1280*alpha) above 1.0 */
    int logit_count;          /* 1 for 2 classes, else classes */
    int lowest_trainable;     /* lowest layer index with trainable weights (the backward stop) */
    size_t trainable_count;   /* elements of the trainable buffer (and of the gradients) */
    size_t frozen_count;
    size_t state_count;
    size_t backbone_params;    /* Keras' count_params() of the backbone (BN stats included) */
    size_t backbone_trainable; /* of which trainable in this mode */
    size_t total_params;       /* backbone + head */
} mt_model_layout;

/* Validate `config` (errors name the bad field, the value and what is allowed) and build the
 * layer list, tensor table and counts. Free with mt_model_layout_free. */
mt_status mt_model_layout_create(const mt_model_config *config, mt_model_layout **out);
void mt_model_layout_free(mt_model_layout *layout);

/* The tensor named "<layer>/<weight>" (or NULL). */
const mt_param_tensor *mt_model_layout_find(const mt_model_layout *layout, const char *layer,
                                            const char *weight);

/* Keras' _make_divisible(value, 8): round to the nearest multiple of 8 (at least 8), plus 8 when
 * the rounding lost more than 10%. */
int mt_make_divisible(float value, int divisor);

/* ---- the executor ------------------------------------------------------------------------- */

typedef struct mt_model mt_model;

/* Build the layout, allocate parameters, gradients, BN statistics and activations on `backend`
 * (which must outlive the model), and initialize the weights as Keras does (glorot_uniform
 * kernels, gamma 1, beta 0, moving mean 0, moving variance 1, bias 0) from `seed`. */
mt_status mt_model_create(mt_backend *backend, const mt_model_config *config, uint64_t seed,
                          mt_model **out);
void mt_model_destroy(mt_model *model);

const mt_model_layout *mt_model_get_layout(const mt_model *model);
mt_backend *mt_model_backend(const mt_model *model);

/* The trainable parameters and their gradients: `count` floats each, in backend memory. One more
 * float follows the gradients, grads[count]: the skip flag mt_model_forward_accumulate sets (1
 * for a non-finite loss, else 0), there so that the gradient all-reduce carries it along (a
 * mean over ranks is nonzero when any rank's flag is) for the optimizer to read (mt_optimizer's
 * skip). */
void mt_model_trainable(mt_model *model, float **params, float **grads, size_t *count);
/* The frozen parameters and the BN state, for checkpoints (backend memory). */
void mt_model_frozen(mt_model *model, float **params, size_t *count);
void mt_model_state(mt_model *model, float **state, size_t *count);

/* Copy one tensor (Keras shape, row-major) between host memory and the model. `tensor` may come
 * from another model's layout: it is then matched by name and shape. */
mt_status mt_model_tensor_upload(mt_model *model, const mt_param_tensor *tensor, const float *host);
mt_status mt_model_tensor_download(mt_model *model, const mt_param_tensor *tensor, float *host);

/* Copy every tensor `src` and `dst` share by name (e.g. a frozen run's weights into a finetune
 * model); their configs may differ in mode, classes of the same width, batch size. */
mt_status mt_model_copy_weights(mt_model *dst, const mt_model *src);

/* Load the backbone (every Conv/Depthwise/BN tensor, moving statistics included) from a Keras
 * HDF5 weights file, either layout (save_weights or whole model). Missing tensors, wrong shapes
 * or a different alpha are errors naming the layer and both shapes; nothing is half loaded
 * (the model is unchanged on failure). The head keeps its values. */
mt_status mt_model_load_keras(mt_model *model, const char *path);

/* Write the backbone (all 154 layers' names, every Conv/Depthwise/BN tensor with its moving
 * statistics) as a Keras 2 `save_weights` HDF5 file, the layout of Keras' own ImageNet no-top
 * file: `keras.applications.MobileNetV2(include_top=False, alpha=..., weights=None)
 * .load_weights(path)` reads it. Written to a temporary name and renamed (atomic). */
mt_status mt_model_save_keras(mt_model *model, const char *path);

typedef struct mt_step_result {
    float loss;  /* mean cross-entropy over the valid rows (0 when none or no labels) */
    int correct; /* valid rows whose prediction equals the label */
    int valid;   /* rows with label >= 0 */
} mt_step_result;

/* One forward pass on n <= batch_size images. images: host N,H,W,3 float in [-1,1] (Keras'
 * mobilenet_v2.preprocess_input). labels: host int32 [n], -1 marks a padding row (no loss, no
 * gradient); NULL computes no loss. training: dropout on, BN per layer's bn_training, and the
 * activations backward needs are kept. dropout_seed: the step's dropout stream (same seed, same
 * mask on every backend). logits_host (may be NULL): n x logit_count. A batch of a different n
 * than the previous step reallocates the activations (the last, short batch of an epoch). */
mt_status mt_model_forward(mt_model *model, const float *images, const int32_t *labels, int n,
                           bool training, uint64_t dropout_seed, float *logits_host,
                           mt_step_result *out);

/* The head only, on pooled features (host n x feature_channels), e.g. cached frozen-mode
 * features; same arguments and result as mt_model_forward. mt_model_backward after it fills
 * the head's gradients only (valid in frozen mode, where nothing below the head trains). */
mt_status mt_model_forward_head(mt_model *model, const float *features, const int32_t *labels,
                                int n, bool training, uint64_t dropout_seed, float *logits_host,
                                mt_step_result *out);

/* The input of mt_model_forward_accumulate: exactly one of
 *   images    host N,H,W,3 float in [-1,1] (as mt_model_forward), with host labels
 *   features  host n x feature_channels (as mt_model_forward_head: the head only), with host
 *             labels
 *   staged    a batch the caller put into the backend's staging slot `slot` (ops.h input_upload:
 *             uint8 pixels, labels and flip flags, copied while the previous step computes);
 *             mt_model_prepare_input calls input_convert, which scales and flips the pixels and
 *             places the labels in backend memory, before the forward (outside a captured
 *             step). labels is not read: check the host's copy with mt_model_check_labels
 *             before the upload.
 * n: the batch's rows (<= batch_size). prepared: the input was put in place by
 * mt_model_prepare_input already (only n is read then). */
typedef struct mt_model_input {
    const float *images;
    const float *features;
    bool staged;
    int slot;
    const int32_t *labels;
    int n;
    bool prepared;
} mt_model_input;

/* The per-step values of the next training forward and backward, written to backend memory
 * (ops.h scalars_write: no wait) where the step's ops read them: the dropout seed, and the step
 * number loss_accumulate records for a non-finite loss. mt_model_forward and
 * mt_model_forward_head write the seed themselves (step 0). */
mt_status mt_model_set_step(mt_model *model, uint64_t dropout_seed, uint64_t step);

/* The part of mt_model_forward_accumulate that depends on the host's batch: the input converted
 * or uploaded into the network's input (or the pooled features for a head-only step), the host
 * labels checked and uploaded. What follows it (mt_model_forward_accumulate with
 * input.prepared, mt_model_backward) reads only backend memory and the per-step values: the
 * sequence of op calls a captured training step replays (ops.h step_capture_begin). */
mt_status mt_model_prepare_input(mt_model *model, const mt_model_input *input);

/* Changes whenever the model (re)allocates tensors: activations for a new batch size (an
 * evaluation's short last batch, say), a gradient tensor. A captured step points into them: one
 * captured at another value must be captured again. */
uint64_t mt_model_memory_generation(const mt_model *model);

/* MT_ERR_INVALID naming the row when a label is outside [0, classes) and not -1 (padding);
 * *valid (may be NULL) gets the rows with a label. */
mt_status mt_model_check_labels(const mt_model *model, const int32_t *labels, int n, int *valid);

/* A training forward (training = true, no logits) that does not wait for the device: the
 * step's mean loss, rows predicted right and finiteness are added to `accum` (MT_ACCUM_COUNT
 * doubles of backend memory, zeroed by the caller; ops.h loss_accumulate, which records the
 * step number of mt_model_set_step for the first non-finite loss) instead of coming back in
 * `out`, which holds only `valid` (0 for a staged input); the skip flag goes to the float after
 * the gradients (mt_model_trainable). Host labels are checked as mt_model_forward does. The
 * dropout seed is mt_model_set_step's. Unless input->prepared, mt_model_prepare_input runs
 * first. mt_model_backward may follow. */
mt_status mt_model_forward_accumulate(mt_model *model, const mt_model_input *input, double *accum,
                                      mt_step_result *out);

/* Called during backward each time the gradients of one layer are final: elements
 * [offset, offset+count) of the gradient buffer. Ranges arrive in decreasing offset order and
 * together cover the whole buffer exactly once per backward. A non-OK return aborts backward. */
typedef mt_status (*mt_grad_ready_fn)(void *user, size_t offset, size_t count);
void mt_model_set_grad_hook(mt_model *model, mt_grad_ready_fn fn, void *user);

/* Gradients of the last training forward's mean loss with respect to every trainable
 * parameter, written (not accumulated) into the gradient buffer. Needs a forward with
 * training = true and labels. */
mt_status mt_model_backward(mt_model *model);

/* The factor backward multiplies the loss gradient by before it goes down the network: fp16's
 * loss scale, so that small gradients survive in 16-bit tensors. Never called: no scaling. Once
 * called, every backward scales (by the value in backend memory: a per-step value, written here
 * with scalars_write). The weight gradients then come out `scale` times too large; the caller
 * divides them (ops.h buffer_scale) before the optimizer. */
mt_status mt_model_set_loss_scale(mt_model *model, float scale);

/* Pooled backbone features in inference mode (BN moving statistics, no dropout):
 * images host N,H,W,3 in [-1,1], n <= batch_size; features host n x feature_channels. */
mt_status mt_model_features(mt_model *model, const float *images, int n, float *features);

#ifdef __cplusplus
}
#endif
#endif
