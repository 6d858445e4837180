/* The Keras weights writer: a small synthetic model round-trips through our reader with Keras'
 * attributes and order; argument errors and the atomic write (a failed or abandoned export leaves
 * the previous file untouched and no temporary behind); and the whole shared ImageNet file, read
 * and written back with its own layer list, reads back bit-exact with our reader and with h5py
 * (tests/io/h5_compare.py), attributes included.
 *
 * Also a tool for tests/io/keras_tf_roundtrip.py:
 *   test_io_keras_export --export OUT.h5          write the ImageNet export to OUT.h5
 *   test_io_keras_export --same ORIG.h5 OTHER.h5  every MobileNetV2 alpha-1 tensor of the test's
 *                                                 own table reads bit-identical from both files */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mnv2_table.h"
#include "mobiletune/keras_h5.h"
#include "test_util.h"

static char dir[4096];

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* No "<path>.tmp-*" left in the test folder. */
static bool no_temporaries(void) {
    char command[4300];
    snprintf(command, sizeof command, "ls '%s' | grep -q '\\.tmp-'", dir);
    return system(command) != 0;
}

static void test_small_model(void) {
    const char *layers[] = {"input_1", "conv", "bn", "relu", "dense"};
    const char *path = mt_test_path(dir, "small.h5");
    mt_keras_h5_writer *writer = NULL;
    CHECK_MSG(mt_keras_h5_create(path, layers, 5, &writer) == MT_OK, "%s", mt_last_error());
    if (!writer) return;
    float kernel[2 * 3] = {1, 2, 3, 4, 5, 6}, bias[3] = {-1, 0.5f, 7};
    float stats[4][3] = {{1, 1, 1}, {0, 0, 0}, {0.25f, 0.5f, 0.75f}, {2, 3, 4}};
    int64_t kshape[4] = {1, 1, 2, 3}, vshape[1] = {3};
    /* Written out of Keras' order on purpose: the file must list them in Keras' order. */
    CHECK(mt_keras_h5_write(writer, "bn", "moving_variance", vshape, 1, stats[3]) == MT_OK);
    CHECK(mt_keras_h5_write(writer, "bn", "beta", vshape, 1, stats[1]) == MT_OK);
    CHECK(mt_keras_h5_write(writer, "bn", "moving_mean:0", vshape, 1, stats[2]) == MT_OK);
    CHECK(mt_keras_h5_write(writer, "bn", "gamma", vshape, 1, stats[0]) == MT_OK);
    CHECK(mt_keras_h5_write(writer, "conv", "bias", vshape, 1, bias) == MT_OK);
    CHECK(mt_keras_h5_write(writer, "conv", "kernel", kshape, 4, kernel) == MT_OK);
    int64_t dshape[2] = {2, 3};
    CHECK(mt_keras_h5_write(writer, "dense", "kernel", dshape, 2, kernel) == MT_OK);

    /* Argument errors leave the writer usable. */
    CHECK(mt_keras_h5_write(writer, "conv", "kernel", kshape, 4, kernel) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "twice") != NULL);
    CHECK(mt_keras_h5_write(writer, "head", "kernel", kshape, 4, kernel) == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "'head'") && strstr(mt_last_error(), "5 layer names"), "%s",
              mt_last_error());
    CHECK(mt_keras_h5_write(writer, "dense", "a/b", vshape, 1, bias) == MT_ERR_INVALID);
    CHECK(!exists(path)); /* nothing at the final name before finish */
    CHECK_MSG(mt_keras_h5_finish(writer) == MT_OK, "%s", mt_last_error());
    CHECK(exists(path) && no_temporaries());

    mt_keras_h5 *file = NULL;
    CHECK_MSG(mt_keras_h5_open(path, &file) == MT_OK, "%s", mt_last_error());
    if (!file) return;
    CHECK(mt_keras_h5_count(file) == 7);
    float got[6];
    CHECK(mt_keras_h5_read(file, "conv", "kernel", kshape, 4, got) == MT_OK);
    CHECK(memcmp(got, kernel, sizeof kernel) == 0);
    CHECK(mt_keras_h5_read(file, "bn", "moving_mean", vshape, 1, got) == MT_OK);
    CHECK(memcmp(got, stats[2], sizeof stats[2]) == 0);
    CHECK(strcmp(mt_keras_h5_find(file, "bn", "gamma")->path, "bn/bn/gamma:0") == 0);

    char **names = NULL;
    size_t count = 0;
    CHECK(mt_keras_h5_string_list(file, "", "layer_names", &names, &count) == MT_OK);
    CHECK(count == 5 && strcmp(names[0], "input_1") == 0 && strcmp(names[4], "dense") == 0);
    mt_keras_h5_free_names(names, count);
    CHECK(mt_keras_h5_string_list(file, "bn", "weight_names", &names, &count) == MT_OK);
    const char *bn_order[4] = {"bn/gamma:0", "bn/beta:0", "bn/moving_mean:0",
                               "bn/moving_variance:0"};
    CHECK(count == 4);
    for (size_t i = 0; i < count && i < 4; i++)
        CHECK_MSG(strcmp(names[i], bn_order[i]) == 0, "weight_names[%zu] = %s", i, names[i]);
    mt_keras_h5_free_names(names, count);
    CHECK(mt_keras_h5_string_list(file, "conv", "weight_names", &names, &count) == MT_OK);
    CHECK(count == 2 && strcmp(names[0], "conv/kernel:0") == 0 &&
          strcmp(names[1], "conv/bias:0") == 0);
    mt_keras_h5_free_names(names, count);
    CHECK(mt_keras_h5_string_list(file, "relu", "weight_names", &names, &count) == MT_OK);
    CHECK(count == 0);
    mt_keras_h5_free_names(names, count);
    CHECK(mt_keras_h5_string_list(file, "", "backend", &names, &count) == MT_OK);
    CHECK(count == 1 && strcmp(names[0], "tensorflow") == 0);
    mt_keras_h5_free_names(names, count);
    mt_keras_h5_close(file);
}

