/* What the files of src/config share: the option table (option_table.c) and the helpers each
 * file provides to the others. The public interface is include/mobiletune/config.h. */
#ifndef MOBILETUNE_CONFIG_INTERNAL_H
#define MOBILETUNE_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "mobiletune/config.h"

/* option_table.c */
extern const mt_config_option config_options[];
extern const int config_option_count;
/* The table index of [section] key, or -1. */
int config_option_index(const char *section, const char *key);
bool config_section_known(const char *section);
const char *config_type_name(mt_config_type type);

/* value.c */
/* Copy src into dst, cut to fit (always terminated). */
void config_copy_text(char *dst, size_t capacity, const char *src);
/* The n-th ('|'-separated) entry of an allowed list into buffer; false past the end. */
bool config_allowed_entry(const char *allowed, int n, char *buffer, size_t capacity);
/* Parse `text` for `option` into its field in the struct at `base` (an mt_train_config, or a
 * command's arguments; relative paths against base_dir); on failure false and the reason in
 * `why` ("out of range [1, 4096]"). */
bool config_parse_value(const mt_config_option *option, const char *text, const char *base_dir,
                        void *base, char *why, size_t why_capacity);
/* The value of `option` in the struct at `base` as text, as the INI spells it. */
mt_status config_value_text(const mt_config_option *option, const void *base, char *buffer,
                            size_t capacity);

/* help.c: the allowed values in words ("1..65536", "rmsprop|sgd|adam", "existing file or none"). */
void config_describe_values(const mt_config_option *option, char *buffer, size_t capacity);

/* suggest.c: " (did you mean [train] epochs?)" or "" into buffer. */
void config_suggest(const char *section, const char *key, char *buffer, size_t capacity);
/* The row of `rows` whose key is nearest to `key` (those in `section` preferred; NULL: any), or
 * -1 when none is near enough to be a typo of it. */
int config_nearest(const char *key, const char *section, const mt_config_option *rows, int count);

/* paths.c */
/* `value` made absolute against base_dir and cleaned lexically into out; false when too long. */
bool config_resolve_path(const char *value, const char *base_dir, char *out, size_t capacity);
/* The current directory (or "." when it cannot be named). */
void config_current_dir(char *buffer, size_t capacity);

#endif
