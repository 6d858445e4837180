/* Convolutions of the "cuda" backend: cuDNN's legacy convolution API on NHWC tensors, cuBLAS for
 * 1x1 layers, and our own kernels where cuDNN cannot or should not run. (Over 600 lines: the
 * three implementations, their fp32 and 16-bit forms, the per-shape choice and its saving and
 * loading share one cache entry and each other's static runners; split, all of it would become an
 * internal interface.)
 *
 * Per descriptor (cached by value, like the cpu backend's primitives) an entry holds the cuDNN
 * descriptors, and per pass (forward, backward data, backward filter) the algorithm cudnnFind*
 * measured fastest among the deterministic ones (CUDNN_DETERMINISTIC: no atomics, so the same
 * sums in the same order at every call) whose workspace fits MT_CUDA_WORKSPACE_MB, with its
 * workspace size and math type, plus which implementation runs the pass. One workspace serves
 * every call. When cuDNN has no deterministic algorithm for a pass, that pass counts as one cuDNN
 * cannot run: our kernels or cuBLAS take it (a regular convolution's direct kernel with a warning
 * on stderr), and a pass forced onto cuDNN (MT_CUDA_DEPTHWISE / _POINTWISE = cudnn) fails with an
 * error naming the shape: reproducible bits before speed.
 *
 * Choices are state. Which implementation runs each (shape, pass), and cuDNN's algorithm, come
 * from timing on this GPU in this process: another process (a resume) may pick others, whose
 * sums run in another order. choices_save writes them as text (cuda_choices.h) that the trainer
 * keeps in its checkpoints; choices_load seeds the cache from it before the first step, so the
 * recorded shapes skip the timing and Find and run exactly what was recorded. A recorded cuDNN
 * algorithm is checked at load as Find's results are (cudnnGetConvolution*WorkspaceSize and
 * cuDNN's heuristic list): one this cuDNN cannot run (another GPU or version), one it lists as not
 * deterministic, or one over MT_CUDA_WORKSPACE_MB is dropped with a line on stderr and its shape
 * is timed anew (the run goes on, no longer bit-exact); one that still fails when it runs is an
 * error saying it came from the checkpoint and that MT_CUDA_CHOICES=ignore (which skips loading)
 * gets past it. A forced implementation (MT_CUDA_DEPTHWISE / _POINTWISE) wins over a recorded
 * one.
 *
 * Weights. cuDNN reads its NHWC filter (KRSC) and, in bf16/fp16, a 16-bit copy; both are made
 * once per update and kept per weight pointer (cuda_weights.c, cuda_weight_cache.h: dropped when
 * an op that can write that memory touches it), not per call. The filter gradient is written
 * every step: it still comes back through the KRSC -> HWIO transform after each call.
 *
 * Asymmetric 'SAME' padding (stride 2, even input: 0 rows on top, 1 at the bottom). cuDNN's legacy
 * API takes one pad per dimension, applied on both sides, and neither crop works for stride 2:
 * with pad 0 the last output row (the one that reads the zero row) is missing, and with pad 1 the
 * windows start on odd rows (-1, 1, 3, ...) instead of even ones (0, 2, 4, ...), so cropping the
 * output does not recover them either. Padding the activation would cost a copy the issue rules
 * out. Such convolutions therefore run our own kernels, which take any pads directly (forward,
 * backward data, backward weights). In MobileNetV2 that is Conv1 (3 input channels, where a
 * direct kernel should do well; to be measured) and the four stride-2 depthwise layers, whose
 * ZeroPadding2D the model executor folds into the convolution's pads (our depthwise kernels are
 * the general implementation anyway; those layers only lose the cuDNN alternative). cuDNN's graph
 * API has separate pre/post paddings: the route if that ever matters. A symmetric regular
 * convolution for which cuDNN has no algorithm (or fails) falls back to the same direct kernels,
 * with a warning on stderr.
 *
 * Depthwise. Our kernels and cuDNN's grouped convolution (groups = channels) are both available;
 * at a shape's first use of each pass both run (warm-up, and cudnnFind), then each is timed over
 * three runs with CUDA events and the faster one is kept for that shape and pass
 * (MT_CUDA_DEBUG=1 logs the times). MT_CUDA_DEPTHWISE=own|cudnn forces one, which is how the
 * tests check both against the reference.
 *
 * Pointwise (1x1, stride 1, no padding). On NHWC activations such a convolution is one matrix
 * product, y[N*H*W][Cout] = x[N*H*W][Cin] * w[Cin][Cout], with Keras' HWIO kernel already the
 * right row-major matrix: cuBLAS runs it with no weight transform at all, and its backward passes
 * are the two other products (dense_forward/backward's shapes). These layers are most of the
 * network's arithmetic; cuBLAS and cuDNN are timed against each other per shape and pass like the
 * depthwise pair (MT_CUDA_POINTWISE=gemm|cudnn forces one). The products' arguments come from
 * cuda_pointwise.c (plain C, tested on the CPU).
 *
 * bf16 / fp16 (train.precision; tensors stored in 16 bits, cuda_precision.c). What the reference's
 * emulation computes (src/ops/reference/conv.c + precision.c): products of the stored 16-bit
 * inputs and the kernel rounded to 16 bits, summed at high precision, the tensor output (y, dx)
 * rounded to 16 bits once, the weight gradient left fp32. Here, natively on the tensor cores:
 *  - cuBLAS (pointwise): cublasGemmEx on 16-bit A and B with CUBLAS_COMPUTE_32F; y and dx are
 *    written 16-bit (one rounding of the fp32 sum; the handle disallows reduced-precision split-K
 *    reductions, cuda_backend.c), dw fp32 straight into the gradient buffer (C = CUDA_R_32F).
 *  - cuDNN forward and backward data: x, y and the filter CUDNN_DATA_BFLOAT16/HALF, the
 *    convolution's compute type CUDNN_DATA_FLOAT (PSEUDO_BFLOAT16/HALF configurations), tensor-op
 *    math (algorithms that would convert data types are refused).
 *  - cuDNN backward filter: cuDNN writes dw in the tensors' type, a 16-bit dw, which is a rounding
 *    the emulation does not have (and fp16's range would clip large gradients). So it is not run
 *    on 16-bit data: x and dy are widened exactly into fp32 and cuDNN's fp32 backward filter runs
 *    on them (run_widened below; an entry keeps fp32 descriptors for it). It stays one of the
 *    timed alternatives, so the choice per shape keeps working; the pointwise GEMM and our
 *    kernels, native, are the expected winners for 1x1 and depthwise layers.
 *  - our kernels (depthwise, Conv1's direct kernels): their 16-bit instances (run_own with the
 *    call's storage: 16-bit loads, fp32 arithmetic, one rounding on store, dw fp32) on the
 *    per-update copy of the kernel rounded to 16 bits (kept fp32, the kernels' weight type). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_choices.h"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/cuda_pointwise.h"

enum conv_pass {
    PASS_FORWARD = MT_CUDA_CONV_FORWARD,
    PASS_BACKWARD_DATA = MT_CUDA_CONV_BACKWARD_DATA,
    PASS_BACKWARD_FILTER = MT_CUDA_CONV_BACKWARD_FILTER,
    PASSES
};
enum conv_impl {
    IMPL_UNDECIDED = MT_CUDA_IMPL_UNDECIDED,
    IMPL_CUDNN = MT_CUDA_IMPL_CUDNN,
    IMPL_OWN = MT_CUDA_IMPL_OWN,
    IMPL_GEMM = MT_CUDA_IMPL_GEMM
};
static const char *const impl_names[] = {"undecided", "cuDNN", "own", "GEMM"};
static const char *const pass_names[PASSES] = {"forward", "backward data", "backward filter"};

/* The data types a cuDNN call runs on: every pass in fp32 mode; in bf16/fp16 mode forward and
 * backward data on the 16-bit tensors (TYPE_16), backward filter on widened fp32 copies. */
