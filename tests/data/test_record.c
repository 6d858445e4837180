/* The record format and the metadata text: round trips, the exact byte layout of record.h, and
 * hostile inputs (every truncation, every single-bit flip, each bad field) that must fail with
 * MT_ERR_FORMAT naming the key, never crash (ASan builds check the "never read out of bounds"). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "mobiletune/record.h"
#include "test_util.h"

static void store_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* A small raw record: 3x2 pixels with a known pattern, label 1, name "cats/x.jpg". */
static uint8_t *make_raw(size_t *size, uint8_t *pixels) {
    for (int i = 0; i < 3 * 2 * 3; i++)
        pixels[i] = (uint8_t)(i * 13 + 7);
    mt_record r = {.encoding = MT_ENCODING_RAW,
                   .channels = 3,
                   .height = 3,
                   .width = 2,
                   .label = 1,
                   .payload = pixels,
                   .payload_bytes = 18,
                   .name = "cats/x.jpg",
                   .name_bytes = 10};
    *size = mt_record_encoded_size(&r);
    uint8_t *buf = malloc(*size);
    mt_record_encode(&r, buf);
    return buf;
}

/* Parse a copy in an exactly-sized heap block so ASan catches any read past the end. */
static mt_status parse_copy(const uint8_t *bytes, size_t size, mt_record *out, uint8_t **keep) {
    uint8_t *copy = calloc(1, size ? size : 1);
    if (size) memcpy(copy, bytes, size);
    mt_status st = mt_record_parse(copy, size, "0000000042", out);
    if (keep)
        *keep = copy;
    else
        free(copy);
    return st;
}

static void expect_bad(const uint8_t *bytes, size_t size, const char *what) {
    mt_record r;
    mt_clear_error();
    mt_status st = parse_copy(bytes, size, &r, NULL);
    CHECK_MSG(st == MT_ERR_FORMAT, "%s: status %s", what, mt_status_name(st));
    CHECK_MSG(strstr(mt_last_error(), "0000000042") != NULL, "%s: error does not name the key: %s",
              what, mt_last_error());
}

/* The stored CRC is zlib's CRC-32 of every byte but the CRC field (docs/formats.md), checked here
 * with zlib itself on a record large enough for the vector code of the CRC library, with
 * random payload bytes and a payload length that is not a multiple of any vector width. */
static void test_crc_is_zlib_crc32(void) {
    enum { SIDE = 77 };
    static uint8_t pixels[SIDE * SIDE * 3];
    unsigned seed = 7;
    for (size_t i = 0; i < sizeof pixels; i++) {
        seed = seed * 1103515245u + 12345u;
        pixels[i] = (uint8_t)(seed >> 16);
    }
    mt_record r = {.encoding = MT_ENCODING_RAW,
                   .channels = 3,
                   .height = SIDE,
                   .width = SIDE,
                   .label = 5,
                   .payload = pixels,
                   .payload_bytes = sizeof pixels,
                   .name = "dogs/a b.jpg",
                   .name_bytes = 12};
    size_t size = mt_record_encoded_size(&r);
    uint8_t *buf = malloc(size);
    mt_record_encode(&r, buf);
    uLong want = crc32(0L, buf, 20);
    want = crc32(want, buf + 24, (uInt)(size - 24));
    uint32_t stored = (uint32_t)buf[20] | (uint32_t)buf[21] << 8 | (uint32_t)buf[22] << 16 |
                      (uint32_t)buf[23] << 24;
    CHECK_MSG(stored == (uint32_t)want, "stored CRC 0x%08x, zlib says 0x%08lx", stored, want);
    free(buf);
}

static void test_key(void) {
    char key[MT_RECORD_KEY_BYTES + 1];
    mt_record_key(0, key);
    CHECK(strcmp(key, "0000000000") == 0);
    mt_record_key(1234567, key);
    CHECK(strcmp(key, "0001234567") == 0);
    mt_record_key(9999999999ull, key);
    CHECK(strcmp(key, "9999999999") == 0);
    /* Keys sort before "meta" in LMDB's byte order. */
    CHECK(memcmp(key, MT_META_KEY, 4) < 0);
}

