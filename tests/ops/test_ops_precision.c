/* train.precision = bf16 | fp16 on the CPU (src/ops/precision.c, the reference's emulation):
 *  1. the C rounding to bf16 and fp16 on its own: every one of the 65536 patterns decodes to its
 *     IEEE value (from the definition, in double) and encodes back to itself; at every boundary
 *     between two neighbouring values -- the exact midpoint (ties to even), the floats just
 *     below and above it -- and at the edges (subnormals, the largest finite value and the
 *     overflow threshold, zeros, infinities, NaN) the encoding is the nearest value, ties to
 *     even; and 200,000 random floats round as the double-precision definition says.
 *  2. the reference backend's emulation (ops.h "Precision"): in bf16 and fp16 each op's tensor
 *     output is exactly round(the fp32 reference's output on the same stored inputs), with the
 *     conv weights rounded as well (forward and backward-data) and fp32 outputs (the weight
 *     gradient, BN's statistics, pooled features) untouched; buffer_scale scales and flags. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/precision.h"
#include "test_util.h"

/* ---- 1. the rounding functions ------------------------------------------------------------- */

typedef struct format {
    const char *name;
    int mant, bias, emin;
    double max_finite;
    uint16_t (*encode)(float);
    float (*decode)(uint16_t);
} format;

static const format formats[] = {
    {"bf16", 7, 127, -126, 0x1.fep127, mt_f32_to_bf16_bits, mt_bf16_bits_to_f32},
    {"fp16", 10, 15, -14, 65504.0, mt_f32_to_fp16_bits, mt_fp16_bits_to_f32},
};

/* the value of a pattern from the IEEE definition */
static double ieee_decode(const format *f, unsigned bits) {
    const int ebits = 15 - f->mant, emax = (1 << ebits) - 1;
    const int e = (int)(bits >> f->mant) & emax;
    const double m = (double)(bits & ((1u << f->mant) - 1));
    const double sign = bits & 0x8000u ? -1.0 : 1.0;
    if (e == emax) return m ? NAN : sign * INFINITY;
    if (e == 0) return sign * ldexp(m, 1 - f->bias - f->mant);
    return sign * ldexp(1.0 + ldexp(m, -f->mant), e - f->bias);
}

/* x rounded to the format from the definition: the spacing of x's binade (the subnormal one
 * below 2^emin), nearbyint's ties to even, infinity at and above max + half a spacing */
static double ieee_round(const format *f, float x) {
    if (isnan(x)) return NAN;
    const double a = fabs((double)x);
    if (a == 0.0 || isinf(x)) return x;
    int e;
    frexp(a, &e);
    const int lead = e - 1 < f->emin ? f->emin : e - 1;
    const double step = ldexp(1.0, lead - f->mant);
    double r = nearbyint(a / step) * step;
    if (r > f->max_finite) r = INFINITY;
    return copysign(r, (double)x);
}

static int wrong_encodings;

/* x must encode to `want` (a pattern) */
static void expect_encoding(const format *f, float x, unsigned want, const char *what) {
    const unsigned got = f->encode(x);
    if (got == want) return;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if (wrong_encodings++ < 10)
        CHECK_MSG(0, "%s: %s %.9g (0x%08x) -> 0x%04x, want 0x%04x", f->name, what, x, u, got, want);
    else
        mt_test_failures++;
}

