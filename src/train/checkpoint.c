/* safetensors checkpoints: building in memory, the strict JSON header writer and reader, the
 * atomic write (temp file, fsync, rename, fsync of the folder) and the validating read.
 *
 * The JSON code knows only this header's shape (an object of tensor objects and one string map),
 * so it is small enough to check by reading; anything else in a header is an error. */
#include "mobiletune/checkpoint.h"
#include "mobiletune/files.h"

#include "core/text_buffer.h"

#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error                                                                                             \
    "checkpoints are written and read as raw little-endian memory: a little-endian host is needed"
#endif

/* The safetensors reference implementation refuses larger headers, and so do we. */
enum { HEADER_MAX = 100000000 };
static const char METADATA_KEY[] = "__metadata__";
/* Each tensor's CRC-32 (zlib's, Python's zlib.crc32) is the metadata entry "crc32:<name>", 8 hex
 * digits; written for every tensor, checked and removed from the metadata list on read. */
static const char CRC_PREFIX[] = "crc32:";
enum { CRC_PREFIX_LENGTH = sizeof CRC_PREFIX - 1 };

struct mt_checkpoint {
    char path[4096];
    int count, capacity;
    mt_checkpoint_tensor *tensors; /* names and (when built) data are owned per tensor */
    int meta_count, meta_capacity;
    char **meta_keys, **meta_values;
    void *storage;          /* after a read: all the tensors' data, tensors point into it */
    int checksums_verified; /* after a read: tensors whose crc32 entry matched */
};

const char *mt_checkpoint_dtype_name(mt_checkpoint_dtype dtype) {
    switch (dtype) {
    case MT_CHECKPOINT_F32:
        return "F32";
    case MT_CHECKPOINT_U8:
        return "U8";
    case MT_CHECKPOINT_I64:
        return "I64";
    case MT_CHECKPOINT_U64:
        return "U64";
    }
    return "?";
}

size_t mt_checkpoint_dtype_size(mt_checkpoint_dtype dtype) {
    switch (dtype) {
    case MT_CHECKPOINT_F32:
        return 4;
    case MT_CHECKPOINT_U8:
        return 1;
    case MT_CHECKPOINT_I64:
        return 8;
    case MT_CHECKPOINT_U64:
        return 8;
    }
    return 0;
}

static bool dtype_parse(const char *text, mt_checkpoint_dtype *out) {
    for (int d = MT_CHECKPOINT_F32; d <= MT_CHECKPOINT_U64; d++) {
        if (strcmp(text, mt_checkpoint_dtype_name((mt_checkpoint_dtype)d)) == 0) {
            *out = (mt_checkpoint_dtype)d;
            return true;
        }
    }
    return false;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF): JSON readers insist on it. */
static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t extra;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        if (n - i <= extra) return false; /* truncated sequence */
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            c = (c << 6) | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
        i += extra + 1;
    }
    return true;
}

/* ---- building ---------------------------------------------------------------------------- */

mt_status mt_checkpoint_create(mt_checkpoint **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return MT_FAIL(MT_ERR_NOMEM, "checkpoint: out of memory");
    return MT_OK;
}

void mt_checkpoint_free(mt_checkpoint *checkpoint) {
    if (!checkpoint) return;
    for (int i = 0; i < checkpoint->count; i++) {
        free((void *)checkpoint->tensors[i].name);
        if (!checkpoint->storage) free((void *)checkpoint->tensors[i].data);
    }
    free(checkpoint->tensors);
    for (int i = 0; i < checkpoint->meta_count; i++) {
        free(checkpoint->meta_keys[i]);
        free(checkpoint->meta_values[i]);
    }
    free(checkpoint->meta_keys);
    free(checkpoint->meta_values);
    free(checkpoint->storage);
    free(checkpoint);
}

static mt_status check_name(const char *what, const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len >= MT_CHECKPOINT_NAME_MAX)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint %s '%.40s': names are 1..%d bytes", what, name,
                       MT_CHECKPOINT_NAME_MAX - 1);
    if (!utf8_valid((const unsigned char *)name, len))
        return MT_FAIL(MT_ERR_INVALID, "checkpoint %s '%.40s': not valid UTF-8", what, name);
    return MT_OK;
}

const mt_checkpoint_tensor *mt_checkpoint_find(const mt_checkpoint *checkpoint, const char *name) {
    for (int i = 0; i < checkpoint->count; i++)
        if (strcmp(checkpoint->tensors[i].name, name) == 0) return &checkpoint->tensors[i];
    return NULL;
}

