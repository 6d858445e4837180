/* The cuda backend's switches for diagnosing it on a GPU, read from the environment when the
 * backend starts (cuda_backend.c): the legacy kernels (MT_CUDA_BN, MT_CUDA_DEPTHWISE_KERNEL,
 * MT_CUDA_DIRECT_KERNEL) and MT_CUDA_PROFILE=1's window: the CUDA event pair around each op while
 * the window is open, opening it after MT_CUDA_PROFILE_AFTER loss ops and closing it at the next
 * one, then the report (aggregated and printed by cuda_profile.c, plain C so that it is tested
 * without a GPU). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_internal.h"

/* ---- the legacy kernels ---------------------------------------------------------------------- */

/* MT_CUDA_BN, MT_CUDA_DEPTHWISE_KERNEL, MT_CUDA_DIRECT_KERNEL: where a new kernel replaced an
 * old one, the old one stays selectable, to bypass the new one quickly on a GPU.
 * BN: the fused fp32 kernels (default: statistics in one launch, normalize and ReLU6 in one,
 * float4 loads) or the first double-precision ones (legacy: 5 launches forward, 4 backward,
 * ReLU6 separate). Depthwise forward and backward data: register-blocked strips (default) or
 * one output per thread (legacy); cuda_conv.c still times our kernel against cuDNN's. Direct
 * convolution's weight gradient for 3x3 over 3 channels (Conv1): every tap in registers (default)
 * or one thread per weight (legacy). */
static mt_status kernel_choice(const char *name, const char *what, bool *legacy) {
    const char *v = getenv(name);
    *legacy = false;
    if (!v || !*v || strcmp(v, "new") == 0) return MT_OK;
    if (strcmp(v, "legacy") != 0)
        return MT_FAIL(MT_ERR_INVALID, "%s='%s': use new (%s, the default) or legacy", name, v,
                       what);
    *legacy = true;
    return MT_OK;
}

mt_status cuda_kernels_configure(cuda_backend *cu) {
    MT_TRY(kernel_choice("MT_CUDA_BN", "fused fp32 batch norm", &cu->bn_legacy));
    MT_TRY(kernel_choice("MT_CUDA_DEPTHWISE_KERNEL", "register-blocked depthwise kernels",
                         &cu->depthwise_legacy));
    return kernel_choice("MT_CUDA_DIRECT_KERNEL", "Conv1's register-blocked weight gradient",
                         &cu->direct_legacy);
}

/* ---- MT_CUDA_PROFILE ----------------------------------------------------------------------- */

mt_status cuda_profile_init(cuda_backend *cu) {
    const char *v = getenv("MT_CUDA_PROFILE");
    if (!v || !*v || strcmp(v, "0") == 0) return MT_OK;
    if (strcmp(v, "1") != 0)
        return MT_FAIL(MT_ERR_INVALID, "MT_CUDA_PROFILE='%s': use 1 (profile one step) or 0", v);
    int after = 4;
    const char *a = getenv("MT_CUDA_PROFILE_AFTER");
    if (a && *a) {
        char *end;
        long n = strtol(a, &end, 10);
        if (*end || n < 0 || n > 1000000)
            return MT_FAIL(MT_ERR_INVALID,
                           "MT_CUDA_PROFILE_AFTER='%s': expected the number of steps (loss ops) "
                           "to let pass before the profiled one, >= 0",
                           a);
        after = (int)n;
    }
    cuda_profiler *p = calloc(1, sizeof *p);
    if (!p) return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for MT_CUDA_PROFILE");
    cu->profile = p;
    p->open_after = after;
    CUDA_CHECK(cudaEventCreate(&p->start));
    if (after == 0) { /* from the first op on */
        CUDA_CHECK(cudaEventRecord(p->start, cu->stream));
        p->recording = true;
    }
    return MT_OK;
}

/* Waits for the window's last event, prints the report on stderr and stops recording. */
static mt_status profile_close(cuda_backend *cu) {
    cuda_profiler *p = cu->profile;
    p->recording = false;
    p->done = true;
    if (!p->count) return MT_OK;
    CUDA_CHECK(cudaEventSynchronize(p->events[2 * p->count - 1]));
    for (size_t i = 0; i < p->count; i++)
        CUDA_CHECK(cudaEventElapsedTime(&p->ops[i].ms, p->events[2 * i], p->events[2 * i + 1]));
    float window = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&window, p->start, p->events[2 * p->count - 1]));
    if (mt_cuda_profile_print(stderr, p->ops, p->count, window, 20) != 0)
        return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory printing MT_CUDA_PROFILE's report");
    return MT_OK;
}

void cuda_profile_free(cuda_backend *cu) {
    cuda_profiler *p = cu->profile;
    if (!p) return;
    if (p->recording && p->count) {
        fprintf(stderr, "mobiletune cuda profile: the program ended inside the profiled step "
                        "(fewer steps than MT_CUDA_PROFILE_AFTER + 1?); what it recorded:\n");
        if (profile_close(cu) != MT_OK) {
            fprintf(stderr, "mobiletune cuda profile: %s\n", mt_last_error());
            mt_clear_error();
        }
    }
    for (size_t i = 0; i < p->events_created; i++)
        (void)cudaEventDestroy(p->events[i]);
    if (p->start) (void)cudaEventDestroy(p->start);
    free(p->events);
    free(p->ops);
    free(p);
    cu->profile = NULL;
}

mt_status cuda_profile_begin(cuda_backend *cu, size_t *slot) {
    cuda_profiler *p = cu->profile;
    if (p->count == p->capacity) { /* before the start event: creating events is host work */
        size_t capacity = p->capacity ? 2 * p->capacity : 512;
        cudaEvent_t *events = realloc(p->events, 2 * capacity * sizeof *events);
        if (events) p->events = events;
        mt_cuda_profile_op *ops = realloc(p->ops, capacity * sizeof *ops);
        if (ops) p->ops = ops;
        if (!events || !ops) return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory profiling");
        while (p->events_created < 2 * capacity) {
            CUDA_CHECK(cudaEventCreate(&p->events[p->events_created]));
            p->events_created++;
        }
        p->capacity = capacity;
    }
    *slot = p->count;
    CUDA_CHECK(cudaEventRecord(p->events[2 * *slot], cu->stream));
    return MT_OK;
}

mt_status cuda_profile_end(cuda_backend *cu, size_t slot, mt_status status, const char *op,
                           const char *shape_format, ...) {
    cuda_profiler *p = cu->profile;
    CUDA_CHECK(cudaEventRecord(p->events[2 * slot + 1], cu->stream));
    mt_cuda_profile_op *o = &p->ops[slot];
    o->op = op;
    o->ms = 0.0f;
    va_list args;
    va_start(args, shape_format);
    vsnprintf(o->shape, sizeof o->shape, shape_format, args);
    va_end(args);
    p->count = slot + 1;
    return status;
}

/* The loss op ran (once per step): open the window after `open_after` of them, close it at the
 * next. */
mt_status cuda_profile_loss_done(cuda_backend *cu) {
    cuda_profiler *p = cu->profile;
    if (!p || p->done) return MT_OK;
    if (p->recording) return profile_close(cu);
    if (++p->losses == p->open_after) {
        CUDA_CHECK(cudaEventRecord(p->start, cu->stream));
        p->recording = true;
    }
    return MT_OK;
}
