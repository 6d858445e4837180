/* `mobiletune`: one program, one sub-command per task. This file only dispatches; each command
 * lives in its own cmd_<name>.c and parses its own options. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the command's name */
    const char *summary;
} command;

static const command commands[] = {
    {"train", mt_cmd_train, "train as a config file says (one process, or MPI ranks)"},
    {"eval", mt_cmd_eval, "loss, accuracy and confusion matrix of a checkpoint on a packed split"},
    {"predict", mt_cmd_predict, "class probabilities of image files"},
    {"summary", mt_cmd_summary, "print the network's layers and parameter counts, Keras-style"},
    {"features", mt_cmd_features,
     "write the pooled backbone features of images or of a packed dataset"},
    {"export", mt_cmd_export, "the trained classifier for other runtimes (docs/deploy.md)"},
    {"verify", mt_cmd_verify, "check checkpoints: structure, per-tensor checksums, finite weights"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: mobiletune COMMAND [OPTIONS]\n\n"
                 "Data-parallel transfer learning of Keras' MobileNetV2, in C.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`mobiletune COMMAND --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "mobiletune: unknown command '%s' (run `mobiletune --help` for the list)\n",
            argv[1]);
    return CLI_EXIT_USAGE;
}
