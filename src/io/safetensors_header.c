/* The safetensors JSON header, written and read with libjansson: strict on reading (duplicate
 * keys, invalid UTF-8 and NUL characters refused by the parser itself; then only this header's
 * shape: an object of tensor objects and one string map), and every tensor's place checked
 * against the data that follows, so a damaged header never reaches the model. */
#include "io/safetensors_internal.h"

#include <isa-l/crc.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- writing ------------------------------------------------------------------------------- */

/* json_object_set_new() and json_array_append_new() take the value's reference even when they
 * fail, so a failure anywhere only has to be remembered, and the tree freed once. */
static void put(json_t *object, const char *key, json_t *value, bool *ok) {
    if (json_object_set_new(object, key, value) != 0) *ok = false;
}

static void append(json_t *array, json_t *value, bool *ok) {
    if (json_array_append_new(array, value) != 0) *ok = false;
}

static json_t *metadata_json(const mt_checkpoint *checkpoint, const int *order, bool *ok) {
    json_t *meta = json_object();
    if (!meta) *ok = false;
    for (int i = 0; meta && i < checkpoint->meta_count; i++)
        put(meta, checkpoint->meta_keys[i], json_string(checkpoint->meta_values[i]), ok);
    for (int k = 0; meta && k < checkpoint->count; k++) {
        const mt_checkpoint_tensor *t = &checkpoint->tensors[order[k]];
        char key[MT_SAFETENSORS_CRC_PREFIX_LENGTH + MT_CHECKPOINT_NAME_MAX], crc[16];
        snprintf(key, sizeof key, "%s%s", MT_SAFETENSORS_CRC_PREFIX, t->name);
        snprintf(crc, sizeof crc, "%08x", (unsigned)crc32_gzip_refl(0, t->data, t->bytes));
        put(meta, key, json_string(crc), ok);
    }
    return meta;
}

static json_t *tensor_json(const mt_checkpoint_tensor *t, uint64_t offset, bool *ok) {
    json_t *tensor = json_object(), *shape = json_array(), *offsets = json_array();
    if (!tensor || !shape || !offsets) {
        json_decref(tensor), json_decref(shape), json_decref(offsets);
        *ok = false;
        return NULL;
    }
    put(tensor, "dtype", json_string(mt_checkpoint_dtype_name(t->dtype)), ok);
    /* dimensions and offsets are below 2^63 (mt_checkpoint_add), so json_int_t holds them */
    for (int d = 0; d < t->rank; d++)
        append(shape, json_integer((json_int_t)t->shape[d]), ok);
    put(tensor, "shape", shape, ok);
    append(offsets, json_integer((json_int_t)offset), ok);
    append(offsets, json_integer((json_int_t)(offset + t->bytes)), ok);
    put(tensor, "data_offsets", offsets, ok);
    return tensor;
}

mt_status mt_safetensors_header_build(const mt_checkpoint *checkpoint, const int *order, char **out,
                                      size_t *size) {
    *out = NULL;
    *size = 0;
    for (int k = 0; k < checkpoint->count; k++) {
        const char *name = checkpoint->tensors[order[k]].name;
        if (strlen(name) + MT_SAFETENSORS_CRC_PREFIX_LENGTH >= MT_CHECKPOINT_NAME_MAX)
            return MT_FAIL(MT_ERR_INVALID,
                           "tensor name '%s' is too long for its checksum "
                           "entry (at most %d bytes)",
                           name, MT_CHECKPOINT_NAME_MAX - 1 - MT_SAFETENSORS_CRC_PREFIX_LENGTH);
    }
    bool ok = true;
    json_t *root = json_object();
    if (!root) return MT_FAIL(MT_ERR_NOMEM, "checkpoint header: out of memory");
    /* the metadata first, as the safetensors library writes it */
    if (checkpoint->meta_count > 0 || checkpoint->count > 0)
        put(root, MT_SAFETENSORS_METADATA_KEY, metadata_json(checkpoint, order, &ok), &ok);
    uint64_t offset = 0;
    for (int k = 0; k < checkpoint->count; k++) {
        const mt_checkpoint_tensor *t = &checkpoint->tensors[order[k]];
        put(root, t->name, tensor_json(t, offset, &ok), &ok);
        offset += t->bytes;
    }
    /* names and values were checked as UTF-8 when added, so a failure is memory */
    char *text = ok ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text) return MT_FAIL(MT_ERR_NOMEM, "checkpoint header: out of memory");
    size_t length = strlen(text), padded = (length + 7) / 8 * 8;
    if (padded > MT_SAFETENSORS_HEADER_MAX) {
        free(text);
        return MT_FAIL(MT_ERR_INVALID, "checkpoint header of %zu bytes is over the format's limit",
                       padded);
    }
    char *grown = realloc(text, padded + 1);
    if (!grown) {
        free(text);
        return MT_FAIL(MT_ERR_NOMEM, "checkpoint header: out of memory");
    }
    memset(grown + length, ' ', padded - length);
    grown[padded] = '\0';
    *out = grown;
    *size = padded;
    return MT_OK;
}