enum conv_types { TYPE_F32, TYPE_16, TYPES };

struct cuda_conv_entry {
    mt_conv_desc key;
    mt_cuda_conv_geom geom;
    bool cudnn_ok; /* symmetric pads: the legacy API can run it */
    /* per data type (enum conv_types): fp32, and the 16-bit storage type in bf16/fp16 mode */
    cudnnTensorDescriptor_t x_desc[TYPES], y_desc[TYPES];
    cudnnFilterDescriptor_t w_desc[TYPES];
    cudnnConvolutionDescriptor_t conv_desc; /* compute type fp32 for both */
    bool found[PASSES];
    int algo[PASSES];
    size_t workspace[PASSES];
    cudnnMathType_t math[PASSES];
    int impl[PASSES];
    bool loaded[PASSES]; /* impl (and algo) came from choices_load, not from timing here */
};

/* One call's pointers: the pass decides which are used. */
typedef struct conv_call {
    int pass;
    const void *x, *dy; /* x: N,H,W,Cin; dy: N,Ho,Wo,Cout, of `storage` */
    const float *w;     /* Keras layout, fp32 */
    void *y, *dx;       /* as x and dy */
    float *dw;          /* Keras layout, fp32 in every mode */
    /* the elements of x, y, dy, dx: MT_CUDA_F32 (0, the default) or the 16-bit storage type
     * (cuda_precision_storage); every implementation reads it */
    mt_cuda_storage storage;
} conv_call;

static bool same_desc(const mt_conv_desc *a, const mt_conv_desc *b) {
    return a->input.n == b->input.n && a->input.h == b->input.h && a->input.w == b->input.w &&
           a->input.c == b->input.c && a->out_channels == b->out_channels &&
           a->kernel == b->kernel && a->stride == b->stride && a->pad_top == b->pad_top &&
           a->pad_left == b->pad_left && a->pad_bottom == b->pad_bottom &&
           a->pad_right == b->pad_right && a->depthwise == b->depthwise;
}

static void entry_free(cuda_conv_entry *e) {
    if (!e) return;
    for (int t = 0; t < TYPES; t++) {
        if (e->x_desc[t]) (void)cudnnDestroyTensorDescriptor(e->x_desc[t]);
        if (e->y_desc[t]) (void)cudnnDestroyTensorDescriptor(e->y_desc[t]);
        if (e->w_desc[t]) (void)cudnnDestroyFilterDescriptor(e->w_desc[t]);
    }
    if (e->conv_desc) (void)cudnnDestroyConvolutionDescriptor(e->conv_desc);
    free(e);
}

void cuda_conv_cache_free(cuda_backend *cu) {
    for (size_t i = 0; i < cu->conv_count; i++)
        entry_free(cu->convs[i]);
    free(cu->convs);
    cu->convs = NULL;
    cu->conv_count = cu->conv_capacity = 0;
}

/* The tensor and filter descriptors of one data type. */
static mt_status describe_type(cuda_conv_entry *e, int type, cudnnDataType_t data) {
    const mt_cuda_conv_geom *g = &e->geom;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&e->x_desc[type]));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&e->y_desc[type]));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&e->w_desc[type]));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(e->x_desc[type], CUDNN_TENSOR_NHWC, data, g->n, g->cin,
                                           g->h, g->w));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(e->y_desc[type], CUDNN_TENSOR_NHWC, data, g->n, g->cout,
                                           g->ho, g->wo));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(e->w_desc[type], data, CUDNN_TENSOR_NHWC, g->cout,
                                           e->key.depthwise ? 1 : g->cin, g->k, g->k));
    return MT_OK;
}

/* The cuDNN descriptors of an entry with symmetric pads: fp32 always, the 16-bit type too in
 * bf16/fp16 mode. The convolution computes in fp32 for both (cuDNN's
 * FLOAT and PSEUDO_BFLOAT16/PSEUDO_HALF configurations). */
static mt_status entry_describe(cuda_backend *cu, cuda_conv_entry *e) {
    const mt_cuda_conv_geom *g = &e->geom;
    const mt_conv_desc *d = &e->key;
    const mt_cuda_storage storage = cuda_precision_storage(cu);
    MT_TRY(describe_type(e, TYPE_F32, CUDNN_DATA_FLOAT));
    if (storage != MT_CUDA_F32)
        MT_TRY(describe_type(e, TYPE_16,
                             storage == MT_CUDA_FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&e->conv_desc));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(e->conv_desc, d->pad_top, d->pad_left, d->stride,
                                                d->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
    if (d->depthwise) CUDNN_CHECK(cudnnSetConvolutionGroupCount(e->conv_desc, g->cin));
    int n, c, h, w;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(e->conv_desc, e->x_desc[TYPE_F32],
                                                      e->w_desc[TYPE_F32], &n, &c, &h, &w));
    if (n != g->n || c != g->cout || h != g->ho || w != g->wo)
        return MT_FAIL(MT_ERR_INTERNAL,
                       "cuda conv: cuDNN's output %dx%dx%dx%d differs from ours %dx%dx%dx%d", n, h,
                       w, c, g->n, g->ho, g->wo, g->cout);
    return MT_OK;
}

