/* The packing run: worker threads read, decode, resize (and re-encode) files in parallel into a
 * bounded ring of slots; the calling thread writes the slots to LMDB strictly in index order, so
 * the databases are byte-identical whatever --threads is and memory stays bounded by the ring
 * however many files there are. Everything is written under OUT.tmp-<pid> and renamed into place
 * only once complete. */
/* nftw() is an XSI interface. */
#define _XOPEN_SOURCE 700
#include "core/clock.h"
#include "pack.h"

#include "mobiletune/files.h"
#include "mobiletune/loader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    COMMIT_RECORDS = 64,     /* records per write transaction */
    COMMIT_BYTES = 64 << 20, /* ... or this many bytes, whichever comes first */
    MAX_NAME_BYTES = 65535,  /* the record's name field is 16 bits */
};
static const size_t MAX_MAP_SIZE = (size_t)1 << 40;

/* Set by SIGINT/SIGTERM: the run stops and removes its temporary folder. */
static volatile sig_atomic_t interrupted = 0;
static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

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
static void remove_stale_temps(const char *output) {
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

/* The first line of every skip report this program writes (write_report below). */
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
static mt_status check_output_paths(const pack_options *o, const pack_input *in) {
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

/* ---- write-behind ---------------------------------------------------------------------------- */

/* Commits leave their pages dirty in the page cache (MDB_NOSYNC); left alone, the kernel writes
 * most of them only when the final sync asks, and the run then waits for the whole database at
 * its end (a third of the 2,000-photo run on the development VM's disk). This thread asks for each
 * commit to be written while the workers go on decoding, so the final sync finds little left.
 * Its fdatasync() consumes a writeback error (the kernel reports it once per open file), so the
 * error is kept here and checked by the writer; the final sync alone would not see it. */
typedef struct write_behind {
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int pending_fd; /* the data file of the latest commit, -1 when nothing waits */
    int error;      /* the first errno a background fdatasync() returned */
    bool stop, started;
    bool fail_for_test; /* MT_PACK_FAIL_SYNC: every fdatasync() reports EIO (docs/packing.md) */
} write_behind;

static void *write_behind_main(void *arg) {
    write_behind *wb = arg;
    pthread_mutex_lock(&wb->mutex);
    for (;;) {
        while (wb->pending_fd < 0 && !wb->stop)
            pthread_cond_wait(&wb->cond, &wb->mutex);
        if (wb->pending_fd < 0) break; /* stopped with nothing pending */
        int fd = wb->pending_fd;
        wb->pending_fd = -1;
        pthread_mutex_unlock(&wb->mutex);
        int rc = fdatasync(fd);
        int saved = errno;
        if (wb->fail_for_test) rc = -1, saved = EIO;
        pthread_mutex_lock(&wb->mutex);
        if (rc != 0 && saved != EINVAL && wb->error == 0) wb->error = saved;
    }
    pthread_mutex_unlock(&wb->mutex);
    return NULL;
}

static void write_behind_start(write_behind *wb) {
    pthread_mutex_init(&wb->mutex, NULL);
    pthread_cond_init(&wb->cond, NULL);
    wb->pending_fd = -1;
    wb->fail_for_test = getenv("MT_PACK_FAIL_SYNC") != NULL;
    /* Without the thread the run is only slower: the final sync writes everything. */
    wb->started = pthread_create(&wb->thread, NULL, write_behind_main, wb) == 0;
    if (!wb->started) {
        pthread_mutex_destroy(&wb->mutex);
        pthread_cond_destroy(&wb->cond);
    }
}

static void write_behind_request(write_behind *wb, MDB_env *env) {
    int fd;
    if (!wb || !wb->started || mdb_env_get_fd(env, &fd) != MDB_SUCCESS) return;
    pthread_mutex_lock(&wb->mutex);
    wb->pending_fd = fd;
    pthread_cond_signal(&wb->cond);
    pthread_mutex_unlock(&wb->mutex);
}

/* Finish the pending write (before any database is closed: the thread holds its descriptor);
 * returns the first errno a background write met, 0 when none. */
static int write_behind_stop(write_behind *wb) {
    if (!wb->started) return wb->error;
    pthread_mutex_lock(&wb->mutex);
    wb->stop = true;
    pthread_cond_signal(&wb->cond);
    pthread_mutex_unlock(&wb->mutex);
    pthread_join(wb->thread, NULL);
    wb->started = false;
    pthread_mutex_destroy(&wb->mutex);
    pthread_cond_destroy(&wb->cond);
    return wb->error;
}

/* ---- the ordered writer's databases ---------------------------------------------------------- */

/* One record of the open write batch. Its buffer is owned by the batch and kept after the
 * commit, to be swapped into a worker slot for the next record: records change hands without a
 * copy, and are kept until committed because a full map replays the whole batch. */
typedef struct batch_entry {
    char key[MT_RECORD_KEY_BYTES + 1];
    uint8_t *bytes;
    size_t size, capacity;
} batch_entry;

typedef struct split_db {
    char path[4096];
    const char *name;
    MDB_env *env;
    size_t map_size;
    int map_growths;
    batch_entry entries[COMMIT_RECORDS];
    int entry_count;
    size_t batch_bytes;
    uint64_t planned, records;
    uint64_t *class_counts;
    uint64_t sum[3], sumsq[3];
    write_behind *write_behind; /* asked to write each commit out early; may be NULL */
} split_db;

/* A failed write to the database: LMDB reports a write the full disk cut short as EIO, so the
 * file system is asked (mt_write_errno) and a full disk is said in so many words. */
static mt_status db_write_failed(int rc, const char *call, const char *path) {
    int error = rc > 0 ? mt_write_errno(path, rc) : rc;
    if (error == ENOSPC)
        return MT_FAIL(MT_ERR_IO,
                       "%s: no space left on device (%s failed): free some space, or pack to "
                       "another disk, and run again",
                       path, call);
    return LMDB_FAIL(rc, call, path);
}

static mt_status db_open(split_db *db, size_t map_size) {
    LMDB_CHECK(mdb_env_create(&db->env), db->path);
    db->map_size = (map_size + 4095) / 4096 * 4096;
    LMDB_CHECK(mdb_env_set_mapsize(db->env, db->map_size), db->path);
    /* No fsync per commit: the folder is published by rename only after mdb_env_sync(). */
    LMDB_CHECK(mdb_env_open(db->env, db->path, MDB_NOSYNC, 0644), db->path);
    return MT_OK;
}

/* Commit the open batch in one transaction; on MDB_MAP_FULL double the map and replay it. */
static mt_status db_flush(split_db *db) {
    if (db->entry_count == 0) return MT_OK;
    for (;;) {
        MDB_txn *txn;
        MDB_dbi dbi;
        LMDB_CHECK(mdb_txn_begin(db->env, NULL, 0, &txn), db->path);
        int rc = mdb_dbi_open(txn, NULL, 0, &dbi);
        const char *call = "mdb_dbi_open";
        for (int i = 0; i < db->entry_count && rc == MDB_SUCCESS; i++) {
            MDB_val key = {.mv_size = strlen(db->entries[i].key), .mv_data = db->entries[i].key};
            MDB_val value = {.mv_size = db->entries[i].size, .mv_data = db->entries[i].bytes};
            rc = mdb_put(txn, dbi, &key, &value, MDB_APPEND);
            call = "mdb_put";
        }
        if (rc == MDB_SUCCESS) {
            rc = mdb_txn_commit(txn); /* frees txn, also on failure */
            call = "mdb_txn_commit";
            if (rc == MDB_SUCCESS) {
                write_behind_request(db->write_behind, db->env);
                break;
            }
        } else {
            mdb_txn_abort(txn);
        }
        if (rc != MDB_MAP_FULL) return db_write_failed(rc, call, db->path);
        if (db->map_size >= MAX_MAP_SIZE)
            return MT_FAIL(MT_ERR_LMDB, "%s: the map reached %zu bytes and is still full", db->path,
                           db->map_size);
        db->map_size *= 2;
        LMDB_CHECK(mdb_env_set_mapsize(db->env, db->map_size), db->path);
        db->map_growths++;
    }
    db->entry_count = 0;
    db->batch_bytes = 0;
    return MT_OK;
}

/* The entry that the next record of `db` goes to (committing the batch first when full); it
 * joins the batch when db_claim_entry() fills in its key and size. */
static mt_status db_next_entry(split_db *db, size_t size, batch_entry **entry) {
    if (db->entry_count == COMMIT_RECORDS ||
        (db->entry_count > 0 && db->batch_bytes + size > COMMIT_BYTES))
        MT_TRY(db_flush(db));
    *entry = &db->entries[db->entry_count];
    return MT_OK;
}

static void db_claim_entry(split_db *db, batch_entry *e, const char *key, size_t size) {
    snprintf(e->key, sizeof e->key, "%s", key);
    e->size = size;
    db->entry_count++;
    db->batch_bytes += size;
}

/* Add a record by taking its buffer: *record and *capacity receive the entry's spare buffer in
 * exchange (NULL and 0 the first time round), which the caller fills next. */
static mt_status db_add_record(split_db *db, const char *key, uint8_t **record, size_t *capacity,
                               size_t size) {
    batch_entry *e;
    MT_TRY(db_next_entry(db, size, &e));
    uint8_t *spare = e->bytes;
    size_t spare_capacity = e->capacity;
    e->bytes = *record;
    e->capacity = *capacity;
    *record = spare;
    *capacity = spare_capacity;
    db_claim_entry(db, e, key, size);
    return MT_OK;
}

/* Add a copy of `bytes` (the metadata record). */
static mt_status db_add_copy(split_db *db, const char *key, const void *bytes, size_t size) {
    batch_entry *e;
    MT_TRY(db_next_entry(db, size, &e));
    if (size > e->capacity) {
        uint8_t *grown = realloc(e->bytes, size);
        if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory for a %zu-byte record", size);
        e->bytes = grown;
        e->capacity = size;
    }
    memcpy(e->bytes, bytes, size);
    db_claim_entry(db, e, key, size);
    return MT_OK;
}

static void db_close(split_db *db) {
    if (db->env) mdb_env_close(db->env);
    db->env = NULL;
    for (int i = 0; i < COMMIT_RECORDS; i++) {
        free(db->entries[i].bytes);
        db->entries[i] = (batch_entry){0};
    }
    free(db->class_counts);
    db->class_counts = NULL;
}

/* ---- the decode pipeline --------------------------------------------------------------------- */

typedef struct slot {
    bool ready, skipped;
    char reason[600];
    uint8_t *record;
    size_t record_bytes, record_capacity;
    uint64_t sum[3], sumsq[3];
} slot;

typedef struct job {
    const pack_item *item;
    int split;
} job;

typedef struct pipeline {
    const pack_options *options;
    const job *jobs;
    size_t job_count;
    slot *slots;
    size_t slot_count;
    pthread_mutex_t mutex;
    pthread_cond_t ready_cond, free_cond;
    size_t next, written;
    bool stop;
} pipeline;

typedef struct worker_state {
    pipeline *p;
    uint8_t *file;
    size_t file_capacity;
    uint8_t *pixels; /* size,size,3 */
} worker_state;

static void set_reason(slot *s, const char *name, const char *message) {
    /* Decoder messages start with the name; the report has its own name column. */
    size_t n = strlen(name), m = strlen(message);
    if (m > n + 1 && memcmp(message, name, n) == 0 && message[n] == ':' && message[n + 1] == ' ')
        message += n + 2;
    snprintf(s->reason, sizeof s->reason, "%s", message);
    s->skipped = true;
}

static mt_status read_whole_file(const char *path, worker_state *w, size_t *size) {
    /* Without blocking on a file replaced by a FIFO since the listing. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return MT_FAIL(MT_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return MT_FAIL(MT_ERR_IO, "not a regular file");
    }
    size_t want = (size_t)st.st_size;
    if (want + 1 > w->file_capacity) {
        uint8_t *grown = realloc(w->file, want + 1);
        if (!grown) {
            close(fd);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory for a %zu-byte file", want);
        }
        w->file = grown;
        w->file_capacity = want + 1;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, w->file + got, want - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            mt_status status = n < 0 ? MT_FAIL(MT_ERR_IO, "read error: %s", strerror(errno))
                                     : MT_FAIL(MT_ERR_IO, "file shrank while reading");
            close(fd);
            return status;
        }
        got += (size_t)n;
    }
    close(fd);
    *size = got;
    return MT_OK;
}

/* Per-channel sum and sum of squares of interleaved RGB. 48 lanes (a multiple of 3 and of the
 * vector width) of 32-bit accumulators let the compiler vectorize; they are emptied into 64-bit
 * totals every 4096 rounds, before 4096 * 255^2 could overflow. */
static void channel_sums(const uint8_t *pixels, size_t count, uint64_t sum[3], uint64_t sumsq[3]) {
    enum { LANES = 48, ROUNDS = 4096 };
    size_t bytes = count * 3, i = 0;
    for (int c = 0; c < 3; c++)
        sum[c] = sumsq[c] = 0;
    while (bytes - i >= LANES) {
        uint32_t s[LANES] = {0}, q[LANES] = {0};
        for (int r = 0; r < ROUNDS && bytes - i >= LANES; r++, i += LANES) {
            for (int k = 0; k < LANES; k++) {
                uint32_t v = pixels[i + k];
                s[k] += v;
                q[k] += v * v;
            }
        }
        for (int k = 0; k < LANES; k++) {
            sum[k % 3] += s[k];
            sumsq[k % 3] += q[k];
        }
    }
    for (; i < bytes; i++) {
        uint64_t v = pixels[i];
        sum[i % 3] += v;
        sumsq[i % 3] += v * v;
    }
}

/* Make the slot's record buffer hold `bytes`, keeping what it holds; false when out of memory. */
static bool slot_reserve(slot *s, size_t bytes) {
    if (bytes <= s->record_capacity) return true;
    uint8_t *grown = realloc(s->record, bytes);
    if (!grown) return false;
    s->record = grown;
    s->record_capacity = bytes;
    return true;
}

/* Read, decode, resize (and re-encode) one file into its slot; failures become a skip reason. */
static void process_job(worker_state *w, const job *j, slot *s) {
    const pack_options *o = w->p->options;
    const char *name = j->item->name;
    s->skipped = false;
    size_t name_bytes = strlen(name);
    if (name_bytes > MAX_NAME_BYTES) {
        set_reason(s, name, "path longer than 65535 bytes");
        return;
    }
    size_t size = 0;
    if (read_whole_file(j->item->path, w, &size) != MT_OK) {
        set_reason(s, name, mt_last_error());
        return;
    }
    /* Raw pixels are resized straight into the record's payload, saving a copy. */
    size_t raw_bytes = (size_t)o->size * o->size * 3;
    if (!o->encoded && !slot_reserve(s, MT_RECORD_HEADER_BYTES + raw_bytes + name_bytes)) {
        set_reason(s, name, "out of memory for its record");
        return;
    }
    uint8_t *pixels = o->encoded ? w->pixels : s->record + MT_RECORD_HEADER_BYTES;
    const mt_preprocess prep = {.size = o->size,
                                .resize = o->resize,
                                .decode = o->decode};
    if (mt_image_preprocess(w->file, size, name, &prep, pixels) != MT_OK) {
        set_reason(s, name, mt_last_error());
        return;
    }
    const uint8_t *payload = pixels;
    size_t payload_bytes = raw_bytes;
    uint8_t *jpeg = NULL;
    if (o->encoded) {
        mt_image check;
        if (mt_image_encode_jpeg(pixels, o->size, o->size, o->quality, &jpeg, &payload_bytes) !=
                MT_OK ||
            mt_image_decode(jpeg, payload_bytes, name, 0, &check) != MT_OK) {
            set_reason(s, name, mt_last_error());
            free(jpeg);
            return;
        }
        /* The statistics describe what the loader will decode, not the pixels before JPEG. */
        channel_sums(check.pixels, (size_t)o->size * o->size, s->sum, s->sumsq);
        mt_image_free(&check);
        payload = jpeg;
    } else {
        channel_sums(pixels, (size_t)o->size * o->size, s->sum, s->sumsq);
    }
    mt_record record = {.encoding = o->encoded ? MT_ENCODING_JPEG : MT_ENCODING_RAW,
                        .channels = 3,
                        .height = o->size,
                        .width = o->size,
                        .label = j->item->label,
                        .payload = payload,
                        .payload_bytes = payload_bytes,
                        .name = name,
                        .name_bytes = name_bytes};
    size_t bytes = mt_record_encoded_size(&record);
    if (!slot_reserve(s, bytes)) {
        set_reason(s, name, "out of memory for its record");
        free(jpeg);
        return;
    }
    mt_record_encode(&record, s->record);
    s->record_bytes = bytes;
    free(jpeg);
}

static void *worker_main(void *arg) {
    worker_state *w = arg;
    pipeline *p = w->p;
    for (;;) {
        pthread_mutex_lock(&p->mutex);
        while (!p->stop && p->next < p->job_count && p->next >= p->written + p->slot_count)
            pthread_cond_wait(&p->free_cond, &p->mutex);
        if (p->stop || p->next >= p->job_count) {
            pthread_mutex_unlock(&p->mutex);
            break;
        }
        size_t index = p->next++;
        pthread_mutex_unlock(&p->mutex);
        slot *s = &p->slots[index % p->slot_count];
        process_job(w, &p->jobs[index], s);
        pthread_mutex_lock(&p->mutex);
        s->ready = true;
        pthread_cond_signal(&p->ready_cond);
        pthread_mutex_unlock(&p->mutex);
    }
    return NULL;
}

/* Tell the `started` workers to stop, wake those waiting for a free slot, and join them; then
 * none is started. Used at the end of the records and on every early exit. */
static void workers_stop(pipeline *p, pthread_t *threads, int *started) {
    if (*started == 0) return;
    pthread_mutex_lock(&p->mutex);
    p->stop = true;
    pthread_cond_broadcast(&p->free_cond);
    pthread_mutex_unlock(&p->mutex);
    for (int i = 0; i < *started; i++)
        pthread_join(threads[i], NULL);
    *started = 0;
}

/* ---- progress -------------------------------------------------------------------------------- */

typedef struct progress {
    bool tty, enabled;
    double start, last;
} progress;

static void progress_update(progress *pr, size_t done, size_t total, size_t skipped, bool final) {
    if (!pr->enabled) return;
    double t = mt_clock_monotonic();
    double interval = pr->tty ? 0.2 : 10.0;
    if (!final && t - pr->last < interval) return;
    pr->last = t;
    double elapsed = t - pr->start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    if (pr->tty) {
        if (final) {
            fputs("\r\033[K", stderr);
        } else {
            fprintf(stderr, "\r\033[Kpacking %zu/%zu (%.0f%%)  %.1f img/s  ETA %.0f s  skipped %zu",
                    done, total, total ? 100.0 * done / total : 100.0, rate, eta, skipped);
        }
    } else if (!final) {
        fprintf(stderr, "mobiletune-pack: %zu/%zu images, %.1f img/s, ETA %.0f s, skipped %zu\n",
                done, total, rate, eta, skipped);
    }
    fflush(stderr);
}

/* ---- the run --------------------------------------------------------------------------------- */

typedef struct skip_list {
    pack_skip *items;
    size_t count, capacity;
} skip_list;

static mt_status skip_list_add(skip_list *list, const char *name, const char *reason) {
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 32;
        pack_skip *grown = realloc(list->items, capacity * sizeof *grown);
        if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
        list->items = grown;
        list->capacity = capacity;
    }
    pack_skip *s = &list->items[list->count];
    s->name = strdup(name);
    s->reason = strdup(reason);
    if (!s->name || !s->reason) {
        free(s->name);
        free(s->reason);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    list->count++;
    return MT_OK;
}

static void skip_list_free(skip_list *list) {
    for (size_t i = 0; i < list->count; i++) {
        free(list->items[i].name);
        free(list->items[i].reason);
    }
    free(list->items);
    *list = (skip_list){0};
}

static mt_status write_report(const char *path, const char *input, const skip_list *skips) {
    FILE *f = fopen(path, "w");
    if (!f)
        return MT_FAIL(MT_ERR_IO, "%s: cannot write the skip report: %s", path, strerror(errno));
    fprintf(f, "%s%zu file(s) skipped from %s\n# name<TAB>reason\n", report_signature, skips->count,
            input);
    for (size_t i = 0; i < skips->count; i++)
        fprintf(f, "%s\t%s\n", skips->items[i].name, skips->items[i].reason);
    int failed = ferror(f) ? EIO : 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) failed = errno;
    if (fclose(f) != 0 && !failed) failed = errno;
    if (failed)
        return MT_FAIL(MT_ERR_IO, "%s: writing the skip report failed: %s", path,
                       strerror(mt_write_errno(path, failed)));
    return MT_OK;
}

/* The options line stored in the metadata: every option that shaped the pixels or the split. */
static void format_options(const pack_options *o, char *text, size_t capacity) {
    char splits[64] = "";
    if (o->folder_splits && o->test_from_val > 0)
        snprintf(splits, sizeof splits, " --test-from-val %g (split folders)", o->test_from_val);
    else if (o->folder_splits)
        snprintf(splits, sizeof splits, " (split folders)");
    int n =
        snprintf(text, capacity,
                 "--size %d --resize %s --decode %s%s --quality %d --seed %llu --fraction %g%s%s%s "
                 "input=%s",
                 o->size, mt_resize_mode_name(o->resize), mt_decode_mode_name(o->decode),
                 o->encoded ? " --encoded" : "", o->quality, (unsigned long long)o->seed,
                 o->fraction, o->split_count && !o->folder_splits ? " --split " : "",
                 o->split_count && !o->folder_splits ? o->split_text : "", splits, o->input);
    (void)n;
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

mt_status pack_run(const pack_options *given) {
    double start = mt_clock_monotonic();
    struct stat st;
    pack_input in;
    MT_TRY(pack_input_list(given->input, &in));
    /* a pre-split input decides the splits: from here on, the options with them filled in */
    pack_options planned = *given;
    const pack_options *o = &planned;
    mt_status checked = pack_plan_folder_splits(&in, &planned);
    if (checked == MT_OK) checked = check_output_paths(o, &in);
    if (checked != MT_OK) {
        pack_input_free(&in);
        return checked;
    }
    pack_input_select(&in, o);
    if (o->folder_splits) {
        static const char *const out_names[PACK_FOLDER_COUNT] = {"train", "val", "test"};
        printf("mobiletune-pack: %s is split into folders:", o->input);
        const char *separator = " ";
        for (int k = 0; k < PACK_FOLDER_COUNT; k++)
            if (in.split_folders[k][0]) {
                printf("%s%s/ -> %s/%s", separator, in.split_folders[k], o->output, out_names[k]);
                separator = ", ";
            }
        if (o->test_from_val > 0)
            printf("; test: a seeded stratified %g of %s/ -> %s/test", o->test_from_val,
                   in.split_folders[PACK_FOLDER_VAL], o->output);
        printf("\n");
    }

    int split_count = o->split_count > 0 ? o->split_count : 1;
    split_db *dbs = calloc((size_t)split_count, sizeof *dbs);
    job *jobs = malloc((in.item_count ? in.item_count : 1) * sizeof *jobs);
    int workers = o->threads;
    size_t slot_count = (size_t)workers * 4 + 4;
    slot *slots = calloc(slot_count, sizeof *slots);
    worker_state *states = calloc((size_t)workers, sizeof *states);
    pthread_t *threads = calloc((size_t)workers, sizeof *threads);
    char *temp = malloc(strlen(o->output) + 32);
    char *options_line =
        malloc(strlen(o->input) + strlen(o->split_text ? o->split_text : "") + 256);
    skip_list skips = {0};
    mt_status status = MT_OK;
    int started = 0;
    bool temp_made = false, published = false;
    write_behind wb = {0};
    pipeline p = {.options = o, .slots = slots, .slot_count = slot_count};
    pthread_mutex_init(&p.mutex, NULL);
    pthread_cond_init(&p.ready_cond, NULL);
    pthread_cond_init(&p.free_cond, NULL);
    if (!dbs || !jobs || !slots || !states || !threads || !temp || !options_line) {
        status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    format_options(o, options_line,
                   strlen(o->input) + strlen(o->split_text ? o->split_text : "") + 256);
    for (size_t i = 0; i < in.skip_count && status == MT_OK; i++)
        status = skip_list_add(&skips, in.skips[i].name, in.skips[i].reason);

    /* Jobs in output order: split by split, each in listing order. */
    size_t job_count = 0;
    for (int s = 0; s < split_count; s++) {
        dbs[s].name = o->split_count ? o->splits[s].name : "all";
        for (size_t i = 0; i < in.item_count; i++) {
            if (in.items[i].split != s) continue;
            jobs[job_count++] = (job){.item = &in.items[i], .split = s};
            dbs[s].planned++;
        }
        dbs[s].class_counts = calloc((size_t)in.class_count, sizeof(uint64_t));
        if (!dbs[s].class_counts && status == MT_OK)
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    if (status != MT_OK) goto done;
    if (job_count == 0) {
        status = MT_FAIL(MT_ERR_INVALID, "%s: nothing to pack: no image files were found%s",
                         o->input, o->fraction < 1 ? " (or --fraction selected none)" : "");
        goto done;
    }
    /* Refuse class names the metadata cannot hold now, not after decoding everything. */
    {
        char *text;
        size_t bytes;
        split_db probe = {.name = dbs[0].name, .class_counts = dbs[0].class_counts};
        mt_dataset_meta meta = {.version = MT_META_VERSION,
                                .height = o->size,
                                .width = o->size,
                                .channels = 3,
                                .class_count = in.class_count,
                                .class_names = in.class_names,
                                .class_counts = probe.class_counts,
                                .split = (char *)probe.name,
                                .options = options_line,
                                .encoding = o->encoded ? MT_ENCODING_JPEG : MT_ENCODING_RAW};
        status = mt_meta_format(&meta, &text, &bytes);
        if (status != MT_OK) {
            mt_error_context(status,
                             "%s: the classes cannot be recorded (rename the class "
                             "folders or labels)",
                             o->input);
            goto done;
        }
        free(text);
    }

    remove_stale_temps(o->output);
    {
        char parent[4096]; /* mkdir -p for the folder that will hold OUT */
        status = mt_path_parent(o->output, parent, sizeof parent);
        if (status == MT_OK) status = mt_make_dirs(parent);
    }
    if (status != MT_OK) goto done;
    snprintf(temp, strlen(o->output) + 32, "%s.tmp-%ld", o->output, (long)getpid());
    if (mkdir(temp, 0777) != 0) {
        status =
            MT_FAIL(MT_ERR_IO, "%s: cannot create the temporary folder: %s", temp, strerror(errno));
        goto done;
    }
    temp_made = true;
    size_t estimate_record =
        (o->encoded ? (size_t)o->size * o->size * 3 / 4 : (size_t)o->size * o->size * 3) + 320;
    for (int s = 0; s < split_count && status == MT_OK; s++) {
        if (o->split_count) {
            snprintf(dbs[s].path, sizeof dbs[s].path, "%s/%s", temp, dbs[s].name);
            if (mkdir(dbs[s].path, 0777) != 0) {
                status = MT_FAIL(MT_ERR_IO, "%s: cannot create folder: %s", dbs[s].path,
                                 strerror(errno));
                break;
            }
        } else {
            snprintf(dbs[s].path, sizeof dbs[s].path, "%s", temp);
        }
        /* LMDB stores pages of 4 KiB: a record takes whole overflow pages, hence the margin. */
        size_t map = o->map_size
                         ? o->map_size
                         : (size_t)(dbs[s].planned * (estimate_record + 4096) * 1.1) + (1 << 20);
        status = db_open(&dbs[s], map);
        dbs[s].write_behind = &wb;
    }
    if (status != MT_OK) goto done;
    write_behind_start(&wb);

    for (int i = 0; i < workers; i++) {
        states[i].p = &p;
        states[i].pixels = malloc((size_t)o->size * o->size * 3);
        if (!states[i].pixels) {
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    p.jobs = jobs;
    p.job_count = job_count;
    struct sigaction action = {.sa_handler = on_signal}, old_int, old_term;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int);
    sigaction(SIGTERM, &action, &old_term);
    for (; started < workers; started++) {
        if (pthread_create(&threads[started], NULL, worker_main, &states[started]) != 0) {
            status = MT_FAIL(MT_ERR_NOMEM, "cannot start worker thread %d", started);
            break;
        }
    }
    const char *fail_after_text = getenv("MT_PACK_FAIL_AFTER"); /* a test hook, see docs */
    long long fail_after = fail_after_text ? atoll(fail_after_text) : -1;
    progress pr = {.tty = isatty(STDERR_FILENO) != 0, .start = mt_clock_monotonic()};
    pr.enabled = o->progress < 0 ? true : o->progress == 1;
    if (o->progress < 0 && !pr.tty) pr.enabled = true; /* plain lines, every 10 s */
    pr.last = pr.start;
    size_t packed = 0, decode_skips = 0;
    for (size_t i = 0; i < job_count && status == MT_OK; i++) {
        slot *s = &slots[i % slot_count];
        pthread_mutex_lock(&p.mutex);
        while (!s->ready)
            pthread_cond_wait(&p.ready_cond, &p.mutex);
        pthread_mutex_unlock(&p.mutex);
        split_db *db = &dbs[jobs[i].split];
        if (s->skipped) {
            status = skip_list_add(&skips, jobs[i].item->name, s->reason);
            decode_skips++;
        } else {
            char key[MT_RECORD_KEY_BYTES + 1];
            mt_record_key(db->records, key);
            /* The slot gets the batch's spare buffer: it is not read again until refilled. */
            status = db_add_record(db, key, &s->record, &s->record_capacity, s->record_bytes);
            if (status == MT_OK) {
                db->records++;
                db->class_counts[jobs[i].item->label]++;
                for (int c = 0; c < 3; c++) {
                    db->sum[c] += s->sum[c];
                    db->sumsq[c] += s->sumsq[c];
                }
                packed++;
            }
        }
        pthread_mutex_lock(&p.mutex);
        s->ready = false;
        p.written = i + 1;
        pthread_cond_broadcast(&p.free_cond);
        pthread_mutex_unlock(&p.mutex);
        if (status == MT_OK && interrupted)
            status = MT_FAIL(MT_ERR_IO, "interrupted: nothing was written to %s", o->output);
        if (status == MT_OK && fail_after >= 0 && (long long)packed >= fail_after)
            status = MT_FAIL(MT_ERR_IO, "injected failure after %zu records (MT_PACK_FAIL_AFTER)",
                             packed);
        progress_update(&pr, i + 1, job_count, skips.count, false);
    }
    workers_stop(&p, threads, &started);
    progress_update(&pr, job_count, job_count, skips.count, true);
    int write_error = write_behind_stop(&wb);
    if (status == MT_OK && write_error != 0)
        status = MT_FAIL(MT_ERR_IO,
                         "%s: writing the database to disk failed: %s (nothing was written to "
                         "%s; check the disk and run again)",
                         o->output, strerror(mt_write_errno(temp, write_error)), o->output);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (status != MT_OK) goto done;
    if (packed == 0) {
        for (size_t i = 0; i < skips.count && i < 10; i++)
            fprintf(stderr, "  skipped %s: %s\n", skips.items[i].name, skips.items[i].reason);
        if (o->report) write_report(o->report, o->input, &skips);
        status = MT_FAIL(MT_ERR_FORMAT,
                         "%s: nothing packed: all %zu file(s) were skipped (reasons "
                         "above%s%s)",
                         o->input, skips.count, o->report ? ", report in " : "",
                         o->report ? o->report : "");
        goto done;
    }

    /* Metadata, sync, report, then publish by rename. */
    for (int s = 0; s < split_count && status == MT_OK; s++) {
        split_db *db = &dbs[s];
        char *text = NULL;
        size_t bytes = 0;
        mt_dataset_meta meta = {.version = MT_META_VERSION,
                                .record_count = db->records,
                                .height = o->size,
                                .width = o->size,
                                .channels = 3,
                                .encoding = o->encoded ? MT_ENCODING_JPEG : MT_ENCODING_RAW,
                                .class_count = in.class_count,
                                .class_names = in.class_names,
                                .class_counts = db->class_counts,
                                .split = (char *)db->name,
                                .options = options_line};
        double n = (double)db->records * o->size * o->size;
        for (int c = 0; c < 3 && n > 0; c++) {
            double mean = (double)db->sum[c] / n;
            double var = (double)db->sumsq[c] / n - mean * mean;
            meta.mean[c] = mean;
            meta.std[c] = var > 0 ? sqrt(var) : 0;
        }
        status = mt_meta_format(&meta, &text, &bytes);
        if (status == MT_OK) status = db_add_copy(db, MT_META_KEY, text, bytes);
        free(text);
        if (status == MT_OK) status = db_flush(db);
        if (status == MT_OK) {
            int rc = mdb_env_sync(db->env, 1);
            if (rc != MDB_SUCCESS) status = db_write_failed(rc, "mdb_env_sync", db->path);
        }
    }
    if (status != MT_OK) goto done;
    for (int s = 0; s < split_count; s++)
        db_close(&dbs[s]);
    char report[8192];
    snprintf(report, sizeof report, "%s/skipped.txt", temp);
    status = write_report(o->report ? o->report : report, o->input, &skips);
    for (int s = 0; s < split_count && status == MT_OK; s++)
        status = mt_sync_path(dbs[s].path);
    if (status == MT_OK) status = mt_sync_path(temp);
    if (status != MT_OK) goto done;
    if (stat(o->output, &st) == 0) {
        /* --force: move the old one aside first, so OUT is never half old, half new. */
        char old[8192];
        snprintf(old, sizeof old, "%s.old-%ld", o->output, (long)getpid());
        if (rename(o->output, old) != 0) {
            status = MT_FAIL(MT_ERR_IO, "%s: cannot move the existing output aside: %s", o->output,
                             strerror(errno));
            goto done;
        }
        if (rename(temp, o->output) != 0) {
            status = MT_FAIL(MT_ERR_IO, "%s: cannot rename %s into place: %s", o->output, temp,
                             strerror(errno));
            rename(old, o->output);
            goto done;
        }
        pack_remove_tree(old);
    } else if (rename(temp, o->output) != 0) {
        status = MT_FAIL(MT_ERR_IO, "%s: cannot rename %s into place: %s", o->output, temp,
                         strerror(errno));
        goto done;
    }
    published = true;
    mt_sync_parent(o->output); /* published either way: the rename is atomic */

    double seconds = mt_clock_monotonic() - start;
    printf("mobiletune-pack: packed %zu image(s), skipped %zu;", packed, skips.count);
    for (int s = 0; s < split_count; s++)
        printf(" %s %llu%s", dbs[s].name, (unsigned long long)dbs[s].records,
               s + 1 < split_count ? "," : ";");
    printf(" %.1f s, %.1f img/s, %d thread(s) -> %s (skip report: %s%s)\n", seconds,
           seconds > 0 ? packed / seconds : 0.0, workers, o->output,
           o->report ? o->report : o->output, o->report ? "" : "/skipped.txt");
    fflush(stdout);
    for (int s = 0; s < split_count; s++)
        if (dbs[s].records == 0)
            fprintf(stderr,
                    "mobiletune-pack: warning: split '%s' has no records (too few images "
                    "per class for its fraction)\n",
                    dbs[s].name);
    (void)decode_skips;

done:
    write_behind_stop(&wb); /* before db_close: the thread may hold a descriptor */
    workers_stop(&p, threads, &started);
    for (int s = 0; dbs && s < split_count; s++)
        db_close(&dbs[s]);
    if (temp_made && !published) pack_remove_tree(temp);
    for (size_t i = 0; slots && i < slot_count; i++)
        free(slots[i].record);
    for (int i = 0; states && i < workers; i++) {
        free(states[i].file);
        free(states[i].pixels);
    }
    pthread_mutex_destroy(&p.mutex);
    pthread_cond_destroy(&p.ready_cond);
    pthread_cond_destroy(&p.free_cond);
    skip_list_free(&skips);
    free(dbs);
    free(jobs);
    free(slots);
    free(states);
    free(threads);
    free(temp);
    free(options_line);
    pack_input_free(&in);
    return status;
}
