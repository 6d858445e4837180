/* `mobiletune features`: pooled backbone features (inference mode) of image files or of a packed
 * dataset, from Keras weights, as text lines or a raw float32 matrix. Images are decoded and
 * resized exactly as the packer does (image.h), so features of a file match those of its packed
 * record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "mobiletune/model.h"
#include "mobiletune/ops.h"

typedef struct features_run {
    mt_model *model;
    int size, batch, channels;
    float *images;   /* batch,size,size,3 in [-1,1] */
    uint8_t *pixels; /* size,size,3 */
    float *features; /* batch,channels */
    char **names;    /* batch names of the pending rows */
    int pending;
    FILE *out;
    bool binary;
    size_t written;
} features_run;

static void to_float(const uint8_t *pixels, size_t count, float *dst) {
    for (size_t i = 0; i < count; i++)
        dst[i] = mt_u8_to_input(pixels[i]);
}

static mt_status flush_rows(features_run *r) {
    if (r->pending == 0) return MT_OK;
    MT_TRY(mt_model_features(r->model, r->images, r->pending, r->features));
    for (int i = 0; i < r->pending; i++) {
        const float *row = r->features + (size_t)i * r->channels;
        if (r->binary) {
            if (fwrite(row, sizeof(float), (size_t)r->channels, r->out) != (size_t)r->channels)
                return MT_FAIL(MT_ERR_IO, "writing features of '%s' failed", r->names[i]);
        } else {
            fputs(r->names[i], r->out);
            for (int c = 0; c < r->channels; c++)
                fprintf(r->out, " %.7g", (double)row[c]);
            fputc('\n', r->out);
        }
        free(r->names[i]);
        r->names[i] = NULL;
    }
    if (ferror(r->out)) return MT_FAIL(MT_ERR_IO, "writing the features failed");
    r->written += (size_t)r->pending;
    r->pending = 0;
    return MT_OK;
}

static mt_status add_row(features_run *r, const char *name) {
    size_t count = (size_t)r->size * r->size * 3;
    to_float(r->pixels, count, r->images + (size_t)r->pending * count);
    r->names[r->pending] = strdup(name);
    if (!r->names[r->pending]) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    r->pending++;
    return r->pending == r->batch ? flush_rows(r) : MT_OK;
}

static mt_status run_files(features_run *r, char **files, int count, const mt_preprocess *prep) {
    for (int i = 0; i < count; i++) {
        mt_status status = mt_image_preprocess_file(files[i], prep, r->pixels);
        if (status != MT_OK) return mt_error_context(status, "image '%s'", files[i]);
        MT_TRY(add_row(r, files[i]));
    }
    return flush_rows(r);
}

static mt_status run_db(features_run *r, const char *path) {
    mt_dataset *dataset = NULL;
    MT_TRY(mt_dataset_open(path, &dataset));
    const mt_dataset_meta *meta = mt_dataset_meta_get(dataset);
    mt_status status = MT_OK;
    if (meta->height != r->size || meta->width != r->size || meta->channels != 3)
        status = MT_FAIL(MT_ERR_INVALID,
                         "database '%s' holds %dx%dx%d images but the model's input is %dx%dx3 "
                         "(pass --size %d, or repack)",
                         path, meta->height, meta->width, meta->channels, r->size, r->size,
                         meta->height);
    uint64_t n = mt_dataset_count(dataset);
    char name[1024];
    for (uint64_t i = 0; i < n && status == MT_OK; i++) {
        int32_t label;
        status = mt_dataset_get(dataset, i, r->pixels, &label, name, sizeof name);
        if (status == MT_OK) status = add_row(r, name);
    }
    if (status == MT_OK) status = flush_rows(r);
    mt_dataset_close(dataset);
    return status;
}

typedef struct features_args {
    mt_model_config model;
    const char *weights, *db, *output;
    mt_backend_kind backend;
    int threads;
    mt_resize_mode resize;
    mt_decode_mode decode;
    bool binary;
} features_args;

#define ARG(f) CLI_FIELD(features_args, f)
static const mt_config_option features_options[] = {
    {.key = "weights",
     .type = MT_CONFIG_TEXT,
     ARG(weights),
     .metavar = "FILE",
     .help = "Keras HDF5 weights of the backbone (required)"},
    {.key = "alpha",
     .type = MT_CONFIG_FLOAT,
     ARG(model.alpha),
     .metavar = "A",
     .help = "width multiplier the weights were saved with"},
    {.key = "size",
     .type = MT_CONFIG_INT,
     ARG(model.input_size),
     .metavar = "S",
     .help = "input side, a multiple of 32 (0: the database's, else 160)"},
    CLI_OPTION_BACKEND(features_args, backend),
    {.key = "threads",
     .type = MT_CONFIG_INT,
     ARG(threads),
     .metavar = "T",
     .help = "CPU threads (0: all cores)"},
    {.key = "batch",
     .type = MT_CONFIG_INT,
     ARG(model.batch_size),
     .metavar = "B",
     .help = "images per forward pass"},
    CLI_OPTION_RESIZE(features_args, resize),
    CLI_OPTION_DECODE(features_args, decode),
    {.key = "db",
     .type = MT_CONFIG_TEXT,
     ARG(db),
     .metavar = "DB",
     .help = "a packed dataset (LMDB folder) instead of image files"},
    {.key = "output",
     .type = MT_CONFIG_TEXT,
     ARG(output),
     .metavar = "FILE",
     .help = "write here instead of standard output"},
    {.key = "binary",
     .type = MT_CONFIG_FLAG,
     ARG(binary),
     .help = "write raw float32 rows (N x features, host byte order), no names"},
};
#undef ARG