static mt_status conv_entry(cuda_backend *cu, const mt_conv_desc *d, cuda_conv_entry **out) {
    for (size_t i = 0; i < cu->conv_count; i++) {
        if (same_desc(&cu->convs[i]->key, d)) {
            *out = cu->convs[i];
            return MT_OK;
        }
    }
    if (cu->conv_count == cu->conv_capacity) {
        size_t capacity = cu->conv_capacity ? 2 * cu->conv_capacity : 64;
        cuda_conv_entry **grown = realloc(cu->convs, capacity * sizeof *grown);
        if (!grown) return MT_FAIL(MT_ERR_NOMEM, "cuda conv: out of host memory for the cache");
        cu->convs = grown, cu->conv_capacity = capacity;
    }
    cuda_conv_entry *e = calloc(1, sizeof *e);
    if (!e) return MT_FAIL(MT_ERR_NOMEM, "cuda conv: out of host memory for the cache");
    mt_shape4 o = mt_conv_output_shape(d);
    e->key = *d;
    e->geom = (mt_cuda_conv_geom){.n = d->input.n,
                                  .h = d->input.h,
                                  .w = d->input.w,
                                  .cin = d->input.c,
                                  .ho = o.h,
                                  .wo = o.w,
                                  .cout = o.c,
                                  .k = d->kernel,
                                  .stride = d->stride,
                                  .pad_top = d->pad_top,
                                  .pad_left = d->pad_left};
    e->cudnn_ok = d->pad_top == d->pad_bottom && d->pad_left == d->pad_right;
    if (e->cudnn_ok) {
        mt_status status = entry_describe(cu, e);
        if (status != MT_OK) {
            entry_free(e);
            return status;
        }
    }
    cu->convs[cu->conv_count++] = e;
    *out = e;
    return MT_OK;
}

/* ---- cuDNN ---------------------------------------------------------------------------------- */

/* Whether the pass runs cuDNN on the 16-bit tensors themselves (see the top). */
static int pass_type(const cuda_backend *cu, int pass) {
    const bool narrow = cuda_precision_storage(cu) != MT_CUDA_F32;
    return narrow && pass != PASS_BACKWARD_FILTER ? TYPE_16 : TYPE_F32;
}

/* The math an algorithm may use: fp32 keeps fp32 exact (FMA) unless TF32 is allowed; on 16-bit
 * data tensor cores are the point (exact products, fp32 sums), but no algorithm that converts
 * the data to another type. */
static bool math_ok(const cuda_backend *cu, int type, cudnnMathType_t math) {
    if (type == TYPE_16) return math != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
    return cu->allow_tf32 || math == CUDNN_FMA_MATH;
}

/* The fallback when no algorithm has the wanted math: fp32 takes any (NVIDIA_TF32_OVERRIDE=0
 * still rules), 16-bit data still no conversion. */
static bool math_allowed(const cuda_backend *cu, int type, cudnnMathType_t math) {
    return type == TYPE_F32 || math_ok(cu, type, math);
}

/* One algorithm as cuDNN reports it, from Find (timed) or its heuristics (untimed): the fields
 * the three passes' perf structs share, so that one function reads any of them. */
typedef struct algo_result {
    int algo;
    cudnnStatus_t status; /* not SUCCESS: cuDNN cannot run it here, the rest means nothing */
    float ms;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
} algo_result;

/* The largest list either call returns: cuDNN 9 has 8 forward, 6 backward-data and 7
 * backward-filter algorithms, and its heuristics may list an algorithm once per math type. */
enum { MAX_ALGO_RESULTS = 32 };

/* out[0..count) = the pass-specific perf array `perf` as algo_results (a loop; no return). */
#define ALGO_RESULTS(perf, count, out)                                                             \
    for (int i_ = 0; i_ < (count); i_++)                                                           \
    (out)[i_] = (algo_result){.algo = (int)(perf)[i_].algo,                                        \
                              .status = (perf)[i_].status,                                         \
                              .ms = (perf)[i_].time,                                               \
                              .memory = (perf)[i_].memory,                                         \
                              .determinism = (perf)[i_].determinism,                               \
                              .math = (perf)[i_].mathType}

/* Find (`timed`, running every algorithm) or the heuristics (cudnnGet*Algorithm_v7, running
 * nothing) of one pass on the entry's descriptors with the math type set on conv_desc. */
static cudnnStatus_t algo_results(cuda_backend *cu, cuda_conv_entry *e, int pass, bool timed,
                                  algo_result *out, int *count) {
    const int type = pass_type(cu, pass);
    cudnnTensorDescriptor_t x = e->x_desc[type], y = e->y_desc[type];
    cudnnFilterDescriptor_t w = e->w_desc[type];
    cudnnStatus_t s;
    *count = 0;
    if (pass == PASS_FORWARD) {
        cudnnConvolutionFwdAlgoPerf_t perf[MAX_ALGO_RESULTS];
        s = timed ? cudnnFindConvolutionForwardAlgorithm(cu->cudnn, x, w, e->conv_desc, y,
                                                         MAX_ALGO_RESULTS, count, perf)
                  : cudnnGetConvolutionForwardAlgorithm_v7(cu->cudnn, x, w, e->conv_desc, y,
                                                           MAX_ALGO_RESULTS, count, perf);
        ALGO_RESULTS(perf, s == CUDNN_STATUS_SUCCESS ? *count : 0, out);
    } else if (pass == PASS_BACKWARD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_ALGO_RESULTS];
        s = timed ? cudnnFindConvolutionBackwardDataAlgorithm(cu->cudnn, w, y, e->conv_desc, x,
                                                              MAX_ALGO_RESULTS, count, perf)
                  : cudnnGetConvolutionBackwardDataAlgorithm_v7(cu->cudnn, w, y, e->conv_desc, x,
                                                                MAX_ALGO_RESULTS, count, perf);
        ALGO_RESULTS(perf, s == CUDNN_STATUS_SUCCESS ? *count : 0, out);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_ALGO_RESULTS];
        s = timed ? cudnnFindConvolutionBackwardFilterAlgorithm(cu->cudnn, x, y, e->conv_desc, w,
                                                                MAX_ALGO_RESULTS, count, perf)
                  : cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                        cu->cudnn, x, y, e->conv_desc, w, MAX_ALGO_RESULTS, count, perf);
        ALGO_RESULTS(perf, s == CUDNN_STATUS_SUCCESS ? *count : 0, out);
    }
    if (s != CUDNN_STATUS_SUCCESS) *count = 0;
    return s;
}

/* Whether Find's result r may be picked: it ran, is deterministic (no atomics: the same sums in
 * the same order at every call), fits the workspace limit, and has a math type `math_fits`
 * accepts. */
static bool pickable(const cuda_backend *cu, const algo_result *r, int type,
                     bool (*math_fits)(const cuda_backend *, int, cudnnMathType_t)) {
    return r->status == CUDNN_STATUS_SUCCESS && r->determinism == CUDNN_DETERMINISTIC &&
           r->memory <= cu->workspace_limit && math_fits(cu, type, r->math);
}

