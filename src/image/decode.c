/* Decoding JPEG (TurboJPEG) and PNG (libpng) from memory to 8-bit RGB, with the EXIF orientation
 * applied (libexif). Every odd kind of input the packer meets (grayscale, CMYK, palette, 16-bit,
 * alpha, truncated or corrupt data) ends here as RGB pixels or as one readable error message that
 * the packer writes to its skip report. docs/packing.md states the conversions. */
#include "mobiletune/image.h"

#include "mobiletune/files.h"

#include <errno.h>
#include <libexif/exif-data.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

/* Images declaring more pixels than this are refused from their header, before any scaling or
 * allocation, rather than risking gigabytes and seconds per thread on a hostile header (a JPEG
 * claiming 20000x20000 cost 200 MB and 1.8 s when the limit applied after the DCT scaling).
 * One process-wide value: the packer sets it from --max-pixels before its threads start. */
static _Atomic uint64_t max_pixels = MT_IMAGE_DEFAULT_MAX_PIXELS;

mt_status mt_image_set_max_pixels(uint64_t pixels) {
    if (pixels == 0) return MT_FAIL(MT_ERR_INVALID, "the image pixel limit must be at least 1");
    max_pixels = pixels;
    return MT_OK;
}

uint64_t mt_image_max_pixels(void) {
    return max_pixels;
}

/* A failed TurboJPEG call: the message names the call and carries TurboJPEG's own text. */
#define TJ_FAIL(handle, call, name)                                                                \
    MT_FAIL(MT_ERR_FORMAT, "%s: corrupt JPEG (%s: %s)", (name), (call), tjGetErrorStr2(handle))

mt_image_format mt_image_detect(const void *bytes, size_t size) {
    const uint8_t *b = bytes;
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return MT_IMAGE_JPEG;
    if (size >= 8 && memcmp(b, png_magic, 8) == 0) return MT_IMAGE_PNG;
    return MT_IMAGE_UNKNOWN;
}

void mt_image_free(mt_image *image) {
    if (!image) return;
    free(image->pixels);
    image->pixels = NULL;
    image->width = image->height = 0;
}

/* ---- EXIF orientation ------------------------------------------------------------------------ */

/* The orientation tag (1..8) of an EXIF block that starts with "Exif\0\0"; 1 when absent or
 * unreadable, since a broken EXIF block must not cost the image. */
