/* The Keras weights reader: index every float dataset of an HDF5 file once at open as
 * (group, layer, weight), then serve reads by Keras layer and weight name whatever layout the file
 * has (save_weights, whole-model model.save, Keras 3). See keras_h5.h and docs/weights.md.
 * About 600 lines: the index walk and the reads share the file's one HDF5 handle and its
 * layout rules, so they stay together. */
#include "mobiletune/keras_h5.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/h5_util.h"
#include "mobiletune/files.h"

typedef struct entry {
    mt_keras_h5_tensor pub; /* pub.path starts the one allocation holding all four strings */
    int var_index;          /* Keras 3 "vars/<i>": i; -1 in the named layouts */
    char *alias;            /* Keras 3: the layer name given by mt_keras_h5_name_keras3_layers */
    bool ignored;           /* under an optimizer group: indexed for nothing */
} entry;

struct mt_keras_h5 {
    char *path;
    hid_t file;
    entry *entries;
    size_t entry_count, entry_capacity;
    char *selected; /* group filter; NULL when none */
    size_t *view;   /* indices of the entries in the selection, in index order */
    size_t view_count;
};

/* ---- helpers ------------------------------------------------------------------------------ */

static void format_shape(char *buffer, size_t size, const int64_t *shape, int rank) {
    size_t used = 0;
    used += (size_t)snprintf(buffer, size, "(");
    for (int i = 0; i < rank && used < size; i++)
        used += (size_t)snprintf(buffer + used, size - used, i ? ", %lld" : "%lld",
                                 (long long)shape[i]);
    if (used < size) snprintf(buffer + used, size - used, rank == 1 ? ",)" : ")");
}

/* Weight name without a trailing ":0" (Keras 2 appends the TF output index). */
static size_t weight_length(const char *weight) {
    size_t n = strlen(weight);
    if (n > 2 && weight[n - 2] == ':' && weight[n - 1] == '0') n -= 2;
    return n;
}

/* Position of a weight in Keras' creation order, which is what a Keras 3 ".weights.h5" file keeps
 * instead of names (layers/<layer>/vars/<i>); -1 for a name outside MobileNetV2's set. */
static int keras_var_position(const char *weight, size_t length) {
    static const struct {
        const char *name;
        int position;
    } order[] = {{"kernel", 0}, {"depthwise_kernel", 0}, {"gamma", 0},          {"bias", 1},
                 {"beta", 1},   {"moving_mean", 2},      {"moving_variance", 3}};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (strlen(order[i].name) == length && memcmp(order[i].name, weight, length) == 0)
            return order[i].position;
    return -1;
}

