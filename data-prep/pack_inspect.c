/* `mobiletune-pack info` and `mobiletune-pack verify`: read a packed dataset (one LMDB folder, or
 * the folder of split LMDBs that --split writes) and print its metadata, or check every record
 * the way the loader would and more (key sequence, CRC, labels, counts, JPEG decodes). */
#include "pack.h"

#include "mobiletune/db_check.h"

#include "config/command_line.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { MAX_REPORTED_ERRORS = 20 };

static bool has_data_file(const char *folder) {
    char path[4200];
    int n = snprintf(path, sizeof path, "%s/data.mdb", folder);
    if (n < 0 || (size_t)n >= sizeof path) return false;
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The databases under `path`: itself, or its subfolders holding data.mdb (sorted). */
static mt_status find_databases(const char *path, char ***out, int *count) {
    *out = NULL;
    *count = 0;
    if (has_data_file(path)) {
        *out = malloc(sizeof(char *));
        if (!*out || !((*out)[0] = strdup(path))) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
        *count = 1;
        return MT_OK;
    }
    DIR *dir = opendir(path);
    if (!dir)
        return MT_FAIL(MT_ERR_IO, "%s: %s (give the folder mobiletune-pack wrote)", path,
                       strerror(errno));
    struct dirent *entry;
    char **list = NULL;
    int n = 0;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        char sub[4200];
        snprintf(sub, sizeof sub, "%s/%s", path, entry->d_name);
        if (!has_data_file(sub)) continue;
        char **grown = realloc(list, sizeof(char *) * (size_t)(n + 1));
        if (!grown || !(grown[n] = strdup(sub))) {
            free(grown ? grown : list);
            closedir(dir);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory");
        }
        list = grown;
        n++;
    }
    closedir(dir);
    if (n == 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: not a packed dataset: no data.mdb in it or in "
                       "its subfolders (pack one with mobiletune-pack INPUT OUT)",
                       path);
    qsort(list, (size_t)n, sizeof(char *), compare_names);
    *out = list;
    *count = n;
    return MT_OK;
}

static void free_list(char **list, int count) {
    for (int i = 0; i < count; i++)
        free(list[i]);
    free(list);
}

/* Read-only open; a read-only folder (no lock file possible) falls back to MDB_NOLOCK. */
static mt_status open_readonly(const char *path, mt_db_check_level level, MDB_env **env) {
    /* LMDB trusts the file it maps: its structure is checked by pread first (db_check.h), the
     * tree for info (even its one lookup follows page numbers), every page for verify, so a
     * corrupt file is reported and never ends the program with a signal. */
    char file[4200];
    snprintf(file, sizeof file, "%s/data.mdb", path);
    mt_db_summary summary;
    MT_TRY(mt_db_check(file, level, &summary));
    for (int attempt = 0; attempt < 2; attempt++) {
        LMDB_CHECK(mdb_env_create(env), path);
        unsigned flags = MDB_RDONLY | (attempt ? MDB_NOLOCK : 0);
        int rc = mdb_env_open(*env, path, flags, 0);
        if (rc == MDB_SUCCESS) return MT_OK;
        mdb_env_close(*env);
        *env = NULL;
        if (attempt == 1 || (rc != EACCES && rc != EROFS))
            return LMDB_FAIL(rc, "mdb_env_open", path);
    }
    return MT_OK;
}

static mt_status read_meta(const char *path, MDB_txn *txn, MDB_dbi dbi, mt_dataset_meta *meta) {
    MDB_val key = {.mv_size = strlen(MT_META_KEY), .mv_data = MT_META_KEY}, value;
    int rc = mdb_get(txn, dbi, &key, &value);
    if (rc == MDB_NOTFOUND)
        return MT_FAIL(MT_ERR_FORMAT,
                       "%s: no '%s' record: not a complete mobiletune dataset "
                       "(pack it again)",
                       path, MT_META_KEY);
    if (rc != MDB_SUCCESS) return LMDB_FAIL(rc, "mdb_get(meta)", path);
    mt_status status = mt_meta_parse(value.mv_data, value.mv_size, meta);
    if (status != MT_OK) return mt_error_context(status, "%s: key '%s'", path, MT_META_KEY);
    return MT_OK;
}

