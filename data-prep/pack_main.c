/* mobiletune-pack: the command line of the dataset packer (images -> LMDB of 160x160 records).
 * Subcommands: pack (the default), info, verify. docs/packing.md is the manual. */
#include "pack.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* a numeric macro's digits inside a string literal */
#define PACK_STR_(x) #x
#define PACK_STR(x) PACK_STR_(x)

static const char usage_text[] =
    "usage: mobiletune-pack [pack] [options] INPUT OUT\n"
    "       mobiletune-pack info DB\n"
    "       mobiletune-pack verify DB\n"
    "\n"
    "Pack images into LMDB records of SIZE x SIZE uint8 RGB (docs/packing.md).\n"
    "INPUT is a folder with one subfolder per class (class ids follow the sorted subfolder\n"
    "names) or a list file of 'path label' lines (label: a class name, or an integer id when\n"
    "every label is one; relative paths are relative to the list file's folder).\n"
    "OUT is the LMDB folder, or with --split the folder holding one LMDB per split.\n"
    "A folder whose subfolders are splits (train/, validation/ or val/, test/, each with one\n"
    "folder per class, as in the tutorial's cats_and_dogs_filtered.zip) is packed into\n"
    "OUT/train, OUT/val, OUT/test with one class list; --split does not apply to it.\n"
    "\n"
    "options:\n"
    "  --size N           output side in pixels (default 160, at most "
    PACK_STR(MT_MAX_IMAGE_SIDE) ")\n"
    "  --resize MODE      stretch (default; bilinear like tf.image.resize), center-crop, pad\n"
    "  --decode MODE      scaled (default; JPEG DCT scaling when much larger than SIZE) or tf\n"
    "                     (full size, fast IDCT: TensorFlow's decode_jpeg pixels; slower)\n"
    "  --encoded          store JPEG (4:4:4) instead of raw pixels\n"
    "  --quality Q        JPEG quality for --encoded, 1..100 (default 95)\n"
    "  --split SPEC       e.g. train=0.8,val=0.1,test=0.1: stratified by class, fractions add to "
    "1;\n"
    "                     OUT/<name> per split (default: one database OUT, split \"all\")\n"
    "  --test-from-val F  INPUT split into folders (below): a stratified fraction 0<F<1 of\n"
    "                     validation/ becomes OUT/test, the rest OUT/val (the tutorial: 0.2)\n"
    "  --fraction F       pack a stratified fraction 0<F<=1 of the input first (default 1)\n"
    "  --seed N           seed of the --fraction and --split shuffles (default 1)\n"
    "  --threads N        decoding threads (default: all cores); output is identical for any N\n"
    "  --report PATH      where to list skipped files (default OUT/skipped.txt)\n"
    "  --force            replace an existing OUT\n"
    "  --map-size BYTES   initial LMDB map size (default: estimated; it doubles when full)\n"
    "  --max-pixels N     skip images whose header declares more than N pixels (default 67108864,\n"
    "                     i.e. 8192x8192), before decoding or allocating anything\n"
    "  --progress, --no-progress   force the progress display on or off (default: on a TTY)\n"
    "  -h, --help         this text\n"
    "\n"
    "Unreadable, empty, truncated and non-image files are skipped and listed with the reason;\n"
    "the exit status is non-zero only when nothing was packed or writing failed.\n";

static int usage_error(const char *format, const char *value) {
    fprintf(stderr, "mobiletune-pack: ");
    fprintf(stderr, format, value);
    fprintf(stderr, "\n(run 'mobiletune-pack --help' for the options)\n");
    return 2;
}

static bool parse_long(const char *text, long long min, long long max, long long *out) {
    if (!text || !*text) return false;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end != '\0' || errno != 0 || v < min || v > max) return false;
    *out = v;
    return true;
}

