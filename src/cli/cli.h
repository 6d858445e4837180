/* The `mobiletune` program's shared pieces: the command table's entry type, a small
 * table-driven option parser (the --help text comes from the same table), and number
 * formatting. Adding a command: write cmd_<name>.c with `int mt_cmd_<name>(int argc, char **argv)`,
 * declare it here, add one line to the table in main.c and the file to CMakeLists.txt. */
#ifndef MOBILETUNE_CLI_H
#define MOBILETUNE_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mobiletune/status.h"

/* Exit codes of every command. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

typedef enum cli_kind { CLI_FLAG, CLI_INT, CLI_FLOAT, CLI_STRING } cli_kind;

typedef struct cli_option {
    const char *name;    /* long name, without "--" */
    cli_kind kind;
    void *value;         /* bool *, int *, float *, const char ** (points into argv) */
    const char *metavar; /* "A", "FILE" ... (not for flags) */
    const char *help;    /* one line; the default is printed from *value */
} cli_option;

typedef struct cli_spec {
    const char *command;     /* "summary" */
    const char *usage;       /* after "mobiletune <command> " */
    const char *description; /* a paragraph printed under the usage line */
    const cli_option *options;
    size_t option_count;
    bool positional;         /* accepts positional arguments */
} cli_spec;

/* Parse argv[1..argc-1] ("--name value", "--name=value", "--" ends the options). Positional
 * arguments are collected, in order, into positional[] (allocated, free() it). Returns MT_OK,
 * MT_END when --help was printed, or MT_ERR_INVALID (message says what and suggests --help). */
mt_status cli_parse(const cli_spec *spec, int argc, char **argv, char ***positional,
                    int *positional_count);
void cli_print_help(const cli_spec *spec, FILE *out);

/* Print "mobiletune <command>: <last error>" and return CLI_EXIT_FAILURE (or CLI_EXIT_USAGE
 * for MT_ERR_INVALID raised while parsing). */
int cli_fail(const char *command, mt_status status);

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
