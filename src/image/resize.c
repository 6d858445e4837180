/* The square resize of the packer and of `predict`: bilinear on half-pixel centres, the arithmetic
 * of tf.image.resize(method='bilinear', antialias=False) that the Keras tutorial's
 * image_dataset_from_directory applies, in three framings (stretch, center-crop, pad). The result
 * is rounded to uint8 (TensorFlow keeps float32; the difference is at most 0.5). */
#include "mobiletune/image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* For each output coordinate along one axis: the two source indices and the weight of the
 * second, exactly as TensorFlow's compute_interpolation_weights with half_pixel_centers. */
typedef struct axis_tap {
    int lo, hi;
    float frac;
} axis_tap;

/* `count` taps for output coordinates offset..offset+count-1 of an axis resized from `in_size`
 * to `out_size` (offset > 0 when a crop drops the first rows or columns). */
static void axis_taps(int in_size, int out_size, int offset, int count, axis_tap *taps) {
    float scale = (float)in_size / (float)out_size;
    for (int i = 0; i < count; i++) {
        float in = ((float)(i + offset) + 0.5f) * scale - 0.5f;
        float in_floor = floorf(in);
        int lo = (int)in_floor, hi = (int)ceilf(in);
        taps[i].frac = in - in_floor;
        taps[i].lo = lo < 0 ? 0 : lo;
        taps[i].hi = hi > in_size - 1 ? in_size - 1 : hi;
    }
}

/* round(a * b / c) for positive integers, half away from zero, without overflow for our sizes. */
static int scaled_round(int a, int b, int c) {
    long long v = ((long long)a * b * 2 + c) / ((long long)c * 2);
    return v < 1 ? 1 : (int)v;
}

/* One source row interpolated horizontally at the window's columns into out (cw*3 floats, plus
 * one spare the vector path may write), with the operations of TensorFlow's lerp in its order:
 * left + (right - left) * frac. The uint8 -> float conversion is exact, so both paths below give
 * the same bits. */
static void lerp_row(const uint8_t *restrict row, int row_pixels, const axis_tap *restrict xt,
                     int cw, float *restrict out) {
    int x = 0;
#if defined(__SSE2__)
    /* A pixel's R, G, B and the byte after it load as one 4-lane vector: a third of the work of
     * three scalar lerps. Taps are non-decreasing, so once a tap reaches the last pixel (which
     * has no byte after it) the scalar loop takes the rest of the row. */
    const __m128i zero = _mm_setzero_si128();
    for (; x < cw && xt[x].hi < row_pixels - 1; x++) {
        int32_t lo_bytes, hi_bytes;
        memcpy(&lo_bytes, row + (size_t)xt[x].lo * 3, 4);
        memcpy(&hi_bytes, row + (size_t)xt[x].hi * 3, 4);
        __m128i lo_wide =
            _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(lo_bytes), zero), zero);
        __m128i hi_wide =
            _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(hi_bytes), zero), zero);
        __m128 l = _mm_cvtepi32_ps(lo_wide), r = _mm_cvtepi32_ps(hi_wide);
        __m128 v = _mm_add_ps(l, _mm_mul_ps(_mm_sub_ps(r, l), _mm_set1_ps(xt[x].frac)));
        _mm_storeu_ps(out + 3 * x, v); /* its 4th lane is overwritten by pixel x + 1 */
    }
#endif
    for (; x < cw; x++) {
        const uint8_t *l = row + (size_t)xt[x].lo * 3, *r = row + (size_t)xt[x].hi * 3;
        float f = xt[x].frac;
        for (int c = 0; c < 3; c++)
            out[3 * x + c] = (float)l[c] + ((float)r[c] - (float)l[c]) * f;
    }
}

/* Resize src to rw x rh and write the window starting at (ox, oy) of that resized image, cw x ch
 * pixels, to dst at (dx, dy) of a `size`-wide canvas. Separable: each source row is interpolated
 * horizontally once (two rows are cached), then rows are blended vertically in a loop the
 * compiler vectorizes. */
