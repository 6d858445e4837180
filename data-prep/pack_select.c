/* Which listed files go where: the seeded, stratified --fraction and --split selection, the
 * splits of a pre-split input (its folders, and --test-from-val), and the --split text. A pure
 * function of the listing and the options, so a run selects the same files whatever --threads. */
#include "pack.h"

#include "core/splitmix64.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* round(n * f), half up; the epsilon keeps 0.1*10 = 0.99999... from rounding differently from
 * what a person computes. */
static size_t round_count(size_t n, double f) {
    double v = floor((double)n * f + 0.5 + 1e-9);
    if (v < 0) return 0;
    return v > (double)n ? n : (size_t)v;
}

static const char *const folder_split_names[PACK_FOLDER_COUNT] = {"train", "val", "test"};

mt_status pack_plan_folder_splits(const pack_input *in, pack_options *options) {
    options->folder_splits = in->split_folder_count > 0;
    if (!options->folder_splits) {
        if (options->test_from_val > 0)
            return MT_FAIL(MT_ERR_INVALID,
                           "--test-from-val applies to an input split into folders (train/, "
                           "validation/ ...), and %s is not one: use --split instead",
                           options->input);
        return MT_OK;
    }
    if (options->split_count > 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "%s is already split into folders (%s/ ...): leave out --split (each "
                       "folder becomes OUT/<split>; --test-from-val F makes a test split from "
                       "the validation folder)",
                       options->input, in->split_folders[PACK_FOLDER_TRAIN]);
    if (options->test_from_val > 0 && !in->split_folders[PACK_FOLDER_VAL][0])
        return MT_FAIL(MT_ERR_INVALID,
                       "--test-from-val: %s has no validation/ or val/ folder to take the test "
                       "split from",
                       options->input);
    if (options->test_from_val > 0 && in->split_folders[PACK_FOLDER_TEST][0])
        return MT_FAIL(MT_ERR_INVALID,
                       "--test-from-val: %s has a test/ folder already: leave out "
                       "--test-from-val to pack it as the test split",
                       options->input);
    options->split_count = 0;
    for (int k = 0; k < PACK_FOLDER_COUNT; k++) {
        bool present =
            in->split_folders[k][0] || (k == PACK_FOLDER_TEST && options->test_from_val > 0);
        if (!present) continue;
        pack_split_spec *spec = &options->splits[options->split_count++];
        snprintf(spec->name, sizeof spec->name, "%s", folder_split_names[k]);
        spec->fraction = 0; /* not used: the folders decide */
    }
    return MT_OK;
}

/* The position of split `name` in options->splits (-1: none). */
static int split_index(const pack_options *options, const char *name) {
    for (int s = 0; s < options->split_count; s++)
        if (strcmp(options->splits[s].name, name) == 0) return s;
    return -1;
}

/* One group of items (a class; for a pre-split input, a class within one split folder, -1 for
 * none) shuffled by its own seeded stream, cut to --fraction and given its splits. */
static void select_group(pack_input *in, const pack_options *options, int folder, int c,
                         size_t *members) {
    size_t n = 0;
    for (size_t i = 0; i < in->item_count; i++)
        if (in->items[i].label == (uint32_t)c && in->items[i].folder == folder) members[n++] = i;
    /* Fisher-Yates with a per-class stream, so adding a class leaves the others' splits; a split
     * folder has a stream of its own too */
    uint64_t state = options->seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(c + 1));
    if (folder >= 0) state ^= 0x9E3779B97F4A7C15ull * (uint64_t)(folder + 1);
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(mt_splitmix64_next(&state) % i);
        size_t t = members[i - 1];
        members[i - 1] = members[j];
        members[j] = t;
    }
    size_t kept = round_count(n, options->fraction);
    if (folder >= 0) {
        /* the folder's own split; the validation folder's first round(kept * test_from_val) of
         * the shuffle go to test */
        const int own = split_index(options, folder_split_names[folder]);
        const int test = split_index(options, "test");
        size_t to_test = folder == PACK_FOLDER_VAL && options->test_from_val > 0
                             ? round_count(kept, options->test_from_val)
                             : 0;
        for (size_t k = 0; k < kept; k++)
            in->items[members[k]].split = k < to_test ? test : own;
        return;
    }
    int split_count = options->split_count > 0 ? options->split_count : 1;
    double cumulative = 0;
    size_t begin = 0;
    for (int s = 0; s < split_count; s++) {
        cumulative += options->split_count > 0 ? options->splits[s].fraction : 1.0;
        size_t end = s == split_count - 1 ? kept : round_count(kept, cumulative);
        if (end < begin) end = begin;
        for (size_t k = begin; k < end; k++)
            in->items[members[k]].split = s;
        begin = end;
    }
}

void pack_input_select(pack_input *in, const pack_options *options) {
    size_t *members = malloc((in->item_count ? in->item_count : 1) * sizeof *members);
    MT_ASSERT(members);
    for (int c = 0; c < in->class_count; c++) {
        if (!options->folder_splits) {
            select_group(in, options, -1, c, members);
            continue;
        }
        for (int folder = 0; folder < PACK_FOLDER_COUNT; folder++)
            select_group(in, options, folder, c, members);
    }
    free(members);
}

mt_status pack_parse_split(const char *text, pack_options *options) {
    options->split_count = 0;
    double total = 0;
    const char *p = text;
    while (*p) {
        if (options->split_count == PACK_MAX_SPLITS)
            return MT_FAIL(MT_ERR_INVALID, "--split '%s': more than %d splits", text,
                           PACK_MAX_SPLITS);
        pack_split_spec *spec = &options->splits[options->split_count];
        const char *eq = strchr(p, '=');
        size_t name_length = eq ? (size_t)(eq - p) : 0;
        if (!eq || name_length == 0 || name_length >= sizeof spec->name)
            return MT_FAIL(MT_ERR_INVALID,
                           "--split '%s': want NAME=FRACTION,... (e.g. "
                           "train=0.8,val=0.1,test=0.1)",
                           text);
        memcpy(spec->name, p, name_length);
        spec->name[name_length] = '\0';
        for (size_t i = 0; i < name_length; i++) {
            char ch = spec->name[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
                return MT_FAIL(MT_ERR_INVALID,
                               "--split '%s': split name '%s' may use only "
                               "letters, digits, '_' and '-' (it becomes a folder name)",
                               text, spec->name);
        }
        for (int s = 0; s < options->split_count; s++)
            if (strcmp(options->splits[s].name, spec->name) == 0)
                return MT_FAIL(MT_ERR_INVALID, "--split '%s': split '%s' appears twice", text,
                               spec->name);
        char *end;
        errno = 0;
        spec->fraction = strtod(eq + 1, &end);
        if (end == eq + 1 || errno != 0 || !(spec->fraction >= 0) || spec->fraction > 1 ||
            (*end != ',' && *end != '\0'))
            return MT_FAIL(MT_ERR_INVALID,
                           "--split '%s': the fraction of '%s' must be a number "
                           "in 0..1",
                           text, spec->name);
        total += spec->fraction;
        options->split_count++;
        p = *end == ',' ? end + 1 : end;
    }
    if (options->split_count == 0)
        return MT_FAIL(MT_ERR_INVALID, "--split '%s': no splits given", text);
    if (fabs(total - 1.0) > 1e-6)
        return MT_FAIL(MT_ERR_INVALID,
                       "--split '%s': the fractions add up to %g, they must add "
                       "up to 1 (use --fraction to pack only part of the data)",
                       text, total);
    return MT_OK;
}
