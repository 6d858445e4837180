/* safetensors checkpoints, the file: the atomic write (temporary file, fsync, rename, fsync of
 * the folder; MT_CHECKPOINT_TEST_FAIL_AT / _KILL_AT inject a failure or a crash after that many
 * bytes for the tests) and the validating read (the whole file, header checked by
 * safetensors_header.c, then every tensor's crc32 entry against its bytes). */
#include "io/safetensors_internal.h"
#include "mobiletune/files.h"

#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Data order: 8-byte types, then 4, then 1, so that every tensor is aligned to its element size
 * in the file (the format forbids gaps; this is also what the safetensors library does). */
static int data_order(const mt_checkpoint *checkpoint, int *order) {
    int n = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < checkpoint->count; i++)
            if (mt_checkpoint_dtype_size(checkpoint->tensors[i].dtype) == size) order[n++] = i;
    return n;
}

/* ---- the atomic write ----------------------------------------------------------------------- */

typedef struct writer {
    int fd;
    const char *path; /* the temporary file, for messages */
    uint64_t written, fail_at, kill_at;
} writer;

static uint64_t env_limit(const char *name) {
    const char *text = getenv(name);
    if (!text || !*text) return UINT64_MAX;
    return strtoull(text, NULL, 10);
}

static mt_status write_all(writer *w, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        size_t chunk = n < (1u << 20) ? n : (1u << 20);
        uint64_t limit = w->fail_at < w->kill_at ? w->fail_at : w->kill_at;
        if (w->written + chunk > limit) chunk = (size_t)(limit - w->written);
        if (chunk == 0) {
            if (w->written >= w->kill_at) raise(SIGKILL);
            return MT_FAIL(MT_ERR_IO,
                           "writing '%s': failure injected after %llu bytes "
                           "(MT_CHECKPOINT_TEST_FAIL_AT)",
                           w->path, (unsigned long long)w->written);
        }
        ssize_t done = write(w->fd, p, chunk);
        if (done < 0) {
            if (errno == EINTR) continue;
            return MT_FAIL(MT_ERR_IO, "writing '%s': %s", w->path,
                           strerror(mt_write_errno(w->path, errno)));
        }
        p += done;
        n -= (size_t)done;
        w->written += (uint64_t)done;
    }
    return MT_OK;
}

static mt_status write_file(const mt_checkpoint *checkpoint, const int *order, const char *header,
                            size_t header_size, writer *w) {
    uint64_t length = header_size;
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(length >> (8 * i));
    MT_TRY(write_all(w, prefix, 8));
    MT_TRY(write_all(w, header, header_size));
    for (int k = 0; k < checkpoint->count; k++) {
        const mt_checkpoint_tensor *t = &checkpoint->tensors[order[k]];
        MT_TRY(write_all(w, t->data, t->bytes));
    }
    if (fsync(w->fd) != 0)
        return MT_FAIL(MT_ERR_IO, "fsync '%s': %s", w->path,
                       strerror(mt_write_errno(w->path, errno)));
    return MT_OK;
}

mt_status mt_checkpoint_write(const mt_checkpoint *checkpoint, const char *path) {
    int *order = malloc(((size_t)checkpoint->count + 1) * sizeof(int));
    if (!order) return MT_FAIL(MT_ERR_NOMEM, "checkpoint: out of memory");
    data_order(checkpoint, order);
    char *header = NULL;
    size_t header_size = 0;
    mt_status status = mt_safetensors_header_build(checkpoint, order, &header, &header_size);
    if (status != MT_OK) {
        free(order);
        return mt_error_context(status, "writing checkpoint '%s'", path);
    }
    char temp[4200];
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
    writer w = {.fd = -1,
                .path = temp,
                .fail_at = env_limit("MT_CHECKPOINT_TEST_FAIL_AT"),
                .kill_at = env_limit("MT_CHECKPOINT_TEST_KILL_AT")};
    w.fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        status = MT_FAIL(MT_ERR_IO, "cannot create checkpoint '%s': %s", temp,
                         strerror(mt_write_errno(temp, errno)));
    } else {
        status = write_file(checkpoint, order, header, header_size, &w);
        if (close(w.fd) != 0 && status == MT_OK)
            status =
                MT_FAIL(MT_ERR_IO, "closing '%s': %s", temp, strerror(mt_write_errno(temp, errno)));
        if (status == MT_OK && rename(temp, path) != 0)
            status = MT_FAIL(MT_ERR_IO, "renaming '%s' to '%s': %s", temp, path, strerror(errno));
        if (status != MT_OK)
            unlink(temp);
        else
            status = mt_sync_parent(path);
    }
    free(order);
    free(header);
    return status;
}