/* cudnnFind for the pass, then the first (fastest) pickable result with the wanted math; failing
 * that, the fastest with an allowed one. A non-deterministic algorithm is never taken: with none
 * left, the pass fails, and the caller falls back as for a shape cuDNN cannot run. */
static mt_status find_algo(cuda_backend *cu, cuda_conv_entry *e, int pass) {
    const mt_cuda_conv_geom *g = &e->geom;
    const int type = pass_type(cu, pass);
    const cudnnMathType_t math = type == TYPE_16 ? CUDNN_TENSOR_OP_MATH
                                 : cu->allow_tf32 ? CUDNN_DEFAULT_MATH
                                                  : CUDNN_FMA_MATH;
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, math));
    algo_result results[MAX_ALGO_RESULTS];
    int count = 0;
    const cudnnStatus_t found = algo_results(cu, e, pass, true, results, &count);
    if (found != CUDNN_STATUS_SUCCESS)
        return MT_FAIL(MT_ERR_BACKEND, "cuda conv %s: cudnnFind*Algorithm failed for N%d %dx%dx%d "
                       "-> %dx%dx%d k%d s%d: %s", pass_names[pass], g->n, g->h, g->w, g->cin,
                       g->ho, g->wo, g->cout, g->k, g->stride, cudnnGetErrorString(found));
    const algo_result *pick = NULL;
    for (int i = 0; i < count && !pick; i++)
        if (pickable(cu, &results[i], type, math_ok)) pick = &results[i];
    for (int i = 0; i < count && !pick; i++)
        if (pickable(cu, &results[i], type, math_allowed)) pick = &results[i];
    if (!pick)
        return MT_FAIL(MT_ERR_BACKEND,
                       "cuda conv %s: cuDNN has no deterministic algorithm for N%d %dx%dx%d -> "
                       "%dx%dx%d k%d s%d%s within a %zu-byte workspace (MT_CUDA_WORKSPACE_MB)",
                       pass_names[pass], g->n, g->h, g->w, g->cin, g->ho, g->wo, g->cout, g->k,
                       g->stride, type == TYPE_16 ? " on 16-bit data" : "", cu->workspace_limit);
    e->algo[pass] = pick->algo;
    e->workspace[pass] = pick->memory;
    e->math[pass] = pick->math;
    cuda_debug(cu,
               "conv %s N%d %dx%dx%d -> %dx%dx%d k%d s%d%s%s: cuDNN algo %d, %.3f ms, workspace "
               "%zu, math %d",
               pass_names[pass], g->n, g->h, g->w, g->cin, g->ho, g->wo, g->cout, g->k, g->stride,
               e->key.depthwise ? " depthwise" : "", type == TYPE_16 ? " 16-bit" : "", pick->algo,
               (double)pick->ms, pick->memory, (int)pick->math);
    e->found[pass] = true;
    return MT_OK;
}

/* cuDNN on the call's tensors, in the pass' data type (pass_type): the filter is the per-update
 * KRSC copy (16-bit for 16-bit data); the filter gradient is written in fp32 KRSC into the
 * scratch area, then transformed into the caller's HWIO dw. */
static mt_status run_cudnn(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    const mt_cuda_conv_geom *g = &e->geom;
    const int pass = c->pass, rs = g->k * g->k, wcin = e->key.depthwise ? 1 : g->cin;
    const int type = pass_type(cu, pass);
    if (!e->found[pass]) MT_TRY(find_algo(cu, e, pass));
    void *workspace = NULL;
    if (e->workspace[pass])
        MT_TRY(cuda_scratch_get(cu, &cu->workspace, e->workspace[pass], &workspace));
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, e->math[pass]));
    /* alpha and beta are float for float, half and bfloat16 data alike */
    const float one = 1.0f, zero = 0.0f;
    if (pass == PASS_FORWARD || pass == PASS_BACKWARD_DATA) {
        const void *filter = NULL;
        const mt_cuda_weight_form form =
            type == TYPE_16 ? MT_CUDA_WEIGHTS_KRSC_16 : MT_CUDA_WEIGHTS_KRSC_F32;
        MT_TRY(cuda_weights_get(cu, c->w, form, rs, wcin, g->cout, &filter));
        if (pass == PASS_FORWARD)
            CUDNN_CHECK(cudnnConvolutionForward(
                cu->cudnn, &one, e->x_desc[type], c->x, e->w_desc[type], filter, e->conv_desc,
                (cudnnConvolutionFwdAlgo_t)e->algo[pass], workspace, e->workspace[pass], &zero,
                e->y_desc[type], c->y));
        else
            CUDNN_CHECK(cudnnConvolutionBackwardData(
                cu->cudnn, &one, e->w_desc[type], filter, e->y_desc[type], c->dy, e->conv_desc,
                (cudnnConvolutionBwdDataAlgo_t)e->algo[pass], workspace, e->workspace[pass], &zero,
                e->x_desc[type], c->dx));
    } else {
        void *filter;
        MT_TRY(cuda_scratch_get(cu, &cu->filter, (size_t)rs * wcin * g->cout * sizeof(float),
                                &filter));
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(
            cu->cudnn, &one, e->x_desc[type], c->x, e->y_desc[type], c->dy, e->conv_desc,
            (cudnnConvolutionBwdFilterAlgo_t)e->algo[pass], workspace, e->workspace[pass], &zero,
            e->w_desc[type], filter));
        CUDA_CHECK(mt_cuda_launch_krsc_to_hwio(cu->stream, filter, c->dw, rs, wcin, g->cout));
    }
    return MT_OK;
}

/* ---- our kernels ---------------------------------------------------------------------------- */

/* Every storage natively (the launchers take the call's storage: 16-bit loads, fp32 arithmetic,
 * one rounding on store; dw fp32). On 16-bit tensors the kernel is read rounded to 16 bits, as the
 * reference's emulation reads it: the per-update rounded fp32 copy (cuda_weights.c). */