/* ---- reading ------------------------------------------------------------------------------- */

typedef struct reader {
    const char *path;
    const char *tensor; /* the tensor being read, for messages */
} reader;

static mt_status corrupt(const reader *r, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static mt_status corrupt(const reader *r, const char *format, ...) {
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (r->tensor)
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': corrupt header at tensor '%.80s': %s",
                       r->path, r->tensor, message);
    return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': corrupt header: %s", r->path, message);
}

/* jansson's message (which quotes the text near the error), with ours in front where it is
 * terse about the rule, or instead where it names a parser flag rather than the problem. */
static mt_status syntax_error(const reader *r, const json_error_t *error) {
    const char *what = error->text;
    bool quote = true;
    switch (json_error_code(error)) {
    case json_error_out_of_memory:
        return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory for the header", r->path);
    case json_error_end_of_input_expected:
        what = "bytes after the header's closing '}'";
        break;
    case json_error_duplicate_key:
        what = "a tensor or metadata name appears twice";
        break;
    case json_error_null_character:
        what = "a NUL character (\\u0000) in a string";
        quote = false;
        break;
    case json_error_invalid_utf8:
        what = "a string is not valid UTF-8";
        break;
    default:
        break;
    }
    if (quote && what != error->text)
        return corrupt(r, "%s (%s) at header byte %d", what, error->text, error->position);
    return corrupt(r, "%s at header byte %d", what, error->position);
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

/* [n, n, ...] of non-negative integers, at most `max` of them. */
static mt_status uint_array(const reader *r, const char *field, const json_t *array,
                            uint64_t *values, int max, int *count) {
    if (!json_is_array(array)) return corrupt(r, "%s is not an array", field);
    if (json_array_size(array) > (size_t)max)
        return corrupt(r, "more than %d entries in %s", max, field);
    *count = (int)json_array_size(array);
    for (int i = 0; i < *count; i++) {
        const json_t *v = json_array_get(array, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return corrupt(r, "%s holds something other than a non-negative integer", field);
        values[i] = (uint64_t)json_integer_value(v);
    }
    return MT_OK;
}

static mt_status parse_tensor(const reader *r, const json_t *object, mt_safetensors_entry *t) {
    if (!json_is_object(object)) return corrupt(r, "a tensor is not a JSON object");
    const char *field;
    const json_t *value;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    json_object_foreach((json_t *)object, field, value) {
        if (strcmp(field, "dtype") == 0) {
            const char *dtype = json_string_value(value);
            if (!dtype) return corrupt(r, "dtype is not a string");
            if (!dtype_parse(dtype, &t->dtype))
                return corrupt(r, "dtype '%.16s' is not one mobiletune reads (F32, U8, I64, U64)",
                               dtype);
            have_dtype = true;
        } else if (strcmp(field, "shape") == 0) {
            MT_TRY(uint_array(r, "shape", value, t->shape, MT_CHECKPOINT_MAX_RANK, &t->rank));
            have_shape = true;
        } else if (strcmp(field, "data_offsets") == 0) {
            uint64_t offsets[2];
            int n = 0;
            MT_TRY(uint_array(r, "data_offsets", value, offsets, 2, &n));
            if (n != 2) return corrupt(r, "data_offsets needs [begin, end]");
            t->begin = offsets[0];
            t->end = offsets[1];
            have_offsets = true;
        } else {
            return corrupt(r, "unexpected field '%.32s'", field);
        }
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return corrupt(r, "missing %s",
                       !have_dtype   ? "dtype"
                       : !have_shape ? "shape"
                                     : "data_offsets");
    return MT_OK;
}

static mt_status parse_metadata(const reader *r, const json_t *object, mt_checkpoint *checkpoint) {
    if (!json_is_object(object)) return corrupt(r, "__metadata__ is not a JSON object");
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)object, key, value) {
        if (!json_is_string(value)) return corrupt(r, "metadata values must be strings");
        char *k = strdup(key), *v = strdup(json_string_value(value));
        if (!k || !v) {
            free(k);
            free(v);
            return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", r->path);
        }
        MT_TRY(mt_safetensors_meta_put(checkpoint, k, v));
    }
    return MT_OK;
}

static int compare_begin(const void *a, const void *b) {
    const mt_safetensors_entry *x = *(mt_safetensors_entry *const *)a;
    const mt_safetensors_entry *y = *(mt_safetensors_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Everything the header says about the data, checked against the data's size. */
static mt_status validate_layout(const char *path, mt_safetensors_entry *tensors, int count,
                                 uint64_t data_size) {
    for (int i = 0; i < count; i++) {
        mt_safetensors_entry *t = &tensors[i];
        uint64_t elements, bytes;
        if (!mt_safetensors_element_count(t->rank, t->shape, t->dtype, &elements, &bytes))
            return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': tensor '%s': shape overflows", path,
                           t->name);
        if (t->end < t->begin || t->end > data_size)
            return MT_FAIL(MT_ERR_FORMAT,
                           "checkpoint '%s': tensor '%s': data_offsets [%llu, %llu] outside the "
                           "%llu data bytes (truncated file?)",
                           path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)data_size);
        if (t->end - t->begin != bytes)
            return MT_FAIL(MT_ERR_FORMAT,
                           "checkpoint '%s': tensor '%s': data_offsets hold %llu bytes, but %s "
                           "with %llu elements needs %llu",
                           path, t->name, (unsigned long long)(t->end - t->begin),
                           mt_checkpoint_dtype_name(t->dtype), (unsigned long long)elements,
                           (unsigned long long)bytes);
    }
    mt_safetensors_entry **sorted = malloc(((size_t)count + 1) * sizeof *sorted);
    if (!sorted) return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", path);
    for (int i = 0; i < count; i++)
        sorted[i] = &tensors[i];
    qsort(sorted, (size_t)count, sizeof *sorted, compare_begin);
    uint64_t at = 0;
    mt_status status = MT_OK;
    for (int i = 0; i < count && status == MT_OK; i++) {
        if (sorted[i]->begin < at)
            status = MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': tensors '%s' and '%s' overlap", path,
                             sorted[i - 1]->name, sorted[i]->name);
        else if (sorted[i]->begin > at)
            status =
                MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': a gap of %llu bytes before tensor '%s'",
                        path, (unsigned long long)(sorted[i]->begin - at), sorted[i]->name);
        at = sorted[i]->end;
    }
    if (status == MT_OK && at != data_size)
        status = MT_FAIL(MT_ERR_FORMAT,
                         "checkpoint '%s': %llu data bytes, but the tensors end at %llu (trailing "
                         "garbage or a damaged header)",
                         path, (unsigned long long)data_size, (unsigned long long)at);
    free(sorted);
    return status;
}