/* count = product of shape, bytes = count * size, both without overflow. */
static bool element_count(int rank, const uint64_t *shape, mt_checkpoint_dtype dtype,
                          uint64_t *count, uint64_t *bytes) {
    uint64_t n = 1;
    for (int d = 0; d < rank; d++) {
        if (shape[d] != 0 && n > UINT64_MAX / shape[d]) return false;
        n *= shape[d];
    }
    uint64_t size = mt_checkpoint_dtype_size(dtype);
    if (n > UINT64_MAX / size) return false;
    *count = n;
    *bytes = n * size;
    return true;
}

static mt_status grow_tensors(mt_checkpoint *checkpoint) {
    if (checkpoint->count < checkpoint->capacity) return MT_OK;
    int capacity = checkpoint->capacity ? 2 * checkpoint->capacity : 16;
    mt_checkpoint_tensor *grown =
        realloc(checkpoint->tensors, (size_t)capacity * sizeof *checkpoint->tensors);
    if (!grown) return MT_FAIL(MT_ERR_NOMEM, "checkpoint: out of memory");
    checkpoint->tensors = grown;
    checkpoint->capacity = capacity;
    return MT_OK;
}

mt_status mt_checkpoint_add(mt_checkpoint *checkpoint, const char *name, mt_checkpoint_dtype dtype,
                            int rank, const uint64_t *shape, const void *data) {
    MT_TRY(check_name("tensor", name));
    if (strcmp(name, METADATA_KEY) == 0)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor name '%s' is reserved", name);
    if (checkpoint->storage)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint '%s' was read from a file: build a new one",
                       checkpoint->path);
    if (mt_checkpoint_find(checkpoint, name))
        return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s' added twice", name);
    if (mt_checkpoint_dtype_size(dtype) == 0)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s': unknown dtype %d", name,
                       (int)dtype);
    if (rank < 0 || rank > MT_CHECKPOINT_MAX_RANK)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s': rank %d is not 0..%d", name, rank,
                       MT_CHECKPOINT_MAX_RANK);
    uint64_t count, bytes;
    if (!element_count(rank, shape, dtype, &count, &bytes) || bytes > SIZE_MAX / 2)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s': shape too large", name);
    MT_TRY(grow_tensors(checkpoint));
    void *copy = malloc(bytes ? bytes : 1);
    char *name_copy = strdup(name);
    if (!copy || !name_copy) {
        free(copy);
        free(name_copy);
        return MT_FAIL(MT_ERR_NOMEM, "checkpoint tensor '%s': out of memory (%llu bytes)", name,
                       (unsigned long long)bytes);
    }
    if (bytes) memcpy(copy, data, bytes);
    mt_checkpoint_tensor *t = &checkpoint->tensors[checkpoint->count++];
    *t = (mt_checkpoint_tensor){.name = name_copy,
                                .dtype = dtype,
                                .rank = rank,
                                .count = count,
                                .data = copy,
                                .bytes = (size_t)bytes};
    for (int d = 0; d < rank; d++)
        t->shape[d] = shape[d];
    return MT_OK;
}

mt_status mt_checkpoint_add_f32(mt_checkpoint *checkpoint, const char *name, int rank,
                                const int *shape, const float *data) {
    uint64_t dims[MT_CHECKPOINT_MAX_RANK];
    if (rank < 0 || rank > MT_CHECKPOINT_MAX_RANK)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s': rank %d is not 0..%d", name, rank,
                       MT_CHECKPOINT_MAX_RANK);
    for (int d = 0; d < rank; d++) {
        if (shape[d] < 0)
            return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s': negative dimension %d", name,
                           shape[d]);
        dims[d] = (uint64_t)shape[d];
    }
    return mt_checkpoint_add(checkpoint, name, MT_CHECKPOINT_F32, rank, dims, data);
}

mt_status mt_checkpoint_add_blob(mt_checkpoint *checkpoint, const char *name, const void *data,
                                 size_t bytes) {
    uint64_t dims[1] = {bytes};
    return mt_checkpoint_add(checkpoint, name, MT_CHECKPOINT_U8, 1, dims, data);
}

