/* The option table and everything made from it: defaults, the INI parser (inih), --set overrides,
 * the cross-option check, INI text for checkpoints, --help and docs/config.md.
 *
 * Debian's inih (r55) is built without INI_HANDLER_LINENO and with INI_MAX_LINE 200, so the
 * handler learns no line number and long lines would be split silently. We therefore feed inih
 * through our own line reader (ini_parse_stream), which counts lines, rejects over-long lines with
 * a clear error, and checks [section] headers (inih reports no empty sections). Long values, such
 * as deep absolute paths in a checkpoint's config, are written as continuation lines (indented),
 * which inih passes to the handler as more pieces of the same key; the pieces are joined without
 * a separator and the value is parsed once complete. */
#include "mobiletune/config.h"
#include "mobiletune/files.h"

#include "core/text_buffer.h"

#include <errno.h>
#include <stdarg.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

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
static const mt_config_option options[] = {
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
     "Flip half of the training images horizontally (the tutorial's RandomFlip('horizontal'))."},
    {"data", "random_rotation", MT_CONFIG_FLOAT, FIELD(data.random_rotation), "0.0", NULL, 0, 1, 0,
     0,
     "Rotate each training image by an angle drawn uniformly in [-f, f] x 2 pi (Keras' "
     "RandomRotation(f): bilinear, fill mode reflect; the current tutorial's 0.2), in the loader "
     "threads; 0: off. Frozen mode then runs the backbone every step (no feature cache)."},
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
    {"model", "bn_momentum", MT_CONFIG_FLOAT, FIELD(model.bn_momentum), "0.999", NULL, 0, 0.999999,
     0, 0,
     "Momentum of the BN moving statistics (Keras' BatchNormalization `momentum`; MobileNetV2's "
     "0.999). A training-mode BN layer's statistics cover 1 - momentum^steps of the way from their "
     "initial values: scratch runs of a few thousand steps want about 0.99 (each evaluation warns "
     "while they cover less than 90%)."},
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
     "image and of its mirror image) so every epoch runs only the head; exact, as a flip has two "
     "views. auto and on: cache (not with data.random_rotation, whose angles change every "
     "epoch); off: run the backbone every step."},
    {"train", "precision", MT_CONFIG_ENUM, FIELD(train.precision), "fp32", "fp32|tf32|bf16|fp16",
     0, 0, 0, 0,
     "Arithmetic precision. fp32: exact fp32 math. tf32: fp32 storage, TF32 tensor-core math in "
     "cuDNN and cuBLAS (cuda only; the CPU backends run it as fp32). bf16 and fp16: activations "
     "and gradients of the backbone stored in 16 bits, convolutions with fp32 accumulation, BN "
     "statistics, the head, the loss, the master weights and the optimizer in fp32; fp16 adds "
     "Keras' dynamic loss scaling (start 2^15, x2 after 2000 finite steps, /2 and the update "
     "skipped on inf/NaN). bf16/fp16 need backend cuda or reference (reference: emulated)."},

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

enum { OPTION_COUNT = (int)(sizeof options / sizeof options[0]) };
_Static_assert((int)OPTION_COUNT <= (int)MT_CONFIG_MAX_OPTIONS, "raise MT_CONFIG_MAX_OPTIONS");

static const char *const section_names[] = {"data", "model", "optimizer", "train", "output"};
enum { SECTION_COUNT = (int)(sizeof section_names / sizeof section_names[0]) };

int mt_config_option_count(void) {
    return OPTION_COUNT;
}

const mt_config_option *mt_config_option_at(int index) {
    return index >= 0 && index < OPTION_COUNT ? &options[index] : NULL;
}

static int option_index(const char *section, const char *key) {
    for (int i = 0; i < OPTION_COUNT; i++)
        if (strcmp(options[i].section, section) == 0 && strcmp(options[i].key, key) == 0) return i;
    return -1;
}

const mt_config_option *mt_config_option_find(const char *section, const char *key) {
    int i = option_index(section, key);
    return i >= 0 ? &options[i] : NULL;
}

static bool section_known(const char *section) {
    for (int i = 0; i < SECTION_COUNT; i++)
        if (strcmp(section_names[i], section) == 0) return true;
    return false;
}