static mt_status run_own(cuda_backend *cu, cuda_conv_entry *e, const conv_call *call) {
    const mt_cuda_conv_geom *g = &e->geom;
    const mt_cuda_storage st = call->storage;
    const bool dw = e->key.depthwise;
    conv_call rounded = *call;
    if (st != MT_CUDA_F32 && call->pass != PASS_BACKWARD_FILTER) {
        const void *w = NULL;
        MT_TRY(cuda_weights_get(cu, call->w, MT_CUDA_WEIGHTS_HWIO_ROUNDED, g->k * g->k,
                                dw ? 1 : g->cin, g->cout, &w));
        rounded.w = w;
    }
    const conv_call *c = &rounded;
    if (c->pass == PASS_FORWARD) {
        if (dw && !cu->depthwise_legacy)
            CUDA_CHECK(mt_cuda_launch_depthwise_forward_strip(cu->stream, st, g, c->x, c->w, c->y));
        else
            CUDA_CHECK(
                dw ? mt_cuda_launch_depthwise_forward(cu->stream, st, g, c->x, c->w, c->y)
                   : mt_cuda_launch_direct_conv_forward(cu->stream, st, g, c->x, c->w, c->y));
    } else if (c->pass == PASS_BACKWARD_DATA) {
        if (dw && !cu->depthwise_legacy)
            CUDA_CHECK(mt_cuda_launch_depthwise_backward_data_strip(cu->stream, st, g, c->dy, c->w,
                                                                    c->dx));
        else
            CUDA_CHECK(
                dw ? mt_cuda_launch_depthwise_backward_data(cu->stream, st, g, c->dy, c->w, c->dx)
                   : mt_cuda_launch_direct_conv_backward_data(cu->stream, st, g, c->dy, c->w,
                                                              c->dx));
    } else {
        size_t weights = (size_t)g->k * g->k * g->cin * (dw ? 1 : g->cout);
        size_t parts = (size_t)mt_cuda_reduce_parts((long)g->n * g->ho * g->wo);
        size_t floats = parts * weights;
        const bool dw_rows = dw && !cu->depthwise_legacy;
        const bool direct_rows =
            !dw && !cu->direct_legacy && mt_cuda_direct_weights_rows_supported(g);
        if (dw_rows) floats = mt_cuda_depthwise_weights_rows_partials(g);
        if (direct_rows) floats = mt_cuda_direct_weights_rows_partials(g);
        void *partials;
        MT_TRY(cuda_scratch_get(cu, &cu->partials, floats * sizeof(float), &partials));
        if (dw_rows)
            CUDA_CHECK(mt_cuda_launch_depthwise_backward_weights_rows(cu->stream, st, g, c->x,
                                                                      c->dy, partials, c->dw));
        else if (direct_rows)
            CUDA_CHECK(mt_cuda_launch_direct_conv_backward_weights_rows(cu->stream, st, g, c->x,
                                                                        c->dy, partials, c->dw));
        else
            CUDA_CHECK(dw ? mt_cuda_launch_depthwise_backward_weights(cu->stream, st, g, c->x,
                                                                      c->dy, partials, c->dw)
                          : mt_cuda_launch_direct_conv_backward_weights(cu->stream, st, g, c->x,
                                                                        c->dy, partials, c->dw));
    }
    return MT_OK;
}

/* ---- pointwise convolutions as cuBLAS products --------------------------------------------- */

static bool is_pointwise(const mt_conv_desc *d) {
    return !d->depthwise && d->kernel == 1 && d->stride == 1 && d->pad_top == 0 &&
           d->pad_left == 0 && d->pad_bottom == 0 && d->pad_right == 0;
}

/* The pass' product (cuda_pointwise.c gives every argument): cublasSgemm on fp32 tensors and
 * the kernel as it is (HWIO is the product's [I][O] matrix: no transform); in bf16/fp16,
 * cublasGemmEx on the 16-bit tensors and the per-update 16-bit copy of the kernel, fp32 compute,
 * y and dx written 16-bit, dw fp32. */
