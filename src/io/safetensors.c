/* safetensors checkpoints, the in-memory object: building one tensor by tensor, the metadata,
 * the lookups and the typed reads the trainer and the commands use, the finiteness check. The
 * JSON header is in safetensors_header.c, the atomic write and the validating read in
 * safetensors_file.c. */
#include "io/safetensors_internal.h"

#include "core/utf8.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (!mt_utf8_valid(name, len))
        return MT_FAIL(MT_ERR_INVALID, "checkpoint %s '%.40s': not valid UTF-8", what, name);
    return MT_OK;
}

const mt_checkpoint_tensor *mt_checkpoint_find(const mt_checkpoint *checkpoint, const char *name) {
    for (int i = 0; i < checkpoint->count; i++)
        if (strcmp(checkpoint->tensors[i].name, name) == 0) return &checkpoint->tensors[i];
    return NULL;
}

bool mt_safetensors_element_count(int rank, const uint64_t *shape, mt_checkpoint_dtype dtype,
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
    if (strcmp(name, MT_SAFETENSORS_METADATA_KEY) == 0)
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
    uint64_t count = 0, bytes = 0;
    bool fits =
        mt_safetensors_element_count(rank, shape, dtype, &count, &bytes) && bytes <= SIZE_MAX / 2;
    /* JSON readers (jansson, Python's json into int64 tools) take dimensions below 2^63 */
    for (int d = 0; d < rank; d++)
        fits = fits && shape[d] <= (uint64_t)INT64_MAX;
    if (!fits) return MT_FAIL(MT_ERR_INVALID, "checkpoint tensor '%s': shape too large", name);
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

mt_status mt_safetensors_meta_put(mt_checkpoint *checkpoint, char *key, char *value) {
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
    if (strncmp(key, MT_SAFETENSORS_CRC_PREFIX, MT_SAFETENSORS_CRC_PREFIX_LENGTH) == 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "checkpoint metadata key '%s': the prefix '%s' is reserved "
                       "for the tensors' checksums",
                       key, MT_SAFETENSORS_CRC_PREFIX);
    if (!mt_utf8_valid(value, strlen(value)))
        return MT_FAIL(MT_ERR_INVALID, "checkpoint metadata '%s': value is not valid UTF-8", key);
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return MT_FAIL(MT_ERR_NOMEM, "checkpoint metadata: out of memory");
    }
    return mt_safetensors_meta_put(checkpoint, k, v);
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