static void test_create_errors(void) {
    const char *layers[] = {"a", "b", "a"};
    mt_keras_h5_writer *writer = NULL;
    CHECK(mt_keras_h5_create(mt_test_path(dir, "x.weights.h5"), layers, 2, &writer) ==
          MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "'*.h5'") != NULL);
    CHECK(mt_keras_h5_create(mt_test_path(dir, "x.h5"), layers, 3, &writer) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "'a' appears twice") != NULL);
    const char *slashed[] = {"a/b"};
    CHECK(mt_keras_h5_create(mt_test_path(dir, "x.h5"), slashed, 1, &writer) == MT_ERR_INVALID);
    CHECK(mt_keras_h5_create(mt_test_path(dir, "no/such/folder/x.h5"), layers, 2, &writer) ==
          MT_ERR_IO);
    CHECK_MSG(strstr(mt_last_error(), "no/such/folder/x.h5.tmp-") &&
                  strstr(mt_last_error(), "No such file"),
              "%s", mt_last_error());
    CHECK(writer == NULL && no_temporaries());
}

/* An abandoned export leaves the previous file as it was and no temporary behind. */
static void test_atomic(void) {
    const char *path = mt_test_path(dir, "keep.h5");
    FILE *f = fopen(path, "w");
    fputs("previous export", f);
    fclose(f);
    const char *layers[] = {"dense"};
    mt_keras_h5_writer *writer = NULL;
    CHECK(mt_keras_h5_create(path, layers, 1, &writer) == MT_OK);
    float v[2] = {1, 2};
    int64_t shape[1] = {2};
    CHECK(mt_keras_h5_write(writer, "dense", "bias", shape, 1, v) == MT_OK);
    CHECK(!no_temporaries()); /* the temporary is where the data goes */
    mt_keras_h5_abort(writer);
    CHECK(no_temporaries());
    char text[64] = {0};
    f = fopen(path, "r");
    CHECK(f && fgets(text, sizeof text, f) && strcmp(text, "previous export") == 0);
    if (f) fclose(f);
}

/* Read every tensor of `source` and write it to `out` with the source's own layer list, in the
 * source's listing order (alphabetical, not Keras'), so the writer's ordering is exercised. */
static mt_status export_copy(const char *source, const char *out) {
    mt_keras_h5 *file = NULL;
    MT_TRY(mt_keras_h5_open(source, &file));
    char **layers = NULL;
    size_t layer_count = 0;
    mt_keras_h5_writer *writer = NULL;
    mt_status status = mt_keras_h5_string_list(file, "", "layer_names", &layers, &layer_count);
    if (status == MT_OK)
        status = mt_keras_h5_create(out, (const char *const *)layers, layer_count, &writer);
    for (size_t i = 0; status == MT_OK && i < mt_keras_h5_count(file); i++) {
        const mt_keras_h5_tensor *t = mt_keras_h5_tensor_at(file, i);
        float *values = malloc((size_t)t->count * sizeof *values);
        status = mt_keras_h5_read(file, t->layer, t->weight, t->shape, t->rank, values);
        if (status == MT_OK)
            status = mt_keras_h5_write(writer, t->layer, t->weight, t->shape, t->rank, values);
        free(values);
    }
    if (status == MT_OK) status = mt_keras_h5_check_all_read(file);
    if (status == MT_OK) {
        status = mt_keras_h5_finish(writer);
        writer = NULL;
    }
    mt_keras_h5_abort(writer);
    mt_keras_h5_free_names(layers, layer_count);
    mt_keras_h5_close(file);
    return status;
}

