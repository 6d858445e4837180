/* Structural checks of an LMDB data file (data.mdb) made with pread() before LMDB sees the file.
 *
 * LMDB trusts its file: it maps it and follows the page numbers and offsets it finds, so one
 * corrupted meta page (a page size or last page beyond the file) faults with SIGBUS on the first
 * touch, and a corrupted node offset inside a page crashes a cursor walk. These checks read the
 * file without mapping it and turn every such corruption into an error naming the file, so a
 * damaged dataset is reported, never a signal. docs/formats.md lists what is checked. */
#ifndef MOBILETUNE_DB_CHECK_H
#define MOBILETUNE_DB_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the newest meta page of a checked file says (the snapshot a reader opens). */
typedef struct mt_db_summary {
    uint32_t page_size;
    uint64_t last_page; /* the highest page number in use */
    uint64_t entries;   /* key/value pairs in the main table */
    uint64_t pages_read;
} mt_db_summary;

typedef enum mt_db_check_level {
    /* Both meta pages carry LMDB's magic and data version and the same sane page size (a power of
     * two, 512..65536), the file holds every page up to each meta's last page, and the tables'
     * roots and depths are in range. */
    MT_DB_CHECK_META,
    /* And every branch and leaf page of the main table reachable from the newest meta: each
     * page's number and kind, node offsets and sizes inside the page, packed and not overlapping,
     * keys in order, child page numbers within the last page and each page used once, values on
     * overflow pages lying within the last page, and the page and entry counts equal to the meta
     * page's. Reads the tree pages only, not the records: what a dataset open does. */
    MT_DB_CHECK_TREE,
    /* And the header of every overflow page (its own number, kind and page count): verify. */
    MT_DB_CHECK_ALL,
} mt_db_check_level;

/* Check `data_file` (a data.mdb) up to `level`. Tables with duplicate keys or sub-databases (which
 * mobiletune never writes) are refused from MT_DB_CHECK_TREE on. MT_ERR_FORMAT naming the file
 * and the page; MT_ERR_IO when it cannot be read. `summary` may be NULL. */
mt_status mt_db_check(const char *data_file, mt_db_check_level level, mt_db_summary *summary);

#ifdef __cplusplus
}
#endif

#endif
