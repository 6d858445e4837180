/* The dataset metadata record (key "meta"): a small line-based UTF-8 text so that `mdb_dump` and
 * `mobiletune-pack info` show it readably, with a strict parser because the loader trusts nothing
 * in a database. The grammar is in docs/formats.md:
 *
 *   mobiletune-dataset 1
 *   records 2000
 *   height 160
 *   width 160
 *   channels 3
 *   encoding raw
 *   split train
 *   mean 124.1 116.3 103.9
 *   std 58.4 57.1 57.4
 *   classes 2
 *   class 0 1000 cats
 *   class 1 1000 dogs
 *   options --size 160 --resize stretch
 *
 * Every key appears exactly once (class lines exactly `classes` times, ids in order, after
 * `classes`); unknown keys, blank lines, control characters and invalid UTF-8 are rejected, so a
 * newer format is a new version number rather than a silently misread file. Numbers are parsed and
 * printed in the C locale (the programs never call setlocale). */
#include "mobiletune/record.h"

#include "core/text_buffer.h"
#include "core/utf8.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    MAX_CLASS_NAME_BYTES = 255, /* a folder name on Linux */
    MAX_SPLIT_BYTES = 64,
    MAX_OPTIONS_BYTES = 65536,
    MAX_NUMBER_TEXT = 64,
};
/* Record keys are 10 decimal digits. */
static const uint64_t MAX_RECORDS = 9999999999ull;

/* ---- validation shared by format and parse ----------------------------------------------- */

/* Valid UTF-8 with no control characters (newline included when !allow_newline). Returns the
 * offset of the first bad byte, or n when all are fine. */
static size_t text_check(const char *text, size_t n, bool allow_newline) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x20 || s[i] == 0x7F) {
            if (!(allow_newline && s[i] == '\n')) return i;
            i++;
            continue;
        }
        size_t len = mt_utf8_sequence(s + i, n - i);
        if (len == 0) return i;
        i += len;
    }
    return n;
}

static bool split_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > MAX_SPLIT_BYTES) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok) return false;
    }
    return true;
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The semantic checks on a filled-in struct: what mt_meta_format refuses to write and what
 * mt_meta_parse refuses to return. */
static mt_status meta_validate(const mt_dataset_meta *meta) {
    if (meta->record_count > MAX_RECORDS)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset metadata: %" PRIu64 " records, more than %" PRIu64
                       " (the 10-digit key space)",
                       meta->record_count, MAX_RECORDS);
    if (meta->height < 1 || meta->height > MT_MAX_IMAGE_SIDE || meta->width < 1 ||
        meta->width > MT_MAX_IMAGE_SIDE)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: image size %dx%d is outside 1..%d",
                       meta->height, meta->width, MT_MAX_IMAGE_SIDE);
    if (meta->channels != 3)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: %d channels, only 3 (RGB) is supported",
                       meta->channels);
    if (meta->encoding != MT_ENCODING_RAW && meta->encoding != MT_ENCODING_JPEG)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: unknown encoding %d", (int)meta->encoding);
    if (meta->class_count < 1 || meta->class_count > MT_MAX_CLASSES)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: %d classes, want 1..%d", meta->class_count,
                       MT_MAX_CLASSES);
    if (!meta->class_names || !meta->class_counts)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: class names or counts missing");
    for (int c = 0; c < 3; c++) {
        if (!isfinite(meta->mean[c]) || meta->mean[c] < 0 || meta->mean[c] > 255)
            return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: channel %d mean %g is outside 0..255",
                           c, meta->mean[c]);
        if (!isfinite(meta->std[c]) || meta->std[c] < 0 || meta->std[c] > 255)
            return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: channel %d std %g is outside 0..255",
                           c, meta->std[c]);
    }
    if (!meta->split || !split_name_ok(meta->split))
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset metadata: split name '%s' must be 1..%d of "
                       "[A-Za-z0-9_.-]",
                       meta->split ? meta->split : "(null)", MAX_SPLIT_BYTES);
    if (meta->options) {
        size_t n = strlen(meta->options);
        if (n > MAX_OPTIONS_BYTES || text_check(meta->options, n, false) != n)
            return MT_FAIL(MT_ERR_FORMAT,
                           "dataset metadata: the options line is longer than %d "
                           "bytes, not UTF-8 or holds control characters",
                           MAX_OPTIONS_BYTES);
    }
    uint64_t sum = 0;
    for (int i = 0; i < meta->class_count; i++) {
        const char *name = meta->class_names[i];
        if (!name) return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: class %d has no name", i);
        size_t n = strlen(name);
        if (n == 0 || n > MAX_CLASS_NAME_BYTES || text_check(name, n, false) != n)
            return MT_FAIL(MT_ERR_FORMAT,
                           "dataset metadata: class %d name must be 1..%d bytes of "
                           "UTF-8 without newlines or control characters",
                           i, MAX_CLASS_NAME_BYTES);
        if (meta->class_counts[i] > meta->record_count - sum)
            return MT_FAIL(MT_ERR_FORMAT,
                           "dataset metadata: per-class counts exceed the %" PRIu64
                           " records (at class %d '%s')",
                           meta->record_count, i, name);
        sum += meta->class_counts[i];
    }
    if (sum != meta->record_count)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset metadata: per-class counts sum to %" PRIu64
                       ", but the dataset has %" PRIu64 " records",
                       sum, meta->record_count);
    /* Names must be unique: a duplicate would make label ids ambiguous for predict output. */
    char **sorted = malloc((size_t)meta->class_count * sizeof *sorted);
    if (!sorted) return MT_FAIL(MT_ERR_NOMEM, "dataset metadata: out of memory");
    memcpy(sorted, meta->class_names, (size_t)meta->class_count * sizeof *sorted);
    qsort(sorted, (size_t)meta->class_count, sizeof *sorted, compare_strings);
    mt_status status = MT_OK;
    for (int i = 1; i < meta->class_count; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            status = MT_FAIL(MT_ERR_FORMAT, "dataset metadata: class name '%s' appears twice",
                             sorted[i]);
            break;
        }
    free(sorted);
    return status;
}

