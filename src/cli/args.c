/* What every command shares besides the option parser (config/command_line.c): error
 * reporting, number formatting and freeing class names. */
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"

int cli_fail(const char *command, mt_status status) {
    fprintf(stderr, "mobiletune %s: %s\n", command,
            mt_last_error()[0] ? mt_last_error() : mt_status_name(status));
    return status == MT_ERR_INVALID ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
}

void cli_free_names(char **names, int count) {
    for (int i = 0; names && i < count; i++) free(names[i]);
    free(names);
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
