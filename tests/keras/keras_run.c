/* The mobiletune side of the whole-network check against Keras (keras_reference.py): reads the
 * fixture's input batch, fixed head and labels, runs our network on one backend and writes what
 * Keras wrote -- pooled features, the loss and every gradient with BN in inference mode and in
 * training mode, and the moving statistics after the training forward -- in the same folder
 * format (index.txt + data.bin), under Keras' names, for `keras_reference.py compare`.
 *
 *   keras_run --backend NAME --weights FILE.h5 --alpha A --size S --fixture DIR --images N
 *             --out DIR [--threads T]
 *
 * Feeding both sides the same float batch keeps JPEG decoding and resizing out of the comparison.
 * The network runs on the weights Keras ran with (the fixture's network/...), so a difference is
 * the network's; the importer is checked separately: mt_model_load_keras on --weights must give
 * exactly the tensors Keras loaded from the file (weight/...).
 * Exit 0 on success, 1 on any error (printed). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mobiletune/model.h"
#include "mobiletune/ops.h"
#include "mobiletune/status.h"

#define RUN_CHECK(call)                                                                            \
    do {                                                                                           \
        mt_status run_check_status_ = (call);                                                      \
        if (run_check_status_ != MT_OK) {                                                          \
            fprintf(stderr, "keras_run: %s failed: %s: %s\n", #call,                               \
                    mt_status_name(run_check_status_), mt_last_error());                           \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

typedef struct fixture_tensor {
    char name[256];
    char dtype[4];
    long offset;
    int rank;
    int shape[8];
} fixture_tensor;

typedef struct run_options {
    const char *backend, *weights, *fixture, *out;
    float alpha;
    int size, images, threads;
} run_options;

/* Reads tensor `name` (dtype f4 or i4, `count` elements) of a fixture folder into `dst`. */
static int fixture_read(const char *folder, const char *name, const char *dtype, size_t count,
                        void *dst) {
    char path[4096];
    snprintf(path, sizeof path, "%s/index.txt", folder);
    FILE *index = fopen(path, "r");
    if (!index) {
        fprintf(stderr, "keras_run: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[1024];
    fixture_tensor found = {0};
    bool have = false;
    while (!have && fgets(line, sizeof line, index)) {
        fixture_tensor t = {0};
        int used = 0;
        if (sscanf(line, "%255s %3s %ld %d%n", t.name, t.dtype, &t.offset, &t.rank, &used) != 4)
            continue;
        if (strcmp(t.name, name) != 0) continue;
        size_t elements = 1;
        const char *rest = line + used;
        for (int d = 0; d < t.rank && d < 8; d++) {
            int n = 0;
            if (sscanf(rest, "%d%n", &t.shape[d], &n) != 1) break;
            rest += n;
            elements *= (size_t)t.shape[d];
        }
        if (strcmp(t.dtype, dtype) != 0 || elements != count) {
            fprintf(stderr, "keras_run: %s: tensor %s is %s with %zu elements, want %s with %zu\n",
                    path, name, t.dtype, elements, dtype, count);
            fclose(index);
            return 1;
        }
        found = t;
        have = true;
    }
    fclose(index);
    if (!have) {
        fprintf(stderr, "keras_run: %s has no tensor %s (regenerate the fixture)\n", path, name);
        return 1;
    }
    snprintf(path, sizeof path, "%s/data.bin", folder);
    FILE *data = fopen(path, "rb");
    if (!data) {
        fprintf(stderr, "keras_run: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    int bad = fseek(data, found.offset, SEEK_SET) != 0 || fread(dst, 4, count, data) != count;
    fclose(data);
    if (bad) {
        fprintf(stderr, "keras_run: %s: short read of %s at %ld\n", path, name, found.offset);
        return 1;
    }
    return 0;
}

/* The output folder: tensors appended to data.bin, one index line each. */
typedef struct writer {
    FILE *index, *data;
    long offset;
} writer;

static int writer_open(writer *w, const char *folder) {
    char path[4096];
    if (mkdir(folder, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "keras_run: cannot create %s: %s\n", folder, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/index.txt", folder);
    w->index = fopen(path, "w");
    snprintf(path, sizeof path, "%s/data.bin", folder);
    w->data = fopen(path, "wb");
    w->offset = 0;
    if (!w->index || !w->data) {
        fprintf(stderr, "keras_run: cannot write in %s: %s\n", folder, strerror(errno));
        return 1;
    }
    return 0;
}

static int writer_put(writer *w, const char *name, const float *values, int rank,
                      const int *shape) {
    size_t count = 1;
    fprintf(w->index, "%s f4 %ld %d", name, w->offset, rank);
    for (int d = 0; d < rank; d++) {
        fprintf(w->index, " %d", shape[d]);
        count *= (size_t)shape[d];
    }
    fputc('\n', w->index);
    if (fwrite(values, sizeof(float), count, w->data) != count) {
        fprintf(stderr, "keras_run: write of %s failed: %s\n", name, strerror(errno));
        return 1;
    }
    w->offset += (long)(count * sizeof(float));
    return 0;
}

static int writer_close(writer *w) {
    int bad = 0;
    if (w->index && fclose(w->index) != 0) bad = 1;
    if (w->data && fclose(w->data) != 0) bad = 1;
    if (bad) fprintf(stderr, "keras_run: closing the output failed: %s\n", strerror(errno));
    return bad;
}

/* One model in one BN mode: load the Keras weights and the fixture's head, then one training
 * forward + backward. Writes grad_<tag>/..., loss_<tag>, and with `moving` the BN statistics. */
static int run_mode(mt_backend *backend, const run_options *o, mt_bn_mode bn_mode, const char *tag,
                    const float *images, const int32_t *labels, const float *head_w,
                    const float *head_b, bool features, bool moving, writer *w) {
    mt_model_config config = mt_model_config_default();
    config.alpha = o->alpha;
    config.input_size = o->size;
    config.classes = 2;
    config.dropout = 0.0f;
    config.mode = MT_TRAIN_SCRATCH;
    config.bn_mode = bn_mode;
    config.batch_size = o->images;
    mt_model *model = NULL;
    RUN_CHECK(mt_model_create(backend, &config, 1, &model));
    const mt_model_layout *layout = mt_model_get_layout(model);
    char name[512];
    int shape[4];
    /* The weights Keras ran with (the fixture's network/...: the file's, with some BN betas
     * moved off the ReLU6 kinks for this batch), so this checks the network alone (the importer
     * is checked against the file's own tensors, weight/..., in main). */
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->layer_index >= MT_MODEL_BACKBONE_LAYERS) continue;
        float *value = malloc(t->count * sizeof(float));
        if (!value) return 1;
        snprintf(name, sizeof name, "network/%s", t->name);
        if (fixture_read(o->fixture, name, "f4", t->count, value)) return 1;
        RUN_CHECK(mt_model_tensor_upload(model, t, value));
        free(value);
    }
    const mt_param_tensor *dense_k = mt_model_layout_find(layout, "dense", "kernel");
    const mt_param_tensor *dense_b = mt_model_layout_find(layout, "dense", "bias");
    if (!dense_k || !dense_b || dense_k->count != (size_t)layout->feature_channels) {
        fprintf(stderr, "keras_run: the model has no dense/kernel of %d x 1 and dense/bias\n",
                layout->feature_channels);
        return 1;
    }
    RUN_CHECK(mt_model_tensor_upload(model, dense_k, head_w));
    RUN_CHECK(mt_model_tensor_upload(model, dense_b, head_b));

    if (features) {
        float *f = malloc((size_t)o->images * (size_t)layout->feature_channels * sizeof(float));
        if (!f) return 1;
        RUN_CHECK(mt_model_features(model, images, o->images, f));
        shape[0] = o->images;
        shape[1] = layout->feature_channels;
        if (writer_put(w, "features", f, 2, shape)) return 1;
        free(f);
    }

    mt_step_result result = {0};
    RUN_CHECK(mt_model_forward(model, images, labels, o->images, true, 7, NULL, &result));
    RUN_CHECK(mt_model_backward(model));
    RUN_CHECK(backend->ops->synchronize(backend));
    snprintf(name, sizeof name, "loss_%s", tag);
    shape[0] = 1;
    if (writer_put(w, name, &result.loss, 1, shape)) return 1;

    float *params = NULL, *grads = NULL;
    size_t count = 0;
    mt_model_trainable(model, &params, &grads, &count);
    float *host = malloc(count * sizeof(float));
    if (!host) return 1;
    RUN_CHECK(backend->ops->download(backend, host, grads, count * sizeof(float)));
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer == MT_PARAM_TRAINABLE) {
            snprintf(name, sizeof name, "grad_%s/%s", tag, t->name);
            if (writer_put(w, name, host + t->offset, t->rank, t->shape)) return 1;
        } else if (t->buffer == MT_PARAM_STATE && moving) {
            float *stat = malloc(t->count * sizeof(float));
            if (!stat) return 1;
            RUN_CHECK(mt_model_tensor_download(model, t, stat));
            snprintf(name, sizeof name, "moving_%s/%s", tag, t->name);
            if (writer_put(w, name, stat, t->rank, t->shape)) return 1;
            free(stat);
        }
    }
    free(host);
    mt_model_destroy(model);
    return 0;
}

/* The importer against Keras: every backbone tensor mt_model_load_keras reads from --weights must
 * equal, bit for bit, what Keras itself loaded from the same file (the fixture's weight/...). */
static int check_import(mt_backend *backend, const run_options *o) {
    mt_model_config config = mt_model_config_default();
    config.alpha = o->alpha;
    config.input_size = o->size;
    config.classes = 2;
    config.batch_size = 1;
    mt_model *model = NULL;
    RUN_CHECK(mt_model_create(backend, &config, 1, &model));
    RUN_CHECK(mt_model_load_keras(model, o->weights));
    const mt_model_layout *layout = mt_model_get_layout(model);
    int checked = 0, bad = 0;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->layer_index >= MT_MODEL_BACKBONE_LAYERS) continue;
        float *ours = malloc(t->count * sizeof(float));
        float *keras = malloc(t->count * sizeof(float));
        char name[512];
        snprintf(name, sizeof name, "weight/%s", t->name);
        if (!ours || !keras || fixture_read(o->fixture, name, "f4", t->count, keras)) return 1;
        RUN_CHECK(mt_model_tensor_download(model, t, ours));
        if (memcmp(ours, keras, t->count * sizeof(float)) != 0) {
            if (bad++ < 5) fprintf(stderr, "keras_run: imported %s differs from Keras'\n", t->name);
        }
        checked++;
        free(ours);
        free(keras);
    }
    mt_model_destroy(model);
    if (bad) {
        fprintf(stderr, "keras_run: %d of %d imported tensors differ from Keras' load of %s\n", bad,
                checked, o->weights);
        return 1;
    }
    printf("keras_run: mt_model_load_keras read all %d backbone tensors of %s exactly as Keras\n",
           checked, o->weights);
    return 0;
}

