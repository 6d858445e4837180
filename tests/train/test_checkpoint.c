/* Checkpoints: a bit-exact round trip, every kind of damaged file refused with a message naming
 * the file (and the tensor), and the atomic write: an injected failure, a write killed mid-way
 * and a writer killed at a random moment all leave a complete, loadable checkpoint at the path.
 *
 * Also helpers for tests/train/checkpoint_python.py: `--write-sample PATH` writes the sample it
 * checks with numpy/safetensors, `--read-sample PATH` checks a file Python wrote. */
#include "mobiletune/checkpoint.h"

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

#define EXPECT_OK(call)                                                                            \
    do {                                                                                           \
        mt_status expect_ok_ = (call);                                                             \
        CHECK_MSG(expect_ok_ == MT_OK, "%s: %s", #call, mt_last_error());                          \
    } while (0)

static char dir[4096];

static const char *config_text = "[optimizer]\nname = rmsprop\n; \"quoted\" \\ back\tslash é ☃\n";

/* A checkpoint with every dtype, a scalar, an empty tensor, odd-sized blobs and special floats. */
static mt_checkpoint *make_sample(void) {
    mt_checkpoint *c = NULL;
    if (mt_checkpoint_create(&c) != MT_OK) return NULL;
    float a[6] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 2.5f};
    int a_shape[2] = {2, 3};
    float specials[5] = {-0.0f, INFINITY, -INFINITY, 1e-45f, 3.4028235e38f};
    uint32_t nan_bits = 0x7fc12345u; /* a NaN with a payload: must survive bit for bit */
    memcpy(&specials[0], &(float){-0.0f}, 4);
    float with_nan[6];
    memcpy(with_nan, specials, sizeof specials);
    memcpy(&with_nan[5], &nan_bits, 4);
    int nan_shape[1] = {6};
    unsigned char blob[5] = {1, 2, 3, 4, 5};
    int64_t step[1] = {-1234567890123LL};
    uint64_t rng[4] = {0x0123456789abcdefULL, 1, 2, UINT64_MAX};
    uint64_t rng_shape[1] = {4};
    float scalar = 42.0f;
    int empty_shape[2] = {0, 7};
    EXPECT_OK(mt_checkpoint_add_blob(c, "loader/position", blob, 5));
    EXPECT_OK(mt_checkpoint_add_f32(c, "head/dense/kernel", 2, a_shape, a));
    EXPECT_OK(mt_checkpoint_add(c, "step", MT_CHECKPOINT_I64, 0, NULL, step));
    EXPECT_OK(mt_checkpoint_add_f32(c, "specials", 1, nan_shape, with_nan));
    EXPECT_OK(mt_checkpoint_add(c, "rng", MT_CHECKPOINT_U64, 1, rng_shape, rng));
    EXPECT_OK(mt_checkpoint_add_f32(c, "scalar", 0, NULL, &scalar));
    EXPECT_OK(mt_checkpoint_add_f32(c, "empty", 2, empty_shape, NULL));
    EXPECT_OK(mt_checkpoint_add_blob(c, "odd", blob, 3));
    EXPECT_OK(mt_checkpoint_set_meta(c, "format", "mobiletune-checkpoint-1"));
    EXPECT_OK(mt_checkpoint_set_meta(c, "config", config_text));
    EXPECT_OK(mt_checkpoint_set_meta(c, "epoch", "3"));
    EXPECT_OK(mt_checkpoint_set_meta(c, "epoch", "4")); /* replaces */
    return c;
}

