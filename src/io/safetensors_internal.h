/* What the three parts of the safetensors checkpoints share: the in-memory object
 * (safetensors.c), its JSON header (safetensors_header.c, with libjansson) and the file, written
 * atomically and read with its checksums verified (safetensors_file.c). */
#ifndef MT_IO_SAFETENSORS_INTERNAL_H
#define MT_IO_SAFETENSORS_INTERNAL_H

#include "mobiletune/checkpoint.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error                                                                                             \
    "checkpoints are written and read as raw little-endian memory: a little-endian host is needed"
#endif

/* The safetensors reference implementation refuses larger headers, and so do we. */
enum { MT_SAFETENSORS_HEADER_MAX = 100000000 };
#define MT_SAFETENSORS_METADATA_KEY "__metadata__"
/* Each tensor's CRC-32 (zlib's, Python's zlib.crc32) is the metadata entry "crc32:<name>", 8 hex
 * digits; written for every tensor, checked and removed from the metadata list on read. */
#define MT_SAFETENSORS_CRC_PREFIX "crc32:"
enum { MT_SAFETENSORS_CRC_PREFIX_LENGTH = sizeof MT_SAFETENSORS_CRC_PREFIX - 1 };

struct mt_checkpoint {
    char path[4096];
    int count, capacity;
    mt_checkpoint_tensor *tensors; /* names and (when built) data are owned per tensor */
    int meta_count, meta_capacity;
    char **meta_keys, **meta_values;
    void *storage;          /* after a read: all the tensors' data, tensors point into it */
    int checksums_verified; /* after a read: tensors whose crc32 entry matched */
};

/* A tensor as the header describes it, before its data is read. */
typedef struct mt_safetensors_entry {
    char *name;
    mt_checkpoint_dtype dtype;
    int rank;
    uint64_t shape[MT_CHECKPOINT_MAX_RANK];
    uint64_t begin, end;
} mt_safetensors_entry;

/* count = product of shape, bytes = count * size, both without overflow. */
bool mt_safetensors_element_count(int rank, const uint64_t *shape, mt_checkpoint_dtype dtype,
                                  uint64_t *count, uint64_t *bytes);
/* Add or replace a metadata entry; takes ownership of key and value (freed on failure). */
mt_status mt_safetensors_meta_put(mt_checkpoint *checkpoint, char *key, char *value);

/* The header for the tensors in data order (`order`): JSON, padded with spaces to a multiple of
 * 8 bytes; *out is malloc'ed. */
mt_status mt_safetensors_header_build(const mt_checkpoint *checkpoint, const int *order, char **out,
                                      size_t *size);
/* Parse header[0..size) of the file `path`: the metadata goes into checkpoint, the tensors into
 * *out (malloc'ed, names owned by the entries, also on failure), each checked against the
 * data_size bytes that follow the header (in bounds, sizes matching shapes, no overlap or gap). */
mt_status mt_safetensors_header_parse(const char *path, const char *header, size_t size,
                                      uint64_t data_size, mt_checkpoint *checkpoint,
                                      mt_safetensors_entry **out, int *out_count);

#endif
