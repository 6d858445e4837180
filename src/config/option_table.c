/* The option table: every option of the trainer's config (section, key, type, place in
 * mt_train_config, default, allowed values, help) in one place, and lookups into it. The INI
 * reader (ini_read.c), --set (set.c), the checks (check.c), the INI writer (ini_write.c), --help
 * and docs/config.md (help.c) all come from it, so they cannot drift apart. */
#include "config/config_internal.h"

#include <string.h>

_Static_assert(sizeof(mt_train_mode) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_bn_mode) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_optimizer_kind) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_lr_schedule_kind) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_nan_policy) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_config_backend) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_config_comm) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_cache_features) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(mt_precision) == sizeof(int), "enum options are stored as int");

#define FIELD(f) offsetof(mt_train_config, f), sizeof(((mt_train_config *)0)->f)
/* a numeric macro's digits as a text default (the table's defaults are the INI text) */
#define CONFIG_STR_(x) #x
#define CONFIG_STR(x) CONFIG_STR_(x)

/* The one table. Enum allowed lists follow the order of the C enums. */
const mt_config_option config_options[] = {
    /* ---- [data] ---- */
    {"data", "train", MT_CONFIG_PATH, FIELD(data.train), "none", NULL, 0, 0, 0,
     MT_CONFIG_MUST_EXIST | MT_CONFIG_IS_DIR,
     "Packed training split: an LMDB folder written by mobiletune-pack."},
    {"data", "val", MT_CONFIG_PATH, FIELD(data.val), "none", NULL, 0, 0, 0,
     MT_CONFIG_MUST_EXIST | MT_CONFIG_IS_DIR,
     "Packed validation split, evaluated every `train.eval_every` epochs."},
    {"data", "test", MT_CONFIG_PATH, FIELD(data.test), "none", NULL, 0, 0, 0,
     MT_CONFIG_MUST_EXIST | MT_CONFIG_IS_DIR,
     "Packed test split, for `mobiletune eval` after training."},
    {"data", "batch_size", MT_CONFIG_INT, FIELD(data.batch_size), "32", NULL, 1, 65536, 0, 0,
     "Images per step on each rank; the global batch is ranks x batch_size."},
    {"data", "shuffle", MT_CONFIG_BOOL, FIELD(data.shuffle), "true", NULL, 0, 0, 0, 0,
     "A fresh permutation of the training split every epoch, drawn from (seed, epoch)."},
    {"data", "random_flip", MT_CONFIG_BOOL, FIELD(data.random_flip), "false", NULL, 0, 0, 0, 0,
     "Flip half of the training images horizontally (the tutorial's RandomFlip('horizontal'); "
     "its RandomRotation(0.2) is not implemented)."},
    {"data", "prefetch", MT_CONFIG_INT, FIELD(data.prefetch), "4", NULL, 1, 64, 0, 0,
     "Batches the loader prepares ahead of the step."},
    {"data", "loader_threads", MT_CONFIG_INT, FIELD(data.loader_threads), "2", NULL, 0, 64, 0, 0,
     "JPEG decode threads per rank (0: decode inside the step)."},

    /* ---- [model] ---- */
    {"model", "alpha", MT_CONFIG_FLOAT, FIELD(model.alpha), "1.0", "0.35|0.5|0.75|1.0|1.3|1.4", 0,
     10, 0, 0, "MobileNetV2 width multiplier."},
    {"model", "input_size", MT_CONFIG_INT, FIELD(model.input_size), "160", NULL,
     MT_MODEL_INPUT_SIZE_MIN, MT_MODEL_INPUT_SIZE_MAX, MT_MODEL_INPUT_SIZE_STEP, 0,
     "Square input side in pixels (the packed images must have this size)."},
    {"model", "classes", MT_CONFIG_INT, FIELD(model.classes), "2", NULL, 2, 100000, 0, 0,
     "Classes; 2 gives one logit with sigmoid cross-entropy, as in the tutorial."},
    {"model", "dropout", MT_CONFIG_FLOAT, FIELD(model.dropout), "0.2", NULL, 0, 0.99, 0, 0,
     "Dropout rate before the classifier."},
    {"model", "mode", MT_CONFIG_ENUM, FIELD(model.mode), "frozen", "scratch|frozen|finetune", 0, 0,
     0, 0,
     "What trains: everything from random weights, only the head on a frozen backbone, or the "
     "head plus backbone layers from `fine_tune_at` on."},
    {"model", "fine_tune_at", MT_CONFIG_INT, FIELD(model.fine_tune_at),
     CONFIG_STR(MT_MODEL_FINE_TUNE_AT_DEFAULT), NULL, 1, MT_MODEL_BACKBONE_LAYERS - 1, 0, 0,
     "finetune: first trainable backbone layer, by Keras' layer index (the tutorial: 100)."},
    {"model", "bn_mode", MT_CONFIG_ENUM, FIELD(model.bn_mode), "auto", "auto|trainable|inference",
     0, 0, 0, 0,
     "Batch normalization in training steps: auto is trainable for scratch and inference (moving "
     "statistics, as `base_model(training=False)`) for frozen and finetune. Frozen BN layers "
     "always run in inference mode."},
    {"model", "weights", MT_CONFIG_PATH, FIELD(model.weights), "none", NULL, 0, 0, 0,
     MT_CONFIG_MUST_EXIST,
     "Keras HDF5 weights for the backbone (e.g. ImageNet's no-top file), or none for Keras' "
     "random initialization."},
    {"model", "init_checkpoint", MT_CONFIG_PATH, FIELD(model.init_checkpoint), "none", NULL, 0, 0,
     0, MT_CONFIG_MUST_EXIST,
     "A mobiletune checkpoint whose weights (every tensor it shares with this model) are loaded "
     "after `weights`, e.g. the frozen run's best checkpoint for finetuning. Optimizer state and "
     "step are not taken from it (that is `--resume`)."},

    /* ---- [optimizer] ---- */
    {"optimizer", "name", MT_CONFIG_ENUM, FIELD(optimizer.name), "rmsprop", "rmsprop|sgd|adam", 0,
     0, 0, 0, "Optimizer, with Keras 3's update rules (docs/config.md lists them)."},
    {"optimizer", "learning_rate", MT_CONFIG_FLOAT, FIELD(optimizer.learning_rate), "0.001", NULL,
     0, 10, 0, 0, "Base learning rate (before warmup, schedule and the linear scaling rule)."},
    {"optimizer", "rho", MT_CONFIG_FLOAT, FIELD(optimizer.rho), "0.9", NULL, 0, 0.999999, 0, 0,
     "RMSprop: decay of the moving average of squared gradients."},
    {"optimizer", "momentum", MT_CONFIG_FLOAT, FIELD(optimizer.momentum), "0.0", NULL, 0, 0.999999,
     0, 0, "RMSprop and SGD momentum (0: none)."},
    {"optimizer", "epsilon", MT_CONFIG_FLOAT, FIELD(optimizer.epsilon), "1e-07", NULL, 1e-12, 1, 0,
     0, "RMSprop and Adam epsilon (RMSprop: inside the square root, as Keras)."},
    {"optimizer", "nesterov", MT_CONFIG_BOOL, FIELD(optimizer.nesterov), "false", NULL, 0, 0, 0, 0,
     "SGD: Nesterov momentum."},
    {"optimizer", "beta_1", MT_CONFIG_FLOAT, FIELD(optimizer.beta_1), "0.9", NULL, 0, 0.999999, 0,
     0, "Adam: decay of the first moment."},
    {"optimizer", "beta_2", MT_CONFIG_FLOAT, FIELD(optimizer.beta_2), "0.999", NULL, 0, 0.999999, 0,
     0, "Adam: decay of the second moment."},
    {"optimizer", "weight_decay", MT_CONFIG_FLOAT, FIELD(optimizer.weight_decay), "0.0", NULL, 0, 1,
     0, 0,
     "Decoupled weight decay as Keras 3 applies it before each update: p -= p * weight_decay * "
     "lr, on every trainable tensor (0: none)."},
    {"optimizer", "schedule", MT_CONFIG_ENUM, FIELD(optimizer.schedule), "constant",
     "constant|step|cosine", 0, 0, 0, 0,
     "Learning-rate schedule after warmup: constant; step (x gamma every step_size epochs); "
     "cosine (down to cosine_final_fraction x lr at the last step)."},
    {"optimizer", "warmup_epochs", MT_CONFIG_FLOAT, FIELD(optimizer.warmup_epochs), "0.0", NULL, 0,
     1000, 0, 0,
     "Linear warmup over this many epochs (rounded to steps): step s uses lr*(s+1)/warmup."},
    {"optimizer", "warmup_steps", MT_CONFIG_INT, FIELD(optimizer.warmup_steps), "0", NULL, 0,
     1000000000, 0, 0, "Linear warmup in steps instead of epochs (give one of the two)."},
    {"optimizer", "step_size", MT_CONFIG_INT, FIELD(optimizer.step_size), "1", NULL, 1, 100000, 0,
     0, "step schedule: epochs between decays."},
    {"optimizer", "gamma", MT_CONFIG_FLOAT, FIELD(optimizer.gamma), "0.1", NULL, 0, 1, 0, 0,
     "step schedule: decay factor."},
    {"optimizer", "cosine_final_fraction", MT_CONFIG_FLOAT, FIELD(optimizer.cosine_final_fraction),
     "0.0", NULL, 0, 1, 0, 0,
     "cosine schedule: the final rate as a fraction of the base (Keras CosineDecay's alpha)."},
    {"optimizer", "scale_lr_with_world_size", MT_CONFIG_BOOL,
     FIELD(optimizer.scale_lr_with_world_size), "false", NULL, 0, 0, 0, 0,
     "Linear scaling rule: multiply the learning rate by the number of ranks (use with warmup)."},

    /* ---- [train] ---- */
    {"train", "epochs", MT_CONFIG_INT, FIELD(train.epochs), "10", NULL, 1, 100000, 0, 0,
     "Epochs to train."},
    {"train", "steps_per_epoch", MT_CONFIG_INT, FIELD(train.steps_per_epoch), "0", NULL, 0,
     1000000000, 0, 0, "Cap on the steps of an epoch (0: the whole training split)."},
    {"train", "seed", MT_CONFIG_INT, FIELD(train.seed), "42", NULL, 0, 2147483647, 0, 0,
     "Seed of the initialization, the shuffles, the flips and dropout."},
    {"train", "eval_every", MT_CONFIG_INT, FIELD(train.eval_every), "1", NULL, 0, 100000, 0, 0,
     "Evaluate on data.val every this many epochs (0: never)."},
    {"train", "nan_policy", MT_CONFIG_ENUM, FIELD(train.nan_policy), "stop", "stop|skip", 0, 0, 0,
     0, "A NaN or Inf loss: stop with a message naming the step, or skip that step's update."},
    {"train", "backend", MT_CONFIG_ENUM, FIELD(train.backend), "cpu", "reference|cpu|cuda", 0, 0, 0,
     0, "Compute backend: reference (plain C, slow), cpu (oneDNN) or cuda (cuDNN)."},
    {"train", "threads", MT_CONFIG_INT, FIELD(train.threads), "0", NULL, 0, 1024, 0, 0,
     "CPU threads for the compute backend (0: all cores)."},
    {"train", "comm", MT_CONFIG_ENUM, FIELD(train.comm), "auto", "auto|none|mpi|nccl", 0, 0, 0, 0,
     "How ranks all-reduce: auto is nccl for backend cuda when each rank on a node has a GPU of "
     "its own, else mpi (one rank: none); mpi stages GPU memory through host copies; nccl needs "
     "backend cuda, NCCL and one GPU per rank (NCCL refuses two ranks on one GPU)."},
    {"train", "bucket_mb", MT_CONFIG_FLOAT, FIELD(train.bucket_mb), "4", NULL, 0, 1024, 0, 0,
     "Gradient all-reduce bucket in MiB: buckets start during backward as soon as their layers' "
     "gradients are final, top of the network first (0: one all-reduce after backward)."},
    {"train", "cache_features", MT_CONFIG_ENUM, FIELD(train.cache_features), "auto", "auto|on|off",
     0, 0, 0, 0,
     "frozen mode: compute the frozen backbone's pooled features once (with random_flip, of each "
     "image and of its mirror image) so every epoch runs only the head; exact, since the flip is "
     "the only augmentation. auto and on: cache; off: run the backbone every step."},
    {"train", "precision", MT_CONFIG_ENUM, FIELD(train.precision), "fp32", "fp32", 0, 0, 0, 0,
     "Arithmetic precision (only fp32 so far)."},

    /* ---- [output] ---- */
    {"output", "run_dir", MT_CONFIG_PATH, FIELD(output.run_dir), "runs/default", NULL, 0, 0, 0, 0,
     "Folder for checkpoints, metrics.jsonl, TensorBoard events and the config used."},
    {"output", "keep_best", MT_CONFIG_BOOL, FIELD(output.keep_best), "true", NULL, 0, 0, 0, 0,
     "Keep the checkpoint with the best validation accuracy (best.safetensors)."},
    {"output", "keep_last", MT_CONFIG_BOOL, FIELD(output.keep_last), "true", NULL, 0, 0, 0, 0,
     "Keep the latest checkpoint (last.safetensors), which --resume continues from."},
    {"output", "checkpoint_every", MT_CONFIG_INT, FIELD(output.checkpoint_every), "1", NULL, 0,
     100000, 0, 0, "Write last.safetensors every this many epochs (0: only at the end)."},
    {"output", "tensorboard", MT_CONFIG_BOOL, FIELD(output.tensorboard), "true", NULL, 0, 0, 0, 0,
     "Also write TensorBoard event files (metrics.jsonl is always written)."},
};

