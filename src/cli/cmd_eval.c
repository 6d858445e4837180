/* `mobiletune eval` (loss, accuracy and confusion matrix of a checkpoint on a packed split) and
 * `mobiletune predict` (class probabilities for image files, decoded and resized exactly as the
 * packer does, so a prediction sees the pixels training saw). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mobiletune/files.h"
#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "mobiletune/ops.h"
#include "mobiletune/trainer.h"

static void free_names(char **names, int count) {
    for (int i = 0; names && i < count; i++) free(names[i]);
    free(names);
}

/* A label is a position in the class list: a checkpoint of cats/dogs on a database of
 * dogs/zcats would count every right answer wrong, so the lists must agree by name. */
static mt_status check_classes(const char *checkpoint, char **names, int classes, const char *db) {
    mt_dataset *dataset = NULL;
    MT_TRY(mt_dataset_open(db, &dataset));
    const mt_dataset_meta *meta = mt_dataset_meta_get(dataset);
    char message[600];
    bool same = mt_class_names_same((const char *const *)names, classes,
                                    (const char *const *)meta->class_names, meta->class_count,
                                    message, sizeof message);
    mt_dataset_close(dataset);
    if (!same)
        return MT_FAIL(MT_ERR_INVALID,
                       "checkpoint '%s' and database '%s' have different classes: %s (the "
                       "checkpoint's first): evaluate on data packed with the classes it was "
                       "trained on",
                       checkpoint, db, message);
    return MT_OK;
}

int mt_cmd_eval(int argc, char **argv) {
    const char *checkpoint = NULL, *db = NULL, *backend_name = "cpu";
    int batch_size = 32, threads = 2;
    const cli_option options[] = {
        {"checkpoint", CLI_STRING, &checkpoint, "FILE", "a training checkpoint (.safetensors)"},
        {"db", CLI_STRING, &db, "DB", "a packed split (mobiletune-pack output)"},
        {"backend", CLI_STRING, &backend_name, "NAME", "reference, cpu or cuda"},
        {"batch-size", CLI_INT, &batch_size, "N", "images per forward pass"},
        {"threads", CLI_INT, &threads, "N", "loader threads"},
    };
    const cli_spec spec = {
        .command = "eval",
        .usage = "--checkpoint FILE --db DB [--backend NAME] [--batch-size N]",
        .description = "Loss, accuracy and confusion matrix of a trained model on a packed split, "
                       "every image once\n(across all ranks when started by mpirun).",
        .options = options,
        .option_count = sizeof options / sizeof options[0],
    };
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = cli_parse(&spec, argc, argv, &positional, &positional_count);
    free(positional);
    if (status == MT_END) return CLI_EXIT_OK;
    if (status == MT_OK && (!checkpoint || !db))
        status = MT_FAIL(MT_ERR_INVALID, "--checkpoint and --db are both needed (see --help)");
    if (status == MT_OK && batch_size < 1)
        status = MT_FAIL(MT_ERR_INVALID, "--batch-size %d: give at least 1 image per forward pass",
                         batch_size);
    if (status != MT_OK) return cli_fail("eval", status);

    mt_comm *comm = NULL;
    mt_backend *backend = NULL;
    mt_model *model = NULL;
    char **names = NULL;
    mt_eval_result result = {0};
    status = mt_comm_init(&argc, &argv, &comm);
    if (status == MT_OK) status = mt_file_check_regular(checkpoint, "checkpoint");
    if (status == MT_OK)
        status = mt_checkpoint_open_model(checkpoint, backend_name, batch_size, &backend, &model,
                                          &names);
    int classes = model ? mt_model_get_layout(model)->config.classes : 0;
    if (status == MT_OK) status = check_classes(checkpoint, names, classes, db);
    if (status == MT_OK) status = mt_evaluate(model, db, comm, threads, &result);
    if (status == MT_OK && mt_comm_get_info(comm).rank == 0) {
        printf("%s on %s: %lld images, loss %.4f, accuracy %.4f\n", checkpoint, db,
               (long long)result.count, result.loss, result.accuracy);
        printf("confusion matrix (rows: true class, columns: predicted)\n%16s", "");
        for (int k = 0; k < classes; k++) printf(" %10.10s", names[k]);
        printf("\n");
        for (int r = 0; r < classes; r++) {
            printf("%16.16s", names[r]);
            for (int k = 0; k < classes; k++)
                printf(" %10lld", (long long)result.confusion[(size_t)r * classes + k]);
            printf("\n");
        }
    }
    free(result.confusion);
    free_names(names, classes);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    int code = status == MT_OK ? CLI_EXIT_OK : cli_fail("eval", status);
    mt_comm_finalize(comm);
    return code;
}

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

int mt_cmd_predict(int argc, char **argv) {
    const char *checkpoint = NULL, *backend_name = "cpu", *resize = "stretch", *decode = "scaled";
    int digits = 4;
    const cli_option options[] = {
        {"checkpoint", CLI_STRING, &checkpoint, "FILE", "a training checkpoint (.safetensors)"},
        {"backend", CLI_STRING, &backend_name, "NAME", "reference, cpu or cuda"},
        {"resize", CLI_STRING, &resize, "MODE",
         "stretch, center-crop or pad: the mode the training data was packed with"},
        {"decode", CLI_STRING, &decode, "MODE",
         "scaled or tf: the JPEG decode the training data was packed with"},
        {"digits", CLI_INT, &digits, "N", "decimals of each probability (1..17)"},
    };
    const cli_spec spec = {
        .command = "predict",
        .usage = "--checkpoint FILE [--resize MODE] [--decode MODE] IMAGE...",
        .description = "Class probabilities of each image (JPEG or PNG), one line per image: the "
                       "path, the\npredicted class, then every class with its probability.",
        .options = options,
        .option_count = sizeof options / sizeof options[0],
        .positional = true,
    };
    char **images = NULL;
    int image_count = 0;
    mt_status status = cli_parse(&spec, argc, argv, &images, &image_count);
    if (status == MT_END) return CLI_EXIT_OK;
    mt_preprocess prep = {0};
    if (status == MT_OK && (!checkpoint || image_count == 0))
        status = MT_FAIL(MT_ERR_INVALID, "--checkpoint and at least one image are needed");
    if (status == MT_OK) status = mt_resize_mode_parse(resize, &prep.resize);
    if (status == MT_OK && mt_decode_mode_parse(decode, &prep.decode) != MT_OK)
        status = mt_error_context(MT_ERR_INVALID, "--decode");
    if (status == MT_OK && (digits < 1 || digits > 17))
        status = MT_FAIL(MT_ERR_INVALID, "--digits %d is not in 1..17", digits);
    if (status != MT_OK) {
        free(images);
        return cli_fail("predict", status);
    }
    mt_backend *backend = NULL;
    mt_model *model = NULL;
    char **names = NULL;
    status = mt_file_check_regular(checkpoint, "checkpoint");
    if (status == MT_OK)
        status = mt_checkpoint_open_model(checkpoint, backend_name, 1, &backend, &model, &names);
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
    free_names(names, classes);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    if (status != MT_OK) return cli_fail("predict", status);
    return failures ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
