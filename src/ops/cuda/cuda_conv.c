/* Convolutions of the "cuda" backend: cuDNN's legacy convolution API on NHWC tensors, and our own
 * kernels where cuDNN cannot or should not run.
 *
 * Per descriptor (cached by value, like the cpu backend's primitives) an entry holds the cuDNN
 * descriptors, and per pass (forward, backward data, backward filter) the algorithm cudnnFind*
 * measured fastest among those whose workspace fits MT_CUDA_WORKSPACE_MB, with its workspace size
 * and math type, plus which implementation runs the pass. One workspace serves every call.
 *
 * Weights. Keras' HWIO kernel becomes cuDNN's NHWC filter (KRSC) in a small transform kernel on
 * every call, and the filter gradient comes back the same way: the weights change every step, so
 * a cached copy would need invalidation for a saving of a few microseconds.
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
 * depthwise pair (MT_CUDA_POINTWISE=gemm|cudnn forces one). */
#include <stdio.h>
#include <stdlib.h>

#include "ops/cuda/cuda_internal.h"

enum conv_pass { PASS_FORWARD, PASS_BACKWARD_DATA, PASS_BACKWARD_FILTER, PASSES };
enum conv_impl { IMPL_UNDECIDED, IMPL_CUDNN, IMPL_OWN, IMPL_GEMM };
static const char *const impl_names[] = {"undecided", "cuDNN", "own", "GEMM"};
static const char *const pass_names[PASSES] = {"forward", "backward data", "backward filter"};

struct cuda_conv_entry {
    mt_conv_desc key;
    mt_cuda_conv_geom geom;
    bool cudnn_ok; /* symmetric pads: the legacy API can run it */
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    bool found[PASSES];
    int algo[PASSES];
    size_t workspace[PASSES];
    cudnnMathType_t math[PASSES];
    int impl[PASSES];
};

