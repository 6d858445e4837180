/* The command lines of every program (`mobiletune COMMAND`, `mobiletune-pack`) parsed by the
 * config's own machinery: a command's options are rows of mt_config_option (config.h), written
 * with designated initializers, whose `key` is the long option's name and whose offsets point into
 * the command's struct of arguments. Values are parsed and checked by the same code as the
 * config's (types, ranges, the enums' name tables), and --help is generated from the rows.
 *
 * A row without a range (min = max = 0) takes any value of its type. Defaults are the values the
 * command puts in its struct before parsing; --help prints them. */
#ifndef MOBILETUNE_COMMAND_LINE_H
#define MOBILETUNE_COMMAND_LINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mobiletune/config.h"
#include "mobiletune/status.h"

/* A row's place in the command's struct of arguments `type`. */
#define CLI_FIELD(type, f) .offset = offsetof(type, f), .size = sizeof(((type *)0)->f)

typedef struct cli_spec {
    const char *program;     /* "mobiletune summary", "mobiletune-pack" */
    const char *usage;       /* the synopsis after the program's name; more lines may follow */
    const char *description; /* a paragraph printed under the usage line */
    const mt_config_option *options;
    size_t option_count;
    bool positional;               /* accepts positional arguments */
    const char *epilogue;          /* printed after the options (or NULL) */
    void (*print_more)(FILE *out); /* then this (or NULL): e.g. the config's options */
} cli_spec;

/* Parse argv[1..argc-1] ("--name value", "--name=value", "--" ends the options) into the struct
 * at `args`. Positional arguments are collected, in order, into positional[] (allocated, free()
 * it). Returns MT_OK, MT_END when --help was printed, or MT_ERR_INVALID with a message naming the
 * option, the value and what it takes (an unknown option gets the nearest name suggested). */
mt_status cli_parse(const cli_spec *spec, void *args, int argc, char **argv, char ***positional,
                    int *positional_count);

/* The usage line, the description, every option with its values and default (read from the
 * struct at `args`), then the epilogue. */
void cli_print_help(const cli_spec *spec, const void *args, FILE *out);

#endif
