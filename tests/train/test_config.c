/* The option table, the INI parser, --set, the checks and the shipped tutorial configs: values
 * land where they should, every kind of error names the file, line and key, and the INI text a
 * checkpoint stores reads back to the same config. */
#include "mobiletune/config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test_util.h"

/* CHECK_OK for void helpers: report and go on. */
#define EXPECT_OK(call)                                                                            \
    do {                                                                                           \
        mt_status expect_ok_ = (call);                                                             \
        CHECK_MSG(expect_ok_ == MT_OK, "%s: %s", #call, mt_last_error());                          \
    } while (0)

static char temp_dir[4096];

static const char *write_ini(const char *name, const char *text) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", temp_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return path;
}

/* The config's values equal, option by option, as text. */
static bool same_values(const mt_train_config *a, const mt_train_config *b) {
    bool same = true;
    for (int i = 0; i < mt_config_option_count(); i++) {
        char va[MT_CONFIG_PATH_MAX], vb[MT_CONFIG_PATH_MAX];
        const mt_config_option *o = mt_config_option_at(i);
        if (mt_config_value_text(a, o, va, sizeof va) != MT_OK ||
            mt_config_value_text(b, o, vb, sizeof vb) != MT_OK || strcmp(va, vb) != 0) {
            fprintf(stderr, "[%s] %s differs: '%s' vs '%s'\n", o->section, o->key, va, vb);
            same = false;
        }
    }
    return same;
}

/* Load `text` as a file and expect failure with every fragment in the message. */
static void expect_load_error(const char *text, const char *fragments[]) {
    mt_train_config config, before;
    mt_config_defaults(&config);
    before = config;
    const char *path = write_ini("bad.ini", text);
    mt_status status = mt_config_load_file(&config, path);
    CHECK_MSG(status != MT_OK, "loading accepted:\n%s", text);
    const char *message = mt_last_error();
    for (int i = 0; fragments[i]; i++)
        CHECK_MSG(strstr(message, fragments[i]) != NULL, "message '%s' lacks '%s'", message,
                  fragments[i]);
    CHECK_MSG(strstr(message, "bad.ini") != NULL, "message '%s' lacks the file name", message);
    CHECK_MSG(memcmp(&config, &before, sizeof config) == 0, "a failed load changed the config");
}

static void test_defaults(void) {
    mt_train_config config;
    mt_config_defaults(&config);
    CHECK(config.data.batch_size == 32);
    CHECK(config.data.shuffle && !config.data.random_flip);
    CHECK(config.model.alpha == 1.0 && config.model.input_size == 160);
    CHECK(config.model.mode == MT_TRAIN_FROZEN && config.model.bn_mode == MT_BN_AUTO);
    /* Keras' MobileNetV2 BN momentum, the same in the model's own default */
    CHECK(config.model.bn_momentum == 0.999);
    CHECK(mt_config_model(&config).bn_momentum == mt_model_config_default().bn_momentum);
    CHECK(config.model.weights[0] == '\0' && config.data.train[0] == '\0');
    CHECK(config.optimizer.name == MT_OPTIMIZER_RMSPROP);
    CHECK(config.optimizer.rho == 0.9 && config.optimizer.epsilon == 1e-7);
    CHECK(config.train.backend == MT_CONFIG_BACKEND_CPU);
    CHECK(config.output.run_dir[0] == '/');
    EXPECT_OK(mt_config_check(&config));
    CHECK(strcmp(mt_config_enum_name("train", "backend", MT_CONFIG_BACKEND_CUDA), "cuda") == 0);
    CHECK(strcmp(mt_config_enum_name("model", "mode", MT_TRAIN_FINETUNE), "finetune") == 0);
    CHECK(strcmp(mt_config_enum_name("optimizer", "schedule", MT_LR_COSINE), "cosine") == 0);
    /* Each option's default parses, and keys are unique. */
    for (int i = 0; i < mt_config_option_count(); i++) {
        const mt_config_option *o = mt_config_option_at(i);
        CHECK(mt_config_option_find(o->section, o->key) == o);
        CHECK_MSG(o->help && strlen(o->help) > 10, "[%s] %s has no help", o->section, o->key);
    }
}

