/* Backend registry: maps a name chosen at start-up to its ops table, and the shape helpers
 * every backend shares. The "cuda" backend lives in a module loaded on first use
 * (cuda_module.h), so that programs built with CUDA still start where CUDA is missing. */
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/cuda_module.h"

/* Each backend folder defines MT_BACKEND_<NAME> when it is part of the build. */
static const mt_ops *const backend_tables[] = {
#ifdef MT_BACKEND_REFERENCE
    &mt_ops_reference,
#endif
#ifdef MT_BACKEND_CPU
    &mt_ops_cpu,
#endif
};
enum { BACKEND_COUNT = sizeof backend_tables / sizeof backend_tables[0] };
_Static_assert(BACKEND_COUNT > 0, "no backend compiled in");

/* src/ops/cuda/CMakeLists.txt defines MT_HAVE_CUDA on the core when it builds the module. */
#ifdef MT_HAVE_CUDA
static const char *const module_backend_names[] = {"cuda"};
#else
static const char *const module_backend_names[] = {NULL};
#endif
enum { MODULE_BACKEND_COUNT = sizeof module_backend_names / sizeof module_backend_names[0] };

const char *const *mt_backend_names(void) {
    static const char *names[BACKEND_COUNT + MODULE_BACKEND_COUNT + 1];
    int n = 0;
    for (int i = 0; i < BACKEND_COUNT; i++) names[n++] = backend_tables[i]->name;
    for (int i = 0; i < MODULE_BACKEND_COUNT; i++)
        if (module_backend_names[i]) names[n++] = module_backend_names[i];
    names[n] = NULL;
    return names;
}

/* The table of a backend that lives in a module: NULL when `name` is none of them, else loads
 * the module (an error naming what is missing when it cannot). */
static mt_status module_backend_table(const char *name, const mt_ops **ops) {
    *ops = NULL;
    for (int i = 0; i < MODULE_BACKEND_COUNT; i++) {
        if (!module_backend_names[i] || strcmp(module_backend_names[i], name) != 0) continue;
        const mt_cuda_module *module = NULL;
        mt_status status = mt_cuda_module_load(&module);
        if (status != MT_OK) return mt_error_context(status, "backend '%s'", name);
        *ops = module->ops;
    }
    return MT_OK;
}

mt_status mt_backend_create(const char *name, const mt_backend_options *options,
                            mt_backend **out) {
    *out = NULL;
    const mt_ops *ops = NULL;
    for (int i = 0; i < BACKEND_COUNT; i++)
        if (strcmp(backend_tables[i]->name, name) == 0) ops = backend_tables[i];
    if (!ops) MT_TRY(module_backend_table(name, &ops));
    if (!ops) {
        const char *const *names = mt_backend_names();
        char available[256] = "";
        for (int i = 0; names[i]; i++) {
            strncat(available, i ? ", " : "", sizeof available - strlen(available) - 1);
            strncat(available, names[i], sizeof available - strlen(available) - 1);
        }
        return MT_FAIL(MT_ERR_INVALID, "unknown backend '%s' (this build has: %s)", name,
                       available);
    }
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
