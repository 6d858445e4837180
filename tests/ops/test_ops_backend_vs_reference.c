/* One file over 600 lines on purpose: one check per op of the ops table, all on the harness
 * below (random tensors, the NHWC crossing, the error-model comparison), which a split by op
 * would repeat or have to export. */
/* Every op of one backend, forward and backward, against the reference backend on small random
 * shapes: stride 2 with TF's asymmetric padding, odd and even sizes, channel counts that are not
 * multiples of 8 or 16 (3, 17, 24, 40), batch 1 and 4, and the in-place calls the model makes.
 *
 *     test_ops_backend_vs_reference BACKEND [FILTER]
 *
 * runs the cases whose name contains FILTER (e.g. "depthwise", "batchnorm", "3x3/2"). Tensors
 * cross into each backend with tensor_from_nhwc and come back with tensor_to_nhwc, so backends
 * with their own layouts are compared on the same NHWC values; buffers go through upload and
 * download. "cuda" skips (exit 77) when it is not compiled in or no device answers.
 *
 * Tolerances, as max|got - want| <= tol * max(|want|) per output array (1 when want is all zero):
 *   convolution and depthwise (all three passes)         1e-4   (summation order, Winograd-free)
 *   batch norm (y, saved statistics, moving statistics,
 *               dx, dgamma, dbeta)                        1e-4
 *   dense, global average pool, losses                    1e-5
 *   memory, copy, zero, add, relu6, zero pad, dropout     1e-6   (should be exact)
 *   input pipeline (scale + flip, labels)                 0      (exact, against values written
 *                                                                 out here as well)
 *   dropout mask                                          bitwise equal
 *   optimizer update (parameters and slots, 3 steps)      1e-6   (the same per-element code
 *       everywhere, ops/optimizer_update.h; the cpu backend is exact, a GPU may contract a
 *       multiply-add into an FMA: a few ulp per step, ~1e-7 relative)
 *
 * Conv weights rewritten: after each op that writes a kernel's memory (upload, buffer_copy,
 * buffer_copy_if, buffer_scale, optimizer_update) the next convolution must read the new kernel,
 * whatever copies of it a backend keeps (cuda: per-update KRSC and 16-bit copies), conv tolerance.
 *
 * MT_TEST_PRECISION=bf16|fp16|tf32 creates both backends in that precision (ops.h "Precision":
 * the reference emulates 16-bit storage by rounding each op's tensor outputs). Both sides then
 * store the same rounded inputs and weights, and what each computes before its final rounding
 * differs by the fp32 tolerance above; that final rounding to 16 bits can then land on the two
 * sides of a rounding boundary, a difference of one spacing, at most 2u |y| <= 2u max|y| (u =
 * 2^-8 bf16, 2^-11 fp16). So every tolerance grows by 2u. tf32 (fp32 storage, TF32 products in
 * cuDNN/cuBLAS: 10-bit mantissas, u = 2^-11) adds the products' rounding instead: a sum of K
 * products with independent errors of at most u |x w| each stays within u x sum|x w|, which is
 * below u x K x max|x| max|w|; the harness' convolutions have K <= 3x3x40 = 360 and inputs in
 * [-1, 1], so 2^-11 x sqrt(360) ~ 9e-3 with the errors' random signs, 1e-2 to hold. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/optimizer_update.h"
#include "test_util.h"

/* MT_TEST_PRECISION: the tolerance every comparison gains (see above; 0 in fp32) */
static double tol_precision = 0.0;

static const double TOL_CONV = 1e-4, TOL_BN = 1e-4, TOL_DENSE = 1e-5, TOL_POOL = 1e-5,
                    TOL_LOSS = 1e-5, TOL_EXACT = 1e-6, TOL_OPTIMIZER = 1e-6;

/* One backend under test, or the reference. */
typedef struct side {
    mt_backend *b;
    const mt_ops *o;
} side;

static side REF, DUT;
static const char *current_case = "";

/* Call an op of a side; on a missing entry or a failure, report and fail the case. */
#define RUN(s, op, ...)                                                                            \
    do {                                                                                           \
        if (!(s).o->op) {                                                                          \
            fprintf(stderr, "FAIL %s: backend '%s' has no %s\n", current_case, (s).o->name, #op);  \
            return false;                                                                          \
        }                                                                                          \
        mt_status run_status_ = (s).o->op((s).b, __VA_ARGS__);                                     \
        if (run_status_ != MT_OK) {                                                                \
            fprintf(stderr, "FAIL %s: %s on '%s': %s: %s\n", current_case, #op, (s).o->name,       \
                    mt_status_name(run_status_), mt_last_error());                                 \
            return false;                                                                          \
        }                                                                                          \
    } while (0)

/* The same for ops without arguments beyond the backend. */
#define RUN0(s, op)                                                                                \
    do {                                                                                           \
        mt_status run_status_ = (s).o->op((s).b);                                                  \
        if (run_status_ != MT_OK) {                                                                \
            fprintf(stderr, "FAIL %s: %s on '%s': %s: %s\n", current_case, #op, (s).o->name,       \
                    mt_status_name(run_status_), mt_last_error());                                 \
            return false;                                                                          \
        }                                                                                          \
    } while (0)

/* ---- host data -------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static double uniform(double lo, double hi) {
    return lo + (hi - lo) * mt_test_xorshift_unit(&rng_state);
}

static void *xmalloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static float *random_array(size_t count, double lo, double hi) {
    float *a = xmalloc(count * sizeof *a);
    for (size_t i = 0; i < count; i++)
        a[i] = (float)uniform(lo, hi);
    return a;
}

/* ---- moving data in and out of a backend ------------------------------------------------ */

static bool tensor_in(side s, mt_shape4 shape, const float *host, mt_tensor *out) {
    RUN(s, tensor_alloc, shape, out);
    if (host) RUN(s, tensor_from_nhwc, host, out);
    return true;
}

static bool tensor_out(side s, const mt_tensor *t, float *host) {
    RUN0(s, synchronize);
    RUN(s, tensor_to_nhwc, t, host);
    return true;
}

static bool buffer_in(side s, const void *host, size_t bytes, void **out) {
    RUN(s, buffer_alloc, bytes, out);
    if (host) RUN(s, upload, *out, host, bytes);
    return true;
}

/* A per-step value (ops.h): backend memory written by scalars_write, as the trainer does */
static bool scalar_in(side s, const void *value, size_t bytes, void **out) {
    RUN(s, buffer_alloc, bytes, out);
    RUN(s, scalars_write, *out, value, bytes);
    return true;
}

static bool buffer_out(side s, const void *dev, void *host, size_t bytes) {
    RUN0(s, synchronize);
    RUN(s, download, host, dev, bytes);
    return true;
}

/* ---- comparison ------------------------------------------------------------------------- */

static int checks_run = 0;

/* max|got - want| <= tol * scale, scale = max|want| (1 when want is all zero). */
static bool arrays_agree(const float *got, const float *want, size_t count, double tol,
                         double *ratio, size_t *worst) {
    double scale = 0.0, max_diff = 0.0;
    *worst = 0;
    bool nan = false;
    for (size_t i = 0; i < count; i++)
        scale = fmax(scale, fabs(want[i]));
    if (scale == 0.0) scale = 1.0;
    for (size_t i = 0; i < count; i++) {
        if (isnan(got[i]) || isnan(want[i]) || isinf(got[i])) {
            nan = true;
            *worst = i;
            break;
        }
        double d = fabs((double)got[i] - want[i]);
        if (d > max_diff) max_diff = d, *worst = i;
    }
    *ratio = nan ? INFINITY : max_diff / scale;
    return !nan && max_diff <= tol * scale;
}

static void compare(const char *what, const float *got, const float *want, size_t count,
                    double tol) {
    tol += tol_precision;
    double ratio;
    size_t worst;
    checks_run++;
    if (arrays_agree(got, want, count, tol, &ratio, &worst)) {
        printf("ok   %-52s %-22s max|diff|/scale %.1e (tol %.0e)\n", current_case, what, ratio,
               tol);
    } else {
        fprintf(stderr,
                "FAIL %s %s: max|diff|/scale %.2e > tol %.0e; worst [%zu]: got %.9g, "
                "reference %.9g (of %zu values)\n",
                current_case, what, ratio, tol, worst, got[worst], want[worst], count);
        mt_test_failures++;
    }
}

static void compare_bytes(const char *what, const uint8_t *got, const uint8_t *want, size_t count) {
    size_t bad = 0, first = 0;
    checks_run++;
    for (size_t i = 0; i < count; i++)
        if (got[i] != want[i] && bad++ == 0) first = i;
    if (bad == 0) {
        printf("ok   %-52s %-22s bitwise equal\n", current_case, what);
    } else {
        fprintf(stderr, "FAIL %s %s: %zu of %zu differ; first [%zu]: got %d, reference %d\n",
                current_case, what, bad, count, first, got[first], want[first]);
        mt_test_failures++;
    }
}

/* The comparison must be able to fail: a 1e-3 relative error and a NaN are caught at 1e-4. */
static void check_harness(void) {
    float want[4] = {1, -2, 3, 0.5f}, got[4];
    double ratio;
    size_t worst;
    memcpy(got, want, sizeof got);
    CHECK(arrays_agree(got, want, 4, TOL_CONV, &ratio, &worst));
    got[1] += 3e-3f;
    CHECK(!arrays_agree(got, want, 4, TOL_CONV, &ratio, &worst) && worst == 1);
    got[1] = NAN;
    CHECK(!arrays_agree(got, want, 4, TOL_CONV, &ratio, &worst));
}

/* ---- memory and elementwise ------------------------------------------------------------- */

enum {
    MEM_ROUNDTRIP,
    MEM_BUFFER_ROUNDTRIP,
    MEM_ZEROED_TENSOR,
    MEM_ZEROED_BUFFER,
    MEM_COPY,
    MEM_CLEARED,
    MEM_OUTPUTS
};

static bool memory_on(side s, mt_shape4 shape, const float *x, float *out[MEM_OUTPUTS]) {
    size_t count = mt_shape4_count(shape), bytes = count * sizeof(float);
    mt_tensor t, fresh, copy;
    void *buffer, *fresh_buffer;
    if (!tensor_in(s, shape, x, &t) || !tensor_out(s, &t, out[MEM_ROUNDTRIP])) return false;
    if (!tensor_in(s, shape, NULL, &fresh) || !tensor_out(s, &fresh, out[MEM_ZEROED_TENSOR]))
        return false;
    if (!buffer_in(s, x, bytes, &buffer) ||
        !buffer_out(s, buffer, out[MEM_BUFFER_ROUNDTRIP], bytes))
        return false;
    if (!buffer_in(s, NULL, bytes, &fresh_buffer) ||
        !buffer_out(s, fresh_buffer, out[MEM_ZEROED_BUFFER], bytes))
        return false;
    if (!tensor_in(s, shape, NULL, &copy)) return false;
    RUN(s, tensor_copy, &t, &copy);
    if (!tensor_out(s, &copy, out[MEM_COPY])) return false;
    RUN(s, tensor_zero, &copy);
    if (!tensor_out(s, &copy, out[MEM_CLEARED])) return false;
    s.o->tensor_free(s.b, &t), s.o->tensor_free(s.b, &fresh), s.o->tensor_free(s.b, &copy);
    s.o->buffer_free(s.b, buffer), s.o->buffer_free(s.b, fresh_buffer);
    return true;
}

static void case_memory(mt_shape4 shape) {
    size_t count = mt_shape4_count(shape);
    float *x = random_array(count, -1, 1);
    float *r[2][MEM_OUTPUTS];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < MEM_OUTPUTS; i++)
            r[k][i] = xmalloc(count * 4);
    if (memory_on(REF, shape, x, r[0]) && memory_on(DUT, shape, x, r[1])) {
        /* against the input itself, not only the reference; all exact */
        compare("from/to_nhwc", r[1][MEM_ROUNDTRIP], x, count, 0);
        compare("upload/download", r[1][MEM_BUFFER_ROUNDTRIP], x, count, 0);
        compare("tensor_alloc zeroed", r[1][MEM_ZEROED_TENSOR], r[0][MEM_ZEROED_TENSOR], count, 0);
        compare("buffer_alloc zeroed", r[1][MEM_ZEROED_BUFFER], r[0][MEM_ZEROED_BUFFER], count, 0);
        compare("tensor_copy", r[1][MEM_COPY], x, count, 0);
        compare("tensor_zero", r[1][MEM_CLEARED], r[0][MEM_CLEARED], count, 0);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < MEM_OUTPUTS; i++)
            free(r[k][i]);
    free(x);
}