static mt_status resize_window(const mt_image *src, int rw, int rh, int ox, int oy, int cw, int ch,
                               uint8_t *dst, int size, int dx, int dy) {
    size_t n = (size_t)cw * 3, row_floats = n + 1; /* + lerp_row's spare */
    axis_tap *xt = malloc(sizeof(axis_tap) * (size_t)cw);
    axis_tap *yt = malloc(sizeof(axis_tap) * (size_t)ch);
    float *rows = malloc(sizeof(float) * row_floats * 2);
    if (!xt || !yt || !rows) {
        free(xt);
        free(yt);
        free(rows);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory resizing %dx%d", src->width, src->height);
    }
    axis_taps(src->width, rw, ox, cw, xt);
    axis_taps(src->height, rh, oy, ch, yt);
    size_t in_stride = (size_t)src->width * 3;
    int cached[2] = {-1, -1}; /* source row held in rows[0..n) and rows[n..2n) */
    for (int y = 0; y < ch; y++) {
        int want[2] = {yt[y].lo, yt[y].hi};
        int slots[2];
        for (int k = 0; k < 2; k++) {
            int slot = cached[0] == want[k] ? 0 : cached[1] == want[k] ? 1 : -1;
            if (slot < 0) {
                /* Evict the slot the other row of this pair does not need. */
                slot = k == 0 ? (cached[0] == want[1] ? 1 : 0) : (slots[0] == 0 ? 1 : 0);
                lerp_row(src->pixels + (size_t)want[k] * in_stride, src->width, xt, cw,
                         rows + slot * row_floats);
                cached[slot] = want[k];
            }
            slots[k] = slot;
        }
        const float *restrict t = rows + slots[0] * row_floats;
        const float *restrict b = rows + slots[1] * row_floats;
        float fy = yt[y].frac;
        uint8_t *restrict out = dst + ((size_t)(dy + y) * size + dx) * 3;
        for (size_t i = 0; i < n; i++) {
            float v = t[i] + (b[i] - t[i]) * fy;
            int q = (int)(v + 0.5f); /* v >= 0: truncation after +0.5 rounds half up */
            out[i] = (uint8_t)(q > 255 ? 255 : q);
        }
    }
    free(xt);
    free(yt);
    free(rows);
    return MT_OK;
}

mt_status mt_image_resize(const mt_image *src, int size, mt_resize_mode mode, uint8_t *dst) {
    if (!src || !src->pixels || src->width <= 0 || src->height <= 0)
        return MT_FAIL(MT_ERR_INVALID, "mt_image_resize: empty source image");
    if (size <= 0 || size > 65535)
        return MT_FAIL(MT_ERR_INVALID, "mt_image_resize: size %d out of range 1..65535", size);
    int w = src->width, h = src->height;
    switch (mode) {
    case MT_RESIZE_STRETCH:
        return resize_window(src, size, size, 0, 0, size, size, dst, size, 0, 0);
    case MT_RESIZE_CENTER_CROP: {
        /* Short side to `size`, long side scaled by the same ratio (rounded), centre window. */
        int rw = w <= h ? size : scaled_round(w, size, h);
        int rh = w <= h ? scaled_round(h, size, w) : size;
        return resize_window(src, rw, rh, (rw - size) / 2, (rh - size) / 2, size, size, dst, size,
                             0, 0);
    }
    case MT_RESIZE_PAD: {
        /* Long side to `size`, short side by the same ratio (rounded, at least 1), centred on
         * black. */
        int rw = w >= h ? size : scaled_round(w, size, h);
        int rh = w >= h ? scaled_round(h, size, w) : size;
        if (rw > size) rw = size;
        if (rh > size) rh = size;
        memset(dst, 0, (size_t)size * size * 3);
        return resize_window(src, rw, rh, 0, 0, rw, rh, dst, size, (size - rw) / 2,
                             (size - rh) / 2);
    }
    }
    return MT_FAIL(MT_ERR_INVALID, "mt_image_resize: unknown resize mode %d", (int)mode);
}

static const char *const resize_mode_names[] = {[MT_RESIZE_STRETCH] = "stretch",
                                                [MT_RESIZE_CENTER_CROP] = "center-crop",
                                                [MT_RESIZE_PAD] = "pad"};
const mt_enum_names mt_resize_mode_names = MT_ENUM_NAMES(resize_mode_names);

mt_status mt_resize_mode_parse(const char *text, mt_resize_mode *out) {
    int mode;
    if (mt_enum_find(&mt_resize_mode_names, text, &mode)) {
        *out = (mt_resize_mode)mode;
        return MT_OK;
    }
    return MT_FAIL(MT_ERR_INVALID, "unknown resize mode '%s': use stretch, center-crop or pad",
                   text ? text : "(null)");
}

const char *mt_resize_mode_name(mt_resize_mode mode) {
    return mt_enum_name(&mt_resize_mode_names, (int)mode);
}
