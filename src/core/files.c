/* File-system helpers shared by every writer that publishes files by rename (see files.h). */
#include "mobiletune/files.h"

#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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

/* ---- real paths ----------------------------------------------------------------------------- */

mt_status mt_path_real(const char *path, char *out, size_t capacity) {
    char resolved[PATH_MAX];
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "empty path");
    if (realpath(path, resolved)) {
        if (strlen(resolved) + 1 > capacity)
            return MT_FAIL(MT_ERR_INVALID, "'%s': its real path is too long", path);
        strcpy(out, resolved);
        return MT_OK;
    }
    int error = errno;
    struct stat info;
    if (error != ENOENT)
        return MT_FAIL(MT_ERR_IO, "cannot resolve '%s': %s", path, strerror(error));
    if (lstat(path, &info) == 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "'%s' is a symlink to nothing: remove it or give another path", path);
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && path[start - 1] != '/')
        start--;
    const char *name = path + start;
    size_t name_length = n - start;
    if ((name_length == 1 && name[0] == '.') || (name_length == 2 && memcmp(name, "..", 2) == 0))
        return MT_FAIL(MT_ERR_INVALID, "cannot resolve '%s': a missing folder followed by '%.*s'",
                       path, (int)name_length, name);
    char parent[PATH_BYTES];
    MT_TRY(mt_path_parent(path, parent, sizeof parent));
    MT_TRY(mt_path_real(parent, out, capacity));
    size_t used = strlen(out);
    bool root = used == 1 && out[0] == '/';
    if (used + (root ? 0 : 1) + name_length + 1 > capacity)
        return MT_FAIL(MT_ERR_INVALID, "'%s': its real path is too long", path);
    if (!root) out[used++] = '/';
    memcpy(out + used, name, name_length);
    out[used + name_length] = '\0';
    return MT_OK;
}

bool mt_path_within(const char *inner, const char *outer) {
    size_t n = strlen(outer);
    if (n == 1 && outer[0] == '/') return inner[0] == '/';
    return strncmp(inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

/* ---- inputs ------------------------------------------------------------------------------------
 */

static const char *kind_name(mode_t mode) {
    if (S_ISDIR(mode)) return "a folder";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

static mt_status stat_error(const char *path, const char *what, int error) {
    if (error == ENOENT) return MT_FAIL(MT_ERR_IO, "%s '%s' does not exist", what, path);
    return MT_FAIL(MT_ERR_IO, "%s '%s': %s", what, path, strerror(error));
}

mt_status mt_file_check_regular(const char *path, const char *what) {
    struct stat info;
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "no %s given", what);
    if (stat(path, &info) != 0) return stat_error(path, what, errno);
    if (!S_ISREG(info.st_mode))
        return MT_FAIL(MT_ERR_IO, "%s '%s' is %s, not a regular file: give the file itself", what,
                       path, kind_name(info.st_mode));
    return MT_OK;
}

mt_status mt_folder_check(const char *path, const char *what) {
    struct stat info;
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "no %s given", what);
    if (stat(path, &info) != 0) return stat_error(path, what, errno);
    if (!S_ISDIR(info.st_mode))
        return MT_FAIL(MT_ERR_IO, "%s '%s' is %s, not a folder", what, path,
                       S_ISREG(info.st_mode) ? "a file" : kind_name(info.st_mode));
    return MT_OK;
}

mt_status mt_file_open_read(const char *path, const char *what, int *fd) {
    *fd = -1;
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "no %s given", what);
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f < 0) {
        int error = errno;
        if (error == EACCES)
            return MT_FAIL(MT_ERR_IO, "%s '%s' is not readable: permission denied", what, path);
        return stat_error(path, what, error);
    }
    struct stat info = {0};
    if (fstat(f, &info) != 0 || !S_ISREG(info.st_mode)) {
        mt_status status =
            MT_FAIL(MT_ERR_IO, "%s '%s' is %s, not a regular file: give the file itself", what,
                    path, kind_name(info.st_mode));
        close(f);
        return status;
    }
    int flags = fcntl(f, F_GETFL);
    if (flags >= 0) fcntl(f, F_SETFL, flags & ~O_NONBLOCK);
    *fd = f;
    return MT_OK;
}

/* ---- write errors ------------------------------------------------------------------------------
 */

int mt_write_errno(const char *path, int error) {
    if (error != EIO && error != 0) return error;
    char folder[PATH_BYTES];
    struct statvfs fs;
    const char *probe = path;
    if (statvfs(probe, &fs) != 0) {
        if (mt_path_parent(path, folder, sizeof folder) != MT_OK || statvfs(folder, &fs) != 0)
            return error;
    }
    /* A partial write leaves at most a few blocks free; 1 MiB keeps a busy disk's neighbours
     * (who free or take a little meanwhile) from hiding it. */
    unsigned long long available = (unsigned long long)fs.f_bavail * fs.f_frsize;
    return available < (1ull << 20) ? ENOSPC : error;
}
