/* One file over 600 lines on purpose: one finite-difference check and one hand-computed case
 * per op, all on the same probe (L = sum(y * r)) and step rule described below. */
/* The reference backend checked on its own terms, since it is the oracle for every other backend:
 *   1. every backward against finite differences of the forward, and
 *   2. forwards against tiny cases computed by hand (SAME padding, a stride-2 conv on 4x4, BN and
 *      its moving-average update, dense, the losses, dropout's mask).
 *
 * Finite differences. For an op y = f(p) and fixed random weights r, the scalar loss
 * L = sum(y * r) has dL/dp = backward(dy = r). The numerical gradient of each element of p is the
 * central difference (L(p + h) - L(p - h)) / (p+h - p-h), where the forwards run in float (the
 * code under test) and L is summed in double; the denominator uses the float-rounded steps. The
 * step h is 1e-2 for ops that are linear in the probed argument (conv, depthwise, pad, pooling,
 * add, dropout, dense, relu6 away from its kinks: central differences are exact up to rounding)
 * and 1e-3 for the curved ones (batch norm in training mode, the losses: truncation error
 * O(h^2) ~ 1e-6). An element passes when |numerical - analytic| <= atol + rtol*|analytic| with
 * atol = 1e-3 * max(1, max|analytic|) and rtol = 1e-3: float rounding of L divided by 2h gives
 * differences up to ~2e-4 (BN training) at these sizes, ~1e-5 for the linear ops. The checker
 * itself is shown to reject a gradient that is 1% off. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/dropout_hash.h"
#include "test_util.h"

static mt_backend *B;
static const mt_ops *ops;

/* ---- random numbers and small allocation helpers ---------------------------------------- */

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static double uniform(double lo, double hi) {
    return lo + (hi - lo) * mt_test_xorshift_unit(&rng_state);
}

static float *random_array(size_t count, double lo, double hi) {
    float *a = malloc(count * sizeof *a);
    if (!a) exit(1);
    for (size_t i = 0; i < count; i++)
        a[i] = (float)uniform(lo, hi);
    return a;
}

static float *zeros(size_t count) {
    float *a = calloc(count ? count : 1, sizeof *a);
    if (!a) exit(1);
    return a;
}

static mt_tensor tensor(mt_shape4 s) {
    mt_tensor t;
    MUST(ops->tensor_alloc(B, s, &t));
    return t;
}

static mt_tensor random_tensor(mt_shape4 s, double lo, double hi) {
    mt_tensor t = tensor(s);
    float *v = t.data; /* the reference keeps NHWC floats in host memory */
    for (size_t i = 0; i < mt_shape4_count(s); i++)
        v[i] = (float)uniform(lo, hi);
    return t;
}

static float *tdata(const mt_tensor *t) {
    return t->data;
}

/* ---- the finite-difference checker ----------------------------------------------------- */

/* How to recompute an op's output after a probed argument changed. */
typedef struct probe {
    void (*forward)(void *ctx);
    void *ctx;
    const float *out; /* the output after forward() */
    size_t out_count;
    const float *r; /* loss weights; NULL: out[0] is the loss itself */
} probe;

static double probe_loss(const probe *p) {
    p->forward(p->ctx);
    if (!p->r) return p->out[0];
    double loss = 0.0;
    for (size_t i = 0; i < p->out_count; i++)
        loss += (double)p->out[i] * p->r[i];
    return loss;
}

/* Compare analytic[i] with the central difference of the loss in param[i], for every i. */
static bool gradcheck(const char *what, const probe *p, float *param, size_t count,
                      const float *analytic, double step, bool report) {
    double scale = 1.0;
    for (size_t i = 0; i < count; i++)
        scale = fmax(scale, fabs(analytic[i]));
    const double atol = 1e-3 * scale, rtol = 1e-3;
    size_t bad = 0, worst_i = 0;
    double worst = -INFINITY, worst_num = 0.0, max_diff = 0.0;
    for (size_t i = 0; i < count; i++) {
        const float saved = param[i];
        const float plus = (float)(saved + step), minus = (float)(saved - step);
        param[i] = plus;
        double lp = probe_loss(p);
        param[i] = minus;
        double lm = probe_loss(p);
        param[i] = saved;
        double numerical = (lp - lm) / ((double)plus - (double)minus);
        double diff = fabs(numerical - analytic[i]);
        double excess = diff - (atol + rtol * fabs(analytic[i]));
        max_diff = fmax(max_diff, diff);
        if (!(excess <= 0)) bad++;
        if (!(excess <= worst)) {
            worst = excess;
            worst_i = i;
            worst_num = numerical;
        }
    }
    p->forward(p->ctx); /* leave the outputs as they were */
    if (report) {
        if (bad)
            fprintf(stderr,
                    "%s: %zu of %zu gradients off; worst [%zu]: analytic %.7g, numerical "
                    "%.7g (atol %.2g, rtol %.2g)\n",
                    what, bad, count, worst_i, analytic[worst_i], worst_num, atol, rtol);
        else
            printf("ok  %-44s %4zu values, max |diff| %.1e (atol %.1e)\n", what, count, max_diff,
                   atol);
        if (bad) mt_test_failures++;
    }
    return bad == 0;
}