static mt_status meta_put(mt_checkpoint *checkpoint, char *key, char *value) {
    for (int i = 0; i < checkpoint->meta_count; i++) {
        if (strcmp(checkpoint->meta_keys[i], key) == 0) {
            free(key);
            free(checkpoint->meta_values[i]);
            checkpoint->meta_values[i] = value;
            return MT_OK;
        }
    }
    if (checkpoint->meta_count == checkpoint->meta_capacity) {
        int capacity = checkpoint->meta_capacity ? 2 * checkpoint->meta_capacity : 8;
        char **keys = realloc(checkpoint->meta_keys, (size_t)capacity * sizeof(char *));
        if (keys) checkpoint->meta_keys = keys;
        char **values = realloc(checkpoint->meta_values, (size_t)capacity * sizeof(char *));
        if (values) checkpoint->meta_values = values;
        if (!keys || !values) {
            free(key);
            free(value);
            return MT_FAIL(MT_ERR_NOMEM, "checkpoint metadata: out of memory");
        }
        checkpoint->meta_capacity = capacity;
    }
    checkpoint->meta_keys[checkpoint->meta_count] = key;
    checkpoint->meta_values[checkpoint->meta_count] = value;
    checkpoint->meta_count++;
    return MT_OK;
}

mt_status mt_checkpoint_set_meta(mt_checkpoint *checkpoint, const char *key, const char *value) {
    MT_TRY(check_name("metadata key", key));
    if (strncmp(key, CRC_PREFIX, CRC_PREFIX_LENGTH) == 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "checkpoint metadata key '%s': the prefix '%s' is reserved "
                       "for the tensors' checksums",
                       key, CRC_PREFIX);
    if (!utf8_valid((const unsigned char *)value, strlen(value)))
        return MT_FAIL(MT_ERR_INVALID, "checkpoint metadata '%s': value is not valid UTF-8", key);
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return MT_FAIL(MT_ERR_NOMEM, "checkpoint metadata: out of memory");
    }
    return meta_put(checkpoint, k, v);
}

int mt_checkpoint_tensor_count(const mt_checkpoint *checkpoint) {
    return checkpoint->count;
}

const mt_checkpoint_tensor *mt_checkpoint_tensor_at(const mt_checkpoint *checkpoint, int index) {
    return index >= 0 && index < checkpoint->count ? &checkpoint->tensors[index] : NULL;
}

int mt_checkpoint_meta_count(const mt_checkpoint *checkpoint) {
    return checkpoint->meta_count;
}

void mt_checkpoint_meta_at(const mt_checkpoint *checkpoint, int index, const char **key,
                           const char **value) {
    bool in = index >= 0 && index < checkpoint->meta_count;
    *key = in ? checkpoint->meta_keys[index] : NULL;
    *value = in ? checkpoint->meta_values[index] : NULL;
}

const char *mt_checkpoint_meta(const mt_checkpoint *checkpoint, const char *key) {
    for (int i = 0; i < checkpoint->meta_count; i++)
        if (strcmp(checkpoint->meta_keys[i], key) == 0) return checkpoint->meta_values[i];
    return NULL;
}

const char *mt_checkpoint_path(const mt_checkpoint *checkpoint) {
    return checkpoint->path;
}

static const char *display_path(const mt_checkpoint *checkpoint) {
    return checkpoint->path[0] ? checkpoint->path : "(in memory)";
}

mt_status mt_checkpoint_get_f32(const mt_checkpoint *checkpoint, const char *name, float *out,
                                size_t count, int rank, const int *shape) {
    const mt_checkpoint_tensor *t = mt_checkpoint_find(checkpoint, name);
    if (!t)
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s' has no tensor '%s'",
                       display_path(checkpoint), name);
    if (t->dtype != MT_CHECKPOINT_F32)
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': tensor '%s' is %s, expected F32",
                       display_path(checkpoint), name, mt_checkpoint_dtype_name(t->dtype));
    bool shape_ok = t->count == count;
    if (shape) {
        shape_ok = shape_ok && t->rank == rank;
        for (int d = 0; shape_ok && d < rank; d++)
            shape_ok = t->shape[d] == (uint64_t)shape[d];
    }
    if (!shape_ok) {
        char have[160] = "", want[160] = "";
        size_t used = 0;
        for (int d = 0; d < t->rank && used < sizeof have - 24; d++)
            used += (size_t)snprintf(have + used, sizeof have - used, "%s%llu", d ? "," : "",
                                     (unsigned long long)t->shape[d]);
        used = 0;
        if (shape)
            for (int d = 0; d < rank && used < sizeof want - 24; d++)
                used += (size_t)snprintf(want + used, sizeof want - used, "%s%d", d ? "," : "",
                                         shape[d]);
        else
            snprintf(want, sizeof want, "%zu elements", count);
        return MT_FAIL(MT_ERR_FORMAT,
                       "checkpoint '%s': tensor '%s' has shape [%s], the model expects [%s] (a "
                       "checkpoint of another model configuration?)",
                       display_path(checkpoint), name, have, want);
    }
    if (t->bytes) memcpy(out, t->data, t->bytes);
    return MT_OK;
}

