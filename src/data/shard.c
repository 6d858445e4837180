/* The sharding arithmetic of the loader (the rule is in loader.h and docs/formats.md): pure
 * functions of (seed, epoch, counts) so that every rank derives the same permutation without
 * communicating, and so that tests can check the exactly-once property without a database. */
#include <math.h>

#include "core/splitmix64.h"
#include "mobiletune/loader.h"

typedef struct rng {
    uint64_t state;
} rng;

static uint64_t rng_next(rng *r) {
    return mt_splitmix64_next(&r->state);
}

/* Uniform in [0, bound) without modulo bias: reject the short top range. */
static uint64_t rng_below(rng *r, uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound; /* 2^64 mod bound */
    for (;;) {
        uint64_t x = rng_next(r);
        if (x >= threshold) return x % bound;
    }
}

/* Distinct streams per purpose, so the flip of record i is unrelated to where it lands. */
enum { STREAM_PERMUTATION = 1, STREAM_FLIP = 2, STREAM_ROTATION = 3 };

static uint64_t stream_seed(uint64_t seed, uint64_t epoch, uint64_t stream) {
    return mt_mix64(mt_mix64(seed ^ mt_mix64(stream)) + epoch);
}

uint64_t mt_shard_batch_count(uint64_t record_count, int world_size, int batch_size,
                              bool drop_remainder) {
    if (world_size < 1 || batch_size < 1) return 0;
    uint64_t per_step = (uint64_t)world_size * (uint64_t)batch_size;
    return drop_remainder ? record_count / per_step : (record_count + per_step - 1) / per_step;
}

void mt_shard_permutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle, uint64_t *perm) {
    for (uint64_t i = 0; i < n; i++)
        perm[i] = i;
    if (!shuffle || n < 2) return;
    rng r = {stream_seed(seed, epoch, STREAM_PERMUTATION)};
    /* Fisher-Yates, from the end. */
    for (uint64_t i = n - 1; i > 0; i--) {
        uint64_t j = rng_below(&r, i + 1);
        uint64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

uint64_t mt_shard_position(uint64_t record_count, int rank, int world_size, int batch_size,
                           uint64_t batch_index, int slot) {
    uint64_t position =
        (batch_index * (uint64_t)world_size + (uint64_t)rank) * (uint64_t)batch_size +
        (uint64_t)slot;
    return position < record_count ? position : UINT64_MAX;
}

bool mt_shard_flip(uint64_t seed, uint64_t epoch, uint64_t index) {
    return (mt_mix64(stream_seed(seed, epoch, STREAM_FLIP) ^ mt_mix64(index)) >> 63) != 0;
}

double mt_shard_rotation(uint64_t seed, uint64_t epoch, uint64_t index, double factor) {
    /* 53 bits of the record's hash: u uniform in [0, 1) on a grid of 2^-53 */
    const uint64_t bits = mt_mix64(stream_seed(seed, epoch, STREAM_ROTATION) ^ mt_mix64(index));
    const double u = (double)(bits >> 11) * 0x1.0p-53;
    return (2.0 * u - 1.0) * factor * 2.0 * M_PI;
}