static const char *type_name(mt_config_type type) {
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

/* ---- small text helpers --------------------------------------------------------------------- */

static void copy_text(char *dst, size_t capacity, const char *src) {
    size_t n = strlen(src);
    if (n >= capacity) n = capacity - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The n-th ('|'-separated) entry of an allowed list into buffer; false past the end. */
static bool allowed_entry(const char *allowed, int n, char *buffer, size_t capacity) {
    const char *p = allowed;
    for (int i = 0; i < n; i++) {
        p = strchr(p, '|');
        if (!p) return false;
        p++;
    }
    size_t len = strcspn(p, "|");
    if (len >= capacity) len = capacity - 1;
    memcpy(buffer, p, len);
    buffer[len] = '\0';
    return true;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return SIZE_MAX;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diagonal + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diagonal = up;
        }
    }
    return row[lb];
}

/* " (did you mean [train] epochs?)" or "" into buffer. */
static void suggest(const char *section, const char *key, char *buffer, size_t capacity) {
    /* Names from other trainers that are too far from ours for the edit distance. */
    static const char *const aliases[][3] = {
        {"lr", "optimizer", "learning_rate"}, {"batch", "data", "batch_size"},
        {"eps", "optimizer", "epsilon"},      {"wd", "optimizer", "weight_decay"},
        {"optimizer", "optimizer", "name"},   {"width", "model", "alpha"},
        {"num_classes", "model", "classes"},  {"image_size", "model", "input_size"},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        if (strcmp(key, aliases[i][0]) == 0) {
            snprintf(buffer, capacity, " (did you mean [%s] %s?)", aliases[i][1], aliases[i][2]);
            return;
        }
    }
    buffer[0] = '\0';
    int best = -1;
    size_t best_distance = SIZE_MAX;
    for (int i = 0; i < OPTION_COUNT; i++) {
        size_t d = edit_distance(key, options[i].key);
        if (strcmp(options[i].section, section) != 0) d += 1; /* prefer the same section */
        if (d < best_distance) best_distance = d, best = i;
    }
    size_t limit = strlen(key) / 3 + 1;
    if (limit < 2) limit = 2;
    if (best >= 0 && best_distance <= limit)
        snprintf(buffer, capacity, " (did you mean [%s] %s?)", options[best].section,
                 options[best].key);
}

/* Lexical clean-up of an absolute path: "//", "/./" and "x/../" go away. */
static void normalize_path(char *path) {
    char *out = path;
    const char *in = path;
    while (*in) {
        while (*in == '/')
            in++;
        const char *end = in + strcspn(in, "/");
        size_t len = (size_t)(end - in);
        if (len == 0) break;
        if (len == 1 && in[0] == '.') {
            /* skip */
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > path && *(out - 1) != '/')
                out--;
            if (out > path) out--; /* the slash before the removed component */
        } else {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in = end;
    }
    if (out == path) *out++ = '/';
    *out = '\0';
}

static bool resolve_path(const char *value, const char *base_dir, char *out, size_t capacity) {
    char joined[2 * MT_CONFIG_PATH_MAX + 2];
    if (value[0] == '/') {
        copy_text(joined, sizeof joined, value);
    } else {
        int n = snprintf(joined, sizeof joined, "%s/%s", base_dir, value);
        if (n < 0 || (size_t)n >= sizeof joined) return false;
    }
    normalize_path(joined);
    if (strlen(joined) >= capacity) return false;
    strcpy(out, joined);
    return true;
}

static void current_dir(char *buffer, size_t capacity) {
    if (!getcwd(buffer, capacity)) copy_text(buffer, capacity, ".");
}

/* ---- values --------------------------------------------------------------------------------- */