static mt_status info_one(const char *path) {
    MDB_env *env;
    MT_TRY(open_readonly(path, MT_DB_CHECK_TREE, &env));
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc != MDB_SUCCESS) {
        mdb_env_close(env);
        return LMDB_FAIL(rc, "mdb_txn_begin", path);
    }
    mt_dataset_meta meta = {0};
    mt_status status = MT_OK;
    rc = mdb_dbi_open(txn, NULL, 0, &dbi);
    if (rc != MDB_SUCCESS) status = LMDB_FAIL(rc, "mdb_dbi_open", path);
    if (status == MT_OK) status = read_meta(path, txn, dbi, &meta);
    if (status == MT_OK) {
        char file[4200];
        snprintf(file, sizeof file, "%s/data.mdb", path);
        struct stat st;
        long long file_bytes = stat(file, &st) == 0 ? (long long)st.st_size : -1;
        printf("%s\n", path);
        printf("  split       %s\n", meta.split);
        printf("  records     %llu\n", (unsigned long long)meta.record_count);
        printf("  image       %dx%dx%d (HxWxC), %s\n", meta.height, meta.width, meta.channels,
               meta.encoding == MT_ENCODING_JPEG ? "JPEG-encoded RGB" : "raw uint8 HWC RGB");
        printf("  mean (RGB)  %.3f %.3f %.3f\n", meta.mean[0], meta.mean[1], meta.mean[2]);
        printf("  std (RGB)   %.3f %.3f %.3f\n", meta.std[0], meta.std[1], meta.std[2]);
        printf("  classes     %d\n", meta.class_count);
        for (int c = 0; c < meta.class_count; c++)
            printf("    %-4d %-20s %llu\n", c, meta.class_names[c],
                   (unsigned long long)meta.class_counts[c]);
        printf("  options     %s\n", meta.options ? meta.options : "");
        printf("  data.mdb    %.1f MiB\n", file_bytes / (1024.0 * 1024.0));
    }
    mt_meta_free(&meta);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return status;
}

/* Every check on one database; returns the number of bad records (and prints each). */
static mt_status verify_one(const char *path, uint64_t *bad_out) {
    *bad_out = 0;
    MDB_env *env;
    MT_TRY(open_readonly(path, MT_DB_CHECK_ALL, &env));
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cursor = NULL;
    int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc != MDB_SUCCESS) {
        mdb_env_close(env);
        return LMDB_FAIL(rc, "mdb_txn_begin", path);
    }
    mt_dataset_meta meta = {0};
    uint64_t *counts = NULL;
    mt_status status = MT_OK;
    rc = mdb_dbi_open(txn, NULL, 0, &dbi);
    if (rc != MDB_SUCCESS) status = LMDB_FAIL(rc, "mdb_dbi_open", path);
    if (status == MT_OK) status = read_meta(path, txn, dbi, &meta);
    if (status == MT_OK) {
        counts = calloc((size_t)meta.class_count, sizeof *counts);
        if (!counts) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    if (status == MT_OK) {
        rc = mdb_cursor_open(txn, dbi, &cursor);
        if (rc != MDB_SUCCESS) status = LMDB_FAIL(rc, "mdb_cursor_open", path);
    }
    uint64_t index = 0, bad = 0;
    MDB_val key, value;
    int op = MDB_FIRST;
    while (status == MT_OK && (rc = mdb_cursor_get(cursor, &key, &value, op)) == MDB_SUCCESS) {
        op = MDB_NEXT;
        char name[64];
        size_t n = key.mv_size < sizeof name - 1 ? key.mv_size : sizeof name - 1;
        memcpy(name, key.mv_data, n);
        name[n] = '\0';
        if (key.mv_size == strlen(MT_META_KEY) && memcmp(key.mv_data, MT_META_KEY, n) == 0)
            continue;
        char expected[MT_RECORD_KEY_BYTES + 1];
        mt_record_key(index, expected);
        char problem[700] = "";
        mt_record record;
        if (key.mv_size != MT_RECORD_KEY_BYTES || memcmp(key.mv_data, expected, key.mv_size) != 0) {
            snprintf(problem, sizeof problem,
                     "unexpected key (expected %s next: a record is "
                     "missing or extra)",
                     expected);
        } else if (mt_record_parse(value.mv_data, value.mv_size, name, &record) != MT_OK) {
            snprintf(problem, sizeof problem, "%s", mt_last_error());
        } else if (record.label >= (uint32_t)meta.class_count) {
            snprintf(problem, sizeof problem, "label %u is not below the class count %d",
                     record.label, meta.class_count);
        } else if (record.height != meta.height || record.width != meta.width ||
                   record.channels != meta.channels || record.encoding != meta.encoding) {
            snprintf(problem, sizeof problem,
                     "%dx%dx%d encoding %d differs from the metadata's "
                     "%dx%dx%d encoding %d",
                     record.height, record.width, record.channels, (int)record.encoding,
                     meta.height, meta.width, meta.channels, (int)meta.encoding);
        } else if (record.encoding == MT_ENCODING_JPEG) {
            mt_image image;
            if (mt_image_decode(record.payload, record.payload_bytes, name, 0, &image) != MT_OK)
                snprintf(problem, sizeof problem, "%s", mt_last_error());
            else if (image.width != record.width || image.height != record.height)
                snprintf(problem, sizeof problem, "JPEG decodes to %dx%d, the record says %dx%d",
                         image.width, image.height, record.width, record.height);
            mt_image_free(&image);
        }
        if (problem[0] == '\0') {
            counts[record.label]++;
        } else {
            if (bad < MAX_REPORTED_ERRORS)
                fprintf(stderr, "verify: %s: key %s: %s\n", path, name, problem);
            bad++;
        }
        index++;
    }
    if (status == MT_OK && rc != MDB_NOTFOUND) status = LMDB_FAIL(rc, "mdb_cursor_get", path);
    if (status == MT_OK) {
        if (index != meta.record_count) {
            fprintf(stderr, "verify: %s: %llu record keys, the metadata says %llu\n", path,
                    (unsigned long long)index, (unsigned long long)meta.record_count);
            bad++;
        } else if (bad == 0) {
            for (int c = 0; c < meta.class_count; c++) {
                if (counts[c] != meta.class_counts[c]) {
                    fprintf(stderr,
                            "verify: %s: class %d (%s) has %llu records, the metadata "
                            "says %llu\n",
                            path, c, meta.class_names[c], (unsigned long long)counts[c],
                            (unsigned long long)meta.class_counts[c]);
                    bad++;
                }
            }
        }
        if (bad > MAX_REPORTED_ERRORS)
            fprintf(stderr, "verify: %s: ... %llu problems in all\n", path,
                    (unsigned long long)bad);
        if (bad == 0) printf("verify: %s: OK, %llu records\n", path, (unsigned long long)index);
    }
    if (cursor) mdb_cursor_close(cursor);
    free(counts);
    mt_meta_free(&meta);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    *bad_out = bad;
    return status;
}