/* ---- the input pipeline: upload, convert (scale + flip), wait ----------------------------- */

/* The pixel value of image i at (y, x, c) in batch `b`: every uint8 value occurs. */
static uint8_t input_pixel(int b, int i, int y, int x, int c, int h, int w) {
    return (uint8_t)((((size_t)(b * 7 + i) * h + y) * w + x) * 3 * 37 + c * 91 + b * 13);
}

/* Two batches through both staging slots, uploaded before either is converted (the trainer's
 * overlap), from the backend's host buffers (pinned on cuda), then the first again without flip
 * flags; out: the three images (count each), labels_out: the first two's labels as floats. Also
 * the protocol's refusals: a full slot, an empty one, a bad slot. */
static bool input_on(side s, mt_shape4 shape, float *out[3], float *labels_out[2]) {
    const size_t count = mt_shape4_count(shape), n = (size_t)shape.n;
    uint8_t *pixels[2], *flips[2];
    int32_t *labels[2];
    mt_tensor images;
    void *device_labels;
    RUN(s, tensor_alloc, shape, &images);
    RUN(s, buffer_alloc, n * sizeof(int32_t), &device_labels);
    for (int b = 0; b < 2; b++) {
        RUN(s, host_alloc, count, (void **)&pixels[b]);
        RUN(s, host_alloc, n * sizeof(int32_t), (void **)&labels[b]);
        RUN(s, host_alloc, n, (void **)&flips[b]);
        for (int i = 0; i < shape.n; i++) {
            for (int y = 0; y < shape.h; y++)
                for (int x = 0; x < shape.w; x++)
                    for (int c = 0; c < 3; c++)
                        pixels[b][(((size_t)i * shape.h + y) * shape.w + x) * 3 + c] =
                            input_pixel(b, i, y, x, c, shape.h, shape.w);
            labels[b][i] = i == shape.n - 1 ? -1 : (i + b) % 5;
            flips[b][i] = (uint8_t)((i + b) % 2 ? 1 + b : 0); /* any nonzero value flips */
        }
        const mt_input_batch batch = {.n = shape.n,
                                      .height = shape.h,
                                      .width = shape.w,
                                      .pixels = pixels[b],
                                      .labels = labels[b],
                                      .flips = flips[b]};
        RUN(s, input_upload, b, &batch);
        if (b == 0 && s.o->input_upload(s.b, 0, &batch) != MT_ERR_INVALID) {
            fprintf(stderr, "FAIL %s: '%s' uploaded into a slot still holding a batch\n",
                    current_case, s.o->name);
            return false;
        }
    }
    for (int b = 0; b < 2; b++) {
        RUN(s, input_convert, b, &images, device_labels);
        if (!tensor_out(s, &images, out[b])) return false;
        int32_t got[64];
        if (!buffer_out(s, device_labels, got, n * sizeof(int32_t))) return false;
        for (size_t i = 0; i < n; i++)
            labels_out[b][i] = (float)got[i];
        if (s.o->input_convert(s.b, b, &images, NULL) != MT_ERR_INVALID) {
            fprintf(stderr, "FAIL %s: '%s' converted an empty slot\n", current_case, s.o->name);
            return false;
        }
        RUN(s, input_wait, b);
    }
    if (s.o->input_wait(s.b, 2) != MT_ERR_INVALID) {
        fprintf(stderr, "FAIL %s: '%s' accepted slot 2\n", current_case, s.o->name);
        return false;
    }
    /* no flip flags: none flipped; labels may be left out */
    const mt_input_batch plain = {.n = shape.n,
                                  .height = shape.h,
                                  .width = shape.w,
                                  .pixels = pixels[0],
                                  .labels = labels[0]};
    RUN(s, input_upload, 0, &plain);
    RUN(s, input_convert, 0, &images, NULL);
    if (!tensor_out(s, &images, out[2])) return false;
    for (int b = 0; b < 2; b++) {
        s.o->host_free(s.b, pixels[b]);
        s.o->host_free(s.b, labels[b]);
        s.o->host_free(s.b, flips[b]);
    }
    s.o->tensor_free(s.b, &images);
    s.o->buffer_free(s.b, device_labels);
    return true;
}

