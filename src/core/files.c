/* File-system helpers shared by every writer that publishes files by rename (see files.h). */
#include "mobiletune/files.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Linux's PATH_MAX: longer paths cannot be opened anyway. */
enum { PATH_BYTES = 4096 };

mt_status mt_path_parent(const char *path, char *folder, size_t capacity) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t end = n;
    while (end > 0 && path[end - 1] != '/')
        end--;
    const char *parent = path;
    if (end == 0) {
        parent = ".", end = 1;
    } else {
        while (end > 1 && path[end - 1] == '/')
            end--; /* "a//b": the folder is "a"; "/b": it is "/" */
    }
    if (end + 1 > capacity)
        return MT_FAIL(MT_ERR_INVALID, "the folder of '%.64s...' is longer than %zu bytes", path,
                       capacity - 1);
    memcpy(folder, parent, end);
    folder[end] = '\0';
    return MT_OK;
}

mt_status mt_make_dirs(const char *path) {
    char buffer[PATH_BYTES];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buffer)
        return MT_FAIL(MT_ERR_INVALID, "folder path '%.64s...' is empty or too long", path);
    memcpy(buffer, path, len + 1);
    for (char *p = buffer + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buffer, 0777) != 0 && errno != EEXIST) /* the umask decides */
                return MT_FAIL(MT_ERR_IO, "cannot create folder '%s': %s", buffer, strerror(errno));
            *p = saved;
            if (saved == '\0') break;
        }
    }
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISDIR(info.st_mode))
        return MT_FAIL(MT_ERR_IO, "'%s' exists but is not a folder", path);
    return MT_OK;
}

mt_status mt_sync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return MT_FAIL(MT_ERR_IO, "cannot open '%s' to sync it: %s", path, strerror(errno));
    struct stat info;
    bool folder = fstat(fd, &info) == 0 && S_ISDIR(info.st_mode);
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc != 0 && !(folder && (saved == EINVAL || saved == ENOTSUP)))
        return MT_FAIL(MT_ERR_IO, "fsync of '%s' failed: %s", path, strerror(saved));
    return MT_OK;
}

mt_status mt_sync_parent(const char *path) {
    char folder[PATH_BYTES];
    MT_TRY(mt_path_parent(path, folder, sizeof folder));
    return mt_sync_path(folder);
}