/* The checker must be able to fail: a gradient 1% off in one element is rejected. */
static void check_checker_rejects(const char *what, const probe *p, float *param, size_t count,
                                  const float *analytic, double step) {
    float *wrong = malloc(count * sizeof *wrong);
    if (!wrong) exit(1);
    memcpy(wrong, analytic, count * sizeof *wrong);
    size_t big = 0;
    for (size_t i = 0; i < count; i++)
        if (fabsf(wrong[i]) > fabsf(wrong[big])) big = i;
    wrong[big] *= 1.01f;
    wrong[big] += copysignf(0.03f, wrong[big]);
    CHECK_MSG(!gradcheck(what, p, param, count, wrong, step, false),
              "%s: the checker accepted a gradient that is 1%% off", what);
    free(wrong);
}

static const double LINEAR_STEP = 1e-2, CURVED_STEP = 1e-3;

/* ---- convolution ------------------------------------------------------------------------ */

typedef struct conv_ctx {
    mt_conv_desc d;
    mt_tensor x, y;
    float *w;
} conv_ctx;

static void conv_fwd(void *c) {
    conv_ctx *k = c;
    MUST(ops->conv_forward(B, &k->d, &k->x, k->w, &k->y));
}

static void gradcheck_conv(const char *name, int n, int size, int cin, int cout, int kernel,
                           int stride, bool depthwise) {
    int pt, pb, pl, pr;
    mt_same_padding(size, kernel, stride, &pt, &pb);
    mt_same_padding(size, kernel, stride, &pl, &pr);
    conv_ctx k = {.d = {.input = {n, size, size, cin},
                        .out_channels = depthwise ? cin : cout,
                        .kernel = kernel,
                        .stride = stride,
                        .pad_top = pt,
                        .pad_left = pl,
                        .pad_bottom = pb,
                        .pad_right = pr,
                        .depthwise = depthwise}};
    mt_shape4 os = mt_conv_output_shape(&k.d);
    size_t wcount = (size_t)kernel * kernel * cin * (depthwise ? 1 : cout);
    k.x = random_tensor(k.d.input, -1, 1);
    k.y = tensor(os);
    k.w = random_array(wcount, -1, 1);
    float *r = random_array(mt_shape4_count(os), -1, 1);
    mt_tensor dy = tensor(os), dx = tensor(k.d.input);
    memcpy(dy.data, r, mt_shape4_count(os) * sizeof(float));
    float *dw = zeros(wcount);
    conv_fwd(&k);
    MUST(ops->conv_backward_data(B, &k.d, &dy, k.w, &dx));
    MUST(ops->conv_backward_weights(B, &k.d, &k.x, &dy, dw));

    probe p = {conv_fwd, &k, tdata(&k.y), mt_shape4_count(os), r};
    char what[128];
    snprintf(what, sizeof what, "%s dx (pads t%d b%d)", name, pt, pb);
    gradcheck(what, &p, tdata(&k.x), mt_shape4_count(k.d.input), tdata(&dx), LINEAR_STEP, true);
    snprintf(what, sizeof what, "%s dw", name);
    gradcheck(what, &p, k.w, wcount, dw, LINEAR_STEP, true);
    check_checker_rejects(what, &p, k.w, wcount, dw, LINEAR_STEP);

    ops->tensor_free(B, &k.x);
    ops->tensor_free(B, &k.y);
    ops->tensor_free(B, &dy);
    ops->tensor_free(B, &dx);
    free(k.w);
    free(r);
    free(dw);
}

/* ---- batch normalization ---------------------------------------------------------------- */

typedef struct bn_ctx {
    mt_batchnorm_desc d;
    mt_tensor x, y;
    float *gamma, *beta, *mean, *var, *scratch_mean, *scratch_var, *saved_mean, *saved_inv_std;
    bool training;
} bn_ctx;

static void bn_fwd(void *c) {
    bn_ctx *k = c;
    if (k->training) {
        /* the moving statistics do not affect y in training mode; keep them out of the way */
        MUST(ops->batchnorm_forward_training(B, &k->d, &k->x, k->gamma, k->beta, k->scratch_mean,
                                             k->scratch_var, &k->y, k->saved_mean,
                                             k->saved_inv_std));
    } else {
        MUST(ops->batchnorm_forward_inference(B, &k->d, &k->x, k->gamma, k->beta, k->mean, k->var,
                                              &k->y));
    }
}

