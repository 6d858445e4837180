/* Metrics logs: CRC32C against the published check values and a bitwise reference, event files
 * read back record by record (both CRCs of every record checked, the Event protobuf decoded
 * independently of the encoder), and metrics.jsonl across a reopen (resume appends).
 *
 * Also `test_train_metrics --write-sample RUN_DIR` for tests/train/metrics_tensorboard.py, which
 * reads the same files with TensorFlow's own reader. */
#include "mobiletune/metrics.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define EXPECT_OK(call)                                                                            \
    do {                                                                                           \
        mt_status expect_ok_ = (call);                                                             \
        CHECK_MSG(expect_ok_ == MT_OK, "%s: %s", #call, mt_last_error());                          \
    } while (0)

static uint32_t crc_bitwise(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return ~c;
}

static void test_crc(void) {
    unsigned char buf[32];
    CHECK(mt_crc32c("123456789", 9) == 0xE3069283u); /* the CRC catalogue's check value */
    /* RFC 3720 (iSCSI) B.4 test vectors */
    memset(buf, 0, 32);
    CHECK(mt_crc32c(buf, 32) == 0x8A9136AAu);
    memset(buf, 0xFF, 32);
    CHECK(mt_crc32c(buf, 32) == 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)i;
    CHECK(mt_crc32c(buf, 32) == 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)(31 - i);
    CHECK(mt_crc32c(buf, 32) == 0x113FDB5Cu);
    CHECK(mt_crc32c("", 0) == 0);

    unsigned char big[1031];
    uint32_t state = 99;
    for (size_t i = 0; i < sizeof big; i++) {
        state = state * 1103515245u + 12345u;
        big[i] = (unsigned char)(state >> 16);
    }
    uint32_t want = crc_bitwise(big, sizeof big);
    CHECK(mt_crc32c(big, sizeof big) == want);
    for (size_t cut = 0; cut <= 17; cut++)
        CHECK(mt_crc32c_extend(mt_crc32c(big, cut), big + cut, sizeof big - cut) == want);
    /* TFRecord's mask of the CRC of 8 zero bytes, worked out by hand from the definition. */
    uint32_t c = mt_crc32c("\0\0\0\0\0\0\0\0", 8);
    CHECK(mt_crc32c_mask(c) == ((c >> 15 | c << 17) + 0xa282ead8u));
}

/* ---- an independent reader of event files -------------------------------------------------- */

typedef struct event {
    double wall_time;
    int64_t step;
    char file_version[64];
    char tag[256];
    float value;
    bool has_value;
} event;

static uint64_t get_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static bool read_varint(const unsigned char **p, const unsigned char *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Decode the fields we write; any other field or wire type is a failure. */
static bool decode_message(const unsigned char *p, const unsigned char *end, int depth, event *e) {
    while (p < end) {
        uint64_t key, n;
        if (!read_varint(&p, end, &key)) return false;
        int field = (int)(key >> 3), wire = (int)(key & 7);
        if (depth == 0 && field == 1 && wire == 1 && end - p >= 8) {
            uint64_t bits = get_le(p, 8);
            memcpy(&e->wall_time, &bits, 8);
            p += 8;
        } else if (depth == 0 && field == 2 && wire == 0) {
            if (!read_varint(&p, end, &n)) return false;
            e->step = (int64_t)n;
        } else if (wire == 2) {
            if (!read_varint(&p, end, &n) || n > (uint64_t)(end - p)) return false;
            if (depth == 0 && field == 3) {
                if (n >= sizeof e->file_version) return false;
                memcpy(e->file_version, p, n);
                e->file_version[n] = '\0';
            } else if ((depth == 0 && field == 5) || (depth == 1 && field == 1)) {
                if (!decode_message(p, p + n, depth + 1, e)) return false;
            } else if (depth == 2 && field == 1) {
                if (n >= sizeof e->tag) return false;
                memcpy(e->tag, p, n);
                e->tag[n] = '\0';
            } else {
                return false;
            }
            p += n;
        } else if (depth == 2 && field == 2 && wire == 5 && end - p >= 4) {
            uint32_t bits = (uint32_t)get_le(p, 4);
            memcpy(&e->value, &bits, 4);
            e->has_value = true;
            p += 4;
        } else {
            return false;
        }
    }
    return true;
}

/* All events of a file; every record's two CRCs are checked. Returns the count or -1. */
static int read_events(const char *path, event *events, int capacity) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int count = 0;
    unsigned char header[12], data[4096], footer[4];
    while (fread(header, 1, 12, f) == 12) {
        uint64_t length = get_le(header, 8);
        if (mt_crc32c_mask(mt_crc32c(header, 8)) != (uint32_t)get_le(header + 8, 4)) {
            fprintf(stderr, "%s: record %d: bad length CRC\n", path, count);
            count = -1;
            break;
        }
        if (length > sizeof data || fread(data, 1, length, f) != length ||
            fread(footer, 1, 4, f) != 4) {
            count = -1;
            break;
        }
        if (mt_crc32c_mask(mt_crc32c(data, length)) != (uint32_t)get_le(footer, 4)) {
            fprintf(stderr, "%s: record %d: bad data CRC\n", path, count);
            count = -1;
            break;
        }
        if (count == capacity) break;
        event *e = &events[count];
        memset(e, 0, sizeof *e);
        if (!decode_message(data, data + length, 0, e)) {
            fprintf(stderr, "%s: record %d: cannot decode\n", path, count);
            count = -1;
            break;
        }
        count++;
    }
    if (count >= 0 && !feof(f) && fgetc(f) != EOF) count = -1; /* a torn record */
    fclose(f);
    return count;
}

/* The single events.out.tfevents.* file in folder (path into `out`). */
static bool find_event_file(const char *folder, char *out, size_t capacity, int *files) {
    DIR *d = opendir(folder);
    *files = 0;
    if (!d) return false;
    struct dirent *entry;
    while ((entry = readdir(d))) {
        if (strncmp(entry->d_name, "events.out.tfevents.", 20) == 0) {
            snprintf(out, capacity, "%s/%s", folder, entry->d_name);
            (*files)++;
        }
    }
    closedir(d);
    return *files > 0;
}

static void test_event_writer(const char *dir) {
    char folder[4200];
    snprintf(folder, sizeof folder, "%s/tb/nested", dir);
    mt_event_writer *w = NULL;
    EXPECT_OK(mt_event_writer_open(folder, &w));
    if (!w) return;
    CHECK(strstr(mt_event_writer_path(w), "/tb/nested/events.out.tfevents.") != NULL);
    char long_tag[151];
    memset(long_tag, 'x', 150);
    long_tag[150] = '\0';
    const char *tags[] = {"epoch_loss", "a/b c", long_tag, "epoch_loss", "neg"};
    const int64_t steps[] = {0, 1, 5, (int64_t)1 << 40, -3};
    const float values[] = {0.1f, -2.5f, 1e-30f, 3.0e38f, 0.0f};
    for (int i = 0; i < 5; i++)
        EXPECT_OK(mt_event_writer_scalar(w, tags[i], steps[i], 1700000000.25 + i, values[i]));
    CHECK(mt_event_writer_scalar(w, "", 1, 0, 1.0f) == MT_ERR_INVALID);
    char path[4400];
    snprintf(path, sizeof path, "%s", mt_event_writer_path(w));
    EXPECT_OK(mt_event_writer_close(w));

    event events[16];
    int n = read_events(path, events, 16);
    CHECK_MSG(n == 6, "%d events", n);
    if (n != 6) return;
    CHECK(strcmp(events[0].file_version, "brain.Event:2") == 0 && !events[0].has_value);
    CHECK(events[0].wall_time > 1.7e9);
    for (int i = 0; i < 5; i++) {
        const event *e = &events[i + 1];
        CHECK_MSG(strcmp(e->tag, tags[i]) == 0 && e->step == steps[i] && e->has_value &&
                      e->value == values[i] && e->wall_time == 1700000000.25 + i,
                  "event %d: tag '%s' step %lld value %g", i, e->tag, (long long)e->step,
                  (double)e->value);
    }

    /* Two writers in one folder in the same second get two files. */
    mt_event_writer *a = NULL, *b = NULL;
    EXPECT_OK(mt_event_writer_open(folder, &a));
    EXPECT_OK(mt_event_writer_open(folder, &b));
    if (a && b) CHECK(strcmp(mt_event_writer_path(a), mt_event_writer_path(b)) != 0);
    mt_event_writer_close(a);
    mt_event_writer_close(b);

    /* A file where the folder should be. */
    char blocked[4300];
    snprintf(blocked, sizeof blocked, "%s/blocked", dir);
    FILE *f = fopen(blocked, "w");
    if (f) fclose(f);
    strcat(blocked, "/sub");
    CHECK(mt_event_writer_open(blocked, &w) == MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "blocked") != NULL, "message: %s", mt_last_error());
}