static void test_round_trip(void) {
    uint8_t pixels[18];
    size_t size;
    uint8_t *buf = make_raw(&size, pixels);
    CHECK(size == 32 + 18 + 10);
    /* The exact bytes of the header as documented in record.h. */
    CHECK(buf[0] == 'M' && buf[1] == 'T' && buf[2] == 'R' && buf[3] == '1');
    CHECK(buf[4] == 1 && buf[5] == 0);
    CHECK(buf[6] == 0 && buf[7] == 3);
    CHECK(buf[8] == 3 && buf[9] == 0 && buf[10] == 2 && buf[11] == 0);
    CHECK(buf[12] == 1 && buf[13] == 0 && buf[14] == 0 && buf[15] == 0);
    CHECK(buf[16] == 18 && buf[17] == 0 && buf[18] == 0 && buf[19] == 0);
    CHECK(buf[24] == 10 && buf[25] == 0);
    for (int i = 26; i < 32; i++)
        CHECK(buf[i] == 0);
    CHECK(memcmp(buf + 32, pixels, 18) == 0);
    CHECK(memcmp(buf + 50, "cats/x.jpg", 10) == 0);

    mt_record r;
    uint8_t *kept;
    CHECK_MSG(parse_copy(buf, size, &r, &kept) == MT_OK, "%s", mt_last_error());
    CHECK(r.encoding == MT_ENCODING_RAW && r.channels == 3 && r.height == 3 && r.width == 2);
    CHECK(r.label == 1 && r.payload_bytes == 18 && r.name_bytes == 10);
    CHECK(r.payload == kept + 32 && memcmp(r.payload, pixels, 18) == 0);
    CHECK(memcmp(r.name, "cats/x.jpg", 10) == 0);
    free(kept);

    /* A JPEG record with an empty name. */
    const uint8_t jpeg[5] = {0xFF, 0xD8, 0xFF, 0xD9, 0x00};
    mt_record j = {.encoding = MT_ENCODING_JPEG,
                   .channels = 3,
                   .height = 4096,
                   .width = 1,
                   .label = 65535,
                   .payload = jpeg,
                   .payload_bytes = 5};
    size_t jsize = mt_record_encoded_size(&j);
    uint8_t *jbuf = malloc(jsize);
    mt_record_encode(&j, jbuf);
    CHECK_MSG(parse_copy(jbuf, jsize, &r, NULL) == MT_OK, "%s", mt_last_error());
    CHECK(r.encoding == MT_ENCODING_JPEG && r.height == 4096 && r.label == 65535);
    CHECK(r.name_bytes == 0 && r.payload_bytes == 5);
    free(jbuf);
    free(buf);
}