static void gradcheck_batchnorm(bool training) {
    const int C = 5;
    bn_ctx k = {.d = {.shape = {2, 3, 4, C}, .epsilon = 1e-3f, .momentum = 0.99f},
                .training = training};
    k.x = random_tensor(k.d.shape, -1, 3); /* a mean far from 0 exercises the centring */
    k.y = tensor(k.d.shape);
    k.gamma = random_array(C, 0.5, 1.5);
    k.beta = random_array(C, -1, 1);
    k.mean = random_array(C, 0, 2);
    k.var = random_array(C, 0.5, 2);
    k.scratch_mean = zeros(C);
    k.scratch_var = zeros(C);
    k.saved_mean = zeros(C);
    k.saved_inv_std = zeros(C);
    size_t count = mt_shape4_count(k.d.shape);
    float *r = random_array(count, -1, 1);
    mt_tensor dy = tensor(k.d.shape), dx = tensor(k.d.shape);
    memcpy(dy.data, r, count * sizeof(float));
    float *dgamma = zeros(C), *dbeta = zeros(C);
    bn_fwd(&k);
    if (training)
        MUST(ops->batchnorm_backward_training(B, &k.d, &k.x, &dy, k.gamma, k.saved_mean,
                                              k.saved_inv_std, &dx, dgamma, dbeta));
    else
        MUST(ops->batchnorm_backward_inference(B, &k.d, &k.x, &dy, k.gamma, k.mean, k.var, &dx,
                                               dgamma, dbeta));
    probe p = {bn_fwd, &k, tdata(&k.y), count, r};
    const char *mode = training ? "batchnorm training" : "batchnorm inference";
    const double step = training ? CURVED_STEP : LINEAR_STEP;
    char what[128];
    snprintf(what, sizeof what, "%s dx", mode);
    gradcheck(what, &p, tdata(&k.x), count, tdata(&dx), step, true);
    if (training) check_checker_rejects(what, &p, tdata(&k.x), count, tdata(&dx), step);
    snprintf(what, sizeof what, "%s dgamma", mode);
    gradcheck(what, &p, k.gamma, C, dgamma, LINEAR_STEP, true);
    snprintf(what, sizeof what, "%s dbeta", mode);
    gradcheck(what, &p, k.beta, C, dbeta, LINEAR_STEP, true);

    /* Frozen layers pass NULL parameter gradients: dx must not change. */
    mt_tensor dx2 = tensor(k.d.shape);
    if (training)
        MUST(ops->batchnorm_backward_training(B, &k.d, &k.x, &dy, k.gamma, k.saved_mean,
                                              k.saved_inv_std, &dx2, NULL, NULL));
    else
        MUST(ops->batchnorm_backward_inference(B, &k.d, &k.x, &dy, k.gamma, k.mean, k.var, &dx2,
                                               NULL, NULL));
    CHECK(memcmp(dx.data, dx2.data, count * sizeof(float)) == 0);
    if (!training) {
        float *dgamma2 = zeros(C);
        MUST(ops->batchnorm_backward_inference(B, &k.d, &k.x, &dy, k.gamma, k.mean, k.var, NULL,
                                               dgamma2, NULL));
        CHECK(memcmp(dgamma, dgamma2, C * sizeof(float)) == 0);
        free(dgamma2);
    }

    ops->tensor_free(B, &k.x);
    ops->tensor_free(B, &k.y);
    ops->tensor_free(B, &dy);
    ops->tensor_free(B, &dx);
    ops->tensor_free(B, &dx2);
    free(k.gamma), free(k.beta), free(k.mean), free(k.var), free(k.scratch_mean);
    free(k.scratch_var), free(k.saved_mean), free(k.saved_inv_std), free(r), free(dgamma);
    free(dbeta);
}

/* ---- elementwise: relu6, add ------------------------------------------------------------ */

typedef struct unary_ctx {
    mt_tensor x, y, b;
} unary_ctx;

static void relu6_fwd(void *c) {
    unary_ctx *k = c;
    MUST(ops->relu6_forward(B, &k->x, &k->y));
}

static void add_fwd(void *c) {
    unary_ctx *k = c;
    MUST(ops->add(B, &k->x, &k->b, &k->y));
}

static void gradcheck_relu6(void) {
    mt_shape4 s = {2, 3, 3, 7};
    size_t count = mt_shape4_count(s);
    unary_ctx k = {.x = random_tensor(s, -2, 8), .y = tensor(s)};
    float *x = tdata(&k.x);
    for (size_t i = 0; i < count; i++) /* stay 2 steps away from the kinks at 0 and 6 */
        if (fabsf(x[i]) < 0.05f || fabsf(x[i] - 6.0f) < 0.05f) x[i] += 0.1f;
    float *r = random_array(count, -1, 1);
    mt_tensor dy = tensor(s), dx = tensor(s);
    memcpy(dy.data, r, count * sizeof(float));
    relu6_fwd(&k);
    MUST(ops->relu6_backward(B, &k.y, &dy, &dx));
    probe p = {relu6_fwd, &k, tdata(&k.y), count, r};
    gradcheck("relu6 dx", &p, x, count, tdata(&dx), LINEAR_STEP, true);
    size_t passed = 0, clipped = 0; /* the sample must cover all three pieces */
    for (size_t i = 0; i < count; i++) {
        passed += x[i] > 0 && x[i] < 6;
        clipped += x[i] >= 6;
    }
    CHECK(passed > 0 && clipped > 0 && passed + clipped < count);
    ops->tensor_free(B, &k.x), ops->tensor_free(B, &k.y), ops->tensor_free(B, &dy);
    ops->tensor_free(B, &dx);
    free(r);
}

