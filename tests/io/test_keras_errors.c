/* The Keras weights reader on bad and unusual input: missing, unreadable, non-HDF5, empty, zip and
 * truncated files; a missing tensor and a wrong shape (the message names layer, weight, both shapes
 * and the file); and files built here with libhdf5 in the layouts the shared files lack: float64
 * and float16 datasets, Keras 3's layers/<layer>/vars/<i>, and one layer name in two sub-models. */
#include <fcntl.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "mobiletune/keras_h5.h"
#include "test_util.h"

static char dir[4096];

static void write_bytes(const char *path, const void *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, size, f) != size || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* Copy the first `size` bytes of src to dst: a download cut short. */
static void copy_prefix(const char *src, const char *dst, size_t size) {
    char *buffer = malloc(size);
    FILE *f = fopen(src, "rb");
    if (!buffer || !f || fread(buffer, 1, size, f) != size) {
        perror(src);
        exit(1);
    }
    fclose(f);
    write_bytes(dst, buffer, size);
    free(buffer);
}

/* Open must fail with `status` and a message containing the path and `text`. */
static void expect_open_error(const char *path, mt_status status, const char *text) {
    mt_keras_h5 *file = NULL;
    mt_status got = mt_keras_h5_open(path, &file);
    CHECK_MSG(got == status, "%s: got %s (%s), want %s", path, mt_status_name(got), mt_last_error(),
              mt_status_name(status));
    CHECK(file == NULL);
    CHECK_MSG(strstr(mt_last_error(), path) && strstr(mt_last_error(), text),
              "%s: message lacks the path or '%s': %s", path, text, mt_last_error());
    mt_keras_h5_close(file);
}

static void test_bad_files(void) {
    expect_open_error(mt_test_path(dir, "missing.h5"), MT_ERR_IO, "does not exist");
    const char *text = mt_test_path(dir, "text.h5");
    write_bytes(text, "not weights at all\n", 19);
    expect_open_error(text, MT_ERR_FORMAT, "not an HDF5 file");
    const char *empty = mt_test_path(dir, "empty.h5");
    write_bytes(empty, "", 0);
    expect_open_error(empty, MT_ERR_FORMAT, "is empty");
    const char *zip = mt_test_path(dir, "model.keras");
    static const char zip_bytes[] = "PK\003\004 a zip archive";
    write_bytes(zip, zip_bytes, sizeof zip_bytes - 1);
    expect_open_error(zip, MT_ERR_FORMAT, "zip archive");
    expect_open_error(dir, MT_ERR_IO, "not a regular file");
    const char *locked = mt_test_path(dir, "locked.h5");
    write_bytes(locked, "x", 1);
    chmod(locked, 0);
    if (geteuid() == 0 || access(locked, R_OK) == 0)
        printf("note: running as root, the permission case is not testable here\n");
    else
        expect_open_error(locked, MT_ERR_IO, "permission denied");
}

static void test_truncated(const char *imagenet) {
    const char *cut = mt_test_path(dir, "cut.h5");
    copy_prefix(imagenet, cut, 100000);
    expect_open_error(cut, MT_ERR_FORMAT, "truncated");
    copy_prefix(imagenet, cut, 1000);
    expect_open_error(cut, MT_ERR_FORMAT, "truncated");
    copy_prefix(imagenet, cut, 40); /* the signature and part of the superblock */
    mt_keras_h5 *file = NULL;
    CHECK(mt_keras_h5_open(cut, &file) == MT_ERR_FORMAT);
    CHECK(strstr(mt_last_error(), cut) != NULL);
}

