/* The batch loader's output: exact pixel values ([-1,1] scaling as Keras computes it, flips where
 * mt_shard_flip says), labels, determinism across prefetch thread counts and ring depths, resuming
 * an epoch at a batch index, caller-supplied buffers, the random-access API, JPEG records, and a
 * database in a folder the process cannot write. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "test_db.h"
#include "test_util.h"

enum { N = 29, H = 6, W = 7, CLASSES = 4 };

static float keras_scale(uint8_t v) {
    float x = (float)v; /* preprocess_input: x /= 127.5; x -= 1. in float32 */
    x /= 127.5f;
    x -= 1.0f;
    return x;
}

/* The pixels record `rec` must have in a batch, as uint8. */
static void expected_pixels(int rec, bool flip, uint8_t *out) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                out[(y * W + x) * 3 + c] = test_db_pixel(rec, y, flip ? W - 1 - x : x, c);
}

static void test_pixels(const char *dir) {
    for (int out = 0; out <= 1; out++) {
        mt_loader_options o = {.world_size = 1,
                               .batch_size = 5,
                               .seed = 3,
                               .shuffle = true,
                               .drop_remainder = false,
                               .random_flip = true,
                               .threads = 2,
                               .output = out ? MT_LOADER_UINT8 : MT_LOADER_FLOAT32};
        mt_loader *l;
        TEST_MUST(mt_loader_open(dir, &o, &l));
        const mt_dataset_meta *m = mt_loader_meta(l);
        CHECK(m->record_count == N && m->height == H && m->width == W);
        int flipped = 0, straight = 0;
        for (uint64_t epoch = 0; epoch < 2; epoch++) {
            TEST_MUST(mt_loader_start_epoch(l, epoch, 0));
            mt_batch *b;
            int total = 0;
            while (mt_loader_next(l, &b) == MT_OK) {
                CHECK(b->height == H && b->width == W && b->channels == 3);
                for (int i = 0; i < b->size; i++) {
                    uint8_t want[H * W * 3];
                    if (i >= b->valid) {
                        memset(want, 0, sizeof want);
                        CHECK(b->labels[i] == -1 && b->flips[i] == 0);
                    } else {
                        int rec = (int)b->records[i];
                        bool flip = mt_shard_flip(3, epoch, (uint64_t)rec);
                        flipped += flip, straight += !flip;
                        /* uint8 comes as stored, with the decision as a flag for the consumer
                         * (the backend's input_convert); float comes flipped, flags 0 */
                        expected_pixels(rec, flip && !out, want);
                        CHECK_MSG(b->flips[i] == (out ? flip : 0), "flip flag of slot %d", i);
                        CHECK(b->labels[i] == test_db_label(rec, CLASSES));
                        total++;
                    }
                    if (out) {
                        const uint8_t *got = (const uint8_t *)b->images + (size_t)i * H * W * 3;
                        CHECK_MSG(memcmp(got, want, sizeof want) == 0, "uint8 slot %d", i);
                    } else {
                        const float *got = (const float *)b->images + (size_t)i * H * W * 3;
                        int bad = 0;
                        for (int k = 0; k < H * W * 3; k++) {
                            float w = i >= b->valid ? 0.0f : keras_scale(want[k]);
                            bad += got[k] != w;
                            bad += got[k] < -1.0f || got[k] > 1.0f;
                        }
                        CHECK_MSG(bad == 0, "float slot %d: %d values differ", i, bad);
                    }
                }
                mt_loader_release(l, b);
            }
            CHECK(total == N);
        }
        CHECK(flipped > 5 && straight > 5);
        mt_loader_close(l);
    }
    /* The scale's fixed points. */
    CHECK(keras_scale(0) == -1.0f && keras_scale(255) == 1.0f);
    CHECK_CLOSE(keras_scale(128), 0.0039215686, 1e-7, 0);
}

/* random_rotation: every image of a batch is mt_image_rotate of its record by
 * mt_shard_rotation's angle, then flipped where mt_shard_flip says (uint8 output: flagged in
 * b->flips instead); float output scaled as Keras scales, uint8 output rounded to the nearest level (both exactly, from the same rotated floats);
 * the same batches for 0 and 3 threads; angles within [-factor*2pi, factor*2pi). */
static uint64_t fnv_bytes(const void *data, size_t n, uint64_t h) {
    const uint8_t *bytes = data;
    for (size_t k = 0; k < n; k++)
        h = (h ^ bytes[k]) * 1099511628211ull;
    return h;
}

