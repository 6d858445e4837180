/* LMDB's on-disk layout read by hand (see db_check.h for why). The offsets below are those of
 * liblmdb 0.9's structures on a 64-bit little-endian machine (pgno_t and size_t of 8 bytes), the
 * only layout our data files have; a 32-bit build writes other files and is refused by the magic
 * and page-size checks.
 *
 *   page header (16 bytes): page number u64 @0, flags u16 @10, lower u16 @12, upper u16 @14
 *     (an overflow page keeps its page count as u32 @12 instead of lower/upper);
 *     the node offsets (u16 each) follow from @16 up to `lower`; nodes lie in [upper, page end).
 *   meta page (pages 0 and 1): magic u32 @16, data version u32 @20, map size u64 @32, the free
 *     table @40 and the main table @88 (48 bytes each: page size u32 @+0 in the free table's
 *     padding, flags u16 @+4, depth u16 @+6, branch/leaf/overflow page counts and entries u64
 *     @+8..+32, root page u64 @+40), last page u64 @136, transaction id u64 @144.
 *   node (8-byte header): lo u16 @0, hi u16 @2, flags u16 @4, key size u16 @6, key @8, then
 *     the data (a leaf), or its overflow page number u64 (flag 1); a branch node's child page is
 *     lo | hi << 16 | flags << 32. Nodes are stored packed, each an even number of bytes. */
#define _XOPEN_SOURCE 700
#include "mobiletune/db_check.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mobiletune/files.h"

enum {
    PAGE_HEADER = 16,
    NODE_HEADER = 8,
    META_END = 152,
    P_BRANCH = 0x01,
    P_LEAF = 0x02,
    P_OVERFLOW = 0x04,
    P_META = 0x08,
    P_KIND = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40, /* branch, leaf, overflow, meta, leaf2, sub */
    F_BIGDATA = 0x01,
    MAX_DEPTH = 64,
};
static const uint32_t LMDB_MAGIC = 0xBEEFC0DEu;
static const uint32_t LMDB_DATA_VERSION = 1;
static const uint64_t NO_PAGE = ~(uint64_t)0;

static uint16_t u16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t u32(const uint8_t *p) {
    return (uint32_t)u16(p) | (uint32_t)u16(p + 2) << 16;
}
static uint64_t u64(const uint8_t *p) {
    return (uint64_t)u32(p) | (uint64_t)u32(p + 4) << 32;
}

typedef struct table {
    uint16_t flags, depth;
    uint64_t branch_pages, leaf_pages, overflow_pages, entries, root;
} table;

typedef struct meta {
    uint32_t magic, version, page_size;
    uint64_t map_size, last_page, txnid;
    table free_table, main_table;
} meta;

static table table_at(const uint8_t *p) {
    return (table){.flags = u16(p + 4),
                   .depth = u16(p + 6),
                   .branch_pages = u64(p + 8),
                   .leaf_pages = u64(p + 16),
                   .overflow_pages = u64(p + 24),
                   .entries = u64(p + 32),
                   .root = u64(p + 40)};
}

typedef struct checker {
    const char *path;
    int fd;
    uint64_t file_bytes;
    uint32_t page_size;
    uint64_t last_page;
    bool read_headers; /* MT_DB_CHECK_ALL: read each overflow page's header too */
    uint8_t *seen;     /* one bit per page */
    uint8_t *pages[MAX_DEPTH + 1];
    uint64_t branch_pages, leaf_pages, overflow_pages, entries, pages_read;
} checker;

