/* Loader throughput: batches/s of 32 images at 160x160 (float32 [-1,1], shuffled, random flips)
 * with nothing consuming them, for 0..N prefetch threads, as ratios against a single-threaded
 * synchronous baseline in the same process (mt_dataset_get + the same conversion in a plain loop:
 * what a trainer without a loader would do).
 *
 *   bench_loader [--db PATH] [--threads-max N] [--batches K] [--size S] [--rounds R]
 *
 * Without --db: packs the shared photos (../shared/data/cats_vs_dogs/train) with mobiletune-pack
 * into a temporary folder when both exist, else synthesizes a 2,000-record database directly with
 * record.h + LMDB. */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "mobiletune/loader.h"

#ifndef MT_PACK_PATH
#define MT_PACK_PATH ""
#endif
#ifndef MT_SHARED_DIR
#define MT_SHARED_DIR "../shared"
#endif

typedef struct rate {
    double wall, cpu; /* batches per wall second, batches per CPU second */
} rate;

#define BENCH_LMDB(call)                                                                           \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MDB_SUCCESS) {                                                                  \
            fprintf(stderr, "bench_loader: %s failed: %s\n", #call, mdb_strerror(rc_));            \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

/* 2,000 records of noise-like pixels in two classes, written the way the packer lays them out. */
static int synthesize(const char *dir, int count, int size) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    BENCH_LMDB(mdb_env_create(&env));
    BENCH_LMDB(mdb_env_set_mapsize(env, (size_t)count * size * size * 3 * 2 + (64u << 20)));
    BENCH_LMDB(mdb_env_open(env, dir, 0, 0644));
    BENCH_LMDB(mdb_txn_begin(env, NULL, 0, &txn));
    BENCH_LMDB(mdb_dbi_open(txn, NULL, 0, &dbi));
    size_t pixels = (size_t)size * size * 3;
    uint8_t *img = malloc(pixels), *buf = malloc(pixels + 64 + 32);
    uint64_t counts[2] = {0, 0}, state = 12345;
    for (int i = 0; i < count; i++) {
        for (size_t k = 0; k < pixels; k++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            img[k] = (uint8_t)(state >> 56);
        }
        char name[32];
        snprintf(name, sizeof name, "synthetic/%d.png", i);
        mt_record r = {.encoding = MT_ENCODING_RAW,
                       .channels = 3,
                       .height = size,
                       .width = size,
                       .label = (uint32_t)(i % 2),
                       .payload = img,
                       .payload_bytes = pixels,
                       .name = name,
                       .name_bytes = strlen(name)};
        counts[i % 2]++;
        mt_record_encode(&r, buf);
        char key[MT_RECORD_KEY_BYTES + 1];
        mt_record_key((uint64_t)i, key);
        MDB_val k = {MT_RECORD_KEY_BYTES, key}, v = {mt_record_encoded_size(&r), buf};
        BENCH_LMDB(mdb_put(txn, dbi, &k, &v, 0));
    }
    char *names[2] = {"a", "b"};
    mt_dataset_meta meta = {.record_count = (uint64_t)count,
                            .height = size,
                            .width = size,
                            .channels = 3,
                            .class_count = 2,
                            .class_names = names,
                            .class_counts = counts,
                            .mean = {127.5, 127.5, 127.5},
                            .std = {73.9, 73.9, 73.9},
                            .split = "all",
                            .options = "synthetic"};
    char *text;
    size_t bytes;
    if (mt_meta_format(&meta, &text, &bytes) != MT_OK) {
        fprintf(stderr, "bench_loader: %s\n", mt_last_error());
        return 1;
    }
    MDB_val k = {strlen(MT_META_KEY), MT_META_KEY}, v = {bytes, text};
    BENCH_LMDB(mdb_put(txn, dbi, &k, &v, 0));
    BENCH_LMDB(mdb_txn_commit(txn));
    mdb_env_close(env);
    free(text);
    free(img);
    free(buf);
    return 0;
}

