/* Part of test_gpu_kernels_emulated (see test_gpu_kernels_emulated.c for the emulation): the
 * kernels' 16-bit storage (train.precision = bf16 | fp16 reading and writing bf16 / fp16 tensors
 * directly, cuda_kernels_internal.cuh). Each launcher given MT_CUDA_BF16 / _FP16 and 16-bit inputs
 * must equal, BIT FOR BIT, the same launcher given MT_CUDA_F32 and the widened inputs, followed by
 * the rounding of ops/precision_bits.h (what cuda_precision.c's staging computed, and what the
 * reference's emulation is compared with): the 16-bit instance runs the same fp32 arithmetic in the
 * same order, block layout included (the vector path is taken for the same shapes and alignments),
 * so even the reductions (BN statistics, dgamma, dbeta, pooling, weight gradients) agree exactly
 * and no tolerance is needed. Float outputs (statistics, pooled values, weight gradients) must be
 * the same floats. Ops: add and ReLU6 (vector and scalar paths), the input conversion, zero pad,
 * global average pooling, the fused BN in every mode (with and without ReLU6, in place, scalar
 * path), the depthwise kernels (register-blocked and legacy, all three passes) and the direct
 * convolution (Conv1's weight gradient and the generic one). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h" /* mt_shape4 */
#include "ops/cuda/cuda_kernels.h"
#include "ops/precision_bits.h"
#include "test_gpu_kernels_stored.h"
#include "test_util.h"

#define KERNEL_OK(call) CHECK((call) == cudaSuccess)

static uint64_t rng16 = 0x9e3779b97f4a7c15ULL;

static float uniform16(float lo, float hi) {
    rng16 ^= rng16 << 13, rng16 ^= rng16 >> 7, rng16 ^= rng16 << 17;
    return lo + (hi - lo) * (float)((double)(rng16 >> 11) / 9007199254740992.0);
}

static const struct {
    const char *name;
    mt_cuda_storage storage;
    int fp16;
} FORMATS[] = {{"bf16", MT_CUDA_BF16, 0}, {"fp16", MT_CUDA_FP16, 1}};

static uint16_t to_bits(int fp16, float x) {
    return fp16 ? mt_f32_to_fp16_bits(x) : mt_f32_to_bf16_bits(x);
}

static float from_bits(int fp16, uint16_t b) {
    return fp16 ? mt_fp16_bits_to_f32(b) : mt_bf16_bits_to_f32(b);
}

/* One tensor twice: its 16-bit patterns h and their exact fp32 values f, each `skew` elements past
 * an aligned start (skew 1: the scalar paths on both sides). */
typedef struct t16 {
    uint16_t *h;
    float *f;
    size_t n;
    uint16_t *hbuf;
    float *fbuf;
} t16;

static t16 t16_make(int fp16, size_t n, float lo, float hi, size_t skew) {
    t16 t = {.n = n, .hbuf = calloc(n + 8, sizeof(uint16_t)), .fbuf = calloc(n + 8, sizeof(float))};
    if (!t.hbuf || !t.fbuf) abort();
    t.h = t.hbuf + skew, t.f = t.fbuf + skew;
    for (size_t i = 0; i < n; i++) {
        t.h[i] = lo < hi ? to_bits(fp16, uniform16(lo, hi)) : 0;
        t.f[i] = from_bits(fp16, t.h[i]);
    }
    return t;
}

static t16 t16_zeros(size_t n, size_t skew) {
    return t16_make(0, n, 0, 0, skew);
}

/* f = the value of h again (after a 16-bit kernel wrote h) */
static void t16_widen(int fp16, t16 *t) {
    for (size_t i = 0; i < t->n; i++)
        t->f[i] = from_bits(fp16, t->h[i]);
}

static void t16_free(t16 *t) {
    free(t->hbuf), free(t->fbuf);
}

static float *fzeros(size_t n) {
    float *a = calloc(n + 8, sizeof *a);
    if (!a) abort();
    return a;
}

