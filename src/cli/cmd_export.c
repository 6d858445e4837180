/* `mobiletune export`: a training checkpoint's whole classifier (backbone, pooling, head; no
 * dropout) in a format other runtimes run: ONNX (written here, in C), or a Keras file and
 * TensorFlow Lite (written by scripts/export_keras.py in the project's venv). docs/deploy.md. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "mobiletune/onnx_export.h"
#include "mobiletune/trainer.h"

static void free_names(char **names, int count) {
    for (int i = 0; names && i < count; i++) free(names[i]);
    free(names);
}

int mt_cmd_export(int argc, char **argv) {
    const char *checkpoint = NULL, *format = NULL, *output = NULL;
    bool overwrite = false;
    const cli_option options[] = {
        {"checkpoint", CLI_STRING, &checkpoint, "FILE", "a training checkpoint (.safetensors)"},
        {"format", CLI_STRING, &format, "NAME", "onnx"},
        {"output", CLI_STRING, &output, "FILE", "the file to write"},
        {"overwrite", CLI_FLAG, &overwrite, NULL, "replace FILE when it exists"},
    };
    const cli_spec spec = {
        .command = "export",
        .usage = "--checkpoint FILE --format onnx --output FILE",
        .description = "Write the whole classifier (input NHWC float32 RGB in [-1, 1], output "
                       "class probabilities)\nfor another runtime: onnx (opset 13) for ONNX "
                       "Runtime and friends. docs/deploy.md.",
        .options = options,
        .option_count = sizeof options / sizeof options[0],
    };
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = cli_parse(&spec, argc, argv, &positional, &positional_count);
    free(positional);
    if (status == MT_END) return CLI_EXIT_OK;
    if (status == MT_OK && (!checkpoint || !format || !output))
        status = MT_FAIL(MT_ERR_INVALID, "--checkpoint, --format and --output are all needed "
                         "(see --help)");
    if (status == MT_OK && strcmp(format, "onnx") != 0)
        status = MT_FAIL(MT_ERR_INVALID, "--format '%s' is not one of: onnx", format);
    struct stat info;
    if (status == MT_OK && !overwrite && stat(output, &info) == 0)
        status = MT_FAIL(MT_ERR_INVALID, "'%s' exists: pass --overwrite to replace it, or "
                         "choose another --output", output);
    if (status != MT_OK) return cli_fail("export", status);

    mt_backend *backend = NULL;
    mt_model *model = NULL;
    char **names = NULL;
    /* no arithmetic happens here: the reference backend only holds the weights */
    status = mt_checkpoint_open_model(checkpoint, "reference", 1, &backend, &model, &names);
    const mt_model_layout *layout = model ? mt_model_get_layout(model) : NULL;
    const int classes = layout ? layout->config.classes : 0;
    if (status == MT_OK)
        status = mt_model_save_onnx(model, output, (const char *const *)names);
    if (status == MT_OK)
        printf("%s: MobileNetV2 alpha %g, %dx%d input, %d classes -> %s (ONNX opset %d)\n",
               checkpoint, layout->config.alpha, layout->config.input_size,
               layout->config.input_size, classes, output, MT_ONNX_OPSET);
    free_names(names, classes);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    return status == MT_OK ? CLI_EXIT_OK : cli_fail("export", status);
}