static int parse(int argc, char **argv, run_options *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (!strcmp(a, "--backend"))
            o->backend = v;
        else if (!strcmp(a, "--weights"))
            o->weights = v;
        else if (!strcmp(a, "--fixture"))
            o->fixture = v;
        else if (!strcmp(a, "--out"))
            o->out = v;
        else if (!strcmp(a, "--alpha"))
            o->alpha = strtof(v, NULL);
        else if (!strcmp(a, "--size"))
            o->size = atoi(v);
        else if (!strcmp(a, "--images"))
            o->images = atoi(v);
        else if (!strcmp(a, "--threads"))
            o->threads = atoi(v);
        else
            goto usage;
        i++;
    }
    if (o->backend && o->weights && o->fixture && o->out && o->images > 0 && o->size > 0) return 0;
usage:
    fprintf(stderr, "usage: keras_run --backend NAME --weights FILE.h5 --alpha A --size S "
                    "--fixture DIR --images N --out DIR [--threads T]\n");
    return 1;
}

int main(int argc, char **argv) {
    run_options o = {.alpha = 1.0f, .size = 160, .threads = 0};
    if (parse(argc, argv, &o)) return 1;
    size_t pixels = (size_t)o.images * (size_t)o.size * (size_t)o.size * 3;
    int channels = o.alpha > 1.0f ? mt_make_divisible(1280.0f * o.alpha, 8) : 1280;
    float *images = malloc(pixels * sizeof(float));
    float *head_w = malloc((size_t)channels * sizeof(float));
    int32_t *labels = malloc((size_t)o.images * sizeof(int32_t));
    float head_b = 0.0f;
    if (!images || !head_w || !labels) return 1;
    /* The fixture may hold more images than this run uses: read all, use the first N. */
    int fixture_images = o.images;
    {
        char path[4096];
        snprintf(path, sizeof path, "%s/index.txt", o.fixture);
        FILE *f = fopen(path, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            char tname[256];
            int n = 0;
            if (sscanf(line, "%255s f4 %*d 4 %d", tname, &n) == 2 && !strcmp(tname, "input"))
                fixture_images = n;
        }
        if (f) fclose(f);
    }
    if (fixture_images != o.images) {
        fprintf(stderr,
                "keras_run: the fixture has %d images, --images is %d (BN batch statistics "
                "and the mean loss depend on the batch: use a fixture of that size)\n",
                fixture_images, o.images);
        return 1;
    }
    if (fixture_read(o.fixture, "input", "f4", pixels, images) ||
        fixture_read(o.fixture, "labels", "i4", (size_t)o.images, labels) ||
        fixture_read(o.fixture, "head/kernel", "f4", (size_t)channels, head_w) ||
        fixture_read(o.fixture, "head/bias", "f4", 1, &head_b))
        return 1;

    mt_backend_options backend_options = {.num_threads = o.threads};
    mt_backend *backend = NULL;
    RUN_CHECK(mt_backend_create(o.backend, &backend_options, &backend));
    if (check_import(backend, &o)) return 1;
    writer w = {0};
    if (writer_open(&w, o.out)) return 1;
    if (run_mode(backend, &o, MT_BN_INFERENCE, "infer", images, labels, head_w, &head_b, true,
                 false, &w) ||
        run_mode(backend, &o, MT_BN_TRAINABLE, "train", images, labels, head_w, &head_b, false,
                 true, &w))
        return 1;
    if (writer_close(&w)) return 1;
    mt_backend_destroy(backend);
    free(images);
    free(head_w);
    free(labels);
    printf("keras_run: %s backend, %d images: wrote %s\n", o.backend, o.images, o.out);
    return 0;
}
