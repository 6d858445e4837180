/* Building small packed datasets for the loader tests directly with record.h + LMDB (independent
 * of mobiletune-pack), with pixels that are a known function of (record, y, x, channel). */
#ifndef MT_TEST_DB_H
#define MT_TEST_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stdio.h>
#include <stdlib.h>

#include "mobiletune/record.h"

/* A call that must succeed for the rest of the test to mean anything: print and exit(1). */
#define TEST_MUST(call)                                                                            \
    do {                                                                                           \
        mt_status test_must_ = (call);                                                             \
        if (test_must_ != MT_OK) {                                                                 \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\nFAILED\n", __FILE__, __LINE__, #call,       \
                    mt_status_name(test_must_), mt_last_error());                                  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

typedef struct test_db_spec {
    int count, height, width, classes;
    mt_record_encoding encoding; /* JPEG: pixels encoded at quality 100 by mt_image_encode_jpeg */
    const char *meta_text;       /* overrides the generated metadata when not NULL */
    bool no_meta;                /* write no metadata record at all */
} test_db_spec;

/* The pixel value of record i at (y, x, c), and its label. */
static inline uint8_t test_db_pixel(int i, int y, int x, int c) {
    return (uint8_t)(i * 37 + y * 11 + x * 3 + c * 85 + (x * y) % 7);
}
static inline int test_db_label(int i, int classes) {
    return (i * 7 + 3) % classes;
}

/* Pixels of record i (h*w*3). */
void test_db_pixels(int i, int h, int w, uint8_t *out);

/* Create `dir` (must exist, empty) as a dataset. Returns false (with a message) on failure. */
bool test_db_create(const char *dir, const test_db_spec *spec);

/* Replace (or add) the value under `key` with `bytes`. */
bool test_db_put(const char *dir, const char *key, const void *bytes, size_t size);

/* Copy a dataset folder's data.mdb into another (existing) folder. */
bool test_db_copy(const char *from_dir, const char *to_dir);

#endif