/* Parse `text` for `option` into the field at `config`; on failure a reason in `why`. */
static bool parse_value(const mt_config_option *option, const char *text, const char *base_dir,
                        mt_train_config *config, char *why, size_t why_capacity) {
    void *field = (char *)config + option->offset;
    switch (option->type) {
    case MT_CONFIG_INT: {
        char *end = NULL;
        errno = 0;
        long value = strtol(text, &end, 10);
        if (text[0] == '\0' || *end != '\0' || errno == ERANGE) {
            snprintf(why, why_capacity, "not an integer");
            return false;
        }
        if ((double)value < option->min || (double)value > option->max) {
            snprintf(why, why_capacity, "out of range [%.0f, %.0f]", option->min, option->max);
            return false;
        }
        if (option->multiple_of > 0 && value % option->multiple_of != 0) {
            snprintf(why, why_capacity, "not a multiple of %d", option->multiple_of);
            return false;
        }
        *(int *)field = (int)value;
        return true;
    }
    case MT_CONFIG_FLOAT: {
        char *end = NULL;
        errno = 0;
        double value = strtod(text, &end);
        if (text[0] == '\0' || *end != '\0' || errno == ERANGE || !isfinite(value)) {
            snprintf(why, why_capacity, "not a finite number");
            return false;
        }
        if (option->allowed) {
            char entry[32];
            bool found = false;
            for (int i = 0; allowed_entry(option->allowed, i, entry, sizeof entry); i++)
                if (fabs(strtod(entry, NULL) - value) <= 1e-9 * fabs(value)) found = true;
            if (!found) {
                snprintf(why, why_capacity, "not one of %s", option->allowed);
                return false;
            }
        } else if (value < option->min || value > option->max) {
            snprintf(why, why_capacity, "out of range [%g, %g]", option->min, option->max);
            return false;
        }
        *(double *)field = value;
        return true;
    }
    case MT_CONFIG_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"};
        static const char *const no[] = {"false", "no", "off", "0"};
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(text, yes[i]) == 0) return *(bool *)field = true, true;
            if (strcasecmp(text, no[i]) == 0) return *(bool *)field = false, true;
        }
        snprintf(why, why_capacity, "not a bool: use true or false");
        return false;
    }
    case MT_CONFIG_ENUM: {
        char entry[64];
        for (int i = 0; allowed_entry(option->allowed, i, entry, sizeof entry); i++) {
            if (strcasecmp(entry, text) == 0) {
                *(int *)field = i;
                return true;
            }
        }
        snprintf(why, why_capacity, "not one of %s", option->allowed);
        return false;
    }
    case MT_CONFIG_STRING:
        if (strlen(text) >= option->size) {
            snprintf(why, why_capacity, "longer than %zu characters", option->size - 1);
            return false;
        }
        strcpy(field, text);
        return true;
    case MT_CONFIG_PATH:
        if (text[0] == '\0' || strcasecmp(text, "none") == 0) {
            ((char *)field)[0] = '\0';
            return true;
        }
        if (!resolve_path(text, base_dir, field, option->size)) {
            snprintf(why, why_capacity, "path longer than %zu characters", option->size - 1);
            return false;
        }
        return true;
    }
    snprintf(why, why_capacity, "unknown option type");
    return false;
}

/* Shortest "%.Ng" that reads back to the same double, so 1e-4 stays "0.0001". */
static void format_double(double value, char *buffer, size_t capacity) {
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buffer, capacity, "%.*g", digits, value);
        if (strtod(buffer, NULL) == value) break;
    }
    if (!strpbrk(buffer, ".eEn")) { /* keep floats recognisable: "1" -> "1.0" */
        size_t n = strlen(buffer);
        if (n + 2 < capacity) strcpy(buffer + n, ".0");
    }
}

mt_status mt_config_value_text(const mt_train_config *config, const mt_config_option *option,
                               char *buffer, size_t capacity) {
    const void *field = (const char *)config + option->offset;
    int n = 0;
    switch (option->type) {
    case MT_CONFIG_INT:
        n = snprintf(buffer, capacity, "%d", *(const int *)field);
        break;
    case MT_CONFIG_FLOAT:
        format_double(*(const double *)field, buffer, capacity);
        n = (int)strlen(buffer);
        break;
    case MT_CONFIG_BOOL:
        n = snprintf(buffer, capacity, "%s", *(const bool *)field ? "true" : "false");
        break;
    case MT_CONFIG_ENUM: {
        char entry[64];
        if (!allowed_entry(option->allowed, *(const int *)field, entry, sizeof entry))
            return MT_FAIL(MT_ERR_INTERNAL, "[%s] %s holds %d, not an index of %s", option->section,
                           option->key, *(const int *)field, option->allowed);
        n = snprintf(buffer, capacity, "%s", entry);
        break;
    }
    case MT_CONFIG_STRING:
        n = snprintf(buffer, capacity, "%s", (const char *)field);
        break;
    case MT_CONFIG_PATH: {
        const char *path = field;
        n = snprintf(buffer, capacity, "%s", path[0] ? path : "none");
        break;
    }
    }
    if (n < 0 || (size_t)n >= capacity)
        return MT_FAIL(MT_ERR_INVALID, "[%s] %s: value longer than %zu characters", option->section,
                       option->key, capacity - 1);
    return MT_OK;
}

const char *mt_config_enum_name(const char *section, const char *key, int value) {
    /* Static storage per option, filled on first use (options never change). */
    static _Thread_local char names[MT_CONFIG_MAX_OPTIONS][64];
    int i = option_index(section, key);
    if (i < 0 || options[i].type != MT_CONFIG_ENUM) return "?";
    if (!allowed_entry(options[i].allowed, value, names[i], sizeof names[i])) return "?";
    return names[i];
}