static bool is_digits(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

static bool in_group(const char *path, const char *group) {
    size_t n = strlen(group);
    return strncmp(path, group, n) == 0 && path[n] == '/';
}

/* ---- indexing ----------------------------------------------------------------------------- */

typedef struct visit_state {
    mt_keras_h5 *file;
    mt_status status;
    char message[1024]; /* the failure's own text: H5Lvisit's failure overwrites the last error */
} visit_state;

/* Split a dataset path into group/layer/weight (see keras_h5.h for the layouts) and append it. */
static mt_status add_entry(mt_keras_h5 *file, const char *path, const int64_t *shape, int rank,
                           int bits) {
    enum { MAX_PARTS = 64 };
    size_t length = strlen(path);
    const char *parts[MAX_PARTS]; /* start of each "/"-separated component of path */
    size_t part_length[MAX_PARTS];
    int n = 0;
    for (const char *p = path; n < MAX_PARTS;) {
        const char *slash = strchr(p, '/');
        parts[n] = p;
        part_length[n] = slash ? (size_t)(slash - p) : strlen(p);
        n++;
        if (!slash) break;
        p = slash + 1;
    }
    bool keras3 = n >= 4 && part_length[n - 2] == 4 && strncmp(parts[n - 2], "vars", 4) == 0 &&
                  is_digits(parts[n - 1]) &&
                  ((part_length[n - 4] == 6 && strncmp(parts[n - 4], "layers", 6) == 0) ||
                   (part_length[n - 4] == 30 &&
                    strncmp(parts[n - 4], "_layer_checkpoint_dependencies", 30) == 0));
    int layer_part = keras3 ? n - 3 : n - 2; /* -1: a dataset at the root, no layer */
    size_t group_length = layer_part > 0 ? (size_t)(parts[layer_part] - path) - 1 : 0;
    const char *layer = layer_part >= 0 ? parts[layer_part] : "";
    size_t layer_length = layer_part >= 0 ? part_length[layer_part] : 0;
    const char *weight = keras3 ? parts[n - 2] : parts[n - 1]; /* "vars/<i>" or "kernel:0" */
    size_t weight_chars = keras3 ? strlen(weight) : weight_length(weight);

    /* One allocation: path, group, layer, weight, each NUL-terminated. */
    char *storage = malloc(length + group_length + layer_length + weight_chars + 4);
    if (!storage) return MT_FAIL(MT_ERR_NOMEM, "out of memory indexing '%s'", file->path);
    char *cursor = storage;
    memcpy(cursor, path, length + 1);
    cursor += length + 1;
    char *group_out = cursor;
    memcpy(cursor, path, group_length);
    cursor[group_length] = '\0';
    cursor += group_length + 1;
    char *layer_out = cursor;
    memcpy(cursor, layer, layer_length);
    cursor[layer_length] = '\0';
    cursor += layer_length + 1;
    char *weight_out = cursor;
    memcpy(cursor, weight, weight_chars);
    cursor[weight_chars] = '\0';
    int var_index = keras3 ? atoi(parts[n - 1]) : -1;

    if (file->entry_count == file->entry_capacity) {
        size_t capacity = file->entry_capacity ? 2 * file->entry_capacity : 256;
        entry *grown = realloc(file->entries, capacity * sizeof *grown);
        if (!grown) {
            free(storage);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory indexing '%s'", file->path);
        }
        file->entries = grown;
        file->entry_capacity = capacity;
    }
    entry *e = &file->entries[file->entry_count++];
    memset(e, 0, sizeof *e);
    e->pub.path = storage;
    e->pub.group = group_out;
    e->pub.layer = layer_out;
    e->pub.weight = weight_out;
    e->pub.rank = rank;
    /* The dimensions come from the file: a crafted one can multiply past int64 (undefined
     * behaviour in C), so the count is built with checked arithmetic. */
    int64_t count = 1;
    for (int i = 0; i < rank; i++) {
        e->pub.shape[i] = shape[i];
        if (shape[i] < 0 || __builtin_mul_overflow(count, shape[i], &count)) {
            char text[160];
            format_shape(text, sizeof text, shape, rank);
            file->entry_count--;
            free(storage);
            return MT_FAIL(MT_ERR_FORMAT,
                           "weights file '%s': dataset '%s' has shape %s, more values than a "
                           "64-bit count holds: the file is corrupt or crafted",
                           file->path, path, text);
        }
    }
    e->pub.count = count;
    e->pub.bits = bits;
    e->var_index = var_index;
    e->ignored =
        strncmp(path, "optimizer_weights/", 18) == 0 || strncmp(path, "optimizer/", 10) == 0;
    return MT_OK;
}

static herr_t visit_link(hid_t root, const char *name, const H5L_info_t *info, void *data) {
    visit_state *state = data;
    if (info->type != H5L_TYPE_HARD) return 0; /* soft/external links: not Keras' */
    hid_t object = H5_CHECK(H5Oopen(root, name, H5P_DEFAULT));
    if (object < 0) {
        state->status = mt_error_context(MT_ERR_FORMAT, "object '%s'", name);
        return -1;
    }
    hid_t space = -1, type = -1;
    herr_t result = 0;
    H5I_type_t kind = (H5I_type_t)H5_CHECK(H5Iget_type(object));
    if (kind < 0) {
        state->status = mt_error_context(MT_ERR_FORMAT, "object '%s'", name);
        result = -1;
    } else if (kind == H5I_DATASET) {
        type = H5_CHECK(H5Dget_type(object));
        space = type < 0 ? -1 : H5_CHECK(H5Dget_space(object));
        int rank = space < 0 ? -1 : (int)H5_CHECK(H5Sget_simple_extent_ndims(space));
        H5T_class_t type_class =
            rank < 0 ? H5T_NO_CLASS : (H5T_class_t)H5_CHECK(H5Tget_class(type));
        size_t type_size = type_class < 0 ? 0 : H5Tget_size(type);
        if (type_class >= 0 && type_size == 0) MT_FAIL(MT_ERR_FORMAT, "H5Tget_size failed");
        if (type_size == 0) {
            state->status = mt_error_context(MT_ERR_FORMAT, "dataset '%s'", name);
            result = -1;
        } else if (type_class == H5T_FLOAT && rank <= MT_KERAS_H5_MAX_RANK) {
            hsize_t dims[MT_KERAS_H5_MAX_RANK];
            int64_t shape[MT_KERAS_H5_MAX_RANK];
            if (H5_CHECK(H5Sget_simple_extent_dims(space, dims, NULL)) < 0) {
                state->status = mt_error_context(MT_ERR_FORMAT, "dataset '%s'", name);
                result = -1;
            } else {
                for (int i = 0; i < rank; i++)
                    shape[i] = (int64_t)dims[i];
                int bits = (int)(8 * type_size);
                state->status = add_entry(state->file, name, shape, rank, bits);
                if (state->status != MT_OK) {
                    snprintf(state->message, sizeof state->message, "%s", mt_last_error());
                    result = -1;
                }
            }
        }
    }
    mt_h5_close_any(space);
    mt_h5_close_any(type);
    if (H5_CHECK(H5Oclose(object)) < 0 && result == 0) {
        state->status = mt_error_context(MT_ERR_FORMAT, "object '%s'", name);
        result = -1;
    }
    return result;
}

static mt_status rebuild_view(mt_keras_h5 *file) {
    free(file->view);
    file->view = malloc((file->entry_count + 1) * sizeof *file->view);
    if (!file->view) return MT_FAIL(MT_ERR_NOMEM, "out of memory indexing '%s'", file->path);
    file->view_count = 0;
    for (size_t i = 0; i < file->entry_count; i++) {
        const entry *e = &file->entries[i];
        if (e->ignored) continue;
        if (file->selected && !in_group(e->pub.path, file->selected)) continue;
        file->view[file->view_count++] = i;
    }
    return MT_OK;
}

/* ---- open / close --------------------------------------------------------------------------- */

/* Check what the file is before HDF5 sees it, so the message says "missing", "permission", "not
 * HDF5" or "a .keras zip" instead of HDF5's generic failure. HDF5 looks for its signature at 0
 * and at every power of two from 512 (a user block may precede it); so do we. */
static mt_status precheck(const char *path) {
    int fd;
    MT_TRY(mt_file_open_read(path, "weights file", &fd));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int error = errno;
        close(fd);
        return MT_FAIL(MT_ERR_IO, "cannot read weights file '%s': %s", path, strerror(error));
    }
    static const unsigned char signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8] = {0};
    ssize_t got = pread(fd, head, sizeof head, 0);
    bool found = got == 8 && memcmp(head, signature, 8) == 0;
    for (off_t offset = 512; !found && offset + 8 <= st.st_size; offset *= 2) {
        unsigned char probe[8];
        found = pread(fd, probe, 8, offset) == 8 && memcmp(probe, signature, 8) == 0;
    }
    close(fd);
    if (found) return MT_OK;
    if (st.st_size == 0) return MT_FAIL(MT_ERR_FORMAT, "weights file '%s' is empty", path);
    if (got >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4)
        return MT_FAIL(MT_ERR_FORMAT,
                       "weights file '%s' is a zip archive (a Keras 3 .keras file?), not HDF5: "
                       "unzip it and pass its model.weights.h5, or save with "
                       "model.save_weights('x.h5')",
                       path);
    return MT_FAIL(MT_ERR_FORMAT,
                   "weights file '%s' is not an HDF5 file (no HDF5 signature; first bytes %02x "
                   "%02x %02x %02x): Keras weights come from model.save_weights('x.h5') or "
                   "model.save('x.h5')",
                   path, head[0], head[1], head[2], head[3]);
}

