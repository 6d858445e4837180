/* A small option parser driven by a table of cli_option, so that what a command accepts and
 * what its --help prints cannot drift apart. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const cli_option *find_option(const cli_spec *spec, const char *name, size_t length) {
    for (size_t i = 0; i < spec->option_count; i++)
        if (strlen(spec->options[i].name) == length &&
            strncmp(spec->options[i].name, name, length) == 0)
            return &spec->options[i];
    return NULL;
}

static mt_status set_value(const cli_spec *spec, const cli_option *o, const char *text) {
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case CLI_INT: {
        long v = strtol(text, &end, 10);
        if (errno || end == text || *end || v < INT_MIN || v > INT_MAX)
            return MT_FAIL(MT_ERR_INVALID, "--%s wants an integer, got '%s'", o->name, text);
        *(int *)o->value = (int)v;
        return MT_OK;
    }
    case CLI_FLOAT: {
        float v = strtof(text, &end);
        if (errno || end == text || *end || !isfinite(v))
            return MT_FAIL(MT_ERR_INVALID, "--%s wants a number, got '%s'", o->name, text);
        *(float *)o->value = v;
        return MT_OK;
    }
    case CLI_STRING:
        *(const char **)o->value = text;
        return MT_OK;
    case CLI_FLAG:
        break;
    }
    return MT_FAIL(MT_ERR_INTERNAL, "%s: option --%s has no value kind", spec->command, o->name);
}

mt_status cli_parse(const cli_spec *spec, int argc, char **argv, char ***positional,
                    int *positional_count) {
    *positional = calloc((size_t)(argc > 0 ? argc : 1), sizeof **positional);
    *positional_count = 0;
    if (!*positional) return MT_FAIL(MT_ERR_NOMEM, "out of memory parsing arguments");
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || arg[0] != '-' || arg[1] == '\0') {
            if (!spec->positional)
                return MT_FAIL(MT_ERR_INVALID, "unexpected argument '%s' (see --help)", arg);
            (*positional)[(*positional_count)++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            cli_print_help(spec, stdout);
            return MT_END;
        }
        if (arg[1] != '-')
            return MT_FAIL(MT_ERR_INVALID, "unknown option '%s' (options are long: see --help)",
                           arg);
        const char *name = arg + 2;
        const char *equals = strchr(name, '=');
        size_t length = equals ? (size_t)(equals - name) : strlen(name);
        const cli_option *o = find_option(spec, name, length);
        if (!o)
            return MT_FAIL(MT_ERR_INVALID, "unknown option '--%.*s' (see --help)", (int)length,
                           name);
        if (o->kind == CLI_FLAG) {
            if (equals) return MT_FAIL(MT_ERR_INVALID, "--%s takes no value", o->name);
            *(bool *)o->value = true;
            continue;
        }
        const char *value = equals ? equals + 1 : NULL;
        if (!value) {
            if (i + 1 >= argc)
                return MT_FAIL(MT_ERR_INVALID, "--%s needs a value (%s)", o->name, o->metavar);
            value = argv[++i];
        }
        MT_TRY(set_value(spec, o, value));
    }
    return MT_OK;
}

void cli_print_help(const cli_spec *spec, FILE *out) {
    fprintf(out, "usage: mobiletune %s %s\n\n%s\n\noptions:\n", spec->command, spec->usage,
            spec->description);
    for (size_t i = 0; i < spec->option_count; i++) {
        const cli_option *o = &spec->options[i];
        char left[64];
        if (o->kind == CLI_FLAG)
            snprintf(left, sizeof left, "--%s", o->name);
        else
            snprintf(left, sizeof left, "--%s %s", o->name, o->metavar);
        fprintf(out, "  %-24s %s", left, o->help);
        switch (o->kind) {
        case CLI_INT:
            fprintf(out, " (default %d)", *(const int *)o->value);
            break;
        case CLI_FLOAT:
            fprintf(out, " (default %g)", (double)*(const float *)o->value);
            break;
        case CLI_STRING:
            if (*(const char *const *)o->value)
                fprintf(out, " (default %s)", *(const char *const *)o->value);
            break;
        case CLI_FLAG:
            break;
        }
        fputc('\n', out);
    }
    fprintf(out, "  %-24s %s\n", "--help", "print this help");
}

int cli_fail(const char *command, mt_status status) {
    fprintf(stderr, "mobiletune %s: %s\n", command,
            mt_last_error()[0] ? mt_last_error() : mt_status_name(status));
    return status == MT_ERR_INVALID ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
}

const char *cli_thousands(size_t value, char *buf, size_t size) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%zu", value);
    size_t at = 0;
    for (int i = 0; i < n && at + 2 < size; i++) {
        if (i > 0 && (n - i) % 3 == 0) buf[at++] = ',';
        buf[at++] = digits[i];
    }
    buf[at] = '\0';
    return buf;
}