static void test_load_values(void) {
    mt_train_config config;
    mt_config_defaults(&config);
    char packed[4300];
    snprintf(packed, sizeof packed, "%s/packed", temp_dir);
    mkdir(packed, 0755);
    const char *path = write_ini("good.ini", "; a comment\n"
                                             "# another\n"
                                             "[data]\n"
                                             "train = packed ; inline comment\n"
                                             "batch_size = 8\r\n"
                                             "random_flip = Yes\n"
                                             "\n"
                                             "[model]\n"
                                             "alpha = 0.35\n"
                                             "mode = FineTune\n"
                                             "fine_tune_at = 120\n"
                                             "weights = none\n"
                                             "bn_momentum = 0.99\n"
                                             "[optimizer]\n"
                                             "name = adam\n"
                                             "learning_rate = 3e-4\n"
                                             "schedule = cosine\n"
                                             "warmup_epochs = 0.5\n"
                                             "[train]\n"
                                             "epochs = 3\n"
                                             "nan_policy = skip\n"
                                             "[output]\n"
                                             "run_dir = ../runs/x\n");
    EXPECT_OK(mt_config_load_file(&config, path));
    char want[4300];
    snprintf(want, sizeof want, "%s/packed", temp_dir);
    CHECK_MSG(strcmp(config.data.train, want) == 0, "train = %s, want %s", config.data.train, want);
    char *parent = strdup(temp_dir);
    *strrchr(parent, '/') = '\0';
    snprintf(want, sizeof want, "%s/runs/x", parent);
    free(parent);
    CHECK_MSG(strcmp(config.output.run_dir, want) == 0, "run_dir = %s, want %s",
              config.output.run_dir, want);
    CHECK(config.data.batch_size == 8 && config.data.random_flip);
    CHECK(config.model.alpha == 0.35 && config.model.mode == MT_TRAIN_FINETUNE);
    CHECK(config.model.fine_tune_at == 120);
    CHECK(config.optimizer.name == MT_OPTIMIZER_ADAM && config.optimizer.learning_rate == 3e-4);
    CHECK(config.train.epochs == 3 && config.train.nan_policy == MT_NAN_POLICY_SKIP);
    CHECK(
        config.origin_line[mt_config_option_find("data", "batch_size") - mt_config_option_at(0)] ==
        5);
    CHECK(config.origin_line[mt_config_option_find("data", "shuffle") - mt_config_option_at(0)] ==
          0);
    EXPECT_OK(mt_config_check(&config));

    mt_model_config model = mt_config_model(&config);
    CHECK(model.alpha == 0.35f && model.mode == MT_TRAIN_FINETUNE && model.batch_size == 8);
    CHECK(config.model.bn_momentum == 0.99 && model.bn_momentum == 0.99f);
    mt_optimizer_params params = mt_config_optimizer(&config);
    CHECK(params.kind == MT_OPTIMIZER_ADAM && params.beta_2 == 0.999f);
    mt_lr_schedule schedule;
    EXPECT_OK(mt_config_lr_schedule(&config, 10, 1, &schedule));
    CHECK(schedule.warmup_steps == 5 && schedule.total_steps == 30);
    CHECK_CLOSE(mt_lr_schedule_at(&schedule, 0), 3e-4 / 5, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&schedule, 4), 3e-4, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&schedule, 5), 3e-4, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&schedule, 30), 0.0, 1e-15, 0);
    CHECK(mt_config_lr_schedule(&config, 0, 1, &schedule) == MT_ERR_INVALID);

    /* --set: after the file, relative paths against the current directory, marked as --set. */
    EXPECT_OK(mt_config_set(&config, "optimizer.scale_lr_with_world_size=true"));
    EXPECT_OK(mt_config_set(&config, "optimizer.warmup_epochs=0"));
    EXPECT_OK(mt_config_set(&config, "optimizer.warmup_steps=3"));
    EXPECT_OK(mt_config_lr_schedule(&config, 10, 4, &schedule));
    CHECK_CLOSE(schedule.base_lr, 4 * 3e-4, 0, 1e-12);
    CHECK(schedule.warmup_steps == 3);
    CHECK(config.origin_line[mt_config_option_find("optimizer", "warmup_steps") -
                             mt_config_option_at(0)] == -1);
    EXPECT_OK(mt_config_set(&config, "data.val=/abs/../abs2/./v"));
    CHECK(strcmp(config.data.val, "/abs2/v") == 0);
}