/* ---- format --------------------------------------------------------------------------------- */

mt_status mt_meta_format(const mt_dataset_meta *meta, char **out_text, size_t *out_bytes) {
    *out_text = NULL;
    if (out_bytes) *out_bytes = 0;
    mt_status status = meta_validate(meta);
    if (status != MT_OK) return mt_error_context(MT_ERR_INVALID, "cannot write metadata");
    mt_text_buffer b = {0};
    mt_text_buffer_printf(&b, "%s %d\n", MT_META_MAGIC, MT_META_VERSION);
    mt_text_buffer_printf(&b, "records %" PRIu64 "\n", meta->record_count);
    mt_text_buffer_printf(&b, "height %d\nwidth %d\nchannels %d\n", meta->height, meta->width,
                          meta->channels);
    mt_text_buffer_printf(&b, "encoding %s\n", meta->encoding == MT_ENCODING_JPEG ? "jpeg" : "raw");
    mt_text_buffer_printf(&b, "split %s\n", meta->split);
    /* 10 significant digits: readable, and far finer than anything the statistics are used for. */
    mt_text_buffer_printf(&b, "mean %.10g %.10g %.10g\n", meta->mean[0], meta->mean[1],
                          meta->mean[2]);
    mt_text_buffer_printf(&b, "std %.10g %.10g %.10g\n", meta->std[0], meta->std[1], meta->std[2]);
    mt_text_buffer_printf(&b, "classes %d\n", meta->class_count);
    for (int i = 0; i < meta->class_count; i++)
        mt_text_buffer_printf(&b, "class %d %" PRIu64 " %s\n", i, meta->class_counts[i],
                              meta->class_names[i]);
    mt_text_buffer_printf(&b, "options %s\n", meta->options ? meta->options : "");
    size_t bytes;
    char *text = mt_text_buffer_take(&b, &bytes);
    if (!text) return MT_FAIL(MT_ERR_NOMEM, "cannot format the dataset metadata: out of memory");
    *out_text = text;
    if (out_bytes) *out_bytes = bytes;
    return MT_OK;
}

/* ---- parse ---------------------------------------------------------------------------------- */

/* A decimal without sign or leading zeros, at most `max`. */
static bool parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out) {
    if (n == 0 || n > 20 || (n > 1 && s[0] == '0')) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    if (v > max) return false;
    *out = v;
    return true;
}

