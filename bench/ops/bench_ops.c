/* Benchmark of the ops that dominate MobileNetV2 training: forward + backward of its layer shapes
 * at batch 32 and 160x160 input, on the `cpu` backend against the `reference` backend in the
 * same process, printed as ratios; plus the layout experiment (oneDNN blocked nChw<B>c vs plain
 * nhwc, both on `cpu`) over the same layers and over every convolution, BN and ReLU6 of the
 * whole backbone.
 *
 *   bench_ops [--reps N] [--batch N] [--size S] [--no-reference] [--network] [--threads T]
 *             [--only SUBSTRING] [--cpu-time]
 * --only keeps the picked layers whose name contains SUBSTRING; --cpu-time times with the
 * process' CPU clock (use with --threads 1 on a loaded machine).
 *
 * Each time is the median of N repetitions after one warm-up (which also builds the cached
 * primitives). Never run by ctest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mobiletune/ops.h"

/* L_BN_RELU6: a training-mode BN followed by ReLU6, through the fused ops where the backend has
 * them and `fused` is asked for, else through the separate ones */
typedef enum { L_CONV, L_BN, L_RELU6, L_BN_RELU6 } layer_kind;

typedef struct layer {
    char name[48];
    layer_kind kind;
    mt_conv_desc conv; /* L_CONV */
    mt_shape4 shape;   /* L_BN, L_RELU6, L_BN_RELU6 */
} layer;

typedef struct timing {
    double forward, backward; /* seconds, medians */
} timing;

/* Wall time, or with --cpu-time the process' CPU time: on a shared, oversubscribed machine a
 * single-threaded run (--threads 1 --cpu-time) measures the work itself, not the scheduler. */
static clockid_t bench_clock = CLOCK_MONOTONIC;

