/* SplitMix64 (Steele, Lea and Flood, 2014), the one small generator mobiletune defines itself:
 * the weight initializer, the loader's shuffle and flips, the packer's split selection and the
 * dropout hash all draw from it, so a seed gives the same numbers on every platform, library
 * version and backend. Fixed-width integer arithmetic only; usable from C and CUDA device code. */
#ifndef MT_CORE_SPLITMIX64_H
#define MT_CORE_SPLITMIX64_H

#include <stdint.h>

#if defined(__CUDACC__)
#define MT_SPLITMIX64_FN static inline __host__ __device__
#else
#define MT_SPLITMIX64_FN static inline
#endif

/* The state's increment: 2^64 divided by the golden ratio, odd, so the state visits every value. */
#define MT_SPLITMIX64_GAMMA UINT64_C(0x9E3779B97F4A7C15)

/* SplitMix64's output function: a bijective 64-bit mixer with full avalanche, also used alone as
 * a hash (dropout, the loader's per-epoch streams). */
MT_SPLITMIX64_FN uint64_t mt_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* The next number of the stream whose state is *state (advances it). */
MT_SPLITMIX64_FN uint64_t mt_splitmix64_next(uint64_t *state) {
    *state += MT_SPLITMIX64_GAMMA;
    return mt_mix64(*state);
}

/* The number mt_splitmix64_next returns from state x, without a state variable: for hashing
 * a tuple of integers into one seed. */
MT_SPLITMIX64_FN uint64_t mt_splitmix64_at(uint64_t x) {
    return mt_mix64(x + MT_SPLITMIX64_GAMMA);
}

#undef MT_SPLITMIX64_FN
#endif