static void check_format(const format *f) {
    wrong_encodings = 0;
    const unsigned inf_bits = ((1u << (15 - f->mant)) - 1) << f->mant;
    for (unsigned bits = 0; bits < 65536; bits++) {
        const double want = ieee_decode(f, bits);
        const float value = f->decode((uint16_t)bits);
        if (isnan(want)) {
            CHECK_MSG(isnan(value), "%s 0x%04x: want NaN, got %.9g", f->name, bits, value);
            CHECK_MSG(isnan(f->decode(f->encode(value))),
                      "%s NaN 0x%04x: not NaN after a round "
                      "trip",
                      f->name, bits);
            continue;
        }
        CHECK_MSG((double)value == want && !signbit(value) == !signbit(want),
                  "%s 0x%04x decodes to %.9g, want %.9g", f->name, bits, value, want);
        expect_encoding(f, value, bits, "round trip of");
        /* the boundary to the next pattern of larger magnitude (infinity last) */
        const unsigned magnitude = bits & 0x7fffu;
        if (magnitude >= inf_bits) continue;
        const unsigned next = bits + 1;
        /* past the largest finite value, the next value would be max + its spacing */
        const double beyond = f->max_finite + ldexp(1.0, (int)log2(f->max_finite) - f->mant);
        const double upper =
            magnitude + 1 == inf_bits ? copysign(beyond, want) : ieee_decode(f, next);
        const double mid = 0.5 * (want + upper);
        const float m = (float)mid;
        CHECK_MSG((double)m == mid, "%s 0x%04x: the midpoint %.17g is not a float", f->name, bits,
                  mid);
        const unsigned even = (bits & 1u) ? next : bits;
        expect_encoding(f, m, even, "the midpoint");
        const float toward_zero = nextafterf(m, 0.0f), away = nextafterf(m, copysignf(INFINITY, m));
        expect_encoding(f, toward_zero, bits, "just below the midpoint");
        expect_encoding(f, away, next, "just above the midpoint");
    }
    /* random floats of every binade (half of them near the format's own range), both signs */
    uint64_t rng = 0x2545f4914f6cdd1dULL;
    int wrong = 0;
    for (int i = 0; i < 200000; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        uint32_t u = (uint32_t)(rng >> 32);
        if (i % 2) u = (u & 0x807fffffu) | ((uint32_t)(96 + rng % 64) << 23);
        float x;
        memcpy(&x, &u, sizeof x);
        const double want = ieee_round(f, x);
        const double got = f->decode(f->encode(x));
        const bool ok = isnan(want) ? isnan(got) : got == want && !signbit(got) == !signbit(want);
        if (!ok && wrong++ < 5)
            CHECK_MSG(0, "%s: random %.9g -> %.9g, want %.9g", f->name, x, got, want);
    }
    CHECK_MSG(wrong == 0, "%s: %d random values rounded wrong", f->name, wrong);
}

static void check_edges(void) {
    /* bf16: ties to even at 1, the largest finite value, the overflow to infinity */
    CHECK(mt_round_bf16(1.00390625f) == 1.0f);      /* 1 + 2^-8: a tie, 1 is even */
    CHECK(mt_round_bf16(1.01171875f) == 1.015625f); /* 1 + 3*2^-8: a tie, up to even */
    CHECK(mt_round_bf16(3.3895314e38f) == 3.3895314e38f);
    CHECK(isinf(mt_round_bf16(3.40282347e38f))); /* FLT_MAX: past max + half a spacing */
    CHECK(mt_round_bf16(-0.0f) == 0.0f && signbit(mt_round_bf16(-0.0f)));
    CHECK(mt_round_bf16(1e-45f) == 1e-45f || mt_round_bf16(1e-45f) == 0.0f);
    CHECK(isinf(mt_round_bf16(-INFINITY)) && mt_round_bf16(-INFINITY) < 0);
    CHECK(isnan(mt_round_bf16(NAN)));
    /* fp16: 65504 is the largest; 65519.99 rounds to it, 65520 to infinity; subnormals */
    CHECK(mt_round_fp16(65504.0f) == 65504.0f);
    CHECK(mt_round_fp16(65519.99f) == 65504.0f);
    CHECK(isinf(mt_round_fp16(65520.0f)) && isinf(mt_round_fp16(-1e9f)));
    CHECK(mt_round_fp16(2.98023224e-8f) == 0.0f);           /* 2^-25: tie, to 0 */
    CHECK(mt_round_fp16(8.94069672e-8f) == 1.19209290e-7f); /* 3*2^-25: tie, up to 2^-23 */
    CHECK(mt_round_fp16(5.96046448e-8f) == 5.96046448e-8f); /* 2^-24, the smallest */
    CHECK(mt_round_fp16(6.09755516e-5f) == 6.09755516e-5f); /* the largest subnormal */
    CHECK(mt_round_fp16(6.10351562e-5f) == 6.10351562e-5f); /* 2^-14, the smallest normal */
    CHECK(mt_round_fp16(1.00048828125f) == 1.0f);           /* 1 + 2^-11: tie, to 1 */
    CHECK(mt_round_fp16(1.00146484375f) == 1.001953125f);   /* 1 + 3*2^-11: tie, up */
    CHECK(mt_round_fp16(1e-30f) == 0.0f && isnan(mt_round_fp16(NAN)));
    CHECK(signbit(mt_round_fp16(-1e-30f)));
}

