/* mobiletune's side of bench/model/compare_frameworks.sh: images/s of one training step's
 * forward + backward (no optimizer update, as the PyTorch and Keras peers measure) of the whole
 * network at batch 32, 160x160, in each training mode, and the peak resident memory.
 *
 *   bench_train_step [--backend cpu] [--mode scratch|frozen|finetune] [--fine-tune-at 100]
 *                    [--batch 32] [--size 160] [--alpha 1.0] [--steps 5] [--warmup 2]
 *                    [--threads 0] [--precision fp32|tf32|bf16|fp16] [--graphs 1|0]
 *                    [--feature-cache 0|1]
 *
 * BN follows the tutorial (MT_BN_AUTO): batch statistics in scratch, moving statistics when the
 * backbone is frozen or fine-tuned. Inputs are random pixels (speed does not depend on them), fed
 * as the trainer feeds them (src/train/trainer.c): on a backend with device memory (cuda) uint8
 * pixels, labels and flip flags in host_alloc's page-locked buffers, uploaded on the copy stream
 * while the previous step computes and scaled and flipped on the device (ops.h's input
 * pipeline); on the CPU backends the float batch the loader threads would have made. The loss
 * stays on the device (mt_model_forward_accumulate), as in training. --graphs 1 (the default)
 * runs the steps through the trainer's own step graph (src/train/trainer_graph.c, one rank), as
 * train.cuda_graphs does on a backend that can capture a step (ops.h step_capture_begin: cuda):
 * the first step runs eager (the per-shape choices and cuDNN's search), the second is captured
 * and every step from then on is one replay of it; the per-step values and the input's
 * conversion stay outside, as in the trainer; a capture that fails or a replay the backend
 * refuses is handled as in training (said on stderr, the step run eager). With
 * --warmup 0 the timed steps include the eager one (and the RESULT says graphs=0); with 1, the
 * first timed step includes the capture.
 * Elsewhere, and with --graphs 0, every step runs eager. Prints one machine-readable line:
 *   RESULT mode=<m> backend=<b> precision=<p> batch=<n> size=<s> threads=<t> graphs=<0|1>
 *          trainable=<k> median_s=<x> images_per_s=<y> peak_rss_mb=<z> [gpu_peak_mb=<g>]
 * (graphs: whether the timed steps were replays; gpu_peak_mb: ops.h device_memory_peak, on a
 * backend with device memory, the process' peak so far). --feature-cache 1 (frozen mode)
 * measures what the trainer does with cache_features instead: building the cache (the
 * backbone's inference forward to pooled features, host images in and features out:
 * mode=frozen_features, trainable=0) and a training step of the head on cached features
 * uploaded from the host (mode=frozen_cached), two RESULT lines. Never run by ctest as a
 * timing; ctest bench_train_step_emulated runs it on the emulated cuda backend to check that
 * the graph path captures once and replays. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/clock.h"
#include "train/trainer_graph.h"
#include "mobiletune/model.h"
#include "mobiletune/ops.h"

#define BENCH_TRY(call)                                                                            \
    do {                                                                                           \
        mt_status bench_try_status_ = (call);                                                      \
        if (bench_try_status_ != MT_OK) {                                                          \
            fprintf(stderr, "bench_train_step: %s failed: %s: %s\n", #call,                        \
                    mt_status_name(bench_try_status_), mt_last_error());                           \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The step's device work after its input is in place: forward with the loss, backward. */
typedef struct step_args {
    mt_model *model;
    double *accum;
    int rows;
} step_args;

static mt_status step_body(const void *user) {
    const step_args *args = user;
    const mt_model_input prepared = {.prepared = true, .n = args->rows};
    mt_step_result result = {0};
    MT_TRY(mt_model_forward_accumulate(args->model, &prepared, args->accum, &result));
    return mt_model_backward(args->model);
}

static int usage(void) {
    fprintf(stderr, "usage: bench_train_step [--backend cpu] [--mode scratch|frozen|finetune] "
                    "[--fine-tune-at 100] [--batch 32] [--size 160] [--alpha 1.0] [--steps 5] "
                    "[--warmup 2] [--threads 0] [--precision fp32|tf32|bf16|fp16] "
                    "[--graphs 1|0] [--feature-cache 0|1 (frozen only)]\n");
    return 2;
}

/* What the timed loops share: the model, its backend, the batch in its host forms. */
typedef struct bench {
    mt_backend *backend;
    mt_model *model;
    int batch, size, warmup, steps;
    bool staged;     /* the batch goes through the staging slots (a backend with device memory) */
    float *images;   /* host float batch: the CPU backends' input, the feature cache's source */
    uint8_t *u8[2], *flips[2]; /* two of each, as the loader's ring: one uploads, one waits */
    int32_t *labels[2];
    double *accum;   /* the step's loss and accuracy, never read: they stay on the device */
    double *times;   /* steps */
} bench;

static double median_of(double *times, int steps) {
    qsort(times, (size_t)steps, sizeof *times, compare_double);
    return steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
}

