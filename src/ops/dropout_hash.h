/* The dropout keep decision shared by every backend: a pure function of (seed, element index), so
 * the reference, oneDNN and CUDA backends drop exactly the same elements for the same seed and a
 * backend can be tested against the reference bit for bit. Plain integer arithmetic only (no
 * floating point in the decision), usable from C, C++ and CUDA device code. */
#ifndef MT_OPS_DROPOUT_HASH_H
#define MT_OPS_DROPOUT_HASH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/splitmix64.h"

#if defined(__CUDACC__)
#define MT_DROPOUT_FN static inline __host__ __device__
#else
#define MT_DROPOUT_FN static inline
#endif

/* Elements whose 24-bit hash is below this are dropped: round(rate * 2^24), computed once on the
 * host so that no backend's float rounding can change the decision. rate in [0, 1). */
MT_DROPOUT_FN uint32_t mt_dropout_threshold(float rate) {
    double t = (double)rate * 16777216.0 + 0.5;
    if (t <= 0.0) return 0;
    if (t >= 16777216.0) return 16777216u;
    return (uint32_t)t;
}

/* true when element `index` is kept: its 24-bit hash (uniform in [0, 2^24)) >= threshold. */
MT_DROPOUT_FN bool mt_dropout_keep(uint64_t seed, uint64_t index, uint32_t threshold) {
    /* Mixing the seed first keeps the streams of nearby seeds (0, 1, 2, ...) unrelated. */
    uint64_t h = mt_mix64(mt_mix64(seed) + index);
    return (uint32_t)(h >> 40) >= threshold;
}

#undef MT_DROPOUT_FN
#endif
