/* The "cpu" backend's optional fused ops against the reference backend's separate ops:
 *   conv_bn_relu6_inference_forward = conv_forward, batchnorm_forward_inference, relu6_forward
 *     on regular, pointwise and depthwise convolutions with TF's asymmetric padding, channel
 *     counts in and out of oneDNN's blocked layout, with and without the ReLU6, and with
 *     statistics that change between calls (no stale folded weights);
 *   batchnorm_relu6_forward_training = batchnorm_forward_training, relu6_forward (y, saved and
 *     moving statistics), and relu6_batchnorm_backward_training = relu6_backward,
 *     batchnorm_backward_training (dx, also in place over dy, dgamma, dbeta, also NULL), including
 *     a channel whose mean is far from zero against its spread. Tolerance 1e-4 of the largest
 *     value, as for the unfused ops. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "test_util.h"

static mt_backend *ref, *cpu;

static float *random_floats(size_t n, float lo, float hi) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
    return p;
}

static mt_status to_backend(mt_backend *b, mt_shape4 s, const float *host, mt_tensor *t) {
    MT_TRY(b->ops->tensor_alloc(b, s, t));
    return host ? b->ops->tensor_from_nhwc(b, host, t) : MT_OK;
}

/* One case; returns false (and reports) on a mismatch. */
static int run_case(const char *name, mt_conv_desc conv, bool relu6) {
    mt_shape4 out = mt_conv_output_shape(&conv);
    int oc = out.c;
    size_t wn = (size_t)conv.kernel * conv.kernel * conv.input.c * (conv.depthwise ? 1 : oc);
    size_t xn = mt_shape4_count(conv.input), yn = mt_shape4_count(out);
    float *x = random_floats(xn, -1, 1), *w = random_floats(wn, -0.5f, 0.5f);
    float *gamma = random_floats(oc, 0.5f, 1.5f), *beta = random_floats(oc, -1, 1);
    float *mean = random_floats(oc, -0.5f, 0.5f), *var = random_floats(oc, 0.05f, 1.0f);
    mt_batchnorm_desc bn = {.shape = out, .epsilon = 1e-3f, .momentum = 0.999f};
    float *want = malloc(yn * sizeof *want), *got = malloc(yn * sizeof *got);
    mt_tensor rx, ry, cx, cy;
    CHECK_OK(to_backend(ref, conv.input, x, &rx));
    CHECK_OK(to_backend(ref, out, NULL, &ry));
    CHECK_OK(to_backend(cpu, conv.input, x, &cx));
    CHECK_OK(to_backend(cpu, out, NULL, &cy));
    for (int round = 0; round < 2; round++) {
        if (round == 1) /* new statistics, same shapes: the cached primitive must not go stale */
            for (int c = 0; c < oc; c++)
                mean[c] += 0.25f, var[c] *= 2.0f, gamma[c] = -gamma[c];
        CHECK_OK(ref->ops->conv_forward(ref, &conv, &rx, w, &ry));
        CHECK_OK(ref->ops->batchnorm_forward_inference(ref, &bn, &ry, gamma, beta, mean, var, &ry));
        if (relu6) CHECK_OK(ref->ops->relu6_forward(ref, &ry, &ry));
        CHECK_OK(ref->ops->tensor_to_nhwc(ref, &ry, want));
        CHECK_OK(cpu->ops->conv_bn_relu6_inference_forward(cpu, &conv, &bn, &cx, w, gamma, beta,
                                                           mean, var, relu6, &cy));
        CHECK_OK(cpu->ops->tensor_to_nhwc(cpu, &cy, got));
        double scale = 0, worst = 0;
        for (size_t i = 0; i < yn; i++) {
            scale = fmax(scale, fabs(want[i]));
            worst = fmax(worst, fabs(got[i] - want[i]));
        }
        double rel = worst / (scale > 0 ? scale : 1);
        printf("%s %-44s round %d relu6 %d  max|diff|/scale %.1e\n", rel <= 1e-4 ? "ok  " : "FAIL",
               name, round, relu6, rel);
        CHECK_MSG(rel <= 1e-4, "%s: fused conv+BN%s differs from the reference by %.3g", name,
                  relu6 ? "+ReLU6" : "", rel);
    }
    ref->ops->tensor_free(ref, &rx);
    ref->ops->tensor_free(ref, &ry);
    cpu->ops->tensor_free(cpu, &cx);
    cpu->ops->tensor_free(cpu, &cy);
    free(x), free(w), free(gamma), free(beta), free(mean), free(var), free(want), free(got);
    return 0;
}

