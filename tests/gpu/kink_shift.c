/* The ReLU6 kink shifts (kink_shift.h says why). */
#include "kink_shift.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/model_testing.h"

static const double unit_roundoff = 5.9604644775390625e-08; /* fp32, 2^-24 */

typedef struct interval {
    double lo, hi;
} interval;

static int interval_order(const void *a, const void *b) {
    double x = ((const interval *)a)->lo, y = ((const interval *)b)->lo;
    return (x > y) - (x < y);
}

/* The least |d| such that every v + d of the channel is at least `margin` from 0 and from 6:
 * d must avoid the open intervals (-v - margin, -v + margin) and (6 - v - margin, ...); merged,
 * the one holding 0 (if any) is left by its nearer end. `spans` has room for 2 x count. */
static double least_shift(const double *v, size_t count, size_t stride, double margin,
                          interval *spans) {
    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        double x = v[i * stride];
        spans[k++] = (interval){-x - margin, -x + margin};
        spans[k++] = (interval){6.0 - x - margin, 6.0 - x + margin};
    }
    qsort(spans, k, sizeof *spans, interval_order);
    for (size_t i = 0; i < k;) {
        double lo = spans[i].lo, hi = spans[i].hi;
        for (i++; i < k && spans[i].lo <= hi; i++)
            hi = fmax(hi, spans[i].hi);
        if (lo < 0.0 && 0.0 < hi) return hi < -lo ? hi : lo;
    }
    return 0.0;
}

typedef struct kink_pass {
    long near;   /* pre-activations within the margin of 0 or 6 */
    int layers;  /* BN + ReLU6 pairs on the gradient path (pre-activations inspected) */
    int shifted; /* layers whose betas moved */
} kink_pass;

/* The pre-activations z (n x h x w x c, double) of BN layer `bn` in the model's last forward,
 * from the BN's input and its statistics as the forward used them (batch statistics in
 * training mode, biased variance; else the moving ones). false when the BN's input is not kept
 * (the layer is off the gradient path, where a kink cannot move a gradient); *failed when a
 * download failed. */
static bool pre_activations(mt_model *m, int bn, int n, double *z, float *x, float *param,
                            bool *failed) {
    const mt_model_layout *layout = mt_model_get_layout(m);
    const mt_layer_info *l = &layout->layers[bn];
    if (mt_model_layer_output(m, l->inputs[0], x) != MT_OK) return false;
    size_t c = (size_t)l->out_c, rows = (size_t)n * l->out_h * l->out_w;
    const char *names[4] = {"gamma", "beta", "moving_mean", "moving_variance"};
    float *p[4];
    for (int k = 0; k < 4; k++) {
        p[k] = param + k * c;
        if (mt_model_tensor_download(m, mt_model_layout_find(layout, l->name, names[k]), p[k]) !=
            MT_OK) {
            *failed = true;
            return false;
        }
    }
    for (size_t ch = 0; ch < c; ch++) {
        double mean = p[2][ch], var = p[3][ch];
        if (l->bn_training) {
            double s = 0.0, q = 0.0;
            for (size_t r = 0; r < rows; r++)
                s += x[r * c + ch];
            mean = s / (double)rows;
            for (size_t r = 0; r < rows; r++)
                q += (x[r * c + ch] - mean) * (x[r * c + ch] - mean);
            var = q / (double)rows;
        }
        double scale = p[0][ch] / sqrt(var + 1e-3); /* Keras' epsilon */
        for (size_t r = 0; r < rows; r++)
            z[r * c + ch] = (x[r * c + ch] - mean) * scale + p[1][ch];
    }
    return true;
}

/* One pass over the BN + ReLU6 pairs from the bottom: count the kink-near pre-activations and,
 * when `shift`, move the betas of a layer that has some (in `a` and `b`) and run the forward
 * again before looking at the next layer. */
