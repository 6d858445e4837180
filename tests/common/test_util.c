/* Implementation of the small test helpers in test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int mt_test_failures = 0;

bool mt_test_close(double a, double b, double atol, double rtol) {
    if (isnan(a) || isnan(b)) return false;
    return fabs(a - b) <= atol + rtol * fabs(b);
}

bool mt_test_arrays_close(const char *what, const float *got, const float *want, size_t count,
                          double atol, double rtol) {
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < count; i++) {
        double diff = fabs((double)got[i] - (double)want[i]);
        double allowed = atol + rtol * fabs((double)want[i]);
        double excess = isnan(got[i]) || isnan(want[i]) ? INFINITY : diff - allowed;
        if (excess > 0) bad++;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    if (bad > 0) {
        fprintf(stderr, "%s: %zu of %zu values out of tolerance (atol %g, rtol %g); worst at %zu: "
                "got %.9g, want %.9g\n", what, bad, count, atol, rtol, worst, got[worst],
                want[worst]);
        mt_test_failures++;
        return false;
    }
    return true;
}

int mt_test_finish(void) {
    if (mt_test_failures > 0) {
        fprintf(stderr, "FAILED: %d check(s)\n", mt_test_failures);
        return 1;
    }
    printf("PASSED\n");
    return 0;
}

void mt_test_skip(const char *format, ...) {
    va_list args;
    va_start(args, format);
    printf("SKIPPED: ");
    vprintf(format, args);
    printf("\n");
    va_end(args);
    fflush(stdout);
    exit(MT_TEST_SKIP_CODE);
}

const char *mt_test_shared_path(const char *relative) {
    static char path[4096];
    const char *root = getenv("MT_SHARED_DIR");
    if (!root || !*root) root = "../shared";
    snprintf(path, sizeof path, "%s/%s", root, relative);
    struct stat st;
    return stat(path, &st) == 0 ? path : NULL;
}

const char *mt_test_path(const char *dir, const char *name) {
    static char path[4][4200];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", dir, name);
    return p;
}

char *mt_test_make_temp_dir(const char *tag) {
    static char path[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/mt-test-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        exit(1);
    }
    return path;
}

void mt_test_remove_tree(const char *path) {
    char command[4200];
    snprintf(command, sizeof command, "rm -rf '%s'", path);
    if (system(command) != 0) fprintf(stderr, "warning: could not remove %s\n", path);
}
