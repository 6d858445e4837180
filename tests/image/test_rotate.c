/* mt_image_rotate (Keras' RandomRotation for one angle) against cases whose answer is known
 * without it: angle 0 is the identity, pi the 180-degree turn, pi/2 a quarter turn
 * counter-clockwise, coordinates outside the image reflected as (d c b a | a b c d | d c b a),
 * and a linear ramp, which bilinear interpolation reproduces exactly at any point. Its agreement
 * with Keras' own layer on real photos is rotate_keras.py's (slow). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/image.h"
#include "test_util.h"

static uint8_t *random_image(int h, int w, unsigned seed) {
    uint8_t *p = malloc((size_t)h * w * 3);
    for (int i = 0; i < h * w * 3; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
    return p;
}

static uint8_t at(const uint8_t *p, int w, int y, int x, int c) {
    return p[((size_t)y * w + x) * 3 + c];
}

/* The reflected index straight from the pattern (d c b a | a b c d | d c b a | a b c d ...):
 * blocks of `len` pixels, every other one reversed, block 0 the image itself. */
static int pattern_index(int c, int len) {
    int block = c >= 0 ? c / len : -((-c + len - 1) / len);
    int r = c - block * len;
    return block % 2 == 0 ? r : len - 1 - r;
}

/* Rotations whose source points are all pixel centres: every output value is one input value.
 * Tolerance 1e-4: the weights are 0 or 1 up to cos/sin of the angle in double (1e-16) and the
 * float mix rounds at 2^-24 relative on values <= 255 (1.5e-5). */
static void check_exact_turns(void) {
    const int h = 6, w = 9;
    uint8_t *src = random_image(h, w, 1);
    float *out = malloc((size_t)h * w * 3 * sizeof *out);
    int bad = 0;
    mt_image_rotate(src, h, w, 0.0, out);
    for (int i = 0; i < h * w * 3; i++)
        bad += out[i] != (float)src[i];
    CHECK_MSG(bad == 0, "angle 0 is not the identity: %d values", bad);

    bad = 0;
    mt_image_rotate(src, h, w, M_PI, out);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                bad += fabsf(out[((size_t)y * w + x) * 3 + c] -
                             at(src, w, h - 1 - y, w - 1 - x, c)) > 1e-4f;
    CHECK_MSG(bad == 0, "angle pi is not the 180-degree turn: %d values", bad);
    free(src);
    free(out);

    /* a quarter turn of a square: the top-right corner goes to the top-left (counter-clockwise
     * as displayed), out(y, x) = in(x, n-1-y) */
    const int n = 8;
    src = random_image(n, n, 2);
    out = malloc((size_t)n * n * 3 * sizeof *out);
    bad = 0;
    mt_image_rotate(src, n, n, M_PI / 2, out);
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++)
            for (int c = 0; c < 3; c++)
                bad +=
                    fabsf(out[((size_t)y * n + x) * 3 + c] - at(src, n, x, n - 1 - y, c)) > 1e-4f;
    CHECK_MSG(bad == 0, "angle pi/2 is not the quarter turn counter-clockwise: %d values", bad);
    free(src);
    free(out);
}

/* A quarter turn of a non-square image reads beyond its top and bottom rows, up to more than one
 * period away: those points come back reflected. With cx = (w-1)/2, cy = (h-1)/2 and w - h even,
 * out(y, x) = in(pattern(x - (cx - cy)), (cx + cy) - y), every index an integer. */
static void check_reflect(void) {
    const int sizes[2][2] = {{4, 8}, {2, 12}};
    for (int k = 0; k < 2; k++) {
        const int h = sizes[k][0], w = sizes[k][1];
        const int shift = (w - h) / 2, sum = (w - 1 + h - 1) / 2;
        uint8_t *src = random_image(h, w, 3 + (unsigned)k);
        float *out = malloc((size_t)h * w * 3 * sizeof *out);
        mt_image_rotate(src, h, w, M_PI / 2, out);
        int bad = 0, outside = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int row = x - shift, col = sum - y;
                outside += row < 0 || row >= h;
                for (int c = 0; c < 3; c++)
                    bad += fabsf(out[((size_t)y * w + x) * 3 + c] -
                                 at(src, w, pattern_index(row, h), col, c)) > 1e-4f;
            }
        CHECK_MSG(bad == 0, "%dx%d quarter turn: %d values not the reflected pixels", h, w, bad);
        CHECK(outside > 0);
        free(src);
        free(out);
    }
    CHECK(pattern_index(-1, 4) == 0 && pattern_index(-4, 4) == 3 && pattern_index(-5, 4) == 3 &&
          pattern_index(4, 4) == 3 && pattern_index(8, 4) == 0 && pattern_index(-5, 2) == 0);
}

/* A linear ramp v = 5 x + 3 y + 10 (at most 162: no clipping) is reproduced exactly by bilinear
 * interpolation at any point inside the grid, so an arbitrary angle's output there is the ramp at
 * the rotated point. Tolerance 1e-3: the float weights (2^-24 relative) times values <= 255, a
 * few times over, and the double coordinates. */
static void check_ramp(void) {
    const int h = 20, w = 23;
    uint8_t *src = malloc((size_t)h * w * 3);
    float *out = malloc((size_t)h * w * 3 * sizeof *out);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                src[((size_t)y * w + x) * 3 + c] = (uint8_t)(5 * x + 3 * y + 10 + c);
    const double angle = 0.3, cx = 0.5 * (w - 1), cy = 0.5 * (h - 1);
    mt_image_rotate(src, h, w, angle, out);
    int bad = 0, inside = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double xi = cx + cos(angle) * (x - cx) - sin(angle) * (y - cy);
            double yi = cy + sin(angle) * (x - cx) + cos(angle) * (y - cy);
            if (xi < 0 || xi > w - 1 || yi < 0 || yi > h - 1) continue;
            inside++;
            for (int c = 0; c < 3; c++)
                bad += fabs(out[((size_t)y * w + x) * 3 + c] - (5 * xi + 3 * yi + 10 + c)) > 1e-3;
        }
    CHECK_MSG(bad == 0, "the ramp rotated by 0.3: %d values off at %d points inside", bad, inside);
    CHECK(inside > h * w / 2);
    free(src);
    free(out);
}

int main(void) {
    check_exact_turns();
    check_reflect();
    check_ramp();
    return mt_test_finish();
}