static void test_hostile(void) {
    uint8_t pixels[18];
    size_t size;
    uint8_t *good = make_raw(&size, pixels);
    uint8_t *b = malloc(size + 8);

    /* Every truncation, including zero bytes and a NULL pointer with size 0. */
    for (size_t n = 0; n < size; n++)
        expect_bad(good, n, "truncated");
    mt_record r;
    CHECK(mt_record_parse(NULL, 0, "k", &r) == MT_ERR_FORMAT);

    /* Every single-bit flip anywhere: header, payload, name, the CRC itself. */
    int undetected = 0;
    for (size_t i = 0; i < size; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(b, good, size);
            b[i] ^= (uint8_t)(1u << bit);
            if (parse_copy(b, size, &r, NULL) != MT_ERR_FORMAT) undetected++;
        }
    CHECK_MSG(undetected == 0, "%d single-bit flips were not detected", undetected);

    /* Trailing junk. */
    memcpy(b, good, size);
    b[size] = 0;
    expect_bad(b, size + 1, "trailing byte");

    /* Each field individually wrong (the CRC would catch these anyway; the point is that the
     * size checks run before any read they guard, which ASan confirms). */
    struct {
        size_t offset;
        uint8_t value;
        const char *what;
    } fields[] = {
        {0, 'X', "magic"},          {4, 2, "version"},           {6, 2, "encoding"},
        {7, 1, "channels"},         {7, 4, "channels 4"},        {8, 0, "height 0"},
        {10, 0, "width 0"},         {16, 19, "payload size"},    {17, 1, "payload size high"},
        {19, 0xFF, "payload huge"}, {24, 11, "name longer"},     {25, 0xFF, "name huge"},
        {26, 1, "reserved"},        {31, 0x80, "reserved last"},
    };
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        memcpy(b, good, size);
        b[fields[k].offset] = fields[k].value;
        expect_bad(b, size, fields[k].what);
    }
    /* Sides over the limit. */
    memcpy(b, good, size);
    store_u16(b + 8, MT_MAX_IMAGE_SIDE + 1);
    expect_bad(b, size, "height 4097");
    memcpy(b, good, size);
    store_u16(b + 10, 0xFFFF);
    expect_bad(b, size, "width 65535");

    /* A CRC error message says it is a CRC mismatch. */
    memcpy(b, good, size);
    b[40] ^= 1;
    mt_clear_error();
    CHECK(parse_copy(b, size, &r, NULL) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "CRC") != NULL, "%s", mt_last_error());

    /* A record claiming a 4096x4096 raw payload in a tiny buffer. */
    memcpy(b, good, size);
    store_u16(b + 8, 4096);
    store_u16(b + 10, 4096);
    b[16] = 0, b[17] = 0, b[18] = 0x30, b[19] = 0x03; /* 50331648 = 4096*4096*3 */
    expect_bad(b, size, "huge claimed payload");
    free(b);
    free(good);
}

/* ---- metadata ------------------------------------------------------------------------------ */

static const char *GOOD_META = "mobiletune-dataset 1\n"
                               "records 5\n"
                               "height 160\n"
                               "width 128\n"
                               "channels 3\n"
                               "encoding raw\n"
                               "split train\n"
                               "mean 124.5 116.25 103.125\n"
                               "std 58.5 57 57.25\n"
                               "classes 3\n"
                               "class 0 2 cats\n"
                               "class 1 3 dogs and wolves\n"
                               "class 2 0 \xC3\xA9l\xC3\xA9phant\n"
                               "options --size 160 --resize stretch\n";

static mt_status parse_meta_copy(const char *text, size_t n, mt_dataset_meta *m) {
    char *copy = calloc(1, n ? n : 1);
    if (n) memcpy(copy, text, n);
    mt_status st = mt_meta_parse(copy, n, m);
    free(copy);
    return st;
}

static void test_meta_round_trip(void) {
    mt_dataset_meta m;
    CHECK_MSG(parse_meta_copy(GOOD_META, strlen(GOOD_META), &m) == MT_OK, "%s", mt_last_error());
    CHECK(m.version == 1 && m.record_count == 5 && m.height == 160 && m.width == 128);
    CHECK(m.channels == 3 && m.encoding == MT_ENCODING_RAW && m.class_count == 3);
    CHECK(m.class_names && strcmp(m.class_names[1], "dogs and wolves") == 0);
    CHECK(m.class_names && strcmp(m.class_names[2], "\xC3\xA9l\xC3\xA9phant") == 0);
    CHECK(m.class_counts && m.class_counts[0] == 2 && m.class_counts[1] == 3);
    CHECK(m.mean[1] == 116.25 && m.std[2] == 57.25);
    CHECK(m.split && strcmp(m.split, "train") == 0);
    CHECK(m.options && strcmp(m.options, "--size 160 --resize stretch") == 0);

    char *text;
    size_t n;
    CHECK_MSG(mt_meta_format(&m, &text, &n) == MT_OK, "%s", mt_last_error());
    CHECK(n == strlen(text));
    CHECK_MSG(n == strlen(GOOD_META) && memcmp(text, GOOD_META, n) == 0, "formatted:\n%s", text);
    free(text);
    mt_meta_free(&m);
    CHECK(m.class_names == NULL && m.class_count == 0);
    mt_meta_free(&m); /* twice is harmless */

    /* Without the final newline, and as jpeg with an empty options line. */
    const char *t2 = "mobiletune-dataset 1\nrecords 0\nheight 1\nwidth 4096\nchannels 3\n"
                     "encoding jpeg\nsplit val\nmean 0 0 0\nstd 255 1e2 0.5\nclasses 1\n"
                     "class 0 0 x\noptions ";
    CHECK_MSG(parse_meta_copy(t2, strlen(t2), &m) == MT_OK, "%s", mt_last_error());
    CHECK(m.encoding == MT_ENCODING_JPEG && m.record_count == 0 && m.std[1] == 100);
    CHECK(m.options && m.options[0] == '\0');
    mt_meta_free(&m);

    /* Formatting refuses what parsing would refuse. */
    char *names[2] = {"a\nb", "c"};
    uint64_t counts[2] = {1, 1};
    mt_dataset_meta bad = {.record_count = 2,
                           .height = 8,
                           .width = 8,
                           .channels = 3,
                           .class_count = 2,
                           .class_names = names,
                           .class_counts = counts,
                           .split = "train",
                           .options = ""};
    CHECK(mt_meta_format(&bad, &text, &n) == MT_ERR_INVALID && text == NULL);
    names[0] = "a";
    CHECK_MSG(mt_meta_format(&bad, &text, &n) == MT_OK, "%s", mt_last_error());
    free(text);
    counts[1] = 2;
    CHECK(mt_meta_format(&bad, &text, &n) == MT_ERR_INVALID);
    counts[1] = 1;
    names[1] = "a";
    CHECK(mt_meta_format(&bad, &text, &n) == MT_ERR_INVALID);
}