static int exif_orientation(const uint8_t *exif, size_t size) {
    if (!exif || size < 6 || size > 0xFFFFFFu) return 1;
    ExifData *data = exif_data_new();
    if (!data) return 1;
    /* Keep libexif from "repairing" the block: we only read one tag. */
    exif_data_unset_option(data, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION);
    exif_data_load_data(data, exif, (unsigned int)size);
    int orientation = 1;
    ExifEntry *entry = exif_content_get_entry(data->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
    if (entry && entry->format == EXIF_FORMAT_SHORT && entry->components >= 1 && entry->data &&
        entry->size >= 2) {
        int value = exif_get_short(entry->data, exif_data_get_byte_order(data));
        if (value >= 1 && value <= 8) orientation = value;
    }
    exif_data_unref(data);
    return orientation;
}

/* Apply EXIF orientation `o` to `image` in place (a new buffer for anything but 1). */
static mt_status apply_orientation(mt_image *image, int o, const char *name) {
    if (o == 1) return MT_OK;
    int w = image->width, h = image->height;
    int swap = o >= 5;
    int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *out = malloc((size_t)ow * oh * 3);
    if (!out) return MT_FAIL(MT_ERR_NOMEM, "%s: out of memory rotating %dx%d", name, w, h);
    const uint8_t *in = image->pixels;
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            /* 2 mirrored left-right, 3 rotated 180, 4 mirrored top-bottom, 5 transposed,
             * 6 needs 90 degrees clockwise, 7 transversed, 8 needs 90 counter-clockwise. */
            switch (o) {
            case 2:
                sx = w - 1 - x, sy = y;
                break;
            case 3:
                sx = w - 1 - x, sy = h - 1 - y;
                break;
            case 4:
                sx = x, sy = h - 1 - y;
                break;
            case 5:
                sx = y, sy = x;
                break;
            case 6:
                sx = y, sy = h - 1 - x;
                break;
            case 7:
                sx = w - 1 - y, sy = h - 1 - x;
                break;
            default:
                sx = w - 1 - y, sy = x;
                break;
            }
            memcpy(out + ((size_t)y * ow + x) * 3, in + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    free(image->pixels);
    image->pixels = out;
    image->width = ow;
    image->height = oh;
    return MT_OK;
}

/* ---- JPEG ------------------------------------------------------------------------------------ */

/* What the markers before the scan tell us that TurboJPEG does not: the EXIF block and whether
 * an Adobe APP14 marker is present (Photoshop's convention: CMYK stored inverted). */
typedef struct jpeg_markers {
    const uint8_t *exif;
    size_t exif_size;
    int adobe;
} jpeg_markers;

static jpeg_markers scan_jpeg_markers(const uint8_t *b, size_t size) {
    jpeg_markers m = {0};
    size_t pos = 2;
    while (pos + 4 <= size) {
        if (b[pos] != 0xFF) break;
        uint8_t marker = b[pos + 1];
        if (marker == 0xFF) { /* fill byte */
            pos++;
            continue;
        }
        if (marker == 0xDA || marker == 0xD9) break; /* start of scan / end of image */
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
            pos += 2;
            continue;
        }
        size_t length = ((size_t)b[pos + 2] << 8) | b[pos + 3];
        if (length < 2 || pos + 2 + length > size) break;
        const uint8_t *payload = b + pos + 4;
        size_t payload_size = length - 2;
        if (marker == 0xE1 && !m.exif && payload_size >= 6 && memcmp(payload, "Exif\0\0", 6) == 0) {
            m.exif = payload;
            m.exif_size = payload_size;
        } else if (marker == 0xEE && payload_size >= 5 && memcmp(payload, "Adobe", 5) == 0) {
            m.adobe = 1;
        }
        pos += 2 + length;
    }
    return m;
}

static int mul255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8; /* a*b/255 rounded, exact for 0..255 */
}

/* CMYK (4 bytes/pixel) to RGB in place-compatible order: R = (1-C)(1-K) etc.; with the Adobe
 * marker the stored values are already 255-C, 255-K. */
static void cmyk_to_rgb(const uint8_t *cmyk, uint8_t *rgb, size_t pixels, int inverted) {
    for (size_t i = 0; i < pixels; i++) {
        int c = cmyk[4 * i], m = cmyk[4 * i + 1], y = cmyk[4 * i + 2], k = cmyk[4 * i + 3];
        if (!inverted) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
        rgb[3 * i] = (uint8_t)mul255(c, k);
        rgb[3 * i + 1] = (uint8_t)mul255(m, k);
        rgb[3 * i + 2] = (uint8_t)mul255(y, k);
    }
}

/* True when a TurboJPEG warning means the data stopped early. */
static int is_truncation_warning(const char *message) {
    return strstr(message, "Premature end") || strstr(message, "premature end");
}