/* Every tensor of the alpha-1 table reads bit-identical from both files; returns the mismatches. */
static int compare_files(const char *a_path, const char *b_path) {
    static mnv2_tensor table[MNV2_MAX_TENSORS];
    int count = mnv2_table(1.0, table), bad = 0;
    mt_keras_h5 *a = NULL, *b = NULL;
    if (mt_keras_h5_open(a_path, &a) != MT_OK || mt_keras_h5_open(b_path, &b) != MT_OK) {
        fprintf(stderr, "%s\n", mt_last_error());
        mt_keras_h5_close(a);
        return -1;
    }
    /* For a Keras 3 .weights.h5 file: the weighted layers in model order with their classes (the
     * layers without weights do not change the numbering of these classes). */
    const char *names[MNV2_MAX_TENSORS], *classes[MNV2_MAX_TENSORS];
    size_t layers = 0;
    for (int i = 0; i < count; i++) {
        if (layers && strcmp(names[layers - 1], table[i].layer) == 0) continue;
        names[layers] = table[i].layer;
        classes[layers++] = strcmp(table[i].weight, "kernel") == 0 ? "conv2d"
                            : strcmp(table[i].weight, "depthwise_kernel") == 0
                                ? "depthwise_conv2d"
                                : "batch_normalization";
    }
    if (mt_keras_h5_name_keras3_layers(b, names, classes, layers) != MT_OK) bad++;
    for (int i = 0; i < count; i++) {
        const mnv2_tensor *t = &table[i];
        int64_t n = mnv2_count(t);
        float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
        if (mt_keras_h5_read(a, t->layer, t->weight, t->shape, t->rank, x) != MT_OK ||
            mt_keras_h5_read(b, t->layer, t->weight, t->shape, t->rank, y) != MT_OK) {
            fprintf(stderr, "%s\n", mt_last_error());
            bad++;
        } else if (memcmp(x, y, (size_t)n * sizeof *x) != 0) {
            fprintf(stderr, "%s/%s differs\n", t->layer, t->weight);
            bad++;
        }
        free(x);
        free(y);
    }
    if (mt_keras_h5_check_all_read(b) != MT_OK) {
        fprintf(stderr, "%s\n", mt_last_error());
        bad++;
    }
    mt_keras_h5_close(a);
    mt_keras_h5_close(b);
    return bad;
}

static void test_imagenet_round_trip(const char *imagenet) {
    const char *out = mt_test_path(dir, "imagenet_export.h5");
    CHECK_MSG(export_copy(imagenet, out) == MT_OK, "%s", mt_last_error());
    CHECK(no_temporaries());
    CHECK_MSG(compare_files(imagenet, out) == 0, "exported tensors differ from the source");

    /* Our listing of both files, and the string lists, agree. */
    mt_keras_h5 *a = NULL, *b = NULL;
    CHECK(mt_keras_h5_open(imagenet, &a) == MT_OK);
    CHECK(mt_keras_h5_open(out, &b) == MT_OK);
    if (a && b) {
        CHECK(mt_keras_h5_count(a) == mt_keras_h5_count(b));
        for (size_t i = 0; i < mt_keras_h5_count(a) && i < mt_keras_h5_count(b); i++)
            CHECK(strcmp(mt_keras_h5_tensor_at(a, i)->path, mt_keras_h5_tensor_at(b, i)->path) ==
                  0);
        char **la = NULL, **lb = NULL;
        size_t na = 0, nb = 0;
        CHECK(mt_keras_h5_string_list(a, "", "layer_names", &la, &na) == MT_OK);
        CHECK(mt_keras_h5_string_list(b, "", "layer_names", &lb, &nb) == MT_OK);
        CHECK(na == 154 && na == nb);
        for (size_t i = 0; i < na && i < nb; i++) {
            CHECK(strcmp(la[i], lb[i]) == 0);
            char **wa = NULL, **wb = NULL;
            size_t ca = 0, cb = 0;
            CHECK(mt_keras_h5_string_list(a, la[i], "weight_names", &wa, &ca) == MT_OK);
            CHECK(mt_keras_h5_string_list(b, lb[i], "weight_names", &wb, &cb) == MT_OK);
            CHECK_MSG(ca == cb, "layer %s: %zu vs %zu weight names", la[i], ca, cb);
            for (size_t j = 0; j < ca && j < cb; j++)
                CHECK_MSG(strcmp(wa[j], wb[j]) == 0, "%s: %s vs %s", la[i], wa[j], wb[j]);
            mt_keras_h5_free_names(wa, ca);
            mt_keras_h5_free_names(wb, cb);
        }
        mt_keras_h5_free_names(la, na);
        mt_keras_h5_free_names(lb, nb);
    }
    mt_keras_h5_close(a);
    mt_keras_h5_close(b);

    /* h5py's independent view: same datasets, bit-exact values, same attributes. */
    const char *python = getenv("MT_PYTHON"), *source = getenv("MT_SOURCE_DIR");
    if (python && source) {
        char command[8192];
        snprintf(command, sizeof command, "'%s' '%s/tests/io/h5_compare.py' '%s' '%s'", python,
                 source, imagenet, out);
        CHECK_MSG(system(command) == 0, "h5_compare.py found differences (above)");
    } else {
        printf("note: MT_PYTHON/MT_SOURCE_DIR unset, no h5py comparison\n");
    }
}