static bool parse_int(const char *s, size_t n, int max, int *out) {
    uint64_t v;
    if (!parse_u64(s, n, (uint64_t)max, &v)) return false;
    *out = (int)v;
    return true;
}

/* Exactly three finite numbers separated by single spaces. */
static bool parse_triple(const char *s, size_t n, double out[3]) {
    size_t pos = 0;
    for (int k = 0; k < 3; k++) {
        size_t start = pos;
        while (pos < n && s[pos] != ' ')
            pos++;
        size_t len = pos - start;
        if (len == 0 || len >= MAX_NUMBER_TEXT) return false;
        char buf[MAX_NUMBER_TEXT];
        memcpy(buf, s + start, len);
        buf[len] = '\0';
        /* strtod also reads hex floats, "inf" and "nan": allow only plain decimal notation. */
        for (size_t i = 0; i < len; i++)
            if (!strchr("0123456789.eE+-", buf[i])) return false;
        char *end;
        out[k] = strtod(buf, &end);
        if (end != buf + len || !isfinite(out[k])) return false;
        if (k < 2) {
            if (pos >= n) return false;
            pos++; /* the single space */
        }
    }
    return pos == n;
}

static char *dup_bytes(const char *s, size_t n) {
    char *copy = malloc(n + 1);
    if (copy) {
        memcpy(copy, s, n);
        copy[n] = '\0';
    }
    return copy;
}

enum {
    SEEN_RECORDS = 1 << 0,
    SEEN_HEIGHT = 1 << 1,
    SEEN_WIDTH = 1 << 2,
    SEEN_CHANNELS = 1 << 3,
    SEEN_ENCODING = 1 << 4,
    SEEN_SPLIT = 1 << 5,
    SEEN_MEAN = 1 << 6,
    SEEN_STD = 1 << 7,
    SEEN_CLASSES = 1 << 8,
    SEEN_OPTIONS = 1 << 9,
    SEEN_ALL = (1 << 10) - 1,
};

static bool key_is(const char *key, size_t n, const char *want) {
    return strlen(want) == n && memcmp(key, want, n) == 0;
}