static void test_load_errors(void) {
    /* a momentum of 1 would never move the statistics: out of range, with the range named */
    expect_load_error("[model]\nbn_momentum = 1\n",
                      (const char *[]){":2:", "bn_momentum", "out of range [0, 0.999999]", NULL});
    expect_load_error("[model]\nbn_momentum = -0.5\n",
                      (const char *[]){":2:", "bn_momentum", NULL});
    expect_load_error(
        "[optimizer]\nlearning_rat = 0.1\n",
        (const char *[]){":2:", "learning_rat", "did you mean [optimizer] learning_rate", NULL});
    expect_load_error("[data]\nbatch_size = 4\n[trian]\nepochs = 1\n",
                      (const char *[]){":3:", "unknown section [trian]", NULL});
    expect_load_error(
        "[optimizer]\nname = adamw\n",
        (const char *[]){":2:", "[optimizer] name = adamw", "rmsprop|sgd|adam", NULL});
    expect_load_error("[data]\n\nbatch_size = 3.5\n",
                      (const char *[]){":3:", "batch_size", "not an integer", NULL});
    expect_load_error("[data]\nbatch_size = 0\n",
                      (const char *[]){":2:", "batch_size", "out of range [1, 65536]", NULL});
    expect_load_error("[model]\ninput_size = 100\n",
                      (const char *[]){":2:", "input_size", "multiple of 32", NULL});
    expect_load_error("[model]\nalpha = 0.6\n",
                      (const char *[]){":2:", "alpha", "0.35|0.5|0.75|1.0|1.3|1.4", NULL});
    expect_load_error("[optimizer]\nlearning_rate = fast\n",
                      (const char *[]){":2:", "learning_rate", "not a finite number", NULL});
    expect_load_error("[optimizer]\nlearning_rate = nan\n",
                      (const char *[]){":2:", "not a finite number", NULL});
    expect_load_error("[data]\nshuffle = maybe\n",
                      (const char *[]){":2:", "shuffle", "true or false", NULL});
    expect_load_error("[train]\nepochs = 2\nseed = 1\nepochs = 3\n",
                      (const char *[]){":4:", "epochs", "given twice (first on line 2)", NULL});
    expect_load_error("epochs = 2\n", (const char *[]){":1:", "outside any section", NULL});
    expect_load_error("[train]\nepochs 2\n", (const char *[]){":2:", "not '[section]'", NULL});
    char long_line[400];
    snprintf(long_line, sizeof long_line, "[output]\nrun_dir = %0300d\n", 0);
    expect_load_error(long_line, (const char *[]){":2:", "longer than 199 characters", NULL});

    mt_train_config config;
    mt_config_defaults(&config);
    CHECK(mt_config_load_file(&config, "/nonexistent/x.ini") == MT_ERR_IO);
    CHECK(strstr(mt_last_error(), "/nonexistent/x.ini") != NULL);

    /* Missing files are found by the check, which names the file, line and key. */
    const char *path = write_ini("missing.ini", "[data]\nbatch_size = 4\nval = no_such_split\n");
    EXPECT_OK(mt_config_load_file(&config, path));
    CHECK(mt_config_check(&config) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "missing.ini:3: [data] val = ") &&
                  strstr(mt_last_error(), "no_such_split") &&
                  strstr(mt_last_error(), "mobiletune-pack"),
              "message: %s", mt_last_error());
    EXPECT_OK(mt_config_set(&config, "data.val=none"));
    EXPECT_OK(mt_config_set(&config, "model.weights=/nonexistent/w.h5"));
    CHECK(mt_config_check(&config) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "--set model.weights=/nonexistent/w.h5"), "message: %s",
              mt_last_error());
    EXPECT_OK(mt_config_set(&config, "model.weights=none"));
    EXPECT_OK(mt_config_set(&config, "model.weights=."));
    CHECK(mt_config_check(&config) == MT_ERR_INVALID); /* a folder, not a file */
    EXPECT_OK(mt_config_set(&config, "model.weights=none"));
    EXPECT_OK(mt_config_check(&config));

    /* Cross-option checks. */
    EXPECT_OK(mt_config_set(&config, "optimizer.warmup_epochs=1"));
    EXPECT_OK(mt_config_set(&config, "optimizer.warmup_steps=10"));
    CHECK(mt_config_check(&config) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "not both") != NULL);
    EXPECT_OK(mt_config_set(&config, "optimizer.warmup_steps=0"));
    EXPECT_OK(mt_config_set(&config, "optimizer.nesterov=true"));
    CHECK(mt_config_check(&config) == MT_ERR_INVALID);
    EXPECT_OK(mt_config_set(&config, "optimizer.name=sgd"));
    EXPECT_OK(mt_config_check(&config));

    /* Bad overrides. */
    mt_train_config before = config;
    CHECK(mt_config_set(&config, "optimizer.learningrate=0.1") == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "did you mean [optimizer] learning_rate"), "message: %s",
              mt_last_error());
    CHECK(mt_config_set(&config, "optimizer.lr=0.1") == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "did you mean [optimizer] learning_rate"), "message: %s",
              mt_last_error());
    CHECK(mt_config_set(&config, "epochs=3") == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "section.key=value") != NULL);
    CHECK(mt_config_set(&config, "trian.epochs=3") == MT_ERR_INVALID);
    CHECK(mt_config_set(&config, "train.backend=tpu") == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "--set train.backend=tpu") &&
                  strstr(mt_last_error(), "reference|cpu|cuda"),
              "message: %s", mt_last_error());
    CHECK(memcmp(&config, &before, sizeof config) == 0);
}

