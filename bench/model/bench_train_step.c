/* mobiletune's side of bench/model/compare_frameworks.sh: images/s of one training step's
 * forward + backward (no optimizer update, as the PyTorch and Keras peers measure) of the whole
 * network at batch 32, 160x160, in each training mode, and the peak resident memory.
 *
 *   bench_train_step [--backend cpu] [--mode scratch|frozen|finetune] [--fine-tune-at 100]
 *                    [--batch 32] [--size 160] [--alpha 1.0] [--steps 5] [--warmup 2]
 *                    [--threads 0] [--precision fp32|tf32|bf16|fp16]
 *
 * BN follows the tutorial (MT_BN_AUTO): batch statistics in scratch, moving statistics when the
 * backbone is frozen or fine-tuned. Inputs are random pixels (speed does not depend on them), fed
 * as the trainer feeds them (src/train/trainer.c): on a backend with device memory (cuda) uint8
 * pixels, labels and flip flags in host_alloc's page-locked buffers, uploaded on the copy stream
 * while the previous step computes and scaled and flipped on the device (ops.h's input
 * pipeline); on the CPU backends the float batch the loader threads would have made. The loss
 * stays on the device (mt_model_forward_accumulate), as in training. Prints one machine-readable
 * line:
 *   RESULT mode=<m> backend=<b> precision=<p> batch=<n> size=<s> threads=<t> median_s=<x> images_per_s=<y>
 *          peak_rss_mb=<z>
 * Never run by ctest. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/clock.h"
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

static int usage(void) {
    fprintf(stderr, "usage: bench_train_step [--backend cpu] [--mode scratch|frozen|finetune] "
                    "[--fine-tune-at 100] [--batch 32] [--size 160] [--alpha 1.0] [--steps 5] "
                    "[--warmup 2] [--threads 0] [--precision fp32|tf32|bf16|fp16]\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *backend_name = "cpu", *mode_name = "scratch";
    int fine_tune_at = 100, batch = 32, size = 160, steps = 5, warmup = 2, threads = 0;
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
        else if (!strcmp(a, "--precision")) {
            int p;
            if (!mt_enum_find(&mt_compute_precision_names, v, &p)) return usage();
            precision = (mt_compute_precision)p;
        } else
            return usage();
    }
    if (batch < 1 || steps < 1 || warmup < 0) return usage();

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
    mt_backend *backend = NULL;
    BENCH_TRY(mt_backend_create(backend_name, &options, &backend));
    mt_model *model = NULL;
    BENCH_TRY(mt_model_create(backend, &config, 42, &model));

    const mt_ops *ops = backend->ops;
    const bool staged = ops->device_memory;
    size_t pixels = (size_t)batch * (size_t)size * (size_t)size * 3;
    float *images = staged ? NULL : malloc(pixels * sizeof(float));
    double *times = malloc((size_t)steps * sizeof(double));
    if ((!staged && !images) || !times) return 1;
    /* two host buffers of each, as the loader's ring: one is copied while the other waits */
    uint8_t *u8[2] = {NULL, NULL}, *flips[2] = {NULL, NULL};
    int32_t *labels[2] = {NULL, NULL};
    for (int b = 0; b < 2; b++) {
        BENCH_TRY(ops->host_alloc(backend, staged ? pixels : 1, (void **)&u8[b]));
        BENCH_TRY(ops->host_alloc(backend, (size_t)batch * sizeof(int32_t), (void **)&labels[b]));
        BENCH_TRY(ops->host_alloc(backend, (size_t)batch, (void **)&flips[b]));
        for (int i = 0; i < batch; i++)
            labels[b][i] = i % 2, flips[b][i] = (uint8_t)((i + b) % 2); /* random_flip's half */
    }
    uint32_t seed = 12345u;
    for (size_t i = 0; i < pixels; i++) {
        seed = seed * 1664525u + 1013904223u;
        const uint8_t value = (uint8_t)(seed >> 24);
        if (staged)
            u8[0][i] = u8[1][i] = value;
        else
            images[i] = mt_u8_to_input(value);
    }
    double *accum = NULL; /* the step's loss and accuracy, never read: they stay on the device */
    BENCH_TRY(ops->buffer_alloc(backend, MT_ACCUM_COUNT * sizeof(double), (void **)&accum));
    if (staged) {
        const mt_input_batch first = {.n = batch,
                                      .height = size,
                                      .width = size,
                                      .pixels = u8[0],
                                      .labels = labels[0],
                                      .flips = flips[0]};
        BENCH_TRY(ops->input_upload(backend, 0, &first));
    }

    for (int s = 0; s < warmup + steps; s++) {
        double start = mt_clock_monotonic();
        mt_step_result result = {0};
        mt_model_input input = {.images = images, .labels = labels[0], .n = batch};
        if (staged) input = (mt_model_input){.staged = true, .slot = s % 2, .n = batch};
        BENCH_TRY(mt_model_set_step(model, (uint64_t)s, (uint64_t)s));
        BENCH_TRY(mt_model_forward_accumulate(model, &input, accum, &result));
        BENCH_TRY(mt_model_backward(model));
        if (staged) {
            /* the next batch goes up while this step computes (the trainer's overlap), from the
             * buffer whose last copy (a step ago) the host waits for first */
            const int next = (s + 1) % 2;
            BENCH_TRY(ops->input_wait(backend, next));
            const mt_input_batch up = {.n = batch,
                                       .height = size,
                                       .width = size,
                                       .pixels = u8[next],
                                       .labels = labels[next],
                                       .flips = flips[next]};
            BENCH_TRY(ops->input_upload(backend, next, &up));
        }
        BENCH_TRY(ops->synchronize(backend));
        if (s >= warmup) times[s - warmup] = mt_clock_monotonic() - start;
    }
    qsort(times, (size_t)steps, sizeof *times, compare_double);
    double median = steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
    struct rusage usage_info;
    getrusage(RUSAGE_SELF, &usage_info);
    const mt_model_layout *layout = mt_model_get_layout(model);
    printf("RESULT mode=%s backend=%s precision=%s batch=%d size=%d threads=%d trainable=%zu "
           "median_s=%.4f images_per_s=%.2f peak_rss_mb=%.1f\n",
           mode_name, backend_name, mt_compute_precision_name(precision), batch, size, threads, layout->trainable_count, median,
           batch / median, usage_info.ru_maxrss / 1024.0);
    ops->buffer_free(backend, accum);
    for (int b = 0; b < 2; b++) {
        ops->host_free(backend, u8[b]);
        ops->host_free(backend, labels[b]);
        ops->host_free(backend, flips[b]);
    }
    mt_model_destroy(model);
    mt_backend_destroy(backend);
    free(images);
    free(times);
    return 0;
}