/* Every tensor and metadata entry of `a` is in `b` with the same dtype, shape and bytes. */
static void check_same(const mt_checkpoint *a, const mt_checkpoint *b) {
    CHECK(mt_checkpoint_tensor_count(a) == mt_checkpoint_tensor_count(b));
    for (int i = 0; i < mt_checkpoint_tensor_count(a); i++) {
        const mt_checkpoint_tensor *x = mt_checkpoint_tensor_at(a, i);
        const mt_checkpoint_tensor *y = mt_checkpoint_find(b, x->name);
        CHECK_MSG(y != NULL, "tensor %s lost", x->name);
        if (!y) continue;
        CHECK(x->dtype == y->dtype && x->rank == y->rank && x->count == y->count);
        CHECK(memcmp(x->shape, y->shape, sizeof x->shape[0] * (size_t)x->rank) == 0);
        CHECK_MSG(x->bytes == y->bytes && memcmp(x->data, y->data, x->bytes) == 0,
                  "tensor %s differs", x->name);
        CHECK_MSG((uintptr_t)y->data % mt_checkpoint_dtype_size(y->dtype) == 0,
                  "tensor %s is not aligned", y->name);
    }
    CHECK(mt_checkpoint_meta_count(a) == mt_checkpoint_meta_count(b));
    for (int i = 0; i < mt_checkpoint_meta_count(a); i++) {
        const char *key, *value;
        mt_checkpoint_meta_at(a, i, &key, &value);
        const char *other = mt_checkpoint_meta(b, key);
        CHECK_MSG(other && strcmp(other, value) == 0, "metadata %s differs", key);
    }
}

static void test_round_trip(void) {
    mt_checkpoint *c = make_sample(), *back = NULL;
    const char *path = mt_test_path(dir, "sample.safetensors");
    EXPECT_OK(mt_checkpoint_write(c, path));
    EXPECT_OK(mt_checkpoint_read(path, &back));
    if (!back) return;
    check_same(c, back);
    CHECK(strcmp(mt_checkpoint_meta(back, "epoch"), "4") == 0);
    CHECK(strcmp(mt_checkpoint_meta(back, "config"), config_text) == 0);
    CHECK(strcmp(mt_checkpoint_path(back), path) == 0);
    const mt_checkpoint_tensor *s = mt_checkpoint_find(back, "scalar");
    CHECK(s && s->rank == 0 && s->count == 1 && ((const float *)s->data)[0] == 42.0f);
    const mt_checkpoint_tensor *e = mt_checkpoint_find(back, "empty");
    CHECK(e && e->count == 0 && e->bytes == 0 && e->shape[1] == 7);

    float kernel[6];
    int shape[2] = {2, 3}, wrong[2] = {3, 2};
    EXPECT_OK(mt_checkpoint_get_f32(back, "head/dense/kernel", kernel, 6, 2, shape));
    CHECK(kernel[5] == 2.5f);
    CHECK(mt_checkpoint_get_f32(back, "head/dense/kernel", kernel, 6, 2, wrong) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), path) && strstr(mt_last_error(), "head/dense/kernel") &&
                  strstr(mt_last_error(), "[2,3]") && strstr(mt_last_error(), "[3,2]"),
              "message: %s", mt_last_error());
    CHECK(mt_checkpoint_get_f32(back, "head/dense/bias", kernel, 1, 0, NULL) == MT_ERR_FORMAT);
    CHECK(strstr(mt_last_error(), "no tensor 'head/dense/bias'") != NULL);
    CHECK(mt_checkpoint_get_f32(back, "rng", kernel, 4, 0, NULL) == MT_ERR_FORMAT);
    CHECK(strstr(mt_last_error(), "U64") != NULL);

    /* Building rules. */
    float x = 1.0f;
    CHECK(mt_checkpoint_add_f32(c, "scalar", 0, NULL, &x) == MT_ERR_INVALID);
    CHECK(mt_checkpoint_add_f32(c, "__metadata__", 0, NULL, &x) == MT_ERR_INVALID);
    CHECK(mt_checkpoint_add_f32(c, "", 0, NULL, &x) == MT_ERR_INVALID);
    CHECK(mt_checkpoint_add_f32(c, "bad\xff", 0, NULL, &x) == MT_ERR_INVALID);
    CHECK(mt_checkpoint_set_meta(c, "k", "bad\xc3") == MT_ERR_INVALID);
    CHECK(mt_checkpoint_add_f32(back, "new", 0, NULL, &x) == MT_ERR_INVALID);
    mt_checkpoint_free(back);

    /* An empty checkpoint is valid too. */
    mt_checkpoint *empty = NULL;
    EXPECT_OK(mt_checkpoint_create(&empty));
    EXPECT_OK(mt_checkpoint_write(empty, mt_test_path(dir, "empty.safetensors")));
    EXPECT_OK(mt_checkpoint_read(mt_test_path(dir, "empty.safetensors"), &back));
    if (back) CHECK(mt_checkpoint_tensor_count(back) == 0 && mt_checkpoint_meta_count(back) == 0);
    mt_checkpoint_free(back);
    mt_checkpoint_free(empty);

    /* Checksums: one per tensor, checked on read and not listed as metadata; the key prefix
     * is reserved. Non-finite values are the loader's to refuse, by tensor and index. */
    EXPECT_OK(mt_checkpoint_read(path, &back));
    if (back) {
        CHECK(mt_checkpoint_checksums_verified(back) == mt_checkpoint_tensor_count(c));
        CHECK(mt_checkpoint_meta(back, "crc32:scalar") == NULL);
        EXPECT_OK(mt_checkpoint_check_finite(back, "head/dense/kernel"));
        CHECK(mt_checkpoint_check_finite(back, "specials") == MT_ERR_FORMAT);
        CHECK_MSG(strstr(mt_last_error(), "'specials'") && strstr(mt_last_error(), "index 1") &&
                      strstr(mt_last_error(), path),
                  "message: %s", mt_last_error());
        CHECK(mt_checkpoint_check_finite(back, NULL) == MT_ERR_FORMAT);
    }
    mt_checkpoint_free(back);
    back = NULL;
    CHECK(mt_checkpoint_set_meta(c, "crc32:scalar", "00000000") == MT_ERR_INVALID);

    CHECK(mt_checkpoint_write(c, "/nonexistent-folder/x.safetensors") == MT_ERR_IO);
    CHECK(strstr(mt_last_error(), "/nonexistent-folder/x.safetensors") != NULL);
    CHECK(mt_checkpoint_read(mt_test_path(dir, "missing.safetensors"), &back) == MT_ERR_IO);
    CHECK(back == NULL);
    mt_checkpoint_free(c);
}

