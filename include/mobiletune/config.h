/* The trainer's options: one table (section, key, type, default, allowed values, help, place in
 * mt_train_config) from which the INI parser, the `--set section.key=value` overrides, the
 * `--help` option list and docs/config.md all come, so they cannot drift apart.
 *
 * Where a value comes from is remembered per option (default, INI file and line, or --set), so a
 * bad value, an unknown key or a missing file is reported as
 *     configs/x.ini:12: [optimizer] name = adamw: not one of rmsprop|sgd|adam
 * Relative paths in an INI file resolve against the folder of that INI file; relative paths given
 * with --set resolve against the current directory. Paths are stored absolute. */
#ifndef MOBILETUNE_CONFIG_H
#define MOBILETUNE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mobiletune/enum_names.h"
#include "mobiletune/model.h"
#include "mobiletune/optimizer.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MT_CONFIG_PATH_MAX = 1024,
    MT_CONFIG_MAX_OPTIONS = 96,
};

/* Each enum option's values are named by one table (mobiletune/enum_names.h), defined by the
 * module that owns the enum: model.h (mode, bn_mode), optimizer.h (name, schedule), ops.h
 * (backend) and these, of the config's own enums. */

typedef enum mt_nan_policy {
    MT_NAN_POLICY_STOP = 0, /* stop with a message naming the step */
    MT_NAN_POLICY_SKIP,     /* drop the step's update and go on */
} mt_nan_policy;
extern const mt_enum_names mt_nan_policy_names; /* stop|skip */

/* train.backend: ops.h's backend kinds (mt_backend_create_kind), under the config's names. */
typedef mt_backend_kind mt_config_backend;
#define MT_CONFIG_BACKEND_REFERENCE MT_BACKEND_KIND_REFERENCE
#define MT_CONFIG_BACKEND_CPU MT_BACKEND_KIND_CPU
#define MT_CONFIG_BACKEND_CUDA MT_BACKEND_KIND_CUDA

/* train.comm: how ranks all-reduce (the same order as mt_comm_choice in comm.h). */
typedef enum mt_config_comm {
    MT_CONFIG_COMM_AUTO = 0,
    MT_CONFIG_COMM_NONE,
    MT_CONFIG_COMM_MPI,
    MT_CONFIG_COMM_NCCL,
} mt_config_comm;
extern const mt_enum_names mt_config_comm_names; /* auto|none|mpi|nccl */

typedef enum mt_cache_features {
    MT_CACHE_FEATURES_AUTO = 0, /* frozen mode: cache (both flip views when flips are on; not
                                 * with random_rotation) */
    MT_CACHE_FEATURES_ON,       /* the same */
    MT_CACHE_FEATURES_OFF,      /* run the frozen backbone every step */
} mt_cache_features;
extern const mt_enum_names mt_cache_features_names; /* auto|on|off */

/* train.precision: the values of mt_compute_precision (ops.h), in the same order. */
typedef enum mt_precision {
    MT_PRECISION_FP32 = 0,
    MT_PRECISION_TF32,
    MT_PRECISION_BF16,
    MT_PRECISION_FP16,
} mt_precision;

/* Every option's value. Path fields are absolute, or "" for none. Enum fields hold the enum's
 * value, which its name table spells. */
typedef struct mt_train_config {
    struct {
        char train[MT_CONFIG_PATH_MAX], val[MT_CONFIG_PATH_MAX], test[MT_CONFIG_PATH_MAX];
        int batch_size; /* per rank */
        bool shuffle, random_flip;
        double random_rotation; /* Keras RandomRotation factor, 0: off */
        int prefetch;       /* batches buffered ahead */
        int loader_threads; /* decode threads per rank */
    } data;
    struct {
        double alpha;
        int input_size, classes;
        double dropout;
        mt_train_mode mode;
        int fine_tune_at;
        mt_bn_mode bn_mode;
        double bn_momentum;
        char weights[MT_CONFIG_PATH_MAX];         /* Keras h5, "" for none */
        char init_checkpoint[MT_CONFIG_PATH_MAX]; /* safetensors, "" for none */
    } model;
    struct {
        mt_optimizer_kind name;
        double learning_rate, rho, momentum, epsilon;
        bool nesterov;
        double beta_1, beta_2, weight_decay;
        mt_lr_schedule_kind schedule;
        double warmup_epochs;
        int warmup_steps;
        int step_size; /* epochs */
        double gamma, cosine_final_fraction;
        bool scale_lr_with_world_size;
    } optimizer;
    struct {
        int epochs, steps_per_epoch, seed, eval_every;
        mt_nan_policy nan_policy;
        mt_config_backend backend;
        int threads;
        mt_config_comm comm;
        double bucket_mb; /* gradient all-reduce bucket, MiB; 0: one call after backward */
        mt_cache_features cache_features;
        mt_precision precision;
        bool cuda_graphs; /* capture the training step once per batch shape and replay it */
    } train;
    struct {
        char run_dir[MT_CONFIG_PATH_MAX];
        bool keep_best, keep_last, tensorboard;
        int checkpoint_every;
    } output;

    /* Where each option's value came from, by table index: 0 default, > 0 the line in
     * `source`, -1 a --set override. */
    int origin_line[MT_CONFIG_MAX_OPTIONS];
    char source[MT_CONFIG_PATH_MAX]; /* the last INI file (or text name) loaded */
} mt_train_config;

