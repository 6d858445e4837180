/* The loader on real mobiletune-pack output: a stratified 10% of the shared photos packed raw and
 * 5% packed as JPEG, read by two ranks in evaluation mode. Every record arrives exactly once, its
 * label and pixels agree with the random-access API, and the float pixels are the [-1,1] scaling of
 * those. Skips when ../shared or the packer is missing. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mobiletune/loader.h"
#include "test_db.h"
#include "test_util.h"

static void check_dataset(const char *db) {
    mt_dataset *ds;
    TEST_MUST(mt_dataset_open(db, &ds));
    const mt_dataset_meta *m = mt_dataset_meta_get(ds);
    uint64_t n = m->record_count;
    CHECK(n > 0 && m->class_count == 2 && m->height == 160 && m->width == 160);
    size_t pixels = (size_t)m->height * m->width * 3;
    int *seen = calloc(n, sizeof *seen);
    uint8_t *want = malloc(pixels);
    for (int rank = 0; rank < 2; rank++) {
        mt_loader_options o = {.rank = rank,
                               .world_size = 2,
                               .batch_size = 8,
                               .seed = 4,
                               .shuffle = true,
                               .drop_remainder = false,
                               .threads = 2,
                               .output = MT_LOADER_FLOAT32};
        mt_loader *l;
        TEST_MUST(mt_loader_open(db, &o, &l));
        TEST_MUST(mt_loader_start_epoch(l, 0, 0));
        mt_batch *b;
        mt_status st;
        while ((st = mt_loader_next(l, &b)) == MT_OK) {
            for (int i = 0; i < b->valid; i++) {
                uint64_t rec = b->records[i];
                CHECK(rec < n);
                if (rec >= n) continue;
                seen[rec]++;
                int32_t label;
                TEST_MUST(mt_dataset_get(ds, rec, want, &label, NULL, 0));
                CHECK(b->labels[i] == label);
                const float *got = (const float *)b->images + (size_t)i * pixels;
                size_t bad = 0;
                for (size_t k = 0; k < pixels; k++) {
                    float w = (float)want[k];
                    w /= 127.5f;
                    w -= 1.0f;
                    bad += got[k] != w;
                }
                CHECK_MSG(bad == 0, "%s record %llu: %zu values differ", db,
                          (unsigned long long)rec, bad);
            }
            mt_loader_release(l, b);
        }
        CHECK_MSG(st == MT_END, "%s", mt_last_error());
        mt_loader_close(l);
    }
    uint64_t once = 0;
    for (uint64_t i = 0; i < n; i++)
        once += seen[i] == 1;
    CHECK_MSG(once == n, "%s: %llu of %llu records seen exactly once", db, (unsigned long long)once,
              (unsigned long long)n);
    printf("%s: %llu records, each read once across 2 ranks\n", db, (unsigned long long)n);
    free(seen);
    free(want);
    mt_dataset_close(ds);
}

int main(void) {
    const char *photos = mt_test_shared_path("data/cats_vs_dogs/train");
    if (!photos) mt_test_skip("the shared photos (../shared/data/cats_vs_dogs/train) are absent");
    char photos_copy[4096];
    snprintf(photos_copy, sizeof photos_copy, "%s", photos);
    const char *pack = getenv("MT_PACK");
    if (!pack || access(pack, X_OK) != 0) mt_test_skip("mobiletune-pack is not built (MT_PACK)");
    char *tmp = mt_test_make_temp_dir("loader-packed");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", tmp);
    const char *variants[][2] = {{"raw", "--fraction 0.1"}, {"jpeg", "--fraction 0.05 --encoded"}};
    for (int v = 0; v < 2; v++) {
        char cmd[16384], db[4200];
        snprintf(db, sizeof db, "%s/%s", dir, variants[v][0]);
        snprintf(cmd, sizeof cmd, "'%s' --no-progress --threads 2 %s '%s' '%s' > /dev/null", pack,
                 variants[v][1], photos_copy, db);
        int rc = system(cmd);
        CHECK_MSG(rc == 0, "packing failed: %s", cmd);
        if (rc == 0) check_dataset(db);
    }
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
