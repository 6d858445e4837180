/* The sharding property, first on the pure arithmetic over many (N, ranks, batch) combinations,
 * then on real loaders (one per rank) over a small database for 1, 2, 3 and 4 ranks and several
 * epochs: every sample exactly once per epoch across ranks up to the documented remainder, the
 * same batch count on every rank, a different order every epoch, the same order for the same seed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/loader.h"
#include "test_db.h"
#include "test_util.h"

static bool is_permutation(const uint64_t *perm, uint64_t n) {
    char *seen = calloc(n ? n : 1, 1);
    bool ok = true;
    for (uint64_t i = 0; i < n && ok; i++) {
        if (perm[i] >= n || seen[perm[i]])
            ok = false;
        else
            seen[perm[i]] = 1;
    }
    free(seen);
    return ok;
}

/* One epoch of the pure rule: count how often each record is visited. Returns the padding count. */
static uint64_t visit_epoch(uint64_t n, int world, int batch, bool drop, const uint64_t *perm,
                            int *visits) {
    uint64_t steps = mt_shard_batch_count(n, world, batch, drop), padding = 0;
    for (int r = 0; r < world; r++)
        for (uint64_t b = 0; b < steps; b++) {
            bool seen_padding = false;
            for (int i = 0; i < batch; i++) {
                uint64_t p = mt_shard_position(n, r, world, batch, b, i);
                if (p == UINT64_MAX) {
                    padding++;
                    seen_padding = true;
                    continue;
                }
                /* Padding only ever trails the real samples within a batch. */
                CHECK(!seen_padding);
                visits[perm[p]]++;
            }
        }
    return padding;
}

