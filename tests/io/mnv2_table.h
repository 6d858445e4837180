/* The tests' own list of MobileNetV2(include_top=False) weight tensors (layer, weight, Keras
 * shape) for a width multiplier, written from Keras' architecture independently of src/model so
 * the reader is checked against something it did not produce. */
#ifndef MT_TESTS_IO_MNV2_TABLE_H
#define MT_TESTS_IO_MNV2_TABLE_H

#include <stdint.h>
#include <stdio.h>

typedef struct mnv2_tensor {
    char layer[48];
    char weight[24];
    int rank;
    int64_t shape[4];
} mnv2_tensor;

enum { MNV2_MAX_TENSORS = 320 };

/* Keras' _make_divisible(v, 8). */
static inline int mnv2_divisible(double v) {
    int rounded = (int)(v + 4) / 8 * 8;
    if (rounded < 8) rounded = 8;
    if (rounded < 0.9 * v) rounded += 8;
    return rounded;
}

static inline void mnv2_add(mnv2_tensor *t, int *n, const char *layer, const char *weight, int rank,
                            int64_t a, int64_t b, int64_t c, int64_t d) {
    mnv2_tensor *x = &t[(*n)++];
    snprintf(x->layer, sizeof x->layer, "%s", layer);
    snprintf(x->weight, sizeof x->weight, "%s", weight);
    x->rank = rank;
    x->shape[0] = a, x->shape[1] = b, x->shape[2] = c, x->shape[3] = d;
}

static inline void mnv2_add_bn(mnv2_tensor *t, int *n, const char *layer, int64_t c) {
    static const char *names[4] = {"gamma", "beta", "moving_mean", "moving_variance"};
    for (int i = 0; i < 4; i++)
        mnv2_add(t, n, layer, names[i], 1, c, 0, 0, 0);
}

/* Fill t (MNV2_MAX_TENSORS) in Keras' layer order; returns the count (260). */
static inline int mnv2_table(double alpha, mnv2_tensor *t) {
    static const int blocks[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                     {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    int n = 0;
    int channels = mnv2_divisible(32 * alpha);
    mnv2_add(t, &n, "Conv1", "kernel", 4, 3, 3, 3, channels);
    mnv2_add_bn(t, &n, "bn_Conv1", channels);
    int id = 0;
    char name[48];
    for (int g = 0; g < 7; g++) {
        for (int r = 0; r < blocks[g][2]; r++, id++) {
            int expanded = channels * blocks[g][0];
            int out = mnv2_divisible((int)(blocks[g][1] * alpha));
            const char *prefix = id == 0 ? "expanded_conv" : NULL;
            char base[32];
            if (prefix)
                snprintf(base, sizeof base, "%s", prefix);
            else
                snprintf(base, sizeof base, "block_%d", id);
            if (id != 0) {
                snprintf(name, sizeof name, "%s_expand", base);
                mnv2_add(t, &n, name, "kernel", 4, 1, 1, channels, expanded);
                snprintf(name, sizeof name, "%s_expand_BN", base);
                mnv2_add_bn(t, &n, name, expanded);
            }
            snprintf(name, sizeof name, "%s_depthwise", base);
            mnv2_add(t, &n, name, "depthwise_kernel", 4, 3, 3, expanded, 1);
            snprintf(name, sizeof name, "%s_depthwise_BN", base);
            mnv2_add_bn(t, &n, name, expanded);
            snprintf(name, sizeof name, "%s_project", base);
            mnv2_add(t, &n, name, "kernel", 4, 1, 1, expanded, out);
            snprintf(name, sizeof name, "%s_project_BN", base);
            mnv2_add_bn(t, &n, name, out);
            channels = out;
        }
    }
    int last = alpha > 1.0 ? mnv2_divisible(1280 * alpha) : 1280;
    mnv2_add(t, &n, "Conv_1", "kernel", 4, 1, 1, channels, last);
    mnv2_add_bn(t, &n, "Conv_1_bn", last);
    return n;
}

static inline int64_t mnv2_count(const mnv2_tensor *x) {
    int64_t c = 1;
    for (int i = 0; i < x->rank; i++)
        c *= x->shape[i];
    return c;
}

/* An order-sensitive hash of float32 bit patterns, the same formula as h5_checksums.py, so a
 * single flipped bit or swapped pair of values shows. */
static inline uint64_t mnv2_hash(const float *v, int64_t count) {
    uint64_t h = 0;
    for (int64_t i = 0; i < count; i++) {
        union {
            float f;
            uint32_t u;
        } bits = {.f = v[i]};
        h += (uint64_t)bits.u * ((uint64_t)i * 2654435761u + 1u);
    }
    return h;
}

#endif