static mt_status run_gemm(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    const mt_cuda_conv_geom *g = &e->geom;
    const long rows = (long)g->n * g->h * g->w;
    mt_cuda_gemm p;
    if (!mt_cuda_pointwise_gemm(c->pass, rows, g->cin, g->cout, &p))
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda conv: %ld pixels in one 1x1 convolution exceed "
                       "cuBLAS' int dimensions: use a smaller batch",
                       rows);
    const mt_cuda_storage storage = c->storage;
    const void *w = c->w;
    if (storage != MT_CUDA_F32 && c->pass != PASS_BACKWARD_FILTER)
        MT_TRY(cuda_weights_get(cu, c->w, MT_CUDA_WEIGHTS_HWIO_16, 1, g->cin, g->cout, &w));
    const void *operand[] = {[MT_CUDA_GEMM_X] = c->x, [MT_CUDA_GEMM_W] = w,
                             [MT_CUDA_GEMM_DY] = c->dy};
    void *result[] = {[MT_CUDA_GEMM_Y] = c->y, [MT_CUDA_GEMM_DX] = c->dx,
                      [MT_CUDA_GEMM_DW] = c->dw};
    const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                            op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const float one = 1.0f, zero = 0.0f; /* float scalars: CUBLAS_COMPUTE_32F's type */
    if (storage == MT_CUDA_F32) {
        CUBLAS_CHECK(cublasSgemm(cu->cublas, op_a, op_b, p.m, p.n, p.k, &one, operand[p.a],
                                 p.lda, operand[p.b], p.ldb, &zero, result[p.c], p.ldc));
        return MT_OK;
    }
    const cudaDataType_t narrow = storage == MT_CUDA_FP16 ? CUDA_R_16F : CUDA_R_16BF;
    CUBLAS_CHECK(cublasGemmEx(cu->cublas, op_a, op_b, p.m, p.n, p.k, &one, operand[p.a], narrow,
                              p.lda, operand[p.b], narrow, p.ldb, &zero, result[p.c],
                              p.c_fp32 ? CUDA_R_32F : narrow, p.ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    return MT_OK;
}

/* ---- cuDNN's backward filter in bf16 / fp16 ------------------------------------------------ */

/* The body of run_widened once its fp32 buffers exist: x32 (N,H,W,Cin), dy32 (N,Ho,Wo,Cout). */
static mt_status widened_pass(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c,
                              float *x32, float *dy32) {
    const mt_cuda_conv_geom *g = &e->geom;
    const int format = c->storage == MT_CUDA_FP16; /* the cast kernels' argument */
    const size_t in_count = (size_t)g->n * g->h * g->w * g->cin,
                 out_count = (size_t)g->n * g->ho * g->wo * g->cout;
    CUDA_CHECK(mt_cuda_launch_cast_to_f32(cu->stream, in_count, format, c->x, x32));
    CUDA_CHECK(mt_cuda_launch_cast_to_f32(cu->stream, out_count, format, c->dy, dy32));
    const conv_call wide = {.pass = c->pass, .x = x32, .dy = dy32, .dw = c->dw};
    return run_cudnn(cu, e, &wide);
}

/* bf16/fp16 mode: cuDNN's backward filter, which would write a 16-bit dw (see the top), on exact
 * fp32 copies of x and dy; dw fp32, what the reference's emulation computes. */
static mt_status run_widened(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    const mt_cuda_conv_geom *g = &e->geom;
    void *x32 = NULL, *dy32 = NULL;
    mt_status status = cuda_pool_alloc(
        cu, (size_t)g->n * g->h * g->w * g->cin * sizeof(float), &x32);
    if (status == MT_OK)
        status = cuda_pool_alloc(cu, (size_t)g->n * g->ho * g->wo * g->cout * sizeof(float),
                                 &dy32);
    if (status == MT_OK) status = widened_pass(cu, e, c, x32, dy32);
    /* released while the stream may still use them: the stream orders any reuse after */
    cuda_pool_release(cu, x32);
    cuda_pool_release(cu, dy32);
    return status;
}

static mt_status run_impl(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c, int impl) {
    if (impl == IMPL_GEMM) return run_gemm(cu, e, c);
    if (impl == IMPL_OWN) return run_own(cu, e, c);
    return c->storage != MT_CUDA_F32 && pass_type(cu, c->pass) == TYPE_F32
               ? run_widened(cu, e, c)
               : run_cudnn(cu, e, c);
}

/* Milliseconds of three runs of one implementation. */
static mt_status time_impl(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c, int impl,
                           float *ms) {
    CUDA_CHECK(cudaEventRecord(cu->timing[0], cu->stream));
    for (int r = 0; r < 3; r++)
        MT_TRY(run_impl(cu, e, c, impl));
    CUDA_CHECK(cudaEventRecord(cu->timing[1], cu->stream));
    CUDA_CHECK(cudaEventSynchronize(cu->timing[1]));
    CUDA_CHECK(cudaEventElapsedTime(ms, cu->timing[0], cu->timing[1]));
    return MT_OK;
}

/* Run `ours` (our kernel or cuBLAS) and cuDNN on this call, time three more runs of each, and
 * keep the faster; ours alone when cuDNN fails for the shape. Returns the choice. */
static mt_status time_both(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c, int ours,
                           const char *family, int *impl) {
    const mt_cuda_conv_geom *g = &e->geom;
    MT_TRY(run_impl(cu, e, c, ours)); /* warm-up */
    mt_status status = run_impl(cu, e, c, IMPL_CUDNN);
    if (status != MT_OK) {
        cuda_debug(cu, "%s %s N%d %dx%dx%d: cuDNN failed (%s) -> %s", family, pass_names[c->pass],
                   g->n, g->h, g->w, g->cin, mt_last_error(), impl_names[ours]);
        mt_clear_error();
        *impl = ours;
        return MT_OK;
    }
    float ours_ms = 0.0f, cudnn_ms = 0.0f;
    MT_TRY(time_impl(cu, e, c, ours, &ours_ms));
    MT_TRY(time_impl(cu, e, c, IMPL_CUDNN, &cudnn_ms));
    *impl = cudnn_ms < ours_ms ? IMPL_CUDNN : ours;
    cuda_debug(cu, "%s %s N%d %dx%dx%d -> %d k%d s%d: %s %.3f ms, cuDNN %.3f ms -> %s", family,
               pass_names[c->pass], g->n, g->h, g->w, g->cin, g->cout, g->k, g->stride,
               impl_names[ours], ours_ms / 3, cudnn_ms / 3, impl_names[*impl]);
    return MT_OK;
}

/* The first call of a pass on a shape: decide who runs it from now on, and run it. */
static mt_status choose_and_run(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    int *impl = &e->impl[c->pass];
    const mt_cuda_conv_geom *g = &e->geom;
    if (!e->cudnn_ok) {
        *impl = IMPL_OWN;
        cuda_debug(cu, "conv %s N%d %dx%dx%d k%d s%d pads t%d b%d l%d r%d: asymmetric, own kernel",
                   pass_names[c->pass], g->n, g->h, g->w, g->cin, g->k, g->stride, e->key.pad_top,
                   e->key.pad_bottom, e->key.pad_left, e->key.pad_right);
    } else if (is_pointwise(&e->key)) {
        if (cu->pointwise_mode == 1)
            *impl = IMPL_GEMM;
        else if (cu->pointwise_mode == 2)
            *impl = IMPL_CUDNN;
        else
            MT_TRY(time_both(cu, e, c, IMPL_GEMM, "pointwise", impl));
    } else if (!e->key.depthwise) {
        /* correctness before speed: if cuDNN has nothing for this shape, the direct kernel */
        mt_status status = run_impl(cu, e, c, IMPL_CUDNN);
        if (status == MT_OK) {
            *impl = IMPL_CUDNN;
            return MT_OK;
        }
        fprintf(stderr,
                "mobiletune cuda: conv %s N%d %dx%dx%d -> %dx%dx%d k%d s%d: cuDNN failed (%s); "
                "using mobiletune's direct kernel, which is slow for wide layers\n",
                pass_names[c->pass], g->n, g->h, g->w, g->cin, g->ho, g->wo, g->cout, g->k,
                g->stride, mt_last_error());
        mt_clear_error();
        *impl = IMPL_OWN;
    } else if (cu->depthwise_mode == 2) {
        *impl = IMPL_CUDNN;
    } else if (cu->depthwise_mode == 1) {
        *impl = IMPL_OWN;
    } else {
        MT_TRY(time_both(cu, e, c, IMPL_OWN, "depthwise", impl));
    }
    return run_impl(cu, e, c, *impl);
}

/* ---- the ops ------------------------------------------------------------------------------- */

/* in: the input-side tensor (x or dx), out: the output-side one (y or dy) */
static mt_status check_conv(const cuda_backend *cu, const char *op, const mt_conv_desc *d,
                            const mt_tensor *in, const mt_tensor *out) {
    if (d->kernel <= 0 || d->stride <= 0 || d->pad_top < 0 || d->pad_left < 0 ||
        d->pad_bottom < 0 || d->pad_right < 0 || d->out_channels <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda %s: bad descriptor (kernel %d, stride %d, pads t%d l%d b%d r%d, "
                       "out_channels %d)",
                       op, d->kernel, d->stride, d->pad_top, d->pad_left, d->pad_bottom,
                       d->pad_right, d->out_channels);
    if (d->depthwise && d->out_channels != d->input.c)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda %s: depthwise conv needs out_channels (%d) == input channels (%d)", op,
                       d->out_channels, d->input.c);
    mt_shape4 o = mt_conv_output_shape(d);
    if (o.h <= 0 || o.w <= 0)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: kernel %d larger than the padded %dx%d input", op,
                       d->kernel, d->input.h, d->input.w);
    MT_TRY(cuda_check_tensor(op, "input", in, d->input, cuda_precision_storage(cu)));
    MT_TRY(cuda_check_tensor(op, "output", out, o, cuda_precision_storage(cu)));
    return MT_OK;
}

