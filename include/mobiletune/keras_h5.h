/* Keras HDF5 weights files: a model-agnostic reader that finds each tensor by Keras layer name and
 * weight name wherever the file keeps it, and a writer of Keras' `save_weights` layout that
 * `model.load_weights(path)` in Keras 2 (tf.keras) and Keras 3 loads.
 *
 * Where the reader finds a tensor (docs/weights.md has the details); each dataset of the file is
 * indexed once at open as (group, layer, weight):
 *   <layer>/<layer>/<weight>:0                    Keras 2 `model.save_weights("x.h5")`
 *   <submodel>/<layer>/<weight>:0                 the same with a nested model (group <submodel>)
 *   model_weights/<model>/<layer>/<weight>:0      whole-model `model.save("x.h5")`
 *   <layer>/<weight>                              Keras 3 `model.save_weights("x.h5")`
 *   [.../]layers/<class>_<k>/vars/<i>             Keras 3 `model.save_weights("x.weights.h5")`:
 *                                                 layers named by class and position (see
 *                                                 mt_keras_h5_name_keras3_layers); i is the
 *                                                 weight's position in Keras' order
 *                                                 (kernel|depthwise_kernel|gamma = 0,
 *                                                 bias|beta = 1, moving_mean = 2,
 *                                                 moving_variance = 3)
 * The ":0" suffix is optional; "depthwise_kernel" also finds Keras 3's name for it, "kernel".
 * Everything under a top-level "optimizer_weights" or "optimizer" group is ignored. When the same
 * (layer, weight) sits under two groups (two sub-models of one file), a read is an error naming
 * both until mt_keras_h5_select() picks one group.
 *
 * Shapes are Keras' own: conv kernel (kh, kw, cin, cout), depthwise kernel (kh, kw, c, 1), dense
 * kernel (in, out), BN vectors and biases (c). Values are float32 in memory; float64 and float16
 * datasets are converted on read.
 *
 * Not thread-safe: one thread at a time per process uses these functions (libhdf5 as Debian
 * builds it is not thread-safe). */
#ifndef MOBILETUNE_KERAS_H5_H
#define MOBILETUNE_KERAS_H5_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_KERAS_H5_MAX_RANK = 8 };

/* ---- reading ---------------------------------------------------------------------------- */

typedef struct mt_keras_h5 mt_keras_h5;

/* One float dataset of the file, as indexed at open. Strings are owned by the file handle. */
typedef struct mt_keras_h5_tensor {
    const char *path;   /* the dataset's full path: "model_weights/sequential_1/Conv1/kernel:0" */
    const char *group;  /* the path above the layer: "model_weights/sequential_1"; for the
                           save_weights layout the layer's own top-level group ("Conv1") */
    const char *layer;  /* Keras layer name: "Conv1" */
    const char *weight; /* weight name without ":0": "kernel"; "vars/0" in the Keras 3 layout */
    int rank;
    int64_t shape[MT_KERAS_H5_MAX_RANK];
    int64_t count; /* number of values (1 for a scalar) */
    int bits;      /* 16, 32 or 64: the file's float width */
    int reads;     /* how many times mt_keras_h5_read() read this tensor */
} mt_keras_h5_tensor;

/* Open a weights file read-only and index its float datasets. Errors (MT_ERR_IO: missing file,
 * permission; MT_ERR_FORMAT: not HDF5, truncated, a .keras zip, no float datasets) name the file.
 * HDF5's own error printing is silenced; its innermost message becomes part of ours. */
mt_status mt_keras_h5_open(const char *path, mt_keras_h5 **out);
void mt_keras_h5_close(mt_keras_h5 *file); /* NULL is fine */

/* The path given to open (for callers' messages). */
const char *mt_keras_h5_path(const mt_keras_h5 *file);

/* Restrict reads, finds and listing to tensors whose path lies under `group` (a path prefix at a
 * "/" boundary, e.g. "model_weights/sequential_1"); NULL or "" removes the restriction.
 * MT_ERR_FORMAT, listing the file's groups, when nothing lies under `group`. */
mt_status mt_keras_h5_select(mt_keras_h5 *file, const char *group);

