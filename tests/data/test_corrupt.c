/* Corrupt and hostile databases: a truncated data.mdb, bit flips inside a stored record (every
 * byte of it), records that are well-formed but lie (label out of range, wrong size, bad JPEG),
 * hostile or missing metadata, extra entries. Each must give an error that names the file or the
 * record key, through the random-access API and through the prefetch threads, never a crash (the
 * sanitizer build runs this too). LMDB's own structure corrupted (meta pages, tree pages) is an
 * error naming data.mdb too, never a SIGBUS or SIGSEGV. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "test_db.h"
#include "test_util.h"

enum { N = 20, H = 4, W = 5, CLASSES = 3 };

static char base_dir[4096];

/* A fresh copy of the good database in a new folder. */
static const char *fresh_copy(const char *tag) {
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s", mt_test_make_temp_dir(tag));
    if (!test_db_copy(base_dir, dir)) {
        fprintf(stderr, "cannot copy the test database\nFAILED\n");
        exit(1);
    }
    return dir;
}

static void expect_open_error(const char *dir, mt_status want, const char *needle,
                              const char *what) {
    mt_dataset *ds = NULL;
    mt_clear_error();
    mt_status st = mt_dataset_open(dir, &ds);
    CHECK_MSG(st == want, "%s: mt_dataset_open gave %s (%s)", what, mt_status_name(st),
              mt_last_error());
    CHECK_MSG(strstr(mt_last_error(), needle) != NULL, "%s: '%s' not in: %s", what, needle,
              mt_last_error());
    CHECK(ds == NULL);
    printf("%s: %s\n", what, mt_last_error());
    mt_dataset_close(ds);
    mt_loader_options o = {.world_size = 1, .batch_size = 2, .threads = 2};
    mt_loader *l = NULL;
    CHECK(mt_loader_open(dir, &o, &l) == want && l == NULL);
}

/* Read a whole epoch through `threads` prefetch threads; expect a failure naming `key`. */
static void expect_epoch_error(const char *dir, int threads, const char *key, const char *what) {
    mt_loader_options o = {.world_size = 1,
                           .batch_size = 3,
                           .threads = threads,
                           .shuffle = true,
                           .seed = 5,
                           .ring_depth = 2};
    mt_loader *l;
    TEST_MUST(mt_loader_open(dir, &o, &l));
    for (int round = 0; round < 2; round++) {
        TEST_MUST(mt_loader_start_epoch(l, (uint64_t)round, 0));
        mt_batch *b;
        mt_status st;
        int batches = 0;
        while ((st = mt_loader_next(l, &b)) == MT_OK) {
            mt_loader_release(l, b);
            batches++;
        }
        CHECK_MSG(st == MT_ERR_FORMAT, "%s, %d threads: epoch ended with %s", what, threads,
                  mt_status_name(st));
        CHECK_MSG(strstr(mt_last_error(), key) != NULL, "%s: '%s' not in: %s", what, key,
                  mt_last_error());
        /* The error sticks until the next epoch starts. */
        CHECK(mt_loader_next(l, &b) == st);
        if (round == 0 && threads == 2) printf("%s: %s\n", what, mt_last_error());
    }
    mt_loader_close(l);
}

