/* The Keras weights reader on the two shared files: every MobileNetV2 tensor of the test's own
 * table reads with its Keras shape from both layouts (save_weights, whole-model with a head), the
 * totals are Keras' parameter counts, and every tensor agrees bit for bit with an independent h5py
 * read (tests/io/h5_checksums.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnv2_table.h"
#include "mobiletune/keras_h5.h"
#include "test_util.h"

typedef struct reference {
    char path[256];
    long long count;
    double sum;
    unsigned long long hash;
} reference;

/* h5py's view of the file, or 0 entries (with a note) when Python or h5py is unavailable. */
static int load_reference(const char *file, reference *refs, int capacity) {
    const char *python = getenv("MT_PYTHON");
    const char *source = getenv("MT_SOURCE_DIR");
    if (!python || !source) {
        printf("note: MT_PYTHON/MT_SOURCE_DIR unset, no h5py comparison\n");
        return 0;
    }
    char command[2048];
    snprintf(command, sizeof command, "'%s' '%s/tests/io/h5_checksums.py' '%s'", python, source,
             file);
    FILE *pipe = popen(command, "r");
    if (!pipe) return 0;
    int n = 0;
    char line[512];
    while (n < capacity && fgets(line, sizeof line, pipe)) {
        reference *r = &refs[n];
        if (sscanf(line, "%255[^\t]\t%lld\t%lf\t%llu", r->path, &r->count, &r->sum, &r->hash) == 4)
            n++;
    }
    int rc = pclose(pipe);
    CHECK_MSG(rc == 0 && n > 0, "h5_checksums.py on %s failed (rc %d, %d lines)", file, rc, n);
    return n;
}

/* Read every tensor of the table; compare with h5py's lines when present. Returns the value count.
 */
static int64_t read_all(mt_keras_h5 *file, const mnv2_tensor *table, int count,
                        const reference *refs, int ref_count, double *total) {
    int64_t values = 0;
    *total = 0;
    for (int i = 0; i < count; i++) {
        const mnv2_tensor *t = &table[i];
        int64_t n = mnv2_count(t);
        float *buffer = malloc((size_t)n * sizeof *buffer);
        mt_status status = mt_keras_h5_read(file, t->layer, t->weight, t->shape, t->rank, buffer);
        CHECK_MSG(status == MT_OK, "%s/%s: %s", t->layer, t->weight, mt_last_error());
        if (status == MT_OK) {
            double sum = 0;
            for (int64_t j = 0; j < n; j++)
                sum += buffer[j];
            *total += sum;
            values += n;
            const mt_keras_h5_tensor *info = mt_keras_h5_find(file, t->layer, t->weight);
            CHECK(info != NULL);
            bool matched = ref_count == 0;
            for (int r = 0; info && r < ref_count; r++) {
                if (strcmp(refs[r].path, info->path) != 0) continue;
                matched = true;
                CHECK_MSG(refs[r].count == n, "%s: h5py count %lld, ours %lld", info->path,
                          refs[r].count, (long long)n);
                CHECK_MSG(refs[r].hash == mnv2_hash(buffer, n), "%s: values differ from h5py's",
                          info->path);
                CHECK_CLOSE(sum, refs[r].sum, 1e-6, 1e-9);
            }
            CHECK_MSG(matched, "%s/%s: h5py listed no dataset '%s'", t->layer, t->weight,
                      info ? info->path : "?");
        }
        free(buffer);
    }
    return values;
}

static void test_imagenet(const char *path) {
    static mnv2_tensor table[MNV2_MAX_TENSORS];
    static reference refs[400];
    int count = mnv2_table(1.0, table);
    CHECK(count == 260);
    int ref_count = load_reference(path, refs, 400);
    CHECK(ref_count == 0 || ref_count == 260);

    mt_keras_h5 *file = NULL;
    CHECK(mt_keras_h5_open(path, &file) == MT_OK);
    if (!file) {
        fprintf(stderr, "%s\n", mt_last_error());
        return;
    }
    CHECK(mt_keras_h5_count(file) == 260);
    const mt_keras_h5_tensor *conv1 = mt_keras_h5_find(file, "Conv1", "kernel:0");
    CHECK(conv1 && strcmp(conv1->path, "Conv1/Conv1/kernel:0") == 0);
    CHECK(conv1 && strcmp(conv1->group, "Conv1") == 0 && conv1->bits == 32);
    CHECK(conv1 && conv1->rank == 4 && conv1->shape[3] == 32);
    CHECK(mt_keras_h5_check_all_read(file) == MT_ERR_FORMAT); /* nothing read yet */

    double total = 0;
    int64_t values = read_all(file, table, count, refs, ref_count, &total);
    CHECK_MSG(values == 2257984, "read %lld values", (long long)values);
    CHECK_MSG(mt_keras_h5_check_all_read(file) == MT_OK, "%s", mt_last_error());
    double h5py_total = 0;
    for (int r = 0; r < ref_count; r++)
        h5py_total += refs[r].sum;
    if (ref_count) CHECK_CLOSE(total, h5py_total, 1e-6, 1e-9);
    printf("imagenet: %d tensors, %lld values, sum %.6f\n", count, (long long)values, total);

    char **names = NULL;
    size_t name_count = 0;
    CHECK_MSG(mt_keras_h5_string_list(file, "", "layer_names", &names, &name_count) == MT_OK, "%s",
              mt_last_error());
    CHECK(name_count == 154);
    CHECK(name_count > 1 && strcmp(names[0], "input_1") == 0 && strcmp(names[1], "Conv1") == 0);
    CHECK(name_count == 154 && strcmp(names[153], "out_relu") == 0);
    mt_keras_h5_free_names(names, name_count);
    CHECK(mt_keras_h5_string_list(file, "bn_Conv1", "weight_names", &names, &name_count) == MT_OK);
    CHECK(name_count == 4 && strcmp(names[3], "bn_Conv1/moving_variance:0") == 0);
    mt_keras_h5_free_names(names, name_count);
    CHECK(mt_keras_h5_string_list(file, "Conv1_relu", "weight_names", &names, &name_count) ==
          MT_OK);
    CHECK(name_count == 0 && names == NULL);
    CHECK(mt_keras_h5_string_list(file, "", "no_such_list", &names, &name_count) == MT_ERR_FORMAT);
    mt_keras_h5_close(file);
}

