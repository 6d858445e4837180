/* The cuDNN stand-in (cudnn.h): grouped 2-d cross-correlation, forward, backward data and backward
 * filter, on NHWC or NCHW tensors and KRSC or KCRS filters of fp32, bf16 or fp16 data with fp32
 * compute, on the handle's stream. Sums in double and rounds once to the output's type (as exact
 * as a device's or more, so the backend's tolerances hold). Find reports three algorithms, with
 * the math type the descriptor asks for, each summing its own way so that the choice among them
 * shows in the bits: 0 in double (rounded once), 1 in float in product order, staged in a 1 MiB
 * workspace (so that the workspace limit and the workspace a call passes matter), and 2, reported
 * fastest but CUDNN_NON_DETERMINISTIC, like the one or the other by call, as atomics would (the
 * backend must never pick it). Ranked 2, 0, 1; MT_EMU_SLOW=algo0 (emu_cudart.cc) ranks 0 last.
 * The heuristic query (cudnnGet*Algorithm_v7) lists the same three, untimed, in the order 0, 1, 2,
 * with unrunnable entries and entries under other math types among them (heuristics below).
 * What cuDNN would reject is rejected with a line saying why: descriptors that disagree
 * (channels, groups, output size, data types), a tensor not inside one device block, a workspace
 * smaller than the algorithm needs, a Find while the thread captures a graph. */
#include <stdio.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cudnn.h"
#include "emu_internal.hh"

struct cudnnContext {
    cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int k = 0, c = 0, h = 0, w = 0;
};
struct cudnnConvolutionStruct {
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dilation_h = 1, dilation_w = 1, groups = 1;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

bool element_type(cudnnDataType_t type, mt_emu_element *out) {
    switch (type) {
    case CUDNN_DATA_FLOAT: *out = MT_EMU_F32; return true;
    case CUDNN_DATA_BFLOAT16: *out = MT_EMU_BF16; return true;
    case CUDNN_DATA_HALF: *out = MT_EMU_FP16; return true;
    default: return false;
    }
}

int output_size(int input, int pad, int filter, int dilation, int stride) {
    return (input + 2 * pad - dilation * (filter - 1) - 1) / stride + 1;
}

/* One convolution's geometry, checked, with the element offsets of each layout. */
struct problem {
    cudnnTensorStruct x, y;
    cudnnFilterStruct w;
    cudnnConvolutionStruct conv;
    mt_emu_element type;

    size_t x_at(int n, int c, int h, int w_) const { return at(x, n, c, h, w_); }
    size_t y_at(int n, int c, int h, int w_) const { return at(y, n, c, h, w_); }
    size_t w_at(int k, int c, int r, int s) const {
        return w.format == CUDNN_TENSOR_NHWC ? (((size_t)k * w.h + r) * w.w + s) * w.c + c
                                             : (((size_t)k * w.c + c) * w.h + r) * w.w + s;
    }
    size_t x_count() const { return (size_t)x.n * x.c * x.h * x.w; }
    size_t y_count() const { return (size_t)y.n * y.c * y.h * y.w; }
    size_t w_count() const { return (size_t)w.k * w.c * w.h * w.w; }

    /* every (output position, output channel, tap, input channel) with its x, w and y offsets */
    template <class F> void each_product(F visit) const {
        const int out_per_group = w.k / conv.groups;
        for (int n = 0; n < y.n; n++)
            for (int oh = 0; oh < y.h; oh++)
                for (int ow = 0; ow < y.w; ow++)
                    for (int k = 0; k < y.c; k++) {
                        const int group = k / out_per_group;
                        for (int r = 0; r < w.h; r++) {
                            const int ih = oh * conv.u - conv.pad_h + r * conv.dilation_h;
                            if (ih < 0 || ih >= x.h) continue;
                            for (int s = 0; s < w.w; s++) {
                                const int iw = ow * conv.v - conv.pad_w + s * conv.dilation_w;
                                if (iw < 0 || iw >= x.w) continue;
                                for (int c = 0; c < w.c; c++)
                                    visit(x_at(n, group * w.c + c, ih, iw), w_at(k, c, r, s),
                                          y_at(n, k, oh, ow));
                            }
                        }
                    }
    }

