/* The whole config as INI text (checkpoints, the run folder's config.ini), which ini_read.c reads
 * back to the same values. */
#include "config/config_internal.h"

#include "core/text_buffer.h"

#include <string.h>

/* Values longer than fit on one inih line continue on indented lines (see the top). */
enum { INI_PIECE = 150 };

mt_status mt_config_to_ini(const mt_train_config *config, char **text) {
    *text = NULL;
    mt_text_buffer b = {0};
    mt_text_buffer_append_string(&b, "; mobiletune configuration: every option, paths absolute\n");
    const char *section = "";
    char value[MT_CONFIG_PATH_MAX];
    for (int i = 0; i < config_option_count; i++) {
        const mt_config_option *option = &config_options[i];
        if (strcmp(section, option->section) != 0) {
            section = option->section;
            mt_text_buffer_printf(&b, "%s[%s]\n", i > 0 ? "\n" : "", section);
        }
        mt_status status = mt_config_value_text(config, option, value, sizeof value);
        if (status != MT_OK) {
            mt_text_buffer_free(&b);
            return status;
        }
        size_t len = strlen(value);
        size_t piece = len;
        /* Split only between two non-space characters, so no space is lost to trimming. */
        if (piece > INI_PIECE) {
            piece = INI_PIECE;
            while (piece > 1 && (value[piece] == ' ' || value[piece - 1] == ' '))
                piece--;
        }
        mt_text_buffer_printf(&b, "%s = %.*s\n", option->key, (int)piece, value);
        for (size_t at = piece; at < len;) {
            size_t n = len - at;
            if (n > INI_PIECE) {
                n = INI_PIECE;
                while (n > 1 && (value[at + n] == ' ' || value[at + n - 1] == ' '))
                    n--;
            }
            mt_text_buffer_printf(&b, "    %.*s\n", (int)n, value + at);
            at += n;
        }
    }
    *text = mt_text_buffer_take(&b, NULL);
    if (!*text) return MT_FAIL(MT_ERR_NOMEM, "config text: out of memory");
    return MT_OK;
}
