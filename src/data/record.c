/* The image record of the packed dataset (layout in include/mobiletune/record.h and
 * docs/formats.md): key naming, encoding and a parser that trusts nothing in the bytes it reads.
 * Every field is read with explicit little-endian loads so the format is the same on any host. */
#include "mobiletune/record.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <isa-l/crc.h>

static uint16_t load_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void store_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void store_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

enum { CRC_OFFSET = 20 };

/* The CRC covers every byte of the record but its own four, so a flipped label or name is caught
 * as surely as a flipped pixel. It is the CRC-32 of zlib and gzip (what Python's zlib.crc32
 * checks in the tests), computed by ISA-L: its carry-less-multiply folding runs at ~11 GB/s
 * where zlib's table code does ~2.3, and every record is checked each time the loader reads it. */
static uint32_t record_crc(const uint8_t *record, size_t size) {
    uint32_t crc = crc32_gzip_refl(0, record, CRC_OFFSET);
    return crc32_gzip_refl(crc, record + CRC_OFFSET + 4, size - CRC_OFFSET - 4);
}

void mt_record_key(uint64_t index, char key[MT_RECORD_KEY_BYTES + 1]) {
    /* Indices beyond 10 digits cannot be represented; the packer and loader both cap counts at
     * 9999999999, so reduce rather than overflow the buffer. */
    snprintf(key, MT_RECORD_KEY_BYTES + 1, "%010" PRIu64, index % UINT64_C(10000000000));
}

size_t mt_record_encoded_size(const mt_record *record) {
    return MT_RECORD_HEADER_BYTES + record->payload_bytes + record->name_bytes;
}

void mt_record_encode(const mt_record *record, uint8_t *dst) {
    MT_ASSERT(record->payload_bytes <= UINT32_MAX && record->name_bytes <= UINT16_MAX);
    MT_ASSERT(record->height > 0 && record->height <= UINT16_MAX);
    MT_ASSERT(record->width > 0 && record->width <= UINT16_MAX);
    MT_ASSERT(record->channels > 0 && record->channels <= UINT8_MAX);
    memset(dst, 0, MT_RECORD_HEADER_BYTES);
    store_u32(dst + 0, MT_RECORD_MAGIC);
    store_u16(dst + 4, MT_RECORD_VERSION);
    dst[6] = (uint8_t)record->encoding;
    dst[7] = (uint8_t)record->channels;
    store_u16(dst + 8, (uint16_t)record->height);
    store_u16(dst + 10, (uint16_t)record->width);
    store_u32(dst + 12, record->label);
    store_u32(dst + 16, (uint32_t)record->payload_bytes);
    store_u16(dst + 24, (uint16_t)record->name_bytes);
    /* The packer resizes straight into dst's payload: then there is nothing to copy. */
    if (record->payload_bytes > 0 && record->payload != dst + MT_RECORD_HEADER_BYTES)
        memcpy(dst + MT_RECORD_HEADER_BYTES, record->payload, record->payload_bytes);
    if (record->name_bytes > 0)
        memcpy(dst + MT_RECORD_HEADER_BYTES + record->payload_bytes, record->name,
               record->name_bytes);
    store_u32(dst + CRC_OFFSET, record_crc(dst, mt_record_encoded_size(record)));
}