static void case_input(mt_shape4 shape) {
    const size_t count = mt_shape4_count(shape), n = (size_t)shape.n;
    float *r[2][3], *l[2][2], *want = xmalloc(count * 4), *want_labels = xmalloc(n * 4);
    for (int k = 0; k < 2; k++) {
        for (int b = 0; b < 3; b++)
            r[k][b] = xmalloc(count * 4);
        for (int b = 0; b < 2; b++)
            l[k][b] = xmalloc(n * 4);
    }
    if (input_on(REF, shape, r[0], l[0]) && input_on(DUT, shape, r[1], l[1])) {
        /* Keras' preprocess_input (x /= 127.5; x -= 1) of the mirrored pixel, written out here:
         * exact, on both sides (the reference is checked too) */
        for (int b = 0; b < 3; b++) {
            const int batch = b == 2 ? 0 : b;
            for (int i = 0; i < shape.n; i++) {
                const bool flip = b < 2 && (i + b) % 2;
                want_labels[i] = (float)(i == shape.n - 1 ? -1 : (i + batch) % 5);
                for (int y = 0; y < shape.h; y++)
                    for (int x = 0; x < shape.w; x++)
                        for (int c = 0; c < 3; c++) {
                            float v = (float)input_pixel(batch, i, y, flip ? shape.w - 1 - x : x, c,
                                                         shape.h, shape.w);
                            v /= 127.5f;
                            want[(((size_t)i * shape.h + y) * shape.w + x) * 3 + c] = v - 1.0f;
                        }
            }
            const char *names[3] = {"input slot 0", "input slot 1", "input without flips"};
            compare(names[b], r[1][b], want, count, 0);
            compare("(reference)", r[0][b], want, count, 0);
            if (b < 2) {
                compare("input labels", l[1][b], want_labels, n, 0);
                compare("input labels (reference)", l[0][b], want_labels, n, 0);
            }
        }
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++) {
        for (int b = 0; b < 3; b++)
            free(r[k][b]);
        for (int b = 0; b < 2; b++)
            free(l[k][b]);
    }
    free(want), free(want_labels);
}

enum { EL_SUM, EL_SUM_INPLACE, EL_RELU, EL_RELU_INPLACE, EL_DRELU, EL_DRELU_INPLACE, EL_OUTPUTS };
static const char *const el_names[EL_OUTPUTS] = {"add",
                                                 "add (y = a)",
                                                 "relu6_forward",
                                                 "relu6_forward (y = x)",
                                                 "relu6_backward",
                                                 "relu6_backward(dx=dy)"};

static bool elementwise_on(side s, mt_shape4 shape, const float *a, const float *b, const float *dy,
                           float *out[EL_OUTPUTS]) {
    mt_tensor ta, tb, ty, tdy, tdx;
    if (!tensor_in(s, shape, a, &ta) || !tensor_in(s, shape, b, &tb) ||
        !tensor_in(s, shape, NULL, &ty) || !tensor_in(s, shape, dy, &tdy) ||
        !tensor_in(s, shape, NULL, &tdx))
        return false;
    RUN(s, add, &ta, &tb, &ty);
    if (!tensor_out(s, &ty, out[EL_SUM])) return false;
    RUN(s, relu6_forward, &ta, &ty);
    if (!tensor_out(s, &ty, out[EL_RELU])) return false;
    RUN(s, relu6_backward, &ty, &tdy, &tdx);
    if (!tensor_out(s, &tdx, out[EL_DRELU])) return false;
    /* the in-place forms the model uses: gradients summed into a, relu6 on its input, relu6's
     * gradient over dy */
    RUN(s, relu6_backward, &ty, &tdy, &tdy);
    if (!tensor_out(s, &tdy, out[EL_DRELU_INPLACE])) return false;
    RUN(s, add, &ta, &tb, &ta);
    if (!tensor_out(s, &ta, out[EL_SUM_INPLACE])) return false;
    RUN(s, relu6_forward, &tb, &tb);
    if (!tensor_out(s, &tb, out[EL_RELU_INPLACE])) return false;
    s.o->tensor_free(s.b, &ta), s.o->tensor_free(s.b, &tb), s.o->tensor_free(s.b, &ty);
    s.o->tensor_free(s.b, &tdy), s.o->tensor_free(s.b, &tdx);
    return true;
}

static void case_elementwise(mt_shape4 shape) {
    size_t count = mt_shape4_count(shape);
    /* inputs across both kinks of relu6, including exact 0 and 6 */
    float *a = random_array(count, -3, 9), *b = random_array(count, -3, 9);
    float *dy = random_array(count, -1, 1);
    a[0] = 0.0f, a[count - 1] = 6.0f;
    float *r[2][EL_OUTPUTS];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < EL_OUTPUTS; i++)
            r[k][i] = xmalloc(count * 4);
    if (elementwise_on(REF, shape, a, b, dy, r[0]) && elementwise_on(DUT, shape, a, b, dy, r[1])) {
        for (int i = 0; i < EL_OUTPUTS; i++)
            compare(el_names[i], r[1][i], r[0][i], count, TOL_EXACT);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < EL_OUTPUTS; i++)
            free(r[k][i]);
    free(a), free(b), free(dy);
}

/* ---- convolution ------------------------------------------------------------------------ */

static bool conv_on(side s, const mt_conv_desc *d, const float *x, const float *w, const float *dy,
                    float *y_out, float *dx_out, float *dw_out) {
    mt_shape4 os = mt_conv_output_shape(d);
    size_t wbytes = (size_t)d->kernel * d->kernel * d->input.c *
                    (d->depthwise ? 1 : d->out_channels) * sizeof(float);
    mt_tensor tx, ty, tdy, tdx;
    void *bw, *bdw;
    if (!tensor_in(s, d->input, x, &tx) || !tensor_in(s, os, NULL, &ty) ||
        !tensor_in(s, os, dy, &tdy) || !tensor_in(s, d->input, NULL, &tdx) ||
        !buffer_in(s, w, wbytes, &bw) || !buffer_in(s, NULL, wbytes, &bdw))
        return false;
    RUN(s, conv_forward, d, &tx, bw, &ty);
    RUN(s, conv_backward_data, d, &tdy, bw, &tdx);
    RUN(s, conv_backward_weights, d, &tx, &tdy, bdw);
    if (!tensor_out(s, &ty, y_out) || !tensor_out(s, &tdx, dx_out) ||
        !buffer_out(s, bdw, dw_out, wbytes))
        return false;
    s.o->tensor_free(s.b, &tx), s.o->tensor_free(s.b, &ty), s.o->tensor_free(s.b, &tdy);
    s.o->tensor_free(s.b, &tdx), s.o->buffer_free(s.b, bw), s.o->buffer_free(s.b, bdw);
    return true;
}