static mt_status conv_run(mt_backend *backend, const mt_conv_desc *d, const conv_call *c) {
    cuda_backend *cu = cuda_of(backend);
    cuda_conv_entry *e = NULL;
    MT_TRY(conv_entry(cu, d, &e));
    if (e->impl[c->pass] == IMPL_UNDECIDED) return choose_and_run(cu, e, c);
    const mt_status status = run_impl(cu, e, c, e->impl[c->pass]);
    if (status == MT_OK || !e->loaded[c->pass]) return status;
    /* a recorded choice that passed choices_load's checks and still fails: say where it came
     * from and how to do without it */
    const mt_cuda_conv_geom *g = &e->geom;
    return mt_error_context(status,
                            "cuda conv %s N%d %dx%dx%d -> %dx%dx%d k%d s%d: the choice loaded "
                            "from the checkpoint (%s, algo %d) failed (MT_CUDA_CHOICES=ignore "
                            "chooses anew; the resume is then not bit-exact)",
                            pass_names[c->pass], g->n, g->h, g->w, g->cin, g->ho, g->wo, g->cout,
                            g->k, g->stride, impl_names[e->impl[c->pass]], e->algo[c->pass]);
}

/* "N128 80x80x32 -> 80x80x16 k1 s1": MT_CUDA_PROFILE's label of a convolution */
#define CONV_FMT "N%d %dx%dx%d -> %dx%dx%d k%d s%d%s"
#define CONV_ARGS(d)                                                                               \
    (d)->input.n, (d)->input.h, (d)->input.w, (d)->input.c, mt_conv_output_shape(d).h,             \
        mt_conv_output_shape(d).w, (d)->out_channels, (d)->kernel, (d)->stride,                    \
        (d)->depthwise ? " depthwise" : ""

/* x: N,H,W,Cin; w: HWIO or [k][k][C]; y: N,Ho,Wo,Cout */
static mt_status conv_forward_op(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                                 const float *w, mt_tensor *y) {
    MT_TRY(check_conv(cuda_of(backend), "conv_forward", desc, x, y));
    conv_call c = {.pass = PASS_FORWARD,
                   .x = x->data,
                   .w = w,
                   .y = y->data,
                   .storage = cuda_precision_storage(cuda_of(backend))};
    return conv_run(backend, desc, &c);
}

/* dy: N,Ho,Wo,Cout; w: as above; dx: N,H,W,Cin (overwritten) */
static mt_status conv_backward_data_op(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *dy, const float *w, mt_tensor *dx) {
    MT_TRY(check_conv(cuda_of(backend), "conv_backward_data", desc, dx, dy));
    conv_call c = {.pass = PASS_BACKWARD_DATA,
                   .dy = dy->data,
                   .w = w,
                   .dx = dx->data,
                   .storage = cuda_precision_storage(cuda_of(backend))};
    return conv_run(backend, desc, &c);
}

/* x: N,H,W,Cin; dy: N,Ho,Wo,Cout; dw: Keras layout (overwritten) */
static mt_status conv_backward_weights_op(mt_backend *backend, const mt_conv_desc *desc,
                                          const mt_tensor *x, const mt_tensor *dy, float *dw) {
    MT_TRY(check_conv(cuda_of(backend), "conv_backward_weights", desc, x, dy));
    conv_call c = {.pass = PASS_BACKWARD_FILTER,
                   .x = x->data,
                   .dy = dy->data,
                   .dw = dw,
                   .storage = cuda_precision_storage(cuda_of(backend))};
    /* dw is backend memory written here: no copy may outlive it (were it ever a kernel) */
    cuda_weights_touched(cuda_of(backend), dw,
                         (size_t)desc->kernel * desc->kernel * desc->input.c *
                             (desc->depthwise ? 1 : desc->out_channels) * sizeof(float));
    return conv_run(backend, desc, &c);
}

mt_status mt_cuda_conv_forward(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                               const float *w, mt_tensor *y) {
    CUDA_PROFILED(backend, conv_forward_op(backend, desc, x, w, y), "conv_forward", CONV_FMT,
                  CONV_ARGS(desc));
}

mt_status mt_cuda_conv_backward_data(mt_backend *backend, const mt_conv_desc *desc,
                                     const mt_tensor *dy, const float *w, mt_tensor *dx) {
    CUDA_PROFILED(backend, conv_backward_data_op(backend, desc, dy, w, dx), "conv_backward_data",
                  CONV_FMT, CONV_ARGS(desc));
}

mt_status mt_cuda_conv_backward_weights(mt_backend *backend, const mt_conv_desc *desc,
                                        const mt_tensor *x, const mt_tensor *dy, float *dw) {
    CUDA_PROFILED(backend, conv_backward_weights_op(backend, desc, x, dy, dw),
                  "conv_backward_weights", CONV_FMT, CONV_ARGS(desc));
}

/* ---- the choices as state (ops.h choices_save / choices_load, text: cuda_choices.h) --------- */

mt_status mt_cuda_choices_save(mt_backend *backend, char **text) {
    cuda_backend *cu = cuda_of(backend);
    *text = NULL;
    mt_cuda_choice *list = calloc(cu->conv_count * PASSES + 1, sizeof *list);
    if (!list) return MT_FAIL(MT_ERR_NOMEM, "cuda choices: out of host memory");
    size_t count = 0;
    for (size_t i = 0; i < cu->conv_count; i++) {
        const cuda_conv_entry *e = cu->convs[i];
        for (int pass = 0; pass < PASSES; pass++) {
            /* a forced cuDNN pass that failed before its Find has nothing to record */
            if (e->impl[pass] == IMPL_UNDECIDED || (e->impl[pass] == IMPL_CUDNN && !e->found[pass]))
                continue;
            const bool cudnn = e->impl[pass] == IMPL_CUDNN;
            list[count++] = (mt_cuda_choice){.desc = e->key,
                                             .pass = pass,
                                             .impl = (mt_cuda_conv_impl)e->impl[pass],
                                             .algo = cudnn ? e->algo[pass] : 0,
                                             .math = cudnn ? (int)e->math[pass] : 0,
                                             .workspace = cudnn ? e->workspace[pass] : 0};
        }
    }
    const mt_cuda_choices_header header = {.precision = backend->options.precision,
                                           .tf32 = cu->allow_tf32};
    mt_status status = count ? mt_cuda_choices_format(&header, list, count, text) : MT_OK;
    free(list);
    return status;
}

/* The workspace cuDNN says the recorded algorithm needs on this shape, with the recorded math:
 * a status other than success means this cuDNN and GPU cannot run it. */
