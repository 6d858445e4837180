/* The text of the cuda backend's convolution choices (cuda_choices.h): writing it, and reading it
 * back strictly, since a choice read wrong would run another algorithm than the one recorded and
 * silently break what the text is for (a bit-exact resume). */
#include "ops/cuda/cuda_choices.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_pointwise.h"

#define CHOICES_MAGIC "mobiletune-cuda-choices"
#define CHOICES_VERSION 1
enum { LINE_MAX_BYTES = 256 };

static const char *const pass_words[] = {
    [MT_CUDA_CONV_FORWARD] = "forward",
    [MT_CUDA_CONV_BACKWARD_DATA] = "backward-data",
    [MT_CUDA_CONV_BACKWARD_FILTER] = "backward-filter",
};
static const mt_enum_names pass_names = MT_ENUM_NAMES(pass_words);
static const char *const impl_words[] = {
    [MT_CUDA_IMPL_UNDECIDED] = "undecided",
    [MT_CUDA_IMPL_CUDNN] = "cudnn",
    [MT_CUDA_IMPL_OWN] = "own",
    [MT_CUDA_IMPL_GEMM] = "gemm",
};
static const mt_enum_names impl_names = MT_ENUM_NAMES(impl_words);

/* One choice's line, without the '\n'; the bytes it needs (snprintf's answer). */
static int format_line(const mt_cuda_choice *c, char *out, size_t capacity) {
    const mt_conv_desc *d = &c->desc;
    int used = snprintf(out, capacity, "conv N%d %dx%dx%d -> %d k%d s%d pads %d %d %d %d %s %s %s",
                        d->input.n, d->input.h, d->input.w, d->input.c, d->out_channels, d->kernel,
                        d->stride, d->pad_top, d->pad_left, d->pad_bottom, d->pad_right,
                        d->depthwise ? "depthwise" : "regular", mt_enum_name(&pass_names, c->pass),
                        mt_enum_name(&impl_names, c->impl));
    if (c->impl == MT_CUDA_IMPL_CUDNN && used >= 0 && (size_t)used < capacity)
        used += snprintf(out + used, capacity - (size_t)used, " algo %d math %d workspace %zu",
                         c->algo, c->math, c->workspace);
    return used;
}

mt_status mt_cuda_choices_format(const mt_cuda_choices_header *header, const mt_cuda_choice *list,
                                 size_t count, char **text) {
    *text = NULL;
    const size_t capacity = (count + 1) * LINE_MAX_BYTES + 1;
    char *out = malloc(capacity);
    if (!out) return MT_FAIL(MT_ERR_NOMEM, "cuda choices: out of host memory");
    size_t used = (size_t)snprintf(out, capacity, "%s %d precision %s tf32 %d\n", CHOICES_MAGIC,
                                   CHOICES_VERSION, mt_compute_precision_name(header->precision),
                                   header->tf32 ? 1 : 0);
    for (size_t i = 0; i < count; i++) {
        const int line = format_line(&list[i], out + used, LINE_MAX_BYTES);
        if (line < 0 || line >= LINE_MAX_BYTES - 1) {
            free(out);
            return MT_FAIL(MT_ERR_INTERNAL, "cuda choices: choice %zu does not fit a line", i);
        }
        used += (size_t)line;
        out[used++] = '\n';
        out[used] = '\0';
    }
    *text = out;
    return MT_OK;
}

/* Nothing but blanks from `rest` on. */
static bool only_blanks(const char *rest) {
    return rest[strspn(rest, " \t\r")] == '\0';
}

static mt_status malformed(int number, const char *line, const char *why) {
    return MT_FAIL(MT_ERR_FORMAT, "cuda choices line %d '%s': %s", number, line, why);
}

static mt_status parse_header(const char *line, mt_cuda_choices_header *header) {
    char magic[32], precision[16];
    int version = 0, tf32 = -1, end = 0;
    if (sscanf(line, "%31s %d precision %15s tf32 %d%n", magic, &version, precision, &tf32, &end) !=
            4 ||
        !only_blanks(line + end) || strcmp(magic, CHOICES_MAGIC) != 0)
        return malformed(1, line, "expected '" CHOICES_MAGIC " 1 precision P tf32 0|1'");
    if (version != CHOICES_VERSION)
        return malformed(1, line, "written by another mobiletune (this one reads version 1)");
    int value = 0;
    if (!mt_enum_find(&mt_compute_precision_names, precision, &value) || (tf32 != 0 && tf32 != 1))
        return malformed(1, line, "unknown precision or tf32 not 0 or 1");
    header->precision = (mt_compute_precision)value;
    header->tf32 = tf32 == 1;
    return MT_OK;
}