/* Read layer/weight (weight: "kernel", "depthwise_kernel", "gamma", "beta", "moving_mean",
 * "moving_variance", "bias"; ":0" optional) into dst, converting to float32.
 * expected_shape[rank] is Keras' shape; dst holds the product of it.
 * MT_ERR_FORMAT naming the layer, weight, expected and found shape and the file when the tensor
 * is missing, has another shape, is not a float dataset, or is ambiguous (two groups). */
mt_status mt_keras_h5_read(mt_keras_h5 *file, const char *layer_name, const char *weight_name,
                           const int64_t *expected_shape, int rank, float *dst);

/* Keras 3 ".weights.h5" files name a layer by its class and position within its model, not by
 * its name: the first Conv2D is "conv2d", the third "conv2d_2". Give the model's layers in
 * model.layers order with Keras 3's snake-case class names ("conv2d", "depthwise_conv2d",
 * "batch_normalization", "dense"; NULL for layers without weights) and later reads by layer name
 * find them. Applies to the tensors within the selection; a no-op for the named layouts. */
mt_status mt_keras_h5_name_keras3_layers(mt_keras_h5 *file, const char *const *layer_names,
                                         const char *const *class_names, size_t count);

/* The tensor for layer/weight within the selection, or NULL when there is none or more than one.
 * For probing without an error: e.g. Conv1's kernel shape tells the file's width multiplier. */
const mt_keras_h5_tensor *mt_keras_h5_find(const mt_keras_h5 *file, const char *layer_name,
                                           const char *weight_name);

/* The indexed tensors within the selection, in path (name) order: index 0..count-1. */
size_t mt_keras_h5_count(const mt_keras_h5 *file);
const mt_keras_h5_tensor *mt_keras_h5_tensor_at(const mt_keras_h5 *file, size_t index);

/* MT_ERR_FORMAT listing (the first few of) the tensors within the selection that no
 * mt_keras_h5_read() has read: the check against a silent partial load or a file for another
 * model. MT_OK when every one was read. */
mt_status mt_keras_h5_check_all_read(const mt_keras_h5 *file);

/* The string-list attribute `name` (e.g. "layer_names", "weight_names") of group `group` ("" or
 * "/" for the root, "model_weights" for a whole-model file), joined from Keras' chunked form
 * (name0, name1, ...) when the list was too long for one attribute. *names is an array of *count
 * strings; free it with mt_keras_h5_free_names(). MT_ERR_FORMAT when absent. */
mt_status mt_keras_h5_string_list(const mt_keras_h5 *file, const char *group, const char *name,
                                  char ***names, size_t *count);
void mt_keras_h5_free_names(char **names, size_t count);

/* ---- writing ---------------------------------------------------------------------------- */

typedef struct mt_keras_h5_writer mt_keras_h5_writer;

/* Start a Keras 2 `save_weights` file at `path` (written to "path.tmp-<pid>" until finish).
 * layer_names[layer_count]: every layer of the Keras model in model.layers order, those without
 * weights (InputLayer, ReLU, Add, ZeroPadding2D ...) included, as Keras lists them: Keras matches
 * layers by this order. A path ending in ".weights.h5" is refused (Keras 3 reads that suffix as
 * its own, different layout): use ".h5". */
mt_status mt_keras_h5_create(const char *path, const char *const *layer_names, size_t layer_count,
                             mt_keras_h5_writer **out);

/* Write layer/weight (no ":0"; it is appended) as float32 of shape[rank] (Keras' shape) from src.
 * The layer must be one of create's layer_names; each (layer, weight) is written once. Within a
 * layer the weights are listed in Keras' order (kernel|depthwise_kernel, bias, gamma, beta,
 * moving_mean, moving_variance; other names after these in call order) whatever the call order. */
mt_status mt_keras_h5_write(mt_keras_h5_writer *writer, const char *layer_name,
                            const char *weight_name, const int64_t *shape, int rank,
                            const float *src);

/* Write the attributes (layer_names, backend, keras_version, each layer's weight_names), flush,
 * close, fsync and rename onto the final path. Frees the writer whatever happens; on failure the
 * temporary file is removed and any previous file at `path` is left as it was. */
mt_status mt_keras_h5_finish(mt_keras_h5_writer *writer);

/* Give up: remove the temporary file and free the writer (NULL is fine). */
void mt_keras_h5_abort(mt_keras_h5_writer *writer);

#ifdef __cplusplus
}
#endif
#endif
