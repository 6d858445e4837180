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

static void usage(FILE *out) {
    fprintf(out,
            "usage: mobiletune train --config FILE [--set SECTION.KEY=VALUE]... [--resume auto|PATH]\n"
            "                        [--allow-changes] [--no-progress]\n\n"
            "Train MobileNetV2 as the config says: one process, or one rank per MPI process when\n"
            "started by mpirun/srun (launch/). --resume auto continues from the run folder's\n"
            "last checkpoint when it has one; a resume with options changed since the checkpoint\n"
            "(seed, learning rate, ...) is refused, naming them, unless --allow-changes.\n"
            "SIGTERM, SIGUSR1 (Slurm's warning before the time limit), SIGINT (Ctrl-C) and SIGHUP\n"
            "stop at the next step with a checkpoint, exit code 0; a second SIGINT stops at once.\n\n"
            "Config options (the INI file's sections and keys; docs/config.md):\n\n");
    mt_config_print_help(out);
}

static volatile sig_atomic_t interrupted = 0;

/* The first signal asks for a checkpoint at the next step; a second Ctrl-C means "now": the
 * default action ends the process (the last checkpoint written stays as it is, writes are atomic). */
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
    const char *config_path = NULL, *resume = NULL;
    bool progress = true, allow_changes = false;
    mt_train_config *config = malloc(sizeof *config);
    if (!config) return cli_fail("train", MT_FAIL(MT_ERR_NOMEM, "out of memory"));
    mt_config_defaults(config);

    /* First pass: the options that are not --set; the file must be loaded before overrides. */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            free(config);
            return CLI_EXIT_OK;
        } else if (strcmp(arg, "--config") == 0 && has_value) {
            config_path = argv[++i];
        } else if (strcmp(arg, "--resume") == 0 && has_value) {
            resume = argv[++i];
        } else if (strcmp(arg, "--set") == 0 && has_value) {
            i++;
        } else if (strcmp(arg, "--no-progress") == 0) {
            progress = false;
        } else if (strcmp(arg, "--allow-changes") == 0) {
            allow_changes = true;
        } else {
            fprintf(stderr, "mobiletune train: unknown or incomplete argument '%s' (see --help)\n",
                    arg);
            free(config);
            return CLI_EXIT_USAGE;
        }
    }
    mt_status status = MT_OK;
    /* Checked here, before src/train opens them: a FIFO or a folder must not hang the run. */
    if (config_path) status = mt_file_check_regular(config_path, "--config file");
    if (status == MT_OK && resume && strcmp(resume, "auto") != 0)
        status = mt_file_check_regular(resume, "--resume checkpoint");
    if (status == MT_OK && config_path) status = mt_config_load_file(config, config_path);
    for (int i = 1; status == MT_OK && i < argc; i++)
        if (strcmp(argv[i], "--set") == 0) status = mt_config_set(config, argv[++i]);
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
        .resume = resume, .progress = progress, .allow_changes = allow_changes};
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