static float *frandom(size_t n, float lo, float hi) {
    float *a = fzeros(n);
    for (size_t i = 0; i < n; i++)
        a[i] = uniform16(lo, hi);
    return a;
}

/* got: the 16-bit kernel's patterns; want: the fp32 kernel's floats, rounded here */
static void same_rounded(const char *format, const char *what, int fp16, const uint16_t *got,
                         const float *want, size_t n) {
    size_t wrong = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != to_bits(fp16, want[i]) && wrong++ == 0) first = i;
    CHECK_MSG(wrong == 0,
              "%s %s: %zu of %zu values differ from the fp32 kernel's rounded, first [%zu]: "
              "0x%04x (%.9g), want 0x%04x (%.9g from %.9g)",
              format, what, wrong, n, first, got[first], from_bits(fp16, got[first]),
              to_bits(fp16, want[first]), from_bits(fp16, to_bits(fp16, want[first])), want[first]);
}

static void same_floats(const char *format, const char *what, const float *got, const float *want,
                        size_t n) {
    size_t wrong = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && wrong++ == 0) first = i;
    CHECK_MSG(
        wrong == 0,
        "%s %s: %zu of %zu floats differ from the fp32 kernel's, first [%zu]: %.9g, want %.9g",
        format, what, wrong, n, first, got[first], want[first]);
}

/* ---- elementwise, input, pad, pool ------------------------------------------------------------
 */

static void check_elementwise(int k, size_t n, size_t skew) {
    const int f = FORMATS[k].fp16;
    const mt_cuda_storage st = FORMATS[k].storage;
    const char *name = FORMATS[k].name;
    t16 a = t16_make(f, n, -3, 9, skew), b = t16_make(f, n, -3, 9, skew);
    t16 dy = t16_make(f, n, -1, 1, skew), y = t16_zeros(n, skew), dx = t16_zeros(n, skew);
    a.h[0] = to_bits(f, 0.0f), a.f[0] = 0.0f, a.h[n - 1] = to_bits(f, 6.0f), a.f[n - 1] = 6.0f;
    float *y32 = fzeros(n), *dx32 = fzeros(n);
    KERNEL_OK(mt_cuda_launch_add(NULL, MT_CUDA_F32, n, a.f, b.f, y32));
    KERNEL_OK(mt_cuda_launch_add(NULL, st, n, a.h, b.h, y.h));
    same_rounded(name, skew ? "add (scalar)" : "add", f, y.h, y32, n);
    KERNEL_OK(mt_cuda_launch_relu6_forward(NULL, MT_CUDA_F32, n, a.f, y32));
    KERNEL_OK(mt_cuda_launch_relu6_forward(NULL, st, n, a.h, y.h));
    same_rounded(name, "relu6 forward", f, y.h, y32, n);
    t16_widen(f, &y);
    KERNEL_OK(mt_cuda_launch_relu6_backward(NULL, MT_CUDA_F32, n, y.f, dy.f, dx32));
    KERNEL_OK(mt_cuda_launch_relu6_backward(NULL, st, n, y.h, dy.h, dx.h));
    same_rounded(name, "relu6 backward", f, dx.h, dx32, n);
    /* in place: dx = dy */
    KERNEL_OK(mt_cuda_launch_relu6_backward(NULL, st, n, y.h, dy.h, dy.h));
    same_rounded(name, "relu6 backward in place", f, dy.h, dx32, n);
    t16_free(&a), t16_free(&b), t16_free(&dy), t16_free(&y), t16_free(&dx);
    free(y32), free(dx32);
}

