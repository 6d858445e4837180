/* `mobiletune predict`: class probabilities for image files, decoded and resized exactly as the
 * packer does, so a prediction sees the pixels training saw. */
#include <math.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "mobiletune/files.h"
#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "mobiletune/ops.h"
#include "mobiletune/trainer.h"

/* One image file as the model's input: the packer's pixels (mt_image_preprocess_file), scaled as
 * the loader scales them (mt_u8_to_input: Keras' x/127.5 - 1, bit for bit). */
static mt_status load_input(const char *path, const mt_preprocess *prep, float *input) {
    size_t count = (size_t)prep->size * prep->size * 3;
    uint8_t *pixels = malloc(count);
    if (!pixels) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    mt_status status = mt_image_preprocess_file(path, prep, pixels);
    for (size_t i = 0; status == MT_OK && i < count; i++)
        input[i] = mt_u8_to_input(pixels[i]);
    free(pixels);
    return status;
}

typedef struct predict_args {
    const char *checkpoint;
    mt_backend_kind backend;
    mt_resize_mode resize;
    mt_decode_mode decode;
    int digits;
} predict_args;

#define ARG(f) CLI_FIELD(predict_args, f)
static const mt_config_option predict_options[] = {
    CLI_OPTION_CHECKPOINT(predict_args, checkpoint),
    CLI_OPTION_BACKEND(predict_args, backend),
    CLI_OPTION_RESIZE(predict_args, resize),
    CLI_OPTION_DECODE(predict_args, decode),
    {.key = "digits",
     .type = MT_CONFIG_INT,
     ARG(digits),
     .min = 1,
     .max = 17,
     .metavar = "N",
     .help = "decimals of each probability"},
};
#undef ARG

static const cli_spec predict_spec = {
    .program = "mobiletune predict",
    .usage = "--checkpoint FILE [--resize MODE] [--decode MODE] IMAGE...",
    .description = "Class probabilities of each image (JPEG or PNG), one line per image: the "
                   "path, the\npredicted class, then every class with its probability.",
    .options = predict_options,
    .option_count = sizeof predict_options / sizeof predict_options[0],
    .positional = true,
};

int mt_cmd_predict(int argc, char **argv) {
    predict_args args = {.backend = MT_BACKEND_KIND_CPU, .resize = MT_RESIZE_STRETCH, .digits = 4};
    char **images = NULL;
    int image_count = 0;
    mt_status status = cli_parse(&predict_spec, &args, argc, argv, &images, &image_count);
    if (status == MT_END) {
        free(images);
        return CLI_EXIT_OK;
    }
    const char *checkpoint = args.checkpoint;
    mt_preprocess prep = {.resize = args.resize, .decode = args.decode};
    const int digits = args.digits;
    if (status == MT_OK && (!checkpoint || image_count == 0))
        status = MT_FAIL(MT_ERR_INVALID, "--checkpoint and at least one image are needed");
    if (status != MT_OK) {
        free(images);
        return cli_fail("predict", status);
    }
    mt_backend *backend = NULL;
    mt_model *model = NULL;
    char **names = NULL;
    status = mt_file_check_regular(checkpoint, "checkpoint");
    if (status == MT_OK)
        status = mt_checkpoint_open_model(checkpoint, args.backend, 1, &backend, &model, &names);
    const mt_model_layout *layout = model ? mt_model_get_layout(model) : NULL;
    const int classes = layout ? layout->config.classes : 0;
    const int size = layout ? layout->config.input_size : 0;
    prep.size = size;
    float *input = status == MT_OK ? malloc((size_t)size * size * 3 * sizeof *input) : NULL;
    int failures = 0;
    for (int i = 0; status == MT_OK && input && i < image_count; i++) {
        float logits[1024];
        double probability[1024];
        mt_status one = classes <= 1024 ? load_input(images[i], &prep, input)
                                        : MT_FAIL(MT_ERR_INVALID, "too many classes to print");
        if (one == MT_OK) one = mt_model_forward(model, input, NULL, 1, false, 0, logits, NULL);
        if (one != MT_OK) {
            fprintf(stderr, "mobiletune predict: %s: %s\n", images[i], mt_last_error());
            failures++;
            continue;
        }
        if (classes == 2) {
            probability[1] = 1.0 / (1.0 + exp(-(double)logits[0]));
            probability[0] = 1.0 - probability[1];
        } else {
            double top = logits[0], sum = 0;
            for (int k = 1; k < classes; k++)
                top = fmax(top, logits[k]);
            for (int k = 0; k < classes; k++)
                sum += probability[k] = exp(logits[k] - top);
            for (int k = 0; k < classes; k++)
                probability[k] /= sum;
        }
        int best = 0;
        for (int k = 1; k < classes; k++)
            if (probability[k] > probability[best]) best = k;
        printf("%s\t%s", images[i], names[best]);
        for (int k = 0; k < classes; k++)
            printf("\t%s=%.*f", names[k], digits, probability[k]);
        printf("\n");
    }
    if (status == MT_OK && !input) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    free(input);
    free(images);
    cli_free_names(names, classes);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    if (status != MT_OK) return cli_fail("predict", status);
    return failures ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