static void gradcheck_add(void) {
    mt_shape4 s = {2, 3, 2, 5};
    size_t count = mt_shape4_count(s);
    unary_ctx k = {.x = random_tensor(s, -1, 1), .b = random_tensor(s, -1, 1), .y = tensor(s)};
    float *r = random_array(count, -1, 1);
    probe p = {add_fwd, &k, tdata(&k.y), count, r};
    /* d(a+b)/da = d(a+b)/db = dy: the model passes dy on to both branches */
    gradcheck("add da", &p, tdata(&k.x), count, r, LINEAR_STEP, true);
    gradcheck("add db", &p, tdata(&k.b), count, r, LINEAR_STEP, true);
    /* summing two gradients in place (y aliases a) */
    mt_tensor a = random_tensor(s, -1, 1);
    float *want = zeros(count);
    for (size_t i = 0; i < count; i++)
        want[i] = tdata(&a)[i] + tdata(&k.b)[i];
    MUST(ops->add(B, &a, &k.b, &a));
    mt_test_arrays_close("add in place", tdata(&a), want, count, 0, 0);
    ops->tensor_free(B, &k.x), ops->tensor_free(B, &k.b), ops->tensor_free(B, &k.y);
    ops->tensor_free(B, &a);
    free(r), free(want);
}

/* ---- zero padding, global average pooling ---------------------------------------------- */

typedef struct pad_ctx {
    mt_zero_pad_desc d;
    mt_tensor x, y;
} pad_ctx;

static void pad_fwd(void *c) {
    pad_ctx *k = c;
    MUST(ops->zero_pad_forward(B, &k->d, &k->x, &k->y));
}

static void gradcheck_pad(void) {
    pad_ctx k = {.d = {.input = {2, 4, 5, 3}, .top = 0, .left = 1, .bottom = 1, .right = 2}};
    mt_shape4 os = {2, 5, 8, 3};
    k.x = random_tensor(k.d.input, -1, 1);
    k.y = tensor(os);
    float *r = random_array(mt_shape4_count(os), -1, 1);
    mt_tensor dy = tensor(os), dx = tensor(k.d.input);
    memcpy(dy.data, r, mt_shape4_count(os) * sizeof(float));
    pad_fwd(&k);
    MUST(ops->zero_pad_backward(B, &k.d, &dy, &dx));
    probe p = {pad_fwd, &k, tdata(&k.y), mt_shape4_count(os), r};
    gradcheck("zero_pad dx (t0 l1 b1 r2)", &p, tdata(&k.x), mt_shape4_count(k.d.input), tdata(&dx),
              LINEAR_STEP, true);
    /* forward by hand: y[n][1][3][c] = x[n][1][2][c], the last row and first column are 0 */
    CHECK(tdata(&k.y)[((1 * 5 + 1) * 8 + 3) * 3 + 2] == tdata(&k.x)[((1 * 4 + 1) * 5 + 2) * 3 + 2]);
    CHECK(tdata(&k.y)[((0 * 5 + 4) * 8 + 3) * 3 + 0] == 0.0f);
    CHECK(tdata(&k.y)[((0 * 5 + 2) * 8 + 0) * 3 + 1] == 0.0f);
    ops->tensor_free(B, &k.x), ops->tensor_free(B, &k.y), ops->tensor_free(B, &dy);
    ops->tensor_free(B, &dx);
    free(r);
}

typedef struct pool_ctx {
    mt_tensor x;
    float *y;
} pool_ctx;

static void pool_fwd(void *c) {
    pool_ctx *k = c;
    MUST(ops->global_avg_pool_forward(B, &k->x, k->y));
}

static void gradcheck_pool(void) {
    mt_shape4 s = {3, 5, 5, 6};
    pool_ctx k = {.x = random_tensor(s, -1, 1), .y = zeros(3 * 6)};
    float *r = random_array(3 * 6, -1, 1);
    mt_tensor dx = tensor(s);
    MUST(ops->global_avg_pool_backward(B, r, &dx));
    probe p = {pool_fwd, &k, k.y, 3 * 6, r};
    gradcheck("global_avg_pool dx", &p, tdata(&k.x), mt_shape4_count(s), tdata(&dx), LINEAR_STEP,
              true);
    ops->tensor_free(B, &k.x), ops->tensor_free(B, &dx);
    free(k.y), free(r);
}

/* ---- dropout, dense, losses ------------------------------------------------------------- */

typedef struct dropout_ctx {
    size_t count;
    float rate;
    uint64_t seed;
    float *x, *y;
    uint8_t *mask;
} dropout_ctx;

static void dropout_fwd(void *c) {
    dropout_ctx *k = c;
    MUST(ops->dropout_forward(B, k->count, k->rate, &k->seed, k->x, k->y, k->mask));
}