/* ---- the option table --------------------------------------------------------------------- */

/* The same rows describe the options of every command line (src/config/command_line.h): there
 * `key` is the long option's name, `section` is NULL, the offsets point into the command's own
 * struct of arguments, and the last three types are for them. */
typedef enum mt_config_type {
    MT_CONFIG_INT = 0, /* int, or int64_t when the field has its size */
    MT_CONFIG_FLOAT,   /* double, or float when the field has its size */
    MT_CONFIG_BOOL,
    MT_CONFIG_STRING,    /* copied into a char array of `size` */
    MT_CONFIG_ENUM,      /* an int holding a value of the enum `names` spells */
    MT_CONFIG_PATH,      /* made absolute into a char array of `size`; "none" or "" for none */
    MT_CONFIG_TEXT,      /* a `const char *` pointing at the text given (argv) */
    MT_CONFIG_TEXT_LIST, /* an mt_config_text_list: each use of the option adds one text */
    MT_CONFIG_FLAG,      /* no value: sets its bool (or int) to true/1, or with CLEARS false/0 */
} mt_config_type;

enum {
    MT_CONFIG_MUST_EXIST = 1 << 0,   /* a path: mt_config_check wants it to exist when set */
    MT_CONFIG_IS_DIR = 1 << 1,       /* ... as a folder (else a regular file) */
    MT_CONFIG_ABOVE_MIN = 1 << 2,    /* a float: the range excludes min, (min, max] */
    MT_CONFIG_CLEARS = 1 << 3,       /* a flag: sets false/0 (e.g. --no-progress) */
    MT_CONFIG_HIDE_DEFAULT = 1 << 4, /* --help: the help text says the default in words */
    MT_CONFIG_BELOW_MAX = 1 << 5,    /* a float: the range excludes max, [min, max) */
};

/* The texts a repeated option collected, in order (items: capacity entries, the caller's). */
typedef struct mt_config_text_list {
    const char **items;
    int count, capacity;
} mt_config_text_list;

/* One row of the table, written with designated initializers; fields left out are 0/NULL. */
typedef struct mt_config_option {
    const char *section, *key;
    mt_config_type type;
    size_t offset; /* into mt_train_config */
    size_t size;   /* of the field (strings and paths: the capacity) */
    const char *default_text;
    const mt_enum_names *names; /* enum: the enum's name table */
    const char *allowed;        /* float: an optional list of allowed values, "0.5|1.0" */
    double min, max;            /* int, float: inclusive range */
    int multiple_of;            /* int: 0 or the required divisor */
    unsigned flags;
    const char *metavar; /* command lines: what the value is in --help, "N", "FILE" */
    const char *help;
} mt_config_option;

int mt_config_option_count(void);
const mt_config_option *mt_config_option_at(int index);
/* The option "section.key" (or NULL). */
const mt_config_option *mt_config_option_find(const char *section, const char *key);

/* ---- filling a config ---------------------------------------------------------------------- */

/* Every option at its default (cannot fail: the defaults are checked by the tests). */
void mt_config_defaults(mt_train_config *config);

/* Apply an INI file on top of `config`. Errors (unknown section or key, a key given twice, a bad
 * value, a syntax error, a line longer than inih's 199 characters) name the file, the line and
 * the key. Nothing is half applied: on failure `config` is unchanged. */
mt_status mt_config_load_file(mt_train_config *config, const char *path);

/* The same for INI text in memory; `name` names it in errors, relative paths resolve against
 * `base_dir` (NULL: the current directory). */
mt_status mt_config_load_string(mt_train_config *config, const char *text, const char *name,
                                const char *base_dir);

/* One override "section.key=value" (relative paths against the current directory). */
mt_status mt_config_set(mt_train_config *config, const char *assignment);

/* Checks that need every option at once (after the file and the overrides): the paths flagged
 * MUST_EXIST exist when set, and options agree with each other. Errors name where the value came
 * from. */
mt_status mt_config_check(const mt_train_config *config);

/* The whole config as INI text that mt_config_load_string reads back to the same values (every
 * option, paths absolute). Free with free(). For checkpoints and the run folder. */
mt_status mt_config_to_ini(const mt_train_config *config, char **text);

/* The value of one option as text, the way the INI would spell it. */
mt_status mt_config_value_text(const mt_train_config *config, const mt_config_option *option,
                               char *buffer, size_t capacity);

/* The name of an enum option's value, e.g. ("train", "backend", cfg.train.backend) -> "cpu". */
const char *mt_config_enum_name(const char *section, const char *key, int value);

/* `--help`: every option, grouped by section, with type, default and help. */
void mt_config_print_help(FILE *out);

/* docs/config.md, the same table as Markdown. */
void mt_config_write_markdown(FILE *out);

/* ---- views for the modules the trainer drives ---------------------------------------------- */

/* The model's part (batch_size: data.batch_size). */
mt_model_config mt_config_model(const mt_train_config *config);

mt_optimizer_params mt_config_optimizer(const mt_train_config *config);

/* The LR schedule in steps, given the steps of one epoch and the number of ranks (the linear
 * scaling rule multiplies the base rate by world_size when the option asks for it). */
mt_status mt_config_lr_schedule(const mt_train_config *config, long steps_per_epoch, int world_size,
                                mt_lr_schedule *out);

#ifdef __cplusplus
}
#endif
#endif