static mt_status decode_jpeg(const uint8_t *bytes, size_t size, const char *name, int hint,
                             mt_image *out) {
    int flags = hint == MT_DECODE_HINT_TF ? TJFLAG_FASTDCT : 0;
    if (hint < 0) hint = 0;
    if (size > (size_t)0xFFFFFFFFu) return MT_FAIL(MT_ERR_FORMAT, "%s: JPEG over 4 GiB", name);
    tjhandle tj = tjInitDecompress();
    if (!tj)
        return MT_FAIL(MT_ERR_NOMEM, "%s: tjInitDecompress failed: %s", name, tjGetErrorStr2(NULL));
    mt_status status = MT_OK;
    uint8_t *cmyk = NULL;
    /* TurboJPEG 2.1 can return success without setting these when the data ends inside the
     * header, so they start invalid. */
    int width = 0, height = 0, subsamp = -1, colorspace = -1;
    if (tjDecompressHeader3(tj, bytes, (unsigned long)size, &width, &height, &subsamp,
                            &colorspace) != 0) {
        status = TJ_FAIL(tj, "tjDecompressHeader3", name);
        goto done;
    }
    if (width <= 0 || height <= 0) {
        status = MT_FAIL(MT_ERR_FORMAT,
                         "%s: truncated or corrupt JPEG header (no valid image "
                         "size: %dx%d)",
                         name, width, height);
        goto done;
    }
    uint64_t limit = max_pixels;
    if ((uint64_t)width * (uint64_t)height > limit) {
        status =
            MT_FAIL(MT_ERR_FORMAT,
                    "%s: JPEG of %dx%d is too large: its header declares %llu pixels, the "
                    "limit is %llu (mobiletune-pack --max-pixels)",
                    name, width, height, (unsigned long long)width * (unsigned long long)height,
                    (unsigned long long)limit);
        goto done;
    }
    /* Powers of two only: the factors libjpeg's own scaled IDCT has always had (and Pillow's
     * draft() uses), so an independent decoder can reproduce the pixels exactly. */
    int scale = 1;
    if (hint > 0) {
        for (int s = 8; s > 1; s /= 2) {
            if ((long long)width >= (long long)s * hint &&
                (long long)height >= (long long)s * hint) {
                scale = s;
                break;
            }
        }
    }
    tjscalingfactor factor = {1, scale};
    int sw = TJSCALED(width, factor), sh = TJSCALED(height, factor);
    jpeg_markers markers = scan_jpeg_markers(bytes, size);
    int is_cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
    out->pixels = malloc((size_t)sw * sh * 3);
    if (is_cmyk) cmyk = malloc((size_t)sw * sh * 4);
    if (!out->pixels || (is_cmyk && !cmyk)) {
        status = MT_FAIL(MT_ERR_NOMEM, "%s: out of memory for %dx%d pixels", name, sw, sh);
        goto done;
    }
    int rc = tjDecompress2(tj, bytes, (unsigned long)size, is_cmyk ? cmyk : out->pixels, sw, 0, sh,
                           is_cmyk ? TJPF_CMYK : TJPF_RGB, flags);
    if (rc != 0) {
        const char *message = tjGetErrorStr2(tj);
        if (tjGetErrorCode(tj) != TJERR_WARNING) {
            status = TJ_FAIL(tj, "tjDecompress2", name);
            goto done;
        }
        /* A truncated JPEG "decodes" with the missing rows grey: that would train on garbage, so
         * it is an error. Other warnings (extraneous bytes, a bad marker after the image) leave
         * every pixel decoded and are accepted. */
        if (is_truncation_warning(message)) {
            status = MT_FAIL(MT_ERR_FORMAT, "%s: truncated JPEG (%s)", name, message);
            goto done;
        }
    }
    if (is_cmyk) cmyk_to_rgb(cmyk, out->pixels, (size_t)sw * sh, markers.adobe);
    out->width = sw;
    out->height = sh;
    status = apply_orientation(out, exif_orientation(markers.exif, markers.exif_size), name);
done:
    free(cmyk);
    tjDestroy(tj);
    if (status != MT_OK) mt_image_free(out);
    return status;
}

/* ---- PNG ------------------------------------------------------------------------------------- */

typedef struct png_source {
    const uint8_t *bytes;
    size_t size, pos;
    char message[300];
} png_source;

static void png_read_memory(png_structp png, png_bytep dst, size_t count) {
    png_source *src = png_get_io_ptr(png);
    if (count > src->size - src->pos) png_error(png, "truncated PNG: the data ends early");
    memcpy(dst, src->bytes + src->pos, count);
    src->pos += count;
}

static void png_on_error(png_structp png, png_const_charp message) {
    png_source *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", message);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp message) {
    (void)png, (void)message; /* warnings leave the pixels intact */
}

