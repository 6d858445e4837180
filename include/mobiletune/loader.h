/* Reading a packed dataset (record.h, docs/formats.md): random access for eval/predict/features,
 * and the sharded, prefetching batch loader the trainer runs on each rank.
 *
 * Everything read from the database is validated before use (metadata, record header, sizes,
 * CRC, label < class count, image size == the metadata's): a corrupt or hostile database gives
 * MT_ERR_FORMAT naming the record key, never a crash or an out-of-bounds read.
 *
 * Sharding (docs/formats.md has the worked rule): every epoch uses a global permutation of the N
 * records drawn from (seed, epoch) alone, so every rank computes the same one without talking.
 * Global step s takes permutation positions [s*W*B, (s+1)*W*B) (W ranks, B per-rank batch size);
 * rank r gets positions s*W*B + r*B + i, i < B.
 *   drop_remainder (training):  steps = floor(N / (W*B)); the N mod (W*B) samples at the end of
 *                               the permutation are skipped this epoch (others next epoch).
 *   !drop_remainder (evaluation): steps = ceil(N / (W*B)); positions >= N are padding (label -1,
 *                               zero pixels), counted out of mt_batch.valid; every sample is seen
 *                               exactly once across ranks and every rank has `steps` batches.
 * Random flips and rotations are decided by a hash of (seed, epoch, record index) (mt_shard_flip,
 * mt_shard_rotation), so the output is identical whatever the thread count or ring depth; float
 * output comes flipped, uint8 output comes unflipped with a flag per image for the consumer (the
 * GPU) to flip.
 *
 * Use (one loader per rank; the ring refills while the caller computes):
 *     mt_loader_options o = {.rank = r, .world_size = w, .batch_size = 32, .seed = seed,
 *                            .shuffle = true, .drop_remainder = true, .random_flip = true,
 *                            .threads = 2};
 *     MT_TRY(mt_loader_open("data/train", &o, &loader));
 *     for (epoch = first; epoch < epochs; epoch++) {
 *         MT_TRY(mt_loader_start_epoch(loader, epoch, epoch == first ? resume_batch : 0));
 *         while ((status = mt_loader_next(loader, &batch)) == MT_OK) {
 *             step(batch->images, batch->labels, batch->valid);
 *             mt_loader_release(loader, batch);
 *         }
 *         if (status != MT_END) return status; // mt_last_error() names the bad record
 *     }
 *     mt_loader_close(loader);
 * The first batch of an epoch is fetched when the epoch starts (one batch's fill time). */
#ifndef MOBILETUNE_LOADER_H
#define MOBILETUNE_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/record.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- random access --------------------------------------------------------------------------- */

/* An open packed dataset, opened MDB_RDONLY | MDB_NOLOCK: no lock file is created, so a
 * read-only folder works and any number of readers (threads, loaders, processes) may share it.
 * That is safe because a packed dataset is never written after mobiletune-pack renames it into
 * place; do not point a reader at a database something is still writing. */
typedef struct mt_dataset mt_dataset;

/* Open the LMDB folder `path`, check that data.mdb is complete (not truncated), read and
 * validate the metadata and check the entry count against it. */
mt_status mt_dataset_open(const char *path, mt_dataset **out);
void mt_dataset_close(mt_dataset *dataset);

const mt_dataset_meta *mt_dataset_meta_get(const mt_dataset *dataset);
uint64_t mt_dataset_count(const mt_dataset *dataset);

/* Record `index` as uint8 RGB pixels (pixels: H,W,3 with H, W from the metadata; JPEG records are
 * decoded), its label, and its source name copied NUL-terminated into name[name_capacity]
 * (truncated to fit; name may be NULL). Not thread-safe on one mt_dataset: open one per thread. */
mt_status mt_dataset_get(mt_dataset *dataset, uint64_t index, uint8_t *pixels, int32_t *label,
                         char *name, size_t name_capacity);

/* ---- sharding arithmetic (pure; the loader uses exactly these) ------------------------------ */

/* Batches per rank per epoch: floor(N / (W*B)) with drop_remainder, ceil(N / (W*B)) without. */
uint64_t mt_shard_batch_count(uint64_t record_count, int world_size, int batch_size,
                              bool drop_remainder);

/* The epoch's global permutation: perm[position] = record index, for positions 0..n-1. Identity
 * when !shuffle. Deterministic in (seed, epoch) on every platform. */
void mt_shard_permutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle, uint64_t *perm);

/* The permutation position of slot `slot` of rank `rank`'s batch `batch_index`, or UINT64_MAX when
 * that slot is padding (only without drop_remainder). */
uint64_t mt_shard_position(uint64_t record_count, int rank, int world_size, int batch_size,
                           uint64_t batch_index, int slot);

/* Whether record `index` is flipped horizontally in `epoch` (when random_flip is on). */
bool mt_shard_flip(uint64_t seed, uint64_t epoch, uint64_t index);

