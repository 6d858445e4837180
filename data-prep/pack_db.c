/* The ordered writer's databases: each split's LMDB, filled in batches of records committed in
 * one transaction each (the map doubled and the batch replayed when full), and the write-behind
 * thread that writes each commit out while the workers go on decoding. pack_db.h says why. */
#include "pack_db.h"

#include "mobiletune/files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { COMMIT_BYTES = 64 << 20 }; /* a batch is committed at COMMIT_RECORDS or this many bytes */
static const size_t MAX_MAP_SIZE = (size_t)1 << 40;

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

void pack_write_behind_start(write_behind *wb) {
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
int pack_write_behind_stop(write_behind *wb) {
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

/* A failed write to the database: LMDB reports a write the full disk cut short as EIO, so the
 * file system is asked (mt_write_errno) and a full disk is said in so many words. */
mt_status pack_db_write_failed(int rc, const char *call, const char *path) {
    int error = rc > 0 ? mt_write_errno(path, rc) : rc;
    if (error == ENOSPC)
        return MT_FAIL(MT_ERR_IO,
                       "%s: no space left on device (%s failed): free some space, or pack to "
                       "another disk, and run again",
                       path, call);
    return LMDB_FAIL(rc, call, path);
}

mt_status pack_db_open(split_db *db, size_t map_size) {
    LMDB_CHECK(mdb_env_create(&db->env), db->path);
    db->map_size = (map_size + 4095) / 4096 * 4096;
    LMDB_CHECK(mdb_env_set_mapsize(db->env, db->map_size), db->path);
    /* No fsync per commit: the folder is published by rename only after mdb_env_sync(). */
    LMDB_CHECK(mdb_env_open(db->env, db->path, MDB_NOSYNC, 0644), db->path);
    return MT_OK;
}

/* Commit the open batch in one transaction; on MDB_MAP_FULL double the map and replay it. */
mt_status pack_db_flush(split_db *db) {
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
        if (rc != MDB_MAP_FULL) return pack_db_write_failed(rc, call, db->path);
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
        MT_TRY(pack_db_flush(db));
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
mt_status pack_db_add_record(split_db *db, const char *key, uint8_t **record, size_t *capacity,
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
mt_status pack_db_add_copy(split_db *db, const char *key, const void *bytes, size_t size) {
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

void pack_db_close(split_db *db) {
    if (db->env) mdb_env_close(db->env);
    db->env = NULL;
    for (int i = 0; i < COMMIT_RECORDS; i++) {
        free(db->entries[i].bytes);
        db->entries[i] = (batch_entry){0};
    }
    free(db->class_counts);
    db->class_counts = NULL;
}