static mt_status decode_png(const uint8_t *bytes, size_t size, const char *name, mt_image *out) {
    /* IHDR is the first chunk by the PNG standard: its declared size is checked before libpng
     * reads on (png_read_info goes through every chunk before the pixels). */
    if (size >= 24 && memcmp(bytes + 12, "IHDR", 4) == 0) {
        uint64_t w =
            (uint64_t)bytes[16] << 24 | (uint64_t)bytes[17] << 16 | bytes[18] << 8 | bytes[19];
        uint64_t h =
            (uint64_t)bytes[20] << 24 | (uint64_t)bytes[21] << 16 | bytes[22] << 8 | bytes[23];
        if (w * h > max_pixels)
            return MT_FAIL(MT_ERR_FORMAT,
                           "%s: PNG of %llux%llu is too large: its header declares %llu pixels, "
                           "the limit is %llu (mobiletune-pack --max-pixels)",
                           name, (unsigned long long)w, (unsigned long long)h,
                           (unsigned long long)(w * h), (unsigned long long)max_pixels);
    }
    png_source src = {.bytes = bytes, .size = size};
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (!png) return MT_FAIL(MT_ERR_NOMEM, "%s: png_create_read_struct failed", name);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return MT_FAIL(MT_ERR_NOMEM, "%s: png_create_info_struct failed", name);
    }
    /* Written after setjmp, so volatile keeps them valid when libpng longjmps back. */
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        if (strncmp(src.message, "truncated", 9) == 0 || strncmp(src.message, "PNG of", 6) == 0)
            return MT_FAIL(MT_ERR_FORMAT, "%s: %s", name, src.message);
        return MT_FAIL(MT_ERR_FORMAT, "%s: corrupt PNG (%s)", name, src.message);
    }
    png_set_read_fn(png, &src, png_read_memory);
    png_set_user_limits(png, 65535, 65535);
    png_read_info(png, info);
    png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
    int color_type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if ((uint64_t)width * height > max_pixels) {
        char text[sizeof src.message];
        snprintf(text, sizeof text,
                 "PNG of %lux%lu is too large: its header declares %llu pixels, the limit is %llu "
                 "(mobiletune-pack --max-pixels)",
                 (unsigned long)width, (unsigned long)height, (unsigned long long)width * height,
                 (unsigned long long)max_pixels);
        png_error(png, text); /* the handler copies it before it jumps */
    }
    /* 16-bit keeps its high byte (what Pillow and TensorFlow do); palette and gray expand to RGB;
     * alpha and tRNS transparency are dropped, as tf.io.decode_image(channels=3) does. */
    if (depth == 16) png_set_strip_16(png);
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)width * 3 || png_get_channels(png, info) != 3)
        png_error(png, "unsupported PNG layout after conversion to RGB");
    pixels = malloc((size_t)width * height * 3);
    rows = malloc(sizeof(png_bytep) * height);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < height; y++)
        rows[y] = pixels + (size_t)y * width * 3;
    png_read_image(png, rows);
    png_read_end(png, info);
    int orientation = 1;
#ifdef PNG_eXIf_SUPPORTED
    png_bytep exif = NULL;
    png_uint_32 exif_size = 0;
    if (png_get_eXIf_1(png, info, &exif_size, &exif) && exif && exif_size > 0 &&
        exif_size < (1u << 20)) {
        /* libexif wants the JPEG APP1 framing ("Exif\0\0" + TIFF block). */
        uint8_t *framed = malloc(exif_size + 6);
        if (framed) {
            memcpy(framed, "Exif\0\0", 6);
            memcpy(framed + 6, exif, exif_size);
            orientation = exif_orientation(framed, exif_size + 6);
            free(framed);
        }
    }
#endif
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    out->pixels = pixels;
    out->width = (int)width;
    out->height = (int)height;
    mt_status status = apply_orientation(out, orientation, name);
    if (status != MT_OK) mt_image_free(out);
    return status;
}