/* ---- damaged files -------------------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*size + 1);
    if (fread(data, 1, *size, f) != *size) *size = 0;
    fclose(f);
    return data;
}

static void spit(const char *path, const void *data, size_t size) {
    /* A new file, not a truncated one: ext4 flushes a truncated-and-rewritten file on close
     * (auto_da_alloc), which made thousands of rewrites take minutes. */
    unlink(path);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) perror(path);
    if (f) fclose(f);
}

/* A file with this header text and `data_size` zero data bytes. */
static void write_raw(const char *path, const char *header, size_t data_size) {
    size_t n = strlen(header);
    unsigned char *file = calloc(1, 8 + n + data_size);
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(file + 8, header, n);
    spit(path, file, 8 + n + data_size);
    free(file);
}

/* Reading `path` fails with MT_ERR_FORMAT and the message names the file and `fragment`. */
static void expect_corrupt(const char *path, const char *fragment, const char *what) {
    mt_checkpoint *c = NULL;
    mt_status status = mt_checkpoint_read(path, &c);
    CHECK_MSG(status == MT_ERR_FORMAT, "%s: read gave '%s'", what, mt_status_name(status));
    CHECK_MSG(c == NULL, "%s: a checkpoint came back", what);
    CHECK_MSG(strstr(mt_last_error(), path) != NULL, "%s: message '%s' lacks the path", what,
              mt_last_error());
    if (fragment)
        CHECK_MSG(strstr(mt_last_error(), fragment) != NULL, "%s: message '%s' lacks '%s'", what,
                  mt_last_error(), fragment);
    mt_checkpoint_free(c);
}

