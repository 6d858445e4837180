/* The checks that need every option at once: paths that must exist, options that must agree.
 * Errors say where the value came from (file and line, --set, or the default). */
#include "config/config_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* "file:12: [model] weights = x" / "--set model.weights=x" / "default [model] weights = x" */
static void describe_origin(const mt_train_config *config, int index, char *buffer,
                            size_t capacity) {
    char value[MT_CONFIG_PATH_MAX];
    if (mt_config_value_text(config, &config_options[index], value, sizeof value) != MT_OK)
        strcpy(value, "?");
    int line = config->origin_line[index];
    if (line > 0)
        snprintf(buffer, capacity, "%s:%d: [%s] %s = %s", config->source, line,
                 config_options[index].section, config_options[index].key, value);
    else if (line < 0)
        snprintf(buffer, capacity, "--set %s.%s=%s", config_options[index].section,
                 config_options[index].key, value);
    else
        snprintf(buffer, capacity, "[%s] %s = %s (the default)", config_options[index].section,
                 config_options[index].key, value);
}

mt_status mt_config_check(const mt_train_config *config) {
    char where[2 * MT_CONFIG_PATH_MAX + 128];
    for (int i = 0; i < config_option_count; i++) {
        const mt_config_option *option = &config_options[i];
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
        describe_origin(config, config_option_index("optimizer", "warmup_steps"), where,
                        sizeof where);
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: warmup_epochs = %g is also set; give warmup in epochs or in steps, "
                       "not both",
                       where, config->optimizer.warmup_epochs);
    }
    const bool reduced = config->train.precision == MT_PRECISION_BF16 ||
                         config->train.precision == MT_PRECISION_FP16;
    if (reduced && config->train.backend == MT_CONFIG_BACKEND_CPU) {
        describe_origin(config, config_option_index("train", "precision"), where, sizeof where);
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: the cpu backend (oneDNN) computes in fp32 only; set train.backend = "
                       "cuda for bf16/fp16 training (or reference, which emulates it slowly), or "
                       "train.precision = fp32",
                       where);
    }
    if (config->optimizer.nesterov && config->optimizer.name != MT_OPTIMIZER_SGD) {
        describe_origin(config, config_option_index("optimizer", "nesterov"), where, sizeof where);
        return MT_FAIL(MT_ERR_INVALID, "%s: nesterov applies to sgd only", where);
    }
    return MT_OK;
}
