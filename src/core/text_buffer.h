/* A growable NUL-terminated text buffer for code that formats a whole text (dataset metadata,
 * checkpoint JSON headers, INI files) piece by piece: a failed allocation or format only sets
 * `failed`, so the caller appends without checking each piece and checks once at the end. */
#ifndef MT_CORE_TEXT_BUFFER_H
#define MT_CORE_TEXT_BUFFER_H

#include <stdbool.h>
#include <stddef.h>

/* Start from {0}. `data` is NULL until the first append, then always NUL-terminated after
 * `size` bytes; once `failed` is set every later append does nothing. */
typedef struct mt_text_buffer {
    char *data;
    size_t size, capacity;
    bool failed;
} mt_text_buffer;

/* Appends n bytes (n may be 0). */
void mt_text_buffer_append(mt_text_buffer *b, const void *bytes, size_t n);

/* Appends a NUL-terminated string, without its NUL. */
void mt_text_buffer_append_string(mt_text_buffer *b, const char *s);

void mt_text_buffer_printf(mt_text_buffer *b, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The text for the caller to free() (never NULL, "" when nothing was appended) and its length in
 * *size (may be NULL); NULL when `failed`. Either way the buffer is left empty ({0}). */
char *mt_text_buffer_take(mt_text_buffer *b, size_t *size);

/* Frees the text and leaves the buffer empty ({0}); for error paths that discard it. */
void mt_text_buffer_free(mt_text_buffer *b);

#endif