static void test_tensor_errors(const char *imagenet) {
    mt_keras_h5 *file = NULL;
    CHECK_MSG(mt_keras_h5_open(imagenet, &file) == MT_OK, "%s", mt_last_error());
    if (!file) return;
    float buffer[3 * 3 * 3 * 32];
    const char *message = mt_last_error();

    /* A weight the layer lacks: the message lists what the layer has. */
    int64_t bias_shape[1] = {32};
    CHECK(mt_keras_h5_read(file, "Conv1", "bias", bias_shape, 1, buffer) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(message, imagenet) && strstr(message, "'Conv1'") &&
                  strstr(message, "'bias'") && strstr(message, "(32,)") &&
                  strstr(message, "kernel (3, 3, 3, 32)"),
              "%s", message);

    /* A layer the file lacks. */
    int64_t kernel_shape[4] = {3, 3, 3, 32};
    CHECK(mt_keras_h5_read(file, "Conv9", "kernel", kernel_shape, 4, buffer) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(message, "no layer 'Conv9'") && strstr(message, imagenet), "%s", message);

    /* Wrong shape: alpha 0.35's Conv1 asked of the alpha 1.0 file. */
    int64_t small[4] = {3, 3, 3, 16};
    CHECK(mt_keras_h5_read(file, "Conv1", "kernel:0", small, 4, buffer) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(message, "'Conv1'") && strstr(message, "'kernel'") &&
                  strstr(message, "has shape (3, 3, 3, 32), expected (3, 3, 3, 16)") &&
                  strstr(message, imagenet),
              "%s", message);

    /* Wrong rank. */
    int64_t column[2] = {32, 1};
    CHECK(mt_keras_h5_read(file, "bn_Conv1", "gamma", column, 2, buffer) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(message, "has shape (32,), expected (32, 1)"), "%s", message);

    /* Nothing was read by the failures. */
    CHECK(mt_keras_h5_find(file, "Conv1", "kernel")->reads == 0);
    CHECK(mt_keras_h5_read(file, "Conv1", "kernel", kernel_shape, 4, buffer) == MT_OK);
    CHECK(mt_keras_h5_find(file, "Conv1", "kernel")->reads == 1);
    mt_keras_h5_close(file);
}

/* ---- files built with libhdf5 ---------------------------------------------------------------- */

