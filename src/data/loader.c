/* The sharded, prefetching batch loader (API and sharding rule in loader.h).
 *
 * A ring of `depth` batch slots. Batch b of the epoch always lives in slot (b - start) % depth, and
 * a thread may start filling batch b only when that slot is free (batch b - depth was released),
 * so batches are produced by any number of threads in any order but delivered strictly in order,
 * and the content of batch b depends only on (seed, epoch, b): identical for every thread count.
 * One mutex guards the ring state; the pixel work happens outside it. A worker's failure is kept
 * (status + message, since messages are per-thread) and handed to the caller by mt_loader_next. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/dataset_internal.h"
#include "data/mirror.h"
#include "mobiletune/image.h"

enum { DEFAULT_RING_DEPTH = 4, MAX_THREADS = 256, MAX_RING_DEPTH = 1024 };

typedef enum slot_state { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_HELD } slot_state;

typedef struct slot {
    mt_batch batch;
    slot_state state;
} slot;

typedef struct worker {
    mt_loader *loader;
    pthread_t thread;
    bool started;
    MDB_txn *txn;
    uint8_t *scratch; /* H*W*3 for JPEG records */
    float *rotated;   /* H*W*3: a rotated image before scaling (random_rotation only) */
} worker;

struct mt_loader {
    mt_dataset *ds;
    mt_loader_options opt;
    uint64_t steps;     /* batches per epoch on this rank */
    size_t image_bytes; /* per batch */
    size_t batch_bytes; /* the allocator's buffer per batch: images, labels, flips */

    int depth;
    slot *slots;
    int worker_count; /* threads, or 1 context used by the caller when opt.threads == 0 */
    worker *workers;

    pthread_mutex_t mutex;
    pthread_cond_t work_cv;  /* a slot became free, an epoch started, or stop */
    pthread_cond_t ready_cv; /* a slot became ready, or a fill finished */
    bool stop, epoch_active;
    uint64_t epoch, start, next_assign, next_deliver, generation;
    int filling;
    uint64_t *perm; /* the epoch's global permutation; fixed while filling > 0 */
    mt_status error;
    char *error_message;
};

