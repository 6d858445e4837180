/* The Keras weights writer: Keras 2's `model.save_weights("x.h5")` layout, byte-string attributes
 * as h5py writes them, so that `model.load_weights` of Keras 2 and Keras 3 reads the file. Written
 * to a temporary name, flushed, fsync'ed and renamed, so a crash leaves the old file or the new
 * one.
 *
 * Layout (docs/weights.md):
 *   /                 attrs layer_names (every layer, model order), backend, keras_version
 *   /<layer>          attr  weight_names: "<layer>/<weight>:0" in Keras' order (empty list for
 *                           layers without weights)
 *   /<layer>/<layer>/<weight>:0   float32 dataset of Keras' shape */
#include "mobiletune/keras_h5.h"
#include "mobiletune/files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/h5_util.h"

/* Keras' HDF5_OBJECT_HEADER_LIMIT: a longer string list is split into name0, name1, ... */
enum { OBJECT_HEADER_LIMIT = 64512 };

static const char KERAS_VERSION[] = "2.15.0"; /* the Keras 2 layout this file follows */
static const char BACKEND[] = "tensorflow";   /* "theano" would make Keras flip conv kernels */

typedef struct written {
    char *name;   /* weight name without ":0" */
    int position; /* Keras' order within the layer */
    size_t call;  /* call order, for names outside Keras' known set */
} written;

typedef struct layer_slot {
    char *name;
    written *weights;
    size_t weight_count, weight_capacity;
} layer_slot;

struct mt_keras_h5_writer {
    char *path;
    char *temp_path;
    hid_t file;
    layer_slot *layers;
    size_t layer_count;
    size_t calls;
};

static int keras_position(const char *weight) {
    static const char *order[] = {"kernel", "depthwise_kernel", "bias",           "gamma",
                                  "beta",   "moving_mean",      "moving_variance"};
    static const int position[] = {0, 0, 1, 2, 3, 4, 5};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (strcmp(order[i], weight) == 0) return position[i];
    return 6;
}