static const cli_spec info_spec = {
    .program = "mobiletune-pack info",
    .usage = "DB",
    .description = "Print the metadata of a packed dataset: DB is the folder mobiletune-pack wrote "
                   "(one LMDB,\nor the folder of split LMDBs written with --split, each shown).",
    .positional = true,
};

static const cli_spec verify_spec = {
    .program = "mobiletune-pack verify",
    .usage = "DB",
    .description = "Check every record of a packed dataset (or of each split under DB): keys "
                   "numbered without gaps,\nrecord header and CRC, label below the class count, "
                   "size and encoding as in the metadata,\nJPEG payloads decode, per-class and "
                   "total counts match the metadata. Exits 1 naming each\nbad key.",
    .positional = true,
};

/* The one DB argument of info/verify: 0 with *db set, else the exit code (0 after --help). */
static int parse_db(const cli_spec *spec, int argc, char **argv, const char **db) {
    char **positional = NULL;
    int count = 0;
    mt_status status = cli_parse(spec, NULL, argc, argv, &positional, &count);
    *db = status == MT_OK && count == 1 ? positional[0] : NULL;
    free(positional);
    if (status == MT_END) return 0;
    if (status != MT_OK) {
        fprintf(stderr, "%s: %s\n", spec->program, mt_last_error());
        return 2;
    }
    if (!*db) {
        cli_print_help(spec, NULL, stderr);
        return 2;
    }
    return 0;
}

int pack_info_main(int argc, char **argv) {
    const char *db = NULL;
    int code = parse_db(&info_spec, argc, argv, &db);
    if (!db) return code;
    char **dbs;
    int count;
    mt_status status = find_databases(db, &dbs, &count);
    for (int i = 0; i < count && status == MT_OK; i++)
        status = info_one(dbs[i]);
    free_list(dbs, count);
    if (status != MT_OK) {
        fprintf(stderr, "mobiletune-pack info: %s\n", mt_last_error());
        return 1;
    }
    return 0;
}

int pack_verify_main(int argc, char **argv) {
    const char *db = NULL;
    int code = parse_db(&verify_spec, argc, argv, &db);
    if (!db) return code;
    char **dbs;
    int count;
    mt_status status = find_databases(db, &dbs, &count);
    uint64_t total_bad = 0;
    for (int i = 0; i < count && status == MT_OK; i++) {
        uint64_t bad;
        status = verify_one(dbs[i], &bad);
        total_bad += bad;
    }
    free_list(dbs, count);
    if (status != MT_OK) {
        fprintf(stderr, "mobiletune-pack verify: %s\n", mt_last_error());
        return 1;
    }
    return total_bad ? 1 : 0;
}