static void gradcheck_dropout(void) {
    dropout_ctx k = {.count = 64, .rate = 0.3f, .seed = 1234};
    k.x = random_array(k.count, -1, 1);
    k.y = zeros(k.count);
    k.mask = calloc(k.count, 1);
    float *r = random_array(k.count, -1, 1), *dx = zeros(k.count);
    dropout_fwd(&k);
    MUST(ops->dropout_backward(B, k.count, k.rate, k.mask, r, dx));
    probe p = {dropout_fwd, &k, k.y, k.count, r};
    gradcheck("dropout dx (seed fixed, rate 0.3)", &p, k.x, k.count, dx, LINEAR_STEP, true);
    free(k.x), free(k.y), free(k.mask), free(r), free(dx);
}

typedef struct dense_ctx {
    mt_dense_desc d;
    float *x, *w, *b, *y;
} dense_ctx;

static void dense_fwd(void *c) {
    dense_ctx *k = c;
    MUST(ops->dense_forward(B, &k->d, k->x, k->w, k->b, k->y));
}

static void gradcheck_dense(void) {
    dense_ctx k = {.d = {.batch = 3, .in_features = 7, .out_features = 4}};
    size_t nx = 3 * 7, nw = 7 * 4, ny = 3 * 4;
    k.x = random_array(nx, -1, 1), k.w = random_array(nw, -1, 1), k.b = random_array(4, -1, 1);
    k.y = zeros(ny);
    float *r = random_array(ny, -1, 1), *dx = zeros(nx), *dw = zeros(nw), *db = zeros(4);
    dense_fwd(&k);
    MUST(ops->dense_backward(B, &k.d, k.x, k.w, r, dx, dw, db));
    probe p = {dense_fwd, &k, k.y, ny, r};
    gradcheck("dense dx", &p, k.x, nx, dx, LINEAR_STEP, true);
    gradcheck("dense dw", &p, k.w, nw, dw, LINEAR_STEP, true);
    gradcheck("dense db", &p, k.b, 4, db, LINEAR_STEP, true);
    float *dw2 = zeros(nw);
    MUST(ops->dense_backward(B, &k.d, k.x, k.w, r, NULL, dw2, NULL)); /* the usual head call */
    CHECK(memcmp(dw, dw2, nw * sizeof(float)) == 0);
    free(k.x), free(k.w), free(k.b), free(k.y), free(r), free(dx), free(dw), free(db), free(dw2);
}

typedef struct loss_ctx {
    mt_loss_desc d;
    float *logits;
    int32_t *labels;
    float loss;
} loss_ctx;

static void loss_fwd(void *c) {
    loss_ctx *k = c;
    MUST(ops->loss_forward_backward(B, &k->d, k->logits, k->labels, &k->loss, NULL));
}

static void gradcheck_loss(int classes) {
    int32_t labels[5] = {1, 0, -1, classes > 1 ? classes - 1 : 1, 0};
    loss_ctx k = {.d = {.batch = 5, .classes = classes}, .labels = labels};
    size_t count = (size_t)5 * classes;
    k.logits = random_array(count, -3, 3);
    float *dlogits = zeros(count);
    MUST(ops->loss_forward_backward(B, &k.d, k.logits, labels, &k.loss, dlogits));
    float loss_with_grad = k.loss;
    probe p = {loss_fwd, &k, &k.loss, 1, NULL};
    char what[128];
    snprintf(what, sizeof what, "%s dlogits (row 2 padded)",
             classes == 1 ? "sigmoid BCE" : "softmax CE");
    gradcheck(what, &p, k.logits, count, dlogits, CURVED_STEP, true);
    check_checker_rejects(what, &p, k.logits, count, dlogits, CURVED_STEP);
    CHECK(k.loss == loss_with_grad); /* dlogits == NULL computes the same loss */
    for (int c = 0; c < classes; c++)
        CHECK(dlogits[2 * classes + c] == 0.0f);
    free(k.logits), free(dlogits);
}

/* ---- forwards by hand ------------------------------------------------------------------- */

static void check_same_padding(void) {
    int a, b;
    mt_same_padding(160, 3, 2, &a, &b);
    CHECK(a == 0 && b == 1);
    mt_same_padding(7, 3, 2, &a, &b);
    CHECK(a == 1 && b == 1);
    mt_same_padding(5, 3, 1, &a, &b);
    CHECK(a == 1 && b == 1);
    mt_same_padding(8, 1, 1, &a, &b);
    CHECK(a == 0 && b == 0);
    mt_same_padding(4, 3, 2, &a, &b);
    CHECK(a == 0 && b == 1);
    mt_conv_desc d = {.input = {1, 160, 160, 3},
                      .out_channels = 32,
                      .kernel = 3,
                      .stride = 2,
                      .pad_bottom = 1,
                      .pad_right = 1};
    mt_shape4 o = mt_conv_output_shape(&d);
    CHECK(o.n == 1 && o.h == 80 && o.w == 80 && o.c == 32);
}

