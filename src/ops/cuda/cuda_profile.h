/* The bookkeeping of MT_CUDA_PROFILE=1 (see cuda_diagnostics.c for when the window opens and
 * closes): the ops of one profiled step, each with its GPU time, grouped by (op, shape) and
 * printed as the top rows by total time with their share of the step. Plain C without CUDA, so
 * the aggregation, sorting and printing are unit-tested on any machine
 * (tests/gpu/test_gpu_profile.c) with made-up timings; the CUDA events that produce the real
 * timings are the backend's. */
#ifndef MT_OPS_CUDA_PROFILE_H
#define MT_OPS_CUDA_PROFILE_H

#include <stddef.h>
#include <stdio.h>

enum { MT_CUDA_PROFILE_SHAPE = 72 };

/* One op call of the window, in call order. `op` is a string literal (the ops table's name). */
typedef struct mt_cuda_profile_op {
    const char *op;
    char shape[MT_CUDA_PROFILE_SHAPE]; /* e.g. "N128 80x80x32 -> 80x80x16 k1 s1" */
    float ms;                          /* GPU time between the op's start and end events */
} mt_cuda_profile_op;

/* Calls of one (op, shape): total time, count, and the index of the first call (its place in
 * the step: forward ops come early, backward ones late). */
typedef struct mt_cuda_profile_row {
    const char *op;
    const char *shape; /* points into the ops array */
    double ms;
    int calls;
    size_t first;
} mt_cuda_profile_row;

/* Groups `count` calls into rows (at most `count`), sorted by total time, longest first; ties
 * by first call, so the order never depends on the sort. Returns the number of rows. */
size_t mt_cuda_profile_aggregate(const mt_cuda_profile_op *ops, size_t count,
                                 mt_cuda_profile_row *rows);

/* Prints the report: a header with the step's GPU time (window_ms: from the window's first event
 * to its last op's end, gaps between ops included), the time inside ops and between them, the
 * `top` longest rows (share = row time / window_ms), and the totals per op name. Returns 0, or -1
 * when out of memory (nothing printed). */
int mt_cuda_profile_print(FILE *out, const mt_cuda_profile_op *ops, size_t count, double window_ms,
                          int top);

#endif
