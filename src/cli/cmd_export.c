/* `mobiletune export`: a training checkpoint's whole classifier (backbone, pooling, head; no
 * dropout) in a format other runtimes run: ONNX (written here, in C), or a Keras file and
 * TensorFlow Lite (written by scripts/export_keras.py in the project's venv). docs/deploy.md. */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "mobiletune/keras_h5.h"
#include "mobiletune/onnx_export.h"
#include "mobiletune/trainer.h"

extern char **environ;

#ifndef MT_SOURCE_DIR
#define MT_SOURCE_DIR "."
#endif

/* Every tensor of the classifier (all MT_MODEL_LAYERS layers, head included) in Keras'
 * save_weights layout, for scripts/export_keras.py to put into the Keras model by layer name. */
static mt_status save_whole_weights(mt_model *model, const char *path) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    const char *names[MT_MODEL_LAYERS];
    size_t largest = 0;
    for (int i = 0; i < MT_MODEL_LAYERS; i++) names[i] = layout->layers[i].name;
    for (int i = 0; i < layout->tensor_count; i++)
        if (layout->tensors[i].count > largest) largest = layout->tensors[i].count;
    float *host = malloc(largest * sizeof *host);
    if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    mt_keras_h5_writer *writer = NULL;
    mt_status status = mt_keras_h5_create(path, names, MT_MODEL_LAYERS, &writer);
    for (int i = 0; status == MT_OK && i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        int64_t shape[4];
        for (int d = 0; d < p->rank; d++) shape[d] = p->shape[d];
        status = mt_model_tensor_download(model, p, host);
        if (status == MT_OK)
            status = mt_keras_h5_write(writer, p->layer, p->weight, shape, p->rank, host);
    }
    if (status == MT_OK) status = mt_keras_h5_finish(writer);
    else mt_keras_h5_abort(writer);
    free(host);
    return status;
}

/* Run scripts/export_keras.py with the project's venv (MOBILETUNE_PYTHON overrides it) on the
 * weights just written. The script prints its own one-line errors. */
static mt_status run_converter(const mt_model_layout *layout, const char *weights,
                               const char *format, const char *output, const char *int8_db,
                               bool *said) {
    const char *python = getenv("MOBILETUNE_PYTHON");
    if (!python || !*python) python = MT_SOURCE_DIR "/.venv/bin/python";
    const char *script = MT_SOURCE_DIR "/scripts/export_keras.py";
    if (access(python, X_OK) != 0)
        return MT_FAIL(MT_ERR_INVALID, "--format %s needs TensorFlow, and there is no Python at "
                       "'%s': run scripts/install-deps.sh (it makes .venv with tensorflow-cpu) or "
                       "set MOBILETUNE_PYTHON", format, python);
    char alpha[32], size[16], classes[16];
    snprintf(alpha, sizeof alpha, "%g", layout->config.alpha);
    snprintf(size, sizeof size, "%d", layout->config.input_size);
    snprintf(classes, sizeof classes, "%d", layout->config.classes);
    char *const args[] = {(char *)python, (char *)script, "--weights", (char *)weights,
                          "--alpha", alpha, "--size", size, "--classes", classes,
                          "--format", (char *)format, "--output", (char *)output,
                          int8_db ? "--int8-db" : NULL, (char *)int8_db, NULL};
    fflush(stdout);
    pid_t pid;
    int error = posix_spawn(&pid, python, NULL, NULL, args, environ);
    if (error != 0)
        return MT_FAIL(MT_ERR_IO, "cannot run %s: %s", python, strerror(error));
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0)
        if (errno != EINTR) return MT_FAIL(MT_ERR_IO, "waitpid: %s", strerror(errno));
    if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) return MT_OK;
    *said = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 3; /* a missing package, one line */
    if (*said) return MT_FAIL(MT_ERR_INVALID, "--format %s needs TensorFlow", format);
    return MT_FAIL(MT_ERR_FORMAT, "%s %s failed (%s %d)", python, script,
                   WIFEXITED(wstatus) ? "exit status" : "signal",
                   WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : WTERMSIG(wstatus));
}

