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
_Static_assert((int)MT_PRECISION_FP32 == (int)MT_COMPUTE_FP32 &&
                   (int)MT_PRECISION_TF32 == (int)MT_COMPUTE_TF32 &&
                   (int)MT_PRECISION_BF16 == (int)MT_COMPUTE_BF16 &&
                   (int)MT_PRECISION_FP16 == (int)MT_COMPUTE_FP16,
               "train.precision's values are named by mt_compute_precision_names");

static const char *const nan_policy_names[] = {
    [MT_NAN_POLICY_STOP] = "stop", [MT_NAN_POLICY_SKIP] = "skip"};
const mt_enum_names mt_nan_policy_names = MT_ENUM_NAMES(nan_policy_names);

static const char *const comm_names[] = {[MT_CONFIG_COMM_AUTO] = "auto",
                                         [MT_CONFIG_COMM_NONE] = "none",
                                         [MT_CONFIG_COMM_MPI] = "mpi",
                                         [MT_CONFIG_COMM_NCCL] = "nccl"};
const mt_enum_names mt_config_comm_names = MT_ENUM_NAMES(comm_names);

static const char *const cache_features_names[] = {[MT_CACHE_FEATURES_AUTO] = "auto",
                                                   [MT_CACHE_FEATURES_ON] = "on",
                                                   [MT_CACHE_FEATURES_OFF] = "off"};
const mt_enum_names mt_cache_features_names = MT_ENUM_NAMES(cache_features_names);


#define FIELD(f) .offset = offsetof(mt_train_config, f), .size = sizeof(((mt_train_config *)0)->f)
/* a numeric macro's digits as a text default (the table's defaults are the INI text) */
#define CONFIG_STR_(x) #x
#define CONFIG_STR(x) CONFIG_STR_(x)

