/* Image decoding (JPEG via TurboJPEG, PNG via libpng) to RGB, and the square resize that the
 * packer stores and `predict` repeats, so a prediction sees exactly the pixels training saw.
 * docs/packing.md describes every conversion and the resize arithmetic in words.
 *
 * All functions are thread-safe (each call uses its own decoder state). */
#ifndef MOBILETUNE_IMAGE_H
#define MOBILETUNE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/enum_names.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A decoded image: 8-bit RGB, rows top to bottom, pixels left to right. */
typedef struct mt_image {
    int width, height;
    uint8_t *pixels; /* height*width*3, RGB HWC; malloc'd, owned */
} mt_image;

typedef enum mt_resize_mode {
    MT_RESIZE_STRETCH = 0, /* both sides to `size` independently (aspect not kept), like
                              tf.image.resize(method='bilinear', antialias=False) */
    MT_RESIZE_CENTER_CROP, /* short side to `size`, then the centred size x size window */
    MT_RESIZE_PAD,         /* long side to `size`, centred on a black size x size canvas */
} mt_resize_mode;

/* The file kinds mt_image_decode() knows, detected from magic bytes (never the name). */
typedef enum mt_image_format {
    MT_IMAGE_UNKNOWN = 0,
    MT_IMAGE_JPEG,
    MT_IMAGE_PNG,
} mt_image_format;

mt_image_format mt_image_detect(const void *bytes, size_t size);

/* The most pixels (width x height as the file's header declares them, before any scaling or EXIF
 * rotation) an image may have to be decoded: larger ones are refused from the header alone
 * (MT_ERR_FORMAT naming the size and the limit), before any allocation. Default 2^26
 * (e.g. 8192 x 8192). One value for the process, set before decoding threads start. */
#define MT_IMAGE_DEFAULT_MAX_PIXELS ((uint64_t)1 << 26)
mt_status mt_image_set_max_pixels(uint64_t pixels);
uint64_t mt_image_max_pixels(void);

/* A `min_side_hint` asking for TensorFlow's pixels: a full-size JPEG decode with libjpeg's fast
 * integer IDCT, which is what tf.io.decode_jpeg / decode_image do by default, so the decoded
 * pixels are identical to TensorFlow's (and after mt_image_resize within 0.5 of the tutorial's
 * image_dataset_from_directory). Slower than a scaled decode. No effect on PNG. */
#define MT_DECODE_HINT_TF (-1)

/* The --decode option of pack, predict and features: a scaled decode (min_side_hint = the output
 * side: DCT scaling, fast) or TensorFlow's pixels at full size (MT_DECODE_HINT_TF). */
typedef enum mt_decode_mode {
    MT_DECODE_MODE_SCALED = 0,
    MT_DECODE_MODE_TF,
} mt_decode_mode;
extern const mt_enum_names mt_decode_mode_names; /* scaled|tf */

/* Decode a JPEG or PNG held in memory to RGB: grayscale, palette, CMYK/YCCK (plain and Adobe
 * inverted), 16-bit and alpha (dropped) all become 8-bit RGB, and the EXIF orientation is applied.
 * `name` only appears in error messages. `min_side_hint` > 0 lets a JPEG decode at a reduced
 * scale (1/2, 1/4 or 1/8: the smallest whose width and height both stay >= the hint, measured
 * before EXIF rotation) with libjpeg's accurate integer IDCT; 0 decodes at full size with it;
 * MT_DECODE_HINT_TF as above. Errors: MT_ERR_FORMAT for data that is not an
 * image, is corrupt or truncated (a JPEG that ends early is an error, not a grey-filled image),
 * MT_ERR_NOMEM. On failure `out` is left empty. */
mt_status mt_image_decode(const void *bytes, size_t size, const char *name, int min_side_hint,
                          mt_image *out);

/* Read `path` and decode it as mt_image_decode() does (MT_ERR_IO when it cannot be read).
 * To reproduce mobiletune-pack's pixels, use mt_image_preprocess_file() below. */
mt_status mt_image_decode_file(const char *path, int min_side_hint, mt_image *out);

void mt_image_free(mt_image *image);

/* Resize `src` to size x size RGB with bilinear interpolation on half-pixel centres (the
 * arithmetic of tf.image.resize bilinear without antialiasing), rounded to the nearest uint8.
 * dst: size,size,3 (HWC). */
mt_status mt_image_resize(const mt_image *src, int size, mt_resize_mode mode, uint8_t *dst);

/* Keras' RandomRotation for one angle (radians; positive turns the picture counter-clockwise as
 * displayed): every output pixel reads the input at the inverse rotation of its centre about the
 * image centre ((width-1)/2, (height-1)/2), bilinearly, and points outside the input are reflected
 * back in (fill_mode "reflect": d c b a | a b c d | d c b a). src: height,width,3 uint8;
 * dst: height,width,3 float in pixel units (0..255), not rounded. The random draw of the angle is
 * the loader's (mt_shard_rotation). */
void mt_image_rotate(const uint8_t *src, int height, int width, double angle, float *dst);

/* "stretch" / "center-crop" / "pad" <-> mode (the --resize option of pack, predict, features). */
extern const mt_enum_names mt_resize_mode_names;
mt_status mt_resize_mode_parse(const char *text, mt_resize_mode *out);
const char *mt_resize_mode_name(mt_resize_mode mode);

/* ---- file -> stored pixels: the one preprocessing of mobiletune-pack, predict and features ----
 */

/* mode -> "scaled" / "tf" (mt_decode_mode above; parsing goes through mt_decode_mode_names) */
const char *mt_decode_mode_name(mt_decode_mode mode);

/* The options that decide the pixels (--size, --resize, --decode): the packer stores what these
 * give, so `predict` and `features` given the same ones see the same bytes. */
typedef struct mt_preprocess {
    int size; /* output side: size x size RGB */
    mt_resize_mode resize;
    mt_decode_mode decode;
} mt_preprocess;

/* Decode the image held in bytes[0..n) and resize it as `p` says into pixels (size,size,3 HWC,
 * uint8: the layout of a raw record's payload). `name` only appears in error messages. */
mt_status mt_image_preprocess(const void *bytes, size_t n, const char *name, const mt_preprocess *p,
                              uint8_t *pixels);
/* The same for the file at `path` (MT_ERR_IO when it cannot be read). */
mt_status mt_image_preprocess_file(const char *path, const mt_preprocess *p, uint8_t *pixels);

/* Encode RGB pixels (pixels: height,width,3) as a baseline JPEG of `quality` (1..100), 4:4:4.
 * *out_bytes is malloc'd (free with free()). */
mt_status mt_image_encode_jpeg(const uint8_t *pixels, int width, int height, int quality,
                               uint8_t **out_bytes, size_t *out_size);

#ifdef __cplusplus
}
#endif
#endif