/* A 3x3 stride-2 SAME conv on the 4x4 input 1..16 (pads: top/left 0, bottom/right 1). */
static void check_conv_by_hand(void) {
    mt_conv_desc d = {.input = {1, 4, 4, 1},
                      .out_channels = 2,
                      .kernel = 3,
                      .stride = 2,
                      .pad_bottom = 1,
                      .pad_right = 1};
    mt_tensor x = tensor(d.input), y = tensor((mt_shape4){1, 2, 2, 2});
    for (int i = 0; i < 16; i++)
        tdata(&x)[i] = (float)(i + 1);
    /* output channel 0: all-ones kernel; channel 1: only the top-left tap, which shows where
     * the padding went (with top/left padding it would read zeros) */
    float w[3 * 3 * 1 * 2] = {0};
    for (int t = 0; t < 9; t++)
        w[t * 2 + 0] = 1.0f;
    w[0 * 2 + 1] = 1.0f;
    MUST(ops->conv_forward(B, &d, &x, w, &y));
    const float want[8] = {54, 1, 45, 3, 72, 9, 54, 11}; /* [oh][ow][cout] */
    mt_test_arrays_close("3x3/2 SAME conv on 4x4 by hand", tdata(&y), want, 8, 0, 0);

    /* depthwise 3x3 stride 1 SAME on a 3x3, 2-channel input: channel c's kernel is (c+1)*ones
     * for channel 0 and the centre tap only for channel 1 */
    mt_conv_desc dd = {.input = {1, 3, 3, 2},
                       .out_channels = 2,
                       .kernel = 3,
                       .stride = 1,
                       .pad_top = 1,
                       .pad_left = 1,
                       .pad_bottom = 1,
                       .pad_right = 1,
                       .depthwise = true};
    mt_tensor dx_in = tensor(dd.input), dy_out = tensor(dd.input);
    for (int p = 0; p < 9; p++)
        tdata(&dx_in)[p * 2 + 0] = (float)(p + 1), tdata(&dx_in)[p * 2 + 1] = (float)(10 * (p + 1));
    float dw[3 * 3 * 2] = {0};
    for (int t = 0; t < 9; t++)
        dw[t * 2 + 0] = 1.0f;
    dw[4 * 2 + 1] = 2.0f;
    MUST(ops->conv_forward(B, &dd, &dx_in, dw, &dy_out));
    /* channel 0 = 3x3 box sums of 1..9 with zero border; channel 1 = 2 * x */
    const float box[9] = {12, 21, 16, 27, 45, 33, 24, 39, 28};
    for (int p = 0; p < 9; p++) {
        CHECK(tdata(&dy_out)[p * 2 + 0] == box[p]);
        CHECK(tdata(&dy_out)[p * 2 + 1] == 20.0f * (p + 1));
    }

    /* 1x1 with 2 inputs, 3 outputs: the kernel is [cin][cout] */
    mt_conv_desc d1 = {.input = {1, 1, 1, 2}, .out_channels = 3, .kernel = 1, .stride = 1};
    mt_tensor x1 = tensor(d1.input), y1 = tensor((mt_shape4){1, 1, 1, 3});
    tdata(&x1)[0] = 2, tdata(&x1)[1] = -1;
    const float w1[6] = {1, 2, 3, 10, 20, 30};
    MUST(ops->conv_forward(B, &d1, &x1, w1, &y1));
    const float want1[3] = {2 - 10, 4 - 20, 6 - 30};
    mt_test_arrays_close("1x1 conv HWIO by hand", tdata(&y1), want1, 3, 0, 0);

    /* a wrong output shape is refused, not written past */
    mt_tensor wrong = tensor((mt_shape4){1, 3, 3, 2});
    CHECK(ops->conv_forward(B, &d, &x, w, &wrong) == MT_ERR_INVALID);
    ops->tensor_free(B, &x), ops->tensor_free(B, &y), ops->tensor_free(B, &dx_in);
    ops->tensor_free(B, &dy_out), ops->tensor_free(B, &x1), ops->tensor_free(B, &y1);
    ops->tensor_free(B, &wrong);
}

/* BN on one channel with values 1,2,3,4: mean 2.5, biased variance 1.25. */
static void check_batchnorm_by_hand(void) {
    mt_batchnorm_desc d = {.shape = {2, 1, 2, 1}, .epsilon = 1e-3f, .momentum = 0.9f};
    mt_tensor x = tensor(d.shape), y = tensor(d.shape);
    for (int i = 0; i < 4; i++)
        tdata(&x)[i] = (float)(i + 1);
    float gamma = 2, beta = 0.5f, mean = 0, var = 1, saved_mean = 0, saved_inv_std = 0;
    MUST(ops->batchnorm_forward_training(B, &d, &x, &gamma, &beta, &mean, &var, &y, &saved_mean,
                                         &saved_inv_std));
    const double inv_std = 1.0 / sqrt(1.25 + 1e-3);
    CHECK_CLOSE(saved_mean, 2.5, 0, 1e-7);
    CHECK_CLOSE(saved_inv_std, inv_std, 0, 1e-6);
    CHECK_CLOSE(mean, 0.9 * 0 + 0.1 * 2.5, 0, 1e-6); /* Keras: moving*momentum + batch*(1-m) */
    CHECK_CLOSE(var, 0.9 * 1 + 0.1 * 1.25, 0, 1e-6); /* biased variance, not 5/3 */
    for (int i = 0; i < 4; i++)
        CHECK_CLOSE(tdata(&y)[i], 2 * (i + 1 - 2.5) * inv_std + 0.5, 1e-6, 1e-6);
    /* inference uses the moving statistics just updated */
    MUST(ops->batchnorm_forward_inference(B, &d, &x, &gamma, &beta, &mean, &var, &y));
    for (int i = 0; i < 4; i++)
        CHECK_CLOSE(tdata(&y)[i], 2 * (i + 1 - 0.25) / sqrt(1.025 + 1e-3) + 0.5, 1e-6, 1e-6);
    ops->tensor_free(B, &x), ops->tensor_free(B, &y);
}

