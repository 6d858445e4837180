/* TensorBoard event files: TFRecord framing (length, data, each followed by its masked CRC32C)
 * around hand-encoded tensorflow.Event protobufs; the few fields we write are listed at
 * encode_event. */
#include "mobiletune/tfevents.h"

#include "core/clock.h"
#include "mobiletune/files.h"

#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- CRC32C ---------------------------------------------------------------------------------- */

/* crc32_iscsi applies neither the initial nor the final inversion of the standard CRC32C, so they
 * are here; its length is an int, so large buffers go in pieces. */
uint32_t mt_crc32c_extend(uint32_t crc, const void *data, size_t size) {
    unsigned char *p = (unsigned char *)data; /* crc32_iscsi only reads, but takes no const */
    uint32_t c = ~crc;
    while (size > 0) {
        size_t chunk = size < (size_t)INT_MAX ? size : (size_t)INT_MAX;
        c = crc32_iscsi(p, (int)chunk, c);
        p += chunk;
        size -= chunk;
    }
    return ~c;
}

uint32_t mt_crc32c(const void *data, size_t size) {
    return mt_crc32c_extend(0, data, size);
}

uint32_t mt_crc32c_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* ---- event files ----------------------------------------------------------------------------- */

struct mt_event_writer {
    FILE *file;
    char path[4400];
};

typedef struct proto {
    unsigned char data[512];
    size_t size;
    bool overflow;
} proto;

static void proto_byte(proto *p, unsigned char b) {
    if (p->size < sizeof p->data)
        p->data[p->size++] = b;
    else
        p->overflow = true;
}

static void proto_varint(proto *p, uint64_t v) {
    while (v >= 0x80) {
        proto_byte(p, (unsigned char)(v | 0x80));
        v >>= 7;
    }
    proto_byte(p, (unsigned char)v);
}

static void proto_bytes(proto *p, const void *data, size_t n) {
    const unsigned char *b = data;
    for (size_t i = 0; i < n; i++)
        proto_byte(p, b[i]);
}

/* (field << 3) | wire type: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 */
static void proto_key(proto *p, int field, int wire) {
    proto_varint(p, (uint64_t)((field << 3) | wire));
}

static void proto_fixed(proto *p, uint64_t bits, int bytes) {
    for (int i = 0; i < bytes; i++)
        proto_byte(p, (unsigned char)(bits >> (8 * i)));
}

/* tensorflow.Event: 1 wall_time (double), 2 step (int64), 3 file_version (string),
 *                   5 summary (Summary: 1 repeated value (Value: 1 tag, 2 simple_value float)). */
static bool encode_event(proto *p, double wall_time, int64_t step, const char *file_version,
                         const char *tag, float value) {
    uint64_t bits;
    memcpy(&bits, &wall_time, 8);
    proto_key(p, 1, 1);
    proto_fixed(p, bits, 8);
    if (step != 0) {
        proto_key(p, 2, 0);
        proto_varint(p, (uint64_t)step);
    }
    if (file_version) {
        proto_key(p, 3, 2);
        proto_varint(p, strlen(file_version));
        proto_bytes(p, file_version, strlen(file_version));
    } else {
        size_t tag_len = strlen(tag);
        /* Value = key(1) + len + tag + key(2) + 4 bytes; Summary = key(1) + len + Value */
        size_t value_len = 1 + (tag_len < 128 ? 1 : 2) + tag_len + 1 + 4;
        size_t summary_len = 1 + (value_len < 128 ? 1 : 2) + value_len;
        proto_key(p, 5, 2);
        proto_varint(p, summary_len);
        proto_key(p, 1, 2);
        proto_varint(p, value_len);
        proto_key(p, 1, 2);
        proto_varint(p, tag_len);
        proto_bytes(p, tag, tag_len);
        uint32_t fbits;
        memcpy(&fbits, &value, 4);
        proto_key(p, 2, 5);
        proto_fixed(p, fbits, 4);
    }
    return !p->overflow;
}

static mt_status write_record(mt_event_writer *w, const void *data, size_t size) {
    unsigned char header[12], footer[4];
    uint64_t length = size;
    for (int i = 0; i < 8; i++)
        header[i] = (unsigned char)(length >> (8 * i));
    uint32_t length_crc = mt_crc32c_mask(mt_crc32c(header, 8));
    uint32_t data_crc = mt_crc32c_mask(mt_crc32c(data, size));
    for (int i = 0; i < 4; i++) {
        header[8 + i] = (unsigned char)(length_crc >> (8 * i));
        footer[i] = (unsigned char)(data_crc >> (8 * i));
    }
    if (fwrite(header, 1, 12, w->file) != 12 || fwrite(data, 1, size, w->file) != size ||
        fwrite(footer, 1, 4, w->file) != 4)
        return MT_FAIL(MT_ERR_IO, "writing event file '%s': %s", w->path, strerror(errno));
    return MT_OK;
}

mt_status mt_event_writer_open(const char *folder, mt_event_writer **out) {
    *out = NULL;
    MT_TRY(mt_make_dirs(folder));
    mt_event_writer *w = calloc(1, sizeof *w);
    if (!w) return MT_FAIL(MT_ERR_NOMEM, "event writer: out of memory");
    char host[256] = "localhost";
    if (gethostname(host, sizeof host) != 0) strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == '/' || *c == ' ') *c = '_';
    double started = mt_clock_wall();
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        if (attempt == 0)
            snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s", folder,
                     (long long)started, host);
        else
            snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s.%ld.%d", folder,
                     (long long)started, host, (long)getpid(), attempt);
        fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0 || !(w->file = fdopen(fd, "wb"))) {
        mt_status status =
            MT_FAIL(MT_ERR_IO, "cannot create event file '%s': %s", w->path, strerror(errno));
        if (fd >= 0) close(fd);
        free(w);
        return status;
    }
    proto p = {.size = 0};
    encode_event(&p, started, 0, "brain.Event:2", NULL, 0.0f);
    mt_status status = write_record(w, p.data, p.size);
    if (status == MT_OK) status = mt_event_writer_flush(w);
    if (status != MT_OK) {
        fclose(w->file);
        free(w);
        return status;
    }
    *out = w;
    return MT_OK;
}

mt_status mt_event_writer_scalar(mt_event_writer *w, const char *tag, int64_t step,
                                 double wall_time, float value) {
    if (strlen(tag) == 0 || strlen(tag) > 200)
        return MT_FAIL(MT_ERR_INVALID, "event file '%s': tag '%.40s' must be 1..200 characters",
                       w->path, tag);
    proto p = {.size = 0};
    if (!encode_event(&p, wall_time > 0 ? wall_time : mt_clock_wall(), step, NULL, tag, value))
        return MT_FAIL(MT_ERR_INTERNAL, "event for tag '%s' does not fit", tag);
    return write_record(w, p.data, p.size);
}

mt_status mt_event_writer_flush(mt_event_writer *w) {
    if (fflush(w->file) != 0)
        return MT_FAIL(MT_ERR_IO, "writing event file '%s': %s", w->path, strerror(errno));
    return MT_OK;
}

mt_status mt_event_writer_close(mt_event_writer *w) {
    if (!w) return MT_OK;
    mt_status status = MT_OK;
    if (fclose(w->file) != 0)
        status = MT_FAIL(MT_ERR_IO, "closing event file '%s': %s", w->path, strerror(errno));
    free(w);
    return status;
}

const char *mt_event_writer_path(const mt_event_writer *w) {
    return w->path;
}
