/* Unit tests of src/image: format detection, decode errors, JPEG round trip and scaled decoding,
 * the resize arithmetic on cases small enough to work out by hand, and the resize's vector paths
 * against the formula written plainly. (The packer's tests compare real photos against an
 * independent Pillow + numpy implementation.) */
#include "mobiletune/image.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mt_image make_image(int w, int h) {
    mt_image im = {.width = w, .height = h, .pixels = malloc((size_t)w * h * 3)};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = im.pixels + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(x * 255 / (w > 1 ? w - 1 : 1));
            p[1] = (uint8_t)(y * 255 / (h > 1 ? h - 1 : 1));
            p[2] = 90;
        }
    return im;
}

static void test_detect_and_errors(void) {
    static const uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0};
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    CHECK(mt_image_detect(jpeg, sizeof jpeg) == MT_IMAGE_JPEG);
    CHECK(mt_image_detect(png, sizeof png) == MT_IMAGE_PNG);
    CHECK(mt_image_detect("GIF89a", 6) == MT_IMAGE_UNKNOWN);
    CHECK(mt_image_detect(png, 7) == MT_IMAGE_UNKNOWN);

    mt_image im;
    CHECK(mt_image_decode("", 0, "empty.jpg", 0, &im) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "empty.jpg") && strstr(mt_last_error(), "empty file"), "%s",
              mt_last_error());
    CHECK(mt_image_decode("hello", 5, "text.jpg", 0, &im) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "not a JPEG or PNG"), "%s", mt_last_error());
    CHECK(im.pixels == NULL);
    CHECK(mt_image_decode(jpeg, sizeof jpeg, "short.jpg", 0, &im) == MT_ERR_FORMAT);
    CHECK(mt_image_decode(png, sizeof png, "short.png", 0, &im) == MT_ERR_FORMAT);
    CHECK(mt_image_decode_file("/nonexistent/cat.jpg", 0, &im) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "/nonexistent/cat.jpg"), "%s", mt_last_error());
}

static void test_jpeg_round_trip_and_scaling(void) {
    mt_image src = make_image(400, 330);
    uint8_t *jpeg;
    size_t size;
    if (mt_image_encode_jpeg(src.pixels, 400, 330, 100, &jpeg, &size) != MT_OK) {
        CHECK_MSG(0, "encode: %s", mt_last_error());
        mt_image_free(&src);
        return;
    }
    mt_image full;
    CHECK(mt_image_decode(jpeg, size, "rt.jpg", 0, &full) == MT_OK);
    CHECK(full.width == 400 && full.height == 330);
    double diff = 0;
    for (size_t i = 0; full.pixels && i < (size_t)400 * 330 * 3; i++)
        diff += abs((int)full.pixels[i] - (int)src.pixels[i]);
    CHECK_MSG(diff / (400.0 * 330 * 3) < 2.0, "mean |diff| %.3f", diff / (400.0 * 330 * 3));
    mt_image_free(&full);
    /* Largest power of two s with both sides >= s*hint; output ceil(side/s). */
    static const struct {
        int hint, w, h;
    } cases[] = {{160, 200, 165}, {100, 200, 165}, {50, 100, 83},
                 {40, 50, 42},    {0, 400, 330},   {300, 400, 330}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_image im;
        CHECK(mt_image_decode(jpeg, size, "scaled.jpg", cases[i].hint, &im) == MT_OK);
        CHECK_MSG(im.width == cases[i].w && im.height == cases[i].h, "hint %d: %dx%d, want %dx%d",
                  cases[i].hint, im.width, im.height, cases[i].w, cases[i].h);
        mt_image_free(&im);
    }
    /* Truncation is an error, not a grey image. */
    mt_image cut;
    CHECK(mt_image_decode(jpeg, size / 2, "cut.jpg", 0, &cut) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "truncated"), "%s", mt_last_error());
    free(jpeg);
    mt_image_free(&src);
}