/* One call's pointers: the pass decides which are used. */
typedef struct conv_call {
    int pass;
    const float *x, *w, *dy; /* x: N,H,W,Cin; w: Keras layout; dy: N,Ho,Wo,Cout */
    float *y, *dx, *dw;
    /* the elements of x, y, dy, dx: MT_CUDA_F32 (0, the default) or 16-bit patterns, which only
     * run_own reads so far (its kernels have every storage); w, dw are float always */
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
    if (e->x_desc) (void)cudnnDestroyTensorDescriptor(e->x_desc);
    if (e->y_desc) (void)cudnnDestroyTensorDescriptor(e->y_desc);
    if (e->w_desc) (void)cudnnDestroyFilterDescriptor(e->w_desc);
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

/* The cuDNN descriptors of an entry with symmetric pads. */
static mt_status entry_describe(cuda_backend *cu, cuda_conv_entry *e) {
    const mt_cuda_conv_geom *g = &e->geom;
    const mt_conv_desc *d = &e->key;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&e->x_desc));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&e->y_desc));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&e->w_desc));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&e->conv_desc));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(e->x_desc, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, g->n,
                                           g->cin, g->h, g->w));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(e->y_desc, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, g->n,
                                           g->cout, g->ho, g->wo));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(e->w_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, g->cout,
                                           d->depthwise ? 1 : g->cin, g->k, g->k));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(e->conv_desc, d->pad_top, d->pad_left, d->stride,
                                                d->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
    if (d->depthwise) CUDNN_CHECK(cudnnSetConvolutionGroupCount(e->conv_desc, g->cin));
    int n, c, h, w;
    CUDNN_CHECK(
        cudnnGetConvolution2dForwardOutputDim(e->conv_desc, e->x_desc, e->w_desc, &n, &c, &h, &w));
    if (n != g->n || c != g->cout || h != g->ho || w != g->wo)
        return MT_FAIL(MT_ERR_INTERNAL,
                       "cuda conv: cuDNN's output %dx%dx%dx%d differs from ours %dx%dx%dx%d", n, h,
                       w, c, g->n, g->ho, g->wo, g->cout);
    (void)cu;
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

static bool math_ok(const cuda_backend *cu, cudnnMathType_t math) {
    return cu->allow_tf32 || math == CUDNN_FMA_MATH;
}

/* Pick the first (fastest) result that succeeded, fits the workspace limit and keeps fp32
 * exact; failing the last, the fastest that succeeded (NVIDIA_TF32_OVERRIDE=0 still rules). */
#define PICK_ALGO(perf, returned)                                                                  \
    do {                                                                                           \
        int pick_ = -1;                                                                            \
        for (int i_ = 0; i_ < (returned) && pick_ < 0; i_++)                                       \
            if ((perf)[i_].status == CUDNN_STATUS_SUCCESS &&                                       \
                (perf)[i_].memory <= cu->workspace_limit && math_ok(cu, (perf)[i_].mathType))      \
                pick_ = i_;                                                                        \
        for (int i_ = 0; i_ < (returned) && pick_ < 0; i_++)                                       \
            if ((perf)[i_].status == CUDNN_STATUS_SUCCESS &&                                       \
                (perf)[i_].memory <= cu->workspace_limit)                                          \
                pick_ = i_;                                                                        \
        if (pick_ < 0)                                                                             \
            return MT_FAIL(MT_ERR_BACKEND,                                                         \
                           "cuda conv %s: cuDNN has no algorithm for N%d %dx%dx%d -> %dx%dx%d "    \
                           "k%d s%d within a %zu-byte workspace (MT_CUDA_WORKSPACE_MB)",           \
                           pass_names[pass], g->n, g->h, g->w, g->cin, g->ho, g->wo, g->cout,      \
                           g->k, g->stride, cu->workspace_limit);                                  \
        e->algo[pass] = (int)(perf)[pick_].algo;                                                   \
        e->workspace[pass] = (perf)[pick_].memory;                                                 \
        e->math[pass] = (perf)[pick_].mathType;                                                    \
        cuda_debug(cu,                                                                             \
                   "conv %s N%d %dx%dx%d -> %dx%dx%d k%d s%d%s: cuDNN algo %d, %.3f ms, "          \
                   "workspace %zu, math %d",                                                       \
                   pass_names[pass], g->n, g->h, g->w, g->cin, g->ho, g->wo, g->cout, g->k,        \
                   g->stride, e->key.depthwise ? " depthwise" : "", (int)(perf)[pick_].algo,       \
                   (double)(perf)[pick_].time, (perf)[pick_].memory, (int)(perf)[pick_].mathType); \
    } while (0)

static mt_status find_algo(cuda_backend *cu, cuda_conv_entry *e, int pass) {
    enum { MAX_ALGOS = 16 };
    const mt_cuda_conv_geom *g = &e->geom;
    int returned = 0;
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc,
                                            cu->allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    if (pass == PASS_FORWARD) {
        cudnnConvolutionFwdAlgoPerf_t perf[MAX_ALGOS];
        CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(
            cu->cudnn, e->x_desc, e->w_desc, e->conv_desc, e->y_desc, MAX_ALGOS, &returned, perf));
        PICK_ALGO(perf, returned);
    } else if (pass == PASS_BACKWARD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_ALGOS];
        CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(
            cu->cudnn, e->w_desc, e->y_desc, e->conv_desc, e->x_desc, MAX_ALGOS, &returned, perf));
        PICK_ALGO(perf, returned);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_ALGOS];
        CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(
            cu->cudnn, e->x_desc, e->y_desc, e->conv_desc, e->w_desc, MAX_ALGOS, &returned, perf));
        PICK_ALGO(perf, returned);
    }
    e->found[pass] = true;
    return MT_OK;
}