static void test_damaged(void) {
    const char *good = mt_test_path(dir, "sample.safetensors");
    size_t size = 0;
    unsigned char *bytes = slurp(good, &size);
    CHECK(bytes && size > 100);
    if (!bytes) return;
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; i--)
        header_size = (header_size << 8) | bytes[i];
    const char *bad = mt_test_path(dir, "bad.safetensors");

    /* Truncated anywhere: refused. */
    size_t cuts[] = {0, 4, 7, 8, 9, 8 + (size_t)header_size - 1, 8 + (size_t)header_size, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        spit(bad, bytes, cuts[i]);
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu bytes", cuts[i]);
        expect_corrupt(bad, NULL, what);
    }
    spit(bad, bytes, size - 1);
    expect_corrupt(bad, "truncated", "one byte short");

    /* Trailing garbage. */
    unsigned char *longer = malloc(size + 3);
    memcpy(longer, bytes, size);
    memcpy(longer + size, "xyz", 3);
    spit(bad, longer, size + 3);
    expect_corrupt(bad, "trailing garbage", "3 bytes appended");
    free(longer);

    /* A header length beyond the file. */
    unsigned char *copy = malloc(size);
    memcpy(copy, bytes, size);
    copy[5] = 0x7f;
    spit(bad, copy, size);
    expect_corrupt(bad, "header length", "huge header length");

    /* Every single-byte change of the header: refused or read consistently, never a crash (the
     * sanitizer build watches). Mutating to characters that keep JSON valid is allowed to pass,
     * e.g. a digit of a shape; then the layout checks must still hold. */
    int refused = 0, accepted = 0;
    const unsigned char replacements[] = {'{', '}', '"', ',', ':',  '[', ']',
                                          '0', '9', ' ', 0,   0xff, '\\'};
    for (size_t at = 8; at < 8 + header_size; at++) {
        for (size_t r = 0; r < sizeof replacements; r++) {
            memcpy(copy, bytes, size);
            if (copy[at] == replacements[r]) continue;
            copy[at] = replacements[r];
            spit(bad, copy, size);
            mt_checkpoint *c = NULL;
            mt_status status = mt_checkpoint_read(bad, &c);
            if (status == MT_OK) {
                accepted++;
                uint64_t total = 0;
                for (int i = 0; i < mt_checkpoint_tensor_count(c); i++)
                    total += mt_checkpoint_tensor_at(c, i)->bytes;
                CHECK_MSG(total == size - 8 - header_size, "accepted mutation at %zu lost bytes",
                          at);
            } else {
                refused++;
                CHECK_MSG(status == MT_ERR_FORMAT, "mutation at %zu: %s", at,
                          mt_status_name(status));
                CHECK_MSG(strstr(mt_last_error(), bad) != NULL, "no path in '%s'", mt_last_error());
            }
            mt_checkpoint_free(c);
        }
    }
    printf("header mutations: %d refused, %d accepted (JSON-neutral)\n", refused, accepted);
    CHECK(refused > 1000);

    /* Every single bit of the data flipped (the header intact): refused by the tensor's
     * checksum, naming the tensor. Before the checksums these all loaded. */
    int flips = 0;
    for (size_t at = 8 + (size_t)header_size; at < size; at++) {
        memcpy(copy, bytes, size);
        copy[at] ^= (unsigned char)(1u << (at % 8));
        spit(bad, copy, size);
        expect_corrupt(bad, "does not match its checksum", "a flipped data bit");
        flips++;
    }
    CHECK(flips > 40);
    free(copy);
    free(bytes);

    /* Hand-made headers for each rule. */
    write_raw(bad, "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    expect_corrupt(bad, "dtype 'F16'", "unsupported dtype");
    write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    expect_corrupt(bad, "tensor 'a': data_offsets hold 4 bytes, but F32 with 2 elements needs 8",
                   "size mismatch");
    write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4);
    expect_corrupt(bad, "outside the 4 data bytes", "offsets past the end");
    write_raw(bad,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
              8);
    expect_corrupt(bad, "overlap", "overlapping tensors");
    write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    expect_corrupt(bad, "gap of 4 bytes before tensor 'a'", "a gap");
    write_raw(bad,
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
              "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
              2);
    expect_corrupt(bad, "appears twice", "duplicate name");
    write_raw(bad, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1);
    expect_corrupt(bad, "missing data_offsets", "missing field");
    write_raw(bad, "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1);
    expect_corrupt(bad, "tensor 'a'", "negative dimension");
    write_raw(bad,
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],"
              "\"data_offsets\":[0,1]}}",
              1);
    expect_corrupt(bad, "overflows", "overflowing shape");
    write_raw(bad, "{\"__metadata__\":{\"k\":3}}", 0);
    expect_corrupt(bad, "must be strings", "a number in the metadata");
    write_raw(bad, "{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0);
    expect_corrupt(bad, "NUL", "an escaped NUL");
    write_raw(bad, "{\"__metadata__\":{\"k\":\"\\ud800\"}}", 0);
    expect_corrupt(bad, "invalid Unicode '\\uD800'", "a lone surrogate");
    write_raw(bad, "[1,2]   ", 0);
    expect_corrupt(bad, "not a JSON object", "an array header");
    write_raw(bad, "{}  x", 0);
    expect_corrupt(bad, "after the header", "text after the header");

    /* What other writers may legally do: no padding, unordered offsets, escapes, spaces. */
    write_raw(bad,
              "{ \"b\" : {\"shape\":[],\"dtype\":\"U8\",\"data_offsets\":[2,3]} ,"
              "\"a\\u00e9\\n\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
              "\"__metadata__\":{\"x\":\"\\ud83d\\ude00\"}}\n",
              3);
    mt_checkpoint *c = NULL;
    EXPECT_OK(mt_checkpoint_read(bad, &c));
    if (c) {
        CHECK(mt_checkpoint_find(c, "a\xc3\xa9\n") != NULL);
        CHECK(strcmp(mt_checkpoint_meta(c, "x"), "\xf0\x9f\x98\x80") == 0);
        CHECK(mt_checkpoint_find(c, "b")->rank == 0);
    }
    mt_checkpoint_free(c);
}