static double rel_diff(const float *got, const float *want, size_t n) {
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(want[i]));
        worst = fmax(worst, fabs(got[i] - want[i]));
    }
    return worst / (scale > 0 ? scale : 1);
}

static void expect_close(const char *name, const char *what, const float *got, const float *want,
                         size_t n) {
    double rel = rel_diff(got, want, n);
    printf("%s %-36s %-18s max|diff|/scale %.1e\n", rel <= 1e-4 ? "ok  " : "FAIL", name, what, rel);
    CHECK_MSG(rel <= 1e-4, "%s: %s differs from the reference by %.3g", name, what, rel);
}

/* batchnorm_relu6_forward_training and relu6_batchnorm_backward_training on one shape. */
static int run_bn_case(const char *name, mt_shape4 s, float center) {
    size_t n = mt_shape4_count(s);
    int c = s.c;
    float *x = random_floats(n, center - 3, center + 3), *dy = random_floats(n, -1, 1);
    float *gamma = random_floats(c, 0.5f, 1.5f), *beta = random_floats(c, 0.5f, 4);
    float *mm0 = random_floats(c, -1, 1), *mv0 = random_floats(c, 0.5f, 2);
    mt_batchnorm_desc bn = {.shape = s, .epsilon = 1e-3f, .momentum = 0.9f};
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    float *stats[2][8]; /* mean, inv_std, moving mean, moving var, dgamma, dbeta */
    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 8; k++)
            stats[b][k] = calloc((size_t)c, sizeof(float));
    for (int b = 0; b < 2; b++) {
        memcpy(stats[b][2], mm0, (size_t)c * sizeof(float));
        memcpy(stats[b][3], mv0, (size_t)c * sizeof(float));
    }
    mt_tensor rx, ry, rdy, rdx, cx, cy, cdy, cdx;
    CHECK_OK(to_backend(ref, s, x, &rx));
    CHECK_OK(to_backend(ref, s, NULL, &ry));
    CHECK_OK(to_backend(ref, s, dy, &rdy));
    CHECK_OK(to_backend(ref, s, NULL, &rdx));
    CHECK_OK(to_backend(cpu, s, x, &cx));
    CHECK_OK(to_backend(cpu, s, NULL, &cy));
    CHECK_OK(to_backend(cpu, s, dy, &cdy));
    CHECK_OK(to_backend(cpu, s, NULL, &cdx));
    float **r = stats[0], **k = stats[1];
    CHECK_OK(ref->ops->batchnorm_forward_training(ref, &bn, &rx, gamma, beta, r[2], r[3], &ry, r[0],
                                                  r[1]));
    CHECK_OK(ref->ops->relu6_forward(ref, &ry, &ry));
    CHECK_OK(cpu->ops->batchnorm_relu6_forward_training(cpu, &bn, &cx, gamma, beta, k[2], k[3], &cy,
                                                        k[0], k[1]));
    CHECK_OK(ref->ops->tensor_to_nhwc(ref, &ry, want));
    CHECK_OK(cpu->ops->tensor_to_nhwc(cpu, &cy, got));
    expect_close(name, "forward y", got, want, n);
    expect_close(name, "saved mean", k[0], r[0], (size_t)c);
    expect_close(name, "saved inv std", k[1], r[1], (size_t)c);
    expect_close(name, "moving mean", k[2], r[2], (size_t)c);
    expect_close(name, "moving variance", k[3], r[3], (size_t)c);

    /* backward from the reference's statistics on both sides, so only the op differs */
    CHECK_OK(ref->ops->relu6_backward(ref, &ry, &rdy, &rdx));
    CHECK_OK(ref->ops->batchnorm_backward_training(ref, &bn, &rx, &rdx, gamma, r[0], r[1], &rdx,
                                                   r[4], r[5]));
    CHECK_OK(ref->ops->tensor_to_nhwc(ref, &rdx, want));
    CHECK_OK(cpu->ops->relu6_batchnorm_backward_training(cpu, &bn, &cx, &cy, &cdy, gamma, r[0],
                                                         r[1], &cdx, k[4], k[5]));
    CHECK_OK(cpu->ops->tensor_to_nhwc(cpu, &cdx, got));
    expect_close(name, "backward dx", got, want, n);
    expect_close(name, "backward dgamma", k[4], r[4], (size_t)c);
    expect_close(name, "backward dbeta", k[5], r[5], (size_t)c);
    /* in place over dy, no parameter gradients (a frozen BN) */
    CHECK_OK(cpu->ops->relu6_batchnorm_backward_training(cpu, &bn, &cx, &cy, &cdy, gamma, r[0],
                                                         r[1], &cdy, NULL, NULL));
    CHECK_OK(cpu->ops->tensor_to_nhwc(cpu, &cdy, got));
    expect_close(name, "backward dx in place", got, want, n);

    mt_tensor *ts[] = {&rx, &ry, &rdy, &rdx};
    for (int i = 0; i < 4; i++)
        ref->ops->tensor_free(ref, ts[i]);
    mt_tensor *tc[] = {&cx, &cy, &cdy, &cdx};
    for (int i = 0; i < 4; i++)
        cpu->ops->tensor_free(cpu, tc[i]);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 8; i++)
            free(stats[b][i]);
    free(x), free(dy), free(gamma), free(beta), free(mm0), free(mv0), free(want), free(got);
    return 0;
}