/* The baseline: one thread, one sample at a time, read + validate + convert + flip. */
static rate baseline(const char *db, int batch, int batches) {
    mt_dataset *ds;
    if (mt_dataset_open(db, &ds) != MT_OK) {
        fprintf(stderr, "bench_loader: %s\n", mt_last_error());
        exit(1);
    }
    const mt_dataset_meta *m = mt_dataset_meta_get(ds);
    uint64_t n = m->record_count;
    size_t pixels = (size_t)m->height * m->width * 3;
    uint8_t *img = malloc(pixels);
    float *out = malloc((size_t)batch * pixels * sizeof(float));
    int32_t *labels = malloc((size_t)batch * sizeof *labels);
    uint64_t *perm = malloc(n * sizeof *perm);
    mt_shard_permutation(n, 1, 0, true, perm);
    int w = m->width;
    double t0 = mt_clock_monotonic(), c0 = mt_clock_process_cpu();
    uint64_t pos = 0;
    for (int b = 0; b < batches; b++)
        for (int i = 0; i < batch; i++, pos++) {
            uint64_t index = perm[pos % n];
            if (mt_dataset_get(ds, index, img, &labels[i], NULL, 0) != MT_OK) {
                fprintf(stderr, "bench_loader: %s\n", mt_last_error());
                exit(1);
            }
            bool flip = mt_shard_flip(1, 0, index);
            float *o = out + (size_t)i * pixels;
            for (int y = 0; y < m->height; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < 3; c++) {
                        int sx = flip ? w - 1 - x : x;
                        o[((size_t)y * w + x) * 3 + c] =
                            (float)img[((size_t)y * w + sx) * 3 + c] / 127.5f - 1.0f;
                    }
        }
    rate r = {batches / (mt_clock_monotonic() - t0), batches / (mt_clock_process_cpu() - c0)};
    volatile float sink = out[0];
    (void)sink;
    free(img);
    free(out);
    free(labels);
    free(perm);
    mt_dataset_close(ds);
    return r;
}

