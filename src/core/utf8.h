/* Strict UTF-8 validation, the one copy: the dataset metadata record (src/data/meta.c) and the
 * checkpoints' tensor and metadata names (src/io/safetensors.c) both refuse what a JSON reader or
 * Python's str would refuse: overlong forms, surrogates (U+D800..U+DFFF) and code points above
 * U+10FFFF. Header-only so that the fuzz targets, which compile single parser sources, get it. */
#ifndef MT_CORE_UTF8_H
#define MT_CORE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the valid UTF-8 sequence at s[0..n) (1..4; n > 0), or 0 when it is invalid or
 * truncated. */
static inline size_t mt_utf8_sequence(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
        len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Whether s[0..n) is all valid UTF-8. */
static inline bool mt_utf8_valid(const char *text, size_t n) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < n) {
        size_t len = mt_utf8_sequence(s + i, n - i);
        if (len == 0) return false;
        i += len;
    }
    return true;
}

#endif
