/* Status codes and the per-thread error message of the mobiletune library.
 *
 * Library functions return an mt_status and never exit: the programs decide what to do with a
 * failure (print mt_last_error(), MPI_Abort under MPI, exit). A failing function records one
 * readable message naming the file, the key or the call that failed and, where there is one, the
 * fix; callers up the stack may prepend their context with mt_error_context(). */
#ifndef MOBILETUNE_STATUS_H
#define MOBILETUNE_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mt_status {
    MT_OK = 0,
    MT_END,          /* not an error: the end of a stream (an epoch, a file list) */
    MT_ERR_INVALID,  /* a bad argument, option or input value */
    MT_ERR_IO,       /* the file system said no */
    MT_ERR_FORMAT,   /* data that is corrupt, truncated or of an unsupported kind */
    MT_ERR_NOMEM,    /* an allocation failed */
    MT_ERR_LMDB,     /* LMDB returned an error */
    MT_ERR_BACKEND,  /* oneDNN, CUDA or cuDNN returned an error */
    MT_ERR_COMM,     /* MPI or NCCL returned an error, or a peer rank failed */
    MT_ERR_INTERNAL, /* a broken invariant: a bug in mobiletune */
} mt_status;

/* "invalid argument", "I/O error", ... for a status. */
const char *mt_status_name(mt_status status);

/* Record a message for this thread and return `status`, so a failure is one statement:
 *     return MT_FAIL(MT_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
 * The message is prefixed with "file:line: " only in debug builds' verbose mode
 * (MT_ERROR_LOCATION=1 in the environment), to keep user-facing errors short. */
mt_status mt_fail(mt_status status, const char *file, int line, const char *format, ...)
    __attribute__((format(printf, 4, 5)));
#define MT_FAIL(status, ...) mt_fail((status), __FILE__, __LINE__, __VA_ARGS__)

/* Prepend context to this thread's message ("packing cats/1.jpg: <message>") and return status. */
mt_status mt_error_context(mt_status status, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The last message recorded on this thread ("" when none). */
const char *mt_last_error(void);
void mt_clear_error(void);

/* Propagate a failure unchanged. */
#define MT_TRY(expr)                                                                               \
    do {                                                                                           \
        mt_status mt_try_status_ = (expr);                                                         \
        if (mt_try_status_ != MT_OK) return mt_try_status_;                                        \
    } while (0)

/* Abort on a broken invariant: for bugs only, never for bad input. */
#define MT_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) mt_assert_failed(#cond, __FILE__, __LINE__);                                  \
    } while (0)
#ifdef __cplusplus /* C++ (nvcc, the kernel emulation) spells _Noreturn its own way */
[[noreturn]] void mt_assert_failed(const char *condition, const char *file, int line);
#else
_Noreturn void mt_assert_failed(const char *condition, const char *file, int line);
#endif

#ifdef __cplusplus
}
#endif
#endif