/* Offset of `needle` in the file, or -1. */
static long find_in_file(const char *file, const void *needle, size_t n, uint8_t **contents,
                         size_t *size) {
    FILE *f = fopen(file, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    *contents = malloc(*size);
    size_t got = fread(*contents, 1, *size, f);
    fclose(f);
    if (got != *size) return -1;
    for (size_t i = 0; i + n <= *size; i++)
        if (memcmp(*contents + i, needle, n) == 0) return (long)i;
    return -1;
}

static void write_file(const char *file, const uint8_t *bytes, size_t size) {
    FILE *f = fopen(file, "wb");
    CHECK(f && fwrite(bytes, 1, size, f) == size);
    if (f) fclose(f);
}

static void test_truncated(void) {
    const char *dir = fresh_copy("corrupt-trunc");
    char file[4200];
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    struct stat st;
    CHECK(stat(file, &st) == 0);
    off_t sizes[] = {st.st_size - 1, st.st_size / 2, 3 * 4096, 8192, 4096, 100, 0};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (sizes[i] >= st.st_size) continue;
        CHECK(truncate(file, sizes[i]) == 0);
        mt_dataset *ds = NULL;
        mt_clear_error();
        mt_status status = mt_dataset_open(dir, &ds);
        CHECK_MSG(status != MT_OK, "truncated to %ld bytes but opened", (long)sizes[i]);
        CHECK_MSG(strstr(mt_last_error(), dir) != NULL, "error does not name the dataset: %s",
                  mt_last_error());
        printf("truncated to %ld: %s\n", (long)sizes[i], mt_last_error());
        if (sizes[i] >= 8192)
            CHECK_MSG(strstr(mt_last_error(), "truncated") != NULL, "%ld: %s", (long)sizes[i],
                      mt_last_error());
        mt_dataset_close(ds);
    }
    mt_test_remove_tree(dir);
}

static void test_bit_flips(void) {
    const char *dir = fresh_copy("corrupt-flip");
    char file[4200];
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    uint8_t *bytes;
    size_t size;
    const char *name = "img/000012.png";
    long at = find_in_file(file, name, strlen(name), &bytes, &size);
    CHECK_MSG(at > 0, "record 12's name not found in data.mdb");
    if (at <= 0) return;
    long record_start = at - H * W * 3 - 32;
    CHECK(memcmp(bytes + record_start, "MTR1", 4) == 0);
    long record_end = at + (long)strlen(name);
    /* Every byte of the stored record, one bit each (a different bit per byte). */
    int not_caught = 0;
    for (long i = record_start; i < record_end; i++) {
        bytes[i] ^= (uint8_t)(1u << (i % 8));
        write_file(file, bytes, size);
        bytes[i] ^= (uint8_t)(1u << (i % 8));
        mt_dataset *ds;
        TEST_MUST(mt_dataset_open(dir, &ds));
        uint8_t pixels[H * W * 3];
        int32_t label;
        mt_clear_error();
        mt_status st = mt_dataset_get(ds, 12, pixels, &label, NULL, 0);
        if (st != MT_ERR_FORMAT || !strstr(mt_last_error(), "0000000012")) {
            fprintf(stderr, "flip at record byte %ld: %s: %s\n", i - record_start,
                    mt_status_name(st), mt_last_error());
            not_caught++;
        }
        /* Its neighbours are unaffected. */
        CHECK(mt_dataset_get(ds, 11, pixels, &label, NULL, 0) == MT_OK);
        CHECK(mt_dataset_get(ds, 13, pixels, &label, NULL, 0) == MT_OK);
        mt_dataset_close(ds);
    }
    CHECK_MSG(not_caught == 0, "%d flipped bytes went unnoticed", not_caught);
    /* A pixel flip, read through the prefetch threads. */
    bytes[record_start + 40] ^= 0x10;
    write_file(file, bytes, size);
    for (int threads = 0; threads <= 3; threads++)
        expect_epoch_error(dir, threads, "0000000012", "pixel flip");
    free(bytes);
    mt_test_remove_tree(dir);
}

