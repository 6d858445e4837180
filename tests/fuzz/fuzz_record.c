/* Fuzz target for mt_record_parse: any bytes must parse or fail cleanly (ASan checks the reads),
 * and whatever parses must describe exactly the bytes it came from: re-encoding the parsed record
 * reproduces the input byte for byte. Built for libFuzzer with -DMT_FUZZ=ON, and replayed over the
 * seed corpus by a normal ctest. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "mobiletune/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_one(const uint8_t *data, size_t size) {
    mt_record r;
    if (mt_record_parse(data, size, "0000000000", &r) != MT_OK) return;
    /* Invariants of a successful parse. */
    if (r.channels != 3 || r.height < 1 || r.height > MT_MAX_IMAGE_SIDE || r.width < 1 ||
        r.width > MT_MAX_IMAGE_SIDE || mt_record_encoded_size(&r) != size ||
        (r.encoding == MT_ENCODING_RAW && r.payload_bytes != (size_t)r.height * r.width * 3) ||
        r.payload != data + MT_RECORD_HEADER_BYTES ||
        r.name != (const char *)data + MT_RECORD_HEADER_BYTES + r.payload_bytes) {
        fprintf(stderr, "fuzz_record: a parsed record breaks an invariant\n");
        abort();
    }
    uint8_t *again = malloc(size);
    if (!again) return;
    mt_record_encode(&r, again);
    if (memcmp(again, data, size) != 0) {
        fprintf(stderr, "fuzz_record: re-encoding a parsed record changed its bytes\n");
        abort();
    }
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_one(data, size);
    /* Random bytes almost never carry a matching CRC, which would hide every check after it from
     * the fuzzer: also parse a copy whose CRC field is made right (bytes 0..19 and 24..end). */
    if (size >= MT_RECORD_HEADER_BYTES) {
        uint8_t *fixed = malloc(size);
        if (!fixed) return 0;
        memcpy(fixed, data, size);
        uLong crc = crc32(0L, Z_NULL, 0);
        crc = crc32(crc, fixed, 20);
        crc = crc32(crc, fixed + 24, (uInt)(size - 24));
        for (int i = 0; i < 4; i++)
            fixed[20 + i] = (uint8_t)(crc >> (8 * i));
        check_one(fixed, size);
        free(fixed);
    }
    return 0;
}