/* ---- the validating read ----------------------------------------------------------------- */

static mt_status read_exact(int fd, void *data, size_t n, uint64_t offset, const char *path) {
    char *p = data;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            return MT_FAIL(MT_ERR_IO, "reading checkpoint '%s': %s", path, strerror(errno));
        if (got == 0) return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s' is truncated", path);
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
    }
    return MT_OK;
}

/* Check every "crc32:<name>" entry against its tensor's bytes and take it out of the metadata
 * list (it describes the file, not the run). A file with checksums must have one per tensor; a
 * file without any (written by another tool) is read as it is, and `mobiletune verify` says so.
 */
static mt_status verify_checksums(mt_checkpoint *checkpoint) {
    const char *path = checkpoint->path;
    int kept = 0, found = 0;
    mt_status status = MT_OK;
    for (int i = 0; i < checkpoint->meta_count; i++) {
        char *key = checkpoint->meta_keys[i], *value = checkpoint->meta_values[i];
        if (strncmp(key, MT_SAFETENSORS_CRC_PREFIX, MT_SAFETENSORS_CRC_PREFIX_LENGTH) != 0) {
            checkpoint->meta_keys[kept] = key;
            checkpoint->meta_values[kept++] = value;
            continue;
        }
        const char *name = key + MT_SAFETENSORS_CRC_PREFIX_LENGTH;
        const mt_checkpoint_tensor *t = mt_checkpoint_find(checkpoint, name);
        char *end = NULL;
        unsigned long stored = strtoul(value, &end, 16);
        if (status != MT_OK) {
        } else if (!t) {
            status = MT_FAIL(MT_ERR_FORMAT,
                             "checkpoint '%s': checksum entry '%s' names no tensor "
                             "(a damaged header)",
                             path, key);
        } else if (strlen(value) != 8 || *end != '\0' || value[0] == '-' || value[0] == '+' ||
                   value[0] == ' ') {
            status = MT_FAIL(MT_ERR_FORMAT,
                             "checkpoint '%s': checksum of tensor '%s' is '%s', not "
                             "8 hex digits (a damaged header)",
                             path, name, value);
        } else {
            uint32_t computed = crc32_gzip_refl(0, t->data, t->bytes);
            if (computed != (uint32_t)stored)
                status = MT_FAIL(MT_ERR_FORMAT,
                                 "checkpoint '%s': tensor '%s' does not match its "
                                 "checksum (crc32 %s stored, %08x computed): the file is damaged; "
                                 "use another checkpoint (e.g. best.safetensors)",
                                 path, name, value, (unsigned)computed);
            found++;
        }
        free(key);
        free(value);
    }
    checkpoint->meta_count = kept;
    if (status == MT_OK && found > 0 && found != checkpoint->count)
        status = MT_FAIL(MT_ERR_FORMAT,
                         "checkpoint '%s': %d of %d tensors have a checksum entry "
                         "(a damaged header)",
                         path, found, checkpoint->count);
    checkpoint->checksums_verified = found;
    return status;
}