static rate loader_rate(const char *db, int threads, int batch, int batches) {
    mt_loader_options o = {.world_size = 1,
                           .batch_size = batch,
                           .seed = 1,
                           .shuffle = true,
                           .drop_remainder = true,
                           .random_flip = true,
                           .threads = threads,
                           .ring_depth = 8,
                           .output = MT_LOADER_FLOAT32};
    mt_loader *l;
    if (mt_loader_open(db, &o, &l) != MT_OK) {
        fprintf(stderr, "bench_loader: %s\n", mt_last_error());
        exit(1);
    }
    double t0 = mt_clock_monotonic(), c0 = mt_clock_process_cpu();
    int done = 0;
    for (uint64_t epoch = 0; done < batches; epoch++) {
        if (mt_loader_start_epoch(l, epoch, 0) != MT_OK) break;
        mt_batch *b;
        mt_status st;
        while (done < batches && (st = mt_loader_next(l, &b)) == MT_OK) {
            mt_loader_release(l, b);
            done++;
        }
        if (done < batches && st != MT_END) {
            fprintf(stderr, "bench_loader: %s\n", mt_last_error());
            exit(1);
        }
    }
    rate r = {done / (mt_clock_monotonic() - t0), done / (mt_clock_process_cpu() - c0)};
    mt_loader_close(l);
    return r;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void remove_tree(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_loader: could not remove %s\n", dir);
}

int main(int argc, char **argv) {
    const char *db = NULL;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int threads_max = cores > 4 ? (int)cores : 4, batches = 150, size = 160, batch = 32, rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc)
            db = argv[++i];
        else if (!strcmp(argv[i], "--threads-max") && i + 1 < argc)
            threads_max = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
            batches = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_loader [--db PATH] [--threads-max N] [--batches K] "
                            "[--size S] [--rounds R]\n");
            return 2;
        }
    }
    char made[4096] = "";
    const char *source = "given";
    if (!db) {
        const char *tmp = getenv("TMPDIR");
        snprintf(made, sizeof made, "%s/mt-bench-loader-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(made)) {
            perror("mkdtemp");
            return 1;
        }
        char photos[4096], out[4200], cmd[12000];
        snprintf(photos, sizeof photos, "%s/data/cats_vs_dogs/train", MT_SHARED_DIR);
        snprintf(out, sizeof out, "%s/db", made);
        struct stat st;
        bool packed = false;
        if (MT_PACK_PATH[0] && access(MT_PACK_PATH, X_OK) == 0 && stat(photos, &st) == 0) {
            snprintf(cmd, sizeof cmd, "'%s' --size %d --no-progress '%s' '%s' > /dev/null",
                     MT_PACK_PATH, size, photos, out);
            printf("packing the shared photos: %s\n", cmd);
            fflush(stdout);
            packed = system(cmd) == 0;
            if (!packed) printf("mobiletune-pack failed; synthesizing instead\n");
            source = "shared photos packed by mobiletune-pack";
        }
        if (!packed) {
            if (mkdir(out, 0755) != 0 || synthesize(out, 2000, size) != 0) return 1;
            source = "synthetic (record.h + LMDB)";
        }
        db = out;
    }
    mt_dataset *ds;
    if (mt_dataset_open(db, &ds) != MT_OK) {
        fprintf(stderr, "bench_loader: %s\n", mt_last_error());
        return 1;
    }
    const mt_dataset_meta *m = mt_dataset_meta_get(ds);
    printf("dataset: %s (%s), %llu records of %dx%d, %s\n", db, source,
           (unsigned long long)m->record_count, m->height, m->width,
           m->encoding == MT_ENCODING_JPEG ? "jpeg" : "raw");
    printf("%d batches of %d per run, float32 [-1,1], shuffled, random flips, nothing consuming; "
           "%ld cores online\n",
           batches, batch, cores);
    mt_dataset_close(ds);

    if (threads_max < 1 || rounds < 1 || rounds > 99 || batches < 1) {
        fprintf(stderr, "bench_loader: bad --threads-max, --rounds or --batches\n");
        return 2;
    }
    /* Configurations: -1 = the baseline, 0 = loader filling inside next(), t = t threads. Run in
     * interleaved rounds and report medians, so a burst of someone else's load hits every
     * configuration alike rather than one of them. */
    int configs = threads_max + 2;
    double *wall = calloc((size_t)configs * rounds, sizeof *wall);
    double *cpu = calloc((size_t)configs * rounds, sizeof *cpu);
    baseline(db, batch, batches / 4 + 1); /* warm the page cache */
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < configs; k++) {
            rate x = k == 0 ? baseline(db, batch, batches) : loader_rate(db, k - 1, batch, batches);
            wall[k * rounds + r] = x.wall;
            cpu[k * rounds + r] = x.cpu;
        }
    printf("median of %d interleaved rounds; 'per CPU-s' = batches per CPU-second of the process\n",
           rounds);
    double base_wall = 0, base_cpu = 0;
    for (int k = 0; k < configs; k++) {
        double w = median(wall + k * rounds, rounds), c = median(cpu + k * rounds, rounds);
        if (k == 0) base_wall = w, base_cpu = c;
        char label[64];
        if (k == 0)
            snprintf(label, sizeof label, "baseline: 1 thread, synchronous");
        else if (k == 1)
            snprintf(label, sizeof label, "loader, 0 threads (inside next)");
        else
            snprintf(label, sizeof label, "loader, %d prefetch thread%s", k - 1, k > 2 ? "s" : "");
        printf("%-34s %7.1f batches/s (%6.0f img/s) %5.2fx   %6.1f per CPU-s %5.2fx\n", label, w,
               w * batch, w / base_wall, c, c / base_cpu);
    }
    free(wall);
    free(cpu);
    if (made[0]) remove_tree(made);
    return 0;
}