static void test_pure(void) {
    const uint64_t sizes[] = {1, 2, 7, 10, 12, 13, 37, 100, 101};
    const int batches[] = {1, 3, 4, 8};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        uint64_t n = sizes[si];
        uint64_t *perm = malloc(n * sizeof *perm), *perm2 = malloc(n * sizeof *perm2);
        int *visits = calloc(n, sizeof *visits);
        for (int world = 1; world <= 4; world++)
            for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
                int batch = batches[bi];
                uint64_t per_step = (uint64_t)world * batch;
                for (int drop = 0; drop <= 1; drop++) {
                    uint64_t steps = mt_shard_batch_count(n, world, batch, drop);
                    CHECK(steps == (drop ? n / per_step : (n + per_step - 1) / per_step));
                    for (uint64_t epoch = 0; epoch < 4; epoch++) {
                        mt_shard_permutation(n, 42, epoch, true, perm);
                        CHECK(is_permutation(perm, n));
                        memset(visits, 0, n * sizeof *visits);
                        uint64_t padding = visit_epoch(n, world, batch, drop, perm, visits);
                        uint64_t once = 0, twice = 0;
                        for (uint64_t i = 0; i < n; i++) {
                            once += visits[i] == 1;
                            twice += visits[i] > 1;
                        }
                        CHECK(twice == 0);
                        if (drop) {
                            CHECK_MSG(once == n - n % per_step,
                                      "n %llu world %d batch %d: %llu "
                                      "seen",
                                      (unsigned long long)n, world, batch,
                                      (unsigned long long)once);
                            CHECK(padding == 0);
                        } else {
                            CHECK(once == n);
                            CHECK(padding == steps * per_step - n && padding < per_step);
                        }
                    }
                }
            }
        /* Same seed, same order; a new epoch or seed, a new order. */
        if (n >= 10) {
            mt_shard_permutation(n, 42, 1, true, perm);
            mt_shard_permutation(n, 42, 1, true, perm2);
            CHECK(memcmp(perm, perm2, n * sizeof *perm) == 0);
            mt_shard_permutation(n, 42, 2, true, perm2);
            CHECK(memcmp(perm, perm2, n * sizeof *perm) != 0);
            mt_shard_permutation(n, 43, 1, true, perm2);
            CHECK(memcmp(perm, perm2, n * sizeof *perm) != 0);
        }
        mt_shard_permutation(n, 42, 3, false, perm);
        for (uint64_t i = 0; i < n; i++)
            CHECK(perm[i] == i);
        free(perm);
        free(perm2);
        free(visits);
    }

    /* The dropped remainder changes from epoch to epoch: over 8 epochs every record of a 13-record
     * set with 2 ranks x 4 is seen at least once. */
    uint64_t perm[13];
    int visits[13] = {0};
    for (uint64_t epoch = 0; epoch < 8; epoch++) {
        mt_shard_permutation(13, 7, epoch, true, perm);
        visit_epoch(13, 2, 4, true, perm, visits);
    }
    for (int i = 0; i < 13; i++)
        CHECK_MSG(visits[i] > 0, "record %d never seen in 8 epochs", i);

    /* The permutation is not biased towards identity-ish orders: each record lands in the first
     * half about half of the time. */
    int first_half = 0;
    for (uint64_t epoch = 0; epoch < 2000; epoch++) {
        mt_shard_permutation(13, 1, epoch, true, perm);
        for (int p = 0; p < 6; p++)
            first_half += perm[p] == 0;
    }
    CHECK_MSG(first_half > 2000 * 6 / 13 * 0.85 && first_half < 2000 * 6 / 13 * 1.15, "%d",
              first_half);

    /* Flips: about half, deterministic, different per epoch. */
    int flips = 0, changed = 0;
    for (uint64_t i = 0; i < 10000; i++) {
        bool f = mt_shard_flip(5, 1, i);
        CHECK(f == mt_shard_flip(5, 1, i));
        flips += f;
        changed += f != mt_shard_flip(5, 2, i);
    }
    CHECK_MSG(flips > 4700 && flips < 5300, "%d of 10000 flipped", flips);
    CHECK_MSG(changed > 4700 && changed < 5300, "%d of 10000 changed between epochs", changed);

    /* Rotation angles: a function of (seed, epoch, record), within [-f*2pi, f*2pi), spread
     * uniformly (each tenth of the range holds 1000 +- 5 sigma = 150 of 10000), new each epoch,
     * unrelated to the flip, and scaled by the factor. */
    const double f = 0.2, range = f * 2 * M_PI;
    int bins[10] = {0}, same_sign_as_flip = 0;
    double sum = 0;
    for (uint64_t i = 0; i < 10000; i++) {
        double a = mt_shard_rotation(5, 1, i, f);
        CHECK(a == mt_shard_rotation(5, 1, i, f));
        CHECK(a >= -range && a < range);
        CHECK(a != mt_shard_rotation(5, 2, i, f) && a != mt_shard_rotation(6, 1, i, f));
        CHECK(fabs(mt_shard_rotation(5, 1, i, 0.1) * 2 - a) < 1e-12);
        bins[(int)((a + range) / (2 * range) * 10)]++;
        sum += a;
        same_sign_as_flip += (a > 0) == mt_shard_flip(5, 1, i);
    }
    for (int b = 0; b < 10; b++)
        CHECK_MSG(bins[b] > 850 && bins[b] < 1150, "tenth %d of the angle range: %d of 10000", b,
                  bins[b]);
    CHECK_MSG(fabs(sum / 10000) < 0.05 * range, "mean angle %g", sum / 10000);
    CHECK_MSG(same_sign_as_flip > 4700 && same_sign_as_flip < 5300,
              "the angle's sign follows the flip in %d of 10000", same_sign_as_flip);
}