static void test_rotation(const char *dir) {
    const double factor = 0.2;
    uint64_t digests[2][2] = {{0}};
    for (int out = 0; out <= 1; out++)
        for (int threads = 0; threads <= 3; threads += 3) {
            mt_loader_options o = {.world_size = 1,
                                   .batch_size = 4,
                                   .seed = 5,
                                   .shuffle = true,
                                   .drop_remainder = true,
                                   .random_flip = true,
                                   .random_rotation = factor,
                                   .threads = threads,
                                   .output = out ? MT_LOADER_UINT8 : MT_LOADER_FLOAT32};
            mt_loader *l;
            TEST_MUST(mt_loader_open(dir, &o, &l));
            int bad = 0, turned = 0, checked = 0;
            uint64_t digest = 0;
            for (uint64_t epoch = 0; epoch < 2; epoch++) {
                TEST_MUST(mt_loader_start_epoch(l, epoch, 0));
                mt_batch *b;
                while (mt_loader_next(l, &b) == MT_OK) {
                    digest = fnv_bytes(
                        b->images, (size_t)b->size * H * W * 3 * (out ? 1 : sizeof(float)), digest);
                    for (int i = 0; i < b->valid; i++) {
                        uint64_t rec = b->records[i];
                        double angle = mt_shard_rotation(5, epoch, rec, factor);
                        CHECK(angle >= -factor * 2 * M_PI && angle < factor * 2 * M_PI);
                        turned += fabs(angle) > 0.1;
                        uint8_t src[H * W * 3];
                        float rotated[H * W * 3];
                        test_db_pixels((int)rec, H, W, src);
                        mt_image_rotate(src, H, W, angle, rotated);
                        /* uint8 output leaves the flip to the consumer: unflipped, flagged */
                        bool flip = mt_shard_flip(5, epoch, rec);
                        CHECK(b->flips[i] == (out && flip));
                        bool mirrored = flip && !out;
                        for (int y = 0; y < H; y++)
                            for (int x = 0; x < W; x++)
                                for (int c = 0; c < 3; c++) {
                                    float v =
                                        rotated[(y * W + (mirrored ? W - 1 - x : x)) * 3 + c];
                                    size_t k = ((size_t)i * H * W + (size_t)y * W + x) * 3 + c;
                                    if (out) {
                                        bad += ((const uint8_t *)b->images)[k] !=
                                               (uint8_t)floorf(v + 0.5f); /* nearest, ties up */
                                    } else {
                                        float want = v;
                                        want /= 127.5f;
                                        want -= 1.0f;
                                        bad += ((const float *)b->images)[k] != want;
                                    }
                                }
                        checked++;
                    }
                    mt_loader_release(l, b);
                }
            }
            CHECK_MSG(bad == 0, "rotation (%s, %d threads): %d values differ",
                      out ? "uint8" : "float", threads, bad);
            CHECK(checked == 2 * 28 && turned > checked / 2);
            digests[out][threads / 3] = digest;
            mt_loader_close(l);
        }
    CHECK(digests[0][0] == digests[0][1] && digests[1][0] == digests[1][1]);
    /* a rotation is not the identity: the loader without it gives other pixels */
    mt_loader_options plain = {.world_size = 1,
                               .batch_size = 4,
                               .seed = 5,
                               .shuffle = true,
                               .drop_remainder = true,
                               .random_flip = true};
    mt_loader *l;
    TEST_MUST(mt_loader_open(dir, &plain, &l));
    TEST_MUST(mt_loader_start_epoch(l, 0, 0));
    uint64_t digest = 0;
    mt_batch *b;
    while (mt_loader_next(l, &b) == MT_OK) {
        digest = fnv_bytes(b->images, (size_t)b->size * H * W * 3 * sizeof(float), digest);
        mt_loader_release(l, b);
    }
    mt_loader_close(l);
    CHECK(digest != digests[0][0]);
    /* more than a full turn either way is refused */
    plain.random_rotation = 1.5;
    CHECK(mt_loader_open(dir, &plain, &l) == MT_ERR_INVALID);
}