static mt_status read_into(int fd, const char *path, mt_checkpoint *checkpoint) {
    struct stat info;
    if (fstat(fd, &info) != 0)
        return MT_FAIL(MT_ERR_IO, "stat checkpoint '%s': %s", path, strerror(errno));
    if (!S_ISREG(info.st_mode))
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s' is not a regular file", path);
    uint64_t size = (uint64_t)info.st_size;
    if (size < 8)
        return MT_FAIL(MT_ERR_FORMAT,
                       "checkpoint '%s' is %llu bytes: too short for a safetensors header "
                       "(truncated or not a checkpoint)",
                       path, (unsigned long long)size);
    unsigned char prefix[8];
    MT_TRY(read_exact(fd, prefix, 8, 0, path));
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; i--)
        header_size = (header_size << 8) | prefix[i];
    if (header_size < 2 || header_size > MT_SAFETENSORS_HEADER_MAX || header_size > size - 8)
        return MT_FAIL(MT_ERR_FORMAT,
                       "checkpoint '%s': header length %llu does not fit a %llu-byte file "
                       "(truncated or not a safetensors file)",
                       path, (unsigned long long)header_size, (unsigned long long)size);
    char *header = malloc((size_t)header_size + 1);
    if (!header) return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", path);
    mt_status status = read_exact(fd, header, (size_t)header_size, 8, path);
    mt_safetensors_entry *tensors = NULL;
    int count = 0;
    uint64_t data_size = size - 8 - header_size;
    if (status == MT_OK)
        status = mt_safetensors_header_parse(path, header, (size_t)header_size, data_size,
                                             checkpoint, &tensors, &count);
    if (status == MT_OK && data_size > SIZE_MAX / 2)
        status = MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s' is too large", path);
    if (status == MT_OK) {
        checkpoint->storage = malloc(data_size ? (size_t)data_size : 1);
        if (!checkpoint->storage)
            status = MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory for %llu bytes", path,
                             (unsigned long long)data_size);
    }
    if (status == MT_OK)
        status = read_exact(fd, checkpoint->storage, (size_t)data_size, 8 + header_size, path);
    if (status == MT_OK && count > 0) {
        checkpoint->tensors = calloc((size_t)count, sizeof *checkpoint->tensors);
        if (!checkpoint->tensors) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < count; i++) {
        if (status == MT_OK) {
            mt_safetensors_entry *p = &tensors[i];
            mt_checkpoint_tensor *t = &checkpoint->tensors[checkpoint->count++];
            uint64_t bytes = 0;
            mt_safetensors_element_count(p->rank, p->shape, p->dtype, &t->count, &bytes);
            t->name = p->name;
            t->dtype = p->dtype;
            t->rank = p->rank;
            memcpy(t->shape, p->shape, sizeof t->shape);
            t->data = (const char *)checkpoint->storage + p->begin;
            t->bytes = (size_t)bytes;
            checkpoint->capacity = checkpoint->count;
        } else {
            free(tensors[i].name);
        }
    }
    free(tensors);
    free(header);
    if (status == MT_OK) status = verify_checksums(checkpoint);
    return status;
}

mt_status mt_checkpoint_read(const char *path, mt_checkpoint **out) {
    *out = NULL;
    mt_checkpoint *checkpoint = calloc(1, sizeof *checkpoint);
    if (!checkpoint) return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", path);
    snprintf(checkpoint->path, sizeof checkpoint->path, "%s", path);
    /* opened as a regular file only: a FIFO named as a checkpoint must not hang the run */
    int fd = -1;
    mt_status status = mt_file_open_read(path, "checkpoint", &fd);
    if (status != MT_OK) {
        mt_checkpoint_free(checkpoint);
        return status;
    }
    status = read_into(fd, path, checkpoint);
    close(fd);
    if (status != MT_OK) {
        mt_checkpoint_free(checkpoint);
        return status;
    }
    *out = checkpoint;
    return MT_OK;
}
