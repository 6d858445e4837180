/* Backend registry: maps a name chosen at start-up to its ops table, and the shape helpers
 * every backend shares. The "cuda" backend lives in a module loaded on first use
 * (cuda_module.h), so that programs built with CUDA still start where CUDA is missing. */
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/cuda_module.h"

static const char *const backend_kind_names[] = {[MT_BACKEND_KIND_REFERENCE] = "reference",
                                                 [MT_BACKEND_KIND_CPU] = "cpu",
                                                 [MT_BACKEND_KIND_CUDA] = "cuda"};
const mt_enum_names mt_backend_kind_names = MT_ENUM_NAMES(backend_kind_names);

static const char *const compute_precision_names[] = {[MT_COMPUTE_FP32] = "fp32",
                                                      [MT_COMPUTE_TF32] = "tf32",
                                                      [MT_COMPUTE_BF16] = "bf16",
                                                      [MT_COMPUTE_FP16] = "fp16"};
const mt_enum_names mt_compute_precision_names = MT_ENUM_NAMES(compute_precision_names);

const char *mt_compute_precision_name(mt_compute_precision precision) {
    return mt_enum_name(&mt_compute_precision_names, (int)precision);
}

/* The table of a backend compiled into the core: each backend folder defines MT_BACKEND_<NAME>
 * when it is part of the build. NULL for the others (and for those in a module). */
static const mt_ops *core_table(mt_backend_kind kind) {
    switch (kind) {
    case MT_BACKEND_KIND_REFERENCE:
#ifdef MT_BACKEND_REFERENCE
        return &mt_ops_reference;
#else
        return NULL;
#endif
    case MT_BACKEND_KIND_CPU:
#ifdef MT_BACKEND_CPU
        return &mt_ops_cpu;
#else
        return NULL;
#endif
    case MT_BACKEND_KIND_CUDA:
        break;
    }
    return NULL;
}

/* Whether a backend lives in a module this build has: src/ops/cuda/CMakeLists.txt defines
 * MT_HAVE_CUDA on the core when it builds the cuda module. */
static bool in_module(mt_backend_kind kind) {
#ifdef MT_HAVE_CUDA
    return kind == MT_BACKEND_KIND_CUDA;
#else
    (void)kind;
    return false;
#endif
}

const char *const *mt_backend_names(void) {
    static const char *names[sizeof backend_kind_names / sizeof backend_kind_names[0] + 1];
    int n = 0;
    for (int kind = 0; kind < mt_backend_kind_names.count; kind++)
        if (core_table((mt_backend_kind)kind) || in_module((mt_backend_kind)kind))
            names[n++] = backend_kind_names[kind];
    names[n] = NULL;
    return names;
}

static mt_status unknown_backend(const char *name) {
    const char *const *names = mt_backend_names();
    char available[256] = "";
    for (int i = 0; names[i]; i++) {
        strncat(available, i ? ", " : "", sizeof available - strlen(available) - 1);
        strncat(available, names[i], sizeof available - strlen(available) - 1);
    }
    return MT_FAIL(MT_ERR_INVALID, "unknown backend '%s' (this build has: %s)", name, available);
}

mt_status mt_backend_create(const char *name, const mt_backend_options *options, mt_backend **out) {
    *out = NULL;
    int kind;
    if (!mt_enum_find(&mt_backend_kind_names, name, &kind)) return unknown_backend(name);
    return mt_backend_create_kind((mt_backend_kind)kind, options, out);
}

mt_status mt_backend_create_kind(mt_backend_kind kind, const mt_backend_options *options,
                                 mt_backend **out) {
    *out = NULL;
    const char *name = mt_enum_name(&mt_backend_kind_names, (int)kind);
    const mt_ops *ops = core_table(kind);
    if (!ops && in_module(kind)) {
        const mt_cuda_module *module = NULL;
        mt_status status = mt_cuda_module_load(&module);
        if (status != MT_OK) return mt_error_context(status, "backend '%s'", name);
        ops = module->ops;
    }
    if (!ops) return unknown_backend(name);
    mt_backend *backend = calloc(1, sizeof *backend);
    if (!backend) return MT_FAIL(MT_ERR_NOMEM, "out of memory creating backend '%s'", name);
    backend->ops = ops;
    if (options) backend->options = *options;
    if ((unsigned)backend->options.precision > MT_COMPUTE_FP16) {
        free(backend);
        return MT_FAIL(MT_ERR_INVALID, "backend '%s': precision %d is none of fp32, tf32, bf16, "
                       "fp16 (train.precision)", name, (int)options->precision);
    }
    mt_status status = ops->init(backend, &backend->options);
    if (status != MT_OK) {
        free(backend);
        return mt_error_context(status, "starting backend '%s'", name);
    }
    *out = backend;
    return MT_OK;
}

void mt_backend_destroy(mt_backend *backend) {
    if (!backend) return;
    backend->ops->shutdown(backend);
    free(backend);
}

void mt_same_padding(int in, int kernel, int stride, int *pad_before, int *pad_after) {
    int out = (in + stride - 1) / stride;
    int total = (out - 1) * stride + kernel - in;
    if (total < 0) total = 0;
    *pad_before = total / 2;
    *pad_after = total - total / 2;
}

mt_shape4 mt_conv_output_shape(const mt_conv_desc *desc) {
    mt_shape4 in = desc->input;
    int h = in.h + desc->pad_top + desc->pad_bottom;
    int w = in.w + desc->pad_left + desc->pad_right;
    return (mt_shape4){
        .n = in.n,
        .h = (h - desc->kernel) / desc->stride + 1,
        .w = (w - desc->kernel) / desc->stride + 1,
        .c = desc->out_channels,
    };
}
