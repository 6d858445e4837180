/* The reference backend in "guarded device" mode: a CPU stand-in for device memory that catches
 * every host access to it. mt_backend_create("reference") with MT_REFERENCE_GUARDED=1 in the
 * environment gives this table (reference.c's init swaps it in): the same reference ops, but
 *   - every buffer and tensor is its own page-aligned anonymous mapping, PROT_NONE at rest;
 *   - each op (upload and download included) makes every mapping readable and writable on
 *     entry and inaccessible again on exit;
 *   - device_memory is true, so src/comm stages through upload/download as it does for cuda.
 * Any read or write of backend memory from outside an op (trainer, model, checkpoints, metrics,
 * comm) then dies with SIGSEGV at the offending instruction, which is what the trainer suite
 * running on this backend in CI is for (tests/trainer). The model allocates a few large buffers
 * and one tensor per activation, so a mapping each costs a few hundred mprotect calls per op:
 * fine at the tests' 32x32, alpha 0.35; nobody trains on this backend. Single-threaded callers
 * only (the ops table is called from one thread). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ops/reference/reference.h"

typedef struct guarded_region {
    void *base;
    size_t length; /* whole pages */
} guarded_region;

typedef struct guarded_state {
    mt_ref_state ref; /* first: the reference ops find their state at backend->impl */
    guarded_region *regions;
    size_t count, capacity;
    /* the regions merged into runs of adjacent mappings (mmap tends to place new mappings next
     * to each other), so that opening and closing is one mprotect per run, not per buffer;
     * rebuilt after an allocation or a free */
    guarded_region *runs;
    size_t run_count;
    bool runs_stale;
    int depth; /* > 0 while an op runs (an op may call another) */
} guarded_state;

static guarded_state *state_of(mt_backend *backend) {
    return backend->impl;
}

static size_t page_round(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (bytes + page - 1) / page * page;
}

static int by_address(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const guarded_region *)a)->base;
    uintptr_t y = (uintptr_t)((const guarded_region *)b)->base;
    return x < y ? -1 : x > y;
}

/* Out of memory for the run list: nothing is safe any more, so stop at once (as for mprotect,
 * which cannot fail on mappings of ours short of the kernel running out of page tables). */
static void rebuild_runs(guarded_state *g) {
    free(g->runs);
    g->runs = malloc((g->count ? g->count : 1) * sizeof *g->runs);
    if (!g->runs) abort();
    memcpy(g->runs, g->regions, g->count * sizeof *g->runs);
    qsort(g->runs, g->count, sizeof *g->runs, by_address);
    size_t n = 0;
    for (size_t i = 0; i < g->count; i++) {
        if (n && (char *)g->runs[n - 1].base + g->runs[n - 1].length == g->runs[i].base)
            g->runs[n - 1].length += g->runs[i].length;
        else
            g->runs[n++] = g->runs[i];
    }
    g->run_count = n;
    g->runs_stale = false;
}

static void protect_all(guarded_state *g, int protection) {
    if (g->runs_stale) rebuild_runs(g);
    for (size_t i = 0; i < g->run_count; i++)
        if (mprotect(g->runs[i].base, g->runs[i].length, protection) != 0) abort();
}

static void guard_open(mt_backend *backend) {
    guarded_state *g = state_of(backend);
    if (g->depth++ == 0) protect_all(g, PROT_READ | PROT_WRITE);
}

static void guard_close(mt_backend *backend) {
    guarded_state *g = state_of(backend);
    if (--g->depth == 0) protect_all(g, PROT_NONE);
}

