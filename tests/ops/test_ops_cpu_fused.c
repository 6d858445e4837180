/* The "cpu" backend's optional fused op conv_bn_relu6_inference_forward against the reference
 * backend's three separate ops (conv_forward, batchnorm_forward_inference, relu6_forward), on
 * regular, pointwise and depthwise convolutions with TF's asymmetric padding, channel counts in
 * and out of oneDNN's blocked layout, with and without the ReLU6. Also checks that the fused op
 * keeps following the statistics when they change between calls (no stale folded weights). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "test_util.h"

static mt_backend *ref, *cpu;

static float *random_floats(size_t n, float lo, float hi) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
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
            for (int c = 0; c < oc; c++) mean[c] += 0.25f, var[c] *= 2.0f, gamma[c] = -gamma[c];
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

static mt_conv_desc same_conv(mt_shape4 in, int out_channels, int kernel, int stride, bool dw) {
    mt_conv_desc d = {.input = in, .out_channels = out_channels, .kernel = kernel,
                      .stride = stride, .depthwise = dw};
    mt_same_padding(in.h, kernel, stride, &d.pad_top, &d.pad_bottom);
    mt_same_padding(in.w, kernel, stride, &d.pad_left, &d.pad_right);
    return d;
}

int main(void) {
    mt_backend_options options = {.num_threads = 2};
    CHECK_OK(mt_backend_create("reference", &options, &ref));
    CHECK_OK(mt_backend_create("cpu", &options, &cpu));
    if (!cpu->ops->conv_bn_relu6_inference_forward) {
        fprintf(stderr, "the cpu backend lost its fused conv_bn_relu6_inference_forward\n");
        return 1;
    }
    run_case("3x3/2 SAME 3->16 (Conv1-like) n2 12x12", same_conv((mt_shape4){2, 12, 12, 3}, 16, 3, 2, false), true);
    run_case("1x1 16->24 n2 6x6 (expand)", same_conv((mt_shape4){2, 6, 6, 16}, 24, 1, 1, false), true);
    run_case("1x1 24->16 n2 6x6 (project)", same_conv((mt_shape4){2, 6, 6, 24}, 16, 1, 1, false), false);
    run_case("depthwise 3x3/1 c32 n2 7x7", same_conv((mt_shape4){2, 7, 7, 32}, 32, 3, 1, true), true);
    run_case("depthwise 3x3/2 c24 n1 9x8", same_conv((mt_shape4){1, 9, 8, 24}, 24, 3, 2, true), true);
    run_case("depthwise 3x3/2 c17 n2 5x5", same_conv((mt_shape4){2, 5, 5, 17}, 17, 3, 2, true), false);
    run_case("3x3/1 17->5 n1 5x5", same_conv((mt_shape4){1, 5, 5, 17}, 5, 3, 1, false), true);
    mt_backend_destroy(cpu);
    mt_backend_destroy(ref);
    return mt_test_finish();
}