#define PTHREAD_CHECK(call)                                                                        \
    do {                                                                                           \
        int pthread_rc_ = (call);                                                                  \
        if (pthread_rc_ != 0)                                                                      \
            return MT_FAIL(MT_ERR_INTERNAL, "%s failed: %s", #call, strerror(pthread_rc_));        \
    } while (0)

static int slot_of(const mt_loader *l, uint64_t batch_index) {
    return (int)((batch_index - l->start) % (uint64_t)l->depth);
}

/* x/127.5 - 1 in float32, the operations Keras' preprocess_input performs (x /= 127.5; x -= 1),
 * so the values are bit-identical to it. Written as fixed 16-wide blocks so that compilers
 * vectorize it at -O2 (about 3x a table lookup per value), with a scalar tail. */
static void scale_to_float(const uint8_t *restrict src, float *restrict dst, size_t n) {
    size_t k = 0;
    for (; k + 16 <= n; k += 16)
        for (int j = 0; j < 16; j++) {
            float x = (float)src[k + (size_t)j];
            x /= 127.5f;
            x -= 1.0f;
            dst[k + (size_t)j] = x;
        }
    for (; k < n; k++) {
        float x = (float)src[k];
        x /= 127.5f;
        x -= 1.0f;
        dst[k] = x;
    }
}

/* Pixels of one image into slot i of the batch, flipped horizontally when asked: float output
 * here, uint8 output by its consumer (b->flips). */
static void convert_image(const uint8_t *src, bool flip, mt_batch *b, int i) {
    int h = b->height, w = b->width;
    size_t pixels = (size_t)h * (size_t)w * 3, row_values = (size_t)w * 3;
    if (b->output == MT_LOADER_FLOAT32) {
        float *dst = (float *)b->images + (size_t)i * pixels;
        if (!flip) {
            scale_to_float(src, dst, pixels);
            return;
        }
        /* Mirror each row's bytes into a small buffer, then scale it with the vector loop: cheaper
         * than a scalar reversed read or swapping floats afterwards. */
        uint8_t mirrored[3 * MT_MAX_IMAGE_SIDE];
        for (int y = 0; y < h; y++) {
            mt_mirror_row(mirrored, src + (size_t)y * row_values, w, 3);
            scale_to_float(mirrored, dst + (size_t)y * row_values, row_values);
        }
    } else {
        /* as stored: the flag tells the consumer (ops.h input_convert) to mirror it */
        memcpy((uint8_t *)b->images + (size_t)i * pixels, src, pixels);
        b->flips[i] = flip;
    }
}

/* A rotated image (pixel units, mt_image_rotate) into slot i of the batch, flipped horizontally
 * when asked: scaled as Keras scales (x /= 127.5; x -= 1) for float output, rounded to the nearest
 * uint8 for uint8 output (the backend then scales it: at most half a level from the float path),
 * which, as in convert_image, leaves the flip to its consumer (b->flips). */
static void convert_rotated(const float *src, bool flip, mt_batch *b, int i) {
    int h = b->height, w = b->width;
    size_t pixels = (size_t)h * (size_t)w * 3, row_values = (size_t)w * 3;
    float mirrored[3 * MT_MAX_IMAGE_SIDE];
    if (b->output != MT_LOADER_FLOAT32) {
        b->flips[i] = flip;
        flip = false;
    }
    for (int y = 0; y < h; y++) {
        const float *in = src + (size_t)y * row_values;
        if (flip) {
            mt_mirror_row(mirrored, in, w, 3 * sizeof(float));
            in = mirrored;
        }
        if (b->output == MT_LOADER_FLOAT32) {
            float *dst = (float *)b->images + (size_t)i * pixels + (size_t)y * row_values;
            for (size_t k = 0; k < row_values; k++) {
                float x = in[k];
                x /= 127.5f;
                x -= 1.0f;
                dst[k] = x;
            }
        } else {
            uint8_t *dst = (uint8_t *)b->images + (size_t)i * pixels + (size_t)y * row_values;
            for (size_t k = 0; k < row_values; k++) {
                /* a bilinear mix of uint8 values lies in [0, 255] */
                dst[k] = (uint8_t)(in[k] + 0.5f);
            }
        }
    }
}

static mt_status fill_batch(mt_loader *l, worker *wk, mt_batch *b, uint64_t epoch,
                            uint64_t batch_index) {
    const mt_loader_options *o = &l->opt;
    uint64_t n = l->ds->meta.record_count;
    size_t pixel_bytes =
        (size_t)b->height * b->width * 3 * (b->output == MT_LOADER_FLOAT32 ? sizeof(float) : 1);
    b->epoch = epoch;
    b->index = batch_index;
    b->valid = 0;
    memset(b->flips, 0, (size_t)b->size);
    for (int i = 0; i < b->size; i++) {
        uint64_t position =
            mt_shard_position(n, o->rank, o->world_size, o->batch_size, batch_index, i);
        if (position == UINT64_MAX) {
            /* Padding: zeros (the mean of [-1,1] is 0 too) and a label no class has. */
            memset((uint8_t *)b->images + (size_t)i * pixel_bytes, 0, pixel_bytes);
            b->labels[i] = -1;
            b->records[i] = UINT64_MAX;
            continue;
        }
        uint64_t index = l->perm[position];
        mt_record record;
        const uint8_t *pixels;
        MT_TRY(mt_dataset_fetch(l->ds, wk->txn, index, wk->scratch, &record, &pixels));
        bool flip = o->random_flip && mt_shard_flip(o->seed, epoch, index);
        if (o->random_rotation != 0.0) {
            double angle = mt_shard_rotation(o->seed, epoch, index, o->random_rotation);
            mt_image_rotate(pixels, b->height, b->width, angle, wk->rotated);
            convert_rotated(wk->rotated, flip, b, i);
        } else {
            convert_image(pixels, flip, b, i);
        }
        b->labels[i] = (int32_t)record.label;
        b->records[i] = index;
        b->valid++;
    }
    return MT_OK;
}

/* Under the mutex: claim the next batch to fill, or return false. */
static bool claim(mt_loader *l, uint64_t *batch_index, int *slot_index, uint64_t *epoch,
                  uint64_t *generation) {
    if (!l->epoch_active || l->error != MT_OK || l->next_assign >= l->steps) return false;
    int s = slot_of(l, l->next_assign);
    if (l->slots[s].state != SLOT_FREE) return false;
    l->slots[s].state = SLOT_FILLING;
    *batch_index = l->next_assign++;
    *slot_index = s;
    *epoch = l->epoch;
    *generation = l->generation;
    l->filling++;
    return true;
}

/* Fill outside the mutex, then publish under it. Called with the mutex held. */
static void fill_unlocked(mt_loader *l, worker *wk, uint64_t batch_index, int s, uint64_t epoch,
                          uint64_t generation) {
    pthread_mutex_unlock(&l->mutex);
    mt_status status = fill_batch(l, wk, &l->slots[s].batch, epoch, batch_index);
    char *message = NULL;
    if (status != MT_OK) {
        mt_error_context(status, "loading batch %" PRIu64 " of epoch %" PRIu64, batch_index, epoch);
        message = strdup(mt_last_error());
    }
    pthread_mutex_lock(&l->mutex);
    l->filling--;
    if (status != MT_OK) {
        l->slots[s].state = SLOT_FREE;
        if (generation == l->generation && l->error == MT_OK) {
            l->error = status;
            l->error_message = message;
            message = NULL;
        }
    } else {
        l->slots[s].state = SLOT_READY;
    }
    free(message);
    pthread_cond_broadcast(&l->ready_cv);
}

static void *worker_main(void *arg) {
    worker *wk = arg;
    mt_loader *l = wk->loader;
    pthread_mutex_lock(&l->mutex);
    for (;;) {
        uint64_t batch_index, epoch, generation;
        int s;
        while (!l->stop && !claim(l, &batch_index, &s, &epoch, &generation))
            pthread_cond_wait(&l->work_cv, &l->mutex);
        if (l->stop) break;
        fill_unlocked(l, wk, batch_index, s, epoch, generation);
    }
    pthread_mutex_unlock(&l->mutex);
    return NULL;
}

static void *default_alloc(size_t bytes, void *user) {
    (void)user;
    size_t rounded = (bytes + 63) / 64 * 64; /* aligned_alloc wants a multiple of the alignment */
    return aligned_alloc(64, rounded ? rounded : 64);
}

static void default_free(void *buffer, size_t bytes, void *user) {
    (void)bytes, (void)user;
    free(buffer);
}

static mt_status check_options(const mt_loader_options *o, const char *path) {
    if (o->world_size < 1 || o->rank < 0 || o->rank >= o->world_size)
        return MT_FAIL(MT_ERR_INVALID, "loader for '%s': rank %d of world size %d is invalid", path,
                       o->rank, o->world_size);
    if (o->batch_size < 1)
        return MT_FAIL(MT_ERR_INVALID, "loader for '%s': batch size %d must be >= 1", path,
                       o->batch_size);
    if (o->threads < 0 || o->threads > MAX_THREADS)
        return MT_FAIL(MT_ERR_INVALID, "loader for '%s': %d prefetch threads, want 0..%d", path,
                       o->threads, MAX_THREADS);
    if (o->ring_depth < 0 || o->ring_depth > MAX_RING_DEPTH)
        return MT_FAIL(MT_ERR_INVALID,
                       "loader for '%s': ring depth %d, want 0 (default) or "
                       "1..%d",
                       path, o->ring_depth, MAX_RING_DEPTH);
    if (!(fabs(o->random_rotation) <= 1.0))
        return MT_FAIL(MT_ERR_INVALID,
                       "loader for '%s': random rotation %g is not a fraction of a turn in "
                       "[-1, 1]",
                       path, o->random_rotation);
    if (o->output != MT_LOADER_FLOAT32 && o->output != MT_LOADER_UINT8)
        return MT_FAIL(MT_ERR_INVALID, "loader for '%s': unknown output type %d", path,
                       (int)o->output);
    if ((o->allocator.alloc == NULL) != (o->allocator.free == NULL))
        return MT_FAIL(MT_ERR_INVALID,
                       "loader for '%s': give both allocator.alloc and "
                       "allocator.free, or neither",
                       path);
    return MT_OK;
}

static mt_status loader_setup(mt_loader *l, const char *path) {
    const mt_loader_options *o = &l->opt;
    MT_TRY(mt_dataset_open(path, &l->ds));
    const mt_dataset_meta *m = &l->ds->meta;
    l->steps =
        mt_shard_batch_count(m->record_count, o->world_size, o->batch_size, o->drop_remainder);
    if (l->steps == 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "loader for '%s': %" PRIu64 " records are fewer than one "
                       "global batch (%d ranks x %d), so a training epoch would be empty: lower "
                       "the batch size or turn drop_remainder off",
                       path, m->record_count, o->world_size, o->batch_size);
    size_t pixels = (size_t)m->height * (size_t)m->width * 3;
    l->image_bytes =
        (size_t)o->batch_size * pixels * (o->output == MT_LOADER_FLOAT32 ? sizeof(float) : 1);
    /* one buffer per batch, so that the allocator's pinned memory covers all a GPU copies */
    const size_t labels_at = (l->image_bytes + 63) / 64 * 64;
    const size_t flips_at = labels_at + ((size_t)o->batch_size * sizeof(int32_t) + 63) / 64 * 64;
    l->batch_bytes = flips_at + (size_t)o->batch_size;
    l->perm = malloc(m->record_count * sizeof *l->perm);
    l->slots = calloc((size_t)l->depth, sizeof *l->slots);
    l->worker_count = o->threads > 0 ? o->threads : 1;
    l->workers = calloc((size_t)l->worker_count, sizeof *l->workers);
    if (!l->perm || !l->slots || !l->workers)
        return MT_FAIL(MT_ERR_NOMEM, "loader for '%s': out of memory", path);
    for (int s = 0; s < l->depth; s++) {
        mt_batch *b = &l->slots[s].batch;
        *b = (mt_batch){.size = o->batch_size,
                        .height = m->height,
                        .width = m->width,
                        .channels = 3,
                        .output = o->output};
        b->images = l->opt.allocator.alloc(l->batch_bytes, l->opt.allocator.user);
        b->records = malloc((size_t)o->batch_size * sizeof *b->records);
        if (!b->images || !b->records)
            return MT_FAIL(MT_ERR_NOMEM,
                           "loader for '%s': cannot allocate a %zu-byte batch "
                           "buffer",
                           path, l->batch_bytes);
        b->labels = (int32_t *)((uint8_t *)b->images + labels_at);
        b->flips = (uint8_t *)b->images + flips_at;
    }
    for (int t = 0; t < l->worker_count; t++) {
        worker *wk = &l->workers[t];
        wk->loader = l;
        wk->scratch = malloc(pixels);
        if (!wk->scratch) return MT_FAIL(MT_ERR_NOMEM, "loader for '%s': out of memory", path);
        if (o->random_rotation != 0.0) {
            wk->rotated = malloc(pixels * sizeof *wk->rotated);
            if (!wk->rotated) return MT_FAIL(MT_ERR_NOMEM, "loader for '%s': out of memory", path);
        }
        LMDB_CHECK(mdb_txn_begin(l->ds->env, NULL, MDB_RDONLY, &wk->txn), path);
    }
    if (o->threads > 0)
        for (int t = 0; t < l->worker_count; t++) {
            PTHREAD_CHECK(pthread_create(&l->workers[t].thread, NULL, worker_main, &l->workers[t]));
            l->workers[t].started = true;
        }
    return MT_OK;
}

mt_status mt_loader_open(const char *path, const mt_loader_options *options, mt_loader **out) {
    *out = NULL;
    MT_TRY(check_options(options, path ? path : "(null)"));
    mt_loader *l = calloc(1, sizeof *l);
    if (!l) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    l->opt = *options;
    if (!l->opt.allocator.alloc) {
        l->opt.allocator.alloc = default_alloc;
        l->opt.allocator.free = default_free;
    }
    l->depth = options->ring_depth > 0 ? options->ring_depth : DEFAULT_RING_DEPTH;
    pthread_mutex_init(&l->mutex, NULL);
    pthread_cond_init(&l->work_cv, NULL);
    pthread_cond_init(&l->ready_cv, NULL);
    mt_status status = loader_setup(l, path);
    if (status != MT_OK) {
        mt_loader_close(l);
        return status;
    }
    *out = l;
    return MT_OK;
}

void mt_loader_close(mt_loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mutex);
    l->stop = true;
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mutex);
    if (l->workers) {
        for (int t = 0; t < l->worker_count; t++) {
            if (l->workers[t].started) pthread_join(l->workers[t].thread, NULL);
            if (l->workers[t].txn) mdb_txn_abort(l->workers[t].txn);
            free(l->workers[t].scratch);
            free(l->workers[t].rotated);
        }
        free(l->workers);
    }
    if (l->slots) {
        for (int s = 0; s < l->depth; s++) {
            mt_batch *b = &l->slots[s].batch;
            if (b->images) l->opt.allocator.free(b->images, l->batch_bytes, l->opt.allocator.user);
            free(b->records);
        }
        free(l->slots);
    }
    free(l->perm);
    free(l->error_message);
    mt_dataset_close(l->ds);
    pthread_cond_destroy(&l->ready_cv);
    pthread_cond_destroy(&l->work_cv);
    pthread_mutex_destroy(&l->mutex);
    free(l);
}