static void test_round_trip(void) {
    mt_train_config config, back;
    mt_config_defaults(&config);
    EXPECT_OK(mt_config_set(&config, "optimizer.learning_rate=1e-5"));
    EXPECT_OK(mt_config_set(&config, "optimizer.epsilon=1.5e-7"));
    EXPECT_OK(mt_config_set(&config, "model.mode=scratch"));
    EXPECT_OK(mt_config_set(&config, "data.random_flip=on"));
    /* A deep path, longer than an inih line: written as continuation lines. */
    char assignment[1000] = "output.run_dir=/very";
    for (int i = 0; i < 40; i++)
        strcat(assignment, "/deep-folder-name");
    strcat(assignment, "/with space");
    EXPECT_OK(mt_config_set(&config, assignment));
    char *text = NULL;
    EXPECT_OK(mt_config_to_ini(&config, &text));
    CHECK(strstr(text, "learning_rate = 1e-05\n") != NULL);
    mt_config_defaults(&back);
    EXPECT_OK(mt_config_load_string(&back, text, "checkpoint config", "/elsewhere"));
    CHECK(same_values(&config, &back));
    CHECK(config.optimizer.epsilon == back.optimizer.epsilon);
    CHECK_MSG(strcmp(back.output.run_dir, assignment + strlen("output.run_dir=")) == 0, "%s\n%s",
              back.output.run_dir, text);
    free(text);
}

static void test_help(void) {
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    mt_config_print_help(out);
    fclose(out);
    for (int i = 0; i < mt_config_option_count(); i++) {
        const mt_config_option *o = mt_config_option_at(i);
        char needle[128];
        snprintf(needle, sizeof needle, "  %s ", o->key);
        CHECK_MSG(strstr(text, needle) != NULL, "--help lacks %s", o->key);
    }
    free(text);
}

/* configs/SET/{scratch,frozen,finetune}.ini: cats_vs_dogs holds the tutorial's three runs (with
 * its flip, finetune from frozen's best checkpoint), cats_vs_dogs_20pct the write-up's 20% protocol
 * (issue 13: no augmentation, finetune from frozen's final weights). */
