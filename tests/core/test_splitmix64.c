/* The one SplitMix64 (src/core/splitmix64.h) against the published generator's outputs: weight
 * initialisation, shard permutations, flips, pack splits and dropout masks all derive from it, so
 * a change to it would silently change every seeded result (and saved splits would not repeat). */
#include <stdint.h>

#include "core/splitmix64.h"
#include "ops/dropout_hash.h"
#include "test_util.h"

int main(void) {
    /* the first outputs of SplitMix64 from state 0, as in Vigna's reference splitmix64.c */
    const uint64_t expected[] = {UINT64_C(0xE220A8397B1DCDAF), UINT64_C(0x6E789E6AA1B965F4),
                                 UINT64_C(0x06C45D188009454F), UINT64_C(0xF88BB8A8724C81EC)};
    uint64_t state = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t x = mt_splitmix64_at(state);
        CHECK_MSG(mt_splitmix64_next(&state) == expected[i], "output %d", i);
        CHECK(x == expected[i]);
        CHECK(state == (uint64_t)(i + 1) * MT_SPLITMIX64_GAMMA);
    }
    CHECK(mt_mix64(MT_SPLITMIX64_GAMMA) == expected[0]);
    CHECK(mt_mix64(0) == 0); /* the finalizer alone: 0 is its fixed point */
    /* the dropout hash is the finalizer applied twice: keep iff the top 24 bits >= threshold */
    uint64_t h = mt_mix64(mt_mix64(7) + 11);
    CHECK(mt_dropout_keep(7, 11, (uint32_t)(h >> 40)));
    CHECK(!mt_dropout_keep(7, 11, (uint32_t)(h >> 40) + 1));
    return mt_test_finish();
}
