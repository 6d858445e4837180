/* The command-line parser every program uses (src/config/command_line.h): a table of config
 * option rows fills the command's struct through the config's own value parser, with ranges,
 * enum name tables, flags, repeated options and positional arguments; errors name the option,
 * the value and what it takes (a typo gets the nearest name); --help comes from the table. */
#include "config/command_line.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/model.h"
#include "test_util.h"

typedef struct test_args {
    int count;
    int64_t big;
    float fraction;
    float share;
    double scale;
    mt_train_mode mode;
    const char *name;
    mt_config_text_list set;
    bool verbose;
    int progress; /* -1 auto, 0 off, 1 on */
} test_args;

#define ARG(f) CLI_FIELD(test_args, f)
static const mt_config_option rows[] = {
    {.key = "count",
     .type = MT_CONFIG_INT,
     ARG(count),
     .min = 1,
     .max = 10,
     .metavar = "N",
     .help = "how many"},
    {.key = "big", .type = MT_CONFIG_INT, ARG(big), .metavar = "N", .help = "a 64-bit integer"},
    {.key = "fraction",
     .type = MT_CONFIG_FLOAT,
     ARG(fraction),
     .min = 0,
     .max = 1,
     .flags = MT_CONFIG_ABOVE_MIN,
     .metavar = "F",
     .help = "a part"},
    {.key = "share",
     .type = MT_CONFIG_FLOAT,
     ARG(share),
     .min = 0,
     .max = 1,
     .flags = MT_CONFIG_ABOVE_MIN | MT_CONFIG_BELOW_MAX,
     .metavar = "F",
     .help = "a proper part"},
    {.key = "scale", .type = MT_CONFIG_FLOAT, ARG(scale), .metavar = "S", .help = "any number"},
    {.key = "mode",
     .type = MT_CONFIG_ENUM,
     ARG(mode),
     .names = &mt_train_mode_names,
     .metavar = "MODE",
     .help = "what trains"},
    {.key = "name", .type = MT_CONFIG_TEXT, ARG(name), .metavar = "TEXT", .help = "a name"},
    {.key = "set",
     .type = MT_CONFIG_TEXT_LIST,
     ARG(set),
     .metavar = "K=V",
     .help = "one override, repeated for more"},
    {.key = "verbose", .type = MT_CONFIG_FLAG, ARG(verbose), .help = "say more"},
    {.key = "progress", .type = MT_CONFIG_FLAG, ARG(progress), .help = "progress on"},
    {.key = "no-progress",
     .type = MT_CONFIG_FLAG,
     ARG(progress),
     .flags = MT_CONFIG_CLEARS,
     .help = "progress off, with a help text long enough to need wrapping onto a second line "
             "of the help output so that no line is wider than the terminal"},
};
#undef ARG

static const cli_spec spec = {
    .program = "test",
    .usage = "[options] FILE...",
    .description = "A test command.",
    .options = rows,
    .option_count = sizeof rows / sizeof rows[0],
    .positional = true,
};

static const char *set_items[8];