void mt_keras_h5_close(mt_keras_h5 *file) {
    if (!file) return;
    if (file->file >= 0) {
        mt_h5_quiet quiet;
        mt_h5_quiet_begin(&quiet);
        H5Fclose(file->file);
        H5Eclear2(H5E_DEFAULT);
        mt_h5_quiet_end(&quiet);
    }
    for (size_t i = 0; i < file->entry_count; i++) {
        free((char *)file->entries[i].pub.path);
        free(file->entries[i].alias);
    }
    free(file->entries);
    free(file->view);
    free(file->selected);
    free(file->path);
    free(file);
}

mt_status mt_keras_h5_open(const char *path, mt_keras_h5 **out) {
    *out = NULL;
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "no weights file given");
    MT_TRY(precheck(path));
    mt_keras_h5 *file = calloc(1, sizeof *file);
    if (!file || !(file->path = strdup(path))) {
        free(file);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory opening '%s'", path);
    }
    file->file = -1;
    mt_h5_quiet quiet;
    mt_h5_quiet_begin(&quiet);
    mt_status status = MT_OK;
    /* CLOSE_STRONG: closing the file closes anything a failed path left open. */
    hid_t access = H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
    if (access < 0 || H5_CHECK(H5Pset_fclose_degree(access, H5F_CLOSE_STRONG)) < 0) {
        status = mt_error_context(MT_ERR_INTERNAL, "weights file '%s'", path);
        goto done;
    }
    file->file = H5_CHECK(H5Fopen(path, H5F_ACC_RDONLY, access));
    if (file->file < 0) {
        if (strstr(mt_last_error(), "truncated"))
            status = mt_error_context(MT_ERR_FORMAT,
                                      "weights file '%s' is truncated (an interrupted copy or "
                                      "download?)",
                                      path);
        else
            status = mt_error_context(MT_ERR_FORMAT,
                                      "weights file '%s' has an HDF5 signature but cannot be "
                                      "opened (corrupt?)",
                                      path);
        goto done;
    }
    visit_state state = {.file = file, .status = MT_OK, .message = ""};
    if (H5_CHECK(H5Lvisit(file->file, H5_INDEX_NAME, H5_ITER_INC, visit_link, &state)) < 0) {
        status =
            state.status != MT_OK && state.message[0] ? MT_FAIL(state.status, "%s", state.message)
            : state.status != MT_OK
                ? mt_error_context(state.status, "indexing weights file '%s'", path)
                : mt_error_context(MT_ERR_FORMAT,
                                   "weights file '%s' is corrupt (listing its contents)", path);
        goto done;
    }
    status = rebuild_view(file);
    if (status == MT_OK && file->view_count == 0)
        status =
            MT_FAIL(MT_ERR_FORMAT,
                    "weights file '%s' holds no float tensors: is it a Keras weights file?", path);