static cudnnStatus_t recorded_workspace(cuda_backend *cu, cuda_conv_entry *e, int pass, int algo,
                                        size_t *bytes) {
    const int type = pass_type(cu, pass);
    if (pass == PASS_FORWARD)
        return cudnnGetConvolutionForwardWorkspaceSize(cu->cudnn, e->x_desc[type], e->w_desc[type],
                                                       e->conv_desc, e->y_desc[type],
                                                       (cudnnConvolutionFwdAlgo_t)algo, bytes);
    if (pass == PASS_BACKWARD_DATA)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(
            cu->cudnn, e->w_desc[type], e->y_desc[type], e->conv_desc, e->x_desc[type],
            (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(
        cu->cudnn, e->x_desc[type], e->y_desc[type], e->conv_desc, e->w_desc[type],
        (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
}

/* Why cuDNN's heuristics would not let Find's pick be the recorded algorithm here, or NULL when
 * they would: among the entries cuDNN can run (status SUCCESS; it lists the others too, their
 * other fields meaningless), the algorithm's entry with the recorded math type counts, else any
 * of its entries (the heuristics may label an algorithm's math otherwise than Find did). `why`
 * holds the text (a failed query's error). */
static const char *recorded_refusal(cuda_backend *cu, cuda_conv_entry *e, int pass, int algo,
                                    cudnnMathType_t math, char *why, size_t why_size) {
    algo_result listed[MAX_ALGO_RESULTS];
    int count = 0;
    const cudnnStatus_t s = algo_results(cu, e, pass, false, listed, &count);
    if (s != CUDNN_STATUS_SUCCESS) {
        snprintf(why, why_size, "could not be checked: cuDNN's heuristics failed: %s",
                 cudnnGetErrorString(s));
        return why;
    }
    const algo_result *entry = NULL;
    for (int i = 0; i < count; i++)
        if (listed[i].algo == algo && listed[i].status == CUDNN_STATUS_SUCCESS &&
            (!entry || (listed[i].math == math && entry->math != math)))
            entry = &listed[i];
    if (!entry) return "is not among the algorithms cuDNN's heuristics say can run here";
    if (entry->determinism != CUDNN_DETERMINISTIC)
        return "is not deterministic here (cuDNN's heuristics)";
    return NULL;
}

/* One recorded choice into the cache. A choice no backend could make for the shape (cuBLAS for
 * a convolution that is no product, cuDNN for asymmetric pads) is a broken text: an error. A
 * cuDNN algorithm that would not be picked here is dropped, with a line saying why: one this
 * cuDNN cannot run (another GPU or version), one it lists as not deterministic, or one whose
 * workspace exceeds MT_CUDA_WORKSPACE_MB (a checkpoint from another cuDNN, edited by hand, or a
 * limit smaller than the recording run's). The shape is then timed anew and the run goes on, no
 * longer bit-exact with the one that recorded it. */
static mt_status apply_choice(cuda_backend *cu, const mt_cuda_choice *choice, size_t *applied) {
    const int line = choice->line;
    const mt_conv_desc *d = &choice->desc;
    const bool pointwise = is_pointwise(d);
    if ((pointwise && cu->pointwise_mode != 0) || (d->depthwise && cu->depthwise_mode != 0)) {
        cuda_debug(cu, "choice of line %d not loaded: MT_CUDA_%s forces the implementation", line,
                   pointwise ? "POINTWISE" : "DEPTHWISE");
        return MT_OK;
    }
    cuda_conv_entry *e = NULL;
    MT_TRY(conv_entry(cu, d, &e));
    const int pass = choice->pass;
    if ((choice->impl == MT_CUDA_IMPL_GEMM && !pointwise) ||
        (choice->impl == MT_CUDA_IMPL_CUDNN && !e->cudnn_ok))
        return MT_FAIL(MT_ERR_FORMAT,
                       "cuda choices line %d: %s cannot run convolution N%d %dx%dx%d -> %d k%d "
                       "s%d pads %d %d %d %d",
                       line, impl_names[choice->impl], d->input.n, d->input.h, d->input.w,
                       d->input.c, d->out_channels, d->kernel, d->stride, d->pad_top, d->pad_left,
                       d->pad_bottom, d->pad_right);
    if (choice->impl == MT_CUDA_IMPL_CUDNN) {
        CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, (cudnnMathType_t)choice->math));
        size_t bytes = 0;
        const cudnnStatus_t s = recorded_workspace(cu, e, pass, choice->algo, &bytes);
        /* the workspace it runs with: cuDNN's figure, or the recorded one when larger */
        const size_t workspace = bytes > choice->workspace ? bytes : choice->workspace;
        char text[160] = "";
        const char *why = NULL;
        if (s != CUDNN_STATUS_SUCCESS) {
            snprintf(text, sizeof text, "cannot run here: %s", cudnnGetErrorString(s));
            why = text;
        } else if (workspace > cu->workspace_limit) {
            snprintf(text, sizeof text, "needs %zu bytes of workspace, over the %zu that "
                     "MT_CUDA_WORKSPACE_MB allows", workspace, cu->workspace_limit);
            why = text;
        } else {
            why = recorded_refusal(cu, e, pass, choice->algo, (cudnnMathType_t)choice->math, text,
                                   sizeof text);
        }
        if (why) {
            fprintf(stderr,
                    "mobiletune cuda: the checkpoint's choice of line %d (cuDNN %s algo %d, math "
                    "%d) %s; timing that shape anew, so this resume is not bit-exact\n",
                    line, pass_names[pass], choice->algo, choice->math, why);
            return MT_OK;
        }
        e->algo[pass] = choice->algo;
        e->math[pass] = (cudnnMathType_t)choice->math;
        e->workspace[pass] = workspace;
        e->found[pass] = true;
    }
    e->impl[pass] = choice->impl;
    e->loaded[pass] = true;
    (*applied)++;
    return MT_OK;
}

mt_status mt_cuda_choices_load(mt_backend *backend, const char *text) {
    cuda_backend *cu = cuda_of(backend);
    if (cu->ignore_choices) {
        cuda_debug(cu, "MT_CUDA_CHOICES=ignore: the recorded choices are not loaded");
        return MT_OK;
    }
    mt_cuda_choices_header header;
    mt_cuda_choice *list = NULL;
    size_t count = 0;
    MT_TRY(mt_cuda_choices_parse(text, &header, &list, &count));
    mt_status status = MT_OK;
    if (header.precision != backend->options.precision || header.tf32 != cu->allow_tf32) {
        fprintf(stderr,
                "mobiletune cuda: the checkpoint's choices were made for precision %s%s, this "
                "run computes in %s%s: every shape is timed anew\n",
                mt_compute_precision_name(header.precision), header.tf32 ? " with TF32" : "",
                mt_compute_precision_name(backend->options.precision),
                cu->allow_tf32 ? " with TF32" : "");
        count = 0;
    }
    size_t applied = 0;
    for (size_t i = 0; status == MT_OK && i < count; i++)
        status = apply_choice(cu, &list[i], &applied);
    free(list);
    if (status == MT_OK)
        cuda_debug(cu, "loaded %zu recorded convolution choices of %zu", applied, count);
    return status;
}