/* ---- the JSON header writer --------------------------------------------------------------- */

static void put_json_string(mt_text_buffer *b, const char *s) {
    mt_text_buffer_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            mt_text_buffer_append(b, "\\\"", 2);
        else if (c == '\\')
            mt_text_buffer_append(b, "\\\\", 2);
        else if (c == '\n')
            mt_text_buffer_append(b, "\\n", 2);
        else if (c == '\t')
            mt_text_buffer_append(b, "\\t", 2);
        else if (c == '\r')
            mt_text_buffer_append(b, "\\r", 2);
        else if (c < 0x20)
            mt_text_buffer_printf(b, "\\u%04x", c);
        else
            mt_text_buffer_append(b, p, 1);
    }
    mt_text_buffer_append(b, "\"", 1);
}

/* Data order: 8-byte types, then 4, then 1, so that every tensor is aligned to its element size
 * in the file (the format forbids gaps; this is also what the safetensors library does). */
static int data_order(const mt_checkpoint *checkpoint, int *order) {
    int n = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < checkpoint->count; i++)
            if (mt_checkpoint_dtype_size(checkpoint->tensors[i].dtype) == size) order[n++] = i;
    return n;
}

static mt_status build_header(const mt_checkpoint *checkpoint, const int *order,
                              mt_text_buffer *b) {
    mt_text_buffer_append_string(b, "{");
    bool first = true;
    if (checkpoint->meta_count > 0 || checkpoint->count > 0) {
        put_json_string(b, METADATA_KEY);
        mt_text_buffer_append_string(b, ":{");
        for (int i = 0; i < checkpoint->meta_count; i++) {
            if (i) mt_text_buffer_append_string(b, ",");
            put_json_string(b, checkpoint->meta_keys[i]);
            mt_text_buffer_append_string(b, ":");
            put_json_string(b, checkpoint->meta_values[i]);
        }
        for (int k = 0; k < checkpoint->count; k++) {
            const mt_checkpoint_tensor *t = &checkpoint->tensors[order[k]];
            if (strlen(t->name) + CRC_PREFIX_LENGTH >= MT_CHECKPOINT_NAME_MAX)
                return MT_FAIL(MT_ERR_INVALID,
                               "tensor name '%s' is too long for its checksum "
                               "entry (at most %d bytes)",
                               t->name, MT_CHECKPOINT_NAME_MAX - 1 - CRC_PREFIX_LENGTH);
            if (checkpoint->meta_count > 0 || k > 0) mt_text_buffer_append_string(b, ",");
            char key[MT_CHECKPOINT_NAME_MAX];
            snprintf(key, sizeof key, "%s%s", CRC_PREFIX, t->name);
            put_json_string(b, key);
            mt_text_buffer_printf(b, ":\"%08x\"", (unsigned)crc32_gzip_refl(0, t->data, t->bytes));
        }
        mt_text_buffer_append_string(b, "}");
        first = false;
    }
    uint64_t offset = 0;
    for (int k = 0; k < checkpoint->count; k++) {
        const mt_checkpoint_tensor *t = &checkpoint->tensors[order[k]];
        if (!first) mt_text_buffer_append_string(b, ",");
        first = false;
        put_json_string(b, t->name);
        mt_text_buffer_append_string(b, ":{\"dtype\":\"");
        mt_text_buffer_append_string(b, mt_checkpoint_dtype_name(t->dtype));
        mt_text_buffer_append_string(b, "\",\"shape\":[");
        for (int d = 0; d < t->rank; d++)
            mt_text_buffer_printf(b, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
        mt_text_buffer_printf(b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                              (unsigned long long)(offset + t->bytes));
        offset += t->bytes;
    }
    mt_text_buffer_append_string(b, "}");
    while (!b->failed && (b->size % 8) != 0)
        mt_text_buffer_append_string(b, " ");
    if (b->failed) return MT_FAIL(MT_ERR_NOMEM, "checkpoint header: out of memory");
    if (b->size > HEADER_MAX)
        return MT_FAIL(MT_ERR_INVALID, "checkpoint header of %zu bytes is over the format's limit",
                       b->size);
    return MT_OK;
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

static mt_status write_file(const mt_checkpoint *checkpoint, const int *order,
                            const mt_text_buffer *header, writer *w) {
    uint64_t length = header->size;
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(length >> (8 * i));
    MT_TRY(write_all(w, prefix, 8));
    MT_TRY(write_all(w, header->data, header->size));
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
    mt_text_buffer header = {0};
    mt_status status = build_header(checkpoint, order, &header);
    if (status != MT_OK) {
        free(order);
        mt_text_buffer_free(&header);
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
        status = write_file(checkpoint, order, &header, &w);
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
    mt_text_buffer_free(&header);
    return status;
}

/* ---- the JSON header reader ------------------------------------------------------------------ */

typedef struct parser {
    const char *start, *p, *end;
    const char *file;
    char tensor[96]; /* the tensor being parsed, for messages */
    mt_status status;
} parser;

static bool parse_error(parser *ps, const char *format, ...) __attribute__((format(printf, 2, 3)));

static bool parse_error(parser *ps, const char *format, ...) {
    if (ps->status != MT_OK) return false;
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (ps->tensor[0])
        ps->status = MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': corrupt header at tensor '%s': %s",
                             ps->file, ps->tensor, message);
    else
        ps->status =
            MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': corrupt header: %s", ps->file, message);
    return false;
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bool expect(parser *ps, char c) {
    skip_space(ps);
    if (ps->p >= ps->end || *ps->p != c)
        return parse_error(ps, "expected '%c' at header byte %td", c, ps->p - ps->start);
    ps->p++;
    return true;
}

/* Peek the next non-space character ('\0' at the end). */
static char peek(parser *ps) {
    skip_space(ps);
    return ps->p < ps->end ? *ps->p : '\0';
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(parser *ps, unsigned *out) {
    if (ps->end - ps->p < 4) return parse_error(ps, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(ps->p[i]);
        if (d < 0) return parse_error(ps, "bad \\u escape");
        v = v * 16 + (unsigned)d;
    }
    ps->p += 4;
    *out = v;
    return true;
}

/* A JSON string, decoded, as a new NUL-terminated string (NUL characters are refused). */
static char *parse_string(parser *ps) {
    if (!expect(ps, '"')) return NULL;
    mt_text_buffer b = {0};
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) {
            parse_error(ps, "control character in a string");
            mt_text_buffer_free(&b);
            return NULL;
        }
        if (c != '\\') {
            const char *run = ps->p;
            while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' &&
                   (unsigned char)*ps->p >= 0x20)
                ps->p++;
            mt_text_buffer_append(&b, run, (size_t)(ps->p - run));
            continue;
        }
        ps->p++;
        if (ps->p >= ps->end) break;
        char e = *ps->p++;
        char utf8[4];
        size_t n = 1;
        switch (e) {
        case '"':
            utf8[0] = '"';
            break;
        case '\\':
            utf8[0] = '\\';
            break;
        case '/':
            utf8[0] = '/';
            break;
        case 'b':
            utf8[0] = '\b';
            break;
        case 'f':
            utf8[0] = '\f';
            break;
        case 'n':
            utf8[0] = '\n';
            break;
        case 'r':
            utf8[0] = '\r';
            break;
        case 't':
            utf8[0] = '\t';
            break;
        case 'u': {
            unsigned cp;
            if (!read_hex4(ps, &cp)) break;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned low;
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    parse_error(ps, "unpaired surrogate in \\u escape");
                    break;
                }
                ps->p += 2;
                if (!read_hex4(ps, &low)) break;
                if (low < 0xDC00 || low > 0xDFFF) {
                    parse_error(ps, "unpaired surrogate in \\u escape");
                    break;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                parse_error(ps, "unpaired surrogate in \\u escape");
                break;
            }
            if (cp == 0) {
                parse_error(ps, "NUL character in a string");
                break;
            }
            if (cp < 0x80)
                utf8[0] = (char)cp;
            else if (cp < 0x800) {
                utf8[0] = (char)(0xC0 | (cp >> 6));
                utf8[1] = (char)(0x80 | (cp & 0x3F));
                n = 2;
            } else if (cp < 0x10000) {
                utf8[0] = (char)(0xE0 | (cp >> 12));
                utf8[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                utf8[2] = (char)(0x80 | (cp & 0x3F));
                n = 3;
            } else {
                utf8[0] = (char)(0xF0 | (cp >> 18));
                utf8[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                utf8[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                utf8[3] = (char)(0x80 | (cp & 0x3F));
                n = 4;
            }
            break;
        }
        default:
            parse_error(ps, "bad escape '\\%c'", e);
        }
        if (ps->status != MT_OK) break;
        mt_text_buffer_append(&b, utf8, n);
    }
    if (ps->status == MT_OK && ps->p >= ps->end) parse_error(ps, "unterminated string");
    if (ps->status != MT_OK) {
        mt_text_buffer_free(&b);
        return NULL;
    }
    size_t size;
    char *text = mt_text_buffer_take(&b, &size);
    if (!text) {
        ps->status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    ps->p++; /* the closing quote */
    if (!utf8_valid((const unsigned char *)text, size)) {
        parse_error(ps, "a string is not valid UTF-8");
        free(text);
        return NULL;
    }
    return text;
}

/* A non-negative integer without sign, fraction or exponent. */
static bool parse_uint(parser *ps, uint64_t *out) {
    skip_space(ps);
    const char *start = ps->p;
    uint64_t v = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        unsigned d = (unsigned)(*ps->p - '0');
        if (v > (UINT64_MAX - d) / 10) return parse_error(ps, "integer too large");
        v = v * 10 + d;
        ps->p++;
    }
    if (ps->p == start) return parse_error(ps, "expected a non-negative integer");
    if (ps->p - start > 1 && start[0] == '0') return parse_error(ps, "integer with a leading 0");
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return parse_error(ps, "expected an integer, found a fraction");
    *out = v;
    return true;
}

/* [n, n, ...] with at most `max` entries. */
static bool parse_uint_array(parser *ps, uint64_t *values, int max, int *count) {
    if (!expect(ps, '[')) return false;
    *count = 0;
    if (peek(ps) == ']') return expect(ps, ']');
    for (;;) {
        if (*count == max) return parse_error(ps, "more than %d entries in an array", max);
        if (!parse_uint(ps, &values[(*count)++])) return false;
        char c = peek(ps);
        if (c == ']') return expect(ps, ']');
        if (!expect(ps, ',')) return false;
    }
}

typedef struct parsed_tensor {
    char *name;
    mt_checkpoint_dtype dtype;
    int rank;
    uint64_t shape[MT_CHECKPOINT_MAX_RANK];
    uint64_t begin, end;
} parsed_tensor;

static bool parse_tensor(parser *ps, parsed_tensor *t) {
    if (!expect(ps, '{')) return false;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    if (peek(ps) != '}') {
        for (;;) {
            char *field = parse_string(ps);
            if (!field) return false;
            bool ok = expect(ps, ':');
            if (ok && strcmp(field, "dtype") == 0 && !have_dtype) {
                char *dtype = parse_string(ps);
                ok = dtype != NULL;
                if (ok && !dtype_parse(dtype, &t->dtype))
                    ok = parse_error(ps,
                                     "dtype '%.16s' is not one mobiletune reads (F32, U8, I64, "
                                     "U64)",
                                     dtype);
                free(dtype);
                have_dtype = true;
            } else if (ok && strcmp(field, "shape") == 0 && !have_shape) {
                ok = parse_uint_array(ps, t->shape, MT_CHECKPOINT_MAX_RANK, &t->rank);
                have_shape = true;
            } else if (ok && strcmp(field, "data_offsets") == 0 && !have_offsets) {
                uint64_t offsets[2];
                int n = 0;
                ok = parse_uint_array(ps, offsets, 2, &n);
                if (ok && n != 2) ok = parse_error(ps, "data_offsets needs [begin, end]");
                t->begin = offsets[0];
                t->end = offsets[1];
                have_offsets = true;
            } else if (ok) {
                ok = parse_error(ps, "unexpected or repeated field '%.32s'", field);
            }
            free(field);
            if (!ok) return false;
            if (peek(ps) == '}') break;
            if (!expect(ps, ',')) return false;
        }
    }
    if (!expect(ps, '}')) return false;
    if (!have_dtype || !have_shape || !have_offsets)
        return parse_error(ps, "missing %s",
                           !have_dtype   ? "dtype"
                           : !have_shape ? "shape"
                                         : "data_offsets");
    return true;
}

static bool parse_metadata(parser *ps, mt_checkpoint *checkpoint) {
    if (!expect(ps, '{')) return false;
    if (peek(ps) == '}') return expect(ps, '}');
    for (;;) {
        char *key = parse_string(ps);
        if (!key) return false;
        if (!expect(ps, ':')) {
            free(key);
            return false;
        }
        if (peek(ps) != '"') {
            free(key);
            return parse_error(ps, "metadata values must be strings");
        }
        char *value = parse_string(ps);
        if (!value) {
            free(key);
            return false;
        }
        if (mt_checkpoint_meta(checkpoint, key)) {
            parse_error(ps, "metadata key '%.64s' appears twice", key);
            free(key);
            free(value);
            return false;
        }
        if (meta_put(checkpoint, key, value) != MT_OK) {
            ps->status = MT_ERR_NOMEM;
            return false;
        }
        if (peek(ps) == '}') return expect(ps, '}');
        if (!expect(ps, ',')) return false;
    }
}

static int compare_begin(const void *a, const void *b) {
    const parsed_tensor *x = *(parsed_tensor *const *)a, *y = *(parsed_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Everything the header says about the data, checked against the data's size. */
static mt_status validate_layout(parser *ps, parsed_tensor *tensors, int count,
                                 uint64_t data_size) {
    for (int i = 0; i < count; i++) {
        parsed_tensor *t = &tensors[i];
        uint64_t elements, bytes;
        if (!element_count(t->rank, t->shape, t->dtype, &elements, &bytes))
            return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': tensor '%s': shape overflows", ps->file,
                           t->name);
        if (t->end < t->begin || t->end > data_size)
            return MT_FAIL(MT_ERR_FORMAT,
                           "checkpoint '%s': tensor '%s': data_offsets [%llu, %llu] outside the "
                           "%llu data bytes (truncated file?)",
                           ps->file, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end, (unsigned long long)data_size);
        if (t->end - t->begin != bytes)
            return MT_FAIL(MT_ERR_FORMAT,
                           "checkpoint '%s': tensor '%s': data_offsets hold %llu bytes, but %s "
                           "with %llu elements needs %llu",
                           ps->file, t->name, (unsigned long long)(t->end - t->begin),
                           mt_checkpoint_dtype_name(t->dtype), (unsigned long long)elements,
                           (unsigned long long)bytes);
    }
    parsed_tensor **sorted = malloc(((size_t)count + 1) * sizeof *sorted);
    if (!sorted) return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", ps->file);
    for (int i = 0; i < count; i++)
        sorted[i] = &tensors[i];
    qsort(sorted, (size_t)count, sizeof *sorted, compare_begin);
    uint64_t at = 0;
    mt_status status = MT_OK;
    for (int i = 0; i < count && status == MT_OK; i++) {
        if (sorted[i]->begin < at)
            status = MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': tensors '%s' and '%s' overlap",
                             ps->file, sorted[i - 1]->name, sorted[i]->name);
        else if (sorted[i]->begin > at)
            status =
                MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': a gap of %llu bytes before tensor '%s'",
                        ps->file, (unsigned long long)(sorted[i]->begin - at), sorted[i]->name);
        at = sorted[i]->end;
    }
    if (status == MT_OK && at != data_size)
        status = MT_FAIL(MT_ERR_FORMAT,
                         "checkpoint '%s': %llu data bytes, but the tensors end at %llu (trailing "
                         "garbage or a damaged header)",
                         ps->file, (unsigned long long)data_size, (unsigned long long)at);
    free(sorted);
    return status;
}

static mt_status parse_header(parser *ps, mt_checkpoint *checkpoint, parsed_tensor **out,
                              int *out_count) {
    int count = 0, capacity = 0;
    parsed_tensor *tensors = NULL;
    bool have_meta = false, ok = expect(ps, '{');
    if (ok && peek(ps) != '}') {
        for (;;) {
            char *name = parse_string(ps);
            if (!name || !expect(ps, ':')) {
                free(name);
                ok = false;
                break;
            }
            if (strcmp(name, METADATA_KEY) == 0) {
                free(name);
                if (have_meta)
                    ok = parse_error(ps, "two __metadata__ entries");
                else
                    ok = parse_metadata(ps, checkpoint);
                have_meta = true;
            } else {
                snprintf(ps->tensor, sizeof ps->tensor, "%.80s", name);
                bool duplicate = false;
                for (int i = 0; i < count && !duplicate; i++)
                    duplicate = strcmp(tensors[i].name, name) == 0;
                if (duplicate || strlen(name) >= MT_CHECKPOINT_NAME_MAX) {
                    ok = parse_error(ps, duplicate ? "the name appears twice" : "name too long");
                    free(name);
                } else {
                    if (count == capacity) {
                        capacity = capacity ? 2 * capacity : 64;
                        parsed_tensor *grown = realloc(tensors, (size_t)capacity * sizeof *grown);
                        if (!grown) {
                            free(name);
                            ps->status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
                            ok = false;
                            break;
                        }
                        tensors = grown;
                    }
                    tensors[count] = (parsed_tensor){.name = name};
                    ok = parse_tensor(ps, &tensors[count]);
                    count++;
                }
                ps->tensor[0] = '\0';
            }
            if (!ok) break;
            if (peek(ps) == '}') break;
            if (!expect(ps, ',')) {
                ok = false;
                break;
            }
        }
    }
    if (ok) ok = expect(ps, '}');
    if (ok) {
        skip_space(ps);
        if (ps->p != ps->end) ok = parse_error(ps, "bytes after the header's closing '}'");
    }
    *out = tensors;
    *out_count = count;
    return ok ? MT_OK : ps->status;
}

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
 * file without any (written by another tool) is read as it is, and `mobiletune verify` says so. */
static mt_status verify_checksums(mt_checkpoint *checkpoint) {
    const char *path = checkpoint->path;
    int kept = 0, found = 0;
    mt_status status = MT_OK;
    for (int i = 0; i < checkpoint->meta_count; i++) {
        char *key = checkpoint->meta_keys[i], *value = checkpoint->meta_values[i];
        if (strncmp(key, CRC_PREFIX, CRC_PREFIX_LENGTH) != 0) {
            checkpoint->meta_keys[kept] = key;
            checkpoint->meta_values[kept++] = value;
            continue;
        }
        const char *name = key + CRC_PREFIX_LENGTH;
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

int mt_checkpoint_checksums_verified(const mt_checkpoint *checkpoint) {
    return checkpoint->checksums_verified;
}

mt_status mt_checkpoint_check_finite(const mt_checkpoint *checkpoint, const char *name) {
    for (int i = 0; i < checkpoint->count; i++) {
        const mt_checkpoint_tensor *t = &checkpoint->tensors[i];
        if (t->dtype != MT_CHECKPOINT_F32 || (name && strcmp(name, t->name) != 0)) continue;
        const float *x = t->data;
        for (uint64_t k = 0; k < t->count; k++)
            if (!isfinite(x[k]))
                return MT_FAIL(MT_ERR_FORMAT,
                               "checkpoint '%s': tensor '%s' holds %g at index "
                               "%llu: non-finite weights are refused (a damaged file or a run "
                               "that diverged; use an earlier checkpoint)",
                               display_path(checkpoint), t->name, (double)x[k],
                               (unsigned long long)k);
    }
    return MT_OK;
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
    if (header_size < 2 || header_size > HEADER_MAX || header_size > size - 8)
        return MT_FAIL(MT_ERR_FORMAT,
                       "checkpoint '%s': header length %llu does not fit a %llu-byte file "
                       "(truncated or not a safetensors file)",
                       path, (unsigned long long)header_size, (unsigned long long)size);
    char *header = malloc((size_t)header_size + 1);
    if (!header) return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", path);
    mt_status status = read_exact(fd, header, (size_t)header_size, 8, path);
    if (status == MT_OK && header[0] != '{')
        status = MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': the header is not a JSON object", path);
    parsed_tensor *tensors = NULL;
    int count = 0;
    parser ps = {
        .start = header, .p = header, .end = header + header_size, .file = path, .status = MT_OK};
    if (status == MT_OK) status = parse_header(&ps, checkpoint, &tensors, &count);
    uint64_t data_size = size - 8 - header_size;
    if (status == MT_OK) status = validate_layout(&ps, tensors, count, data_size);
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
            parsed_tensor *p = &tensors[i];
            mt_checkpoint_tensor *t = &checkpoint->tensors[checkpoint->count++];
            uint64_t bytes = 0;
            element_count(p->rank, p->shape, p->dtype, &t->count, &bytes);
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
