/* The cuda backend's per-update copies of convolution kernels (issue 12 point 2): a conv kernel
 * is read by several calls per step (forward, backward data, the timing runs) but changes only
 * when an op writes its memory (an upload, a buffer copy, buffer_scale, the optimizer update,
 * the buffer_free of its block). So the forms the convolutions want -- cuDNN's KRSC filter, the
 * 16-bit copy, the 16-bit KRSC filter, the fp32 copy rounded to 16 bits -- are made once, kept
 * per (weight pointer, form, geometry), and dropped when a write overlaps the kernel's bytes.
 *
 * Under a captured step (cuda_graph.c's top comment has the design) the cache also knows which
 * memory a step may write -- every range a device op (not an upload) ever wrote: `written` --,
 * which copies the open capture made (they hold nothing until a replay runs the graph) and which
 * copies made before it the capture read (a graph then pins them: they must stay, unchanged, as
 * long as it lives).
 *
 * This header and cuda_weight_cache.c are the bookkeeping only, plain C without CUDA, so the
 * lookup, the invalidation and the capture rules are unit-tested on any machine
 * (tests/gpu/test_gpu_conv_plan.c); making a copy (kernels, pool memory) is cuda_weights.c's. */
#ifndef MT_OPS_CUDA_WEIGHT_CACHE_H
#define MT_OPS_CUDA_WEIGHT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a copy holds; `source` is always Keras' fp32 kernel (HWIO, or [k][k][C] depthwise). */
typedef enum mt_cuda_weight_form {
    MT_CUDA_WEIGHTS_KRSC_F32,     /* fp32, cuDNN's NHWC filter [cout][k][k][cin] */
    MT_CUDA_WEIGHTS_HWIO_16,      /* the 16-bit storage type, Keras' layout (cuBLAS' operand) */
    MT_CUDA_WEIGHTS_KRSC_16,      /* the 16-bit storage type, cuDNN's NHWC filter */
    MT_CUDA_WEIGHTS_HWIO_ROUNDED, /* fp32 values rounded to 16 bits, Keras' layout (the fp32
                                     kernels on widened 16-bit tensors) */
    MT_CUDA_WEIGHT_FORMS
} mt_cuda_weight_form;

/* A kernel of rs taps x cin x cout (depthwise: cin 1, cout = channels). */
typedef struct mt_cuda_weight_key {
    const float *source;
    mt_cuda_weight_form form;
    int rs, cin, cout;
} mt_cuda_weight_key;

typedef struct mt_cuda_weight_copy {
    mt_cuda_weight_key key;
    void *copy;           /* device memory owned by the cache's user */
    uint64_t serial;      /* this copy's number (the n-th kept): how a graph names what it pins */
    bool in_capture;      /* made under the open capture: holds nothing until a replay */
    bool read_by_capture; /* made before the open capture and read by it */
} mt_cuda_weight_copy;

/* [lo, hi) byte addresses */
typedef struct mt_cuda_weight_range {
    uintptr_t lo, hi;
} mt_cuda_weight_range;

typedef struct mt_cuda_weight_cache {
    mt_cuda_weight_copy *copies;
    size_t count, capacity;
    uint64_t serials; /* copies kept so far */
    /* every range a device op wrote (sorted, disjoint, not touching); `written_all`: a write of
     * unknown extent happened, every kernel counts as written */
    mt_cuda_weight_range *written;
    size_t written_count, written_capacity;
    bool written_all;
    bool capturing;
    bool capture_lost; /* a copy the open capture read, made before it, was dropped during it */
} mt_cuda_weight_cache;

/* The copies made before a capture that its graph reads (their serials): the graph may run only
 * while each of them is still kept (mt_cuda_weight_cache_replay). */
typedef struct mt_cuda_weight_pins {
    uint64_t *serials;
    size_t count;
} mt_cuda_weight_pins;

/* Floats of the source kernel; bytes of a copy of it in `form` (16-bit forms: 2 per weight). */
size_t mt_cuda_weight_count(const mt_cuda_weight_key *key);
size_t mt_cuda_weight_copy_bytes(const mt_cuda_weight_key *key);

/* The copy kept for `key`, or NULL. Under a capture, a copy made before it is noted as read. */
void *mt_cuda_weight_cache_find(mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key);

/* Keeps `copy` for `key` (not already kept; under a capture: made by it). false: out of host
 * memory (nothing kept). */
bool mt_cuda_weight_cache_add(mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key,
                              void *copy);

/* A write of [dst, dst + bytes) happened or is about to (or the block was freed): every copy
 * whose source kernel overlaps it is removed and handed to release(context, copy); bytes 0
 * removes every copy (the shutdown). Returns how many were removed. */
size_t mt_cuda_weight_cache_touch(mt_cuda_weight_cache *cache, const void *dst, size_t bytes,
                                  void (*release)(void *context, void *copy), void *context);

/* A device op (one a captured step may hold: not an upload) writes [dst, dst + bytes) (bytes 0:
 * memory of unknown extent): the range is remembered as memory a step may write. false: out of
 * host memory (every kernel then counts as written: the safe side). */
bool mt_cuda_weight_cache_written(mt_cuda_weight_cache *cache, const void *dst, size_t bytes);

/* [dst, dst + bytes) was freed: it no longer counts as written (a buffer allocated there later
 * starts afresh). false: out of host memory (every kernel then counts as written). */
bool mt_cuda_weight_cache_unwritten(mt_cuda_weight_cache *cache, const void *dst, size_t bytes);

/* A capture begins: the copies of kernels a step may write (those overlapping `written`) are
 * removed, so the capture makes its own; the others are kept for the step to read. */
void mt_cuda_weight_cache_capture_begin(mt_cuda_weight_cache *cache,
                                        void (*release)(void *context, void *copy), void *context);

/* The capture ends (`captured`: it holds a graph): the copies it made are removed (the replays
 * make them); with `captured`, the copies made before it that it read are pinned and named in
 * `pins` (malloc'ed; mt_cuda_weight_pins_free). false (nothing pinned): the capture
 * read a copy made before it and then dropped it (the step writes that kernel, or freed it), so
 * the graph would read a stale or reused copy; or out of host memory (`*out_of_memory`). */
bool mt_cuda_weight_cache_capture_end(mt_cuda_weight_cache *cache, bool captured,
                                      mt_cuda_weight_pins *pins, bool *out_of_memory,
                                      void (*release)(void *context, void *copy), void *context);

/* Before a replay: false when a copy in `pins` is gone (its kernel was written or freed since
 * the capture: the graph must not run). Else the copies of kernels a step may write are removed
 * (the replay rewrites them) and true. */
bool mt_cuda_weight_cache_replay(mt_cuda_weight_cache *cache, const mt_cuda_weight_pins *pins,
                                 void (*release)(void *context, void *copy), void *context);

void mt_cuda_weight_pins_free(mt_cuda_weight_pins *pins);

/* Removes every copy (through release) and frees the cache's own arrays. */
void mt_cuda_weight_cache_free(mt_cuda_weight_cache *cache,
                               void (*release)(void *context, void *copy), void *context);

#endif