static void check_input_pad_pool(int k) {
    const int f = FORMATS[k].fp16;
    const mt_cuda_storage st = FORMATS[k].storage;
    const char *name = FORMATS[k].name;
    /* the input conversion: every uint8 value, flips */
    const int n = 4, h = 16, w = 24;
    const size_t count = (size_t)n * h * w * 3;
    uint8_t *src = malloc(count), flips[4] = {0, 1, 7, 0};
    if (!src) abort();
    for (size_t i = 0; i < count; i++)
        src[i] = (uint8_t)(i * 5 % 256);
    float *in32 = fzeros(count);
    t16 in = t16_zeros(count, 0);
    KERNEL_OK(mt_cuda_launch_input_convert(NULL, MT_CUDA_F32, n, h, w, src, flips, in32));
    KERNEL_OK(mt_cuda_launch_input_convert(NULL, st, n, h, w, src, flips, in.h));
    same_rounded(name, "input_convert", f, in.h, in32, count);
    free(src), free(in32), t16_free(&in);

    /* zero pad ((1, 2), (0, 1)) */
    const int C = 40, H = 5, W = 6, top = 1, left = 0, ho = H + 3, wo = W + 1;
    const size_t nx = (size_t)2 * H * W * C, ny = (size_t)2 * ho * wo * C;
    t16 x = t16_make(f, nx, -1, 1, 0), dy = t16_make(f, ny, -1, 1, 0);
    t16 y = t16_zeros(ny, 0), dx = t16_zeros(nx, 0);
    float *y32 = fzeros(ny), *dx32 = fzeros(nx);
    KERNEL_OK(mt_cuda_launch_zero_pad_forward(NULL, MT_CUDA_F32, 2, H, W, C, ho, wo, top, left, x.f,
                                              y32));
    KERNEL_OK(mt_cuda_launch_zero_pad_forward(NULL, st, 2, H, W, C, ho, wo, top, left, x.h, y.h));
    same_rounded(name, "zero_pad forward", f, y.h, y32, ny);
    KERNEL_OK(mt_cuda_launch_zero_pad_backward(NULL, MT_CUDA_F32, 2, H, W, C, ho, wo, top, left,
                                               dy.f, dx32));
    KERNEL_OK(
        mt_cuda_launch_zero_pad_backward(NULL, st, 2, H, W, C, ho, wo, top, left, dy.h, dx.h));
    same_rounded(name, "zero_pad backward", f, dx.h, dx32, nx);

    /* global average pooling: y and dy float */
    const long hw = (long)H * W;
    float *p32[2] = {fzeros(2 * C), fzeros(2 * C)}, *pdy = frandom(2 * C, -1, 1);
    KERNEL_OK(mt_cuda_launch_avg_pool_forward(NULL, MT_CUDA_F32, 2, hw, C, x.f, p32[0]));
    KERNEL_OK(mt_cuda_launch_avg_pool_forward(NULL, st, 2, hw, C, x.h, p32[1]));
    same_floats(name, "global_avg_pool forward", p32[1], p32[0], 2 * C);
    KERNEL_OK(mt_cuda_launch_avg_pool_backward(NULL, MT_CUDA_F32, 2, hw, C, pdy, dx32));
    KERNEL_OK(mt_cuda_launch_avg_pool_backward(NULL, st, 2, hw, C, pdy, dx.h));
    same_rounded(name, "global_avg_pool backward", f, dx.h, dx32, nx);
    t16_free(&x), t16_free(&dy), t16_free(&y), t16_free(&dx);
    free(y32), free(dx32), free(p32[0]), free(p32[1]), free(pdy);
}

/* ---- batch norm (fused) -----------------------------------------------------------------------
 */

