/* The option table as text: `mobiletune train --help` and docs/config.md. */
#include "config/config_internal.h"

#include <stdio.h>
#include <string.h>

void config_describe_values(const mt_config_option *option, char *buffer, size_t capacity) {
    switch (option->type) {
    case MT_CONFIG_INT:
        if (option->multiple_of > 0)
            snprintf(buffer, capacity, "%.0f..%.0f, multiple of %d", option->min, option->max,
                     option->multiple_of);
        else if (option->max >= 9.2e18) /* INT64_MAX: no upper limit worth printing */
            snprintf(buffer, capacity, "%.0f or more", option->min);
        else
            snprintf(buffer, capacity, "%.0f..%.0f", option->min, option->max);
        break;
    case MT_CONFIG_FLOAT:
        if (option->allowed)
            snprintf(buffer, capacity, "%s", option->allowed);
        else if (option->flags & MT_CONFIG_ABOVE_MIN)
            snprintf(buffer, capacity, "above %g, %s %g", option->min,
                     option->flags & MT_CONFIG_BELOW_MAX ? "below" : "at most", option->max);
        else if (option->flags & MT_CONFIG_BELOW_MAX)
            snprintf(buffer, capacity, "at least %g, below %g", option->min, option->max);
        else
            snprintf(buffer, capacity, "%g..%g", option->min, option->max);
        break;
    case MT_CONFIG_BOOL:
        snprintf(buffer, capacity, "true|false");
        break;
    case MT_CONFIG_ENUM:
        mt_enum_join(option->names, "|", buffer, capacity);
        break;
    case MT_CONFIG_STRING:
    case MT_CONFIG_TEXT:
    case MT_CONFIG_TEXT_LIST:
        snprintf(buffer, capacity, "text");
        break;
    case MT_CONFIG_FLAG:
        buffer[0] = '\0';
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
    for (int i = 0; i < config_option_count; i++) {
        const mt_config_option *option = &config_options[i];
        if (strcmp(section, option->section) != 0) {
            section = option->section;
            fprintf(out, "\n[%s]\n", section);
        }
        config_describe_values(option, values, sizeof values);
        fprintf(out, "  %-26s %-6s default %-12s (%s)\n      %s\n", option->key,
                config_type_name(option->type), option->default_text, values, option->help);
    }
}

void mt_config_write_markdown(FILE *out) {
    fprintf(out,
            "# Configuration options\n\n"
            "<!-- Generated from the option table in src/config/option_table.c; do not edit. "
            "Regenerate "
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
    for (int i = 0; i < config_option_count; i++) {
        const mt_config_option *option = &config_options[i];
        if (strcmp(section, option->section) != 0) {
            section = option->section;
            fprintf(out,
                    "\n## [%s]\n\n| key | type | default | values | meaning |\n"
                    "|---|---|---|---|---|\n",
                    section);
        }
        config_describe_values(option, values, sizeof values);
        fprintf(out, "| `%s` | %s | `%s` | %s | %s |\n", option->key,
                config_type_name(option->type), option->default_text, values, option->help);
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
