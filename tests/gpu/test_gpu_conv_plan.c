/* The plain-C parts of the cuda backend's convolutions, on the CPU (every build, no GPU):
 *
 * 1. The pointwise products (src/ops/cuda/cuda_pointwise.c): every argument the fp32
 *    (cublasSgemm) and bf16/fp16 (cublasGemmEx) calls take -- operations, m, n, k, the operands,
 *    the leading dimensions -- run through a column-major GEMM written here with cuBLAS'
 *    indexing (each read bounds-checked against its tensor, the leading dimensions against
 *    cuBLAS' rules), must give the reference backend's 1x1 convolution in all three passes. The
 *    sums are in double on both sides in the same order, so the results differ by at most the
 *    final rounding to float: 2^-23 x max|want|. And the product's output type (c_fp32) must be
 *    what the reference's bf16 emulation stores: y and dx rounded to bf16, dw not.
 * 2. The per-update weight copies' bookkeeping (src/ops/cuda/cuda_weight_cache.c): a copy is
 *    found under its exact key only (pointer, form, geometry), a write drops exactly the copies
 *    whose kernel it overlaps (a one-byte overlap at either end, not a neighbour that only
 *    touches), and a write of 0 bytes (the shutdown) drops everything.
 * 3. Their rules around a captured step (cuda_graph.c's top comment): the ranges device ops
 *    wrote merge into disjoint ranges and a free cuts them out again; a capture begins by
 *    dropping the copies of written kernels only, ends by dropping the copies it made and
 *    pinning those made before it that it read, and fails when it read one and then dropped it;
 *    a replay is refused once a pinned copy is gone, else drops the written kernels' copies.
 * 4. The choices' text (src/ops/cuda/cuda_choices.c, what a checkpoint's backend_choices holds):
 *    every field of every kind of choice comes back from its text unchanged, and each way a line
 *    can be wrong is an error naming that line's number. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "ops/cuda/cuda_choices.h"
#include "ops/cuda/cuda_pointwise.h"
#include "ops/cuda/cuda_weight_cache.h"
#include "ops/precision.h"
#include "test_util.h"

/* ---- 1. the pointwise products ---------------------------------------------------------- */

typedef struct operand {
    float *data;
    size_t count;
    int rows, cols; /* row-major */
} operand;

/* C = op(A) op(B) as cuBLAS computes it (column-major, leading dimensions), in double. false
 * (and a failure) when an index leaves an operand or a leading dimension breaks cuBLAS' rules. */
static bool host_gemm(const char *what, const mt_cuda_gemm *p, const operand *a, const operand *b,
                      operand *c) {
    const int a_rows = p->trans_a ? p->k : p->m, b_rows = p->trans_b ? p->n : p->k;
    CHECK_MSG(p->lda >= a_rows && p->ldb >= b_rows && p->ldc >= p->m,
              "%s: leading dimensions %d %d %d below cuBLAS' %d %d %d", what, p->lda, p->ldb,
              p->ldc, a_rows, b_rows, p->m);
    if (p->lda < a_rows || p->ldb < b_rows || p->ldc < p->m) return false;
    for (int j = 0; j < p->n; j++) {
        for (int i = 0; i < p->m; i++) {
            double sum = 0.0;
            for (int l = 0; l < p->k; l++) {
                size_t ia =
                    p->trans_a ? (size_t)l + (size_t)i * p->lda : (size_t)i + (size_t)l * p->lda;
                size_t ib =
                    p->trans_b ? (size_t)j + (size_t)l * p->ldb : (size_t)l + (size_t)j * p->ldb;
                if (ia >= a->count || ib >= b->count) {
                    CHECK_MSG(false, "%s: reads A[%zu] of %zu or B[%zu] of %zu", what, ia, a->count,
                              ib, b->count);
                    return false;
                }
                sum += (double)a->data[ia] * b->data[ib];
            }
            size_t ic = (size_t)i + (size_t)j * p->ldc;
            if (ic >= c->count) {
                CHECK_MSG(false, "%s: writes C[%zu] of %zu", what, ic, c->count);
                return false;
            }
            c->data[ic] = (float)sum;
        }
    }
    return true;
}