static void check_head_by_hand(void) {
    /* dense: y = x*w + b with w [in][out] */
    const float x[2] = {1, 2}, w[6] = {1, 2, 3, 4, 5, 6}, b[3] = {0.5f, 0, -1};
    float y[3];
    MUST(ops->dense_forward(B, &(mt_dense_desc){1, 2, 3}, x, w, b, y));
    const float want[3] = {9.5f, 12, 14};
    mt_test_arrays_close("dense by hand", y, want, 3, 0, 0);

    /* sigmoid BCE: z=0,t=1 -> ln 2; z=100,t=0 -> 100 (no overflow); z=-100,t=0 -> ~0; the padded
     * row is not in the mean */
    const float z[4] = {0, 100, -100, 55};
    const int32_t t[4] = {1, 0, 0, -1};
    float loss, dz[4];
    MUST(ops->loss_forward_backward(B, &(mt_loss_desc){4, 1}, z, t, &loss, dz));
    CHECK_CLOSE(loss, (log(2.0) + 100.0) / 3.0, 0, 1e-6);
    CHECK_CLOSE(dz[0], -0.5 / 3, 0, 1e-6);
    CHECK_CLOSE(dz[1], 1.0 / 3, 0, 1e-6);
    CHECK(dz[3] == 0.0f && isfinite(dz[2]));

    /* softmax CE: logits (1000, 0), label 1 -> 1000 without overflow */
    const float z2[2] = {1000, 0};
    const int32_t t2[1] = {1};
    float dz2[2];
    MUST(ops->loss_forward_backward(B, &(mt_loss_desc){1, 2}, z2, t2, &loss, dz2));
    CHECK_CLOSE(loss, 1000.0, 0, 1e-6);
    CHECK_CLOSE(dz2[0], 1.0, 0, 1e-6);
    CHECK_CLOSE(dz2[1], -1.0, 0, 1e-6);

    /* all rows padded: loss 0, gradient 0; a label out of range is an error */
    const int32_t none[2] = {-1, -1}, bad[2] = {0, 3};
    MUST(ops->loss_forward_backward(B, &(mt_loss_desc){1, 2}, z2, none, &loss, dz2));
    CHECK(loss == 0.0f && dz2[0] == 0.0f && dz2[1] == 0.0f);
    CHECK(ops->loss_forward_backward(B, &(mt_loss_desc){2, 3}, (float[6]){0}, bad, &loss, NULL) ==
          MT_ERR_INVALID);

    /* global average pool of 2x2 positions */
    mt_tensor px = tensor((mt_shape4){1, 2, 2, 2});
    for (int i = 0; i < 8; i++)
        tdata(&px)[i] = (float)i;
    float pooled[2];
    MUST(ops->global_avg_pool_forward(B, &px, pooled));
    CHECK(pooled[0] == 3.0f && pooled[1] == 4.0f);
    ops->tensor_free(B, &px);
}

/* Dropout keeps element i exactly when mt_dropout_keep(seed, i) says so, scales kept values by
 * 1/(1-rate), keeps ~1-rate of them, and changes its mask with the seed. */
static void check_dropout(void) {
    enum { COUNT = 20000 };
    float *x = random_array(COUNT, 0.5, 1.5), *y = zeros(COUNT), *y2 = zeros(COUNT);
    uint8_t *mask = calloc(COUNT, 1), *mask2 = calloc(COUNT, 1);
    const float rate = 0.2f;
    const uint64_t seeds[] = {42, 43, 7}; /* host memory is the reference's backend memory */
    MUST(ops->dropout_forward(B, COUNT, rate, &seeds[0], x, y, mask));
    const uint32_t threshold = mt_dropout_threshold(rate);
    size_t kept = 0, bad = 0;
    for (size_t i = 0; i < COUNT; i++) {
        bool keep = mt_dropout_keep(42, i, threshold);
        kept += keep;
        if (mask[i] != keep || y[i] != (keep ? x[i] * (1.0f / (1.0f - rate)) : 0.0f)) bad++;
    }
    CHECK_MSG(bad == 0, "%zu elements disagree with the shared hash", bad);
    CHECK_MSG(fabs((double)kept / COUNT - 0.8) < 0.01, "kept fraction %.4f", (double)kept / COUNT);
    MUST(ops->dropout_forward(B, COUNT, rate, &seeds[1], x, y2, mask2));
    size_t same = 0;
    for (size_t i = 0; i < COUNT; i++)
        same += mask[i] == mask2[i];
    CHECK_MSG(same < COUNT * 0.75, "seeds 42 and 43 agree on %zu of %d decisions", same, COUNT);
    MUST(ops->dropout_forward(B, COUNT, 0.0f, &seeds[2], x, y2, mask2));
    CHECK(memcmp(x, y2, COUNT * sizeof(float)) == 0);
    CHECK(ops->dropout_forward(B, COUNT, 1.0f, &seeds[2], x, y2, mask2) == MT_ERR_INVALID);
    free(x), free(y), free(y2), free(mask), free(mask2);
}

