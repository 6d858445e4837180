/* mobiletune-pack: the command line of the dataset packer (images -> LMDB of 160x160 records).
 * Subcommands: pack (the default), info, verify. docs/packing.md is the manual. */
#include "pack.h"

#include "config/command_line.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The command line: pack_options plus what is turned into it after parsing. */
typedef struct pack_args {
    pack_options o;
    const char *split;
    int64_t max_pixels;
} pack_args;
_Static_assert(sizeof(((pack_options *)0)->seed) == sizeof(int64_t) &&
                   sizeof(((pack_options *)0)->map_size) == sizeof(int64_t),
               "--seed and --map-size are parsed as 64-bit integers");

#define ARG(f) CLI_FIELD(pack_args, f)
static const mt_config_option pack_option_rows[] = {
    {.key = "size",
     .type = MT_CONFIG_INT,
     ARG(o.size),
     .min = 1,
     .max = MT_MAX_IMAGE_SIDE,
     .metavar = "N",
     .help = "output side in pixels"},
    {.key = "resize",
     .type = MT_CONFIG_ENUM,
     ARG(o.resize),
     .names = &mt_resize_mode_names,
     .metavar = "MODE",
     .help = "stretch: bilinear like tf.image.resize"},
    {.key = "decode",
     .type = MT_CONFIG_ENUM,
     ARG(o.decode),
     .names = &mt_decode_mode_names,
     .metavar = "MODE",
     .help = "scaled: JPEG DCT scaling when much larger than SIZE; tf: full size, fast IDCT "
             "(TensorFlow's decode_jpeg pixels; slower)"},
    {.key = "encoded",
     .type = MT_CONFIG_FLAG,
     ARG(o.encoded),
     .help = "store JPEG (4:4:4) instead of raw pixels"},
    {.key = "quality",
     .type = MT_CONFIG_INT,
     ARG(o.quality),
     .min = 1,
     .max = 100,
     .metavar = "Q",
     .help = "JPEG quality for --encoded"},
    {.key = "split",
     .type = MT_CONFIG_TEXT,
     ARG(split),
     .metavar = "SPEC",
     .help = "e.g. train=0.8,val=0.1,test=0.1: stratified by class, fractions add to 1; "
             "OUT/<name> per split (default: one database OUT, split \"all\")"},
    {.key = "test-from-val",
     .type = MT_CONFIG_FLOAT,
     ARG(o.test_from_val),
     .min = 0,
     .max = 1,
     .flags = MT_CONFIG_ABOVE_MIN | MT_CONFIG_BELOW_MAX | MT_CONFIG_HIDE_DEFAULT,
     .metavar = "F",
     .help = "INPUT split into folders (below): a stratified fraction 0<F<1 of validation/ "
             "becomes OUT/test, the rest OUT/val (the tutorial: 0.2)"},
    {.key = "fraction",
     .type = MT_CONFIG_FLOAT,
     ARG(o.fraction),
     .min = 0,
     .max = 1,
     .flags = MT_CONFIG_ABOVE_MIN,
     .metavar = "F",
     .help = "pack a stratified fraction of the input first"},
    {.key = "seed",
     .type = MT_CONFIG_INT,
     ARG(o.seed),
     .min = 0,
     .max = (double)INT64_MAX,
     .metavar = "N",
     .help = "seed of the --fraction and --split shuffles"},
    {.key = "threads",
     .type = MT_CONFIG_INT,
     ARG(o.threads),
     .min = 1,
     .max = 1024,
     .metavar = "N",
     .flags = MT_CONFIG_HIDE_DEFAULT,
     .help = "decoding threads (default: all cores); output is identical for any N"},
    {.key = "report",
     .type = MT_CONFIG_TEXT,
     ARG(o.report),
     .metavar = "PATH",
     .help = "where to list skipped files (default OUT/skipped.txt)"},
    {.key = "force", .type = MT_CONFIG_FLAG, ARG(o.force), .help = "replace an existing OUT"},
    {.key = "map-size",
     .type = MT_CONFIG_INT,
     ARG(o.map_size),
     .min = 4096,
     .max = (double)((int64_t)1 << 40),
     .metavar = "BYTES",
     .flags = MT_CONFIG_HIDE_DEFAULT,
     .help = "initial LMDB map size (default: estimated; it doubles when full)"},
    {.key = "max-pixels",
     .type = MT_CONFIG_INT,
     ARG(max_pixels),
     .min = 1,
     .max = (double)((int64_t)1 << 40),
     .metavar = "N",
     .help = "skip images whose header declares more than N pixels (8192x8192 by default), "
             "before decoding or allocating anything"},
    {.key = "progress",
     .type = MT_CONFIG_FLAG,
     ARG(o.progress),
     .help = "force the progress display on (default: on a TTY)"},
    {.key = "no-progress",
     .type = MT_CONFIG_FLAG,
     ARG(o.progress),
     .flags = MT_CONFIG_CLEARS,
     .help = "force it off"},
};
#undef ARG