done:
    mt_h5_close_any(access);
    mt_h5_quiet_end(&quiet);
    if (status != MT_OK) {
        mt_keras_h5_close(file);
        return status;
    }
    *out = file;
    return MT_OK;
}

const char *mt_keras_h5_path(const mt_keras_h5 *file) {
    return file->path;
}

/* ---- selection and listing ---------------------------------------------------------------- */

/* Distinct groups of the (non-optimizer) tensors, for messages: "a, b, c". Save-weights files
 * have one group per layer, so the list is cut short. */
static void list_groups(const mt_keras_h5 *file, char *buffer, size_t size) {
    size_t used = 0, shown = 0;
    buffer[0] = '\0';
    for (size_t i = 0; i < file->entry_count && used < size; i++) {
        const entry *e = &file->entries[i];
        if (e->ignored) continue;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen =
                !file->entries[j].ignored && strcmp(file->entries[j].pub.group, e->pub.group) == 0;
        if (seen) continue;
        if (shown == 8) {
            snprintf(buffer + used, size - used, ", ...");
            return;
        }
        used +=
            (size_t)snprintf(buffer + used, size - used, "%s'%s'", shown ? ", " : "", e->pub.group);
        shown++;
    }
}

mt_status mt_keras_h5_select(mt_keras_h5 *file, const char *group) {
    free(file->selected);
    file->selected = NULL;
    if (group && *group) {
        size_t n = strlen(group);
        while (n > 0 && group[n - 1] == '/')
            n--;
        const char *start = group;
        while (*start == '/' && n > 0)
            start++, n--;
        file->selected = strndup(start, n);
        if (!file->selected) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    MT_TRY(rebuild_view(file));
    if (file->view_count == 0) {
        char groups[1024];
        list_groups(file, groups, sizeof groups);
        mt_status status = MT_FAIL(MT_ERR_FORMAT,
                                   "weights file '%s' has no tensors under group '%s'; its tensors "
                                   "lie under %s",
                                   file->path, group, groups);
        free(file->selected);
        file->selected = NULL;
        rebuild_view(file);
        return status;
    }
    return MT_OK;
}

size_t mt_keras_h5_count(const mt_keras_h5 *file) {
    return file->view_count;
}

const mt_keras_h5_tensor *mt_keras_h5_tensor_at(const mt_keras_h5 *file, size_t index) {
    return index < file->view_count ? &file->entries[file->view[index]].pub : NULL;
}

mt_status mt_keras_h5_name_keras3_layers(mt_keras_h5 *file, const char *const *layer_names,
                                         const char *const *class_names, size_t count) {
    /* Keras 3 numbers each class separately in model order: conv2d, conv2d_1, conv2d_2, ... */
    for (size_t i = 0; i < count; i++) {
        const char *class_name = class_names[i];
        if (!class_name || !*class_name) continue;
        size_t before = 0;
        for (size_t j = 0; j < i; j++)
            before += class_names[j] && strcmp(class_names[j], class_name) == 0;
        char key[256];
        if (before == 0)
            snprintf(key, sizeof key, "%s", class_name);
        else
            snprintf(key, sizeof key, "%s_%zu", class_name, before);
        for (size_t v = 0; v < file->view_count; v++) {
            entry *e = &file->entries[file->view[v]];
            if (e->var_index < 0 || e->alias || strcmp(e->pub.layer, key) != 0) continue;
            e->alias = strdup(layer_names[i]);
            if (!e->alias) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
            e->pub.layer = e->alias;
        }
    }
    return MT_OK;
}

/* ---- lookup and read ---------------------------------------------------------------------- */

static bool matches(const entry *e, const char *layer, const char *weight, size_t length) {
    if (strcmp(e->pub.layer, layer) != 0) return false;
    if (e->var_index >= 0) return e->var_index == keras_var_position(weight, length);
    return strlen(e->pub.weight) == length && memcmp(e->pub.weight, weight, length) == 0;
}

/* All matches within the selection: the first two in found[], the count returned. */
static size_t lookup(const mt_keras_h5 *file, const char *layer, const char *weight,
                     entry *found[2]) {
    size_t length = weight_length(weight), hits = 0;
    found[0] = found[1] = NULL;
    for (size_t i = 0; i < file->view_count; i++) {
        entry *e = &file->entries[file->view[i]];
        if (!matches(e, layer, weight, length)) continue;
        if (hits < 2) found[hits] = e;
        hits++;
    }
    /* Keras 3 calls a DepthwiseConv2D's weight "kernel" where Keras 2 said "depthwise_kernel". */
    if (hits == 0 && length == 16 && strncmp(weight, "depthwise_kernel", 16) == 0)
        return lookup(file, layer, "kernel", found);
    return hits;
}

const mt_keras_h5_tensor *mt_keras_h5_find(const mt_keras_h5 *file, const char *layer_name,
                                           const char *weight_name) {
    entry *found[2];
    return lookup(file, layer_name, weight_name, found) == 1 ? &found[0]->pub : NULL;
}

/* "; layer 'Conv1' has kernel (3, 3, 3, 16)" or "; the file has no layer 'Conv1'" for a miss. */
static void describe_layer(const mt_keras_h5 *file, const char *layer, char *buffer, size_t size) {
    size_t used = 0, shown = 0;
    buffer[0] = '\0';
    for (size_t i = 0; i < file->view_count && used < size; i++) {
        const entry *e = &file->entries[file->view[i]];
        if (strcmp(e->pub.layer, layer) != 0) continue;
        char shape[160];
        format_shape(shape, sizeof shape, e->pub.shape, e->pub.rank);
        used += (size_t)snprintf(buffer + used, size - used, "%s%s %s", shown ? ", " : "",
                                 e->pub.weight, shape);
        shown++;
    }
    if (shown == 0) {
        const entry *first = &file->entries[file->view[0]];
        if (first->var_index >= 0 && !first->alias)
            snprintf(buffer, size,
                     "it has no layer '%s': it is a Keras 3 .weights.h5 file, whose layers are "
                     "named by class and position ('%s'); name them with "
                     "mt_keras_h5_name_keras3_layers first",
                     layer, first->pub.path);
        else
            snprintf(buffer, size, "it has no layer '%s' (its tensors are named like '%s')", layer,
                     first->pub.path);
    } else {
        char copy[768];
        snprintf(copy, sizeof copy, "%s", buffer);
        snprintf(buffer, size, "layer '%s' there has %s", layer, copy);
    }
}

mt_status mt_keras_h5_read(mt_keras_h5 *file, const char *layer_name, const char *weight_name,
                           const int64_t *expected_shape, int rank, float *dst) {
    char want[160], have[160];
    int shown_rank = rank < 0 ? 0 : rank > MT_KERAS_H5_MAX_RANK ? MT_KERAS_H5_MAX_RANK : rank;
    format_shape(want, sizeof want, expected_shape, shown_rank);
    int wl = (int)weight_length(weight_name);
    const char *where = file->selected ? file->selected : "";
    const char *where_prefix = file->selected ? " under group '" : "";
    const char *where_suffix = file->selected ? "'" : "";
    entry *found[2];
    size_t hits = lookup(file, layer_name, weight_name, found);
    if (hits == 0) {
        char detail[1024];
        describe_layer(file, layer_name, detail, sizeof detail);
        return MT_FAIL(MT_ERR_FORMAT,
                       "weights file '%s' has no tensor for layer '%s' weight '%.*s' (expected "
                       "shape %s)%s%s%s: %s",
                       file->path, layer_name, wl, weight_name, want, where_prefix, where,
                       where_suffix, detail);
    }
    if (hits > 1)
        return MT_FAIL(MT_ERR_FORMAT,
                       "weights file '%s' has layer '%s' weight '%.*s' %zu times ('%s' and '%s'): "
                       "select the model's group first (mt_keras_h5_select, e.g. '%s')",
                       file->path, layer_name, wl, weight_name, hits, found[0]->pub.path,
                       found[1]->pub.path, found[0]->pub.group);
    entry *e = found[0];
    format_shape(have, sizeof have, e->pub.shape, e->pub.rank);
    bool same = rank == e->pub.rank;
    for (int i = 0; same && i < rank; i++)
        same = expected_shape[i] == e->pub.shape[i];
    if (!same)
        return MT_FAIL(MT_ERR_FORMAT,
                       "weights file '%s': layer '%s' weight '%.*s' has shape %s, expected %s "
                       "(dataset '%s')",
                       file->path, layer_name, wl, weight_name, have, want, e->pub.path);
    mt_h5_quiet quiet;
    mt_h5_quiet_begin(&quiet);
    mt_status status = MT_OK;
    hid_t dataset = H5_CHECK(H5Dopen2(file->file, e->pub.path, H5P_DEFAULT));
    if (dataset < 0 ||
        H5_CHECK(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst)) < 0)
        status = mt_error_context(MT_ERR_FORMAT,
                                  "weights file '%s': reading layer '%s' weight '%.*s' (dataset "
                                  "'%s'; truncated or corrupt file?)",
                                  file->path, layer_name, wl, weight_name, e->pub.path);
    else
        e->pub.reads++;
    /* A NaN or Inf weight poisons every output it reaches (a NaN kernel once raised an eval
     * accuracy to 1.000): refused with the first place it sits. */
    for (int64_t i = 0; status == MT_OK && i < e->pub.count; i++) {
        if (isfinite(dst[i])) continue;
        status =
            MT_FAIL(MT_ERR_FORMAT,
                    "weights file '%s': layer '%s' weight '%.*s' (dataset '%s') holds %s at "
                    "index %lld of %lld: a non-finite weight means a corrupt file or a "
                    "diverged training; use another weights file",
                    file->path, layer_name, wl, weight_name, e->pub.path,
                    isnan(dst[i]) ? "NaN" : "an infinity", (long long)i, (long long)e->pub.count);
    }
    mt_h5_close_any(dataset);
    mt_h5_quiet_end(&quiet);
    return status;
}

mt_status mt_keras_h5_check_all_read(const mt_keras_h5 *file) {
    char list[1024];
    size_t used = 0, unread = 0;
    list[0] = '\0';
    for (size_t i = 0; i < file->view_count; i++) {
        const entry *e = &file->entries[file->view[i]];
        if (e->pub.reads > 0) continue;
        if (unread < 6 && used < sizeof list) {
            char shape[160];
            format_shape(shape, sizeof shape, e->pub.shape, e->pub.rank);
            used += (size_t)snprintf(list + used, sizeof list - used, "%s'%s' %s",
                                     unread ? ", " : "", e->pub.path, shape);
        }
        unread++;
    }
    if (unread == 0) return MT_OK;
    return MT_FAIL(MT_ERR_FORMAT,
                   "weights file '%s' has %zu tensor(s) the model did not use: %s%s (a file for "
                   "another model, or select the model's group with mt_keras_h5_select)",
                   file->path, unread, list, unread > 6 ? ", ..." : "");
}

/* ---- string-list attributes --------------------------------------------------------------- */

mt_status mt_keras_h5_string_list(const mt_keras_h5 *file, const char *group, const char *name,
                                  char ***names, size_t *count) {
    return mt_h5_string_list(file->file, file->path, group, name, names, count);
}
