/* --set section.key=value: one override on top of the file, relative paths against the current
 * directory. */
#include "config/config_internal.h"

#include <stdio.h>
#include <string.h>

mt_status mt_config_set(mt_train_config *config, const char *assignment) {
    const char *equals = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!equals || !dot || dot > equals)
        return MT_FAIL(MT_ERR_INVALID, "--set %s: expected section.key=value", assignment);
    char section[64], key[64];
    size_t section_len = (size_t)(dot - assignment), key_len = (size_t)(equals - dot - 1);
    if (section_len == 0 || section_len >= sizeof section || key_len == 0 || key_len >= sizeof key)
        return MT_FAIL(MT_ERR_INVALID, "--set %s: expected section.key=value", assignment);
    memcpy(section, assignment, section_len);
    section[section_len] = '\0';
    memcpy(key, dot + 1, key_len);
    key[key_len] = '\0';
    const char *value = equals + 1;
    if (!config_section_known(section))
        return MT_FAIL(MT_ERR_INVALID,
                       "--set %s: unknown section '%s': the sections are data, model, optimizer, "
                       "train and output",
                       assignment, section);
    int index = config_option_index(section, key);
    if (index < 0) {
        char hint[128];
        config_suggest(section, key, hint, sizeof hint);
        return MT_FAIL(MT_ERR_INVALID, "--set %s: unknown key '%s' in [%s]%s", assignment, key,
                       section, hint);
    }
    char cwd[MT_CONFIG_PATH_MAX], why[256];
    config_current_dir(cwd, sizeof cwd);
    mt_train_config work = *config;
    if (!config_parse_value(&config_options[index], value, cwd, &work, why, sizeof why))
        return MT_FAIL(MT_ERR_INVALID, "--set %s: [%s] %s = %s: %s", assignment, section, key,
                       value, why);
    work.origin_line[index] = -1;
    *config = work;
    return MT_OK;
}