static mt_status region_map(mt_backend *backend, size_t bytes, void **out) {
    guarded_state *g = state_of(backend);
    *out = NULL;
    if (g->count == g->capacity) {
        size_t capacity = g->capacity ? 2 * g->capacity : 64;
        guarded_region *grown = realloc(g->regions, capacity * sizeof *grown);
        if (!grown) return MT_FAIL(MT_ERR_NOMEM, "reference-guarded backend: out of memory");
        g->regions = grown;
        g->capacity = capacity;
    }
    size_t length = page_round(bytes ? bytes : 1);
    /* anonymous mappings are zeroed, as buffer_alloc and tensor_alloc promise */
    void *base = mmap(NULL, length, g->depth > 0 ? PROT_READ | PROT_WRITE : PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return MT_FAIL(MT_ERR_NOMEM, "reference-guarded backend: cannot map %zu bytes", length);
    g->regions[g->count++] = (guarded_region){base, length};
    g->runs_stale = true;
    *out = base;
    return MT_OK;
}

static void region_unmap(mt_backend *backend, void *base) {
    guarded_state *g = state_of(backend);
    for (size_t i = 0; i < g->count; i++) {
        if (g->regions[i].base != base) continue;
        munmap(base, g->regions[i].length);
        g->regions[i] = g->regions[--g->count];
        g->runs_stale = true;
        return;
    }
    abort(); /* freeing what this backend did not allocate: a bug to catch, not to ignore */
}

/* ---- lifetime and memory ---- */

static mt_status guarded_init(mt_backend *backend, const mt_backend_options *options) {
    backend->impl = NULL;
    MT_TRY(mt_ref_check_options(options));
    backend->impl = calloc(1, sizeof(guarded_state));
    if (!backend->impl) return MT_FAIL(MT_ERR_NOMEM, "reference-guarded backend: out of memory");
    return MT_OK;
}

static void guarded_shutdown(mt_backend *backend) {
    guarded_state *g = state_of(backend);
    if (!g) return;
    mt_ref_input_free(backend);
    for (size_t i = 0; i < g->count; i++) munmap(g->regions[i].base, g->regions[i].length);
    free(g->regions);
    free(g->runs);
    free(g);
    backend->impl = NULL;
}

static mt_status guarded_buffer_alloc(mt_backend *backend, size_t bytes, void **out) {
    return region_map(backend, bytes, out);
}

static void guarded_buffer_free(mt_backend *backend, void *buffer) {
    if (buffer) region_unmap(backend, buffer);
}

static mt_status guarded_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out) {
    *out = (mt_tensor){0};
    if (shape.n <= 0 || shape.h <= 0 || shape.w <= 0 || shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference-guarded backend: tensor shape %dx%dx%dx%d (N,H,W,C) has a "
                       "non-positive dimension",
                       shape.n, shape.h, shape.w, shape.c);
    size_t bytes = mt_shape4_count(shape) * sizeof(float);
    void *data;
    MT_TRY(region_map(backend, bytes, &data));
    *out = (mt_tensor){.shape = shape, .data = data, .bytes = bytes};
    return MT_OK;
}

static void guarded_tensor_free(mt_backend *backend, mt_tensor *tensor) {
    if (!tensor) return;
    if (tensor->data) region_unmap(backend, tensor->data);
    *tensor = (mt_tensor){0};
}

/* ---- every other op: the reference's, with the memory opened around it ---- */

#define GUARDED(name, params, args)                                                                \
    static mt_status guarded_##name params {                                                       \
        guard_open(backend);                                                                       \
        mt_status status = mt_ref_##name args;                                                     \
        guard_close(backend);                                                                      \
        return status;                                                                             \
    }

GUARDED(upload, (mt_backend * backend, void *dst, const void *src, size_t bytes),
        (backend, dst, src, bytes))
GUARDED(download, (mt_backend * backend, void *dst, const void *src, size_t bytes),
        (backend, dst, src, bytes))
GUARDED(buffer_copy, (mt_backend * backend, void *dst, const void *src, size_t bytes),
        (backend, dst, src, bytes))
GUARDED(buffer_copy_if,
        (mt_backend * backend, void *dst, const void *src, size_t bytes, const float *flag,
         double *count),
        (backend, dst, src, bytes, flag, count))
GUARDED(input_upload, (mt_backend * backend, int slot, const mt_input_batch *batch),
        (backend, slot, batch))
GUARDED(input_convert, (mt_backend * backend, int slot, mt_tensor *images, int32_t *labels),
        (backend, slot, images, labels))
GUARDED(input_wait, (mt_backend * backend, int slot), (backend, slot))
GUARDED(buffer_scale,
        (mt_backend * backend, float *x, size_t count, const float *factor, float *flag),
        (backend, x, count, factor, flag))