/* Records that parse but lie about themselves. */
static void test_lying_records(void) {
    uint8_t pixels[64 * 64 * 3] = {0};
    struct {
        mt_record record;
        const char *needle;
    } cases[] = {
        {{.encoding = MT_ENCODING_RAW,
          .channels = 3,
          .height = H,
          .width = W,
          .label = CLASSES,
          .payload = pixels,
          .payload_bytes = H * W * 3},
         "label"},
        {{.encoding = MT_ENCODING_RAW,
          .channels = 3,
          .height = 64,
          .width = 64,
          .label = 0,
          .payload = pixels,
          .payload_bytes = 64 * 64 * 3},
         "64x64"},
        {{.encoding = MT_ENCODING_JPEG,
          .channels = 3,
          .height = H,
          .width = W,
          .label = 0,
          .payload = pixels,
          .payload_bytes = 100},
         "0000000007"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *dir = fresh_copy("corrupt-lie");
        size_t size = mt_record_encoded_size(&cases[k].record);
        uint8_t *buf = malloc(size);
        mt_record_encode(&cases[k].record, buf);
        CHECK(test_db_put(dir, "0000000007", buf, size));
        free(buf);
        mt_dataset *ds;
        TEST_MUST(mt_dataset_open(dir, &ds));
        mt_clear_error();
        CHECK(mt_dataset_get(ds, 7, pixels, NULL, NULL, 0) == MT_ERR_FORMAT);
        CHECK_MSG(strstr(mt_last_error(), "0000000007") && strstr(mt_last_error(), cases[k].needle),
                  "case %zu: %s", k, mt_last_error());
        mt_dataset_close(ds);
        expect_epoch_error(dir, 2, "0000000007", cases[k].needle);
        mt_test_remove_tree(dir);
    }
    /* A JPEG that decodes to the wrong size. */
    uint8_t *jpeg;
    size_t jpeg_bytes;
    TEST_MUST(mt_image_encode_jpeg(pixels, 8, 8, 90, &jpeg, &jpeg_bytes));
    mt_record r = {.encoding = MT_ENCODING_JPEG,
                   .channels = 3,
                   .height = H,
                   .width = W,
                   .payload = jpeg,
                   .payload_bytes = jpeg_bytes};
    const char *dir = fresh_copy("corrupt-jpeg");
    size_t size = mt_record_encoded_size(&r);
    uint8_t *buf = malloc(size);
    mt_record_encode(&r, buf);
    CHECK(test_db_put(dir, "0000000003", buf, size));
    free(buf);
    free(jpeg);
    expect_epoch_error(dir, 1, "0000000003", "JPEG of the wrong size");
    mt_test_remove_tree(dir);

    /* Not a record at all. */
    dir = fresh_copy("corrupt-garbage");
    CHECK(test_db_put(dir, "0000000019", "hello", 5));
    expect_epoch_error(dir, 3, "0000000019", "garbage value");
    mt_test_remove_tree(dir);
}

static void test_bad_meta(void) {
    const char *good = "mobiletune-dataset 1\nrecords 20\nheight 4\nwidth 5\nchannels 3\n"
                       "encoding raw\nsplit train\nmean 1 2 3\nstd 1 2 3\nclasses 3\n"
                       "class 0 7 a\nclass 1 7 b\nclass 2 6 c\noptions x\n";
    const char *dir = fresh_copy("corrupt-meta");
    /* Sanity: the replacement text itself is accepted. */
    CHECK(test_db_put(dir, MT_META_KEY, good, strlen(good)));
    mt_dataset *ds;
    TEST_MUST(mt_dataset_open(dir, &ds));
    mt_dataset_close(ds);
    struct {
        const char *text;
        size_t size;
        mt_status want;
        const char *needle;
    } cases[] = {
        {"mobiletune-dataset 1\nrecords 21\n", 0, MT_ERR_FORMAT, "meta"},
        {"\x00\x01\x02garbage", 10, MT_ERR_FORMAT, "meta"},
        {"", 0, MT_ERR_FORMAT, "meta"},
        /* Consistent metadata that disagrees with the database. */
        {"mobiletune-dataset 1\nrecords 19\nheight 4\nwidth 5\nchannels 3\nencoding raw\n"
         "split train\nmean 1 2 3\nstd 1 2 3\nclasses 3\nclass 0 7 a\nclass 1 6 b\nclass 2 6 c\n"
         "options x\n",
         0, MT_ERR_FORMAT, "entries"},
        {"mobiletune-dataset 1\nrecords 20\nheight 4\nwidth 6\nchannels 3\nencoding raw\n"
         "split train\nmean 1 2 3\nstd 1 2 3\nclasses 3\nclass 0 7 a\nclass 1 7 b\nclass 2 6 c\n"
         "options x\n",
         0, MT_OK, NULL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t n = cases[k].size ? cases[k].size : strlen(cases[k].text);
        CHECK(test_db_put(dir, MT_META_KEY, cases[k].text, n));
        if (cases[k].want != MT_OK) {
            expect_open_error(dir, cases[k].want, cases[k].needle, "hostile meta");
        } else {
            /* Opens, but every record is the wrong size. */
            expect_epoch_error(dir, 2, "is 4x5, but the dataset is 4x6", "meta size mismatch");
        }
    }
    mt_test_remove_tree(dir);

    /* A one-byte metadata record, and none at all. */
    dir = mt_test_make_temp_dir("corrupt-tinymeta");
    test_db_spec spec = {.count = 2, .height = 4, .width = 4, .classes = 1, .meta_text = "x"};
    CHECK(test_db_create(dir, &spec));
    expect_open_error(dir, MT_ERR_FORMAT, "meta", "one-byte meta");
    mt_test_remove_tree(dir);
    dir = mt_test_make_temp_dir("corrupt-nometa");
    spec.no_meta = true;
    CHECK(test_db_create(dir, &spec));
    expect_open_error(dir, MT_ERR_FORMAT, "no 'meta' record", "no meta");
    mt_test_remove_tree(dir);

    /* An extra record beyond the count. */
    dir = fresh_copy("corrupt-extra");
    CHECK(test_db_put(dir, "0000000020", "x", 1));
    expect_open_error(dir, MT_ERR_FORMAT, "entries", "extra record");
    mt_test_remove_tree(dir);

    /* Not a dataset folder at all. */
    dir = mt_test_make_temp_dir("corrupt-empty");
    expect_open_error(dir, MT_ERR_IO, dir, "empty folder");
    mt_test_remove_tree(dir);
}

/* Flip `mask` into the byte at `offset` of `file` (again to undo). */
static void flip_byte(const char *file, long offset, uint8_t mask) {
    FILE *f = fopen(file, "r+b");
    uint8_t b = 0;
    CHECK(f && fseek(f, offset, SEEK_SET) == 0 && fread(&b, 1, 1, f) == 1);
    b ^= mask;
    CHECK(f && fseek(f, offset, SEEK_SET) == 0 && fwrite(&b, 1, 1, f) == 1);
    if (f) fclose(f);
}

/* Open and read every record; returns the status of the first failure (a signal fails the test
 * by itself). */
static mt_status open_and_read_all(const char *dir) {
    mt_dataset *ds = NULL;
    mt_status st = mt_dataset_open(dir, &ds);
    for (uint64_t i = 0; st == MT_OK && i < mt_dataset_count(ds); i++) {
        int32_t label;
        char name[64];
        st = mt_dataset_get(ds, i, NULL, &label, name, sizeof name);
    }
    mt_dataset_close(ds);
    return st;
}

/* LMDB's own structure corrupted (meta pages, branch and leaf pages, overflow headers): the open
 * checks it by pread before LMDB maps a page, so each case is an error naming data.mdb, never a
 * SIGBUS or SIGSEGV. The two cases found by hand first, then every byte of the structural pages
 * of a small database (inline values) and of one whose records live on overflow pages. */
static void test_lmdb_structure(int height, int width, const char *tag) {
    const char *dir = mt_test_make_temp_dir(tag);
    test_db_spec spec = {.count = 12, .height = height, .width = width, .classes = CLASSES};
    if (!test_db_create(dir, &spec)) {
        CHECK(false);
        return;
    }
    char file[4200];
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    struct stat st;
    CHECK(stat(file, &st) == 0);
    CHECK(open_and_read_all(dir) == MT_OK);
    /* The second meta page's page size (4096 + 40) set to 0xff..: SIGBUS before the check. */
    for (int i = 0; i < 8; i++)
        flip_byte(file, 4096 + 40 + i, 0xff);
    mt_clear_error();
    CHECK(open_and_read_all(dir) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), file) && strstr(mt_last_error(), "meta page (page 1") &&
                  strstr(mt_last_error(), "page size"),
              "%s", mt_last_error());
    printf("meta page 1 page size: %s\n", mt_last_error());
    mt_loader_options options = {.world_size = 1, .batch_size = 2, .threads = 2};
    mt_loader *loader = NULL;
    CHECK(mt_loader_open(dir, &options, &loader) == MT_ERR_FORMAT && loader == NULL);
    for (int i = 0; i < 8; i++)
        flip_byte(file, 4096 + 40 + i, 0xff);
    /* A node offset of the first data page. */
    flip_byte(file, 2 * 4096 + 16, 0xff);
    mt_clear_error();
    CHECK(open_and_read_all(dir) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), file) && strstr(mt_last_error(), "corrupt LMDB"), "%s",
              mt_last_error());
    printf("page 2 node offset: %s\n", mt_last_error());
    CHECK(mt_loader_open(dir, &options, &loader) == MT_ERR_FORMAT && loader == NULL);
    flip_byte(file, 2 * 4096 + 16, 0xff);
    CHECK(open_and_read_all(dir) == MT_OK);

    /* Every byte of each meta page's fields, and of the header and first node offsets of every
     * page that is not an overflow page, then every 31st byte of the rest of it (a node's header
     * or key or value: kept few so the test stays fast), flipped whole and in its lowest bit. */
    uint8_t header[16];
    long pages = (long)(st.st_size / 4096), mutations = 0, refused = 0;
    for (long page = 0; page < pages; page++) {
        FILE *f = fopen(file, "rb");
        CHECK(f && fseek(f, page * 4096, SEEK_SET) == 0 && fread(header, 1, 16, f) == 16);
        if (f) fclose(f);
        /* An overflow page: its header only (the rest is the record's bytes, checked by its CRC) */
        long end = page < 2 ? 152 : header[10] & 0x04 ? 16 : 4096;
        for (long at = page * 4096; at < page * 4096 + end; at += at - page * 4096 < 64 ? 1 : 31) {
            for (int m = 0; m < 2; m++) {
                uint8_t mask = m ? 0x01 : 0xff;
                flip_byte(file, at, mask);
                mt_status got = open_and_read_all(dir);
                flip_byte(file, at, mask);
                mutations++;
                refused += got != MT_OK;
                CHECK_MSG(got == MT_OK || strstr(mt_last_error(), dir) != NULL,
                          "flip at %ld: the error does not name the dataset: %s", at,
                          mt_last_error());
            }
        }
    }
    printf("%s: %ld mutations of the LMDB structure, %ld refused, none crashed\n", tag, mutations,
           refused);
    CHECK(mutations > 500 && refused > 100);
    CHECK(open_and_read_all(dir) == MT_OK);
    mt_test_remove_tree(dir);
}

int main(void) {
    snprintf(base_dir, sizeof base_dir, "%s", mt_test_make_temp_dir("corrupt-base"));
    test_db_spec spec = {.count = N, .height = H, .width = W, .classes = CLASSES};
    if (!test_db_create(base_dir, &spec)) {
        CHECK(false);
        return mt_test_finish();
    }
    test_truncated();
    test_bit_flips();
    test_lying_records();
    test_bad_meta();
    test_lmdb_structure(H, W, "corrupt-lmdb-inline");
    test_lmdb_structure(48, 48, "corrupt-lmdb-overflow");
    mt_test_remove_tree(base_dir);
    return mt_test_finish();
}