static bool valid_name(const char *name) {
    return name && name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 &&
           strcmp(name, "..") != 0;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void free_writer(mt_keras_h5_writer *writer) {
    for (size_t i = 0; i < writer->layer_count; i++) {
        for (size_t j = 0; j < writer->layers[i].weight_count; j++)
            free(writer->layers[i].weights[j].name);
        free(writer->layers[i].weights);
        free(writer->layers[i].name);
    }
    free(writer->layers);
    free(writer->temp_path);
    free(writer->path);
    free(writer);
}

void mt_keras_h5_abort(mt_keras_h5_writer *writer) {
    if (!writer) return;
    if (writer->file >= 0) {
        mt_h5_quiet quiet;
        mt_h5_quiet_begin(&quiet);
        H5Fclose(writer->file);
        H5Eclear2(H5E_DEFAULT);
        mt_h5_quiet_end(&quiet);
    }
    unlink(writer->temp_path);
    free_writer(writer);
}

mt_status mt_keras_h5_create(const char *path, const char *const *layer_names, size_t layer_count,
                             mt_keras_h5_writer **out) {
    *out = NULL;
    if (!path || !*path) return MT_FAIL(MT_ERR_INVALID, "no output path for the Keras weights");
    if (ends_with(path, ".weights.h5"))
        return MT_FAIL(MT_ERR_INVALID,
                       "'%s': Keras 3 reads a name ending in '.weights.h5' as its own layout, not "
                       "this save_weights layout; name the file '*.h5'",
                       path);
    if (layer_count == 0 || !layer_names)
        return MT_FAIL(MT_ERR_INVALID,
                       "'%s': no layer names given (Keras matches layers by the "
                       "model's full layer list)",
                       path);
    for (size_t i = 0; i < layer_count; i++) {
        if (!valid_name(layer_names[i]))
            return MT_FAIL(MT_ERR_INVALID, "'%s': layer name %zu ('%s') is empty or has a '/'",
                           path, i, layer_names[i] ? layer_names[i] : "(null)");
        if (strlen(layer_names[i]) >= OBJECT_HEADER_LIMIT)
            return MT_FAIL(MT_ERR_INVALID, "'%s': layer name %zu is too long", path, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(layer_names[i], layer_names[j]) == 0)
                return MT_FAIL(MT_ERR_INVALID, "'%s': layer name '%s' appears twice (%zu, %zu)",
                               path, layer_names[i], j, i);
    }
    mt_keras_h5_writer *writer = calloc(1, sizeof *writer);
    if (!writer) return MT_FAIL(MT_ERR_NOMEM, "out of memory writing '%s'", path);
    writer->file = -1;
    size_t temp_size = strlen(path) + 32;
    writer->path = strdup(path);
    writer->temp_path = malloc(temp_size);
    writer->layers = calloc(layer_count, sizeof *writer->layers);
    if (!writer->path || !writer->temp_path || !writer->layers) {
        free_writer(writer);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory writing '%s'", path);
    }
    snprintf(writer->temp_path, temp_size, "%s.tmp-%ld", path, (long)getpid());
    writer->layer_count = layer_count;
    for (size_t i = 0; i < layer_count; i++) {
        writer->layers[i].name = strdup(layer_names[i]);
        if (!writer->layers[i].name) {
            free_writer(writer);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory writing '%s'", path);
        }
    }
    /* Try the temporary name with open(2) first: errno says why better than HDF5 does. */
    int fd = open(writer->temp_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        mt_status status =
            MT_FAIL(MT_ERR_IO, "cannot create '%s': %s", writer->temp_path, strerror(errno));
        free_writer(writer);
        return status;
    }
    close(fd);

    mt_h5_quiet quiet;
    mt_h5_quiet_begin(&quiet);
    mt_status status = MT_OK;
    writer->file = H5_CHECK(H5Fcreate(writer->temp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    if (writer->file < 0) status = mt_error_context(MT_ERR_IO, "creating '%s'", writer->temp_path);
    /* Every layer gets its group now, in model order, weights or not, as Keras does. */
    for (size_t i = 0; status == MT_OK && i < layer_count; i++) {
        hid_t group = H5_CHECK(
            H5Gcreate2(writer->file, layer_names[i], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        if (group < 0 || H5_CHECK(H5Gclose(group)) < 0)
            status = mt_error_context(MT_ERR_IO, "'%s': group for layer '%s'", writer->temp_path,
                                      layer_names[i]);
    }
    mt_h5_quiet_end(&quiet);
    if (status != MT_OK) {
        mt_keras_h5_abort(writer);
        return status;
    }
    *out = writer;
    return MT_OK;
}

mt_status mt_keras_h5_write(mt_keras_h5_writer *writer, const char *layer_name,
                            const char *weight_name, const int64_t *shape, int rank,
                            const float *src) {
    layer_slot *layer = NULL;
    for (size_t i = 0; i < writer->layer_count && !layer; i++)
        if (strcmp(writer->layers[i].name, layer_name) == 0) layer = &writer->layers[i];
    if (!layer)
        return MT_FAIL(MT_ERR_INVALID,
                       "'%s': layer '%s' is not among the %zu layer names given at create",
                       writer->path, layer_name, writer->layer_count);
    size_t weight_length = strlen(weight_name);
    if (weight_length > 2 && strcmp(weight_name + weight_length - 2, ":0") == 0) weight_length -= 2;
    char *weight = strndup(weight_name, weight_length);
    if (!weight) return MT_FAIL(MT_ERR_NOMEM, "out of memory writing '%s'", writer->path);
    mt_status status = MT_OK;
    if (!valid_name(weight))
        status = MT_FAIL(MT_ERR_INVALID, "'%s': layer '%s': weight name '%s' is empty or has a '/'",
                         writer->path, layer_name, weight_name);
    for (size_t i = 0; status == MT_OK && i < layer->weight_count; i++)
        if (strcmp(layer->weights[i].name, weight) == 0)
            status = MT_FAIL(MT_ERR_INVALID, "'%s': layer '%s' weight '%s' is written twice",
                             writer->path, layer_name, weight);
    if (status == MT_OK && (rank < 0 || rank > MT_KERAS_H5_MAX_RANK))
        status = MT_FAIL(MT_ERR_INVALID, "'%s': layer '%s' weight '%s': rank %d is not 0..%d",
                         writer->path, layer_name, weight, rank, MT_KERAS_H5_MAX_RANK);
    hsize_t dims[MT_KERAS_H5_MAX_RANK];
    for (int i = 0; status == MT_OK && i < rank; i++) {
        if (shape[i] < 0)
            status = MT_FAIL(MT_ERR_INVALID, "'%s': layer '%s' weight '%s': negative dimension",
                             writer->path, layer_name, weight);
        dims[i] = (hsize_t)shape[i];
    }
    if (status == MT_OK && layer->weight_count == layer->weight_capacity) {
        size_t capacity = layer->weight_capacity ? 2 * layer->weight_capacity : 4;
        written *grown = realloc(layer->weights, capacity * sizeof *grown);
        if (!grown)
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory writing '%s'", writer->path);
        else
            layer->weights = grown, layer->weight_capacity = capacity;
    }
    if (status != MT_OK) {
        free(weight);
        return status;
    }

    mt_h5_quiet quiet;
    mt_h5_quiet_begin(&quiet);
    hid_t group = -1, inner = -1, space = -1, dataset = -1;
    char dataset_name[512];
    snprintf(dataset_name, sizeof dataset_name, "%s:0", weight);
    group = H5_CHECK(H5Gopen2(writer->file, layer_name, H5P_DEFAULT));
    htri_t exists = group < 0 ? -1 : H5_CHECK(H5Lexists(group, layer_name, H5P_DEFAULT));
    if (exists > 0)
        inner = H5_CHECK(H5Gopen2(group, layer_name, H5P_DEFAULT));
    else if (exists == 0)
        inner = H5_CHECK(H5Gcreate2(group, layer_name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (inner >= 0)
        space = H5_CHECK(rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL));
    if (space >= 0)
        dataset = H5_CHECK(H5Dcreate2(inner, dataset_name, H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT));
    if (dataset < 0 ||
        H5_CHECK(H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, src)) < 0)
        status = mt_error_context(MT_ERR_IO, "'%s': writing layer '%s' weight '%s'",
                                  writer->temp_path, layer_name, weight);
    mt_h5_close_any(dataset);
    mt_h5_close_any(space);
    mt_h5_close_any(inner);
    mt_h5_close_any(group);
    mt_h5_quiet_end(&quiet);
    if (status != MT_OK) {
        free(weight);
        return status;
    }
    layer->weights[layer->weight_count++] =
        (written){.name = weight, .position = keras_position(weight), .call = writer->calls++};
    return MT_OK;
}

/* Write `bytes` as a fixed-length (`width` bytes each), NUL-padded string attribute of the
 * dataspace `space` (a scalar or 1-D), and close `space`. */
static mt_status write_fixed_strings(hid_t location, const char *name, const void *bytes,
                                     size_t width, hid_t space) {
    mt_status status = MT_OK;
    hid_t type = space < 0 ? -1 : H5_CHECK(H5Tcopy(H5T_C_S1));
    hid_t attribute = -1;
    if (type >= 0 && H5_CHECK(H5Tset_size(type, width)) >= 0 &&
        H5_CHECK(H5Tset_strpad(type, H5T_STR_NULLPAD)) >= 0)
        attribute = H5_CHECK(H5Acreate2(location, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
    if (attribute < 0 || H5_CHECK(H5Awrite(attribute, type, bytes)) < 0)
        status = mt_error_context(MT_ERR_IO, "attribute '%s'", name);
    mt_h5_close_any(attribute);
    mt_h5_close_any(space);
    mt_h5_close_any(type);
    return status;
}

/* Write strings[count] as a 1-D fixed-length, NUL-padded byte-string attribute (what h5py makes of
 * a numpy "S" array: Keras' own form), width the longest string; an empty list as Keras 2 left it:
 * width 1, shape (0,). */
static mt_status write_string_attribute(hid_t location, const char *name, char *const *strings,
                                        size_t count, size_t width) {
    char *buffer = calloc(count ? count : 1, width);
    if (!buffer) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < count; i++)
        memcpy(buffer + i * width, strings[i], strlen(strings[i]));
    hsize_t dims[1] = {count};
    mt_status status = write_fixed_strings(location, name, buffer, width,
                                           H5_CHECK(H5Screate_simple(1, dims, NULL)));
    free(buffer);
    return status;
}

/* A string list as Keras' save_attributes_to_hdf5_group stores it: one attribute, or when it
 * would pass the object header limit, numpy.array_split-sized chunks name0, name1, ... of the
 * same width. */
static mt_status write_string_list(hid_t location, const char *name, char *const *strings,
                                   size_t count) {
    size_t width = 1;
    for (size_t i = 0; i < count; i++)
        if (strlen(strings[i]) > width) width = strlen(strings[i]);
    size_t chunks = 1;
    while ((count + chunks - 1) / chunks * width > OBJECT_HEADER_LIMIT)
        chunks++;
    if (chunks == 1) return write_string_attribute(location, name, strings, count, width);
    size_t start = 0;
    for (size_t c = 0; c < chunks; c++) {
        size_t size = count / chunks + (c < count % chunks ? 1 : 0);
        char chunk_name[256];
        snprintf(chunk_name, sizeof chunk_name, "%s%zu", name, c);
        MT_TRY(write_string_attribute(location, chunk_name, strings + start, size, width));
        start += size;
    }
    return MT_OK;
}

static mt_status write_scalar_string(hid_t location, const char *name, const char *value) {
    return write_fixed_strings(location, name, value, strlen(value),
                               H5_CHECK(H5Screate(H5S_SCALAR)));
}

static int compare_written(const void *a, const void *b) {
    const written *x = a, *y = b;
    if (x->position != y->position) return x->position < y->position ? -1 : 1;
    return x->call < y->call ? -1 : x->call > y->call;
}

/* weight_names of one layer group: "<layer>/<weight>:0" in Keras' order. */
static mt_status write_weight_names(hid_t file, layer_slot *layer) {
    if (layer->weight_count > 1)
        qsort(layer->weights, layer->weight_count, sizeof *layer->weights, compare_written);
    char **names = calloc(layer->weight_count ? layer->weight_count : 1, sizeof *names);
    if (!names) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    mt_status status = MT_OK;
    for (size_t i = 0; i < layer->weight_count && status == MT_OK; i++) {
        size_t size = strlen(layer->name) + strlen(layer->weights[i].name) + 4;
        names[i] = malloc(size);
        if (!names[i])
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
        else
            snprintf(names[i], size, "%s/%s:0", layer->name, layer->weights[i].name);
    }
    hid_t group = -1;
    if (status == MT_OK) {
        group = H5_CHECK(H5Gopen2(file, layer->name, H5P_DEFAULT));
        if (group < 0) status = MT_ERR_IO;
    }
    if (status == MT_OK)
        status = write_string_list(group, "weight_names", names, layer->weight_count);
    if (status != MT_OK) status = mt_error_context(status, "layer '%s'", layer->name);
    mt_h5_close_any(group);
    for (size_t i = 0; i < layer->weight_count; i++)
        free(names[i]);
    free(names);
    return status;
}

mt_status mt_keras_h5_finish(mt_keras_h5_writer *writer) {
    if (!writer) return MT_FAIL(MT_ERR_INVALID, "mt_keras_h5_finish: no writer");
    mt_h5_quiet quiet;
    mt_h5_quiet_begin(&quiet);
    mt_status status = MT_OK;
    for (size_t i = 0; i < writer->layer_count && status == MT_OK; i++)
        status = write_weight_names(writer->file, &writer->layers[i]);
    char **layer_names = calloc(writer->layer_count, sizeof *layer_names);
    if (status == MT_OK && !layer_names) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    if (status == MT_OK) {
        for (size_t i = 0; i < writer->layer_count; i++)
            layer_names[i] = writer->layers[i].name;
        status = write_string_list(writer->file, "layer_names", layer_names, writer->layer_count);
    }
    free(layer_names);
    if (status == MT_OK) status = write_scalar_string(writer->file, "backend", BACKEND);
    if (status == MT_OK) status = write_scalar_string(writer->file, "keras_version", KERAS_VERSION);
    if (status == MT_OK && H5_CHECK(H5Fflush(writer->file, H5F_SCOPE_GLOBAL)) < 0)
        status = MT_ERR_IO;
    if (status == MT_OK) {
        hid_t file = writer->file;
        writer->file = -1;
        if (H5_CHECK(H5Fclose(file)) < 0) status = MT_ERR_IO;
    }
    mt_h5_quiet_end(&quiet);
    /* the data, then the rename, must reach the disk */
    if (status == MT_OK) status = mt_sync_path(writer->temp_path);
    if (status == MT_OK && rename(writer->temp_path, writer->path) != 0)
        status = MT_FAIL(MT_ERR_IO, "cannot rename '%s' to '%s': %s", writer->temp_path,
                         writer->path, strerror(errno));
    if (status == MT_OK) {
        status = mt_sync_parent(writer->path);
        if (status != MT_OK) status = mt_error_context(status, "wrote '%s' but", writer->path);
        free_writer(writer);
        return status;
    }
    status = mt_error_context(status, "writing Keras weights '%s'", writer->path);
    mt_keras_h5_abort(writer);
    return status;
}