GUARDED(scalars_write, (mt_backend * backend, void *dst, const void *src, size_t bytes),
        (backend, dst, src, bytes))
GUARDED(readback_start, (mt_backend * backend, void *dst, const void *src, size_t bytes),
        (backend, dst, src, bytes))
GUARDED(tensor_from_nhwc, (mt_backend * backend, const float *src, mt_tensor *dst),
        (backend, src, dst))
GUARDED(tensor_to_nhwc, (mt_backend * backend, const mt_tensor *src, float *dst),
        (backend, src, dst))
GUARDED(tensor_zero, (mt_backend * backend, mt_tensor *tensor), (backend, tensor))
GUARDED(tensor_copy, (mt_backend * backend, const mt_tensor *src, mt_tensor *dst),
        (backend, src, dst))
GUARDED(add, (mt_backend * backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y),
        (backend, a, b, y))
GUARDED(relu6_forward, (mt_backend * backend, const mt_tensor *x, mt_tensor *y), (backend, x, y))
GUARDED(relu6_backward,
        (mt_backend * backend, const mt_tensor *y, const mt_tensor *dy, mt_tensor *dx),
        (backend, y, dy, dx))
GUARDED(conv_forward,
        (mt_backend * backend, const mt_conv_desc *desc, const mt_tensor *x, const float *w,
         mt_tensor *y),
        (backend, desc, x, w, y))
GUARDED(conv_backward_data,
        (mt_backend * backend, const mt_conv_desc *desc, const mt_tensor *dy, const float *w,
         mt_tensor *dx),
        (backend, desc, dy, w, dx))
GUARDED(conv_backward_weights,
        (mt_backend * backend, const mt_conv_desc *desc, const mt_tensor *x, const mt_tensor *dy,
         float *dw),
        (backend, desc, x, dy, dw))
GUARDED(batchnorm_forward_training,
        (mt_backend * backend, const mt_batchnorm_desc *desc, const mt_tensor *x,
         const float *gamma, const float *beta, float *moving_mean, float *moving_variance,
         mt_tensor *y, float *saved_mean, float *saved_inv_std),
        (backend, desc, x, gamma, beta, moving_mean, moving_variance, y, saved_mean,
         saved_inv_std))
GUARDED(batchnorm_forward_inference,
        (mt_backend * backend, const mt_batchnorm_desc *desc, const mt_tensor *x,
         const float *gamma, const float *beta, const float *moving_mean,
         const float *moving_variance, mt_tensor *y),
        (backend, desc, x, gamma, beta, moving_mean, moving_variance, y))
GUARDED(batchnorm_backward_training,
        (mt_backend * backend, const mt_batchnorm_desc *desc, const mt_tensor *x,
         const mt_tensor *dy, const float *gamma, const float *saved_mean,
         const float *saved_inv_std, mt_tensor *dx, float *dgamma, float *dbeta),
        (backend, desc, x, dy, gamma, saved_mean, saved_inv_std, dx, dgamma, dbeta))
GUARDED(batchnorm_backward_inference,
        (mt_backend * backend, const mt_batchnorm_desc *desc, const mt_tensor *x,
         const mt_tensor *dy, const float *gamma, const float *moving_mean,
         const float *moving_variance, mt_tensor *dx, float *dgamma, float *dbeta),
        (backend, desc, x, dy, gamma, moving_mean, moving_variance, dx, dgamma, dbeta))
GUARDED(zero_pad_forward,
        (mt_backend * backend, const mt_zero_pad_desc *desc, const mt_tensor *x, mt_tensor *y),
        (backend, desc, x, y))
GUARDED(zero_pad_backward,
        (mt_backend * backend, const mt_zero_pad_desc *desc, const mt_tensor *dy, mt_tensor *dx),
        (backend, desc, dy, dx))
GUARDED(global_avg_pool_forward, (mt_backend * backend, const mt_tensor *x, float *y),
        (backend, x, y))
GUARDED(global_avg_pool_backward, (mt_backend * backend, const float *dy, mt_tensor *dx),
        (backend, dy, dx))
