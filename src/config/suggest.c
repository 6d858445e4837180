/* "did you mean ...?" for an unknown key or command-line option: a few aliases from other
 * trainers, else the nearest name by edit distance (the same section preferred). */
#include "config/config_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return SIZE_MAX;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diagonal + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diagonal = up;
        }
    }
    return row[lb];
}

/* " (did you mean [train] epochs?)" or "" into buffer. */
void config_suggest(const char *section, const char *key, char *buffer, size_t capacity) {
    /* Names from other trainers that are too far from ours for the edit distance. */
    static const char *const aliases[][3] = {
        {"lr", "optimizer", "learning_rate"}, {"batch", "data", "batch_size"},
        {"eps", "optimizer", "epsilon"},      {"wd", "optimizer", "weight_decay"},
        {"optimizer", "optimizer", "name"},   {"width", "model", "alpha"},
        {"num_classes", "model", "classes"},  {"image_size", "model", "input_size"},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        if (strcmp(key, aliases[i][0]) == 0) {
            snprintf(buffer, capacity, " (did you mean [%s] %s?)", aliases[i][1], aliases[i][2]);
            return;
        }
    }
    buffer[0] = '\0';
    int best = config_nearest(key, section, config_options, config_option_count);
    if (best >= 0)
        snprintf(buffer, capacity, " (did you mean [%s] %s?)", config_options[best].section,
                 config_options[best].key);
}

int config_nearest(const char *key, const char *section, const mt_config_option *rows, int count) {
    int best = -1;
    size_t best_distance = SIZE_MAX;
    for (int i = 0; i < count; i++) {
        size_t d = edit_distance(key, rows[i].key);
        /* prefer the same section */
        if (section && (!rows[i].section || strcmp(rows[i].section, section) != 0)) d += 1;
        if (d < best_distance) best_distance = d, best = i;
    }
    size_t limit = strlen(key) / 3 + 1;
    if (limit < 2) limit = 2;
    return best >= 0 && best_distance <= limit ? best : -1;
}
