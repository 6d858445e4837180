/* Convolution of the reference backend: regular (groups 1) and depthwise (multiplier 1), no bias,
 * square kernel, explicit zero pads from the descriptor (TF 'SAME' puts the odd one bottom/right).
 * Layouts: x N,H,W,Cin; y N,Ho,Wo,Cout; regular kernel [kh][kw][cin][cout] (HWIO), depthwise
 * kernel [kh][kw][c]. Every sum is accumulated in double.
 *
 * The index relation used everywhere: output (oh, ow) and tap (kh, kw) read input
 *     ih = oh*stride + kh - pad_top,  iw = ow*stride + kw - pad_left,
 * and an (ih, iw) outside the input reads a zero. */
#include <omp.h>
#include <stdlib.h>

#include "ops/reference/reference.h"

/* the kernel's floats: [k][k][cin][cout], or [k][k][c] for depthwise */
static size_t conv_weight_count(const mt_conv_desc *d) {
    return (size_t)d->kernel * d->kernel * d->input.c * (d->depthwise ? 1 : d->out_channels);
}

static mt_status check_conv(const char *op, const mt_conv_desc *d, mt_shape4 x_shape,
                            mt_shape4 y_shape) {
    if (d->kernel <= 0 || d->stride <= 0 || d->pad_top < 0 || d->pad_left < 0 ||
        d->pad_bottom < 0 || d->pad_right < 0 || d->out_channels <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: bad descriptor (kernel %d, stride %d, pads t%d l%d b%d "
                       "r%d, out_channels %d)",
                       op, d->kernel, d->stride, d->pad_top, d->pad_left, d->pad_bottom,
                       d->pad_right, d->out_channels);
    if (d->depthwise && d->out_channels != d->input.c)
        return MT_FAIL(MT_ERR_INVALID,
                       "%s: depthwise conv needs out_channels (%d) == input "
                       "channels (%d)",
                       op, d->out_channels, d->input.c);
    mt_shape4 out = mt_conv_output_shape(d);
    if (out.h <= 0 || out.w <= 0)
        return MT_FAIL(MT_ERR_INVALID, "%s: kernel %d larger than the padded %dx%d input", op,
                       d->kernel, d->input.h, d->input.w);
    MT_TRY(mt_ref_check_shape(op, "input", x_shape, d->input));
    MT_TRY(mt_ref_check_shape(op, "output", y_shape, out));
    return MT_OK;
}

/* Per-thread double accumulators of `width` values, indexed by omp_get_thread_num(). */
static mt_status scratch_alloc(const char *op, int threads, int width, double **out) {
    *out = malloc((size_t)threads * (size_t)width * sizeof(double));
    if (!*out)
        return MT_FAIL(MT_ERR_NOMEM, "%s: out of memory for %d x %d accumulators", op, threads,
                       width);
    return MT_OK;
}

/* ---- forward ---------------------------------------------------------------------------- */

/* x: N,H,W,Cin; w: [k][k][Cin][Cout]; y: N,Ho,Wo,Cout */
static mt_status conv_forward_regular(mt_backend *backend, const mt_conv_desc *d, const float *x,
                                      const float *w, float *y, mt_shape4 o) {
    const int H = d->input.h, W = d->input.w, cin = d->input.c, cout = o.c, k = d->kernel;
    const int threads = mt_ref_threads(backend);
    double *scratch;
    MT_TRY(scratch_alloc("conv_forward", threads, cout, &scratch));
#pragma omp parallel num_threads(threads)
    {
        double *acc = scratch + (size_t)omp_get_thread_num() * cout;
#pragma omp for collapse(2) schedule(static)
        for (int n = 0; n < o.n; n++) {
            for (int oh = 0; oh < o.h; oh++) {
                for (int ow = 0; ow < o.w; ow++) {
                    for (int co = 0; co < cout; co++)
                        acc[co] = 0.0;
                    for (int kh = 0; kh < k; kh++) {
                        int ih = oh * d->stride + kh - d->pad_top;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < k; kw++) {
                            int iw = ow * d->stride + kw - d->pad_left;
                            if (iw < 0 || iw >= W) continue;
                            const float *xp = x + (((size_t)n * H + ih) * W + iw) * cin;
                            const float *wp = w + ((size_t)kh * k + kw) * cin * cout;
                            for (int ci = 0; ci < cin; ci++) {
                                double xv = xp[ci];
                                const float *wrow = wp + (size_t)ci * cout;
                                for (int co = 0; co < cout; co++)
                                    acc[co] += xv * wrow[co];
                            }
                        }
                    }
                    float *yp = y + (((size_t)n * o.h + oh) * o.w + ow) * cout;
                    for (int co = 0; co < cout; co++)
                        yp[co] = (float)acc[co];
                }
            }
        }
    }
    free(scratch);
    return MT_OK;
}