/* The sample run the Python test also reads: epochs 1..3, two steps each. */
static mt_status write_sample(const char *run_dir) {
    mt_metrics *m = NULL;
    MT_TRY(mt_metrics_open(run_dir, true, &m));
    for (int epoch = 1; epoch <= 3; epoch++) {
        for (int s = 1; s <= 2; s++) {
            int64_t step = (epoch - 1) * 2 + s;
            mt_metrics_record r = mt_metrics_record_empty(MT_METRICS_STEP, epoch, step);
            r.loss = 1.0 / (double)step;
            r.accuracy = 0.5;
            r.lr = 1e-4;
            MT_TRY(mt_metrics_log(m, &r));
        }
        mt_metrics_record r = mt_metrics_record_empty(MT_METRICS_EPOCH, epoch, epoch * 2);
        r.loss = 1.0 / epoch;
        r.accuracy = 0.5 + 0.1 * epoch;
        r.val_loss = 1.5 / epoch;
        r.val_accuracy = 0.45 + 0.1 * epoch;
        r.lr = 1e-4;
        r.images_per_second = 100.0 * epoch;
        r.seconds = 2.5;
        MT_TRY(mt_metrics_log(m, &r));
    }
    return mt_metrics_close(m);
}

static int count_lines(const char *path, char *text, size_t capacity) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(text, 1, capacity - 1, f);
    text[n] = '\0';
    fclose(f);
    int lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    return lines;
}