/* The timed training steps, warm-up first; the median step in *median, and in *replayed whether
 * every timed step was a replay of the captured step. The input: the staged uint8 batch (the
 * next one uploaded while the step computes, as the trainer overlaps it) or the host float
 * batch; with `features` (frozen mode's feature cache), the head alone on those pooled features,
 * as the trainer's cached epochs run it. */
static mt_status time_steps(bench *b, bool graphs_wanted, const float *features, double *median,
                            bool *replayed) {
    const mt_ops *ops = b->backend->ops;
    /* graphs: the trainer's own (the top), on one rank */
    trainer_graph graph;
    const char *off = NULL; /* only host_sync turns graphs off with a reason: never here */
    const trainer_graph_runner runner = {
        .backend = b->backend, .model = b->model, .who = {.rank = 0, .world_size = 1}};
    trainer_graph_init(&graph, graphs_wanted, runner, false, &off);
    const step_args args = {.model = b->model, .accum = b->accum, .rows = b->batch};
    *replayed = true;
    mt_status status = MT_OK;
    for (int s = 0; status == MT_OK && s < b->warmup + b->steps; s++) {
        const double start = mt_clock_monotonic();
        mt_model_input input = {.images = b->images, .labels = b->labels[0], .n = b->batch};
        if (features)
            input = (mt_model_input){.features = features, .labels = b->labels[0], .n = b->batch};
        else if (b->staged)
            input = (mt_model_input){.staged = true, .slot = s % 2, .n = b->batch};
        status = mt_model_set_step(b->model, (uint64_t)s, (uint64_t)s);
        if (status == MT_OK) status = mt_model_prepare_input(b->model, &input);
        const uint64_t replays = graph.replays;
        if (status == MT_OK)
            status = trainer_graph_step(&graph, b->batch, mt_model_memory_generation(b->model),
                                        false, step_body, &args);
        if (s >= b->warmup && graph.replays == replays) *replayed = false;
        if (status == MT_OK && b->staged && !features) {
            /* the next batch goes up while this step computes, from the buffer whose last copy
             * (a step ago) the host waits for first */
            const int next = (s + 1) % 2;
            status = ops->input_wait(b->backend, next);
            const mt_input_batch up = {.n = b->batch,
                                       .height = b->size,
                                       .width = b->size,
                                       .pixels = b->u8[next],
                                       .labels = b->labels[next],
                                       .flips = b->flips[next]};
            if (status == MT_OK) status = ops->input_upload(b->backend, next, &up);
        }
        if (status == MT_OK) status = ops->synchronize(b->backend);
        if (s >= b->warmup) b->times[s - b->warmup] = mt_clock_monotonic() - start;
    }
    trainer_graph_free(&graph);
    if (status == MT_OK) *median = median_of(b->times, b->steps);
    return status;
}

/* Building frozen mode's feature cache: the backbone's inference forward to pooled features
 * (mt_model_features: host images in, host features out, as trainer_cache.c calls it), timed
 * per batch; the last batch's features in `pooled`. */
static mt_status time_features(bench *b, float *pooled, double *median) {
    for (int s = 0; s < b->warmup + b->steps; s++) {
        const double start = mt_clock_monotonic();
        MT_TRY(mt_model_features(b->model, b->images, b->batch, pooled));
        if (s >= b->warmup) b->times[s - b->warmup] = mt_clock_monotonic() - start;
    }
    *median = median_of(b->times, b->steps);
    return MT_OK;
}

/* The RESULT line (the top) of one measurement. */
static void print_result(const bench *b, const char *mode, const char *backend_name, int threads,
                         bool replayed, size_t trainable, double median) {
    const mt_ops *ops = b->backend->ops;
    struct rusage usage_info;
    getrusage(RUSAGE_SELF, &usage_info);
    char device_peak[48] = "";
    size_t peak_bytes = 0;
    if (ops->device_memory_peak && ops->device_memory_peak(b->backend, &peak_bytes) == MT_OK)
        snprintf(device_peak, sizeof device_peak, " gpu_peak_mb=%.0f",
                 (double)peak_bytes / 1048576.0);
    printf("RESULT mode=%s backend=%s precision=%s batch=%d size=%d threads=%d graphs=%d "
           "trainable=%zu median_s=%.6f images_per_s=%.2f peak_rss_mb=%.1f%s\n",
           mode, backend_name, mt_compute_precision_name(b->backend->options.precision),
           b->batch, b->size, threads, replayed, trainable, median, b->batch / median,
           usage_info.ru_maxrss / 1024.0, device_peak);
}