static mt_status read_at(checker *c, uint64_t offset, void *buffer, size_t bytes) {
    size_t got = 0;
    while (got < bytes) {
        ssize_t n = pread(c->fd, (uint8_t *)buffer + got, bytes - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return MT_FAIL(MT_ERR_IO, "%s: read error: %s", c->path, strerror(errno));
        if (n == 0)
            return MT_FAIL(MT_ERR_FORMAT,
                           "%s: the file ends at %" PRIu64 " bytes, inside page data", c->path,
                           c->file_bytes);
        got += (size_t)n;
    }
    return MT_OK;
}

static mt_status corrupt(const checker *c, const char *what, uint64_t page, const char *detail) {
    return MT_FAIL(MT_ERR_FORMAT,
                   "%s: corrupt LMDB %s (page %" PRIu64 ": %s): the database cannot be read "
                   "safely; copy it again or repack it",
                   c->path, what, page, detail);
}

/* ---- meta pages ------------------------------------------------------------------------------ */

static bool power_of_two(uint32_t v) {
    return v && !(v & (v - 1));
}

static mt_status check_table(const checker *c, int index, const meta *m, const table *t,
                             const char *name) {
    char detail[200];
    if (t->root == NO_PAGE) {
        if (t->depth != 0 || t->entries != 0) {
            snprintf(detail, sizeof detail,
                     "the empty %s table has depth %u and %" PRIu64 " entries", name, t->depth,
                     t->entries);
            return corrupt(c, "meta page", (uint64_t)index, detail);
        }
        return MT_OK;
    }
    if (t->root < 2 || t->root > m->last_page || t->depth == 0 || t->depth > MAX_DEPTH) {
        snprintf(detail, sizeof detail,
                 "the %s table's root page %" PRIu64 " or depth %u is outside 2..%" PRIu64
                 " and 1..%d",
                 name, t->root, t->depth, m->last_page, MAX_DEPTH);
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    return MT_OK;
}

static mt_status read_meta(checker *c, int index, uint64_t offset, meta *m) {
    uint8_t page[META_END];
    char detail[200];
    if (offset + META_END > c->file_bytes) {
        snprintf(detail, sizeof detail, "the file (%" PRIu64 " bytes) ends before it",
                 c->file_bytes);
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    MT_TRY(read_at(c, offset, page, sizeof page));
    *m = (meta){.magic = u32(page + 16),
                .version = u32(page + 20),
                .map_size = u64(page + 32),
                .page_size = u32(page + 40),
                .free_table = table_at(page + 40),
                .main_table = table_at(page + 88),
                .last_page = u64(page + 136),
                .txnid = u64(page + 144)};
    if (m->magic != LMDB_MAGIC || m->version != LMDB_DATA_VERSION) {
        snprintf(detail, sizeof detail,
                 "magic 0x%08" PRIx32 " version %" PRIu32 ", want 0x%08" PRIx32 " version %" PRIu32,
                 m->magic, m->version, LMDB_MAGIC, LMDB_DATA_VERSION);
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    if (u64(page) != (uint64_t)index || !(u16(page + 10) & P_META)) {
        snprintf(detail, sizeof detail, "its header says page %" PRIu64 " flags 0x%x", u64(page),
                 u16(page + 10));
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    if (!power_of_two(m->page_size) || m->page_size < 512 || m->page_size > 65536) {
        snprintf(detail, sizeof detail, "page size %" PRIu32 " is not a power of two in 512..65536",
                 m->page_size);
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    /* The meta pages themselves are pages 0 and 1; a reader maps up to the last page. */
    if (m->last_page < 1 || m->last_page >= c->file_bytes / m->page_size) {
        snprintf(detail, sizeof detail,
                 "its last page %" PRIu64 " does not fit in the file's %" PRIu64 " bytes "
                 "(%" PRIu64 " pages of %" PRIu32 "): truncated or corrupt",
                 m->last_page, c->file_bytes, c->file_bytes / m->page_size, m->page_size);
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    if (m->map_size > ((uint64_t)1 << 48)) {
        snprintf(detail, sizeof detail, "map size %" PRIu64 " bytes", m->map_size);
        return corrupt(c, "meta page", (uint64_t)index, detail);
    }
    MT_TRY(check_table(c, index, m, &m->free_table, "free-page"));
    MT_TRY(check_table(c, index, m, &m->main_table, "main"));
    return MT_OK;
}

/* ---- the page walk --------------------------------------------------------------------------- */

static bool mark(checker *c, uint64_t page) {
    uint8_t bit = (uint8_t)(1u << (page & 7));
    if (c->seen[page >> 3] & bit) return false;
    c->seen[page >> 3] |= bit;
    return true;
}

typedef struct span {
    uint32_t start, end;
} span;

static int compare_spans(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* LMDB's default key order: bytewise, a prefix before the longer key. */
static int compare_keys(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    int r = memcmp(a, b, an < bn ? an : bn);
    return r ? r : (an > bn) - (an < bn);
}

/* A value on overflow pages: LMDB allocates OVPAGES = (16 - 1 + size) / page size + 1 pages for
 * it and reads `size` bytes after the first page's header, so these pages must lie within the
 * last page (and be used once). With `read_headers` each first page's header is read too. */
static mt_status check_overflow(checker *c, uint64_t leaf, uint64_t page, uint64_t bytes) {
    char detail[200];
    uint64_t count = (PAGE_HEADER - 1 + bytes) / c->page_size + 1;
    if (page < 2 || page > c->last_page || count > c->last_page - page + 1) {
        snprintf(detail, sizeof detail,
                 "a %" PRIu64 "-byte value on overflow pages %" PRIu64 "..%" PRIu64
                 ", outside 2..%" PRIu64,
                 bytes, page, page + count - 1, c->last_page);
        return corrupt(c, "leaf page", leaf, detail);
    }
    if (c->read_headers) {
        uint8_t header[PAGE_HEADER];
        MT_TRY(read_at(c, page * c->page_size, header, sizeof header));
        c->pages_read++;
        if (u64(header) != page || (u16(header + 10) & P_KIND) != P_OVERFLOW ||
            u32(header + 12) != count) {
            snprintf(detail, sizeof detail,
                     "header says page %" PRIu64 " flags 0x%x, %" PRIu32 " pages for a %" PRIu64
                     "-byte value (%" PRIu64 " expected)",
                     u64(header), u16(header + 10), u32(header + 12), bytes, count);
            return corrupt(c, "overflow page", page, detail);
        }
    }
    for (uint64_t p = page; p < page + count; p++)
        if (!mark(c, p)) return corrupt(c, "overflow page", p, "used twice");
    c->overflow_pages += count;
    return MT_OK;
}

static mt_status walk(checker *c, uint64_t pgno, int level, int depth) {
    char detail[200];
    if (pgno < 2 || pgno > c->last_page) {
        snprintf(detail, sizeof detail, "a child page %" PRIu64 " outside 2..%" PRIu64, pgno,
                 c->last_page);
        return corrupt(c, "branch page", pgno, detail);
    }
    if (!mark(c, pgno)) return corrupt(c, "page", pgno, "reached twice (a cycle or shared page)");
    uint8_t *p = c->pages[level];
    uint32_t size = c->page_size;
    MT_TRY(read_at(c, pgno * size, p, size));
    c->pages_read++;
    uint16_t kind = u16(p + 10) & P_KIND, lower = u16(p + 12), upper = u16(p + 14);
    bool leaf = level == depth;
    if (u64(p) != pgno || kind != (leaf ? P_LEAF : P_BRANCH)) {
        snprintf(detail, sizeof detail, "header says page %" PRIu64 " flags 0x%x, expected a %s",
                 u64(p), u16(p + 10), leaf ? "leaf" : "branch");
        return corrupt(c, "page", pgno, detail);
    }
    if (lower < PAGE_HEADER + 2 || (lower - PAGE_HEADER) % 2 || lower > upper || upper > size) {
        snprintf(detail, sizeof detail, "lower %u upper %u in a %" PRIu32 "-byte page", lower,
                 upper, size);
        return corrupt(c, "page", pgno, detail);
    }
    uint32_t keys = (uint32_t)(lower - PAGE_HEADER) / 2;
    span *spans = malloc(keys * sizeof *spans);
    if (!spans) return MT_FAIL(MT_ERR_NOMEM, "out of memory checking %s", c->path);
    mt_status status = MT_OK;
    uint64_t used = 0;
    const uint8_t *previous = NULL;
    size_t previous_size = 0;
    for (uint32_t i = 0; i < keys && status == MT_OK; i++) {
        uint32_t at = u16(p + PAGE_HEADER + 2 * i);
        if (at < upper || at + NODE_HEADER > size) {
            snprintf(detail, sizeof detail, "node %u at offset %u, outside %u..%" PRIu32, i, at,
                     upper, size);
            status = corrupt(c, "page", pgno, detail);
            break;
        }
        const uint8_t *node = p + at;
        uint32_t key_size = u16(node + 6), flags = u16(node + 4);
        uint64_t value = (uint64_t)u16(node) | (uint64_t)u16(node + 2) << 16;
        uint64_t bytes = NODE_HEADER + (uint64_t)key_size;
        if (leaf) {
            if (flags & ~(uint32_t)F_BIGDATA) {
                snprintf(detail, sizeof detail,
                         "node %u has flags 0x%x (duplicates or a sub-database, which "
                         "mobiletune never writes)",
                         i, flags);
                status = corrupt(c, "leaf page", pgno, detail);
                break;
            }
            bytes += flags & F_BIGDATA ? 8 : value;
        }
        bytes += bytes & 1;
        if (at + bytes > size) {
            snprintf(detail, sizeof detail, "node %u (%" PRIu64 " bytes at %u) runs past the page",
                     i, bytes, at);
            status = corrupt(c, "page", pgno, detail);
            break;
        }
        spans[i] = (span){at, (uint32_t)(at + bytes)};
        used += bytes;
        /* A branch's first key is empty by construction: the order starts at its second. */
        if (leaf || i > 0) {
            if (previous && compare_keys(previous, previous_size, node + 8, key_size) >= 0) {
                snprintf(detail, sizeof detail, "key %u is not above key %u", i, i - 1);
                status = corrupt(c, "page", pgno, detail);
                break;
            }
            previous = node + 8;
            previous_size = key_size;
        }
    }
    if (status == MT_OK) {
        qsort(spans, keys, sizeof *spans, compare_spans);
        for (uint32_t i = 1; i < keys && status == MT_OK; i++)
            if (spans[i].start < spans[i - 1].end)
                status = corrupt(c, "page", pgno, "two nodes overlap");
        if (status == MT_OK && used != (uint64_t)size - upper) {
            snprintf(detail, sizeof detail, "its nodes take %" PRIu64 " bytes, its header says %u",
                     used, size - upper);
            status = corrupt(c, "page", pgno, detail);
        }
    }
    free(spans);
    if (status != MT_OK) return status;
    if (leaf) {
        c->leaf_pages++;
        c->entries += keys;
    } else {
        c->branch_pages++;
    }
    /* Children and overflow pages after the page is checked whole; `p` is this level's buffer,
     * which deeper levels leave alone. */
    for (uint32_t i = 0; i < keys; i++) {
        const uint8_t *node = p + u16(p + PAGE_HEADER + 2 * i);
        uint32_t key_size = u16(node + 6), flags = u16(node + 4);
        uint64_t low = (uint64_t)u16(node) | (uint64_t)u16(node + 2) << 16;
        if (!leaf) {
            MT_TRY(walk(c, low | (uint64_t)flags << 32, level + 1, depth));
        } else if (flags & F_BIGDATA) {
            MT_TRY(check_overflow(c, pgno, u64(node + NODE_HEADER + key_size), low));
        }
    }
    return MT_OK;
}

static mt_status check_counts(const checker *c, const table *t, uint64_t root) {
    if (c->entries == t->entries && c->branch_pages == t->branch_pages &&
        c->leaf_pages == t->leaf_pages && c->overflow_pages == t->overflow_pages)
        return MT_OK;
    char detail[300];
    snprintf(detail, sizeof detail,
             "found %" PRIu64 " entries in %" PRIu64 " branch, %" PRIu64 " leaf and %" PRIu64
             " overflow pages; the meta page says %" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64,
             c->entries, c->branch_pages, c->leaf_pages, c->overflow_pages, t->entries,
             t->branch_pages, t->leaf_pages, t->overflow_pages);
    return corrupt(c, "tree", root, detail);
}

mt_status mt_db_check(const char *data_file, mt_db_check_level level, mt_db_summary *summary) {
    checker c = {.path = data_file, .fd = -1, .read_headers = level == MT_DB_CHECK_ALL};
    bool walk_pages = level != MT_DB_CHECK_META;
    MT_TRY(mt_file_open_read(data_file, "LMDB data file", &c.fd));
    struct stat st;
    mt_status status = MT_OK;
    if (fstat(c.fd, &st) != 0) status = MT_FAIL(MT_ERR_IO, "%s: %s", data_file, strerror(errno));
    c.file_bytes = status == MT_OK ? (uint64_t)st.st_size : 0;
    meta m0 = {0}, m1 = {0};
    if (status == MT_OK) status = read_meta(&c, 0, 0, &m0);
    /* LMDB reads the second meta page at the first one's page size. */
    if (status == MT_OK) status = read_meta(&c, 1, m0.page_size, &m1);
    if (status == MT_OK && m1.page_size != m0.page_size)
        status = corrupt(&c, "meta page", 1, "its page size differs from meta page 0's");
    /* The newer snapshot is the one a reader opens (LMDB keeps page 0 on a tie). */
    const meta *m = m1.txnid > m0.txnid ? &m1 : &m0;
    c.page_size = m->page_size;
    c.last_page = m->last_page;
    if (status == MT_OK && walk_pages && m->main_table.flags != 0) {
        char detail[100];
        snprintf(detail, sizeof detail, "the main table has flags 0x%x; mobiletune writes none",
                 m->main_table.flags);
        status = corrupt(&c, "meta page", m == &m1 ? 1 : 0, detail);
    }
    if (status == MT_OK && walk_pages && m->main_table.root != NO_PAGE) {
        c.seen = calloc((size_t)(c.last_page / 8 + 1), 1);
        for (int i = 0; i < m->main_table.depth && status == MT_OK; i++)
            if (!(c.pages[i + 1] = malloc(c.page_size)))
                status = MT_FAIL(MT_ERR_NOMEM, "out of memory checking %s", data_file);
        if (!c.seen && status == MT_OK)
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory checking %s", data_file);
        if (status == MT_OK) status = walk(&c, m->main_table.root, 1, m->main_table.depth);
        if (status == MT_OK) status = check_counts(&c, &m->main_table, m->main_table.root);
        free(c.seen);
        for (int i = 0; i <= MAX_DEPTH; i++)
            free(c.pages[i]);
    }
    close(c.fd);
    if (status == MT_OK && summary)
        *summary = (mt_db_summary){.page_size = m->page_size,
                                   .last_page = m->last_page,
                                   .entries = m->main_table.entries,
                                   .pages_read = c.pages_read};
    return status;
}
