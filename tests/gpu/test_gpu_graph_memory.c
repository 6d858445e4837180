/* The cuda backend's captured steps and the memory around them (cuda_graph.c's top comment), on
 * the backend's own ops in bf16 (where every convolution reads a per-update copy of its kernel):
 *
 * 1. Pool blocks of a graph stay the graph's: a step whose kernel the step itself rewrites
 *    (buffer_scale by 2, as the optimizer would) makes that kernel's copy inside the graph, in
 *    pool memory, at every replay. Blocks allocated between two replays, of the sizes such a
 *    copy and its temporaries take, filled with a pattern, still hold it after the next replay;
 *    and each replay's output equals an eager step's on a twin kernel, bit for bit (the kernel
 *    doubles at every step, exactly in bf16, so a replay that read a copy made at the capture
 *    or at an earlier replay would be off by a power of two).
 * 2. A graph reads a copy made before its capture when the step never writes that kernel (a
 *    frozen layer's); an upload to the kernel afterwards makes the next replay refuse
 *    (MT_ERR_INVALID: the caller captures again), never read a stale copy.
 * 3. A capture that reads such a copy and then writes its kernel fails at its end with an
 *    error naming the weight copy, and the backend goes on eager.
 *
 * 4. The device memory peak (ops.h device_memory_peak) counts what lives outside the pool: an
 *    input staging slot's first upload raises it by at least the slot's bytes.
 *
 * Runs on the emulated cuda module (ctest gpu_graph_memory_emulated: host memory, so a replay
 * that wrote into another allocation shows in the pattern) and on a GPU (gpu_graph_memory);
 * skips (77) where no cuda backend starts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "test_util.h"

enum { N = 2, SIDE = 4, C = 16, PIXELS = N * SIDE * SIDE, PROBES = 8 };

typedef struct fixture {
    mt_backend *b;
    mt_conv_desc conv; /* 1x1, C -> C */
    mt_tensor x, y;
    float *factor; /* one float, 2: buffer_scale doubles the kernel (exact in every precision) */
} fixture;

static float *kernel_new(fixture *f, uint64_t seed) {
    float host[C * C];
    for (int i = 0; i < C * C; i++)
        host[i] = (float)(mt_test_xorshift_unit(&seed) - 0.5);
    void *w = NULL;
    MUST(f->b->ops->buffer_alloc(f->b, sizeof host, &w));
    MUST(f->b->ops->upload(f->b, w, host, sizeof host));
    return w;
}

/* y of the step: a convolution with w, then (when `rewrite`) w rewritten in place */
static mt_status step(fixture *f, float *w, bool rewrite) {
    const mt_ops *o = f->b->ops;
    mt_status status = o->conv_forward(f->b, &f->conv, &f->x, w, &f->y);
    if (status == MT_OK && rewrite) status = o->buffer_scale(f->b, w, C * C, f->factor, NULL);
    return status;
}

static void *capture(fixture *f, float *w, bool rewrite, mt_status *ended) {
    void *graph = NULL;
    MUST(f->b->ops->step_capture_begin(f->b));
    mt_status status = step(f, w, rewrite);
    *ended = f->b->ops->step_capture_end(f->b, &graph);
    MUST(status);
    return graph;
}

static void output(fixture *f, float *host) {
    MUST(f->b->ops->tensor_to_nhwc(f->b, &f->y, host));
}

/* One replay of `graph` (on kernel w) and one eager step on its twin w_eager: the same output. */
static void replay_beside_eager(fixture *f, void *graph, float *w_eager, int replay) {
    float eager[PIXELS * C], replayed[PIXELS * C];
    MUST(f->b->ops->step_replay(f->b, graph));
    output(f, replayed);
    MUST(step(f, w_eager, true));
    output(f, eager);
    CHECK_MSG(memcmp(eager, replayed, sizeof eager) == 0,
              "replay %d's output differs from the eager step's on the twin kernel (a replay "
              "that read an old copy of the kernel the step doubles is off by a power of two)",
              replay);
}

static void check_pool_blocks(fixture *f) {
    const mt_ops *o = f->b->ops;
    float *w = kernel_new(f, 7), *w_eager = kernel_new(f, 7);
    for (int i = 0; i < 2; i++) { /* warm-up: per-shape choices; the kernels are step-written */
        MUST(step(f, w, true));
        MUST(step(f, w_eager, true));
    }
    mt_status ended;
    void *graph = capture(f, w, true, &ended);
    MUST(ended);
    replay_beside_eager(f, graph, w_eager, 1);
    /* between replays: blocks of every size the kernel's copies take (16-bit, fp32 rounded,
     * the fp32 KRSC temporary: one pool class each), filled with a pattern */
    const size_t sizes[2] = {C * C * 2, C * C * sizeof(float)};
    void *probe[2][PROBES];
    uint32_t pattern[C * C], back[C * C];
    for (int i = 0; i < C * C; i++)
        pattern[i] = 0x5a5a0000u + (uint32_t)i;
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < PROBES; p++) {
            MUST(o->buffer_alloc(f->b, sizes[s], &probe[s][p]));
            MUST(o->upload(f->b, probe[s][p], pattern, sizes[s]));
        }
    replay_beside_eager(f, graph, w_eager, 2);
    MUST(o->synchronize(f->b));
    int overwritten = 0;
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < PROBES; p++) {
            MUST(o->download(f->b, back, probe[s][p], sizes[s]));
            overwritten += memcmp(back, pattern, sizes[s]) != 0;
            o->buffer_free(f->b, probe[s][p]);
        }
    CHECK_MSG(overwritten == 0,
              "%d of %d blocks allocated between two replays were written "
              "by the replay: the pool handed out the graph's blocks",
              overwritten, 2 * PROBES);
    replay_beside_eager(f, graph, w_eager, 3);
    o->step_graph_free(f->b, graph);
    o->buffer_free(f->b, w);
    o->buffer_free(f->b, w_eager);
}

