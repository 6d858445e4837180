/* What the loader shares with the random-access reader inside src/data: the open environment and
 * the one function that fetches and validates a record (so both paths validate identically). */
#ifndef MT_DATA_DATASET_INTERNAL_H
#define MT_DATA_DATASET_INTERNAL_H

#include <lmdb.h>

#include "data/lmdb_check.h"
#include "mobiletune/loader.h"
#include "mobiletune/record.h"

struct mt_dataset {
    char *path;
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn; /* for mt_dataset_get: a dataset never changes, so one snapshot serves all */
    mt_dataset_meta meta;
    uint8_t *scratch; /* H*W*3 for mt_dataset_get's JPEG path */
};

/* Fetch record `index` through `txn`, validate it (mt_record_parse, label < class count, size ==
 * the metadata's) and point *pixels at its H,W,3 uint8 pixels: into LMDB's memory for raw records,
 * into `scratch` (H*W*3 bytes) for JPEG ones. The record's name is returned through *record. */
mt_status mt_dataset_fetch(const mt_dataset *dataset, MDB_txn *txn, uint64_t index,
                           uint8_t *scratch, mt_record *record, const uint8_t **pixels);

#endif
