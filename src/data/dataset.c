/* Opening a packed dataset read-only and fetching validated records from it: the random-access
 * API (eval, predict, feature extraction) and the record path the batch loader's threads share.
 *
 * Nothing in the database is trusted. LMDB maps the file, so a data.mdb shorter than the pages its
 * own meta page claims would fault (SIGBUS) on first touch, and a corrupt page could send a
 * lookup anywhere: mt_db_check() reads the structure by pread before LMDB opens the file. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/dataset_internal.h"
#include "mobiletune/db_check.h"
#include "mobiletune/image.h"

static mt_status meta_read(mt_dataset *ds) {
    MDB_val key = {.mv_size = strlen(MT_META_KEY), .mv_data = (void *)MT_META_KEY}, value;
    int rc = mdb_get(ds->txn, ds->dbi, &key, &value);
    if (rc == MDB_NOTFOUND)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': no '%s' record: not a mobiletune dataset (or "
                       "written by an interrupted packer)",
                       ds->path, MT_META_KEY);
    if (rc != MDB_SUCCESS)
        return MT_FAIL(MT_ERR_LMDB, "dataset '%s': mdb_get('%s') failed: %s", ds->path, MT_META_KEY,
                       mdb_strerror(rc));
    mt_status status = mt_meta_parse(value.mv_data, value.mv_size, &ds->meta);
    if (status != MT_OK)
        return mt_error_context(status, "dataset '%s': record '%s'", ds->path, MT_META_KEY);
    return MT_OK;
}

static mt_status check_not_truncated(mt_dataset *ds, uint64_t file_bytes) {
    MDB_envinfo info;
    MDB_stat env_stat;
    LMDB_CHECK(mdb_env_info(ds->env, &info), ds->path);
    LMDB_CHECK(mdb_env_stat(ds->env, &env_stat), ds->path);
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * env_stat.ms_psize;
    if (file_bytes < need)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': data.mdb is truncated: %" PRIu64 " bytes, "
                       "but its pages reach %" PRIu64 " (copy it again or repack)",
                       ds->path, file_bytes, need);
    return MT_OK;
}

static mt_status open_env(mt_dataset *ds) {
    struct stat st;
    if (stat(ds->path, &st) != 0)
        return MT_FAIL(MT_ERR_IO, "dataset '%s': %s", ds->path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return MT_FAIL(MT_ERR_INVALID,
                       "dataset '%s' is not a folder: a packed dataset is an "
                       "LMDB folder holding data.mdb",
                       ds->path);
    /* LMDB's own messages for a missing or empty data.mdb are cryptic ("Bad file descriptor"). */
    size_t path_len = strlen(ds->path);
    char *file = malloc(path_len + sizeof "/data.mdb");
    if (!file) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    memcpy(file, ds->path, path_len);
    memcpy(file + path_len, "/data.mdb", sizeof "/data.mdb");
    int rc = stat(file, &st);
    int err = errno;
    if (rc != 0 || st.st_size == 0) {
        free(file);
        if (rc != 0)
            return MT_FAIL(MT_ERR_IO,
                           "dataset '%s': cannot read data.mdb: %s (is it a dataset made "
                           "by mobiletune-pack?)",
                           ds->path, strerror(err));
        return MT_FAIL(MT_ERR_FORMAT, "dataset '%s': data.mdb is empty (truncated)", ds->path);
    }
    /* Before LMDB maps a single page: its meta pages and every page of the tree are checked by
     * pread, so a corrupted file is an error here and never a SIGBUS or SIGSEGV later. Only the
     * branch and leaf pages are read (a record's overflow pages are checked to lie within the
     * file from its size; its bytes are checked by its CRC when fetched). */
    mt_status checked = mt_db_check(file, MT_DB_CHECK_TREE, NULL);
    free(file);
    if (checked != MT_OK) return mt_error_context(checked, "dataset '%s'", ds->path);
    LMDB_CHECK(mdb_env_create(&ds->env), ds->path);
    /* A packed dataset is immutable (the packer writes a temporary folder and renames it into
     * place), so readers need no lock table: MDB_NOLOCK works in a read-only folder, leaves no
     * lock.mdb behind, has no reader-slot limit, and avoids LMDB's rule against opening one
     * environment twice in a process (its fcntl locks are per process), which several loaders on
     * one dataset (ranks in a test, eval next to train) would otherwise break. MDB_NOTLS lets each
     * loader thread own a read transaction independent of OS threads. */
    rc = mdb_env_open(ds->env, ds->path, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0);
    if (rc == MDB_INVALID)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': data.mdb is not an LMDB file or is truncated "
                       "(mdb_env_open: %s)",
                       ds->path, mdb_strerror(rc));
    if (rc != MDB_SUCCESS)
        return MT_FAIL(MT_ERR_LMDB, "dataset '%s': mdb_env_open failed: %s", ds->path,
                       mdb_strerror(rc));
    MT_TRY(check_not_truncated(ds, (uint64_t)st.st_size));
    LMDB_CHECK(mdb_txn_begin(ds->env, NULL, MDB_RDONLY, &ds->txn), ds->path);
    LMDB_CHECK(mdb_dbi_open(ds->txn, NULL, 0, &ds->dbi), ds->path);
    return MT_OK;
}