static mt_status run_cudnn(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    const mt_cuda_conv_geom *g = &e->geom;
    const int pass = c->pass, rs = g->k * g->k, wcin = e->key.depthwise ? 1 : g->cin;
    if (!e->found[pass]) MT_TRY(find_algo(cu, e, pass));
    void *filter, *workspace = NULL;
    MT_TRY(cuda_scratch_get(cu, &cu->filter, (size_t)rs * wcin * g->cout * sizeof(float), &filter));
    if (e->workspace[pass])
        MT_TRY(cuda_scratch_get(cu, &cu->workspace, e->workspace[pass], &workspace));
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, e->math[pass]));
    const float one = 1.0f, zero = 0.0f;
    if (pass == PASS_FORWARD) {
        CUDA_CHECK(mt_cuda_launch_hwio_to_krsc(cu->stream, c->w, filter, rs, wcin, g->cout));
        CUDNN_CHECK(cudnnConvolutionForward(cu->cudnn, &one, e->x_desc, c->x, e->w_desc, filter,
                                            e->conv_desc, (cudnnConvolutionFwdAlgo_t)e->algo[pass],
                                            workspace, e->workspace[pass], &zero, e->y_desc, c->y));
    } else if (pass == PASS_BACKWARD_DATA) {
        CUDA_CHECK(mt_cuda_launch_hwio_to_krsc(cu->stream, c->w, filter, rs, wcin, g->cout));
        CUDNN_CHECK(
            cudnnConvolutionBackwardData(cu->cudnn, &one, e->w_desc, filter, e->y_desc, c->dy,
                                         e->conv_desc, (cudnnConvolutionBwdDataAlgo_t)e->algo[pass],
                                         workspace, e->workspace[pass], &zero, e->x_desc, c->dx));
    } else {
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(
            cu->cudnn, &one, e->x_desc, c->x, e->y_desc, c->dy, e->conv_desc,
            (cudnnConvolutionBwdFilterAlgo_t)e->algo[pass], workspace, e->workspace[pass], &zero,
            e->w_desc, filter));
        CUDA_CHECK(mt_cuda_launch_krsc_to_hwio(cu->stream, filter, c->dw, rs, wcin, g->cout));
    }
    return MT_OK;
}

/* ---- our kernels ---------------------------------------------------------------------------- */

static mt_status run_own(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    const mt_cuda_conv_geom *g = &e->geom;
    const mt_cuda_storage st = c->storage;
    const bool dw = e->key.depthwise;
    if (c->pass == PASS_FORWARD) {
        if (dw && !cu->depthwise_legacy)
            CUDA_CHECK(
                mt_cuda_launch_depthwise_forward_strip_stored(cu->stream, st, g, c->x, c->w, c->y));
        else
            CUDA_CHECK(
                dw ? mt_cuda_launch_depthwise_forward_stored(cu->stream, st, g, c->x, c->w, c->y)
                   : mt_cuda_launch_direct_conv_forward_stored(cu->stream, st, g, c->x, c->w,
                                                               c->y));
    } else if (c->pass == PASS_BACKWARD_DATA) {
        if (dw && !cu->depthwise_legacy)
            CUDA_CHECK(mt_cuda_launch_depthwise_backward_data_strip_stored(cu->stream, st, g, c->dy,
                                                                           c->w, c->dx));
        else
            CUDA_CHECK(dw ? mt_cuda_launch_depthwise_backward_data_stored(cu->stream, st, g, c->dy,
                                                                          c->w, c->dx)
                          : mt_cuda_launch_direct_conv_backward_data_stored(cu->stream, st, g,
                                                                            c->dy, c->w, c->dx));
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
            CUDA_CHECK(mt_cuda_launch_depthwise_backward_weights_rows_stored(
                cu->stream, st, g, c->x, c->dy, partials, c->dw));
        else if (direct_rows)
            CUDA_CHECK(mt_cuda_launch_direct_conv_backward_weights_rows_stored(
                cu->stream, st, g, c->x, c->dy, partials, c->dw));
        else
            CUDA_CHECK(dw ? mt_cuda_launch_depthwise_backward_weights_stored(
                                cu->stream, st, g, c->x, c->dy, partials, c->dw)
                          : mt_cuda_launch_direct_conv_backward_weights_stored(
                                cu->stream, st, g, c->x, c->dy, partials, c->dw));
    }
    return MT_OK;
}

/* ---- pointwise convolutions as cuBLAS products --------------------------------------------- */