static void expect_close(const char *what, const float *got, const float *want, size_t n) {
    double peak = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        peak = fmax(peak, fabs(want[i]));
        worst = fmax(worst, fabs((double)got[i] - want[i]));
    }
    CHECK_MSG(worst <= ldexp(peak, -23), "%s: max |got - want| %.3g, limit %.3g", what, worst,
              ldexp(peak, -23));
}

static bool all_bf16(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (mt_round_bf16(x[i]) != x[i]) return false;
    return true;
}

static float *random_array(uint64_t *state, size_t n) {
    float *a = malloc(n * sizeof *a);
    if (!a) exit(1);
    for (size_t i = 0; i < n; i++)
        a[i] = (float)(2.0 * mt_test_xorshift_unit(state) - 1.0);
    return a;
}

/* One 1x1 shape: the reference's three passes in fp32 against the plan's products, and the
 * output types against the reference's bf16 emulation. */
static void check_pointwise(mt_backend *ref, mt_backend *ref16, mt_shape4 in, int cout) {
    uint64_t state = 0x2545f4914f6cdd1dULL + (uint64_t)in.c * 31 + (uint64_t)cout;
    const mt_conv_desc d = {.input = in, .out_channels = cout, .kernel = 1, .stride = 1};
    const mt_shape4 out = mt_conv_output_shape(&d);
    const int M = in.n * in.h * in.w, I = in.c, O = cout;
    const size_t nx = (size_t)M * I, ny = (size_t)M * O, nw = (size_t)I * O;
    float *x = random_array(&state, nx), *dy = random_array(&state, ny);
    float *w = random_array(&state, nw);
    float *got[3] = {calloc(ny, 4), calloc(nx, 4), calloc(nw, 4)};
    float *dw_ref = calloc(nw, 4), *dw16 = calloc(nw, 4);
    if (!got[0] || !got[1] || !got[2] || !dw_ref || !dw16) exit(1);
    char name[96];
    snprintf(name, sizeof name, "1x1 N%d %dx%d %d->%d", in.n, in.h, in.w, I, O);

    /* the reference: host memory, so its tensors' data are plain arrays */
    for (int precise = 1; precise >= 0; precise--) {
        mt_backend *b = precise ? ref : ref16;
        const mt_ops *o = b->ops;
        mt_tensor tx, ty, tdy, tdx;
        MUST(o->tensor_alloc(b, in, &tx));
        MUST(o->tensor_alloc(b, out, &ty));
        MUST(o->tensor_alloc(b, out, &tdy));
        MUST(o->tensor_alloc(b, in, &tdx));
        MUST(o->tensor_from_nhwc(b, x, &tx));
        MUST(o->tensor_from_nhwc(b, dy, &tdy));
        float *dw = precise ? dw_ref : dw16;
        MUST(o->conv_forward(b, &d, &tx, w, &ty));
        MUST(o->conv_backward_data(b, &d, &tdy, w, &tdx));
        MUST(o->conv_backward_weights(b, &d, &tx, &tdy, dw));
        const float *want[3] = {ty.data, tdx.data, dw};
        const size_t counts[3] = {ny, nx, nw};
        for (int pass = 0; pass < 3; pass++) {
            mt_cuda_gemm p;
            CHECK_MSG(mt_cuda_pointwise_gemm(pass, M, I, O, &p), "%s pass %d: no plan", name, pass);
            if (precise) {
                /* the operands as the cuda backend passes them: the tensors and HWIO w */
                operand ops[] = {
                    [MT_CUDA_GEMM_X] = {x, nx, M, I},       [MT_CUDA_GEMM_W] = {w, nw, I, O},
                    [MT_CUDA_GEMM_DY] = {dy, ny, M, O},     [MT_CUDA_GEMM_Y] = {got[0], ny, M, O},
                    [MT_CUDA_GEMM_DX] = {got[1], nx, M, I}, [MT_CUDA_GEMM_DW] = {got[2], nw, I, O},
                };
                const mt_cuda_gemm_operand output[3] = {MT_CUDA_GEMM_Y, MT_CUDA_GEMM_DX,
                                                        MT_CUDA_GEMM_DW};
                char what[128];
                snprintf(what, sizeof what, "%s pass %d", name, pass);
                CHECK_MSG(p.c == output[pass], "%s: writes operand %d", what, (int)p.c);
                if (p.c == output[pass] && host_gemm(what, &p, &ops[p.a], &ops[p.b], &ops[p.c]))
                    expect_close(what, got[pass], want[pass], counts[pass]);
            } else {
                /* bf16: a stored tensor (y, dx) is rounded, dw is fp32 in the emulation; the
                 * random sums of 7+ terms are not all bf16 values, so an fp32 output shows */
                const bool stored = all_bf16(want[pass], counts[pass]);
                CHECK_MSG(p.c_fp32 == !stored,
                          "%s pass %d: the product writes %s, the reference's bf16 emulation "
                          "stores %s",
                          name, pass, p.c_fp32 ? "fp32" : "16 bits", stored ? "bf16" : "fp32");
            }
        }
        o->tensor_free(b, &tx), o->tensor_free(b, &ty), o->tensor_free(b, &tdy),
            o->tensor_free(b, &tdx);
    }
    for (int i = 0; i < 3; i++)
        free(got[i]);
    free(x), free(dy), free(w), free(dw_ref), free(dw16);
}

