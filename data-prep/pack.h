/* Private interface between the parts of mobiletune-pack: the input listing and split selection
 * (pack_input.c, pack_select.c), the run (pack_run.c) with its decode workers (pack_decode.h)
 * and ordered LMDB writer (pack_db.h), the output checks and skip report (pack_output.c),
 * info/verify (pack_inspect.c) and the command line (pack_main.c). docs/packing.md is the
 * user-facing text. */
#ifndef MOBILETUNE_PACK_H
#define MOBILETUNE_PACK_H

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/lmdb_check.h"
#include "mobiletune/image.h"
#include "mobiletune/record.h"
#include "mobiletune/status.h"

enum { PACK_MAX_SPLITS = 16 };

typedef struct pack_split_spec {
    char name[32];
    double fraction;
} pack_split_spec;

typedef struct pack_options {
    const char *input;  /* a folder of class subfolders, or a "path label" list file */
    const char *output; /* the LMDB folder (no --split) or the folder of split LMDBs */
    int size;
    mt_resize_mode resize;
    bool encoded;
    mt_decode_mode decode; /* --decode tf: full-size JPEG decode identical to TensorFlow's */
    int quality;
    int split_count; /* 0: one database, split "all" */
    pack_split_spec splits[PACK_MAX_SPLITS];
    const char *split_text; /* as given, for the options line */
    /* a pre-split INPUT (pack_input.split_folder_count > 0): a seeded stratified fraction of its
     * validation folder becomes the test split (0: none); pack_plan_folder_splits fills `splits`
     * with the folders' splits and sets `folder_splits` */
    double test_from_val;
    bool folder_splits;
    uint64_t seed;
    double fraction;
    int threads;
    const char *report; /* NULL: OUT/skipped.txt */
    bool force;
    size_t map_size; /* 0: estimated from the count */
    int progress;    /* -1 auto (TTY), 0 off, 1 on */
} pack_options;

/* One input file. */
typedef struct pack_item {
    char *path; /* as opened */
    char *name; /* as recorded: relative to the input folder or as written in the list */
    uint32_t label;
    int split;  /* index into options.splits; -1 when not selected */
    int folder; /* pre-split input: the split folder it came from (PACK_FOLDER_*), else -1 */
} pack_item;

/* The split folders a pre-split INPUT may hold, in output order; OUT/<name> each. */
enum { PACK_FOLDER_TRAIN = 0, PACK_FOLDER_VAL, PACK_FOLDER_TEST, PACK_FOLDER_COUNT };

/* A file dropped before decoding (a directory named x.jpg, a hidden file ...). */
typedef struct pack_skip {
    char *name;
    char *reason;
} pack_skip;

typedef struct pack_input {
    int class_count;
    char **class_names;
    /* INPUT's subfolders are splits (train/, validation/ or val/, test/), each of class folders:
     * the folder found per PACK_FOLDER_* ("" for none; "validation" or "val" for VAL) */
    int split_folder_count;
    char split_folders[PACK_FOLDER_COUNT][16];
    pack_item *items;
    size_t item_count;
    pack_skip *skips;
    size_t skip_count;
} pack_input;

/* List the input (folder or list file) into `in`: items ordered by class then name for a folder,
 * in file order for a list. */
mt_status pack_input_list(const char *input, pack_input *in);
void pack_input_free(pack_input *in);

/* A pre-split input: refuse --split, check --test-from-val, and set options->splits to the
 * folders' splits (train, val, test, as present; test also from --test-from-val). Otherwise
 * refuse --test-from-val. */
mt_status pack_plan_folder_splits(const pack_input *in, pack_options *options);

/* Assign each item a split (or -1) from the seeded stratified --fraction and --split rules; for
 * a pre-split input, from its folder (and --test-from-val), after --fraction per folder. */
void pack_input_select(pack_input *in, const pack_options *options);

/* Parse "train=0.8,val=0.1,test=0.1" into options->splits. */
mt_status pack_parse_split(const char *text, pack_options *options);

/* The whole packing run; prints progress and the summary. */
mt_status pack_run(const pack_options *options);

/* Remove a folder tree (nftw, no symlink following); MT_ERR_IO naming the first failure. */
mt_status pack_remove_tree(const char *path);

/* Remove the OUT.tmp-<pid> folders of killed runs next to `output` (only those holding nothing
 * but what a run writes). */
void pack_remove_stale_temps(const char *output);

/* Before anything is touched: OUT is not the input, inside it or holding it, and exists only
 * with --force and as a folder this program wrote; --report is no input and no other file. */
mt_status pack_check_output_paths(const pack_options *options, const pack_input *in);

/* Write the skip report (its first line marks it as this program's) and sync it. */
mt_status pack_write_report(const char *path, const char *input, const pack_skip *skips,
                            size_t count);

/* `mobiletune-pack info` / `verify` on a database folder or a folder of split databases. */
int pack_info_main(int argc, char **argv);
int pack_verify_main(int argc, char **argv);

#endif
