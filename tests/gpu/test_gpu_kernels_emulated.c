/* One file over 600 lines on purpose: one check per kernel family, all through the same
 * emulated launch and comparison helpers, so one ctest covers every kernel on every build. */
/* The cuda backend's own kernels (src/ops/cuda/cuda_kernels_*.cu) run on the CPU under a small
 * emulation of the CUDA launch (tests/gpu/emu: blocks in turn, a block's threads as real threads,
 * __syncthreads as a barrier) and compared with the reference backend: weight layout transforms,
 * depthwise and direct convolutions (all three passes, asymmetric pads, a 5x5 kernel whose taps
 * need several passes), batch norm (both modes, both directions, several reduction slices; the
 * legacy double kernels and the fp32 fused ones with and without ReLU6),
 * fp32 <-> bf16/fp16 casts (every 16-bit pattern decoded, ties and subnormals encoded),
 * zero padding, pooling, dropout (mask bit for bit), the dense helpers, the losses (the shared
 * per-row formula of ops/loss_row.h bit for bit, and a bad label), the input conversion (scale
 * and flip), add and ReLU6, and the optimizer update (cuda_optimizer.cu) for every rule; the
 * kernels' bf16 / fp16 storage against their fp32 instances (test_gpu_kernels_stored.c). The
 * kernels' index arithmetic and reductions are checked on every build, GPU or not; what this
 * cannot see is the GPU itself (memory model, launch limits, speed) and the cuDNN/cuBLAS glue:
 * tests/gpu/run.sh covers those on a lent GPU. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/cuda/cuda_kernels.h"
#include "ops/cuda/cuda_optimizer.h"
#include "ops/optimizer_update.h"
#include "ops/dropout_hash.h"
#include "ops/loss_accum.h"
#include "ops/loss_row.h"
#include "ops/precision.h"
#include "test_gpu_kernels_stored.h"
#include "test_util.h"

static mt_backend REF;
static uint64_t rng = 0x2545f4914f6cdd1dULL;

static float uniform(float lo, float hi) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return lo + (hi - lo) * (float)((double)(rng >> 11) / 9007199254740992.0);
}

static float *array(size_t count, float lo, float hi) {
    float *a = malloc((count ? count : 1) * sizeof *a);
    if (!a) abort();
    for (size_t i = 0; i < count; i++)
        a[i] = uniform(lo, hi);
    return a;
}

static float *zeros(size_t count) {
    float *a = calloc(count ? count : 1, sizeof *a);
    if (!a) abort();
    return a;
}

static int32_t *zeros_i32(int count) {
    int32_t *a = calloc(count ? (size_t)count : 1, sizeof *a);
    if (!a) abort();
    return a;
}

static mt_tensor wrap(mt_shape4 s, float *data) {
    return (mt_tensor){.shape = s, .data = data, .bytes = mt_shape4_count(s) * sizeof(float)};
}

/* max|got - want| <= tol * max(|want|, 1e-30) */
static void compare(const char *what, const float *got, const float *want, size_t count,
                    double tol) {
    double scale = 0.0, worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < count; i++)
        scale = fmax(scale, fabs(want[i]));
    if (scale == 0.0) scale = 1.0;
    for (size_t i = 0; i < count; i++) {
        double d = isnan(got[i]) ? INFINITY : fabs((double)got[i] - want[i]);
        if (d > worst) worst = d, at = i;
    }
    CHECK_MSG(worst <= tol * scale, "%s: max|diff|/scale %.2e > %.0e at [%zu]: got %.9g, want %.9g",
              what, worst / scale, tol, at, got[at], want[at]);
}

#define REF_OK(call) CHECK_MSG((call) == MT_OK, "%s: %s", #call, mt_last_error())
#define KERNEL_OK(call) CHECK((call) == cudaSuccess)

/* ---- convolutions ---------------------------------------------------------------------------- */

static void check_transforms(void) {
    const int rs = 9, cin = 5, cout = 7;
    size_t count = (size_t)rs * cin * cout;
    float *w = array(count, -1, 1), *krsc = zeros(count), *back = zeros(count);
    KERNEL_OK(mt_cuda_launch_hwio_to_krsc(NULL, w, krsc, rs, cin, cout));
    KERNEL_OK(mt_cuda_launch_krsc_to_hwio(NULL, krsc, back, rs, cin, cout));
    int misplaced = 0;
    for (int k = 0; k < cout; k++)
        for (int r = 0; r < rs; r++)
            for (int c = 0; c < cin; c++)
                misplaced +=
                    krsc[((size_t)k * rs + r) * cin + c] != w[((size_t)r * cin + c) * cout + k];
    CHECK_MSG(misplaced == 0, "hwio_to_krsc: %d elements misplaced", misplaced);
    compare("krsc_to_hwio round trip", back, w, count, 0);
    free(w), free(krsc), free(back);
}

static void check_conv(const char *name, int n, int size, int cin, int cout, int k, int stride,
                       int pt, int pb, bool depthwise) {
    mt_conv_desc d = {.input = {n, size, size, cin},
                      .out_channels = depthwise ? cin : cout,
                      .kernel = k,
                      .stride = stride,
                      .pad_top = pt,
                      .pad_left = pt,
                      .pad_bottom = pb,
                      .pad_right = pb,
                      .depthwise = depthwise};
    mt_shape4 o = mt_conv_output_shape(&d);
    const mt_cuda_conv_geom g = {.n = n,
                                 .h = size,
                                 .w = size,
                                 .cin = cin,
                                 .ho = o.h,
                                 .wo = o.w,
                                 .cout = o.c,
                                 .k = k,
                                 .stride = stride,
                                 .pad_top = pt,
                                 .pad_left = pt};
    size_t nx = mt_shape4_count(d.input), ny = mt_shape4_count(o);
    size_t nw = (size_t)k * k * cin * (depthwise ? 1 : cout);
    float *x = array(nx, -1, 1), *w = array(nw, -0.5f, 0.5f), *dy = array(ny, -1, 1);
    float *y[2] = {zeros(ny), zeros(ny)}, *dx[2] = {zeros(nx), zeros(nx)};
    float *dw[2] = {zeros(nw), zeros(nw)};
    mt_tensor tx = wrap(d.input, x), tdy = wrap(o, dy);
    mt_tensor ty = wrap(o, y[0]), tdx = wrap(d.input, dx[0]);
    REF_OK(mt_ops_reference.conv_forward(&REF, &d, &tx, w, &ty));
    REF_OK(mt_ops_reference.conv_backward_data(&REF, &d, &tdy, w, &tdx));
    REF_OK(mt_ops_reference.conv_backward_weights(&REF, &d, &tx, &tdy, dw[0]));
    float *partials = zeros((size_t)mt_cuda_reduce_parts((long)n * o.h * o.w) * nw);
    char what[160];
    if (depthwise) {
        KERNEL_OK(mt_cuda_launch_depthwise_forward(NULL, MT_CUDA_F32, &g, x, w, y[1]));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_data(NULL, MT_CUDA_F32, &g, dy, w, dx[1]));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_weights(NULL, MT_CUDA_F32, &g, x, dy, partials,
                                                            dw[1]));
    } else if (mt_cuda_direct_weights_rows_supported(&g)) { /* Conv1's kernel (the default) */
        float *dws = zeros(nw), *rows_partials = zeros(mt_cuda_direct_weights_rows_partials(&g));
        KERNEL_OK(mt_cuda_launch_direct_conv_backward_weights_rows(NULL, MT_CUDA_F32, &g, x, dy,
                                                                   rows_partials, dws));
        snprintf(what, sizeof what, "%s backward weights (rows)", name);
        compare(what, dws, dw[0], nw, 1e-5);
        free(dws), free(rows_partials);
    }
    if (!depthwise) {
        KERNEL_OK(mt_cuda_launch_direct_conv_forward(NULL, MT_CUDA_F32, &g, x, w, y[1]));
        KERNEL_OK(mt_cuda_launch_direct_conv_backward_data(NULL, MT_CUDA_F32, &g, dy, w, dx[1]));
        KERNEL_OK(mt_cuda_launch_direct_conv_backward_weights(NULL, MT_CUDA_F32, &g, x, dy,
                                                              partials, dw[1]));
    }
    if (depthwise) { /* the register-blocked kernels (the default) on the same data */
        float *ys = zeros(ny), *dxs = zeros(nx), *dws = zeros(nw);
        float *rows_partials = zeros(mt_cuda_depthwise_weights_rows_partials(&g));
        KERNEL_OK(mt_cuda_launch_depthwise_forward_strip(NULL, MT_CUDA_F32, &g, x, w, ys));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_data_strip(NULL, MT_CUDA_F32, &g, dy, w, dxs));
        KERNEL_OK(mt_cuda_launch_depthwise_backward_weights_rows(NULL, MT_CUDA_F32, &g, x, dy,
                                                                 rows_partials, dws));
        snprintf(what, sizeof what, "%s backward weights (rows)", name);
        compare(what, dws, dw[0], nw, 1e-5);
        free(dws), free(rows_partials);
        snprintf(what, sizeof what, "%s forward (strips)", name);
        compare(what, ys, y[0], ny, 1e-5);
        snprintf(what, sizeof what, "%s backward data (strips)", name);
        compare(what, dxs, dx[0], nx, 1e-5);
        free(ys), free(dxs);
    }
    snprintf(what, sizeof what, "%s forward", name);
    compare(what, y[1], y[0], ny, 1e-5);
    snprintf(what, sizeof what, "%s backward data", name);
    compare(what, dx[1], dx[0], nx, 1e-5);
    snprintf(what, sizeof what, "%s backward weights", name);
    compare(what, dw[1], dw[0], nw, 1e-5);
    for (int i = 0; i < 2; i++)
        free(y[i]), free(dx[i]), free(dw[i]);
    free(x), free(w), free(dy), free(partials);
}

