/* The packed-dataset format: one header shared by the packer (data-prep/) and the loader
 * (src/data). docs/formats.md documents the same layout for readers outside mobiletune.
 *
 * A dataset is one LMDB environment (a folder holding data.mdb) with one unnamed database:
 *   key "0000000000" ... "%010llu"   one image record each, numbered 0..count-1 without gaps
 *   key "meta"                       the dataset metadata (mt_dataset_meta), UTF-8 text
 * Record keys are fixed-width decimal so that LMDB's byte order is numeric order and mdb_dump shows
 * them readably; "meta" sorts after every record key.
 *
 * A record is a 32-byte little-endian header, the payload, then the source name:
 *   offset size field
 *        0    4 magic          MT_RECORD_MAGIC ("MTR1")
 *        4    2 version        MT_RECORD_VERSION
 *        6    1 encoding       mt_record_encoding
 *        7    1 channels       3 (RGB)
 *        8    2 height
 *       10    2 width
 *       12    4 label          class id, < the dataset's class count
 *       16    4 payload_bytes  raw: height*width*channels; jpeg: the JPEG stream's length
 *       20    4 crc32          zlib crc32 of every other byte of the record (offsets 0..19, then 24
 *                              to the end: header, payload, name), so a bit flip LMDB cannot see
 *                              is caught wherever it lands, the label included
 *       24    2 name_bytes     length of the source name that follows the payload
 *       26    6 reserved       zero
 *       32    payload_bytes    pixels, uint8 HWC RGB (raw) or a JPEG stream (jpeg)
 *       ..    name_bytes       source path relative to the packer's input, not NUL-terminated
 */
#ifndef MOBILETUNE_RECORD_H
#define MOBILETUNE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_RECORD_MAGIC 0x3152544Du /* bytes 'M' 'T' 'R' '1' read as little-endian uint32 */
#define MT_RECORD_VERSION 1
#define MT_RECORD_HEADER_BYTES 32
#define MT_RECORD_KEY_BYTES 10 /* "%010llu", without the NUL */
#define MT_META_KEY "meta"
#define MT_META_MAGIC "mobiletune-dataset" /* the first word of the metadata text */
#define MT_META_VERSION 1
#define MT_MAX_CLASSES 65536
#define MT_MAX_IMAGE_SIDE 4096

typedef enum mt_record_encoding {
    MT_ENCODING_RAW = 0,  /* uint8 HWC RGB, height*width*3 bytes */
    MT_ENCODING_JPEG = 1, /* a baseline JPEG stream of height x width RGB */
} mt_record_encoding;

/* One record, parsed: pointers into the bytes it was parsed from (LMDB memory stays valid while
 * its read transaction is open). */
typedef struct mt_record {
    mt_record_encoding encoding;
    int channels, height, width;
    uint32_t label;
    const uint8_t *payload;
    size_t payload_bytes;
    const char *name; /* not NUL-terminated */
    size_t name_bytes;
} mt_record;

/* The key of record `index`: exactly MT_RECORD_KEY_BYTES digits plus a NUL. */
void mt_record_key(uint64_t index, char key[MT_RECORD_KEY_BYTES + 1]);

/* Bytes that mt_record_encode() writes for `record`. */
size_t mt_record_encoded_size(const mt_record *record);

/* Serialize `record` (header, payload, name) into `dst`, which holds mt_record_encoded_size()
 * bytes; the CRC is computed here. The payload may already be in place at
 * dst + MT_RECORD_HEADER_BYTES (it is then not copied); it must not overlap dst otherwise. */
void mt_record_encode(const mt_record *record, uint8_t *dst);

/* Validate and parse `size` bytes stored under `key` (used in error messages). Every field is
 * checked (magic, version, encoding, reserved bytes, sizes against `size`, raw size against
 * h*w*c, no trailing bytes, CRC), so
 * corrupt or hostile bytes give MT_ERR_FORMAT naming the key, never an out-of-bounds read. */
mt_status mt_record_parse(const void *data, size_t size, const char *key, mt_record *out);

/* The metadata record. */
typedef struct mt_dataset_meta {
    int version;
    uint64_t record_count;
    int height, width, channels;
    mt_record_encoding encoding;
    int class_count;
    char **class_names;      /* [class_count], owned */
    uint64_t *class_counts;  /* [class_count] records per class in this database */
    double mean[3], std[3];  /* per RGB channel over every packed pixel, in 0..255 */
    char *split;             /* "train", "val", "test" or "all"; owned */
    char *options;           /* the packer's options, one line; owned */
} mt_dataset_meta;

/* Text form of `meta` (malloc'd, NUL-terminated; *out_bytes excludes the NUL). */
mt_status mt_meta_format(const mt_dataset_meta *meta, char **out_text, size_t *out_bytes);

/* Parse and validate the metadata text (bounded by `size`, need not be NUL-terminated). */
mt_status mt_meta_parse(const void *data, size_t size, mt_dataset_meta *out);

void mt_meta_free(mt_dataset_meta *meta);

/* Where two class lists meet (train/val/test databases, a checkpoint's class_names and a
 * database) they must be the same names in the same order, since a label is a position in the
 * list: comparing counts alone lets cats/dogs meet dogs/zcats and report accuracy 0 as a result.
 * True when `a` and `b` are equal; otherwise false, with `message` (`capacity` bytes, may be 0)
 * saying how they differ: "2 classes against 3 (...)" or "class 0 is 'cats' against 'dogs'". */
bool mt_class_names_same(const char *const *a, int a_count, const char *const *b, int b_count,
                         char *message, size_t capacity);

/* mt_class_names_same() on two databases' metadata (what the trainer compares for train/val). */
bool mt_dataset_meta_same_classes(const mt_dataset_meta *a, const mt_dataset_meta *b,
                                  char *message, size_t capacity);

#ifdef __cplusplus
}
#endif
#endif