static const cli_spec pack_spec = {
    .program = "mobiletune-pack",
    .usage = "[pack] [options] INPUT OUT\n"
             "       mobiletune-pack info DB\n"
             "       mobiletune-pack verify DB",
    .description =
        "Pack images into LMDB records of SIZE x SIZE uint8 RGB (docs/packing.md).\n"
        "INPUT is a folder with one subfolder per class (class ids follow the sorted subfolder\n"
        "names) or a list file of 'path label' lines (label: a class name, or an integer id when\n"
        "every label is one; relative paths are relative to the list file's folder).\n"
        "OUT is the LMDB folder, or with --split the folder holding one LMDB per split.\n"
        "A folder whose subfolders are splits (train/, validation/ or val/, test/, each with one\n"
        "folder per class, as in the tutorial's cats_and_dogs_filtered.zip) is packed into\n"
        "OUT/train, OUT/val, OUT/test with one class list; --split does not apply to it.",
    .options = pack_option_rows,
    .option_count = sizeof pack_option_rows / sizeof pack_option_rows[0],
    .positional = true,
    .epilogue =
        "Unreadable, empty, truncated and non-image files are skipped and listed with the reason;\n"
        "the exit status is non-zero only when nothing was packed or writing failed.\n",
};

static int usage_error(const char *format, const char *value) {
    fprintf(stderr, "mobiletune-pack: ");
    fprintf(stderr, format, value);
    fprintf(stderr, "\n(run 'mobiletune-pack --help' for the options)\n");
    return 2;
}

static pack_args pack_defaults(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return (pack_args){.o = {.size = 160,
                             .resize = MT_RESIZE_STRETCH,
                             .quality = 95,
                             .seed = 1,
                             .fraction = 1.0,
                             .threads = cores > 0 ? (int)cores : 1,
                             .progress = -1,
                             .decode = MT_DECODE_MODE_SCALED},
                       .max_pixels = (int64_t)MT_IMAGE_DEFAULT_MAX_PIXELS};
}

static int pack_main(int argc, char **argv) {
    pack_args args = pack_defaults();
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = cli_parse(&pack_spec, &args, argc, argv, &positional, &positional_count);
    if (status == MT_END) {
        free(positional);
        return 0;
    }
    pack_options o = args.o;
    if (status == MT_OK && positional_count > 2)
        status = MT_FAIL(MT_ERR_INVALID, "unexpected argument '%s'", positional[2]);
    if (status == MT_OK && positional_count != 2)
        status = MT_FAIL(MT_ERR_INVALID, "want INPUT and OUT, e.g. mobiletune-pack "
                                         "../shared/data/cats_vs_dogs/train data/cats_vs_dogs");
    if (status == MT_OK && args.split) {
        status = pack_parse_split(args.split, &o);
        o.split_text = args.split;
    }
    if (status == MT_OK) status = mt_image_set_max_pixels((uint64_t)args.max_pixels);
    if (status != MT_OK) {
        free(positional);
        return usage_error("%s", mt_last_error());
    }
    o.input = positional[0];
    /* "out/" and "out" are the same folder; the temporary folder is named after it. */
    char *output = strdup(positional[1]);
    free(positional);
    if (!output) return 1;
    size_t n = strlen(output);
    while (n > 1 && output[n - 1] == '/')
        output[--n] = '\0';
    o.output = output;
    status = pack_run(&o);
    if (status != MT_OK) fprintf(stderr, "mobiletune-pack: %s\n", mt_last_error());
    free(output);
    return status == MT_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "info") == 0) return pack_info_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "verify") == 0) return pack_verify_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "pack") == 0) return pack_main(argc - 1, argv + 1);
    if (argc < 2) {
        pack_args defaults = pack_defaults();
        cli_print_help(&pack_spec, &defaults, stderr);
        return 2;
    }
    return pack_main(argc, argv);
}