static void test_shipped_configs(const char *set, bool flip, const char *frozen_checkpoint) {
    const char *source = getenv("MT_SOURCE_DIR");
    if (!source) {
        printf("note: MT_SOURCE_DIR unset, shipped configs not checked\n");
        return;
    }
    const char *names[] = {"scratch", "frozen", "finetune"};
    const mt_train_mode modes[] = {MT_TRAIN_SCRATCH, MT_TRAIN_FROZEN, MT_TRAIN_FINETUNE};
    for (int i = 0; i < 3; i++) {
        char path[4200], want[4300];
        snprintf(path, sizeof path, "%s/configs/%s/%s.ini", source, set, names[i]);
        mt_train_config config;
        mt_config_defaults(&config);
        EXPECT_OK(mt_config_load_file(&config, path));
        CHECK(config.model.mode == modes[i]);
        CHECK(config.model.input_size == 160 && config.data.batch_size == 32);
        CHECK(config.train.epochs == 10 && config.model.dropout == 0.2);
        CHECK(config.optimizer.name == MT_OPTIMIZER_RMSPROP);
        CHECK(config.optimizer.learning_rate == (i == 2 ? 1e-5 : 1e-4));
        CHECK_MSG(config.data.random_flip == flip, "%s/%s: random_flip", set, names[i]);
        char *root = realpath(source, NULL);
        snprintf(want, sizeof want, "%s/data/%s/train", root, set);
        CHECK_MSG(strcmp(config.data.train, want) == 0, "%s: train = %s", names[i],
                  config.data.train);
        snprintf(want, sizeof want, "%s/runs/%s/%s", root, set, names[i]);
        CHECK_MSG(strcmp(config.output.run_dir, want) == 0, "%s: run_dir = %s", names[i],
                  config.output.run_dir);
        if (i > 0) {
            CHECK(config.model.bn_mode == MT_BN_INFERENCE);
            /* ../shared beside the repository */
            char *slash = strrchr(root, '/');
            if (slash) *slash = '\0';
            snprintf(want, sizeof want, "%s/shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5",
                     root);
            CHECK_MSG(strcmp(config.model.weights, want) == 0, "%s: weights = %s", names[i],
                      config.model.weights);
        } else {
            CHECK(config.model.weights[0] == '\0');
        }
        if (i == 2) {
            CHECK(config.model.fine_tune_at == 100);
            snprintf(want, sizeof want, "runs/%s/frozen/%s.safetensors", set, frozen_checkpoint);
            CHECK_MSG(strstr(config.model.init_checkpoint, want) != NULL,
                      "%s: init_checkpoint = %s", set, config.model.init_checkpoint);
        }
        free(root);
    }
}

/* Every enum option reads its names from the enum's own table: each value's name parses to that
 * value in the config and comes back from mt_config_enum_name, and the modules' own names agree. */
static void test_enum_names(void) {
    int enum_options = 0;
    for (int i = 0; i < mt_config_option_count(); i++) {
        const mt_config_option *o = mt_config_option_at(i);
        if (o->type != MT_CONFIG_ENUM) continue;
        enum_options++;
        CHECK_MSG(o->names && o->names->count > 0, "[%s] %s has no name table", o->section, o->key);
        for (int v = 0; o->names && v < o->names->count; v++) {
            mt_train_config config;
            mt_config_defaults(&config);
            char set[128];
            snprintf(set, sizeof set, "%s.%s=%s", o->section, o->key, o->names->names[v]);
            EXPECT_OK(mt_config_set(&config, set));
            int got = *(const int *)((const char *)&config + o->offset);
            CHECK_MSG(got == v, "%s stored %d", set, got);
            CHECK(strcmp(mt_config_enum_name(o->section, o->key, v), o->names->names[v]) == 0);
        }
    }
    CHECK(enum_options >= 9);
    CHECK(strcmp(mt_train_mode_name(MT_TRAIN_FROZEN), "frozen") == 0);
    CHECK(strcmp(mt_optimizer_kind_name(MT_OPTIMIZER_ADAM), "adam") == 0);
    CHECK(strcmp(mt_lr_schedule_kind_name(MT_LR_STEP), "step") == 0);
    CHECK(strcmp(mt_enum_name(&mt_backend_kind_names, MT_BACKEND_KIND_CUDA), "cuda") == 0);
    CHECK(strcmp(mt_enum_name(&mt_bn_mode_names, 7), "?") == 0);
    int value = -1;
    CHECK(mt_enum_find(&mt_bn_mode_names, "Inference", &value) && value == MT_BN_INFERENCE);
    CHECK(!mt_enum_find(&mt_bn_mode_names, "infer", &value));
    char joined[64];
    CHECK(strcmp(mt_enum_join(&mt_train_mode_names, NULL, joined, sizeof joined),
                 "scratch, frozen or finetune") == 0);
    CHECK(strcmp(mt_enum_join(&mt_nan_policy_names, "|", joined, sizeof joined), "stop|skip") == 0);
    /* the error names the allowed values from the table */
    mt_train_config config;
    mt_config_defaults(&config);
    CHECK(mt_config_set(&config, "train.nan_policy=ignore") == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "not one of stop|skip") != NULL, "%s", mt_last_error());
}

int main(void) {
    strcpy(temp_dir, mt_test_make_temp_dir("config"));
    test_defaults();
    test_load_values();
    test_load_errors();
    test_round_trip();
    test_help();
    test_enum_names();
    test_shipped_configs("cats_vs_dogs", true, "best");
    test_shipped_configs("cats_vs_dogs_20pct", false, "last");
    mt_test_remove_tree(temp_dir);
    return mt_test_finish();
}
