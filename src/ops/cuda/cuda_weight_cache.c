/* The bookkeeping of the per-update conv weight copies (see cuda_weight_cache.h): a small array
 * searched linearly (MobileNetV2 has 52 convolutions; a lookup per conv call costs nothing next
 * to the call), and the ranges device ops wrote as a sorted array of disjoint ranges (the
 * trainable buffer, its gradients, the BN buffers: a few entries, as neighbours merge). */
#include "ops/cuda/cuda_weight_cache.h"

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

/* The source kernel's bytes */
static mt_cuda_weight_range source_range(const mt_cuda_weight_copy *c) {
    const uintptr_t lo = (uintptr_t)c->key.source;
    return (mt_cuda_weight_range){.lo = lo,
                                  .hi = lo + mt_cuda_weight_count(&c->key) * sizeof(float)};
}

void *mt_cuda_weight_cache_find(mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key) {
    for (size_t i = 0; i < cache->count; i++) {
        mt_cuda_weight_copy *c = &cache->copies[i];
        if (!same_key(&c->key, key)) continue;
        if (cache->capturing && !c->in_capture) c->read_by_capture = true;
        return c->copy;
    }
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
    cache->copies[cache->count++] = (mt_cuda_weight_copy){
        .key = *key, .copy = copy, .serial = ++cache->serials, .in_capture = cache->capturing};
    return true;
}

/* Removes the copies `drop` says yes to (`range` and `context` are its arguments). */
static size_t remove_if(mt_cuda_weight_cache *cache,
                        bool (*drop)(const mt_cuda_weight_cache *, const mt_cuda_weight_copy *,
                                     mt_cuda_weight_range),
                        mt_cuda_weight_range range, void (*release)(void *context, void *copy),
                        void *context) {
    size_t kept = 0, removed = 0;
    for (size_t i = 0; i < cache->count; i++) {
        const mt_cuda_weight_copy *c = &cache->copies[i];
        if (drop(cache, c, range)) {
            if (cache->capturing && c->read_by_capture) cache->capture_lost = true;
            release(context, c->copy);
            removed++;
        } else {
            cache->copies[kept++] = *c;
        }
    }
    cache->count = kept;
    return removed;
}

static bool overlaps(mt_cuda_weight_range a, mt_cuda_weight_range b) {
    return a.lo < b.hi && b.lo < a.hi;
}

static bool drop_overlapping(const mt_cuda_weight_cache *cache, const mt_cuda_weight_copy *c,
                             mt_cuda_weight_range range) {
    (void)cache;
    return range.lo == range.hi || overlaps(source_range(c), range);
}

size_t mt_cuda_weight_cache_touch(mt_cuda_weight_cache *cache, const void *dst, size_t bytes,
                                  void (*release)(void *context, void *copy), void *context) {
    const mt_cuda_weight_range range = {.lo = (uintptr_t)dst, .hi = (uintptr_t)dst + bytes};
    return remove_if(cache, drop_overlapping, range, release, context);
}

/* Room for one more written range; out of host memory, every range counts as written (the
 * safe answer: copies are remade) and false. */
static bool room_for_one_more(mt_cuda_weight_cache *cache) {
    if (cache->written_count < cache->written_capacity) return true;
    size_t capacity = cache->written_capacity ? 2 * cache->written_capacity : 32;
    mt_cuda_weight_range *grown = realloc(cache->written, capacity * sizeof *grown);
    if (!grown) {
        cache->written_all = true;
        return false;
    }
    cache->written = grown;
    cache->written_capacity = capacity;
    return true;
}

bool mt_cuda_weight_cache_written(mt_cuda_weight_cache *cache, const void *dst, size_t bytes) {
    if (cache->written_all) return true;
    if (bytes == 0) {
        cache->written_all = true;
        return true;
    }
    mt_cuda_weight_range r = {.lo = (uintptr_t)dst, .hi = (uintptr_t)dst + bytes};
    /* [first, last): the ranges r overlaps or touches, merged into it */
    size_t first = 0;
    while (first < cache->written_count && cache->written[first].hi < r.lo)
        first++;
    size_t last = first;
    while (last < cache->written_count && cache->written[last].lo <= r.hi) {
        if (cache->written[last].lo < r.lo) r.lo = cache->written[last].lo;
        if (cache->written[last].hi > r.hi) r.hi = cache->written[last].hi;
        last++;
    }
    if (last == first + 1 && cache->written[first].lo == r.lo && cache->written[first].hi == r.hi)
        return true;     /* already known: the common case, every step writes the same ranges */
    if (last == first) { /* a new entry at `first` */
        if (!room_for_one_more(cache)) return false;
        for (size_t i = cache->written_count; i > first; i--)
            cache->written[i] = cache->written[i - 1];
        cache->written_count++;
        last = first + 1;
    }
    cache->written[first] = r;
    const size_t gone = last - first - 1; /* merged into `first` */
    for (size_t i = last; i < cache->written_count; i++)
        cache->written[i - gone] = cache->written[i];
    cache->written_count -= gone;
    return true;
}