static void check_pinned_copy(fixture *f) {
    const mt_ops *o = f->b->ops;
    float *w = kernel_new(f, 11); /* uploaded only: no device op writes it */
    float eager[PIXELS * C], replayed[PIXELS * C];
    MUST(step(f, w, false));
    output(f, eager);
    mt_status ended;
    void *graph = capture(f, w, false, &ended);
    MUST(ended);
    MUST(o->step_replay(f->b, graph));
    output(f, replayed);
    CHECK_MSG(memcmp(eager, replayed, sizeof eager) == 0,
              "a replay reading the copy made "
              "before its capture differs from the eager step");
    float host[C * C];
    MUST(o->download(f->b, host, w, sizeof host));
    host[0] += 1.0f;
    MUST(o->upload(f->b, w, host, sizeof host));
    mt_status replay = o->step_replay(f->b, graph);
    CHECK_MSG(replay == MT_ERR_INVALID,
              "a replay after an upload to the kernel whose copy it "
              "reads: %s, expected MT_ERR_INVALID",
              mt_status_name(replay));
    o->step_graph_free(f->b, graph);
    o->buffer_free(f->b, w);
}

static void check_capture_writing_read_copy(fixture *f) {
    const mt_ops *o = f->b->ops;
    float *w = kernel_new(f, 13);
    MUST(step(f, w, false)); /* its copy, made before the capture */
    mt_status ended;
    void *graph = capture(f, w, true, &ended);
    CHECK_MSG(ended == MT_ERR_BACKEND && !graph && strstr(mt_last_error(), "weight copy"),
              "a capture reading an older copy of a kernel it writes: %s (%s), graph %p",
              mt_status_name(ended), mt_last_error(), graph);
    if (graph) o->step_graph_free(f->b, graph);
    MUST(step(f, w, true)); /* eager still works */
    MUST(o->synchronize(f->b));
    o->buffer_free(f->b, w);
}

static void check_peak_counts_input_slots(fixture *f) {
    const mt_ops *o = f->b->ops;
    enum { ROWS = 4, SIZE = 64, PIXEL_BYTES = ROWS * SIZE * SIZE * 3 };
    size_t before = 0, after = 0;
    MUST(o->device_memory_peak(f->b, &before));
    static uint8_t pixels[PIXEL_BYTES];
    const int32_t labels[ROWS] = {0, 1, 0, 1};
    const mt_input_batch batch = {
        .n = ROWS, .height = SIZE, .width = SIZE, .pixels = pixels, .labels = labels};
    MUST(o->input_upload(f->b, 1, &batch));
    MUST(o->input_wait(f->b, 1));
    MUST(o->device_memory_peak(f->b, &after));
    CHECK_MSG(after >= before + PIXEL_BYTES,
              "device_memory_peak went from %zu to %zu bytes over an input slot's first upload of "
              "%d pixel bytes", before, after, PIXEL_BYTES);
}

int main(void) {
    mt_backend *b = NULL;
    if (mt_backend_create("cuda", &(mt_backend_options){.precision = MT_COMPUTE_BF16}, &b) !=
        MT_OK) {
        printf("skipped: no cuda backend (%s)\n", mt_last_error());
        return MT_TEST_SKIP_CODE;
    }
    fixture f = {
        .b = b, .conv = {.input = {N, SIDE, SIDE, C}, .out_channels = C, .kernel = 1, .stride = 1}};
    const mt_shape4 shape = {N, SIDE, SIDE, C};
    MUST(b->ops->tensor_alloc(b, shape, &f.x));
    MUST(b->ops->tensor_alloc(b, shape, &f.y));
    float x[PIXELS * C];
    uint64_t seed = 3;
    for (int i = 0; i < PIXELS * C; i++)
        x[i] = (float)(mt_test_xorshift_unit(&seed) * 2 - 1);
    MUST(b->ops->tensor_from_nhwc(b, x, &f.x));
    const float two = 2.0f;
    MUST(b->ops->buffer_alloc(b, sizeof two, (void **)&f.factor));
    MUST(b->ops->upload(b, f.factor, &two, sizeof two));

    check_pool_blocks(&f);
    check_pinned_copy(&f);
    check_capture_writing_read_copy(&f);
    check_peak_counts_input_slots(&f);

    b->ops->buffer_free(b, f.factor);
    b->ops->tensor_free(b, &f.x);
    b->ops->tensor_free(b, &f.y);
    mt_backend_destroy(b);
    return mt_test_finish();
}
