/* The LMDB error checks shared by src/data (reading datasets) and mobiletune-pack (writing and
 * inspecting them), so a failed LMDB call reads the same from either: the database, the call and
 * LMDB's reason. Private: included by data-prep through its src/ include path. */
#ifndef MT_DATA_LMDB_CHECK_H
#define MT_DATA_LMDB_CHECK_H

#include <lmdb.h>

#include "mobiletune/status.h"

/* A failed LMDB call `call` (a string) on database `path`, LMDB's code rc: evaluates to
 * MT_ERR_LMDB after recording the message. */
#define LMDB_FAIL(rc, call, path)                                                                  \
    MT_FAIL(MT_ERR_LMDB, "dataset '%s': %s failed: %s", (path), (call), mdb_strerror(rc))

/* Every LMDB call is checked: returns LMDB_FAIL from the calling function unless it succeeded. */
#define LMDB_CHECK(call, path)                                                                     \
    do {                                                                                           \
        int lmdb_check_rc_ = (call);                                                               \
        if (lmdb_check_rc_ != MDB_SUCCESS) return LMDB_FAIL(lmdb_check_rc_, #call, (path));        \
    } while (0)

#endif