static void test_metrics(const char *dir) {
    char run[4200], path[4400], text[16384];
    snprintf(run, sizeof run, "%s/run/one", dir);
    EXPECT_OK(write_sample(run));
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    CHECK(count_lines(path, text, sizeof text) == 9);
    CHECK(strstr(text, "{\"kind\":\"step\",\"epoch\":1,\"step\":1,\"time\":") == text);
    CHECK(strstr(text, ",\"loss\":1,\"accuracy\":0.5,\"lr\":0.0001}\n") != NULL);
    CHECK(strstr(text, "\"kind\":\"epoch\",\"epoch\":3,\"step\":6,") != NULL);
    CHECK(strstr(text, "\"val_accuracy\":0.75,\"lr\":0.0001,\"images_per_second\":300,"
                       "\"seconds\":2.5}\n") != NULL);

    /* A resumed run appends; infinities are null, absent values are left out. */
    mt_metrics *m = NULL;
    EXPECT_OK(mt_metrics_open(run, false, &m));
    if (m) {
        mt_metrics_record r = mt_metrics_record_empty(MT_METRICS_EPOCH, 4, 8);
        r.loss = INFINITY;
        EXPECT_OK(mt_metrics_log(m, &r));
        EXPECT_OK(mt_metrics_close(m));
    }
    CHECK(count_lines(path, text, sizeof text) == 10);
    CHECK_MSG(strstr(text, "\"epoch\":4,\"step\":8,") && strstr(text, ",\"loss\":null}\n"), "%s",
              text);

    /* TensorBoard: Keras' layout and tags. */
    char folder[4400], file[4600];
    int files = 0;
    event events[64];
    snprintf(folder, sizeof folder, "%s/tensorboard/train", run);
    CHECK(find_event_file(folder, file, sizeof file, &files) && files == 1);
    int n = read_events(file, events, 64);
    CHECK_MSG(n == 1 + 3 * (2 * 3 + 5), "train events: %d", n); /* 3 per step, 5 per epoch */
    bool found = false;
    for (int i = 0; i < n; i++)
        if (strcmp(events[i].tag, "epoch_accuracy") == 0 && events[i].step == 2)
            found = events[i].value == (float)0.7;
    CHECK(found);
    snprintf(folder, sizeof folder, "%s/tensorboard/validation", run);
    CHECK(find_event_file(folder, file, sizeof file, &files) && files == 1);
    n = read_events(file, events, 64);
    CHECK_MSG(n == 1 + 3 * 2, "validation events: %d", n);
    CHECK(n > 6 && strcmp(events[6].tag, "epoch_accuracy") == 0 && events[6].step == 3 &&
          events[6].value == (float)0.75);

    /* A run folder that cannot be made. */
    CHECK(mt_metrics_open("/proc/no/such/run", true, &m) == MT_ERR_IO);
    CHECK(m == NULL);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-sample") == 0) {
        mt_status status = write_sample(argv[2]);
        if (status != MT_OK) fprintf(stderr, "%s\n", mt_last_error());
        return status == MT_OK ? 0 : 1;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", mt_test_make_temp_dir("metrics"));
    test_crc();
    test_event_writer(dir);
    test_metrics(dir);
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