/* The one table. Enum options name their values with the enum's own table (enum_names.h). */
const mt_config_option config_options[] = {
    /* ---- [data] ---- */
    {.section = "data",
     .key = "train",
     .type = MT_CONFIG_PATH,
     FIELD(data.train),
     .default_text = "none",
     .flags = MT_CONFIG_MUST_EXIST | MT_CONFIG_IS_DIR,
     .help = "Packed training split: an LMDB folder written by mobiletune-pack."},
    {.section = "data",
     .key = "val",
     .type = MT_CONFIG_PATH,
     FIELD(data.val),
     .default_text = "none",
     .flags = MT_CONFIG_MUST_EXIST | MT_CONFIG_IS_DIR,
     .help = "Packed validation split, evaluated every `train.eval_every` epochs."},
    {.section = "data",
     .key = "test",
     .type = MT_CONFIG_PATH,
     FIELD(data.test),
     .default_text = "none",
     .flags = MT_CONFIG_MUST_EXIST | MT_CONFIG_IS_DIR,
     .help = "Packed test split, for `mobiletune eval` after training."},
    {.section = "data",
     .key = "batch_size",
     .type = MT_CONFIG_INT,
     FIELD(data.batch_size),
     .default_text = "32",
     .min = 1,
     .max = 65536,
     .help = "Images per step on each rank; the global batch is ranks x batch_size."},
    {.section = "data",
     .key = "shuffle",
     .type = MT_CONFIG_BOOL,
     FIELD(data.shuffle),
     .default_text = "true",
     .help = "A fresh permutation of the training split every epoch, drawn from (seed, epoch)."},
    {.section = "data",
     .key = "random_flip",
     .type = MT_CONFIG_BOOL,
     FIELD(data.random_flip),
     .default_text = "false",
     .help = "Flip half of the training images horizontally (the tutorial's "
             "RandomFlip('horizontal'))."},
    {.section = "data",
     .key = "random_rotation",
     .type = MT_CONFIG_FLOAT,
     FIELD(data.random_rotation),
     .default_text = "0.0",
     .min = 0,
     .max = 1,
     .help = "Rotate each training image by an angle drawn uniformly in [-f, f] x 2 pi (Keras' "
             "RandomRotation(f): bilinear, fill mode reflect; the current tutorial's 0.2), in the "
             "loader threads; 0: off. Frozen mode then runs the backbone every step (no feature "
             "cache)."},
    {.section = "data",
     .key = "prefetch",
     .type = MT_CONFIG_INT,
     FIELD(data.prefetch),
     .default_text = "4",
     .min = 1,
     .max = 64,
     .help = "Batches the loader prepares ahead of the step."},
    {.section = "data",
     .key = "loader_threads",
     .type = MT_CONFIG_INT,
     FIELD(data.loader_threads),
     .default_text = "2",
     .min = 0,
     .max = 64,
     .help = "JPEG decode threads per rank (0: decode inside the step)."},

    /* ---- [model] ---- */
    {.section = "model",
     .key = "alpha",
     .type = MT_CONFIG_FLOAT,
     FIELD(model.alpha),
     .default_text = "1.0",
     .allowed = "0.35|0.5|0.75|1.0|1.3|1.4",
     .min = 0,
     .max = 10,
     .help = "MobileNetV2 width multiplier."},
    {.section = "model",
     .key = "input_size",
     .type = MT_CONFIG_INT,
     FIELD(model.input_size),
     .default_text = "160",
     .min = MT_MODEL_INPUT_SIZE_MIN,
     .max = MT_MODEL_INPUT_SIZE_MAX,
     .multiple_of = MT_MODEL_INPUT_SIZE_STEP,
     .help = "Square input side in pixels (the packed images must have this size)."},
    {.section = "model",
     .key = "classes",
     .type = MT_CONFIG_INT,
     FIELD(model.classes),
     .default_text = "2",
     .min = 2,
     .max = 100000,
     .help = "Classes; 2 gives one logit with sigmoid cross-entropy, as in the tutorial."},
    {.section = "model",
     .key = "dropout",
     .type = MT_CONFIG_FLOAT,
     FIELD(model.dropout),
     .default_text = "0.2",
     .min = 0,
     .max = 0.99,
     .help = "Dropout rate before the classifier."},
    {.section = "model",
     .key = "mode",
     .type = MT_CONFIG_ENUM,
     FIELD(model.mode),
     .default_text = "frozen",
     .names = &mt_train_mode_names,
     .help =
         "What trains: everything from random weights, only the head on a frozen backbone, or the "
         "head plus backbone layers from `fine_tune_at` on."},
    {.section = "model",
     .key = "fine_tune_at",
     .type = MT_CONFIG_INT,
     FIELD(model.fine_tune_at),
     .default_text = CONFIG_STR(MT_MODEL_FINE_TUNE_AT_DEFAULT),
     .min = 1,
     .max = MT_MODEL_BACKBONE_LAYERS - 1,
     .help =
         "finetune: first trainable backbone layer, by Keras' layer index (the tutorial: 100)."},
    {.section = "model",
     .key = "bn_mode",
     .type = MT_CONFIG_ENUM,
     FIELD(model.bn_mode),
     .default_text = "auto",
     .names = &mt_bn_mode_names,
     .help =
         "Batch normalization in training steps: auto is trainable for scratch and inference "
         "(moving "
         "statistics, as `base_model(training=False)`) for frozen and finetune. Frozen BN layers "
         "always run in inference mode."},
    {.section = "model",
     .key = "bn_momentum",
     .type = MT_CONFIG_FLOAT,
     FIELD(model.bn_momentum),
     .default_text = "0.999",
     .min = 0,
     .max = 0.999999,
     .help = "Momentum of the BN moving statistics (Keras' BatchNormalization `momentum`; "
             "MobileNetV2's 0.999). A training-mode BN layer's statistics cover 1 - "
             "momentum^steps of the way from their initial values: scratch runs of a few "
             "thousand steps want about 0.99 (each evaluation warns while they cover less than "
             "90%)."},
    {.section = "model",
     .key = "weights",
     .type = MT_CONFIG_PATH,
     FIELD(model.weights),
     .default_text = "none",
     .flags = MT_CONFIG_MUST_EXIST,
     .help =
         "Keras HDF5 weights for the backbone (e.g. ImageNet's no-top file), or none for Keras' "
         "random initialization."},
    {.section = "model",
     .key = "init_checkpoint",
     .type = MT_CONFIG_PATH,
     FIELD(model.init_checkpoint),
     .default_text = "none",
     .flags = MT_CONFIG_MUST_EXIST,
     .help = "A mobiletune checkpoint whose weights (every tensor it shares with this model) are "
             "loaded "
             "after `weights`, e.g. the frozen run's best checkpoint for finetuning. Optimizer "
             "state and "
             "step are not taken from it (that is `--resume`)."},

    /* ---- [optimizer] ---- */
    {.section = "optimizer",
     .key = "name",
     .type = MT_CONFIG_ENUM,
     FIELD(optimizer.name),
     .default_text = "rmsprop",
     .names = &mt_optimizer_kind_names,
     .help = "Optimizer, with Keras 3's update rules (docs/config.md lists them)."},
    {.section = "optimizer",
     .key = "learning_rate",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.learning_rate),
     .default_text = "0.001",
     .min = 0,
     .max = 10,
     .help = "Base learning rate (before warmup, schedule and the linear scaling rule)."},
    {.section = "optimizer",
     .key = "rho",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.rho),
     .default_text = "0.9",
     .min = 0,
     .max = 0.999999,
     .help = "RMSprop: decay of the moving average of squared gradients."},
    {.section = "optimizer",
     .key = "momentum",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.momentum),
     .default_text = "0.0",
     .min = 0,
     .max = 0.999999,
     .help = "RMSprop and SGD momentum (0: none)."},
    {.section = "optimizer",
     .key = "epsilon",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.epsilon),
     .default_text = "1e-07",
     .min = 1e-12,
     .max = 1,
     .help = "RMSprop and Adam epsilon (RMSprop: inside the square root, as Keras)."},
    {.section = "optimizer",
     .key = "nesterov",
     .type = MT_CONFIG_BOOL,
     FIELD(optimizer.nesterov),
     .default_text = "false",
     .help = "SGD: Nesterov momentum."},
    {.section = "optimizer",
     .key = "beta_1",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.beta_1),
     .default_text = "0.9",
     .min = 0,
     .max = 0.999999,
     .help = "Adam: decay of the first moment."},
    {.section = "optimizer",
     .key = "beta_2",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.beta_2),
     .default_text = "0.999",
     .min = 0,
     .max = 0.999999,
     .help = "Adam: decay of the second moment."},
    {.section = "optimizer",
     .key = "weight_decay",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.weight_decay),
     .default_text = "0.0",
     .min = 0,
     .max = 1,
     .help =
         "Decoupled weight decay as Keras 3 applies it before each update: p -= p * weight_decay * "
         "lr, on every trainable tensor (0: none)."},
    {.section = "optimizer",
     .key = "schedule",
     .type = MT_CONFIG_ENUM,
     FIELD(optimizer.schedule),
     .default_text = "constant",
     .names = &mt_lr_schedule_kind_names,
     .help =
         "Learning-rate schedule after warmup: constant; step (x gamma every step_size epochs); "
         "cosine (down to cosine_final_fraction x lr at the last step)."},
    {.section = "optimizer",
     .key = "warmup_epochs",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.warmup_epochs),
     .default_text = "0.0",
     .min = 0,
     .max = 1000,
     .help =
         "Linear warmup over this many epochs (rounded to steps): step s uses lr*(s+1)/warmup."},
    {.section = "optimizer",
     .key = "warmup_steps",
     .type = MT_CONFIG_INT,
     FIELD(optimizer.warmup_steps),
     .default_text = "0",
     .min = 0,
     .max = 1000000000,
     .help = "Linear warmup in steps instead of epochs (give one of the two)."},
    {.section = "optimizer",
     .key = "step_size",
     .type = MT_CONFIG_INT,
     FIELD(optimizer.step_size),
     .default_text = "1",
     .min = 1,
     .max = 100000,
     .help = "step schedule: epochs between decays."},
    {.section = "optimizer",
     .key = "gamma",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.gamma),
     .default_text = "0.1",
     .min = 0,
     .max = 1,
     .help = "step schedule: decay factor."},
    {.section = "optimizer",
     .key = "cosine_final_fraction",
     .type = MT_CONFIG_FLOAT,
     FIELD(optimizer.cosine_final_fraction),
     .default_text = "0.0",
     .min = 0,
     .max = 1,
     .help =
         "cosine schedule: the final rate as a fraction of the base (Keras CosineDecay's alpha)."},
    {.section = "optimizer",
     .key = "scale_lr_with_world_size",
     .type = MT_CONFIG_BOOL,
     FIELD(optimizer.scale_lr_with_world_size),
     .default_text = "false",
     .help = "Linear scaling rule: multiply the learning rate by the number of ranks (use with "
             "warmup)."},

    /* ---- [train] ---- */
    {.section = "train",
     .key = "epochs",
     .type = MT_CONFIG_INT,
     FIELD(train.epochs),
     .default_text = "10",
     .min = 1,
     .max = 100000,
     .help = "Epochs to train."},
    {.section = "train",
     .key = "steps_per_epoch",
     .type = MT_CONFIG_INT,
     FIELD(train.steps_per_epoch),
     .default_text = "0",
     .min = 0,
     .max = 1000000000,
     .help = "Cap on the steps of an epoch (0: the whole training split)."},
    {.section = "train",
     .key = "seed",
     .type = MT_CONFIG_INT,
     FIELD(train.seed),
     .default_text = "42",
     .min = 0,
     .max = 2147483647,
     .help = "Seed of the initialization, the shuffles, the flips and dropout."},
    {.section = "train",
     .key = "eval_every",
     .type = MT_CONFIG_INT,
     FIELD(train.eval_every),
     .default_text = "1",
     .min = 0,
     .max = 100000,
     .help = "Evaluate on data.val every this many epochs (0: never)."},
    {.section = "train",
     .key = "nan_policy",
     .type = MT_CONFIG_ENUM,
     FIELD(train.nan_policy),
     .default_text = "stop",
     .names = &mt_nan_policy_names,
     .help = "A NaN or Inf loss: stop with a message naming the step, or skip that step's update."},
    {.section = "train",
     .key = "backend",
     .type = MT_CONFIG_ENUM,
     FIELD(train.backend),
     .default_text = "cpu",
     .names = &mt_backend_kind_names,
     .help = "Compute backend: reference (plain C, slow), cpu (oneDNN) or cuda (cuDNN)."},
    {.section = "train",
     .key = "threads",
     .type = MT_CONFIG_INT,
     FIELD(train.threads),
     .default_text = "0",
     .min = 0,
     .max = 1024,
     .help = "CPU threads for the compute backend (0: all cores)."},
    {.section = "train",
     .key = "comm",
     .type = MT_CONFIG_ENUM,
     FIELD(train.comm),
     .default_text = "auto",
     .names = &mt_config_comm_names,
     .help = "How ranks all-reduce: auto is nccl for backend cuda when each rank on a node has a "
             "GPU of "
             "its own, else mpi (one rank: none); mpi stages GPU memory through host copies; nccl "
             "needs "
             "backend cuda, NCCL and one GPU per rank (NCCL refuses two ranks on one GPU)."},
    {.section = "train",
     .key = "bucket_mb",
     .type = MT_CONFIG_FLOAT,
     FIELD(train.bucket_mb),
     .default_text = "4",
     .min = 0,
     .max = 1024,
     .help = "Gradient all-reduce bucket in MiB: buckets start during backward as soon as their "
             "layers' "
             "gradients are final, top of the network first (0: one all-reduce after backward)."},
    {.section = "train",
     .key = "cuda_graphs",
     .type = MT_CONFIG_BOOL,
     FIELD(train.cuda_graphs),
     .default_text = "true",
     .help = "backend cuda: capture the training step (forward, backward, the gradient "
             "all-reduce launches of train.comm = nccl, optimizer) as a CUDA graph once per "
             "batch shape, after an eager warm-up step, and replay it: one launch per step "
             "instead of hundreds. Same results as false (the eager steps), which is for "
             "debugging. train.comm = mpi runs eager (its all-reduce is host work inside the "
             "step). No effect on the CPU backends."},
    {.section = "train",
     .key = "cache_features",
     .type = MT_CONFIG_ENUM,
     FIELD(train.cache_features),
     .default_text = "auto",
     .names = &mt_cache_features_names,
     .help = "frozen mode: compute the frozen backbone's pooled features once (with random_flip, "
             "of each image and of its mirror image) so every epoch runs only the head; exact, as "
             "a flip has two views. auto and on: cache (not with data.random_rotation, whose "
             "angles change every epoch); off: run the backbone every step."},
    {.section = "train",
     .key = "precision",
     .type = MT_CONFIG_ENUM,
     FIELD(train.precision),
     .default_text = "fp32",
     .names = &mt_compute_precision_names, /* mt_precision mirrors mt_compute_precision */
     .help = "Arithmetic precision. fp32: exact fp32 math. tf32: fp32 storage, TF32 tensor-core "
             "math in cuDNN and cuBLAS (cuda only; the CPU backends run it as fp32). bf16 and "
             "fp16: activations and gradients of the backbone stored in 16 bits, convolutions "
             "with fp32 accumulation, BN statistics, the head, the loss, the master weights and "
             "the optimizer in fp32; fp16 adds Keras' dynamic loss scaling (start 2^15, x2 after "
             "2000 finite steps, /2 and the update skipped on inf/NaN). bf16/fp16 need backend "
             "cuda or reference (reference: emulated)."},

    /* ---- [output] ---- */
    {.section = "output",
     .key = "run_dir",
     .type = MT_CONFIG_PATH,
     FIELD(output.run_dir),
     .default_text = "runs/default",
     .help = "Folder for checkpoints, metrics.jsonl, TensorBoard events and the config used."},
    {.section = "output",
     .key = "keep_best",
     .type = MT_CONFIG_BOOL,
     FIELD(output.keep_best),
     .default_text = "true",
     .help = "Keep the checkpoint with the best validation accuracy (best.safetensors)."},
    {.section = "output",
     .key = "keep_last",
     .type = MT_CONFIG_BOOL,
     FIELD(output.keep_last),
     .default_text = "true",
     .help = "Keep the latest checkpoint (last.safetensors), which --resume continues from."},
    {.section = "output",
     .key = "checkpoint_every",
     .type = MT_CONFIG_INT,
     FIELD(output.checkpoint_every),
     .default_text = "1",
     .min = 0,
     .max = 100000,
     .help = "Write last.safetensors every this many epochs (0: only at the end)."},
    {.section = "output",
     .key = "tensorboard",
     .type = MT_CONFIG_BOOL,
     FIELD(output.tensorboard),
     .default_text = "true",
     .help = "Also write TensorBoard event files (metrics.jsonl is always written)."},
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
    case MT_CONFIG_TEXT:
    case MT_CONFIG_TEXT_LIST:
        return "text";
    case MT_CONFIG_FLAG:
        return "flag";
    }
    return "?";
}
