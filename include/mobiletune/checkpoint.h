/* Checkpoints in the safetensors format, readable outside mobiletune (Python's `safetensors`, or
 * a few lines of struct + json + numpy; docs/checkpoints.md):
 *
 *   u64 little-endian N | N bytes of JSON header (padded with spaces to a multiple of 8) | data
 *   header: {"__metadata__": {"key": "value", ...},
 *            "name": {"dtype": "F32", "shape": [3, 3, 32, 1], "data_offsets": [begin, end]}, ...}
 *   data: every tensor's bytes, little-endian, row-major, at [begin, end) from the data start,
 *         back to back with no gap (as the format requires).
 *
 * A checkpoint is built in memory (tensors are copied in), then written atomically: to
 * `<path>.tmp-<pid>`, fsync'ed, renamed over `path`, and the folder fsync'ed, so a crash at any
 * moment leaves either the previous file or the new one, never a mix. Reading loads the whole
 * file and validates everything before anything is used: header length, JSON syntax (libjansson,
 * duplicate keys refused; then only this header's shape), dtypes, shapes, offsets in bounds, sizes
 * matching shapes, no overlap or gap, no duplicate names. Errors name the file and the tensor. */
#ifndef MOBILETUNE_CHECKPOINT_H
#define MOBILETUNE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mt_checkpoint_dtype {
    MT_CHECKPOINT_F32 = 0, /* "F32" */
    MT_CHECKPOINT_U8,      /* "U8": opaque blobs (RNG state, loader position) */
    MT_CHECKPOINT_I64,     /* "I64" */
    MT_CHECKPOINT_U64,     /* "U64" */
} mt_checkpoint_dtype;

enum {
    MT_CHECKPOINT_MAX_RANK = 8,
    MT_CHECKPOINT_NAME_MAX = 256, /* bytes of a tensor or metadata key name, NUL included */
};

typedef struct mt_checkpoint_tensor {
    const char *name;
    mt_checkpoint_dtype dtype;
    int rank;
    uint64_t shape[MT_CHECKPOINT_MAX_RANK];
    uint64_t count;   /* elements: the product of shape (1 for rank 0) */
    const void *data; /* count elements; owned by the checkpoint; 8-byte aligned */
    size_t bytes;
} mt_checkpoint_tensor;

typedef struct mt_checkpoint mt_checkpoint;

/* An empty checkpoint to fill. */
mt_status mt_checkpoint_create(mt_checkpoint **out);
void mt_checkpoint_free(mt_checkpoint *checkpoint);

/* Add a tensor (its bytes are copied). Names are unique, non-empty, shorter than
 * MT_CHECKPOINT_NAME_MAX and not "__metadata__". shape: rank dims (rank 0: a scalar). */
mt_status mt_checkpoint_add(mt_checkpoint *checkpoint, const char *name, mt_checkpoint_dtype dtype,
                            int rank, const uint64_t *shape, const void *data);
/* Shorthands: a float tensor with an int shape (Keras' shapes), and a 1-D byte blob. */
mt_status mt_checkpoint_add_f32(mt_checkpoint *checkpoint, const char *name, int rank,
                                const int *shape, const float *data);
mt_status mt_checkpoint_add_blob(mt_checkpoint *checkpoint, const char *name, const void *data,
                                 size_t bytes);

/* Set (or replace) a metadata string: config text, step, epoch, optimizer name, ... */
mt_status mt_checkpoint_set_meta(mt_checkpoint *checkpoint, const char *key, const char *value);

/* Write atomically (see the top). For tests, two environment variables break a write after
 * N bytes of the file: MT_CHECKPOINT_TEST_FAIL_AT=N returns an error (the temporary file is
 * removed), MT_CHECKPOINT_TEST_KILL_AT=N kills the process with SIGKILL (it stays behind). */
mt_status mt_checkpoint_write(const mt_checkpoint *checkpoint, const char *path);

/* Read and validate a whole file. Every tensor's CRC-32 (metadata "crc32:<name>", written by
 * mt_checkpoint_write for every tensor) is checked and the entries are not listed as metadata; a
 * file that has none (written by another tool) is read without. */
mt_status mt_checkpoint_read(const char *path, mt_checkpoint **out);

/* After a read: how many tensors had their checksum checked (0: the file has none). */
int mt_checkpoint_checksums_verified(const mt_checkpoint *checkpoint);

/* MT_ERR_FORMAT naming the tensor and the index of the first NaN or infinity in F32 tensor
 * `name`, or in every F32 tensor when `name` is NULL. Weights are checked where they are loaded
 * (a checkpoint may hold any float: the format does not forbid them). */
mt_status mt_checkpoint_check_finite(const mt_checkpoint *checkpoint, const char *name);

int mt_checkpoint_tensor_count(const mt_checkpoint *checkpoint);
/* Tensors in file order (by offset) after a read, in insertion order while building. */
const mt_checkpoint_tensor *mt_checkpoint_tensor_at(const mt_checkpoint *checkpoint, int index);
const mt_checkpoint_tensor *mt_checkpoint_find(const mt_checkpoint *checkpoint, const char *name);

/* Copy tensor `name` out, checking that it exists, is F32 and has `count` elements; errors name
 * the file and the tensor. With `shape` (rank dims), the shape must match too. */
mt_status mt_checkpoint_get_f32(const mt_checkpoint *checkpoint, const char *name, float *out,
                                size_t count, int rank, const int *shape);

int mt_checkpoint_meta_count(const mt_checkpoint *checkpoint);
/* The metadata in insertion (write) or file (read) order; key or value NULL past the end. */
void mt_checkpoint_meta_at(const mt_checkpoint *checkpoint, int index, const char **key,
                           const char **value);
/* The value for `key`, or NULL. */
const char *mt_checkpoint_meta(const mt_checkpoint *checkpoint, const char *key);

/* The file the checkpoint was read from ("" when built in memory). */
const char *mt_checkpoint_path(const mt_checkpoint *checkpoint);

const char *mt_checkpoint_dtype_name(mt_checkpoint_dtype dtype); /* "F32", ... */
size_t mt_checkpoint_dtype_size(mt_checkpoint_dtype dtype);

#ifdef __cplusplus
}
#endif
#endif