static mt_conv_desc same_conv(mt_shape4 in, int out_channels, int kernel, int stride, bool dw) {
    mt_conv_desc d = {.input = in,
                      .out_channels = out_channels,
                      .kernel = kernel,
                      .stride = stride,
                      .depthwise = dw};
    mt_same_padding(in.h, kernel, stride, &d.pad_top, &d.pad_bottom);
    mt_same_padding(in.w, kernel, stride, &d.pad_left, &d.pad_right);
    return d;
}

int main(void) {
    mt_backend_options options = {.num_threads = 2};
    CHECK_OK(mt_backend_create("reference", &options, &ref));
    CHECK_OK(mt_backend_create("cpu", &options, &cpu));
    if (!cpu->ops->conv_bn_relu6_inference_forward || !cpu->ops->batchnorm_relu6_forward_training ||
        !cpu->ops->relu6_batchnorm_backward_training) {
        fprintf(stderr, "the cpu backend lost one of its fused ops\n");
        return 1;
    }
    run_case("3x3/2 SAME 3->16 (Conv1-like) n2 12x12",
             same_conv((mt_shape4){2, 12, 12, 3}, 16, 3, 2, false), true);
    run_case("1x1 16->24 n2 6x6 (expand)", same_conv((mt_shape4){2, 6, 6, 16}, 24, 1, 1, false),
             true);
    run_case("1x1 24->16 n2 6x6 (project)", same_conv((mt_shape4){2, 6, 6, 24}, 16, 1, 1, false),
             false);
    run_case("depthwise 3x3/1 c32 n2 7x7", same_conv((mt_shape4){2, 7, 7, 32}, 32, 3, 1, true),
             true);
    run_case("depthwise 3x3/2 c24 n1 9x8", same_conv((mt_shape4){1, 9, 8, 24}, 24, 3, 2, true),
             true);
    run_case("depthwise 3x3/2 c17 n2 5x5", same_conv((mt_shape4){2, 5, 5, 17}, 17, 3, 2, true),
             false);
    run_case("3x3/1 17->5 n1 5x5", same_conv((mt_shape4){1, 5, 5, 17}, 5, 3, 1, false), true);
    run_bn_case("bn+relu6 n2 5x4 c16", (mt_shape4){2, 5, 4, 16}, 1.0f);
    run_bn_case("bn+relu6 n3 5x5 c17", (mt_shape4){3, 5, 5, 17}, 1.0f);
    run_bn_case("bn+relu6 n4 3x3 c24 mean 100", (mt_shape4){4, 3, 3, 24}, 100.0f);
    mt_backend_destroy(cpu);
    mt_backend_destroy(ref);
    return mt_test_finish();
}
