/* MT_CUDA_PROFILE's bookkeeping (src/ops/cuda/cuda_profile.c) with made-up timings: calls of the
 * same (op, shape) merge into one row with their count and first call, rows sort by total time
 * (ties by first call), the report prints the top rows with their share of the step, the time
 * inside and between ops, and the totals per op name. The CUDA events that feed it on a GPU are
 * checked by running a profiled step there (tests/gpu/run.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_profile.h"
#include "test_util.h"

static mt_cuda_profile_op op(const char *name, const char *shape, float ms) {
    mt_cuda_profile_op o = {.op = name, .ms = ms};
    snprintf(o.shape, sizeof o.shape, "%s", shape);
    return o;
}

/* the report's text, read back from a temporary file */
static char *report(const mt_cuda_profile_op *ops, size_t count, double window_ms, int top) {
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f) return NULL;
    CHECK(mt_cuda_profile_print(f, ops, count, window_ms, top) == 0);
    long size = ftell(f);
    rewind(f);
    char *text = calloc((size_t)size + 1, 1);
    CHECK(text && fread(text, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    return text;
}

/* the line of the report that contains `needle`, or NULL */
static const char *line_with(const char *text, const char *needle) {
    const char *at = strstr(text, needle);
    if (!at) return NULL;
    while (at > text && at[-1] != '\n')
        at--;
    return at;
}

int main(void) {
    const mt_cuda_profile_op ops[] = {
        op("conv_forward", "N2 8x8x3 -> 4x4x8 k3 s2", 1.0f),  /* 0 */
        op("add", "N2 4x4x8", 0.5f),                          /* 1 */
        op("conv_forward", "N2 8x8x3 -> 4x4x8 k3 s2", 2.0f),  /* 2: merges with 0 */
        op("conv_forward", "N2 4x4x8 -> 4x4x16 k1 s1", 3.0f), /* 3: ties with 0+2, later */
        op("batchnorm_forward_training", "N2 4x4x16", 0.25f), /* 4 */
        op("add", "N2 4x4x8", 0.5f),                          /* 5: merges with 1 */
    };
    const size_t count = sizeof ops / sizeof ops[0];

    mt_cuda_profile_row rows[6];
    size_t n = mt_cuda_profile_aggregate(ops, count, rows);
    CHECK_MSG(n == 4, "aggregate: %zu rows, expected 4", n);
    static const struct {
        const char *op, *shape;
        double ms;
        int calls;
        size_t first;
    } want[] = {{"conv_forward", "N2 8x8x3 -> 4x4x8 k3 s2", 3.0, 2, 0},
                {"conv_forward", "N2 4x4x8 -> 4x4x16 k1 s1", 3.0, 1, 3},
                {"add", "N2 4x4x8", 1.0, 2, 1},
                {"batchnorm_forward_training", "N2 4x4x16", 0.25, 1, 4}};
    for (size_t i = 0; i < n && i < 4; i++)
        CHECK_MSG(!strcmp(rows[i].op, want[i].op) && !strcmp(rows[i].shape, want[i].shape) &&
                      rows[i].ms == want[i].ms && rows[i].calls == want[i].calls &&
                      rows[i].first == want[i].first,
                  "row %zu: %s '%s' %.3f ms %d calls first %zu; expected %s '%s' %.3f %d %zu", i,
                  rows[i].op, rows[i].shape, rows[i].ms, rows[i].calls, rows[i].first, want[i].op,
                  want[i].shape, want[i].ms, want[i].calls, want[i].first);
    CHECK(mt_cuda_profile_aggregate(ops, 0, rows) == 0);

    /* a 10 ms step: 7.25 ms inside ops; top 3 leaves the batch norm out of the table */
    char *text = report(ops, count, 10.0, 3);
    if (text) {
        CHECK_MSG(strstr(text, "one step, 6 ops, 10.000 ms on the GPU; 7.250 ms inside ops "
                               "(72.5%), 2.750 ms between them") != NULL,
                  "header:\n%s", text);
        const char *first = line_with(text, "k3 s2"), *second = line_with(text, "k1 s1");
        const char *third = line_with(text, "  add ");
        CHECK_MSG(first && second && third && first < second && second < third,
                  "rows out of order:\n%s", text);
        if (first && second && third) {
            CHECK_MSG(!strncmp(first, "    1  30.0%     3.000     2    1.5000  conv_forward", 52),
                      "first row:\n%s", first);
            CHECK_MSG(strstr(second, "  2  30.0%") && strstr(second, "#3"), "second row:\n%s",
                      second);
            CHECK_MSG(strstr(third, "  3  10.0%     1.000     2    0.5000") && strstr(third, "#1"),
                      "third row:\n%s", third);
        }
        const char *by_op = line_with(text, "by op:");
        CHECK_MSG(by_op && line_with(text, "N2 4x4x16") == NULL,
                  "the 4th row is printed though top is 3:\n%s", text);
        CHECK_MSG(by_op && strstr(by_op, "by op: conv_forward 6.000 ms (60.0%, 3), add 1.000 ms "
                                         "(10.0%, 2), batchnorm_forward_training 0.250 ms "
                                         "(2.5%, 1)"),
                  "per-op totals:\n%s", text);
        free(text);
    }
    /* an empty window prints a header and no rows, and no division by zero */
    text = report(ops, 0, 0.0, 20);
    if (text) {
        CHECK_MSG(strstr(text, "0 ops, 0.000 ms") && !strstr(text, "nan") && !strstr(text, "inf"),
                  "empty report:\n%s", text);
        free(text);
    }
    return mt_test_finish();
}
