/* Lookups in the enum-name tables of mobiletune/enum_names.h. */
#include "mobiletune/enum_names.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

const char *mt_enum_name(const mt_enum_names *names, int value) {
    return value >= 0 && value < names->count && names->names[value] ? names->names[value] : "?";
}

bool mt_enum_find(const mt_enum_names *names, const char *text, int *value) {
    for (int i = 0; text && i < names->count; i++)
        if (names->names[i] && strcasecmp(names->names[i], text) == 0) {
            *value = i;
            return true;
        }
    return false;
}

const char *mt_enum_join(const mt_enum_names *names, const char *separator, char *buffer,
                         size_t capacity) {
    size_t used = 0;
    buffer[0] = '\0';
    for (int i = 0; i < names->count && used < capacity; i++) {
        const char *between = i == 0                  ? ""
                              : separator             ? separator
                              : i == names->count - 1 ? " or "
                                                      : ", ";
        int n = snprintf(buffer + used, capacity - used, "%s%s", between, names->names[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    return buffer;
}