/* Each output element is summed by one thread in a fixed order, so the thread count must not
 * change a single bit; this is what lets the finite differences below run single-threaded
 * (thousands of tiny forwards, which OpenMP barriers on a busy machine would slow down). */
static void check_threads_agree(void) {
    mt_backend *b3;
    MUST(mt_backend_create("reference", &(mt_backend_options){.num_threads = 3}, &b3));
    mt_conv_desc descs[2] = {
        {.input = {4, 32, 32, 17},
         .out_channels = 24,
         .kernel = 3,
         .stride = 2,
         .pad_top = 1,
         .pad_left = 1,
         .pad_bottom = 1,
         .pad_right = 1},
        {.input = {4, 32, 32, 40},
         .out_channels = 40,
         .kernel = 3,
         .stride = 2,
         .pad_bottom = 1,
         .pad_right = 1,
         .depthwise = true},
    };
    for (int i = 0; i < 2; i++) {
        const mt_conv_desc *d = &descs[i];
        mt_shape4 os = mt_conv_output_shape(d);
        size_t nx = mt_shape4_count(d->input), ny = mt_shape4_count(os);
        size_t nw = (size_t)9 * d->input.c * (d->depthwise ? 1 : d->out_channels);
        mt_tensor x = random_tensor(d->input, -1, 1), dy = random_tensor(os, -1, 1);
        float *w = random_array(nw, -1, 1);
        mt_tensor y[2], dx[2];
        float *dw[2] = {zeros(nw), zeros(nw)};
        mt_backend *backends[2] = {B, b3};
        for (int k = 0; k < 2; k++) {
            y[k] = tensor(os), dx[k] = tensor(d->input);
            MUST(ops->conv_forward(backends[k], d, &x, w, &y[k]));
            MUST(ops->conv_backward_data(backends[k], d, &dy, w, &dx[k]));
            MUST(ops->conv_backward_weights(backends[k], d, &x, &dy, dw[k]));
        }
        CHECK_MSG(memcmp(y[0].data, y[1].data, ny * 4) == 0, "conv %d forward: 1 vs 3 threads", i);
        CHECK_MSG(memcmp(dx[0].data, dx[1].data, nx * 4) == 0, "conv %d dx: 1 vs 3 threads", i);
        CHECK_MSG(memcmp(dw[0], dw[1], nw * 4) == 0, "conv %d dw: 1 vs 3 threads", i);
        for (int k = 0; k < 2; k++) {
            ops->tensor_free(B, &y[k]), ops->tensor_free(B, &dx[k]);
            free(dw[k]);
        }
        ops->tensor_free(B, &x), ops->tensor_free(B, &dy);
        free(w);
    }
    mt_backend_destroy(b3);
}

int main(void) {
    MUST(mt_backend_create("reference", &(mt_backend_options){.num_threads = 1}, &B));
    ops = B->ops;

    check_threads_agree();

    check_same_padding();
    check_conv_by_hand();
    check_batchnorm_by_hand();
    check_head_by_hand();
    check_dropout();

    /* name, N, H=W, Cin, Cout, kernel, stride, depthwise */
    gradcheck_conv("conv 1x1/1", 2, 5, 3, 4, 1, 1, false);
    gradcheck_conv("conv 3x3/1 SAME", 2, 5, 3, 4, 3, 1, false);
    gradcheck_conv("conv 3x3/2 even 6x6", 2, 6, 3, 4, 3, 2, false);
    gradcheck_conv("conv 3x3/2 odd 7x7", 1, 7, 2, 3, 3, 2, false);
    gradcheck_conv("depthwise 3x3/1 SAME", 2, 5, 5, 5, 3, 1, true);
    gradcheck_conv("depthwise 3x3/2 even 6x6", 2, 6, 4, 4, 3, 2, true);
    gradcheck_conv("depthwise 3x3/2 odd 7x7", 1, 7, 3, 3, 3, 2, true);
    gradcheck_batchnorm(true);
    gradcheck_batchnorm(false);
    gradcheck_relu6();
    gradcheck_add();
    gradcheck_pad();
    gradcheck_pool();
    gradcheck_dropout();
    gradcheck_dense();
    gradcheck_loss(1);
    gradcheck_loss(4);

    mt_backend_destroy(B);
    return mt_test_finish();
}
