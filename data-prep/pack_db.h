/* Private to mobiletune-pack: the ordered writer's databases (one LMDB per split, written in
 * batches under OUT.tmp-<pid>) and the write-behind thread that flushes each commit early;
 * pack_db.c holds them, pack_run.c drives them in output order. */
#ifndef MOBILETUNE_PACK_DB_H
#define MOBILETUNE_PACK_DB_H

#include "pack.h"

#include <pthread.h>

enum { COMMIT_RECORDS = 64 }; /* records per write transaction (or COMMIT_BYTES, pack_db.c) */

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

/* Start the thread; when it cannot start the run is only slower (the final sync writes all). */
void pack_write_behind_start(write_behind *wb);
/* Finish the pending write (before any database is closed: the thread holds its descriptor);
 * returns the first errno a background write met, 0 when none. */
int pack_write_behind_stop(write_behind *wb);

/* Create db->path's environment with a map of `map_size` bytes (rounded up to pages). */
mt_status pack_db_open(split_db *db, size_t map_size);
/* Commit the open batch in one transaction; on MDB_MAP_FULL double the map and replay it. */
mt_status pack_db_flush(split_db *db);
/* Add a record by taking its buffer: *record and *capacity receive the entry's spare buffer in
 * exchange (NULL and 0 the first time round), which the caller fills next. */
mt_status pack_db_add_record(split_db *db, const char *key, uint8_t **record, size_t *capacity,
                             size_t size);
/* Add a copy of `bytes` (the metadata record). */
mt_status pack_db_add_copy(split_db *db, const char *key, const void *bytes, size_t size);
/* A failed LMDB call `call` on `path`, with a full disk said in so many words. */
mt_status pack_db_write_failed(int rc, const char *call, const char *path);
/* Close the environment and free the batch's buffers and the class counts. */
void pack_db_close(split_db *db);

#endif