const mt_dataset_meta *mt_loader_meta(const mt_loader *l) {
    return &l->ds->meta;
}

uint64_t mt_loader_batch_count(const mt_loader *l) {
    return l->steps;
}

mt_status mt_loader_start_epoch(mt_loader *l, uint64_t epoch, uint64_t start_batch) {
    if (start_batch > l->steps)
        return MT_FAIL(MT_ERR_INVALID,
                       "loader for '%s': cannot start epoch %" PRIu64 " at batch "
                       "%" PRIu64 ": an epoch has %" PRIu64 " batches on this rank",
                       l->ds->path, epoch, start_batch, l->steps);
    pthread_mutex_lock(&l->mutex);
    for (int s = 0; s < l->depth; s++)
        if (l->slots[s].state == SLOT_HELD) {
            pthread_mutex_unlock(&l->mutex);
            return MT_FAIL(MT_ERR_INVALID,
                           "loader for '%s': release every batch before starting "
                           "epoch %" PRIu64,
                           l->ds->path, epoch);
        }
    /* Stop handing out work and let fills in flight finish: they read perm and their slots. */
    l->epoch_active = false;
    l->generation++;
    while (l->filling > 0)
        pthread_cond_wait(&l->ready_cv, &l->mutex);
    for (int s = 0; s < l->depth; s++)
        l->slots[s].state = SLOT_FREE;
    mt_shard_permutation(l->ds->meta.record_count, l->opt.seed, epoch, l->opt.shuffle, l->perm);
    l->epoch = epoch;
    l->start = l->next_assign = l->next_deliver = start_batch;
    l->error = MT_OK;
    free(l->error_message);
    l->error_message = NULL;
    l->epoch_active = true;
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mutex);
    return MT_OK;
}