void mt_config_defaults(mt_train_config *config) {
    memset(config, 0, sizeof *config);
    char cwd[MT_CONFIG_PATH_MAX];
    current_dir(cwd, sizeof cwd);
    for (int i = 0; i < OPTION_COUNT; i++) {
        char why[128];
        bool ok = parse_value(&options[i], options[i].default_text, cwd, config, why, sizeof why);
        MT_ASSERT(ok); /* the table's defaults are checked by the tests */
    }
    copy_text(config->source, sizeof config->source, "(defaults)");
}

/* ---- the INI reader ------------------------------------------------------------------------- */

typedef struct load_state {
    mt_train_config work; /* committed to the caller's config only when everything parsed */
    const char *name;
    char base_dir[MT_CONFIG_PATH_MAX];
    const char *text;
    size_t position;
    int line;            /* of the line inih is working on */
    bool line_continues; /* that line starts with whitespace: a continuation */
    int seen_line[MT_CONFIG_MAX_OPTIONS];
    int pending; /* option whose value is still being collected, or -1 */
    int pending_line;
    char pending_value[2 * MT_CONFIG_PATH_MAX];
    mt_status status;
} load_state;

static void load_error(load_state *st, int line, mt_status status, const char *format, ...)
    __attribute__((format(printf, 4, 5)));

static void load_error(load_state *st, int line, mt_status status, const char *format, ...) {
    if (st->status != MT_OK) return; /* the first error is the one to fix first */
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    st->status = MT_FAIL(status, "%s:%d: %s", st->name, line, message);
}

static void check_section_header(load_state *st, const char *line) {
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line != '[') return;
    const char *close = strchr(line, ']');
    if (!close) return; /* inih reports the syntax error */
    char section[64];
    size_t len = (size_t)(close - line - 1);
    if (len >= sizeof section) len = sizeof section - 1;
    memcpy(section, line + 1, len);
    section[len] = '\0';
    if (!section_known(section))
        load_error(st, st->line, MT_ERR_INVALID,
                   "unknown section [%s]: the sections are [data], [model], [optimizer], "
                   "[train] and [output]",
                   section);
}

static char *read_line(char *buffer, int capacity, void *stream) {
    load_state *st = stream;
    if (st->status != MT_OK || st->text[st->position] == '\0') return NULL;
    const char *start = st->text + st->position;
    size_t len = strcspn(start, "\n");
    st->position += len + (start[len] == '\n');
    st->line++;
    if (len > 0 && start[len - 1] == '\r') len--;
    if (len + 1 > (size_t)capacity) {
        load_error(st, st->line, MT_ERR_INVALID,
                   "line longer than %d characters (the limit of Debian's inih); continue a long "
                   "value on the next line, indented",
                   capacity - 1);
        return NULL;
    }
    memcpy(buffer, start, len);
    buffer[len] = '\0';
    st->line_continues =
        len > 0 && (start[0] == ' ' || start[0] == '\t') && strspn(start, " \t") < len;
    check_section_header(st, buffer);
    return st->status == MT_OK ? buffer : NULL;
}

static void finish_pending(load_state *st) {
    if (st->pending < 0) return;
    const mt_config_option *option = &options[st->pending];
    char why[256];
    if (!parse_value(option, st->pending_value, st->base_dir, &st->work, why, sizeof why))
        load_error(st, st->pending_line, MT_ERR_INVALID, "[%s] %s = %s: %s", option->section,
                   option->key, st->pending_value, why);
    else
        st->work.origin_line[st->pending] = st->pending_line;
    st->pending = -1;
}

static int handle_pair(void *user, const char *section, const char *key, const char *value) {
    load_state *st = user;
    if (st->status != MT_OK) return 0;
    int index = option_index(section, key);
    if (st->line_continues && index >= 0 && index == st->pending) {
        size_t used = strlen(st->pending_value);
        if (used + strlen(value) >= sizeof st->pending_value) {
            load_error(st, st->line, MT_ERR_INVALID, "[%s] %s: value too long", section, key);
            return 0;
        }
        strcpy(st->pending_value + used, value);
        return 1;
    }
    finish_pending(st);
    if (st->status != MT_OK) return 0;
    if (section[0] == '\0') {
        load_error(st, st->line, MT_ERR_INVALID,
                   "'%s' is outside any section: put it under [data], [model], [optimizer], "
                   "[train] or [output]",
                   key);
        return 0;
    }
    if (index < 0) {
        char hint[128];
        suggest(section, key, hint, sizeof hint);
        load_error(st, st->line, MT_ERR_INVALID,
                   "unknown key '%s' in [%s]%s; `mobiletune train --help` lists the options", key,
                   section, hint);
        return 0;
    }
    if (st->seen_line[index] > 0) {
        load_error(st, st->line, MT_ERR_INVALID, "[%s] %s is given twice (first on line %d)",
                   section, key, st->seen_line[index]);
        return 0;
    }
    st->seen_line[index] = st->line;
    st->pending = index;
    st->pending_line = st->line;
    copy_text(st->pending_value, sizeof st->pending_value, value);
    return 1;
}