static bool is_pointwise(const mt_conv_desc *d) {
    return !d->depthwise && d->kernel == 1 && d->stride == 1 && d->pad_top == 0 &&
           d->pad_left == 0 && d->pad_bottom == 0 && d->pad_right == 0;
}

/* Row-major matrices seen column-major by cuBLAS (as in cuda_ops.c's dense ops): with
 * M = N*H*W rows, y^T[Cout][M] = w^T x^T, dx^T[Cin][M] = w dy^T, dw^T[Cout][Cin] = dy^T x. */
static mt_status run_gemm(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c) {
    const mt_cuda_conv_geom *g = &e->geom;
    const long rows = (long)g->n * g->h * g->w;
    if (rows > 2147483647L)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda conv: %ld pixels in one 1x1 convolution exceed "
                       "cuBLAS' int dimensions: use a smaller batch",
                       rows);
    const int M = (int)rows, I = g->cin, O = g->cout;
    const float one = 1.0f, zero = 0.0f;
    if (c->pass == PASS_FORWARD)
        CUBLAS_CHECK(cublasSgemm(cu->cublas, CUBLAS_OP_N, CUBLAS_OP_N, O, M, I, &one, c->w, O, c->x,
                                 I, &zero, c->y, O));
    else if (c->pass == PASS_BACKWARD_DATA)
        CUBLAS_CHECK(cublasSgemm(cu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, I, M, O, &one, c->w, O,
                                 c->dy, O, &zero, c->dx, I));
    else
        CUBLAS_CHECK(cublasSgemm(cu->cublas, CUBLAS_OP_N, CUBLAS_OP_T, O, I, M, &one, c->dy, O,
                                 c->x, I, &zero, c->dw, O));
    return MT_OK;
}

static mt_status run_impl(cuda_backend *cu, cuda_conv_entry *e, const conv_call *c, int impl) {
    if (impl == IMPL_GEMM) return run_gemm(cu, e, c);
    return impl == IMPL_CUDNN ? run_cudnn(cu, e, c) : run_own(cu, e, c);
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
    mt_status status = run_cudnn(cu, e, c);
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
        mt_status status = run_cudnn(cu, e, c);
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
static mt_status check_conv(const char *op, const mt_conv_desc *d, const mt_tensor *in,
                            const mt_tensor *out) {
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
    MT_TRY(cuda_check_tensor(op, "input", in, d->input));
    MT_TRY(cuda_check_tensor(op, "output", out, o));
    return MT_OK;
}

static mt_status conv_run(mt_backend *backend, const mt_conv_desc *d, const conv_call *c) {
    cuda_backend *cu = cuda_of(backend);
    cuda_conv_entry *e = NULL;
    MT_TRY(conv_entry(cu, d, &e));
    if (e->impl[c->pass] == IMPL_UNDECIDED) return choose_and_run(cu, e, c);
    return run_impl(cu, e, c, e->impl[c->pass]);
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
    MT_TRY(check_conv("conv_forward", desc, x, y));
    conv_call c = {.pass = PASS_FORWARD, .x = x->data, .w = w, .y = y->data};
    return conv_run(backend, desc, &c);
}

/* dy: N,Ho,Wo,Cout; w: as above; dx: N,H,W,Cin (overwritten) */
static mt_status conv_backward_data_op(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *dy, const float *w, mt_tensor *dx) {
    MT_TRY(check_conv("conv_backward_data", desc, dx, dy));
    conv_call c = {.pass = PASS_BACKWARD_DATA, .dy = dy->data, .w = w, .dx = dx->data};
    return conv_run(backend, desc, &c);
}

/* x: N,H,W,Cin; dy: N,Ho,Wo,Cout; dw: Keras layout (overwritten) */
static mt_status conv_backward_weights_op(mt_backend *backend, const mt_conv_desc *desc,
                                          const mt_tensor *x, const mt_tensor *dy, float *dw) {
    MT_TRY(check_conv("conv_backward_weights", desc, x, dy));
    conv_call c = {.pass = PASS_BACKWARD_FILTER, .x = x->data, .dy = dy->data, .dw = dw};
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