/* Replace the first occurrence of `from` in GOOD_META with `to` and expect a format error. */
static void expect_bad_meta(const char *from, const char *to) {
    const char *at = strstr(GOOD_META, from);
    if (!at) {
        fprintf(stderr, "test bug: '%s' not in GOOD_META\n", from);
        mt_test_failures++;
        return;
    }
    size_t pre = (size_t)(at - GOOD_META), n = strlen(GOOD_META) - strlen(from) + strlen(to);
    char *text = malloc(n + 1);
    memcpy(text, GOOD_META, pre);
    memcpy(text + pre, to, strlen(to));
    strcpy(text + pre + strlen(to), at + strlen(from));
    mt_dataset_meta m;
    mt_status st = parse_meta_copy(text, n, &m);
    CHECK_MSG(st == MT_ERR_FORMAT, "'%s' -> '%s' gave %s", from, to, mt_status_name(st));
    CHECK(m.class_names == NULL && m.split == NULL); /* freed and zeroed on failure */
    free(text);
}

static void test_meta_hostile(void) {
    mt_dataset_meta m;
    size_t len = strlen(GOOD_META);
    /* Every truncation that cuts into a line must fail (cutting exactly after a newline drops a
     * whole line, which must fail too, except the options line's own newline). */
    for (size_t n = 0; n + 1 < len; n++) {
        mt_status st = parse_meta_copy(GOOD_META, n, &m);
        bool options_only_truncated = n >= len - strlen("--size 160 --resize stretch\n");
        if (!options_only_truncated)
            CHECK_MSG(st == MT_ERR_FORMAT, "truncated to %zu bytes parsed", n);
        mt_meta_free(&m);
    }
    CHECK(mt_meta_parse(NULL, 0, &m) == MT_ERR_FORMAT);

    expect_bad_meta("mobiletune-dataset 1", "mobiletune-dataset 2");
    expect_bad_meta("mobiletune-dataset 1", "mobiletune-datasex 1");
    expect_bad_meta("records 5", "records 6");
    expect_bad_meta("records 5", "records 05");
    expect_bad_meta("records 5", "records -5");
    expect_bad_meta("records 5", "records 18446744073709551621");
    expect_bad_meta("records 5", "records 99999999999999999999999");
    expect_bad_meta("records 5", "records  5");
    expect_bad_meta("records 5", "records 5 ");
    expect_bad_meta("records 5", "records");
    expect_bad_meta("height 160", "height 0");
    expect_bad_meta("height 160", "height 4097");
    expect_bad_meta("width 128", "width 2147483648");
    expect_bad_meta("channels 3", "channels 1");
    expect_bad_meta("encoding raw", "encoding png");
    expect_bad_meta("split train", "split tr ain");
    expect_bad_meta("split train", "split ");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean 124.5 116.25");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean 124.5 116.25 103.125 1");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean nan 116.25 103.125");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean inf 116.25 103.125");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean 0x10 116.25 103.125");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean 1e999 116.25 103.125");
    expect_bad_meta("mean 124.5 116.25 103.125", "mean 256 116.25 103.125");
    expect_bad_meta("std 58.5 57 57.25", "std -1 57 57.25");
    expect_bad_meta("classes 3", "classes 0");
    expect_bad_meta("classes 3", "classes 65537");
    expect_bad_meta("classes 3", "classes 2");
    expect_bad_meta("classes 3", "classes 4");
    expect_bad_meta("class 0 2 cats", "class 0 3 cats");
    expect_bad_meta("class 0 2 cats", "class 1 2 cats");
    expect_bad_meta("class 0 2 cats", "class 0 2 ");
    expect_bad_meta("class 0 2 cats", "class 0 2");
    expect_bad_meta("class 0 2 cats", "class 0 18446744073709551615 cats");
    expect_bad_meta("class 1 3 dogs and wolves", "class 1 3 cats");
    expect_bad_meta("class 0 2 cats", "class 0 2 ca\rts");
    expect_bad_meta("class 0 2 cats", "class 0 2 ca\tts");
    expect_bad_meta("class 0 2 cats", "class 0 2 c\xC3");             /* cut UTF-8 */
    expect_bad_meta("class 0 2 cats", "class 0 2 c\xC0\xAF");         /* overlong */
    expect_bad_meta("class 0 2 cats", "class 0 2 c\xED\xA0\x80");     /* surrogate */
    expect_bad_meta("class 0 2 cats", "class 0 2 c\xF4\x90\x80\x80"); /* > U+10FFFF */
    expect_bad_meta("classes 3\n", "");                               /* class before classes */
    expect_bad_meta("split train\n", "");
    expect_bad_meta("split train\n", "split train\nsplit val\n");
    expect_bad_meta("records 5\n", "records 5\nbogus 1\n");
    expect_bad_meta("records 5\n", "records 5\n\n");
    expect_bad_meta("options --size", "options --si\x01ze");

    /* Embedded NUL: the parser is bounded by size, not by a terminator. */
    char with_nul[512];
    size_t n = strlen(GOOD_META);
    memcpy(with_nul, GOOD_META, n);
    with_nul[20] = '\0';
    CHECK(parse_meta_copy(with_nul, n, &m) == MT_ERR_FORMAT);

    /* The maximum class count parses; the sum rule still applies. */
    size_t cap = 64u << 20;
    char *big = malloc(cap);
    size_t used = (size_t)snprintf(big, cap,
                                   "mobiletune-dataset 1\nrecords %d\nheight 1\nwidth "
                                   "1\nchannels 3\nencoding raw\nsplit all\nmean 1 2 3\nstd 1 2 "
                                   "3\nclasses %d\n",
                                   MT_MAX_CLASSES, MT_MAX_CLASSES);
    for (int i = 0; i < MT_MAX_CLASSES; i++)
        used += (size_t)snprintf(big + used, cap - used, "class %d 1 c%d\n", i, i);
    used += (size_t)snprintf(big + used, cap - used, "options x\n");
    CHECK_MSG(parse_meta_copy(big, used, &m) == MT_OK, "%s", mt_last_error());
    CHECK(m.class_count == MT_MAX_CLASSES);
    mt_meta_free(&m);
    free(big);
}