/* ---- 2. the weight copies ---------------------------------------------------------------- */

typedef struct released {
    void *copies[16];
    int count;
} released;

static void note_release(void *context, void *copy) {
    released *r = context;
    if (r->count < 16) r->copies[r->count] = copy;
    r->count++;
}

static bool was_released(const released *r, void *copy) {
    for (int i = 0; i < r->count && i < 16; i++)
        if (r->copies[i] == copy) return true;
    return false;
}

static void check_weight_cache(void) {
    static float buffer[64]; /* kernels a [0,12), b [12,24) (touching), c [40,46) */
    int tags[8];             /* stand-ins for device copies */
    const mt_cuda_weight_key a_krsc = {buffer, MT_CUDA_WEIGHTS_KRSC_F32, 1, 3, 4},
                             a_16 = {buffer, MT_CUDA_WEIGHTS_HWIO_16, 1, 3, 4},
                             b12 = {buffer + 12, MT_CUDA_WEIGHTS_KRSC_16, 3, 1, 4},
                             c = {buffer + 40, MT_CUDA_WEIGHTS_HWIO_ROUNDED, 1, 2, 3};
    CHECK(mt_cuda_weight_count(&b12) == 12); /* depthwise-like: 3 taps x 1 x 4 channels */
    CHECK(mt_cuda_weight_copy_bytes(&a_krsc) == 12 * sizeof(float));
    CHECK(mt_cuda_weight_copy_bytes(&a_16) == 12 * 2);
    CHECK(mt_cuda_weight_copy_bytes(&b12) == 12 * 2);
    CHECK(mt_cuda_weight_copy_bytes(&c) == 6 * sizeof(float));

    mt_cuda_weight_cache cache = {0};
    CHECK(mt_cuda_weight_cache_add(&cache, &a_krsc, &tags[0]));
    CHECK(mt_cuda_weight_cache_add(&cache, &a_16, &tags[1]));
    CHECK(mt_cuda_weight_cache_add(&cache, &b12, &tags[2]));
    CHECK(mt_cuda_weight_cache_add(&cache, &c, &tags[3]));
    /* found under the exact key only: form and geometry are part of it */
    CHECK(mt_cuda_weight_cache_find(&cache, &a_krsc) == &tags[0]);
    CHECK(mt_cuda_weight_cache_find(&cache, &a_16) == &tags[1]);
    CHECK(mt_cuda_weight_cache_find(&cache, &b12) == &tags[2]);
    mt_cuda_weight_key other = a_krsc;
    other.form = MT_CUDA_WEIGHTS_KRSC_16;
    CHECK(mt_cuda_weight_cache_find(&cache, &other) == NULL);
    other = a_krsc;
    other.cin = 4, other.cout = 3; /* the same 12 floats seen as another shape */
    CHECK(mt_cuda_weight_cache_find(&cache, &other) == NULL);
    other = a_krsc;
    other.source = buffer + 1;
    CHECK(mt_cuda_weight_cache_find(&cache, &other) == NULL);

    /* writes that only touch a kernel's ends from outside drop nothing */
    released r = {0};
    CHECK(mt_cuda_weight_cache_touch(&cache, buffer + 24, 16 * sizeof(float), note_release, &r) ==
          0); /* [24, 40): between b and c */
    CHECK(mt_cuda_weight_cache_touch(&cache, buffer + 46, 18 * sizeof(float), note_release, &r) ==
          0); /* after c */
    CHECK(r.count == 0 && cache.count == 4);
    /* one byte of b's last float drops b alone */
    CHECK(mt_cuda_weight_cache_touch(&cache, (char *)(buffer + 24) - 1, 1, note_release, &r) == 1);
    CHECK(r.count == 1 && was_released(&r, &tags[2]) && cache.count == 3);
    CHECK(mt_cuda_weight_cache_find(&cache, &b12) == NULL);
    CHECK(mt_cuda_weight_cache_find(&cache, &a_krsc) == &tags[0]);
    /* a write starting one byte before a's end drops both copies of a, not c */
    r = (released){0};
    CHECK(mt_cuda_weight_cache_touch(&cache, (char *)(buffer + 12) - 1, 100, note_release, &r) ==
          2);
    CHECK(r.count == 2 && was_released(&r, &tags[0]) && was_released(&r, &tags[1]));
    CHECK(cache.count == 1 && mt_cuda_weight_cache_find(&cache, &c) == &tags[3]);
    /* a write covering c from before it: dropped */
    CHECK(mt_cuda_weight_cache_add(&cache, &a_16, &tags[4]));
    r = (released){0};
    CHECK(mt_cuda_weight_cache_touch(&cache, buffer + 30, 11 * sizeof(float), note_release, &r) ==
          1);
    CHECK(r.count == 1 && was_released(&r, &tags[3]));
    /* 0 bytes (the shutdown): everything */
    CHECK(mt_cuda_weight_cache_add(&cache, &b12, &tags[5]));
    r = (released){0};
    CHECK(mt_cuda_weight_cache_touch(&cache, buffer + 60, 0, note_release, &r) == 2);
    CHECK(r.count == 2 && cache.count == 0);
    /* free releases what is left and the array */
    CHECK(mt_cuda_weight_cache_add(&cache, &c, &tags[6]));
    r = (released){0};
    mt_cuda_weight_cache_free(&cache, note_release, &r);
    CHECK(r.count == 1 && was_released(&r, &tags[6]) && cache.copies == NULL && cache.count == 0);
}