/* SAME padding unless `valid` (Keras' stride-2 blocks pad explicitly, then convolve VALID). */
static void case_conv(int n, int size, int cin, int cout, int kernel, int stride, bool depthwise,
                      bool valid) {
    int pt = 0, pb = 0, pl = 0, pr = 0;
    if (!valid) {
        mt_same_padding(size, kernel, stride, &pt, &pb);
        mt_same_padding(size, kernel, stride, &pl, &pr);
    }
    mt_conv_desc d = {.input = {n, size, size, cin},
                      .out_channels = depthwise ? cin : cout,
                      .kernel = kernel,
                      .stride = stride,
                      .pad_top = pt,
                      .pad_left = pl,
                      .pad_bottom = pb,
                      .pad_right = pr,
                      .depthwise = depthwise};
    mt_shape4 os = mt_conv_output_shape(&d);
    size_t nx = mt_shape4_count(d.input), ny = mt_shape4_count(os);
    size_t nw = (size_t)kernel * kernel * cin * (depthwise ? 1 : cout);
    float *x = random_array(nx, -1, 1), *w = random_array(nw, -0.5, 0.5);
    float *dy = random_array(ny, -1, 1);
    float *y[2] = {xmalloc(ny * 4), xmalloc(ny * 4)}, *dx[2] = {xmalloc(nx * 4), xmalloc(nx * 4)};
    float *dw[2] = {xmalloc(nw * 4), xmalloc(nw * 4)};
    if (conv_on(REF, &d, x, w, dy, y[0], dx[0], dw[0]) &&
        conv_on(DUT, &d, x, w, dy, y[1], dx[1], dw[1])) {
        compare("conv_forward", y[1], y[0], ny, TOL_CONV);
        compare("conv_backward_data", dx[1], dx[0], nx, TOL_CONV);
        compare("conv_backward_weights", dw[1], dw[0], nw, TOL_CONV);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        free(y[k]), free(dx[k]), free(dw[k]);
    free(x), free(w), free(dy);
}

/* ---- conv weights rewritten between calls ----------------------------------------------- */

/* A backend may keep per-update copies of conv kernels (cuda: cuDNN's layout, 16-bit copies):
 * every op that writes a kernel's memory must be seen. Forward after each write: the kernel
 * uploaded again, copied over from another buffer, copied over by buffer_copy_if (flag set),
 * scaled by buffer_scale, updated by one SGD step; a stale copy gives the previous kernel's
 * output, which the comparison catches. */
enum { REWRITES = 6 };
static const char *const rewrite_names[REWRITES] = {
    "forward w1", "after upload w2", "after buffer_copy", "after buffer_copy_if", "after scale",
    "after sgd update"};

static bool conv_rewritten_on(side s, const mt_conv_desc *d, const float *x, const float *w1,
                              const float *w2, float *y_out[REWRITES]) {
    const size_t nw = (size_t)d->kernel * d->kernel * d->input.c *
                      (d->depthwise ? 1 : d->out_channels),
                 wbytes = nw * sizeof(float);
    const float one = 1.0f, factor = -0.5f;
    const mt_update_scalars rate = {
        .lr = 0.25f, .step = mt_update_step_size(MT_UPDATE_SGD, 0.0f, 0.0f, 0.25f, 1)};
    mt_tensor tx, ty;
    void *bw, *bw1, *bflag, *bgrad, *bfactor, *brate;
    if (!tensor_in(s, d->input, x, &tx) || !tensor_in(s, mt_conv_output_shape(d), NULL, &ty) ||
        !buffer_in(s, w1, wbytes, &bw) || !buffer_in(s, w1, wbytes, &bw1) ||
        !buffer_in(s, &one, sizeof one, &bflag) || !buffer_in(s, w2, wbytes, &bgrad) ||
        !scalar_in(s, &factor, sizeof factor, &bfactor) ||
        !scalar_in(s, &rate, sizeof rate, &brate))
        return false;
    const mt_optimizer_desc sgd = {.rule = MT_UPDATE_SGD, .count = nw, .scalars = brate};
    for (int k = 0; k < REWRITES; k++) {
        if (k == 1) RUN(s, upload, bw, w2, wbytes);
        if (k == 2) RUN(s, buffer_copy, bw, bw1, wbytes);
        if (k == 3) {
            RUN(s, upload, bw, w2, wbytes);
            RUN(s, conv_forward, d, &tx, bw, &ty); /* w2 copied, then replaced on the device */
            RUN(s, buffer_copy_if, bw, bw1, wbytes, bflag, NULL);
        }
        if (k == 4) RUN(s, buffer_scale, bw, nw, bfactor, NULL);
        if (k == 5) RUN(s, optimizer_update, &sgd, bw, bgrad, NULL);
        RUN(s, conv_forward, d, &tx, bw, &ty);
        if (!tensor_out(s, &ty, y_out[k])) return false;
    }
    s.o->tensor_free(s.b, &tx), s.o->tensor_free(s.b, &ty);
    s.o->buffer_free(s.b, bw), s.o->buffer_free(s.b, bw1), s.o->buffer_free(s.b, bflag);
    s.o->buffer_free(s.b, bgrad), s.o->buffer_free(s.b, bfactor), s.o->buffer_free(s.b, brate);
    return true;
}

/* A symmetric conv (SAME, odd size, stride 1): cuDNN may run it, not only our kernels. */
static void case_conv_rewritten(int n, int size, int cin, int cout, int kernel, bool depthwise) {
    int pad = kernel / 2;
    mt_conv_desc d = {.input = {n, size, size, cin},
                      .out_channels = depthwise ? cin : cout,
                      .kernel = kernel,
                      .stride = 1,
                      .pad_top = pad,
                      .pad_left = pad,
                      .pad_bottom = pad,
                      .pad_right = pad,
                      .depthwise = depthwise};
    size_t nx = mt_shape4_count(d.input), ny = mt_shape4_count(mt_conv_output_shape(&d));
    size_t nw = (size_t)kernel * kernel * cin * (depthwise ? 1 : cout);
    float *x = random_array(nx, -1, 1), *w1 = random_array(nw, -0.5, 0.5);
    float *w2 = random_array(nw, -0.5, 0.5);
    float *y[2][REWRITES];
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < REWRITES; r++)
            y[k][r] = xmalloc(ny * sizeof(float));
    if (conv_rewritten_on(REF, &d, x, w1, w2, y[0]) && conv_rewritten_on(DUT, &d, x, w1, w2, y[1]))
        for (int r = 0; r < REWRITES; r++)
            compare(rewrite_names[r], y[1][r], y[0][r], ny, TOL_CONV);
    else
        mt_test_failures++;
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < REWRITES; r++)
            free(y[k][r]);
    free(x), free(w1), free(w2);
}

/* ---- batch normalization ---------------------------------------------------------------- */

enum {
    BN_Y,
    BN_SAVED_MEAN,
    BN_SAVED_INV_STD,
    BN_MOVING_MEAN,
    BN_MOVING_VAR,
    BN_DX,
    BN_DGAMMA,
    BN_DBETA,
    BN_DX_FROZEN,
    BN_Y_INF,
    BN_Y_INF_INPLACE,
    BN_DX_INF,
    BN_DGAMMA_INF,
    BN_DBETA_INF,
    BN_DGAMMA_INF_NODX,
    BN_OUTPUTS
};
static const char *const bn_names[BN_OUTPUTS] = {
    "bn_fwd_training y",     "bn_fwd_training mean",  "bn_fwd_training istd",
    "bn moving_mean",        "bn moving_variance",    "bn_bwd_training dx",
    "bn_bwd_training dgam",  "bn_bwd_training dbeta", "bn_bwd_training dx/N",
    "bn_fwd_inference y",    "bn_fwd_inference y=x",  "bn_bwd_inference dx",
    "bn_bwd_inference dgam", "bn_bwd_inference dbet", "bn_bwd_inf dgam/noDx",
};

/* p: gamma, beta, moving mean, moving variance ([C] each, host) */
static bool batchnorm_on(side s, const mt_batchnorm_desc *d, const float *x, const float *dy,
                         float *const p[4], float *out[BN_OUTPUTS]) {
    const size_t cb = (size_t)d->shape.c * sizeof(float);
    mt_tensor tx, ty, tdy, tdx;
    void *g, *be, *mm, *mv, *sm, *si, *dg, *db;
    if (!tensor_in(s, d->shape, x, &tx) || !tensor_in(s, d->shape, NULL, &ty) ||
        !tensor_in(s, d->shape, dy, &tdy) || !tensor_in(s, d->shape, NULL, &tdx) ||
        !buffer_in(s, p[0], cb, &g) || !buffer_in(s, p[1], cb, &be) ||
        !buffer_in(s, p[2], cb, &mm) || !buffer_in(s, p[3], cb, &mv) ||
        !buffer_in(s, NULL, cb, &sm) || !buffer_in(s, NULL, cb, &si) ||
        !buffer_in(s, NULL, cb, &dg) || !buffer_in(s, NULL, cb, &db))
        return false;
    /* training: forward, then backward with and without parameter gradients */
    RUN(s, batchnorm_forward_training, d, &tx, g, be, mm, mv, &ty, sm, si);
    if (!tensor_out(s, &ty, out[BN_Y]) || !buffer_out(s, sm, out[BN_SAVED_MEAN], cb) ||
        !buffer_out(s, si, out[BN_SAVED_INV_STD], cb) ||
        !buffer_out(s, mm, out[BN_MOVING_MEAN], cb) || !buffer_out(s, mv, out[BN_MOVING_VAR], cb))
        return false;
    RUN(s, batchnorm_backward_training, d, &tx, &tdy, g, sm, si, &tdx, dg, db);
    if (!tensor_out(s, &tdx, out[BN_DX]) || !buffer_out(s, dg, out[BN_DGAMMA], cb) ||
        !buffer_out(s, db, out[BN_DBETA], cb))
        return false;
    RUN(s, tensor_zero, &tdx);
    RUN(s, batchnorm_backward_training, d, &tx, &tdy, g, sm, si, &tdx, NULL, NULL);
    if (!tensor_out(s, &tdx, out[BN_DX_FROZEN])) return false;
    /* inference with the moving statistics just updated */
    RUN(s, batchnorm_forward_inference, d, &tx, g, be, mm, mv, &ty);
    if (!tensor_out(s, &ty, out[BN_Y_INF])) return false;
    RUN(s, batchnorm_backward_inference, d, &tx, &tdy, g, mm, mv, &tdx, dg, db);
    if (!tensor_out(s, &tdx, out[BN_DX_INF]) || !buffer_out(s, dg, out[BN_DGAMMA_INF], cb) ||
        !buffer_out(s, db, out[BN_DBETA_INF], cb))
        return false;
    s.o->buffer_free(s.b, dg);
    if (!buffer_in(s, NULL, cb, &dg)) return false;
    RUN(s, batchnorm_backward_inference, d, &tx, &tdy, g, mm, mv, NULL, dg, NULL);
    if (!buffer_out(s, dg, out[BN_DGAMMA_INF_NODX], cb)) return false;
    RUN(s, batchnorm_forward_inference, d, &tx, g, be, mm, mv, &tx); /* y = x */
    if (!tensor_out(s, &tx, out[BN_Y_INF_INPLACE])) return false;
    s.o->tensor_free(s.b, &tx), s.o->tensor_free(s.b, &ty), s.o->tensor_free(s.b, &tdy);
    s.o->tensor_free(s.b, &tdx);
    void *buffers[] = {g, be, mm, mv, sm, si, dg, db};
    for (int i = 0; i < 8; i++)
        s.o->buffer_free(s.b, buffers[i]);
    return true;
}