static bool kink_pass_run(mt_model *a, mt_model *b, const float *images, const int32_t *labels,
                          int n, double margin_u, bool shift, kink_pass *out) {
    const mt_model_layout *layout = mt_model_get_layout(a);
    size_t most = 0, most_rows = 0, most_c = 0;
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        size_t rows = (size_t)n * l->out_h * l->out_w;
        if (rows * l->out_c > most) most = rows * l->out_c;
        if (rows > most_rows) most_rows = rows;
        if ((size_t)l->out_c > most_c) most_c = l->out_c;
    }
    double *z = malloc(most * sizeof *z);
    float *x = malloc(most * sizeof *x), *param = malloc(4 * most_c * sizeof *param);
    interval *spans = malloc(2 * most_rows * sizeof *spans); /* one channel at a time */
    mt_step_result r;
    bool ok = z && x && param && spans &&
              mt_model_forward(a, images, labels, n, true, 11, NULL, &r) == MT_OK;
    *out = (kink_pass){0};
    for (int i = 1; ok && i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const mt_layer_info *relu = &layout->layers[i];
        if (relu->kind != MT_LAYER_RELU6) continue;
        int bn = relu->inputs[0];
        const mt_layer_info *l = &layout->layers[bn];
        bool failed = false;
        if (l->kind != MT_LAYER_BATCHNORM || !pre_activations(a, bn, n, z, x, param, &failed)) {
            ok = !failed;
            continue;
        }
        size_t c = (size_t)l->out_c, count = (size_t)n * l->out_h * l->out_w * c;
        double sum = 0.0;
        for (size_t k = 0; k < count; k++)
            sum += z[k] * z[k];
        double margin = margin_u * unit_roundoff * sqrt(sum / (double)count);
        long near = 0;
        for (size_t k = 0; k < count; k++)
            near += fabs(z[k]) < margin || fabs(z[k] - 6.0) < margin;
        out->layers++;
        out->near += near;
        if (!shift || near == 0) continue;
        /* 1.5x the margin: our double z is not the float run's, and beta + d rounds */
        float *beta = param + c;
        for (size_t ch = 0; ch < c; ch++)
            beta[ch] = (float)(beta[ch] + least_shift(z + ch, count / c, c, 1.5 * margin, spans));
        const mt_param_tensor *t = mt_model_layout_find(layout, l->name, "beta");
        ok = mt_model_tensor_upload(a, t, beta) == MT_OK &&
             (!b || mt_model_tensor_upload(b, t, beta) == MT_OK) &&
             mt_model_forward(a, images, labels, n, true, 11, NULL, &r) == MT_OK;
        out->shifted++;
    }
    if (!z || !x || !param || !spans)
        fprintf(stderr, "kinks: out of memory\n");
    else if (!ok)
        fprintf(stderr, "kinks: %s\n", mt_last_error());
    free(z), free(x), free(param), free(spans);
    return ok;
}

bool kink_shift(mt_model *a, mt_model *b, const float *images, const int32_t *labels, int n,
                double margin_u, bool shift, kink_report *report) {
    float *state;
    size_t count;
    mt_model_state(a, &state, &count);
    mt_backend *be = mt_model_backend(a);
    float *saved = malloc((count + 1) * sizeof *saved);
    kink_pass before = {0}, moved = {0}, after = {0};
    bool ok = saved && be->ops->download(be, saved, state, count * sizeof *saved) == MT_OK;
    if (!ok) fprintf(stderr, "kinks: saving the BN moving statistics: %s\n", mt_last_error());
    ok = ok && kink_pass_run(a, b, images, labels, n, margin_u, false, &before) &&
         (!shift || kink_pass_run(a, b, images, labels, n, margin_u, true, &moved)) &&
         kink_pass_run(a, b, images, labels, n, margin_u, false, &after);
    if (saved && be->ops->upload(be, state, saved, count * sizeof *saved) != MT_OK) {
        fprintf(stderr, "kinks: restoring the BN moving statistics: %s\n", mt_last_error());
        ok = false;
    }
    *report = (kink_report){before.near, after.near, before.layers, moved.shifted};
    free(saved);
    return ok;
}