static double now(void) {
    struct timespec t;
    clock_gettime(bench_clock, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define BENCH_TRY(call)                                                                            \
    do {                                                                                           \
        if ((call) != MT_OK) {                                                                     \
            fprintf(stderr, "bench_ops: %s failed: %s\n", #call, mt_last_error());                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static float *random_floats(size_t n, float lo, float hi, unsigned *seed) {
    float *p = malloc(n * sizeof *p);
    if (!p) exit(1);
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        p[i] = lo + (hi - lo) * (float)(*seed >> 8) / 16777216.0f;
    }
    return p;
}

static void tensor_random(mt_backend *b, mt_shape4 s, float lo, float hi, mt_tensor *t) {
    unsigned seed = 12345;
    float *host = random_floats(mt_shape4_count(s), lo, hi, &seed);
    BENCH_TRY(b->ops->tensor_alloc(b, s, t));
    BENCH_TRY(b->ops->tensor_from_nhwc(b, host, t));
    free(host);
}

static float *buffer_random(mt_backend *b, size_t n, float lo, float hi) {
    unsigned seed = 777;
    float *host = random_floats(n, lo, hi, &seed);
    void *dev;
    BENCH_TRY(b->ops->buffer_alloc(b, n * sizeof(float), &dev));
    BENCH_TRY(b->ops->upload(b, dev, host, n * sizeof(float)));
    free(host);
    return dev;
}

/* Forward and backward of one layer, `reps` times after a warm-up. */
static timing time_layer(mt_backend *b, const layer *l, int reps, bool fused) {
    const mt_ops *ops = b->ops;
    double fwd[64], bwd[64];
    if (reps > 64) reps = 64;
    timing t = {0, 0};
    if (l->kind == L_CONV) {
        const mt_conv_desc *d = &l->conv;
        mt_shape4 out = mt_conv_output_shape(d);
        size_t wn =
            (size_t)d->kernel * d->kernel * d->input.c * (d->depthwise ? 1 : d->out_channels);
        mt_tensor x, y, dy, dx;
        tensor_random(b, d->input, -1, 1, &x);
        tensor_random(b, out, -1, 1, &dy);
        BENCH_TRY(ops->tensor_alloc(b, out, &y));
        BENCH_TRY(ops->tensor_alloc(b, d->input, &dx));
        float *w = buffer_random(b, wn, -0.1f, 0.1f), *dw = buffer_random(b, wn, 0, 0);
        for (int r = -1; r < reps; r++) {
            double t0 = now();
            BENCH_TRY(ops->conv_forward(b, d, &x, w, &y));
            BENCH_TRY(ops->synchronize(b));
            double t1 = now();
            BENCH_TRY(ops->conv_backward_data(b, d, &dy, w, &dx));
            BENCH_TRY(ops->conv_backward_weights(b, d, &x, &dy, dw));
            BENCH_TRY(ops->synchronize(b));
            double t2 = now();
            if (r >= 0) fwd[r] = t1 - t0, bwd[r] = t2 - t1;
        }
        ops->tensor_free(b, &x);
        ops->tensor_free(b, &y);
        ops->tensor_free(b, &dy);
        ops->tensor_free(b, &dx);
        ops->buffer_free(b, w);
        ops->buffer_free(b, dw);
    } else {
        mt_shape4 s = l->shape;
        int c = s.c;
        mt_tensor x, y, dy, dx;
        tensor_random(b, s, -2, 8, &x);
        tensor_random(b, s, -1, 1, &dy);
        BENCH_TRY(ops->tensor_alloc(b, s, &y));
        BENCH_TRY(ops->tensor_alloc(b, s, &dx));
        float *gamma = buffer_random(b, c, 0.5f, 1.5f), *beta = buffer_random(b, c, -1, 1);
        float *mm = buffer_random(b, c, -1, 1), *mv = buffer_random(b, c, 0.5f, 2);
        float *sm = buffer_random(b, c, 0, 0), *si = buffer_random(b, c, 0, 0);
        float *dg = buffer_random(b, c, 0, 0), *db = buffer_random(b, c, 0, 0);
        mt_batchnorm_desc bn = {.shape = s, .epsilon = 1e-3f, .momentum = 0.999f};
        for (int r = -1; r < reps; r++) {
            double t0 = now();
            if (l->kind == L_BN_RELU6 && fused && ops->batchnorm_relu6_forward_training) {
                BENCH_TRY(ops->batchnorm_relu6_forward_training(b, &bn, &x, gamma, beta, mm, mv, &y,
                                                                sm, si));
            } else if (l->kind == L_BN_RELU6) {
                BENCH_TRY(
                    ops->batchnorm_forward_training(b, &bn, &x, gamma, beta, mm, mv, &y, sm, si));
                BENCH_TRY(ops->relu6_forward(b, &y, &y));
            } else if (l->kind == L_BN) {
                BENCH_TRY(
                    ops->batchnorm_forward_training(b, &bn, &x, gamma, beta, mm, mv, &y, sm, si));
            } else {
                BENCH_TRY(ops->relu6_forward(b, &x, &y));
            }
            BENCH_TRY(ops->synchronize(b));
            double t1 = now();
            if (l->kind == L_BN_RELU6 && fused && ops->relu6_batchnorm_backward_training) {
                BENCH_TRY(ops->relu6_batchnorm_backward_training(b, &bn, &x, &y, &dy, gamma, sm, si,
                                                                 &dx, dg, db));
            } else if (l->kind == L_BN_RELU6) {
                BENCH_TRY(ops->relu6_backward(b, &y, &dy, &dx));
                BENCH_TRY(
                    ops->batchnorm_backward_training(b, &bn, &x, &dx, gamma, sm, si, &dx, dg, db));
            } else if (l->kind == L_BN) {
                BENCH_TRY(
                    ops->batchnorm_backward_training(b, &bn, &x, &dy, gamma, sm, si, &dx, dg, db));
            } else {
                BENCH_TRY(ops->relu6_backward(b, &y, &dy, &dx));
            }
            BENCH_TRY(ops->synchronize(b));
            double t2 = now();
            if (r >= 0) fwd[r] = t1 - t0, bwd[r] = t2 - t1;
        }
        ops->tensor_free(b, &x);
        ops->tensor_free(b, &y);
        ops->tensor_free(b, &dy);
        ops->tensor_free(b, &dx);
        float *bufs[] = {gamma, beta, mm, mv, sm, si, dg, db};
        for (int i = 0; i < 8; i++)
            ops->buffer_free(b, bufs[i]);
    }
    t.forward = median(fwd, reps);
    t.backward = median(bwd, reps);
    return t;
}

static layer conv_layer(const char *name, mt_shape4 in, int out, int k, int stride, bool dw) {
    layer l = {.kind = L_CONV};
    snprintf(l.name, sizeof l.name, "%s", name);
    l.conv = (mt_conv_desc){
        .input = in, .out_channels = out, .kernel = k, .stride = stride, .depthwise = dw};
    mt_same_padding(in.h, k, stride, &l.conv.pad_top, &l.conv.pad_bottom);
    mt_same_padding(in.w, k, stride, &l.conv.pad_left, &l.conv.pad_right);
    return l;
}

static layer shape_layer(const char *name, layer_kind kind, mt_shape4 s) {
    layer l = {.kind = kind, .shape = s};
    snprintf(l.name, sizeof l.name, "%s", name);
    return l;
}

/* Every convolution, BN and ReLU6 of MobileNetV2 alpha 1.0 (Keras' block structure). */
static int network_layers(int batch, int size, layer *out, int max) {
    static const int blocks[][4] = {/* expansion, channels, repeats, first stride */
                                    {1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                    {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    int n = 0;
    char name[48];
    mt_shape4 s = {batch, size, size, 3};
#define ADD(l)                                                                                     \
    do {                                                                                           \
        if (n < max) out[n++] = (l);                                                               \
    } while (0)
#define ADD_CONV_BN(nm, in, oc, k, st, dw, relu)                                                   \
    do {                                                                                           \
        layer c_ = conv_layer(nm, in, oc, k, st, dw);                                              \
        ADD(c_);                                                                                   \
        mt_shape4 o_ = mt_conv_output_shape(&c_.conv);                                             \
        ADD(shape_layer("  bn", L_BN, o_));                                                        \
        if (relu) ADD(shape_layer("  relu6", L_RELU6, o_));                                        \
        s = o_;                                                                                    \
    } while (0)
    ADD_CONV_BN("Conv1", s, 32, 3, 2, false, true);
    int block = 0;
    for (size_t g = 0; g < sizeof blocks / sizeof blocks[0]; g++) {
        for (int r = 0; r < blocks[g][2]; r++, block++) {
            int stride = r == 0 ? blocks[g][3] : 1, expanded = s.c * blocks[g][0];
            if (blocks[g][0] != 1) {
                snprintf(name, sizeof name, "block_%d_expand", block);
                ADD_CONV_BN(name, s, expanded, 1, 1, false, true);
            }
            snprintf(name, sizeof name, "block_%d_depthwise", block);
            ADD_CONV_BN(name, s, s.c, 3, stride, true, true);
            snprintf(name, sizeof name, "block_%d_project", block);
            ADD_CONV_BN(name, s, blocks[g][1], 1, 1, false, false);
        }
    }
    ADD_CONV_BN("Conv_1", s, 1280, 1, 1, false, true);
#undef ADD
#undef ADD_CONV_BN
    return n;
}

static mt_backend *make_backend(const char *name, const char *layout, int threads) {
    if (layout)
        setenv("MT_ONEDNN_LAYOUT", layout, 1);
    else
        unsetenv("MT_ONEDNN_LAYOUT");
    mt_backend *b;
    mt_backend_options options = {.num_threads = threads};
    BENCH_TRY(mt_backend_create(name, &options, &b));
    unsetenv("MT_ONEDNN_LAYOUT");
    return b;
}

/* Forward of a frozen conv + inference-mode BN + ReLU6 (finetune's frozen layers): the fused op
 * when `fused` and the backend has it, else the three separate ops (BN and ReLU6 in place). */
static double time_frozen(mt_backend *b, const mt_conv_desc *d, int reps, bool fused) {
    const mt_ops *ops = b->ops;
    double t[64];
    if (reps > 64) reps = 64;
    mt_shape4 out = mt_conv_output_shape(d);
    int c = out.c;
    size_t wn = (size_t)d->kernel * d->kernel * d->input.c * (d->depthwise ? 1 : c);
    mt_tensor x, y;
    tensor_random(b, d->input, -1, 1, &x);
    BENCH_TRY(ops->tensor_alloc(b, out, &y));
    float *w = buffer_random(b, wn, -0.1f, 0.1f);
    float *gamma = buffer_random(b, c, 0.5f, 1.5f), *beta = buffer_random(b, c, -1, 1);
    float *mm = buffer_random(b, c, -1, 1), *mv = buffer_random(b, c, 0.5f, 2);
    mt_batchnorm_desc bn = {.shape = out, .epsilon = 1e-3f, .momentum = 0.999f};
    for (int r = -1; r < reps; r++) {
        double t0 = now();
        if (fused && ops->conv_bn_relu6_inference_forward) {
            BENCH_TRY(ops->conv_bn_relu6_inference_forward(b, d, &bn, &x, w, gamma, beta, mm, mv,
                                                           true, &y));
        } else {
            BENCH_TRY(ops->conv_forward(b, d, &x, w, &y));
            BENCH_TRY(ops->batchnorm_forward_inference(b, &bn, &y, gamma, beta, mm, mv, &y));
            BENCH_TRY(ops->relu6_forward(b, &y, &y));
        }
        BENCH_TRY(ops->synchronize(b));
        if (r >= 0) t[r] = now() - t0;
    }
    ops->tensor_free(b, &x);
    ops->tensor_free(b, &y);
    float *bufs[] = {w, gamma, beta, mm, mv};
    for (int i = 0; i < 5; i++)
        ops->buffer_free(b, bufs[i]);
    return median(t, reps);
}

int main(int argc, char **argv) {
    int reps = 5, batch = 32, size = 160, threads = 0;
    bool reference = true, network = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--no-reference"))
            reference = false;
        else if (!strcmp(argv[i], "--network"))
            network = true;
        else if (!strcmp(argv[i], "--cpu-time"))
            bench_clock = CLOCK_PROCESS_CPUTIME_ID;
        else {
            fprintf(stderr,
                    "usage: %s [--reps N] [--batch N] [--size S] [--threads T] "
                    "[--no-reference] [--network] [--only SUBSTRING] [--cpu-time]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    mt_backend *cpu = make_backend("cpu", NULL, threads);
    mt_backend *nhwc = make_backend("cpu", "nhwc", threads);
    mt_backend *ref = reference ? make_backend("reference", NULL, threads) : NULL;

    /* Representative MobileNetV2 layers at `size` input: block_3 (40x40 at 160, 24 -> 144 ->
     * stride-2 depthwise -> 32) and block_14 (5x5, 160 -> 960 -> 160), plus Conv1. */
    int q = size / 4, e = size / 32;
    layer picked[] = {
        conv_layer("Conv1 3x3/2 3->32", (mt_shape4){batch, size, size, 3}, 32, 3, 2, false),
        conv_layer("expand 1x1 24->144", (mt_shape4){batch, q, q, 24}, 144, 1, 1, false),
        conv_layer("depthwise 3x3/1 144", (mt_shape4){batch, q, q, 144}, 144, 3, 1, true),
        conv_layer("depthwise 3x3/2 144", (mt_shape4){batch, q, q, 144}, 144, 3, 2, true),
        conv_layer("project 1x1 144->32", (mt_shape4){batch, q / 2, q / 2, 144}, 32, 1, 1, false),
        conv_layer("expand 1x1 160->960", (mt_shape4){batch, e, e, 160}, 960, 1, 1, false),
        conv_layer("depthwise 3x3/1 960", (mt_shape4){batch, e, e, 960}, 960, 3, 1, true),
        conv_layer("project 1x1 960->160", (mt_shape4){batch, e, e, 960}, 160, 1, 1, false),
        shape_layer("batchnorm 144", L_BN, (mt_shape4){batch, q, q, 144}),
        shape_layer("relu6 144", L_RELU6, (mt_shape4){batch, q, q, 144}),
        shape_layer("bn+relu6 144 fused", L_BN_RELU6, (mt_shape4){batch, q, q, 144}),
    };
    printf("ops benchmark: batch %d, input %dx%d, median of %d, threads %d (0 = all), %s time, "
           "in ms\n",
           batch, size, size, reps, threads,
           bench_clock == CLOCK_MONOTONIC ? "wall" : "process CPU");
    printf("%-24s %10s %10s %10s %9s %9s %11s\n", "layer", "cpu fwd", "cpu bwd", "nhwc f+b",
           reference ? "ref f+b" : "", reference ? "ref/cpu" : "", "nhwc/blocked");
    for (size_t i = 0; i < sizeof picked / sizeof picked[0]; i++) {
        if (only && !strstr(picked[i].name, only)) continue;
        timing c = time_layer(cpu, &picked[i], reps, true);
        timing h = time_layer(nhwc, &picked[i], reps, true);
        double cpu_total = c.forward + c.backward, nhwc_total = h.forward + h.backward;
        printf("%-24s %10.2f %10.2f %10.2f", picked[i].name, 1e3 * c.forward, 1e3 * c.backward,
               1e3 * nhwc_total);
        if (ref) {
            timing r = time_layer(ref, &picked[i], reps < 3 ? reps : 3, true);
            double ref_total = r.forward + r.backward;
            printf(" %9.1f %8.1fx", 1e3 * ref_total, ref_total / cpu_total);
        } else {
            printf(" %9s %9s", "", "");
        }
        printf(" %10.2fx\n", nhwc_total / cpu_total);
        fflush(stdout);
    }

    printf("\nfrozen conv + BN (inference) + ReLU6, forward, cpu backend (blocked), ms:\n");
    printf("%-24s %10s %10s %9s\n", "layer", "separate", "fused", "speedup");
    for (size_t i = 0; i < sizeof picked / sizeof picked[0]; i++) {
        if (picked[i].kind != L_CONV || (only && !strstr(picked[i].name, only))) continue;
        double sep = time_frozen(cpu, &picked[i].conv, reps, false);
        double fus = time_frozen(cpu, &picked[i].conv, reps, true);
        printf("%-24s %10.2f %10.2f %8.2fx\n", picked[i].name, 1e3 * sep, 1e3 * fus, sep / fus);
        fflush(stdout);
    }

    if (network) {
        layer layers[256];
        int count = network_layers(batch, size, layers, 256);
        double total[2][2] = {{0}}; /* [blocked, nhwc][fwd, bwd] */
        double by_kind[2][3] = {{0}};
        double fused_pairs = 0, separate_pairs = 0; /* BN+ReLU6 pairs, blocked */
        printf("\nwhole backbone (every conv, BN, ReLU6 of MobileNetV2 1.0), cpu backend:\n");
        printf("%-24s %10s %10s %10s %10s %9s\n", "layer", "blk fwd", "blk bwd", "nhwc fwd",
               "nhwc bwd", "nhwc/blk");
        for (int i = 0; i < count; i++) {
            timing c = time_layer(cpu, &layers[i], reps, false);
            timing h = time_layer(nhwc, &layers[i], reps, false);
            total[0][0] += c.forward;
            total[0][1] += c.backward;
            total[1][0] += h.forward;
            total[1][1] += h.backward;
            by_kind[0][layers[i].kind] += c.forward + c.backward;
            by_kind[1][layers[i].kind] += h.forward + h.backward;
            if (layers[i].kind == L_BN && i + 1 < count && layers[i + 1].kind == L_RELU6) {
                /* the same BN+ReLU6 pair through the fused ops, blocked layout */
                layer pair = layers[i];
                pair.kind = L_BN_RELU6;
                timing f = time_layer(cpu, &pair, reps, true);
                fused_pairs += f.forward + f.backward;
                timing u = time_layer(cpu, &pair, reps, false);
                separate_pairs += u.forward + u.backward;
            }
            printf("%-24s %10.2f %10.2f %10.2f %10.2f %8.2fx\n", layers[i].name, 1e3 * c.forward,
                   1e3 * c.backward, 1e3 * h.forward, 1e3 * h.backward,
                   (h.forward + h.backward) / (c.forward + c.backward));
            fflush(stdout);
        }
        static const char *kinds[] = {"conv", "batchnorm", "relu6"};
        for (int k = 0; k < 3; k++)
            printf("total %-18s blocked %8.1f ms, nhwc %8.1f ms (nhwc/blocked %.2fx)\n", kinds[k],
                   1e3 * by_kind[0][k], 1e3 * by_kind[1][k], by_kind[1][k] / by_kind[0][k]);
        printf(
            "BN+ReLU6 pairs, blocked: separate ops %.1f ms, fused ops %.1f ms (fused is %.2fx)\n",
            1e3 * separate_pairs, 1e3 * fused_pairs, separate_pairs / fused_pairs);
        double blk = total[0][0] + total[0][1], hw = total[1][0] + total[1][1];
        double blk_fused = blk - separate_pairs + fused_pairs;
        printf("total backbone, blocked with fused BN+ReLU6: %.1f ms = %.1f img/s\n",
               1e3 * blk_fused, batch / blk_fused);
        printf("total backbone           blocked %8.1f ms (fwd %.1f, bwd %.1f) = %.1f img/s, "
               "nhwc %8.1f ms = %.1f img/s (blocked is %.2fx)\n",
               1e3 * blk, 1e3 * total[0][0], 1e3 * total[0][1], batch / blk, 1e3 * hw, batch / hw,
               hw / blk);
    }
    mt_backend_destroy(cpu);
    mt_backend_destroy(nhwc);
    if (ref) mt_backend_destroy(ref);
    return 0;
}