enum { OPTION_COUNT = (int)(sizeof config_options / sizeof config_options[0]) };
const int config_option_count = OPTION_COUNT;
_Static_assert((int)OPTION_COUNT <= (int)MT_CONFIG_MAX_OPTIONS, "raise MT_CONFIG_MAX_OPTIONS");

static const char *const section_names[] = {"data", "model", "optimizer", "train", "output"};
enum { SECTION_COUNT = (int)(sizeof section_names / sizeof section_names[0]) };

int mt_config_option_count(void) {
    return OPTION_COUNT;
}

const mt_config_option *mt_config_option_at(int index) {
    return index >= 0 && index < OPTION_COUNT ? &config_options[index] : NULL;
}

int config_option_index(const char *section, const char *key) {
    for (int i = 0; i < OPTION_COUNT; i++)
        if (strcmp(config_options[i].section, section) == 0 &&
            strcmp(config_options[i].key, key) == 0)
            return i;
    return -1;
}

const mt_config_option *mt_config_option_find(const char *section, const char *key) {
    int i = config_option_index(section, key);
    return i >= 0 ? &config_options[i] : NULL;
}

bool config_section_known(const char *section) {
    for (int i = 0; i < SECTION_COUNT; i++)
        if (strcmp(section_names[i], section) == 0) return true;
    return false;
}

const char *config_type_name(mt_config_type type) {
    switch (type) {
    case MT_CONFIG_INT:
        return "int";
    case MT_CONFIG_FLOAT:
        return "float";
    case MT_CONFIG_BOOL:
        return "bool";
    case MT_CONFIG_STRING:
        return "string";
    case MT_CONFIG_ENUM:
        return "enum";
    case MT_CONFIG_PATH:
        return "path";
    }
    return "?";
}