static mt_status load_text(mt_train_config *config, const char *text, const char *name,
                           const char *base_dir) {
    load_state *st = calloc(1, sizeof *st);
    if (!st) return MT_FAIL(MT_ERR_NOMEM, "%s: out of memory", name);
    st->work = *config;
    st->name = name;
    copy_text(st->base_dir, sizeof st->base_dir, base_dir);
    st->text = text;
    st->pending = -1;
    st->status = MT_OK;
    int result = ini_parse_stream(read_line, st, handle_pair, st);
    if (st->status == MT_OK) finish_pending(st);
    if (st->status == MT_OK && result == -2)
        st->status = MT_FAIL(MT_ERR_NOMEM, "%s: inih ran out of memory", name);
    else if (st->status == MT_OK && result != 0)
        load_error(st, result, MT_ERR_INVALID,
                   "not '[section]', 'key = value' or a comment (';' or '#')");
    mt_status status = st->status;
    if (status == MT_OK) {
        copy_text(st->work.source, sizeof st->work.source, name);
        *config = st->work;
    }
    free(st);
    return status;
}

mt_status mt_config_load_string(mt_train_config *config, const char *text, const char *name,
                                const char *base_dir) {
    char cwd[MT_CONFIG_PATH_MAX];
    current_dir(cwd, sizeof cwd);
    char base[MT_CONFIG_PATH_MAX];
    if (!base_dir) base_dir = cwd;
    if (!resolve_path(base_dir, cwd, base, sizeof base))
        return MT_FAIL(MT_ERR_INVALID, "%s: base folder path too long", name);
    return load_text(config, text, name ? name : "(config text)", base);
}

mt_status mt_config_load_file(mt_train_config *config, const char *path) {
    FILE *file = fopen(path, "rb");
    if (!file) return MT_FAIL(MT_ERR_IO, "cannot open config file '%s': %s", path, strerror(errno));
    char *text = NULL;
    size_t size = 0, capacity = 0;
    for (;;) {
        if (size + 4096 + 1 > capacity) {
            capacity = capacity ? 2 * capacity : 8192;
            char *grown = realloc(text, capacity);
            if (!grown) {
                free(text);
                fclose(file);
                return MT_FAIL(MT_ERR_NOMEM, "%s: out of memory", path);
            }
            text = grown;
        }
        size_t n = fread(text + size, 1, 4096, file);
        size += n;
        if (n < 4096) break;
    }
    bool failed = ferror(file);
    fclose(file);
    if (failed) {
        free(text);
        return MT_FAIL(MT_ERR_IO, "cannot read config file '%s'", path);
    }
    text[size] = '\0';
    if (strlen(text) != size) {
        free(text);
        return MT_FAIL(MT_ERR_FORMAT, "%s: contains a NUL byte: not a text file", path);
    }
    /* The folder of the INI file, for its relative paths. */
    char folder[MT_CONFIG_PATH_MAX];
    mt_status status = mt_path_parent(path, folder, sizeof folder);
    if (status == MT_OK) status = mt_config_load_string(config, text, path, folder);
    free(text);
    return status;
}

mt_status mt_config_set(mt_train_config *config, const char *assignment) {
    const char *equals = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!equals || !dot || dot > equals)
        return MT_FAIL(MT_ERR_INVALID, "--set %s: expected section.key=value", assignment);
    char section[64], key[64];
    size_t section_len = (size_t)(dot - assignment), key_len = (size_t)(equals - dot - 1);
    if (section_len == 0 || section_len >= sizeof section || key_len == 0 || key_len >= sizeof key)
        return MT_FAIL(MT_ERR_INVALID, "--set %s: expected section.key=value", assignment);
    memcpy(section, assignment, section_len);
    section[section_len] = '\0';
    memcpy(key, dot + 1, key_len);
    key[key_len] = '\0';
    const char *value = equals + 1;
    if (!section_known(section))
        return MT_FAIL(MT_ERR_INVALID,
                       "--set %s: unknown section '%s': the sections are data, model, optimizer, "
                       "train and output",
                       assignment, section);
    int index = option_index(section, key);
    if (index < 0) {
        char hint[128];
        suggest(section, key, hint, sizeof hint);
        return MT_FAIL(MT_ERR_INVALID, "--set %s: unknown key '%s' in [%s]%s", assignment, key,
                       section, hint);
    }
    char cwd[MT_CONFIG_PATH_MAX], why[256];
    current_dir(cwd, sizeof cwd);
    mt_train_config work = *config;
    if (!parse_value(&options[index], value, cwd, &work, why, sizeof why))
        return MT_FAIL(MT_ERR_INVALID, "--set %s: [%s] %s = %s: %s", assignment, section, key,
                       value, why);
    work.origin_line[index] = -1;
    *config = work;
    return MT_OK;
}

