/* The command-line parser of every program (command_line.h): the rows are the config's option
 * rows and the values go through the config's own parser (value.c), so a command's option and a
 * config key accept, refuse and describe values the same way. */
#include "config/command_line.h"

#include "config/config_internal.h"

#include <stdlib.h>
#include <string.h>

static const mt_config_option *find_option(const cli_spec *spec, const char *name, size_t length) {
    for (size_t i = 0; i < spec->option_count; i++)
        if (strlen(spec->options[i].key) == length &&
            strncmp(spec->options[i].key, name, length) == 0)
            return &spec->options[i];
    return NULL;
}

static mt_status unknown_option(const cli_spec *spec, const char *name, size_t length) {
    char key[64];
    snprintf(key, sizeof key, "%.*s", (int)length, name);
    int near = config_nearest(key, NULL, spec->options, (int)spec->option_count);
    if (near >= 0)
        return MT_FAIL(MT_ERR_INVALID, "unknown option '--%s' (did you mean --%s? see --help)", key,
                       spec->options[near].key);
    return MT_FAIL(MT_ERR_INVALID, "unknown option '--%s' (see --help)", key);
}

static void set_flag(const mt_config_option *o, void *args) {
    int value = o->flags & MT_CONFIG_CLEARS ? 0 : 1;
    void *field = (char *)args + o->offset;
    if (o->size == sizeof(int))
        *(int *)field = value;
    else
        *(bool *)field = value;
}

mt_status cli_parse(const cli_spec *spec, void *args, int argc, char **argv, char ***positional,
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
            cli_print_help(spec, args, stdout);
            return MT_END;
        }
        if (arg[1] != '-')
            return MT_FAIL(MT_ERR_INVALID, "unknown option '%s' (options are long: see --help)",
                           arg);
        const char *name = arg + 2;
        const char *equals = strchr(name, '=');
        size_t length = equals ? (size_t)(equals - name) : strlen(name);
        const mt_config_option *o = find_option(spec, name, length);
        if (!o) return unknown_option(spec, name, length);
        if (o->type == MT_CONFIG_FLAG) {
            if (equals) return MT_FAIL(MT_ERR_INVALID, "--%s takes no value", o->key);
            set_flag(o, args);
            continue;
        }
        const char *value = equals ? equals + 1 : NULL;
        if (!value) {
            if (i + 1 >= argc)
                return MT_FAIL(MT_ERR_INVALID, "--%s needs a value (%s)", o->key,
                               o->metavar ? o->metavar : "see --help");
            value = argv[++i];
        }
        char why[256];
        if (config_parse_value(o, value, ".", args, why, sizeof why)) continue;
        /* numbers bare, words quoted: "--batch-size 0: ...", "--format 'pb': ..." */
        if (o->type == MT_CONFIG_INT || o->type == MT_CONFIG_FLOAT)
            return MT_FAIL(MT_ERR_INVALID, "--%s %s: %s", o->key, value, why);
        return MT_FAIL(MT_ERR_INVALID, "--%s '%s': %s", o->key, value, why);
    }
    return MT_OK;
}

/* `text` from column `indent` on, wrapped at spaces before column `width`. */
static void print_wrapped(FILE *out, const char *text, int indent, int width) {
    int column = indent;
    while (*text) {
        int word = (int)strcspn(text, " ");
        if (column > indent && column + 1 + word > width) {
            fprintf(out, "\n%*s", indent, "");
            column = indent;
        } else if (column > indent) {
            fputc(' ', out);
            column++;
        }
        fprintf(out, "%.*s", word, text);
        column += word;
        text += word;
        while (*text == ' ')
            text++;
    }
    fputc('\n', out);
}

void cli_print_help(const cli_spec *spec, const void *args, FILE *out) {
    fprintf(out, "usage: %s %s\n\n%s\n", spec->program, spec->usage, spec->description);
    if (spec->option_count > 0) fprintf(out, "\noptions:\n");
    for (size_t i = 0; i < spec->option_count; i++) {
        const mt_config_option *o = &spec->options[i];
        char left[64], values[160] = "", value[256] = "";
        if (o->type == MT_CONFIG_FLAG)
            snprintf(left, sizeof left, "--%s", o->key);
        else
            snprintf(left, sizeof left, "--%s %s", o->key, o->metavar ? o->metavar : "VALUE");
        /* what it takes: the enum's names, or the range when the row has one */
        if (o->type == MT_CONFIG_ENUM || o->min != 0 || o->max != 0)
            config_describe_values(o, values, sizeof values);
        if (!args || o->type == MT_CONFIG_FLAG || o->type == MT_CONFIG_TEXT_LIST ||
            o->flags & MT_CONFIG_HIDE_DEFAULT ||
            config_value_text(o, args, value, sizeof value) != MT_OK)
            value[0] = '\0';
        char line[1024];
        int n = snprintf(line, sizeof line, "%s", o->help);
        if (values[0] && value[0])
            snprintf(line + n, sizeof line - (size_t)n, " (%s; default %s)", values, value);
        else if (values[0])
            snprintf(line + n, sizeof line - (size_t)n, " (%s)", values);
        else if (value[0])
            snprintf(line + n, sizeof line - (size_t)n, " (default %s)", value);
        if (strlen(left) > 24)
            fprintf(out, "  %s\n%*s", left, 27, "");
        else
            fprintf(out, "  %-24s ", left);
        print_wrapped(out, line, 27, 100);
    }
    fprintf(out, "%s  %-24s %s\n", spec->option_count > 0 ? "" : "\noptions:\n", "--help",
            "print this help");
    if (spec->epilogue) fprintf(out, "\n%s", spec->epilogue);
    if (spec->print_more) spec->print_more(out);
}
