/* Reading INI text into a config with inih: every error names the file, the line and the key;
 * nothing is half applied.
 *
 * Debian's inih (r55) is built without INI_HANDLER_LINENO and with INI_MAX_LINE 200, so the
 * handler learns no line number and long lines would be split silently. We therefore feed inih
 * through our own line reader (ini_parse_stream), which counts lines, rejects over-long lines with
 * a clear error, and checks [section] headers (inih reports no empty sections). Long values, such
 * as deep absolute paths in a checkpoint's config, are written as continuation lines (indented),
 * which inih passes to the handler as more pieces of the same key; the pieces are joined without
 * a separator and the value is parsed once complete. */
#include "config/config_internal.h"
#include "mobiletune/files.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

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
    if (!config_section_known(section))
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
    const mt_config_option *option = &config_options[st->pending];
    char why[256];
    if (!config_parse_value(option, st->pending_value, st->base_dir, &st->work, why, sizeof why))
        load_error(st, st->pending_line, MT_ERR_INVALID, "[%s] %s = %s: %s", option->section,
                   option->key, st->pending_value, why);
    else
        st->work.origin_line[st->pending] = st->pending_line;
    st->pending = -1;
}

static int handle_pair(void *user, const char *section, const char *key, const char *value) {
    load_state *st = user;
    if (st->status != MT_OK) return 0;
    int index = config_option_index(section, key);
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
        config_suggest(section, key, hint, sizeof hint);
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
    config_copy_text(st->pending_value, sizeof st->pending_value, value);
    return 1;
}

static mt_status load_text(mt_train_config *config, const char *text, const char *name,
                           const char *base_dir) {
    load_state *st = calloc(1, sizeof *st);
    if (!st) return MT_FAIL(MT_ERR_NOMEM, "%s: out of memory", name);
    st->work = *config;
    st->name = name;
    config_copy_text(st->base_dir, sizeof st->base_dir, base_dir);
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
        config_copy_text(st->work.source, sizeof st->work.source, name);
        *config = st->work;
    }
    free(st);
    return status;
}

mt_status mt_config_load_string(mt_train_config *config, const char *text, const char *name,
                                const char *base_dir) {
    char cwd[MT_CONFIG_PATH_MAX];
    config_current_dir(cwd, sizeof cwd);
    char base[MT_CONFIG_PATH_MAX];
    if (!base_dir) base_dir = cwd;
    if (!config_resolve_path(base_dir, cwd, base, sizeof base))
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
