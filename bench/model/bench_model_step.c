/* One training step's cost and memory: forward + backward images/s for each training mode on
 * one backend, and the peak resident memory (getrusage ru_maxrss) of the process, measured
 * first, on a fresh process, for the mode named first (the figure: scratch, batch 32,
 * 160x160, cpu backend). Speeds are printed as ratios to the first mode's, run in this process.
 *
 *   bench_model_step [--backend cpu] [--batch 32] [--size 160] [--alpha 1.0] [--steps 3]
 *                    [--threads 0] [--modes scratch,frozen,finetune] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/clock.h"
#include "mobiletune/model.h"

static double peak_rss_mib(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_maxrss / 1024.0; /* Linux: KiB */
}

static int die(const char *what) {
    fprintf(stderr, "bench_model_step: %s: %s\n", what, mt_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *backend_name = "cpu", *modes = "scratch,frozen,finetune";
    int batch = 32, size = 160, steps = 3, threads = 0;
    float alpha = 1.0f;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend"))
            backend_name = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size"))
            size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--alpha"))
            alpha = strtof(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--modes"))
            modes = argv[i + 1];
        else {
            fprintf(stderr, "bench_model_step: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    mt_backend *backend = NULL;
    mt_backend_options options = {.num_threads = threads};
    if (mt_backend_create(backend_name, &options, &backend) != MT_OK) return die("backend");

    size_t pixels = (size_t)batch * size * size * 3;
    float *images = malloc(pixels * sizeof *images);
    int32_t *labels = malloc((size_t)batch * sizeof *labels);
    uint64_t s = 1;
    for (size_t i = 0; i < pixels; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        images[i] = (float)((s >> 40) * (2.0 / 16777216.0)) - 1.0f;
    }
    for (int i = 0; i < batch; i++)
        labels[i] = i % 2;
    printf("backend %s, alpha %g, %dx%d, batch %d, %d timed steps after 1 warm-up\n", backend_name,
           (double)alpha, size, size, batch, steps);
    printf("peak RSS before any model: %.1f MiB\n", peak_rss_mib());

    char list[256];
    snprintf(list, sizeof list, "%s", modes);
    double baseline = 0.0;
    for (char *name = strtok(list, ","); name; name = strtok(NULL, ",")) {
        mt_model_config config = mt_model_config_default();
        config.alpha = alpha;
        config.input_size = size;
        config.batch_size = batch;
        if (mt_train_mode_parse(name, &config.mode) != MT_OK) return die("mode");
        mt_model *model = NULL;
        if (mt_model_create(backend, &config, 1, &model) != MT_OK) return die("create");
        double after_create = peak_rss_mib();
        mt_step_result result;
        double start = 0.0;
        for (int step = 0; step <= steps; step++) {
            if (step == 1) start = mt_clock_monotonic();
            if (mt_model_forward(model, images, labels, batch, true, (uint64_t)step, NULL,
                                 &result) != MT_OK)
                return die("forward");
            if (mt_model_backward(model) != MT_OK) return die("backward");
            if (step == 0)
                printf("%-9s peak RSS after create %.1f MiB, after the first step %.1f MiB\n", name,
                       after_create, peak_rss_mib());
        }
        double seconds = mt_clock_monotonic() - start;
        double rate = steps * batch / seconds;
        if (baseline == 0.0) baseline = rate;
        printf("%-9s %8.1f images/s (forward+backward)  %.2fx the first mode  loss %.4f\n", name,
               rate, rate / baseline, result.loss);
        mt_model_destroy(model);
    }
    free(images);
    free(labels);
    mt_backend_destroy(backend);
    return 0;
}