/* Rewrite the size in a JPEG's SOF0 header (as a hostile file would). */
static void set_jpeg_size(uint8_t *jpeg, size_t size, int width, int height) {
    for (size_t i = 2; i + 9 < size; i++) {
        if (jpeg[i] == 0xFF && (jpeg[i + 1] == 0xC0 || jpeg[i + 1] == 0xC2)) {
            jpeg[i + 5] = (uint8_t)(height >> 8), jpeg[i + 6] = (uint8_t)height;
            jpeg[i + 7] = (uint8_t)(width >> 8), jpeg[i + 8] = (uint8_t)width;
            return;
        }
    }
    CHECK_MSG(0, "no SOF marker found");
}

/* A header declaring 20000x20000 is refused from the header, whatever scaling the hint allows
 * (the 1/8 decode would be 2500x2500, under the limit: the check used to come after it and the
 * decode cost 200 MB and seconds); the limit is configurable and applies to PNG too. */
static void test_pixel_limit(void) {
    CHECK(mt_image_max_pixels() == MT_IMAGE_DEFAULT_MAX_PIXELS);
    mt_image src = make_image(64, 48);
    uint8_t *jpeg;
    size_t size;
    if (mt_image_encode_jpeg(src.pixels, 64, 48, 90, &jpeg, &size) != MT_OK) {
        CHECK_MSG(0, "encode: %s", mt_last_error());
        mt_image_free(&src);
        return;
    }
    mt_image im;
    CHECK(mt_image_decode(jpeg, size, "ok.jpg", 0, &im) == MT_OK);
    mt_image_free(&im);
    set_jpeg_size(jpeg, size, 20000, 20000);
    CHECK(mt_image_decode(jpeg, size, "huge.jpg", 160, &im) == MT_ERR_FORMAT && !im.pixels);
    CHECK_MSG(strstr(mt_last_error(), "huge.jpg") && strstr(mt_last_error(), "20000x20000") &&
                  strstr(mt_last_error(), "400000000 pixels") && strstr(mt_last_error(), "limit"),
              "%s", mt_last_error());
    set_jpeg_size(jpeg, size, 64, 48);
    CHECK(mt_image_set_max_pixels(64 * 48 - 1) == MT_OK);
    CHECK(mt_image_decode(jpeg, size, "small.jpg", 0, &im) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "limit is 3071"), "%s", mt_last_error());
    /* A PNG header: 8-byte signature, IHDR with width and height (big-endian) then its CRC; the
     * limit is checked right after the header is read. */
    static const uint8_t png[] = {
        0x89, 'P',  'N',  'G',  '\r', '\n', 0x1a, '\n', /* signature */
        0,    0,    0,    13,   'I',  'H',  'D',  'R',  0, 0, 0x4e,
        0x20, 0,    0,    0x4e, 0x20, 8,    2,    0,    0, 0, /* 20000 x 20000, 8-bit RGB */
        0x6c, 0x12, 0xd1, 0x6e /* CRC-32 of the chunk */};
    uint8_t bytes[sizeof png];
    memcpy(bytes, png, sizeof png);
    CHECK(mt_image_set_max_pixels(MT_IMAGE_DEFAULT_MAX_PIXELS) == MT_OK);
    CHECK(mt_image_decode(bytes, sizeof bytes, "huge.png", 0, &im) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "huge.png: PNG of 20000x20000 is too large"), "%s",
              mt_last_error());
    CHECK(mt_image_set_max_pixels(0) == MT_ERR_INVALID);
    CHECK(mt_image_max_pixels() == MT_IMAGE_DEFAULT_MAX_PIXELS);
    free(jpeg);
    mt_image_free(&src);
}