static mt_status parse_choice(int number, const char *line, mt_cuda_choice *c) {
    mt_conv_desc *d = &c->desc;
    char kind[16], pass[24], impl[16];
    int end = 0;
    *c = (mt_cuda_choice){0};
    if (sscanf(line, "conv N%d %dx%dx%d -> %d k%d s%d pads %d %d %d %d %15s %23s %15s%n",
               &d->input.n, &d->input.h, &d->input.w, &d->input.c, &d->out_channels, &d->kernel,
               &d->stride, &d->pad_top, &d->pad_left, &d->pad_bottom, &d->pad_right, kind, pass,
               impl, &end) != 14)
        return malformed(number, line,
                         "expected 'conv NN HxWxC -> C kK sS pads T L B R depthwise|regular "
                         "PASS IMPL'");
    int value = 0;
    if (!mt_enum_find(&pass_names, pass, &value))
        return malformed(number, line, "the pass is not forward, backward-data or backward-filter");
    c->pass = value;
    if (!mt_enum_find(&impl_names, impl, &value) || value == MT_CUDA_IMPL_UNDECIDED)
        return malformed(number, line, "the implementation is not cudnn, own or gemm");
    c->impl = (mt_cuda_conv_impl)value;
    if (strcmp(kind, "depthwise") != 0 && strcmp(kind, "regular") != 0)
        return malformed(number, line, "the kind is not depthwise or regular");
    d->depthwise = strcmp(kind, "depthwise") == 0;
    if (d->input.n <= 0 || d->input.h <= 0 || d->input.w <= 0 || d->input.c <= 0 ||
        d->out_channels <= 0 || d->kernel <= 0 || d->stride <= 0 || d->pad_top < 0 ||
        d->pad_left < 0 || d->pad_bottom < 0 || d->pad_right < 0 ||
        (d->depthwise && d->out_channels != d->input.c))
        return malformed(number, line,
                         "not a convolution (a size not positive, a pad negative, "
                         "or a depthwise one changing the channels)");
    const char *rest = line + end;
    if (c->impl == MT_CUDA_IMPL_CUDNN) {
        unsigned long long workspace = 0;
        end = 0;
        if (sscanf(rest, " algo %d math %d workspace %llu%n", &c->algo, &c->math, &workspace,
                   &end) != 3 ||
            c->algo < 0 || c->math < 0 || strchr(rest, '-'))
            return malformed(number, line, "a cudnn choice needs 'algo A math M workspace BYTES'");
        c->workspace = (size_t)workspace;
        rest += end;
    }
    if (!only_blanks(rest)) return malformed(number, line, "unexpected text at the end");
    c->line = number;
    return MT_OK;
}

mt_status mt_cuda_choices_parse(const char *text, mt_cuda_choices_header *header,
                                mt_cuda_choice **list, size_t *count) {
    *list = NULL;
    *count = 0;
    size_t lines = 0;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    mt_cuda_choice *out = calloc(lines + 1, sizeof *out);
    if (!out) return MT_FAIL(MT_ERR_NOMEM, "cuda choices: out of host memory");
    mt_status status = MT_OK;
    size_t used = 0;
    int number = 0;
    for (const char *p = text; status == MT_OK && *p;) {
        const size_t length = strcspn(p, "\n");
        char line[LINE_MAX_BYTES];
        number++;
        snprintf(line, sizeof line, "%.*s", (int)(length < sizeof line ? length : sizeof line - 1),
                 p);
        if (length >= sizeof line)
            status = malformed(number, line, "longer than any choice");
        else if (number == 1)
            status = parse_header(line, header);
        else if (!only_blanks(line))
            status = parse_choice(number, line, &out[used++]);
        p += length + (p[length] == '\n');
    }
    if (status == MT_OK && number == 0) status = malformed(1, "", "the header line is missing");
    if (status != MT_OK || used == 0) {
        free(out);
        return status;
    }
    *list = out;
    *count = used;
    return MT_OK;
}
