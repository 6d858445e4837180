/* The metrics logs: metrics.jsonl and TensorBoard event files (records with masked CRC32C around
 * a hand-encoded tensorflow.Event protobuf; the few fields we write are listed at encode_event). */
#include "core/clock.h"
#include "mobiletune/metrics.h"

#include "mobiletune/files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- CRC32C ---------------------------------------------------------------------------------- */

/* Reflected Castagnoli polynomial 0x1EDC6F41. Eight tables let the loop take 8 bytes at a time
 * (slicing-by-8): event records are small, but it costs nothing. */
static uint32_t crc_table[8][256];
static int crc_ready;

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xFF];
    __atomic_store_n(&crc_ready, 1, __ATOMIC_RELEASE);
}

uint32_t mt_crc32c_extend(uint32_t crc, const void *data, size_t size) {
    /* Racing initializations write identical tables, so a plain flag is enough. */
    if (!__atomic_load_n(&crc_ready, __ATOMIC_ACQUIRE)) crc_init();
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (size >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi =
            (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
            crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^
            crc_table[2][(hi >> 8) & 0xFF] ^ crc_table[1][(hi >> 16) & 0xFF] ^
            crc_table[0][hi >> 24];
        p += 8;
        size -= 8;
    }
    while (size--)
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
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

/* ---- metrics.jsonl + the two event files ------------------------------------------------------
 */

struct mt_metrics {
    FILE *jsonl;
    char jsonl_path[4400];
    mt_event_writer *train, *validation;
};

mt_metrics_record mt_metrics_record_empty(mt_metrics_kind kind, int epoch, int64_t step) {
    return (mt_metrics_record){
        .kind = kind,
        .epoch = epoch,
        .step = step,
        .loss = MT_METRIC_ABSENT,
        .accuracy = MT_METRIC_ABSENT,
        .val_loss = MT_METRIC_ABSENT,
        .val_accuracy = MT_METRIC_ABSENT,
        .lr = MT_METRIC_ABSENT,
        .images_per_second = MT_METRIC_ABSENT,
        .seconds = MT_METRIC_ABSENT,
        .loss_scale = MT_METRIC_ABSENT,
        .skipped_steps = MT_METRIC_ABSENT,
    };
}

mt_status mt_metrics_open(const char *run_dir, bool tensorboard, mt_metrics **out) {
    *out = NULL;
    MT_TRY(mt_make_dirs(run_dir));
    mt_metrics *m = calloc(1, sizeof *m);
    if (!m) return MT_FAIL(MT_ERR_NOMEM, "metrics: out of memory");
    snprintf(m->jsonl_path, sizeof m->jsonl_path, "%s/metrics.jsonl", run_dir);
    m->jsonl = fopen(m->jsonl_path, "a");
    if (!m->jsonl) {
        mt_status status = MT_FAIL(MT_ERR_IO, "cannot open '%s' for appending: %s", m->jsonl_path,
                                   strerror(errno));
        free(m);
        return status;
    }
    if (tensorboard) {
        char folder[4400];
        snprintf(folder, sizeof folder, "%s/tensorboard/train", run_dir);
        mt_status status = mt_event_writer_open(folder, &m->train);
        if (status == MT_OK) {
            snprintf(folder, sizeof folder, "%s/tensorboard/validation", run_dir);
            status = mt_event_writer_open(folder, &m->validation);
        }
        if (status != MT_OK) {
            mt_metrics_close(m);
            return status;
        }
    }
    *out = m;
    return MT_OK;
}

static void json_number(FILE *f, const char *key, double value) {
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.9g", key, value);
    else
        fprintf(f, ",\"%s\":null", key);
}

/* Absent (NAN) values are left out; infinities become null. */
static void json_field(FILE *f, const char *key, double value) {
    if (isnan(value)) return;
    json_number(f, key, value);
}

static mt_status scalar(mt_event_writer *w, const char *tag, int64_t step, double wall_time,
                        double value) {
    if (!w || !isfinite(value)) return MT_OK;
    return mt_event_writer_scalar(w, tag, step, wall_time, (float)value);
}

mt_status mt_metrics_log(mt_metrics *m, const mt_metrics_record *r) {
    double wall_time = mt_clock_wall();
    bool epoch = r->kind == MT_METRICS_EPOCH;
    fprintf(m->jsonl, "{\"kind\":\"%s\",\"epoch\":%d,\"step\":%lld,\"time\":%.3f",
            epoch ? "epoch" : "step", r->epoch, (long long)r->step, wall_time);
    json_field(m->jsonl, "loss", r->loss);
    json_field(m->jsonl, "accuracy", r->accuracy);
    json_field(m->jsonl, "val_loss", r->val_loss);
    json_field(m->jsonl, "val_accuracy", r->val_accuracy);
    json_field(m->jsonl, "lr", r->lr);
    json_field(m->jsonl, "images_per_second", r->images_per_second);
    json_field(m->jsonl, "seconds", r->seconds);
    json_field(m->jsonl, "loss_scale", r->loss_scale);
    json_field(m->jsonl, "skipped_steps", r->skipped_steps);
    fputs("}\n", m->jsonl);
    if (fflush(m->jsonl) != 0 || ferror(m->jsonl))
        return MT_FAIL(MT_ERR_IO, "writing '%s': %s", m->jsonl_path, strerror(errno));

    /* Keras' TensorBoard callback names: epoch_* against the epoch, batch_* against the step. */
    if (epoch) {
        MT_TRY(scalar(m->train, "epoch_loss", r->epoch, wall_time, r->loss));
        MT_TRY(scalar(m->train, "epoch_accuracy", r->epoch, wall_time, r->accuracy));
        MT_TRY(scalar(m->train, "epoch_learning_rate", r->epoch, wall_time, r->lr));
        MT_TRY(
            scalar(m->train, "epoch_images_per_second", r->epoch, wall_time, r->images_per_second));
        MT_TRY(scalar(m->train, "epoch_seconds", r->epoch, wall_time, r->seconds));
        MT_TRY(scalar(m->train, "epoch_loss_scale", r->epoch, wall_time, r->loss_scale));
        MT_TRY(scalar(m->train, "epoch_skipped_steps", r->epoch, wall_time, r->skipped_steps));
        MT_TRY(scalar(m->validation, "epoch_loss", r->epoch, wall_time, r->val_loss));
        MT_TRY(scalar(m->validation, "epoch_accuracy", r->epoch, wall_time, r->val_accuracy));
    } else {
        MT_TRY(scalar(m->train, "batch_loss", r->step, wall_time, r->loss));
        MT_TRY(scalar(m->train, "batch_accuracy", r->step, wall_time, r->accuracy));
        MT_TRY(scalar(m->train, "batch_learning_rate", r->step, wall_time, r->lr));
        MT_TRY(
            scalar(m->train, "batch_images_per_second", r->step, wall_time, r->images_per_second));
    }
    if (m->train) MT_TRY(mt_event_writer_flush(m->train));
    if (m->validation) MT_TRY(mt_event_writer_flush(m->validation));
    return MT_OK;
}

mt_status mt_metrics_close(mt_metrics *m) {
    if (!m) return MT_OK;
    mt_status status = MT_OK;
    if (m->jsonl && fclose(m->jsonl) != 0)
        status = MT_FAIL(MT_ERR_IO, "closing '%s': %s", m->jsonl_path, strerror(errno));
    mt_status train = mt_event_writer_close(m->train);
    mt_status validation = mt_event_writer_close(m->validation);
    free(m);
    if (status != MT_OK) return status;
    return train != MT_OK ? train : validation;
}