/* ---- batch normalization --------------------------------------------------------------------- */

static void check_batchnorm(mt_shape4 s, float offset) {
    const int C = s.c;
    const long m = (long)s.n * s.h * s.w;
    size_t count = mt_shape4_count(s);
    mt_batchnorm_desc d = {.shape = s, .epsilon = 1e-3f, .momentum = 0.999f};
    float *x = array(count, -1 + offset, 3 + offset), *dy = array(count, -1, 1);
    float *gamma = array(C, 0.5f, 1.5f), *beta = array(C, -0.5f, 0.5f);
    float *mm[2] = {array(C, -1, 1), NULL}, *mv[2] = {array(C, 0.2f, 2), NULL};
    mm[1] = malloc(C * sizeof(float)), mv[1] = malloc(C * sizeof(float));
    memcpy(mm[1], mm[0], C * sizeof(float)), memcpy(mv[1], mv[0], C * sizeof(float));
    float *y[2] = {zeros(count), zeros(count)}, *dx[2] = {zeros(count), zeros(count)};
    float *sm[2] = {zeros(C), zeros(C)}, *si[2] = {zeros(C), zeros(C)};
    float *dg[2] = {zeros(C), zeros(C)}, *db[2] = {zeros(C), zeros(C)};
    double *scratch = calloc(mt_cuda_bn_scratch_doubles(m, C), sizeof(double));
    mt_tensor tx = wrap(s, x), tdy = wrap(s, dy), ty = wrap(s, y[0]), tdx = wrap(s, dx[0]);
    char what[120];
#define BN_COMPARE(label, pair, len)                                                               \
    do {                                                                                           \
        snprintf(what, sizeof what, "bn %dx%dx%dx%d %s", s.n, s.h, s.w, s.c, label);               \
        compare(what, (pair)[1], (pair)[0], len, 1e-5);                                            \
    } while (0)

    REF_OK(mt_ops_reference.batchnorm_forward_training(&REF, &d, &tx, gamma, beta, mm[0], mv[0],
                                                       &ty, sm[0], si[0]));
    KERNEL_OK(mt_cuda_launch_bn_forward_training(NULL, m, C, d.epsilon, d.momentum, x, gamma, beta,
                                                 mm[1], mv[1], y[1], sm[1], si[1], scratch));
    BN_COMPARE("training y", y, count);
    BN_COMPARE("saved mean", sm, C);
    BN_COMPARE("saved inv std", si, C);
    BN_COMPARE("moving mean", mm, C);
    BN_COMPARE("moving variance", mv, C);

    REF_OK(mt_ops_reference.batchnorm_backward_training(&REF, &d, &tx, &tdy, gamma, sm[0], si[0],
                                                        &tdx, dg[0], db[0]));
    KERNEL_OK(mt_cuda_launch_bn_backward(NULL, m, C, d.epsilon, 1, x, dy, gamma, sm[0], si[0],
                                         dx[1], dg[1], db[1], scratch));
    BN_COMPARE("training dx", dx, count);
    BN_COMPARE("training dgamma", dg, C);
    BN_COMPARE("training dbeta", db, C);
    memset(dx[1], 0, count * sizeof(float));
    KERNEL_OK(mt_cuda_launch_bn_backward(NULL, m, C, d.epsilon, 1, x, dy, gamma, sm[0], si[0],
                                         dx[1], NULL, NULL, scratch));
    BN_COMPARE("training dx (no dgamma/dbeta)", dx, count);

    REF_OK(mt_ops_reference.batchnorm_forward_inference(&REF, &d, &tx, gamma, beta, mm[0], mv[0],
                                                        &ty));
    KERNEL_OK(mt_cuda_launch_bn_forward_inference(NULL, m, C, d.epsilon, x, gamma, beta, mm[0],
                                                  mv[0], y[1], scratch));
    BN_COMPARE("inference y", y, count);
    REF_OK(mt_ops_reference.batchnorm_backward_inference(&REF, &d, &tx, &tdy, gamma, mm[0], mv[0],
                                                         &tdx, dg[0], db[0]));
    KERNEL_OK(mt_cuda_launch_bn_backward(NULL, m, C, d.epsilon, 0, x, dy, gamma, mm[0], mv[0],
                                         dx[1], dg[1], db[1], scratch));
    BN_COMPARE("inference dx", dx, count);
    BN_COMPARE("inference dgamma", dg, C);
    BN_COMPARE("inference dbeta", db, C);
    memset(dg[1], 0, C * sizeof(float));
    KERNEL_OK(mt_cuda_launch_bn_backward(NULL, m, C, d.epsilon, 0, x, dy, gamma, mm[0], mv[0], NULL,
                                         dg[1], NULL, scratch));
    BN_COMPARE("inference dgamma (no dx)", dg, C);
    memset(dx[1], 0, count * sizeof(float));
    KERNEL_OK(mt_cuda_launch_bn_backward(NULL, m, C, d.epsilon, 0, x, dy, gamma, mm[0], mv[0],
                                         dx[1], NULL, NULL, scratch));
    BN_COMPARE("inference dx (no dgamma/dbeta)", dx, count);
    /* y = x in place */
    KERNEL_OK(mt_cuda_launch_bn_forward_inference(NULL, m, C, d.epsilon, x, gamma, beta, mm[0],
                                                  mv[0], x, scratch));
    float *inplace[2] = {y[0], x};
    BN_COMPARE("inference y = x", inplace, count);
#undef BN_COMPARE
    for (int i = 0; i < 2; i++)
        free(mm[i]), free(mv[i]), free(y[i]), free(dx[i]), free(sm[i]), free(si[i]), free(dg[i]),
            free(db[i]);
    free(x), free(dy), free(gamma), free(beta), free(scratch);
}