/* offset: added to every x, as a conv output with a large channel mean would be; a one-pass
 * E[x^2] - E[x]^2 variance in float loses the digits this case checks */
static void case_batchnorm(mt_shape4 shape, float offset) {
    const int C = shape.c;
    size_t count = mt_shape4_count(shape);
    mt_batchnorm_desc d = {.shape = shape, .epsilon = 1e-3f, .momentum = 0.999f};
    /* channel means away from 0, as after a conv; a few small variances make eps matter */
    float *x = random_array(count, -1, 3), *dy = random_array(count, -1, 1);
    for (size_t i = 0; i < count; i += 7)
        x[i] *= 0.01f;
    float *p[4] = {random_array(C, 0.5, 1.5), random_array(C, -0.5, 0.5), random_array(C, -1, 1),
                   random_array(C, 0.2, 2)};
    float *out[2][BN_OUTPUTS];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < BN_OUTPUTS; i++)
            out[k][i] = xmalloc(count * sizeof(float));
    if (batchnorm_on(REF, &d, x, dy, p, out[0]) && batchnorm_on(DUT, &d, x, dy, p, out[1])) {
        for (int i = 0; i < BN_OUTPUTS; i++) {
            bool per_channel = i == BN_SAVED_MEAN || i == BN_SAVED_INV_STD || i == BN_MOVING_MEAN ||
                               i == BN_MOVING_VAR || i == BN_DGAMMA || i == BN_DBETA ||
                               i == BN_DGAMMA_INF || i == BN_DBETA_INF || i == BN_DGAMMA_INF_NODX;
            compare(bn_names[i], out[1][i], out[0][i], per_channel ? (size_t)C : count, TOL_BN);
        }
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < BN_OUTPUTS; i++)
            free(out[k][i]);
    for (int i = 0; i < 4; i++)
        free(p[i]);
    free(x), free(dy);
}

/* ---- zero padding and global average pooling -------------------------------------------- */

static bool pad_on(side s, const mt_zero_pad_desc *d, mt_shape4 os, const float *x, const float *dy,
                   float *y_out, float *dx_out) {
    mt_tensor tx, ty, tdy, tdx;
    if (!tensor_in(s, d->input, x, &tx) || !tensor_in(s, os, NULL, &ty) ||
        !tensor_in(s, os, dy, &tdy) || !tensor_in(s, d->input, NULL, &tdx))
        return false;
    RUN(s, zero_pad_forward, d, &tx, &ty);
    RUN(s, zero_pad_backward, d, &tdy, &tdx);
    if (!tensor_out(s, &ty, y_out) || !tensor_out(s, &tdx, dx_out)) return false;
    s.o->tensor_free(s.b, &tx), s.o->tensor_free(s.b, &ty), s.o->tensor_free(s.b, &tdy);
    s.o->tensor_free(s.b, &tdx);
    return true;
}