static mt_status export_keras(mt_model *model, const char *format, const char *output,
                              const char *int8_db, bool *said) {
    const char *tmp = getenv("TMPDIR");
    char folder[4096], weights[4160];
    snprintf(folder, sizeof folder, "%s/mobiletune-export-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(folder))
        return MT_FAIL(MT_ERR_IO, "cannot create a temporary folder '%s': %s", folder,
                       strerror(errno));
    snprintf(weights, sizeof weights, "%s/classifier.h5", folder);
    mt_status status = save_whole_weights(model, weights);
    if (status == MT_OK)
        status = run_converter(mt_model_get_layout(model), weights, format, output, int8_db, said);
    remove(weights);
    rmdir(folder);
    return status;
}

typedef enum export_format { EXPORT_ONNX = 0, EXPORT_KERAS, EXPORT_TFLITE } export_format;
static const char *const export_format_names_[] = {
    [EXPORT_ONNX] = "onnx", [EXPORT_KERAS] = "keras", [EXPORT_TFLITE] = "tflite"};
static const mt_enum_names export_format_names = MT_ENUM_NAMES(export_format_names_);

typedef struct export_args {
    const char *checkpoint, *output, *int8_db;
    int format; /* an export_format; -1 until given */
    bool overwrite;
} export_args;

#define ARG(f) CLI_FIELD(export_args, f)
static const mt_config_option export_options[] = {
    CLI_OPTION_CHECKPOINT(export_args, checkpoint),
    {.key = "format",
     .type = MT_CONFIG_ENUM,
     ARG(format),
     .names = &export_format_names,
     .metavar = "NAME",
     .help = "the runtime's format (keras: a .keras file)"},
    {.key = "output",
     .type = MT_CONFIG_TEXT,
     ARG(output),
     .metavar = "FILE",
     .help = "the file to write"},
    {.key = "overwrite",
     .type = MT_CONFIG_FLAG,
     ARG(overwrite),
     .help = "replace FILE when it exists"},
    {.key = "int8-db",
     .type = MT_CONFIG_TEXT,
     ARG(int8_db),
     .metavar = "DB",
     .help = "tflite: quantize to int8, calibrated on this packed split (its accuracy is printed)"},
};
#undef ARG

static const cli_spec export_spec = {
    .program = "mobiletune export",
    .usage = "--checkpoint FILE --format onnx|keras|tflite --output FILE [--overwrite] "
             "[--int8-db DB]",
    .description = "Write the whole classifier (input NHWC float32 RGB in [-1, 1], output "
                   "class probabilities)\nfor another runtime: onnx (opset 13, written here), "
                   "keras (a Keras 3 .keras file) or tflite\n(float32, TensorFlow's "
                   "converter); keras and tflite run scripts/export_keras.py with the\n"
                   "project's .venv (MOBILETUNE_PYTHON overrides it). docs/deploy.md.",
    .options = export_options,
    .option_count = sizeof export_options / sizeof export_options[0],
};

int mt_cmd_export(int argc, char **argv) {
    export_args args = {.format = -1};
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = cli_parse(&export_spec, &args, argc, argv, &positional, &positional_count);
    free(positional);
    if (status == MT_END) return CLI_EXIT_OK;
    const char *checkpoint = args.checkpoint, *output = args.output, *int8_db = args.int8_db;
    /* the name the converter script takes */
    const char *format = mt_enum_name(&export_format_names, args.format);
    if (status == MT_OK && (!checkpoint || args.format < 0 || !output))
        status = MT_FAIL(MT_ERR_INVALID, "--checkpoint, --format and --output are all needed "
                                         "(see --help)");
    const bool onnx = status == MT_OK && args.format == EXPORT_ONNX;
    if (status == MT_OK && int8_db && args.format != EXPORT_TFLITE)
        status = MT_FAIL(MT_ERR_INVALID, "--int8-db is for --format tflite only");
    const size_t length = output ? strlen(output) : 0;
    if (status == MT_OK && args.format == EXPORT_KERAS &&
        (length < 6 || strcmp(output + length - 6, ".keras") != 0))
        status = MT_FAIL(MT_ERR_INVALID, "--output '%s': a Keras file's name ends in .keras "
                         "(Keras 3 reads the format from it)", output);
    struct stat info;
    if (status == MT_OK && !args.overwrite && stat(output, &info) == 0)
        status = MT_FAIL(MT_ERR_INVALID,
                         "'%s' exists: pass --overwrite to replace it, or "
                         "choose another --output",
                         output);
    if (status != MT_OK) return cli_fail("export", status);

    mt_backend *backend = NULL;
    mt_model *model = NULL;
    char **names = NULL;
    bool said = false; /* the converter printed the error itself */
    /* no arithmetic happens here: the reference backend only holds the weights */
    status = mt_checkpoint_open_model(checkpoint, MT_BACKEND_KIND_REFERENCE, 1, &backend, &model,
                                      &names);
    const mt_model_layout *layout = model ? mt_model_get_layout(model) : NULL;
    const int classes = layout ? layout->config.classes : 0;
    if (status == MT_OK)
        status = onnx ? mt_model_save_onnx(model, output, (const char *const *)names)
                      : export_keras(model, format, output, int8_db, &said);
    if (status == MT_OK) {
        char what[32];
        if (onnx) snprintf(what, sizeof what, "ONNX opset %d", MT_ONNX_OPSET);
        else snprintf(what, sizeof what, "%s", format);
        printf("%s: MobileNetV2 alpha %g, %dx%d input, %d classes -> %s (%s)\n", checkpoint,
               layout->config.alpha, layout->config.input_size, layout->config.input_size,
               classes, output, what);
    }
    cli_free_names(names, classes);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    if (said) return CLI_EXIT_FAILURE;
    return status == MT_OK ? CLI_EXIT_OK : cli_fail("export", status);
}
