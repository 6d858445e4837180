/* The names of an enum's values: one table per enum, defined next to the code that owns the enum
 * (model.h's training and BN modes, optimizer.h's optimizers and schedules, ops.h's backends,
 * image.h's resize modes, config.h's own), so that the config, every command line, the help texts
 * and the messages spell a value the same way. */
#ifndef MOBILETUNE_ENUM_NAMES_H
#define MOBILETUNE_ENUM_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_enum_names {
    const char *const *names; /* by value: names[v] spells value v; 0 .. count-1 */
    int count;
} mt_enum_names;

/* An mt_enum_names over a static array (written with designated initializers by enum value). */
#define MT_ENUM_NAMES(array)                                                                       \
    { .names = (array), .count = (int)(sizeof(array) / sizeof((array)[0])) }

/* The name of `value`, or "?" when it is not a value of the enum. */
const char *mt_enum_name(const mt_enum_names *names, int value);

/* The value whose name is `text`, ignoring case (as the config always has); false when none. */
bool mt_enum_find(const mt_enum_names *names, const char *text, int *value);

/* The names joined by `separator` ("a|b|c", or "a, b or c" with separator NULL) into buffer, cut
 * to fit; returns buffer. */
const char *mt_enum_join(const mt_enum_names *names, const char *separator, char *buffer,
                         size_t capacity);

#ifdef __cplusplus
}
#endif
#endif