static void test_resize(void) {
    /* 2x2 -> 4x4 by hand: x = (i+0.5)/2-0.5 = -0.25, 0.25, 0.75, 1.25 -> 0, 25, 75, 100. */
    uint8_t px[12] = {0, 0, 0, 100, 100, 100, 0, 0, 0, 100, 100, 100};
    mt_image tiny = {.width = 2, .height = 2, .pixels = px};
    uint8_t out4[4 * 4 * 3];
    CHECK(mt_image_resize(&tiny, 4, MT_RESIZE_STRETCH, out4) == MT_OK);
    static const int want[4] = {0, 25, 75, 100};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            CHECK_MSG(out4[(y * 4 + x) * 3] == want[x], "(%d,%d) = %d, want %d", y, x,
                      out4[(y * 4 + x) * 3], want[x]);

    /* Same size: identity. */
    mt_image src = make_image(64, 64);
    uint8_t *same = malloc(64 * 64 * 3);
    CHECK(mt_image_resize(&src, 64, MT_RESIZE_STRETCH, same) == MT_OK);
    CHECK(memcmp(same, src.pixels, 64 * 64 * 3) == 0);
    free(same);
    mt_image_free(&src);

    /* pad: 200x100 -> 50: content 50x25 at rows 12..36, black elsewhere. */
    mt_image wide = {.width = 200, .height = 100, .pixels = malloc(200 * 100 * 3)};
    memset(wide.pixels, 200, 200 * 100 * 3);
    uint8_t out[50 * 50 * 3];
    CHECK(mt_image_resize(&wide, 50, MT_RESIZE_PAD, out) == MT_OK);
    for (int y = 0; y < 50; y++) {
        int inside = y >= 12 && y < 37;
        CHECK_MSG(out[(y * 50 + 25) * 3] == (inside ? 200 : 0), "pad row %d = %d", y,
                  out[(y * 50 + 25) * 3]);
    }
    /* center-crop: 300x100 with a green middle third -> the window is all green. */
    mt_image stripes = {.width = 300, .height = 100, .pixels = calloc(300 * 100 * 3, 1)};
    for (int y = 0; y < 100; y++)
        for (int x = 100; x < 200; x++)
            stripes.pixels[(y * 300 + x) * 3 + 1] = 255;
    CHECK(mt_image_resize(&stripes, 50, MT_RESIZE_CENTER_CROP, out) == MT_OK);
    int green = 0;
    for (int i = 0; i < 50 * 50; i++)
        green += out[i * 3 + 1] == 255 && out[i * 3] == 0;
    CHECK_MSG(green == 2500, "%d of 2500 window pixels green", green);
    CHECK(mt_image_resize(&stripes, 50, MT_RESIZE_STRETCH, out) == MT_OK);
    CHECK(out[(25 * 50 + 2) * 3 + 1] == 0 && out[(25 * 50 + 25) * 3 + 1] == 255);
    free(wide.pixels);
    free(stripes.pixels);

    mt_resize_mode mode;
    CHECK(mt_resize_mode_parse("center-crop", &mode) == MT_OK && mode == MT_RESIZE_CENTER_CROP);
    CHECK(strcmp(mt_resize_mode_name(MT_RESIZE_PAD), "pad") == 0);
    CHECK(mt_resize_mode_parse("crop", &mode) == MT_ERR_INVALID);
    CHECK(mt_image_resize(&tiny, 0, MT_RESIZE_STRETCH, out4) == MT_ERR_INVALID);
}

/* The resize written the plain way, straight from TensorFlow's half-pixel bilinear formula in
 * float32 and in its order (top and bottom lerps, then the vertical one), one channel at a time:
 * src resized to rw x rh, the window from (ox, oy) of size cw x ch written at (dx, dy) of a
 * size x size canvas. */
static void reference_window(const mt_image *src, int rw, int rh, int ox, int oy, int cw, int ch,
                             uint8_t *dst, int size, int dx, int dy) {
    float sx = (float)src->width / (float)rw, sy = (float)src->height / (float)rh;
    for (int y = 0; y < ch; y++) {
        float in_y = ((float)(y + oy) + 0.5f) * sy - 0.5f, fy = in_y - floorf(in_y);
        int y0 = (int)floorf(in_y), y1 = (int)ceilf(in_y);
        y0 = y0 < 0 ? 0 : y0;
        y1 = y1 > src->height - 1 ? src->height - 1 : y1;
        for (int x = 0; x < cw; x++) {
            float in_x = ((float)(x + ox) + 0.5f) * sx - 0.5f, fx = in_x - floorf(in_x);
            int x0 = (int)floorf(in_x), x1 = (int)ceilf(in_x);
            x0 = x0 < 0 ? 0 : x0;
            x1 = x1 > src->width - 1 ? src->width - 1 : x1;
            for (int c = 0; c < 3; c++) {
#define AT(yy, xx) ((float)src->pixels[((size_t)(yy)*src->width + (xx)) * 3 + c])
                float top = AT(y0, x0) + (AT(y0, x1) - AT(y0, x0)) * fx;
                float bottom = AT(y1, x0) + (AT(y1, x1) - AT(y1, x0)) * fx;
#undef AT
                float v = top + (bottom - top) * fy;
                int q = (int)(v + 0.5f);
                dst[((size_t)(y + dy) * size + x + dx) * 3 + c] = (uint8_t)(q > 255 ? 255 : q);
            }
        }
    }
}

