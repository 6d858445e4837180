/* One option's value between text and its field in mt_train_config: parsing with the table's
 * type, range and allowed values, the text the INI writes back, and the defaults. */
#include "config/config_internal.h"

#include <errno.h>
#include <math.h>
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

/* Parse `text` for `option` into the field at `config`; on failure a reason in `why`. */
bool config_parse_value(const mt_config_option *option, const char *text, const char *base_dir,
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
            for (int i = 0; config_allowed_entry(option->allowed, i, entry, sizeof entry); i++)
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
        for (int i = 0; config_allowed_entry(option->allowed, i, entry, sizeof entry); i++) {
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
        if (!config_resolve_path(text, base_dir, field, option->size)) {
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
        if (!config_allowed_entry(option->allowed, *(const int *)field, entry, sizeof entry))
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
    int i = config_option_index(section, key);
    if (i < 0 || config_options[i].type != MT_CONFIG_ENUM) return "?";
    if (!config_allowed_entry(config_options[i].allowed, value, names[i], sizeof names[i]))
        return "?";
    return names[i];
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