/* The angle (radians) record `index` is rotated by in `epoch` when random_rotation = `factor`:
 * uniform in [-factor * 2 pi, factor * 2 pi), Keras' RandomRotation(factor) draw, from a stream
 * of its own (unrelated to the flip and the permutation). */
double mt_shard_rotation(uint64_t seed, uint64_t epoch, uint64_t index, double factor);

/* ---- the batch loader ------------------------------------------------------------------------ */

typedef enum mt_loader_output {
    /* x/127.5 - 1 in float32 (Keras mobilenet_v2.preprocess_input), flipped where random_flip
     * decided (mt_batch.flips all 0) */
    MT_LOADER_FLOAT32 = 0,
    /* the stored pixels (with data.random_rotation: rotated, rounded to the nearest level),
     * never flipped here: mt_batch.flips says which images the consumer mirrors (the backend,
     * on the device: ops.h input_convert) */
    MT_LOADER_UINT8 = 1,
} mt_loader_output;

/* Where batch buffers come from (e.g. cudaHostAlloc'd pinned memory, so that images, labels and
 * flips can be copied to a GPU asynchronously). alloc returns a buffer of `bytes` (aligned for
 * float) or NULL: one batch's images, labels and flip flags; free gives it back. Called only
 * from mt_loader_open / mt_loader_close, ring_depth times each. NULL functions: malloc/free. */
typedef struct mt_loader_allocator {
    void *(*alloc)(size_t bytes, void *user);
    void (*free)(void *buffer, size_t bytes, void *user);
    void *user;
} mt_loader_allocator;

typedef struct mt_loader_options {
    int rank, world_size; /* this rank and the number of ranks: 0 and 1 for one process */
    int batch_size;       /* per rank */
    uint64_t seed;
    bool shuffle;        /* a fresh permutation every epoch (false: record order) */
    bool drop_remainder; /* training: true; evaluation: false (pad, see above) */
    bool random_flip;    /* horizontal flip of half the samples, seeded per (epoch, record) */
    int threads;         /* background prefetch threads; 0 fills batches inside next() */
    int ring_depth;      /* batches buffered ahead (>= 1; 0 means the default, 4) */
    mt_loader_output output;
    mt_loader_allocator allocator;
    /* Keras RandomRotation(random_rotation) of every sample, seeded per (epoch, record); 0: off.
     * The rotation comes first, the flip after it (Keras' flip-then-rotate with the angle's sign
     * turned: the same distribution, the angle's being symmetric), on both outputs */
    double random_rotation;
} mt_loader_options;

/* One batch. Owned by the loader; valid until mt_loader_release(). */
typedef struct mt_batch {
    uint64_t epoch, index; /* index: this rank's batch number within the epoch */
    int size;              /* batch_size: the slots filled below */
    int valid;             /* real samples (the first `valid` slots); the rest is padding */
    int height, width, channels;
    mt_loader_output output;
    void *images;      /* images: size,H,W,C (NHWC) float32 or uint8 */
    int32_t *labels;   /* [size]; -1 for padding */
    uint8_t *flips;    /* [size]: 1 where the consumer mirrors the image left to right
                        * (MT_LOADER_UINT8 with random_flip: mt_shard_flip's decision); 0 else */
    uint64_t *records; /* [size] record index per slot; UINT64_MAX for padding */
} mt_batch;

typedef struct mt_loader mt_loader;

/* Open `path` (as mt_dataset_open does), allocate the ring and start the threads (idle until
 * mt_loader_start_epoch). Fails with MT_ERR_INVALID on bad options, including a training epoch
 * that would be empty (N < world_size * batch_size with drop_remainder). */
mt_status mt_loader_open(const char *path, const mt_loader_options *options, mt_loader **out);

/* Stop the threads and free everything. Safe with batches still held (they become invalid). */
void mt_loader_close(mt_loader *loader);

const mt_dataset_meta *mt_loader_meta(const mt_loader *loader);

/* mt_shard_batch_count() for this loader's dataset and options. */
uint64_t mt_loader_batch_count(const mt_loader *loader);

/* Begin (or restart) epoch `epoch` at this rank's batch `start_batch` (0, or a checkpoint's batch
 * index to resume). Every held batch must have been released. Prefetching starts here. */
mt_status mt_loader_start_epoch(mt_loader *loader, uint64_t epoch, uint64_t start_batch);

/* The next batch of the epoch, in order, blocking until it is ready. MT_END after the last one.
 * A failure in a prefetch thread (a corrupt record: the message names its key) is returned by the
 * next call, and by every later call until the next mt_loader_start_epoch. */
mt_status mt_loader_next(mt_loader *loader, mt_batch **out);

/* Give a batch's buffer back to the ring. Batches may be released in any order. */
void mt_loader_release(mt_loader *loader, mt_batch *batch);

#ifdef __cplusplus
}
#endif
#endif