static mt_status parse_lines(const char *text, size_t size, mt_dataset_meta *m) {
    size_t bad = text_check(text, size, true);
    if (bad != size)
        return MT_FAIL(MT_ERR_FORMAT,
                       "dataset metadata: byte %zu is a control character or not "
                       "UTF-8",
                       bad);
    unsigned seen = 0;
    int classes_read = 0;
    int line_no = 0;
    size_t pos = 0;
    while (pos < size) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;
        pos += len + (nl ? 1 : 0);
        line_no++;
        if (line_no == 1) {
            char want[64];
            int n = snprintf(want, sizeof want, "%s %d", MT_META_MAGIC, MT_META_VERSION);
            if (len != (size_t)n || memcmp(line, want, len) != 0) {
                if (len > strlen(MT_META_MAGIC) &&
                    memcmp(line, MT_META_MAGIC " ", strlen(MT_META_MAGIC) + 1) == 0)
                    return MT_FAIL(MT_ERR_FORMAT,
                                   "dataset metadata: unsupported version line "
                                   "'%.*s' (this build reads '%s'): repack the dataset",
                                   (int)(len > 80 ? 80 : len), line, want);
                return MT_FAIL(MT_ERR_FORMAT,
                               "dataset metadata: does not start with '%s' (not a "
                               "mobiletune dataset)",
                               want);
            }
            continue;
        }
        const char *space = memchr(line, ' ', len);
        if (!space)
            return MT_FAIL(MT_ERR_FORMAT,
                           "dataset metadata line %d: expected 'key value', got "
                           "'%.*s'",
                           line_no, (int)(len > 80 ? 80 : len), line);
        size_t key_len = (size_t)(space - line);
        const char *value = space + 1;
        size_t value_len = len - key_len - 1;
        unsigned flag = 0;
        bool ok = true;
        if (key_is(line, key_len, "records")) {
            flag = SEEN_RECORDS;
            ok = parse_u64(value, value_len, MAX_RECORDS, &m->record_count);
        } else if (key_is(line, key_len, "height")) {
            flag = SEEN_HEIGHT;
            ok = parse_int(value, value_len, MT_MAX_IMAGE_SIDE, &m->height) && m->height > 0;
        } else if (key_is(line, key_len, "width")) {
            flag = SEEN_WIDTH;
            ok = parse_int(value, value_len, MT_MAX_IMAGE_SIDE, &m->width) && m->width > 0;
        } else if (key_is(line, key_len, "channels")) {
            flag = SEEN_CHANNELS;
            ok = parse_int(value, value_len, 3, &m->channels) && m->channels == 3;
        } else if (key_is(line, key_len, "encoding")) {
            flag = SEEN_ENCODING;
            if (key_is(value, value_len, "raw"))
                m->encoding = MT_ENCODING_RAW;
            else if (key_is(value, value_len, "jpeg"))
                m->encoding = MT_ENCODING_JPEG;
            else
                ok = false;
        } else if (key_is(line, key_len, "split")) {
            flag = SEEN_SPLIT;
            if (!(seen & flag)) {
                m->split = dup_bytes(value, value_len);
                if (!m->split) return MT_FAIL(MT_ERR_NOMEM, "dataset metadata: out of memory");
                ok = split_name_ok(m->split);
            }
        } else if (key_is(line, key_len, "mean")) {
            flag = SEEN_MEAN;
            ok = parse_triple(value, value_len, m->mean);
        } else if (key_is(line, key_len, "std")) {
            flag = SEEN_STD;
            ok = parse_triple(value, value_len, m->std);
        } else if (key_is(line, key_len, "options")) {
            flag = SEEN_OPTIONS;
            if (!(seen & flag)) {
                ok = value_len <= MAX_OPTIONS_BYTES;
                m->options = ok ? dup_bytes(value, value_len) : NULL;
                if (ok && !m->options)
                    return MT_FAIL(MT_ERR_NOMEM, "dataset metadata: out of memory");
            }
        } else if (key_is(line, key_len, "classes")) {
            flag = SEEN_CLASSES;
            if (!(seen & flag)) {
                ok = parse_int(value, value_len, MT_MAX_CLASSES, &m->class_count) &&
                     m->class_count > 0;
                if (ok) {
                    m->class_names = calloc((size_t)m->class_count, sizeof *m->class_names);
                    m->class_counts = calloc((size_t)m->class_count, sizeof *m->class_counts);
                    if (!m->class_names || !m->class_counts)
                        return MT_FAIL(MT_ERR_NOMEM, "dataset metadata: out of memory");
                }
            }
        } else if (key_is(line, key_len, "class")) {
            if (!(seen & SEEN_CLASSES))
                return MT_FAIL(MT_ERR_FORMAT,
                               "dataset metadata line %d: 'class' before "
                               "'classes'",
                               line_no);
            if (classes_read >= m->class_count)
                return MT_FAIL(MT_ERR_FORMAT,
                               "dataset metadata line %d: more 'class' lines than "
                               "the %d classes",
                               line_no, m->class_count);
            /* class <id> <count> <name: rest of the line> */
            const char *sp1 = memchr(value, ' ', value_len);
            const char *sp2 =
                sp1 ? memchr(sp1 + 1, ' ', value_len - (size_t)(sp1 + 1 - value)) : NULL;
            int id;
            uint64_t count;
            if (!sp2 || !parse_int(value, (size_t)(sp1 - value), MT_MAX_CLASSES, &id) ||
                !parse_u64(sp1 + 1, (size_t)(sp2 - sp1 - 1), MAX_RECORDS, &count))
                return MT_FAIL(MT_ERR_FORMAT,
                               "dataset metadata line %d: expected 'class <id> "
                               "<count> <name>'",
                               line_no);
            if (id != classes_read)
                return MT_FAIL(MT_ERR_FORMAT,
                               "dataset metadata line %d: class id %d out of order "
                               "(want %d)",
                               line_no, id, classes_read);
            size_t name_len = value_len - (size_t)(sp2 + 1 - value);
            if (name_len == 0 || name_len > MAX_CLASS_NAME_BYTES)
                return MT_FAIL(MT_ERR_FORMAT,
                               "dataset metadata line %d: class name must be 1..%d "
                               "bytes",
                               line_no, MAX_CLASS_NAME_BYTES);
            m->class_names[id] = dup_bytes(sp2 + 1, name_len);
            if (!m->class_names[id])
                return MT_FAIL(MT_ERR_NOMEM, "dataset metadata: out of memory");
            m->class_counts[id] = count;
            classes_read++;
            continue;
        } else {
            return MT_FAIL(MT_ERR_FORMAT, "dataset metadata line %d: unknown key '%.*s'", line_no,
                           (int)(key_len > 40 ? 40 : key_len), line);
        }
        if (seen & flag)
            return MT_FAIL(MT_ERR_FORMAT, "dataset metadata line %d: '%.*s' appears twice", line_no,
                           (int)key_len, line);
        seen |= flag;
        if (!ok)
            return MT_FAIL(MT_ERR_FORMAT,
                           "dataset metadata line %d: bad value for '%.*s': "
                           "'%.*s'",
                           line_no, (int)key_len, line, (int)(value_len > 80 ? 80 : value_len),
                           value);
    }
    if (line_no == 0)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: empty (not a mobiletune dataset)");
    if (seen != SEEN_ALL) {
        static const char *names[] = {"records", "height", "width", "channels", "encoding",
                                      "split",   "mean",   "std",   "classes",  "options"};
        for (int i = 0; i < 10; i++)
            if (!(seen & (1u << i)))
                return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: the '%s' line is missing",
                               names[i]);
    }
    if (classes_read != m->class_count)
        return MT_FAIL(MT_ERR_FORMAT, "dataset metadata: %d 'class' lines for %d classes",
                       classes_read, m->class_count);
    m->version = MT_META_VERSION;
    return meta_validate(m);
}