/* x: N,H,W,C; w: [k][k][C]; y: N,Ho,Wo,C */
static void conv_forward_depthwise(mt_backend *backend, const mt_conv_desc *d, const float *x,
                                   const float *w, float *y, mt_shape4 o) {
    const int H = d->input.h, W = d->input.w, C = d->input.c, k = d->kernel;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < o.n; n++) {
        for (int oh = 0; oh < o.h; oh++) {
            for (int ow = 0; ow < o.w; ow++) {
                for (int c = 0; c < C; c++) {
                    double acc = 0.0;
                    for (int kh = 0; kh < k; kh++) {
                        int ih = oh * d->stride + kh - d->pad_top;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < k; kw++) {
                            int iw = ow * d->stride + kw - d->pad_left;
                            if (iw < 0 || iw >= W) continue;
                            acc += (double)x[(((size_t)n * H + ih) * W + iw) * C + c] *
                                   w[((size_t)kh * k + kw) * C + c];
                        }
                    }
                    y[(((size_t)n * o.h + oh) * o.w + ow) * C + c] = (float)acc;
                }
            }
        }
    }
}

mt_status mt_ref_conv_forward(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                              const float *w, mt_tensor *y) {
    MT_TRY(check_conv("conv_forward", desc, x->shape, y->shape));
    float *owned = NULL;
    w = mt_ref_conv_weights(backend, w, conv_weight_count(desc), &owned);
    if (!w) return MT_ERR_NOMEM;
    mt_status status = MT_OK;
    if (desc->depthwise)
        conv_forward_depthwise(backend, desc, x->data, w, y->data, y->shape);
    else
        status = conv_forward_regular(backend, desc, x->data, w, y->data, y->shape);
    free(owned);
    MT_TRY(status);
    return mt_ref_stored(backend, y);
}

/* ---- backward data: dx = transposed convolution of dy with w ---------------------------- */

/* The output position that tap `kk` maps input position `i` to, or -1 when there is none
 * (i + pad - kk is negative, not a multiple of the stride, or past the output). */
static int output_index(int i, int pad, int kk, int stride, int out_size) {
    int t = i + pad - kk;
    if (t < 0 || t % stride != 0) return -1;
    t /= stride;
    return t < out_size ? t : -1;
}

/* dy: N,Ho,Wo,Cout; w: [k][k][Cin][Cout]; dx: N,H,W,Cin */
static void conv_backward_data_regular(mt_backend *backend, const mt_conv_desc *d, const float *dy,
                                       const float *w, float *dx, mt_shape4 o) {
    const int N = d->input.n, H = d->input.h, W = d->input.w, cin = d->input.c, cout = o.c;
    const int k = d->kernel;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < N; n++) {
        for (int ih = 0; ih < H; ih++) {
            for (int iw = 0; iw < W; iw++) {
                for (int ci = 0; ci < cin; ci++) {
                    double acc = 0.0;
                    for (int kh = 0; kh < k; kh++) {
                        int oh = output_index(ih, d->pad_top, kh, d->stride, o.h);
                        if (oh < 0) continue;
                        for (int kw = 0; kw < k; kw++) {
                            int ow = output_index(iw, d->pad_left, kw, d->stride, o.w);
                            if (ow < 0) continue;
                            const float *dyp = dy + (((size_t)n * o.h + oh) * o.w + ow) * cout;
                            const float *wrow = w + (((size_t)kh * k + kw) * cin + ci) * cout;
                            for (int co = 0; co < cout; co++)
                                acc += (double)dyp[co] * wrow[co];
                        }
                    }
                    dx[(((size_t)n * H + ih) * W + iw) * cin + ci] = (float)acc;
                }
            }
        }
    }
}

/* dy: N,Ho,Wo,C; w: [k][k][C]; dx: N,H,W,C */
static void conv_backward_data_depthwise(mt_backend *backend, const mt_conv_desc *d,
                                         const float *dy, const float *w, float *dx, mt_shape4 o) {
    const int N = d->input.n, H = d->input.h, W = d->input.w, C = d->input.c, k = d->kernel;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < N; n++) {
        for (int ih = 0; ih < H; ih++) {
            for (int iw = 0; iw < W; iw++) {
                for (int c = 0; c < C; c++) {
                    double acc = 0.0;
                    for (int kh = 0; kh < k; kh++) {
                        int oh = output_index(ih, d->pad_top, kh, d->stride, o.h);
                        if (oh < 0) continue;
                        for (int kw = 0; kw < k; kw++) {
                            int ow = output_index(iw, d->pad_left, kw, d->stride, o.w);
                            if (ow < 0) continue;
                            acc += (double)dy[(((size_t)n * o.h + oh) * o.w + ow) * C + c] *
                                   w[((size_t)kh * k + kw) * C + c];
                        }
                    }
                    dx[(((size_t)n * H + ih) * W + iw) * C + c] = (float)acc;
                }
            }
        }
    }
}