/* ---- entry points ---------------------------------------------------------------------------- */

static void describe_start(const uint8_t *b, size_t size, char *text, size_t capacity) {
    size_t used = 0;
    for (size_t i = 0; i < size && i < 4 && used + 4 < capacity; i++)
        used += (size_t)snprintf(text + used, capacity - used, "%s%02x", i ? " " : "", b[i]);
}

mt_status mt_image_decode(const void *bytes, size_t size, const char *name, int min_side_hint,
                          mt_image *out) {
    *out = (mt_image){0};
    if (!name) name = "(image)";
    if (size == 0) return MT_FAIL(MT_ERR_FORMAT, "%s: empty file (0 bytes)", name);
    switch (mt_image_detect(bytes, size)) {
    case MT_IMAGE_JPEG:
        return decode_jpeg(bytes, size, name, min_side_hint, out);
    case MT_IMAGE_PNG:
        return decode_png(bytes, size, name, out);
    case MT_IMAGE_UNKNOWN:
        break;
    }
    char start[32] = "";
    describe_start(bytes, size, start, sizeof start);
    return MT_FAIL(MT_ERR_FORMAT, "%s: not a JPEG or PNG (starts with bytes %s)", name, start);
}

mt_status mt_image_decode_file(const char *path, int min_side_hint, mt_image *out) {
    *out = (mt_image){0};
    int fd;
    MT_TRY(mt_file_open_read(path, "image", &fd));
    FILE *file = fdopen(fd, "rb");
    struct stat st;
    if (!file || fstat(fd, &st) != 0) {
        mt_status status = MT_FAIL(MT_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
        if (file)
            fclose(file);
        else
            close(fd);
        return status;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *bytes = malloc(size ? size : 1);
    if (!bytes) {
        fclose(file);
        return MT_FAIL(MT_ERR_NOMEM, "%s: out of memory for %zu bytes", path, size);
    }
    size_t got = fread(bytes, 1, size, file);
    int read_error = ferror(file);
    fclose(file);
    if (read_error || got != size) {
        free(bytes);
        return MT_FAIL(MT_ERR_IO, "%s: read error (%zu of %zu bytes)", path, got, size);
    }
    mt_status status = mt_image_decode(bytes, size, path, min_side_hint, out);
    free(bytes);
    return status;
}

mt_status mt_image_encode_jpeg(const uint8_t *pixels, int width, int height, int quality,
                               uint8_t **out_bytes, size_t *out_size) {
    *out_bytes = NULL;
    *out_size = 0;
    if (width <= 0 || height <= 0 || quality < 1 || quality > 100)
        return MT_FAIL(MT_ERR_INVALID,
                       "mt_image_encode_jpeg: bad size %dx%d or quality %d "
                       "(quality must be 1..100)",
                       width, height, quality);
    unsigned long capacity = tjBufSize(width, height, TJSAMP_444);
    uint8_t *buffer = malloc(capacity);
    if (!buffer) return MT_FAIL(MT_ERR_NOMEM, "out of memory for a %lu-byte JPEG", capacity);
    tjhandle tj = tjInitCompress();
    if (!tj) {
        free(buffer);
        return MT_FAIL(MT_ERR_NOMEM, "tjInitCompress failed: %s", tjGetErrorStr2(NULL));
    }
    unsigned long size = capacity;
    unsigned char *dst = buffer;
    if (tjCompress2(tj, pixels, width, 0, height, TJPF_RGB, &dst, &size, TJSAMP_444, quality,
                    TJFLAG_NOREALLOC) != 0) {
        mt_status status = MT_FAIL(MT_ERR_BACKEND, "tjCompress2 of %dx%d failed: %s", width, height,
                                   tjGetErrorStr2(tj));
        tjDestroy(tj);
        free(buffer);
        return status;
    }
    tjDestroy(tj);
    *out_bytes = buffer;
    *out_size = size;
    return MT_OK;
}