/* A digest of every batch of two epochs, for comparing configurations. */
static uint64_t digest_run(const char *dir, int threads, int depth, uint64_t start_epoch,
                           uint64_t start_batch, int epochs) {
    mt_loader_options o = {.world_size = 2,
                           .rank = 1,
                           .batch_size = 3,
                           .seed = 11,
                           .shuffle = true,
                           .drop_remainder = false,
                           .random_flip = true,
                           .threads = threads,
                           .ring_depth = depth,
                           .output = MT_LOADER_FLOAT32};
    mt_loader *l;
    TEST_MUST(mt_loader_open(dir, &o, &l));
    uint64_t h = 1469598103934665603ull;
    for (uint64_t e = start_epoch; e < start_epoch + (uint64_t)epochs; e++) {
        TEST_MUST(mt_loader_start_epoch(l, e, e == start_epoch ? start_batch : 0));
        mt_batch *b;
        mt_status st;
        while ((st = mt_loader_next(l, &b)) == MT_OK) {
            const uint8_t *bytes = b->images;
            size_t n = (size_t)b->size * H * W * 3 * sizeof(float);
            for (size_t k = 0; k < n; k++)
                h = (h ^ bytes[k]) * 1099511628211ull;
            for (int i = 0; i < b->size; i++)
                h = (h ^ (uint64_t)b->labels[i]) * 1099511628211ull;
            h = (h ^ b->index) * 1099511628211ull;
            mt_loader_release(l, b);
        }
        CHECK_MSG(st == MT_END, "%s", mt_last_error());
    }
    mt_loader_close(l);
    return h;
}

static void test_determinism(const char *dir) {
    uint64_t base = digest_run(dir, 0, 1, 0, 0, 2);
    const int threads[] = {0, 1, 2, 3, 8};
    const int depths[] = {1, 2, 4, 7};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++)
        for (size_t d = 0; d < sizeof depths / sizeof depths[0]; d++)
            CHECK_MSG(digest_run(dir, threads[t], depths[d], 0, 0, 2) == base,
                      "threads %d depth %d differs", threads[t], depths[d]);
    /* Resume: epoch 1 started at batch 2 equals the tail of a full epoch 1. */
    mt_loader_options o = {.world_size = 2,
                           .rank = 1,
                           .batch_size = 3,
                           .seed = 11,
                           .shuffle = true,
                           .random_flip = true,
                           .threads = 2,
                           .output = MT_LOADER_UINT8};
    mt_loader *full, *resumed;
    TEST_MUST(mt_loader_open(dir, &o, &full));
    TEST_MUST(mt_loader_open(dir, &o, &resumed));
    uint64_t steps = mt_loader_batch_count(full);
    CHECK(steps == 5); /* ceil(29 / 6) */
    TEST_MUST(mt_loader_start_epoch(full, 1, 0));
    TEST_MUST(mt_loader_start_epoch(resumed, 1, 2));
    mt_batch *a, *b;
    for (uint64_t k = 0; k < steps; k++) {
        TEST_MUST(mt_loader_next(full, &a));
        if (k >= 2) {
            TEST_MUST(mt_loader_next(resumed, &b));
            CHECK(a->index == k && b->index == k && a->valid == b->valid);
            CHECK(memcmp(a->images, b->images, (size_t)a->size * H * W * 3) == 0);
            CHECK(memcmp(a->labels, b->labels, (size_t)a->size * sizeof *a->labels) == 0);
            mt_loader_release(resumed, b);
        }
        mt_loader_release(full, a);
    }
    CHECK(mt_loader_next(full, &a) == MT_END && a == NULL);
    CHECK(mt_loader_next(resumed, &b) == MT_END);
    CHECK(mt_loader_start_epoch(resumed, 2, steps + 1) == MT_ERR_INVALID);
    /* Start at the very end: an empty epoch. */
    TEST_MUST(mt_loader_start_epoch(resumed, 2, steps));
    CHECK(mt_loader_next(resumed, &b) == MT_END);
    /* Restart in the middle of an epoch with batches in flight. */
    TEST_MUST(mt_loader_start_epoch(full, 3, 0));
    TEST_MUST(mt_loader_next(full, &a));
    CHECK(mt_loader_start_epoch(full, 4, 0) == MT_ERR_INVALID); /* a batch is still held */
    mt_loader_release(full, a);
    TEST_MUST(mt_loader_start_epoch(full, 4, 0));
    TEST_MUST(mt_loader_next(full, &a));
    CHECK(a->epoch == 4 && a->index == 0);
    mt_loader_release(full, a);
    mt_loader_close(full);
    mt_loader_close(resumed);
}

typedef struct pool {
    uint8_t *blocks[8];
    int handed, returned;
    size_t bytes;
} pool;

static void *pool_alloc(size_t bytes, void *user) {
    pool *p = user;
    if (p->handed >= 8) return NULL;
    p->bytes = bytes;
    p->blocks[p->handed] = malloc(bytes);
    return p->blocks[p->handed++];
}

static void pool_free(void *buffer, size_t bytes, void *user) {
    pool *p = user;
    CHECK(bytes == p->bytes);
    for (int i = 0; i < p->handed; i++)
        if (p->blocks[i] == buffer) {
            free(buffer);
            p->blocks[i] = NULL;
            p->returned++;
        }
}