static void check_batchnorm(int k, mt_shape4 s, float offset, bool misaligned) {
    const int f = FORMATS[k].fp16, C = s.c;
    const mt_cuda_storage st = FORMATS[k].storage;
    const long m = (long)s.n * s.h * s.w;
    const size_t count = (size_t)m * C, skew = misaligned ? 1 : 0;
    const float eps = 1e-3f, mom = 0.99f;
    char what[160];
    t16 x = t16_make(f, count, -1 + offset, 3 + offset, skew), dy = t16_make(f, count, -1, 1, skew);
    t16 y = t16_zeros(count, skew), dx = t16_zeros(count, skew), ip = t16_zeros(count, skew);
    float *y32buf = fzeros(count), *dx32buf = fzeros(count), *y32 = y32buf + skew,
          *dx32 = dx32buf + skew;
    float *gamma = frandom(C, 0.5f, 1.5f), *beta = frandom(C, 0.5f, 2.5f);
    float *mm[2] = {frandom(C, -1, 1), fzeros(C)}, *mv[2] = {frandom(C, 0.2f, 2), fzeros(C)};
    float *sm[2] = {fzeros(C), fzeros(C)}, *si[2] = {fzeros(C), fzeros(C)};
    float *dg[2] = {fzeros(C), fzeros(C)}, *db[2] = {fzeros(C), fzeros(C)};
    float *scratch = fzeros(mt_cuda_bn_fused_scratch_floats(m, C));
    unsigned *counters = calloc((size_t)mt_cuda_bn_fused_counters(C), sizeof *counters);
#define BN_WHAT(label)                                                                             \
    (snprintf(what, sizeof what, "fused bn %dx%dx%dx%d%s %s", s.n, s.h, s.w, s.c,                  \
              misaligned ? " (scalar)" : "", label),                                               \
     what)
    for (int relu6 = 0; relu6 < 2; relu6++) {
        memcpy(mm[1], mm[0], C * sizeof(float)), memcpy(mv[1], mv[0], C * sizeof(float));
        float *mm0 = fzeros(C), *mv0 = fzeros(C);
        memcpy(mm0, mm[0], C * sizeof(float)), memcpy(mv0, mv[0], C * sizeof(float));
        KERNEL_OK(mt_cuda_launch_bn_fused_forward_training(NULL, MT_CUDA_F32, m, C, eps, mom, relu6,
                                                           x.f, gamma, beta, mm0, mv0, y32, sm[0],
                                                           si[0], scratch, counters));
        KERNEL_OK(mt_cuda_launch_bn_fused_forward_training(NULL, st, m, C, eps, mom, relu6, x.h,
                                                           gamma, beta, mm[1], mv[1], y.h, sm[1],
                                                           si[1], scratch, counters));
        same_rounded(FORMATS[k].name, BN_WHAT(relu6 ? "training y = relu6(bn)" : "training y"), f,
                     y.h, y32, count);
        same_floats(FORMATS[k].name, BN_WHAT("saved mean"), sm[1], sm[0], C);
        same_floats(FORMATS[k].name, BN_WHAT("saved inv std"), si[1], si[0], C);
        same_floats(FORMATS[k].name, BN_WHAT("moving mean"), mm[1], mm0, C);
        same_floats(FORMATS[k].name, BN_WHAT("moving variance"), mv[1], mv0, C);
        free(mm0), free(mv0);
        t16_widen(f, &y);
        KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, eps, 1, x.f,
                                                   relu6 ? y.f : NULL, dy.f, gamma, sm[0], si[0],
                                                   dx32, dg[0], db[0], scratch, counters));
        KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, st, m, C, eps, 1, x.h, relu6 ? y.h : NULL,
                                                   dy.h, gamma, sm[0], si[0], dx.h, dg[1], db[1],
                                                   scratch, counters));
        same_rounded(FORMATS[k].name,
                     BN_WHAT(relu6 ? "training dx (through relu6)" : "training dx"), f, dx.h, dx32,
                     count);
        same_floats(FORMATS[k].name, BN_WHAT("training dgamma"), dg[1], dg[0], C);
        same_floats(FORMATS[k].name, BN_WHAT("training dbeta"), db[1], db[0], C);
        /* dx in place of dy, no dgamma/dbeta */
        memcpy(ip.h, dy.h, count * sizeof(uint16_t));
        KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, st, m, C, eps, 1, x.h, relu6 ? y.h : NULL,
                                                   ip.h, gamma, sm[0], si[0], ip.h, NULL, NULL,
                                                   scratch, counters));
        same_rounded(FORMATS[k].name, BN_WHAT("training dx = dy in place"), f, ip.h, dx32, count);
    }
    KERNEL_OK(mt_cuda_launch_bn_fused_forward_inference(NULL, MT_CUDA_F32, m, C, eps, x.f, gamma,
                                                        beta, mm[0], mv[0], y32));
    KERNEL_OK(mt_cuda_launch_bn_fused_forward_inference(NULL, st, m, C, eps, x.h, gamma, beta,
                                                        mm[0], mv[0], y.h));
    same_rounded(FORMATS[k].name, BN_WHAT("inference y"), f, y.h, y32, count);
    memcpy(ip.h, x.h, count * sizeof(uint16_t));
    KERNEL_OK(mt_cuda_launch_bn_fused_forward_inference(NULL, st, m, C, eps, ip.h, gamma, beta,
                                                        mm[0], mv[0], ip.h));
    same_rounded(FORMATS[k].name, BN_WHAT("inference y = x in place"), f, ip.h, y32, count);
    KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, eps, 0, x.f, NULL, dy.f,
                                               gamma, mm[0], mv[0], dx32, dg[0], db[0], scratch,
                                               counters));
    KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, st, m, C, eps, 0, x.h, NULL, dy.h, gamma,
                                               mm[0], mv[0], dx.h, dg[1], db[1], scratch,
                                               counters));
    same_rounded(FORMATS[k].name, BN_WHAT("inference dx"), f, dx.h, dx32, count);
    same_floats(FORMATS[k].name, BN_WHAT("inference dgamma"), dg[1], dg[0], C);
    same_floats(FORMATS[k].name, BN_WHAT("inference dbeta"), db[1], db[0], C);
    memset(dg[1], 0, C * sizeof(float));
    KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, st, m, C, eps, 0, x.h, NULL, dy.h, gamma,
                                               mm[0], mv[0], NULL, dg[1], NULL, scratch, counters));
    same_floats(FORMATS[k].name, BN_WHAT("inference dgamma (no dx)"), dg[1], dg[0], C);
    for (int i = 0; i < mt_cuda_bn_fused_counters(C); i++)
        CHECK_MSG(counters[i] == 0, "fused bn (16-bit): counter %d left at %u", i, counters[i]);