/* The fp32 fused kernels (the default), against the reference, relu6 on and off:
 *   forward training: y, saved mean and inverse std, the moving statistics;
 *   forward inference (also in place), backward inference (dx alone, dgamma alone);
 *   backward training: relu6_backward then batchnorm_backward_training of the reference, with
 *   the reference's y as ReLU6's output, and the plain backward (y NULL); dgamma/dbeta NULL.
 * Error model (fp32, u = 2^-24). A thread sums at most R = BN_ROWS_PER_THREAD (64) rows, the block
 * adds at most 256 such sums (its rows), the slices are added in double: recursive summation
 * bounds the error of each sum by (R + rows - 1) u sum|terms| <= 320 u sum|terms|, in practice
 * sqrt of that. Statistics: the forward sums run on x - k with k the channel's value in row 0, so
 * sum|terms| = sum|x - k| <= M (sigma + |mean - k|) and the variance's relative error is at most
 * 320 u (1 + (mean - k)^2 / var): for these inputs (uniform, |mean - k| <= 2 sigma) below 2.0e-4
 * in the worst case and ~1e-6 in practice, against 1e-5 here; a large mean (offset 8) costs
 * nothing since k sits in the data. y, dx are then a few fp32 roundings of O(1) terms. dgamma
 * and dbeta are sums of M terms of random sign, whose size relative to sum|terms| is about
 * 1/sqrt(M): bound 320 u sqrt(M) ~ 6e-4 for M = 2704, practice ~1e-6. The test's tolerance is
 * 1e-5 of the largest value for every output, as for the legacy double kernels; measured here
 * (emulated, these shapes): at most 6e-7. */
static void check_batchnorm_fused(mt_shape4 s, float offset, bool misaligned) {
    const int C = s.c;
    const long m = (long)s.n * s.h * s.w;
    size_t count = mt_shape4_count(s);
    mt_batchnorm_desc d = {.shape = s, .epsilon = 1e-3f, .momentum = 0.99f};
    /* misaligned: every array starts 4 bytes after a 16-byte boundary, forcing the scalar path */
    const size_t skew = misaligned ? 1 : 0;
    float *xbuf = array(count + 4, -1 + offset, 3 + offset), *x = xbuf + skew;
    float *dybuf = array(count + 4, -1, 1), *dy = dybuf + skew;
    float *gamma = array(C, 0.5f, 1.5f), *beta = array(C, 0.5f, 2.5f);
    float *mm[2] = {array(C, -1, 1), zeros(C)}, *mv[2] = {array(C, 0.2f, 2), zeros(C)};
    float *ybuf[2] = {zeros(count + 4), zeros(count + 4)}, *y[2] = {ybuf[0] + skew, ybuf[1] + skew};
    float *dxbuf[2] = {zeros(count + 4), zeros(count + 4)};
    float *dx[2] = {dxbuf[0] + skew, dxbuf[1] + skew};
    float *rdy = zeros(count);
    float *sm[2] = {zeros(C), zeros(C)}, *si[2] = {zeros(C), zeros(C)};
    float *dg[2] = {zeros(C), zeros(C)}, *db[2] = {zeros(C), zeros(C)};
    float *scratch = zeros(mt_cuda_bn_fused_scratch_floats(m, C));
    unsigned *counters = calloc((size_t)mt_cuda_bn_fused_counters(C), sizeof *counters);
    mt_tensor tx = wrap(s, x), tdy = wrap(s, dy), ty = wrap(s, y[0]), tdx = wrap(s, dx[0]);
    mt_tensor trdy = wrap(s, rdy);
    char what[160];
#define FUSED_COMPARE(label, pair, len)                                                            \
    do {                                                                                           \
        snprintf(what, sizeof what, "fused bn %dx%dx%dx%d%s %s", s.n, s.h, s.w, s.c,               \
                 misaligned ? " (scalar)" : "", label);                                            \
        compare(what, (pair)[1], (pair)[0], len, 1e-5);                                            \
    } while (0)
    for (int relu6 = 0; relu6 < 2; relu6++) {
        memcpy(mm[1], mm[0], C * sizeof(float)), memcpy(mv[1], mv[0], C * sizeof(float));
        REF_OK(mt_ops_reference.batchnorm_forward_training(&REF, &d, &tx, gamma, beta, mm[0], mv[0],
                                                           &ty, sm[0], si[0]));
        if (relu6) REF_OK(mt_ops_reference.relu6_forward(&REF, &ty, &ty));
        KERNEL_OK(mt_cuda_launch_bn_fused_forward_training(
            NULL, MT_CUDA_F32, m, C, d.epsilon, d.momentum, relu6, x, gamma, beta, mm[1], mv[1],
            y[1], sm[1], si[1], scratch, counters));
        FUSED_COMPARE(relu6 ? "training y = relu6(bn)" : "training y", y, count);
        FUSED_COMPARE("saved mean", sm, C);
        FUSED_COMPARE("saved inv std", si, C);
        FUSED_COMPARE("moving mean", mm, C);
        FUSED_COMPARE("moving variance", mv, C);
        for (int i = 0; i < mt_cuda_bn_fused_counters(C); i++)
            CHECK_MSG(counters[i] == 0, "fused bn: counter %d left at %u", i, counters[i]);

        /* backward from the same statistics and (with relu6) the same ReLU6 output */
        if (relu6)
            REF_OK(mt_ops_reference.relu6_backward(&REF, &ty, &tdy, &trdy));
        else
            memcpy(rdy, dy, count * sizeof(float));
        REF_OK(mt_ops_reference.batchnorm_backward_training(&REF, &d, &tx, &trdy, gamma, sm[0],
                                                            si[0], &tdx, dg[0], db[0]));
        KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, d.epsilon, 1, x,
                                                   relu6 ? y[0] : NULL, dy, gamma, sm[0], si[0],
                                                   dx[1], dg[1], db[1], scratch, counters));
        FUSED_COMPARE(relu6 ? "training dx (through relu6)" : "training dx", dx, count);
        FUSED_COMPARE("training dgamma", dg, C);
        FUSED_COMPARE("training dbeta", db, C);
        /* dx in place of dy, no dgamma/dbeta */
        float *inplace = zeros(count + 4), *ip = inplace + skew;
        memcpy(ip, dy, count * sizeof(float));
        KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, d.epsilon, 1, x,
                                                   relu6 ? y[0] : NULL, ip, gamma, sm[0], si[0], ip,
                                                   NULL, NULL, scratch, counters));
        float *pair[2] = {dx[0], ip};
        FUSED_COMPARE("training dx = dy in place, no dgamma/dbeta", pair, count);
        free(inplace);
    }
    REF_OK(mt_ops_reference.batchnorm_forward_inference(&REF, &d, &tx, gamma, beta, mm[0], mv[0],
                                                        &ty));
    KERNEL_OK(mt_cuda_launch_bn_fused_forward_inference(NULL, MT_CUDA_F32, m, C, d.epsilon, x,
                                                        gamma, beta, mm[0], mv[0], y[1]));
    FUSED_COMPARE("inference y", y, count);
    KERNEL_OK(mt_cuda_launch_bn_fused_forward_inference(NULL, MT_CUDA_F32, m, C, d.epsilon, x,
                                                        gamma, beta, mm[0], mv[0], x));
    float *inplace[2] = {y[0], x};
    FUSED_COMPARE("inference y = x in place", inplace, count);
    /* inference backward: every output, then dx alone (one launch), then dgamma/dbeta alone */
    REF_OK(mt_ops_reference.batchnorm_backward_inference(&REF, &d, &tx, &tdy, gamma, mm[0], mv[0],
                                                         &tdx, dg[0], db[0]));
    KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, d.epsilon, 0, x, NULL, dy,
                                               gamma, mm[0], mv[0], dx[1], dg[1], db[1], scratch,
                                               counters));
    FUSED_COMPARE("inference dx", dx, count);
    FUSED_COMPARE("inference dgamma", dg, C);
    FUSED_COMPARE("inference dbeta", db, C);
    memset(dx[1], 0, count * sizeof(float)), memset(dg[1], 0, C * sizeof(float));
    KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, d.epsilon, 0, x, NULL, dy,
                                               gamma, mm[0], mv[0], dx[1], NULL, NULL, scratch,
                                               counters));
    FUSED_COMPARE("inference dx (no dgamma/dbeta)", dx, count);
    KERNEL_OK(mt_cuda_launch_bn_fused_backward(NULL, MT_CUDA_F32, m, C, d.epsilon, 0, x, NULL, dy,
                                               gamma, mm[0], mv[0], NULL, dg[1], NULL, scratch,
                                               counters));
    FUSED_COMPARE("inference dgamma (no dx)", dg, C);
    for (int i = 0; i < mt_cuda_bn_fused_counters(C); i++)
        CHECK_MSG(counters[i] == 0, "fused bn: counter %d left at %u", i, counters[i]);
