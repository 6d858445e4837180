/* The horizontal flip, once: the loader's random flip (src/data/loader.c) and the trainer's
 * mirrored view in the feature cache (src/train/trainer_cache.c) must produce the same image, so
 * both reverse a row with this function. */
#ifndef MT_DATA_MIRROR_H
#define MT_DATA_MIRROR_H

#include <stddef.h>
#include <string.h>

/* dst = src with its `width` pixels in reverse order; a pixel is pixel_bytes bytes (all its
 * channels: 3 for uint8 RGB, 3 * sizeof(float) for float RGB). dst and src must not overlap.
 * Inline so that each caller's constant pixel size turns the memcpy into plain moves. */
static inline void mt_mirror_row(void *restrict dst, const void *restrict src, int width,
                                 size_t pixel_bytes) {
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (int x = 0; x < width; x++)
        memcpy(out + (size_t)x * pixel_bytes, in + (size_t)(width - 1 - x) * pixel_bytes,
               pixel_bytes);
}

#endif
