/* MT_CUDA_PROFILE's aggregation and report (see cuda_profile.h). A step has a few hundred ops,
 * so plain qsort and a linear merge are plenty. */
#include "ops/cuda/cuda_profile.h"

#include <stdlib.h>
#include <string.h>

/* calls of the same (op, shape) next to each other, in call order within a group */
static int by_key(const void *a, const void *b) {
    const mt_cuda_profile_row *x = a, *y = b;
    int c = strcmp(x->op, y->op);
    if (!c) c = strcmp(x->shape, y->shape);
    if (!c) c = x->first < y->first ? -1 : x->first > y->first;
    return c;
}

static int by_time(const void *a, const void *b) {
    const mt_cuda_profile_row *x = a, *y = b;
    if (x->ms != y->ms) return x->ms > y->ms ? -1 : 1;
    return x->first < y->first ? -1 : x->first > y->first;
}

size_t mt_cuda_profile_aggregate(const mt_cuda_profile_op *ops, size_t count,
                                 mt_cuda_profile_row *rows) {
    for (size_t i = 0; i < count; i++)
        rows[i] = (mt_cuda_profile_row){
            .op = ops[i].op, .shape = ops[i].shape, .ms = ops[i].ms, .calls = 1, .first = i};
    if (count) qsort(rows, count, sizeof *rows, by_key);
    size_t out = 0;
    for (size_t i = 0; i < count; i++) {
        if (out && !strcmp(rows[out - 1].op, rows[i].op) &&
            !strcmp(rows[out - 1].shape, rows[i].shape)) {
            rows[out - 1].ms += rows[i].ms; /* `first` stays the earliest: sorted by it */
            rows[out - 1].calls++;
        } else {
            rows[out++] = rows[i];
        }
    }
    if (out) qsort(rows, out, sizeof *rows, by_time);
    return out;
}

int mt_cuda_profile_print(FILE *out, const mt_cuda_profile_op *ops, size_t count, double window_ms,
                          int top) {
    mt_cuda_profile_row *rows = malloc((count ? count : 1) * sizeof *rows);
    mt_cuda_profile_op *names = malloc((count ? count : 1) * sizeof *names);
    if (!rows || !names) {
        free(rows), free(names);
        return -1;
    }
    double inside = 0.0;
    for (size_t i = 0; i < count; i++)
        inside += ops[i].ms;
    const double step = window_ms > 0.0 ? window_ms : 1.0; /* shares of nothing stay finite */
    fprintf(out,
            "mobiletune cuda profile: one step, %zu ops, %.3f ms on the GPU; %.3f ms inside "
            "ops (%.1f%%), %.3f ms between them (launch gaps, host work, other streams)\n",
            count, window_ms, inside, 100.0 * inside / step, window_ms - inside);
    size_t n = mt_cuda_profile_aggregate(ops, count, rows);
    fprintf(out, "  %3s %6s %9s %5s %9s  %-36s %-40s %s\n", "#", "share", "ms", "calls", "ms/call",
            "op", "shape", "first");
    for (size_t i = 0; i < n && (int)i < top; i++)
        fprintf(out, "  %3zu %5.1f%% %9.3f %5d %9.4f  %-36s %-40s #%zu\n", i + 1,
                100.0 * rows[i].ms / step, rows[i].ms, rows[i].calls, rows[i].ms / rows[i].calls,
                rows[i].op, rows[i].shape, rows[i].first);
    /* per op name: the same aggregation with the shape blanked out */
    for (size_t i = 0; i < count; i++) {
        names[i] = ops[i];
        names[i].shape[0] = '\0';
    }
    n = mt_cuda_profile_aggregate(names, count, rows);
    fprintf(out, "  by op:");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "%s %s %.3f ms (%.1f%%, %d)", i ? "," : "", rows[i].op, rows[i].ms,
                100.0 * rows[i].ms / step, rows[i].calls);
    fprintf(out, "\n");
    free(rows), free(names);
    return 0;
}