/* ---- atomic writes -------------------------------------------------------------------------- */

/* A checkpoint of `floats` floats all equal to `version`, with the version in the metadata. */
static mt_checkpoint *make_version(int version, int floats) {
    mt_checkpoint *c = NULL;
    if (mt_checkpoint_create(&c) != MT_OK) return NULL;
    float *data = malloc((size_t)floats * sizeof(float));
    for (int i = 0; i < floats; i++)
        data[i] = (float)version;
    int shape[1] = {floats};
    EXPECT_OK(mt_checkpoint_add_f32(c, "weights", 1, shape, data));
    char text[32];
    snprintf(text, sizeof text, "%d", version);
    EXPECT_OK(mt_checkpoint_set_meta(c, "version", text));
    free(data);
    return c;
}

/* The file at path is a complete checkpoint; returns its version (-1 if not). */
static int check_complete(const char *path, int floats) {
    mt_checkpoint *c = NULL;
    if (mt_checkpoint_read(path, &c) != MT_OK) {
        fprintf(stderr, "%s: %s\n", path, mt_last_error());
        return -1;
    }
    int version = atoi(mt_checkpoint_meta(c, "version"));
    const mt_checkpoint_tensor *t = mt_checkpoint_find(c, "weights");
    int ok = t && t->count == (uint64_t)floats;
    for (int i = 0; ok && i < floats; i++)
        ok = ((const float *)t->data)[i] == (float)version;
    mt_checkpoint_free(c);
    return ok ? version : -1;
}