#undef FUSED_COMPARE
    for (int i = 0; i < 2; i++)
        free(mm[i]), free(mv[i]), free(ybuf[i]), free(dxbuf[i]), free(sm[i]), free(si[i]),
            free(dg[i]), free(db[i]);
    free(xbuf), free(dybuf), free(rdy), free(gamma), free(beta), free(scratch), free(counters);
}

/* ---- precision casts ------------------------------------------------------------------------- */

/* The value of a 16-bit pattern with `mant` mantissa bits and exponent bias `bias` (1 sign, the
 * rest exponent), from the IEEE definition in double. */
static double ref_decode(unsigned bits, int mant, int bias) {
    const int e = (int)(bits >> mant) & ((1 << (15 - mant)) - 1), emax = (1 << (15 - mant)) - 1;
    const double m = (double)(bits & ((1u << mant) - 1));
    const double sign = bits & 0x8000u ? -1.0 : 1.0;
    if (e == emax) return m ? NAN : sign * INFINITY;
    if (e == 0) return sign * ldexp(m, 1 - bias - mant);
    return sign * ldexp(1.0 + ldexp(m, -mant), e - bias);
}

/* x rounded to the format in double: the spacing at x's binade (the subnormal one below 2^emin),
 * nearbyint's ties to even, infinity above the largest finite value. */
static double ref_round(float x, int mant, int emin, double max_finite) {
    if (isnan(x)) return NAN;
    const double a = fabs((double)x);
    if (a == 0.0 || isinf(x)) return x;
    int e;
    frexp(a, &e);
    const int lead = e - 1 < emin ? emin : e - 1;
    const double step = ldexp(1.0, lead - mant);
    double r = nearbyint(a / step) * step;
    if (r > max_finite) r = INFINITY;
    return copysign(r, (double)x);
}

static void check_casts(void) {
    static const struct {
        const char *name;
        int format, mant, bias, emin;
        double max_finite;
    } formats[] = {{"bf16", 0, 7, 127, -126, 0x1.fep127}, {"fp16", 1, 10, 15, -14, 65504.0}};
    enum { RANDOM = 20000 };
    static const float specials[] = {0.0f,
                                     -0.0f,
                                     1.0f,
                                     -1.0f,
                                     1.00390625f /* 1 + 2^-8: bf16 tie, to even (1) */,
                                     1.01171875f /* 1 + 3*2^-8: bf16 tie, up */,
                                     1.00048828125f /* 1 + 2^-11: fp16 tie */,
                                     1.00146484375f /* 1 + 3*2^-11: fp16 tie, up */,
                                     65504.0f,
                                     65519.99f,
                                     65520.0f,
                                     1e9f,
                                     2.98023224e-8f /* 2^-25: fp16 subnormal tie, to 0 */,
                                     8.94069672e-8f /* 3*2^-25: up */,
                                     6.10351562e-5f /* 2^-14 */,
                                     6.09755516e-5f /* just below: the largest subnormal region */,
                                     1e-30f,
                                     1.17549435e-38f,
                                     1e-45f,
                                     3.40282347e38f,
                                     INFINITY,
                                     -INFINITY,
                                     NAN};
    const size_t nspecial = sizeof specials / sizeof specials[0], count = nspecial + RANDOM;
    float *x = malloc(count * sizeof *x), *back = malloc(count * sizeof *back);
    uint16_t *half = malloc(count * sizeof *half);
    float *all = malloc(65536 * sizeof *all);
    uint16_t *patterns = malloc(65536 * sizeof *patterns);
    if (!x || !back || !half || !all || !patterns) abort();
    memcpy(x, specials, sizeof specials);
    for (size_t i = nspecial; i < count; i++) { /* random bit patterns: every binade, both signs */
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        uint32_t u = (uint32_t)(rng >> 32);
        if (i % 2) u = (u & 0x807fffffu) | ((uint32_t)(96 + rng % 64) << 23); /* near fp16 range */
        memcpy(&x[i], &u, sizeof u);
    }
    for (unsigned i = 0; i < 65536; i++)
        patterns[i] = (uint16_t)i;
    for (int f = 0; f < 2; f++) {
        const int mant = formats[f].mant, bias = formats[f].bias;
        /* decoding every pattern is exact */
        KERNEL_OK(mt_cuda_launch_cast_to_f32(NULL, 65536, formats[f].format, patterns, all));
        int wrong = 0, first = -1;
        for (unsigned i = 0; i < 65536; i++) {
            const double want = ref_decode(i, mant, bias);
            const bool ok = isnan(want)
                                ? isnan(all[i])
                                : (double)all[i] == want && !signbit(all[i]) == !signbit(want);
            if (!ok && wrong++ == 0) first = (int)i;
        }
        CHECK_MSG(wrong == 0, "%s -> fp32: %d of 65536 patterns wrong, first 0x%04x: got %.9g",
                  formats[f].name, wrong, (unsigned)first, first >= 0 ? all[first] : 0.0);
        /* encoding: the pattern's value is x rounded to nearest, ties to even */
        KERNEL_OK(mt_cuda_launch_cast_from_f32(NULL, count, formats[f].format, x, half));
        wrong = 0, first = -1;
        for (size_t i = 0; i < count; i++) {
            const double want = ref_round(x[i], mant, formats[f].emin, formats[f].max_finite);
            const double got = ref_decode(half[i], mant, bias);
            const bool ok =
                isnan(want) ? isnan(got) : got == want && !signbit(got) == !signbit(want);
            if (!ok && wrong++ == 0) first = (int)i;
        }
        CHECK_MSG(
            wrong == 0,
            "fp32 -> %s: %d of %zu values wrong, first %.9g -> 0x%04x (%.9g), "
            "want %.9g",
            formats[f].name, wrong, count, first >= 0 ? x[first] : 0.0,
            first >= 0 ? half[first] : 0u, first >= 0 ? ref_decode(half[first], mant, bias) : 0.0,
            first >= 0 ? ref_round(x[first], mant, formats[f].emin, formats[f].max_finite) : 0.0);
        /* the same patterns as the C rounding the reference backend's bf16/fp16 emulation uses
         * (src/ops/precision.c): the reference is what a GPU run in that precision must match */
        wrong = 0, first = -1;
        for (size_t i = 0; i < count; i++) {
            const uint16_t want =
                formats[f].format ? mt_f32_to_fp16_bits(x[i]) : mt_f32_to_bf16_bits(x[i]);
            const bool nan = isnan(x[i]);
            if ((nan ? !isnan(ref_decode(half[i], mant, bias)) : half[i] != want) && wrong++ == 0)
                first = (int)i;
        }
        CHECK_MSG(wrong == 0, "fp32 -> %s: %d of %zu patterns differ from ops/precision.c's, first "
                  "%.9g -> 0x%04x", formats[f].name, wrong, count, first >= 0 ? x[first] : 0.0,
                  first >= 0 ? half[first] : 0u);
        for (unsigned i = 0; i < 65536; i++) {
            const float want = formats[f].format ? mt_fp16_bits_to_f32((uint16_t)i)
                                                 : mt_bf16_bits_to_f32((uint16_t)i);
            if (isnan(want) ? !isnan(all[i]) : memcmp(&want, &all[i], sizeof want) != 0) {
                CHECK_MSG(0, "%s 0x%04x -> fp32: %.9g, ops/precision.c %.9g", formats[f].name, i,
                          all[i], want);
                break;
            }
        }
        /* the fp32 -> 16 bits -> fp32 kernel (the conv weights' rounding) in place, against the
         * C rounding */
        memcpy(back, x, count * sizeof *back);
        KERNEL_OK(mt_cuda_launch_round_f32(NULL, count, formats[f].format, back, back));
        wrong = 0, first = -1;
        for (size_t i = 0; i < count; i++) {
            const float want = formats[f].format ? mt_round_fp16(x[i]) : mt_round_bf16(x[i]);
            if ((isnan(want) ? !isnan(back[i]) : memcmp(&want, &back[i], sizeof want) != 0) &&
                wrong++ == 0)
                first = (int)i;
        }
        CHECK_MSG(wrong == 0, "round_f32 %s: %d of %zu values differ from ops/precision.c's, "
                  "first %.9g -> %.9g", formats[f].name, wrong, count, first >= 0 ? x[first] : 0.0,
                  first >= 0 ? back[first] : 0.0);
        /* and back: the round trip of an fp16/bf16 value is the identity */
        KERNEL_OK(mt_cuda_launch_cast_to_f32(NULL, count, formats[f].format, half, back));
        KERNEL_OK(mt_cuda_launch_cast_from_f32(NULL, count, formats[f].format, back, patterns));
        wrong = 0;
        for (size_t i = 0; i < count; i++)
            wrong += isnan(back[i]) ? !isnan(ref_decode(patterns[i], mant, bias))
                                    : patterns[i] != half[i];
        CHECK_MSG(wrong == 0, "%s round trip: %d values changed", formats[f].name, wrong);
        for (unsigned i = 0; i < 65536; i++)
            patterns[i] = (uint16_t)i;
    }
    free(x), free(back), free(half), free(all), free(patterns);
}

