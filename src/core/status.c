/* The per-thread error message behind mt_fail() / mt_last_error(). */
#include "mobiletune/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ERROR_CAPACITY = 2048 };
static _Thread_local char error_message[ERROR_CAPACITY];

const char *mt_status_name(mt_status status) {
    switch (status) {
    case MT_OK: return "ok";
    case MT_END: return "end of stream";
    case MT_ERR_INVALID: return "invalid argument";
    case MT_ERR_IO: return "I/O error";
    case MT_ERR_FORMAT: return "bad data format";
    case MT_ERR_NOMEM: return "out of memory";
    case MT_ERR_LMDB: return "LMDB error";
    case MT_ERR_BACKEND: return "compute backend error";
    case MT_ERR_COMM: return "communication error";
    case MT_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

mt_status mt_fail(mt_status status, const char *file, int line, const char *format, ...) {
    size_t used = 0;
    const char *show_location = getenv("MT_ERROR_LOCATION");
    if (show_location && show_location[0] == '1') {
        const char *base = strrchr(file, '/');
        int n = snprintf(error_message, ERROR_CAPACITY, "%s:%d: ", base ? base + 1 : file, line);
        used = n > 0 && n < ERROR_CAPACITY ? (size_t)n : 0;
    }
    va_list args;
    va_start(args, format);
    vsnprintf(error_message + used, ERROR_CAPACITY - used, format, args);
    va_end(args);
    return status;
}

mt_status mt_error_context(mt_status status, const char *format, ...) {
    char previous[ERROR_CAPACITY];
    memcpy(previous, error_message, ERROR_CAPACITY);
    va_list args;
    va_start(args, format);
    int n = vsnprintf(error_message, ERROR_CAPACITY, format, args);
    va_end(args);
    if (n >= 0 && n < ERROR_CAPACITY && previous[0] != '\0') {
        /* a long chain of context is cut at the buffer's end, deliberately */
        int appended = snprintf(error_message + n, ERROR_CAPACITY - (size_t)n, ": %s", previous);
        (void)appended;
    }
    return status;
}

const char *mt_last_error(void) {
    return error_message;
}

void mt_clear_error(void) {
    error_message[0] = '\0';
}

void mt_assert_failed(const char *condition, const char *file, int line) {
    fprintf(stderr, "mobiletune: internal error: %s:%d: assertion '%s' failed\n", file, line,
            condition);
    abort();
}