/* Keras' chunked form of a string list longer than one object header, written and read back. */
static void test_long_layer_list(void) {
    enum { LAYERS = 3000 };
    char **names = malloc(LAYERS * sizeof *names);
    for (int i = 0; i < LAYERS; i++) {
        names[i] = malloc(40);
        snprintf(names[i], 40, "a_rather_long_layer_name_number_%05d", i);
    }
    const char *path = mt_test_path(dir, "long.h5");
    mt_keras_h5_writer *writer = NULL;
    CHECK(mt_keras_h5_create(path, (const char *const *)names, LAYERS, &writer) == MT_OK);
    float v = 3;
    CHECK(mt_keras_h5_write(writer, names[LAYERS - 1], "bias", NULL, 0, &v) == MT_OK);
    CHECK_MSG(mt_keras_h5_finish(writer) == MT_OK, "%s", mt_last_error());
    mt_keras_h5 *file = NULL;
    CHECK(mt_keras_h5_open(path, &file) == MT_OK);
    if (file) {
        char **got = NULL;
        size_t count = 0;
        CHECK(mt_keras_h5_string_list(file, "", "layer_names", &got, &count) == MT_OK);
        CHECK(count == LAYERS);
        for (size_t i = 0; i < count; i++)
            CHECK(strcmp(got[i], names[i]) == 0);
        mt_keras_h5_free_names(got, count);
        /* 3000 names of 37 bytes pass 64512 bytes: Keras' chunks layer_names0, layer_names1. */
        CHECK(mt_keras_h5_string_list(file, "", "layer_names1", &got, &count) == MT_OK);
        CHECK(count == LAYERS / 2);
        mt_keras_h5_free_names(got, count);
        const mt_keras_h5_tensor *t = mt_keras_h5_find(file, names[LAYERS - 1], "bias");
        CHECK(t && t->rank == 0 && t->count == 1);
        float back = 0;
        CHECK(mt_keras_h5_read(file, names[LAYERS - 1], "bias", NULL, 0, &back) == MT_OK);
        CHECK(back == 3);
    }
    mt_keras_h5_close(file);
    for (int i = 0; i < LAYERS; i++)
        free(names[i]);
    free(names);
}

int main(int argc, char **argv) {
    const char *imagenet = mt_test_shared_path("weights/mobilenet_v2_1.0_224_imagenet_no_top.h5");
    char imagenet_path[4096] = "";
    if (imagenet) snprintf(imagenet_path, sizeof imagenet_path, "%s", imagenet);
    if (argc == 3 && strcmp(argv[1], "--export") == 0) {
        if (!imagenet) mt_test_skip("../shared/weights is absent");
        mt_status status = export_copy(imagenet_path, argv[2]);
        if (status != MT_OK) fprintf(stderr, "%s\n", mt_last_error());
        return status == MT_OK ? 0 : 1;
    }
    if (argc == 4 && strcmp(argv[1], "--same") == 0) {
        int bad = compare_files(argv[2], argv[3]);
        printf("%s and %s: %d differing or unreadable tensors\n", argv[2], argv[3], bad);
        return bad == 0 ? 0 : 1;
    }

    snprintf(dir, sizeof dir, "%s", mt_test_make_temp_dir("keras-export"));
    test_small_model();
    test_create_errors();
    test_atomic();
    test_long_layer_list();
    if (imagenet)
        test_imagenet_round_trip(imagenet_path);
    else
        printf("note: ../shared/weights is absent: the ImageNet round trip is skipped\n");
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