mt_status mt_loader_next(mt_loader *l, mt_batch **out) {
    *out = NULL;
    pthread_mutex_lock(&l->mutex);
    mt_status status;
    for (;;) {
        if (!l->epoch_active) {
            status = MT_FAIL(MT_ERR_INVALID,
                             "loader for '%s': call mt_loader_start_epoch before "
                             "mt_loader_next",
                             l->ds->path);
            break;
        }
        if (l->error != MT_OK) {
            status = MT_FAIL(l->error, "%s", l->error_message ? l->error_message : "(no message)");
            break;
        }
        if (l->next_deliver >= l->steps) {
            status = MT_END;
            break;
        }
        slot *sl = &l->slots[slot_of(l, l->next_deliver)];
        if (sl->state == SLOT_READY) {
            sl->state = SLOT_HELD;
            l->next_deliver++;
            *out = &sl->batch;
            status = MT_OK;
            break;
        }
        if (sl->state == SLOT_HELD) {
            status = MT_FAIL(MT_ERR_INVALID,
                             "loader for '%s': all %d ring slots are held: "
                             "mt_loader_release a batch before asking for the next",
                             l->ds->path, l->depth);
            break;
        }
        if (l->opt.threads == 0) {
            /* Synchronous mode: the caller's thread fills the batch it asks for. */
            uint64_t batch_index, epoch, generation;
            int s;
            if (claim(l, &batch_index, &s, &epoch, &generation))
                fill_unlocked(l, &l->workers[0], batch_index, s, epoch, generation);
            continue;
        }
        pthread_cond_wait(&l->ready_cv, &l->mutex);
    }
    pthread_mutex_unlock(&l->mutex);
    return status;
}

void mt_loader_release(mt_loader *l, mt_batch *batch) {
    if (!batch) return;
    pthread_mutex_lock(&l->mutex);
    for (int s = 0; s < l->depth; s++)
        if (&l->slots[s].batch == batch && l->slots[s].state == SLOT_HELD) {
            l->slots[s].state = SLOT_FREE;
            pthread_cond_broadcast(&l->work_cv);
            break;
        }
    pthread_mutex_unlock(&l->mutex);
}