static int pack_main(int argc, char **argv) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    pack_options o = {.size = 160,
                      .resize = MT_RESIZE_STRETCH,
                      .quality = 95,
                      .seed = 1,
                      .fraction = 1.0,
                      .threads = cores > 0 ? (int)cores : 1,
                      .progress = -1};
    const char *positional[2] = {NULL, NULL};
    int positional_count = 0;
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0 || strlen(arg) == 2) {
            if (positional_count == 2) return usage_error("unexpected argument '%s'", arg);
            positional[positional_count++] = arg;
            continue;
        }
        /* --name=value or --name value */
        char name[64];
        const char *value = NULL;
        const char *eq = strchr(arg, '=');
        size_t length = eq ? (size_t)(eq - arg) : strlen(arg);
        if (length >= sizeof name) return usage_error("unknown option '%s'", arg);
        memcpy(name, arg, length);
        name[length] = '\0';
        bool is_flag = strcmp(name, "--encoded") == 0 || strcmp(name, "--force") == 0 ||
                       strcmp(name, "--progress") == 0 || strcmp(name, "--no-progress") == 0;
        if (is_flag) {
            if (eq) return usage_error("option '%s' takes no value", name);
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return usage_error("option '%s' needs a value", name);
        }
        long long n;
        if (strcmp(name, "--encoded") == 0) {
            o.encoded = true;
        } else if (strcmp(name, "--force") == 0) {
            o.force = true;
        } else if (strcmp(name, "--progress") == 0) {
            o.progress = 1;
        } else if (strcmp(name, "--no-progress") == 0) {
            o.progress = 0;
        } else if (strcmp(name, "--size") == 0) {
            if (!parse_long(value, 1, MT_MAX_IMAGE_SIDE, &n))
                return usage_error("--size '%s': want an integer 1.." PACK_STR(MT_MAX_IMAGE_SIDE),
                                   value);
            o.size = (int)n;
        } else if (strcmp(name, "--resize") == 0) {
            if (mt_resize_mode_parse(value, &o.resize) != MT_OK)
                return usage_error("--resize '%s': want stretch, center-crop or pad", value);
        } else if (strcmp(name, "--decode") == 0) {
            if (strcmp(value, "scaled") != 0 && strcmp(value, "tf") != 0)
                return usage_error("--decode '%s': want scaled or tf", value);
            o.tf_decode = strcmp(value, "tf") == 0;
        } else if (strcmp(name, "--quality") == 0) {
            if (!parse_long(value, 1, 100, &n))
                return usage_error("--quality '%s': want an integer 1..100", value);
            o.quality = (int)n;
        } else if (strcmp(name, "--split") == 0) {
            if (pack_parse_split(value, &o) != MT_OK) return usage_error("%s", mt_last_error());
            o.split_text = value;
        } else if (strcmp(name, "--test-from-val") == 0) {
            char *end;
            o.test_from_val = strtod(value, &end);
            if (*end != '\0' || !(o.test_from_val > 0) || !(o.test_from_val < 1))
                return usage_error("--test-from-val '%s': want a number in (0, 1), e.g. 0.2",
                                   value);
        } else if (strcmp(name, "--fraction") == 0) {
            char *end;
            o.fraction = strtod(value, &end);
            if (*end != '\0' || !(o.fraction > 0) || o.fraction > 1)
                return usage_error("--fraction '%s': want a number in (0, 1], e.g. 0.2", value);
        } else if (strcmp(name, "--seed") == 0) {
            if (!parse_long(value, 0, INT64_MAX, &n))
                return usage_error("--seed '%s': want a non-negative integer", value);
            o.seed = (uint64_t)n;
        } else if (strcmp(name, "--threads") == 0) {
            if (!parse_long(value, 1, 1024, &n))
                return usage_error("--threads '%s': want an integer 1..1024", value);
            o.threads = (int)n;
        } else if (strcmp(name, "--report") == 0) {
            o.report = value;
        } else if (strcmp(name, "--max-pixels") == 0) {
            if (!parse_long(value, 1, (long long)1 << 40, &n))
                return usage_error("--max-pixels '%s': want a pixel count, 1..2^40", value);
            mt_image_set_max_pixels((uint64_t)n);
        } else if (strcmp(name, "--map-size") == 0) {
            if (!parse_long(value, 4096, (long long)1 << 40, &n))
                return usage_error("--map-size '%s': want bytes, 4096..2^40", value);
            o.map_size = (size_t)n;
        } else {
            return usage_error("unknown option '%s'", name);
        }
    }
    if (positional_count != 2)
        return usage_error("%s", "want INPUT and OUT, e.g. mobiletune-pack "
                                 "../shared/data/cats_vs_dogs/train data/cats_vs_dogs");
    o.input = positional[0];
    /* "out/" and "out" are the same folder; the temporary folder is named after it. */
    char *output = strdup(positional[1]);
    if (!output) return 1;
    size_t n = strlen(output);
    while (n > 1 && output[n - 1] == '/')
        output[--n] = '\0';
    o.output = output;
    mt_status status = pack_run(&o);
    if (status != MT_OK) fprintf(stderr, "mobiletune-pack: %s\n", mt_last_error());
    free(output);
    return status == MT_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "info") == 0) return pack_info_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "verify") == 0) return pack_verify_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "pack") == 0) return pack_main(argc - 1, argv + 1);
    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    return pack_main(argc, argv);
}