/* Real loaders, one per rank, over a 37-record database. */
static void test_loaders(const char *dir) {
    const int n = 37, batch = 4, epochs = 3;
    for (int world = 1; world <= 4; world++)
        for (int drop = 0; drop <= 1; drop++) {
            uint64_t per_step = (uint64_t)world * batch;
            int *order[3]; /* per epoch: records in global-step order, for comparing epochs */
            for (int e = 0; e < epochs; e++)
                order[e] = calloc(n, sizeof(int));
            mt_loader *loaders[4];
            uint64_t steps = 0;
            for (int r = 0; r < world; r++) {
                mt_loader_options o = {.rank = r,
                                       .world_size = world,
                                       .batch_size = batch,
                                       .seed = 99,
                                       .shuffle = true,
                                       .drop_remainder = drop,
                                       .threads = 2,
                                       .ring_depth = 3,
                                       .output = MT_LOADER_UINT8};
                TEST_MUST(mt_loader_open(dir, &o, &loaders[r]));
                if (r == 0) steps = mt_loader_batch_count(loaders[r]);
                CHECK(mt_loader_batch_count(loaders[r]) == steps);
            }
            CHECK(steps == (drop ? n / per_step : (n + per_step - 1) / per_step));
            for (int e = 0; e < epochs; e++) {
                int visits[37] = {0};
                int seen = 0;
                for (int r = 0; r < world; r++) {
                    CHECK(mt_loader_start_epoch(loaders[r], (uint64_t)e, 0) == MT_OK);
                    uint64_t got = 0;
                    mt_batch *b;
                    mt_status st;
                    while ((st = mt_loader_next(loaders[r], &b)) == MT_OK) {
                        CHECK(b->index == got && b->epoch == (uint64_t)e && b->size == batch);
                        for (int i = 0; i < b->size; i++) {
                            if (i >= b->valid) {
                                CHECK(b->labels[i] == -1 && b->records[i] == UINT64_MAX);
                                continue;
                            }
                            CHECK(b->records[i] < (uint64_t)n);
                            int rec = (int)b->records[i];
                            visits[rec]++;
                            CHECK(b->labels[i] == test_db_label(rec, 3));
                            /* global position of this sample */
                            uint64_t pos = (got * world + (uint64_t)r) * batch + (uint64_t)i;
                            if (pos < (uint64_t)n) order[e][pos] = rec;
                            seen++;
                        }
                        mt_loader_release(loaders[r], b);
                        got++;
                    }
                    CHECK_MSG(st == MT_END, "%s", mt_last_error());
                    CHECK(got == steps);
                }
                int twice = 0;
                for (int i = 0; i < n; i++)
                    twice += visits[i] > 1;
                CHECK(twice == 0);
                if (drop)
                    CHECK_MSG(seen == n - n % (int)per_step, "world %d: %d seen", world, seen);
                else
                    CHECK_MSG(seen == n, "world %d: %d seen", world, seen);
            }
            CHECK(memcmp(order[0], order[1], n * sizeof(int)) != 0);
            CHECK(memcmp(order[1], order[2], n * sizeof(int)) != 0);
            /* Same seed: a fresh loader replays epoch 1 identically. */
            mt_loader *again;
            mt_loader_options o = {.rank = 0,
                                   .world_size = 1,
                                   .batch_size = 1,
                                   .seed = 99,
                                   .shuffle = true,
                                   .drop_remainder = false,
                                   .threads = 1,
                                   .output = MT_LOADER_UINT8};
            TEST_MUST(mt_loader_open(dir, &o, &again));
            CHECK(mt_loader_start_epoch(again, 1, 0) == MT_OK);
            mt_batch *b;
            for (int p = 0; p < n && mt_loader_next(again, &b) == MT_OK; p++) {
                /* With batch 1 on one rank the global order is the permutation itself; with drop
                 * the last positions were not recorded. */
                if (!drop || p < n - n % (int)per_step)
                    CHECK_MSG((int)b->records[0] == order[1][p], "position %d", p);
                mt_loader_release(again, b);
            }
            mt_loader_close(again);
            for (int r = 0; r < world; r++)
                mt_loader_close(loaders[r]);
            for (int e = 0; e < epochs; e++)
                free(order[e]);
        }
}

int main(void) {
    test_pure();
    char *dir = mt_test_make_temp_dir("shard");
    test_db_spec spec = {.count = 37, .height = 4, .width = 5, .classes = 3};
    if (!test_db_create(dir, &spec)) {
        CHECK(false);
        return mt_test_finish();
    }
    test_loaders(dir);
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
