/* Unit tests of src/image: format detection, decode errors, JPEG round trip and scaled decoding,
 * and the resize arithmetic on cases small enough to work out by hand. (The packer's tests
 * compare real photos against an independent Pillow + numpy implementation.) */
#include "mobiletune/image.h"
#include "test_util.h"

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

int main(void) {
    test_detect_and_errors();
    test_jpeg_round_trip_and_scaling();
    test_resize();
    return mt_test_finish();
}