/* ---- 3. the weight copies around a captured step ------------------------------------------ */

static void check_written_ranges(void) {
    static char memory[100];
    mt_cuda_weight_cache cache = {0};
    CHECK(mt_cuda_weight_cache_written(&cache, memory + 40, 10)); /* [40, 50) */
    CHECK(mt_cuda_weight_cache_written(&cache, memory + 10, 10)); /* [10, 20) before it */
    CHECK(mt_cuda_weight_cache_written(&cache, memory + 40, 10)); /* known already */
    CHECK(cache.written_count == 2 && cache.written[0].lo == (uintptr_t)(memory + 10));
    CHECK(mt_cuda_weight_cache_written(&cache, memory + 20, 5)); /* touches [10, 20): merged */
    CHECK(cache.written_count == 2 && cache.written[0].hi == (uintptr_t)(memory + 25));
    CHECK(mt_cuda_weight_cache_written(&cache, memory + 24, 17)); /* [24, 41): joins both */
    CHECK(cache.written_count == 1 && cache.written[0].lo == (uintptr_t)(memory + 10) &&
          cache.written[0].hi == (uintptr_t)(memory + 50));
    /* a free inside splits it, one at an end trims it, one over a whole range removes it */
    CHECK(mt_cuda_weight_cache_unwritten(&cache, memory + 20, 10));
    CHECK(cache.written_count == 2 && cache.written[0].hi == (uintptr_t)(memory + 20) &&
          cache.written[1].lo == (uintptr_t)(memory + 30));
    CHECK(mt_cuda_weight_cache_unwritten(&cache, memory + 45, 20));
    CHECK(cache.written_count == 2 && cache.written[1].hi == (uintptr_t)(memory + 45));
    CHECK(mt_cuda_weight_cache_unwritten(&cache, memory + 5, 20));
    CHECK(cache.written_count == 1 && cache.written[0].lo == (uintptr_t)(memory + 30));
    CHECK(!cache.written_all);
    released r = {0};
    mt_cuda_weight_cache_free(&cache, note_release, &r);
    CHECK(cache.written == NULL && cache.written_count == 0);
}

