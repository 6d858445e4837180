/* The `mobiletune` program's shared pieces: the option parser of every command line
 * (config/command_line.h: each command's options are a table of config option rows, from which
 * its --help comes), the exit codes, error reporting and number formatting. Adding a command: write
 * cmd_<name>.c with `int mt_cmd_<name>(int argc, char **argv)`, declare it here, add one line to
 * the table in main.c and the file to CMakeLists.txt. */
#ifndef MOBILETUNE_CLI_H
#define MOBILETUNE_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "config/command_line.h"
#include "mobiletune/image.h"
#include "mobiletune/ops.h"
#include "mobiletune/status.h"

/* Option rows that several commands share, for the field `f` of their struct of arguments
 * `args_type`: one wording of each in every --help. */
#define CLI_OPTION_CHECKPOINT(args_type, f)                                                        \
    {                                                                                              \
        .key = "checkpoint", .type = MT_CONFIG_TEXT, CLI_FIELD(args_type, f), .metavar = "FILE",   \
        .help = "a training checkpoint (.safetensors)"                                             \
    }
#define CLI_OPTION_BACKEND(args_type, f)                                                           \
    {                                                                                              \
        .key = "backend", .type = MT_CONFIG_ENUM, CLI_FIELD(args_type, f),                         \
        .names = &mt_backend_kind_names, .metavar = "NAME", .help = "compute backend"              \
    }
/* image files are made the model's input as mobiletune-pack makes records (mt_preprocess): with
 * the training data's --resize and --decode, the model sees the pixels it trained on */
#define CLI_OPTION_RESIZE(args_type, f)                                                            \
    {                                                                                              \
        .key = "resize", .type = MT_CONFIG_ENUM, CLI_FIELD(args_type, f),                          \
        .names = &mt_resize_mode_names, .metavar = "MODE",                                         \
        .help = "image files: the --resize the training data was packed with"                      \
    }
#define CLI_OPTION_DECODE(args_type, f)                                                            \
    {                                                                                              \
        .key = "decode", .type = MT_CONFIG_ENUM, CLI_FIELD(args_type, f),                          \
        .names = &mt_decode_mode_names, .metavar = "MODE",                                         \
        .help = "image files: the --decode the training data was packed with"                      \
    }

/* Exit codes of every command. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

/* Print "mobiletune <command>: <last error>" and return CLI_EXIT_FAILURE (or CLI_EXIT_USAGE
 * for MT_ERR_INVALID raised while parsing). */
int cli_fail(const char *command, mt_status status);

/* Free `count` malloc'd strings and their malloc'd array (class names from
 * mt_checkpoint_open_model); NULL is nothing to free. */
void cli_free_names(char **names, int count);

/* 2259265 -> "2,259,265" into buf. */
const char *cli_thousands(size_t value, char *buf, size_t size);

int mt_cmd_summary(int argc, char **argv);
int mt_cmd_features(int argc, char **argv);
int mt_cmd_train(int argc, char **argv);
int mt_cmd_eval(int argc, char **argv);
int mt_cmd_predict(int argc, char **argv);
int mt_cmd_export(int argc, char **argv);
int mt_cmd_verify(int argc, char **argv);

#endif