static mt_status parse_root(reader *r, const json_t *root, mt_checkpoint *checkpoint,
                            mt_safetensors_entry *tensors, int *count) {
    const char *name;
    const json_t *value;
    json_object_foreach((json_t *)root, name, value) {
        if (strcmp(name, MT_SAFETENSORS_METADATA_KEY) == 0) {
            MT_TRY(parse_metadata(r, value, checkpoint));
            continue;
        }
        r->tensor = name;
        if (strlen(name) >= MT_CHECKPOINT_NAME_MAX) return corrupt(r, "name too long");
        mt_safetensors_entry *t = &tensors[*count];
        *t = (mt_safetensors_entry){.name = strdup(name)};
        if (!t->name) return MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", r->path);
        (*count)++;
        MT_TRY(parse_tensor(r, value, t));
        r->tensor = NULL;
    }
    return MT_OK;
}

mt_status mt_safetensors_header_parse(const char *path, const char *header, size_t size,
                                      uint64_t data_size, mt_checkpoint *checkpoint,
                                      mt_safetensors_entry **out, int *out_count) {
    *out = NULL;
    *out_count = 0;
    reader r = {.path = path};
    if (size == 0 || header[0] != '{')
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': the header is not a JSON object", path);
    json_error_t error;
    /* duplicate names are refused by the parser: JSON leaves them undefined, we would keep one */
    json_t *root = json_loadb(header, size, JSON_REJECT_DUPLICATES, &error);
    if (!root) return syntax_error(&r, &error);
    mt_status status = MT_OK;
    mt_safetensors_entry *tensors = calloc(json_object_size(root) + 1, sizeof *tensors);
    if (!tensors) status = MT_FAIL(MT_ERR_NOMEM, "checkpoint '%s': out of memory", path);
    int count = 0;
    if (status == MT_OK) status = parse_root(&r, root, checkpoint, tensors, &count);
    json_decref(root);
    if (status == MT_OK) status = validate_layout(path, tensors, count, data_size);
    *out = tensors;
    *out_count = count;
    return status;
}
