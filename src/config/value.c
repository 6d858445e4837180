/* One option's value between text and its field in mt_train_config: parsing with the table's
 * type, range and allowed values, the text the INI writes back, and the defaults. */
#include "config/config_internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void config_copy_text(char *dst, size_t capacity, const char *src) {
    size_t n = strlen(src);
    if (n >= capacity) n = capacity - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The n-th ('|'-separated) entry of an allowed list into buffer; false past the end. */
bool config_allowed_entry(const char *allowed, int n, char *buffer, size_t capacity) {
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

/* "[model] alpha" for config options, "--size" for command-line ones (in internal errors). */
static void option_label(const mt_config_option *option, char *buffer, size_t capacity) {
    if (option->section)
        snprintf(buffer, capacity, "[%s] %s", option->section, option->key);
    else
        snprintf(buffer, capacity, "--%s", option->key);
}

bool config_parse_value(const mt_config_option *option, const char *text, const char *base_dir,
                        void *base, char *why, size_t why_capacity) {
    void *field = (char *)base + option->offset;
    switch (option->type) {
    case MT_CONFIG_INT: {
        char *end = NULL;
        errno = 0;
        long long value = strtoll(text, &end, 10);
        if (text[0] == '\0' || *end != '\0' || errno == ERANGE) {
            snprintf(why, why_capacity, "not an integer");
            return false;
        }
        /* min = max = 0: no range of its own (command lines), only the field's */
        bool ranged = option->min != 0 || option->max != 0;
        double min = ranged                            ? option->min
                     : option->size == sizeof(int64_t) ? (double)INT64_MIN
                                                       : INT_MIN;
        double max = ranged                            ? option->max
                     : option->size == sizeof(int64_t) ? (double)INT64_MAX
                                                       : INT_MAX;
        if ((double)value < min || (double)value > max) {
            snprintf(why, why_capacity, "out of range [%.0f, %.0f]", min, max);
            return false;
        }
        if (option->multiple_of > 0 && value % option->multiple_of != 0) {
            snprintf(why, why_capacity, "not a multiple of %d", option->multiple_of);
            return false;
        }
        if (option->size == sizeof(int64_t))
            *(int64_t *)field = (int64_t)value;
        else
            *(int *)field = (int)value; /* the range is within int: checked by the tests */
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
            for (int i = 0; config_allowed_entry(option->allowed, i, entry, sizeof entry); i++)
                if (fabs(strtod(entry, NULL) - value) <= 1e-9 * fabs(value)) found = true;
            if (!found) {
                snprintf(why, why_capacity, "not one of %s", option->allowed);
                return false;
            }
        } else if ((option->min != 0 || option->max != 0) &&
                   (value < option->min || value > option->max ||
                    (option->flags & MT_CONFIG_ABOVE_MIN && value == option->min) ||
                    (option->flags & MT_CONFIG_BELOW_MAX && value == option->max))) {
            snprintf(why, why_capacity, "out of range %c%g, %g%c",
                     option->flags & MT_CONFIG_ABOVE_MIN ? '(' : '[', option->min, option->max,
                     option->flags & MT_CONFIG_BELOW_MAX ? ')' : ']');
            return false;
        }
        if (option->size == sizeof(float))
            *(float *)field = (float)value;
        else
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
        int value;
        if (mt_enum_find(option->names, text, &value)) {
            *(int *)field = value;
            return true;
        }
        char names[160];
        snprintf(why, why_capacity, "not one of %s",
                 mt_enum_join(option->names, "|", names, sizeof names));
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
        if (!config_resolve_path(text, base_dir, field, option->size)) {
            snprintf(why, why_capacity, "path longer than %zu characters", option->size - 1);
            return false;
        }
        return true;
    case MT_CONFIG_TEXT:
        *(const char **)field = text;
        return true;
    case MT_CONFIG_TEXT_LIST: {
        mt_config_text_list *list = field;
        if (list->count >= list->capacity) {
            snprintf(why, why_capacity, "given more than %d times", list->capacity);
            return false;
        }
        list->items[list->count++] = text;
        return true;
    }
    case MT_CONFIG_FLAG:
        break;
    }
    char label[96];
    option_label(option, label, sizeof label);
    snprintf(why, why_capacity, "%s: takes no value", label);
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

mt_status config_value_text(const mt_config_option *option, const void *base, char *buffer,
                            size_t capacity) {
    const void *field = (const char *)base + option->offset;
    char label[96];
    option_label(option, label, sizeof label);
    int n = 0;
    switch (option->type) {
    case MT_CONFIG_INT:
        if (option->size == sizeof(int64_t))
            n = snprintf(buffer, capacity, "%lld", (long long)*(const int64_t *)field);
        else
            n = snprintf(buffer, capacity, "%d", *(const int *)field);
        break;
    case MT_CONFIG_FLOAT:
        format_double(option->size == sizeof(float) ? (double)*(const float *)field
                                                    : *(const double *)field,
                      buffer, capacity);
        n = (int)strlen(buffer);
        break;
    case MT_CONFIG_BOOL:
        n = snprintf(buffer, capacity, "%s", *(const bool *)field ? "true" : "false");
        break;
    case MT_CONFIG_FLAG:
        if (option->size == sizeof(int))
            n = snprintf(buffer, capacity, "%d", *(const int *)field);
        else
            n = snprintf(buffer, capacity, "%s", *(const bool *)field ? "true" : "false");
        break;
    case MT_CONFIG_ENUM: {
        int value = *(const int *)field;
        if (value < 0 || value >= option->names->count)
            return MT_FAIL(MT_ERR_INTERNAL, "%s holds %d, not a value of its enum", label, value);
        n = snprintf(buffer, capacity, "%s", mt_enum_name(option->names, value));
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
    case MT_CONFIG_TEXT: {
        const char *text = *(const char *const *)field;
        n = snprintf(buffer, capacity, "%s", text ? text : "");
        break;
    }
    case MT_CONFIG_TEXT_LIST:
        n = snprintf(buffer, capacity, "%d given", ((const mt_config_text_list *)field)->count);
        break;
    }
    if (n < 0 || (size_t)n >= capacity)
        return MT_FAIL(MT_ERR_INVALID, "%s: value longer than %zu characters", label, capacity - 1);
    return MT_OK;
}

mt_status mt_config_value_text(const mt_train_config *config, const mt_config_option *option,
                               char *buffer, size_t capacity) {
    return config_value_text(option, config, buffer, capacity);
}

const char *mt_config_enum_name(const char *section, const char *key, int value) {
    int i = config_option_index(section, key);
    if (i < 0 || config_options[i].type != MT_CONFIG_ENUM) return "?";
    return mt_enum_name(config_options[i].names, value);
}

void mt_config_defaults(mt_train_config *config) {
    memset(config, 0, sizeof *config);
    char cwd[MT_CONFIG_PATH_MAX];
    config_current_dir(cwd, sizeof cwd);
    for (int i = 0; i < config_option_count; i++) {
        char why[128];
        bool ok = config_parse_value(&config_options[i], config_options[i].default_text, cwd,
                                     config, why, sizeof why);
        MT_ASSERT(ok); /* the table's defaults are checked by the tests */
    }
    config_copy_text(config->source, sizeof config->source, "(defaults)");
}