/* round(a * b / c), half up, at least 1: the docs' rule for the scaled side (docs/packing.md). */
static int scaled_side(int a, int b, int c) {
    int v = (int)floor((double)a * b / c + 0.5);
    return v < 1 ? 1 : v;
}

/* The three framings of docs/packing.md, on top of the plain formula. */
static void reference_resize(const mt_image *src, int size, mt_resize_mode mode, uint8_t *dst) {
    int w = src->width, h = src->height;
    if (mode == MT_RESIZE_STRETCH) {
        reference_window(src, size, size, 0, 0, size, size, dst, size, 0, 0);
    } else if (mode == MT_RESIZE_CENTER_CROP) { /* short side to size, centre window */
        int rw = w <= h ? size : scaled_side(w, size, h);
        int rh = w <= h ? scaled_side(h, size, w) : size;
        reference_window(src, rw, rh, (rw - size) / 2, (rh - size) / 2, size, size, dst, size, 0,
                         0);
    } else { /* pad: long side to size, centred on black */
        int rw = w >= h ? size : scaled_side(w, size, h);
        int rh = w >= h ? scaled_side(h, size, w) : size;
        rw = rw > size ? size : rw;
        rh = rh > size ? size : rh;
        memset(dst, 0, (size_t)size * size * 3);
        reference_window(src, rw, rh, 0, 0, rw, rh, dst, size, (size - rw) / 2, (size - rh) / 2);
    }
}

/* The vector paths of the resize must give the same bytes as the formula written plainly, on
 * random pixels (so any lane or edge mistake shows) of sizes that hit every path: up and down,
 * one pixel wide or high, right-edge taps, and the crop and pad windows. */
static void test_resize_matches_plain_formula(void) {
    static const int sides[][2] = {{1, 1},   {1, 37},    {37, 1},    {2, 3},     {5, 160},
                                   {160, 5}, {161, 160}, {250, 188}, {499, 300}, {321, 480}};
    static const int sizes[] = {1, 7, 64, 160, 224};
    static const mt_resize_mode modes[] = {MT_RESIZE_STRETCH, MT_RESIZE_CENTER_CROP, MT_RESIZE_PAD};
    uint8_t *got = malloc(224 * 224 * 3), *want = malloc(224 * 224 * 3);
    unsigned seed = 12345;
    int mismatched = 0, runs = 0;
    for (size_t i = 0; i < sizeof sides / sizeof sides[0]; i++) {
        mt_image src = {.width = sides[i][0], .height = sides[i][1]};
        /* exactly sized, so an ASan build catches a vector load past the end */
        src.pixels = malloc((size_t)src.width * src.height * 3);
        for (size_t k = 0; k < (size_t)src.width * src.height * 3; k++) {
            seed = seed * 1103515245u + 12345u;
            src.pixels[k] = (uint8_t)(seed >> 16);
        }
        for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
            for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
                int n = sizes[j];
                runs++;
                CHECK(mt_image_resize(&src, n, modes[m], got) == MT_OK);
                reference_resize(&src, n, modes[m], want);
                if (memcmp(got, want, (size_t)n * n * 3) != 0 && mismatched++ < 5)
                    CHECK_MSG(0, "%dx%d -> %d (%s): resize differs from the plain formula",
                              src.width, src.height, n, mt_resize_mode_name(modes[m]));
            }
        }
        free(src.pixels);
    }
    CHECK_MSG(mismatched == 0, "%d of %d resizes differ", mismatched, runs);
    free(got);
    free(want);
}

int main(void) {
    test_pixel_limit();
    test_detect_and_errors();
    test_jpeg_round_trip_and_scaling();
    test_resize();
    test_resize_matches_plain_formula();
    return mt_test_finish();
}