static void check_capture_rules(void) {
    static float trained[12], frozen[12], other[12];
    int tags[8];
    const mt_cuda_weight_key t = {trained, MT_CUDA_WEIGHTS_HWIO_16, 1, 3, 4},
                             f = {frozen, MT_CUDA_WEIGHTS_HWIO_16, 1, 3, 4},
                             o = {other, MT_CUDA_WEIGHTS_HWIO_16, 1, 3, 4};
    mt_cuda_weight_cache cache = {0};
    released r = {0};
    /* an eager step: both copies made, the optimizer writes `trained` */
    CHECK(mt_cuda_weight_cache_add(&cache, &t, &tags[0]));
    CHECK(mt_cuda_weight_cache_add(&cache, &f, &tags[1]));
    CHECK(mt_cuda_weight_cache_written(&cache, trained, sizeof trained));
    CHECK(mt_cuda_weight_cache_touch(&cache, trained, sizeof trained, note_release, &r) == 1);
    /* an evaluation remakes `trained`'s copy: the capture drops it again, keeps `frozen`'s */
    CHECK(mt_cuda_weight_cache_add(&cache, &t, &tags[2]));
    r = (released){0};
    mt_cuda_weight_cache_capture_begin(&cache, note_release, &r);
    CHECK(r.count == 1 && was_released(&r, &tags[2]) && cache.count == 1);
    /* the captured step: reads frozen's copy, makes trained's, writes trained */
    CHECK(mt_cuda_weight_cache_find(&cache, &f) == &tags[1]);
    CHECK(mt_cuda_weight_cache_find(&cache, &t) == NULL);
    CHECK(mt_cuda_weight_cache_add(&cache, &t, &tags[3]));
    CHECK(mt_cuda_weight_cache_find(&cache, &t) == &tags[3]);
    CHECK(mt_cuda_weight_cache_written(&cache, trained, sizeof trained));
    CHECK(mt_cuda_weight_cache_touch(&cache, trained, sizeof trained, note_release, &r) == 1);
    CHECK(mt_cuda_weight_cache_add(&cache, &o, &tags[4])); /* made, never dropped */
    mt_cuda_weight_pins pins;
    bool out_of_memory = true;
    r = (released){0};
    CHECK(mt_cuda_weight_cache_capture_end(&cache, true, &pins, &out_of_memory, note_release,
                                           &r));
    CHECK(!out_of_memory && r.count == 1 && was_released(&r, &tags[4]) && cache.count == 1);
    CHECK(pins.count == 1 && pins.serials[0] == cache.copies[0].serial);
    /* eager work between replays: trained's copy made, and dropped at the replay */
    CHECK(mt_cuda_weight_cache_add(&cache, &t, &tags[5]));
    r = (released){0};
    CHECK(mt_cuda_weight_cache_replay(&cache, &pins, note_release, &r));
    CHECK(r.count == 1 && was_released(&r, &tags[5]));
    CHECK(mt_cuda_weight_cache_find(&cache, &f) == &tags[1]);
    /* frozen rewritten from the host: the pinned copy is gone, the replay refused */
    CHECK(mt_cuda_weight_cache_touch(&cache, frozen, 4, note_release, &r) == 1);
    CHECK(!mt_cuda_weight_cache_replay(&cache, &pins, note_release, &r));
    mt_cuda_weight_pins_free(&pins);
    CHECK(pins.serials == NULL && pins.count == 0);
    /* a capture that reads an older copy of a kernel and then writes that kernel fails, pins
     * nothing, and leaves the copies of kernels it did not touch */
    CHECK(mt_cuda_weight_cache_add(&cache, &f, &tags[6]));
    CHECK(mt_cuda_weight_cache_add(&cache, &o, &tags[7]));
    r = (released){0};
    mt_cuda_weight_cache_capture_begin(&cache, note_release, &r);
    CHECK(r.count == 0);
    CHECK(mt_cuda_weight_cache_find(&cache, &f) == &tags[6]);
    CHECK(mt_cuda_weight_cache_find(&cache, &o) == &tags[7]);
    CHECK(mt_cuda_weight_cache_touch(&cache, frozen, sizeof frozen, note_release, &r) == 1);
    CHECK(!mt_cuda_weight_cache_capture_end(&cache, true, &pins, &out_of_memory, note_release,
                                            &r));
    CHECK(!out_of_memory && pins.count == 0 && pins.serials == NULL);
    CHECK(cache.count == 1 && mt_cuda_weight_cache_find(&cache, &o) == &tags[7]);
    /* a capture that ended broken pins nothing either */
    mt_cuda_weight_cache_capture_begin(&cache, note_release, &r);
    CHECK(mt_cuda_weight_cache_find(&cache, &o) == &tags[7]);
    CHECK(mt_cuda_weight_cache_capture_end(&cache, false, &pins, &out_of_memory, note_release,
                                           &r));
    CHECK(pins.count == 0);
    mt_cuda_weight_cache_free(&cache, note_release, &r);
}