mt_status mt_record_parse(const void *data, size_t size, const char *key, mt_record *out) {
    const uint8_t *bytes = data;
    if (!key) key = "(no key)";
    memset(out, 0, sizeof *out);
    if (!data && size > 0) return MT_FAIL(MT_ERR_INVALID, "record '%s': NULL data", key);
    if (size < MT_RECORD_HEADER_BYTES)
        return MT_FAIL(MT_ERR_FORMAT,
                       "record '%s': %zu bytes is shorter than the %d-byte record header "
                       "(truncated or not a mobiletune record)",
                       key, size, MT_RECORD_HEADER_BYTES);
    uint32_t magic = load_u32(bytes + 0);
    if (magic != MT_RECORD_MAGIC)
        return MT_FAIL(MT_ERR_FORMAT,
                       "record '%s': bad magic 0x%08" PRIx32 " (want 0x%08x 'MTR1'): not a "
                       "mobiletune record or corrupted",
                       key, magic, MT_RECORD_MAGIC);
    unsigned version = load_u16(bytes + 4);
    if (version != MT_RECORD_VERSION)
        return MT_FAIL(MT_ERR_FORMAT,
                       "record '%s': record version %u is not supported (this build reads "
                       "version %d): repack the dataset with this mobiletune-pack",
                       key, version, MT_RECORD_VERSION);
    unsigned encoding = bytes[6];
    if (encoding != MT_ENCODING_RAW && encoding != MT_ENCODING_JPEG)
        return MT_FAIL(MT_ERR_FORMAT, "record '%s': unknown encoding %u (0 raw, 1 jpeg)", key,
                       encoding);
    unsigned channels = bytes[7];
    if (channels != 3)
        return MT_FAIL(MT_ERR_FORMAT, "record '%s': %u channels, only 3 (RGB) is supported", key,
                       channels);
    unsigned height = load_u16(bytes + 8), width = load_u16(bytes + 10);
    if (height < 1 || height > MT_MAX_IMAGE_SIDE || width < 1 || width > MT_MAX_IMAGE_SIDE)
        return MT_FAIL(MT_ERR_FORMAT, "record '%s': image size %ux%u is outside 1..%d", key, height,
                       width, MT_MAX_IMAGE_SIDE);
    uint32_t label = load_u32(bytes + 12);
    uint32_t payload_bytes = load_u32(bytes + 16);
    uint32_t crc = load_u32(bytes + CRC_OFFSET);
    unsigned name_bytes = load_u16(bytes + 24);
    for (int i = 26; i < MT_RECORD_HEADER_BYTES; i++)
        if (bytes[i] != 0)
            return MT_FAIL(MT_ERR_FORMAT,
                           "record '%s': reserved header byte %d is %u, not 0 (corrupted or "
                           "written by a newer packer)",
                           key, i, bytes[i]);
    if (encoding == MT_ENCODING_RAW) {
        /* Both sides are at most 4096, so this product fits in 32 bits. */
        uint32_t want = (uint32_t)height * width * channels;
        if (payload_bytes != want)
            return MT_FAIL(MT_ERR_FORMAT,
                           "record '%s': raw payload of %" PRIu32 " bytes, but %ux%ux%u needs "
                           "%" PRIu32,
                           key, payload_bytes, height, width, channels, want);
    } else if (payload_bytes == 0) {
        return MT_FAIL(MT_ERR_FORMAT, "record '%s': empty JPEG payload", key);
    }
    /* 64-bit sum: cannot overflow with a 32-bit payload and a 16-bit name length. */
    uint64_t want_size = (uint64_t)MT_RECORD_HEADER_BYTES + payload_bytes + name_bytes;
    if ((uint64_t)size != want_size)
        return MT_FAIL(MT_ERR_FORMAT,
                       "record '%s': %zu bytes stored, but the header describes %" PRIu64
                       " (%d header + %" PRIu32 " payload + %u name): truncated or corrupted",
                       key, size, want_size, MT_RECORD_HEADER_BYTES, payload_bytes, name_bytes);
    const uint8_t *payload = bytes + MT_RECORD_HEADER_BYTES;
    uint32_t actual = record_crc(bytes, size);
    if (actual != crc)
        return MT_FAIL(MT_ERR_FORMAT,
                       "record '%s': CRC32 0x%08" PRIx32 " does not match the stored "
                       "0x%08" PRIx32 ": the data is corrupted (run mobiletune-pack verify)",
                       key, actual, crc);
    out->encoding = (mt_record_encoding)encoding;
    out->channels = (int)channels;
    out->height = (int)height;
    out->width = (int)width;
    out->label = label;
    out->payload = payload;
    out->payload_bytes = payload_bytes;
    out->name = (const char *)(payload + payload_bytes);
    out->name_bytes = name_bytes;
    return MT_OK;
}