static mt_status dataset_open(mt_dataset *ds) {
    MT_TRY(open_env(ds));
    MT_TRY(meta_read(ds));
    MDB_stat db_stat;
    LMDB_CHECK(mdb_stat(ds->txn, ds->dbi, &db_stat), ds->path);
    if ((uint64_t)db_stat.ms_entries != ds->meta.record_count + 1)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': %" PRIu64 " entries, but the metadata "
                       "describes %" PRIu64 " records plus '%s'",
                       ds->path, (uint64_t)db_stat.ms_entries, ds->meta.record_count, MT_META_KEY);
    ds->scratch = malloc((size_t)ds->meta.height * (size_t)ds->meta.width * 3);
    if (!ds->scratch) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    return MT_OK;
}

mt_status mt_dataset_open(const char *path, mt_dataset **out) {
    *out = NULL;
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "no dataset path given");
    mt_dataset *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->path = strdup(path))) {
        free(ds);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory opening '%s'", path);
    }
    mt_status status = dataset_open(ds);
    if (status != MT_OK) {
        mt_dataset_close(ds);
        return status;
    }
    *out = ds;
    return MT_OK;
}

void mt_dataset_close(mt_dataset *ds) {
    if (!ds) return;
    if (ds->txn) mdb_txn_abort(ds->txn);
    if (ds->env) mdb_env_close(ds->env);
    mt_meta_free(&ds->meta);
    free(ds->scratch);
    free(ds->path);
    free(ds);
}

const mt_dataset_meta *mt_dataset_meta_get(const mt_dataset *ds) {
    return &ds->meta;
}

uint64_t mt_dataset_count(const mt_dataset *ds) {
    return ds->meta.record_count;
}

mt_status mt_dataset_fetch(const mt_dataset *ds, MDB_txn *txn, uint64_t index, uint8_t *scratch,
                           mt_record *record, const uint8_t **pixels) {
    const mt_dataset_meta *meta = &ds->meta;
    if (index >= meta->record_count)
        return MT_FAIL(MT_ERR_INVALID,
                       "dataset '%s': record %" PRIu64 " out of range (%" PRIu64 " records)",
                       ds->path, index, meta->record_count);
    char key[MT_RECORD_KEY_BYTES + 1];
    mt_record_key(index, key);
    MDB_val k = {.mv_size = MT_RECORD_KEY_BYTES, .mv_data = key}, v;
    int rc = mdb_get(txn, ds->dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': record '%s' is missing (the metadata says "
                       "%" PRIu64 " records)",
                       ds->path, key, meta->record_count);
    if (rc != MDB_SUCCESS)
        return MT_FAIL(MT_ERR_LMDB, "dataset '%s': mdb_get('%s') failed: %s", ds->path, key,
                       mdb_strerror(rc));
    mt_status status = mt_record_parse(v.mv_data, v.mv_size, key, record);
    if (status != MT_OK) return mt_error_context(status, "dataset '%s'", ds->path);
    if (record->label >= (uint32_t)meta->class_count)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': record '%s': label %" PRIu32 " but only %d "
                       "classes",
                       ds->path, key, record->label, meta->class_count);
    if (record->height != meta->height || record->width != meta->width)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': record '%s' is %dx%d, but the dataset is "
                       "%dx%d",
                       ds->path, key, record->height, record->width, meta->height, meta->width);
    if (record->encoding == MT_ENCODING_RAW) {
        *pixels = record->payload;
        return MT_OK;
    }
    mt_image image;
    status = mt_image_decode(record->payload, record->payload_bytes, key, 0, &image);
    if (status != MT_OK)
        return mt_error_context(status, "dataset '%s': record '%s'", ds->path, key);
    if (image.height != meta->height || image.width != meta->width) {
        mt_image_free(&image);
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset '%s': record '%s': its JPEG decodes to %dx%d, but "
                       "the record says %dx%d",
                       ds->path, key, image.height, image.width, meta->height, meta->width);
    }
    memcpy(scratch, image.pixels, (size_t)image.height * (size_t)image.width * 3);
    mt_image_free(&image);
    *pixels = scratch;
    return MT_OK;
}

mt_status mt_dataset_get(mt_dataset *ds, uint64_t index, uint8_t *pixels, int32_t *label,
                         char *name, size_t name_capacity) {
    mt_record record;
    const uint8_t *src = NULL; /* set by a successful fetch (the optimizer cannot see that) */
    MT_TRY(mt_dataset_fetch(ds, ds->txn, index, ds->scratch, &record, &src));
    if (pixels) memcpy(pixels, src, (size_t)ds->meta.height * (size_t)ds->meta.width * 3);
    if (label) *label = (int32_t)record.label;
    if (name && name_capacity > 0) {
        size_t n = record.name_bytes < name_capacity - 1 ? record.name_bytes : name_capacity - 1;
        memcpy(name, record.name, n);
        name[n] = '\0';
    }
    return MT_OK;
}