/* buffer_scale (fp16's loss scale) against the host rule every CPU backend uses */
static void check_buffer_scale(void) {
    enum { COUNT = 5000 };
    float *x = array(COUNT, -4, 4), *y = malloc(COUNT * sizeof *y);
    if (!y) abort();
    memcpy(y, x, COUNT * sizeof *y);
    float flags[2] = {0, 0};
    const float factors[] = {0.25f, 2.0f, 1.0f}; /* device memory in the emulation */
    KERNEL_OK(mt_cuda_launch_buffer_scale(NULL, x, COUNT, &factors[0], &flags[1]));
    mt_host_buffer_scale(y, COUNT, 0.25f, &flags[0]);
    compare("buffer_scale x 1/4", x, y, COUNT, 0);
    CHECK_MSG(flags[0] == 0.0f && flags[1] == 0.0f, "buffer_scale: finite products set the flag");
    x[COUNT - 1] = y[COUNT - 1] = 3e38f;
    KERNEL_OK(mt_cuda_launch_buffer_scale(NULL, x, COUNT, &factors[1], &flags[1]));
    mt_host_buffer_scale(y, COUNT, 2.0f, &flags[0]);
    CHECK_MSG(flags[1] == 1.0f && flags[0] == 1.0f, "buffer_scale: an overflow left the flag %g",
              flags[1]);
    KERNEL_OK(mt_cuda_launch_buffer_scale(NULL, x, COUNT, &factors[2], NULL)); /* no flag */
    free(x), free(y);
}

/* scalars_write: the bytes given by value land in device memory, those after them untouched */
static void check_scalars_write(void) {
    unsigned char got[MT_SCALARS_MAX_BYTES + 4];
    memset(got, 0xAB, sizeof got);
    for (size_t bytes = 1; bytes <= MT_SCALARS_MAX_BYTES; bytes += 21) {
        mt_cuda_scalars values;
        for (size_t i = 0; i < sizeof values.bytes; i++)
            values.bytes[i] = (unsigned char)(i * 7 + bytes);
        KERNEL_OK(mt_cuda_launch_scalars_write(NULL, got, &values, bytes));
        CHECK_MSG(memcmp(got, values.bytes, bytes) == 0, "scalars_write of %zu bytes", bytes);
        CHECK_MSG(got[MT_SCALARS_MAX_BYTES] == 0xAB, "scalars_write of %zu bytes wrote past them",
                  bytes);
    }
}

/* ---- everything else --------------------------------------------------------------------------
 */

static void check_pad(mt_shape4 in, int top, int left, int bottom, int right) {
    mt_zero_pad_desc d = {.input = in, .top = top, .left = left, .bottom = bottom, .right = right};
    mt_shape4 o = {in.n, in.h + top + bottom, in.w + left + right, in.c};
    size_t nx = mt_shape4_count(in), ny = mt_shape4_count(o);
    float *x = array(nx, -1, 1), *dy = array(ny, -1, 1);
    float *y[2] = {zeros(ny), zeros(ny)}, *dx[2] = {zeros(nx), zeros(nx)};
    mt_tensor tx = wrap(in, x), ty = wrap(o, y[0]), tdy = wrap(o, dy), tdx = wrap(in, dx[0]);
    REF_OK(mt_ops_reference.zero_pad_forward(&REF, &d, &tx, &ty));
    REF_OK(mt_ops_reference.zero_pad_backward(&REF, &d, &tdy, &tdx));
    KERNEL_OK(mt_cuda_launch_zero_pad_forward(NULL, MT_CUDA_F32, in.n, in.h, in.w, in.c, o.h, o.w,
                                              top, left, x, y[1]));
    KERNEL_OK(mt_cuda_launch_zero_pad_backward(NULL, MT_CUDA_F32, in.n, in.h, in.w, in.c, o.h, o.w,
                                               top, left, dy, dx[1]));
    compare("zero_pad forward", y[1], y[0], ny, 0);
    compare("zero_pad backward", dx[1], dx[0], nx, 0);
    for (int i = 0; i < 2; i++)
        free(y[i]), free(dx[i]);
    free(x), free(dy);
}