static const cli_spec features_spec = {
    .program = "mobiletune features",
    .usage = "--weights FILE [--alpha A] [--size S] [--backend NAME] [--output FILE "
             "[--binary]] (IMAGE... | --db DB)",
    .description =
        "Run the backbone in inference mode and write the globally average-pooled features\n"
        "(1280 per image up to alpha 1.0) of each image: one line per image, its name then\n"
        "the values, or with --binary a raw float32 matrix in input order. Pixels are\n"
        "scaled to [-1, 1] as Keras' mobilenet_v2.preprocess_input does.",
    .options = features_options,
    .option_count = sizeof features_options / sizeof features_options[0],
    .positional = true,
};

int mt_cmd_features(int argc, char **argv) {
    features_args args = {.model = mt_model_config_default(),
                          .backend = MT_BACKEND_KIND_CPU,
                          .resize = MT_RESIZE_STRETCH,
                          .decode = MT_DECODE_MODE_SCALED};
    args.model.input_size = 0;
    args.model.dropout = 0.0f;
    char **files = NULL;
    int file_count = 0;
    mt_status status = cli_parse(&features_spec, &args, argc, argv, &files, &file_count);
    if (status == MT_END) {
        free(files);
        return CLI_EXIT_OK;
    }
    mt_preprocess prep = {.resize = args.resize, .decode = args.decode};
    mt_model_config config = args.model;
    const char *weights = args.weights, *db = args.db, *output = args.output;
    const bool binary = args.binary;
    if (status == MT_OK && !weights)
        status = MT_FAIL(MT_ERR_INVALID, "--weights FILE is required (a Keras .h5 file)");
    if (status == MT_OK && (file_count > 0) == (db != NULL))
        status = MT_FAIL(MT_ERR_INVALID, "give either image files or --db DB (see --help)");
    if (status == MT_OK && binary && !output)
        status = MT_FAIL(MT_ERR_INVALID, "--binary needs --output FILE");
    if (status == MT_OK && config.input_size == 0) {
        config.input_size = 160;
        if (db) {
            mt_dataset *dataset = NULL;
            status = mt_dataset_open(db, &dataset);
            if (status == MT_OK) config.input_size = mt_dataset_meta_get(dataset)->height;
            mt_dataset_close(dataset);
        }
    }
    if (status != MT_OK) {
        free(files);
        return cli_fail("features", status);
    }

    mt_backend *backend = NULL;
    features_run run = {.binary = binary, .out = stdout};
    mt_backend_options backend_options = {.num_threads = args.threads};
    status = mt_backend_create_kind(args.backend, &backend_options, &backend);
    if (status == MT_OK) status = mt_model_create(backend, &config, 0, &run.model);
    if (status == MT_OK) status = mt_model_load_keras(run.model, weights);
    if (status == MT_OK) {
        run.size = config.input_size;
        run.batch = config.batch_size;
        run.channels = mt_model_get_layout(run.model)->feature_channels;
        size_t image = (size_t)run.size * run.size * 3;
        run.images = malloc((size_t)run.batch * image * sizeof(float));
        run.pixels = malloc(image);
        run.features = malloc((size_t)run.batch * run.channels * sizeof(float));
        run.names = calloc((size_t)run.batch, sizeof *run.names);
        if (!run.images || !run.pixels || !run.features || !run.names)
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory for a batch of %d images", run.batch);
    }
    if (status == MT_OK && output) {
        run.out = fopen(output, binary ? "wb" : "w");
        if (!run.out) {
            run.out = stdout;
            status = MT_FAIL(MT_ERR_IO, "cannot create '%s'", output);
        }
    }
    prep.size = run.size;
    if (status == MT_OK) status = db ? run_db(&run, db) : run_files(&run, files, file_count, &prep);
    if (run.out != stdout && fclose(run.out) != 0 && status == MT_OK)
        status = MT_FAIL(MT_ERR_IO, "closing '%s' failed", output);
    if (status == MT_OK && output)
        fprintf(stderr, "mobiletune features: %zu x %d features written to %s\n", run.written,
                run.channels, output);
    for (int i = 0; run.names && i < run.batch; i++)
        free(run.names[i]);
    free(run.names);
    free(run.images);
    free(run.pixels);
    free(run.features);
    mt_model_destroy(run.model);
    mt_backend_destroy(backend);
    free(files);
    return status == MT_OK ? CLI_EXIT_OK : cli_fail("features", status);
}
