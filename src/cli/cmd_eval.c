/* `mobiletune eval`: loss, accuracy and confusion matrix of a checkpoint on a packed split. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mobiletune/files.h"
#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "mobiletune/ops.h"
#include "mobiletune/trainer.h"

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

typedef struct eval_args {
    const char *checkpoint, *db;
    mt_backend_kind backend;
    int batch_size, threads;
} eval_args;

#define ARG(f) CLI_FIELD(eval_args, f)
static const mt_config_option eval_options[] = {
    CLI_OPTION_CHECKPOINT(eval_args, checkpoint),
    {.key = "db",
     .type = MT_CONFIG_TEXT,
     ARG(db),
     .metavar = "DB",
     .help = "a packed split (mobiletune-pack output)"},
    CLI_OPTION_BACKEND(eval_args, backend),
    {.key = "batch-size",
     .type = MT_CONFIG_INT,
     ARG(batch_size),
     .min = 1,
     .max = 65536,
     .metavar = "N",
     .help = "images per forward pass"},
    {.key = "threads",
     .type = MT_CONFIG_INT,
     ARG(threads),
     .metavar = "N",
     .help = "loader threads"},
};
#undef ARG

static const cli_spec eval_spec = {
    .program = "mobiletune eval",
    .usage = "--checkpoint FILE --db DB [--backend NAME] [--batch-size N]",
    .description = "Loss, accuracy and confusion matrix of a trained model on a packed split, "
                   "every image once\n(across all ranks when started by mpirun).",
    .options = eval_options,
    .option_count = sizeof eval_options / sizeof eval_options[0],
};

int mt_cmd_eval(int argc, char **argv) {
    eval_args args = {.backend = MT_BACKEND_KIND_CPU, .batch_size = 32, .threads = 2};
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = cli_parse(&eval_spec, &args, argc, argv, &positional, &positional_count);
    free(positional);
    if (status == MT_END) return CLI_EXIT_OK;
    const char *checkpoint = args.checkpoint, *db = args.db;
    if (status == MT_OK && (!checkpoint || !db))
        status = MT_FAIL(MT_ERR_INVALID, "--checkpoint and --db are both needed (see --help)");
    if (status != MT_OK) return cli_fail("eval", status);

    mt_comm *comm = NULL;
    mt_backend *backend = NULL;
    mt_model *model = NULL;
    char **names = NULL;
    mt_eval_result result = {0};
    status = mt_comm_init(&argc, &argv, &comm);
    if (status == MT_OK) status = mt_file_check_regular(checkpoint, "checkpoint");
    if (status == MT_OK)
        status = mt_checkpoint_open_model(checkpoint, args.backend, args.batch_size, &backend,
                                          &model, &names);
    int classes = model ? mt_model_get_layout(model)->config.classes : 0;
    if (status == MT_OK) status = check_classes(checkpoint, names, classes, db);
    if (status == MT_OK) status = mt_evaluate(model, db, comm, args.threads, &result);
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
    cli_free_names(names, classes);
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    int code = status == MT_OK ? CLI_EXIT_OK : cli_fail("eval", status);
    mt_comm_finalize(comm);
    return code;
}