static void case_pad(mt_shape4 in, int top, int left, int bottom, int right) {
    mt_zero_pad_desc d = {.input = in, .top = top, .left = left, .bottom = bottom, .right = right};
    mt_shape4 os = {in.n, in.h + top + bottom, in.w + left + right, in.c};
    size_t nx = mt_shape4_count(in), ny = mt_shape4_count(os);
    float *x = random_array(nx, -1, 1), *dy = random_array(ny, -1, 1);
    float *y[2] = {xmalloc(ny * 4), xmalloc(ny * 4)}, *dx[2] = {xmalloc(nx * 4), xmalloc(nx * 4)};
    if (pad_on(REF, &d, os, x, dy, y[0], dx[0]) && pad_on(DUT, &d, os, x, dy, y[1], dx[1])) {
        compare("zero_pad_forward", y[1], y[0], ny, TOL_EXACT);
        compare("zero_pad_backward", dx[1], dx[0], nx, TOL_EXACT);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        free(y[k]), free(dx[k]);
    free(x), free(dy);
}

static bool pool_on(side s, mt_shape4 shape, const float *x, const float *dy, float *y_out,
                    float *dx_out) {
    size_t rows = (size_t)shape.n * shape.c * sizeof(float);
    mt_tensor tx, tdx;
    void *by, *bdy;
    if (!tensor_in(s, shape, x, &tx) || !tensor_in(s, shape, NULL, &tdx) ||
        !buffer_in(s, NULL, rows, &by) || !buffer_in(s, dy, rows, &bdy))
        return false;
    RUN(s, global_avg_pool_forward, &tx, by);
    RUN(s, global_avg_pool_backward, bdy, &tdx);
    if (!buffer_out(s, by, y_out, rows) || !tensor_out(s, &tdx, dx_out)) return false;
    s.o->tensor_free(s.b, &tx), s.o->tensor_free(s.b, &tdx);
    s.o->buffer_free(s.b, by), s.o->buffer_free(s.b, bdy);
    return true;
}

static void case_pool(mt_shape4 shape) {
    size_t nx = mt_shape4_count(shape), ny = (size_t)shape.n * shape.c;
    float *x = random_array(nx, 0, 6), *dy = random_array(ny, -1, 1); /* relu6 outputs */
    float *y[2] = {xmalloc(ny * 4), xmalloc(ny * 4)}, *dx[2] = {xmalloc(nx * 4), xmalloc(nx * 4)};
    if (pool_on(REF, shape, x, dy, y[0], dx[0]) && pool_on(DUT, shape, x, dy, y[1], dx[1])) {
        compare("global_avg_pool_fwd", y[1], y[0], ny, TOL_POOL);
        compare("global_avg_pool_bwd", dx[1], dx[0], nx, TOL_POOL);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        free(y[k]), free(dx[k]);
    free(x), free(dy);
}

/* ---- head: dropout, dense, loss --------------------------------------------------------- */

static bool dropout_on(side s, size_t count, float rate, uint64_t seed, const float *x,
                       const float *dy, float *y_out, uint8_t *mask_out, float *dx_out) {
    size_t fb = count * sizeof(float);
    void *bx, *by, *bm, *bdy, *bdx, *bseed;
    if (!buffer_in(s, x, fb, &bx) || !buffer_in(s, NULL, fb, &by) ||
        !buffer_in(s, NULL, count, &bm) || !buffer_in(s, dy, fb, &bdy) ||
        !buffer_in(s, NULL, fb, &bdx) || !scalar_in(s, &seed, sizeof seed, &bseed))
        return false;
    RUN(s, dropout_forward, count, rate, bseed, bx, by, bm);
    RUN(s, dropout_backward, count, rate, bm, bdy, bdx);
    if (!buffer_out(s, by, y_out, fb) || !buffer_out(s, bm, mask_out, count) ||
        !buffer_out(s, bdx, dx_out, fb))
        return false;
    void *buffers[] = {bx, by, bm, bdy, bdx, bseed};
    for (int i = 0; i < 6; i++)
        s.o->buffer_free(s.b, buffers[i]);
    return true;
}

static void case_dropout(size_t count, float rate, uint64_t seed) {
    float *x = random_array(count, -1, 1), *dy = random_array(count, -1, 1);
    float *y[2] = {xmalloc(count * 4), xmalloc(count * 4)};
    float *dx[2] = {xmalloc(count * 4), xmalloc(count * 4)};
    uint8_t *mask[2] = {xmalloc(count), xmalloc(count)};
    if (dropout_on(REF, count, rate, seed, x, dy, y[0], mask[0], dx[0]) &&
        dropout_on(DUT, count, rate, seed, x, dy, y[1], mask[1], dx[1])) {
        compare_bytes("dropout mask", mask[1], mask[0], count);
        compare("dropout_forward", y[1], y[0], count, TOL_EXACT);
        compare("dropout_backward", dx[1], dx[0], count, TOL_EXACT);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        free(y[k]), free(dx[k]), free(mask[k]);
    free(x), free(dy);
}

static bool dense_on(side s, const mt_dense_desc *d, const float *x, const float *w, const float *b,
                     const float *dy, float *out[5]) {
    size_t xb = (size_t)d->batch * d->in_features * 4,
           wb = (size_t)d->in_features * d->out_features * 4;
    size_t bb = (size_t)d->out_features * 4, yb = (size_t)d->batch * d->out_features * 4;
    void *bx, *bw, *bbias, *by, *bdy, *bdx, *bdw, *bdb;
    if (!buffer_in(s, x, xb, &bx) || !buffer_in(s, w, wb, &bw) || !buffer_in(s, b, bb, &bbias) ||
        !buffer_in(s, NULL, yb, &by) || !buffer_in(s, dy, yb, &bdy) ||
        !buffer_in(s, NULL, xb, &bdx) || !buffer_in(s, NULL, wb, &bdw) ||
        !buffer_in(s, NULL, bb, &bdb))
        return false;
    RUN(s, dense_forward, d, bx, bw, bbias, by);
    RUN(s, dense_backward, d, bx, bw, bdy, bdx, bdw, bdb);
    if (!buffer_out(s, by, out[0], yb) || !buffer_out(s, bdx, out[1], xb) ||
        !buffer_out(s, bdw, out[2], wb) || !buffer_out(s, bdb, out[3], bb))
        return false;
    /* the frozen-backbone call: no dx */
    s.o->buffer_free(s.b, bdw);
    if (!buffer_in(s, NULL, wb, &bdw)) return false;
    RUN(s, dense_backward, d, bx, bw, bdy, NULL, bdw, bdb);
    if (!buffer_out(s, bdw, out[4], wb)) return false;
    void *buffers[] = {bx, bw, bbias, by, bdy, bdx, bdw, bdb};
    for (int i = 0; i < 8; i++)
        s.o->buffer_free(s.b, buffers[i]);
    return true;
}

static void case_dense(int batch, int in, int outf) {
    mt_dense_desc d = {.batch = batch, .in_features = in, .out_features = outf};
    size_t nx = (size_t)batch * in, nw = (size_t)in * outf, ny = (size_t)batch * outf;
    float *x = random_array(nx, 0, 6), *w = random_array(nw, -0.2, 0.2);
    float *b = random_array(outf, -1, 1), *dy = random_array(ny, -1, 1);
    const size_t sizes[5] = {ny, nx, nw, (size_t)outf, nw};
    static const char *const names[5] = {"dense_forward y", "dense_backward dx",
                                         "dense_backward dw", "dense_backward db",
                                         "dense_backward dw/noDx"};
    float *out[2][5];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 5; i++)
            out[k][i] = xmalloc(sizes[i] * 4);
    if (dense_on(REF, &d, x, w, b, dy, out[0]) && dense_on(DUT, &d, x, w, b, dy, out[1])) {
        for (int i = 0; i < 5; i++)
            compare(names[i], out[1][i], out[0][i], sizes[i], TOL_DENSE);
    } else {
        mt_test_failures++;
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 5; i++)
            free(out[k][i]);
    free(x), free(w), free(b), free(dy);
}

/* accum_out: loss_accumulate's accumulator after two steps (7 and 8) on these logits, the
 * second with the first labelled row's logit made NaN (when a row is labelled) */
static bool loss_on(side s, const mt_loss_desc *d, const float *logits, const int32_t *labels,
                    float *loss_out, float *loss_nograd_out, float *dlogits_out, double *accum_out,
                    float *skip_out) {
    size_t zb = (size_t)d->batch * d->classes * 4, lb = (size_t)d->batch * 4;
    void *bz, *bl, *bdz, *bacc, *bskip, *bstep;
    const uint64_t steps[2] = {7, 8};
    if (!buffer_in(s, logits, zb, &bz) || !buffer_in(s, labels, lb, &bl) ||
        !buffer_in(s, NULL, zb, &bdz) || !buffer_in(s, NULL, MT_ACCUM_COUNT * 8, &bacc) ||
        !buffer_in(s, NULL, sizeof(float), &bskip) ||
        !scalar_in(s, &steps[0], sizeof steps[0], &bstep))
        return false;
    RUN(s, loss_forward_backward, d, bz, bl, loss_out, bdz);
    RUN(s, loss_forward_backward, d, bz, bl, loss_nograd_out, NULL);
    if (!buffer_out(s, bdz, dlogits_out, zb)) return false;
    RUN(s, loss_accumulate, d, bz, bl, bdz, bstep, bacc, bskip);
    RUN(s, scalars_write, bstep, &steps[1], sizeof steps[1]); /* the next step's number */
    float *poisoned = xmalloc(zb);
    memcpy(poisoned, logits, zb);
    for (int n = 0; n < d->batch; n++)
        if (labels[n] >= 0) {
            poisoned[(size_t)n * d->classes] = NAN;
            break;
        }
    bool ok = s.o->upload(s.b, bz, poisoned, zb) == MT_OK;
    free(poisoned);
    if (!ok) return false;
    RUN(s, loss_accumulate, d, bz, bl, bdz, bstep, bacc, bskip);
    /* the flag then restores a buffer: buffer_copy_if counts into the accumulator's slot */
    RUN(s, buffer_copy_if, bdz, bz, zb, bskip, (double *)bacc + MT_ACCUM_COPIED);
    if (!buffer_out(s, bacc, accum_out, MT_ACCUM_COUNT * 8) ||
        !buffer_out(s, bskip, skip_out, sizeof(float)))
        return false;
    s.o->buffer_free(s.b, bz), s.o->buffer_free(s.b, bl), s.o->buffer_free(s.b, bdz);
    s.o->buffer_free(s.b, bacc), s.o->buffer_free(s.b, bskip), s.o->buffer_free(s.b, bstep);
    return true;
}

static void case_loss(int batch, int classes, const int32_t *labels) {
    mt_loss_desc d = {.batch = batch, .classes = classes};
    size_t nz = (size_t)batch * classes;
    float *z = random_array(nz, -4, 4);
    z[0] = 30.0f; /* a confident logit: the stable forms must agree there too */
    float loss[2], loss_nograd[2], *dz[2] = {xmalloc(nz * 4), xmalloc(nz * 4)};
    double accum[2][MT_ACCUM_COUNT];
    float skip[2];
    if (loss_on(REF, &d, z, labels, &loss[0], &loss_nograd[0], dz[0], accum[0], &skip[0]) &&
        loss_on(DUT, &d, z, labels, &loss[1], &loss_nograd[1], dz[1], accum[1], &skip[1])) {
        compare("loss", &loss[1], &loss[0], 1, TOL_LOSS);
        compare("loss (dlogits NULL)", &loss_nograd[1], &loss[0], 1, TOL_LOSS);
        compare("dlogits", dz[1], dz[0], nz, TOL_LOSS);
        /* the accumulated loss: the mean's tolerance; counts and skip bookkeeping exactly */
        float got = (float)accum[1][MT_ACCUM_LOSS_SUM], want = (float)accum[0][MT_ACCUM_LOSS_SUM];
        compare("loss_accumulate loss sum", &got, &want, 1, TOL_LOSS);
        checks_run++;
        for (int k = MT_ACCUM_CORRECT; k < MT_ACCUM_COUNT; k++)
            if (accum[1][k] != accum[0][k]) {
                fprintf(stderr, "FAIL %s: loss_accumulate slot %d: %g, reference %g\n",
                        current_case, k, accum[1][k], accum[0][k]);
                mt_test_failures++;
            }
        bool labelled = false;
        for (int n = 0; n < batch; n++)
            labelled |= labels[n] >= 0;
        if (skip[1] != skip[0]) {
            fprintf(stderr, "FAIL %s: loss_accumulate skip flag %g, reference %g\n", current_case,
                    (double)skip[1], (double)skip[0]);
            mt_test_failures++;
        }
        if (accum[0][MT_ACCUM_SKIPPED] != (labelled ? 1.0 : 0.0) ||
            accum[0][MT_ACCUM_COPIED] != (labelled ? 1.0 : 0.0) ||
            (labelled && (accum[0][MT_ACCUM_FIRST_SKIP] != 8.0 || skip[0] != 1.0f))) {
            fprintf(stderr, "FAIL %s: reference loss_accumulate missed the NaN step\n",
                    current_case);
            mt_test_failures++;
        }
    } else {
        mt_test_failures++;
    }
    free(dz[0]), free(dz[1]), free(z);
}

/* ---- the case list ---------------------------------------------------------------------- */

static const char *filter;

/* Run a case when its name contains the filter. */
static bool wanted(const char *name) {
    current_case = name;
    return !filter || strstr(name, filter) != NULL;
}

/* ---- buffer_scale (fp16's loss scale) ----------------------------------------------------- */

/* x times 1/8 with the flag (all finite: the flag stays 0), then times 2^127 (some overflow: the
 * flag becomes 1), then times 1 without a flag; x and both flags come back */
static bool scale_on(side s, const float *x, size_t count, float *x_out, float flags[2]) {
    void *bx, *bflag, *bfactor;
    const float zero = 0.0f, factors[] = {0.125f, 0x1p127f, 1.0f};
    if (!buffer_in(s, x, count * sizeof(float), &bx) || !buffer_in(s, &zero, sizeof zero, &bflag) ||
        !scalar_in(s, &factors[0], sizeof(float), &bfactor))
        return false;
    RUN(s, buffer_scale, bx, count, bfactor, bflag);
    if (!buffer_out(s, bflag, &flags[0], sizeof(float))) return false;
    RUN(s, scalars_write, bfactor, &factors[1], sizeof(float));
    RUN(s, buffer_scale, bx, count, bfactor, bflag);
    RUN(s, scalars_write, bfactor, &factors[2], sizeof(float));
    RUN(s, buffer_scale, bx, count, bfactor, NULL);
    if (!buffer_out(s, bflag, &flags[1], sizeof(float)) ||
        !buffer_out(s, bx, x_out, count * sizeof(float)))
        return false;
    s.o->buffer_free(s.b, bx);
    s.o->buffer_free(s.b, bflag);
    s.o->buffer_free(s.b, bfactor);
    return true;
}

static void case_buffer_scale(size_t count) {
    float *x = random_array(count, -4, 4), *out[2] = {xmalloc(count * 4), xmalloc(count * 4)};
    x[count / 2] = 3e38f; /* finite until the second product */
    float flags[2][2];
    if (scale_on(REF, x, count, out[0], flags[0]) && scale_on(DUT, x, count, out[1], flags[1])) {
        /* products by powers of two: exact, so equal (infinities included: compare only the
         * finite ones, then the pattern of infinities) */
        size_t bad = 0;
        for (size_t i = 0; i < count; i++)
            bad += memcmp(&out[0][i], &out[1][i], sizeof(float)) != 0;
        checks_run++;
        if (bad || flags[1][0] != 0.0f || flags[1][1] != 1.0f || flags[0][0] != 0.0f ||
            flags[0][1] != 1.0f) {
            fprintf(stderr, "FAIL %s: %zu products differ; flags %g %g (reference %g %g), want 0 "
                    "then 1\n", current_case, bad, flags[1][0], flags[1][1], flags[0][0],
                    flags[0][1]);
            mt_test_failures++;
        } else {
            printf("ok   %-52s %-22s bitwise equal, flags 0 then 1\n", current_case, "x, flag");
        }
    } else {
        mt_test_failures++;
    }
    free(x), free(out[0]), free(out[1]);
}

/* ---- the optimizer update ---------------------------------------------------------------- */

/* Three steps of `desc` (lr 1e-2, rising iterations) from p, g and slots; p and slots come back.
 * Also buffer_copy: the final parameters copied to a second buffer must come back equal. */
static bool optimizer_on(side s, mt_optimizer_desc desc, const float *p, const float *g,
                         const float *slots, int slot_count, float *p_out, float *slots_out,
                         float *copy_out) {
    size_t fb = desc.count * sizeof(float), sb = (size_t)slot_count * fb;
    void *bp, *bg, *bs = NULL, *bc, *brate;
    if (!buffer_in(s, p, fb, &bp) || !buffer_in(s, g, fb, &bg) ||
        (slot_count && !buffer_in(s, slots, sb, &bs)) || !buffer_in(s, NULL, fb, &bc) ||
        !buffer_in(s, NULL, sizeof(mt_update_scalars), &brate))
        return false;
    desc.scalars = brate;
    for (int step = 0; step < 3; step++) {
        /* mid-run: Adam's bias correction not trivial */
        const mt_update_scalars rate = {
            .lr = 1e-2f,
            .step = mt_update_step_size(desc.rule, desc.beta_1, desc.beta_2, 1e-2f,
                                        (uint64_t)step + 4)};
        RUN(s, scalars_write, brate, &rate, sizeof rate);
        RUN(s, optimizer_update, &desc, bp, bg, bs);
    }
    RUN(s, buffer_copy, bc, bp, fb);
    if (!buffer_out(s, bp, p_out, fb) || (slot_count && !buffer_out(s, bs, slots_out, sb)) ||
        !buffer_out(s, bc, copy_out, fb))
        return false;
    void *buffers[] = {bp, bg, bs, bc, brate};
    for (int i = 0; i < 5; i++)
        if (buffers[i]) s.o->buffer_free(s.b, buffers[i]);
    return true;
}

static void case_optimizer(mt_update_rule rule, float momentum, bool nesterov, float decay,
                           int slot_count, size_t count) {
    mt_optimizer_desc desc = {.rule = rule, .count = count, .rho = 0.9f,
                              .momentum = momentum, .epsilon = 1e-7f, .beta_1 = 0.9f,
                              .beta_2 = 0.999f, .weight_decay = decay, .nesterov = nesterov};
    float *p = random_array(count, -1, 1), *g = random_array(count, -0.1, 0.1);
    /* slots as mid-training leaves them: second moments >= 0, first moments of either sign */
    float *slots = random_array((size_t)slot_count * count + 1, 0, 0.01);
    float *p_out[2] = {xmalloc(count * 4), xmalloc(count * 4)};
    float *s_out[2] = {xmalloc((size_t)slot_count * count * 4 + 4),
                       xmalloc((size_t)slot_count * count * 4 + 4)};
    float *c_out[2] = {xmalloc(count * 4), xmalloc(count * 4)};
    if (optimizer_on(REF, desc, p, g, slots, slot_count, p_out[0], s_out[0], c_out[0]) &&
        optimizer_on(DUT, desc, p, g, slots, slot_count, p_out[1], s_out[1], c_out[1])) {
        compare("optimizer params", p_out[1], p_out[0], count, TOL_OPTIMIZER);
        for (int k = 0; k < slot_count; k++)
            compare(k ? "optimizer slot 1" : "optimizer slot 0", s_out[1] + k * count,
                    s_out[0] + k * count, count, TOL_OPTIMIZER);
        compare("buffer_copy", c_out[1], p_out[1], count, 0.0);
    } else {
        mt_test_failures++;
    }
    free(p), free(g), free(slots);
    for (int i = 0; i < 2; i++) free(p_out[i]), free(s_out[i]), free(c_out[i]);
}

static void run_all(void) {
    /* name, then the arguments */
    if (wanted("memory n4 5x5x17")) case_memory((mt_shape4){4, 5, 5, 17});
    if (wanted("memory n1 3x3x40")) case_memory((mt_shape4){1, 3, 3, 40});
    /* an odd width (the middle column stays), several blocks of values on cuda */
    if (wanted("input n4 5x7x3")) case_input((mt_shape4){4, 5, 7, 3});
    if (wanted("input n3 16x16x3")) case_input((mt_shape4){3, 16, 16, 3});
    if (wanted("elementwise n4 5x5x17")) case_elementwise((mt_shape4){4, 5, 5, 17});
    if (wanted("elementwise n1 4x4x40")) case_elementwise((mt_shape4){1, 4, 4, 40});

    /* n, size, cin, cout, kernel, stride, depthwise, valid */
    if (wanted("conv 1x1/1 n4 8x8 24->40")) case_conv(4, 8, 24, 40, 1, 1, false, false);
    if (wanted("conv 1x1/1 n1 5x5 17->3")) case_conv(1, 5, 17, 3, 1, 1, false, false);
    if (wanted("conv 1x1/1 n4 3x3 40->24")) case_conv(4, 3, 40, 24, 1, 1, false, false);
    if (wanted("conv 3x3/1 SAME n1 7x7 3->17")) case_conv(1, 7, 3, 17, 3, 1, false, false);
    if (wanted("conv 3x3/2 SAME n4 8x8 3->24 pads 0,1")) case_conv(4, 8, 3, 24, 3, 2, false, false);
    if (wanted("conv 3x3/2 SAME n1 9x9 17->24 pads 1,1"))
        case_conv(1, 9, 17, 24, 3, 2, false, false);
    if (wanted("conv 3x3/2 SAME n4 6x6 40->17 pads 0,1"))
        case_conv(4, 6, 40, 17, 3, 2, false, false);
    /* the shapes of Conv1 and of a late expansion, big enough for other kernel choices */
    if (wanted("conv 3x3/2 SAME n4 32x32 3->32 pads 0,1"))
        case_conv(4, 32, 3, 32, 3, 2, false, false);
    if (wanted("conv 1x1/1 n4 5x5 160->960")) case_conv(4, 5, 160, 960, 1, 1, false, false);
    if (wanted("depthwise 3x3/1 SAME n4 6x6 c24")) case_conv(4, 6, 24, 24, 3, 1, true, false);
    if (wanted("depthwise 3x3/1 SAME n1 5x5 c17")) case_conv(1, 5, 17, 17, 3, 1, true, false);
    if (wanted("depthwise 3x3/2 SAME n4 8x8 c40 pads 0,1"))
        case_conv(4, 8, 40, 40, 3, 2, true, false);
    if (wanted("depthwise 3x3/2 SAME n1 7x7 c3 pads 1,1")) case_conv(1, 7, 3, 3, 3, 2, true, false);
    if (wanted("depthwise 3x3/2 VALID n1 9x9 c17")) case_conv(1, 9, 17, 17, 3, 2, true, true);
    if (wanted("depthwise 3x3/1 SAME n4 20x20 c144")) case_conv(4, 20, 144, 144, 3, 1, true, false);
    /* n, size, cin, cout, kernel, depthwise: each write of a kernel seen by the next call */
    if (wanted("conv 1x1/1 weights rewritten n2 5x5 16->24"))
        case_conv_rewritten(2, 5, 16, 24, 1, false);
    if (wanted("conv 3x3/1 weights rewritten n2 7x7 8->16"))
        case_conv_rewritten(2, 7, 8, 16, 3, false);
    if (wanted("depthwise 3x3/1 weights rewritten n2 7x7 c16"))
        case_conv_rewritten(2, 7, 16, 16, 3, true);

    if (wanted("batchnorm n4 5x5 c24")) case_batchnorm((mt_shape4){4, 5, 5, 24}, 0);
    if (wanted("batchnorm n1 3x3 c17")) case_batchnorm((mt_shape4){1, 3, 3, 17}, 0);
    if (wanted("batchnorm n4 2x2 c40")) case_batchnorm((mt_shape4){4, 2, 2, 40}, 0);
    if (wanted("batchnorm n1 4x4 c3")) case_batchnorm((mt_shape4){1, 4, 4, 3}, 0);
    if (wanted("batchnorm n4 16x16 c17 mean 8")) case_batchnorm((mt_shape4){4, 16, 16, 17}, 8);

    if (wanted("zero_pad n4 8x8x3 t0 l0 b1 r1")) case_pad((mt_shape4){4, 8, 8, 3}, 0, 0, 1, 1);
    if (wanted("zero_pad n1 5x5x17 t1 l1 b1 r1")) case_pad((mt_shape4){1, 5, 5, 17}, 1, 1, 1, 1);
    if (wanted("zero_pad n1 4x6x40 t0 l1 b2 r0")) case_pad((mt_shape4){1, 4, 6, 40}, 0, 1, 2, 0);
    if (wanted("global_avg_pool n4 5x5 c40")) case_pool((mt_shape4){4, 5, 5, 40});
    if (wanted("global_avg_pool n1 3x3 c17")) case_pool((mt_shape4){1, 3, 3, 17});

    if (wanted("dropout 160 rate 0.2 seed 7")) case_dropout(160, 0.2f, 7);
    if (wanted("dropout 1280x4 rate 0.5 seed 2^40+3")) case_dropout(5120, 0.5f, (1ULL << 40) + 3);
    if (wanted("dense n4 40->1")) case_dense(4, 40, 1);
    if (wanted("dense n1 17->3")) case_dense(1, 17, 3);
    if (wanted("dense n4 1280->5")) case_dense(4, 1280, 5);

    static const int32_t bin_labels[4] = {1, 0, -1, 1}, cat_labels[4] = {2, -1, 0, 1},
                         one_label[1] = {4}, no_labels[3] = {-1, -1, -1};
    if (wanted("loss sigmoid n4 (row 2 padded)")) case_loss(4, 1, bin_labels);
    if (wanted("loss softmax n4 c3 (row 1 padded)")) case_loss(4, 3, cat_labels);
    if (wanted("loss softmax n1 c5")) case_loss(1, 5, one_label);
    if (wanted("loss softmax n3 c3 (all padded)")) case_loss(3, 3, no_labels);

    /* rule, momentum, nesterov, weight decay, slots, count (70,000: the cpu's threaded path) */
    if (wanted("buffer_scale 70001")) case_buffer_scale(70001);
    if (wanted("optimizer rmsprop 1000")) case_optimizer(MT_UPDATE_RMSPROP, 0, false, 0, 1, 1000);
    if (wanted("optimizer rmsprop momentum 0.5 decay 0.01 70000"))
        case_optimizer(MT_UPDATE_RMSPROP, 0.5f, false, 0.01f, 2, 70000);
    if (wanted("optimizer sgd 1000")) case_optimizer(MT_UPDATE_SGD, 0, false, 0, 0, 1000);
    if (wanted("optimizer sgd momentum 0.9 1000"))
        case_optimizer(MT_UPDATE_SGD, 0.9f, false, 0, 1, 1000);
    if (wanted("optimizer sgd nesterov 0.9 1000"))
        case_optimizer(MT_UPDATE_SGD, 0.9f, true, 0, 1, 1000);
    if (wanted("optimizer adam 70000")) case_optimizer(MT_UPDATE_ADAM, 0, false, 0, 2, 70000);
    if (wanted("optimizer adam decay 0.004 999"))
        case_optimizer(MT_UPDATE_ADAM, 0, false, 0.004f, 2, 999);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr,
                "usage: %s BACKEND [FILTER]\n  BACKEND: reference, cpu, cuda\n  FILTER: "
                "run only the cases whose name contains it (e.g. depthwise, batchnorm, 3x3/2)\n",
                argv[0]);
        return 2;
    }
    const char *name = argv[1];
    filter = argc == 3 ? argv[2] : NULL;
    check_harness();

    mt_backend_options options = {.num_threads = 0, .device = 0};
    const char *precision = getenv("MT_TEST_PRECISION");
    if (precision && *precision && strcmp(precision, "fp32") != 0) {
        static const struct {
            const char *name;
            mt_compute_precision value;
            double tol;
        } known[] = {{"tf32", MT_COMPUTE_TF32, 1e-2},
                     {"bf16", MT_COMPUTE_BF16, 2 * 0x1p-8},
                     {"fp16", MT_COMPUTE_FP16, 2 * 0x1p-11}};
        bool found = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strcmp(precision, known[i].name) == 0) {
                options.precision = known[i].value;
                tol_precision = known[i].tol;
                found = true;
            }
        if (!found) {
            fprintf(stderr, "MT_TEST_PRECISION=%s: expected fp32, tf32, bf16 or fp16\n",
                    precision);
            return 2;
        }
        printf("precision %s: every tolerance + %.2g\n", precision, tol_precision);
    }
    mt_status status = mt_backend_create(name, &options, &DUT.b);
    if (status != MT_OK) {
        if (strcmp(name, "cuda") == 0) {
            printf("skipped: no GPU (%s)\n", mt_last_error());
            return MT_TEST_SKIP_CODE;
        }
        fprintf(stderr, "cannot create backend '%s': %s\n", name, mt_last_error());
        return 1;
    }
    DUT.o = DUT.b->ops;
    CHECK_OK(mt_backend_create("reference", &options, &REF.b));
    REF.o = REF.b->ops;

    run_all();
    if (checks_run == 0 && filter) {
        fprintf(stderr, "no case matches '%s'\n", filter);
        mt_test_failures++;
    }
    printf("%d comparisons of backend '%s' against the reference\n", checks_run, name);

    mt_backend_destroy(DUT.b);
    mt_backend_destroy(REF.b);
    return mt_test_finish();
}
