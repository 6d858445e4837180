/* The fuzz targets whose readers take a path (the checkpoint reader, libhdf5, which resolves the
 * real path of what it opens) get each input as one temporary file per process, rewritten for
 * every input and unlinked at exit. Included by those targets only. */
#ifndef MT_FUZZ_TEMP_FILE_H
#define MT_FUZZ_TEMP_FILE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char fuzz_temp_path[64];

static void fuzz_temp_remove(void) {
    if (fuzz_temp_path[0]) unlink(fuzz_temp_path);
}

/* A harness failure (not a finding): say so and abort, as the targets' own checks do. */
static void fuzz_temp_fail(const char *what) {
    fprintf(stderr, "fuzz harness: %s (%s)\n", what, fuzz_temp_path);
    abort();
}

/* Writes the input to the process's temporary file, named `prefix`-XXXXXX under $TMPDIR (or /tmp)
 * on first use, and returns its path. */
static const char *fuzz_temp_write(const char *prefix, const uint8_t *data, size_t size) {
    if (!fuzz_temp_path[0]) {
        const char *dir = getenv("TMPDIR");
        snprintf(fuzz_temp_path, sizeof fuzz_temp_path, "%s/%s-XXXXXX", dir && *dir ? dir : "/tmp",
                 prefix);
        int made = mkstemp(fuzz_temp_path);
        if (made < 0) fuzz_temp_fail("cannot create a temporary file");
        close(made);
        atexit(fuzz_temp_remove);
    }
    int fd = open(fuzz_temp_path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) fuzz_temp_fail("cannot rewrite the temporary file");
    size_t written = 0;
    while (written < size) {
        ssize_t n = write(fd, data + written, size - written);
        if (n <= 0) fuzz_temp_fail("cannot write the temporary file");
        written += (size_t)n;
    }
    close(fd);
    return fuzz_temp_path;
}

#endif