/* CHECK_OK for void helpers: report and go on. */
#define EXPECT_OK(call)                                                                            \
    do {                                                                                           \
        mt_status expect_ok_ = (call);                                                             \
        CHECK_MSG(expect_ok_ == MT_OK, "%s: %s", #call, mt_last_error());                          \
    } while (0)

static test_args defaults(void) {
    return (test_args){.count = 3,
                       .fraction = 1.0f,
                       .mode = MT_TRAIN_SCRATCH,
                       .progress = -1,
                       .set = {.items = set_items, .capacity = 8}};
}

/* argv[0] "test", then `first` and the rest of a NULL-terminated list (at most 30), then NULL;
 * returns argc. */
static int collect_argv(char *argv[32], const char *first, va_list list) {
    int argc = 0;
    argv[argc++] = "test";
    for (const char *a = first; a && argc < 31; a = va_arg(list, const char *))
        argv[argc++] = (char *)a;
    argv[argc] = NULL;
    return argc;
}

/* Parse a NULL-terminated argument list (argv[0] is the command). */
static mt_status parse(const cli_spec *s, test_args *args, char ***positional, int *count,
                       const char *first, ...) {
    static char *argv[32];
    va_list list;
    va_start(list, first);
    int argc = collect_argv(argv, first, list);
    va_end(list);
    *args = defaults();
    return cli_parse(s, args, argc, argv, positional, count);
}

static void expect_error(const char *fragment, const char *first, ...) {
    static char *argv[32];
    va_list list;
    va_start(list, first);
    int argc = collect_argv(argv, first, list);
    va_end(list);
    test_args args = defaults();
    char **positional = NULL;
    int count = 0;
    mt_status status = cli_parse(&spec, &args, argc, argv, &positional, &count);
    free(positional);
    CHECK_MSG(status == MT_ERR_INVALID && strstr(mt_last_error(), fragment),
              "%s ...: status %d, message '%s', want '%s'", first, (int)status, mt_last_error(),
              fragment);
}

static void test_values(void) {
    test_args args;
    char **positional = NULL;
    int count = 0;
    EXPECT_OK(parse(&spec, &args, &positional, &count, "--count", "7", "--big=123456789012",
                    "in.jpg", "--fraction", "0.25", "--scale=-2.5", "--mode", "Finetune", "--name",
                    "x y", "--set", "a=1", "--set=b=2", "--verbose", "--progress", "--no-progress",
                    "--", "--not-an-option", NULL));
    CHECK(args.count == 7 && args.big == 123456789012LL);
    CHECK(args.fraction == 0.25f && args.scale == -2.5);
    CHECK(args.mode == MT_TRAIN_FINETUNE);
    CHECK(args.name && strcmp(args.name, "x y") == 0);
    CHECK(args.set.count == 2 && strcmp(args.set.items[0], "a=1") == 0 &&
          strcmp(args.set.items[1], "b=2") == 0);
    CHECK(args.verbose && args.progress == 0); /* the last of --progress/--no-progress wins */
    CHECK(count == 2 && strcmp(positional[0], "in.jpg") == 0 &&
          strcmp(positional[1], "--not-an-option") == 0);
    free(positional);
    /* nothing given: the defaults stay */
    EXPECT_OK(parse(&spec, &args, &positional, &count, NULL));
    CHECK(args.count == 3 && args.mode == MT_TRAIN_SCRATCH && args.progress == -1 && !args.name);
    CHECK(count == 0);
    free(positional);
    /* --help prints and ends */
    CHECK(parse(&spec, &args, &positional, &count, "--count", "2", "--help", NULL) == MT_END);
    free(positional);
}

static void test_errors(void) {
    expect_error("--count 0: out of range [1, 10]", "--count", "0", NULL);
    expect_error("--count 2.5: not an integer", "--count", "2.5", NULL);
    expect_error("--big 99999999999999999999: not an integer", "--big", "99999999999999999999",
                 NULL);
    expect_error("--fraction 0: out of range (0, 1]", "--fraction", "0", NULL);
    expect_error("--share 1: out of range (0, 1)", "--share", "1", NULL);
    expect_error("--share 0: out of range (0, 1)", "--share", "0", NULL);
    expect_error("--scale nan: not a finite number", "--scale", "nan", NULL);
    expect_error("--mode 'fine': not one of scratch|frozen|finetune", "--mode", "fine", NULL);
    expect_error("unknown option '--cuont' (did you mean --count?", "--cuont", "3", NULL);
    expect_error("unknown option '--zzzzzz' (see --help)", "--zzzzzz", NULL);
    expect_error("--verbose takes no value", "--verbose=yes", NULL);
    expect_error("--count needs a value (N)", "--count", NULL);
    expect_error("options are long", "-c", "3", NULL);
    expect_error("given more than 8 times", "--set", "1", "--set", "2", "--set", "3", "--set", "4",
                 "--set", "5", "--set", "6", "--set", "7", "--set", "8", "--set", "9", NULL);
    /* a command without positional arguments refuses them */
    cli_spec closed = spec;
    closed.positional = false;
    test_args args;
    char **positional = NULL;
    int count = 0;
    CHECK(parse(&closed, &args, &positional, &count, "stray", NULL) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "unexpected argument 'stray'") != NULL);
    free(positional);
    /* a 4-byte int without a range of its own still refuses what does not fit */
    static const mt_config_option plain[] = {{.key = "n",
                                              .type = MT_CONFIG_INT,
                                              .offset = offsetof(test_args, count),
                                              .size = sizeof(int),
                                              .help = "n"}};
    cli_spec plain_spec = {
        .program = "test", .usage = "", .description = "", .options = plain, .option_count = 1};
    CHECK(parse(&plain_spec, &args, &positional, &count, "--n", "-5", NULL) == MT_OK &&
          args.count == -5);
    free(positional);
    CHECK(parse(&plain_spec, &args, &positional, &count, "--n", "3000000000", NULL) ==
          MT_ERR_INVALID);
    free(positional);
}

static void test_help(void) {
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    test_args args = defaults();
    cli_print_help(&spec, &args, out);
    fclose(out);
    const char *want[] = {"usage: test [options] FILE...",
                          "A test command.",
                          "  --count N                how many (1..10; default 3)",
                          "--fraction F             a part (above 0, at most 1; default 1.0)",
                          "--mode MODE              what trains (scratch|frozen|finetune; "
                          "default scratch)",
                          "--verbose                say more\n",
                          "--help                   print this help"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_MSG(strstr(text, want[i]) != NULL, "help lacks '%s':\n%s", want[i], text);
    /* every line fits in 100 columns (the long help text wraps, indented) */
    for (const char *line = text; *line;) {
        size_t length = strcspn(line, "\n");
        CHECK_MSG(length <= 100, "help line of %zu characters: %.*s", length, (int)length, line);
        line += length + (line[length] == '\n');
    }
    CHECK(strstr(text, "\n                           of the help output") != NULL ||
          strstr(text, "\n                           ") != NULL);
    free(text);
}

int main(void) {
    test_values();
    test_errors();
    test_help();
    return mt_test_finish();
}
