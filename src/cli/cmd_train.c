/* `mobiletune train`: load the config (INI + --set overrides), start communication (one process,
 * or MPI ranks under mpirun/srun), catch Slurm's warning signals, and run the training loop.
 * A failure on any rank takes the whole job down with the rank and the error named. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mobiletune/files.h"
#include "mobiletune/trainer.h"

typedef struct train_args {
    const char *config, *resume;
    mt_config_text_list set; /* the --set overrides, applied in order after the file */
    bool progress, allow_changes;
} train_args;

#define ARG(f) CLI_FIELD(train_args, f)
static const mt_config_option train_options[] = {
    {.key = "config",
     .type = MT_CONFIG_TEXT,
     ARG(config),
     .metavar = "FILE",
     .help = "the INI file of the run"},
    {.key = "set",
     .type = MT_CONFIG_TEXT_LIST,
     ARG(set),
     .metavar = "SECTION.KEY=VALUE",
     .help = "override one option of the file (repeat for more)"},
    {.key = "resume",
     .type = MT_CONFIG_TEXT,
     ARG(resume),
     .metavar = "auto|PATH",
     .help = "continue from a checkpoint (auto: the run folder's last one, if any)"},
    {.key = "allow-changes",
     .type = MT_CONFIG_FLAG,
     ARG(allow_changes),
     .help = "resume even when options changed since the checkpoint"},
    {.key = "no-progress",
     .type = MT_CONFIG_FLAG,
     ARG(progress),
     .flags = MT_CONFIG_CLEARS,
     .help = "no progress line"},
};
#undef ARG

static const cli_spec train_spec = {
    .program = "mobiletune train",
    .usage = "--config FILE [--set SECTION.KEY=VALUE]... [--resume auto|PATH]\n"
             "                        [--allow-changes] [--no-progress]",
    .description =
        "Train MobileNetV2 as the config says: one process, or one rank per MPI process when\n"
        "started by mpirun/srun (launch/). --resume auto continues from the run folder's\n"
        "last checkpoint when it has one; a resume with options changed since the checkpoint\n"
        "(seed, learning rate, ...) is refused, naming them, unless --allow-changes.\n"
        "SIGTERM, SIGUSR1 (Slurm's warning before the time limit), SIGINT (Ctrl-C) and SIGHUP\n"
        "stop at the next step with a checkpoint, exit code 0; a second SIGINT stops at once.",
    .options = train_options,
    .option_count = sizeof train_options / sizeof train_options[0],
    .epilogue = "Config options (the INI file's sections and keys; docs/config.md):\n\n",
    .print_more = mt_config_print_help,
};

static volatile sig_atomic_t interrupted = 0;

/* The first signal asks for a checkpoint at the next step; a second Ctrl-C means "now": the
 * default action ends the process (the last checkpoint written stays as it is, writes are atomic).
 */
static void on_stop_signal(int signal_number) {
    if (signal_number == SIGINT && interrupted) {
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
        return;
    }
    if (signal_number == SIGINT) interrupted = 1;
    mt_train_request_stop(signal_number);
}

/* Under MPI a rank that just returned would leave the others waiting in a collective. */
static int fail(mt_comm *comm, mt_status status) {
    if (comm && mt_comm_get_info(comm).world_size > 1) {
        char message[2300];
        snprintf(message, sizeof message, "train: %s", mt_last_error());
        mt_comm_abort(comm, 1, message);
    }
    int code = cli_fail("train", status);
    mt_comm_finalize(comm);
    return code;
}

int mt_cmd_train(int argc, char **argv) {
    train_args args = {.progress = true};
    args.set.items = calloc((size_t)(argc > 0 ? argc : 1), sizeof *args.set.items);
    args.set.capacity = argc;
    mt_train_config *config = malloc(sizeof *config);
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = config && args.set.items ? MT_OK : MT_FAIL(MT_ERR_NOMEM, "out of memory");
    if (status == MT_OK)
        status = cli_parse(&train_spec, &args, argc, argv, &positional, &positional_count);
    free(positional);
    if (status == MT_END) {
        free(args.set.items);
        free(config);
        return CLI_EXIT_OK;
    }
    const char *config_path = args.config, *resume = args.resume;
    if (status == MT_OK) mt_config_defaults(config);
    /* Checked here, before src/train opens them: a FIFO or a folder must not hang the run. */
    if (status == MT_OK && config_path)
        status = mt_file_check_regular(config_path, "--config file");
    if (status == MT_OK && resume && strcmp(resume, "auto") != 0)
        status = mt_file_check_regular(resume, "--resume checkpoint");
    /* the file first, then the overrides in order */
    if (status == MT_OK && config_path) status = mt_config_load_file(config, config_path);
    for (int i = 0; status == MT_OK && i < args.set.count; i++)
        status = mt_config_set(config, args.set.items[i]);
    free(args.set.items);
    if (status == MT_OK) status = mt_config_check(config);
    if (status != MT_OK) {
        free(config);
        return cli_fail("train", status);
    }

    mt_comm *comm = NULL;
    status = mt_comm_init(&argc, &argv, &comm);
    if (status != MT_OK) {
        free(config);
        return cli_fail("train", status);
    }
    struct sigaction action = {.sa_handler = on_stop_signal};
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGHUP, &action, NULL);

    mt_train_options options = {
        .resume = resume, .progress = args.progress, .allow_changes = args.allow_changes};
    mt_train_result result;
    status = mt_train(config, comm, &options, &result);
    free(config);
    if (status != MT_OK) return fail(comm, status);
    if (mt_comm_get_info(comm).rank == 0) {
        if (result.stopped_by_signal)
            printf("stopped early on a signal after %llu steps; resume with --resume auto\n",
                   (unsigned long long)result.steps_done);
        else
            printf("done: %d epochs, %llu steps in %.1f s; best val_acc %.4f\n",
                   result.epochs_done, (unsigned long long)result.steps_done, result.seconds,
                   result.best_val_accuracy);
    }
    mt_comm_finalize(comm);
    return CLI_EXIT_OK;
}