int main(int argc, char **argv) {
    const char *backend_name = "cpu", *mode_name = "scratch";
    int fine_tune_at = 100, batch = 32, size = 160, steps = 5, warmup = 2, threads = 0;
    int graphs_wanted = 1, feature_cache = 0;
    float alpha = 1.0f;
    mt_compute_precision precision = MT_COMPUTE_FP32;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) return usage();
        const char *a = argv[i], *v = argv[++i];
        if (!strcmp(a, "--backend"))
            backend_name = v;
        else if (!strcmp(a, "--mode"))
            mode_name = v;
        else if (!strcmp(a, "--fine-tune-at"))
            fine_tune_at = atoi(v);
        else if (!strcmp(a, "--batch"))
            batch = atoi(v);
        else if (!strcmp(a, "--size"))
            size = atoi(v);
        else if (!strcmp(a, "--alpha"))
            alpha = strtof(v, NULL);
        else if (!strcmp(a, "--steps"))
            steps = atoi(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atoi(v);
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else if (!strcmp(a, "--graphs"))
            graphs_wanted = atoi(v);
        else if (!strcmp(a, "--feature-cache"))
            feature_cache = atoi(v);
        else if (!strcmp(a, "--precision")) {
            int p;
            if (!mt_enum_find(&mt_compute_precision_names, v, &p)) return usage();
            precision = (mt_compute_precision)p;
        } else
            return usage();
    }
    if (batch < 1 || steps < 1 || warmup < 0 || (graphs_wanted != 0 && graphs_wanted != 1) ||
        (feature_cache != 0 && feature_cache != 1))
        return usage();

    if (feature_cache && strcmp(mode_name, "frozen") != 0) return usage();

    mt_model_config config = mt_model_config_default();
    BENCH_TRY(mt_train_mode_parse(mode_name, &config.mode));
    config.alpha = alpha;
    config.input_size = size;
    config.classes = 2;
    config.fine_tune_at = fine_tune_at;
    config.batch_size = batch;
    config.bn_mode = MT_BN_AUTO;

    /* the precision of train.precision (ops.h); the loss scale is the trainer's, not timed here */
    mt_backend_options options = {.num_threads = threads, .precision = precision};
    bench b = {.batch = batch, .size = size, .warmup = warmup, .steps = steps};
    BENCH_TRY(mt_backend_create(backend_name, &options, &b.backend));
    BENCH_TRY(mt_model_create(b.backend, &config, 42, &b.model));
    const mt_ops *ops = b.backend->ops;
    b.staged = ops->device_memory;
    const size_t pixels = (size_t)batch * (size_t)size * (size_t)size * 3;
    const bool float_images = !b.staged || feature_cache;
    b.images = float_images ? malloc(pixels * sizeof(float)) : NULL;
    b.times = malloc((size_t)steps * sizeof(double));
    if ((float_images && !b.images) || !b.times) return 1;
    for (int i = 0; i < 2; i++) {
        BENCH_TRY(ops->host_alloc(b.backend, b.staged ? pixels : 1, (void **)&b.u8[i]));
        BENCH_TRY(
            ops->host_alloc(b.backend, (size_t)batch * sizeof(int32_t), (void **)&b.labels[i]));
        BENCH_TRY(ops->host_alloc(b.backend, (size_t)batch, (void **)&b.flips[i]));
        for (int r = 0; r < batch; r++) /* random_flip's half */
            b.labels[i][r] = r % 2, b.flips[i][r] = (uint8_t)((r + i) % 2);
    }
    uint32_t seed = 12345u;
    for (size_t i = 0; i < pixels; i++) {
        seed = seed * 1664525u + 1013904223u;
        const uint8_t value = (uint8_t)(seed >> 24);
        if (b.staged) b.u8[0][i] = b.u8[1][i] = value;
        if (b.images) b.images[i] = mt_u8_to_input(value);
    }
    BENCH_TRY(ops->buffer_alloc(b.backend, MT_ACCUM_COUNT * sizeof(double), (void **)&b.accum));
    if (b.staged) {
        const mt_input_batch first = {.n = batch,
                                      .height = size,
                                      .width = size,
                                      .pixels = b.u8[0],
                                      .labels = b.labels[0],
                                      .flips = b.flips[0]};
        BENCH_TRY(ops->input_upload(b.backend, 0, &first));
    }

    const size_t trainable = mt_model_get_layout(b.model)->trainable_count;
    double median = 0.0;
    bool replayed = false;
    if (feature_cache) {
        const int channels = mt_model_get_layout(b.model)->feature_channels;
        float *pooled = malloc((size_t)batch * channels * sizeof(float));
        if (!pooled) return 1;
        BENCH_TRY(time_features(&b, pooled, &median));
        print_result(&b, "frozen_features", backend_name, threads, false, 0, median);
        BENCH_TRY(time_steps(&b, graphs_wanted, pooled, &median, &replayed));
        print_result(&b, "frozen_cached", backend_name, threads, replayed, trainable, median);
        free(pooled);
    } else {
        BENCH_TRY(time_steps(&b, graphs_wanted, NULL, &median, &replayed));
        print_result(&b, mode_name, backend_name, threads, replayed, trainable, median);
    }
    ops->buffer_free(b.backend, b.accum);
    for (int i = 0; i < 2; i++) {
        ops->host_free(b.backend, b.u8[i]);
        ops->host_free(b.backend, b.labels[i]);
        ops->host_free(b.backend, b.flips[i]);
    }
    mt_model_destroy(b.model);
    mt_backend_destroy(b.backend);
    free(b.images);
    free(b.times);
    return 0;
}