static void put(hid_t file, const char *path, hid_t file_type, hid_t memory_type, int rank,
                const hsize_t *dims, const void *data) {
    hid_t links = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(links, 1);
    hid_t space = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t set = H5Dcreate2(file, path, file_type, space, links, H5P_DEFAULT, H5P_DEFAULT);
    if (set < 0 || H5Dwrite(set, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        fprintf(stderr, "cannot build test dataset %s\n", path);
        exit(1);
    }
    H5Dclose(set);
    H5Sclose(space);
    H5Pclose(links);
}

static void test_float_widths(void) {
    const char *path = mt_test_path(dir, "widths.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    double kernel[6] = {0.5, -1.25, 3.0, 1e-3, -7.5, 1e30};
    hsize_t kernel_dims[2] = {2, 3};
    put(file, "dense/dense/kernel:0", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, kernel_dims, kernel);
    /* IEEE half, laid out as h5py stores numpy's float16. */
    hid_t half = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(half, 15, 10, 5, 0, 10);
    H5Tset_size(half, 2);
    H5Tset_ebias(half, 15);
    uint16_t bias_bits[3] = {0x3E00, 0xC080, 0x3000}; /* 1.5, -2.25, 0.125 */
    hsize_t bias_dims[1] = {3};
    put(file, "dense/dense/bias:0", half, half, 1, bias_dims, bias_bits);
    int32_t counter = 7;
    put(file, "dense/dense/steps:0", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, NULL, &counter);
    H5Tclose(half);
    H5Fclose(file);

    mt_keras_h5 *weights = NULL;
    CHECK_MSG(mt_keras_h5_open(path, &weights) == MT_OK, "%s", mt_last_error());
    if (!weights) return;
    CHECK(mt_keras_h5_count(weights) == 2); /* the integer dataset is not a weight */
    float got[6];
    int64_t shape2[2] = {2, 3}, shape1[1] = {3};
    CHECK_MSG(mt_keras_h5_read(weights, "dense", "kernel", shape2, 2, got) == MT_OK, "%s",
              mt_last_error());
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == (float)kernel[i]);
    CHECK(mt_keras_h5_find(weights, "dense", "kernel")->bits == 64);
    CHECK_MSG(mt_keras_h5_read(weights, "dense", "bias", shape1, 1, got) == MT_OK, "%s",
              mt_last_error());
    CHECK(got[0] == 1.5f && got[1] == -2.25f && got[2] == 0.125f);
    CHECK(mt_keras_h5_find(weights, "dense", "bias")->bits == 16);
    mt_keras_h5_close(weights);

    /* A file with no float dataset at all is not a weights file. */
    const char *ints = mt_test_path(dir, "ints.h5");
    file = H5Fcreate(ints, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    put(file, "steps", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, NULL, &counter);
    H5Fclose(file);
    expect_open_error(ints, MT_ERR_FORMAT, "no float tensors");
}

/* Dimensions whose product passes int64 (2^40 * 2^23 = 2^63, still a valid hsize_t count for
 * HDF5 when the dataset is chunked and never written) are refused, not multiplied past the
 * range (UBSan found `count *= shape[i]` overflowing); NaN and Inf weights are refused by name
 * and index. */
static void test_hostile_tensors(void) {
    const char *path = mt_test_path(dir, "huge.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {(hsize_t)1 << 40, (hsize_t)1 << 23}, chunk[2] = {1, 1};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(create, 2, chunk);
    hid_t links = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(links, 1);
    hid_t set =
        H5Dcreate2(file, "dense/dense/kernel:0", H5T_IEEE_F32LE, space, links, create, H5P_DEFAULT);
    CHECK_MSG(set >= 0, "cannot build the huge dataset");
    H5Dclose(set);
    H5Pclose(links);
    H5Pclose(create);
    H5Sclose(space);
    H5Fclose(file);
    expect_open_error(path, MT_ERR_FORMAT, "more values than a 64-bit count holds");
    CHECK_MSG(strstr(mt_last_error(), "(1099511627776, 8388608)"), "%s", mt_last_error());

    const char *nan_path = mt_test_path(dir, "nan.h5");
    file = H5Fcreate(nan_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    float kernel[6] = {0.5f, -1.25f, 3.0f, NAN, 1.0f, 2.0f}, bias[3] = {0, INFINITY, 1};
    hsize_t kernel_dims[2] = {2, 3}, bias_dims[1] = {3};
    put(file, "dense/dense/kernel:0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, kernel_dims, kernel);
    put(file, "dense/dense/bias:0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, bias_dims, bias);
    H5Fclose(file);
    mt_keras_h5 *weights = NULL;
    CHECK_MSG(mt_keras_h5_open(nan_path, &weights) == MT_OK, "%s", mt_last_error());
    if (!weights) return;
    float got[6];
    int64_t shape2[2] = {2, 3}, shape1[1] = {3};
    CHECK(mt_keras_h5_read(weights, "dense", "kernel", shape2, 2, got) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "'kernel'") && strstr(mt_last_error(), "NaN at index 3"),
              "%s", mt_last_error());
    CHECK(mt_keras_h5_read(weights, "dense", "bias", shape1, 1, got) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "'bias'") && strstr(mt_last_error(), "infinity at index 1"),
              "%s", mt_last_error());
    mt_keras_h5_close(weights);
}

static void test_keras3_layout(void) {
    const char *path = mt_test_path(dir, "model.weights.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t four[1] = {4};
    for (int i = 0; i < 4; i++) {
        float v[4] = {(float)i, (float)i + 0.25f, (float)i + 0.5f, (float)i + 0.75f};
        char name[64];
        snprintf(name, sizeof name, "layers/bn/vars/%d", i);
        put(file, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, four, v);
    }
    float kernel[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    hsize_t kernel_dims[4] = {1, 1, 2, 4};
    put(file, "layers/functional/layers/conv/vars/0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4,
        kernel_dims, kernel);
    float slot[4] = {9, 9, 9, 9};
    put(file, "optimizer/vars/1", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, four, slot);
    H5Fclose(file);

    mt_keras_h5 *weights = NULL;
    CHECK_MSG(mt_keras_h5_open(path, &weights) == MT_OK, "%s", mt_last_error());
    if (!weights) return;
    CHECK(mt_keras_h5_count(weights) == 5); /* the optimizer's slot is not listed */
    float got[8];
    int64_t shape[4] = {4};
    CHECK_MSG(mt_keras_h5_read(weights, "bn", "moving_mean", shape, 1, got) == MT_OK, "%s",
              mt_last_error());
    CHECK(got[0] == 2.0f && got[3] == 2.75f);
    CHECK(mt_keras_h5_read(weights, "bn", "beta:0", shape, 1, got) == MT_OK && got[0] == 1.0f);
    int64_t kshape[4] = {1, 1, 2, 4};
    CHECK_MSG(mt_keras_h5_read(weights, "conv", "kernel", kshape, 4, got) == MT_OK, "%s",
              mt_last_error());
    CHECK(got[7] == 8.0f);
    const mt_keras_h5_tensor *conv = mt_keras_h5_find(weights, "conv", "kernel");
    CHECK(conv && strcmp(conv->group, "layers/functional/layers") == 0 &&
          strcmp(conv->weight, "vars/0") == 0);
    CHECK(mt_keras_h5_read(weights, "conv", "bias", shape, 1, got) == MT_ERR_FORMAT);
    mt_keras_h5_close(weights);
}

/* What Keras 3's save_weights("x.weights.h5") really writes: layers named by class and position. */
static void test_keras3_class_names(void) {
    const char *path = mt_test_path(dir, "classes.weights.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t two[1] = {2};
    float first[2] = {1, 2}, second[2] = {3, 4}, gamma[2] = {5, 6};
    put(file, "layers/conv2d/vars/0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, two, first);
    put(file, "layers/conv2d_1/vars/0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, two, second);
    put(file, "layers/batch_normalization/vars/0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, two, gamma);
    H5Fclose(file);

    mt_keras_h5 *weights = NULL;
    CHECK_MSG(mt_keras_h5_open(path, &weights) == MT_OK, "%s", mt_last_error());
    if (!weights) return;
    float got[2];
    int64_t shape[1] = {2};
    CHECK(mt_keras_h5_read(weights, "stem", "kernel", shape, 1, got) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "mt_keras_h5_name_keras3_layers"), "%s", mt_last_error());
    const char *names[] = {"input", "stem", "stem_bn", "stem_relu", "head"};
    const char *classes[] = {NULL, "conv2d", "batch_normalization", NULL, "conv2d"};
    CHECK(mt_keras_h5_name_keras3_layers(weights, names, classes, 5) == MT_OK);
    CHECK(mt_keras_h5_read(weights, "head", "kernel", shape, 1, got) == MT_OK);
    CHECK(got[0] == 3 && got[1] == 4);
    CHECK(mt_keras_h5_read(weights, "stem", "kernel", shape, 1, got) == MT_OK);
    CHECK(got[0] == 1 && got[1] == 2);
    CHECK(mt_keras_h5_read(weights, "stem_bn", "gamma", shape, 1, got) == MT_OK);
    CHECK(got[0] == 5 && got[1] == 6);
    CHECK(mt_keras_h5_check_all_read(weights) == MT_OK);
    mt_keras_h5_close(weights);
}

static void test_ambiguous(void) {
    const char *path = mt_test_path(dir, "two_models.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t two[1] = {2};
    float a[2] = {1, 2}, b[2] = {3, 4};
    put(file, "model_weights/sequential_1/Conv1/kernel:0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, two,
        a);
    put(file, "model_weights/sequential_3/Conv1/kernel:0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, two,
        b);
    put(file, "optimizer_weights/RMSprop/Conv1/kernel:0", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, two,
        b);
    H5Fclose(file);

    mt_keras_h5 *weights = NULL;
    CHECK_MSG(mt_keras_h5_open(path, &weights) == MT_OK, "%s", mt_last_error());
    if (!weights) return;
    float got[2] = {0, 0};
    int64_t shape[1] = {2};
    CHECK(mt_keras_h5_find(weights, "Conv1", "kernel") == NULL);
    CHECK(mt_keras_h5_read(weights, "Conv1", "kernel", shape, 1, got) == MT_ERR_FORMAT);
    const char *message = mt_last_error();
    CHECK_MSG(strstr(message, "2 times") &&
                  strstr(message, "model_weights/sequential_1/Conv1/kernel:0") &&
                  strstr(message, "model_weights/sequential_3/Conv1/kernel:0") &&
                  strstr(message, "mt_keras_h5_select"),
              "%s", message);
    CHECK(mt_keras_h5_select(weights, "model_weights/sequential_3") == MT_OK);
    CHECK(mt_keras_h5_read(weights, "Conv1", "kernel", shape, 1, got) == MT_OK);
    CHECK(got[0] == 3 && got[1] == 4);
    /* A prefix must end at a "/": "model_weights/seq" selects nothing. */
    CHECK(mt_keras_h5_select(weights, "model_weights/seq") == MT_ERR_FORMAT);
    mt_keras_h5_close(weights);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", mt_test_make_temp_dir("keras-errors"));
    test_bad_files();
    test_float_widths();
    test_hostile_tensors();
    test_keras3_layout();
    test_keras3_class_names();
    test_ambiguous();
    const char *imagenet = mt_test_shared_path("weights/mobilenet_v2_1.0_224_imagenet_no_top.h5");
    if (imagenet) {
        char path[4096];
        snprintf(path, sizeof path, "%s", imagenet);
        test_truncated(path);
        test_tensor_errors(path);
    } else {
        printf(
            "note: ../shared/weights is absent: truncated-file and tensor-error cases skipped\n");
    }
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