/* ---- 4. the choices' text ------------------------------------------------------------------ */

static bool same_choice(const mt_cuda_choice *a, const mt_cuda_choice *b) {
    const mt_conv_desc *x = &a->desc, *y = &b->desc;
    return x->input.n == y->input.n && x->input.h == y->input.h && x->input.w == y->input.w &&
           x->input.c == y->input.c && x->out_channels == y->out_channels &&
           x->kernel == y->kernel && x->stride == y->stride && x->pad_top == y->pad_top &&
           x->pad_left == y->pad_left && x->pad_bottom == y->pad_bottom &&
           x->pad_right == y->pad_right && x->depthwise == y->depthwise && a->pass == b->pass &&
           a->impl == b->impl && a->algo == b->algo && a->math == b->math &&
           a->workspace == b->workspace;
}

/* The text with line `line` (1-based) replaced by `with` must fail, naming "line <line>". */
static void check_malformed(const char *text, int line, const char *with) {
    char edited[2048] = "";
    const char *p = text;
    for (int number = 1; *p; number++) {
        const size_t length = strcspn(p, "\n");
        const size_t used = strlen(edited);
        snprintf(edited + used, sizeof edited - used, "%.*s\n",
                 number == line ? (int)strlen(with) : (int)length, number == line ? with : p);
        p += length + (p[length] == '\n');
    }
    mt_cuda_choices_header header;
    mt_cuda_choice *list = NULL;
    size_t count = 0;
    const mt_status status = mt_cuda_choices_parse(edited, &header, &list, &count);
    char want[32];
    snprintf(want, sizeof want, "line %d ", line);
    CHECK_MSG(status == MT_ERR_FORMAT && strstr(mt_last_error(), want),
              "line %d as '%s': status %d, '%s'", line, with, (int)status, mt_last_error());
    CHECK(list == NULL && count == 0);
    free(list);
}