/* "file:12: [model] weights = x" / "--set model.weights=x" / "default [model] weights = x" */
static void describe_origin(const mt_train_config *config, int index, char *buffer,
                            size_t capacity) {
    char value[MT_CONFIG_PATH_MAX];
    if (mt_config_value_text(config, &options[index], value, sizeof value) != MT_OK)
        strcpy(value, "?");
    int line = config->origin_line[index];
    if (line > 0)
        snprintf(buffer, capacity, "%s:%d: [%s] %s = %s", config->source, line,
                 options[index].section, options[index].key, value);
    else if (line < 0)
        snprintf(buffer, capacity, "--set %s.%s=%s", options[index].section, options[index].key,
                 value);
    else
        snprintf(buffer, capacity, "[%s] %s = %s (the default)", options[index].section,
                 options[index].key, value);
}

mt_status mt_config_check(const mt_train_config *config) {
    char where[2 * MT_CONFIG_PATH_MAX + 128];
    for (int i = 0; i < OPTION_COUNT; i++) {
        const mt_config_option *option = &options[i];
        if (option->type != MT_CONFIG_PATH || !(option->flags & MT_CONFIG_MUST_EXIST)) continue;
        const char *path = (const char *)config + option->offset;
        if (path[0] == '\0') continue;
        struct stat info;
        bool want_dir = option->flags & MT_CONFIG_IS_DIR;
        if (stat(path, &info) != 0) {
            describe_origin(config, i, where, sizeof where);
            return MT_FAIL(MT_ERR_IO, "%s: %s: %s", where, strerror(errno),
                           want_dir ? "pack the split with mobiletune-pack, or fix the path"
                                    : "fix the path, or use none");
        }
        if (want_dir ? !S_ISDIR(info.st_mode) : !S_ISREG(info.st_mode)) {
            describe_origin(config, i, where, sizeof where);
            return MT_FAIL(MT_ERR_INVALID, "%s: not a %s", where, want_dir ? "folder" : "file");
        }
    }
    if (config->optimizer.warmup_epochs > 0 && config->optimizer.warmup_steps > 0) {
        describe_origin(config, option_index("optimizer", "warmup_steps"), where, sizeof where);
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: warmup_epochs = %g is also set; give warmup in epochs or in steps, "
                       "not both",
                       where, config->optimizer.warmup_epochs);
    }
    const bool reduced = config->train.precision == MT_PRECISION_BF16 ||
                         config->train.precision == MT_PRECISION_FP16;
    if (reduced && config->train.backend == MT_CONFIG_BACKEND_CPU) {
        describe_origin(config, option_index("train", "precision"), where, sizeof where);
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: the cpu backend (oneDNN) computes in fp32 only; set train.backend = "
                       "cuda for bf16/fp16 training (or reference, which emulates it slowly), or "
                       "train.precision = fp32",
                       where);
    }
    if (config->optimizer.nesterov && config->optimizer.name != MT_OPTIMIZER_SGD) {
        describe_origin(config, option_index("optimizer", "nesterov"), where, sizeof where);
        return MT_FAIL(MT_ERR_INVALID, "%s: nesterov applies to sgd only", where);
    }
    return MT_OK;
}

/* ---- text out ------------------------------------------------------------------------------- */

/* Values longer than fit on one inih line continue on indented lines (see the top). */
enum { INI_PIECE = 150 };