  private:
    static size_t at(const cudnnTensorStruct &t, int n, int c, int h, int w_) {
        return t.format == CUDNN_TENSOR_NHWC ? (((size_t)n * t.h + h) * t.w + w_) * t.c + c
                                             : (((size_t)n * t.c + c) * t.h + h) * t.w + w_;
    }
};

cudnnStatus_t bad(const char *what) {
    mt_emu_complain("cuDNN", "%s", what);
    return CUDNN_STATUS_BAD_PARAM;
}

cudnnStatus_t check(const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                    const cudnnConvolutionStruct *conv, const cudnnTensorStruct *y,
                    problem *out) {
    if (!x || !w || !conv || !y) return bad("a descriptor is NULL");
    if (conv->mode != CUDNN_CROSS_CORRELATION) return bad("only cross-correlation is emulated");
    if (x->type != w->type || x->type != y->type)
        return bad("x, w and y must have one data type");
    if (conv->compute != CUDNN_DATA_FLOAT) return bad("the compute type must be FLOAT");
    if (!element_type(x->type, &out->type)) return bad("data type not emulated");
    if (conv->groups < 1 || x->c != w->c * conv->groups || w->k % conv->groups != 0)
        return bad("input channels differ from the filter's channels x groups");
    if (y->n != x->n || y->c != w->k ||
        y->h != output_size(x->h, conv->pad_h, w->h, conv->dilation_h, conv->u) ||
        y->w != output_size(x->w, conv->pad_w, w->w, conv->dilation_w, conv->v)) {
        char text[200];
        snprintf(text, sizeof text, "y %dx%dx%dx%d is not the convolution's output (x %dx%dx%dx%d)",
                 y->n, y->c, y->h, y->w, x->n, x->c, x->h, x->w);
        return bad(text);
    }
    out->x = *x, out->w = *w, out->conv = *conv, out->y = *y;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t check_memory(const problem &p, const void *x, const void *w, const void *y) {
    const size_t bytes = mt_emu_element_bytes(p.type);
    if (!mt_emu_is_device_range(x, p.x_count() * bytes)) return bad("x is not inside one device block");
    if (!mt_emu_is_device_range(w, p.w_count() * bytes)) return bad("w is not inside one device block");
    if (!mt_emu_is_device_range(y, p.y_count() * bytes)) return bad("y is not inside one device block");
    return CUDNN_STATUS_SUCCESS;
}

/* out = alpha * sums + beta * out (out not read when beta is 0, as cuDNN) */
void blend(void *out, mt_emu_element type, const std::vector<double> &sums, float alpha,
           float beta) {
    for (size_t i = 0; i < sums.size(); i++) {
        double value = (double)alpha * sums[i];
        if (beta != 0) value += (double)beta * (double)mt_emu_load(out, type, i);
        mt_emu_store(out, type, i, (float)value);
    }
}

enum { EMULATED_ALGOS = 3, NON_DETERMINISTIC_ALGO = 2, WORKSPACE_ALGO = 1 };

/* The workspace bytes `algo` needs (the top: only algorithm 1 stages its sums). */
size_t algo_workspace(int algo) {
    return algo == WORKSPACE_ALGO ? (size_t)1 << 20 : 0;
}

/* One perf entry for `algo`, as Find and the heuristic query report it. */
template <class Perf> Perf algo_perf(const problem &p, int algo, float ms) {
    Perf perf{};
    perf.algo = decltype(perf.algo)(algo);
    perf.status = CUDNN_STATUS_SUCCESS;
    perf.time = ms;
    perf.memory = algo_workspace(algo);
    perf.determinism =
        algo == NON_DETERMINISTIC_ALGO ? CUDNN_NON_DETERMINISTIC : CUDNN_DETERMINISTIC;
    perf.mathType = p.conv.math;
    return perf;
}

template <class Perf> cudnnStatus_t find(const problem &p, int requested, int *returned, Perf *perf) {
    *returned = 0;
    if (mt_emu_capture_refuses("cudnnFind*Algorithm")) return CUDNN_STATUS_NOT_SUPPORTED;
    if (requested < 1) return bad("Find: no room for a result");
    const float algo0_ms = mt_emu_slow(MT_EMU_SLOW_ALGO0) ? 0.03f : 0.01f;
    const float ms[EMULATED_ALGOS] = {algo0_ms, 0.02f, 0.005f};
    int order[EMULATED_ALGOS] = {0, 1, 2};
    std::sort(order, order + EMULATED_ALGOS, [&](int a, int b) { return ms[a] < ms[b]; });
    for (int i = 0; i < EMULATED_ALGOS && i < requested; i++) {
        perf[i] = algo_perf<Perf>(p, order[i], ms[order[i]]);
        *returned = i + 1;
    }
    return CUDNN_STATUS_SUCCESS;
}

/* cudnnGet*Algorithm_v7: cuDNN's heuristics, nothing run or timed (time -1, as cuDNN reports).
 * As cuDNN may, it lists an algorithm more than once, so that a reader must pick the right
 * entry. For each algorithm, in order:
 *  - an entry it cannot run: CUDNN_STATUS_NOT_SUPPORTED, math type ALLOW_CONVERSION, every
 *    other field zero, so "non-deterministic" (a reader must skip it);
 *  - the runnable entry under another math type than Find reports (the descriptor's); for
 *    algorithm 1 the only runnable one (a reader must accept another math type), for 0 and 2
 *    with the opposite determinism;
 *  - for 0 and 2, the runnable entry under Find's math type, with the algorithm's determinism
 *    (a reader must prefer the recorded math type). */
template <class Perf>
cudnnStatus_t heuristics(const problem &p, int requested, int *returned, Perf *perf) {
    *returned = 0;
    const cudnnMathType_t other =
        p.conv.math == CUDNN_DEFAULT_MATH ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
    std::vector<Perf> list;
    for (int algo = 0; algo < EMULATED_ALGOS; algo++) {
        Perf unrunnable{};
        unrunnable.algo = decltype(unrunnable.algo)(algo);
        unrunnable.status = CUDNN_STATUS_NOT_SUPPORTED;
        unrunnable.mathType = CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
        list.push_back(unrunnable);
        Perf mine = algo_perf<Perf>(p, algo, -1.0f), elsewhere = mine;
        elsewhere.mathType = other;
        if (algo != WORKSPACE_ALGO)
            elsewhere.determinism = mine.determinism == CUDNN_DETERMINISTIC
                                        ? CUDNN_NON_DETERMINISTIC
                                        : CUDNN_DETERMINISTIC;
        list.push_back(elsewhere);
        if (algo != WORKSPACE_ALGO) list.push_back(mine);
    }
    if (requested < (int)list.size()) return bad("Get*Algorithm_v7: no room for every result");
    std::copy(list.begin(), list.end(), perf);
    *returned = (int)list.size();
    return CUDNN_STATUS_SUCCESS;
}

/* A convolution call's workspace: at least what its algorithm needs, inside one device block. */
cudnnStatus_t check_workspace(int algo, const void *workspace, size_t bytes) {
    const size_t needed = algo_workspace(algo);
    if (needed == 0) return CUDNN_STATUS_SUCCESS;
    if (bytes < needed) return bad("the workspace is smaller than the algorithm needs");
    if (!mt_emu_is_device_range(workspace, needed))
        return bad("the workspace is not inside one device block");
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t workspace_size(const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                             const cudnnConvolutionStruct *conv, const cudnnTensorStruct *y,
                             int algo, size_t *bytes) {
    problem p;
    const cudnnStatus_t status = check(x, w, conv, y, &p);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    if (algo < 0 || algo >= EMULATED_ALGOS) return CUDNN_STATUS_NOT_SUPPORTED;
    *bytes = algo_workspace(algo);
    return CUDNN_STATUS_SUCCESS;
}

/* A pass' sums, in the numerics of algorithm `algo` (see the top): `term(xi, wi, yi, &at)` is one
 * product and the index of the sum it goes into. */
template <class F>
std::vector<double> pass_sums(const problem &p, int algo, size_t count, F term) {
    static std::atomic<unsigned long> calls{0};
    if (algo == NON_DETERMINISTIC_ALGO) algo = (int)(calls++ % 2);
    std::vector<double> sums(count, 0.0);
    if (algo == 0) {
        p.each_product([&](size_t xi, size_t wi, size_t yi) {
            size_t at = 0;
            const double value = term(xi, wi, yi, &at);
            sums[at] += value;
        });
        return sums;
    }
    std::vector<float> single(count, 0.0f);
    p.each_product([&](size_t xi, size_t wi, size_t yi) {
        size_t at = 0;
        const double value = term(xi, wi, yi, &at);
        single[at] += (float)value;
    });
    std::copy(single.begin(), single.end(), sums.begin());
    return sums;
}

} // namespace

extern "C" {

const char *cudnnGetErrorString(cudnnStatus_t status) {
    switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    }
    return "CUDNN_STATUS_UNKNOWN";
}

size_t cudnnGetVersion(void) {
    return 90000;
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) {
    *handle = new cudnnContext;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
    delete handle;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
    handle->stream = stream;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *desc) {
    *desc = new cudnnTensorStruct;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t desc) {
    delete desc;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t desc, cudnnTensorFormat_t format,
                                         cudnnDataType_t type, int n, int c, int h, int w) {
    if (n < 1 || c < 1 || h < 1 || w < 1) return bad("a tensor dimension below 1");
    desc->format = format, desc->type = type;
    desc->n = n, desc->c = c, desc->h = h, desc->w = w;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *desc) {
    *desc = new cudnnFilterStruct;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t desc) {
    delete desc;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t desc, cudnnDataType_t type,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w) {
    if (k < 1 || c < 1 || h < 1 || w < 1) return bad("a filter dimension below 1");
    desc->format = format, desc->type = type;
    desc->k = k, desc->c = c, desc->h = h, desc->w = w;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *desc) {
    *desc = new cudnnConvolutionStruct;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t desc) {
    delete desc;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t desc, int pad_h,
                                              int pad_w, int u, int v, int dilation_h,
                                              int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute_type) {
    if (pad_h < 0 || pad_w < 0 || u < 1 || v < 1 || dilation_h < 1 || dilation_w < 1)
        return bad("convolution: a negative pad or a stride or dilation below 1");
    desc->pad_h = pad_h, desc->pad_w = pad_w, desc->u = u, desc->v = v;
    desc->dilation_h = dilation_h, desc->dilation_w = dilation_w;
    desc->mode = mode, desc->compute = compute_type;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t desc, int groups) {
    if (groups < 1) return bad("group count below 1");
    desc->groups = groups;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t desc,
                                          cudnnMathType_t math) {
    desc->math = math;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(cudnnConvolutionDescriptor_t conv,
                                                    cudnnTensorDescriptor_t x,
                                                    cudnnFilterDescriptor_t w, int *n, int *c,
                                                    int *h, int *wo) {
    if (x->c != w->c * conv->groups) return bad("input channels differ from filter x groups");
    *n = x->n, *c = w->k;
    *h = output_size(x->h, conv->pad_h, w->h, conv->dilation_h, conv->u);
    *wo = output_size(x->w, conv->pad_w, w->w, conv->dilation_w, conv->v);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t handle,
                                                   cudnnTensorDescriptor_t x,
                                                   cudnnFilterDescriptor_t w,
                                                   cudnnConvolutionDescriptor_t conv,
                                                   cudnnTensorDescriptor_t y, int requested,
                                                   int *returned,
                                                   cudnnConvolutionFwdAlgoPerf_t *perf) {
    (void)handle;
    problem p;
    cudnnStatus_t status = check(x, w, conv, y, &p);
    return status != CUDNN_STATUS_SUCCESS ? status : find(p, requested, returned, perf);
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t handle,
                                                        cudnnFilterDescriptor_t w,
                                                        cudnnTensorDescriptor_t dy,
                                                        cudnnConvolutionDescriptor_t conv,
                                                        cudnnTensorDescriptor_t dx, int requested,
                                                        int *returned,
                                                        cudnnConvolutionBwdDataAlgoPerf_t *perf) {
    (void)handle;
    problem p;
    cudnnStatus_t status = check(dx, w, conv, dy, &p);
    return status != CUDNN_STATUS_SUCCESS ? status : find(p, requested, returned, perf);
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t handle, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t conv, cudnnFilterDescriptor_t dw, int requested, int *returned,
    cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
    (void)handle;
    problem p;
    cudnnStatus_t status = check(x, dw, conv, dy, &p);
    return status != CUDNN_STATUS_SUCCESS ? status : find(p, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t handle,
                                                     cudnnTensorDescriptor_t x,
                                                     cudnnFilterDescriptor_t w,
                                                     cudnnConvolutionDescriptor_t conv,
                                                     cudnnTensorDescriptor_t y, int requested,
                                                     int *returned,
                                                     cudnnConvolutionFwdAlgoPerf_t *perf) {
    (void)handle;
    problem p;
    cudnnStatus_t status = check(x, w, conv, y, &p);
    return status != CUDNN_STATUS_SUCCESS ? status : heuristics(p, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t dx, int requested, int *returned,
    cudnnConvolutionBwdDataAlgoPerf_t *perf) {
    (void)handle;
    problem p;
    cudnnStatus_t status = check(dx, w, conv, dy, &p);
    return status != CUDNN_STATUS_SUCCESS ? status : heuristics(p, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t conv, cudnnFilterDescriptor_t dw, int requested, int *returned,
    cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
    (void)handle;
    problem p;
    cudnnStatus_t status = check(x, dw, conv, dy, &p);
    return status != CUDNN_STATUS_SUCCESS ? status : heuristics(p, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t handle,
                                                      cudnnTensorDescriptor_t x,
                                                      cudnnFilterDescriptor_t w,
                                                      cudnnConvolutionDescriptor_t conv,
                                                      cudnnTensorDescriptor_t y,
                                                      cudnnConvolutionFwdAlgo_t algo,
                                                      size_t *bytes) {
    (void)handle;
    return workspace_size(x, w, conv, y, (int)algo, bytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t handle,
                                                           cudnnFilterDescriptor_t w,
                                                           cudnnTensorDescriptor_t dy,
                                                           cudnnConvolutionDescriptor_t conv,
                                                           cudnnTensorDescriptor_t dx,
                                                           cudnnConvolutionBwdDataAlgo_t algo,
                                                           size_t *bytes) {
    (void)handle;
    return workspace_size(dx, w, conv, dy, (int)algo, bytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t dy,
    cudnnConvolutionDescriptor_t conv, cudnnFilterDescriptor_t dw,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t *bytes) {
    (void)handle;
    return workspace_size(x, dw, conv, dy, (int)algo, bytes);
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha,
                                      cudnnTensorDescriptor_t x_desc, const void *x,
                                      cudnnFilterDescriptor_t w_desc, const void *w,
                                      cudnnConvolutionDescriptor_t conv,
                                      cudnnConvolutionFwdAlgo_t algo, void *workspace,
                                      size_t workspace_bytes, const void *beta,
                                      cudnnTensorDescriptor_t y_desc, void *y) {
    problem p;
    cudnnStatus_t status = check(x_desc, w_desc, conv, y_desc, &p);
    if (status == CUDNN_STATUS_SUCCESS) status = check_memory(p, x, w, y);
    if (status == CUDNN_STATUS_SUCCESS) status = check_workspace(algo, workspace, workspace_bytes);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    mt_emu_enqueue_kind(handle->stream, MT_EMU_SLOW_CUDNN, [=]() {
        const std::vector<double> sums =
            pass_sums(p, algo, p.y_count(), [&](size_t xi, size_t wi, size_t yi, size_t *at) {
                *at = yi;
                return (double)mt_emu_load(x, p.type, xi) * (double)mt_emu_load(w, p.type, wi);
            });
        blend(y, p.type, sums, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha,
                                           cudnnFilterDescriptor_t w_desc, const void *w,
                                           cudnnTensorDescriptor_t dy_desc, const void *dy,
                                           cudnnConvolutionDescriptor_t conv,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workspace,
                                           size_t workspace_bytes, const void *beta,
                                           cudnnTensorDescriptor_t dx_desc, void *dx) {
    problem p;
    cudnnStatus_t status = check(dx_desc, w_desc, conv, dy_desc, &p);
    if (status == CUDNN_STATUS_SUCCESS) status = check_memory(p, dx, w, dy);
    if (status == CUDNN_STATUS_SUCCESS) status = check_workspace(algo, workspace, workspace_bytes);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    mt_emu_enqueue_kind(handle->stream, MT_EMU_SLOW_CUDNN, [=]() {
        const std::vector<double> sums =
            pass_sums(p, algo, p.x_count(), [&](size_t xi, size_t wi, size_t yi, size_t *at) {
                *at = xi;
                return (double)mt_emu_load(dy, p.type, yi) * (double)mt_emu_load(w, p.type, wi);
            });
        blend(dx, p.type, sums, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void *alpha,
                                             cudnnTensorDescriptor_t x_desc, const void *x,
                                             cudnnTensorDescriptor_t dy_desc, const void *dy,
                                             cudnnConvolutionDescriptor_t conv,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *workspace,
                                             size_t workspace_bytes, const void *beta,
                                             cudnnFilterDescriptor_t dw_desc, void *dw) {
    problem p;
    cudnnStatus_t status = check(x_desc, dw_desc, conv, dy_desc, &p);
    if (status == CUDNN_STATUS_SUCCESS) status = check_memory(p, x, dw, dy);
    if (status == CUDNN_STATUS_SUCCESS) status = check_workspace(algo, workspace, workspace_bytes);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    mt_emu_enqueue_kind(handle->stream, MT_EMU_SLOW_CUDNN, [=]() {
        const std::vector<double> sums =
            pass_sums(p, algo, p.w_count(), [&](size_t xi, size_t wi, size_t yi, size_t *at) {
                *at = wi;
                return (double)mt_emu_load(x, p.type, xi) * (double)mt_emu_load(dy, p.type, yi);
            });
        blend(dw, p.type, sums, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

} /* extern "C" */
