/* File-system helpers for the writers that must not lose data on a crash (the packer, checkpoints,
 * Keras exports, the metrics logs): each writes a temporary, syncs it, renames it into place and
 * then syncs the folder, so the rename itself is durable. */
#ifndef MOBILETUNE_FILES_H
#define MOBILETUNE_FILES_H

#include <stdbool.h>
#include <stddef.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The folder that holds `path`, into `folder` (`capacity` bytes): "." for a bare name, "/" for an
 * entry of the root; trailing slashes of `path` are ignored. MT_ERR_INVALID when it does not fit.
 */
mt_status mt_path_parent(const char *path, char *folder, size_t capacity);

/* Create a folder and its missing parents (mkdir -p); a folder that exists is fine, anything else
 * in its place is an error. */
mt_status mt_make_dirs(const char *path);

/* fsync a file or a folder by path. A folder on a file system that cannot fsync folders (EINVAL,
 * ENOTSUP) passes: renames are still atomic there. */
mt_status mt_sync_path(const char *path);

/* fsync the folder that holds `path`: after a rename into it, what makes the rename durable. */
mt_status mt_sync_parent(const char *path);

/* The absolute path of `path` with every symlink resolved, also when `path` does not exist yet:
 * the real path of its deepest existing folder followed by the missing names as written. A
 * missing part holding "." or "..", or a dangling symlink, is MT_ERR_INVALID (it cannot be
 * resolved without guessing). What the packer compares to know what it may replace. */
mt_status mt_path_real(const char *path, char *out, size_t capacity);

/* True when `inner` (a real path) is `outer` or lies inside it. */
bool mt_path_within(const char *inner, const char *outer);

/* ---- inputs ---------------------------------------------------------------------------------
 * Every file a command reads is checked before it is opened: open() of a FIFO waits for a writer
 * and read() of a character device never ends, so either would hang the run without a word.
 * `what` names the input in the message, e.g. "--config file", "image", "list file". */

/* MT_ERR_IO naming `path` and `what` unless it is a regular file (symlinks followed). */
mt_status mt_file_check_regular(const char *path, const char *what);

/* The same for a folder where one is expected. */
mt_status mt_folder_check(const char *path, const char *what);

/* Open `path` read-only (O_CLOEXEC) as a regular file: opened with O_NONBLOCK and checked with
 * fstat() before the flag is cleared, so no FIFO can block even when it replaces the file after a
 * check by path. *fd is -1 on failure. */
mt_status mt_file_open_read(const char *path, const char *what, int *fd);

/* ---- write errors -----------------------------------------------------------------------------
 */

/* The errno a failed write to `path` should be reported with. A write that stops part way
 * because the disk filled up comes back from some libraries (LMDB's page flush) as EIO; when the
 * file system holding `path` has (almost) nothing left, that is ENOSPC. Other errors pass. */
int mt_write_errno(const char *path, int error);

#ifdef __cplusplus
}
#endif

#endif