mt_status mt_config_to_ini(const mt_train_config *config, char **text) {
    *text = NULL;
    mt_text_buffer b = {0};
    mt_text_buffer_append_string(&b, "; mobiletune configuration: every option, paths absolute\n");
    const char *section = "";
    char value[MT_CONFIG_PATH_MAX];
    for (int i = 0; i < OPTION_COUNT; i++) {
        const mt_config_option *option = &options[i];
        if (strcmp(section, option->section) != 0) {
            section = option->section;
            mt_text_buffer_printf(&b, "%s[%s]\n", i > 0 ? "\n" : "", section);
        }
        mt_status status = mt_config_value_text(config, option, value, sizeof value);
        if (status != MT_OK) {
            mt_text_buffer_free(&b);
            return status;
        }
        size_t len = strlen(value);
        size_t piece = len;
        /* Split only between two non-space characters, so no space is lost to trimming. */
        if (piece > INI_PIECE) {
            piece = INI_PIECE;
            while (piece > 1 && (value[piece] == ' ' || value[piece - 1] == ' '))
                piece--;
        }
        mt_text_buffer_printf(&b, "%s = %.*s\n", option->key, (int)piece, value);
        for (size_t at = piece; at < len;) {
            size_t n = len - at;
            if (n > INI_PIECE) {
                n = INI_PIECE;
                while (n > 1 && (value[at + n] == ' ' || value[at + n - 1] == ' '))
                    n--;
            }
            mt_text_buffer_printf(&b, "    %.*s\n", (int)n, value + at);
            at += n;
        }
    }
    *text = mt_text_buffer_take(&b, NULL);
    if (!*text) return MT_FAIL(MT_ERR_NOMEM, "config text: out of memory");
    return MT_OK;
}

static void describe_values(const mt_config_option *option, char *buffer, size_t capacity) {
    switch (option->type) {
    case MT_CONFIG_INT:
        if (option->multiple_of > 0)
            snprintf(buffer, capacity, "%.0f..%.0f, multiple of %d", option->min, option->max,
                     option->multiple_of);
        else
            snprintf(buffer, capacity, "%.0f..%.0f", option->min, option->max);
        break;
    case MT_CONFIG_FLOAT:
        if (option->allowed)
            snprintf(buffer, capacity, "%s", option->allowed);
        else
            snprintf(buffer, capacity, "%g..%g", option->min, option->max);
        break;
    case MT_CONFIG_BOOL:
        snprintf(buffer, capacity, "true|false");
        break;
    case MT_CONFIG_ENUM:
        snprintf(buffer, capacity, "%s", option->allowed);
        break;
    case MT_CONFIG_STRING:
        snprintf(buffer, capacity, "text");
        break;
    case MT_CONFIG_PATH:
        snprintf(buffer, capacity, "%s or none",
                 !(option->flags & MT_CONFIG_MUST_EXIST) ? "path"
                 : option->flags & MT_CONFIG_IS_DIR      ? "existing folder"
                                                         : "existing file");
        break;
    }
}

void mt_config_print_help(FILE *out) {
    fprintf(out, "Options (INI sections and keys; override any with --set section.key=value):\n");
    const char *section = "";
    char values[160];
    for (int i = 0; i < OPTION_COUNT; i++) {
        const mt_config_option *option = &options[i];
        if (strcmp(section, option->section) != 0) {
            section = option->section;
            fprintf(out, "\n[%s]\n", section);
        }
        describe_values(option, values, sizeof values);
        fprintf(out, "  %-26s %-6s default %-12s (%s)\n      %s\n", option->key,
                type_name(option->type), option->default_text, values, option->help);
    }
}