bool mt_cuda_weight_cache_unwritten(mt_cuda_weight_cache *cache, const void *dst, size_t bytes) {
    const uintptr_t lo = (uintptr_t)dst, hi = lo + bytes;
    if (cache->written_all || bytes == 0) return true;
    /* a range that holds [lo, hi) strictly inside splits in two: one entry more */
    if (!room_for_one_more(cache)) return false;
    size_t i = 0;
    while (i < cache->written_count) {
        mt_cuda_weight_range *r = &cache->written[i];
        if (!overlaps(*r, (mt_cuda_weight_range){.lo = lo, .hi = hi})) {
            i++;
            continue;
        }
        const mt_cuda_weight_range left = {.lo = r->lo, .hi = lo}, right = {.lo = hi, .hi = r->hi};
        if (left.lo < left.hi && right.lo < right.hi) {
            for (size_t j = cache->written_count; j > i + 1; j--)
                cache->written[j] = cache->written[j - 1];
            cache->written_count++;
            cache->written[i] = left;
            cache->written[i + 1] = right;
            return true; /* nothing else overlaps: the ranges are disjoint */
        }
        if (left.lo < left.hi || right.lo < right.hi) {
            *r = left.lo < left.hi ? left : right;
            i++;
            continue;
        }
        for (size_t j = i + 1; j < cache->written_count; j++) /* wholly inside: removed */
            cache->written[j - 1] = cache->written[j];
        cache->written_count--;
    }
    return true;
}

static bool drop_written(const mt_cuda_weight_cache *cache, const mt_cuda_weight_copy *c,
                         mt_cuda_weight_range range) {
    (void)range;
    if (cache->written_all) return true;
    const mt_cuda_weight_range s = source_range(c);
    for (size_t i = 0; i < cache->written_count && cache->written[i].lo < s.hi; i++)
        if (overlaps(cache->written[i], s)) return true;
    return false;
}

static bool drop_made_in_capture(const mt_cuda_weight_cache *cache, const mt_cuda_weight_copy *c,
                                 mt_cuda_weight_range range) {
    (void)cache, (void)range;
    return c->in_capture;
}

void mt_cuda_weight_cache_capture_begin(mt_cuda_weight_cache *cache,
                                        void (*release)(void *context, void *copy), void *context) {
    (void)remove_if(cache, drop_written, (mt_cuda_weight_range){0}, release, context);
    for (size_t i = 0; i < cache->count; i++)
        cache->copies[i].read_by_capture = false;
    cache->capturing = true;
    cache->capture_lost = false;
}

bool mt_cuda_weight_cache_capture_end(mt_cuda_weight_cache *cache, bool captured,
                                      mt_cuda_weight_pins *pins, bool *out_of_memory,
                                      void (*release)(void *context, void *copy), void *context) {
    *pins = (mt_cuda_weight_pins){0};
    *out_of_memory = false;
    (void)remove_if(cache, drop_made_in_capture, (mt_cuda_weight_range){0}, release, context);
    cache->capturing = false;
    bool ok = !cache->capture_lost;
    size_t count = 0;
    for (size_t i = 0; i < cache->count; i++)
        count += cache->copies[i].read_by_capture;
    if (ok && captured && count) {
        pins->serials = malloc(count * sizeof *pins->serials);
        if (!pins->serials) *out_of_memory = true, ok = false;
    }
    for (size_t i = 0; i < cache->count; i++) {
        mt_cuda_weight_copy *c = &cache->copies[i];
        if (ok && captured && c->read_by_capture) pins->serials[pins->count++] = c->serial;
        c->read_by_capture = false;
    }
    return ok;
}

static bool kept(const mt_cuda_weight_cache *cache, uint64_t serial) {
    for (size_t i = 0; i < cache->count; i++)
        if (cache->copies[i].serial == serial) return true;
    return false;
}

bool mt_cuda_weight_cache_replay(mt_cuda_weight_cache *cache, const mt_cuda_weight_pins *pins,
                                 void (*release)(void *context, void *copy), void *context) {
    for (size_t i = 0; i < pins->count; i++)
        if (!kept(cache, pins->serials[i])) return false;
    (void)remove_if(cache, drop_written, (mt_cuda_weight_range){0}, release, context);
    return true;
}

void mt_cuda_weight_pins_free(mt_cuda_weight_pins *pins) {
    free(pins->serials);
    *pins = (mt_cuda_weight_pins){0};
}

void mt_cuda_weight_cache_free(mt_cuda_weight_cache *cache,
                               void (*release)(void *context, void *copy), void *context) {
    (void)mt_cuda_weight_cache_touch(cache, NULL, 0, release, context);
    free(cache->copies);
    free(cache->written);
    *cache = (mt_cuda_weight_cache){0};
}