/* ---- 2. the reference backend's emulation --------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static float uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)mt_test_xorshift_unit(&rng_state);
}

static float *random_array(size_t n, float lo, float hi) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    if (!a) abort();
    for (size_t i = 0; i < n; i++)
        a[i] = uniform(lo, hi);
    return a;
}

static float *rounded_copy(mt_compute_precision p, const float *x, size_t n) {
    float *r = malloc((n ? n : 1) * sizeof *r);
    if (!r) abort();
    memcpy(r, x, n * sizeof *r);
    mt_round_to_storage(p, r, n);
    return r;
}

/* got must equal round(want) element for element */
static void expect_rounded(mt_compute_precision p, const char *what, const float *got,
                           const float *want, size_t n) {
    size_t wrong = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        float r = want[i];
        mt_round_to_storage(p, &r, 1);
        if (memcmp(&r, &got[i], sizeof r) != 0 && wrong++ == 0) first = i;
    }
    CHECK_MSG(wrong == 0,
              "%s %s: %zu of %zu elements are not the fp32 result rounded (first %zu: "
              "got %.9g, fp32 %.9g)",
              mt_compute_precision_name(p), what, wrong, n, first, n ? got[first] : 0.0f,
              n ? want[first] : 0.0f);
}

static void expect_equal(mt_compute_precision p, const char *what, const float *got,
                         const float *want, size_t n) {
    CHECK_MSG(memcmp(got, want, n * sizeof *got) == 0,
              "%s %s: differs from fp32 on the same "
              "inputs (an fp32 output must not be rounded)",
              mt_compute_precision_name(p), what);
}

