/* What a packing run may touch on disk, checked before anything is written: the output must be
 * a folder this program wrote (for --force), apart from the input and the skip report; and the
 * clean-up of folders that killed runs left behind. The skip report's writer is here too, since
 * its first line is what marks a report as ours. */
/* nftw() is an XSI interface. */
#define _XOPEN_SOURCE 700
#include "pack.h"

#include "mobiletune/files.h"
#include "mobiletune/loader.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- folders --------------------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    return rc != 0 && errno != ENOENT ? -1 : 0;
}

mt_status pack_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return MT_OK;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return MT_FAIL(MT_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    return MT_OK;
}

static mt_status check_own_database(const char *folder, bool top, bool need_meta, bool *has_data);

/* Remove OUT.tmp-<pid> folders left by runs that were killed (their process is gone), so a
 * killed run costs disk space only until the next run; only when they hold nothing but what a
 * run writes (a folder of that name made by someone else is left alone, with a note). */
void pack_remove_stale_temps(const char *output) {
    char parent[4096];
    if (mt_path_parent(output, parent, sizeof parent) != MT_OK) return;
    const char *slash = strrchr(output, '/');
    const char *base = slash ? slash + 1 : output;
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s.tmp-", base);
    size_t prefix_length = strlen(prefix);
    DIR *dir = opendir(parent);
    struct dirent *entry;
    while (dir && (entry = readdir(dir)) != NULL) {
        if (strncmp(entry->d_name, prefix, prefix_length) != 0) continue;
        char *end;
        long pid = strtol(entry->d_name + prefix_length, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", parent, entry->d_name);
        bool has_data;
        if (check_own_database(path, true, false, &has_data) != MT_OK) {
            fprintf(stderr, "mobiletune-pack: left %s alone: %s\n", path, mt_last_error());
            continue;
        }
        if (pack_remove_tree(path) == MT_OK)
            fprintf(stderr, "mobiletune-pack: removed %s, left by an interrupted run\n", path);
    }
    if (dir) closedir(dir);
}

/* ---- what the run may replace ---------------------------------------------------------------- */

/* The first line of every skip report this program writes (pack_write_report below). */
static const char report_signature[] = "# mobiletune-pack: ";

static bool is_skip_report(const char *path) {
    int fd;
    if (mt_file_open_read(path, "report", &fd) != MT_OK) return false;
    char head[sizeof report_signature] = {0};
    ssize_t got = read(fd, head, sizeof report_signature - 1);
    close(fd);
    return got == (ssize_t)sizeof report_signature - 1 &&
           memcmp(head, report_signature, sizeof report_signature - 1) == 0;
}

static bool is_named(const char *name, const char *const *names, int count) {
    for (int i = 0; i < count; i++)
        if (strcmp(name, names[i]) == 0) return true;
    return false;
}

/* One database folder that mobiletune-pack wrote: only data.mdb (and LMDB's lock.mdb, and at the
 * top the skip report, or split subfolders) inside, and with `need_meta` a data.mdb whose metadata
 * record parses (a run's temporary folder has none until its end). */
static mt_status check_own_database(const char *folder, bool top, bool need_meta, bool *has_data) {
    static const char *const files[] = {"data.mdb", "lock.mdb", "skipped.txt"};
    DIR *dir = opendir(folder);
    if (!dir) return MT_FAIL(MT_ERR_IO, "%s: cannot read: %s", folder, strerror(errno));
    mt_status status = MT_OK;
    struct dirent *entry;
    *has_data = false;
    while (status == MT_OK && (entry = readdir(dir)) != NULL) {
        const char *name = entry->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        char path[8192];
        int length = snprintf(path, sizeof path, "%s/%s", folder, name);
        if (length < 0 || (size_t)length >= sizeof path) {
            status = MT_FAIL(MT_ERR_INVALID, "%s/%s: path too long", folder, name);
            break;
        }
        struct stat st;
        bool regular = lstat(path, &st) == 0 && S_ISREG(st.st_mode);
        if (regular && is_named(name, files, top ? 3 : 2)) {
            if (strcmp(name, "data.mdb") == 0) *has_data = true;
            if (strcmp(name, "skipped.txt") == 0 && !is_skip_report(path))
                status = MT_FAIL(MT_ERR_INVALID, "%s: not a mobiletune-pack skip report", path);
        } else if (top && lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            bool split_data = false;
            status = check_own_database(path, false, need_meta, &split_data);
            if (status == MT_OK && !split_data && need_meta)
                status = MT_FAIL(MT_ERR_INVALID, "%s: a folder without data.mdb", path);
        } else {
            status = MT_FAIL(MT_ERR_INVALID, "%s was not written by mobiletune-pack", path);
        }
    }
    closedir(dir);
    if (status == MT_OK && *has_data && need_meta) {
        mt_dataset *dataset;
        status = mt_dataset_open(folder, &dataset);
        if (status == MT_OK) mt_dataset_close(dataset);
    }
    return status;
}

/* Some file systems (XFS without ftype, NFS, ...) report DT_UNKNOWN: ask lstat then. */
static bool entry_is_folder(const char *parent, const struct dirent *entry) {
    if (entry->d_type != DT_UNKNOWN) return entry->d_type == DT_DIR;
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", parent, entry->d_name) >= (int)sizeof path)
        return false;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* --force replaces OUT only when OUT is a whole output of this program: a database folder, or a
 * folder of split database folders, with nothing else in it. */
static mt_status check_replaceable(const char *output) {
    struct stat st;
    if (lstat(output, &st) != 0 || !S_ISDIR(st.st_mode))
        return MT_FAIL(MT_ERR_INVALID,
                       "%s exists and is not a folder written by mobiletune-pack: --force "
                       "replaces only such a folder; choose another output path",
                       output);
    bool has_data = false;
    mt_status status = check_own_database(output, true, true, &has_data);
    if (status == MT_OK && !has_data) {
        /* A folder of splits: its subfolders were checked; an empty folder is nothing of ours. */
        DIR *dir = opendir(output);
        struct dirent *entry;
        bool any = false;
        while (dir && (entry = readdir(dir)) != NULL)
            any = any || (entry->d_name[0] != '.' && entry_is_folder(output, entry));
        if (dir) closedir(dir);
        if (!any) status = MT_FAIL(MT_ERR_INVALID, "%s holds no database", output);
    }
    if (status != MT_OK)
        return mt_error_context(status,
                                "%s: --force replaces only a folder that mobiletune-pack wrote, "
                                "and this one is not (or no longer) such a folder, so nothing "
                                "was touched: move it away yourself or choose another output",
                                output);
    return MT_OK;
}

/* Everything the run will create, replace or write, compared by real path with everything it
 * reads, before anything is touched: OUT must be neither the input, nor inside it, nor hold it
 * (nor any listed file); --report must not be an input nor any existing file but a skip report. */
mt_status pack_check_output_paths(const pack_options *o, const pack_input *in) {
    char out_real[PATH_MAX], in_real[PATH_MAX], item_real[PATH_MAX], report_real[PATH_MAX];
    MT_TRY(mt_path_real(o->output, out_real, sizeof out_real));
    MT_TRY(mt_path_real(o->input, in_real, sizeof in_real));
    struct stat st;
    bool folder_input = stat(o->input, &st) == 0 && S_ISDIR(st.st_mode);
    if (folder_input && mt_path_within(out_real, in_real))
        return MT_FAIL(
            MT_ERR_INVALID, "output %s is %s the input folder %s: choose an output outside it",
            o->output, strcmp(out_real, in_real) == 0 ? "the same folder as" : "inside", o->input);
    if (mt_path_within(in_real, out_real))
        return MT_FAIL(MT_ERR_INVALID,
                       "output %s holds the input %s: replacing it would delete the input; "
                       "choose another output folder",
                       o->output, o->input);
    bool report = o->report != NULL;
    if (report) {
        MT_TRY(mt_path_real(o->report, report_real, sizeof report_real));
        if (strcmp(report_real, in_real) == 0 ||
            (folder_input && mt_path_within(report_real, in_real) && stat(o->report, &st) == 0))
            return MT_FAIL(MT_ERR_INVALID,
                           "--report %s is part of the input %s: choose another path", o->report,
                           o->input);
        if (mt_path_within(report_real, out_real))
            return MT_FAIL(MT_ERR_INVALID,
                           "--report %s lies inside the output %s, which is written as a whole: "
                           "leave --report out (the report goes to %s/skipped.txt) or choose a "
                           "path outside it",
                           o->report, o->output, o->output);
    }
    for (size_t i = 0; i < in->item_count; i++) {
        if (!realpath(in->items[i].path, item_real)) continue; /* it will be skipped, unread */
        if (mt_path_within(item_real, out_real))
            return MT_FAIL(MT_ERR_INVALID,
                           "input file %s lies inside the output %s: choose another output folder",
                           in->items[i].path, o->output);
        if (report && strcmp(item_real, report_real) == 0)
            return MT_FAIL(MT_ERR_INVALID, "--report %s is the input file %s: choose another path",
                           o->report, in->items[i].path);
    }
    if (report && lstat(o->report, &st) == 0 && !is_skip_report(o->report))
        return MT_FAIL(MT_ERR_INVALID,
                       "--report %s exists and is not a skip report of mobiletune-pack: it is not "
                       "overwritten; choose another path",
                       o->report);
    if (lstat(o->output, &st) == 0 && !o->force)
        return MT_FAIL(MT_ERR_INVALID,
                       "%s already exists: pass --force to replace it (only a folder that "
                       "mobiletune-pack wrote is replaced), or choose another output folder",
                       o->output);
    if (lstat(o->output, &st) == 0) MT_TRY(check_replaceable(o->output));
    return MT_OK;
}

mt_status pack_write_report(const char *path, const char *input, const pack_skip *skips,
                            size_t count) {
    FILE *f = fopen(path, "w");
    if (!f)
        return MT_FAIL(MT_ERR_IO, "%s: cannot write the skip report: %s", path, strerror(errno));
    fprintf(f, "%s%zu file(s) skipped from %s\n# name<TAB>reason\n", report_signature, count,
            input);
    for (size_t i = 0; i < count; i++)
        fprintf(f, "%s\t%s\n", skips[i].name, skips[i].reason);
    int failed = ferror(f) ? EIO : 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) failed = errno;
    if (fclose(f) != 0 && !failed) failed = errno;
    if (failed)
        return MT_FAIL(MT_ERR_IO, "%s: writing the skip report failed: %s", path,
                       strerror(mt_write_errno(path, failed)));
    return MT_OK;
}
