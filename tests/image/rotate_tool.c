/* rotate_tool H W ANGLE < pixels.u8 > rotated.f32: mt_image_rotate on one H x W x 3 uint8 image
 * read from stdin, the float result (pixel units) written to stdout; rotate_keras.py compares it
 * with Keras' RandomRotation. */
#include <stdio.h>
#include <stdlib.h>

#include "mobiletune/image.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: rotate_tool H W ANGLE < pixels.u8 > rotated.f32\n");
        return 2;
    }
    int h = atoi(argv[1]), w = atoi(argv[2]);
    double angle = strtod(argv[3], NULL);
    if (h < 1 || w < 1 || h > 4096 || w > 4096) return 2;
    size_t n = (size_t)h * w * 3;
    uint8_t *src = malloc(n);
    float *dst = malloc(n * sizeof *dst);
    if (!src || !dst || fread(src, 1, n, stdin) != n) {
        fprintf(stderr, "rotate_tool: want %zu bytes of pixels on stdin\n", n);
        return 1;
    }
    mt_image_rotate(src, h, w, angle, dst);
    int ok = fwrite(dst, sizeof *dst, n, stdout) == n;
    free(src);
    free(dst);
    return ok ? 0 : 1;
}
