/* File -> the pixels mobiletune-pack stores: decode (scaled or TensorFlow's full-size decode),
 * then the square resize. The packer, `predict` and `features` all call this, so the options
 * --size/--resize/--decode mean the same pixels in each (tests/image/test_preprocess.c checks a
 * packed photo against predict's path byte for byte). */
#include "mobiletune/image.h"

#include <string.h>

static const char *const decode_mode_names[] = {
    [MT_DECODE_MODE_SCALED] = "scaled", [MT_DECODE_MODE_TF] = "tf"};
const mt_enum_names mt_decode_mode_names = MT_ENUM_NAMES(decode_mode_names);

const char *mt_decode_mode_name(mt_decode_mode mode) {
    return mt_enum_name(&mt_decode_mode_names, (int)mode);
}

/* The scaled decode's hint is the output side: the DCT scale keeps both sides >= it, so the
 * resize only ever shrinks a little (docs/packing.md). */
static int decode_hint(const mt_preprocess *p) {
    return p->decode == MT_DECODE_MODE_TF ? MT_DECODE_HINT_TF : p->size;
}

static mt_status resize_and_free(mt_image *image, const mt_preprocess *p, uint8_t *pixels) {
    mt_status status = mt_image_resize(image, p->size, p->resize, pixels);
    mt_image_free(image);
    return status;
}

mt_status mt_image_preprocess(const void *bytes, size_t n, const char *name, const mt_preprocess *p,
                              uint8_t *pixels) {
    mt_image image;
    MT_TRY(mt_image_decode(bytes, n, name, decode_hint(p), &image));
    return resize_and_free(&image, p, pixels);
}

mt_status mt_image_preprocess_file(const char *path, const mt_preprocess *p, uint8_t *pixels) {
    mt_image image;
    MT_TRY(mt_image_decode_file(path, decode_hint(p), &image));
    return resize_and_free(&image, p, pixels);
}
