/* Small helpers shared by the C tests: checks that report file:line and keep going, a skip with
 * a reason (exit code 77, CTest's SKIP_RETURN_CODE), temporary folders, and the shared-data path. */
#ifndef MT_TEST_UTIL_H
#define MT_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "mobiletune/status.h"

#define MT_TEST_SKIP_CODE 77

extern int mt_test_failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);              \
            mt_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            mt_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* A library call that must succeed; on failure print mt_last_error() and stop the test. */
#define CHECK_OK(call)                                                                             \
    do {                                                                                           \
        mt_status check_ok_status_ = (call);                                                       \
        if (check_ok_status_ != MT_OK) {                                                           \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,               \
                    mt_status_name(check_ok_status_), mt_last_error());                           \
            mt_test_failures++;                                                                    \
            return mt_test_finish();                                                               \
        }                                                                                          \
    } while (0)

/* A call that must succeed where CHECK_OK cannot return (in helpers that return nothing): on
 * failure print mt_last_error() and stop the test with exit code 1. */
#define MUST(call)                                                                                 \
    do {                                                                                           \
        mt_status must_status_ = (call);                                                           \
        if (must_status_ != MT_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,               \
                    mt_status_name(must_status_), mt_last_error());                                \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* |a - b| <= atol + rtol*|b| */
#define CHECK_CLOSE(a, b, atol, rtol) CHECK_MSG(mt_test_close((a), (b), (atol), (rtol)), \
    "%s = %.9g, %s = %.9g", #a, (double)(a), #b, (double)(b))
bool mt_test_close(double a, double b, double atol, double rtol);

/* Compare arrays; prints the worst element and returns false when any is out of tolerance. */
bool mt_test_arrays_close(const char *what, const float *got, const float *want, size_t count,
                          double atol, double rtol);

/* The tests' input numbers: one xorshift64 step of *state (seeded non-zero), then its top 53
 * bits as a double in [0, 1). Deterministic, so every run sees the same data. */
static inline double mt_test_xorshift_unit(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (double)(*state >> 11) / 9007199254740992.0;
}

/* Exit code for main(): 0 when every CHECK held, 1 otherwise (with a count). */
int mt_test_finish(void);

/* Print "SKIPPED: reason" and exit with the skip code. */
_Noreturn void mt_test_skip(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* ../shared (or $MT_SHARED_DIR) joined with `relative`, when it exists; NULL otherwise. The
 * returned string is static storage overwritten by the next call. */
const char *mt_test_shared_path(const char *relative);

/* "dir/name" in static storage: four buffers taken in turn, so up to four paths of one call
 * (a source and a destination, ...) stay valid together. */
const char *mt_test_path(const char *dir, const char *name);

/* A fresh temporary folder (removed by mt_test_remove_tree), path in static storage per call. */
char *mt_test_make_temp_dir(const char *tag);
void mt_test_remove_tree(const char *path);

#endif
