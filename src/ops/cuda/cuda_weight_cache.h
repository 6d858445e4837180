/* The cuda backend's per-update copies of convolution kernels (issue 12 point 2): a conv kernel
 * is read by several calls per step (forward, backward data, the timing runs) but changes only
 * when an op writes its memory (an upload, a buffer copy, buffer_scale, the optimizer update,
 * buffer_free of any block). So the forms the convolutions want -- cuDNN's KRSC filter, the
 * 16-bit copy, the 16-bit KRSC filter, the fp32 copy rounded to 16 bits -- are made once, kept
 * per (weight pointer, form, geometry), and dropped when a write overlaps the kernel's bytes.
 *
 * This header and cuda_weight_cache.c are the bookkeeping only, plain C without CUDA, so the
 * lookup and the invalidation rules are unit-tested on any machine (tests/gpu/test_gpu_conv_
 * plan.c); making a copy (kernels, pool memory) is cuda_conv.c's. */
#ifndef MT_OPS_CUDA_WEIGHT_CACHE_H
#define MT_OPS_CUDA_WEIGHT_CACHE_H

#include <stdbool.h>
#include <stddef.h>

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
    void *copy; /* device memory owned by the cache's user */
} mt_cuda_weight_copy;

typedef struct mt_cuda_weight_cache {
    mt_cuda_weight_copy *copies;
    size_t count, capacity;
} mt_cuda_weight_cache;

/* Floats of the source kernel; bytes of a copy of it in `form` (16-bit forms: 2 per weight). */
size_t mt_cuda_weight_count(const mt_cuda_weight_key *key);
size_t mt_cuda_weight_copy_bytes(const mt_cuda_weight_key *key);

/* The copy kept for `key`, or NULL. */
void *mt_cuda_weight_cache_find(const mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key);

/* Keeps `copy` for `key` (not already kept). false: out of host memory (nothing kept). */
bool mt_cuda_weight_cache_add(mt_cuda_weight_cache *cache, const mt_cuda_weight_key *key,
                              void *copy);

/* A write of [dst, dst + bytes) happened or is about to: every copy whose source kernel overlaps
 * it is removed and handed to release(context, copy); bytes 0 removes every copy (a buffer_free,
 * whose block size the caller does not know, or the shutdown). Returns how many were removed. */
size_t mt_cuda_weight_cache_touch(mt_cuda_weight_cache *cache, const void *dst, size_t bytes,
                                  void (*release)(void *context, void *copy), void *context);

/* Removes every copy (through release) and frees the cache's own array. */
void mt_cuda_weight_cache_free(mt_cuda_weight_cache *cache,
                               void (*release)(void *context, void *copy), void *context);

#endif