static void test_teachable_machine(const char *path) {
    static mnv2_tensor table[MNV2_MAX_TENSORS];
    static reference refs[400];
    int count = mnv2_table(0.35, table);
    int ref_count = load_reference(path, refs, 400);
    CHECK(ref_count == 0 || ref_count == 263);

    mt_keras_h5 *file = NULL;
    CHECK(mt_keras_h5_open(path, &file) == MT_OK);
    if (!file) {
        fprintf(stderr, "%s\n", mt_last_error());
        return;
    }
    CHECK(mt_keras_h5_count(file) == 263);
    /* The alpha probe a model importer makes before reading: Conv1 has 16 filters at 0.35. */
    const mt_keras_h5_tensor *conv1 = mt_keras_h5_find(file, "Conv1", "kernel");
    CHECK(conv1 && conv1->rank == 4 && conv1->shape[3] == 16);
    CHECK(conv1 && strcmp(conv1->group, "model_weights/sequential_1") == 0);

    /* Unselected, the whole file is visible; the head is there too. */
    const mt_keras_h5_tensor *head = mt_keras_h5_find(file, "dense_Dense1", "kernel");
    CHECK(head && head->shape[0] == 1280 && head->shape[1] == 100);

    CHECK_MSG(mt_keras_h5_select(file, "model_weights/sequential_1/") == MT_OK, "%s",
              mt_last_error());
    CHECK(mt_keras_h5_count(file) == 260);
    CHECK(mt_keras_h5_find(file, "dense_Dense1", "kernel") == NULL);
    double total = 0;
    int64_t values = read_all(file, table, count, refs, ref_count, &total);
    CHECK_MSG(values == 410208, "read %lld values", (long long)values);
    CHECK_MSG(mt_keras_h5_check_all_read(file) == MT_OK, "%s", mt_last_error());
    printf("teachable machine backbone: %d tensors, %lld values, sum %.6f\n", count,
           (long long)values, total);

    /* Without the selection the unread head is reported by name. */
    CHECK(mt_keras_h5_select(file, NULL) == MT_OK);
    CHECK(mt_keras_h5_count(file) == 263);
    CHECK(mt_keras_h5_check_all_read(file) == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "dense_Dense1") && strstr(mt_last_error(), "3 tensor"), "%s",
              mt_last_error());

    /* The head reads too, for the test-side classifier of the model issue. */
    CHECK(mt_keras_h5_select(file, "model_weights/sequential_3") == MT_OK);
    float bias[100];
    int64_t bias_shape[1] = {100};
    CHECK_MSG(mt_keras_h5_read(file, "dense_Dense1", "bias", bias_shape, 1, bias) == MT_OK, "%s",
              mt_last_error());

    /* A group that holds nothing names the groups that do. */
    CHECK(mt_keras_h5_select(file, "model_weights/sequential_9") == MT_ERR_FORMAT);
    CHECK_MSG(strstr(mt_last_error(), "'model_weights/sequential_1'") &&
                  strstr(mt_last_error(), "'model_weights/sequential_3'"),
              "%s", mt_last_error());
    CHECK(mt_keras_h5_count(file) == 263); /* a failed select leaves no filter */

    char **names = NULL;
    size_t name_count = 0;
    CHECK(mt_keras_h5_string_list(file, "model_weights", "layer_names", &names, &name_count) ==
          MT_OK);
    CHECK(name_count == 2 && strcmp(names[0], "sequential_1") == 0 &&
          strcmp(names[1], "sequential_3") == 0);
    mt_keras_h5_free_names(names, name_count);
    mt_keras_h5_close(file);
}

int main(void) {
    const char *imagenet = mt_test_shared_path("weights/mobilenet_v2_1.0_224_imagenet_no_top.h5");
    if (!imagenet) mt_test_skip("../shared/weights (or $MT_SHARED_DIR/weights) is absent");
    char imagenet_path[4096];
    snprintf(imagenet_path, sizeof imagenet_path, "%s", imagenet);
    const char *tm = mt_test_shared_path("weights/teachable_machine_catdog_0.35_224.h5");
    if (!tm) mt_test_skip("../shared/weights/teachable_machine_catdog_0.35_224.h5 is absent");
    char tm_path[4096];
    snprintf(tm_path, sizeof tm_path, "%s", tm);

    test_imagenet(imagenet_path);
    test_teachable_machine(tm_path);
    return mt_test_finish();
}