/* The seed corpus of tests/fuzz was written by an independent Python encoder of the layout
 * (tests/fuzz/make_corpus.py): its valid records and metadata must parse, its broken ones not. */
static void test_python_seeds(void) {
    const char *src = getenv("MT_SOURCE_DIR");
    if (!src) {
        printf("MT_SOURCE_DIR unset: skipping the Python-encoded seeds\n");
        return;
    }
    const struct {
        const char *file;
        bool valid;
        int height, width;
        uint32_t label;
        const char *name;
    } cases[] = {
        {"record/raw_1x1", true, 1, 1, 0, "a.jpg"},
        {"record/raw_2x3", true, 2, 3, 7, "cats/cat.1.jpg"},
        {"record/raw_noname", true, 4, 4, 1, ""},
        {"record/jpeg", true, 160, 160, 1, "dogs/dog.2.jpg"},
        {"record/bad_magic", false, 0, 0, 0, NULL},
        {"record/bad_version", false, 0, 0, 0, NULL},
        {"record/truncated", false, 0, 0, 0, NULL},
        {"meta/good", true, 160, 160, 0, "cats"},
        {"meta/jpeg_utf8", true, 160, 160, 0, "\xC3\xA9l\xC3\xA9phant"},
        {"meta/bad_sum", false, 0, 0, 0, NULL},
        {"meta/dup_class", false, 0, 0, 0, NULL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tests/fuzz/corpus/%s", src, cases[k].file);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(f != NULL, "cannot open %s", path);
        if (!f) continue;
        uint8_t buf[4096];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        mt_status st;
        if (strncmp(cases[k].file, "record/", 7) == 0) {
            mt_record r;
            st = mt_record_parse(buf, n, cases[k].file, &r);
            if (st == MT_OK && cases[k].valid) {
                CHECK(r.height == cases[k].height && r.width == cases[k].width);
                CHECK(r.label == cases[k].label);
                CHECK(r.name_bytes == strlen(cases[k].name) &&
                      memcmp(r.name, cases[k].name, r.name_bytes) == 0);
            }
        } else {
            mt_dataset_meta m;
            st = mt_meta_parse(buf, n, &m);
            if (st == MT_OK && cases[k].valid) {
                CHECK(m.height == cases[k].height && m.width == cases[k].width);
                CHECK(strcmp(m.class_names[0], cases[k].name) == 0);
            }
            mt_meta_free(&m);
        }
        CHECK_MSG((st == MT_OK) == cases[k].valid, "%s: %s (%s)", cases[k].file, mt_status_name(st),
                  mt_last_error());
    }
}

/* Class lists meet by name and order, not by count. */
static void test_same_classes(void) {
    const char *cats_dogs[] = {"cats", "dogs"}, *dogs_zcats[] = {"dogs", "zcats"};
    const char *three[] = {"cats", "dogs", "birds"};
    char message[300] = "";
    CHECK(mt_class_names_same(cats_dogs, 2, cats_dogs, 2, message, sizeof message));
    CHECK(!mt_class_names_same(cats_dogs, 2, dogs_zcats, 2, message, sizeof message));
    CHECK_MSG(strstr(message, "class 0 is 'cats' against 'dogs'") &&
                  strstr(message, "cats, dogs against dogs, zcats"),
              "%s", message);
    CHECK(!mt_class_names_same(cats_dogs, 2, three, 3, message, sizeof message));
    CHECK_MSG(strstr(message, "2 classes against 3"), "%s", message);
    CHECK(!mt_class_names_same(cats_dogs, 2, three, 3, NULL, 0));
    char tiny[12];
    CHECK(!mt_class_names_same(cats_dogs, 2, dogs_zcats, 2, tiny, sizeof tiny));
    CHECK(strlen(tiny) < sizeof tiny);
    mt_dataset_meta a = {.class_count = 2, .class_names = (char **)cats_dogs};
    mt_dataset_meta b = {.class_count = 2, .class_names = (char **)dogs_zcats};
    CHECK(mt_dataset_meta_same_classes(&a, &a, message, sizeof message));
    CHECK(!mt_dataset_meta_same_classes(&a, &b, message, sizeof message));
}

int main(void) {
    test_same_classes();
    test_crc_is_zlib_crc32();
    test_key();
    test_python_seeds();
    test_round_trip();
    test_hostile();
    test_meta_round_trip();
    test_meta_hostile();
    return mt_test_finish();
}