mt_status mt_ref_conv_backward_data(mt_backend *backend, const mt_conv_desc *desc,
                                    const mt_tensor *dy, const float *w, mt_tensor *dx) {
    MT_TRY(check_conv("conv_backward_data", desc, dx->shape, dy->shape));
    float *owned = NULL;
    w = mt_ref_conv_weights(backend, w, conv_weight_count(desc), &owned);
    if (!w) return MT_ERR_NOMEM;
    if (desc->depthwise)
        conv_backward_data_depthwise(backend, desc, dy->data, w, dx->data, dy->shape);
    else
        conv_backward_data_regular(backend, desc, dy->data, w, dx->data, dy->shape);
    free(owned);
    return mt_ref_stored(backend, dx);
}

/* ---- backward weights: dw = correlation of x and dy over batch and output positions ------- */

/* x: N,H,W,Cin; dy: N,Ho,Wo,Cout; dw: [k][k][Cin][Cout] */
static mt_status conv_backward_weights_regular(mt_backend *backend, const mt_conv_desc *d,
                                               const float *x, const float *dy, float *dw,
                                               mt_shape4 o) {
    const int N = d->input.n, H = d->input.h, W = d->input.w, cin = d->input.c, cout = o.c;
    const int k = d->kernel;
    const int threads = mt_ref_threads(backend);
    double *scratch;
    MT_TRY(scratch_alloc("conv_backward_weights", threads, cout, &scratch));
#pragma omp parallel num_threads(threads)
    {
        double *acc = scratch + (size_t)omp_get_thread_num() * cout;
#pragma omp for collapse(3) schedule(static)
        for (int kh = 0; kh < k; kh++) {
            for (int kw = 0; kw < k; kw++) {
                for (int ci = 0; ci < cin; ci++) {
                    for (int co = 0; co < cout; co++)
                        acc[co] = 0.0;
                    for (int n = 0; n < N; n++) {
                        for (int oh = 0; oh < o.h; oh++) {
                            int ih = oh * d->stride + kh - d->pad_top;
                            if (ih < 0 || ih >= H) continue;
                            for (int ow = 0; ow < o.w; ow++) {
                                int iw = ow * d->stride + kw - d->pad_left;
                                if (iw < 0 || iw >= W) continue;
                                double xv = x[(((size_t)n * H + ih) * W + iw) * cin + ci];
                                const float *dyp = dy + (((size_t)n * o.h + oh) * o.w + ow) * cout;
                                for (int co = 0; co < cout; co++)
                                    acc[co] += xv * dyp[co];
                            }
                        }
                    }
                    float *dwp = dw + (((size_t)kh * k + kw) * cin + ci) * cout;
                    for (int co = 0; co < cout; co++)
                        dwp[co] = (float)acc[co];
                }
            }
        }
    }
    free(scratch);
    return MT_OK;
}

/* x: N,H,W,C; dy: N,Ho,Wo,C; dw: [k][k][C] */
static void conv_backward_weights_depthwise(mt_backend *backend, const mt_conv_desc *d,
                                            const float *x, const float *dy, float *dw,
                                            mt_shape4 o) {
    const int N = d->input.n, H = d->input.h, W = d->input.w, C = d->input.c, k = d->kernel;
#pragma omp parallel for collapse(3) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int kh = 0; kh < k; kh++) {
        for (int kw = 0; kw < k; kw++) {
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int n = 0; n < N; n++) {
                    for (int oh = 0; oh < o.h; oh++) {
                        int ih = oh * d->stride + kh - d->pad_top;
                        if (ih < 0 || ih >= H) continue;
                        for (int ow = 0; ow < o.w; ow++) {
                            int iw = ow * d->stride + kw - d->pad_left;
                            if (iw < 0 || iw >= W) continue;
                            acc += (double)x[(((size_t)n * H + ih) * W + iw) * C + c] *
                                   dy[(((size_t)n * o.h + oh) * o.w + ow) * C + c];
                        }
                    }
                }
                dw[((size_t)kh * k + kw) * C + c] = (float)acc;
            }
        }
    }
}

mt_status mt_ref_conv_backward_weights(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *x, const mt_tensor *dy, float *dw) {
    MT_TRY(check_conv("conv_backward_weights", desc, x->shape, dy->shape));
    if (desc->depthwise) {
        conv_backward_weights_depthwise(backend, desc, x->data, dy->data, dw, dy->shape);
        return MT_OK;
    }
    return conv_backward_weights_regular(backend, desc, x->data, dy->data, dw, dy->shape);
}
