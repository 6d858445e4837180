/* Fuzz target for the Keras HDF5 weights reader (src/io/keras_h5_read.c): any bytes, opened as a
 * weights file, must open or fail with a status, and every tensor it indexes must read or fail
 * the same way, a read that succeeds giving only finite values. Found by this under UBSan: a
 * signed overflow counting a crafted tensor's values.
 *
 * The bytes go to a temporary file, since the reader (and libhdf5, which resolves the real path)
 * take a path.
 * libhdf5 itself is not hardened against hostile files: what this guards is our code around it
 * (the indexing, the counts, the checks before a read). */
#define _XOPEN_SOURCE 700
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz_temp_file.h"
#include "mobiletune/keras_h5.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Tensors larger than this are indexed but not read: a fuzzed shape may claim gigabytes. */
enum { MAX_READ_VALUES = 1 << 16 };

static void fail(const char *what) {
    fprintf(stderr, "fuzz_h5: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_temp_write("fuzz_h5", data, size);
    mt_keras_h5 *file = NULL;
    mt_status opened = mt_keras_h5_open(path, &file);
    if (getenv("MT_FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_h5: %zu bytes: %s\n", size,
                opened == MT_OK ? "opened" : mt_last_error());
    if (opened == MT_OK) {
        size_t count = mt_keras_h5_count(file);
        for (size_t i = 0; i < count; i++) {
            const mt_keras_h5_tensor *t = mt_keras_h5_tensor_at(file, i);
            if (!t) fail("a listed tensor is missing");
            if (t->count < 0 || t->rank < 0 || t->rank > MT_KERAS_H5_MAX_RANK)
                fail("an indexed tensor has a negative count or a bad rank");
            int64_t product = 1;
            for (int d = 0; d < t->rank; d++) {
                if (t->shape[d] < 0 || __builtin_mul_overflow(product, t->shape[d], &product))
                    fail("an indexed tensor's shape overflows");
            }
            if (product != t->count) fail("count is not the product of the shape");
            if (t->count > MAX_READ_VALUES) continue;
            float *values = malloc((size_t)(t->count ? t->count : 1) * sizeof *values);
            if (!values) continue;
            if (mt_keras_h5_read(file, t->layer, t->weight, t->shape, t->rank, values) == MT_OK)
                for (int64_t k = 0; k < t->count; k++)
                    if (!isfinite(values[k])) fail("a read gave a non-finite value");
            free(values);
        }
        mt_keras_h5_close(file);
    } else if (file) {
        fail("a failed open returned a file");
    }
    return 0;
}
