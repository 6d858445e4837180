/* The bookkeeping of the per-update conv weight copies (see cuda_weight_cache.h): a small array
 * searched linearly (MobileNetV2 has 52 convolutions; a lookup per conv call costs nothing next
 * to the call). */
#include "ops/cuda/cuda_weight_cache.h"

#include <stdint.h>
#include <stdlib.h>

size_t mt_cuda_weight_count(const mt_cuda_weight_key *key) {
    return (size_t)key->rs * (size_t)key->cin * (size_t)key->cout;
}

size_t mt_cuda_weight_copy_bytes(const mt_cuda_weight_key *key) {
    const bool narrow =
        key->form == MT_CUDA_WEIGHTS_HWIO_16 || key->form == MT_CUDA_WEIGHTS_KRSC_16;
    return mt_cuda_weight_count(key) * (narrow ? 2 : sizeof(float));
}

static bool same_key(const mt_cuda_weight_key *a, const mt_cuda_weight_key *b) {
    return a->source == b->source && a->form == b->form && a->rs == b->rs && a->cin == b->cin &&
           a->cout == b->cout;
}

void *mt_cuda_weight_cache_find(const mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key) {
    for (size_t i = 0; i < cache->count; i++)
        if (same_key(&cache->copies[i].key, key)) return cache->copies[i].copy;
    return NULL;
}

bool mt_cuda_weight_cache_add(mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key,
                              void *copy) {
    if (cache->count == cache->capacity) {
        size_t capacity = cache->capacity ? 2 * cache->capacity : 64;
        mt_cuda_weight_copy *grown = realloc(cache->copies, capacity * sizeof *grown);
        if (!grown) return false;
        cache->copies = grown;
        cache->capacity = capacity;
    }
    cache->copies[cache->count++] = (mt_cuda_weight_copy){.key = *key, .copy = copy};
    return true;
}

size_t mt_cuda_weight_cache_touch(mt_cuda_weight_cache *cache, const void *dst, size_t bytes,
                                  void (*release)(void *context, void *copy), void *context) {
    const uintptr_t lo = (uintptr_t)dst, hi = lo + bytes;
    size_t kept = 0, removed = 0;
    for (size_t i = 0; i < cache->count; i++) {
        const mt_cuda_weight_copy *c = &cache->copies[i];
        const uintptr_t wlo = (uintptr_t)c->key.source,
                        whi = wlo + mt_cuda_weight_count(&c->key) * sizeof(float);
        if (bytes == 0 || (wlo < hi && lo < whi)) {
            release(context, c->copy);
            removed++;
        } else {
            cache->copies[kept++] = *c;
        }
    }
    cache->count = kept;
    return removed;
}

void mt_cuda_weight_cache_free(mt_cuda_weight_cache *cache,
                               void (*release)(void *context, void *copy), void *context) {
    (void)mt_cuda_weight_cache_touch(cache, NULL, 0, release, context);
    free(cache->copies);
    *cache = (mt_cuda_weight_cache){0};
}