static void test_allocator_and_ring(const char *dir) {
    pool p = {0};
    mt_loader_options o = {.world_size = 1,
                           .batch_size = 4,
                           .threads = 1,
                           .ring_depth = 3,
                           .drop_remainder = true,
                           .output = MT_LOADER_FLOAT32,
                           .allocator = {.alloc = pool_alloc, .free = pool_free, .user = &p}};
    mt_loader *l;
    TEST_MUST(mt_loader_open(dir, &o, &l));
    /* one buffer per batch: images, then labels and flip flags (64-byte aligned), so that
     * pinned memory covers everything a GPU copies */
    const size_t images = 4 * H * W * 3 * sizeof(float), labels_at = (images + 63) / 64 * 64;
    CHECK(p.handed == 3 && p.bytes == labels_at + 64 + 4);
    TEST_MUST(mt_loader_start_epoch(l, 0, 0));
    mt_batch *held[3];
    for (int k = 0; k < 3; k++) {
        TEST_MUST(mt_loader_next(l, &held[k]));
        bool ours = false;
        for (int i = 0; i < p.handed; i++)
            ours |= held[k]->images == p.blocks[i];
        CHECK(ours);
        const uint8_t *base = held[k]->images;
        CHECK((const uint8_t *)held[k]->labels == base + labels_at);
        CHECK(held[k]->flips == base + labels_at + 64);
        /* Without shuffle the records come in order. */
        CHECK(held[k]->records[0] == (uint64_t)k * 4);
    }
    /* Every slot held: next() must say so rather than wait forever. */
    mt_batch *extra;
    CHECK(mt_loader_next(l, &extra) == MT_ERR_INVALID);
    /* Release out of order. */
    mt_loader_release(l, held[1]);
    mt_loader_release(l, held[0]);
    TEST_MUST(mt_loader_next(l, &extra));
    CHECK(extra->index == 3);
    mt_loader_release(l, held[2]);
    mt_loader_release(l, extra);
    mt_loader_close(l);
    CHECK(p.returned == 3);

    /* A failing allocator is an error, not a crash. */
    pool tiny = {.handed = 7};
    o.allocator.user = &tiny;
    CHECK(mt_loader_open(dir, &o, &l) == MT_ERR_NOMEM);
    for (int i = 7; i < tiny.handed; i++)
        free(tiny.blocks[i]);

    /* Bad options. */
    mt_loader_options bad = {.world_size = 2, .rank = 2, .batch_size = 1};
    CHECK(mt_loader_open(dir, &bad, &l) == MT_ERR_INVALID && l == NULL);
    bad = (mt_loader_options){.world_size = 1, .batch_size = 0};
    CHECK(mt_loader_open(dir, &bad, &l) == MT_ERR_INVALID);
    bad = (mt_loader_options){.world_size = 4, .batch_size = 8, .drop_remainder = true};
    CHECK(mt_loader_open(dir, &bad, &l) == MT_ERR_INVALID); /* 29 < 32: empty training epoch */
    bad.drop_remainder = false;
    TEST_MUST(mt_loader_open(dir, &bad, &l));
    CHECK(mt_loader_batch_count(l) == 1);
    mt_batch *b;
    CHECK(mt_loader_next(l, &b) == MT_ERR_INVALID); /* no epoch started */
    mt_loader_close(l);
}

static void test_random_access(const char *dir) {
    mt_dataset *ds;
    TEST_MUST(mt_dataset_open(dir, &ds));
    CHECK(mt_dataset_count(ds) == N);
    CHECK(mt_dataset_meta_get(ds)->class_count == CLASSES);
    for (int i = 0; i < N; i++) {
        uint8_t got[H * W * 3], want[H * W * 3];
        int32_t label = -5;
        char name[64];
        TEST_MUST(mt_dataset_get(ds, (uint64_t)i, got, &label, name, sizeof name));
        expected_pixels(i, false, want);
        CHECK(memcmp(got, want, sizeof want) == 0);
        CHECK(label == test_db_label(i, CLASSES));
        char want_name[64];
        snprintf(want_name, sizeof want_name, "img/%06d.png", i);
        CHECK(strcmp(name, want_name) == 0);
        char small[5];
        TEST_MUST(mt_dataset_get(ds, (uint64_t)i, NULL, NULL, small, sizeof small));
        CHECK(strcmp(small, "img/") == 0);
    }
    uint8_t buf[H * W * 3];
    CHECK(mt_dataset_get(ds, N, buf, NULL, NULL, 0) == MT_ERR_INVALID);
    mt_dataset_close(ds);
    CHECK(mt_dataset_open("/nonexistent/dataset", &ds) == MT_ERR_IO && ds == NULL);
}

