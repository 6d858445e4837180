/* The frozen-mode feature cache (trainer_internal.h trainer_build_feature_cache). */
#include <stdlib.h>
#include <string.h>

#include "data/mirror.h"
#include "trainer_internal.h"

/* ---- the frozen-mode feature cache ---------------------------------------------------------- */

/* Pooled features of every training record, computed once in inference mode (the backbone is
 * frozen, so they never change), each rank a share, then gathered everywhere. With random flips
 * on, the features of the mirrored image are cached too, and each epoch picks the view the loader
 * would have produced (mt_shard_flip): the same training as running the backbone every step. */
static void mirror_images(float *images, int n, int height, int width) {
    float original[3 * MT_MAX_IMAGE_SIDE]; /* one row; the loader checks width against the cap */
    const size_t row_floats = (size_t)width * 3;
    for (int i = 0; i < n * height; i++) {
        float *row = images + (size_t)i * row_floats;
        memcpy(original, row, row_floats * sizeof *row);
        mt_mirror_row(row, original, width, 3 * sizeof *row);
    }
}

mt_status trainer_build_feature_cache(trainer *t, const char *db, int views, uint64_t records,
                                      float **feature_cache, int32_t **label_cache) {
    const mt_train_config *c = t->config;
    const int features = t->layout->feature_channels;
    const int batch = c->data.batch_size;
    mt_loader_options options = {
        .rank = t->who.rank, .world_size = t->who.world_size, .batch_size = batch,
        .seed = (uint64_t)c->train.seed, .shuffle = false, .drop_remainder = false,
        .random_flip = false, .threads = c->data.loader_threads, .ring_depth = c->data.prefetch,
    };
    mt_loader *loader = NULL;
    MT_TRY(mt_loader_open(db, &options, &loader));
    const uint64_t batches = mt_loader_batch_count(loader);
    const size_t rows = (size_t)batches * (size_t)batch;        /* per rank, padding included */
    const size_t row_floats = (size_t)views * features + 2;    /* features, label, record */
    float *mine = malloc(rows * row_floats * sizeof(float));
    float *all = malloc(rows * row_floats * sizeof(float) * (size_t)t->who.world_size);
    *feature_cache = malloc(records * (size_t)views * features * sizeof(float));
    *label_cache = malloc(records * sizeof(int32_t));
    mt_status status = mine && all && *feature_cache && *label_cache
                           ? mt_loader_start_epoch(loader, 0, 0)
                           : MT_FAIL(MT_ERR_NOMEM, "out of memory for the feature cache");
    float *pooled = status == MT_OK ? malloc((size_t)batch * features * sizeof(float)) : NULL;
    if (status == MT_OK && !pooled) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    for (uint64_t b = 0; status == MT_OK && b < batches; b++) {
        mt_batch *next = NULL;
        status = mt_loader_next(loader, &next);
        if (status != MT_OK) break;
        for (int view = 0; status == MT_OK && view < views; view++) {
            if (view == 1) mirror_images(next->images, next->size, next->height, next->width);
            status = mt_model_features(t->model, next->images, next->size, pooled);
            for (int i = 0; status == MT_OK && i < next->size; i++) {
                float *row = mine + ((size_t)b * batch + i) * row_floats;
                memcpy(row + (size_t)view * features, pooled + (size_t)i * features,
                       (size_t)features * sizeof(float));
                row[views * features] = (float)next->labels[i];
                /* record indices are exact in a float only below 2^24: checked at set-up */
                row[views * features + 1] = i < next->valid ? (float)next->records[i] : -1.0f;
            }
        }
        mt_loader_release(loader, next);
    }
    mt_loader_close(loader);
    if (status == MT_OK)
        status = mt_comm_allgather(t->comm, mine, all, rows * row_floats * sizeof(float));
    size_t filled = 0;
    for (size_t r = 0; status == MT_OK && r < rows * (size_t)t->who.world_size; r++) {
        const float *row = all + r * row_floats;
        if (row[views * features + 1] < 0) continue;
        size_t record = (size_t)row[views * features + 1];
        memcpy(*feature_cache + record * views * features, row,
               (size_t)views * features * sizeof(float));
        (*label_cache)[record] = (int32_t)row[views * features];
        filled++;
    }
    if (status == MT_OK && filled != records)
        status = MT_FAIL(MT_ERR_INTERNAL, "feature cache of '%s' holds %zu of %llu records", db,
                         filled, (unsigned long long)records);
    free(pooled);
    free(mine);
    free(all);
    return status;
}