void mt_config_write_markdown(FILE *out) {
    fprintf(out,
            "# Configuration options\n\n"
            "<!-- Generated from the option table in src/train/config.c; do not edit. Regenerate "
            "with\n     build/tests/train/test_train_config_doc --write docs/config.md\n"
            "     (the test train_config_doc fails while this file is stale). -->\n\n"
            "A run is configured by an INI file (`mobiletune train --config FILE.ini`) and "
            "`--set section.key=value` overrides on the command line, applied in order after "
            "the file. `mobiletune train --help` prints the same list.\n\n"
            "- Unknown sections or keys, a key given twice, a value of the wrong type or out of "
            "range, and a path that must exist but does not are errors that name the file, the "
            "line and the key (or the `--set` argument), with the allowed values.\n"
            "- **Relative paths in an INI file resolve against the folder of that INI file**, "
            "not the current directory; relative paths in `--set` resolve against the current "
            "directory. `none` (or an empty value) means no path. Paths are made absolute "
            "lexically (`a/b/../c` is `a/c`), without following symbolic links.\n"
            "- Comments start with `;` or `#` at the start of a line, or ` ;` after a value.\n"
            "- Debian's inih reads lines of at most 199 characters. A longer value continues on "
            "the following lines, each indented; the pieces are joined without a separator.\n"
            "- Booleans: `true|false|yes|no|on|off|1|0`. Enums and booleans ignore case.\n"
            "- The checkpoint stores the whole configuration (every option, paths absolute) as "
            "INI text, and `--resume` reads it back.\n");
    const char *section = "";
    char values[160];
    for (int i = 0; i < OPTION_COUNT; i++) {
        const mt_config_option *option = &options[i];
        if (strcmp(section, option->section) != 0) {
            section = option->section;
            fprintf(out,
                    "\n## [%s]\n\n| key | type | default | values | meaning |\n"
                    "|---|---|---|---|---|\n",
                    section);
        }
        describe_values(option, values, sizeof values);
        fprintf(out, "| `%s` | %s | `%s` | %s | %s |\n", option->key, type_name(option->type),
                option->default_text, values, option->help);
    }
    fprintf(out,
            "\n## Optimizer update rules (Keras 3)\n\n"
            "With g the gradient and lr the step's rate, per element, in float32:\n\n"
            "- weight decay (any optimizer, first): `p -= p * weight_decay * lr`\n"
            "- rmsprop: `v = rho*v + (1-rho)*g^2; d = lr*g / sqrt(v + epsilon)`; with momentum "
            "`m = momentum*m + d; p -= m`, else `p -= d`\n"
            "- sgd: with momentum `m = momentum*m - lr*g; p += nesterov ? momentum*m - lr*g : m`, "
            "else `p -= lr*g`\n"
            "- adam: `t = step+1; a = lr*sqrt(1-beta_2^t)/(1-beta_1^t); m += (g-m)*(1-beta_1); "
            "v += (g^2-v)*(1-beta_2); p -= m*a / (sqrt(v) + epsilon)`\n\n"
            "## Learning-rate schedule\n\n"
            "The base rate is `learning_rate`, times the number of ranks when "
            "`scale_lr_with_world_size` is on. Step s (0-based) of a warmup of W steps uses "
            "`base*(s+1)/W`; after it, with t = s - W: constant `base`; step "
            "`base * gamma^floor(t / (step_size*steps_per_epoch))`; cosine "
            "`base * (f + (1-f) * (1 + cos(pi * min(1, t/(total-W))))/2)` with f = "
            "`cosine_final_fraction` and total = epochs x steps per epoch.\n");
}

/* ---- views ---------------------------------------------------------------------------------- */

mt_model_config mt_config_model(const mt_train_config *config) {
    return (mt_model_config){
        .alpha = (float)config->model.alpha,
        .input_size = config->model.input_size,
        .classes = config->model.classes,
        .dropout = (float)config->model.dropout,
        .mode = config->model.mode,
        .fine_tune_at = config->model.fine_tune_at,
        .bn_mode = config->model.bn_mode,
        .bn_momentum = (float)config->model.bn_momentum,
        .batch_size = config->data.batch_size,
    };
}

mt_optimizer_params mt_config_optimizer(const mt_train_config *config) {
    return (mt_optimizer_params){
        .kind = config->optimizer.name,
        .rho = (float)config->optimizer.rho,
        .momentum = (float)config->optimizer.momentum,
        .epsilon = (float)config->optimizer.epsilon,
        .nesterov = config->optimizer.nesterov,
        .beta_1 = (float)config->optimizer.beta_1,
        .beta_2 = (float)config->optimizer.beta_2,
        .weight_decay = (float)config->optimizer.weight_decay,
    };
}

mt_status mt_config_lr_schedule(const mt_train_config *config, long steps_per_epoch, int world_size,
                                mt_lr_schedule *out) {
    if (steps_per_epoch <= 0 || world_size <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "learning-rate schedule: %ld steps per epoch on %d ranks: both must be > 0 "
                       "(is the training split smaller than one global batch?)",
                       steps_per_epoch, world_size);
    long warmup = config->optimizer.warmup_steps > 0
                      ? config->optimizer.warmup_steps
                      : lround(config->optimizer.warmup_epochs * (double)steps_per_epoch);
    double scale = config->optimizer.scale_lr_with_world_size ? (double)world_size : 1.0;
    *out = (mt_lr_schedule){
        .kind = config->optimizer.schedule,
        .base_lr = config->optimizer.learning_rate * scale,
        .warmup_steps = warmup,
        .step_size = (long)config->optimizer.step_size * steps_per_epoch,
        .gamma = config->optimizer.gamma,
        .total_steps = (long)config->train.epochs * steps_per_epoch,
        .final_fraction = config->optimizer.cosine_final_fraction,
    };
    return MT_OK;
}
