/* The growable text buffer (text_buffer.h): capacity doubles, so building a text of n bytes
 * costs O(n) however small the pieces. */
#include "core/text_buffer.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { INITIAL_CAPACITY = 256 };

/* Room for `extra` more bytes and the terminating NUL; false (and `failed`) if there is none. */
static bool reserve(mt_text_buffer *b, size_t extra) {
    if (b->failed) return false;
    if (extra >= SIZE_MAX - b->size) {
        b->failed = true;
        return false;
    }
    size_t needed = b->size + extra + 1;
    if (b->data && needed <= b->capacity) return true;
    size_t capacity = b->capacity ? b->capacity : INITIAL_CAPACITY;
    while (capacity < needed)
        capacity = capacity > SIZE_MAX / 2 ? needed : capacity * 2;
    char *grown = realloc(b->data, capacity);
    if (!grown) {
        b->failed = true;
        return false;
    }
    b->data = grown;
    b->capacity = capacity;
    return true;
}

void mt_text_buffer_append(mt_text_buffer *b, const void *bytes, size_t n) {
    if (!reserve(b, n)) return;
    if (n) memcpy(b->data + b->size, bytes, n);
    b->size += n;
    b->data[b->size] = '\0';
}

void mt_text_buffer_append_string(mt_text_buffer *b, const char *s) {
    mt_text_buffer_append(b, s, strlen(s));
}

void mt_text_buffer_printf(mt_text_buffer *b, const char *format, ...) {
    if (b->failed) return;
    /* Format into the room there is; only when that is too short, grow and format again. */
    size_t room = b->data ? b->capacity - b->size : 0;
    va_list args;
    va_start(args, format);
    int n = vsnprintf(b->data ? b->data + b->size : NULL, room, format, args);
    va_end(args);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n >= room) {
        if (!reserve(b, (size_t)n)) return;
        va_start(args, format);
        n = vsnprintf(b->data + b->size, b->capacity - b->size, format, args);
        va_end(args);
        if (n < 0) {
            b->failed = true;
            return;
        }
    }
    b->size += (size_t)n;
}

char *mt_text_buffer_take(mt_text_buffer *b, size_t *size) {
    if (!b->data && reserve(b, 0)) b->data[0] = '\0';
    char *text = b->failed ? NULL : b->data;
    if (!text) free(b->data);
    if (size) *size = text ? b->size : 0;
    *b = (mt_text_buffer){0};
    return text;
}

void mt_text_buffer_free(mt_text_buffer *b) {
    free(b->data);
    *b = (mt_text_buffer){0};
}
