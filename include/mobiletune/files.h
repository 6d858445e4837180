/* File-system helpers for the writers that must not lose data on a crash (the packer, checkpoints,
 * Keras exports, the metrics logs): each writes a temporary, syncs it, renames it into place and
 * then syncs the folder, so the rename itself is durable. */
#ifndef MOBILETUNE_FILES_H
#define MOBILETUNE_FILES_H

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

#ifdef __cplusplus
}
#endif

#endif