mt_status mt_meta_parse(const void *data, size_t size, mt_dataset_meta *out) {
    memset(out, 0, sizeof *out);
    if (!data && size > 0) return MT_FAIL(MT_ERR_INVALID, "dataset metadata: NULL data");
    mt_status status = parse_lines(data, size, out);
    if (status != MT_OK) mt_meta_free(out);
    return status;
}

void mt_meta_free(mt_dataset_meta *meta) {
    if (!meta) return;
    if (meta->class_names)
        for (int i = 0; i < meta->class_count; i++)
            free(meta->class_names[i]);
    free(meta->class_names);
    free(meta->class_counts);
    free(meta->split);
    free(meta->options);
    memset(meta, 0, sizeof *meta);
}

/* "cats, dogs" (cut short with "..." beyond `capacity`). */
static void list_names(const char *const *names, int count, char *text, size_t capacity) {
    size_t used = 0;
    text[0] = '\0';
    for (int i = 0; i < count && used + 1 < capacity; i++) {
        int n = snprintf(text + used, capacity - used, "%s%s", i ? ", " : "", names[i]);
        if (n < 0 || (size_t)n >= capacity - used) {
            if (capacity > 4) memcpy(text + capacity - 4, "...", 4);
            return;
        }
        used += (size_t)n;
    }
}

bool mt_class_names_same(const char *const *a, int a_count, const char *const *b, int b_count,
                         char *message, size_t capacity) {
    int differ = -1;
    for (int i = 0; i < a_count && i < b_count && differ < 0; i++)
        if (strcmp(a[i], b[i]) != 0) differ = i;
    if (differ < 0 && a_count == b_count) return true;
    if (capacity == 0) return false;
    char first[200], second[200];
    list_names(a, a_count, first, sizeof first);
    list_names(b, b_count, second, sizeof second);
    if (differ >= 0)
        snprintf(message, capacity, "class %d is '%s' against '%s' (classes %s against %s)", differ,
                 a[differ], b[differ], first, second);
    else
        snprintf(message, capacity, "%d classes against %d (%s against %s)", a_count, b_count,
                 first, second);
    return false;
}

bool mt_dataset_meta_same_classes(const mt_dataset_meta *a, const mt_dataset_meta *b, char *message,
                                  size_t capacity) {
    return mt_class_names_same((const char *const *)a->class_names, a->class_count,
                               (const char *const *)b->class_names, b->class_count, message,
                               capacity);
}