#undef BN_WHAT
    for (int i = 0; i < 2; i++)
        free(mm[i]), free(mv[i]), free(sm[i]), free(si[i]), free(dg[i]), free(db[i]);
    t16_free(&x), t16_free(&dy), t16_free(&y), t16_free(&dx), t16_free(&ip);
    free(y32buf), free(dx32buf), free(gamma), free(beta), free(scratch), free(counters);
}

/* ---- convolutions -----------------------------------------------------------------------------
 */

/* n, size: the input N and H = W; square kernel k, stride, pads top/left (bottom/right implied by
 * the output size (size + pt + pb - k) / stride + 1) */
static void check_conv(int k, const char *label, int n, int size, int cin, int cout, int kernel,
                       int stride, int pt, int pb, bool depthwise) {
    const int f = FORMATS[k].fp16;
    const mt_cuda_storage st = FORMATS[k].storage;
    const int out = (size + pt + pb - kernel) / stride + 1, co = depthwise ? cin : cout;
    const mt_cuda_conv_geom g = {.n = n,
                                 .h = size,
                                 .w = size,
                                 .cin = cin,
                                 .ho = out,
                                 .wo = out,
                                 .cout = co,
                                 .k = kernel,
                                 .stride = stride,
                                 .pad_top = pt,
                                 .pad_left = pt};
    const size_t nx = (size_t)n * size * size * cin, ny = (size_t)n * out * out * co;
    const size_t nw = (size_t)kernel * kernel * cin * (depthwise ? 1 : cout);
    t16 x = t16_make(f, nx, -1, 1, 0), dy = t16_make(f, ny, -1, 1, 0);
    t16 y = t16_zeros(ny, 0), dx = t16_zeros(nx, 0);
    float *w = frandom(nw, -0.5f, 0.5f), *y32 = fzeros(ny), *dx32 = fzeros(nx);
    float *dw[2] = {fzeros(nw), fzeros(nw)};
    for (size_t i = 0; i < nw; i++) /* the weights as 16-bit math reads them */
        w[i] = from_bits(f, to_bits(f, w[i]));
    size_t np = (size_t)mt_cuda_reduce_parts((long)n * out * out) * nw;
    if (depthwise && mt_cuda_depthwise_weights_rows_partials(&g) > np)
        np = mt_cuda_depthwise_weights_rows_partials(&g);
    if (!depthwise && mt_cuda_direct_weights_rows_supported(&g) &&
        mt_cuda_direct_weights_rows_partials(&g) > np)
        np = mt_cuda_direct_weights_rows_partials(&g);
    float *partials = fzeros(np);
    char what[160];
#define CONV_WHAT(pass) (snprintf(what, sizeof what, "%s %s", label, pass), what)
    if (depthwise) {
        KERNEL_OK(mt_cuda_launch_depthwise_forward_strip(NULL, MT_CUDA_F32, &g, x.f, w, y32));
        KERNEL_OK(mt_cuda_launch_depthwise_forward_strip(NULL, st, &g, x.h, w, y.h));
        same_rounded(FORMATS[k].name, CONV_WHAT("forward (strips)"), f, y.h, y32, ny);
        KERNEL_OK(
            mt_cuda_launch_depthwise_backward_data_strip(NULL, MT_CUDA_F32, &g, dy.f, w, dx32));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_data_strip(NULL, st, &g, dy.h, w, dx.h));
        same_rounded(FORMATS[k].name, CONV_WHAT("backward data (strips)"), f, dx.h, dx32, nx);
        KERNEL_OK(mt_cuda_launch_depthwise_backward_weights_rows(NULL, MT_CUDA_F32, &g, x.f, dy.f,
                                                                 partials, dw[0]));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_weights_rows(NULL, st, &g, x.h, dy.h, partials,
                                                                 dw[1]));
        same_floats(FORMATS[k].name, CONV_WHAT("backward weights (rows)"), dw[1], dw[0], nw);
        KERNEL_OK(mt_cuda_launch_depthwise_forward(NULL, MT_CUDA_F32, &g, x.f, w, y32));
        KERNEL_OK(mt_cuda_launch_depthwise_forward(NULL, st, &g, x.h, w, y.h));
        same_rounded(FORMATS[k].name, CONV_WHAT("forward (legacy)"), f, y.h, y32, ny);
        KERNEL_OK(mt_cuda_launch_depthwise_backward_data(NULL, MT_CUDA_F32, &g, dy.f, w, dx32));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_data(NULL, st, &g, dy.h, w, dx.h));
        same_rounded(FORMATS[k].name, CONV_WHAT("backward data (legacy)"), f, dx.h, dx32, nx);
        KERNEL_OK(mt_cuda_launch_depthwise_backward_weights(NULL, MT_CUDA_F32, &g, x.f, dy.f,
                                                            partials, dw[0]));
        KERNEL_OK(
            mt_cuda_launch_depthwise_backward_weights(NULL, st, &g, x.h, dy.h, partials, dw[1]));
        same_floats(FORMATS[k].name, CONV_WHAT("backward weights (legacy)"), dw[1], dw[0], nw);
    } else {
        KERNEL_OK(mt_cuda_launch_direct_conv_forward(NULL, MT_CUDA_F32, &g, x.f, w, y32));
        KERNEL_OK(mt_cuda_launch_direct_conv_forward(NULL, st, &g, x.h, w, y.h));
        same_rounded(FORMATS[k].name, CONV_WHAT("forward"), f, y.h, y32, ny);
        KERNEL_OK(mt_cuda_launch_direct_conv_backward_data(NULL, MT_CUDA_F32, &g, dy.f, w, dx32));
        KERNEL_OK(mt_cuda_launch_direct_conv_backward_data(NULL, st, &g, dy.h, w, dx.h));
        same_rounded(FORMATS[k].name, CONV_WHAT("backward data"), f, dx.h, dx32, nx);
        KERNEL_OK(mt_cuda_launch_direct_conv_backward_weights(NULL, MT_CUDA_F32, &g, x.f, dy.f,
                                                              partials, dw[0]));
        KERNEL_OK(
            mt_cuda_launch_direct_conv_backward_weights(NULL, st, &g, x.h, dy.h, partials, dw[1]));
        same_floats(FORMATS[k].name, CONV_WHAT("backward weights"), dw[1], dw[0], nw);
        if (mt_cuda_direct_weights_rows_supported(&g)) {
            KERNEL_OK(mt_cuda_launch_direct_conv_backward_weights_rows(NULL, MT_CUDA_F32, &g, x.f,
                                                                       dy.f, partials, dw[0]));
            KERNEL_OK(mt_cuda_launch_direct_conv_backward_weights_rows(NULL, st, &g, x.h, dy.h,
                                                                       partials, dw[1]));
            same_floats(FORMATS[k].name, CONV_WHAT("backward weights (rows)"), dw[1], dw[0], nw);
        }
    }