static void check_emulation(mt_compute_precision p) {
    mt_backend *lo = NULL, *hi = NULL;
    MUST(mt_backend_create("reference", &(mt_backend_options){.num_threads = 1, .precision = p},
                           &lo));
    MUST(mt_backend_create("reference", &(mt_backend_options){.num_threads = 1}, &hi));
    const mt_ops *o = lo->ops;
    const mt_shape4 in = {2, 5, 6, 3};
    const size_t n_in = mt_shape4_count(in);
    float *x = random_array(n_in, -3.0f, 3.0f);
    float *xr = rounded_copy(p, x, n_in);

    /* tensor_from_nhwc stores rounded values; fp32 keeps them */
    mt_tensor tl, th;
    MUST(o->tensor_alloc(lo, in, &tl));
    MUST(o->tensor_alloc(hi, in, &th));
    MUST(o->tensor_from_nhwc(lo, x, &tl));
    MUST(o->tensor_from_nhwc(hi, xr, &th));
    expect_rounded(p, "tensor_from_nhwc", tl.data, x, n_in);

    /* input_convert (the staged uint8 batch, flips included) is the first activation: rounded
     * like every other op's output; fp32 gives the unrounded scaled pixels */
    {
        uint8_t pixels[2 * 5 * 6 * 3], flips[2] = {0, 1};
        int32_t labels[2] = {0, 1}, got_labels[2];
        for (size_t i = 0; i < sizeof pixels; i++)
            pixels[i] = (uint8_t)(i * 37 + 11);
        const mt_input_batch batch = {.n = 2, .height = 5, .width = 6, .pixels = pixels,
                                      .labels = labels, .flips = flips};
        mt_tensor il, ih;
        MUST(o->tensor_alloc(lo, in, &il));
        MUST(o->tensor_alloc(hi, in, &ih));
        MUST(o->input_upload(lo, 0, &batch));
        MUST(o->input_convert(lo, 0, &il, got_labels));
        MUST(hi->ops->input_upload(hi, 0, &batch));
        MUST(hi->ops->input_convert(hi, 0, &ih, got_labels));
        expect_rounded(p, "input_convert", il.data, ih.data, n_in);
        o->tensor_free(lo, &il);
        hi->ops->tensor_free(hi, &ih);
    }

    /* a 3x3 stride-2 conv: forward on the rounded weights, rounded output */
    mt_conv_desc conv = {.input = in, .out_channels = 4, .kernel = 3, .stride = 2};
    mt_same_padding(in.h, 3, 2, &conv.pad_top, &conv.pad_bottom);
    mt_same_padding(in.w, 3, 2, &conv.pad_left, &conv.pad_right);
    const mt_shape4 out = mt_conv_output_shape(&conv);
    const size_t n_out = mt_shape4_count(out), n_w = 3 * 3 * 3 * 4;
    float *w = random_array(n_w, -1.0f, 1.0f), *wr = rounded_copy(p, w, n_w);
    mt_tensor yl, yh;
    MUST(o->tensor_alloc(lo, out, &yl));
    MUST(o->tensor_alloc(hi, out, &yh));
    MUST(o->conv_forward(lo, &conv, &tl, w, &yl));
    MUST(o->conv_forward(hi, &conv, &th, wr, &yh));
    expect_rounded(p, "conv_forward", yl.data, yh.data, n_out);
    /* backward data on a rounded dy, and the weight gradient (fp32) */
    float *dy = random_array(n_out, -1.0f, 1.0f);
    mt_tensor dyl, dyh, dxl, dxh;
    MUST(o->tensor_alloc(lo, out, &dyl));
    MUST(o->tensor_alloc(hi, out, &dyh));
    MUST(o->tensor_from_nhwc(lo, dy, &dyl));
    MUST(o->tensor_from_nhwc(hi, dyl.data, &dyh)); /* the same stored values */
    MUST(o->tensor_alloc(lo, in, &dxl));
    MUST(o->tensor_alloc(hi, in, &dxh));
    MUST(o->conv_backward_data(lo, &conv, &dyl, w, &dxl));
    MUST(o->conv_backward_data(hi, &conv, &dyh, wr, &dxh));
    expect_rounded(p, "conv_backward_data", dxl.data, dxh.data, n_in);
    float *dwl = calloc(n_w, sizeof *dwl), *dwh = calloc(n_w, sizeof *dwh);
    MUST(o->conv_backward_weights(lo, &conv, &tl, &dyl, dwl));
    MUST(o->conv_backward_weights(hi, &conv, &th, &dyh, dwh));
    expect_equal(p, "conv_backward_weights", dwl, dwh, n_w);

    /* training-mode BN: fp32 statistics from the stored values, rounded y and dx */
    const int c = out.c;
    mt_batchnorm_desc bn = {.shape = out, .epsilon = 1e-3f, .momentum = 0.99f};
    float *gamma = random_array((size_t)c, 0.5f, 1.5f), *beta = random_array((size_t)c, -1, 1);
    float mm[2][4] = {{0}}, mv[2][4] = {{1, 1, 1, 1}, {1, 1, 1, 1}}, sm[2][4], si[2][4];
    float dg[2][4], db[2][4];
    mt_tensor bl, bh;
    MUST(o->tensor_alloc(lo, out, &bl));
    MUST(o->tensor_alloc(hi, out, &bh));
    MUST(o->batchnorm_forward_training(lo, &bn, &yl, gamma, beta, mm[0], mv[0], &bl, sm[0], si[0]));
    MUST(o->tensor_from_nhwc(hi, yl.data, &yh)); /* the same stored input */
    MUST(o->batchnorm_forward_training(hi, &bn, &yh, gamma, beta, mm[1], mv[1], &bh, sm[1], si[1]));
    expect_rounded(p, "batchnorm_forward_training", bl.data, bh.data, n_out);
    expect_equal(p, "BN saved statistics", sm[0], sm[1], 4);
    expect_equal(p, "BN moving variance", mv[0], mv[1], 4);
    mt_tensor gl, gh;
    MUST(o->tensor_alloc(lo, out, &gl));
    MUST(o->tensor_alloc(hi, out, &gh));
    MUST(
        o->batchnorm_backward_training(lo, &bn, &yl, &dyl, gamma, sm[0], si[0], &gl, dg[0], db[0]));
    MUST(
        o->batchnorm_backward_training(hi, &bn, &yh, &dyh, gamma, sm[1], si[1], &gh, dg[1], db[1]));
    expect_rounded(p, "batchnorm_backward_training", gl.data, gh.data, n_out);
    expect_equal(p, "BN dgamma", dg[0], dg[1], 4);

    /* add (a sum of two stored values needs rounding again), pooling's backward */
    MUST(o->add(lo, &bl, &yl, &gl));
    MUST(o->tensor_from_nhwc(hi, bl.data, &bh));
    MUST(o->add(hi, &bh, &yh, &gh));
    expect_rounded(p, "add", gl.data, gh.data, n_out);
    float pooled[2][2 * 4], dpool[2 * 4];
    MUST(o->global_avg_pool_forward(lo, &gl, pooled[0]));
    MUST(o->tensor_from_nhwc(hi, gl.data, &gh));
    MUST(o->global_avg_pool_forward(hi, &gh, pooled[1]));
    expect_equal(p, "global_avg_pool_forward", pooled[0], pooled[1], 8);
    for (int i = 0; i < 8; i++)
        dpool[i] = uniform(-1, 1) / 3.0f;
    MUST(o->global_avg_pool_backward(lo, dpool, &gl));
    MUST(o->global_avg_pool_backward(hi, dpool, &gh));
    expect_rounded(p, "global_avg_pool_backward", gl.data, gh.data, n_out);

    /* buffer_scale: x times the factor, and the flag set by a product that overflows */
    float v[3] = {1.5f, -2.0f, 3e38f}, flag = 0.0f;
    const float quarter = 0.25f, two = 2.0f, one = 1.0f; /* the factor is backend (host) memory */
    MUST(o->buffer_scale(lo, v, 2, &quarter, &flag));
    CHECK(v[0] == 0.375f && v[1] == -0.5f && flag == 0.0f);
    MUST(o->buffer_scale(lo, v, 3, &two, &flag));
    CHECK(v[0] == 0.75f && isinf(v[2]) && flag == 1.0f);
    flag = 0.0f;
    v[2] = NAN;
    MUST(o->buffer_scale(lo, v, 3, &one, NULL)); /* no flag: just the product */
    MUST(o->buffer_scale(lo, v, 3, &one, &flag));
    CHECK(flag == 1.0f);

    mt_tensor *tensors[] = {&tl, &th, &yl, &yh, &dyl, &dyh, &dxl, &dxh, &bl, &bh, &gl, &gh};
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++)
        o->tensor_free(i % 2 ? hi : lo, tensors[i]);
    free(x), free(xr), free(w), free(wr), free(dy), free(dwl), free(dwh), free(gamma), free(beta);
    mt_backend_destroy(lo);
    mt_backend_destroy(hi);
}

int main(void) {
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++)
        check_format(&formats[f]);
    check_edges();
    check_emulation(MT_COMPUTE_BF16);
    check_emulation(MT_COMPUTE_FP16);
    /* tf32 on the reference is fp32 (a documented no-op): nothing is rounded */
    mt_backend *b = NULL;
    CHECK_OK(
        mt_backend_create("reference", &(mt_backend_options){.precision = MT_COMPUTE_TF32}, &b));
    mt_tensor t;
    const float odd[2] = {1.0f + 0x1p-20f, 3.14159265f};
    CHECK_OK(b->ops->tensor_alloc(b, (mt_shape4){1, 1, 1, 2}, &t));
    CHECK_OK(b->ops->tensor_from_nhwc(b, odd, &t));
    CHECK(memcmp(t.data, odd, sizeof odd) == 0);
    b->ops->tensor_free(b, &t);
    mt_backend_destroy(b);
    /* a precision outside the four is refused at creation, naming the option */
    CHECK(mt_backend_create("reference", &(mt_backend_options){.precision = 7}, &b) != MT_OK);
    CHECK(strstr(mt_last_error(), "train.precision") != NULL);
    return mt_test_finish();
}
