/* The file-system helpers behind every publish-by-rename writer: the parent of a path in each
 * spelling, mkdir -p (and a file in the way), fsync of files and folders, and errors that name
 * the path. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mobiletune/files.h"
#include "test_util.h"

static void expect_parent(const char *path, const char *want) {
    char folder[64];
    CHECK(mt_path_parent(path, folder, sizeof folder) == MT_OK);
    CHECK_MSG(strcmp(folder, want) == 0, "parent of '%s' is '%s', want '%s'", path, folder, want);
}

int main(void) {
    expect_parent("a/b", "a");
    expect_parent("a/b/c.txt", "a/b");
    expect_parent("b", ".");
    expect_parent("/b", "/");
    expect_parent("/", "/");
    expect_parent("a/b/", "a");
    expect_parent("a//b", "a");
    expect_parent("./b", ".");
    char small[4];
    CHECK(mt_path_parent("abcd/e", small, sizeof small) == MT_ERR_INVALID);
    CHECK(mt_path_parent("abc/e", small, sizeof small) == MT_OK && strcmp(small, "abc") == 0);

    char root[] = "/tmp/mt-files-XXXXXX";
    CHECK(mkdtemp(root) != NULL);
    char deep[256], file[256];
    snprintf(deep, sizeof deep, "%s/x/y/z", root);
    CHECK(mt_make_dirs(deep) == MT_OK);
    struct stat info;
    CHECK(stat(deep, &info) == 0 && S_ISDIR(info.st_mode));
    CHECK(mt_make_dirs(deep) == MT_OK); /* already there */
    snprintf(file, sizeof file, "%s/x/y/f", root);
    FILE *f = fopen(file, "w");
    CHECK(f && fputs("data", f) >= 0 && fclose(f) == 0);
    CHECK(mt_sync_path(file) == MT_OK);
    CHECK(mt_sync_path(deep) == MT_OK);
    CHECK(mt_sync_parent(file) == MT_OK);
    /* a file where a folder should go */
    char through[300];
    snprintf(through, sizeof through, "%s/g", file);
    CHECK(mt_make_dirs(file) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "not a folder"), "%s", mt_last_error());
    CHECK(mt_make_dirs(through) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), file), "%s", mt_last_error());
    /* a missing path is an I/O error that names it */
    snprintf(through, sizeof through, "%s/missing", root);
    CHECK(mt_sync_path(through) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), through), "%s", mt_last_error());

    /* Inputs: a regular file passes; a FIFO, a folder and a missing path are refused by name
     * without blocking (a FIFO with no writer would hang open() forever). */
    int fd = -1;
    CHECK(mt_file_check_regular(file, "list file") == MT_OK);
    CHECK(mt_file_open_read(file, "list file", &fd) == MT_OK && fd >= 0);
    char data[8] = {0};
    CHECK(fd >= 0 && read(fd, data, sizeof data) == 4 && memcmp(data, "data", 4) == 0);
    if (fd >= 0) close(fd);
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", root);
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(mt_file_check_regular(fifo, "--config file") == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "FIFO") && strstr(mt_last_error(), fifo) &&
                  strstr(mt_last_error(), "--config file"),
              "%s", mt_last_error());
    CHECK(mt_file_open_read(fifo, "image", &fd) == MT_ERR_IO && fd == -1);
    CHECK_MSG(strstr(mt_last_error(), "FIFO"), "%s", mt_last_error());
    CHECK(mt_file_check_regular(deep, "checkpoint") == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "a folder"), "%s", mt_last_error());
    CHECK(mt_file_check_regular(through, "checkpoint") == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "does not exist"), "%s", mt_last_error());
    CHECK(mt_folder_check(deep, "dataset") == MT_OK);
    CHECK(mt_folder_check(fifo, "dataset") == MT_ERR_IO);
    unlink(fifo);
    /* Real paths, also of paths that do not exist yet: what the packer compares OUT with. */
    char real[4096], want[4096], link[300];
    char *root_real = realpath(root, NULL);
    CHECK(mt_path_real(deep, real, sizeof real) == MT_OK);
    snprintf(want, sizeof want, "%s/x/y/z", root_real);
    CHECK_MSG(strcmp(real, want) == 0, "%s vs %s", real, want);
    snprintf(through, sizeof through, "%s/x/../x/y/new/newer/", root);
    snprintf(want, sizeof want, "%s/x/y/new/newer", root_real);
    CHECK(mt_path_real(through, real, sizeof real) == MT_OK);
    CHECK_MSG(strcmp(real, want) == 0, "%s vs %s", real, want);
    snprintf(link, sizeof link, "%s/link", root);
    CHECK(symlink(deep, link) == 0);
    snprintf(through, sizeof through, "%s/link/out", root);
    snprintf(want, sizeof want, "%s/x/y/z/out", root_real);
    CHECK(mt_path_real(through, real, sizeof real) == MT_OK);
    CHECK_MSG(strcmp(real, want) == 0, "a symlinked parent: %s vs %s", real, want);
    snprintf(through, sizeof through, "%s/missing/..", root);
    CHECK(mt_path_real(through, real, sizeof real) == MT_ERR_INVALID);
    unlink(link);
    CHECK(symlink("/nonexistent/target", link) == 0);
    CHECK(mt_path_real(link, real, sizeof real) == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "symlink to nothing"), "%s", mt_last_error());
    unlink(link);
    free(root_real);
    CHECK(mt_path_within("/a/b", "/a") && mt_path_within("/a", "/a") && mt_path_within("/a", "/"));
    CHECK(!mt_path_within("/ab", "/a") && !mt_path_within("/a", "/a/b"));
    /* A write error: EIO on a file system with room stays EIO; other errors pass unchanged. */
    CHECK(mt_write_errno(file, EACCES) == EACCES);
    CHECK(mt_write_errno(file, EIO) == EIO); /* /tmp has more than 1 MiB free */

    unlink(file);
    for (int depth = 0; depth < 3; depth++) {
        rmdir(deep);
        *strrchr(deep, '/') = '\0';
    }
    rmdir(root);
    return mt_test_finish();
}
