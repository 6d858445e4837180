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
#include "mobiletune/status.h"

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
