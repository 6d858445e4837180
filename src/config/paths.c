/* Paths in the config: made absolute against a base folder (the INI file's folder, or the current
 * directory for --set) and cleaned up lexically, without following symbolic links. */
#include "config/config_internal.h"

#include <string.h>
#include <stdio.h>
#include <unistd.h>

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

bool config_resolve_path(const char *value, const char *base_dir, char *out, size_t capacity) {
    char joined[2 * MT_CONFIG_PATH_MAX + 2];
    if (value[0] == '/') {
        config_copy_text(joined, sizeof joined, value);
    } else {
        int n = snprintf(joined, sizeof joined, "%s/%s", base_dir, value);
        if (n < 0 || (size_t)n >= sizeof joined) return false;
    }
    normalize_path(joined);
    if (strlen(joined) >= capacity) return false;
    strcpy(out, joined);
    return true;
}

void config_current_dir(char *buffer, size_t capacity) {
    if (!getcwd(buffer, capacity)) config_copy_text(buffer, capacity, ".");
}