#undef CONV_WHAT
    t16_free(&x), t16_free(&dy), t16_free(&y), t16_free(&dx);
    free(w), free(y32), free(dx32), free(dw[0]), free(dw[1]), free(partials);
}

void mt_test_stored_kernels(void) {
    for (int k = 0; k < 2; k++) {
        check_elementwise(k, 1700, 0); /* the vector kernels */
        check_elementwise(k, 153, 0);  /* scalar: a count not a multiple of 4 */
        check_elementwise(k, 1700, 1); /* scalar: misaligned */
        check_input_pad_pool(k);
        /* float4 / 8-byte and scalar paths, several slices of the statistics (2704 rows of 24), two
         * columns of blocks (C = 1288), a large mean */
        check_batchnorm(k, (mt_shape4){4, 5, 5, 24}, 0, false);
        check_batchnorm(k, (mt_shape4){4, 26, 26, 24}, 0, false);
        check_batchnorm(k, (mt_shape4){4, 16, 16, 17}, 8, false);
        check_batchnorm(k, (mt_shape4){4, 16, 16, 40}, 8, true);
        check_batchnorm(k, (mt_shape4){2, 2, 3, 1288}, 0, false);
        /* Conv1 (3 -> 32, stride 2, pads 0/1) and 3 -> 6 (scalar channels), a generic direct
         * convolution, depthwise strides 1, 2 (asymmetric), 3, 5x5 taps, C = 17 (scalar) */
        check_conv(k, "direct 3x3/2 n4 16x16 3->32 pads 0,1", 4, 16, 3, 32, 3, 2, 0, 1, false);
        check_conv(k, "direct 3x3/1 n2 10x10 3->6 pads 1,1", 2, 10, 3, 6, 3, 1, 1, 1, false);
        check_conv(k, "direct 3x3/2 n2 6x6 40->17 pads 0,1", 2, 6, 40, 17, 3, 2, 0, 1, false);
        check_conv(k, "depthwise 3x3/1 n4 6x6 c24", 4, 6, 24, 24, 3, 1, 1, 1, true);
        check_conv(k, "depthwise 3x3/2 n4 8x8 c40 pads 0,1", 4, 8, 40, 40, 3, 2, 0, 1, true);
        check_conv(k, "depthwise 3x3/1 n1 5x5 c17", 1, 5, 17, 17, 3, 1, 1, 1, true);
        check_conv(k, "depthwise 3x3/3 n2 10x10 c8 pads 1,1", 2, 10, 8, 8, 3, 3, 1, 1, true);
        check_conv(k, "depthwise 5x5/1 n2 7x7 c33 pads 2,2", 2, 7, 33, 33, 5, 1, 2, 2, true);
        check_conv(k, "depthwise 3x3/1 n8 4x4 c1032 pads 1,1", 8, 4, 1032, 1032, 3, 1, 1, 1, true);
    }
}
