/* The random rotation's pixels (image.h mt_image_rotate): Keras 3's RandomRotation for one angle,
 * in plain C. Keras builds the inverse map of a rotation about the image centre and hands it to
 * TensorFlow's ImageProjectiveTransformV3 with bilinear interpolation and fill mode reflect; this
 * file computes the same map, the same reflection of coordinates that fall outside and the same
 * bilinear weights, so a rotated photo matches Keras' within float rounding (tests/image). */
#include <math.h>

#include "mobiletune/image.h"

/* A source coordinate outside [0, len - 1] reflected back inside, the input extended as
 * (d c b a | a b c d | d c b a), i.e. mirrored about the outer edge of the last pixel, with period
 * 2 * len; then clamped to [0, len - 1] (between -1 and 0, and between len - 1 and len, the point
 * lies in the half pixel beyond the last centre: the edge pixel's value). TensorFlow's
 * MapCoordinate<FILL_REFLECT> does the same. */
static double reflect(double c, int len) {
    if (len <= 1) return 0.0;
    if (c < 0.0 || c > (double)(len - 1)) {
        const double period = 2.0 * len;
        c = fmod(c, period);
        if (c < 0.0) c += period;
        if (c >= (double)len) c = period - 1.0 - c;
    }
    return c < 0.0 ? 0.0 : c > (double)(len - 1) ? (double)(len - 1) : c;
}

void mt_image_rotate(const uint8_t *src, int height, int width, double angle, float *dst) {
    /* Keras' _compute_affine_matrix with centre (0.5, 0.5) of the pixel-centre grid: output pixel
     * (x, y) reads the input at
     *     x_in = cx + cos(angle) (x - cx) - sin(angle) (y - cy)
     *     y_in = cy + sin(angle) (x - cx) + cos(angle) (y - cy)
     * with cx = (width - 1) / 2, cy = (height - 1) / 2: a positive angle turns the picture
     * counter-clockwise as displayed (y grows downwards). */
    const double c = cos(angle), s = sin(angle);
    const double cx = 0.5 * (width - 1), cy = 0.5 * (height - 1);
    const size_t row = (size_t)width * 3;
    for (int y = 0; y < height; y++) {
        for (int x = 0; x < width; x++) {
            const double dx = x - cx, dy = y - cy;
            const double xi = reflect(cx + c * dx - s * dy, width);
            const double yi = reflect(cy + s * dx + c * dy, height);
            /* bilinear between the four pixel centres around (xi, yi); after reflect() the far
             * neighbour can lie past the edge only with weight 0, so it is clamped, not read */
            const int x0 = (int)floor(xi), y0 = (int)floor(yi);
            const int x1 = x0 + 1 < width ? x0 + 1 : x0, y1 = y0 + 1 < height ? y0 + 1 : y0;
            const float wx = (float)(xi - x0), wy = (float)(yi - y0);
            const uint8_t *p00 = src + (size_t)y0 * row + (size_t)x0 * 3;
            const uint8_t *p01 = src + (size_t)y0 * row + (size_t)x1 * 3;
            const uint8_t *p10 = src + (size_t)y1 * row + (size_t)x0 * 3;
            const uint8_t *p11 = src + (size_t)y1 * row + (size_t)x1 * 3;
            float *out = dst + (size_t)y * row + (size_t)x * 3;
            for (int k = 0; k < 3; k++) {
                const float top = (1.0f - wx) * p00[k] + wx * p01[k];
                const float bottom = (1.0f - wx) * p10[k] + wx * p11[k];
                out[k] = (1.0f - wy) * top + wy * bottom;
            }
        }
    }
}