static void check_pool(mt_shape4 s) {
    size_t nx = mt_shape4_count(s), ny = (size_t)s.n * s.c;
    float *x = array(nx, 0, 6), *dy = array(ny, -1, 1);
    float *y[2] = {zeros(ny), zeros(ny)}, *dx[2] = {zeros(nx), zeros(nx)};
    mt_tensor tx = wrap(s, x), tdx = wrap(s, dx[0]);
    REF_OK(mt_ops_reference.global_avg_pool_forward(&REF, &tx, y[0]));
    REF_OK(mt_ops_reference.global_avg_pool_backward(&REF, dy, &tdx));
    KERNEL_OK(
        mt_cuda_launch_avg_pool_forward(NULL, MT_CUDA_F32, s.n, (long)s.h * s.w, s.c, x, y[1]));
    KERNEL_OK(
        mt_cuda_launch_avg_pool_backward(NULL, MT_CUDA_F32, s.n, (long)s.h * s.w, s.c, dy, dx[1]));
    compare("global_avg_pool forward", y[1], y[0], ny, 1e-6);
    compare("global_avg_pool backward", dx[1], dx[0], nx, 1e-6);
    for (int i = 0; i < 2; i++)
        free(y[i]), free(dx[i]);
    free(x), free(dy);
}

static void check_dropout(size_t count, float rate, uint64_t seed) {
    float *x = array(count, -1, 1), *dy = array(count, -1, 1);
    float *y[2] = {zeros(count), zeros(count)}, *dx[2] = {zeros(count), zeros(count)};
    uint8_t *mask[2] = {calloc(count, 1), calloc(count, 1)};
    REF_OK(mt_ops_reference.dropout_forward(&REF, count, rate, &seed, x, y[0], mask[0]));
    REF_OK(mt_ops_reference.dropout_backward(&REF, count, rate, mask[0], dy, dx[0]));
    const float scale = 1.0f / (1.0f - rate);
    KERNEL_OK(mt_cuda_launch_dropout_forward(NULL, count, &seed, mt_dropout_threshold(rate), scale,
                                             x, y[1], mask[1]));
    KERNEL_OK(mt_cuda_launch_dropout_backward(NULL, count, scale, mask[1], dy, dx[1]));
    CHECK_MSG(memcmp(mask[0], mask[1], count) == 0, "dropout masks differ (rate %g)", rate);
    compare("dropout forward", y[1], y[0], count, 0);
    compare("dropout backward", dx[1], dx[0], count, 0);
    for (int i = 0; i < 2; i++)
        free(y[i]), free(dx[i]), free(mask[i]);
    free(x), free(dy);
}

static void check_dense_helpers(int rows, int cols) {
    float *b = array(cols, -1, 1), *a = array((size_t)rows * cols, -1, 1);
    float *y = zeros((size_t)rows * cols), *sums = zeros(cols), *want = zeros(cols);
    KERNEL_OK(mt_cuda_launch_broadcast_rows(NULL, rows, cols, b, y));
    int wrong = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            wrong += y[(size_t)r * cols + c] != b[c];
    CHECK_MSG(wrong == 0, "broadcast_rows: %d wrong", wrong);
    /* the reference dense backward's db is the column sum */
    mt_dense_desc d = {.batch = rows, .in_features = 1, .out_features = cols};
    float x1[64] = {0}, w1[64] = {0};
    REF_OK(mt_ops_reference.dense_backward(&REF, &d, x1, w1, a, NULL, NULL, want));
    KERNEL_OK(mt_cuda_launch_column_sums(NULL, rows, cols, a, sums));
    compare("column_sums", sums, want, cols, 1e-6);
    free(b), free(a), free(y), free(sums), free(want);
}

static void check_loss(int batch, int classes, const int32_t *labels, int bad_row) {
    size_t nz = (size_t)batch * classes;
    float *z = array(nz, -4, 4), *dz[2] = {zeros(nz), zeros(nz)};
    z[0] = 30.0f;
    if (nz > 2) z[nz - 1] = -75.0f; /* where exp(z) underflows a naive sigmoid's float */
    double result[3] = {-1, -1, -2};
    KERNEL_OK(mt_cuda_launch_loss(NULL, batch, classes, z, labels, dz[1], result));
    CHECK_MSG((int)result[2] == bad_row, "loss: bad row %d, expected %d", (int)result[2], bad_row);
    if (bad_row < 0) {
        mt_loss_desc d = {.batch = batch, .classes = classes};
        float loss = 0;
        REF_OK(mt_ops_reference.loss_forward_backward(&REF, &d, z, labels, &loss, dz[0]));
        float got = (float)result[0];
        compare("loss", &got, &loss, 1, 1e-6);
        compare("dlogits", dz[1], dz[0], nz, 1e-6);
        /* Under the emulation the kernel runs the reference's per-row formula (ops/loss_row.h)
         * on the same libm, and with a row per thread it sums the rows in the reference's order:
         * any difference at all, even in the double mean, is a formula of the kernel's own. */
        int valid = 0;
        for (int n = 0; n < batch; n++)
            valid += labels[n] >= 0;
        const double inv_valid = valid ? 1.0 / valid : 0.0;
        double total = 0.0;
        for (int n = 0; n < batch; n++)
            total += mt_loss_row(z + (size_t)n * classes, classes, labels[n], inv_valid, NULL);
        CHECK_MSG(result[0] == total * inv_valid,
                  "loss: %.17g, ops/loss_row.h's %.17g: not the shared formula", result[0],
                  total * inv_valid);
        CHECK_MSG(memcmp(dz[1], dz[0], nz * sizeof(float)) == 0,
                  "dlogits: not bit for bit the reference's (a formula of the kernel's own?)");
        KERNEL_OK(mt_cuda_launch_loss(NULL, batch, classes, z, labels, NULL, result));
        got = (float)result[0];
        compare("loss (no dlogits)", &got, &loss, 1, 1e-6);
    }
    free(z), free(dz[0]), free(dz[1]);
}

/* loss_accumulate over three steps (the second with a NaN logit) into the kernel's and the
 * reference's accumulators: the loss sums (double sums of the same float means: a few float
 * ulps of the mean, 1e-6), the counts and the skip bookkeeping exactly, dlogits as the loss's. */
static void check_loss_accumulate(int batch, int classes, const int32_t *labels) {
    size_t nz = (size_t)batch * classes;
    float *z = array(nz, -4, 4), *dz[2] = {zeros(nz), zeros(nz)};
    double accum[2][MT_ACCUM_COUNT] = {{0}};
    float skip[2] = {-1, -1};
    mt_loss_desc d = {.batch = batch, .classes = classes};
    const uint64_t steps[3] = {40, 41, 42};
    int labelled = -1; /* the NaN goes into a labelled row (a padding row's logits are unused) */
    for (int n = batch - 1; n >= 0; n--)
        if (labels[n] >= 0) labelled = n;
    const bool nan_step = labelled >= 0;
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < nz; i++)
            z[i] = uniform(-4, 4);
        if (s == 1 && nan_step) z[(size_t)labelled * classes] = NAN;
        REF_OK(mt_ops_reference.loss_accumulate(&REF, &d, z, labels, dz[0], &steps[s], accum[0],
                                                &skip[0]));
        KERNEL_OK(mt_cuda_launch_loss_accumulate(NULL, batch, classes, z, labels, dz[1], &steps[s],
                                                 accum[1], &skip[1]));
        if (s != 1 || !nan_step) compare("loss_accumulate dlogits", dz[1], dz[0], nz, 1e-6);
        for (int k = 0; k < 2; k++)
            CHECK_MSG(skip[k] == (s == 1 && nan_step ? 1.0f : 0.0f),
                      "loss_accumulate (%s): skip flag %g after step %d",
                      k ? "kernel" : "reference", (double)skip[k], s);
    }
    float got = (float)accum[1][MT_ACCUM_LOSS_SUM], want = (float)accum[0][MT_ACCUM_LOSS_SUM];
    compare("loss_accumulate loss sum", &got, &want, 1, 1e-6);
    for (int k = MT_ACCUM_CORRECT; k < MT_ACCUM_COUNT; k++)
        CHECK_MSG(accum[1][k] == accum[0][k], "loss_accumulate slot %d: %g, reference %g", k,
                  accum[1][k], accum[0][k]);
    CHECK_MSG(nan_step ? accum[0][MT_ACCUM_SKIPPED] == 1.0 && accum[0][MT_ACCUM_FIRST_SKIP] == 41.0
                       : accum[0][MT_ACCUM_SKIPPED] == 0.0 && accum[0][MT_ACCUM_VALID] == 0.0,
              "reference loss_accumulate: %g skipped, first %g (want 1, step 41, or none)",
              accum[0][MT_ACCUM_SKIPPED], accum[0][MT_ACCUM_FIRST_SKIP]);
    free(z), free(dz[0]), free(dz[1]);
}