GUARDED(dropout_forward,
        (mt_backend * backend, size_t count, float rate, const uint64_t *seed, const float *x,
         float *y, uint8_t *mask),
        (backend, count, rate, seed, x, y, mask))
GUARDED(dropout_backward,
        (mt_backend * backend, size_t count, float rate, const uint8_t *mask, const float *dy,
         float *dx),
        (backend, count, rate, mask, dy, dx))
GUARDED(dense_forward,
        (mt_backend * backend, const mt_dense_desc *desc, const float *x, const float *w,
         const float *b, float *y),
        (backend, desc, x, w, b, y))
GUARDED(dense_backward,
        (mt_backend * backend, const mt_dense_desc *desc, const float *x, const float *w,
         const float *dy, float *dx, float *dw, float *db),
        (backend, desc, x, w, dy, dx, dw, db))
GUARDED(loss_forward_backward,
        (mt_backend * backend, const mt_loss_desc *desc, const float *logits,
         const int32_t *labels, float *loss_host, float *dlogits),
        (backend, desc, logits, labels, loss_host, dlogits))
GUARDED(loss_accumulate,
        (mt_backend * backend, const mt_loss_desc *desc, const float *logits, const int32_t *labels,
         float *dlogits, const uint64_t *step, double *accum, float *skip),
        (backend, desc, logits, labels, dlogits, step, accum, skip))
GUARDED(optimizer_update,
        (mt_backend * backend, const mt_optimizer_desc *desc, float *params, const float *grads,
         float *slots),
        (backend, desc, params, grads, slots))

const mt_ops mt_ops_reference_guarded = {
    .name = "reference",
    .device_memory = true,
    .init = guarded_init,
    .shutdown = guarded_shutdown,
    .buffer_alloc = guarded_buffer_alloc,
    .buffer_free = guarded_buffer_free,
    .upload = guarded_upload,
    .download = guarded_download,
    .tensor_alloc = guarded_tensor_alloc,
    .tensor_free = guarded_tensor_free,
    /* host memory (the loader's threads write it): plain malloc, never guarded */
    .host_alloc = mt_ref_host_alloc,
    .host_free = mt_ref_host_free,
    .input_upload = guarded_input_upload,
    .input_convert = guarded_input_convert,
    .input_wait = guarded_input_wait,
    .tensor_from_nhwc = guarded_tensor_from_nhwc,
    .tensor_to_nhwc = guarded_tensor_to_nhwc,
    .synchronize = mt_ref_synchronize,
    .buffer_copy = guarded_buffer_copy,
    .buffer_copy_if = guarded_buffer_copy_if,
    .buffer_scale = guarded_buffer_scale,
    .scalars_write = guarded_scalars_write,
    .readback_start = guarded_readback_start,
    .readback_wait = mt_ref_readback_wait,
    .tensor_zero = guarded_tensor_zero,
    .tensor_copy = guarded_tensor_copy,
    .add = guarded_add,
    .relu6_forward = guarded_relu6_forward,
    .relu6_backward = guarded_relu6_backward,
    .conv_forward = guarded_conv_forward,
    .conv_backward_data = guarded_conv_backward_data,
    .conv_backward_weights = guarded_conv_backward_weights,
    .batchnorm_forward_training = guarded_batchnorm_forward_training,
    .batchnorm_forward_inference = guarded_batchnorm_forward_inference,
    .batchnorm_backward_training = guarded_batchnorm_backward_training,
    .batchnorm_backward_inference = guarded_batchnorm_backward_inference,
    .zero_pad_forward = guarded_zero_pad_forward,
    .zero_pad_backward = guarded_zero_pad_backward,
    .global_avg_pool_forward = guarded_global_avg_pool_forward,
    .global_avg_pool_backward = guarded_global_avg_pool_backward,
    .dropout_forward = guarded_dropout_forward,
    .dropout_backward = guarded_dropout_backward,
    .dense_forward = guarded_dense_forward,
    .dense_backward = guarded_dense_backward,
    .loss_forward_backward = guarded_loss_forward_backward,
    .loss_accumulate = guarded_loss_accumulate,
    .optimizer_update = guarded_optimizer_update,
};
