/* Implementation of the small dataset builder in test_db.h. */
#include "test_db.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/image.h"

#define TEST_LMDB(call)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MDB_SUCCESS) {                                                                  \
            fprintf(stderr, "test_db: %s failed: %s\n", #call, mdb_strerror(rc_));                 \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

void test_db_pixels(int i, int h, int w, uint8_t *out) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                out[((size_t)y * w + x) * 3 + c] = test_db_pixel(i, y, x, c);
}

static bool put(MDB_txn *txn, MDB_dbi dbi, const char *key, const void *bytes, size_t size) {
    MDB_val k = {.mv_size = strlen(key), .mv_data = (void *)key};
    MDB_val v = {.mv_size = size, .mv_data = (void *)bytes};
    int rc = mdb_put(txn, dbi, &k, &v, 0);
    if (rc != MDB_SUCCESS) fprintf(stderr, "test_db: mdb_put(%s): %s\n", key, mdb_strerror(rc));
    return rc == MDB_SUCCESS;
}

bool test_db_create(const char *dir, const test_db_spec *spec) {
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    uint8_t *pixels = malloc((size_t)spec->height * spec->width * 3);
    char **names = calloc((size_t)spec->classes, sizeof *names);
    uint64_t *counts = calloc((size_t)spec->classes, sizeof *counts);
    TEST_LMDB(mdb_env_create(&env));
    TEST_LMDB(mdb_env_set_mapsize(env, (size_t)64 << 20));
    TEST_LMDB(mdb_env_open(env, dir, 0, 0644));
    TEST_LMDB(mdb_txn_begin(env, NULL, 0, &txn));
    TEST_LMDB(mdb_dbi_open(txn, NULL, 0, &dbi));
    for (int i = 0; i < spec->count; i++) {
        test_db_pixels(i, spec->height, spec->width, pixels);
        char name[64];
        snprintf(name, sizeof name, "img/%06d.png", i);
        mt_record r = {.encoding = spec->encoding,
                       .channels = 3,
                       .height = spec->height,
                       .width = spec->width,
                       .label = (uint32_t)test_db_label(i, spec->classes),
                       .payload = pixels,
                       .payload_bytes = (size_t)spec->height * spec->width * 3,
                       .name = name,
                       .name_bytes = strlen(name)};
        uint8_t *jpeg = NULL;
        if (spec->encoding == MT_ENCODING_JPEG) {
            size_t jpeg_bytes;
            if (mt_image_encode_jpeg(pixels, spec->width, spec->height, 100, &jpeg, &jpeg_bytes) !=
                MT_OK) {
                fprintf(stderr, "test_db: %s\n", mt_last_error());
                goto fail;
            }
            r.payload = jpeg;
            r.payload_bytes = jpeg_bytes;
        }
        counts[r.label]++;
        size_t size = mt_record_encoded_size(&r);
        uint8_t *buf = malloc(size);
        mt_record_encode(&r, buf);
        char key[MT_RECORD_KEY_BYTES + 1];
        mt_record_key((uint64_t)i, key);
        bool ok = put(txn, dbi, key, buf, size);
        free(buf);
        free(jpeg);
        if (!ok) goto fail;
    }
    char *text = NULL;
    size_t text_bytes = 0;
    if (spec->meta_text) {
        text = strdup(spec->meta_text);
        text_bytes = strlen(text);
    } else {
        for (int c = 0; c < spec->classes; c++) {
            names[c] = malloc(32);
            snprintf(names[c], 32, "class%d", c);
        }
        mt_dataset_meta meta = {.version = MT_META_VERSION,
                                .record_count = (uint64_t)spec->count,
                                .height = spec->height,
                                .width = spec->width,
                                .channels = 3,
                                .encoding = spec->encoding,
                                .class_count = spec->classes,
                                .class_names = names,
                                .class_counts = counts,
                                .mean = {127, 127, 127},
                                .std = {70, 70, 70},
                                .split = "train",
                                .options = "test_db"};
        if (mt_meta_format(&meta, &text, &text_bytes) != MT_OK) {
            fprintf(stderr, "test_db: %s\n", mt_last_error());
            goto fail;
        }
    }
    bool ok = spec->no_meta || put(txn, dbi, MT_META_KEY, text, text_bytes);
    free(text);
    if (!ok) goto fail;
    TEST_LMDB(mdb_txn_commit(txn));
    txn = NULL;
    mdb_env_close(env);
    for (int c = 0; c < spec->classes; c++)
        free(names[c]);
    free(names);
    free(counts);
    free(pixels);
    return true;
fail:
    if (txn) mdb_txn_abort(txn);
    if (env) mdb_env_close(env);
    for (int c = 0; names && c < spec->classes; c++)
        free(names[c]);
    free(names);
    free(counts);
    free(pixels);
    return false;
}

bool test_db_put(const char *dir, const char *key, const void *bytes, size_t size) {
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    TEST_LMDB(mdb_env_create(&env));
    TEST_LMDB(mdb_env_set_mapsize(env, (size_t)64 << 20));
    TEST_LMDB(mdb_env_open(env, dir, 0, 0644));
    TEST_LMDB(mdb_txn_begin(env, NULL, 0, &txn));
    TEST_LMDB(mdb_dbi_open(txn, NULL, 0, &dbi));
    if (!put(txn, dbi, key, bytes, size)) goto fail;
    TEST_LMDB(mdb_txn_commit(txn));
    mdb_env_close(env);
    return true;
fail:
    if (txn) mdb_txn_abort(txn);
    if (env) mdb_env_close(env);
    return false;
}

bool test_db_copy(const char *from_dir, const char *to_dir) {
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/data.mdb", from_dir);
    snprintf(to, sizeof to, "%s/data.mdb", to_dir);
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    bool ok = in && out;
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in) fclose(in);
    if (out && fclose(out) != 0) ok = false;
    return ok;
}