/* buffer_copy_if: copies (words, or bytes when unaligned) and counts only when the flag is set */
static void check_buffer_copy_if(size_t bytes, size_t misalign) {
    unsigned char *src = malloc(bytes + 8), *dst = calloc(bytes + 8, 1),
                  *want = calloc(bytes + 8, 1);
    if (!src || !dst || !want) abort();
    for (size_t i = 0; i < bytes + 8; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    double count = 0;
    for (int set = 0; set < 2; set++) {
        const float flag = (float)set;
        KERNEL_OK(mt_cuda_launch_buffer_copy_if(NULL, dst + misalign, src + misalign, bytes, &flag,
                                                &count));
        REF_OK(mt_ops_reference.buffer_copy_if(&REF, want + misalign, src + misalign, bytes, &flag,
                                               NULL));
        CHECK_MSG(memcmp(dst, want, bytes + 8) == 0, "buffer_copy_if %zu bytes at +%zu, flag %d",
                  bytes, misalign, set);
    }
    CHECK_MSG(count == 1.0, "buffer_copy_if counted %g copies, want 1", count);
    free(src), free(dst), free(want);
}

/* the input conversion (scale + flip), the kernel against the reference op, which gets the
 * same batch through its staging slot; an odd width (the middle column maps to itself), every
 * uint8 value, several blocks of threads, flip flags 0, 1 and another nonzero value */
static void check_input_convert(int n, int h, int w) {
    const size_t count = (size_t)n * h * w * 3;
    uint8_t *src = malloc(count), *flips = malloc((size_t)n);
    int32_t *labels = malloc((size_t)n * sizeof *labels), *labels_out = zeros_i32(n);
    float *got = zeros(count), *want = zeros(count);
    if (!src || !flips || !labels) abort();
    for (size_t i = 0; i < count; i++)
        src[i] = (uint8_t)(i * 5 % 256);
    for (int i = 0; i < n; i++)
        flips[i] = (uint8_t)(i % 3 == 1 ? 1 : i % 3 == 2 ? 7 : 0), labels[i] = i;
    KERNEL_OK(mt_cuda_launch_input_convert(NULL, MT_CUDA_F32, n, h, w, src, flips, got));
    const mt_input_batch batch = {
        .n = n, .height = h, .width = w, .pixels = src, .labels = labels, .flips = flips};
    mt_tensor t = wrap((mt_shape4){n, h, w, 3}, want);
    REF_OK(mt_ops_reference.input_upload(&REF, 0, &batch));
    REF_OK(mt_ops_reference.input_convert(&REF, 0, &t, labels_out));
    compare("input_convert", got, want, count, 0);
    CHECK(memcmp(labels, labels_out, (size_t)n * sizeof *labels) == 0);
    /* the flips did something: image 1 is not its unflipped self */
    CHECK(want[(size_t)h * w * 3] != mt_u8_to_input(src[(size_t)h * w * 3]));
    free(src), free(flips), free(labels), free(labels_out), free(got), free(want);
}

static void check_elementwise(mt_shape4 s) {
    size_t n = mt_shape4_count(s);
    float *a = array(n, -3, 9), *b = array(n, -3, 9), *dy = array(n, -1, 1);
    a[0] = 0.0f, a[n - 1] = 6.0f;
    float *y[2] = {zeros(n), zeros(n)}, *dx[2] = {zeros(n), zeros(n)};
    mt_tensor ta = wrap(s, a), tb = wrap(s, b), ty = wrap(s, y[0]), tdy = wrap(s, dy);
    mt_tensor tdx = wrap(s, dx[0]);
    REF_OK(mt_ops_reference.add(&REF, &ta, &tb, &ty));
    KERNEL_OK(mt_cuda_launch_add(NULL, MT_CUDA_F32, n, a, b, y[1]));
    compare("add", y[1], y[0], n, 0);
    REF_OK(mt_ops_reference.relu6_forward(&REF, &ta, &ty));
    KERNEL_OK(mt_cuda_launch_relu6_forward(NULL, MT_CUDA_F32, n, a, y[1]));
    compare("relu6 forward", y[1], y[0], n, 0);
    REF_OK(mt_ops_reference.relu6_backward(&REF, &ty, &tdy, &tdx));
    KERNEL_OK(mt_cuda_launch_relu6_backward(NULL, MT_CUDA_F32, n, y[1], dy, dx[1]));
    compare("relu6 backward", dx[1], dx[0], n, 0);
    for (int i = 0; i < 2; i++)
        free(y[i]), free(dx[i]);
    free(a), free(b), free(dy);
}

/* ---- the optimizer update --------------------------------------------------------------------- */

/* Three steps of the kernel and of the reference op from the same parameters, gradients and
 * slots. Both run ops/optimizer_update.h per element, compiled by the same host compiler here:
 * bit for bit equal (on a GPU nvcc may fuse a multiply-add; tests/ops bounds that at 1e-6). */
static void check_optimizer(mt_update_rule rule, float momentum, bool nesterov, float decay,
                            size_t count) {
    mt_update_scalars rate = {.lr = 1e-2f}; /* device memory in the emulation */
    mt_optimizer_desc d = {.rule = rule, .count = count, .scalars = &rate, .rho = 0.9f,
                           .momentum = momentum, .epsilon = 1e-7f, .beta_1 = 0.9f,
                           .beta_2 = 0.999f, .weight_decay = decay, .nesterov = nesterov};
    const int slots = mt_update_slot_count(&d);
    float *g = array(count, -0.1f, 0.1f), *p[2] = {array(count, -1, 1), zeros(count)};
    float *s[2] = {array((size_t)slots * count + 1, 0, 0.01f), zeros((size_t)slots * count + 1)};
    memcpy(p[1], p[0], count * sizeof(float));
    memcpy(s[1], s[0], (size_t)slots * count * sizeof(float));
    for (int step = 0; step < 3; step++) {
        rate.step = mt_update_step_size(rule, d.beta_1, d.beta_2, rate.lr, (uint64_t)step + 4);
        REF_OK(mt_ops_reference.optimizer_update(&REF, &d, p[0], g, slots ? s[0] : NULL));
        KERNEL_OK(mt_cuda_launch_optimizer_update(NULL, &d, p[1], g,
                                                  slots > 0 ? s[1] : NULL,
                                                  slots > 1 ? s[1] + count : NULL));
    }
    compare("optimizer params", p[1], p[0], count, 0);
    if (slots) compare("optimizer slots", s[1], s[0], (size_t)slots * count, 0);
    /* a step whose skip flag (loss_accumulate's, in device memory) is set changes nothing */
    float skip = 1.0f;
    d.skip = &skip;
    float *kept = zeros(count);
    memcpy(kept, p[1], count * sizeof(float));
    REF_OK(mt_ops_reference.optimizer_update(&REF, &d, p[0], g, slots ? s[0] : NULL));
    KERNEL_OK(mt_cuda_launch_optimizer_update(NULL, &d, p[1], g,
                                              slots > 0 ? s[1] : NULL,
                                              slots > 1 ? s[1] + count : NULL));
    compare("optimizer params, skipped step", p[1], kept, count, 0);
    compare("reference params, skipped step", p[0], kept, count, 0);
    free(kept);
    for (int i = 0; i < 2; i++)
        free(p[i]), free(s[i]);
    free(g);
}

int main(void) {
    mt_backend_options options = {.num_threads = 1};
    REF.ops = &mt_ops_reference;
    REF.options = options;
    CHECK_OK(mt_ops_reference.init(&REF, &options));

    check_transforms();
    /* name, n, size, cin, cout, kernel, stride, pad top/left, pad bottom/right, depthwise */
    check_conv("direct 3x3/2 n4 8x8 3->24 pads 0,1", 4, 8, 3, 24, 3, 2, 0, 1, false);
    /* Conv1's shape: 3 -> 32 (float4), 3 -> 6 (scalar), over several slices of rows */
    check_conv("direct 3x3/2 n8 32x32 3->32 pads 0,1", 8, 32, 3, 32, 3, 2, 0, 1, false);
    check_conv("direct 3x3/1 n2 40x40 3->6 pads 1,1", 2, 40, 3, 6, 3, 1, 1, 1, false);
    check_conv("direct 3x3/2 n1 9x9 17->24 pads 1,1", 1, 9, 17, 24, 3, 2, 1, 1, false);
    check_conv("direct 3x3/2 n2 6x6 40->17 pads 0,1", 2, 6, 40, 17, 3, 2, 0, 1, false);
    check_conv("direct 3x3/1 n1 7x7 3->17 pads 1,1", 1, 7, 3, 17, 3, 1, 1, 1, false);
    check_conv("direct 1x1/1 n2 5x5 17->3", 2, 5, 17, 3, 1, 1, 0, 0, false);
    check_conv("depthwise 3x3/1 n4 6x6 c24", 4, 6, 24, 24, 3, 1, 1, 1, true);
    check_conv("depthwise 3x3/1 n1 5x5 c17", 1, 5, 17, 17, 3, 1, 1, 1, true);
    check_conv("depthwise 3x3/2 n4 8x8 c40 pads 0,1", 4, 8, 40, 40, 3, 2, 0, 1, true);
    check_conv("depthwise 3x3/2 n1 7x7 c3 pads 1,1", 1, 7, 3, 3, 3, 2, 1, 1, true);
    check_conv("depthwise 3x3/2 n1 9x9 c17 VALID", 1, 9, 17, 17, 3, 2, 0, 0, true);
    check_conv("depthwise 5x5/1 n2 7x7 c33 pads 2,2", 2, 7, 33, 33, 5, 1, 2, 2, true);
    check_conv("depthwise 3x3/1 n4 16x16 c40 (several slices)", 4, 16, 40, 40, 3, 1, 1, 1, true);
    check_conv("depthwise 3x3/3 n2 10x10 c8 pads 1,1 (stride 3)", 2, 10, 8, 8, 3, 3, 1, 1, true);
    check_conv("depthwise 3x3/2 n2 9x9 c12 pads 1,1", 2, 9, 12, 12, 3, 2, 1, 1, true);
    /* 258 float4 groups: 2 columns of blocks; 32 output rows of 16 per slice: 2 slices */
    check_conv("depthwise 3x3/1 n8 4x4 c1032 pads 1,1", 8, 4, 1032, 1032, 3, 1, 1, 1, true);

    check_batchnorm((mt_shape4){4, 5, 5, 24}, 0);
    check_batchnorm((mt_shape4){1, 3, 3, 17}, 0);
    check_batchnorm((mt_shape4){4, 16, 16, 17}, 8); /* 1024 rows: 4 slices; a large mean */
    check_batchnorm((mt_shape4){2, 15, 15, 40}, 0);
    /* fused fp32: float4 (C % 4 == 0) and scalar (C = 17, or misaligned); several slices
     * (M > rows per block: 2704 rows of C = 24 make 2 slices of 2688); C = 1288 needs 2 columns
     * of blocks (322 float4 groups); a large mean */
    check_batchnorm_fused((mt_shape4){4, 5, 5, 24}, 0, false);
    check_batchnorm_fused((mt_shape4){4, 26, 26, 24}, 0, false);
    check_batchnorm_fused((mt_shape4){4, 16, 16, 17}, 8, false);
    check_batchnorm_fused((mt_shape4){4, 16, 16, 40}, 8, true);
    check_batchnorm_fused((mt_shape4){2, 2, 3, 1288}, 0, false);
    check_batchnorm_fused((mt_shape4){1, 3, 3, 1288}, 0, true);

    check_casts();
    check_buffer_scale();
    check_scalars_write();
    check_pad((mt_shape4){4, 8, 8, 3}, 0, 0, 1, 1);
    check_pad((mt_shape4){1, 4, 6, 40}, 0, 1, 2, 0);
    check_pool((mt_shape4){4, 5, 5, 40});
    check_dropout(5120, 0.5f, (1ULL << 40) + 3);
    check_dropout(160, 0.2f, 7);
    check_dense_helpers(5, 40);
    check_elementwise((mt_shape4){4, 5, 5, 17}); /* 1700 values: the float4 kernels */
    check_elementwise((mt_shape4){1, 3, 3, 17}); /* 153: the scalar ones */

    static const int32_t bin[4] = {1, 0, -1, 1}, cat[4] = {2, -1, 0, 1}, none[3] = {-1, -1, -1},
                         bad[3] = {0, 3, 5};
    check_loss(4, 1, bin, -1);
    check_loss(4, 3, cat, -1);
    check_loss(3, 3, none, -1);
    check_loss(3, 3, bad, 1);
    check_loss_accumulate(4, 1, bin);
    check_loss_accumulate(4, 3, cat);
    check_loss_accumulate(3, 3, none);
    check_buffer_copy_if(4 * 3001, 0); /* several blocks of words */
    check_buffer_copy_if(37, 1);       /* bytes */
    check_input_convert(3, 5, 7);
    check_input_convert(4, 16, 24); /* 4608 values: several blocks */

    /* rule, momentum, nesterov, weight decay, count (several blocks, a partial last one) */
    check_optimizer(MT_UPDATE_RMSPROP, 0, false, 0, 1000);
    check_optimizer(MT_UPDATE_RMSPROP, 0.5f, false, 0.01f, 3001);
    check_optimizer(MT_UPDATE_SGD, 0, false, 0, 1000);
    check_optimizer(MT_UPDATE_SGD, 0.9f, false, 0, 1000);
    check_optimizer(MT_UPDATE_SGD, 0.9f, true, 0, 777);
    check_optimizer(MT_UPDATE_ADAM, 0, false, 0, 3001);
    check_optimizer(MT_UPDATE_ADAM, 0, false, 0.004f, 999);

    mt_test_stored_kernels(); /* bf16 / fp16 storage: test_gpu_kernels_stored.c */

    mt_ops_reference.shutdown(&REF);
    return mt_test_finish();
}