static void test_jpeg(void) {
    char *dir = mt_test_make_temp_dir("loader-jpeg");
    test_db_spec spec = {
        .count = 6, .height = 16, .width = 24, .classes = 2, .encoding = MT_ENCODING_JPEG};
    if (!test_db_create(dir, &spec)) {
        fprintf(stderr, "cannot create a JPEG database (mt_image_encode_jpeg: %s)\n",
                mt_last_error());
        CHECK(false);
        return;
    }
    mt_loader_options o = {
        .world_size = 1, .batch_size = 6, .threads = 2, .output = MT_LOADER_UINT8};
    mt_loader *l;
    TEST_MUST(mt_loader_open(dir, &o, &l));
    TEST_MUST(mt_loader_start_epoch(l, 0, 0));
    mt_batch *b;
    TEST_MUST(mt_loader_next(l, &b));
    /* Quality 100 4:4:4 JPEG of a smooth-ish pattern: close, not exact. */
    double worst = 0;
    for (int i = 0; i < 6; i++) {
        uint8_t want[16 * 24 * 3];
        test_db_pixels((int)b->records[i], 16, 24, want);
        const uint8_t *got = (const uint8_t *)b->images + (size_t)i * sizeof want;
        double sum = 0;
        for (size_t k = 0; k < sizeof want; k++)
            sum += abs((int)got[k] - (int)want[k]);
        double mean = sum / sizeof want;
        if (mean > worst) worst = mean;
    }
    CHECK_MSG(worst < 12.0, "mean abs error of the JPEG round trip %.2f", worst);
    mt_loader_release(l, b);
    mt_loader_close(l);
    mt_test_remove_tree(dir);
}

/* Open the copy in `dir` and read one epoch; used in the unprivileged child. */
static int read_all(const char *dir) {
    mt_loader_options o = {
        .world_size = 1, .batch_size = 4, .threads = 2, .output = MT_LOADER_UINT8};
    mt_loader *l;
    if (mt_loader_open(dir, &o, &l) != MT_OK) {
        fprintf(stderr, "read-only open: %s\n", mt_last_error());
        return 1;
    }
    int records = 0;
    mt_batch *b;
    mt_status st = mt_loader_start_epoch(l, 0, 0);
    while (st == MT_OK && (st = mt_loader_next(l, &b)) == MT_OK) {
        records += b->valid;
        mt_loader_release(l, b);
    }
    mt_loader_close(l);
    if (st != MT_END || records != N) {
        fprintf(stderr, "read-only epoch: %s, %d records\n", mt_last_error(), records);
        return 1;
    }
    return 0;
}

static void test_read_only(const char *dir) {
    char *ro = mt_test_make_temp_dir("loader-ro");
    char db[4200], lock[4300];
    snprintf(db, sizeof db, "%s/db", ro);
    snprintf(lock, sizeof lock, "%s/lock.mdb", db);
    CHECK(mkdir(db, 0755) == 0);
    CHECK(test_db_copy(dir, db));
    char data[4300];
    snprintf(data, sizeof data, "%s/data.mdb", db);
    CHECK(chmod(data, 0444) == 0 && chmod(db, 0555) == 0 && chmod(ro, 0755) == 0);
    /* root ignores permission bits, so a root test run reads the copy as `nobody` in a child:
     * there the folder really is unwritable and a lock file could not be created. */
    bool as_root = geteuid() == 0;
    pid_t pid = fork();
    if (pid == 0) {
        if (as_root && (setgid(65534) != 0 || setuid(65534) != 0)) {
            perror("setuid(nobody)");
            _exit(2);
        }
        if (access(db, W_OK) == 0) {
            fprintf(stderr, "the copy is still writable: the test would prove nothing\n");
            _exit(3);
        }
        _exit(read_all(db));
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "read-only child: status %d", status);
    struct stat st;
    CHECK_MSG(stat(lock, &st) != 0, "a lock file appeared in the read-only folder");
    chmod(db, 0755);
    mt_test_remove_tree(ro);
}

int main(void) {
    char *tmp = mt_test_make_temp_dir("loader");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", tmp);
    test_db_spec spec = {.count = N, .height = H, .width = W, .classes = CLASSES};
    if (!test_db_create(dir, &spec)) {
        CHECK(false);
        return mt_test_finish();
    }
    test_pixels(dir);
    test_rotation(dir);
    test_determinism(dir);
    test_allocator_and_ring(dir);
    test_random_access(dir);
    test_jpeg();
    test_read_only(dir);
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