static void test_atomic(void) {
    enum { FLOATS = 2 * 1024 * 1024 }; /* 8 MiB */
    const char *path = mt_test_path(dir, "atomic.safetensors");
    mt_checkpoint *v1 = make_version(1, FLOATS), *v2 = make_version(2, FLOATS);
    EXPECT_OK(mt_checkpoint_write(v1, path));
    CHECK(check_complete(path, FLOATS) == 1);

    /* An error half way: the previous file stays, the temporary one goes. */
    setenv("MT_CHECKPOINT_TEST_FAIL_AT", "3000000", 1);
    CHECK(mt_checkpoint_write(v2, path) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "injected after 3000000 bytes"), "message: %s",
              mt_last_error());
    unsetenv("MT_CHECKPOINT_TEST_FAIL_AT");
    CHECK(check_complete(path, FLOATS) == 1);
    char temp[4300];
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
    CHECK(access(temp, F_OK) != 0);

    /* The writer killed (SIGKILL) half way: the previous file stays. */
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        setenv("MT_CHECKPOINT_TEST_KILL_AT", "5000000", 1);
        mt_checkpoint_write(v2, path);
        _exit(3); /* not reached: the hook kills us */
    }
    int wstatus = 0;
    waitpid(child, &wstatus, 0);
    CHECK_MSG(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL, "child status %d", wstatus);
    CHECK(check_complete(path, FLOATS) == 1);
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)child);
    struct stat info;
    CHECK_MSG(stat(temp, &info) == 0 && info.st_size == 5000000,
              "the killed writer's temporary file should hold 5000000 bytes");
    unlink(temp);

    /* A writer rewriting the checkpoint in a loop, killed from outside at arbitrary moments:
     * whatever moment, the path holds one complete version. */
    for (int round = 0; round < 3; round++) {
        fflush(NULL);
        child = fork();
        if (child == 0) {
            for (int version = 10 * (round + 1);; version++) {
                mt_checkpoint *v = make_version(version, FLOATS / 8);
                if (mt_checkpoint_write(v, path) != MT_OK) _exit(4);
                mt_checkpoint_free(v);
            }
        }
        struct timespec delay = {.tv_sec = 0, .tv_nsec = 150000000L + 70000000L * round};
        nanosleep(&delay, NULL);
        kill(child, SIGKILL);
        waitpid(child, &wstatus, 0);
        int version = check_complete(path, FLOATS / 8);
        int version_if_none = check_complete(path, FLOATS); /* still v1 if no write finished */
        CHECK_MSG(version >= 10 * (round + 1) || version_if_none == 1 || version_if_none >= 10,
                  "round %d: the path holds no complete checkpoint", round);
        printf("kill round %d: the path holds version %d\n", round,
               version >= 0 ? version : version_if_none);
        snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)child);
        unlink(temp);
    }
    mt_checkpoint_free(v1);
    mt_checkpoint_free(v2);
}

/* ---- helpers for checkpoint_python.py ------------------------------------------------------- */

static int read_sample(const char *path) {
    /* What the script writes: "w" F32 [2,2] = [[1,2],[3,4]], "blob" U8 [3] = 7,8,9,
     * metadata {"step": "17"}. */
    mt_checkpoint *c = NULL;
    mt_status status = mt_checkpoint_read(path, &c);
    if (status != MT_OK) {
        fprintf(stderr, "%s\n", mt_last_error());
        return 1;
    }
    float w[4];
    int shape[2] = {2, 2};
    CHECK(mt_checkpoint_get_f32(c, "w", w, 4, 2, shape) == MT_OK);
    CHECK(w[0] == 1.0f && w[1] == 2.0f && w[2] == 3.0f && w[3] == 4.0f);
    const mt_checkpoint_tensor *blob = mt_checkpoint_find(c, "blob");
    CHECK(blob && blob->dtype == MT_CHECKPOINT_U8 && blob->bytes == 3 &&
          memcmp(blob->data, "\x07\x08\x09", 3) == 0);
    CHECK(mt_checkpoint_meta(c, "step") && strcmp(mt_checkpoint_meta(c, "step"), "17") == 0);
    mt_checkpoint_free(c);
    return mt_test_finish();
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-sample") == 0) {
        mt_checkpoint *c = make_sample();
        mt_status status = c ? mt_checkpoint_write(c, argv[2]) : MT_ERR_NOMEM;
        mt_checkpoint_free(c);
        if (status != MT_OK) fprintf(stderr, "%s\n", mt_last_error());
        return status == MT_OK && mt_test_failures == 0 ? 0 : 1;
    }
    if (argc == 3 && strcmp(argv[1], "--read-sample") == 0) return read_sample(argv[2]);
    snprintf(dir, sizeof dir, "%s", mt_test_make_temp_dir("checkpoint"));
    test_round_trip();
    test_damaged();
    test_atomic();
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