static void check_choices_text(void) {
    const mt_cuda_choice choices[] = {
        /* four different pads, so that no two fields can trade places unseen */
        {.desc = {.input = {128, 224, 224, 3}, .out_channels = 32, .kernel = 3, .stride = 2,
                  .pad_left = 1, .pad_bottom = 2, .pad_right = 3},
         .pass = MT_CUDA_CONV_BACKWARD_FILTER, .impl = MT_CUDA_IMPL_OWN},
        {.desc = {.input = {8, 56, 56, 144}, .out_channels = 144, .kernel = 3, .stride = 1,
                  .pad_top = 1, .pad_left = 1, .pad_bottom = 1, .pad_right = 1,
                  .depthwise = true},
         .pass = MT_CUDA_CONV_BACKWARD_DATA, .impl = MT_CUDA_IMPL_CUDNN, .algo = 5, .math = 2,
         .workspace = (size_t)5 << 32},
        {.desc = {.input = {4, 7, 9, 320}, .out_channels = 1280, .kernel = 1, .stride = 1},
         .pass = MT_CUDA_CONV_FORWARD, .impl = MT_CUDA_IMPL_GEMM},
    };
    const size_t count = sizeof choices / sizeof choices[0];
    const mt_cuda_choices_header header = {.precision = MT_COMPUTE_BF16, .tf32 = true};
    char *text = NULL;
    CHECK(mt_cuda_choices_format(&header, choices, count, &text) == MT_OK && text);
    if (!text) return;
    mt_cuda_choices_header back = {0};
    mt_cuda_choice *list = NULL;
    size_t got = 0;
    CHECK_MSG(mt_cuda_choices_parse(text, &back, &list, &got) == MT_OK, "%s", mt_last_error());
    CHECK(back.precision == MT_COMPUTE_BF16 && back.tf32);
    CHECK_MSG(got == count, "%zu choices back of %zu:\n%s", got, count, text);
    for (size_t i = 0; i < got && i < count; i++) {
        CHECK_MSG(same_choice(&list[i], &choices[i]), "choice %zu changed:\n%s", i, text);
        CHECK(list[i].line == (int)i + 2);
    }
    free(list);
    /* the header alone: no choices, no error */
    const char *header_line = "mobiletune-cuda-choices 1 precision fp32 tf32 0\n";
    CHECK(mt_cuda_choices_parse(header_line, &back, &list, &got) == MT_OK && !list && got == 0);
    CHECK(back.precision == MT_COMPUTE_FP32 && !back.tf32);

    check_malformed(text, 1, "mobiletune-cuda-choices 2 precision bf16 tf32 1");
    check_malformed(text, 1, "mobiletune-cuda-choices 1 precision bf17 tf32 1");
    check_malformed(text, 1, "mobiletune-cuda-choices 1 precision bf16 tf32 2");
    check_malformed(text, 1, "conv N8 1x1x1 -> 1 k1 s1 pads 0 0 0 0 regular forward own");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s2 pads 0 0 1 1 regular sideways own");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s2 pads 0 0 1 1 regular forward fast");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s2 pads 0 0 1 1 strided forward own");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s0 pads 0 0 1 1 regular forward own");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s2 pads 0 -1 1 1 regular forward own");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s2 pads 0 0 1 1 regular forward own x");
    check_malformed(text, 2, "conv N128 224x224x3 -> 32 k3 s2 pads 0 0 1 regular forward own");
    check_malformed(text, 3, "conv N8 56x56x144 -> 72 k3 s1 pads 1 1 1 1 depthwise forward own");
    check_malformed(text, 3, "conv N8 56x56x144 -> 144 k3 s1 pads 1 1 1 1 depthwise forward cudnn");
    check_malformed(text, 3, "conv N8 56x56x144 -> 144 k3 s1 pads 1 1 1 1 depthwise forward "
                             "cudnn algo -1 math 0 workspace 0");
    check_malformed(text, 3, "conv N8 56x56x144 -> 144 k3 s1 pads 1 1 1 1 depthwise forward "
                             "cudnn algo 1 math 0 workspace -4");
    check_malformed(text, 4, "conv N4 7x9x320 -> 1280 k1 s1 pads 0 0 0 0 regular forward gemm "
                             "algo 1 math 0 workspace 0");
    check_malformed(text, 4, "conv N4 7x9x320 -> 1280 k1 s1 pads 0 0 0 0 regular forward "
                             "undecided");
    free(text);
}

int main(void) {
    mt_backend *ref = NULL, *ref16 = NULL;
    MUST(mt_backend_create("reference", &(mt_backend_options){.num_threads = 1}, &ref));
    MUST(mt_backend_create("reference",
                           &(mt_backend_options){.num_threads = 1, .precision = MT_COMPUTE_BF16},
                           &ref16));
    check_pointwise(ref, ref16, (mt_shape4){2, 3, 5, 7}, 4);
    check_pointwise(ref, ref16, (mt_shape4){1, 4, 4, 24}, 40);
    check_pointwise(ref, ref16, (mt_shape4){3, 2, 1, 17}, 3);
    /* no plan for dimensions cuBLAS' int cannot hold */
    mt_cuda_gemm p;
    CHECK(!mt_cuda_pointwise_gemm(MT_CUDA_CONV_FORWARD, 3000000000L, 8, 8, &p));
    CHECK(!mt_cuda_pointwise_gemm(MT_CUDA_CONV_FORWARD, 10, 0, 8, &p));
    CHECK(!mt_cuda_pointwise_gemm(3, 10, 8, 8, &p));
    mt_backend_destroy(ref);
    mt_backend_destroy(ref16);
    check_weight_cache();
    check_written_ranges();
    check_capture_rules();
    check_choices_text();
    return mt_test_finish();
}
